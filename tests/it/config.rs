//! The configuration contract: unknown keys are errors, every error names
//! the line and the key, and the shipped example files are valid.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use epm_agent::config::{
    self, ConfigError, FileFormat, HttpFormat, Model, PortSetting, SecretSource, SinkKind,
};

const AGENT: &str = "[agent]\nid = \"shop-017\"\ndata_dir = \"/tmp/epm\"\n";

/// Parses `text` and expects an error at `line` for `key` whose message contains `message`.
fn check_error(text: &str, line: usize, key: &str, message: &str) {
    match config::parse(text, Path::new("test.toml")) {
        Ok(_) => panic!("accepted, expected an error at line {line} for `{key}`:\n{text}"),
        Err(ConfigError::Invalid {
            line: found_line,
            key: found_key,
            message: found_message,
            ..
        }) => {
            assert_eq!(
                (found_line, found_key.as_str()),
                (line, key),
                "message: {found_message}\n{text}"
            );
            assert!(
                found_message.contains(message),
                "{found_message:?} lacks {message:?}"
            );
        }
        Err(other) => panic!("unexpected error {other}"),
    }
}

fn device(extra: &str) -> String {
    format!("{AGENT}\n[[device]]\nname = \"entrance\"\nmodel = \"prolan-501\"\nport = \"/dev/ttyACM0\"\n{extra}")
}

#[test]
fn unknown_keys_are_errors_with_line_and_key() {
    check_error(
        &format!("{AGENT}colour = \"red\"\n"),
        4,
        "agent.colour",
        "unknown field `colour`",
    );
    check_error(
        &device("speed = 9600\n"),
        9,
        "device[1].speed",
        "unknown field `speed`",
    );
    check_error(
        &format!("{AGENT}[stor]\nretention_days = 3\n"),
        4,
        "stor",
        "unknown field `stor`",
    );
}

#[test]
fn wrong_values_name_line_and_key() {
    check_error(
        &device("baud = \"fast\"\n"),
        9,
        "device[1].baud",
        "invalid type",
    );
    check_error(
        &device("baud = 12\n"),
        9,
        "device[1].baud",
        "not a usable baud rate",
    );
    check_error(
        &device("keymap = { 17 = \"yes\" }\n"),
        9,
        "device[1].keymap",
        "from 1 to 16",
    );
    check_error(
        &device("keymap = { 1 = \"\" }\n"),
        9,
        "device[1].keymap",
        "empty answer",
    );
    check_error(
        &device("min_interval_s = -1\n"),
        9,
        "device[1].min_interval_s",
        "seconds",
    );
    check_error(
        &device("sim_remotes = 3\n"),
        9,
        "device[1].sim_remotes",
        "simulator",
    );
    check_error(
        &device("hardware_id = \"12\"\n"),
        6,
        "device[1].name",
        "only to port = \"auto\"",
    );
    check_error(
        &format!("{AGENT}\n[[device]]\nname = \"a\"\nmodel = \"prolan-999\"\nport = \"x\"\n"),
        7,
        "device[1].model",
        "unknown model \"prolan-999\"",
    );
    check_error(
        &format!("{AGENT}\n[[device]]\nname = \"a\"\nmodel = \"prolan-202\"\n"),
        6,
        "device[1].name",
        "has no `port`",
    );
    check_error(
        &format!("{AGENT}[store]\nretention_days = 0\n"),
        5,
        "store.retention_days",
        "at least 1",
    );
    check_error(
        &format!("{AGENT}[log]\nlevel = \"loud\"\n"),
        5,
        "log.level",
        "not a log level",
    );
    check_error(
        &format!("{AGENT}[log]\nformat = \"xml\"\n"),
        5,
        "log.format",
        "expected text or json",
    );
    check_error(
        "[agent]\nlocation = \"x\"\n",
        1,
        "agent",
        "missing field `id`",
    );
    check_error("[agent\nid = 1\n", 1, "agent", "");
}

#[test]
fn a_second_device_with_the_same_name_is_named() {
    let text = format!(
        "{AGENT}\n[[device]]\nname = \"a\"\nmodel = \"simulator\"\n\n[[device]]\nname = \"a\"\nmodel = \"simulator\"\n"
    );
    check_error(&text, 10, "device[2].name", "used twice");
}

#[test]
fn sinks_are_checked() {
    let sink = |body: &str| format!("{AGENT}\n[[sink]]\nname = \"reporter\"\n{body}");
    check_error(
        &sink("kind = \"ftp\"\n"),
        7,
        "sink[1].kind",
        "unknown sink kind",
    );
    check_error(
        &sink("kind = \"http\"\n"),
        7,
        "sink[1].kind",
        "has no `url`",
    );
    check_error(
        &sink("kind = \"http\"\nurl = \"http://reporter.example/api\"\n"),
        8,
        "sink[1].url",
        "allow_insecure_http",
    );
    check_error(
        &sink("kind = \"http\"\nurl = \"https://r.example/\"\ntoken = \"a\"\ntoken_env = \"B\"\n"),
        10,
        "sink[1].token_env",
        "only one of",
    );
    check_error(
        &sink("kind = \"http\"\nurl = \"https://r.example/\"\nformat = \"xml\"\n"),
        9,
        "sink[1].format",
        "json or ndjson",
    );
    check_error(
        &sink("kind = \"file\"\npath = \"out\"\nurl = \"https://x/\"\n"),
        9,
        "sink[1].url",
        "applies to http, postgres and mqtt sinks, not to a file sink",
    );
    check_error(
        &sink("kind = \"file\"\npath = \"out\"\nbatch_size = 0\n"),
        9,
        "sink[1].batch_size",
        "1 to 10000",
    );
}

#[test]
fn plain_http_is_fine_to_loopback_or_when_allowed() {
    for url in [
        "http://127.0.0.1:8080/x",
        "http://localhost/x",
        "http://[::1]:9/x",
    ] {
        let text = format!("{AGENT}\n[[sink]]\nname = \"r\"\nkind = \"http\"\nurl = \"{url}\"\n");
        assert!(config::parse(&text, Path::new("t.toml")).is_ok(), "{url}");
    }
    let text = format!(
        "{AGENT}\n[[sink]]\nname = \"r\"\nkind = \"http\"\nurl = \"http://10.0.0.5/x\"\nallow_insecure_http = true\n"
    );
    assert!(config::parse(&text, Path::new("t.toml")).is_ok());
}

#[test]
fn the_documented_example_is_valid_and_read_as_written() {
    let settings =
        config::load(Path::new("config/epm-agent.toml")).expect("config/epm-agent.toml is valid");
    assert_eq!(settings.agent.id, "shop-017");
    assert_eq!(settings.devices.len(), 2);
    let entrance = &settings.devices[0];
    assert_eq!(entrance.model, Model::Prolan501);
    assert_eq!(entrance.port, PortSetting::Path("/dev/ttyACM0".into()));
    assert_eq!(entrance.baud, 115_200);
    assert_eq!(entrance.keymap.get(&2).map(String::as_str), Some("neutral"));
    assert_eq!(entrance.min_interval, Duration::from_secs(3));
    assert_eq!(settings.devices[1].model, Model::Prolan202);
    assert_eq!(settings.devices[1].baud, 9_600);
    let SinkKind::Http(http) = &settings.sinks[0].kind else {
        panic!("first sink is http")
    };
    assert_eq!(http.format, HttpFormat::Json);
    assert_eq!(
        http.token,
        SecretSource::Environment("EPM_REPORTER_TOKEN".into())
    );
    assert_eq!(
        settings.sinks[0].flush_interval,
        Duration::from_millis(1000)
    );
    let SinkKind::File(file) = &settings.sinks[1].kind else {
        panic!("second sink is a file sink")
    };
    assert_eq!(file.format, FileFormat::Csv);
    assert_eq!(settings.store.retention, Duration::from_secs(90 * 86_400));
}

#[test]
fn the_demo_runs_with_simulators_only() {
    let settings = config::load(Path::new("config/demo.toml")).expect("config/demo.toml is valid");
    assert!(settings
        .devices
        .iter()
        .all(|device| device.model == Model::Simulator && device.port == PortSetting::None));
}

#[test]
fn an_inline_token_is_never_printed() {
    let text = format!(
        "{AGENT}\n[[sink]]\nname = \"r\"\nkind = \"http\"\nurl = \"https://r.example/\"\ntoken = \"s3cr3t-value\"\n"
    );
    let settings = config::parse(&text, Path::new("t.toml")).expect("valid");
    assert!(!format!("{settings:?}").contains("s3cr3t-value"));
}

#[test]
fn config_check_exits_2_naming_line_and_key_and_0_when_valid() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, device("baud = \"fast\"\n")).expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["config", "check", "--config"])
        .arg(&bad)
        .output()
        .expect("run epm-agent");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(":9:") && stderr.contains("device[1].baud"),
        "{stderr}"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["config", "check"])
        .env("EPM_AGENT_CONFIG", "config/demo.toml")
        .output()
        .expect("run epm-agent");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .expect("run epm-agent");
    assert_eq!(output.status.code(), Some(2), "run refuses a bad file");
}

#[test]
fn a_missing_file_says_how_to_point_at_one() {
    let error = config::load(Path::new("/nonexistent/epm-agent.toml")).expect_err("missing");
    assert!(error.to_string().contains("--config"), "{error}");
}

#[test]
fn config_check_refuses_a_ca_file_that_is_not_a_certificate_and_warns_about_an_unreadable_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "this is not a certificate").expect("write");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "{AGENT}\n[[sink]]\nname = \"r\"\nkind = \"http\"\nurl = \"https://r.example/\"\nca_file = \"{}\"\n",
            not_pem.display()
        ),
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["config", "check", "--config"])
        .arg(&config)
        .output()
        .expect("run epm-agent");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ca_file") && stderr.contains("ca.pem"),
        "{stderr}"
    );

    std::fs::write(
        &config,
        format!("{AGENT}\n[[sink]]\nname = \"r\"\nkind = \"http\"\nurl = \"https://r.example/\"\ntoken_env = \"EPM_TEST_TOKEN_NOT_SET\"\n"),
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["config", "check", "--config"])
        .arg(&config)
        .env_remove("EPM_TEST_TOKEN_NOT_SET")
        .output()
        .expect("run epm-agent");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "a token set only for the service is not an error: {stderr}"
    );
    assert!(
        stderr.contains("warning") && stderr.contains("EPM_TEST_TOKEN_NOT_SET"),
        "{stderr}"
    );

    // An inline token is never echoed.
    std::fs::write(
        &config,
        format!("{AGENT}\n[[sink]]\nname = \"r\"\nkind = \"http\"\nurl = \"https://r.example/\"\ntoken = \"tok-3141592653\"\n"),
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["config", "check", "--config"])
        .arg(&config)
        .output()
        .expect("run epm-agent");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(0), "{all}");
    assert!(!all.contains("tok-3141592653"), "{all}");
}

#[cfg(unix)]
#[test]
fn a_file_with_an_inline_token_that_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!("{AGENT}\n[[sink]]\nname = \"r\"\nkind = \"http\"\nurl = \"https://r.example/\"\ntoken = \"tok-2718281828\"\n"),
    )
    .expect("write");
    let check = |mode: u32| {
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
            .args(["config", "check", "--config"])
            .arg(&config)
            .output()
            .expect("run epm-agent");
        assert_eq!(output.status.code(), Some(0));
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!stderr.contains("tok-2718281828"), "{stderr}");
        stderr
    };
    let stderr = check(0o644);
    assert!(
        stderr.contains("every user can read it") && stderr.contains("chmod 640"),
        "{stderr}"
    );
    assert!(!check(0o640).contains("every user can read it"));
}

/// `${NAME}` through the real command: one file for a fleet, its token from
/// the environment and never printed; an unset variable is located.
#[cfg(unix)]
#[test]
fn config_check_resolves_variables_and_names_an_unset_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[agent]\nid = \"shop-${EPM_TEST_SHOP}\"\ndata_dir = \"${EPM_TEST_DATA:-/tmp/epm-fleet}\"\n\n\
         [[sink]]\nname = \"r\"\nkind = \"http\"\nurl = \"https://r.example/\"\ntoken = \"${EPM_TEST_FLEET_TOKEN}\"\n",
    )
    .expect("write");
    // Every user may read it: it holds no token, only the variable's name.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let check = |variables: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_epm-agent"));
        command.args(["config", "check", "--config"]).arg(&config);
        for name in ["EPM_TEST_SHOP", "EPM_TEST_DATA", "EPM_TEST_FLEET_TOKEN"] {
            command.env_remove(name);
        }
        command.envs(variables.iter().copied());
        let output = command.output().expect("run epm-agent");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), all)
    };

    let (code, all) = check(&[
        ("EPM_TEST_SHOP", "017"),
        ("EPM_TEST_FLEET_TOKEN", "tok-1618033988"),
    ]);
    assert_eq!(code, Some(0), "{all}");
    assert!(all.contains("data in /tmp/epm-fleet"), "{all}");
    assert!(!all.contains("tok-1618033988"), "{all}");
    assert!(!all.contains("every user can read it"), "{all}");

    let (code, all) = check(&[("EPM_TEST_SHOP", "017")]);
    assert_eq!(code, Some(2), "{all}");
    assert!(
        all.contains(":9:")
            && all.contains("sink[1].token")
            && all.contains("EPM_TEST_FLEET_TOKEN"),
        "{all}"
    );
}

#[test]
fn the_page_listens_beyond_loopback_only_with_a_token() {
    check_error(
        &format!("{AGENT}\n[http]\nlisten = \"0.0.0.0:8587\"\n"),
        6,
        "http.listen",
        "no token is set",
    );
    check_error(
        &format!("{AGENT}\n[http]\nlisten = \"192.168.1.20:8587\"\n"),
        6,
        "http.listen",
        "set token_file",
    );
    check_error(
        &format!("{AGENT}\n[http]\nlisten = \"localhost\"\n"),
        6,
        "http.listen",
        "not an address and port",
    );
    check_error(
        &format!("{AGENT}\n[http]\nport = 8587\n"),
        6,
        "http.port",
        "unknown field `port`",
    );
    check_error(
        &format!("{AGENT}\n[http]\ntoken = \"a\"\ntoken_file = \"b\"\n"),
        7,
        "http.token_file",
        "only one of",
    );

    let settings = config::parse(&format!("{AGENT}\n[http]\n"), Path::new("t.toml"))
        .expect("an empty [http] is valid");
    let http = settings.http.expect("[http] enables the page");
    assert_eq!(http.listen.to_string(), "127.0.0.1:8587");
    assert_eq!(http.token, SecretSource::None);
    let settings = config::parse(
        &format!("{AGENT}\n[http]\nlisten = \"0.0.0.0:9100\"\ntoken_env = \"EPM_HTTP_TOKEN\"\n"),
        Path::new("t.toml"),
    )
    .expect("beyond loopback with a token");
    assert_eq!(
        settings.http.map(|http| http.token),
        Some(SecretSource::Environment("EPM_HTTP_TOKEN".into()))
    );
    let settings = config::parse(AGENT, Path::new("t.toml")).expect("valid");
    assert!(settings.http.is_none(), "no [http], no listener");
}

#[test]
fn config_check_refuses_the_page_on_a_network_address_without_a_token_naming_the_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("open.toml");
    std::fs::write(
        &file,
        format!("{AGENT}\n[http]\nlisten = \"0.0.0.0:8587\"\n"),
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["config", "check", "--config"])
        .arg(&file)
        .output()
        .expect("run epm-agent");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("open.toml:6:")
            && stderr.contains("http.listen")
            && stderr.contains("token"),
        "{stderr}"
    );
}

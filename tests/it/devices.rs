//! `epm-agent devices`, run as the binary against emulated ProLAN-202 and
//! ProLAN-501 hardware on pseudo-terminals. Ptys are not in the operating
//! system's port list, so they are named with `--port` (which asks them
//! whatever they are). What it proves: each model is recognised by its
//! identity answer, a silent port is "no answer", a port another program
//! holds is skipped without being written to, ports the configuration uses
//! are marked and get no new block, and the printed `[[device]]` blocks are
//! a valid configuration once pasted.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use epm_agent::config::{self, Model, PortSetting};
use support::{DeviceConfig, Emulator, EmulatorOptions, Pty, TestDir};

/// `epm-agent devices <args> --config <config>`, to completion.
fn devices(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .arg("devices")
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("EPM_AGENT_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run epm-agent")
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 stdout")
}

fn path_of(emulator: &Emulator) -> String {
    emulator.port_path().display().to_string()
}

/// A pseudo-terminal nothing answers on, at `ports/<name>` (kept open by
/// the returned `Pty`).
fn silent_port(dir: &TestDir, name: &str) -> (Pty, PathBuf) {
    let pty = Pty::open().expect("a pseudo-terminal");
    let link = dir.path().join("ports").join(name);
    support::replace_symlink(pty.slave_path(), &link).expect("symlink");
    (pty, link)
}

/// The table row of `port`.
fn row<'a>(text: &'a str, port: &str) -> &'a str {
    text.lines()
        .find(|line| line.starts_with(port))
        .unwrap_or_else(|| panic!("no row for {port} in\n{text}"))
}

/// Every `[[device]]` block printed, each up to the next blank line.
fn blocks(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|part| {
            part.find("[[device]]")
                .map(|start| part[start..].to_string())
        })
        .collect()
}

/// The blocks pasted under an `[agent]` table, parsed as the agent does.
fn parse_pasted(dir: &TestDir, blocks: &[String]) -> config::Settings {
    let text = format!(
        "[agent]\nid = \"pasted\"\ndata_dir = \"data\"\n\n{}",
        blocks.join("\n")
    );
    config::parse(&text, &dir.path().join("pasted.toml")).unwrap_or_else(|error| {
        panic!("the printed blocks are not a valid configuration: {error}\n{text}")
    })
}

#[test]
fn probing_named_ports_finds_each_model_and_prints_blocks_to_paste() {
    let dir = TestDir::new();
    let keypad = dir.keypad("keypad", EmulatorOptions::keypad());
    let receiver = dir.receiver("radio", EmulatorOptions::receiver());
    let (_silent, silent) = silent_port(&dir, "silent");
    let silent = silent.display().to_string();
    let no_config = dir.path().join("none.toml");

    let text = stdout_of(&devices(
        &no_config,
        &[
            "--port",
            &path_of(&keypad),
            "--port",
            &path_of(&receiver),
            "--port",
            &silent,
        ],
    ));
    assert!(text.starts_with("PORT "), "{text}");
    assert!(
        row(&text, &path_of(&keypad)).ends_with("ProLAN-202 keypad 202A0F31, firmware 1.4"),
        "{text}"
    );
    assert!(
        row(&text, &path_of(&receiver))
            .ends_with("ProLAN-501 receiver 501000A7, firmware 2.3, radio channel 4"),
        "{text}"
    );
    assert!(row(&text, &silent).ends_with("no answer"), "{text}");

    let printed = blocks(&text);
    assert_eq!(printed.len(), 2, "{text}");
    let pasted = parse_pasted(&dir, &printed);
    let found: Vec<(String, Model, PortSetting)> = pasted
        .devices
        .iter()
        .map(|device| (device.name.clone(), device.model, device.port.clone()))
        .collect();
    assert_eq!(
        found,
        [
            (
                "keypad-202a0f31".to_string(),
                Model::Prolan202,
                PortSetting::Path(path_of(&keypad))
            ),
            (
                "receiver-501000a7".to_string(),
                Model::Prolan501,
                PortSetting::Path(path_of(&receiver))
            ),
        ]
    );
    assert!(
        printed[0].contains("# hardware_id = \"202A0F31\""),
        "{}",
        printed[0]
    );

    // Each device was asked once, in its own protocol.
    assert_eq!(keypad.observed().queries.len(), 1);
    assert_eq!(receiver.observed().queries.len(), 1);
}

#[test]
fn the_json_says_what_each_port_answered() {
    let dir = TestDir::new();
    let keypad = dir.keypad("keypad", EmulatorOptions::keypad());
    let receiver = dir.receiver("radio", EmulatorOptions::receiver());
    let no_config = dir.path().join("none.toml");
    let text = stdout_of(&devices(
        &no_config,
        &[
            "--json",
            "--port",
            &path_of(&keypad),
            "--port",
            &path_of(&receiver),
        ],
    ));
    let report: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let ports = report["ports"].as_array().expect("a list of ports");
    assert_eq!(ports.len(), 2);
    let check = |port: &serde_json::Value, path: &str, model: &str, id: &str| {
        assert_eq!(port["path"], path);
        assert_eq!(port["probe"]["result"], "found");
        assert_eq!(port["probe"]["model"], model);
        assert_eq!(port["probe"]["hardware_id"], id);
        let block = port["config_block"].as_str().expect("a block");
        assert!(block.contains(&format!("model = \"{model}\"")), "{block}");
    };
    check(&ports[0], &path_of(&keypad), "prolan-202", "202A0F31");
    check(&ports[1], &path_of(&receiver), "prolan-501", "501000A7");
    assert_eq!(ports[1]["probe"]["radio_channel"], 4);
    assert_eq!(ports[0]["probe"]["radio_channel"], serde_json::Value::Null);
}

#[test]
fn a_port_another_program_holds_is_skipped_and_not_written_to() {
    let dir = TestDir::new();
    let keypad = dir.keypad("keypad", EmulatorOptions::keypad());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _context = runtime.enter();
    // As the running agent holds its ports: exclusively.
    let held = epm_agent::port::open_serial(&path_of(&keypad), 9_600).expect("open the keypad");

    let text = stdout_of(&devices(
        &dir.path().join("none.toml"),
        &["--port", &path_of(&keypad)],
    ));
    assert!(
        // Root gets past TIOCEXCL, not past the lock: either way it is busy.
        row(&text, &path_of(&keypad)).contains("not asked: ")
            && text.contains("(is another program using it, such as a running agent?)"),
        "{text}"
    );
    assert!(text.contains("no ProLAN device answered"), "{text}");
    assert!(text.contains("is the agent running?"), "{text}");
    assert!(keypad.observed().queries.is_empty());
    drop(held);
}

#[test]
fn ports_in_the_configuration_are_marked_and_get_no_new_block() {
    let dir = TestDir::new();
    let keypad = dir.keypad("keypad", EmulatorOptions::keypad());
    let receiver = dir.receiver("radio", EmulatorOptions::receiver());
    let config = dir.write_config(&[DeviceConfig {
        name: "cashdesk".into(),
        ..DeviceConfig::of(&keypad, "recommend", DeviceConfig::keymap(&[(1, "yes")]))
    }]);

    let text = stdout_of(&devices(
        &config,
        &["--port", &path_of(&keypad), "--port", &path_of(&receiver)],
    ));
    assert!(
        row(&text, &path_of(&keypad)).contains("  cashdesk  "),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "# ProLAN-202 keypad 202A0F31, firmware 1.4 on {} is configured already, as cashdesk.",
            path_of(&keypad)
        )),
        "{text}"
    );
    let printed = blocks(&text);
    assert_eq!(printed.len(), 1, "{text}");
    assert!(
        printed[0].contains("model = \"prolan-501\""),
        "{}",
        printed[0]
    );

    let json = stdout_of(&devices(&config, &["--json", "--port", &path_of(&keypad)]));
    let report: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(
        report["ports"][0]["configured_as"],
        serde_json::json!(["cashdesk"])
    );
    assert_eq!(report["ports"][0]["config_block"], serde_json::Value::Null);
}

#[test]
fn without_probe_nothing_is_asked() {
    let dir = TestDir::new();
    let no_config = dir.path().join("none.toml");
    let json = stdout_of(&devices(&no_config, &["--json"]));
    let report: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    for port in report["ports"].as_array().expect("a list of ports") {
        assert_eq!(port["probe"], serde_json::Value::Null, "{port}");
    }
    let text = stdout_of(&devices(&no_config, &[]));
    assert!(
        text.starts_with("PORT ") || text.starts_with("no serial ports found"),
        "{text}"
    );
}

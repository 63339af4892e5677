//! `epm-agent status` on prepared stores: each health rule and its exit
//! code (0 ok, 1 warning, 2 critical, 3 unknown), the JSON contract's
//! fields, and a real daemon seen running and then gone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{Duration as ChronoDuration, Utc};
use rusqlite::{params, Connection};
use serde_json::Value;

use epm_agent::event::{format_timestamp, NewPress};
use epm_agent::protocol::UnitId;
use epm_agent::store::{writer, Store, WriterOptions};

/// A store in a temp dir with a configuration naming one device and one sink.
struct Prepared {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Prepared {
    /// `presses` events, `minutes_ago` old; the daemon row says a live
    /// process (this test) wrote a heartbeat just now; device connected,
    /// sink ok with everything delivered.
    fn healthy(presses: u16, minutes_ago: i64) -> Prepared {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (handle, thread) = writer::spawn(
                Store::open_writer(&data_dir).expect("open"),
                WriterOptions::default(),
            )
            .expect("writer");
            for seq in 0..presses {
                let press = NewPress {
                    ts: Utc::now() - ChronoDuration::minutes(minutes_ago),
                    tz_offset_min: 180,
                    device: "entrance".into(),
                    model: "prolan-501",
                    unit: UnitId(0x301A_0002),
                    key: 1,
                    answer: Some("yes".into()),
                    question: None,
                    seq,
                    rssi: Some(-61),
                    battery: Some(87),
                    suppressed: false,
                };
                handle.press(press, None).await.expect("queued");
            }
            handle.flush().await.expect("flushed");
            drop(handle);
            thread.join().expect("writer");
        });
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\nid = \"t\"\ndata_dir = \"{}\"\n\n[[device]]\nname = \"entrance\"\nmodel = \"prolan-501\"\nport = \"/dev/null-port\"\n\n\
                 [[sink]]\nname = \"reporter\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/x\"\n",
                data_dir.display()
            ),
        )
        .expect("config");
        let prepared = Prepared { dir, config };
        let now = format_timestamp(Utc::now());
        prepared.sql(
            "INSERT INTO daemon (singleton, pid, version, started_at, heartbeat_at) VALUES (1, ?1, '0.1.0', ?2, ?2)",
            params![std::process::id(), now],
        );
        prepared.sql(
            "UPDATE devices SET port = '/dev/ttyACM0', state = 'connected', state_since = ?1, last_frame_at = ?1 WHERE name = 'entrance'",
            params![now],
        );
        prepared.sql(
            "INSERT INTO devices (name, model, port, state) SELECT 'entrance', 'prolan-501', '/dev/ttyACM0', 'connected'
             WHERE NOT EXISTS (SELECT 1 FROM devices WHERE name = 'entrance')",
            [],
        );
        prepared.sql(
            "INSERT INTO sinks (name, delivered_seqno, delivered, state, last_success_at) VALUES ('reporter', ?1, ?1, 'ok', ?2)",
            params![i64::from(presses), now],
        );
        prepared
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn sql(&self, statement: &str, parameters: impl rusqlite::Params) {
        let connection = Connection::open(self.data_dir().join("epm-agent.db")).expect("open");
        connection.execute(statement, parameters).expect(statement);
    }

    fn status(&self) -> (i32, Value, String) {
        let json = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
            .args(["status", "--json", "--config"])
            .arg(&self.config)
            .output()
            .expect("run status");
        let text = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
            .args(["status", "--config"])
            .arg(&self.config)
            .output()
            .expect("run status");
        let code = json.status.code().expect("exit code");
        assert_eq!(
            text.status.code(),
            Some(code),
            "text and JSON agree on the exit code"
        );
        let value: Value = serde_json::from_slice(&json.stdout)
            .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(&json.stderr)));
        (
            code,
            value,
            String::from_utf8_lossy(&text.stdout).into_owned(),
        )
    }
}

/// Runs status and expects `health`, `code`, and a problem containing `problem`.
fn check(prepared: &Prepared, health: &str, code: i32, problem: &str) {
    let (found_code, status, text) = prepared.status();
    assert_eq!(
        (status["health"].as_str(), found_code),
        (Some(health), code),
        "{status:#}"
    );
    let problems: Vec<&str> = status["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if problem.is_empty() {
        assert!(problems.is_empty(), "{problems:?}");
    } else {
        assert!(
            problems.iter().any(|found| found.contains(problem)),
            "{problems:?} lacks {problem:?}"
        );
        assert!(
            text.contains(problem),
            "the text view names it too:\n{text}"
        );
    }
}

#[test]
fn a_healthy_agent_is_ok_with_the_contract_fields() {
    let prepared = Prepared::healthy(5, 0);
    check(&prepared, "ok", 0, "");
    let (_, status, text) = prepared.status();
    assert_eq!(status["daemon"]["running"], true);
    assert_eq!(status["daemon"]["pid"], std::process::id());
    for field in ["version", "started_at", "heartbeat_at"] {
        assert!(status["daemon"][field].is_string(), "daemon.{field}");
    }
    let device = &status["devices"][0];
    assert_eq!(
        (device["name"].as_str(), device["state"].as_str()),
        (Some("entrance"), Some("connected"))
    );
    assert_eq!(device["presses"], 5);
    for field in [
        "model",
        "port",
        "last_frame_at",
        "last_press_at",
        "duplicates",
        "bad_frames",
    ] {
        assert!(!device[field].is_null(), "devices[0].{field}");
    }
    assert_eq!(device["units"][0]["unit"], "301A0002");
    assert_eq!(
        (
            device["units"][0]["battery"].as_u64(),
            device["units"][0]["rssi"].as_i64()
        ),
        (Some(87), Some(-61))
    );
    assert_eq!(status["store"]["events"], 5);
    assert!(status["store"]["size_bytes"]
        .as_u64()
        .is_some_and(|size| size > 0));
    assert!(status["store"]["path"]
        .as_str()
        .is_some_and(|path| path.ends_with("epm-agent.db")));
    let sink = &status["sinks"][0];
    assert_eq!(
        (
            sink["name"].as_str(),
            sink["state"].as_str(),
            sink["pending"].as_u64(),
            sink["delivered"].as_u64(),
            sink["dead_letter"].as_u64()
        ),
        (Some("reporter"), Some("ok"), Some(0), Some(5), Some(0))
    );
    assert!(sink["last_error"].is_null());
    assert!(text.starts_with("epm-agent OK"), "{text}");
}

#[test]
fn each_warning_rule() {
    let prepared = Prepared::healthy(3, 0);
    prepared.sql("UPDATE devices SET state = 'silent'", []);
    check(&prepared, "warning", 1, "device entrance is silent");
    prepared.sql(
        "UPDATE devices SET state = 'disconnected', last_error = 'cannot open /dev/ttyACM0'",
        [],
    );
    check(
        &prepared,
        "warning",
        1,
        "device entrance is disconnected: cannot open /dev/ttyACM0",
    );
    prepared.sql(
        "UPDATE devices SET state = 'connected', last_error = NULL",
        [],
    );
    check(&prepared, "ok", 0, "");

    prepared.sql(
        "UPDATE sinks SET state = 'retrying', last_error = 'HTTP 503 Service Unavailable'",
        [],
    );
    check(
        &prepared,
        "warning",
        1,
        "sink reporter is retrying: HTTP 503",
    );
    prepared.sql(
        "UPDATE sinks SET state = 'paused', last_error = 'HTTP 401 Unauthorized'",
        [],
    );
    check(&prepared, "warning", 1, "sink reporter is paused: HTTP 401");
    prepared.sql("UPDATE sinks SET state = 'ok', last_error = NULL", []);

    prepared.sql(
        "INSERT INTO dead_letters (sink, seqno, event_id, status, reason, at) SELECT 'reporter', seqno, id, 422, 'HTTP 422', ts FROM events LIMIT 1",
        [],
    );
    check(&prepared, "warning", 1, "1 dead letter");
    prepared.sql("DELETE FROM dead_letters", []);

    prepared.sql(
        "UPDATE store_state SET over_cap_since = '2026-11-01T00:00:00.000Z'",
        [],
    );
    check(&prepared, "warning", 1, "exceed max_size_mb");
    prepared.sql("UPDATE store_state SET over_cap_since = NULL", []);
    check(&prepared, "ok", 0, "");
}

#[test]
fn faults_the_store_survived_are_reported() {
    let prepared = Prepared::healthy(2, 0);
    let now = format_timestamp(Utc::now());
    prepared.sql(
        "UPDATE store_state SET write_failures_since = ?1, last_write_error = 'database or disk is full'",
        params![now],
    );
    check(
        &prepared,
        "critical",
        2,
        "the store cannot be written since",
    );
    prepared.sql("UPDATE store_state SET write_failures_since = NULL, last_write_error = NULL, dropped_presses = 7", []);
    check(&prepared, "ok", 0, "");
    let (_, status, text) = prepared.status();
    assert_eq!(status["store"]["dropped_presses"], 7);
    assert!(text.contains("7 presses dropped"), "{text}");

    prepared.sql(
        "UPDATE store_state SET recovered_at = ?1, damaged_file = '/var/lib/epm-agent/epm-agent.db.damaged-x', salvaged_events = 41",
        params![now],
    );
    check(&prepared, "warning", 1, "41 events read back");
    let long_ago = format_timestamp(Utc::now() - ChronoDuration::days(8));
    prepared.sql(
        "UPDATE store_state SET recovered_at = ?1",
        params![long_ago],
    );
    check(&prepared, "ok", 0, "");

    prepared.sql(
        "UPDATE daemon SET clock_jump_at = ?1, clock_jump_s = -3600",
        params![now],
    );
    check(
        &prepared,
        "warning",
        1,
        "the system clock jumped by -3600 s",
    );
    prepared.sql("UPDATE daemon SET clock_jump_at = ?1", params![long_ago]);
    check(&prepared, "ok", 0, "");
}

#[test]
fn an_undelivered_press_older_than_15_minutes_is_a_warning() {
    let fresh = Prepared::healthy(4, 10);
    fresh.sql("UPDATE sinks SET delivered_seqno = 2", []);
    check(&fresh, "ok", 0, "");
    let (_, status, _) = fresh.status();
    assert_eq!(status["sinks"][0]["pending"], 2);

    let old = Prepared::healthy(4, 20);
    old.sql("UPDATE sinks SET delivered_seqno = 2", []);
    check(
        &old,
        "warning",
        1,
        "oldest undelivered press is 20 minutes old",
    );
}

#[test]
fn each_critical_rule() {
    let prepared = Prepared::healthy(2, 0);
    let old = format_timestamp(Utc::now() - ChronoDuration::seconds(60));
    prepared.sql("UPDATE daemon SET heartbeat_at = ?1", params![old]);
    check(&prepared, "critical", 2, "has not written its heartbeat");

    prepared.sql(
        "UPDATE daemon SET heartbeat_at = ?1, stopped_at = ?1",
        params![old],
    );
    check(
        &prepared,
        "critical",
        2,
        "the agent is not running (stopped at",
    );
    let (_, status, text) = prepared.status();
    assert_eq!(status["daemon"]["running"], false);
    assert!(text.contains("not running since"), "{text}");

    // A pid that cannot exist: the process died without saying so.
    prepared.sql(
        "UPDATE daemon SET pid = 2147483000, stopped_at = NULL, heartbeat_at = ?1",
        params![format_timestamp(Utc::now())],
    );
    check(&prepared, "critical", 2, "it died");

    prepared.sql("DELETE FROM daemon", []);
    check(&prepared, "critical", 2, "never run");
}

#[test]
fn no_store_or_no_config_is_unknown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nid = \"t\"\ndata_dir = \"{}\"\n",
            dir.path().join("none").display()
        ),
    )
    .expect("config");
    let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .expect("run status");
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no store at"));
    let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["status", "--config", "/nonexistent/agent.toml"])
        .output()
        .expect("run status");
    assert_eq!(output.status.code(), Some(3));
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_real_daemon_is_seen_running_and_then_dead() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = crate::support::simulator_config(dir.path(), &dir.path().join("data"), "");
    let status = |config: &Path| -> (i32, Value) {
        let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
            .args(["status", "--json", "--config"])
            .arg(config)
            .output()
            .expect("status");
        let value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        (output.status.code().unwrap_or(-1), value)
    };
    let mut agent = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .expect("start agent");
    wait_for("status ok with presses", || {
        let (code, value) = status(&config);
        code == 0
            && value["devices"][0]["presses"]
                .as_u64()
                .is_some_and(|presses| presses > 0)
    });
    let (_, value) = status(&config);
    assert_eq!(value["daemon"]["pid"], agent.id());
    agent.kill().expect("kill -9");
    agent.wait().expect("reaped");
    let (code, value) = status(&config);
    assert_eq!(
        (code, value["health"].as_str()),
        (2, Some("critical")),
        "{value:#}"
    );
    assert!(
        value["problems"][0]
            .as_str()
            .is_some_and(|problem| problem.contains("died")),
        "{value:#}"
    );
}

/// `status` for a monitoring user (Zabbix, Telegraf): a member of the
/// service's group reads the store, running and stopped; anyone else is
/// told why. The agent runs as a service user under `umask 077`, as
/// systemd's unit may, and still gives its group read access.
#[cfg(target_os = "linux")]
#[test]
fn status_works_for_the_service_group_and_says_why_for_anyone_else() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::getuid().is_root() {
        return; // running as other users needs root
    }
    // Numeric ids need no users or groups on this machine.
    const SERVICE_USER: u32 = 4243;
    const SERVICE_GROUP: u32 = 4242;
    const MONITOR_USER: u32 = 4244;
    const MONITOR_GROUP: u32 = 4245;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let home = dir.path().join("lib");
    std::fs::create_dir(&home).expect("mkdir");
    nix::unistd::chown(&home, Some(SERVICE_USER.into()), Some(SERVICE_GROUP.into()))
        .expect("chown");
    let data_dir = home.join("epm-agent");
    let config = crate::support::simulator_config(dir.path(), &data_dir, "");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let as_user = |user: u32, group: u32, groups: Option<u32>| {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={user}"))
            .arg(format!("--regid={group}"));
        match groups {
            Some(groups) => command.arg(format!("--groups={groups}")),
            None => command.arg("--clear-groups"),
        };
        command
    };
    let status = |mut command: Command| -> (i32, Value, String) {
        let output = command
            .arg(env!("CARGO_BIN_EXE_epm-agent"))
            .args(["status", "--json", "--config"])
            .arg(&config)
            .output()
            .expect("status");
        (
            output.status.code().unwrap_or(-1),
            serde_json::from_slice(&output.stdout).unwrap_or(Value::Null),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let member = || as_user(MONITOR_USER, MONITOR_GROUP, Some(SERVICE_GROUP));
    let stranger = || as_user(MONITOR_USER, MONITOR_GROUP, None);

    let agent = as_user(SERVICE_USER, SERVICE_GROUP, None)
        .args(["sh", "-c", "umask 077 && exec \"$0\" run --config \"$1\""])
        .arg(env!("CARGO_BIN_EXE_epm-agent"))
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent");
    wait_for("status ok with presses, read by a group member", || {
        let (code, value, _) = status(member());
        code == 0
            && value["devices"][0]["presses"]
                .as_u64()
                .is_some_and(|presses| presses > 0)
    });
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .map(|metadata| metadata.permissions().mode() & 0o777)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    };
    assert_eq!(mode(&data_dir), 0o750, "the data_dir, despite umask 077");
    for file in ["epm-agent.db", "epm-agent.db-wal", "epm-agent.db-shm"] {
        assert_eq!(mode(&data_dir.join(file)), 0o640, "{file}");
    }

    let (code, value, stderr) = status(stranger());
    assert_eq!(code, 3, "unknown: {value} {stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot read the store {}: permission denied",
            data_dir.join("epm-agent.db").display()
        )) && stderr.contains(&format!("in the {SERVICE_GROUP} group")),
        "{stderr}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agent.id()).expect("a pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("stop the agent");
    let stopped = agent.wait_with_output().expect("reaped");
    let log = String::from_utf8_lossy(&stopped.stderr);
    assert!(stopped.status.success(), "a clean stop: {log}");
    assert!(
        !log.contains("open to every user"),
        "0750 is as meant: {log}"
    );
    // A stopped agent's store too: its -wal and -shm stay for the readers.
    let (code, value, stderr) = status(member());
    assert_eq!(
        (
            code,
            value["health"].as_str(),
            value["daemon"]["running"].as_bool()
        ),
        (2, Some("critical"), Some(false)),
        "{value:#} {stderr}"
    );
    assert!(
        value["devices"][0]["presses"]
            .as_u64()
            .is_some_and(|presses| presses > 0),
        "{value:#}"
    );
}

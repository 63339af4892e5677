//! SIGHUP reloads the configuration while presses stream: a broken file is
//! logged and the running configuration goes on; a changed file (a device
//! added, a sink removed) is applied without losing or doubling a press,
//! and without reopening the unchanged device's port. The agent's status
//! events go into the same ndjson files as the presses; they are told apart
//! by `type` and checked on their own (each once, none missing from the
//! kept sink, none from after the reload in the removed one's).

use crate::support;

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use epm_agent::protocol::UnitId;
use support::{keypad_press, radio_press, DeviceConfig, EmulatorOptions, TestDir, KEYPAD_SERIAL};

const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
const STORE_TIMEOUT: Duration = Duration::from_secs(15);
const REMOTE: UnitId = UnitId(0x301A_0002);

/// The events in a file sink's folder, line by line.
fn lines_in(folder: &Path) -> Vec<Value> {
    let Ok(entries) = fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for entry in entries.flatten() {
        let text = fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            lines.push(serde_json::from_str(line).expect("an ndjson line"));
        }
    }
    lines
}

fn id_of(line: &Value) -> String {
    line["id"].as_str().expect("an id").to_string()
}

/// The ids of the presses in a file sink's folder, line by line.
fn press_ids_in(folder: &Path) -> Vec<String> {
    lines_in(folder)
        .iter()
        .filter(|line| line["type"] == "press")
        .map(id_of)
        .collect()
}

/// The agent status events in a file sink's folder, line by line; fails on
/// a line of any other type than these two.
fn status_events_in(folder: &Path) -> Vec<Value> {
    lines_in(folder)
        .into_iter()
        .filter(|line| match line["type"].as_str() {
            Some("press") => false,
            Some("agent_status") => true,
            other => panic!("an event of type {other:?}: {line}"),
        })
        .collect()
}

/// The names of the devices an agent status event lists.
fn devices_of(status: &Value) -> Vec<&str> {
    status["status"]["devices"]
        .as_array()
        .expect("status.devices")
        .iter()
        .map(|device| device["name"].as_str().expect("a device name"))
        .collect()
}

/// The agent status events of the store, (seqno, id) in store order.
fn stored_status_events(data_dir: &Path) -> Vec<(i64, String)> {
    let connection = support::open_store(data_dir).expect("open the store");
    let mut statement = connection
        .prepare("SELECT seqno, id FROM events WHERE type = 'agent_status' ORDER BY seqno")
        .expect("prepare");
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("read the status events")
        .collect::<Result<_, _>>()
        .expect("status event rows")
}

/// How far the sink `name` has delivered (its cursor's seqno).
fn delivered_seqno(data_dir: &Path, name: &str) -> i64 {
    support::open_store(data_dir)
        .expect("open the store")
        .query_row(
            "SELECT delivered_seqno FROM sinks WHERE name = ?1",
            [name],
            |row| row.get(0),
        )
        .expect("the sink's row")
}

fn file_sink(name: &str, folder: &Path) -> String {
    format!(
        "\n[[sink]]\nname = \"{name}\"\nkind = \"file\"\npath = \"{}\"\nformat = \"ndjson\"\nflush_interval_ms = 50\n",
        folder.display()
    )
}

fn append(config: &Path, text: &str) {
    let mut whole = fs::read_to_string(config).expect("read the configuration");
    whole.push_str(text);
    fs::write(config, whole).expect("write the configuration");
}

fn stderr_of(dir: &TestDir) -> String {
    fs::read_to_string(dir.path().join("agent-0.stderr")).unwrap_or_default()
}

#[test]
fn sighup_applies_a_changed_file_and_ignores_a_broken_one_while_presses_stream() {
    let dir = TestDir::new();
    let keypad = dir.keypad("cashdesk", EmulatorOptions::keypad());
    let receiver = dir.receiver("entrance", EmulatorOptions::receiver());
    let keymap = DeviceConfig::keymap(&[(1, "yes"), (2, "neutral"), (3, "no")]);
    let kept: PathBuf = dir.path().join("kept-files");
    let removed: PathBuf = dir.path().join("removed-files");

    let config = dir.write_config(&[DeviceConfig::of(&keypad, "recommend", keymap.clone())]);
    append(
        &config,
        &(file_sink("kept", &kept) + &file_sink("removed", &removed)),
    );
    let first_config = fs::read_to_string(&config).expect("read");
    let mut agent = dir.start_agent(&config, &[&keypad]);
    let mut seq = 0u16;
    let mut press_burst = |count: u16| {
        for _ in 0..count {
            seq += 1;
            keypad.press(keypad_press(1 + (seq % 3) as u8, seq));
        }
    };

    press_burst(20);
    // A broken file, sent while presses are in flight.
    fs::write(&config, "[agent\nid = \"broken\"\n").expect("write a broken file");
    agent.signal(Signal::SIGHUP);
    press_burst(20);
    dir.wait_until(RELOAD_TIMEOUT, "the broken file to be refused", || {
        let stderr = stderr_of(&dir);
        if stderr.contains("the new configuration is not used") {
            Ok(())
        } else {
            Err("no refusal logged yet".to_string())
        }
    });
    dir.wait_for_events(40, STORE_TIMEOUT);
    agent.assert_running();
    let removed_before = dir.wait_until(RELOAD_TIMEOUT, "both sinks to write the first 40", || {
        let (kept_ids, removed_ids) = (press_ids_in(&kept), press_ids_in(&removed));
        if kept_ids.len() == 40 && removed_ids.len() == 40 {
            Ok(removed_ids.len())
        } else {
            Err(format!(
                "kept {} removed {}",
                kept_ids.len(),
                removed_ids.len()
            ))
        }
    });

    // The fixed file: a receiver added, the second sink removed.
    let changed = dir.write_config(&[
        DeviceConfig::of(&keypad, "recommend", keymap.clone()),
        DeviceConfig::of(&receiver, "recommend", keymap),
    ]);
    append(&changed, &file_sink("kept", &kept));
    assert_ne!(fs::read_to_string(&changed).expect("read"), first_config);
    press_burst(20);
    agent.signal(Signal::SIGHUP);
    press_burst(20);
    receiver.wait_for_query(1, RELOAD_TIMEOUT);
    for counter in 1..=10u16 {
        receiver.press(radio_press(REMOTE, 1, counter, -60, Some(80)));
    }
    press_burst(20);

    let events = dir.wait_for_events(100 + 10, STORE_TIMEOUT);
    dir.wait_until(RELOAD_TIMEOUT, "the kept sink to write every press", || {
        let count = press_ids_in(&kept).len();
        if count == events.len() {
            Ok(())
        } else {
            Err(format!("{count} of {} lines", events.len()))
        }
    });
    agent.stop_cleanly();

    let events = support::events(&dir.data_dir()).expect("read the store");
    let keypad_seqs: Vec<u16> = events
        .iter()
        .filter(|event| event.unit == KEYPAD_SERIAL.to_string())
        .map(|event| event.seq)
        .collect();
    assert_eq!(
        keypad_seqs,
        (1..=100).collect::<Vec<u16>>(),
        "every keypad press once, in order"
    );
    let radio: Vec<u16> = events
        .iter()
        .filter(|event| event.unit == REMOTE.to_string())
        .map(|event| event.seq)
        .collect();
    assert_eq!(
        radio,
        (1..=10).collect::<Vec<u16>>(),
        "the added receiver's presses, each once"
    );

    let kept_ids = press_ids_in(&kept);
    let unique: HashSet<&String> = kept_ids.iter().collect();
    assert_eq!(
        (kept_ids.len(), unique.len()),
        (events.len(), events.len()),
        "the kept sink: each press once"
    );
    let stored_presses: HashSet<&String> = events.iter().map(|event| &event.id).collect();
    assert_eq!(unique, stored_presses, "the kept sink: the stored presses");
    assert_eq!(
        press_ids_in(&removed).len(),
        removed_before,
        "the removed sink wrote no press after the reload"
    );

    // The status events: each once in the kept sink's files, every one its
    // cursor passed among them, nothing that is not stored; beyond the
    // cursor at most what was being written when the agent stopped.
    let stored_statuses = stored_status_events(&dir.data_dir());
    let stored_status_ids: BTreeSet<&str> =
        stored_statuses.iter().map(|(_, id)| id.as_str()).collect();
    let kept_statuses: Vec<String> = status_events_in(&kept).iter().map(id_of).collect();
    let kept_status_ids: BTreeSet<&str> = kept_statuses.iter().map(String::as_str).collect();
    assert_eq!(
        kept_status_ids.len(),
        kept_statuses.len(),
        "the kept sink: each status event once: {kept_statuses:?}"
    );
    let cursor = delivered_seqno(&dir.data_dir(), "kept");
    let through_cursor: BTreeSet<&str> = stored_statuses
        .iter()
        .filter(|(seqno, _)| *seqno <= cursor)
        .map(|(_, id)| id.as_str())
        .collect();
    assert!(
        !through_cursor.is_empty(),
        "the start's status event at least is stored and delivered"
    );
    assert!(
        kept_status_ids.is_subset(&stored_status_ids) && through_cursor.is_subset(&kept_status_ids),
        "the kept sink's status events {kept_status_ids:?}: every stored one through its cursor \
         {through_cursor:?}, nothing not stored ({stored_status_ids:?})"
    );
    // The removed sink's status events are stored ones, each once, and all
    // from before the reload: none lists the receiver it added.
    let removed_statuses = status_events_in(&removed);
    let removed_status_ids: BTreeSet<String> = removed_statuses.iter().map(id_of).collect();
    assert_eq!(removed_status_ids.len(), removed_statuses.len());
    assert!(removed_status_ids
        .iter()
        .all(|id| stored_status_ids.contains(id.as_str())));
    for status in &removed_statuses {
        assert_eq!(
            devices_of(status),
            ["cashdesk"],
            "the removed sink wrote a status event of after the reload: {status}"
        );
    }

    // The keypad's port was never reopened: it was asked for its identity once.
    assert_eq!(
        keypad.observed().queries.len(),
        1,
        "the unchanged device kept its port"
    );
    let stderr = stderr_of(&dir);
    assert!(stderr.contains("configuration applied"), "{stderr}");
}

/// A reload that cannot be applied in full (here a changed sink whose
/// `ca_file` is no certificate, found only when the sink is set up) is
/// refused before anything running is stopped: the changed device keeps
/// its port and goes on being read, the unchanged sink goes on writing.
#[test]
fn a_reload_that_fails_half_way_leaves_everything_running() {
    let dir = TestDir::new();
    let keypad = dir.keypad("cashdesk", EmulatorOptions::keypad());
    let keymap = DeviceConfig::keymap(&[(1, "yes"), (2, "neutral"), (3, "no")]);
    let kept: PathBuf = dir.path().join("kept-files");
    let not_pem = dir.path().join("not-a-certificate.pem");
    fs::write(&not_pem, "this is not a certificate\n").expect("write the file");
    let http_sink = |ca_file: Option<&Path>| {
        let mut text = "\n[[sink]]\nname = \"reporter\"\nkind = \"http\"\nurl = \"https://127.0.0.1:9/v1/events\"\n".to_string();
        if let Some(path) = ca_file {
            text.push_str(&format!("ca_file = \"{}\"\n", path.display()));
        }
        text
    };
    let config = dir.write_config(&[DeviceConfig::of(&keypad, "recommend", keymap.clone())]);
    append(&config, &(file_sink("kept", &kept) + &http_sink(None)));
    let mut agent = dir.start_agent(&config, &[&keypad]);
    for seq in 1..=10u16 {
        keypad.press(keypad_press(1, seq));
    }
    dir.wait_for_events(10, STORE_TIMEOUT);

    // The device changed (another question) and the sink changed to a
    // certificate file that cannot be read as one.
    let changed = dir.write_config(&[DeviceConfig::of(&keypad, "another question", keymap)]);
    append(
        &changed,
        &(file_sink("kept", &kept) + &http_sink(Some(&not_pem))),
    );
    agent.signal(Signal::SIGHUP);
    dir.wait_until(RELOAD_TIMEOUT, "the reload to be refused", || {
        let stderr = stderr_of(&dir);
        if stderr.contains("the new configuration is not used") {
            Ok(())
        } else {
            Err("no refusal logged yet".to_string())
        }
    });
    for seq in 11..=20u16 {
        keypad.press(keypad_press(2, seq));
    }
    let events = dir.wait_for_events(20, STORE_TIMEOUT);
    dir.wait_until(RELOAD_TIMEOUT, "the file sink to write every press", || {
        let count = press_ids_in(&kept).len();
        if count == 20 {
            Ok(())
        } else {
            Err(format!("{count} of 20 lines"))
        }
    });
    agent.assert_running();
    agent.stop_cleanly();

    assert!(
        events
            .iter()
            .all(|event| event.question.as_deref() == Some("recommend")),
        "every press under the running configuration's question"
    );
    assert_eq!(
        keypad.observed().queries.len(),
        1,
        "the device was never stopped, so its port was never reopened"
    );
    let stderr = stderr_of(&dir);
    assert!(stderr.contains("not-a-certificate.pem"), "{stderr}");
    assert!(
        !stderr.contains("stopping (removed or changed)"),
        "{stderr}"
    );
}

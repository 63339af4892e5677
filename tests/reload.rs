//! SIGHUP reloads the configuration while presses stream: a broken file is
//! logged and the running configuration goes on; a changed file (a device
//! added, a sink removed) is applied without losing or doubling a press,
//! and without reopening the unchanged device's port.

mod support;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use epm_agent::protocol::UnitId;
use support::{keypad_press, radio_press, DeviceConfig, EmulatorOptions, TestDir, KEYPAD_SERIAL};

const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
const STORE_TIMEOUT: Duration = Duration::from_secs(15);
const REMOTE: UnitId = UnitId(0x301A_0002);

/// The event ids in a file sink's folder, line by line.
fn ids_in(folder: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for entry in entries.flatten() {
        let text = fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).expect("an ndjson line");
            ids.push(value["id"].as_str().expect("an id").to_string());
        }
    }
    ids
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
        let (kept_ids, removed_ids) = (ids_in(&kept), ids_in(&removed));
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
    dir.wait_until(RELOAD_TIMEOUT, "the kept sink to write everything", || {
        let count = ids_in(&kept).len();
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

    let kept_ids = ids_in(&kept);
    let unique: HashSet<&String> = kept_ids.iter().collect();
    assert_eq!(
        (kept_ids.len(), unique.len()),
        (events.len(), events.len()),
        "the kept sink: each event once"
    );
    assert_eq!(
        ids_in(&removed).len(),
        removed_before,
        "the removed sink wrote nothing after the reload"
    );

    // The keypad's port was never reopened: it was asked for its identity once.
    assert_eq!(
        keypad.observed().queries.len(),
        1,
        "the unchanged device kept its port"
    );
    let stderr = stderr_of(&dir);
    assert!(stderr.contains("configuration applied"), "{stderr}");
}

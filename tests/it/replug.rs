//! Unplug and replug while the agent runs: the port's path disappears and
//! its terminal hangs up, then a new terminal appears at the same path. The
//! agent notices the unplug, reopens the path by itself within 2 s of the
//! replug (no restart), counts the reconnect, and presses flow again.

use crate::support;

use std::time::{Duration, Instant};

use epm_agent::protocol::UnitId;
use support::{
    assert_nothing_stored_twice, keypad_press, radio_press, DeviceConfig, Emulator,
    EmulatorOptions, TestDir, COUNTERS_TIMEOUT, KEYPAD_SERIAL, START_TIMEOUT,
};

const REMOTE: UnitId = UnitId(0x301A_0002);
const PRESSES_PER_PLUG: u16 = 10;
/// Long enough for the agent's reopen backoff to reach its cap (100 ms
/// doubling to 1 s).
const UNPLUGGED_FOR: Duration = Duration::from_millis(1_600);
/// The agent must be talking to the new terminal this soon after it appears.
const RECONNECT_WITHIN: Duration = Duration::from_secs(2);
/// How long a plug's presses may take to be stored and acknowledged.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn keypad_and_receiver_are_reopened_after_a_replug_without_a_restart() {
    let dir = TestDir::new();
    let keypad = dir.keypad("cashdesk", EmulatorOptions::keypad());
    let receiver = dir.receiver("entrance", EmulatorOptions::receiver());
    let keymap = DeviceConfig::keymap(&[(1, "yes"), (2, "no")]);
    let config = dir.write_config(&[
        DeviceConfig::of(&keypad, "satisfied", keymap.clone()),
        DeviceConfig::of(&receiver, "recommend", keymap),
    ]);
    let mut agent = dir.start_agent(&config, &[&keypad, &receiver]);

    send_presses(&keypad, &receiver, 1..=PRESSES_PER_PLUG);
    keypad.wait_for_ack(KEYPAD_SERIAL, PRESSES_PER_PLUG, STORE_TIMEOUT);
    receiver.wait_for_ack(REMOTE, PRESSES_PER_PLUG, STORE_TIMEOUT);
    // Every radio copy read before the unplug, so none is lost with it.
    dir.wait_for_device(
        "entrance",
        COUNTERS_TIMEOUT,
        "the radio copies counted",
        |device| device.duplicates == 2 * i64::from(PRESSES_PER_PLUG),
    );

    keypad.unplug();
    receiver.unplug();
    for name in ["cashdesk", "entrance"] {
        dir.wait_for_device(name, COUNTERS_TIMEOUT, "state disconnected", |device| {
            device.state == "disconnected"
        });
    }
    // Scenario time: the devices stay unplugged while the agent retries.
    std::thread::sleep(UNPLUGGED_FOR);
    agent.assert_running();

    let keypad_replugged_at = keypad.replug();
    let receiver_replugged_at = receiver.replug();
    let keypad_reopened_at = keypad.wait_for_query(2, START_TIMEOUT);
    let receiver_reopened_at = receiver.wait_for_query(2, START_TIMEOUT);
    check_reconnect_time("cashdesk", keypad_replugged_at, keypad_reopened_at, &dir);
    check_reconnect_time(
        "entrance",
        receiver_replugged_at,
        receiver_reopened_at,
        &dir,
    );

    send_presses(
        &keypad,
        &receiver,
        PRESSES_PER_PLUG + 1..=2 * PRESSES_PER_PLUG,
    );
    keypad.wait_for_ack(KEYPAD_SERIAL, 2 * PRESSES_PER_PLUG, STORE_TIMEOUT);
    receiver.wait_for_ack(REMOTE, 2 * PRESSES_PER_PLUG, STORE_TIMEOUT);
    // The keypad repeated its last press on the new connection: a duplicate.
    assert_eq!(
        keypad.observed().repeated_presses,
        [keypad_press(1, PRESSES_PER_PLUG)]
    );
    dir.wait_for_device(
        "cashdesk",
        COUNTERS_TIMEOUT,
        "one reconnect, the repeat counted",
        |device| device.reconnects == 1 && device.duplicates == 1,
    );
    dir.wait_for_device(
        "entrance",
        COUNTERS_TIMEOUT,
        "one reconnect, the radio copies counted",
        |device| device.reconnects == 1 && device.duplicates == 2 * i64::from(2 * PRESSES_PER_PLUG),
    );
    for name in ["cashdesk", "entrance"] {
        let device = dir.device(name);
        assert_eq!(device.state, "connected", "{device:?}");
    }
    agent.stop_cleanly();

    let events = dir.events();
    assert_nothing_stored_twice(&events, dir.diagnostics());
    for (name, unit) in [("cashdesk", KEYPAD_SERIAL), ("entrance", REMOTE)] {
        let seqs: Vec<u16> = events
            .iter()
            .filter(|event| event.device == name)
            .map(|event| {
                assert_eq!(event.unit, unit.to_string(), "{event:?}");
                event.seq
            })
            .collect();
        let expected: Vec<u16> = (1..=2 * PRESSES_PER_PLUG).collect();
        assert_eq!(
            seqs, expected,
            "{name}: the presses of both plugs, once each, in order"
        );
        let device = dir.device(name);
        assert_eq!(
            (device.presses, device.reconnects),
            (i64::from(2 * PRESSES_PER_PLUG), 1),
            "{device:?}"
        );
    }
}

/// Presses `seqs` on the keypad and on one remote (three radio copies each).
fn send_presses(keypad: &Emulator, receiver: &Emulator, seqs: std::ops::RangeInclusive<u16>) {
    for seq in seqs {
        let key = (seq % 2) as u8 + 1;
        keypad.press(keypad_press(key, seq));
        receiver.press(radio_press(REMOTE, key, seq, -61, Some(87)));
    }
}

fn check_reconnect_time(name: &str, replugged_at: Instant, reopened_at: Instant, dir: &TestDir) {
    let took = reopened_at.saturating_duration_since(replugged_at);
    assert!(
        took <= RECONNECT_WITHIN,
        "{name}: the agent reopened the port {took:?} after the replug \
         (limit {RECONNECT_WITHIN:?}){}",
        dir.diagnostics().report()
    );
    eprintln!("{name}: reopened {took:?} after the replug");
}

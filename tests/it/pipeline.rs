//! The whole pipeline, end to end, through pseudo-terminals: a ProLAN-202
//! keypad and a ProLAN-501 receiver with three remotes talk to the
//! `epm-agent` binary over a noisy line (garbage between frames, frames
//! split across writes, corrupted frames, radio copies), and the store ends
//! up with exactly one row per press, each with the right fields, and the
//! right counters.

use crate::support;

use std::time::Duration;

use epm_agent::protocol::{Press, UnitId};
use support::{
    assert_nothing_stored_twice, keypad_press, radio_press, DeviceConfig, EmulatorOptions,
    EventRow, TestDir, COUNTERS_TIMEOUT, KEYPAD_SERIAL, RECEIVER_ID, START_TIMEOUT,
};

const KEYPAD_PRESSES: usize = 100;
/// 50 presses before the keypad's seq wraps to 0, 50 after.
const FIRST_KEYPAD_SEQ: u16 = 65_486;
const RADIO_PRESSES: usize = 200;
const REMOTES: [UnitId; 3] = [
    UnitId(0x301A_0001),
    UnitId(0x301A_0002),
    UnitId(0x301A_0003),
];
/// Each remote's first counter; the second remote's wraps to 0 on the way.
const FIRST_COUNTERS: [u16; 3] = [0, 65_500, 258];
/// A remote that only ever sends corrupted frames: a row of it is a leak.
const CORRUPTED_REMOTE: UnitId = UnitId(0x301A_0F00);

/// How long 300 presses may take to reach the store.
const PIPELINE_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn presses_over_noisy_lines_are_stored_once_with_their_fields_and_counted() {
    let dir = TestDir::new();
    let keypad = dir.keypad(
        "cashdesk",
        busy_noisy_line(EmulatorOptions::keypad(), Duration::from_millis(300), 202),
    );
    let receiver = dir.receiver(
        "entrance",
        busy_noisy_line(EmulatorOptions::receiver(), Duration::from_millis(200), 501),
    );
    let config = dir.write_config(&[
        // Key 4 is pressed but not mapped: its answer is NULL.
        DeviceConfig::of(
            &keypad,
            "satisfied",
            DeviceConfig::keymap(&[(1, "yes"), (2, "neutral"), (3, "no")]),
        ),
        // Keys 1-11 are the NPS scores 0-10; key 12 is not mapped.
        DeviceConfig::of(
            &receiver,
            "recommend",
            (1..=11u8).map(|key| (key, (key - 1).to_string())).collect(),
        ),
    ]);
    let mut agent = dir.start_agent(&config, &[&keypad, &receiver]);

    let mut keypad_corrupted = 0;
    for index in 0..KEYPAD_PRESSES {
        keypad.press(keypad_press(
            index as u8 % 4 + 1,
            FIRST_KEYPAD_SEQ.wrapping_add(index as u16),
        ));
        if index % 20 == 10 {
            // A seq never sent valid: a row with it is a leak.
            keypad.corrupted_press(keypad_press(1, 30_000 + index as u16));
            keypad_corrupted += 1;
        }
    }
    let mut radio_corrupted = 0;
    for index in 0..RADIO_PRESSES {
        let remote = index % REMOTES.len();
        let counter = FIRST_COUNTERS[remote].wrapping_add((index / REMOTES.len()) as u16);
        let battery = match remote {
            0 => Some(100 - (index % 60) as u8),
            1 => None, // 255 on the wire: unknown
            _ => Some(5),
        };
        receiver.press(radio_press(
            REMOTES[remote],
            index as u8 % 12 + 1,
            counter,
            -40 - (index % 50) as i8,
            battery,
        ));
        if index % 25 == 12 {
            receiver.corrupted_press(radio_press(
                CORRUPTED_REMOTE,
                2,
                index as u16,
                -50,
                Some(50),
            ));
            radio_corrupted += 1;
        }
    }

    let keypad_sent = keypad.wait_until_sent(PIPELINE_TIMEOUT);
    let receiver_sent = receiver.wait_until_sent(PIPELINE_TIMEOUT);
    dir.wait_for_events(KEYPAD_PRESSES + RADIO_PRESSES, PIPELINE_TIMEOUT);
    // Duplicates and bad frames are saved with the device's state, about once
    // a second; the clean stop below saves them one last time.
    dir.wait_for_device(
        "entrance",
        COUNTERS_TIMEOUT,
        "every radio copy counted",
        |device| {
            device.duplicates >= 2 * RADIO_PRESSES as i64 && device.bad_frames >= radio_corrupted
        },
    );
    dir.wait_for_device(
        "cashdesk",
        COUNTERS_TIMEOUT,
        "every corrupted line counted",
        |device| device.bad_frames >= keypad_corrupted,
    );
    agent.stop_cleanly();

    assert_eq!(keypad_sent.sent_presses.len(), KEYPAD_PRESSES);
    assert_eq!(keypad_sent.corrupted_frames, keypad_corrupted as u64);
    assert!(
        keypad_sent.repeated_presses.is_empty(),
        "the agent reopened the keypad's port"
    );
    assert_eq!(receiver_sent.sent_presses.len(), RADIO_PRESSES);
    assert_eq!(receiver_sent.extra_copies, 2 * RADIO_PRESSES as u64);
    assert_eq!(receiver_sent.corrupted_frames, radio_corrupted as u64);

    let events = dir.events();
    assert_nothing_stored_twice(&events, dir.diagnostics());
    let stored = |device: &str| -> Vec<StoredPress> {
        events
            .iter()
            .filter(|event| event.device == device)
            .map(StoredPress::from)
            .collect()
    };
    let expected_keypad: Vec<StoredPress> = keypad_sent
        .sent_presses
        .iter()
        .map(|press| {
            StoredPress::expected("prolan-202", "satisfied", press, keypad_answer(press.key))
        })
        .collect();
    let expected_radio: Vec<StoredPress> = receiver_sent
        .sent_presses
        .iter()
        .map(|press| {
            StoredPress::expected("prolan-501", "recommend", press, radio_answer(press.key))
        })
        .collect();
    check_rows("cashdesk", &stored("cashdesk"), &expected_keypad);
    check_rows("entrance", &stored("entrance"), &expected_radio);
    assert_eq!(
        events.len(),
        KEYPAD_PRESSES + RADIO_PRESSES,
        "rows of unknown devices"
    );

    let cashdesk = dir.device("cashdesk");
    assert_eq!(
        (
            cashdesk.presses,
            cashdesk.duplicates,
            cashdesk.bad_frames,
            cashdesk.reconnects
        ),
        (KEYPAD_PRESSES as i64, 0, keypad_corrupted, 0),
        "cashdesk (presses, duplicates, bad_frames, reconnects): {cashdesk:?}"
    );
    assert_eq!(
        cashdesk.hardware_id.as_deref(),
        Some(KEYPAD_SERIAL.to_string().as_str())
    );
    let entrance = dir.device("entrance");
    assert_eq!(
        (
            entrance.presses,
            entrance.duplicates,
            entrance.bad_frames,
            entrance.reconnects
        ),
        (
            RADIO_PRESSES as i64,
            2 * RADIO_PRESSES as i64,
            radio_corrupted,
            0
        ),
        "entrance (presses, duplicates, bad_frames, reconnects): {entrance:?}"
    );
    assert_eq!(
        entrance.hardware_id.as_deref(),
        Some(RECEIVER_ID.to_string().as_str())
    );
    // The garbage between frames reached the agent (and was skipped).
    assert!(cashdesk.noise_bytes > 0, "{cashdesk:?}");
    assert!(entrance.noise_bytes > 0, "{entrance:?}");
}

#[test]
fn presses_closer_than_min_interval_are_stored_suppressed() {
    const MIN_INTERVAL: Duration = Duration::from_secs(1);
    let dir = TestDir::new();
    let keypad = dir.keypad("cashdesk", EmulatorOptions::keypad());
    let config = dir.write_config(&[DeviceConfig {
        min_interval_s: MIN_INTERVAL.as_secs_f64(),
        ..DeviceConfig::of(
            &keypad,
            "satisfied",
            DeviceConfig::keymap(&[(1, "yes"), (2, "no")]),
        )
    }]);
    let mut agent = dir.start_agent(&config, &[&keypad]);

    // Two presses back to back: the second one is spam.
    keypad.press(keypad_press(1, 1));
    keypad.press(keypad_press(2, 2));
    keypad.wait_for_ack(KEYPAD_SERIAL, 2, START_TIMEOUT);
    // The customer comes back later than the interval, counted from the
    // agent reading press 2 (which was before its ACK): scenario time, not
    // a wait for the agent.
    std::thread::sleep(MIN_INTERVAL + Duration::from_millis(300));
    keypad.press(keypad_press(1, 3));
    keypad.wait_for_ack(KEYPAD_SERIAL, 3, START_TIMEOUT);
    agent.assert_running();

    let stored: Vec<(u16, bool)> = dir
        .events()
        .iter()
        .map(|event| (event.seq, event.suppressed))
        .collect();
    assert_eq!(
        stored,
        [(1, false), (2, true), (3, false)],
        "(seq, suppressed)"
    );
    assert_eq!(
        dir.device("cashdesk").presses,
        3,
        "suppressed presses are stored and counted"
    );
}

/// `defaults` on a busy, noisy line: a heartbeat every `heartbeat_every`, up
/// to 12 bytes of garbage before every frame, frames split across writes; the
/// garbage and the splitting are replayed from `seed`.
fn busy_noisy_line(
    defaults: EmulatorOptions,
    heartbeat_every: Duration,
    seed: u64,
) -> EmulatorOptions {
    EmulatorOptions {
        heartbeat_every,
        max_noise_bytes: 12,
        split_frames: true,
        seed,
        ..defaults
    }
}

/// The columns of a row that a press determines.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StoredPress {
    model: String,
    unit: String,
    key: u8,
    answer: Option<String>,
    question: Option<String>,
    seq: u16,
    rssi: Option<i8>,
    battery: Option<u8>,
    suppressed: bool,
}

impl StoredPress {
    fn expected(model: &str, question: &str, press: &Press, answer: Option<String>) -> StoredPress {
        StoredPress {
            model: model.into(),
            unit: format!("{:08X}", press.unit.0),
            key: press.key,
            answer,
            question: Some(question.into()),
            seq: press.seq,
            rssi: press.rssi,
            battery: press.battery,
            suppressed: false,
        }
    }
}

impl From<&EventRow> for StoredPress {
    fn from(event: &EventRow) -> StoredPress {
        StoredPress {
            model: event.model.clone(),
            unit: event.unit.clone(),
            key: event.key,
            answer: event.answer.clone(),
            question: event.question.clone(),
            seq: event.seq,
            rssi: event.rssi,
            battery: event.battery,
            suppressed: event.suppressed,
        }
    }
}

fn keypad_answer(key: u8) -> Option<String> {
    match key {
        1 => Some("yes".into()),
        2 => Some("neutral".into()),
        3 => Some("no".into()),
        _ => None,
    }
}

fn radio_answer(key: u8) -> Option<String> {
    (1..=11).contains(&key).then(|| (key - 1).to_string())
}

/// Compares a device's rows, in store order, with the presses in the order
/// they were sent, naming the first rows that differ.
fn check_rows(device: &str, stored: &[StoredPress], expected: &[StoredPress]) {
    if stored == expected {
        return;
    }
    let first_difference = stored
        .iter()
        .zip(expected)
        .position(|(stored, expected)| stored != expected)
        .unwrap_or(stored.len().min(expected.len()));
    panic!(
        "{device}: {} rows stored, {} presses sent; first difference at row \
         {first_difference}:\n  stored:   {:?}\n  expected: {:?}",
        stored.len(),
        expected.len(),
        stored.get(first_difference),
        expected.get(first_difference),
    );
}

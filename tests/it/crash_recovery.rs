//! `kill -9` of the agent while a keypad streams presses, then a restart on
//! the same store and the same port: a press the agent acknowledged (which
//! it does only after the commit) is in the store exactly once, nothing is
//! stored twice, the keypad's repeat of its last press on the new connection
//! is recognised as a duplicate, and presses after the restart are stored as
//! usual.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::{
    assert_nothing_stored_twice, keypad_press, DeviceConfig, EmulatorOptions, EventRow, TestDir,
    COUNTERS_TIMEOUT, KEYPAD_SERIAL, START_TIMEOUT,
};

/// More presses than can be sent before the kill: the stream is still
/// running when the agent dies.
const PLANNED_PRESSES: u16 = 3_000;
/// Presses come in bursts, so that the kill finds several in flight.
const BURST: u16 = 25;
const BETWEEN_BURSTS: Duration = Duration::from_millis(10);
/// The kill comes once this many presses are stored and acknowledged...
const RUNNING_AFTER_ACKS: usize = 100;
/// ...at the moment this press is written, in the middle of the next burst,
/// while the agent is reading and committing it.
const KILL_WHEN_SENT: usize = 110;
/// How long the stream may take to reach either of those points.
const STREAM_TIMEOUT: Duration = Duration::from_secs(15);
const PRESSES_AFTER_RESTART: u16 = 5;

#[test]
fn acked_presses_survive_kill_9_once_and_the_repeated_last_press_is_a_duplicate() {
    let dir = TestDir::new();
    let keypad = dir.keypad(
        "cashdesk",
        EmulatorOptions {
            // Unsplit, a burst goes out in well under a millisecond, faster
            // than the agent commits it: the kill finds presses in flight.
            split_frames: false,
            seed: 9,
            ..EmulatorOptions::keypad()
        },
    );
    let config = dir.write_config(&[DeviceConfig::of(
        &keypad,
        "satisfied",
        DeviceConfig::keymap(&[(1, "yes"), (2, "neutral"), (3, "no")]),
    )]);
    let mut agent = dir.start_agent(&config, &[&keypad]);

    // 1. Killed in the middle of a stream: some presses are committed and
    // acknowledged, some committed and not yet acknowledged, some read and
    // not committed, some still in the terminal's buffer.
    for seq in 1..=PLANNED_PRESSES {
        keypad.press(keypad_press(key_of(seq), seq));
        if seq % BURST == 0 {
            keypad.pause(BETWEEN_BURSTS);
        }
    }
    keypad.wait_for_acks(RUNNING_AFTER_ACKS, STREAM_TIMEOUT);
    keypad.wait_until(
        STREAM_TIMEOUT,
        &format!("press {KILL_WHEN_SENT} written"),
        |observed| (observed.sent_presses.len() >= KILL_WHEN_SENT).then_some(()),
    );
    agent.kill();
    // Also reads the ACKs the agent wrote before it died.
    keypad.stop_sending();
    let at_kill = keypad.observed();
    assert!(
        at_kill.sent_presses.len() < usize::from(PLANNED_PRESSES),
        "the stream ended before the kill: nothing was in flight"
    );
    let sent: BTreeSet<u16> = at_kill.sent_presses.iter().map(|press| press.seq).collect();
    let acked: BTreeSet<u16> = at_kill.acks.iter().map(|&(_, seq)| seq).collect();
    assert!(
        acked.is_subset(&sent),
        "acks of presses never sent: {:?}",
        acked.difference(&sent).collect::<Vec<_>>()
    );
    check_store(&dir, &acked, &sent, "right after the kill");
    let last_before_kill = *at_kill.sent_presses.last().expect("presses were sent");

    // 2. Restarted on the same store and port. Whatever the killed agent did
    // not read is still in the terminal and is read now; the keypad sees a
    // new connection and repeats its last press.
    keypad.release_exclusive();
    agent = dir.spawn_agent(&config);
    keypad.wait_for_query(2, START_TIMEOUT);
    // Presses are handled in order: once this one is acknowledged, the
    // backlog and the repeat before it have been judged and committed.
    let marker_seq = last_before_kill.seq + 1;
    let marker = keypad_press(key_of(marker_seq), marker_seq);
    keypad.press(marker);
    keypad.wait_for_ack(KEYPAD_SERIAL, marker.seq, START_TIMEOUT);
    assert_eq!(
        keypad.observed().repeated_presses,
        [last_before_kill],
        "the keypad's repeat"
    );
    let mut sent = sent;
    sent.insert(marker.seq);
    let events = check_store(&dir, &acked, &sent, "after the first restart");
    assert_eq!(
        count_seq(&events, last_before_kill.seq),
        1,
        "the last press before the kill (seq {}), repeated after the restart, \
         must be stored exactly once",
        last_before_kill.seq
    );
    eprintln!(
        "kill mid-stream: {} presses sent before the kill, {} acknowledged by then, \
         {} stored after the restart (with 1 more sent)",
        at_kill.sent_presses.len(),
        acked.len(),
        events.len()
    );

    // 3. Killed again, this time right after the keypad's latest press was
    // acknowledged: after the restart, its repeat is that stored press.
    agent.kill();
    keypad.release_exclusive();
    let duplicates_before = dir.device("cashdesk").duplicates;
    agent = dir.spawn_agent(&config);
    keypad.wait_for_query(3, START_TIMEOUT);
    keypad.wait_until(
        START_TIMEOUT,
        "the repeat of the acknowledged press",
        |observed| (observed.repeated_presses.len() == 2).then_some(()),
    );
    dir.wait_for_device(
        "cashdesk",
        COUNTERS_TIMEOUT,
        "the repeated press counted as a duplicate",
        |device| device.duplicates > duplicates_before,
    );

    // 4. Presses after the restart are stored as usual.
    let next_seqs = marker.seq + 1..=marker.seq + PRESSES_AFTER_RESTART;
    for seq in next_seqs.clone() {
        keypad.press(keypad_press(key_of(seq), seq));
        sent.insert(seq);
    }
    keypad.wait_for_ack(KEYPAD_SERIAL, *next_seqs.end(), START_TIMEOUT);
    agent.stop_cleanly();

    let mut acked_now = acked;
    acked_now.extend(keypad.observed().acks.iter().map(|&(_, seq)| seq));
    let events = check_store(&dir, &acked_now, &sent, "at the end");
    assert_eq!(
        count_seq(&events, marker.seq),
        1,
        "the repeated press (seq {}) is stored once",
        marker.seq
    );
    for seq in next_seqs {
        assert_eq!(
            count_seq(&events, seq),
            1,
            "press seq {seq} after the restart is stored once"
        );
    }
    let cashdesk = dir.device("cashdesk");
    assert_eq!(
        cashdesk.duplicates,
        duplicates_before + 1,
        "only the repeat is a duplicate: {cashdesk:?}"
    );
    assert_eq!(
        cashdesk.presses,
        events.len() as i64,
        "devices.presses counts the rows: {cashdesk:?}"
    );
}

/// Key of the press with this seq: 1, 2, 3, 1, ...
fn key_of(seq: u16) -> u8 {
    (seq % 3) as u8 + 1
}

fn count_seq(events: &[EventRow], seq: u16) -> usize {
    events.iter().filter(|event| event.seq == seq).count()
}

/// Checks the invariants that hold at any moment: nothing stored twice,
/// every acknowledged press stored, every row a press that was sent (with
/// its key). Returns the rows.
fn check_store(
    dir: &TestDir,
    acked: &BTreeSet<u16>,
    sent: &BTreeSet<u16>,
    when: &str,
) -> Vec<EventRow> {
    let events = dir.events();
    assert_nothing_stored_twice(&events, dir.diagnostics());
    let stored: BTreeSet<u16> = events.iter().map(|event| event.seq).collect();
    let missing: Vec<&u16> = acked.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{when}: acknowledged presses missing from the store: {missing:?}"
    );
    for event in &events {
        assert!(
            event.unit == KEYPAD_SERIAL.to_string()
                && sent.contains(&event.seq)
                && event.key == key_of(event.seq),
            "{when}: a row that matches no press sent: {event:?}"
        );
    }
    events
}

//! A device that stops reading what the agent writes (a stalled USB-serial
//! adapter, a receiver busy in its radio, flow control): the agent's ACKs
//! fill the pseudo-terminal, and the agent must go on reading it — every
//! press stored within 2 s of being written, the device's state saying that
//! it does not read, and a SIGTERM still ending the agent within 10 s.

use crate::support;

use std::process::Command;
use std::time::{Duration, Instant};

use epm_agent::protocol::{Press, UnitId};
use support::{keypad_press, radio_press, DeviceConfig, Emulator, EmulatorOptions, TestDir};

/// Presses written while the device does not read.
const PRESSES: usize = 3_000;
/// Written over about this long.
const WRITING_FOR: Duration = Duration::from_secs(20);
/// A press written is stored within this.
const STORED_WITHIN: Duration = Duration::from_secs(2);
const REMOTE: UnitId = UnitId(0x301A_0002);

#[derive(Clone, Copy)]
enum Model {
    Keypad,
    Receiver,
}

fn press(model: Model, index: usize) -> Press {
    let key = (index % 3) as u8 + 1;
    match model {
        Model::Keypad => keypad_press(key, index as u16),
        Model::Receiver => radio_press(REMOTE, key, index as u16, -60, Some(90)),
    }
}

fn emulator(dir: &TestDir, model: Model) -> Emulator {
    match model {
        Model::Keypad => dir.keypad("cashdesk", EmulatorOptions::keypad()),
        Model::Receiver => dir.receiver("entrance", EmulatorOptions::receiver()),
    }
}

/// The device's entry in `epm-agent status --json`.
fn device_status(dir: &TestDir, config: &std::path::Path) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["status", "--json", "--config"])
        .arg(config)
        .output()
        .expect("run status");
    let status: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| dir.diagnostics().fail(format!("status --json: {error}")));
    status["devices"][0].clone()
}

fn check(model: Model) {
    let dir = TestDir::new();
    let device = emulator(&dir, model);
    let mut settings = DeviceConfig::of(
        &device,
        "recommend",
        DeviceConfig::keymap(&[(1, "yes"), (2, "neutral"), (3, "no")]),
    );
    settings.min_interval_s = 0.0;
    let config = dir.write_config(&[settings]);
    let mut agent = dir.start_agent(&config, &[&device]);
    device.stop_reading();

    let pause = WRITING_FOR / PRESSES as u32;
    for index in 0..PRESSES {
        device.press(press(model, index));
        device.pause(pause);
    }
    // (when, how many presses were written by then)
    let mut written: Vec<(Instant, usize)> = Vec::new();
    let mut stored_at: Vec<(usize, Instant)> = Vec::new();
    let deadline = Instant::now() + WRITING_FOR + Duration::from_secs(15);
    loop {
        let now = Instant::now();
        let sent = device.observed().sent_presses.len();
        written.push((now, sent));
        let stored = dir.events().len();
        stored_at.push((stored, now));
        if stored >= PRESSES {
            break;
        }
        if now > deadline {
            dir.diagnostics().fail(format!(
                "{stored} of {PRESSES} presses stored ({sent} written) after {:?}",
                WRITING_FOR + Duration::from_secs(15)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every count written was stored within STORED_WITHIN of being seen
    // written (polled every 100 ms: the bound holds for the poll too).
    for (at, sent) in &written {
        let first_stored = stored_at
            .iter()
            .find(|(stored, _)| stored >= sent)
            .map(|(_, when)| *when)
            .expect("the last look stored everything");
        let lag = first_stored.saturating_duration_since(*at);
        assert!(
            lag <= STORED_WITHIN,
            "{sent} presses written at {:?} were stored {lag:?} later\n{}",
            at.duration_since(written[0].0),
            dir.diagnostics().report()
        );
    }
    let acked = device.observed().acks.len();
    assert!(
        acked < PRESSES,
        "the device read nothing, yet {acked} ACKs arrived: it was not deaf"
    );

    let status = dir.wait_until(Duration::from_secs(5), "the state says it", || {
        let status = device_status(&dir, &config);
        let says = status["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("does not read"));
        if status["state"] == "connected" && says && status["acks_dropped"].as_u64() > Some(0) {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    });
    assert_eq!(status["presses"].as_u64(), Some(PRESSES as u64));

    let stopping = Instant::now();
    agent.stop_cleanly();
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "the stop took {:?}",
        stopping.elapsed()
    );
}

#[test]
fn a_deaf_keypad_is_still_read_and_its_state_says_it() {
    check(Model::Keypad);
}

#[test]
fn a_deaf_receiver_is_still_read_and_its_state_says_it() {
    check(Model::Receiver);
}

//! `port = "auto"`: only USB serial ports are candidates (filtered by the
//! configured USB ids), and among them the device whose identity answers
//! as the configured model (and hardware id) is chosen. Pseudo-terminals
//! stand in for the ports; they are not in the OS port list, so the probe
//! is given them as candidates directly.

use crate::support;

use epm_agent::config::{AutoMatch, Model};
use epm_agent::port::{self, PassedOver, PortInfo, UsbInfo};
use epm_agent::protocol::{Decoded, Inbound, UnitId};
use futures_util::StreamExt;
use support::{EmulatorOptions, TestDir};

fn usb(path: &str, vid: u16, pid: u16) -> PortInfo {
    PortInfo {
        path: path.into(),
        usb: Some(UsbInfo {
            vid,
            pid,
            serial_number: None,
            manufacturer: None,
            product: None,
        }),
    }
}

#[test]
fn only_usb_ports_matching_the_ids_are_candidates() {
    let ports = vec![
        PortInfo {
            path: "/dev/ttyS0".into(),
            usb: None,
        },
        usb("/dev/ttyUSB0", 0x0403, 0x6001),
        usb("/dev/ttyACM0", 0x2341, 0x0043),
        usb("/dev/ttyACM1", 0x2341, 0x8036),
    ];
    let check = |criteria: AutoMatch, expected: &[&str]| {
        assert_eq!(
            port::auto_candidates(&ports, &criteria),
            expected,
            "{criteria:?}"
        );
    };
    check(
        AutoMatch::default(),
        &["/dev/ttyUSB0", "/dev/ttyACM0", "/dev/ttyACM1"],
    );
    check(
        AutoMatch {
            usb_vid: Some(0x2341),
            ..AutoMatch::default()
        },
        &["/dev/ttyACM0", "/dev/ttyACM1"],
    );
    check(
        AutoMatch {
            usb_vid: Some(0x2341),
            usb_pid: Some(0x8036),
            hardware_id: None,
        },
        &["/dev/ttyACM1"],
    );
    check(
        AutoMatch {
            usb_pid: Some(0x9999),
            ..AutoMatch::default()
        },
        &[],
    );
}

#[tokio::test]
async fn the_probe_finds_the_configured_model_and_hardware_id() {
    let dir = TestDir::new();
    let keypad = dir.keypad("keypad", EmulatorOptions::keypad());
    let first_receiver = dir.receiver("radio-a", EmulatorOptions::receiver());
    let second_receiver = dir.receiver(
        "radio-b",
        EmulatorOptions {
            hardware_id: UnitId(0x5010_00B2),
            ..EmulatorOptions::receiver()
        },
    );
    let path = |emulator: &support::Emulator| emulator.port_path().display().to_string();
    let candidates = vec![path(&keypad), path(&first_receiver), path(&second_receiver)];

    let found = port::discover(
        &candidates,
        Model::Prolan501,
        115_200,
        &AutoMatch {
            hardware_id: Some(UnitId(0x5010_00B2)),
            ..AutoMatch::default()
        },
        &mut PassedOver::default(),
    )
    .await
    .expect("the second receiver answers");
    assert_eq!(found.path, path(&second_receiver));
    assert_eq!(found.identity.hardware_id, UnitId(0x5010_00B2));
    drop(found);

    let found = port::discover(
        &candidates,
        Model::Prolan202,
        9_600,
        &AutoMatch::default(),
        &mut PassedOver::default(),
    )
    .await
    .expect("the keypad answers");
    assert_eq!(found.path, path(&keypad));
    assert_eq!(found.identity.hardware_id, support::KEYPAD_SERIAL);
    drop(found);

    let not_there = AutoMatch {
        hardware_id: Some(UnitId(0x0BAD_0BAD)),
        ..AutoMatch::default()
    };
    let mut passed_over = PassedOver::default();
    let missing = port::discover(
        &candidates,
        Model::Prolan501,
        115_200,
        &not_there,
        &mut passed_over,
    )
    .await;
    let Err(error) = missing else {
        panic!("a receiver that is not there was found")
    };
    let message = error.to_string();
    assert!(
        message.contains("0BAD0BAD") && message.contains("plugged in"),
        "{message}"
    );

    // Looking again at once (the driver does, every second while the
    // device is missing) asks none of the ports that answered as others.
    let emulators = [&keypad, &first_receiver, &second_receiver];
    let queries = |emulators: &[&support::Emulator]| -> Vec<usize> {
        emulators
            .iter()
            .map(|emulator| {
                emulator.sync();
                emulator.observed().queries.len()
            })
            .collect()
    };
    let before = queries(&emulators);
    let again = port::discover(
        &candidates,
        Model::Prolan501,
        115_200,
        &not_there,
        &mut passed_over,
    )
    .await;
    assert!(again.is_err(), "still not there");
    assert_eq!(queries(&emulators), before, "no port was asked again");
}

/// Presses a receiver sends while it is being asked who it is (a customer
/// pressing as the agent starts) are kept with the port it was found on,
/// in order, so that the driver stores and acknowledges them.
#[tokio::test]
async fn presses_read_while_probing_are_handed_on_not_dropped() {
    let dir = TestDir::new();
    let receiver = dir.receiver("radio", EmulatorOptions::receiver());
    let remote = UnitId(0x301A_0002);
    for counter in 1..=3u16 {
        receiver.press(support::radio_press(remote, 1, counter, -60, Some(90)));
    }
    receiver.sync();
    let candidates = vec![receiver.port_path().display().to_string()];
    let found = port::discover(
        &candidates,
        Model::Prolan501,
        115_200,
        &AutoMatch::default(),
        &mut PassedOver::default(),
    )
    .await
    .expect("the receiver answers");
    let press_seq = |decoded: &Decoded| match decoded {
        Decoded::Message(Inbound::Press(press)) => Some(press.seq),
        _ => None,
    };
    // What came before the identity is handed on with the port; what came
    // after it is still on the port. Together: every copy, in order (each
    // press came three times, as the radio repeats it; the driver's
    // duplicate filter keeps one).
    let mut counters: Vec<u16> = found.earlier.iter().filter_map(press_seq).collect();
    let mut link = found.link;
    while counters.len() < 9 {
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), link.next())
            .await
            .unwrap_or_else(|_| panic!("only {counters:?} arrived"));
        match next {
            Some(Ok(decoded)) => counters.extend(press_seq(&decoded)),
            other => panic!("the port ended after {counters:?}: {other:?}"),
        }
    }
    assert_eq!(counters, vec![1, 1, 1, 2, 2, 2, 3, 3, 3]);
}

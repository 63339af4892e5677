//! The ProLAN-202 codec against the contract (`shared/spec/prolan-serial.md`):
//! the spec's worked examples byte for byte, the fixtures in
//! `fixtures/prolan202/` through one `check` that also replays every input in
//! one-byte and pseudo-random chunks, the host and keypad encoders, and
//! proptest properties (no panic, bounded buffer, no invented press, a valid
//! line is found in any noise).

use crate::codec_support;

use bytes::BytesMut;
use codec_support::{
    bad, check, decode_in_chunks, encode_outbound, fixture_text, is_found_in_noise, round_trips,
};
use epm_agent::protocol::prolan202::{self, Codec};
use epm_agent::protocol::{
    BadFrame, Decoded, Heartbeat, Identity, Inbound, Outbound, Press, UnitId,
};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

const SERIAL: UnitId = UnitId(0x202A_0F31);

/// Loads `fixtures/prolan202/<name>.txt`: lines starting with `#` are
/// comments, blank lines are skipped, every other line is data written with
/// the escapes `\r`, `\n`, `\\` and `\xHH` (the file's own line breaks are not
/// data).
fn fixture(name: &str) -> Vec<u8> {
    let (path, text) = fixture_text("prolan202", &format!("{name}.txt"));
    let mut bytes = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut rest = line.as_bytes();
        while let Some((&byte, tail)) = rest.split_first() {
            rest = tail;
            if byte != b'\\' {
                bytes.push(byte);
                continue;
            }
            let (unescaped, tail) = match rest {
                [b'r', tail @ ..] => (b'\r', tail),
                [b'n', tail @ ..] => (b'\n', tail),
                [b'\\', tail @ ..] => (b'\\', tail),
                [b'x', high, low, tail @ ..] => {
                    let hex = std::str::from_utf8(&[*high, *low])
                        .ok()
                        .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                        .unwrap_or_else(|| panic!("bad \\x escape in {}: {line}", path.display()));
                    (hex, tail)
                }
                _ => panic!("bad escape in {}: {line}", path.display()),
            };
            bytes.push(unescaped);
            rest = tail;
        }
    }
    bytes
}

fn press(unit: UnitId, key: u8, seq: u16) -> Decoded {
    Decoded::Message(Inbound::Press(Press {
        unit,
        key,
        seq,
        rssi: None,
        battery: None,
    }))
}

fn heartbeat(uptime_s: u32) -> Decoded {
    Decoded::Message(Inbound::Heartbeat(Heartbeat {
        unit: Some(SERIAL),
        uptime_s,
        remotes_heard: None,
    }))
}

fn identity(model: &str, firmware: &str) -> Decoded {
    Decoded::Message(Inbound::Identity(Identity {
        hardware_id: SERIAL,
        model: model.to_owned(),
        firmware: firmware.to_owned(),
        radio_channel: None,
    }))
}

/// The spec's worked examples, exact bytes, and what they mean.
fn spec_examples() -> Vec<(&'static [u8], Inbound)> {
    vec![
        (
            b"$I,202A0F31,PL202,1.4*67\r\n",
            Inbound::Identity(Identity {
                hardware_id: SERIAL,
                model: "PL202".to_owned(),
                firmware: "1.4".to_owned(),
                radio_channel: None,
            }),
        ),
        (
            b"$K,202A0F31,1,17*55\r\n",
            Inbound::Press(Press {
                unit: SERIAL,
                key: 1,
                seq: 17,
                rssi: None,
                battery: None,
            }),
        ),
        (
            b"$H,202A0F31,3600*48\r\n",
            Inbound::Heartbeat(Heartbeat {
                unit: Some(SERIAL),
                uptime_s: 3600,
                remotes_heard: None,
            }),
        ),
    ]
}

#[test]
fn spec_examples_decode_exactly() {
    for (bytes, message) in spec_examples() {
        check::<Codec>(bytes, &[Decoded::Message(message)]);
    }
}

#[test]
fn spec_examples_encode_exactly() {
    for (bytes, message) in spec_examples() {
        let mut out = BytesMut::new();
        prolan202::encode_inbound(&message, &mut out);
        assert_eq!(
            &out[..],
            bytes,
            "{message:?} encoded as {:?}",
            String::from_utf8_lossy(&out)
        );
    }
}

#[test]
fn fixture_spec_examples() {
    let noise = check::<Codec>(
        &fixture("spec_examples"),
        &[
            identity("PL202", "1.4"),
            press(SERIAL, 1, 17),
            heartbeat(3600),
        ],
    );
    assert_eq!(noise, 0);
}

#[test]
fn fixture_several_per_read() {
    check::<Codec>(
        &fixture("several_per_read"),
        &[
            press(SERIAL, 1, 17),
            press(SERIAL, 2, 18),
            press(SERIAL, 3, 19),
            Decoded::Message(Inbound::Fault {
                unit: SERIAL,
                code: 1,
            }),
            Decoded::Message(Inbound::Fault {
                unit: SERIAL,
                code: 2,
            }),
            heartbeat(3610),
        ],
    );
}

#[test]
fn fixture_noise_before_and_between_lines_is_skipped_and_counted() {
    let noise = check::<Codec>(
        &fixture("noise"),
        &[press(SERIAL, 1, 17), press(SERIAL, 2, 18)],
    );
    assert_eq!(noise, 5 + 9 + 3);
}

#[test]
fn fixture_bad_checksum() {
    let noise = check::<Codec>(
        &fixture("bad_checksum"),
        &[vec![bad(BadFrame::Checksum); 5], vec![press(SERIAL, 2, 18)]].concat(),
    );
    assert_eq!(noise, 0);
}

#[test]
fn fixture_too_long() {
    let noise = check::<Codec>(
        &fixture("too_long"),
        &[
            identity(
                "ABCDEFGHIJKLMNOPQRST",
                "0123456789012345678901234567890123456789AB",
            ),
            bad(BadFrame::TooLong),
            bad(BadFrame::TooLong),
            press(SERIAL, 1, 17),
        ],
    );
    assert_eq!(noise, 1 + 42);
}

#[test]
fn fixture_unknown_type() {
    check::<Codec>(
        &fixture("unknown_type"),
        &[
            bad(BadFrame::UnknownType),
            bad(BadFrame::UnknownType),
            press(SERIAL, 1, 17),
        ],
    );
}

#[test]
fn fixture_bad_field() {
    check::<Codec>(
        &fixture("bad_field"),
        &[
            vec![bad(BadFrame::Field); 10],
            vec![bad(BadFrame::Shape); 2],
            vec![heartbeat(u32::MAX)],
        ]
        .concat(),
    );
}

#[test]
fn fixture_bare_newline() {
    check::<Codec>(
        &fixture("bare_newline"),
        &[press(SERIAL, 1, 17), press(SERIAL, 2, 18), heartbeat(3600)],
    );
}

#[test]
fn fixture_lower_case() {
    check::<Codec>(
        &fixture("lower_case"),
        &[press(SERIAL, 8, 100), press(SERIAL, 16, 65535)],
    );
}

#[test]
fn fixture_truncated_line_then_good_line() {
    let noise = check::<Codec>(
        &fixture("truncated_then_good"),
        &[press(SERIAL, 1, 17), press(SERIAL, 2, 18), heartbeat(3600)],
    );
    assert_eq!(noise, 10 + 1 + 4);
}

#[test]
fn unfinished_line_at_end_of_stream_is_dropped_as_noise() {
    let noise = check::<Codec>(
        b"$K,202A0F31,1,17*55\r\n$K,202A0F31,2,1",
        &[press(SERIAL, 1, 17)],
    );
    assert_eq!(noise, 15);
}

#[test]
fn unfinished_line_stays_buffered_until_its_end_arrives() {
    let mut codec = Codec::new();
    let mut buffer = BytesMut::from(&b"noise$K,202A0F31,1,1"[..]);
    assert_eq!(codec.decode(&mut buffer).expect("never fails"), None);
    assert_eq!(&buffer[..], b"$K,202A0F31,1,1");
    buffer.extend_from_slice(b"7*55\r\n");
    assert_eq!(
        codec.decode(&mut buffer).expect("never fails"),
        Some(press(SERIAL, 1, 17))
    );
    assert!(buffer.is_empty());
    assert_eq!(codec.noise_bytes(), 5);
}

#[test]
fn host_lines_are_exact() {
    assert_eq!(&encode_outbound::<Codec>(Outbound::Query)[..], b"$Q*51\r\n");
    let ack = Outbound::Ack {
        unit: SERIAL,
        seq: 17,
    };
    assert_eq!(&encode_outbound::<Codec>(ack)[..], b"$A,17*6B\r\n");
}

#[test]
fn host_lines_round_trip_through_the_keypad_side() {
    let mut stream = BytesMut::new();
    stream.extend_from_slice(b"\x00noise$A,1*00\r\n$Z*5A\r\n");
    stream.extend_from_slice(&encode_outbound::<Codec>(Outbound::Query));
    for seq in [0, 1, 17, 9999, u16::MAX] {
        stream.extend_from_slice(&encode_outbound::<Codec>(Outbound::Ack {
            unit: SERIAL,
            seq,
        }));
    }
    stream.extend_from_slice(b"$A,");

    let mut decoded = Vec::new();
    while let Some(message) = prolan202::decode_outbound(&mut stream) {
        decoded.push(message);
    }
    // The line carries no unit: the keypad answers to whoever it is.
    let expected: Vec<Outbound> = std::iter::once(Outbound::Query)
        .chain([0, 1, 17, 9999, u16::MAX].map(|seq| Outbound::Ack {
            unit: UnitId(0),
            seq,
        }))
        .collect();
    assert_eq!(decoded, expected);
    assert_eq!(&stream[..], b"$A,", "the unfinished line is kept");
}

#[test]
fn nothing_is_written_for_a_message_the_keypad_cannot_send() {
    let mut out = BytesMut::new();
    prolan202::encode_inbound(
        &Inbound::UnitStatus {
            unit: SERIAL,
            battery: None,
            rssi: -70,
        },
        &mut out,
    );
    assert!(out.is_empty());
}

/// Bytes that are mostly the protocol's own characters, so that random input
/// reaches the checksum and field parsing, not only the `$` hunt.
fn protocol_noise(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    let alphabet = b"$$KIHE,,*\r\n\n0123456789ABCDEFabcdef".to_vec();
    proptest::collection::vec(
        prop_oneof![any::<u8>(), proptest::sample::select(alphabet)],
        0..max_len,
    )
}

/// Any message a keypad sends, with values the line can carry.
fn keypad_message() -> impl Strategy<Value = Inbound> {
    let unit = any::<u32>().prop_map(UnitId);
    prop_oneof![
        (unit.clone(), "[A-Za-z0-9.]{1,20}", "[A-Za-z0-9.]{1,20}").prop_map(
            |(hardware_id, model, firmware)| Inbound::Identity(Identity {
                hardware_id,
                model,
                firmware,
                radio_channel: None,
            })
        ),
        (unit.clone(), 1u8..=16, any::<u16>()).prop_map(|(unit, key, seq)| {
            Inbound::Press(Press {
                unit,
                key,
                seq,
                rssi: None,
                battery: None,
            })
        }),
        (unit.clone(), any::<u32>()).prop_map(|(unit, uptime_s)| {
            Inbound::Heartbeat(Heartbeat {
                unit: Some(unit),
                uptime_s,
                remotes_heard: None,
            })
        }),
        (unit, any::<u8>()).prop_map(|(unit, code)| Inbound::Fault { unit, code }),
    ]
}

fn contains_ignoring_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

proptest! {
    /// Random input never panics the decoder, never leaves more than a line's
    /// worth buffered (asserted in `decode_in_chunks`), and never invents a
    /// press: the 8-bit checksum can pass by chance, so any press must have
    /// been spelled out in the input (`$K,serial,key,seq*`; serial and
    /// checksum digits may be in either case).
    #[test]
    fn random_bytes_never_invent_a_press(
        input in protocol_noise(600),
        chunk_lengths in proptest::collection::vec(1usize..=100, 0..20),
    ) {
        let (items, _) = decode_in_chunks::<Codec>(&input, chunk_lengths);
        for item in items {
            if let Decoded::Message(Inbound::Press(press)) = item {
                let spelled = format!("$K,{},{},{}*", press.unit, press.key, press.seq);
                prop_assert!(contains_ignoring_case(&input, spelled.as_bytes()), "{press:?}");
            }
        }
    }

    /// A valid line anywhere in noise, however the stream is cut, is found.
    #[test]
    fn a_valid_line_in_noise_is_always_found(
        message in keypad_message(),
        prefix in protocol_noise(200),
        suffix in protocol_noise(200),
        chunk_lengths in proptest::collection::vec(1usize..=100, 0..20),
    ) {
        // No case is rejected: any noise at all must leave the line found.
        is_found_in_noise::<Codec>(message, prefix, &suffix, chunk_lengths, |_, _| false)?;
    }

    /// What the keypad side encodes, the host side decodes to the same message.
    #[test]
    fn keypad_lines_round_trip(message in keypad_message()) {
        round_trips::<Codec>(message)?;
    }

    /// What the host encodes, the keypad side decodes, also after noise.
    #[test]
    fn host_lines_round_trip(seq in any::<u16>(), unit in any::<u32>(), prefix in protocol_noise(100)) {
        for message in [Outbound::Query, Outbound::Ack { unit: UnitId(unit), seq }] {
            let mut stream = BytesMut::from(&prefix[..]);
            stream.extend_from_slice(&encode_outbound::<Codec>(message));
            let mut decoded = None;
            while let Some(found) = prolan202::decode_outbound(&mut stream) {
                decoded = Some(found);
            }
            let expected = match message {
                Outbound::Ack { seq, .. } => Outbound::Ack { unit: UnitId(0), seq },
                Outbound::Query => Outbound::Query,
            };
            prop_assert_eq!(decoded, Some(expected));
        }
    }
}

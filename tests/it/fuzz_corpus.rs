//! The part of fuzzing that runs in CI (`docs/fuzzing.md`): every file of
//! the fuzz corpus in `fixtures/fuzz/<target>/` is replayed through the
//! checks the cargo-fuzz targets run (`fuzz_checks`, shared with them), and a
//! bounded proptest run drives the same checks with generated inputs: valid
//! lines and frames of both directions, mutilated ones, protocol-alphabet
//! and random noise, cut into random chunks; configuration files edited
//! line by line.

use crate::fuzz_checks;

use std::panic;
use std::path::PathBuf;

use bytes::BytesMut;
use epm_agent::protocol::{
    prolan202, prolan501, Heartbeat, Identity, Inbound, Outbound, Press, UnitId,
};
use fuzz_checks::{
    check_config, check_config_text, check_prolan202, check_prolan501, crc16_ccitt_false,
    decoder_input, MAX_CHUNK_LENGTHS,
};
use proptest::prelude::*;
use proptest::test_runner::Config;
use tokio_util::codec::Encoder;

/// Bounds that keep the corpus a fixture, not a data set.
const MAX_CORPUS_FILES: usize = 200;
const MAX_CORPUS_BYTES: u64 = 1 << 20;

/// Replays every file of `fixtures/fuzz/<target>/` through `check`, and
/// fails naming each file that breaks an invariant (a `crash-*` file saved
/// for a bug not yet fixed fails here until it is).
fn replay_corpus(target: &str, check: fn(&[u8])) {
    let folder: PathBuf = [env!("CARGO_MANIFEST_DIR"), "fixtures", "fuzz", target]
        .iter()
        .collect();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", folder.display()))
        .map(|entry| entry.expect("a readable folder entry").path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "{} is empty", folder.display());
    let mut failures = Vec::new();
    for path in &paths {
        let data = std::fs::read(path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
        if panic::catch_unwind(|| check(&data)).is_err() {
            failures.push(path.display().to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files break an invariant (messages above):\n{}",
        failures.len(),
        paths.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_decode_prolan202() {
    replay_corpus("decode_prolan202", check_prolan202);
}

#[test]
fn corpus_decode_prolan501() {
    replay_corpus("decode_prolan501", check_prolan501);
}

#[test]
fn corpus_config() {
    replay_corpus("config", check_config);
}

#[test]
fn corpus_stays_small() {
    let root: PathBuf = [env!("CARGO_MANIFEST_DIR"), "fixtures", "fuzz"]
        .iter()
        .collect();
    let mut files = 0;
    let mut bytes = 0;
    for target in ["decode_prolan202", "decode_prolan501", "config"] {
        for entry in std::fs::read_dir(root.join(target)).expect("the target's corpus folder") {
            let metadata = entry
                .expect("a readable entry")
                .metadata()
                .expect("metadata");
            files += 1;
            bytes += metadata.len();
        }
    }
    assert!(
        files < MAX_CORPUS_FILES && bytes < MAX_CORPUS_BYTES,
        "the corpus holds {files} files, {bytes} bytes: minimise it (scripts/fuzz.sh)"
    );
}

#[test]
fn the_oracle_crc_has_the_spec_check_value() {
    assert_eq!(crc16_ccitt_false(b"123456789"), 0x29B1);
}

/// Any message either model's device side may be asked to send, keys and
/// battery bytes outside their range included.
fn inbound_message() -> impl Strategy<Value = Inbound> {
    let unit = any::<u32>().prop_map(UnitId);
    prop_oneof![
        (
            unit.clone(),
            "[A-Za-z0-9.]{1,12}",
            prop_oneof!["[0-9]{1,3}\\.[0-9]{1,3}", "[!-~]{1,12}"],
            any::<Option<u8>>(),
        )
            .prop_map(|(hardware_id, model, firmware, radio_channel)| {
                Inbound::Identity(Identity {
                    hardware_id,
                    model,
                    firmware,
                    radio_channel,
                })
            }),
        (
            unit.clone(),
            0u8..=20,
            any::<u16>(),
            any::<Option<i8>>(),
            any::<Option<u8>>()
        )
            .prop_map(|(unit, key, seq, rssi, battery)| Inbound::Press(Press {
                unit,
                key,
                seq,
                rssi,
                battery,
            })),
        (any::<Option<u32>>(), any::<u32>(), any::<Option<u8>>()).prop_map(
            |(unit, uptime_s, remotes_heard)| Inbound::Heartbeat(Heartbeat {
                unit: unit.map(UnitId),
                uptime_s,
                remotes_heard,
            })
        ),
        (unit.clone(), any::<Option<u8>>(), any::<i8>()).prop_map(|(unit, battery, rssi)| {
            Inbound::UnitStatus {
                unit,
                battery,
                rssi,
            }
        }),
        (unit, any::<u8>()).prop_map(|(unit, code)| Inbound::Fault { unit, code }),
    ]
}

fn outbound_message() -> impl Strategy<Value = Outbound> {
    prop_oneof![
        Just(Outbound::Query),
        (any::<u32>(), any::<u16>()).prop_map(|(unit, seq)| Outbound::Ack {
            unit: UnitId(unit),
            seq,
        }),
    ]
}

/// How a stream segment is made; the model writes it.
#[derive(Clone, Debug)]
enum Segment {
    Inbound(Inbound),
    Outbound(Outbound),
    /// A line or frame of any type and body, with a good checksum or CRC.
    Checked {
        kind: u8,
        body: Vec<u8>,
    },
    /// The first bytes of an inbound line or frame.
    Truncated(Inbound, usize),
    /// An inbound line or frame with one byte changed.
    Flipped(Inbound, usize, u8),
    Noise(Vec<u8>),
}

fn segment(alphabet: &'static [u8]) -> impl Strategy<Value = Segment> {
    let noise_byte = prop_oneof![any::<u8>(), proptest::sample::select(alphabet)];
    prop_oneof![
        3 => inbound_message().prop_map(Segment::Inbound),
        1 => outbound_message().prop_map(Segment::Outbound),
        1 => (
            prop_oneof![proptest::sample::select(alphabet), any::<u8>()],
            proptest::collection::vec(noise_byte.clone(), 0..40)
        )
            .prop_map(|(kind, body)| Segment::Checked { kind, body }),
        1 => (inbound_message(), 0usize..40).prop_map(|(message, keep)| Segment::Truncated(message, keep)),
        1 => (inbound_message(), 0usize..40, any::<u8>())
            .prop_map(|(message, at, byte)| Segment::Flipped(message, at, byte)),
        2 => proptest::collection::vec(noise_byte, 0..24).prop_map(Segment::Noise),
    ]
}

/// A decoder input: chunk lengths, then segments written by `write`.
fn decoder_data(
    alphabet: &'static [u8],
    write: fn(&Segment, &mut BytesMut),
) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(1u8..=255, 0..=MAX_CHUNK_LENGTHS),
        proptest::collection::vec(segment(alphabet), 0..16),
    )
        .prop_map(move |(chunk_lengths, segments)| {
            let mut stream = BytesMut::new();
            for segment in &segments {
                write(segment, &mut stream);
            }
            decoder_input(&chunk_lengths, &stream)
        })
}

/// Writes a segment of a ProLAN-202 stream.
fn write_keypad(segment: &Segment, out: &mut BytesMut) {
    let inbound = |message: &Inbound| {
        let mut line = BytesMut::new();
        prolan202::encode_inbound(message, &mut line);
        line
    };
    match segment {
        Segment::Inbound(message) => prolan202::encode_inbound(message, out),
        Segment::Outbound(message) => prolan202::Codec::new()
            .encode(*message, out)
            .expect("encoding into a BytesMut never fails"),
        Segment::Checked { kind, body } => {
            let mut content = vec![*kind];
            content.extend_from_slice(body);
            let checksum = content.iter().fold(0, |sum, &byte| sum ^ byte);
            out.extend_from_slice(b"$");
            out.extend_from_slice(&content);
            out.extend_from_slice(format!("*{checksum:02x}\n").as_bytes());
        }
        Segment::Truncated(message, keep) => {
            let line = inbound(message);
            out.extend_from_slice(&line[..(*keep).min(line.len())]);
        }
        Segment::Flipped(message, at, byte) => {
            let mut line = inbound(message);
            if !line.is_empty() {
                let at = at % line.len();
                line[at] = *byte;
            }
            out.extend_from_slice(&line);
        }
        Segment::Noise(noise) => out.extend_from_slice(noise),
    }
}

/// Writes a segment of a ProLAN-501 stream.
fn write_receiver(segment: &Segment, out: &mut BytesMut) {
    let inbound = |message: &Inbound| {
        let mut frame = BytesMut::new();
        prolan501::encode_inbound(message, &mut frame);
        frame
    };
    match segment {
        Segment::Inbound(message) => prolan501::encode_inbound(message, out),
        Segment::Outbound(message) => prolan501::Codec::new()
            .encode(*message, out)
            .expect("encoding into a BytesMut never fails"),
        Segment::Checked { kind, body } => {
            let body = &body[..body.len().min(31)];
            // At most 32 by the line above.
            let mut frame = vec![prolan501::SYNC, body.len() as u8 + 1, *kind];
            frame.extend_from_slice(body);
            let crc = crc16_ccitt_false(&frame[1..]);
            frame.extend_from_slice(&crc.to_be_bytes());
            out.extend_from_slice(&frame);
        }
        Segment::Truncated(message, keep) => {
            let frame = inbound(message);
            out.extend_from_slice(&frame[..(*keep).min(frame.len())]);
        }
        Segment::Flipped(message, at, byte) => {
            let mut frame = inbound(message);
            if !frame.is_empty() {
                let at = at % frame.len();
                frame[at] = *byte;
            }
            out.extend_from_slice(&frame);
        }
        Segment::Noise(noise) => out.extend_from_slice(noise),
    }
}

/// The two shipped configurations, and one of every table.
fn config_base() -> impl Strategy<Value = String> {
    let shipped = |name: &str| {
        let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "config", name]
            .iter()
            .collect();
        std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
    };
    proptest::sample::select(vec![
        shipped("epm-agent.toml"),
        shipped("demo.toml"),
        "[agent]\nid = \"a\"\n\n[[device]]\nname = \"d\"\nmodel = \"prolan-202\"\nport = \"auto\"\n\
         usb_vid = 0x0483\nhardware_id = \"202A0F31\"\n\n[[sink]]\nname = \"s\"\nkind = \"http\"\n\
         url = \"http://127.0.0.1:8080/\"\ntoken_file = \"t\"\n\n[store]\nretention_days = 1\n\n\
         [log]\nlevel = \"epm_agent=debug,warn\"\nformat = \"json\"\n"
            .to_owned(),
    ])
}

/// Every key of every table, one unknown, and an empty one.
const CONFIG_KEYS: &str = "id location data_dir name model port baud question keymap \
    min_interval_s ack usb_vid usb_pid hardware_id sim_remotes sim_presses_per_min \
    retention_days max_size_mb kind url path format token token_env token_file batch_size \
    flush_interval_ms max_backoff_s timeout_s gzip proxy ca_file allow_insecure_http level \
    colour \"\"";

/// Values of every kind, at and past the bounds, one a line.
const CONFIG_VALUES: &str = r#"""
" "
0
-1
1
17
1e400
nan
inf
-0.5
86401
4294967296
true
"auto"
"simulator"
"prolan-501"
"http"
"file"
"https://h/"
"http://example.com/"
"ftp://x"
"http://[::1"
"zz"
0x10000
{ 0 = "x" }
{ 1 = "" }
{ 16 = "yes" }
[1, [2]]
"loud"
"a=b=c"
"info,"
1979-05-27T07:32:00Z
"\u00e9""#;

/// Whole lines: table headers, some broken, and broken syntax.
const CONFIG_LINES: &str = r#"[agent]
[[device]]
[[sink]]
[store]
[log]
[agent
[[device]
[device]
[[agent]]
[log.extra]
= 1
a.b.c = 1
"quoted" = 1
#
[ [sink] ]
x = "unterminated"#;

/// Lines a configuration might be edited with: a key of any table with a
/// value of the wrong kind or out of range, a header, broken syntax, or any
/// text.
fn config_line() -> impl Strategy<Value = String> {
    let key = proptest::sample::select(CONFIG_KEYS.split_whitespace().collect::<Vec<_>>());
    let value = proptest::sample::select(CONFIG_VALUES.lines().collect::<Vec<_>>());
    prop_oneof![
        (key, value).prop_map(|(key, value)| format!("{key} = {value}")),
        proptest::sample::select(CONFIG_LINES.lines().collect::<Vec<_>>()).prop_map(str::to_owned),
        "\\PC{0,30}",
    ]
}

/// A configuration edit: delete, replace or insert a line, or cut the text.
#[derive(Clone, Debug)]
enum Edit {
    Delete(usize),
    Replace(usize, String),
    Insert(usize, String),
    Cut(usize),
}

fn edited_config() -> impl Strategy<Value = String> {
    let edit = prop_oneof![
        3 => any::<usize>().prop_map(Edit::Delete),
        3 => (any::<usize>(), config_line()).prop_map(|(at, line)| Edit::Replace(at, line)),
        3 => (any::<usize>(), config_line()).prop_map(|(at, line)| Edit::Insert(at, line)),
        1 => any::<usize>().prop_map(Edit::Cut),
    ];
    (config_base(), proptest::collection::vec(edit, 0..6)).prop_map(|(base, edits)| {
        let mut lines: Vec<String> = base.lines().map(str::to_owned).collect();
        for edit in edits {
            let count = lines.len().max(1);
            match edit {
                Edit::Delete(at) if !lines.is_empty() => {
                    lines.remove(at % count);
                }
                Edit::Replace(at, line) if !lines.is_empty() => lines[at % count] = line,
                Edit::Insert(at, line) => lines.insert(at % (lines.len() + 1), line),
                Edit::Cut(at) => {
                    let text = lines.join("\n");
                    let cut = text.char_indices().map(|(index, _)| index).nth(at % 2000);
                    let text = &text[..cut.unwrap_or(text.len())];
                    lines = text.split('\n').map(str::to_owned).collect();
                }
                Edit::Delete(_) | Edit::Replace(..) => {}
            }
        }
        lines.join("\n")
    })
}

const KEYPAD_ALPHABET: &[u8] = b"$$KIHEQA,,*\r\n\n0123456789ABCDEFabcdef";
const RECEIVER_ALPHABET: &[u8] = &[0xA5, 0xA5, 0xA5, 0x00, 0x01, 0x02, 0x03, 0x04, 0x0A, 0x81];

/// Bounded for CI (a few seconds in a debug build). A failure is not
/// persisted next to this file: an input worth keeping goes into
/// `fixtures/fuzz/<target>/`, where the replay above runs it.
fn bounded(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(bounded(2000))]

    /// The `decode_prolan202` target's checks, on generated keypad streams.
    #[test]
    fn generated_keypad_streams_keep_the_invariants(
        data in decoder_data(KEYPAD_ALPHABET, write_keypad),
    ) {
        check_prolan202(&data);
    }

    /// The `decode_prolan501` target's checks, on generated receiver streams.
    #[test]
    fn generated_receiver_streams_keep_the_invariants(
        data in decoder_data(RECEIVER_ALPHABET, write_receiver),
    ) {
        check_prolan501(&data);
    }
}

proptest! {
    #![proptest_config(bounded(2000))]

    /// The `config` target's checks, on edited configurations.
    #[test]
    fn edited_configurations_keep_the_invariants(text in edited_config()) {
        check_config_text(&text);
    }
}

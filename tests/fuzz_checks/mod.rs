//! The invariants the fuzzers check, written once: the cargo-fuzz targets in
//! `fuzz/fuzz_targets/` include this file by `#[path]`, and
//! `tests/fuzz_corpus.rs` replays the corpus in `fixtures/fuzz/` and runs
//! proptest through the same functions. Each `check_*` takes one fuzz input
//! and panics, naming the broken invariant, when the agent's code breaks it.
//! Only the agent's public API is used, and nothing here does IO.
//!
//! A decoder input is `[n, length_1 .. length_n, stream ..]`: the low three
//! bits of the first byte say how many chunk lengths follow (0 to 7; a
//! length byte of 0 counts as 1), and the stream is fed to the codec in
//! chunks of those lengths, cycled, or all at once when there are none. The
//! same stream is also decoded all at once, and both must agree.
//!
//! What a decoder check asserts, for either model:
//!
//! - `decode` never fails, and once it has nothing more to give the buffer
//!   holds less than one line or frame and is the tail of what was fed;
//!   after `decode_eof` it is empty;
//! - bytes only leave the buffer as part of an item or counted as noise, and
//!   a call that yields nothing removed only noise;
//! - each item matches the bytes it was taken from: a message re-encodes
//!   (`encode_inbound`) to exactly those bytes (ProLAN-202: up to the case
//!   of hex digits and `\r\n` versus `\n`; ProLAN-501: up to a battery byte
//!   of 101 to 254, which reads as unknown), a press has a key from 1 to 16,
//!   and a dropped line or frame has the length and the flaw its reason says;
//! - the device side (`decode_outbound`) yields only messages whose host
//!   encoding ends the bytes it consumed, and keeps its buffer bounded too;
//! - how the stream is cut into chunks changes nothing: items, noise count
//!   and host messages are those of the stream decoded all at once.
//!
//! A configuration input is any text (invalid UTF-8 is replaced): `parse`
//! never panics; an accepted file holds what validation promises; a
//! rejected one names a line of the text, a column of that line, a
//! non-empty key and a non-empty message.
//!
//! `FUZZ_SKIP=config-key` turns the one named check off (see [`skipped`]).

// Each fuzz target includes this module and uses one of its checks.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use epm_agent::config::{self, ConfigError, PortSetting, Settings};
use epm_agent::protocol::{prolan202, prolan501, BadFrame, Decoded, Inbound, Outbound, UnitId};
use tokio_util::codec::{Decoder, Encoder};

/// The most chunk lengths a decoder input can carry.
pub const MAX_CHUNK_LENGTHS: usize = 7;

/// The path a configuration input is parsed as coming from.
pub const CONFIG_PATH: &str = "/etc/epm-agent/epm-agent.toml";

/// Checks a ProLAN-202 decoder input (the `decode_prolan202` target).
pub fn check_prolan202(data: &[u8]) {
    check_decoder::<Keypad>(data);
}

/// Checks a ProLAN-501 decoder input (the `decode_prolan501` target).
pub fn check_prolan501(data: &[u8]) {
    check_decoder::<Receiver>(data);
}

/// Checks a configuration input (the `config` target).
pub fn check_config(data: &[u8]) {
    check_config_text(&String::from_utf8_lossy(data));
}

/// The decoder input that feeds `stream` in chunks of `chunk_lengths`
/// (at most [`MAX_CHUNK_LENGTHS`] of them, each from 1 to 255).
pub fn decoder_input(chunk_lengths: &[u8], stream: &[u8]) -> Vec<u8> {
    assert!(chunk_lengths.len() <= MAX_CHUNK_LENGTHS);
    let mut data = Vec::with_capacity(1 + chunk_lengths.len() + stream.len());
    // At most 7 by the assertion above, so the cast does not truncate.
    data.push(chunk_lengths.len() as u8);
    data.extend_from_slice(chunk_lengths);
    data.extend_from_slice(stream);
    data
}

/// Splits a decoder input into its chunk lengths and its stream.
pub fn split_decoder_input(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&header, rest)) = data.split_first() else {
        return (Vec::new(), &[]);
    };
    let count = usize::from(header & 0x07).min(rest.len());
    let (lengths, stream) = rest.split_at(count);
    let lengths = lengths.iter().map(|&length| usize::from(length).max(1));
    (lengths.collect(), stream)
}

/// CRC-16/CCITT-FALSE as the spec defines it, bit by bit: an oracle
/// independent of the codec's table-driven `crc` crate.
pub fn crc16_ccitt_false(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0xFFFF, |crc, &byte| {
        (0..8).fold(crc ^ (u16::from(byte) << 8), |crc, _| {
            if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            }
        })
    })
}

/// Checks one configuration text: see the module documentation.
pub fn check_config_text(text: &str) {
    match config::parse(text, Path::new(CONFIG_PATH)) {
        Ok(settings) => check_settings(&settings),
        Err(ConfigError::Invalid {
            path,
            line,
            column,
            key,
            message,
        }) => {
            let context = || format!("error {line}:{column} key {key:?}: {message:?}");
            assert_eq!(path, Path::new(CONFIG_PATH), "{}", context());
            // `split`, not `lines`: an error at the end of a text that ends
            // with a line break is on the (empty) line after it.
            let lines: Vec<&str> = text.split('\n').collect();
            assert!(
                (1..=lines.len()).contains(&line),
                "{}: line outside the text's {} lines",
                context(),
                lines.len()
            );
            let line_chars = lines[line - 1].chars().count();
            assert!(
                (1..=line_chars + 1).contains(&column),
                "{}: column outside line {line} ({line_chars} characters)",
                context()
            );
            assert!(!message.trim().is_empty(), "{}: empty message", context());
            if !skipped("config-key") {
                // Empty, not blank: `" " = 1` is a key made of a space.
                assert!(!key.is_empty(), "{}: names no key", context());
            }
        }
        Err(error) => panic!("parse reads no file, yet it failed with: {error}"),
    }
}

/// Whether the invariant `name` is listed in `FUZZ_SKIP` (comma-separated).
/// Only for fuzzing past a bug already saved under `fixtures/fuzz/` and
/// reported, until it is fixed: the corpus replay in CI never sets it.
fn skipped(name: &str) -> bool {
    static SKIPPED: OnceLock<Vec<String>> = OnceLock::new();
    SKIPPED
        .get_or_init(|| {
            let list = std::env::var("FUZZ_SKIP").unwrap_or_default();
            list.split(',').map(|item| item.trim().to_owned()).collect()
        })
        .iter()
        .any(|item| item == name)
}

/// What validation promises about accepted settings.
fn check_settings(settings: &Settings) {
    assert!(!settings.agent.id.trim().is_empty(), "empty agent id");
    let mut device_names = HashSet::new();
    for device in &settings.devices {
        assert!(
            device_names.insert(device.name.as_str()),
            "device name {:?} used twice",
            device.name
        );
        assert!(!device.name.trim().is_empty(), "empty device name");
        assert!(
            (300..=4_000_000).contains(&device.baud),
            "baud {}",
            device.baud
        );
        for (key, answer) in &device.keymap {
            assert!((1..=16).contains(key), "keymap key {key}");
            assert!(!answer.trim().is_empty(), "keymap key {key}: empty answer");
        }
        assert!(
            device.min_interval <= Duration::from_secs(86_400),
            "min_interval {:?}",
            device.min_interval
        );
        if let PortSetting::Path(path) = &device.port {
            assert!(!path.trim().is_empty(), "empty port path");
        }
    }
    let mut sink_names = HashSet::new();
    for sink in &settings.sinks {
        assert!(
            sink_names.insert(sink.name.as_str()),
            "sink name {:?} used twice",
            sink.name
        );
        assert!(
            (1..=10_000).contains(&sink.batch_size),
            "batch_size {}",
            sink.batch_size
        );
        assert!(!sink.flush_interval.is_zero(), "zero flush interval");
        assert!(!sink.max_backoff.is_zero(), "zero max backoff");
    }
    assert!(
        settings.store.retention >= Duration::from_secs(86_400),
        "retention {:?}",
        settings.store.retention
    );
    assert!(
        settings.store.max_size_bytes >= 16 * 1024 * 1024,
        "max_size_bytes {}",
        settings.store.max_size_bytes
    );
    assert!(!settings.log.level.trim().is_empty(), "empty log level");
}

/// What the decoder checks need to know of a model beyond its codec.
trait Model {
    type Codec: Decoder<Item = Decoded, Error = io::Error>
        + Encoder<Outbound, Error = io::Error>
        + Default;

    /// The longest line or frame.
    const MAX_LEN: usize;

    fn noise_bytes(codec: &Self::Codec) -> u64;

    /// The device side: the next host message in `buffer`.
    fn decode_outbound(buffer: &mut BytesMut) -> Option<Outbound>;

    /// Panics unless `item` is what the `length` bytes at the start of
    /// `rest` say; `rest` runs from there to the end of the bytes fed.
    fn check_item(item: &Decoded, rest: &[u8], length: usize);

    /// Panics unless `message`, as the host encodes it, ends `consumed`
    /// (what one `decode_outbound` call took out of the buffer).
    fn check_outbound(message: Outbound, consumed: &[u8]);
}

struct Keypad;

struct Receiver;

impl Model for Keypad {
    type Codec = prolan202::Codec;

    const MAX_LEN: usize = prolan202::MAX_LINE_LEN;

    fn noise_bytes(codec: &Self::Codec) -> u64 {
        codec.noise_bytes()
    }

    fn decode_outbound(buffer: &mut BytesMut) -> Option<Outbound> {
        prolan202::decode_outbound(buffer)
    }

    fn check_item(item: &Decoded, rest: &[u8], length: usize) {
        let line = &rest[..length];
        assert_eq!(line.first(), Some(&b'$'), "{item:?} from {line:?}");
        let inner = match item {
            Decoded::Bad(BadFrame::TooLong) => {
                assert_eq!(length, Self::MAX_LEN, "{item:?} from {line:?}");
                &line[1..]
            }
            Decoded::Message(_)
            | Decoded::Bad(
                BadFrame::Checksum | BadFrame::UnknownType | BadFrame::Shape | BadFrame::Field,
            ) => {
                assert!(length <= Self::MAX_LEN, "{item:?} from {line:?}");
                assert_eq!(line.last(), Some(&b'\n'), "{item:?} from {line:?}");
                &line[1..length - 1]
            }
            Decoded::Bad(BadFrame::Crc | BadFrame::Length) | Decoded::UnknownType(_) => {
                panic!("{item:?} is not a ProLAN-202 item (from {line:?})")
            }
        };
        assert!(
            !inner.contains(&b'$') && !inner.contains(&b'\n'),
            "{item:?} from {line:?}: a line holds no `$` or line end inside"
        );
        let Decoded::Message(message) = item else {
            return;
        };
        check_press_key(message);
        let mut encoded = BytesMut::new();
        prolan202::encode_inbound(message, &mut encoded);
        assert!(
            same_line(&encoded, line),
            "{message:?} re-encodes as {:?}, not as its line {:?}",
            String::from_utf8_lossy(&encoded),
            String::from_utf8_lossy(line)
        );
    }

    fn check_outbound(message: Outbound, consumed: &[u8]) {
        // The line carries no unit: the keypad side reports UnitId(0).
        if let Outbound::Ack { unit, .. } = message {
            assert_eq!(unit, UnitId(0), "{message:?}");
        }
        let encoded = encode_host::<Self>(message);
        let line_start = consumed.iter().rposition(|&byte| byte == b'$');
        let line = &consumed[line_start.unwrap_or(0)..];
        assert!(
            same_line(&encoded, line),
            "{message:?} encodes as {:?}, but the keypad side took it from {:?}",
            String::from_utf8_lossy(&encoded),
            String::from_utf8_lossy(consumed)
        );
    }
}

impl Model for Receiver {
    type Codec = prolan501::Codec;

    const MAX_LEN: usize = prolan501::MAX_FRAME_LEN;

    fn noise_bytes(codec: &Self::Codec) -> u64 {
        codec.noise_bytes()
    }

    fn decode_outbound(buffer: &mut BytesMut) -> Option<Outbound> {
        prolan501::decode_outbound(buffer)
    }

    fn check_item(item: &Decoded, rest: &[u8], length: usize) {
        assert_eq!(
            rest.first(),
            Some(&prolan501::SYNC),
            "{item:?} from {rest:02x?}"
        );
        let declared = rest.get(1).map(|&len| usize::from(len));
        let frame_fits = declared.is_some_and(|len| (1..=32).contains(&len));
        // Formatted only on a failure: `rest` may be long.
        let context = || {
            let shown = &rest[..rest.len().min(48)];
            format!("{item:?} taking {length} bytes of {shown:02x?}")
        };
        if let Decoded::Bad(BadFrame::Length | BadFrame::Crc) = item {
            // Only the sync byte is dropped, and the next byte starts the
            // search again.
            assert_eq!(length, 1, "{}", context());
            let Decoded::Bad(BadFrame::Crc) = item else {
                assert!(declared.is_some() && !frame_fits, "{}", context());
                return;
            };
            assert!(frame_fits, "{}", context());
            let frame = declared
                .and_then(|len| rest.get(..len + 4))
                .unwrap_or_else(|| panic!("{}: the frame was not complete", context()));
            assert!(!crc_is_good(frame), "{}: the crc is good", context());
            return;
        }
        assert!(frame_fits, "{}", context());
        let frame = &rest[..length];
        assert_eq!(declared.map(|len| len + 4), Some(length), "{}", context());
        assert!(crc_is_good(frame), "{}: the crc is bad", context());
        let (kind, payload) = (frame[2], &frame[3..length - 2]);
        // TYPE 1 to 4 and the payload length each takes.
        let known_length = match kind {
            0x01 => Some(7),
            0x02 => Some(9),
            0x03 => Some(5),
            0x04 => Some(6),
            _ => None,
        };
        match item {
            Decoded::UnknownType(unknown) => {
                assert_eq!((*unknown, known_length), (kind, None), "{}", context());
            }
            Decoded::Bad(BadFrame::Shape) => {
                assert!(
                    known_length.is_some_and(|known| known != payload.len()),
                    "{}",
                    context()
                );
            }
            Decoded::Bad(BadFrame::Field) => {
                assert!(
                    kind == 0x02 && payload.len() == 9 && !(1..=16).contains(&payload[4]),
                    "{}: only a PRESS key is a field that can be out of range",
                    context()
                );
            }
            Decoded::Message(message) => {
                assert_eq!(known_length, Some(payload.len()), "{}", context());
                check_press_key(message);
                check_receiver_frame(message, frame);
            }
            Decoded::Bad(_) => panic!("{}: not a ProLAN-501 reason", context()),
        }
    }

    fn check_outbound(message: Outbound, consumed: &[u8]) {
        let encoded = encode_host::<Self>(message);
        assert!(
            consumed.ends_with(&encoded),
            "{message:?} encodes as {:02x?}, but the receiver side took it from {consumed:02x?}",
            &encoded[..]
        );
    }
}

fn check_decoder<M: Model>(data: &[u8]) {
    let (chunk_lengths, stream) = split_decoder_input(data);
    let whole = decode_stream::<M>(stream, &[]);
    let host_whole = decode_outbound_stream::<M>(stream, &[]);
    if chunk_lengths.is_empty() {
        return;
    }
    let chunked = decode_stream::<M>(stream, &chunk_lengths);
    assert_eq!(chunked, whole, "chunks {chunk_lengths:?} change the items");
    let host_chunked = decode_outbound_stream::<M>(stream, &chunk_lengths);
    assert_eq!(
        host_chunked, host_whole,
        "chunks {chunk_lengths:?} change the host messages"
    );
}

/// Feeds `stream` in `chunk_lengths` (cycled; all at once when empty), then
/// ends it. Returns the items and the noise count.
fn decode_stream<M: Model>(stream: &[u8], chunk_lengths: &[usize]) -> (Vec<Decoded>, u64) {
    let mut codec = M::Codec::default();
    let mut buffer = BytesMut::new();
    let mut items = Vec::new();
    let mut chunk_lengths = chunk_lengths.iter().copied().cycle();
    let mut fed = 0;
    while fed < stream.len() {
        let take = chunk_lengths
            .next()
            .unwrap_or(stream.len())
            .min(stream.len() - fed);
        buffer.extend_from_slice(&stream[fed..fed + take]);
        fed += take;
        while let Some(item) = next_item::<M>(&mut codec, &mut buffer, &stream[..fed], false) {
            items.push(item);
        }
        assert!(
            buffer.len() < M::MAX_LEN,
            "{} bytes left buffered",
            buffer.len()
        );
        assert_eq!(
            &buffer[..],
            &stream[fed - buffer.len()..fed],
            "the buffer is not the tail of what was fed"
        );
    }
    while let Some(item) = next_item::<M>(&mut codec, &mut buffer, stream, true) {
        items.push(item);
    }
    assert!(buffer.is_empty(), "decode_eof left {} bytes", buffer.len());
    (items, M::noise_bytes(&codec))
}

/// One `decode` (or `decode_eof`) call, checking what it took from the
/// buffer: noise first, then the item's own bytes.
fn next_item<M: Model>(
    codec: &mut M::Codec,
    buffer: &mut BytesMut,
    fed: &[u8],
    end_of_stream: bool,
) -> Option<Decoded> {
    let start = fed.len() - buffer.len();
    let noise_before = M::noise_bytes(codec);
    let item = if end_of_stream {
        codec.decode_eof(buffer).expect("decode_eof never fails")
    } else {
        codec.decode(buffer).expect("decode never fails")
    };
    let noise = M::noise_bytes(codec) - noise_before;
    let removed = (fed.len() - start)
        .checked_sub(buffer.len())
        .expect("decoding never adds bytes to the buffer");
    let Some(item) = item else {
        assert_eq!(
            noise, removed as u64,
            "a call that yields nothing removed {removed} bytes, of which {noise} counted as noise"
        );
        return None;
    };
    let item_start = usize::try_from(noise)
        .ok()
        .filter(|&noise| noise < removed)
        .unwrap_or_else(|| {
            panic!("{item:?}: {noise} noise bytes counted, {removed} bytes removed")
        });
    M::check_item(&item, &fed[start + item_start..], removed - item_start);
    Some(item)
}

/// The device side over `stream`, fed as [`decode_stream`] feeds it.
fn decode_outbound_stream<M: Model>(stream: &[u8], chunk_lengths: &[usize]) -> Vec<Outbound> {
    let mut buffer = BytesMut::new();
    let mut messages = Vec::new();
    let mut chunk_lengths = chunk_lengths.iter().copied().cycle();
    let mut fed = 0;
    while fed < stream.len() {
        let take = chunk_lengths
            .next()
            .unwrap_or(stream.len())
            .min(stream.len() - fed);
        buffer.extend_from_slice(&stream[fed..fed + take]);
        fed += take;
        loop {
            let start = fed - buffer.len();
            let Some(message) = M::decode_outbound(&mut buffer) else {
                break;
            };
            M::check_outbound(message, &stream[start..fed - buffer.len()]);
            messages.push(message);
        }
        assert!(
            buffer.len() < M::MAX_LEN,
            "the device side left {} bytes buffered",
            buffer.len()
        );
    }
    messages
}

fn check_press_key(message: &Inbound) {
    if let Inbound::Press(press) = message {
        assert!((1..=16).contains(&press.key), "{press:?}: key out of 1-16");
    }
}

/// A ProLAN-501 message re-encodes to its frame. The one field that does
/// not round-trip is a battery byte of 101 to 254, read as unknown (`None`,
/// sent as 255): it may be any such byte.
fn check_receiver_frame(message: &Inbound, frame: &[u8]) {
    let mut encoded = BytesMut::new();
    prolan501::encode_inbound(message, &mut encoded);
    if encoded == frame {
        return;
    }
    let with_raw_battery = match *message {
        Inbound::Press(press) if press.battery.is_none() => {
            let mut press = press;
            press.battery = Some(frame[11]);
            Some((frame[11], Inbound::Press(press)))
        }
        Inbound::UnitStatus {
            unit,
            battery: None,
            rssi,
        } => Some((
            frame[7],
            Inbound::UnitStatus {
                unit,
                battery: Some(frame[7]),
                rssi,
            },
        )),
        _ => None,
    };
    let matches_raw = with_raw_battery.is_some_and(|(raw, message)| {
        let mut encoded = BytesMut::new();
        prolan501::encode_inbound(&message, &mut encoded);
        raw > 100 && encoded == frame
    });
    assert!(
        matches_raw,
        "{message:?} re-encodes as {:02x?}, not as its frame {frame:02x?}",
        &encoded[..]
    );
}

fn crc_is_good(frame: &[u8]) -> bool {
    let [body @ .., high, low] = frame else {
        return false;
    };
    crc16_ccitt_false(&body[1..]) == u16::from_be_bytes([*high, *low])
}

fn encode_host<M: Model>(message: Outbound) -> BytesMut {
    let mut encoded = BytesMut::new();
    M::Codec::default()
        .encode(message, &mut encoded)
        .expect("encoding into a BytesMut never fails");
    encoded
}

/// Whether a keypad line `encoded` as the encoder writes it (`...\r\n`,
/// upper-case hex) and a line as received are the same line: equal but for
/// lower-case hex digits (serial, checksum) and a bare `\n` for `\r\n`.
fn same_line(encoded: &[u8], received: &[u8]) -> bool {
    let received = received.strip_suffix(b"\n").unwrap_or(received);
    let received = received.strip_suffix(b"\r").unwrap_or(received);
    let encoded = encoded.strip_suffix(b"\r\n").unwrap_or(encoded);
    encoded.len() == received.len()
        && encoded.iter().zip(received).all(|(&sent, &got)| {
            sent == got || (matches!(sent, b'A'..=b'F') && got == sent.to_ascii_lowercase())
        })
}

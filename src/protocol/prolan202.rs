//! The ProLAN-202 keypad protocol: ASCII lines `$TYPE,field,...*CS\r\n`
//! (`shared/spec/prolan-serial.md`, "ProLAN-202: ASCII lines").
//!
//! This module owns the line framing (hunting for `$`, the 80-byte bound,
//! `\r\n` or bare `\n`), the XOR checksum and the parsing of every field, in
//! both directions: [`Codec`] is the host side (decodes `I`/`K`/`H`/`E`,
//! encodes `Q`/`A`); [`encode_inbound`] and [`decode_outbound`] are the keypad
//! side, for the simulator, the test emulators and the benchmarks. It never
//! does IO, never panics on device input and never holds more than one
//! line's worth (80 bytes) of a partial frame.

use std::fmt::{self, Write as _};
use std::io;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{
    AnyCodec, BadFrame, Decoded, Heartbeat, HostCodec, Identity, Inbound, Outbound, Press, UnitId,
};
use crate::model::{Attachment, Model, ModelSpec};

/// The ProLAN-202 wired keypad, as the agent knows it.
pub static SPEC: ModelSpec = ModelSpec {
    name: "prolan-202",
    title: "ProLAN-202 keypad",
    kind: "keypad",
    default_baud: DEFAULT_BAUD,
    heartbeat_period: Duration::from_secs(HEARTBEAT_PERIOD_S),
    // The spec: the same (serial, seq) within 10 minutes is one press.
    duplicate_window: Duration::from_secs(10 * 60),
    codec: || AnyCodec::new(Codec::new()),
    // A keypad's `I` carries no radio channel; a receiver's HELLO always does.
    is_identity: |identity| identity.radio_channel.is_none(),
    attachment: Attachment::SerialPort,
};

impl Model {
    // Spelled as the enum variant it was, so settings and tests name it so.
    #[allow(non_upper_case_globals)]
    pub const Prolan202: Model = Model::of(&SPEC);
}

/// The keypad's default line speed (8N1).
pub const DEFAULT_BAUD: u32 = 9600;

/// The keypad sends `H` this often while powered.
pub const HEARTBEAT_PERIOD_S: u64 = 10;

/// The longest valid line, from `$` to the line end inclusive.
pub const MAX_LINE_LEN: usize = 80;

/// Host-side codec: decodes what the keypad sends, encodes what the host
/// sends.
///
/// The partial line lives in the caller's `BytesMut`; after `decode` returns
/// `Ok(None)` that buffer holds fewer than [`MAX_LINE_LEN`] bytes.
#[derive(Debug, Default)]
pub struct Codec {
    noise_bytes: u64,
}

impl Codec {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes skipped as noise: bytes before a `$`, a line cut short by the
    /// next `$`, the rest of an over-long line, and an unfinished line at end
    /// of stream. Bytes of a dropped line are not noise: each such line is
    /// reported once as [`Decoded::Bad`].
    pub fn noise_bytes(&self) -> u64 {
        self.noise_bytes
    }
}

impl HostCodec for Codec {
    fn noise_bytes(&self) -> u64 {
        Codec::noise_bytes(self)
    }
}

impl Decoder for Codec {
    type Item = Decoded;
    type Error = io::Error;

    /// One item per line; bad lines are items too (`Decoded::Bad`), never
    /// errors.
    fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Decoded>, io::Error> {
        Ok(match next_line(buffer, &mut self.noise_bytes) {
            LineScan::Incomplete => None,
            LineScan::TooLong => Some(Decoded::Bad(BadFrame::TooLong)),
            LineScan::Complete(length) => {
                let decoded = match parse_inbound(&buffer[..length]) {
                    Ok(message) => Decoded::Message(message),
                    Err(reason) => Decoded::Bad(reason),
                };
                buffer.advance(length);
                Some(decoded)
            }
        })
    }

    /// Returns the complete lines still buffered, then drops the unfinished
    /// tail (counted as noise) instead of failing the stream.
    fn decode_eof(&mut self, buffer: &mut BytesMut) -> Result<Option<Decoded>, io::Error> {
        if let Some(decoded) = self.decode(buffer)? {
            return Ok(Some(decoded));
        }
        // What is left is `$` plus fewer than 80 bytes holding neither a line
        // end nor another `$`: no line can be found in it any more.
        self.noise_bytes += buffer.len() as u64;
        buffer.clear();
        Ok(None)
    }
}

impl Encoder<Outbound> for Codec {
    type Error = io::Error;

    /// `Q` → `$Q*51\r\n`; `A` → `$A,<seq>*CS\r\n`. The keypad knows its own
    /// serial, so an ack's `unit` is not sent.
    fn encode(&mut self, message: Outbound, out: &mut BytesMut) -> Result<(), io::Error> {
        match message {
            Outbound::Query => write_line(out, format_args!("Q")),
            Outbound::Ack { seq, .. } => write_line(out, format_args!("A,{seq}")),
        }
        Ok(())
    }
}

/// Keypad side: appends the exact line a keypad sends for `message`.
///
/// Fields are written as given (a model or firmware holding `,`, `*`, `$` or
/// a line end makes a line the host rejects; a key outside 1-16 is written
/// too, so emulators can send bad lines on purpose). A heartbeat without a
/// unit is sent for serial `00000000`. `UnitStatus` has no ProLAN-202 line:
/// nothing is written for it.
pub fn encode_inbound(message: &Inbound, out: &mut BytesMut) {
    match message {
        Inbound::Identity(identity) => write_line(
            out,
            format_args!(
                "I,{},{},{}",
                identity.hardware_id, identity.model, identity.firmware
            ),
        ),
        Inbound::Press(press) => write_line(
            out,
            format_args!("K,{},{},{}", press.unit, press.key, press.seq),
        ),
        Inbound::Heartbeat(heartbeat) => write_line(
            out,
            format_args!(
                "H,{},{}",
                heartbeat.unit.unwrap_or(UnitId(0)),
                heartbeat.uptime_s
            ),
        ),
        Inbound::Fault { unit, code } => write_line(out, format_args!("E,{unit},{code}")),
        Inbound::UnitStatus { .. } => {}
    }
}

/// Keypad side: takes the next valid host line (`Q` or `A`) out of `buffer`,
/// consuming it and everything before it. Noise and bad lines are skipped;
/// `None` means more bytes are needed. The line does not carry the unit, so
/// an `Ack` comes back with `unit` = `UnitId(0)`.
pub fn decode_outbound(buffer: &mut BytesMut) -> Option<Outbound> {
    // The keypad side keeps no statistics.
    let mut noise_bytes = 0;
    loop {
        match next_line(buffer, &mut noise_bytes) {
            LineScan::Incomplete => return None,
            LineScan::TooLong => {}
            LineScan::Complete(length) => {
                let message = parse_outbound(&buffer[..length]);
                buffer.advance(length);
                if message.is_some() {
                    return message;
                }
            }
        }
    }
}

/// Where the line framing stands after one scan of the buffer.
enum LineScan {
    /// No complete line yet; the buffer holds at most a `$` and 79 more bytes.
    Incomplete,
    /// 80 bytes from `$` without a line end were dropped.
    TooLong,
    /// The buffer starts with a line of this many bytes: `$` to `\n`.
    Complete(usize),
}

/// Skips noise up to the next `$` and finds where its line ends.
fn next_line(buffer: &mut BytesMut, noise_bytes: &mut u64) -> LineScan {
    loop {
        let Some(start) = buffer.iter().position(|&byte| byte == b'$') else {
            *noise_bytes += buffer.len() as u64;
            buffer.clear();
            return LineScan::Incomplete;
        };
        *noise_bytes += start as u64;
        buffer.advance(start);

        let window_end = buffer.len().min(MAX_LINE_LEN);
        let stop = buffer[1..window_end]
            .iter()
            .position(|&byte| byte == b'\n' || byte == b'$')
            .map(|offset| offset + 1);
        match stop {
            Some(end) if buffer[end] == b'\n' => return LineScan::Complete(end + 1),
            // A `$` before the line end: the line so far was cut short (a
            // glitch, a re-plug). "Parsing goes on at the next `$`", so the
            // line starting there is still found, e.g. in `$$K,...`.
            Some(next_start) => {
                *noise_bytes += next_start as u64;
                buffer.advance(next_start);
            }
            None if window_end == MAX_LINE_LEN => {
                // The rest of the line, up to the next `$`, goes as noise.
                buffer.advance(MAX_LINE_LEN);
                return LineScan::TooLong;
            }
            None => return LineScan::Incomplete,
        }
    }
}

/// Parses one keypad line, `$` to `\n` inclusive.
fn parse_inbound(line: &[u8]) -> Result<Inbound, BadFrame> {
    let (kind, fields) = split_kind(checked_body(line)?);
    match kind {
        b"I" => {
            let [serial, model, firmware] = split_fields(fields)?;
            Ok(Inbound::Identity(Identity {
                hardware_id: parse_serial(serial)?,
                model: parse_text(model)?,
                firmware: parse_text(firmware)?,
                radio_channel: None,
            }))
        }
        b"K" => {
            let [serial, key, seq] = split_fields(fields)?;
            let unit = parse_serial(serial)?;
            let key = u8::try_from(parse_decimal(key)?)
                .ok()
                .filter(|key| (1..=16).contains(key))
                .ok_or(BadFrame::Field)?;
            let seq = u16::try_from(parse_decimal(seq)?).map_err(|_| BadFrame::Field)?;
            Ok(Inbound::Press(Press {
                unit,
                key,
                seq,
                rssi: None,
                battery: None,
            }))
        }
        b"H" => {
            let [serial, uptime_s] = split_fields(fields)?;
            Ok(Inbound::Heartbeat(Heartbeat {
                unit: Some(parse_serial(serial)?),
                uptime_s: u32::try_from(parse_decimal(uptime_s)?).map_err(|_| BadFrame::Field)?,
                remotes_heard: None,
            }))
        }
        b"E" => {
            let [serial, code] = split_fields(fields)?;
            Ok(Inbound::Fault {
                unit: parse_serial(serial)?,
                // Codes other than 1 and 2 are passed on: what a code means
                // is the driver's business, and a newer firmware may add some.
                code: u8::try_from(parse_decimal(code)?).map_err(|_| BadFrame::Field)?,
            })
        }
        _ => Err(BadFrame::UnknownType),
    }
}

/// Parses one host line; `None` for anything but a valid `Q` or `A`.
fn parse_outbound(line: &[u8]) -> Option<Outbound> {
    let (kind, fields) = split_kind(checked_body(line).ok()?);
    match kind {
        b"Q" => {
            let [] = split_fields(fields).ok()?;
            Some(Outbound::Query)
        }
        b"A" => {
            let [seq] = split_fields(fields).ok()?;
            let seq = u16::try_from(parse_decimal(seq).ok()?).ok()?;
            Some(Outbound::Ack {
                unit: UnitId(0),
                seq,
            })
        }
        _ => None,
    }
}

/// Checks a line's `*CS` and returns what lies strictly between `$` and `*`.
fn checked_body(line: &[u8]) -> Result<&[u8], BadFrame> {
    let content = line
        .strip_prefix(b"$")
        .and_then(|rest| rest.strip_suffix(b"\n"))
        .map(|rest| rest.strip_suffix(b"\r").unwrap_or(rest))
        .ok_or(BadFrame::Checksum)?;
    let [body @ .., b'*', high, low] = content else {
        return Err(BadFrame::Checksum);
    };
    let sent = hex_value(*high)
        .zip(hex_value(*low))
        .map(|(high, low)| (high << 4) | low)
        .ok_or(BadFrame::Checksum)?;
    if xor_checksum(body) != sent {
        return Err(BadFrame::Checksum);
    }
    Ok(body)
}

/// Splits `TYPE,fields...` into the type and, if there is a comma, the rest.
fn split_kind(body: &[u8]) -> (&[u8], Option<&[u8]>) {
    match body.iter().position(|&byte| byte == b',') {
        Some(comma) => (&body[..comma], Some(&body[comma + 1..])),
        None => (body, None),
    }
}

/// Exactly `N` comma-separated fields, or `BadFrame::Shape`.
fn split_fields<const N: usize>(fields: Option<&[u8]>) -> Result<[&[u8]; N], BadFrame> {
    let mut split: [&[u8]; N] = [&[]; N];
    let Some(fields) = fields else {
        return if N == 0 {
            Ok(split)
        } else {
            Err(BadFrame::Shape)
        };
    };
    let mut parts = fields.split(|&byte| byte == b',');
    for slot in &mut split {
        *slot = parts.next().ok_or(BadFrame::Shape)?;
    }
    match parts.next() {
        Some(_) => Err(BadFrame::Shape),
        None => Ok(split),
    }
}

/// A serial is exactly 8 hex digits, either case.
fn parse_serial(field: &[u8]) -> Result<UnitId, BadFrame> {
    if field.len() != 8 {
        return Err(BadFrame::Field);
    }
    field
        .iter()
        .try_fold(0u32, |serial, &digit| {
            hex_value(digit).map(|value| (serial << 4) | u32::from(value))
        })
        .map(UnitId)
        .ok_or(BadFrame::Field)
}

/// An unsigned decimal in its one canonical spelling: digits only, no sign,
/// no leading zero (the checksum is only 8 bits; strict fields make a
/// garbled line that happens to pass it less likely to be taken).
fn parse_decimal(field: &[u8]) -> Result<u64, BadFrame> {
    // 10 digits hold any u32, and cannot overflow a u64.
    let canonical = match field {
        [] => false,
        [b'0', _, ..] => false,
        _ => field.len() <= 10 && field.iter().all(u8::is_ascii_digit),
    };
    if !canonical {
        return Err(BadFrame::Field);
    }
    Ok(field
        .iter()
        .fold(0, |value, &digit| value * 10 + u64::from(digit - b'0')))
}

/// Model and firmware: non-empty printable ASCII without spaces, kept as sent.
fn parse_text(field: &[u8]) -> Result<String, BadFrame> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_graphic) {
        return Err(BadFrame::Field);
    }
    String::from_utf8(field.to_vec()).map_err(|_| BadFrame::Field)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn xor_checksum(body: &[u8]) -> u8 {
    body.iter().fold(0, |checksum, &byte| checksum ^ byte)
}

/// Appends `$<body>*CS\r\n` with an upper-case checksum.
fn write_line(out: &mut BytesMut, body: fmt::Arguments<'_>) {
    const HEX_DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.put_u8(b'$');
    let body_start = out.len();
    out.write_fmt(body)
        // BytesMut's fmt::Write grows the buffer and only fails when its
        // length would pass usize::MAX, which allocation reaches first.
        .expect("writing to a BytesMut cannot fail");
    let checksum = xor_checksum(&out[body_start..]);
    out.put_u8(b'*');
    out.put_u8(HEX_DIGITS[usize::from(checksum >> 4)]);
    out.put_u8(HEX_DIGITS[usize::from(checksum & 0x0F)]);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_line_carries_the_checksum_of_q() {
        let mut out = BytesMut::new();
        Codec::new()
            .encode(Outbound::Query, &mut out)
            .expect("encoding into a BytesMut does not fail");
        assert_eq!(&out[..], b"$Q*51\r\n");
    }

    #[test]
    fn decimal_fields_accept_only_the_canonical_spelling() {
        let cases: &[(&[u8], Result<u64, BadFrame>)] = &[
            (b"0", Ok(0)),
            (b"17", Ok(17)),
            (b"4294967295", Ok(4_294_967_295)),
            (b"", Err(BadFrame::Field)),
            (b"017", Err(BadFrame::Field)),
            (b"+1", Err(BadFrame::Field)),
            (b"-1", Err(BadFrame::Field)),
            (b"1 ", Err(BadFrame::Field)),
            (b"12345678901", Err(BadFrame::Field)),
        ];
        for (field, expected) in cases {
            assert_eq!(
                parse_decimal(field),
                *expected,
                "{}",
                String::from_utf8_lossy(field)
            );
        }
    }
}

//! The ProLAN-501 radio receiver protocol: binary frames
//! `A5 LEN TYPE PAYLOAD CRC_HI CRC_LO` (`shared/spec/prolan-serial.md`,
//! "ProLAN-501: binary frames").
//!
//! This module owns the framing (hunting for the `A5` sync byte, the LEN
//! bound, resynchronisation by dropping only the sync byte), the
//! CRC-16/CCITT-FALSE check and the payload layouts, in both directions:
//! [`Codec`] is the host side (decodes HELLO / PRESS / HEARTBEAT /
//! REMOTE_STATUS, encodes QUERY / ACK); [`encode_inbound`] and
//! [`decode_outbound`] are the receiver side, for the simulator, the test
//! emulators and the benchmarks. It never does IO, never panics on device
//! input, never allocates by LEN and never holds more than one frame's worth
//! (36 bytes) of a partial frame.

use std::io;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use crc::{Crc, CRC_16_IBM_3740};
use tokio_util::codec::{Decoder, Encoder};

use super::{
    AnyCodec, BadFrame, Decoded, Heartbeat, HostCodec, Identity, Inbound, Outbound, Press, UnitId,
};
use crate::model::{Attachment, Model, ModelSpec};

/// The ProLAN-501 radio receiver, as the agent knows it.
pub static SPEC: ModelSpec = ModelSpec {
    name: "prolan-501",
    title: "ProLAN-501 receiver",
    kind: "receiver",
    default_baud: DEFAULT_BAUD,
    heartbeat_period: Duration::from_secs(HEARTBEAT_PERIOD_S),
    duplicate_window: DUPLICATE_WINDOW,
    codec: || AnyCodec::new(Codec::new()),
    // HELLO always carries a radio channel; a keypad's `I` never does.
    is_identity: |identity| identity.radio_channel.is_some(),
    attachment: Attachment::SerialPort,
};

impl Model {
    // Spelled as the enum variant it was, so settings and tests name it so.
    #[allow(non_upper_case_globals)]
    pub const Prolan501: Model = Model::of(&SPEC);
}

/// The spec: the same (remote, counter) within 30 s is one press (a remote
/// sends each press three times).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(30);

/// The receiver's default line speed (8N1).
pub const DEFAULT_BAUD: u32 = 115_200;

/// The receiver sends HEARTBEAT this often.
pub const HEARTBEAT_PERIOD_S: u64 = 5;

/// The first byte of every frame.
pub const SYNC: u8 = 0xA5;

/// The longest valid frame: sync, LEN, 32 bytes of TYPE and PAYLOAD, CRC.
pub const MAX_FRAME_LEN: usize = 4 + MAX_LEN as usize;

/// Host-side codec: decodes what the receiver sends, encodes what the host
/// sends.
///
/// The partial frame lives in the caller's `BytesMut`; after `decode`
/// returns `Ok(None)` that buffer holds fewer than [`MAX_FRAME_LEN`] bytes.
#[derive(Debug, Default)]
pub struct Codec {
    noise_bytes: u64,
}

impl Codec {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes skipped while hunting for `A5`, and an unfinished frame at end
    /// of stream. A sync byte dropped for a bad LEN or CRC is not noise: it
    /// is reported as [`Decoded::Bad`].
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

    /// One item per frame or per dropped sync byte; bad input is an item
    /// (`Decoded::Bad`), never an error.
    fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Decoded>, io::Error> {
        Ok(match next_frame(buffer, &mut self.noise_bytes) {
            FrameScan::Incomplete => None,
            FrameScan::Dropped(reason) => Some(Decoded::Bad(reason)),
            FrameScan::Complete(length) => {
                let decoded = parse_inbound(buffer[2], &buffer[3..2 + length]);
                buffer.advance(length + 4);
                Some(decoded)
            }
        })
    }

    /// Returns the complete frames still buffered, then drops the unfinished
    /// tail (counted as noise) instead of failing the stream.
    fn decode_eof(&mut self, buffer: &mut BytesMut) -> Result<Option<Decoded>, io::Error> {
        loop {
            if let Some(decoded) = self.decode(buffer)? {
                return Ok(Some(decoded));
            }
            if buffer.is_empty() {
                return Ok(None);
            }
            // The head is a sync byte whose LEN asks for bytes that will
            // never come. It may be noise hiding a whole frame behind it:
            // drop just that byte and hunt on.
            self.noise_bytes += 1;
            buffer.advance(1);
        }
    }
}

impl Encoder<Outbound> for Codec {
    type Error = io::Error;

    /// QUERY (0x81, no payload) or ACK (0x82: remote id u32, counter u16).
    fn encode(&mut self, message: Outbound, out: &mut BytesMut) -> Result<(), io::Error> {
        match message {
            Outbound::Query => write_frame(out, QUERY, &[]),
            Outbound::Ack { unit, seq } => {
                let [id0, id1, id2, id3] = unit.0.to_be_bytes();
                let [seq0, seq1] = seq.to_be_bytes();
                write_frame(out, ACK, &[id0, id1, id2, id3, seq0, seq1]);
            }
        }
        Ok(())
    }
}

/// Receiver side: appends the exact frame a receiver sends for `message`.
///
/// Fields are written as given (a key outside 1-16 too, so emulators can
/// send bad frames on purpose). What the wire cannot carry gets the value a
/// receiver would send: a firmware that is not `major.minor` (two numbers
/// 0-255) goes out as 0.0, a missing radio channel, rssi or remote count as
/// 0, a missing battery as 255 (unknown); a heartbeat's unit is not sent.
/// `Fault` has no ProLAN-501 frame: nothing is written for it.
pub fn encode_inbound(message: &Inbound, out: &mut BytesMut) {
    match message {
        Inbound::Identity(identity) => {
            let [id0, id1, id2, id3] = identity.hardware_id.0.to_be_bytes();
            let (major, minor) = identity
                .firmware
                .split_once('.')
                .and_then(|(major, minor)| Some((major.parse().ok()?, minor.parse().ok()?)))
                .unwrap_or((0, 0));
            let channel = identity.radio_channel.unwrap_or(0);
            write_frame(out, HELLO, &[id0, id1, id2, id3, major, minor, channel]);
        }
        Inbound::Press(press) => {
            let [id0, id1, id2, id3] = press.unit.0.to_be_bytes();
            let [seq0, seq1] = press.seq.to_be_bytes();
            let [rssi] = press.rssi.unwrap_or(0).to_be_bytes();
            let battery = press.battery.unwrap_or(BATTERY_UNKNOWN);
            let payload = [id0, id1, id2, id3, press.key, seq0, seq1, rssi, battery];
            write_frame(out, PRESS, &payload);
        }
        Inbound::Heartbeat(heartbeat) => {
            let [up0, up1, up2, up3] = heartbeat.uptime_s.to_be_bytes();
            let remotes_heard = heartbeat.remotes_heard.unwrap_or(0);
            write_frame(out, HEARTBEAT, &[up0, up1, up2, up3, remotes_heard]);
        }
        Inbound::UnitStatus {
            unit,
            battery,
            rssi,
        } => {
            let [id0, id1, id2, id3] = unit.0.to_be_bytes();
            let [rssi] = rssi.to_be_bytes();
            let battery = battery.unwrap_or(BATTERY_UNKNOWN);
            write_frame(out, REMOTE_STATUS, &[id0, id1, id2, id3, battery, rssi]);
        }
        Inbound::Fault { .. } => {}
    }
}

/// Receiver side: takes the next valid host frame (QUERY or ACK) out of
/// `buffer`, consuming it and everything before it. Noise, bad frames and
/// other types are skipped; `None` means more bytes are needed.
pub fn decode_outbound(buffer: &mut BytesMut) -> Option<Outbound> {
    // The receiver side keeps no statistics.
    let mut noise_bytes = 0;
    loop {
        match next_frame(buffer, &mut noise_bytes) {
            FrameScan::Incomplete => return None,
            FrameScan::Dropped(_) => {}
            FrameScan::Complete(length) => {
                let message = parse_outbound(buffer[2], &buffer[3..2 + length]);
                buffer.advance(length + 4);
                if message.is_some() {
                    return message;
                }
            }
        }
    }
}

/// LEN counts TYPE and PAYLOAD.
const MAX_LEN: u8 = 32;

const HELLO: u8 = 0x01;
const PRESS: u8 = 0x02;
const HEARTBEAT: u8 = 0x03;
const REMOTE_STATUS: u8 = 0x04;
const QUERY: u8 = 0x81;
const ACK: u8 = 0x82;

/// Battery byte meaning "unknown".
const BATTERY_UNKNOWN: u8 = 255;

/// CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final
/// XOR. The crc catalogue names it CRC-16/IBM-3740. A `static`, so that the
/// table is built once at compile time and not copied at each use.
static CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_3740);

/// Where the framing stands after one scan of the buffer.
enum FrameScan {
    /// No complete frame yet; the buffer is empty or starts with a sync byte
    /// and holds fewer than `MAX_FRAME_LEN` bytes.
    Incomplete,
    /// The sync byte at the head was dropped for this reason.
    Dropped(BadFrame),
    /// The buffer starts with a frame whose CRC is good and whose LEN is
    /// this (so the frame is LEN + 4 bytes long).
    Complete(usize),
}

/// Skips noise up to the next sync byte and checks the frame it starts.
fn next_frame(buffer: &mut BytesMut, noise_bytes: &mut u64) -> FrameScan {
    let Some(start) = buffer.iter().position(|&byte| byte == SYNC) else {
        *noise_bytes += buffer.len() as u64;
        buffer.clear();
        return FrameScan::Incomplete;
    };
    *noise_bytes += start as u64;
    buffer.advance(start);

    let Some(&length) = buffer.get(1) else {
        return FrameScan::Incomplete;
    };
    if !(1..=MAX_LEN).contains(&length) {
        // A5 may be noise or payload: the next byte may start the real frame.
        buffer.advance(1);
        return FrameScan::Dropped(BadFrame::Length);
    }
    let length = usize::from(length);
    let Some(frame) = buffer.get(..length + 4) else {
        // Bounded: LEN was checked above.
        buffer.reserve(length + 4 - buffer.len());
        return FrameScan::Incomplete;
    };
    let sent = u16::from_be_bytes([frame[length + 2], frame[length + 3]]);
    if CRC16.checksum(&frame[1..length + 2]) != sent {
        buffer.advance(1);
        return FrameScan::Dropped(BadFrame::Crc);
    }
    FrameScan::Complete(length)
}

/// Parses the TYPE and PAYLOAD of a receiver frame whose CRC is good.
fn parse_inbound(kind: u8, payload: &[u8]) -> Decoded {
    let message = match kind {
        HELLO => {
            let Ok([id0, id1, id2, id3, major, minor, channel]) = <[u8; 7]>::try_from(payload)
            else {
                return Decoded::Bad(BadFrame::Shape);
            };
            Inbound::Identity(Identity {
                hardware_id: UnitId(u32::from_be_bytes([id0, id1, id2, id3])),
                model: "PL501".to_owned(),
                firmware: format!("{major}.{minor}"),
                radio_channel: Some(channel),
            })
        }
        PRESS => {
            let Ok([id0, id1, id2, id3, key, seq0, seq1, rssi, battery]) =
                <[u8; 9]>::try_from(payload)
            else {
                return Decoded::Bad(BadFrame::Shape);
            };
            if !(1..=16).contains(&key) {
                return Decoded::Bad(BadFrame::Field);
            }
            Inbound::Press(Press {
                unit: UnitId(u32::from_be_bytes([id0, id1, id2, id3])),
                key,
                seq: u16::from_be_bytes([seq0, seq1]),
                rssi: Some(i8::from_be_bytes([rssi])),
                battery: battery_percent(battery),
            })
        }
        HEARTBEAT => {
            let Ok([up0, up1, up2, up3, remotes_heard]) = <[u8; 5]>::try_from(payload) else {
                return Decoded::Bad(BadFrame::Shape);
            };
            Inbound::Heartbeat(Heartbeat {
                unit: None,
                uptime_s: u32::from_be_bytes([up0, up1, up2, up3]),
                remotes_heard: Some(remotes_heard),
            })
        }
        REMOTE_STATUS => {
            let Ok([id0, id1, id2, id3, battery, rssi]) = <[u8; 6]>::try_from(payload) else {
                return Decoded::Bad(BadFrame::Shape);
            };
            Inbound::UnitStatus {
                unit: UnitId(u32::from_be_bytes([id0, id1, id2, id3])),
                battery: battery_percent(battery),
                rssi: i8::from_be_bytes([rssi]),
            }
        }
        unknown => return Decoded::UnknownType(unknown),
    };
    Decoded::Message(message)
}

/// Parses the TYPE and PAYLOAD of a host frame whose CRC is good.
fn parse_outbound(kind: u8, payload: &[u8]) -> Option<Outbound> {
    match (kind, payload) {
        (QUERY, []) => Some(Outbound::Query),
        (ACK, &[id0, id1, id2, id3, seq0, seq1]) => Some(Outbound::Ack {
            unit: UnitId(u32::from_be_bytes([id0, id1, id2, id3])),
            seq: u16::from_be_bytes([seq0, seq1]),
        }),
        _ => None,
    }
}

/// 0-100 is a percentage. 255 means unknown; 101-254 are outside the spec
/// and are read as unknown too, rather than costing a customer's press.
fn battery_percent(raw: u8) -> Option<u8> {
    (raw <= 100).then_some(raw)
}

/// Appends `A5 LEN TYPE PAYLOAD CRC` for a payload of at most 31 bytes
/// (every caller passes a fixed-size payload of at most 9).
fn write_frame(out: &mut BytesMut, kind: u8, payload: &[u8]) {
    // At most 31 by the contract above, so the cast does not truncate.
    let length = (payload.len() + 1) as u8;
    let mut digest = CRC16.digest();
    digest.update(&[length, kind]);
    digest.update(payload);
    out.reserve(payload.len() + 5);
    out.put_u8(SYNC);
    out.put_u8(length);
    out.put_u8(kind);
    out.put_slice(payload);
    out.put_u16(digest.finalize());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_ccitt_false_by_its_check_value() {
        assert_eq!(CRC16.checksum(b"123456789"), 0x29B1);
    }

    #[test]
    fn query_frame_is_sync_len_type_crc() {
        let mut out = BytesMut::new();
        Codec::new()
            .encode(Outbound::Query, &mut out)
            .expect("encoding into a BytesMut does not fail");
        let crc = CRC16.checksum(&[0x01, QUERY]).to_be_bytes();
        assert_eq!(&out[..], &[SYNC, 0x01, QUERY, crc[0], crc[1]]);
    }
}

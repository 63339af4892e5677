//! The ProLAN wire protocols (`shared/spec/prolan-serial.md`), one module per
//! model (its codec and its [`crate::model::ModelSpec`]), and the messages
//! every model shares.
//!
//! Everything here is pure and synchronous: bytes in, messages out. No IO,
//! no clock, no logging. Each codec implements tokio-util's `Decoder` (device
//! to host) and `Encoder<Outbound>` (host to device), so a driver can frame
//! any `AsyncRead + AsyncWrite` and tests need no tty. The device side of each
//! protocol (encoding what a device sends, parsing what the host sends) is
//! here too, for the simulator, the test emulators and the benchmarks.

#[cfg(test)]
pub mod example;
pub mod prolan202;
pub mod prolan501;

use std::fmt;

/// A keypad serial (ProLAN-202) or a remote / receiver id (ProLAN-501).
/// Shown as 8 upper-case hex digits, as in the upload contract's `unit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitId(pub u32);

impl fmt::Display for UnitId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:08X}", self.0)
    }
}

impl std::str::FromStr for UnitId {
    type Err = std::num::ParseIntError;

    /// Parses exactly what the wire and the configuration carry: hex digits,
    /// either case, at most 8 of them.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() || text.len() > 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            // Borrow the standard error type: "invalid digit found in string".
            return Err("x".parse::<u32>().unwrap_err());
        }
        u32::from_str_radix(text, 16).map(UnitId)
    }
}

/// What a device says to the host, once decoded and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    Identity(Identity),
    Press(Press),
    Heartbeat(Heartbeat),
    /// ProLAN-501 REMOTE_STATUS: the hourly beacon of a remote.
    UnitStatus {
        unit: UnitId,
        battery: Option<u8>,
        rssi: i8,
    },
    /// ProLAN-202 `E`: 1 = stuck key, 2 = supply voltage low.
    Fault {
        unit: UnitId,
        code: u8,
    },
}

/// ProLAN-202 `I` or ProLAN-501 HELLO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The keypad serial (202) or the receiver id (501).
    pub hardware_id: UnitId,
    /// `PL202` for a keypad; `PL501` for a receiver (HELLO carries no model).
    pub model: String,
    /// `1.4` (202, as sent) or `major.minor` (501).
    pub firmware: String,
    /// ProLAN-501 only.
    pub radio_channel: Option<u8>,
}

/// One key press as the device reports it. The same press may arrive more
/// than once (the duplicate rules of the spec are applied by the driver).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Press {
    pub unit: UnitId,
    /// 1 to 16; a codec never yields anything else.
    pub key: u8,
    /// Keypad seq or remote counter.
    pub seq: u16,
    /// ProLAN-501 only.
    pub rssi: Option<i8>,
    /// ProLAN-501 only; `None` also when the remote reports 255 (unknown).
    pub battery: Option<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// ProLAN-202: the keypad serial. ProLAN-501 heartbeats name no unit.
    pub unit: Option<UnitId>,
    pub uptime_s: u32,
    /// ProLAN-501 only: remotes heard in the last hour.
    pub remotes_heard: Option<u8>,
}

/// What the host says to a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// `Q` / QUERY: the device answers with its identity.
    Query,
    /// `A` / ACK: the press was durably stored. The keypad ignores `unit`.
    Ack { unit: UnitId, seq: u16 },
}

/// One item out of a decoder: a message, or a frame that was dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    Message(Inbound),
    /// A frame was found and dropped; it never produces a press.
    Bad(BadFrame),
    /// ProLAN-501: a frame with a good CRC and a TYPE this agent does not
    /// know, ignored for forward compatibility (and counted).
    UnknownType(u8),
}

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadFrame {
    /// 202: XOR checksum mismatch, or the `*CS` part is missing or not hex.
    Checksum,
    /// 501: CRC-16 mismatch.
    Crc,
    /// 202: longer than 80 bytes without a line end.
    TooLong,
    /// 501: LEN outside 1..=32.
    Length,
    /// 202: a TYPE this agent does not know.
    UnknownType,
    /// The frame's field count or LEN does not fit its type.
    Shape,
    /// A field does not parse or is out of range (key 0, seq 70000, ...).
    Field,
}

impl fmt::Display for BadFrame {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            BadFrame::Checksum => "checksum mismatch",
            BadFrame::Crc => "crc mismatch",
            BadFrame::TooLong => "line longer than 80 bytes",
            BadFrame::Length => "length out of range",
            BadFrame::UnknownType => "unknown message type",
            BadFrame::Shape => "wrong number of fields for its type",
            BadFrame::Field => "field does not parse",
        })
    }
}

/// What every model's host-side codec is: a tokio-util decoder of what the
/// device sends and encoder of what the host sends, counting its noise.
pub trait HostCodec:
    tokio_util::codec::Decoder<Item = Decoded, Error = std::io::Error>
    + tokio_util::codec::Encoder<Outbound, Error = std::io::Error>
    + fmt::Debug
    + Send
{
    /// Bytes skipped as noise so far.
    fn noise_bytes(&self) -> u64;
}

/// Any model's host-side codec (its spec makes one), so a driver frames any
/// port the same way.
#[derive(Debug)]
pub struct AnyCodec(Box<dyn HostCodec>);

impl AnyCodec {
    pub fn new(codec: impl HostCodec + 'static) -> Self {
        AnyCodec(Box::new(codec))
    }

    /// Bytes skipped as noise so far.
    pub fn noise_bytes(&self) -> u64 {
        self.0.noise_bytes()
    }
}

impl tokio_util::codec::Decoder for AnyCodec {
    type Item = Decoded;
    type Error = std::io::Error;

    fn decode(&mut self, source: &mut bytes::BytesMut) -> Result<Option<Decoded>, std::io::Error> {
        self.0.decode(source)
    }

    fn decode_eof(
        &mut self,
        source: &mut bytes::BytesMut,
    ) -> Result<Option<Decoded>, std::io::Error> {
        self.0.decode_eof(source)
    }
}

impl tokio_util::codec::Encoder<Outbound> for AnyCodec {
    type Error = std::io::Error;

    fn encode(
        &mut self,
        message: Outbound,
        destination: &mut bytes::BytesMut,
    ) -> Result<(), std::io::Error> {
        self.0.encode(message, destination)
    }
}

//! The press event of the upload contract (`shared/spec/upload-v1.md`):
//! what a driver hands to the store ([`NewPress`]) and what the store holds
//! once it has committed it and given it an id ([`Event`]).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::protocol::UnitId;

/// A press accepted by a driver, not yet durable. It has no id: the store
/// assigns one at commit, so ids sort in store order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPress {
    /// When the agent read the press.
    pub ts: DateTime<Utc>,
    /// The agent's local UTC offset at that moment, in minutes.
    pub tz_offset_min: i32,
    pub device: String,
    /// `prolan-202`, `prolan-501` or `simulator`.
    pub model: &'static str,
    pub unit: UnitId,
    pub key: u8,
    pub answer: Option<String>,
    pub question: Option<String>,
    pub seq: u16,
    pub rssi: Option<i8>,
    pub battery: Option<u8>,
    pub suppressed: bool,
}

/// One stored event, exactly the fields of the upload contract.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// RFC 3339, UTC, milliseconds.
    pub ts: String,
    pub tz_offset_min: i32,
    pub device: String,
    pub model: String,
    pub unit: String,
    pub key: u8,
    pub answer: Option<String>,
    pub question: Option<String>,
    pub seq: u16,
    pub rssi: Option<i8>,
    pub battery: Option<u8>,
    pub suppressed: bool,
}

/// `2026-11-22T10:15:03.214Z`: the one timestamp format of the store and the
/// upload contract.
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The agent's local offset from UTC now, in minutes (180 in Moscow).
pub fn local_offset_minutes() -> i32 {
    chrono::Local::now().offset().local_minus_utc() / 60
}

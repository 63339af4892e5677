//! The press event of the upload contract (`shared/spec/upload-v1.md`):
//! what a driver hands to the store ([`NewPress`]), what the store holds
//! once it has committed it and given it an id ([`Event`]), and the lines it
//! becomes outside (ndjson and csv, for the HTTP sink, the file sink and
//! `export`).

use std::borrow::Cow;

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

/// UTF-8 byte order mark that starts a csv file, so Excel reads Cyrillic.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The header of a csv of events (no line end): the contract's fields, then
/// who sent them; the order of [`CsvLine`]'s fields.
pub const CSV_HEADER: &str =
    "id,type,ts,tz_offset_min,device,model,unit,key,answer,question,seq,rssi,battery,suppressed,agent_id,location";

/// An ndjson line: the event plus who sent it (upload-v1's `ndjson`).
#[derive(Serialize)]
pub struct NdjsonLine<'a> {
    #[serde(flatten)]
    pub event: &'a Event,
    pub agent_id: &'a str,
    pub location: Option<&'a str>,
}

/// What a csv line does with a line break inside a text field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineBreaks {
    /// Kept (the field is quoted): an export reads back exactly.
    Keep,
    /// Written as spaces: one record is one physical line, which the file
    /// sink's crash repair relies on.
    AsSpaces,
}

/// A csv line of an event, in [`CSV_HEADER`]'s order.
#[derive(Serialize)]
pub struct CsvLine<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: Cow<'a, str>,
    ts: &'a str,
    tz_offset_min: i32,
    device: Cow<'a, str>,
    model: Cow<'a, str>,
    unit: Cow<'a, str>,
    key: u8,
    answer: Option<Cow<'a, str>>,
    question: Option<Cow<'a, str>>,
    seq: u16,
    rssi: Option<i8>,
    battery: Option<u8>,
    suppressed: bool,
    agent_id: Cow<'a, str>,
    location: Option<Cow<'a, str>>,
}

impl<'a> CsvLine<'a> {
    pub fn new(
        event: &'a Event,
        agent_id: &'a str,
        location: Option<&'a str>,
        line_breaks: LineBreaks,
    ) -> Self {
        let text = |text: &'a str| -> Cow<'a, str> {
            if line_breaks == LineBreaks::AsSpaces && text.contains(['\r', '\n']) {
                Cow::Owned(text.replace(['\r', '\n'], " "))
            } else {
                Cow::Borrowed(text)
            }
        };
        CsvLine {
            id: &event.id,
            event_type: text(&event.event_type),
            ts: &event.ts,
            tz_offset_min: event.tz_offset_min,
            device: text(&event.device),
            model: text(&event.model),
            unit: text(&event.unit),
            key: event.key,
            answer: event.answer.as_deref().map(text),
            question: event.question.as_deref().map(text),
            seq: event.seq,
            rssi: event.rssi,
            battery: event.battery,
            suppressed: event.suppressed,
            agent_id: text(agent_id),
            location: location.map(text),
        }
    }
}

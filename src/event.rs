//! The events of the upload contract (`docs/upload.md`), presses and agent
//! status events:
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

/// One stored event, exactly the fields of the upload contract: what every
/// event has, then the fields of its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    /// RFC 3339, UTC, milliseconds.
    pub ts: String,
    pub tz_offset_min: i32,
    pub body: EventBody,
}

/// What an event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventBody {
    /// `type = "press"`: a key press.
    Press(PressFields),
    /// `type = "agent_status"`: how the agent is, for a central backend.
    Status(StatusDetail),
}

/// The press fields of an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PressFields {
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

/// The `status` object of an `agent_status` event, as the JSON text it was
/// stored as (written once, sent as it is).
#[derive(Clone, Debug)]
pub struct StatusDetail(Box<serde_json::value::RawValue>);

impl StatusDetail {
    /// Checks that `json` is one JSON object.
    pub fn from_json(json: String) -> Result<StatusDetail, serde_json::Error> {
        let raw = serde_json::value::RawValue::from_string(json)?;
        if !raw.get().starts_with('{') {
            return Err(serde::de::Error::custom("a status is a JSON object"));
        }
        Ok(StatusDetail(raw))
    }

    pub fn json(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for StatusDetail {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

impl Eq for StatusDetail {}

/// The `type` of a press event.
pub const PRESS: &str = "press";
/// The `type` of an agent status event.
pub const AGENT_STATUS: &str = "agent_status";

impl Event {
    /// The contract's `type`.
    pub fn event_type(&self) -> &'static str {
        match self.body {
            EventBody::Press(_) => PRESS,
            EventBody::Status(_) => AGENT_STATUS,
        }
    }

    /// The press fields, when this event is a press.
    pub fn press(&self) -> Option<&PressFields> {
        match &self.body {
            EventBody::Press(press) => Some(press),
            EventBody::Status(_) => None,
        }
    }
}

/// The contract's object: `id`, `type`, `ts`, `tz_offset_min`, then the
/// fields of the type (press fields, or `status`). Fields that do not apply
/// to the type are absent.
impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let fields = match self.body {
            EventBody::Press(_) => 14,
            EventBody::Status(_) => 5,
        };
        let mut object = serializer.serialize_struct("Event", fields)?;
        object.serialize_field("id", &self.id)?;
        object.serialize_field("type", self.event_type())?;
        object.serialize_field("ts", &self.ts)?;
        object.serialize_field("tz_offset_min", &self.tz_offset_min)?;
        match &self.body {
            EventBody::Press(press) => {
                object.serialize_field("device", &press.device)?;
                object.serialize_field("model", &press.model)?;
                object.serialize_field("unit", &press.unit)?;
                object.serialize_field("key", &press.key)?;
                object.serialize_field("answer", &press.answer)?;
                object.serialize_field("question", &press.question)?;
                object.serialize_field("seq", &press.seq)?;
                object.serialize_field("rssi", &press.rssi)?;
                object.serialize_field("battery", &press.battery)?;
                object.serialize_field("suppressed", &press.suppressed)?;
            }
            EventBody::Status(detail) => object.serialize_field("status", &detail.0)?,
        }
        object.end()
    }
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
    /// The line of a press (csv files hold presses only).
    pub fn new(
        event: &'a Event,
        press: &'a PressFields,
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
            event_type: Cow::Borrowed(event.event_type()),
            ts: &event.ts,
            tz_offset_min: event.tz_offset_min,
            device: text(&press.device),
            model: text(&press.model),
            unit: text(&press.unit),
            key: press.key,
            answer: press.answer.as_deref().map(text),
            question: press.question.as_deref().map(text),
            seq: press.seq,
            rssi: press.rssi,
            battery: press.battery,
            suppressed: press.suppressed,
            agent_id: text(agent_id),
            location: location.map(text),
        }
    }
}

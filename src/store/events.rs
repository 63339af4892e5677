//! The `events` table: every press and `agent_status` event, one row
//! each, written once in store order (`seqno`) and never changed. Reads go
//! by seqno (delivery, tail, export) or by time (`events_by_time`).

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{Store, StoreError};
use crate::event::{
    format_timestamp, Event, EventBody, NewPress, PressFields, StatusDetail, AGENT_STATUS,
};
use crate::protocol::UnitId;

/// An event with its place in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub seqno: i64,
    pub event: Event,
}

/// A press as the duplicate filter needs it after a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecentPress {
    pub unit: UnitId,
    pub seq: u16,
    pub ts: DateTime<Utc>,
}

/// The events stored in a time range: how many, and the seqnos they lie
/// between (`None` when there are none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventSpan {
    pub count: u64,
    pub first_seqno: Option<i64>,
    pub last_seqno: Option<i64>,
}

/// How many presses carry one answer, counted apart by suppression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerCount {
    pub answer: Option<String>,
    pub suppressed: bool,
    pub presses: u64,
}

impl Store {
    /// How many events the store holds.
    pub fn event_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .connection
            .query_row("SELECT count(*) FROM events", [], |row| row.get(0))?)
    }

    /// How many presses (not agent status events) come after `seqno`: what
    /// a sink whose cursor is there has still to deliver of them.
    pub fn presses_after(&self, seqno: i64) -> Result<u64, StoreError> {
        Ok(self.connection.query_row(
            "SELECT count(*) FROM events WHERE type = 'press' AND seqno > ?1",
            [seqno],
            |row| row.get(0),
        )?)
    }

    /// The seqno of the newest event (0 for an empty store).
    pub fn last_seqno(&self) -> Result<i64, StoreError> {
        Ok(self
            .connection
            .query_row("SELECT coalesce(max(seqno), 0) FROM events", [], |row| {
                row.get(0)
            })?)
    }

    /// Up to `limit` events after `after_seqno`, in store order.
    pub fn events_after(
        &self,
        after_seqno: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut statement = self.connection.prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE seqno > ?1 ORDER BY seqno LIMIT ?2"
        ))?;
        let rows =
            statement.query_map(params![after_seqno, limit as i64], stored_event_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The events with seqno from `first` to `last`, in store order.
    pub fn events_between(&self, first: i64, last: i64) -> Result<Vec<StoredEvent>, StoreError> {
        let mut statement = self.connection.prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE seqno BETWEEN ?1 AND ?2 ORDER BY seqno"
        ))?;
        let rows = statement.query_map(params![first, last], stored_event_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The greatest event id so far, so new ids keep sorting after it even
    /// when the clock went back while the agent was stopped.
    pub fn last_event_id(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .connection
            .query_row("SELECT max(id) FROM events", [], |row| row.get(0))?)
    }

    /// The presses of `device` stored since `since`, oldest first: what the
    /// duplicate filter must remember after a restart.
    pub fn recent_presses(
        &self,
        device: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<RecentPress>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT unit, seq, ts_ms FROM events
             WHERE ts_ms >= ?1 AND device = ?2 AND type = 'press' ORDER BY seqno",
        )?;
        let rows = statement.query_map(params![since.timestamp_millis(), device], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        let mut presses = Vec::new();
        for row in rows {
            let (unit, seq, ts_ms) = row?;
            // Rows are written by this agent; skip any that do not parse
            // rather than refuse to start.
            let (Ok(unit), Ok(seq), Some(ts)) = (
                unit.parse::<UnitId>(),
                u16::try_from(seq),
                DateTime::<Utc>::from_timestamp_millis(ts_ms),
            ) else {
                continue;
            };
            presses.push(RecentPress { unit, seq, ts });
        }
        Ok(presses)
    }

    /// The events with `since_ms <= ts_ms < until_ms`, counted on the time
    /// index alone.
    pub fn event_span(&self, since_ms: i64, until_ms: i64) -> Result<EventSpan, StoreError> {
        Ok(self.connection.query_row(
            "SELECT count(*), min(seqno), max(seqno) FROM events WHERE ts_ms >= ?1 AND ts_ms < ?2",
            [since_ms, until_ms],
            |row| {
                Ok(EventSpan {
                    count: row.get(0)?,
                    first_seqno: row.get(1)?,
                    last_seqno: row.get(2)?,
                })
            },
        )?)
    }

    /// The seqno of the oldest of the newest `count` events (`None` with no
    /// events or a `count` of 0). Seqnos have gaps where retention deleted
    /// events, so rows are counted rather than subtracted from the newest.
    pub fn first_of_newest(&self, count: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.connection.query_row(
            "SELECT min(seqno) FROM (SELECT seqno FROM events ORDER BY seqno DESC LIMIT ?1)",
            [i64::try_from(count).unwrap_or(i64::MAX)],
            |row| row.get(0),
        )?)
    }

    /// The `ts` of the first event after `seqno`, if there is one.
    pub fn first_ts_after(&self, seqno: i64) -> Result<Option<String>, StoreError> {
        Ok(self
            .connection
            .query_row(
                "SELECT ts FROM events WHERE seqno > ?1 ORDER BY seqno LIMIT 1",
                params![seqno],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Every press counted per answer and suppression.
    pub fn presses_by_answer(&self) -> Result<Vec<AnswerCount>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT answer, suppressed, count(*) FROM events WHERE type = 'press' GROUP BY answer, suppressed",
        )?;
        let rows = statement.query_map([], |row| {
            Ok(AnswerCount {
                answer: row.get(0)?,
                suppressed: row.get(1)?,
                presses: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every press counted per device, by device name.
    pub fn presses_per_device(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT device, count(*) FROM events WHERE type = 'press' GROUP BY device ORDER BY device",
        )?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Store {
    /// Writes `event` exactly as given (its id and time), for fixtures and
    /// tests that need events at given times. The agent's own events go
    /// through the writer, which assigns ids in commit order.
    pub fn insert_fixture_event(&self, event: &Event) -> Result<(), StoreError> {
        let ts_ms =
            chrono::DateTime::parse_from_rfc3339(&event.ts).map_or(0, |at| at.timestamp_millis());
        insert_event(&self.connection, event, ts_ms)?;
        Ok(())
    }
}

pub(super) const EVENT_COLUMNS: &str = "seqno, id, type, ts, tz_offset_min, device, model, unit, key, answer, question, seq, rssi, battery, suppressed, status";
/// How many columns [`EVENT_COLUMNS`] names: a query may select more after them.
pub(super) const EVENT_COLUMN_COUNT: usize = 16;

pub(super) fn stored_event_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    let event_type: String = row.get(2)?;
    let body = if event_type == AGENT_STATUS {
        let json: String = row.get(15)?;
        let detail = StatusDetail::from_json(json).map_err(|error| {
            rusqlite::Error::FromSqlConversionFailure(
                15,
                rusqlite::types::Type::Text,
                Box::new(error),
            )
        })?;
        EventBody::Status(detail)
    } else {
        EventBody::Press(PressFields {
            device: row.get(5)?,
            model: row.get(6)?,
            unit: row.get(7)?,
            key: row.get(8)?,
            answer: row.get(9)?,
            question: row.get(10)?,
            seq: row.get(11)?,
            rssi: row.get(12)?,
            battery: row.get(13)?,
            suppressed: row.get(14)?,
        })
    };
    Ok(StoredEvent {
        seqno: row.get(0)?,
        event: Event {
            id: row.get(1)?,
            ts: row.get(3)?,
            tz_offset_min: row.get(4)?,
            body,
        },
    })
}

/// Writes `event` as a new row (ignored when its id is stored already);
/// returns how many rows it added. The writer's press path has its own
/// statement, straight from a `NewPress`.
pub(super) fn insert_event(
    connection: &Connection,
    event: &Event,
    ts_ms: i64,
) -> rusqlite::Result<usize> {
    let mut statement = connection.prepare_cached(
        "INSERT INTO events (id, type, ts, ts_ms, tz_offset_min, device, model, unit, key,
                             answer, question, seq, rssi, battery, suppressed, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
         ON CONFLICT (id) DO NOTHING",
    )?;
    let no_press = PressFields {
        device: String::new(),
        model: String::new(),
        unit: String::new(),
        key: 0,
        answer: None,
        question: None,
        seq: 0,
        rssi: None,
        battery: None,
        suppressed: false,
    };
    let (press, status) = match &event.body {
        EventBody::Press(press) => (press, None),
        EventBody::Status(detail) => (&no_press, Some(detail.json())),
    };
    statement.execute(params![
        event.id,
        event.event_type(),
        event.ts,
        ts_ms,
        event.tz_offset_min,
        press.device,
        press.model,
        press.unit,
        press.key,
        press.answer,
        press.question,
        press.seq,
        press.rssi,
        press.battery,
        press.suppressed,
        status,
    ])
}

/// Writes a press as a new row with its `id`, in the writer's transaction.
pub(super) fn insert_press(
    transaction: &Transaction<'_>,
    id: &str,
    press: &NewPress,
) -> rusqlite::Result<()> {
    let mut statement = transaction.prepare_cached(
        "INSERT INTO events (id, type, ts, ts_ms, tz_offset_min, device, model, unit, key,
                             answer, question, seq, rssi, battery, suppressed)
         VALUES (?1, 'press', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    statement.execute(params![
        id,
        format_timestamp(press.ts),
        press.ts.timestamp_millis(),
        press.tz_offset_min,
        press.device,
        press.model,
        press.unit.to_string(),
        press.key,
        press.answer,
        press.question,
        press.seq,
        press.rssi,
        press.battery,
        press.suppressed,
    ])?;
    Ok(())
}

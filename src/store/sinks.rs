//! The `sinks` and `dead_letters` tables: each sink's cursor over the
//! events, the batch it has in flight, its state for `status`, and the
//! events its backend rejected on their own.

use chrono::Utc;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};
use rusqlite::{params, OptionalExtension, Transaction};

use super::{Store, StoreError};
use crate::event::format_timestamp;

/// A sink's progress, written by the writer like everything else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkUpdate {
    /// The batch about to be sent: every retry, also after a restart,
    /// sends exactly this batch id with exactly these events.
    Begin {
        sink: String,
        batch_id: String,
        first_seqno: i64,
        last_seqno: i64,
    },
    /// The backend took every event through `through_seqno` (`count` of them).
    Delivered {
        sink: String,
        through_seqno: i64,
        count: u64,
    },
    /// The backend rejects this event on its own: it is kept as a dead
    /// letter and the cursor moves past it.
    DeadLetter {
        sink: String,
        seqno: i64,
        event_id: String,
        status: Option<u16>,
        reason: String,
    },
    /// A dead letter sent again by request was accepted.
    Redelivered { sink: String, seqno: i64 },
    /// A dead letter sent again by request was rejected again.
    RetryRejected {
        sink: String,
        seqno: i64,
        reason: String,
    },
    /// What `status` shows for the sink.
    State {
        sink: String,
        state: SinkState,
        last_error: Option<String>,
    },
}

/// ok | retrying | paused, as in the status contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkState {
    Ok,
    Retrying,
    Paused,
}

impl SinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkState::Ok => "ok",
            SinkState::Retrying => "retrying",
            SinkState::Paused => "paused",
        }
    }
}

/// An event a sink's backend rejected on its own.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    pub sink: String,
    pub seqno: i64,
    pub event_id: String,
    /// The HTTP status of the rejection, when there was one.
    pub status: Option<u16>,
    pub reason: String,
    pub at: String,
    /// `deadletter retry` asked for it to be sent again.
    pub retry_requested: bool,
}

/// A sink's position over the events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkCursor {
    /// Every event up to this seqno is delivered or dead-lettered.
    pub delivered_seqno: i64,
    pub in_flight: Option<InFlightBatch>,
}

/// A batch that was being sent: resent as it is, with the same id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlightBatch {
    pub batch_id: String,
    pub first_seqno: i64,
    pub last_seqno: i64,
}

/// A sink's row, as `status`, the daemon's summary and the demo show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkRow {
    pub name: String,
    pub delivered_seqno: i64,
    pub delivered: u64,
    pub state: SinkState,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
    /// A batch is recorded as in flight.
    pub in_flight: bool,
}

impl FromSql for SinkState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "ok" => Ok(SinkState::Ok),
            "retrying" => Ok(SinkState::Retrying),
            "paused" => Ok(SinkState::Paused),
            other => Err(FromSqlError::Other(
                format!("unknown sink state {other:?}").into(),
            )),
        }
    }
}

const SINK_COLUMNS: &str =
    "name, delivered_seqno, delivered, state, last_success_at, last_error, batch_id IS NOT NULL";

fn sink_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SinkRow> {
    Ok(SinkRow {
        name: row.get(0)?,
        delivered_seqno: row.get(1)?,
        delivered: row.get(2)?,
        state: row.get(3)?,
        last_success_at: row.get(4)?,
        last_error: row.get(5)?,
        in_flight: row.get(6)?,
    })
}

impl Store {
    /// Where `sink` stands: its cursor and the batch it has in flight.
    pub fn sink_cursor(&self, sink: &str) -> Result<SinkCursor, StoreError> {
        let cursor = self
            .connection
            .query_row(
                "SELECT delivered_seqno, batch_id, batch_first, batch_last FROM sinks WHERE name = ?1",
                [sink],
                |row| {
                    let in_flight = match (row.get(1)?, row.get(2)?, row.get(3)?) {
                        (Some(batch_id), Some(first_seqno), Some(last_seqno)) => Some(InFlightBatch {
                            batch_id,
                            first_seqno,
                            last_seqno,
                        }),
                        _ => None,
                    };
                    Ok(SinkCursor {
                        delivered_seqno: row.get(0)?,
                        in_flight,
                    })
                },
            )
            .optional()?;
        Ok(cursor.unwrap_or_default())
    }

    /// The dead letters of `sink` that a user asked to send again.
    pub fn dead_letters_to_retry(&self, sink: &str) -> Result<Vec<i64>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT seqno FROM dead_letters WHERE sink = ?1 AND retry = 1 ORDER BY seqno",
        )?;
        let rows = statement.query_map([sink], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The lowest cursor among `sinks` (0 for a sink that delivered
    /// nothing yet): every event up to it is delivered everywhere. With no
    /// sinks, every event is.
    pub fn delivered_everywhere(&self, sinks: &[String]) -> Result<i64, StoreError> {
        if sinks.is_empty() {
            return self.last_seqno();
        }
        let mut lowest = i64::MAX;
        for sink in sinks {
            lowest = lowest.min(self.sink_cursor(sink)?.delivered_seqno);
        }
        Ok(lowest)
    }

    /// Dead letters, oldest first, of one sink or of all.
    pub fn dead_letters(&self, sink: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT sink, seqno, event_id, status, reason, at, retry FROM dead_letters
             WHERE ?1 IS NULL OR sink = ?1 ORDER BY sink, seqno",
        )?;
        let rows = statement.query_map([sink], |row| {
            Ok(DeadLetter {
                sink: row.get(0)?,
                seqno: row.get(1)?,
                event_id: row.get(2)?,
                status: row.get(3)?,
                reason: row.get(4)?,
                at: row.get(5)?,
                retry_requested: row.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Asks the agent to send the dead letters of one sink (or all) again;
    /// returns how many were marked. The running agent picks them up within
    /// a flush interval, a stopped one at its next start.
    pub fn request_dead_letter_retry(&self, sink: Option<&str>) -> Result<usize, StoreError> {
        Ok(self.connection.execute(
            "UPDATE dead_letters SET retry = 1 WHERE (?1 IS NULL OR sink = ?1) AND retry = 0",
            [sink],
        )?)
    }

    /// The sinks among `sinks` that are delivering (state `ok`) and have
    /// not delivered through `seqno` yet.
    pub fn sinks_behind(&self, sinks: &[String], seqno: i64) -> Result<Vec<String>, StoreError> {
        let mut behind = Vec::new();
        for sink in sinks {
            // A sink without a row has delivered nothing and is not failing.
            let (delivered, state) = self
                .sink(sink)?
                .map_or((0, SinkState::Ok), |row| (row.delivered_seqno, row.state));
            if state == SinkState::Ok && delivered < seqno {
                behind.push(sink.clone());
            }
        }
        Ok(behind)
    }

    /// The row of `name`; `None` for a sink that has not started yet.
    pub fn sink(&self, name: &str) -> Result<Option<SinkRow>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached(&format!("SELECT {SINK_COLUMNS} FROM sinks WHERE name = ?1"))?;
        Ok(statement.query_row([name], sink_from_row).optional()?)
    }

    /// Every sink's row, by name.
    pub fn sinks(&self) -> Result<Vec<SinkRow>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached(&format!("SELECT {SINK_COLUMNS} FROM sinks ORDER BY name"))?;
        let rows = statement.query_map([], sink_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many dead letters `sink` has.
    pub fn dead_letter_count(&self, sink: &str) -> Result<u64, StoreError> {
        Ok(self.connection.query_row(
            "SELECT count(*) FROM dead_letters WHERE sink = ?1",
            [sink],
            |row| row.get(0),
        )?)
    }
}

/// Records a sink's progress in the writer's transaction.
pub(super) fn apply_sink_update(
    transaction: &Transaction<'_>,
    update: &SinkUpdate,
) -> rusqlite::Result<()> {
    let now = format_timestamp(Utc::now());
    let sink = match update {
        SinkUpdate::Begin { sink, .. }
        | SinkUpdate::Delivered { sink, .. }
        | SinkUpdate::DeadLetter { sink, .. }
        | SinkUpdate::Redelivered { sink, .. }
        | SinkUpdate::RetryRejected { sink, .. }
        | SinkUpdate::State { sink, .. } => sink,
    };
    transaction.execute(
        "INSERT INTO sinks (name, updated_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
        params![sink, now],
    )?;
    match update {
        SinkUpdate::Begin {
            batch_id,
            first_seqno,
            last_seqno,
            ..
        } => transaction.execute(
            "UPDATE sinks SET batch_id = ?2, batch_first = ?3, batch_last = ?4, updated_at = ?5
             WHERE name = ?1",
            params![sink, batch_id, first_seqno, last_seqno, now],
        )?,
        SinkUpdate::Delivered {
            through_seqno,
            count,
            ..
        } => transaction.execute(
            "UPDATE sinks SET delivered_seqno = max(delivered_seqno, ?2), delivered = delivered + ?3,
                 last_success_at = ?4, state = 'ok', last_error = NULL,
                 batch_id = NULL, batch_first = NULL, batch_last = NULL, updated_at = ?4
             WHERE name = ?1",
            params![sink, through_seqno, count, now],
        )?,
        SinkUpdate::DeadLetter {
            seqno,
            event_id,
            status,
            reason,
            ..
        } => {
            transaction.execute(
                "INSERT INTO dead_letters (sink, seqno, event_id, status, reason, at, retry)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)
                 ON CONFLICT (sink, seqno) DO UPDATE SET
                     status = excluded.status, reason = excluded.reason, at = excluded.at, retry = 0",
                params![sink, seqno, event_id, status, reason, now],
            )?;
            transaction.execute(
                "UPDATE sinks SET delivered_seqno = max(delivered_seqno, ?2),
                     batch_id = NULL, batch_first = NULL, batch_last = NULL, updated_at = ?3
                 WHERE name = ?1",
                params![sink, seqno, now],
            )?
        }
        SinkUpdate::Redelivered { seqno, .. } => {
            transaction.execute(
                "DELETE FROM dead_letters WHERE sink = ?1 AND seqno = ?2",
                params![sink, seqno],
            )?;
            transaction.execute(
                "UPDATE sinks SET delivered = delivered + 1, last_success_at = ?2, updated_at = ?2
                 WHERE name = ?1",
                params![sink, now],
            )?
        }
        SinkUpdate::RetryRejected { seqno, reason, .. } => transaction.execute(
            "UPDATE dead_letters SET retry = 0, reason = ?3, at = ?4 WHERE sink = ?1 AND seqno = ?2",
            params![sink, seqno, reason, now],
        )?,
        SinkUpdate::State {
            state, last_error, ..
        } => transaction.execute(
            "UPDATE sinks SET state = ?2, last_error = ?3, updated_at = ?4 WHERE name = ?1",
            params![sink, state.as_str(), last_error, now],
        )?,
    };
    Ok(())
}

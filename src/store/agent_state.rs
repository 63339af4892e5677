//! The single-row tables of the agent's own state: `daemon` (which
//! process runs, its heartbeat, the last clock jump) and `store_state`
//! (what housekeeping deleted, write failures, presses dropped, a
//! recovery), as `status` reads them.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{Store, StoreError};
use crate::event::format_timestamp;

/// The `daemon` row: the agent that runs (or ran last) on this store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaemonRow {
    pub pid: Option<u32>,
    pub version: Option<String>,
    pub started_at: Option<String>,
    pub heartbeat_at: Option<String>,
    pub stopped_at: Option<String>,
    /// The last time the wall clock moved by more than a minute against
    /// the monotonic clock, and by how much.
    pub clock_jump_at: Option<String>,
    pub clock_jump_s: Option<i64>,
}

/// The store's own record of what went wrong (`store_state`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStateRow {
    pub pruned_by_retention: u64,
    pub pruned_by_size: u64,
    pub over_cap_since: Option<String>,
    pub write_failures_since: Option<String>,
    pub last_write_error: Option<String>,
    pub dropped_presses: u64,
    pub recovered_at: Option<String>,
    pub damaged_file: Option<String>,
    pub salvaged_events: u64,
}

#[derive(Clone, Copy, Debug)]
/// What the daemon says about itself, kept in the `daemon` row.
pub(super) enum DaemonReport {
    Started {
        pid: u32,
    },
    Alive,
    Stopped,
    /// The wall clock moved by this many seconds against the monotonic one.
    ClockJump {
        seconds: i64,
    },
}

impl Store {
    /// The `daemon` row; `None` when no agent has run with this store.
    pub fn daemon(&self) -> Result<Option<DaemonRow>, StoreError> {
        Ok(self
            .connection
            .query_row(
                "SELECT pid, version, started_at, heartbeat_at, stopped_at, clock_jump_at, clock_jump_s
                 FROM daemon WHERE singleton = 1",
                [],
                |row| {
                    Ok(DaemonRow {
                        pid: row.get(0)?,
                        version: row.get(1)?,
                        started_at: row.get(2)?,
                        heartbeat_at: row.get(3)?,
                        stopped_at: row.get(4)?,
                        clock_jump_at: row.get(5)?,
                        clock_jump_s: row.get(6)?,
                    })
                },
            )
            .optional()?)
    }

    /// The `store_state` row (all zero and empty if it is missing).
    pub fn store_state(&self) -> Result<StoreStateRow, StoreError> {
        let state = self
            .connection
            .query_row(
                "SELECT pruned_retention, pruned_size, over_cap_since, write_failures_since, last_write_error,
                        dropped_presses, recovered_at, damaged_file, salvaged_events
                 FROM store_state WHERE singleton = 1",
                [],
                |row| {
                    Ok(StoreStateRow {
                        pruned_by_retention: row.get(0)?,
                        pruned_by_size: row.get(1)?,
                        over_cap_since: row.get(2)?,
                        write_failures_since: row.get(3)?,
                        last_write_error: row.get(4)?,
                        dropped_presses: row.get(5)?,
                        recovered_at: row.get(6)?,
                        damaged_file: row.get(7)?,
                        salvaged_events: row.get(8)?,
                    })
                },
            )
            .optional()?;
        Ok(state.unwrap_or_default())
    }
}

/// Records `report` in the writer's transaction.
pub(super) fn record_daemon(
    transaction: &Transaction<'_>,
    report: DaemonReport,
) -> rusqlite::Result<()> {
    let now = format_timestamp(Utc::now());
    match report {
        DaemonReport::Started { pid } => transaction.execute(
            "INSERT INTO daemon (singleton, pid, version, started_at, heartbeat_at, stopped_at)
             VALUES (1, ?1, ?2, ?3, ?3, NULL)
             ON CONFLICT (singleton) DO UPDATE SET pid = excluded.pid, version = excluded.version,
                 started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
                 stopped_at = NULL",
            params![pid, env!("CARGO_PKG_VERSION"), now],
        )?,
        DaemonReport::Alive => {
            transaction.execute("UPDATE daemon SET heartbeat_at = ?1", [&now])?
        }
        DaemonReport::ClockJump { seconds } => transaction.execute(
            "UPDATE daemon SET clock_jump_at = ?1, clock_jump_s = ?2",
            params![now, seconds],
        )?,
        DaemonReport::Stopped => transaction.execute(
            "UPDATE daemon SET heartbeat_at = ?1, stopped_at = ?1",
            [&now],
        )?,
    };
    Ok(())
}

/// Records whether undelivered events alone exceed the size cap (keeping
/// since when they do).
pub(super) fn mark_over_cap(transaction: &Transaction<'_>, over: bool) -> rusqlite::Result<()> {
    transaction.execute(
        "UPDATE store_state SET checked_at = ?2,
             over_cap_since = CASE WHEN ?1 THEN coalesce(over_cap_since, ?2) END",
        params![over, format_timestamp(Utc::now())],
    )?;
    Ok(())
}

/// Records that writes work again, adding the presses dropped meanwhile.
pub(super) fn clear_write_failures(
    transaction: &Transaction<'_>,
    dropped_presses: u64,
) -> rusqlite::Result<()> {
    transaction.execute(
        "UPDATE store_state SET dropped_presses = dropped_presses + ?1,
             write_failures_since = NULL, last_write_error = NULL",
        [dropped_presses],
    )?;
    Ok(())
}

/// Records that writes fail since `since` (kept from the first failure),
/// with the latest error.
pub(super) fn note_write_failure(
    connection: &Connection,
    since: DateTime<Utc>,
    error: &str,
) -> rusqlite::Result<()> {
    connection.execute(
        "UPDATE store_state SET write_failures_since = coalesce(write_failures_since, ?1),
             last_write_error = ?2",
        params![format_timestamp(since), error],
    )?;
    Ok(())
}

//! The local write-ahead store: one SQLite file in `data_dir`, WAL mode,
//! `synchronous = FULL`. It owns the schema (versioned migrations), the
//! events table (upload-v1's fields, written once, never changed), and the
//! device, unit and daemon state that `status` reads.
//!
//! Writes go through one thread ([`writer`]) that commits presses in groups;
//! any number of readers ([`Store::open_reader`]) may read meanwhile (WAL
//! readers never block the writer).

pub mod blocking;
pub mod lock;
pub mod recovery;
pub mod retention;
pub mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::event::{Event, EventBody, PressFields, StatusDetail, AGENT_STATUS};
use crate::protocol::UnitId;

pub use writer::{
    Committed, DeviceReport, LinkState, SinkState, SinkUpdate, StoreHandle, UnitReport,
    WriterOptions,
};

/// The store's file name inside `data_dir`.
pub const DATABASE_FILE: &str = "epm-agent.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open store {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("store {} has schema version {found}, newer than this agent knows ({known}): upgrade epm-agent", path.display())]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    /// `PRAGMA quick_check` found damage; the writer's start recovers from it.
    #[error("store {} is damaged: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("store {} is damaged and cannot be moved aside to {}: {source}", path.display(), to.display())]
    MoveAside {
        path: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    #[error("store query failed: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the store writer has stopped")]
    WriterGone,
    #[error("cannot start a store thread: {0}")]
    Thread(std::io::Error),
}

/// Schema migrations, applied in order; `PRAGMA user_version` says how many
/// have run. Append only: never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: events, device and unit state, daemon heartbeat.
    "CREATE TABLE events (
        seqno         INTEGER PRIMARY KEY AUTOINCREMENT,
        id            TEXT    NOT NULL UNIQUE,
        type          TEXT    NOT NULL,
        ts            TEXT    NOT NULL,
        ts_ms         INTEGER NOT NULL,
        tz_offset_min INTEGER NOT NULL,
        device        TEXT    NOT NULL,
        model         TEXT    NOT NULL,
        unit          TEXT    NOT NULL,
        key           INTEGER NOT NULL,
        answer        TEXT,
        question      TEXT,
        seq           INTEGER NOT NULL,
        rssi          INTEGER,
        battery       INTEGER,
        suppressed    INTEGER NOT NULL
    );
    CREATE INDEX events_by_time ON events (ts_ms);
    CREATE TABLE devices (
        name             TEXT PRIMARY KEY,
        model            TEXT NOT NULL,
        port             TEXT NOT NULL,
        state            TEXT NOT NULL,
        state_since      TEXT,
        hardware_id      TEXT,
        firmware         TEXT,
        last_frame_at    TEXT,
        last_press_at    TEXT,
        presses          INTEGER NOT NULL DEFAULT 0,
        duplicates       INTEGER NOT NULL DEFAULT 0,
        bad_frames       INTEGER NOT NULL DEFAULT 0,
        unknown_frames   INTEGER NOT NULL DEFAULT 0,
        noise_bytes      INTEGER NOT NULL DEFAULT 0,
        faults           INTEGER NOT NULL DEFAULT 0,
        reconnects       INTEGER NOT NULL DEFAULT 0,
        last_error       TEXT,
        updated_at       TEXT
    );
    CREATE TABLE units (
        device       TEXT NOT NULL,
        unit         TEXT NOT NULL,
        last_seen_at TEXT,
        battery      INTEGER,
        rssi         INTEGER,
        presses      INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (device, unit)
    );
    CREATE TABLE daemon (
        singleton    INTEGER PRIMARY KEY CHECK (singleton = 1),
        pid          INTEGER NOT NULL,
        version      TEXT NOT NULL,
        started_at   TEXT NOT NULL,
        heartbeat_at TEXT NOT NULL,
        stopped_at   TEXT
    );",
    // 2: delivery. One cursor per sink (`delivered_seqno`: every event up
    // to it is delivered or dead-lettered), the batch in flight (so a retry
    // after a restart sends the same batch id and events), dead letters.
    "CREATE TABLE sinks (
        name             TEXT PRIMARY KEY,
        delivered_seqno  INTEGER NOT NULL DEFAULT 0,
        delivered        INTEGER NOT NULL DEFAULT 0,
        state            TEXT NOT NULL DEFAULT 'ok',
        last_success_at  TEXT,
        last_error       TEXT,
        batch_id         TEXT,
        batch_first      INTEGER,
        batch_last       INTEGER,
        updated_at       TEXT
    );
    CREATE TABLE dead_letters (
        sink        TEXT    NOT NULL,
        seqno       INTEGER NOT NULL,
        event_id    TEXT    NOT NULL,
        status      INTEGER,
        reason      TEXT    NOT NULL,
        at          TEXT    NOT NULL,
        retry       INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (sink, seqno)
    );
    CREATE TABLE store_state (
        singleton           INTEGER PRIMARY KEY CHECK (singleton = 1),
        pruned_retention    INTEGER NOT NULL DEFAULT 0,
        pruned_size         INTEGER NOT NULL DEFAULT 0,
        over_cap_since      TEXT,
        checked_at          TEXT
    );
    INSERT INTO store_state (singleton) VALUES (1);",
    // 3: what went wrong and how the agent coped, for `status`.
    "ALTER TABLE store_state ADD COLUMN recovered_at TEXT;
    ALTER TABLE store_state ADD COLUMN damaged_file TEXT;
    ALTER TABLE store_state ADD COLUMN salvaged_events INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE store_state ADD COLUMN write_failures_since TEXT;
    ALTER TABLE store_state ADD COLUMN last_write_error TEXT;
    ALTER TABLE store_state ADD COLUMN dropped_presses INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE daemon ADD COLUMN clock_jump_at TEXT;
    ALTER TABLE daemon ADD COLUMN clock_jump_s INTEGER;",
    // 4: agent status events share the events table (one stream, one
    // cursor per sink); their press columns hold neutral values and the
    // `status` object is kept as JSON text.
    "ALTER TABLE events ADD COLUMN status TEXT;",
    // 5: ACKs a device did not take in time (a deaf device), dropped.
    "ALTER TABLE devices ADD COLUMN acks_dropped INTEGER NOT NULL DEFAULT 0;",
];

/// A connection to the store, for reading (or, inside the writer, writing).
pub struct Store {
    connection: Connection,
    path: PathBuf,
}

/// A device's counters as last saved, so a restart continues them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Counted by the writer, in the transaction that stores the presses.
    pub presses: u64,
    /// Counted by the driver, saved with its [`DeviceReport`].
    pub link: LinkCounters,
}

/// What a driver counts about its link besides presses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub duplicates: u64,
    pub bad_frames: u64,
    pub unknown_frames: u64,
    pub noise_bytes: u64,
    pub faults: u64,
    pub reconnects: u64,
    /// ACKs dropped because the device did not take them in time.
    pub acks_dropped: u64,
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

/// An event with its place in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub seqno: i64,
    pub event: Event,
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

const EVENT_COLUMNS: &str = "seqno, id, type, ts, tz_offset_min, device, model, unit, key, answer, question, seq, rssi, battery, suppressed, status";
/// How many columns [`EVENT_COLUMNS`] names: a query may select more after them.
const EVENT_COLUMN_COUNT: usize = 16;

fn stored_event_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
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
fn insert_event(connection: &Connection, event: &Event, ts_ms: i64) -> rusqlite::Result<usize> {
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

/// A press as the duplicate filter needs it after a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecentPress {
    pub unit: UnitId,
    pub seq: u16,
    pub ts: DateTime<Utc>,
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir` for writing,
    /// checks it, and brings its schema up to date. A damaged store is moved
    /// aside and replaced by a fresh one holding what could be salvaged
    /// ([`recovery`]); any other failure is returned as it is.
    pub fn open_writer(data_dir: &Path) -> Result<Store, StoreError> {
        create_private_dir(data_dir)?;
        let path = data_dir.join(DATABASE_FILE);
        recovery::remove_salvage_copy(&path);
        match Store::open_checked(&path) {
            Err(damage) if recovery::is_damage(&damage) => recovery::recover(&path, &damage),
            opened => opened,
        }
    }

    /// Opens the store at `path` for writing: quick check first (before
    /// anything is written to it), then settings and migrations.
    fn open_checked(path: &Path) -> Result<Store, StoreError> {
        let connection = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        // Closing the last connection checkpoints the WAL into the database
        // file: a store found damaged must be moved aside as it was found.
        // Once it passed its check, closing is as usual again.
        connection.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        connection.busy_timeout(Duration::from_secs(5))?;
        restrict_file_permissions(path);
        let store = Store {
            connection,
            path: path.to_path_buf(),
        };
        recovery::quick_check(&store)?;
        store
            .connection
            .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)?;
        store.configure()?;
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing store for a small change from the command line
    /// (e.g. marking dead letters for retry) while the daemon may run:
    /// SQLite serialises the two writers; no migration is run here.
    pub fn open_existing(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join(DATABASE_FILE);
        let connection = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        connection.busy_timeout(Duration::from_secs(10))?;
        Ok(Store { connection, path })
    }

    /// Opens an existing store read-only (status, report, export).
    pub fn open_reader(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join(DATABASE_FILE);
        let connection = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        connection.busy_timeout(Duration::from_secs(5))?;
        Ok(Store { connection, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    fn configure(&self) -> Result<(), StoreError> {
        // Freed pages can be handed back to the filesystem (a no-op on a
        // store created before; it only applies before the first table).
        self.connection
            .pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        // WAL: readers never block the writer. FULL: a commit survives a
        // power cut, which is the whole promise of the store.
        self.connection.pragma_update(None, "journal_mode", "WAL")?;
        self.connection.pragma_update(None, "synchronous", "FULL")?;
        self.connection.busy_timeout(Duration::from_secs(5))?;
        Ok(())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let version: i64 = self
            .connection
            .pragma_query_value(None, "user_version", |row| row.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: version,
                known,
            });
        }
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let transaction = self.connection.unchecked_transaction()?;
            transaction.execute_batch(migration)?;
            transaction.pragma_update(None, "user_version", index as i64 + 1)?;
            transaction.commit()?;
        }
        Ok(())
    }

    /// How many events the store holds.
    pub fn event_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .connection
            .query_row("SELECT count(*) FROM events", [], |row| row.get(0))?)
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

    /// Bytes of the database file in use (free pages not counted).
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let pages: i64 = self
            .connection
            .pragma_query_value(None, "page_count", |row| row.get(0))?;
        let free: i64 = self
            .connection
            .pragma_query_value(None, "freelist_count", |row| row.get(0))?;
        let page_size: i64 = self
            .connection
            .pragma_query_value(None, "page_size", |row| row.get(0))?;
        Ok(u64::try_from((pages - free).max(0) * page_size).unwrap_or(0))
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

    /// The sinks among `sinks` that are delivering (state `ok`) and have
    /// not delivered through `seqno` yet.
    pub fn sinks_behind(&self, sinks: &[String], seqno: i64) -> Result<Vec<String>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT delivered_seqno, state FROM sinks WHERE name = ?1")?;
        let mut behind = Vec::new();
        for sink in sinks {
            let (delivered, state): (i64, String) = statement
                .query_row([sink], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?
                .unwrap_or((0, "ok".to_string()));
            if state == "ok" && delivered < seqno {
                behind.push(sink.clone());
            }
        }
        Ok(behind)
    }

    /// Every device's last saved link state (`connected`, `silent`,
    /// `disconnected`), by name.
    pub fn device_states(&self) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT name, state FROM devices")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The counters saved for `device`, zero for a device never seen.
    pub fn device_counters(&self, device: &str) -> Result<DeviceCounters, StoreError> {
        let counters = self
            .connection
            .query_row(
                "SELECT presses, duplicates, bad_frames, unknown_frames, noise_bytes, faults, reconnects,
                        acks_dropped
                 FROM devices WHERE name = ?1",
                [device],
                |row| {
                    Ok(DeviceCounters {
                        presses: row.get(0)?,
                        link: LinkCounters {
                            duplicates: row.get(1)?,
                            bad_frames: row.get(2)?,
                            unknown_frames: row.get(3)?,
                            noise_bytes: row.get(4)?,
                            faults: row.get(5)?,
                            reconnects: row.get(6)?,
                            acks_dropped: row.get(7)?,
                        },
                    })
                },
            )
            .optional()?;
        Ok(counters.unwrap_or_default())
    }
}

/// The data directory holds customer answers: owner only on Unix.
/// Creates `path` (and its parents) owner-only, if missing.
pub fn create_private_dir(path: &Path) -> Result<(), StoreError> {
    let result = {
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
        }
        #[cfg(not(unix))]
        {
            std::fs::create_dir_all(path)
        }
    };
    result.map_err(|source| StoreError::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

fn restrict_file_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Best effort: a store on a filesystem without modes still works.
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    #[cfg(not(unix))]
    let _ = path;
}

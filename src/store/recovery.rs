//! Recovery from a store found damaged at start. [`Store::open_writer`]
//! checks what it opens: SQLite's own answers (`SQLITE_CORRUPT`,
//! `SQLITE_NOTADB`) and `PRAGMA quick_check` (not `integrity_check`, which
//! also cross-checks every index against its table and takes minutes on a
//! big store). A damaged store is moved aside with its WAL and
//! shared-memory files (`epm-agent.db.damaged-<UTC yyyymmddThhmmssZ>`,
//! `-wal`, `-shm`, kept as found), a fresh store takes its place, and every
//! event SQLite can still read is copied into it with its original id and
//! fields, in store order. The fresh store's `store_state` says when, from
//! which file and how many events were salvaged (for `status`); an error in
//! the log says the same.
//!
//! Whatever the salvage meets, the agent starts, on the fresh store: the
//! damaged files are moved away *before* anything is read from them, so
//! even a salvage cut short by a crash or a power cut is followed by a
//! normal start, not by another recovery.
//!
//! What a recovery loses: the events SQLite cannot read any more; device
//! and unit counters and states; sink cursors, batches in flight and dead
//! letters. Sinks start from zero, so the salvaged events are delivered
//! again with their original ids — harmless under upload-v1 (exactly once
//! by id), and the file sink skips ids it has already written.
//!
//! Only damage leads here. An error that says nothing about the file's
//! content (permission denied, disk full, a missing folder, a store from a
//! newer agent) stops the start instead, as before: moving a healthy store
//! aside because of a permission problem would lose everything it holds.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, ErrorCode, OpenFlags};
use ulid::Ulid;

use super::events::{insert_event, stored_event_from_row, EVENT_COLUMNS, EVENT_COLUMN_COUNT};
use super::{Store, StoreError, StoredEvent, DATABASE_FILE};
use crate::event::format_timestamp;

/// Most findings of `PRAGMA quick_check` quoted in the error.
const QUICK_CHECK_FINDINGS: u32 = 10;
/// Events read, and written to the fresh store, at a time.
const CHUNK_EVENTS: usize = 1_000;
/// When the damaged store does not say how many events it had, stepping
/// over unreadable seqnos gives up after this many in a row without an
/// event.
const BLIND_STEPS: u64 = 100_000;
/// The files SQLite keeps next to a database in WAL mode.
const SIDE_FILES: [&str; 2] = ["-wal", "-shm"];

/// Fails with [`StoreError::Damaged`] when `PRAGMA quick_check` finds
/// damage. It reads every page of the store but does not compare indexes
/// with their tables: on 1,000,000 events (186 MB) it took 0.65 s with the
/// file in the page cache, 8 s from a cold cache on a slow virtual disk
/// (`integrity_check`: 2.0 s warm).
pub(super) fn quick_check(store: &Store) -> Result<(), StoreError> {
    let mut statement = store
        .connection
        .prepare(&format!("PRAGMA quick_check({QUICK_CHECK_FINDINGS})"))?;
    let findings: Vec<String> = statement
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    if findings == ["ok"] {
        return Ok(());
    }
    Err(StoreError::Damaged {
        path: store.path.clone(),
        reason: findings.join("; ").replace('\n', " "),
    })
}

/// Whether `error`, met while opening the store, says that the file's
/// content is damaged (and so a recovery is due). Permission, space, lock,
/// path and schema-version errors are not damage.
pub(super) fn is_damage(error: &StoreError) -> bool {
    match error {
        StoreError::Damaged { .. } => true,
        StoreError::Open { source, .. } | StoreError::Sql(source) => matches!(
            source.sqlite_error_code(),
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
        ),
        _ => false,
    }
}

/// Moves the damaged store at `path` aside, opens a fresh store in its
/// place and salvages into it what can be read. Fails only when the
/// damaged files cannot be moved or the fresh store cannot be created.
pub(super) fn recover(path: &Path, damage: &StoreError) -> Result<Store, StoreError> {
    let damaged = move_aside(path)?;
    let reason = match damage {
        StoreError::Damaged { reason, .. } => reason.clone(),
        StoreError::Open { source, .. } | StoreError::Sql(source) => source.to_string(),
        other => other.to_string(),
    };
    tracing::error!(
        store = %path.display(),
        damaged_file = %damaged.display(),
        "store {} is damaged ({reason}); moved it aside to {}, starting a fresh store",
        path.display(),
        damaged.display()
    );
    let store = Store::open_checked(path)?;
    store.connection.execute(
        "UPDATE store_state SET recovered_at = ?1, damaged_file = ?2, salvaged_events = 0",
        params![
            format_timestamp(Utc::now()),
            damaged.to_string_lossy().into_owned()
        ],
    )?;
    let salvage = salvage(&damaged, &store);
    let lost = "device counters, sink cursors and dead letters start from zero; \
                sinks deliver the salvaged events again, with their original ids";
    match &salvage.stopped_by {
        None => tracing::error!(
            damaged_file = %damaged.display(),
            salvaged = salvage.events,
            unreadable = salvage.unreadable,
            "recovered from a damaged store: {} events salvaged into the fresh store, {} unreadable; \
             the damaged files are kept at {}; {lost}",
            salvage.events,
            salvage.unreadable,
            damaged.display()
        ),
        Some(reason) => tracing::error!(
            damaged_file = %damaged.display(),
            salvaged = salvage.events,
            unreadable = salvage.unreadable,
            "recovered from a damaged store: salvage stopped ({reason}) after {} events, {} unreadable; \
             the agent runs on the fresh store; the damaged files are kept at {}; {lost}",
            salvage.events,
            salvage.unreadable,
            damaged.display()
        ),
    }
    Ok(store)
}

/// Removes the copy a salvage reads from (with its WAL and index): after
/// each salvage, and at every start, since a salvage cut short by a crash
/// or a power cut leaves a copy as big as the damaged store. Best effort.
pub(super) fn remove_salvage_copy(path: &Path) {
    let copy = salvage_copy_path(path);
    for file in [with_suffix(&copy, "-wal"), with_suffix(&copy, "-shm"), copy] {
        match fs::remove_file(&file) {
            Ok(()) => tracing::debug!(file = %file.display(), "removed the salvage copy"),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(
                file = %file.display(),
                "cannot remove the salvage copy: {error}"
            ),
        }
    }
}

/// What a salvage did.
#[derive(Debug, Default)]
struct Salvage {
    /// Events copied into the fresh store.
    events: u64,
    /// Seqnos SQLite could not read, and rows that did not hold an event.
    unreadable: u64,
    /// Why the salvage ended before the end of the damaged events, if it did.
    stopped_by: Option<String>,
}

/// An event read from the damaged store, checked.
struct SalvagedEvent {
    event: StoredEvent,
    ts_ms: i64,
}

/// Renames the store and its side files to `<name>.damaged-<UTC time>`
/// (plus `-wal`, `-shm`); returns the new name of the database file. The WAL
/// must go with it: left behind, SQLite would replay it into the fresh store.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let mut damaged = path.with_file_name(format!("{DATABASE_FILE}.damaged-{stamp}"));
    // Two recoveries within a second must not overwrite the first one's files.
    let mut attempt = 1;
    while damaged.exists() || with_suffix(&damaged, "-wal").exists() {
        attempt += 1;
        damaged = path.with_file_name(format!("{DATABASE_FILE}.damaged-{stamp}-{attempt}"));
    }
    let mut moved = Vec::new();
    let files = std::iter::once((path.to_path_buf(), damaged.clone())).chain(
        SIDE_FILES
            .iter()
            .map(|suffix| (with_suffix(path, suffix), with_suffix(&damaged, suffix))),
    );
    for (from, to) in files {
        match fs::rename(&from, &to) {
            Ok(()) => moved.push((from, to)),
            Err(error) if error.kind() == io::ErrorKind::NotFound && !moved.is_empty() => {}
            Err(source) => {
                // Half moved is worse than not moved: put back what went.
                for (from, to) in moved.iter().rev() {
                    if let Err(error) = fs::rename(to, from) {
                        tracing::error!(
                            "cannot move {} back to {}: {error}",
                            to.display(),
                            from.display()
                        );
                    }
                }
                return Err(StoreError::MoveAside {
                    path: from,
                    to,
                    source,
                });
            }
        }
    }
    Ok(damaged)
}

/// Copies every event that can be read from the damaged store into
/// `store`, in store order, with its original id and fields. Reads a copy
/// when one can be made (SQLite writes a `-shm` index next to a WAL database
/// it reads, and the damaged files stay as found), else the damaged file
/// itself, read-only.
fn salvage(damaged: &Path, store: &Store) -> Salvage {
    let copy = salvage_copy_path(&store.path);
    remove_salvage_copy(&store.path);
    let source = match copy_with_wal(damaged, &copy) {
        Ok(()) => copy.as_path(),
        Err(error) => {
            tracing::warn!(
                damaged_file = %damaged.display(),
                "cannot copy the damaged store to salvage from ({error}); reading it in place, read-only"
            );
            remove_salvage_copy(&store.path);
            damaged
        }
    };
    let salvage = match Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(connection) => salvage_from(&connection, store),
        Err(error) => Salvage {
            stopped_by: Some(format!("cannot open {}: {error}", source.display())),
            ..Salvage::default()
        },
    };
    remove_salvage_copy(&store.path);
    salvage
}

fn copy_with_wal(damaged: &Path, copy: &Path) -> io::Result<()> {
    fs::copy(damaged, copy)?;
    match fs::copy(with_suffix(damaged, "-wal"), with_suffix(copy, "-wal")) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// The salvage proper: events in seqno order, a chunk at a time. Where a
/// chunk fails, what was read before the failure is kept and the damaged
/// part is stepped over one seqno at a time (seqnos are dense:
/// `AUTOINCREMENT`, and only the oldest are ever deleted) until a row reads
/// again; then chunks go on from there.
fn salvage_from(source: &Connection, store: &Store) -> Salvage {
    let mut salvage = Salvage::default();
    // cell_size_check: stricter checks of each page read, so garbage is an
    // error rather than odd rows. writable_schema: a file shorter than its
    // header says (cut short) is read up to where it ends instead of being
    // refused as a whole; the connection is read-only, nothing is written.
    for setting in ["cell_size_check", "writable_schema"] {
        if let Err(error) = source.pragma_update(None, setting, true) {
            tracing::debug!("salvage: cannot set {setting}: {error}");
        }
    }
    // NOT INDEXED: the table's own b-tree, in seqno order; a damaged index
    // must not hide intact rows.
    // A store damaged before migration 4 ran has no `status` column (and
    // so no status events): read it as NULL.
    let select = |columns: &str| {
        source.prepare(&format!(
            "SELECT {columns}, ts_ms FROM events NOT INDEXED
             WHERE seqno > ?1 AND seqno <= ?2 ORDER BY seqno LIMIT ?3"
        ))
    };
    let older_columns = EVENT_COLUMNS.replace(", status", ", NULL AS status");
    let mut statement = match select(EVENT_COLUMNS).or_else(|_| select(&older_columns)) {
        Ok(statement) => statement,
        Err(error) => {
            salvage.stopped_by = Some(format!("the events table cannot be read: {error}"));
            return salvage;
        }
    };
    let last_seqno = last_seqno_recorded(source);
    let mut found = Vec::with_capacity(CHUNK_EVENTS);
    let mut after = 0;
    let mut first_error_logged = false;
    'chunks: loop {
        let chunk = read_events(
            &mut statement,
            &mut after,
            i64::MAX,
            CHUNK_EVENTS,
            &mut found,
            &mut salvage.unreadable,
        );
        match chunk {
            Ok(read) if read < CHUNK_EVENTS => break 'chunks,
            Ok(_) => {}
            Err(error) => {
                if !first_error_logged {
                    first_error_logged = true;
                    tracing::warn!(
                        "salvage: cannot read the events after seqno {after} ({error}); \
                         stepping over the damaged part"
                    );
                }
                let mut steps_without_event = 0;
                loop {
                    let seqno = after + 1;
                    let past_the_end = match last_seqno {
                        Some(last) => seqno > last,
                        None => steps_without_event >= BLIND_STEPS,
                    };
                    if past_the_end {
                        break 'chunks;
                    }
                    let step = read_events(
                        &mut statement,
                        &mut after,
                        seqno,
                        1,
                        &mut found,
                        &mut salvage.unreadable,
                    );
                    after = seqno;
                    match step {
                        Ok(0) => steps_without_event += 1,
                        // Readable again: back to chunks.
                        Ok(_) => break,
                        Err(_) => {
                            salvage.unreadable += 1;
                            steps_without_event += 1;
                        }
                    }
                }
            }
        }
        if found.len() >= CHUNK_EVENTS {
            if let Err(error) = write_events(store, &found, &mut salvage.events) {
                salvage.stopped_by = Some(format!("cannot write to the fresh store: {error}"));
                return salvage;
            }
            found.clear();
        }
    }
    if let Err(error) = write_events(store, &found, &mut salvage.events) {
        salvage.stopped_by = Some(format!("cannot write to the fresh store: {error}"));
    }
    salvage
}

/// Reads the events with seqnos in (`*after`, `through`], at most `limit`,
/// into `found`, moving `*after` to each row read; a row that does not
/// hold a valid event is counted in `invalid` and skipped. Returns how many
/// rows were read, or the error SQLite met after the rows it could read.
fn read_events(
    statement: &mut rusqlite::Statement<'_>,
    after: &mut i64,
    through: i64,
    limit: usize,
    found: &mut Vec<SalvagedEvent>,
    invalid: &mut u64,
) -> rusqlite::Result<usize> {
    let mut rows = statement.query(params![*after, through, limit as i64])?;
    let mut read = 0;
    while let Some(row) = rows.next()? {
        read += 1;
        let seqno: i64 = row.get(0)?;
        // A misread page can hand back a row from before: never step back
        // (the salvage would go round in circles), never keep it twice.
        if seqno <= *after {
            *invalid += 1;
            continue;
        }
        *after = seqno;
        match salvaged_event(row) {
            Some(event) => found.push(event),
            None => *invalid += 1,
        }
    }
    Ok(read)
}

/// The event in `row`, if its values are what the writer stores: typed
/// columns of the right types, a ULID for an id, and a `ts` that agrees
/// with `ts_ms`. A page SQLite misreads must not invent an event.
fn salvaged_event(row: &rusqlite::Row<'_>) -> Option<SalvagedEvent> {
    let event = stored_event_from_row(row).ok()?;
    let ts_ms: i64 = row.get(EVENT_COLUMN_COUNT).ok()?;
    Ulid::from_string(&event.event.id).ok()?;
    let ts = DateTime::parse_from_rfc3339(&event.event.ts).ok()?;
    if ts.timestamp_millis() != ts_ms {
        return None;
    }
    Some(SalvagedEvent { event, ts_ms })
}

/// The greatest seqno the damaged store ever gave out, as far as it can
/// still say: from `sqlite_sequence` or the table's last row.
fn last_seqno_recorded(source: &Connection) -> Option<i64> {
    let counted = source
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .ok();
    let stored = source
        .query_row("SELECT max(seqno) FROM events NOT INDEXED", [], |row| {
            row.get::<_, Option<i64>>(0)
        })
        .ok()
        .flatten();
    counted.max(stored)
}

/// Writes `events` to the fresh store in one transaction (new seqnos, in
/// the same order), and counts them in `store_state.salvaged_events`.
fn write_events(
    store: &Store,
    events: &[SalvagedEvent],
    written: &mut u64,
) -> rusqlite::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let transaction = store.connection.unchecked_transaction()?;
    let mut inserted = 0u64;
    {
        for SalvagedEvent { event, ts_ms } in events {
            inserted += insert_event(&transaction, &event.event, *ts_ms)? as u64;
        }
    }
    transaction.execute(
        "UPDATE store_state SET salvaged_events = salvaged_events + ?1",
        [inserted],
    )?;
    transaction.commit()?;
    *written += inserted;
    Ok(())
}

/// Where the damaged store is copied to be read.
fn salvage_copy_path(path: &Path) -> PathBuf {
    path.with_file_name(format!("{DATABASE_FILE}.salvage"))
}

/// `path` with `suffix` appended to its file name (`x.db` → `x.db-wal`).
pub(super) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

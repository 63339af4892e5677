//! The local write-ahead store: one SQLite file in `data_dir`, WAL mode,
//! `synchronous = FULL`. It owns the schema (versioned migrations), the
//! events table (upload-v1's fields, written once, never changed), and the
//! device, unit and daemon state that `status` reads.
//!
//! Writes go through one thread ([`writer`]) that commits presses in groups;
//! any number of readers ([`Store::open_reader`]) may read meanwhile (WAL
//! readers never block the writer).

pub mod agent_state;
pub mod blocking;
pub mod devices;
pub mod events;
pub mod lock;
pub mod press_counts;
pub mod recovery;
pub mod retention;
pub mod sinks;
pub mod snapshot;
pub mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

pub use agent_state::{DaemonRow, StoreStateRow};
pub use devices::{
    DeviceCounters, DeviceReport, DeviceRow, LinkCounters, LinkState, UnitReport, UnitRow,
};
pub use events::{AnswerCount, EventSpan, RecentPress, StoredEvent};
pub use press_counts::{Bucket, Counts, Estimate, FEW_ANSWERS};
pub use retention::Prune;
pub use sinks::{DeadLetter, InFlightBatch, SinkCursor, SinkRow, SinkState, SinkUpdate};
pub use snapshot::{DeviceSnapshot, SinkSnapshot, Snapshot};
pub use writer::{Committed, StoreHandle, WriterOptions};

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

/// Page cache of the writer's connection, in KiB (SQLite's default is
/// 2,000). Presses are appended, so the pages a commit touches are the
/// right edges of a few B-trees: a small cache holds them.
const WRITER_CACHE_KIB: i64 = 1024;
/// Page cache of each reader's connection, in KiB: a sink reads each event
/// once, in order, and the status reads a few rows.
const READER_CACHE_KIB: i64 = 256;

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
        keep_wal_files(&connection)?;
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
        connection.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
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
        keep_wal_files(&self.connection)?;
        self.connection.pragma_update(None, "synchronous", "FULL")?;
        self.connection
            .pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
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

    /// How many migrations the store has had (0: its tables are not
    /// created yet).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .connection
            .pragma_query_value(None, "user_version", |row| row.get(0))?)
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
}

/// The data directory holds customer answers: on Unix the owner (the
/// service user) writes, its group reads (so a monitoring user in that
/// group can run `status`), everyone else is kept out.
/// Creates `path` (and its parents) like that, if missing; an existing
/// folder keeps the mode it has.
pub fn create_private_dir(path: &Path) -> Result<(), StoreError> {
    let failed = |source| StoreError::CreateDir {
        path: path.to_path_buf(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if path.is_dir() {
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DATA_DIR_MODE)
            .create(path)
            .map_err(failed)?;
        // The mode above is cut by the umask (systemd's UMask=, a shell's
        // 077): say it once more, as meant.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(DATA_DIR_MODE))
            .map_err(failed)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(path).map_err(failed)
    }
}

/// Makes the last writing connection to close leave `-wal` and `-shm` in
/// place (checkpointed, not deleted). A read-only reader that may not
/// create files in `data_dir` (a monitoring user in the service's group)
/// can open a WAL database only when both exist, also while no agent runs.
/// Every connection that may write sets it: whichever closes last decides.
pub fn keep_wal_files(connection: &Connection) -> Result<(), StoreError> {
    let mut persist = 1;
    connection.file_control(
        Some(rusqlite::MAIN_DB),
        rusqlite::FileControl::PersistWal(&mut persist),
    )?;
    Ok(())
}

/// `rwxr-x---`: the service user writes, its group reads, no one else.
#[cfg(unix)]
pub const DATA_DIR_MODE: u32 = 0o750;
/// `rw-r-----`, for the database and its `-wal` and `-shm` files (SQLite
/// gives new side files the database's mode): a reader needs all three.
#[cfg(unix)]
pub const STORE_FILE_MODE: u32 = 0o640;

/// Gives the database and the side files that exist [`STORE_FILE_MODE`]
/// (a store made by an older agent had them owner-only).
fn restrict_file_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in [
            path.to_path_buf(),
            recovery::with_suffix(path, "-wal"),
            recovery::with_suffix(path, "-shm"),
        ] {
            // Best effort: a store on a filesystem without modes still works.
            let _ =
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(STORE_FILE_MODE));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// The words that start an SQL statement this agent writes.
    const SQL_KEYWORDS: [&str; 5] = ["SELECT", "INSERT", "UPDATE", "DELETE", "CREATE"];

    /// Every `.rs` file under `folder`, in a stable order.
    fn rust_files(folder: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let mut folders = vec![folder.to_path_buf()];
        while let Some(folder) = folders.pop() {
            let entries = std::fs::read_dir(&folder).expect("a readable source folder");
            for entry in entries {
                let path = entry.expect("a readable folder entry").path();
                if path.is_dir() {
                    folders.push(path);
                } else if path.extension().is_some_and(|extension| extension == "rs") {
                    files.push(path);
                }
            }
        }
        files.sort();
        files
    }

    /// The string literals of Rust source (plain, raw and byte strings),
    /// with the line each starts on; comments, doc comments and char
    /// literals are skipped.
    fn string_literals(source: &str) -> Vec<(usize, String)> {
        let chars: Vec<char> = source.chars().collect();
        let mut literals = Vec::new();
        let mut line = 1;
        let mut at = 0;
        while at < chars.len() {
            let here = chars[at];
            let next = chars.get(at + 1).copied();
            if here == '\n' {
                line += 1;
                at += 1;
            } else if here == '/' && next == Some('/') {
                while at < chars.len() && chars[at] != '\n' {
                    at += 1;
                }
            } else if here == '/' && next == Some('*') {
                at += 2;
                while at < chars.len() && !(chars[at] == '*' && chars.get(at + 1) == Some(&'/')) {
                    line += usize::from(chars[at] == '\n');
                    at += 1;
                }
                at += 2;
            } else if here == '\'' {
                // A char literal ('x', '\n', '"'), or else a lifetime.
                if next == Some('\\') {
                    at += 2;
                    while at < chars.len() && chars[at] != '\'' {
                        at += 1;
                    }
                    at += 1;
                } else if chars.get(at + 2) == Some(&'\'') {
                    at += 3;
                } else {
                    at += 1;
                }
            } else if here == 'r' && matches!(next, Some('"' | '#')) && !is_identifier(&chars, at) {
                let hashes = chars[at + 1..].iter().take_while(|c| **c == '#').count();
                if chars.get(at + 1 + hashes) != Some(&'"') {
                    at += 1;
                    continue;
                }
                let start = at + 2 + hashes;
                let closing: Vec<char> = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                let mut end = start;
                while end < chars.len() && !chars[end..].starts_with(&closing) {
                    end += 1;
                }
                let text: String = chars[start..end.min(chars.len())].iter().collect();
                literals.push((line, text.clone()));
                line += text.matches('\n').count();
                at = end + closing.len();
            } else if here == '"' {
                let start = at + 1;
                let mut end = start;
                while end < chars.len() && chars[end] != '"' {
                    end += if chars[end] == '\\' { 2 } else { 1 };
                }
                let text: String = chars[start..end.min(chars.len())].iter().collect();
                literals.push((line, text.clone()));
                line += text.matches('\n').count();
                at = end + 1;
            } else {
                at += 1;
            }
        }
        literals
    }

    /// Whether the char at `at` continues an identifier (the `r` of `for"`
    /// is no raw string).
    fn is_identifier(chars: &[char], at: usize) -> bool {
        at > 0 && (chars[at - 1].is_alphanumeric() || chars[at - 1] == '_')
    }

    /// An SQL keyword at the start of `text` or after whitespace, followed
    /// by whitespace: `"SELECT x"`, `"…\n   UPDATE t"`, not "SELECTED" or
    /// "cannot UPDATE." at the end of a sentence.
    fn holds_sql(text: &str) -> bool {
        let words: Vec<&str> = text.split_whitespace().collect();
        let followed =
            |index: usize| index + 1 < words.len() || text.ends_with(char::is_whitespace);
        words
            .iter()
            .enumerate()
            .any(|(index, word)| SQL_KEYWORDS.contains(word) && followed(index))
    }

    /// Every SQL literal outside the store, as `file:line: literal`.
    fn sql_outside_the_store(source_root: &Path) -> Vec<String> {
        let store = source_root.join("store");
        // The destination database of the PostgreSQL sink is the
        // customer's, not the agent's store.
        let postgres_sink = source_root.join("sink").join("postgres.rs");
        let mut found = Vec::new();
        for file in rust_files(source_root) {
            if file.starts_with(&store) || file == postgres_sink {
                continue;
            }
            let source = std::fs::read_to_string(&file).expect("a readable source file");
            for (line, literal) in string_literals(&source) {
                if holds_sql(&literal) {
                    let shown = literal.split_whitespace().collect::<Vec<_>>().join(" ");
                    found.push(format!("{}:{line}: {shown:?}", file.display()));
                }
            }
        }
        found
    }

    #[test]
    fn only_the_store_writes_sql() {
        let source_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let found = sql_outside_the_store(&source_root);
        assert!(
            found.is_empty(),
            "SQL outside src/store/ (move it behind a function of the store):\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn the_scan_finds_sql_literals_and_nothing_else() {
        let source = r##"
            /// Doc comments may say SELECT something.
            // So may comments: DELETE FROM events
            /* and block comments: INSERT INTO x */
            let lifetime: &'static str = "plain prose, cannot UPDATE";
            let quote = '"';
            let sql = "SELECT count(*) FROM events";
            let later = "
                 UPDATE sinks SET state = ?1";
            let raw = r#"INSERT INTO "quoted" VALUES (1)"#;
            let word = "SELECTED items";
        "##;
        let sql: Vec<(usize, bool)> = string_literals(source)
            .into_iter()
            .map(|(line, literal)| (line, holds_sql(&literal)))
            .collect();
        assert_eq!(
            sql,
            [(5, false), (7, true), (8, true), (10, true), (11, false)]
        );
    }
}

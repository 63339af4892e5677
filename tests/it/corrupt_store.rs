//! A store damaged while the agent was stopped, on real SQLite files: each
//! store is built by the library's writer and closed, then damaged (cut
//! short, pages overwritten, WAL frames spoiled, replaced by noise), then
//! opened as the agent opens it at start. Damage is moved aside as found,
//! what can be read is salvaged with its original ids and fields, and a
//! fresh store works; a WAL spoiled after its last good frame is not damage
//! (SQLite ends the log there); an error that is not damage moves nothing.
//! Last, the `epm-agent run` binary starts on a damaged store, says so, and
//! keeps running.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use rusqlite::{Connection, OpenFlags};

use epm_agent::event::{Event, NewPress};
use epm_agent::protocol::UnitId;
use epm_agent::store::{writer, Store, StoreError, WriterOptions};
use support::TestDir;

const DATABASE: &str = "epm-agent.db";
const DAMAGED_PREFIX: &str = "epm-agent.db.damaged-";

fn press(seq: u16) -> NewPress {
    NewPress {
        ts: Utc::now(),
        tz_offset_min: 180,
        device: "entrance".into(),
        model: "prolan-501",
        unit: UnitId(0x301A_0000 + u32::from(seq % 7)),
        key: (seq % 5) as u8 + 1,
        answer: Some(["yes", "neutral", "no"][usize::from(seq % 3)].into()),
        question: seq.is_multiple_of(2).then(|| "recommend".into()),
        seq,
        rssi: Some(-61),
        battery: seq.is_multiple_of(4).then_some(87),
        suppressed: seq.is_multiple_of(11),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs the library's writer over `store`, stores the presses `seqs` (a
/// flush every `per_commit`, so several transactions), and closes it: the
/// writer is dropped and joined, its last checkpoint puts everything into
/// the database file.
fn write_presses(store: Store, seqs: std::ops::Range<u16>, per_commit: u16) {
    let (handle, thread) = writer::spawn(store, WriterOptions::default()).expect("writer");
    runtime().block_on(async {
        for seq in seqs {
            handle.press(press(seq), None).await.expect("queued");
            if seq % per_commit == per_commit - 1 {
                handle.flush().await.expect("flushed");
            }
        }
        handle.flush().await.expect("flushed");
    });
    drop(handle);
    thread.join().expect("writer thread");
}

/// A closed store of `count` presses in `data_dir`, all in the database
/// file; returns its events in store order.
fn build_store(data_dir: &Path, count: u16) -> Vec<Event> {
    write_presses(Store::open_writer(data_dir).expect("open"), 0..count, 100);
    let wal = data_dir.join(format!("{DATABASE}-wal"));
    assert!(
        fs::metadata(&wal).map_or(true, |wal| wal.len() == 0),
        "precondition: everything is checkpointed into the database file"
    );
    events(data_dir)
}

/// The events of the store in `data_dir`, in store order.
/// The presses in the store (an agent that ran on it adds its status
/// events, which are not salvaged presses).
fn events(data_dir: &Path) -> Vec<Event> {
    let store = Store::open_reader(data_dir).expect("reader");
    store
        .events_after(0, 1_000_000)
        .expect("events")
        .into_iter()
        .map(|stored| stored.event)
        .filter(|event| event.press().is_some())
        .collect()
}

/// `store_state`'s record of a recovery: (recovered_at, damaged_file,
/// salvaged_events).
fn recovery_record(data_dir: &Path) -> (Option<String>, Option<String>, i64) {
    let store = Store::open_reader(data_dir).expect("reader");
    store
        .connection()
        .query_row(
            "SELECT recovered_at, damaged_file, salvaged_events FROM store_state",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .expect("store_state")
}

/// The names in `data_dir`, sorted.
fn listing(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(data_dir)
        .expect("read data dir")
        .map(|entry| {
            entry
                .expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// The damaged database files moved aside in `data_dir` (not their WAL
/// and shared-memory files), sorted.
fn damaged_databases(data_dir: &Path) -> Vec<String> {
    listing(data_dir)
        .into_iter()
        .filter(|name| name.starts_with(DAMAGED_PREFIX))
        .filter(|name| !name.ends_with("-wal") && !name.ends_with("-shm"))
        .collect()
}

/// The store's page size, from its header (bytes 16-17, big-endian; 1
/// means 65536).
fn page_size(database: &[u8]) -> usize {
    match database.get(16..18) {
        Some([0, 1]) => 65_536,
        Some(&[high, low]) => usize::from(u16::from_be_bytes([high, low])),
        _ => panic!("no database header"),
    }
}

/// Every salvaged event is an original one, fields and all, and they come
/// in the original order: nothing invented, nothing reordered.
fn assert_salvaged_from(original: &[Event], salvaged: &[Event]) {
    let mut remaining = original.iter();
    for event in salvaged {
        assert!(
            remaining.any(|candidate| candidate == event),
            "salvaged event {} is not an original event in store order: {event:?}",
            event.id
        );
    }
}

/// After `Store::open_writer` recovered from `damaged_content`: exactly one
/// damaged file, byte for byte as it was found; `store_state` says so; the
/// fresh store holds only salvaged original events, counted; it takes new
/// presses after them. Returns the salvaged events.
fn assert_recovered(
    data_dir: &Path,
    store: Store,
    damaged_content: &[u8],
    original: &[Event],
) -> Vec<Event> {
    let damaged = damaged_databases(data_dir);
    assert_eq!(
        damaged.len(),
        1,
        "one damaged file in {:?}",
        listing(data_dir)
    );
    let damaged_path = data_dir.join(&damaged[0]);
    let stamp = damaged[0].trim_start_matches(DAMAGED_PREFIX);
    assert!(
        stamp.len() == 16 && stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T',
        "a UTC yyyymmddThhmmssZ stamp: {stamp}"
    );
    assert!(
        fs::read(&damaged_path).expect("damaged file") == damaged_content,
        "the damaged file is kept as it was found"
    );
    assert!(
        !listing(data_dir)
            .iter()
            .any(|name| name.contains("salvage")),
        "the salvage copy is removed: {:?}",
        listing(data_dir)
    );

    let salvaged = events(data_dir);
    assert_salvaged_from(original, &salvaged);
    let (recovered_at, damaged_file, salvaged_events) = recovery_record(data_dir);
    assert!(recovered_at.is_some(), "store_state.recovered_at is set");
    assert_eq!(
        damaged_file.map(PathBuf::from),
        Some(damaged_path),
        "store_state.damaged_file names the moved file"
    );
    assert_eq!(salvaged_events, salvaged.len() as i64);

    write_presses(store, 9_000..9_003, 100);
    let after = events(data_dir);
    assert_eq!(
        after.len(),
        salvaged.len() + 3,
        "the fresh store takes presses"
    );
    assert_eq!(&after[..salvaged.len()], &salvaged[..]);
    let newest_salvaged = salvaged.iter().map(|event| &event.id).max();
    assert!(
        after[salvaged.len()..]
            .iter()
            .all(|event| Some(&event.id) > newest_salvaged),
        "new ids sort after the salvaged ones"
    );
    Store::open_writer(data_dir).expect("the fresh store opens again without a recovery");
    assert_eq!(damaged_databases(data_dir), damaged, "no second recovery");
    salvaged
}

#[test]
fn a_truncated_store_is_moved_aside_and_its_early_events_salvaged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let original = build_store(dir.path(), 2_000);
    let database = dir.path().join(DATABASE);
    let content = fs::read(&database).expect("database");
    // Not on a page boundary: a torn copy, a full disk, a bad sector.
    let cut = &content[..content.len() / 2 + 123];
    fs::write(&database, cut).expect("truncate");

    let store = Store::open_writer(dir.path()).expect("a truncated store is recovered");
    let salvaged = assert_recovered(dir.path(), store, cut, &original);
    // Rows are appended, so the table's leaves follow each other in the
    // file: what survives the cut is the oldest events, the rest is gone.
    assert!(
        !salvaged.is_empty() && salvaged.len() < original.len(),
        "the events before the cut, not those after it: {} of {}",
        salvaged.len(),
        original.len()
    );
    assert_eq!(salvaged, original[..salvaged.len()]);
}

#[test]
fn garbage_pages_lose_only_their_events_and_no_event_is_invented() {
    let dir = tempfile::tempdir().expect("temp dir");
    let original = build_store(dir.path(), 3_000);
    let database = dir.path().join(DATABASE);
    let mut content = fs::read(&database).expect("database");
    let page = page_size(&content);
    let pages = content.len() / page;
    let mut random = fastrand::Rng::with_seed(7);
    for number in [pages * 2 / 5, pages / 2, pages * 3 / 5] {
        random.fill(&mut content[number * page..(number + 1) * page]);
    }
    fs::write(&database, &content).expect("overwrite pages");

    let store = Store::open_writer(dir.path()).expect("a store with garbage pages is recovered");
    let salvaged = assert_recovered(dir.path(), store, &content, &original);
    // Three pages hold at most a few dozen events each.
    assert!(
        salvaged.len() >= original.len() - 150,
        "most events salvaged: {} of {}",
        salvaged.len(),
        original.len()
    );
    assert!(
        salvaged.last() == original.last(),
        "the salvage goes on past the damage to the newest event"
    );
}

/// SQLite checks every WAL frame's checksum (cumulative over the log) when
/// it rebuilds the WAL index at the first open: the first frame that does
/// not check ends the valid log, and transactions from there on are not
/// there. That is what a torn write at a power cut looks like, so it is not
/// damage: the store opens, passes its check, keeps every transaction
/// before the bad frame, and no recovery happens. (With `synchronous =
/// FULL` such frames were fsynced, so their loss is a disk fault that
/// SQLite cannot tell from a torn write; it is not detected.)
#[test]
fn a_wal_spoiled_in_the_middle_ends_the_log_there_and_is_not_damage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let live = dir.path().join("live");
    let base = build_store(&live, 300);

    // A crash image: the store and its WAL as a kill -9 would leave them.
    // A reader on the checkpointed store pins the database file (the
    // background checkpointer can copy nothing into it) while 200 presses
    // go to the WAL in 20 transactions; then both files are copied.
    let store = Store::open_writer(&live).expect("open");
    store
        .connection()
        .pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .expect("checkpoint");
    let pin = Connection::open_with_flags(live.join(DATABASE), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("reader");
    pin.execute_batch("BEGIN; SELECT count(*) FROM events;")
        .expect("pinned read");
    let (handle, thread) = writer::spawn(store, WriterOptions::default()).expect("writer");
    let mut ids = Vec::new();
    runtime().block_on(async {
        let (reply, mut committed) = tokio::sync::mpsc::unbounded_channel();
        for seq in 300..500u16 {
            handle
                .press(press(seq), Some(reply.clone()))
                .await
                .expect("queued");
            if seq % 10 == 9 {
                handle.flush().await.expect("flushed");
            }
        }
        for _ in 300..500u16 {
            ids.push(committed.recv().await.expect("committed").id);
        }
    });
    let crashed = dir.path().join("crashed");
    fs::create_dir(&crashed).expect("crash dir");
    for name in [DATABASE.to_string(), format!("{DATABASE}-wal")] {
        fs::copy(live.join(&name), crashed.join(&name)).expect("copy the crash image");
    }
    drop(pin);
    drop(handle);
    thread.join().expect("writer thread");

    // Spoil one page image in the middle of the log.
    let wal_path = crashed.join(format!("{DATABASE}-wal"));
    let mut wal = fs::read(&wal_path).expect("wal");
    let page = page_size(&fs::read(crashed.join(DATABASE)).expect("database"));
    let frame = 24 + page;
    let frames = (wal.len() - 32) / frame;
    assert!(frames > 40, "20 transactions in the WAL: {frames} frames");
    let spoiled = 32 + (frames / 2) * frame + 24 + 100;
    for byte in &mut wal[spoiled..spoiled + 16] {
        *byte ^= 0x5A;
    }
    fs::write(&wal_path, &wal).expect("spoil the WAL");

    let store = Store::open_writer(&crashed).expect("a spoiled WAL is not damage");
    assert!(
        !listing(&crashed)
            .iter()
            .any(|name| name.starts_with(DAMAGED_PREFIX)),
        "nothing moved aside: {:?}",
        listing(&crashed)
    );
    let kept = events(&crashed);
    assert_eq!(
        &kept[..base.len()],
        &base[..],
        "the checkpointed events stay"
    );
    let kept_ids: Vec<&String> = kept[base.len()..].iter().map(|event| &event.id).collect();
    let written: Vec<&String> = ids.iter().collect();
    assert!(
        !kept_ids.is_empty() && kept_ids.len() < written.len(),
        "the log ends at the spoiled frame: {} of {} presses kept",
        kept_ids.len(),
        written.len()
    );
    assert_eq!(
        kept_ids,
        written[..kept_ids.len()],
        "whole transactions before the bad frame are kept, nothing after it"
    );
    assert_eq!(recovery_record(&crashed), (None, None, 0), "no recovery");

    // The agent goes on as usual.
    write_presses(store, 600..605, 100);
    let after = events(&crashed);
    assert_eq!(after.len(), kept.len() + 5);
    assert!(after[kept.len()..]
        .iter()
        .all(|event| event.id > kept[kept.len() - 1].id));
}

#[test]
fn a_file_that_is_not_a_database_is_moved_aside_for_a_fresh_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut noise = vec![0u8; 64 * 1024];
    fastrand::Rng::with_seed(3).fill(&mut noise);
    fs::write(dir.path().join(DATABASE), &noise).expect("noise");

    let store = Store::open_writer(dir.path()).expect("noise is recovered");
    let salvaged = assert_recovered(dir.path(), store, &noise, &[]);
    assert!(salvaged.is_empty());
}

/// An error that says nothing about the file's content must not move a
/// store aside: it could be healthy, and moving it would lose it.
#[test]
fn errors_that_are_not_damage_stop_the_start_and_move_nothing() {
    // The store's path is taken by a folder (as a permission problem, the
    // file cannot be opened at all).
    let dir = tempfile::tempdir().expect("temp dir");
    fs::create_dir(dir.path().join(DATABASE)).expect("folder in the way");
    fs::write(dir.path().join(DATABASE).join("keep"), b"x").expect("file in it");
    let before = listing(dir.path());
    match Store::open_writer(dir.path()) {
        Err(StoreError::Open { .. }) => {}
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a folder was opened as a store"),
    }
    assert_eq!(listing(dir.path()), before, "nothing moved");
    assert!(dir.path().join(DATABASE).join("keep").exists());

    // A store from a newer agent is not damaged either.
    let dir = tempfile::tempdir().expect("temp dir");
    let original = build_store(dir.path(), 50);
    let store = Store::open_writer(dir.path()).expect("open");
    store
        .connection()
        .pragma_update(None, "user_version", 999)
        .expect("set version");
    drop(store);
    let before = listing(dir.path());
    match Store::open_writer(dir.path()) {
        Err(StoreError::TooNew { found: 999, .. }) => {}
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
    assert_eq!(listing(dir.path()), before, "nothing moved");
    assert_eq!(events(dir.path()), original, "the newer store is untouched");
}

#[test]
fn the_agent_starts_on_a_damaged_store_says_so_and_keeps_running() {
    let dir = TestDir::new();
    let data_dir = dir.data_dir();
    let original = build_store(&data_dir, 1_500);
    let database = data_dir.join(DATABASE);
    let mut content = fs::read(&database).expect("database");
    let page = page_size(&content);
    let middle = content.len() / page / 2;
    fastrand::Rng::with_seed(11).fill(&mut content[middle * page..(middle + 1) * page]);
    fs::write(&database, &content).expect("overwrite a page");
    let config = dir.write_config(&[]);

    let mut agent = dir.spawn_agent(&config);
    let log = dir.path().join("agent-0.stderr");
    // Still beating seconds after the start: not a crash, not a loop.
    dir.wait_until(
        Duration::from_secs(20),
        "a heartbeat 4 s after the start",
        || {
            let connection = support::open_store(&data_dir)?;
            connection
                .query_row(
                    "SELECT (julianday(heartbeat_at) - julianday(started_at)) * 86400 >= 4
                     FROM daemon",
                    [],
                    |row| row.get::<_, bool>(0),
                )
                .map_err(|error| error.to_string())?
                .then_some(())
                .ok_or_else(|| "no heartbeat yet".to_string())
        },
    );
    agent.assert_running();
    let text = fs::read_to_string(&log).expect("stderr");
    let damaged = damaged_databases(&data_dir)
        .pop()
        .unwrap_or_else(|| dir.diagnostics().fail("no damaged file"));
    for expected in ["is damaged (", "recovered from a damaged store", &damaged] {
        if !text.contains(expected) {
            dir.diagnostics()
                .fail(format!("stderr does not say {expected:?}"));
        }
    }
    let (recovered_at, _, salvaged_events) = recovery_record(&data_dir);
    assert!(recovered_at.is_some());
    let salvaged = events(&data_dir);
    assert_salvaged_from(&original, &salvaged);
    assert_eq!(salvaged_events, salvaged.len() as i64);
    assert!(
        salvaged.len() >= original.len() - 100,
        "most events salvaged"
    );
    agent.stop_cleanly();

    // The next start is an ordinary one.
    let mut agent = dir.spawn_agent(&config);
    dir.wait_until(Duration::from_secs(20), "the second start", || {
        let text = fs::read_to_string(dir.path().join("agent-1.stderr"))
            .map_err(|error| error.to_string())?;
        text.contains("starting")
            .then_some(())
            .ok_or_else(|| "not started yet".to_string())
    });
    agent.stop_cleanly();
    let second = fs::read_to_string(dir.path().join("agent-1.stderr")).expect("stderr");
    assert!(!second.contains("damaged"), "no second recovery:\n{second}");
    assert_eq!(events(&data_dir), salvaged);
}

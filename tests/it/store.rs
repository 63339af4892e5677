//! The store on real SQLite files: schema versions, permissions, group
//! commit replies, counters moving with the events, and the queries a
//! restart depends on.

use chrono::{Duration as ChronoDuration, Utc};
use tokio::sync::mpsc;

use epm_agent::event::NewPress;
use epm_agent::protocol::UnitId;
use epm_agent::store::{writer, Store, StoreError, WriterOptions};

fn press(unit: u32, seq: u16, ago_s: i64) -> NewPress {
    NewPress {
        ts: Utc::now() - ChronoDuration::seconds(ago_s),
        tz_offset_min: 180,
        device: "entrance".into(),
        model: "prolan-501",
        unit: UnitId(unit),
        key: 1,
        answer: Some("yes".into()),
        question: None,
        seq,
        rssi: Some(-61),
        battery: None,
        suppressed: false,
    }
}

#[test]
fn a_new_store_is_private_and_at_the_current_schema() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let store = Store::open_writer(&data_dir).expect("open");
    let version: i64 = store
        .connection()
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .expect("user_version");
    assert!(version >= 1);
    let mode: String = store
        .connection()
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    let synchronous: i64 = store
        .connection()
        .pragma_query_value(None, "synchronous", |row| row.get(0))
        .expect("synchronous");
    assert_eq!(synchronous, 2, "synchronous = FULL");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let dir_mode = std::fs::metadata(&data_dir)
            .expect("dir")
            .permissions()
            .mode()
            & 0o777;
        let file_mode = std::fs::metadata(store.path())
            .expect("file")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(
            (dir_mode, file_mode),
            (0o750, 0o640),
            "the service user writes, its group reads, no one else"
        );
    }
    drop(store);
    // Opening again runs no migration twice.
    Store::open_writer(&data_dir).expect("reopen");
}

#[test]
fn a_store_from_a_newer_agent_is_refused_not_damaged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_writer(dir.path()).expect("open");
    store
        .connection()
        .pragma_update(None, "user_version", 999)
        .expect("set version");
    drop(store);
    match Store::open_writer(dir.path()) {
        Err(StoreError::TooNew { found: 999, .. }) => {}
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
}

#[tokio::test]
async fn commits_are_reported_with_ids_in_store_order_and_counters_follow() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (handle, thread) = writer::spawn(
        Store::open_writer(dir.path()).expect("open"),
        WriterOptions::default(),
    )
    .expect("writer");
    let (reply, mut committed) = mpsc::unbounded_channel();
    for seq in 0..50u16 {
        handle
            .press(press(0x301A0002, seq, 0), Some(reply.clone()))
            .await
            .expect("queued");
    }
    let mut ids = Vec::new();
    for seq in 0..50u16 {
        let commit = committed.recv().await.expect("commit reply");
        assert_eq!(
            (commit.unit, commit.seq),
            (UnitId(0x301A0002), seq),
            "replies in order"
        );
        ids.push(commit.id);
    }
    drop(handle);
    thread.join().expect("writer thread");

    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "ids sort in commit order");
    let reader = Store::open_reader(dir.path()).expect("reader");
    assert_eq!(reader.event_count().expect("count"), 50);
    assert_eq!(
        reader
            .device_counters("entrance")
            .expect("counters")
            .presses,
        50
    );
    let stored: Vec<String> = reader
        .connection()
        .prepare("SELECT id FROM events ORDER BY seqno")
        .expect("prepare")
        .query_map([], |row| row.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(stored, ids);
}

#[tokio::test]
async fn recent_presses_cover_the_window_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (handle, thread) = writer::spawn(
        Store::open_writer(dir.path()).expect("open"),
        WriterOptions::default(),
    )
    .expect("writer");
    handle.press(press(1, 10, 900), None).await.expect("queued");
    handle.press(press(1, 11, 300), None).await.expect("queued");
    handle.press(press(2, 12, 5), None).await.expect("queued");
    handle.flush().await.expect("flushed");
    drop(handle);
    thread.join().expect("writer thread");

    let reader = Store::open_reader(dir.path()).expect("reader");
    let recent = reader
        .recent_presses("entrance", Utc::now() - ChronoDuration::seconds(600))
        .expect("recent");
    let pairs: Vec<(UnitId, u16)> = recent.iter().map(|press| (press.unit, press.seq)).collect();
    assert_eq!(pairs, vec![(UnitId(1), 11), (UnitId(2), 12)]);
    assert!(reader
        .recent_presses("other", Utc::now() - ChronoDuration::seconds(600))
        .expect("recent")
        .is_empty());
}

#[tokio::test]
async fn a_reader_reads_while_the_writer_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (handle, thread) = writer::spawn(
        Store::open_writer(dir.path()).expect("open"),
        WriterOptions::default(),
    )
    .expect("writer");
    let reader = Store::open_reader(dir.path()).expect("reader");
    let mut last = 0;
    for round in 0..20u16 {
        for seq in 0..100u16 {
            handle
                .press(press(3, round * 100 + seq, 0), None)
                .await
                .expect("queued");
        }
        let now = reader.event_count().expect("read during writes");
        assert!(now >= last, "counts never go back");
        last = now;
    }
    handle.flush().await.expect("flushed");
    assert_eq!(reader.event_count().expect("count"), 2_000);
    drop(handle);
    thread.join().expect("writer thread");
}

#[tokio::test]
async fn a_clock_jump_is_recorded_for_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (handle, thread) = writer::spawn(
        Store::open_writer(dir.path()).expect("open"),
        WriterOptions::default(),
    )
    .expect("writer");
    handle.daemon_started().await.expect("started");
    handle.daemon_clock_jump(-3_600).await.expect("queued");
    handle.flush().await.expect("flushed");
    drop(handle);
    thread.join().expect("writer thread");
    let reader = Store::open_reader(dir.path()).expect("reader");
    let (at, seconds): (Option<String>, Option<i64>) = reader
        .connection()
        .query_row(
            "SELECT clock_jump_at, clock_jump_s FROM daemon",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .expect("daemon row");
    assert!(at.is_some());
    assert_eq!(seconds, Some(-3_600));
}

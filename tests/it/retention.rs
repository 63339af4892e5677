//! Housekeeping on a real store: only events every sink has delivered go,
//! by age (retention) or oldest first (size cap); undelivered events are
//! never deleted, and an over-full store is flagged, not emptied.

use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};
use rusqlite::Connection;

use epm_agent::config::StoreSettings;
use epm_agent::event::NewPress;
use epm_agent::protocol::UnitId;
use epm_agent::store::blocking::AsyncReader;
use epm_agent::store::retention::{self, Round};
use epm_agent::store::{writer, SinkUpdate, Store, StoreHandle, WriterOptions};

fn press(seq: u16, age_days: i64) -> NewPress {
    NewPress {
        ts: Utc::now() - ChronoDuration::days(age_days),
        tz_offset_min: 0,
        device: "entrance".into(),
        model: "prolan-501",
        unit: UnitId(7),
        key: 1,
        answer: Some("yes".into()),
        question: Some("a question long enough to make rows take some room in the file".into()),
        seq,
        rssi: None,
        battery: None,
        suppressed: false,
    }
}

async fn deliver(handle: &StoreHandle, sink: &str, through_seqno: i64) {
    handle
        .update_sink(SinkUpdate::Delivered {
            sink: sink.into(),
            through_seqno,
            count: 0,
        })
        .await
        .expect("cursor moved");
}

fn seqnos(dir: &std::path::Path) -> Vec<i64> {
    let connection = Connection::open(dir.join("epm-agent.db")).expect("open");
    let mut statement = connection
        .prepare("SELECT seqno FROM events ORDER BY seqno")
        .expect("prepare");
    let rows = statement.query_map([], |row| row.get(0)).expect("query");
    rows.collect::<Result<_, _>>().expect("rows")
}

fn state(dir: &std::path::Path) -> (i64, i64, bool) {
    let connection = Connection::open(dir.join("epm-agent.db")).expect("open");
    connection
        .query_row(
            "SELECT pruned_retention, pruned_size, over_cap_since IS NOT NULL FROM store_state",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .expect("store_state")
}

#[tokio::test]
async fn retention_deletes_only_old_events_every_sink_delivered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (handle, thread) = writer::spawn(
        Store::open_writer(dir.path()).expect("open"),
        WriterOptions::default(),
    )
    .expect("writer");
    // seqno 1-4: 100 days old; 5-6: 1 day old.
    for (seq, age) in [(1, 100), (2, 100), (3, 100), (4, 100), (5, 1), (6, 1)] {
        handle.press(press(seq, age), None).await.expect("queued");
    }
    deliver(&handle, "fast", 6).await;
    deliver(&handle, "slow", 2).await;
    let settings = StoreSettings {
        retention: Duration::from_secs(90 * 86_400),
        max_size_bytes: 1 << 30,
    };
    let sinks = vec!["fast".to_string(), "slow".to_string()];
    let mut reader = AsyncReader::open(dir.path().to_path_buf())
        .await
        .expect("reader");
    let round = retention::run_once(&settings, &sinks, &mut reader, &handle)
        .await
        .expect("round");
    assert_eq!(
        round,
        Round {
            by_retention: 2,
            by_size: 0,
            over_cap: false
        }
    );
    assert_eq!(
        seqnos(dir.path()),
        vec![3, 4, 5, 6],
        "3 and 4 wait for the slow sink"
    );

    deliver(&handle, "slow", 6).await;
    let round = retention::run_once(&settings, &sinks, &mut reader, &handle)
        .await
        .expect("round");
    assert_eq!(round.by_retention, 2);
    assert_eq!(seqnos(dir.path()), vec![5, 6], "young events stay");
    assert_eq!(state(dir.path()), (4, 0, false));

    // A new event after everything was deleted still gets a higher seqno,
    // so no cursor skips it.
    handle.press(press(7, 0), None).await.expect("queued");
    handle.flush().await.expect("flushed");
    assert_eq!(seqnos(dir.path()).last(), Some(&7));
    drop(handle);
    thread.join().expect("writer");
}

#[tokio::test]
async fn the_size_cap_deletes_delivered_events_first_and_never_undelivered_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (handle, thread) = writer::spawn(
        Store::open_writer(dir.path()).expect("open"),
        WriterOptions::default(),
    )
    .expect("writer");
    for seq in 0..20_000u16 {
        handle.press(press(seq, 0), None).await.expect("queued");
    }
    handle.flush().await.expect("flushed");
    let full = Store::open_reader(dir.path())
        .and_then(|reader| reader.used_bytes())
        .expect("size");
    let mut reader = AsyncReader::open(dir.path().to_path_buf())
        .await
        .expect("reader");
    // Half of the events are delivered; the cap is a little over half the store.
    deliver(&handle, "only", 10_000).await;
    let settings = StoreSettings {
        retention: Duration::from_secs(90 * 86_400),
        max_size_bytes: full * 6 / 10,
    };
    let sinks = vec!["only".to_string()];
    let round = retention::run_once(&settings, &sinks, &mut reader, &handle)
        .await
        .expect("round");
    assert!(round.by_size > 0 && round.by_size <= 10_000, "{round:?}");
    assert!(!round.over_cap, "{round:?}");
    let left = seqnos(dir.path());
    assert_eq!(left.last(), Some(&20_000));
    assert!(
        left.iter().filter(|&&seqno| seqno > 10_000).count() == 10_000,
        "every undelivered event stays"
    );
    assert!(left[0] > 1, "the oldest delivered went first");

    // Now a cap below what the undelivered events need: nothing undelivered goes, the store is flagged.
    let tight = StoreSettings {
        retention: settings.retention,
        max_size_bytes: full / 10,
    };
    let round = retention::run_once(&tight, &sinks, &mut reader, &handle)
        .await
        .expect("round");
    assert!(round.over_cap);
    assert_eq!(
        seqnos(dir.path()).len(),
        10_000,
        "only the undelivered remain"
    );
    let (_, pruned_size, over_cap) = state(dir.path());
    assert_eq!(
        (pruned_size, over_cap),
        (10_000, true),
        "every deletion is counted"
    );
    drop(handle);
    thread.join().expect("writer");
}

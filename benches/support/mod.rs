//! What the benchmarks share: realistic presses and a seeded store.

use std::path::Path;

use chrono::Utc;

use epm_agent::event::NewPress;
use epm_agent::protocol::UnitId;
use epm_agent::store::{writer, Store, WriterOptions};

/// The `index`-th press of a busy ProLAN-501 with 16 remotes.
pub fn press(index: usize) -> NewPress {
    NewPress {
        ts: Utc::now(),
        tz_offset_min: 180,
        device: "entrance".into(),
        model: "prolan-501",
        unit: UnitId(0x301A_0000 + (index % 16) as u32),
        key: (index % 3) as u8 + 1,
        answer: Some(["yes", "neutral", "no"][index % 3].into()),
        question: Some("recommend".into()),
        seq: (index % 65_536) as u16,
        rssi: Some(-61),
        battery: Some(87),
        suppressed: false,
    }
}

/// Fills a new store in `data_dir` with `events` presses through the writer.
#[allow(dead_code)] // not every bench seeds
pub async fn seed(data_dir: &Path, events: usize) {
    let (handle, thread) = writer::spawn(
        Store::open_writer(data_dir).expect("open store"),
        WriterOptions::default(),
    )
    .expect("writer");
    for index in 0..events {
        handle
            .press(press(index), None)
            .await
            .expect("writer alive");
    }
    handle.flush().await.expect("flushed");
    drop(handle);
    tokio::task::spawn_blocking(move || thread.join().expect("writer thread"))
        .await
        .expect("join");
}

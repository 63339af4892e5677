//! Store ingest benchmark: the real writer thread on a real SQLite file in
//! WAL mode with `synchronous = FULL`, fed through `StoreHandle` as drivers
//! feed it.
//!
//! - burst: presses queued as fast as possible, until all are committed →
//!   presses/s (target ≥ 20,000).
//! - lone press: one press at a time, each waited for until committed →
//!   commit latency p50 / p99 / max (target p99 ≤ 10 ms).
//!
//! Run: `cargo bench --bench ingest`. Prints a Markdown table.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use epm_agent::store::{writer, Store, StoreHandle, WriterOptions};
use support::press;

mod support;

const BURST_PRESSES: usize = 200_000;
const BURST_ROUNDS: usize = 3;
const LONE_PRESSES: usize = 2_000;

async fn burst(handle: &StoreHandle) -> f64 {
    let started = Instant::now();
    for index in 0..BURST_PRESSES {
        handle
            .press(press(index), None)
            .await
            .expect("writer alive");
    }
    handle.flush().await.expect("writer alive");
    BURST_PRESSES as f64 / started.elapsed().as_secs_f64()
}

async fn lone_presses(handle: &StoreHandle) -> Vec<Duration> {
    let (reply, mut committed) = mpsc::unbounded_channel();
    let mut latencies = Vec::with_capacity(LONE_PRESSES);
    for index in 0..LONE_PRESSES {
        let started = Instant::now();
        handle
            .press(press(index), Some(reply.clone()))
            .await
            .expect("writer alive");
        committed.recv().await.expect("commit reply");
        latencies.push(started.elapsed());
        // Presses from customers are seconds apart; leave the writer idle.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    latencies.sort();
    latencies
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // On the same filesystem as the project (not tmpfs), so fsync is real.
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let store = Store::open_writer(dir.path()).expect("open store");
    let (handle, thread) = writer::spawn(store, WriterOptions::default()).expect("writer");

    let (rates, latencies) = runtime.block_on(async {
        let mut rates = Vec::new();
        for _ in 0..BURST_ROUNDS {
            rates.push(burst(&handle).await);
        }
        (rates, lone_presses(&handle).await)
    });
    drop(handle);
    thread.join().expect("writer thread");

    let mut sorted_rates = rates.clone();
    sorted_rates.sort_by(f64::total_cmp);
    println!("| measurement | result | target |");
    println!("|---|---|---|");
    println!(
        "| burst ingest, {BURST_PRESSES} presses x {BURST_ROUNDS} rounds (median; all rounds) | {:.0} presses/s ({}) | >= 20,000 presses/s |",
        sorted_rates[BURST_ROUNDS / 2],
        rates.iter().map(|rate| format!("{rate:.0}")).collect::<Vec<_>>().join(", ")
    );
    println!(
        "| lone press commit latency, {LONE_PRESSES} presses | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms | p99 <= 10 ms |",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3
    );
}

//! Drain benchmark: a backlog of 1,000,000 stored presses uploaded by the
//! real `epm-agent run` (release build, a separate process) to a reporting
//! backend on 127.0.0.1 served by this bench, once as plain `json` and once
//! gzip-compressed. Measures presses/s (agent start → the backend holds
//! every id, each exactly once) and the agent's peak RSS (`VmHWM`).
//!
//! Run: `cargo bench --bench drain` (env `DRAIN_EVENTS`, `DRAIN_BATCH` to
//! change the backlog and the batch size). Prints a Markdown table.

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;

mod support;

#[derive(Deserialize)]
struct Batch {
    events: Vec<EventId>,
}

#[derive(Deserialize)]
struct EventId {
    id: String,
}

#[derive(Default)]
struct Received {
    ids: HashSet<String>,
    copies: u64,
    requests: u64,
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

async fn serve(received: Arc<Mutex<Received>>) -> SocketAddr {
    let app = Router::new().route(
        "/batches",
        post(move |headers: HeaderMap, body: Bytes| {
            let received = received.clone();
            async move {
                let plain = if headers
                    .get("content-encoding")
                    .is_some_and(|value| value == "gzip")
                {
                    let mut plain = Vec::with_capacity(body.len() * 5);
                    if flate2::read::GzDecoder::new(&body[..])
                        .read_to_end(&mut plain)
                        .is_err()
                    {
                        return StatusCode::BAD_REQUEST;
                    }
                    plain
                } else {
                    body.to_vec()
                };
                let Ok(batch) = serde_json::from_slice::<Batch>(&plain) else {
                    return StatusCode::UNPROCESSABLE_ENTITY;
                };
                let mut received = received.lock().expect("lock");
                received.requests += 1;
                for event in batch.events {
                    received.copies += 1;
                    received.ids.insert(event.id);
                }
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    address
}

/// Peak resident set of a running process, in kB (Linux).
fn peak_rss_kb(child: &Child) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let events = env_number("DRAIN_EVENTS", 1_000_000);
    let batch = env_number("DRAIN_BATCH", 1_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!(
        "| format | presses | batch_size | drain time | presses/s | agent peak RSS | requests |"
    );
    println!("|---|---|---|---|---|---|---|");
    for gzip in [false, true] {
        let dir = tempfile::tempdir_in(&base).expect("temp dir");
        let data_dir = dir.path().join("data");
        runtime.block_on(support::seed(&data_dir, events));
        let received = Arc::new(Mutex::new(Received::default()));
        let address = runtime.block_on(serve(received.clone()));
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\nid = \"bench\"\ndata_dir = \"{}\"\n\n[[sink]]\nname = \"loopback\"\nkind = \"http\"\n\
                 url = \"http://{address}/batches\"\nbatch_size = {batch}\nflush_interval_ms = 100\ngzip = {gzip}\n\n\
                 [log]\nlevel = \"warn\"\n",
                data_dir.display()
            ),
        )
        .expect("config");

        let started = Instant::now();
        let mut agent = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start agent");
        let mut peak_kb = 0;
        let deadline = started + Duration::from_secs(600);
        loop {
            peak_kb = peak_kb.max(peak_rss_kb(&agent).unwrap_or(0));
            if received.lock().expect("lock").ids.len() >= events {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "backlog not drained in 10 minutes"
            );
            assert!(
                agent.try_wait().expect("agent state").is_none(),
                "the agent exited early"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let elapsed = started.elapsed();
        peak_kb = peak_kb.max(peak_rss_kb(&agent).unwrap_or(0));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = agent.wait();
        let received = received.lock().expect("lock");
        assert_eq!(received.ids.len(), events, "every press exactly once by id");
        println!(
            "| json{} | {events} | {batch} | {:.2} s | {:.0} | {:.1} MB | {} ({} event copies) |",
            if gzip { " + gzip" } else { "" },
            elapsed.as_secs_f64(),
            events as f64 / elapsed.as_secs_f64(),
            peak_kb as f64 / 1024.0,
            received.requests,
            received.copies,
        );
    }
}

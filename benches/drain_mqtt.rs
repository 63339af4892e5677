//! Drain benchmark into MQTT: a backlog of 1,000,000 stored presses
//! published by the real `epm-agent run` (release build, a separate
//! process) to a real Mosquitto 2 on 127.0.0.1 (the test harness's broker,
//! `tests/servers`), read by a QoS 1 consumer in this bench (rumqttc) that
//! parses every message and keeps every press id. Measures presses/s
//! (agent start → the consumer holds every id) and the agent's peak RSS
//! (`VmHWM`), for a few batch sizes.
//!
//! Run: `cargo bench --bench drain_mqtt` (env `DRAIN_EVENTS` for the
//! backlog, `DRAIN_BATCHES=400,500` for the batch sizes). Needs
//! `scripts/test-servers.sh`. Prints a Markdown table.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;
use tokio::sync::oneshot;

#[path = "../tests/servers/mod.rs"]
mod servers;
mod support;

use servers::{Mosquitto, MosquittoOptions};

const TOPIC: &str = "epm/bench/events";

#[derive(Deserialize)]
struct Batch {
    events: Vec<EventId>,
}

#[derive(Deserialize)]
struct EventId {
    id: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Default)]
struct Received {
    ids: HashSet<String>,
    copies: u64,
    messages: u64,
    largest_message: usize,
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn batch_sizes() -> Vec<usize> {
    std::env::var("DRAIN_BATCHES")
        .ok()
        .map(|list| {
            list.split(',')
                .filter_map(|size| size.trim().parse().ok())
                .collect()
        })
        .unwrap_or_else(|| vec![500, 400, 2000])
}

/// A QoS 1 consumer: subscribes, says when the broker acknowledged the
/// subscription, then keeps every press id of every message.
async fn consume(
    port: u16,
    client_id: String,
    received: Arc<Mutex<Received>>,
    subscribed: oneshot::Sender<()>,
) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_max_packet_size(1 << 22, 1 << 22);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut event_loop) = AsyncClient::new(options, 10);
    client
        .subscribe(TOPIC, QoS::AtLeastOnce)
        .await
        .expect("queue the subscription");
    let mut subscribed = Some(subscribed);
    loop {
        match event_loop.poll().await {
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if let Some(subscribed) = subscribed.take() {
                    let _ = subscribed.send(());
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let batch: Batch =
                    serde_json::from_slice(&publish.payload).expect("a batch document");
                let mut received = received.lock().expect("lock");
                received.messages += 1;
                received.largest_message = received.largest_message.max(publish.payload.len());
                for event in batch.events {
                    if event.kind == "press" {
                        received.copies += 1;
                        received.ids.insert(event.id);
                    }
                }
            }
            Ok(_) => {}
            Err(error) => panic!("the consumer lost the broker: {error}"),
        }
    }
}

/// Peak resident set of a running process, in kB (Linux).
fn peak_rss_kb(child: &Child) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let events = env_number("DRAIN_EVENTS", 1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    // The consumer must never lose a message while it falls behind (by
    // default Mosquitto queues at most 1000 per client, then drops).
    let mut extra_config = vec!["max_queued_messages 0".to_string()];
    if std::env::var_os("DRAIN_BROKER_NODELAY").is_some() {
        extra_config.push("set_tcp_nodelay true".into());
    }
    let broker = Mosquitto::start(MosquittoOptions {
        extra_config,
        ..MosquittoOptions::default()
    });
    println!(
        "| batch_size | presses | drain time | presses/s | agent peak RSS | messages (largest) |"
    );
    println!("|---|---|---|---|---|---|");
    for (round, batch) in batch_sizes().into_iter().enumerate() {
        let dir = tempfile::tempdir_in(&base).expect("temp dir");
        let data_dir = dir.path().join("data");
        runtime.block_on(support::seed(&data_dir, events));
        let received = Arc::new(Mutex::new(Received::default()));
        let (subscribed, ready) = oneshot::channel();
        let consumer = runtime.spawn(consume(
            broker.port(),
            format!("bench-consumer-{round}"),
            received.clone(),
            subscribed,
        ));
        runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), ready).await })
            .expect("subscribed within 10 s")
            .expect("the consumer runs");
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\nid = \"bench\"\ndata_dir = \"{}\"\n\n[[sink]]\nname = \"broker\"\nkind = \"mqtt\"\n\
                 url = \"{}\"\nclient_id = \"bench-agent-{round}\"\nbatch_size = {batch}\nflush_interval_ms = 100\n\n\
                 [log]\nlevel = \"warn\"\n",
                data_dir.display(),
                broker.url(),
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
        consumer.abort();
        let received = received.lock().expect("lock");
        assert_eq!(received.ids.len(), events, "every press exactly once by id");
        println!(
            "| {batch} | {events} | {:.2} s | {:.0} | {:.1} MB | {} ({:.1} KiB), {} press copies |",
            elapsed.as_secs_f64(),
            events as f64 / elapsed.as_secs_f64(),
            peak_kb as f64 / 1024.0,
            received.messages,
            received.largest_message as f64 / 1024.0,
            received.copies,
        );
    }
}

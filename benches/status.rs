//! `status` benchmark: `epm-agent status --json` (release build, a fresh
//! process each time, as a monitoring system runs it) on a store holding
//! 1,000,000 events while the daemon is writing to it (a simulator pressing
//! 1,000 times a second, and a sink whose backend is down, so there is a
//! backlog to count). Target: under 200 ms.
//!
//! Run: `cargo bench --bench status` (env `STATUS_EVENTS`, `STATUS_RUNS`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let events = env_number("STATUS_EVENTS", 1_000_000);
    let runs = env_number("STATUS_RUNS", 50);
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let data_dir = dir.path().join("data");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(support::seed(&data_dir, events));

    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nid = \"bench\"\ndata_dir = \"{}\"\n\n\
             [[device]]\nname = \"sim\"\nmodel = \"simulator\"\nsim_remotes = 20\nsim_presses_per_min = 60000\n\
             keymap = {{ 1 = \"yes\", 2 = \"neutral\", 3 = \"no\" }}\n\n\
             [[sink]]\nname = \"down\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/batches\"\nmax_backoff_s = 2\n\n\
             [log]\nlevel = \"error\"\n",
            data_dir.display()
        ),
    )
    .expect("config");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .expect("start agent");

    let status = || {
        let started = Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
            .args(["status", "--json", "--config"])
            .arg(&config)
            .output()
            .expect("run status");
        let elapsed = started.elapsed();
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("status JSON");
        (elapsed, json)
    };
    // Wait until the daemon runs and writes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first_count = loop {
        let (_, json) = status();
        if json["daemon"]["running"] == true
            && json["devices"][0]["presses"].as_u64().unwrap_or(0) > 0
        {
            break json["store"]["events"].as_u64().unwrap_or(0);
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not start writing"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut times = Vec::with_capacity(runs);
    let mut last_count = first_count;
    for _ in 0..runs {
        let (elapsed, json) = status();
        last_count = json["store"]["events"].as_u64().unwrap_or(0);
        times.push(elapsed);
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = agent.wait();
    times.sort();
    let millis = |duration: Duration| duration.as_secs_f64() * 1e3;
    println!("| measurement | result | target |");
    println!("|---|---|---|");
    println!(
        "| `status --json`, {runs} runs, {first_count}→{last_count} events while the daemon writes | p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms | < 200 ms |",
        millis(times[runs / 2]),
        millis(times[runs * 95 / 100]),
        millis(times[runs - 1]),
    );
}

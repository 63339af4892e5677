//! Drain benchmark into PostgreSQL: a backlog of 1,000,000 stored presses
//! delivered by the real `epm-agent run` (release build, a separate process)
//! to a real local PostgreSQL cluster, started as the integration tests
//! start it (`tests/servers/mod.rs`: its own `initdb`, 127.0.0.1, password
//! login, `fsync` on). Measures presses/s (agent start → the sink's cursor
//! past the last press, then checked by counting distinct ids in the table),
//! the agent's peak RSS (`VmHWM`), and the CPU time per press of the agent
//! and of the whole cluster (from `/proc`: less disturbed than the wall
//! clock by whatever else runs on the machine).
//!
//! Run: `cargo bench --bench drain_postgres` (env `DRAIN_EVENTS` for the
//! backlog, `DRAIN_BATCHES=500,2000` for the batch sizes to try,
//! `DRAIN_SHARED_BUFFERS=128MB` for a server-sized buffer pool instead of
//! the harness's 16 MB). Needs `scripts/test-servers.sh`. Prints a Markdown
//! table (`docs/performance.md`, "Draining into PostgreSQL").

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

#[path = "../tests/servers/mod.rs"]
mod servers;
mod support;

use servers::Postgres;

const USER: &str = "bench";
const PASSWORD: &str = "bench-pass";
const TABLE: &str = "epm_events";

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
        .filter(|sizes: &Vec<usize>| !sizes.is_empty())
        .unwrap_or_else(|| vec![500, 2_000, 10_000])
}

/// Peak resident set of a running process, in kB (Linux).
fn peak_rss_kb(child: &Child) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) of a process from `/proc/<pid>/stat`, in clock
/// ticks, with `children` adding what its reaped children used.
fn cpu_ticks(pid: u32, children: bool) -> Option<(u64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command, which may hold spaces, in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let number = |index: usize| fields.get(index)?.parse::<u64>().ok();
    let parent = fields.get(1)?.parse().ok()?;
    let mut ticks = number(11)? + number(12)?;
    if children {
        ticks += number(13)? + number(14)?;
    }
    Some((ticks, parent))
}

/// CPU ticks used by the whole cluster so far: the postmaster, its live
/// processes (backends, WAL writer, checkpointer...) and the ones that
/// ended (counted in the postmaster's children time once reaped).
fn cluster_cpu_ticks(postgres: &Postgres) -> u64 {
    let pid_file = std::fs::read_to_string(postgres.data_dir().join("postmaster.pid"))
        .expect("read postmaster.pid");
    let postmaster: u32 = pid_file
        .lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .expect("a pid in postmaster.pid");
    let mut ticks = cpu_ticks(postmaster, true).map_or(0, |(ticks, _)| ticks);
    for entry in std::fs::read_dir("/proc").expect("list /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        if let Some((own, parent)) = cpu_ticks(pid, false) {
            if parent == postmaster {
                ticks += own;
            }
        }
    }
    ticks
}

/// Clock ticks per second (`getconf CLK_TCK`).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Where the sink's cursor stands (0 before its first delivery).
fn delivered_seqno(data_dir: &Path) -> i64 {
    let Ok(connection) = Connection::open_with_flags(
        data_dir.join("epm-agent.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) else {
        return 0;
    };
    connection
        .query_row(
            "SELECT delivered_seqno FROM sinks WHERE name = 'pg'",
            [],
            |row| row.get(0),
        )
        .optional()
        .ok()
        .flatten()
        .unwrap_or(0)
}

fn copy_store(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the data dir");
    for file in ["epm-agent.db", "epm-agent.db-wal", "epm-agent.db-shm"] {
        if from.join(file).exists() {
            std::fs::copy(from.join(file), to.join(file)).expect("copy the seeded store");
        }
    }
}

fn main() {
    let events = env_number("DRAIN_EVENTS", 1_000_000);
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let seeded = tempfile::tempdir_in(&base).expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(support::seed(seeded.path(), events));
    let last_seqno = events as i64;

    let mut postgres = Postgres::start();
    if let Ok(size) = std::env::var("DRAIN_SHARED_BUFFERS") {
        // The harness's small test value (16MB) or a server's (PostgreSQL's
        // default is 128MB): takes a restart.
        postgres.execute(
            "postgres",
            &format!("ALTER SYSTEM SET shared_buffers = '{size}';"),
        );
        postgres.restart();
    }
    postgres.create_user(USER, PASSWORD);
    println!(
        "| presses | batch_size | drain time | presses/s | agent peak RSS | agent CPU per press | server CPU per press | table size | load before |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for batch in batch_sizes() {
        let database = format!("drain_{batch}");
        postgres.create_database(&database, USER);
        let dir = tempfile::tempdir_in(&base).expect("temp dir");
        let data_dir = dir.path().join("data");
        copy_store(seeded.path(), &data_dir);
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\nid = \"bench\"\ndata_dir = \"{}\"\n\n[[sink]]\nname = \"pg\"\nkind = \"postgres\"\n\
                 url = \"{}\"\npassword = \"{PASSWORD}\"\nbatch_size = {batch}\nflush_interval_ms = 100\n\n\
                 [log]\nlevel = \"warn\"\n",
                data_dir.display(),
                postgres.url(USER, &database),
            ),
        )
        .expect("config");
        // It holds the password: owner-only, as the agent asks.
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod 600 the config");

        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load = load.split_whitespace().next().unwrap_or("?").to_string();
        let server_before = cluster_cpu_ticks(&postgres);
        let started = Instant::now();
        let mut agent = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start agent");
        let mut peak_kb = 0;
        let deadline = started + Duration::from_secs(900);
        loop {
            peak_kb = peak_kb.max(peak_rss_kb(&agent).unwrap_or(0));
            if delivered_seqno(&data_dir) >= last_seqno {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "backlog not drained in 15 minutes"
            );
            assert!(
                agent.try_wait().expect("agent state").is_none(),
                "the agent exited early"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let elapsed = started.elapsed();
        peak_kb = peak_kb.max(peak_rss_kb(&agent).unwrap_or(0));
        let agent_ticks = cpu_ticks(agent.id(), false).map_or(0, |(ticks, _)| ticks);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = agent.wait();
        // The backend exits with the agent's connection; give the
        // postmaster a moment to reap it (its time moves to cutime).
        std::thread::sleep(Duration::from_millis(500));
        let server_ticks = cluster_cpu_ticks(&postgres).saturating_sub(server_before);
        let per_press_us = |ticks: u64| ticks as f64 / ticks_per_second() * 1e6 / events as f64;
        let counted = postgres.query(
            &database,
            &format!(
                "SELECT count(*), count(DISTINCT id), pg_size_pretty(pg_total_relation_size('{TABLE}')) \
                 FROM {TABLE} WHERE type = 'press'"
            ),
        );
        let value = |column: usize| counted[0][column].clone().unwrap_or_default();
        assert_eq!(value(0), events.to_string(), "every press in the table");
        assert_eq!(value(1), events.to_string(), "every press once by id");
        println!(
            "| {events} | {batch} | {:.2} s | {:.0} | {:.1} MB | {:.1} µs | {:.1} µs | {} | {load} |",
            elapsed.as_secs_f64(),
            events as f64 / elapsed.as_secs_f64(),
            peak_kb as f64 / 1024.0,
            per_press_us(agent_ticks),
            per_press_us(server_ticks),
            value(2),
        );
        postgres.execute("postgres", &format!("DROP DATABASE {database};"));
    }
}

//! Footprint benchmark (issue 12): how much memory the agent holds when a
//! shop is quiet, how fast it takes a burst off a port and delivers it, and
//! how soon it delivers a backlog once a backend comes back. Each workload
//! runs the real release `epm-agent run` (a separate process, its own fresh
//! data_dir) with two devices on raw pseudo-terminals — a ProLAN-202 keypad
//! and a ProLAN-501 receiver — and one HTTP sink to the test backend on
//! 127.0.0.1 (`tests/backend`, which checks every request against the
//! contract). Configuration defaults throughout (sink batch_size 500,
//! flush_interval_ms 1000), except `min_interval_s = 0` on each device.
//!
//! - **idle**: 100 presses (50 per device), and once the backend holds all
//!   of them, 10 s of quiet; then `/proc/PID/status` and
//!   `/proc/PID/smaps_rollup`.
//! - **burst**: 100,000 `K` lines written into the keypad's terminal as fast
//!   as it takes them, by a device thread that also reads (and counts) the
//!   agent's ACKs so the agent's writes never block. Timed from the first
//!   byte written until the backend holds all 100,000 presses, and until the
//!   last byte was in the terminal; RSS sampled every 10 ms meanwhile.
//! - **recovery**: the backend answers `503` with `Retry-After: 1` for 10 s
//!   while 1,000 presses arrive (one every 10 ms, both devices), then takes
//!   everything: timed from its return until it holds all 1,000.
//!
//! The backend counts presses as it takes them (its plan sees every request
//! before it is answered), so the delivery times need no polling.
//!
//! Run: `cargo bench --bench footprint` (`WORKLOADS=idle,burst,recovery`
//! picks workloads; `AGENT_BINARY=path` measures that binary instead of
//! the release build's `target/release/epm-agent`). Prints a Markdown
//! table against the targets, then the raw measurements. See
//! `docs/performance.md`.

// The delivery tests use parts of these modules that this bench does not.
#[allow(dead_code)]
#[path = "../tests/backend/mod.rs"]
mod backend;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use epm_agent::protocol::{prolan202, Identity, Inbound, Outbound, UnitId};
use nix::libc;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tempfile::TempDir;

use backend::{event_id, is_press, is_status, Answer, Backend, Expect, Format, Incoming};
use support::{
    keypad_press, radio_press, replace_symlink, EmulatorOptions, Pty, TestDir, KEYPAD_SERIAL,
    START_TIMEOUT,
};

const KEYPAD_NAME: &str = "cashdesk";
const RECEIVER_NAME: &str = "entrance";
/// Remotes the receiver hears in the idle and recovery workloads.
const REMOTES: [UnitId; 4] = [
    UnitId(0x301A_0001),
    UnitId(0x301A_0002),
    UnitId(0x301A_0003),
    UnitId(0x301A_0004),
];

const IDLE_PRESSES: usize = 100;
/// How long the agent sits idle before its memory is read.
const IDLE_QUIET: Duration = Duration::from_secs(10);

const BURST_PRESSES: usize = 100_000;
/// A keypad's seq is 16 bits and the same (serial, seq) within 10 minutes
/// is a duplicate (`docs/protocol.md`), so the burst is numbered under two
/// serials, 50,000 presses each (seq 1 to 50,000): every press is distinct.
const BURST_SERIALS: [UnitId; 2] = [KEYPAD_SERIAL, UnitId(0x202A_0F32)];
const RSS_EVERY: Duration = Duration::from_millis(10);
/// The burst's RSS series is printed as the peak of each such slice.
const RSS_SLICE: Duration = Duration::from_millis(100);

const RECOVERY_PRESSES: usize = 1_000;
const OUTAGE: Duration = Duration::from_secs(10);
const RETRY_AFTER_S: u64 = 1;

/// How long after a burst its memory is read again: longer than the
/// agent's heartbeat, which hands freed memory back to the system.
const SETTLE: Duration = Duration::from_secs(7);

/// How long the backend may take to hold every press of a workload.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// No request for this long (after the start's status event) means the
/// agent's start-up deliveries are over.
const QUIET_BEFORE_START: Duration = Duration::from_millis(2500);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_EVERY: Duration = Duration::from_millis(5);

/// Reference figures, measured by the team elsewhere, and the targets.
const FLUENT_BIT: &str = "Fluent Bit 5.1";
const BEFORE: &str = "epm-agent before";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Idle,
    Burst,
    Recovery,
}

/// What the backend took, counted by its plan as it takes it.
#[derive(Default)]
struct Tally {
    presses: HashSet<String>,
    statuses: usize,
    /// When the press count last grew: once it is complete, when the
    /// backend came to hold the last press.
    last_press_at: Option<Instant>,
    /// Every request: when, presses and events in it, whether it was taken.
    requests: Vec<Seen>,
}

#[derive(Clone, Copy)]
struct Seen {
    at: Instant,
    presses: usize,
    events: usize,
    accepted: bool,
}

/// One workload's world: the ports and the agent's stderr (`dir`), the
/// data_dir on the project's filesystem, and the backend with its tally.
struct Setup {
    dir: TestDir,
    data: TempDir,
    backend: Backend,
    tally: Arc<Mutex<Tally>>,
    /// While set, the backend answers 503 with `Retry-After`.
    unavailable: Arc<AtomicBool>,
}

/// A running `epm-agent run`; killed if dropped while running.
struct Agent {
    child: Child,
    stderr: PathBuf,
}

/// The fields of `/proc/PID/status` this bench reads, in kB.
#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    rss_kb: u64,
    anon_kb: u64,
    file_kb: u64,
    shmem_kb: u64,
    peak_kb: u64,
    threads: u64,
}

struct IdleResult {
    memory: Memory,
    smaps_rollup: String,
    /// RSS and anonymous kB per mapped path (`/proc/PID/smaps`), largest first.
    mappings: Vec<(String, u64, u64)>,
    stop: String,
    load: (String, String),
}

#[derive(Clone, Copy)]
struct RssSample {
    at: Instant,
    rss_kb: u64,
    anon_kb: u64,
}

struct BurstResult {
    delivered: Duration,
    written: Duration,
    last_ack: Option<Duration>,
    acks: usize,
    bytes: usize,
    /// Taken from 10 ms before the first byte until the last press arrived.
    samples: Vec<RssSample>,
    first_byte_at: Instant,
    memory_before: Memory,
    memory_after: Memory,
    /// [`SETTLE`] after the last press was delivered.
    memory_settled: Memory,
    agent_cpu_s: f64,
    harness_cpu_s: f64,
    requests: usize,
    problems: usize,
    /// The requests from the first byte on: how many, presses in each.
    burst_requests: Vec<usize>,
    /// The keypad's row after the stop: ACKs dropped, duplicates, bad frames.
    keypad_counters: Option<(u64, u64, u64)>,
    stop: String,
    load: (String, String),
}

struct RecoveryResult {
    delivered: Duration,
    /// Requests while the backend refused, since the outage began.
    refused: Vec<Duration>,
    /// Requests since the return: when, presses, events.
    after_return: Vec<(Duration, usize, usize)>,
    problems: usize,
    stop: String,
    load: (String, String),
}

fn main() {
    let workloads: Vec<Workload> = std::env::var("WORKLOADS")
        .unwrap_or_else(|_| "idle,burst,recovery".into())
        .split(',')
        .filter_map(|name| match name.trim() {
            "idle" => Some(Workload::Idle),
            "burst" => Some(Workload::Burst),
            "recovery" => Some(Workload::Recovery),
            "" => None,
            other => panic!("footprint: unknown workload {other:?} (idle, burst, recovery)"),
        })
        .collect();
    // target/tmp: the data_dirs live on the project's filesystem (/tmp may be
    // a tmpfs, where an fsync costs nothing).
    let base = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    // `AGENT_BINARY` measures another build (a saved baseline, another
    // profile). Every workload runs the same copy, even if target/ is
    // rebuilt meanwhile.
    let source = std::env::var_os("AGENT_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_epm-agent")));
    let binary_dir = tempfile::tempdir_in(&base).expect("a folder for the agent binary");
    let binary = binary_dir.path().join("epm-agent");
    fs::copy(&source, &binary)
        .unwrap_or_else(|error| panic!("footprint: cannot copy {}: {error}", source.display()));
    // Written back before it runs: pages of a fresh copy still dirty in the
    // page cache would show in smaps as the agent's Private_Dirty.
    File::open(&binary)
        .and_then(|file| file.sync_all())
        .expect("sync the agent binary");
    println!(
        "footprint: {} ({} bytes), {} cores, load average {}",
        source.display(),
        fs::metadata(&binary).map_or(0, |metadata| metadata.len()),
        std::thread::available_parallelism().map_or(0, usize::from),
        load_average(),
    );

    let idle = workloads
        .contains(&Workload::Idle)
        .then(|| idle(&binary, &base));
    let burst = workloads
        .contains(&Workload::Burst)
        .then(|| burst(&binary, &base));
    let recovery = workloads
        .contains(&Workload::Recovery)
        .then(|| recovery(&binary, &base));
    report(idle.as_ref(), burst.as_ref(), recovery.as_ref());
}

// ---------------------------------------------------------------------------
// The workloads

fn idle(binary: &Path, base: &Path) -> IdleResult {
    eprintln!("footprint: idle");
    let load_before = load_average();
    let setup = Setup::new(base);
    let keypad = setup.dir.keypad(KEYPAD_NAME, EmulatorOptions::keypad());
    let receiver = setup
        .dir
        .receiver(RECEIVER_NAME, EmulatorOptions::receiver());
    let mut agent = Agent::spawn(binary, &setup);
    keypad.wait_for_query(1, START_TIMEOUT);
    receiver.wait_for_query(1, START_TIMEOUT);
    for index in 0..IDLE_PRESSES / 2 {
        let key = (index % 3) as u8 + 1;
        let seq = index as u16 + 1;
        keypad.press(keypad_press(key, seq));
        receiver.press(radio_press(REMOTES[index % 4], key, seq, -61, Some(87)));
    }
    setup.wait_for_presses(IDLE_PRESSES, &agent);
    std::thread::sleep(IDLE_QUIET);
    let pid = agent.child.id();
    let memory = Memory::of(pid).unwrap_or_else(|| agent.fail("cannot read /proc/PID/status"));
    let smaps_rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_else(|error| format!("(cannot read: {error})"));
    let mappings = mappings(pid);
    let load_after = load_average();
    let stop = agent.stop();
    IdleResult {
        memory,
        smaps_rollup,
        mappings,
        stop,
        load: (load_before, load_after),
    }
}

fn burst(binary: &Path, base: &Path) -> BurstResult {
    eprintln!("footprint: burst");
    let load_before = load_average();
    let setup = Setup::new(base);
    let keypad = BurstKeypad::start(&setup.dir.path().join("ports").join(KEYPAD_NAME));
    let receiver = setup
        .dir
        .receiver(RECEIVER_NAME, EmulatorOptions::receiver());
    let mut agent = Agent::spawn(binary, &setup);
    keypad.wait_for_query(&agent);
    receiver.wait_for_query(1, START_TIMEOUT);
    setup.wait_until_quiet(&agent);

    let mut lines = BytesMut::with_capacity(BURST_PRESSES * 24);
    let per_serial = BURST_PRESSES.div_ceil(BURST_SERIALS.len());
    for index in 0..BURST_PRESSES {
        let press = epm_agent::protocol::Press {
            unit: BURST_SERIALS[index / per_serial],
            seq: (index % per_serial) as u16 + 1,
            ..keypad_press((index % 3) as u8 + 1, 0)
        };
        prolan202::encode_inbound(&Inbound::Press(press), &mut lines);
    }
    let bytes = lines.len();

    let pid = agent.child.id();
    let memory_before = Memory::of(pid).unwrap_or_else(|| agent.fail("cannot read its memory"));
    let agent_cpu_before = cpu_seconds(pid).unwrap_or(f64::NAN);
    let harness_cpu_before = cpu_seconds(std::process::id()).unwrap_or(f64::NAN);
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = sample_rss(pid, Arc::clone(&sampling));
    std::thread::sleep(RSS_EVERY);
    keypad.write(lines.to_vec());
    let delivered_at = setup.wait_for_presses(BURST_PRESSES, &agent);
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.join().expect("the RSS sampler does not panic");
    let agent_cpu_s = cpu_seconds(pid).unwrap_or(f64::NAN) - agent_cpu_before;
    let harness_cpu_s = cpu_seconds(std::process::id()).unwrap_or(f64::NAN) - harness_cpu_before;
    let log = keypad.wait_for_acks(BURST_PRESSES, Duration::from_secs(10));
    let memory_after = Memory::of(pid).unwrap_or_else(|| agent.fail("cannot read its memory"));
    std::thread::sleep(SETTLE);
    let memory_settled = Memory::of(pid).unwrap_or_else(|| agent.fail("cannot read its memory"));
    let (Some(first_byte_at), Some(written_at)) = (log.first_byte_at, log.written_at) else {
        agent.fail("the keypad wrote no burst")
    };
    let load_after = load_average();
    let stop = agent.stop();
    let (requests, problems) = setup.requests_and_problems();
    let burst_requests = lock(&setup.tally)
        .requests
        .iter()
        .filter(|seen| seen.at >= first_byte_at)
        .map(|seen| seen.presses)
        .collect();
    BurstResult {
        delivered: delivered_at - first_byte_at,
        written: written_at - first_byte_at,
        last_ack: log.last_ack_at.map(|at| at - first_byte_at),
        acks: log.acks,
        bytes,
        samples,
        first_byte_at,
        memory_before,
        memory_after,
        memory_settled,
        agent_cpu_s,
        harness_cpu_s,
        requests,
        problems,
        burst_requests,
        keypad_counters: setup.device_counters(KEYPAD_NAME),
        stop,
        load: (load_before, load_after),
    }
}

fn recovery(binary: &Path, base: &Path) -> RecoveryResult {
    eprintln!("footprint: recovery");
    let load_before = load_average();
    let setup = Setup::new(base);
    let keypad = setup.dir.keypad(KEYPAD_NAME, EmulatorOptions::keypad());
    let receiver = setup
        .dir
        .receiver(RECEIVER_NAME, EmulatorOptions::receiver());
    let mut agent = Agent::spawn(binary, &setup);
    keypad.wait_for_query(1, START_TIMEOUT);
    receiver.wait_for_query(1, START_TIMEOUT);
    setup.wait_until_quiet(&agent);

    setup.unavailable.store(true, Ordering::SeqCst);
    let outage_at = Instant::now();
    let every = OUTAGE / RECOVERY_PRESSES as u32;
    for index in 0..RECOVERY_PRESSES {
        sleep_until(outage_at + every * index as u32);
        let key = (index % 3) as u8 + 1;
        let seq = (index / 2) as u16 + 1;
        if index % 2 == 0 {
            keypad.press(keypad_press(key, seq));
        } else {
            receiver.press(radio_press(
                REMOTES[(index / 2) % 4],
                key,
                seq,
                -61,
                Some(87),
            ));
        }
    }
    sleep_until(outage_at + OUTAGE);
    setup.unavailable.store(false, Ordering::SeqCst);
    let return_at = Instant::now();
    let delivered_at = setup.wait_for_presses(RECOVERY_PRESSES, &agent);
    let load_after = load_average();
    let stop = agent.stop();
    let (_, problems) = setup.requests_and_problems();
    let tally = lock(&setup.tally);
    RecoveryResult {
        delivered: delivered_at - return_at,
        refused: tally
            .requests
            .iter()
            .filter(|seen| !seen.accepted && seen.at >= outage_at)
            .map(|seen| seen.at - outage_at)
            .collect(),
        after_return: tally
            .requests
            .iter()
            .filter(|seen| seen.at >= return_at)
            .map(|seen| (seen.at - return_at, seen.presses, seen.events))
            .collect(),
        problems,
        stop,
        load: (load_before, load_after),
    }
}

// ---------------------------------------------------------------------------
// The setup, the backend's tally, the agent

impl Setup {
    fn new(base: &Path) -> Setup {
        let backend = Backend::start(Expect::plain(Format::Json));
        let tally: Arc<Mutex<Tally>> = Arc::default();
        let unavailable = Arc::new(AtomicBool::new(false));
        let plan_tally = Arc::clone(&tally);
        let plan_unavailable = Arc::clone(&unavailable);
        backend.set_plan(move |incoming: &Incoming<'_>| {
            let at = Instant::now();
            let mut tally = lock(&plan_tally);
            let presses = incoming
                .events
                .iter()
                .filter(|event| is_press(event))
                .count();
            let accepted = !plan_unavailable.load(Ordering::SeqCst);
            tally.requests.push(Seen {
                at,
                presses,
                events: incoming.events.len(),
                accepted,
            });
            if !accepted {
                return Answer::RetryAfter {
                    status: 503,
                    seconds: RETRY_AFTER_S,
                };
            }
            for event in incoming.events {
                if is_status(event) {
                    tally.statuses += 1;
                } else if is_press(event) && tally.presses.insert(event_id(event).to_string()) {
                    tally.last_press_at = Some(at);
                }
            }
            Answer::Accept
        });
        Setup {
            dir: TestDir::new(),
            data: tempfile::tempdir_in(base).expect("a data_dir under target/tmp"),
            backend,
            tally,
            unavailable,
        }
    }

    /// The configuration: both devices, one HTTP sink, defaults otherwise.
    fn write_config(&self) -> PathBuf {
        let toml = |text: &str| toml::Value::String(text.to_string()).to_string();
        let ports = self.dir.path().join("ports");
        let device = |name: &str, model: &str| {
            format!(
                "\n[[device]]\nname = {}\nmodel = {}\nport = {}\nquestion = \"recommend\"\n\
                 keymap = {{ 1 = \"yes\", 2 = \"neutral\", 3 = \"no\" }}\nmin_interval_s = 0\n",
                toml(name),
                toml(model),
                toml(&ports.join(name).to_string_lossy()),
            )
        };
        let text = format!(
            "[agent]\nid = {}\nlocation = {}\ndata_dir = {}\n{}{}\n[[sink]]\nname = \"reporter\"\n\
             kind = \"http\"\nurl = {}\n",
            toml(backend::AGENT_ID),
            toml(backend::LOCATION),
            toml(&self.data.path().join("data").to_string_lossy()),
            device(KEYPAD_NAME, "prolan-202"),
            device(RECEIVER_NAME, "prolan-501"),
            toml(&self.backend.url()),
        );
        let path = self.dir.path().join("epm-agent.toml");
        fs::write(&path, text).expect("write the configuration");
        path
    }

    /// Waits until the backend holds `count` presses; returns when it came
    /// to hold the last of them.
    fn wait_for_presses(&self, count: usize, agent: &Agent) -> Instant {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        loop {
            {
                let tally = lock(&self.tally);
                if tally.presses.len() >= count {
                    return tally.last_press_at.expect("a press was counted");
                }
                if Instant::now() >= deadline {
                    let held = tally.presses.len();
                    drop(tally);
                    agent.fail(&format!(
                        "the backend holds {held} of {count} presses after {DELIVERY_TIMEOUT:?}"
                    ));
                }
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// Waits until the start's status event has arrived and no request has
    /// come for [`QUIET_BEFORE_START`].
    fn wait_until_quiet(&self, agent: &Agent) {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        loop {
            {
                let tally = lock(&self.tally);
                let last = tally.requests.last().map(|seen| seen.at);
                if tally.statuses > 0 && last.is_some_and(|at| at.elapsed() >= QUIET_BEFORE_START) {
                    return;
                }
            }
            if Instant::now() >= deadline {
                agent.fail("the start's status event never arrived");
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// The device's ACKs dropped, duplicates and bad frames, as its row in
    /// the store says.
    fn device_counters(&self, name: &str) -> Option<(u64, u64, u64)> {
        let connection = support::open_store(&self.data.path().join("data")).ok()?;
        connection
            .query_row(
                "SELECT acks_dropped, duplicates, bad_frames FROM devices WHERE name = ?1",
                [name],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .ok()
    }

    /// Requests received, and contract problems found in them.
    fn requests_and_problems(&self) -> (usize, usize) {
        let requests = self.backend.requests();
        let problems = requests.iter().map(|request| request.problems.len()).sum();
        (requests.len(), problems)
    }
}

impl Agent {
    fn spawn(binary: &Path, setup: &Setup) -> Agent {
        let config = setup.write_config();
        let stderr = setup.dir.path().join("agent.stderr");
        let child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .env_remove("EPM_AGENT_CONFIG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("create the agent's stderr file"))
            .spawn()
            .expect("start the epm-agent binary");
        Agent { child, stderr }
    }

    /// SIGTERM, and how the agent ended.
    fn stop(&mut self) -> String {
        let pid = Pid::from_raw(self.child.id() as i32);
        if let Err(error) = nix::sys::signal::kill(pid, Signal::SIGTERM) {
            return format!("cannot SIGTERM: {error}");
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL_EVERY),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return format!("killed: no exit within {STOP_TIMEOUT:?} of SIGTERM");
                }
                Err(error) => return format!("cannot wait: {error}"),
            }
        }
    }

    fn fail(&self, what: &str) -> ! {
        let text = fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        panic!("footprint: {what}\n--- the agent's stderr (tail) ---\n{tail}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// The burst's keypad

/// What the burst's keypad has seen and done.
#[derive(Clone, Copy, Default)]
struct KeypadLog {
    queries: usize,
    acks: usize,
    last_ack_at: Option<Instant>,
    first_byte_at: Option<Instant>,
    written_at: Option<Instant>,
    failure: Option<&'static str>,
}

/// A ProLAN-202 on a pseudo-terminal that answers QUERY with its identity,
/// reads and counts ACKs, and writes the burst it is given in as few
/// writes as the terminal allows. Dropping it unplugs it.
struct BurstKeypad {
    burst: Option<mpsc::Sender<Vec<u8>>>,
    log: Arc<Mutex<KeypadLog>>,
    thread: Option<JoinHandle<()>>,
}

/// The device thread's side.
struct KeypadLine {
    pty: Pty,
    inbound: BytesMut,
    log: Arc<Mutex<KeypadLog>>,
}

impl BurstKeypad {
    fn start(port_path: &Path) -> BurstKeypad {
        let pty = Pty::open().expect("open a pseudo-terminal");
        replace_symlink(pty.slave_path(), port_path).expect("link the keypad's port");
        let log: Arc<Mutex<KeypadLog>> = Arc::default();
        let (burst, bursts) = mpsc::channel();
        let mut line = KeypadLine {
            pty,
            inbound: BytesMut::new(),
            log: Arc::clone(&log),
        };
        let thread = std::thread::Builder::new()
            .name("burst-keypad".into())
            .spawn(move || line.run(&bursts))
            .expect("start the keypad thread");
        BurstKeypad {
            burst: Some(burst),
            log,
            thread: Some(thread),
        }
    }

    fn write(&self, bytes: Vec<u8>) {
        let sent = self.burst.as_ref().map(|sender| sender.send(bytes));
        assert!(
            matches!(sent, Some(Ok(()))),
            "the keypad thread has stopped"
        );
    }

    fn wait_for_query(&self, agent: &Agent) {
        self.wait_until(START_TIMEOUT, |log| log.queries > 0)
            .unwrap_or_else(|| agent.fail("the agent never opened the keypad's port"));
    }

    /// The log once `count` ACKs arrived, or as it is after `timeout`.
    fn wait_for_acks(&self, count: usize, timeout: Duration) -> KeypadLog {
        self.wait_until(timeout, |log| log.acks >= count)
            .unwrap_or_else(|| *lock(&self.log))
    }

    fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&KeypadLog) -> bool,
    ) -> Option<KeypadLog> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = *lock(&self.log);
            if let Some(failure) = log.failure {
                panic!("footprint: the burst's keypad failed: {failure}");
            }
            if done(&log) {
                return Some(log);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL_EVERY);
        }
    }
}

impl Drop for BurstKeypad {
    fn drop(&mut self) {
        // Closing the channel stops the thread, which closes the terminal.
        drop(self.burst.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl KeypadLine {
    fn run(&mut self, bursts: &mpsc::Receiver<Vec<u8>>) {
        loop {
            match bursts.try_recv() {
                Ok(bytes) => {
                    if let Err(failure) = self.write_burst(&bytes) {
                        lock(&self.log).failure = Some(failure);
                        return;
                    }
                }
                Err(mpsc::TryRecvError::Disconnected) => return,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            wait_ready(&self.pty, libc::POLLIN, POLL_EVERY);
            if let Err(failure) = self.read_host() {
                lock(&self.log).failure = Some(failure);
                return;
            }
        }
    }

    /// Writes `bytes` as fast as the terminal takes them, reading what the
    /// agent writes whenever the terminal is full or has something to read.
    fn write_burst(&mut self, bytes: &[u8]) -> Result<(), &'static str> {
        let mut rest = bytes;
        lock(&self.log).first_byte_at = Some(Instant::now());
        while !rest.is_empty() {
            match self.pty.master().write(rest) {
                Ok(count) => rest = &rest[count..],
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    wait_ready(&self.pty, libc::POLLIN | libc::POLLOUT, POLL_EVERY);
                }
                Err(_) => return Err("cannot write the master"),
            }
            self.read_host()?;
        }
        lock(&self.log).written_at = Some(Instant::now());
        Ok(())
    }

    /// Reads what the agent wrote: answers QUERY, counts ACKs.
    fn read_host(&mut self) -> Result<(), &'static str> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.pty.master().read(&mut chunk) {
                Ok(0) => break,
                Ok(count) => self.inbound.extend_from_slice(&chunk[..count]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Err("cannot read the master"),
            }
        }
        let mut queries = 0;
        let mut acks = 0;
        while let Some(message) = prolan202::decode_outbound(&mut self.inbound) {
            match message {
                Outbound::Query => queries += 1,
                Outbound::Ack { .. } => acks += 1,
            }
        }
        if queries > 0 {
            let mut identity = BytesMut::new();
            let answer = Inbound::Identity(Identity {
                hardware_id: KEYPAD_SERIAL,
                model: "PL202".into(),
                firmware: "1.4".into(),
                radio_channel: None,
            });
            prolan202::encode_inbound(&answer, &mut identity);
            // Only before the burst: a short line into an empty terminal.
            let mut rest = &identity[..];
            while !rest.is_empty() {
                match self.pty.master().write(rest) {
                    Ok(count) => rest = &rest[count..],
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        wait_ready(&self.pty, libc::POLLOUT, POLL_EVERY);
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Err("cannot write the identity"),
                }
            }
        }
        if queries + acks > 0 {
            let mut log = lock(&self.log);
            log.queries += queries;
            log.acks += acks;
            if acks > 0 {
                log.last_ack_at = Some(Instant::now());
            }
        }
        Ok(())
    }
}

/// Waits (at most `timeout`) until the master is ready for `events`.
fn wait_ready(pty: &Pty, events: libc::c_short, timeout: Duration) {
    let mut descriptor = libc::pollfd {
        fd: pty.master().as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, borrowed for the call; the descriptor stays
    // open while `pty` is borrowed. A failed poll only means a shorter wait.
    unsafe { libc::poll(&mut descriptor, 1, timeout.as_millis() as libc::c_int) };
}

// ---------------------------------------------------------------------------
// /proc

impl Memory {
    fn of(pid: u32) -> Option<Memory> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|line| line.starts_with(name))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        Some(Memory {
            rss_kb: field("VmRSS:")?,
            anon_kb: field("RssAnon:")?,
            file_kb: field("RssFile:")?,
            shmem_kb: field("RssShmem:")?,
            peak_kb: field("VmHWM:")?,
            threads: field("Threads:")?,
        })
    }
}

/// RSS and anonymous kB per mapped path, largest RSS first; anonymous
/// mappings without a name are `[anonymous]`.
fn mappings(pid: u32) -> Vec<(String, u64, u64)> {
    let Ok(smaps) = fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return Vec::new();
    };
    let mut by_path: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut current = String::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        let is_header =
            first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if is_header {
            // address perms offset dev inode [path]
            current = words.nth(4).unwrap_or("[anonymous]").to_string();
            continue;
        }
        let kb = || {
            words
                .clone()
                .next()
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match first {
            "Rss:" => by_path.entry(current.clone()).or_default().0 += kb(),
            "Anonymous:" => by_path.entry(current.clone()).or_default().1 += kb(),
            _ => {}
        }
    }
    let mut mappings: Vec<(String, u64, u64)> = by_path
        .into_iter()
        .filter(|(_, (rss, _))| *rss > 0)
        .map(|(path, (rss, anon))| (path, rss, anon))
        .collect();
    mappings.sort_by_key(|(_, rss, _)| std::cmp::Reverse(*rss));
    mappings
}

/// Samples the agent's RSS every [`RSS_EVERY`] until `sampling` is cleared.
fn sample_rss(pid: u32, sampling: Arc<AtomicBool>) -> JoinHandle<Vec<RssSample>> {
    std::thread::spawn(move || {
        let mut samples = Vec::new();
        let mut next = Instant::now();
        while sampling.load(Ordering::Relaxed) {
            if let Some(memory) = Memory::of(pid) {
                samples.push(RssSample {
                    at: Instant::now(),
                    rss_kb: memory.rss_kb,
                    anon_kb: memory.anon_kb,
                });
            }
            next += RSS_EVERY;
            sleep_until(next);
        }
        samples
    })
}

/// User + system CPU time of a process (`/proc/<pid>/stat`, Linux).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant of the system; it takes no pointer.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// The report

/// A row of the table: the figure, the two references, now, the target.
struct Row {
    figure: &'static str,
    fluent_bit: &'static str,
    before: &'static str,
    now: Option<String>,
    target: &'static str,
    met: Option<bool>,
}

/// MB = 10^6 bytes, as everywhere in `docs/performance.md`.
fn mb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / 1e6
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

fn report(
    idle: Option<&IdleResult>,
    burst: Option<&BurstResult>,
    recovery: Option<&RecoveryResult>,
) {
    let peak_rss = burst.map(|burst| {
        burst
            .samples
            .iter()
            .map(|sample| sample.rss_kb)
            .max()
            .unwrap_or(0)
    });
    let rows = [
        Row {
            figure: "idle RSS",
            fluent_bit: "8.6 MB",
            before: "13.4 MB",
            now: idle.map(|idle| format!("{:.2} MB", mb(idle.memory.rss_kb))),
            target: "≤ 6 MB",
            met: idle.map(|idle| mb(idle.memory.rss_kb) <= 6.0),
        },
        Row {
            figure: "idle anonymous RSS",
            fluent_bit: "1.6 MB",
            before: "2.5 MB",
            now: idle.map(|idle| format!("{:.2} MB", mb(idle.memory.anon_kb))),
            target: "≤ 1.5 MB",
            met: idle.map(|idle| mb(idle.memory.anon_kb) <= 1.5),
        },
        Row {
            figure: "burst: first byte → backend holds all 100,000",
            fluent_bit: "0.75 s",
            before: "1.49 s",
            now: burst.map(|burst| format!("{:.2} s", seconds(burst.delivered))),
            target: "≤ 0.6 s",
            met: burst.map(|burst| seconds(burst.delivered) <= 0.6),
        },
        Row {
            figure: "burst: all bytes into the pty",
            fluent_bit: "0.05 s",
            before: "0.85 s",
            now: burst.map(|burst| format!("{:.2} s", seconds(burst.written))),
            target: "≤ 0.1 s",
            met: burst.map(|burst| seconds(burst.written) <= 0.1),
        },
        Row {
            figure: "burst: peak agent RSS",
            fluent_bit: "38.1 MB",
            before: "22.9 MB",
            now: peak_rss.map(|kb| format!("{:.1} MB", mb(kb))),
            target: "≤ 15 MB",
            met: peak_rss.map(|kb| mb(kb) <= 15.0),
        },
        Row {
            figure: "recovery: return → all 1,000 delivered",
            fluent_bit: "5.7 s",
            before: "1.84 s",
            now: recovery.map(|recovery| format!("{:.2} s", seconds(recovery.delivered))),
            target: "≤ 1.25 s",
            met: recovery.map(|recovery| seconds(recovery.delivered) <= 1.25),
        },
    ];
    println!();
    println!("| figure | {FLUENT_BIT} | {BEFORE} | epm-agent now | target | met? |");
    println!("|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            row.figure,
            row.fluent_bit,
            row.before,
            row.now.as_deref().unwrap_or("not run"),
            row.target,
            match row.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            }
        );
    }
    if let Some(idle) = idle {
        report_idle(idle);
    }
    if let Some(burst) = burst {
        report_burst(burst);
    }
    if let Some(recovery) = recovery {
        report_recovery(recovery);
    }
    let _ = io::stdout().flush();
}

fn report_idle(idle: &IdleResult) {
    let memory = idle.memory;
    println!("\n### Idle: raw measurements\n");
    println!(
        "/proc/PID/status {IDLE_QUIET:?} after the backend held all {IDLE_PRESSES} presses: \
         VmRSS {} kB, RssAnon {} kB, RssFile {} kB, RssShmem {} kB, VmHWM {} kB, Threads {}",
        memory.rss_kb,
        memory.anon_kb,
        memory.file_kb,
        memory.shmem_kb,
        memory.peak_kb,
        memory.threads
    );
    println!("\n/proc/PID/smaps_rollup:\n");
    for line in idle.smaps_rollup.lines() {
        println!("    {line}");
    }
    println!("\nRSS by mapping (/proc/PID/smaps), largest first:\n");
    println!("| mapping | Rss | of it Anonymous |");
    println!("|---|---|---|");
    for (path, rss, anon) in idle.mappings.iter().take(12) {
        println!("| {path} | {rss} kB | {anon} kB |");
    }
    let rest: (u64, u64) = idle
        .mappings
        .iter()
        .skip(12)
        .fold((0, 0), |sum, (_, rss, anon)| (sum.0 + rss, sum.1 + anon));
    if idle.mappings.len() > 12 {
        println!(
            "| {} others | {} kB | {} kB |",
            idle.mappings.len() - 12,
            rest.0,
            rest.1
        );
    }
    println!(
        "\nload average {} before, {} after; agent stop: {}",
        idle.load.0, idle.load.1, idle.stop
    );
}

fn report_burst(burst: &BurstResult) {
    let since = |at: Instant| at.saturating_duration_since(burst.first_byte_at);
    let mut rss: Vec<u64> = burst.samples.iter().map(|sample| sample.rss_kb).collect();
    rss.sort_unstable();
    let peak = burst.samples.iter().max_by_key(|sample| sample.rss_kb);
    let peak_anon = burst
        .samples
        .iter()
        .map(|sample| sample.anon_kb)
        .max()
        .unwrap_or(0);
    println!("\n### Burst: raw measurements\n");
    println!(
        "{BURST_PRESSES} K lines, {} bytes; serials {} and {}, seq 1 to {} each",
        burst.bytes,
        BURST_SERIALS[0],
        BURST_SERIALS[1],
        BURST_PRESSES.div_ceil(BURST_SERIALS.len())
    );
    println!(
        "all bytes in the pty at {:.3} s; the backend held every press at {:.3} s; \
         ACKs received: {} (the last at {})",
        seconds(burst.written),
        seconds(burst.delivered),
        burst.acks,
        burst
            .last_ack
            .map_or("-".into(), |at| format!("{:.3} s", seconds(at)))
    );
    if let Some((acks_dropped, duplicates, bad_frames)) = burst.keypad_counters {
        println!(
            "the keypad's row after the stop: acks_dropped {acks_dropped}, duplicates \
             {duplicates}, bad_frames {bad_frames}"
        );
    }
    let sizes = &burst.burst_requests;
    println!(
        "requests from the first byte on: {} (presses per request: min {}, max {}); \
         all requests: {} (contract problems: {})",
        sizes.len(),
        sizes.iter().min().unwrap_or(&0),
        sizes.iter().max().unwrap_or(&0),
        burst.requests,
        burst.problems,
    );
    println!(
        "CPU during the burst (first byte to the last press delivered): agent {:.2} s, \
         this harness (keypad, backend, sampler) {:.2} s",
        burst.agent_cpu_s, burst.harness_cpu_s
    );
    if let (Some(peak), false) = (peak, rss.is_empty()) {
        println!(
            "RSS samples: {} every {RSS_EVERY:?}; min {} kB, median {} kB, max {} kB at {:.3} s; \
             RssAnon max {} kB",
            rss.len(),
            rss[0],
            rss[rss.len() / 2],
            peak.rss_kb,
            seconds(since(peak.at)),
            peak_anon
        );
    }
    println!(
        "/proc/PID/status before the burst: VmRSS {} kB, RssAnon {} kB, RssFile {} kB, Threads {}; \
         after: VmRSS {} kB, RssAnon {} kB, RssFile {} kB, VmHWM {} kB, Threads {}",
        burst.memory_before.rss_kb,
        burst.memory_before.anon_kb,
        burst.memory_before.file_kb,
        burst.memory_before.threads,
        burst.memory_after.rss_kb,
        burst.memory_after.anon_kb,
        burst.memory_after.file_kb,
        burst.memory_after.peak_kb,
        burst.memory_after.threads,
    );
    println!(
        "{:?} after the last press: VmRSS {} kB, RssAnon {} kB, RssFile {} kB",
        SETTLE,
        burst.memory_settled.rss_kb,
        burst.memory_settled.anon_kb,
        burst.memory_settled.file_kb,
    );
    let mut slices: BTreeMap<u128, (u64, u64)> = BTreeMap::new();
    for sample in &burst.samples {
        let slice = since(sample.at).as_millis() / RSS_SLICE.as_millis();
        let entry = slices.entry(slice).or_default();
        entry.0 = entry.0.max(sample.rss_kb);
        entry.1 = entry.1.max(sample.anon_kb);
    }
    let series: Vec<String> = slices
        .values()
        .map(|(rss, anon)| format!("{:.1}/{:.1}", mb(*rss), mb(*anon)))
        .collect();
    println!(
        "RSS/RssAnon in MB, peak of each {RSS_SLICE:?} from the first byte: {}",
        series.join(" ")
    );
    println!(
        "load average {} before, {} after; agent stop: {}",
        burst.load.0, burst.load.1, burst.stop
    );
}

fn report_recovery(recovery: &RecoveryResult) {
    println!("\n### Recovery: raw measurements\n");
    let refused: Vec<String> = recovery
        .refused
        .iter()
        .map(|at| format!("{:.2}", seconds(*at)))
        .collect();
    println!(
        "503 + Retry-After: {RETRY_AFTER_S} answered at (s since the outage began): {}",
        refused.join(", ")
    );
    let after: Vec<String> = recovery
        .after_return
        .iter()
        .map(|(at, presses, events)| {
            format!(
                "+{:.3} s: {presses} presses ({events} events)",
                seconds(*at)
            )
        })
        .collect();
    println!("requests after the return: {}", after.join("; "));
    println!(
        "contract problems: {}; load average {} before, {} after; agent stop: {}",
        recovery.problems, recovery.load.0, recovery.load.1, recovery.stop
    );
}

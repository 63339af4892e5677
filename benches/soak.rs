//! Soak run: an accelerated day. The real release `epm-agent run` (a
//! separate process) reads two emulated devices on pseudo-terminals — a
//! ProLAN-202 keypad and a ProLAN-501 receiver with 40 remotes, each radio
//! press sent three times — and uploads to two HTTP backends on 127.0.0.1,
//! one reliable and one flaky (20 % failed requests, a 401 window, a 503 +
//! `Retry-After` window). Along the way the agent is killed (`kill -9`) and
//! restarted three times, stopped with SIGTERM and restarted once, reloaded
//! with SIGHUP on an unchanged file, and each device is unplugged and
//! replugged. At the end the counts are reconciled (pressed = stored =
//! delivered per sink, every loss explained) and the agent's RSS, sampled
//! every second, is reported per process life.
//!
//! Run: `cargo bench --bench soak` (env `SOAK_PRESSES`, default 1,000,000,
//! to scale it down; `SOAK_KEEP=1` keeps the run's folder: logs, store).
//! Prints the timeline and Markdown tables; exits non-zero when an
//! invariant fails. See `docs/soak.md`.
//!
//! Pacing: a device is never more than its window of presses ahead of the
//! agent's acknowledgements (the highest press ACKed so far, so a press lost
//! at a kill does not hold the window). The window is sized to fit the
//! pseudo-terminal's buffer (about 20 kB here) with room to spare, so while
//! the agent is down the emulator never blocks on a full terminal and no
//! byte is ever held back or dropped by the test itself.

// The delivery tests use parts of these modules that the soak run does not.
#[allow(dead_code)]
#[path = "../tests/backend/mod.rs"]
mod backend;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use epm_agent::protocol::{Press, UnitId};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;

use backend::{Answer, Backend, Expect, Format, Incoming};
use support::{keypad_press, radio_press, Emulator, EmulatorOptions, Observed, TestDir};

/// Distinct presses over the run, both devices together.
const DEFAULT_PRESSES: usize = 1_000_000;
/// The keypad's share of the presses, at most [`KEYPAD_MAX_PRESSES`].
const KEYPAD_SHARE: f64 = 0.06;
/// A keypad numbers its presses with a 16-bit seq, and the same (serial,
/// seq) within 10 minutes is a duplicate by the spec; one keypad sits on a
/// port. So its seq never wraps in the run: every keypad press is distinct.
const KEYPAD_MAX_PRESSES: usize = 60_000;
/// Remotes heard by the receiver; each numbers its own presses.
const REMOTES: usize = 40;
const FIRST_REMOTE: u32 = 0x301A_0000;
/// Presses written and not yet acknowledged, per device. A receiver press
/// is 3 frames of 14 bytes, a keypad line about 24 bytes: 300 × 42 and
/// 500 × 24 bytes both stay well inside the terminal's 20 kB buffer.
const RECEIVER_WINDOW: usize = 300;
const KEYPAD_WINDOW: usize = 500;
/// The keypad may run this far (in presses) ahead of its fair share, so the
/// two devices progress together and every disruption hits both.
const KEYPAD_LEAD: usize = 200;

const KEYPAD_NAME: &str = "cashdesk";
const RECEIVER_NAME: &str = "entrance";
const RELIABLE_SINK: &str = "reporter";
const FLAKY_SINK: &str = "partner";
const FLAKY_TOKEN: &str = "soak-7Qm2x9-token";
/// Seed of the flaky backend's failures.
const FLAKY_SEED: u64 = 2024;

/// How long the agent may take to reopen a port after a restart or replug.
const REOPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the last presses may take to be acknowledged once written.
const LAST_ACK_TIMEOUT: Duration = Duration::from_secs(120);
/// How long both sinks may take to deliver the backlog once input stops.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a SIGTERM may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const RSS_EVERY: Duration = Duration::from_secs(1);
/// RSS is flat when the last minute's maximum is within this factor of the
/// maximum in the minute after warm-up.
const RSS_FLAT_FACTOR: f64 = 1.10;
const RSS_WARM_UP: Duration = Duration::from_secs(60);
/// Between two disruptions the agent runs undisturbed at least this long
/// (a small run would otherwise see them back to back).
const SETTLE: Duration = Duration::from_secs(2);

/// What happens at a given fraction of the presses.
#[derive(Clone, Debug)]
enum Disruption {
    /// SIGHUP with the configuration file unchanged.
    Reload,
    /// `kill -9`; the agent stays down for `down`, then starts again.
    Kill { down: Duration },
    /// SIGTERM; down for `down`, then started again.
    Terminate { down: Duration },
    /// The device's port vanishes for `out`, then comes back.
    Unplug { device: Which, out: Duration },
    /// The flaky backend answers only `answer` for `during`.
    SinkWindow { answer: Answer, during: Duration },
}

const fn seconds(count: u64) -> Duration {
    Duration::from_secs(count)
}

/// The day's events, by progress (presses queued / all presses).
fn schedule() -> Vec<(f64, Disruption)> {
    vec![
        (0.08, Disruption::Reload),
        (0.15, Disruption::Kill { down: seconds(0) }),
        (
            0.25,
            Disruption::Unplug {
                device: Which::Keypad,
                out: seconds(2),
            },
        ),
        (
            0.33,
            Disruption::SinkWindow {
                answer: Answer::Status(401),
                during: seconds(5),
            },
        ),
        (0.40, Disruption::Kill { down: seconds(3) }),
        (
            0.50,
            Disruption::Unplug {
                device: Which::Receiver,
                out: seconds(2),
            },
        ),
        (
            0.58,
            Disruption::SinkWindow {
                answer: Answer::RetryAfter {
                    status: 503,
                    seconds: 2,
                },
                during: seconds(8),
            },
        ),
        (0.65, Disruption::Terminate { down: seconds(1) }),
        (0.75, Disruption::Kill { down: seconds(1) }),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Keypad,
    Receiver,
}

/// One device's stream of presses: press `i` of a device is a fixed
/// (unit, seq), so a press, its ACK and its stored event map back to `i`.
struct Stream {
    which: Which,
    name: &'static str,
    emulator: Emulator,
    total: usize,
    window: usize,
    /// Presses handed to the emulator.
    queued: usize,
    /// ACKs looked at so far.
    acks_seen: usize,
    /// One past the highest press acknowledged.
    acked_high: usize,
    /// Presses written completely.
    sent: usize,
    queries: usize,
}

/// A look at an emulator, taken under its lock without copying its records.
struct Glance {
    acks_seen: usize,
    acked_high: usize,
    sent: usize,
    queries: usize,
    failure: Option<String>,
}

/// A span of one device's presses that a disruption put at risk: from the
/// highest ACK once the disruption had happened to what had been written
/// when the agent had the port open again.
#[derive(Clone, Debug)]
struct AtRisk {
    what: &'static str,
    which: Which,
    /// Presses from here on may be lost...
    acked_high: usize,
    /// ...those from here on were written while no agent read the port...
    sent_at: usize,
    /// ...and from here on the agent read the port again (`None`: not yet).
    reopened_at: Option<usize>,
    /// When the agent had the port open again.
    reopened_when: Option<Instant>,
    queries_before: usize,
    since: Instant,
}

/// The `epm-agent run` of one process life.
struct AgentProcess {
    child: Child,
    life: usize,
    stderr: PathBuf,
}

/// One look at the running agent, every second.
#[derive(Clone, Copy, Debug)]
struct Sample {
    life: usize,
    /// Seconds since the run started.
    at_s: f64,
    rss_kb: u64,
    /// User + system CPU time of this life so far.
    cpu_s: f64,
}

type Samples = Arc<Mutex<Vec<Sample>>>;

struct Run {
    dir: TestDir,
    config: PathBuf,
    started: Instant,
    streams: [Stream; 2],
    agent: AgentProcess,
    lives: usize,
    /// The running agent for the RSS sampler: life, pid, start.
    current: Arc<Mutex<Option<(usize, u32, Instant)>>>,
    timeline: Vec<String>,
    at_risk: Vec<AtRisk>,
    sink_window: Arc<Mutex<Option<(Answer, Instant)>>>,
    /// Queries per device before the reload: a port reopened by the reload
    /// shows as a query, counted at the next disruption.
    reload_check: Option<[usize; 2]>,
    reload_reopened: usize,
    last_disruption: Instant,
}

fn main() {
    let presses = std::env::var("SOAK_PRESSES")
        .ok()
        .and_then(|value| value.replace('_', "").parse().ok())
        .unwrap_or(DEFAULT_PRESSES);
    let keypad_total = ((presses as f64 * KEYPAD_SHARE) as usize).min(KEYPAD_MAX_PRESSES);
    let receiver_total = presses - keypad_total;
    assert!(
        receiver_total / REMOTES < usize::from(u16::MAX),
        "SOAK_PRESSES too large: a remote's counter would wrap"
    );

    let dir = TestDir::new();
    let reliable = Backend::start(Expect::plain(Format::Json));
    let flaky = Backend::start(Expect {
        format: Format::Ndjson,
        gzip: true,
        token: Some(FLAKY_TOKEN.into()),
    });
    let sink_window: Arc<Mutex<Option<(Answer, Instant)>>> = Arc::default();
    let window = Arc::clone(&sink_window);
    let mut random = fastrand::Rng::with_seed(FLAKY_SEED);
    flaky.set_plan(move |_: &Incoming<'_>| {
        if let Some((answer, until)) = &*lock(&window) {
            if Instant::now() < *until {
                return answer.clone();
            }
        }
        // 20 % of requests fail: 12 % a 500, 4 % a reset with nothing kept,
        // 4 % a reset after the events were kept (the answer is lost).
        match random.f64() {
            roll if roll < 0.12 => Answer::Status(500),
            roll if roll < 0.16 => Answer::Reset,
            roll if roll < 0.20 => Answer::AcceptThenReset,
            _ => Answer::Accept,
        }
    });

    let keypad = dir.keypad(
        KEYPAD_NAME,
        EmulatorOptions {
            seed: 11,
            ..EmulatorOptions::keypad()
        },
    );
    let receiver = dir.receiver(
        RECEIVER_NAME,
        EmulatorOptions {
            seed: 12,
            ..EmulatorOptions::receiver()
        },
    );
    let config = write_config(&dir, &keypad, &receiver, &reliable, &flaky);
    // Every life runs the same build, even if target/ is rebuilt meanwhile.
    fs::copy(env!("CARGO_BIN_EXE_epm-agent"), agent_binary(&dir)).expect("copy the agent binary");

    let load_at_start = load_average();
    let samples: Samples = Arc::default();
    let current: Arc<Mutex<Option<(usize, u32, Instant)>>> = Arc::default();
    let started = Instant::now();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let samples = Arc::clone(&samples);
        let current = Arc::clone(&current);
        let sampling = Arc::clone(&sampling);
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                let life = *lock(&current);
                // The first second of a life is its start-up (exec, opening
                // the store), not its steady state.
                if let Some((life, pid, _)) = life.filter(|(_, _, at)| at.elapsed() >= RSS_EVERY) {
                    if let (Some(rss_kb), Some(cpu_s)) =
                        (proc_status_kb(pid, "VmRSS:"), cpu_seconds(pid))
                    {
                        lock(&samples).push(Sample {
                            life,
                            at_s: started.elapsed().as_secs_f64(),
                            rss_kb,
                            cpu_s,
                        });
                    }
                }
                std::thread::sleep(RSS_EVERY);
            }
        })
    };

    let agent = AgentProcess::spawn(&dir, &config, 0);
    *lock(&current) = Some((0, agent.child.id(), Instant::now()));
    let mut run = Run {
        dir,
        config,
        started,
        streams: [
            Stream::new(
                Which::Keypad,
                KEYPAD_NAME,
                keypad,
                keypad_total,
                KEYPAD_WINDOW,
            ),
            Stream::new(
                Which::Receiver,
                RECEIVER_NAME,
                receiver,
                receiver_total,
                RECEIVER_WINDOW,
            ),
        ],
        agent,
        lives: 1,
        current,
        timeline: Vec::new(),
        at_risk: Vec::new(),
        sink_window,
        reload_check: None,
        reload_reopened: 0,
        last_disruption: started,
    };
    run.note(format!(
        "agent life 0 started (pid {}); {presses} presses: {keypad_total} keypad, \
         {receiver_total} receiver ({REMOTES} remotes)",
        run.agent.child.id()
    ));
    run.wait_for_ports();

    run.ingest();
    let all_queued_at = run.started.elapsed();
    run.note("every press queued".into());

    run.wait_for_last_acks();
    let ingest_time = run.started.elapsed();
    run.note("the last press of each device acknowledged".into());

    run.wait_for_delivery();
    let delivered_at = run.started.elapsed();
    run.note("both sinks delivered every stored event".into());
    let status = agent_status(&run.dir, &run.config);
    let status_end = run.agent.terminate(&run.dir);
    *lock(&run.current) = None;
    sampling.store(false, Ordering::Relaxed);
    sampler.join().expect("the RSS sampler does not panic");
    let wall = run.started.elapsed();
    run.note(format!("agent stopped with SIGTERM: {status_end}"));

    let timings = Timings {
        final_stop: status_end,
        load_at_start,
        all_queued_at,
        ingest_time,
        delivered_at,
        wall,
    };
    let samples = lock(&samples).clone();
    let failed = reconcile(&run, &reliable, &flaky, &status, &samples, &timings);
    if failed {
        eprintln!("{}", stderr_tails(&run.dir));
    }
    if failed || std::env::var_os("SOAK_KEEP").is_some() {
        // Exits without dropping the folder: its logs and store stay.
        eprintln!(
            "soak: the run's folder is kept: {}",
            run.dir.path().display()
        );
        std::process::exit(i32::from(failed));
    }
}

/// How the run went, beside the counts.
struct Timings {
    /// The final SIGTERM's exit status.
    final_stop: ExitStatus,
    load_at_start: String,
    all_queued_at: Duration,
    ingest_time: Duration,
    delivered_at: Duration,
    wall: Duration,
}

impl Stream {
    fn new(
        which: Which,
        name: &'static str,
        emulator: Emulator,
        total: usize,
        window: usize,
    ) -> Stream {
        Stream {
            which,
            name,
            emulator,
            total,
            window,
            queued: 0,
            acks_seen: 0,
            acked_high: 0,
            sent: 0,
            queries: 0,
        }
    }

    /// Reads the emulator's counters and the ACKs that arrived since the
    /// last look.
    fn look(&mut self) -> Option<String> {
        let which = self.which;
        let (acks_seen, acked_high) = (self.acks_seen, self.acked_high);
        let glance =
            self.emulator
                .wait_until(Duration::from_secs(10), "a look", |observed: &Observed| {
                    let acked_high = observed.acks[acks_seen..]
                        .iter()
                        .filter_map(|&(unit, seq)| index_of(which, unit, seq))
                        .map(|index| index + 1)
                        .fold(acked_high, usize::max);
                    Some(Glance {
                        acks_seen: observed.acks.len(),
                        acked_high,
                        sent: observed.sent_presses.len(),
                        queries: observed.queries.len(),
                        failure: observed.failure.clone(),
                    })
                });
        self.acks_seen = glance.acks_seen;
        self.acked_high = glance.acked_high;
        self.sent = glance.sent;
        self.queries = glance.queries;
        glance.failure
    }

    /// Queues presses up to `limit` (and the window).
    fn top_up(&mut self, limit: usize) {
        let limit = limit.min(self.total).min(self.acked_high + self.window);
        while self.queued < limit {
            self.emulator.press(press_of(self.which, self.queued));
            self.queued += 1;
        }
    }
}

impl Run {
    /// Keeps both devices fed and applies the schedule as progress passes it,
    /// until every press is queued and every disruption is over.
    fn ingest(&mut self) {
        let mut pending = schedule().into_iter().peekable();
        let mut replugs: Vec<(Which, Instant)> = Vec::new();
        let mut last_check = Instant::now();
        loop {
            self.look();
            self.top_up();
            self.close_at_risk();
            for (which, at) in std::mem::take(&mut replugs) {
                if Instant::now() >= at {
                    self.stream(which).emulator.replug();
                    self.note(format!("{} replugged", self.stream(which).name));
                } else {
                    replugs.push((which, at));
                }
            }
            let progress = self.progress();
            let quiet = replugs.is_empty()
                && self.at_risk.iter().all(|risk| risk.reopened_at.is_some())
                && self.settled_since().elapsed() >= SETTLE;
            if let Some((at, _)) = pending.peek() {
                if progress >= *at && quiet {
                    let (_, disruption) = pending.next().expect("peeked");
                    self.last_disruption = Instant::now();
                    if let Some(replug) = self.disrupt(disruption) {
                        replugs.push(replug);
                    }
                }
            }
            if last_check.elapsed() >= Duration::from_secs(1) {
                self.agent.assert_running(&self.dir);
                last_check = Instant::now();
            }
            let all_queued = self
                .streams
                .iter()
                .all(|stream| stream.queued == stream.total);
            if all_queued && pending.peek().is_none() && quiet {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until every press is acknowledged: nothing disrupts the last ones.
    fn wait_for_last_acks(&mut self) {
        let deadline = Instant::now() + LAST_ACK_TIMEOUT;
        loop {
            self.look();
            if self
                .streams
                .iter()
                .all(|stream| stream.acked_high == stream.total)
            {
                break;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "the last presses were not acknowledged within {LAST_ACK_TIMEOUT:?}: {}",
                    self.streams
                        .iter()
                        .map(|stream| format!(
                            "{} acked up to {} of {}, {} written",
                            stream.name, stream.acked_high, stream.total, stream.sent
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until both sinks have delivered everything stored.
    fn wait_for_delivery(&mut self) {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        let mut last_progress = Instant::now();
        loop {
            let cursors = sink_cursors(&self.dir.data_dir());
            if let Ok((last, cursors)) = &cursors {
                if cursors.len() == 2 && cursors.values().all(|cursor| cursor >= last) {
                    break;
                }
            }
            if last_progress.elapsed() >= Duration::from_secs(10) {
                self.note(format!("waiting for delivery: {cursors:?}"));
                last_progress = Instant::now();
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "the sinks did not deliver within {DELIVERY_TIMEOUT:?}: {cursors:?}"
                ));
            }
            self.agent.assert_running(&self.dir);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stream(&self, which: Which) -> &Stream {
        &self.streams[which as usize]
    }

    fn note(&mut self, what: String) {
        let line = format!(
            "{:7.1} s  {:5.1} %  {what}",
            self.started.elapsed().as_secs_f64(),
            self.progress() * 100.0
        );
        eprintln!("soak: {line}");
        self.timeline.push(line);
    }

    fn progress(&self) -> f64 {
        let queued: usize = self.streams.iter().map(|stream| stream.queued).sum();
        let total: usize = self.streams.iter().map(|stream| stream.total).sum();
        queued as f64 / total as f64
    }

    fn look(&mut self) {
        let mut failures = Vec::new();
        for stream in &mut self.streams {
            if let Some(failure) = stream.look() {
                failures.push(format!("{}: the emulator failed: {failure}", stream.name));
            }
        }
        if !failures.is_empty() {
            self.fail(&failures.join("; "));
        }
    }

    fn top_up(&mut self) {
        let [keypad, receiver] = &mut self.streams;
        receiver.top_up(receiver.total);
        // The keypad follows the receiver's progress.
        let share = if receiver.total == 0 {
            keypad.total
        } else {
            (receiver.queued as f64 / receiver.total as f64 * keypad.total as f64) as usize
                + KEYPAD_LEAD
        };
        keypad.top_up(share);
    }

    /// Since when nothing has been disrupted: the last disruption, or the
    /// last reopened port after it.
    fn settled_since(&self) -> Instant {
        self.at_risk
            .iter()
            .filter_map(|risk| risk.reopened_when)
            .fold(self.last_disruption, Instant::max)
    }

    /// Marks spans whose device the agent has opened again.
    fn close_at_risk(&mut self) {
        for index in 0..self.at_risk.len() {
            let risk = &self.at_risk[index];
            if risk.reopened_at.is_some() {
                continue;
            }
            let stream = self.stream(risk.which);
            if stream.queries > risk.queries_before {
                let sent = stream.sent;
                self.at_risk[index].reopened_at = Some(sent);
                self.at_risk[index].reopened_when = Some(Instant::now());
            } else if risk.since.elapsed() > REOPEN_TIMEOUT {
                let message = format!(
                    "{}: the agent did not open the port within {REOPEN_TIMEOUT:?} after {}",
                    stream.name, risk.what
                );
                self.fail(&message);
            }
        }
    }

    /// Applies one disruption; an unplug returns when to replug.
    fn disrupt(&mut self, disruption: Disruption) -> Option<(Which, Instant)> {
        self.check_reload();
        match disruption {
            Disruption::Reload => {
                self.reload_check = Some([self.streams[0].queries, self.streams[1].queries]);
                self.agent.signal(Signal::SIGHUP);
                self.note("SIGHUP: reload with the configuration unchanged".into());
                None
            }
            Disruption::Kill { down } => {
                self.agent.kill();
                self.note(format!(
                    "kill -9 (life {}); down for {down:?}",
                    self.agent.life
                ));
                self.after_stop("in flight at a kill -9", down);
                None
            }
            Disruption::Terminate { down } => {
                let status = self.agent.terminate(&self.dir);
                self.note(format!(
                    "SIGTERM (life {}): {status}; down for {down:?}",
                    self.agent.life
                ));
                if !status.success() {
                    self.fail(&format!(
                        "the agent did not stop cleanly on SIGTERM: {status}"
                    ));
                }
                self.after_stop("in flight at a SIGTERM", down);
                None
            }
            Disruption::Unplug { device, out } => {
                let stream = &mut self.streams[device as usize];
                stream.emulator.unplug();
                stream.look();
                let risk = AtRisk {
                    what: "in the port at an unplug",
                    which: device,
                    acked_high: stream.acked_high,
                    sent_at: stream.sent,
                    reopened_at: None,
                    reopened_when: None,
                    queries_before: stream.queries,
                    since: Instant::now(),
                };
                let name = stream.name;
                self.at_risk.push(risk);
                self.note(format!("{name} unplugged for {out:?}"));
                Some((device, Instant::now() + out))
            }
            Disruption::SinkWindow { answer, during } => {
                *lock(&self.sink_window) = Some((answer.clone(), Instant::now() + during));
                self.note(format!("flaky sink answers only {answer:?} for {during:?}"));
                None
            }
        }
    }

    /// After a kill or a stop: the spans at risk, the downtime, the next life.
    fn after_stop(&mut self, what: &'static str, down: Duration) {
        *lock(&self.current) = None;
        for stream in &mut self.streams {
            // Reads the ACKs the agent wrote before it died; clears the
            // exclusive-open flag that the emulator's own descriptor keeps.
            stream.emulator.release_exclusive();
            stream.look();
            self.at_risk.push(AtRisk {
                what,
                which: stream.which,
                acked_high: stream.acked_high,
                sent_at: stream.sent,
                reopened_at: None,
                reopened_when: None,
                queries_before: stream.queries,
                since: Instant::now(),
            });
        }
        std::thread::sleep(down);
        let life = self.lives;
        self.lives += 1;
        self.agent = AgentProcess::spawn(&self.dir, &self.config, life);
        *lock(&self.current) = Some((life, self.agent.child.id(), Instant::now()));
        self.note(format!(
            "agent life {life} started (pid {})",
            self.agent.child.id()
        ));
    }

    /// A reload must not reopen the ports of unchanged devices.
    fn check_reload(&mut self) {
        if let Some(before) = self.reload_check.take() {
            let reopened: usize = self
                .streams
                .iter()
                .zip(before)
                .map(|(stream, before)| stream.queries - before)
                .sum();
            self.reload_reopened = reopened;
            self.note(format!("ports reopened by the reload: {reopened}"));
        }
    }

    /// Waits until the agent has opened every port, the first time.
    fn wait_for_ports(&mut self) {
        let deadline = Instant::now() + REOPEN_TIMEOUT;
        while self.streams.iter().any(|stream| stream.queries == 0) {
            if Instant::now() >= deadline {
                self.fail("the agent did not open the ports");
            }
            std::thread::sleep(Duration::from_millis(10));
            self.look();
        }
    }

    fn fail(&self, message: &str) -> ! {
        eprintln!("{}", stderr_tails(&self.dir));
        panic!("soak: {message}");
    }
}

impl AgentProcess {
    fn spawn(dir: &TestDir, config: &Path, life: usize) -> AgentProcess {
        let stderr = dir.path().join(format!("agent-{life}.stderr"));
        let child = Command::new(agent_binary(dir))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("EPM_AGENT_CONFIG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("create the agent's stderr file"))
            .spawn()
            .expect("start the epm-agent binary");
        AgentProcess {
            child,
            life,
            stderr,
        }
    }

    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the agent");
        self.child.wait().expect("reap the agent");
    }

    fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), signal)
            .expect("signal the agent");
    }

    fn terminate(&mut self, dir: &TestDir) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the agent") {
                return status;
            }
            if Instant::now() >= deadline {
                eprintln!("{}", stderr_tails(dir));
                panic!("soak: the agent did not exit within {STOP_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_running(&mut self, dir: &TestDir) {
        if let Some(status) = self.child.try_wait().expect("poll the agent") {
            eprintln!("{}", stderr_tails(dir));
            panic!(
                "soak: agent life {} exited by itself: {status} (log {})",
                self.life,
                self.stderr.display()
            );
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Press `index` of a device. Keypad: its seq is the index (at most
/// [`KEYPAD_MAX_PRESSES`], so no seq repeats). Receiver: the remotes take
/// turns; each remote's counter counts its own presses.
fn press_of(which: Which, index: usize) -> Press {
    let key = (index / 7 % 3 + 1) as u8;
    match which {
        Which::Keypad => keypad_press(key, index as u16),
        Which::Receiver => {
            let remote = index % REMOTES;
            radio_press(
                UnitId(FIRST_REMOTE + remote as u32),
                key,
                (index / REMOTES) as u16,
                -40 - remote as i8,
                Some(90 - remote as u8),
            )
        }
    }
}

/// The index of the press with this (unit, seq), as an ACK or an event names
/// it; `None` for a unit this run never used.
fn index_of(which: Which, unit: UnitId, seq: u16) -> Option<usize> {
    match which {
        Which::Keypad => (unit == support::KEYPAD_SERIAL).then_some(usize::from(seq)),
        Which::Receiver => {
            let remote = unit.0.checked_sub(FIRST_REMOTE)? as usize;
            (remote < REMOTES).then_some(usize::from(seq) * REMOTES + remote)
        }
    }
}

fn write_config(
    dir: &TestDir,
    keypad: &Emulator,
    receiver: &Emulator,
    reliable: &Backend,
    flaky: &Backend,
) -> PathBuf {
    let quote = |text: &str| toml::Value::String(text.to_string()).to_string();
    let text = format!(
        "[agent]\nid = {agent}\nlocation = {location}\ndata_dir = {data_dir}\n\n\
         [[device]]\nname = {KEYPAD_NAME:?}\nmodel = \"prolan-202\"\nport = {keypad}\n\
         question = \"satisfied\"\nkeymap = {{ 1 = \"yes\", 2 = \"neutral\", 3 = \"no\" }}\n\n\
         [[device]]\nname = {RECEIVER_NAME:?}\nmodel = \"prolan-501\"\nport = {receiver}\n\
         question = \"recommend\"\nkeymap = {{ 1 = \"yes\", 2 = \"neutral\", 3 = \"no\" }}\n\n\
         [store]\nmax_size_mb = 4096\n\n\
         [[sink]]\nname = {RELIABLE_SINK:?}\nkind = \"http\"\nurl = {reliable}\nformat = \"json\"\n\
         batch_size = 500\nflush_interval_ms = 200\n\n\
         [[sink]]\nname = {FLAKY_SINK:?}\nkind = \"http\"\nurl = {flaky}\nformat = \"ndjson\"\n\
         gzip = true\ntoken = {FLAKY_TOKEN:?}\nbatch_size = 1000\nflush_interval_ms = 200\n\
         max_backoff_s = 2\ntimeout_s = 5\n\n\
         [log]\nlevel = \"info\"\n",
        agent = quote(backend::AGENT_ID),
        location = quote(backend::LOCATION),
        data_dir = quote(&dir.data_dir().to_string_lossy()),
        keypad = quote(&keypad.port_path().to_string_lossy()),
        receiver = quote(&receiver.port_path().to_string_lossy()),
        reliable = quote(&reliable.url()),
        flaky = quote(&flaky.url()),
    );
    let path = dir.path().join("epm-agent.toml");
    fs::write(&path, text).expect("write the configuration");
    // It holds a token: readable by its owner only, as the agent asks.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .expect("restrict the configuration");
    path
}

/// The greatest stored seqno and each sink's cursor.
fn sink_cursors(data_dir: &Path) -> Result<(i64, BTreeMap<String, i64>), String> {
    let connection = support::open_store(data_dir)?;
    let read = || -> rusqlite::Result<(i64, BTreeMap<String, i64>)> {
        let last: i64 =
            connection.query_row("SELECT coalesce(max(seqno), 0) FROM events", [], |row| {
                row.get(0)
            })?;
        let mut statement = connection.prepare("SELECT name, delivered_seqno FROM sinks")?;
        let cursors = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok((last, cursors))
    };
    read().map_err(|error| format!("cannot read the sinks: {error}"))
}

/// The copy of the release binary that every agent life runs.
fn agent_binary(dir: &TestDir) -> PathBuf {
    dir.path().join("epm-agent")
}

/// `epm-agent status --json`, parsed.
fn agent_status(dir: &TestDir, config: &Path) -> Value {
    let output = Command::new(agent_binary(dir))
        .args(["status", "--json", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .expect("run epm-agent status");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "soak: status --json printed no JSON ({error}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The 1-minute load average.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

/// User + system CPU time of a process (`/proc/<pid>/stat`, Linux).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant of the system; it takes no pointer.
    let per_second = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

/// A field of `/proc/<pid>/status` in kB (Linux).
fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn stderr_tails(dir: &TestDir) -> String {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir.path())
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| {
                    path.extension()
                        .is_some_and(|extension| extension == "stderr")
                })
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    let mut report = String::new();
    for path in paths {
        let text = fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(30)..];
        let _ = write!(
            report,
            "\n--- {} (last {} of {} lines) ---\n{}\n",
            path.display(),
            tail.len(),
            lines.len(),
            tail.join("\n")
        );
    }
    report
}

/// One device's presses as the store holds them: how often each index was
/// stored, and events that map to no press of this run.
struct StoredPresses {
    copies: Vec<u32>,
    strangers: usize,
}

/// Prints the reconciliation and the RSS table; returns whether an
/// invariant failed.
fn reconcile(
    run: &Run,
    reliable: &Backend,
    flaky: &Backend,
    status: &Value,
    samples: &[Sample],
    timings: &Timings,
) -> bool {
    let events = support::events(&run.dir.data_dir()).unwrap_or_else(|error| run.fail(&error));
    let mut stored_ids: HashSet<&str> = HashSet::with_capacity(events.len());
    let mut repeated_ids = 0;
    let mut stored: HashMap<&str, StoredPresses> = HashMap::new();
    for stream in &run.streams {
        stored.insert(
            stream.name,
            StoredPresses {
                copies: vec![0; stream.total],
                strangers: 0,
            },
        );
    }
    let mut other_devices = 0;
    for event in &events {
        if !stored_ids.insert(event.id.as_str()) {
            repeated_ids += 1;
        }
        let which = match event.device.as_str() {
            KEYPAD_NAME => Which::Keypad,
            RECEIVER_NAME => Which::Receiver,
            _ => {
                other_devices += 1;
                continue;
            }
        };
        let presses = stored
            .get_mut(event.device.as_str())
            .expect("both devices listed");
        let index = u32::from_str_radix(&event.unit, 16)
            .ok()
            .and_then(|unit| index_of(which, UnitId(unit), event.seq))
            .filter(|&index| index < presses.copies.len());
        match index {
            Some(index) => presses.copies[index] += 1,
            None => presses.strangers += 1,
        }
    }

    let mut table = String::new();
    let mut failures: Vec<String> = Vec::new();
    let mut row = |what: &str, keypad: String, receiver: String, total: String| {
        let _ = writeln!(table, "| {what} | {keypad} | {receiver} | {total} |");
    };
    let mut totals: BTreeMap<&str, [usize; 2]> = BTreeMap::new();
    let mut loss_causes: BTreeMap<&str, [usize; 2]> = BTreeMap::new();
    // Per span at risk: lost among the presses in flight, lost among those
    // written while the port was closed, stored but never acknowledged.
    let mut per_risk = vec![(0usize, 0usize, 0usize); run.at_risk.len()];
    let mut unacked_outside = [0usize; 2];
    for (slot, stream) in run.streams.iter().enumerate() {
        let observed = stream.emulator.observed();
        let presses = &stored[stream.name];
        let mut sent = vec![false; stream.total];
        for press in &observed.sent_presses {
            if let Some(index) = index_of(stream.which, press.unit, press.seq) {
                sent[index] = true;
            }
        }
        let mut acked = vec![false; stream.total];
        for &(unit, seq) in &observed.acks {
            if let Some(index) = index_of(stream.which, unit, seq).filter(|&i| i < stream.total) {
                acked[index] = true;
            }
        }
        let mut count =
            |what: &'static str, value: usize| totals.entry(what).or_default()[slot] = value;
        count("presses queued", stream.total);
        count(
            "presses sent (distinct)",
            sent.iter().filter(|&&sent| sent).count(),
        );
        count(
            "presses sent again (keypad's repeat on a new connection)",
            observed.repeated_presses.len(),
        );
        count(
            "presses ACKed (distinct)",
            acked.iter().filter(|&&acked| acked).count(),
        );
        count(
            "events stored (distinct presses)",
            presses.copies.iter().filter(|&&copies| copies > 0).count(),
        );
        count(
            "stored twice",
            presses.copies.iter().filter(|&&copies| copies > 1).count(),
        );
        count(
            "stored but never sent",
            (0..stream.total)
                .filter(|&i| presses.copies[i] > 0 && !sent[i])
                .count()
                + presses.strangers,
        );
        count(
            "acked but not stored",
            (0..stream.total)
                .filter(|&i| acked[i] && presses.copies[i] == 0)
                .count(),
        );
        count(
            "stored but never ACKed",
            (0..stream.total)
                .filter(|&i| presses.copies[i] > 0 && !acked[i])
                .count(),
        );
        for index in (0..stream.total).filter(|&i| presses.copies[i] > 0 && !acked[i]) {
            let risk = run.at_risk.iter().rposition(|risk| {
                risk.which == stream.which
                    && risk.acked_high <= index
                    && index < risk.reopened_at.unwrap_or(usize::MAX)
            });
            match risk {
                Some(position) => per_risk[position].2 += 1,
                None => unacked_outside[slot] += 1,
            }
        }
        let lost: Vec<usize> = (0..stream.total)
            .filter(|&i| sent[i] && presses.copies[i] == 0)
            .collect();
        count("lost = sent − stored", lost.len());
        for index in lost {
            // The latest disruption that could have lost it is the cause.
            let risk = run.at_risk.iter().rposition(|risk| {
                risk.which == stream.which
                    && risk.acked_high <= index
                    && index < risk.reopened_at.unwrap_or(usize::MAX)
            });
            let cause = match risk {
                None => "unexplained (sent while the agent read the port)",
                Some(position) if index >= run.at_risk[position].sent_at => {
                    per_risk[position].1 += 1;
                    "sent while no agent had the port open"
                }
                Some(position) => {
                    per_risk[position].0 += 1;
                    run.at_risk[position].what
                }
            };
            loss_causes.entry(cause).or_default()[slot] += 1;
        }
    }
    let mut risk_rows = String::new();
    for (risk, (in_flight, while_closed, unacked)) in run.at_risk.iter().zip(&per_risk) {
        let reopened = risk.reopened_at.unwrap_or(risk.sent_at);
        let _ = writeln!(
            risk_rows,
            "| {} | {} | {} | {} | {} | {in_flight} | {} | {} | {while_closed} | {unacked} |",
            risk.what,
            run.stream(risk.which).name,
            number(risk.acked_high),
            number(risk.sent_at),
            number(risk.sent_at.saturating_sub(risk.acked_high)),
            number(reopened),
            number(reopened.saturating_sub(risk.sent_at)),
        );
    }
    let order = [
        "presses queued",
        "presses sent (distinct)",
        "presses sent again (keypad's repeat on a new connection)",
        "presses ACKed (distinct)",
        "events stored (distinct presses)",
        "lost = sent − stored",
        "acked but not stored",
        "stored twice",
        "stored but never sent",
        "stored but never ACKed",
    ];
    for what in order {
        let [keypad, receiver] = totals[what];
        row(
            what,
            number(keypad),
            number(receiver),
            number(keypad + receiver),
        );
        if what == "lost = sent − stored" {
            for (cause, [keypad, receiver]) in &loss_causes {
                row(
                    &format!("… of which {cause}"),
                    number(*keypad),
                    number(*receiver),
                    number(keypad + receiver),
                );
            }
        }
        if what == "stored but never ACKed" {
            let [keypad, receiver] = unacked_outside;
            row(
                "… of which outside every disruption",
                number(keypad),
                number(receiver),
                number(keypad + receiver),
            );
        }
    }
    for what in [
        "acked but not stored",
        "stored twice",
        "stored but never sent",
    ] {
        let [keypad, receiver] = totals[what];
        if keypad + receiver > 0 {
            failures.push(format!("{what}: {}", keypad + receiver));
        }
    }
    for (cause, [keypad, receiver]) in &loss_causes {
        let bad = cause.starts_with("unexplained") || *cause == "in flight at a SIGTERM";
        if bad && keypad + receiver > 0 {
            failures.push(format!("lost, {cause}: {}", keypad + receiver));
        }
    }
    row(
        "event ids stored / stored twice",
        String::new(),
        String::new(),
        format!("{} / {repeated_ids}", number(stored_ids.len())),
    );
    if repeated_ids > 0 || other_devices > 0 {
        failures.push(format!(
            "{repeated_ids} repeated ids, {other_devices} events of unknown devices"
        ));
    }

    // The agent's own counters.
    let device_presses = |name: &str| {
        status["devices"]
            .as_array()
            .and_then(|devices| devices.iter().find(|device| device["name"] == name))
            .and_then(|device| device["presses"].as_u64())
            .unwrap_or(u64::MAX) as usize
    };
    let counters = [device_presses(KEYPAD_NAME), device_presses(RECEIVER_NAME)];
    let stored_by_device = totals["events stored (distinct presses)"];
    row(
        "`status` presses counter",
        number(counters[0]),
        number(counters[1]),
        number(counters[0].saturating_add(counters[1])),
    );
    if counters != stored_by_device {
        failures.push(format!(
            "status presses {counters:?} != stored {stored_by_device:?}"
        ));
    }
    let dropped = status["store"]["dropped_presses"].as_u64().unwrap_or(0);
    row(
        "`status` dropped_presses",
        String::new(),
        String::new(),
        number(dropped as usize),
    );

    // Delivery.
    let mut sink_rows = String::new();
    for (name, backend) in [(RELIABLE_SINK, reliable), (FLAKY_SINK, flaky)] {
        // Presses only: the agent_status events each sink also carries are
        // not presses of the run (they are counted in `delivered` below).
        let received = backend.received_press_ids();
        let received_set: HashSet<&str> = received.iter().map(String::as_str).collect();
        let missing = stored_ids
            .iter()
            .filter(|id| !received_set.contains(*id))
            .count();
        let unknown = received_set
            .iter()
            .filter(|id| !stored_ids.contains(*id))
            .count();
        let requests = backend.requests();
        let mut answers: BTreeMap<String, usize> = BTreeMap::new();
        let mut copies = 0;
        let mut problems = 0;
        for request in &requests {
            let answer = match &request.answer {
                Answer::Status(status) => status.to_string(),
                Answer::RetryAfter { status, .. } => format!("{status} + Retry-After"),
                other => format!("{other:?}"),
            };
            *answers.entry(answer).or_default() += 1;
            if matches!(request.answer, Answer::Accept | Answer::AcceptThenReset) {
                copies += request.ids.len();
            }
            problems += request.problems.len();
        }
        let status_sink = status["sinks"]
            .as_array()
            .and_then(|sinks| sinks.iter().find(|sink| sink["name"] == name));
        let status_delivered = status_sink
            .and_then(|sink| sink["delivered"].as_u64())
            .unwrap_or(u64::MAX);
        let status_pending = status_sink
            .and_then(|sink| sink["pending"].as_u64())
            .unwrap_or(u64::MAX);
        let _ = writeln!(
            sink_rows,
            "| {name} | {} | {} | {} | {missing} | {unknown} | {} | {} | {} | {status_delivered} / {status_pending} |",
            number(stored_ids.len()),
            number(received_set.len()),
            if received_set.len() == stored_ids.len() && missing == 0 { "yes" } else { "**no**" },
            number(requests.len()),
            answers
                .iter()
                .map(|(answer, count)| format!("{answer}: {count}"))
                .collect::<Vec<_>>()
                .join(", "),
            number(copies - received_set.len().min(copies)),
        );
        if missing > 0 || unknown > 0 || received_set.len() != stored_ids.len() {
            failures.push(format!(
                "sink {name}: {missing} stored ids missing, {unknown} unknown ids"
            ));
        }
        if problems > 0 {
            let first = requests
                .iter()
                .find_map(|request| request.problems.first())
                .cloned()
                .unwrap_or_default();
            failures.push(format!(
                "sink {name}: {problems} contract problems, the first: {first}"
            ));
        }
        // `delivered` counts every event: the presses and the agent's status
        // events, all of which the store holds.
        let stored_events = status["store"]["events"].as_u64().unwrap_or(u64::MAX);
        if status_delivered != stored_events || status_pending != 0 {
            failures.push(format!(
                "sink {name}: status says delivered {status_delivered} of {stored_events} stored events, pending {status_pending}"
            ));
        }
    }
    if !timings.final_stop.success() {
        failures.push(format!(
            "the final SIGTERM did not stop the agent cleanly: {}",
            timings.final_stop
        ));
    }
    if run.reload_reopened > 0 {
        failures.push(format!(
            "the reload reopened {} unchanged ports",
            run.reload_reopened
        ));
    }

    // RSS per life and flatness.
    let mut rss_rows = String::new();
    for life in 0..run.lives {
        let of_life: Vec<Sample> = samples
            .iter()
            .filter(|sample| sample.life == life)
            .copied()
            .collect();
        let (Some(first), Some(last)) = (of_life.first(), of_life.last()) else {
            let _ = writeln!(
                rss_rows,
                "| {life} | no sample (ran about a second or less) | 0 | | | | | |"
            );
            continue;
        };
        let mut kb: Vec<u64> = of_life.iter().map(|sample| sample.rss_kb).collect();
        kb.sort_unstable();
        let _ = writeln!(
            rss_rows,
            "| {life} | {:.0}–{:.0} s | {} | {} | {} | {} | {} | {:.1} s |",
            first.at_s,
            last.at_s,
            kb.len(),
            mb(kb[0]),
            mb(kb[kb.len() / 2]),
            mb(kb[kb.len() - 1]),
            mb(last.rss_kb),
            last.cpu_s,
        );
    }
    let end = samples.last().map_or(0.0, |sample| sample.at_s);
    let warm_up = RSS_WARM_UP.as_secs_f64().min(end / 4.0);
    let max_rss_in = |from: f64, to: f64| {
        samples
            .iter()
            .filter(|sample| sample.at_s >= from && sample.at_s < to)
            .map(|sample| sample.rss_kb)
            .max()
            .unwrap_or(0)
    };
    let early = max_rss_in(warm_up, warm_up * 2.0);
    let late = max_rss_in(end - warm_up, f64::MAX);
    let flat = late as f64 <= early as f64 * RSS_FLAT_FACTOR;

    let total_presses: usize = run.streams.iter().map(|stream| stream.total).sum();
    println!("\n## Timeline\n");
    for line in &run.timeline {
        println!("    {line}");
    }
    println!(
        "\n## Reconciliation ({} presses)\n\n| count | keypad ({KEYPAD_NAME}) | receiver ({RECEIVER_NAME}) | total |\n|---|---|---|---|\n{table}",
        number(total_presses)
    );
    println!(
        "| disruption | device | ACKed up to | written up to | in flight | lost of them | written up to when reopened | written meanwhile | lost of them | stored, never ACKed |\n|---|---|---|---|---|---|---|---|---|---|\n{risk_rows}"
    );
    println!(
        "| sink | stored | delivered (distinct ids) | delivered = stored | stored ids missing | unknown ids | requests | answers | event copies resent | `status` delivered / pending |\n|---|---|---|---|---|---|---|---|---|---|\n{sink_rows}"
    );
    println!(
        "| agent life | sampled | samples | RSS min | median | max | at the end | agent CPU (user + system) |\n|---|---|---|---|---|---|---|---|\n{rss_rows}"
    );
    println!(
        "RSS: max {} in [{warm_up:.0} s, {:.0} s) after warm-up, max {} in the last {warm_up:.0} s: {}",
        mb(early),
        warm_up * 2.0,
        mb(late),
        if flat { "flat (within 10 %)" } else { "**not flat** (grew more than 10 %)" }
    );
    println!(
        "\nWall time {:.1} s: every press queued at {:.1} s, the last one ACKed at {:.1} s \
         ({:.0} presses/s through the agent), both sinks caught up at {:.1} s.",
        timings.wall.as_secs_f64(),
        timings.all_queued_at.as_secs_f64(),
        timings.ingest_time.as_secs_f64(),
        total_presses as f64 / timings.ingest_time.as_secs_f64(),
        timings.delivered_at.as_secs_f64(),
    );
    let agent_cpu: f64 = (0..run.lives)
        .filter_map(|life| samples.iter().rfind(|sample| sample.life == life))
        .map(|sample| sample.cpu_s)
        .sum();
    println!(
        "CPU: the agent {agent_cpu:.1} s over all lives (as last sampled), this harness \
         (emulators, backends) {:.1} s; load average {} at the start, {} at the end ({} cores).",
        cpu_seconds(std::process::id()).unwrap_or(f64::NAN),
        timings.load_at_start,
        load_average(),
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    if failures.is_empty() {
        println!("\nEvery invariant holds.");
        false
    } else {
        println!("\nINVARIANTS FAILED:");
        for failure in &failures {
            println!("- {failure}");
        }
        true
    }
}

fn number(value: usize) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 * 1024.0 / 1e6)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

//! What the end-to-end tests share: pseudo-terminals standing in for serial
//! ports, emulators of the ProLAN-202 keypad and the ProLAN-501 receiver on
//! their master side, the `epm-agent` binary run against a configuration in
//! a temporary folder, and read-only queries of its store.
//!
//! An emulator speaks the device side of the codecs (`encode_inbound`,
//! `decode_outbound`), so it speaks exactly what the agent's drivers decode.
//! Every wait here has a deadline; a wait that runs out panics with what it
//! waited for, what it saw instead, and the tail of every agent's stderr.

// Each test crate includes this module and uses a different part of it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{
    mpsc, Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use epm_agent::protocol::{prolan202, prolan501};
use epm_agent::protocol::{Heartbeat, Identity, Inbound, Outbound, Press, UnitId};
use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::signal::Signal;
use nix::sys::termios::{self, SetArg};
use nix::unistd::Pid;
use rusqlite::{Connection, OpenFlags};
use tempfile::TempDir;

/// The keypad serial of the spec's worked examples.
pub const KEYPAD_SERIAL: UnitId = UnitId(0x202A_0F31);
/// The receiver id of the spec's worked examples.
pub const RECEIVER_ID: UnitId = UnitId(0x5010_00A7);

/// How long the agent may take to open a port once it is started,
/// restarted or the port replugged (the emulator's QUERY), and to acknowledge
/// a press or a short burst of presses on a running connection.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a change may take to reach a device's `devices` row: its state
/// is saved at once on a connect or disconnect, its counters other than
/// presses (duplicates, bad frames, noise) with the state about once a
/// second, and one last time on a clean stop.
pub const COUNTERS_TIMEOUT: Duration = Duration::from_secs(5);

/// How often store waits look again.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// How many lines of each agent's stderr a failure shows.
const STDERR_TAIL_LINES: usize = 60;
/// Longest piece of a frame written at once when frames are split.
const MAX_PIECE: usize = 8;
/// A write that makes no progress for this long fails the emulator.
const WRITE_STALL_LIMIT: Duration = Duration::from_secs(5);

/// A ProLAN-202 press as the keypad sends it.
pub fn keypad_press(key: u8, seq: u16) -> Press {
    Press {
        unit: KEYPAD_SERIAL,
        key,
        seq,
        rssi: None,
        battery: None,
    }
}

/// A ProLAN-301 remote's press as the receiver forwards it; a `battery` of
/// `None` goes out as 255 (unknown).
pub fn radio_press(remote: UnitId, key: u8, counter: u16, rssi: i8, battery: Option<u8>) -> Press {
    Press {
        unit: remote,
        key,
        seq: counter,
        rssi: Some(rssi),
        battery,
    }
}

// ---------------------------------------------------------------------------
// The test folder, the configuration, the agent process
// ---------------------------------------------------------------------------

/// A temporary folder holding the configuration, the store, the port
/// symlinks and the agents' stderr; removed when dropped.
pub struct TestDir {
    temp: TempDir,
    diagnostics: Diagnostics,
    /// Held for the test's life: see [`whole_machine`].
    _machine: MachineShare,
}

/// The machine the tests share. A test that loads all of it (a flood at
/// full speed) takes it whole and runs alone; every other test that runs an
/// agent shares it, so its timings are not measured beside a flood.
static MACHINE: RwLock<()> = RwLock::new(());

/// A share of [`MACHINE`], released when dropped.
pub enum MachineShare {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Whole(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

/// Waits until no test holds the machine whole, then shares it.
pub fn shared_machine() -> MachineShare {
    MachineShare::Shared(MACHINE.read().unwrap_or_else(PoisonError::into_inner))
}

/// Waits until no other test holds any of the machine, then holds it all.
pub fn whole_machine() -> MachineShare {
    MachineShare::Whole(MACHINE.write().unwrap_or_else(PoisonError::into_inner))
}

/// One `[[device]]` table.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    pub name: String,
    /// `prolan-202` or `prolan-501`.
    pub model: &'static str,
    pub port: PathBuf,
    pub question: String,
    pub keymap: Vec<(u8, String)>,
    pub min_interval_s: f64,
}

/// The tails of the stderr of every agent started in a test folder, for
/// failure messages.
#[derive(Clone, Default)]
pub struct Diagnostics {
    logs: Arc<Mutex<Vec<PathBuf>>>,
}

/// A running `epm-agent run`. Dropping it kills it (SIGKILL).
pub struct Agent {
    child: Child,
    diagnostics: Diagnostics,
}

impl TestDir {
    pub fn new() -> TestDir {
        TestDir::with(shared_machine())
    }

    /// A test folder for a test that loads the whole machine: it waits for
    /// the others and runs alone.
    pub fn alone() -> TestDir {
        TestDir::with(whole_machine())
    }

    fn with(machine: MachineShare) -> TestDir {
        let temp = tempfile::Builder::new()
            .prefix("epm-agent-test-")
            .tempdir()
            .expect("cannot create a temporary folder");
        fs::create_dir(temp.path().join("ports")).expect("cannot create the ports folder");
        TestDir {
            temp,
            diagnostics: Diagnostics::default(),
            _machine: machine,
        }
    }

    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    /// The agent's `data_dir`; the store is `epm-agent.db` inside it.
    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    pub fn diagnostics(&self) -> &Diagnostics {
        &self.diagnostics
    }

    /// Starts a keypad emulator whose port appears at `ports/<name>`.
    pub fn keypad(&self, name: &str, options: EmulatorOptions) -> Emulator {
        Emulator::start(
            DeviceKind::Keypad,
            name,
            &self.path().join("ports").join(name),
            options,
            self.diagnostics.clone(),
        )
    }

    /// Starts a receiver emulator whose port appears at `ports/<name>`.
    pub fn receiver(&self, name: &str, options: EmulatorOptions) -> Emulator {
        Emulator::start(
            DeviceKind::Receiver,
            name,
            &self.path().join("ports").join(name),
            options,
            self.diagnostics.clone(),
        )
    }

    /// Writes `epm-agent.toml` for `devices`, with debug logging.
    pub fn write_config(&self, devices: &[DeviceConfig]) -> PathBuf {
        let mut text = format!(
            "[agent]\nid = \"e2e-test\"\ndata_dir = {}\n",
            toml_string(&self.data_dir().to_string_lossy())
        );
        for device in devices {
            let keymap: Vec<String> = device
                .keymap
                .iter()
                .map(|(key, answer)| format!("{key} = {}", toml_string(answer)))
                .collect();
            text.push_str("\n[[device]]\n");
            text.push_str(&format!("name = {}\n", toml_string(&device.name)));
            text.push_str(&format!("model = {}\n", toml_string(device.model)));
            let port = device.port.to_string_lossy();
            text.push_str(&format!("port = {}\n", toml_string(&port)));
            text.push_str(&format!("question = {}\n", toml_string(&device.question)));
            text.push_str(&format!("keymap = {{ {} }}\n", keymap.join(", ")));
            text.push_str(&format!("min_interval_s = {:?}\n", device.min_interval_s));
        }
        text.push_str("\n[log]\nlevel = \"debug\"\n");
        let path = self.path().join("epm-agent.toml");
        fs::write(&path, text).expect("cannot write the configuration");
        path
    }

    /// Starts `epm-agent run --config <config>`, its stderr going to
    /// `agent-<n>.stderr` in this folder.
    pub fn spawn_agent(&self, config: &Path) -> Agent {
        let stderr_path = self.path().join(format!(
            "agent-{}.stderr",
            lock(&self.diagnostics.logs).len()
        ));
        let stderr = File::create(&stderr_path).expect("cannot create the agent's stderr file");
        let child = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("EPM_AGENT_CONFIG")
            // Plain text: the log is read in failure messages, not a terminal.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("cannot start the epm-agent binary");
        lock(&self.diagnostics.logs).push(stderr_path);
        Agent {
            child,
            diagnostics: self.diagnostics.clone(),
        }
    }

    /// Starts the agent on `config` and waits (at most [`START_TIMEOUT`])
    /// until it has opened the port of every emulator in `emulators`, each
    /// for the first time.
    pub fn start_agent(&self, config: &Path, emulators: &[&Emulator]) -> Agent {
        let agent = self.spawn_agent(config);
        for emulator in emulators {
            emulator.wait_for_query(1, START_TIMEOUT);
        }
        agent
    }

    /// Polls `probe` every 50 ms until it answers `Ok`; after `timeout`,
    /// fails with `what`, its last answer and the agents' stderr.
    pub fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut probe: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            match probe() {
                Ok(value) => return value,
                Err(last) if Instant::now() >= deadline => self.diagnostics.fail(format!(
                    "timed out after {timeout:?} waiting for {what}; last seen: {last}"
                )),
                Err(_) => std::thread::sleep(POLL_EVERY),
            }
        }
    }

    /// Waits until the store holds at least `count` events, and returns them.
    pub fn wait_for_events(&self, count: usize, timeout: Duration) -> Vec<EventRow> {
        self.wait_until(timeout, &format!("{count} events in the store"), || {
            let events = events(&self.data_dir())?;
            if events.len() >= count {
                Ok(events)
            } else {
                Err(format!("{} events", events.len()))
            }
        })
    }

    /// Waits until the `devices` row of `name` satisfies `check`.
    pub fn wait_for_device(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        check: impl Fn(&DeviceRow) -> bool,
    ) -> DeviceRow {
        self.wait_until(timeout, &format!("device {name}: {what}"), || {
            let row = device_row(&self.data_dir(), name)?;
            if check(&row) {
                Ok(row)
            } else {
                Err(format!("{row:?}"))
            }
        })
    }

    /// The events in store order; fails the test if the store cannot be read.
    pub fn events(&self) -> Vec<EventRow> {
        events(&self.data_dir()).unwrap_or_else(|error| self.diagnostics.fail(error))
    }

    /// The `devices` row of `name`; fails the test if there is none.
    pub fn device(&self, name: &str) -> DeviceRow {
        device_row(&self.data_dir(), name).unwrap_or_else(|error| self.diagnostics.fail(error))
    }
}

impl DeviceConfig {
    /// The `[[device]]` table of `emulator`: named after it, of its model, on
    /// its port, with no minimum interval between presses.
    pub fn of(emulator: &Emulator, question: &str, keymap: Vec<(u8, String)>) -> DeviceConfig {
        DeviceConfig {
            name: emulator.name.clone(),
            model: match emulator.kind {
                DeviceKind::Keypad => "prolan-202",
                DeviceKind::Receiver => "prolan-501",
            },
            port: emulator.port_path.clone(),
            question: question.into(),
            keymap,
            min_interval_s: 0.0,
        }
    }

    /// A keymap from `(key, answer)` pairs.
    pub fn keymap(pairs: &[(u8, &str)]) -> Vec<(u8, String)> {
        pairs
            .iter()
            .map(|(key, answer)| (*key, answer.to_string()))
            .collect()
    }
}

impl Diagnostics {
    /// The last lines of every agent's stderr.
    pub fn report(&self) -> String {
        let mut report = String::new();
        for path in lock(&self.logs).iter() {
            let text =
                fs::read_to_string(path).unwrap_or_else(|error| format!("(cannot read: {error})"));
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..];
            report.push_str(&format!(
                "\n--- {} (last {} of {} lines) ---\n{}\n",
                path.display(),
                tail.len(),
                lines.len(),
                tail.join("\n")
            ));
        }
        if report.is_empty() {
            report.push_str("\n(no agent was started)");
        }
        report
    }

    pub fn fail(&self, message: impl fmt::Display) -> ! {
        panic!("{message}\n{}", self.report())
    }
}

impl Agent {
    /// `kill -9`, and reaps the process: when this returns, the agent's
    /// ports and store are closed.
    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        self.child.kill().expect("cannot SIGKILL the agent");
        self.child.wait().expect("cannot reap the agent");
    }

    /// SIGTERM, then waits (at most 10 s) for the agent to finish its commits
    /// and exit.
    pub fn stop(&mut self) -> ExitStatus {
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM)
            .expect("cannot SIGTERM the agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("cannot poll the agent") {
                return status;
            }
            if Instant::now() >= deadline {
                self.diagnostics
                    .fail("the agent did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// Sends `signal` (SIGHUP to reload the configuration).
    pub fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), signal)
            .expect("cannot signal the agent");
    }

    /// Fails the test if the agent has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("cannot poll the agent") {
            self.diagnostics.fail(format!("the agent exited: {status}"));
        }
    }

    /// Fails the test if the agent has exited already, or if it does not exit
    /// successfully on SIGTERM (see [`Agent::stop`]).
    pub fn stop_cleanly(&mut self) {
        self.assert_running();
        let status = self.stop();
        if !status.success() {
            self.diagnostics
                .fail(format!("the agent did not stop cleanly: {status}"));
        }
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

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

// ---------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------

/// One row of `events`, the columns the tests check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRow {
    pub id: String,
    pub device: String,
    pub model: String,
    pub unit: String,
    pub key: u8,
    pub answer: Option<String>,
    pub question: Option<String>,
    pub seq: u16,
    pub rssi: Option<i8>,
    pub battery: Option<u8>,
    pub suppressed: bool,
}

/// One row of `devices`, the columns the tests check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRow {
    pub name: String,
    pub model: String,
    pub state: String,
    pub hardware_id: Option<String>,
    pub presses: i64,
    pub duplicates: i64,
    pub bad_frames: i64,
    pub noise_bytes: i64,
    pub reconnects: i64,
}

/// Opens the store read-only (it is WAL: reading never blocks the agent).
/// `<dir>/agent.toml`: one simulator pressing 10 times a second, its store
/// in `data_dir`, then `more` (further tables).
pub fn simulator_config(dir: &Path, data_dir: &Path, more: &str) -> PathBuf {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nid = \"t\"\ndata_dir = \"{}\"\n\n[[device]]\nname = \"sim\"\nmodel = \"simulator\"\nsim_presses_per_min = 600\n{more}",
            data_dir.display()
        ),
    )
    .expect("config");
    config
}

pub fn open_store(data_dir: &Path) -> Result<Connection, String> {
    let path = data_dir.join("epm-agent.db");
    if !path.exists() {
        return Err(format!("{} does not exist yet", path.display()));
    }
    let connection = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|error| format!("cannot open {}: {error}", path.display()))?;
    connection
        .busy_timeout(Duration::from_secs(2))
        .map_err(|error| format!("cannot set a busy timeout: {error}"))?;
    Ok(connection)
}

/// Every press, in store order (agent status events are left out).
pub fn events(data_dir: &Path) -> Result<Vec<EventRow>, String> {
    let connection = open_store(data_dir)?;
    let query = || -> rusqlite::Result<Vec<EventRow>> {
        let mut statement = connection.prepare(
            "SELECT id, device, model, unit, key, answer, question, seq, rssi, battery, suppressed
             FROM events WHERE type = 'press' ORDER BY seqno",
        )?;
        let rows = statement.query_map([], |row| {
            Ok(EventRow {
                id: row.get(0)?,
                device: row.get(1)?,
                model: row.get(2)?,
                unit: row.get(3)?,
                key: row.get(4)?,
                answer: row.get(5)?,
                question: row.get(6)?,
                seq: row.get(7)?,
                rssi: row.get(8)?,
                battery: row.get(9)?,
                suppressed: row.get(10)?,
            })
        })?;
        rows.collect()
    };
    query().map_err(|error| format!("cannot read events: {error}"))
}

/// The `devices` row of `name`.
pub fn device_row(data_dir: &Path, name: &str) -> Result<DeviceRow, String> {
    let connection = open_store(data_dir)?;
    connection
        .query_row(
            "SELECT name, model, state, hardware_id, presses, duplicates, bad_frames, noise_bytes,
                    reconnects
             FROM devices WHERE name = ?1",
            [name],
            |row| {
                Ok(DeviceRow {
                    name: row.get(0)?,
                    model: row.get(1)?,
                    state: row.get(2)?,
                    hardware_id: row.get(3)?,
                    presses: row.get(4)?,
                    duplicates: row.get(5)?,
                    bad_frames: row.get(6)?,
                    noise_bytes: row.get(7)?,
                    reconnects: row.get(8)?,
                })
            },
        )
        .map_err(|error| format!("cannot read device {name}: {error}"))
}

/// Fails with a description of every repeated id and every (device, unit,
/// seq) stored more than once.
pub fn assert_nothing_stored_twice(events: &[EventRow], diagnostics: &Diagnostics) {
    let mut ids: Vec<&str> = events.iter().map(|event| event.id.as_str()).collect();
    ids.sort_unstable();
    let repeated_ids: Vec<&str> = ids
        .windows(2)
        .filter(|pair| pair[0] == pair[1])
        .map(|pair| pair[0])
        .collect();
    let mut presses: Vec<(&str, &str, u16)> = events
        .iter()
        .map(|event| (event.device.as_str(), event.unit.as_str(), event.seq))
        .collect();
    presses.sort_unstable();
    let repeated_presses: Vec<_> = presses
        .windows(2)
        .filter(|pair| pair[0] == pair[1])
        .map(|pair| pair[0])
        .collect();
    if !repeated_ids.is_empty() || !repeated_presses.is_empty() {
        diagnostics.fail(format!(
            "stored twice: ids {repeated_ids:?}, (device, unit, seq) {repeated_presses:?}"
        ));
    }
}

// ---------------------------------------------------------------------------
// Pseudo-terminals
// ---------------------------------------------------------------------------

/// A pseudo-terminal pair in raw mode. The agent opens the slave by its path;
/// the emulator talks through the master (non-blocking).
///
/// The emulator keeps its own slave descriptor open for the life of the
/// pair. That keeps the terminal (its raw mode, the bytes it buffers) alive
/// while no agent has it open, e.g. between a `kill -9` and the restart, as
/// a USB device's port stays while the host program restarts. Closing the
/// master hangs the slave up: the agent reads end-of-file, as on an unplug.
pub struct Pty {
    master: File,
    slave: File,
    slave_path: PathBuf,
}

impl Pty {
    /// Opens a pair. Both descriptors are close-on-exec from the start, so an
    /// agent spawned meanwhile by a parallel test inherits neither (an
    /// inherited master would keep the terminal alive after an unplug).
    pub fn open() -> io::Result<Pty> {
        let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
        nix::pty::grantpt(&master)?;
        nix::pty::unlockpt(&master)?;
        let slave_path = PathBuf::from(nix::pty::ptsname_r(&master)?);
        // std opens with O_CLOEXEC.
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY)
            .open(&slave_path)?;
        // Raw before anyone else can open it: no echo of what the device
        // sends, no line editing, no CR/LF translation.
        let mut settings = termios::tcgetattr(slave.as_fd())?;
        termios::cfmakeraw(&mut settings);
        termios::tcsetattr(slave.as_fd(), SetArg::TCSANOW, &settings)?;
        let master = File::from(std::os::fd::OwnedFd::from(master));
        nix::fcntl::fcntl(master.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok(Pty {
            master,
            slave,
            slave_path,
        })
    }

    pub fn slave_path(&self) -> &Path {
        &self.slave_path
    }

    /// The device's side (non-blocking): what is written here the agent
    /// reads from the slave.
    pub fn master(&self) -> &File {
        &self.master
    }

    /// Clears the exclusive-open flag the agent set (TIOCEXCL) on the slave.
    /// On real hardware the last close clears it; here the emulator's own
    /// slave descriptor keeps the terminal open, so after a `kill -9` a
    /// restarted agent that is not root would get EBUSY without this.
    pub fn release_exclusive(&self) -> io::Result<()> {
        // SAFETY: TIOCNXCL takes no argument; the descriptor is open and
        // owned by `self` for the whole call.
        let result = unsafe { nix::libc::ioctl(self.slave.as_raw_fd(), nix::libc::TIOCNXCL) };
        if result == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Points `link` at `target`, replacing any previous link atomically (a new
/// link under a temporary name, renamed over the old one), as udev does with
/// `/dev/serial/by-id` names.
pub fn replace_symlink(target: &Path, link: &Path) -> io::Result<()> {
    let file_name = link.file_name().unwrap_or_default().to_string_lossy();
    let temporary = link.with_file_name(format!(".{file_name}.new"));
    let _ = fs::remove_file(&temporary);
    std::os::unix::fs::symlink(target, &temporary)?;
    fs::rename(&temporary, link)
}

// ---------------------------------------------------------------------------
// Device emulators
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// ProLAN-202: ASCII lines; repeats its most recent `K` line once on a
    /// new connection.
    Keypad,
    /// ProLAN-501: binary frames; forwards every radio press 3 times.
    Receiver,
}

/// How an emulator behaves on the wire.
#[derive(Clone, Debug)]
pub struct EmulatorOptions {
    /// Keypad serial or receiver id.
    pub hardware_id: UnitId,
    pub heartbeat_every: Duration,
    /// Before each frame, up to this many random bytes of line noise (never
    /// the model's sync byte, so noise never starts a frame and never counts
    /// as a bad frame). 0: none.
    pub max_noise_bytes: usize,
    /// Write each frame in random pieces of 1 to 8 bytes with pauses of
    /// 50-600 µs, so the agent reads partial frames.
    pub split_frames: bool,
    /// Seed of the noise and the splitting: a failure can be replayed.
    pub seed: u64,
}

impl EmulatorOptions {
    /// A keypad with the spec's heartbeat period and a clean line.
    pub fn keypad() -> EmulatorOptions {
        EmulatorOptions {
            hardware_id: KEYPAD_SERIAL,
            heartbeat_every: Duration::from_secs(prolan202::HEARTBEAT_PERIOD_S),
            max_noise_bytes: 0,
            split_frames: false,
            seed: 1,
        }
    }

    /// A receiver with the spec's heartbeat period and a clean line.
    pub fn receiver() -> EmulatorOptions {
        EmulatorOptions {
            hardware_id: RECEIVER_ID,
            heartbeat_every: Duration::from_secs(prolan501::HEARTBEAT_PERIOD_S),
            max_noise_bytes: 0,
            split_frames: false,
            seed: 2,
        }
    }
}

/// What an emulator has seen and done, for the tests to wait on.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// When each QUERY / `Q` arrived: the agent sends one on every open.
    pub queries: Vec<Instant>,
    /// Every ACK received, in order; a keypad's ACK carries its own serial.
    pub acks: Vec<(UnitId, u16)>,
    /// Presses written completely, in order (a radio press once, however
    /// many copies).
    pub sent_presses: Vec<Press>,
    /// Radio copies written after the first one of each press.
    pub extra_copies: u64,
    /// Keypad presses repeated on a new connection.
    pub repeated_presses: Vec<Press>,
    /// Frames written with a wrong checksum or CRC.
    pub corrupted_frames: u64,
    /// Script steps not finished yet.
    pub queued_steps: usize,
    pub plugged: bool,
    /// When the current pseudo-terminal appeared at the port path.
    pub plugged_at: Option<Instant>,
    /// How many times the emulator was plugged in (1 at start).
    pub plugs: u64,
    /// A broken emulator (an IO error on the master) says why here.
    pub failure: Option<String>,
}

/// One emulated device on its own thread, talking through a pseudo-terminal
/// whose slave appears at a stable symlink path. Dropping it unplugs it.
pub struct Emulator {
    name: String,
    kind: DeviceKind,
    port_path: PathBuf,
    control: Option<mpsc::Sender<Control>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    diagnostics: Diagnostics,
}

impl Emulator {
    fn start(
        kind: DeviceKind,
        name: &str,
        port_path: &Path,
        options: EmulatorOptions,
        diagnostics: Diagnostics,
    ) -> Emulator {
        let shared = Arc::new(Shared::default());
        let (control, commands) = mpsc::channel();
        let mut device = Device {
            kind,
            options: options.clone(),
            port_path: port_path.to_path_buf(),
            pty: None,
            rng: fastrand::Rng::with_seed(options.seed),
            commands,
            shared: Arc::clone(&shared),
            inbound: BytesMut::new(),
            urgent: VecDeque::new(),
            script: VecDeque::new(),
            resume_at: Instant::now(),
            next_heartbeat: Instant::now() + options.heartbeat_every,
            started: Instant::now(),
            last_press_line: None,
            deaf: false,
        };
        if let Err(error) = device.plug() {
            diagnostics.fail(format!("{name}: cannot create a pseudo-terminal: {error}"));
        }
        let thread = std::thread::Builder::new()
            .name(format!("emulator-{name}"))
            .spawn(move || device.run())
            .expect("cannot start an emulator thread");
        Emulator {
            name: name.to_string(),
            kind,
            port_path: port_path.to_path_buf(),
            control: Some(control),
            shared,
            thread: Some(thread),
            diagnostics,
        }
    }

    /// The stable path the agent's configuration names.
    pub fn port_path(&self) -> &Path {
        &self.port_path
    }

    /// Queues a press: one `K` line, or three radio copies of a PRESS.
    pub fn press(&self, press: Press) {
        let mut frame = BytesMut::new();
        encode(self.kind, &Inbound::Press(press), &mut frame);
        let mut steps = vec![Step::Frame {
            bytes: frame.to_vec(),
            record: Record::Press(press),
        }];
        if self.kind == DeviceKind::Receiver {
            for _ in 1..3 {
                steps.push(Step::Frame {
                    bytes: frame.to_vec(),
                    record: Record::ExtraCopy,
                });
            }
        }
        self.send(Control::Queue(steps));
    }

    /// Queues `press` with a wrong checksum (keypad) or CRC (receiver): a
    /// frame the agent must count as bad and never store.
    ///
    /// A corrupted receiver frame must hold no `A5` after its sync byte: the
    /// agent resynchronises from the byte after a bad sync, so an inner `A5`
    /// would be judged (and counted) as a frame of its own.
    pub fn corrupted_press(&self, press: Press) {
        let mut frame = BytesMut::new();
        encode(self.kind, &Inbound::Press(press), &mut frame);
        let mut bytes = frame.to_vec();
        match self.kind {
            DeviceKind::Keypad => {
                // `...*CS\r\n`: change the first checksum digit.
                let digit = bytes.len() - 4;
                bytes[digit] = if bytes[digit] == b'0' { b'1' } else { b'0' };
            }
            DeviceKind::Receiver => {
                let crc = bytes.len() - 2;
                if bytes[1..crc].contains(&prolan501::SYNC) {
                    self.diagnostics.fail(format!(
                        "{}: pick another corrupted press: {press:?} holds an A5 byte, \
                         which would count as a second bad frame",
                        self.name
                    ));
                }
                let original = [bytes[crc], bytes[crc + 1]];
                let corrupted = (1..=0xFFu8)
                    .map(|mask| [original[0] ^ mask, original[1] ^ mask])
                    .find(|candidate| !candidate.contains(&prolan501::SYNC))
                    .expect("some mask keeps both CRC bytes clear of A5");
                bytes[crc..].copy_from_slice(&corrupted);
            }
        }
        self.send(Control::Queue(vec![Step::Frame {
            bytes,
            record: Record::Corrupted,
        }]));
    }

    /// Queues a pause between the frames queued before and after it
    /// (heartbeats and replies to the host still go out meanwhile).
    pub fn pause(&self, duration: Duration) {
        self.send(Control::Queue(vec![Step::Pause(duration)]));
    }

    /// From now on reads nothing the host writes, so the host's writes
    /// fill the pseudo-terminal and block: a device that does not read.
    pub fn stop_reading(&self) {
        self.send(Control::Deaf(true));
        self.sync();
    }

    /// Drops whatever is still queued (a frame being written is finished
    /// first), and returns once the host's pending bytes have been read.
    pub fn stop_sending(&self) {
        self.send(Control::ClearQueue);
        self.sync();
    }

    /// Returns once the emulator has handled every command sent before this
    /// call and read what the host wrote so far.
    pub fn sync(&self) {
        let (done, finished) = mpsc::channel();
        self.send(Control::Sync(done));
        if finished.recv_timeout(Duration::from_secs(10)).is_err() {
            self.diagnostics.fail(format!(
                "{}: the emulator thread did not answer within 10 s",
                self.name
            ));
        }
    }

    /// See [`Pty::release_exclusive`]: call after killing the agent.
    pub fn release_exclusive(&self) {
        self.send(Control::ReleaseExclusive);
        self.sync();
    }

    /// Removes the port path and closes the pseudo-terminal: the agent reads
    /// end-of-file and cannot reopen the path.
    pub fn unplug(&self) {
        self.send(Control::Unplug);
        self.sync();
    }

    /// A new pseudo-terminal at the same port path. Returns the moment it
    /// appeared.
    pub fn replug(&self) -> Instant {
        self.send(Control::Replug);
        self.sync();
        let observed = self.observed();
        match observed.plugged_at {
            Some(at) if observed.plugged => at,
            _ => self
                .diagnostics
                .fail(format!("{}: replug failed: {observed:?}", self.name)),
        }
    }

    /// A copy of what the emulator has seen and done so far.
    pub fn observed(&self) -> Observed {
        lock(&self.shared.observed).clone()
    }

    /// Waits until `probe` answers `Some`; after `timeout`, fails with
    /// `what`, a summary of what the emulator saw and the agents' stderr.
    pub fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut probe: impl FnMut(&Observed) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut observed = lock(&self.shared.observed);
        loop {
            if let Some(value) = probe(&observed) {
                return value;
            }
            let now = Instant::now();
            if observed.failure.is_some() || now >= deadline {
                let summary = observed.summary();
                drop(observed);
                self.diagnostics.fail(format!(
                    "{}: timed out after {timeout:?} waiting for {what}; {summary}",
                    self.name
                ));
            }
            observed = self
                .shared
                .changed
                .wait_timeout(observed, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits for the `count`-th QUERY since the emulator started; returns
    /// when it arrived.
    pub fn wait_for_query(&self, count: usize, timeout: Duration) -> Instant {
        self.wait_until(timeout, &format!("query number {count}"), |observed| {
            observed.queries.get(count - 1).copied()
        })
    }

    /// Waits until at least `count` ACKs have arrived.
    pub fn wait_for_acks(&self, count: usize, timeout: Duration) -> Vec<(UnitId, u16)> {
        self.wait_until(timeout, &format!("{count} acks"), |observed| {
            (observed.acks.len() >= count).then(|| observed.acks.clone())
        })
    }

    /// Waits for the ACK of this (unit, seq).
    pub fn wait_for_ack(&self, unit: UnitId, seq: u16, timeout: Duration) {
        self.wait_until(
            timeout,
            &format!("the ack of {unit} seq {seq}"),
            |observed| observed.acks.contains(&(unit, seq)).then_some(()),
        )
    }

    /// Waits until every queued step has been written.
    pub fn wait_until_sent(&self, timeout: Duration) -> Observed {
        // Queued steps are counted once the thread takes the queue commands.
        self.sync();
        self.wait_until(timeout, "every queued frame written", |observed| {
            (observed.queued_steps == 0).then(|| observed.clone())
        })
    }

    fn send(&self, control: Control) {
        let sent = self.control.as_ref().map(|sender| sender.send(control));
        if !matches!(sent, Some(Ok(()))) {
            let failure = self.observed().failure;
            self.diagnostics.fail(format!(
                "{}: the emulator thread has stopped ({failure:?})",
                self.name
            ));
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // Closing the channel stops the thread, which unplugs the device.
        drop(self.control.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Observed {
    fn summary(&self) -> String {
        format!(
            "queries: {}, acks: {} (last {:?}), presses sent: {} (last {:?}), \
             extra copies: {}, repeated: {}, corrupted: {}, steps queued: {}, \
             plugged: {}, failure: {:?}",
            self.queries.len(),
            self.acks.len(),
            self.acks.last(),
            self.sent_presses.len(),
            self.sent_presses.last(),
            self.extra_copies,
            self.repeated_presses.len(),
            self.corrupted_frames,
            self.queued_steps,
            self.plugged,
            self.failure,
        )
    }
}

#[derive(Default)]
struct Shared {
    observed: Mutex<Observed>,
    changed: Condvar,
}

impl Shared {
    fn update(&self, change: impl FnOnce(&mut Observed)) {
        change(&mut lock(&self.observed));
        self.changed.notify_all();
    }
}

enum Control {
    Queue(Vec<Step>),
    ClearQueue,
    Unplug,
    Replug,
    ReleaseExclusive,
    Sync(mpsc::Sender<()>),
    /// Stop (true) or go on (false) reading what the host writes.
    Deaf(bool),
}

enum Step {
    Frame { bytes: Vec<u8>, record: Record },
    Pause(Duration),
}

/// What writing a frame means for [`Observed`].
#[derive(Clone, Copy)]
enum Record {
    Nothing,
    Press(Press),
    ExtraCopy,
    Repeat(Press),
    Corrupted,
}

/// The emulator thread's side.
struct Device {
    kind: DeviceKind,
    options: EmulatorOptions,
    port_path: PathBuf,
    pty: Option<Pty>,
    rng: fastrand::Rng,
    commands: mpsc::Receiver<Control>,
    shared: Arc<Shared>,
    /// What the host wrote, not yet decoded.
    inbound: BytesMut,
    /// Replies and heartbeats: written before the script, between frames.
    urgent: VecDeque<(Vec<u8>, Record)>,
    /// What the test queued.
    script: VecDeque<Step>,
    /// The script is paused until then.
    resume_at: Instant,
    next_heartbeat: Instant,
    started: Instant,
    /// The keypad's most recent `K` line, repeated on a new connection.
    last_press_line: Option<(Vec<u8>, Press)>,
    /// Reads nothing the host writes (a stalled adapter, a busy radio).
    deaf: bool,
}

impl Device {
    fn run(mut self) {
        loop {
            let mut syncs = Vec::new();
            loop {
                match self.commands.try_recv() {
                    Ok(Control::Sync(done)) => syncs.push(done),
                    Ok(control) => self.handle(control),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.unplug();
                        return;
                    }
                }
            }
            if self.pty.is_none() {
                for done in syncs {
                    let _ = done.send(());
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            if !self.deaf {
                self.read_host();
            }
            for done in syncs {
                let _ = done.send(());
            }
            let now = Instant::now();
            if now >= self.next_heartbeat {
                let uptime_s = self.started.elapsed().as_secs() as u32;
                let heartbeat = Heartbeat {
                    unit: (self.kind == DeviceKind::Keypad).then_some(self.options.hardware_id),
                    uptime_s,
                    remotes_heard: (self.kind == DeviceKind::Receiver).then_some(3),
                };
                self.queue_urgent(&Inbound::Heartbeat(heartbeat), Record::Nothing);
                self.next_heartbeat = now + self.options.heartbeat_every;
            }
            if let Some((bytes, record)) = self.urgent.pop_front() {
                self.write_frame(&bytes, record);
                continue;
            }
            if now < self.resume_at {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            match self.script.pop_front() {
                Some(Step::Frame { bytes, record }) => {
                    self.write_frame(&bytes, record);
                    self.shared.update(|observed| observed.queued_steps -= 1);
                }
                Some(Step::Pause(duration)) => {
                    self.resume_at = now + duration;
                    self.shared.update(|observed| observed.queued_steps -= 1);
                }
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    fn handle(&mut self, control: Control) {
        match control {
            Control::Queue(steps) => {
                self.shared
                    .update(|observed| observed.queued_steps += steps.len());
                self.script.extend(steps);
            }
            Control::ClearQueue => {
                self.script.clear();
                self.resume_at = Instant::now();
                self.shared.update(|observed| observed.queued_steps = 0);
            }
            Control::Unplug => self.unplug(),
            Control::Deaf(deaf) => self.deaf = deaf,
            Control::Replug => {
                if let Err(error) = self.plug() {
                    self.fail(format!("cannot replug: {error}"));
                }
            }
            Control::ReleaseExclusive => {
                if let Some(Err(error)) = self.pty.as_ref().map(Pty::release_exclusive) {
                    self.fail(format!("cannot clear the exclusive-open flag: {error}"));
                }
            }
            Control::Sync(done) => {
                let _ = done.send(());
            }
        }
    }

    /// A new pseudo-terminal at the port path.
    fn plug(&mut self) -> io::Result<()> {
        let pty = Pty::open()?;
        replace_symlink(pty.slave_path(), &self.port_path)?;
        self.pty = Some(pty);
        self.inbound.clear();
        self.shared.update(|observed| {
            observed.plugged = true;
            observed.plugged_at = Some(Instant::now());
            observed.plugs += 1;
        });
        Ok(())
    }

    /// The path goes first, so the agent never reopens a stale path (a
    /// parallel test may get the same /dev/pts number next).
    fn unplug(&mut self) {
        let _ = fs::remove_file(&self.port_path);
        self.pty = None;
        self.urgent.clear();
        self.shared.update(|observed| observed.plugged = false);
    }

    fn queue_urgent(&mut self, message: &Inbound, record: Record) {
        let mut frame = BytesMut::new();
        encode(self.kind, message, &mut frame);
        self.urgent.push_back((frame.to_vec(), record));
    }

    /// Reads what the host wrote and answers it.
    fn read_host(&mut self) {
        let Some(pty) = self.pty.as_mut() else {
            return;
        };
        let mut chunk = [0u8; 4096];
        let failure = loop {
            match pty.master.read(&mut chunk) {
                Ok(0) => break None,
                Ok(count) => self.inbound.extend_from_slice(&chunk[..count]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break None,
                // No slave open: cannot happen while the emulator holds one.
                Err(error) if error.raw_os_error() == Some(nix::libc::EIO) => break None,
                Err(error) => break Some(format!("cannot read the master: {error}")),
            }
        };
        if let Some(failure) = failure {
            self.fail(failure);
        }
        while let Some(message) = match self.kind {
            DeviceKind::Keypad => prolan202::decode_outbound(&mut self.inbound),
            DeviceKind::Receiver => prolan501::decode_outbound(&mut self.inbound),
        } {
            match message {
                Outbound::Query => {
                    self.shared
                        .update(|observed| observed.queries.push(Instant::now()));
                    let identity = match self.kind {
                        DeviceKind::Keypad => Identity {
                            hardware_id: self.options.hardware_id,
                            model: "PL202".into(),
                            firmware: "1.4".into(),
                            radio_channel: None,
                        },
                        DeviceKind::Receiver => Identity {
                            hardware_id: self.options.hardware_id,
                            model: "PL501".into(),
                            firmware: "2.3".into(),
                            radio_channel: Some(4),
                        },
                    };
                    self.queue_urgent(&Inbound::Identity(identity), Record::Nothing);
                    // The host opens the port before every QUERY: for the
                    // keypad that is a new connection (a pty has no DTR to
                    // watch), after which it repeats its last press once.
                    if let Some((line, press)) = self.last_press_line.clone() {
                        self.urgent.push_back((line, Record::Repeat(press)));
                    }
                }
                Outbound::Ack { unit, seq } => {
                    let unit = match self.kind {
                        DeviceKind::Keypad => self.options.hardware_id,
                        DeviceKind::Receiver => unit,
                    };
                    self.shared
                        .update(|observed| observed.acks.push((unit, seq)));
                }
            }
        }
    }

    /// Writes one frame (with its noise, in pieces if so configured) and
    /// records it once it is all out.
    fn write_frame(&mut self, frame: &[u8], record: Record) {
        let sync = match self.kind {
            DeviceKind::Keypad => b'$',
            DeviceKind::Receiver => prolan501::SYNC,
        };
        let mut bytes = Vec::with_capacity(frame.len() + self.options.max_noise_bytes);
        if self.options.max_noise_bytes > 0 {
            for _ in 0..self.rng.usize(0..=self.options.max_noise_bytes) {
                bytes.push(loop {
                    let byte = self.rng.u8(..);
                    if byte != sync {
                        break byte;
                    }
                });
            }
        }
        bytes.extend_from_slice(frame);
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let piece = if self.options.split_frames {
                self.rng.usize(1..=rest.len().min(MAX_PIECE))
            } else {
                rest.len()
            };
            if let Err(error) = self.write_all(&rest[..piece]) {
                self.fail(error);
                return;
            }
            rest = &rest[piece..];
            if !rest.is_empty() {
                std::thread::sleep(Duration::from_micros(self.rng.u64(50..=600)));
            }
        }
        if let Record::Press(press) = record {
            if self.kind == DeviceKind::Keypad {
                self.last_press_line = Some((frame.to_vec(), press));
            }
        }
        self.shared.update(|observed| match record {
            Record::Nothing => {}
            Record::Press(press) => observed.sent_presses.push(press),
            Record::ExtraCopy => observed.extra_copies += 1,
            Record::Repeat(press) => observed.repeated_presses.push(press),
            Record::Corrupted => observed.corrupted_frames += 1,
        });
    }

    fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        let mut stalled_since = Instant::now();
        while !bytes.is_empty() {
            let Some(pty) = self.pty.as_mut() else {
                return Err("write while unplugged".into());
            };
            match pty.master.write(bytes) {
                Ok(count) => {
                    bytes = &bytes[count..];
                    stalled_since = Instant::now();
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if stalled_since.elapsed() > WRITE_STALL_LIMIT {
                        return Err(format!(
                            "the terminal took no byte for {WRITE_STALL_LIMIT:?}"
                        ));
                    }
                    // The host may be waiting for room to write, too.
                    self.read_host();
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(error) => return Err(format!("cannot write the master: {error}")),
            }
        }
        Ok(())
    }

    fn fail(&mut self, failure: String) {
        self.shared.update(|observed| {
            observed.failure.get_or_insert(failure);
        });
    }
}

fn encode(kind: DeviceKind, message: &Inbound, out: &mut BytesMut) {
    match kind {
        DeviceKind::Keypad => prolan202::encode_inbound(message, out),
        DeviceKind::Receiver => prolan501::encode_inbound(message, out),
    }
}

/// Locks, ignoring poisoning: a test that panicked while holding the lock
/// must not turn the emulator's shutdown into a second panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

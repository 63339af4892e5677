//! The agent's health, as `epm-agent status` and the status events show
//! it: a typed [`Status`] read from the store (one read transaction; WAL
//! readers never block the daemon) and the health rules as a pure
//! [`judge`] of that snapshot, tested as a table.
//!
//! Health rules:
//! - critical: the daemon is not running (never ran, stopped, its process is
//!   gone, or its heartbeat is stale — a daemon that cannot write its store
//!   cannot write its heartbeat either), or the disk under the store is
//!   almost full;
//! - warning: a device is silent or disconnected, a sink is retrying or
//!   paused, the oldest undelivered press is older than 15 minutes, dead
//!   letters exist, or undelivered events alone exceed `max_size_mb`.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Settings;
use crate::daemon::HEARTBEAT_INTERVAL;
use crate::event::format_timestamp;
use crate::store::writer::WriterHealth;
pub use crate::store::UnitRow as UnitStatus;
use crate::store::{DeviceSnapshot, LinkState, SinkState, Snapshot, Store};

/// A heartbeat older than this many intervals means the daemon is stuck
/// or cannot write.
const STALE_HEARTBEATS: u32 = 3;
/// An undelivered press older than this is a warning.
const UNDELIVERED_WARNING_MINUTES: i64 = 15;
/// A recovered store is a warning for this long.
const RECOVERY_WARNING_DAYS: i64 = 7;
/// A clock jump is a warning for this long.
const CLOCK_WARNING_HOURS: i64 = 24;
/// Less free disk than this under the store is critical.
const LOW_DISK_BYTES: u64 = 50 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Ok,
    Warning,
    Critical,
}

impl Health {
    pub fn exit_code(self) -> u8 {
        match self {
            Health::Ok => 0,
            Health::Warning => 1,
            Health::Critical => 2,
        }
    }
}

/// Everything `status` knows, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Status {
    pub health: Health,
    /// Why the health is not ok, worst first.
    pub problems: Vec<String>,
    pub daemon: DaemonStatus,
    pub devices: Vec<DeviceStatus>,
    pub store: StoreStatus,
    pub sinks: Vec<SinkStatus>,
}

#[derive(Debug, Default, Serialize)]
pub struct DaemonStatus {
    pub running: bool,
    pub pid: Option<u32>,
    pub version: Option<String>,
    pub started_at: Option<String>,
    pub heartbeat_at: Option<String>,
    pub stopped_at: Option<String>,
    /// The last time the wall clock moved by more than a minute against
    /// the monotonic clock, and by how much.
    pub clock_jump_at: Option<String>,
    pub clock_jump_s: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct DeviceStatus {
    pub name: String,
    pub model: String,
    pub port: String,
    /// connected | silent | disconnected
    pub state: LinkState,
    pub state_since: Option<String>,
    pub hardware_id: Option<String>,
    pub firmware: Option<String>,
    pub last_frame_at: Option<String>,
    pub last_press_at: Option<String>,
    pub presses: u64,
    pub duplicates: u64,
    pub bad_frames: u64,
    pub unknown_frames: u64,
    pub reconnects: u64,
    /// ACKs dropped because the device did not read them in time.
    pub acks_dropped: u64,
    /// Bytes read that belonged to no frame (line noise, cut frames).
    pub noise_bytes: u64,
    pub last_error: Option<String>,
    pub units: Vec<UnitStatus>,
}

#[derive(Debug, Serialize)]
pub struct StoreStatus {
    pub path: String,
    pub events: u64,
    /// The database file and its write-ahead log.
    pub size_bytes: u64,
    pub max_size_bytes: u64,
    pub free_disk_bytes: Option<u64>,
    /// The oldest press some sink has not delivered yet.
    pub oldest_undelivered_at: Option<String>,
    pub over_cap_since: Option<String>,
    pub pruned_by_retention: u64,
    pub pruned_by_size: u64,
    /// Since when commits fail (disk full, I/O error), and the last error.
    pub write_failures_since: Option<String>,
    pub last_write_error: Option<String>,
    /// Presses dropped because the store could not be written and the
    /// memory backlog was full (cumulative, never reset).
    pub dropped_presses: u64,
    /// A damaged store found at start: when, where it was moved, and how
    /// many events were read back from it.
    pub recovered_at: Option<String>,
    pub damaged_file: Option<String>,
    pub salvaged_events: u64,
}

#[derive(Debug, Serialize)]
pub struct SinkStatus {
    pub name: String,
    /// ok | retrying | paused
    pub state: SinkState,
    pub pending: u64,
    pub delivered: u64,
    pub dead_letter: u64,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
}

/// What `status` learns outside the store, at the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Host {
    /// The process of the daemon's recorded pid exists.
    pub daemon_process_exists: bool,
    /// Free disk under the store, when it can be told.
    pub free_disk_bytes: Option<u64>,
}

/// What the health rules make of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub health: Health,
    /// Why the health is not ok, worst first.
    pub problems: Vec<String>,
    /// Not stopped, its process exists and its heartbeat is fresh.
    pub daemon_running: bool,
}

/// What a configured device shows before the agent has saved its row.
const NOT_STARTED: &str = "not started yet";

/// Reads the status from `store` as of `now` and judges its health.
pub fn read_status(
    settings: &Settings,
    store: &Store,
    now: DateTime<Utc>,
) -> Result<Status, crate::store::StoreError> {
    status_of(settings, store, now, None)
}

/// The status as the daemon itself sees it: the writer thread's own answer
/// is fresher than the store, which cannot record that it cannot be
/// written until it can again.
pub fn read_daemon_status(
    settings: &Settings,
    store: &Store,
    now: DateTime<Utc>,
    writer: &WriterHealth,
) -> Result<Status, crate::store::StoreError> {
    status_of(settings, store, now, Some(writer))
}

fn status_of(
    settings: &Settings,
    store: &Store,
    now: DateTime<Utc>,
    writer: Option<&WriterHealth>,
) -> Result<Status, crate::store::StoreError> {
    let devices: Vec<&str> = settings
        .devices
        .iter()
        .map(|device| device.name.as_str())
        .collect();
    let sinks: Vec<&str> = settings
        .sinks
        .iter()
        .map(|sink| sink.name.as_str())
        .collect();
    let mut snapshot = store.snapshot(&devices, &sinks)?;
    if let Some(since) = writer.and_then(|writer| writer.failing_since) {
        snapshot.store_state.write_failures_since = Some(format_timestamp(since));
        snapshot.store_state.last_write_error = writer.and_then(|writer| writer.last_error.clone());
    }
    let host = Host {
        daemon_process_exists: snapshot
            .daemon
            .as_ref()
            .and_then(|daemon| daemon.pid)
            .is_some_and(process_exists),
        free_disk_bytes: free_disk_bytes(&settings.agent.data_dir),
    };
    let verdict = judge(&snapshot, &host, settings, now);

    let daemon = snapshot
        .daemon
        .as_ref()
        .map_or_else(DaemonStatus::default, |daemon| DaemonStatus {
            running: verdict.daemon_running,
            pid: daemon.pid,
            version: daemon.version.clone(),
            started_at: daemon.started_at.clone(),
            heartbeat_at: daemon.heartbeat_at.clone(),
            stopped_at: daemon.stopped_at.clone(),
            clock_jump_at: daemon.clock_jump_at.clone(),
            clock_jump_s: daemon.clock_jump_s,
        });
    let devices = snapshot
        .devices
        .iter()
        .zip(&settings.devices)
        .map(|(device, configured)| device_status(device, configured.model.name()))
        .collect();
    let sinks = snapshot
        .sinks
        .iter()
        .map(|sink| {
            let row = sink.row.as_ref();
            let cursor = row.map_or(0, |row| row.delivered_seqno);
            SinkStatus {
                name: sink.name.clone(),
                state: row.map_or(SinkState::Ok, |row| row.state),
                // Events past a cursor are never deleted, so the seqnos count them.
                pending: u64::try_from(snapshot.last_seqno - cursor).unwrap_or(0),
                delivered: row.map_or(0, |row| row.delivered),
                dead_letter: sink.dead_letters,
                last_success_at: row.and_then(|row| row.last_success_at.clone()),
                last_error: row.and_then(|row| row.last_error.clone()),
            }
        })
        .collect();
    let state = &snapshot.store_state;
    let store_status = StoreStatus {
        path: store.path().display().to_string(),
        events: snapshot.event_count,
        size_bytes: file_size(store.path()) + file_size(&store.path().with_extension("db-wal")),
        max_size_bytes: settings.store.max_size_bytes,
        free_disk_bytes: host.free_disk_bytes,
        oldest_undelivered_at: oldest_undelivered(&snapshot).map(String::from),
        over_cap_since: state.over_cap_since.clone(),
        pruned_by_retention: state.pruned_by_retention,
        pruned_by_size: state.pruned_by_size,
        write_failures_since: state.write_failures_since.clone(),
        last_write_error: state.last_write_error.clone(),
        dropped_presses: state.dropped_presses,
        recovered_at: state.recovered_at.clone(),
        damaged_file: state.damaged_file.clone(),
        salvaged_events: state.salvaged_events,
    };
    Ok(Status {
        health: verdict.health,
        problems: verdict.problems,
        daemon,
        devices,
        store: store_status,
        sinks,
    })
}

/// The health rules (the module's doc lists them) over one snapshot, as
/// of `now`. Pure: the store, the process table and the disk were read
/// before.
pub fn judge(snapshot: &Snapshot, host: &Host, settings: &Settings, now: DateTime<Utc>) -> Verdict {
    let mut problems: Vec<(Health, String)> = Vec::new();

    let daemon_running = match &snapshot.daemon {
        None => {
            problems.push((
                Health::Critical,
                "the agent has never run with this store".into(),
            ));
            false
        }
        Some(daemon) => {
            let heartbeat_age = daemon
                .heartbeat_at
                .as_deref()
                .and_then(parse_time)
                .map(|at| now - at);
            let stale_after = chrono::Duration::from_std(HEARTBEAT_INTERVAL * STALE_HEARTBEATS)
                .unwrap_or(chrono::Duration::MAX);
            if let Some(stopped_at) = &daemon.stopped_at {
                problems.push((
                    Health::Critical,
                    format!("the agent is not running (stopped at {stopped_at})"),
                ));
                false
            } else if !host.daemon_process_exists {
                let since = daemon.heartbeat_at.as_deref().unwrap_or("an unknown time");
                problems.push((
                    Health::Critical,
                    format!("the agent is not running (it died; last heartbeat {since})"),
                ));
                false
            } else if heartbeat_age.is_none_or(|age| age > stale_after) {
                let seconds = heartbeat_age.map_or(-1, |age| age.num_seconds());
                problems.push((
                    Health::Critical,
                    format!(
                        "the agent (pid {}) has not written its heartbeat for {seconds} s: it is stuck or cannot write its store",
                        daemon.pid.unwrap_or(0)
                    ),
                ));
                false
            } else {
                true
            }
        }
    };

    // A stopped agent's devices and sinks keep their last state: only the
    // devices of a running one are judged.
    for device in snapshot.devices.iter().filter(|_| daemon_running) {
        let (state, last_error) = link_of(device);
        if state != LinkState::Connected {
            let detail = last_error
                .map(|error| format!(": {error}"))
                .unwrap_or_default();
            problems.push((
                Health::Warning,
                format!("device {} is {}{detail}", device.name, state.as_str()),
            ));
        } else if let Some(error) = last_error {
            // Connected and read, but something is wrong with it (it does
            // not take what the agent writes).
            problems.push((Health::Warning, format!("device {}: {error}", device.name)));
        }
    }

    for sink in &snapshot.sinks {
        let row = sink.row.as_ref();
        let state = row.map_or(SinkState::Ok, |row| row.state);
        if state != SinkState::Ok {
            let detail = row
                .and_then(|row| row.last_error.as_deref())
                .map(|error| format!(": {error}"))
                .unwrap_or_default();
            problems.push((
                Health::Warning,
                format!("sink {} is {}{detail}", sink.name, state.as_str()),
            ));
        }
        if sink.dead_letters > 0 {
            problems.push((
                Health::Warning,
                format!(
                    "sink {} has {} dead letter{} (`epm-agent deadletter list`)",
                    sink.name,
                    sink.dead_letters,
                    if sink.dead_letters == 1 { "" } else { "s" }
                ),
            ));
        }
    }
    if let Some(age) = oldest_undelivered(snapshot)
        .and_then(parse_time)
        .map(|at| now - at)
    {
        if age > chrono::Duration::minutes(UNDELIVERED_WARNING_MINUTES) {
            problems.push((
                Health::Warning,
                format!(
                    "the oldest undelivered press is {} minutes old",
                    age.num_minutes()
                ),
            ));
        }
    }

    let state = &snapshot.store_state;
    if let Some(since) = &state.write_failures_since {
        let error = state.last_write_error.as_deref().unwrap_or("unknown error");
        problems.push((
            Health::Critical,
            format!("the store cannot be written since {since} ({error}); presses are held in memory until it can"),
        ));
    }
    if let Some(at) = &state.recovered_at {
        let recent = parse_time(at)
            .is_some_and(|at| now - at < chrono::Duration::days(RECOVERY_WARNING_DAYS));
        if recent {
            problems.push((
                Health::Warning,
                format!(
                    "the store was damaged and replaced at {at}: {} events read back, the damaged file is kept at {}",
                    state.salvaged_events,
                    state.damaged_file.as_deref().unwrap_or("?")
                ),
            ));
        }
    }
    let clock_jump = snapshot
        .daemon
        .as_ref()
        .and_then(|daemon| daemon.clock_jump_at.as_ref().zip(daemon.clock_jump_s));
    if let Some((at, seconds)) = clock_jump {
        let recent = parse_time(at)
            .is_some_and(|at| (now - at).abs() < chrono::Duration::hours(CLOCK_WARNING_HOURS));
        if recent {
            problems.push((
                Health::Warning,
                format!("the system clock jumped by {seconds:+} s at {at} (event times around then may be off)"),
            ));
        }
    }
    if let Some(since) = &state.over_cap_since {
        problems.push((
            Health::Warning,
            format!("undelivered events alone exceed max_size_mb (since {since}); nothing is deleted until sinks catch up"),
        ));
    }
    if host
        .free_disk_bytes
        .is_some_and(|free| free < LOW_DISK_BYTES)
    {
        problems.push((
            Health::Critical,
            format!(
                "the disk under {} is almost full",
                settings.agent.data_dir.display()
            ),
        ));
    }

    // Stable: problems of one health keep the order they were found in.
    problems.sort_by_key(|(health, _)| std::cmp::Reverse(*health));
    Verdict {
        health: problems.first().map_or(Health::Ok, |(health, _)| *health),
        problems: problems.into_iter().map(|(_, problem)| problem).collect(),
        daemon_running,
    }
}

/// A device's link state and last error; a device without a row has not
/// opened its port yet.
fn link_of(device: &DeviceSnapshot) -> (LinkState, Option<&str>) {
    device
        .row
        .as_ref()
        .map_or((LinkState::Disconnected, Some(NOT_STARTED)), |row| {
            (row.state, row.last_error.as_deref())
        })
}

/// The `ts` of the oldest event some sink has not delivered yet.
fn oldest_undelivered(snapshot: &Snapshot) -> Option<&str> {
    snapshot
        .sinks
        .iter()
        .filter_map(|sink| sink.first_pending_ts.as_deref())
        .min()
}

fn device_status(device: &DeviceSnapshot, configured_model: &str) -> DeviceStatus {
    let (state, last_error) = link_of(device);
    let row = device.row.as_ref();
    let text = |field: fn(&crate::store::DeviceRow) -> &Option<String>| {
        row.and_then(|row| field(row).clone())
    };
    DeviceStatus {
        name: device.name.clone(),
        model: row.map_or_else(|| configured_model.to_string(), |row| row.model.clone()),
        port: row.map(|row| row.port.clone()).unwrap_or_default(),
        state,
        state_since: text(|row| &row.state_since),
        hardware_id: text(|row| &row.hardware_id),
        firmware: text(|row| &row.firmware),
        last_frame_at: text(|row| &row.last_frame_at),
        last_press_at: text(|row| &row.last_press_at),
        presses: row.map_or(0, |row| row.presses),
        duplicates: row.map_or(0, |row| row.duplicates),
        bad_frames: row.map_or(0, |row| row.bad_frames),
        unknown_frames: row.map_or(0, |row| row.unknown_frames),
        reconnects: row.map_or(0, |row| row.reconnects),
        acks_dropped: row.map_or(0, |row| row.acks_dropped),
        noise_bytes: row.map_or(0, |row| row.noise_bytes),
        last_error: last_error.map(String::from),
        units: device.units.clone(),
    }
}

/// An RFC 3339 time of the store.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |metadata| metadata.len())
}

#[cfg(unix)]
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence; EPERM means it exists under another user.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(errno) => errno == nix::errno::Errno::EPERM,
    }
}

#[cfg(not(unix))]
fn process_exists(_pid: u32) -> bool {
    // Without a cheap check here, the heartbeat's age decides.
    true
}

#[cfg(unix)]
fn free_disk_bytes(path: &Path) -> Option<u64> {
    let stats = nix::sys::statvfs::statvfs(path).ok()?;
    // The field types differ between Unix flavours (u64 on Linux).
    #[allow(clippy::useless_conversion)]
    let available = u64::from(stats.blocks_available());
    #[allow(clippy::useless_conversion)]
    let fragment = u64::from(stats.fragment_size());
    Some(available.saturating_mul(fragment))
}

#[cfg(windows)]
fn free_disk_bytes(path: &Path) -> Option<u64> {
    crate::windows::free_disk_bytes(path)
}

#[cfg(not(any(unix, windows)))]
fn free_disk_bytes(_path: &Path) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DaemonRow, DeviceRow, SinkRow, SinkSnapshot, StoreStateRow};

    const NOW: &str = "2026-11-22T12:00:00.000Z";

    /// A running agent with one connected device and one caught-up sink.
    fn healthy() -> (Snapshot, Host) {
        let snapshot = Snapshot {
            daemon: Some(DaemonRow {
                pid: Some(4242),
                version: Some("1.0.0".into()),
                started_at: Some("2026-11-22T08:00:00.000Z".into()),
                heartbeat_at: Some("2026-11-22T11:59:58.000Z".into()),
                ..DaemonRow::default()
            }),
            devices: vec![DeviceSnapshot {
                name: "entrance".into(),
                row: Some(DeviceRow {
                    name: "entrance".into(),
                    model: "prolan-501".into(),
                    port: "/dev/ttyACM0".into(),
                    state: LinkState::Connected,
                    state_since: None,
                    hardware_id: None,
                    firmware: None,
                    last_frame_at: None,
                    last_press_at: None,
                    presses: 0,
                    duplicates: 0,
                    bad_frames: 0,
                    unknown_frames: 0,
                    reconnects: 0,
                    last_error: None,
                    acks_dropped: 0,
                    noise_bytes: 0,
                }),
                units: Vec::new(),
            }],
            sinks: vec![SinkSnapshot {
                name: "backend".into(),
                row: Some(SinkRow {
                    name: "backend".into(),
                    delivered_seqno: 10,
                    delivered: 10,
                    state: SinkState::Ok,
                    last_success_at: None,
                    last_error: None,
                    in_flight: false,
                }),
                dead_letters: 0,
                first_pending_ts: None,
            }],
            last_seqno: 10,
            event_count: 10,
            store_state: StoreStateRow::default(),
        };
        let host = Host {
            daemon_process_exists: true,
            free_disk_bytes: Some(10 * LOW_DISK_BYTES),
        };
        (snapshot, host)
    }

    fn daemon(snapshot: &mut Snapshot) -> &mut DaemonRow {
        snapshot
            .daemon
            .as_mut()
            .expect("the healthy snapshot has a daemon")
    }

    fn device(snapshot: &mut Snapshot) -> &mut DeviceRow {
        snapshot.devices[0]
            .row
            .as_mut()
            .expect("the healthy snapshot has a device row")
    }

    fn sink(snapshot: &mut Snapshot) -> &mut SinkRow {
        snapshot.sinks[0]
            .row
            .as_mut()
            .expect("the healthy snapshot has a sink row")
    }

    type Change = fn(&mut Snapshot, &mut Host);

    fn check(name: &str, change: Change, expected: Health, expected_problems: &[&str]) {
        let settings = crate::config::parse(
            "[agent]\nid = \"t\"\ndata_dir = \"/srv/epm\"\n",
            Path::new("t.toml"),
        )
        .expect("a valid configuration");
        let (mut snapshot, mut host) = healthy();
        change(&mut snapshot, &mut host);
        let verdict = judge(&snapshot, &host, &settings, parse_time(NOW).expect("time"));
        assert_eq!(
            (verdict.health, verdict.problems),
            (
                expected,
                expected_problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
            ),
            "{name}"
        );
    }

    #[test]
    fn the_health_rules_as_a_table() {
        let cases: &[(&str, Change, Health, &[&str])] = &[
            ("healthy", |_, _| {}, Health::Ok, &[]),
            (
                "never ran",
                |snapshot, _| snapshot.daemon = None,
                Health::Critical,
                &["the agent has never run with this store"],
            ),
            (
                "stopped, devices not judged",
                |snapshot, _| {
                    daemon(snapshot).stopped_at = Some("2026-11-22T11:00:00.000Z".into());
                    device(snapshot).state = LinkState::Disconnected;
                },
                Health::Critical,
                &["the agent is not running (stopped at 2026-11-22T11:00:00.000Z)"],
            ),
            (
                "process gone",
                |_, host| host.daemon_process_exists = false,
                Health::Critical,
                &["the agent is not running (it died; last heartbeat 2026-11-22T11:59:58.000Z)"],
            ),
            (
                "heartbeat 16 s old is stale (3 × 5 s)",
                |snapshot, _| {
                    daemon(snapshot).heartbeat_at = Some("2026-11-22T11:59:44.000Z".into())
                },
                Health::Critical,
                &["the agent (pid 4242) has not written its heartbeat for 16 s: it is stuck or cannot write its store"],
            ),
            (
                "heartbeat 15 s old is fresh",
                |snapshot, _| {
                    daemon(snapshot).heartbeat_at = Some("2026-11-22T11:59:45.000Z".into())
                },
                Health::Ok,
                &[],
            ),
            (
                "device silent",
                |snapshot, _| device(snapshot).state = LinkState::Silent,
                Health::Warning,
                &["device entrance is silent"],
            ),
            (
                "device disconnected, with its error",
                |snapshot, _| {
                    device(snapshot).state = LinkState::Disconnected;
                    device(snapshot).last_error = Some("port vanished".into());
                },
                Health::Warning,
                &["device entrance is disconnected: port vanished"],
            ),
            (
                "device not started yet",
                |snapshot, _| snapshot.devices[0].row = None,
                Health::Warning,
                &["device entrance is disconnected: not started yet"],
            ),
            (
                "device connected but deaf",
                |snapshot, _| device(snapshot).last_error = Some("ACKs not taken".into()),
                Health::Warning,
                &["device entrance: ACKs not taken"],
            ),
            (
                "sink retrying, with its error",
                |snapshot, _| {
                    sink(snapshot).state = SinkState::Retrying;
                    sink(snapshot).last_error = Some("HTTP 503".into());
                },
                Health::Warning,
                &["sink backend is retrying: HTTP 503"],
            ),
            (
                "sink paused, no error",
                |snapshot, _| sink(snapshot).state = SinkState::Paused,
                Health::Warning,
                &["sink backend is paused"],
            ),
            (
                "sink not started yet",
                |snapshot, _| snapshot.sinks[0].row = None,
                Health::Ok,
                &[],
            ),
            (
                "one dead letter",
                |snapshot, _| snapshot.sinks[0].dead_letters = 1,
                Health::Warning,
                &["sink backend has 1 dead letter (`epm-agent deadletter list`)"],
            ),
            (
                "two dead letters",
                |snapshot, _| snapshot.sinks[0].dead_letters = 2,
                Health::Warning,
                &["sink backend has 2 dead letters (`epm-agent deadletter list`)"],
            ),
            (
                "undelivered for 16 minutes",
                |snapshot, _| {
                    snapshot.sinks[0].first_pending_ts = Some("2026-11-22T11:44:00.000Z".into())
                },
                Health::Warning,
                &["the oldest undelivered press is 16 minutes old"],
            ),
            (
                "undelivered for 15 minutes",
                |snapshot, _| {
                    snapshot.sinks[0].first_pending_ts = Some("2026-11-22T11:45:00.000Z".into())
                },
                Health::Ok,
                &[],
            ),
            (
                "the store cannot be written",
                |snapshot, _| {
                    snapshot.store_state.write_failures_since =
                        Some("2026-11-22T11:30:00.000Z".into());
                    snapshot.store_state.last_write_error = Some("disk full".into());
                },
                Health::Critical,
                &["the store cannot be written since 2026-11-22T11:30:00.000Z (disk full); presses are held in memory until it can"],
            ),
            (
                "recovered 6 days ago",
                |snapshot, _| {
                    snapshot.store_state.recovered_at = Some("2026-11-16T12:00:00.000Z".into());
                    snapshot.store_state.damaged_file = Some("/srv/epm/epm-agent.db.damaged".into());
                    snapshot.store_state.salvaged_events = 12;
                },
                Health::Warning,
                &["the store was damaged and replaced at 2026-11-16T12:00:00.000Z: 12 events read back, the damaged file is kept at /srv/epm/epm-agent.db.damaged"],
            ),
            (
                "recovered 8 days ago",
                |snapshot, _| {
                    snapshot.store_state.recovered_at = Some("2026-11-14T12:00:00.000Z".into())
                },
                Health::Ok,
                &[],
            ),
            (
                "clock jumped an hour ago",
                |snapshot, _| {
                    daemon(snapshot).clock_jump_at = Some("2026-11-22T11:00:00.000Z".into());
                    daemon(snapshot).clock_jump_s = Some(-90);
                },
                Health::Warning,
                &["the system clock jumped by -90 s at 2026-11-22T11:00:00.000Z (event times around then may be off)"],
            ),
            (
                "clock jumped 25 hours ago",
                |snapshot, _| {
                    daemon(snapshot).clock_jump_at = Some("2026-11-21T11:00:00.000Z".into());
                    daemon(snapshot).clock_jump_s = Some(90);
                },
                Health::Ok,
                &[],
            ),
            (
                "over the size cap",
                |snapshot, _| {
                    snapshot.store_state.over_cap_since = Some("2026-11-22T10:00:00.000Z".into())
                },
                Health::Warning,
                &["undelivered events alone exceed max_size_mb (since 2026-11-22T10:00:00.000Z); nothing is deleted until sinks catch up"],
            ),
            (
                "disk almost full",
                |_, host| host.free_disk_bytes = Some(LOW_DISK_BYTES - 1),
                Health::Critical,
                &["the disk under /srv/epm is almost full"],
            ),
            (
                "free disk unknown",
                |_, host| host.free_disk_bytes = None,
                Health::Ok,
                &[],
            ),
            (
                "critical first, then warnings in the order found",
                |snapshot, host| {
                    sink(snapshot).state = SinkState::Paused;
                    device(snapshot).state = LinkState::Silent;
                    host.free_disk_bytes = Some(0);
                },
                Health::Critical,
                &[
                    "the disk under /srv/epm is almost full",
                    "device entrance is silent",
                    "sink backend is paused",
                ],
            ),
        ];
        for (name, change, expected, expected_problems) in cases {
            check(name, *change, *expected, expected_problems);
        }
    }

    #[test]
    fn health_orders_worst_last() {
        assert!(Health::Ok < Health::Warning && Health::Warning < Health::Critical);
        assert_eq!(
            [Health::Ok, Health::Warning, Health::Critical].map(Health::exit_code),
            [0, 1, 2]
        );
    }
}

//! `epm-agent status [--json]`: what the running or stopped agent is doing,
//! read from its store (WAL readers never block the daemon), with a health
//! verdict and the monitoring-plugin exit code: 0 ok, 1 warning, 2
//! critical (3 unknown is `main`'s, when status cannot be read at all).
//!
//! Health rules:
//! - critical: the daemon is not running (never ran, stopped, its process is
//!   gone, or its heartbeat is stale — a daemon that cannot write its store
//!   cannot write its heartbeat either), or the disk under the store is
//!   almost full;
//! - warning: a device is silent or disconnected, a sink is retrying or
//!   paused, the oldest undelivered press is older than 15 minutes, dead
//!   letters exist, or undelivered events alone exceed `max_size_mb`.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{aligned_table, open_store, stdout_wants_colour};
use crate::config::Settings;
use crate::daemon::HEARTBEAT_INTERVAL;
use crate::store::Store;

/// The command's options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON (the contract's fields and more) instead of text.
    #[arg(long)]
    pub json: bool,
}

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

/// The store's own record of what went wrong (`store_state`).
#[derive(Debug, Default)]
struct StoreState {
    pruned_by_retention: u64,
    pruned_by_size: u64,
    over_cap_since: Option<String>,
    write_failures_since: Option<String>,
    last_write_error: Option<String>,
    dropped_presses: u64,
    recovered_at: Option<String>,
    damaged_file: Option<String>,
    salvaged_events: u64,
}

#[derive(Debug, Serialize)]
pub struct DeviceStatus {
    pub name: String,
    pub model: String,
    pub port: String,
    /// connected | silent | disconnected
    pub state: String,
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
    pub last_error: Option<String>,
    pub units: Vec<UnitStatus>,
}

#[derive(Debug, Serialize)]
pub struct UnitStatus {
    pub unit: String,
    pub last_seen_at: Option<String>,
    pub battery: Option<u8>,
    pub rssi: Option<i8>,
    pub presses: u64,
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
    pub state: String,
    pub pending: u64,
    pub delivered: u64,
    pub dead_letter: u64,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
}

/// Prints the status; returns the exit code.
pub fn run(settings: &Settings, args: &Args, out: &mut dyn Write) -> anyhow::Result<u8> {
    let store = open_store(&settings.agent.data_dir)?;
    let status = read_status(settings, &store, Utc::now())?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &status)?;
        writeln!(out)?;
    } else {
        write_text(&status, Utc::now(), stdout_wants_colour(), out)?;
    }
    Ok(status.health.exit_code())
}

/// Reads the status from `store` as of `now` and judges its health.
pub fn read_status(
    settings: &Settings,
    store: &Store,
    now: DateTime<Utc>,
) -> anyhow::Result<Status> {
    let connection = store.connection();
    // One read transaction: every number comes from the same moment.
    connection.execute_batch("BEGIN")?;
    let result = read_in_transaction(settings, store, now);
    let _ = connection.execute_batch("COMMIT");
    result
}

fn read_in_transaction(
    settings: &Settings,
    store: &Store,
    now: DateTime<Utc>,
) -> anyhow::Result<Status> {
    let connection = store.connection();
    let mut problems: Vec<(Health, String)> = Vec::new();

    let daemon = connection
        .query_row(
            "SELECT pid, version, started_at, heartbeat_at, stopped_at, clock_jump_at, clock_jump_s
             FROM daemon WHERE singleton = 1",
            [],
            |row| {
                Ok(DaemonStatus {
                    running: false,
                    pid: row.get(0)?,
                    version: row.get(1)?,
                    started_at: row.get(2)?,
                    heartbeat_at: row.get(3)?,
                    stopped_at: row.get(4)?,
                    clock_jump_at: row.get(5)?,
                    clock_jump_s: row.get(6)?,
                })
            },
        )
        .optional()?;
    let daemon = match daemon {
        None => {
            problems.push((
                Health::Critical,
                "the agent has never run with this store".into(),
            ));
            DaemonStatus::default()
        }
        Some(mut daemon) => {
            let heartbeat_age = daemon
                .heartbeat_at
                .as_deref()
                .and_then(parse_time)
                .map(|at| now - at);
            let stale_after = chrono::Duration::from_std(HEARTBEAT_INTERVAL * STALE_HEARTBEATS)
                .unwrap_or(chrono::Duration::MAX);
            let alive = daemon.pid.is_some_and(process_exists);
            if let Some(stopped_at) = &daemon.stopped_at {
                problems.push((
                    Health::Critical,
                    format!("the agent is not running (stopped at {stopped_at})"),
                ));
            } else if !alive {
                let since = daemon.heartbeat_at.as_deref().unwrap_or("an unknown time");
                problems.push((
                    Health::Critical,
                    format!("the agent is not running (it died; last heartbeat {since})"),
                ));
            } else if heartbeat_age.is_none_or(|age| age > stale_after) {
                let seconds = heartbeat_age.map_or(-1, |age| age.num_seconds());
                problems.push((
                    Health::Critical,
                    format!(
                        "the agent (pid {}) has not written its heartbeat for {seconds} s: it is stuck or cannot write its store",
                        daemon.pid.unwrap_or(0)
                    ),
                ));
            } else {
                daemon.running = true;
            }
            daemon
        }
    };

    let mut devices = Vec::with_capacity(settings.devices.len());
    for device in &settings.devices {
        let status = read_device(store, &device.name, device.model.name())?;
        if daemon.running && status.state != "connected" {
            let detail = status
                .last_error
                .as_deref()
                .map(|error| format!(": {error}"))
                .unwrap_or_default();
            problems.push((
                Health::Warning,
                format!("device {} is {}{detail}", status.name, status.state),
            ));
        } else if let (true, Some(error)) = (daemon.running, &status.last_error) {
            // Connected and read, but something is wrong with it (it does
            // not take what the agent writes).
            problems.push((Health::Warning, format!("device {}: {error}", status.name)));
        }
        devices.push(status);
    }

    let last_seqno = store.last_seqno()?;
    let mut sinks = Vec::with_capacity(settings.sinks.len());
    let mut oldest_undelivered: Option<String> = None;
    for sink in &settings.sinks {
        let row = connection
            .query_row(
                "SELECT delivered_seqno, delivered, state, last_success_at, last_error FROM sinks WHERE name = ?1",
                [&sink.name],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, u64>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, Option<String>>(3)?,
                        row.get::<_, Option<String>>(4)?,
                    ))
                },
            )
            .optional()?;
        let (cursor, delivered, state, last_success_at, last_error) =
            row.unwrap_or((0, 0, "ok".into(), None, None));
        // Events past a cursor are never deleted, so the seqnos count them.
        let pending = u64::try_from(last_seqno - cursor).unwrap_or(0);
        let dead_letter: u64 = connection.query_row(
            "SELECT count(*) FROM dead_letters WHERE sink = ?1",
            [&sink.name],
            |row| row.get(0),
        )?;
        if pending > 0 {
            let first_pending: Option<String> = connection
                .query_row(
                    "SELECT ts FROM events WHERE seqno > ?1 ORDER BY seqno LIMIT 1",
                    params![cursor],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(ts) = first_pending {
                if oldest_undelivered
                    .as_ref()
                    .is_none_or(|oldest| ts < *oldest)
                {
                    oldest_undelivered = Some(ts);
                }
            }
        }
        if state != "ok" {
            let detail = last_error
                .as_deref()
                .map(|error| format!(": {error}"))
                .unwrap_or_default();
            problems.push((
                Health::Warning,
                format!("sink {} is {state}{detail}", sink.name),
            ));
        }
        if dead_letter > 0 {
            problems.push((
                Health::Warning,
                format!(
                    "sink {} has {dead_letter} dead letter{} (`epm-agent deadletter list`)",
                    sink.name,
                    if dead_letter == 1 { "" } else { "s" }
                ),
            ));
        }
        sinks.push(SinkStatus {
            name: sink.name.clone(),
            state,
            pending,
            delivered,
            dead_letter,
            last_success_at,
            last_error,
        });
    }
    if let Some(oldest) = oldest_undelivered.as_deref() {
        if let Some(age) = parse_time(oldest).map(|at| now - at) {
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
    }

    let state = connection
        .query_row(
            "SELECT pruned_retention, pruned_size, over_cap_since, write_failures_since, last_write_error,
                    dropped_presses, recovered_at, damaged_file, salvaged_events
             FROM store_state WHERE singleton = 1",
            [],
            |row| {
                Ok(StoreState {
                    pruned_by_retention: row.get(0)?,
                    pruned_by_size: row.get(1)?,
                    over_cap_since: row.get(2)?,
                    write_failures_since: row.get(3)?,
                    last_write_error: row.get(4)?,
                    dropped_presses: row.get(5)?,
                    recovered_at: row.get(6)?,
                    damaged_file: row.get(7)?,
                    salvaged_events: row.get(8)?,
                })
            },
        )
        .optional()?
        .unwrap_or_default();
    let over_cap_since = state.over_cap_since.clone();
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
    if let (Some(at), Some(seconds)) = (&daemon.clock_jump_at, daemon.clock_jump_s) {
        let recent = parse_time(at)
            .is_some_and(|at| (now - at).abs() < chrono::Duration::hours(CLOCK_WARNING_HOURS));
        if recent {
            problems.push((
                Health::Warning,
                format!("the system clock jumped by {seconds:+} s at {at} (event times around then may be off)"),
            ));
        }
    }
    if let Some(since) = &over_cap_since {
        problems.push((
            Health::Warning,
            format!("undelivered events alone exceed max_size_mb (since {since}); nothing is deleted until sinks catch up"),
        ));
    }
    let free_disk_bytes = free_disk_bytes(&settings.agent.data_dir);
    if free_disk_bytes.is_some_and(|free| free < LOW_DISK_BYTES) {
        problems.push((
            Health::Critical,
            format!(
                "the disk under {} is almost full",
                settings.agent.data_dir.display()
            ),
        ));
    }
    let store_status = StoreStatus {
        path: store.path().display().to_string(),
        events: store.event_count()?,
        size_bytes: file_size(store.path()) + file_size(&store.path().with_extension("db-wal")),
        max_size_bytes: settings.store.max_size_bytes,
        free_disk_bytes,
        oldest_undelivered_at: oldest_undelivered,
        over_cap_since,
        pruned_by_retention: state.pruned_by_retention,
        pruned_by_size: state.pruned_by_size,
        write_failures_since: state.write_failures_since,
        last_write_error: state.last_write_error,
        dropped_presses: state.dropped_presses,
        recovered_at: state.recovered_at,
        damaged_file: state.damaged_file,
        salvaged_events: state.salvaged_events,
    };

    problems.sort_by_key(|(health, _)| std::cmp::Reverse(*health));
    let health = problems.first().map_or(Health::Ok, |(health, _)| *health);
    Ok(Status {
        health,
        problems: problems.into_iter().map(|(_, problem)| problem).collect(),
        daemon,
        devices,
        store: store_status,
        sinks,
    })
}

fn read_device(store: &Store, name: &str, model: &str) -> anyhow::Result<DeviceStatus> {
    let connection = store.connection();
    let device = connection
        .query_row(
            "SELECT model, port, state, state_since, hardware_id, firmware, last_frame_at, last_press_at,
                    presses, duplicates, bad_frames, unknown_frames, reconnects, last_error,
                    acks_dropped
             FROM devices WHERE name = ?1",
            [name],
            |row| {
                Ok(DeviceStatus {
                    name: name.to_string(),
                    model: row.get(0)?,
                    port: row.get(1)?,
                    state: row.get(2)?,
                    state_since: row.get(3)?,
                    hardware_id: row.get(4)?,
                    firmware: row.get(5)?,
                    last_frame_at: row.get(6)?,
                    last_press_at: row.get(7)?,
                    presses: row.get(8)?,
                    duplicates: row.get(9)?,
                    bad_frames: row.get(10)?,
                    unknown_frames: row.get(11)?,
                    reconnects: row.get(12)?,
                    last_error: row.get(13)?,
                    acks_dropped: row.get(14)?,
                    units: Vec::new(),
                })
            },
        )
        .optional()?;
    // A configured device the agent has not started yet.
    let mut device = device.unwrap_or_else(|| DeviceStatus {
        name: name.to_string(),
        model: model.to_string(),
        port: String::new(),
        state: "disconnected".into(),
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
        acks_dropped: 0,
        last_error: Some("not started yet".into()),
        units: Vec::new(),
    });
    let mut statement = connection.prepare_cached(
        "SELECT unit, last_seen_at, battery, rssi, presses FROM units WHERE device = ?1 ORDER BY unit",
    )?;
    let units = statement.query_map([name], |row| {
        Ok(UnitStatus {
            unit: row.get(0)?,
            last_seen_at: row.get(1)?,
            battery: row.get(2)?,
            rssi: row.get(3)?,
            presses: row.get(4)?,
        })
    })?;
    device.units = units.collect::<Result<_, _>>()?;
    Ok(device)
}

fn write_text(
    status: &Status,
    now: DateTime<Utc>,
    colour: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (word, paint) = match status.health {
        Health::Ok => ("OK", "\x1b[32m"),
        Health::Warning => ("WARNING", "\x1b[33m"),
        Health::Critical => ("CRITICAL", "\x1b[31m"),
    };
    if colour {
        writeln!(out, "epm-agent {paint}{word}\x1b[0m")?;
    } else {
        writeln!(out, "epm-agent {word}")?;
    }
    for problem in &status.problems {
        writeln!(out, "  - {problem}")?;
    }
    let ago = |at: &Option<String>| {
        at.as_deref()
            .map_or("never".to_string(), |at| time_ago(at, now))
    };
    let daemon = &status.daemon;
    if daemon.running {
        writeln!(
            out,
            "daemon   running, pid {}, version {}, started {}, heartbeat {}",
            daemon.pid.unwrap_or(0),
            daemon.version.as_deref().unwrap_or("?"),
            ago(&daemon.started_at),
            ago(&daemon.heartbeat_at)
        )?;
    } else {
        let since = daemon.stopped_at.as_ref().or(daemon.heartbeat_at.as_ref());
        writeln!(out, "daemon   not running since {}", ago(&since.cloned()))?;
    }
    let store = &status.store;
    writeln!(
        out,
        "store    {}: {} events, {}{}",
        store.path,
        store.events,
        human_bytes(store.size_bytes),
        store
            .oldest_undelivered_at
            .as_ref()
            .map(|at| format!(", oldest undelivered {}", time_ago(at, now)))
            .unwrap_or_default()
    )?;
    if store.dropped_presses > 0 {
        writeln!(
            out,
            "         {} presses dropped while the store could not be written",
            store.dropped_presses
        )?;
    }
    if !status.devices.is_empty() {
        writeln!(out, "\ndevices")?;
        let rows: Vec<Vec<String>> = status
            .devices
            .iter()
            .map(|device| {
                vec![
                    format!("  {}", device.name),
                    device.model.clone(),
                    device.port.clone(),
                    device.state.clone(),
                    ago(&device.last_frame_at),
                    ago(&device.last_press_at),
                    device.presses.to_string(),
                    device.duplicates.to_string(),
                    device.bad_frames.to_string(),
                ]
            })
            .collect();
        write!(
            out,
            "{}",
            aligned_table(
                &[
                    "  NAME",
                    "MODEL",
                    "PORT",
                    "STATE",
                    "LAST FRAME",
                    "LAST PRESS",
                    "PRESSES",
                    "DUPLICATES",
                    "BAD FRAMES"
                ],
                &rows
            )
        )?;
        for device in &status.devices {
            for unit in &device.units {
                let battery = unit
                    .battery
                    .map_or("-".into(), |battery| format!("{battery}%"));
                let rssi = unit.rssi.map_or("-".into(), |rssi| format!("{rssi} dBm"));
                writeln!(
                    out,
                    "    {} unit {}: battery {battery}, rssi {rssi}, {} presses, seen {}",
                    device.name,
                    unit.unit,
                    unit.presses,
                    ago(&unit.last_seen_at)
                )?;
            }
        }
    }
    if !status.sinks.is_empty() {
        writeln!(out, "\nsinks")?;
        let rows: Vec<Vec<String>> = status
            .sinks
            .iter()
            .map(|sink| {
                vec![
                    format!("  {}", sink.name),
                    sink.state.clone(),
                    sink.pending.to_string(),
                    sink.delivered.to_string(),
                    sink.dead_letter.to_string(),
                    ago(&sink.last_success_at),
                    sink.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        write!(
            out,
            "{}",
            aligned_table(
                &[
                    "  NAME",
                    "STATE",
                    "PENDING",
                    "DELIVERED",
                    "DEAD",
                    "LAST SUCCESS",
                    "LAST ERROR"
                ],
                &rows
            )
        )?;
    }
    Ok(())
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

/// `12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`, or the timestamp.
fn time_ago(at: &str, now: DateTime<Utc>) -> String {
    let Some(then) = parse_time(at) else {
        return at.to_string();
    };
    let seconds = (now - then).num_seconds();
    match seconds {
        ..0 => at.to_string(),
        0..120 => format!("{seconds} s ago"),
        120..7_200 => format!("{} min ago", seconds / 60),
        7_200..172_800 => format!("{} h ago", seconds / 3_600),
        _ => format!("{} d ago", seconds / 86_400),
    }
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        ..10_240 => format!("{bytes} B"),
        10_240..10_485_760 => format!("{} KB", bytes / 1024),
        _ => format!("{} MB", bytes / (1024 * 1024)),
    }
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

#[cfg(not(unix))]
fn free_disk_bytes(_path: &Path) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_a_person_says_them() {
        let now = parse_time("2026-11-22T12:00:00.000Z").expect("time");
        let check = |at: &str, expected: &str| assert_eq!(time_ago(at, now), expected, "{at}");
        check("2026-11-22T11:59:48.000Z", "12 s ago");
        check("2026-11-22T11:55:00.000Z", "5 min ago");
        check("2026-11-22T09:00:00.000Z", "3 h ago");
        check("2026-11-20T12:00:00.000Z", "2 d ago");
        check("2026-11-22T12:00:05.000Z", "2026-11-22T12:00:05.000Z");
        check("garbage", "garbage");
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

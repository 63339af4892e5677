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
//!
//! The status itself and its rules are the library's (`epm_agent::status`);
//! this is the command: its options, the text and JSON it prints, and its
//! exit code.

use std::io::Write;

use chrono::{DateTime, Utc};

use super::{aligned_table, open_store, stdout_wants_colour};
use epm_agent::config::Settings;
use epm_agent::status::{parse_time, read_status, Health, Status};

/// The command's options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON (the contract's fields and more) instead of text.
    #[arg(long)]
    pub json: bool,
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
                    device.state.as_str().to_string(),
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
                    sink.state.as_str().to_string(),
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
}

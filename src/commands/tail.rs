//! `epm-agent tail [-n N] [--no-follow] [--json]`: the last presses, then
//! every new one as the daemon stores it, like `tail -f`.
//!
//! It only reads: a read-only connection polls the store about four times a
//! second for events after the last one shown (WAL lets it read while the
//! daemon writes, and never holds the daemon up). When there is no store
//! yet it waits for one to appear, so `tail` can be started before the
//! agent. It stops at Ctrl-C, or when whatever reads its output goes away.
//! Text lines show the shop's local time of each press; `--json` prints one
//! upload-v1 event object per line.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, FixedOffset};

use epm_agent::config::Settings;
use epm_agent::event::{Event, PressFields};
use epm_agent::store::{Store, StoredEvent, DATABASE_FILE};

use super::{is_broken_pipe, open_store, stdout_wants_colour};

/// The command's options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Show the last N presses first.
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 10)]
    pub lines: usize,
    /// Print the last presses and exit instead of following.
    #[arg(long)]
    pub no_follow: bool,
    /// One JSON event per line (the upload-v1 fields).
    #[arg(long)]
    pub json: bool,
    /// Exit after printing this many events (for tests and scripts).
    #[arg(long, value_name = "N", hide = true)]
    pub max_events: Option<u64>,
    /// Exit after following for this many seconds (for tests and scripts).
    #[arg(long, value_name = "N", hide = true)]
    pub for_s: Option<u64>,
}

pub fn run(settings: &Settings, args: &Args, out: &mut dyn Write) -> anyhow::Result<()> {
    match follow(settings, args, out) {
        // Whoever read the output (`| head`) has gone: a normal end.
        Err(error) if is_broken_pipe(&error) => Ok(()),
        other => other,
    }
}

/// How often the store is asked for new events.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// Most events read in one query while catching up.
const CHUNK: usize = 1_000;

fn follow(settings: &Settings, args: &Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let data_dir = &settings.agent.data_dir;
    let started = Instant::now();
    let time_is_up = || {
        args.for_s
            .is_some_and(|seconds| started.elapsed() >= Duration::from_secs(seconds))
    };
    let store = if args.no_follow {
        open_store(data_dir)?
    } else {
        match wait_for_store(data_dir, &time_is_up)? {
            Some(store) => store,
            None => return Ok(()),
        }
    };
    let mut printer = Printer::new(settings, args.json, stdout_wants_colour());
    let mut remaining = args.max_events;
    let mut cursor = start_cursor(&store, args.lines)?;
    let mut show = |events: &[StoredEvent], out: &mut dyn Write| -> anyhow::Result<bool> {
        for stored in events {
            if remaining == Some(0) {
                return Ok(false);
            }
            printer.print(&stored.event, out)?;
            remaining = remaining.map(|count| count - 1);
        }
        out.flush()?;
        Ok(remaining != Some(0))
    };
    // The last N, however many chunks that is.
    loop {
        let events = store.events_after(cursor, CHUNK)?;
        let Some(last) = events.last() else { break };
        cursor = last.seqno;
        if !show(&events, out)? {
            return Ok(());
        }
    }
    if args.no_follow {
        return Ok(());
    }
    if std::io::stderr().is_terminal() {
        eprintln!("following {} (Ctrl-C to stop)", store.path().display());
    }
    loop {
        if time_is_up() {
            return Ok(());
        }
        let events = store.events_after(cursor, CHUNK)?;
        if let Some(last) = events.last() {
            cursor = last.seqno;
            if !show(&events, out)? {
                return Ok(());
            }
        }
        if events.len() < CHUNK {
            std::thread::sleep(POLL_EVERY);
        }
    }
}

/// Opens the store once it exists and has its tables (the daemon creates
/// both at its first start); `None` if `time_is_up` first. A store that is
/// there but cannot be read (permissions) is an error at once.
fn wait_for_store(data_dir: &Path, time_is_up: &dyn Fn() -> bool) -> anyhow::Result<Option<Store>> {
    let path = data_dir.join(DATABASE_FILE);
    let mut said_waiting = false;
    loop {
        match std::fs::metadata(&path) {
            Ok(_) => {
                let store = Store::open_reader(data_dir)?;
                let version = store
                    .schema_version()
                    .with_context(|| format!("cannot read {}", path.display()))?;
                if version >= 1 {
                    return Ok(Some(store));
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| {
                    format!(
                        "cannot reach the store {} (may this user read the agent's data folder? try sudo)",
                        path.display()
                    )
                })
            }
        }
        if !said_waiting {
            eprintln!(
                "epm-agent: no store at {} yet; waiting for the agent to create it (is it running with this configuration?)",
                path.display()
            );
            said_waiting = true;
        }
        if time_is_up() {
            return Ok(None);
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// The seqno after which the last `lines` events begin.
fn start_cursor(store: &Store, lines: usize) -> anyhow::Result<i64> {
    match store.first_of_newest(lines)? {
        Some(seqno) => Ok(seqno - 1),
        // No events, or -n 0: only what comes next.
        None => Ok(store.last_seqno()?),
    }
}

/// Formats events as text lines or JSON lines.
struct Printer {
    json: bool,
    colour: bool,
    /// Column widths; they only grow, so lines stay aligned as far as can
    /// be known in advance (the configured names start them).
    device_width: usize,
    answer_width: usize,
}

impl Printer {
    fn new(settings: &Settings, json: bool, colour: bool) -> Printer {
        let widest = |names: &mut dyn Iterator<Item = usize>| names.max().unwrap_or(0);
        Printer {
            json,
            colour,
            device_width: widest(
                &mut settings
                    .devices
                    .iter()
                    .map(|device| device.name.chars().count()),
            ),
            answer_width: widest(
                &mut settings
                    .devices
                    .iter()
                    .flat_map(|device| device.keymap.values().map(|answer| answer.chars().count())),
            ),
        }
    }

    /// Prints a press; agent status events are not shown.
    fn print(&mut self, event: &Event, out: &mut dyn Write) -> anyhow::Result<()> {
        let Some(press) = event.press() else {
            return Ok(());
        };
        if self.json {
            serde_json::to_writer(&mut *out, event)?;
            writeln!(out)?;
            return Ok(());
        }
        self.device_width = self.device_width.max(press.device.chars().count());
        let answer = one_line(press.answer.as_deref().unwrap_or("-"));
        self.answer_width = self.answer_width.max(answer.chars().count());
        let line = text_line(
            event,
            press,
            self.device_width,
            self.answer_width,
            self.colour,
        );
        writeln!(out, "{line}")?;
        Ok(())
    }
}

/// `2026-11-22 13:15:03  entrance  301A0002  key  1  yes      recommend  rssi -61  battery 87%`
fn text_line(
    event: &Event,
    press: &PressFields,
    device_width: usize,
    answer_width: usize,
    colour: bool,
) -> String {
    let answer = one_line(press.answer.as_deref().unwrap_or("-"));
    let answer = answer.as_str();
    let padding = " ".repeat(answer_width.saturating_sub(answer.chars().count()));
    let painted_answer = match (colour, answer) {
        (true, "yes") => format!("\x1b[32m{answer}\x1b[0m"),
        (true, "no") => format!("\x1b[31m{answer}\x1b[0m"),
        (true, "neutral") => format!("\x1b[33m{answer}\x1b[0m"),
        _ => answer.to_string(),
    };
    let device = one_line(&press.device);
    let device_padding = " ".repeat(device_width.saturating_sub(device.chars().count()));
    let mut line = format!(
        "{}  {}{device_padding}  {}  key {:>2}  {painted_answer}{padding}  {}",
        local_time(event),
        device,
        one_line(&press.unit),
        press.key,
        one_line(press.question.as_deref().unwrap_or("-")),
    );
    if let Some(rssi) = press.rssi {
        line.push_str(&format!("  rssi {rssi}"));
    }
    if let Some(battery) = press.battery {
        line.push_str(&format!("  battery {battery}%"));
    }
    if press.suppressed {
        line.push_str(if colour {
            "  \x1b[2msuppressed (too soon after the previous press)\x1b[0m"
        } else {
            "  suppressed (too soon after the previous press)"
        });
    }
    line
}

/// The text with control characters (line breaks, a terminal's escape) as
/// spaces: one event, one line, and nothing stored can drive the terminal.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|character| {
            if character.is_control() {
                ' '
            } else {
                character
            }
        })
        .collect()
}

/// The press's time in the shop's time zone of that moment; the stored
/// text as it is if it cannot be read.
fn local_time(event: &Event) -> String {
    let offset = FixedOffset::east_opt(event.tz_offset_min.saturating_mul(60));
    match (DateTime::parse_from_rfc3339(&event.ts), offset) {
        (Ok(at), Some(offset)) => at
            .with_timezone(&offset)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        _ => event.ts.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press() -> PressFields {
        PressFields {
            device: "entrance".into(),
            model: "prolan-501".into(),
            unit: "301A0002".into(),
            key: 1,
            answer: Some("yes".into()),
            question: Some("recommend".into()),
            seq: 258,
            rssi: Some(-61),
            battery: Some(87),
            suppressed: false,
        }
    }

    fn event(ts: &str, tz_offset_min: i32, press: PressFields) -> Event {
        Event {
            id: "01JDA8Z5C6N2V7Q4M3W9XK1T0B".into(),
            ts: ts.into(),
            tz_offset_min,
            body: epm_agent::event::EventBody::Press(press),
        }
    }

    fn check(event: Event, device_width: usize, answer_width: usize, expected: &str) {
        let press = event.press().expect("a press").clone();
        assert_eq!(
            text_line(&event, &press, device_width, answer_width, false),
            expected
        );
    }

    #[test]
    fn text_lines_show_the_shops_local_time_and_what_is_known() {
        const TS: &str = "2026-11-22T10:15:03.214Z";
        check(
            event(TS, 180, press()),
            10,
            7,
            "2026-11-22 13:15:03  entrance    301A0002  key  1  yes      recommend  rssi -61  battery 87%",
        );
        check(
            event(
                TS,
                -300,
                PressFields {
                    device: "касса".into(),
                    model: "prolan-202".into(),
                    unit: "202A0F31".into(),
                    key: 12,
                    answer: None,
                    question: None,
                    rssi: None,
                    battery: None,
                    suppressed: true,
                    ..press()
                },
            ),
            5,
            0,
            "2026-11-22 05:15:03  касса  202A0F31  key 12  -  -  suppressed (too soon after the previous press)",
        );
        check(
            event("garbage", 180, press()),
            0,
            0,
            "garbage  entrance  301A0002  key  1  yes  recommend  rssi -61  battery 87%",
        );
        check(
            event(
                TS,
                180,
                PressFields {
                    question: Some("первая\nвторая\r".into()),
                    answer: Some("\x1b[2Jyes".into()),
                    rssi: None,
                    battery: None,
                    ..press()
                },
            ),
            8,
            0,
            "2026-11-22 13:15:03  entrance  301A0002  key  1   [2Jyes  первая вторая ",
        );
    }
}

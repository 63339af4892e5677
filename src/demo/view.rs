//! The demo's live view: what the terminal shows while the demo runs. It
//! polls the store read-only every 300 ms (new events, the sink's progress,
//! the devices' state), as `status` would, rather than hooking into the
//! daemon, and prints one line per press, per device state change and per
//! answered upload (from the backend's notices). Colour only on a terminal,
//! and never with `NO_COLOR` set (to anything but empty).
//!
//! After each look it publishes how far storing and uploading have come,
//! which the demo waits on before it stops the agent.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::backend::Notice;
use super::{format_iel, Tally, SINK_NAME};
use epm_agent::event::PressFields;
use epm_agent::store::{DeviceRow, LinkState, SinkRow, Store, StoreError, StoredEvent};

/// How far the agent has come, as of the view's latest look at the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Looks taken so far.
    pub looks: u64,
    /// The newest event stored.
    pub stored_seqno: i64,
    /// Every event up to this one is delivered to the backend.
    pub delivered_seqno: i64,
    /// A batch is being sent (or waits to be sent again).
    pub in_flight: bool,
}

/// Terminal styles (ANSI SGR parameters).
#[derive(Clone, Copy)]
pub enum Style {
    Bold,
    Dim,
    Green,
    Yellow,
    Red,
    Cyan,
}

/// How lines are drawn.
#[derive(Clone, Copy, Debug)]
pub struct Painter {
    pub colour: bool,
}

impl Painter {
    /// Colour when stdout is a terminal and `NO_COLOR` is unset or empty.
    pub fn for_stdout() -> Painter {
        Painter {
            colour: crate::commands::stdout_wants_colour(),
        }
    }

    pub fn paint(&self, text: &str, style: Style) -> String {
        if !self.colour {
            return text.to_string();
        }
        let code = match style {
            Style::Bold => "1",
            Style::Dim => "2",
            Style::Green => "32",
            Style::Yellow => "33",
            Style::Red => "31",
            Style::Cyan => "36",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

/// Shows what happens until `stop`, then takes one last look (so the final
/// presses and uploads are shown too) and returns.
pub async fn run(
    data_dir: PathBuf,
    painter: Painter,
    mut notices: mpsc::UnboundedReceiver<Notice>,
    progress: watch::Sender<Progress>,
    stop: CancellationToken,
) {
    let mut view = View {
        data_dir,
        painter,
        reader: None,
        progress: Progress::default(),
        shown_seqno: 0,
        tally: Tally::default(),
        device_states: HashMap::new(),
        last_error: None,
    };
    let mut interval = tokio::time::interval(LOOK_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = interval.tick() => false,
        };
        // Upload answers concern events stored before they were sent: take
        // them first, show them after the events.
        let mut answered = Vec::new();
        while let Ok(notice) = notices.try_recv() {
            answered.push(notice);
        }
        view.look().await;
        for notice in answered {
            println!("{}", view.notice_line(&notice));
        }
        progress.send_replace(view.progress);
        if stopping {
            return;
        }
    }
}

/// How often the store is read.
const LOOK_EVERY: Duration = Duration::from_millis(300);
/// At most this many events are read per query.
const EVENTS_PER_READ: usize = 500;

struct View {
    data_dir: PathBuf,
    painter: Painter,
    /// Opened once the daemon has created the store.
    reader: Option<Store>,
    progress: Progress,
    /// The newest event shown.
    shown_seqno: i64,
    /// The presses seen so far (the store starts empty).
    tally: Tally,
    /// Per device: (state, hardware id) as last shown.
    device_states: HashMap<String, (LinkState, Option<String>)>,
    /// The last read failure shown, so a lasting one is shown once.
    last_error: Option<String>,
}

/// One look at the store.
struct Reading {
    /// The next events to show, after the last one shown.
    events: Vec<StoredEvent>,
    /// The newest event stored.
    newest_seqno: i64,
    /// `None` until the sink has started.
    sink: Option<SinkRow>,
    devices: Vec<DeviceRow>,
}

impl View {
    async fn look(&mut self) {
        let reader = match self.reader.take() {
            Some(reader) => reader,
            // Until the daemon has created it, there is nothing to show.
            None => match Store::open_reader(&self.data_dir) {
                Ok(reader) => reader,
                Err(_) => return,
            },
        };
        let after = self.shown_seqno;
        let joined = tokio::task::spawn_blocking(move || {
            let reading = read(&reader, after);
            (reader, reading)
        })
        .await;
        let Ok((reader, reading)) = joined else {
            return; // the runtime is shutting down
        };
        self.reader = Some(reader);
        let reading = match reading {
            Ok(reading) => reading,
            Err(error) => {
                // Right after the store is created its tables may not exist
                // yet; anything that lasts is shown once.
                let message = error.to_string();
                if self.progress.looks > 3 && self.last_error.as_ref() != Some(&message) {
                    eprintln!("epm-agent demo: cannot read the store: {message}");
                    self.last_error = Some(message);
                }
                return;
            }
        };
        self.last_error = None;
        self.progress.looks += 1;
        self.progress.stored_seqno = reading.newest_seqno;
        let sink = reading.sink.as_ref();
        self.progress.delivered_seqno = sink.map_or(0, |sink| sink.delivered_seqno);
        self.progress.in_flight = sink.is_some_and(|sink| sink.in_flight);
        let delivered = sink.map_or(0, |sink| sink.delivered);
        for device in &reading.devices {
            if let Some(line) = self.device_line(device) {
                println!("{line}");
            }
        }
        for stored in &reading.events {
            self.shown_seqno = self.shown_seqno.max(stored.seqno);
            let Some(press) = stored.event.press() else {
                continue;
            };
            self.tally.count(press.answer.as_deref(), press.suppressed);
            println!("{}", self.press_line(stored, press, delivered));
        }
    }

    /// A line when a device's state or identity changed since last shown.
    fn device_line(&mut self, device: &DeviceRow) -> Option<String> {
        let shown = (device.state, device.hardware_id.clone());
        if self.device_states.get(&device.name) == Some(&shown) {
            return None;
        }
        self.device_states.insert(device.name.clone(), shown);
        let what = match (device.model.as_str(), &device.hardware_id) {
            ("prolan-202", Some(id)) => format!("ProLAN-202 keypad {id}"),
            ("prolan-501", Some(id)) => format!("ProLAN-501 receiver {id}"),
            (_, Some(id)) => format!("simulated receiver {id}"),
            (_, None) => "identity not heard yet".to_string(),
        };
        let firmware = device
            .firmware
            .as_deref()
            .map(|firmware| format!(", firmware {firmware}"))
            .unwrap_or_default();
        let style = match device.state {
            LinkState::Connected => Style::Green,
            LinkState::Silent => Style::Yellow,
            LinkState::Disconnected => Style::Red,
        };
        let state = self.painter.paint(device.state.as_str(), style);
        Some(format!(
            "{}  {:<9} {state} on {}: {what}{firmware}",
            clock_now(),
            device.name,
            device.port
        ))
    }

    fn press_line(&self, stored: &StoredEvent, press: &PressFields, delivered: u64) -> String {
        let unit = match press.model.as_str() {
            "prolan-202" => format!("keypad {}", press.unit),
            _ => format!("remote {}", press.unit),
        };
        // The answer, and why it does not count towards the IEL.
        let (answer, style, note) = match (press.answer.as_deref(), press.suppressed) {
            (Some(answer), false) => (answer, answer_style(answer), ""),
            (Some(answer), true) => (answer, Style::Dim, "suppressed"),
            (None, suppressed) => (
                "-",
                Style::Dim,
                if suppressed { "suppressed" } else { "unmapped" },
            ),
        };
        let answer = self
            .painter
            .paint(&format!("{answer:<8} {note:<11}"), style);
        let iel = self
            .tally
            .iel()
            .map_or_else(|| "n/a".to_string(), |iel| format!("{iel:+.0}"));
        format!(
            "{}  {:<9} {unit}  key {:<2} {answer} stored {:<4} uploaded {:<4} IEL {}",
            clock_of(&stored.event.ts),
            press.device,
            press.key,
            self.tally.stored(),
            delivered,
            self.painter.paint(&iel, Style::Bold),
        )
    }

    fn notice_line(&self, notice: &Notice) -> String {
        let upload = format!("{}  {:<9}", clock_now(), "upload");
        match notice {
            Notice::Accepted {
                batch_id,
                events,
                new,
                tally,
            } => {
                let ignored = events - new;
                let copies = if ignored > 0 {
                    format!(", {ignored} repeated cop{} ignored", plural_y(ignored))
                } else {
                    String::new()
                };
                format!(
                    "{upload} batch {}  {}  {} {new} new{copies}  backend IEL {}",
                    short_id(batch_id),
                    event_count(*events),
                    self.painter.paint("200 OK:", Style::Cyan),
                    self.painter.paint(&format_iel(tally.iel()), Style::Bold),
                )
            }
            Notice::Refused {
                batch_id,
                events,
                kept,
            } => {
                let what = if *kept {
                    "after keeping the events, as if the answer got lost"
                } else {
                    "before reading the batch"
                };
                format!(
                    "{upload} batch {}  {}  {} {what}: the agent sends the same batch again in 1 s",
                    short_id(batch_id),
                    event_count(*events),
                    self.painter.paint("503 (flaky on purpose)", Style::Yellow),
                )
            }
            Notice::Rejected { status, reason } => format!(
                "{upload} {}: {reason}",
                self.painter.paint(&format!("refused {status}"), Style::Red)
            ),
        }
    }
}

/// One consistent look: a read transaction sees the store as of one
/// commit, so the sink's progress and the newest event belong together.
fn read(store: &Store, after_seqno: i64) -> Result<Reading, StoreError> {
    let snapshot = store.connection().unchecked_transaction()?;
    let events = store.events_after(after_seqno, EVENTS_PER_READ)?;
    let newest_seqno = store.last_seqno()?;
    let sink = store.sink(SINK_NAME)?;
    let devices = store.devices()?;
    snapshot.finish()?;
    Ok(Reading {
        events,
        newest_seqno,
        sink,
        devices,
    })
}

fn answer_style(answer: &str) -> Style {
    match answer {
        "yes" => Style::Green,
        "neutral" => Style::Yellow,
        "no" => Style::Red,
        _ => Style::Bold,
    }
}

/// The local wall-clock time of a stored timestamp, `11:02:03`.
fn clock_of(ts: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(ts) {
        Ok(at) => at
            .with_timezone(&chrono::Local)
            .format("%H:%M:%S")
            .to_string(),
        Err(_) => ts.to_string(),
    }
}

fn clock_now() -> String {
    chrono::Local::now().format("%H:%M:%S").to_string()
}

/// The random end of a ULID tells batches apart; its start is the time.
fn short_id(batch_id: &str) -> String {
    let tail = batch_id
        .char_indices()
        .rev()
        .nth(5)
        .map_or(batch_id, |(index, _)| &batch_id[index..]);
    format!("…{tail}")
}

/// `1 event`, `12 events`, in a column of their own.
fn event_count(count: usize) -> String {
    let text = if count == 1 {
        "1 event".to_string()
    } else {
        format!("{count} events")
    };
    format!("{text:<9}")
}

fn plural_y(count: usize) -> &'static str {
    if count == 1 {
        "y"
    } else {
        "ies"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_named_by_the_end_of_its_id() {
        let check = |id: &str, expected: &str| assert_eq!(short_id(id), expected, "{id}");
        check("01JDA90K3W3X5Q8Y0B2C4D6E8F", "…4D6E8F");
        check("ABC", "…ABC");
        check("", "…");
    }
}

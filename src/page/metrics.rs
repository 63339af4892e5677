//! `/metrics`: the status in Prometheus' text format (version 0.0.4).
//! Pure: a [`Status`] in, the exposition text out. Every family has its
//! `# HELP` and `# TYPE` lines once, then its samples; names follow
//! Prometheus' conventions (`epm_agent_` prefix, counters end in `_total`,
//! units in the name: `_bytes`, `_timestamp_seconds`); label values are
//! escaped as the format says (`\\`, `\"`, `\n`).

use std::fmt::Write;

use crate::status::{parse_time, DeviceStatus, Health, SinkStatus, Status};
use crate::store::{LinkState, SinkState};

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const LINK_STATES: [LinkState; 3] = [
    LinkState::Connected,
    LinkState::Silent,
    LinkState::Disconnected,
];
const SINK_STATES: [SinkState; 3] = [SinkState::Ok, SinkState::Retrying, SinkState::Paused];

/// The exposition of `status`, for an agent of `version`.
pub fn render(status: &Status, version: &str) -> String {
    let mut text = Exposition::default();
    text.family(
        "epm_agent_build_info",
        "gauge",
        "The agent's version, as a label; always 1.",
    );
    text.sample("epm_agent_build_info", &[("version", version)], 1.0);
    text.family(
        "epm_agent_health",
        "gauge",
        "The status rules' verdict: 0 ok, 1 warning, 2 critical.",
    );
    let health = match status.health {
        Health::Ok => 0.0,
        Health::Warning => 1.0,
        Health::Critical => 2.0,
    };
    text.sample("epm_agent_health", &[], health);

    let devices = &status.devices;
    type DeviceValue = fn(&DeviceStatus) -> Option<f64>;
    let device_families: [(&str, &str, &str, DeviceValue); 8] = [
        (
            "epm_agent_presses_total",
            "counter",
            "Presses stored, per device.",
            |device| Some(device.presses as f64),
        ),
        (
            "epm_agent_duplicates_total",
            "counter",
            "Repeated frames of a press already stored (radio copies, resends), per device.",
            |device| Some(device.duplicates as f64),
        ),
        (
            "epm_agent_bad_frames_total",
            "counter",
            "Frames with a wrong checksum, shape or field, per device.",
            |device| Some(device.bad_frames as f64),
        ),
        (
            "epm_agent_unknown_frames_total",
            "counter",
            "Well-formed frames of a type the agent does not know, per device.",
            |device| Some(device.unknown_frames as f64),
        ),
        (
            "epm_agent_noise_bytes_total",
            "counter",
            "Bytes read that belonged to no frame, per device.",
            |device| Some(device.noise_bytes as f64),
        ),
        (
            "epm_agent_reconnects_total",
            "counter",
            "Times the device's port was opened again after a failure, per device.",
            |device| Some(device.reconnects as f64),
        ),
        (
            "epm_agent_device_up",
            "gauge",
            "1 while the device is connected and heard, else 0.",
            |device| Some(f64::from(u8::from(device.state == LinkState::Connected))),
        ),
        (
            "epm_agent_device_last_frame_timestamp_seconds",
            "gauge",
            "When the device's last valid frame was read, in Unix seconds.",
            |device| device.last_frame_at.as_deref().and_then(unix_seconds),
        ),
    ];
    for (name, kind, help, value) in device_families {
        text.family(name, kind, help);
        for device in devices {
            if let Some(value) = value(device) {
                text.sample(name, &[("device", &device.name)], value);
            }
        }
    }
    text.family(
        "epm_agent_device_state",
        "gauge",
        "1 for the device's state (connected, silent, disconnected), 0 for the others.",
    );
    for device in devices {
        for state in LINK_STATES {
            text.sample(
                "epm_agent_device_state",
                &[("device", &device.name), ("state", state.as_str())],
                f64::from(u8::from(device.state == state)),
            );
        }
    }

    let sinks = &status.sinks;
    type SinkValue = fn(&SinkStatus) -> Option<f64>;
    let sink_families: [(&str, &str, &str, SinkValue); 4] = [
        (
            "epm_agent_sink_pending",
            "gauge",
            "Events stored and not yet delivered, per sink.",
            |sink| Some(sink.pending as f64),
        ),
        (
            "epm_agent_sink_delivered_total",
            "counter",
            "Events the sink's destination accepted.",
            |sink| Some(sink.delivered as f64),
        ),
        (
            "epm_agent_sink_dead_letters",
            "gauge",
            "Events the sink's destination refused for good, kept as dead letters.",
            |sink| Some(sink.dead_letter as f64),
        ),
        (
            "epm_agent_sink_last_success_timestamp_seconds",
            "gauge",
            "When the sink last delivered a batch, in Unix seconds.",
            |sink| sink.last_success_at.as_deref().and_then(unix_seconds),
        ),
    ];
    for (name, kind, help, value) in sink_families {
        text.family(name, kind, help);
        for sink in sinks {
            if let Some(value) = value(sink) {
                text.sample(name, &[("sink", &sink.name)], value);
            }
        }
    }
    text.family(
        "epm_agent_sink_state",
        "gauge",
        "1 for the sink's state (ok, retrying, paused), 0 for the others.",
    );
    for sink in sinks {
        for state in SINK_STATES {
            text.sample(
                "epm_agent_sink_state",
                &[("sink", &sink.name), ("state", state.as_str())],
                f64::from(u8::from(sink.state == state)),
            );
        }
    }

    let store = &status.store;
    text.family(
        "epm_agent_store_size_bytes",
        "gauge",
        "The store's database file and write-ahead log.",
    );
    text.sample("epm_agent_store_size_bytes", &[], store.size_bytes as f64);
    text.family(
        "epm_agent_store_events",
        "gauge",
        "Events held in the store.",
    );
    text.sample("epm_agent_store_events", &[], store.events as f64);
    if let Some(free) = store.free_disk_bytes {
        text.family(
            "epm_agent_disk_free_bytes",
            "gauge",
            "Free disk under the store.",
        );
        text.sample("epm_agent_disk_free_bytes", &[], free as f64);
    }
    text.family(
        "epm_agent_dropped_presses_total",
        "counter",
        "Presses read but dropped: the store could not be written and the memory backlog was full.",
    );
    text.sample(
        "epm_agent_dropped_presses_total",
        &[],
        store.dropped_presses as f64,
    );
    text.0
}

/// An RFC 3339 time of the status as Unix seconds (milliseconds kept).
fn unix_seconds(text: &str) -> Option<f64> {
    parse_time(text).map(|at| at.timestamp_millis() as f64 / 1000.0)
}

/// The text being written.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{label}=\"{}\"", escape_label_value(value));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// A label value: backslash, double quote and line feed escaped.
fn escape_label_value(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// A `# HELP` text: backslash and line feed escaped.
fn escape_help(help: &str) -> String {
    help.replace('\\', r"\\").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_as_the_text_format_says() {
        let check = |raw: &str, expected: &str| assert_eq!(escape_label_value(raw), expected);
        check("entrance", "entrance");
        check(r"C:\dev", r"C:\\dev");
        check("say \"hi\"", r#"say \"hi\""#);
        check("two\nlines", r"two\nlines");
    }

    #[test]
    fn a_sample_has_its_labels_in_braces_and_a_number() {
        let mut text = Exposition::default();
        text.family("epm_agent_x_total", "counter", "An x.\nTwo lines.");
        text.sample(
            "epm_agent_x_total",
            &[("device", "a\"b"), ("state", "ok")],
            3.0,
        );
        text.sample("epm_agent_x_total", &[], 0.5);
        assert_eq!(
            text.0,
            "# HELP epm_agent_x_total An x.\\nTwo lines.\n\
             # TYPE epm_agent_x_total counter\n\
             epm_agent_x_total{device=\"a\\\"b\",state=\"ok\"} 3\n\
             epm_agent_x_total 0.5\n"
        );
    }
}

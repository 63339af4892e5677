//! Simulated ProLAN hardware, device side: a ProLAN-202 keypad, or a
//! ProLAN-501 receiver with ProLAN-301 remotes, and customers pressing
//! their keys at random. It speaks the real wire protocol (the codecs'
//! device side) over any `AsyncRead + AsyncWrite`: an in-memory pipe for the
//! `simulator` model ([`spawn`]), a pseudo-terminal's master for
//! `epm-agent demo` ([`run_device`]). So simulated presses go through the
//! same codec, duplicate filter and store as a real device's: a receiver
//! forwards every radio press three times, as a remote sends it; both
//! models send heartbeats (202: every 10 s, 501: every 5 s) and answer
//! QUERY with their identity. ACKs are read and ignored.
//!
//! It owns no port and keeps no statistics: what the agent made of the
//! presses is read from the store.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::SimulatorSettings;
use crate::model::{Attachment, Model, ModelSpec};
use crate::protocol::{
    prolan202, prolan501, Heartbeat, Identity, Inbound, Outbound, Press, UnitId,
};

/// The `simulator` model: an in-process ProLAN-501 ([`spawn`]), so it has
/// the receiver's codec, identity and timings, and no port.
pub static SPEC: ModelSpec = ModelSpec {
    name: "simulator",
    title: "simulated ProLAN-501 receiver",
    kind: "simulator",
    // No line to set: the receiver's speed, as a receiver it plays.
    default_baud: prolan501::DEFAULT_BAUD,
    heartbeat_period: Duration::from_secs(prolan501::HEARTBEAT_PERIOD_S),
    duplicate_window: prolan501::DUPLICATE_WINDOW,
    codec: prolan501::SPEC.codec,
    is_identity: prolan501::SPEC.is_identity,
    attachment: Attachment::InProcess(|settings, stop| Box::new(spawn(settings, stop))),
};

impl Model {
    // Spelled as the enum variant it was, so settings and tests name it so.
    #[allow(non_upper_case_globals)]
    pub const Simulator: Model = Model::of(&SPEC);
}

/// What is simulated, with its hardware ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hardware {
    /// A ProLAN-202 wired keypad: one unit, one copy of each press.
    Keypad { serial: UnitId },
    /// A ProLAN-501 receiver and the ProLAN-301 remotes it hears (at least
    /// one): three radio copies of each press.
    Receiver { id: UnitId, remotes: Vec<UnitId> },
}

/// How the customers in front of a device press.
#[derive(Clone, Debug, PartialEq)]
pub struct Customers {
    /// Customers per minute at the whole device (all its remotes), on top of
    /// `min_gap`: the gap between two customers is `min_gap` plus an
    /// exponential gap averaging `60 / presses_per_min` seconds.
    pub presses_per_min: f64,
    /// No two customers come closer than this.
    pub min_gap: Duration,
    /// The chance that a customer presses again once or twice in quick
    /// succession (what the agent's anti-spam marks suppressed).
    pub repeat_chance: f64,
}

/// Starts the `simulator` model's receiver; returns the host's end of its
/// pipe. The simulator stops when the host end is dropped or `stop` is
/// cancelled.
pub fn spawn(settings: SimulatorSettings, stop: CancellationToken) -> DuplexStream {
    let (host_end, device_end) = tokio::io::duplex(64 * 1024);
    let remotes = (0..settings.remotes.max(1))
        .map(|index| UnitId(FIRST_REMOTE_ID.wrapping_add(index)))
        .collect();
    let hardware = Hardware::Receiver {
        id: RECEIVER_ID,
        remotes,
    };
    let customers = Customers {
        presses_per_min: settings.presses_per_min,
        min_gap: Duration::ZERO,
        repeat_chance: 0.0,
    };
    tokio::spawn(run_device(
        device_end,
        hardware,
        customers,
        stop.clone(),
        stop,
    ));
    host_end
}

/// Which key a simulated customer presses: mostly yes, some no, a few
/// neutral; a rare fourth key is left unmapped in the demo's keymap.
pub fn pick_key(roll: f64) -> u8 {
    match roll {
        roll if roll < 0.62 => 1,
        roll if roll < 0.77 => 2,
        roll if roll < 0.98 => 3,
        _ => 4,
    }
}

/// Runs one simulated device on `link` until `stop` is cancelled, the link
/// fails or it reads end-of-file.
///
/// Customers start with the host's first QUERY (before it nobody reads the
/// port, and opening a serial port flushes what was sent), the first one
/// `min_gap` after it, and they stop when
/// `pressing` is cancelled; heartbeats and identity replies go on until
/// `stop`, so the agent sees a quiet, live device rather than a lost one.
pub async fn run_device<L>(
    mut link: L,
    hardware: Hardware,
    customers: Customers,
    pressing: CancellationToken,
    stop: CancellationToken,
) where
    L: AsyncRead + AsyncWrite + Unpin,
{
    let mut device = Device::new(hardware, customers);
    let mut heartbeat = tokio::time::interval(device.heartbeat_period());
    let mut from_host = BytesMut::with_capacity(256);
    let mut read_buffer = [0u8; 256];
    let mut out = BytesMut::with_capacity(256);
    // Heard from the first QUERY on.
    let mut next_press: Option<Instant> = None;

    device.power_up(&mut out);
    if !send(&mut link, &out, &stop).await {
        return;
    }
    loop {
        out.clear();
        let press_due = next_press.filter(|_| !pressing.is_cancelled());
        tokio::select! {
            _ = stop.cancelled() => return,
            // Wakes the loop, so that the press already waited for is dropped.
            _ = pressing.cancelled(), if press_due.is_some() => {}
            _ = heartbeat.tick() => device.heartbeat(&mut out),
            read = link.read(&mut read_buffer) => {
                let Ok(count @ 1..) = read else { return };
                from_host.extend_from_slice(&read_buffer[..count]);
                while let Some(command) = device.decode_outbound(&mut from_host) {
                    if command == Outbound::Query {
                        device.identity(&mut out);
                        // A customer was waiting for the device to come up.
                        next_press.get_or_insert_with(|| Instant::now() + device.customers.min_gap);
                    }
                }
            }
            _ = sleep_until_some(press_due) => {
                let press = device.press();
                next_press = Some(Instant::now() + device.gap_to_next_press());
                let copies = device.copies_per_press();
                for copy in 1..=copies {
                    out.clear();
                    device.encode(&Inbound::Press(press), &mut out);
                    if !send(&mut link, &out, &stop).await {
                        return;
                    }
                    if copy < copies && device.spaced_copies() {
                        tokio::time::sleep(COPY_GAP).await;
                    }
                }
                out.clear();
            }
        }
        if !out.is_empty() && !send(&mut link, &out, &stop).await {
            return;
        }
    }
}

/// The `simulator` model's receiver id; its remotes count up from
/// `0x301A0001`.
const RECEIVER_ID: UnitId = UnitId(0x5010_0001);
const FIRST_REMOTE_ID: u32 = 0x301A_0001;
/// Gap between the three radio copies of one press.
const COPY_GAP: Duration = Duration::from_millis(100);
/// Gap between the quick repeats of one customer, in milliseconds.
const REPEAT_GAP_MS: std::ops::RangeInclusive<u64> = 250..=600;

/// The device's memory between frames.
struct Device {
    hardware: Hardware,
    customers: Customers,
    started: Instant,
    /// Per unit (the keypad, or each remote): the last seq / counter sent.
    counters: Vec<u16>,
    /// Per remote: its battery, which a press reports.
    batteries: Vec<u8>,
    /// A customer pressing again: which unit, which key, how many more.
    repeating: Option<(usize, u8, u8)>,
}

impl Device {
    fn new(hardware: Hardware, customers: Customers) -> Device {
        let units = match &hardware {
            Hardware::Keypad { .. } => 1,
            Hardware::Receiver { remotes, .. } => remotes.len().max(1),
        };
        Device {
            hardware,
            customers,
            started: Instant::now(),
            counters: vec![0; units],
            batteries: (0..units).map(|_| fastrand::u8(40..=100)).collect(),
            repeating: None,
        }
    }

    fn heartbeat_period(&self) -> Duration {
        Duration::from_secs(match self.hardware {
            Hardware::Keypad { .. } => prolan202::HEARTBEAT_PERIOD_S,
            Hardware::Receiver { .. } => prolan501::HEARTBEAT_PERIOD_S,
        })
    }

    fn copies_per_press(&self) -> u32 {
        match self.hardware {
            Hardware::Keypad { .. } => 1,
            Hardware::Receiver { .. } => 3,
        }
    }

    /// A load test (presses faster than one a second) sends the radio
    /// copies back to back rather than stalling between them.
    fn spaced_copies(&self) -> bool {
        self.mean_gap_s() > 1.0
    }

    fn mean_gap_s(&self) -> f64 {
        60.0 / self.customers.presses_per_min
    }

    fn encode(&self, message: &Inbound, out: &mut BytesMut) {
        match self.hardware {
            Hardware::Keypad { .. } => prolan202::encode_inbound(message, out),
            Hardware::Receiver { .. } => prolan501::encode_inbound(message, out),
        }
    }

    fn decode_outbound(&self, from_host: &mut BytesMut) -> Option<Outbound> {
        match self.hardware {
            Hardware::Keypad { .. } => prolan202::decode_outbound(from_host),
            Hardware::Receiver { .. } => prolan501::decode_outbound(from_host),
        }
    }

    /// What the device says when it powers up: its identity, and for a
    /// receiver the status beacon of each remote.
    fn power_up(&self, out: &mut BytesMut) {
        self.identity(out);
        if let Hardware::Receiver { remotes, .. } = &self.hardware {
            for (remote, battery) in remotes.iter().zip(&self.batteries) {
                self.encode(
                    &Inbound::UnitStatus {
                        unit: *remote,
                        battery: Some(*battery),
                        rssi: -(fastrand::i8(45..=80)),
                    },
                    out,
                );
            }
        }
    }

    fn identity(&self, out: &mut BytesMut) {
        let identity = match &self.hardware {
            Hardware::Keypad { serial } => Identity {
                hardware_id: *serial,
                model: "PL202".into(),
                firmware: "1.4".into(),
                radio_channel: None,
            },
            Hardware::Receiver { id, .. } => Identity {
                hardware_id: *id,
                model: "PL501".into(),
                firmware: "2.3".into(),
                radio_channel: Some(4),
            },
        };
        self.encode(&Inbound::Identity(identity), out);
    }

    fn heartbeat(&self, out: &mut BytesMut) {
        let uptime_s = u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX);
        let heartbeat = match &self.hardware {
            Hardware::Keypad { serial } => Heartbeat {
                unit: Some(*serial),
                uptime_s,
                remotes_heard: None,
            },
            Hardware::Receiver { remotes, .. } => Heartbeat {
                unit: None,
                uptime_s,
                remotes_heard: Some(u8::try_from(remotes.len()).unwrap_or(u8::MAX)),
            },
        };
        self.encode(&Inbound::Heartbeat(heartbeat), out);
    }

    /// The next press: a repeat of the customer still pressing, or a new
    /// customer at a random unit.
    fn press(&mut self) -> Press {
        let (unit_index, key) = match self.repeating.take() {
            Some((unit_index, key, more)) => {
                if more > 1 {
                    self.repeating = Some((unit_index, key, more - 1));
                }
                (unit_index, key)
            }
            None => {
                let unit_index = fastrand::usize(..self.counters.len());
                let key = pick_key(fastrand::f64());
                if fastrand::f64() < self.customers.repeat_chance {
                    self.repeating = Some((unit_index, key, fastrand::u8(1..=2)));
                }
                (unit_index, key)
            }
        };
        self.counters[unit_index] = self.counters[unit_index].wrapping_add(1);
        let seq = self.counters[unit_index];
        match &self.hardware {
            Hardware::Keypad { serial } => Press {
                unit: *serial,
                key,
                seq,
                rssi: None,
                battery: None,
            },
            Hardware::Receiver { remotes, .. } => Press {
                unit: remotes.get(unit_index).copied().unwrap_or(UnitId(0)),
                key,
                seq,
                rssi: Some(-(fastrand::i8(45..=80))),
                battery: self.batteries.get(unit_index).copied(),
            },
        }
    }

    /// How long until the next press: soon for a customer still pressing,
    /// else the next customer's arrival.
    fn gap_to_next_press(&self) -> Duration {
        if self.repeating.is_some() {
            return Duration::from_millis(fastrand::u64(REPEAT_GAP_MS));
        }
        self.customers.min_gap + exponential_gap(self.mean_gap_s())
    }
}

/// Writes `bytes` unless `stop` comes first (a port nobody reads fills up
/// and would block the write forever); false when the device should end.
async fn send<L: AsyncWrite + Unpin>(link: &mut L, bytes: &[u8], stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        written = link.write_all(bytes) => written.is_ok(),
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Customers arrive at random: exponential gaps around the mean.
fn exponential_gap(mean_s: f64) -> Duration {
    let uniform = fastrand::f64().max(f64::MIN_POSITIVE);
    Duration::from_secs_f64((-uniform.ln() * mean_s).clamp(0.0, 3_600.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::Decoded;
    use futures_util::{SinkExt, StreamExt};
    use tokio_util::codec::Framed;

    /// Runs `hardware` on a pipe, asks for its identity like a driver and
    /// collects what it sends for `listen` (on the paused clock).
    async fn check(hardware: Hardware, listen: Duration) -> Vec<Inbound> {
        let (host_end, device_end) = tokio::io::duplex(64 * 1024);
        let model = match hardware {
            Hardware::Keypad { .. } => Model::Prolan202,
            Hardware::Receiver { .. } => Model::Prolan501,
        };
        let customers = Customers {
            presses_per_min: 12.0,
            min_gap: Duration::from_secs(1),
            repeat_chance: 0.0,
        };
        let stop = CancellationToken::new();
        let device = tokio::spawn(run_device(
            device_end,
            hardware,
            customers,
            stop.clone(),
            stop.clone(),
        ));
        let mut host = Framed::new(host_end, model.codec());
        host.send(Outbound::Query).await.expect("send QUERY");
        let mut messages = Vec::new();
        let deadline = Instant::now() + listen;
        while let Ok(Some(item)) = tokio::time::timeout_at(deadline, host.next()).await {
            match item.expect("read") {
                Decoded::Message(message) => messages.push(message),
                other => panic!("the simulator sent a bad frame: {other:?}"),
            }
        }
        stop.cancel();
        device.await.expect("the simulator ended cleanly");
        messages
    }

    fn presses(messages: &[Inbound]) -> Vec<Press> {
        messages
            .iter()
            .filter_map(|message| match message {
                Inbound::Press(press) => Some(*press),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_keypad_sends_its_identity_heartbeats_and_numbered_presses() {
        let serial = UnitId(0x202A_0F31);
        let messages = check(Hardware::Keypad { serial }, Duration::from_secs(60)).await;
        assert!(
            matches!(&messages[0], Inbound::Identity(identity) if identity.hardware_id == serial)
        );
        let heartbeats = messages
            .iter()
            .filter(
                |message| matches!(message, Inbound::Heartbeat(beat) if beat.unit == Some(serial)),
            )
            .count();
        assert!(
            (6..=7).contains(&heartbeats),
            "{heartbeats} heartbeats in 60 s"
        );
        let presses = presses(&messages);
        assert!(!presses.is_empty(), "no press in 60 s");
        let seqs: Vec<u16> = presses.iter().map(|press| press.seq).collect();
        let expected: Vec<u16> = (1..=presses.len() as u16).collect();
        assert_eq!(seqs, expected, "one copy per press, seq +1 per press");
    }

    #[tokio::test(start_paused = true)]
    async fn a_receiver_forwards_every_radio_press_three_times() {
        let remotes = vec![UnitId(0x301A_0001), UnitId(0x301A_0002)];
        let hardware = Hardware::Receiver {
            id: UnitId(0x5010_00A7),
            remotes: remotes.clone(),
        };
        let messages = check(hardware, Duration::from_secs(60)).await;
        let presses = presses(&messages);
        assert!(!presses.is_empty(), "no press in 60 s");
        // The copies are 100 ms apart, so the listening deadline may fall
        // between the copies of the last press: only that one may be short.
        // (Two copies per press would put two presses into a chunk of three.)
        for copies in presses.chunks(3) {
            assert!(copies.iter().all(|copy| *copy == copies[0]), "{copies:?}");
            assert!(remotes.contains(&copies[0].unit), "{copies:?}");
        }
    }
}

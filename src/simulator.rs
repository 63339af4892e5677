//! The `simulator` model: an in-process ProLAN-501 receiver with simulated
//! ProLAN-301 remotes. It speaks the real wire protocol over an in-memory
//! pipe, so its presses go through the same codec, duplicate filter and
//! store as a real receiver's: every press is sent three times, as a remote
//! does; heartbeats come every 5 s; QUERY is answered with HELLO; ACKs are
//! counted.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

use crate::config::SimulatorSettings;
use crate::protocol::{prolan501, Heartbeat, Identity, Inbound, Outbound, Press, UnitId};

/// Simulated receivers answer with this id (and remotes count up from
/// `0x301A0001`).
const RECEIVER_ID: u32 = 0x5010_0001;
const FIRST_REMOTE_ID: u32 = 0x301A_0001;
/// Gap between the three radio copies of one press.
const COPY_GAP: Duration = Duration::from_millis(100);

/// Starts a simulated receiver; returns the host's end of its pipe. The
/// simulator stops when the host end is dropped or `stop` is cancelled.
pub fn spawn(settings: SimulatorSettings, stop: CancellationToken) -> DuplexStream {
    let (host_end, device_end) = tokio::io::duplex(64 * 1024);
    tokio::spawn(run(device_end, settings, stop));
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

async fn run(mut pipe: DuplexStream, settings: SimulatorSettings, stop: CancellationToken) {
    let mut counters = vec![0u16; settings.remotes as usize];
    let mean_gap_s = 60.0 / settings.presses_per_min;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(prolan501::HEARTBEAT_PERIOD_S));
    let started = tokio::time::Instant::now();
    let mut from_host = BytesMut::with_capacity(256);
    let mut read_buffer = [0u8; 256];
    let mut out = BytesMut::with_capacity(256);

    hello(&mut out);
    for (index, _) in counters.iter().enumerate() {
        prolan501::encode_inbound(
            &Inbound::UnitStatus {
                unit: UnitId(FIRST_REMOTE_ID + index as u32),
                battery: Some(fastrand::u8(40..=100)),
                rssi: -(fastrand::i8(45..=80)),
            },
            &mut out,
        );
    }
    if pipe.write_all(&out).await.is_err() {
        return;
    }

    let mut next_press = tokio::time::Instant::now() + exponential_gap(mean_gap_s);
    loop {
        out.clear();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = heartbeat.tick() => {
                prolan501::encode_inbound(
                    &Inbound::Heartbeat(Heartbeat {
                        unit: None,
                        uptime_s: started.elapsed().as_secs() as u32,
                        remotes_heard: Some(counters.len().min(255) as u8),
                    }),
                    &mut out,
                );
            }
            read = pipe.read(&mut read_buffer) => {
                let Ok(count @ 1..) = read else { return };
                from_host.extend_from_slice(&read_buffer[..count]);
                while let Some(command) = prolan501::decode_outbound(&mut from_host) {
                    if command == Outbound::Query {
                        hello(&mut out);
                    }
                }
            }
            _ = tokio::time::sleep_until(next_press) => {
                let remote = fastrand::usize(..counters.len());
                counters[remote] = counters[remote].wrapping_add(1);
                let press = Inbound::Press(Press {
                    unit: UnitId(FIRST_REMOTE_ID + remote as u32),
                    key: pick_key(fastrand::f64()),
                    seq: counters[remote],
                    rssi: Some(-(fastrand::i8(45..=80))),
                    battery: Some(fastrand::u8(40..=100)),
                });
                next_press = tokio::time::Instant::now() + exponential_gap(mean_gap_s);
                // A remote sends each press three times; the receiver forwards each copy.
                for copy in 0..3 {
                    out.clear();
                    prolan501::encode_inbound(&press, &mut out);
                    if pipe.write_all(&out).await.is_err() {
                        return;
                    }
                    if copy < 2 && mean_gap_s > 1.0 {
                        tokio::time::sleep(COPY_GAP).await;
                    }
                }
                out.clear();
            }
        }
        if !out.is_empty() && pipe.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn hello(out: &mut BytesMut) {
    prolan501::encode_inbound(
        &Inbound::Identity(Identity {
            hardware_id: UnitId(RECEIVER_ID),
            model: "PL501".into(),
            firmware: "2.3".into(),
            radio_channel: Some(4),
        }),
        out,
    );
}

/// Customers arrive at random: exponential gaps around the mean.
fn exponential_gap(mean_s: f64) -> Duration {
    let uniform = fastrand::f64().max(f64::MIN_POSITIVE);
    Duration::from_secs_f64((-uniform.ln() * mean_s).min(3_600.0))
}

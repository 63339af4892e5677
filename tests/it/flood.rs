//! A flood: 30 s of radio frames at full speed from 500 remotes, written
//! into a pseudo-terminal as fast as the agent reads them (each press sent
//! three times, as a receiver does). The agent's memory must stay bounded
//! (under 40 MB) and flat over the last 10 s, and every distinct press must
//! be stored once.
//!
//! The bound is on the memory the agent itself takes (`RssAnon` +
//! `RssShmem`: its heap, stacks and SQLite's shared WAL index), not on the
//! pages of its own executable that happen to be resident (`RssFile`):
//! those are about 21 MB for the debug build these tests run and about
//! 8 MB for the release build, and say nothing about a flood.

use crate::support;

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use epm_agent::protocol::{prolan501, Inbound, UnitId};
use support::{radio_press, DeviceConfig, Pty, TestDir};

const FLOOD_FOR: Duration = Duration::from_secs(30);
const REMOTES: u32 = 500;
const FIRST_REMOTE: u32 = 0x301A_0000;
/// Copies of each press, as the radio repeats it.
const COPIES: usize = 3;
/// The bound the agent must stay under, whatever the flood.
const MEMORY_LIMIT_KB: u64 = 40 * 1024;
/// "Flat": the last 10 s may grow by no more than this.
const LAST_10_S_GROWTH_KB: u64 = 2 * 1024;

/// `VmRSS` and what the process took itself (`RssAnon` + `RssShmem`), in kB.
fn memory_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("RssAnon:")? + field("RssShmem:")?))
}

/// Writes presses round-robin over the remotes until `FLOOD_FOR` is over;
/// returns how many distinct presses went out whole.
fn flood(pty: &Pty) -> u64 {
    let mut master = pty.master();
    let started = Instant::now();
    let mut chunk = BytesMut::new();
    let mut presses = 0u64;
    let mut acks = [0u8; 4096];
    while started.elapsed() < FLOOD_FOR {
        chunk.clear();
        for _ in 0..200 {
            let remote = UnitId(FIRST_REMOTE + (presses % u64::from(REMOTES)) as u32);
            let counter = (presses / u64::from(REMOTES)) as u16;
            let key = (presses % 3) as u8 + 1;
            let press = radio_press(remote, key, counter, -60, Some(90));
            for _ in 0..COPIES {
                prolan501::encode_inbound(&Inbound::Press(press), &mut chunk);
            }
            presses += 1;
        }
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            // The ACKs coming back are read and dropped, so that the agent's
            // writes never fill the terminal.
            while let Ok(1..) = master.read(&mut acks) {}
            match master.write(rest) {
                Ok(written) => rest = &rest[written..],
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(error) => panic!("writing the flood: {error}"),
            }
        }
    }
    presses
}

#[test]
fn a_30_s_flood_keeps_memory_bounded_and_flat() {
    // At full speed the flood takes both cores: it runs alone.
    let dir = TestDir::alone();
    let pty = Pty::open().expect("open a pseudo-terminal");
    let config = dir.write_config(&[DeviceConfig {
        name: "entrance".into(),
        model: "prolan-501",
        port: pty.slave_path().to_path_buf(),
        question: "recommend".into(),
        keymap: DeviceConfig::keymap(&[(1, "yes"), (2, "neutral"), (3, "no")]),
        min_interval_s: 0.0,
    }]);
    let mut agent = dir.spawn_agent(&config);
    let pid = agent.pid();
    dir.wait_until(Duration::from_secs(10), "the agent reading", || {
        let device = support::device_row(&dir.data_dir(), "entrance")?;
        match device.state.as_str() {
            "connected" => Ok(()),
            state => Err(state.to_string()),
        }
    });
    let before = memory_kb(pid).expect("the agent's memory");

    let sampling = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            let started = Instant::now();
            while started.elapsed() < FLOOD_FOR {
                if let Some(memory) = memory_kb(pid) {
                    samples.push((started.elapsed(), memory));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            samples
        });
        let sent = flood(&pty);
        (sent, sampler.join().expect("the sampler"))
    });
    let (sent, samples) = sampling;
    let table: String = samples
        .iter()
        .map(|(at, (rss, own))| format!("{:5.1} s  rss {rss} kB  own {own} kB\n", at.as_secs_f64()))
        .collect();
    let peak = samples.iter().map(|(_, (_, own))| *own).max().unwrap_or(0);
    assert!(
        peak < MEMORY_LIMIT_KB,
        "peak {peak} kB of its own (before the flood {before:?}) over {sent} presses\n{table}"
    );
    let last: Vec<u64> = samples
        .iter()
        .filter(|(at, _)| *at >= FLOOD_FOR - Duration::from_secs(10))
        .map(|(_, (_, own))| *own)
        .collect();
    let (first, highest) = (last[0], *last.iter().max().unwrap_or(&0));
    assert!(
        highest <= first + LAST_10_S_GROWTH_KB,
        "its memory grew from {first} to {highest} kB in the last 10 s\n{table}"
    );
    eprintln!(
        "{sent} presses ({} frames) in {FLOOD_FOR:?}\n{table}",
        sent * COPIES as u64
    );

    // Every distinct press is stored once, however fast it came.
    let stored = dir.wait_until(Duration::from_secs(60), "every press stored", || {
        let device = dir.device("entrance");
        if device.presses as u64 >= sent {
            Ok(device)
        } else {
            Err(format!("{} of {sent}", device.presses))
        }
    });
    assert_eq!(stored.presses as u64, sent, "{stored:?}");
    agent.stop_cleanly();
}

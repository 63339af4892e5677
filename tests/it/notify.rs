//! The daemon tells systemd the truth through its notify socket: READY=1
//! once the store is open and the devices are configured, WATCHDOG=1 at
//! half the configured watchdog interval, STATUS= with a summary,
//! RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM. The test
//! plays systemd: it binds the datagram socket and reads what arrives.
#![cfg(target_os = "linux")]

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The watchdog interval the test "configures": pings every second.
const WATCHDOG: Duration = Duration::from_secs(2);

struct Received {
    at: Instant,
    text: String,
}

fn receive_until(
    socket: &UnixDatagram,
    deadline: Instant,
    mut done: impl FnMut(&[Received]) -> bool,
    log: &mut Vec<Received>,
) {
    let mut buffer = [0u8; 4096];
    while !done(log) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out; received so far: {:?}",
            log.iter().map(|m| &m.text).collect::<Vec<_>>()
        );
        socket.set_read_timeout(Some(left)).expect("timeout");
        if let Ok(count) = socket.recv(&mut buffer) {
            log.push(Received {
                at: Instant::now(),
                text: String::from_utf8_lossy(&buffer[..count]).into_owned(),
            });
        }
    }
}

fn count(log: &[Received], message: &str) -> usize {
    log.iter()
        .filter(|received| received.text.lines().any(|line| line == message))
        .count()
}

#[test]
fn ready_watchdog_status_reloading_and_stopping_reach_the_notify_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nid = \"t\"\ndata_dir = \"{}\"\n\n[[device]]\nname = \"sim\"\nmodel = \"simulator\"\nsim_presses_per_min = 120\n",
            dir.path().join("data").display()
        ),
    )
    .expect("config");
    let started = Instant::now();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
        .env_remove("WATCHDOG_PID")
        .stderr(Stdio::null())
        .spawn()
        .expect("start the agent");
    let pid = Pid::from_raw(agent.id() as i32);
    let mut log = Vec::new();

    receive_until(
        &socket,
        started + Duration::from_secs(10),
        |log| count(log, "READY=1") == 1,
        &mut log,
    );
    let ready_at = log.last().map(|received| received.at).expect("READY=1");
    assert!(
        !log.iter()
            .any(|received| received.text.contains("WATCHDOG=1")),
        "no ping before READY=1"
    );
    receive_until(
        &socket,
        ready_at + Duration::from_secs(10),
        |log| count(log, "WATCHDOG=1") >= 4,
        &mut log,
    );
    let pings: Vec<Instant> = log
        .iter()
        .filter(|received| received.text.lines().any(|line| line == "WATCHDOG=1"))
        .map(|received| received.at)
        .collect();
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(700) && gap <= Duration::from_millis(1_500),
            "pings every WatchdogSec/2 = 1 s, got a gap of {gap:?}"
        );
    }
    let status = log
        .iter()
        .find_map(|received| {
            received
                .text
                .lines()
                .find_map(|line| line.strip_prefix("STATUS="))
                .map(str::to_string)
        })
        .expect("a STATUS= line");
    assert!(
        status.contains("devices connected") && status.contains("presses"),
        "{status}"
    );

    kill(pid, Signal::SIGHUP).expect("SIGHUP");
    let before = log.len();
    receive_until(
        &socket,
        Instant::now() + Duration::from_secs(10),
        |log| count(&log[before..], "RELOADING=1") == 1 && count(&log[before..], "READY=1") == 1,
        &mut log,
    );

    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    receive_until(
        &socket,
        Instant::now() + Duration::from_secs(10),
        |log| count(log, "STOPPING=1") == 1,
        &mut log,
    );
    let status = agent.wait().expect("the agent exits");
    assert!(status.success(), "{status}");
}

//! The daemon as a process: a clean stop (SIGTERM) commits everything read,
//! records the stop, and leaves counters that agree with the events.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rusqlite::{Connection, OpenFlags};

fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("agent.toml");
    let text = format!(
        "[agent]\nid = \"test\"\ndata_dir = \"{}\"\n\n\
         [[device]]\nname = \"sim\"\nmodel = \"simulator\"\nkeymap = {{ 1 = \"yes\", 2 = \"neutral\", 3 = \"no\" }}\n\
         min_interval_s = 0.05\nsim_remotes = 4\nsim_presses_per_min = 30000\n",
        dir.join("data").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn open(dir: &Path) -> Connection {
    Connection::open_with_flags(
        dir.join("data/epm-agent.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open store")
}

fn count(connection: &Connection, sql: &str) -> i64 {
    connection.query_row(sql, [], |row| row.get(0)).expect(sql)
}

#[test]
fn sigterm_stops_cleanly_with_consistent_counters() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path());
    let child = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent");

    // Wait until presses are streaming in, then stop mid-stream.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no presses stored within 20 s");
        if dir.path().join("data/epm-agent.db").exists() {
            let stored = count(&open(dir.path()), "SELECT count(*) FROM events");
            if stored >= 200 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("send SIGTERM");
    let output = child.wait_with_output().expect("agent exits");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit status {:?}\n{stderr}",
        output.status
    );
    assert!(stderr.contains("everything read was committed"), "{stderr}");

    let store = open(dir.path());
    let events = count(&store, "SELECT count(*) FROM events");
    assert_eq!(
        count(&store, "SELECT presses FROM devices WHERE name = 'sim'"),
        events
    );
    assert_eq!(
        count(
            &store,
            "SELECT sum(presses) FROM units WHERE device = 'sim'"
        ),
        events
    );
    assert_eq!(
        count(&store, "SELECT count(DISTINCT id) FROM events"),
        events
    );
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM (SELECT DISTINCT unit, seq FROM events)"
        ),
        events,
        "no (unit, seq) stored twice"
    );
    // Three radio copies per press: two of every three are duplicates.
    let duplicates = count(&store, "SELECT duplicates FROM devices WHERE name = 'sim'");
    assert!(
        duplicates >= 2 * events - 6,
        "{duplicates} duplicates for {events} presses"
    );
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM daemon WHERE stopped_at IS NOT NULL"
        ),
        1
    );
    assert!(
        count(&store, "SELECT count(*) FROM events WHERE suppressed = 1") > 0,
        "anti-spam marks fast presses"
    );
    // Ids sort in store order.
    let out_of_order = count(
        &store,
        "SELECT count(*) FROM events a JOIN events b ON b.seqno = a.seqno + 1 WHERE b.id <= a.id",
    );
    assert_eq!(out_of_order, 0);
}

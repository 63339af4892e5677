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

/// Events stored so far; 0 while the store is still being created.
fn stored_events(dir: &Path) -> i64 {
    Connection::open_with_flags(
        dir.join("data/epm-agent.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .and_then(|connection| {
        connection.query_row(
            "SELECT count(*) FROM events WHERE type = 'press'",
            [],
            |row| row.get(0),
        )
    })
    .unwrap_or(0)
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
        if stored_events(dir.path()) >= 200 {
            break;
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
    let events = count(&store, "SELECT count(*) FROM events WHERE type = 'press'");
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
        count(
            &store,
            "SELECT count(DISTINCT id) FROM events WHERE type = 'press'"
        ),
        events
    );
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM (SELECT DISTINCT unit, seq FROM events WHERE type = 'press')"
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

/// The socket inodes of `pid` that are listening (TCP LISTEN, or a unix
/// socket accepting connections), read from /proc.
#[cfg(target_os = "linux")]
fn listening_sockets(pid: u32) -> Vec<String> {
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd list")
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
            {
                inodes.insert(inode.to_string());
            }
        }
    }
    let mut listening = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) == Some(&"0A")
                && fields.get(9).is_some_and(|inode| inodes.contains(*inode))
            {
                listening.push(format!("{table} {}", fields[1]));
            }
        }
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Flags 00010000: __SO_ACCEPTCON, a listening unix socket.
        if fields.get(3) == Some(&"00010000")
            && fields.get(6).is_some_and(|inode| inodes.contains(*inode))
        {
            listening.push(format!("unix {}", fields.get(7).unwrap_or(&"")));
        }
    }
    assert!(!inodes.is_empty() || listening.is_empty());
    listening
}

#[cfg(target_os = "linux")]
#[test]
fn the_agent_listens_on_no_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path());
    // A sink too, so the HTTP client is set up and connecting.
    let mut text = std::fs::read_to_string(&config).expect("read");
    text.push_str("\n[[sink]]\nname = \"r\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/batches\"\nmax_backoff_s = 1\n");
    std::fs::write(&config, text).expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .expect("start agent");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no presses stored within 20 s");
        if stored_events(dir.path()) > 10 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let listening = listening_sockets(child.id());
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let _ = child.wait();
    assert!(listening.is_empty(), "the agent listens on {listening:?}");
}

/// `epm-agent run --config <config>` to its end (at most 20 s): exit
/// code and stderr.
fn run_to_exit(config: &Path, as_user: Option<&str>) -> (Option<i32>, String) {
    let mut command = match as_user {
        Some(user) => {
            let mut command = Command::new("runuser");
            command
                .args(["-u", user, "--"])
                .arg(env!("CARGO_BIN_EXE_epm-agent"));
            command
        }
        None => Command::new(env!("CARGO_BIN_EXE_epm-agent")),
    };
    let mut child = command
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("poll the agent").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not exit within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("agent output");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_second_agent_on_one_data_dir_exits_2_and_nothing_is_delivered_twice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path());
    let mut text = std::fs::read_to_string(&config).expect("read");
    text.push_str(&format!(
        "\n[[sink]]\nname = \"files\"\nkind = \"file\"\nformat = \"ndjson\"\npath = \"{}\"\nflush_interval_ms = 50\n",
        dir.path().join("out").display()
    ));
    std::fs::write(&config, text).expect("write");
    let mut first = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .expect("start agent");
    let deadline = Instant::now() + Duration::from_secs(20);
    while stored_events(dir.path()) < 50 {
        assert!(Instant::now() < deadline, "no presses stored within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }

    let started = Instant::now();
    let (code, stderr) = run_to_exit(&config, None);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not after {:?}",
        started.elapsed()
    );
    let expected = format!(
        "another epm-agent (pid {}) is using {}",
        first.id(),
        dir.path().join("data").display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one message: {stderr}");
    assert_eq!(
        first.try_wait().expect("poll"),
        None,
        "the first agent runs on"
    );

    std::thread::sleep(Duration::from_millis(500));
    kill(Pid::from_raw(first.id() as i32), Signal::SIGTERM).expect("send SIGTERM");
    assert!(first.wait().expect("agent exits").success());
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("out")).expect("the sink's folder") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("a day file");
        for line in text.lines() {
            let event: serde_json::Value = serde_json::from_str(line).expect("an ndjson line");
            ids.push(event["id"].as_str().expect("an id").to_string());
        }
    }
    let lines = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), lines, "no event written twice");
    let stored = count(&open(dir.path()), "SELECT count(*) FROM events");
    assert_eq!(lines as i64, stored, "every stored event delivered once");
}

/// A configuration whose data_dir is `data_dir`.
fn config_with_data_dir(dir: &Path, data_dir: &Path) -> std::path::PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[agent]\nid = \"test\"\ndata_dir = \"{}\"\n",
            data_dir.display()
        ),
    )
    .expect("write config");
    path
}

/// What is in `dir`, by name.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the folder")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn a_data_dir_that_is_a_file_exits_2_naming_it_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    std::fs::write(&data_dir, "not a folder").expect("write");
    let config = config_with_data_dir(dir.path(), &data_dir);
    let (code, stderr) = run_to_exit(&config, None);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is a file, not a folder"), "{stderr}");
    assert_eq!(
        stderr.matches(&data_dir.display().to_string()).count(),
        1,
        "the path once: {stderr}"
    );
    assert_eq!(names_in(dir.path()), ["agent.toml", "data"]);
}

/// The unprivileged user the permission cases run the agent as (root
/// bypasses file permissions).
#[cfg(target_os = "linux")]
const UNPRIVILEGED: &str = "nobody";

#[cfg(target_os = "linux")]
fn world_readable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[cfg(target_os = "linux")]
#[test]
fn a_folder_or_store_the_service_user_cannot_write_exits_2_and_leaves_nothing() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::getuid().is_root() {
        return; // the cases need another user to run the agent as
    }
    let nobody = nix::unistd::User::from_name(UNPRIVILEGED)
        .expect("look up the user")
        .expect("the user exists");
    let dir = tempfile::tempdir().expect("temp dir");
    world_readable(dir.path());

    // A data_dir in a folder the user cannot write.
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    let config = config_with_data_dir(dir.path(), &locked.join("data"));
    world_readable(dir.path());
    let (code, stderr) = run_to_exit(&config, Some(UNPRIVILEGED));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot create data_dir") && stderr.contains("permission denied"),
        "{stderr}"
    );
    assert!(
        stderr.contains("install -d -o nobody"),
        "says the fix: {stderr}"
    );
    assert!(names_in(&locked).is_empty(), "nothing created");

    // A store file the user cannot write, in a folder it owns.
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).expect("mkdir");
    let store = data_dir.join("epm-agent.db");
    std::fs::write(&store, b"").expect("an empty store file");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    nix::unistd::chown(&data_dir, Some(nobody.uid), Some(nobody.gid)).expect("chown");
    let config = config_with_data_dir(dir.path(), &data_dir);
    let (code, stderr) = run_to_exit(&config, Some(UNPRIVILEGED));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot write the store {}", store.display())),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one message: {stderr}");
    assert!(
        !names_in(&data_dir)
            .iter()
            .any(|name| name.ends_with("-wal") || name.ends_with("-shm")),
        "no half-made store: {:?}",
        names_in(&data_dir)
    );
}

/// A read-only mount (a tmpfs mounted `ro`: the state of a filesystem
/// remounted read-only after errors), both as the data_dir's parent and
/// holding an existing store.
#[cfg(target_os = "linux")]
#[test]
fn a_data_dir_on_a_read_only_mount_exits_2_and_leaves_nothing() {
    if !nix::unistd::getuid().is_root() {
        return; // mounting needs root
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mount_point = dir.path().join("mnt");
    std::fs::create_dir(&mount_point).expect("mkdir");
    // Made writable first, with a store in it, then remounted read-only.
    let mount = |options: &str| {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&mount_point)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -o {options}");
    };
    mount("size=4m");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mount_point);
    let with_store = mount_point.join("with-store");
    std::fs::create_dir(&with_store).expect("mkdir");
    rusqlite::Connection::open(with_store.join("epm-agent.db"))
        .and_then(|connection| connection.execute_batch("CREATE TABLE t (x)"))
        .expect("a store file");
    let remount = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&mount_point)
        .status()
        .expect("run mount");
    assert!(remount.success(), "remount read-only");

    for data_dir in [mount_point.join("data"), with_store.clone()] {
        let config = config_with_data_dir(dir.path(), &data_dir);
        let before = names_in(&mount_point);
        let (code, stderr) = run_to_exit(&config, None);
        assert_eq!(code, Some(2), "{}: {stderr}", data_dir.display());
        assert!(stderr.contains("read-only"), "says why: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one message: {stderr}");
        assert_eq!(
            stderr.matches(&data_dir.display().to_string()).count(),
            1,
            "the path once: {stderr}"
        );
        assert_eq!(names_in(&mount_point), before, "nothing created");
        if data_dir == with_store {
            assert_eq!(
                names_in(&with_store),
                ["epm-agent.db"],
                "no -wal, -shm or lock"
            );
        }
    }
}

/// A data_dir every user may enter (made by hand with the default umask)
/// still works, and the log says how to close it.
#[cfg(unix)]
#[test]
fn a_data_dir_open_to_everyone_is_warned_about() {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path());
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).expect("mkdir");
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent");
    let stderr = agent.stderr.take().expect("stderr");
    let (found, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("open to every user") {
                let _ = found.send(line);
            }
        }
    });
    let line = seen.recv_timeout(Duration::from_secs(20));
    let _ = agent.kill();
    let _ = agent.wait();
    let line = line.expect("a warning about the data_dir's mode within 20 s");
    assert!(
        line.contains("WARN")
            && line.contains("mode 0755")
            && line.contains(&format!("chmod 750 {}", data_dir.display())),
        "{line}"
    );
}

/// `run`'s log on a terminal: coloured, unless NO_COLOR is set to anything
/// but empty (no-color.org). The agent's stderr is a pseudo-terminal.
#[cfg(unix)]
#[test]
fn the_log_on_a_terminal_is_coloured_unless_no_color_is_set() {
    use std::io::Read;
    let log_on_terminal = |no_color: Option<&str>| -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = write_config(dir.path());
        let pair = nix::pty::openpty(None, None).expect("a pseudo-terminal");
        let mut command = Command::new(env!("CARGO_BIN_EXE_epm-agent"));
        command
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("NO_COLOR")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(pair.slave));
        if let Some(value) = no_color {
            command.env("NO_COLOR", value);
        }
        let mut agent = command.spawn().expect("start agent");
        drop(command); // our copy of the slave: the master ends when the agent does
        let (chunks, received) = std::sync::mpsc::channel();
        let mut master = std::fs::File::from(pair.master);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // EIO once the agent, the last holder of the slave, is gone.
            while let Ok(read @ 1..) = master.read(&mut buffer) {
                if chunks.send(buffer[..read].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut log = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !String::from_utf8_lossy(&log).contains("INFO") {
            let left = deadline.saturating_duration_since(Instant::now());
            match received.recv_timeout(left) {
                Ok(chunk) => log.extend(chunk),
                Err(_) => break,
            }
        }
        let _ = agent.kill();
        let _ = agent.wait();
        let log = String::from_utf8_lossy(&log).into_owned();
        assert!(log.contains("INFO"), "an info line within 20 s: {log:?}");
        log
    };
    assert!(log_on_terminal(None).contains("\x1b["), "coloured");
    assert!(
        log_on_terminal(Some("")).contains("\x1b["),
        "an empty NO_COLOR is unset"
    );
    let plain = log_on_terminal(Some("1"));
    assert!(!plain.contains('\x1b'), "{plain:?}");
}

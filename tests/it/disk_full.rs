//! A store that cannot be written: the writer keeps taking presses into its
//! memory backlog (a driver never waits on a full disk), stores every one
//! of them exactly once and in order when there is room again, drops (and
//! counts) only what the backlog cannot hold, and never stops; the daemon
//! keeps its watchdog fed and says what is wrong.
//!
//! "Full" is a genuinely full filesystem wherever the test may mount one:
//! a small tmpfs, filled to the last page by a ballast file (mounting needs
//! root, which CI has). Elsewhere the writer-level tests fall back to a
//! page cap on the writer's connection (`WriterOptions::max_page_count`)
//! over a store padded with ballast rows, and the daemon-level test, which
//! cannot cap the binary's store, says it was not run.
//! `EPM_TEST_FULL_DISK=page-cap` forces the fallback.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use rusqlite::{Connection, OpenFlags};
use tempfile::TempDir;
use tokio::sync::mpsc;

use epm_agent::event::NewPress;
use epm_agent::protocol::UnitId;
use epm_agent::store::writer::WriterHealth;
use epm_agent::store::{writer, Store, StoreHandle, WriterOptions};

/// Time enough for any send: a writer that does not drain its queue while
/// the store is full makes the sender wait until there is room (forever).
const SENDS_TIMEOUT: Duration = Duration::from_secs(10);
/// Time enough for the writer's next retry (at most 5 s apart) and for
/// committing the backlog.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time enough for a health answer: the writer gives one after its commit
/// attempt in progress, or at once while it waits to retry.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// The device of the presses under test.
const DEVICE: &str = "entrance";
/// Room in the tmpfs before the ballast fills it.
const TMPFS_SIZE: &str = "8m";

/// A data directory whose store can be made full and given room again.
struct FullDisk {
    /// Where the store lives.
    data_dir: PathBuf,
    room: Room,
    // Dropped last: after `Drop` unmounted what is mounted in it.
    _dir: TempDir,
}

enum Room {
    /// A tmpfs on `mount`; the file `ballast` takes all of its room.
    Tmpfs { mount: PathBuf, ballast: PathBuf },
    /// The writer may not grow the database past `pages`, its size at the
    /// start, much of it a ballast table.
    PageCap { pages: u32 },
}

impl FullDisk {
    /// A new store, on a tmpfs if one can be mounted; still with room.
    fn new() -> (FullDisk, Store) {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let forced_cap = std::env::var("EPM_TEST_FULL_DISK").is_ok_and(|kind| kind == "page-cap");
        let mount = dir.path().join("disk");
        if !forced_cap && mount_tmpfs(&mount) {
            let data_dir = mount.join("data");
            let store = Store::open_writer(&data_dir).expect("open the store");
            let disk = FullDisk {
                data_dir,
                room: Room::Tmpfs {
                    ballast: mount.join("ballast"),
                    mount,
                },
                _dir: dir,
            };
            return (disk, store);
        }
        let data_dir = dir.path().join("data");
        let store = Store::open_writer(&data_dir).expect("open the store");
        // About 4 MB of ballast rows: room for every press of these tests
        // once it is deleted.
        store
            .connection()
            .execute_batch(
                "CREATE TABLE ballast (padding BLOB);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
                 INSERT INTO ballast SELECT zeroblob(4000) FROM n;",
            )
            .expect("ballast rows");
        let pages: u32 = store
            .connection()
            .pragma_query_value(None, "page_count", |row| row.get(0))
            .expect("page count");
        let disk = FullDisk {
            data_dir,
            room: Room::PageCap { pages },
            _dir: dir,
        };
        (disk, store)
    }

    /// `options` with what the writer needs to see this disk fill up.
    fn options(&self, options: WriterOptions) -> WriterOptions {
        match self.room {
            Room::Tmpfs { .. } => options,
            Room::PageCap { pages } => WriterOptions {
                max_page_count: Some(pages),
                ..options
            },
        }
    }

    /// Takes the disk's last free byte (a capped store is full already).
    fn fill(&self) {
        let Room::Tmpfs { ballast, .. } = &self.room else {
            return;
        };
        // An empty WAL: the next commit needs new room on the disk, not a
        // stretch of the WAL file that a checkpoint lets it reuse.
        let connection = Connection::open(self.data_dir.join("epm-agent.db")).expect("open");
        connection
            .busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        connection
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            })
            .expect("checkpoint");
        fill_to_the_last_byte(ballast);
    }

    /// Gives room back: the ballast goes.
    fn make_room(&self) {
        match &self.room {
            Room::Tmpfs { ballast, .. } => std::fs::remove_file(ballast).expect("ballast removed"),
            Room::PageCap { .. } => {
                let connection =
                    Connection::open(self.data_dir.join("epm-agent.db")).expect("open");
                connection
                    .busy_timeout(Duration::from_secs(10))
                    .expect("busy timeout");
                connection
                    .execute("DELETE FROM ballast", [])
                    .expect("ballast deleted");
            }
        }
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        if let Room::Tmpfs { mount, .. } = &self.room {
            // Lazily: a test that failed may still hold files open in it.
            let _ = Command::new("umount").arg("-l").arg(mount).status();
        }
    }
}

/// Unmounts (lazily) when the test ends, passed or not.
pub(crate) struct Unmount(pub(crate) PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a small tmpfs on `mount`; false where this is not permitted.
fn mount_tmpfs(mount: &Path) -> bool {
    mount_tmpfs_of(mount, TMPFS_SIZE)
}

/// Mounts a tmpfs of `size` (`mount -o size=`) on `mount`; false where
/// this is not permitted.
pub(crate) fn mount_tmpfs_of(mount: &Path, size: &str) -> bool {
    std::fs::create_dir(mount).expect("a mount point");
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
        .arg("tmpfs")
        .arg(mount)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Writes `ballast` until the filesystem has no byte left.
pub(crate) fn fill_to_the_last_byte(ballast: &Path) {
    let mut file = File::create(ballast).expect("ballast file");
    let chunk = vec![0x5a_u8; 64 * 1024];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.raw_os_error() == Some(28) => break, // ENOSPC
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => panic!("filling {}: {error}", ballast.display()),
        }
    }
}

fn press(device: &str, seq: u16) -> NewPress {
    NewPress {
        ts: Utc::now(),
        tz_offset_min: 180,
        device: device.into(),
        model: "prolan-501",
        unit: UnitId(0x301A_0002),
        key: 1,
        answer: Some("yes".into()),
        question: Some("recommend".into()),
        seq,
        rssi: Some(-61),
        battery: Some(87),
        suppressed: false,
    }
}

/// Sends presses of another device, one at a time, until the store refuses
/// one: from then on the store is full and the writer failing. A tmpfs
/// refuses the first; a capped store takes what fits in its pages first.
async fn fill_until_failing(handle: &StoreHandle) -> WriterHealth {
    for seq in 0..10_000u16 {
        handle
            .press(press("ballast", seq), None)
            .await
            .expect("queued");
        let health = health_of(handle).await;
        if health.failing_since.is_some() {
            return health;
        }
    }
    panic!("the store still takes presses after 10,000 of them: it is not full");
}

/// `(seqno, id, seq)` of the stored presses of [`DEVICE`], in store order.
fn stored_presses(data_dir: &Path) -> Vec<(i64, String, u16)> {
    let connection = reader(data_dir);
    let mut statement = connection
        .prepare("SELECT seqno, id, seq FROM events WHERE device = ?1 ORDER BY seqno")
        .expect("query");
    let rows = statement
        .query_map([DEVICE], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .expect("rows");
    rows.collect::<Result<_, _>>().expect("stored presses")
}

/// `(dropped_presses, write_failures_since, last_write_error)`.
fn store_state(data_dir: &Path) -> (u64, Option<String>, Option<String>) {
    reader(data_dir)
        .query_row(
            "SELECT dropped_presses, write_failures_since, last_write_error FROM store_state",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .expect("store_state")
}

fn reader(data_dir: &Path) -> Connection {
    Connection::open_with_flags(
        data_dir.join("epm-agent.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the store to read")
}

/// The presses `0..count` are stored once each, in that order, with ids
/// that sort in store order.
fn assert_stored_in_order(data_dir: &Path, count: u16) {
    let stored = stored_presses(data_dir);
    let seqs: Vec<u16> = stored.iter().map(|(_, _, seq)| *seq).collect();
    assert_eq!(
        seqs,
        (0..count).collect::<Vec<_>>(),
        "each press once, in arrival order"
    );
    assert!(
        stored.windows(2).all(|pair| pair[0].1 < pair[1].1),
        "ids sort in store order"
    );
}

/// The writer's health; it answers between two commit attempts, also
/// while the store is full (a retry is at most 5 s away).
async fn health_of(handle: &StoreHandle) -> WriterHealth {
    tokio::time::timeout(HEALTH_TIMEOUT, handle.health())
        .await
        .expect("the writer answers its health query")
        .expect("the writer is alive")
}

/// Drops the last handle: the writer commits what it holds and ends.
async fn stop(handle: StoreHandle, thread: std::thread::JoinHandle<usize>) {
    drop(handle);
    let joined = tokio::task::spawn_blocking(move || thread.join());
    tokio::time::timeout(RECOVERY_TIMEOUT, joined)
        .await
        .expect("the writer ends once its handles are gone")
        .expect("join")
        .expect("the writer thread ends without panicking");
}

#[tokio::test]
async fn presses_wait_in_memory_while_the_store_is_full_and_are_stored_once_in_order() {
    const PRESSES: u16 = 5_000;
    let (disk, store) = FullDisk::new();
    // A queue far shorter than the presses sent: unless the writer drains
    // it while it cannot commit, the 17th send waits for the disk.
    let options = disk.options(WriterOptions {
        queue_capacity: 16,
        ..WriterOptions::default()
    });
    let (handle, thread) = writer::spawn(store, options).expect("writer");
    disk.fill();
    let full = fill_until_failing(&handle).await;

    let (reply, mut committed) = mpsc::unbounded_channel();
    let sends = async {
        for seq in 0..PRESSES {
            handle
                .press(press(DEVICE, seq), Some(reply.clone()))
                .await
                .expect("queued");
        }
    };
    tokio::time::timeout(SENDS_TIMEOUT, sends)
        .await
        .expect("presses are taken while the store is full, not waited on");
    let health = health_of(&handle).await;
    assert!(health.failing_since.is_some(), "{health:?}");
    assert_eq!(
        (health.backlog, health.dropped),
        (full.backlog + usize::from(PRESSES), 0),
        "every press waits in memory"
    );
    assert!(
        committed.try_recv().is_err(),
        "no press is reported stored before it is"
    );
    assert!(stored_presses(&disk.data_dir).is_empty());

    disk.make_room();
    tokio::time::timeout(RECOVERY_TIMEOUT, handle.flush())
        .await
        .expect("stored once there is room")
        .expect("the writer answers");
    let mut ids = Vec::new();
    for seq in 0..PRESSES {
        let commit = committed.try_recv().expect("a commit reply per press");
        assert_eq!(commit.seq, seq, "replies in arrival order");
        ids.push(commit.id);
    }
    assert!(committed.try_recv().is_err(), "one reply per press");
    assert_stored_in_order(&disk.data_dir, PRESSES);
    let stored_ids: Vec<String> = stored_presses(&disk.data_dir)
        .into_iter()
        .map(|(_, id, _)| id)
        .collect();
    assert_eq!(stored_ids, ids, "the replies name the stored events");
    let counted: u64 = reader(&disk.data_dir)
        .query_row(
            "SELECT presses FROM devices WHERE name = ?1",
            [DEVICE],
            |row| row.get(0),
        )
        .expect("device counter");
    assert_eq!(
        counted,
        u64::from(PRESSES),
        "the counter follows the events"
    );
    assert_eq!(store_state(&disk.data_dir), (0, None, None));
    stop(handle, thread).await;
}

#[tokio::test]
async fn presses_beyond_the_backlog_are_dropped_newest_first_and_counted() {
    const BACKLOG: usize = 1_000;
    const PRESSES: u16 = 1_500;
    let (disk, store) = FullDisk::new();
    let options = disk.options(WriterOptions {
        max_backlog_presses: BACKLOG,
        ..WriterOptions::default()
    });
    let (handle, thread) = writer::spawn(store, options).expect("writer");
    disk.fill();
    let full = fill_until_failing(&handle).await;
    let kept = BACKLOG - full.backlog;
    let dropped = usize::from(PRESSES) - kept;

    let (reply, mut committed) = mpsc::unbounded_channel();
    for seq in 0..PRESSES {
        tokio::time::timeout(
            SENDS_TIMEOUT,
            handle.press(press(DEVICE, seq), Some(reply.clone())),
        )
        .await
        .expect("taken, even with the backlog full")
        .expect("queued");
    }
    let health = health_of(&handle).await;
    assert_eq!(
        (health.backlog, health.dropped),
        (BACKLOG, dropped as u64),
        "{health:?}"
    );

    disk.make_room();
    tokio::time::timeout(RECOVERY_TIMEOUT, handle.flush())
        .await
        .expect("stored once there is room")
        .expect("the writer answers");
    // The backlog kept the oldest presses; the newest were dropped.
    assert_stored_in_order(&disk.data_dir, kept as u16);
    assert_eq!(store_state(&disk.data_dir), (dropped as u64, None, None));
    let mut replies = 0;
    while committed.try_recv().is_ok() {
        replies += 1;
    }
    assert_eq!(replies, kept, "a dropped press is never reported stored");

    // Back to normal: the next press is stored, nothing more is dropped.
    handle
        .press(press(DEVICE, PRESSES), None)
        .await
        .expect("queued");
    handle.flush().await.expect("the writer answers");
    let health = health_of(&handle).await;
    assert_eq!(
        (health.failing_since, health.backlog, health.dropped),
        (None, 0, dropped as u64)
    );
    let last = stored_presses(&disk.data_dir)
        .last()
        .map(|(_, _, seq)| *seq);
    assert_eq!(last, Some(PRESSES));
    assert_eq!(store_state(&disk.data_dir).0, dropped as u64);
    stop(handle, thread).await;
}

#[tokio::test]
async fn the_writer_survives_a_full_store_and_its_health_says_so_until_it_heals() {
    let (disk, store) = FullDisk::new();
    let options = disk.options(WriterOptions::default());
    let (handle, thread) = writer::spawn(store, options).expect("writer");
    disk.fill();
    let full = fill_until_failing(&handle).await;
    let since = full.failing_since.expect("failing");
    let error = full.last_error.clone().unwrap_or_default();
    assert!(error.contains("full"), "the cause is named: {error}");

    // A flush waits for the commit that stores what came before it.
    let flush = tokio::spawn({
        let handle = handle.clone();
        async move { handle.flush().await }
    });
    // Retries go on (100, 200, 400 ms apart…); the failure stays one.
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    let health = loop {
        let health = health_of(&handle).await;
        if health.failed_attempts >= 4 {
            break health;
        }
        assert!(Instant::now() < deadline, "no retries: {health:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health.failing_since, Some(since), "{health:?}");
    assert!(health
        .last_error
        .is_some_and(|error| error.contains("full")));
    assert!(!thread.is_finished(), "the writer thread lives on");
    assert!(
        !flush.is_finished(),
        "a flush is not answered while nothing can be stored"
    );

    disk.make_room();
    tokio::time::timeout(RECOVERY_TIMEOUT, flush)
        .await
        .expect("the flush is answered once there is room")
        .expect("flush task")
        .expect("the writer answers");
    let health = health_of(&handle).await;
    assert_eq!(health, WriterHealth::default(), "healthy again");
    assert_eq!(store_state(&disk.data_dir), (0, None, None));
    stop(handle, thread).await;
}

/// The daemon as systemd runs it, on a disk that fills up and empties.
#[cfg(target_os = "linux")]
mod daemon {
    use std::os::unix::net::UnixDatagram;

    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    use super::*;

    /// The service manager's watchdog interval the test plays: pings every
    /// second.
    const WATCHDOG: Duration = Duration::from_secs(2);

    #[test]
    fn the_daemon_keeps_its_watchdog_fed_and_says_why_while_the_disk_is_full() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let mount = dir.path().join("disk");
        if std::env::var("EPM_TEST_FULL_DISK").is_ok_and(|kind| kind == "page-cap")
            || !mount_tmpfs(&mount)
        {
            eprintln!(
                "not run: no tmpfs (mounting one needs root, or EPM_TEST_FULL_DISK=page-cap)"
            );
            return;
        }
        let _unmount = Unmount(mount.clone());
        let data_dir = mount.join("data");
        let socket_path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
        let config = crate::support::simulator_config(dir.path(), &data_dir, "");
        let agent_log = File::create(dir.path().join("agent.log")).expect("log file");
        let mut agent = Agent(
            Command::new(env!("CARGO_BIN_EXE_epm-agent"))
                .args(["run", "--config"])
                .arg(&config)
                .env("NOTIFY_SOCKET", &socket_path)
                .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
                .env_remove("WATCHDOG_PID")
                .stderr(agent_log)
                .spawn()
                .expect("start the agent"),
        );
        let agent_pid = Pid::from_raw(agent.0.id() as i32);
        let log_path = dir.path().join("agent.log");
        let agent_said = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let mut messages = Messages::new(socket);

        messages.wait_for("READY", |text| text.lines().any(|line| line == "READY=1"));
        wait_until(
            "presses stored",
            || count_events(&data_dir) >= 5,
            agent_said,
        );
        fill_to_the_last_byte(&mount.join("ballast"));

        let failing = messages.wait_for("a STATUS about the full store", |text| {
            text.contains("STATUS=the store cannot be written")
        });
        // The old heartbeat waited for a commit here and stopped the pings.
        let mut last_ping = failing;
        for _ in 0..4 {
            let ping = messages.wait_for("a watchdog ping", |text| {
                text.lines().any(|line| line == "WATCHDOG=1")
            });
            assert!(
                ping - last_ping < WATCHDOG,
                "{:?} between pings while the disk is full",
                ping - last_ping
            );
            last_ping = ping;
        }
        // `status` is critical once the heartbeat is stale (15 s).
        wait_until(
            "status critical for the heartbeat",
            || {
                let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
                    .args(["status", "--json", "--config"])
                    .arg(&config)
                    .output()
                    .expect("status runs");
                let text = String::from_utf8_lossy(&output.stdout);
                output.status.code() == Some(2)
                    && text.contains("\"critical\"")
                    && text.contains("has not written its heartbeat")
            },
            agent_said,
        );
        assert!(
            agent.0.try_wait().expect("agent state").is_none(),
            "the agent stays up: {}",
            agent_said()
        );
        let before_room = count_events(&data_dir);

        std::fs::remove_file(mount.join("ballast")).expect("ballast removed");
        messages.wait_for("the normal STATUS again", |text| {
            text.contains("STATUS=") && text.contains("devices connected")
        });
        wait_until(
            "presses stored again",
            || count_events(&data_dir) > before_room,
            agent_said,
        );
        kill(agent_pid, Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + RECOVERY_TIMEOUT;
        let status = loop {
            if let Some(status) = agent.0.try_wait().expect("agent state") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent does not stop: {}",
                agent_said()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{status}: {}", agent_said());
        let log = agent_said();
        // Once per failure episode, not per retry (there are many retries);
        // under load a commit can slip through between two episodes.
        let logged = log.matches("cannot write the store").count();
        assert!(
            (1..=2).contains(&logged),
            "the failure is logged once per episode, not per retry ({logged} times): {log}"
        );
        assert!(
            log.contains("takes writes again"),
            "the recovery is logged: {log}"
        );

        let connection = reader(&data_dir);
        let (events, counted): (i64, i64) = connection
            .query_row(
                "SELECT (SELECT count(*) FROM events WHERE type = 'press'), (SELECT sum(presses) FROM devices)",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .expect("counts");
        assert_eq!(events, counted, "every press read is stored and counted");
        assert_eq!(store_state(&data_dir), (0, None, None));
    }

    #[test]
    fn a_sigterm_while_the_disk_stays_full_ends_the_agent_within_10_s_saying_what_is_lost() {
        const STOP_LIMIT: Duration = Duration::from_secs(10);
        let dir = tempfile::tempdir().expect("a temporary folder");
        let mount = dir.path().join("disk");
        if std::env::var("EPM_TEST_FULL_DISK").is_ok_and(|kind| kind == "page-cap")
            || !mount_tmpfs(&mount)
        {
            eprintln!(
                "not run: no tmpfs (mounting one needs root, or EPM_TEST_FULL_DISK=page-cap)"
            );
            return;
        }
        let _unmount = Unmount(mount.clone());
        let data_dir = mount.join("data");
        let config = dir.path().join("agent.toml");
        // A file sink on another disk: its deliveries succeed, and then it
        // waits for the commit of its cursor, which the full disk holds up.
        std::fs::write(
            &config,
            format!(
                "[agent]\nid = \"t\"\ndata_dir = \"{}\"\n\n[[device]]\nname = \"sim\"\nmodel = \"simulator\"\nsim_presses_per_min = 1200\n\n\
                 [[sink]]\nname = \"files\"\nkind = \"file\"\npath = \"{}\"\nflush_interval_ms = 50\n",
                data_dir.display(),
                dir.path().join("out").display()
            ),
        )
        .expect("config");
        let log_path = dir.path().join("agent.log");
        let agent_log = File::create(&log_path).expect("log file");
        let mut agent = Agent(
            Command::new(env!("CARGO_BIN_EXE_epm-agent"))
                .args(["run", "--config"])
                .arg(&config)
                .stderr(agent_log)
                .spawn()
                .expect("start the agent"),
        );
        let agent_said = || std::fs::read_to_string(&log_path).unwrap_or_default();
        wait_until(
            "presses stored",
            || count_events(&data_dir) >= 5,
            agent_said,
        );
        fill_to_the_last_byte(&mount.join("ballast"));
        wait_until(
            "the full store noticed",
            || agent_said().contains("cannot write the store"),
            agent_said,
        );
        // Presses keep arriving into the memory backlog, the sink waits.
        std::thread::sleep(Duration::from_secs(2));

        kill(Pid::from_raw(agent.0.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        let asked = Instant::now();
        let status = loop {
            if let Some(status) = agent.0.try_wait().expect("agent state") {
                break status;
            }
            assert!(
                asked.elapsed() < STOP_LIMIT,
                "the agent did not stop within {STOP_LIMIT:?} of SIGTERM: {}",
                agent_said()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = agent_said();
        assert!(status.success(), "{status}: {log}");
        assert!(
            log.contains("presses read could not be committed and are lost"),
            "the loss is said: {log}"
        );
        assert!(
            !log.contains("everything read was committed"),
            "no false comfort: {log}"
        );
    }

    /// The agent process, killed if the test ends before it stopped.
    struct Agent(std::process::Child);

    impl Drop for Agent {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }

    /// What arrives on the notify socket, as the service manager sees it.
    struct Messages {
        socket: UnixDatagram,
        seen: Vec<String>,
    }

    impl Messages {
        fn new(socket: UnixDatagram) -> Messages {
            Messages {
                socket,
                seen: Vec::new(),
            }
        }

        /// Reads until a message matches; returns when it arrived.
        fn wait_for(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> Instant {
            let deadline = Instant::now() + RECOVERY_TIMEOUT;
            let mut buffer = [0u8; 4096];
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(
                    !left.is_zero(),
                    "{what}: not received within {RECOVERY_TIMEOUT:?}; the last messages: {:?}",
                    &self.seen[self.seen.len().saturating_sub(10)..]
                );
                self.socket
                    .set_read_timeout(Some(left))
                    .expect("read timeout");
                if let Ok(count) = self.socket.recv(&mut buffer) {
                    let text = String::from_utf8_lossy(&buffer[..count]).into_owned();
                    let matched = matches(&text);
                    self.seen.push(text);
                    if matched {
                        return Instant::now();
                    }
                }
            }
        }
    }

    /// Events in the store; 0 while it cannot be read yet.
    fn count_events(data_dir: &Path) -> i64 {
        Connection::open_with_flags(
            data_dir.join("epm-agent.db"),
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

    fn wait_until(what: &str, done: impl Fn() -> bool, agent_said: impl Fn() -> String) {
        let deadline = Instant::now() + RECOVERY_TIMEOUT;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {RECOVERY_TIMEOUT:?}; the agent said:\n{}",
                agent_said()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

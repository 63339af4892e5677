//! The store's single writer: a dedicated thread that owns the write
//! connection and commits whatever is queued in one transaction (group
//! commit). A lone press costs one fsync and is durable within a
//! millisecond or so; a burst shares transactions, so it does not cost one
//! fsync per press.
//!
//! Only here does a press become an event: it gets its id inside the
//! transaction, and the device's and unit's press counters move in the same
//! transaction, so a press counts exactly when it is durable. Drivers learn
//! of the commit through their reply channel (and may then ACK the device).
//!
//! When the store refuses writes (a full disk, an I/O error, a lock held
//! too long) the writer keeps the presses it reads in a bounded memory
//! backlog, in arrival order, and retries with backoff (100 ms doubling to
//! 5 s). It keeps draining its queue meanwhile, so a driver never waits on
//! it and never stops reading its port: a press is lost only when the
//! backlog is full, and then it is counted (`store_state.dropped_presses`,
//! written with the first commit that works again). Device, unit and daemon
//! reports keep only their newest state, so they do not grow with time;
//! requests that wait for a commit (flush, sink progress, pruning) are
//! answered after the next commit that works. [`StoreHandle::health`] is
//! answered by the thread itself even then: the daemon's heartbeat tells
//! "alive, the store refuses writes" from "stuck".

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use rusqlite::ErrorCode;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, watch};
use ulid::Ulid;

use super::agent_state::{self, DaemonReport};
use super::devices::{self, DeviceReport, UnitReport};
use super::events;
use super::retention::{self, Prune};
use super::sinks::{self, SinkUpdate};
use super::{Store, StoreError};
use crate::event::{
    format_timestamp, local_offset_minutes, Event, EventBody, NewPress, StatusDetail,
};
use crate::protocol::UnitId;

/// Presses the writer keeps in memory while the store cannot be written.
/// A waiting press costs about 250 bytes (`NewPress` and its reply handle,
/// ~130 bytes inline, plus its device, answer and question strings on the
/// heap), so a full backlog holds about 25 MB — a day or more of a busy
/// shop's presses.
pub const DEFAULT_MAX_BACKLOG_PRESSES: usize = 100_000;

/// Tuning of the writer; the defaults suit a point-of-sale PC.
#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    /// Most presses in one transaction.
    pub max_batch: usize,
    /// Commands queued before senders wait (backpressure), while the store
    /// takes writes; while it does not, the writer drains the queue into
    /// its backlog instead.
    pub queue_capacity: usize,
    /// Presses kept in memory while the store cannot be written; beyond
    /// this, new presses are dropped and counted. At least `max_batch`.
    pub max_backlog_presses: usize,
    /// A hard cap on the database size, in pages (SQLite's
    /// `max_page_count` on the writer's connection): past it, writes fail
    /// as on a full disk. `None` (the default) in the agent; tests use it
    /// to fill a store without filling a disk.
    pub max_page_count: Option<u32>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_batch: 1_000,
            queue_capacity: 8_192,
            max_backlog_presses: DEFAULT_MAX_BACKLOG_PRESSES,
            max_page_count: None,
        }
    }
}

/// How the writer is doing, answered by the writer thread itself, so an
/// answer also says the thread is alive and draining its queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriterHealth {
    /// Since when commits fail; `None` while the store takes writes.
    pub failing_since: Option<DateTime<Utc>>,
    /// Why the latest commit failed, while they fail.
    pub last_error: Option<String>,
    /// Failed commit attempts since `failing_since`.
    pub failed_attempts: u64,
    /// Presses read but not stored yet, waiting in memory.
    pub backlog: usize,
    /// Presses dropped because the backlog was full, since the writer
    /// started (the store keeps the total across restarts).
    pub dropped: u64,
}

/// A press is durable: it has this id and the device may be acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub id: String,
    pub unit: UnitId,
    pub seq: u16,
}

enum Command {
    Press {
        press: NewPress,
        reply: Option<mpsc::UnboundedSender<Committed>>,
    },
    Device(DeviceReport),
    Unit(UnitReport),
    Daemon(DaemonReport),
    /// Answered once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
    /// Answered once the update is committed.
    Sink(SinkUpdate, oneshot::Sender<()>),
    /// An `agent_status` event; answered once committed.
    Status(DateTime<Utc>, StatusDetail, oneshot::Sender<()>),
    /// Answered with how many events were deleted, once committed.
    Prune(Prune, oneshot::Sender<u64>),
    /// Whether undelivered events alone exceed `max_size_mb`; answered
    /// once committed.
    OverCap(bool, oneshot::Sender<()>),
    /// Answered by the writer thread between two commit attempts, even
    /// while the store refuses writes.
    Health(oneshot::Sender<WriterHealth>),
}

/// Sends work to the writer thread. Cheap to clone; the writer stops once
/// every handle is dropped and the queue is empty.
#[derive(Clone)]
pub struct StoreHandle {
    sender: mpsc::Sender<Command>,
    last_seqno: watch::Receiver<i64>,
}

impl StoreHandle {
    /// Queues a press for the next commit. `reply` hears of the commit.
    pub async fn press(
        &self,
        press: NewPress,
        reply: Option<mpsc::UnboundedSender<Committed>>,
    ) -> Result<(), StoreError> {
        self.send(Command::Press { press, reply }).await
    }

    pub async fn report_device(&self, report: DeviceReport) -> Result<(), StoreError> {
        self.send(Command::Device(report)).await
    }

    pub async fn report_unit(&self, report: UnitReport) -> Result<(), StoreError> {
        self.send(Command::Unit(report)).await
    }

    /// Records that this process is the running daemon.
    pub async fn daemon_started(&self) -> Result<(), StoreError> {
        self.send(Command::Daemon(DaemonReport::Started {
            pid: std::process::id(),
        }))
        .await
    }

    /// The daemon's heartbeat, every few seconds while it runs.
    pub async fn daemon_alive(&self) -> Result<(), StoreError> {
        self.send(Command::Daemon(DaemonReport::Alive)).await
    }

    /// Records that the wall clock jumped by `seconds` (shown by `status`).
    pub async fn daemon_clock_jump(&self, seconds: i64) -> Result<(), StoreError> {
        self.send(Command::Daemon(DaemonReport::ClockJump { seconds }))
            .await
    }

    pub async fn daemon_stopped(&self) -> Result<(), StoreError> {
        self.send(Command::Daemon(DaemonReport::Stopped)).await
    }

    /// Commits a sink's progress and waits until it is durable.
    /// Stores an `agent_status` event (it gets its id at commit, in store
    /// order with the presses) and waits until it is committed.
    pub async fn agent_status(&self, detail: StatusDetail) -> Result<(), StoreError> {
        let (done, committed) = oneshot::channel();
        self.send(Command::Status(Utc::now(), detail, done)).await?;
        committed.await.map_err(|_| StoreError::WriterGone)
    }

    pub async fn update_sink(&self, update: SinkUpdate) -> Result<(), StoreError> {
        let (done, committed) = oneshot::channel();
        self.send(Command::Sink(update, done)).await?;
        committed.await.map_err(|_| StoreError::WriterGone)
    }

    /// Deletes one chunk of delivered events; says how many went.
    pub async fn prune(&self, prune: Prune) -> Result<u64, StoreError> {
        let (done, deleted) = oneshot::channel();
        self.send(Command::Prune(prune, done)).await?;
        deleted.await.map_err(|_| StoreError::WriterGone)
    }

    /// Records whether undelivered events alone exceed the size cap.
    pub async fn mark_over_cap(&self, over: bool) -> Result<(), StoreError> {
        let (done, committed) = oneshot::channel();
        self.send(Command::OverCap(over, done)).await?;
        committed.await.map_err(|_| StoreError::WriterGone)
    }

    /// The seqno of the newest committed event, updated after each commit.
    pub fn committed_seqno(&self) -> watch::Receiver<i64> {
        self.last_seqno.clone()
    }

    /// Waits until everything queued before this call is committed (while
    /// the store refuses writes, until it takes them again).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, committed) = oneshot::channel();
        self.send(Command::Flush(done)).await?;
        committed.await.map_err(|_| StoreError::WriterGone)
    }

    /// How the writer is doing: answered after the commit attempt in
    /// progress, or at once while it waits to retry, so it does not wait
    /// for the store to take writes again. An error means the writer
    /// thread has stopped.
    pub async fn health(&self) -> Result<WriterHealth, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Health(reply)).await?;
        answer.await.map_err(|_| StoreError::WriterGone)
    }

    async fn send(&self, command: Command) -> Result<(), StoreError> {
        self.sender
            .send(command)
            .await
            .map_err(|_| StoreError::WriterGone)
    }
}

/// Starts the writer thread over an open store.
pub fn spawn(
    store: Store,
    options: WriterOptions,
) -> Result<(StoreHandle, std::thread::JoinHandle<usize>), StoreError> {
    let options = WriterOptions {
        max_batch: options.max_batch.max(1),
        max_backlog_presses: options.max_backlog_presses.max(options.max_batch.max(1)),
        ..options
    };
    let last_id = store
        .last_event_id()?
        .and_then(|id| Ulid::from_string(&id).ok())
        .unwrap_or(Ulid::nil());
    // Checkpoints copy the WAL into the database file. Left to SQLite they
    // run inside a commit, and the press that triggers one waits for it;
    // here a second connection does them in the background instead.
    store
        .connection
        .pragma_update(None, "wal_autocheckpoint", 0)?;
    if let Some(pages) = options.max_page_count {
        store
            .connection
            .pragma_update(None, "max_page_count", pages)?;
    }
    // Only for waiting on the queue with a deadline while retrying.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(StoreError::Thread)?;
    let checkpoints = rusqlite::Connection::open(store.path())?;
    checkpoints.busy_timeout(Duration::from_secs(5))?;
    super::keep_wal_files(&checkpoints)?;
    let (stop_checkpoints, checkpoint_stop) = std::sync::mpsc::channel::<()>();
    let checkpointer = std::thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || run_checkpoints(&checkpoints, &checkpoint_stop))
        .map_err(StoreError::Thread)?;

    let last_seqno = store.last_seqno()?;
    let (seqno_sender, seqno_receiver) = watch::channel(last_seqno);
    let (sender, receiver) = mpsc::channel(options.queue_capacity.max(1));
    let mut writer = Writer {
        store,
        receiver,
        runtime,
        options,
        last_id,
        seqno_sender,
        pending: Pending::default(),
        accepted_presses: 0,
        committed_presses: 0,
        health_queries: Vec::new(),
        failure: None,
        // The first commit also clears a failure a previous run noted.
        store_state_due: true,
        unsaved_drops: 0,
        dropped: 0,
        closed_at: None,
    };
    let thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            let lost = writer.run();
            drop(stop_checkpoints);
            let _ = checkpointer.join();
            // Leave a short WAL behind for the next start and for readers.
            if let Err(error) =
                writer
                    .store
                    .connection
                    .pragma_update(None, "wal_checkpoint", "TRUNCATE")
            {
                tracing::debug!("final checkpoint skipped: {error}");
            }
            lost
        })
        .map_err(StoreError::Thread)?;
    Ok((
        StoreHandle {
            sender,
            last_seqno: seqno_receiver,
        },
        thread,
    ))
}

/// How often the background checkpointer runs.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// The first retry after a failed commit; each next one waits twice as
/// long, up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// How long a writer whose handles are all gone (the agent stops) keeps
/// retrying before it gives its backlog up: well inside the service's
/// stop timeout (30 s), so the loss is logged rather than killed silently.
const STOP_RETRY_LIMIT: Duration = Duration::from_secs(5);

/// Passive checkpoints until `stop` is dropped: they never block the writer
/// or readers; what a reader still needs is copied on a later round.
fn run_checkpoints(connection: &rusqlite::Connection, stop: &std::sync::mpsc::Receiver<()>) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        stop.recv_timeout(CHECKPOINT_INTERVAL)
    {
        let result = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        if let Err(error) = result {
            tracing::debug!("background checkpoint failed, will retry: {error}");
        }
    }
}

struct Writer {
    store: Store,
    receiver: mpsc::Receiver<Command>,
    runtime: tokio::runtime::Runtime,
    options: WriterOptions,
    last_id: Ulid,
    seqno_sender: watch::Sender<i64>,
    pending: Pending,
    /// Presses taken into `pending` so far (a flush waits for its number).
    accepted_presses: u64,
    /// Presses committed so far, in the order they were accepted.
    committed_presses: u64,
    /// Answered at the end of the current round.
    health_queries: Vec<oneshot::Sender<WriterHealth>>,
    failure: Option<Failure>,
    /// The next commit writes `store_state`'s write-failure columns and
    /// adds `unsaved_drops` to its dropped presses.
    store_state_due: bool,
    unsaved_drops: u64,
    /// Presses dropped since the writer started.
    dropped: u64,
    /// When every handle was found dropped (the agent is stopping).
    closed_at: Option<Instant>,
}

/// Everything taken from the queue and not committed yet. Presses keep
/// their arrival order and are bounded by `max_backlog_presses`; reports
/// keep only the newest state per device, unit and daemon, so they never
/// grow; a request that waits for a commit is one per waiting caller.
#[derive(Default)]
struct Pending {
    presses: VecDeque<PendingPress>,
    devices: HashMap<String, DeviceReport>,
    units: HashMap<(String, UnitId), UnitReport>,
    /// In order; repeated heartbeats collapse into one.
    daemon: Vec<DaemonReport>,
    over_cap: Option<bool>,
    over_cap_replies: Vec<oneshot::Sender<()>>,
    /// Sink updates and prunes, in the order they came.
    requests: Vec<Request>,
    /// Agent status events, in the order they came (a few an hour).
    statuses: Vec<(DateTime<Utc>, StatusDetail, oneshot::Sender<()>)>,
    /// Answered once this many presses are committed (after a commit).
    flushes: Vec<(u64, oneshot::Sender<()>)>,
}

struct PendingPress {
    press: NewPress,
    reply: Option<mpsc::UnboundedSender<Committed>>,
}

enum Request {
    Sink(SinkUpdate, oneshot::Sender<()>),
    Prune(Prune, oneshot::Sender<u64>),
}

/// The store refuses writes: since when, why, and when to try again.
struct Failure {
    since: DateTime<Utc>,
    started: Instant,
    last_error: String,
    attempts: u64,
    delay: Duration,
    retry_at: Instant,
    /// Presses dropped since the failure began.
    dropped: u64,
}

/// What a successful commit hands back: the ids of the presses it stored
/// (in order) and what each `Prune` deleted.
struct Written {
    ids: Vec<String>,
    pruned: Vec<u64>,
    last_id: Ulid,
    newest_seqno: Option<i64>,
}

/// Press counters of one batch, applied to `devices` and `units` once.
struct PressTotals {
    model: &'static str,
    presses: u64,
    last_ts: String,
}

impl Pending {
    fn has_work(&self) -> bool {
        !self.presses.is_empty()
            || !self.devices.is_empty()
            || !self.units.is_empty()
            || !self.daemon.is_empty()
            || self.over_cap.is_some()
            || !self.requests.is_empty()
            || !self.statuses.is_empty()
            || !self.flushes.is_empty()
    }

    /// Keeps the newest report of a device; what the store keeps from an
    /// older one (`coalesce` in the upsert) is kept here too.
    fn add_device(&mut self, mut report: DeviceReport) {
        if let Some(older) = self.devices.remove(&report.name) {
            report.hardware_id = report.hardware_id.or(older.hardware_id);
            report.firmware = report.firmware.or(older.firmware);
            report.last_frame_at = report.last_frame_at.or(older.last_frame_at);
        }
        self.devices.insert(report.name.clone(), report);
    }

    /// Keeps the newest report of a unit, merged as the upsert would.
    fn add_unit(&mut self, mut report: UnitReport) {
        let key = (report.device.clone(), report.unit);
        if let Some(older) = self.units.remove(&key) {
            report.seen_at = report.seen_at.max(older.seen_at);
            report.battery = report.battery.or(older.battery);
            report.rssi = report.rssi.or(older.rssi);
        }
        self.units.insert(key, report);
    }

    /// A heartbeat does not replace a pending start or stop: those write
    /// the heartbeat time too.
    fn add_daemon(&mut self, report: DaemonReport) {
        // A start, stop or clock jump must each be recorded (a start
        // creates the row the others update); only heartbeats collapse.
        if matches!(report, DaemonReport::Alive)
            && self
                .daemon
                .iter()
                .any(|queued| matches!(queued, DaemonReport::Alive))
        {
            return;
        }
        self.daemon.push(report);
    }
}

impl Writer {
    /// Rounds of "take what is queued, commit" until every handle is gone
    /// and everything taken is committed (or, while the store still
    /// refuses writes, [`STOP_RETRY_LIMIT`] has passed); returns how many
    /// presses it had to give up.
    fn run(&mut self) -> usize {
        loop {
            if let Some(failure) = &self.failure {
                if self
                    .closed_at
                    .is_some_and(|closed| closed.elapsed() >= STOP_RETRY_LIMIT)
                {
                    tracing::error!(
                        store = %self.store.path().display(),
                        "stopping with {} presses that could not be stored: they are lost ({})",
                        self.pending.presses.len(),
                        failure.last_error
                    );
                    return self.pending.presses.len();
                }
                self.wait_for_retry();
            } else if self.pending.has_work() {
                // Catching up after a failure: keep the queue drained
                // while the backlog is committed chunk by chunk.
                self.take_queued(usize::MAX);
            } else {
                self.answer_health_queries();
                if self.closed_at.is_some() {
                    break;
                }
                // Not through `runtime`: its timer driver's park adds about
                // half a millisecond to a lone press (benches/ingest.rs).
                match self.receiver.blocking_recv() {
                    Some(command) => self.take(command),
                    None => {
                        self.closed_at = Some(Instant::now());
                        continue;
                    }
                }
                // Group commit: whatever else is queued joins this round.
                self.take_queued(self.options.max_batch - 1);
                if !self.pending.has_work() {
                    continue;
                }
            }
            self.commit_round();
        }
        tracing::debug!(
            "store writer stopped: every handle dropped and everything queued committed"
        );
        0
    }

    /// Takes up to `limit` queued commands without waiting.
    fn take_queued(&mut self, limit: usize) {
        for _ in 0..limit {
            match self.receiver.try_recv() {
                Ok(command) => self.take(command),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.closed_at.get_or_insert_with(Instant::now);
                    return;
                }
            }
        }
    }

    /// Takes commands until the next retry is due, answering health
    /// queries at once: while the store refuses writes, nobody waits on
    /// the queue.
    fn wait_for_retry(&mut self) {
        loop {
            self.answer_health_queries();
            let Some(failure) = &self.failure else {
                return;
            };
            let retry_at = match self.closed_at {
                Some(closed) => failure.retry_at.min(closed + STOP_RETRY_LIMIT),
                None => failure.retry_at,
            };
            if self.closed_at.is_some() {
                std::thread::sleep(retry_at.saturating_duration_since(Instant::now()));
                return;
            }
            let deadline = tokio::time::Instant::from_std(retry_at);
            let receiver = &mut self.receiver;
            // The timer is made inside `block_on`: it needs the runtime.
            let received = self
                .runtime
                .block_on(async { tokio::time::timeout_at(deadline, receiver.recv()).await });
            match received {
                Err(_elapsed) => return,
                Ok(Some(command)) => self.take(command),
                Ok(None) => self.closed_at = Some(Instant::now()),
            }
        }
    }

    fn take(&mut self, command: Command) {
        match command {
            Command::Press { press, reply } => {
                if self.pending.presses.len() >= self.options.max_backlog_presses {
                    self.drop_press();
                    return;
                }
                self.pending
                    .presses
                    .push_back(PendingPress { press, reply });
                self.accepted_presses += 1;
            }
            Command::Device(report) => self.pending.add_device(report),
            Command::Unit(report) => self.pending.add_unit(report),
            Command::Daemon(report) => self.pending.add_daemon(report),
            Command::Flush(done) => self.pending.flushes.push((self.accepted_presses, done)),
            Command::Sink(update, done) => self.pending.requests.push(Request::Sink(update, done)),
            Command::Status(at, detail, done) => self.pending.statuses.push((at, detail, done)),
            Command::Prune(prune, done) => self.pending.requests.push(Request::Prune(prune, done)),
            Command::OverCap(over, done) => {
                self.pending.over_cap = Some(over);
                self.pending.over_cap_replies.push(done);
            }
            Command::Health(reply) => self.health_queries.push(reply),
        }
    }

    /// The backlog is full: the newest press goes. Every press already in
    /// the backlog stays promised to the store, and what is lost is one
    /// stretch of time, from the moment the backlog filled up.
    fn drop_press(&mut self) {
        self.dropped += 1;
        self.unsaved_drops += 1;
        self.store_state_due = true;
        let first_in_failure = match &mut self.failure {
            Some(failure) => {
                failure.dropped += 1;
                failure.dropped == 1
            }
            None => self.dropped == 1,
        };
        if first_in_failure {
            tracing::error!(
                store = %self.store.path().display(),
                "the memory backlog is full ({} presses): new presses are dropped, and counted, until the store takes writes again",
                self.options.max_backlog_presses
            );
        }
    }

    /// One commit attempt: every pending report and request, and the
    /// oldest pending presses (up to `max_batch`).
    fn commit_round(&mut self) {
        let take = self.pending.presses.len().min(self.options.max_batch);
        match self.write(take) {
            Ok(written) => self.committed(take, written),
            Err(error) => self.failed(error),
        }
        self.answer_health_queries();
    }

    fn committed(&mut self, take: usize, written: Written) {
        if let Some(failure) = self.failure.take() {
            tracing::info!(
                store = %self.store.path().display(),
                "the store takes writes again after {} s and {} failed attempts: {} presses kept in memory are being stored, {} were dropped",
                failure.started.elapsed().as_secs(),
                failure.attempts,
                self.pending.presses.len(),
                failure.dropped
            );
        }
        self.last_id = written.last_id;
        if let Some(seqno) = written.newest_seqno {
            self.seqno_sender.send_replace(seqno);
        }
        self.store_state_due = false;
        self.unsaved_drops = 0;
        for (pending, id) in self.pending.presses.drain(..take).zip(written.ids) {
            if let Some(reply) = pending.reply {
                // The driver may have stopped; the press is stored anyway.
                let _ = reply.send(Committed {
                    id,
                    unit: pending.press.unit,
                    seq: pending.press.seq,
                });
            }
        }
        self.committed_presses += take as u64;
        self.pending.devices.clear();
        self.pending.units.clear();
        self.pending.daemon.clear();
        self.pending.over_cap = None;
        for done in self.pending.over_cap_replies.drain(..) {
            let _ = done.send(());
        }
        for (_, _, done) in self.pending.statuses.drain(..) {
            let _ = done.send(());
        }
        let mut pruned = written.pruned.into_iter();
        for request in self.pending.requests.drain(..) {
            match request {
                Request::Sink(_, done) => {
                    let _ = done.send(());
                }
                Request::Prune(_, done) => {
                    let _ = done.send(pruned.next().unwrap_or(0));
                }
            }
        }
        // Flushes wait in arrival order, so the answered ones lead.
        let committed = self.committed_presses;
        let answered = self
            .pending
            .flushes
            .partition_point(|(waits_for, _)| *waits_for <= committed);
        for (_, done) in self.pending.flushes.drain(..answered) {
            let _ = done.send(());
        }
    }

    /// A commit failed: the first failure is logged, and noted in the
    /// store if a small write still goes through; later ones only back the
    /// next retry off.
    fn failed(&mut self, error: rusqlite::Error) {
        let now = Instant::now();
        self.store_state_due = true;
        if let Some(failure) = &mut self.failure {
            failure.attempts += 1;
            failure.delay = (failure.delay * 2).min(MAX_RETRY_DELAY);
            failure.retry_at = now + failure.delay;
            tracing::debug!(
                store = %self.store.path().display(),
                attempts = failure.attempts,
                backlog = self.pending.presses.len(),
                "still cannot write the store, retrying in {:?}: {error}",
                failure.delay
            );
            failure.last_error = error.to_string();
            return;
        }
        let hint = match error.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => " (is its disk full?)",
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                " (does another program hold it open for writing?)"
            }
            _ => "",
        };
        tracing::error!(
            store = %self.store.path().display(),
            "cannot write the store: {error}{hint}; presses are kept in memory (up to {}) and the write is retried",
            self.options.max_backlog_presses
        );
        let failure = Failure {
            since: Utc::now(),
            started: now,
            last_error: error.to_string(),
            attempts: 1,
            delay: FIRST_RETRY_DELAY,
            retry_at: now + FIRST_RETRY_DELAY,
            dropped: 0,
        };
        // Best effort, for `status`: an update in place may go through
        // where new presses do not; on a full disk it fails as well, and
        // the heartbeat that cannot be written says it instead.
        if let Err(error) = agent_state::note_write_failure(
            &self.store.connection,
            failure.since,
            &failure.last_error,
        ) {
            tracing::debug!("cannot note the write failure in the store either: {error}");
        }
        self.failure = Some(failure);
    }

    fn answer_health_queries(&mut self) {
        if self.health_queries.is_empty() {
            return;
        }
        let health = WriterHealth {
            failing_since: self.failure.as_ref().map(|failure| failure.since),
            last_error: self.failure.as_ref().map(|f| f.last_error.clone()),
            failed_attempts: self.failure.as_ref().map_or(0, |failure| failure.attempts),
            backlog: self.pending.presses.len(),
            dropped: self.dropped,
        };
        for reply in self.health_queries.drain(..) {
            let _ = reply.send(health.clone());
        }
    }

    /// Writes what is pending, with the `take` oldest presses, in one
    /// transaction; nothing in `self` changes unless it commits.
    fn write(&self, take: usize) -> Result<Written, rusqlite::Error> {
        let transaction = self.store.connection.unchecked_transaction()?;
        let mut ids = Vec::with_capacity(take);
        let mut device_totals: HashMap<&str, PressTotals> = HashMap::new();
        let mut unit_totals: HashMap<(&str, UnitId), (u64, &NewPress)> = HashMap::new();
        let mut last_id = self.last_id;
        for PendingPress { press, .. } in self.pending.presses.range(..take) {
            last_id = next_id(last_id, SystemTime::now());
            let id = last_id.to_string();
            events::insert_press(&transaction, &id, press)?;
            ids.push(id);
            let totals = device_totals.entry(&press.device).or_insert(PressTotals {
                model: press.model,
                presses: 0,
                last_ts: String::new(),
            });
            totals.presses += 1;
            totals.last_ts = format_timestamp(press.ts);
            let unit = unit_totals
                .entry((&press.device, press.unit))
                .or_insert((0, press));
            unit.0 += 1;
            unit.1 = press;
        }
        for (at, detail, _) in &self.pending.statuses {
            last_id = next_id(last_id, SystemTime::now());
            let event = Event {
                id: last_id.to_string(),
                ts: format_timestamp(*at),
                tz_offset_min: local_offset_minutes(),
                body: EventBody::Status(detail.clone()),
            };
            events::insert_event(&transaction, &event, at.timestamp_millis())?;
        }
        // Read before any other insert: an upsert that inserts a device or
        // unit row moves `last_insert_rowid` too.
        let inserted_events = take > 0 || !self.pending.statuses.is_empty();
        let newest_seqno = inserted_events.then(|| transaction.last_insert_rowid());
        for report in self.pending.devices.values() {
            devices::upsert_device(&transaction, report)?;
        }
        for report in self.pending.units.values() {
            devices::upsert_unit(&transaction, report, 0)?;
        }
        for report in &self.pending.daemon {
            agent_state::record_daemon(&transaction, *report)?;
        }
        let mut pruned = Vec::new();
        for request in &self.pending.requests {
            match request {
                Request::Sink(update, _) => sinks::apply_sink_update(&transaction, update)?,
                Request::Prune(prune, _) => {
                    pruned.push(retention::apply_prune(&transaction, prune)?)
                }
            }
        }
        if let Some(over) = self.pending.over_cap {
            agent_state::mark_over_cap(&transaction, over)?;
        }
        if self.store_state_due {
            agent_state::clear_write_failures(&transaction, self.unsaved_drops)?;
        }
        for (device, totals) in &device_totals {
            devices::add_presses(
                &transaction,
                device,
                totals.model,
                totals.presses,
                &totals.last_ts,
            )?;
        }
        for ((device, unit), (presses, last)) in &unit_totals {
            let report = UnitReport {
                device: device.to_string(),
                unit: *unit,
                seen_at: last.ts,
                battery: last.battery,
                rssi: last.rssi,
            };
            devices::upsert_unit(&transaction, &report, *presses)?;
        }
        transaction.commit()?;
        Ok(Written {
            ids,
            pruned,
            last_id,
            newest_seqno,
        })
    }
}

/// A new id after `previous`: from the clock, or `previous + 1` when the
/// clock has not moved on (same millisecond, or a clock set back).
fn next_id(previous: Ulid, now: SystemTime) -> Ulid {
    let fresh = Ulid::from_datetime(now);
    if fresh > previous {
        return fresh;
    }
    previous.increment().unwrap_or(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LinkCounters, LinkState};

    #[test]
    fn ids_stay_monotonic_when_the_clock_goes_back() {
        let now = SystemTime::now();
        let first = next_id(Ulid::nil(), now);
        let earlier = next_id(first, now - Duration::from_secs(3600));
        let same_ms = next_id(earlier, now);
        assert!(first < earlier && earlier < same_ms);
    }

    #[test]
    fn a_waiting_press_costs_what_the_backlog_size_assumes() {
        // Inline; its device, answer and question strings add about 100
        // bytes on the heap: ~250 bytes, as DEFAULT_MAX_BACKLOG_PRESSES says.
        let inline = std::mem::size_of::<PendingPress>();
        assert!(inline <= 150, "a pending press takes {inline} bytes inline");
    }

    #[test]
    fn newer_reports_replace_older_ones_keeping_what_the_upsert_would_keep() {
        let at = |second: i64| {
            DateTime::<Utc>::from_timestamp(1_700_000_000 + second, 0).expect("a valid time")
        };
        let device = |hardware_id: Option<&str>, state| DeviceReport {
            name: "entrance".into(),
            model: "prolan-501",
            port: "/dev/ttyACM0".into(),
            state,
            state_since: at(0),
            hardware_id: hardware_id.map(String::from),
            firmware: None,
            last_frame_at: None,
            counters: LinkCounters::default(),
            last_error: None,
        };
        let unit = |seen, battery, rssi| UnitReport {
            device: "entrance".into(),
            unit: UnitId(0x301A_0002),
            seen_at: at(seen),
            battery,
            rssi,
        };
        let mut pending = Pending::default();
        pending.add_device(device(Some("501000A7"), LinkState::Connected));
        pending.add_device(device(None, LinkState::Silent));
        pending.add_unit(unit(20, Some(87), None));
        pending.add_unit(unit(10, None, Some(-61)));
        pending.add_daemon(DaemonReport::Started { pid: 7 });
        pending.add_daemon(DaemonReport::Alive);

        assert_eq!(pending.devices.len(), 1);
        let saved = &pending.devices["entrance"];
        assert_eq!(
            (saved.state, saved.hardware_id.as_deref()),
            (LinkState::Silent, Some("501000A7"))
        );
        assert_eq!(
            pending.units.values().collect::<Vec<_>>(),
            [&unit(20, Some(87), Some(-61))]
        );
        assert!(matches!(
            pending.daemon.as_slice(),
            [DaemonReport::Started { pid: 7 }, DaemonReport::Alive]
        ));
        pending.add_daemon(DaemonReport::Alive);
        pending.add_daemon(DaemonReport::ClockJump { seconds: 90 });
        assert!(matches!(
            pending.daemon.as_slice(),
            [
                DaemonReport::Started { pid: 7 },
                DaemonReport::Alive,
                DaemonReport::ClockJump { seconds: 90 }
            ]
        ));
    }
}

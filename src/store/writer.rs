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

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Transaction};
use tokio::sync::{mpsc, oneshot, watch};
use ulid::Ulid;

use super::{LinkCounters, Store, StoreError};
use crate::event::{format_timestamp, NewPress};
use crate::protocol::UnitId;

/// Tuning of the writer; the defaults suit a point-of-sale PC.
#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    /// Most commands in one transaction.
    pub max_batch: usize,
    /// Commands queued before senders wait (backpressure).
    pub queue_capacity: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_batch: 1_000,
            queue_capacity: 8_192,
        }
    }
}

/// A press is durable: it has this id and the device may be acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub id: String,
    pub unit: UnitId,
    pub seq: u16,
}

/// connected | silent | disconnected, as in the status contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    Connected,
    Silent,
    Disconnected,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connected => "connected",
            LinkState::Silent => "silent",
            LinkState::Disconnected => "disconnected",
        }
    }
}

/// A driver's view of its device, saved as a whole. The press counter and
/// `last_press_at` are not in it: the writer keeps those with the events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceReport {
    pub name: String,
    pub model: &'static str,
    pub port: String,
    pub state: LinkState,
    pub state_since: DateTime<Utc>,
    pub hardware_id: Option<String>,
    pub firmware: Option<String>,
    pub last_frame_at: Option<DateTime<Utc>>,
    pub counters: LinkCounters,
    pub last_error: Option<String>,
}

/// A remote (or keypad) was heard, with what it said about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitReport {
    pub device: String,
    pub unit: UnitId,
    pub seen_at: DateTime<Utc>,
    pub battery: Option<u8>,
    pub rssi: Option<i8>,
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
    /// Answered with how many events were deleted, once committed.
    Prune(Prune, oneshot::Sender<u64>),
    /// Whether undelivered events alone exceed `max_size_mb`; answered
    /// once committed.
    OverCap(bool, oneshot::Sender<()>),
}

/// One chunk of housekeeping: delete at most `limit` of the oldest events
/// that every sink has delivered (or dead-lettered) through `through_seqno`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prune {
    pub through_seqno: i64,
    /// Only events read before this (retention); `None`: any age (size cap).
    pub older_than: Option<DateTime<Utc>>,
    pub limit: usize,
}

/// A sink's progress, written by the writer like everything else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkUpdate {
    /// The batch about to be sent: every retry, also after a restart,
    /// sends exactly this batch id with exactly these events.
    Begin {
        sink: String,
        batch_id: String,
        first_seqno: i64,
        last_seqno: i64,
    },
    /// The backend took every event through `through_seqno` (`count` of them).
    Delivered {
        sink: String,
        through_seqno: i64,
        count: u64,
    },
    /// The backend rejects this event on its own: it is kept as a dead
    /// letter and the cursor moves past it.
    DeadLetter {
        sink: String,
        seqno: i64,
        event_id: String,
        status: Option<u16>,
        reason: String,
    },
    /// A dead letter sent again by request was accepted.
    Redelivered { sink: String, seqno: i64 },
    /// A dead letter sent again by request was rejected again.
    RetryRejected {
        sink: String,
        seqno: i64,
        reason: String,
    },
    /// What `status` shows for the sink.
    State {
        sink: String,
        state: SinkState,
        last_error: Option<String>,
    },
}

/// ok | retrying | paused, as in the status contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkState {
    Ok,
    Retrying,
    Paused,
}

impl SinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkState::Ok => "ok",
            SinkState::Retrying => "retrying",
            SinkState::Paused => "paused",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum DaemonReport {
    Started { pid: u32 },
    Alive,
    Stopped,
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

    pub async fn daemon_stopped(&self) -> Result<(), StoreError> {
        self.send(Command::Daemon(DaemonReport::Stopped)).await
    }

    /// Commits a sink's progress and waits until it is durable.
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

    /// Waits until everything queued before this call is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, committed) = oneshot::channel();
        self.send(Command::Flush(done)).await?;
        committed.await.map_err(|_| StoreError::WriterGone)
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
) -> Result<(StoreHandle, std::thread::JoinHandle<()>), StoreError> {
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
    let checkpoints = rusqlite::Connection::open(store.path())?;
    checkpoints.busy_timeout(Duration::from_secs(5))?;
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
        options,
        last_id,
        seqno_sender,
    };
    let thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            writer.run();
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
    options: WriterOptions,
    last_id: Ulid,
    seqno_sender: watch::Sender<i64>,
}

/// Who hears of a commit, and what.
struct CommitReplies {
    presses: Vec<(mpsc::UnboundedSender<Committed>, Committed)>,
    /// Events deleted by each `Prune` of the batch, in order.
    pruned: Vec<u64>,
}

/// Press counters of one batch, applied to `devices` and `units` once.
struct PressTotals {
    model: &'static str,
    presses: u64,
    last_ts: String,
}

impl Writer {
    fn run(&mut self) {
        let mut batch = Vec::with_capacity(self.options.max_batch);
        while let Some(first) = self.receiver.blocking_recv() {
            batch.push(first);
            while batch.len() < self.options.max_batch {
                match self.receiver.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            self.commit_with_retry(&mut batch);
        }
        tracing::debug!("store writer stopped: every handle dropped and the queue is empty");
    }

    /// Commits the batch, retrying while the store refuses. Nothing queued is
    /// dropped: while this retries, senders wait on the full queue.
    fn commit_with_retry(&mut self, batch: &mut Vec<Command>) {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.commit(batch) {
                Ok(committed) => {
                    for (reply, message) in committed.presses {
                        // The driver may have stopped; the press is stored anyway.
                        let _ = reply.send(message);
                    }
                    let mut pruned = committed.pruned.into_iter();
                    for command in batch.drain(..) {
                        match command {
                            Command::Flush(done)
                            | Command::Sink(_, done)
                            | Command::OverCap(_, done) => {
                                let _ = done.send(());
                            }
                            Command::Prune(_, done) => {
                                let _ = done.send(pruned.next().unwrap_or(0));
                            }
                            _ => {}
                        }
                    }
                    return;
                }
                Err(error) => {
                    tracing::error!(
                        store = %self.store.path().display(),
                        "cannot commit to the store, retrying in {delay:?}: {error}"
                    );
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn commit(&mut self, batch: &[Command]) -> Result<CommitReplies, rusqlite::Error> {
        let transaction = self.store.connection.unchecked_transaction()?;
        let mut replies = Vec::new();
        let mut pruned = Vec::new();
        let mut device_totals: HashMap<&str, PressTotals> = HashMap::new();
        let mut unit_totals: HashMap<(&str, UnitId), (u64, &NewPress)> = HashMap::new();
        let mut last_id = self.last_id;
        for command in batch {
            match command {
                Command::Press { press, reply } => {
                    last_id = next_id(last_id, SystemTime::now());
                    let id = last_id.to_string();
                    insert_event(&transaction, &id, press)?;
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
                    if let Some(reply) = reply {
                        replies.push((
                            reply.clone(),
                            Committed {
                                id,
                                unit: press.unit,
                                seq: press.seq,
                            },
                        ));
                    }
                }
                Command::Device(report) => upsert_device(&transaction, report)?,
                Command::Unit(report) => upsert_unit(&transaction, report, 0)?,
                Command::Daemon(report) => record_daemon(&transaction, *report)?,
                Command::Sink(update, _) => apply_sink_update(&transaction, update)?,
                Command::Prune(prune, _) => pruned.push(apply_prune(&transaction, prune)?),
                Command::OverCap(over, _) => {
                    transaction.execute(
                        "UPDATE store_state SET checked_at = ?2,
                             over_cap_since = CASE WHEN ?1 THEN coalesce(over_cap_since, ?2) END",
                        params![over, format_timestamp(Utc::now())],
                    )?;
                }
                Command::Flush(_) => {}
            }
        }
        for (device, totals) in &device_totals {
            transaction.execute(
                "INSERT INTO devices (name, model, port, state, presses, last_press_at)
                 VALUES (?1, ?2, '', 'connected', ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET
                     presses = presses + excluded.presses, last_press_at = excluded.last_press_at",
                params![device, totals.model, totals.presses, totals.last_ts],
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
            upsert_unit(&transaction, &report, *presses)?;
        }
        let newest_seqno = (!device_totals.is_empty()).then(|| transaction.last_insert_rowid());
        transaction.commit()?;
        self.last_id = last_id;
        if let Some(seqno) = newest_seqno {
            self.seqno_sender.send_replace(seqno);
        }
        Ok(CommitReplies {
            presses: replies,
            pruned,
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

fn insert_event(transaction: &Transaction<'_>, id: &str, press: &NewPress) -> rusqlite::Result<()> {
    let mut statement = transaction.prepare_cached(
        "INSERT INTO events (id, type, ts, ts_ms, tz_offset_min, device, model, unit, key,
                             answer, question, seq, rssi, battery, suppressed)
         VALUES (?1, 'press', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    statement.execute(params![
        id,
        format_timestamp(press.ts),
        press.ts.timestamp_millis(),
        press.tz_offset_min,
        press.device,
        press.model,
        press.unit.to_string(),
        press.key,
        press.answer,
        press.question,
        press.seq,
        press.rssi,
        press.battery,
        press.suppressed,
    ])?;
    Ok(())
}

fn upsert_device(transaction: &Transaction<'_>, report: &DeviceReport) -> rusqlite::Result<()> {
    let mut statement = transaction.prepare_cached(
        "INSERT INTO devices (name, model, port, state, state_since, hardware_id, firmware,
                              last_frame_at, duplicates, bad_frames, unknown_frames, noise_bytes,
                              faults, reconnects, last_error, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
         ON CONFLICT (name) DO UPDATE SET
             model = excluded.model, port = excluded.port, state = excluded.state,
             state_since = excluded.state_since,
             hardware_id = coalesce(excluded.hardware_id, hardware_id),
             firmware = coalesce(excluded.firmware, firmware),
             last_frame_at = coalesce(excluded.last_frame_at, last_frame_at),
             duplicates = excluded.duplicates, bad_frames = excluded.bad_frames,
             unknown_frames = excluded.unknown_frames, noise_bytes = excluded.noise_bytes,
             faults = excluded.faults, reconnects = excluded.reconnects,
             last_error = excluded.last_error, updated_at = excluded.updated_at",
    )?;
    statement.execute(params![
        report.name,
        report.model,
        report.port,
        report.state.as_str(),
        format_timestamp(report.state_since),
        report.hardware_id,
        report.firmware,
        report.last_frame_at.map(format_timestamp),
        report.counters.duplicates,
        report.counters.bad_frames,
        report.counters.unknown_frames,
        report.counters.noise_bytes,
        report.counters.faults,
        report.counters.reconnects,
        report.last_error,
        format_timestamp(Utc::now()),
    ])?;
    Ok(())
}

fn upsert_unit(
    transaction: &Transaction<'_>,
    report: &UnitReport,
    presses: u64,
) -> rusqlite::Result<()> {
    let mut statement = transaction.prepare_cached(
        "INSERT INTO units (device, unit, last_seen_at, battery, rssi, presses)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (device, unit) DO UPDATE SET
             last_seen_at = max(coalesce(last_seen_at, ''), excluded.last_seen_at),
             battery = coalesce(excluded.battery, battery),
             rssi = coalesce(excluded.rssi, rssi),
             presses = presses + excluded.presses",
    )?;
    statement.execute(params![
        report.device,
        report.unit.to_string(),
        format_timestamp(report.seen_at),
        report.battery,
        report.rssi,
        presses,
    ])?;
    Ok(())
}

fn apply_sink_update(transaction: &Transaction<'_>, update: &SinkUpdate) -> rusqlite::Result<()> {
    let now = format_timestamp(Utc::now());
    let sink = match update {
        SinkUpdate::Begin { sink, .. }
        | SinkUpdate::Delivered { sink, .. }
        | SinkUpdate::DeadLetter { sink, .. }
        | SinkUpdate::Redelivered { sink, .. }
        | SinkUpdate::RetryRejected { sink, .. }
        | SinkUpdate::State { sink, .. } => sink,
    };
    transaction.execute(
        "INSERT INTO sinks (name, updated_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
        params![sink, now],
    )?;
    match update {
        SinkUpdate::Begin {
            batch_id,
            first_seqno,
            last_seqno,
            ..
        } => transaction.execute(
            "UPDATE sinks SET batch_id = ?2, batch_first = ?3, batch_last = ?4, updated_at = ?5
             WHERE name = ?1",
            params![sink, batch_id, first_seqno, last_seqno, now],
        )?,
        SinkUpdate::Delivered {
            through_seqno,
            count,
            ..
        } => transaction.execute(
            "UPDATE sinks SET delivered_seqno = max(delivered_seqno, ?2), delivered = delivered + ?3,
                 last_success_at = ?4, state = 'ok', last_error = NULL,
                 batch_id = NULL, batch_first = NULL, batch_last = NULL, updated_at = ?4
             WHERE name = ?1",
            params![sink, through_seqno, count, now],
        )?,
        SinkUpdate::DeadLetter {
            seqno,
            event_id,
            status,
            reason,
            ..
        } => {
            transaction.execute(
                "INSERT INTO dead_letters (sink, seqno, event_id, status, reason, at, retry)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)
                 ON CONFLICT (sink, seqno) DO UPDATE SET
                     status = excluded.status, reason = excluded.reason, at = excluded.at, retry = 0",
                params![sink, seqno, event_id, status, reason, now],
            )?;
            transaction.execute(
                "UPDATE sinks SET delivered_seqno = max(delivered_seqno, ?2),
                     batch_id = NULL, batch_first = NULL, batch_last = NULL, updated_at = ?3
                 WHERE name = ?1",
                params![sink, seqno, now],
            )?
        }
        SinkUpdate::Redelivered { seqno, .. } => {
            transaction.execute(
                "DELETE FROM dead_letters WHERE sink = ?1 AND seqno = ?2",
                params![sink, seqno],
            )?;
            transaction.execute(
                "UPDATE sinks SET delivered = delivered + 1, last_success_at = ?2, updated_at = ?2
                 WHERE name = ?1",
                params![sink, now],
            )?
        }
        SinkUpdate::RetryRejected { seqno, reason, .. } => transaction.execute(
            "UPDATE dead_letters SET retry = 0, reason = ?3, at = ?4 WHERE sink = ?1 AND seqno = ?2",
            params![sink, seqno, reason, now],
        )?,
        SinkUpdate::State {
            state, last_error, ..
        } => transaction.execute(
            "UPDATE sinks SET state = ?2, last_error = ?3, updated_at = ?4 WHERE name = ?1",
            params![sink, state.as_str(), last_error, now],
        )?,
    };
    Ok(())
}

fn apply_prune(transaction: &Transaction<'_>, prune: &Prune) -> rusqlite::Result<u64> {
    let older_than_ms = prune
        .older_than
        .map_or(i64::MAX, |at| at.timestamp_millis());
    let deleted = transaction.execute(
        "DELETE FROM events WHERE seqno IN (
             SELECT seqno FROM events WHERE seqno <= ?1 AND ts_ms < ?2 ORDER BY seqno LIMIT ?3)",
        params![prune.through_seqno, older_than_ms, prune.limit as i64],
    )? as u64;
    if deleted > 0 {
        transaction.execute(
            "DELETE FROM dead_letters WHERE seqno NOT IN (SELECT seqno FROM events)",
            [],
        )?;
        let column = if prune.older_than.is_some() {
            "pruned_retention"
        } else {
            "pruned_size"
        };
        transaction.execute(
            &format!("UPDATE store_state SET {column} = {column} + ?1"),
            [deleted],
        )?;
        // Hand the freed pages back to the filesystem.
        transaction
            .query_row("PRAGMA incremental_vacuum", [], |_| Ok(()))
            .optional()?;
    }
    Ok(deleted)
}

fn record_daemon(transaction: &Transaction<'_>, report: DaemonReport) -> rusqlite::Result<()> {
    let now = format_timestamp(Utc::now());
    match report {
        DaemonReport::Started { pid } => transaction.execute(
            "INSERT INTO daemon (singleton, pid, version, started_at, heartbeat_at, stopped_at)
             VALUES (1, ?1, ?2, ?3, ?3, NULL)
             ON CONFLICT (singleton) DO UPDATE SET pid = excluded.pid, version = excluded.version,
                 started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
                 stopped_at = NULL",
            params![pid, env!("CARGO_PKG_VERSION"), now],
        )?,
        DaemonReport::Alive => {
            transaction.execute("UPDATE daemon SET heartbeat_at = ?1", [&now])?
        }
        DaemonReport::Stopped => transaction.execute(
            "UPDATE daemon SET heartbeat_at = ?1, stopped_at = ?1",
            [&now],
        )?,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stay_monotonic_when_the_clock_goes_back() {
        let now = SystemTime::now();
        let first = next_id(Ulid::nil(), now);
        let earlier = next_id(first, now - Duration::from_secs(3600));
        let same_ms = next_id(earlier, now);
        assert!(first < earlier && earlier < same_ms);
    }
}

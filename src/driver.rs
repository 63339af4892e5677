//! One task per `[[device]]`: opens its port (a path, `auto`, or the
//! simulator), asks for the identity, decodes, drops the duplicates the
//! hardware sends, applies keymap, question and anti-spam, queues each
//! press for the store and ACKs the device once the press is committed.
//! It tracks liveness (connected / silent / disconnected) and, when the port
//! fails or vanishes, reopens it with backoff, without restarting the agent.
//!
//! It never decides durability: a press counts only when the store writer
//! says it committed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use chrono::Utc;
use futures_util::StreamExt;
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::codec::{Decoder, Encoder, Framed, FramedRead};
use tokio_util::sync::CancellationToken;

use crate::config::{DeviceSettings, PortSetting};
use crate::event::{local_offset_minutes, NewPress};
use crate::model::Attachment;
use crate::port::{self, FramedLink, Link};
use crate::press_filter::{PressFilter, Verdict};
use crate::protocol::{AnyCodec, Decoded, Identity, Inbound, Outbound, Press};
use crate::store::{
    Committed, DeviceCounters, DeviceReport, LinkState, RecentPress, StoreError, StoreHandle,
    UnitReport,
};

/// First wait before reopening a port that failed, doubled up to the cap.
/// The cap keeps a replug noticed within about a second.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_CAP: Duration = Duration::from_secs(1);
/// A session shorter than this ends in the same backoff as a failed open.
const SHORT_SESSION: Duration = Duration::from_secs(2);
/// How often liveness is checked and the device's state saved (if changed).
const TICK: Duration = Duration::from_secs(1);
/// A write to the device (QUERY, the ACKs of one commit) that takes longer
/// than this is given up: the device is not reading (a stalled adapter,
/// flow control). An ACK only flashes a light; reading matters more.
const WRITE_BOUND: Duration = Duration::from_millis(500);
/// Writes waiting for the device; more are dropped (and counted).
const WRITES_QUEUED: usize = 64;

/// At most this many messages are joined into one write (a few KB: about
/// what a terminal's buffer takes at once).
const COALESCED_MAX: usize = 512;

/// What a driver continues from after a restart.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    /// Presses inside the model's duplicate window, oldest first.
    pub recent: Vec<RecentPress>,
    pub counters: DeviceCounters,
}

/// Runs the device until `shutdown`; fails only when the store is gone.
pub async fn run(
    settings: DeviceSettings,
    store: StoreHandle,
    restored: Restored,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let connector = PortConnector {
        settings: settings.clone(),
        passed_over: port::PassedOver::default(),
    };
    run_with(settings, connector, store, restored, shutdown).await
}

/// [`run`] with the connections coming from `connector`.
pub async fn run_with<C: Connector>(
    settings: DeviceSettings,
    mut connector: C,
    store: StoreHandle,
    restored: Restored,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let (commits_sender, commits) = mpsc::unbounded_channel();
    let mut driver = Driver::new(settings, store, restored, commits_sender);
    let result = driver.run(&mut connector, commits, &shutdown).await;
    // Save the final counters even after a store error (it may be transient).
    let _ = driver.save_report().await;
    result
}

/// A connection ready for a session.
pub struct Connection {
    /// The port's name as `status` shows it.
    pub port: String,
    pub link: FramedLink,
    /// The identity, when discovery already asked for it.
    pub identity: Option<Identity>,
    /// Frames read before the identity (during discovery).
    pub earlier: Vec<Decoded>,
}

/// Where a driver's connections come from: the configured port in the
/// agent, in-memory pipes in tests.
pub trait Connector: Send {
    /// Opens the device once; the error says why not (and is shown in status).
    fn connect(
        &mut self,
        shutdown: &CancellationToken,
    ) -> impl std::future::Future<Output = Result<Connection, String>> + Send;
}

/// Opens what the device's `port` setting says.
pub struct PortConnector {
    settings: DeviceSettings,
    /// `auto`: ports that answered as another device, left alone a while.
    passed_over: port::PassedOver,
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

impl Connector for PortConnector {
    async fn connect(&mut self, shutdown: &CancellationToken) -> Result<Connection, String> {
        let model = self.settings.model;
        match &self.settings.port {
            PortSetting::Path(path) => {
                let stream = port::open_serial(path, self.settings.baud)
                    .map_err(|error| error.to_string())?;
                Ok(Connection {
                    port: path.clone(),
                    link: Framed::new(Box::new(stream) as Box<dyn Link>, model.codec()),
                    identity: None,
                    earlier: Vec::new(),
                })
            }
            PortSetting::Auto(criteria) => {
                let ports = port::list_ports().map_err(|error| error.to_string())?;
                let candidates = port::auto_candidates(&ports, criteria);
                let found = port::discover(
                    &candidates,
                    model,
                    self.settings.baud,
                    criteria,
                    &mut self.passed_over,
                )
                .await
                .map_err(|error| error.to_string())?;
                Ok(Connection {
                    port: found.path,
                    link: found.link,
                    identity: Some(found.identity),
                    earlier: found.earlier,
                })
            }
            PortSetting::None => {
                // The configuration gives no port only to an in-process model.
                let Attachment::InProcess(start) = model.spec().attachment else {
                    return Err(format!("model {model} needs a port"));
                };
                let pipe = start(self.settings.simulator.clone(), shutdown.child_token());
                Ok(Connection {
                    port: "simulator".into(),
                    link: Framed::new(pipe, model.codec()),
                    identity: None,
                    earlier: Vec::new(),
                })
            }
        }
    }
}

struct Driver {
    settings: DeviceSettings,
    store: StoreHandle,
    filter: PressFilter,
    report: DeviceReport,
    commits_sender: mpsc::UnboundedSender<Committed>,
    /// The monotonic origin of the filter's and liveness's time scale.
    origin: Instant,
    liveness: Liveness,
    /// Noise counted by the codecs of earlier sessions.
    noise_before: u64,
    /// The report changed since it was last saved.
    dirty: bool,
    /// Inside a run of bad frames: logged once, at its start.
    resyncing: bool,
    /// ACKs dropped, over every session (counted by the writing side).
    acks_dropped: Arc<AtomicU64>,
}

impl Driver {
    fn new(
        settings: DeviceSettings,
        store: StoreHandle,
        restored: Restored,
        commits_sender: mpsc::UnboundedSender<Committed>,
    ) -> Driver {
        let origin = Instant::now();
        let mut filter = PressFilter::new(settings.model.duplicate_window(), settings.min_interval);
        let now = Utc::now();
        for press in &restored.recent {
            // A press stored "in the future" (the clock went back since) is
            // treated as just now: kept in the window rather than forgotten.
            let age_ms = (now - press.ts).num_milliseconds().max(0);
            filter.remember(press.unit, press.seq, -age_ms);
        }
        let counters = restored.counters;
        let report = DeviceReport {
            name: settings.name.clone(),
            model: settings.model.name(),
            port: port_label(&settings.port),
            state: LinkState::Disconnected,
            state_since: now,
            hardware_id: None,
            firmware: None,
            last_frame_at: None,
            counters: counters.link,
            last_error: None,
        };
        Driver {
            liveness: Liveness::new(settings.model.silence_after()),
            noise_before: counters.link.noise_bytes,
            settings,
            store,
            filter,
            report,
            commits_sender,
            origin,
            dirty: true,
            resyncing: false,
            acks_dropped: Arc::new(AtomicU64::new(counters.link.acks_dropped)),
        }
    }

    async fn run<C: Connector>(
        &mut self,
        connector: &mut C,
        mut commits: mpsc::UnboundedReceiver<Committed>,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        self.save_report().await?;
        let mut delay = RECONNECT_FIRST;
        let mut ever_connected = false;
        let mut outage_logged = false;
        loop {
            let connection = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                connection = connector.connect(shutdown) => connection,
            };
            match connection {
                Ok(connection) => {
                    if ever_connected {
                        self.report.counters.reconnects += 1;
                    }
                    ever_connected = true;
                    tracing::info!(device = %self.settings.name, port = %connection.port, "connected");
                    let started = Instant::now();
                    match self.session(connection, &mut commits, shutdown).await? {
                        SessionEnd::Shutdown => return Ok(()),
                        SessionEnd::Lost(reason) => {
                            tracing::warn!(device = %self.settings.name, "disconnected: {reason}; reopening");
                            self.set_state(LinkState::Disconnected, Some(reason));
                            self.save_report().await?;
                            outage_logged = true;
                        }
                    }
                    if started.elapsed() >= SHORT_SESSION {
                        delay = RECONNECT_FIRST;
                    } else {
                        // Opened, then lost at once (a port that opens but
                        // reads end-of-file): back off as for a failed open.
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(RECONNECT_CAP);
                    }
                }
                Err(reason) => {
                    if !outage_logged {
                        tracing::warn!(device = %self.settings.name, "{reason}; retrying until it appears");
                        outage_logged = true;
                    }
                    if self.report.last_error.as_deref() != Some(reason.as_str()) {
                        self.set_state(LinkState::Disconnected, Some(reason));
                        self.save_report().await?;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(RECONNECT_CAP);
                }
            }
        }
    }

    async fn session(
        &mut self,
        connection: Connection,
        commits: &mut mpsc::UnboundedReceiver<Committed>,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, StoreError> {
        // Reading and writing are apart: a device that stops reading what
        // is written must never stop the agent reading it.
        let parts = connection.link.into_parts();
        let (read_half, write_half) = tokio::io::split(parts.io);
        let mut link = FramedRead::new(read_half, parts.codec);
        *link.read_buffer_mut() = parts.read_buf;
        let mut outgoing = Outgoing::start(
            write_half,
            self.settings.model.codec(),
            self.settings.name.clone(),
            Arc::clone(&self.acks_dropped),
        );
        self.report.port = connection.port;
        self.liveness.connected(self.now_ms());
        self.set_state(LinkState::Connected, None);
        let probed = connection.identity.is_some();
        // Acknowledgements of an earlier session's presses are stale now;
        // those of presses read during discovery (below) are not.
        while commits.try_recv().is_ok() {}
        if let Some(identity) = connection.identity {
            self.handle(Decoded::Message(Inbound::Identity(identity)))
                .await?;
        }
        for item in connection.earlier {
            self.handle(item).await?;
        }
        self.save_report().await?;
        if !probed {
            outgoing.send(vec![Outbound::Query]);
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // A clean stop loses nothing that was read: decode what
                    // is still buffered before returning.
                    let mut buffer = std::mem::take(link.read_buffer_mut());
                    let mut pending = Vec::new();
                    while let Ok(Some(item)) = link.decoder_mut().decode(&mut buffer) {
                        pending.push(item);
                    }
                    for item in pending {
                        self.handle(item).await?;
                    }
                    return Ok(self.end_session(&link, SessionEnd::Shutdown));
                }
                Some(committed) = commits.recv() => {
                    if self.settings.ack {
                        // The ACKs of one commit go out in one write.
                        let ack = |committed: Committed| Outbound::Ack { unit: committed.unit, seq: committed.seq };
                        let mut acks = vec![ack(committed)];
                        while let Ok(committed) = commits.try_recv() {
                            acks.push(ack(committed));
                        }
                        outgoing.send(acks);
                    }
                }
                Ok(error) = &mut outgoing.failed => {
                    return Ok(self.end_session(&link, SessionEnd::Lost(format!("write failed: {error}"))));
                }
                item = link.next() => match item {
                    Some(Ok(item)) => self.handle(item).await?,
                    Some(Err(error)) => {
                        return Ok(self.end_session(&link, SessionEnd::Lost(format!("read failed: {error}"))));
                    }
                    // A closed port reads end-of-file at once and forever:
                    // that is the unplug, not a quiet line.
                    None => {
                        return Ok(self.end_session(&link, SessionEnd::Lost("the port closed (unplugged?)".into())));
                    }
                },
                _ = tick.tick() => {
                    self.check_liveness();
                    self.check_writes(&outgoing);
                    self.report.counters.noise_bytes = self.noise_before + link.decoder().noise_bytes();
                    if self.dirty {
                        self.save_report().await?;
                    }
                }
            }
        }
    }

    fn end_session(&mut self, link: &ReadLink, end: SessionEnd) -> SessionEnd {
        self.noise_before += link.decoder().noise_bytes();
        self.report.counters.noise_bytes = self.noise_before;
        self.dirty = true;
        end
    }

    async fn handle(&mut self, item: Decoded) -> Result<(), StoreError> {
        match item {
            Decoded::Message(message) => {
                self.valid_frame();
                match message {
                    Inbound::Press(press) => self.press(press).await?,
                    Inbound::Identity(identity) => {
                        let hardware_id = identity.hardware_id.to_string();
                        if self.report.hardware_id.as_deref() != Some(hardware_id.as_str()) {
                            tracing::info!(
                                device = %self.settings.name,
                                "identified {} {hardware_id}, firmware {}",
                                identity.model,
                                identity.firmware
                            );
                        }
                        self.report.hardware_id = Some(hardware_id);
                        self.report.firmware = Some(identity.firmware);
                    }
                    Inbound::Heartbeat(_) => {}
                    Inbound::UnitStatus {
                        unit,
                        battery,
                        rssi,
                    } => {
                        self.store
                            .report_unit(UnitReport {
                                device: self.settings.name.clone(),
                                unit,
                                seen_at: Utc::now(),
                                battery,
                                rssi: Some(rssi),
                            })
                            .await?;
                    }
                    Inbound::Fault { unit, code } => {
                        self.report.counters.faults += 1;
                        let meaning = match code {
                            1 => "stuck key",
                            2 => "supply voltage low",
                            _ => "unknown fault",
                        };
                        tracing::warn!(device = %self.settings.name, %unit, code, "keypad reports a fault: {meaning}");
                    }
                }
            }
            Decoded::Bad(reason) => {
                self.report.counters.bad_frames += 1;
                self.dirty = true;
                if !self.resyncing {
                    tracing::warn!(device = %self.settings.name, "dropped a bad frame ({reason}); resynchronising");
                    self.resyncing = true;
                }
            }
            Decoded::UnknownType(message_type) => {
                self.report.counters.unknown_frames += 1;
                self.dirty = true;
                tracing::debug!(device = %self.settings.name, message_type, "ignored a frame of unknown type");
            }
        }
        Ok(())
    }

    /// Milliseconds on the driver's monotonic scale.
    fn now_ms(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    async fn press(&mut self, press: Press) -> Result<(), StoreError> {
        let now_ms = self.now_ms();
        let suppressed = match self.filter.judge(press.unit, press.seq, now_ms) {
            Verdict::Duplicate => {
                self.report.counters.duplicates += 1;
                self.dirty = true;
                return Ok(());
            }
            Verdict::Accept { suppressed } => suppressed,
        };
        let new_press = NewPress {
            ts: Utc::now(),
            tz_offset_min: local_offset_minutes(),
            device: self.settings.name.clone(),
            model: self.settings.model.name(),
            unit: press.unit,
            key: press.key,
            answer: self.settings.keymap.get(&press.key).cloned(),
            question: self.settings.question.clone(),
            seq: press.seq,
            rssi: press.rssi,
            battery: press.battery,
            suppressed,
        };
        self.store
            .press(new_press, Some(self.commits_sender.clone()))
            .await
    }

    fn valid_frame(&mut self) {
        self.report.last_frame_at = Some(Utc::now());
        self.resyncing = false;
        self.dirty = true;
        if self.liveness.frame(self.now_ms()) {
            tracing::info!(device = %self.settings.name, "talking again");
            self.set_state(LinkState::Connected, None);
        }
    }

    /// Counts the ACKs the device did not take, and says in its state that
    /// it does not read, for as long as it does not.
    fn check_writes(&mut self, outgoing: &Outgoing) {
        let dropped = self.acks_dropped.load(Ordering::Relaxed);
        if dropped != self.report.counters.acks_dropped {
            self.report.counters.acks_dropped = dropped;
            self.dirty = true;
        }
        let problem = outgoing.stalled().then(|| {
            format!(
                "it does not read what the agent writes (a stalled adapter or flow control?): {dropped} ACKs dropped; presses are still read and stored"
            )
        });
        if self.report.last_error != problem && self.report.state == LinkState::Connected {
            self.report.last_error = problem;
            self.dirty = true;
        }
    }

    fn check_liveness(&mut self) {
        if self.liveness.check(self.now_ms()) {
            tracing::warn!(
                device = %self.settings.name,
                "silent: nothing valid for {}s (heartbeats missing)",
                self.settings.model.silence_after().as_secs()
            );
            self.set_state(LinkState::Silent, None);
        }
    }

    fn set_state(&mut self, state: LinkState, error: Option<String>) {
        if self.report.state != state {
            self.report.state = state;
            self.report.state_since = Utc::now();
        }
        self.report.last_error = error;
        self.dirty = true;
    }

    async fn save_report(&mut self) -> Result<(), StoreError> {
        self.dirty = false;
        self.store.report_device(self.report.clone()).await
    }
}

/// Connected or silent, from the times of valid frames: a port that is
/// open but quiet is no proof of a live device. Pure; time is passed in.
#[derive(Debug)]
struct Liveness {
    silence_after_ms: i64,
    last_valid_ms: i64,
    silent: bool,
}

impl Liveness {
    fn new(silence_after: Duration) -> Liveness {
        Liveness {
            silence_after_ms: i64::try_from(silence_after.as_millis()).unwrap_or(i64::MAX),
            last_valid_ms: 0,
            silent: false,
        }
    }

    /// A port was (re)opened: the silence clock starts now.
    fn connected(&mut self, now_ms: i64) {
        self.last_valid_ms = now_ms;
        self.silent = false;
    }

    /// A valid frame arrived; true when this ends a silence.
    fn frame(&mut self, now_ms: i64) -> bool {
        self.last_valid_ms = now_ms;
        std::mem::replace(&mut self.silent, false)
    }

    /// True when the device has just become silent.
    fn check(&mut self, now_ms: i64) -> bool {
        if self.silent || now_ms - self.last_valid_ms < self.silence_after_ms {
            return false;
        }
        self.silent = true;
        true
    }
}

/// What `status` shows as the port before the device is found.
fn port_label(port: &PortSetting) -> String {
    match port {
        PortSetting::Path(path) => path.clone(),
        PortSetting::Auto(_) => "auto".into(),
        PortSetting::None => "simulator".into(),
    }
}

/// The read side of a session's port.
type ReadLink = FramedRead<tokio::io::ReadHalf<Box<dyn Link>>, AnyCodec>;

/// The writing side of a session: its own task, fed through a short queue,
/// each write bounded by [`WRITE_BOUND`]. What cannot wait its turn or
/// cannot be written in time is dropped and counted (only ACKs are
/// counted: a QUERY is asked again at the next session).
struct Outgoing {
    writes: mpsc::Sender<Vec<Outbound>>,
    /// Says why the port cannot be written (the session is then over).
    failed: oneshot::Receiver<String>,
    acks_dropped: Arc<AtomicU64>,
    /// The last write did not go through in time.
    stalled: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Outgoing {
    fn start(
        port: WriteHalf<Box<dyn Link>>,
        codec: AnyCodec,
        device: String,
        acks_dropped: Arc<AtomicU64>,
    ) -> Outgoing {
        let (writes, queued) = mpsc::channel(WRITES_QUEUED);
        let (failure, failed) = oneshot::channel();
        let stalled = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(write_to_device(
            port,
            codec,
            queued,
            WriteCounters {
                device,
                acks_dropped: Arc::clone(&acks_dropped),
                stalled: Arc::clone(&stalled),
            },
            failure,
        ));
        Outgoing {
            writes,
            failed,
            acks_dropped,
            stalled,
            task,
        }
    }

    /// Queues `messages` as one write, never waiting.
    fn send(&mut self, messages: Vec<Outbound>) {
        if let Err(
            mpsc::error::TrySendError::Full(messages) | mpsc::error::TrySendError::Closed(messages),
        ) = self.writes.try_send(messages)
        {
            self.acks_dropped
                .fetch_add(acks_in(&messages), Ordering::Relaxed);
            self.stalled.store(true, Ordering::Relaxed);
        }
    }

    fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        // A write still waiting for a deaf device ends with the session.
        self.task.abort();
    }
}

struct WriteCounters {
    device: String,
    acks_dropped: Arc<AtomicU64>,
    stalled: Arc<AtomicBool>,
}

fn acks_in(messages: &[Outbound]) -> u64 {
    messages
        .iter()
        .filter(|message| matches!(message, Outbound::Ack { .. }))
        .count() as u64
}

/// Writes each queued batch of messages in one write, each within
/// [`WRITE_BOUND`]; a port that fails is reported on `failure`.
async fn write_to_device(
    mut port: WriteHalf<Box<dyn Link>>,
    mut codec: AnyCodec,
    mut queued: mpsc::Receiver<Vec<Outbound>>,
    counters: WriteCounters,
    failure: oneshot::Sender<String>,
) {
    let mut bytes = BytesMut::new();
    while let Some(mut messages) = queued.recv().await {
        // What queued up while the last write was on its way goes out in
        // this one: under a burst the writes stay few and the queue empty.
        while messages.len() < COALESCED_MAX {
            match queued.try_recv() {
                Ok(more) => messages.extend(more),
                Err(_) => break,
            }
        }
        bytes.clear();
        for message in &messages {
            if let Err(error) = codec.encode(*message, &mut bytes) {
                let _ = failure.send(format!("cannot encode {message:?}: {error}"));
                return;
            }
        }
        let write = async {
            port.write_all(&bytes).await?;
            port.flush().await
        };
        match tokio::time::timeout(WRITE_BOUND, write).await {
            Ok(Ok(())) => counters.stalled.store(false, Ordering::Relaxed),
            Ok(Err(error)) => {
                let _ = failure.send(error.to_string());
                return;
            }
            Err(_) => {
                counters
                    .acks_dropped
                    .fetch_add(acks_in(&messages), Ordering::Relaxed);
                if !counters.stalled.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        device = %counters.device,
                        "the device does not read what is written (a stalled adapter or flow control?): its ACKs are dropped and counted, its presses are still read and stored"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Model;

    /// Opens at once and reads end-of-file at once: the far side of each
    /// pipe is gone before the driver reads.
    struct EndsAtOnce {
        opened: Arc<tokio::sync::Notify>,
        count: Arc<AtomicU64>,
    }

    impl Connector for EndsAtOnce {
        async fn connect(&mut self, _: &CancellationToken) -> Result<Connection, String> {
            let (near, far) = tokio::io::duplex(64);
            drop(far);
            self.count.fetch_add(1, Ordering::SeqCst);
            self.opened.notify_one();
            Ok(Connection {
                port: "pipe".into(),
                link: tokio_util::codec::Framed::new(Box::new(near), Model::Prolan202.codec()),
                identity: None,
                earlier: Vec::new(),
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_port_that_opens_then_ends_at_once_is_reopened_with_backoff() {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let store = crate::store::Store::open_writer(folder.path()).expect("a store");
        let (handle, writer) =
            crate::store::writer::spawn(store, Default::default()).expect("the writer");
        let settings = DeviceSettings {
            name: "cashdesk".into(),
            model: Model::Prolan202,
            port: PortSetting::Path("pipe".into()),
            baud: Model::Prolan202.default_baud(),
            question: None,
            keymap: Default::default(),
            min_interval: Duration::ZERO,
            ack: true,
            simulator: crate::config::SimulatorSettings {
                remotes: 1,
                presses_per_min: 1.0,
            },
        };
        let opened = Arc::new(tokio::sync::Notify::new());
        let count = Arc::new(AtomicU64::new(0));
        let connector = EndsAtOnce {
            opened: Arc::clone(&opened),
            count: Arc::clone(&count),
        };
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        let driver = tokio::spawn(run_with(
            settings,
            connector,
            handle,
            Restored::default(),
            shutdown.clone(),
        ));
        // The paused clock moves only to the driver's own timers, so the
        // time passed is the backoff it waited between the opens.
        while count.load(Ordering::SeqCst) < 8 {
            opened.notified().await;
        }
        let waited = started.elapsed();
        shutdown.cancel();
        driver.await.expect("the driver").expect("no store error");
        drop(writer);
        // 100 ms, 200, 400, 800, then 1 s each: 4.5 s before the 8th open.
        assert!(
            waited >= RECONNECT_FIRST * 15 + RECONNECT_CAP * 3 - Duration::from_millis(10),
            "8 opens in {waited:?}"
        );
    }

    #[derive(Clone, Copy, Debug)]
    enum Step {
        Connected(i64),
        Frame(i64),
        Check(i64),
    }

    /// Runs the steps; collects what `frame` and `check` answered.
    fn check(silence_after_s: u64, steps: &[Step], expected: &[bool]) {
        let mut liveness = Liveness::new(Duration::from_secs(silence_after_s));
        let answers: Vec<bool> = steps
            .iter()
            .filter_map(|step| match *step {
                Step::Connected(at) => {
                    liveness.connected(at);
                    None
                }
                Step::Frame(at) => Some(liveness.frame(at)),
                Step::Check(at) => Some(liveness.check(at)),
            })
            .collect();
        assert_eq!(answers, expected, "{steps:?}");
    }

    use Step::{Check, Connected, Frame};

    #[test]
    fn heartbeats_keep_a_device_connected() {
        check(
            15,
            &[
                Connected(0),
                Frame(5_000),
                Check(10_000),
                Frame(10_000),
                Check(24_999),
            ],
            &[false, false, false, false],
        );
    }

    #[test]
    fn three_missed_heartbeats_make_it_silent_once() {
        check(
            15,
            &[
                Connected(0),
                Frame(1_000),
                Check(15_999),
                Check(16_000),
                Check(40_000),
            ],
            &[false, false, true, false],
        );
    }

    #[test]
    fn a_frame_ends_the_silence() {
        check(
            15,
            &[
                Connected(0),
                Check(15_000),
                Frame(20_000),
                Check(21_000),
                Check(35_000),
            ],
            &[true, true, false, true],
        );
    }

    #[test]
    fn a_port_opened_but_never_talking_becomes_silent() {
        check(
            30,
            &[Connected(100_000), Check(129_999), Check(130_000)],
            &[false, true],
        );
    }

    #[test]
    fn reopening_restarts_the_silence_clock() {
        check(
            15,
            &[
                Connected(0),
                Check(15_000),
                Connected(20_000),
                Check(30_000),
                Check(35_000),
            ],
            &[true, false, true],
        );
    }
}

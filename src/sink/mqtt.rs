//! MQTT sink (`kind = "mqtt"`, `docs/upload.md` "MQTT"): each batch goes
//! out as one or more batch documents (the HTTP `json` body, from
//! [`super::batch_document`]) published with QoS 1 on `topic`, and the
//! delivery counts only once the broker has acknowledged (PUBACK) every one
//! of them. The sink also keeps the agent's retained online / offline state
//! on `state_topic` (an online message after each connection, the offline
//! one as Last Will and at a clean stop).
//!
//! Why it is built this way:
//!
//! - **One connection task.** rumqttc's `publish` returns when a message is
//!   queued, not when the broker has it, and only polling its `EventLoop`
//!   moves anything. So the sink spawns one task (at the first delivery, so
//!   that `config check` and a reload that is refused never connect) that
//!   owns the event loop and polls it without ever cancelling a poll while
//!   it runs: a poll dropped halfway through writing a publish would leave
//!   rumqttc counting a message the broker never saw. The task ends when the
//!   sink is dropped.
//! - **PUBACKs are mapped by packet id.** Every publish enters rumqttc's
//!   request queue together with its waiter in [`Ledger::queued`], under
//!   one lock, so both are in the same order. rumqttc reports the packet id
//!   it gives each publish (`Outgoing::Publish(pkid)`) in queue order; the
//!   task then files the waiter under that id and a `PubAck(pkid)` releases
//!   it. A delivery waits for all of its waiters, at most `timeout_s`.
//! - **A lost connection fails what is in flight.** The task then clears
//!   rumqttc's own pending messages (it would resend them on the new
//!   connection, with new packet ids, beside the retry) and answers every
//!   waiter; the sink task resends the same stored batch, which gives the
//!   same messages with the same batch ids. The session is clean: the store
//!   is the agent's queue, not the broker.
//! - **Reconnecting is paced here, once.** `EventLoop::poll` reconnects at
//!   once, so the task waits [`policy::backoff`] with jitter between
//!   attempts (reset after a connection that lasted), never polling
//!   meanwhile. The first delivery to meet an outage fails at once (the
//!   sink shows `retrying` with the reason); the next ones wait for the
//!   reconnection rather than adding the sink task's own backoff to the
//!   connection's, so a backlog goes out as soon as the broker is back.
//! - **Refusals stop the task.** A CONNACK refusing the credentials or the
//!   client id, and another client taking the same client id again and
//!   again (the broker closing each connection soon after accepting it),
//!   end the task with a reason: deliveries answer
//!   [`Outcome::Misconfigured`], the sink pauses as for an HTTP 401, and
//!   the next try after the pause (`refresh_password`) starts a new task,
//!   so the agent does not fight the other client.
//! - **MQTT 3.1.1, not 5.** Every broker the agent targets speaks it, and
//!   nothing in the contract needs 5: QoS 1 with PUBACK is the same, and the
//!   refusals the contract names exist in both. What 5 would add (a reason
//!   code for a session taken over) is inferred here from timing instead.
//! - **Large batches are split deterministically.** The split depends only
//!   on the events (their encoded sizes), and the messages' batch ids are
//!   derived from the stored batch id and the message index, so a retry
//!   publishes exactly the same messages. An event too large for a message
//!   on its own is [`Outcome::Rejected`]: the sink narrows the batch until
//!   it stands alone and dead-letters it.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::Utc;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event as LoopEvent, EventLoop, Incoming,
    LastWill, MqttOptions, NetworkOptions, Outgoing, QoS, StateError, TlsConfiguration,
};
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use ulid::Ulid;

use super::policy::{self, Outcome};
use super::{batch_document, secret, tls, AgentInfo, SinkError};
use crate::config::{MqttSinkSettings, SecretSource};
use crate::event::format_timestamp;
use crate::store::StoredEvent;

/// At most this many messages of one delivery wait for their PUBACK at a
/// time; the next is published as the oldest is acknowledged. One, because
/// a broker with Nagle's algorithm on (Mosquitto's default) holds back a
/// second PUBACK until the first is ACKed at the TCP level, which the
/// agent, sending nothing while it waits, does only after its delayed-ACK
/// timer (40 ms on Linux): with up to 32 in flight, batches of 500 events
/// (two messages each) drained at 19,000 presses/s, with one at about
/// 200,000 (`docs/performance.md`). Each publish carries the ACK of the
/// previous PUBACK, so one in flight never stalls.
const WINDOW: usize = 1;
/// rumqttc's limit of unacknowledged publishes (it also numbers packet ids
/// up to it): the window plus the state messages.
const INFLIGHT: u16 = WINDOW as u16 + 4;
/// rumqttc's request queue: never more than the in-flight messages, the
/// state messages and a DISCONNECT are queued at once.
const REQUEST_QUEUE: usize = WINDOW + 8;
/// What an MQTT PUBLISH adds to its payload besides the topic: the fixed
/// header (1 + up to 4 bytes), the topic's length (2) and the packet id (2).
const PUBLISH_OVERHEAD: usize = 9;
/// A connection that lasted this long resets the backoff, and its end is
/// no sign of another client with the same client id.
const LASTING: Duration = Duration::from_secs(10);
/// This many connections closed by the broker within [`LASTING`] of being
/// accepted, inside [`FIGHT_SPAN`] with no other failure between them, mean
/// another client uses the same client id.
const FIGHT_KICKS: usize = 3;
const FIGHT_SPAN: Duration = Duration::from_secs(60);
/// How long a clean stop may take to publish the offline state and
/// disconnect; the Last Will covers a stop that takes longer.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);
/// The longest a delivery waits out an outage it has reported (the sink's
/// state says `retrying` meanwhile) before it fails again, which brings
/// the sink's `last_error` up to date.
const OUTAGE_WAIT: Duration = Duration::from_secs(300);
/// The contract's default `max_backoff_s`.
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest a connection attempt may take (TCP, TLS, CONNECT/CONNACK).
const MAX_CONNECT_TIME: Duration = Duration::from_secs(10);

pub struct MqttSink {
    name: String,
    settings: MqttSinkSettings,
    agent: AgentInfo,
    /// Built once: unusable TLS files fail [`MqttSink::new`].
    tls: Option<Arc<rustls::ClientConfig>>,
    password_source: SecretSource,
    /// The resolved password; `None` when none is set up or it could not be
    /// read (then `password_error` says why).
    password: Option<String>,
    password_error: Option<String>,
    /// The cap of the wait between connection attempts.
    max_backoff: Duration,
    /// The last connection task ended in a client id fight: the next one
    /// stops at the first sign of it, so a paused sink does not fight on.
    fought: bool,
    /// The connection task, started by the first delivery.
    link: Option<Link>,
}

/// The sink's side of the connection task.
struct Link {
    client: AsyncClient,
    ledger: Arc<Mutex<Ledger>>,
    status: watch::Receiver<Status>,
    /// The outage (see [`Status::Waiting`]) a delivery has told the sink
    /// task of already.
    reported_outage: Option<u64>,
    /// Tells the task to stop when the sink lets go of it.
    _stop: DropGuard,
}

/// Where the connection is, as the task tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Status {
    /// An attempt is under way.
    Connecting,
    Connected,
    /// Waiting before the next attempt, after this failure, in the
    /// `outage`-th time without a connection.
    Waiting {
        error: String,
        outage: u64,
    },
    /// Ended: the broker refuses the credentials or the client id.
    Refused(String),
    /// Ended: another client uses the same client id.
    Fight(String),
    /// Ended: the sink let go of it.
    Stopped,
}

/// Why a message will never be acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Failure {
    /// The connection was lost, starting the `outage`-th time without a
    /// connection: try again later.
    Lost { reason: String, outage: u64 },
    /// The connection ended for a reason a retry cannot cure: pause.
    Refused(String),
}

/// The publishes between the sink and the broker, so that each PUBACK
/// finds its message. Locked only briefly, never across an await.
#[derive(Default)]
struct Ledger {
    /// Whether publishing makes sense: only while connected, so nothing is
    /// queued for a connection that does not exist yet.
    connected: bool,
    /// Waiters of publishes in rumqttc's request queue, in queue order.
    queued: VecDeque<Waiter>,
    /// Waiters of publishes written on the connection, by packet id.
    written: HashMap<u16, Waiter>,
    /// A publish rumqttc holds back because its packet id is still taken (a
    /// broker acknowledging out of order); written when that id is acked.
    held: Option<(u16, Waiter)>,
}

/// Who waits for a PUBACK: a delivery or the goodbye; `None` for the online
/// state, which nobody waits for.
type Waiter = Option<oneshot::Sender<Result<(), Failure>>>;

impl MqttSink {
    pub fn new(
        name: &str,
        settings: &MqttSinkSettings,
        agent: AgentInfo,
    ) -> Result<MqttSink, SinkError> {
        let setup = |message: String| SinkError::Setup {
            sink: name.to_string(),
            message,
        };
        let tls_files_given =
            settings.tls_files.ca_file.is_some() || settings.tls_files.client_cert.is_some();
        if !settings.tls && tls_files_given {
            return Err(setup(
                "ca_file and client_cert_file need an mqtts:// url (TLS)".into(),
            ));
        }
        if settings.username.is_none() && settings.password != SecretSource::None {
            return Err(setup(
                "a password needs a username: MQTT sends no password without one".into(),
            ));
        }
        let tls = if settings.tls {
            Some(Arc::new(
                tls::client_config(&settings.tls_files).map_err(setup)?,
            ))
        } else {
            None
        };
        let mut sink = MqttSink {
            name: name.to_string(),
            settings: settings.clone(),
            agent,
            tls,
            password_source: settings.password.clone(),
            password: None,
            password_error: None,
            max_backoff: DEFAULT_MAX_BACKOFF,
            fought: false,
            link: None,
        };
        sink.read_password();
        if let Some(error) = &sink.password_error {
            // Not fatal: the sink pauses and reads the password again later.
            tracing::error!(sink = %sink.name, "{error}");
        }
        Ok(sink)
    }

    /// Caps the wait between connection attempts: the sink's `max_backoff_s`
    /// (which is not part of [`MqttSinkSettings`]); the contract's default
    /// of 30 s until this is called.
    pub fn with_max_backoff(mut self, max_backoff: Duration) -> MqttSink {
        self.max_backoff = max_backoff;
        self
    }

    /// Why the password cannot be used, if it cannot.
    pub fn password_problem(&self) -> Option<&str> {
        self.password_error.as_deref()
    }

    /// After a pause: reads the password again from its source, and lets go
    /// of a connection that is not up, so that the next delivery connects
    /// afresh (with the new password, and after a refusal or a client id
    /// fight that ended the connection task).
    pub fn refresh_password(&mut self) {
        self.read_password();
        let Some(link) = &self.link else {
            return;
        };
        let status = link.status.borrow().clone();
        if status != Status::Connected {
            self.fought = matches!(status, Status::Fight(_));
            self.link = None;
        }
    }

    /// Publishes the batch and waits for every PUBACK.
    pub async fn deliver(&mut self, batch_id: &str, events: &[StoredEvent]) -> Outcome {
        if let Some(error) = &self.password_error {
            return Outcome::Misconfigured(error.clone());
        }
        let sent_at = format_timestamp(Utc::now());
        let messages = match self.messages(batch_id, &sent_at, events) {
            Ok(messages) => messages,
            Err(outcome) => return outcome,
        };
        let link = match self.link.take() {
            Some(link) => link,
            None => self.connect(),
        };
        let link = self.link.insert(link);
        if let Err(outcome) = link.wait_until_connected(self.settings.timeout).await {
            return outcome;
        }
        // Every PUBACK of the batch within timeout_s of being connected.
        let deadline = Instant::now() + self.settings.timeout;

        let total = messages.len();
        let mut acknowledged = 0;
        let mut waiting = VecDeque::with_capacity(WINDOW.min(total));
        let mut unsent = messages.into_iter();
        loop {
            if waiting.len() < WINDOW {
                if let Some(message) = unsent.next() {
                    let payload = match batch_document(
                        &self.agent,
                        &message.batch_id,
                        &sent_at,
                        &events[message.events],
                    ) {
                        Ok(payload) => payload,
                        Err(error) => {
                            return Outcome::Local(format!("cannot encode the batch: {error}"))
                        }
                    };
                    match link.publish(&self.settings.topic, payload) {
                        Ok(acked) => waiting.push_back(acked),
                        Err(reason) => return Outcome::Transport(reason),
                    }
                    continue;
                }
            }
            let Some(acked) = waiting.pop_front() else {
                return Outcome::Accepted;
            };
            match tokio::time::timeout_at(deadline, acked).await {
                Ok(Ok(Ok(()))) => acknowledged += 1,
                Ok(Ok(Err(Failure::Lost { reason, outage }))) => {
                    link.reported_outage = Some(outage);
                    return Outcome::Transport(reason);
                }
                Ok(Ok(Err(Failure::Refused(reason)))) => return Outcome::Misconfigured(reason),
                Ok(Err(_)) => {
                    return Outcome::Transport("the MQTT connection task ended".into());
                }
                Err(_) => {
                    return Outcome::Transport(format!(
                        "the broker acknowledged {acknowledged} of {total} messages within timeout_s = {}",
                        self.settings.timeout.as_secs()
                    ))
                }
            }
        }
    }

    /// The messages of the batch, or why it cannot be sent.
    fn messages(
        &self,
        batch_id: &str,
        sent_at: &str,
        events: &[StoredEvent],
    ) -> Result<Vec<Message>, Outcome> {
        let encode_error =
            |error: serde_json::Error| Outcome::Local(format!("cannot encode the batch: {error}"));
        // The envelope with the longest batch id any message can get; for
        // ULIDs they are all as long.
        let longest_id = message_batch_id(batch_id, events.len());
        let envelope = batch_document(&self.agent, &longest_id, sent_at, &[])
            .map_err(encode_error)?
            .len();
        let sizes = events
            .iter()
            .map(|stored| {
                let mut counter = ByteCounter(0);
                serde_json::to_writer(&mut counter, &stored.event).map(|()| counter.0)
            })
            .collect::<Result<Vec<usize>, _>>()
            .map_err(encode_error)?;
        let max = self.settings.max_message_bytes;
        let runs = split_into_messages(&sizes, envelope, max).map_err(|index| {
            Outcome::Rejected(format!(
                "event {} makes a message of {} bytes on its own, more than max_message_bytes = {max}",
                events[index].event.id,
                envelope + sizes[index]
            ))
        })?;
        Ok(runs
            .into_iter()
            .enumerate()
            .map(|(index, events)| Message {
                batch_id: message_batch_id(batch_id, index),
                events,
            })
            .collect())
    }

    /// Starts the connection task.
    fn connect(&self) -> Link {
        let settings = &self.settings;
        let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
        options
            .set_keep_alive(settings.keep_alive)
            .set_clean_session(true)
            .set_inflight(INFLIGHT)
            .set_last_will(LastWill::new(
                &settings.state_topic,
                state_document(&self.agent, State::Offline),
                QoS::AtLeastOnce,
                true,
            ));
        let largest_topic = settings.topic.len().max(settings.state_topic.len());
        let max_packet = settings.max_message_bytes + largest_topic + PUBLISH_OVERHEAD;
        options.set_max_packet_size(max_packet, max_packet);
        if let Some(username) = &settings.username {
            options.set_credentials(username, self.password.clone().unwrap_or_default());
        }
        if let Some(config) = &self.tls {
            options.set_transport(rumqttc::Transport::tls_with_config(
                TlsConfiguration::Rustls(Arc::clone(config)),
            ));
        }
        let (client, mut event_loop) = AsyncClient::new(options, REQUEST_QUEUE);
        let mut network = NetworkOptions::new();
        // A delivery waits for its PUBACKs before the next: no Nagle delay.
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(settings.timeout.min(MAX_CONNECT_TIME).as_secs().max(1));
        event_loop.set_network_options(network);

        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (status_sender, status) = watch::channel(Status::Connecting);
        let stop = CancellationToken::new();
        let task = Connection {
            sink: self.name.clone(),
            broker: format!("{}:{}", settings.host, settings.port),
            client_id: settings.client_id.clone(),
            state_topic: settings.state_topic.clone(),
            agent: self.agent.clone(),
            max_backoff: self.max_backoff,
            event_loop,
            client: client.clone(),
            ledger: Arc::clone(&ledger),
            status: status_sender,
            kicks: KickHistory::new(if self.fought { 1 } else { FIGHT_KICKS }),
        };
        tokio::spawn(task.run(stop.clone()));
        Link {
            client,
            ledger,
            status,
            reported_outage: None,
            _stop: stop.drop_guard(),
        }
    }

    fn read_password(&mut self) {
        match secret::resolve(&self.password_source, "password") {
            Ok(password) => {
                self.password = password;
                self.password_error = None;
            }
            Err(error) => {
                self.password = None;
                self.password_error = Some(error);
            }
        }
    }
}

/// One message of a batch: its own batch id and a run of the batch's
/// events.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Message {
    batch_id: String,
    events: Range<usize>,
}

/// Counts the bytes of an encoding without keeping them.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Splits events of these encoded sizes into consecutive runs, each of
/// which makes a document of at most `max` bytes, given that a document
/// with no events has `envelope` bytes (events are joined by a comma).
/// Greedy, so the split depends on the sizes alone. `Err` holds the index
/// of an event that does not fit even alone.
fn split_into_messages(
    sizes: &[usize],
    envelope: usize,
    max: usize,
) -> Result<Vec<Range<usize>>, usize> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut length = envelope;
    for (index, &size) in sizes.iter().enumerate() {
        if envelope + size > max {
            return Err(index);
        }
        let comma = usize::from(index > start);
        if length + comma + size > max {
            runs.push(start..index);
            start = index;
            length = envelope + size;
        } else {
            length += comma + size;
        }
    }
    if start < sizes.len() {
        runs.push(start..sizes.len());
    }
    Ok(runs)
}

/// The batch id of the `index`-th message of a batch: the batch's own id
/// for the first, then the ULID with its random part counted up by the
/// index, so every retry of the batch gives its messages the same ids.
fn message_batch_id(batch_id: &str, index: usize) -> String {
    const RANDOM_BITS: u128 = (1 << 80) - 1;
    if index == 0 {
        return batch_id.to_string();
    }
    match Ulid::from_string(batch_id) {
        Ok(ulid) => Ulid::from_parts(
            ulid.timestamp_ms(),
            ulid.random().wrapping_add(index as u128) & RANDOM_BITS,
        )
        .to_string(),
        // Batch ids are ULIDs; anything else still gets distinct ids.
        Err(_) => format!("{batch_id}-{index}"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Online,
    Offline,
}

/// The retained document of `state_topic`.
fn state_document(agent: &AgentInfo, state: State) -> Vec<u8> {
    #[derive(Serialize)]
    struct Document<'a> {
        state: &'static str,
        agent: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        version: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ts: Option<String>,
    }
    let document = match state {
        State::Online => Document {
            state: "online",
            agent: &agent.id,
            version: Some(agent.version),
            ts: Some(format_timestamp(Utc::now())),
        },
        State::Offline => Document {
            state: "offline",
            agent: &agent.id,
            version: None,
            ts: None,
        },
    };
    // A struct of strings always encodes.
    serde_json::to_vec(&document).unwrap_or_default()
}

impl Link {
    /// Waits until there is a connection to publish on, or answers what to
    /// tell the sink task instead. A fresh connection's first attempt is
    /// waited for up to `timeout`. The first delivery to meet an outage
    /// fails at once, so the sink's state shows it; the next ones in the
    /// same outage wait for the connection task's reconnection (up to
    /// [`OUTAGE_WAIT`]) instead of putting the sink task on a backoff of its
    /// own beside the connection's: after a broker comes back, a backlog
    /// then goes out as soon as the connection is up.
    async fn wait_until_connected(&mut self, timeout: Duration) -> Result<(), Outcome> {
        let ended = || Outcome::Transport("the MQTT connection task ended".into());
        let mut deadline = Instant::now() + timeout;
        let mut riding_out = false;
        loop {
            let status = self.status.borrow_and_update().clone();
            match status {
                Status::Connected => return Ok(()),
                Status::Refused(reason) | Status::Fight(reason) => {
                    return Err(Outcome::Misconfigured(reason))
                }
                Status::Stopped => return Err(ended()),
                Status::Waiting { error, outage } if self.reported_outage != Some(outage) => {
                    self.reported_outage = Some(outage);
                    return Err(Outcome::Transport(error));
                }
                Status::Waiting { .. } if !riding_out => {
                    riding_out = true;
                    deadline = Instant::now() + OUTAGE_WAIT.max(timeout);
                }
                Status::Waiting { .. } | Status::Connecting => {}
            }
            match tokio::time::timeout_at(deadline, self.status.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(ended()),
                Err(_) => {
                    return Err(Outcome::Transport(match &*self.status.borrow() {
                        Status::Waiting { error, .. } => error.clone(),
                        _ => format!(
                            "no connection to the broker within timeout_s = {}",
                            timeout.as_secs()
                        ),
                    }))
                }
            }
        }
    }

    /// Queues one QoS 1 message; the receiver answers once the broker has
    /// acknowledged it, or with why it never will.
    fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
    ) -> Result<oneshot::Receiver<Result<(), Failure>>, String> {
        let (done, acked) = oneshot::channel();
        let mut ledger = lock(&self.ledger);
        if !ledger.connected {
            return Err(match &*self.status.borrow() {
                Status::Waiting { error, .. } => error.clone(),
                _ => "the connection to the broker was lost".into(),
            });
        }
        // Under the lock: the waiter and the publish enter their queues in
        // the same order.
        ledger.queued.push_back(Some(done));
        if let Err(error) = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
            ledger.queued.pop_back();
            return Err(format!("cannot queue the message for the broker: {error}"));
        }
        Ok(acked)
    }
}

/// The connection task: owns rumqttc's event loop.
struct Connection {
    sink: String,
    /// `host:port`, for messages.
    broker: String,
    client_id: String,
    state_topic: String,
    agent: AgentInfo,
    max_backoff: Duration,
    event_loop: EventLoop,
    client: AsyncClient,
    ledger: Arc<Mutex<Ledger>>,
    status: watch::Sender<Status>,
    kicks: KickHistory,
}

impl Connection {
    async fn run(mut self, stop: CancellationToken) {
        let mut failures: u32 = 0;
        let mut connected_since: Option<Instant> = None;
        // Whether the log's last word on the connection is that it is up:
        // a state change is logged once, not a flapping connection's
        // every turn (the sink reports what its deliveries meet).
        let mut up_logged = false;
        // A refusal or a fight met on a reconnection may meet no delivery
        // (an idle shop): then only this task can report it.
        let mut ever_connected = false;
        // Times without a connection, counted so that deliveries can tell
        // one outage from the next (`Link::wait_until_connected`).
        let mut outage: u64 = 0;
        let mut in_outage = false;
        loop {
            let event = tokio::select! {
                // A poll is cancelled only here: the connection is given up.
                _ = stop.cancelled() => {
                    if connected_since.is_some() {
                        self.goodbye().await;
                    }
                    self.status.send_replace(Status::Stopped);
                    return;
                }
                event = self.event_loop.poll() => event,
            };
            let error = match event {
                Ok(LoopEvent::Incoming(Incoming::ConnAck(_))) => {
                    connected_since = Some(Instant::now());
                    ever_connected = true;
                    in_outage = false;
                    self.connected();
                    if !up_logged {
                        tracing::info!(sink = %self.sink, broker = %self.broker, "connected to the broker");
                        up_logged = true;
                    }
                    continue;
                }
                Ok(event) => {
                    self.note(&event);
                    continue;
                }
                Err(error) => error,
            };

            let lasted = connected_since.take().map(|since| since.elapsed());
            let reason = match lasted {
                Some(_) => format!(
                    "the connection to the broker {} was lost: {}",
                    self.broker,
                    describe(&error)
                ),
                None => format!(
                    "cannot connect to the broker {}: {}",
                    self.broker,
                    describe(&error)
                ),
            };
            if let ConnectionError::ConnectionRefused(code) = &error {
                if let Some(refusal) = refusal(*code, &self.client_id) {
                    if ever_connected {
                        tracing::error!(sink = %self.sink, "{refusal}; not reconnecting until the sink's next try");
                    } else {
                        // The delivery waiting for this connection reports it.
                        tracing::debug!(sink = %self.sink, "{refusal}");
                    }
                    self.forget_in_flight(Failure::Refused(refusal.clone()));
                    self.status.send_replace(Status::Refused(refusal));
                    return;
                }
            }
            let ending = match lasted {
                Some(lasted) if closed_by_broker(&error) => Ending::ClosedByBroker { lasted },
                _ => Ending::Other,
            };
            if let Some(fight) = self.kicks.record(ending, Instant::now().into_std()) {
                let reason = format!(
                    "another client uses client_id {}: the broker closed this agent's connection {} time{} in {} s, \
                     each within {} s of accepting it, as it does when a second client connects with the same id; \
                     not reconnecting until the sink's next try (give every agent its own client_id; if none shares \
                     it, the broker may be refusing a message as too large: lower max_message_bytes)",
                    self.client_id,
                    fight.kicks,
                    if fight.kicks == 1 { "" } else { "s" },
                    fight.span.as_secs(),
                    LASTING.as_secs()
                );
                if fight.kicks >= FIGHT_KICKS {
                    tracing::error!(sink = %self.sink, "{reason}");
                } else {
                    // The fight found before, going on after a pause: the
                    // log has it already.
                    tracing::debug!(sink = %self.sink, "{reason}");
                }
                self.forget_in_flight(Failure::Refused(reason.clone()));
                self.status.send_replace(Status::Fight(reason));
                return;
            }
            if !in_outage {
                outage += 1;
                in_outage = true;
            }
            self.forget_in_flight(Failure::Lost {
                reason: reason.clone(),
                outage,
            });
            match lasted {
                Some(lasted) if lasted >= LASTING => {
                    failures = 0;
                    tracing::warn!(sink = %self.sink, "{reason}; reconnecting");
                    up_logged = false;
                }
                _ => tracing::debug!(sink = %self.sink, attempt = failures + 1, "{reason}"),
            }
            let delay = policy::backoff(failures, self.max_backoff, fastrand::f64());
            failures = failures.saturating_add(1);
            self.status.send_replace(Status::Waiting {
                error: reason,
                outage,
            });
            tokio::select! {
                _ = stop.cancelled() => {
                    self.status.send_replace(Status::Stopped);
                    return;
                }
                _ = tokio::time::sleep(delay) => {}
            }
            self.status.send_replace(Status::Connecting);
        }
    }

    /// After a CONNACK: deliveries may publish, and the online state goes
    /// first.
    fn connected(&mut self) {
        let mut ledger = lock(&self.ledger);
        ledger.connected = true;
        ledger.queued.push_back(None);
        let online = state_document(&self.agent, State::Online);
        if let Err(error) =
            self.client
                .try_publish(&self.state_topic, QoS::AtLeastOnce, true, online)
        {
            ledger.queued.pop_back();
            tracing::warn!(sink = %self.sink, "cannot publish the online state: {error}");
        }
        drop(ledger);
        self.status.send_replace(Status::Connected);
    }

    /// Files a waiter under its packet id, or releases it on its PUBACK.
    fn note(&mut self, event: &LoopEvent) {
        let mut ledger = lock(&self.ledger);
        match event {
            LoopEvent::Outgoing(Outgoing::Publish(pkid)) => {
                let waiter = match ledger.held.take() {
                    Some((held, waiter)) if held == *pkid => waiter,
                    other => {
                        ledger.held = other;
                        ledger.queued.pop_front().flatten()
                    }
                };
                ledger.written.insert(*pkid, waiter);
            }
            LoopEvent::Outgoing(Outgoing::AwaitAck(pkid)) => {
                let waiter = ledger.queued.pop_front().flatten();
                ledger.held = Some((*pkid, waiter));
            }
            LoopEvent::Incoming(Incoming::PubAck(ack)) => {
                if let Some(Some(waiter)) = ledger.written.remove(&ack.pkid) {
                    // The delivery may have given up waiting: nothing to tell.
                    let _ = waiter.send(Ok(()));
                }
            }
            _ => {}
        }
    }

    /// After a lost connection: nothing in flight will be acknowledged.
    /// rumqttc's own copies are dropped too, so the new connection starts
    /// with nothing but the online state, and the sink's retry is the only
    /// resend.
    fn forget_in_flight(&mut self, failure: Failure) {
        let mut ledger = lock(&self.ledger);
        ledger.connected = false;
        // Moves what is still in the request queue into `pending`, which is
        // then dropped with the unacknowledged publishes; events and a held
        // publish of the old connection must not meet the new one.
        self.event_loop.clean();
        self.event_loop.pending.clear();
        self.event_loop.state.events.clear();
        self.event_loop.state.collision = None;
        let held = ledger.held.take().map(|(_, waiter)| waiter);
        let written: Vec<Waiter> = ledger.written.drain().map(|(_, waiter)| waiter).collect();
        let queued: Vec<Waiter> = ledger.queued.drain(..).collect();
        drop(ledger);
        for waiter in held.into_iter().chain(written).chain(queued).flatten() {
            let _ = waiter.send(Err(failure.clone()));
        }
    }

    /// A clean stop: the offline state, acknowledged, then DISCONNECT (so
    /// the broker drops the Last Will), within [`GOODBYE_WAIT`]. Whatever
    /// does not happen in time, the Last Will says the same.
    async fn goodbye(&mut self) {
        let deadline = Instant::now() + GOODBYE_WAIT;
        let (done, mut acked) = oneshot::channel();
        {
            let mut ledger = lock(&self.ledger);
            ledger.queued.push_back(Some(done));
            let offline = state_document(&self.agent, State::Offline);
            if self
                .client
                .try_publish(&self.state_topic, QoS::AtLeastOnce, true, offline)
                .is_err()
            {
                return;
            }
            ledger.connected = false;
        }
        loop {
            if acked.try_recv().is_ok() {
                break;
            }
            let event = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                event = self.event_loop.poll() => event,
            };
            match event {
                Ok(event) => self.note(&event),
                Err(_) => return,
            }
        }
        if self.client.try_disconnect().is_err() {
            return;
        }
        loop {
            let event = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                event = self.event_loop.poll() => event,
            };
            match event {
                Ok(LoopEvent::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

/// How a connection ended, for telling a client id fight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// It had been accepted, and the broker closed it after `lasted`.
    ClosedByBroker { lasted: Duration },
    /// Anything else: an attempt that failed, a timeout, our own error.
    Other,
}

/// A client id fight: this many kicks within `span`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fight {
    kicks: usize,
    span: Duration,
}

/// The recent kicks: connections the broker closed soon after accepting
/// them. Any other ending clears them.
#[derive(Debug)]
struct KickHistory {
    kicks: VecDeque<std::time::Instant>,
    /// How many kicks within [`FIGHT_SPAN`] make a fight: [`FIGHT_KICKS`],
    /// or 1 right after a fight (until a connection lasts).
    threshold: usize,
}

impl KickHistory {
    fn new(threshold: usize) -> KickHistory {
        KickHistory {
            kicks: VecDeque::new(),
            threshold,
        }
    }

    /// Records how a connection ended at `now`; a [`Fight`] when it was the
    /// `threshold`-th kick within [`FIGHT_SPAN`].
    fn record(&mut self, ending: Ending, now: std::time::Instant) -> Option<Fight> {
        match ending {
            Ending::ClosedByBroker { lasted } if lasted < LASTING => {
                self.kicks.push_back(now);
                while self
                    .kicks
                    .front()
                    .is_some_and(|first| now.duration_since(*first) > FIGHT_SPAN)
                {
                    self.kicks.pop_front();
                }
                let first = *self.kicks.front()?;
                (self.kicks.len() >= self.threshold).then(|| Fight {
                    kicks: self.kicks.len(),
                    span: now.duration_since(first),
                })
            }
            Ending::ClosedByBroker { .. } => {
                // It lasted: no fight, and none is suspected any more.
                self.kicks.clear();
                self.threshold = FIGHT_KICKS;
                None
            }
            Ending::Other => {
                self.kicks.clear();
                None
            }
        }
    }
}

/// The pause reason for a CONNACK refusal that retrying cannot cure;
/// `None` for one that can (server unavailable).
fn refusal(code: ConnectReturnCode, client_id: &str) -> Option<String> {
    match code {
        ConnectReturnCode::BadUserNamePassword => Some(
            "the broker refuses the user name or password (CONNACK return code 4): check the sink's username and password"
                .into(),
        ),
        // Mosquitto 2 answers a wrong password with this one.
        ConnectReturnCode::NotAuthorized => Some(
            "the broker refuses the user name or password, or the client certificate (CONNACK return code 5, not \
             authorized): check the sink's username, password, client_cert_file and what the broker allows them"
                .into(),
        ),
        ConnectReturnCode::BadClientId => Some(format!(
            "the broker refuses client_id {client_id} (CONNACK return code 2): set a client_id the broker accepts"
        )),
        ConnectReturnCode::RefusedProtocolVersion => Some(
            "the broker refuses MQTT 3.1.1 (CONNACK return code 1): is url an MQTT broker's?".into(),
        ),
        ConnectReturnCode::ServiceUnavailable | ConnectReturnCode::Success => None,
    }
}

/// Whether the broker closed an established connection (end of stream or
/// a reset), as it does to a client whose id another client took.
fn closed_by_broker(error: &ConnectionError) -> bool {
    let io_closed = |error: &io::Error| {
        matches!(
            error.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        )
    };
    match error {
        ConnectionError::MqttState(StateError::ConnectionAborted) => true,
        ConnectionError::MqttState(StateError::Io(error)) | ConnectionError::Io(error) => {
            io_closed(error)
        }
        ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::Io(error))) => {
            io_closed(error)
        }
        _ => false,
    }
}

/// rumqttc's error in words, innermost cause first where that is the point.
fn describe(error: &ConnectionError) -> String {
    let io_error = |error: &io::Error| {
        let text = error.to_string();
        if text.contains("CertificateRequired") || text.contains("certificate required") {
            format!("{text} (the broker wants a client certificate: set client_cert_file and client_key_file)")
        } else {
            text
        }
    };
    match error {
        ConnectionError::Io(error) => io_error(error),
        ConnectionError::NetworkTimeout => "no answer in time".into(),
        ConnectionError::FlushTimeout => "the broker does not take what is sent".into(),
        ConnectionError::Tls(error) => format!("TLS: {error}"),
        ConnectionError::ConnectionRefused(code) => format!("refused: {code:?}"),
        ConnectionError::MqttState(StateError::ConnectionAborted) => {
            "the broker closed the connection".into()
        }
        ConnectionError::MqttState(StateError::AwaitPingResp) => {
            "the broker stopped answering (no PINGRESP within keep_alive_s)".into()
        }
        ConnectionError::MqttState(StateError::Io(error)) => io_error(error),
        ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::Io(error))) => {
            io_error(error)
        }
        other => other.to_string(),
    }
}

/// Locks, ignoring poisoning: the ledger stays consistent under every
/// operation, and a panic elsewhere must not stop deliveries.
fn lock(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // A list holding one run of events (`vec![0..3]`) is meant: one message.
    #[allow(clippy::single_range_in_vec_init)]
    fn a_batch_is_split_greedily_into_runs_under_the_limit() {
        // (sizes, envelope, max) → runs
        let check = |sizes: &[usize], envelope, max, expected: Result<Vec<Range<usize>>, usize>| {
            assert_eq!(
                split_into_messages(sizes, envelope, max),
                expected,
                "{sizes:?} envelope {envelope} max {max}"
            );
        };
        check(&[10, 10, 10], 100, 200, Ok(vec![0..3]));
        // 100 + 10 + 1 + 10 = 121 fits 121 exactly; the third starts anew.
        check(&[10, 10, 10], 100, 121, Ok(vec![0..2, 2..3]));
        check(&[10, 10, 10], 100, 120, Ok(vec![0..1, 1..2, 2..3]));
        check(&[10, 50, 10, 10], 100, 161, Ok(vec![0..2, 2..4]));
        check(&[], 100, 120, Ok(vec![]));
        // An event that alone makes a document over the limit.
        check(&[10, 30, 10], 100, 120, Err(1));
        check(&[20], 100, 120, Ok(vec![0..1]));
    }

    #[test]
    fn message_batch_ids_are_the_batch_id_then_counted_up() {
        let batch_id = "01JDA90K3W3X5Q8Y0B2C4D6E8F";
        let ids: Vec<String> = (0..3)
            .map(|index| message_batch_id(batch_id, index))
            .collect();
        assert_eq!(ids[0], batch_id);
        assert_eq!(ids[1], "01JDA90K3W3X5Q8Y0B2C4D6E8G");
        assert_eq!(ids[2], "01JDA90K3W3X5Q8Y0B2C4D6E8H");
        assert_eq!(
            ids,
            (0..3)
                .map(|index| message_batch_id(batch_id, index))
                .collect::<Vec<_>>(),
            "the same on every retry"
        );
        // The random part wraps within its 80 bits; the time stays.
        let last = Ulid::from_parts(1_700_000_000_000, (1 << 80) - 1).to_string();
        let next = Ulid::from_string(&message_batch_id(&last, 1)).expect("a ULID");
        assert_eq!(next.timestamp_ms(), 1_700_000_000_000);
        assert_eq!(next.random(), 0);
        assert_eq!(message_batch_id("not-a-ulid", 2), "not-a-ulid-2");
    }

    #[test]
    fn three_quick_kicks_within_a_minute_are_a_client_id_fight() {
        let start = std::time::Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let kick = Ending::ClosedByBroker {
            lasted: Duration::from_secs(1),
        };
        let lasting = Ending::ClosedByBroker { lasted: LASTING };
        // (ending, at second) → fight?
        let check_from = |threshold, steps: &[(Ending, u64, Option<Fight>)]| {
            let mut history = KickHistory::new(threshold);
            for (index, (ending, second, expected)) in steps.iter().enumerate() {
                assert_eq!(
                    history.record(*ending, at(*second)),
                    *expected,
                    "step {index} of {steps:?}"
                );
            }
        };
        let check = |steps: &[(Ending, u64, Option<Fight>)]| check_from(FIGHT_KICKS, steps);
        let fight = |kicks, span| {
            Some(Fight {
                kicks,
                span: Duration::from_secs(span),
            })
        };
        check(&[(kick, 0, None), (kick, 2, None), (kick, 5, fight(3, 5))]);
        // Another failure between the kicks (a refused attempt) clears them.
        check(&[
            (kick, 0, None),
            (kick, 2, None),
            (Ending::Other, 3, None),
            (kick, 4, None),
        ]);
        // A connection that lasted is no kick, and clears them too.
        check(&[
            (kick, 0, None),
            (kick, 2, None),
            (lasting, 20, None),
            (kick, 21, None),
        ]);
        // Kicks more than a minute apart are not a fight.
        check(&[(kick, 0, None), (kick, 40, None), (kick, 80, None)]);
        check(&[
            (kick, 0, None),
            (kick, 40, None),
            (kick, 80, None),
            (kick, 90, fight(3, 50)),
        ]);
        // Right after a fight, the first kick is one; a lasting connection
        // ends the suspicion.
        check_from(1, &[(kick, 0, fight(1, 0))]);
        check_from(1, &[(lasting, 0, None), (kick, 1, None), (kick, 2, None)]);
    }

    #[test]
    fn connack_refusals_that_a_retry_cannot_cure_pause() {
        let check = |code, expected: Option<&str>| {
            let reason = refusal(code, "shop-017");
            match expected {
                Some(start) => assert!(
                    reason
                        .as_deref()
                        .is_some_and(|reason| reason.starts_with(start)),
                    "{code:?}: {reason:?}"
                ),
                None => assert_eq!(reason, None, "{code:?}"),
            }
        };
        check(
            ConnectReturnCode::BadUserNamePassword,
            Some("the broker refuses the user name or password"),
        );
        check(
            ConnectReturnCode::NotAuthorized,
            Some("the broker refuses the user name or password, or the client certificate"),
        );
        check(
            ConnectReturnCode::BadClientId,
            Some("the broker refuses client_id shop-017"),
        );
        check(
            ConnectReturnCode::RefusedProtocolVersion,
            Some("the broker refuses MQTT 3.1.1"),
        );
        check(ConnectReturnCode::ServiceUnavailable, None);
    }

    #[test]
    fn state_documents_follow_the_contract() {
        let agent = AgentInfo {
            id: "shop-017".into(),
            location: None,
            version: "0.1.0",
        };
        let online: serde_json::Value =
            serde_json::from_slice(&state_document(&agent, State::Online)).expect("json");
        assert_eq!(online["state"], "online");
        assert_eq!(online["agent"], "shop-017");
        assert_eq!(online["version"], "0.1.0");
        let ts = online["ts"].as_str().expect("ts");
        assert!(
            ts.len() == 24 && ts.ends_with('Z'),
            "RFC 3339 UTC with milliseconds: {ts}"
        );
        assert_eq!(
            state_document(&agent, State::Offline),
            br#"{"state":"offline","agent":"shop-017"}"#
        );
    }
}

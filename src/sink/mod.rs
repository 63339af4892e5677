//! Delivery of stored events to the configured sinks
//! (`docs/upload.md`). One task per `[[sink]]`, each with its own
//! cursor over the store's events, so a slow or dead sink never holds back
//! another sink or the ingest path.
//!
//! A sink task reads the next batch in store order (bounded: the backlog is
//! never loaded into memory), records it as in flight (id and seqno range)
//! before the first send, sends it, and moves its cursor only after
//! success, in one committed update. A retry, also after a restart, resends
//! exactly the batch in flight: same id, same events. What to do after an
//! answer is [`policy::decide`].

pub mod file;
pub mod http;
pub mod mqtt;
pub mod policy;
pub mod postgres;
#[cfg(test)]
mod scripted;
pub mod secret;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use crate::config::{AgentSettings, SinkKind, SinkSettings};
use crate::event::Event;
use crate::store::blocking::AsyncReader;
use crate::store::{InFlightBatch, SinkState, SinkUpdate, StoreError, StoreHandle, StoredEvent};
use policy::{Action, Outcome};

/// How often an idle sink looks for dead letters to send again.
const IDLE_RECHECK: Duration = Duration::from_secs(2);

/// After a 413 halved the batch size, this many deliveries in a row double
/// it again (up to `batch_size`).
const GROW_AFTER: u32 = 50;

/// Who is sending: goes into every batch (`agent`) and ndjson line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInfo {
    pub id: String,
    pub location: Option<String>,
    pub version: &'static str,
}

impl AgentInfo {
    pub fn new(settings: &AgentSettings) -> AgentInfo {
        AgentInfo {
            id: settings.id.clone(),
            location: settings.location.clone(),
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// The batch document of `docs/upload.md` (`schema`, `agent`, `batch_id`,
/// `sent_at`, `events`): the body of an HTTP `json` POST and the payload of
/// an MQTT message, defined once here so that the two never drift apart.
pub fn batch_document(
    agent: &AgentInfo,
    batch_id: &str,
    sent_at: &str,
    events: &[StoredEvent],
) -> serde_json::Result<Vec<u8>> {
    let document = BatchDocument {
        schema: BATCH_SCHEMA,
        agent: AgentDocument {
            id: &agent.id,
            location: agent.location.as_deref(),
            version: agent.version,
        },
        batch_id,
        sent_at,
        events: events.iter().map(|stored| &stored.event).collect(),
    };
    let mut bytes = Vec::with_capacity(events.len() * 320 + 256);
    serde_json::to_writer(&mut bytes, &document)?;
    Ok(bytes)
}

/// The `schema` of every batch document.
pub const BATCH_SCHEMA: &str = "epm-agent.batch.v1";

#[derive(serde::Serialize)]
struct BatchDocument<'a> {
    schema: &'static str,
    agent: AgentDocument<'a>,
    batch_id: &'a str,
    sent_at: &'a str,
    events: Vec<&'a Event>,
}

#[derive(serde::Serialize)]
struct AgentDocument<'a> {
    id: &'a str,
    location: Option<&'a str>,
    version: &'a str,
}

/// A sink that cannot start: the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: {message}")]
    Setup { sink: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a sink's batches go.
pub enum Transport {
    Http(Box<http::HttpSink>),
    File(file::FileSink),
    Postgres(Box<postgres::PostgresSink>),
    Mqtt(Box<mqtt::MqttSink>),
    /// Answers as a test scripts it.
    #[cfg(test)]
    Scripted(scripted::Scripted),
}

impl Transport {
    pub fn new(settings: &SinkSettings, agent: AgentInfo) -> Result<Transport, SinkError> {
        match &settings.kind {
            SinkKind::Http(http) => Ok(Transport::Http(Box::new(http::HttpSink::new(
                &settings.name,
                http,
                agent,
            )?))),
            SinkKind::File(file) => Ok(Transport::File(file::FileSink::new(
                &settings.name,
                file,
                agent,
            )?)),
            SinkKind::Postgres(postgres) => Ok(Transport::Postgres(Box::new(
                postgres::PostgresSink::new(&settings.name, postgres, agent)?,
            ))),
            SinkKind::Mqtt(mqtt) => Ok(Transport::Mqtt(Box::new(
                mqtt::MqttSink::new(&settings.name, mqtt, agent)?
                    .with_max_backoff(settings.max_backoff),
            ))),
        }
    }

    async fn deliver(&mut self, batch_id: &str, events: &[StoredEvent]) -> Outcome {
        match self {
            Transport::Http(sink) => sink.deliver(batch_id, events).await,
            Transport::File(sink) => sink.deliver(batch_id, events).await,
            Transport::Postgres(sink) => sink.deliver(batch_id, events).await,
            Transport::Mqtt(sink) => sink.deliver(batch_id, events).await,
            #[cfg(test)]
            Transport::Scripted(sink) => sink.deliver(batch_id, events).await,
        }
    }

    /// A problem the sink can live with but the operator should hear of
    /// (a token that cannot be read yet). Never contains the token.
    pub fn setup_warning(&self) -> Option<&str> {
        match self {
            Transport::Http(sink) => sink.token_problem(),
            Transport::Postgres(sink) => sink.password_problem(),
            Transport::Mqtt(sink) => sink.password_problem(),
            Transport::File(_) => None,
            #[cfg(test)]
            Transport::Scripted(_) => None,
        }
    }

    /// After a pause: a rotated token file or a fixed environment is
    /// picked up without restarting the agent.
    fn refresh(&mut self) {
        match self {
            Transport::Http(sink) => sink.refresh_token(),
            Transport::Postgres(sink) => sink.refresh_password(),
            Transport::Mqtt(sink) => sink.refresh_password(),
            Transport::File(_) => {}
            #[cfg(test)]
            Transport::Scripted(_) => {}
        }
    }
}

/// Runs one sink until `shutdown`. Fails only when the store is gone.
pub async fn run(
    settings: SinkSettings,
    transport: Transport,
    data_dir: PathBuf,
    store: StoreHandle,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let reader = AsyncReader::open(data_dir).await?;
    let mut task = SinkTask {
        batch_limit: settings.batch_size,
        delivered_at_limit: 0,
        settings,
        transport,
        reader,
        committed: store.committed_seqno(),
        store,
        failures: 0,
        state: SinkState::Ok,
        ready: None,
    };
    task.run(&shutdown).await
}

struct SinkTask {
    settings: SinkSettings,
    transport: Transport,
    /// A read-only connection, read on the blocking pool.
    reader: AsyncReader,
    store: StoreHandle,
    committed: watch::Receiver<i64>,
    /// At most this many events per batch: `batch_size`, halved after a
    /// 413 and doubled back after [`GROW_AFTER`] deliveries in a row.
    batch_limit: usize,
    /// Batches delivered since the limit last changed.
    delivered_at_limit: u32,
    /// Failures in a row of the batch in flight.
    failures: u32,
    state: SinkState,
    /// The next batch, read while the last one was in flight and recorded
    /// as in flight when that one was delivered: a backlog goes out
    /// without a read between two requests.
    ready: Option<Batch>,
}

/// The batch being delivered.
struct Batch {
    id: String,
    events: Vec<StoredEvent>,
}

impl Batch {
    /// Records this batch as `sink`'s batch in flight.
    fn begin(&self, sink: &str) -> SinkUpdate {
        let (first, last) = seqno_range(&self.events);
        SinkUpdate::Begin {
            sink: sink.to_string(),
            batch_id: self.id.clone(),
            first_seqno: first,
            last_seqno: last,
        }
    }
}

impl SinkTask {
    async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), StoreError> {
        while !shutdown.is_cancelled() {
            // Every wait in a round, also for a commit that a full disk
            // holds up, gives way to the stop: what was not confirmed is
            // still in flight in the store and is sent again next time.
            tokio::select! {
                _ = shutdown.cancelled() => {}
                round = self.round(shutdown) => round?,
            }
        }
        Ok(())
    }

    /// Dead letters asked for, then the next batch, sent and settled.
    async fn round(&mut self, shutdown: &CancellationToken) -> Result<(), StoreError> {
        self.retry_dead_letters(shutdown).await?;
        let batch = match self.ready.take() {
            Some(batch) => batch,
            None => match self.next_batch(shutdown).await? {
                Some(batch) => batch,
                None => return Ok(()), // woken without a batch: shutdown or new events
            },
        };
        // While the backend works on this batch, read what would follow it.
        let (_, last) = seqno_range(&batch.events);
        let limit = self.batch_limit;
        let (outcome, following) = tokio::join!(
            self.transport.deliver(&batch.id, &batch.events),
            self.reader
                .read(move |store| store.events_after(last, limit)),
        );
        // Only a full batch goes on at once; a partial one may still fill
        // (`next_batch` decides), and a failed read is simply read again.
        let following = following.ok().filter(|events| events.len() == limit);
        self.settle(batch, outcome, following, shutdown).await
    }

    /// The batch in flight, or a new one from the cursor (recorded as in
    /// flight before it is returned). Waits up to `flush_interval` for a
    /// partial batch to fill, and for new events when there are none.
    async fn next_batch(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Option<Batch>, StoreError> {
        let name = self.settings.name.clone();
        let cursor = self
            .reader
            .read(move |store| store.sink_cursor(&name))
            .await?;
        if let Some(InFlightBatch {
            batch_id,
            first_seqno,
            last_seqno,
        }) = cursor.in_flight
        {
            let events = self
                .reader
                .read(move |store| store.events_between(first_seqno, last_seqno))
                .await?;
            if !events.is_empty() {
                return Ok(Some(Batch {
                    id: batch_id,
                    events,
                }));
            }
            // Nothing left of it (removed by hand?): start afresh after it.
            tracing::warn!(sink = %self.settings.name, batch_id, "the batch in flight has no events left; skipping it");
            self.store
                .update_sink(SinkUpdate::Delivered {
                    sink: self.settings.name.clone(),
                    through_seqno: last_seqno,
                    count: 0,
                })
                .await?;
            return Ok(None);
        }

        let after = cursor.delivered_seqno;
        let limit = self.batch_limit;
        let mut events = self
            .reader
            .read(move |store| store.events_after(after, limit))
            .await?;
        if events.is_empty() {
            // Idle: wake on the next commit, or now and then to pick up
            // dead letters that `deadletter retry` flagged meanwhile.
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(IDLE_RECHECK) => {}
                changed = self.committed.changed() => changed.map_err(|_| StoreError::WriterGone)?,
            }
            return Ok(None);
        }
        let waited = events
            .first()
            .and_then(|oldest| DateTime::parse_from_rfc3339(&oldest.event.ts).ok())
            .and_then(|oldest_ts| (Utc::now() - oldest_ts.to_utc()).to_std().ok())
            .unwrap_or_default();
        let fill_for = self.settings.flush_interval.saturating_sub(waited);
        if events.len() < limit && !fill_for.is_zero() {
            // Let a partial batch fill until its oldest event has waited
            // flush_interval: a busy shop sends full batches, a quiet one
            // still sends within a second, and what already waited (the
            // end of a backlog, presses kept through an outage) goes now.
            let deadline = tokio::time::Instant::now() + fill_for;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    changed = tokio::time::timeout_at(deadline, self.committed.changed()) => match changed {
                        Ok(Ok(())) if *self.committed.borrow_and_update() - after < limit as i64 => continue,
                        Ok(_) | Err(_) => break,
                    },
                }
            }
            events = self
                .reader
                .read(move |store| store.events_after(after, limit))
                .await?;
        }
        let batch = Batch {
            id: Ulid::generate().to_string(),
            events,
        };
        self.begin(&batch).await?;
        Ok(Some(batch))
    }

    async fn begin(&mut self, batch: &Batch) -> Result<(), StoreError> {
        self.store
            .update_sink(batch.begin(&self.settings.name))
            .await
    }

    /// Acts on the answer to `batch`; `following` are the events after it,
    /// the next batch if this one was delivered.
    async fn settle(
        &mut self,
        batch: Batch,
        outcome: Outcome,
        following: Option<Vec<StoredEvent>>,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        let action = policy::decide(
            &outcome,
            self.failures,
            self.settings.pace(),
            fastrand::f64(),
        );
        let name = self.settings.name.clone();
        match action {
            Action::Delivered => {
                let (_, last) = seqno_range(&batch.events);
                let delivered = self.store.update_sink(SinkUpdate::Delivered {
                    sink: name.clone(),
                    through_seqno: last,
                    count: batch.events.len() as u64,
                });
                match following {
                    // Queued together, the two usually share one commit;
                    // the writer applies them in this order either way.
                    Some(events) => {
                        let next = Batch {
                            id: Ulid::generate().to_string(),
                            events,
                        };
                        let begun = self.store.update_sink(next.begin(&name));
                        let (delivered, begun) = tokio::join!(delivered, begun);
                        delivered?;
                        begun?;
                        self.ready = Some(next);
                    }
                    None => delivered.await?,
                }
                if self.state != SinkState::Ok {
                    tracing::info!(sink = %name, "delivering again after {} failed attempts", self.failures);
                }
                self.failures = 0;
                self.state = SinkState::Ok;
                self.delivered_at_limit += 1;
                if self.batch_limit < self.settings.batch_size
                    && self.delivered_at_limit >= GROW_AFTER
                {
                    // A size limit may have been a proxy's mood: try bigger
                    // batches again (a lasting limit costs one 413 per round).
                    self.batch_limit = (self.batch_limit * 2).min(self.settings.batch_size);
                    self.delivered_at_limit = 0;
                }
            }
            Action::Retry { delay, reason } => {
                self.fail(SinkState::Retrying, &reason, delay).await?;
                sleep_or_shutdown(delay, shutdown).await;
            }
            Action::Pause { delay, reason } => {
                self.fail(SinkState::Paused, &reason, delay).await?;
                sleep_or_shutdown(delay, shutdown).await;
                self.transport.refresh();
            }
            Action::Halve { reason } => {
                self.batch_limit = (batch.events.len() / 2).max(1);
                self.delivered_at_limit = 0;
                tracing::warn!(sink = %name, "{reason}: sending at most {} events per batch for now", self.batch_limit);
                // A lone event still too large is dead-lettered with its 413.
                self.narrow(batch, Some(413), &reason).await?;
            }
            Action::Split { status, reason } => {
                self.narrow(batch, status, &reason).await?;
            }
        }
        Ok(())
    }

    /// Replaces the batch in flight by its first half; a batch of one event
    /// that is still refused becomes a dead letter.
    async fn narrow(
        &mut self,
        batch: Batch,
        status: Option<u16>,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.failures = 0;
        if let [only] = batch.events.as_slice() {
            tracing::warn!(
                sink = %self.settings.name,
                event = %only.event.id,
                "{reason}: the backend rejects this event; kept as a dead letter (`epm-agent deadletter retry` sends it again)"
            );
            return self
                .store
                .update_sink(SinkUpdate::DeadLetter {
                    sink: self.settings.name.clone(),
                    seqno: only.seqno,
                    event_id: only.event.id.clone(),
                    status,
                    reason: reason.to_string(),
                })
                .await;
        }
        let mut events = batch.events;
        events.truncate(events.len() / 2);
        let half = Batch {
            id: Ulid::generate().to_string(),
            events,
        };
        tracing::debug!(sink = %self.settings.name, "{reason}: trying the first {} events alone", half.events.len());
        self.begin(&half).await
    }

    async fn fail(
        &mut self,
        state: SinkState,
        reason: &str,
        delay: Duration,
    ) -> Result<(), StoreError> {
        if self.failures == 0 || self.state != state {
            match state {
                SinkState::Paused => {
                    tracing::error!(sink = %self.settings.name, "{reason}; paused, every event kept, next try in {delay:?}")
                }
                _ => tracing::warn!(sink = %self.settings.name, "{reason}; retrying in {delay:?}"),
            }
        } else {
            tracing::debug!(sink = %self.settings.name, attempt = self.failures + 1, "{reason}; retrying in {delay:?}");
        }
        self.failures = self.failures.saturating_add(1);
        self.state = state;
        self.store
            .update_sink(SinkUpdate::State {
                sink: self.settings.name.clone(),
                state,
                last_error: Some(reason.to_string()),
            })
            .await
    }

    /// Sends again, one at a time, the dead letters a user asked to retry.
    async fn retry_dead_letters(&mut self, shutdown: &CancellationToken) -> Result<(), StoreError> {
        let name = self.settings.name.clone();
        let seqnos = self
            .reader
            .read(move |store| store.dead_letters_to_retry(&name))
            .await?;
        for seqno in seqnos {
            let events = self
                .reader
                .read(move |store| store.events_between(seqno, seqno))
                .await?;
            if events.is_empty() {
                // Deleted by retention meanwhile: nothing left to send.
                self.store
                    .update_sink(SinkUpdate::RetryRejected {
                        sink: self.settings.name.clone(),
                        seqno,
                        reason: "the event is no longer in the store (retention)".into(),
                    })
                    .await?;
                continue;
            }
            let batch_id = Ulid::generate().to_string();
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                outcome = self.transport.deliver(&batch_id, &events) => outcome,
            };
            let action = policy::decide(
                &outcome,
                self.failures,
                self.settings.pace(),
                fastrand::f64(),
            );
            let update = match action {
                Action::Delivered => SinkUpdate::Redelivered {
                    sink: self.settings.name.clone(),
                    seqno,
                },
                Action::Split { reason, .. } | Action::Halve { reason } => {
                    SinkUpdate::RetryRejected {
                        sink: self.settings.name.clone(),
                        seqno,
                        reason,
                    }
                }
                // The backend is not taking anything now: leave the request
                // standing, wait as the policy says (a dead letter asked for
                // again must not turn into a tight loop), and let the main
                // loop deal with the outage.
                Action::Retry { delay, reason } | Action::Pause { delay, reason } => {
                    tracing::debug!(sink = %self.settings.name, "{reason}; the dead letters asked for wait {delay:?}");
                    self.failures = self.failures.saturating_add(1);
                    sleep_or_shutdown(delay, shutdown).await;
                    return Ok(());
                }
            };
            self.store.update_sink(update).await?;
        }
        Ok(())
    }
}

fn seqno_range(events: &[StoredEvent]) -> (i64, i64) {
    match (events.first(), events.last()) {
        (Some(first), Some(last)) => (first.seqno, last.seqno),
        _ => (0, 0),
    }
}

async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

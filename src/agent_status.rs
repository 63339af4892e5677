//! Agent status events (`type = "agent_status"`, `docs/upload.md`): so that
//! a central backend can tell a quiet shop from a dead agent or an
//! unplugged receiver, the daemon stores one at start, at a clean stop,
//! when a device's state changes, and every `[agent] status_interval_s`.
//! They go through the store like presses (ids in store order, one stream
//! per sink, exactly once by id) and are never counted as presses.
//!
//! The content is what `epm-agent status` reads from the store at that
//! moment (health by the same rules), so a backend sees what an operator
//! at the shop would see.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::event::StatusDetail;
use crate::status::{read_status, Health, Status};
use crate::store::blocking::AsyncReader;
use crate::store::{Store, StoreError, StoreHandle};

/// How often device states are compared with the last event's.
pub const DEVICE_POLL: Duration = Duration::from_secs(1);

/// Why a status event was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Start,
    Stop,
    DeviceChange,
    Periodic,
}

/// The `status` object of the event.
#[derive(Debug, Serialize)]
struct Detail<'a> {
    reason: Reason,
    version: &'static str,
    started_at: Option<&'a str>,
    health: Health,
    devices: Vec<DeviceDetail<'a>>,
    sinks: Vec<SinkDetail<'a>>,
    free_disk_bytes: Option<u64>,
    store_bytes: u64,
}

#[derive(Debug, Serialize)]
struct DeviceDetail<'a> {
    name: &'a str,
    model: &'a str,
    state: &'a str,
    presses: u64,
    bad_frames: u64,
    last_frame_at: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct SinkDetail<'a> {
    name: &'a str,
    state: &'a str,
    pending: u64,
}

/// The status object for `reason` from what `status` reads.
fn detail(status: &Status, reason: Reason) -> Result<StatusDetail, serde_json::Error> {
    let detail = Detail {
        reason,
        version: env!("CARGO_PKG_VERSION"),
        started_at: status.daemon.started_at.as_deref(),
        health: status.health,
        devices: status
            .devices
            .iter()
            .map(|device| DeviceDetail {
                name: &device.name,
                model: &device.model,
                state: device.state.as_str(),
                presses: device.presses,
                bad_frames: device.bad_frames,
                last_frame_at: device.last_frame_at.as_deref(),
            })
            .collect(),
        sinks: status
            .sinks
            .iter()
            .map(|sink| SinkDetail {
                name: &sink.name,
                state: sink.state.as_str(),
                pending: sink.pending,
            })
            .collect(),
        free_disk_bytes: status.store.free_disk_bytes,
        store_bytes: status.store.size_bytes,
    };
    StatusDetail::from_json(serde_json::to_string(&detail)?)
}

/// Each configured device's state in `status`.
fn device_states(status: &Status) -> BTreeMap<String, String> {
    status
        .devices
        .iter()
        .map(|device| (device.name.clone(), device.state.as_str().to_string()))
        .collect()
}

/// What stores the status events, with a read connection of its own
/// (opened on first use, read on the blocking pool).
pub struct Reporter {
    data_dir: PathBuf,
    reader: Option<AsyncReader>,
    store: StoreHandle,
}

impl Reporter {
    pub fn new(data_dir: PathBuf, store: StoreHandle) -> Reporter {
        Reporter {
            data_dir,
            reader: None,
            store,
        }
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Runs `query` with the reader; `None`, logged, when it fails.
    async fn read<T: Send + 'static>(
        &mut self,
        what: &str,
        query: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Option<T> {
        let reader = match &mut self.reader {
            Some(reader) => reader,
            None => match AsyncReader::open(self.data_dir.clone()).await {
                Ok(reader) => self.reader.insert(reader),
                Err(error) => {
                    tracing::warn!("cannot read {what}: {error}");
                    return None;
                }
            },
        };
        reader
            .read(query)
            .await
            .map_err(|error| tracing::warn!("cannot read {what}: {error}"))
            .ok()
    }

    /// Each configured device's state as the store has it now.
    async fn device_states(&mut self, settings: &Settings) -> Option<BTreeMap<String, String>> {
        let names: Vec<String> = settings
            .devices
            .iter()
            .map(|device| device.name.clone())
            .collect();
        self.read("device states", move |store| {
            let stored = store.device_states()?;
            // As `status` shows them: a device with no row yet is
            // disconnected (it has not opened its port).
            Ok(names
                .into_iter()
                .map(|name| {
                    let state = stored
                        .get(&name)
                        .cloned()
                        .unwrap_or_else(|| "disconnected".to_string());
                    (name, state)
                })
                .collect())
        })
        .await
    }

    /// Stores one status event for `reason` (after what is queued before
    /// it is committed, so it describes the latest state) and returns the
    /// states it saw. A status that cannot be read is logged and skipped:
    /// presses matter more than their report.
    pub async fn emit(
        &mut self,
        settings: Arc<Settings>,
        reason: Reason,
    ) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        self.store.flush().await?;
        let status = self
            .read("the agent's status for a status event", move |store| {
                read_status(&settings, store, Utc::now())
            })
            .await;
        let Some(status) = status else {
            return Ok(None);
        };
        let detail = match detail(&status, reason) {
            Ok(detail) => detail,
            Err(error) => {
                tracing::warn!("cannot encode a status event: {error}");
                return Ok(None);
            }
        };
        self.store.agent_status(detail).await?;
        tracing::debug!(?reason, health = ?status.health, "agent status event stored");
        Ok(Some(device_states(&status)))
    }
}

/// Writes the start event, then one whenever a device's state changes and
/// every `status_interval`, until `shutdown`. The stop event is the
/// supervisor's (it knows when the devices have stopped).
pub async fn run(
    mut settings: watch::Receiver<Arc<Settings>>,
    mut reporter: Reporter,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let current = settings.borrow_and_update().clone();
    let mut known = reporter
        .emit(current, Reason::Start)
        .await?
        .unwrap_or_default();
    let mut poll = tokio::time::interval(DEVICE_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_periodic = periodic_deadline(&settings.borrow());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = poll.tick() => {}
            changed = settings.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                next_periodic = periodic_deadline(&settings.borrow_and_update());
                continue;
            }
        }
        let current = settings.borrow().clone();
        let periodic_due = next_periodic.is_some_and(|at| tokio::time::Instant::now() >= at);
        let Some(states) = reporter.device_states(&current).await else {
            continue;
        };
        let reason = if states != known {
            Reason::DeviceChange
        } else if periodic_due {
            Reason::Periodic
        } else {
            continue;
        };
        if reason == Reason::Periodic {
            next_periodic = periodic_deadline(&current);
        }
        if let Some(seen) = reporter.emit(current, reason).await? {
            known = seen;
        }
    }
}

fn periodic_deadline(settings: &Settings) -> Option<tokio::time::Instant> {
    settings
        .agent
        .status_interval
        .map(|interval| tokio::time::Instant::now() + interval)
}

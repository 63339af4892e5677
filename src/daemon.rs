//! `epm-agent run`: opens the store, restores each device's duplicate
//! window and counters from it, starts the store writer, one driver task per
//! device, one delivery task per sink and the daemon heartbeat, and on the stop signal lets every task
//! finish and the writer commit what is queued before returning.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::driver::{self, Restored};
use crate::sink::{self, AgentInfo, Transport};
use crate::store::{retention, writer, Store, WriterOptions};

/// How often the daemon tells the store it is alive (read by `status`).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the agent until `shutdown` is cancelled; each message on `reloads`
/// asks it to read `config_path` again and apply what changed (SIGHUP on
/// Linux, the service's param-change control on Windows).
pub async fn serve(
    config_path: std::path::PathBuf,
    settings: Settings,
    shutdown: CancellationToken,
    reloads: tokio::sync::mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<()> {
    let _ = (config_path, reloads);
    run(settings, shutdown).await
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = Store::open_writer(&settings.agent.data_dir)?;
    tracing::info!(
        agent = %settings.agent.id,
        store = %store.path().display(),
        devices = settings.devices.len(),
        "epm-agent {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let mut restored = Vec::with_capacity(settings.devices.len());
    for device in &settings.devices {
        let window = chrono::Duration::from_std(device.model.duplicate_window())
            .context("duplicate window out of range")?;
        restored.push(Restored {
            recent: store.recent_presses(&device.name, Utc::now() - window)?,
            counters: store.device_counters(&device.name)?,
        });
    }
    // Set up every sink before starting anything: a bad CA file or proxy
    // is a configuration error, reported before the daemon runs.
    let agent = AgentInfo::new(&settings.agent);
    let mut transports = Vec::with_capacity(settings.sinks.len());
    for sink in &settings.sinks {
        transports.push(Transport::new(sink, agent.clone())?);
    }
    let (handle, writer_thread) = writer::spawn(store, WriterOptions::default())?;
    handle.daemon_started().await?;

    let mut tasks = JoinSet::new();
    for (device, restored) in settings.devices.iter().cloned().zip(restored) {
        let name = device.name.clone();
        let task = driver::run(device, handle.clone(), restored, shutdown.clone());
        tasks.spawn(async move { (name, task.await) });
    }
    for (sink, transport) in settings.sinks.iter().cloned().zip(transports) {
        let name = sink.name.clone();
        let task = sink::run(
            sink,
            transport,
            settings.agent.data_dir.clone(),
            handle.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move { (name, task.await) });
    }
    {
        let sinks = settings
            .sinks
            .iter()
            .map(|sink| sink.name.clone())
            .collect();
        let task = retention::run(
            settings.store.clone(),
            sinks,
            settings.agent.data_dir.clone(),
            handle.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move { ("housekeeping".to_string(), task.await) });
    }
    let heartbeat_handle = handle.clone();
    let heartbeat_stop = shutdown.clone();
    let heartbeat = tokio::spawn(async move {
        let mut interval = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            tokio::select! {
                _ = heartbeat_stop.cancelled() => return,
                _ = interval.tick() => {
                    if heartbeat_handle.daemon_alive().await.is_err() {
                        return;
                    }
                }
            }
        }
    });

    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((name, Err(error))) => {
                tracing::error!(task = %name, "stopped: {error}");
                failure.get_or_insert(anyhow::anyhow!("{name}: {error}"));
                shutdown.cancel();
            }
            Err(error) => {
                tracing::error!("a task panicked: {error}");
                failure.get_or_insert(anyhow::anyhow!("a task panicked: {error}"));
                shutdown.cancel();
            }
        }
    }
    // With no devices configured there is nothing to join: wait for the stop.
    shutdown.cancelled().await;
    let _ = heartbeat.await;
    let stopped = handle.daemon_stopped().await;
    drop(handle);
    // The writer commits everything queued, then ends when the last handle is gone.
    tokio::task::spawn_blocking(move || writer_thread.join())
        .await
        .context("waiting for the store writer")?
        .map_err(|_| anyhow::anyhow!("the store writer panicked"))?;
    stopped?;
    tracing::info!("stopped; everything read was committed");
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Resolves when the process is asked to stop: SIGINT or SIGTERM (Unix),
/// Ctrl-C or Ctrl-Break (Windows console).
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut terminate), Ok(mut interrupt)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
            _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C: stopping");
        }
    }
}

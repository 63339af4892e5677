//! `epm-agent run`: the supervisor. It opens the store, starts the store
//! writer, one driver task per device (restored from the store), one
//! delivery task per sink, housekeeping and the heartbeat, and tells the
//! service manager (READY, STATUS, WATCHDOG).
//!
//! On a reload it reads the configuration again: an invalid file is logged
//! and the running configuration stays; a valid one is applied by name —
//! removed or changed devices and sinks are stopped (a stopping driver
//! decodes what it has read, and its last state is committed), new or
//! changed ones started from what the store says; unchanged ones keep
//! running untouched, so their ports are never closed. On the stop signal
//! every task finishes and the writer commits what is queued before this
//! returns.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent_status::{self, Reason, Reporter};
use crate::clock::ClockWatch;
use crate::config::{self, DeviceSettings, Settings};
use crate::driver::{self, Restored};
use crate::notify;
use crate::page;
use crate::sink::{self, AgentInfo, Transport};
use crate::store::blocking::{run_blocking, AsyncReader};
use crate::store::lock::{DataDirLock, LockError};
use crate::store::{self, retention, writer, Store, StoreError, StoreHandle, WriterOptions};

/// How often the daemon tells the store it is alive (read by `status`).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// At a stop: how long storing the stop's status event, and then its
/// delivery by the sinks that are delivering, may each take.
const STOP_EVENT_WAIT: Duration = Duration::from_secs(2);

/// The configuration cannot be used as it is (its `data_dir`, the store's
/// permissions), or another agent holds the `data_dir`: `run` exits 2. The
/// message names the path once and says the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unusable(String);

/// Why the daemon cannot start, or why it stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration cannot be used as it is: `run` exits 2.
    #[error(transparent)]
    Unusable(#[from] Unusable),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] sink::SinkError),
    #[error(transparent)]
    Page(#[from] page::PageError),
    #[error("[http] token: {0}")]
    PageToken(String),
    #[error("device {device}: its duplicate window is out of range")]
    DuplicateWindow { device: String },
    /// A task stopped on a store error; the agent stops with it.
    #[error("{task}: {source}")]
    TaskFailed { task: String, source: StoreError },
    #[error("the store writer panicked")]
    WriterPanicked,
}

/// Checks that `data_dir` can hold this agent's store and takes its lock,
/// before anything is written: a problem is one clear message, and no
/// half-made store (`-wal`, `-shm`) is left behind.
fn take_data_dir(data_dir: &Path) -> Result<DataDirLock, Unusable> {
    let shown = data_dir.display();
    if std::fs::metadata(data_dir).is_ok_and(|metadata| !metadata.is_dir()) {
        return Err(Unusable(format!(
            "data_dir {shown} is a file, not a folder: set data_dir to a folder (it is created when missing)"
        )));
    }
    if let Err(StoreError::CreateDir { source, .. }) = store::create_private_dir(data_dir) {
        let hint = match source.kind() {
            std::io::ErrorKind::PermissionDenied => format!(
                " (the agent runs as {user}: create it for that user, e.g. `install -d -o {user} -m 750 {shown}`)",
                user = current_user()
            ),
            _ => io_hint(&source, data_dir),
        };
        return Err(Unusable(format!(
            "cannot create data_dir {shown}: {}{hint}",
            source.kind()
        )));
    }
    let lock = DataDirLock::acquire(data_dir).map_err(|error| match error {
        LockError::Held { .. } => Unusable(error.to_string()),
        LockError::Io { source, .. } => Unusable(format!(
            "cannot write in data_dir {shown}: {}{}",
            source.kind(),
            io_hint(&source, data_dir)
        )),
    })?;
    // SQLite would open a store it cannot write, leave -wal and -shm files
    // behind and fail with "attempt to write a readonly database".
    let database = data_dir.join(store::DATABASE_FILE);
    if database.exists() {
        if let Err(error) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&database)
        {
            return Err(Unusable(format!(
                "cannot write the store {}: {}{}",
                database.display(),
                error.kind(),
                io_hint(&error, &database)
            )));
        }
    }
    warn_if_open_to_everyone(data_dir);
    Ok(lock)
}

/// A `data_dir` made before the agent (by hand, by an older package) may
/// let every user in: the presses are the shop's customers' answers.
fn warn_if_open_to_everyone(data_dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(metadata) = std::fs::metadata(data_dir) {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o007 != 0 {
                tracing::warn!(
                    "data_dir {} is open to every user (mode {mode:04o}): `chmod 750 {}` (the service user writes, its group reads)",
                    data_dir.display(),
                    data_dir.display()
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = data_dir;
}

/// The fix for a file system error on `path`, when one is known.
fn io_hint(error: &std::io::Error, path: &Path) -> String {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied => {
            let user = current_user();
            format!(
                " (the agent runs as {user}: give it the folder, e.g. `chown -R {user} {}`)",
                path.display()
            )
        }
        std::io::ErrorKind::ReadOnlyFilesystem => {
            " (a read-only file system: choose a data_dir on a writable disk)".to_string()
        }
        std::io::ErrorKind::NotADirectory => {
            " (a file stands where a folder of the path should be)".to_string()
        }
        _ => String::new(),
    }
}

fn current_user() -> String {
    #[cfg(unix)]
    {
        let uid = nix::unistd::getuid();
        match nix::unistd::User::from_uid(uid) {
            Ok(Some(user)) => user.name,
            _ => format!("uid {uid}"),
        }
    }
    #[cfg(not(unix))]
    {
        std::env::var("USERNAME").unwrap_or_else(|_| "this user".to_string())
    }
}

/// Runs the agent until `shutdown` is cancelled, with no reloads.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let (_reload, reloads) = mpsc::unbounded_channel();
    supervise(None, settings, shutdown, reloads).await
}

/// Runs the agent until `shutdown` is cancelled; each message on `reloads`
/// asks it to read `config_path` again and apply what changed (SIGHUP on
/// Linux, the service's param-change control on Windows).
pub async fn serve(
    config_path: PathBuf,
    settings: Settings,
    shutdown: CancellationToken,
    reloads: mpsc::UnboundedReceiver<()>,
) -> Result<(), DaemonError> {
    supervise(Some(config_path), settings, shutdown, reloads).await
}

/// A task the supervisor started.
struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    /// Asks the task to stop; await the handle to know it has.
    fn cancel(self) -> JoinHandle<()> {
        self.stop.cancel();
        self.task
    }

    /// Asks the task to stop and waits until it has.
    async fn stop(self) {
        let _ = self.cancel().await;
    }
}

/// What the running tasks are, by name.
struct Supervisor {
    /// The configuration running; `None` until the first one is applied.
    settings: Option<Settings>,
    store: StoreHandle,
    shutdown: CancellationToken,
    /// Sinks stop after the rest, so the stop's status event can go out.
    sinks_shutdown: CancellationToken,
    /// The settings applied last, for the status events.
    applied: watch::Sender<Arc<Settings>>,
    /// A task that fails reports here (only a dead store makes one fail).
    failures: mpsc::UnboundedSender<(String, StoreError)>,
    devices: HashMap<String, Running>,
    sinks: HashMap<String, Running>,
    housekeeping: Option<Running>,
    page: Option<Running>,
}

async fn supervise(
    config_path: Option<PathBuf>,
    settings: Settings,
    shutdown: CancellationToken,
    mut reloads: mpsc::UnboundedReceiver<()>,
) -> Result<(), DaemonError> {
    let data_dir = settings.agent.data_dir.clone();
    // Held until this returns: one agent per data_dir.
    let _lock = take_data_dir(&data_dir)?;
    // Opening checks (and may recover) the store: seconds on a large one.
    let store = {
        let data_dir = data_dir.clone();
        run_blocking(move || Store::open_writer(&data_dir)).await?
    };
    tracing::info!(
        agent = %settings.agent.id,
        store = %store.path().display(),
        devices = settings.devices.len(),
        sinks = settings.sinks.len(),
        "epm-agent {} starting",
        env!("CARGO_PKG_VERSION")
    );
    // Sinks are built and the page's port bound before anything starts: a
    // bad CA file or proxy, a port in use or an unreadable token is a
    // configuration error, reported before the daemon runs.
    let first = plan(None, &settings);
    let prepared = prepare(&first, &settings).await?;
    let (handle, writer_thread) = writer::spawn(store, WriterOptions::default())?;
    handle.daemon_started().await?;

    let (failures, mut failed) = mpsc::unbounded_channel();
    let (applied, applied_settings) = watch::channel(Arc::new(settings.clone()));
    let mut supervisor = Supervisor {
        settings: None,
        store: handle.clone(),
        shutdown: shutdown.clone(),
        sinks_shutdown: CancellationToken::new(),
        applied,
        failures,
        devices: HashMap::new(),
        sinks: HashMap::new(),
        housekeeping: None,
        page: None,
    };
    supervisor.carry_out(first, prepared, settings).await?;
    let status_events = supervisor.spawn(
        "status events".into(),
        agent_status::run(
            applied_settings,
            Reporter::new(data_dir.clone(), handle.clone()),
            shutdown.child_token(),
        ),
    );
    let heartbeat = tokio::spawn(heartbeat(
        handle.clone(),
        data_dir.clone(),
        shutdown.clone(),
    ));
    notify::ready();

    let mut failure = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(()) = reloads.recv() => {
                if let Some(path) = &config_path {
                    supervisor.reload(path).await;
                }
            }
            Some((name, error)) = failed.recv() => {
                tracing::error!(task = %name, "stopped: {error}");
                failure = Some(DaemonError::TaskFailed { task: name, source: error });
                break;
            }
        }
    }
    notify::stopping();
    shutdown.cancel();
    let _ = status_events.await;
    supervisor
        .stop_all(Reporter::new(data_dir, handle.clone()))
        .await;
    let _ = heartbeat.await;
    let stopped = handle.daemon_stopped().await;
    drop(supervisor);
    drop(handle);
    // The writer commits everything queued, then ends when the last handle is gone.
    let lost = tokio::task::spawn_blocking(move || writer_thread.join())
        .await
        .map_err(|_| DaemonError::WriterPanicked)?
        .map_err(|_| DaemonError::WriterPanicked)?;
    stopped?;
    if lost == 0 {
        tracing::info!("stopped; everything read was committed");
    } else {
        tracing::error!("stopped; {lost} presses read could not be committed and are lost (the store could not be written)");
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// What bringing the running configuration to a new one takes, by name:
/// decided from the two configurations alone, tested as a table.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Running devices to stop: removed, or changed (started again below).
    stop_devices: Vec<String>,
    /// Devices to start: new, or changed.
    start_devices: Vec<String>,
    stop_sinks: Vec<String>,
    /// Sinks to start: new, or changed (an agent id or location change
    /// changes every sink: both go into every batch).
    start_sinks: Vec<String>,
    /// Housekeeping starts again: the store settings or the sinks it waits
    /// for changed (or nothing runs yet).
    restart_housekeeping: bool,
    /// The local page starts anew: `[http]` changed (or is set and nothing
    /// runs yet).
    restart_page: bool,
    /// … on the address the running page listens on: the new listener can
    /// only be bound once the old one is closed.
    page_keeps_address: bool,
    /// Changed settings that only a restart applies.
    at_next_start: Vec<NextStart>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NextStart {
    /// The store stays where it is open.
    DataDir,
    Log,
}

/// The plan from `running` (`None`: nothing runs yet) to `new`.
fn plan(running: Option<&Settings>, new: &Settings) -> Plan {
    let Some(old) = running else {
        return Plan {
            start_devices: new
                .devices
                .iter()
                .map(|device| device.name.clone())
                .collect(),
            start_sinks: new.sinks.iter().map(|sink| sink.name.clone()).collect(),
            restart_housekeeping: true,
            restart_page: new.http.is_some(),
            ..Plan::default()
        };
    };
    let mut plan = Plan::default();
    for device in &old.devices {
        if !new.devices.contains(device) {
            plan.stop_devices.push(device.name.clone());
        }
    }
    for device in &new.devices {
        if !old.devices.contains(device) {
            plan.start_devices.push(device.name.clone());
        }
    }
    let agent_changed = AgentInfo::new(&old.agent) != AgentInfo::new(&new.agent);
    for sink in &old.sinks {
        if agent_changed || !new.sinks.contains(sink) {
            plan.stop_sinks.push(sink.name.clone());
        }
    }
    for sink in &new.sinks {
        if agent_changed || !old.sinks.contains(sink) {
            plan.start_sinks.push(sink.name.clone());
        }
    }
    let names = |settings: &Settings| -> Vec<String> {
        settings
            .sinks
            .iter()
            .map(|sink| sink.name.clone())
            .collect()
    };
    plan.restart_housekeeping = old.store != new.store || names(old) != names(new);
    if old.agent.data_dir != new.agent.data_dir {
        plan.at_next_start.push(NextStart::DataDir);
    }
    if old.log != new.log {
        plan.at_next_start.push(NextStart::Log);
    }
    plan.restart_page = old.http != new.http;
    plan.page_keeps_address = match (&old.http, &new.http) {
        (Some(old), Some(new)) => plan.restart_page && old.listen == new.listen,
        _ => false,
    };
    plan
}

/// What the plan needs that can fail, made before anything is stopped.
struct Prepared {
    /// The sinks to start, set up (a CA file that is no certificate fails
    /// here).
    transports: HashMap<String, Transport>,
    /// Reads each started device's duplicate window and counters.
    reader: AsyncReader,
    windows: HashMap<String, chrono::Duration>,
    /// The new page's listener, when it can be bound beside the running
    /// one (a port in use or an unreadable token fails here).
    page: Option<page::Listener>,
}

async fn prepare(plan: &Plan, new: &Settings) -> Result<Prepared, DaemonError> {
    let agent = AgentInfo::new(&new.agent);
    let mut transports = HashMap::new();
    for sink in new
        .sinks
        .iter()
        .filter(|sink| plan.start_sinks.contains(&sink.name))
    {
        transports.insert(sink.name.clone(), Transport::new(sink, agent.clone())?);
    }
    let mut windows = HashMap::new();
    for device in &new.devices {
        let window = chrono::Duration::from_std(device.model.duplicate_window()).map_err(|_| {
            DaemonError::DuplicateWindow {
                device: device.name.clone(),
            }
        })?;
        windows.insert(device.name.clone(), window);
    }
    let mut page = None;
    if let (true, Some(http)) = (plan.restart_page, &new.http) {
        if plan.page_keeps_address {
            // Bound after the running page closes; its token is read now.
            crate::sink::secret::resolve(&http.token, "token").map_err(DaemonError::PageToken)?;
        } else {
            page = Some(page::Listener::bind(http).await?);
        }
    }
    Ok(Prepared {
        transports,
        reader: AsyncReader::open(new.agent.data_dir.clone()).await?,
        windows,
        page,
    })
}

impl Prepared {
    /// What `device` continues from. Whatever the store says, the device
    /// runs: without its window a repeat could count twice, which beats
    /// reading nothing.
    async fn restore(&mut self, device: &DeviceSettings) -> Restored {
        let name = device.name.clone();
        let since = Utc::now() - self.windows.get(&name).copied().unwrap_or_default();
        let restored = self
            .reader
            .read(move |store| {
                Ok(Restored {
                    recent: store.recent_presses(&name, since)?,
                    counters: store.device_counters(&name)?,
                })
            })
            .await;
        restored.unwrap_or_else(|error| {
            tracing::error!(device = %device.name, "cannot read its duplicate window and counters from the store, starting without them: {error}");
            Restored::default()
        })
    }
}

impl Supervisor {
    /// Reads the configuration again and applies it; an unusable one is
    /// logged and the running configuration stays.
    async fn reload(&mut self, path: &Path) {
        notify::reloading();
        tracing::info!(config = %path.display(), "reloading the configuration");
        let result = match config::load(path) {
            Ok(settings) => self.apply(settings).await,
            Err(error) => Err(error.into()),
        };
        match result {
            Ok(()) => notify::status("configuration reloaded"),
            Err(error) => {
                tracing::error!(
                    "the new configuration is not used, the running one stays: {error:#}"
                );
                notify::status(&format!(
                    "reload failed, running the previous configuration: {error:#}"
                ));
            }
        }
        notify::ready();
    }

    /// Brings the running tasks in line with `new`: everything that can
    /// fail is prepared before anything running is stopped, so a reload
    /// that cannot be applied leaves all running.
    async fn apply(&mut self, new: Settings) -> Result<(), DaemonError> {
        let plan = plan(self.settings.as_ref(), &new);
        let prepared = prepare(&plan, &new).await?;
        self.carry_out(plan, prepared, new).await
    }

    /// Stops, then starts, what `plan` says. Only a store that is gone
    /// fails here, and then the agent stops.
    async fn carry_out(
        &mut self,
        plan: Plan,
        mut prepared: Prepared,
        mut new: Settings,
    ) -> Result<(), DaemonError> {
        if let Some(running) = &self.settings {
            for later in &plan.at_next_start {
                match later {
                    NextStart::DataDir => {
                        tracing::warn!(
                            "data_dir changed to {}: it takes effect at the next start; the store stays {}",
                            new.agent.data_dir.display(),
                            running.agent.data_dir.display()
                        );
                        new.agent.data_dir = running.agent.data_dir.clone();
                    }
                    NextStart::Log => {
                        tracing::warn!("[log] settings take effect at the next start")
                    }
                }
            }
        }

        // Stop first what goes away or changes, so a changed device's port
        // is free and its last state committed before it starts again.
        let mut stopping = Vec::new();
        for name in &plan.stop_devices {
            if let Some(running) = self.devices.remove(name) {
                tracing::info!(device = %name, "stopping (removed or changed)");
                stopping.push(running.cancel());
            }
        }
        for name in &plan.stop_sinks {
            if let Some(running) = self.sinks.remove(name) {
                tracing::info!(sink = %name, "stopping (removed or changed)");
                stopping.push(running.cancel());
            }
        }
        futures_util::future::join_all(stopping).await;
        self.store.flush().await?;

        for name in &plan.start_devices {
            let Some(device) = new.devices.iter().find(|device| &device.name == name) else {
                continue;
            };
            let restored = prepared.restore(device).await;
            let stop = self.shutdown.child_token();
            let task = driver::run(device.clone(), self.store.clone(), restored, stop.clone());
            self.devices.insert(
                device.name.clone(),
                Running {
                    task: self.spawn(format!("device {}", device.name), task),
                    stop,
                },
            );
        }
        for sink in &new.sinks {
            let Some(transport) = prepared.transports.remove(&sink.name) else {
                continue; // unchanged and running
            };
            let stop = self.sinks_shutdown.child_token();
            let task = sink::run(
                sink.clone(),
                transport,
                new.agent.data_dir.clone(),
                self.store.clone(),
                stop.clone(),
            );
            self.sinks.insert(
                sink.name.clone(),
                Running {
                    task: self.spawn(format!("sink {}", sink.name), task),
                    stop,
                },
            );
        }

        if plan.restart_housekeeping {
            if let Some(running) = self.housekeeping.take() {
                running.stop().await;
            }
            let sink_names: Vec<String> = new.sinks.iter().map(|sink| sink.name.clone()).collect();
            let stop = self.shutdown.child_token();
            let task = retention::run(
                new.store.clone(),
                sink_names,
                new.agent.data_dir.clone(),
                self.store.clone(),
                stop.clone(),
            );
            self.housekeeping = Some(Running {
                task: self.spawn("housekeeping".into(), task),
                stop,
            });
        }
        tracing::info!(
            devices = self.devices.len(),
            sinks = self.sinks.len(),
            "configuration applied"
        );
        self.applied.send_replace(Arc::new(new.clone()));
        if plan.restart_page {
            self.restart_page(&new, prepared.page.take()).await;
        }
        self.settings = Some(new);
        Ok(())
    }

    /// Stops the running page, if any, and serves `new`'s on `listener`
    /// (bound in `prepare`), or binds it now on the address just freed.
    async fn restart_page(&mut self, new: &Settings, listener: Option<page::Listener>) {
        if let Some(running) = self.page.take() {
            running.stop().await;
        }
        let listener = match (listener, &new.http) {
            (Some(listener), _) => listener,
            (None, Some(http)) => match page::Listener::bind(http).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::error!("the local page is off until the next reload: {error}");
                    return;
                }
            },
            (None, None) => {
                tracing::info!("the local page is off ([http] removed)");
                return;
            }
        };
        let stop = self.shutdown.child_token();
        let task = tokio::spawn(page::serve(
            listener,
            self.applied.subscribe(),
            self.store.clone(),
            stop.clone(),
        ));
        self.page = Some(Running { task, stop });
    }

    fn spawn(
        &self,
        name: String,
        task: impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static,
    ) -> JoinHandle<()> {
        let failures = self.failures.clone();
        tokio::spawn(async move {
            if let Err(error) = task.await {
                let _ = failures.send((name, error));
            }
        })
    }

    /// Stops the devices (their last state is committed), stores the
    /// stop's status event and gives the sinks that are delivering a
    /// moment to send it, then stops the sinks.
    async fn stop_all(&mut self, mut reporter: Reporter) {
        if let Some(page) = self.page.take() {
            // It holds a store handle: the writer ends only after it.
            page.stop().await;
        }
        let devices = self.devices.drain().map(|(_, running)| running.cancel());
        futures_util::future::join_all(devices.collect::<Vec<_>>()).await;
        if let Some(running) = self.housekeeping.take() {
            running.stop().await;
        }
        if let Some(settings) = self.settings.clone() {
            let stored = tokio::time::timeout(
                STOP_EVENT_WAIT,
                reporter.emit(Arc::new(settings), Reason::Stop),
            );
            match stored.await {
                Ok(Ok(_)) => {
                    let data_dir = reporter.data_dir().to_path_buf();
                    drop(reporter);
                    self.wait_for_sinks(data_dir).await;
                }
                Ok(Err(error)) => tracing::warn!("the stop's status event is not stored: {error}"),
                Err(_) => tracing::warn!(
                    "the stop's status event is not stored: the store did not take it within {STOP_EVENT_WAIT:?}"
                ),
            }
        }
        self.sinks_shutdown.cancel();
        let sinks = self.sinks.drain().map(|(_, running)| running.cancel());
        futures_util::future::join_all(sinks.collect::<Vec<_>>()).await;
    }

    /// Waits (up to [`STOP_EVENT_WAIT`]) until every sink that is
    /// delivering has passed the newest event; a sink that is retrying or
    /// paused sends it at the next start.
    async fn wait_for_sinks(&self, data_dir: PathBuf) {
        let newest = *self.store.committed_seqno().borrow();
        let names: Vec<String> = self.sinks.keys().cloned().collect();
        let deadline = tokio::time::Instant::now() + STOP_EVENT_WAIT;
        let Ok(mut reader) = AsyncReader::open(data_dir).await else {
            return;
        };
        while tokio::time::Instant::now() < deadline {
            let names = names.clone();
            match reader
                .read(move |store| store.sinks_behind(&names, newest))
                .await
            {
                Ok(behind) if behind.is_empty() => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(_) => return,
            }
        }
    }
}

/// Every [`HEARTBEAT_INTERVAL`] (or half the watchdog timeout, if shorter):
/// the daemon's heartbeat is queued for the writer, and the writer thread
/// is asked how it is. Its answer resets the service manager's watchdog
/// even while the store refuses writes (a full disk): the writer is then
/// keeping every press in memory and retrying, and a restart would lose
/// those presses and free no disk. The failure goes into the service
/// STATUS line instead (and `status` turns critical: the heartbeat cannot
/// be committed). Only a writer that does not answer, stuck or gone, stops
/// the pings, so systemd restarts the agent.
async fn heartbeat(store: StoreHandle, data_dir: PathBuf, shutdown: CancellationToken) {
    let period = notify::watchdog_timeout().map_or(HEARTBEAT_INTERVAL, |timeout| {
        (timeout / 2).min(HEARTBEAT_INTERVAL)
    });
    let mut interval = tokio::time::interval(period);
    let mut reader = None;
    let origin = tokio::time::Instant::now();
    let mut clock = ClockWatch::new(Utc::now(), Duration::ZERO);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        if let Some(seconds) = clock.observe(Utc::now(), origin.elapsed()) {
            tracing::warn!(
                "the system clock jumped by {seconds:+} s; event order and ids are unaffected"
            );
            if store.daemon_clock_jump(seconds).await.is_err() {
                return;
            }
        }
        let asked = async {
            store.daemon_alive().await?;
            store.health().await
        };
        let health = tokio::select! {
            _ = shutdown.cancelled() => return,
            health = asked => health,
        };
        let Ok(health) = health else {
            tracing::error!("the store writer is gone; no more watchdog pings");
            return;
        };
        notify::watchdog();
        release_free_memory();
        if let Some(since) = health.failing_since {
            notify::status(&format!(
                "the store cannot be written since {}: {}; {} presses kept in memory, {} dropped",
                since.format("%Y-%m-%d %H:%M:%S UTC"),
                health.last_error.as_deref().unwrap_or("unknown error"),
                health.backlog,
                health.dropped
            ));
            continue;
        }
        if reader.is_none() {
            reader = AsyncReader::open(data_dir.clone()).await.ok();
        }
        if let Some(reader) = &mut reader {
            if let Ok(summary) = reader.read(summary_line).await {
                notify::status(&summary);
            }
        }
    }
}

/// Hands memory the allocator holds but no one uses back to the system:
/// glibc keeps what a burst freed (in every thread's arena) for reuse,
/// so without this a burst's peak would stay the agent's size for good.
/// Cheap when there is nothing to give back; run with each heartbeat.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `2/2 devices connected, 1234 presses; sinks: reporter ok`.
fn summary_line(store: &Store) -> Result<String, StoreError> {
    let devices = store.devices()?;
    let connected = devices
        .iter()
        .filter(|device| device.state == store::LinkState::Connected)
        .count();
    let presses: u64 = devices.iter().map(|device| device.presses).sum();
    let sinks: Vec<String> = store
        .sinks()?
        .iter()
        .map(|sink| format!("{} {}", sink.name, sink.state.as_str()))
        .collect();
    let mut line = format!(
        "{connected}/{} devices connected, {presses} presses",
        devices.len()
    );
    if !sinks.is_empty() {
        line.push_str("; sinks: ");
        line.push_str(&sinks.join(", "));
    }
    Ok(line)
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

/// Sends on `reloads` at every SIGHUP (Unix); never on other systems.
pub async fn forward_reload_signals(reloads: mpsc::UnboundedSender<()>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            tracing::error!("cannot install the SIGHUP handler; reload by restarting");
            return;
        };
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            if reloads.send(()).is_err() {
                return;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reloads;
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[agent]
id = "shop-7"
data_dir = "/var/lib/epm-agent"

[[device]]
name = "cashdesk"
model = "prolan-202"
port = "/dev/ttyUSB0"
question = "recommend"

[[device]]
name = "entrance"
model = "prolan-501"
port = "/dev/ttyACM0"

[[sink]]
name = "reporter"
kind = "http"
url = "https://reports.example.com/v1/events"

[[sink]]
name = "archive"
kind = "file"
path = "/var/lib/epm-agent/export"
"#;

    fn settings(text: &str) -> Settings {
        config::parse(text, Path::new("/etc/epm-agent/epm-agent.toml"))
            .unwrap_or_else(|error| panic!("{error}\n{text}"))
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    /// The expected plan, as lists of names.
    struct Expected<'a> {
        stop_devices: &'a [&'a str],
        start_devices: &'a [&'a str],
        stop_sinks: &'a [&'a str],
        start_sinks: &'a [&'a str],
        restart_housekeeping: bool,
        restart_page: bool,
        page_keeps_address: bool,
        at_next_start: &'a [NextStart],
    }

    const NOTHING: Expected<'static> = Expected {
        stop_devices: &[],
        start_devices: &[],
        stop_sinks: &[],
        start_sinks: &[],
        restart_housekeeping: false,
        restart_page: false,
        page_keeps_address: false,
        at_next_start: &[],
    };

    #[test]
    fn the_reload_plan_touches_only_what_changed() {
        let cases: &[(&str, String, Expected)] = &[
            ("unchanged", BASE.to_string(), NOTHING),
            (
                "a device's question changed: it restarts, alone",
                BASE.replace("question = \"recommend\"", "question = \"again?\""),
                Expected {
                    stop_devices: &["cashdesk"],
                    start_devices: &["cashdesk"],
                    ..NOTHING
                },
            ),
            (
                "a device added",
                format!("{BASE}\n[[device]]\nname = \"exit\"\nmodel = \"prolan-202\"\nport = \"/dev/ttyUSB1\"\n"),
                Expected {
                    start_devices: &["exit"],
                    ..NOTHING
                },
            ),
            (
                "a device removed",
                BASE.replace(
                    "[[device]]\nname = \"entrance\"\nmodel = \"prolan-501\"\nport = \"/dev/ttyACM0\"\n",
                    "",
                ),
                Expected {
                    stop_devices: &["entrance"],
                    ..NOTHING
                },
            ),
            (
                "a sink's url changed: it restarts; housekeeping waits for the same sinks",
                BASE.replace("reports.example.com", "reports.example.net"),
                Expected {
                    stop_sinks: &["reporter"],
                    start_sinks: &["reporter"],
                    ..NOTHING
                },
            ),
            (
                "a sink removed: housekeeping no longer waits for it",
                BASE.replace(
                    "[[sink]]\nname = \"archive\"\nkind = \"file\"\npath = \"/var/lib/epm-agent/export\"\n",
                    "",
                ),
                Expected {
                    stop_sinks: &["archive"],
                    restart_housekeeping: true,
                    ..NOTHING
                },
            ),
            (
                "the agent id changed: it is in every batch, so every sink restarts",
                BASE.replace("id = \"shop-7\"", "id = \"shop-8\""),
                Expected {
                    stop_sinks: &["reporter", "archive"],
                    start_sinks: &["reporter", "archive"],
                    ..NOTHING
                },
            ),
            (
                "retention changed: only housekeeping",
                format!("{BASE}\n[store]\nretention_days = 30\n"),
                Expected {
                    restart_housekeeping: true,
                    ..NOTHING
                },
            ),
            (
                "data_dir changed: at the next start, nothing stops",
                BASE.replace("data_dir = \"/var/lib/epm-agent\"", "data_dir = \"/srv/epm\""),
                Expected {
                    at_next_start: &[NextStart::DataDir],
                    ..NOTHING
                },
            ),
            (
                "[log] changed: at the next start",
                format!("{BASE}\n[log]\nlevel = \"debug\"\n"),
                Expected {
                    at_next_start: &[NextStart::Log],
                    ..NOTHING
                },
            ),
            (
                "[http] added: the page starts, nothing else stops",
                format!("{BASE}\n[http]\nlisten = \"127.0.0.1:8587\"\n"),
                Expected {
                    restart_page: true,
                    ..NOTHING
                },
            ),
        ];
        check_plans(BASE, cases);
    }

    #[test]
    fn a_reload_restarts_the_page_only_when_http_changed() {
        let running = format!("{BASE}\n[http]\nlisten = \"127.0.0.1:8587\"\n");
        let cases: &[(&str, String, Expected)] = &[
            ("unchanged", running.clone(), NOTHING),
            (
                "another port: the new one is bound beside the old",
                running.replace("8587", "8588"),
                Expected {
                    restart_page: true,
                    ..NOTHING
                },
            ),
            (
                "a token on the same address: bound once the old one closed",
                format!("{running}token = \"s3cret\"\n"),
                Expected {
                    restart_page: true,
                    page_keeps_address: true,
                    ..NOTHING
                },
            ),
            (
                "[http] removed: the page stops",
                BASE.to_string(),
                Expected {
                    restart_page: true,
                    ..NOTHING
                },
            ),
        ];
        check_plans(&running, cases);
    }

    fn check_plans(running: &str, cases: &[(&str, String, Expected)]) {
        let running = settings(running);
        for (what, text, expected) in cases {
            let got = plan(Some(&running), &settings(text));
            let want = Plan {
                stop_devices: names(expected.stop_devices),
                start_devices: names(expected.start_devices),
                stop_sinks: names(expected.stop_sinks),
                start_sinks: names(expected.start_sinks),
                restart_housekeeping: expected.restart_housekeeping,
                restart_page: expected.restart_page,
                page_keeps_address: expected.page_keeps_address,
                at_next_start: expected.at_next_start.to_vec(),
            };
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn the_first_plan_starts_everything() {
        let got = plan(None, &settings(BASE));
        assert_eq!(
            got,
            Plan {
                start_devices: names(&["cashdesk", "entrance"]),
                start_sinks: names(&["reporter", "archive"]),
                restart_housekeeping: true,
                ..Plan::default()
            }
        );
    }

    /// A reload that fails half-way: the changed sink cannot be set up, so
    /// preparing fails, and preparing comes before anything is stopped.
    #[tokio::test]
    async fn a_sink_that_cannot_be_set_up_fails_the_preparation() {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let not_pem = folder.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate").expect("write");
        let text = BASE
            .replace(
                "/var/lib/epm-agent\"\n",
                &format!("{}\"\n", folder.path().display()),
            )
            .replace(
                "url = \"https://reports.example.com/v1/events\"",
                &format!(
                    "url = \"https://reports.example.com/v1/events\"\nca_file = \"{}\"",
                    not_pem.display()
                ),
            );
        let new = settings(&text);
        let running = settings(BASE);
        let plan = plan(Some(&running), &new);
        assert_eq!(
            plan.stop_sinks,
            names(&["reporter"]),
            "the changed sink would stop"
        );
        let error = prepare(&plan, &new).await.err().expect("preparing fails");
        assert!(format!("{error:#}").contains("ca.pem"), "{error:#}");
    }
}

/// The supervisor itself on a paused clock: in-process simulated receivers
/// (no port), a file sink, a reload, a stop. Minutes of agent time pass in
/// moments of real time.
#[cfg(test)]
mod supervised {
    use std::collections::HashSet;

    use super::*;

    fn config(data_dir: &Path, files: &Path, devices: &[&str]) -> String {
        let mut text = format!(
            "[agent]\nid = \"shop-1\"\ndata_dir = \"{}\"\n\n[[sink]]\nname = \"files\"\nkind = \"file\"\npath = \"{}\"\nformat = \"ndjson\"\nflush_interval_ms = 200\n",
            data_dir.display(),
            files.display()
        );
        for name in devices {
            text.push_str(&format!(
                "\n[[device]]\nname = \"{name}\"\nmodel = \"simulator\"\nsim_remotes = 3\nsim_presses_per_min = 120\n"
            ));
        }
        text
    }

    /// Every line of the sink's day files: (type, id).
    fn written(files: &Path) -> Vec<(String, String)> {
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(files).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            for line in text.lines() {
                let value: serde_json::Value = serde_json::from_str(line).expect("an ndjson line");
                lines.push((
                    value["type"].as_str().unwrap_or_default().to_string(),
                    value["id"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        lines
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_adds_a_device_and_a_restart_delivers_what_the_stop_left() {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let data_dir = folder.path().join("data");
        let files = folder.path().join("files");
        let path = folder.path().join("epm-agent.toml");
        std::fs::write(&path, config(&data_dir, &files, &["entrance"])).expect("write");
        let settings = config::load(&path).expect("the configuration");
        let shutdown = CancellationToken::new();
        let (reload, reloads) = mpsc::unbounded_channel();
        let agent = tokio::spawn(serve(path.clone(), settings, shutdown.clone(), reloads));

        // The paused clock jumps whenever every task waits, also on the
        // store's threads: wait for what happened, not for a time.
        let presses_of = |device: &'static str| {
            let data_dir = data_dir.clone();
            move || {
                Store::open_reader(&data_dir)
                    .and_then(|store| store.presses_per_device())
                    .map(|counts| {
                        counts
                            .into_iter()
                            .find(|(name, _)| name == device)
                            .map_or(0, |(_, presses)| presses)
                    })
                    .unwrap_or(0)
            }
        };
        let wait_for = |count: u64, presses: Box<dyn Fn() -> u64>| async move {
            for _ in 0..100_000 {
                if presses() >= count {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("fewer than {count} presses");
        };
        wait_for(20, Box::new(presses_of("entrance"))).await;
        std::fs::write(&path, config(&data_dir, &files, &["entrance", "exit"])).expect("write");
        reload.send(()).expect("the supervisor listens");
        wait_for(20, Box::new(presses_of("exit"))).await;
        shutdown.cancel();
        agent.await.expect("the supervisor").expect("a clean stop");

        // The stop gave the sink its moment (on this clock an instant); what
        // it had written is exactly what its cursor passed.
        let store = Store::open_reader(&data_dir).expect("the store");
        let cursor = store
            .sink_cursor("files")
            .expect("the cursor")
            .delivered_seqno;
        let passed = store.events_between(1, cursor).expect("events").len();
        assert_eq!(
            written(&files).len(),
            passed,
            "the sink wrote what its cursor passed"
        );

        // A restart with no devices delivers the rest.
        std::fs::write(&path, config(&data_dir, &files, &[])).expect("write");
        let settings = config::load(&path).expect("the configuration");
        let shutdown = CancellationToken::new();
        let (_reload, reloads) = mpsc::unbounded_channel();
        let agent = tokio::spawn(serve(path.clone(), settings, shutdown.clone(), reloads));
        let mut caught_up = false;
        for _ in 0..100_000 {
            let store = Store::open_reader(&data_dir).expect("the store");
            let presses = store.presses_per_device().expect("counts");
            let cursor = store
                .sink_cursor("files")
                .expect("the cursor")
                .delivered_seqno;
            let total: u64 = presses.iter().map(|(_, count)| count).sum();
            if total > 0 && store.presses_after(cursor).expect("count") == 0 {
                caught_up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(caught_up, "the restarted sink delivered every press");
        shutdown.cancel();
        agent.await.expect("the supervisor").expect("a clean stop");

        let store = Store::open_reader(&data_dir).expect("the store");
        let per_device: HashMap<String, u64> = store
            .presses_per_device()
            .expect("counts")
            .into_iter()
            .collect();
        assert!(
            per_device.get("entrance").is_some_and(|&n| n >= 20),
            "{per_device:?}"
        );
        assert!(
            per_device.get("exit").is_some_and(|&n| n >= 20),
            "the device the reload added ran: {per_device:?}"
        );
        let lines = written(&files);
        let ids: HashSet<&String> = lines.iter().map(|(_, id)| id).collect();
        assert_eq!(ids.len(), lines.len(), "each event written once");
        let presses = lines.iter().filter(|(kind, _)| kind == "press").count() as u64;
        assert_eq!(
            presses,
            per_device.values().sum::<u64>(),
            "every press delivered once"
        );
        let statuses = lines
            .iter()
            .filter(|(kind, _)| kind == "agent_status")
            .count();
        // The first run's start, device change and stop at least (the
        // second run's own may still be on their way when it stops).
        assert!(statuses >= 2, "status events: {statuses}");
    }
}

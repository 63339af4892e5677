//! `epm-agent demo`: the whole pipeline on this machine, with no hardware
//! and no setup. Two simulated devices (a ProLAN-202 keypad "cashdesk" and
//! a ProLAN-501 receiver "entrance" with three remotes) speak the real wire
//! protocols on pseudo-terminals, which the agent opens as serial ports, so
//! the real port code, drivers, codecs, duplicate filter and store are at
//! work (on systems without pseudo-terminals they fall back to the
//! in-process `simulator` model). The store lives in a temporary folder;
//! one HTTP sink uploads to an in-process backend on 127.0.0.1
//! ([`backend`]). The terminal shows presses, uploads and the IEL live
//! ([`view`]).
//!
//! The demo owns only this wiring: the agent runs through [`daemon::run`]
//! with settings built here, exactly as `epm-agent run` would run it. When
//! the time is up (or on Ctrl-C) the customers stop, the demo waits until
//! every stored press is uploaded, stops the agent and prints a summary in
//! which the backend's counts must equal the store's.

pub mod backend;
pub mod view;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;

use backend::{Backend, Snapshot};
use epm_agent::config::{
    AgentSettings, DeviceSettings, HttpFormat, HttpSinkSettings, LogSettings, Model, PortSetting,
    SecretSource, Settings, SimulatorSettings, SinkKind, SinkSettings, StoreSettings,
};
use epm_agent::daemon;
use epm_agent::store::{Store, StoreError};
use view::{Painter, Progress, Style};

/// What `epm-agent demo` was asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DemoOptions {
    /// Stop after this long; `None`: at Ctrl-C / SIGTERM.
    pub duration: Option<Duration>,
    /// The backend answers about one request in five with 503.
    pub flaky: bool,
}

/// Presses counted per answer, as the loyalty index needs them: presses
/// that are not suppressed, by answer, and the suppressed ones apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub yes: u64,
    pub neutral: u64,
    pub no: u64,
    /// Not suppressed, answer neither yes, neutral nor no (or unmapped).
    pub other: u64,
    pub suppressed: u64,
}

impl Tally {
    pub fn count(&mut self, answer: Option<&str>, suppressed: bool) {
        self.add(answer, suppressed, 1);
    }

    pub fn add(&mut self, answer: Option<&str>, suppressed: bool, presses: u64) {
        let counter = match (suppressed, answer) {
            (true, _) => &mut self.suppressed,
            (false, Some("yes")) => &mut self.yes,
            (false, Some("neutral")) => &mut self.neutral,
            (false, Some("no")) => &mut self.no,
            (false, _) => &mut self.other,
        };
        *counter += presses;
    }

    /// Every press counted.
    pub fn stored(&self) -> u64 {
        self.yes + self.neutral + self.no + self.other + self.suppressed
    }

    /// IEL = 100 × (yes − no) / (yes + neutral + no), over presses that are
    /// not suppressed (`shared/spec/agent-interface.md`); `None` before the
    /// first such press.
    pub fn iel(&self) -> Option<f64> {
        let answered = self.yes + self.neutral + self.no;
        if answered == 0 {
            return None;
        }
        Some(100.0 * (self.yes as f64 - self.no as f64) / answered as f64)
    }
}

/// `+47.4`, or `n/a` when there is no answer yet.
pub fn format_iel(iel: Option<f64>) -> String {
    iel.map_or_else(|| "n/a".to_string(), |iel| format!("{iel:+.1}"))
}

/// Runs the demo until the duration is over or the process is asked to
/// stop, then prints the summary. Fails when the agent fails or when the
/// backend's counts do not end up equal to the store's. Call it before the
/// process starts any thread: it may adjust the proxy variables.
pub fn run(options: DemoOptions) -> anyhow::Result<()> {
    exempt_loopback_from_proxies();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(demo(options))
}

/// The sink's name in the settings and the store.
pub const SINK_NAME: &str = "backend";

/// After the customers stop: long enough for the last radio copies (three
/// within 200 ms) to arrive and be committed.
const SETTLE: Duration = Duration::from_millis(500);
/// How long the demo waits for the last uploads before giving up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the backend may take to finish its last answers.
const BACKEND_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Anti-spam of both devices.
const MIN_INTERVAL: Duration = Duration::from_millis(1500);

/// A device of the demo: its settings and how the header describes it.
struct DemoDevice {
    settings: DeviceSettings,
    description: String,
}

/// How the pressing phase ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Everything stored was uploaded.
    Uploaded,
    /// Uploads did not finish within [`DRAIN_TIMEOUT`].
    TimedOut,
    /// A second Ctrl-C: stopped without waiting.
    Forced,
}

/// What the store holds at the end.
struct StoreSummary {
    stored: u64,
    per_device: Vec<(String, u64)>,
    tally: Tally,
    delivered: u64,
    duplicates: u64,
}

async fn demo(options: DemoOptions) -> anyhow::Result<()> {
    let painter = Painter::for_stdout();
    let folder = tempfile::Builder::new()
        .prefix("epm-agent-demo-")
        .tempdir()
        .context("cannot create a temporary folder for the demo's store")?;
    let data_dir = folder.path().join("data");
    let (backend, notices) = Backend::start(options.flaky).await?;

    let pressing = CancellationToken::new();
    let devices_stop = CancellationToken::new();
    let devices = start_devices(&pressing, &devices_stop)?;
    let settings = demo_settings(
        data_dir.clone(),
        devices
            .iter()
            .map(|device| device.settings.clone())
            .collect(),
        backend.url(),
    );
    print_header(&painter, &devices, &data_dir, &backend, &options);

    let shutdown = CancellationToken::new();
    let mut agent = tokio::spawn(daemon::run(settings, shutdown.clone()));
    let (progress_sender, mut progress) = watch::channel(Progress::default());
    let view_stop = CancellationToken::new();
    let view = tokio::spawn(view::run(
        data_dir.clone(),
        painter,
        notices,
        progress_sender,
        view_stop.clone(),
    ));

    tokio::select! {
        _ = sleep_or_forever(options.duration) => {}
        _ = daemon::stop_signal() => {}
        joined = &mut agent => return Err(agent_ended(joined)),
    }
    pressing.cancel();
    // Let the view show what was stored before the customers stopped.
    let _ = progress.changed().await;
    println!(
        "{}",
        painter.paint(
            "── stopping: no new customers; waiting until every stored press is uploaded (Ctrl-C again stops at once)",
            Style::Dim
        )
    );
    let ending = tokio::select! {
        uploaded = wait_until_uploaded(&mut progress) => {
            if uploaded { Ending::Uploaded } else { Ending::TimedOut }
        }
        _ = daemon::stop_signal() => Ending::Forced,
        joined = &mut agent => return Err(agent_ended(joined)),
    };

    shutdown.cancel();
    let agent_result = match agent.await {
        Ok(result) => result.context("the agent failed"),
        Err(error) => Err(anyhow::anyhow!("the agent panicked: {error}")),
    };
    devices_stop.cancel();
    view_stop.cancel();
    // The view takes a last look: the final presses and uploads are shown.
    let _ = view.await;
    let backend_snapshot = match tokio::time::timeout(BACKEND_STOP_TIMEOUT, backend.stop()).await {
        Ok(stopped) => stopped.context("the demo backend failed")?,
        Err(_) => anyhow::bail!("the demo backend did not stop within {BACKEND_STOP_TIMEOUT:?}"),
    };
    agent_result?;

    let store = tokio::task::spawn_blocking(move || store_summary(&data_dir))
        .await
        .context("reading the store's summary")?
        .context("cannot read the demo's store")?;
    print_summary(&painter, &store, &backend_snapshot);
    let folder_path = folder.path().to_path_buf();
    if let Err(error) = folder.close() {
        eprintln!(
            "epm-agent: cannot remove the demo's folder {}: {error}",
            folder_path.display()
        );
    }

    let agrees = store.tally == backend_snapshot.tally && store.delivered == store.stored;
    match ending {
        Ending::Uploaded if agrees => Ok(()),
        Ending::Uploaded => anyhow::bail!(
            "the backend's counts differ from the store's although every press was uploaded"
        ),
        Ending::TimedOut => anyhow::bail!(
            "not every stored press was uploaded within {} s",
            DRAIN_TIMEOUT.as_secs()
        ),
        Ending::Forced => Ok(()),
    }
}

/// The devices of the demo on pseudo-terminals, each with its emulator
/// running on the master: the agent opens the slave as a serial port.
#[cfg(unix)]
fn start_devices(
    pressing: &CancellationToken,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<DemoDevice>> {
    use epm_agent::pty::Pty;
    use epm_agent::simulator::{self, Hardware};

    let mut devices = Vec::new();
    for (name, question, hardware, customers) in demo_hardware() {
        let pty = Pty::open().context("cannot open a pseudo-terminal for a demo device")?;
        let port = pty.slave_path().to_string_lossy().into_owned();
        let (model, description) = match &hardware {
            Hardware::Keypad { serial } => (
                Model::Prolan202,
                format!("ProLAN-202 keypad {serial} on {port}"),
            ),
            Hardware::Receiver { id, remotes } => (
                Model::Prolan501,
                format!(
                    "ProLAN-501 receiver {id} with remotes {} on {port}",
                    remotes
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            ),
        };
        tokio::spawn(simulator::run_device(
            pty,
            hardware,
            customers,
            pressing.clone(),
            stop.clone(),
        ));
        devices.push(DemoDevice {
            settings: device_settings(name, model, PortSetting::Path(port), question),
            description: format!("{description}, question \"{question}\""),
        });
    }
    Ok(devices)
}

/// Without pseudo-terminals: the in-process `simulator` model (a ProLAN-501
/// receiver on a pipe, through the real codec, filter and store).
#[cfg(not(unix))]
fn start_devices(
    _pressing: &CancellationToken,
    _stop: &CancellationToken,
) -> anyhow::Result<Vec<DemoDevice>> {
    let mut devices = Vec::new();
    for (name, question, remotes, presses_per_min) in [
        ("cashdesk", "service", 1, 20.0),
        ("entrance", "recommend", 3, 30.0),
    ] {
        let mut settings = device_settings(name, Model::Simulator, PortSetting::None, question);
        settings.simulator = SimulatorSettings {
            remotes,
            presses_per_min,
        };
        devices.push(DemoDevice {
            settings,
            description: format!(
                "simulated ProLAN-501 receiver with {remotes} remote(s), in-process (no pseudo-terminals here), question \"{question}\""
            ),
        });
    }
    Ok(devices)
}

/// Name, question, hardware and customers of each demo device.
#[cfg(unix)]
fn demo_hardware() -> Vec<(
    &'static str,
    &'static str,
    epm_agent::simulator::Hardware,
    epm_agent::simulator::Customers,
)> {
    use epm_agent::protocol::UnitId;
    use epm_agent::simulator::{Customers, Hardware};

    vec![
        (
            "cashdesk",
            "service",
            Hardware::Keypad {
                serial: UnitId(0x202A_0F31),
            },
            Customers {
                presses_per_min: 30.0,
                min_gap: Duration::from_secs(1),
                repeat_chance: 0.1,
            },
        ),
        (
            "entrance",
            "recommend",
            Hardware::Receiver {
                id: UnitId(0x5010_00A7),
                remotes: (1..=3).map(|index| UnitId(0x301A_0000 + index)).collect(),
            },
            Customers {
                presses_per_min: 60.0,
                min_gap: Duration::from_secs(1),
                repeat_chance: 0.1,
            },
        ),
    ]
}

fn device_settings(name: &str, model: Model, port: PortSetting, question: &str) -> DeviceSettings {
    let keymap = BTreeMap::from([
        (1, "yes".to_string()),
        (2, "neutral".to_string()),
        (3, "no".to_string()),
    ]);
    DeviceSettings {
        name: name.to_string(),
        model,
        port,
        baud: model.default_baud(),
        question: Some(question.to_string()),
        keymap,
        min_interval: MIN_INTERVAL,
        ack: true,
        simulator: SimulatorSettings {
            remotes: 3,
            presses_per_min: 30.0,
        },
    }
}

/// The agent's settings: built here, as `config::load` would build them
/// from a file; small batches and a short flush so uploads are seen.
fn demo_settings(data_dir: PathBuf, devices: Vec<DeviceSettings>, backend_url: &str) -> Settings {
    Settings {
        agent: AgentSettings {
            id: "demo".to_string(),
            location: Some("epm-agent demo".to_string()),
            data_dir,
            status_interval: Some(Duration::from_secs(300)),
        },
        devices,
        store: StoreSettings {
            retention: Duration::from_secs(86_400),
            max_size_bytes: 64 * 1024 * 1024,
        },
        sinks: vec![SinkSettings {
            name: SINK_NAME.to_string(),
            kind: SinkKind::Http(HttpSinkSettings {
                url: backend_url.to_string(),
                format: HttpFormat::Json,
                token: SecretSource::None,
                gzip: true,
                timeout: Duration::from_secs(5),
                proxy: None,
                ca_file: None,
            }),
            batch_size: 5,
            flush_interval: Duration::from_millis(500),
            max_backoff: Duration::from_secs(4),
            paused_retry: Duration::from_secs(4),
        }],
        http: None,
        log: LogSettings {
            level: "warn".to_string(),
            json: false,
        },
    }
}

fn print_header(
    painter: &Painter,
    devices: &[DemoDevice],
    data_dir: &Path,
    backend: &Backend,
    options: &DemoOptions,
) {
    println!(
        "{}",
        painter.paint(
            "epm-agent demo: simulated buttons → the agent's drivers and store → a local reporting backend",
            Style::Bold
        )
    );
    for device in devices {
        println!("  {:<9} {}", device.settings.name, device.description);
    }
    println!(
        "  {:<9} 1 = yes, 2 = neutral, 3 = no (4 is not mapped); a unit pressed again within {} s is kept but suppressed",
        "keys",
        MIN_INTERVAL.as_secs_f64()
    );
    println!(
        "  {:<9} {} (removed at the end)",
        "store",
        data_dir.join(epm_agent::store::DATABASE_FILE).display()
    );
    let flaky = if options.flaky {
        "; flaky: about 1 request in 5 is answered 503"
    } else {
        ""
    };
    println!(
        "  {:<9} {} (json, gzip, batches of up to 5{flaky})",
        "backend",
        backend.url()
    );
    println!(
        "  {:<9} 100 × (yes − no) / (yes + neutral + no), suppressed presses left out",
        "IEL"
    );
    match options.duration {
        Some(duration) => println!(
            "Runs for {} s; Ctrl-C stops it sooner.\n",
            duration.as_secs()
        ),
        None => println!("Runs until Ctrl-C.\n"),
    }
}

fn print_summary(painter: &Painter, store: &StoreSummary, backend: &Snapshot) {
    let per_device = store
        .per_device
        .iter()
        .map(|(device, count)| format!("{device} {count}"))
        .collect::<Vec<_>>()
        .join(", ");
    let breakdown = |tally: &Tally| {
        format!(
            "(yes {}, neutral {}, no {}; {} suppressed, {} other)",
            tally.yes, tally.neutral, tally.no, tally.suppressed, tally.other
        )
    };
    println!("\n{}", painter.paint("summary", Style::Bold));
    println!("  presses stored:      {} ({per_device})", store.stored);
    println!(
        "  delivered:           {} of {} to the backend",
        store.delivered, store.stored
    );
    println!(
        "  duplicates dropped:  {} (radio copies and repeats, recognised by the agent)",
        store.duplicates
    );
    println!(
        "  backend:             {} requests ({} answered 503), {} event copies, {} repeated copies ignored",
        backend.requests, backend.refused, backend.copies_received, backend.copies_ignored
    );
    println!(
        "  IEL at the agent:    {} {}",
        format_iel(store.tally.iel()),
        breakdown(&store.tally)
    );
    println!(
        "  IEL at the backend:  {} {}",
        format_iel(backend.tally.iel()),
        breakdown(&backend.tally)
    );
    let verdict = if store.tally == backend.tally && store.delivered == store.stored {
        painter.paint(
            "the backend agrees with the store: every press counted exactly once",
            Style::Green,
        )
    } else {
        painter.paint(
            "the backend does not hold every stored press (stopped before the last upload)",
            Style::Yellow,
        )
    };
    println!("  {verdict}");
}

fn store_summary(data_dir: &Path) -> Result<StoreSummary, StoreError> {
    let store = Store::open_reader(data_dir)?;
    let mut tally = Tally::default();
    for count in store.presses_by_answer()? {
        tally.add(count.answer.as_deref(), count.suppressed, count.presses);
    }
    let per_device: Vec<(String, u64)> = store.presses_per_device()?;
    let stored: u64 = per_device.iter().map(|(_, presses)| presses).sum();
    // Presses only: the agent's status events travel too (the stop's may
    // still be waiting for a retry when the demo ends), but are no presses.
    let cursor = store
        .sink(SINK_NAME)?
        .map_or(0, |sink| sink.delivered_seqno);
    let delivered = stored - store.presses_after(cursor)?.min(stored);
    let duplicates = store
        .devices()?
        .iter()
        .map(|device| device.duplicates)
        .sum();
    Ok(StoreSummary {
        stored,
        per_device,
        tally,
        delivered,
        duplicates,
    })
}

/// Waits until the view has seen every stored press delivered (after the
/// last presses had time to arrive); false after [`DRAIN_TIMEOUT`].
async fn wait_until_uploaded(progress: &mut watch::Receiver<Progress>) -> bool {
    tokio::time::sleep(SETTLE).await;
    let looks_before = progress.borrow().looks;
    let everything_uploaded = progress.wait_for(|progress| {
        progress.looks > looks_before
            && progress.delivered_seqno >= progress.stored_seqno
            && !progress.in_flight
    });
    matches!(
        tokio::time::timeout(DRAIN_TIMEOUT, everything_uploaded).await,
        Ok(Ok(_))
    )
}

async fn sleep_or_forever(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

/// Why the agent ended while the demo was still running.
fn agent_ended(joined: Result<Result<(), daemon::DaemonError>, JoinError>) -> anyhow::Error {
    match joined {
        Ok(Ok(())) => anyhow::anyhow!("the agent stopped on its own"),
        Ok(Err(error)) => anyhow::Error::new(error).context("the agent failed"),
        Err(error) => anyhow::anyhow!("the agent panicked: {error}"),
    }
}

/// The HTTP sink honours the proxy variables of the environment; a proxy
/// cannot reach this machine's 127.0.0.1, so when one is set the backend's
/// address is exempted. Called before the runtime starts any thread
/// (changing the environment is not safe while other threads read it).
fn exempt_loopback_from_proxies() {
    let proxied = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()));
    if !proxied {
        return;
    }
    for name in ["NO_PROXY", "no_proxy"] {
        let value = match std::env::var(name) {
            Ok(current) if !current.trim().is_empty() => format!("{current},127.0.0.1"),
            _ => "127.0.0.1".to_string(),
        };
        std::env::set_var(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iel_counts_answered_presses_that_are_not_suppressed() {
        let check = |presses: &[(Option<&str>, bool)], expected: &str| {
            let mut tally = Tally::default();
            for (answer, suppressed) in presses {
                tally.count(*answer, *suppressed);
            }
            assert_eq!(format_iel(tally.iel()), expected, "{presses:?}");
            assert_eq!(tally.stored(), presses.len() as u64);
        };
        check(&[], "n/a");
        check(&[(None, false), (Some("yes"), true)], "n/a");
        check(&[(Some("yes"), false)], "+100.0");
        check(&[(Some("no"), false)], "-100.0");
        check(&[(Some("neutral"), false)], "+0.0");
        // 100 × (2 − 1) / 4; the suppressed "no" and the unmapped key left out.
        check(
            &[
                (Some("yes"), false),
                (Some("yes"), false),
                (Some("neutral"), false),
                (Some("no"), false),
                (Some("no"), true),
                (None, false),
                (Some("9"), false),
            ],
            "+25.0",
        );
    }
}

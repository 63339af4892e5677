//! The `epm-agent` command line (`shared/spec/agent-interface.md`). `main`
//! returns an exit code; everything below returns `Result`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

mod commands;
mod demo;
mod service;

use demo::DemoOptions;
use epm_agent::config::{self, ConfigError, Settings};
use epm_agent::daemon;
use epm_agent::sink::{AgentInfo, Transport};

/// Reads ProLAN customer-feedback keypads and receivers into a durable local
/// store and uploads the presses to reporting backends.
#[derive(Parser)]
#[command(name = "epm-agent", version, about)]
struct Cli {
    /// The configuration file [default: $EPM_AGENT_CONFIG, else
    /// /etc/epm-agent/epm-agent.toml, or %ProgramData%\epm-agent\epm-agent.toml on Windows]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground until SIGINT/SIGTERM.
    Run,
    /// The whole pipeline on this machine: simulated ProLAN-202 and
    /// ProLAN-501 devices, a temporary store and a local reporting backend,
    /// shown live. Needs no configuration file and no hardware.
    Demo {
        /// Stop after this many seconds (default: at Ctrl-C).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        duration_s: Option<u64>,
        /// The backend answers about 1 request in 5 with 503: watch the
        /// retries, and still no press counted twice.
        #[arg(long)]
        flaky: bool,
    },
    /// Work with the configuration file.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// See and re-send events a backend rejected (dead letters).
    #[command(name = "deadletter")]
    DeadLetter {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// What the running (or stopped) agent is doing; exit 0 ok, 1 warning,
    /// 2 critical, 3 unknown (for Nagios, Zabbix, a Windows task).
    Status(commands::status::Args),
    /// Counts per answer and the loyalty indices (IEL, NPS) from the store.
    Report(commands::report::Args),
    /// Serial ports on this machine, with USB ids; `--probe` finds ProLAN hardware.
    Devices(commands::devices::Args),
    /// Follow new presses as they are stored.
    Tail(commands::tail::Args),
    /// Write stored events to a file or stdout.
    Export(commands::export::Args),
    /// The Windows service: install, uninstall, start, stop, reload, status.
    Service {
        #[command(subcommand)]
        action: service::ServiceAction,
    },
    /// Shell completions on stdout (the package's files are made with it).
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The manual page (roff) on stdout (the package's file is made with it).
    #[command(hide = true)]
    Man,
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// Show the events a backend rejected on their own.
    List {
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send them again (the running agent does it within seconds).
    Retry {
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the file: exit 0, or name the line and key that is wrong and exit 2.
    Check,
}

/// What the manual page says beyond the options clap knows (roff).
const MAN_PAGE_END: &str = r#".SH "EXIT STATUS"
\fBstatus\fR: 0 ok, 1 warning, 2 critical, 3 unknown (the configuration or the store cannot be read).
.br
\fBrun\fR and \fBconfig check\fR: 2 when the configuration, the data_dir or the store's permissions cannot be used.
.br
Every other command: 0 done, 2 the configuration cannot be used, 1 any other error.
.SH ENVIRONMENT
.TP
\fBEPM_AGENT_CONFIG\fR
The configuration file when \fB\-\-config\fR is not given.
.TP
\fBRUST_LOG\fR
A log filter that overrides \fB[log] level\fR.
.TP
\fBNO_COLOR\fR
Set to anything but the empty string: no colour in tables, the demo's view or the log.
.PP
Any string value of the configuration may use \fB${NAME}\fR or \fB${NAME:\-default}\fR: the environment variable, replaced when the file is loaded.
.SH FILES
.TP
\fI/etc/epm\-agent/epm\-agent.toml\fR
The configuration (every key: \fI/usr/share/doc/epm\-agent/examples/epm\-agent.toml\fR).
.TP
\fI/var/lib/epm\-agent/epm\-agent.db\fR
The store (with \fI\-wal\fR and \fI\-shm\fR); members of the group \fBepm\-agent\fR may read it, for \fBstatus\fR.
.SH "SEE ALSO"
\fI/usr/share/doc/epm\-agent/docs/install.md\fR, \fI/usr/share/doc/epm\-agent/docs/interface.md\fR
"#;

/// Exit code of a configuration that cannot be used (`config check`, `run`).
const EXIT_BAD_CONFIG: u8 = 2;
/// `status` could not tell (monitoring-plugin convention).
const EXIT_UNKNOWN: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = config::config_path(cli.config.as_deref());
    match cli.command {
        Command::Config {
            action: ConfigAction::Check,
        } => match config::load(&config_path) {
            Ok(settings) => {
                for warning in config::warnings(&settings, &config_path) {
                    eprintln!("epm-agent: warning: {warning}");
                }
                // What can be checked without the network: CA files, proxy
                // URLs, whether a token can be read here.
                let agent = AgentInfo::new(&settings.agent);
                for sink in &settings.sinks {
                    match Transport::new(sink, agent.clone()) {
                        Ok(transport) => {
                            if let Some(warning) = transport.setup_warning() {
                                eprintln!("epm-agent: warning: sink {}: {warning}", sink.name);
                            }
                        }
                        Err(error) => {
                            eprintln!("epm-agent: {}: {error}", config_path.display());
                            return ExitCode::from(EXIT_BAD_CONFIG);
                        }
                    }
                }
                if let Some(http) = &settings.http {
                    if let Err(error) = epm_agent::sink::secret::resolve(&http.token, "token") {
                        eprintln!("epm-agent: warning: [http] {error}");
                    }
                }
                println!(
                    "{}: ok ({} device{}, {} sink{}, data in {})",
                    config_path.display(),
                    settings.devices.len(),
                    plural(settings.devices.len()),
                    settings.sinks.len(),
                    plural(settings.sinks.len()),
                    settings.agent.data_dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(error) => config_failure(&error),
        },
        Command::DeadLetter { action } => {
            let settings = match config::load(&config_path) {
                Ok(settings) => settings,
                Err(error) => return config_failure(&error),
            };
            let mut out = std::io::stdout().lock();
            let result = match action {
                DeadLetterAction::List { sink, json } => {
                    commands::deadletter::list(&settings, sink.as_deref(), json, &mut out)
                }
                DeadLetterAction::Retry { sink } => {
                    commands::deadletter::retry(&settings, sink.as_deref(), &mut out)
                }
            };
            command_result(result)
        }
        Command::Status(args) => {
            let settings = match config::load(&config_path) {
                Ok(settings) => settings,
                Err(error) => {
                    eprintln!("epm-agent: {error}");
                    return ExitCode::from(EXIT_UNKNOWN);
                }
            };
            match commands::status::run(&settings, &args, &mut std::io::stdout().lock()) {
                Ok(code) => ExitCode::from(code),
                Err(error) if commands::is_broken_pipe(&error) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("epm-agent: {error:#}");
                    ExitCode::from(EXIT_UNKNOWN)
                }
            }
        }
        Command::Report(args) => with_settings(&config_path, |settings, out| {
            commands::report::run(settings, &args, out)
        }),
        Command::Tail(args) => with_settings(&config_path, |settings, out| {
            commands::tail::run(settings, &args, out)
        }),
        Command::Export(args) => with_settings(&config_path, |settings, out| {
            commands::export::run(settings, &args, out)
        }),
        Command::Devices(args) => {
            // Listing ports needs no configuration; use it when there is one.
            let settings = config::load(&config_path).ok();
            command_result(commands::devices::run(
                settings.as_ref(),
                &args,
                &mut std::io::stdout().lock(),
            ))
        }
        Command::Run => {
            let settings = match config::load(&config_path) {
                Ok(settings) => settings,
                Err(error) => return config_failure(&error),
            };
            init_logging(&settings);
            for warning in config::warnings(&settings, &config_path) {
                tracing::warn!("{warning}");
            }
            match run(config_path, settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error)
                    if matches!(
                        error.downcast_ref::<daemon::DaemonError>(),
                        Some(daemon::DaemonError::Unusable(_))
                    ) =>
                {
                    eprintln!("epm-agent: {error}");
                    ExitCode::from(EXIT_BAD_CONFIG)
                }
                Err(error) => {
                    tracing::error!("{error:#}");
                    eprintln!("epm-agent: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Service { action } => match service::run(&action, &config_path) {
            Ok(code) => ExitCode::from(code),
            Err(error) => {
                eprintln!("epm-agent: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Completions { shell } => {
            // Into memory first: `generate` panics when its writer fails.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "epm-agent", &mut script);
            let written = std::io::Write::write_all(&mut std::io::stdout().lock(), &script);
            command_result(written.map_err(anyhow::Error::from))
        }
        Command::Man => {
            let mut page = Vec::new();
            let rendered = clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map(|()| page.extend_from_slice(MAN_PAGE_END.as_bytes()))
                .and_then(|()| std::io::Write::write_all(&mut std::io::stdout().lock(), &page));
            command_result(rendered.map_err(anyhow::Error::from))
        }
        Command::Demo { duration_s, flaky } => {
            init_demo_logging();
            let options = DemoOptions {
                duration: duration_s.map(Duration::from_secs),
                flaky,
            };
            match demo::run(options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("epm-agent: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The daemon in the foreground: stops on SIGINT/SIGTERM, reloads
/// `config_path` on SIGHUP.
fn run(config_path: PathBuf, settings: Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            daemon::stop_signal().await;
            stop.cancel();
        });
        let (reload, reloads) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(daemon::forward_reload_signals(reload));
        Ok(daemon::serve(config_path, settings, shutdown, reloads).await?)
    })
}

/// Loads the configuration (exit 2 if unusable), then runs `command` with
/// stdout.
fn with_settings(
    config_path: &std::path::Path,
    command: impl FnOnce(&Settings, &mut dyn std::io::Write) -> anyhow::Result<()>,
) -> ExitCode {
    match config::load(config_path) {
        Ok(settings) => command_result(command(&settings, &mut std::io::stdout().lock())),
        Err(error) => config_failure(&error),
    }
}

fn command_result(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `epm-agent report | head`: the reader has all it wants.
        Err(error) if commands::is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("epm-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_failure(error: &ConfigError) -> ExitCode {
    eprintln!("epm-agent: {error}");
    ExitCode::from(EXIT_BAD_CONFIG)
}

/// Logs go to stderr (journald or the console); `RUST_LOG` overrides the
/// configured level.
fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log.level));
    // Colour only for a person at a terminal, not for journald or a file,
    // and not with NO_COLOR.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(commands::wants_colour(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if settings.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The demo's own view is on stdout; logs go to stderr, warnings and errors
/// only unless `RUST_LOG` says otherwise. Upload retries are shown by the
/// view, so the sink's retry warnings are left out.
fn init_demo_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,epm_agent::sink=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(commands::wants_colour(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn plural(count: usize) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

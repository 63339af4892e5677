//! Everything Windows: the `service` actions (install, uninstall, start,
//! stop, reload, status) through the service control manager, and the service
//! itself. `service run` is what the manager launches: it hands the process
//! to the manager's dispatcher, whose control handler turns Stop and
//! Shutdown into the daemon's shutdown token and ParamChange into a
//! configuration reload, while the service reports StartPending, Running,
//! StopPending (with a fresh checkpoint every second until everything read
//! is committed) and Stopped. A service has no console, so it logs to a file
//! rotated daily under `%ProgramData%\epm-agent\logs`.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use windows_service::service::{
    Service, ServiceAccess, ServiceAction as FailureAction, ServiceActionType, ServiceControl,
    ServiceControlAccept, ServiceErrorControl, ServiceExitCode, ServiceFailureActions,
    ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState, ServiceStatus,
    ServiceType,
};
use windows_service::service_control_handler::{
    self, ServiceControlHandlerResult, ServiceStatusHandle,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use super::ServiceAction;
use epm_agent::config::{self, Settings};
use epm_agent::daemon;

/// The service's name for `sc.exe`, `net start` and the registry.
pub const SERVICE_NAME: &str = "epm-agent";
const DISPLAY_NAME: &str = "EPM Agent (ProLAN feedback buttons)";
const DESCRIPTION: &str = "Reads ProLAN customer-feedback buttons on serial ports into a local \
                           store and uploads the presses to the reporting backends.";

/// Daily log files kept (two weeks); older ones are deleted at rotation.
const LOG_FILES_KEPT: usize = 14;
/// How long the manager should wait for our next report while starting or
/// stopping; stopping reports a new checkpoint every second.
const PENDING_WAIT_HINT: Duration = Duration::from_secs(5);
/// After Stop, how long the daemon may take to commit what it read and
/// return before the service stops without it. A system shutdown gives
/// services less than this (5 s to 20 s): committing takes milliseconds.
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// How long `service start|stop|uninstall` wait for the state they asked
/// for: longer than the service's own stop deadline.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(45);

// Win32 error codes the actions answer with a hint (winerror.h).
const ERROR_ACCESS_DENIED: i32 = 5;
const ERROR_SERVICE_ALREADY_RUNNING: i32 = 1056;
const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;
const ERROR_SERVICE_NOT_ACTIVE: i32 = 1062;
const ERROR_FAILED_SERVICE_CONTROLLER_CONNECT: i32 = 1063;
const ERROR_SERVICE_MARKED_FOR_DELETE: i32 = 1072;
const ERROR_SERVICE_EXISTS: i32 = 1073;
/// The exit code the manager shows for a service that never ran.
const ERROR_SERVICE_NEVER_STARTED: u32 = 1077;

/// Why the service stopped other than by request: its service-specific exit
/// code, shown by `service status` and `sc query epm-agent`. A non-zero exit
/// makes the manager apply the restart actions `install` set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// The daemon stopped on an error (the log says which).
    Daemon = 1,
    /// The configuration cannot be used (the log names the line and key).
    Config = 2,
    /// The log folder cannot be created or written.
    Logging = 3,
    /// The daemon had not returned `STOP_DEADLINE` after the stop request.
    StopTimeout = 4,
}

impl Failure {
    const ALL: [Failure; 4] = [
        Failure::Daemon,
        Failure::Config,
        Failure::Logging,
        Failure::StopTimeout,
    ];

    fn meaning(self) -> &'static str {
        match self {
            Failure::Daemon => "the agent stopped on an error",
            Failure::Config => "the configuration cannot be used",
            Failure::Logging => "the log folder cannot be written",
            Failure::StopTimeout => "the agent did not finish stopping in time",
        }
    }

    /// A service-specific exit code in words.
    fn describe(code: u32) -> String {
        let meaning = Failure::ALL
            .into_iter()
            .find(|failure| *failure as u32 == code)
            .map_or("unknown", Failure::meaning);
        format!("error {code}: {meaning}")
    }
}

/// The folder of the service's log files: `%ProgramData%\epm-agent\logs`,
/// beside the default configuration and store.
pub fn log_dir() -> PathBuf {
    std::env::var_os("ProgramData")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
        .join("epm-agent")
        .join("logs")
}

/// Carries out `action`; returns the exit code.
pub fn run(action: &ServiceAction, config_path: &Path) -> anyhow::Result<u8> {
    match action {
        ServiceAction::Install { manual } => install(config_path, *manual),
        ServiceAction::Uninstall => uninstall(),
        ServiceAction::Start => start(),
        ServiceAction::Stop => stop(),
        ServiceAction::Reload => reload(),
        ServiceAction::Status => status(),
        ServiceAction::Run => dispatch(config_path),
    }
}

fn install(config_path: &Path, manual: bool) -> anyhow::Result<u8> {
    // The service starts in C:\Windows\System32: every path it gets is absolute.
    let config_path = std::path::absolute(config_path)
        .with_context(|| format!("cannot resolve {}", config_path.display()))?;
    let settings = config::load(&config_path).map_err(|error| {
        anyhow!("{error} (fix the file, or name another with --config, then install)")
    })?;
    let executable = std::env::current_exe().context("cannot find this program's path")?;
    let manager = connect(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?;
    let info = ServiceInfo {
        name: SERVICE_NAME.into(),
        display_name: DISPLAY_NAME.into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: if manual {
            ServiceStartType::OnDemand
        } else {
            ServiceStartType::AutoStart
        },
        error_control: ServiceErrorControl::Normal,
        executable_path: executable.clone(),
        launch_arguments: vec![
            "service".into(),
            "run".into(),
            "--config".into(),
            config_path.clone().into_os_string(),
        ],
        dependencies: Vec::new(),
        // LocalSystem: may open COM ports and write under %ProgramData%.
        account_name: None,
        account_password: None,
    };
    let service = manager
        .create_service(&info, ServiceAccess::CHANGE_CONFIG)
        .map_err(|error| scm_error("cannot install the service", error))?;
    service
        .set_description(DESCRIPTION)
        .map_err(|error| scm_error("cannot describe the service", error))?;
    // Restarted 5 s after a crash or an error exit, then 30 s, then every
    // minute; the count starts again after a day without failure.
    let restart = |seconds| FailureAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(seconds),
    };
    let restarts = ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 60 * 60)),
        reboot_msg: None,
        command: None,
        actions: Some(vec![restart(5), restart(30), restart(60)]),
    };
    if let Err(error) = service.update_failure_actions(restarts) {
        eprintln!(
            "epm-agent: warning: {}",
            scm_error("the service will not be restarted after a failure", error)
        );
    } else if let Err(error) = service.set_failure_actions_on_non_crash_failures(true) {
        eprintln!(
            "epm-agent: warning: {}",
            scm_error(
                "the service will be restarted after a crash, not after an error exit",
                error
            )
        );
    }
    println!(
        "installed service {SERVICE_NAME} ({}, as LocalSystem)",
        if manual {
            "started by `epm-agent service start`"
        } else {
            "started at boot"
        }
    );
    println!(
        "  command  \"{}\" service run --config \"{}\"",
        executable.display(),
        config_path.display()
    );
    println!(
        "  config   {} device{}, {} sink{}, data in {}",
        settings.devices.len(),
        plural(settings.devices.len()),
        settings.sinks.len(),
        plural(settings.sinks.len()),
        settings.agent.data_dir.display()
    );
    println!("  logs     {}", log_dir().display());
    println!("start it now with `epm-agent service start`");
    Ok(0)
}

fn uninstall() -> anyhow::Result<u8> {
    let manager = connect(ServiceManagerAccess::CONNECT)?;
    let service = open(
        &manager,
        ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
    )?;
    if query(&service)?.current_state != ServiceState::Stopped {
        if let Err(error) = stop_and_wait(&service) {
            eprintln!(
                "epm-agent: warning: {error:#}; removing it anyway: it goes once it has stopped, \
                 at the latest when Windows restarts"
            );
        }
    }
    service
        .delete()
        .map_err(|error| scm_error("cannot remove the service", error))?;
    // The manager removes it once the last handle to it is closed: ours
    // now, or that of a program watching it (services.msc).
    drop(service);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match manager.open_service(SERVICE_NAME, ServiceAccess::QUERY_STATUS) {
            Err(error) if error_code(&error) == Some(ERROR_SERVICE_DOES_NOT_EXIST) => {
                println!(
                    "removed service {SERVICE_NAME} (the configuration, the store and the logs stay)"
                );
                return Ok(0);
            }
            _ if Instant::now() >= deadline => {
                println!(
                    "service {SERVICE_NAME} is marked for removal: it goes when the programs that \
                     have it open (services.msc) close it"
                );
                return Ok(0);
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn start() -> anyhow::Result<u8> {
    let manager = connect(ServiceManagerAccess::CONNECT)?;
    let service = open(&manager, ServiceAccess::START | ServiceAccess::QUERY_STATUS)?;
    match service.start::<&OsStr>(&[]) {
        Ok(()) => {}
        Err(error) if error_code(&error) == Some(ERROR_SERVICE_ALREADY_RUNNING) => {
            println!("service {SERVICE_NAME} is already running");
            return Ok(0);
        }
        Err(error) => return Err(scm_error("cannot start the service", error)),
    }
    let status = wait_for(&service, |state| state != ServiceState::StartPending)?;
    match status.current_state {
        ServiceState::Running => {
            println!("service {SERVICE_NAME} is running{}", pid(&status));
            Ok(0)
        }
        ServiceState::Stopped => bail!(
            "service {SERVICE_NAME} stopped while starting ({}); its log is in {}",
            exit_description(status.exit_code).unwrap_or_else(|| "no error given".to_string()),
            log_dir().display()
        ),
        other => bail!(
            "service {SERVICE_NAME} is still {} after {} s; its log is in {}",
            state_name(other),
            CONTROL_TIMEOUT.as_secs(),
            log_dir().display()
        ),
    }
}

fn stop() -> anyhow::Result<u8> {
    let manager = connect(ServiceManagerAccess::CONNECT)?;
    let service = open(&manager, ServiceAccess::STOP | ServiceAccess::QUERY_STATUS)?;
    let status = stop_and_wait(&service)?;
    match exit_description(status.exit_code) {
        Some(exit) => println!("service {SERVICE_NAME} stopped ({exit})"),
        None => println!("service {SERVICE_NAME} stopped; everything read was committed"),
    }
    Ok(0)
}

fn reload() -> anyhow::Result<u8> {
    let manager = connect(ServiceManagerAccess::CONNECT)?;
    // Sending the param-change control needs PAUSE_CONTINUE access.
    let service = open(
        &manager,
        ServiceAccess::PAUSE_CONTINUE | ServiceAccess::QUERY_STATUS,
    )?;
    send_param_change(&service)
        .map_err(|error| scm_error("cannot ask the service to reload", error))?;
    println!(
        "service {SERVICE_NAME} is reading its configuration again (its log in {} says what changed)",
        log_dir().display()
    );
    Ok(0)
}

fn status() -> anyhow::Result<u8> {
    let manager = connect(ServiceManagerAccess::CONNECT)?;
    let service = match manager.open_service(
        SERVICE_NAME,
        ServiceAccess::QUERY_STATUS | ServiceAccess::QUERY_CONFIG,
    ) {
        Ok(service) => service,
        Err(error) if error_code(&error) == Some(ERROR_SERVICE_DOES_NOT_EXIST) => {
            println!("service {SERVICE_NAME} is not installed (`epm-agent service install`)");
            return Ok(4);
        }
        Err(error) => return Err(scm_error("cannot open the service", error)),
    };
    let status = query(&service)?;
    let config = service
        .query_config()
        .map_err(|error| scm_error("cannot read the service's settings", error))?;
    println!(
        "service {SERVICE_NAME} is {}{}",
        state_name(status.current_state),
        pid(&status)
    );
    let starts = match config.start_type {
        ServiceStartType::AutoStart => "at boot",
        ServiceStartType::OnDemand => "when asked (`epm-agent service start`)",
        ServiceStartType::Disabled => "never (disabled)",
        ServiceStartType::SystemStart | ServiceStartType::BootStart => "with the system",
    };
    println!("  starts     {starts}");
    // The manager keeps the program and its arguments as one command line.
    println!("  command    {}", config.executable_path.display());
    let account = config
        .account_name
        .unwrap_or_else(|| OsString::from("LocalSystem"));
    println!("  account    {}", account.to_string_lossy());
    if let Some(exit) = exit_description(status.exit_code) {
        println!("  last exit  {exit}");
    }
    println!("  logs       {}", log_dir().display());
    Ok(if status.current_state == ServiceState::Running {
        0
    } else {
        3
    })
}

/// Asks the service to stop and waits until it has (or was not running).
fn stop_and_wait(service: &Service) -> anyhow::Result<ServiceStatus> {
    match service.stop() {
        Ok(_) => {}
        Err(error) if error_code(&error) == Some(ERROR_SERVICE_NOT_ACTIVE) => {
            return query(service);
        }
        Err(error) => return Err(scm_error("cannot stop the service", error)),
    }
    let status = wait_for(service, |state| state == ServiceState::Stopped)?;
    if status.current_state != ServiceState::Stopped {
        bail!(
            "service {SERVICE_NAME} is still {} after {} s; its log is in {}",
            state_name(status.current_state),
            CONTROL_TIMEOUT.as_secs(),
            log_dir().display()
        );
    }
    Ok(status)
}

/// Polls the service until `done(state)` or `CONTROL_TIMEOUT`; returns the
/// last status seen.
fn wait_for(
    service: &Service,
    done: impl Fn(ServiceState) -> bool,
) -> anyhow::Result<ServiceStatus> {
    let deadline = Instant::now() + CONTROL_TIMEOUT;
    loop {
        let status = query(service)?;
        if done(status.current_state) || Instant::now() >= deadline {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn connect(access: ServiceManagerAccess) -> anyhow::Result<ServiceManager> {
    ServiceManager::local_computer(None::<&str>, access)
        .map_err(|error| scm_error("cannot connect to the service manager", error))
}

fn open(manager: &ServiceManager, access: ServiceAccess) -> anyhow::Result<Service> {
    manager
        .open_service(SERVICE_NAME, access)
        .map_err(|error| scm_error("cannot open the service", error))
}

fn query(service: &Service) -> anyhow::Result<ServiceStatus> {
    service
        .query_status()
        .map_err(|error| scm_error("cannot read the service's state", error))
}

fn error_code(error: &windows_service::Error) -> Option<i32> {
    match error {
        windows_service::Error::Winapi(io) => io.raw_os_error(),
        _ => None,
    }
}

/// `doing: cause (hint)`, the cause being Windows' own message.
fn scm_error(doing: &str, error: windows_service::Error) -> anyhow::Error {
    let hint = match error_code(&error) {
        Some(ERROR_ACCESS_DENIED) => " (run it from an administrator command prompt)",
        Some(ERROR_SERVICE_DOES_NOT_EXIST) => " (install it with `epm-agent service install`)",
        Some(ERROR_SERVICE_EXISTS) => {
            " (it is installed already: `epm-agent service uninstall` first to change it)"
        }
        Some(ERROR_SERVICE_MARKED_FOR_DELETE) => {
            " (close services.msc, or restart Windows, to finish removing it)"
        }
        _ => "",
    };
    let cause = match &error {
        windows_service::Error::Winapi(io) => io.to_string(),
        other => other.to_string(),
    };
    anyhow!("{doing}: {cause}{hint}")
}

/// `ControlService(SERVICE_CONTROL_PARAMCHANGE)`: windows-service sends
/// only stop, pause, continue and user controls.
fn send_param_change(service: &Service) -> Result<(), windows_service::Error> {
    /// `SERVICE_STATUS` (winsvc.h): filled in by the call, not read here.
    #[repr(C)]
    #[derive(Default)]
    struct RawServiceStatus {
        service_type: u32,
        current_state: u32,
        controls_accepted: u32,
        win32_exit_code: u32,
        service_specific_exit_code: u32,
        check_point: u32,
        wait_hint: u32,
    }
    const SERVICE_CONTROL_PARAMCHANGE: u32 = 6;
    #[link(name = "advapi32")]
    extern "system" {
        fn ControlService(
            service: *mut std::ffi::c_void,
            control: u32,
            status: *mut RawServiceStatus,
        ) -> i32;
    }
    let mut status = RawServiceStatus::default();
    // SAFETY: the handle is open (borrowed from `service` for the call) with
    // PAUSE_CONTINUE access, and `status` is a valid SERVICE_STATUS for the
    // call to fill in.
    let succeeded = unsafe {
        ControlService(
            service.raw_handle(),
            SERVICE_CONTROL_PARAMCHANGE,
            &mut status,
        )
    };
    if succeeded == 0 {
        return Err(windows_service::Error::Winapi(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn state_name(state: ServiceState) -> &'static str {
    match state {
        ServiceState::Stopped => "stopped",
        ServiceState::StartPending => "starting",
        ServiceState::StopPending => "stopping",
        ServiceState::Running => "running",
        ServiceState::ContinuePending => "resuming",
        ServiceState::PausePending => "pausing",
        ServiceState::Paused => "paused",
    }
}

fn pid(status: &ServiceStatus) -> String {
    match status.process_id {
        Some(pid) if pid != 0 => format!(" (pid {pid})"),
        _ => String::new(),
    }
}

/// `None` for a clean exit (or none yet).
fn exit_description(exit_code: ServiceExitCode) -> Option<String> {
    match exit_code {
        ServiceExitCode::Win32(0 | ERROR_SERVICE_NEVER_STARTED) => None,
        ServiceExitCode::Win32(code) => Some(format!(
            "Windows error {code}: {}",
            std::io::Error::from_raw_os_error(code as i32)
        )),
        ServiceExitCode::ServiceSpecific(code) => Some(Failure::describe(code)),
    }
}

fn plural(count: usize) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

/// The configuration file `service run` was given. The dispatcher calls
/// `service_main` with the manager's start arguments only, so the path
/// waits here.
static CONFIG_PATH: OnceLock<PathBuf> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// `service run`: gives this thread to the manager's dispatcher, which runs
/// `service_main` on another thread and returns once the service stopped.
fn dispatch(config_path: &Path) -> anyhow::Result<u8> {
    let config_path =
        std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    // Set once per process: this is the only writer.
    let _ = CONFIG_PATH.set(config_path);
    match service_dispatcher::start(SERVICE_NAME, ffi_service_main) {
        Ok(()) => Ok(0),
        Err(error) if error_code(&error) == Some(ERROR_FAILED_SERVICE_CONTROLLER_CONNECT) => bail!(
            "`service run` is started by the Windows service manager, not from a console: \
             `epm-agent service start` starts the installed service, `epm-agent run` runs the \
             agent in this console"
        ),
        Err(error) => Err(scm_error(
            "cannot connect to the service manager's dispatcher",
            error,
        )),
    }
}

/// The service's life, on the dispatcher's thread: register the control
/// handler, report, run the daemon, report how it ended.
fn service_main(_arguments: Vec<OsString>) {
    let config_path = CONFIG_PATH
        .get()
        .cloned()
        .unwrap_or_else(|| config::config_path(None));
    let shutdown = CancellationToken::new();
    let (reload_sender, reloads) = tokio::sync::mpsc::unbounded_channel();
    let handler = {
        let shutdown = shutdown.clone();
        // Runs on the dispatcher's thread and must answer at once: it only
        // signals; the daemon's side reports the state changes.
        move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                tracing::info!("service manager: {control:?}: stopping");
                shutdown.cancel();
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::ParamChange => {
                tracing::info!("service manager: parameters changed: reloading the configuration");
                // Closed only once the daemon has returned: nothing to reload then.
                let _ = reload_sender.send(());
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        }
    };
    // Without a status handle nothing can be reported: the manager gives
    // up on the start by itself.
    let Ok(handle) = service_control_handler::register(SERVICE_NAME, handler) else {
        return;
    };
    let reporter = StatusReporter {
        handle,
        checkpoint: AtomicU32::new(0),
    };
    reporter.pending(ServiceState::StartPending);
    let outcome = serve(config_path, &reporter, shutdown, reloads);
    match outcome {
        Ok(()) => tracing::info!("service stopped"),
        Err(failure) => tracing::error!("service stopped: {}", failure.meaning()),
    }
    reporter.stopped(outcome);
}

/// Loads the configuration, starts logging, and runs the daemon until it
/// returns.
fn serve(
    config_path: PathBuf,
    reporter: &StatusReporter,
    shutdown: CancellationToken,
    reloads: UnboundedReceiver<()>,
) -> Result<(), Failure> {
    let loaded = config::load(&config_path);
    let (level, json) = match &loaded {
        Ok(settings) => (settings.log.level.as_str(), settings.log.json),
        Err(_) => ("info", false),
    };
    init_file_logging(level, json).map_err(|_| Failure::Logging)?;
    let settings = loaded.map_err(|error| {
        tracing::error!("{error}");
        Failure::Config
    })?;
    tracing::info!(config = %config_path.display(), "service starting");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| {
            tracing::error!("cannot start the async runtime: {error}");
            Failure::Daemon
        })?;
    let outcome = runtime.block_on(supervise(
        config_path,
        settings,
        reporter,
        shutdown,
        reloads,
    ));
    // After a missed stop deadline the store writer may still hold a
    // blocking thread: do not wait for it.
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome
}

/// Reports Running, then, once a stop is asked for, StopPending every
/// second until the daemon has committed everything and returned.
async fn supervise(
    config_path: PathBuf,
    settings: Settings,
    reporter: &StatusReporter,
    shutdown: CancellationToken,
    reloads: UnboundedReceiver<()>,
) -> Result<(), Failure> {
    let daemon = daemon::serve(config_path, settings, shutdown.clone(), reloads);
    tokio::pin!(daemon);
    reporter.running();
    let result = tokio::select! {
        result = &mut daemon => result,
        () = shutdown.cancelled() => {
            let deadline = tokio::time::sleep(STOP_DEADLINE);
            tokio::pin!(deadline);
            let mut progress = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    result = &mut daemon => break result,
                    _ = progress.tick() => reporter.pending(ServiceState::StopPending),
                    () = &mut deadline => {
                        tracing::error!(
                            "still stopping after {} s: stopping without waiting any longer",
                            STOP_DEADLINE.as_secs()
                        );
                        return Err(Failure::StopTimeout);
                    }
                }
            }
        }
    };
    result.map_err(|error| {
        tracing::error!("{error:#}");
        Failure::Daemon
    })
}

/// Logs go to `log_dir()`, one file a day (`epm-agent.YYYY-MM-DD.log`,
/// UTC), written as each line is logged so nothing waits in a buffer when
/// the service stops. `RUST_LOG` overrides the configured level.
fn init_file_logging(level: &str, json: bool) -> anyhow::Result<()> {
    let dir = log_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let appender = RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix("epm-agent")
        .filename_suffix("log")
        .max_log_files(LOG_FILES_KEPT)
        .build(&dir)
        .with_context(|| format!("cannot write logs in {}", dir.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(appender);
    let installed = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    installed.map_err(|error| anyhow!("cannot start logging: {error}"))
}

/// Tells the manager the service's state; a pending state carries a new
/// checkpoint each time, so the manager sees progress.
struct StatusReporter {
    handle: ServiceStatusHandle,
    checkpoint: AtomicU32,
}

impl StatusReporter {
    fn pending(&self, state: ServiceState) {
        let checkpoint = self.checkpoint.fetch_add(1, Ordering::Relaxed) + 1;
        self.report(
            state,
            ServiceControlAccept::empty(),
            ServiceExitCode::Win32(0),
            checkpoint,
            PENDING_WAIT_HINT,
        );
    }

    fn running(&self) {
        self.report(
            ServiceState::Running,
            ServiceControlAccept::STOP
                | ServiceControlAccept::SHUTDOWN
                | ServiceControlAccept::PARAM_CHANGE,
            ServiceExitCode::Win32(0),
            0,
            Duration::ZERO,
        );
    }

    fn stopped(&self, outcome: Result<(), Failure>) {
        let exit_code = match outcome {
            Ok(()) => ServiceExitCode::Win32(0),
            Err(failure) => ServiceExitCode::ServiceSpecific(failure as u32),
        };
        self.report(
            ServiceState::Stopped,
            ServiceControlAccept::empty(),
            exit_code,
            0,
            Duration::ZERO,
        );
    }

    fn report(
        &self,
        state: ServiceState,
        controls_accepted: ServiceControlAccept,
        exit_code: ServiceExitCode,
        checkpoint: u32,
        wait_hint: Duration,
    ) {
        let status = ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted,
            exit_code,
            checkpoint,
            wait_hint,
            process_id: None,
        };
        if let Err(error) = self.handle.set_service_status(status) {
            tracing::warn!(
                "cannot tell the service manager the service is {}: {}",
                state_name(state),
                scm_error("SetServiceStatus", error)
            );
        }
    }
}

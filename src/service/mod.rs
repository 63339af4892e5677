//! `epm-agent service ...`: the agent as a Windows service. The actions are
//! parsed on every platform, so `--help` reads the same everywhere, but only
//! the Windows build carries them out (`windows.rs`, the one `cfg(windows)`
//! module: the service control manager, its control handler and the log
//! file). Elsewhere every action says to use systemd instead.

use std::path::Path;

use clap::Subcommand;

#[cfg(windows)]
pub mod windows;

/// What `epm-agent service` does. Every action but `status` needs an
/// administrator prompt.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum ServiceAction {
    /// Register the agent with the service manager as `epm-agent`, running
    /// as LocalSystem with this `--config` (checked first), started at boot
    /// and restarted after a failure.
    Install {
        /// Start only when asked (`service start`), not at boot.
        #[arg(long)]
        manual: bool,
    },
    /// Stop the service if it runs, then remove it (the store, the
    /// configuration and the logs stay).
    Uninstall,
    /// Start the installed service and wait until it runs.
    Start,
    /// Stop the service and wait until everything read is committed.
    Stop,
    /// Make the running service read its configuration again (the
    /// service manager's param-change control, as `sc control epm-agent
    /// paramchange` sends it).
    Reload,
    /// The service's state, pid, start type and command line; exit 0
    /// running, 3 not running, 4 not installed.
    Status,
    /// What the service manager launches (`epm-agent.exe service run
    /// --config FILE`); it cannot run from a console: use `epm-agent run`.
    #[command(hide = true)]
    Run,
}

/// What every action answers outside Windows.
#[cfg(not(windows))]
pub const NOT_WINDOWS: &str =
    "the service command is for Windows; on Linux use systemd (systemd/epm-agent.service)";

/// Carries out `action` for the configuration at `config_path`; returns the
/// process exit code.
pub fn run(action: &ServiceAction, config_path: &Path) -> anyhow::Result<u8> {
    #[cfg(windows)]
    {
        windows::run(action, config_path)
    }
    #[cfg(not(windows))]
    {
        let _ = (action, config_path);
        anyhow::bail!(NOT_WINDOWS)
    }
}

#[cfg(all(test, not(windows)))]
mod tests {
    use super::*;

    #[test]
    fn every_action_points_to_systemd_outside_windows() {
        let actions = [
            ServiceAction::Install { manual: false },
            ServiceAction::Uninstall,
            ServiceAction::Start,
            ServiceAction::Stop,
            ServiceAction::Reload,
            ServiceAction::Status,
            ServiceAction::Run,
        ];
        for action in actions {
            let error = run(&action, Path::new("epm-agent.toml")).unwrap_err();
            assert_eq!(error.to_string(), NOT_WINDOWS, "{action:?}");
        }
    }
}

//! Telling the service manager the truth: systemd's notify protocol
//! (READY, RELOADING, STOPPING, STATUS, WATCHDOG) on Linux, nothing
//! elsewhere. Without `NOTIFY_SOCKET` (not started by systemd) every call
//! does nothing. Errors are logged once at debug level, never fatal: the
//! agent's job is the presses, not the service manager.

use std::time::Duration;

/// The store is open and every device and sink is configured.
pub fn ready() {
    send(&[State::Ready]);
}

/// A configuration reload begins (`ready` ends it).
pub fn reloading() {
    send(&[State::Reloading]);
}

pub fn stopping() {
    send(&[State::Stopping]);
}

/// A one-line summary shown by `systemctl status`.
pub fn status(line: &str) {
    send(&[State::Status(line)]);
}

/// The main loop is healthy: reset the service manager's watchdog.
pub fn watchdog() {
    send(&[State::Watchdog]);
}

/// The service's `WatchdogSec`, when the service manager set one.
pub fn watchdog_timeout() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        sd_notify::watchdog_enabled()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // only Linux sends them
enum State<'a> {
    Ready,
    Reloading,
    Stopping,
    Status(&'a str),
    Watchdog,
}

#[cfg(target_os = "linux")]
fn send(states: &[State<'_>]) {
    use sd_notify::NotifyState;
    let states: Vec<NotifyState<'_>> = states
        .iter()
        .map(|state| match state {
            State::Ready => NotifyState::Ready,
            State::Reloading => NotifyState::Reloading,
            State::Stopping => NotifyState::Stopping,
            State::Status(line) => NotifyState::Status(line),
            State::Watchdog => NotifyState::Watchdog,
        })
        .collect();
    if let Err(error) = sd_notify::notify(&states) {
        tracing::debug!("cannot notify the service manager: {error}");
    }
}

#[cfg(not(target_os = "linux"))]
fn send(_states: &[State<'_>]) {}

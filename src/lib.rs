//! epm-agent: a data concentrator for ProLAN customer-feedback buttons.
//!
//! Devices on serial ports → codecs → drivers (duplicates, keymap,
//! anti-spam) → the SQLite write-ahead store → sinks. See ARCHITECTURE.md.
//!
//! The library holds the agent and typed operations on its store; the
//! command line (clap, what is printed, exit codes) is the binary's
//! (`src/main.rs`, `src/commands/`, `src/demo/`, `src/service/`).

pub mod agent_status;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod driver;
pub mod event;
pub mod model;
pub mod notify;
pub mod page;
pub mod port;
pub mod press_filter;
pub mod protocol;
#[cfg(unix)]
pub mod pty;
pub mod simulator;
pub mod sink;
pub mod status;
pub mod store;
#[cfg(windows)]
pub mod windows;

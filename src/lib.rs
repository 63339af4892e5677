//! epm-agent: a data concentrator for ProLAN customer-feedback buttons.
//!
//! Devices on serial ports → codecs → drivers (duplicates, keymap,
//! anti-spam) → the SQLite write-ahead store. See ARCHITECTURE.md.

pub mod agent_status;
pub mod clock;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod driver;
pub mod event;
pub mod model;
pub mod notify;
pub mod port;
pub mod press_filter;
pub mod protocol;
#[cfg(unix)]
pub mod pty;
pub mod service;
pub mod simulator;
pub mod sink;
pub mod store;

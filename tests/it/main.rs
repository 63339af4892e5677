//! Every integration test of the project, in one binary (one link instead
//! of thirty): a module per area, each with its purpose. The tests run the
//! real `epm-agent` binary against pseudo-terminals, real files, a real
//! HTTP server on 127.0.0.1 and real PostgreSQL and Mosquitto processes.
//!
//! Shared parts: `support` (emulated devices on pseudo-terminals, test
//! folders, store reads), `backend` (an HTTP backend that answers as a test
//! plans), `servers` (PostgreSQL and Mosquitto in temporary folders),
//! `codec_support` and `fuzz_checks` (codec and fuzzing checks).
//! A test that loads the whole machine takes `support::whole_machine()`;
//! the others share it, so such a test runs alone.

#[path = "../backend/mod.rs"]
mod backend;
#[path = "../codec_support/mod.rs"]
mod codec_support;
#[path = "../fuzz_checks/mod.rs"]
mod fuzz_checks;
#[path = "../servers/mod.rs"]
mod servers;
#[path = "../support/mod.rs"]
mod support;

/// `port = "auto"`: which ports are asked, and the probe that finds the device.
mod auto_port;

/// The ProLAN-202 codec against the protocol contract.
mod codec_prolan202;

/// The ProLAN-501 codec against the protocol contract.
mod codec_prolan501;

/// The configuration contract: unknown keys, located errors, defaults.
mod config;

/// A store damaged while the agent was stopped: salvage and recovery.
mod corrupt_store;

/// `kill -9` while a keypad streams: nothing acknowledged is lost.
mod crash_recovery;

/// The daemon as a process: clean stops, one agent per data_dir, unusable data_dirs.
mod daemon;

/// A device that stops reading what the agent writes is still read.
mod deaf_device;

/// HTTP delivery end to end: retries, pauses, dead letters, the contract.
mod delivery;

/// `epm-agent demo` as a user runs it.
mod demo;

/// `epm-agent devices` against emulated devices.
mod devices;

/// A store that cannot be written: the backlog, the drop count, the stop.
mod disk_full;

/// The file sink on real files: day files, fsync, formats.
mod file_sink;

/// A 30 s flood of radio frames: memory stays bounded and flat (runs alone).
mod flood;

/// The fuzzing corpus replayed, and the decoders' properties.
mod fuzz_corpus;

/// The MQTT sink against a real Mosquitto.
mod mqtt;

/// The systemd notify protocol, through a real socket.
mod notify;

/// The Debian package's inputs.
mod package;

/// The local page in a real Chromium, /health on a full disk, /metrics against the store.
mod page;

/// The whole pipeline through pseudo-terminals.
mod pipeline;

/// The PostgreSQL sink against a real PostgreSQL.
mod postgres;

/// SIGHUP reloads while presses stream.
mod reload;

/// Unplug and replug while the agent runs.
mod replug;

/// `epm-agent report` on seeded stores.
mod report;

/// Housekeeping on a real store: retention and the size cap.
mod retention;

/// The real-server harness itself.
mod servers_smoke;

/// `epm-agent status`: each health rule and its exit code.
mod status;

/// The store on real SQLite files: schema versions, permissions.
mod store;

/// `epm-agent export` and `epm-agent tail`.
mod tail_export;

/// TLS verification cannot be switched off.
mod tls;

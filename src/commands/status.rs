//! `epm-agent status` (being written this session; replaced before it ends).

use std::io::Write;

use crate::config::Settings;

/// The command's options.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Returns the exit code: 0 ok, 1 warning, 2 critical, 3 unknown.
pub fn run(_settings: &Settings, _args: &Args, _out: &mut dyn Write) -> anyhow::Result<u8> {
    anyhow::bail!("`status` is not built yet")
}

//! `epm-agent report` (being written this session; replaced before it ends).

use std::io::Write;

use crate::config::Settings;

/// The command's options.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_settings: &Settings, _args: &Args, _out: &mut dyn Write) -> anyhow::Result<()> {
    anyhow::bail!("`report` is not built yet")
}

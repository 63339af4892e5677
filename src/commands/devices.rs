//! `epm-agent devices` (being written this session; replaced before it ends).

use std::io::Write;

use crate::config::Settings;

/// The command's options.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// `settings` is `None` when there is no configuration file: listing ports
/// needs none.
pub fn run(_settings: Option<&Settings>, _args: &Args, _out: &mut dyn Write) -> anyhow::Result<()> {
    anyhow::bail!("`devices` is not built yet")
}

//! `epm-agent deadletter list|retry [--sink NAME]`: the events a backend
//! rejected on their own, and asking the agent to send them again.

use std::io::Write;

use epm_agent::config::Settings;

use super::{aligned_table, open_store, open_store_for_change};

/// Prints the dead letters (a table, or JSON lines with `json`).
pub fn list(
    settings: &Settings,
    sink: Option<&str>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    check_sink_name(settings, sink)?;
    let letters = open_store(&settings.agent.data_dir)?.dead_letters(sink)?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &letters)?;
        writeln!(out)?;
        return Ok(());
    }
    if letters.is_empty() {
        writeln!(out, "no dead letters")?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|letter| {
            vec![
                letter.sink.clone(),
                letter.event_id.clone(),
                letter
                    .status
                    .map_or("-".into(), |status| status.to_string()),
                letter.at.clone(),
                if letter.retry_requested {
                    "pending"
                } else {
                    "-"
                }
                .into(),
                letter.reason.clone(),
            ]
        })
        .collect();
    write!(
        out,
        "{}",
        aligned_table(
            &["SINK", "EVENT", "STATUS", "SINCE", "RETRY", "REASON"],
            &rows
        )
    )?;
    writeln!(
        out,
        "{} dead letter{}; `epm-agent deadletter retry` sends them again",
        letters.len(),
        if letters.len() == 1 { "" } else { "s" }
    )?;
    Ok(())
}

/// Marks the dead letters for sending again.
pub fn retry(settings: &Settings, sink: Option<&str>, out: &mut impl Write) -> anyhow::Result<()> {
    check_sink_name(settings, sink)?;
    let marked =
        open_store_for_change(&settings.agent.data_dir)?.request_dead_letter_retry(sink)?;
    if marked == 0 {
        writeln!(out, "nothing to retry: no dead letters waiting")?;
    } else {
        writeln!(
            out,
            "{marked} dead letter{} will be sent again by the running agent (or when it next starts)",
            if marked == 1 { "" } else { "s" }
        )?;
    }
    Ok(())
}

fn check_sink_name(settings: &Settings, sink: Option<&str>) -> anyhow::Result<()> {
    if let Some(name) = sink {
        if !settings
            .sinks
            .iter()
            .any(|configured| configured.name == name)
        {
            let names: Vec<&str> = settings
                .sinks
                .iter()
                .map(|sink| sink.name.as_str())
                .collect();
            anyhow::bail!(
                "no sink named \"{name}\" in the configuration (sinks: {})",
                names.join(", ")
            );
        }
    }
    Ok(())
}

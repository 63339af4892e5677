//! The operator commands that read (or slightly change) the store from the
//! command line while the daemon may be running. Each returns `Result`;
//! `main` turns it into an exit code.

pub mod chart;
pub mod deadletter;
pub mod devices;
pub mod export;
pub mod report;
pub mod status;
pub mod tail;
pub mod time_range;

use std::path::Path;

use std::io::IsTerminal;

use anyhow::Context;

use epm_agent::store::{Store, DATABASE_FILE};

/// Opens the store of `data_dir` read-only, saying what to check when there
/// is none.
pub fn open_store(data_dir: &Path) -> anyhow::Result<Store> {
    ensure_store_exists(data_dir)?;
    Ok(Store::open_reader(data_dir)?)
}

/// Opens the store of `data_dir` for a small change.
pub fn open_store_for_change(data_dir: &Path) -> anyhow::Result<Store> {
    ensure_store_exists(data_dir)?;
    Ok(Store::open_existing(data_dir)?)
}

fn ensure_store_exists(data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join(DATABASE_FILE);
    match std::fs::File::open(&path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => anyhow::bail!(
            "cannot read the store {}: permission denied ({})",
            path.display(),
            access_hint(data_dir)
        ),
        Err(error) => Err(error).with_context(|| {
            format!(
                "no store at {} (has the agent run with this configuration? is --config the right file?)",
                path.display()
            )
        }),
    }
}

/// Who may read the store: the service user and the members of the
/// `data_dir`'s group (`epm-agent` as the package installs it).
#[cfg(unix)]
fn access_hint(data_dir: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    // A group without a name (ids from another machine) goes by its number,
    // which usermod takes too; an unreachable folder by the package's name.
    let group = std::fs::metadata(data_dir).map_or_else(
        |_| "epm-agent".to_string(),
        |metadata| {
            let gid = nix::unistd::Gid::from_raw(metadata.gid());
            match nix::unistd::Group::from_gid(gid) {
                Ok(Some(group)) => group.name,
                _ => gid.to_string(),
            }
        },
    );
    format!(
        "is this user in the {group} group? `sudo usermod -aG {group} USER`, then log in again; or run it as root"
    )
}

#[cfg(not(unix))]
fn access_hint(_data_dir: &Path) -> String {
    "run it as an administrator, or as the service's account".to_string()
}

/// Whether stdout is a terminal that wants colour.
pub fn stdout_wants_colour() -> bool {
    wants_colour(&std::io::stdout())
}

/// Whether a person reads `stream` and wants colour: it is a terminal and
/// `NO_COLOR` is unset or empty (no-color.org). The one rule for tables,
/// the demo's view and `run`'s log.
pub fn wants_colour(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

/// Whether `error` is a write to a closed pipe (`epm-agent tail | head`),
/// however it is wrapped: a normal end of a command writing to stdout.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let kind = if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            Some(io.kind())
        } else if let Some(json) = cause.downcast_ref::<serde_json::Error>() {
            json.io_error_kind()
        } else if let Some(csv) = cause.downcast_ref::<csv::Error>() {
            match csv.kind() {
                csv::ErrorKind::Io(io) => Some(io.kind()),
                _ => None,
            }
        } else {
            None
        };
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}

/// Pads each column to its widest cell; the last column is not padded.
pub fn aligned_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let header: Vec<String> = header.iter().map(|cell| cell.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (index, cell) in row.iter().enumerate() {
            if index == last {
                text.push_str(cell);
            } else {
                let padding = widths[index] - cell.chars().count();
                text.push_str(cell);
                text.push_str(&" ".repeat(padding + 2));
            }
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell_counting_characters_not_bytes() {
        let table = aligned_table(
            &["SINK", "REASON"],
            &[
                vec!["отчёты".into(), "HTTP 422".into()],
                vec!["r".into(), "x".into()],
            ],
        );
        assert_eq!(table, "SINK    REASON\nотчёты  HTTP 422\nr       x\n");
    }

    #[test]
    fn a_closed_pipe_is_recognised_through_the_error_chain() {
        let closed = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&closed));
        assert!(is_broken_pipe(&closed.context("writing")));
        let json = serde_json::Error::io(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&anyhow::Error::from(json)));
        let csv = csv::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&anyhow::Error::from(csv)));
        assert!(!is_broken_pipe(&anyhow::anyhow!("no store")));
    }
}

//! `epm-agent export [--since T] [--until T] [--format csv|ndjson]
//! [--output FILE]`: the stored events of a time range, to a file or to
//! stdout, in store order.
//!
//! The lines are those of the file sink (`sink/file.rs`): upload-v1 columns
//! plus `agent_id` and `location`; csv with a header line, null as an empty
//! field, `true`/`false`; ndjson one event object per line. Unlike the sink,
//! a line break inside a csv field is kept (quoted), since nothing here
//! reads files back by their last line. A csv *file* starts with a UTF-8
//! byte order mark so that Excel reads Cyrillic right; stdout gets none.
//! (csv cannot tell an empty text from a null: ndjson can.)
//!
//! The store is read in chunks inside one read snapshot, so an export of
//! any size takes little memory, and its count and rows agree while the
//! daemon goes on writing. A file is written under a temporary name in the
//! same folder and renamed over `FILE` only when complete and synced: a
//! failed or interrupted export leaves no half file (and an earlier file of
//! that name as it was). Large exports to a file show a progress bar when a
//! person is watching stderr.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Local};

use epm_agent::config::Settings;
use epm_agent::event::{CsvLine, Event, LineBreaks, NdjsonLine, CSV_HEADER, UTF8_BOM};
use epm_agent::sink::AgentInfo;
use epm_agent::store::Store;

use super::is_broken_pipe;
use super::open_store;
use super::time_range::TimeRange;

/// The command's options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// From this time on: a date (2026-11-01), a local time
    /// (2026-11-01T09:30), an RFC 3339 instant, today, yesterday, or an age
    /// (7d, 24h, 30m) [default: the oldest event]
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Up to, not including, this time (same forms as --since) [default: now]
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// csv (with a header line) or ndjson (one JSON event per line)
    /// [default: ndjson for an --output ending in .ndjson or .jsonl, else csv]
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Write to this file, replacing it only once the export is complete
    /// [default: stdout]
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Ndjson,
}

pub fn run(settings: &Settings, args: &Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let range = TimeRange::parse(args.since.as_deref(), args.until.as_deref(), Local::now())?;
    let store = open_store(&settings.agent.data_dir)?;
    let agent = AgentInfo::new(&settings.agent);
    // One snapshot for the count and every chunk (rolled back when dropped;
    // it only ever reads).
    let _snapshot = store.connection().unchecked_transaction()?;
    let selection = Selection::of(&store, range)?;
    let format = args
        .format
        .unwrap_or_else(|| format_of(args.output.as_deref()));
    let Some(path) = &args.output else {
        let mut buffered = BufWriter::new(out);
        let written = write_events(&store, &selection, format, &agent, &mut buffered, None)
            .and_then(|count| Ok(buffered.flush().map(|()| count)?));
        return match written {
            // Whoever read stdout (`| head`) has gone: a normal end.
            Err(error) if is_broken_pipe(&error) => Ok(()),
            other => other.map(|_| ()),
        };
    };
    let progress = shows_progress(std::io::stderr().is_terminal(), selection.count)
        .then(|| progress_bar(selection.count));
    let mut written = 0;
    let result = write_atomically(path, |file| {
        if format == Format::Csv {
            file.write_all(UTF8_BOM)?;
        }
        written = write_events(&store, &selection, format, &agent, file, progress.as_ref())?;
        Ok(())
    });
    if let Some(progress) = &progress {
        progress.finish_and_clear();
    }
    result?;
    writeln!(
        out,
        "exported {written} event{} to {}{}",
        if written == 1 { "" } else { "s" },
        path.display(),
        if written == 0 {
            " (none in that time range: `epm-agent tail --no-follow` shows the latest)"
        } else {
            ""
        }
    )?;
    Ok(())
}

/// Events read from the store per query.
const CHUNK: usize = 1_000;

/// Above this many events, an export to a file watched from a terminal
/// shows its progress.
const PROGRESS_ABOVE: u64 = 10_000;

/// The events of a time range: how many, and the seqnos they lie between
/// (the events in between that are outside the range, after a clock change,
/// are left out as they are read).
struct Selection {
    range: TimeRange,
    count: u64,
    first_seqno: i64,
    last_seqno: i64,
}

/// Where the lines go, in their format.
enum Lines<'a> {
    // Boxed: the csv writer carries its buffer inline.
    Csv(Box<csv::Writer<&'a mut dyn Write>>),
    Ndjson(&'a mut dyn Write),
}

impl Selection {
    fn of(store: &Store, range: TimeRange) -> anyhow::Result<Selection> {
        let (since_ms, until_ms) = range.millis();
        let span = store.event_span(since_ms, until_ms)?;
        Ok(Selection {
            range,
            count: span.count,
            first_seqno: span.first_seqno.unwrap_or(0),
            last_seqno: span.last_seqno.unwrap_or(-1),
        })
    }

    fn contains(&self, event: &Event) -> bool {
        let (since_ms, until_ms) = self.range.millis();
        // The store writes `ts` and `ts_ms` from the same instant.
        DateTime::parse_from_rfc3339(&event.ts)
            .map(|at| at.timestamp_millis())
            .is_ok_and(|at| since_ms <= at && at < until_ms)
    }
}

/// Writes the selected events (after a csv header), and returns how many.
fn write_events(
    store: &Store,
    selection: &Selection,
    format: Format,
    agent: &AgentInfo,
    out: &mut dyn Write,
    progress: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<u64> {
    let mut lines = match format {
        Format::Csv => {
            let mut csv = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(out);
            csv.write_record(CSV_HEADER.split(','))?;
            Lines::Csv(Box::new(csv))
        }
        Format::Ndjson => Lines::Ndjson(out),
    };
    let mut written = 0;
    let mut cursor = selection.first_seqno - 1;
    while cursor < selection.last_seqno {
        let events = store.events_after(cursor, CHUNK)?;
        let Some(last) = events.last() else { break };
        cursor = last.seqno;
        for stored in &events {
            if stored.seqno > selection.last_seqno || !selection.contains(&stored.event) {
                continue;
            }
            let event = &stored.event;
            match &mut lines {
                // A csv holds presses only; ndjson every event.
                Lines::Csv(csv) => match event.press() {
                    Some(press) => csv.serialize(CsvLine::new(
                        event,
                        press,
                        &agent.id,
                        agent.location.as_deref(),
                        LineBreaks::Keep,
                    ))?,
                    None => continue,
                },
                Lines::Ndjson(out) => {
                    let row = NdjsonLine {
                        event,
                        agent_id: &agent.id,
                        location: agent.location.as_deref(),
                    };
                    serde_json::to_writer(&mut **out, &row)?;
                    out.write_all(b"\n")?;
                }
            }
            written += 1;
        }
        if let Some(progress) = progress {
            progress.set_position(written);
        }
    }
    match &mut lines {
        Lines::Csv(csv) => csv.flush()?,
        Lines::Ndjson(out) => out.flush()?,
    }
    Ok(written)
}

/// The format an output file's name asks for: csv unless it ends in
/// `.ndjson` or `.jsonl`.
fn format_of(output: Option<&Path>) -> Format {
    let extension = output
        .and_then(Path::extension)
        .map(|extension| extension.to_string_lossy().to_lowercase());
    match extension.as_deref() {
        Some("ndjson" | "jsonl") => Format::Ndjson,
        _ => Format::Csv,
    }
}

/// Whether an export to a file shows a progress bar.
fn shows_progress(stderr_is_terminal: bool, events: u64) -> bool {
    stderr_is_terminal && events > PROGRESS_ABOVE
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "exporting {bar:40} {human_pos}/{human_len} events, {eta} left",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Runs `write` into a new file beside `path` and renames it to `path` once
/// it is complete and synced; on any failure the new file is removed.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".epm-agent-export-").suffix(".part");
    // What a plain create would give (the umask applies), not the 0600 of
    // a temporary file: an export is made to be handed on.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let temporary = builder.tempfile_in(folder).with_context(|| {
        format!(
            "cannot create a file in {} (does the folder exist, and may this user write there?)",
            folder.display()
        )
    })?;
    let describe = || format!("cannot write {}", temporary.path().display());
    let mut buffered = BufWriter::new(temporary.as_file());
    write(&mut buffered)?;
    buffered.flush().with_context(describe)?;
    drop(buffered);
    temporary.as_file().sync_all().with_context(describe)?;
    temporary
        .persist(path)
        .map_err(|error| error.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // The new name must survive a power cut as well as the bytes.
    #[cfg(unix)]
    std::fs::File::open(folder)
        .and_then(|folder| folder.sync_all())
        .with_context(|| format!("cannot sync folder {}", folder.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_bar_only_for_a_large_export_watched_from_a_terminal() {
        let check = |terminal: bool, events: u64, expected: bool| {
            assert_eq!(
                shows_progress(terminal, events),
                expected,
                "{terminal} {events}"
            );
        };
        check(true, 10_001, true);
        check(true, 10_000, false);
        check(false, 1_000_000, false);
    }

    #[test]
    fn the_format_follows_the_file_name_when_not_given() {
        let check = |output: Option<&str>, expected: Format| {
            assert_eq!(format_of(output.map(Path::new)), expected, "{output:?}");
        };
        check(None, Format::Csv);
        check(Some("events.csv"), Format::Csv);
        check(Some("events.NDJSON"), Format::Ndjson);
        check(Some("/tmp/events.jsonl"), Format::Ndjson);
        check(Some("events"), Format::Csv);
    }

    #[test]
    fn a_failed_export_leaves_no_file_and_the_earlier_one_as_it_was() {
        let folder = tempfile::tempdir().expect("temp dir");
        let path = folder.path().join("export.csv");
        std::fs::write(&path, "earlier\n").expect("earlier file");
        let failed = write_atomically(&path, |file| {
            file.write_all(b"half a fi")?;
            anyhow::bail!("the store went away")
        });
        assert!(failed.is_err());
        assert_eq!(
            std::fs::read_to_string(&path).ok().as_deref(),
            Some("earlier\n")
        );
        let names: Vec<_> = std::fs::read_dir(folder.path())
            .expect("list")
            .flatten()
            .map(|entry| entry.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("export.csv")]);

        write_atomically(&path, |file| Ok(file.write_all(b"new\n")?)).expect("written");
        assert_eq!(
            std::fs::read_to_string(&path).ok().as_deref(),
            Some("new\n")
        );
    }
}

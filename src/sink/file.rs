//! The file sink: every event appended as one line to a file per local day,
//! `<dir>/epm-agent-YYYY-MM-DD.csv` or `.ndjson`, for partners who collect
//! files and for Excel. It owns the line formats, the files' naming, and
//! their crash safety; it never decides what to do after a failure (that is
//! [`super::policy`]).
//!
//! Invariants:
//! - A batch is [`Outcome::Accepted`] only once every line of it has been
//!   written and synced (and the folder synced when a file was started).
//!   A failed attempt takes its bytes back, so it leaves no line behind.
//! - Lines are written in store order, i.e. in `id` order: ULIDs sort as
//!   text, so the greatest id in the folder is the last event written, and
//!   a redelivered batch (a crash between the sync and the cursor commit)
//!   writes only the events after it. No duplicate lines.
//! - Before the first write, and again after any failed write, each of the
//!   sink's files is checked from its tail only: a last line without a line
//!   end (a crash mid-write) is cut off, and that event counts as not
//!   written, so it is written again whole.
//!
//! Formats:
//! - csv: presses only (agent status events are skipped: they go into
//!   ndjson files and the other sinks). A new file starts with a UTF-8 byte order mark (Excel then reads
//!   Cyrillic right) and the header line; columns in upload-v1 order plus
//!   `agent_id,location`; null as an empty field; booleans `true`/`false`;
//!   `,` separator, fields quoted only when needed; lines end with `\n`
//!   (Excel reads that; it is the `csv` crate's default). A CR or LF inside
//!   a text field is written as a space, so that one record is always one
//!   line: the tail repair depends on it.
//! - ndjson: one JSON object per line, the event's fields plus `agent_id`
//!   and `location` (the HTTP sink's ndjson shape), no header.
//!
//! The file IO is blocking and runs on tokio's blocking pool, one attempt at
//! a time (a mutex), so a cancelled delivery still finishes or undoes its
//! write before the next attempt looks at the files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, NaiveDate, TimeDelta};
use serde::Deserialize;

use super::policy::Outcome;
use super::{AgentInfo, SinkError};
use crate::config::{FileFormat, FileSinkSettings};
use crate::event::{CsvLine, Event, LineBreaks, NdjsonLine, CSV_HEADER, UTF8_BOM};
use crate::store::StoredEvent;

/// Appends batches to one file per local day in a folder.
pub struct FileSink {
    sink: String,
    format: FileFormat,
    agent: AgentInfo,
    files: Arc<Mutex<DayFiles>>,
}

/// Every file name of the sink starts with this, then `YYYY-MM-DD.<ext>`.
const FILE_PREFIX: &str = "epm-agent-";

/// A tail read never grows past this: a file of ours whose last two line
/// ends are further apart is not a file of ours.
const MAX_TAIL_BYTES: u64 = 1024 * 1024;

impl FileSink {
    /// Fails only when `settings.dir` cannot be a folder (a file is in the
    /// way). A missing folder is created at the first delivery.
    pub fn new(
        sink: &str,
        settings: &FileSinkSettings,
        agent: AgentInfo,
    ) -> Result<FileSink, SinkError> {
        check_folder(&settings.dir).map_err(|message| SinkError::Setup {
            sink: sink.to_string(),
            message,
        })?;
        Ok(FileSink {
            sink: sink.to_string(),
            format: settings.format,
            agent,
            files: Arc::new(Mutex::new(DayFiles {
                sink: sink.to_string(),
                dir: settings.dir.clone(),
                format: settings.format,
                written: None,
            })),
        })
    }

    /// Appends the events not yet in the files and syncs them; `Accepted`
    /// only when all of them are durable.
    pub async fn deliver(&mut self, batch_id: &str, events: &[StoredEvent]) -> Outcome {
        if events.is_empty() {
            return Outcome::Accepted;
        }
        let lines = match format_lines(self.format, &self.agent, events) {
            Ok(lines) => lines,
            Err(reason) => return Outcome::Local(reason),
        };
        let files = Arc::clone(&self.files);
        let task = tokio::task::spawn_blocking(move || lock(&files).append(&lines));
        match task.await {
            Ok(Ok(appended)) => {
                if appended.skipped > 0 {
                    tracing::info!(
                        sink = %self.sink,
                        batch_id,
                        "{} of {} events are already in the files (the batch is sent again after a restart or a failed write); not written twice",
                        appended.skipped,
                        events.len()
                    );
                }
                tracing::debug!(sink = %self.sink, batch_id, written = appended.written, "batch appended and synced");
                Outcome::Accepted
            }
            Ok(Err(reason)) => Outcome::Local(reason),
            Err(error) => Outcome::Local(format!("the file writing task failed: {error}")),
        }
    }
}

/// The blocking side: the folder and what is known to be in it.
struct DayFiles {
    sink: String,
    dir: PathBuf,
    format: FileFormat,
    /// What the files hold; `None` until they have been checked (first
    /// delivery) and again after a failed write, when only the files know.
    written: Option<Written>,
}

struct Written {
    /// The greatest event id in the sink's files.
    last_id: Option<String>,
}

/// One event, formatted, with the day whose file it goes to.
struct Line {
    id: String,
    day: NaiveDate,
    bytes: Vec<u8>,
}

/// What an append did.
struct Appended {
    written: usize,
    /// Events already in the files.
    skipped: usize,
}

/// What the last complete line of a file says.
#[derive(Debug, PartialEq, Eq)]
enum LastLine {
    /// An empty file, or a csv file with only its header.
    NoEvent,
    Event(String),
    /// Not a line this sink writes.
    Unreadable,
}

/// The one field read back from an ndjson line.
#[derive(Deserialize)]
struct NdjsonId {
    id: String,
}

impl DayFiles {
    /// Writes the lines whose events are not in the files yet, one day's
    /// run at a time, each run synced before the next begins (so that the
    /// greatest id on disk is always the last event written).
    fn append(&mut self, lines: &[Line]) -> Result<Appended, String> {
        self.create_folder()?;
        let last_id = match &self.written {
            Some(written) => written.last_id.clone(),
            None => {
                let last_id = self.recover()?;
                self.written = Some(Written {
                    last_id: last_id.clone(),
                });
                last_id
            }
        };
        let fresh: Vec<&Line> = lines
            .iter()
            .filter(|line| {
                last_id
                    .as_deref()
                    .is_none_or(|last| line.id.as_str() > last)
            })
            .collect();
        for run in fresh.chunk_by(|one, next| one.day == next.day) {
            if let Err(reason) = self.append_run(run) {
                // Whatever happened, the files are the truth again.
                self.written = None;
                return Err(reason);
            }
            self.written = Some(Written {
                last_id: run.last().map(|line| line.id.clone()),
            });
        }
        Ok(Appended {
            written: fresh.len(),
            skipped: lines.len() - fresh.len(),
        })
    }

    /// Appends lines of one day and syncs them; on failure takes back what
    /// it wrote. `run` is never empty (a chunk).
    fn append_run(&self, run: &[&Line]) -> Result<(), String> {
        let Some(first) = run.first() else {
            return Ok(());
        };
        let path = self.dir.join(file_name(first.day, self.format));
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|error| io_failure("cannot open", &path, &error))?;
        let length_before = file
            .metadata()
            .map_err(|error| io_failure("cannot read the size of", &path, &error))?
            .len();
        let starts_file = length_before == 0;
        let mut bytes = Vec::new();
        if starts_file && self.format == FileFormat::Csv {
            bytes.extend_from_slice(UTF8_BOM);
            bytes.extend_from_slice(CSV_HEADER.as_bytes());
            bytes.push(b'\n');
        }
        for line in run {
            bytes.extend_from_slice(&line.bytes);
        }
        let written = file.write_all(&bytes).and_then(|()| file.sync_data());
        // A new file's name must be durable too, or a power cut could lose
        // a file whose lines were acknowledged.
        let written = written.and_then(|()| {
            if starts_file {
                sync_folder(&self.dir)
            } else {
                Ok(())
            }
        });
        if let Err(error) = written {
            drop(file);
            if let Err(undo) = truncate(&path, length_before) {
                tracing::warn!(
                    sink = %self.sink,
                    file = %path.display(),
                    "cannot take back a failed write ({undo}); the files will be checked before the next one"
                );
            }
            return Err(io_failure("cannot append to", &path, &error));
        }
        Ok(())
    }

    /// Creates the folder when it is missing (0750 on Unix: an export
    /// folder, readable by a group of collectors).
    fn create_folder(&self) -> Result<(), String> {
        match fs::metadata(&self.dir) {
            Ok(metadata) if metadata.is_dir() => return Ok(()),
            Ok(_) => return Err(format!("{} is not a folder", self.dir.display())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_failure("cannot reach folder", &self.dir, &error)),
        }
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o750);
        builder
            .create(&self.dir)
            .map_err(|error| io_failure("cannot create folder", &self.dir, &error))?;
        if let Some(parent) = self.dir.parent() {
            sync_folder(parent)
                .map_err(|error| io_failure("cannot sync folder", parent, &error))?;
        }
        tracing::info!(sink = %self.sink, dir = %self.dir.display(), "created the export folder");
        Ok(())
    }

    /// Repairs every file of the sink's format and returns the greatest
    /// event id in them.
    fn recover(&self) -> Result<Option<String>, String> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|error| io_failure("cannot list", &self.dir, &error))?;
        let mut last_id: Option<String> = None;
        for entry in entries {
            let entry = entry.map_err(|error| io_failure("cannot list", &self.dir, &error))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !is_day_file_name(name, self.format) {
                continue;
            }
            let path = entry.path();
            let is_file = entry
                .file_type()
                .map_err(|error| io_failure("cannot read", &path, &error))?
                .is_file();
            if !is_file {
                continue; // a write to it will fail and say so
            }
            let id = self.recover_file(&path)?;
            last_id = last_id.max(id);
        }
        Ok(last_id)
    }

    /// Cuts a torn last line off the file and returns the id of its last
    /// complete line. Reads only the tail.
    fn recover_file(&self, path: &Path) -> Result<Option<String>, String> {
        let describe = |error: io::Error| io_failure("cannot check", path, &error);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(describe)?;
        let length = file.metadata().map_err(describe)?.len();
        let (tail_start, tail) = read_tail(&mut file, length).map_err(describe)?;
        let kept = match tail.iter().rposition(|&byte| byte == b'\n') {
            Some(index) => index + 1,
            None if tail_start == 0 => 0, // not one complete line: a torn first line or header
            None => {
                return Err(format!(
                    "{} has no line end in its last {MAX_TAIL_BYTES} bytes: it is not a file this sink wrote; move it away",
                    path.display()
                ))
            }
        };
        let complete_length = tail_start + kept as u64;
        if complete_length < length {
            file.set_len(complete_length)
                .and_then(|()| file.sync_all())
                .map_err(|error| io_failure("cannot cut the torn last line of", path, &error))?;
            tracing::warn!(
                sink = %self.sink,
                file = %path.display(),
                cut_bytes = length - complete_length,
                "cut off a torn last line (a crash during a write); its event will be written again"
            );
        }
        match last_line(self.format, &tail[..kept], tail_start == 0) {
            LastLine::NoEvent => Ok(None),
            LastLine::Event(id) => Ok(Some(id)),
            LastLine::Unreadable => {
                tracing::warn!(
                    sink = %self.sink,
                    file = %path.display(),
                    "the last line is not one this sink writes; it is left as it is and not used to skip events already written"
                );
                Ok(None)
            }
        }
    }
}

/// Formats each event as its file line; fails on an event whose day cannot
/// be known.
fn format_lines(
    format: FileFormat,
    agent: &AgentInfo,
    events: &[StoredEvent],
) -> Result<Vec<Line>, String> {
    let mut csv = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    let mut lines = Vec::with_capacity(events.len());
    for StoredEvent { event, .. } in events {
        let day = local_day(event)?;
        let describe =
            |error: &dyn std::fmt::Display| format!("cannot format event {}: {error}", event.id);
        let bytes = match format {
            FileFormat::Csv => {
                // A csv file holds presses only: status events are for
                // ndjson files and the other sinks.
                let Some(press) = event.press() else {
                    continue;
                };
                // One writer for the batch (it buffers); each line is the
                // slice its record added.
                let start = csv.get_ref().len();
                csv.serialize(CsvLine::new(
                    event,
                    press,
                    &agent.id,
                    agent.location.as_deref(),
                    LineBreaks::AsSpaces,
                ))
                .map_err(|error| describe(&error))?;
                csv.flush().map_err(|error| describe(&error))?;
                csv.get_ref()[start..].to_vec()
            }
            FileFormat::Ndjson => {
                let line = NdjsonLine {
                    event,
                    agent_id: &agent.id,
                    location: agent.location.as_deref(),
                };
                let mut bytes = serde_json::to_vec(&line).map_err(|error| describe(&error))?;
                bytes.push(b'\n');
                bytes
            }
        };
        lines.push(Line {
            id: event.id.clone(),
            day,
            bytes,
        });
    }
    Ok(lines)
}

/// The shop's day of the event: its UTC time plus its own UTC offset.
fn local_day(event: &Event) -> Result<NaiveDate, String> {
    let utc = DateTime::parse_from_rfc3339(&event.ts)
        .map_err(|error| {
            format!(
                "event {} has an unreadable ts {:?}: {error}",
                event.id, event.ts
            )
        })?
        .naive_utc();
    utc.checked_add_signed(TimeDelta::minutes(i64::from(event.tz_offset_min)))
        .map(|local| local.date())
        .ok_or_else(|| format!("event {} has a ts out of range: {:?}", event.id, event.ts))
}

fn file_name(day: NaiveDate, format: FileFormat) -> String {
    format!(
        "{FILE_PREFIX}{}.{}",
        day.format("%Y-%m-%d"),
        extension(format)
    )
}

fn extension(format: FileFormat) -> &'static str {
    match format {
        FileFormat::Csv => "csv",
        FileFormat::Ndjson => "ndjson",
    }
}

/// `epm-agent-2026-11-22.csv` for the csv format: a file this sink owns.
fn is_day_file_name(name: &str, format: FileFormat) -> bool {
    name.strip_prefix(FILE_PREFIX)
        .and_then(|rest| rest.strip_suffix(extension(format)))
        .and_then(|rest| rest.strip_suffix('.'))
        .is_some_and(|day| day.len() == 10 && NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok())
}

/// The last bytes of the file, enough to hold its last two line ends (or
/// the whole file), and where they start.
fn read_tail(file: &mut File, length: u64) -> io::Result<(u64, Vec<u8>)> {
    let mut window: u64 = 4096;
    loop {
        let start = length.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        Read::by_ref(file)
            .take(length - start)
            .read_to_end(&mut tail)?;
        let line_ends = tail.iter().filter(|&&byte| byte == b'\n').take(2).count();
        if start == 0 || line_ends == 2 || window >= MAX_TAIL_BYTES {
            return Ok((start, tail));
        }
        window = (window * 2).min(MAX_TAIL_BYTES);
    }
}

/// Reads the last line of `complete` (bytes that end with a line end, or
/// nothing); `at_file_start` when they begin the file (a BOM may lead).
fn last_line(format: FileFormat, complete: &[u8], at_file_start: bool) -> LastLine {
    let Some(body) = complete.strip_suffix(b"\n") else {
        return LastLine::NoEvent;
    };
    let line = match body.iter().rposition(|&byte| byte == b'\n') {
        Some(index) => &body[index + 1..],
        None if at_file_start => body.strip_prefix(UTF8_BOM).unwrap_or(body),
        None => return LastLine::Unreadable, // longer than the tail we read
    };
    match format {
        FileFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(line);
            match reader.records().next() {
                Some(Ok(record)) => match record.get(0) {
                    Some("id") => LastLine::NoEvent, // the header
                    Some(id) if !id.is_empty() => LastLine::Event(id.to_string()),
                    _ => LastLine::Unreadable,
                },
                _ => LastLine::Unreadable,
            }
        }
        FileFormat::Ndjson => match serde_json::from_slice::<NdjsonId>(line) {
            Ok(NdjsonId { id }) if !id.is_empty() => LastLine::Event(id),
            _ => LastLine::Unreadable,
        },
    }
}

/// The folder, or the nearest part of its path that exists, must be a
/// folder: a file in the way is a configuration mistake no retry fixes.
/// Anything else (missing, not readable now) is left to the deliveries.
fn check_folder(dir: &Path) -> Result<(), String> {
    for ancestor in dir
        .ancestors()
        .filter(|ancestor| !ancestor.as_os_str().is_empty())
    {
        match fs::metadata(ancestor) {
            Ok(metadata) if metadata.is_dir() => return Ok(()),
            Ok(_) if ancestor == dir => {
                return Err(format!("`path` {} is a file, not a folder", dir.display()));
            }
            Ok(_) => {
                return Err(format!(
                    "`path` {} cannot be a folder: {} is a file",
                    dir.display(),
                    ancestor.display()
                ));
            }
            // Missing, or under a file (ENOTDIR): look further up.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Shortens the file back to `length` and syncs it.
fn truncate(path: &Path, length: u64) -> io::Result<()> {
    // Opened anew: an append handle cannot truncate on every platform.
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(length)?;
    file.sync_all()
}

/// Makes the folder's entries (a new file's name) durable.
#[cfg(unix)]
fn sync_folder(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Windows cannot open a folder as a file; NTFS journals names itself.
#[cfg(not(unix))]
fn sync_folder(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// `cannot append to /srv/export/epm-agent-2026-11-22.csv: <cause>`.
fn io_failure(action: &str, path: &Path, error: &io::Error) -> String {
    let hint = match error.kind() {
        io::ErrorKind::PermissionDenied => " (may the agent's service user write there?)",
        _ => "",
    };
    format!("{action} {}: {error}{hint}", path.display())
}

/// The day files, also after a panic in an earlier attempt: then nothing is
/// trusted but the files, which are checked again.
fn lock(files: &Mutex<DayFiles>) -> MutexGuard<'_, DayFiles> {
    match files.lock() {
        Ok(guard) => guard,
        Err(poisoned) => {
            files.clear_poison();
            let mut guard = poisoned.into_inner();
            guard.written = None;
            guard
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ts: &str, tz_offset_min: i32) -> Event {
        Event {
            id: "01JDA8Z5C6N2V7Q4M3W9XK1T0B".into(),
            ts: ts.into(),
            tz_offset_min,
            body: crate::event::EventBody::Press(crate::event::PressFields {
                device: "entrance".into(),
                model: "prolan-501".into(),
                unit: "301A0002".into(),
                key: 1,
                answer: Some("yes".into()),
                question: None,
                seq: 258,
                rssi: Some(-61),
                battery: None,
                suppressed: false,
            }),
        }
    }

    #[test]
    fn the_day_is_the_shops_local_day() {
        let check = |ts: &str, offset: i32, expected: &str| {
            let day = local_day(&event(ts, offset)).map(|day| day.to_string());
            assert_eq!(day.as_deref(), Ok(expected), "{ts} at {offset} min");
        };
        check("2026-11-22T20:59:59.999Z", 180, "2026-11-22");
        check("2026-11-22T21:00:00.000Z", 180, "2026-11-23");
        check("2026-11-22T00:30:00.000Z", -60, "2026-11-21");
        check("2026-11-22T23:59:59.999Z", 0, "2026-11-22");
        check("2026-12-31T14:00:00.000Z", 600, "2027-01-01");
        assert!(local_day(&event("22.11.2026 10:15", 180)).is_err());
    }

    #[test]
    fn the_csv_header_names_the_csv_lines_fields_in_order() {
        let agent = AgentInfo {
            id: "shop-017".into(),
            location: None,
            version: "test",
        };
        let event = event("2026-11-22T10:15:03.214Z", 180);
        let press = event.press().expect("a press");
        let mut writer = csv::Writer::from_writer(Vec::new());
        assert!(writer
            .serialize(CsvLine::new(
                &event,
                press,
                &agent.id,
                agent.location.as_deref(),
                LineBreaks::AsSpaces
            ))
            .is_ok());
        let written = writer
            .into_inner()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        let header = written
            .as_deref()
            .ok()
            .and_then(|text| text.split_inclusive('\n').next());
        assert_eq!(header, Some(format!("{CSV_HEADER}\n").as_str()));
    }

    #[test]
    fn a_line_break_in_a_csv_field_becomes_a_space() {
        let event = event("2026-11-22T10:15:03.214Z", 180);
        let mut press = event.press().expect("a press").clone();
        press.question = Some("да,\r\nнет\n".into());
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::new());
        assert!(writer
            .serialize(CsvLine::new(
                &event,
                &press,
                "shop",
                None,
                LineBreaks::AsSpaces
            ))
            .is_ok());
        let written = writer
            .into_inner()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        assert!(written
            .as_deref()
            .is_ok_and(|line| line.contains("\"да,  нет \"") && line.matches('\n').count() == 1));
    }

    #[test]
    fn only_the_sinks_day_files_are_its_own() {
        let check = |name: &str, format: FileFormat, expected: bool| {
            assert_eq!(
                is_day_file_name(name, format),
                expected,
                "{name} as {format:?}"
            );
        };
        check("epm-agent-2026-11-22.csv", FileFormat::Csv, true);
        check("epm-agent-2026-11-22.ndjson", FileFormat::Ndjson, true);
        check("epm-agent-2026-11-22.ndjson", FileFormat::Csv, false);
        check("epm-agent-2026-11-22.csv", FileFormat::Ndjson, false);
        check("epm-agent-2026-11-22csv", FileFormat::Csv, false);
        check("epm-agent-2026-13-22.csv", FileFormat::Csv, false);
        check("epm-agent-2026-11-22.csv.bak", FileFormat::Csv, false);
        check("report-2026-11-22.csv", FileFormat::Csv, false);
        assert_eq!(
            file_name(
                NaiveDate::from_ymd_opt(2026, 1, 2).unwrap_or_default(),
                FileFormat::Csv
            ),
            "epm-agent-2026-01-02.csv"
        );
    }

    #[test]
    fn the_last_complete_line_gives_the_last_id() {
        let check =
            |format: FileFormat, complete: &[u8], at_file_start: bool, expected: LastLine| {
                assert_eq!(
                    last_line(format, complete, at_file_start),
                    expected,
                    "{:?}",
                    String::from_utf8_lossy(complete)
                );
            };
        let header = [UTF8_BOM, CSV_HEADER.as_bytes(), b"\n"].concat();
        let id = |text: &str| LastLine::Event(text.to_string());
        check(FileFormat::Csv, b"", true, LastLine::NoEvent);
        check(FileFormat::Csv, &header, true, LastLine::NoEvent);
        check(
            FileFormat::Csv,
            &[&header[..], b"01A,press,x\n"].concat(),
            true,
            id("01A"),
        );
        check(FileFormat::Csv, b"01A,press\n01B,press\n", false, id("01B"));
        check(FileFormat::Csv, b"01A,press\n", false, LastLine::Unreadable); // the line may go on before the tail
        check(
            FileFormat::Csv,
            b"01A,press\n\n",
            false,
            LastLine::Unreadable,
        );
        check(
            FileFormat::Ndjson,
            b"{\"id\":\"01A\"}\n{\"id\":\"01B\",\"key\":1}\n",
            true,
            id("01B"),
        );
        check(
            FileFormat::Ndjson,
            b"{\"id\":\"01A\"}\nnot json\n",
            true,
            LastLine::Unreadable,
        );
        check(FileFormat::Ndjson, b"", true, LastLine::NoEvent);
    }
}

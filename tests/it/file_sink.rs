//! The file sink against real files in temporary folders: one file per
//! local day, csv (BOM and header once per file) and ndjson lines that parse
//! back to the events, no duplicate line after a batch is sent again, a torn
//! last line cut off and its event written again, and an unwritable target
//! reported as a local failure that names the path.

use std::fs;
use std::path::{Path, PathBuf};

use epm_agent::config::{FileFormat, FileSinkSettings};
use epm_agent::event::{Event, EventBody, PressFields, StatusDetail};
use epm_agent::sink::file::FileSink;
use epm_agent::sink::policy::Outcome;
use epm_agent::sink::{AgentInfo, SinkError};
use epm_agent::store::StoredEvent;
use serde_json::Value;

const BOM: &str = "\u{feff}";
const CSV_COLUMNS: [&str; 16] = [
    "id",
    "type",
    "ts",
    "tz_offset_min",
    "device",
    "model",
    "unit",
    "key",
    "answer",
    "question",
    "seq",
    "rssi",
    "battery",
    "suppressed",
    "agent_id",
    "location",
];
const DAY_22: &str = "2026-11-22";
const DAY_23: &str = "2026-11-23";
const FORMATS: [FileFormat; 2] = [FileFormat::Csv, FileFormat::Ndjson];

fn agent() -> AgentInfo {
    AgentInfo {
        id: "shop-017".into(),
        location: Some("Москва, Тверская 7".into()),
        version: "test",
    }
}

/// Press `number` (1-99): ids sort in number order. Odd presses carry every
/// optional field, even ones none; all are in Moscow (UTC+3), so 21:00 UTC
/// is already the next local day while the UTC day is the same.
fn press(number: u32, ts: &str) -> StoredEvent {
    let full = number % 2 == 1;
    StoredEvent {
        seqno: i64::from(number),
        event: Event {
            id: format!("01JDA8Z5C6N2V7Q4M3W9XK1T{number:02}"),
            ts: ts.into(),
            tz_offset_min: 180,
            body: EventBody::Press(PressFields {
                device: "вход, \"главный\"".into(),
                model: "prolan-501".into(),
                unit: "301A0002".into(),
                key: 1 + (number % 16) as u8,
                answer: full.then(|| "да".to_string()),
                question: full.then(|| "recommend".to_string()),
                seq: 250 + number as u16,
                rssi: full.then_some(-61),
                battery: full.then_some(87),
                suppressed: !full,
            }),
        },
    }
}

/// Presses 1 to 6: 1-3 on the shop's 22 November, 4-6 on the 23rd.
fn presses() -> Vec<StoredEvent> {
    vec![
        press(1, "2026-11-22T08:00:00.000Z"),
        press(2, "2026-11-22T20:59:58.100Z"),
        press(3, "2026-11-22T20:59:59.999Z"),
        press(4, "2026-11-22T21:00:00.000Z"),
        press(5, "2026-11-22T21:00:01.500Z"),
        press(6, "2026-11-23T09:30:00.250Z"),
    ]
}

fn settings(dir: &Path, format: FileFormat) -> FileSinkSettings {
    FileSinkSettings {
        dir: dir.to_path_buf(),
        format,
    }
}

fn new_sink(dir: &Path, format: FileFormat) -> FileSink {
    match FileSink::new("partner-files", &settings(dir, format), agent()) {
        Ok(sink) => sink,
        Err(error) => panic!("file sink for {}: {error}", dir.display()),
    }
}

fn extension(format: FileFormat) -> &'static str {
    match format {
        FileFormat::Csv => "csv",
        FileFormat::Ndjson => "ndjson",
    }
}

fn day_file(dir: &Path, day: &str, format: FileFormat) -> PathBuf {
    dir.join(format!("epm-agent-{day}.{}", extension(format)))
}

async fn deliver(sink: &mut FileSink, events: &[StoredEvent]) {
    let outcome = sink.deliver("batch", events).await;
    assert_eq!(
        outcome,
        Outcome::Accepted,
        "delivering {} events",
        events.len()
    );
}

/// The csv fields of an event, written out independently of the sink.
fn csv_fields(event: &Event) -> Vec<String> {
    let optional = |value: Option<String>| value.unwrap_or_default();
    let press = event.press().expect("csv files hold presses");
    vec![
        event.id.clone(),
        event.event_type().to_string(),
        event.ts.clone(),
        event.tz_offset_min.to_string(),
        press.device.clone(),
        press.model.clone(),
        press.unit.clone(),
        press.key.to_string(),
        optional(press.answer.clone()),
        optional(press.question.clone()),
        press.seq.to_string(),
        optional(press.rssi.map(|rssi| rssi.to_string())),
        optional(press.battery.map(|battery| battery.to_string())),
        press.suppressed.to_string(),
        "shop-017".into(),
        "Москва, Тверская 7".into(),
    ]
}

/// The ndjson object of an event: its upload-v1 fields plus the agent's.
fn ndjson_object(event: &Event) -> Value {
    let mut object = serde_json::to_value(event).expect("an event serializes");
    object["agent_id"] = Value::from("shop-017");
    object["location"] = Value::from("Москва, Тверская 7");
    object
}

/// The events' lines as read back from one day file, each as a JSON value
/// (a csv record as an array of strings), after checking the file's frame:
/// BOM and header exactly once at the start (csv), every line complete.
fn read_back(path: &Path, format: FileFormat) -> Vec<Value> {
    let text =
        fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    assert!(
        text.ends_with('\n'),
        "{} ends with a complete line: {text:?}",
        path.display()
    );
    assert!(
        !text.contains('\r'),
        "{}: lines end with \\n alone",
        path.display()
    );
    match format {
        FileFormat::Csv => {
            let header = format!("{}\n", CSV_COLUMNS.join(","));
            assert!(
                text.starts_with(&format!("{BOM}{header}")),
                "{}: {text:?}",
                path.display()
            );
            assert_eq!(text.matches(BOM).count(), 1, "{}: one BOM", path.display());
            assert_eq!(
                text.matches(&header).count(),
                1,
                "{}: one header",
                path.display()
            );
            let mut reader = csv::Reader::from_reader(&text.as_bytes()[BOM.len()..]);
            let headers = reader.headers().expect("a header").clone();
            assert_eq!(headers.iter().collect::<Vec<_>>(), CSV_COLUMNS);
            reader
                .records()
                .map(|record| {
                    let record =
                        record.unwrap_or_else(|error| panic!("{}: {error}", path.display()));
                    Value::from(record.iter().collect::<Vec<_>>())
                })
                .collect()
        }
        FileFormat::Ndjson => {
            assert!(!text.contains(BOM), "{}: no BOM in ndjson", path.display());
            text.lines()
                .map(|line| {
                    serde_json::from_str(line)
                        .unwrap_or_else(|error| panic!("{}: {line:?}: {error}", path.display()))
                })
                .collect()
        }
    }
}

/// The folder holds exactly one file per listed day, each with exactly
/// the listed events' lines, in order.
fn check_files(dir: &Path, format: FileFormat, expected: &[(&str, Vec<&StoredEvent>)]) {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| {
            entry
                .expect("a folder entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    let expected_names: Vec<String> = expected
        .iter()
        .map(|(day, _)| format!("epm-agent-{day}.{}", extension(format)))
        .collect();
    assert_eq!(names, expected_names, "{format:?} files");
    for (day, events) in expected {
        let lines = events
            .iter()
            .map(|stored| match format {
                FileFormat::Csv => Value::from(csv_fields(&stored.event)),
                FileFormat::Ndjson => ndjson_object(&stored.event),
            })
            .collect::<Vec<_>>();
        assert_eq!(
            read_back(&day_file(dir, day, format), format),
            lines,
            "{format:?} file of {day}"
        );
    }
}

/// The presses with these numbers, from [`presses`].
fn numbered(events: &[StoredEvent], numbers: &[u32]) -> Vec<StoredEvent> {
    numbers
        .iter()
        .map(|number| events[*number as usize - 1].clone())
        .collect()
}

fn refs(events: &[StoredEvent]) -> Vec<&StoredEvent> {
    events.iter().collect()
}

#[tokio::test]
async fn a_batch_across_midnight_lands_in_each_local_days_file() {
    let events = presses();
    for format in FORMATS {
        let temp = tempfile::tempdir().expect("a temporary folder");
        let dir = temp.path().join("export").join("partner"); // created by the sink
        let mut sink = new_sink(&dir, format);

        deliver(&mut sink, &events[0..4]).await; // 1-3 on the 22nd, 4 on the 23rd
        deliver(&mut sink, &events[4..6]).await; // appended to the 23rd's file

        check_files(
            &dir,
            format,
            &[(DAY_22, refs(&events[0..3])), (DAY_23, refs(&events[3..6]))],
        );
    }
}

#[tokio::test]
async fn a_batch_sent_again_adds_no_line() {
    let events = presses();
    for format in FORMATS {
        let temp = tempfile::tempdir().expect("a temporary folder");
        let dir = temp.path();
        let mut sink = new_sink(dir, format);

        deliver(&mut sink, &numbered(&events, &[1, 2, 3, 4])).await;
        deliver(&mut sink, &numbered(&events, &[1, 2, 3, 4])).await; // the same batch again
        deliver(&mut sink, &numbered(&events, &[3, 4, 5])).await; // overlapping
        check_files(
            dir,
            format,
            &[(DAY_22, refs(&events[0..3])), (DAY_23, refs(&events[3..5]))],
        );

        // A restart: what is written is known from the files alone. The
        // greatest id is in the 23rd's file, so the 22nd's presses are
        // skipped too.
        drop(sink);
        let mut restarted = new_sink(dir, format);
        deliver(&mut restarted, &numbered(&events, &[1, 2, 3, 4, 5, 6])).await;
        check_files(
            dir,
            format,
            &[(DAY_22, refs(&events[0..3])), (DAY_23, refs(&events[3..6]))],
        );
    }
}

#[tokio::test]
async fn a_torn_last_line_is_cut_and_its_event_written_again() {
    let events = presses();
    for format in FORMATS {
        let temp = tempfile::tempdir().expect("a temporary folder");
        let dir = temp.path();
        let mut sink = new_sink(dir, format);
        deliver(&mut sink, &numbered(&events, &[1, 2])).await;
        drop(sink);

        // A crash in the middle of writing press 3: its id made it to disk,
        // its line end did not.
        let torn = match format {
            FileFormat::Csv => format!("{},press,2026-11-22T20:5", events[2].event.id),
            FileFormat::Ndjson => format!("{{\"id\":\"{}\",\"type\":\"pr", events[2].event.id),
        };
        let path = day_file(dir, DAY_22, format);
        let mut text = fs::read_to_string(&path).expect("the 22nd's file");
        text.push_str(&torn);
        fs::write(&path, text).expect("a torn line written");

        let mut restarted = new_sink(dir, format);
        deliver(&mut restarted, &numbered(&events, &[3, 4])).await;
        check_files(
            dir,
            format,
            &[(DAY_22, refs(&events[0..3])), (DAY_23, refs(&events[3..4]))],
        );
    }
}

#[tokio::test]
async fn a_csv_file_torn_in_its_header_gets_one_whole_header() {
    let events = presses();
    let torn_starts = ["", BOM, "\u{feff}id,type,t"];
    for torn in torn_starts {
        let temp = tempfile::tempdir().expect("a temporary folder");
        let dir = temp.path();
        fs::write(day_file(dir, DAY_22, FileFormat::Csv), torn).expect("a torn file written");

        let mut sink = new_sink(dir, FileFormat::Csv);
        deliver(&mut sink, &numbered(&events, &[1])).await;
        check_files(dir, FileFormat::Csv, &[(DAY_22, refs(&events[0..1]))]);
    }
}

#[test]
fn a_file_where_the_folder_should_be_is_a_setup_error() {
    let temp = tempfile::tempdir().expect("a temporary folder");
    let file = temp.path().join("export");
    fs::write(&file, "not a folder").expect("a file written");
    for dir in [file.clone(), file.join("partner")] {
        match FileSink::new("partner-files", &settings(&dir, FileFormat::Csv), agent()) {
            Err(SinkError::Setup { sink, message }) => {
                assert_eq!(sink, "partner-files");
                assert!(message.contains(&file.display().to_string()), "{message}");
            }
            Err(error) => panic!("{}: expected a setup error, got {error}", dir.display()),
            Ok(_) => panic!("{}: a file sink over a file", dir.display()),
        }
    }
}

#[tokio::test]
async fn a_folder_replaced_by_a_file_is_a_local_failure_naming_it() {
    let events = presses();
    let temp = tempfile::tempdir().expect("a temporary folder");
    let dir = temp.path().join("export");
    let mut sink = new_sink(&dir, FileFormat::Csv);
    deliver(&mut sink, &numbered(&events, &[1])).await;

    fs::remove_dir_all(&dir).expect("the folder removed");
    fs::write(&dir, "in the way").expect("a file in its place");
    let outcome = sink.deliver("batch", &numbered(&events, &[2])).await;
    let Outcome::Local(reason) = outcome else {
        panic!("expected a local failure, got {outcome:?}")
    };
    assert!(reason.contains(&dir.display().to_string()), "{reason}");

    // Fixed: the folder comes back and press 2 is written.
    fs::remove_file(&dir).expect("the file removed");
    deliver(&mut sink, &numbered(&events, &[2])).await;
    check_files(&dir, FileFormat::Csv, &[(DAY_22, refs(&events[1..2]))]);
}

#[tokio::test]
async fn a_failed_day_file_fails_the_batch_and_the_retry_writes_each_event_once() {
    let events = presses();
    for format in FORMATS {
        let temp = tempfile::tempdir().expect("a temporary folder");
        let dir = temp.path();
        let mut sink = new_sink(dir, format);
        deliver(&mut sink, &numbered(&events, &[1])).await;

        // The 23rd's file cannot be opened: the 22nd's part of the batch is
        // written, the rest is not, and the batch is not accepted.
        let blocked = day_file(dir, DAY_23, format);
        fs::create_dir(&blocked).expect("a folder in the file's place");
        let batch = numbered(&events, &[2, 3, 4, 5]);
        let outcome = sink.deliver("batch", &batch).await;
        let Outcome::Local(reason) = outcome else {
            panic!("{format:?}: expected a local failure, got {outcome:?}")
        };
        assert!(reason.contains(&blocked.display().to_string()), "{reason}");

        // The same batch again once the way is clear: nothing twice,
        // nothing missing.
        fs::remove_dir(&blocked).expect("the folder removed");
        deliver(&mut sink, &batch).await;
        check_files(
            dir,
            format,
            &[(DAY_22, refs(&events[0..3])), (DAY_23, refs(&events[3..5]))],
        );
    }
}

/// A write that fails after the file opened (the disk is full): a local
/// failure naming the file, and the batch whole on the next try.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_full_disk_is_a_local_failure_naming_the_file() {
    let events = presses();
    for format in FORMATS {
        let temp = tempfile::tempdir().expect("a temporary folder");
        let dir = temp.path();
        let full = day_file(dir, DAY_22, format);
        std::os::unix::fs::symlink("/dev/full", &full).expect("a link to /dev/full");

        let mut sink = new_sink(dir, format);
        let batch = numbered(&events, &[1, 2]);
        let outcome = sink.deliver("batch", &batch).await;
        let Outcome::Local(reason) = outcome else {
            panic!("{format:?}: expected a local failure, got {outcome:?}")
        };
        assert!(reason.contains(&full.display().to_string()), "{reason}");

        fs::remove_file(&full).expect("the link removed");
        deliver(&mut sink, &batch).await;
        check_files(dir, format, &[(DAY_22, refs(&events[0..2]))]);
    }
}

/// An agent status event between presses 2 and 3 (its id sorts between
/// theirs, as the store gives ids in order).
fn status_event() -> StoredEvent {
    let detail = StatusDetail::from_json(r#"{"reason":"periodic","health":"ok"}"#.to_string())
        .expect("a JSON object");
    StoredEvent {
        seqno: 2,
        event: Event {
            id: "01JDA8Z5C6N2V7Q4M3W9XK1T02S".into(),
            ts: "2026-11-22T20:59:59.000Z".into(),
            tz_offset_min: 180,
            body: EventBody::Status(detail),
        },
    }
}

#[tokio::test]
async fn status_events_go_into_ndjson_files_and_csv_files_keep_presses_only() {
    let events = presses();
    let with_status = [
        events[0].clone(),
        events[1].clone(),
        status_event(),
        events[2].clone(),
    ];
    let temp = tempfile::tempdir().expect("a temporary folder");

    let csv_dir = temp.path().join("csv");
    let mut csv_sink = new_sink(&csv_dir, FileFormat::Csv);
    deliver(&mut csv_sink, &with_status).await;
    check_files(&csv_dir, FileFormat::Csv, &[(DAY_22, refs(&events[0..3]))]);

    let ndjson_dir = temp.path().join("ndjson");
    let mut ndjson_sink = new_sink(&ndjson_dir, FileFormat::Ndjson);
    deliver(&mut ndjson_sink, &with_status).await;
    check_files(
        &ndjson_dir,
        FileFormat::Ndjson,
        &[(DAY_22, refs(&with_status))],
    );
    let lines = read_back(
        &day_file(&ndjson_dir, DAY_22, FileFormat::Ndjson),
        FileFormat::Ndjson,
    );
    assert_eq!(lines[2]["type"], "agent_status");
    assert_eq!(lines[2]["status"]["reason"], "periodic");
    assert!(
        lines[2].get("device").is_none(),
        "press fields are absent: {}",
        lines[2]
    );
}

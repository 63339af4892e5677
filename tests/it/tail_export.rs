//! `epm-agent export` and `epm-agent tail`, run as the binary on stores
//! prepared with the store's own writer: an export read back (csv and
//! ndjson) equals the stored events field for field (nulls, Cyrillic, line
//! breaks, suppressed presses), the time range is half-open, big stores go
//! out in chunks, a failed export leaves no file; `tail` shows the last N
//! and follows presses another writer adds, also from before the store
//! exists.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use tempfile::TempDir;

use epm_agent::event::{Event, EventBody, NewPress, PressFields};
use epm_agent::protocol::UnitId;
use epm_agent::store::{writer, Store, StoreHandle, WriterOptions};

/// How long a line of `tail` may take to appear (it polls every 250 ms).
const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// A temporary folder with a configuration whose store is `data/`.
struct Fixture {
    dir: TempDir,
    config: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("epm-agent-tail-export-")
            .tempdir()
            .expect("temp dir");
        let config = dir.path().join("epm-agent.toml");
        let data_dir = dir.path().join("data");
        let text = format!(
            "[agent]\nid = \"shop-017\"\nlocation = \"Москва, Тверская 7\"\ndata_dir = {}\n",
            toml::Value::String(data_dir.to_string_lossy().into_owned())
        );
        std::fs::write(&config, text).expect("configuration");
        Fixture { dir, config }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    /// `epm-agent <args> --config <config>`, to completion.
    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("cannot run epm-agent")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_epm-agent"));
        command
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env_remove("EPM_AGENT_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        command
    }

    /// Every stored event, in store order.
    fn stored(&self) -> Vec<Event> {
        Store::open_reader(&self.data_dir())
            .expect("reader")
            .events_after(0, 1_000_000)
            .expect("events")
            .into_iter()
            .map(|stored| stored.event)
            .collect()
    }
}

/// The store's writer thread, driven from the test.
struct Writer {
    runtime: tokio::runtime::Runtime,
    handle: Option<StoreHandle>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Writer {
    fn open(data_dir: &Path) -> Writer {
        let (handle, thread) = writer::spawn(
            Store::open_writer(data_dir).expect("open the store"),
            WriterOptions::default(),
        )
        .expect("writer");
        Writer {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            handle: Some(handle),
            thread: Some(thread),
        }
    }

    /// Stores the presses and waits until they are committed.
    fn write(&self, presses: impl IntoIterator<Item = NewPress>) {
        let handle = self.handle.as_ref().expect("open writer");
        self.runtime.block_on(async {
            for press in presses {
                handle.press(press, None).await.expect("queued");
            }
            handle.flush().await.expect("committed");
        });
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.handle.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn seed(data_dir: &Path, presses: impl IntoIterator<Item = NewPress>) {
    Writer::open(data_dir).write(presses);
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("a test time")
        .with_timezone(&Utc)
}

fn press(ts: &str, seq: u16) -> NewPress {
    NewPress {
        ts: at(ts),
        tz_offset_min: 180,
        device: "entrance".into(),
        model: "prolan-501",
        unit: UnitId(0x301A_0002),
        key: 1,
        answer: Some("yes".into()),
        question: Some("recommend".into()),
        seq,
        rssi: Some(-61),
        battery: Some(87),
        suppressed: false,
    }
}

/// Presses that exercise every field: nulls, Cyrillic, a comma, quotes and
/// a line break inside a text, a suppressed press, the extremes of numbers.
fn varied_presses() -> Vec<NewPress> {
    vec![
        press("2026-11-20T09:00:00.001Z", 258),
        NewPress {
            device: "касса №1".into(),
            model: "prolan-202",
            unit: UnitId(0x202A_0F31),
            key: 12,
            answer: None,
            question: None,
            rssi: None,
            battery: None,
            suppressed: true,
            tz_offset_min: -300,
            ..press("2026-11-21T00:00:00.000Z", 65_535)
        },
        NewPress {
            device: "зал".into(),
            answer: Some("да".into()),
            question: Some("Как вам \"обслуживание\", скажите?\nВторая строка".into()),
            rssi: Some(-128),
            battery: None,
            ..press("2026-11-21T12:30:45.999Z", 0)
        },
        NewPress {
            key: 16,
            answer: Some("10".into()),
            question: Some("nps".into()),
            rssi: Some(127),
            battery: Some(0),
            tz_offset_min: 0,
            ..press("2026-11-22T00:00:00.000Z", 1)
        },
    ]
}

/// An exported line read back: the event and who sent it.
#[derive(Debug, Deserialize)]
struct ExportedRow {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    ts: String,
    tz_offset_min: i32,
    device: String,
    model: String,
    unit: String,
    key: u8,
    answer: Option<String>,
    question: Option<String>,
    seq: u16,
    rssi: Option<i8>,
    battery: Option<u8>,
    suppressed: bool,
    agent_id: String,
    location: Option<String>,
}

impl ExportedRow {
    /// The event, after checking the sender's fields.
    fn into_event(self) -> Event {
        assert_eq!(self.agent_id, "shop-017");
        assert_eq!(self.location.as_deref(), Some("Москва, Тверская 7"));
        assert_eq!(self.event_type, "press");
        Event {
            id: self.id,
            ts: self.ts,
            tz_offset_min: self.tz_offset_min,
            body: EventBody::Press(PressFields {
                device: self.device,
                model: self.model,
                unit: self.unit,
                key: self.key,
                answer: self.answer,
                question: self.question,
                seq: self.seq,
                rssi: self.rssi,
                battery: self.battery,
                suppressed: self.suppressed,
            }),
        }
    }
}

fn read_csv(bytes: &[u8]) -> Vec<Event> {
    let mut reader = csv::Reader::from_reader(bytes);
    let header: Vec<String> = reader
        .headers()
        .expect("a header line")
        .iter()
        .map(String::from)
        .collect();
    assert_eq!(
        header.join(","),
        "id,type,ts,tz_offset_min,device,model,unit,key,answer,question,seq,rssi,battery,suppressed,agent_id,location"
    );
    reader
        .deserialize::<ExportedRow>()
        .map(|row| row.expect("a csv row").into_event())
        .collect()
}

fn read_ndjson(bytes: &[u8]) -> Vec<Event> {
    String::from_utf8(bytes.to_vec())
        .expect("UTF-8")
        .lines()
        .map(|line| {
            serde_json::from_str::<ExportedRow>(line)
                .expect("an ndjson row")
                .into_event()
        })
        .collect()
}

fn success(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 stdout")
}

fn failure(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "should have failed; stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The names in `folder`, sorted.
fn file_names(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .expect("list folder")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn an_export_read_back_equals_the_stored_events_in_csv_and_ndjson() {
    let fixture = Fixture::new();
    seed(&fixture.data_dir(), varied_presses());
    let stored = fixture.stored();
    assert_eq!(stored.len(), 4);
    let out = fixture.path().join("out");
    std::fs::create_dir(&out).expect("output folder");

    let csv_path = out.join("events.csv");
    let summary = success(&fixture.run(&["export", "--output", &csv_path.to_string_lossy()]));
    assert!(summary.contains("exported 4 events to"), "{summary}");
    let bytes = std::fs::read(&csv_path).expect("csv file");
    assert!(
        bytes.starts_with(b"\xEF\xBB\xBF"),
        "a csv file starts with a BOM for Excel"
    );
    assert_eq!(read_csv(&bytes), stored);

    let ndjson_path = out.join("events.ndjson");
    // The format from the file name.
    success(&fixture.run(&["export", "-o", &ndjson_path.to_string_lossy()]));
    assert_eq!(
        read_ndjson(&std::fs::read(&ndjson_path).expect("ndjson file")),
        stored
    );

    // To stdout: the same lines, no BOM, no summary.
    let csv_out = success(&fixture.run(&["export"]));
    assert!(csv_out.starts_with("id,type,"), "{csv_out}");
    assert_eq!(read_csv(csv_out.as_bytes()), stored);
    let ndjson_out = success(&fixture.run(&["export", "--format", "ndjson"]));
    assert_eq!(read_ndjson(ndjson_out.as_bytes()), stored);

    // Only the finished files: no temporary one left behind.
    assert_eq!(file_names(&out), ["events.csv", "events.ndjson"]);
}

#[test]
fn an_export_takes_the_half_open_time_range() {
    let fixture = Fixture::new();
    seed(&fixture.data_dir(), varied_presses());
    let stored = fixture.stored();
    let check = |args: &[&str], expected: &[&Event]| {
        let mut full = vec!["export", "--format", "ndjson"];
        full.extend_from_slice(args);
        let exported = read_ndjson(success(&fixture.run(&full)).as_bytes());
        let expected: Vec<Event> = expected.iter().map(|event| (*event).clone()).collect();
        assert_eq!(exported, expected, "{args:?}");
    };
    // The event at exactly --since is in, the one at exactly --until is out.
    check(
        &[
            "--since",
            "2026-11-21T00:00:00Z",
            "--until",
            "2026-11-22T00:00:00Z",
        ],
        &[&stored[1], &stored[2]],
    );
    check(&["--since", "2026-11-21T12:30:46Z"], &[&stored[3]]);
    check(&["--until", "2026-11-20T09:00:00.002Z"], &[&stored[0]]);
    check(&["--since", "2027-01-01T00:00:00Z"], &[]);
    // An empty range in csv is still a header.
    let header_only = success(&fixture.run(&["export", "--since", "2027-01-01T00:00:00Z"]));
    assert_eq!(read_csv(header_only.as_bytes()), Vec::<Event>::new());

    let error = failure(&fixture.run(&["export", "--since", "soon"]));
    assert!(
        error.contains("is not a time") && error.contains("7d"),
        "{error}"
    );
}

#[test]
fn an_export_larger_than_a_chunk_comes_out_whole_and_in_store_order() {
    let fixture = Fixture::new();
    let start = Utc
        .with_ymd_and_hms(2026, 11, 1, 8, 0, 0)
        .single()
        .expect("a time");
    seed(
        &fixture.data_dir(),
        (0..2_500u16).map(|seq| NewPress {
            ts: start + chrono::Duration::seconds(i64::from(seq)),
            ..press("2026-11-01T08:00:00Z", seq)
        }),
    );
    let stored = fixture.stored();
    assert_eq!(stored.len(), 2_500);
    let path = fixture.path().join("all.csv");
    let summary = success(&fixture.run(&["export", "-o", &path.to_string_lossy()]));
    assert!(summary.contains("exported 2500 events"), "{summary}");
    assert_eq!(read_csv(&std::fs::read(&path).expect("csv")), stored);
    // A range that starts and ends inside chunks.
    let middle = success(&fixture.run(&[
        "export",
        "--format",
        "ndjson",
        "--since",
        "2026-11-01T08:16:40Z",
        "--until",
        "2026-11-01T08:33:20Z",
    ]));
    assert_eq!(
        read_ndjson(middle.as_bytes()),
        stored[1_000..2_000].to_vec()
    );
}

#[test]
fn a_failed_export_leaves_no_file_and_says_what_to_check() {
    let fixture = Fixture::new();
    let path = fixture.path().join("events.csv");
    let error = failure(&fixture.run(&["export", "-o", &path.to_string_lossy()]));
    assert!(error.contains("no store at"), "{error}");
    assert!(!path.exists());

    seed(&fixture.data_dir(), varied_presses());
    let missing = fixture.path().join("no-such-folder").join("events.csv");
    let error = failure(&fixture.run(&["export", "-o", &missing.to_string_lossy()]));
    assert!(error.contains("does the folder exist"), "{error}");
    assert_eq!(file_names(fixture.path()), ["data", "epm-agent.toml"]);
}

#[test]
fn tail_without_follow_prints_the_last_n_and_exits() {
    let fixture = Fixture::new();
    seed(&fixture.data_dir(), varied_presses());
    let stored = fixture.stored();

    let json = success(&fixture.run(&["tail", "-n", "2", "--no-follow", "--json"]));
    let events: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let expected: Vec<serde_json::Value> = stored[2..]
        .iter()
        .map(|event| serde_json::to_value(event).expect("event as JSON"))
        .collect();
    assert_eq!(events, expected);
    // Exactly the upload-v1 fields.
    let fields: Vec<&String> = events[0].as_object().expect("object").keys().collect();
    assert_eq!(fields.len(), 14, "{fields:?}");

    let text = success(&fixture.run(&["tail", "--no-follow"]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    // The shop's local time (UTC-5 for this press), the unmapped key as "-".
    assert!(
        lines[1].starts_with("2026-11-20 19:00:00  касса №1  202A0F31  key 12  -"),
        "{}",
        lines[1]
    );
    assert!(lines[1].ends_with("suppressed (too soon after the previous press)"));
    assert!(lines[0].contains("rssi -61  battery 87%"), "{}", lines[0]);
    // A line break inside a question does not break the line.
    assert!(
        lines[2].contains("скажите? Вторая строка  rssi -128"),
        "{}",
        lines[2]
    );

    assert_eq!(
        success(&fixture.run(&["tail", "-n", "0", "--no-follow"])),
        ""
    );
}

#[test]
fn tail_without_a_store_says_what_to_check() {
    let fixture = Fixture::new();
    let error = failure(&fixture.run(&["tail", "--no-follow"]));
    assert!(
        error.contains("no store at") && error.contains("--config"),
        "{error}"
    );
}

/// A running `tail` whose stdout lines arrive on a channel.
struct Tailing {
    child: Child,
    lines: mpsc::Receiver<String>,
    errors: mpsc::Receiver<String>,
}

impl Tailing {
    fn start(fixture: &Fixture, args: &[&str]) -> Tailing {
        let mut child = fixture
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start epm-agent tail");
        let lines = forward_lines(child.stdout.take().expect("piped stdout"));
        let errors = forward_lines(child.stderr.take().expect("piped stderr"));
        Tailing {
            child,
            lines,
            errors,
        }
    }

    fn next_event(&self, what: &str) -> Event {
        let line = self
            .lines
            .recv_timeout(LINE_TIMEOUT)
            .unwrap_or_else(|error| panic!("no line for {what} within {LINE_TIMEOUT:?}: {error}"));
        let row: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        event_from_json(&row)
    }

    /// Waits for the process to exit on its own (`--max-events`).
    fn wait_for_exit(&mut self) {
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().expect("poll tail") {
                assert!(status.success(), "tail exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("tail did not exit after its last event");
    }
}

impl Drop for Tailing {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of `stream`, on a channel, as they come.
fn forward_lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

fn seq_of(event: &Event) -> u16 {
    event.press().expect("tail shows presses").seq
}

fn event_from_json(row: &serde_json::Value) -> Event {
    let text = |name: &str| row[name].as_str().map(String::from);
    let number = |name: &str| row[name].as_i64();
    assert_eq!(text("type").as_deref(), Some("press"));
    Event {
        id: text("id").expect("id"),
        ts: text("ts").expect("ts"),
        tz_offset_min: number("tz_offset_min")
            .and_then(|n| i32::try_from(n).ok())
            .expect("tz"),
        body: EventBody::Press(PressFields {
            device: text("device").expect("device"),
            model: text("model").expect("model"),
            unit: text("unit").expect("unit"),
            key: number("key")
                .and_then(|n| u8::try_from(n).ok())
                .expect("key"),
            answer: text("answer"),
            question: text("question"),
            seq: number("seq")
                .and_then(|n| u16::try_from(n).ok())
                .expect("seq"),
            rssi: number("rssi").and_then(|n| i8::try_from(n).ok()),
            battery: number("battery").and_then(|n| u8::try_from(n).ok()),
            suppressed: row["suppressed"].as_bool().expect("suppressed"),
        }),
    }
}

#[test]
fn tail_follows_presses_another_writer_adds() {
    let fixture = Fixture::new();
    let writer = Writer::open(&fixture.data_dir());
    writer.write((0..5).map(|seq| press("2026-11-22T10:00:00Z", seq)));
    let mut tailing = Tailing::start(
        &fixture,
        &["tail", "-n", "2", "--json", "--max-events", "6"],
    );
    // The last two first: tail is now past its starting point.
    let first = [tailing.next_event("the 4th"), tailing.next_event("the 5th")];
    assert_eq!(first.map(|event| seq_of(&event)), [3, 4]);

    writer.write([press("2026-11-22T10:00:01Z", 100)]);
    assert_eq!(seq_of(&tailing.next_event("the first new press")), 100);
    // A burst, while tail polls.
    writer.write((101..104).map(|seq| press("2026-11-22T10:00:02Z", seq)));
    let burst: Vec<u16> = (0..3)
        .map(|_| seq_of(&tailing.next_event("the burst")))
        .collect();
    assert_eq!(burst, [101, 102, 103]);
    tailing.wait_for_exit();

    let stored = fixture.stored();
    assert_eq!(stored.len(), 9);
}

#[test]
fn tail_waits_for_the_store_to_be_created() {
    let fixture = Fixture::new();
    let mut tailing = Tailing::start(&fixture, &["tail", "--json", "--max-events", "2"]);
    let said = tailing
        .errors
        .recv_timeout(LINE_TIMEOUT)
        .expect("tail says it is waiting");
    assert!(
        said.contains("no store at") && said.contains("waiting"),
        "{said}"
    );
    assert!(
        tailing.child.try_wait().expect("poll").is_none(),
        "tail gave up"
    );
    let writer = Writer::open(&fixture.data_dir());
    writer.write([press("2026-11-22T10:00:00Z", 7)]);
    writer.write([press("2026-11-22T10:00:05Z", 8)]);
    let seqs = [
        seq_of(&tailing.next_event("the first press")),
        seq_of(&tailing.next_event("the second press")),
    ];
    assert_eq!(seqs, [7, 8]);
    tailing.wait_for_exit();
}

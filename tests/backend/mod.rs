//! A real upload-v1 backend for the delivery tests: an axum server on an
//! ephemeral port of 127.0.0.1, on its own tokio runtime, so that the tests
//! themselves stay plain threads that start and stop the agent binary.
//!
//! It accepts `json` and `ndjson` batches, gzipped or not, checks every
//! request against the contract (`shared/spec/upload-v1.md`: headers, body
//! shape, event fields: a press's or an `agent_status` event's, exactly)
//! and records what was wrong instead of trusting it, keeps the first copy
//! of each event id (exactly-once by id), and records every request as it
//! arrives: when, its `Idempotency-Key`, its event ids (and which of them
//! are presses), what it was answered and its `Authorization` header.
//!
//! What each request is answered is decided by a [`Plan`], a closure the
//! test gives and may swap at any time: an HTTP status (with or without
//! `Retry-After`), a hang, or a dropped connection. A connection is dropped
//! by making its socket fail: the listener hands hyper a stream whose reads
//! and writes fail once the handler has asked for it, and every socket has
//! `SO_LINGER` 0, so hyper's close sends a TCP reset and no answer ever
//! leaves the server.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The path the agent is configured to post to.
pub const PATH: &str = "/v1/batches";
/// The agent id and location every test configures.
pub const AGENT_ID: &str = "shop-017";
pub const LOCATION: &str = "Moscow, Tverskaya 7";
/// The version the agent reports: the crate's, as the tests see it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The `type` of a press, and of an agent status event.
pub const PRESS: &str = "press";
pub const AGENT_STATUS: &str = "agent_status";

/// The fields of a press event, exactly (upload-v1, "The event").
pub const EVENT_FIELDS: [&str; 14] = [
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
];

/// The fields of an agent status event, exactly (upload-v1, "Agent status
/// events"): the press fields are absent.
pub const STATUS_EVENT_FIELDS: [&str; 5] = ["id", "type", "ts", "tz_offset_min", "status"];

/// The keys of its `status` object, exactly.
pub const STATUS_FIELDS: [&str; 8] = [
    "reason",
    "version",
    "started_at",
    "health",
    "devices",
    "sinks",
    "free_disk_bytes",
    "store_bytes",
];

/// The keys of each of `status.devices`, and of each of `status.sinks`.
pub const STATUS_DEVICE_FIELDS: [&str; 6] = [
    "name",
    "model",
    "state",
    "presses",
    "bad_frames",
    "last_frame_at",
];
pub const STATUS_SINK_FIELDS: [&str; 3] = ["name", "state", "pending"];

/// Why a status event was written, how the agent was, and the states of a
/// device and of a sink in it.
pub const STATUS_REASONS: [&str; 4] = ["start", "stop", "device_change", "periodic"];
pub const HEALTHS: [&str; 3] = ["ok", "warning", "critical"];
pub const DEVICE_STATES: [&str; 3] = ["connected", "silent", "disconnected"];
pub const SINK_STATES: [&str; 3] = ["ok", "retrying", "paused"];

/// How a sink is configured, which is what the backend expects to receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Ndjson,
}

#[derive(Clone, Debug)]
pub struct Expect {
    pub format: Format,
    pub gzip: bool,
    /// The bearer token; `None`: no `Authorization` header at all.
    pub token: Option<String>,
}

impl Expect {
    pub fn plain(format: Format) -> Expect {
        Expect {
            format,
            gzip: false,
            token: None,
        }
    }
}

/// What the backend does with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 200: keeps the first copy of each event.
    Accept,
    /// This status, nothing kept.
    Status(u16),
    /// This status with `Retry-After: <seconds>`, nothing kept.
    RetryAfter { status: u16, seconds: u64 },
    /// No answer for this long, then the connection is dropped; nothing kept.
    Hang(Duration),
    /// The connection is dropped without an answer; nothing kept.
    Reset,
    /// The events are kept, then the connection is dropped: the answer is
    /// lost, so the agent must send the same batch again.
    AcceptThenReset,
    /// 200 with a `text/html` page, nothing kept: a captive portal or a
    /// wrong proxy, not a backend.
    WebPage,
}

impl Answer {
    /// The status that goes out, `None` when no answer does.
    pub fn status(&self) -> Option<u16> {
        match self {
            Answer::Accept | Answer::WebPage => Some(200),
            Answer::Status(status) | Answer::RetryAfter { status, .. } => Some(*status),
            Answer::Hang(_) | Answer::Reset | Answer::AcceptThenReset => None,
        }
    }

    fn keeps_events(&self) -> bool {
        matches!(self, Answer::Accept | Answer::AcceptThenReset)
    }
}

/// A request as the plan sees it, before it is answered.
pub struct Incoming<'a> {
    /// 0 for the first request this backend received.
    pub index: usize,
    /// The events as received (for `ndjson`, with `agent_id` and `location`).
    pub events: &'a [Value],
}

impl Incoming<'_> {
    pub fn has_key(&self, key: u64) -> bool {
        self.events
            .iter()
            .any(|event| event.get("key").and_then(Value::as_u64) == Some(key))
    }
}

/// Decides the answer to each request.
pub type Plan = Box<dyn FnMut(&Incoming<'_>) -> Answer + Send>;

/// One request as the backend saw it.
#[derive(Clone, Debug)]
pub struct Request {
    /// Arrival (whole body read), since the backend started.
    pub at: Duration,
    /// The `Idempotency-Key` header.
    pub batch_id: String,
    /// Every event id, in the order of the body.
    pub ids: Vec<String>,
    /// The ids of the presses among them (agent status events left out).
    pub press_ids: Vec<String>,
    pub answer: Answer,
    pub authorization: Option<String>,
    /// Where the request breaks the contract; empty when it does not.
    pub problems: Vec<String>,
}

pub struct Backend {
    runtime: Option<tokio::runtime::Runtime>,
    address: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    started: Instant,
    /// TCP connections accepted so far.
    connections: Arc<AtomicUsize>,
    expect: Expect,
    inner: Mutex<Inner>,
}

struct Inner {
    plan: Plan,
    requests: Vec<Request>,
    /// The first copy of each event id, in the order first received.
    events: Vec<Value>,
    seen: HashMap<String, usize>,
}

impl Backend {
    /// A backend on an ephemeral port that accepts everything.
    pub fn start(expect: Expect) -> Backend {
        Backend::start_on(0, expect).expect("bind an ephemeral port on 127.0.0.1")
    }

    /// A backend on `port` (0: ephemeral) that accepts everything.
    pub fn start_on(port: u16, expect: Expect) -> io::Result<Backend> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-backend")
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind(("127.0.0.1", port)))?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            started: Instant::now(),
            connections: Arc::default(),
            expect,
            inner: Mutex::new(Inner {
                plan: Box::new(|_: &Incoming<'_>| Answer::Accept),
                requests: Vec::new(),
                events: Vec::new(),
                seen: HashMap::new(),
            }),
        });
        let accepted = Arc::clone(&shared.connections);
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let service = router.into_make_service_with_connect_info::<Connection>();
        runtime.spawn(async move {
            // Runs until the runtime is dropped with the backend.
            let _ = axum::serve(
                FaultListener {
                    inner: listener,
                    accepted,
                },
                service,
            )
            .await;
        });
        Ok(Backend {
            runtime: Some(runtime),
            address,
            shared,
        })
    }

    /// What this backend checks requests against.
    pub fn expect(&self) -> &Expect {
        &self.shared.expect
    }

    pub fn url(&self) -> String {
        format!("http://{}{PATH}", self.address)
    }

    /// From now on, `plan` answers every request.
    pub fn set_plan(&self, plan: impl FnMut(&Incoming<'_>) -> Answer + Send + 'static) {
        self.shared.lock().plan = Box::new(plan);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// The ids kept, in the order first received.
    pub fn received_ids(&self) -> Vec<String> {
        self.shared
            .lock()
            .events
            .iter()
            .map(|event| event_id(event).to_string())
            .collect()
    }

    /// The ids of the presses kept, in the order first received (agent
    /// status events left out).
    pub fn received_press_ids(&self) -> Vec<String> {
        self.shared
            .lock()
            .events
            .iter()
            .filter(|event| is_press(event))
            .map(|event| event_id(event).to_string())
            .collect()
    }

    /// The first copy of each event, in the order first received.
    pub fn received_events(&self) -> Vec<Value> {
        self.shared.lock().events.clone()
    }

    /// The first copy of each agent status event, in the order first
    /// received.
    pub fn received_status_events(&self) -> Vec<Value> {
        self.shared
            .lock()
            .events
            .iter()
            .filter(|event| is_status(event))
            .cloned()
            .collect()
    }

    /// Whether every id of `ids` has been kept.
    pub fn has_all(&self, ids: &[String]) -> bool {
        let inner = self.shared.lock();
        ids.iter().all(|id| inner.seen.contains_key(id))
    }

    /// TCP connections accepted so far (a client that reuses its
    /// connections makes one).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// How long ago the backend started (the clock of [`Request::at`]).
    pub fn elapsed(&self) -> Duration {
        self.shared.started.elapsed()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Hanging handlers are simply abandoned.
            runtime.shutdown_background();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking plan poisons the lock; the records are still good.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(connection): ConnectInfo<Connection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = shared.started.elapsed();
    let header = |name: &str| {
        headers
            .get(name)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    let batch_id = header("idempotency-key").unwrap_or_default();
    let authorization = header("authorization");
    let mut problems = Vec::new();
    if method != Method::POST || uri.path() != PATH {
        problems.push(format!("{method} {uri}, expected POST {PATH}"));
    }
    check_headers(&shared.expect, &header, &mut problems);
    let events = parse_body(&shared.expect, &batch_id, &body, &mut problems);

    let answer = {
        let mut inner = shared.lock();
        let index = inner.requests.len();
        let answer = match &events {
            Some(events) => (inner.plan)(&Incoming { index, events }),
            // Nothing to go by: the content is refused, as a backend would.
            None => Answer::Status(400),
        };
        let events = events.unwrap_or_default();
        if answer.keeps_events() {
            for event in &events {
                let id = event_id(event).to_string();
                if !inner.seen.contains_key(&id) {
                    let position = inner.events.len();
                    inner.seen.insert(id, position);
                    inner.events.push(event.clone());
                }
            }
        }
        inner.requests.push(Request {
            at,
            batch_id,
            ids: events
                .iter()
                .map(|event| event_id(event).to_string())
                .collect(),
            press_ids: events
                .iter()
                .filter(|event| is_press(event))
                .map(|event| event_id(event).to_string())
                .collect(),
            answer: answer.clone(),
            authorization,
            problems,
        });
        answer
    };

    // Every answer has a body, as a real server's does: the agent must read
    // it to reuse the connection.
    match answer {
        Answer::Accept => (
            StatusCode::OK,
            [("content-type", "application/json")],
            "{\"accepted\": true}",
        )
            .into_response(),
        Answer::WebPage => (
            StatusCode::OK,
            [("content-type", "text/html; charset=utf-8")],
            "<!doctype html><title>Sign in</title><p>Accept the terms to use this network.",
        )
            .into_response(),
        // An error page the size of a verbose framework's (a stack trace):
        // more than hyper reads with the headers, so a client that drops it
        // unread loses the connection.
        Answer::Status(status) => (status_code(status), error_page(status)).into_response(),
        Answer::RetryAfter { status, seconds } => (
            status_code(status),
            [("retry-after", seconds.to_string())],
            "try later\n",
        )
            .into_response(),
        Answer::Hang(duration) => {
            tokio::time::sleep(duration).await;
            connection.drop_without_answer()
        }
        Answer::Reset | Answer::AcceptThenReset => connection.drop_without_answer(),
    }
}

/// About 50 kB of text, as a server's error page with its details.
fn error_page(status: u16) -> String {
    let mut page = format!("status {status}\n");
    while page.len() < 50_000 {
        page.push_str("    at some.framework.Handler.invoke(Handler.java:123)\n");
    }
    page
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).expect("the plan answers a valid HTTP status")
}

fn check_headers(
    expect: &Expect,
    header: &impl Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) {
    let mut check = |name: &str, expected: Option<String>| {
        let found = header(name);
        if found != expected {
            problems.push(format!("header {name}: {found:?}, expected {expected:?}"));
        }
    };
    check(
        "content-type",
        Some(
            match expect.format {
                Format::Json => "application/json",
                Format::Ndjson => "application/x-ndjson",
            }
            .to_string(),
        ),
    );
    check("user-agent", Some(format!("epm-agent/{VERSION}")));
    check(
        "authorization",
        expect.token.as_ref().map(|token| format!("Bearer {token}")),
    );
    check("content-encoding", expect.gzip.then(|| "gzip".to_string()));
    if header("idempotency-key").is_none_or(|key| key.trim().is_empty()) {
        problems.push("no Idempotency-Key".into());
    }
}

/// The events of the body, checked against the contract; `None` when the
/// body cannot be read as a batch at all.
fn parse_body(
    expect: &Expect,
    batch_id: &str,
    body: &[u8],
    problems: &mut Vec<String>,
) -> Option<Vec<Value>> {
    let plain = if expect.gzip {
        let mut plain = Vec::new();
        let mut decoder = flate2::read::GzDecoder::new(body);
        if let Err(error) = io::Read::read_to_end(&mut decoder, &mut plain) {
            problems.push(format!("the body is not gzip: {error}"));
            return None;
        }
        plain
    } else {
        body.to_vec()
    };
    let events = match expect.format {
        Format::Json => parse_json_batch(batch_id, &plain, problems)?,
        Format::Ndjson => parse_ndjson_batch(&plain, problems)?,
    };
    if events.is_empty() {
        problems.push("a batch without events".into());
    }
    for event in &events {
        check_event(expect.format, event, problems);
    }
    Some(events)
}

fn parse_json_batch(
    batch_id: &str,
    plain: &[u8],
    problems: &mut Vec<String>,
) -> Option<Vec<Value>> {
    let batch: Value = match serde_json::from_slice(plain) {
        Ok(batch) => batch,
        Err(error) => {
            problems.push(format!("the body is not JSON: {error}"));
            return None;
        }
    };
    let mut check = |what: &str, found: Option<&Value>, expected: Value| {
        if found != Some(&expected) {
            problems.push(format!("{what}: {found:?}, expected {expected}"));
        }
    };
    check(
        "schema",
        batch.get("schema"),
        Value::from("epm-agent.batch.v1"),
    );
    check("batch_id", batch.get("batch_id"), Value::from(batch_id));
    let agent = batch.get("agent");
    check(
        "agent.id",
        agent.and_then(|agent| agent.get("id")),
        Value::from(AGENT_ID),
    );
    check(
        "agent.location",
        agent.and_then(|agent| agent.get("location")),
        Value::from(LOCATION),
    );
    check(
        "agent.version",
        agent.and_then(|agent| agent.get("version")),
        Value::from(VERSION),
    );
    match batch.get("sent_at").and_then(Value::as_str) {
        Some(sent_at) => {
            check_timestamp("sent_at", sent_at, problems);
            if let Ok(at) = chrono::DateTime::parse_from_rfc3339(sent_at) {
                let skew = (chrono::Utc::now() - at.to_utc()).num_seconds().abs();
                if skew > 60 {
                    problems.push(format!("sent_at {sent_at} is {skew} s off this clock"));
                }
            }
        }
        None => problems.push("no sent_at".into()),
    }
    match batch.get("events").and_then(Value::as_array) {
        Some(events) => Some(events.clone()),
        None => {
            problems.push("no events array".into());
            None
        }
    }
}

fn parse_ndjson_batch(plain: &[u8], problems: &mut Vec<String>) -> Option<Vec<Value>> {
    let Ok(text) = std::str::from_utf8(plain) else {
        problems.push("the body is not UTF-8".into());
        return None;
    };
    if !text.ends_with('\n') {
        problems.push("the last ndjson line has no newline".into());
    }
    let mut events = Vec::new();
    for (number, line) in text.lines().enumerate() {
        match serde_json::from_str::<Value>(line) {
            Ok(event) => events.push(event),
            Err(error) => {
                problems.push(format!("ndjson line {}: {error}: {line:?}", number + 1));
                return None;
            }
        }
    }
    Some(events)
}

/// Whether a field's value has the type upload-v1 gives it.
type FieldCheck = fn(&Value) -> bool;

/// Every field of its type present with its type, and nothing else: a
/// press, or an agent status event.
fn check_event(format: Format, event: &Value, problems: &mut Vec<String>) {
    let Some(object) = event.as_object() else {
        problems.push(format!("an event is not an object: {event}"));
        return;
    };
    let mut expected: Vec<&str> = match object.get("type").and_then(Value::as_str) {
        Some(PRESS) => EVENT_FIELDS.to_vec(),
        Some(AGENT_STATUS) => STATUS_EVENT_FIELDS.to_vec(),
        other => {
            problems.push(format!(
                "event type {other:?}, expected {PRESS:?} or {AGENT_STATUS:?}: {event}"
            ));
            return;
        }
    };
    if format == Format::Ndjson {
        expected.extend(["agent_id", "location"]);
        if object.get("agent_id") != Some(&Value::from(AGENT_ID))
            || object.get("location") != Some(&Value::from(LOCATION))
        {
            problems.push(format!("ndjson line without this agent: {event}"));
        }
    }
    check_keys("event", object, &expected, problems);
    let common: [(&str, FieldCheck); 2] = [
        ("id", |value| {
            value.as_str().is_some_and(|id| !id.is_empty())
        }),
        ("tz_offset_min", Value::is_i64),
    ];
    check_fields("event", object, &common, problems);
    match object.get("ts").and_then(Value::as_str) {
        Some(ts) => check_timestamp("ts", ts, problems),
        None => problems.push(format!("event without ts: {event}")),
    }
    if is_press(event) {
        check_press(object, problems);
    } else {
        check_status(object.get("status"), problems);
    }
}

/// The press fields (upload-v1, "The event").
fn check_press(object: &Map<String, Value>, problems: &mut Vec<String>) {
    let checks: [(&str, FieldCheck); 10] = [
        ("device", Value::is_string),
        ("model", Value::is_string),
        ("unit", |value| {
            value.as_str().is_some_and(|unit| {
                unit.len() == 8 && unit.chars().all(|digit| digit.is_ascii_hexdigit())
            })
        }),
        ("key", |value| {
            value.as_u64().is_some_and(|key| (1..=16).contains(&key))
        }),
        ("answer", |value| value.is_string() || value.is_null()),
        ("question", |value| value.is_string() || value.is_null()),
        ("seq", Value::is_u64),
        ("rssi", |value| value.is_i64() || value.is_null()),
        ("battery", |value| value.is_u64() || value.is_null()),
        ("suppressed", Value::is_boolean),
    ];
    check_fields("event", object, &checks, problems);
}

/// The `status` object of an agent status event (upload-v1, "Agent status
/// events"): its keys exactly, each with its type, the words from their
/// lists, the timestamps RFC 3339 with milliseconds.
fn check_status(status: Option<&Value>, problems: &mut Vec<String>) {
    let Some(status) = status.and_then(Value::as_object) else {
        problems.push(format!("status is not an object: {status:?}"));
        return;
    };
    check_keys("status", status, &STATUS_FIELDS, problems);
    let checks: [(&str, FieldCheck); 8] = [
        ("reason", |value| one_of(value, &STATUS_REASONS)),
        ("version", |value| value.as_str() == Some(VERSION)),
        ("started_at", Value::is_string),
        ("health", |value| one_of(value, &HEALTHS)),
        ("devices", Value::is_array),
        ("sinks", Value::is_array),
        ("free_disk_bytes", Value::is_u64),
        ("store_bytes", Value::is_u64),
    ];
    check_fields("status", status, &checks, problems);
    if let Some(started_at) = status.get("started_at").and_then(Value::as_str) {
        check_timestamp("status.started_at", started_at, problems);
    }
    for device in status
        .get("devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(device) = device.as_object() else {
            problems.push(format!("status.devices holds a non-object: {device}"));
            continue;
        };
        check_keys("status.devices[]", device, &STATUS_DEVICE_FIELDS, problems);
        let checks: [(&str, FieldCheck); 6] = [
            ("name", |value| {
                value.as_str().is_some_and(|name| !name.is_empty())
            }),
            ("model", |value| {
                value.as_str().is_some_and(|model| !model.is_empty())
            }),
            ("state", |value| one_of(value, &DEVICE_STATES)),
            ("presses", Value::is_u64),
            ("bad_frames", Value::is_u64),
            ("last_frame_at", |value| {
                value.is_string() || value.is_null()
            }),
        ];
        check_fields("status.devices[]", device, &checks, problems);
        if let Some(at) = device.get("last_frame_at").and_then(Value::as_str) {
            check_timestamp("status.devices[].last_frame_at", at, problems);
        }
    }
    for sink in status
        .get("sinks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(sink) = sink.as_object() else {
            problems.push(format!("status.sinks holds a non-object: {sink}"));
            continue;
        };
        check_keys("status.sinks[]", sink, &STATUS_SINK_FIELDS, problems);
        let checks: [(&str, FieldCheck); 3] = [
            ("name", |value| {
                value.as_str().is_some_and(|name| !name.is_empty())
            }),
            ("state", |value| one_of(value, &SINK_STATES)),
            ("pending", Value::is_u64),
        ];
        check_fields("status.sinks[]", sink, &checks, problems);
    }
}

/// `object` has exactly the keys `expected`.
fn check_keys(
    what: &str,
    object: &Map<String, Value>,
    expected: &[&str],
    problems: &mut Vec<String>,
) {
    let mut found: Vec<&str> = object.keys().map(String::as_str).collect();
    let mut expected = expected.to_vec();
    found.sort_unstable();
    expected.sort_unstable();
    if found != expected {
        problems.push(format!("{what} fields {found:?}, expected {expected:?}"));
    }
}

/// Each named field of `object` is present and passes its check.
fn check_fields(
    what: &str,
    object: &Map<String, Value>,
    checks: &[(&str, FieldCheck)],
    problems: &mut Vec<String>,
) {
    for (name, test) in checks {
        if !object.get(*name).is_some_and(test) {
            problems.push(format!("{what} field {name}: {:?}", object.get(*name)));
        }
    }
}

/// A string, one of `words`.
fn one_of(value: &Value, words: &[&str]) -> bool {
    value.as_str().is_some_and(|word| words.contains(&word))
}

/// Whether the event is a press (`type = "press"`).
pub fn is_press(event: &Value) -> bool {
    event.get("type").and_then(Value::as_str) == Some(PRESS)
}

/// Whether the event is an agent status event (`type = "agent_status"`).
pub fn is_status(event: &Value) -> bool {
    event.get("type").and_then(Value::as_str) == Some(AGENT_STATUS)
}

/// `2026-11-22T10:15:03.214Z`: RFC 3339, UTC, milliseconds.
fn check_timestamp(what: &str, text: &str, problems: &mut Vec<String>) {
    let shaped = text.len() == 24 && text.ends_with('Z') && text.as_bytes()[19] == b'.';
    if !shaped || chrono::DateTime::parse_from_rfc3339(text).is_err() {
        problems.push(format!(
            "{what} {text:?} is not RFC 3339 UTC with milliseconds"
        ));
    }
}

/// The event's id ("" when it has none: a problem already recorded).
pub fn event_id(event: &Value) -> &str {
    event.get("id").and_then(Value::as_str).unwrap_or("")
}

/// The event as the store holds it: the received object without the
/// fields the `ndjson` format adds.
pub fn event_fields(event: &Value) -> Map<String, Value> {
    let mut object = event.as_object().cloned().unwrap_or_default();
    object.remove("agent_id");
    object.remove("location");
    object
}

/// The listener: plain TCP, each connection with its kill switch.
struct FaultListener {
    inner: TcpListener,
    accepted: Arc<AtomicUsize>,
}

/// A connection as the handler sees it (axum's "connect info"): the switch
/// that makes its socket fail.
#[derive(Clone, Debug, Default)]
struct Connection {
    dropped: Arc<AtomicBool>,
}

impl Connection {
    /// Makes the socket fail: hyper cannot write the response this returns
    /// and closes the connection, which sends a reset (`SO_LINGER` 0).
    fn drop_without_answer(&self) -> Response {
        self.dropped.store(true, Ordering::SeqCst);
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

struct FaultStream {
    inner: TcpStream,
    dropped: Arc<AtomicBool>,
}

impl FaultStream {
    fn check(&self) -> io::Result<()> {
        if self.dropped.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        Ok(())
    }
}

impl Listener for FaultListener {
    type Io = FaultStream;
    type Addr = Connection;

    async fn accept(&mut self) -> (FaultStream, Connection) {
        loop {
            let Ok((stream, _)) = self.inner.accept().await else {
                // Out of file descriptors or similar: try again shortly.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            // Best effort: without it a dropped connection ends with FIN,
            // which the agent sees as an incomplete answer all the same.
            let _ = stream.set_zero_linger();
            self.accepted.fetch_add(1, Ordering::SeqCst);
            let connection = Connection::default();
            let io = FaultStream {
                inner: stream,
                dropped: Arc::clone(&connection.dropped),
            };
            return (io, connection);
        }
    }

    fn local_addr(&self) -> io::Result<Connection> {
        self.inner.local_addr().map(|_| Connection::default())
    }
}

impl Connected<IncomingStream<'_, FaultListener>> for Connection {
    fn connect_info(stream: IncomingStream<'_, FaultListener>) -> Connection {
        stream.remote_addr().clone()
    }
}

impl AsyncRead for FaultStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_read(context, buffer)
    }
}

impl AsyncWrite for FaultStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write(context, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_shutdown(context)
    }
}

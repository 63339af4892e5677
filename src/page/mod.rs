//! `[http]`: the local page, `/health` and `/metrics`, served by the
//! daemon itself on one listener (`docs/interface.md`).
//!
//! Read-only: every answer is read from the store through one
//! [`AsyncReader`] (the blocking pool), and the writer thread is only asked
//! how it is. Live presses come from one follower task woken by the
//! writer's committed-seqno watch, which reads the new events and offers
//! them on a broadcast channel: neither the watch nor the broadcast ever
//! waits for a reader, so a slow browser loses presses from its live list
//! (it is told to reload), never slows a driver or the writer.
//!
//! Without a token only loopback peers are served (`config check` refuses a
//! non-loopback `listen` without one); with a token every path needs
//! `Authorization: Bearer <token>`, compared in constant time. Nothing
//! served holds a secret: the status carries none, and credentials in a
//! URL inside an error text are cut out before it leaves.

pub mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::sync::{broadcast, watch, Mutex};
use tokio_util::sync::CancellationToken;

use crate::config::{PageSettings, Settings};
use crate::event::{local_offset_minutes, PressFields};
use crate::status::{self, Health, Status};
use crate::store::blocking::AsyncReader;
use crate::store::press_counts::{Bucket, Counts, Estimate};
use crate::store::writer::WriterHealth;
use crate::store::{Store, StoreError, StoreHandle};

/// Why the page cannot be served; the agent does not start.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error(
        "cannot listen on {address} for the local page ([http] listen): {source}{}",
        bind_hint(source)
    )]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("[http] {0}")]
    Token(String),
}

fn bind_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another program, or another agent, uses the port: choose another listen port)"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            " (no network interface has this address: use 127.0.0.1 or one of this machine's addresses)"
        }
        std::io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges: use 8587)",
        _ => "",
    }
}

/// The page's listener and token, made before anything starts: a port in
/// use or an unreadable token file stops the start with one message.
pub struct Listener {
    listener: tokio::net::TcpListener,
    token: Option<String>,
}

impl Listener {
    pub async fn bind(settings: &PageSettings) -> Result<Listener, PageError> {
        let token =
            crate::sink::secret::resolve(&settings.token, "token").map_err(PageError::Token)?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|source| PageError::Bind {
                address: settings.listen,
                source,
            })?;
        Ok(Listener { listener, token })
    }
}

/// Most presses the live list keeps for a browser that is behind; past
/// this it is told it missed some.
const LIVE_BACKLOG: usize = 256;
/// Most events read at once by the follower.
const FOLLOW_BATCH: usize = 500;
/// Days in the page's chart, today included.
const CHART_DAYS: i64 = 30;
/// Days in "this week", today included.
const WEEK_DAYS: i64 = 7;
/// How long the writer thread may take to say how it is.
const WRITER_ANSWER: Duration = Duration::from_secs(2);
/// How long in-flight answers may take once the agent stops.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What every answer reads from.
struct Shared {
    settings: watch::Receiver<Arc<Settings>>,
    store: StoreHandle,
    reader: Mutex<AsyncReader>,
    token: Option<String>,
    presses: broadcast::Sender<Arc<str>>,
    stop: CancellationToken,
}

/// Serves the page until `stop` is cancelled. `settings` follows the
/// running configuration (a reload shows new devices and sinks). A store
/// that cannot be read is an error of the answer, never of the agent.
pub async fn serve(
    listener: Listener,
    settings: watch::Receiver<Arc<Settings>>,
    store: StoreHandle,
    stop: CancellationToken,
) {
    let data_dir = settings.borrow().agent.data_dir.clone();
    let (reader, follower_reader) = match tokio::try_join!(
        AsyncReader::open(data_dir.clone()),
        AsyncReader::open(data_dir)
    ) {
        Ok(readers) => readers,
        Err(error) => {
            tracing::error!("the local page is not served: cannot read the store: {error}");
            return;
        }
    };
    let (presses, _) = broadcast::channel(LIVE_BACKLOG);
    let follower = tokio::spawn(follow_presses(
        follower_reader,
        store.committed_seqno(),
        presses.clone(),
        stop.clone(),
    ));
    let shared = Arc::new(Shared {
        settings,
        store,
        reader: Mutex::new(reader),
        token: listener.token,
        presses,
        stop: stop.clone(),
    });
    let router = Router::new()
        .route("/", get(index))
        .route("/page.css", get(stylesheet))
        .route("/page.js", get(script))
        .route("/api/status", get(api_status))
        .route("/api/report", get(api_report))
        .route("/api/events", get(api_events))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .layer(middleware::from_fn_with_state(shared.clone(), admit))
        .with_state(shared);
    if let Ok(address) = listener.listener.local_addr() {
        tracing::info!(%address, "the local page, /health and /metrics are served");
    }
    let stopped = stop.clone();
    let server = axum::serve(
        listener.listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stopped.cancelled().await });
    let serving = tokio::spawn(async move { server.await });
    stop.cancelled().await;
    // Live streams end with `stop`; a request still reading the store gets
    // a moment, then the listener goes.
    let abort = serving.abort_handle();
    match tokio::time::timeout(STOP_GRACE, serving).await {
        Ok(Ok(Err(error))) => tracing::warn!("the local page: {error}"),
        Ok(_) => {}
        Err(_) => abort.abort(),
    }
    let _ = follower.await;
}

/// Only loopback peers without a token; with one, the right bearer token.
async fn admit(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    match &shared.token {
        None if !peer.ip().is_loopback() => {
            (StatusCode::FORBIDDEN, "only this machine may read the page\n").into_response()
        }
        Some(token) if !authorized(request.headers(), token) => (
            StatusCode::UNAUTHORIZED,
            // Basic makes a browser ask; scrapers send Bearer.
            [(header::WWW_AUTHENTICATE, "Basic realm=\"epm-agent\", charset=\"UTF-8\"")],
            "the [http] token is required: Authorization: Bearer <token> (a browser: any user name, the token as the password)\n",
        )
            .into_response(),
        _ => next.run(request).await,
    }
}

/// `Authorization: Bearer <token>` (scrapers, scripts), or Basic with the
/// token as the password (a browser asks for it and then sends it with
/// every request, the live stream's too). Compared in constant time: how
/// long the comparison takes says nothing about how much of a guess was
/// right.
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let given = if let Some(bearer) = value.strip_prefix("Bearer ") {
        bearer.as_bytes().to_vec()
    } else if let Some(basic) = value.strip_prefix("Basic ") {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .unwrap_or_default();
        match decoded.iter().position(|byte| *byte == b':') {
            Some(colon) => decoded[colon + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    bool::from(given.ct_eq(token.as_bytes()))
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("page.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("page.js"),
    )
}

async fn api_status(State(shared): State<Arc<Shared>>) -> Response {
    match read_status(&shared).await {
        Ok(status) => axum::Json(status).into_response(),
        Err(error) => unreadable(error),
    }
}

/// 200 while the health is ok or warning, 503 when critical; the status
/// as the body either way.
async fn health(State(shared): State<Arc<Shared>>) -> Response {
    match read_status(&shared).await {
        Ok(status) => {
            let code = match status.health {
                Health::Ok | Health::Warning => StatusCode::OK,
                Health::Critical => StatusCode::SERVICE_UNAVAILABLE,
            };
            (code, axum::Json(status)).into_response()
        }
        Err(error) => unreadable(error),
    }
}

async fn metrics_text(State(shared): State<Arc<Shared>>) -> Response {
    match read_status(&shared).await {
        Ok(status) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            )],
            metrics::render(&status, env!("CARGO_PKG_VERSION")),
        )
            .into_response(),
        Err(error) => unreadable(error),
    }
}

async fn api_report(State(shared): State<Arc<Shared>>) -> Response {
    let now = Utc::now();
    let offset_min = local_offset_minutes();
    let read = shared
        .reader
        .lock()
        .await
        .read(move |store| read_report(store, now, offset_min))
        .await;
    match read {
        Ok(report) => axum::Json(report).into_response(),
        Err(error) => unreadable(error),
    }
}

/// A store that cannot be read is the answer's failure: 503, and why.
fn unreadable(error: StoreError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot read the store: {error}\n"),
    )
        .into_response()
}

/// The status as `status --json` shows it, with the writer's own word on
/// whether the store takes writes, and no credentials in its texts.
async fn read_status(shared: &Shared) -> Result<Status, StoreError> {
    let settings = shared.settings.borrow().clone();
    // A writer that answers nothing is as bad as one whose commits fail.
    let writer = match tokio::time::timeout(WRITER_ANSWER, shared.store.health()).await {
        Ok(answer) => answer?,
        Err(_) => WriterHealth {
            failing_since: Some(Utc::now()),
            last_error: Some(format!(
                "the store writer has not answered for {} s",
                WRITER_ANSWER.as_secs()
            )),
            ..WriterHealth::default()
        },
    };
    let mut status = shared
        .reader
        .lock()
        .await
        .read(move |store| status::read_daemon_status(&settings, store, Utc::now(), &writer))
        .await?;
    redact_status(&mut status);
    Ok(status)
}

/// Error texts can quote a URL; one with `user:password@` loses them.
fn redact_status(status: &mut Status) {
    let texts = status
        .problems
        .iter_mut()
        .chain(
            status
                .devices
                .iter_mut()
                .filter_map(|device| device.last_error.as_mut()),
        )
        .chain(
            status
                .sinks
                .iter_mut()
                .filter_map(|sink| sink.last_error.as_mut()),
        )
        .chain(status.store.last_write_error.as_mut());
    for text in texts {
        *text = redact_credentials(text);
    }
}

/// `https://user:secret@host/` → `https://***@host/`, wherever a URL
/// stands in `text`.
pub fn redact_credentials(text: &str) -> String {
    let mut redacted = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(index) = rest.find("://") {
        let (before, after) = rest.split_at(index + 3);
        redacted.push_str(before);
        let authority_end = after
            .find(|character: char| {
                character == '/'
                    || character == '?'
                    || character == '#'
                    || character.is_whitespace()
            })
            .unwrap_or(after.len());
        match after[..authority_end].rfind('@') {
            Some(at) => {
                redacted.push_str("***");
                rest = &after[at..];
            }
            None => rest = after,
        }
    }
    redacted.push_str(rest);
    redacted
}

/// Presses as they are committed, as server-sent events (`press`, its
/// fields and id as JSON); `missed` when this browser fell behind.
async fn api_events(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let receiver = shared.presses.subscribe();
    let stop = shared.stop.clone();
    let stream =
        futures_util::stream::unfold((receiver, stop), |(mut receiver, stop)| async move {
            let event = tokio::select! {
                _ = stop.cancelled() => return None,
                received = receiver.recv() => match received {
                    Ok(press) => SseEvent::default().event("press").data(&*press),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        SseEvent::default().event("missed").data(missed.to_string())
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            Some((Ok(event), (receiver, stop)))
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// A press on the live list.
#[derive(Serialize)]
struct LivePress<'a> {
    id: &'a str,
    ts: &'a str,
    #[serde(flatten)]
    fields: &'a PressFields,
}

/// Reads each commit's new presses and offers them to the live streams.
/// With no browser listening nothing is read: the cursor jumps ahead.
async fn follow_presses(
    mut reader: AsyncReader,
    mut committed: watch::Receiver<i64>,
    presses: broadcast::Sender<Arc<str>>,
    stop: CancellationToken,
) {
    let mut after = *committed.borrow_and_update();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = committed.changed() => if changed.is_err() { return },
        }
        let newest = *committed.borrow_and_update();
        if presses.receiver_count() == 0 {
            after = newest;
            continue;
        }
        while after < newest {
            let from = after;
            let events = match reader
                .read(move |store| store.events_after(from, FOLLOW_BATCH))
                .await
            {
                Ok(events) => events,
                Err(error) => {
                    tracing::warn!("the local page's live presses: cannot read the store: {error}");
                    after = newest;
                    break;
                }
            };
            let Some(last) = events.last() else {
                break;
            };
            after = last.seqno;
            for stored in &events {
                let Some(fields) = stored.event.press() else {
                    continue;
                };
                let line = LivePress {
                    id: &stored.event.id,
                    ts: &stored.event.ts,
                    fields,
                };
                if let Ok(json) = serde_json::to_string(&line) {
                    // No receiver left is not an error: the next commit looks again.
                    let _ = presses.send(json.into());
                }
            }
        }
    }
}

/// Today's and this week's IEL, and one per day for the chart.
#[derive(Debug, Serialize)]
pub struct Report {
    pub today: Option<IndexValue>,
    pub week: Option<IndexValue>,
    /// Oldest first, every day of the chart (`iel` null on a day without
    /// answers).
    pub days: Vec<DayValue>,
}

/// An index with its 95 % interval and the answers it is computed over.
#[derive(Debug, Serialize)]
pub struct IndexValue {
    pub value: f64,
    pub low: f64,
    pub high: f64,
    pub answers: u64,
    pub few_answers: bool,
}

#[derive(Debug, Serialize)]
pub struct DayValue {
    /// The local date, `YYYY-MM-DD`.
    pub date: String,
    pub iel: Option<IndexValue>,
}

impl From<Estimate> for IndexValue {
    fn from(estimate: Estimate) -> IndexValue {
        IndexValue {
            value: estimate.value,
            low: estimate.low,
            high: estimate.high,
            answers: estimate.answers,
            few_answers: estimate.few_answers,
        }
    }
}

/// Days since 1970-01-01 of 0001-01-01 in chrono's count from the common era.
const EPOCH_DAYS_FROM_CE: i64 = 719_163;
const DAY_MS: i64 = 86_400_000;

/// The report as of `now`, for a machine `offset_min` minutes from UTC
/// (each press counts on its own local day).
pub fn read_report(
    store: &Store,
    now: DateTime<Utc>,
    offset_min: i32,
) -> Result<Report, StoreError> {
    let local_ms = now.timestamp_millis() + i64::from(offset_min) * 60_000;
    let today = local_ms.div_euclid(DAY_MS);
    let first_day = today - (CHART_DAYS - 1);
    // A day early: presses of another offset can belong to the first day.
    let since_ms = (first_day - 1) * DAY_MS;
    let mut per_day = vec![Counts::default(); CHART_DAYS as usize];
    for (bucket, counts) in store.press_counts(Some(since_ms), None, Bucket::LocalDay)? {
        let rusqlite::types::Value::Integer(day) = bucket else {
            continue;
        };
        if let Some(slot) = usize::try_from(day - first_day)
            .ok()
            .and_then(|index| per_day.get_mut(index))
        {
            slot.add(&counts);
        }
    }
    let mut week = Counts::default();
    for counts in &per_day[(CHART_DAYS - WEEK_DAYS) as usize..] {
        week.add(counts);
    }
    let days = per_day
        .iter()
        .zip(first_day..)
        .map(|(counts, day)| DayValue {
            date: NaiveDate::from_num_days_from_ce_opt((day + EPOCH_DAYS_FROM_CE) as i32)
                .map(|date| date.to_string())
                .unwrap_or_default(),
            iel: counts.iel_estimate().map(IndexValue::from),
        })
        .collect();
    Ok(Report {
        today: per_day
            .last()
            .and_then(Counts::iel_estimate)
            .map(IndexValue::from),
        week: week.iel_estimate().map(IndexValue::from),
        days,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_cut_out_and_nothing_else_changes() {
        let check = |text: &str, expected: &str| assert_eq!(redact_credentials(text), expected);
        check(
            "error sending request for url (https://user:s3cret@example.com/v1?x=1)",
            "error sending request for url (https://***@example.com/v1?x=1)",
        );
        check(
            "postgres://agent:pw@db:5432/epm and mqtts://broker:8883",
            "postgres://***@db:5432/epm and mqtts://broker:8883",
        );
        check("https://example.com/a@b", "https://example.com/a@b");
        check("no url here", "no url here");
        check("http://a:b@c", "http://***@c");
    }

    #[test]
    fn a_token_is_checked_whole_as_bearer_or_as_a_basic_password() {
        let check = |authorization: Option<&str>, expected: bool| {
            let mut headers = HeaderMap::new();
            if let Some(value) = authorization {
                headers.insert(
                    header::AUTHORIZATION,
                    HeaderValue::from_str(value).expect("a header value"),
                );
            }
            assert_eq!(authorized(&headers, "t0ken"), expected, "{authorization:?}");
        };
        check(Some("Bearer t0ken"), true);
        check(Some("Bearer t0ke"), false);
        check(Some("Bearer t0ken2"), false);
        check(Some("Bearer "), false);
        check(Some("t0ken"), false);
        check(Some("Basic t0ken"), false);
        // base64("shop:t0ken"), base64("shop:t0ke"), base64("t0ken")
        check(Some("Basic c2hvcDp0MGtlbg=="), true);
        check(Some("Basic c2hvcDp0MGtl"), false);
        check(Some("Basic dDBrZW4="), false);
        check(None, false);
    }

    #[test]
    fn the_report_counts_each_press_on_its_local_day_and_the_week_sums_seven() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let store = Store::open_writer(dir.path()).expect("a store");
        let now = DateTime::parse_from_rfc3339("2026-03-10T12:00:00Z")
            .expect("a time")
            .with_timezone(&Utc);
        // (days before today, answer): today 2 yes 1 no; 3 days ago 1 no;
        // 8 days ago (outside the week) 1 yes.
        let presses = [(0, "yes"), (0, "yes"), (0, "no"), (3, "no"), (8, "yes")];
        for (index, (days_ago, answer)) in presses.iter().enumerate() {
            let at = now - chrono::Duration::days(*days_ago);
            store
                .insert_fixture_event(&crate::event::Event {
                    id: format!("01J{index:023}"),
                    ts: crate::event::format_timestamp(at),
                    tz_offset_min: 60,
                    body: crate::event::EventBody::Press(PressFields {
                        device: "entrance".into(),
                        model: "prolan-501".into(),
                        unit: "301A0002".into(),
                        key: 1,
                        answer: Some((*answer).into()),
                        question: None,
                        seq: index as u16,
                        rssi: None,
                        battery: None,
                        suppressed: false,
                    }),
                })
                .expect("a press");
        }
        let report = read_report(&store, now, 60).expect("a report");
        let today = report.today.expect("today has answers");
        assert_eq!((today.answers, today.value.round()), (3, 33.0));
        assert!(today.few_answers && today.low < today.value && today.value < today.high);
        let week = report.week.expect("the week has answers");
        assert_eq!((week.answers, week.value), (4, 0.0));
        assert_eq!(report.days.len(), CHART_DAYS as usize);
        let last = report.days.last().expect("days");
        assert_eq!(last.date, "2026-03-10");
        assert_eq!(
            report.days[(CHART_DAYS - 1 - 8) as usize]
                .iel
                .as_ref()
                .map(|iel| iel.value),
            Some(100.0)
        );
        assert!(report.days[(CHART_DAYS - 2) as usize].iel.is_none());
    }
}

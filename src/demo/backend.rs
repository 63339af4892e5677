//! The demo's reporting backend: an HTTP server on 127.0.0.1 (a port the
//! system picks) that takes upload-v1 `json` batches (`shared/spec/
//! upload-v1.md`), gzipped or not, and keeps the first copy of each event
//! id, so however often a batch is retried nothing is counted twice. It
//! counts the kept presses per answer (suppressed ones apart) for the
//! demo's summary, and tells the live view about every request it answers.
//!
//! With `flaky`, about one request in five is answered 503 with
//! `Retry-After: 1`: half of them before the batch is read, half after its
//! events were kept (as if the answer got lost on the way back), so the
//! retry shows its copies being recognised and ignored.
//!
//! It is a demonstration, not a product: no authentication, no storage
//! beyond memory.

use std::collections::HashSet;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Tally;

/// Where batches are posted, after `http://127.0.0.1:<port>`.
pub const PATH: &str = "/api/v1/batches";

/// A running backend; [`Backend::stop`] ends it.
pub struct Backend {
    url: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
    server: JoinHandle<io::Result<()>>,
}

/// What the backend has taken so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Requests answered, whatever the answer.
    pub requests: u64,
    /// Requests answered 503 (flaky mode).
    pub refused: u64,
    /// Events received, every copy counted.
    pub copies_received: u64,
    /// Copies of an event id already kept, ignored.
    pub copies_ignored: u64,
    /// The kept presses.
    pub tally: Tally,
}

/// One answered request, for the live view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// 200: `new` of the batch's `events` were not seen before; `tally`
    /// is what the backend holds after it.
    Accepted {
        batch_id: String,
        events: usize,
        new: usize,
        tally: Tally,
    },
    /// 503 (flaky mode); `kept`: after keeping the events, so the retry
    /// brings copies.
    Refused {
        batch_id: String,
        events: usize,
        kept: bool,
    },
    /// 4xx: the request does not follow the contract.
    Rejected { status: u16, reason: String },
}

impl Backend {
    /// Starts listening on 127.0.0.1; every answered request is also sent
    /// to the returned receiver.
    pub async fn start(flaky: bool) -> io::Result<(Backend, mpsc::UnboundedReceiver<Notice>)> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot listen on 127.0.0.1 for the demo backend: {error}"),
                )
            })?;
        let address = listener.local_addr()?;
        let (notices, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            flaky,
            notices,
            inner: Mutex::new(Inner::default()),
        });
        let router = Router::new()
            .route(PATH, post(receive_batch))
            .with_state(Arc::clone(&shared));
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
        });
        let backend = Backend {
            url: format!("http://{address}{PATH}"),
            shared,
            stop,
            server,
        };
        Ok((backend, receiver))
    }

    /// Where the agent posts its batches.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops accepting, lets requests being answered finish, and returns
    /// what was taken.
    pub async fn stop(self) -> io::Result<Snapshot> {
        let Backend {
            shared,
            stop,
            server,
            ..
        } = self;
        stop.cancel();
        match server.await {
            Ok(served) => served?,
            Err(error) => {
                return Err(io::Error::other(format!(
                    "the demo backend failed: {error}"
                )))
            }
        }
        let snapshot = shared.lock().snapshot.clone();
        Ok(snapshot)
    }
}

/// A decompressed body is never allowed to grow beyond this.
const MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
/// Of the requests in flaky mode: this share is refused before the batch
/// is read, as much again after its events were kept.
const FLAKY_SHARE_EACH: f64 = 0.1;

struct Shared {
    flaky: bool,
    notices: mpsc::UnboundedSender<Notice>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Every event id kept.
    seen: HashSet<String>,
    snapshot: Snapshot,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding it; should it, the counts are still good.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self, notice: Notice) {
        // The view may have stopped listening already; the answer stands.
        let _ = self.notices.send(notice);
    }
}

/// The part of a `json` batch the backend reads; other fields are ignored.
#[derive(Deserialize)]
struct BatchBody {
    schema: String,
    batch_id: String,
    events: Vec<EventBody>,
}

#[derive(Deserialize)]
struct EventBody {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    /// Press fields; absent from other types (`agent_status`).
    #[serde(default)]
    answer: Option<String>,
    #[serde(default)]
    suppressed: bool,
}

async fn receive_batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let batch = match parse_batch(&headers, &body) {
        Ok(batch) => batch,
        Err((status, reason)) => {
            shared.lock().snapshot.requests += 1;
            shared.notify(Notice::Rejected {
                status: status.as_u16(),
                reason: reason.clone(),
            });
            return (status, reason).into_response();
        }
    };
    let roll = if shared.flaky { fastrand::f64() } else { 1.0 };
    if roll < FLAKY_SHARE_EACH {
        return refuse(&shared, batch, false);
    }
    let (new, tally) = {
        let mut inner = shared.lock();
        let inner = &mut *inner;
        let mut new = 0;
        for event in &batch.events {
            inner.snapshot.copies_received += 1;
            if !inner.seen.insert(event.id.clone()) {
                inner.snapshot.copies_ignored += 1;
                continue;
            }
            new += 1;
            // A backend ignores the event types it does not know.
            if event.event_type == "press" {
                inner
                    .snapshot
                    .tally
                    .count(event.answer.as_deref(), event.suppressed);
            }
        }
        (new, inner.snapshot.tally)
    };
    if roll < 2.0 * FLAKY_SHARE_EACH {
        return refuse(&shared, batch, true);
    }
    shared.lock().snapshot.requests += 1;
    shared.notify(Notice::Accepted {
        batch_id: batch.batch_id,
        events: batch.events.len(),
        new,
        tally,
    });
    StatusCode::OK.into_response()
}

fn refuse(shared: &Shared, batch: BatchBody, kept: bool) -> Response {
    {
        let mut inner = shared.lock();
        inner.snapshot.requests += 1;
        inner.snapshot.refused += 1;
    }
    shared.notify(Notice::Refused {
        batch_id: batch.batch_id,
        events: batch.events.len(),
        kept,
    });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(RETRY_AFTER, "1")],
        "the demo backend is flaky on purpose: try again in a second",
    )
        .into_response()
}

/// The batch of a request, or the status and reason to refuse it with.
fn parse_batch(headers: &HeaderMap, body: &[u8]) -> Result<BatchBody, (StatusCode, String)> {
    let header = |name| {
        headers
            .get(name)
            .and_then(|value: &axum::http::HeaderValue| value.to_str().ok())
            .unwrap_or("")
    };
    let content_type = header(CONTENT_TYPE);
    if !content_type.starts_with("application/json") {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type \"{content_type}\": this backend takes the json format only"),
        ));
    }
    let plain = match header(CONTENT_ENCODING) {
        "" | "identity" => body.to_vec(),
        "gzip" => {
            let mut plain = Vec::with_capacity(body.len() * 4);
            flate2::read::GzDecoder::new(body)
                .take(MAX_BODY_BYTES + 1)
                .read_to_end(&mut plain)
                .map_err(|error| (StatusCode::BAD_REQUEST, format!("bad gzip body: {error}")))?;
            if plain.len() as u64 > MAX_BODY_BYTES {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over {MAX_BODY_BYTES} bytes unpacked"),
                ));
            }
            plain
        }
        other => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content encoding \"{other}\" (expected gzip or none)"),
            ))
        }
    };
    let batch: BatchBody = serde_json::from_slice(&plain).map_err(|error| {
        (
            StatusCode::BAD_REQUEST,
            format!("not an upload-v1 batch: {error}"),
        )
    })?;
    if batch.schema != "epm-agent.batch.v1" {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("schema \"{}\" (expected epm-agent.batch.v1)", batch.schema),
        ));
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write;

    fn batch(batch_id: &str, events: &[(&str, Option<&str>, bool)]) -> Vec<u8> {
        let events: Vec<serde_json::Value> = events
            .iter()
            .map(|(id, answer, suppressed)| {
                serde_json::json!({
                    "id": id, "type": "press", "ts": "2026-11-22T10:15:03.214Z",
                    "tz_offset_min": 180, "device": "entrance", "model": "prolan-501",
                    "unit": "301A0002", "key": 1, "answer": answer, "question": "recommend",
                    "seq": 258, "rssi": -61, "battery": 87, "suppressed": suppressed,
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schema": "epm-agent.batch.v1",
            "agent": {"id": "demo", "location": null, "version": "0.1.0"},
            "batch_id": batch_id,
            "sent_at": "2026-11-22T10:15:04.001Z",
            "events": events,
        }))
        .expect("serialise")
    }

    fn gzip(plain: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(plain).expect("compress");
        encoder.finish().expect("compress")
    }

    /// Straight to 127.0.0.1, whatever proxy the environment names.
    fn test_client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("an HTTP client")
    }

    async fn post(url: &str, body: Vec<u8>, gzipped: bool) -> u16 {
        let mut request = test_client()
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        if gzipped {
            request = request.header("content-encoding", "gzip");
        }
        request.send().await.expect("post").status().as_u16()
    }

    #[tokio::test]
    async fn a_retried_batch_is_counted_once() {
        let (backend, mut notices) = Backend::start(false).await.expect("start");
        let first = batch(
            "B1",
            &[
                ("E1", Some("yes"), false),
                ("E2", Some("no"), false),
                ("E3", Some("yes"), true),
            ],
        );
        assert_eq!(post(backend.url(), first.clone(), false).await, 200);
        assert_eq!(post(backend.url(), gzip(&first), true).await, 200);
        let second = batch(
            "B2",
            &[("E3", Some("yes"), true), ("E4", Some("neutral"), false)],
        );
        assert_eq!(post(backend.url(), second, false).await, 200);

        let snapshot = backend.stop().await.expect("stop");
        let expected = Tally {
            yes: 1,
            neutral: 1,
            no: 1,
            other: 0,
            suppressed: 1,
        };
        assert_eq!(snapshot.tally, expected);
        assert_eq!(snapshot.copies_received, 8);
        assert_eq!(snapshot.copies_ignored, 4);
        let mut news = Vec::new();
        while let Ok(notice) = notices.try_recv() {
            if let Notice::Accepted { new, .. } = notice {
                news.push(new);
            }
        }
        assert_eq!(news, [3, 0, 1]);
    }

    #[tokio::test]
    async fn what_is_not_a_json_batch_is_refused() {
        let (backend, _notices) = Backend::start(false).await.expect("start");
        assert_eq!(
            post(backend.url(), b"{\"schema\": 1}".to_vec(), false).await,
            400
        );
        assert_eq!(post(backend.url(), b"not gzip".to_vec(), true).await, 400);
        let response = test_client()
            .post(backend.url())
            .header("content-type", "application/x-ndjson")
            .body("{}\n")
            .send()
            .await
            .expect("post");
        assert_eq!(response.status().as_u16(), 415);
        let snapshot = backend.stop().await.expect("stop");
        assert_eq!(snapshot.tally, Tally::default());
        assert_eq!(snapshot.requests, 3);
    }
}

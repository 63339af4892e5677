//! HTTP sink: one POST per batch, exactly as `docs/upload.md`
//! says — `json` (one batch object) or `ndjson` (one event per line), the
//! contract's headers with `Idempotency-Key` = batch id, optional gzip,
//! rustls for TLS (an extra CA file for private backends), a proxy from the
//! config or the usual environment variables. The bearer token is marked
//! sensitive and never printed.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT,
};

use super::policy::Outcome;
use super::{batch_document, secret, AgentInfo, SinkError};
use crate::config::{HttpFormat, HttpSinkSettings, SecretSource};
use crate::event::{format_timestamp, NdjsonLine};
use crate::store::StoredEvent;

pub struct HttpSink {
    name: String,
    client: reqwest::Client,
    url: String,
    format: HttpFormat,
    gzip: bool,
    token_source: SecretSource,
    /// The resolved `Authorization` value; `None` when no token is set up
    /// or it could not be read (then `token_error` says why).
    authorization: Option<HeaderValue>,
    token_error: Option<String>,
    agent: AgentInfo,
}

impl HttpSink {
    pub fn new(
        name: &str,
        settings: &HttpSinkSettings,
        agent: AgentInfo,
    ) -> Result<HttpSink, SinkError> {
        let setup = |message: String| SinkError::Setup {
            sink: name.to_string(),
            message,
        };
        let mut builder = reqwest::Client::builder()
            .user_agent(format!("epm-agent/{}", agent.version))
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            // A redirect would turn the POST into a GET: report it instead.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(false);
        if !needs_tls(&settings.url, settings.proxy.is_some(), |name| {
            std::env::var_os(name).is_some_and(|value| !value.is_empty())
        }) {
            // Plain HTTP straight to the backend: no certificate is ever
            // checked, so the system's trust store is not read and kept
            // (about 0.3 MB that an idle agent would hold for nothing).
            builder = builder.tls_built_in_root_certs(false);
        }
        if let Some(ca_file) = &settings.ca_file {
            for certificate in read_certificates(ca_file).map_err(setup)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if let Some(proxy) = &settings.proxy {
            let proxy = reqwest::Proxy::all(proxy)
                .map_err(|error| setup(format!("proxy {proxy}: {error}")))?;
            builder = builder.proxy(proxy);
        }
        let client = builder
            .build()
            .map_err(|error| setup(format!("cannot set up the HTTP client: {error}")))?;
        let mut sink = HttpSink {
            name: name.to_string(),
            client,
            url: settings.url.clone(),
            format: settings.format,
            gzip: settings.gzip,
            token_source: settings.token.clone(),
            authorization: None,
            token_error: None,
            agent,
        };
        sink.refresh_token();
        if let Some(error) = &sink.token_error {
            // Not fatal: the sink pauses and reads the token again later.
            tracing::error!(sink = %sink.name, "{error}");
        }
        Ok(sink)
    }

    /// Why the token cannot be used, if it cannot.
    pub fn token_problem(&self) -> Option<&str> {
        self.token_error.as_deref()
    }

    /// Reads the token again from its source (environment or file).
    pub fn refresh_token(&mut self) {
        match secret::resolve(&self.token_source, "token") {
            Ok(Some(token)) => match HeaderValue::from_str(&format!("Bearer {token}")) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    self.authorization = Some(value);
                    self.token_error = None;
                }
                Err(_) => {
                    self.authorization = None;
                    self.token_error =
                        Some("the token holds characters not allowed in an HTTP header".into());
                }
            },
            Ok(None) => {
                self.authorization = None;
                self.token_error = None;
            }
            Err(error) => {
                self.authorization = None;
                self.token_error = Some(error);
            }
        }
    }

    /// Sends one batch and says how it went.
    pub async fn deliver(&mut self, batch_id: &str, events: &[StoredEvent]) -> Outcome {
        if let Some(error) = &self.token_error {
            return Outcome::Misconfigured(error.clone());
        }
        let (content_type, body) = match self.encode(batch_id, events) {
            Ok(encoded) => encoded,
            Err(error) => return Outcome::Local(format!("cannot encode the batch: {error}")),
        };
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Ok(value) = HeaderValue::from_str(batch_id) {
            headers.insert("idempotency-key", value);
        }
        headers.insert(
            USER_AGENT,
            HeaderValue::from_str(&format!("epm-agent/{}", self.agent.version))
                .unwrap_or(HeaderValue::from_static("epm-agent")),
        );
        if let Some(authorization) = &self.authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        if self.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let response = self
            .client
            .post(&self.url)
            .headers(headers)
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => return Outcome::Transport(describe_error(&error)),
        };
        let code = response.status().as_u16();
        let outcome = if (200..300).contains(&code) {
            if is_web_page(response.headers()) {
                Outcome::WebPage { code }
            } else {
                Outcome::Accepted
            }
        } else {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| parse_retry_after(value, SystemTime::now()));
            Outcome::Status { code, retry_after }
        };
        drain(response).await;
        outcome
    }

    fn encode(
        &self,
        batch_id: &str,
        events: &[StoredEvent],
    ) -> Result<(&'static str, Vec<u8>), std::io::Error> {
        let (content_type, plain) = match self.format {
            HttpFormat::Json => {
                let sent_at = format_timestamp(Utc::now());
                let document = batch_document(&self.agent, batch_id, &sent_at, events)?;
                ("application/json", document)
            }
            HttpFormat::Ndjson => {
                let mut lines = Vec::with_capacity(events.len() * 360);
                for stored in events {
                    let line = NdjsonLine {
                        event: &stored.event,
                        agent_id: &self.agent.id,
                        location: self.agent.location.as_deref(),
                    };
                    serde_json::to_writer(&mut lines, &line)?;
                    lines.push(b'\n');
                }
                ("application/x-ndjson", lines)
            }
        };
        if !self.gzip {
            return Ok((content_type, plain));
        }
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(plain.len() / 4),
            flate2::Compression::fast(),
        );
        encoder.write_all(&plain)?;
        Ok((content_type, encoder.finish()?))
    }
}

/// The most of an answer's body read (and thrown away) so that its
/// connection can carry the next request; a longer body costs the
/// connection instead.
const DRAINED_BODY_LIMIT: usize = 64 * 1024;

/// Reads the body of an answer to its end, up to `DRAINED_BODY_LIMIT`: a
/// body left unread (beyond what hyper read with the headers) keeps hyper
/// from putting the connection back in the pool, and the next batch opens a
/// new one (measured: 50 kB error pages cost a connection each). The answer is already
/// decided by the status, so a body that fails to arrive changes nothing.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read > DRAINED_BODY_LIMIT {
            break;
        }
    }
}

/// A `Content-Type` of `text/html` (any parameters, any case).
/// Whether a client for `url` may meet TLS: an `https` URL, or any proxy
/// (configured, or from the environment variables the client honours; a
/// proxy may itself be `https`). On Windows the system's proxy settings
/// cannot be seen from here, so TLS is always assumed there.
fn needs_tls(url: &str, proxy_configured: bool, env_set: impl Fn(&str) -> bool) -> bool {
    let plain_http = url
        .get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"));
    let proxy_from_env = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .into_iter()
        .any(env_set);
    cfg!(windows) || !plain_http || proxy_configured || proxy_from_env
}

fn is_web_page(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("text/html"))
}

/// `Retry-After`: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The error without the URL (which might carry credentials), with its causes.
fn describe_error(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_body() || error.is_request() {
        "request failed"
    } else {
        "failed"
    };
    let mut message = kind.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The certificates of a PEM file (one CA or a bundle); at least one.
fn read_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path)
        .map_err(|error| format!("cannot read ca_file {}: {error}", path.display()))?;
    let not_pem = |detail: String| {
        format!(
            "ca_file {} is not a PEM certificate{detail}",
            path.display()
        )
    };
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|error| not_pem(format!(": {error}")))?;
    if certificates.is_empty() {
        return Err(not_pem(" (no -----BEGIN CERTIFICATE----- block)".into()));
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(not(windows))]
    fn only_plain_http_without_any_proxy_goes_without_trusted_roots() {
        let none = |_: &str| false;
        let http_proxy = |name: &str| name == "http_proxy";
        let all_proxy = |name: &str| name == "ALL_PROXY";
        for (url, configured, env, expected) in [
            (
                "http://127.0.0.1:8080/batches",
                false,
                &none as &dyn Fn(&str) -> bool,
                false,
            ),
            ("HTTP://reporter.lan/api", false, &none, false),
            ("https://reporter.example/api", false, &none, true),
            ("http://reporter.lan/api", true, &none, true),
            ("http://reporter.lan/api", false, &http_proxy, true),
            ("http://reporter.lan/api", false, &all_proxy, true),
            ("ftp://x", false, &none, true),
            ("http:/", false, &none, true),
        ] {
            assert_eq!(
                needs_tls(url, configured, env),
                expected,
                "{url} proxy {configured}"
            );
        }
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let check = |value: &str, expected: Option<Duration>| {
            assert_eq!(parse_retry_after(value, now), expected, "{value:?}");
        };
        check("1", Some(Duration::from_secs(1)));
        check(" 120 ", Some(Duration::from_secs(120)));
        check(
            &httpdate::fmt_http_date(now + Duration::from_secs(30)),
            Some(Duration::from_secs(30)),
        );
        check(
            &httpdate::fmt_http_date(now - Duration::from_secs(30)),
            Some(Duration::ZERO),
        );
        check("soon", None);
        check("-5", None);
    }

    #[test]
    fn only_text_html_is_a_web_page() {
        let check = |value: Option<&str>, expected: bool| {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert(CONTENT_TYPE, HeaderValue::from_str(value).expect("header"));
            }
            assert_eq!(is_web_page(&headers), expected, "{value:?}");
        };
        check(Some("text/html"), true);
        check(Some("Text/HTML; charset=utf-8"), true);
        check(Some(" text/html ;charset=iso-8859-1"), true);
        check(Some("application/json"), false);
        check(Some("text/plain"), false);
        check(Some("application/xhtml+xml"), false);
        check(None, false);
    }

    #[test]
    fn a_missing_token_variable_names_the_variable_not_a_value() {
        let error = secret::resolve(
            &SecretSource::Environment("EPM_TEST_SURELY_UNSET_TOKEN".into()),
            "token",
        )
        .expect_err("unset variable");
        assert!(
            error.contains("token_env EPM_TEST_SURELY_UNSET_TOKEN"),
            "{error}"
        );
    }
}

//! What to do after a delivery attempt: the answer table of
//! `docs/upload.md` as a pure function of the backend's answer,
//! returning an action with its reason. Tested as a table.

use std::fmt;
use std::time::Duration;

/// How a delivery attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx, a COMMIT, every PUBACK, or the file sink wrote and synced the batch.
    Accepted,
    /// A 2xx whose `Content-Type` is `text/html`: a captive portal, a login
    /// page or a wrong proxy answered, not a backend. Nothing was taken.
    WebPage { code: u16 },
    /// Any other HTTP status.
    Status {
        code: u16,
        /// `Retry-After`, already turned into a wait (seconds or HTTP date).
        retry_after: Option<Duration>,
    },
    /// A database answered with an error: its SQLSTATE (`23514`) and message.
    Database { sqlstate: String, message: String },
    /// No answer: refused, reset, timeout, TLS or DNS failure, a lost
    /// connection.
    Transport(String),
    /// The destination cannot take this content, with no status to say so
    /// (an event too large for one MQTT message).
    Rejected(String),
    /// The sink could not do its own part (a file that cannot be written).
    Local(String),
    /// The sink cannot send as configured (its token cannot be read, the
    /// broker refuses the credentials): like a 401, nothing is sent and
    /// everything is kept.
    Misconfigured(String),
}

/// The decision, with the reason shown in logs and `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Delivered,
    /// Send the same batch again after `delay`.
    Retry {
        delay: Duration,
        reason: String,
    },
    /// The agent is misconfigured (token, URL, credentials): keep
    /// everything, pause, and try the same batch again on the slow cap.
    Pause {
        delay: Duration,
        reason: String,
    },
    /// 413: send the first half of the batch instead.
    Halve {
        reason: String,
    },
    /// The destination rejects the content: split the batch until the
    /// rejected events stand alone; a lone rejected event is dead-lettered
    /// (with the HTTP status, when there was one).
    Split {
        status: Option<u16>,
        reason: String,
    },
}

/// How long a sink waits between attempts: `max_backoff` caps the
/// exponential backoff of "try later" failures, `paused_retry` is the slow
/// pace of a paused sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    pub max_backoff: Duration,
    pub paused_retry: Duration,
}

/// The longest `Retry-After` obeyed: a backend asking for a day is more
/// likely broken than serious, and presses should not wait that long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The first retry waits about this long; each further one doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(8);
/// No retry comes sooner than this, however the dice fall.
pub const SHORTEST_RETRY: Duration = Duration::from_millis(250);
/// A `Retry-After` shorter than this says nothing worth obeying.
pub const RETRY_AFTER_FLOOR: Duration = Duration::from_secs(1);
/// A fixed wait (`Retry-After`, a pause) is stretched by up to this share
/// at random, so a fleet told the same wait does not return at once.
pub const FIXED_WAIT_SPREAD: f64 = 0.25;

/// Decides after the `attempt`-th failure in a row (0 for the first).
/// `jitter` in [0, 1) spreads agents that failed together.
pub fn decide(outcome: &Outcome, attempt: u32, pace: Pace, jitter: f64) -> Action {
    let retry = |reason: String| Action::Retry {
        delay: backoff(attempt, pace.max_backoff, jitter),
        reason,
    };
    let pause = |reason: String| Action::Pause {
        delay: stretch(pace.paused_retry, jitter),
        reason,
    };
    match outcome {
        Outcome::Accepted => Action::Delivered,
        Outcome::Transport(error) | Outcome::Local(error) => retry(error.clone()),
        Outcome::Misconfigured(error) => pause(error.clone()),
        Outcome::WebPage { code } => pause(format!(
            "{}, but the URL answers with a web page (text/html), not a backend: \
             check the sink's url and any proxy or captive portal on the way",
            StatusText(*code)
        )),
        Outcome::Rejected(reason) => Action::Split {
            status: None,
            reason: reason.clone(),
        },
        Outcome::Database { sqlstate, message } => {
            let reason = format!("PostgreSQL error {sqlstate}: {message}");
            match sqlstate_verdict(sqlstate) {
                SqlVerdict::TryLater => retry(reason),
                SqlVerdict::Misconfigured => pause(format!(
                    "{reason}: check the sink's user, password, table and privileges"
                )),
                SqlVerdict::Rejected => Action::Split {
                    status: None,
                    reason,
                },
            }
        }
        Outcome::Status { code, retry_after } => {
            let reason = StatusText(*code).to_string();
            match code {
                200..=299 => Action::Delivered,
                408 | 425 | 429 | 500..=599 => match retry_after {
                    // A wait under a second (`Retry-After: 0`, a date in
                    // the past) says nothing: the usual backoff, no spin.
                    Some(wait) if *wait >= RETRY_AFTER_FLOOR => Action::Retry {
                        delay: stretch((*wait).min(MAX_RETRY_AFTER), jitter),
                        reason,
                    },
                    _ => retry(reason),
                },
                401 | 403 | 404 | 405 => pause(format!("{reason}: check the sink's url and token")),
                300..=399 => pause(format!(
                    "{reason}: the backend redirects; put the final url in the config"
                )),
                413 => Action::Halve { reason },
                400..=499 => Action::Split {
                    status: Some(*code),
                    reason,
                },
                // 1xx or nonsense: nothing to conclude from it.
                _ => retry(reason),
            }
        }
    }
}

/// What a SQLSTATE means for the batch (upload contract, PostgreSQL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqlVerdict {
    TryLater,
    Misconfigured,
    Rejected,
}

/// Class 28 (authentication) and 42 (missing table or column, privilege)
/// are the sink's configuration; 22 (data) and 23 (constraints) reject the
/// content; everything else — 08 (connection), 40001, 40P01, 53
/// (resources), 57P01-57P03 (shutdown), and what the contract does not
/// name — is worth trying again.
pub fn sqlstate_verdict(sqlstate: &str) -> SqlVerdict {
    match sqlstate.get(..2) {
        Some("28" | "42") => SqlVerdict::Misconfigured,
        Some("22" | "23") => SqlVerdict::Rejected,
        _ => SqlVerdict::TryLater,
    }
}

/// Exponential steps from [`FIRST_BACKOFF`], capped at `max_backoff`; the
/// delay is drawn anywhere in the step, from [`SHORTEST_RETRY`] ("full
/// jitter"). Measured with 200 agents failing at one instant
/// (`benches/fleet.rs`): equal jitter from a 1 s first step brought them
/// back in bursts of up to 3 times the steady rate, a first step of 4 s
/// drawn in full at up to 1.2 times; 8 s keeps them below it (an agent
/// sends about every 3 s, so most of a fleet's first retries fall after
/// its last regular attempt).
pub fn backoff(attempt: u32, max_backoff: Duration, jitter: f64) -> Duration {
    let exponential = FIRST_BACKOFF.saturating_mul(1u32 << attempt.min(20));
    let step = exponential.min(max_backoff).max(SHORTEST_RETRY);
    SHORTEST_RETRY + (step - SHORTEST_RETRY).mul_f64(jitter.clamp(0.0, 1.0))
}

/// A fixed wait, waited in full plus up to [`FIXED_WAIT_SPREAD`] more.
pub fn stretch(wait: Duration, jitter: f64) -> Duration {
    wait + wait.mul_f64(FIXED_WAIT_SPREAD * jitter.clamp(0.0, 1.0))
}

/// `HTTP 503 Service Unavailable`.
struct StatusText(u16);

impl fmt::Display for StatusText {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = reqwest::StatusCode::from_u16(self.0)
            .ok()
            .and_then(|status| status.canonical_reason());
        match reason {
            Some(reason) => write!(formatter, "HTTP {} {reason}", self.0),
            None => write!(formatter, "HTTP {}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_secs(30);
    const SLOW: Duration = Duration::from_secs(300);
    const PACE: Pace = Pace {
        max_backoff: CAP,
        paused_retry: SLOW,
    };

    fn status(code: u16) -> Outcome {
        Outcome::Status {
            code,
            retry_after: None,
        }
    }

    /// What the action is, without its reason text.
    #[derive(Debug, PartialEq)]
    enum Kind {
        Delivered,
        Retry(Duration),
        Pause(Duration),
        Halve,
        Split,
    }

    fn check(outcome: Outcome, attempt: u32, expected: Kind) {
        let kind = match decide(&outcome, attempt, PACE, 0.0) {
            Action::Delivered => Kind::Delivered,
            Action::Retry { delay, .. } => Kind::Retry(delay),
            Action::Pause { delay, .. } => Kind::Pause(delay),
            Action::Halve { .. } => Kind::Halve,
            Action::Split { .. } => Kind::Split,
        };
        assert_eq!(kind, expected, "{outcome:?} at attempt {attempt}");
    }

    #[test]
    fn the_answer_table_of_the_upload_contract() {
        let first = SHORTEST_RETRY; // jitter 0
        check(Outcome::Accepted, 0, Kind::Delivered);
        check(status(200), 0, Kind::Delivered);
        check(status(204), 3, Kind::Delivered);
        for code in [408, 425, 429, 500, 502, 503, 504, 599] {
            check(status(code), 0, Kind::Retry(first));
        }
        check(
            Outcome::Transport("connection reset".into()),
            0,
            Kind::Retry(first),
        );
        check(Outcome::Local("disk full".into()), 0, Kind::Retry(first));
        check(
            Outcome::Misconfigured("token_env X is not set".into()),
            0,
            Kind::Pause(SLOW),
        );
        for code in [401, 403, 404, 405] {
            check(status(code), 0, Kind::Pause(SLOW));
        }
        check(status(301), 0, Kind::Pause(SLOW));
        check(Outcome::WebPage { code: 200 }, 0, Kind::Pause(SLOW));
        check(Outcome::WebPage { code: 204 }, 4, Kind::Pause(SLOW));
        check(status(413), 0, Kind::Halve);
        for code in [400, 402, 409, 410, 415, 422, 451] {
            check(status(code), 0, Kind::Split);
        }
        check(status(101), 0, Kind::Retry(first));
    }

    #[test]
    fn retry_after_is_obeyed_and_bounded() {
        let with = |seconds| Outcome::Status {
            code: 503,
            retry_after: Some(Duration::from_secs(seconds)),
        };
        check(with(1), 5, Kind::Retry(Duration::from_secs(1)));
        check(with(120), 0, Kind::Retry(Duration::from_secs(120)));
        check(with(86_400), 0, Kind::Retry(MAX_RETRY_AFTER));
        // Nothing to obey: the usual backoff, never a zero-delay loop.
        check(with(0), 0, Kind::Retry(SHORTEST_RETRY));
        let at_random =
            |outcome: &Outcome, attempt, jitter| match decide(outcome, attempt, PACE, jitter) {
                Action::Retry { delay, .. } => delay,
                other => panic!("{other:?}"),
            };
        assert_eq!(
            at_random(&with(0), 1, 1.0),
            Duration::from_secs(16),
            "the usual backoff"
        );
        let too_many = Outcome::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(7)),
        };
        check(too_many, 0, Kind::Retry(Duration::from_secs(7)));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_is_drawn_anywhere_in_the_step() {
        let longest: Vec<Duration> = (0..12).map(|attempt| backoff(attempt, CAP, 1.0)).collect();
        assert_eq!(longest[0], Duration::from_secs(8));
        assert_eq!(longest[1], Duration::from_secs(16));
        assert_eq!(longest[2], CAP);
        assert_eq!(longest[11], CAP);
        for attempt in 0..12 {
            assert_eq!(backoff(attempt, CAP, 0.0), SHORTEST_RETRY, "never at once");
        }
        assert_eq!(backoff(0, CAP, 0.5), Duration::from_millis(4_125));
        assert_eq!(
            backoff(0, Duration::from_millis(100), 0.7),
            SHORTEST_RETRY,
            "a cap below the shortest retry"
        );
        assert_eq!(
            backoff(40, CAP, 1.0),
            CAP,
            "no overflow, never above the cap"
        );
    }

    #[test]
    fn sqlstates_map_onto_retry_pause_and_dead_letter() {
        let database = |sqlstate: &str| Outcome::Database {
            sqlstate: sqlstate.into(),
            message: "from the server".into(),
        };
        let first = SHORTEST_RETRY;
        for sqlstate in [
            "08006", "08001", "40001", "40P01", "53300", "53100", "57P01", "57P02", "57P03",
            "XX000", "55P03",
        ] {
            check(database(sqlstate), 0, Kind::Retry(first));
        }
        for sqlstate in ["28P01", "28000", "42P01", "42501", "42703"] {
            check(database(sqlstate), 0, Kind::Pause(SLOW));
        }
        for sqlstate in ["23514", "23502", "22001", "22P02"] {
            check(database(sqlstate), 0, Kind::Split);
        }
        check(Outcome::Rejected("too large".into()), 0, Kind::Split);
    }

    #[test]
    fn fixed_waits_are_waited_in_full_plus_up_to_a_quarter() {
        let with = |seconds| Outcome::Status {
            code: 503,
            retry_after: Some(Duration::from_secs(seconds)),
        };
        let delay = |outcome: &Outcome, jitter| match decide(outcome, 0, PACE, jitter) {
            Action::Retry { delay, .. } | Action::Pause { delay, .. } => delay,
            other => panic!("{other:?}"),
        };
        assert_eq!(delay(&with(4), 0.0), Duration::from_secs(4));
        assert_eq!(delay(&with(4), 0.5), Duration::from_millis(4500));
        assert_eq!(delay(&with(4), 1.0), Duration::from_secs(5));
        assert_eq!(delay(&status(401), 1.0), SLOW + SLOW / 4);
    }

    #[test]
    fn reasons_name_the_status() {
        let Action::Pause { reason, .. } = decide(&status(401), 0, PACE, 0.5) else {
            panic!("401 pauses")
        };
        assert!(reason.starts_with("HTTP 401 Unauthorized"), "{reason}");
    }
}

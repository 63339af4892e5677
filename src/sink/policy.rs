//! What to do after a delivery attempt: the answer table of
//! `shared/spec/upload-v1.md` as a pure function of the backend's answer,
//! returning an action with its reason. Tested as a table.

use std::fmt;
use std::time::Duration;

/// How a delivery attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx, or the file sink wrote and synced the batch.
    Accepted,
    /// Any other HTTP status.
    Status {
        code: u16,
        /// `Retry-After`, already turned into a wait (seconds or HTTP date).
        retry_after: Option<Duration>,
    },
    /// No HTTP answer: refused, reset, timeout, TLS or DNS failure.
    Transport(String),
    /// The sink could not do its own part (a file that cannot be written).
    Local(String),
    /// The sink cannot send as configured (its token cannot be read): like
    /// a 401, nothing is sent and everything is kept.
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
    /// The agent is misconfigured (token, URL): keep everything, pause, and
    /// try the same batch again on the slow cap.
    Pause {
        delay: Duration,
        reason: String,
    },
    /// 413: send the first half of the batch instead.
    Halve {
        reason: String,
    },
    /// The backend rejects the content: split the batch until the rejected
    /// events stand alone; a lone rejected event is dead-lettered.
    Split {
        status: u16,
        reason: String,
    },
}

/// The longest `Retry-After` obeyed: a backend asking for a day is more
/// likely broken than serious, and presses should not wait that long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The first retry waits about this long; each further one doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Decides after the `attempt`-th failure in a row (0 for the first).
/// `jitter` in [0, 1) spreads agents that failed together.
pub fn decide(outcome: &Outcome, attempt: u32, max_backoff: Duration, jitter: f64) -> Action {
    let backoff = || backoff(attempt, max_backoff, jitter);
    match outcome {
        Outcome::Accepted => Action::Delivered,
        Outcome::Transport(error) => Action::Retry {
            delay: backoff(),
            reason: error.clone(),
        },
        Outcome::Local(error) => Action::Retry {
            delay: backoff(),
            reason: error.clone(),
        },
        Outcome::Misconfigured(error) => Action::Pause {
            delay: max_backoff,
            reason: error.clone(),
        },
        Outcome::Status { code, retry_after } => {
            let reason = StatusText(*code).to_string();
            match code {
                200..=299 => Action::Delivered,
                408 | 425 | 429 | 500..=599 => Action::Retry {
                    delay: retry_after.map_or_else(backoff, |wait| wait.min(MAX_RETRY_AFTER)),
                    reason,
                },
                401 | 403 | 404 | 405 => Action::Pause {
                    delay: max_backoff,
                    reason: format!("{reason}: check the sink's url and token"),
                },
                300..=399 => Action::Pause {
                    delay: max_backoff,
                    reason: format!(
                        "{reason}: the backend redirects; put the final url in the config"
                    ),
                },
                413 => Action::Halve { reason },
                400..=499 => Action::Split {
                    status: *code,
                    reason,
                },
                // 1xx or nonsense: nothing to conclude from it.
                _ => Action::Retry {
                    delay: backoff(),
                    reason,
                },
            }
        }
    }
}

/// Exponential from [`FIRST_BACKOFF`], capped at `max_backoff`; the upper
/// half of each step is random ("equal jitter").
pub fn backoff(attempt: u32, max_backoff: Duration, jitter: f64) -> Duration {
    let exponential = FIRST_BACKOFF.saturating_mul(1u32 << attempt.min(20));
    let capped = exponential.min(max_backoff);
    capped / 2 + capped.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
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

    const CAP: Duration = Duration::from_secs(300);

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
        let kind = match decide(&outcome, attempt, CAP, 0.0) {
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
        let first = Duration::from_millis(500); // jitter 0: half of 1 s
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
            Kind::Pause(CAP),
        );
        for code in [401, 403, 404, 405] {
            check(status(code), 0, Kind::Pause(CAP));
        }
        check(status(301), 0, Kind::Pause(CAP));
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
        let too_many = Outcome::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(7)),
        };
        check(too_many, 0, Kind::Retry(Duration::from_secs(7)));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let steps: Vec<Duration> = (0..12).map(|attempt| backoff(attempt, CAP, 0.0)).collect();
        assert_eq!(steps[0], Duration::from_millis(500));
        assert_eq!(steps[1], Duration::from_secs(1));
        assert_eq!(steps[4], Duration::from_secs(8));
        assert_eq!(steps[11], CAP / 2);
        assert_eq!(backoff(3, CAP, 0.999_999).as_millis(), 7_999);
        assert_eq!(
            backoff(40, CAP, 1.0),
            CAP,
            "no overflow, never above the cap"
        );
    }

    #[test]
    fn reasons_name_the_status() {
        let Action::Pause { reason, .. } = decide(&status(401), 0, CAP, 0.5) else {
            panic!("401 pauses")
        };
        assert!(reason.starts_with("HTTP 401 Unauthorized"), "{reason}");
    }
}

//! A transport that answers as a test scripts it, so the sink task — batch,
//! retry, cursor — is tested on a paused clock without a server. Test
//! builds only.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::policy::Outcome;
use crate::store::StoredEvent;

/// One delivery attempt as the transport saw it.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub at: Instant,
    pub batch_id: String,
    pub seqnos: Vec<i64>,
}

/// Answers each attempt with the next scripted outcome, then accepts.
pub struct Scripted {
    answers: VecDeque<Outcome>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    attempted: Arc<Notify>,
}

impl Scripted {
    pub fn new(answers: Vec<Outcome>) -> (Scripted, Arc<Mutex<Vec<Attempt>>>, Arc<Notify>) {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let attempted = Arc::new(Notify::new());
        let scripted = Scripted {
            answers: answers.into(),
            attempts: Arc::clone(&attempts),
            attempted: Arc::clone(&attempted),
        };
        (scripted, attempts, attempted)
    }

    pub async fn deliver(&mut self, batch_id: &str, events: &[StoredEvent]) -> Outcome {
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Attempt {
                at: Instant::now(),
                batch_id: batch_id.to_string(),
                seqnos: events.iter().map(|event| event.seqno).collect(),
            });
        self.attempted.notify_one();
        self.answers.pop_front().unwrap_or(Outcome::Accepted)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::event::NewPress;
    use crate::protocol::UnitId;
    use crate::sink::policy::{self, SHORTEST_RETRY};
    use crate::sink::{self, Transport};
    use crate::store::{writer, Store};

    fn press(seq: u16) -> NewPress {
        NewPress {
            ts: Utc::now(),
            tz_offset_min: 0,
            device: "cashdesk".into(),
            model: "prolan-202",
            unit: UnitId(0x202A_0F31),
            key: 1,
            answer: Some("yes".into()),
            question: None,
            seq,
            rssi: None,
            battery: None,
            suppressed: false,
        }
    }

    fn settings() -> crate::config::SinkSettings {
        let text = "[agent]\nid = \"t\"\ndata_dir = \"/tmp/unused\"\n\n[[sink]]\nname = \"reporter\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/\"\nbatch_size = 50\n";
        let settings = crate::config::parse(text, std::path::Path::new("/tmp/t.toml"))
            .expect("a configuration");
        settings.sinks[0].clone()
    }

    /// A sink task on a real store holding `presses`, its transport
    /// answering `answers` (then accepting).
    struct Rig {
        folder: tempfile::TempDir,
        attempts: Arc<Mutex<Vec<Attempt>>>,
        attempted: Arc<Notify>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<Result<(), crate::store::StoreError>>,
        started: Instant,
    }

    impl Rig {
        async fn start(presses: Vec<NewPress>, answers: Vec<Outcome>) -> Rig {
            let folder = tempfile::tempdir().expect("a temporary folder");
            let store = Store::open_writer(folder.path()).expect("a store");
            let (handle, _writer) = writer::spawn(store, Default::default()).expect("the writer");
            for press in presses {
                handle.press(press, None).await.expect("queued");
            }
            handle.flush().await.expect("committed");
            let (scripted, attempts, attempted) = Scripted::new(answers);
            let shutdown = CancellationToken::new();
            let started = Instant::now();
            let task = tokio::spawn(sink::run(
                settings(),
                Transport::Scripted(scripted),
                folder.path().to_path_buf(),
                handle,
                shutdown.clone(),
            ));
            Rig {
                folder,
                attempts,
                attempted,
                shutdown,
                task,
                started,
            }
        }

        /// Waits (on the sink's own timers) until `count` attempts were made.
        async fn wait_for_attempts(&self, count: usize) {
            while self.attempts().len() < count {
                self.attempted.notified().await;
            }
        }

        fn attempts(&self) -> Vec<Attempt> {
            self.attempts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }

        /// Waits until the cursor has passed `seqno`; returns where it is.
        async fn wait_for_delivery_past(&self, seqno: i64) -> i64 {
            let reader = Store::open_reader(self.folder.path()).expect("a reader");
            loop {
                let cursor = reader.sink_cursor("reporter").expect("the cursor");
                if cursor.delivered_seqno > seqno {
                    return cursor.delivered_seqno;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        async fn stop(self) -> Vec<Attempt> {
            self.shutdown.cancel();
            let attempts = Arc::clone(&self.attempts);
            self.task
                .await
                .expect("the sink task")
                .expect("no store error");
            let attempts = attempts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            attempts
        }
    }

    /// Three "try later" failures, then the backend accepts: the same
    /// batch (id and events) is sent each time, each wait is drawn inside
    /// its backoff step, and only the acceptance moves the cursor.
    #[tokio::test(start_paused = true)]
    async fn try_later_resends_the_same_batch_after_each_backoff_step() {
        let failures = vec![
            Outcome::Status {
                code: 503,
                retry_after: None,
            },
            Outcome::Transport("connection refused".into()),
            Outcome::Status {
                code: 502,
                retry_after: None,
            },
        ];
        let settings = settings();
        let rig = Rig::start((1..=20).map(press).collect(), failures).await;
        // No timer of the test's own: the paused clock moves only to the
        // sink's timers, so the gaps are exactly the waits it chose.
        rig.wait_for_attempts(4).await;
        let delivered_through = rig.wait_for_delivery_past(0).await;
        let attempts = rig.stop().await;
        let first = &attempts[0];
        assert_eq!(
            first.seqnos,
            (1..=20).collect::<Vec<i64>>(),
            "one batch of all 20"
        );
        for (index, attempt) in attempts.iter().enumerate().take(4) {
            assert_eq!(
                (&attempt.batch_id, &attempt.seqnos),
                (&first.batch_id, &first.seqnos),
                "attempt {index} resends the same batch"
            );
        }
        for failure in 0..3 {
            let gap = attempts[failure + 1].at - attempts[failure].at;
            let step = policy::backoff(failure as u32, settings.max_backoff, 1.0);
            assert!(
                (SHORTEST_RETRY..=step).contains(&gap),
                "wait {failure}: {gap:?}, outside {SHORTEST_RETRY:?}..={step:?}"
            );
        }
        assert_eq!(delivered_through, *first.seqnos.last().expect("events"));
    }

    /// A backlog goes out in full batches one right after another (the next
    /// is read while one is in flight), the rest as a partial batch; each
    /// event exactly once, and the cursor ends at the last.
    #[tokio::test(start_paused = true)]
    async fn a_backlog_goes_out_batch_after_batch_without_waiting() {
        let presses = (1..=120)
            .map(|seq| {
                let mut press = press(seq);
                press.ts -= Duration::from_secs(60); // kept through an outage
                press
            })
            .collect();
        let rig = Rig::start(presses, Vec::new()).await;
        rig.wait_for_attempts(3).await;
        rig.wait_for_delivery_past(119).await;
        let reader = Store::open_reader(rig.folder.path()).expect("a reader");
        let started = rig.started;
        let attempts = rig.stop().await;
        let batches: Vec<Vec<i64>> = attempts
            .iter()
            .map(|attempt| attempt.seqnos.clone())
            .collect();
        assert_eq!(
            batches,
            vec![
                (1..=50).collect(),
                (51..=100).collect(),
                (101..=120).collect::<Vec<i64>>()
            ]
        );
        let ids: std::collections::HashSet<&String> =
            attempts.iter().map(|attempt| &attempt.batch_id).collect();
        assert_eq!(ids.len(), 3, "a new batch id for each batch");
        for attempt in &attempts {
            assert_eq!(attempt.at, started, "no batch waited");
        }
        let cursor = reader.sink_cursor("reporter").expect("the cursor");
        assert!(
            cursor.in_flight.is_none(),
            "nothing left in flight: {cursor:?}"
        );
    }

    /// A partial batch waits for more until its oldest event has waited
    /// `flush_interval`, counted from when the press was read: fresh
    /// presses wait the whole interval, presses kept through an outage or
    /// behind a backlog go at once.
    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_waits_only_until_its_oldest_event_has_waited_the_interval() {
        let settings = settings();
        for (age, expected_wait) in [
            (Duration::ZERO, settings.flush_interval),
            (settings.flush_interval / 4, settings.flush_interval * 3 / 4),
            (Duration::from_secs(30), Duration::ZERO),
        ] {
            let presses = (1..=3)
                .map(|seq| {
                    let mut press = press(seq);
                    press.ts -= age;
                    press
                })
                .collect();
            let rig = Rig::start(presses, Vec::new()).await;
            rig.wait_for_attempts(1).await;
            let started = rig.started;
            let attempt = rig.stop().await[0].clone();
            assert_eq!(
                attempt.seqnos,
                vec![1, 2, 3],
                "one partial batch (age {age:?})"
            );
            let waited = attempt.at - started;
            // The wall clock moved a little while the presses were stored.
            let slack = Duration::from_millis(50);
            assert!(
                waited <= expected_wait && waited + slack >= expected_wait,
                "age {age:?}: sent after {waited:?}, expected {expected_wait:?}"
            );
        }
    }
}

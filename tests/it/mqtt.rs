//! The MQTT sink end to end: the real `epm-agent run` reads emulated
//! keypads and receivers on pseudo-terminals and publishes to a real
//! Mosquitto 2 (`tests/servers`), read back by a QoS 1 subscriber with a
//! persistent session. No mocks.
//!
//! What holds in every test: each message on the events topic is one batch
//! document of the upload contract; a batch id always carries the same
//! events, however often it is sent; every stored press reaches the
//! subscriber, and nothing else does (the consumer deduplicates by id, so
//! copies after a reconnect are allowed where the test disrupts delivery).
//! Needs `scripts/test-servers.sh`.

use crate::servers;
use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use servers::{
    retained, retained_with, ClientOptions, Message, Mosquitto, MosquittoOptions, Subscriber,
    TestPki,
};
use support::{
    keypad_press, open_store, radio_press, DeviceConfig, EmulatorOptions, TestDir, KEYPAD_SERIAL,
    START_TIMEOUT,
};

/// The agent id of `support::TestDir::write_config`.
const AGENT_ID: &str = "e2e-test";
const EVENTS_TOPIC: &str = "epm/e2e-test/events";
const STATE_TOPIC: &str = "epm/e2e-test/state";
const SINK: &str = "fleet";
/// Waits for a delivery that nothing holds up.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn every_press_arrives_once_by_id_through_a_broker_restart_and_two_kill_9() {
    const PRESSES: u16 = 360;
    const BURST: u16 = 20;
    let mut broker = Mosquitto::start(MosquittoOptions::default());
    let subscriber = Subscriber::start(
        &broker,
        EVENTS_TOPIC,
        "e2e-consumer",
        &ClientOptions::default(),
    );
    let dir = TestDir::new();
    let keypad = dir.keypad("cashdesk", EmulatorOptions::keypad());
    let config = config_with_sink(
        &dir,
        &[keypad_device(&keypad)],
        &SinkConfig::new(&broker).toml(),
    );
    let mut agent = dir.start_agent(&config, &[&keypad]);

    for seq in 1..=PRESSES {
        keypad.press(keypad_press(key_of(seq), seq));
        if seq % BURST == 0 {
            keypad.pause(Duration::from_millis(150));
        }
    }
    // Each disruption comes while presses stream in and batches go out.
    let wait_sent = |count: usize| {
        keypad.wait_until(DELIVERY_TIMEOUT, &format!("{count} presses sent"), |seen| {
            (seen.sent_presses.len() >= count).then_some(())
        })
    };
    wait_sent(90);
    wait_for_presses(&subscriber, &dir, 30);
    broker.restart();
    wait_sent(180);
    // The first kill finds a batch in flight: the broker, frozen, takes it
    // in but does not acknowledge it. The restarted agent must send it
    // again, under the same batch id.
    broker.suspend();
    let (in_flight, in_flight_ids) = dir.wait_until(DELIVERY_TIMEOUT, "a batch in flight", || {
        in_flight_batch(&dir.data_dir()).ok_or_else(|| "none".to_string())
    });
    agent.kill();
    broker.resume();
    keypad.release_exclusive();
    agent = dir.spawn_agent(&config);
    keypad.wait_for_query(2, START_TIMEOUT);
    wait_sent(270);
    agent.kill();
    keypad.release_exclusive();
    agent = dir.spawn_agent(&config);
    keypad.wait_for_query(3, START_TIMEOUT);
    // Presses are handled in order: once the last is acknowledged, the
    // store holds everything it will ever hold of this stream.
    keypad.wait_for_ack(KEYPAD_SERIAL, PRESSES, DELIVERY_TIMEOUT);
    let stored = stored_press_ids(&dir.data_dir());
    let received = wait_for_all(&subscriber, &dir, &stored, DELIVERY_TIMEOUT);
    agent.stop_cleanly();

    let batches = batches(&received);
    let copies: Vec<&str> = batches.iter().flat_map(|batch| batch.presses()).collect();
    let received_ids: BTreeSet<&str> = copies.iter().copied().collect();
    let stored_ids: BTreeSet<&str> = stored.iter().map(String::as_str).collect();
    assert_eq!(
        received_ids, stored_ids,
        "the consumer's presses, deduplicated by id, are exactly the stored presses"
    );
    assert!(
        stored.len() >= usize::from(PRESSES) * 9 / 10,
        "only {} of {PRESSES} presses were stored: the test lost its stream",
        stored.len()
    );
    assert_same_events_per_batch_id(&batches);
    // The agent's status events share the stream: every one the consumer
    // got is one the store holds, and the starts are among them.
    let status_events: Vec<Value> = received
        .iter()
        .filter(|message| message.topic == EVENTS_TOPIC)
        .filter_map(|message| serde_json::from_slice::<Value>(&message.payload).ok())
        .flat_map(|document| document["events"].as_array().cloned().unwrap_or_default())
        .filter(|event| event["type"] == "agent_status")
        .collect();
    let stored_status: BTreeSet<String> = {
        let connection = support::open_store(&dir.data_dir()).expect("the store");
        let mut statement = connection
            .prepare("SELECT id FROM events WHERE type = 'agent_status'")
            .expect("prepare");
        statement
            .query_map([], |row| row.get::<_, String>(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    assert!(
        status_events
            .iter()
            .any(|event| event["status"]["reason"] == "start"),
        "no start status event arrived: {status_events:?}"
    );
    for event in &status_events {
        let id = event["id"].as_str().unwrap_or_default();
        assert!(
            stored_status.contains(id),
            "status event {id} is not a stored one"
        );
        assert!(
            event.get("device").is_none(),
            "press fields on a status event: {event}"
        );
    }
    let resent: Vec<&Batch> = batches
        .iter()
        .filter(|batch| batch.batch_id == in_flight)
        .collect();
    assert!(
        !resent.is_empty(),
        "the batch in flight at the kill ({in_flight}) never arrived"
    );
    assert_eq!(
        resent[0]
            .events
            .iter()
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>(),
        in_flight_ids,
        "batch {in_flight} arrived without the events recorded for it in the store"
    );
    assert!(
        subscriber.subscriptions() >= 2,
        "the subscriber never reconnected: the broker restart did not happen"
    );
    eprintln!(
        "{} presses stored, {} messages, {} press copies received ({} beyond one per id)",
        stored.len(),
        batches.len(),
        copies.len(),
        copies.len() - received_ids.len()
    );
}

#[test]
fn the_retained_state_is_online_while_running_and_offline_after_kill_9_and_a_clean_stop() {
    let broker = Mosquitto::start(MosquittoOptions::default());
    let dir = TestDir::new();
    let config = config_with_sink(&dir, &[], &SinkConfig::new(&broker).toml());
    let offline = serde_json::json!({"state": "offline", "agent": AGENT_ID});

    let mut agent = dir.spawn_agent(&config);
    let first = wait_for_state(&dir, &broker, "online");
    assert_online_document(&first);
    agent.kill();
    assert_eq!(
        wait_for_state(&dir, &broker, "offline"),
        offline,
        "the Last Will after kill -9"
    );

    let mut agent = dir.spawn_agent(&config);
    let second = wait_for_state(&dir, &broker, "online");
    assert_online_document(&second);
    assert!(
        second["ts"].as_str() > first["ts"].as_str(),
        "a new connection says online again with a new ts: {first} then {second}"
    );
    agent.stop_cleanly();
    assert_eq!(
        wait_for_state(&dir, &broker, "offline"),
        offline,
        "the state after a clean stop"
    );
    // The clean stop said goodbye itself: a DISCONNECT (after the offline
    // state), not a dropped connection that left it to the Last Will.
    let log = broker.log();
    assert!(
        log.contains(&format!("Client {AGENT_ID} disconnected.")),
        "no clean DISCONNECT from the agent in the broker's log:\n{log}"
    );
}

#[test]
fn a_batch_larger_than_a_message_is_split_and_an_event_too_large_alone_is_dead_lettered() {
    const MAX_MESSAGE_BYTES: usize = 2048;
    const KEYPAD_PRESSES: u16 = 120;
    // Enough to make a radio press's event alone larger than a message.
    let long_question = "how likely are you to recommend us? ".repeat(60);
    // The broker itself drops a client that sends a larger packet.
    let broker = Mosquitto::start(MosquittoOptions {
        max_packet_size: Some((MAX_MESSAGE_BYTES + 64) as u32),
        ..MosquittoOptions::default()
    });
    let subscriber = Subscriber::start(
        &broker,
        EVENTS_TOPIC,
        "e2e-consumer",
        &ClientOptions::default(),
    );
    let dir = TestDir::new();
    let keypad = dir.keypad("cashdesk", EmulatorOptions::keypad());
    let receiver = dir.receiver("entrance", EmulatorOptions::receiver());
    let mut entrance =
        DeviceConfig::of(&receiver, "recommend", DeviceConfig::keymap(&[(1, "yes")]));
    entrance.question = long_question;
    let sink = SinkConfig {
        batch_size: 500,
        // Long enough for the whole burst to go out as one batch.
        flush_interval_ms: 300,
        extra: vec![format!("max_message_bytes = {MAX_MESSAGE_BYTES}")],
        ..SinkConfig::new(&broker)
    };
    let config = config_with_sink(&dir, &[keypad_device(&keypad), entrance], &sink.toml());
    let mut agent = dir.start_agent(&config, &[&keypad, &receiver]);

    for seq in 1..=KEYPAD_PRESSES {
        keypad.press(keypad_press(key_of(seq), seq));
    }
    for counter in 1..=3 {
        receiver.press(radio_press(support::RECEIVER_ID, 1, counter, -50, Some(90)));
    }
    keypad.wait_for_ack(KEYPAD_SERIAL, KEYPAD_PRESSES, DELIVERY_TIMEOUT);
    receiver.wait_for_ack(support::RECEIVER_ID, 3, DELIVERY_TIMEOUT);
    let (keypad_ids, radio_ids): (Vec<String>, Vec<String>) = {
        let connection = open_store(&dir.data_dir()).expect("open the store");
        let ids_of = |device: &str| -> Vec<String> {
            let mut statement = connection
                .prepare(
                    "SELECT id FROM events WHERE type = 'press' AND device = ?1 ORDER BY seqno",
                )
                .expect("prepare");
            statement
                .query_map([device], |row| row.get(0))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("ids")
        };
        (ids_of("cashdesk"), ids_of("entrance"))
    };
    assert_eq!(keypad_ids.len(), usize::from(KEYPAD_PRESSES));
    assert_eq!(radio_ids.len(), 3);
    let received = wait_for_all(&subscriber, &dir, &keypad_ids, DELIVERY_TIMEOUT);
    let dead = dir.wait_until(DELIVERY_TIMEOUT, "three dead letters", || {
        let dead = dead_letters(&dir.data_dir());
        if dead.len() >= 3 {
            Ok(dead)
        } else {
            Err(format!("{dead:?}"))
        }
    });
    agent.stop_cleanly();

    let batches = batches(&received);
    for batch in &batches {
        assert!(
            batch.bytes <= MAX_MESSAGE_BYTES,
            "batch {} is a message of {} bytes, over max_message_bytes = {MAX_MESSAGE_BYTES}",
            batch.batch_id,
            batch.bytes
        );
    }
    let batch_ids: BTreeSet<&str> = batches
        .iter()
        .map(|batch| batch.batch_id.as_str())
        .collect();
    assert_eq!(
        batch_ids.len(),
        batches.len(),
        "every message has a batch id of its own"
    );
    let copies: Vec<&str> = batches.iter().flat_map(|batch| batch.presses()).collect();
    let keypad_ids: Vec<&str> = keypad_ids.iter().map(String::as_str).collect();
    let mut sorted_copies = copies.clone();
    sorted_copies.sort_unstable();
    let mut sorted_keypad = keypad_ids.clone();
    sorted_keypad.sort_unstable();
    assert_eq!(
        sorted_copies, sorted_keypad,
        "every keypad press exactly once, and no radio press"
    );
    let dead_ids: BTreeSet<String> = dead.into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        dead_ids,
        radio_ids.iter().cloned().collect::<BTreeSet<_>>(),
        "each radio press, too large for any message, is a dead letter"
    );
    // The split: one stored batch went out as a run of messages whose
    // batch ids count up from the stored batch's id, each carrying the
    // events after the previous one's.
    let longest_run = longest_split(&batches);
    assert!(
        longest_run >= 5,
        "no batch was split into several messages (longest run {longest_run}); batch sizes: {:?}",
        batches
            .iter()
            .map(|batch| batch.events.len())
            .collect::<Vec<_>>()
    );
}

#[test]
fn refused_credentials_pause_the_sink_until_the_password_file_is_fixed() {
    const RIGHT: &str = "right-pass-7Hq2";
    const WRONG: &str = "wrong-pass-3Zx9";
    const PRESSES: u16 = 30;
    let broker = Mosquitto::start(MosquittoOptions {
        users: vec![("epm-agent".into(), RIGHT.into())],
        ..MosquittoOptions::default()
    });
    let subscriber = Subscriber::start(
        &broker,
        EVENTS_TOPIC,
        "e2e-consumer",
        &broker.harness_client(),
    );
    let dir = TestDir::new();
    let password_file = dir.path().join("mqtt-password");
    write_private(&password_file, WRONG);
    let keypad = dir.keypad("cashdesk", EmulatorOptions::keypad());
    let sink = SinkConfig {
        extra: vec![
            "username = \"epm-agent\"".into(),
            format!("password_file = {}", toml_path(&password_file)),
        ],
        ..SinkConfig::new(&broker)
    };
    let config = config_with_sink(&dir, &[keypad_device(&keypad)], &sink.toml());
    let mut agent = dir.start_agent(&config, &[&keypad]);
    for seq in 1..=PRESSES {
        keypad.press(keypad_press(key_of(seq), seq));
    }
    keypad.wait_for_ack(KEYPAD_SERIAL, PRESSES, DELIVERY_TIMEOUT);

    let paused = dir.wait_until(DELIVERY_TIMEOUT, "the sink paused in status", || {
        let sink = status_of_sink(&config)?;
        if sink["state"] == "paused" {
            Ok(sink)
        } else {
            Err(sink.to_string())
        }
    });
    let error = paused["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the broker refuses the user name or password"),
        "status shows the wrong reason: {paused}"
    );
    // Paused for a while (paused_retry_s = 1: a few tries), nothing gets through.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        status_of_sink(&config).map(|sink| sink["state"].clone()),
        Ok(Value::from("paused"))
    );
    assert!(
        subscriber.messages().is_empty(),
        "a message got through with the wrong password"
    );

    fs::write(&password_file, format!("{RIGHT}\n")).expect("fix the password file");
    let stored = stored_press_ids(&dir.data_dir());
    let received = wait_for_all(&subscriber, &dir, &stored, DELIVERY_TIMEOUT);
    dir.wait_until(DELIVERY_TIMEOUT, "the sink ok in status", || {
        let sink = status_of_sink(&config)?;
        if sink["state"] == "ok" {
            Ok(())
        } else {
            Err(sink.to_string())
        }
    });
    agent.stop_cleanly();

    let batches = batches(&received);
    let received_ids: BTreeSet<&str> = batches.iter().flat_map(|batch| batch.presses()).collect();
    assert_eq!(
        received_ids,
        stored.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
    assert_eq!(stored.len(), usize::from(PRESSES));
    let log = agent_log(&dir);
    for password in [RIGHT, WRONG] {
        assert!(!log.contains(password), "the agent's log shows a password");
    }
}

#[test]
fn tls_with_a_required_client_certificate_delivers_with_it_and_is_refused_without() {
    const PRESSES: u16 = 20;
    let pki = TestPki::new();
    let broker = Mosquitto::start(MosquittoOptions {
        tls: Some(pki.server_tls()),
        require_client_certificate: true,
        ..MosquittoOptions::default()
    });
    let with_certificate = ClientOptions {
        client_cert: Some(pki.client_cert()),
        ..ClientOptions::default()
    };
    let subscriber = Subscriber::start(&broker, "epm/#", "e2e-consumer", &with_certificate);
    let ca_file = format!("ca_file = {}", toml_path(&pki.ca.cert));

    let with = TestDir::new();
    let with_keypad = with.keypad("cashdesk", EmulatorOptions::keypad());
    let with_sink = SinkConfig {
        extra: vec![
            ca_file.clone(),
            format!("client_cert_file = {}", toml_path(&pki.client.cert)),
            format!("client_key_file = {}", toml_path(&pki.client.key)),
        ],
        ..SinkConfig::new(&broker)
    };
    let with_config = config_with_sink(&with, &[keypad_device(&with_keypad)], &with_sink.toml());

    let without = TestDir::new();
    let without_keypad = without.keypad("cashdesk", EmulatorOptions::keypad());
    let without_sink = SinkConfig {
        extra: vec![
            ca_file,
            "client_id = \"e2e-test-without\"".into(),
            "topic = \"epm/without/events\"".into(),
            "state_topic = \"epm/without/state\"".into(),
        ],
        ..SinkConfig::new(&broker)
    };
    let without_config = config_with_sink(
        &without,
        &[keypad_device(&without_keypad)],
        &without_sink.toml(),
    );

    let mut with_agent = with.start_agent(&with_config, &[&with_keypad]);
    let mut without_agent = without.start_agent(&without_config, &[&without_keypad]);
    for seq in 1..=PRESSES {
        with_keypad.press(keypad_press(key_of(seq), seq));
        without_keypad.press(keypad_press(key_of(seq), seq));
    }
    with_keypad.wait_for_ack(KEYPAD_SERIAL, PRESSES, DELIVERY_TIMEOUT);
    without_keypad.wait_for_ack(KEYPAD_SERIAL, PRESSES, DELIVERY_TIMEOUT);

    let stored = stored_press_ids(&with.data_dir());
    let received = wait_for_all(&subscriber, &with, &stored, DELIVERY_TIMEOUT);
    let refused = without.wait_until(DELIVERY_TIMEOUT, "the sink failing in status", || {
        let sink = status_of_sink(&without_config)?;
        let failing = sink["state"] != "ok" && !sink["last_error"].is_null();
        if failing {
            Ok(sink)
        } else {
            Err(sink.to_string())
        }
    });
    let error = refused["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cannot connect to the broker") && error.contains("certificate"),
        "the error does not say that a certificate is missing: {refused}"
    );
    // The retained online state shows which agent got in.
    let online = retained_with(&broker, STATE_TOPIC, &with_certificate)
        .map(|payload| String::from_utf8_lossy(&payload).into_owned());
    assert!(
        online
            .as_deref()
            .is_some_and(|state| state.contains("\"online\"")),
        "no online state from the agent with a certificate: {online:?}"
    );
    with_agent.stop_cleanly();
    without_agent.stop_cleanly();

    let batches = batches(&received);
    let received_ids: BTreeSet<&str> = batches.iter().flat_map(|batch| batch.presses()).collect();
    assert_eq!(
        received_ids,
        stored.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        "the agent with a certificate delivered every press"
    );
    let without_ids = stored_press_ids(&without.data_dir());
    assert_eq!(without_ids.len(), usize::from(PRESSES));
    let topics: BTreeSet<&str> = received
        .iter()
        .map(|message| message.topic.as_str())
        .collect();
    assert_eq!(
        topics,
        BTreeSet::from([EVENTS_TOPIC, STATE_TOPIC]),
        "nothing from the agent without a certificate"
    );
    assert_eq!(
        without.events().len(),
        usize::from(PRESSES),
        "its presses stay in its store"
    );
    assert!(
        !without_ids
            .iter()
            .any(|id| received_ids.contains(id.as_str())),
        "a press of the agent without a certificate got through"
    );
}

#[test]
fn another_client_with_the_same_client_id_pauses_the_sink_instead_of_a_fight() {
    const FIGHT: &str = "another client uses client_id e2e-test";
    let broker = Mosquitto::start(MosquittoOptions::default());
    // mosquitto_sub reconnects a second after it is pushed off: the other
    // client in the fight, with the agent's client id.
    let rival = Subscriber::start(&broker, "elsewhere/#", AGENT_ID, &ClientOptions::default());
    let dir = TestDir::new();
    let keypad = dir.keypad("cashdesk", EmulatorOptions::keypad());
    let sink = SinkConfig {
        // Long, so that a sink that kept fighting would show.
        paused_retry_s: 60,
        ..SinkConfig::new(&broker)
    };
    let config = config_with_sink(&dir, &[keypad_device(&keypad)], &sink.toml());
    let mut agent = dir.start_agent(&config, &[&keypad]);

    // The agent has nothing more to send after its start: the connection
    // itself must notice the fight, and say so.
    dir.wait_until(Duration::from_secs(30), "the fight in the log", || {
        let log = agent_log(&dir);
        if log.contains(FIGHT) {
            Ok(())
        } else {
            Err(format!("{} lines of log", log.lines().count()))
        }
    });
    // Then it leaves the rival alone: once the rival's last reconnection
    // (the one that pushed the agent off) is through, it is not pushed off
    // again.
    std::thread::sleep(Duration::from_millis(1500));
    let reconnects = rival.subscriptions();
    eprintln!("rival subscriptions at the snapshot: {reconnects}");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        rival.subscriptions(),
        reconnects,
        "the rival was pushed off again: the agent keeps fighting"
    );
    // A press to deliver meets the fight and pauses the sink.
    keypad.press(keypad_press(1, 1));
    keypad.wait_for_ack(KEYPAD_SERIAL, 1, START_TIMEOUT);
    let paused = dir.wait_until(DELIVERY_TIMEOUT, "the sink paused", || {
        let sink = status_of_sink(&config)?;
        if sink["state"] == "paused" {
            Ok(sink)
        } else {
            Err(sink.to_string())
        }
    });
    let error = paused["last_error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with(FIGHT),
        "status shows the wrong reason: {paused}"
    );
    agent.stop_cleanly();
    let detections = agent_log(&dir)
        .lines()
        .filter(|line| line.contains(FIGHT) && !line.contains("paused, every event kept"))
        .count();
    assert_eq!(detections, 1, "the fight is reported once in the log");
}

// ---------------------------------------------------------------------------
// Configuration

/// One `[[sink]]` table of kind mqtt, paced for tests.
struct SinkConfig {
    url: String,
    batch_size: usize,
    flush_interval_ms: u64,
    paused_retry_s: u64,
    /// More `key = value` lines.
    extra: Vec<String>,
}

impl SinkConfig {
    fn new(broker: &Mosquitto) -> SinkConfig {
        SinkConfig {
            url: broker.url(),
            batch_size: 50,
            flush_interval_ms: 50,
            paused_retry_s: 1,
            extra: Vec::new(),
        }
    }

    fn toml(&self) -> String {
        let mut text = format!(
            "\n[[sink]]\nname = \"{SINK}\"\nkind = \"mqtt\"\nurl = \"{}\"\nbatch_size = {}\n\
             flush_interval_ms = {}\nmax_backoff_s = 1\npaused_retry_s = {}\ntimeout_s = 5\n",
            self.url, self.batch_size, self.flush_interval_ms, self.paused_retry_s
        );
        for line in &self.extra {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// `support`'s configuration for `devices`, with `sink` appended.
fn config_with_sink(dir: &TestDir, devices: &[DeviceConfig], sink: &str) -> PathBuf {
    let path = dir.write_config(devices);
    let mut text = fs::read_to_string(&path).expect("read the configuration");
    text.push_str(sink);
    fs::write(&path, text).expect("write the configuration");
    path
}

fn keypad_device(keypad: &support::Emulator) -> DeviceConfig {
    DeviceConfig::of(
        keypad,
        "satisfied",
        DeviceConfig::keymap(&[(1, "yes"), (2, "neutral"), (3, "no")]),
    )
}

fn key_of(seq: u16) -> u8 {
    (seq % 3) as u8 + 1
}

fn toml_path(path: &Path) -> String {
    toml::Value::String(path.to_string_lossy().into_owned()).to_string()
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .expect("create a private file");
    std::io::Write::write_all(&mut file, text.as_bytes()).expect("write a private file");
}

// ---------------------------------------------------------------------------
// What the agent and the broker hold

/// One message of the events topic, read as a batch document.
#[derive(Debug)]
struct Batch {
    batch_id: String,
    /// (id, type) of each event, in order.
    events: Vec<(String, String)>,
    /// The payload's size.
    bytes: usize,
}

impl Batch {
    fn presses(&self) -> impl Iterator<Item = &str> {
        self.events
            .iter()
            .filter(|(_, kind)| kind == "press")
            .map(|(id, _)| id.as_str())
    }
}

/// The messages of the events topic as batch documents; fails the test on
/// a message that is not one, as the upload contract defines it.
fn batches(messages: &[Message]) -> Vec<Batch> {
    messages
        .iter()
        .filter(|message| message.topic == EVENTS_TOPIC)
        .map(|message| {
            let text = message.text();
            assert_eq!(message.qos, 1, "a batch published below QoS 1: {text}");
            assert!(!message.retain, "a batch published retained: {text}");
            let document: Value = serde_json::from_slice(&message.payload)
                .unwrap_or_else(|error| panic!("a message is not JSON ({error}): {text}"));
            assert_eq!(document["schema"], "epm-agent.batch.v1", "{text}");
            assert_eq!(document["agent"]["id"], AGENT_ID, "{text}");
            assert_eq!(
                document["agent"]["version"],
                env!("CARGO_PKG_VERSION"),
                "{text}"
            );
            assert!(document["agent"]["location"].is_null(), "{text}");
            let sent_at = document["sent_at"].as_str().unwrap_or_default();
            assert!(
                chrono::DateTime::parse_from_rfc3339(sent_at).is_ok() && sent_at.ends_with('Z'),
                "sent_at is not RFC 3339 UTC: {text}"
            );
            let batch_id = document["batch_id"]
                .as_str()
                .unwrap_or_else(|| panic!("no batch_id: {text}"))
                .to_string();
            assert!(
                ulid::Ulid::from_string(&batch_id).is_ok(),
                "batch_id {batch_id} is not a ULID"
            );
            let events = document["events"]
                .as_array()
                .unwrap_or_else(|| panic!("no events array: {text}"))
                .iter()
                .map(|event| {
                    let field = |name: &str| {
                        event[name]
                            .as_str()
                            .unwrap_or_else(|| panic!("an event without {name}: {text}"))
                            .to_string()
                    };
                    (field("id"), field("type"))
                })
                .collect::<Vec<_>>();
            assert!(!events.is_empty(), "an empty batch: {text}");
            Batch {
                batch_id,
                events,
                bytes: message.payload.len(),
            }
        })
        .collect()
}

/// A batch id, however often it arrives, always carries the same events.
fn assert_same_events_per_batch_id(batches: &[Batch]) {
    let mut first: BTreeMap<&str, &Vec<(String, String)>> = BTreeMap::new();
    for batch in batches {
        let seen = first.entry(&batch.batch_id).or_insert(&batch.events);
        assert_eq!(
            *seen, &batch.events,
            "batch {} arrived with different events",
            batch.batch_id
        );
    }
}

/// The longest run of messages whose batch ids count up by one: the
/// messages of one split batch.
fn longest_split(batches: &[Batch]) -> usize {
    let ulid =
        |batch: &Batch| u128::from(ulid::Ulid::from_string(&batch.batch_id).expect("a ULID"));
    let mut longest = 1;
    let mut run = 1;
    for pair in batches.windows(2) {
        if ulid(&pair[1]) == ulid(&pair[0]) + 1 {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 1;
        }
    }
    longest
}

/// Waits until the subscriber holds at least `count` presses.
fn wait_for_presses(subscriber: &Subscriber, dir: &TestDir, count: usize) {
    dir.wait_until(
        DELIVERY_TIMEOUT,
        &format!("{count} presses at the subscriber"),
        || {
            let received = press_ids(&subscriber.messages());
            if received.len() >= count {
                Ok(())
            } else {
                Err(format!("{} presses", received.len()))
            }
        },
    );
}

/// Waits until the subscriber holds every press of `ids`; returns every
/// message it received.
fn wait_for_all(
    subscriber: &Subscriber,
    dir: &TestDir,
    ids: &[String],
    timeout: Duration,
) -> Vec<Message> {
    dir.wait_until(
        timeout,
        &format!("{} presses at the subscriber", ids.len()),
        || {
            let messages = subscriber.messages();
            let received = press_ids(&messages);
            let missing = ids
                .iter()
                .filter(|id| !received.contains(id.as_str()))
                .count();
            if missing == 0 {
                Ok(messages)
            } else {
                Err(format!("{missing} of {} missing", ids.len()))
            }
        },
    )
}

/// The press ids in the messages of the events topic.
fn press_ids(messages: &[Message]) -> BTreeSet<String> {
    messages
        .iter()
        .filter(|message| message.topic == EVENTS_TOPIC)
        .filter_map(|message| serde_json::from_slice::<Value>(&message.payload).ok())
        .flat_map(|document| {
            document["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|event| event["type"] == "press")
                .filter_map(|event| event["id"].as_str().map(str::to_string))
        })
        .collect()
}

/// The stored presses' ids, in store order.
fn stored_press_ids(data_dir: &Path) -> Vec<String> {
    let connection = open_store(data_dir).expect("open the store");
    let mut statement = connection
        .prepare("SELECT id FROM events WHERE type = 'press' ORDER BY seqno")
        .expect("prepare");
    statement
        .query_map([], |row| row.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("ids")
}

/// The sink's batch in flight, with the ids of its events, if there is one.
fn in_flight_batch(data_dir: &Path) -> Option<(String, Vec<String>)> {
    let connection = open_store(data_dir).ok()?;
    let (batch_id, first, last): (Option<String>, Option<i64>, Option<i64>) = connection
        .query_row(
            "SELECT batch_id, batch_first, batch_last FROM sinks WHERE name = ?1",
            [SINK],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .ok()?;
    let (batch_id, first, last) = (batch_id?, first?, last?);
    let mut statement = connection
        .prepare("SELECT id FROM events WHERE seqno BETWEEN ?1 AND ?2 ORDER BY seqno")
        .ok()?;
    let ids = statement
        .query_map([first, last], |row| row.get(0))
        .ok()?
        .collect::<Result<Vec<String>, _>>()
        .ok()?;
    Some((batch_id, ids))
}

/// (event id, reason) of the sink's dead letters.
fn dead_letters(data_dir: &Path) -> Vec<(String, String)> {
    let Ok(connection) = open_store(data_dir) else {
        return Vec::new();
    };
    let mut statement = connection
        .prepare("SELECT event_id, reason FROM dead_letters WHERE sink = ?1 ORDER BY seqno")
        .expect("prepare");
    statement
        .query_map([SINK], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("dead letters")
}

/// The sink's entry of `epm-agent status --json`.
fn status_of_sink(config: &Path) -> Result<Value, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["status", "--json", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .map_err(|error| format!("cannot run epm-agent status: {error}"))?;
    let status: Value = serde_json::from_slice(&output.stdout).map_err(|error| {
        format!(
            "status --json printed no JSON ({error}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    status["sinks"]
        .as_array()
        .and_then(|sinks| sinks.iter().find(|sink| sink["name"] == SINK))
        .cloned()
        .ok_or_else(|| format!("no sink {SINK} in {status}"))
}

/// The retained state once it says `state`, as JSON.
fn wait_for_state(dir: &TestDir, broker: &Mosquitto, state: &str) -> Value {
    dir.wait_until(
        DELIVERY_TIMEOUT,
        &format!("the retained state {state}"),
        || {
            let payload = retained(broker, STATE_TOPIC).ok_or("no retained state")?;
            let document: Value = serde_json::from_slice(&payload)
                .map_err(|error| format!("not JSON ({error}): {payload:?}"))?;
            if document["state"] == state {
                Ok(document)
            } else {
                Err(document.to_string())
            }
        },
    )
}

fn assert_online_document(document: &Value) {
    let object = document.as_object().expect("an object");
    assert_eq!(
        object.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from(["state", "agent", "version", "ts"]),
        "{document}"
    );
    assert_eq!(document["agent"], AGENT_ID);
    assert_eq!(document["version"], env!("CARGO_PKG_VERSION"));
    let ts = document["ts"].as_str().unwrap_or_default();
    let parsed = chrono::DateTime::parse_from_rfc3339(ts);
    assert!(
        parsed.is_ok() && ts.ends_with('Z') && ts.len() == "2026-11-22T10:15:04.001Z".len(),
        "ts is not RFC 3339 UTC with milliseconds: {document}"
    );
    let age = chrono::Utc::now().signed_duration_since(parsed.expect("parsed"));
    assert!(
        age < chrono::Duration::seconds(60),
        "ts is not the connection's time: {document}"
    );
}

/// Every agent's stderr in the test folder, together.
fn agent_log(dir: &TestDir) -> String {
    let mut log = String::new();
    for entry in fs::read_dir(dir.path()).expect("read the test folder") {
        let path = entry.expect("a folder entry").path();
        if path
            .extension()
            .is_some_and(|extension| extension == "stderr")
        {
            log.push_str(&fs::read_to_string(&path).unwrap_or_default());
        }
    }
    log
}

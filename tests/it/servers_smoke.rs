//! The server harness of `tests/servers/mod.rs` against the real servers:
//! PostgreSQL keeps data across a restart and checks passwords and TLS for
//! real; Mosquitto delivers QoS 1 messages to a persistent session, also
//! ones published while the subscriber was cut off by a broker restart,
//! keeps retained messages, and checks client certificates and passwords.
//! Needs `scripts/test-servers.sh` (which `scripts/test.sh` runs first).

use crate::servers;

use std::process::Output;
use std::time::{Duration, Instant};

use servers::{
    retained, ClientOptions, Message, Mosquitto, MosquittoOptions, Postgres, Subscriber, TestPki,
};

const WAIT: Duration = Duration::from_secs(10);

fn rows(values: &[&[Option<&str>]]) -> Vec<Vec<Option<String>>> {
    values
        .iter()
        .map(|row| row.iter().map(|value| value.map(str::to_string)).collect())
        .collect()
}

/// psql over TCP with a connection string and a password, printing the
/// value of `sql` alone.
fn psql_tcp(postgres: &Postgres, conninfo: &str, password: &str, sql: &str) -> Output {
    postgres
        .psql_command()
        .env("PGPASSWORD", password)
        .args(["-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, conninfo])
        .output()
        .expect("run psql")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_string()
}

#[test]
fn postgres_keeps_data_across_a_restart_and_checks_passwords() {
    let mut postgres = Postgres::start();
    postgres.create_user("sink", "s3cret 'quoted'");
    postgres.create_database("events", "sink");
    postgres.execute(
        "events",
        "CREATE TABLE presses (id integer PRIMARY KEY, note text);\n\
         INSERT INTO presses VALUES (1, 'a|b,c\nd'), (2, NULL), (3, '');",
    );
    let expected = rows(&[
        &[Some("1"), Some("a|b,c\nd")],
        &[Some("2"), None],
        &[Some("3"), Some("")],
    ]);
    let query = "SELECT id, note FROM presses ORDER BY id";
    assert_eq!(postgres.query("events", query), expected);
    assert_eq!(
        postgres.query("events", "SELECT 1 WHERE false"),
        Vec::<Vec<Option<String>>>::new()
    );

    let conninfo = format!(
        "host={} port={} user=sink dbname=events sslmode=disable",
        postgres.host(),
        postgres.port()
    );
    let right = psql_tcp(
        &postgres,
        &conninfo,
        "s3cret 'quoted'",
        "SELECT current_user",
    );
    assert!(right.status.success(), "login refused: {}", stderr(&right));
    assert_eq!(stdout(&right), "sink");
    let wrong = psql_tcp(&postgres, &conninfo, "wrong", "SELECT current_user");
    assert!(!wrong.status.success(), "a wrong password was taken");
    assert!(
        stderr(&wrong).contains("password authentication failed"),
        "unexpected refusal: {}",
        stderr(&wrong)
    );
    assert_eq!(
        postgres.url("sink", "events"),
        format!("postgres://sink@127.0.0.1:{}/events", postgres.port())
    );

    let port = postgres.port();
    postgres.stop();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the port still answers after stop"
    );
    postgres.start_again();
    assert_eq!(postgres.port(), port);
    assert_eq!(postgres.query("events", query), expected);
}

#[test]
fn postgres_tls_is_verified_against_the_ca() {
    let pki = TestPki::new();
    let postgres = Postgres::start_with_tls(&pki.server.cert_pem, &pki.server.key_pem);
    postgres.create_user("sink", "tls-pass");
    postgres.create_database("events", "sink");
    let conninfo = |root: &std::path::Path| {
        format!(
            "host=127.0.0.1 port={} user=sink dbname=events sslmode=verify-full sslrootcert={}",
            postgres.port(),
            root.display()
        )
    };
    let sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

    let trusted = psql_tcp(&postgres, &conninfo(&pki.ca.cert), "tls-pass", sql);
    assert!(
        trusted.status.success(),
        "verify-full against the CA failed: {}",
        stderr(&trusted)
    );
    assert_eq!(stdout(&trusted), "t", "the session is not encrypted");

    let unrelated = psql_tcp(&postgres, &conninfo(&pki.other.cert), "tls-pass", sql);
    assert!(
        !unrelated.status.success(),
        "a server certificate the unrelated root did not sign was accepted"
    );
    assert!(
        stderr(&unrelated).contains("certificate verify failed"),
        "unexpected refusal: {}",
        stderr(&unrelated)
    );
}

fn has(messages: &[Message], topic: &str, payload: &[u8]) -> bool {
    messages
        .iter()
        .any(|message| message.topic == topic && message.payload == payload)
}

#[test]
fn mosquitto_delivers_qos1_across_a_restart_and_keeps_retained_messages() {
    let mut broker = Mosquitto::start(MosquittoOptions::default());
    assert_eq!(broker.url(), format!("mqtt://127.0.0.1:{}", broker.port()));
    let anonymous = ClientOptions::default();
    let subscriber = Subscriber::start(&broker, "epm/#", "smoke-subscriber", &anonymous);

    let binary: &[u8] = b"\x00\xffpress\n\x1e";
    broker
        .publish("epm/shop-017/events", binary, 1, false, &anonymous)
        .expect("publish");
    let received = subscriber.wait_for(|messages| !messages.is_empty(), WAIT);
    assert_eq!(
        received,
        vec![Message {
            topic: "epm/shop-017/events".into(),
            payload: binary.to_vec(),
            retain: false,
            qos: 1,
        }]
    );

    broker
        .publish("epm/shop-017/state", b"online", 1, true, &anonymous)
        .expect("publish retained");
    assert_eq!(
        retained(&broker, "epm/shop-017/state").as_deref(),
        Some(&b"online"[..])
    );
    assert_eq!(retained(&broker, "epm/shop-017/nothing"), None);

    // The subscriber cannot reconnect while frozen: the message below is
    // published while its session has no connection, across a restart.
    subscriber.suspend();
    broker.restart();
    broker
        .publish("epm/shop-017/events", b"while away", 1, false, &anonymous)
        .expect("publish after the restart");
    assert!(
        !has(&subscriber.messages(), "epm/shop-017/events", b"while away"),
        "delivered to a frozen subscriber"
    );
    subscriber.resume();
    subscriber.wait_for(
        |messages| has(messages, "epm/shop-017/events", b"while away"),
        WAIT,
    );
    subscriber.wait_subscribed(2, WAIT);
    assert_eq!(
        retained(&broker, "epm/shop-017/state").as_deref(),
        Some(&b"online"[..]),
        "the retained message did not survive the restart"
    );
    // The retained message came live (retain 0), then again with the
    // resubscription after the reconnect (retain 1).
    let messages = subscriber.wait_for(
        |messages| messages.iter().any(|message| message.retain),
        WAIT,
    );
    let state: Vec<bool> = messages
        .iter()
        .filter(|message| message.topic == "epm/shop-017/state")
        .map(|message| message.retain)
        .collect();
    assert_eq!(state, [false, true], "unexpected messages: {messages:?}");
    assert_eq!(messages.len(), 4, "unexpected messages: {messages:?}");
}

#[test]
fn mosquitto_checks_client_certificates_and_passwords() {
    let pki = TestPki::new();
    let broker = Mosquitto::start(MosquittoOptions {
        tls: Some(pki.server_tls()),
        require_client_certificate: true,
        ..MosquittoOptions::default()
    });
    assert_eq!(broker.url(), format!("mqtts://localhost:{}", broker.port()));
    let with_cert = ClientOptions {
        client_cert: Some(pki.client_cert()),
        ..ClientOptions::default()
    };
    let subscriber = Subscriber::start(&broker, "epm/#", "smoke-tls-subscriber", &with_cert);
    broker
        .publish("epm/tls", b"with a certificate", 1, false, &with_cert)
        .expect("a client certificate signed by the CA is accepted");
    subscriber.wait_for(
        |messages| has(messages, "epm/tls", b"with a certificate"),
        WAIT,
    );

    let refused = broker.publish("epm/tls", b"without", 1, false, &ClientOptions::default());
    assert!(
        refused.is_err(),
        "a client without a certificate was accepted"
    );
    // The broker may write its log line just after the client gave up.
    let deadline = Instant::now() + WAIT;
    while !broker.log().contains("peer did not return a certificate") {
        assert!(
            Instant::now() < deadline,
            "refused for another reason: {refused:?}\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let unrelated_ca = ClientOptions {
        cafile: Some(pki.other.cert.clone()),
        ..with_cert.clone()
    };
    let error = broker
        .publish("epm/tls", b"wrong CA", 1, false, &unrelated_ca)
        .expect_err("the client trusted a server it should not");
    assert!(
        error.contains("TLS error"),
        "refused for another reason: {error}"
    );

    let users = Mosquitto::start(MosquittoOptions {
        users: vec![("agent".into(), "pass word".into())],
        ..MosquittoOptions::default()
    });
    let right = users.harness_client();
    users
        .publish("epm/users", b"ok", 1, true, &right)
        .expect("the right password is accepted");
    assert_eq!(retained(&users, "epm/users").as_deref(), Some(&b"ok"[..]));
    let wrong = ClientOptions {
        credentials: Some(("agent".into(), "wrong".into())),
        ..ClientOptions::default()
    };
    for (client, what) in [
        (&wrong, "a wrong password"),
        (&ClientOptions::default(), "no user"),
    ] {
        let error = users
            .publish("epm/users", b"no", 1, false, client)
            .expect_err(what);
        assert!(error.contains("not authorised"), "{what}: {error}");
    }
}

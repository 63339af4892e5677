//! The PostgreSQL sink end to end: the real `epm-agent run` reads a
//! ProLAN-202 keypad and a ProLAN-501 receiver emulated on pseudo-terminals
//! and delivers into a real PostgreSQL cluster started by
//! `tests/servers/mod.rs` (no mocks). Every check compares the table with
//! the agent's store by SQL on both sides: every press there exactly once,
//! every column as stored.
//!
//! Faults: the database stopped for 10 s mid-stream and two `kill -9`s of
//! the agent while it commits, a wrong password, a missing privilege, a row
//! the database rejects, and a server whose certificate is not trusted.
//! Needs `scripts/test-servers.sh` (which `scripts/test.sh` runs first).

use crate::servers;
use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rusqlite::types::ValueRef;
use serde_json::Value;

use epm_agent::protocol::{Press, UnitId};
use servers::{Postgres, TestPki};
use support::{
    keypad_press, open_store, radio_press, Agent, DeviceConfig, Emulator, EmulatorOptions, TestDir,
    START_TIMEOUT,
};

const USER: &str = "epm";
const PASSWORD: &str = "pg-R1ght-9Kx4";
const WRONG_PASSWORD: &str = "pg-Wr0ng-7Qm2";
const DATABASE: &str = "loyalty";
const TABLE: &str = "epm_events";
const SINK: &str = "hq";
const AGENT_ID: &str = "pg-e2e";
const LOCATION: &str = "Moscow, Tverskaya 7";
/// The receiver's remotes; the second one reports no battery (NULL).
const REMOTES: [UnitId; 8] = [
    UnitId(0x301A_0001),
    UnitId(0x301A_0002),
    UnitId(0x301A_0003),
    UnitId(0x301A_0004),
    UnitId(0x301A_0005),
    UnitId(0x301A_0006),
    UnitId(0x301A_0007),
    UnitId(0x301A_0008),
];
/// The keys the remotes press in turn: every key but 5 (the key the
/// rejection test's CHECK refuses); 12 is not in the keymap (answer NULL).
const RADIO_KEYS: [u8; 11] = [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12];
/// How long a few hundred presses may take from the emulators to the table.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long 10,000 presses may take to be read and stored.
const STREAM_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a paused or failing sink may take to say so in `status`.
const STATE_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn ten_thousand_presses_from_two_devices_land_exactly_once_with_every_column() {
    const PRESSES: usize = 10_000;
    let postgres = Postgres::start();
    let shop = Shop::new(&postgres, SinkOptions::default());
    let _agent = shop.start_agent();
    shop.press(0..PRESSES);
    shop.wait_until_sent();
    shop.wait_for_stored_presses(PRESSES, STREAM_TIMEOUT);
    shop.wait_for_table_presses(&postgres, PRESSES, STREAM_TIMEOUT);
    assert_table_matches_store(&shop, &postgres, PRESSES);
}

#[test]
fn a_database_outage_and_two_kill_9s_while_committing_lose_and_double_nothing() {
    const CHUNK: usize = 2_500;
    const OUTAGE: Duration = Duration::from_secs(10);
    let mut postgres = Postgres::start();
    let shop = Shop::new(
        &postgres,
        SinkOptions {
            batch_size: 50,
            ..SinkOptions::default()
        },
    );
    let mut agent = shop.start_agent();

    // The database goes away while the first chunk streams in.
    shop.press(0..CHUNK);
    shop.wait_for_table_presses(&postgres, 200, DELIVERY_TIMEOUT);
    postgres.stop();
    let stopped_at = Instant::now();
    shop.press(CHUNK..2 * CHUNK);
    shop.wait_until_sent();
    shop.wait_for_stored_presses(2 * CHUNK, STREAM_TIMEOUT);
    let (state, last_error) = shop.wait_for_sink_state("retrying", STATE_TIMEOUT);
    assert!(
        last_error.contains("PostgreSQL"),
        "the sink is {state} with last_error {last_error:?}"
    );
    // The outage lasts its full length: presses keep coming meanwhile.
    std::thread::sleep(OUTAGE.saturating_sub(stopped_at.elapsed()));
    postgres.start_again();

    // Two kill -9s while the backlog drains, batch after batch.
    for _ in 0..2 {
        let before = table_presses(&postgres);
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        while table_presses(&postgres) == before {
            assert!(
                Instant::now() < deadline,
                "no delivery resumed within {DELIVERY_TIMEOUT:?}\n{}",
                shop.dir.diagnostics().report()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        agent.kill();
        let at_kill = table_presses(&postgres);
        assert!(
            at_kill < 2 * CHUNK,
            "the backlog was delivered before the kill ({at_kill} presses): the kill did not hit a commit"
        );
        agent = shop.restart_agent();
    }

    shop.press(2 * CHUNK..4 * CHUNK);
    shop.wait_until_sent();
    shop.wait_for_stored_presses(4 * CHUNK, STREAM_TIMEOUT);
    shop.wait_for_table_presses(&postgres, 4 * CHUNK, STREAM_TIMEOUT);
    assert_table_matches_store(&shop, &postgres, 4 * CHUNK);
}

#[test]
fn a_wrong_password_pauses_the_sink_and_the_right_one_delivers_everything() {
    const PRESSES: usize = 200;
    let postgres = Postgres::start();
    let shop = Shop::new(
        &postgres,
        SinkOptions {
            password: WRONG_PASSWORD,
            ..SinkOptions::default()
        },
    );
    let _agent = shop.start_agent();
    shop.press(0..PRESSES);
    let (_, last_error) = shop.wait_for_sink_state("paused", STATE_TIMEOUT);
    assert!(
        last_error.contains("authentication"),
        "last_error {last_error:?}"
    );
    assert!(!table_exists(&postgres), "nothing was written");
    shop.wait_until_sent();
    shop.wait_for_stored_presses(PRESSES, DELIVERY_TIMEOUT);

    // The right password into the file: read again after the pause.
    fs::write(&shop.password_file, format!("{PASSWORD}\n")).expect("write the password file");
    shop.wait_for_table_presses(&postgres, PRESSES, DELIVERY_TIMEOUT);
    assert_table_matches_store(&shop, &postgres, PRESSES);
    let (state, _) = shop.sink_status();
    assert_eq!(state, "ok");
    let said = shop.everything_said();
    for secret in [PASSWORD, WRONG_PASSWORD] {
        assert!(
            !said.contains(secret),
            "a password shows in the log or status: {secret}"
        );
    }
}

#[test]
fn a_missing_insert_privilege_pauses_the_sink_and_a_grant_delivers_everything() {
    const PRESSES: usize = 200;
    let postgres = Postgres::start();
    postgres.create_user(USER, PASSWORD);
    // The database and the table are the administrator's: the sink's user
    // may neither create a table nor insert into this one, only read it
    // (`ON CONFLICT (id)` reads the ids, so SELECT is needed anyway).
    postgres.create_database(DATABASE, "postgres");
    postgres.execute(
        DATABASE,
        &format!(
            "{}\nGRANT SELECT ON {TABLE} TO {USER};",
            contract_table_sql()
        ),
    );
    let shop = Shop::with_database_ready(&postgres, SinkOptions::default());
    let _agent = shop.start_agent();
    shop.press(0..PRESSES);
    let (_, last_error) = shop.wait_for_sink_state("paused", STATE_TIMEOUT);
    assert!(
        last_error.contains("42501")
            && last_error.contains("permission denied")
            && last_error.contains("needs INSERT and SELECT on table epm_events"),
        "last_error {last_error:?}"
    );
    shop.wait_until_sent();
    shop.wait_for_stored_presses(PRESSES, DELIVERY_TIMEOUT);
    assert_eq!(table_presses(&postgres), 0);

    postgres.execute(DATABASE, &format!("GRANT INSERT ON {TABLE} TO {USER};"));
    shop.wait_for_table_presses(&postgres, PRESSES, DELIVERY_TIMEOUT);
    assert_table_matches_store(&shop, &postgres, PRESSES);
    assert_eq!(shop.sink_status().0, "ok");
}

#[test]
fn a_row_the_database_rejects_is_dead_lettered_alone_and_the_rest_delivered() {
    const PRESSES: usize = 300;
    let postgres = Postgres::start();
    postgres.create_user(USER, PASSWORD);
    postgres.create_database(DATABASE, USER);
    postgres.execute(
        DATABASE,
        &format!(
            "{}\nALTER TABLE {TABLE} ADD CONSTRAINT no_key_5 CHECK (key <> 5);\n\
             ALTER TABLE {TABLE} OWNER TO {USER};",
            contract_table_sql()
        ),
    );
    let shop = Shop::with_database_ready(&postgres, SinkOptions::default());
    let _agent = shop.start_agent();
    shop.press(0..PRESSES / 2);
    shop.receiver
        .press(radio_press(REMOTES[0], 5, 60_000, -55, Some(90)));
    shop.press(PRESSES / 2..PRESSES);
    shop.wait_until_sent();
    shop.wait_for_stored_presses(PRESSES + 1, DELIVERY_TIMEOUT);
    let rejected = store_rows(
        &shop.dir,
        "SELECT id FROM events WHERE type = 'press' AND key = 5",
    );
    assert_eq!(rejected.len(), 1, "one press of key 5 is stored");
    let rejected_id = rejected[0][0].clone().expect("an id");

    let letters = shop
        .dir
        .wait_until(DELIVERY_TIMEOUT, "the key 5 press dead-lettered", || {
            let letters = shop.dead_letters();
            if letters.is_empty() {
                Err("no dead letter".into())
            } else {
                Ok(letters)
            }
        });
    shop.wait_for_table_presses(&postgres, PRESSES, DELIVERY_TIMEOUT);
    let listed: Vec<(&str, &str)> = letters
        .iter()
        .map(|letter| {
            (
                letter["sink"].as_str().unwrap_or_default(),
                letter["event_id"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(listed, vec![(SINK, rejected_id.as_str())], "{letters:?}");
    let reason = letters[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("23514") && reason.contains("no_key_5"),
        "reason {reason:?}"
    );
    assert_eq!(
        postgres.query(
            DATABASE,
            &format!("SELECT count(*) FROM {TABLE} WHERE key = 5")
        ),
        vec![vec![Some("0".to_string())]]
    );
    // Everything else is there, column for column.
    assert_table_matches_store_except(&shop, &postgres, PRESSES, &[rejected_id]);
}

#[test]
fn an_untrusted_certificate_is_refused_and_accepted_once_its_ca_is_configured() {
    const PRESSES: usize = 100;
    let pki = TestPki::new();
    // Self-signed, and the server takes plain connections too: the sink
    // must neither trust it nor fall back to plain text (sslmode prefer).
    let postgres = Postgres::start_with_tls(&pki.other.cert_pem, &pki.other.key_pem);
    let shop = Shop::new(&postgres, SinkOptions::default());
    let agent = shop.start_agent();
    shop.press(0..PRESSES);
    let (_, last_error) = shop.wait_for_sink_state("retrying", STATE_TIMEOUT);
    assert!(
        last_error.contains("TLS: certificate not trusted (add its CA with ca_file)"),
        "last_error {last_error:?}"
    );
    shop.wait_until_sent();
    shop.wait_for_stored_presses(PRESSES, DELIVERY_TIMEOUT);
    // Still refused a few retries later (max_backoff_s = 1).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(shop.sink_status().0, "retrying");
    assert!(
        !table_exists(&postgres),
        "nothing was written over an untrusted or plain connection"
    );

    shop.write_config(&SinkOptions {
        ca_file: Some(pki.other.cert.clone()),
        ..SinkOptions::default()
    });
    agent.signal(Signal::SIGHUP);
    shop.wait_for_table_presses(&postgres, PRESSES, DELIVERY_TIMEOUT);
    assert_table_matches_store(&shop, &postgres, PRESSES);
    let sessions = postgres.query(
        "postgres",
        &format!(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.usename = '{USER}'"
        ),
    );
    assert!(
        !sessions.is_empty() && sessions.iter().all(|row| row[0].as_deref() == Some("t")),
        "the sink's sessions, TLS or not: {sessions:?}"
    );
}

// ---------------------------------------------------------------------------
// A shop: two devices, the agent, its configuration

/// How the `[[sink]]` of a test is set up.
#[derive(Clone)]
struct SinkOptions {
    /// What the password file holds.
    password: &'static str,
    batch_size: usize,
    ca_file: Option<PathBuf>,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            password: PASSWORD,
            batch_size: 500,
            ca_file: None,
        }
    }
}

/// A test folder with a keypad and a receiver on pseudo-terminals and a
/// configuration that delivers to the test's PostgreSQL.
struct Shop {
    dir: TestDir,
    keypad: Emulator,
    receiver: Emulator,
    config: PathBuf,
    password_file: PathBuf,
    url: String,
}

impl Shop {
    /// The sink's user and its own database, then the shop.
    fn new(postgres: &Postgres, sink: SinkOptions) -> Shop {
        postgres.create_user(USER, PASSWORD);
        postgres.create_database(DATABASE, USER);
        Shop::with_database_ready(postgres, sink)
    }

    /// The shop, for a test that has set up the user and database itself.
    fn with_database_ready(postgres: &Postgres, sink: SinkOptions) -> Shop {
        let dir = TestDir::new();
        let keypad = dir.keypad("cashdesk", EmulatorOptions::keypad());
        let receiver = dir.receiver("entrance", EmulatorOptions::receiver());
        let password_file = dir.path().join("pg-password");
        OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&password_file)
            .and_then(|mut file| file.write_all(format!("{}\n", sink.password).as_bytes()))
            .expect("write the password file");
        let shop = Shop {
            config: dir.path().join("epm-agent.toml"),
            url: postgres.url(USER, DATABASE),
            dir,
            keypad,
            receiver,
            password_file,
        };
        shop.write_config(&sink);
        shop
    }

    /// `epm-agent.toml`: both devices (the receiver's presses after the
    /// first of each remote are marked suppressed: min_interval_s), status
    /// events every second, and the sink.
    fn write_config(&self, sink: &SinkOptions) {
        let quoted = |text: &str| toml::Value::String(text.to_string()).to_string();
        let devices = [
            DeviceConfig {
                min_interval_s: 0.0,
                ..DeviceConfig::of(
                    &self.keypad,
                    "satisfied",
                    DeviceConfig::keymap(&[(1, "yes"), (2, "neutral"), (3, "no")]),
                )
            },
            DeviceConfig {
                min_interval_s: 3600.0,
                ..DeviceConfig::of(
                    &self.receiver,
                    "recommend",
                    (1..=11u8).map(|key| (key, (key - 1).to_string())).collect(),
                )
            },
        ];
        let mut text = format!(
            "[agent]\nid = {}\nlocation = {}\ndata_dir = {}\nstatus_interval_s = 1\n",
            quoted(AGENT_ID),
            quoted(LOCATION),
            quoted(&self.dir.data_dir().to_string_lossy()),
        );
        for device in &devices {
            let keymap: Vec<String> = device
                .keymap
                .iter()
                .map(|(key, answer)| format!("{key} = {}", quoted(answer)))
                .collect();
            text.push_str(&format!(
                "\n[[device]]\nname = {}\nmodel = {}\nport = {}\nquestion = {}\nkeymap = {{ {} }}\nmin_interval_s = {:?}\n",
                quoted(&device.name),
                quoted(device.model),
                quoted(&device.port.to_string_lossy()),
                quoted(&device.question),
                keymap.join(", "),
                device.min_interval_s,
            ));
        }
        text.push_str(&format!(
            "\n[[sink]]\nname = {}\nkind = \"postgres\"\nurl = {}\npassword_file = {}\ntable = {}\n\
             batch_size = {}\nflush_interval_ms = 20\nmax_backoff_s = 1\npaused_retry_s = 1\ntimeout_s = 5\n",
            quoted(SINK),
            quoted(&self.url),
            quoted(&self.password_file.to_string_lossy()),
            quoted(TABLE),
            sink.batch_size,
        ));
        if let Some(ca_file) = &sink.ca_file {
            text.push_str(&format!(
                "ca_file = {}\n",
                quoted(&ca_file.to_string_lossy())
            ));
        }
        text.push_str("\n[log]\nlevel = \"epm_agent=debug,info\"\n");
        fs::write(&self.config, text).expect("write the configuration");
    }

    fn start_agent(&self) -> Agent {
        self.dir
            .start_agent(&self.config, &[&self.keypad, &self.receiver])
    }

    /// After a `kill -9`: the agent again on the same data_dir, once it has
    /// opened both ports again.
    fn restart_agent(&self) -> Agent {
        let queries = [&self.keypad, &self.receiver].map(|emulator| {
            emulator.release_exclusive();
            emulator.observed().queries.len()
        });
        let agent = self.dir.spawn_agent(&self.config);
        for (emulator, seen) in [&self.keypad, &self.receiver].into_iter().zip(queries) {
            emulator.wait_for_query(seen + 1, START_TIMEOUT);
        }
        agent
    }

    /// Queues presses number `range`: even ones from the keypad, odd ones
    /// from the receiver's remotes in turn; every (unit, seq) is distinct.
    fn press(&self, range: std::ops::Range<usize>) {
        for index in range {
            let (emulator, press) = press_number(index);
            match emulator {
                Device::Keypad => self.keypad.press(press),
                Device::Receiver => self.receiver.press(press),
            }
        }
    }

    fn wait_until_sent(&self) {
        self.keypad.wait_until_sent(STREAM_TIMEOUT);
        self.receiver.wait_until_sent(STREAM_TIMEOUT);
    }

    fn wait_for_stored_presses(&self, count: usize, timeout: Duration) {
        self.dir
            .wait_until(timeout, &format!("{count} presses stored"), || {
                let stored = store_rows(
                    &self.dir,
                    "SELECT count(*) FROM events WHERE type = 'press'",
                );
                let stored: usize = stored[0][0]
                    .as_deref()
                    .and_then(|count| count.parse().ok())
                    .unwrap_or(0);
                if stored >= count {
                    Ok(())
                } else {
                    Err(format!("{stored} presses"))
                }
            });
    }

    fn wait_for_table_presses(&self, postgres: &Postgres, count: usize, timeout: Duration) {
        self.dir.wait_until(
            timeout,
            &format!("{count} presses in the PostgreSQL table"),
            || {
                let delivered = table_presses(postgres);
                if delivered >= count {
                    Ok(())
                } else {
                    Err(format!("{delivered} presses"))
                }
            },
        );
    }

    /// The sink's `state` and `last_error` in `epm-agent status --json`.
    fn sink_status(&self) -> (String, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
            .args(["status", "--json", "--config"])
            .arg(&self.config)
            .output()
            .expect("run epm-agent status");
        let status: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "status --json is not JSON ({error}): {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        let sink = status["sinks"]
            .as_array()
            .and_then(|sinks| sinks.iter().find(|sink| sink["name"] == SINK))
            .unwrap_or_else(|| panic!("no sink {SINK} in {status}"));
        (
            sink["state"].as_str().unwrap_or_default().to_string(),
            sink["last_error"].as_str().unwrap_or_default().to_string(),
        )
    }

    fn wait_for_sink_state(&self, state: &str, timeout: Duration) -> (String, String) {
        self.dir
            .wait_until(timeout, &format!("the sink {state} in status"), || {
                let status = self.sink_status();
                if status.0 == state {
                    Ok(status)
                } else {
                    Err(format!("{status:?}"))
                }
            })
    }

    /// `epm-agent deadletter list --json`.
    fn dead_letters(&self) -> Vec<Value> {
        let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
            .args(["deadletter", "list", "--json", "--config"])
            .arg(&self.config)
            .output()
            .expect("run epm-agent deadletter list");
        assert!(
            output.status.success(),
            "deadletter list: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        match serde_json::from_slice(&output.stdout) {
            Ok(Value::Array(letters)) => letters,
            other => panic!("deadletter list --json is not an array: {other:?}"),
        }
    }

    /// Every agent's stderr and the status output, to look for secrets.
    fn everything_said(&self) -> String {
        let mut said = self.dir.diagnostics().report();
        for entry in fs::read_dir(self.dir.path()).expect("list the test folder") {
            let path = entry.expect("a folder entry").path();
            if path
                .extension()
                .is_some_and(|extension| extension == "stderr")
            {
                said.push_str(&fs::read_to_string(&path).unwrap_or_default());
            }
        }
        let (state, last_error) = self.sink_status();
        said.push_str(&state);
        said.push_str(&last_error);
        said
    }
}

enum Device {
    Keypad,
    Receiver,
}

/// The `index`-th press of a test (see [`Shop::press`]).
fn press_number(index: usize) -> (Device, Press) {
    let turn = index / 2;
    if index.is_multiple_of(2) {
        let key = (turn % 4) as u8 + 1; // key 4 is not in the keymap
        return (Device::Keypad, keypad_press(key, turn as u16));
    }
    let remote = turn % REMOTES.len();
    let counter = (turn / REMOTES.len()) as u16;
    let battery = match remote {
        1 => None,
        _ => Some(100 - (turn % 60) as u8),
    };
    (
        Device::Receiver,
        radio_press(
            REMOTES[remote],
            RADIO_KEYS[turn % RADIO_KEYS.len()],
            counter,
            -40 - (turn % 50) as i8,
            battery,
        ),
    )
}

// ---------------------------------------------------------------------------
// Both sides, by SQL

/// The contract's table, as an administrator would create it beforehand.
fn contract_table_sql() -> String {
    format!(
        "CREATE TABLE {TABLE} (
           id            text PRIMARY KEY,
           type          text NOT NULL,
           agent_id      text NOT NULL,
           location      text,
           ts            timestamptz NOT NULL,
           tz_offset_min integer,
           device text, model text, unit text, key integer, answer text,
           question text, seq integer, rssi integer, battery integer,
           suppressed    boolean,
           detail        jsonb,
           received_at   timestamptz NOT NULL DEFAULT now()
         );"
    )
}

fn table_exists(postgres: &Postgres) -> bool {
    postgres.query(
        DATABASE,
        &format!("SELECT to_regclass('{TABLE}') IS NOT NULL"),
    ) == vec![vec![Some("t".to_string())]]
}

/// Presses in the PostgreSQL table (0 while it does not exist).
fn table_presses(postgres: &Postgres) -> usize {
    if !table_exists(postgres) {
        return 0;
    }
    postgres.query(
        DATABASE,
        &format!("SELECT count(*) FROM {TABLE} WHERE type = 'press'"),
    )[0][0]
        .as_deref()
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}

/// A row of a query, each value as text (`None` for NULL), as the
/// harness's `Postgres::query` returns them.
type Row = Vec<Option<String>>;

/// The rows of a query on the agent's store, each value as text.
fn store_rows(dir: &TestDir, sql: &str) -> Vec<Row> {
    let connection =
        open_store(&dir.data_dir()).unwrap_or_else(|error| dir.diagnostics().fail(error));
    let mut statement = connection
        .prepare(sql)
        .unwrap_or_else(|error| panic!("prepare {sql}: {error}"));
    let columns = statement.column_count();
    let rows = statement
        .query_map([], |row| {
            (0..columns)
                .map(|column| {
                    Ok(match row.get_ref(column)? {
                        ValueRef::Null => None,
                        ValueRef::Integer(number) => Some(number.to_string()),
                        ValueRef::Real(number) => Some(number.to_string()),
                        ValueRef::Text(text) | ValueRef::Blob(text) => {
                            Some(String::from_utf8_lossy(text).into_owned())
                        }
                    })
                })
                .collect()
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
    rows.unwrap_or_else(|error| panic!("{sql}: {error}"))
}

/// The press columns as text, the same on both sides: `ts` as the store
/// writes it, booleans as `true` / `false`.
const STORE_PRESSES: &str =
    "SELECT id, type, ts, tz_offset_min, device, model, unit, key, answer, \
     question, seq, rssi, battery, CASE suppressed WHEN 0 THEN 'false' ELSE 'true' END \
     FROM events WHERE type = 'press' ORDER BY id";

fn table_presses_sql() -> String {
    format!(
        "SELECT id, type, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
         tz_offset_min, device, model, unit, key, answer, question, seq, rssi, battery, \
         CASE WHEN suppressed THEN 'true' ELSE 'false' END \
         FROM {TABLE} WHERE type = 'press' ORDER BY id"
    )
}

fn assert_table_matches_store(shop: &Shop, postgres: &Postgres, presses: usize) {
    assert_table_matches_store_except(shop, postgres, presses, &[]);
}

/// Every press of the store is in the table once, column for column, but
/// those in `left_out`; nothing else is; the rows say who sent them; their
/// `detail` is the event; the agent status events delivered are the
/// store's. `presses` is how many the emulators sent.
fn assert_table_matches_store_except(
    shop: &Shop,
    postgres: &Postgres,
    presses: usize,
    left_out: &[String],
) {
    let fail = |message: String| -> ! { shop.dir.diagnostics().fail(message) };
    let by_id = |rows: Vec<Row>| -> BTreeMap<String, Row> {
        rows.into_iter()
            .map(|row| (row[0].clone().unwrap_or_default(), row))
            .collect()
    };
    let stored_rows = store_rows(&shop.dir, STORE_PRESSES);
    let table_rows = postgres.query(DATABASE, &table_presses_sql());
    let mut stored = by_id(stored_rows.clone());
    let table = by_id(table_rows.clone());
    assert_eq!(
        stored.len(),
        stored_rows.len(),
        "ids are unique in the store"
    );
    assert_eq!(
        stored.len(),
        presses + left_out.len(),
        "every press sent is stored once"
    );
    for id in left_out {
        stored.remove(id);
    }
    let missing: Vec<&String> = stored
        .keys()
        .filter(|id| !table.contains_key(*id))
        .collect();
    let extra: Vec<&String> = table
        .keys()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    let different: Vec<(&Row, &Row)> = stored
        .iter()
        .filter_map(|(id, row)| Some((row, table.get(id)?)))
        .filter(|(stored, table)| stored != table)
        .collect();
    if !missing.is_empty() || !extra.is_empty() || !different.is_empty() {
        fail(format!(
            "the table differs from the store: {} missing (first {:?}), {} not in the store \
             (first {:?}), {} rows differ (first, store then table: {:?})",
            missing.len(),
            missing.first(),
            extra.len(),
            extra.first(),
            different.len(),
            different.first()
        ));
    }
    assert_eq!(
        table_rows.len(),
        table.len(),
        "an id twice in the table's rows"
    );

    let count = |sql: String| -> String {
        postgres.query(DATABASE, &sql)[0][0]
            .clone()
            .unwrap_or_default()
    };
    let doubled = count(format!(
        "SELECT count(*) FROM (SELECT device, unit, seq FROM {TABLE} WHERE type = 'press' \
         GROUP BY device, unit, seq HAVING count(*) > 1) doubled"
    ));
    assert_eq!(doubled, "0", "presses with the same (device, unit, seq)");
    let strangers = count(format!(
        "SELECT count(*) FROM {TABLE} WHERE agent_id <> '{AGENT_ID}' \
         OR location IS DISTINCT FROM '{LOCATION}' OR received_at IS NULL"
    ));
    assert_eq!(strangers, "0", "rows that do not name the agent");
    let unlike_detail = count(format!(
        "SELECT count(*) FROM {TABLE} WHERE type = 'press' AND detail IS DISTINCT FROM \
         jsonb_build_object('id', id, 'type', type, \
           'ts', to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
           'tz_offset_min', tz_offset_min, 'device', device, 'model', model, 'unit', unit, \
           'key', key, 'answer', answer, 'question', question, 'seq', seq, 'rssi', rssi, \
           'battery', battery, 'suppressed', suppressed)"
    ));
    assert_eq!(unlike_detail, "0", "presses whose detail is not the event");

    // The same shapes of data as the store on both sides: NULLs included.
    let nulls = count(format!(
        "SELECT count(*) FILTER (WHERE answer IS NULL) > 0 AND count(*) FILTER (WHERE rssi IS NULL) > 0 \
         AND count(*) FILTER (WHERE battery IS NULL AND rssi IS NOT NULL) > 0 \
         AND count(*) FILTER (WHERE suppressed) > 0 AND count(*) FILTER (WHERE NOT suppressed) > 0 \
         FROM {TABLE} WHERE type = 'press'"
    ));
    assert_eq!(
        nulls, "t",
        "the test data has NULL answers, rssi and battery, and suppressed presses"
    );

    assert_status_events_match_store(shop, postgres);
}

/// Each `agent_status` row is one of the store's, with its `status` object
/// in `detail` and no press column set.
fn assert_status_events_match_store(shop: &Shop, postgres: &Postgres) {
    let parse = |text: &Option<String>| -> Value {
        serde_json::from_str(text.as_deref().unwrap_or("null")).expect("status JSON")
    };
    let stored: BTreeMap<String, Value> = store_rows(
        &shop.dir,
        "SELECT id, status FROM events WHERE type = 'agent_status'",
    )
    .iter()
    .map(|row| (row[0].clone().unwrap_or_default(), parse(&row[1])))
    .collect();
    let table = postgres.query(
        DATABASE,
        &format!(
            "SELECT id, detail->'status', num_nonnulls(device, model, unit, key, answer, \
             question, seq, rssi, battery, suppressed) FROM {TABLE} WHERE type = 'agent_status'"
        ),
    );
    // The start event is stored before any press, so it is delivered once
    // the presses are.
    assert!(
        !table.is_empty(),
        "no agent status event in the table; the store has {}",
        stored.len()
    );
    let mut seen = BTreeSet::new();
    for row in &table {
        let id = row[0].clone().unwrap_or_default();
        assert_eq!(
            stored.get(&id),
            Some(&parse(&row[1])),
            "agent status event {id}"
        );
        assert_eq!(
            row[2].as_deref(),
            Some("0"),
            "press columns of agent status event {id}"
        );
        seen.insert(id);
    }
    assert_eq!(seen.len(), table.len());
}

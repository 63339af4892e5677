//! PostgreSQL sink (`kind = "postgres"`, `docs/upload.md`): rows of one
//! table, one transaction per batch, `ON CONFLICT (id) DO NOTHING`, so a
//! resent batch never doubles a press. It owns the sink's one connection
//! (opened lazily, again after a loss), its TLS (rustls, always verified;
//! plain only when the url's `sslmode` allows it to a local host), the
//! table's creation when it is missing, the mapping of an event onto the
//! table's columns, and the translation of every failure into an
//! [`Outcome`] for the policy. The password is set on the connection's
//! configuration only: never logged, never in a message.
//!
//! A batch goes in with `COPY ... FROM STDIN BINARY` into a temporary
//! table, then one `INSERT ... SELECT ... ON CONFLICT (id) DO NOTHING`.
//! The temporary table is made once per connection (`ON COMMIT DELETE
//! ROWS`) and both statements are prepared once, so a batch costs BEGIN,
//! COPY, INSERT, COMMIT. Measured against a multi-row `INSERT ... VALUES`
//! with parameters and against a temporary table made and dropped per
//! batch (`docs/performance.md`): as fast at the default batch size,
//! faster and smaller in memory above it, so it is the only path.

use std::error::Error as _;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::sync::oneshot;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::types::{IsNull, Json, ToSql, Type};
use tokio_postgres::{Client, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::policy::{sqlstate_verdict, Outcome, SqlVerdict};
use super::{secret, tls, AgentInfo, SinkError};
use crate::config::{PostgresSinkSettings, SecretSource};
use crate::event::{Event, EventBody};
use crate::store::StoredEvent;

pub struct PostgresSink {
    name: String,
    /// The url's settings with the TLS mode decided, without the password.
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// `host:port` of every host, for messages.
    target: String,
    table: String,
    timeout: Duration,
    password_source: SecretSource,
    password: Option<String>,
    password_error: Option<String>,
    agent: AgentInfo,
    connection: Option<Connection>,
}

/// An open connection and what was prepared on it.
struct Connection {
    client: Client,
    /// Why the connection ended, from the task that drives it.
    ended: oneshot::Receiver<String>,
    /// `COPY` of a batch into [`BATCH_TABLE`].
    copy: Statement,
    /// [`BATCH_TABLE`]'s rows into the table, but ids already there.
    insert: Statement,
}

/// The table's columns, in the contract's order (`received_at` is the
/// database's).
const COLUMNS: &str = "id, type, agent_id, location, ts, tz_offset_min, device, model, unit, \
                       key, answer, question, seq, rssi, battery, suppressed, detail";
/// Their types, in the same order, for the binary COPY.
const COLUMN_TYPES: [Type; 17] = [
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::INT4,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::INT4,
    Type::INT4,
    Type::BOOL,
    Type::JSONB,
];
/// The session's table a batch is copied into; in `pg_temp`, so never the
/// configured table, and emptied at every COMMIT (or ROLLBACK).
const BATCH_TABLE: &str = "pg_temp.epm_agent_batch";
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl PostgresSink {
    pub fn new(
        name: &str,
        settings: &PostgresSinkSettings,
        agent: AgentInfo,
    ) -> Result<PostgresSink, SinkError> {
        let setup = |message: String| SinkError::Setup {
            sink: name.to_string(),
            message,
        };
        let mut config: tokio_postgres::Config = settings.url.parse().map_err(|error| {
            setup(format!(
                "url is not a PostgreSQL connection string: {error}"
            ))
        })?;
        if !settings.local {
            // Presses cross a network: TLS or nothing, whatever the url says.
            config.ssl_mode(SslMode::Require);
        }
        config.connect_timeout(settings.timeout);
        if config.get_application_name().is_none() {
            config.application_name(format!("epm-agent {}", agent.id));
        }
        let mut client_config = tls::client_config(&settings.tls).map_err(setup)?;
        // What PostgreSQL 17's direct TLS negotiation asks for; older
        // servers ignore it.
        client_config.alpn_protocols = vec![b"postgresql".to_vec()];
        let mut sink = PostgresSink {
            name: name.to_string(),
            target: describe_target(&config),
            config,
            tls: MakeRustlsConnect::new(client_config),
            table: settings.table.clone(),
            timeout: settings.timeout,
            password_source: settings.password.clone(),
            password: None,
            password_error: None,
            agent,
            connection: None,
        };
        sink.refresh_password();
        if let Some(error) = &sink.password_error {
            // Not fatal: the sink pauses and reads the password again later.
            tracing::error!(sink = %sink.name, "{error}");
        }
        Ok(sink)
    }

    /// Why the password cannot be used, if it cannot.
    pub fn password_problem(&self) -> Option<&str> {
        self.password_error.as_deref()
    }

    /// Reads the password again from its source (environment or file). An
    /// open connection stays: it has logged in already.
    pub fn refresh_password(&mut self) {
        match secret::resolve(&self.password_source, "password") {
            Ok(password) => {
                self.password = password;
                self.password_error = None;
            }
            Err(error) => {
                self.password = None;
                self.password_error = Some(error);
            }
        }
    }

    /// Inserts one batch in one transaction; `Accepted` only after COMMIT.
    pub async fn deliver(&mut self, _batch_id: &str, events: &[StoredEvent]) -> Outcome {
        if let Some(error) = &self.password_error {
            return Outcome::Misconfigured(error.clone());
        }
        let rows = match events.iter().map(Row::of).collect::<Result<Vec<_>, _>>() {
            Ok(rows) => rows,
            Err(outcome) => return outcome,
        };
        let mut connection = match self.connection.take() {
            Some(connection) if !connection.client.is_closed() => connection,
            _ => match self.connect().await {
                Ok(connection) => connection,
                Err(outcome) => return outcome,
            },
        };
        let inserting = insert(&mut connection, &self.agent, &rows);
        match tokio::time::timeout(self.timeout, inserting).await {
            Ok(Ok(())) => {
                self.connection = Some(connection);
                Outcome::Accepted
            }
            Ok(Err(error)) => {
                let outcome = match self.outcome_of(
                    &error,
                    &connection.client,
                    &mut connection.ended,
                ) {
                    Outcome::Database { sqlstate, message } if sqlstate == "42501" => {
                        Outcome::Database {
                            message: format!("{message} ({})", insert_privilege_hint(&self.table)),
                            sqlstate,
                        }
                    }
                    outcome => outcome,
                };
                // A table dropped meanwhile is made again by the setup of a
                // new connection.
                let table_gone = matches!(&outcome, Outcome::Database { sqlstate, .. } if sqlstate == "42P01");
                if !connection.client.is_closed() && !table_gone {
                    // The transaction was rolled back when it was dropped;
                    // the connection is good for the next batch.
                    self.connection = Some(connection);
                }
                outcome
            }
            // The connection is in an unknown state: dropped, which ends the
            // session and rolls back an open transaction on the server. (If
            // the COMMIT went through, the resent rows are kept as they are.)
            Err(_) => Outcome::Transport(format!(
                "timed out after {} s sending the batch to PostgreSQL at {}; the connection is dropped",
                self.timeout.as_secs_f64(),
                self.target
            )),
        }
    }

    /// A new connection, with the table there.
    async fn connect(&self) -> Result<Connection, Outcome> {
        let mut config = self.config.clone();
        if let Some(password) = &self.password {
            config.password(password);
        }
        let (client, connection) =
            match tokio::time::timeout(self.timeout, config.connect(self.tls.clone())).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(error)) => return Err(self.connect_outcome(&error)),
                Err(_) => {
                    return Err(Outcome::Transport(format!(
                        "timed out after {} s connecting to PostgreSQL at {}",
                        self.timeout.as_secs_f64(),
                        self.target
                    )))
                }
            };
        let (ended_sender, mut ended) = oneshot::channel();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                let _ = ended_sender.send(describe_error(&error));
            }
        });
        let prepared = tokio::time::timeout(self.timeout, prepare_session(&client, &self.table));
        let (created, copy, insert) = match prepared.await {
            Ok(Ok(prepared)) => prepared,
            Ok(Err((step, error))) => {
                return Err(self.setup_outcome(step, &error, &client, &mut ended))
            }
            Err(_) => {
                return Err(Outcome::Transport(format!(
                    "timed out after {} s setting up table {} at {}",
                    self.timeout.as_secs_f64(),
                    self.table,
                    self.target
                )))
            }
        };
        if created {
            tracing::info!(sink = %self.name, "created table {} at {}", self.table, self.target);
        }
        tracing::debug!(sink = %self.name, "connected to PostgreSQL at {}", self.target);
        Ok(Connection {
            client,
            ended,
            copy,
            insert,
        })
    }

    /// A failure while a new connection is set up. It says nothing about
    /// the events, so it never dead-letters them (two agents creating the
    /// table at once can collide on pg_type, 23505): try again instead.
    fn setup_outcome(
        &self,
        step: SetupStep,
        error: &tokio_postgres::Error,
        client: &Client,
        ended: &mut oneshot::Receiver<String>,
    ) -> Outcome {
        match self.outcome_of(error, client, ended) {
            Outcome::Database { sqlstate, message }
                if sqlstate_verdict(&sqlstate) == SqlVerdict::Rejected =>
            {
                Outcome::Transport(format!(
                    "cannot set up table {}: PostgreSQL error {sqlstate}: {message}",
                    self.table
                ))
            }
            Outcome::Database { sqlstate, message } if sqlstate == "42501" => {
                let hint = match step {
                    SetupStep::CreateTable => format!(
                        "table {} does not exist and the sink's user may not create it: \
                         create it as docs/upload.md shows, or grant CREATE on its schema",
                        self.table
                    ),
                    SetupStep::BatchTable => "the sink's user needs the TEMP privilege on the \
                                              database (PostgreSQL grants it to everyone by default)"
                        .to_string(),
                    SetupStep::PrepareInsert => insert_privilege_hint(&self.table),
                };
                Outcome::Database {
                    message: format!("{message} ({hint})"),
                    sqlstate,
                }
            }
            outcome => outcome,
        }
    }

    /// A failure to connect or log in.
    fn connect_outcome(&self, error: &tokio_postgres::Error) -> Outcome {
        if let Some(database) = error.as_db_error() {
            return Outcome::Database {
                sqlstate: database.code().code().to_string(),
                message: database.message().to_string(),
            };
        }
        let chain = describe_error(error);
        if let Some(hint) = tls_hint(error) {
            return Outcome::Transport(format!(
                "cannot connect to PostgreSQL at {}: TLS: {hint}: {chain}",
                self.target
            ));
        }
        // tokio-postgres has no public error kind: its text names it.
        let text = error.to_string();
        if text.starts_with("authentication error") {
            let hint = if chain.contains("password missing") {
                " (the server asks for a password: set password_env, password_file or password)"
            } else {
                ""
            };
            return Outcome::Misconfigured(format!(
                "PostgreSQL at {} refused the login: {chain}{hint}",
                self.target
            ));
        }
        if text.starts_with("invalid configuration") || text.starts_with("invalid connection") {
            return Outcome::Misconfigured(format!(
                "cannot connect to PostgreSQL at {}: {chain}",
                self.target
            ));
        }
        Outcome::Transport(format!(
            "cannot connect to PostgreSQL at {}: {chain}",
            self.target
        ))
    }

    /// A failure on an open connection.
    fn outcome_of(
        &self,
        error: &tokio_postgres::Error,
        client: &Client,
        ended: &mut oneshot::Receiver<String>,
    ) -> Outcome {
        if let Some(database) = error.as_db_error() {
            return Outcome::Database {
                sqlstate: database.code().code().to_string(),
                message: database.message().to_string(),
            };
        }
        if error.is_closed() || client.is_closed() {
            let reason = ended.try_recv().unwrap_or_else(|_| describe_error(error));
            return Outcome::Transport(format!(
                "the connection to PostgreSQL at {} was lost: {reason}",
                self.target
            ));
        }
        Outcome::Transport(format!(
            "PostgreSQL at {}: {}",
            self.target,
            describe_error(error)
        ))
    }
}

/// One event as the table's columns (press columns `None` for any other
/// type).
struct Row<'a> {
    id: &'a str,
    event_type: &'static str,
    ts: Timestamptz,
    tz_offset_min: i32,
    device: Option<&'a str>,
    model: Option<&'a str>,
    unit: Option<&'a str>,
    key: Option<i32>,
    answer: Option<&'a str>,
    question: Option<&'a str>,
    seq: Option<i32>,
    rssi: Option<i32>,
    battery: Option<i32>,
    suppressed: Option<bool>,
    detail: Json<&'a Event>,
}

impl<'a> Row<'a> {
    /// The row of `stored`; an event whose `ts` is not RFC 3339 is
    /// rejected (and so, alone, dead-lettered).
    fn of(stored: &'a StoredEvent) -> Result<Row<'a>, Outcome> {
        let event = &stored.event;
        let ts = Timestamptz::parse(&event.ts).ok_or_else(|| {
            Outcome::Rejected(format!(
                "event {} has a ts that is not an RFC 3339 time: {:?}",
                event.id, event.ts
            ))
        })?;
        let press = match &event.body {
            EventBody::Press(press) => Some(press),
            EventBody::Status(_) => None,
        };
        Ok(Row {
            id: &event.id,
            event_type: event.event_type(),
            ts,
            tz_offset_min: event.tz_offset_min,
            device: press.map(|press| press.device.as_str()),
            model: press.map(|press| press.model.as_str()),
            unit: press.map(|press| press.unit.as_str()),
            key: press.map(|press| i32::from(press.key)),
            answer: press.and_then(|press| press.answer.as_deref()),
            question: press.and_then(|press| press.question.as_deref()),
            seq: press.map(|press| i32::from(press.seq)),
            rssi: press.and_then(|press| press.rssi).map(i32::from),
            battery: press.and_then(|press| press.battery).map(i32::from),
            suppressed: press.map(|press| press.suppressed),
            detail: Json(event),
        })
    }

    /// Every column, in [`COLUMNS`] order.
    fn values<'s>(
        &'s self,
        agent_id: &'s String,
        location: &'s Option<&'s str>,
    ) -> [&'s (dyn ToSql + Sync); 17] {
        [
            &self.id,
            &self.event_type,
            agent_id,
            location,
            &self.ts,
            &self.tz_offset_min,
            &self.device,
            &self.model,
            &self.unit,
            &self.key,
            &self.answer,
            &self.question,
            &self.seq,
            &self.rssi,
            &self.battery,
            &self.suppressed,
            &self.detail,
        ]
    }
}

/// A `timestamptz` in PostgreSQL's binary form: microseconds since
/// 2000-01-01 UTC.
#[derive(Clone, Copy, Debug)]
struct Timestamptz(i64);

impl Timestamptz {
    fn parse(rfc3339: &str) -> Option<Timestamptz> {
        let at = chrono::DateTime::parse_from_rfc3339(rfc3339).ok()?;
        Some(Timestamptz(at.timestamp_micros() - POSTGRES_EPOCH_MICROS))
    }
}

impl ToSql for Timestamptz {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_i64(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }

    tokio_postgres::types::to_sql_checked!();
}

/// The contract's table, under the configured name.
fn create_table_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
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
        )"
    )
}

/// What a new connection was doing when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SetupStep {
    CreateTable,
    BatchTable,
    PrepareInsert,
}

/// Readies a new session: creates the table when it is not there (says
/// whether it did), makes [`BATCH_TABLE`] and prepares the COPY and the
/// INSERT. Looks for the table first: `CREATE TABLE IF NOT EXISTS` checks
/// the CREATE privilege before it looks, and a user who may only insert
/// must still deliver.
async fn prepare_session(
    client: &Client,
    table: &str,
) -> Result<(bool, Statement, Statement), (SetupStep, tokio_postgres::Error)> {
    let create = |error| (SetupStep::CreateTable, error);
    let batch = |error| (SetupStep::BatchTable, error);
    // `table` is a checked plain identifier (or schema.table): no quoting
    // is needed in the literal.
    let exists: bool = client
        .query_one(&format!("SELECT to_regclass('{table}') IS NOT NULL"), &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(create)?;
    if !exists {
        client
            .batch_execute(&create_table_sql(table))
            .await
            .map_err(create)?;
    }
    client
        .batch_execute(
            "CREATE TEMP TABLE epm_agent_batch (
               id text, type text, agent_id text, location text, ts timestamptz,
               tz_offset_min integer, device text, model text, unit text, key integer,
               answer text, question text, seq integer, rssi integer, battery integer,
               suppressed boolean, detail jsonb
             ) ON COMMIT DELETE ROWS",
        )
        .await
        .map_err(batch)?;
    let copy = client
        .prepare(&format!("COPY {BATCH_TABLE} ({COLUMNS}) FROM STDIN BINARY"))
        .await
        .map_err(batch)?;
    let insert = client
        .prepare(&format!(
            "INSERT INTO {table} ({COLUMNS}) SELECT {COLUMNS} FROM {BATCH_TABLE} \
             ON CONFLICT (id) DO NOTHING"
        ))
        .await
        .map_err(|error| (SetupStep::PrepareInsert, error))?;
    Ok((!exists, copy, insert))
}

/// One transaction: every row inserted unless its id is there already.
async fn insert(
    connection: &mut Connection,
    agent: &AgentInfo,
    rows: &[Row<'_>],
) -> Result<(), tokio_postgres::Error> {
    let location = agent.location.as_deref();
    let transaction = connection.client.transaction().await?;
    let sink = transaction.copy_in(&connection.copy).await?;
    let writer = BinaryCopyInWriter::new(sink, &COLUMN_TYPES);
    let mut writer = std::pin::pin!(writer);
    for row in rows {
        writer
            .as_mut()
            .write(&row.values(&agent.id, &location))
            .await?;
    }
    writer.finish().await?;
    transaction.execute(&connection.insert, &[]).await?;
    transaction.commit().await
}

/// What a user refused the INSERT lacks.
fn insert_privilege_hint(table: &str) -> String {
    format!(
        "the sink's user needs INSERT and SELECT on table {table}: ON CONFLICT (id) reads the ids"
    )
}

/// `127.0.0.1:5432`, `/run/postgresql:5432`, several joined by commas.
fn describe_target(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let port = ports
                .get(index)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The error with its causes: `error connecting to server: Connection
/// refused (os error 111)`.
fn describe_error(error: &tokio_postgres::Error) -> String {
    if let Some(database) = error.as_db_error() {
        return format!(
            "PostgreSQL error {}: {}",
            database.code().code(),
            database.message()
        );
    }
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// What to do about a TLS failure, when `error` is one.
fn tls_hint(error: &tokio_postgres::Error) -> Option<&'static str> {
    use rustls::CertificateError as Certificate;
    let mut source = error.source();
    while let Some(cause) = source {
        // rustls's error travels inside an io::Error, whose `source` skips it.
        let rustls_error = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .or_else(|| cause.downcast_ref::<rustls::Error>());
        if let Some(rustls_error) = rustls_error {
            return Some(match rustls_error {
                rustls::Error::InvalidCertificate(
                    Certificate::UnknownIssuer | Certificate::BadSignature,
                ) => "certificate not trusted (add its CA with ca_file)",
                rustls::Error::InvalidCertificate(
                    Certificate::NotValidForName | Certificate::NotValidForNameContext { .. },
                ) => {
                    "the certificate is not for this host (connect by a name the certificate holds)"
                }
                rustls::Error::InvalidCertificate(
                    Certificate::Expired | Certificate::ExpiredContext { .. },
                ) => "the server's certificate has expired",
                rustls::Error::InvalidCertificate(
                    Certificate::NotValidYet | Certificate::NotValidYetContext { .. },
                ) => "the server's certificate is not valid yet (is the clock right?)",
                rustls::Error::InvalidCertificate(_) => "the server's certificate is refused",
                _ => "the handshake failed",
            });
        }
        if cause.to_string().contains("server does not support TLS") {
            return Some("the server does not offer TLS, which a non-local host needs (ssl = on on the server)");
        }
        source = cause.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_count_from_the_postgres_epoch() {
        let check = |text: &str, expected: Option<i64>| {
            assert_eq!(Timestamptz::parse(text).map(|ts| ts.0), expected, "{text}");
        };
        check("2000-01-01T00:00:00.000Z", Some(0));
        check("2000-01-01T00:00:00.001Z", Some(1_000));
        check("1999-12-31T23:59:59.999Z", Some(-1_000));
        check("2026-11-22T10:15:03.214Z", Some(848_657_703_214_000));
        check("2000-01-01T03:00:00+03:00", Some(0));
        check("yesterday", None);
    }
}

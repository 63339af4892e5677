//! Real servers for the sink integration tests: a PostgreSQL cluster and a
//! Mosquitto 2 broker, each started fresh in its own temporary folders on a
//! free 127.0.0.1 port and stopped (and its folders removed) when dropped;
//! an MQTT subscriber that keeps every message it receives; and a small
//! test PKI (CA, server and client certificates) for their TLS listeners.
//! No mocks: the binaries are Debian's (`postgresql`, `mosquitto`,
//! `mosquitto-clients`), which `scripts/test-servers.sh` installs.
//!
//! PostgreSQL refuses to run as root: when the tests run as root (CI), the
//! cluster's folders are given to the package's `postgres` user and
//! `initdb` / `pg_ctl` run through `runuser`. The harness itself talks to
//! the cluster as the superuser `postgres` over the cluster's unix socket
//! (trust); TCP on 127.0.0.1 asks for a password (`scram-sha-256`), so a
//! wrong password really fails. Mosquitto run as root would drop to the
//! `mosquitto` user and then fail to save its persistence file in the
//! temporary folder, so it is told `user root`.
//!
//! Every wait has a deadline; a wait that runs out panics with what it
//! waited for and the server's log or the client's stderr.

// Each test crate includes this module and uses a different part of it.
#![allow(dead_code)]

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// How long a server may take to start or stop, and a client to connect.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one command-line client (psql, mosquitto_pub) may run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// How often waits look again.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// How many times a start on a free port is retried when another process
/// took the port between our look and the server's bind.
const BIND_ATTEMPTS: usize = 3;
/// How many bytes of a log a failure shows.
const LOG_TAIL_BYTES: usize = 6000;

/// psql's field separator, record separator and NULL marker: control
/// characters that the tests' data never holds.
const FIELD_SEPARATOR: char = '\u{1f}';
const RECORD_SEPARATOR: char = '\u{1e}';
const NULL_MARKER: &str = "\u{1d}";

/// A free TCP port on 127.0.0.1: bound, read, closed. Another process may
/// take it before the caller binds it; the servers here retry on that.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

// ---------------------------------------------------------------------------
// PostgreSQL

/// A PostgreSQL cluster of its own: `initdb` in a temporary folder, run with
/// `pg_ctl`, listening on 127.0.0.1 at a free port (password login,
/// `scram-sha-256`) and on a unix socket in a second temporary folder (trust,
/// used by the harness as the superuser `postgres`). Dropping it stops the
/// server (`-m immediate`) and removes both folders.
pub struct Postgres {
    bin: PathBuf,
    /// `data/` (the cluster), `server.log`, and with TLS `server.crt` and
    /// `server.key`; owned by `postgres` when the tests run as root.
    dir: TempDir,
    socket_dir: TempDir,
    port: u16,
    tls: bool,
    running: bool,
}

impl Postgres {
    /// A fresh cluster without TLS (`ssl = off`).
    pub fn start() -> Postgres {
        Postgres::start_inner(None)
    }

    /// A fresh cluster with `ssl = on`, serving this certificate (PEM, may
    /// hold a chain) and key (PEM). TCP clients may still connect without
    /// TLS: it is the client's `sslmode` that demands it.
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> Postgres {
        Postgres::start_inner(Some((cert_pem, key_pem)))
    }

    fn start_inner(tls: Option<(&str, &str)>) -> Postgres {
        let bin = postgres_bin().to_path_buf();
        let dir = tempfile::Builder::new()
            .prefix("epm-pg-")
            .tempdir()
            .expect("create the PostgreSQL temporary folder");
        let socket_dir = tempfile::Builder::new()
            .prefix("epm-pgs-")
            .tempdir()
            .expect("create the PostgreSQL socket folder");
        give_to_postgres(dir.path());
        give_to_postgres(socket_dir.path());

        let data = dir.path().join("data");
        let initdb = run_output(
            as_postgres(&bin.join("initdb"), dir.path())
                .arg("--pgdata")
                .arg(&data)
                .args(["--username", "postgres", "--encoding", "UTF8"])
                .args(["--no-locale", "--auth-local", "trust"])
                .args(["--auth-host", "scram-sha-256", "--no-sync"]),
            "initdb",
        );
        assert!(
            initdb.status.success(),
            "initdb failed ({}):\n{}{}",
            initdb.status,
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        );
        write_as_postgres(
            &data.join("pg_hba.conf"),
            "# Written by tests/servers/mod.rs.\n\
             local all all trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
            0o600,
        );
        if let Some((cert_pem, key_pem)) = tls {
            write_as_postgres(&dir.path().join("server.crt"), cert_pem, 0o644);
            write_as_postgres(&dir.path().join("server.key"), key_pem, 0o600);
        }
        let conf = data.join("postgresql.conf");
        let mut base = fs::read_to_string(&conf).expect("read the new postgresql.conf");
        base.push_str("\n# Settings of tests/servers/mod.rs.\ninclude 'harness.conf'\n");
        write_as_postgres(&conf, &base, 0o600);

        let mut postgres = Postgres {
            bin,
            dir,
            socket_dir,
            port: 0,
            tls: tls.is_some(),
            running: false,
        };
        for attempt in 1..=BIND_ATTEMPTS {
            postgres.port = free_port();
            postgres.write_settings();
            match postgres.pg_ctl_start() {
                Ok(()) => return postgres,
                Err(log) if attempt < BIND_ATTEMPTS && log.contains("could not bind") => continue,
                Err(log) => panic!(
                    "PostgreSQL did not start on port {}; its log:\n{log}",
                    postgres.port
                ),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn write_settings(&self) {
        let mut settings = format!(
            "listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{socket}'\n\
             max_connections = 40\n\
             shared_buffers = 16MB\n\
             password_encryption = 'scram-sha-256'\n\
             timezone = 'UTC'\n\
             log_timezone = 'UTC'\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n",
            port = self.port,
            socket = self.socket_dir.path().display(),
        );
        if self.tls {
            settings.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                self.dir.path().join("server.crt").display(),
                self.dir.path().join("server.key").display(),
            ));
        } else {
            settings.push_str("ssl = off\n");
        }
        write_as_postgres(&self.data_dir().join("harness.conf"), &settings, 0o600);
    }

    /// `pg_ctl start`, waiting until the server takes connections; the
    /// server's log when it did not.
    fn pg_ctl_start(&mut self) -> Result<(), String> {
        let output = run_output(
            as_postgres(&self.bin.join("pg_ctl"), self.dir.path())
                .arg("start")
                .arg("--pgdata")
                .arg(self.data_dir())
                .arg("--log")
                .arg(self.log_path())
                .args(["--wait", "--timeout"])
                .arg(SERVER_TIMEOUT.as_secs().to_string()),
            "pg_ctl start",
        );
        if output.status.success() {
            self.running = true;
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start: {}\n{}{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                self.log()
            ))
        }
    }

    fn pg_ctl_stop(&mut self, mode: &str) -> Output {
        let output = run_output(
            as_postgres(&self.bin.join("pg_ctl"), self.dir.path())
                .arg("stop")
                .arg("--pgdata")
                .arg(self.data_dir())
                .args(["--mode", mode, "--wait", "--timeout"])
                .arg(SERVER_TIMEOUT.as_secs().to_string()),
            "pg_ctl stop",
        );
        if output.status.success() {
            self.running = false;
        }
        output
    }

    /// The TCP port (on 127.0.0.1); the same after `start_again`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// "127.0.0.1".
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// `postgres://USER@127.0.0.1:PORT/DATABASE`, without the password (the
    /// names are used as they are: keep them to letters, digits and `_`).
    pub fn url(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    /// The cluster's data folder.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The unix socket's folder (`host=` for a trusted local connection).
    pub fn socket_dir(&self) -> &Path {
        self.socket_dir.path()
    }

    /// The server's log so far (the last few kilobytes).
    pub fn log(&self) -> String {
        log_tail(&self.log_path())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// A `psql` (of the cluster's version) with no `PG*` variable of the
    /// test's environment, for tests that connect by themselves (over TCP,
    /// with a password or TLS).
    pub fn psql_command(&self) -> Command {
        let mut command = Command::new(self.bin.join("psql"));
        clear_pg_env(&mut command);
        command
            .env("PGCLIENTENCODING", "UTF8")
            .env("PGCONNECT_TIMEOUT", "10")
            .arg("-X")
            .stdin(Stdio::null());
        command
    }

    /// A login role with this password (`CREATE ROLE ... LOGIN PASSWORD`).
    pub fn create_user(&self, name: &str, password: &str) {
        self.execute(
            "postgres",
            &format!(
                "CREATE ROLE {} LOGIN PASSWORD {};",
                quote_ident(name),
                quote_literal(password)
            ),
        );
    }

    /// A database owned by `owner` (who may then create tables in its
    /// `public` schema).
    pub fn create_database(&self, name: &str, owner: &str) {
        self.execute(
            "postgres",
            &format!(
                "CREATE DATABASE {} OWNER {};",
                quote_ident(name),
                quote_ident(owner)
            ),
        );
    }

    /// The rows of one statement, run as the superuser over the unix
    /// socket: each value as psql prints it (text), `None` for NULL. Fails
    /// the test with psql's stderr if the statement fails.
    pub fn query(&self, database: &str, sql: &str) -> Vec<Vec<Option<String>>> {
        let output = self.run_psql(database, sql, "-c");
        let text = String::from_utf8(output).expect("psql prints UTF-8 (PGCLIENTENCODING)");
        if text.is_empty() {
            return Vec::new();
        }
        let text = text.strip_suffix('\n').unwrap_or(&text);
        text.split(RECORD_SEPARATOR)
            .map(|row| {
                row.split(FIELD_SEPARATOR)
                    .map(|value| (value != NULL_MARKER).then(|| value.to_string()))
                    .collect()
            })
            .collect()
    }

    /// Runs SQL (one or more statements, each in its own transaction unless
    /// the SQL says otherwise) as the superuser; fails the test with psql's
    /// stderr at the first error.
    pub fn execute(&self, database: &str, sql: &str) {
        self.run_psql(database, sql, "-f");
    }

    /// `-c SQL` (one statement) or `-f -` (a script on stdin).
    fn run_psql(&self, database: &str, sql: &str, how: &str) -> Vec<u8> {
        assert!(self.running, "query on a stopped PostgreSQL: {sql}");
        let mut command = self.psql_command();
        command
            .arg("--host")
            .arg(self.socket_dir.path())
            .args(["--port", &self.port.to_string(), "--username", "postgres"])
            .args([
                "--dbname",
                database,
                "--no-align",
                "--tuples-only",
                "--quiet",
            ])
            .args(["--set", "ON_ERROR_STOP=1"])
            .arg(format!("--field-separator={FIELD_SEPARATOR}"))
            .arg(format!("--record-separator={RECORD_SEPARATOR}"))
            .arg(format!("--pset=null={NULL_MARKER}"));
        let output = if how == "-c" {
            command.arg("-c").arg(sql);
            run_output(&mut command, "psql")
        } else {
            command.args(["-f", "-"]);
            run_with_stdin(&mut command, sql.as_bytes(), "psql")
        };
        assert!(
            output.status.success(),
            "psql on database {database} failed ({}) running:\n{sql}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// Stops the server (`-m fast`: connections are closed, a clean
    /// shutdown checkpoint is written). The data folder stays.
    pub fn stop(&mut self) {
        let output = self.pg_ctl_stop("fast");
        assert!(
            output.status.success(),
            "pg_ctl stop failed: {}\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
    }

    /// Starts the stopped server again: same data folder, same port.
    pub fn start_again(&mut self) {
        assert!(!self.running, "start_again on a running PostgreSQL");
        if let Err(log) = self.pg_ctl_start() {
            panic!(
                "PostgreSQL did not start again on port {}; {log}",
                self.port
            );
        }
    }

    /// `stop` then `start_again`.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let stopped = self.pg_ctl_stop("immediate").status.success();
        if !stopped {
            // Never leave a server behind a removed folder.
            let pid_file = self.data_dir().join("postmaster.pid");
            if let Some(pid) = fs::read_to_string(pid_file)
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok())
            {
                let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// The newest installed PostgreSQL's `bin` folder
/// (`/usr/lib/postgresql/<version>/bin`).
fn postgres_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new("/usr/lib/postgresql");
        let entries = fs::read_dir(root).unwrap_or_else(|error| {
            panic!(
                "PostgreSQL is not installed ({}: {error}): run scripts/test-servers.sh (as root)",
                root.display()
            )
        });
        entries
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version: u32 = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .max_by_key(|(version, _)| *version)
            .map(|(_, bin)| bin)
            .unwrap_or_else(|| {
                panic!(
                    "no PostgreSQL server under {} (no <version>/bin/initdb): run scripts/test-servers.sh (as root)",
                    root.display()
                )
            })
    })
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { nix::libc::geteuid() == 0 }
}

/// The `postgres` user's uid and gid (only looked up when running as root).
fn postgres_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let id = |flag: &str| -> u32 {
            let output = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .expect("run id(1) to find the postgres user");
            assert!(
                output.status.success(),
                "no `postgres` user ({}): run scripts/test-servers.sh (as root)",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .expect("id(1) prints a number")
        };
        (id("-u"), id("-g"))
    })
}

/// A PostgreSQL program run as `postgres` when the tests run as root (it
/// refuses to run as root), as the test's own user otherwise; from a folder
/// that user can enter (runuser keeps the working directory).
fn as_postgres(program: &Path, cwd: &Path) -> Command {
    let mut command = if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    };
    clear_pg_env(&mut command);
    command
        .current_dir(cwd)
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null());
    command
}

/// Makes a folder (or file) the `postgres` user's, mode 0700 for a folder.
fn give_to_postgres(path: &Path) {
    if running_as_root() {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|error| panic!("chown postgres {}: {error}", path.display()));
    }
    if path.is_dir() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|error| panic!("chmod 0700 {}: {error}", path.display()));
    }
}

fn write_as_postgres(path: &Path, contents: &str, mode: u32) {
    fs::write(path, contents).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|error| panic!("chmod {mode:o} {}: {error}", path.display()));
    give_to_postgres(path);
}

/// Removes every `PG*` variable (PGHOST, PGPASSWORD, PGDATA...) the test's
/// environment may have, so only what the harness says counts.
fn clear_pg_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PG") {
            command.env_remove(name);
        }
    }
}

/// `"name"` with inner quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled (standard_conforming_strings is on).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

// ---------------------------------------------------------------------------
// Mosquitto

/// Certificate files of a TLS listener (paths to PEM files).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The CA that client certificates must chain to, and that the
    /// harness's own clients trust for the server.
    pub cafile: PathBuf,
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
}

/// How a broker is set up.
#[derive(Clone, Debug)]
pub struct MosquittoOptions {
    /// Ignored (false) when `users` is not empty.
    pub allow_anonymous: bool,
    /// (user, password) pairs for a password file (`mosquitto_passwd -b`).
    pub users: Vec<(String, String)>,
    /// A TLS listener instead of plain MQTT.
    pub tls: Option<TlsFiles>,
    /// With `tls`: clients must present a certificate signed by `cafile`.
    pub require_client_certificate: bool,
    /// Mosquitto's `max_packet_size`: a client sending a bigger packet is
    /// disconnected.
    pub max_packet_size: Option<u32>,
    /// More global `mosquitto.conf` lines, as they are (e.g.
    /// `max_queued_messages 0` for a benchmark's consumer that must not
    /// lose a message while it falls behind).
    pub extra_config: Vec<String>,
}

impl Default for MosquittoOptions {
    fn default() -> Self {
        MosquittoOptions {
            allow_anonymous: true,
            users: Vec::new(),
            tls: None,
            require_client_certificate: false,
            max_packet_size: None,
            extra_config: Vec::new(),
        }
    }
}

/// How one of the harness's command-line clients connects.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Username and password.
    pub credentials: Option<(String, String)>,
    /// The CA to trust instead of the broker's `cafile` (TLS brokers only).
    pub cafile: Option<PathBuf>,
    /// (certificate, key) PEM files to present.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// A Mosquitto 2 broker of its own: a configuration, a password file and
/// the persistence file in a temporary folder, one listener on 127.0.0.1 at
/// a free port. Persistence is on, so persistent sessions (with their
/// queued QoS 1 messages) and retained messages survive `stop` /
/// `start_again` (saved at the clean stop; a kill loses what changed since
/// the start). Dropping it kills the broker and removes the folder.
pub struct Mosquitto {
    dir: TempDir,
    options: MosquittoOptions,
    port: u16,
    child: Option<Child>,
}

impl Mosquitto {
    pub fn start(options: MosquittoOptions) -> Mosquitto {
        assert!(
            !options.require_client_certificate || options.tls.is_some(),
            "require_client_certificate needs tls"
        );
        let dir = tempfile::Builder::new()
            .prefix("epm-mqtt-")
            .tempdir()
            .expect("create the Mosquitto temporary folder");
        if !options.users.is_empty() {
            let passwords = dir.path().join("passwords");
            for (index, (user, password)) in options.users.iter().enumerate() {
                let mut command = Command::new(mosquitto_program("mosquitto_passwd"));
                if index == 0 {
                    command.arg("-c");
                }
                let output = run_output(
                    command.arg("-b").arg(&passwords).arg(user).arg(password),
                    "mosquitto_passwd",
                );
                assert!(
                    output.status.success(),
                    "mosquitto_passwd failed for {user}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            fs::set_permissions(&passwords, fs::Permissions::from_mode(0o600))
                .expect("chmod 0600 the password file");
        }
        let mut broker = Mosquitto {
            dir,
            options,
            port: 0,
            child: None,
        };
        for attempt in 1..=BIND_ATTEMPTS {
            broker.port = free_port();
            broker.write_config();
            match broker.spawn() {
                Ok(()) => return broker,
                Err(log) if attempt < BIND_ATTEMPTS && log.contains("Address already in use") => {
                    continue
                }
                Err(log) => panic!(
                    "Mosquitto did not start on port {}; its log:\n{log}",
                    broker.port
                ),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn write_config(&self) {
        let dir = self.dir.path();
        let options = &self.options;
        let mut config = String::from("# Written by tests/servers/mod.rs.\n");
        if running_as_root() {
            // Else it drops to `mosquitto`, which cannot write here.
            config.push_str("user root\n");
        }
        config.push_str(&format!(
            "persistence true\n\
             persistence_location {}/\n\
             persistence_file mosquitto.db\n\
             log_dest stderr\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             log_timestamp_format %Y-%m-%dT%H:%M:%S\n\
             connection_messages true\n",
            dir.display()
        ));
        let anonymous = options.allow_anonymous && options.users.is_empty();
        config.push_str(&format!("allow_anonymous {anonymous}\n"));
        if !options.users.is_empty() {
            config.push_str(&format!(
                "password_file {}\n",
                dir.join("passwords").display()
            ));
        }
        if let Some(size) = options.max_packet_size {
            config.push_str(&format!("max_packet_size {size}\n"));
        }
        for line in &options.extra_config {
            config.push_str(line);
            config.push('\n');
        }
        config.push_str(&format!("listener {} 127.0.0.1\n", self.port));
        if let Some(tls) = &options.tls {
            config.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                tls.cafile.display(),
                tls.certfile.display(),
                tls.keyfile.display(),
                options.require_client_certificate
            ));
        }
        fs::write(self.config_path(), config).expect("write mosquitto.conf");
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// Starts the broker and waits until its port takes connections; its
    /// log when it exited first or never listened.
    fn spawn(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open mosquitto.log");
        let log_err = log.try_clone().expect("clone the log file handle");
        let mut child = Command::new(mosquitto_program("mosquitto"))
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot run mosquitto ({error}): run scripts/test-servers.sh (as root)")
            });
        let deadline = Instant::now() + SERVER_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for mosquitto") {
                return Err(format!("mosquitto exited ({status}):\n{}", self.log()));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "mosquitto did not listen within {SERVER_TIMEOUT:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// The listener's port; the same after `start_again`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host name clients use: "localhost" with TLS (the name the test
    /// certificates are for), "127.0.0.1" without.
    pub fn host(&self) -> &'static str {
        if self.options.tls.is_some() {
            "localhost"
        } else {
            "127.0.0.1"
        }
    }

    /// `mqtt://127.0.0.1:PORT`, or `mqtts://localhost:PORT` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "mqtts"
        } else {
            "mqtt"
        };
        format!("{scheme}://{}:{}", self.host(), self.port)
    }

    pub fn options(&self) -> &MosquittoOptions {
        &self.options
    }

    /// The broker's log so far (the last few kilobytes).
    pub fn log(&self) -> String {
        log_tail(&self.log_path())
    }

    /// How the harness's own readers connect: the first user's credentials
    /// if there are users, the broker's CA with TLS, and no client
    /// certificate (give one with `ClientOptions` where it is required).
    pub fn harness_client(&self) -> ClientOptions {
        ClientOptions {
            credentials: self.options.users.first().cloned(),
            ..ClientOptions::default()
        }
    }

    /// Connection arguments for `mosquitto_pub` / `mosquitto_sub`.
    pub fn client_args(&self, client: &ClientOptions) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "-h".into(),
            self.host().into(),
            "-p".into(),
            self.port.to_string().into(),
        ];
        if let Some(tls) = &self.options.tls {
            args.push("--cafile".into());
            args.push(client.cafile.as_ref().unwrap_or(&tls.cafile).into());
        }
        if let Some((cert, key)) = &client.client_cert {
            args.extend(["--cert".into(), cert.into(), "--key".into(), key.into()]);
        }
        if let Some((user, password)) = &client.credentials {
            args.extend(["-u".into(), user.into(), "-P".into(), password.into()]);
        }
        args
    }

    /// Publishes one message with `mosquitto_pub` (QoS 1 waits for the
    /// broker's PUBACK). `Err` with the client's stderr when it failed.
    pub fn publish(
        &self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        retain: bool,
        client: &ClientOptions,
    ) -> Result<(), String> {
        let mut command = Command::new(mosquitto_program("mosquitto_pub"));
        command
            .args(self.client_args(client))
            .args(["-t", topic, "-q", &qos.to_string()]);
        if retain {
            command.arg("-r");
        }
        let output = if payload.is_empty() {
            run_output(command.arg("-n"), "mosquitto_pub")
        } else {
            run_with_stdin(command.arg("-s"), payload, "mosquitto_pub")
        };
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "mosquitto_pub exited {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// Stops the broker cleanly (SIGTERM: it saves its persistence file).
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("stop on a stopped Mosquitto");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid fits in i32"));
        signal::kill(pid, Signal::SIGTERM).expect("send SIGTERM to mosquitto");
        let deadline = Instant::now() + SERVER_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for mosquitto") {
                assert!(
                    status.success(),
                    "mosquitto exited {status} on SIGTERM:\n{}",
                    self.log()
                );
                return;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "mosquitto did not stop within {SERVER_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// Starts the stopped broker again: same configuration, port and
    /// persistence file.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again on a running Mosquitto");
        if let Err(log) = self.spawn() {
            panic!("Mosquitto did not start again on port {}: {log}", self.port);
        }
    }

    /// `stop` then `start_again`.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Freezes the broker (SIGSTOP): connections stay open but nothing is
    /// read or answered (no PUBACK) until `resume`, so a test can catch a
    /// client with a message in flight.
    pub fn suspend(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Lets a suspended broker run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("the broker is running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid fits in i32"));
        signal::kill(pid, signal).expect("signal mosquitto");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn mosquitto_program(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin"] {
        let path = Path::new(dir).join(name);
        if path.is_file() {
            return path;
        }
    }
    panic!("{name} is not installed: run scripts/test-servers.sh (as root)")
}

/// One message a subscriber received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub qos: u8,
}

impl Message {
    /// The payload as text (lossy), for assertions and failure messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A QoS 1 subscriber with a persistent session (`mosquitto_sub -c -q 1`
/// with a fixed client id) that keeps every message it receives, in order,
/// for the whole test. `mosquitto_sub` reconnects by itself (every second)
/// when the broker goes away and comes back, and the broker then delivers
/// what it queued for the session; if the process exits anyway (e.g. the
/// broker was down when it started), it is started again with the same
/// client id.
pub struct Subscriber {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    client_id: String,
    /// Holds the client's stderr.
    dir: TempDir,
}

struct Shared {
    state: Mutex<SubscriberState>,
    changed: Condvar,
}

#[derive(Default)]
struct SubscriberState {
    messages: Vec<Message>,
    /// SUBACKs seen: 1 after the first subscription, +1 per reconnect.
    subscriptions: usize,
    /// The running client; taken (under the lock) before it is reaped.
    child: Option<Child>,
    /// Times the client process was started.
    launches: usize,
    stopping: bool,
}

impl Subscriber {
    /// Subscribes to `topic` (wildcards allowed) as `client_id`, and waits
    /// until the broker acknowledged the subscription.
    pub fn start(
        broker: &Mosquitto,
        topic: &str,
        client_id: &str,
        client: &ClientOptions,
    ) -> Subscriber {
        let dir = tempfile::Builder::new()
            .prefix("epm-mqtt-sub-")
            .tempdir()
            .expect("create the subscriber's temporary folder");
        let stderr_path = dir.path().join("stderr");
        let mut command = Command::new("stdbuf");
        // stdbuf: mosquitto_sub flushes after each message but not after
        // its -d lines (CONNACK, SUBACK), which say when it is subscribed.
        command
            .arg("-oL")
            .arg(mosquitto_program("mosquitto_sub"))
            .args(broker.client_args(client))
            .args(["-t", topic, "-q", "1", "-c", "-i", client_id, "-d"])
            .args(["-F", "MSG %r %q %x %t"]);
        let shared = Arc::new(Shared {
            state: Mutex::new(SubscriberState::default()),
            changed: Condvar::new(),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            let stderr_path = stderr_path.clone();
            std::thread::Builder::new()
                .name(format!("mqtt-sub-{client_id}"))
                .spawn(move || supervise(command, &stderr_path, &shared))
                .expect("spawn the subscriber thread")
        };
        let subscriber = Subscriber {
            shared,
            thread: Some(thread),
            client_id: client_id.to_string(),
            dir,
        };
        subscriber.wait_subscribed(1, SERVER_TIMEOUT);
        subscriber
    }

    /// Every message received so far, in order of arrival.
    pub fn messages(&self) -> Vec<Message> {
        lock(&self.shared.state).messages.clone()
    }

    /// Subscriptions acknowledged so far: 1 after `start`, one more for each
    /// reconnect.
    pub fn subscriptions(&self) -> usize {
        lock(&self.shared.state).subscriptions
    }

    /// Waits until `predicate` holds for the messages received so far and
    /// returns them; panics after `timeout` with what was received.
    pub fn wait_for(
        &self,
        predicate: impl Fn(&[Message]) -> bool,
        timeout: Duration,
    ) -> Vec<Message> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.shared.state);
        loop {
            if predicate(&state.messages) {
                return state.messages.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                let seen = describe_messages(&state.messages);
                drop(state);
                panic!(
                    "subscriber {} waited {timeout:?} in vain; it received:\n{seen}\nits stderr:\n{}",
                    self.client_id,
                    self.stderr()
                );
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until `count` subscriptions were acknowledged (see
    /// `subscriptions`).
    pub fn wait_subscribed(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.shared.state);
        while state.subscriptions < count {
            let now = Instant::now();
            if now >= deadline {
                let seen = state.subscriptions;
                drop(state);
                panic!(
                    "subscriber {} saw {seen} of {count} subscriptions acknowledged within {timeout:?}; its stderr:\n{}",
                    self.client_id,
                    self.stderr()
                );
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Freezes the client process (SIGSTOP): it neither reads nor
    /// reconnects until `resume`, so a test can publish while it is surely
    /// not connected (after a broker restart).
    pub fn suspend(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Lets a suspended client run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, signal: Signal) {
        let state = lock(&self.shared.state);
        let child = state
            .child
            .as_ref()
            .expect("the subscriber's client is running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid fits in i32"));
        signal::kill(pid, signal).expect("signal the subscriber's client");
    }

    /// The client's stderr so far.
    pub fn stderr(&self) -> String {
        log_tail(&self.dir.path().join("stderr"))
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        {
            let mut state = lock(&self.shared.state);
            state.stopping = true;
            if let Some(child) = state.child.as_mut() {
                let _ = child.kill();
            }
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The subscriber's thread: runs the client, reads its lines, and starts it
/// again (same client id, same session) whenever it exits, until dropped.
fn supervise(mut command: Command, stderr_path: &Path, shared: &Shared) {
    loop {
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr_path)
            .expect("open the subscriber's stderr file");
        let stdout = {
            let mut state = lock(&shared.state);
            if state.stopping {
                return;
            }
            let mut child = command
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|error| {
                    panic!("cannot run mosquitto_sub ({error}): run scripts/test-servers.sh")
                });
            state.launches += 1;
            let stdout = child.stdout.take().expect("the client's stdout is piped");
            state.child = Some(child);
            stdout
        };
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line);
            let mut state = lock(&shared.state);
            if let Some(message) = parse_message(&line) {
                state.messages.push(message);
            } else if line.contains(" received SUBACK") {
                state.subscriptions += 1;
            } else {
                continue;
            }
            shared.changed.notify_all();
        }
        // Taken under the lock, so Drop never signals a reaped pid.
        let child = lock(&shared.state).child.take();
        if let Some(mut child) = child {
            let _ = child.wait();
        }
        if lock(&shared.state).stopping {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `MSG <retain> <qos> <payload hex> <topic>`, as `-F` prints it.
fn parse_message(line: &str) -> Option<Message> {
    let rest = line.strip_prefix("MSG ")?;
    let mut fields = rest.splitn(4, ' ');
    let retain = fields.next()? == "1";
    let qos = fields.next()?.parse().ok()?;
    let payload = decode_hex(fields.next()?)?;
    let topic = fields.next()?.to_string();
    Some(Message {
        topic,
        payload,
        retain,
        qos,
    })
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 == 1 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect()
}

fn describe_messages(messages: &[Message]) -> String {
    if messages.is_empty() {
        return "  (nothing)".into();
    }
    messages
        .iter()
        .map(|message| {
            format!(
                "  {} qos {} retain {}: {:?}",
                message.topic,
                message.qos,
                message.retain,
                message.text()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The retained message of `topic` as the broker holds it now (read once
/// with `mosquitto_sub --retained-only`, connecting as `harness_client`),
/// `None` if there is none (which takes a second to tell).
pub fn retained(broker: &Mosquitto, topic: &str) -> Option<Vec<u8>> {
    retained_with(broker, topic, &broker.harness_client())
}

/// `retained`, connecting as `client` (e.g. with a client certificate).
pub fn retained_with(broker: &Mosquitto, topic: &str, client: &ClientOptions) -> Option<Vec<u8>> {
    let output = run_output(
        Command::new(mosquitto_program("mosquitto_sub"))
            .args(broker.client_args(client))
            .args(["-t", topic, "--retained-only", "-C", "1", "-W", "1"])
            .args(["-F", "HEX %x"])
            .stdin(Stdio::null()),
        "mosquitto_sub",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().find_map(|line| line.strip_prefix("HEX ")) {
        Some(hex) => Some(decode_hex(hex.trim_end()).expect("mosquitto_sub prints hex")),
        None if output.status.code() == Some(27) || output.status.success() => None,
        None => panic!(
            "mosquitto_sub failed to read the retained message of {topic} ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    }
}

// ---------------------------------------------------------------------------
// Certificates

/// A certificate and its key: as PEM text and as files.
#[derive(Clone, Debug)]
pub struct PemFiles {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test PKI in a temporary folder: a CA; a server certificate for
/// `localhost` and `127.0.0.1` and a client certificate
/// (`epm-agent-test-client`), both signed by the CA; and an unrelated
/// self-signed server certificate for the same names, which a client that
/// trusts the CA must refuse.
pub struct TestPki {
    dir: TempDir,
    pub ca: PemFiles,
    pub server: PemFiles,
    pub client: PemFiles,
    pub other: PemFiles,
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::Builder::new()
            .prefix("epm-pki-")
            .tempdir()
            .expect("create the PKI temporary folder");

        let mut ca_params = CertificateParams::new(Vec::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "epm-agent test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
        let ca = write_pem(dir.path(), "ca", ca_cert.pem(), ca_key.serialize_pem());
        let issuer = Issuer::new(ca_params, ca_key);

        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut server_params = CertificateParams::new(names.clone()).expect("server names");
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server_params.use_authority_key_identifier_extension = true;
        server_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().expect("server key");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("sign the server certificate");
        let server = write_pem(
            dir.path(),
            "server",
            server_cert.pem(),
            server_key.serialize_pem(),
        );

        let mut client_params = CertificateParams::new(Vec::new()).expect("client parameters");
        client_params
            .distinguished_name
            .push(DnType::CommonName, "epm-agent-test-client");
        client_params.use_authority_key_identifier_extension = true;
        client_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().expect("client key");
        let client_cert = client_params
            .signed_by(&client_key, &issuer)
            .expect("sign the client certificate");
        let client = write_pem(
            dir.path(),
            "client",
            client_cert.pem(),
            client_key.serialize_pem(),
        );

        let other = rcgen::generate_simple_self_signed(names).expect("unrelated certificate");
        let other = write_pem(
            dir.path(),
            "other",
            other.cert.pem(),
            other.signing_key.serialize_pem(),
        );

        TestPki {
            dir,
            ca,
            server,
            client,
            other,
        }
    }

    /// A broker's files for the CA-signed server certificate (`cafile` is
    /// the CA, which client certificates must chain to).
    pub fn server_tls(&self) -> TlsFiles {
        TlsFiles {
            cafile: self.ca.cert.clone(),
            certfile: self.server.cert.clone(),
            keyfile: self.server.key.clone(),
        }
    }

    /// A broker's files for the unrelated self-signed certificate (`cafile`
    /// is still the CA, for client certificates).
    pub fn other_tls(&self) -> TlsFiles {
        TlsFiles {
            cafile: self.ca.cert.clone(),
            certfile: self.other.cert.clone(),
            keyfile: self.other.key.clone(),
        }
    }

    /// The CA-signed client certificate and key files.
    pub fn client_cert(&self) -> (PathBuf, PathBuf) {
        (self.client.cert.clone(), self.client.key.clone())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

fn write_pem(dir: &Path, name: &str, cert_pem: String, key_pem: String) -> PemFiles {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    fs::write(&cert, &cert_pem).expect("write a certificate");
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&key)
        .expect("create a key file");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod 0600 a key file");
    file.write_all(key_pem.as_bytes()).expect("write a key");
    PemFiles {
        cert_pem,
        key_pem,
        cert,
        key,
    }
}

// ---------------------------------------------------------------------------
// Processes

/// Runs a command to its end with captured output; kills it and fails the
/// test if it runs longer than `SERVER_TIMEOUT` + `CLIENT_TIMEOUT` (pg_ctl
/// waits up to `SERVER_TIMEOUT` itself).
fn run_output(command: &mut Command, what: &str) -> Output {
    run_with_stdin(command, &[], what)
}

fn run_with_stdin(command: &mut Command, input: &[u8], what: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {what}: {error}"));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read(Box::new(stdout));
    let stderr = read(Box::new(stderr));
    let limit = SERVER_TIMEOUT + CLIENT_TIMEOUT;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for a client") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// The last `LOG_TAIL_BYTES` of a log file (lossy), or why it cannot be read.
fn log_tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(LOG_TAIL_BYTES);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

/// Locks, ignoring poisoning: a test that panicked while holding the lock
/// must not turn the subscriber's shutdown into a second panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

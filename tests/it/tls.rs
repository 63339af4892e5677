//! TLS verification cannot be switched off, silently or otherwise: a
//! backend whose certificate the agent cannot verify gets nothing (the
//! sink retries with the TLS error in status), there is no key to turn
//! verification off, and the one supported way to trust a private backend
//! — its CA in `ca_file` — works. The agent's own status events (one at
//! each start and stop) wait behind the presses like any event and are
//! delivered with them once the CA is configured.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rusqlite::{Connection, OpenFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;

use epm_agent::event::NewPress;
use epm_agent::protocol::UnitId;
use epm_agent::store::{writer, Store, WriterOptions};

const EVENTS: u16 = 5;

/// An HTTPS backend with a self-signed certificate for `localhost`: every
/// request that gets through the handshake is answered 200 and counted.
struct Backend {
    port: u16,
    certificate_pem: String,
    requests: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl Backend {
    fn start() -> Backend {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
        let certificate_pem = certified.cert.pem();
        let chain = vec![CertificateDer::from(certified.cert.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return; // the client refused our certificate
                    };
                    // One request: headers, then Content-Length bytes of body.
                    let mut received = Vec::new();
                    let mut buffer = [0u8; 8192];
                    loop {
                        let Ok(count @ 1..) = tls.read(&mut buffer).await else {
                            return;
                        };
                        received.extend_from_slice(&buffer[..count]);
                        let text = String::from_utf8_lossy(&received);
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|line| {
                                    let (name, value) = line.split_once(':')?;
                                    name.eq_ignore_ascii_case("content-length")
                                        .then(|| value.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if received.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Backend {
            port,
            certificate_pem,
            requests,
            _runtime: runtime,
        }
    }
}

fn seed(data_dir: &Path) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (handle, thread) = writer::spawn(
            Store::open_writer(data_dir).expect("open"),
            WriterOptions::default(),
        )
        .expect("writer");
        for seq in 0..EVENTS {
            let press = NewPress {
                ts: Utc::now(),
                tz_offset_min: 0,
                device: "entrance".into(),
                model: "prolan-501",
                unit: UnitId(1),
                key: 1,
                answer: Some("yes".into()),
                question: None,
                seq,
                rssi: None,
                battery: None,
                suppressed: false,
            };
            handle.press(press, None).await.expect("queued");
        }
        handle.flush().await.expect("flushed");
        drop(handle);
        thread.join().expect("writer");
    });
}

/// The store's events: how many presses and how many agent status events
/// it holds up to `seqno`, and the seqno of its last press.
fn stored_through(data_dir: &Path, seqno: i64) -> (i64, i64, i64) {
    let connection = Connection::open_with_flags(
        data_dir.join("epm-agent.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the store");
    connection
        .query_row(
            "SELECT count(*) FILTER (WHERE type = 'press' AND seqno <= ?1),
                    count(*) FILTER (WHERE type = 'agent_status' AND seqno <= ?1),
                    coalesce(max(seqno) FILTER (WHERE type = 'press'), 0)
             FROM events",
            [seqno],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .expect("count the events")
}

/// The sink's cursor: (delivered_seqno, delivered, batch in flight).
fn cursor(data_dir: &Path) -> Option<(i64, i64, bool)> {
    let connection = Connection::open_with_flags(
        data_dir.join("epm-agent.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    connection
        .query_row(
            "SELECT delivered_seqno, delivered, batch_id IS NOT NULL FROM sinks WHERE name = 'secure'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .ok()
}

fn sink_row(data_dir: &Path) -> Option<(i64, String, Option<String>)> {
    let connection = Connection::open_with_flags(
        data_dir.join("epm-agent.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    connection
        .query_row(
            "SELECT delivered, state, last_error FROM sinks WHERE name = 'secure'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .ok()
}

fn start(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["run", "--config"])
        .arg(config)
        .stderr(Stdio::null())
        .spawn()
        .expect("start the agent")
}

fn stop(mut agent: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = agent.wait();
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_unverifiable_backend_gets_nothing_until_its_ca_is_configured() {
    let backend = Backend::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    seed(&data_dir);
    let ca_file = dir.path().join("backend-ca.pem");
    std::fs::write(&ca_file, &backend.certificate_pem).expect("write the CA");
    let config = dir.path().join("agent.toml");
    let write_config = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[agent]\nid = \"t\"\ndata_dir = \"{}\"\n\n[[sink]]\nname = \"secure\"\nkind = \"http\"\n\
                 url = \"https://localhost:{}/batches\"\nflush_interval_ms = 50\nmax_backoff_s = 1\n{extra}",
                data_dir.display(),
                backend.port
            ),
        )
        .expect("write the configuration")
    };

    // No way to turn verification off: such keys are configuration errors.
    for key in [
        "tls_verify = false",
        "danger_accept_invalid_certs = true",
        "insecure = true",
    ] {
        write_config(&format!("{key}\n"));
        let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
            .args(["config", "check", "--config"])
            .arg(&config)
            .output()
            .expect("config check");
        assert_eq!(output.status.code(), Some(2), "{key} must be refused");
    }

    write_config("");
    let agent = start(&config);
    let (delivered, state, error) = wait_for("the sink to fail on the certificate", || {
        sink_row(&data_dir).filter(|(_, state, _)| state == "retrying")
    });
    stop(agent);
    assert_eq!(delivered, 0);
    assert_eq!(state, "retrying");
    let error = error.unwrap_or_default();
    assert!(
        error.to_lowercase().contains("certificate"),
        "the TLS failure is named: {error}"
    );
    assert_eq!(
        backend.requests.load(Ordering::SeqCst),
        0,
        "no request got through the handshake"
    );

    write_config(&format!("ca_file = \"{}\"\n", ca_file.display()));
    let agent = start(&config);
    let last_press = stored_through(&data_dir, i64::MAX).2;
    let (through, delivered, _) = wait_for("every press delivered over verified TLS", || {
        cursor(&data_dir).filter(|(through, _, in_flight)| *through >= last_press && !in_flight)
    });
    stop(agent);
    // Delivered: the presses, and the status events the cursor passed
    // (the first run's, which waited behind the presses, and this one's
    // start, as far as the batches reached), no more.
    let (presses, statuses, _) = stored_through(&data_dir, through);
    assert_eq!(presses, i64::from(EVENTS), "every press delivered");
    assert_eq!(
        delivered,
        presses + statuses,
        "delivered counts the {presses} presses and the {statuses} status events through the cursor"
    );
    assert!(backend.requests.load(Ordering::SeqCst) >= 1);
}

//! Fleet benchmark: how a fleet of agents comes back after a backend outage.
//!
//! `AGENTS` (200) real `epm-agent run` processes (the release binary), each
//! with its own data_dir and configuration: `[agent] id = "shop-NNN"`, one
//! simulated ProLAN-501 (`sim_presses_per_min`, 30 by default, so every
//! agent has presses to send every second or two) and one sink with the
//! default batch_size, flush_interval_ms and max_backoff_s. Per scenario:
//! a steady phase (`STEADY_S`, 30), an outage (`OUTAGE_S`, 60), and the
//! time after it (`AFTER_S`, 30):
//!
//! - `a`: HTTP, the backend answers every request `503` with
//!   `Retry-After: 5` (`RETRY_AFTER_S`) during the outage;
//! - `b`: HTTP, the backend stops listening (connections refused, open
//!   keep-alive connections closed), then listens again on the same port;
//! - `c`: MQTT, a local Mosquitto is stopped, then started again on the
//!   same port (skipped when the MQTT sink cannot start).
//!
//! The backend (axum on 127.0.0.1, or an in-process MQTT subscriber on a
//! second listener of the broker) keeps every event id and counts copies.
//! Connection attempts are counted from the wire: a packet socket on `lo`
//! with a BPF filter for SYNs to the backend's port (root only), so refused
//! attempts count too. Stores are read read-only with rusqlite: right before
//! the return (every event stored then must arrive: the drain time) and at
//! the end of the after phase (every event stored then and not at the
//! backend `GRACE_S` later, with the agents still running, is *lost* if the
//! agent's cursor has passed it, *late* if the agent still has it to send).
//! An attempt is a request (any answer) or a refused connection for HTTP;
//! a batch message or a connection attempt for MQTT.
//!
//! Run: `cargo bench --bench fleet` (`SCENARIOS=a,b,c`, `AGENTS`,
//! `OUTAGE_S`, `STEADY_S`, `AFTER_S`, `PRESSES_PER_MIN`, `GRACE_S`).
//! Prints a Markdown table; every second of every scenario goes to
//! `target/tmp/fleet-<scenario>.csv`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The backend takes batches.
const UP: u8 = 0;
/// The backend answers 503 with `Retry-After`.
const UNAVAILABLE: u8 = 1;
/// Nothing listens on the backend's port.
const DOWN: u8 = 2;

/// How long the fleet may take to start (every agent delivered once).
const WARM_UP_LIMIT: Duration = Duration::from_secs(120);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Clone, Debug)]
struct Settings {
    agents: usize,
    steady: Duration,
    outage: Duration,
    after: Duration,
    grace: Duration,
    presses_per_min: u64,
    retry_after_s: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// HTTP 503 + Retry-After.
    Unavailable,
    /// HTTP, connections refused.
    Refused,
    /// MQTT, broker stopped.
    Mqtt,
}

impl Scenario {
    fn letter(self) -> &'static str {
        match self {
            Scenario::Unavailable => "a",
            Scenario::Refused => "b",
            Scenario::Mqtt => "c",
        }
    }

    fn title(self, settings: &Settings) -> String {
        match self {
            Scenario::Unavailable => {
                format!("A: HTTP 503, Retry-After: {}", settings.retry_after_s)
            }
            Scenario::Refused => "B: HTTP, connection refused".into(),
            Scenario::Mqtt => "C: MQTT, broker stopped".into(),
        }
    }
}

// ---------------------------------------------------------------------------
// What the backend saw

/// One thing that happened at the backend.
#[derive(Clone, Copy, Debug)]
enum Seen {
    /// A batch taken, from this agent (index).
    Accepted { agent: usize },
    /// A request answered 503.
    Unavailable,
    /// A SYN to the backend's port while something listened there.
    Connection,
    /// A SYN to the backend's port while nothing listened (refused).
    Refused,
}

#[derive(Default)]
struct Received {
    log: Vec<(Instant, Seen)>,
    /// Copies per event id.
    copies: HashMap<String, u32>,
    /// Agents that delivered at least one batch.
    agents_seen: HashSet<usize>,
    /// Stored before the return, not yet received.
    return_pending: HashSet<String>,
    return_drained_at: Option<Instant>,
    /// Stored at the end of the after phase, not yet received.
    final_pending: HashSet<String>,
}

impl Received {
    fn batch(&mut self, now: Instant, agent: usize, ids: Vec<String>) {
        self.log.push((now, Seen::Accepted { agent }));
        self.agents_seen.insert(agent);
        for id in ids {
            if !self.return_pending.is_empty()
                && self.return_pending.remove(&id)
                && self.return_pending.is_empty()
            {
                self.return_drained_at = Some(now);
            }
            self.final_pending.remove(&id);
            *self.copies.entry(id).or_default() += 1;
        }
    }
}

struct Backend {
    mode: AtomicU8,
    received: Mutex<Received>,
    retry_after_s: u64,
}

impl Backend {
    fn new(retry_after_s: u64) -> Arc<Backend> {
        Arc::new(Backend {
            mode: AtomicU8::new(UP),
            received: Mutex::new(Received::default()),
            retry_after_s,
        })
    }

    fn mode(&self) -> u8 {
        self.mode.load(Ordering::SeqCst)
    }

    fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn received(&self) -> MutexGuard<'_, Received> {
        lock(&self.received)
    }
}

#[derive(Deserialize)]
struct Batch {
    agent: AgentRef,
    events: Vec<EventId>,
}

#[derive(Deserialize)]
struct AgentRef {
    id: String,
}

#[derive(Deserialize)]
struct EventId {
    id: String,
}

/// `shop-017` → 17.
fn agent_index(id: &str) -> usize {
    id.trim_start_matches("shop-").parse().unwrap_or(usize::MAX)
}

/// A batch document (HTTP json body or MQTT payload) into the backend.
fn take_batch(backend: &Backend, body: &[u8]) -> bool {
    let Ok(batch) = serde_json::from_slice::<Batch>(body) else {
        return false;
    };
    let ids = batch.events.into_iter().map(|event| event.id).collect();
    backend
        .received()
        .batch(Instant::now(), agent_index(&batch.agent.id), ids);
    true
}

async fn batches(backend: Arc<Backend>, body: Bytes) -> Response {
    if backend.mode() == UNAVAILABLE {
        backend
            .received()
            .log
            .push((Instant::now(), Seen::Unavailable));
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, backend.retry_after_s.to_string())],
        )
            .into_response();
    }
    if take_batch(&backend, &body) {
        StatusCode::OK.into_response()
    } else {
        StatusCode::UNPROCESSABLE_ENTITY.into_response()
    }
}

// ---------------------------------------------------------------------------
// A listener that can stop listening

/// A TCP connection that ends (with an error, so hyper drops and closes it)
/// as soon as `killed` is cancelled: closing a listener leaves the
/// keep-alive connections it accepted open, a real outage does not.
struct Killable {
    stream: TcpStream,
    token: CancellationToken,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Killable {
    fn new(stream: TcpStream, token: CancellationToken) -> Killable {
        Killable {
            stream,
            killed: Box::pin(token.clone().cancelled_owned()),
            token,
        }
    }

    fn killed(&mut self, cx: &mut Context<'_>) -> bool {
        self.token.is_cancelled() || self.killed.as_mut().poll(cx).is_ready()
    }
}

fn outage_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "backend outage")
}

impl AsyncRead for Killable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.killed(cx) {
            return Poll::Ready(Err(outage_error()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Killable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.killed(cx) {
            return Poll::Ready(Err(outage_error()));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Listens on `port` while `up` says so; on `false` it closes the listening
/// socket (new connections are refused) and every connection it accepted,
/// on `true` it binds the same port again. `listening` tells when either
/// has happened; the backend's mode follows.
struct Switchable {
    port: u16,
    listener: Option<TcpListener>,
    up: watch::Receiver<bool>,
    listening: watch::Sender<bool>,
    kill: CancellationToken,
    backend: Arc<Backend>,
}

fn bind_reusing(port: u16) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(1024)
}

impl axum::serve::Listener for Switchable {
    type Io = Killable;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Killable, SocketAddr) {
        loop {
            if !*self.up.borrow_and_update() {
                if self.listener.take().is_some() {
                    self.backend.set_mode(DOWN);
                    self.kill.cancel();
                    self.kill = CancellationToken::new();
                    self.listening.send_replace(false);
                }
                if self.up.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                continue;
            }
            if self.listener.is_none() {
                match bind_reusing(self.port) {
                    Ok(listener) => {
                        self.listener = Some(listener);
                        self.backend.set_mode(UP);
                        self.listening.send_replace(true);
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                }
            }
            let Some(listener) = self.listener.as_ref() else {
                continue;
            };
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, address)) => {
                        let _ = stream.set_nodelay(true);
                        return (Killable::new(stream, self.kill.clone()), address);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                },
                changed = self.up.changed() => if changed.is_err() {
                    std::future::pending::<()>().await;
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from(([127, 0, 0, 1], self.port)))
    }
}

/// The HTTP backend: `up` switches its listener, `listening` follows.
struct HttpBackend {
    port: u16,
    up: watch::Sender<bool>,
    listening: watch::Receiver<bool>,
}

impl HttpBackend {
    async fn start(backend: Arc<Backend>) -> HttpBackend {
        let (port, listener) = bind_outside_ephemeral();
        let (up, up_rx) = watch::channel(true);
        let (listening_tx, listening) = watch::channel(true);
        let switchable = Switchable {
            port,
            listener: Some(listener),
            up: up_rx,
            listening: listening_tx,
            kill: CancellationToken::new(),
            backend: backend.clone(),
        };
        let app = Router::new().route(
            "/batches",
            post(move |body: Bytes| batches(backend.clone(), body)),
        );
        tokio::spawn(async move { axum::serve(switchable, app).await.expect("serve") });
        HttpBackend {
            port,
            up,
            listening,
        }
    }

    /// Stops listening; returns once the port is closed.
    async fn close(&mut self) {
        self.up.send_replace(false);
        let _ = self.listening.wait_for(|listening| !*listening).await;
    }

    /// Listens again on the same port; returns once it does.
    async fn reopen(&mut self) {
        self.up.send_replace(true);
        let _ = self.listening.wait_for(|listening| *listening).await;
    }
}

/// The local port range the kernel picks client ports from.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut numbers = text.split_whitespace().map(|word| word.parse().ok());
            Some((numbers.next()??, numbers.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A port below the ephemeral range: while nothing listens there during an
/// outage, no agent's own connection can get it as its source port (a TCP
/// self-connect would then hold the port).
fn bind_outside_ephemeral() -> (u16, TcpListener) {
    let (low, _) = ephemeral_range();
    let top = low.clamp(10_100, 32_768);
    for _ in 0..1000 {
        let port = fastrand::u16(10_000..top);
        if let Ok(listener) = bind_reusing(port) {
            return (port, listener);
        }
    }
    panic!("no free port found below {top}");
}

fn free_port_outside_ephemeral() -> u16 {
    let (port, listener) = bind_outside_ephemeral();
    drop(listener);
    port
}

// ---------------------------------------------------------------------------
// SYNs on the wire

/// Counts TCP SYNs (without ACK) to `port` arriving on `lo`, through a
/// packet socket with a BPF filter: a refused attempt never reaches a
/// server, so it can only be seen here. Needs root (CAP_NET_RAW).
struct SynCounter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SynCounter {
    fn start(port: u16, backend: Arc<Backend>) -> Option<SynCounter> {
        let fd = open_syn_socket(port).map_err(|error| {
            eprintln!("fleet: no SYN counter ({error}); connection attempts are not counted");
        });
        let fd = fd.ok()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("syn-counter".into())
                .spawn(move || count_syns(fd, &stop, &backend))
                .expect("spawn the SYN counter")
        };
        Some(SynCounter {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for SynCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A packet socket on `lo` passing only IPv4 TCP SYNs to `port`.
fn open_syn_socket(port: u16) -> io::Result<std::os::fd::OwnedFd> {
    use nix::libc;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let protocol = i32::from((libc::ETH_P_ALL as u16).to_be());
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, protocol) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new, valid descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let filter = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    // tcpdump's `ip and tcp dst port PORT and tcp[13] & 0x12 == 0x02`, on
    // an Ethernet-framed device (lo is one).
    let mut program = [
        filter(0x28, 0, 0, 12),              // 0: ldh [12] (ethertype)
        filter(0x15, 0, 11, 0x0800),         // 1: IPv4, else drop
        filter(0x30, 0, 0, 23),              // 2: ldb [23] (IP protocol)
        filter(0x15, 0, 9, 6),               // 3: TCP, else drop
        filter(0x28, 0, 0, 20),              // 4: ldh [20] (fragment offset)
        filter(0x45, 7, 0, 0x1fff),          // 5: a later fragment: drop
        filter(0xb1, 0, 0, 14),              // 6: ldxb 4*([14]&0xf) (IP header length)
        filter(0x48, 0, 0, 16),              // 7: ldh [x+16] (TCP destination port)
        filter(0x15, 0, 4, u32::from(port)), // 8: our port, else drop
        filter(0x50, 0, 0, 27),              // 9: ldb [x+27] (TCP flags)
        filter(0x54, 0, 0, 0x12),            // 10: and #(SYN|ACK)
        filter(0x15, 0, 1, 0x02),            // 11: SYN alone, else drop
        filter(0x06, 0, 0, 128),             // 12: keep 128 bytes
        filter(0x06, 0, 0, 0),               // 13: drop
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: the program outlives the call (the kernel copies it).
    let attached = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::addr_of!(fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if attached < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol as u16;
    address.sll_ifindex = index as i32;
    // SAFETY: `address` is a valid sockaddr_ll of the size given.
    let bound = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(address).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if bound < 0 {
        return Err(io::Error::last_os_error());
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: a timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let buffer: libc::c_int = 4 << 20;
    // SAFETY: an int of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::addr_of!(buffer).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(fd)
}

fn count_syns(fd: std::os::fd::OwnedFd, stop: &AtomicBool, backend: &Backend) {
    use nix::libc;
    use std::os::fd::AsRawFd;
    let mut packet = [0u8; 256];
    while !stop.load(Ordering::SeqCst) {
        // SAFETY: an all-zero sockaddr_ll is valid for recvfrom to fill.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: the buffers are valid for the lengths given.
        let length = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                packet.as_mut_ptr().cast(),
                packet.len(),
                0,
                std::ptr::addr_of_mut!(from).cast(),
                &mut from_len,
            )
        };
        if length <= 0 {
            continue; // the timeout, to look at `stop`
        }
        // lo shows every packet twice: as sent and as received.
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let seen = if backend.mode() == DOWN {
            Seen::Refused
        } else {
            Seen::Connection
        };
        backend.received().log.push((Instant::now(), seen));
    }
}

// ---------------------------------------------------------------------------
// Mosquitto

/// A Mosquitto 2 broker of its own, persistence on: the agents' listener on
/// `port`, the counter's on `counter_port` (so its own reconnects are not
/// counted as the fleet's), both below the ephemeral port range.
struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    counter_port: u16,
    child: Option<Child>,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("epm-fleet-mqtt-")
            .tempdir()
            .expect("broker folder");
        let mut broker = Broker {
            dir,
            port: 0,
            counter_port: 0,
            child: None,
        };
        for _ in 0..3 {
            broker.port = free_port_outside_ephemeral();
            broker.counter_port = free_port_outside_ephemeral();
            if broker.port == broker.counter_port {
                continue;
            }
            broker.write_config();
            if broker.spawn().is_ok() {
                return broker;
            }
        }
        panic!("mosquitto did not start:\n{}", broker.log());
    }

    fn write_config(&self) {
        let dir = self.dir.path();
        let mut config = String::new();
        // SAFETY: no preconditions.
        if unsafe { nix::libc::geteuid() } == 0 {
            config.push_str("user root\n"); // else it cannot write here
        }
        config.push_str(&format!(
            "persistence true\npersistence_location {dir}/\npersistence_file mosquitto.db\n\
             log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             log_timestamp_format %Y-%m-%dT%H:%M:%S\nconnection_messages true\n\
             allow_anonymous true\nmax_queued_messages 0\n\
             listener {port} 127.0.0.1\nlistener {counter} 127.0.0.1\n",
            dir = dir.display(),
            port = self.port,
            counter = self.counter_port,
        ));
        std::fs::write(dir.join("mosquitto.conf"), config).expect("mosquitto.conf");
    }

    fn log(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text.get(start..).unwrap_or("").to_string()
    }

    fn spawn(&mut self) -> Result<(), ()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .expect("mosquitto.log");
        let mut child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("run mosquitto (apt-get install mosquitto)");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait().expect("mosquitto state").is_some() {
                return Err(());
            }
            // The counter's port: a probe on the agents' port would count.
            if std::net::TcpStream::connect(("127.0.0.1", self.counter_port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM (it saves its persistence file) and wait.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().expect("mosquitto state").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.wait();
    }

    fn start_again(&mut self) {
        self.spawn().unwrap_or_else(|()| {
            panic!("mosquitto did not start again:\n{}", self.log());
        });
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A QoS 1 subscriber with a persistent session on the broker's counter
/// listener, feeding every batch into the backend's books.
fn spawn_mqtt_counter(port: u16, backend: Arc<Backend>) -> CancellationToken {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let stop = CancellationToken::new();
    let mut options = MqttOptions::new("fleet-bench-counter", "127.0.0.1", port);
    options
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(1 << 22, 1 << 22)
        .set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let stopped = stop.clone();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = stopped.cancelled() => return,
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe("epm/+/events", QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    take_batch(&backend, &publish.payload);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    stop
}

// ---------------------------------------------------------------------------
// The fleet

struct Agent {
    dir: PathBuf,
    child: Option<Child>,
}

/// The agents' processes; dropping the fleet kills whatever still runs.
struct Fleet {
    root: tempfile::TempDir,
    agents: Vec<Agent>,
}

enum SinkTarget {
    Http(u16),
    Mqtt(u16),
}

impl Fleet {
    fn start(settings: &Settings, target: &SinkTarget) -> Fleet {
        let base = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let root = tempfile::Builder::new()
            .prefix("fleet-")
            .tempdir_in(base)
            .expect("fleet folder");
        let sink = match target {
            SinkTarget::Http(port) => format!(
                "[[sink]]\nname = \"hq\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/batches\"\n"
            ),
            SinkTarget::Mqtt(port) => format!(
                "[[sink]]\nname = \"hq\"\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\n"
            ),
        };
        let mut fleet = Fleet {
            agents: Vec::with_capacity(settings.agents),
            root,
        };
        for index in 1..=settings.agents {
            let dir = fleet.root.path().join(format!("shop-{index:03}"));
            std::fs::create_dir_all(&dir).expect("agent folder");
            let config = dir.join("agent.toml");
            std::fs::write(
                &config,
                format!(
                    "[agent]\nid = \"shop-{index:03}\"\ndata_dir = \"{data}\"\n\n\
                     [[device]]\nname = \"entrance\"\nmodel = \"simulator\"\nquestion = \"recommend\"\n\
                     keymap = {{ 1 = \"yes\", 2 = \"neutral\", 3 = \"no\" }}\n\
                     sim_remotes = 3\nsim_presses_per_min = {rate}\n\n{sink}\n\
                     [log]\nlevel = \"warn\"\n",
                    data = dir.join("data").display(),
                    rate = settings.presses_per_min,
                ),
            )
            .expect("agent config");
            let log = File::create(dir.join("agent.log")).expect("agent log");
            let child = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
                .args(["run", "--config"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start an agent");
            fleet.agents.push(Agent {
                dir,
                child: Some(child),
            });
        }
        fleet
    }

    /// Panics with its log if an agent has exited.
    fn check_alive(&mut self) {
        for agent in &mut self.agents {
            if let Some(child) = agent.child.as_mut() {
                if let Some(status) = child.try_wait().expect("agent state") {
                    agent.child = None;
                    let log =
                        std::fs::read_to_string(agent.dir.join("agent.log")).unwrap_or_default();
                    panic!("agent {} exited ({status}):\n{log}", agent.dir.display());
                }
            }
        }
    }

    fn data_dirs(&self) -> Vec<PathBuf> {
        self.agents
            .iter()
            .map(|agent| agent.dir.join("data"))
            .collect()
    }

    /// SIGTERM to every agent, SIGKILL to those still running after 15 s.
    /// Returns how many needed the kill.
    fn stop(&mut self) -> usize {
        for agent in &self.agents {
            if let Some(child) = agent.child.as_ref() {
                let _ = signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let mut running = 0;
            for agent in &mut self.agents {
                if let Some(child) = agent.child.as_mut() {
                    match child.try_wait() {
                        Ok(Some(_)) | Err(_) => agent.child = None,
                        Ok(None) => running += 1,
                    }
                }
            }
            if running == 0 {
                return 0;
            }
            if std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut killed = 0;
        for agent in &mut self.agents {
            if let Some(mut child) = agent.child.take() {
                let _ = child.kill();
                let _ = child.wait();
                killed += 1;
            }
        }
        killed
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            if let Some(mut child) = agent.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// What the stores hold, read through read-only connections.
#[derive(Default)]
struct Snapshot {
    /// Event id → (agent index, seqno).
    events: HashMap<String, (usize, i64)>,
    /// Per agent index: the sink's cursor, state and last error.
    sinks: HashMap<usize, SinkRow>,
}

#[derive(Clone, Debug, Default)]
struct SinkRow {
    delivered_seqno: i64,
    state: String,
    last_error: Option<String>,
}

fn read_snapshot(data_dirs: &[PathBuf]) -> Snapshot {
    use rusqlite::{Connection, OpenFlags};
    let mut snapshot = Snapshot::default();
    for (offset, dir) in data_dirs.iter().enumerate() {
        let agent = offset + 1;
        let path = dir.join("epm-agent.db");
        let connection = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .unwrap_or_else(|error| panic!("open {}: {error}", path.display()));
        connection
            .busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        let mut statement = connection
            .prepare("SELECT id, seqno FROM events")
            .expect("select ids");
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .expect("query ids");
        for row in rows {
            let (id, seqno) = row.expect("an id");
            snapshot.events.insert(id, (agent, seqno));
        }
        let sink = connection
            .query_row(
                "SELECT delivered_seqno, state, last_error FROM sinks WHERE name = 'hq'",
                [],
                |row| {
                    Ok(SinkRow {
                        delivered_seqno: row.get(0)?,
                        state: row.get(1)?,
                        last_error: row.get(2)?,
                    })
                },
            )
            .unwrap_or_default();
        snapshot.sinks.insert(agent, sink);
    }
    snapshot
}

async fn read_stores(data_dirs: &[PathBuf]) -> Snapshot {
    let dirs = data_dirs.to_vec();
    tokio::task::spawn_blocking(move || read_snapshot(&dirs))
        .await
        .expect("read the stores")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------
// One scenario

/// What one second held.
#[derive(Clone, Copy, Default)]
struct Second {
    /// Batches taken (HTTP 2xx, or MQTT messages at the counter).
    accepted: u64,
    /// Requests answered 503.
    unavailable: u64,
    /// SYNs while the port listened.
    connections: u64,
    /// SYNs refused.
    refused: u64,
}

impl Second {
    /// Attempts to deliver: for HTTP every request plus every refused
    /// connection (an accepted connection carries a request, counted
    /// already); for MQTT every message plus every connection attempt.
    fn attempts(&self, scenario: Scenario) -> u64 {
        match scenario {
            Scenario::Unavailable | Scenario::Refused => {
                self.accepted + self.unavailable + self.refused
            }
            Scenario::Mqtt => self.accepted + self.connections + self.refused,
        }
    }
}

fn seconds(log: &[(Instant, Seen)], from: Instant, count: usize) -> Vec<Second> {
    let mut bins = vec![Second::default(); count];
    for (at, seen) in log {
        let Some(offset) = at.checked_duration_since(from) else {
            continue;
        };
        let Some(bin) = bins.get_mut(offset.as_secs() as usize) else {
            continue;
        };
        match seen {
            Seen::Accepted { .. } => bin.accepted += 1,
            Seen::Unavailable => bin.unavailable += 1,
            Seen::Connection => bin.connections += 1,
            Seen::Refused => bin.refused += 1,
        }
    }
    bins
}

struct Outcome {
    scenario: Scenario,
    agents: usize,
    steady_rate: f64,
    steady_connections: f64,
    outage: Vec<u64>,
    outage_max: u64,
    outage_mean: f64,
    outage_connection_max: u64,
    after: Vec<u64>,
    after_connections: Vec<u64>,
    drained: Option<Duration>,
    agents_back: Vec<Duration>,
    agents_never_back: usize,
    events: usize,
    duplicates: u64,
    lost: usize,
    /// Stored by the end of the after phase, still not sent `grace` later.
    late: usize,
    killed: usize,
    load_before: String,
    load_after: String,
}

fn percentile(sorted: &[Duration], share: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * share).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn run_scenario(scenario: Scenario, settings: &Settings) -> Option<Outcome> {
    let backend = Backend::new(settings.retry_after_s);
    let mut http = None;
    let mut broker = None;
    let mut counter_stop = None;
    let target = match scenario {
        Scenario::Unavailable | Scenario::Refused => {
            let server = HttpBackend::start(backend.clone()).await;
            let port = server.port;
            http = Some(server);
            SinkTarget::Http(port)
        }
        Scenario::Mqtt => {
            let started = Broker::start();
            counter_stop = Some(spawn_mqtt_counter(started.counter_port, backend.clone()));
            let port = started.port;
            broker = Some(started);
            SinkTarget::Mqtt(port)
        }
    };
    let port = match target {
        SinkTarget::Http(port) | SinkTarget::Mqtt(port) => port,
    };
    let syns = SynCounter::start(port, backend.clone());
    let load_before = load_average();
    eprintln!(
        "fleet {}: starting {} agents (load {load_before})",
        scenario.letter(),
        settings.agents
    );
    let mut fleet = Fleet::start(settings, &target);

    // Warm-up: until every agent has delivered once.
    let warm_up = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if scenario == Scenario::Mqtt {
            // The MQTT sink may not be built: an agent that cannot start
            // its sink exits at once.
            let mut exited = None;
            for agent in &mut fleet.agents {
                if let Some(child) = agent.child.as_mut() {
                    if child.try_wait().ok().flatten().is_some() {
                        exited = Some(agent.dir.join("agent.log"));
                    }
                }
            }
            if let Some(log) = exited {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                eprintln!("fleet c: an agent exited, scenario skipped:\n{log}");
                return None;
            }
        }
        fleet.check_alive();
        let seen = backend.received().agents_seen.len();
        if seen >= settings.agents {
            break;
        }
        assert!(
            warm_up.elapsed() < WARM_UP_LIMIT,
            "only {seen} of {} agents delivered within {WARM_UP_LIMIT:?}",
            settings.agents
        );
    }
    eprintln!(
        "fleet {}: every agent delivered after {:.1} s; steady phase",
        scenario.letter(),
        warm_up.elapsed().as_secs_f64()
    );

    let zero = Instant::now();
    tokio::time::sleep_until(zero + settings.steady).await;
    fleet.check_alive();
    eprintln!(
        "fleet {}: outage (load {})",
        scenario.letter(),
        load_average()
    );
    match scenario {
        Scenario::Unavailable => backend.set_mode(UNAVAILABLE),
        Scenario::Refused => http.as_mut().expect("http").close().await,
        Scenario::Mqtt => {
            backend.set_mode(DOWN);
            broker.as_mut().expect("broker").stop();
        }
    }
    let outage_start = Instant::now();
    tokio::time::sleep_until(outage_start + settings.outage).await;
    fleet.check_alive();

    // Every event stored now must reach the backend.
    let data_dirs = fleet.data_dirs();
    let before_return = read_stores(&data_dirs).await;
    {
        let mut received = backend.received();
        let pending: HashSet<String> = before_return
            .events
            .into_keys()
            .filter(|id| !received.copies.contains_key(id))
            .collect();
        received.return_pending = pending;
    }
    match scenario {
        Scenario::Unavailable => backend.set_mode(UP),
        Scenario::Refused => http.as_mut().expect("http").reopen().await,
        Scenario::Mqtt => {
            broker.as_mut().expect("broker").start_again();
            backend.set_mode(UP);
        }
    }
    let return_at = Instant::now();
    eprintln!(
        "fleet {}: backend back after {:.1} s (load {})",
        scenario.letter(),
        (return_at - outage_start).as_secs_f64(),
        load_average()
    );
    tokio::time::sleep_until(return_at + settings.after).await;
    fleet.check_alive();

    // Lost: stored now and not at the backend `grace` later.
    let at_end = read_stores(&data_dirs).await;
    let events = at_end.events.len();
    {
        let mut received = backend.received();
        let pending: HashSet<String> = at_end
            .events
            .keys()
            .filter(|id| !received.copies.contains_key(*id))
            .cloned()
            .collect();
        received.final_pending = pending;
    }
    let grace_end = Instant::now() + settings.grace;
    while Instant::now() < grace_end && !backend.received().final_pending.is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What is still missing: lost if the agent's cursor has passed it (the
    // agent thinks it delivered), late if the agent still has it to send.
    let missing: Vec<String> = backend.received().final_pending.iter().cloned().collect();
    let (lost, late) = if missing.is_empty() {
        (0, 0)
    } else {
        let now = read_stores(&data_dirs).await;
        let mut lost = 0;
        let mut late = 0;
        let mut per_agent: HashMap<usize, usize> = HashMap::new();
        for id in &missing {
            let Some((agent, seqno)) = at_end.events.get(id) else {
                continue;
            };
            *per_agent.entry(*agent).or_default() += 1;
            let cursor = now.sinks.get(agent).map_or(0, |sink| sink.delivered_seqno);
            if *seqno <= cursor {
                lost += 1;
            } else {
                late += 1;
            }
        }
        let mut agents: Vec<_> = per_agent.into_iter().collect();
        agents.sort();
        for (agent, count) in agents.iter().take(8) {
            let sink = now.sinks.get(agent).cloned().unwrap_or_default();
            eprintln!(
                "fleet {}: shop-{agent:03}: {count} events missing at the backend; its sink: cursor {}, {}, last error {:?}",
                scenario.letter(),
                sink.delivered_seqno,
                sink.state,
                sink.last_error
            );
        }
        (lost, late)
    };
    let load_after = load_average();
    let killed = fleet.stop();
    drop(syns);
    if let Some(stop) = counter_stop {
        stop.cancel();
    }
    drop(broker);

    let received = backend.received();
    let steady_count = settings.steady.as_secs() as usize;
    let outage_count = (return_at - outage_start).as_secs() as usize;
    let after_count = settings.after.as_secs() as usize;
    let steady = seconds(&received.log, zero, steady_count);
    let outage = seconds(&received.log, outage_start, outage_count);
    let after = seconds(&received.log, return_at, after_count);
    write_csv(scenario, &received.log, zero, return_at, settings);

    let steady_rate = steady
        .iter()
        .map(|second| second.attempts(scenario))
        .sum::<u64>() as f64
        / steady_count.max(1) as f64;
    let steady_connections = steady.iter().map(|second| second.connections).sum::<u64>() as f64
        / steady_count.max(1) as f64;
    let outage_attempts: Vec<u64> = outage
        .iter()
        .map(|second| second.attempts(scenario))
        .collect();
    let mut back: HashMap<usize, Instant> = HashMap::new();
    for (at, seen) in &received.log {
        if let Seen::Accepted { agent } = seen {
            if *at >= return_at {
                back.entry(*agent).or_insert(*at);
            }
        }
    }
    let mut agents_back: Vec<Duration> = back.values().map(|at| *at - return_at).collect();
    agents_back.sort();
    let duplicates = received
        .copies
        .values()
        .map(|copies| u64::from(copies.saturating_sub(1)))
        .sum();
    Some(Outcome {
        scenario,
        agents: settings.agents,
        steady_rate,
        steady_connections,
        outage_max: outage_attempts.iter().copied().max().unwrap_or(0),
        outage: outage_attempts.clone(),
        outage_mean: outage_attempts.iter().sum::<u64>() as f64
            / outage_attempts.len().max(1) as f64,
        outage_connection_max: outage
            .iter()
            .map(|second| second.connections + second.refused)
            .max()
            .unwrap_or(0),
        after: after
            .iter()
            .map(|second| second.attempts(scenario))
            .collect(),
        after_connections: after
            .iter()
            .map(|second| second.connections + second.refused)
            .collect(),
        drained: received
            .return_drained_at
            .map(|at| at.saturating_duration_since(return_at)),
        agents_never_back: settings.agents.saturating_sub(agents_back.len()),
        agents_back,
        events,
        duplicates,
        lost,
        late,
        killed,
        load_before,
        load_after,
    })
}

fn write_csv(
    scenario: Scenario,
    log: &[(Instant, Seen)],
    zero: Instant,
    return_at: Instant,
    settings: &Settings,
) {
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = base.join(format!("fleet-{}.csv", scenario.letter()));
    let total = (settings.steady + settings.outage + settings.after).as_secs() as usize + 2;
    let bins = seconds(log, zero, total);
    let returned = (return_at - zero).as_secs_f64();
    let mut text = format!(
        "# scenario {}; t = seconds since the steady phase began; the outage began at {}, the backend returned at {returned:.2}\n\
         t,attempts,accepted,unavailable_503,connections,refused_connections\n",
        scenario.letter(),
        settings.steady.as_secs()
    );
    for (t, bin) in bins.iter().enumerate() {
        text.push_str(&format!(
            "{t},{},{},{},{},{}\n",
            bin.attempts(scenario),
            bin.accepted,
            bin.unavailable,
            bin.connections,
            bin.refused
        ));
    }
    if let Err(error) = std::fs::write(&path, text) {
        eprintln!("fleet: cannot write {}: {error}", path.display());
    }
}

fn report(outcome: &Outcome, settings: &Settings) {
    let steady = outcome.steady_rate.max(f64::MIN_POSITIVE);
    let times = |value: f64| value / steady;
    let first_ten: Vec<u64> = outcome.after.iter().take(10).copied().collect();
    let first_ten_mean = first_ten.iter().sum::<u64>() as f64 / first_ten.len().max(1) as f64;
    let first_ten_max = first_ten.iter().copied().max().unwrap_or(0);
    let after_max = outcome.after.iter().copied().max().unwrap_or(0);
    let drained = match outcome.drained {
        Some(time) => format!("{:.1} s", time.as_secs_f64()),
        None => "not drained".into(),
    };
    let back = &outcome.agents_back;
    println!();
    println!(
        "### {} ({} agents; load {} → {})",
        outcome.scenario.title(settings),
        outcome.agents,
        outcome.load_before,
        outcome.load_after
    );
    println!();
    println!(
        "| steady attempts/s | outage max / mean | after: max second | after: first 10 s mean / max | every event delivered | duplicates | lost / late |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {:.1} | {} ({:.2}×) / {:.1} ({:.2}×) | {} ({:.2}×) | {:.1} ({:.2}×) / {} ({:.2}×) | {drained} after the return | {} | {} / {} of {} |",
        outcome.steady_rate,
        outcome.outage_max,
        times(outcome.outage_max as f64),
        outcome.outage_mean,
        times(outcome.outage_mean),
        after_max,
        times(after_max as f64),
        first_ten_mean,
        times(first_ten_mean),
        first_ten_max,
        times(first_ten_max as f64),
        outcome.duplicates,
        outcome.lost,
        outcome.late,
        outcome.events,
    );
    println!();
    println!(
        "during the outage, attempts per second: {:?}",
        outcome.outage
    );
    println!("after the return, attempts per second: {:?}", outcome.after);
    println!(
        "after the return, connection attempts per second: {:?}",
        outcome.after_connections
    );
    println!(
        "steady connection attempts/s {:.2}; outage: max {} connection attempts in a second",
        outcome.steady_connections, outcome.outage_connection_max
    );
    println!(
        "first delivery after the return, per agent: p50 {:.1} s, p90 {:.1} s, max {:.1} s ({} agents not back)",
        percentile(back, 0.5).as_secs_f64(),
        percentile(back, 0.9).as_secs_f64(),
        back.last().copied().unwrap_or_default().as_secs_f64(),
        outcome.agents_never_back,
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets: outage ≤ 1× steady: {}; no second after > 3×: {}; first 10 s ≤ 2× (mean): {}; drained ≤ 30 s: {}; lost 0: {}; late 0: {}",
        verdict(times(outcome.outage_max as f64) <= 1.0),
        verdict(times(after_max as f64) <= 3.0),
        verdict(times(first_ten_mean) <= 2.0),
        verdict(outcome.drained.is_some_and(|time| time <= Duration::from_secs(30))),
        verdict(outcome.lost == 0),
        verdict(outcome.late == 0),
    );
    if outcome.killed > 0 {
        println!(
            "{} agents did not stop on SIGTERM within 15 s and were killed",
            outcome.killed
        );
    }
    let _ = io::stdout().flush();
}

/// Lifts the soft open-file limit to the hard one.
fn raise_open_files() {
    use nix::libc;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit to fill, then to set.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let settings = Settings {
        agents: env_number("AGENTS", 200) as usize,
        steady: Duration::from_secs(env_number("STEADY_S", 30)),
        outage: Duration::from_secs(env_number("OUTAGE_S", 60)),
        after: Duration::from_secs(env_number("AFTER_S", 30)),
        grace: Duration::from_secs(env_number("GRACE_S", 30)),
        presses_per_min: env_number("PRESSES_PER_MIN", 30),
        retry_after_s: env_number("RETRY_AFTER_S", 5),
    };
    assert!(
        settings.agents >= 1 && settings.agents <= 999,
        "AGENTS from 1 to 999"
    );
    let scenarios: Vec<Scenario> = std::env::var("SCENARIOS")
        .unwrap_or_else(|_| "a,b,c".into())
        .split(',')
        .filter_map(|letter| match letter.trim() {
            "a" | "A" => Some(Scenario::Unavailable),
            "b" | "B" => Some(Scenario::Refused),
            "c" | "C" => Some(Scenario::Mqtt),
            _ => None,
        })
        .collect();
    raise_open_files();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "fleet: {} agents, {} presses/min each; steady {} s, outage {} s, after {} s (load {})",
        settings.agents,
        settings.presses_per_min,
        settings.steady.as_secs(),
        settings.outage.as_secs(),
        settings.after.as_secs(),
        load_average()
    );
    for scenario in scenarios {
        match runtime.block_on(run_scenario(scenario, &settings)) {
            Some(outcome) => report(&outcome, &settings),
            None => println!("\n### {}: skipped (see stderr)", scenario.title(&settings)),
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
}

//! The one place that turns the TOML file into validated [`Settings`]
//! (`shared/spec/agent-interface.md`). `run`, `config check` and the service
//! all load through [`load`]. Unknown keys are errors; every error names the
//! file, the line and the key. Units live in key names (`min_interval_s`,
//! `flush_interval_ms`) and become `Duration`s here, once.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use crate::model::Model;
use crate::model::MODELS;
use crate::protocol::UnitId;

/// The validated configuration of one agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub agent: AgentSettings,
    pub devices: Vec<DeviceSettings>,
    pub store: StoreSettings,
    pub sinks: Vec<SinkSettings>,
    /// `[http]`: the local page, `/health` and `/metrics`; `None`: no listener.
    pub http: Option<PageSettings>,
    pub log: LogSettings,
}

/// `[http]`: where the local page listens and the token it asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct PageSettings {
    pub listen: std::net::SocketAddr,
    /// `None` only on a loopback address: then only loopback peers are served.
    pub token: SecretSource,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AgentSettings {
    pub id: String,
    pub location: Option<String>,
    /// Absolute, or relative to the configuration file's folder.
    pub data_dir: PathBuf,
    /// How often an `agent_status` event is sent; `None` sends them only at
    /// start, stop and device changes.
    pub status_interval: Option<Duration>,
}

/// Where a device is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSetting {
    /// A device path (`/dev/ttyACM0`, `/dev/serial/by-id/...`) or a COM name.
    Path(String),
    /// Found at every (re)connect: by USB ids when given, else by asking
    /// every free serial port for its identity.
    Auto(AutoMatch),
    /// The simulator has no port.
    None,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AutoMatch {
    pub usb_vid: Option<u16>,
    pub usb_pid: Option<u16>,
    /// The keypad serial or receiver id the identity reply must carry.
    pub hardware_id: Option<UnitId>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSettings {
    pub name: String,
    pub model: Model,
    pub port: PortSetting,
    pub baud: u32,
    pub question: Option<String>,
    /// Key (1-16) → answer. Keys not listed produce `answer = null`.
    pub keymap: BTreeMap<u8, String>,
    /// Presses of one unit closer than this to its previous press are kept
    /// but marked suppressed. Zero turns anti-spam off.
    pub min_interval: Duration,
    /// Send the ACK to the device once a press is committed.
    pub ack: bool,
    pub simulator: SimulatorSettings,
}

/// Only meaningful for `model = "simulator"`.
#[derive(Clone, Debug, PartialEq)]
pub struct SimulatorSettings {
    pub remotes: u32,
    pub presses_per_min: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StoreSettings {
    pub retention: Duration,
    pub max_size_bytes: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SinkSettings {
    pub name: String,
    pub kind: SinkKind,
    pub batch_size: usize,
    pub flush_interval: Duration,
    /// The cap on the backoff after failures that mean "try later".
    pub max_backoff: Duration,
    /// How often a paused sink (rejected credentials, wrong URL) tries again.
    pub paused_retry: Duration,
}

impl SinkSettings {
    pub fn pace(&self) -> crate::sink::policy::Pace {
        crate::sink::policy::Pace {
            max_backoff: self.max_backoff,
            paused_retry: self.paused_retry,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum SinkKind {
    Http(HttpSinkSettings),
    File(FileSinkSettings),
    Postgres(PostgresSinkSettings),
    Mqtt(MqttSinkSettings),
}

#[derive(Clone, Debug, PartialEq)]
pub struct HttpSinkSettings {
    pub url: String,
    pub format: HttpFormat,
    pub token: SecretSource,
    pub gzip: bool,
    pub timeout: Duration,
    pub proxy: Option<String>,
    pub ca_file: Option<PathBuf>,
}

/// `kind = "postgres"`: rows in one table, one transaction per batch.
#[derive(Clone, Debug, PartialEq)]
pub struct PostgresSinkSettings {
    /// `postgres://user@host:port/database` or key=value pairs; never
    /// holds a password.
    pub url: String,
    /// Whether every host is a loopback address or a Unix socket: only
    /// then may the connection go without TLS.
    pub local: bool,
    pub password: SecretSource,
    /// `epm_events`, or `schema.table`.
    pub table: String,
    pub tls: TlsFiles,
    pub timeout: Duration,
}

/// `kind = "mqtt"`: batch documents published with QoS 1.
#[derive(Clone, Debug, PartialEq)]
pub struct MqttSinkSettings {
    pub host: String,
    pub port: u16,
    /// `mqtts://`; plain `mqtt://` only to a loopback host.
    pub tls: bool,
    pub client_id: String,
    /// With `{agent}` already replaced by the agent id.
    pub topic: String,
    pub state_topic: String,
    pub username: Option<String>,
    pub password: SecretSource,
    pub tls_files: TlsFiles,
    pub max_message_bytes: usize,
    pub keep_alive: Duration,
    pub timeout: Duration,
}

/// Extra trust and a client identity for a TLS connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Extra roots (PEM), besides the system's and the bundled ones.
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain and its key (PEM), always together.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpFormat {
    Json,
    Ndjson,
}

/// Where a secret (a bearer token, a password) comes from. The secret
/// itself is read when the sink starts and never printed: `Debug` shows
/// only the source.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    None,
    Inline(String),
    Environment(String),
    File(PathBuf),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::None => formatter.write_str("None"),
            SecretSource::Inline(_) => formatter.write_str("Inline(<redacted>)"),
            SecretSource::Environment(name) => write!(formatter, "Environment({name:?})"),
            SecretSource::File(path) => write!(formatter, "File({path:?})"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FileSinkSettings {
    pub dir: PathBuf,
    pub format: FileFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    Csv,
    Ndjson,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    /// A tracing filter: `info`, or `epm_agent=debug,warn`.
    pub level: String,
    pub json: bool,
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {}: {source}{}", path.display(), read_hint(source))]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: key `{key}`: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

fn read_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::NotFound => {
            " (pass --config FILE, set EPM_AGENT_CONFIG, or copy config/epm-agent.toml there)"
        }
        std::io::ErrorKind::PermissionDenied => " (is the service user allowed to read it?)",
        _ => "",
    }
}

/// The configuration file to use: `--config`, else `EPM_AGENT_CONFIG`, else
/// the platform default.
pub fn config_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    if let Some(path) = std::env::var_os("EPM_AGENT_CONFIG").filter(|value| !value.is_empty()) {
        return PathBuf::from(path);
    }
    default_config_path()
}

#[cfg(windows)]
fn default_config_path() -> PathBuf {
    program_data().join("epm-agent").join("epm-agent.toml")
}

#[cfg(not(windows))]
fn default_config_path() -> PathBuf {
    PathBuf::from("/etc/epm-agent/epm-agent.toml")
}

#[cfg(windows)]
fn default_data_dir() -> PathBuf {
    program_data().join("epm-agent").join("data")
}

#[cfg(not(windows))]
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/epm-agent")
}

#[cfg(windows)]
fn program_data() -> PathBuf {
    std::env::var_os("ProgramData")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // Relative paths in the file are relative to its folder: anchor that
    // folder to the current directory once, so they print unambiguously.
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    parse(&text, &path)
}

/// What is valid but unwise about the file at `path` (shown by `config
/// check`, logged by `run`): an inline token in a file other users can read.
pub fn warnings(settings: &Settings, path: &Path) -> Vec<String> {
    #[cfg_attr(not(unix), allow(unused_mut))] // only Unix has file modes to warn about
    let mut warnings = Vec::new();
    let sink_secrets = settings.sinks.iter().map(|sink| match &sink.kind {
        SinkKind::Http(http) => &http.token,
        SinkKind::Postgres(postgres) => &postgres.password,
        SinkKind::Mqtt(mqtt) => &mqtt.password,
        SinkKind::File(_) => &SecretSource::None,
    });
    let page_secret = settings.http.as_ref().map(|http| &http.token);
    let inline_tokens: Vec<&str> = sink_secrets
        .chain(page_secret)
        .filter_map(|secret| match secret {
            SecretSource::Inline(token) => Some(token.as_str()),
            _ => None,
        })
        .collect();
    #[cfg(unix)]
    if !inline_tokens.is_empty() {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(metadata) = std::fs::metadata(path) {
            // A token that came from `${NAME}` is not in the file.
            let file_holds_token = || {
                std::fs::read_to_string(path)
                    .is_ok_and(|text| inline_tokens.iter().any(|token| text.contains(token)))
            };
            if metadata.permissions().mode() & 0o004 != 0 && file_holds_token() {
                warnings.push(format!(
                    "{} holds a token and every user can read it: chmod 640 it (owner root, group of the service user), \
                     or move the token to token_file",
                    path.display()
                ));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (inline_tokens, path);
    warnings
}

/// Validates `text` as if read from `path` (used for error messages and to
/// resolve a relative `data_dir`).
pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
    parse_with_environment(text, path, &|name| std::env::var(name).ok())
}

/// [`parse`] with `${NAME}` looked up by `environment`.
fn parse_with_environment(
    text: &str,
    path: &Path,
    environment: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let locate = |span: Option<Range<usize>>, message: String| {
        let (line, column, key) = locate_span(text, span.unwrap_or(0..0));
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            column,
            key,
            message,
        }
    };
    let toml_error = |error: toml::de::Error| locate(error.span(), error.message().to_string());
    let mut document = toml::de::DeTable::parse(text).map_err(toml_error)?;
    resolve_variables(document.get_mut(), environment)
        .map_err(|invalid| locate(Some(invalid.span), invalid.message))?;
    let raw = RawConfig::deserialize(toml::de::Deserializer::from(document)).map_err(toml_error)?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    validate(raw, base_dir).map_err(|invalid| locate(Some(invalid.span), invalid.message))
}

/// Replaces `${NAME}` and `${NAME:-default}` in every string value of the
/// document (keys stay as written) by what `lookup` says, before the
/// document is read into settings: so every key, a token too, may come from
/// the environment, and every check after this sees the resolved value.
fn resolve_variables(
    table: &mut toml::de::DeTable<'_>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), Invalid> {
    for (_, value) in table.iter_mut() {
        resolve_value(value, lookup)?;
    }
    Ok(())
}

fn resolve_value(
    value: &mut Spanned<toml::de::DeValue<'_>>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), Invalid> {
    let span = value.span();
    match value.get_mut() {
        toml::de::DeValue::String(text) => {
            if let Some(resolved) =
                substitute(text, lookup).or_else(|message| invalid(span, message))?
            {
                *text = resolved.into();
            }
        }
        toml::de::DeValue::Array(items) => {
            for item in items.iter_mut() {
                resolve_value(item, lookup)?;
            }
        }
        toml::de::DeValue::Table(table) => resolve_variables(table, lookup)?,
        _ => {}
    }
    Ok(())
}

/// `text` with its variables replaced, or `None` when it holds none.
/// `${NAME:-default}` takes the default when NAME is unset or empty, as a
/// shell does (`${NAME}` of an empty NAME is empty); `$${` stands for a literal `${`; a `$` anywhere else is
/// itself. The default is literal text up to the first `}`.
fn substitute(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    if !text.contains("${") {
        return Ok(None);
    }
    let mut resolved = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        resolved.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(escaped) = after.strip_prefix("$${") {
            resolved.push_str("${");
            rest = escaped;
            continue;
        }
        let Some(reference) = after.strip_prefix("${") else {
            resolved.push('$');
            rest = &after[1..];
            continue;
        };
        let Some((inside, after_reference)) = reference.split_once('}') else {
            return Err(format!(
                "`${{` without a closing `}}` in \"{text}\" (write $${{ for a literal ${{)"
            ));
        };
        let (name, default) = match inside.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inside, None),
        };
        let mut chars = name.chars();
        let is_name = chars
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
            && chars.all(|rest| rest.is_ascii_alphanumeric() || rest == '_');
        if !is_name {
            return Err(format!(
                "\"${{{inside}}}\" is not a variable (expected ${{NAME}} or ${{NAME:-default}}, NAME of letters, digits and _)"
            ));
        }
        match (lookup(name), default) {
            (Some(value), None) => resolved.push_str(&value),
            (Some(value), Some(_)) if !value.is_empty() => resolved.push_str(&value),
            (_, Some(default)) => resolved.push_str(default),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set: set it, or give a default (${{{name}:-value}})"
                ))
            }
        }
        rest = after_reference;
    }
    resolved.push_str(rest);
    Ok(Some(resolved))
}

/// A semantic error found after parsing, at a span of the text.
struct Invalid {
    span: Range<usize>,
    message: String,
}

fn invalid<T>(span: Range<usize>, message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid {
        span,
        message: message.into(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agent: RawAgent,
    #[serde(default)]
    device: Vec<Spanned<RawDevice>>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    sink: Vec<Spanned<RawSink>>,
    http: Option<Spanned<RawHttp>>,
    #[serde(default)]
    log: RawLog,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: Spanned<String>,
    location: Option<String>,
    data_dir: Option<Spanned<String>>,
    status_interval_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    name: Spanned<String>,
    model: Spanned<String>,
    port: Option<Spanned<String>>,
    baud: Option<Spanned<u32>>,
    question: Option<String>,
    keymap: Option<Spanned<BTreeMap<String, String>>>,
    min_interval_s: Option<Spanned<f64>>,
    ack: Option<bool>,
    usb_vid: Option<Spanned<toml::Value>>,
    usb_pid: Option<Spanned<toml::Value>>,
    hardware_id: Option<Spanned<String>>,
    sim_remotes: Option<Spanned<u32>>,
    sim_presses_per_min: Option<Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    retention_days: Option<Spanned<u32>>,
    max_size_mb: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    name: Spanned<String>,
    kind: Spanned<String>,
    url: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    batch_size: Option<Spanned<u32>>,
    flush_interval_ms: Option<Spanned<u64>>,
    max_backoff_s: Option<Spanned<u64>>,
    timeout_s: Option<Spanned<u64>>,
    gzip: Option<Spanned<bool>>,
    proxy: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    allow_insecure_http: Option<Spanned<bool>>,
    paused_retry_s: Option<Spanned<u64>>,
    password: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    table: Option<Spanned<String>>,
    client_cert_file: Option<Spanned<String>>,
    client_key_file: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    topic: Option<Spanned<String>>,
    state_topic: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    max_message_bytes: Option<Spanned<u64>>,
    keep_alive_s: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
}

fn validate(raw: RawConfig, base_dir: &Path) -> Result<Settings, Invalid> {
    let agent = validate_agent(raw.agent, base_dir)?;
    let mut names = HashSet::new();
    let mut devices = Vec::with_capacity(raw.device.len());
    for device in raw.device {
        let name_span = device.get_ref().name.span();
        let settings = validate_device(device.into_inner())?;
        if !names.insert(settings.name.clone()) {
            return invalid(
                name_span,
                format!("device name \"{}\" is used twice", settings.name),
            );
        }
        devices.push(settings);
    }
    let store = validate_store(raw.store)?;
    let mut sinks: Vec<SinkSettings> = Vec::with_capacity(raw.sink.len());
    for sink in raw.sink {
        let span = sink.span();
        let settings = validate_sink(sink.into_inner(), &agent.id, base_dir)?;
        if sinks.iter().any(|other| other.name == settings.name) {
            return invalid(
                span,
                format!("sink name \"{}\" is used twice", settings.name),
            );
        }
        sinks.push(settings);
    }
    let http = raw
        .http
        .map(|http| validate_http(http, base_dir))
        .transpose()?;
    let log = validate_log(raw.log)?;
    Ok(Settings {
        agent,
        devices,
        store,
        sinks,
        http,
        log,
    })
}

/// The page's default address: this machine only.
const DEFAULT_LISTEN: &str = "127.0.0.1:8587";

fn validate_http(raw: Spanned<RawHttp>, base_dir: &Path) -> Result<PageSettings, Invalid> {
    let section = raw.span();
    let raw = raw.into_inner();
    let (listen, listen_span) = match raw.listen {
        Some(listen) => (listen.get_ref().clone(), listen.span()),
        None => (DEFAULT_LISTEN.to_string(), section),
    };
    let Ok(address) = listen.parse::<std::net::SocketAddr>() else {
        return invalid(
            listen_span,
            format!("\"{listen}\" is not an address and port (e.g. \"127.0.0.1:8587\" or \"[::1]:8587\")"),
        );
    };
    let token = secret_source("token", raw.token, raw.token_env, raw.token_file, base_dir)?;
    if !address.ip().is_loopback() && token == SecretSource::None {
        return invalid(
            listen_span,
            format!(
                "listen = \"{listen}\" is reachable from other machines and no token is set: \
                 set token_file (or token_env, token) so every request needs it, or listen on 127.0.0.1"
            ),
        );
    }
    Ok(PageSettings {
        listen: address,
        token,
    })
}

fn validate_agent(raw: RawAgent, base_dir: &Path) -> Result<AgentSettings, Invalid> {
    let id = non_empty(raw.id)?;
    let data_dir = match raw.data_dir {
        Some(dir) => {
            let dir = non_empty(dir)?;
            base_dir.join(dir)
        }
        None => default_data_dir(),
    };
    Ok(AgentSettings {
        id,
        location: raw.location,
        data_dir,
        status_interval: match raw.status_interval_s.unwrap_or(300) {
            0 => None,
            seconds => Some(Duration::from_secs(seconds)),
        },
    })
}

fn validate_device(raw: RawDevice) -> Result<DeviceSettings, Invalid> {
    let name_span = raw.name.span();
    let name = non_empty(raw.name)?;
    let Some(model) = Model::named(raw.model.get_ref()) else {
        let names: Vec<&str> = MODELS.iter().map(|spec| spec.name).collect();
        let expected = match names.split_last() {
            Some((last, others)) if !others.is_empty() => {
                format!("{} or {last}", others.join(", "))
            }
            _ => names.concat(),
        };
        return invalid(
            raw.model.span(),
            format!(
                "unknown model \"{}\" (expected {expected})",
                raw.model.get_ref()
            ),
        );
    };
    let in_process = !model.has_port();
    let auto = AutoMatch {
        usb_vid: raw.usb_vid.map(usb_id).transpose()?,
        usb_pid: raw.usb_pid.map(usb_id).transpose()?,
        hardware_id: match raw.hardware_id {
            Some(id) => Some(id.get_ref().parse::<UnitId>().or_else(|_| {
                invalid(
                    id.span(),
                    format!("\"{}\" is not 1 to 8 hex digits", id.get_ref()),
                )
            })?),
            None => None,
        },
    };
    let port = match raw.port {
        None if in_process => PortSetting::None,
        None => {
            return invalid(
                name_span.clone(),
                format!("device \"{name}\" has no `port` (a path, a COM name, or \"auto\")"),
            )
        }
        Some(port) if in_process => {
            return invalid(port.span(), "a simulator has no port: remove the key")
        }
        Some(port) if port.get_ref() == "auto" => PortSetting::Auto(auto.clone()),
        Some(port) => PortSetting::Path(non_empty(port)?),
    };
    if auto != AutoMatch::default() && !matches!(port, PortSetting::Auto(_)) {
        return invalid(
            name_span.clone(),
            format!(
                "device \"{name}\": usb_vid, usb_pid and hardware_id apply only to port = \"auto\""
            ),
        );
    }
    let baud = match raw.baud {
        Some(baud) if !(300..=4_000_000).contains(baud.get_ref()) => {
            return invalid(
                baud.span(),
                format!("{} is not a usable baud rate", baud.get_ref()),
            )
        }
        Some(baud) => *baud.get_ref(),
        None => model.default_baud(),
    };
    let mut keymap = BTreeMap::new();
    if let Some(raw_keymap) = raw.keymap {
        let span = raw_keymap.span();
        for (key, answer) in raw_keymap.into_inner() {
            let key_number = match key.parse::<u8>() {
                Ok(number @ 1..=16) => number,
                _ => {
                    return invalid(
                        span,
                        format!("keymap key \"{key}\" is not a key number from 1 to 16"),
                    )
                }
            };
            if answer.trim().is_empty() {
                return invalid(span, format!("keymap key {key} maps to an empty answer"));
            }
            keymap.insert(key_number, answer);
        }
    }
    let min_interval = match raw.min_interval_s {
        Some(seconds) => seconds_to_duration(seconds)?,
        None => Duration::ZERO,
    };
    let simulator_keys = [
        raw.sim_remotes.as_ref().map(Spanned::span),
        raw.sim_presses_per_min.as_ref().map(Spanned::span),
    ];
    if !in_process {
        if let Some(span) = simulator_keys.into_iter().flatten().next() {
            return invalid(span, "sim_* keys apply only to model = \"simulator\"");
        }
    }
    let remotes = match raw.sim_remotes {
        Some(count) if !(1..=1000).contains(count.get_ref()) => {
            return invalid(count.span(), "sim_remotes must be from 1 to 1000")
        }
        Some(count) => *count.get_ref(),
        None => 3,
    };
    let presses_per_min = match raw.sim_presses_per_min {
        Some(rate)
            if !(rate.get_ref().is_finite()
                && *rate.get_ref() > 0.0
                && *rate.get_ref() <= 6_000_000.0) =>
        {
            return invalid(
                rate.span(),
                "sim_presses_per_min must be above 0 and at most 6000000",
            )
        }
        Some(rate) => *rate.get_ref(),
        None => 20.0,
    };
    Ok(DeviceSettings {
        name,
        model,
        port,
        baud,
        question: raw.question.filter(|question| !question.is_empty()),
        keymap,
        min_interval,
        ack: raw.ack.unwrap_or(true),
        simulator: SimulatorSettings {
            remotes,
            presses_per_min,
        },
    })
}

/// A USB id as an integer (`0x2341`) or a hex string (`"2341"`).
fn usb_id(value: Spanned<toml::Value>) -> Result<u16, Invalid> {
    let span = value.span();
    let parsed = match value.into_inner() {
        toml::Value::Integer(number) => u16::try_from(number).ok(),
        toml::Value::String(text) => {
            let digits = text.trim_start_matches("0x").trim_start_matches("0X");
            u16::from_str_radix(digits, 16).ok()
        }
        _ => None,
    };
    parsed.map_or_else(
        || {
            invalid(
                span,
                "a USB id is 4 hex digits, as a string (\"2341\") or an integer (0x2341)",
            )
        },
        Ok,
    )
}

fn validate_store(raw: RawStore) -> Result<StoreSettings, Invalid> {
    let retention_days = match raw.retention_days {
        Some(days) if *days.get_ref() == 0 => {
            return invalid(days.span(), "retention_days must be at least 1")
        }
        Some(days) => *days.get_ref(),
        None => 90,
    };
    let max_size_mb = match raw.max_size_mb {
        Some(size) if *size.get_ref() < 16 => {
            return invalid(size.span(), "max_size_mb must be at least 16")
        }
        Some(size) => *size.get_ref(),
        None => 1024,
    };
    Ok(StoreSettings {
        retention: Duration::from_secs(u64::from(retention_days) * 86_400),
        max_size_bytes: max_size_mb.saturating_mul(1024 * 1024),
    })
}

/// The keys of a `[[sink]]` beyond name and kind, with the kinds each
/// applies to: a key given for another kind is an error, not ignored.
const SINK_KEYS: &[(&str, &[&str])] = &[
    ("url", &["http", "postgres", "mqtt"]),
    ("path", &["file"]),
    ("format", &["http", "file"]),
    ("token", &["http"]),
    ("token_env", &["http"]),
    ("token_file", &["http"]),
    ("timeout_s", &["http", "postgres", "mqtt"]),
    ("gzip", &["http"]),
    ("proxy", &["http"]),
    ("allow_insecure_http", &["http"]),
    ("ca_file", &["http", "postgres", "mqtt"]),
    ("password", &["postgres", "mqtt"]),
    ("password_env", &["postgres", "mqtt"]),
    ("password_file", &["postgres", "mqtt"]),
    ("client_cert_file", &["postgres", "mqtt"]),
    ("client_key_file", &["postgres", "mqtt"]),
    ("table", &["postgres"]),
    ("client_id", &["mqtt"]),
    ("topic", &["mqtt"]),
    ("state_topic", &["mqtt"]),
    ("username", &["mqtt"]),
    ("max_message_bytes", &["mqtt"]),
    ("keep_alive_s", &["mqtt"]),
];

const SINK_KINDS: &[&str] = &["http", "file", "postgres", "mqtt"];

fn spot<T>(value: &Option<Spanned<T>>) -> Option<Range<usize>> {
    value.as_ref().map(Spanned::span)
}

impl RawSink {
    /// Where each key of [`SINK_KEYS`] was given, in that order.
    fn given_keys(&self) -> [Option<Range<usize>>; 23] {
        [
            spot(&self.url),
            spot(&self.path),
            spot(&self.format),
            spot(&self.token),
            spot(&self.token_env),
            spot(&self.token_file),
            spot(&self.timeout_s),
            spot(&self.gzip),
            spot(&self.proxy),
            spot(&self.allow_insecure_http),
            spot(&self.ca_file),
            spot(&self.password),
            spot(&self.password_env),
            spot(&self.password_file),
            spot(&self.client_cert_file),
            spot(&self.client_key_file),
            spot(&self.table),
            spot(&self.client_id),
            spot(&self.topic),
            spot(&self.state_topic),
            spot(&self.username),
            spot(&self.max_message_bytes),
            spot(&self.keep_alive_s),
        ]
    }
}

fn validate_sink(raw: RawSink, agent_id: &str, base_dir: &Path) -> Result<SinkSettings, Invalid> {
    let name = non_empty(raw.name.clone())?;
    let kind_span = raw.kind.span();
    let Some(&kind) = SINK_KINDS.iter().find(|kind| **kind == raw.kind.get_ref()) else {
        return invalid(
            kind_span,
            format!(
                "unknown sink kind \"{}\" (expected http, file, postgres or mqtt)",
                raw.kind.get_ref()
            ),
        );
    };
    for ((key, kinds), span) in SINK_KEYS.iter().zip(raw.given_keys()) {
        if let (Some(span), false) = (span, kinds.contains(&kind)) {
            let article = if kind == "http" { "an" } else { "a" };
            let applies_to = match kinds.split_last() {
                Some((last, [])) => last.to_string(),
                Some((last, others)) => format!("{} and {last}", others.join(", ")),
                None => String::new(),
            };
            return invalid(
                span,
                format!("`{key}` applies to {applies_to} sinks, not to {article} {kind} sink"),
            );
        }
    }
    let batch_size = match raw.batch_size {
        Some(size) if !(1..=10_000).contains(size.get_ref()) => {
            return invalid(size.span(), "batch_size must be from 1 to 10000")
        }
        Some(size) => *size.get_ref() as usize,
        None => 500,
    };
    let flush_interval = Duration::from_millis(positive(raw.flush_interval_ms, 1000)?);
    let max_backoff = Duration::from_secs(positive(raw.max_backoff_s, 30)?);
    let paused_retry = Duration::from_secs(positive(raw.paused_retry_s, 300)?);
    let timeout = Duration::from_secs(positive(raw.timeout_s, 30)?);
    let required = |value: Option<Spanned<String>>, what: &str| match value {
        Some(value) => non_empty(value),
        None => invalid(
            kind_span.clone(),
            format!("{kind} sink \"{name}\" has no `{what}`"),
        ),
    };
    let path_in = |value: Option<Spanned<String>>| -> Result<Option<PathBuf>, Invalid> {
        Ok(value
            .map(non_empty)
            .transpose()?
            .map(|file| base_dir.join(file)))
    };
    let kind = match kind {
        "http" => {
            let url_span = spot(&raw.url).unwrap_or(kind_span.clone());
            let url = required(raw.url, "url")?;
            let allow_insecure = raw.allow_insecure_http.is_some_and(|flag| *flag.get_ref());
            check_url(&url, allow_insecure).or_else(|message| invalid(url_span, message))?;
            let format = choice(
                raw.format,
                "http format",
                &[("json", HttpFormat::Json), ("ndjson", HttpFormat::Ndjson)],
            )?;
            SinkKind::Http(HttpSinkSettings {
                url,
                format,
                token: secret_source("token", raw.token, raw.token_env, raw.token_file, base_dir)?,
                gzip: raw.gzip.is_some_and(|flag| *flag.get_ref()),
                timeout,
                proxy: raw.proxy.map(non_empty).transpose()?,
                ca_file: path_in(raw.ca_file)?,
            })
        }
        "file" => {
            let dir = required(raw.path, "path` (a folder")?;
            let format = choice(
                raw.format,
                "file format",
                &[("csv", FileFormat::Csv), ("ndjson", FileFormat::Ndjson)],
            )?;
            SinkKind::File(FileSinkSettings {
                dir: base_dir.join(dir),
                format,
            })
        }
        "postgres" => {
            let url_span = spot(&raw.url).unwrap_or(kind_span.clone());
            let url = required(raw.url, "url")?;
            let local = check_postgres_url(&url).or_else(|message| invalid(url_span, message))?;
            let table = match raw.table {
                Some(table) if !is_table_name(table.get_ref()) => {
                    return invalid(
                        table.span(),
                        format!(
                            "\"{}\" is not a table name (letters, digits and _, optionally schema.table)",
                            table.get_ref()
                        ),
                    )
                }
                Some(table) => table.into_inner(),
                None => "epm_events".to_string(),
            };
            SinkKind::Postgres(PostgresSinkSettings {
                url,
                local,
                password: secret_source(
                    "password",
                    raw.password,
                    raw.password_env,
                    raw.password_file,
                    base_dir,
                )?,
                table,
                tls: tls_files(
                    raw.ca_file,
                    raw.client_cert_file,
                    raw.client_key_file,
                    base_dir,
                )?,
                timeout,
            })
        }
        _ => {
            let url_span = spot(&raw.url).unwrap_or(kind_span.clone());
            let url = required(raw.url, "url")?;
            let (tls, host, port) =
                parse_mqtt_url(&url).or_else(|message| invalid(url_span, message))?;
            let topic_of = |value: Option<Spanned<String>>,
                            default: &str|
             -> Result<String, Invalid> {
                let (span, pattern) = match value {
                    Some(value) => (value.span(), non_empty(value)?),
                    None => (kind_span.clone(), default.to_string()),
                };
                let topic = pattern.replace("{agent}", agent_id);
                if topic.contains(['+', '#', '\0']) {
                    return invalid(
                        span,
                        format!("the topic \"{topic}\" holds + or #: a sink publishes to one topic, wildcards are for subscribers"),
                    );
                }
                Ok(topic)
            };
            let max_message_bytes = match raw.max_message_bytes {
                Some(bytes) if !(1024..=268_435_455).contains(bytes.get_ref()) => {
                    return invalid(
                        bytes.span(),
                        "max_message_bytes must be from 1024 to 268435455 (MQTT's limit)",
                    )
                }
                Some(bytes) => *bytes.get_ref() as usize,
                None => 128 * 1024,
            };
            let keep_alive_s = match raw.keep_alive_s {
                Some(seconds) if !(5..=65_535).contains(seconds.get_ref()) => {
                    return invalid(seconds.span(), "keep_alive_s must be from 5 to 65535")
                }
                Some(seconds) => *seconds.get_ref(),
                None => 30,
            };
            SinkKind::Mqtt(MqttSinkSettings {
                host,
                port,
                tls,
                client_id: match raw.client_id {
                    Some(id) => non_empty(id)?,
                    None => agent_id.to_string(),
                },
                topic: topic_of(raw.topic, "epm/{agent}/events")?,
                state_topic: topic_of(raw.state_topic, "epm/{agent}/state")?,
                username: raw.username.map(non_empty).transpose()?,
                password: secret_source(
                    "password",
                    raw.password,
                    raw.password_env,
                    raw.password_file,
                    base_dir,
                )?,
                tls_files: tls_files(
                    raw.ca_file,
                    raw.client_cert_file,
                    raw.client_key_file,
                    base_dir,
                )?,
                max_message_bytes,
                keep_alive: Duration::from_secs(keep_alive_s),
                timeout,
            })
        }
    };
    Ok(SinkSettings {
        name,
        kind,
        batch_size,
        flush_interval,
        max_backoff,
        paused_retry,
    })
}

fn tls_files(
    ca_file: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    base_dir: &Path,
) -> Result<TlsFiles, Invalid> {
    let client_cert = match (cert_file, key_file) {
        (Some(cert), Some(key)) => Some((
            base_dir.join(non_empty(cert)?),
            base_dir.join(non_empty(key)?),
        )),
        (None, None) => None,
        (Some(one), None) | (None, Some(one)) => {
            return invalid(
                one.span(),
                "client_cert_file and client_key_file go together: give both or neither",
            );
        }
    };
    Ok(TlsFiles {
        ca_file: ca_file
            .map(non_empty)
            .transpose()?
            .map(|file| base_dir.join(file)),
        client_cert,
    })
}

/// A PostgreSQL connection string without a password; says whether every
/// host is local (loopback or a Unix socket), the only case where a plain
/// connection is allowed.
fn check_postgres_url(url: &str) -> Result<bool, String> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|error| format!("not a PostgreSQL connection string: {error} (expected postgres://user@host:5432/database)"))?;
    if config.get_password().is_some() {
        return Err(
            "a password in the url is refused (it would show in logs and `ps`): use password_env or password_file"
                .into(),
        );
    }
    if config.get_user().is_none() {
        return Err("the url names no user (postgres://user@host:5432/database)".into());
    }
    if config.get_hosts().is_empty() {
        return Err("the url names no host (postgres://user@host:5432/database)".into());
    }
    let local = config.get_hosts().iter().all(|host| match host {
        tokio_postgres::config::Host::Tcp(name) => is_loopback_host(name),
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => true,
    });
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Disable && !local {
        return Err(
            "sslmode=disable is allowed only to a loopback address or a Unix socket: presses would cross the network unencrypted"
                .into(),
        );
    }
    Ok(local)
}

/// `epm_events` or `schema.epm_events`: plain identifiers only, so the
/// name can be written into SQL unquoted.
fn is_table_name(name: &str) -> bool {
    let identifier = |part: &str| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
            && chars.all(|rest| rest.is_ascii_alphanumeric() || rest == '_')
            && part.len() <= 63
    };
    let mut parts = name.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(table), None, None) => identifier(table),
        (Some(schema), Some(table), None) => identifier(schema) && identifier(table),
        _ => false,
    }
}

/// `mqtts://host[:port]` or, to a loopback host only, `mqtt://host[:port]`:
/// (TLS, host, port).
fn parse_mqtt_url(url: &str) -> Result<(bool, String, u16), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("\"{url}\" is not a URL (expected mqtts://host:8883)"))?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "mqtts" | "ssl" => true,
        "mqtt" | "tcp" => false,
        other => {
            return Err(format!(
                "unsupported scheme \"{other}\" (expected mqtts or mqtt)"
            ))
        }
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains(['/', '?', '#']) {
        return Err("an MQTT url has no path: the topic goes into `topic`".into());
    }
    if authority.contains('@') {
        return Err("put the user name into `username` and the password into password_env or password_file, not into the url".into());
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("\"{url}\" has an unclosed [ in its host"))?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(format!("\"{url}\" has no host"));
    }
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| format!("\"{port}\" is not a port number"))?,
        None if tls => 8883,
        None => 1883,
    };
    if !tls && !is_loopback_host(host) {
        return Err(format!(
            "plain mqtt to \"{host}\" would send presses and the password unencrypted: use mqtts://"
        ));
    }
    Ok((tls, host.to_string(), port))
}

impl From<HttpSinkSettings> for SinkKind {
    fn from(settings: HttpSinkSettings) -> Self {
        SinkKind::Http(settings)
    }
}

/// `http://` only to a loopback host unless explicitly allowed: a token or
/// customer data must not cross a network in clear text by accident.
fn check_url(url: &str, allow_insecure_http: bool) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("\"{url}\" is not a URL (expected https://host/path)"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = if let Some(bracketed) = host.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    if host.is_empty() {
        return Err(format!("\"{url}\" has no host"));
    }
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(()),
        "http" if allow_insecure_http || is_loopback_host(host) => Ok(()),
        "http" => Err(format!(
            "plain http to \"{host}\" would send presses and the token unencrypted: use https, \
             or set allow_insecure_http = true for this sink"
        )),
        other => Err(format!(
            "unsupported scheme \"{other}\" (expected https or http)"
        )),
    }
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// A secret from one of `<word>`, `<word>_env` and `<word>_file`.
fn secret_source(
    word: &str,
    inline: Option<Spanned<String>>,
    environment: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    base_dir: &Path,
) -> Result<SecretSource, Invalid> {
    let given = [&inline, &environment, &file]
        .into_iter()
        .flatten()
        .map(Spanned::span)
        .collect::<Vec<_>>();
    if given.len() > 1 {
        return invalid(
            given[1].clone(),
            format!("give only one of {word}, {word}_env and {word}_file"),
        );
    }
    Ok(match (inline, environment, file) {
        (Some(token), _, _) => SecretSource::Inline(non_empty(token)?),
        (_, Some(name), _) => SecretSource::Environment(non_empty(name)?),
        (_, _, Some(path)) => SecretSource::File(base_dir.join(non_empty(path)?)),
        _ => SecretSource::None,
    })
}

fn validate_log(raw: RawLog) -> Result<LogSettings, Invalid> {
    let level = match raw.level {
        Some(level) => {
            let span = level.span();
            let level = non_empty(level)?;
            // Every directive needs a level: `info`, or `target=level`.
            // (EnvFilter alone would take `loud` as a target name.)
            let levels = ["off", "error", "warn", "info", "debug", "trace"];
            let all_have_levels = level.split(',').all(|directive| {
                let level_word = directive.rsplit('=').next().unwrap_or("").trim();
                levels.contains(&level_word.to_ascii_lowercase().as_str())
            });
            let parsed = tracing_subscriber::EnvFilter::builder().parse(&level);
            if !all_have_levels || parsed.is_err() {
                return invalid(
                    span,
                    format!("\"{level}\" is not a log level or filter (error, warn, info, debug, trace, or target=level)"),
                );
            }
            level
        }
        None => "info".to_string(),
    };
    let json = choice(raw.format, "log format", &[("text", false), ("json", true)])?;
    Ok(LogSettings { level, json })
}

/// One of a fixed set of words; the first option is the default.
fn choice<T: Copy>(
    value: Option<Spanned<String>>,
    what: &str,
    options: &[(&str, T)],
) -> Result<T, Invalid> {
    let Some(value) = value else {
        return Ok(options[0].1);
    };
    match options.iter().find(|(word, _)| word == value.get_ref()) {
        Some((_, choice)) => Ok(*choice),
        None => {
            let words: Vec<&str> = options.iter().map(|(word, _)| *word).collect();
            invalid(
                value.span(),
                format!(
                    "unknown {what} \"{}\" (expected {})",
                    value.get_ref(),
                    words.join(" or ")
                ),
            )
        }
    }
}

fn non_empty(value: Spanned<String>) -> Result<String, Invalid> {
    if value.get_ref().trim().is_empty() {
        return invalid(value.span(), "must not be empty");
    }
    Ok(value.into_inner())
}

fn positive(value: Option<Spanned<u64>>, default: u64) -> Result<u64, Invalid> {
    match value {
        Some(number) if *number.get_ref() == 0 => invalid(number.span(), "must be above 0"),
        Some(number) => Ok(*number.get_ref()),
        None => Ok(default),
    }
}

fn seconds_to_duration(seconds: Spanned<f64>) -> Result<Duration, Invalid> {
    let value = *seconds.get_ref();
    if !(value.is_finite() && (0.0..=86_400.0).contains(&value)) {
        return invalid(
            seconds.span(),
            "must be a number of seconds from 0 to 86400",
        );
    }
    Ok(Duration::from_secs_f64(value))
}

/// Line (1-based), column (1-based) and the dotted key at `span`: the key
/// on that line (text before `=`) under the nearest table header above it,
/// with the index of an array of tables (`device[2].baud`).
fn locate_span(text: &str, span: Range<usize>) -> (usize, usize, String) {
    let start = span.start.min(text.len());
    let before = &text[..floor_char_boundary(text, start)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |index| index + 1);
    let column = before[line_start..].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or("");

    let mut table = String::new();
    let mut array_counts: BTreeMap<String, usize> = BTreeMap::new();
    for header_line in text[..line_start].lines().chain(std::iter::once(line_text)) {
        let trimmed = header_line.trim();
        if let Some(name) = trimmed
            .strip_prefix("[[")
            .and_then(|rest| rest.split("]]").next())
        {
            let name = name.trim().to_string();
            let count = array_counts.entry(name.clone()).or_insert(0);
            *count += 1;
            table = format!("{name}[{count}]");
        } else if let Some(name) = trimmed
            .strip_prefix('[')
            .and_then(|rest| rest.split(']').next())
        {
            table = name.trim().to_string();
        }
    }
    let trimmed = line_text.trim_start();
    let in_table = |key: &str| {
        if table.is_empty() {
            key.to_string()
        } else {
            format!("{table}.{key}")
        }
    };
    let key = if trimmed.starts_with('[') {
        table.clone()
    } else if let Some((key, _)) = line_text.split_once('=') {
        in_table(key.trim().trim_matches('"'))
    } else if let Some(word) = trimmed.split_whitespace().next() {
        // A key with no `=` after it: name what was written.
        in_table(word.trim_matches('"'))
    } else {
        table.clone()
    };
    let key = if key.is_empty() {
        "(top level)".to_string()
    } else {
        key
    };
    (line, column, key)
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` with the variables SHOP=017 and EMPTY="" (nothing else is set).
    fn check(text: &str, expected: Result<Option<&str>, &str>) {
        let lookup = |name: &str| match name {
            "SHOP" => Some("017".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let found = substitute(text, &lookup);
        match (&found, expected) {
            (Ok(found), Ok(expected)) => assert_eq!(found.as_deref(), expected, "{text:?}"),
            (Err(message), Err(part)) => {
                assert!(
                    message.contains(part),
                    "{text:?}: {message:?} lacks {part:?}"
                )
            }
            _ => panic!("{text:?}: {found:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn variables_are_replaced_as_a_shell_would() {
        check("shop-017", Ok(None));
        check("cost $5", Ok(None));
        check("${SHOP}", Ok(Some("017")));
        check("shop-${SHOP}-a", Ok(Some("shop-017-a")));
        check("${SHOP}${SHOP}", Ok(Some("017017")));
        check("${SHOP:-x}", Ok(Some("017")));
        check("${UNSET:-fallback}", Ok(Some("fallback")));
        check("${UNSET:-}", Ok(Some("")));
        check("${UNSET:-a b:c}", Ok(Some("a b:c")));
        check("${EMPTY}", Ok(Some("")));
        check("${EMPTY:-used}", Ok(Some("used")));
        check("$${SHOP}", Ok(Some("${SHOP}")));
        check("$$${SHOP}", Ok(Some("$${SHOP}"))); // a lone $, then the escape
        check("a $ then ${SHOP}", Ok(Some("a $ then 017")));
        check("${UNSET}", Err("environment variable UNSET is not set"));
        check("x ${UNSET} y", Err("${UNSET:-value}"));
        check("${SHOP", Err("without a closing `}`"));
        check("${}", Err("is not a variable"));
        check("${1X}", Err("is not a variable"));
        check("${SHOP-x}", Err("is not a variable"));
    }

    #[test]
    fn variables_are_resolved_in_every_string_value_and_located_when_unset() {
        let text = "[agent]\nid = \"shop-${SHOP}\"\ndata_dir = \"/tmp/epm\"\n\n[[device]]\nname = \"entrance\"\nmodel = \"prolan-501\"\nport = \"${PORT:-/dev/ttyACM0}\"\nkeymap = { 1 = \"${ANSWER_1:-yes}\", 3 = \"${SHOP}\" }\n";
        let environment = |name: &str| (name == "SHOP").then(|| "017".to_string());
        let settings =
            parse_with_environment(text, Path::new("/t.toml"), &environment).expect("valid");
        assert_eq!(settings.agent.id, "shop-017");
        assert_eq!(
            settings.devices[0].port,
            PortSetting::Path("/dev/ttyACM0".into())
        );
        assert_eq!(settings.devices[0].keymap[&1], "yes");
        assert_eq!(settings.devices[0].keymap[&3], "017");

        let unset = text.replace("shop-${SHOP}", "${NOT_SET_HERE}");
        match parse_with_environment(&unset, Path::new("/t.toml"), &environment) {
            Err(ConfigError::Invalid {
                line, key, message, ..
            }) => {
                assert_eq!((line, key.as_str()), (2, "agent.id"), "{message}");
                assert!(message.contains("NOT_SET_HERE"), "{message}");
            }
            other => panic!("expected a located error, got {other:?}"),
        }
    }
}

//! Serial ports: opening one by name, listing what the machine has, and
//! finding a ProLAN device when the configuration says `port = "auto"`.
//!
//! Discovery by identity sends QUERY / `Q` only to USB serial ports (never
//! to a built-in UART, where a POS PC keeps its receipt printer or fiscal
//! register), and only to ports nobody else has open (ports are opened
//! exclusively).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_serial::SerialPortBuilderExt;
use tokio_util::codec::Framed;

use crate::config::{AutoMatch, Model};
use crate::protocol::{AnyCodec, Decoded, Identity, Inbound, Outbound};

/// Anything a driver can talk to a device over: a serial port, a
/// pseudo-terminal, or the simulator's in-memory pipe.
pub trait Link: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Link for T {}

/// A link framed by the device's codec.
pub type FramedLink = Framed<Box<dyn Link>, AnyCodec>;

/// How long a device has to answer QUERY during discovery.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// A serial port as the operating system lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    pub path: String,
    pub usb: Option<UsbInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsbInfo {
    pub vid: u16,
    pub pid: u16,
    pub serial_number: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("cannot open {path}: {message}{hint}")]
    Open {
        path: String,
        message: String,
        hint: &'static str,
    },
    #[error("cannot list serial ports: {0}")]
    List(String),
    #[error("no serial port answered as {model}{criteria} (is it plugged in and powered? on Linux `ls -l /dev/serial/by-id/` lists USB serial ports)")]
    NotFound { model: Model, criteria: String },
}

/// Opens `path` (`/dev/ttyACM0`, `COM3`, `\\.\COM12`) at `baud`, 8N1, no
/// flow control, exclusively.
pub fn open_serial(path: &str, baud: u32) -> Result<tokio_serial::SerialStream, PortError> {
    tokio_serial::new(path, baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(tokio_serial::Parity::None)
        .stop_bits(tokio_serial::StopBits::One)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()
        .map_err(|error| PortError::Open {
            path: path.to_string(),
            hint: open_hint(&error, std::path::Path::new(path).exists()),
            message: error.description,
        })
}

fn open_hint(error: &tokio_serial::Error, path_exists: bool) -> &'static str {
    match error.kind {
        // serialport reports a port held by someone else as "no device".
        tokio_serial::ErrorKind::NoDevice if path_exists => {
            " (is another program using it, such as a running agent?)"
        }
        tokio_serial::ErrorKind::NoDevice
        | tokio_serial::ErrorKind::Io(std::io::ErrorKind::NotFound) => {
            " (is the device plugged in? on Linux `ls -l /dev/serial/by-id/` lists USB serial ports)"
        }
        tokio_serial::ErrorKind::Io(std::io::ErrorKind::PermissionDenied) => {
            if cfg!(windows) {
                " (is another program using the port?)"
            } else {
                " (is the service user in the dialout group?)"
            }
        }
        _ => "",
    }
}

/// The serial ports of this machine, USB ones with their ids.
pub fn list_ports() -> Result<Vec<PortInfo>, PortError> {
    let ports =
        tokio_serial::available_ports().map_err(|error| PortError::List(error.description))?;
    Ok(ports
        .into_iter()
        .map(|port| PortInfo {
            usb: match port.port_type {
                tokio_serial::SerialPortType::UsbPort(usb) => Some(UsbInfo {
                    vid: usb.vid,
                    pid: usb.pid,
                    serial_number: usb.serial_number,
                    manufacturer: usb.manufacturer,
                    product: usb.product,
                }),
                _ => None,
            },
            path: port.port_name,
        })
        .collect())
}

/// The ports `auto` may try for `criteria`: USB ports only, filtered by
/// the configured ids.
pub fn auto_candidates(ports: &[PortInfo], criteria: &AutoMatch) -> Vec<String> {
    ports
        .iter()
        .filter(|port| {
            port.usb.as_ref().is_some_and(|usb| {
                criteria.usb_vid.is_none_or(|vid| vid == usb.vid)
                    && criteria.usb_pid.is_none_or(|pid| pid == usb.pid)
            })
        })
        .map(|port| port.path.clone())
        .collect()
}

/// How long `auto` leaves alone a port whose answer was not this device
/// (another device, a receipt printer that says nothing): without USB ids
/// to narrow the candidates, a missing keypad must not mean a QUERY to every
/// other USB serial port every second. A port that disappears from the
/// listing and comes back (a replug) is asked again at once.
pub const REPROBE_AFTER: Duration = Duration::from_secs(30);

/// The ports `auto` asked and passed over, and when.
#[derive(Debug, Default)]
pub struct PassedOver {
    ports: std::collections::HashMap<String, std::time::Instant>,
}

impl PassedOver {
    /// The candidates worth asking at `now`; forgets ports that are no
    /// longer candidates (unplugged) and those passed over long enough ago.
    pub fn worth_asking(&mut self, candidates: &[String], now: std::time::Instant) -> Vec<String> {
        self.ports.retain(|path, at| {
            candidates.contains(path) && now.saturating_duration_since(*at) < REPROBE_AFTER
        });
        candidates
            .iter()
            .filter(|path| !self.ports.contains_key(*path))
            .cloned()
            .collect()
    }

    /// `path` answered, but not as this device (or not at all).
    pub fn pass_over(&mut self, path: &str, now: std::time::Instant) {
        self.ports.insert(path.to_string(), now);
    }
}

/// What discovery found: the open, framed port, its identity, and anything
/// the device said before its identity (a press must not be lost to a probe).
pub struct Found {
    pub path: String,
    pub link: FramedLink,
    pub identity: Identity,
    pub earlier: Vec<Decoded>,
}

/// Tries each candidate worth asking in turn: opens it, sends QUERY, and
/// keeps the first one whose identity is the configured model (and
/// `hardware_id`, if set). The others that could be opened are passed over
/// for [`REPROBE_AFTER`].
pub async fn discover(
    candidates: &[String],
    model: Model,
    baud: u32,
    criteria: &AutoMatch,
    passed_over: &mut PassedOver,
) -> Result<Found, PortError> {
    for path in passed_over.worth_asking(candidates, std::time::Instant::now()) {
        let path = &path;
        let Ok(stream) = open_serial(path, baud) else {
            continue; // in use by another device, or gone since listing
        };
        let mut link = Framed::new(Box::new(stream) as Box<dyn Link>, model.codec());
        match probe(&mut link, model, criteria).await {
            Some((identity, earlier)) => {
                return Ok(Found {
                    path: path.clone(),
                    link,
                    identity,
                    earlier,
                })
            }
            None => passed_over.pass_over(path, std::time::Instant::now()),
        }
    }
    let mut criteria_text = String::new();
    if let Some(vid) = criteria.usb_vid {
        criteria_text.push_str(&format!(" with usb_vid {vid:04x}"));
    }
    if let Some(pid) = criteria.usb_pid {
        criteria_text.push_str(&format!(" usb_pid {pid:04x}"));
    }
    if let Some(id) = criteria.hardware_id {
        criteria_text.push_str(&format!(" hardware_id {id}"));
    }
    Err(PortError::NotFound {
        model,
        criteria: criteria_text,
    })
}

/// Sends QUERY and waits for an identity matching `model` and `criteria`.
pub async fn probe(
    link: &mut FramedLink,
    model: Model,
    criteria: &AutoMatch,
) -> Option<(Identity, Vec<Decoded>)> {
    link.send(Outbound::Query).await.ok()?;
    let mut earlier = Vec::new();
    let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
    loop {
        let item = tokio::time::timeout_at(deadline, link.next())
            .await
            .ok()??
            .ok()?;
        match item {
            Decoded::Message(Inbound::Identity(identity)) => {
                let id_matches = criteria
                    .hardware_id
                    .is_none_or(|id| id == identity.hardware_id);
                return (model.is_identity(&identity) && id_matches).then_some((identity, earlier));
            }
            other => {
                // Bounded: a device that floods without ever answering is not ours.
                if earlier.len() >= 256 {
                    return None;
                }
                earlier.push(other);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_passed_over_is_asked_again_after_a_while_or_after_a_replug() {
        let start = std::time::Instant::now();
        let later = |seconds| start + Duration::from_secs(seconds);
        let ports = |names: &[&str]| {
            names
                .iter()
                .map(|name| name.to_string())
                .collect::<Vec<_>>()
        };
        let mut passed_over = PassedOver::default();
        let both = ports(&["/dev/ttyUSB0", "/dev/ttyUSB1"]);
        assert_eq!(passed_over.worth_asking(&both, start), both);
        passed_over.pass_over("/dev/ttyUSB0", start);
        assert_eq!(
            passed_over.worth_asking(&both, later(1)),
            ports(&["/dev/ttyUSB1"])
        );
        assert_eq!(
            passed_over.worth_asking(&both, later(29)),
            ports(&["/dev/ttyUSB1"])
        );
        assert_eq!(
            passed_over.worth_asking(&both, later(30)),
            both,
            "asked again"
        );
        passed_over.pass_over("/dev/ttyUSB0", later(30));
        // Unplugged, then plugged in again: asked at once.
        let one = ports(&["/dev/ttyUSB1"]);
        assert_eq!(passed_over.worth_asking(&one, later(31)), one);
        assert_eq!(passed_over.worth_asking(&both, later(32)), both);
    }
}

//! `epm-agent devices [--probe] [--probe-all] [--port PATH]... [--json]`:
//! the serial ports of this machine with their USB ids, serial numbers and
//! manufacturers, which of them the configuration already uses, and (with
//! `--probe`) which answer the identity query as a ProLAN-202 keypad or a
//! ProLAN-501 receiver, with a `[[device]]` block to paste for each.
//!
//! Asking a port is not harmless: a POS PC keeps receipt printers and fiscal
//! registers on its built-in UARTs, and bytes they do not expect may print
//! garbage or upset a fiscal device. So only USB serial ports are asked,
//! unless `--probe-all` says otherwise or `--port` names the ports to ask.
//! A port that cannot be opened (the running agent, or another program, has
//! it; ports are opened exclusively) is skipped and said to be.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio_util::codec::Framed;

use epm_agent::config::{AutoMatch, Model, PortSetting, Settings};
use epm_agent::port::{self, FramedLink, Link, PortError, PortInfo, UsbInfo};
use epm_agent::protocol::Identity;

use super::aligned_table;
use super::stdout_wants_colour;

/// The command's options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Ask the USB serial ports for their identity (ProLAN-202 at 9600 baud,
    /// ProLAN-501 at 115200) and print a [[device]] block for each that answers.
    #[arg(long)]
    pub probe: bool,
    /// Like --probe, and ask built-in (non-USB) ports too. Careful: on a POS
    /// PC those hold receipt printers and fiscal registers.
    #[arg(long)]
    pub probe_all: bool,
    /// Look at this port only, and ask it (repeatable): for a port the
    /// operating system does not list, or a built-in port known to hold a
    /// ProLAN device.
    #[arg(long = "port", value_name = "PATH")]
    pub ports: Vec<String>,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `settings` is `None` when there is no configuration file: listing ports
/// needs none.
pub fn run(settings: Option<&Settings>, args: &Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let listed = match port::list_ports() {
        Ok(listed) => listed,
        // The named ports can still be asked without the list.
        Err(error) if !args.ports.is_empty() => {
            eprintln!("epm-agent: warning: {error}; USB ids are not shown");
            Vec::new()
        }
        Err(error) => return Err(error.into()),
    };
    let by_id = by_id_links(Path::new(BY_ID_DIR));
    let devices = settings.map_or(&[][..], |settings| settings.devices.as_slice());
    let mut ports = gather_ports(&listed, &args.ports, &by_id);
    let policy = ProbePolicy::of(args);
    let asked: Vec<String> = ports
        .iter()
        .filter(|port| policy.decide(port).is_none())
        .map(|port| port.path.clone())
        .collect();
    let mut answers = if asked.is_empty() {
        Vec::new()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(probe_ports(&asked))
    };
    for port in &mut ports {
        port.probe = match policy.decide(port) {
            Some(skipped) => skipped,
            None => answers
                .iter()
                .position(|(path, _)| *path == port.path)
                .map(|index| answers.swap_remove(index).1)
                .unwrap_or(Probe::NoAnswer),
        };
        port.configured_as = configured_names(devices, port);
    }
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &json_report(&ports))?;
        writeln!(out)?;
        return Ok(());
    }
    write!(
        out,
        "{}",
        render_text(&ports, policy, settings.is_some(), stdout_wants_colour())
    )?;
    Ok(())
}

/// Where udev puts the stable names of USB serial ports.
const BY_ID_DIR: &str = "/dev/serial/by-id";

/// One port, as listed or named, and what became of asking it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Port {
    /// As the operating system lists it, or as given with `--port`.
    path: String,
    /// The `/dev/serial/by-id/...` link to it, when there is one.
    by_id: Option<String>,
    usb: Option<UsbInfo>,
    /// Named with `--port`: asked whatever it is.
    named: bool,
    /// Devices of the configuration that use this port.
    configured_as: Vec<String>,
    probe: Probe,
}

/// What asking a port gave.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Probe {
    /// `--probe` was not given.
    NotAsked,
    /// A built-in port, not asked without `--probe-all`.
    BuiltIn,
    /// It could not be opened: busy, gone, or not allowed.
    CannotOpen(String),
    NoAnswer,
    Found {
        model: Model,
        identity: Identity,
    },
}

/// Which ports may be asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProbePolicy {
    probe: bool,
    probe_all: bool,
}

impl ProbePolicy {
    fn of(args: &Args) -> ProbePolicy {
        ProbePolicy {
            probe: args.probe || args.probe_all || !args.ports.is_empty(),
            probe_all: args.probe_all,
        }
    }

    /// `None` when the port is to be asked; else why it is not.
    fn decide(self, port: &Port) -> Option<Probe> {
        if !self.probe {
            Some(Probe::NotAsked)
        } else if port.named || port.usb.is_some() || self.probe_all {
            None
        } else {
            Some(Probe::BuiltIn)
        }
    }
}

/// The listed ports, or only the named ones (with what the list knows of
/// them: a by-id name resolves to its `/dev/ttyACM0`).
fn gather_ports(
    listed: &[PortInfo],
    named: &[String],
    by_id: &BTreeMap<PathBuf, String>,
) -> Vec<Port> {
    let stable_name = |path: &str| {
        if Path::new(path).starts_with(BY_ID_DIR) {
            return Some(path.to_string());
        }
        by_id.get(&canonical(path)).cloned()
    };
    if named.is_empty() {
        return listed
            .iter()
            .map(|info| Port {
                path: info.path.clone(),
                by_id: stable_name(&info.path),
                usb: info.usb.clone(),
                named: false,
                configured_as: Vec::new(),
                probe: Probe::NotAsked,
            })
            .collect();
    }
    let mut seen = std::collections::BTreeSet::new();
    named
        .iter()
        // The same port twice would be asked twice at once, and be busy.
        .filter(|path| seen.insert(canonical(path)))
        .map(|path| {
            let target = canonical(path);
            Port {
                path: path.clone(),
                by_id: stable_name(path),
                usb: listed
                    .iter()
                    .find(|info| canonical(&info.path) == target)
                    .and_then(|info| info.usb.clone()),
                named: true,
                configured_as: Vec::new(),
                probe: Probe::NotAsked,
            }
        })
        .collect()
}

/// The link target of every `/dev/serial/by-id` name (none off Linux, or
/// with no USB serial port plugged in).
fn by_id_links(dir: &Path) -> BTreeMap<PathBuf, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    let mut links: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
    // The same first name for a port on every run.
    links.sort();
    let mut targets = BTreeMap::new();
    for link in links {
        if let Ok(target) = std::fs::canonicalize(&link) {
            targets
                .entry(target)
                .or_insert_with(|| link.to_string_lossy().into_owned());
        }
    }
    targets
}

/// The path with symlinks resolved; as it is when it cannot be (`COM3`).
fn canonical(path: &str) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path))
}

/// The configured devices on this port: by path (through symlinks), or
/// `port = "auto"` with the hardware id that answered here.
fn configured_names(devices: &[epm_agent::config::DeviceSettings], port: &Port) -> Vec<String> {
    let target = canonical(&port.path);
    devices
        .iter()
        .filter(|device| match &device.port {
            PortSetting::Path(path) => *path == port.path || canonical(path) == target,
            PortSetting::Auto(AutoMatch {
                hardware_id: Some(wanted),
                ..
            }) => matches!(&port.probe, Probe::Found { identity, .. } if identity.hardware_id == *wanted),
            PortSetting::Auto(_) | PortSetting::None => false,
        })
        .map(|device| device.name.clone())
        .collect()
}

/// Asks every port at once (each costs up to two probe timeouts when
/// nothing answers), and returns what each said.
async fn probe_ports(paths: &[String]) -> Vec<(String, Probe)> {
    let asks = paths.iter().map(|path| async move {
        let probe = probe_port(path).await;
        (path.clone(), probe)
    });
    futures_util::future::join_all(asks).await
}

/// Asks one port as each model that sits on a port, at its baud rate, in
/// registry order (ProLAN-202, then ProLAN-501).
async fn probe_port(path: &str) -> Probe {
    for model in Model::all().filter(|model| model.has_port()) {
        let stream = match port::open_serial(path, model.default_baud()) {
            Ok(stream) => stream,
            Err(PortError::Open { message, hint, .. }) => {
                return Probe::CannotOpen(format!("{message}{hint}"));
            }
            Err(error) => return Probe::CannotOpen(error.to_string()),
        };
        let mut link: FramedLink = Framed::new(Box::new(stream) as Box<dyn Link>, model.codec());
        if let Some((identity, _earlier)) =
            port::probe(&mut link, model, &AutoMatch::default()).await
        {
            return Probe::Found { model, identity };
        }
        // Dropping the link closes the port before it is opened again at
        // the next model's speed.
    }
    Probe::NoAnswer
}

/// The `[[device]]` table for a device found on `port`.
fn device_block(port: &Port, model: Model, identity: &Identity) -> String {
    let name = format!(
        "{}-{}",
        model.spec().kind,
        identity.hardware_id.to_string().to_lowercase()
    );
    let path = port.by_id.as_deref().unwrap_or(&port.path);
    let mut block = String::new();
    block.push_str("[[device]]\n");
    block.push_str(&format!("name = {}\n", toml_string(&name)));
    block.push_str(&format!("model = {}\n", toml_string(model.name())));
    block.push_str(&format!("port = {}\n", toml_string(path)));
    block.push_str("question = \"recommend\"\n");
    block.push_str("keymap = { 1 = \"yes\", 2 = \"neutral\", 3 = \"no\" }\n");
    block.push_str("# To find it wherever it is plugged in, use port = \"auto\" with:\n");
    if let Some(usb) = &port.usb {
        block.push_str(&format!("# usb_vid = \"{:04x}\"\n", usb.vid));
        block.push_str(&format!("# usb_pid = \"{:04x}\"\n", usb.pid));
    }
    block.push_str(&format!("# hardware_id = \"{}\"\n", identity.hardware_id));
    block
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// `ProLAN-501 receiver 501000A7, firmware 2.3, radio channel 4`.
fn describe_identity(model: Model, identity: &Identity) -> String {
    let channel = identity.radio_channel.map_or(String::new(), |channel| {
        format!(", radio channel {channel}")
    });
    format!(
        "{} {}, firmware {}{channel}",
        model.spec().title,
        identity.hardware_id,
        identity.firmware
    )
}

/// The table, then a block to paste for every device found that the
/// configuration does not have yet.
fn render_text(ports: &[Port], policy: ProbePolicy, has_config: bool, colour: bool) -> String {
    let mut text = String::new();
    if ports.is_empty() {
        text.push_str(
            "no serial ports found (is the device plugged in? a USB-serial adapter may need its driver)\n",
        );
        return text;
    }
    let paint = |code: &str, cell: String| {
        if colour {
            format!("\x1b[{code}m{cell}\x1b[0m")
        } else {
            cell
        }
    };
    let mut header = vec!["PORT", "USB ID", "SERIAL", "MANUFACTURER", "CONFIGURED"];
    if policy.probe {
        header.push("ANSWER");
    }
    let rows: Vec<Vec<String>> = ports
        .iter()
        .map(|port| {
            let usb = port.usb.as_ref();
            let mut row = vec![
                port.path.clone(),
                usb.map_or(
                    // A named port that is not a listed USB port may be a
                    // pseudo-terminal or an adapter: not known to be built in.
                    if port.named { "-" } else { "built-in" }.into(),
                    |usb| format!("{:04x}:{:04x}", usb.vid, usb.pid),
                ),
                usb.and_then(|usb| usb.serial_number.clone())
                    .unwrap_or_else(|| "-".into()),
                usb.and_then(|usb| usb.manufacturer.clone())
                    .unwrap_or_else(|| "-".into()),
                if port.configured_as.is_empty() {
                    "-".into()
                } else {
                    port.configured_as.join(", ")
                },
            ];
            if policy.probe {
                // The last column is not padded, so colour cannot upset the alignment.
                row.push(match &port.probe {
                    Probe::Found { model, identity } => {
                        paint("32", describe_identity(*model, identity))
                    }
                    Probe::NoAnswer => "no answer".into(),
                    Probe::CannotOpen(reason) => paint("33", format!("not asked: {reason}")),
                    Probe::BuiltIn => {
                        "not asked: built-in port (--probe-all or --port to ask it)".into()
                    }
                    Probe::NotAsked => "-".into(),
                });
            }
            row
        })
        .collect();
    text.push_str(&aligned_table(&header, &rows));
    if !policy.probe {
        text.push_str(
            "\n`epm-agent devices --probe` asks the USB ports which of them are ProLAN devices.\n",
        );
        return text;
    }
    let found: Vec<&Port> = ports
        .iter()
        .filter(|port| matches!(port.probe, Probe::Found { .. }))
        .collect();
    if found.is_empty() {
        text.push_str("\nno ProLAN device answered");
        if ports
            .iter()
            .any(|port| matches!(port.probe, Probe::CannotOpen(_)))
        {
            text.push_str(" (ports that could not be opened were not asked: is the agent running? `epm-agent status` shows what it reads)");
        }
        text.push('\n');
        return text;
    }
    for port in found {
        let Probe::Found { model, identity } = &port.probe else {
            continue;
        };
        text.push('\n');
        if !port.configured_as.is_empty() {
            text.push_str(&format!(
                "# {} on {} is configured already, as {}.\n",
                describe_identity(*model, identity),
                port.path,
                port.configured_as.join(", ")
            ));
            continue;
        }
        text.push_str(&format!(
            "# {} on {}.\n# Paste into {}, set the question and keymap, then run `epm-agent config check`:\n",
            describe_identity(*model, identity),
            port.path,
            if has_config {
                "the configuration"
            } else {
                "the configuration (there is none yet: start from config/epm-agent.toml)"
            },
        ));
        text.push_str(&device_block(port, *model, identity));
    }
    text
}

/// `devices --json`: `{"ports": [...]}`.
#[derive(Serialize)]
struct JsonReport {
    ports: Vec<JsonPort>,
}

#[derive(Serialize)]
struct JsonPort {
    path: String,
    by_id: Option<String>,
    usb: Option<JsonUsb>,
    configured_as: Vec<String>,
    /// `null` without --probe.
    probe: Option<JsonProbe>,
    /// The `[[device]]` block, for a device found and not configured yet.
    config_block: Option<String>,
}

/// Ids in hex, as the configuration writes them (`usb_vid = "0483"`).
#[derive(Serialize)]
struct JsonUsb {
    vid: String,
    pid: String,
    serial_number: Option<String>,
    manufacturer: Option<String>,
    product: Option<String>,
}

#[derive(Serialize)]
struct JsonProbe {
    /// found | no_answer | cannot_open | not_asked
    result: &'static str,
    model: Option<&'static str>,
    hardware_id: Option<String>,
    firmware: Option<String>,
    radio_channel: Option<u8>,
    /// Why it was not asked.
    reason: Option<String>,
}

fn json_report(ports: &[Port]) -> JsonReport {
    JsonReport {
        ports: ports
            .iter()
            .map(|port| {
                let mut probe = JsonProbe {
                    result: "not_asked",
                    model: None,
                    hardware_id: None,
                    firmware: None,
                    radio_channel: None,
                    reason: None,
                };
                let mut config_block = None;
                match &port.probe {
                    Probe::NotAsked => {}
                    Probe::BuiltIn => {
                        probe.reason = Some("built-in port: --probe-all or --port asks it".into());
                    }
                    Probe::CannotOpen(reason) => {
                        probe.result = "cannot_open";
                        probe.reason = Some(reason.clone());
                    }
                    Probe::NoAnswer => probe.result = "no_answer",
                    Probe::Found { model, identity } => {
                        probe.result = "found";
                        probe.model = Some(model.name());
                        probe.hardware_id = Some(identity.hardware_id.to_string());
                        probe.firmware = Some(identity.firmware.clone());
                        probe.radio_channel = identity.radio_channel;
                        if port.configured_as.is_empty() {
                            config_block = Some(device_block(port, *model, identity));
                        }
                    }
                }
                JsonPort {
                    path: port.path.clone(),
                    by_id: port.by_id.clone(),
                    usb: port.usb.as_ref().map(|usb| JsonUsb {
                        vid: format!("{:04x}", usb.vid),
                        pid: format!("{:04x}", usb.pid),
                        serial_number: usb.serial_number.clone(),
                        manufacturer: usb.manufacturer.clone(),
                        product: usb.product.clone(),
                    }),
                    configured_as: port.configured_as.clone(),
                    probe: (port.probe != Probe::NotAsked).then_some(probe),
                    config_block,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use epm_agent::protocol::UnitId;

    fn usb_port(path: &str) -> Port {
        Port {
            path: path.into(),
            by_id: None,
            usb: Some(UsbInfo {
                vid: 0x0483,
                pid: 0x5740,
                serial_number: Some("202A0F31".into()),
                manufacturer: Some("ProLAN".into()),
                product: None,
            }),
            named: false,
            configured_as: Vec::new(),
            probe: Probe::NotAsked,
        }
    }

    fn built_in(path: &str) -> Port {
        Port {
            usb: None,
            ..usb_port(path)
        }
    }

    fn keypad_identity() -> Identity {
        Identity {
            hardware_id: UnitId(0x202A_0F31),
            model: "PL202".into(),
            firmware: "1.4".into(),
            radio_channel: None,
        }
    }

    #[test]
    fn only_usb_ports_are_asked_unless_told_otherwise() {
        let check = |probe: bool, probe_all: bool, ports: &[&str], port: Port, asked: bool| {
            let args = Args {
                probe,
                probe_all,
                ports: ports.iter().map(|port| port.to_string()).collect(),
                json: false,
            };
            let decision = ProbePolicy::of(&args).decide(&port);
            assert_eq!(decision.is_none(), asked, "{args:?} {port:?}: {decision:?}");
        };
        check(false, false, &[], usb_port("/dev/ttyACM0"), false);
        check(true, false, &[], usb_port("/dev/ttyACM0"), true);
        check(true, false, &[], built_in("/dev/ttyS0"), false);
        check(false, true, &[], built_in("/dev/ttyS0"), true);
        let named = Port {
            named: true,
            ..built_in("/dev/ttyS0")
        };
        check(false, false, &["/dev/ttyS0"], named, true);
        assert_eq!(
            ProbePolicy::of(&Args {
                probe: true,
                probe_all: false,
                ports: Vec::new(),
                json: false
            })
            .decide(&built_in("/dev/ttyS0")),
            Some(Probe::BuiltIn)
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_port_is_known_by_its_stable_by_id_name() {
        let folder = tempfile::tempdir().expect("temp dir");
        let device = folder.path().join("ttyACM0");
        std::fs::write(&device, "").expect("a device stand-in");
        let by_id = folder.path().join("by-id");
        std::fs::create_dir(&by_id).expect("by-id");
        let link = by_id.join("usb-ProLAN_PL202_202A0F31-if00");
        std::os::unix::fs::symlink(&device, &link).expect("symlink");
        let links = by_id_links(&by_id);
        let listed = vec![PortInfo {
            path: device.to_string_lossy().into_owned(),
            usb: usb_port("x").usb,
        }];
        let ports = gather_ports(&listed, &[], &links);
        assert_eq!(ports[0].by_id.as_deref(), Some(&*link.to_string_lossy()));
        // Named by its link: the listed port's USB ids are found through it.
        let named = gather_ports(&listed, &[link.to_string_lossy().into_owned()], &links);
        assert_eq!(named[0].path, link.to_string_lossy());
        assert_eq!(named[0].usb, listed[0].usb);
        assert!(named[0].named);
        let twice = [
            link.to_string_lossy().into_owned(),
            device.to_string_lossy().into_owned(),
        ];
        assert_eq!(gather_ports(&listed, &twice, &links).len(), 1);
        assert!(by_id_links(&folder.path().join("missing")).is_empty());
    }

    #[test]
    fn an_auto_device_is_recognised_by_the_hardware_id_that_answered() {
        let settings = epm_agent::config::parse(
            "[agent]\nid = \"t\"\ndata_dir = \"d\"\n\n\
             [[device]]\nname = \"cashdesk\"\nmodel = \"prolan-202\"\nport = \"auto\"\nhardware_id = \"202A0F31\"\nkeymap = { 1 = \"yes\" }\n\n\
             [[device]]\nname = \"hall\"\nmodel = \"prolan-501\"\nport = \"/dev/ttyACM7\"\nkeymap = { 1 = \"yes\" }\n",
            Path::new("t.toml"),
        )
        .expect("a valid configuration");
        let found = Port {
            probe: Probe::Found {
                model: Model::Prolan202,
                identity: keypad_identity(),
            },
            ..usb_port("/dev/ttyACM0")
        };
        assert_eq!(configured_names(&settings.devices, &found), ["cashdesk"]);
        assert_eq!(
            configured_names(&settings.devices, &usb_port("/dev/ttyACM7")),
            ["hall"]
        );
        assert!(configured_names(&settings.devices, &usb_port("/dev/ttyACM1")).is_empty());
    }

    #[test]
    fn the_table_and_the_block_to_paste() {
        let found = Port {
            by_id: Some("/dev/serial/by-id/usb-ProLAN_PL202_202A0F31-if00".into()),
            probe: Probe::Found {
                model: Model::Prolan202,
                identity: keypad_identity(),
            },
            ..usb_port("/dev/ttyACM0")
        };
        let ports = [
            found,
            Port {
                probe: Probe::BuiltIn,
                ..built_in("/dev/ttyS0")
            },
        ];
        let policy = ProbePolicy {
            probe: true,
            probe_all: false,
        };
        assert_eq!(
            render_text(&ports, policy, true, false),
            "\
PORT          USB ID     SERIAL    MANUFACTURER  CONFIGURED  ANSWER
/dev/ttyACM0  0483:5740  202A0F31  ProLAN        -           ProLAN-202 keypad 202A0F31, firmware 1.4
/dev/ttyS0    built-in   -         -             -           not asked: built-in port (--probe-all or --port to ask it)

# ProLAN-202 keypad 202A0F31, firmware 1.4 on /dev/ttyACM0.
# Paste into the configuration, set the question and keymap, then run `epm-agent config check`:
[[device]]
name = \"keypad-202a0f31\"
model = \"prolan-202\"
port = \"/dev/serial/by-id/usb-ProLAN_PL202_202A0F31-if00\"
question = \"recommend\"
keymap = { 1 = \"yes\", 2 = \"neutral\", 3 = \"no\" }
# To find it wherever it is plugged in, use port = \"auto\" with:
# usb_vid = \"0483\"
# usb_pid = \"5740\"
# hardware_id = \"202A0F31\"
"
        );
    }
}

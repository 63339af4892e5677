//! A made-up third model, in test builds only: the proof that a device
//! model is one file plus one registry line (ARCHITECTURE.md, "How to add a
//! device model"). Its wire is a toy: ASCII lines `I <id> <firmware>` and
//! `P <unit> <key> <seq>` from the device, `Q` and `A <seq>` from the host,
//! each ended by `\n`, at most [`MAX_LINE_LEN`] bytes.

use std::io;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{AnyCodec, BadFrame, Decoded, HostCodec, Identity, Inbound, Outbound, Press};
use crate::model::{Attachment, ModelSpec};

/// The example model, as the agent knows it.
pub static SPEC: ModelSpec = ModelSpec {
    name: "example-900",
    title: "Example-900 panel",
    kind: "panel",
    default_baud: 19_200,
    heartbeat_period: Duration::from_secs(60),
    duplicate_window: Duration::from_secs(90),
    codec: || AnyCodec::new(Codec::default()),
    is_identity: |identity| identity.model == MODEL,
    attachment: Attachment::SerialPort,
};

/// The model an identity line names.
pub const MODEL: &str = "EX900";

/// The longest valid line, line end included.
pub const MAX_LINE_LEN: usize = 40;

#[derive(Debug, Default)]
pub struct Codec {
    noise_bytes: u64,
}

impl HostCodec for Codec {
    fn noise_bytes(&self) -> u64 {
        self.noise_bytes
    }
}

impl Decoder for Codec {
    type Item = Decoded;
    type Error = io::Error;

    fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Decoded>, io::Error> {
        let Some(end) = buffer.iter().position(|&byte| byte == b'\n') else {
            if buffer.len() >= MAX_LINE_LEN {
                self.noise_bytes += buffer.len() as u64;
                buffer.clear();
                return Ok(Some(Decoded::Bad(BadFrame::TooLong)));
            }
            return Ok(None);
        };
        let line = buffer.split_to(end + 1);
        let text = std::str::from_utf8(&line[..end]).unwrap_or("");
        let fields: Vec<&str> = text.split(' ').collect();
        let decoded = match fields[..] {
            ["I", id, firmware] => match id.parse() {
                Ok(hardware_id) => Ok(Inbound::Identity(Identity {
                    hardware_id,
                    model: MODEL.into(),
                    firmware: firmware.into(),
                    radio_channel: None,
                })),
                Err(_) => Err(BadFrame::Field),
            },
            ["P", unit, key, seq] => parse_press(unit, key, seq).map(Inbound::Press),
            _ => Err(BadFrame::Shape),
        };
        Ok(Some(decoded.map_or_else(Decoded::Bad, Decoded::Message)))
    }
}

impl Encoder<Outbound> for Codec {
    type Error = io::Error;

    fn encode(&mut self, message: Outbound, out: &mut BytesMut) -> Result<(), io::Error> {
        match message {
            Outbound::Query => out.put_slice(b"Q\n"),
            Outbound::Ack { seq, .. } => out.put_slice(format!("A {seq}\n").as_bytes()),
        }
        Ok(())
    }
}

fn parse_press(unit: &str, key: &str, seq: &str) -> Result<Press, BadFrame> {
    let key = key.parse().map_err(|_| BadFrame::Field)?;
    if !(1..=16).contains(&key) {
        return Err(BadFrame::Field);
    }
    Ok(Press {
        unit: unit.parse().map_err(|_| BadFrame::Field)?,
        key,
        seq: seq.parse().map_err(|_| BadFrame::Field)?,
        rssi: None,
        battery: None,
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::codec::Framed;

    use super::*;
    use crate::config::{self, AutoMatch, Model};
    use crate::port::{self, Link};
    use crate::protocol::UnitId;

    const CONFIG: &str = r#"
[agent]
id = "shop-1"

[[device]]
name = "lobby"
model = "example-900"
port = "auto"
"#;

    #[test]
    fn the_loader_takes_the_model_by_its_name_with_its_spec_defaults() {
        let settings = config::parse(CONFIG, std::path::Path::new("epm-agent.toml"))
            .expect("a valid configuration");
        let device = &settings.devices[0];
        assert!(std::ptr::eq(device.model.spec(), &SPEC));
        assert_eq!(device.model.name(), "example-900");
        assert_eq!(device.baud, 19_200);
        assert_eq!(device.model.silence_after(), Duration::from_secs(180));
        assert_eq!(device.model.duplicate_window(), Duration::from_secs(90));
    }

    #[test]
    fn the_codec_and_the_identity_matcher_come_from_the_spec() {
        let model = Model::named("example-900").expect("registered");
        let mut codec = model.codec();
        let mut buffer = BytesMut::from(&b"I 9000000A 1.0\nP 9000000A 3 7\n"[..]);
        let Some(Decoded::Message(Inbound::Identity(identity))) =
            codec.decode(&mut buffer).expect("decodes")
        else {
            panic!("an identity first");
        };
        assert!(model.is_identity(&identity));
        assert!(!Model::Prolan501.is_identity(&identity));
        let press = codec.decode(&mut buffer).expect("decodes");
        assert!(
            matches!(press, Some(Decoded::Message(Inbound::Press(press))) if press.key == 3 && press.seq == 7)
        );
        let mut out = BytesMut::new();
        codec.encode(Outbound::Query, &mut out).expect("encodes");
        assert_eq!(&out[..], b"Q\n");
    }

    /// What `auto` discovery does with a port: QUERY, then the answer is
    /// judged by the model's own matcher.
    #[tokio::test(start_paused = true)]
    async fn a_probe_asks_in_the_models_own_words_and_knows_its_answer() {
        let model = Model::named("example-900").expect("registered");
        let (host, mut device) = tokio::io::duplex(256);
        let answering = tokio::spawn(async move {
            let mut query = [0; 2];
            device.read_exact(&mut query).await.expect("a query");
            device.write_all(b"I 9000000A 1.0\n").await.expect("answer");
            query
        });
        let mut link = Framed::new(Box::new(host) as Box<dyn Link>, model.codec());
        let wanted = AutoMatch {
            hardware_id: Some(UnitId(0x9000_000A)),
            ..AutoMatch::default()
        };
        let (identity, _earlier) = port::probe(&mut link, model, &wanted).await.expect("found");
        assert_eq!(identity.firmware, "1.0");
        assert_eq!(&answering.await.expect("the device ran"), b"Q\n");
    }
}

//! Decode throughput of both codecs on a realistic stream: about 1 MiB of
//! presses, heartbeats and the odd identity or status message, with about 1 %
//! of the bytes random noise between frames, fed to the `Decoder` in 4 KiB
//! reads the way `FramedRead` feeds it. Results go in `docs/performance.md`.

use std::hint::black_box;
use std::io;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use epm_agent::protocol::{
    prolan202, prolan501, Decoded, Heartbeat, Identity, Inbound, Press, UnitId,
};
use tokio_util::codec::Decoder;

criterion_group!(benches, decode_throughput);
criterion_main!(benches);

const STREAM_LEN: usize = 1 << 20;
const READ_LEN: usize = 4096;

fn decode_throughput(criterion: &mut Criterion) {
    let streams = [
        (
            "prolan202",
            realistic_stream(prolan202::encode_inbound, None),
        ),
        (
            "prolan501",
            realistic_stream(prolan501::encode_inbound, Some(-60)),
        ),
    ];
    let mut group = criterion.benchmark_group("decode");
    for (model, stream) in &streams {
        group.throughput(Throughput::Bytes(stream.len() as u64));
        match *model {
            "prolan202" => group.bench_function(*model, |bencher| {
                bencher.iter(|| decode_in_reads(prolan202::Codec::new(), black_box(stream)))
            }),
            _ => group.bench_function(*model, |bencher| {
                bencher.iter(|| decode_in_reads(prolan501::Codec::new(), black_box(stream)))
            }),
        };
    }
    group.finish();
}

/// Feeds `stream` to `codec` in 4 KiB reads; returns how many presses came
/// out, so that nothing can be optimised away.
fn decode_in_reads<Codec>(mut codec: Codec, stream: &[u8]) -> usize
where
    Codec: Decoder<Item = Decoded, Error = io::Error>,
{
    let mut buffer = BytesMut::with_capacity(2 * READ_LEN);
    let mut presses = 0;
    for read in stream.chunks(READ_LEN) {
        buffer.extend_from_slice(read);
        while let Some(item) = codec
            .decode(&mut buffer)
            .expect("the codecs never return an error")
        {
            if let Decoded::Message(Inbound::Press(_)) = black_box(item) {
                presses += 1;
            }
        }
    }
    presses
}

/// About `STREAM_LEN` bytes: 90 % presses from 40 units, 9 % heartbeats, 1 %
/// identities (202) or remote status beacons (501), and random noise bursts
/// of 1 to 8 bytes between frames keeping noise at about 1 % of the bytes.
/// `rssi` is `Some` for the radio model. Deterministic (xorshift64).
fn realistic_stream(encode: fn(&Inbound, &mut BytesMut), rssi: Option<i8>) -> Vec<u8> {
    let mut random_state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut random = move || {
        random_state ^= random_state << 13;
        random_state ^= random_state >> 7;
        random_state ^= random_state << 17;
        random_state
    };
    let mut stream = BytesMut::with_capacity(STREAM_LEN + 64);
    let mut noise_len = 0;
    let mut seq: u16 = 0;
    while stream.len() < STREAM_LEN {
        let unit = UnitId(0x301A_0000 + (random() % 40) as u32);
        let message = match random() % 100 {
            0..90 => {
                seq = seq.wrapping_add(1);
                Inbound::Press(Press {
                    unit,
                    key: (random() % 16) as u8 + 1,
                    seq,
                    rssi,
                    battery: rssi.map(|_| (random() % 101) as u8),
                })
            }
            90..99 => Inbound::Heartbeat(Heartbeat {
                unit: rssi.is_none().then_some(unit),
                uptime_s: (random() % 1_000_000) as u32,
                remotes_heard: rssi.map(|_| 40),
            }),
            _ if rssi.is_some() => Inbound::UnitStatus {
                unit,
                battery: Some(87),
                rssi: -70,
            },
            _ => Inbound::Identity(Identity {
                hardware_id: unit,
                model: "PL202".to_owned(),
                firmware: "1.4".to_owned(),
                radio_channel: None,
            }),
        };
        encode(&message, &mut stream);
        while noise_len * 100 < stream.len() {
            let burst = (random() % 8) as usize + 1;
            for _ in 0..burst {
                stream.extend_from_slice(&[random() as u8]);
            }
            noise_len += burst;
        }
    }
    stream.to_vec()
}

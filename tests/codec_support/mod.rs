//! What the codec tests share: reading a fixture file, decoding an input in
//! chosen chunks (asserting the codec's buffer bound on the way), the one
//! `check` that replays an input all at once, one byte at a time and in
//! pseudo-random chunks, and the properties both models must have. How a
//! fixture's text spells its bytes is the model's own and stays in its test
//! file.

use std::io;
use std::path::PathBuf;

use bytes::BytesMut;
use epm_agent::protocol::{prolan202, prolan501, BadFrame, Decoded, Inbound, Outbound};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

/// A model's host-side codec, and its device side, as the shared helpers
/// drive them.
pub trait TestedCodec:
    Decoder<Item = Decoded, Error = io::Error> + Encoder<Outbound, Error = io::Error> + Sized
{
    /// The longest line or frame. The buffer never holds this many bytes
    /// once `decode` has nothing more to give.
    const MAX_LEN: usize;

    /// A codec at the start of a stream.
    fn fresh() -> Self;

    /// Bytes skipped so far that belonged to no line or frame.
    fn noise(&self) -> u64;

    /// The device side: writes `message` as the keypad or receiver sends it.
    fn encode_inbound(message: &Inbound, out: &mut BytesMut);
}

/// Implements [`TestedCodec`] for the codec of the protocol module `$model`,
/// whose longest line or frame is `$model::$max_len`.
macro_rules! tested_codec {
    ($model:ident, $max_len:ident) => {
        impl TestedCodec for $model::Codec {
            const MAX_LEN: usize = $model::$max_len;

            fn fresh() -> Self {
                Self::new()
            }

            fn noise(&self) -> u64 {
                self.noise_bytes()
            }

            fn encode_inbound(message: &Inbound, out: &mut BytesMut) {
                $model::encode_inbound(message, out);
            }
        }
    };
}

tested_codec!(prolan202, MAX_LINE_LEN);
tested_codec!(prolan501, MAX_FRAME_LEN);

/// What the host side yields for a line or frame it rejects.
pub fn bad(reason: BadFrame) -> Decoded {
    Decoded::Bad(reason)
}

/// What the host writes for `message`.
pub fn encode_outbound<C: TestedCodec>(message: Outbound) -> BytesMut {
    let mut out = BytesMut::new();
    C::fresh()
        .encode(message, &mut out)
        .expect("encoding into a BytesMut never fails");
    out
}

/// Reads `fixtures/<model>/<file_name>`; returns its path (for messages) and
/// its text, which the caller parses.
pub fn fixture_text(model: &str, file_name: &str) -> (PathBuf, String) {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "fixtures", model, file_name]
        .iter()
        .collect();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    (path, text)
}

/// Decodes `input` feeding the chunk lengths given (then the rest at once),
/// then ends the stream. Asserts the buffer bound each time `decode` has
/// nothing more to give. Returns the items and the noise count.
pub fn decode_in_chunks<C: TestedCodec>(
    input: &[u8],
    chunk_lengths: impl IntoIterator<Item = usize>,
) -> (Vec<Decoded>, u64) {
    let mut codec = C::fresh();
    let mut buffer = BytesMut::new();
    let mut items = Vec::new();
    let mut chunk_lengths = chunk_lengths.into_iter();
    let mut rest = input;
    while !rest.is_empty() {
        let take = chunk_lengths
            .next()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        buffer.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        while let Some(item) = codec.decode(&mut buffer).expect("decode never fails") {
            items.push(item);
        }
        assert!(
            buffer.len() < C::MAX_LEN,
            "{} bytes left buffered",
            buffer.len()
        );
    }
    while let Some(item) = codec
        .decode_eof(&mut buffer)
        .expect("decode_eof never fails")
    {
        items.push(item);
    }
    assert!(buffer.is_empty(), "decode_eof left {} bytes", buffer.len());
    (items, codec.noise())
}

/// Pseudo-random chunk lengths in 1..=64 (xorshift64), reproducible by seed.
fn random_chunk_lengths(seed: u64) -> impl Iterator<Item = usize> {
    let mut state = seed | 1;
    std::iter::repeat_with(move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 64) as usize + 1
    })
}

/// Decodes `input` all at once, one byte at a time and in 8 pseudo-random
/// chunkings: each must yield `expected` and count the same noise, which is
/// returned.
pub fn check<C: TestedCodec>(input: &[u8], expected: &[Decoded]) -> u64 {
    let (items, noise_bytes) = decode_in_chunks::<C>(input, []);
    assert_eq!(items, expected, "all at once");
    let (items, one_byte_noise) = decode_in_chunks::<C>(input, std::iter::repeat(1));
    assert_eq!(items, expected, "one byte at a time");
    assert_eq!(one_byte_noise, noise_bytes, "noise, one byte at a time");
    for seed in 1..=8 {
        let (items, chunked_noise) = decode_in_chunks::<C>(input, random_chunk_lengths(seed));
        assert_eq!(items, expected, "chunks of seed {seed}");
        assert_eq!(chunked_noise, noise_bytes, "noise, chunks of seed {seed}");
    }
    noise_bytes
}

/// The property that what the device side encodes fits in a line or frame
/// and decodes, on the host side, to `message` alone, with no noise.
pub fn round_trips<C: TestedCodec>(message: Inbound) -> Result<(), TestCaseError> {
    let mut encoded = BytesMut::new();
    C::encode_inbound(&message, &mut encoded);
    prop_assert!(encoded.len() <= C::MAX_LEN);
    let (items, noise_bytes) = decode_in_chunks::<C>(&encoded, []);
    prop_assert_eq!(items, vec![Decoded::Message(message)]);
    prop_assert_eq!(noise_bytes, 0);
    Ok(())
}

/// The property that `message`, encoded between `prefix` and `suffix` and
/// fed in `chunk_lengths`, is found. The case is rejected (not failed) when
/// `swallowed(input, start)` says that the noise before `start`, where the
/// message begins, may take it by the spec itself.
pub fn is_found_in_noise<C: TestedCodec>(
    message: Inbound,
    prefix: Vec<u8>,
    suffix: &[u8],
    chunk_lengths: Vec<usize>,
    swallowed: impl Fn(&[u8], usize) -> bool,
) -> Result<(), TestCaseError> {
    let mut input = prefix;
    let start = input.len();
    let mut encoded = BytesMut::new();
    C::encode_inbound(&message, &mut encoded);
    input.extend_from_slice(&encoded);
    input.extend_from_slice(suffix);
    prop_assume!(!swallowed(&input, start));
    let (items, _) = decode_in_chunks::<C>(&input, chunk_lengths);
    prop_assert!(items.contains(&Decoded::Message(message)), "{items:?}");
    Ok(())
}

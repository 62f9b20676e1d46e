//! Shared pieces of soma's fuzz targets (see `README.md`): the limits the targets use, a
//! realistic application message type, how an input is cut into chunks, and the round-trip
//! checks. Everything here panics on a broken property: that is what the fuzzer reports.

use std::collections::BTreeMap;

use cluster_proto::codec::{
    decode_frame, decode_payload, encode_frame, encode_frame_raw, encode_payload, MAX_CHUNK, PREFIX_LEN,
};
use cluster_proto::frame::{Frame, Limits};
use cluster_proto::handshake::Local;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Small limits for the stream target: 64 KiB frames.
pub const LIMITS: Limits = Limits { max_frame: 64 << 10, max_batch_frames: 64, max_batch_bytes: 16 << 10 };

/// Limits for re-encoding a frame decoded without a length prefix (no size check applies there).
pub const WIDE: Limits = Limits { max_frame: u32::MAX, ..LIMITS };

/// The node the handshake checks run as.
pub const LOCAL: Local<'static> = Local { cluster: "c1", node: "a" };

/// A message type as an application would define one: strings, vectors, nested options, maps,
/// floats, 128-bit integers, chars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// No fields.
    Ping,
    /// One string.
    Text(String),
    /// A chat turn.
    Chat { role: Role, content: String, tokens: Vec<u32>, temperature: Option<f64>, stop: Option<Option<String>> },
    /// A tool call.
    Tool { name: String, args: Vec<(String, Arg)>, timeout_ms: Option<u64> },
    /// Floats.
    Embedding { id: u128, vector: Vec<f64>, norm: f32 },
    /// Bytes.
    Blob { mime: Option<String>, bytes: Vec<u8> },
    /// A map.
    Stats(BTreeMap<String, Option<Vec<i64>>>),
    /// Assorted scalars.
    Tuple(u8, i16, char, bool, ()),
}

/// Who speaks in a [`Msg::Chat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// System prompt.
    System,
    /// User.
    User,
    /// Model.
    Assistant,
}

/// An argument of a [`Msg::Tool`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Arg {
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// String.
    Str(String),
    /// List of optional strings.
    List(Vec<Option<String>>),
    /// Nothing.
    Nothing,
}

/// Splits a `frame_reader` input into the chunk-size table and the byte stream. The first byte's
/// low 3 bits give the table's length (1..=8); the table follows; the rest is the stream.
pub fn split_input(data: &[u8]) -> (&[u8], &[u8]) {
    const DEFAULT: &[u8] = &[0];
    let Some((&first, rest)) = data.split_first() else { return (DEFAULT, &[]) };
    let n = ((first & 7) as usize + 1).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    (if sizes.is_empty() { DEFAULT } else { sizes }, stream)
}

/// A chunk-size table entry as a chunk length: 1..=255 bytes, or 0 for the largest chunk allowed.
pub fn chunk_len(entry: u8) -> usize {
    if entry == 0 {
        MAX_CHUNK
    } else {
        entry as usize
    }
}

/// Encodes a decoded frame again, as the sending node would.
pub fn reencode(frame: &Frame<'_>, limits: &Limits) -> Vec<u8> {
    let mut wire = Vec::new();
    let r = if frame.head.has_payload() {
        encode_frame_raw(&mut wire, &frame.head, frame.payload, limits)
    } else {
        assert!(frame.payload.is_empty(), "a {} frame decoded with a payload", frame.head.kind());
        encode_frame(&mut wire, &frame.head, limits)
    };
    if let Err(e) = r {
        panic!("a decoded frame does not encode again: {e}; frame {frame:?}");
    }
    wire
}

/// The round-trip property of a frame decoded from `frame_len` bytes (tag + head + payload):
/// re-encoding succeeds, is no longer than the input (the encoding is canonical, the decoder may
/// accept longer varints), decodes to an equal frame, and encodes again to the same bytes.
pub fn check_round_trip(frame: &Frame<'_>, frame_len: usize, limits: &Limits) {
    let wire = reencode(frame, limits);
    let prefix = u32::from_le_bytes(wire[..PREFIX_LEN].try_into().unwrap()) as usize;
    assert_eq!(prefix, wire.len() - PREFIX_LEN, "length prefix of a re-encoded frame");
    assert!(prefix <= frame_len, "re-encoding grew a frame from {frame_len} to {prefix} bytes: {frame:?}");
    let back = decode_frame(&wire[PREFIX_LEN..])
        .unwrap_or_else(|e| panic!("a re-encoded frame does not decode: {e}; frame {frame:?}"));
    assert_eq!(&back, frame, "frame changed in a round trip");
    assert_eq!(reencode(&back, limits), wire, "re-encoding is not deterministic");
}

/// Decodes `bytes` as a payload of type `T`; if that works, checks the value's round trip
/// through `encode_payload`/`decode_payload` (compared as bytes: `f64` NaN is not equal to
/// itself). Returns whether it decoded.
pub fn check_payload<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> bool {
    let Ok(v) = decode_payload::<T>(bytes) else { return false };
    let mut once = Vec::new();
    encode_payload(&mut once, &v).unwrap_or_else(|e| panic!("a decoded payload does not encode: {e}"));
    assert!(once.len() <= bytes.len(), "re-encoding grew a payload from {} to {} bytes", bytes.len(), once.len());
    let again: T = decode_payload(&once).unwrap_or_else(|e| panic!("a re-encoded payload does not decode: {e}"));
    let mut twice = Vec::new();
    encode_payload(&mut twice, &again).unwrap();
    assert_eq!(once, twice, "payload changed in a round trip");
    true
}

/// Reads the little-endian length prefix at the start of `bytes`, if there are four bytes.
pub fn prefix_at(bytes: &[u8]) -> Option<usize> {
    bytes.first_chunk::<PREFIX_LEN>().map(|p| u32::from_le_bytes(*p) as usize)
}

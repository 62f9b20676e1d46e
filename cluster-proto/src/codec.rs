//! The codec: frames ⇄ bytes. The only module that knows bincode.
//!
//! Pure code: [`encode_frame`] appends a frame to a buffer, [`FrameReader`] reassembles frames
//! from the chunks a stream delivers, [`decode_frame`] decodes one frame's bytes. Payloads (the
//! messages themselves) are encoded with [`encode_payload`] by the sender and decoded with
//! [`decode_payload`] by the receiving node into the target behaviour's type.
//!
//! ## Limits and errors (G8)
//!
//! Every length is checked before anything is allocated for it: a length prefix above
//! [`Limits::max_frame`] is [`DecodeError::Oversized`] as soon as its four bytes are in, a frame
//! that ends mid-way at end of stream is [`DecodeError::Truncated`], an unknown tag is
//! [`DecodeError::UnknownTag`], and a head that does not decode, or leaves bytes behind where no
//! payload belongs, is [`DecodeError::Malformed`]. No input makes the codec panic (fuzzed: see
//! `fuzz/`). A reader's buffer never holds more than one frame plus one chunk.
//!
//! Heads, payloads and handshakes decode through a guard (`codec/guard.rs`): a claimed string
//! length is checked against the bytes actually present before anything is allocated, and
//! nesting deeper than [`MAX_DEPTH`] (a recursive message type fed a long chain) is an error
//! instead of a stack overflow. Decoding a frame of `n` bytes therefore allocates `O(n)` plus
//! serde's bounded sequence preallocation (≤ 1 MiB), whatever the bytes claim.
//!
//! Encoding is all-or-nothing: on error the buffer is left as it was.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::exit::{CorrelationId, ExitReason, MonitorRef};
use crate::frame::{tag, Frame, Head, Limits, RemoteCallError, MAX_NAME_LEN};

/// The bincode configuration of every head, payload and handshake: standard (little-endian,
/// varints) with a hard allocation limit.
fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<HARD_LIMIT>,
> {
    bincode::config::standard().with_limit::<HARD_LIMIT>()
}

/// The most bytes any single decode may claim (the largest `max_frame` allowed).
pub const HARD_LIMIT: usize = 64 << 20;

/// Length of the frame length prefix.
pub const PREFIX_LEN: usize = 4;

/// Largest chunk a [`FrameReader`] accepts in one [`extend`](FrameReader::extend).
pub const MAX_CHUNK: usize = 64 << 10;

/// Why a frame could not be encoded. The buffer is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The frame would exceed the frame limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// The payload could not be serialized.
    #[error("payload not serializable: {0}")]
    Payload(String),
    /// A registered name longer than [`MAX_NAME_LEN`] or empty.
    #[error("bad registered name ({0} bytes)")]
    BadName(usize),
    /// A payload for a kind of frame that has none, or none for one that needs it.
    #[error("{0} frame: payload mismatch")]
    PayloadMismatch(&'static str),
    /// A control tag outside `0x20..=0x7F`.
    #[error("tag {0:#04x} is not a control tag")]
    NotControl(u8),
}

/// Why bytes are not a frame. Every one of them closes the connection they came on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A length prefix above the limit (e.g. a 4 GiB prefix).
    #[error("frame length {len} exceeds the limit of {max}")]
    Oversized {
        /// The claimed length.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// The stream ended inside a frame.
    #[error("truncated frame: {have} of {need} bytes")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes the frame needs (prefix included), when known.
        need: usize,
    },
    /// A tag that is neither a known frame nor a reserved control tag.
    #[error("unknown frame tag {0:#04x}")]
    UnknownTag(u8),
    /// The frame's head did not decode, or its contents are invalid.
    #[error("malformed {kind} frame: {reason}")]
    Malformed {
        /// Frame kind.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A payload did not decode into the expected type (or left bytes behind).
    #[error("undecodable payload: {0}")]
    Payload(String),
    /// A reader was given more data than it may buffer (its owner broke the chunk rule).
    #[error("reader overflow: {0} bytes buffered")]
    Overflow(usize),
}

impl DecodeError {
    /// A short stable name, for counters and close reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::UnknownTag(_) => "unknown_tag",
            DecodeError::Malformed { .. } => "malformed",
            DecodeError::Payload(_) => "payload",
            DecodeError::Overflow(_) => "overflow",
        }
    }
}

/// Appends `value` bincode-encoded to `buf` (the payload of a send/call/reply).
pub fn encode_payload<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) -> Result<(), EncodeError> {
    let start = buf.len();
    bincode::serde::encode_into_std_write(value, buf, config()).map(|_| ()).map_err(|e| {
        buf.truncate(start);
        EncodeError::Payload(e.to_string())
    })
}

/// Decodes a whole payload into `T`; bytes left over are an error (a type mismatch, usually).
pub fn decode_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (v, used) = bincode::serde::seed_decode_from_slice(guard::Guarded::<T>(PhantomData), bytes, config())
        .map_err(|e| DecodeError::Payload(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError::Payload(format!("{} trailing bytes", bytes.len() - used)));
    }
    Ok(v)
}

fn put<T: Serialize>(buf: &mut Vec<u8>, v: &T) -> Result<(), EncodeError> {
    bincode::serde::encode_into_std_write(v, buf, config()).map(|_| ()).map_err(|e| EncodeError::Payload(e.to_string()))
}

fn check_name(name: &str) -> Result<(), EncodeError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(EncodeError::BadName(name.len()));
    }
    Ok(())
}

fn put_head(buf: &mut Vec<u8>, head: &Head<'_>) -> Result<(), EncodeError> {
    buf.push(head.tag());
    match head {
        Head::Send { to, from, corr } => put(buf, &(to, from, corr)),
        Head::SendNamed { name, from, corr } => {
            check_name(name)?;
            put(buf, &(name, from, corr))
        }
        Head::Call { call_id, to, from, corr } => put(buf, &(call_id, to, from, corr)),
        Head::CallNamed { call_id, name, from, corr } => {
            check_name(name)?;
            put(buf, &(call_id, name, from, corr))
        }
        Head::Reply { call_id, result } => put(buf, &(call_id, result)),
        Head::Link { from, to } | Head::Unlink { from, to } => put(buf, &(from, to)),
        Head::Monitor { watcher, target, mref } | Head::Demonitor { watcher, target, mref } => {
            put(buf, &(watcher, target, mref))
        }
        Head::Exit { from, to, reason, kill } => put(buf, &(from, to, reason, kill)),
        Head::Down { watcher, mref, pid, reason } => put(buf, &(watcher, mref, pid, reason)),
        Head::Control { tag } => {
            if !(tag::CONTROL_FIRST..=tag::CONTROL_LAST).contains(tag) {
                return Err(EncodeError::NotControl(*tag));
            }
            Ok(())
        }
    }
}

/// Runs `body` (which appends tag, head and payload), then writes the length prefix; undoes
/// everything on error.
fn framed(
    buf: &mut Vec<u8>,
    limits: &Limits,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; PREFIX_LEN]);
    let r = body(buf).and_then(|()| {
        let len = buf.len() - start - PREFIX_LEN;
        match u32::try_from(len) {
            Ok(l) if l <= limits.max_frame => {
                buf[start..start + PREFIX_LEN].copy_from_slice(&l.to_le_bytes());
                Ok(())
            }
            _ => Err(EncodeError::TooLarge { len, max: limits.max_frame }),
        }
    });
    if r.is_err() {
        buf.truncate(start);
    }
    r
}

/// Appends a frame without a payload (link, monitor, exit, down, an error reply ...).
pub fn encode_frame(buf: &mut Vec<u8>, head: &Head<'_>, limits: &Limits) -> Result<(), EncodeError> {
    if head.has_payload() {
        return Err(EncodeError::PayloadMismatch(head.kind()));
    }
    framed(buf, limits, |b| put_head(b, head))
}

/// Appends a frame whose payload is `payload`, serialized straight into `buf` (no intermediate
/// allocation: this is the send path).
pub fn encode_frame_with<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    head: &Head<'_>,
    payload: &T,
    limits: &Limits,
) -> Result<(), EncodeError> {
    if !head.has_payload() {
        return Err(EncodeError::PayloadMismatch(head.kind()));
    }
    framed(buf, limits, |b| {
        put_head(b, head)?;
        bincode::serde::encode_into_std_write(payload, b, config())
            .map(|_| ())
            .map_err(|e| EncodeError::Payload(e.to_string()))
    })
}

/// Appends a frame whose payload is already encoded (a reply computed elsewhere, a control
/// body).
pub fn encode_frame_raw(
    buf: &mut Vec<u8>,
    head: &Head<'_>,
    payload: &[u8],
    limits: &Limits,
) -> Result<(), EncodeError> {
    if !head.has_payload() {
        return Err(EncodeError::PayloadMismatch(head.kind()));
    }
    framed(buf, limits, |b| {
        put_head(b, head)?;
        b.extend_from_slice(payload);
        Ok(())
    })
}

fn get<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8], kind: &'static str) -> Result<(T, usize), DecodeError> {
    bincode::serde::seed_decode_from_slice(guard::Guarded::<T>(PhantomData), bytes, config())
        .map_err(|e| DecodeError::Malformed { kind, reason: e.to_string() })
}

fn name_ok<'a>(name: &'a str, kind: &'static str) -> Result<&'a str, DecodeError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(DecodeError::Malformed { kind, reason: format!("registered name of {} bytes", name.len()) });
    }
    Ok(name)
}

type Opt = Option<u64>;
type Corr = Option<CorrelationId>;

/// Decodes one frame's bytes (tag, head, payload; no length prefix).
pub fn decode_frame(bytes: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let (&t, rest) = bytes.split_first().ok_or(DecodeError::Malformed { kind: "frame", reason: "empty".into() })?;
    let (head, used) = match t {
        tag::SEND => {
            let ((to, from, corr), n) = get::<(u64, Opt, Corr)>(rest, "send")?;
            (Head::Send { to, from, corr }, n)
        }
        tag::SEND_NAMED => {
            let ((name, from, corr), n) = get::<(&str, Opt, Corr)>(rest, "send_named")?;
            (Head::SendNamed { name: name_ok(name, "send_named")?, from, corr }, n)
        }
        tag::CALL => {
            let ((call_id, to, from, corr), n) = get::<(u64, u64, Opt, Corr)>(rest, "call")?;
            (Head::Call { call_id, to, from, corr }, n)
        }
        tag::CALL_NAMED => {
            let ((call_id, name, from, corr), n) = get::<(u64, &str, Opt, Corr)>(rest, "call_named")?;
            (Head::CallNamed { call_id, name: name_ok(name, "call_named")?, from, corr }, n)
        }
        tag::REPLY => {
            let ((call_id, result), n) = get::<(u64, Result<(), RemoteCallError>)>(rest, "reply")?;
            (Head::Reply { call_id, result }, n)
        }
        tag::LINK => {
            let ((from, to), n) = get::<(u64, u64)>(rest, "link")?;
            (Head::Link { from, to }, n)
        }
        tag::UNLINK => {
            let ((from, to), n) = get::<(u64, u64)>(rest, "unlink")?;
            (Head::Unlink { from, to }, n)
        }
        tag::MONITOR => {
            let ((watcher, target, mref), n) = get::<(u64, u64, MonitorRef)>(rest, "monitor")?;
            (Head::Monitor { watcher, target, mref }, n)
        }
        tag::DEMONITOR => {
            let ((watcher, target, mref), n) = get::<(u64, u64, MonitorRef)>(rest, "demonitor")?;
            (Head::Demonitor { watcher, target, mref }, n)
        }
        tag::EXIT => {
            let ((from, to, reason, kill), n) = get::<(u64, u64, ExitReason, bool)>(rest, "exit")?;
            (Head::Exit { from, to, reason, kill }, n)
        }
        tag::DOWN => {
            let ((watcher, mref, pid, reason), n) = get::<(u64, MonitorRef, u64, ExitReason)>(rest, "down")?;
            (Head::Down { watcher, mref, pid, reason }, n)
        }
        t if (tag::CONTROL_FIRST..=tag::CONTROL_LAST).contains(&t) => (Head::Control { tag: t }, 0),
        t => return Err(DecodeError::UnknownTag(t)),
    };
    let payload = &rest[used..];
    if !head.has_payload() && !payload.is_empty() {
        return Err(DecodeError::Malformed { kind: head.kind(), reason: format!("{} trailing bytes", payload.len()) });
    }
    Ok(Frame { head, payload })
}

/// Reassembles frames from a byte stream (sans-IO: feed it chunks, take frames out).
///
/// ```
/// use cluster_proto::codec::{encode_frame, FrameReader};
/// use cluster_proto::frame::{Head, Limits};
///
/// let limits = Limits::DEFAULT;
/// let mut wire = Vec::new();
/// encode_frame(&mut wire, &Head::Link { from: 1, to: 2 }, &limits).unwrap();
/// let mut reader = FrameReader::new(limits);
/// reader.extend(&wire[..3]).unwrap(); // a partial frame yields nothing yet
/// assert!(reader.next_frame().unwrap().is_none());
/// reader.extend(&wire[3..]).unwrap();
/// assert_eq!(reader.next_frame().unwrap().unwrap().head, Head::Link { from: 1, to: 2 });
/// reader.finish().unwrap(); // nothing left half-way
/// ```
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    pos: usize,
    limits: Limits,
}

impl FrameReader {
    /// An empty reader enforcing `limits`.
    pub fn new(limits: Limits) -> FrameReader {
        FrameReader { buf: Vec::new(), pos: 0, limits }
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Adds a chunk of at most [`MAX_CHUNK`] bytes. Take every complete frame out
    /// ([`next_frame`](Self::next_frame) until `None`) before adding the next chunk: the reader
    /// then never holds more than one partial frame plus one chunk.
    pub fn extend(&mut self, chunk: &[u8]) -> Result<(), DecodeError> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let after = self.buf.len() + chunk.len();
        if chunk.len() > MAX_CHUNK || after > PREFIX_LEN + self.limits.max_frame as usize + MAX_CHUNK {
            return Err(DecodeError::Overflow(after));
        }
        self.buf.extend_from_slice(chunk);
        // Release a large buffer once it has drained (a big frame passed through).
        if self.buf.is_empty() && self.buf.capacity() > 4 * MAX_CHUNK {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// The next complete frame, `None` if more bytes are needed. After an error the reader must
    /// be discarded (as must the stream).
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, DecodeError> {
        let avail = &self.buf[self.pos..];
        let Some(prefix) = avail.first_chunk::<PREFIX_LEN>() else { return Ok(None) };
        let len = u32::from_le_bytes(*prefix);
        if len > self.limits.max_frame {
            return Err(DecodeError::Oversized { len: len.into(), max: self.limits.max_frame });
        }
        let len = len as usize;
        if avail.len() < PREFIX_LEN + len {
            return Ok(None);
        }
        let start = self.pos + PREFIX_LEN;
        self.pos = start + len;
        decode_frame(&self.buf[start..start + len]).map(Some)
    }

    /// Checks that the stream ended on a frame boundary.
    pub fn finish(&self) -> Result<(), DecodeError> {
        let have = self.buffered();
        if have == 0 {
            return Ok(());
        }
        let need = self.buf[self.pos..]
            .first_chunk::<PREFIX_LEN>()
            .map_or(PREFIX_LEN, |p| PREFIX_LEN + u32::from_le_bytes(*p) as usize);
        Err(DecodeError::Truncated { have, need })
    }
}

mod guard;
#[cfg(test)]
mod tests;

pub use guard::MAX_DEPTH;

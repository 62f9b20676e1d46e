//! The handshake: who is on the other end of a new connection.
//!
//! After TLS has authenticated both ends as members of the cluster (**G9**), the dialing node
//! opens a stream and writes a [`Hello`]; the accepting node answers with [`Reply::Welcome`]
//! (its own `Hello`) or [`Reply::Reject`] and closes. No process frame moves before a
//! `Welcome`.
//!
//! One exchange has a third step (Erlang distribution's `alive` status): when the acceptor is
//! already connected to the very incarnation that dials it, it cannot tell a peer that lost the
//! old connection and dials again (the new one must replace it) from a crossed dial the peer has
//! already abandoned (the old one must stay: it may carry messages). So it answers
//! [`Reply::Alive`], and the dialer decides with a [`Confirm`]: `replace: true` and the acceptor
//! goes on to `Welcome` (or `Reject`), `replace: false` and the acceptor closes the new
//! connection, leaving the old one alone.
//!
//! ```text
//! dialer                         acceptor
//!   Hello  ─────────────────────▶
//!          ◀───────────────────── Welcome | Reject | Alive
//!   Confirm{replace} ───────────▶                    (only after Alive)
//!          ◀───────────────────── Welcome | Reject   (only after replace: true)
//! ```
//!
//! On the wire each message is
//!
//! ```text
//! [magic "SOMA"][version: u16 LE][len: u16 LE][body: bincode]   (len ≤ MAX_MESSAGE)
//! ```
//!
//! so a peer speaking another protocol version is recognised before its body is decoded.
//!
//! The checks are pure functions ([`check_hello`], [`check_welcome`]); the node adds the one
//! check that needs TLS state (the name in the `Hello` must be a name in the peer's certificate).

use serde::{Deserialize, Serialize};

use crate::frame::PROTOCOL_VERSION;
use crate::pid::NodeId;

/// The first bytes of every handshake message.
pub const MAGIC: [u8; 4] = *b"SOMA";

/// Envelope bytes before the body: magic, version, length.
pub const ENVELOPE_LEN: usize = 8;

/// Largest handshake body.
pub const MAX_MESSAGE: usize = 1024;

/// A node introducing itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The cluster's name; nodes of different clusters never talk.
    pub cluster: String,
    /// The node's name (must be in its certificate).
    pub node: String,
    /// The node's creation (incarnation), see [`NodeId`].
    pub creation: u64,
    /// The largest frame the node accepts.
    pub max_frame: u32,
}

/// The accepting node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Accepted; the acceptor's own identity.
    Welcome(Hello),
    /// Refused, and why. The connection is closed.
    Reject(RejectReason),
    /// The acceptor is connected to the dialer's incarnation already: the dialer must say with
    /// a [`Confirm`] whether this connection replaces that one. Sent at most once per handshake.
    Alive,
}

/// The dialer's answer to [`Reply::Alive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirm {
    /// `true`: the dialer has lost the old connection and this one replaces it; `false`: this
    /// dial was superseded on the dialer's side (the old connection is the one) and is dropped.
    pub replace: bool,
}

/// Why a handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RejectReason {
    /// The peer speaks another protocol version.
    #[error("protocol version {theirs} is not ours ({ours})")]
    Version {
        /// Ours.
        ours: u16,
        /// Theirs.
        theirs: u16,
    },
    /// The peer belongs to another cluster.
    #[error("cluster {theirs:?} is not ours ({ours:?})")]
    WrongCluster {
        /// Ours.
        ours: String,
        /// Theirs.
        theirs: String,
    },
    /// The name is not a valid node name.
    #[error("bad node name: {0}")]
    BadName(String),
    /// The name is not one the peer's certificate was issued for.
    #[error("node name {0:?} is not in the peer's certificate")]
    NotInCertificate(String),
    /// The peer claims to be this node.
    #[error("connection to self")]
    SelfConnection,
    /// A connection between the two nodes exists or is being set up and wins over this one.
    #[error("duplicate connection")]
    Duplicate,
    /// The peer is an older incarnation of a node that has already connected as a newer one.
    #[error("stale incarnation {theirs} (current {current})")]
    Stale {
        /// The incarnation offered.
        theirs: u64,
        /// The one known.
        current: u64,
    },
    /// The node is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// The frame limits of the two nodes are incompatible (below the protocol's minimum).
    #[error("max frame {0} below the minimum")]
    FrameLimit(u32),
}

/// Why handshake bytes are not a handshake message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The bytes do not start with [`MAGIC`].
    #[error("not a soma handshake (bad magic)")]
    BadMagic,
    /// Another protocol version.
    #[error("protocol version {theirs} is not ours ({ours})")]
    Version {
        /// Ours.
        ours: u16,
        /// Theirs.
        theirs: u16,
    },
    /// A body longer than [`MAX_MESSAGE`].
    #[error("handshake message of {0} bytes exceeds {MAX_MESSAGE}")]
    TooLong(usize),
    /// The stream ended inside the message.
    #[error("truncated handshake ({0} bytes)")]
    Truncated(usize),
    /// The body did not decode, or left bytes behind.
    #[error("malformed handshake: {0}")]
    Malformed(String),
    /// The peer refused us.
    #[error("rejected by the peer: {0}")]
    Rejected(RejectReason),
    /// The peer's answer does not match what we dialed (another name, or a bad identity).
    #[error("unexpected peer: {0}")]
    Unexpected(String),
}

/// Smallest `max_frame` a node may announce: room for any head and a small message.
pub const MIN_MAX_FRAME: u32 = 64 << 10;

fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    // A handshake message has only short strings and integers; it always fits.
    let _ = crate::codec::encode_payload(&mut body, msg);
    let mut out = Vec::with_capacity(ENVELOPE_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len().min(u16::MAX as usize) as u16).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Parses the envelope; `Ok(None)` while more bytes are needed.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<Option<(T, usize)>, HandshakeError> {
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(HandshakeError::BadMagic);
    }
    let Some(env) = bytes.first_chunk::<ENVELOPE_LEN>() else { return Ok(None) };
    let version = u16::from_le_bytes([env[4], env[5]]);
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version { ours: PROTOCOL_VERSION, theirs: version });
    }
    let len = u16::from_le_bytes([env[6], env[7]]) as usize;
    if len > MAX_MESSAGE {
        return Err(HandshakeError::TooLong(len));
    }
    let Some(body) = bytes.get(ENVELOPE_LEN..ENVELOPE_LEN + len) else { return Ok(None) };
    let msg = crate::codec::decode_payload::<T>(body).map_err(|e| HandshakeError::Malformed(e.to_string()))?;
    Ok(Some((msg, ENVELOPE_LEN + len)))
}

/// Encodes a `Hello` with its envelope.
pub fn encode_hello(hello: &Hello) -> Vec<u8> {
    encode(hello)
}

/// Encodes a `Reply` with its envelope.
pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    encode(reply)
}

/// Encodes a `Confirm` with its envelope.
pub fn encode_confirm(confirm: &Confirm) -> Vec<u8> {
    encode(confirm)
}

/// Decodes a `Confirm`, as [`decode_hello`].
pub fn decode_confirm(bytes: &[u8]) -> Result<Option<(Confirm, usize)>, HandshakeError> {
    decode(bytes)
}

/// Decodes a `Hello` from the start of `bytes`: the message and the bytes it used, or `None`
/// while incomplete. Use [`finish`] at end of stream.
pub fn decode_hello(bytes: &[u8]) -> Result<Option<(Hello, usize)>, HandshakeError> {
    decode(bytes)
}

/// Decodes a `Reply`, as [`decode_hello`].
pub fn decode_reply(bytes: &[u8]) -> Result<Option<(Reply, usize)>, HandshakeError> {
    decode(bytes)
}

/// The error for a stream that ended after `have` bytes without a complete message.
pub fn finish(have: usize) -> HandshakeError {
    HandshakeError::Truncated(have)
}

/// This node, as the checks see it.
#[derive(Debug, Clone, Copy)]
pub struct Local<'a> {
    /// Cluster name.
    pub cluster: &'a str,
    /// Node name.
    pub node: &'a str,
}

fn check_identity(local: &Local<'_>, h: &Hello) -> Result<(), RejectReason> {
    if h.cluster != local.cluster {
        return Err(RejectReason::WrongCluster { ours: local.cluster.to_owned(), theirs: h.cluster.clone() });
    }
    NodeId::validate_name(&h.node).map_err(|e| RejectReason::BadName(e.to_string()))?;
    if h.node == local.node {
        return Err(RejectReason::SelfConnection);
    }
    if h.max_frame < MIN_MAX_FRAME {
        return Err(RejectReason::FrameLimit(h.max_frame));
    }
    Ok(())
}

/// The acceptor's checks of a dialer's `Hello` that need no connection state: same cluster, a
/// valid name that is not ours, a usable frame limit. (Certificate name, duplicates and stale
/// incarnations are the node's to check.)
pub fn check_hello(local: &Local<'_>, hello: &Hello) -> Result<(), RejectReason> {
    check_identity(local, hello)
}

/// The dialer's checks of the acceptor's reply to a connection made to `expected` (the name
/// TLS verified in the acceptor's certificate): a `Welcome` from that very node, with valid
/// fields. ([`Reply::Alive`] is the dialer's to answer before this check; here it is an
/// error, as is a second one after a [`Confirm`].)
pub fn check_welcome(local: &Local<'_>, expected: &str, reply: Reply) -> Result<Hello, HandshakeError> {
    match reply {
        Reply::Reject(r) => Err(HandshakeError::Rejected(r)),
        Reply::Alive => Err(HandshakeError::Unexpected("an alive status where a welcome was due".into())),
        Reply::Welcome(h) => {
            check_identity(local, &h).map_err(|r| HandshakeError::Unexpected(r.to_string()))?;
            if h.node != expected {
                return Err(HandshakeError::Unexpected(format!("dialed {expected:?}, answered by {:?}", h.node)));
            }
            Ok(h)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(node: &str) -> Hello {
        Hello { cluster: "c1".into(), node: node.into(), creation: 7, max_frame: 1 << 20 }
    }

    const LOCAL: Local<'static> = Local { cluster: "c1", node: "a" };

    #[test]
    fn hello_round_trips_byte_by_byte() {
        let h = hello("b");
        let wire = encode_hello(&h);
        for cut in 0..wire.len() {
            assert_eq!(decode_hello(&wire[..cut]), Ok(None), "prefix of {cut} bytes is incomplete");
        }
        let mut more = wire.clone();
        more.extend_from_slice(b"next");
        assert_eq!(decode_hello(&more), Ok(Some((h, wire.len()))));
    }

    #[test]
    fn reply_round_trips() {
        for r in [Reply::Welcome(hello("b")), Reply::Reject(RejectReason::Duplicate), Reply::Alive] {
            let wire = encode_reply(&r);
            assert_eq!(decode_reply(&wire), Ok(Some((r, wire.len()))));
        }
        for c in [Confirm { replace: true }, Confirm { replace: false }] {
            let wire = encode_confirm(&c);
            assert_eq!(decode_confirm(&wire[..wire.len() - 1]), Ok(None));
            assert_eq!(decode_confirm(&wire), Ok(Some((c, wire.len()))));
        }
        // A bool is one byte, 0 or 1: anything else is malformed, not `true`.
        let mut wire = encode_confirm(&Confirm { replace: true });
        let n = wire.len();
        wire[n - 1] = 2;
        assert!(matches!(decode_confirm(&wire), Err(HandshakeError::Malformed(_))));
    }

    #[test]
    fn bad_magic_version_and_length_are_refused_early() {
        assert_eq!(decode_hello(b"GET / HTTP/1.1"), Err(HandshakeError::BadMagic));
        assert_eq!(decode_hello(b"SOX"), Err(HandshakeError::BadMagic));
        let mut wire = encode_hello(&hello("b"));
        wire[4] = 9;
        assert_eq!(decode_hello(&wire), Err(HandshakeError::Version { ours: PROTOCOL_VERSION, theirs: 9 }));
        let mut wire = encode_hello(&hello("b"));
        wire[6..8].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(decode_hello(&wire), Err(HandshakeError::TooLong(u16::MAX as usize)));
    }

    #[test]
    fn garbage_body_is_malformed_not_a_panic() {
        let mut wire = encode_hello(&hello("b"));
        let n = wire.len();
        wire[ENVELOPE_LEN..n].fill(0xFF);
        assert!(matches!(decode_hello(&wire), Err(HandshakeError::Malformed(_))));
    }

    #[test]
    fn checks_of_a_hello() {
        assert_eq!(check_hello(&LOCAL, &hello("b")), Ok(()));
        assert_eq!(check_hello(&LOCAL, &hello("a")), Err(RejectReason::SelfConnection));
        let mut h = hello("b");
        h.cluster = "other".into();
        assert!(matches!(check_hello(&LOCAL, &h), Err(RejectReason::WrongCluster { .. })));
        assert!(matches!(check_hello(&LOCAL, &hello("bad name")), Err(RejectReason::BadName(_))));
        let mut h = hello("b");
        h.max_frame = 10;
        assert_eq!(check_hello(&LOCAL, &h), Err(RejectReason::FrameLimit(10)));
    }

    #[test]
    fn checks_of_a_welcome() {
        assert_eq!(check_welcome(&LOCAL, "b", Reply::Welcome(hello("b"))), Ok(hello("b")));
        assert!(matches!(check_welcome(&LOCAL, "b", Reply::Welcome(hello("c"))), Err(HandshakeError::Unexpected(_))));
        assert_eq!(
            check_welcome(&LOCAL, "b", Reply::Reject(RejectReason::ShuttingDown)),
            Err(HandshakeError::Rejected(RejectReason::ShuttingDown))
        );
        assert!(matches!(check_welcome(&LOCAL, "b", Reply::Alive), Err(HandshakeError::Unexpected(_))));
    }
}

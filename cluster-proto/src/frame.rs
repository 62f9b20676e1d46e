//! Frames: what nodes say to each other once connected.
//!
//! ## Layout
//!
//! A frame on a stream is
//!
//! ```text
//! [len: u32 LE][tag: u8][head: bincode][payload: raw bytes to the end of the frame]
//! ```
//!
//! `len` counts everything after itself (tag + head + payload) and is at most
//! [`Limits::max_frame`]; the tag says which [`Head`] follows; the head's fields are encoded by
//! bincode 2 (standard config: little-endian varints) in [`codec`](crate::codec); the payload, if
//! the frame kind has one, is the rest of the frame — a message or call request/reply already
//! encoded by [`codec::encode_payload`](crate::codec::encode_payload), so the receiving node can
//! decode it into the target behaviour's own type (and only there).
//!
//! ## PIDs on the wire
//!
//! A process frame always involves one process on each side of the connection, so PIDs travel
//! as bare serials: `to`/`watcher`/`target` name a process of the *receiving* node, `from`/`pid`
//! one of the *sending* node, each bound to the node incarnation (name + creation) fixed by the
//! handshake. Hence decoding a frame never interns a node name (a hostile peer cannot fill the
//! interner, **G8**), and a frame can never address a process of another incarnation (**G1**).
//!
//! ## Tags
//!
//! | range | use |
//! |---|---|
//! | `0x01..=0x0B` | process traffic ([`Head`] variants) |
//! | `0x20..=0x7F` | reserved for control traffic of later layers (gossip, groups, RPC: admin, Raft, spawn ...): decoded as [`Head::Control`] with the raw body, routed by the node |
//! | anything else | [`DecodeError::UnknownTag`] |

use serde::{Deserialize, Serialize};

use crate::exit::{CorrelationId, ExitReason, MonitorRef};

/// The wire protocol version, sent in the handshake. Bumped on any incompatible change; nodes of
/// different versions refuse each other at the handshake instead of misreading frames.
///
/// 2: remote spawn is an RPC service (tags 0x21/0x22 retired, `SpawnRequest` without its id).
pub const PROTOCOL_VERSION: u16 = 2;

/// Explicit limits of the codec (**G8**). Both ends enforce their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame (tag + head + payload), in bytes. A length prefix above it is refused before
    /// anything is buffered.
    pub max_frame: u32,
    /// Most frames a reader decodes from its buffer before it yields to other work.
    pub max_batch_frames: u32,
    /// Most bytes a writer coalesces into one stream write.
    pub max_batch_bytes: u32,
}

impl Limits {
    /// The defaults: 8 MiB frames (room for a large LLM context in one message), batches of 1,024
    /// frames or 256 KiB.
    pub const DEFAULT: Limits = Limits { max_frame: 8 << 20, max_batch_frames: 1024, max_batch_bytes: 256 << 10 };

    /// The largest payload a frame can carry with these limits (the frame limit minus the
    /// largest head).
    pub const fn max_payload(&self) -> usize {
        (self.max_frame as usize).saturating_sub(MAX_HEAD_LEN)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Longest registered name a frame may carry (the node registry's own limit).
pub const MAX_NAME_LEN: usize = 255;

/// Upper bound of an encoded head other than `Exit`/`Down`/`Reply` crash texts (which are
/// bounded by the frame limit itself): tag + a name + a handful of varints.
pub const MAX_HEAD_LEN: usize = 1 + MAX_NAME_LEN + 8 + 8 * 10;

/// Why a remote call produced no reply. Sent back in a [`Head::Reply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteCallError {
    /// No such process (or registered name) on the callee's node.
    #[error("no such process")]
    NoProc,
    /// The callee exited (or crashed) before replying.
    #[error("the process exited before replying")]
    Exited,
    /// The callee's bounded mailbox was full.
    #[error("the process's mailbox is full")]
    Full,
    /// The request could not be decoded into the callee's call type, or the reply could not be
    /// encoded.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The callee's node has too many remote calls in progress from this node.
    #[error("the remote node is busy")]
    Busy,
}

/// A frame's head: its kind and fixed fields. Frames marked *payload* are followed by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head<'a> {
    /// *payload*: a message (cast) to process `to`.
    Send {
        /// Receiving node's process.
        to: u64,
        /// Sending node's process, if sent by one.
        from: Option<u64>,
        /// Correlation ID.
        corr: Option<CorrelationId>,
    },
    /// *payload*: a message to the process registered as `name` on the receiving node.
    SendNamed {
        /// Registered name.
        name: &'a str,
        /// Sending node's process, if sent by one.
        from: Option<u64>,
        /// Correlation ID.
        corr: Option<CorrelationId>,
    },
    /// *payload*: a call request to process `to`; answered by a [`Head::Reply`] with `call_id`.
    Call {
        /// Chosen by the caller's node, unique among its pending calls on this connection.
        call_id: u64,
        /// Receiving node's process.
        to: u64,
        /// Calling process, if any.
        from: Option<u64>,
        /// Correlation ID.
        corr: Option<CorrelationId>,
    },
    /// *payload*: a call request to the process registered as `name`.
    CallNamed {
        /// As in [`Head::Call`].
        call_id: u64,
        /// Registered name.
        name: &'a str,
        /// Calling process, if any.
        from: Option<u64>,
        /// Correlation ID.
        corr: Option<CorrelationId>,
    },
    /// *payload if `Ok`*: the reply to call `call_id`.
    Reply {
        /// The call this answers.
        call_id: u64,
        /// `Ok` when the payload holds the reply.
        result: Result<(), RemoteCallError>,
    },
    /// `from` (sender's node) links to `to` (receiver's node).
    Link {
        /// Sender's process.
        from: u64,
        /// Receiver's process.
        to: u64,
    },
    /// `from` removes its link to `to`.
    Unlink {
        /// Sender's process.
        from: u64,
        /// Receiver's process.
        to: u64,
    },
    /// `watcher` (sender's node) monitors `target` (receiver's node) under `mref`.
    Monitor {
        /// Sender's process.
        watcher: u64,
        /// Receiver's process.
        target: u64,
        /// The watcher node's reference.
        mref: MonitorRef,
    },
    /// `watcher` drops monitor `mref` of `target`.
    Demonitor {
        /// Sender's process.
        watcher: u64,
        /// Receiver's process.
        target: u64,
        /// The watcher node's reference.
        mref: MonitorRef,
    },
    /// An exit signal from `from` (sender's node) to `to`: a linked process exited, or an
    /// explicit `exit`/`kill`.
    Exit {
        /// Sender's process.
        from: u64,
        /// Receiver's process.
        to: u64,
        /// The reason.
        reason: ExitReason,
        /// Untrappable (a kill).
        kill: bool,
    },
    /// Monitor `mref` of `watcher` (receiver's node) fired: `pid` (sender's node) exited.
    Down {
        /// Receiver's process that monitored.
        watcher: u64,
        /// The watcher node's reference.
        mref: MonitorRef,
        /// Sender's process that exited.
        pid: u64,
        /// Its exit reason.
        reason: ExitReason,
    },
    /// *payload*: control traffic of a later layer (tag in `0x20..=0x7F`), routed by the node.
    Control {
        /// The tag.
        tag: u8,
    },
}

impl Head<'_> {
    /// Whether this kind of frame is followed by a payload.
    pub fn has_payload(&self) -> bool {
        match self {
            Head::Send { .. } | Head::SendNamed { .. } | Head::Call { .. } | Head::CallNamed { .. } => true,
            Head::Control { .. } => true,
            Head::Reply { result, .. } => result.is_ok(),
            _ => false,
        }
    }

    /// The frame's tag byte.
    pub fn tag(&self) -> u8 {
        match self {
            Head::Send { .. } => tag::SEND,
            Head::SendNamed { .. } => tag::SEND_NAMED,
            Head::Call { .. } => tag::CALL,
            Head::CallNamed { .. } => tag::CALL_NAMED,
            Head::Reply { .. } => tag::REPLY,
            Head::Link { .. } => tag::LINK,
            Head::Unlink { .. } => tag::UNLINK,
            Head::Monitor { .. } => tag::MONITOR,
            Head::Demonitor { .. } => tag::DEMONITOR,
            Head::Exit { .. } => tag::EXIT,
            Head::Down { .. } => tag::DOWN,
            Head::Control { tag } => *tag,
        }
    }

    /// A short name of the frame kind, for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Head::Send { .. } => "send",
            Head::SendNamed { .. } => "send_named",
            Head::Call { .. } => "call",
            Head::CallNamed { .. } => "call_named",
            Head::Reply { .. } => "reply",
            Head::Link { .. } => "link",
            Head::Unlink { .. } => "unlink",
            Head::Monitor { .. } => "monitor",
            Head::Demonitor { .. } => "demonitor",
            Head::Exit { .. } => "exit",
            Head::Down { .. } => "down",
            Head::Control { .. } => "control",
        }
    }
}

/// A decoded frame, borrowing from the reader's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Kind and fields.
    pub head: Head<'a>,
    /// The payload (empty for kinds without one).
    pub payload: &'a [u8],
}

/// Tag bytes.
pub mod tag {
    /// [`Head::Send`](super::Head::Send).
    pub const SEND: u8 = 0x01;
    /// [`Head::SendNamed`](super::Head::SendNamed).
    pub const SEND_NAMED: u8 = 0x02;
    /// [`Head::Call`](super::Head::Call).
    pub const CALL: u8 = 0x03;
    /// [`Head::CallNamed`](super::Head::CallNamed).
    pub const CALL_NAMED: u8 = 0x04;
    /// [`Head::Reply`](super::Head::Reply).
    pub const REPLY: u8 = 0x05;
    /// [`Head::Link`](super::Head::Link).
    pub const LINK: u8 = 0x06;
    /// [`Head::Unlink`](super::Head::Unlink).
    pub const UNLINK: u8 = 0x07;
    /// [`Head::Monitor`](super::Head::Monitor).
    pub const MONITOR: u8 = 0x08;
    /// [`Head::Demonitor`](super::Head::Demonitor).
    pub const DEMONITOR: u8 = 0x09;
    /// [`Head::Exit`](super::Head::Exit).
    pub const EXIT: u8 = 0x0A;
    /// [`Head::Down`](super::Head::Down).
    pub const DOWN: u8 = 0x0B;
    /// First tag reserved for control traffic ([`Head::Control`](super::Head::Control)).
    pub const CONTROL_FIRST: u8 = 0x20;
    /// Last tag reserved for control traffic.
    pub const CONTROL_LAST: u8 = 0x7F;
    /// Control: a gossip message (membership), body = a chitchat message.
    pub const GOSSIP: u8 = 0x20;
    // 0x21 and 0x22 were remote spawn's own request and reply; spawn is a service of `RPC` now.
    // Not reused, so that a frame of an older node is never read as something else.
    /// Control: process-group replication, body = [`PgMessage`](crate::control::PgMessage).
    pub const PG: u8 = 0x23;
    /// Control: a request to a service of the receiving node (`control::RpcRequest`).
    pub const RPC: u8 = 0x24;
    /// Control: the answer to an `RPC` request (`control::RpcReply`).
    pub const RPC_REPLY: u8 = 0x25;
}

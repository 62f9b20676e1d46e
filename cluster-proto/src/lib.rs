//! # cluster-proto — soma's wire types
//!
//! The types every layer of soma agrees on and that cross the wire between nodes:
//!
//! * [`Pid`] — a process identifier (guarantee **G1**): node name, node *creation*
//!   (incarnation) and serial. It is `Copy`, 16 bytes, and has exactly one textual form,
//!   `<name.creation.serial>`, that round-trips through [`Display`](std::fmt::Display) and
//!   [`FromStr`](std::str::FromStr).
//! * [`NodeId`] — an interned `(name, creation)` pair. Interning keeps `Pid` small and `Copy`;
//!   the interner is bounded ([`NodeId::MAX_INTERNED`]) so hostile input cannot grow it without
//!   limit (**G8**).
//! * [`ExitReason`] — why a process exited (normal, shutdown, killed, crashed, noproc,
//!   noconnection).
//! * [`CorrelationId`] — the ID that ties a message to everything done while handling it.
//! * [`MonitorRef`] — the reference returned by a monitor and carried by its `Down` notification.
//!
//! And the wire protocol between nodes, as pure code (no I/O, no clock):
//!
//! * [`handshake`] — the first exchange on a new connection ([`handshake::Hello`]): protocol
//!   version, cluster, node name and creation.
//! * [`frame`] — what connected nodes say: send, call and reply, link/unlink, monitor/demonitor,
//!   exit and down, and tags reserved for later control traffic; with the codec's [`frame::Limits`].
//! * [`codec`] — frames to bytes and back (bincode 2, only here), with clear errors for
//!   malformed, truncated, oversized or unknown frames.
//! * [`control`] — bodies of control frames: process groups, RPC requests and replies, and the
//!   remote-spawn service's request and answer.
#![deny(missing_docs)]

pub mod codec;
pub mod control;
mod exit;
pub mod frame;
pub mod handshake;
mod pid;

pub use exit::{CorrelationId, ExitReason, MonitorRef};
pub use pid::{NodeId, NodeNameError, Pid, PidParseError, PidParts};

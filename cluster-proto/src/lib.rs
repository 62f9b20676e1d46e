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
//! This crate has no I/O and no clock. The wire codec and frames come with the distribution layer.
#![deny(missing_docs)]

mod exit;
mod pid;

pub use exit::{CorrelationId, ExitReason, MonitorRef};
pub use pid::{NodeId, NodeNameError, Pid, PidParseError};

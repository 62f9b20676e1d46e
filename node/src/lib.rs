//! # soma — a distributed, observability-first runtime for AI-agent systems
//!
//! Every agent is a lightweight process with a mailbox, supervised, inspectable while it runs,
//! and addressable by its [`Pid`]. This crate is the node runtime (the `soma` binary is built on
//! it). The layers (see `ARCHITECTURE.md`):
//!
//! * **AgentProcess** — [`Node`], [`Behaviour`], [`Context`], [`Addr`]: spawn, send, call,
//!   links, monitors, exit reasons, registry; introspection without instrumentation
//!   ([`Node::info`], [`Node::peek`], [`Node::state`], [`Node::trace`], [`Node::tree`]).
//! * **Immune** (local part) — [`supervision`]: OTP supervisors whose decisions come from the
//!   pure `supervisor` crate.
//!
//! ```
//! use soma::{Behaviour, Context, Error, Node, NodeConfig, SpawnOpts};
//! use std::time::Duration;
//!
//! struct Counter(u64);
//!
//! impl Behaviour for Counter {
//!     type Args = u64;
//!     type Msg = u64;
//!     type Call = ();
//!     type Reply = u64;
//!     async fn init(_ctx: &mut Context<Self>, start: u64) -> Result<Self, Error> {
//!         Ok(Counter(start))
//!     }
//!     async fn handle(&mut self, _ctx: &mut Context<Self>, n: u64) -> Result<(), Error> {
//!         self.0 += n;
//!         Ok(())
//!     }
//!     async fn handle_call(&mut self, _ctx: &mut Context<Self>, _: ()) -> Result<u64, Error> {
//!         Ok(self.0)
//!     }
//! }
//!
//! # #[tokio::main] async fn main() {
//! let node = Node::start(NodeConfig::named("doc")).unwrap();
//! let counter = node.spawn::<Counter>(10, SpawnOpts::labeled("counter")).unwrap();
//! counter.send(5).unwrap();
//! assert_eq!(counter.call((), Duration::from_secs(1)).await.unwrap(), 15);
//! # }
//! ```
#![deny(missing_docs)]

pub mod admin;
pub mod bench;
pub mod csup;
pub mod demo;
pub mod dist;
pub mod membership;
pub mod pg;
pub mod process;
pub mod raft;
pub mod supervision;
pub mod tls;

pub use cluster_proto::{control, CorrelationId, ExitReason, MonitorRef, NodeId, Pid, PidParts};
pub use dist::{DistConfig, DistStats, PidRef};
pub use process::behaviour::{Behaviour, Down, Error, Message};
pub use process::context::Context;
pub use process::introspect::{ProcessInfo, ProcessStatus, TreeNode};
pub use process::node::{
    Addr, CallError, IntrospectError, MailboxKind, Node, NodeConfig, NodeError, RegistryError, SendError, SpawnError,
    SpawnOpts, TraceStream,
};
pub use process::trace::{TraceEvent, TraceKind};

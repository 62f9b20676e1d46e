//! AgentProcess: the process primitive. See `ARCHITECTURE.md` for the design and invariants.

pub mod behaviour;
pub(crate) mod cell;
pub mod context;
pub mod introspect;
pub(crate) mod lock;
pub mod node;
pub(crate) mod queue;
pub(crate) mod runner;
pub mod trace;

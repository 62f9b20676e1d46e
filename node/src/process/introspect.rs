//! What introspection returns: process info, status, the supervision tree.

use cluster_proto::Pid;
use serde::{Deserialize, Serialize};

/// What a process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessStatus {
    /// Handling a message, or scheduled with messages to handle.
    Running,
    /// Idle, waiting for messages.
    Waiting,
    /// Suspended by an operator: messages queue up unhandled.
    Suspended,
    /// Exiting (running `terminate` or being torn down).
    Exiting,
}

/// A snapshot of one process, taken without its cooperation (`soma info PID`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// The process.
    pub pid: Pid,
    /// Its human-readable label, if spawned with one.
    pub label: Option<String>,
    /// Its behaviour's name.
    pub behaviour: String,
    /// What it is doing.
    pub status: ProcessStatus,
    /// Messages queued, not yet handled.
    pub mailbox_depth: usize,
    /// The mailbox bound, if bounded.
    pub mailbox_capacity: Option<usize>,
    /// Messages (casts, calls, trapped exits, downs) taken for handling so far.
    pub received: u64,
    /// Messages sent and calls made so far.
    pub sent: u64,
    /// Linked processes.
    pub links: Vec<Pid>,
    /// Processes this one monitors.
    pub monitors: Vec<Pid>,
    /// Processes monitoring this one.
    pub monitored_by: Vec<Pid>,
    /// The process that spawned it (its supervisor, for supervised processes).
    pub parent: Option<Pid>,
    /// Its registered name, if any.
    pub registered_name: Option<String>,
    /// Whether it traps exits.
    pub trap_exit: bool,
    /// Whether live tracing is on.
    pub traced: bool,
    /// Estimated bytes: the process cell, mailbox buffers, link/monitor sets, trace ring, and
    /// the state's own estimate of its heap (`Behaviour::heap_size`, when idle).
    pub memory_bytes: usize,
}

/// One node of a node's process tree (parents → children), as `soma tree` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeNode {
    /// The process.
    pub pid: Pid,
    /// Its label.
    pub label: Option<String>,
    /// Its behaviour.
    pub behaviour: String,
    /// Its status.
    pub status: ProcessStatus,
    /// Processes whose parent it is, in spawn order.
    pub children: Vec<TreeNode>,
}

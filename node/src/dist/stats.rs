//! Counters of the distribution layer (what was dropped, refused or closed, and why).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Live counters, shared by every session of a node.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub frames_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub to_dead_pid: AtomicU64,
    pub undecodable: AtomicU64,
    pub mailbox_full: AtomicU64,
    pub signals_dropped: AtomicU64,
    pub control_ignored: AtomicU64,
    pub busy: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub floods: AtomicU64,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub direct_writes: AtomicU64,
    pub inline_calls: AtomicU64,
}

/// A snapshot of the distribution counters of a node ([`Node::dist_stats`](crate::Node::dist_stats)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DistStats {
    /// Frames received.
    pub frames_in: u64,
    /// Bytes written to peers.
    pub bytes_out: u64,
    /// Bytes read from peers.
    pub bytes_in: u64,
    /// Messages and signals for processes that no longer exist (dropped, G2).
    pub to_dead_pid: u64,
    /// Messages or requests that did not decode into the target's type (dropped and logged).
    pub undecodable: u64,
    /// Messages from peers refused by a full bounded mailbox (dropped).
    pub mailbox_full: u64,
    /// Signals dropped because a lane was far past its capacity.
    pub signals_dropped: u64,
    /// Control frames no layer handles yet (dropped).
    pub control_ignored: u64,
    /// Remote calls answered `Busy`.
    pub busy: u64,
    /// Connections closed for a protocol error (garbage, truncated, oversized or unknown frames).
    pub protocol_errors: u64,
    /// Connections closed for flooding (too many refused frames in a window).
    pub floods: u64,
    /// Connections established (dialed or accepted).
    pub connects: u64,
    /// Connections lost or closed.
    pub disconnects: u64,
    /// Handshakes that failed (either side).
    pub handshake_failures: u64,
    /// Frames a sender wrote into an idle lane's stream itself, without the writer task.
    pub direct_writes: u64,
    /// Calls from peers run on the stream reader's task (the callee was idle).
    pub inline_calls: u64,
    /// Requests to other nodes (RPCs: remote spawns, admin, Raft, children orders) waiting for
    /// their answers now (a gauge, not a count).
    pub rpc_pending: u64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> DistStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DistStats {
            frames_in: g(&self.frames_in),
            bytes_out: g(&self.bytes_out),
            bytes_in: g(&self.bytes_in),
            to_dead_pid: g(&self.to_dead_pid),
            undecodable: g(&self.undecodable),
            mailbox_full: g(&self.mailbox_full),
            signals_dropped: g(&self.signals_dropped),
            control_ignored: g(&self.control_ignored),
            busy: g(&self.busy),
            protocol_errors: g(&self.protocol_errors),
            floods: g(&self.floods),
            connects: g(&self.connects),
            disconnects: g(&self.disconnects),
            handshake_failures: g(&self.handshake_failures),
            direct_writes: g(&self.direct_writes),
            inline_calls: g(&self.inline_calls),
            rpc_pending: 0,
        }
    }
}

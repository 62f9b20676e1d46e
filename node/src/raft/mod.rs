//! Raft among the hot nodes (openraft 0.9): the replicated cluster-supervision state.
//!
//! The state machine is [`supervisor::cluster::ClusterState`] (pure code); this module is the
//! shell that makes it replicated and durable:
//!
//! * [`store`]: the Raft log, vote and snapshots on sled (flushed before anything is
//!   acknowledged), and the state machine in memory, rebuilt on start from the last snapshot
//!   and the log after it;
//! * [`network`]: Raft RPCs over the mTLS QUIC transport (G9);
//! * [`node`]: a hot node's Raft — the group formed from gossip membership on first start,
//!   grown by the leader, and guarded against disruptive elections (no pre-vote in 0.9).
//!
//! A hot node's Raft id belongs to its data: drawn when its store is created, kept in the
//! store, gossiped; a restart on the same data keeps it, wiped data makes a new member (see
//! [`node`]'s docs). No configuration is needed.

pub mod network;
pub mod node;
pub mod store;

use std::io::Cursor;

use serde::{Deserialize, Serialize};
use supervisor::cluster::{Command, Effect, Rejected};

/// A Raft member: the soma node it is (its id is its store's, see [`store::LogStore::member_id`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMember {
    /// The soma node name.
    pub name: String,
}

/// What applying one entry gave: its index, and the state machine's answer (the effects for
/// the leader to execute, or why it changed nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The entry's log index.
    pub index: u64,
    /// The answer (`Ok(vec![])` for blank and membership entries).
    pub result: Result<Vec<Effect>, Rejected>,
}

openraft::declare_raft_types!(
    /// soma's Raft types: supervision commands in, [`Applied`] out, members named by soma node.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = u64,
        Node = RaftMember,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The Raft id of the node named `name` for a store created before ids were stored: a stable
/// 64-bit FNV-1a hash of the name.
pub fn node_id(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(node_id("hot-1"), node_id("hot-1"));
        let ids: std::collections::BTreeSet<u64> =
            ["hot-1", "hot-2", "hot-3", "a", "b"].iter().map(|n| node_id(n)).collect();
        assert_eq!(ids.len(), 5);
        // FNV-1a of "a", as published.
        assert_eq!(node_id("a"), 0xaf63_dc4c_8601_ec8c);
    }
}

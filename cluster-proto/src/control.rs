//! Bodies of control frames other than gossip (whose body is chitchat's): process-group
//! replication, generic request/response ([`RpcRequest`], [`RpcReply`]) and the bodies of the
//! remote-spawn service that rides it.
//!
//! A node asks a peer to spawn a registered behaviour through the RPC: the request body of the
//! peer's spawn service is a [`SpawnRequest`], its answer a `Result<u64, SpawnRefused>` (the new
//! process's serial on the answering node, or why there is none). Like every body here, both
//! are encoded with [`codec::encode_payload`](crate::codec::encode_payload) and decoded with
//! [`codec::decode_payload`](crate::codec::decode_payload) (so through the decode guard).

use serde::{Deserialize, Serialize};

use crate::exit::ExitReason;

/// Longest registered behaviour name.
pub const MAX_BEHAVIOUR_NAME: usize = 255;

/// Longest label given to a remotely spawned process.
pub const MAX_LABEL: usize = 1024;

/// How the spawn arguments are encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpawnArgs {
    /// bincode of the behaviour's `Args` (from typed Rust code).
    Bincode(Vec<u8>),
    /// JSON text of the behaviour's `Args` (from the CLI or the admin API).
    Json(String),
}

/// Spawn a registered behaviour on the receiving node (the body of an [`RpcRequest`] to its
/// spawn service; answered with an encoded `Result<u64, SpawnRefused>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnRequest {
    /// The behaviour's registered name.
    pub behaviour: String,
    /// Its `init` arguments.
    pub args: SpawnArgs,
    /// A label for the new process.
    pub label: Option<String>,
    /// Link the new process, before its `init` runs, to this process of the requester's node
    /// (its serial).
    pub link: Option<u64>,
}

/// Why a remote spawn failed (on the remote node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SpawnRefused {
    /// No behaviour of that name is registered there.
    #[error("no behaviour {0:?} is registered on that node")]
    UnknownBehaviour(String),
    /// The arguments do not decode into the behaviour's `Args`.
    #[error("bad arguments for {behaviour}: {error}")]
    BadArgs {
        /// The behaviour.
        behaviour: String,
        /// The decoder's complaint.
        error: String,
    },
    /// The process exited during `init`.
    #[error("init failed: {0}")]
    Init(ExitReason),
    /// The node cannot spawn (shutting down, too many spawns in progress, a bad label ...).
    #[error("spawn refused: {0}")]
    Refused(String),
}

/// Longest process group name.
pub const MAX_GROUP_NAME: usize = 255;

/// Most member serials in one [`PgMessage`] (larger syncs are split).
pub const MAX_PG_BATCH: usize = 16_384;

/// Process-group replication between nodes (tag [`tag::PG`](crate::frame::tag::PG)). Members
/// are serials of the sending node's current incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PgMessage {
    /// The sender's whole local membership (first of a series when `more`): replaces what the
    /// receiver knew about the sender once the last part (`more == false`) arrives.
    Sync {
        /// Groups and their local members.
        groups: Vec<(String, Vec<u64>)>,
        /// More parts follow.
        more: bool,
    },
    /// Processes joined a group.
    Join(String, Vec<u64>),
    /// Processes left a group.
    Leave(String, Vec<u64>),
}

/// Largest body of an [`RpcRequest`] or an [`RpcReply`] (the frame limit bounds it too).
pub const MAX_RPC_BODY: usize = 4 << 20;

/// A request to a service of the receiving node (tag [`tag::RPC`](crate::frame::tag::RPC)):
/// the generic request/response of control traffic (the admin API's routing, Raft, cluster
/// supervision's orders, remote spawn). The answer is an [`RpcReply`] (tag
/// [`tag::RPC_REPLY`](crate::frame::tag::RPC_REPLY)) with the same `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcRequest {
    /// Chosen by the requester; echoed in the reply.
    pub id: u64,
    /// Which service of the receiving node (see the node's service numbers).
    pub service: u16,
    /// The service's own encoding of the request.
    pub body: Vec<u8>,
}

/// Why a node did not answer an [`RpcRequest`] with its service's reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RpcRefused {
    /// The node has no such service.
    #[error("no service {0} on that node")]
    UnknownService(u16),
    /// Too many requests are being served there.
    #[error("the node is busy ({0} requests in progress)")]
    Busy(u32),
    /// The service failed to produce an answer.
    #[error("{0}")]
    Failed(String),
}

/// The answer to an [`RpcRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcReply {
    /// The request's `id`.
    pub id: u64,
    /// The service's encoded answer, or why there is none.
    pub result: Result<Vec<u8>, RpcRefused>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_payload, encode_payload};

    #[test]
    fn spawn_messages_round_trip_and_garbage_is_an_error() {
        let req = SpawnRequest {
            behaviour: "worker".into(),
            args: SpawnArgs::Json("{\"model\":\"x\"}".into()),
            label: Some("w-1".into()),
            link: Some(3),
        };
        let mut b = Vec::new();
        encode_payload(&mut b, &req).unwrap();
        assert_eq!(decode_payload::<SpawnRequest>(&b), Ok(req));
        for result in [
            Ok(12),
            Err(SpawnRefused::Init(ExitReason::crashed("no key"))),
            Err(SpawnRefused::UnknownBehaviour("x".into())),
        ] {
            b.clear();
            encode_payload(&mut b, &result).unwrap();
            assert_eq!(decode_payload::<Result<u64, SpawnRefused>>(&b), Ok(result));
        }
        assert!(decode_payload::<SpawnRequest>(&[0xFF, 0xFF, 0xFF]).is_err());
    }

    #[test]
    fn rpc_messages_round_trip() {
        let req = RpcRequest { id: 9, service: 1, body: vec![1, 2, 3] };
        let mut b = Vec::new();
        encode_payload(&mut b, &req).unwrap();
        assert_eq!(decode_payload::<RpcRequest>(&b), Ok(req));
        for result in [Ok(vec![7u8; 10]), Err(RpcRefused::UnknownService(4)), Err(RpcRefused::Failed("x".into()))] {
            let rep = RpcReply { id: 2, result };
            b.clear();
            encode_payload(&mut b, &rep).unwrap();
            assert_eq!(decode_payload::<RpcReply>(&b), Ok(rep));
        }
    }
}

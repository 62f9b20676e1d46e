//! Raft RPCs over soma's authenticated QUIC transport (G9): openraft's `RaftNetwork` as
//! requests to the peer's Raft service ([`RAFT_SERVICE`]) through the generic control-frame RPC
//! of [`dist::rpc`](crate::dist::rpc).
//!
//! Per LIBRARIES.md: `new_client` never blocks (connections are made on first use by the
//! transport); a peer that cannot be reached is `RPCError::Unreachable` (openraft backs off), a
//! timeout is `RPCError::Timeout` (the RPC honours `RPCOption::hard_ttl`), any other transport
//! failure is `RPCError::Network`, and the peer's own `RaftError` comes back as
//! `RPCError::RemoteError`.
//!
//! Every request names the Raft member it is for. Peers are dialed by node *name*, and a name
//! can come back as a different member (its data was wiped: a new id, see
//! [`node`](super::node)); such a node answers [`Answer::WrongMember`] to requests for its old
//! id, which the sender takes as "unreachable" — the old member is gone — so the leader's view
//! of the old member's log never goes backwards.

use std::sync::Arc;

use cluster_proto::codec::{decode_payload, encode_payload};
use cluster_proto::NodeId as SomaNodeId;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::storage::RaftLogStorage;

use super::store::LogStore;
use openraft::{LogId, RPCTypes, Raft};
use serde::{Deserialize, Serialize};

use super::{RaftMember, TypeConfig};
use crate::dist::rpc::{RpcError, RpcFuture, RpcService};
use crate::dist::Dist;

/// The RPC service number of Raft.
pub const RAFT_SERVICE: u16 = 2;

type NodeId = u64;

/// A Raft request on the wire, for the member `to`.
#[derive(Debug, Serialize, Deserialize)]
struct Addressed {
    to: NodeId,
    req: Request,
}

/// A Raft request.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// soma's pre-vote question: "when did you last hear from a leader?", with the asker's
    /// last log id (see [`node`](super::node)'s docs).
    PreVote(Option<LogId<NodeId>>),
}

/// A Raft answer on the wire.
#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// The node is not the member the request was for (it is this one).
    WrongMember(NodeId),
    /// Milliseconds since the node last accepted a leader's request (0: it is the leader, or
    /// the asker's log is behind its own — such a candidate cannot win the vote, Raft §5.4.1;
    /// `None`: never since it started).
    PreVote(Option<u64>),
}

/// When this node last accepted an AppendEntries or InstallSnapshot from a leader (what its
/// pre-vote answer and its own pre-vote decision are based on).
#[derive(Debug, Default)]
pub(crate) struct LeaderContact {
    at: parking_lot::Mutex<Option<tokio::time::Instant>>,
}

impl LeaderContact {
    fn touch(&self) {
        *self.at.lock() = Some(tokio::time::Instant::now());
    }

    /// Time since the last contact (`None`: never).
    pub(crate) fn since(&self) -> Option<std::time::Duration> {
        self.at.lock().map(|t| t.elapsed())
    }
}

/// Asks the member `to` (on node `name`) when it last heard from a leader: `Some(answer)`, or
/// `None` if it did not answer within `timeout` (unreachable, not that member, not running
/// Raft).
pub(crate) async fn pre_vote(
    dist: &Arc<Dist>,
    name: &str,
    to: NodeId,
    timeout: std::time::Duration,
    last_log: Option<LogId<NodeId>>,
) -> Option<Option<u64>> {
    let mut body = Vec::new();
    encode_payload(&mut body, &Addressed { to, req: Request::PreVote(last_log) }).ok()?;
    let (_, answer) = dist.rpc(name, RAFT_SERVICE, body, timeout).await.ok()?;
    match decode_payload::<Answer>(&answer).ok()? {
        Answer::PreVote(since) => Some(since),
        _ => None,
    }
}

/// Makes a [`Network`] per peer.
#[derive(Clone)]
pub struct Factory {
    pub(crate) dist: Arc<Dist>,
    pub(crate) me: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &RaftMember) -> Network {
        Network { dist: Arc::clone(&self.dist), me: self.me, target, name: node.name.clone() }
    }
}

/// The client side of Raft RPCs to one peer.
pub struct Network {
    dist: Arc<Dist>,
    me: NodeId,
    target: NodeId,
    name: String,
}

/// Why a call failed before the peer's Raft answered.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Transport(String);

impl Network {
    async fn call<E: std::error::Error>(
        &self,
        action: RPCTypes,
        req: Request,
        option: &RPCOption,
    ) -> Result<Answer, RPCError<NodeId, RaftMember, E>> {
        let mut body = Vec::new();
        encode_payload(&mut body, &Addressed { to: self.target, req })
            .map_err(|e| RPCError::Network(NetworkError::new(&Transport(e.to_string()))))?;
        let timeout = option.hard_ttl();
        match self.dist.rpc(&self.name, RAFT_SERVICE, body, timeout).await {
            Ok((_, answer)) => match decode_payload::<Answer>(&answer) {
                Ok(Answer::WrongMember(is)) => Err(RPCError::Unreachable(Unreachable::new(&Transport(format!(
                    "{} is now Raft member {is:x}, not {:x}",
                    self.name, self.target
                ))))),
                Ok(a) => Ok(a),
                Err(e) => Err(RPCError::Network(NetworkError::new(&Transport(format!("bad Raft answer: {e}"))))),
            },
            Err(RpcError::NoConnection(n)) => {
                Err(RPCError::Unreachable(Unreachable::new(&Transport(format!("{n} is unreachable")))))
            }
            Err(RpcError::Timeout(..)) => {
                Err(RPCError::Timeout(Timeout { action, id: self.me, target: self.target, timeout }))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&Transport(e.to_string())))),
        }
    }

    fn odd<E: std::error::Error>() -> RPCError<NodeId, RaftMember, E> {
        RPCError::Network(NetworkError::new(&Transport("a Raft answer of the wrong kind".into())))
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, RaftMember, RaftError<NodeId>>> {
        match self.call(RPCTypes::AppendEntries, Request::Append(rpc), &option).await? {
            Answer::Append(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(Self::odd()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, RaftMember, RaftError<NodeId, InstallSnapshotError>>>
    {
        match self.call(RPCTypes::InstallSnapshot, Request::Snapshot(rpc), &option).await? {
            Answer::Snapshot(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(Self::odd()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, RaftMember, RaftError<NodeId>>> {
        match self.call(RPCTypes::Vote, Request::Vote(rpc), &option).await? {
            Answer::Vote(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(Self::odd()),
        }
    }
}

/// The server side: peers' Raft RPCs into the local Raft.
pub(crate) struct Service {
    pub(crate) raft: Raft<TypeConfig>,
    /// This node's member id: requests for another are answered `WrongMember`.
    pub(crate) me: NodeId,
    /// Updated on every leader request accepted.
    pub(crate) contact: Arc<LeaderContact>,
    /// The node's Raft log (read for pre-votes: whose log is further).
    pub(crate) log: LogStore,
}

/// The last log id of `log` (`None`: empty, or it could not be read).
pub(crate) async fn last_log_id(log: &LogStore) -> Option<LogId<NodeId>> {
    let mut log = log.clone();
    match log.get_log_state().await {
        Ok(state) => state.last_log_id,
        Err(e) => {
            tracing::warn!(error = %e, "Raft log state not readable");
            None
        }
    }
}

impl RpcService for Service {
    fn serve(&self, from: SomaNodeId, body: Vec<u8>) -> RpcFuture {
        let (raft, me, contact, log) = (self.raft.clone(), self.me, Arc::clone(&self.contact), self.log.clone());
        Box::pin(async move {
            let Addressed { to, req } =
                decode_payload(&body).map_err(|e| format!("Raft request from {from} does not decode: {e}"))?;
            let answer = match req {
                _ if to != me => {
                    tracing::debug!(%from, to = format_args!("{to:x}"), "a Raft request for this node's former member id");
                    Answer::WrongMember(me)
                }
                Request::Append(r) => {
                    let answer = raft.append_entries(r).await;
                    // Anything but "your vote is stale" means a current leader reached us.
                    if matches!(
                        answer,
                        Ok(AppendEntriesResponse::Success
                            | AppendEntriesResponse::PartialSuccess(_)
                            | AppendEntriesResponse::Conflict)
                    ) {
                        contact.touch();
                    }
                    Answer::Append(answer)
                }
                Request::Vote(r) => Answer::Vote(raft.vote(r).await),
                Request::Snapshot(r) => {
                    let vote = r.vote;
                    let answer = raft.install_snapshot(r).await;
                    if answer.as_ref().is_ok_and(|a| a.vote <= vote) {
                        contact.touch();
                    }
                    Answer::Snapshot(answer)
                }
                Request::PreVote(theirs) => {
                    let leader = raft.metrics().borrow().state == openraft::ServerState::Leader;
                    // A vote goes only to a candidate whose log is at least as far as the
                    // voter's: one behind would campaign for nothing, and its term would make
                    // the one who can win wait another election timeout.
                    let behind = !leader && last_log_id(&log).await > theirs;
                    Answer::PreVote(if leader || behind {
                        Some(0)
                    } else {
                        contact.since().map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
                    })
                }
            };
            let mut out = Vec::new();
            encode_payload(&mut out, &answer).map_err(|e| format!("Raft answer not encodable: {e}"))?;
            Ok(out)
        })
    }
}

//! Remote spawn: behaviours registered by name on each node, spawned on a chosen node by
//! request — the RPC service [`SPAWN_SERVICE`] of the generic node-to-node RPC
//! ([`rpc`](super::rpc)).
//!
//! A node serves a request by looking the behaviour up in its registry, decoding the arguments
//! into the behaviour's `Args` (bincode from typed code, JSON from the CLI and the admin API),
//! and spawning it; with `link`, the new process is linked to the requesting process *before*
//! its `init` runs, so a crash in `init` reaches the requester as an exit signal (as
//! `spawn_link` does in Erlang).
//!
//! On the wire, the request body is an encoded [`SpawnRequest`] and the answer an encoded
//! `Result<u64, SpawnRefused>`: the new process's serial on the incarnation that answered
//! (which the RPC layer names, so the returned PID is that incarnation's). Everything else is
//! the RPC layer's: serving on its own task (at most [`MAX_SERVING`] spawns at once, more are
//! refused), the bound on spawns waiting for replies ([`MAX_PENDING`]), the
//! timeout, a wait failing at once with `NoConnection` when the connection to the node is lost,
//! and only the node asked answering.
//!
//! Monitoring a remotely spawned process is done by the requester when the reply arrives: if
//! the process died in between, the monitor fires `Down` with `noproc` (not with its exit
//! reason) — the one difference from Erlang's atomic `spawn_monitor`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use cluster_proto::codec::{decode_payload, encode_payload};
use cluster_proto::control::{RpcRefused, SpawnArgs, SpawnRefused, SpawnRequest, MAX_BEHAVIOUR_NAME, MAX_LABEL};
use cluster_proto::{NodeId, Pid};
use parking_lot::RwLock;
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;

use super::rpc::{RpcError, RpcFuture, RpcService};
use super::Dist;
use crate::process::behaviour::Behaviour;
use crate::process::node::{NodeShared, SpawnError, SpawnOpts};

/// The RPC service number of remote spawn (next to admin = 1, Raft = 2, children = 3).
pub const SPAWN_SERVICE: u16 = 4;
/// Most spawn requests from a node waiting for replies: the RPC layer's bound, per service (G8).
pub use super::rpc::MAX_PENDING;
/// Most spawn requests served at once by a node: the RPC layer's bound, per service (G8).
pub use super::rpc::MAX_SERVING;
/// Most registered behaviours.
pub const MAX_BEHAVIOURS: usize = 4096;

/// Spawns one registered behaviour from encoded arguments, optionally linked to `link`.
type Spawner =
    Arc<dyn Fn(&Arc<NodeShared>, &SpawnArgs, Option<String>, Option<Pid>) -> Result<Pid, SpawnRefused> + Send + Sync>;

/// Why a behaviour could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The name is empty or longer than the protocol allows.
    #[error("behaviour name of {0} bytes (1..=255 allowed)")]
    BadName(usize),
    /// Another behaviour has that name.
    #[error("a behaviour named {0:?} is already registered")]
    Taken(String),
    /// The registry is full.
    #[error("too many behaviours (at most {MAX_BEHAVIOURS})")]
    Full,
    /// The node is not distributed.
    #[error("remote spawn needs a distributed node")]
    NotDistributed,
}

/// Why a remote spawn failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteSpawnError {
    /// The remote node refused (unknown behaviour, bad arguments, init failed, too busy ...).
    #[error(transparent)]
    Refused(#[from] SpawnRefused),
    /// The node is unreachable, or its connection was lost before it answered.
    #[error("node {0} is unreachable")]
    NoConnection(String),
    /// No answer in time.
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    /// Too many remote spawns of this node are waiting for replies ([`MAX_PENDING`]).
    #[error("too many remote spawns in progress")]
    Busy,
    /// The arguments could not be encoded, or the request is malformed (name or label length,
    /// larger than an RPC body may be).
    #[error("bad spawn request: {0}")]
    BadRequest(String),
    /// This node is not distributed.
    #[error("remote spawn needs a distributed node")]
    NotDistributed,
}

impl From<RpcError> for RemoteSpawnError {
    /// The RPC layer's failure as the spawn's: a refusal of the RPC itself (the node is busy,
    /// serves no spawns, or failed to answer) is the remote node refusing the spawn.
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::NoConnection(node) => RemoteSpawnError::NoConnection(node),
            RpcError::Timeout(node, t) => RemoteSpawnError::Timeout(node, t),
            RpcError::Busy => RemoteSpawnError::Busy,
            RpcError::BadRequest(why) => RemoteSpawnError::BadRequest(why),
            RpcError::Refused(RpcRefused::Busy(n)) => {
                SpawnRefused::Refused(format!("more than {n} requests in progress")).into()
            }
            RpcError::Refused(RpcRefused::UnknownService(_)) => {
                SpawnRefused::Refused("the node does not serve remote spawns".into()).into()
            }
            RpcError::Refused(RpcRefused::Failed(why)) => SpawnRefused::Refused(why).into(),
        }
    }
}

/// Options of a remote spawn.
#[derive(Debug, Clone)]
pub struct RemoteSpawnOpts {
    /// A label for the new process.
    pub label: Option<String>,
    /// Link the new process to this local process before its `init` runs.
    pub link: Option<Pid>,
    /// How long to wait for the remote node's answer.
    pub timeout: Duration,
}

impl Default for RemoteSpawnOpts {
    /// No label, no link, 5 s.
    fn default() -> Self {
        RemoteSpawnOpts { label: None, link: None, timeout: Duration::from_secs(5) }
    }
}

/// The behaviour registry (one per node).
#[derive(Default)]
pub(crate) struct Spawns {
    registry: RwLock<FxHashMap<String, Spawner>>,
}

impl Spawns {
    /// Registers `B` under `name`.
    pub(crate) fn register<B: Behaviour>(&self, name: &str) -> Result<(), RegisterError>
    where
        B::Args: DeserializeOwned,
    {
        if name.is_empty() || name.len() > MAX_BEHAVIOUR_NAME {
            return Err(RegisterError::BadName(name.len()));
        }
        let mut r = self.registry.write();
        if r.contains_key(name) {
            return Err(RegisterError::Taken(name.to_owned()));
        }
        if r.len() >= MAX_BEHAVIOURS {
            return Err(RegisterError::Full);
        }
        let owned = name.to_owned();
        let spawner: Spawner = Arc::new(move |node, args, label, link| {
            let bad = |error: String| SpawnRefused::BadArgs { behaviour: owned.clone(), error };
            let args: B::Args = match args {
                SpawnArgs::Bincode(b) => decode_payload(b).map_err(|e| bad(e.to_string()))?,
                SpawnArgs::Json(j) => serde_json::from_str(j).map_err(|e| bad(e.to_string()))?,
            };
            let opts = SpawnOpts { label, ..SpawnOpts::default() };
            match node.spawn_inner::<B>(args, opts, link, link.is_some(), false) {
                Ok((addr, _)) => Ok(addr.pid()),
                Err(SpawnError::Init(reason)) => Err(SpawnRefused::Init(reason)),
                Err(e) => Err(SpawnRefused::Refused(e.to_string())),
            }
        });
        r.insert(name.to_owned(), spawner);
        Ok(())
    }

    /// Registered behaviour names, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.registry.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// Spawns a registered behaviour here.
    pub(crate) fn spawn_here(
        &self,
        node: &Arc<NodeShared>,
        behaviour: &str,
        args: &SpawnArgs,
        label: Option<String>,
        link: Option<Pid>,
    ) -> Result<Pid, SpawnRefused> {
        if label.as_ref().is_some_and(|l| l.len() > MAX_LABEL) {
            return Err(SpawnRefused::Refused(format!("label longer than {MAX_LABEL} bytes")));
        }
        let s = self.registry.read().get(behaviour).cloned();
        match s {
            Some(s) => s(node, args, label, link),
            None => Err(SpawnRefused::UnknownBehaviour(behaviour.to_owned())),
        }
    }
}

/// The spawn service of a node (weak: the node's RPC services belong to its [`Dist`]).
struct Service(Weak<Dist>);

impl RpcService for Service {
    fn serve(&self, from: NodeId, body: Vec<u8>) -> RpcFuture {
        let d = self.0.clone();
        Box::pin(async move {
            let d = d.upgrade().ok_or("the node is shutting down")?;
            let result = d.serve_spawn(from, &body)?;
            let mut answer = Vec::new();
            encode_payload(&mut answer, &result).map_err(|e| format!("spawn answer not encodable: {e}"))?;
            Ok(answer)
        })
    }
}

impl Dist {
    /// Serves remote spawns for peers (RPC service [`SPAWN_SERVICE`]).
    pub(super) fn install_spawn_service(self: &Arc<Self>) {
        self.set_rpc_service(SPAWN_SERVICE, Arc::new(Service(Arc::downgrade(self))));
    }

    /// Asks node `node` to spawn `behaviour`.
    pub(crate) async fn spawn_remote(
        self: &Arc<Self>,
        node: &str,
        behaviour: &str,
        args: SpawnArgs,
        opts: &RemoteSpawnOpts,
    ) -> Result<Pid, RemoteSpawnError> {
        if behaviour.is_empty() || behaviour.len() > MAX_BEHAVIOUR_NAME {
            return Err(RemoteSpawnError::BadRequest(format!("behaviour name of {} bytes", behaviour.len())));
        }
        if opts.label.as_ref().is_some_and(|l| l.len() > MAX_LABEL) {
            return Err(RemoteSpawnError::BadRequest(format!("label longer than {MAX_LABEL} bytes")));
        }
        let req = SpawnRequest {
            behaviour: behaviour.to_owned(),
            args,
            label: opts.label.clone(),
            link: opts.link.map(Pid::serial),
        };
        let mut body = Vec::new();
        encode_payload(&mut body, &req).map_err(|e| RemoteSpawnError::BadRequest(e.to_string()))?;
        let (remote, answer) = self.rpc(node, SPAWN_SERVICE, body, opts.timeout).await?;
        match decode_payload::<Result<u64, SpawnRefused>>(&answer) {
            Ok(result) => Ok(Pid::new(remote, result?)),
            Err(e) => {
                self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %remote, error = %e, "a spawn answer that does not decode");
                Err(SpawnRefused::Refused(format!("{node}'s answer does not decode: {e}")).into())
            }
        }
    }

    /// A spawn request from `from` (on the RPC layer's serving task): the new process's serial,
    /// or why there is none; `Err` if the request does not decode.
    fn serve_spawn(&self, from: NodeId, body: &[u8]) -> Result<Result<u64, SpawnRefused>, String> {
        let req = match decode_payload::<SpawnRequest>(body) {
            Ok(r) => r,
            Err(e) => {
                self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %from, error = %e, "refused a spawn request that does not decode");
                return Err(format!("spawn request does not decode: {e}"));
            }
        };
        let Some(node) = self.node.upgrade() else {
            return Ok(Err(SpawnRefused::Refused("the node is shutting down".into())));
        };
        let link = req.link.map(|s| Pid::new(from, s));
        let result = self.spawns.spawn_here(&node, &req.behaviour, &req.args, req.label, link);
        match &result {
            Ok(pid) => tracing::info!(peer = %from, behaviour = %req.behaviour, pid = %pid, "spawned for a peer"),
            Err(e) => tracing::info!(peer = %from, behaviour = %req.behaviour, error = %e, "refused a spawn"),
        }
        Ok(result.map(Pid::serial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_failures_map_to_the_spawn_errors_they_always_were() {
        let t = Duration::from_millis(7);
        let cases = [
            (RpcError::NoConnection("b".into()), RemoteSpawnError::NoConnection("b".into())),
            (RpcError::Timeout("b".into(), t), RemoteSpawnError::Timeout("b".into(), t)),
            (RpcError::Busy, RemoteSpawnError::Busy),
            (RpcError::BadRequest("big".into()), RemoteSpawnError::BadRequest("big".into())),
            // The node asked refused the spawn: too busy, no spawn service, a failed answer.
            (
                RpcError::Refused(RpcRefused::Busy(1024)),
                RemoteSpawnError::Refused(SpawnRefused::Refused("more than 1024 requests in progress".into())),
            ),
            (
                RpcError::Refused(RpcRefused::UnknownService(SPAWN_SERVICE)),
                RemoteSpawnError::Refused(SpawnRefused::Refused("the node does not serve remote spawns".into())),
            ),
            (
                RpcError::Refused(RpcRefused::Failed("no decode".into())),
                RemoteSpawnError::Refused(SpawnRefused::Refused("no decode".into())),
            ),
        ];
        for (rpc, spawn) in cases {
            assert_eq!(RemoteSpawnError::from(rpc), spawn);
        }
    }
}

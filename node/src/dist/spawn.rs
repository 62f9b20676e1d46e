//! Remote spawn: behaviours registered by name on each node, spawned on a chosen node by
//! request (the [`SpawnRequest`] / [`SpawnReply`] control frames).
//!
//! A node serves a request by looking the behaviour up in its registry, decoding the arguments
//! into the behaviour's `Args` (bincode from typed code, JSON from the CLI and the admin API),
//! and spawning it; with `link`, the new process is linked to the requesting process *before*
//! its `init` runs, so a crash in `init` reaches the requester as an exit signal (as
//! `spawn_link` does in Erlang). Serving runs on its own task, never on the connection's reader,
//! and at most [`MAX_SERVING`] requests are served at once (more are refused).
//!
//! The requester waits for the reply with a timeout; if the connection to the node is lost
//! meanwhile, the wait fails at once with `NoConnection`. Monitoring a remotely spawned process
//! is done by the requester when the reply arrives: if the process died in between, the monitor
//! fires `Down` with `noproc` (not with its exit reason) — the one difference from Erlang's
//! atomic `spawn_monitor`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster_proto::codec::{decode_payload, encode_payload};
use cluster_proto::control::{SpawnArgs, SpawnRefused, SpawnReply, SpawnRequest, MAX_BEHAVIOUR_NAME, MAX_LABEL};
use cluster_proto::frame::tag;
use cluster_proto::{NodeId, Pid};
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::Dist;
use crate::process::behaviour::Behaviour;
use crate::process::node::{NodeShared, SpawnError, SpawnOpts};

/// Most spawn requests served at once by a node (G8).
pub const MAX_SERVING: usize = 1024;
/// Most spawn requests from a node waiting for replies (G8).
pub const MAX_PENDING: usize = 4096;
/// Most registered behaviours.
pub const MAX_BEHAVIOURS: usize = 4096;

/// Spawns one registered behaviour from encoded arguments, optionally linked to `link`.
type Spawner =
    Arc<dyn Fn(&Arc<NodeShared>, &SpawnArgs, Option<String>, Option<Pid>) -> Result<Pid, SpawnRefused> + Send + Sync>;

/// Where a spawn's answer goes: the answering incarnation and the result.
type AnswerTx = oneshot::Sender<(NodeId, Result<u64, SpawnRefused>)>;

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
    /// The remote node refused (unknown behaviour, bad arguments, init failed ...).
    #[error(transparent)]
    Refused(#[from] SpawnRefused),
    /// The node is unreachable, or its connection was lost before it answered.
    #[error("node {0} is unreachable")]
    NoConnection(String),
    /// No answer in time.
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    /// Too many spawn requests are waiting for replies.
    #[error("too many remote spawns in progress")]
    Busy,
    /// The arguments could not be encoded, or the request is malformed (name or label length).
    #[error("bad spawn request: {0}")]
    BadRequest(String),
    /// This node is not distributed.
    #[error("remote spawn needs a distributed node")]
    NotDistributed,
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

/// The registry and the requests in flight (one per node).
#[derive(Default)]
pub(crate) struct Spawns {
    registry: RwLock<FxHashMap<String, Spawner>>,
    /// Request id → (the node asked, where its answer goes).
    pending: Mutex<FxHashMap<u64, (Arc<str>, AnswerTx)>>,
    next: AtomicU64,
    serving: Arc<AtomicUsize>,
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

    /// Fails every request waiting on `peer` (its connection is gone).
    pub(crate) fn peer_lost(&self, peer: &str) {
        self.pending.lock().retain(|_, (p, _)| &**p != peer);
    }
}

impl Dist {
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
        let id = self.spawns.next.fetch_add(1, Ordering::Relaxed);
        let req = SpawnRequest {
            id,
            behaviour: behaviour.to_owned(),
            args,
            label: opts.label.clone(),
            link: opts.link.map(Pid::serial),
        };
        let mut body = Vec::new();
        encode_payload(&mut body, &req).map_err(|e| RemoteSpawnError::BadRequest(e.to_string()))?;
        let rx = {
            let mut p = self.spawns.pending.lock();
            if p.len() >= MAX_PENDING {
                return Err(RemoteSpawnError::Busy);
            }
            let (tx, rx) = oneshot::channel();
            p.insert(id, (Arc::from(node), tx));
            rx
        };
        if self.send_control(node, tag::SPAWN, &body).is_err() {
            self.spawns.pending.lock().remove(&id);
            return Err(RemoteSpawnError::NoConnection(node.to_owned()));
        }
        let answer = tokio::time::timeout(opts.timeout, rx).await;
        self.spawns.pending.lock().remove(&id);
        match answer {
            Ok(Ok((remote, Ok(serial)))) => Ok(Pid::new(remote, serial)),
            Ok(Ok((_, Err(refused)))) => Err(refused.into()),
            Ok(Err(_)) => Err(RemoteSpawnError::NoConnection(node.to_owned())),
            Err(_) => Err(RemoteSpawnError::Timeout(node.to_owned(), opts.timeout)),
        }
    }

    /// A spawn request from `from`: served on its own task.
    pub(crate) fn serve_spawn(self: &Arc<Self>, from: NodeId, body: &[u8]) {
        let req = match decode_payload::<SpawnRequest>(body) {
            Ok(r) => r,
            Err(e) => {
                self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                return tracing::warn!(peer = %from, error = %e, "dropped a spawn request that does not decode");
            }
        };
        let serving = Arc::clone(&self.spawns.serving);
        if serving.fetch_add(1, Ordering::AcqRel) >= MAX_SERVING {
            serving.fetch_sub(1, Ordering::AcqRel);
            let busy = Err(SpawnRefused::Refused(format!("more than {MAX_SERVING} spawns in progress")));
            return self.reply_spawn(from, SpawnReply { id: req.id, result: busy });
        }
        let Some(node) = self.node.upgrade() else { return };
        let d = Arc::clone(self);
        let rt = node.rt.clone();
        rt.spawn(async move {
            let link = req.link.map(|s| Pid::new(from, s));
            let result = d.spawns.spawn_here(&node, &req.behaviour, &req.args, req.label, link);
            match &result {
                Ok(serial_pid) => {
                    tracing::info!(peer = %from, behaviour = %req.behaviour, pid = %serial_pid, "spawned for a peer")
                }
                Err(e) => tracing::info!(peer = %from, behaviour = %req.behaviour, error = %e, "refused a spawn"),
            }
            d.reply_spawn(from, SpawnReply { id: req.id, result: result.map(Pid::serial) });
            serving.fetch_sub(1, Ordering::AcqRel);
        });
    }

    fn reply_spawn(&self, to: NodeId, reply: SpawnReply) {
        let mut body = Vec::new();
        if let Err(e) = encode_payload(&mut body, &reply) {
            return tracing::warn!(error = %e, "spawn reply not encodable");
        }
        // The reply goes to the incarnation that asked; if it is gone, so is its request.
        let Some(s) = self.session_of(to) else { return };
        let _ = s.control(tag::SPAWN_REPLY, &body);
    }

    /// A spawn reply from a peer.
    pub(crate) fn complete_spawn(&self, from: NodeId, body: &[u8]) {
        match decode_payload::<SpawnReply>(body) {
            Ok(rep) => {
                let waiting = self.spawns.pending.lock().remove(&rep.id);
                if let Some((_, tx)) = waiting {
                    let _ = tx.send((from, rep.result));
                }
            }
            Err(e) => {
                self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %from, error = %e, "dropped a spawn reply that does not decode");
            }
        }
    }
}

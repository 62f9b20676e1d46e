//! The public face of distribution: starting a distributed node, and [`PidRef`], a typed handle
//! to a process that may live on any node.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cluster_proto::{CorrelationId, NodeId, Pid};

use cluster_proto::control::SpawnArgs;
use serde::de::DeserializeOwned;

use super::spawn::{RegisterError, RemoteSpawnError, RemoteSpawnOpts};
use super::{Dist, DistConfig, DistError, DistStats};
use crate::process::behaviour::{Behaviour, Message};
use crate::process::node::{call_cell, CallError, Node, NodeConfig, NodeError, SendError};

/// A typed handle to a process by PID, local or remote (G1: the same operations, wherever it
/// runs). `B` is the behaviour the holder believes the process runs; on another node, messages
/// and requests are decoded into that node's behaviour type and refused (dropped and counted,
/// or a `BadRequest` for a call) if they do not decode.
pub struct PidRef<B: Behaviour> {
    pid: Pid,
    node: Node,
    _b: PhantomData<fn() -> B>,
}

impl<B: Behaviour> Clone for PidRef<B> {
    fn clone(&self) -> Self {
        PidRef { pid: self.pid, node: self.node.clone(), _b: PhantomData }
    }
}

impl<B: Behaviour> std::fmt::Debug for PidRef<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PidRef<{}>({})", B::name(), self.pid)
    }
}

impl<B: Behaviour> PidRef<B> {
    /// The PID.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Sends without waiting (see [`Addr::send`](crate::Addr::send)). To another node: fails
    /// with `Full` when the connection pushes back, or `Encode` when the message cannot be
    /// encoded; a message to a dead process or an unreachable node is dropped (G2).
    pub fn send(&self, msg: B::Msg) -> Result<(), SendError> {
        self.node.send(self.pid, msg)
    }

    /// Sends, waiting for room in a full bounded mailbox or a connection that pushes back.
    ///
    /// # Cancel safety
    /// If dropped before completion, the message was not sent.
    pub async fn send_wait(&self, msg: B::Msg) -> Result<(), SendError> {
        match self.node.shared().remote(self.pid) {
            Some(d) => d.send_wait(self.pid, None, None, &msg).await,
            None => {
                if let Some(a) = self.node.addr::<B>(self.pid) {
                    a.send_wait(msg).await;
                }
                Ok(())
            }
        }
    }

    /// Calls the process and waits up to `timeout` for the reply. To another node, besides the
    /// local errors: `NoConnection` if the node is unreachable or the connection is lost before
    /// the reply (at once, G3), `Busy` if the node refuses more calls from this one.
    pub async fn call(&self, req: B::Call, timeout: Duration) -> Result<B::Reply, CallError> {
        self.call_from(None, None, req, timeout).await
    }

    /// Like [`call`](Self::call), with a correlation ID.
    pub async fn call_with(
        &self,
        req: B::Call,
        corr: Option<CorrelationId>,
        timeout: Duration,
    ) -> Result<B::Reply, CallError> {
        self.call_from(None, corr, req, timeout).await
    }

    pub(crate) async fn call_from(
        &self,
        from: Option<Pid>,
        corr: Option<CorrelationId>,
        req: B::Call,
        timeout: Duration,
    ) -> Result<B::Reply, CallError> {
        if let Some(d) = self.node.shared().remote(self.pid) {
            return d.call(Ok(self.pid), from, corr, &req, timeout).await;
        }
        match self.node.addr::<B>(self.pid) {
            Some(a) => call_cell(&a.cell, req, from, corr, timeout).await,
            None if self.node.is_alive(self.pid) => {
                Err(CallError::BadRequest(format!("{} does not run {}", self.pid, B::name())))
            }
            None => Err(CallError::NoProc),
        }
    }
}

impl Node {
    /// Starts a node that takes part in a cluster: its processes can be reached from other
    /// nodes, and PIDs of other nodes work here (QUIC with mutual TLS; see
    /// [`DistConfig`]). The node name must be the name in the certificate.
    pub fn start_distributed(config: NodeConfig, dist: DistConfig) -> Result<Node, NodeError> {
        let node = Node::start(config)?;
        let d = Dist::start(node.shared(), dist).map_err(NodeError::Dist)?;
        let _ = node.shared().dist.set(d);
        Ok(node)
    }

    pub(crate) fn dist(&self) -> Option<&Arc<Dist>> {
        self.shared().dist.get()
    }

    /// A typed handle to `pid`, local or remote.
    pub fn pid_ref<B: Behaviour>(&self, pid: Pid) -> PidRef<B> {
        PidRef { pid, node: self.clone(), _b: PhantomData }
    }

    /// The UDP address the node serves on, if distributed.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.dist().and_then(|d| d.local_addr())
    }

    /// Tells the node where the node `name` can be reached (connections are made on first use).
    pub fn add_peer(&self, name: &str, addr: SocketAddr) {
        if let Some(d) = self.dist() {
            d.add_peer(name, addr);
        }
    }

    /// The node incarnations this node is connected to.
    pub fn connected_nodes(&self) -> Vec<NodeId> {
        self.dist().map(|d| d.connected()).unwrap_or_default()
    }

    /// Distribution counters (`None` if not distributed).
    pub fn dist_stats(&self) -> Option<DistStats> {
        self.dist().map(|d| d.stats())
    }

    /// Cuts the connection to the node `name` as a network failure would (its processes are
    /// reported down with `noconnection`); the next use connects again. `false` if there was
    /// no connection.
    pub fn disconnect(&self, name: &str) -> bool {
        self.dist().is_some_and(|d| d.disconnect(name))
    }

    /// Sends `msg` to the process registered as `name` on the node `node` (this node's own
    /// registry if `node` is its name).
    pub fn send_named<M: Message>(&self, node: &str, name: &str, msg: M) -> Result<(), SendError> {
        if *self.id().name() == *node {
            return match self.whereis(name) {
                Some(pid) => self.send(pid, msg),
                None => Ok(()),
            };
        }
        match self.dist() {
            Some(d) => d.send_named(node, name, None, None, &msg),
            None => Ok(()),
        }
    }

    /// Calls the process registered as `name` on the node `node`, which must run `B`.
    pub async fn call_named<B: Behaviour>(
        &self,
        node: &str,
        name: &str,
        req: B::Call,
        timeout: Duration,
    ) -> Result<B::Reply, CallError> {
        if *self.id().name() == *node {
            let pid = self.whereis(name).ok_or(CallError::NoProc)?;
            return self.pid_ref::<B>(pid).call(req, timeout).await;
        }
        match self.dist() {
            Some(d) => d.call(Err((node, name)), None, None, &req, timeout).await,
            None => Err(CallError::NoConnection),
        }
    }
}

/// Spawning by name, here or on other nodes (see [`spawn`](super::spawn)).
impl Node {
    /// Registers behaviour `B` under its [`Behaviour::name`], so that it can be spawned by
    /// name — from other nodes, the CLI or the admin API.
    pub fn register_behaviour<B: Behaviour>(&self) -> Result<(), RegisterError>
    where
        B::Args: DeserializeOwned,
    {
        self.register_behaviour_as::<B>(B::name())
    }

    /// Registers behaviour `B` under `name`.
    pub fn register_behaviour_as<B: Behaviour>(&self, name: &str) -> Result<(), RegisterError>
    where
        B::Args: DeserializeOwned,
    {
        self.dist().ok_or(RegisterError::NotDistributed)?.spawns.register::<B>(name)
    }

    /// The behaviours registered on this node, sorted.
    pub fn behaviours(&self) -> Vec<String> {
        self.dist().map(|d| d.spawns.names()).unwrap_or_default()
    }

    /// Spawns `B` (registered there under [`Behaviour::name`]) on the node `node` (this node's
    /// own name spawns here) and returns its PID.
    pub async fn spawn_on<B: Behaviour>(
        &self,
        node: &str,
        args: &B::Args,
        opts: RemoteSpawnOpts,
    ) -> Result<Pid, RemoteSpawnError>
    where
        B::Args: serde::Serialize,
    {
        let mut b = Vec::new();
        cluster_proto::codec::encode_payload(&mut b, args).map_err(|e| RemoteSpawnError::BadRequest(e.to_string()))?;
        self.spawn_by_name(node, B::name(), SpawnArgs::Bincode(b), opts).await
    }

    /// Spawns the behaviour registered as `behaviour` on `node`, with arguments as JSON text.
    pub async fn spawn_on_json(
        &self,
        node: &str,
        behaviour: &str,
        args_json: &str,
        opts: RemoteSpawnOpts,
    ) -> Result<Pid, RemoteSpawnError> {
        self.spawn_by_name(node, behaviour, SpawnArgs::Json(args_json.to_owned()), opts).await
    }

    async fn spawn_by_name(
        &self,
        node: &str,
        behaviour: &str,
        args: SpawnArgs,
        opts: RemoteSpawnOpts,
    ) -> Result<Pid, RemoteSpawnError> {
        let d = self.dist().ok_or(RemoteSpawnError::NotDistributed)?;
        if *self.id().name() == *node {
            return Ok(d.spawns.spawn_here(self.shared(), behaviour, &args, opts.label, opts.link)?);
        }
        if let Some(l) = opts.link.filter(|l| l.node() != self.id()) {
            return Err(RemoteSpawnError::BadRequest(format!("link target {l} is not a process of this node")));
        }
        d.spawn_remote(node, behaviour, args, &opts).await
    }
}

/// Conversion used by [`Node::start_distributed`].
impl From<DistError> for NodeError {
    fn from(e: DistError) -> Self {
        NodeError::Dist(e)
    }
}

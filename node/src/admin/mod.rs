//! The admin layer (Nerve, operator side): every operation an operator can do on a cluster —
//! list nodes and processes, inspect and trace a process, send to or call it, kill it, spawn a
//! behaviour somewhere, show groups and supervision trees — addressed to **any** PID or node of
//! the cluster from **any** node.
//!
//! ## Routing
//!
//! An operation on a PID (or on a node by name) is executed by the node that holds it. If that
//! is this node, [`Admin`] executes it here; otherwise it travels as an [`AdminOp`] to that node
//! over the authenticated QUIC transport (the generic RPC of [`dist::rpc`](crate::dist::rpc),
//! service [`ADMIN_SERVICE`]) and the answer comes back the same way. So routing needs no
//! admin token between nodes and rides only mutually authenticated connections (G9): the
//! HTTP API ([`http`]) is the only door in, and it is guarded by a token unless it listens on
//! loopback.
//!
//! A PID names one node *incarnation* (G1): an operation on a PID of an incarnation that is
//! not the one running now answers [`AdminError::NoProc`], never touches a process of the
//! newer incarnation (the serving node checks the creation in every [`Target`]).
//!
//! ## Results
//!
//! Every operation answers JSON (`serde_json::Value`) whose shape is documented in
//! `docs/admin-api.md` and is stable; errors are [`AdminError`]s, each with an HTTP status.
//!
//! ## Limits (G8)
//!
//! Listings are capped ([`MAX_LIST`] processes per node, [`MAX_PEEK`] queued messages,
//! [`MAX_TRACE_READ`] trace events per read); every remote operation has a timeout
//! ([`ROUTE_TIMEOUT`] beyond its own); requests and answers are bounded by the RPC layer.

pub mod client;
pub mod http;

use std::time::Duration;

use cluster_proto::codec::{decode_payload, encode_payload};
use cluster_proto::{CorrelationId, ExitReason, NodeId, Pid, PidParts};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::dist::rpc::{RpcError, RpcFuture, RpcService};
use crate::dist::spawn::RemoteSpawnOpts;
use crate::membership::{Constraint, Membership, Role};
use crate::{CallError, IntrospectError, Node};

/// The RPC service number of the admin layer.
pub const ADMIN_SERVICE: u16 = 1;
/// How much longer than an operation's own timeout a routed operation may take (the hop).
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most processes one node lists.
pub const MAX_LIST: usize = 100_000;
/// Most queued messages shown by one peek.
pub const MAX_PEEK: usize = 1000;
/// Most trace events returned by one read.
pub const MAX_TRACE_READ: usize = 1000;
/// Longest timeout a caller may ask for (a state read or a call).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest JSON message or argument text accepted.
pub const MAX_JSON: usize = 1 << 20;

/// A process on the node an [`AdminOp`] is sent to: its incarnation and serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The node incarnation the PID names.
    pub creation: u64,
    /// The process's serial there.
    pub serial: u64,
}

/// An operation, as executed by the node that holds its target (and as it travels between
/// nodes: bincode-safe, JSON carried as text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdminOp {
    /// This node's summary: identity, role, load, behaviours, transport counters.
    Status,
    /// The members as this node sees them (what [`Admin::nodes`] answers there).
    Members,
    /// This node's Raft status (hot nodes).
    RaftStatus,
    /// Adds a hot node to the Raft group (ask the leader).
    RaftAdd(String),
    /// Removes a node from the Raft group (ask the leader).
    RaftRemove(String),
    /// Proposes a cluster-supervision change (ask the leader); answers the state machine's
    /// verdict.
    SupPropose(supervisor::cluster::Command),
    /// The committed cluster-supervision state (any hot node).
    SupList,
    /// Marks a provider of this node available (true) or not (false), in gossip.
    Provider(String, bool),
    /// This node's processes (at most [`MAX_LIST`]).
    Ps,
    /// This node's supervision tree.
    Tree,
    /// A process's info.
    Info(Target),
    /// A process's state snapshot (timeout in ms).
    State(Target, u64),
    /// Queued messages, without consuming them (at most this many).
    Peek(Target, u32),
    /// Switches tracing on or off.
    Trace(Target, bool),
    /// Trace events after a sequence number (at most this many).
    TraceRead(Target, u64, u32),
    /// Opens a trace subscription (events from now on, through the process's `exited`),
    /// switching tracing on first if asked; answers `{"sub": ID}`.
    TraceOpen(Target, bool),
    /// The next events of a subscription: waits up to this many ms for the first, answers
    /// `{"events": [...], "end": bool}` (at most this many events).
    TraceNext(u64, u32, u64),
    /// Closes a subscription.
    TraceClose(u64),
    /// Sends a JSON message (with an optional correlation ID).
    Send(Target, String, Option<u64>),
    /// Calls with a JSON request (timeout in ms; optional correlation ID).
    Call(Target, String, u64, Option<u64>),
    /// Kills unconditionally.
    Kill(Target),
    /// Sends an exit signal with reason `shutdown` (a trapping process terminates cleanly).
    Stop(Target),
    /// Suspends.
    Suspend(Target),
    /// Resumes.
    Resume(Target),
    /// Spawns a registered behaviour here (JSON arguments, optional label).
    Spawn(String, String, Option<String>),
}

/// Why an admin operation failed. Travels between nodes, so it is plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AdminError {
    /// No such process (dead, never existed, or of another node incarnation).
    #[error("no such process {0}")]
    NoProc(String),
    /// No member of that name.
    #[error("no node {0} in the cluster")]
    NoNode(String),
    /// The node holding the target is unreachable.
    #[error("node {0} is unreachable")]
    Unreachable(String),
    /// No answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The request is malformed (bad PID, bad JSON, a value out of range ...).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The behaviour does not expose its state.
    #[error("{0}")]
    NoSnapshot(String),
    /// The target cannot take it now (a full mailbox, too many requests in progress ...).
    #[error("busy: {0}")]
    Busy(String),
    /// No node matches a placement.
    #[error("{0}")]
    NoMatch(String),
    /// The operation failed on the node that executed it.
    #[error("{0}")]
    Failed(String),
}

impl AdminError {
    /// The HTTP status the API answers it with.
    pub fn status(&self) -> u16 {
        match self {
            AdminError::NoProc(_) | AdminError::NoNode(_) => 404,
            AdminError::BadRequest(_) => 400,
            AdminError::NoSnapshot(_) | AdminError::NoMatch(_) => 409,
            AdminError::Busy(_) => 503,
            AdminError::Unreachable(_) => 502,
            AdminError::Timeout(_) => 504,
            AdminError::Failed(_) => 500,
        }
    }

    /// A short machine-readable name (`no_proc`, `unreachable` ...), as in the API's errors.
    pub fn kind(&self) -> &'static str {
        match self {
            AdminError::NoProc(_) => "no_proc",
            AdminError::NoNode(_) => "no_node",
            AdminError::Unreachable(_) => "unreachable",
            AdminError::Timeout(_) => "timeout",
            AdminError::BadRequest(_) => "bad_request",
            AdminError::NoSnapshot(_) => "no_snapshot",
            AdminError::Busy(_) => "busy",
            AdminError::NoMatch(_) => "no_match",
            AdminError::Failed(_) => "failed",
        }
    }
}

/// Where a spawn should go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Exactly this node.
    pub node: Option<String>,
    /// Otherwise, a member of this role ...
    pub role: Option<Role>,
    /// ... serving one of these providers (earlier preferred), least loaded first.
    #[serde(default)]
    pub providers: Vec<String>,
}

/// Most trace subscriptions open on a node at once (G8).
pub const MAX_SUBSCRIPTIONS: usize = 256;
/// A subscription not polled for this long is closed (its reader went away).
pub const SUBSCRIPTION_IDLE: Duration = Duration::from_secs(30);
/// Longest wait of one [`AdminOp::TraceNext`].
pub const MAX_TRACE_WAIT: Duration = Duration::from_secs(10);

/// One open subscription: its stream and when it was last polled.
type Sub = (std::sync::Arc<tokio::sync::Mutex<crate::TraceStream>>, std::time::Instant);

/// Open trace subscriptions by id.
#[derive(Default)]
struct Subs {
    next: std::sync::atomic::AtomicU64,
    open: parking_lot::Mutex<rustc_hash::FxHashMap<u64, Sub>>,
}

/// The admin layer of one node (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    node: Node,
    membership: Option<Membership>,
    raft: Option<crate::raft::node::RaftNode>,
    csup: Option<crate::csup::ClusterSupervisor>,
    subs: std::sync::Arc<Subs>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("node", &self.node.id()).finish()
    }
}

struct Service {
    admin: Admin,
}

impl RpcService for Service {
    fn serve(&self, from: NodeId, body: Vec<u8>) -> RpcFuture {
        let admin = self.admin.clone();
        Box::pin(async move {
            let op: AdminOp = decode_payload(&body).map_err(|e| format!("admin request does not decode: {e}"))?;
            tracing::debug!(peer = %from, ?op, "admin operation for a peer");
            let result: Result<String, AdminError> = admin.exec_local(op).await.map(|v| v.to_string());
            let mut out = Vec::new();
            encode_payload(&mut out, &result).map_err(|e| format!("admin answer not encodable: {e}"))?;
            Ok(out)
        })
    }
}

impl Admin {
    /// The admin layer of `node`; with its `membership`, if it has one (for `nodes` and
    /// placement). On a distributed node it also starts serving routed operations for peers.
    pub fn new(node: Node, membership: Option<Membership>) -> Admin {
        let admin = Admin { node, membership, raft: None, csup: None, subs: std::sync::Arc::default() };
        admin.serve_peers();
        admin
    }

    /// The same admin layer, also answering for this node's Raft (a hot node).
    pub fn with_raft(mut self, raft: Option<crate::raft::node::RaftNode>) -> Admin {
        self.raft = raft;
        self.serve_peers();
        self
    }

    /// The same admin layer, also proposing cluster-supervision changes (a hot node).
    pub fn with_cluster_supervisor(mut self, csup: Option<crate::csup::ClusterSupervisor>) -> Admin {
        self.csup = csup;
        self.serve_peers();
        self
    }

    fn serve_peers(&self) {
        if let Some(d) = self.node.dist() {
            d.set_rpc_service(ADMIN_SERVICE, std::sync::Arc::new(Service { admin: self.clone() }));
        }
    }

    /// The node this admin layer runs on.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The cluster's members (just this node when it has no membership), as JSON objects:
    /// `name, creation, role, providers, status, addr, admin, capacity, load`.
    pub fn nodes(&self) -> Value {
        match &self.membership {
            Some(m) => {
                let me = self.node.id();
                let list: Vec<Value> = m
                    .members()
                    .into_iter()
                    .map(|m| {
                        json!({
                            "name": m.name,
                            "creation": m.creation,
                            "role": m.role,
                            "providers": m.providers,
                            "status": if m.leaving { "leaving" } else { "up" },
                            "addr": m.addr.to_string(),
                            "admin": m.admin.map(|a| a.to_string()),
                            "capacity": m.capacity,
                            "load": { "processes": m.load.processes, "mailbox": m.load.mailbox },
                            "self": *m.name == *me.name(),
                        })
                    })
                    .collect();
                Value::Array(list)
            }
            None => {
                let id = self.node.id();
                json!([{
                    "name": &*id.name(),
                    "creation": id.creation(),
                    "role": Role::Hot,
                    "providers": [],
                    "status": "up",
                    "addr": self.node.local_addr().map(|a| a.to_string()),
                    "admin": null,
                    "capacity": null,
                    "load": { "processes": self.node.process_count(), "mailbox": 0 },
                    "self": true,
                }])
            }
        }
    }

    /// The Raft leader's name as this node knows it (its own Raft, or a hot peer's).
    pub async fn raft_leader(&self) -> Result<String, AdminError> {
        if let Some(r) = &self.raft {
            if let Some(l) = r.status().leader {
                return Ok(l);
            }
        }
        let hot: Vec<String> = match &self.membership {
            Some(m) => m.members().into_iter().filter(|m| m.role == Role::Hot).map(|m| m.name).collect(),
            None => Vec::new(),
        };
        for h in hot {
            if let Ok(v) = self.on_node(&h, AdminOp::RaftStatus).await {
                if let Some(l) = v.get("leader").and_then(Value::as_str) {
                    return Ok(l.to_owned());
                }
            }
        }
        Err(AdminError::Unreachable("no Raft leader is known".into()))
    }

    /// Names of the nodes to ask for a cluster-wide listing (this node first).
    pub fn node_names(&self) -> Vec<String> {
        let me = self.node.id().name().to_string();
        let mut names = vec![me.clone()];
        if let Some(m) = &self.membership {
            names.extend(m.members().into_iter().map(|m| m.name).filter(|n| *n != me));
        }
        names
    }

    /// Runs `op` on node `node` (here, or routed to it).
    pub async fn on_node(&self, node: &str, op: AdminOp) -> Result<Value, AdminError> {
        if *self.node.id().name() == *node {
            return self.exec_local(op).await;
        }
        if let Some(m) = &self.membership {
            if m.member(node).is_none() && !self.node.connected_nodes().iter().any(|n| *n.name() == *node) {
                return Err(AdminError::NoNode(node.to_owned()));
            }
        }
        let Some(d) = self.node.dist() else {
            return Err(AdminError::NoNode(node.to_owned()));
        };
        let timeout = op_timeout(&op) + ROUTE_TIMEOUT;
        let mut body = Vec::new();
        encode_payload(&mut body, &op).map_err(|e| AdminError::BadRequest(e.to_string()))?;
        let answer = d.rpc(node, ADMIN_SERVICE, body, timeout).await.map_err(|e| match e {
            RpcError::NoConnection(n) => AdminError::Unreachable(n),
            RpcError::Timeout(n, t) => AdminError::Timeout(format!("no answer from {n} within {t:?}")),
            RpcError::Busy => AdminError::Busy(e.to_string()),
            RpcError::BadRequest(s) => AdminError::BadRequest(s),
            RpcError::Refused(r) => AdminError::Failed(format!("{node}: {r}")),
        })?;
        let result: Result<String, AdminError> = decode_payload(&answer.1)
            .map_err(|e| AdminError::Failed(format!("{node}'s answer does not decode: {e}")))?;
        let text = result?;
        serde_json::from_str(&text).map_err(|e| AdminError::Failed(format!("{node}'s answer is not JSON: {e}")))
    }

    /// Runs the operation `make(target)` on the node holding `pid`.
    pub async fn on_pid(&self, pid: &PidParts, make: impl FnOnce(Target) -> AdminOp) -> Result<Value, AdminError> {
        let target = Target { creation: pid.creation, serial: pid.serial };
        self.on_node(&pid.node, make(target)).await.map_err(|e| match e {
            // The node of an old incarnation is not a member any more: its processes are gone.
            AdminError::NoNode(_) => AdminError::NoProc(pid.to_string()),
            other => other,
        })
    }

    /// Every node's processes, concatenated (nodes that do not answer are listed in
    /// `unreachable`): `{"processes": [...], "unreachable": [{"node", "error"}]}`.
    pub async fn ps_all(&self) -> Value {
        let names = self.node_names();
        let answers = futures_util::future::join_all(names.iter().map(|n| self.on_node(n, AdminOp::Ps))).await;
        let mut procs = Vec::new();
        let mut unreachable = Vec::new();
        for (name, a) in names.iter().zip(answers) {
            match a {
                Ok(Value::Array(list)) => procs.extend(list),
                Ok(other) => unreachable.push(json!({"node": name, "error": format!("odd answer {other}")})),
                Err(e) => unreachable.push(json!({"node": name, "error": e.to_string()})),
            }
        }
        json!({ "processes": procs, "unreachable": unreachable })
    }

    /// Every node's supervision tree: `{"nodes": [{"node", "tree"} | {"node", "error"}]}`.
    pub async fn tree_all(&self) -> Value {
        let names = self.node_names();
        let answers = futures_util::future::join_all(names.iter().map(|n| self.on_node(n, AdminOp::Tree))).await;
        let nodes: Vec<Value> = names
            .iter()
            .zip(answers)
            .map(|(n, a)| match a {
                Ok(t) => json!({"node": n, "tree": t}),
                Err(e) => json!({"node": n, "error": e.to_string()}),
            })
            .collect();
        json!({ "nodes": nodes })
    }

    /// Process groups and their members, cluster-wide (as this node sees them).
    pub fn groups(&self) -> Value {
        let list: Vec<Value> = self
            .node
            .pg_groups()
            .into_iter()
            .map(|g| {
                let members = self.node.pg_members(&g);
                json!({"name": g, "members": members})
            })
            .collect();
        Value::Array(list)
    }

    /// Spawns `behaviour` where `placement` says; answers `{"pid", "node"}`.
    pub async fn spawn(
        &self,
        behaviour: &str,
        args_json: &str,
        placement: &Placement,
        label: Option<String>,
    ) -> Result<Value, AdminError> {
        if args_json.len() > MAX_JSON {
            return Err(AdminError::BadRequest(format!("arguments longer than {MAX_JSON} bytes")));
        }
        let target = match &placement.node {
            Some(n) => n.clone(),
            None => match &self.membership {
                Some(m) => {
                    let c = Constraint { role: placement.role, providers: placement.providers.clone(), avoid: vec![] };
                    m.place(&c).map_err(|e| AdminError::NoMatch(e.to_string()))?
                }
                None if placement.role.is_none_or(|r| r == Role::Hot) && placement.providers.is_empty() => {
                    self.node.id().name().to_string()
                }
                None => return Err(AdminError::NoMatch("this node has no membership to place on".into())),
            },
        };
        self.on_node(&target, AdminOp::Spawn(behaviour.to_owned(), args_json.to_owned(), label)).await
    }

    /// Executes `op` on this node.
    pub async fn exec_local(&self, op: AdminOp) -> Result<Value, AdminError> {
        let node = &self.node;
        let pid_of = |t: Target| -> Result<Pid, AdminError> {
            let id = node.id();
            if t.creation != id.creation() {
                return Err(AdminError::NoProc(format!(
                    "<{}.{}.{}> (not this node's incarnation {})",
                    id.name(),
                    t.creation,
                    t.serial,
                    id.creation()
                )));
            }
            Ok(Pid::new(id, t.serial))
        };
        let introspect = |e: IntrospectError| match e {
            IntrospectError::NoProc(p) => AdminError::NoProc(p.to_string()),
            IntrospectError::NoSnapshot(_) => AdminError::NoSnapshot(e.to_string()),
            IntrospectError::Timeout(..) => AdminError::Timeout(e.to_string()),
        };
        match op {
            AdminOp::Status => {
                let id = node.id();
                Ok(json!({
                    "name": &*id.name(),
                    "creation": id.creation(),
                    "processes": node.process_count(),
                    "dropped_messages": node.dropped_messages(),
                    "behaviours": node.behaviours(),
                    "connected": node.connected_nodes().iter().map(|n| n.name().to_string()).collect::<Vec<_>>(),
                    "dist": node.dist_stats(),
                    "membership": self.membership.as_ref().map(|m| m.stats()),
                }))
            }
            AdminOp::Members => Ok(self.nodes()),
            AdminOp::SupPropose(cmd) => {
                let c = self.csup.as_ref().ok_or_else(|| AdminError::BadRequest("not a hot node".into()))?;
                let applied = c.propose(cmd).await.map_err(|e| match e {
                    crate::raft::node::ProposeError::NotLeader(l) => {
                        AdminError::Busy(format!("not the leader (leader: {})", l.unwrap_or_else(|| "unknown".into())))
                    }
                    other => AdminError::Failed(other.to_string()),
                })?;
                match applied.result {
                    Ok(_) => Ok(json!({ "committed": applied.index })),
                    Err(rejected) => Err(AdminError::BadRequest(format!("rejected: {rejected}"))),
                }
            }
            AdminOp::SupList => {
                let r = self.raft.as_ref().ok_or_else(|| AdminError::BadRequest("not a hot node".into()))?;
                Ok(r.read(sup_json))
            }
            AdminOp::Provider(provider, up) => {
                let m = self.membership.as_ref().ok_or_else(|| AdminError::BadRequest("no membership".into()))?;
                let me = m.member(&node.id().name()).ok_or_else(|| AdminError::Failed("not a member yet".into()))?;
                if !me.providers.contains(&provider) {
                    return Err(AdminError::BadRequest(format!("{} does not serve {provider}", node.id().name())));
                }
                let mut down: Vec<String> = me.unavailable.clone();
                down.retain(|p| *p != provider);
                if !up {
                    down.push(provider.clone());
                }
                down.sort();
                m.set_key(crate::membership::view::keys::PROVIDERS_DOWN, &down.join(",")).await;
                Ok(json!({ "node": &*node.id().name(), "provider": provider, "available": up }))
            }
            AdminOp::RaftStatus => match &self.raft {
                Some(r) => serde_json::to_value(r.status()).map_err(|e| AdminError::Failed(e.to_string())),
                None => Err(AdminError::BadRequest(format!("{} is not a hot node: it runs no Raft", node.id().name()))),
            },
            AdminOp::RaftAdd(ref name) | AdminOp::RaftRemove(ref name) => {
                let add = matches!(op, AdminOp::RaftAdd(_));
                let name = name.clone();
                let r = self.raft.as_ref().ok_or_else(|| AdminError::BadRequest("not a hot node".into()))?;
                let done = if add { r.add_voter(&name).await } else { r.remove(&name).await };
                done.map_err(|e| match e {
                    crate::raft::node::ProposeError::NotLeader(l) => AdminError::BadRequest(format!(
                        "not the leader; ask {}",
                        l.unwrap_or_else(|| "the leader".into())
                    )),
                    other => AdminError::Failed(other.to_string()),
                })?;
                Ok(serde_json::to_value(r.status()).map_err(|e| AdminError::Failed(e.to_string()))?)
            }
            AdminOp::Ps => {
                let list: Vec<Value> = node
                    .processes()
                    .into_iter()
                    .take(MAX_LIST)
                    .filter_map(|p| node.info(p).ok())
                    .map(|i| {
                        json!({
                            "pid": i.pid,
                            "label": i.label,
                            "behaviour": i.behaviour,
                            "status": i.status,
                            "mailbox": i.mailbox_depth,
                            "name": i.registered_name,
                            "node": &*node.id().name(),
                        })
                    })
                    .collect();
                Ok(Value::Array(list))
            }
            AdminOp::Tree => Ok(serde_json::to_value(node.tree()).map_err(|e| AdminError::Failed(e.to_string()))?),
            AdminOp::Info(t) => {
                let i = node.info(pid_of(t)?).map_err(introspect)?;
                serde_json::to_value(i).map_err(|e| AdminError::Failed(e.to_string()))
            }
            AdminOp::State(t, ms) => {
                let timeout = clamp_ms(ms);
                node.state(pid_of(t)?, timeout).await.map_err(introspect)
            }
            AdminOp::Peek(t, max) => {
                let max = (max as usize).min(MAX_PEEK);
                Ok(Value::Array(node.peek(pid_of(t)?, max).map_err(introspect)?))
            }
            AdminOp::Trace(t, on) => {
                node.trace(pid_of(t)?, on).map_err(introspect)?;
                Ok(json!({ "traced": on }))
            }
            AdminOp::TraceRead(t, after, max) => {
                let pid = pid_of(t)?;
                let max = (max as usize).clamp(1, MAX_TRACE_READ);
                let events = node.trace_read(pid, after, max).map_err(introspect)?;
                let next = events.last().map_or(after, |e| e.seq);
                Ok(json!({ "events": events, "next": next }))
            }
            AdminOp::TraceOpen(t, switch_on) => {
                let pid = pid_of(t)?;
                let now = std::time::Instant::now();
                let mut open = self.subs.open.lock();
                open.retain(|_, (_, last)| now.duration_since(*last) < SUBSCRIPTION_IDLE);
                if open.len() >= MAX_SUBSCRIPTIONS {
                    return Err(AdminError::Busy(format!("{MAX_SUBSCRIPTIONS} trace subscriptions open")));
                }
                let stream = node.trace_stream(pid).map_err(introspect)?;
                if switch_on {
                    node.trace(pid, true).map_err(introspect)?;
                }
                let id = self.subs.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                open.insert(id, (std::sync::Arc::new(tokio::sync::Mutex::new(stream)), now));
                Ok(json!({ "sub": id }))
            }
            AdminOp::TraceNext(sub, max, wait_ms) => {
                let stream = {
                    let mut open = self.subs.open.lock();
                    let entry =
                        open.get_mut(&sub).ok_or_else(|| AdminError::BadRequest(format!("no subscription {sub}")))?;
                    entry.1 = std::time::Instant::now();
                    std::sync::Arc::clone(&entry.0)
                };
                let max = (max as usize).clamp(1, MAX_TRACE_READ);
                let wait = Duration::from_millis(wait_ms).min(MAX_TRACE_WAIT);
                let mut s = stream.lock().await;
                let mut events = Vec::new();
                let mut end = false;
                // `TraceStream::next` is cancel-safe: a timeout loses no event.
                match tokio::time::timeout(wait, s.next()).await {
                    Ok(Some(e)) => events.push(e),
                    Ok(None) => end = true,
                    Err(_) => {}
                }
                while !end && !events.is_empty() && events.len() < max {
                    match tokio::time::timeout(Duration::ZERO, s.next()).await {
                        Ok(Some(e)) => events.push(e),
                        Ok(None) => end = true,
                        Err(_) => break,
                    }
                }
                drop(s);
                if end {
                    self.subs.open.lock().remove(&sub);
                }
                Ok(json!({ "events": events, "end": end }))
            }
            AdminOp::TraceClose(sub) => {
                let closed = self.subs.open.lock().remove(&sub).is_some();
                Ok(json!({ "closed": closed }))
            }
            AdminOp::Send(t, text, corr) => {
                let msg = parse_json(&text)?;
                let pid = pid_of(t)?;
                node.send_json(pid, msg, corr.map(CorrelationId)).map_err(|e| {
                    if node.is_alive(pid) {
                        AdminError::BadRequest(e)
                    } else {
                        AdminError::NoProc(pid.to_string())
                    }
                })?;
                Ok(json!({ "sent": true }))
            }
            AdminOp::Call(t, text, ms, corr) => {
                let req = parse_json(&text)?;
                let pid = pid_of(t)?;
                let timeout = clamp_ms(ms);
                node.call_json(pid, req, corr.map(CorrelationId), timeout).await.map_err(|e| match e {
                    CallError::NoProc | CallError::Exited => AdminError::NoProc(pid.to_string()),
                    CallError::Timeout(_) => AdminError::Timeout(format!("{pid} did not reply within {timeout:?}")),
                    CallError::BadRequest(s) => AdminError::BadRequest(s),
                    other => AdminError::Failed(other.to_string()),
                })
            }
            AdminOp::Kill(t) => {
                let pid = pid_of(t)?;
                if !node.is_alive(pid) {
                    return Err(AdminError::NoProc(pid.to_string()));
                }
                node.kill(pid);
                Ok(json!({ "killed": pid }))
            }
            AdminOp::Stop(t) => {
                let pid = pid_of(t)?;
                if !node.is_alive(pid) {
                    return Err(AdminError::NoProc(pid.to_string()));
                }
                node.exit(pid, ExitReason::Shutdown);
                Ok(json!({ "stopped": pid }))
            }
            AdminOp::Suspend(t) => {
                node.suspend(pid_of(t)?).map_err(introspect)?;
                Ok(json!({ "suspended": true }))
            }
            AdminOp::Resume(t) => {
                node.resume(pid_of(t)?).map_err(introspect)?;
                Ok(json!({ "suspended": false }))
            }
            AdminOp::Spawn(behaviour, args, label) => {
                if args.len() > MAX_JSON {
                    return Err(AdminError::BadRequest(format!("arguments longer than {MAX_JSON} bytes")));
                }
                let me = node.id().name().to_string();
                let opts = RemoteSpawnOpts { label, ..RemoteSpawnOpts::default() };
                let pid = node.spawn_on_json(&me, &behaviour, &args, opts).await.map_err(|e| {
                    use crate::control::SpawnRefused;
                    match e {
                        crate::dist::spawn::RemoteSpawnError::Refused(SpawnRefused::UnknownBehaviour(_))
                        | crate::dist::spawn::RemoteSpawnError::Refused(SpawnRefused::BadArgs { .. })
                        | crate::dist::spawn::RemoteSpawnError::BadRequest(_) => AdminError::BadRequest(e.to_string()),
                        other => AdminError::Failed(other.to_string()),
                    }
                })?;
                Ok(json!({ "pid": pid, "node": me, "behaviour": behaviour }))
            }
        }
    }
}

/// The committed cluster-supervision state as JSON (`soma sup list`, `soma tree`).
pub fn sup_json(s: &supervisor::cluster::ClusterState) -> Value {
    use supervisor::cluster::{Phase, SupStatus};
    let sups: Vec<Value> = s
        .sups
        .values()
        .map(|st| {
            let children: Vec<Value> = st
                .order
                .iter()
                .filter_map(|id| st.children.get(id))
                .map(|c| {
                    let (status, pending) = match &c.phase {
                        Phase::Running => ("running", None),
                        Phase::Starting | Phase::Waiting => ("restarting", None),
                        Phase::Pending(why) => ("pending", Some(why.clone())),
                        Phase::Stopped => ("stopped", None),
                    };
                    json!({
                        "id": c.spec.id,
                        "behaviour": c.spec.behaviour,
                        "restart": c.spec.restart.to_string(),
                        "placement": c.spec.placement,
                        "status": status,
                        "pending": pending,
                        "node": c.node,
                        "provider": c.provider,
                        "pid": c.pid,
                        "generation": c.generation,
                        "incarnations": c.restarts,
                        "last_exit": c.last_cause.as_ref().map(|x| format!("{x:?}")),
                    })
                })
                .collect();
            let status = match &st.status {
                SupStatus::Active => "active".to_owned(),
                SupStatus::Failed(why) => format!("failed: {why}"),
            };
            json!({
                "name": st.spec.name,
                "strategy": st.spec.strategy.to_string(),
                "intensity": st.spec.intensity,
                "status": status,
                "children": children,
            })
        })
        .collect();
    json!({ "supervisors": sups, "applied": s.last_applied, "stale_rejected": s.stale_rejected })
}

/// The operation's own timeout (what the serving node may spend), before the hop's.
fn op_timeout(op: &AdminOp) -> Duration {
    match op {
        AdminOp::State(_, ms) | AdminOp::Call(_, _, ms, _) => clamp_ms(*ms),
        AdminOp::TraceNext(_, _, ms) => Duration::from_millis(*ms).min(MAX_TRACE_WAIT),
        _ => Duration::ZERO,
    }
}

/// A timeout in ms from a request, within `1 ms ..= MAX_TIMEOUT`.
fn clamp_ms(ms: u64) -> Duration {
    Duration::from_millis(ms.max(1)).min(MAX_TIMEOUT)
}

fn parse_json(text: &str) -> Result<Value, AdminError> {
    if text.len() > MAX_JSON {
        return Err(AdminError::BadRequest(format!("message longer than {MAX_JSON} bytes")));
    }
    serde_json::from_str(text).map_err(|e| AdminError::BadRequest(format!("not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_and_errors_round_trip_through_the_codec() {
        let t = Target { creation: 7, serial: 3 };
        for op in [
            AdminOp::Ps,
            AdminOp::Info(t),
            AdminOp::Call(t, "{\"a\":1}".into(), 500, Some(9)),
            AdminOp::Spawn("demo.echo".into(), "null".into(), Some("x".into())),
        ] {
            let mut b = Vec::new();
            encode_payload(&mut b, &op).expect("encodes");
            assert_eq!(decode_payload::<AdminOp>(&b).expect("decodes"), op);
        }
        let r: Result<String, AdminError> = Err(AdminError::NoProc("<a.1.2>".into()));
        let mut b = Vec::new();
        encode_payload(&mut b, &r).expect("encodes");
        assert_eq!(decode_payload::<Result<String, AdminError>>(&b).expect("decodes"), r);
    }

    #[test]
    fn every_error_has_a_status_and_a_kind() {
        let all = [
            AdminError::NoProc(String::new()),
            AdminError::NoNode(String::new()),
            AdminError::Unreachable(String::new()),
            AdminError::Timeout(String::new()),
            AdminError::BadRequest(String::new()),
            AdminError::NoSnapshot(String::new()),
            AdminError::Busy(String::new()),
            AdminError::NoMatch(String::new()),
            AdminError::Failed(String::new()),
        ];
        let mut kinds: Vec<&str> = all.iter().map(AdminError::kind).collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), all.len());
        assert!(all.iter().all(|e| (400..600).contains(&e.status())));
    }

    #[test]
    fn timeouts_are_clamped() {
        assert_eq!(clamp_ms(0), Duration::from_millis(1));
        assert_eq!(clamp_ms(u64::MAX), MAX_TIMEOUT);
        assert_eq!(op_timeout(&AdminOp::State(Target { creation: 1, serial: 1 }, 2000)), Duration::from_secs(2));
        assert_eq!(op_timeout(&AdminOp::Ps), Duration::ZERO);
    }
}

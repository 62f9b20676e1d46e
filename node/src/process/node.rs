//! [`Node`]: one soma node's process runtime — spawn, the process table, signals between
//! processes, the registry, and introspection.
//!
//! A `Node` is a cheap handle (`Clone`) onto shared state. Several nodes can live in one OS
//! process (tests do that); each has its own name, creation and process table.

use std::any::Any;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use cluster_proto::{CorrelationId, ExitReason, MonitorRef, NodeId, NodeNameError, Pid};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;

use super::behaviour::{Behaviour, Down};
use super::cell::{
    AnyProcess, Cell, Envelope, PushError, ReplyTo, SysMsg, F_EXITING, F_TRACED, MAX_LINKS, MAX_MONITORS,
};
use super::introspect::{ProcessInfo, TreeNode};
use super::trace::{TraceEvent, TraceKind, TraceRing};

/// Most queued messages one [`Node::peek`] returns (G8: what the process waits for while they
/// are cloned is bounded).
pub const MAX_PEEK: usize = 10_000;

/// Shards of the process table; a process lives in shard `serial % SHARDS`.
const SHARDS: usize = 64;
/// `log2(SHARDS)`: a shard's serials differ in the bits above these.
const SHARD_BITS: u32 = SHARDS.trailing_zeros();
const _: () = assert!(SHARDS.is_power_of_two(), "the serial hash drops the shard bits");

/// The process table's hasher, for serials only (64-bit targets; see [`SerialMap`]).
///
/// Serials are handed out in order, so a shard's live serials are mostly a dense run. The hash
/// keeps runs of 16 of a shard's consecutive serials (`serial / SHARDS`) in 16 consecutive
/// buckets — one probe group of the table — and scatters the runs with a multiplicative hash.
/// A burst of spawns thus writes each group's cache lines in a row instead of missing the
/// cache once per insert (FxHash scattered every insert: ~17% of a spawn's time in
/// 1M-process runs). Scattering the runs matters as much: keeping *all* of a shard's serials
/// in order made its live serials one long run of full groups, and an open-addressing table
/// probes until it finds a group with an empty slot — a lookup of a dead PID in the middle of
/// the run, or an insert after the serials wrapped around the table, visited ~30–40 groups.
/// The top 7 bits, which the table keeps as a tag to compare before the key, come from a
/// multiplicative hash of the whole serial, so a probe rules out nearly every other slot of
/// its group without reading it.
#[derive(Default, Clone, Copy)]
struct SerialHasher(u64);

impl std::hash::Hasher for SerialHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; anything else gets FxHash, mixed the same way.
        let mut fx = rustc_hash::FxHasher::default();
        fx.write_u64(self.0);
        fx.write(bytes);
        self.0 = mix_serial(fx.finish());
    }
    #[inline]
    fn write_u64(&mut self, serial: u64) {
        self.0 = mix_serial(serial);
    }
}

#[inline]
fn mix_serial(serial: u64) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    const TAG: u64 = 0x7f << 57;
    let i = serial >> SHARD_BITS;
    // The high half of the product: every bit of it depends on every bit of `i >> 4` below 32.
    let run = (i >> 4).wrapping_mul(K) >> 32;
    let bucket = (run << 4) | (i & 15);
    (bucket & !TAG) | (serial.wrapping_mul(K) & TAG)
}

/// The process table's map. On 64-bit targets the table takes the bucket from the low bits of
/// the hash and the tag from the top 7; elsewhere the tag would come from bits the serial hash
/// leaves in order, so those targets use FxHash.
#[cfg(target_pointer_width = "64")]
type SerialMap<V> = std::collections::HashMap<u64, V, std::hash::BuildHasherDefault<SerialHasher>>;
#[cfg(not(target_pointer_width = "64"))]
type SerialMap<V> = FxHashMap<u64, V>;

/// Configuration of a node's process runtime.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's name (`[A-Za-z0-9_.-]`, ≤ 64 bytes).
    pub name: String,
    /// The node's creation (incarnation) number; by default the start time in milliseconds
    /// since the Unix epoch, so a restarted node is a new incarnation (G1).
    pub creation: Option<u64>,
    /// Capacity of a process's trace ring when tracing is switched on (default 1024).
    pub trace_capacity: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { name: "soma".to_owned(), creation: None, trace_capacity: 1024 }
    }
}

impl NodeConfig {
    /// A configuration with the given node name and defaults otherwise.
    pub fn named(name: impl Into<String>) -> Self {
        NodeConfig { name: name.into(), ..NodeConfig::default() }
    }
}

/// Mailbox kind, chosen at spawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MailboxKind {
    /// No bound: sends never fail or wait (memory is the limit — prefer bounded for untrusted load).
    #[default]
    Unbounded,
    /// At most this many queued messages (≥ 1): `send` fails with [`SendError::Full`],
    /// `send_wait` waits for room. System notifications (Down, trapped exits) are never refused.
    Bounded(usize),
}

/// Options for spawning a process.
#[derive(Debug, Clone, Default)]
pub struct SpawnOpts {
    /// Human-readable identity shown in logs, crash reports, info and the tree.
    pub label: Option<String>,
    /// Bounded or unbounded mailbox.
    pub mailbox: MailboxKind,
    /// Register the process under this name before its `init` runs.
    pub register: Option<String>,
    /// Start with live tracing on.
    pub trace: bool,
}

impl SpawnOpts {
    /// Options with a label.
    pub fn labeled(label: impl Into<String>) -> Self {
        SpawnOpts { label: Some(label.into()), ..SpawnOpts::default() }
    }

    /// Sets a bounded mailbox.
    pub fn bounded(mut self, capacity: usize) -> Self {
        self.mailbox = MailboxKind::Bounded(capacity);
        self
    }
}

/// Errors of `Node::start`.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The node name is invalid.
    #[error("invalid node name: {0}")]
    Name(#[from] NodeNameError),
    /// No tokio runtime to run processes on.
    #[error("Node::start must be called inside a tokio runtime (or use Node::start_on)")]
    NoRuntime,
    /// Distribution could not start.
    #[error(transparent)]
    Dist(crate::dist::DistError),
}

/// Why a spawn failed. An `init` that fails before `spawn` returns gives [`SpawnError::Init`]
/// (as OTP's `start_link` returns `{error, Reason}`); one that awaits and fails later makes the
/// process exit with `crashed`, which links and monitors see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// A bounded mailbox of capacity 0 was asked for.
    #[error("a bounded mailbox needs a capacity of at least 1")]
    ZeroCapacity,
    /// Registering the name failed.
    #[error(transparent)]
    Register(#[from] RegistryError),
    /// The process exited before `spawn` returned: its `init` failed (or it was killed) while
    /// running inline. Links and monitors set up by the spawn have seen the exit too.
    #[error("process exited during init: {0}")]
    Init(ExitReason),
}

/// Why a send failed. Sending to a dead or unreachable process is *not* an error (G2): the
/// message is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The bounded mailbox is full.
    #[error("mailbox of {0} is full")]
    Full(Pid),
    /// The process's behaviour does not take this message type.
    #[error("{pid} runs {behaviour}, which does not take messages of this type")]
    WrongType {
        /// The target.
        pid: Pid,
        /// Its behaviour.
        behaviour: &'static str,
    },
    /// The message could not be encoded for another node (not serializable, or larger than
    /// the frame limit).
    #[error("message cannot be sent to another node: {0}")]
    Encode(String),
    /// The connection to the node of the registered name is pushing back (its lane is full).
    #[error("the connection carrying messages to {0:?} is full")]
    FullNamed(String),
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No reply within the timeout.
    #[error("call timed out after {0:?}")]
    Timeout(Duration),
    /// The process was not alive when called.
    #[error("no such process")]
    NoProc,
    /// The process exited (or crashed handling the request) before replying.
    #[error("process exited before replying")]
    Exited,
    /// The bounded mailbox is full.
    #[error("mailbox full")]
    Full,
    /// The request could not be decoded / the behaviour does not take it.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The process's node is unreachable, or the connection to it was lost before the reply
    /// came (G3: pending calls to a lost node fail at once).
    #[error("no connection to the process's node")]
    NoConnection,
    /// The process's node has too many calls from this node in progress.
    #[error("the process's node is busy")]
    Busy,
}

/// Registry errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The name is registered to another process.
    #[error("name {0:?} is already registered")]
    NameTaken(String),
    /// The process already has a name.
    #[error("process {0} is already registered as {1:?}")]
    AlreadyRegistered(Pid, String),
    /// The process is not alive (or not on this node).
    #[error("no such process {0}")]
    NoProc(Pid),
    /// The name is empty or longer than 255 bytes.
    #[error("invalid name {0:?}: must be 1..=255 bytes")]
    BadName(String),
}

/// Introspection errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntrospectError {
    /// The process is not alive (or not on this node).
    #[error("no such process {0}")]
    NoProc(Pid),
    /// The behaviour does not expose its state.
    #[error("{0} does not expose its state (Behaviour::snapshot)")]
    NoSnapshot(Pid),
    /// The process did not answer in time (busy in a long handler).
    #[error("{0} did not answer within {1:?}")]
    Timeout(Pid, Duration),
}

type Shard = Mutex<SerialMap<Arc<dyn AnyProcess>>>;

/// State shared by all handles of one node and by its processes.
pub(crate) struct NodeShared {
    pub(crate) id: NodeId,
    pub(crate) rt: tokio::runtime::Handle,
    next_serial: AtomicU64,
    next_ref: AtomicU64,
    shards: Box<[Shard]>,
    registry: Mutex<FxHashMap<Arc<str>, Pid>>,
    started: Instant,
    /// The trace clock: the CPU's invariant counter where there is one (a read costs ~9 ns
    /// against ~24 ns for `Instant`, and a traced message reads it once), the OS clock
    /// otherwise; `started_raw` is its reading at `started`.
    clock: quanta::Clock,
    started_raw: u64,
    trace_capacity: usize,
    shutting_down: AtomicBool,
    dropped: AtomicU64,
    /// The distribution layer, once started (see [`Node::start_distributed`]).
    pub(crate) dist: std::sync::OnceLock<Arc<crate::dist::Dist>>,
    /// Process groups.
    pub(crate) pg: crate::pg::Pg,
}

/// A soma node's process runtime. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    shared: Arc<NodeShared>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.shared.id).finish()
    }
}

/// A typed handle to a local process: send, call, and its PID. Cheap to clone; holding one does
/// not keep the process alive (sending to an exited process drops the message).
pub struct Addr<B: Behaviour> {
    pub(crate) cell: Arc<Cell<B>>,
}

impl<B: Behaviour> Clone for Addr<B> {
    fn clone(&self) -> Self {
        Addr { cell: Arc::clone(&self.cell) }
    }
}

impl<B: Behaviour> std::fmt::Debug for Addr<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Addr<{}>({})", B::name(), self.cell.pid())
    }
}

impl<B: Behaviour> Addr<B> {
    /// The process's PID.
    pub fn pid(&self) -> Pid {
        self.cell.pid()
    }

    pub(crate) fn push(&self, env: Envelope<B>) -> Result<(), SendError> {
        match self.cell.push(env) {
            Ok(()) => Ok(()),
            Err(PushError::Full(_)) => Err(SendError::Full(self.pid())),
        }
    }

    /// Sends a message without waiting. Fails only if the mailbox is bounded and full; a message
    /// to an exited process is dropped silently (G2).
    pub fn send(&self, msg: B::Msg) -> Result<(), SendError> {
        self.push(Envelope::Cast { msg, from: None, corr: None })
    }

    /// Like [`send`](Self::send), with a correlation ID.
    pub fn send_with(&self, msg: B::Msg, corr: Option<CorrelationId>) -> Result<(), SendError> {
        self.push(Envelope::Cast { msg, from: None, corr })
    }

    /// Sends a message, waiting for room if the mailbox is bounded and full.
    ///
    /// # Cancel safety
    /// If dropped before completion, the message was not sent.
    pub async fn send_wait(&self, msg: B::Msg) {
        self.cell.push_wait(Envelope::Cast { msg, from: None, corr: None }).await
    }

    /// Calls the process and waits up to `timeout` for the reply.
    pub async fn call(&self, req: B::Call, timeout: Duration) -> Result<B::Reply, CallError> {
        call_cell(&self.cell, req, None, None, timeout).await
    }

    /// Like [`call`](Self::call), with a correlation ID.
    pub async fn call_with(
        &self,
        req: B::Call,
        corr: Option<CorrelationId>,
        timeout: Duration,
    ) -> Result<B::Reply, CallError> {
        call_cell(&self.cell, req, None, corr, timeout).await
    }

    /// Whether the process is still alive.
    pub fn is_alive(&self) -> bool {
        self.cell.hdr.flags() & F_EXITING == 0
    }
}

/// The call path shared by `Addr::call` and `Context::call`.
pub(crate) async fn call_cell<T: Behaviour>(
    cell: &Arc<Cell<T>>,
    req: T::Call,
    from: Option<Pid>,
    corr: Option<CorrelationId>,
    timeout: Duration,
) -> Result<T::Reply, CallError> {
    if cell.hdr.flags() & F_EXITING != 0 {
        return Err(CallError::NoProc);
    }
    let (tx, mut rx) = oneshot::channel();
    match cell.push_claim(Envelope::Call { req, reply: ReplyTo::Typed(tx), from, corr }, false) {
        Err(PushError::Full(_)) => return Err(CallError::Full),
        // Direct handoff: the callee was idle, so this task runs its activation (see
        // `runner::run_inline`); the reply is then usually there without any scheduling.
        Ok(true) => super::runner::run_inline(cell).await,
        Ok(false) => {}
    }
    match rx.try_recv() {
        Ok(rep) => return Ok(rep),
        // The callee exited (e.g. crashed in the inline activation) and dropped the reply
        // sender. A oneshot receiver must not be awaited after `try_recv` reported `Closed`
        // (tokio panics "called after complete"), so answer here.
        Err(oneshot::error::TryRecvError::Closed) => return Err(CallError::Exited),
        Err(oneshot::error::TryRecvError::Empty) => {}
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(rep)) => Ok(rep),
        Ok(Err(_)) => Err(CallError::Exited),
        Err(_) => Err(CallError::Timeout(timeout)),
    }
}

fn creation_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64)
}

impl Node {
    /// Starts a node on the current tokio runtime.
    pub fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| NodeError::NoRuntime)?;
        Self::start_on(config, rt)
    }

    /// Starts a node whose processes run on the given tokio runtime.
    pub fn start_on(config: NodeConfig, rt: tokio::runtime::Handle) -> Result<Node, NodeError> {
        super::runner::install_panic_hook();
        let creation = config.creation.unwrap_or_else(creation_now);
        let id = NodeId::intern(&config.name, creation)?;
        let shards = (0..SHARDS).map(|_| Mutex::new(SerialMap::default())).collect();
        let clock = quanta::Clock::new();
        Ok(Node {
            shared: Arc::new(NodeShared {
                id,
                rt,
                next_serial: AtomicU64::new(1),
                next_ref: AtomicU64::new(1),
                shards,
                registry: Mutex::new(FxHashMap::default()),
                started: Instant::now(),
                started_raw: clock.raw(),
                clock,
                trace_capacity: config.trace_capacity.clamp(1, TraceRing::MAX_CAPACITY),
                shutting_down: AtomicBool::new(false),
                dropped: AtomicU64::new(0),
                dist: std::sync::OnceLock::new(),
                pg: crate::pg::Pg::default(),
            }),
        })
    }

    pub(crate) fn shared(&self) -> &Arc<NodeShared> {
        &self.shared
    }

    pub(crate) fn from_shared(shared: Arc<NodeShared>) -> Node {
        Node { shared }
    }

    /// This node's identity (name + creation).
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// The PID that stands for the node itself (serial 0): the sender of exit signals sent by
    /// the runtime or an operator rather than by a process.
    pub fn node_pid(&self) -> Pid {
        Pid::new(self.shared.id, 0)
    }

    /// Spawns a process running behaviour `B`, with no parent. `init` runs before this returns
    /// (unless it awaits something, in which case it goes on in the background and messages
    /// queue until it finished).
    pub fn spawn<B: Behaviour>(&self, args: B::Args, opts: SpawnOpts) -> Result<Addr<B>, SpawnError> {
        self.shared.spawn_inner::<B>(args, opts, None, false, false).map(|(a, _)| a)
    }

    /// Whether `pid` is a live process of this node.
    pub fn is_alive(&self, pid: Pid) -> bool {
        self.shared.lookup(pid).is_some()
    }

    /// A typed handle to a local process, if it is alive and runs behaviour `B`.
    pub fn addr<B: Behaviour>(&self, pid: Pid) -> Option<Addr<B>> {
        let p = self.shared.lookup(pid)?;
        p.into_any().downcast::<Cell<B>>().ok().map(|cell| Addr { cell })
    }

    /// Sends `msg` to `pid`; `M` must be the target behaviour's message type. A dead or unknown
    /// PID drops the message (G2).
    pub fn send<M: super::behaviour::Message>(&self, pid: Pid, msg: M) -> Result<(), SendError> {
        if let Some(d) = self.shared.remote(pid) {
            return d.send(pid, None, None, &msg);
        }
        self.shared.send_any(pid, Box::new(msg), None, None)
    }

    /// Sends a JSON message to `pid`, decoded into its behaviour's message type.
    pub fn send_json(&self, pid: Pid, msg: serde_json::Value, corr: Option<CorrelationId>) -> Result<(), String> {
        match self.shared.lookup(pid) {
            Some(p) => p.send_json(msg, corr),
            None => Err(format!("no such process {pid}")),
        }
    }

    /// Calls `pid` with a JSON request and returns the JSON reply.
    pub async fn call_json(
        &self,
        pid: Pid,
        req: serde_json::Value,
        corr: Option<CorrelationId>,
        timeout: Duration,
    ) -> Result<serde_json::Value, CallError> {
        let p = self.shared.lookup(pid).ok_or(CallError::NoProc)?;
        let rx = p.call_json(req, corr)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(CallError::BadRequest(e)),
            Ok(Err(_)) => Err(CallError::Exited),
            Err(_) => Err(CallError::Timeout(timeout)),
        }
    }

    /// Sends an exit signal to `pid` from the node (as Erlang's `exit(Pid, Reason)`). The node
    /// acts as every process's ultimate parent, so a process that traps exits terminates with
    /// that reason (running `terminate`, as a gen_server does on its parent's exit signal); a
    /// process that does not trap exits stops for any reason but `normal`, without `terminate`.
    pub fn exit(&self, pid: Pid, reason: ExitReason) {
        self.shared.exit_signal(self.node_pid(), pid, reason, false);
    }

    /// Kills `pid` unconditionally: it stops at once with reason `killed`, even inside a handler
    /// that is awaiting something; `terminate` does not run.
    pub fn kill(&self, pid: Pid) {
        self.shared.exit_signal(self.node_pid(), pid, ExitReason::Killed, true);
    }

    /// Waits until `pid` exits and returns its reason (`noproc` if it is not alive). Like a
    /// monitor held by code that is not a process.
    pub fn wait_exit(&self, pid: Pid) -> impl Future<Output = ExitReason> + Send + 'static {
        let rx = self.shared.lookup(pid).and_then(|p| {
            let mut meta = p.header().meta.lock();
            if meta.exited.is_some() {
                return None;
            }
            let (tx, rx) = oneshot::channel();
            meta.exit_waiters.push(tx);
            Some(rx)
        });
        async move {
            match rx {
                Some(rx) => rx.await.unwrap_or(ExitReason::NoProc),
                None => ExitReason::NoProc,
            }
        }
    }

    /// Registers `pid` under `name` (a process has at most one name; the name goes with it).
    pub fn register(&self, name: &str, pid: Pid) -> Result<(), RegistryError> {
        self.shared.register(name, pid)
    }

    /// Removes a registered name. Returns the PID it named.
    pub fn unregister(&self, name: &str) -> Option<Pid> {
        let pid = self.shared.registry.lock().remove(name)?;
        if let Some(p) = self.shared.lookup(pid) {
            let mut meta = p.header().meta.lock();
            if meta.name.as_deref() == Some(name) {
                meta.name = None;
            }
        }
        Some(pid)
    }

    /// The PID registered under `name`.
    pub fn whereis(&self, name: &str) -> Option<Pid> {
        self.shared.registry.lock().get(name).copied()
    }

    /// All registered names, sorted.
    pub fn registered(&self) -> Vec<(String, Pid)> {
        let mut v: Vec<_> = self.shared.registry.lock().iter().map(|(n, p)| (n.to_string(), *p)).collect();
        v.sort();
        v
    }

    /// Info about a live process.
    pub fn info(&self, pid: Pid) -> Result<ProcessInfo, IntrospectError> {
        self.shared.lookup(pid).map(|p| p.info()).ok_or(IntrospectError::NoProc(pid))
    }

    /// Up to `max` (at most [`MAX_PEEK`]) queued messages, oldest first, as JSON — without
    /// consuming them.
    ///
    /// The queued messages are cloned under the process's inbox and mailbox locks and rendered
    /// after: the process's runner and its senders wait for those clones, so keep `max` modest
    /// on a busy process (the admin API caps it at 1,000). A message type's `Clone` must not
    /// call into the runtime (send, spawn, introspect): it runs under those locks.
    pub fn peek(&self, pid: Pid, max: usize) -> Result<Vec<serde_json::Value>, IntrospectError> {
        let max = max.min(MAX_PEEK);
        self.shared.lookup(pid).map(|p| p.peek_json(max)).ok_or(IntrospectError::NoProc(pid))
    }

    /// The state of a process as JSON (behaviours that implement `snapshot`). Served by the
    /// process between messages, even while suspended; waits up to `timeout`.
    pub async fn state(&self, pid: Pid, timeout: Duration) -> Result<serde_json::Value, IntrospectError> {
        let p = self.shared.lookup(pid).ok_or(IntrospectError::NoProc(pid))?;
        let (tx, rx) = oneshot::channel();
        if !p.sys(SysMsg::GetState(tx)) {
            return Err(IntrospectError::NoProc(pid));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Some(v))) => Ok(v),
            Ok(Ok(None)) => Err(IntrospectError::NoSnapshot(pid)),
            Ok(Err(_)) => Err(IntrospectError::NoProc(pid)),
            Err(_) => Err(IntrospectError::Timeout(pid, timeout)),
        }
    }

    /// Switches live tracing of `pid` on or off. Turning it on allocates the ring (kept, with
    /// what it captured, when switched off; turning on again continues it).
    pub fn trace(&self, pid: Pid, on: bool) -> Result<(), IntrospectError> {
        let p = self.shared.lookup(pid).ok_or(IntrospectError::NoProc(pid))?;
        self.shared.set_trace(&*p, on);
        Ok(())
    }

    /// Trace events of `pid` with sequence number greater than `after`, at most `max`.
    pub fn trace_read(&self, pid: Pid, after: u64, max: usize) -> Result<Vec<TraceEvent>, IntrospectError> {
        let p = self.shared.lookup(pid).ok_or(IntrospectError::NoProc(pid))?;
        let mut out: Vec<TraceEvent> = Vec::new();
        let mut after = after;
        while out.len() < max {
            let want = (max - out.len()).min(TraceRing::READ_CHUNK);
            let chunk = match p.header().trace.lock().as_ref() {
                Some(r) => r.read(pid, after, want, |raw| self.shared.raw_to_ns(raw)),
                None => break,
            };
            let Some(last) = chunk.last() else { break };
            after = last.seq;
            let short = chunk.len() < want;
            out.extend(chunk);
            if short {
                break;
            }
        }
        Ok(out)
    }

    /// A live stream of `pid`'s trace events from now on (tracing must be on, or be switched on
    /// later). Ends after the process's `exited` event.
    pub fn trace_stream(&self, pid: Pid) -> Result<TraceStream, IntrospectError> {
        let p = self.shared.lookup(pid).ok_or(IntrospectError::NoProc(pid))?;
        let (notify, after) = {
            let mut slot = p.header().trace.lock();
            let cap = self.shared.trace_capacity;
            let ring = slot.get_or_insert_with(|| Box::new(TraceRing::new(cap)));
            ring.watchers += 1;
            let last = ring.last_seq();
            (Arc::clone(&ring.notify), last)
        };
        Ok(TraceStream { proc: p, pid, notify, after, buf: std::collections::VecDeque::new(), done: false })
    }

    /// Suspends a process: messages queue up unhandled until [`resume`](Self::resume); it still
    /// answers introspection and can be killed.
    pub fn suspend(&self, pid: Pid) -> Result<(), IntrospectError> {
        let p = self.shared.lookup(pid).ok_or(IntrospectError::NoProc(pid))?;
        p.set_suspended(true);
        Ok(())
    }

    /// Resumes a suspended process.
    pub fn resume(&self, pid: Pid) -> Result<(), IntrospectError> {
        let p = self.shared.lookup(pid).ok_or(IntrospectError::NoProc(pid))?;
        p.set_suspended(false);
        Ok(())
    }

    /// PIDs of all live processes on this node, in spawn order.
    pub fn processes(&self) -> Vec<Pid> {
        let mut v: Vec<Pid> = Vec::new();
        for shard in self.shared.shards.iter() {
            v.extend(shard.lock().values().map(|p| p.header().pid));
        }
        v.sort_by_key(|p| p.serial());
        v
    }

    /// Number of live processes.
    pub fn process_count(&self) -> usize {
        self.shared.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Messages dropped because their target was dead, unknown or unreachable.
    pub fn dropped_messages(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// The node's process tree: each process under its parent, roots (no live parent) at the
    /// top, in spawn order.
    pub fn tree(&self) -> Vec<TreeNode> {
        let mut procs: Vec<Arc<dyn AnyProcess>> = Vec::new();
        for shard in self.shared.shards.iter() {
            procs.extend(shard.lock().values().cloned());
        }
        procs.sort_by_key(|p| p.header().pid.serial());
        let mut children: FxHashMap<Pid, Vec<usize>> = FxHashMap::default();
        let alive: rustc_hash::FxHashSet<Pid> = procs.iter().map(|p| p.header().pid).collect();
        let mut roots = Vec::new();
        for (i, p) in procs.iter().enumerate() {
            match p.header().parent {
                Some(parent) if alive.contains(&parent) => children.entry(parent).or_default().push(i),
                _ => roots.push(i),
            }
        }
        fn build(
            i: usize,
            procs: &[Arc<dyn AnyProcess>],
            children: &FxHashMap<Pid, Vec<usize>>,
            depth: usize,
        ) -> TreeNode {
            let info = procs[i].info();
            let kids = if depth < 64 {
                children
                    .get(&info.pid)
                    .map_or_else(Vec::new, |c| c.iter().map(|&j| build(j, procs, children, depth + 1)).collect())
            } else {
                Vec::new()
            };
            TreeNode {
                pid: info.pid,
                label: info.label,
                behaviour: info.behaviour,
                status: info.status,
                children: kids,
            }
        }
        roots.into_iter().map(|i| build(i, &procs, &children, 0)).collect()
    }

    /// Stops every process: top-level processes get an exit signal `shutdown` (supervisors
    /// stop their children in order), then whatever is left after `timeout` is killed.
    pub async fn shutdown(&self, timeout: Duration) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        if let Some(d) = self.shared.dist.get() {
            d.shutdown();
        }
        let roots: Vec<Pid> = self.tree().iter().rev().map(|t| t.pid).collect();
        let waits: Vec<_> = self.processes().into_iter().map(|p| self.wait_exit(p)).collect();
        for pid in roots {
            self.exit(pid, ExitReason::Shutdown);
        }
        let all = async {
            for w in waits {
                w.await;
            }
        };
        if tokio::time::timeout(timeout, all).await.is_err() {
            for pid in self.processes() {
                self.kill(pid);
            }
            let waits: Vec<_> = self.processes().into_iter().map(|p| self.wait_exit(p)).collect();
            for w in waits {
                w.await;
            }
        }
    }
}

/// A live stream of one process's trace events (see [`Node::trace_stream`]).
pub struct TraceStream {
    proc: Arc<dyn AnyProcess>,
    pid: Pid,
    notify: Arc<tokio::sync::Notify>,
    after: u64,
    buf: std::collections::VecDeque<TraceEvent>,
    done: bool,
}

impl TraceStream {
    /// The next event; `None` once the process has exited and its last event was returned.
    ///
    /// # Cancel safety
    /// Cancel-safe: no event is lost if the future is dropped before completion.
    pub async fn next(&mut self) -> Option<TraceEvent> {
        loop {
            if let Some(e) = self.buf.pop_front() {
                if e.kind == TraceKind::Exited {
                    self.done = true;
                }
                return Some(e);
            }
            if self.done {
                return None;
            }
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Not `meta.exited`: that is set before the exit effects are delivered and the
            // `exited` event is pushed (last); ending on it could miss that event. Read before
            // the ring: the exit pushes `exited` before it sets `exit_done`, so when this is
            // true the read below includes `exited` (when there is a ring at all).
            let exited = self.proc.header().meta.lock().exit_done;
            if let Some(ring) = self.proc.header().trace.lock().as_ref() {
                let node = &self.proc.header().node;
                self.buf.extend(ring.read(self.pid, self.after, TraceRing::READ_CHUNK, |raw| node.raw_to_ns(raw)));
            }
            if let Some(last) = self.buf.back() {
                self.after = last.seq;
                continue;
            }
            if exited {
                self.done = true;
                return None;
            }
            notified.await;
        }
    }
}

impl Drop for TraceStream {
    fn drop(&mut self) {
        if let Some(ring) = self.proc.header().trace.lock().as_mut() {
            ring.watchers = ring.watchers.saturating_sub(1);
        }
    }
}

/// A future that is always ready — used to poll `init` inline.
fn poll_inline<F: Future>(fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    let mut cx = TaskContext::from_waker(std::task::Waker::noop());
    fut.poll(&mut cx)
}

/// Outcome of adding a link or monitor entry to one side.
enum Added {
    Yes,
    Exited,
    Limit,
}

impl NodeShared {
    #[inline]
    fn shard(&self, serial: u64) -> &Shard {
        &self.shards[(serial as usize) % SHARDS]
    }

    /// The trace clock's raw reading. Trace records keep it as it is and are converted to
    /// nanoseconds ([`NodeShared::raw_to_ns`]) only when read: the scaling is a 128-bit multiply
    /// that the traced message path need not pay.
    #[inline]
    pub(crate) fn now_raw(&self) -> u64 {
        self.clock.raw()
    }

    /// Nanoseconds since the node started at the raw trace-clock reading `raw`.
    pub(crate) fn raw_to_ns(&self, raw: u64) -> u64 {
        self.clock.delta_as_nanos(self.started_raw, raw)
    }

    /// Milliseconds since the node started (the monotonic clock fed to supervision decisions).
    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    #[inline]
    pub(crate) fn is_remote(&self, pid: Pid) -> bool {
        pid.node() != self.id
    }

    /// The distribution layer, if this node is distributed and `pid` is on another node.
    #[inline]
    pub(crate) fn remote(&self, pid: Pid) -> Option<&Arc<crate::dist::Dist>> {
        if self.is_remote(pid) {
            self.dist.get()
        } else {
            None
        }
    }

    pub(crate) fn whereis(&self, name: &str) -> Option<Pid> {
        self.registry.lock().get(name).copied()
    }

    /// A peer process links to local `local`: `false` if `local` is gone (or at its limit).
    pub(crate) fn link_from_remote(&self, local: Pid, remote: Pid) -> bool {
        self.lookup(local).is_some_and(|p| matches!(self.add_link(&*p, remote), Added::Yes))
    }

    /// Removes `remote` from `local`'s links.
    pub(crate) fn unlink_local_side(&self, local: Pid, remote: Pid) {
        if let Some(p) = self.lookup(local) {
            p.header().meta.lock().links.retain(|l| *l != remote);
        }
    }

    /// A peer process monitors local `target`. `Err`: the `Down` to send back at once.
    pub(crate) fn monitor_from_remote(&self, watcher: Pid, target: Pid, mref: MonitorRef) -> Result<(), ExitReason> {
        let Some(t) = self.lookup(target) else { return Err(ExitReason::NoProc) };
        let mut meta = t.header().meta.lock();
        if meta.exited.is_some() {
            return Err(ExitReason::NoProc);
        }
        if meta.monitored_by.len() >= MAX_MONITORS {
            return Err(ExitReason::crashed(format!("system_limit: {target} has too many monitors")));
        }
        meta.monitored_by.push((mref, watcher));
        Ok(())
    }

    /// Removes a peer watcher's monitor of local `target`.
    pub(crate) fn demonitor_from_remote(&self, watcher: Pid, target: Pid, mref: MonitorRef) {
        if let Some(t) = self.lookup(target) {
            t.header().meta.lock().monitored_by.retain(|(r, w)| !(*r == mref && *w == watcher));
        }
    }

    pub(crate) fn lookup(&self, pid: Pid) -> Option<Arc<dyn AnyProcess>> {
        if pid.node() != self.id {
            return None;
        }
        self.shard(pid.serial()).lock().get(&pid.serial()).cloned()
    }

    pub(crate) fn spawn_inner<B: Behaviour>(
        self: &Arc<Self>,
        args: B::Args,
        opts: SpawnOpts,
        parent: Option<Pid>,
        link: bool,
        monitor: bool,
    ) -> Result<(Addr<B>, Option<MonitorRef>), SpawnError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(SpawnError::ShuttingDown);
        }
        let capacity = match opts.mailbox {
            MailboxKind::Unbounded => None,
            MailboxKind::Bounded(0) => return Err(SpawnError::ZeroCapacity),
            MailboxKind::Bounded(n) => Some(n),
        };
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let pid = Pid::new(self.id, serial);
        let label = opts.label.map(Arc::<str>::from);
        let cell = Arc::new(Cell::<B>::new(pid, Arc::clone(self), capacity, label, parent));
        self.shard(serial).lock().insert(serial, cell.clone() as Arc<dyn AnyProcess>);
        if let Some(name) = opts.register.as_deref() {
            if let Err(e) = self.register(name, pid) {
                self.shard(serial).lock().remove(&serial);
                return Err(e.into());
            }
        }
        if opts.trace {
            self.set_trace(&*cell, true);
        }
        let mut mref = None;
        if let Some(parent) = parent {
            if link {
                // `link(a, b)` needs `a` local: a remote parent (a remote spawn's requester) is
                // linked from the child's side, which tells the parent's node.
                if self.is_remote(parent) {
                    self.link(pid, parent);
                } else {
                    self.link(parent, pid);
                }
            }
            if monitor {
                mref = Some(self.monitor(parent, pid));
            }
        }
        // The first activation (init) runs here, inline; it becomes a task only if it awaits.
        let mut fut = Box::pin(super::runner::run::<B>(Arc::clone(&cell), Some(args)));
        let pending = {
            let _guard = tokio::task::try_id().is_none().then(|| self.rt.enter());
            poll_inline(fut.as_mut()).is_pending()
        };
        if pending {
            self.rt.spawn(fut);
        } else if let Some(reason) = cell.hdr.meta.lock().exited.clone() {
            return Err(SpawnError::Init(reason));
        }
        Ok((Addr { cell }, mref))
    }

    pub(crate) fn send_any(
        &self,
        pid: Pid,
        msg: Box<dyn Any + Send>,
        from: Option<Pid>,
        corr: Option<CorrelationId>,
    ) -> Result<(), SendError> {
        let Some(p) = self.lookup(pid) else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        p.push_any(msg, from, corr)
    }

    pub(crate) fn set_trace(&self, p: &dyn AnyProcess, on: bool) {
        let hdr = p.header();
        let mut slot = hdr.trace.lock();
        if on {
            let cap = self.trace_capacity;
            slot.get_or_insert_with(|| Box::new(TraceRing::new(cap)));
            hdr.flags.fetch_or(F_TRACED, Ordering::SeqCst);
        } else {
            hdr.flags.fetch_and(!F_TRACED, Ordering::SeqCst);
        }
    }

    pub(crate) fn exit_signal(&self, from: Pid, to: Pid, reason: ExitReason, kill: bool) {
        if let Some(d) = self.remote(to) {
            return d.exit(from, to, reason, kill, false);
        }
        if let Some(p) = self.lookup(to) {
            p.exit_signal(from, reason, kill);
        }
    }

    pub(crate) fn register(&self, name: &str, pid: Pid) -> Result<(), RegistryError> {
        if name.is_empty() || name.len() > 255 {
            return Err(RegistryError::BadName(name.to_owned()));
        }
        let p = self.lookup(pid).ok_or(RegistryError::NoProc(pid))?;
        let mut reg = self.registry.lock();
        if reg.contains_key(name) {
            return Err(RegistryError::NameTaken(name.to_owned()));
        }
        let mut meta = p.header().meta.lock();
        if meta.exited.is_some() {
            return Err(RegistryError::NoProc(pid));
        }
        if let Some(old) = &meta.name {
            return Err(RegistryError::AlreadyRegistered(pid, old.to_string()));
        }
        let name: Arc<str> = Arc::from(name);
        meta.name = Some(Arc::clone(&name));
        reg.insert(name, pid);
        Ok(())
    }

    /// Adds `b` to `a`'s links (if `a` is alive and below [`MAX_LINKS`]).
    fn add_link(&self, a: &dyn AnyProcess, b: Pid) -> Added {
        let mut meta = a.header().meta.lock();
        if meta.exited.is_some() {
            return Added::Exited;
        }
        if !meta.links.contains(&b) {
            if meta.links.len() >= MAX_LINKS {
                return Added::Limit;
            }
            meta.links.push(b);
        }
        Added::Yes
    }

    /// A process hit one of its limits (links, monitors): like Erlang's `system_limit` error, it
    /// crashes (a process that traps exits gets the signal as a message instead).
    fn system_limit(&self, p: &dyn AnyProcess, what: &str) -> ExitReason {
        let pid = p.header().pid;
        let reason = ExitReason::crashed(format!("system_limit: {what}"));
        tracing::error!(%pid, what, "process reached a system limit");
        reason
    }

    pub(crate) fn link(&self, a: Pid, b: Pid) {
        if a == b {
            return;
        }
        let Some(pa) = self.lookup(a) else { return };
        match self.add_link(&*pa, b) {
            Added::Yes => {}
            Added::Exited => return,
            Added::Limit => {
                let reason = self.system_limit(&*pa, "too many links");
                return Arc::clone(&pa).exit_signal(a, reason, false);
            }
        }
        if let Some(d) = self.remote(b) {
            if let Err(reason) = d.link(a, b) {
                pa.header().meta.lock().links.retain(|p| *p != b);
                pa.exit_signal(b, reason, false);
            }
            return;
        }
        let reason = match self.lookup(b).map(|pb| self.add_link(&*pb, a)) {
            Some(Added::Yes) => return,
            Some(Added::Limit) => ExitReason::crashed(format!("system_limit: {b} has too many links")),
            Some(Added::Exited) | None => ExitReason::NoProc,
        };
        pa.header().meta.lock().links.retain(|p| *p != b);
        pa.exit_signal(b, reason, false);
    }

    pub(crate) fn unlink(&self, a: Pid, b: Pid) {
        if let Some(d) = self.remote(b) {
            self.unlink_local_side(a, b);
            return d.unlink(a, b);
        }
        for (x, y) in [(a, b), (b, a)] {
            if let Some(p) = self.lookup(x) {
                p.header().meta.lock().links.retain(|l| *l != y);
            }
        }
    }

    pub(crate) fn monitor(&self, watcher: Pid, target: Pid) -> MonitorRef {
        let mref = MonitorRef(self.next_ref.fetch_add(1, Ordering::Relaxed));
        let Some(w) = self.lookup(watcher) else { return mref };
        {
            let mut meta = w.header().meta.lock();
            if meta.monitors.len() >= MAX_MONITORS {
                drop(meta);
                let reason = self.system_limit(&*w, "too many monitors");
                w.exit_signal(watcher, reason, false);
                return mref;
            }
            meta.monitors.push((mref, target));
        }
        if let Some(d) = self.remote(target) {
            if let Err(reason) = d.monitor(watcher, target, mref) {
                w.down(Down { monitor: mref, pid: target, reason });
            }
            return mref;
        }
        let added = self.lookup(target).map(|t| {
            let mut meta = t.header().meta.lock();
            if meta.exited.is_some() {
                return Added::Exited;
            }
            if meta.monitored_by.len() >= MAX_MONITORS {
                return Added::Limit;
            }
            meta.monitored_by.push((mref, watcher));
            Added::Yes
        });
        let reason = match added {
            Some(Added::Yes) => return mref,
            Some(Added::Limit) => ExitReason::crashed(format!("system_limit: {target} has too many monitors")),
            Some(Added::Exited) | None => ExitReason::NoProc,
        };
        w.down(Down { monitor: mref, pid: target, reason });
        mref
    }

    pub(crate) fn demonitor(&self, watcher: Pid, mref: MonitorRef) {
        let target = self.lookup(watcher).and_then(|w| {
            let mut meta = w.header().meta.lock();
            let i = meta.monitors.iter().position(|(r, _)| *r == mref)?;
            Some(meta.monitors.swap_remove(i).1)
        });
        let Some(target) = target else { return };
        if let Some(d) = self.remote(target) {
            return d.demonitor(watcher, target, mref);
        }
        self.demonitor_from_remote(watcher, target, mref);
    }

    /// Exit bookkeeping, run by the exiting process's runner after its state is gone.
    pub(crate) fn exit_process<B: Behaviour>(&self, cell: &Arc<Cell<B>>, reason: ExitReason) {
        let hdr = &cell.hdr;
        let pid = hdr.pid;
        hdr.flags.fetch_or(F_EXITING, Ordering::SeqCst);
        let (links, monitored_by, monitors, waiters, name, label) = {
            let mut meta = hdr.meta.lock();
            meta.exited = Some(reason.clone());
            meta.kill_waker = None;
            (
                std::mem::take(&mut meta.links),
                std::mem::take(&mut meta.monitored_by),
                std::mem::take(&mut meta.monitors),
                std::mem::take(&mut meta.exit_waiters),
                meta.name.take(),
                meta.label.clone(),
            )
        };
        let (queued, sys) = {
            let mut mb = cell.mailbox.lock();
            mb.closed = true;
            mb.running = true; // never schedule again
            mb.wake_waiters();
            (std::mem::take(&mut mb.queue), std::mem::take(&mut mb.sys))
        };
        let inbox = std::mem::take(&mut *cell.inbox.lock());
        self.shard(pid.serial()).lock().remove(&pid.serial());
        if let Some(name) = name {
            let mut reg = self.registry.lock();
            if reg.get(&name) == Some(&pid) {
                reg.remove(&name);
            }
        }
        match &reason {
            ExitReason::Crashed(why) => {
                tracing::error!(%pid, label = label.as_deref().unwrap_or(""), behaviour = B::name(), reason = %why, "process crashed")
            }
            r => {
                tracing::debug!(%pid, label = label.as_deref().unwrap_or(""), behaviour = B::name(), reason = %r, "process exited")
            }
        }
        for l in links {
            if let Some(d) = self.remote(l) {
                d.exit(pid, l, reason.clone(), false, true);
            } else if let Some(p) = self.lookup(l) {
                p.header().meta.lock().links.retain(|x| *x != pid);
                p.exit_signal(pid, reason.clone(), false);
            }
        }
        for (mref, w) in monitored_by {
            if let Some(d) = self.remote(w) {
                d.down(w, mref, pid, reason.clone());
            } else if let Some(p) = self.lookup(w) {
                p.down(Down { monitor: mref, pid, reason: reason.clone() });
            }
        }
        for (mref, t) in monitors {
            if let Some(d) = self.remote(t) {
                d.demonitor(pid, t, mref);
            } else {
                self.demonitor_from_remote(pid, t, mref);
            }
        }
        for w in waiters {
            let _ = w.send(reason.clone());
        }
        // Last: whoever sees `exited` in the trace knows every exit effect (links, monitors,
        // waiters) has been delivered.
        // `exited` first, then `exit_done`: a stream that sees `exit_done` finds `exited` in
        // the ring (see `TraceStream::next`).
        if let Some(ring) = hdr.trace.lock().as_mut() {
            ring.push_value(self.now_raw(), TraceKind::Exited, None, None, reason.clone());
        }
        hdr.meta.lock().exit_done = true;
        // Wake streams even when no watcher is counted, so they see the exit.
        if let Some(ring) = hdr.trace.lock().as_ref() {
            ring.notify.notify_waiters();
        }
        // Pending calls see their reply channel closed: `CallError::Exited`.
        drop(queued);
        drop(inbox);
        drop(sys);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serial_hash_fills_a_group_per_run_of_16_scatters_the_runs_and_spreads_the_tag() {
        let shard_serials: Vec<u64> = (0..4096u64).map(|i| 7 + i * SHARDS as u64).collect();
        let hashes: Vec<u64> = shard_serials.iter().map(|&s| mix_serial(s)).collect();
        let tag = |h: u64| h >> 57;
        let bucket = |h: u64| h & ((1 << 57) - 1);
        for (run, hs) in hashes.chunks(16).enumerate() {
            for (j, &h) in hs.iter().enumerate() {
                assert_eq!(bucket(h), bucket(hs[0]) + j as u64, "run {run}: consecutive buckets");
            }
            assert_eq!(bucket(hs[0]) % 16, 0, "a run starts a group");
        }
        // The runs' groups, in a table of 8,192 buckets (512 groups): spread, not in a row.
        let groups: std::collections::BTreeSet<u64> = hashes.chunks(16).map(|hs| (bucket(hs[0]) & 8191) / 16).collect();
        assert!(groups.len() > 256 * 6 / 10, "256 runs land in {} distinct groups of 512", groups.len());
        let in_a_row = hashes.chunks(16).map(|hs| (bucket(hs[0]) & 8191) / 16).collect::<Vec<_>>();
        let adjacent = in_a_row.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert!(adjacent < 16, "{adjacent} of 255 consecutive runs are neighbours");
        let tags: std::collections::BTreeSet<u64> = hashes.iter().map(|&h| tag(h)).collect();
        assert_eq!(tags.len(), 128, "the tags of 4,096 serials take every value");
        for hs in hashes.chunks(16) {
            let in_run: std::collections::BTreeSet<u64> = hs.iter().map(|&h| tag(h)).collect();
            assert!(in_run.len() > 8, "a run's 16 keys share a tag too often: {} tags", in_run.len());
        }
    }

    #[test]
    fn a_table_keyed_by_serial_finds_every_serial_and_no_other() {
        let mut m: SerialMap<u64> = SerialMap::default();
        for s in (3..200_000u64).step_by(SHARDS) {
            m.insert(s, s * 2);
        }
        for s in (3..200_000u64).step_by(SHARDS) {
            assert_eq!(m.get(&s), Some(&(s * 2)));
            assert_eq!(m.get(&(s + 1)), None);
        }
        // Keys of other types still hash, and tell different keys apart (the byte path).
        let hash = |b: &[u8]| {
            let mut h = SerialHasher::default();
            std::hash::Hasher::write(&mut h, b);
            std::hash::Hasher::finish(&h)
        };
        assert_ne!(hash(b"soma"), hash(b"somb"));
        assert_ne!(hash(b"ab"), hash(b"ba"));
    }
}

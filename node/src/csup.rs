//! Cluster supervision, the shell (Immune, cluster-wide): executes what the replicated
//! supervision state machine ([`supervisor::cluster`]) decides.
//!
//! Two parts:
//!
//! * **On every node, the children service** (RPC service [`CHILDREN_SERVICE`]): starts a
//!   supervised child at a generation, stops one, lists what runs here — through the node's
//!   [`Fence`], so a start older than the newest generation seen is refused and an older
//!   incarnation is stopped before a newer one starts (G6).
//! * **On hot nodes, the supervisor loop** ([`ClusterSupervisor`]): acts only while its Raft is
//!   the leader, and only on committed state. Each round it builds the view of the nodes from
//!   membership, asks [`plan`] what to propose, proposes it, and executes the effects of what
//!   was applied: starts children on nodes (then proposes `Running`, and monitors the child
//!   from a watcher process), stops incarnations. A child's `Down` becomes an `Exited`
//!   proposal; a lost node is seen by `plan` through the view. On becoming leader it
//!   reconciles with every node (stale and orphaned incarnations stopped, unreported starts
//!   confirmed, missing ones restarted), each as its answer arrives; until a node has answered
//!   (or the order timeout has passed), it is *settling* for `plan`: a child whose placement
//!   falls on it waits, and starts it confirms for an earlier leadership are held back, so
//!   what it runs is known before it gets more. A node that died with the old leader holds up
//!   only the children that would go to it. Whenever a
//!   node comes up, and for every node every [`SWEEP_EVERY`], it lists what the node runs and
//!   stops what was replaced meanwhile (a node back from a partition, whose stop orders timed
//!   out; a membership event the loop missed). The lists run on tasks of their own and come
//!   back as events, so a silent node never holds up the loop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cluster_proto::codec::{decode_payload, encode_payload};
use cluster_proto::control::SpawnArgs;
use cluster_proto::{ExitReason, NodeId as SomaNodeId, Pid};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use supervisor::cluster::fence::{ChildKey, Fence, StartVerdict};
use supervisor::cluster::plan::{plan, reconcile, PlanConfig, Report};
use supervisor::cluster::{Cause, Command, Effect, View};
use supervisor::ExitClass;
use tokio::sync::{broadcast, mpsc};

use crate::dist::rpc::{RpcFuture, RpcService};
use crate::membership::Membership;
use crate::raft::node::RaftNode;
use crate::{Behaviour, Context, Down, Error, Node, SpawnOpts};

/// The RPC service number of the children service.
pub const CHILDREN_SERVICE: u16 = 3;
/// How often the supervisor loop runs a round when nothing wakes it.
pub const ROUND: Duration = Duration::from_millis(100);
/// Default timeout of one order to a node ([`CsupConfig::order_timeout`]).
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(5);

/// Tunables of a [`ClusterSupervisor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsupConfig {
    /// How long an order to a node (start, stop, list) waits for its answer; a node that
    /// loses its connection fails its orders at once.
    pub order_timeout: Duration,
}

impl Default for CsupConfig {
    /// Orders time out after [`ORDER_TIMEOUT`].
    fn default() -> Self {
        CsupConfig { order_timeout: ORDER_TIMEOUT }
    }
}

/// An order to a node's children service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Order {
    /// Start a child at a generation.
    Start {
        /// Supervisor.
        sup: String,
        /// Child id.
        child: String,
        /// Its generation.
        generation: u64,
        /// Registered behaviour.
        behaviour: String,
        /// JSON arguments.
        args: String,
    },
    /// Stop that incarnation (or an older one).
    Stop {
        /// Supervisor.
        sup: String,
        /// Child id.
        child: String,
        /// Generation.
        generation: u64,
    },
    /// What supervised children run here.
    List,
}

/// The answer to an [`Order`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum OrderAnswer {
    /// Started (or already running) as this PID.
    Started(String),
    /// Refused: why (stale generation, unknown behaviour, init failed ...).
    Refused(String),
    /// Stopped an incarnation (true) or had none (false).
    Stopped(bool),
    /// The supervised children running here.
    Running(Vec<Report>),
}

/// A node's supervised children and its fence.
#[derive(Default)]
struct Held {
    fence: Fence,
    pids: BTreeMap<ChildKey, (u64, Pid)>,
}

/// The children service of one node (see the module docs).
#[derive(Clone)]
pub struct Children {
    node: Node,
    held: Arc<Mutex<Held>>,
}

impl Children {
    /// Serves orders on `node` (a distributed node).
    pub fn install(node: &Node) -> Children {
        let c = Children { node: node.clone(), held: Arc::default() };
        if let Some(d) = node.dist() {
            d.set_rpc_service(CHILDREN_SERVICE, Arc::new(c.clone()));
        }
        c
    }

    /// Stale starts refused so far (G6 fault tests check that none was accepted).
    pub fn refused(&self) -> u64 {
        self.held.lock().fence.refused()
    }

    /// The supervised children running here.
    pub fn running(&self) -> Vec<Report> {
        let h = self.held.lock();
        h.pids
            .iter()
            .map(|((s, c), (g, p))| Report { sup: s.clone(), child: c.clone(), generation: *g, pid: p.to_string() })
            .collect()
    }

    fn stop_pid(&self, pid: Pid) {
        self.node.exit(pid, ExitReason::Shutdown);
    }

    async fn execute(&self, order: Order) -> OrderAnswer {
        match order {
            Order::Start { sup, child, generation, behaviour, args } => {
                let key = (sup.clone(), child.clone());
                let verdict = self.held.lock().fence.on_start(&key, generation);
                match verdict {
                    StartVerdict::Stale { newest } => {
                        tracing::warn!(%sup, %child, generation, newest, "refused a stale start");
                        return OrderAnswer::Refused(format!("stale generation {generation} (newest seen {newest})"));
                    }
                    StartVerdict::AlreadyRunning => {
                        let pid = self.held.lock().pids.get(&key).map(|(_, p)| p.to_string());
                        return OrderAnswer::Started(pid.unwrap_or_default());
                    }
                    StartVerdict::Start { stop_first } => {
                        let old = self.held.lock().pids.remove(&key);
                        if let Some((g, p)) = old {
                            debug_assert!(stop_first.contains(&g) || stop_first.is_empty());
                            tracing::info!(%sup, %child, old = g, new = generation, "stopping an older incarnation first");
                            self.stop_pid(p);
                        }
                    }
                }
                let label = Some(format!("{sup}/{child}#{generation}"));
                let spawned = match self.node.dist() {
                    Some(d) => d.spawns.spawn_here(self.node.shared(), &behaviour, &SpawnArgs::Json(args), label, None),
                    None => return OrderAnswer::Refused("not distributed".into()),
                };
                match spawned {
                    Ok(pid) => {
                        self.held.lock().pids.insert(key.clone(), (generation, pid));
                        let me = self.clone();
                        let exit = self.node.wait_exit(pid);
                        tokio::spawn(async move {
                            let _ = exit.await;
                            let mut h = me.held.lock();
                            h.fence.on_exit(&key, generation);
                            if h.pids.get(&key).is_some_and(|(g, _)| *g == generation) {
                                h.pids.remove(&key);
                            }
                        });
                        tracing::info!(%sup, %child, generation, %pid, "started a supervised child");
                        OrderAnswer::Started(pid.to_string())
                    }
                    Err(e) => {
                        self.held.lock().fence.on_exit(&(sup.clone(), child.clone()), generation);
                        OrderAnswer::Refused(e.to_string())
                    }
                }
            }
            Order::Stop { sup, child, generation } => {
                let key = (sup, child);
                let mut h = self.held.lock();
                let stop = h.fence.on_stop(&key, generation);
                let pid = match stop {
                    Some(g) if h.pids.get(&key).is_some_and(|(pg, _)| *pg == g) => h.pids.remove(&key).map(|(_, p)| p),
                    _ => None,
                };
                drop(h);
                if let Some(p) = pid {
                    self.stop_pid(p);
                }
                OrderAnswer::Stopped(pid.is_some())
            }
            Order::List => OrderAnswer::Running(self.running()),
        }
    }
}

impl RpcService for Children {
    fn serve(&self, from: SomaNodeId, body: Vec<u8>) -> RpcFuture {
        let me = self.clone();
        Box::pin(async move {
            let order: Order = decode_payload(&body).map_err(|e| format!("order from {from} does not decode: {e}"))?;
            let answer = me.execute(order).await;
            let mut out = Vec::new();
            encode_payload(&mut out, &answer).map_err(|e| e.to_string())?;
            Ok(out)
        })
    }
}

/// Sends an order to `node`'s children service (this node's own directly).
/// How the supervisor loop reaches the children services: this node's directly, the others'
/// over RPC with the configured timeout.
#[derive(Clone)]
struct Orders {
    children: Children,
    timeout: Duration,
}

impl Orders {
    async fn send(&self, node: &str, order: Order) -> Result<OrderAnswer, String> {
        if *self.children.node.id().name() == *node {
            return Ok(self.children.execute(order).await);
        }
        let d = self.children.node.dist().cloned().ok_or("not distributed")?;
        let mut body = Vec::new();
        encode_payload(&mut body, &order).map_err(|e| e.to_string())?;
        let (_, answer) = d.rpc(node, CHILDREN_SERVICE, body, self.timeout).await.map_err(|e| e.to_string())?;
        decode_payload(&answer).map_err(|e| e.to_string())
    }
}

/// What the watcher tells the supervisor loop.
#[derive(Debug)]
enum Event {
    Exited {
        sup: String,
        child: String,
        generation: u64,
        cause: Cause,
    },
    Started {
        sup: String,
        child: String,
        generation: u64,
        pid: Pid,
    },
    /// A node (incarnation) is up: new, or back from a partition still running what it ran.
    NodeUp(String),
    /// What a node answered to a `List` (sent by a sweep or on `NodeUp`, off the loop).
    Listed {
        node: String,
        reports: Vec<Report>,
    },
    /// What a node answered to the `List` a new leader sent it (`epoch`: which leadership of
    /// this loop asked; answers to an earlier one are dropped). `None`: no answer (unreachable,
    /// timed out, or a bad answer).
    FirstListed {
        epoch: u64,
        node: String,
        reports: Option<Vec<Report>>,
    },
    /// Membership events were missed (the subscription lagged): sweep every node.
    Missed,
    Wake,
}

/// How often the leader lists every node's supervised children and stops stale incarnations
/// (anti-entropy: what a lost stop order or a missed membership event left running).
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Lists `node`'s supervised children on a task of its own (a node that does not answer holds
/// up nothing; the answer comes back as [`Event::Listed`]).
/// A new leader's `List` to `node`, on a task of its own; the answer comes back as
/// [`Event::FirstListed`].
fn spawn_first_list(orders: &Orders, tx: &mpsc::UnboundedSender<Event>, epoch: u64, node: String) {
    let (orders, tx) = (orders.clone(), tx.clone());
    tokio::spawn(async move {
        let reports = match orders.send(&node, Order::List).await {
            Ok(OrderAnswer::Running(reports)) => Some(reports),
            Ok(other) => {
                tracing::warn!(%node, ?other, "odd answer to a list");
                None
            }
            Err(e) => {
                tracing::debug!(%node, error = %e, "no answer to a new leader's list");
                None
            }
        };
        let _ = tx.send(Event::FirstListed { epoch, node, reports });
    });
}

fn spawn_list(orders: &Orders, tx: &mpsc::UnboundedSender<Event>, node: String) {
    let (orders, tx) = (orders.clone(), tx.clone());
    tokio::spawn(async move {
        if let Ok(OrderAnswer::Running(reports)) = orders.send(&node, Order::List).await {
            let _ = tx.send(Event::Listed { node, reports });
        }
    });
}

/// Watches supervised children (a process, so it can monitor PIDs on any node).
struct Watcher {
    tx: mpsc::UnboundedSender<Event>,
    watched: BTreeMap<cluster_proto::MonitorRef, (String, String, u64)>,
}

/// A child to watch.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Watch {
    sup: String,
    child: String,
    generation: u64,
    pid: Pid,
}

impl Behaviour for Watcher {
    type Args = mpsc::UnboundedSender<Event>;
    type Msg = Watch;
    type Call = ();
    type Reply = ();

    fn name() -> &'static str {
        "soma.csup.watcher"
    }

    async fn init(_: &mut Context<Self>, tx: Self::Args) -> Result<Self, Error> {
        Ok(Watcher { tx, watched: BTreeMap::new() })
    }

    async fn handle(&mut self, ctx: &mut Context<Self>, w: Watch) -> Result<(), Error> {
        let m = ctx.monitor(w.pid);
        self.watched.insert(m, (w.sup, w.child, w.generation));
        Ok(())
    }

    async fn handle_down(&mut self, _: &mut Context<Self>, down: Down) -> Result<(), Error> {
        if let Some((sup, child, generation)) = self.watched.remove(&down.monitor) {
            // A lost node is the view's business (plan sees it); every other reason is an exit.
            if down.reason != ExitReason::NoConnection {
                let class = match &down.reason {
                    ExitReason::Normal => ExitClass::Normal,
                    ExitReason::Shutdown => ExitClass::Shutdown,
                    _ => ExitClass::Abnormal,
                };
                let cause = Cause::Exit(class, down.reason.to_string());
                let _ = self.tx.send(Event::Exited { sup, child, generation, cause });
            }
        }
        Ok(())
    }
}

/// The cluster supervisor of a hot node (see the module docs).
#[derive(Clone)]
pub struct ClusterSupervisor {
    raft: RaftNode,
    tx: mpsc::UnboundedSender<Event>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl ClusterSupervisor {
    /// Starts the supervisor loop on a hot node, with the default [`CsupConfig`].
    pub fn start(
        node: &Node,
        membership: &Membership,
        raft: &RaftNode,
        children: &Children,
    ) -> Result<ClusterSupervisor, crate::SpawnError> {
        Self::start_with(node, membership, raft, children, CsupConfig::default())
    }

    /// Starts the supervisor loop on a hot node.
    pub fn start_with(
        node: &Node,
        membership: &Membership,
        raft: &RaftNode,
        children: &Children,
        config: CsupConfig,
    ) -> Result<ClusterSupervisor, crate::SpawnError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = node.spawn::<Watcher>(tx.clone(), SpawnOpts::labeled("cluster-supervisor watcher"))?;
        let task = tokio::spawn(run(
            raft.clone(),
            membership.clone(),
            Orders { children: children.clone(), timeout: config.order_timeout },
            watcher.pid(),
            node.clone(),
            tx.clone(),
            rx,
        ));
        Ok(ClusterSupervisor { raft: raft.clone(), tx, task: Arc::new(Mutex::new(Some(task))) })
    }

    /// Stops the supervisor loop (the node is going away).
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
    }

    /// Proposes an operator's command (create, add, remove); answers once committed.
    pub async fn propose(&self, cmd: Command) -> Result<crate::raft::Applied, crate::raft::node::ProposeError> {
        let r = self.raft.propose(cmd).await;
        let _ = self.tx.send(Event::Wake);
        r
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn view_of(membership: &Membership) -> View {
    membership.members().iter().map(|m| (m.name.clone(), crate::membership::placement::node_view(m))).collect()
}

async fn run(
    raft: RaftNode,
    membership: Membership,
    orders: Orders,
    watcher: Pid,
    node: Node,
    tx: mpsc::UnboundedSender<Event>,
    mut rx: mpsc::UnboundedReceiver<Event>,
) {
    let cfg = PlanConfig::default();
    let mut was_leader = false;
    let mut led_term: Option<u64> = None;
    // Which leadership this is (answers to an earlier one's lists are dropped), and the nodes
    // that have not answered its first list yet: until they do, they are settling for `plan`
    // (nothing new is placed on them) and their confirmed starts are held back, so that what
    // they run is known before they get more, while every other node is planned for at once.
    let mut epoch: u64 = 0;
    let mut unheard = Unheard::default();
    let mut members = membership.subscribe();
    let mut last_sweep = tokio::time::Instant::now();
    loop {
        let event = tokio::select! {
            e = rx.recv() => match e { Some(e) => Some(e), None => return },
            m = members.recv() => match m {
                Ok(crate::membership::MemberEvent::Up(member)) => Some(Event::NodeUp(member.name)),
                Err(broadcast::error::RecvError::Lagged(_)) => Some(Event::Missed),
                _ => Some(Event::Wake),
            },
            _ = tokio::time::sleep(ROUND) => None,
        };
        let Some(term) = raft.leader_term() else {
            was_leader = false;
            continue;
        };
        // A newer term is a new leadership, even if this loop never saw the old one end (it
        // was lost and regained between two rounds, or during a proposal): reconcile again.
        if led_term != Some(term) {
            led_term = Some(term);
            was_leader = false;
        }
        let mut proposals: Vec<Command> = Vec::new();
        match event {
            Some(Event::Exited { sup, child, generation, cause }) => {
                proposals.push(Command::Exited { sup, child, generation, cause, at_ms: now_ms() });
            }
            // A start on a node that has not answered this leadership's first list yet (an
            // order of an earlier leadership, still in flight) waits for that answer: the
            // answer may have been taken before the start, and reconcile would then find the
            // child `Running` but missing, and restart a healthy child.
            Some(Event::Started { sup, child, generation, pid }) if unheard.holds(&pid) => {
                unheard.defer(Started { sup, child, generation, pid });
            }
            Some(Event::Started { sup, child, generation, pid }) => {
                started(&node, watcher, &mut proposals, Started { sup, child, generation, pid });
            }
            // A node back from a partition may still run incarnations replaced while it was
            // away (the stop orders sent meanwhile timed out): stop them now rather than at the
            // next leader change. Only the stops: what it should run is `plan`'s to decide.
            Some(Event::NodeUp(name)) if was_leader => {
                // A node back under the same name while unheard: ask the new incarnation.
                if unheard.ask_again(&name) {
                    spawn_first_list(&orders, &tx, epoch, name.clone());
                }
                spawn_list(&orders, &tx, name)
            }
            Some(Event::Missed) if was_leader => {
                for (name, _) in view_of(&membership) {
                    spawn_list(&orders, &tx, name);
                }
            }
            // The full reconcile: stops, and the commands (confirmed starts, children missing
            // from the node). Safe only for the first list: this leadership placed nothing new
            // on the node before its answer, and held back the starts it confirmed for an
            // earlier one (see `Unheard`), so a child missing from the answer was not started
            // after the node listed what it runs.
            Some(Event::FirstListed { epoch: e, node: name, reports }) if was_leader && e == epoch => {
                match reports {
                    Some(reports) if unheard.contains(&name) => {
                        let r = raft.read(|s| reconcile(s, &name, &reports, now_ms()));
                        for stop in r.stops {
                            execute(&orders, &raft, &tx, stop);
                        }
                        proposals.extend(r.commands);
                        // Watch what is confirmed running.
                        for rep in &reports {
                            if let Ok(pid) = rep.pid.parse::<Pid>() {
                                let w = Watch {
                                    sup: rep.sup.clone(),
                                    child: rep.child.clone(),
                                    generation: rep.generation,
                                    pid,
                                };
                                let _ = node.send(watcher, w);
                            }
                        }
                        for s in unheard.heard(&name) {
                            started(&node, watcher, &mut proposals, s);
                        }
                    }
                    Some(_) => {}
                    // Asked again on the next sweep (or when it comes up again), for as long
                    // as the settling window lasts.
                    None => unheard.failed(&name),
                }
            }
            // Only the stops, judged on the committed state of now: what the node should run
            // is `plan`'s to decide.
            Some(Event::Listed { node: name, reports }) if was_leader => {
                let r = raft.read(|s| reconcile(s, &name, &reports, now_ms()));
                if !r.stops.is_empty() {
                    tracing::info!(node = %name, stops = r.stops.len(), "stopping stale incarnations");
                }
                for stop in r.stops {
                    execute(&orders, &raft, &tx, stop);
                }
            }
            Some(Event::NodeUp(_) | Event::Missed | Event::Listed { .. } | Event::FirstListed { .. } | Event::Wake)
            | None => {}
        }
        if was_leader && last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = tokio::time::Instant::now();
            for (name, _) in view_of(&membership) {
                if unheard.ask_again(&name) {
                    spawn_first_list(&orders, &tx, epoch, name.clone());
                }
                spawn_list(&orders, &tx, name);
            }
        }
        // A node that has not answered within the order timeout is not waited for any more
        // (as a node that never answers must not hold its children's placements forever).
        if let Some(expired) = unheard.expire(orders.timeout) {
            tracing::warn!(nodes = ?expired.nodes, "no answer to the new leader's list; placing without it");
            for s in expired.started {
                started(&node, watcher, &mut proposals, s);
            }
        }
        if !was_leader {
            was_leader = true;
            // A new leader reconciles with every node (which also stands for the first sweep).
            // The nodes are asked at once and answer as events: one that died with the old
            // leader (not yet seen down) answers only when its connection ends or the order
            // times out, and must hold up neither the others nor the planning meanwhile.
            last_sweep = tokio::time::Instant::now();
            epoch += 1;
            let names: Vec<String> = view_of(&membership).into_keys().collect();
            unheard.restart(&names);
            for name in names {
                spawn_first_list(&orders, &tx, epoch, name);
            }
        }
        let mut view = view_of(&membership);
        for (name, v) in view.iter_mut() {
            v.settling = unheard.contains(name);
        }
        proposals.extend(raft.read(|s| plan(s, &view, now_ms(), &cfg)));
        for cmd in proposals {
            match raft.propose(cmd).await {
                Ok(applied) => {
                    if let Ok(effects) = applied.result {
                        for e in effects {
                            execute(&orders, &raft, &tx, e);
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "proposal not committed");
                    break;
                }
            }
        }
    }
}

/// A child's start, as a node confirmed it.
struct Started {
    sup: String,
    child: String,
    generation: u64,
    pid: Pid,
}

/// Watches a started child and proposes it running.
fn started(node: &Node, watcher: Pid, proposals: &mut Vec<Command>, s: Started) {
    let _ =
        node.send(watcher, Watch { sup: s.sup.clone(), child: s.child.clone(), generation: s.generation, pid: s.pid });
    proposals.push(Command::Running { sup: s.sup, child: s.child, generation: s.generation, pid: s.pid.to_string() });
}

/// Most confirmed starts held back for nodes that have not answered (G8); more are handled at
/// once (at worst, one healthy child restarted).
const MAX_DEFERRED: usize = 16 * 1024;

/// The nodes a new leader has not heard from yet: asked to list what they run, not answered.
/// Until they answer (or the settling window — the order timeout — ends), `plan` sees them as
/// settling and confirmed starts on them are held back (see the supervisor loop).
#[derive(Default)]
struct Unheard {
    /// Node → whether a list to it is in flight.
    nodes: BTreeMap<String, bool>,
    since: Option<tokio::time::Instant>,
    deferred: Vec<Started>,
}

/// What an ended settling window leaves: the nodes never heard, the starts held for them.
struct Expired {
    nodes: Vec<String>,
    started: Vec<Started>,
}

impl Unheard {
    /// A new leadership: every node in `names` is unheard (and being asked). Starts held for
    /// a node stay held until it answers this leadership (or the window ends).
    fn restart(&mut self, names: &[String]) {
        self.nodes = names.iter().map(|n| (n.clone(), true)).collect();
        self.since = Some(tokio::time::Instant::now());
    }

    fn contains(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    /// Whether to ask `node` again: unheard, and no list to it in flight (the last one
    /// failed). If so, it counts as being asked from now on.
    fn ask_again(&mut self, node: &str) -> bool {
        match self.nodes.get_mut(node) {
            Some(asking @ false) => {
                *asking = true;
                true
            }
            _ => false,
        }
    }

    fn failed(&mut self, node: &str) {
        if let Some(a) = self.nodes.get_mut(node) {
            *a = false;
        }
    }

    /// Whether a start confirmed by `pid`'s node must wait for that node's answer.
    fn holds(&self, pid: &Pid) -> bool {
        self.contains(&pid.node().name()) && self.deferred.len() < MAX_DEFERRED
    }

    fn defer(&mut self, s: Started) {
        self.deferred.push(s);
    }

    /// `node` answered: no longer unheard; the starts held for it.
    fn heard(&mut self, node: &str) -> Vec<Started> {
        self.nodes.remove(node);
        let (mine, rest) = std::mem::take(&mut self.deferred).into_iter().partition(|s| *s.pid.node().name() == *node);
        self.deferred = rest;
        mine
    }

    /// Ends the settling window once `window` has passed since the leadership began.
    fn expire(&mut self, window: Duration) -> Option<Expired> {
        let since = self.since?;
        if self.nodes.is_empty() || since.elapsed() < window {
            return None;
        }
        self.since = None;
        let nodes = std::mem::take(&mut self.nodes).into_keys().collect();
        Some(Expired { nodes, started: std::mem::take(&mut self.deferred) })
    }
}

/// Executes one effect on its own task.
fn execute(orders: &Orders, raft: &RaftNode, tx: &mpsc::UnboundedSender<Event>, e: Effect) {
    let orders = orders.clone();
    let tx = tx.clone();
    let spec = match &e {
        Effect::Start { sup, child, .. } => raft.read(|s| s.child(sup, child).map(|c| c.spec.clone())),
        Effect::Stop { .. } => None,
    };
    tokio::spawn(async move {
        match e {
            Effect::Start { node, sup, child, generation } => {
                let Some(spec) = spec else { return };
                let order = Order::Start {
                    sup: sup.clone(),
                    child: child.clone(),
                    generation,
                    behaviour: spec.behaviour,
                    args: spec.args,
                };
                match orders.send(&node, order).await {
                    Ok(OrderAnswer::Started(pid)) => match pid.parse::<Pid>() {
                        Ok(pid) => {
                            let _ = tx.send(Event::Started { sup, child, generation, pid });
                        }
                        Err(e) => tracing::warn!(%node, error = %e, "a node answered a start with a bad PID"),
                    },
                    Ok(OrderAnswer::Refused(why)) => {
                        let _ = tx.send(Event::Exited { sup, child, generation, cause: Cause::StartFailed(why) });
                    }
                    Ok(other) => tracing::warn!(%node, ?other, "odd answer to a start"),
                    // Unreachable: the view will show the node lost, or the start times out.
                    Err(e) => tracing::debug!(%node, error = %e, "start order not delivered"),
                }
            }
            Effect::Stop { node, sup, child, generation } => {
                if let Err(e) = orders.send(&node, Order::Stop { sup, child, generation }).await {
                    tracing::debug!(%node, error = %e, "stop order not delivered (reconcile will catch it)");
                }
            }
        }
    });
}

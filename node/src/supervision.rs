//! Local supervisors with OTP semantics (the *Immune* layer's local part).
//!
//! The decisions — which children to stop and start, in what order, and when to give up — come
//! from the pure `supervisor` crate ([`supervisor::Supervision`], [`supervisor::DynamicSupervision`]);
//! this module executes them with processes:
//!
//! * [`Supervisor`] — a static supervisor over an ordered list of [`ChildSpec`]s with strategy
//!   one_for_one, one_for_all or rest_for_one (OTP `supervisor`).
//! * [`DynamicSupervisor<B>`] — many children of one behaviour `B`, started on demand with their
//!   own arguments (OTP `simple_one_for_one`, Elixir `DynamicSupervisor`).
//!
//! Both trap exits and link to their children, which are spawned with the supervisor as parent
//! (so they appear under it in [`Node::tree`](crate::Node::tree)). When a child exits, the
//! decision is executed at once, inside the supervisor's `handle_exit`: children to terminate are
//! stopped in order (exit signal `shutdown`, then `kill` after their [`Shutdown`] timeout), then
//! children to start are spawned in order. Restart intensity (G7): more than `max_restarts`
//! restarts in `period_ms` makes the supervisor stop all its children (reverse start order) and
//! exit with reason `shutdown`, which its own parent sees — the escalation goes up the tree.
//!
//! A supervisor that receives an exit signal from its parent (or `shutdown` from the node)
//! stops its children in reverse start order, each within its shutdown timeout, then exits.
//!
//! A child whose `init` fails counts as a failed start: during the supervisor's own `init`,
//! that fails the supervisor (as OTP's `start_link` does); later, it is retried and counted
//! toward the restart intensity.

use std::sync::Arc;
use std::time::Duration;

use cluster_proto::{ExitReason, Pid};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use supervisor::{ChildSpecInfo, Decision, DynDecision, DynamicSupervision, Supervision};
pub use supervisor::{ChildStatus, ExitClass, Intensity, RestartType, Strategy};

use crate::process::behaviour::Message;
use crate::{Behaviour, Context, Error, MailboxKind, SpawnError, SpawnOpts};

/// How a child is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shutdown {
    /// Killed at once (`kill`; its `terminate` does not run).
    BrutalKill,
    /// Sent exit signal `shutdown`; killed if still alive after this long.
    Timeout(Duration),
    /// Sent exit signal `shutdown` and waited for, however long it takes (for supervisors).
    Infinity,
}

/// Whether a child is a worker or a supervisor (shown in `which_children`; defaults differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildKind {
    /// A worker process.
    Worker,
    /// A (nested) supervisor.
    Supervisor,
}

type StartFn = Arc<dyn Fn(&Context<Supervisor>, SpawnOpts) -> Result<Pid, SpawnError> + Send + Sync>;

/// How to start, restart and stop one child of a [`Supervisor`].
#[derive(Clone)]
pub struct ChildSpec {
    /// Unique within its supervisor (1..=255 bytes).
    pub id: String,
    /// When to restart it.
    pub restart: RestartType,
    /// How to stop it.
    pub shutdown: Shutdown,
    /// Worker or supervisor.
    pub kind: ChildKind,
    /// Spawn options (label defaults to the id).
    pub opts: SpawnOpts,
    start: StartFn,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .field("kind", &self.kind)
            .finish()
    }
}

impl ChildSpec {
    /// A permanent worker running `B`, started with `args()` each time (shutdown timeout 5 s).
    pub fn worker<B: Behaviour>(
        id: impl Into<String>,
        args: impl Fn() -> B::Args + Send + Sync + 'static,
    ) -> ChildSpec {
        let start: StartFn = Arc::new(move |ctx, opts| ctx.spawn_link::<B>(args(), opts).map(|a| a.pid()));
        let id = id.into();
        ChildSpec {
            opts: SpawnOpts::labeled(id.clone()),
            id,
            restart: RestartType::Permanent,
            shutdown: Shutdown::Timeout(Duration::from_secs(5)),
            kind: ChildKind::Worker,
            start,
        }
    }

    /// A permanent nested supervisor (shutdown `Infinity`).
    pub fn supervisor(id: impl Into<String>, spec: SupervisorSpec) -> ChildSpec {
        let start: StartFn =
            Arc::new(move |ctx, opts| ctx.spawn_link::<Supervisor>(spec.clone(), opts).map(|a| a.pid()));
        let id = id.into();
        ChildSpec {
            opts: SpawnOpts::labeled(id.clone()),
            id,
            restart: RestartType::Permanent,
            shutdown: Shutdown::Infinity,
            kind: ChildKind::Supervisor,
            start,
        }
    }

    /// Sets the restart type.
    pub fn restart(mut self, restart: RestartType) -> Self {
        self.restart = restart;
        self
    }

    /// Sets how the child is stopped.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Sets the spawn options (keep a label: it names the child in logs and the tree).
    pub fn opts(mut self, opts: SpawnOpts) -> Self {
        self.opts = opts;
        self
    }
}

/// What a [`Supervisor`] is started with.
#[derive(Debug, Clone, Default)]
pub struct SupervisorSpec {
    /// Restart strategy.
    pub strategy: Strategy,
    /// Restart intensity.
    pub intensity: Intensity,
    /// Children, in start order.
    pub children: Vec<ChildSpec>,
}

impl SupervisorSpec {
    /// A spec with the given strategy, default intensity and no children.
    pub fn new(strategy: Strategy) -> Self {
        SupervisorSpec { strategy, intensity: Intensity::default(), children: Vec::new() }
    }

    /// Sets the intensity: more than `max_restarts` restarts within `period` escalates.
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.intensity = Intensity { max_restarts, period_ms: period.as_millis() as u64 };
        self
    }

    /// Appends a child.
    pub fn child(mut self, child: ChildSpec) -> Self {
        self.children.push(child);
        self
    }
}

/// One child, as `which_children` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildInfo {
    /// Its id.
    pub id: String,
    /// Its current PID, if running.
    pub pid: Option<Pid>,
    /// Worker or supervisor.
    pub kind: ChildKind,
    /// Restart type.
    pub restart: RestartType,
}

/// Requests a [`Supervisor`] answers (`call`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SupervisorCall {
    /// Lists the children in start order.
    WhichChildren,
    /// Stops a child; it stays stopped (its spec is kept) until `RestartChild`.
    TerminateChild(String),
    /// Starts a stopped child again.
    RestartChild(String),
    /// Removes a stopped child's spec.
    DeleteChild(String),
    /// Restarts counted in the current intensity window.
    RestartsInWindow,
}

/// Replies of a [`Supervisor`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SupervisorReply {
    /// The children.
    Children(Vec<ChildInfo>),
    /// A count.
    Count(usize),
    /// A child started, with its new PID.
    Started(Pid),
    /// Done.
    Ok,
    /// Refused, with the reason.
    Error(String),
}

fn classify(reason: &ExitReason) -> ExitClass {
    match reason {
        ExitReason::Normal => ExitClass::Normal,
        ExitReason::Shutdown => ExitClass::Shutdown,
        _ => ExitClass::Abnormal,
    }
}

/// Stops `pid`: exit signal `shutdown` then `kill` after the timeout (or `kill` at once).
async fn stop_pid<B: Behaviour>(ctx: &Context<B>, pid: Pid, how: Shutdown) {
    let node = ctx.node();
    let exited = node.wait_exit(pid);
    match how {
        Shutdown::BrutalKill => {
            ctx.kill(pid);
            exited.await;
        }
        Shutdown::Timeout(d) => {
            ctx.exit(pid, ExitReason::Shutdown);
            let mut exited = Box::pin(exited);
            if tokio::time::timeout(d, &mut exited).await.is_err() {
                tracing::warn!(%pid, timeout = ?d, "child did not shut down in time; killing it");
                ctx.kill(pid);
                exited.await;
            }
        }
        Shutdown::Infinity => {
            ctx.exit(pid, ExitReason::Shutdown);
            exited.await;
        }
    }
}

/// A static supervisor (OTP `supervisor`). See the [module docs](self).
pub struct Supervisor {
    core: Supervision,
    specs: FxHashMap<String, ChildSpec>,
    pids: FxHashMap<String, Pid>,
    by_pid: FxHashMap<Pid, String>,
}

impl Supervisor {
    /// Starts child `id`; `Err` if it could not be spawned or its `init` failed at once.
    fn start_child(&mut self, ctx: &Context<Self>, id: &str) -> Result<Pid, String> {
        let spec = self.specs.get(id).ok_or_else(|| format!("unknown child {id}"))?;
        let pid = (spec.start)(ctx, spec.opts.clone()).map_err(|e| e.to_string())?;
        self.core.mark_running(id).map_err(|e| e.to_string())?;
        self.pids.insert(id.to_owned(), pid);
        self.by_pid.insert(pid, id.to_owned());
        Ok(pid)
    }

    async fn stop_child(&mut self, ctx: &Context<Self>, id: &str) {
        let Some(pid) = self.pids.remove(id) else { return };
        self.by_pid.remove(&pid);
        let how = self.specs.get(id).map_or(Shutdown::BrutalKill, |s| s.shutdown);
        stop_pid(ctx, pid, how).await;
    }

    /// Executes a decision, including the retries that failed starts lead to.
    async fn execute(&mut self, ctx: &mut Context<Self>, mut decision: Decision) -> Result<(), Error> {
        // Bounded: every failed start is a restart counted by the intensity window, which
        // escalates after `max_restarts + 1` of them.
        loop {
            match decision {
                Decision::None => return Ok(()),
                Decision::Remove { id } => {
                    self.specs.remove(&id);
                    return Ok(());
                }
                Decision::Restart { terminate, start } => {
                    for id in &terminate {
                        self.stop_child(ctx, id).await;
                        // Temporary children are already forgotten by the core.
                        if self.core.status(id).is_none() {
                            self.specs.remove(id);
                        }
                    }
                    let mut next = None;
                    for id in &start {
                        match self.start_child(ctx, id) {
                            Ok(pid) => tracing::info!(supervisor = %ctx.pid(), child = %id, %pid, "child started"),
                            Err(why) => {
                                tracing::warn!(supervisor = %ctx.pid(), child = %id, %why, "child failed to start");
                                next = Some(self.core.on_start_failed(ctx.now_ms(), id)?);
                                break;
                            }
                        }
                    }
                    match next {
                        Some(d) => decision = d,
                        None => return Ok(()),
                    }
                }
                Decision::Escalate { terminate } => {
                    tracing::error!(supervisor = %ctx.pid(), label = ctx.label().as_deref().unwrap_or(""),
                        "reached max restart intensity; shutting down");
                    for id in &terminate {
                        self.stop_child(ctx, id).await;
                    }
                    ctx.stop(ExitReason::Shutdown);
                    return Ok(());
                }
            }
        }
    }
}

impl Behaviour for Supervisor {
    type Args = SupervisorSpec;
    type Msg = ();
    type Call = SupervisorCall;
    type Reply = SupervisorReply;

    fn name() -> &'static str {
        "supervisor"
    }

    async fn init(ctx: &mut Context<Self>, spec: SupervisorSpec) -> Result<Self, Error> {
        ctx.trap_exit(true);
        let mut sup = Supervisor {
            core: Supervision::new(spec.strategy, spec.intensity),
            specs: FxHashMap::default(),
            pids: FxHashMap::default(),
            by_pid: FxHashMap::default(),
        };
        let order: Vec<String> = spec.children.iter().map(|c| c.id.clone()).collect();
        for child in spec.children {
            sup.core.add_child(ChildSpecInfo::new(child.id.clone(), child.restart))?;
            sup.specs.insert(child.id.clone(), child);
        }
        for id in &order {
            if let Err(why) = sup.start_child(ctx, id) {
                // OTP: a child that fails to start fails the supervisor's start; stop the ones
                // already started, in reverse order.
                for started in sup.core.shutdown_order() {
                    sup.stop_child(ctx, &started).await;
                }
                return Err(format!("failed to start child {id}: {why}").into());
            }
        }
        Ok(sup)
    }

    async fn handle_exit(&mut self, ctx: &mut Context<Self>, from: Pid, reason: ExitReason) -> Result<(), Error> {
        // Exits of processes that are not current children (already stopped or replaced) are stale.
        let Some(id) = self.by_pid.remove(&from) else { return Ok(()) };
        self.pids.remove(&id);
        if reason.is_abnormal() {
            tracing::warn!(supervisor = %ctx.pid(), child = %id, pid = %from, %reason, "child exited");
        }
        let decision = self.core.on_child_exit(ctx.now_ms(), &id, classify(&reason))?;
        self.execute(ctx, decision).await
    }

    async fn handle_call(&mut self, ctx: &mut Context<Self>, req: SupervisorCall) -> Result<SupervisorReply, Error> {
        Ok(match req {
            SupervisorCall::WhichChildren => SupervisorReply::Children(
                self.core
                    .children()
                    .map(|(info, _)| ChildInfo {
                        id: info.id.clone(),
                        pid: self.pids.get(&info.id).copied(),
                        kind: self.specs.get(&info.id).map_or(ChildKind::Worker, |s| s.kind),
                        restart: info.restart,
                    })
                    .collect(),
            ),
            SupervisorCall::TerminateChild(id) => {
                if self.core.status(&id).is_none() {
                    return Ok(SupervisorReply::Error(format!("unknown child {id}")));
                }
                self.stop_child(ctx, &id).await;
                let _ = self.core.mark_stopped(&id);
                SupervisorReply::Ok
            }
            SupervisorCall::RestartChild(id) => match self.core.status(&id) {
                None => SupervisorReply::Error(format!("unknown child {id}")),
                Some(ChildStatus::Running) => SupervisorReply::Error(format!("child {id} is running")),
                Some(ChildStatus::Stopped) => match self.start_child(ctx, &id) {
                    Ok(pid) => SupervisorReply::Started(pid),
                    Err(why) => SupervisorReply::Error(why),
                },
            },
            SupervisorCall::DeleteChild(id) => match self.core.remove_child(&id) {
                Ok(()) => {
                    self.specs.remove(&id);
                    SupervisorReply::Ok
                }
                Err(e) => SupervisorReply::Error(e.to_string()),
            },
            SupervisorCall::RestartsInWindow => SupervisorReply::Count(self.core.restarts_in_window(ctx.now_ms())),
        })
    }

    async fn terminate(&mut self, ctx: &mut Context<Self>, _reason: &ExitReason) {
        for id in self.core.shutdown_order() {
            self.stop_child(ctx, &id).await;
        }
    }

    fn snapshot(&self) -> Option<serde_json::Value> {
        let children: Vec<_> = self
            .core
            .children()
            .map(|(info, status)| {
                serde_json::json!({"id": info.id, "restart": info.restart, "status": status,
                    "pid": self.pids.get(&info.id)})
            })
            .collect();
        Some(
            serde_json::json!({"strategy": self.core.strategy(), "intensity": self.core.intensity(), "children": children}),
        )
    }
}

/// What a [`DynamicSupervisor`] is started with.
#[derive(Debug, Clone)]
pub struct DynamicSpec {
    /// Restart type of every child.
    pub restart: RestartType,
    /// How children are stopped.
    pub shutdown: Shutdown,
    /// Restart intensity.
    pub intensity: Intensity,
    /// Most children at once (`None`: the hard limit of 1,048,576).
    pub max_children: Option<usize>,
    /// Label of each child (its dynamic id is appended).
    pub label: String,
    /// Mailbox of each child.
    pub mailbox: MailboxKind,
}

impl Default for DynamicSpec {
    fn default() -> Self {
        DynamicSpec {
            restart: RestartType::Permanent,
            shutdown: Shutdown::Timeout(Duration::from_secs(5)),
            intensity: Intensity::default(),
            max_children: None,
            label: "worker".to_owned(),
            mailbox: MailboxKind::Unbounded,
        }
    }
}

/// Requests a [`DynamicSupervisor`] answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DynamicCall<A> {
    /// Starts a child with these arguments.
    StartChild(A),
    /// Stops a child for good (no restart).
    TerminateChild(Pid),
    /// Lists the children's PIDs in start order.
    WhichChildren,
    /// Counts the children.
    CountChildren,
}

/// Replies of a [`DynamicSupervisor`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DynamicReply {
    /// Started, with the child's PID.
    Started(Pid),
    /// The children.
    Children(Vec<Pid>),
    /// A count.
    Count(usize),
    /// Done.
    Ok,
    /// Refused, with the reason.
    Error(String),
}

/// Many children of behaviour `B`, started on demand (OTP `simple_one_for_one`). The
/// arguments of each child are kept to restart it.
pub struct DynamicSupervisor<B: Behaviour>
where
    B::Args: Message,
{
    core: DynamicSupervision,
    spec: DynamicSpec,
    children: FxHashMap<u64, (Option<Pid>, B::Args)>,
    by_pid: FxHashMap<Pid, u64>,
}

impl<B: Behaviour> DynamicSupervisor<B>
where
    B::Args: Message,
{
    fn spawn_child(&mut self, ctx: &Context<Self>, id: u64) -> Result<Pid, String> {
        let (_, args) = self.children.get(&id).ok_or_else(|| format!("unknown child {id}"))?;
        let opts = SpawnOpts {
            label: Some(format!("{}-{id}", self.spec.label)),
            mailbox: self.spec.mailbox,
            ..SpawnOpts::default()
        };
        let pid = ctx.spawn_link::<B>(args.clone(), opts).map_err(|e| e.to_string())?.pid();
        if let Some(slot) = self.children.get_mut(&id) {
            slot.0 = Some(pid);
        }
        self.by_pid.insert(pid, id);
        Ok(pid)
    }

    async fn stop_id(&mut self, ctx: &Context<Self>, id: u64) {
        if let Some(pid) = self.children.get_mut(&id).and_then(|c| c.0.take()) {
            self.by_pid.remove(&pid);
            stop_pid(ctx, pid, self.spec.shutdown).await;
        }
    }

    async fn execute(&mut self, ctx: &mut Context<Self>, mut decision: DynDecision) -> Result<(), Error> {
        loop {
            match decision {
                DynDecision::None => return Ok(()),
                DynDecision::Remove { id } => {
                    self.children.remove(&id);
                    return Ok(());
                }
                DynDecision::Restart { id } => match self.spawn_child(ctx, id) {
                    Ok(pid) => {
                        tracing::info!(supervisor = %ctx.pid(), child = id, %pid, "child restarted");
                        return Ok(());
                    }
                    Err(why) => {
                        tracing::warn!(supervisor = %ctx.pid(), child = id, %why, "child failed to restart");
                        decision = self.core.on_start_failed(ctx.now_ms(), id)?;
                    }
                },
                DynDecision::Escalate { terminate } => {
                    tracing::error!(supervisor = %ctx.pid(), "reached max restart intensity; shutting down");
                    for id in terminate {
                        self.stop_id(ctx, id).await;
                    }
                    self.children.clear();
                    ctx.stop(ExitReason::Shutdown);
                    return Ok(());
                }
            }
        }
    }
}

impl<B: Behaviour> Behaviour for DynamicSupervisor<B>
where
    B::Args: Message,
{
    type Args = DynamicSpec;
    type Msg = ();
    type Call = DynamicCall<B::Args>;
    type Reply = DynamicReply;

    fn name() -> &'static str {
        "dynamic_supervisor"
    }

    async fn init(ctx: &mut Context<Self>, spec: DynamicSpec) -> Result<Self, Error> {
        ctx.trap_exit(true);
        Ok(DynamicSupervisor {
            core: DynamicSupervision::new(spec.restart, spec.intensity, spec.max_children),
            spec,
            children: FxHashMap::default(),
            by_pid: FxHashMap::default(),
        })
    }

    async fn handle_exit(&mut self, ctx: &mut Context<Self>, from: Pid, reason: ExitReason) -> Result<(), Error> {
        let Some(id) = self.by_pid.remove(&from) else { return Ok(()) };
        if let Some(slot) = self.children.get_mut(&id) {
            slot.0 = None;
        }
        if reason.is_abnormal() {
            tracing::warn!(supervisor = %ctx.pid(), child = id, pid = %from, %reason, "child exited");
        }
        let decision = self.core.on_child_exit(ctx.now_ms(), id, classify(&reason))?;
        self.execute(ctx, decision).await
    }

    async fn handle_call(&mut self, ctx: &mut Context<Self>, req: Self::Call) -> Result<DynamicReply, Error> {
        Ok(match req {
            DynamicCall::StartChild(args) => match self.core.start_child() {
                Err(e) => DynamicReply::Error(e.to_string()),
                Ok(id) => {
                    self.children.insert(id, (None, args));
                    match self.spawn_child(ctx, id) {
                        Ok(pid) => DynamicReply::Started(pid),
                        Err(why) => {
                            // A first start that fails is not retried (OTP returns the error).
                            let _ = self.core.terminate_child(id);
                            self.children.remove(&id);
                            DynamicReply::Error(why)
                        }
                    }
                }
            },
            DynamicCall::TerminateChild(pid) => match self.by_pid.get(&pid).copied() {
                None => DynamicReply::Error(format!("{pid} is not a child")),
                Some(id) => {
                    self.stop_id(ctx, id).await;
                    let _ = self.core.terminate_child(id);
                    self.children.remove(&id);
                    DynamicReply::Ok
                }
            },
            DynamicCall::WhichChildren => DynamicReply::Children(
                self.core.children().filter_map(|id| self.children.get(&id).and_then(|c| c.0)).collect(),
            ),
            DynamicCall::CountChildren => DynamicReply::Count(self.core.count()),
        })
    }

    async fn terminate(&mut self, ctx: &mut Context<Self>, _reason: &ExitReason) {
        for id in self.core.shutdown_order() {
            self.stop_id(ctx, id).await;
        }
    }

    fn snapshot(&self) -> Option<serde_json::Value> {
        let children: Vec<_> = self.core.children().filter_map(|id| self.children.get(&id).and_then(|c| c.0)).collect();
        Some(serde_json::json!({"restart": self.core.restart_type(), "children": children}))
    }
}

//! Cluster supervision: the replicated supervision state machine (G5–G7), as pure code.
//!
//! Cluster supervisors live in Raft among the hot nodes. Their state — specs, strategies,
//! intensities, where each child runs (its **assignment**: node, PID, generation), the restart
//! history — changes only by applying committed [`Command`]s, in log order, on every replica:
//! [`ClusterState::apply`]`(index, command)`. Applying is deterministic (time comes *in* the
//! commands, stamped by the leader that proposed them), so every replica holds the same state.
//!
//! The active supervisor is the Raft leader. It decides from committed state only
//! ([`plan`](plan::plan): state + the leader's view of the nodes → commands to propose) and
//! executes the [`Effect`]s that applying returns (start a child on a node, stop an
//! incarnation). An isolated old leader may still believe it leads; nothing it proposes
//! commits, and the nodes fence out what it sends ([`fence`]).
//!
//! ## A child's life
//!
//! ```text
//!  AddChild ─► Waiting ──Assign(node, gen = log index)──► Starting ──Running(gen, pid)──► Running
//!                 ▲  │                                       │                              │
//!                 │  └──Pending(why)──► Pending ──Assign──►  │ Exited(gen, cause)           │ Exited(gen, cause)
//!                 │                                          ▼                              ▼
//!                 └──────────── the strategy restarts it (Waiting) ◄──────────────── Stopped (not restarted)
//! ```
//!
//! * **Generations are fencing tokens**: each `Assign` makes the child's generation the index
//!   of that log entry, so generations grow and all replicas agree. `Running` and `Exited`
//!   name a generation and are **rejected as stale** unless it is the child's current one
//!   ([`Rejected::Stale`]); a stale report never changes state.
//! * **Strategies and intensity** are the OTP ones, computed by a [`Supervision`] per cluster
//!   supervisor from the timestamps in the commands: an `Exited` of a `Running` child is a child
//!   exit, of a `Starting` child a failed start (retried, counted); a lost node or an
//!   unavailable provider counts as an abnormal exit. Exceeding the intensity **escalates**: the
//!   supervisor becomes [`SupStatus::Failed`] and all its children are stopped (G7).
//! * **Restarting in place**: a child restarted after its own crash prefers its previous node;
//!   one lost with its node, or moved off an unavailable provider, avoids that node.
//!
//! ## Limits (G8)
//!
//! [`MAX_SUPERVISORS`] supervisors, [`Supervision::MAX_CHILDREN`] children each,
//! [`MAX_CHILDREN_TOTAL`] in all; names ≤ [`MAX_NAME`] bytes, arguments ≤ [`MAX_ARGS`] bytes,
//! reasons ≤ [`MAX_REASON`] bytes; the restart history is the [`RestartWindow`]'s.

pub mod fence;
pub mod placement;
pub mod plan;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ChildSpecInfo, Decision, ExitClass, Intensity, RestartType, Strategy, Supervision};
pub use placement::{NodeView, PlacementSpec, View};

/// Most cluster supervisors.
pub const MAX_SUPERVISORS: usize = 1024;
/// Most children over all cluster supervisors.
pub const MAX_CHILDREN_TOTAL: usize = 1 << 20;
/// Longest supervisor, child, behaviour, node or PID name.
pub const MAX_NAME: usize = 255;
/// Longest child argument text (JSON).
pub const MAX_ARGS: usize = 64 << 10;
/// Longest reason kept (pending reasons, exit texts); longer ones are cut.
pub const MAX_REASON: usize = 512;

/// A cluster supervisor's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupSpec {
    /// Its name, unique in the cluster.
    pub name: String,
    /// one_for_one, one_for_all or rest_for_one.
    pub strategy: Strategy,
    /// Restarts tolerated in a window before it escalates.
    pub intensity: Intensity,
}

/// A child of a cluster supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildSpec {
    /// Unique within its supervisor.
    pub id: String,
    /// The behaviour's registered name (spawned by name on the chosen node).
    pub behaviour: String,
    /// Its arguments, as JSON text.
    pub args: String,
    /// When it is restarted.
    pub restart: RestartType,
    /// Where it may run.
    pub placement: PlacementSpec,
}

/// Why a child's incarnation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cause {
    /// The process exited (its reason classified), text for the history.
    Exit(ExitClass, String),
    /// Its node was declared down.
    NodeLost,
    /// Its node marked the child's provider unavailable.
    ProviderUnavailable(String),
    /// Its start failed on the node (unknown behaviour, bad arguments, init failed, refused).
    StartFailed(String),
    /// No `Running` report in time.
    StartTimeout,
}

impl Cause {
    /// How the strategy sees it.
    pub fn class(&self) -> ExitClass {
        match self {
            Cause::Exit(c, _) => *c,
            _ => ExitClass::Abnormal,
        }
    }

    /// Whether the next placement should avoid the node it ran on.
    pub fn avoids_node(&self) -> bool {
        matches!(self, Cause::NodeLost | Cause::ProviderUnavailable(_) | Cause::StartTimeout)
    }
}

/// A change to cluster supervision: a Raft log entry's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates a cluster supervisor.
    CreateSupervisor(SupSpec),
    /// Removes a cluster supervisor and stops all its children.
    RemoveSupervisor {
        /// The supervisor.
        sup: String,
    },
    /// Adds a child (it starts as soon as it is placed).
    AddChild {
        /// The supervisor.
        sup: String,
        /// The child.
        spec: ChildSpec,
    },
    /// Removes a child, stopping it.
    RemoveChild {
        /// The supervisor.
        sup: String,
        /// The child's id.
        child: String,
    },
    /// The leader places a child on a node: its generation becomes this entry's index.
    Assign {
        /// The supervisor.
        sup: String,
        /// The child's id.
        child: String,
        /// The node.
        node: String,
        /// The provider that made the node eligible.
        provider: Option<String>,
        /// Leader's clock (ms).
        at_ms: u64,
    },
    /// No node fits the child now (visible as pending; retried when the view changes).
    Pending {
        /// The supervisor.
        sup: String,
        /// The child's id.
        child: String,
        /// Why.
        why: String,
    },
    /// The child's node reports it running.
    Running {
        /// The supervisor.
        sup: String,
        /// The child's id.
        child: String,
        /// The incarnation.
        generation: u64,
        /// Its PID (text form).
        pid: String,
    },
    /// An incarnation ended.
    Exited {
        /// The supervisor.
        sup: String,
        /// The child's id.
        child: String,
        /// The incarnation.
        generation: u64,
        /// Why.
        cause: Cause,
        /// Leader's clock (ms): counts toward the restart intensity.
        at_ms: u64,
    },
}

/// Where a child is in its life (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// To be placed.
    Waiting,
    /// No node fits; why.
    Pending(String),
    /// Assigned, not yet reported running.
    Starting,
    /// Running.
    Running,
    /// Not running and not to be restarted.
    Stopped,
}

/// A child's replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildState {
    /// Its spec.
    pub spec: ChildSpec,
    /// Where it is in its life.
    pub phase: Phase,
    /// Its current (or last) generation; 0 before the first assignment.
    pub generation: u64,
    /// The node of the current (or last) assignment.
    pub node: Option<String>,
    /// The provider the node was chosen for.
    pub provider: Option<String>,
    /// Its PID, once running.
    pub pid: Option<String>,
    /// When it was last assigned (leader's ms).
    pub assigned_at_ms: u64,
    /// Why its last incarnation ended.
    pub last_cause: Option<Cause>,
    /// Incarnations so far.
    pub restarts: u64,
}

/// A cluster supervisor's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SupStatus {
    /// Supervising.
    Active,
    /// Reached its restart intensity: its children are stopped and no longer restarted.
    Failed(String),
}

/// A cluster supervisor's replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupState {
    /// Its spec.
    pub spec: SupSpec,
    /// Its status.
    pub status: SupStatus,
    /// Strategy and intensity bookkeeping (children in start order).
    core: Supervision,
    /// Children by id.
    pub children: BTreeMap<String, ChildState>,
    /// Child ids in start order.
    pub order: Vec<String>,
}

/// What the leader must do after applying an entry (followers ignore effects).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Start `child` of `sup` on `node` at `generation`.
    Start {
        /// The node.
        node: String,
        /// The supervisor.
        sup: String,
        /// The child.
        child: String,
        /// Its generation (the fencing token).
        generation: u64,
    },
    /// Stop that incarnation (and anything older of the child) on `node`.
    Stop {
        /// The node.
        node: String,
        /// The supervisor.
        sup: String,
        /// The child.
        child: String,
        /// The generation to stop.
        generation: u64,
    },
}

/// Why an entry changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejected {
    /// A report about an incarnation that is not the child's current one.
    #[error("stale generation {got} (current {current})")]
    Stale {
        /// The generation reported.
        got: u64,
        /// The child's current one.
        current: u64,
    },
    /// No such supervisor or child.
    #[error("unknown {0}")]
    Unknown(String),
    /// A supervisor or child of that name exists.
    #[error("{0} exists")]
    Exists(String),
    /// The command does not fit the child's phase (an `Assign` of a running child ...).
    #[error("not now: {0}")]
    WrongPhase(String),
    /// A limit or a malformed value.
    #[error("invalid: {0}")]
    Invalid(String),
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Supervisors by name.
    pub sups: BTreeMap<String, SupState>,
    /// Index of the last entry applied.
    pub last_applied: u64,
    /// Entries rejected as stale so far (reports of old incarnations).
    pub stale_rejected: u64,
    children_total: usize,
}

fn cut(s: &str) -> String {
    if s.len() <= MAX_REASON {
        return s.to_owned();
    }
    let mut end = MAX_REASON;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn name_ok(what: &str, n: &str) -> Result<(), Rejected> {
    if n.is_empty() || n.len() > MAX_NAME {
        return Err(Rejected::Invalid(format!("{what} name of {} bytes (1..={MAX_NAME})", n.len())));
    }
    Ok(())
}

impl ClusterState {
    /// An empty state.
    pub fn new() -> ClusterState {
        ClusterState::default()
    }

    /// Children over all supervisors.
    pub fn children_total(&self) -> usize {
        self.children_total
    }

    /// The child `child` of `sup`.
    pub fn child(&self, sup: &str, child: &str) -> Option<&ChildState> {
        self.sups.get(sup).and_then(|s| s.children.get(child))
    }

    /// The committed generation of every child that has one (for fencing reconciles).
    pub fn generations(&self) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        for (sname, s) in &self.sups {
            for (cid, c) in &s.children {
                if c.generation > 0 {
                    out.insert((sname.clone(), cid.clone()), c.generation);
                }
            }
        }
        out
    }

    /// Applies the committed entry `index`. Entries at or below `last_applied` are ignored
    /// (re-delivery after a restart); an entry that changes nothing is reported as
    /// `Err(Rejected)` and still advances `last_applied` (it *is* applied: as a no-op).
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Result<Vec<Effect>, Rejected> {
        if index <= self.last_applied {
            return Ok(Vec::new());
        }
        self.last_applied = index;
        let r = self.apply_inner(index, cmd);
        if matches!(r, Err(Rejected::Stale { .. })) {
            self.stale_rejected += 1;
        }
        r
    }

    fn apply_inner(&mut self, index: u64, cmd: &Command) -> Result<Vec<Effect>, Rejected> {
        match cmd {
            Command::CreateSupervisor(spec) => {
                name_ok("supervisor", &spec.name)?;
                if self.sups.contains_key(&spec.name) {
                    return Err(Rejected::Exists(format!("supervisor {}", spec.name)));
                }
                if self.sups.len() >= MAX_SUPERVISORS {
                    return Err(Rejected::Invalid(format!("at most {MAX_SUPERVISORS} supervisors")));
                }
                let st = SupState {
                    spec: spec.clone(),
                    status: SupStatus::Active,
                    core: Supervision::new(spec.strategy, spec.intensity),
                    children: BTreeMap::new(),
                    order: Vec::new(),
                };
                self.sups.insert(spec.name.clone(), st);
                Ok(Vec::new())
            }
            Command::RemoveSupervisor { sup } => {
                let st = self.sups.remove(sup).ok_or_else(|| Rejected::Unknown(format!("supervisor {sup}")))?;
                self.children_total -= st.children.len();
                let mut effects = Vec::new();
                for id in st.order.iter().rev() {
                    if let Some(c) = st.children.get(id) {
                        effects.extend(stop_effect(sup, c));
                    }
                }
                Ok(effects)
            }
            Command::AddChild { sup, spec } => {
                name_ok("child", &spec.id)?;
                name_ok("behaviour", &spec.behaviour)?;
                if spec.args.len() > MAX_ARGS {
                    return Err(Rejected::Invalid(format!("arguments longer than {MAX_ARGS} bytes")));
                }
                spec.placement.validate().map_err(Rejected::Invalid)?;
                if self.children_total >= MAX_CHILDREN_TOTAL {
                    return Err(Rejected::Invalid(format!("at most {MAX_CHILDREN_TOTAL} children")));
                }
                let st = self.sup_mut(sup)?;
                if st.children.contains_key(&spec.id) {
                    return Err(Rejected::Exists(format!("child {}", spec.id)));
                }
                st.core
                    .add_child(ChildSpecInfo::new(spec.id.clone(), spec.restart))
                    .map_err(|e| Rejected::Invalid(e.to_string()))?;
                let phase = if st.status == SupStatus::Active { Phase::Waiting } else { Phase::Stopped };
                st.children.insert(spec.id.clone(), new_child(spec.clone(), phase));
                st.order.push(spec.id.clone());
                self.children_total += 1;
                Ok(Vec::new())
            }
            Command::RemoveChild { sup, child } => {
                let st = self.sup_mut(sup)?;
                let c = st.children.remove(child).ok_or_else(|| Rejected::Unknown(format!("child {child}")))?;
                st.order.retain(|id| id != child);
                // The core refuses to remove a running child: mark it stopped first (it is
                // being stopped by the effect below).
                let _ = st.core.mark_stopped(child);
                let _ = st.core.remove_child(child);
                self.children_total -= 1;
                Ok(stop_effect(sup, &c).into_iter().collect())
            }
            Command::Assign { sup, child, node, provider, at_ms } => {
                name_ok("node", node)?;
                let st = self.sup_mut(sup)?;
                if st.status != SupStatus::Active {
                    return Err(Rejected::WrongPhase(format!("supervisor {sup} has failed")));
                }
                let c = st.children.get_mut(child).ok_or_else(|| Rejected::Unknown(format!("child {child}")))?;
                if !matches!(c.phase, Phase::Waiting | Phase::Pending(_)) {
                    return Err(Rejected::WrongPhase(format!("child {child} is {:?}", c.phase)));
                }
                c.phase = Phase::Starting;
                c.generation = index;
                c.node = Some(node.clone());
                c.provider = provider.clone();
                c.pid = None;
                c.assigned_at_ms = *at_ms;
                c.restarts += 1;
                Ok(vec![Effect::Start {
                    node: node.clone(),
                    sup: sup.clone(),
                    child: child.clone(),
                    generation: index,
                }])
            }
            Command::Pending { sup, child, why } => {
                let st = self.sup_mut(sup)?;
                let c = st.children.get_mut(child).ok_or_else(|| Rejected::Unknown(format!("child {child}")))?;
                if !matches!(c.phase, Phase::Waiting | Phase::Pending(_)) {
                    return Err(Rejected::WrongPhase(format!("child {child} is {:?}", c.phase)));
                }
                c.phase = Phase::Pending(cut(why));
                Ok(Vec::new())
            }
            Command::Running { sup, child, generation, pid } => {
                name_ok("pid", pid)?;
                let st = self.sup_mut(sup)?;
                let c = st.children.get_mut(child).ok_or_else(|| Rejected::Unknown(format!("child {child}")))?;
                if *generation != c.generation || !matches!(c.phase, Phase::Starting | Phase::Running) {
                    return Err(Rejected::Stale { got: *generation, current: c.generation });
                }
                if c.phase == Phase::Running {
                    return Err(Rejected::WrongPhase(format!("child {child} already running")));
                }
                c.phase = Phase::Running;
                c.pid = Some(pid.clone());
                st.core.mark_running(child).map_err(|e| Rejected::Invalid(e.to_string()))?;
                Ok(Vec::new())
            }
            Command::Exited { sup, child, generation, cause, at_ms } => {
                let sup_name = sup.clone();
                let st = self.sup_mut(sup)?;
                let c = st.children.get(child).ok_or_else(|| Rejected::Unknown(format!("child {child}")))?;
                if *generation != c.generation || !matches!(c.phase, Phase::Starting | Phase::Running) {
                    return Err(Rejected::Stale { got: *generation, current: c.generation });
                }
                let was_running = c.phase == Phase::Running;
                let decision = if was_running {
                    st.core.on_child_exit(*at_ms, child, cause.class())
                } else {
                    st.core.on_start_failed(*at_ms, child)
                }
                .map_err(|e| Rejected::Invalid(e.to_string()))?;
                let mut effects = Vec::new();
                if let Some(c) = st.children.get_mut(child) {
                    c.phase = Phase::Stopped;
                    c.pid = None;
                    c.last_cause = Some(cause.clone());
                    // Whatever ended the incarnation, make sure it is gone from its node: a
                    // crashed process is already (the stop is a no-op), but one moved off an
                    // unavailable provider, one half-started, or one on a node that only looks
                    // lost is still there.
                    effects.extend(stop_effect_raw(&sup_name, c));
                }
                let removed = execute(&sup_name, st, decision, &mut effects);
                self.children_total -= removed;
                Ok(effects)
            }
        }
    }

    fn sup_mut(&mut self, sup: &str) -> Result<&mut SupState, Rejected> {
        self.sups.get_mut(sup).ok_or_else(|| Rejected::Unknown(format!("supervisor {sup}")))
    }
}

fn new_child(spec: ChildSpec, phase: Phase) -> ChildState {
    ChildState {
        spec,
        phase,
        generation: 0,
        node: None,
        provider: None,
        pid: None,
        assigned_at_ms: 0,
        last_cause: None,
        restarts: 0,
    }
}

/// The stop of a child's live incarnation, if it has one.
fn stop_effect(sup: &str, c: &ChildState) -> Option<Effect> {
    if matches!(c.phase, Phase::Starting | Phase::Running) {
        stop_effect_raw(sup, c)
    } else {
        None
    }
}

fn stop_effect_raw(sup: &str, c: &ChildState) -> Option<Effect> {
    c.node.as_ref().map(|n| Effect::Stop {
        node: n.clone(),
        sup: sup.to_owned(),
        child: c.spec.id.clone(),
        generation: c.generation,
    })
}

/// Carries out a strategy decision on the replicated state; returns how many children were
/// removed (temporary ones).
fn execute(sup: &str, st: &mut SupState, decision: Decision, effects: &mut Vec<Effect>) -> usize {
    match decision {
        Decision::None => 0,
        Decision::Remove { id } => {
            st.children.remove(&id);
            st.order.retain(|x| *x != id);
            1
        }
        Decision::Restart { terminate, start } => {
            let mut removed = 0;
            for id in &terminate {
                if let Some(c) = st.children.get_mut(id) {
                    effects.extend(stop_effect(sup, c));
                    c.phase = Phase::Stopped;
                    c.pid = None;
                }
            }
            // Temporary children among the terminated ones are gone from the core: drop them.
            let kept: std::collections::BTreeSet<String> = st.core.children().map(|(s, _)| s.id.clone()).collect();
            let before = st.children.len();
            st.children.retain(|id, _| kept.contains(id));
            st.order.retain(|id| kept.contains(id));
            removed += before - st.children.len();
            for id in &start {
                if let Some(c) = st.children.get_mut(id) {
                    // A sibling still starting has a live incarnation the core does not count
                    // as running: stop it too before it is placed again.
                    effects.extend(stop_effect(sup, c));
                    c.phase = Phase::Waiting;
                }
            }
            removed
        }
        Decision::Escalate { terminate: _ } => {
            // Every live incarnation, running or still starting, in reverse start order.
            for id in st.order.iter().rev() {
                if let Some(c) = st.children.get(id) {
                    effects.extend(stop_effect(sup, c));
                }
            }
            for c in st.children.values_mut() {
                c.phase = Phase::Stopped;
                c.pid = None;
            }
            st.status = SupStatus::Failed("reached max restart intensity".into());
            0
        }
    }
}

#[cfg(test)]
mod tests;

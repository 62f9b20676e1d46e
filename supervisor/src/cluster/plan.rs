//! The leader's decisions, as pure code: committed state and the leader's view in, commands to
//! propose (and stops to send) out.
//!
//! [`plan`] is called whenever something changes (a committed entry was applied, a node came
//! or went, a provider's status changed, a timer): it places waiting children, marks
//! unplaceable ones pending, and turns lost nodes, unavailable providers and overdue starts
//! into `Exited` commands (whose application runs the strategy). [`reconcile`] compares what
//! the nodes say they run with the committed state (on election, and when a node comes back):
//! stale and orphaned incarnations are stopped, unreported starts are confirmed, and children
//! missing from their node are marked exited so they restart.
//!
//! A node the leader has not heard from yet ([`NodeView::settling`](super::placement::NodeView::settling))
//! stays in the view — its children are neither lost nor timed out for it — but a child whose
//! placement falls on it waits: the placement is decided as it would be with every node
//! heard, and only taken once the node chosen has answered.
//!
//! Both must only be called by a leader whose state machine has applied every committed entry:
//! they decide from committed state only, and what they return is merely *proposed* — a leader
//! that lost its leadership proposes into the void, and the nodes fence out its orders.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::placement::{place, Hints, View};
use super::{Cause, ClusterState, Command, Effect, Phase, SupStatus};
use crate::ExitClass;

/// Tunables of the leader's decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanConfig {
    /// A child assigned this long ago and not reported running is restarted elsewhere.
    pub start_timeout_ms: u64,
    /// Most commands one call returns (the rest come on the next call).
    pub max_commands: usize,
}

impl Default for PlanConfig {
    /// 10 s start timeout, 1024 commands per round.
    fn default() -> Self {
        PlanConfig { start_timeout_ms: 10_000, max_commands: 1024 }
    }
}

/// What the leader should propose now (see the module docs).
pub fn plan(state: &ClusterState, view: &View, now_ms: u64, cfg: &PlanConfig) -> Vec<Command> {
    let mut out = Vec::new();
    let mut extra: BTreeMap<String, u64> = BTreeMap::new();
    for (sname, st) in &state.sups {
        if st.status != SupStatus::Active {
            continue;
        }
        let mut siblings: BTreeMap<String, u64> = BTreeMap::new();
        for c in st.children.values() {
            if let (Some(n), Phase::Starting | Phase::Running) = (&c.node, &c.phase) {
                *siblings.entry(n.clone()).or_default() += 1;
            }
        }
        for id in &st.order {
            if out.len() >= cfg.max_commands {
                return out;
            }
            let Some(c) = st.children.get(id) else { continue };
            match &c.phase {
                Phase::Waiting | Phase::Pending(_) => {
                    let last = c.node.as_deref();
                    let avoid = c.last_cause.as_ref().is_some_and(Cause::avoids_node);
                    let hints = Hints {
                        prefer: if avoid { None } else { last },
                        avoid_once: if avoid { last } else { None },
                        siblings: Some(&siblings),
                        extra_load: Some(&extra),
                    };
                    match place(view, &c.spec.placement, hints) {
                        // The node to place on has not told the leader yet what it runs: it
                        // may still run this child's previous incarnation, and its load is
                        // not known. Decide once it has answered (the shell bounds how long a
                        // node stays settling).
                        Ok(p) if view.get(&p.node).is_some_and(|n| n.settling) => {}
                        Ok(p) => {
                            *extra.entry(p.node.clone()).or_default() += 1;
                            *siblings.entry(p.node.clone()).or_default() += 1;
                            out.push(Command::Assign {
                                sup: sname.clone(),
                                child: id.clone(),
                                node: p.node,
                                provider: p.provider,
                                at_ms: now_ms,
                            });
                        }
                        Err(why) => {
                            if c.phase != Phase::Pending(why.clone()) {
                                out.push(Command::Pending { sup: sname.clone(), child: id.clone(), why });
                            }
                        }
                    }
                }
                Phase::Starting | Phase::Running => {
                    let Some(node) = &c.node else { continue };
                    let cause = match view.get(node) {
                        None => Some(Cause::NodeLost),
                        Some(n) => match &c.provider {
                            Some(p) if !n.serves(p) => Some(Cause::ProviderUnavailable(p.clone())),
                            _ if c.phase == Phase::Starting
                                && now_ms.saturating_sub(c.assigned_at_ms) > cfg.start_timeout_ms =>
                            {
                                Some(Cause::StartTimeout)
                            }
                            _ => None,
                        },
                    };
                    if let Some(cause) = cause {
                        out.push(Command::Exited {
                            sup: sname.clone(),
                            child: id.clone(),
                            generation: c.generation,
                            cause,
                            at_ms: now_ms,
                        });
                    }
                }
                Phase::Stopped => {}
            }
        }
    }
    out
}

/// A supervised child a node says it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The supervisor.
    pub sup: String,
    /// The child.
    pub child: String,
    /// The incarnation's generation.
    pub generation: u64,
    /// Its PID.
    pub pid: String,
}

/// What a reconcile decided.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciled {
    /// Commands to propose.
    pub commands: Vec<Command>,
    /// Incarnations to stop now (stale, orphaned or misplaced), whatever gets committed.
    pub stops: Vec<Effect>,
}

/// Compares the complete list of supervised children `node` runs with the committed state.
pub fn reconcile(state: &ClusterState, node: &str, reports: &[Report], now_ms: u64) -> Reconciled {
    let mut r = Reconciled::default();
    let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
    for rep in reports {
        let stop = Effect::Stop {
            node: node.to_owned(),
            sup: rep.sup.clone(),
            child: rep.child.clone(),
            generation: rep.generation,
        };
        let committed =
            state.sups.get(&rep.sup).filter(|s| s.status == SupStatus::Active).and_then(|s| s.children.get(&rep.child));
        let Some(c) = committed else {
            r.stops.push(stop); // orphan: not supervised (any more)
            continue;
        };
        if rep.generation < c.generation || (rep.generation == c.generation && c.node.as_deref() != Some(node)) {
            r.stops.push(stop); // stale, or the current generation on a node it was not given to
            continue;
        }
        if rep.generation > c.generation {
            continue; // newer than this state knows: the state is behind; decide later
        }
        if !seen.insert((rep.sup.as_str(), rep.child.as_str())) {
            r.stops.push(stop); // a duplicate report of the same incarnation
            continue;
        }
        match c.phase {
            Phase::Starting => r.commands.push(Command::Running {
                sup: rep.sup.clone(),
                child: rep.child.clone(),
                generation: rep.generation,
                pid: rep.pid.clone(),
            }),
            Phase::Running => {}
            // Committed as not running (it exited, or its restart was decided): stop it.
            _ => r.stops.push(stop),
        }
    }
    // Children this node should run (running, or started long enough ago to have reported)
    // that it does not: they are gone.
    for (sname, st) in &state.sups {
        if st.status != SupStatus::Active {
            continue;
        }
        for (cid, c) in &st.children {
            if c.node.as_deref() != Some(node) || seen.contains(&(sname.as_str(), cid.as_str())) {
                continue;
            }
            if c.phase == Phase::Running {
                r.commands.push(Command::Exited {
                    sup: sname.clone(),
                    child: cid.clone(),
                    generation: c.generation,
                    cause: Cause::Exit(ExitClass::Abnormal, format!("not running on {node}")),
                    at_ms: now_ms,
                });
            }
        }
    }
    r
}

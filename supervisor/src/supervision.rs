//! Static supervisors: `one_for_one`, `one_for_all` and `rest_for_one`.
//!
//! See the crate documentation for the protocol between this state machine
//! and the runtime that executes its decisions.

use std::collections::HashMap;

use crate::error::{echo, SupervisionError};
use crate::types::{
    validate_child_id, ChildId, ChildSpecInfo, ChildStatus, Decision, ExitClass, Intensity, RestartType, Strategy,
};
use crate::window::{RestartVerdict, RestartWindow};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ChildEntry {
    spec: ChildSpecInfo,
    status: ChildStatus,
}

impl ChildEntry {
    fn is_running(&self) -> bool {
        self.status == ChildStatus::Running
    }

    fn is_temporary(&self) -> bool {
        self.spec.restart == RestartType::Temporary
    }
}

/// Decision core of a static supervisor (OTP `one_for_one`, `one_for_all`,
/// `rest_for_one`).
///
/// Holds the child specs in start order, each child's running status and the
/// restart history. Pure and deterministic: the same calls with the same
/// `now_ms` values always yield the same decisions.
///
/// Serializable (for snapshots of replicated state): the id index is rebuilt on
/// deserialization, and a serialized form with duplicate or invalid ids is refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "SupervisionRepr", into = "SupervisionRepr")]
pub struct Supervision {
    strategy: Strategy,
    window: RestartWindow,
    /// In start order (insertion order). Ids are unique.
    children: Vec<ChildEntry>,
    /// id -> position in `children`; always exactly mirrors `children`.
    index: HashMap<ChildId, usize>,
}

/// The serialized form of a [`Supervision`] (without the derived index).
#[derive(serde::Serialize, serde::Deserialize)]
struct SupervisionRepr {
    strategy: Strategy,
    window: RestartWindow,
    children: Vec<ChildEntry>,
}

impl From<Supervision> for SupervisionRepr {
    fn from(s: Supervision) -> Self {
        SupervisionRepr { strategy: s.strategy, window: s.window, children: s.children }
    }
}

impl TryFrom<SupervisionRepr> for Supervision {
    type Error = SupervisionError;

    fn try_from(r: SupervisionRepr) -> Result<Self, SupervisionError> {
        if r.children.len() > Supervision::MAX_CHILDREN {
            return Err(SupervisionError::TooManyChildren { limit: Supervision::MAX_CHILDREN });
        }
        let mut index = HashMap::with_capacity(r.children.len());
        for (i, c) in r.children.iter().enumerate() {
            crate::types::validate_child_id(&c.spec.id)?;
            if index.insert(c.spec.id.clone(), i).is_some() {
                return Err(SupervisionError::DuplicateChild(echo(&c.spec.id)));
            }
        }
        Ok(Supervision { strategy: r.strategy, window: r.window, children: r.children, index })
    }
}

impl Supervision {
    /// Most child specs a static supervisor holds.
    pub const MAX_CHILDREN: usize = 65_536;

    /// An empty supervisor with the given strategy and intensity
    /// (`max_restarts` clamped to [`RestartWindow::MAX_TRACKED_RESTARTS`]).
    pub fn new(strategy: Strategy, intensity: Intensity) -> Self {
        Supervision { strategy, window: RestartWindow::new(intensity), children: Vec::new(), index: HashMap::new() }
    }

    /// The restart strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The effective restart intensity.
    pub fn intensity(&self) -> Intensity {
        self.window.intensity()
    }

    /// The restart history (read-only).
    pub fn restart_window(&self) -> &RestartWindow {
        &self.window
    }

    /// Appends a child spec; start order is insertion order. The child starts
    /// out [`ChildStatus::Stopped`]: the runtime starts it and reports
    /// [`Self::mark_running`].
    ///
    /// Errors: invalid id, duplicate id, or [`Self::MAX_CHILDREN`] reached.
    pub fn add_child(&mut self, spec: ChildSpecInfo) -> Result<(), SupervisionError> {
        validate_child_id(&spec.id)?;
        if self.index_of(&spec.id).is_some() {
            return Err(SupervisionError::DuplicateChild(echo(&spec.id)));
        }
        if self.children.len() >= Self::MAX_CHILDREN {
            return Err(SupervisionError::TooManyChildren { limit: Self::MAX_CHILDREN });
        }
        self.index.insert(spec.id.clone(), self.children.len());
        self.children.push(ChildEntry { spec, status: ChildStatus::Stopped });
        assert!(self.children.len() <= Self::MAX_CHILDREN);
        assert_eq!(self.children.len(), self.index.len());
        Ok(())
    }

    /// Removes a stopped child's spec (OTP `delete_child/2`).
    ///
    /// Errors: unknown id, or the child is still running.
    pub fn remove_child(&mut self, id: &str) -> Result<(), SupervisionError> {
        let idx = self.require(id)?;
        if self.children[idx].is_running() {
            return Err(SupervisionError::StillRunning(echo(id)));
        }
        self.remove_at(idx);
        Ok(())
    }

    /// Children in start order with their restart type and status.
    pub fn children(&self) -> impl Iterator<Item = (&ChildSpecInfo, ChildStatus)> {
        self.children.iter().map(|c| (&c.spec, c.status))
    }

    /// Status of one child, or `None` if no such child spec exists (e.g. a
    /// temporary child that was removed).
    pub fn status(&self, id: &str) -> Option<ChildStatus> {
        self.index_of(id).map(|i| self.children[i].status)
    }

    /// Number of child specs.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Whether there are no child specs.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// The runtime reports that it started `id`.
    ///
    /// Errors: unknown id, or the child is already running (a double start
    /// is a runtime bug).
    pub fn mark_running(&mut self, id: &str) -> Result<(), SupervisionError> {
        let idx = self.require(id)?;
        if self.children[idx].is_running() {
            return Err(SupervisionError::AlreadyRunning(echo(id)));
        }
        self.children[idx].status = ChildStatus::Running;
        Ok(())
    }

    /// The runtime reports that it stopped `id` on its own initiative (e.g.
    /// an operator's `terminate_child`). No restart is considered.
    /// Idempotent: marking a stopped child stopped again is fine.
    ///
    /// Errors: unknown id.
    pub fn mark_stopped(&mut self, id: &str) -> Result<(), SupervisionError> {
        let idx = self.require(id)?;
        self.children[idx].status = ChildStatus::Stopped;
        Ok(())
    }

    /// A running child exited on its own (crash, normal return, ...) at
    /// `now_ms`. The child is marked stopped and the decision returned:
    ///
    /// - `temporary` (any class): spec removed → [`Decision::Remove`];
    /// - `transient` with [`ExitClass::Normal`] / [`ExitClass::Shutdown`]:
    ///   spec kept, stays stopped → [`Decision::None`];
    /// - otherwise one restart is recorded; if it exceeds the intensity →
    ///   [`Decision::Escalate`], else [`Decision::Restart`] as the strategy
    ///   dictates (see the crate docs for the exact lists).
    ///
    /// Errors (state unchanged): unknown id; child not running (e.g. an exit
    /// of a child the runtime is terminating because of an earlier decision
    /// — the runtime should ignore it).
    pub fn on_child_exit(&mut self, now_ms: u64, id: &str, class: ExitClass) -> Result<Decision, SupervisionError> {
        let idx = self.require(id)?;
        if !self.children[idx].is_running() {
            return Err(SupervisionError::NotRunning(echo(id)));
        }
        self.children[idx].status = ChildStatus::Stopped;
        let restart = self.children[idx].spec.restart;
        let decision = if restart == RestartType::Temporary {
            let entry = self.remove_at(idx);
            Decision::Remove { id: entry.spec.id }
        } else if restart.restarts_after(class) {
            self.restart(now_ms, idx)
        } else {
            Decision::None
        };
        self.debug_check();
        Ok(decision)
    }

    /// Starting `id` failed while executing a [`Decision::Restart`]. As in
    /// OTP this is retried, and the retry counts as another restart toward
    /// the intensity. The retry applies the strategy again from the failed
    /// child (see the crate docs); for `one_for_all` that terminates the
    /// children already started in this round.
    ///
    /// A temporary child is never retried: its spec is removed →
    /// [`Decision::Remove`].
    ///
    /// Errors (state unchanged): unknown id; the child is running.
    pub fn on_start_failed(&mut self, now_ms: u64, id: &str) -> Result<Decision, SupervisionError> {
        let idx = self.require(id)?;
        if self.children[idx].is_running() {
            return Err(SupervisionError::StillRunning(echo(id)));
        }
        let decision = if self.children[idx].is_temporary() {
            let entry = self.remove_at(idx);
            Decision::Remove { id: entry.spec.id }
        } else {
            self.restart(now_ms, idx)
        };
        self.debug_check();
        Ok(decision)
    }

    /// Children to stop, in order, when the supervisor itself shuts down:
    /// running children in reverse start order.
    pub fn shutdown_order(&self) -> Vec<ChildId> {
        self.children.iter().rev().filter(|c| c.is_running()).map(|c| c.spec.id.clone()).collect()
    }

    /// Restarts currently counted in the window ending at `now_ms`
    /// (saturating at `max_restarts + 1`; see [`RestartWindow::count_in_window`]).
    pub fn restarts_in_window(&self, now_ms: u64) -> usize {
        self.window.count_in_window(now_ms)
    }

    // ----- internals -----

    fn index_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Removes the child at `idx`, keeping the index in sync.
    fn remove_at(&mut self, idx: usize) -> ChildEntry {
        let entry = self.children.remove(idx);
        self.index.remove(&entry.spec.id);
        self.reindex_from(idx);
        entry
    }

    /// Re-points the index at the children from position `from` on.
    fn reindex_from(&mut self, from: usize) {
        for (i, c) in self.children.iter().enumerate().skip(from) {
            if let Some(slot) = self.index.get_mut(&c.spec.id) {
                *slot = i;
            }
        }
        assert_eq!(self.children.len(), self.index.len(), "index out of sync");
    }

    fn require(&self, id: &str) -> Result<usize, SupervisionError> {
        self.index_of(id).ok_or_else(|| SupervisionError::UnknownChild(echo(id)))
    }

    /// Records a restart of the stopped, non-temporary child at `idx` and
    /// applies the strategy (OTP `restart/2`).
    fn restart(&mut self, now_ms: u64, idx: usize) -> Decision {
        assert!(idx < self.children.len());
        assert!(!self.children[idx].is_running(), "restarting a running child");
        assert!(!self.children[idx].is_temporary(), "restarting a temporary child");
        if self.window.record(now_ms) == RestartVerdict::Exceeded {
            return self.escalate();
        }
        match self.strategy {
            Strategy::OneForOne => {
                Decision::Restart { terminate: Vec::new(), start: vec![self.children[idx].spec.id.clone()] }
            }
            Strategy::OneForAll => self.restart_from(0),
            Strategy::RestForOne => self.restart_from(idx),
        }
    }

    /// OTP `restart_multiple_children/3` over the children at `from..`:
    /// terminate the running ones (reverse start order), forget the
    /// temporary ones, start every remaining one (start order) — including
    /// ones that were already stopped, exactly as OTP's `start_children/2`.
    fn restart_from(&mut self, from: usize) -> Decision {
        assert!(from < self.children.len());
        let terminate: Vec<ChildId> =
            self.children[from..].iter().rev().filter(|c| c.is_running()).map(|c| c.spec.id.clone()).collect();
        for c in &mut self.children[from..] {
            c.status = ChildStatus::Stopped;
        }
        let mut i = 0usize;
        let index = &mut self.index;
        self.children.retain(|c| {
            let keep = i < from || !c.is_temporary();
            i += 1;
            if !keep {
                index.remove(&c.spec.id);
            }
            keep
        });
        self.reindex_from(from);
        let start: Vec<ChildId> = self.children[from..].iter().map(|c| c.spec.id.clone()).collect();
        assert!(!start.is_empty(), "the restarted child must be started");
        Decision::Restart { terminate, start }
    }

    /// Intensity exceeded: every running child is to be terminated.
    fn escalate(&mut self) -> Decision {
        let terminate = self.shutdown_order();
        for c in &mut self.children {
            c.status = ChildStatus::Stopped;
        }
        Decision::Escalate { terminate }
    }

    fn debug_check(&self) {
        debug_assert!(self.children.len() <= Self::MAX_CHILDREN);
        debug_assert!(self.window.len() <= self.window.capacity());
        debug_assert_eq!(self.children.len(), self.index.len());
        debug_assert!(self.children.iter().enumerate().all(|(i, c)| self.index.get(&c.spec.id) == Some(&i)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExitClass::*;
    use RestartType::*;

    fn ids(list: &[&str]) -> Vec<ChildId> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn restart(terminate: &[&str], start: &[&str]) -> Decision {
        Decision::Restart { terminate: ids(terminate), start: ids(start) }
    }

    fn escalate(terminate: &[&str]) -> Decision {
        Decision::Escalate { terminate: ids(terminate) }
    }

    /// A supervisor with the given children, all started.
    fn sup(strategy: Strategy, children: &[(&str, RestartType)]) -> Supervision {
        sup_with(strategy, Intensity::new(100, 5000), children)
    }

    fn sup_with(strategy: Strategy, intensity: Intensity, children: &[(&str, RestartType)]) -> Supervision {
        let mut s = Supervision::new(strategy, intensity);
        for (id, r) in children {
            s.add_child(ChildSpecInfo::new(*id, *r)).unwrap();
        }
        for (id, _) in children {
            s.mark_running(id).unwrap();
        }
        s
    }

    /// Executes a restart decision as the runtime would (all starts succeed).
    fn execute(s: &mut Supervision, d: &Decision) {
        if let Decision::Restart { start, .. } = d {
            for id in start {
                s.mark_running(id).unwrap();
            }
        }
    }

    fn statuses(s: &Supervision) -> Vec<(String, ChildStatus)> {
        s.children().map(|(c, st)| (c.id.clone(), st)).collect()
    }

    fn all_running(s: &Supervision) -> bool {
        s.children().all(|(_, st)| st == ChildStatus::Running)
    }

    const ABCD: [(&str, RestartType); 4] = [("a", Permanent), ("b", Permanent), ("c", Permanent), ("d", Permanent)];

    // ----- restart type × exit class, per strategy -----

    #[test]
    fn permanent_is_restarted_on_every_exit_class() {
        for class in [Normal, Shutdown, Abnormal] {
            let mut s = sup(Strategy::OneForOne, &ABCD);
            let d = s.on_child_exit(0, "b", class).unwrap();
            assert_eq!(d, restart(&[], &["b"]), "{class:?}");
            assert_eq!(s.status("b"), Some(ChildStatus::Stopped));
            assert_eq!(s.restarts_in_window(0), 1);
            execute(&mut s, &d);
            assert!(all_running(&s));
        }
    }

    #[test]
    fn transient_is_restarted_only_on_abnormal_exit() {
        for strategy in [Strategy::OneForOne, Strategy::OneForAll, Strategy::RestForOne] {
            for class in [Normal, Shutdown] {
                let mut s = sup(strategy, &[("a", Permanent), ("t", Transient), ("c", Permanent)]);
                assert_eq!(s.on_child_exit(5, "t", class).unwrap(), Decision::None);
                // The spec is kept (OTP: pid undefined), siblings untouched.
                assert_eq!(
                    statuses(&s),
                    vec![
                        ("a".into(), ChildStatus::Running),
                        ("t".into(), ChildStatus::Stopped),
                        ("c".into(), ChildStatus::Running)
                    ]
                );
                assert_eq!(s.restarts_in_window(5), 0);
            }
            let mut s = sup(strategy, &[("a", Permanent), ("t", Transient), ("c", Permanent)]);
            let d = s.on_child_exit(5, "t", Abnormal).unwrap();
            let expected = match strategy {
                Strategy::OneForOne => restart(&[], &["t"]),
                Strategy::OneForAll => restart(&["c", "a"], &["a", "t", "c"]),
                Strategy::RestForOne => restart(&["c"], &["t", "c"]),
            };
            assert_eq!(d, expected, "{strategy:?}");
            assert_eq!(s.restarts_in_window(5), 1);
        }
    }

    #[test]
    fn temporary_is_removed_on_every_exit_class_and_strategy() {
        for strategy in [Strategy::OneForOne, Strategy::OneForAll, Strategy::RestForOne] {
            for class in [Normal, Shutdown, Abnormal] {
                let mut s = sup(strategy, &[("a", Permanent), ("tmp", Temporary), ("c", Permanent)]);
                let d = s.on_child_exit(0, "tmp", class).unwrap();
                assert_eq!(d, Decision::Remove { id: "tmp".into() });
                assert_eq!(s.status("tmp"), None);
                assert_eq!(s.len(), 2);
                assert!(all_running(&s), "siblings untouched");
                assert_eq!(s.restarts_in_window(0), 0, "no restart counted");
            }
        }
    }

    // ----- one_for_one -----

    #[test]
    fn one_for_one_restarts_only_the_exited_child() {
        let mut s = sup(Strategy::OneForOne, &ABCD);
        let d = s.on_child_exit(0, "c", Abnormal).unwrap();
        assert_eq!(d, restart(&[], &["c"]));
        assert_eq!(s.shutdown_order(), ids(&["d", "b", "a"]));
    }

    // ----- rest_for_one -----

    #[test]
    fn rest_for_one_restarts_the_rest() {
        let mut s = sup(Strategy::RestForOne, &ABCD);
        let d = s.on_child_exit(0, "b", Abnormal).unwrap();
        assert_eq!(d, restart(&["d", "c"], &["b", "c", "d"]));
        assert_eq!(
            statuses(&s),
            vec![
                ("a".into(), ChildStatus::Running),
                ("b".into(), ChildStatus::Stopped),
                ("c".into(), ChildStatus::Stopped),
                ("d".into(), ChildStatus::Stopped)
            ]
        );
        execute(&mut s, &d);
        assert!(all_running(&s));
    }

    #[test]
    fn rest_for_one_first_and_last_child() {
        let mut s = sup(Strategy::RestForOne, &ABCD);
        assert_eq!(s.on_child_exit(0, "a", Abnormal).unwrap(), restart(&["d", "c", "b"], &["a", "b", "c", "d"]));
        let mut s = sup(Strategy::RestForOne, &ABCD);
        assert_eq!(s.on_child_exit(0, "d", Abnormal).unwrap(), restart(&[], &["d"]));
    }

    #[test]
    fn rest_for_one_drops_terminated_temporary_children() {
        let mut s =
            sup(Strategy::RestForOne, &[("a", Temporary), ("b", Permanent), ("c", Temporary), ("d", Permanent)]);
        let d = s.on_child_exit(0, "b", Abnormal).unwrap();
        assert_eq!(d, restart(&["d", "c"], &["b", "d"]));
        assert_eq!(s.status("c"), None, "terminated temporary child forgotten");
        assert_eq!(s.status("a"), Some(ChildStatus::Running), "before b: untouched");
    }

    #[test]
    fn rest_for_one_skips_stopped_children_in_terminate_but_starts_them() {
        let mut s =
            sup(Strategy::RestForOne, &[("a", Permanent), ("b", Permanent), ("t", Transient), ("d", Permanent)]);
        assert_eq!(s.on_child_exit(0, "t", Normal).unwrap(), Decision::None);
        let d = s.on_child_exit(1, "b", Abnormal).unwrap();
        // OTP's start_children/2 starts every child of the affected part,
        // including a transient child that had finished normally.
        assert_eq!(d, restart(&["d"], &["b", "t", "d"]));
    }

    // ----- one_for_all -----

    #[test]
    fn one_for_all_restarts_everything() {
        let mut s = sup(Strategy::OneForAll, &ABCD);
        let d = s.on_child_exit(0, "b", Abnormal).unwrap();
        assert_eq!(d, restart(&["d", "c", "a"], &["a", "b", "c", "d"]));
        assert!(s.children().all(|(_, st)| st == ChildStatus::Stopped));
        execute(&mut s, &d);
        assert!(all_running(&s));
    }

    #[test]
    fn one_for_all_terminates_and_forgets_temporary_siblings() {
        let mut s =
            sup(Strategy::OneForAll, &[("a", Permanent), ("tmp", Temporary), ("c", Transient), ("d", Permanent)]);
        let d = s.on_child_exit(0, "d", Abnormal).unwrap();
        assert_eq!(d, restart(&["c", "tmp", "a"], &["a", "c", "d"]));
        assert_eq!(s.status("tmp"), None);
        assert_eq!(s.len(), 3);
        // The runtime must not report the removed temporary child again.
        assert_eq!(s.mark_stopped("tmp"), Err(SupervisionError::UnknownChild("tmp".into())));
    }

    #[test]
    fn one_for_all_forgets_stopped_temporary_children_too() {
        let mut s = Supervision::new(Strategy::OneForAll, Intensity::default());
        s.add_child(ChildSpecInfo::new("a", Permanent)).unwrap();
        s.add_child(ChildSpecInfo::new("tmp", Temporary)).unwrap();
        s.mark_running("a").unwrap();
        let d = s.on_child_exit(0, "a", Abnormal).unwrap();
        assert_eq!(d, restart(&[], &["a"]));
        assert_eq!(s.status("tmp"), None);
    }

    #[test]
    fn one_for_all_starts_stopped_siblings_but_does_not_terminate_them() {
        let mut s = sup(Strategy::OneForAll, &[("a", Permanent), ("t", Transient), ("c", Permanent)]);
        assert_eq!(s.on_child_exit(0, "t", Shutdown).unwrap(), Decision::None);
        s.mark_stopped("c").unwrap(); // operator terminate_child
        let d = s.on_child_exit(1, "a", Abnormal).unwrap();
        assert_eq!(d, restart(&[], &["a", "t", "c"]));
    }

    // ----- intensity -----

    #[test]
    fn fourth_restart_within_window_escalates() {
        for strategy in [Strategy::OneForOne, Strategy::OneForAll, Strategy::RestForOne] {
            let mut s = sup_with(strategy, Intensity::new(3, 5000), &ABCD);
            for t in [0, 1000, 2000] {
                let d = s.on_child_exit(t, "b", Abnormal).unwrap();
                assert!(matches!(d, Decision::Restart { .. }), "{strategy:?} {d:?}");
                execute(&mut s, &d);
                assert!(all_running(&s));
            }
            assert_eq!(s.restarts_in_window(2000), 3);
            let d = s.on_child_exit(4999, "b", Abnormal).unwrap();
            assert_eq!(d, escalate(&["d", "c", "a"]), "{strategy:?}");
            assert!(s.children().all(|(_, st)| st == ChildStatus::Stopped));
            assert!(s.shutdown_order().is_empty());
            assert!(s.restart_window().len() <= 4);
        }
    }

    #[test]
    fn restarts_spaced_beyond_the_period_never_escalate() {
        let mut s = sup_with(Strategy::OneForAll, Intensity::new(3, 5000), &ABCD);
        let mut t = 0;
        for i in 0..1000 {
            // Four restarts in quick succession would escalate; spaced out
            // so that at most three are ever inside the window.
            t += if i % 3 == 0 { 5001 } else { 1 };
            let d = s.on_child_exit(t, "c", Abnormal).unwrap();
            assert!(matches!(d, Decision::Restart { .. }), "restart {i}: {d:?}");
            execute(&mut s, &d);
            assert!(s.restart_window().len() <= 4);
        }
    }

    #[test]
    fn window_boundary_is_inclusive() {
        let mut s = sup_with(Strategy::OneForOne, Intensity::new(1, 5000), &ABCD);
        let d = s.on_child_exit(0, "a", Abnormal).unwrap();
        execute(&mut s, &d);
        assert_eq!(s.on_child_exit(5000, "b", Abnormal).unwrap(), escalate(&["d", "c", "a"]));

        let mut s = sup_with(Strategy::OneForOne, Intensity::new(1, 5000), &ABCD);
        let d = s.on_child_exit(0, "a", Abnormal).unwrap();
        execute(&mut s, &d);
        assert_eq!(s.on_child_exit(5001, "b", Abnormal).unwrap(), restart(&[], &["b"]));
    }

    #[test]
    fn zero_intensity_escalates_on_first_restart() {
        let mut s = sup_with(Strategy::OneForOne, Intensity::new(0, 5000), &ABCD);
        // Exits that do not restart never count.
        s.mark_stopped("a").unwrap();
        assert_eq!(s.on_child_exit(0, "c", Abnormal).unwrap(), escalate(&["d", "b"]));

        let mut s = sup_with(
            Strategy::OneForOne,
            Intensity::new(0, 5000),
            &[("t", Transient), ("tmp", Temporary), ("p", Permanent)],
        );
        assert_eq!(s.on_child_exit(0, "t", Normal).unwrap(), Decision::None);
        assert_eq!(s.on_child_exit(0, "tmp", Abnormal).unwrap(), Decision::Remove { id: "tmp".into() });
        assert_eq!(s.on_child_exit(0, "p", Normal).unwrap(), escalate(&[]));
    }

    #[test]
    fn escalation_terminates_only_running_children() {
        let mut s = sup_with(Strategy::RestForOne, Intensity::new(1, 5000), &ABCD);
        let d = s.on_child_exit(0, "c", Abnormal).unwrap();
        assert_eq!(d, restart(&["d"], &["c", "d"]));
        // The runtime restarts c but d is not yet started when a crashes.
        s.mark_running("c").unwrap();
        assert_eq!(s.on_child_exit(1, "a", Abnormal).unwrap(), escalate(&["c", "b"]));
    }

    // ----- start failures -----

    #[test]
    fn start_failures_count_toward_intensity() {
        let mut s = sup_with(Strategy::OneForOne, Intensity::new(3, 5000), &ABCD);
        assert_eq!(s.on_child_exit(0, "b", Abnormal).unwrap(), restart(&[], &["b"]));
        assert_eq!(s.on_start_failed(1, "b").unwrap(), restart(&[], &["b"]));
        assert_eq!(s.on_start_failed(2, "b").unwrap(), restart(&[], &["b"]));
        assert_eq!(s.restarts_in_window(2), 3);
        assert_eq!(s.on_start_failed(3, "b").unwrap(), escalate(&["d", "c", "a"]));
    }

    #[test]
    fn rest_for_one_start_failure_retries_from_the_failed_child() {
        let mut s = sup(Strategy::RestForOne, &ABCD);
        let d = s.on_child_exit(0, "b", Abnormal).unwrap();
        assert_eq!(d, restart(&["d", "c"], &["b", "c", "d"]));
        s.mark_running("b").unwrap();
        // c's start fails; d was not attempted.
        assert_eq!(s.on_start_failed(1, "c").unwrap(), restart(&[], &["c", "d"]));
        assert_eq!(s.restarts_in_window(1), 2);
    }

    #[test]
    fn one_for_all_start_failure_restarts_the_whole_round() {
        let mut s = sup(Strategy::OneForAll, &ABCD);
        let d = s.on_child_exit(0, "d", Abnormal).unwrap();
        assert_eq!(d, restart(&["c", "b", "a"], &["a", "b", "c", "d"]));
        s.mark_running("a").unwrap();
        s.mark_running("b").unwrap();
        // OTP try_again_restart re-runs one_for_all: the children started in
        // this round are terminated again and everything is started anew.
        assert_eq!(s.on_start_failed(1, "c").unwrap(), restart(&["b", "a"], &["a", "b", "c", "d"]));
    }

    #[test]
    fn one_for_one_start_failure() {
        let mut s = sup(Strategy::OneForOne, &ABCD);
        s.on_child_exit(0, "a", Abnormal).unwrap();
        assert_eq!(s.on_start_failed(1, "a").unwrap(), restart(&[], &["a"]));
    }

    #[test]
    fn start_failure_of_temporary_child_removes_it() {
        let mut s = Supervision::new(Strategy::OneForOne, Intensity::default());
        s.add_child(ChildSpecInfo::new("tmp", Temporary)).unwrap();
        assert_eq!(s.on_start_failed(0, "tmp").unwrap(), Decision::Remove { id: "tmp".into() });
        assert!(s.is_empty());
        assert_eq!(s.restarts_in_window(0), 0);
    }

    #[test]
    fn start_failure_errors() {
        let mut s = sup(Strategy::OneForOne, &ABCD);
        assert_eq!(s.on_start_failed(0, "a"), Err(SupervisionError::StillRunning("a".into())));
        assert_eq!(s.on_start_failed(0, "zz"), Err(SupervisionError::UnknownChild("zz".into())));
        assert_eq!(s.restarts_in_window(0), 0);
    }

    // ----- bookkeeping and errors -----

    #[test]
    fn children_and_shutdown_order() {
        let mut s = Supervision::new(Strategy::OneForOne, Intensity::default());
        assert_eq!(s.strategy(), Strategy::OneForOne);
        assert_eq!(s.intensity(), Intensity::default());
        for (id, r) in [("a", Permanent), ("b", Transient), ("c", Temporary)] {
            s.add_child(ChildSpecInfo::new(id, r)).unwrap();
        }
        assert!(s.shutdown_order().is_empty());
        s.mark_running("a").unwrap();
        s.mark_running("c").unwrap();
        assert_eq!(s.shutdown_order(), ids(&["c", "a"]));
        let listed: Vec<(String, RestartType, ChildStatus)> =
            s.children().map(|(c, st)| (c.id.clone(), c.restart, st)).collect();
        assert_eq!(
            listed,
            vec![
                ("a".into(), Permanent, ChildStatus::Running),
                ("b".into(), Transient, ChildStatus::Stopped),
                ("c".into(), Temporary, ChildStatus::Running)
            ]
        );
    }

    #[test]
    fn add_and_remove_errors() {
        let mut s = Supervision::new(Strategy::OneForOne, Intensity::default());
        s.add_child(ChildSpecInfo::new("a", Permanent)).unwrap();
        assert_eq!(s.add_child(ChildSpecInfo::new("a", Temporary)), Err(SupervisionError::DuplicateChild("a".into())));
        assert!(matches!(
            s.add_child(ChildSpecInfo::new("", Permanent)),
            Err(SupervisionError::InvalidChildId { len: 0, .. })
        ));
        assert!(matches!(
            s.add_child(ChildSpecInfo::new("x".repeat(1000), Permanent)),
            Err(SupervisionError::InvalidChildId { len: 1000, .. })
        ));
        s.mark_running("a").unwrap();
        assert_eq!(s.remove_child("a"), Err(SupervisionError::StillRunning("a".into())));
        assert_eq!(s.remove_child("b"), Err(SupervisionError::UnknownChild("b".into())));
        s.mark_stopped("a").unwrap();
        s.mark_stopped("a").unwrap(); // idempotent
        s.remove_child("a").unwrap();
        assert!(s.is_empty());
    }

    #[test]
    fn status_report_errors() {
        let mut s = sup(Strategy::OneForOne, &ABCD);
        assert_eq!(s.mark_running("a"), Err(SupervisionError::AlreadyRunning("a".into())));
        assert_eq!(s.mark_running("q"), Err(SupervisionError::UnknownChild("q".into())));
        assert_eq!(s.mark_stopped("q"), Err(SupervisionError::UnknownChild("q".into())));
        assert_eq!(s.on_child_exit(0, "q", Abnormal), Err(SupervisionError::UnknownChild("q".into())));
        s.mark_stopped("b").unwrap();
        let before = s.clone();
        assert_eq!(s.on_child_exit(0, "b", Abnormal), Err(SupervisionError::NotRunning("b".into())));
        assert_eq!(s, before, "errors leave the state unchanged");
    }

    #[test]
    fn exits_of_children_being_terminated_are_rejected() {
        let mut s = sup(Strategy::OneForAll, &ABCD);
        s.on_child_exit(0, "a", Abnormal).unwrap();
        // b was in the terminate list; its exit arrives while being stopped.
        assert_eq!(s.on_child_exit(1, "b", Shutdown), Err(SupervisionError::NotRunning("b".into())));
        assert_eq!(s.restarts_in_window(1), 1);
    }

    #[test]
    fn child_limit() {
        let mut s = Supervision::new(Strategy::OneForOne, Intensity::default());
        for i in 0..Supervision::MAX_CHILDREN {
            s.add_child(ChildSpecInfo::new(format!("c{i}"), Temporary)).unwrap();
        }
        assert_eq!(
            s.add_child(ChildSpecInfo::new("one-more", Permanent)),
            Err(SupervisionError::TooManyChildren { limit: Supervision::MAX_CHILDREN })
        );
        assert_eq!(s.len(), Supervision::MAX_CHILDREN);
    }

    #[test]
    fn error_echo_of_long_ids_is_bounded() {
        let mut s = Supervision::new(Strategy::OneForOne, Intensity::default());
        let long = "z".repeat(100_000);
        match s.mark_running(&long) {
            Err(SupervisionError::UnknownChild(e)) => assert!(e.len() <= 64),
            other => panic!("unexpected {other:?}"),
        }
    }
}

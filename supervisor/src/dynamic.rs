//! Dynamic supervisors: OTP `simple_one_for_one` / Elixir `DynamicSupervisor`.
//!
//! All children share one child spec (hence one [`RestartType`]); they are
//! started on demand and identified by a `u64` allocated here. The strategy
//! is always one_for_one.

use std::collections::BTreeSet;

use crate::error::SupervisionError;
use crate::types::{DynDecision, ExitClass, Intensity, RestartType};
use crate::window::{RestartVerdict, RestartWindow};

/// Decision core of a dynamic supervisor.
///
/// A child id is *live* from [`Self::start_child`] until the child is
/// forgotten ([`DynDecision::Remove`], [`Self::terminate_child`], or
/// escalation). A live child may be running or waiting to be restarted; this
/// core does not distinguish the two (as in OTP, a restarting child still
/// counts toward `max_children`). Ids increase with every allocation and are
/// never reused, so id order is start order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicSupervision {
    restart: RestartType,
    window: RestartWindow,
    max_children: usize,
    /// Next id to hand out; ids are 1..u64::MAX.
    next_id: u64,
    live: BTreeSet<u64>,
}

impl DynamicSupervision {
    /// Hard cap on live children, whatever `max_children` says.
    pub const MAX_CHILDREN: usize = 1_048_576;

    /// A dynamic supervisor whose children all have restart type `restart`.
    /// `max_children` limits the live children (`None`, or anything above
    /// [`Self::MAX_CHILDREN`], means [`Self::MAX_CHILDREN`]).
    pub fn new(restart: RestartType, intensity: Intensity, max_children: Option<usize>) -> Self {
        let max_children = max_children.unwrap_or(Self::MAX_CHILDREN).min(Self::MAX_CHILDREN);
        DynamicSupervision {
            restart,
            window: RestartWindow::new(intensity),
            max_children,
            next_id: 1,
            live: BTreeSet::new(),
        }
    }

    /// The restart type shared by all children.
    pub fn restart_type(&self) -> RestartType {
        self.restart
    }

    /// The effective restart intensity.
    pub fn intensity(&self) -> Intensity {
        self.window.intensity()
    }

    /// The effective child limit.
    pub fn max_children(&self) -> usize {
        self.max_children
    }

    /// The restart history (read-only).
    pub fn restart_window(&self) -> &RestartWindow {
        &self.window
    }

    /// Allocates a new, never-used child id for a start and counts it as
    /// live. If the runtime then fails to start it, it should release the
    /// slot with [`Self::terminate_child`] (OTP does not retry a failed
    /// `start_child`).
    ///
    /// Errors: `max_children` live children already; ids exhausted.
    pub fn start_child(&mut self) -> Result<u64, SupervisionError> {
        if self.live.len() >= self.max_children {
            return Err(SupervisionError::TooManyChildren { limit: self.max_children });
        }
        if self.next_id == u64::MAX {
            return Err(SupervisionError::IdsExhausted);
        }
        let id = self.next_id;
        self.next_id += 1;
        let fresh = self.live.insert(id);
        assert!(fresh, "child id reused");
        assert!(self.live.len() <= self.max_children);
        Ok(id)
    }

    /// A live child exited on its own at `now_ms`:
    ///
    /// - `temporary` (any class), or `transient` with a normal/shutdown exit:
    ///   the child is forgotten → [`DynDecision::Remove`];
    /// - otherwise one restart is recorded: within the intensity →
    ///   [`DynDecision::Restart`] (same id); exceeding it → the child is
    ///   forgotten and [`DynDecision::Escalate`] lists every other live child
    ///   (reverse start order), all of which are forgotten too.
    ///
    /// Errors (state unchanged): the id is not live.
    pub fn on_child_exit(&mut self, now_ms: u64, id: u64, class: ExitClass) -> Result<DynDecision, SupervisionError> {
        self.require(id)?;
        if self.restart.restarts_after(class) {
            Ok(self.restart(now_ms, id))
        } else {
            self.live.remove(&id);
            Ok(DynDecision::Remove { id })
        }
    }

    /// Restarting `id` failed. As in OTP the restart is retried and the retry
    /// counts toward the intensity → [`DynDecision::Restart`] or
    /// [`DynDecision::Escalate`]. A temporary child is never retried →
    /// [`DynDecision::Remove`].
    ///
    /// Errors (state unchanged): the id is not live.
    pub fn on_start_failed(&mut self, now_ms: u64, id: u64) -> Result<DynDecision, SupervisionError> {
        self.require(id)?;
        if self.restart == RestartType::Temporary {
            self.live.remove(&id);
            Ok(DynDecision::Remove { id })
        } else {
            Ok(self.restart(now_ms, id))
        }
    }

    /// Forgets a live child the runtime stopped on an operator's request (or
    /// whose initial start failed). No restart is considered.
    ///
    /// Errors: the id is not live.
    pub fn terminate_child(&mut self, id: u64) -> Result<(), SupervisionError> {
        self.require(id)?;
        self.live.remove(&id);
        Ok(())
    }

    /// Live children in start (= id) order.
    pub fn children(&self) -> impl Iterator<Item = u64> + '_ {
        self.live.iter().copied()
    }

    /// Number of live children.
    pub fn count(&self) -> usize {
        self.live.len()
    }

    /// Children to stop when the supervisor shuts down: every live child in
    /// reverse start order. (OTP stops dynamic children concurrently in no
    /// particular order; a definite order costs nothing and keeps runs
    /// reproducible.)
    pub fn shutdown_order(&self) -> Vec<u64> {
        self.live.iter().rev().copied().collect()
    }

    /// Restarts currently counted in the window ending at `now_ms`
    /// (saturating at `max_restarts + 1`; see [`RestartWindow::count_in_window`]).
    pub fn restarts_in_window(&self, now_ms: u64) -> usize {
        self.window.count_in_window(now_ms)
    }

    fn require(&self, id: u64) -> Result<(), SupervisionError> {
        if self.live.contains(&id) {
            Ok(())
        } else {
            Err(SupervisionError::UnknownDynamicChild(id))
        }
    }

    fn restart(&mut self, now_ms: u64, id: u64) -> DynDecision {
        assert!(self.live.contains(&id));
        assert_ne!(self.restart, RestartType::Temporary);
        match self.window.record(now_ms) {
            RestartVerdict::Allowed => DynDecision::Restart { id },
            RestartVerdict::Exceeded => {
                // OTP: del_child(Child) and then terminate all the others.
                self.live.remove(&id);
                let terminate = self.shutdown_order();
                self.live.clear();
                DynDecision::Escalate { terminate }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExitClass::*;
    use RestartType::*;

    #[test]
    fn ids_are_never_reused() {
        let mut d = DynamicSupervision::new(Permanent, Intensity::default(), Some(2));
        let a = d.start_child().unwrap();
        let b = d.start_child().unwrap();
        assert!(a < b);
        assert_eq!(d.start_child(), Err(SupervisionError::TooManyChildren { limit: 2 }));
        d.terminate_child(a).unwrap();
        let c = d.start_child().unwrap();
        assert!(c > b);
        assert_eq!(d.children().collect::<Vec<_>>(), vec![b, c]);
        assert_eq!(d.shutdown_order(), vec![c, b]);
        assert_eq!(d.count(), 2);
        assert_eq!(d.terminate_child(a), Err(SupervisionError::UnknownDynamicChild(a)));
    }

    #[test]
    fn limits() {
        let d = DynamicSupervision::new(Permanent, Intensity::default(), None);
        assert_eq!(d.max_children(), DynamicSupervision::MAX_CHILDREN);
        let d = DynamicSupervision::new(Permanent, Intensity::default(), Some(usize::MAX));
        assert_eq!(d.max_children(), DynamicSupervision::MAX_CHILDREN);
        let mut d = DynamicSupervision::new(Permanent, Intensity::default(), Some(0));
        assert_eq!(d.start_child(), Err(SupervisionError::TooManyChildren { limit: 0 }));
        let mut d = DynamicSupervision::new(Permanent, Intensity::default(), None);
        for _ in 0..DynamicSupervision::MAX_CHILDREN {
            d.start_child().unwrap();
        }
        assert_eq!(d.start_child(), Err(SupervisionError::TooManyChildren { limit: DynamicSupervision::MAX_CHILDREN }));
    }

    #[test]
    fn ids_exhausted_is_an_error_not_a_panic() {
        let mut d = DynamicSupervision::new(Permanent, Intensity::default(), None);
        d.next_id = u64::MAX - 1;
        assert_eq!(d.start_child(), Ok(u64::MAX - 1));
        assert_eq!(d.start_child(), Err(SupervisionError::IdsExhausted));
    }

    #[test]
    fn exit_decisions_per_restart_type() {
        for class in [Normal, Shutdown, Abnormal] {
            let mut d = DynamicSupervision::new(Permanent, Intensity::default(), None);
            let id = d.start_child().unwrap();
            assert_eq!(d.on_child_exit(0, id, class).unwrap(), DynDecision::Restart { id });
            assert_eq!(d.count(), 1);

            let mut d = DynamicSupervision::new(Temporary, Intensity::default(), None);
            let id = d.start_child().unwrap();
            assert_eq!(d.on_child_exit(0, id, class).unwrap(), DynDecision::Remove { id });
            assert_eq!(d.count(), 0);
            assert_eq!(d.restarts_in_window(0), 0);

            let mut d = DynamicSupervision::new(Transient, Intensity::default(), None);
            let id = d.start_child().unwrap();
            let expected = if class == Abnormal { DynDecision::Restart { id } } else { DynDecision::Remove { id } };
            assert_eq!(d.on_child_exit(0, id, class).unwrap(), expected);
        }
    }

    #[test]
    fn intensity_escalates_and_forgets_everyone() {
        let mut d = DynamicSupervision::new(Permanent, Intensity::new(3, 5000), None);
        let ids: Vec<u64> = (0..4).map(|_| d.start_child().unwrap()).collect();
        for t in 0..3 {
            assert_eq!(d.on_child_exit(t, ids[1], Abnormal).unwrap(), DynDecision::Restart { id: ids[1] });
        }
        assert_eq!(d.restarts_in_window(2), 3);
        assert_eq!(
            d.on_child_exit(3, ids[2], Abnormal).unwrap(),
            DynDecision::Escalate { terminate: vec![ids[3], ids[1], ids[0]] }
        );
        assert_eq!(d.count(), 0);
    }

    #[test]
    fn spaced_out_restarts_never_escalate() {
        let mut d = DynamicSupervision::new(Transient, Intensity::new(1, 100), None);
        let id = d.start_child().unwrap();
        for i in 0..500u64 {
            assert_eq!(d.on_child_exit(i * 101, id, Abnormal).unwrap(), DynDecision::Restart { id });
        }
    }

    #[test]
    fn start_failures() {
        let mut d = DynamicSupervision::new(Permanent, Intensity::new(2, 5000), None);
        let a = d.start_child().unwrap();
        let b = d.start_child().unwrap();
        assert_eq!(d.on_child_exit(0, b, Abnormal).unwrap(), DynDecision::Restart { id: b });
        assert_eq!(d.on_start_failed(1, b).unwrap(), DynDecision::Restart { id: b });
        assert_eq!(d.on_start_failed(2, b).unwrap(), DynDecision::Escalate { terminate: vec![a] });
        assert_eq!(d.on_start_failed(3, b), Err(SupervisionError::UnknownDynamicChild(b)));

        let mut d = DynamicSupervision::new(Temporary, Intensity::new(0, 5000), None);
        let t = d.start_child().unwrap();
        assert_eq!(d.on_start_failed(0, t).unwrap(), DynDecision::Remove { id: t });
    }

    #[test]
    fn zero_intensity_escalates_first_restart() {
        let mut d = DynamicSupervision::new(Permanent, Intensity::new(0, 1), Some(10));
        let a = d.start_child().unwrap();
        let b = d.start_child().unwrap();
        assert_eq!(d.on_child_exit(0, a, Normal).unwrap(), DynDecision::Escalate { terminate: vec![b] });
    }

    #[test]
    fn unknown_ids_are_errors() {
        let mut d = DynamicSupervision::new(Permanent, Intensity::default(), None);
        assert_eq!(d.on_child_exit(0, 7, Abnormal), Err(SupervisionError::UnknownDynamicChild(7)));
        assert_eq!(d.on_start_failed(0, 7), Err(SupervisionError::UnknownDynamicChild(7)));
        assert_eq!(d.restarts_in_window(0), 0);
        assert_eq!(d.restart_type(), Permanent);
        assert_eq!(d.intensity(), Intensity::default());
    }
}

//! Property tests: random event sequences against a reference model.
//!
//! A "runtime" executes every decision the way the real one would (stops
//! are implied, starts are reported with `mark_running`, some starts fail
//! and are reported with `on_start_failed`). Every decision is compared
//! with an independent model of OTP's rules, and generic invariants are
//! checked after every step.

use proptest::prelude::*;

use crate::{
    ChildSpecInfo, ChildStatus, Decision, DynDecision, DynamicSupervision, ExitClass, Intensity, RestartType,
    Strategy as SupStrategy, Supervision, SupervisionError,
};

type Snap = Vec<(String, RestartType, ChildStatus)>;

fn snap(s: &Supervision) -> Snap {
    s.children().map(|(c, st)| (c.id.clone(), c.restart, st)).collect()
}

/// OTP `add_restart/3` on a full (unbounded) history: would recording a
/// restart at `now` exceed the intensity?
fn model_exceeds(history: &[u64], now: u64, i: Intensity) -> bool {
    let threshold = now.saturating_sub(i.period_ms);
    let in_window = history.iter().filter(|&&t| t >= threshold).count();
    in_window + 1 > i.max_restarts as usize
}

/// Restarts in the window, saturating at `max_restarts + 1` (the bounded
/// history cannot tell more apart, and need not: that many already escalate).
fn model_count(history: &[u64], now: u64, i: Intensity) -> usize {
    let threshold = now.saturating_sub(i.period_ms);
    let n = history.iter().filter(|&&t| t >= threshold).count();
    n.min(i.max_restarts as usize + 1)
}

/// The decision and post-state OTP's rules give for child `x` of `pre`,
/// which has just exited / failed to start, given whether it is to be
/// restarted and whether that restart exceeds the intensity.
fn model_decision(strategy: SupStrategy, pre: &Snap, x: usize, restarted: bool, exceeds: bool) -> (Decision, Snap) {
    let mut post = pre.clone();
    post[x].2 = ChildStatus::Stopped;
    let id = pre[x].0.clone();
    if pre[x].1 == RestartType::Temporary {
        post.remove(x);
        return (Decision::Remove { id }, post);
    }
    if !restarted {
        return (Decision::None, post);
    }
    if exceeds {
        let terminate = post.iter().rev().filter(|c| c.2 == ChildStatus::Running).map(|c| c.0.clone()).collect();
        for c in &mut post {
            c.2 = ChildStatus::Stopped;
        }
        return (Decision::Escalate { terminate }, post);
    }
    let from = match strategy {
        SupStrategy::OneForOne => return (Decision::Restart { terminate: vec![], start: vec![id] }, post),
        SupStrategy::OneForAll => 0,
        SupStrategy::RestForOne => x,
    };
    let terminate = post[from..].iter().rev().filter(|c| c.2 == ChildStatus::Running).map(|c| c.0.clone()).collect();
    let start = post[from..].iter().filter(|c| c.1 != RestartType::Temporary).map(|c| c.0.clone()).collect();
    let mut kept = post[..from].to_vec();
    kept.extend(
        post[from..].iter().filter(|c| c.1 != RestartType::Temporary).map(|c| (c.0.clone(), c.1, ChildStatus::Stopped)),
    );
    (Decision::Restart { terminate, start }, kept)
}

/// Model-independent invariants of a decision taken on `pre` yielding `post`.
fn check_generic(pre: &Snap, post: &Snap, exited: &str, d: &Decision) {
    let pre_pos = |id: &str| pre.iter().position(|c| c.0 == id);
    let post_pos = |id: &str| post.iter().position(|c| c.0 == id);
    let terminate: &[String] = match d {
        Decision::Restart { terminate, .. } | Decision::Escalate { terminate } => terminate,
        _ => &[],
    };
    // Terminate: known, running before, not the exited child, strictly
    // reverse start order, stopped (or gone) afterwards.
    let mut last: Option<usize> = None;
    for id in terminate {
        let p = pre_pos(id).expect("terminate names a known child");
        assert_eq!(pre[p].2, ChildStatus::Running, "terminating a stopped child");
        assert_ne!(id, exited, "the exited child is not terminated");
        if let Some(l) = last {
            assert!(p < l, "terminate not in reverse start order");
        }
        last = Some(p);
        if let Some(q) = post_pos(id) {
            assert_eq!(post[q].2, ChildStatus::Stopped);
        } else {
            assert_eq!(pre[p].1, RestartType::Temporary, "only temporaries vanish");
        }
    }
    match d {
        Decision::Restart { start, .. } => {
            assert!(start.iter().any(|s| s == exited), "exited child restarted");
            let mut last: Option<usize> = None;
            for id in start {
                assert!(pre_pos(id).is_some(), "start names a known child");
                let q = post_pos(id).expect("started child still has a spec");
                assert_eq!(post[q].2, ChildStatus::Stopped, "start pending");
                assert_ne!(post[q].1, RestartType::Temporary);
                if let Some(l) = last {
                    assert!(q > l, "start not in start order");
                }
                last = Some(q);
            }
        }
        Decision::Escalate { .. } => {
            assert!(post.iter().all(|c| c.2 == ChildStatus::Stopped));
        }
        Decision::Remove { id } => {
            assert_eq!(id, exited);
            assert!(post_pos(id).is_none());
        }
        Decision::None => {
            assert!(post_pos(exited).is_some());
        }
    }
    // The relative order of surviving children never changes.
    let survivors: Vec<&String> = pre.iter().map(|c| &c.0).filter(|id| post_pos(id).is_some()).collect();
    let post_ids: Vec<&String> = post.iter().map(|c| &c.0).collect();
    assert_eq!(survivors, post_ids, "children reordered or invented");
}

fn check_state(s: &Supervision) {
    let sn = snap(s);
    assert!(sn.len() <= Supervision::MAX_CHILDREN);
    let mut ids: Vec<&String> = sn.iter().map(|c| &c.0).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), sn.len(), "duplicate ids");
    for c in &sn {
        assert_eq!(s.status(&c.0), Some(c.2));
    }
    let expected: Vec<String> = sn.iter().rev().filter(|c| c.2 == ChildStatus::Running).map(|c| c.0.clone()).collect();
    assert_eq!(s.shutdown_order(), expected);
    let w = s.restart_window();
    assert!(w.len() <= s.intensity().max_restarts as usize + 1);
}

#[derive(Debug, Clone)]
enum Op {
    /// A running child (picked modulo) exits on its own after `dt` ms.
    Exit { pick: usize, class: ExitClass, dt: u64 },
    /// The operator stops a running child.
    OperatorStop { pick: usize },
    /// The operator starts a stopped child.
    OperatorStart { pick: usize },
    /// The operator deletes a stopped child's spec.
    Delete { pick: usize },
    /// A new child spec is added and started.
    Add { restart: RestartType },
    /// A bogus exit report (stopped or unknown child).
    Bogus { pick: usize, class: ExitClass },
}

fn class_strategy() -> impl proptest::strategy::Strategy<Value = ExitClass> {
    prop_oneof![Just(ExitClass::Normal), Just(ExitClass::Shutdown), Just(ExitClass::Abnormal),]
}

fn restart_strategy() -> impl proptest::strategy::Strategy<Value = RestartType> {
    prop_oneof![Just(RestartType::Permanent), Just(RestartType::Transient), Just(RestartType::Temporary),]
}

fn sup_strategy() -> impl proptest::strategy::Strategy<Value = SupStrategy> {
    prop_oneof![Just(SupStrategy::OneForOne), Just(SupStrategy::OneForAll), Just(SupStrategy::RestForOne),]
}

fn op_strategy() -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<usize>(), class_strategy(), 0u64..120)
            .prop_map(|(pick, class, dt)| Op::Exit { pick, class, dt }),
        1 => any::<usize>().prop_map(|pick| Op::OperatorStop { pick }),
        1 => any::<usize>().prop_map(|pick| Op::OperatorStart { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        1 => restart_strategy().prop_map(|restart| Op::Add { restart }),
        1 => (any::<usize>(), class_strategy()).prop_map(|(pick, class)| Op::Bogus { pick, class }),
    ]
}

struct Harness {
    strategy: SupStrategy,
    intensity: Intensity,
    sup: Supervision,
    history: Vec<u64>,
    now: u64,
    fails: Vec<bool>,
    fail_at: usize,
    next_name: usize,
    escalations: usize,
}

impl Harness {
    fn new(strategy: SupStrategy, intensity: Intensity, specs: &[RestartType], fails: Vec<bool>) -> Self {
        let mut h = Harness {
            strategy,
            intensity,
            sup: Supervision::new(strategy, intensity),
            history: Vec::new(),
            now: 0,
            fails,
            fail_at: 0,
            next_name: 0,
            escalations: 0,
        };
        for r in specs {
            h.add(*r);
        }
        h
    }

    fn add(&mut self, restart: RestartType) {
        let id = format!("c{}", self.next_name);
        self.next_name += 1;
        self.sup.add_child(ChildSpecInfo::new(&*id, restart)).unwrap();
        self.sup.mark_running(&id).unwrap();
    }

    fn next_fails(&mut self) -> bool {
        let f = self.fails[self.fail_at % self.fails.len()];
        self.fail_at += 1;
        f
    }

    fn pick(&self, status: ChildStatus, pick: usize) -> Option<String> {
        let matching: Vec<String> =
            self.sup.children().filter(|(_, st)| *st == status).map(|(c, _)| c.id.clone()).collect();
        if matching.is_empty() {
            None
        } else {
            Some(matching[pick % matching.len()].clone())
        }
    }

    /// Feeds one exit or start failure of `id` and checks the decision.
    fn event(&mut self, id: &str, class: Option<ExitClass>) -> Decision {
        let pre = snap(&self.sup);
        let x = pre.iter().position(|c| c.0 == id).unwrap();
        let restarted = match class {
            Some(class) => pre[x].1.restarts_after(class),
            None => pre[x].1 != RestartType::Temporary,
        };
        let exceeds = model_exceeds(&self.history, self.now, self.intensity);
        let d = match class {
            Some(class) => self.sup.on_child_exit(self.now, id, class).unwrap(),
            None => self.sup.on_start_failed(self.now, id).unwrap(),
        };
        let post = snap(&self.sup);
        let (expected, expected_post) = model_decision(self.strategy, &pre, x, restarted, exceeds);
        assert_eq!(d, expected, "pre {pre:?} x {x} class {class:?}");
        assert_eq!(post, expected_post);
        check_generic(&pre, &post, id, &d);
        assert_eq!(
            matches!(d, Decision::Escalate { .. }),
            restarted && exceeds,
            "escalation iff the window would exceed max_restarts"
        );
        if restarted {
            self.history.push(self.now);
        }
        assert_eq!(self.sup.restarts_in_window(self.now), model_count(&self.history, self.now, self.intensity));
        check_state(&self.sup);
        d
    }

    /// Executes a decision as the runtime would.
    fn execute(&mut self, mut d: Decision) {
        for _ in 0..10_000 {
            match d {
                Decision::Restart { start, .. } => {
                    let mut failed = None;
                    for id in &start {
                        if self.next_fails() {
                            failed = Some(id.clone());
                            break;
                        }
                        self.sup.mark_running(id).unwrap();
                    }
                    match failed {
                        Some(id) => d = self.event(&id, None),
                        None => {
                            for id in &start {
                                assert_eq!(self.sup.status(id), Some(ChildStatus::Running));
                            }
                            return;
                        }
                    }
                }
                Decision::Escalate { .. } => {
                    // The supervisor exits; its parent starts a fresh one
                    // with the surviving specs.
                    self.escalations += 1;
                    let specs: Vec<RestartType> = self.sup.children().map(|(c, _)| c.restart).collect();
                    let next_name = self.next_name;
                    let escalations = self.escalations;
                    *self = Harness {
                        fails: std::mem::take(&mut self.fails),
                        ..Harness::new(self.strategy, self.intensity, &[], vec![false])
                    };
                    self.next_name = next_name;
                    self.escalations = escalations;
                    for r in specs {
                        self.add(r);
                    }
                    return;
                }
                Decision::None | Decision::Remove { .. } => return,
            }
        }
        panic!("start failures never converged");
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Exit { pick, class, dt } => {
                self.now += dt;
                if let Some(id) = self.pick(ChildStatus::Running, pick) {
                    let d = self.event(&id, Some(class));
                    self.execute(d);
                }
            }
            Op::OperatorStop { pick } => {
                if let Some(id) = self.pick(ChildStatus::Running, pick) {
                    self.sup.mark_stopped(&id).unwrap();
                }
            }
            Op::OperatorStart { pick } => {
                if let Some(id) = self.pick(ChildStatus::Stopped, pick) {
                    self.sup.mark_running(&id).unwrap();
                }
            }
            Op::Delete { pick } => {
                if let Some(id) = self.pick(ChildStatus::Stopped, pick) {
                    self.sup.remove_child(&id).unwrap();
                }
            }
            Op::Add { restart } => self.add(restart),
            Op::Bogus { pick, class } => {
                let before = self.sup.clone();
                if let Some(id) = self.pick(ChildStatus::Stopped, pick) {
                    assert_eq!(
                        self.sup.on_child_exit(self.now, &id, class),
                        Err(SupervisionError::NotRunning(id.clone()))
                    );
                }
                assert!(matches!(
                    self.sup.on_child_exit(self.now, "no-such-child", class),
                    Err(SupervisionError::UnknownChild(_))
                ));
                assert_eq!(self.sup, before, "errors leave the state unchanged");
            }
        }
        check_state(&self.sup);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn static_supervision_follows_otp(
        strategy in sup_strategy(),
        max_restarts in 0u32..5,
        period_ms in 0u64..300,
        specs in prop::collection::vec(restart_strategy(), 1..8),
        fails in prop::collection::vec(prop::bool::weighted(0.2), 1..16),
        ops in prop::collection::vec(op_strategy(), 1..80),
    ) {
        let intensity = Intensity::new(max_restarts, period_ms);
        let mut h = Harness::new(strategy, intensity, &specs, fails);
        for op in ops {
            h.apply(op);
        }
    }

    #[test]
    fn dynamic_supervision_follows_otp(
        restart in restart_strategy(),
        max_restarts in 0u32..5,
        period_ms in 0u64..300,
        max_children in 0usize..12,
        fails in prop::collection::vec(prop::bool::weighted(0.2), 1..16),
        ops in prop::collection::vec(dyn_op_strategy(), 1..120),
    ) {
        let intensity = Intensity::new(max_restarts, period_ms);
        let mut d = DynamicSupervision::new(restart, intensity, Some(max_children));
        let mut live: Vec<u64> = Vec::new();
        let mut last_id = 0u64;
        let mut history: Vec<u64> = Vec::new();
        let mut now = 0u64;
        let mut fail_at = 0usize;
        for op in ops {
            match op {
                DynOp::Start => {
                    let r = d.start_child();
                    if live.len() < max_children {
                        let id = r.unwrap();
                        prop_assert!(id > last_id, "ids increase and are never reused");
                        last_id = id;
                        live.push(id);
                    } else {
                        prop_assert_eq!(r, Err(SupervisionError::TooManyChildren { limit: max_children }));
                    }
                }
                DynOp::Terminate { pick } => {
                    if !live.is_empty() {
                        let id = live.remove(pick % live.len());
                        d.terminate_child(id).unwrap();
                        prop_assert_eq!(
                            d.terminate_child(id),
                            Err(SupervisionError::UnknownDynamicChild(id))
                        );
                    }
                }
                DynOp::Exit { pick, class, dt } => {
                    now += dt;
                    if live.is_empty() {
                        continue;
                    }
                    let id = live[pick % live.len()];
                    let mut event = Some(class);
                    // Exit, then any number of failed restarts.
                    loop {
                        let restarted = match event {
                            Some(c) => restart.restarts_after(c),
                            None => restart != RestartType::Temporary,
                        };
                        let exceeds = model_exceeds(&history, now, intensity);
                        let dec = match event {
                            Some(c) => d.on_child_exit(now, id, c).unwrap(),
                            None => d.on_start_failed(now, id).unwrap(),
                        };
                        if restarted {
                            history.push(now);
                        }
                        let expected = if !restarted {
                            live.retain(|&l| l != id);
                            DynDecision::Remove { id }
                        } else if exceeds {
                            let terminate = live.iter().rev().copied().filter(|&l| l != id).collect();
                            live.clear();
                            DynDecision::Escalate { terminate }
                        } else {
                            DynDecision::Restart { id }
                        };
                        prop_assert_eq!(&dec, &expected);
                        prop_assert_eq!(d.restarts_in_window(now), model_count(&history, now, intensity));
                        prop_assert!(d.restart_window().len() <= max_restarts as usize + 1);
                        if dec != (DynDecision::Restart { id }) {
                            break;
                        }
                        let fail = fails[fail_at % fails.len()];
                        fail_at += 1;
                        if !fail {
                            break;
                        }
                        event = None;
                    }
                }
                DynOp::Bogus { class } => {
                    let before = d.clone();
                    let bogus = last_id + 1;
                    prop_assert_eq!(
                        d.on_child_exit(now, bogus, class),
                        Err(SupervisionError::UnknownDynamicChild(bogus))
                    );
                    prop_assert_eq!(
                        d.on_start_failed(now, bogus),
                        Err(SupervisionError::UnknownDynamicChild(bogus))
                    );
                    prop_assert_eq!(&d, &before);
                }
            }
            prop_assert!(d.count() <= max_children);
            prop_assert_eq!(d.children().collect::<Vec<_>>(), live.clone());
            let mut rev = live.clone();
            rev.reverse();
            prop_assert_eq!(d.shutdown_order(), rev);
        }
    }
}

#[derive(Debug, Clone)]
enum DynOp {
    Start,
    Terminate { pick: usize },
    Exit { pick: usize, class: ExitClass, dt: u64 },
    Bogus { class: ExitClass },
}

fn dyn_op_strategy() -> impl proptest::strategy::Strategy<Value = DynOp> {
    prop_oneof![
        4 => Just(DynOp::Start),
        1 => any::<usize>().prop_map(|pick| DynOp::Terminate { pick }),
        6 => (any::<usize>(), class_strategy(), 0u64..120)
            .prop_map(|(pick, class, dt)| DynOp::Exit { pick, class, dt }),
        1 => class_strategy().prop_map(|class| DynOp::Bogus { class }),
    ]
}

#[test]
fn harness_escalates_sometimes() {
    // Sanity check that the generated scenarios reach escalation at all.
    let mut h = Harness::new(
        SupStrategy::OneForAll,
        Intensity::new(1, 1000),
        &[RestartType::Permanent, RestartType::Temporary, RestartType::Transient],
        vec![false],
    );
    for _ in 0..3 {
        h.apply(Op::Exit { pick: 0, class: ExitClass::Abnormal, dt: 1 });
    }
    assert!(h.escalations >= 1);
    // The temporary child was dropped by the first one_for_all restart.
    assert_eq!(h.sup.len(), 2);
}

//! Tests of the replicated supervision state machine and the leader's decisions: exact
//! commands and effects for each scenario, then a property test that drives random faults
//! through plan → apply → fence and checks G6 after every step.

use std::collections::BTreeMap;

use proptest::prelude::{any, prop_assert, prop_assert_eq, prop_oneof, proptest, Just, ProptestConfig, Strategy as _};

use super::fence::{Fence, StartVerdict};
use super::placement::{NodeView, PlacementSpec, View};
use super::plan::{plan, reconcile, PlanConfig, Report};
use super::*;

/// A log: applies commands at increasing indexes, collecting effects.
struct Log {
    state: ClusterState,
    index: u64,
}

impl Log {
    fn new() -> Log {
        Log { state: ClusterState::new(), index: 0 }
    }

    fn apply(&mut self, cmd: Command) -> Result<Vec<Effect>, Rejected> {
        self.index += 1;
        self.state.apply(self.index, &cmd)
    }

    fn ok(&mut self, cmd: Command) -> Vec<Effect> {
        let c = format!("{cmd:?}");
        self.apply(cmd).unwrap_or_else(|e| panic!("{c} rejected: {e}"))
    }

    /// Plans and applies until nothing is left to do; returns every effect.
    fn settle(&mut self, view: &View, now: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        for _ in 0..16 {
            let cmds = plan(&self.state, view, now, &PlanConfig::default());
            if cmds.is_empty() {
                return effects;
            }
            for c in cmds {
                if let Ok(e) = self.apply(c) {
                    effects.extend(e);
                }
            }
        }
        panic!("plan did not settle");
    }

    fn child(&self, id: &str) -> &ChildState {
        self.state.child("s", id).expect("child")
    }

    /// Reports every starting child running (as its node would).
    fn confirm_all(&mut self) {
        let starting: Vec<(String, u64)> = self.state.sups["s"]
            .children
            .iter()
            .filter(|(_, c)| c.phase == Phase::Starting)
            .map(|(id, c)| (id.clone(), c.generation))
            .collect();
        for (id, g) in starting {
            self.ok(Command::Running { sup: "s".into(), child: id.clone(), generation: g, pid: format!("<n.1.{g}>") });
        }
    }
}

fn node(name: &str, role: &str, providers: &[&str]) -> NodeView {
    NodeView {
        name: name.into(),
        role: role.into(),
        providers: providers.iter().map(|p| p.to_string()).collect(),
        capacity: 100,
        ..NodeView::default()
    }
}

fn view(nodes: &[NodeView]) -> View {
    nodes.iter().map(|n| (n.name.clone(), n.clone())).collect()
}

fn child(id: &str, restart: RestartType, providers: &[&str]) -> ChildSpec {
    ChildSpec {
        id: id.into(),
        behaviour: "worker".into(),
        args: "null".into(),
        restart,
        placement: PlacementSpec {
            role: Some("cold".into()),
            providers: providers.iter().map(|p| p.to_string()).collect(),
            ..PlacementSpec::default()
        },
    }
}

fn sup(log: &mut Log, strategy: Strategy, intensity: Intensity, children: &[ChildSpec]) {
    log.ok(Command::CreateSupervisor(SupSpec { name: "s".into(), strategy, intensity }));
    for c in children {
        log.ok(Command::AddChild { sup: "s".into(), spec: c.clone() });
    }
}

fn crash(log: &mut Log, id: &str, at: u64) -> Vec<Effect> {
    let g = log.child(id).generation;
    log.ok(Command::Exited {
        sup: "s".into(),
        child: id.into(),
        generation: g,
        cause: Cause::Exit(ExitClass::Abnormal, "boom".into()),
        at_ms: at,
    })
}

fn cluster() -> View {
    view(&[
        node("h1", "hot", &[]),
        node("c1", "cold", &["anthropic"]),
        node("c2", "cold", &["openai"]),
        node("c3", "cold", &["openai"]),
    ])
}

#[test]
fn children_are_placed_by_provider_and_confirmed() {
    let mut log = Log::new();
    sup(
        &mut log,
        Strategy::OneForOne,
        Intensity::default(),
        &[
            child("a", RestartType::Permanent, &["anthropic", "openai"]),
            child("b", RestartType::Permanent, &["openai"]),
        ],
    );
    let v = cluster();
    let cmds = plan(&log.state, &v, 100, &PlanConfig::default());
    assert_eq!(
        cmds,
        vec![
            Command::Assign {
                sup: "s".into(),
                child: "a".into(),
                node: "c1".into(),
                provider: Some("anthropic".into()),
                at_ms: 100
            },
            Command::Assign {
                sup: "s".into(),
                child: "b".into(),
                node: "c2".into(),
                provider: Some("openai".into()),
                at_ms: 100
            },
        ]
    );
    let e = log.ok(cmds[0].clone());
    assert_eq!(e, vec![Effect::Start { node: "c1".into(), sup: "s".into(), child: "a".into(), generation: 4 }]);
    log.ok(cmds[1].clone());
    log.confirm_all();
    assert_eq!((log.child("a").phase.clone(), log.child("a").generation), (Phase::Running, 4));
    assert!(plan(&log.state, &v, 200, &PlanConfig::default()).is_empty(), "nothing to do");
}

#[test]
fn a_placement_that_falls_on_a_settling_node_waits_for_it_and_others_go_ahead() {
    let mut log = Log::new();
    sup(
        &mut log,
        Strategy::OneForOne,
        Intensity::default(),
        &[child("a", RestartType::Permanent, &["anthropic"]), child("b", RestartType::Permanent, &["openai"])],
    );
    let mut v = cluster();
    // A new leader has heard from no one yet: nothing is placed, and nothing is marked pending
    // (which a view without those nodes would do).
    for n in v.values_mut() {
        n.settling = true;
    }
    assert_eq!(plan(&log.state, &v, 100, &PlanConfig::default()), vec![]);
    // c1 (the only anthropic node) and c2 answered; c3 did not. `b` is placed as with every
    // node heard (c2, first of the equally loaded openai nodes).
    v.get_mut("c1").expect("c1").settling = false;
    v.get_mut("c2").expect("c2").settling = false;
    let cmds = plan(&log.state, &v, 100, &PlanConfig::default());
    let placed: Vec<(&str, &str)> = cmds
        .iter()
        .filter_map(|c| match c {
            Command::Assign { child, node, .. } => Some((child.as_str(), node.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(placed, vec![("a", "c1"), ("b", "c2")]);
    for c in cmds {
        log.ok(c);
    }
    log.confirm_all();
    // `b` crashes on c2 while c2 is settling again (a newer leader): its restart, which
    // prefers c2, waits; c2's children are neither lost nor timed out meanwhile.
    crash(&mut log, "b", 200);
    v.get_mut("c2").expect("c2").settling = true;
    assert_eq!(plan(&log.state, &v, 60_000, &PlanConfig::default()), vec![], "b waits for c2; a stays");
    v.get_mut("c2").expect("c2").settling = false;
    let cmds = plan(&log.state, &v, 60_000, &PlanConfig::default());
    assert!(
        matches!(&cmds[..], [Command::Assign { child, node, .. }] if child == "b" && node == "c2"),
        "restarted in place once c2 answered: {cmds:?}"
    );
}

#[test]
fn a_crash_restarts_on_the_same_node_with_a_new_generation_and_old_reports_are_stale() {
    let mut log = Log::new();
    sup(&mut log, Strategy::OneForOne, Intensity::default(), &[child("a", RestartType::Permanent, &["openai"])]);
    let v = cluster();
    log.settle(&v, 0);
    log.confirm_all();
    let (node0, g0) = (log.child("a").node.clone(), log.child("a").generation);
    assert_eq!(
        crash(&mut log, "a", 10),
        vec![Effect::Stop { node: node0.clone().unwrap(), sup: "s".into(), child: "a".into(), generation: g0 }],
        "a one_for_one crash stops nothing but the (dead) incarnation itself"
    );
    assert_eq!(log.child("a").phase, Phase::Waiting);
    let e = log.settle(&v, 10);
    let g1 = log.child("a").generation;
    assert!(g1 > g0);
    assert_eq!(log.child("a").node, node0, "restarted in place");
    assert_eq!(
        e,
        vec![Effect::Start { node: node0.clone().unwrap(), sup: "s".into(), child: "a".into(), generation: g1 }]
    );
    // The old incarnation's late reports change nothing.
    let stale =
        log.apply(Command::Running { sup: "s".into(), child: "a".into(), generation: g0, pid: "<x.1.1>".into() });
    assert_eq!(stale, Err(Rejected::Stale { got: g0, current: g1 }));
    assert_eq!(log.state.stale_rejected, 1);
}

#[test]
fn a_lost_node_moves_its_children_to_other_nodes_of_their_provider() {
    let mut log = Log::new();
    sup(&mut log, Strategy::OneForOne, Intensity::default(), &[child("a", RestartType::Permanent, &["openai"])]);
    let mut v = cluster();
    log.settle(&v, 0);
    log.confirm_all();
    assert_eq!(log.child("a").node.as_deref(), Some("c2"));
    v.remove("c2");
    let cmds = plan(&log.state, &v, 50, &PlanConfig::default());
    assert_eq!(
        cmds,
        vec![Command::Exited {
            sup: "s".into(),
            child: "a".into(),
            generation: log.child("a").generation,
            cause: Cause::NodeLost,
            at_ms: 50
        }]
    );
    log.ok(cmds[0].clone());
    log.settle(&v, 50);
    assert_eq!((log.child("a").node.as_deref(), log.child("a").phase.clone()), (Some("c3"), Phase::Starting));
}

#[test]
fn an_unavailable_provider_moves_children_to_the_next_preference() {
    let mut log = Log::new();
    sup(
        &mut log,
        Strategy::OneForOne,
        Intensity::default(),
        &[child("a", RestartType::Permanent, &["anthropic", "openai"])],
    );
    let mut v = cluster();
    log.settle(&v, 0);
    log.confirm_all();
    assert_eq!(log.child("a").provider.as_deref(), Some("anthropic"));
    v.get_mut("c1").unwrap().unavailable = vec!["anthropic".into()];
    let e = log.settle(&v, 20);
    assert_eq!(log.child("a").provider.as_deref(), Some("openai"));
    assert_eq!(log.child("a").node.as_deref(), Some("c2"));
    assert!(e.iter().any(|e| matches!(e, Effect::Start { node, .. } if node == "c2")));
    assert_eq!(log.child("a").last_cause, Some(Cause::ProviderUnavailable("anthropic".into())));
}

#[test]
fn no_matching_node_is_pending_visibly_until_one_joins() {
    let mut log = Log::new();
    sup(&mut log, Strategy::OneForOne, Intensity::default(), &[child("a", RestartType::Permanent, &["mistral"])]);
    let mut v = cluster();
    log.settle(&v, 0);
    match &log.child("a").phase {
        Phase::Pending(why) => assert!(why.contains("mistral"), "{why}"),
        other => panic!("expected pending, got {other:?}"),
    }
    assert!(plan(&log.state, &v, 5, &PlanConfig::default()).is_empty(), "pending is not re-proposed each round");
    v.insert("c9".into(), node("c9", "cold", &["mistral"]));
    log.settle(&v, 10);
    assert_eq!((log.child("a").node.as_deref(), log.child("a").phase.clone()), (Some("c9"), Phase::Starting));
}

#[test]
fn one_for_all_and_rest_for_one_stop_and_replace_the_affected_siblings() {
    for (strategy, want_stopped) in [(Strategy::OneForAll, vec!["b", "c", "a"]), (Strategy::RestForOne, vec!["b", "c"])]
    {
        let mut log = Log::new();
        let kids: Vec<ChildSpec> =
            ["a", "b", "c"].iter().map(|id| child(id, RestartType::Permanent, &["openai"])).collect();
        sup(&mut log, strategy, Intensity::default(), &kids);
        let v = cluster();
        log.settle(&v, 0);
        log.confirm_all();
        let effects = crash(&mut log, "b", 10);
        let stopped: Vec<&str> = effects
            .iter()
            .map(|e| match e {
                Effect::Stop { child, .. } => child.as_str(),
                Effect::Start { .. } => panic!("no start before placement"),
            })
            .collect();
        assert_eq!(
            stopped, want_stopped,
            "{strategy:?}: the crashed one, then running siblings in reverse start order"
        );
        let gens: BTreeMap<String, u64> =
            ["a", "b", "c"].iter().map(|id| (id.to_string(), log.child(id).generation)).collect();
        log.settle(&v, 10);
        for id in want_stopped.iter() {
            assert!(log.child(id).generation > gens[*id], "{strategy:?}: {id} got a new generation");
        }
        if strategy == Strategy::RestForOne {
            assert_eq!(log.child("a").generation, gens["a"], "a is before b: untouched");
        }
    }
}

#[test]
fn too_many_restarts_escalate_and_stop_everything() {
    let mut log = Log::new();
    sup(
        &mut log,
        Strategy::OneForOne,
        Intensity::new(2, 1000),
        &[child("a", RestartType::Permanent, &["openai"]), child("b", RestartType::Permanent, &["openai"])],
    );
    let v = cluster();
    for t in [0, 10, 20] {
        log.settle(&v, t);
        log.confirm_all();
        let e = crash(&mut log, "a", t + 1);
        if t == 20 {
            assert_eq!(log.state.sups["s"].status, SupStatus::Failed("reached max restart intensity".into()));
            let stopped: Vec<&str> = e
                .iter()
                .map(|x| match x {
                    Effect::Stop { child, .. } => child.as_str(),
                    Effect::Start { .. } => "start?",
                })
                .collect();
            assert_eq!(stopped, ["a", "b"], "the crashed one, then every other: {e:?}");
        }
    }
    assert!(log.settle(&v, 30).is_empty(), "a failed supervisor places nothing");
    assert!(log.state.sups["s"].children.values().all(|c| c.phase == Phase::Stopped));
}

#[test]
fn transient_normal_exits_stay_stopped_and_temporary_children_are_removed() {
    let mut log = Log::new();
    sup(
        &mut log,
        Strategy::OneForOne,
        Intensity::default(),
        &[child("t", RestartType::Transient, &["openai"]), child("x", RestartType::Temporary, &["openai"])],
    );
    let v = cluster();
    log.settle(&v, 0);
    log.confirm_all();
    let g = log.child("t").generation;
    log.ok(Command::Exited {
        sup: "s".into(),
        child: "t".into(),
        generation: g,
        cause: Cause::Exit(ExitClass::Normal, "done".into()),
        at_ms: 5,
    });
    assert_eq!(log.child("t").phase, Phase::Stopped);
    crash(&mut log, "x", 6);
    assert!(log.state.child("s", "x").is_none());
    assert_eq!(log.state.children_total(), 1);
    assert!(log.settle(&v, 10).is_empty());
}

#[test]
fn overdue_starts_are_retried_elsewhere() {
    let mut log = Log::new();
    sup(&mut log, Strategy::OneForOne, Intensity::default(), &[child("a", RestartType::Permanent, &["openai"])]);
    let v = cluster();
    log.settle(&v, 0);
    let first = log.child("a").node.clone();
    let cmds = plan(&log.state, &v, 10_001, &PlanConfig::default());
    assert!(matches!(&cmds[..], [Command::Exited { cause: Cause::StartTimeout, .. }]), "{cmds:?}");
    let e = log.ok(cmds[0].clone());
    assert!(matches!(&e[..], [Effect::Stop { .. }]), "the half-started incarnation is stopped: {e:?}");
    log.settle(&v, 10_001);
    assert_ne!(log.child("a").node, first, "avoids the node that did not start it");
}

#[test]
fn reconcile_stops_stale_orphans_and_duplicates_and_restarts_the_missing() {
    let mut log = Log::new();
    sup(
        &mut log,
        Strategy::OneForOne,
        Intensity::default(),
        &[child("a", RestartType::Permanent, &["openai"]), child("b", RestartType::Permanent, &["openai"])],
    );
    let v = view(&[node("c2", "cold", &["openai"])]);
    log.settle(&v, 0);
    let (ga, gb) = (log.child("a").generation, log.child("b").generation);
    log.ok(Command::Running { sup: "s".into(), child: "b".into(), generation: gb, pid: "<c2.1.2>".into() });
    let reports = vec![
        Report { sup: "s".into(), child: "a".into(), generation: ga, pid: "<c2.1.1>".into() },
        Report { sup: "s".into(), child: "a".into(), generation: ga - 1, pid: "<c2.1.0>".into() },
        Report { sup: "gone".into(), child: "z".into(), generation: 1, pid: "<c2.1.9>".into() },
    ];
    let r = reconcile(&log.state, "c2", &reports, 7);
    assert_eq!(r.commands.len(), 2, "{r:?}");
    assert!(matches!(&r.commands[0], Command::Running { child, generation, .. } if child == "a" && *generation == ga));
    assert!(
        matches!(&r.commands[1], Command::Exited { child, generation, .. } if child == "b" && *generation == gb),
        "b is missing from c2"
    );
    let stopped: Vec<(&str, u64)> = r
        .stops
        .iter()
        .map(|e| match e {
            Effect::Stop { child, generation, .. } => (child.as_str(), *generation),
            Effect::Start { .. } => panic!("reconcile never starts"),
        })
        .collect();
    assert_eq!(stopped, vec![("a", ga - 1), ("z", 1)]);
}

#[test]
fn state_round_trips_through_serde_for_snapshots() {
    let mut log = Log::new();
    sup(&mut log, Strategy::RestForOne, Intensity::default(), &[child("a", RestartType::Permanent, &["openai"])]);
    log.settle(&cluster(), 0);
    log.confirm_all();
    crash(&mut log, "a", 3);
    let json = serde_json::to_string(&log.state).expect("serializes");
    let back: ClusterState = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, log.state);
}

#[test]
fn bad_commands_are_rejected_and_change_nothing() {
    let mut log = Log::new();
    sup(&mut log, Strategy::OneForOne, Intensity::default(), &[child("a", RestartType::Permanent, &[])]);
    let before = log.state.sups.clone();
    assert!(matches!(
        log.apply(Command::CreateSupervisor(SupSpec {
            name: "s".into(),
            strategy: Strategy::OneForOne,
            intensity: Intensity::default()
        })),
        Err(Rejected::Exists(_))
    ));
    assert!(matches!(
        log.apply(Command::AddChild { sup: "s".into(), spec: child("a", RestartType::Permanent, &[]) }),
        Err(Rejected::Exists(_))
    ));
    assert!(matches!(
        log.apply(Command::AddChild { sup: "nope".into(), spec: child("b", RestartType::Permanent, &[]) }),
        Err(Rejected::Unknown(_))
    ));
    let mut big = child("b", RestartType::Permanent, &[]);
    big.args = "x".repeat(MAX_ARGS + 1);
    assert!(matches!(log.apply(Command::AddChild { sup: "s".into(), spec: big }), Err(Rejected::Invalid(_))));
    assert!(matches!(
        log.apply(Command::Running { sup: "s".into(), child: "a".into(), generation: 0, pid: "<p.1.1>".into() }),
        Err(Rejected::Stale { .. })
    ));
    assert_eq!(log.state.sups, before);
    // Re-delivered entries are ignored.
    let idx = log.state.last_applied;
    assert_eq!(log.state.apply(idx, &Command::RemoveSupervisor { sup: "s".into() }), Ok(vec![]));
    assert!(log.state.sups.contains_key("s"));
}

/// A random fault, for the property test.
#[derive(Debug, Clone)]
enum Fault {
    Crash(usize),
    NodeDown(usize),
    NodeUp(usize),
    ProviderDown(usize),
    ProviderUp(usize),
    Reconcile(usize),
    /// Orders to this node are held back from now on (a slow or partitioned link) ...
    Slow(usize),
    /// ... until they are delivered, late and all at once (reversed: overtaken).
    Deliver(usize, bool),
    Tick,
}

fn fault() -> impl proptest::strategy::Strategy<Value = Fault> {
    prop_oneof![
        (0usize..4).prop_map(Fault::Crash),
        (0usize..4).prop_map(Fault::NodeDown),
        (0usize..4).prop_map(Fault::NodeUp),
        (0usize..4).prop_map(Fault::ProviderDown),
        (0usize..4).prop_map(Fault::ProviderUp),
        (0usize..4).prop_map(Fault::Reconcile),
        (0usize..4).prop_map(Fault::Slow),
        (0usize..4, any::<bool>()).prop_map(|(i, r)| Fault::Deliver(i, r)),
        Just(Fault::Tick),
    ]
}

/// The simulated cold nodes: what each runs, through its fence.
struct Nodes {
    fences: BTreeMap<String, Fence>,
    stale_accepted: u64,
    /// Nodes whose orders are held back, and the orders held.
    held: BTreeMap<String, Vec<Effect>>,
}

impl Nodes {
    fn execute(&mut self, effects: &[Effect], up: &View, committed: &ClusterState) {
        for e in effects {
            let (Effect::Start { node, .. } | Effect::Stop { node, .. }) = e;
            if let Some(q) = self.held.get_mut(node) {
                q.push(e.clone());
                continue;
            }
            if !up.contains_key(node) {
                continue; // lost on the way
            }
            self.deliver(e, committed);
        }
    }

    fn deliver(&mut self, e: &Effect, committed: &ClusterState) {
        {
            match e {
                Effect::Start { node, sup, child, generation } => {
                    let f = self.fences.entry(node.clone()).or_default();
                    let key = (sup.clone(), child.clone());
                    let seen = f.newest(&key).unwrap_or(0);
                    if let StartVerdict::Start { .. } = f.on_start(&key, *generation) {
                        if *generation < seen {
                            self.stale_accepted += 1;
                        }
                    }
                    let _ = committed;
                }
                Effect::Stop { node, sup, child, generation } => {
                    if let Some(f) = self.fences.get_mut(node) {
                        let _ = f.on_stop(&(sup.clone(), child.clone()), *generation);
                    }
                }
            }
        }
    }

    /// Delivers what was held for `node`, late: in order, or reversed (orders of an old
    /// leader overtaken by a new one's).
    fn release(&mut self, node: &str, reversed: bool, committed: &ClusterState) {
        let mut q = self.held.remove(node).unwrap_or_default();
        if reversed {
            q.reverse();
        }
        for e in q {
            self.deliver(&e, committed);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// G6 under random crashes, node losses and returns, provider flaps and reconciles: after
    /// the leader settles, every child of the active supervisor is running (or pending when
    /// nothing fits) on a node that is up and serves its provider, exactly one effective
    /// incarnation of each runs (counting incarnations on nodes that are up), no stale start
    /// is accepted, and generations only grow.
    #[test]
    fn prop_no_lost_and_no_duplicate_children(faults in proptest::collection::vec(fault(), 1..40), one_for_all in any::<bool>()) {
        let mut log = Log::new();
        let strategy = if one_for_all { Strategy::OneForAll } else { Strategy::OneForOne };
        let kids = vec![
            child("a", RestartType::Permanent, &["anthropic", "openai"]),
            child("b", RestartType::Permanent, &["openai"]),
            child("c", RestartType::Permanent, &[]),
        ];
        sup(&mut log, strategy, Intensity::new(1_000_000, 1), &kids);
        let all = [node("c1", "cold", &["anthropic"]), node("c2", "cold", &["openai"]), node("c3", "cold", &["openai", "anthropic"]), node("c4", "cold", &["local"])];
        let mut up = view(&all);
        let mut nodes = Nodes { fences: BTreeMap::new(), stale_accepted: 0, held: BTreeMap::new() };
        let mut last_gen: BTreeMap<String, u64> = BTreeMap::new();
        let mut now = 0u64;
        for f in faults {
            now += 10;
            match f {
                Fault::Crash(i) => {
                    let id = ["a", "b", "c", "a"][i];
                    let c = log.child(id).clone();
                    if c.phase == Phase::Running {
                        let e = crash(&mut log, id, now);
                        if let Some(n) = &c.node {
                            if let Some(fe) = nodes.fences.get_mut(n) { fe.on_exit(&("s".into(), id.into()), c.generation); }
                        }
                        nodes.execute(&e, &up, &log.state);
                    }
                }
                Fault::NodeDown(i) => {
                    up.remove(&all[i].name);
                }
                Fault::NodeUp(i) => {
                    up.insert(all[i].name.clone(), up.get(&all[i].name).cloned().unwrap_or_else(|| all[i].clone()));
                }
                Fault::ProviderDown(i) => {
                    if let Some(n) = up.get_mut(&all[i].name) { n.unavailable = n.providers.clone(); }
                }
                Fault::ProviderUp(i) => {
                    if let Some(n) = up.get_mut(&all[i].name) { n.unavailable.clear(); }
                }
                Fault::Reconcile(i) => {
                    let name = &all[i].name;
                    if up.contains_key(name) {
                        let reports: Vec<Report> = nodes.fences.get(name).map(|fe| fe.running()).unwrap_or_default().into_iter()
                            .map(|((s, c), g)| Report { sup: s, child: c, generation: g, pid: format!("<{name}.1.{g}>") }).collect();
                        let r = reconcile(&log.state, name, &reports, now);
                        nodes.execute(&r.stops, &up, &log.state);
                        for c in r.commands {
                            if let Ok(e) = log.apply(c) { nodes.execute(&e, &up, &log.state); }
                        }
                    }
                }
                Fault::Slow(i) => {
                    nodes.held.entry(all[i].name.clone()).or_default();
                }
                Fault::Deliver(i, reversed) => nodes.release(&all[i].name, reversed, &log.state),
                // Long enough for overdue starts to time out.
                Fault::Tick => now += PlanConfig::default().start_timeout_ms + 1,
            }
            // The leader settles; nodes execute; started children report running.
            for _ in 0..8 {
                let cmds = plan(&log.state, &up, now, &PlanConfig::default());
                if cmds.is_empty() { break; }
                for c in cmds {
                    if let Ok(e) = log.apply(c) { nodes.execute(&e, &up, &log.state); }
                }
                let starting: Vec<(String, ChildState)> = log.state.sups["s"].children.iter().filter(|(_, c)| c.phase == Phase::Starting).map(|(k, c)| (k.clone(), c.clone())).collect();
                for (id, c) in starting {
                    let n = c.node.clone().unwrap_or_default();
                    let runs = nodes.fences.get(&n).is_some_and(|fe| fe.running().contains(&(("s".into(), id.clone()), c.generation)));
                    if runs {
                        let _ = log.apply(Command::Running { sup: "s".into(), child: id, generation: c.generation, pid: format!("<{n}.1.{}>", c.generation) });
                    }
                }
            }
            prop_assert_eq!(nodes.stale_accepted, 0, "a stale start was accepted");
            for (id, c) in &log.state.sups["s"].children {
                let prev = last_gen.insert(id.clone(), c.generation).unwrap_or(0);
                prop_assert!(c.generation >= prev, "generations only grow");
                match &c.phase {
                    Phase::Running => {
                        let n = c.node.as_deref().unwrap_or("");
                        prop_assert!(up.contains_key(n), "{} runs on a node that is down", id);
                        if let Some(p) = &c.provider { prop_assert!(up[n].serves(p), "{} on {} without {}", id, n, p); }
                        // Exactly one effective incarnation among the nodes that are up.
                        let live: usize = up.keys().map(|n| nodes.fences.get(n).map_or(0, |fe| fe.running().iter().filter(|((_, cc), _)| cc == id).count())).sum();
                        prop_assert!(live >= 1, "{} is not running anywhere", id);
                        let effective = up.keys().filter(|n| nodes.fences.get(*n).is_some_and(|fe| fe.running().contains(&(("s".into(), id.clone()), c.generation)))).count();
                        prop_assert_eq!(effective, 1, "{} must have exactly one incarnation of its committed generation", id);
                    }
                    // Being (re)started: its order may be held back on the way to its node (it
                    // times out and goes elsewhere if it never arrives).
                    Phase::Pending(_) | Phase::Starting => {}
                    other => prop_assert!(false, "{} is {:?} after settling", id, other),
                }
            }
        }
        // Heal everything: every node up, every held order delivered, every node reconciled,
        // the leader settled. Then exactly one incarnation of each running child remains,
        // anywhere, and it is the committed one.
        for n in &all {
            up.entry(n.name.clone()).or_insert_with(|| n.clone()).unavailable.clear();
        }
        for n in &all {
            nodes.release(&n.name, false, &log.state);
        }
        for _ in 0..4 {
            now += PlanConfig::default().start_timeout_ms + 1;
            for n in &all {
                let reports: Vec<Report> = nodes.fences.get(&n.name).map(|fe| fe.running()).unwrap_or_default().into_iter()
                    .map(|((s, c), g)| Report { sup: s, child: c, generation: g, pid: format!("<{}.1.{g}>", n.name) }).collect();
                let r = reconcile(&log.state, &n.name, &reports, now);
                nodes.execute(&r.stops, &up, &log.state);
                for c in r.commands {
                    if let Ok(e) = log.apply(c) { nodes.execute(&e, &up, &log.state); }
                }
            }
            let cmds = plan(&log.state, &up, now, &PlanConfig::default());
            for c in cmds {
                if let Ok(e) = log.apply(c) { nodes.execute(&e, &up, &log.state); }
            }
        }
        prop_assert_eq!(nodes.stale_accepted, 0, "a stale start was accepted");
        for (id, c) in &log.state.sups["s"].children {
            let all_incarnations: Vec<(String, u64)> = nodes.fences.iter()
                .flat_map(|(n, fe)| fe.running().into_iter().filter(|((_, cc), _)| cc == id).map(move |(_, g)| (n.clone(), g)))
                .collect();
            match c.phase {
                Phase::Running => prop_assert_eq!(all_incarnations, vec![(c.node.clone().unwrap_or_default(), c.generation)], "{}", id),
                Phase::Starting => prop_assert!(all_incarnations.len() <= 1, "{} starting: {:?}", id, all_incarnations),
                _ => prop_assert!(all_incarnations.is_empty(), "{} is {:?} but runs: {:?}", id, c.phase, all_incarnations),
            }
        }
    }
}

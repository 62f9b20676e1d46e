//! Cluster supervision end to end, in one process on loopback (real QUIC + mTLS, real sled):
//! a hot node's Raft-backed supervisor places a child on a cold node of its provider, restarts
//! it in place when it crashes, and moves it to another node of the same provider when its node
//! is lost — with exactly one incarnation at every end (G5, G6).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use soma::csup::{Children, ClusterSupervisor, CsupConfig};
use soma::dist::fault::NetFault;
use soma::membership::{Membership, MembershipConfig, Role, Seed};
use soma::raft::node::{RaftConfig, RaftNode};
use soma::{Node, Pid};
use soma_tests::cluster::TestCa;
use soma_tests::within;
use supervisor::cluster::placement::PlacementSpec;
use supervisor::cluster::{ChildSpec, Command, Phase, SupSpec};
use supervisor::{Intensity, RestartType, Strategy};

fn seed_of(node: &Node) -> Seed {
    Seed { name: node.id().name().to_string(), host: node.local_addr().expect("distributed").to_string() }
}

struct Member {
    node: Node,
    membership: Membership,
    children: Children,
    /// Cuts this node off the network (every datagram dropped, both ways).
    fault: Arc<NetFault>,
}

async fn member(ca: &TestCa, name: &str, role: Role, providers: &[&str], seed: Option<&Node>) -> Member {
    member_with(ca, name, role, providers, seed, |_, _| {}).await
}

/// [`member`], with its dist and membership configurations adjusted by `tweak`.
async fn member_with(
    ca: &TestCa,
    name: &str,
    role: Role,
    providers: &[&str],
    seed: Option<&Node>,
    tweak: impl FnOnce(&mut soma::DistConfig, &mut MembershipConfig),
) -> Member {
    let fault = NetFault::new();
    let mut dist = soma::DistConfig { fault: Some(Arc::clone(&fault)), ..ca.config(name) };
    let mut cfg = MembershipConfig {
        role,
        providers: providers.iter().map(|p| p.to_string()).collect(),
        seeds: seed.map(|s| vec![seed_of(s)]).unwrap_or_default(),
        ..MembershipConfig::default()
    };
    tweak(&mut dist, &mut cfg);
    let node = ca.node_with(name, 1, dist);
    soma::demo::register(&node).expect("demo behaviours");
    let membership = within("join", Membership::join(&node, cfg)).await.expect("join");
    let children = Children::install(&node);
    Member { node, membership, children, fault }
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn running_on(raft: &RaftNode) -> Option<(String, u64, Pid)> {
    running(raft, "w1")
}

fn running(raft: &RaftNode, id: &str) -> Option<(String, u64, Pid)> {
    raft.read(|s| {
        let c = s.child("agents", id)?;
        if c.phase != Phase::Running {
            return None;
        }
        Some((c.node.clone()?, c.generation, c.pid.as_ref()?.parse().ok()?))
    })
}

/// A permanent child `id` running `behaviour` (JSON `args`) on a cold node of `providers`, in
/// preference order.
fn cold_child(id: &str, behaviour: &str, args: &str, providers: &[&str]) -> ChildSpec {
    ChildSpec {
        id: id.into(),
        behaviour: behaviour.into(),
        args: args.into(),
        restart: RestartType::Permanent,
        placement: PlacementSpec {
            role: Some("cold".into()),
            providers: providers.iter().map(|p| p.to_string()).collect(),
            ..PlacementSpec::default()
        },
    }
}

/// Raft (a group of one) and the cluster supervisor on `hot`, with a supervisor `agents`.
async fn supervise(hot: &Member, dir: &PathBuf) -> (RaftNode, ClusterSupervisor) {
    let raft = raft_leader(hot, dir).await;
    let sup = supervisor(hot, &raft, CsupConfig::default()).await;
    (raft, sup)
}

/// Raft on `hot` (a group of one, its store in a fresh `dir`), once it leads.
async fn raft_leader(hot: &Member, dir: &PathBuf) -> RaftNode {
    let _ = std::fs::remove_dir_all(dir);
    let raft = RaftNode::start(&hot.node, &hot.membership, RaftConfig::new(dir.clone(), 1)).await.expect("raft");
    until("a leader", || raft.is_leader()).await;
    raft
}

/// The cluster supervisor on `hot`, with a supervisor `agents`.
async fn supervisor(hot: &Member, raft: &RaftNode, config: CsupConfig) -> ClusterSupervisor {
    let sup = ClusterSupervisor::start_with(&hot.node, &hot.membership, raft, &hot.children, config).expect("sup");
    sup.propose(Command::CreateSupervisor(SupSpec {
        name: "agents".into(),
        strategy: Strategy::OneForOne,
        intensity: Intensity::new(10, 10_000),
    }))
    .await
    .expect("create");
    sup
}

/// Supervision on `hot` with one child, `w1` (a `demo.counter` pinned to `openai`), running:
/// its node, generation and PID.
async fn supervise_w1(hot: &Member, dir: &PathBuf) -> (RaftNode, ClusterSupervisor, (String, u64, Pid)) {
    let (raft, sup) = supervise(hot, dir).await;
    let spec = cold_child("w1", "demo.counter", "7", &["openai"]);
    sup.propose(Command::AddChild { sup: "agents".into(), spec }).await.expect("add");
    until("w1 running on an openai node", || running_on(&raft).is_some()).await;
    let running = running_on(&raft).expect("running");
    (raft, sup, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g6_a_supervised_child_is_restarted_in_place_and_moved_when_its_node_is_lost() {
    let ca = TestCa::new();
    let hot = member(&ca, "hot-1", Role::Hot, &[], None).await;
    let cold_a = member(&ca, "cold-a", Role::Cold, &["openai"], Some(&hot.node)).await;
    let cold_b = member(&ca, "cold-b", Role::Cold, &["openai"], Some(&hot.node)).await;
    let cold_c = member(&ca, "cold-c", Role::Cold, &["anthropic"], Some(&hot.node)).await;
    until("membership converged", || hot.membership.len() == 4).await;
    let dir: PathBuf = std::env::temp_dir().join(format!("soma-csup-{}", std::process::id()));
    let (raft, _sup, (node1, gen1, pid1)) = supervise_w1(&hot, &dir).await;
    assert!(node1 == "cold-a" || node1 == "cold-b", "placed by provider: {node1}");
    let colds = [&cold_a, &cold_b, &cold_c];
    let host = colds.iter().find(|m| *m.node.id().name() == *node1).expect("its node");
    assert!(host.node.is_alive(pid1));

    // A crash: restarted in place, new generation, new PID; the old one is gone.
    host.node.kill(pid1);
    until("w1 restarted", || running_on(&raft).is_some_and(|(_, g, _)| g > gen1)).await;
    let (node2, gen2, pid2) = running_on(&raft).expect("running");
    assert_eq!(node2, node1, "a crash restarts on the same healthy node");
    assert_ne!(pid2, pid1);

    // Its node is lost: the child moves to the other openai node, never to the anthropic one.
    host.membership.stop().await;
    host.node.shutdown(Duration::from_secs(1)).await;
    until("w1 moved", || running_on(&raft).is_some_and(|(n, g, _)| g > gen2 && n != node1)).await;
    let (node3, _, pid3) = running_on(&raft).expect("running");
    let other = if node1 == "cold-a" { "cold-b" } else { "cold-a" };
    assert_eq!(node3, other);
    let survivor = colds.iter().find(|m| *m.node.id().name() == *other).expect("other");
    assert!(survivor.node.is_alive(pid3));
    // Exactly one incarnation runs, and no stale start was accepted anywhere.
    let incarnations: usize = [&cold_c, survivor].iter().map(|m| m.children.running().len()).sum();
    assert_eq!(incarnations, 1);
    assert_eq!(survivor.children.refused() + cold_c.children.refused(), 0);
    raft.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g6_an_unavailable_provider_moves_children_to_the_next_preference_and_a_missing_one_waits() {
    let ca = TestCa::new();
    let hot = member(&ca, "hot-1", Role::Hot, &[], None).await;
    let cold_a = member(&ca, "cold-a", Role::Cold, &["openai"], Some(&hot.node)).await;
    let cold_c = member(&ca, "cold-c", Role::Cold, &["anthropic"], Some(&hot.node)).await;
    until("membership converged", || hot.membership.len() == 3).await;
    let dir: PathBuf = std::env::temp_dir().join(format!("soma-csup-prov-{}", std::process::id()));
    let (raft, sup) = supervise(&hot, &dir).await;
    let child = |id: &str, providers: &[&str]| cold_child(id, "demo.echo", "null", providers);
    sup.propose(Command::AddChild { sup: "agents".into(), spec: child("w1", &["anthropic", "openai"]) })
        .await
        .expect("add");
    sup.propose(Command::AddChild { sup: "agents".into(), spec: child("w2", &["mistral"]) }).await.expect("add");
    until("w1 on the anthropic node", || running_on(&raft).is_some_and(|(n, _, _)| n == "cold-c")).await;
    let pending = |id: &str| raft.read(|s| matches!(s.child("agents", id).map(|c| &c.phase), Some(Phase::Pending(_))));
    until("w2 pending: nobody serves mistral", || pending("w2")).await;

    // anthropic becomes unavailable on cold-c: w1 moves to the next preference, openai.
    cold_c.membership.set_key(soma::membership::view::keys::PROVIDERS_DOWN, "anthropic").await;
    until("w1 on the openai node", || running_on(&raft).is_some_and(|(n, _, _)| n == "cold-a")).await;
    let provider = raft.read(|s| s.child("agents", "w1").and_then(|c| c.provider.clone()));
    assert_eq!(provider.as_deref(), Some("openai"));
    until("the anthropic incarnation is stopped", || cold_c.children.running().is_empty()).await;
    assert_eq!(cold_a.children.running().len(), 1);

    // A node serving mistral joins: w2 starts there.
    let cold_m = member(&ca, "cold-m", Role::Cold, &["mistral"], Some(&hot.node)).await;
    until("w2 running on the mistral node", || cold_m.children.running().len() == 1).await;
    assert!(!pending("w2"));
    raft.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// G6 after a partition: the node running a child is cut off the network (every datagram
/// dropped) for longer than the leader's order timeout, so the stop the leader sends it is
/// lost. The child is restarted on the other node of its provider meanwhile, while the old
/// incarnation keeps running on the cut node. When the node is back (the same incarnation: it
/// never stopped), the leader lists its children and stops the stale one: exactly one
/// incarnation remains, the committed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g6_a_node_back_from_a_partition_has_its_stale_incarnation_stopped() {
    let ca = TestCa::new();
    let hot = member(&ca, "hot-1", Role::Hot, &[], None).await;
    let cold_a = member(&ca, "cold-a", Role::Cold, &["openai"], Some(&hot.node)).await;
    let cold_b = member(&ca, "cold-b", Role::Cold, &["openai"], Some(&hot.node)).await;
    until("membership converged", || hot.membership.len() == 3).await;
    let dir: PathBuf = std::env::temp_dir().join(format!("soma-csup-cut-{}", std::process::id()));
    let (raft, _sup, (node1, gen1, pid1)) = supervise_w1(&hot, &dir).await;
    let (cut, other) = if node1 == "cold-a" { (&cold_a, &cold_b) } else { (&cold_b, &cold_a) };

    cut.fault.cut();
    until("w1 restarted on the other node", || running_on(&raft).is_some_and(|(n, g, _)| g > gen1 && n != node1)).await;
    let (_, _, pid2) = running_on(&raft).expect("running");
    assert!(other.node.is_alive(pid2));
    // The cut outlasts the leader's order timeout, so its stop order to the cut node is lost
    // (the length of the fault, not a wait for something).
    tokio::time::sleep(soma::csup::ORDER_TIMEOUT + Duration::from_secs(1)).await;
    assert!(cut.node.is_alive(pid1), "the stale incarnation still runs on the cut node");
    assert_eq!(cut.children.running().len() + other.children.running().len(), 2, "two incarnations during the cut");

    cut.fault.heal();
    until("the stale incarnation is stopped", || !cut.node.is_alive(pid1) && cut.children.running().is_empty()).await;
    assert!(other.node.is_alive(pid2), "the committed incarnation runs on");
    assert_eq!(running_on(&raft).map(|(_, _, p)| p), Some(pid2));
    assert_eq!(cut.children.running().len() + other.children.running().len(), 1, "exactly one incarnation");
    assert_eq!(cut.children.refused() + other.children.refused(), 0, "no stale start was accepted");
    raft.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Long enough that nothing in a test outlasts it: a connection gone silent stays up, an
/// order to a silent node stays unanswered, and a silent node is never declared down.
const FOREVER: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g6_a_new_leader_places_children_while_a_node_it_asked_does_not_answer() {
    // A node that went silent with the old leader, and is not seen down yet: its connection
    // stays up and the new leader's list to it stays unanswered until the fault is healed.
    let patient = |dist: &mut soma::DistConfig, m: &mut MembershipConfig| {
        dist.idle_timeout = FOREVER;
        m.phi_threshold = 1e12;
    };
    let ca = TestCa::new();
    let hot = member_with(&ca, "hot-1", Role::Hot, &[], None, patient).await;
    let cold_a = member_with(&ca, "cold-a", Role::Cold, &["openai"], Some(&hot.node), patient).await;
    let cold_b = member_with(&ca, "cold-b", Role::Cold, &["openai", "anthropic"], Some(&hot.node), patient).await;
    until("membership converged", || hot.membership.len() == 3).await;
    let dir: PathBuf = std::env::temp_dir().join(format!("soma-csup-unheard-{}", std::process::id()));
    let raft = raft_leader(&hot, &dir).await;

    cold_b.fault.cut();
    let sup = supervisor(&hot, &raft, CsupConfig { order_timeout: FOREVER }).await;
    // w2 can only go to cold-b; w1 goes to cold-a (of two equally loaded openai nodes, the
    // first by name) whether or not cold-b answered.
    let w2 = cold_child("w2", "demo.counter", "1", &["anthropic"]);
    sup.propose(Command::AddChild { sup: "agents".into(), spec: w2 }).await.expect("add w2");
    let w1 = cold_child("w1", "demo.counter", "7", &["openai"]);
    sup.propose(Command::AddChild { sup: "agents".into(), spec: w1 }).await.expect("add w1");

    // Planning did not wait for cold-b's answer (it never comes while cut) ...
    until("w1 running", || running(&raft, "w1").is_some()).await;
    let (node1, _, pid1) = running(&raft, "w1").expect("running");
    assert_eq!(node1, "cold-a");
    assert!(cold_a.node.is_alive(pid1));
    // ... and w2, considered in the same rounds, waits for cold-b, neither placed nor pending.
    let w2_phase = raft.read(|s| s.child("agents", "w2").map(|c| c.phase.clone()));
    assert_eq!(w2_phase, Some(Phase::Waiting), "nothing is placed on a node that has not answered");
    assert!(hot.membership.members().iter().any(|m| m.name == "cold-b"), "cold-b is still in the view");
    assert!(cold_b.children.running().is_empty());

    // Healed, cold-b's answer arrives (the same connection, the same request) and w2 starts there.
    cold_b.fault.heal();
    until("w2 running on cold-b", || running(&raft, "w2").is_some_and(|(n, _, _)| n == "cold-b")).await;
    assert_eq!(running(&raft, "w1").map(|(n, _, p)| (n, p)), Some(("cold-a".to_owned(), pid1)), "w1 untouched");

    sup.stop();
    raft.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

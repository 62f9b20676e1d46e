//! Raft among hot nodes, in one process on loopback (real QUIC + mTLS, real sled on disk): the
//! group forms from gossip membership with no manual step, replicates supervision commands to
//! every hot node, survives the loss of its leader, takes back a node restarted on its data or
//! with its data wiped, and a node cut off the network and healed unseats no leader (the
//! pre-vote, G5).

use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use soma::dist::fault::NetFault;
use soma::membership::{Membership, MembershipConfig, Role, Seed};
use soma::raft::node::{RaftConfig, RaftNode};
use soma::Node;
use soma_tests::cluster::TestCa;
use soma_tests::within;
use supervisor::cluster::{Command, SupSpec};

fn seed_of(node: &Node) -> Seed {
    Seed { name: node.id().name().to_string(), host: node.local_addr().expect("distributed").to_string() }
}

struct Hot {
    node: Node,
    membership: Membership,
    raft: RaftNode,
    /// Cuts this node off the network (every datagram dropped, both ways).
    fault: Arc<NetFault>,
}

fn dir(test: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("soma-raft-{test}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

async fn hot_nodes(ca: &TestCa, test: &str, names: &[&str]) -> Vec<Hot> {
    hot_nodes_with(ca, test, names, |c| c).await
}

/// [`hot_nodes`], each Raft configured by `tweak`.
async fn hot_nodes_with(ca: &TestCa, test: &str, names: &[&str], tweak: fn(RaftConfig) -> RaftConfig) -> Vec<Hot> {
    let mut out: Vec<Hot> = Vec::new();
    for name in names {
        let fault = NetFault::new();
        let node = ca.node_with(name, 1, soma::DistConfig { fault: Some(Arc::clone(&fault)), ..ca.config(name) });
        let seeds = out.first().map(|h| vec![seed_of(&h.node)]).unwrap_or_default();
        let cfg = MembershipConfig { role: Role::Hot, seeds, ..MembershipConfig::default() };
        let membership = within("join", Membership::join(&node, cfg)).await.expect("join");
        let raft = RaftNode::start(&node, &membership, tweak(RaftConfig::new(dir(test, name), names.len())))
            .await
            .expect("raft starts");
        out.push(Hot { node, membership, raft, fault });
    }
    out
}

/// Polls until `cond` holds (with a deadline well above Raft's election timeouts).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn leader_of(nodes: &[&Hot]) -> Option<usize> {
    let leaders: Vec<usize> = nodes.iter().enumerate().filter(|(_, h)| h.raft.is_leader()).map(|(i, _)| i).collect();
    (leaders.len() == 1).then(|| leaders[0])
}

fn create(name: &str) -> Command {
    Command::CreateSupervisor(SupSpec {
        name: name.into(),
        strategy: supervisor::Strategy::OneForOne,
        intensity: supervisor::Intensity::default(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_hot_nodes_form_a_group_replicate_and_survive_the_leaders_loss() {
    let ca = TestCa::new();
    let hot = hot_nodes(&ca, "form", &["hot-1", "hot-2", "hot-3"]).await;
    let all: Vec<&Hot> = hot.iter().collect();
    until("a leader and three voters", || {
        leader_of(&all).is_some() && all.iter().all(|h| h.raft.status().voters.len() == 3)
    })
    .await;
    let l = leader_of(&all).expect("leader");
    let applied = within("propose", all[l].raft.propose(create("s1"))).await.expect("committed");
    assert_eq!(applied.result, Ok(vec![]));
    until("replicated to every hot node", || all.iter().all(|h| h.raft.read(|s| s.sups.contains_key("s1")))).await;
    // A follower cannot propose: it names the leader.
    let f = (l + 1) % 3;
    match all[f].raft.propose(create("s2")).await {
        Err(soma::raft::node::ProposeError::NotLeader(Some(name))) => assert_eq!(name, all[l].raft.status().name),
        other => panic!("a follower must refuse with the leader's name: {other:?}"),
    }

    // The leader dies (its Raft, its gossip, its node).
    all[l].raft.shutdown().await;
    all[l].membership.stop().await;
    all[l].node.shutdown(Duration::from_secs(1)).await;
    let rest: Vec<&Hot> = all.iter().enumerate().filter(|(i, _)| *i != l).map(|(_, h)| *h).collect();
    until("a new leader among the other two", || leader_of(&rest).is_some()).await;
    let nl = leader_of(&rest).expect("new leader");
    within("propose to the new leader", rest[nl].raft.propose(create("s2"))).await.expect("committed");
    until("both survivors have everything", || {
        rest.iter().all(|h| h.raft.read(|s| s.sups.contains_key("s1") && s.sups.contains_key("s2")))
    })
    .await;
    for h in &rest {
        h.raft.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_node_that_joins_later_is_added_as_a_voter() {
    let ca = TestCa::new();
    let mut hot = hot_nodes(&ca, "grow", &["hot-1", "hot-2"]).await;
    {
        let all: Vec<&Hot> = hot.iter().collect();
        until("a group of two", || leader_of(&all).is_some() && all.iter().all(|h| h.raft.status().voters.len() == 2))
            .await;
    }
    let node = ca.node("hot-3", 1);
    let cfg = MembershipConfig { role: Role::Hot, seeds: vec![seed_of(&hot[0].node)], ..MembershipConfig::default() };
    let membership = within("join", Membership::join(&node, cfg)).await.expect("join");
    let raft = RaftNode::start(&node, &membership, RaftConfig::new(dir("grow", "hot-3"), 2)).await.expect("raft");
    hot.push(Hot { node, membership, raft, fault: NetFault::new() });
    let all: Vec<&Hot> = hot.iter().collect();
    until("three voters", || {
        leader_of(&all).is_some_and(|l| {
            let s = all[l].raft.status();
            s.voters.len() == 3 && s.learners.is_empty()
        })
    })
    .await;
    for h in &all {
        h.raft.shutdown().await;
    }
}

/// The voter ids of the group, as `h` sees it.
fn voter_ids(h: &Hot) -> std::collections::BTreeSet<u64> {
    h.raft.raft().metrics().borrow().membership_config.voter_ids().collect()
}

/// A follower of a group of three goes down (Raft, gossip and node), the group commits an
/// entry without it, and it comes back as a new incarnation of the same name — on its own
/// data directory, or (`wipe`) on an emptied one. Returns the group and the returned node's
/// Raft id before and after.
async fn restart_a_follower(test: &str, wipe: bool) -> (Vec<Hot>, u64, u64) {
    let ca = TestCa::new();
    let mut hot = hot_nodes(&ca, test, &["hot-1", "hot-2", "hot-3"]).await;
    let before = {
        let all: Vec<&Hot> = hot.iter().collect();
        until("a group of three", || {
            leader_of(&all).is_some() && all.iter().all(|h| h.raft.status().voters.len() == 3)
        })
        .await;
        let l = leader_of(&all).expect("leader");
        let before = within("propose", all[l].raft.propose(create("before"))).await.expect("committed").index;
        until("replicated to every hot node", || all.iter().all(|h| h.raft.read(|s| s.sups.contains_key("before"))))
            .await;
        before
    };
    let l = leader_of(&hot.iter().collect::<Vec<_>>()).expect("leader");
    let f = (l + 1) % 3;
    let gone = hot.remove(f);
    let name = gone.node.id().name().to_string();
    let old_id = gone.raft.status().id;
    assert_eq!(gone.raft.status().id_origin, "new", "a first start draws its id");
    gone.raft.shutdown().await;
    gone.membership.stop().await;
    gone.node.shutdown(Duration::from_secs(1)).await;
    drop(gone);
    // The group goes on without it.
    let rest: Vec<&Hot> = hot.iter().collect();
    until("a leader among the two", || leader_of(&rest).is_some()).await;
    let l = leader_of(&rest).expect("leader");
    within("propose while it is down", rest[l].raft.propose(create("during"))).await.expect("committed");

    // It restarts as a new incarnation of the same name (sled's lock is released once the old
    // store is dropped: retry the open briefly).
    let data = std::env::temp_dir().join(format!("soma-raft-{test}-{}-{name}", std::process::id()));
    let node = ca.node(&name, 2);
    let cfg = MembershipConfig { role: Role::Hot, seeds: vec![seed_of(&hot[0].node)], ..MembershipConfig::default() };
    let membership = within("join", Membership::join(&node, cfg)).await.expect("join");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let raft = loop {
        if wipe {
            let _ = std::fs::remove_dir_all(&data);
        }
        match RaftNode::start(&node, &membership, RaftConfig::new(data.clone(), 3)).await {
            Ok(r) => break r,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "cannot reopen its store: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let new_id = raft.status().id;
    // It has what it had (index `before`) and what it missed.
    until("it has everything", || raft.read(|s| s.sups.contains_key("before") && s.sups.contains_key("during"))).await;
    assert!(raft.read(|s| s.last_applied) >= before, "the state machine is at or past the entry it had");
    hot.push(Hot { node, membership, raft, fault: NetFault::new() });
    (hot, old_id, new_id)
}

/// G5: a follower restarted on its own data comes back as the same Raft member — its id is
/// read from its own store (`id_origin` "stored"), which proves it used its own disk — and
/// catches up on what it missed; the group is the same three voters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_a_hot_node_restarted_with_its_data_rejoins_and_catches_up() {
    let (hot, old_id, new_id) = restart_a_follower("restart", false).await;
    let back = hot.last().expect("the restarted node");
    assert_eq!(new_id, old_id, "the same member");
    assert_eq!(back.raft.status().id_origin, "stored", "its id came from its own disk");
    let all: Vec<&Hot> = hot.iter().collect();
    until("still three voters, one leader, the same ids", || {
        leader_of(&all).is_some_and(|l| all[l].raft.status().voters.len() == 3 && voter_ids(all[l]).contains(&old_id))
    })
    .await;
    for h in &all {
        h.raft.shutdown().await;
    }
}

/// G5: a follower whose data was wiped comes back as a new Raft member (a new id, which never
/// voted): the leader adds it and removes its old id in the same change, so the group is
/// again three voters under three names, and the new member has every committed entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_a_hot_node_with_wiped_data_rejoins_as_a_new_member() {
    let (hot, old_id, new_id) = restart_a_follower("wiped", true).await;
    let back = hot.last().expect("the restarted node");
    assert_ne!(new_id, old_id, "a new member");
    assert_eq!(back.raft.status().id_origin, "new");
    let all: Vec<&Hot> = hot.iter().collect();
    until("three voters: the new id in, the old one out", || {
        leader_of(&all).is_some_and(|l| {
            let ids = voter_ids(all[l]);
            let s = all[l].raft.status();
            ids.len() == 3 && ids.contains(&new_id) && !ids.contains(&old_id) && s.learners.is_empty() && !s.changing
        })
    })
    .await;
    let l = leader_of(&all).expect("leader");
    assert_eq!(all[l].raft.status().voters, vec!["hot-1", "hot-2", "hot-3"]);
    // The group still commits, the new member included.
    within("propose after", all[l].raft.propose(create("after"))).await.expect("committed");
    until("replicated to the new member", || back.raft.read(|s| s.sups.contains_key("after"))).await;
    for h in &all {
        h.raft.shutdown().await;
    }
}

/// Cuts one node of a group of three off the network (every datagram dropped, both ways, as a
/// pulled cable) — the leader (`cut_leader`) or a follower — holds the cut for many election
/// timeouts, heals it, and checks that the returning node unseated no one: it switched its
/// elections off (the pre-vote: no voter answered), its term did not climb, and once back it
/// follows the leader of the two, in that leader's term.
async fn cut_and_heal(test: &str, cut_leader: bool) {
    let ca = TestCa::new();
    let hot = hot_nodes(&ca, test, &["hot-1", "hot-2", "hot-3"]).await;
    let all: Vec<&Hot> = hot.iter().collect();
    until("a group of three", || leader_of(&all).is_some() && all.iter().all(|h| h.raft.status().voters.len() == 3))
        .await;
    let first = leader_of(&all).expect("leader");
    let cut = if cut_leader { first } else { (first + 1) % 3 };
    let term0 = all[cut].raft.status().term;
    all[cut].fault.cut();
    let rest: Vec<&Hot> = all.iter().enumerate().filter(|(i, _)| *i != cut).map(|(_, h)| *h).collect();
    until("a leader among the two", || leader_of(&rest).is_some()).await;
    let leader = rest[leader_of(&rest).expect("leader")];
    let (leader_name, term) = (leader.raft.status().name, leader.raft.status().term);
    if !cut_leader {
        assert_eq!(leader_name, all[first].raft.status().name, "losing a follower changes no leader");
    }
    // The cut lasts many election timeouts (250-500 ms): the length of the fault, not a wait.
    // A follower that campaigned would have climbed its term several times meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = all[cut].raft.status();
    assert_eq!(s.term, term0, "no campaign while cut off: the term it had");
    assert!(!s.elections, "elections off while cut off");
    assert!(all[cut].fault.dropped().0 > 0, "the cut dropped what the node sent");
    within("propose during the cut", leader.raft.propose(create("during"))).await.expect("committed by the two");

    all[cut].fault.heal();
    until("the returning node follows the leader", || {
        let s = all[cut].raft.status();
        s.state == "follower" && s.leader.as_deref() == Some(leader_name.as_str())
    })
    .await;
    until("it has what was committed meanwhile", || all[cut].raft.read(|s| s.sups.contains_key("during"))).await;
    for h in &all {
        let s = h.raft.status();
        assert_eq!(
            (s.term, s.leader.as_deref()),
            (term, Some(leader_name.as_str())),
            "{}: nobody was unseated",
            s.name
        );
    }
    for h in &all {
        h.raft.shutdown().await;
    }
}

/// G5, the pre-vote guard with a real cut: a follower cut off and healed does not unseat the
/// leader (openraft 0.9 has no pre-vote: without the guard the follower campaigns while cut
/// off, comes back with a higher term and forces an election).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_a_cut_off_follower_that_returns_does_not_unseat_the_leader() {
    cut_and_heal("cut-follower", false).await;
}

/// G5: the leader cut off and healed: the two others elect a new leader, and the old one, back
/// (it still believed it led), follows it in its term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_a_cut_off_leader_that_returns_does_not_unseat_the_new_one() {
    cut_and_heal("cut-leader", true).await;
}

/// G5 / G8, snapshots and log purge under load: with a snapshot every 100 entries and 50 kept
/// behind it, a follower cut off while the leader commits 600 entries is behind the purged log
/// when it returns, so it gets the leader's snapshot (InstallSnapshot) and then the rest; the
/// leader's log stays bounded; and the follower restarted afterwards, cut off from the start,
/// has every entry from its own disk (snapshot plus the log after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_snapshots_purge_the_log_and_a_lagging_follower_gets_the_snapshot() {
    const ENTRIES: usize = 600;
    let ca = TestCa::new();
    let small = |c: RaftConfig| RaftConfig { snapshot_every: 100, keep_logs: 50, ..c };
    let mut hot = hot_nodes_with(&ca, "snap", &["hot-1", "hot-2", "hot-3"], small).await;
    let f = {
        let all: Vec<&Hot> = hot.iter().collect();
        until("a group of three", || {
            leader_of(&all).is_some() && all.iter().all(|h| h.raft.status().voters.len() == 3)
        })
        .await;
        (leader_of(&all).expect("leader") + 1) % 3
    };
    hot[f].fault.cut();
    let behind = hot[f].raft.status().last_log_index.unwrap_or(0);
    let rest: Vec<&Hot> = hot.iter().enumerate().filter(|(i, _)| *i != f).map(|(_, h)| h).collect();
    let leader = rest[leader_of(&rest).expect("a leader of the two")];
    // 600 proposals, 20 in flight at a time.
    let mut done = 0;
    while done < ENTRIES {
        let mut batch = tokio::task::JoinSet::new();
        for i in done..(done + 20).min(ENTRIES) {
            let raft = leader.raft.clone();
            batch.spawn(async move { raft.propose(create(&format!("s{i}"))).await });
        }
        while let Some(r) = batch.join_next().await {
            r.expect("task").expect("committed");
        }
        done = (done + 20).min(ENTRIES);
    }
    until("the leader snapshotted and purged", || {
        let s = leader.raft.status();
        s.snapshot_index.is_some_and(|i| i >= 500) && s.purged_index.is_some_and(|p| p > behind)
    })
    .await;
    let s = leader.raft.status();
    let (last, purged) = (s.last_log_index.expect("a log"), s.purged_index.expect("purged"));
    assert!(last - purged <= 100 + 50 + 50, "the log is bounded: {purged}..={last}");

    hot[f].fault.heal();
    let back = &hot[f];
    until("the lagging follower has every entry", || {
        back.raft.read(|s| (0..ENTRIES).all(|i| s.sups.contains_key(&format!("s{i}"))))
    })
    .await;
    assert!(back.raft.status().snapshot_index.is_some_and(|i| i > behind), "it was sent the snapshot");

    // Restarted, cut off from the start: everything comes from its own disk.
    let gone = hot.remove(f);
    let name = gone.node.id().name().to_string();
    gone.raft.shutdown().await;
    gone.membership.stop().await;
    gone.node.shutdown(Duration::from_secs(1)).await;
    drop(gone);
    let fault = NetFault::new();
    fault.cut();
    let node = ca.node_with(&name, 2, soma::DistConfig { fault: Some(Arc::clone(&fault)), ..ca.config(&name) });
    let cfg = MembershipConfig { role: Role::Hot, seeds: vec![seed_of(&hot[0].node)], ..MembershipConfig::default() };
    let membership = within("join", Membership::join(&node, cfg)).await.expect("join");
    let data = std::env::temp_dir().join(format!("soma-raft-snap-{}-{name}", std::process::id()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let raft = loop {
        match RaftNode::start(&node, &membership, small(RaftConfig::new(data.clone(), 3))).await {
            Ok(r) => break r,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "cannot reopen its store: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    until("its own disk restored every entry", || {
        raft.read(|s| (0..ENTRIES).all(|i| s.sups.contains_key(&format!("s{i}"))))
    })
    .await;
    assert!(fault.is_cut(), "it was cut off the whole time");
    raft.shutdown().await;
    for h in &hot {
        h.raft.shutdown().await;
    }
}

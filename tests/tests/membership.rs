//! Gossip membership over real QUIC + mTLS on loopback (G4, G9, G3): nodes find each other from
//! one seed, see roles and providers, learn each other's addresses, and declare a node whose
//! heartbeat stopped down — closing its connection, so monitors fire `noconnection`.

use std::time::{Duration, Instant};

use soma::membership::{DownReason, Member, MemberEvent, Membership, MembershipConfig, Role, Seed};
use soma::{ExitReason, Node};
use soma_tests::cluster::TestCa;
use soma_tests::*;
use tokio::sync::broadcast;

fn seed_of(node: &Node) -> Seed {
    Seed { name: node.id().name().to_string(), host: node.local_addr().expect("distributed").to_string() }
}

fn cfg(role: Role, providers: &[&str], seeds: Vec<Seed>) -> MembershipConfig {
    MembershipConfig {
        role,
        providers: providers.iter().map(|p| p.to_string()).collect(),
        seeds,
        ..MembershipConfig::default()
    }
}

async fn join(node: &Node, c: MembershipConfig) -> Membership {
    within("join", Membership::join(node, c)).await.expect("join")
}

/// Waits until `m` sees exactly the members named `names`.
async fn converged(m: &Membership, names: &[&str]) {
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    eventually("membership converged", || m.members().iter().map(|x| x.name.clone()).collect::<Vec<_>>() == want).await;
}

/// The next `Down` event about `name`.
async fn next_down(rx: &mut broadcast::Receiver<MemberEvent>, name: &str) -> (Member, DownReason) {
    loop {
        match within("a down event", rx.recv()).await.expect("events") {
            MemberEvent::Down { member, reason } if member.name == name => return (member, reason),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g4_nodes_find_each_other_from_one_seed_and_see_roles_and_providers() {
    let ca = TestCa::new();
    let (a, b, c) = (ca.node("a", 1), ca.node("b", 1), ca.node("c", 1));
    let ma = join(&a, cfg(Role::Hot, &[], vec![])).await;
    let mb = join(&b, cfg(Role::Cold, &["openai"], vec![seed_of(&a)])).await;
    let mc = join(&c, cfg(Role::Cold, &["local", "anthropic"], vec![seed_of(&a)])).await;
    for m in [&ma, &mb, &mc] {
        converged(m, &["a", "b", "c"]).await;
    }
    let seen = mb.member("c").expect("b sees c");
    assert_eq!(
        (seen.role, seen.providers.clone(), seen.creation),
        (Role::Cold, vec!["anthropic".into(), "local".into()], 1)
    );
    assert_eq!(seen.addr, c.local_addr().unwrap(), "c's QUIC address, learned through gossip");
    assert_eq!(ma.member("a").map(|m| m.role), Some(Role::Hot));
    // b was only told where a is; a process on c is reachable by PID all the same.
    let target = probe(&c, ProbeArgs::default());
    assert_eq!(
        within("call b → c", b.pid_ref::<Probe>(target.pid()).call(Req::Echo(3), CALL)).await,
        Ok(Reply::Num(3))
    );
    for m in [&ma, &mb, &mc] {
        let s = m.stats();
        assert_eq!((s.gossip_undecodable, s.downs), (0, 0), "{s:?}");
        assert!(s.gossip_received > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g4_a_node_whose_heartbeat_stops_is_declared_down_everywhere_and_monitors_fire() {
    let ca = TestCa::new();
    let (a, b, c) = (ca.node("a", 1), ca.node("b", 1), ca.node("c", 1));
    let ma = join(&a, cfg(Role::Hot, &[], vec![])).await;
    let mb = join(&b, cfg(Role::Hot, &[], vec![seed_of(&a)])).await;
    let mc = join(&c, cfg(Role::Cold, &["openai"], vec![seed_of(&a)])).await;
    for m in [&ma, &mb, &mc] {
        converged(m, &["a", "b", "c"]).await;
    }
    // A watcher on a monitors a process on c.
    let (tx, mut events) = Events::new();
    let watcher = probe(&a, ProbeArgs::with_events(&tx));
    let target = probe(&c, ProbeArgs::default());
    let Reply::Ref(mref) = ask(&watcher, Req::Monitor(target.pid())).await else { panic!("monitor") };
    within("ping", a.pid_ref::<Probe>(target.pid()).call(Req::Ping, CALL)).await.expect("ping");
    let (mut ra, mut rb) = (ma.subscribe(), mb.subscribe());
    // c's gossip stops; its QUIC connections stay up (keep-alives still flow), so only the
    // failure detector can notice.
    let stopped = Instant::now();
    mc.stop().await;
    let ((ca_, why_a), (cb_, why_b)) = (next_down(&mut ra, "c").await, next_down(&mut rb, "c").await);
    let took = stopped.elapsed();
    assert_eq!((ca_.creation, why_a, cb_.creation, why_b), (1, DownReason::Failed, 1, DownReason::Failed));
    eprintln!("c declared down on a and b {took:?} after its heartbeat stopped");
    // Declaring it down closed a's connection to c: the monitor fired `noconnection`.
    assert_eq!(
        events.next().await,
        Event::Down {
            pid: watcher.pid(),
            down: soma::Down { monitor: mref, pid: target.pid(), reason: ExitReason::NoConnection }
        }
    );
    converged(&ma, &["a", "b"]).await;
    converged(&mb, &["a", "b"]).await;
    // A new incarnation of c joins and is seen as such.
    let c2 = ca.node("c", 2);
    let mc2 = join(&c2, cfg(Role::Cold, &["openai"], vec![seed_of(&a)])).await;
    converged(&mc2, &["a", "b", "c"]).await;
    eventually("a sees c's new incarnation", || ma.member("c").is_some_and(|m| m.creation == 2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g4_a_graceful_leave_is_reported_as_left() {
    let ca = TestCa::new();
    let (a, b) = (ca.node("a", 1), ca.node("b", 1));
    let ma = join(&a, cfg(Role::Hot, &[], vec![])).await;
    let mb = join(&b, cfg(Role::Cold, &["local"], vec![seed_of(&a)])).await;
    converged(&ma, &["a", "b"]).await;
    converged(&mb, &["a", "b"]).await;
    let mut ra = ma.subscribe();
    mb.leave(Duration::from_millis(500)).await;
    let (_, why) = next_down(&mut ra, "b").await;
    assert_eq!(why, DownReason::Left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g9_a_node_of_another_ca_cannot_join() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let a = ca.node("a", 1);
    let ma = join(&a, cfg(Role::Hot, &[], vec![])).await;
    // Same cluster name, a valid certificate — from another CA.
    let x = other.node("x", 1);
    let mx = join(&x, cfg(Role::Cold, &["openai"], vec![seed_of(&a)])).await;
    eventually("a refused x's connections", || a.dist_stats().is_some_and(|s| s.handshake_failures >= 3)).await;
    assert_eq!(ma.members().iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), vec!["a"]);
    assert_eq!(mx.members().iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), vec!["x"]);
    assert_eq!(ma.stats().gossip_received, 0);
}

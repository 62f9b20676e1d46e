//! Process groups (like Erlang's `pg`), on one node and across nodes over real QUIC + mTLS.

use soma::pg::{PgChange, Pick};
use soma_tests::cluster::{mesh, TestCa};
use soma_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_groups_join_leave_send_and_exit() {
    let node = start("pg-local");
    let (tx, mut events) = Events::new();
    let (p1, p2) = (probe(&node, ProbeArgs::with_events(&tx)), probe(&node, ProbeArgs::with_events(&tx)));
    let mut changes = node.pg_subscribe();
    node.pg_join("workers", p1.pid()).expect("join");
    node.pg_join("workers", p2.pid()).expect("join");
    node.pg_join("workers", p2.pid()).expect("joining twice is fine");
    assert_eq!(node.pg_members("workers"), vec![p1.pid(), p2.pid()]);
    assert_eq!(node.pg_groups(), vec!["workers".to_owned()]);
    assert_eq!(node.pg_send("workers", Cmd::Push(7)), 2);
    let mut got = vec![events.next().await.pid(), events.next().await.pid()];
    got.sort();
    assert_eq!(got, vec![p1.pid(), p2.pid()]);
    node.pg_leave("workers", p1.pid());
    assert_eq!(node.pg_members("workers"), vec![p2.pid()]);
    // A process that exits leaves its groups.
    let exited = node.wait_exit(p2.pid());
    node.kill(p2.pid());
    within("exit", exited).await;
    eventually("the dead member left", || node.pg_members("workers").is_empty()).await;
    assert!(node.pg_groups().is_empty());
    let seen: Vec<PgChange> = (0..4).map(|_| changes.try_recv().expect("a change")).collect();
    assert_eq!(seen[0].joined, vec![p1.pid()]);
    assert_eq!(seen[3].left, vec![p2.pid()], "the exit is a change too");
    assert!(node.pg_join("", p1.pid()).is_err());
    assert!(node.pg_join("g", p2.pid()).is_err(), "a dead process cannot join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_span_connected_nodes_and_lose_a_lost_nodes_members() {
    let ca = TestCa::new();
    let (a, b) = (ca.node("a", 1), ca.node("b", 1));
    mesh(&[&a, &b]);
    let (tx, mut events) = Events::new();
    let on_a = probe(&a, ProbeArgs::with_events(&tx));
    let on_b = probe(&b, ProbeArgs::with_events(&tx));
    // Joined before the nodes are connected: the sync on connect carries it.
    b.pg_join("workers", on_b.pid()).expect("join");
    within("connect", a.pid_ref::<Probe>(on_b.pid()).call(Req::Ping, CALL)).await.expect("ping");
    eventually("a sees b's member", || a.pg_members("workers") == vec![on_b.pid()]).await;
    // Joined while connected: the join travels.
    a.pg_join("workers", on_a.pid()).expect("join");
    eventually("b sees a's member", || b.pg_members("workers").len() == 2).await;
    assert_eq!(a.pg_members("workers"), vec![on_a.pid(), on_b.pid()], "local members first");
    assert_eq!(a.pg_local_members("workers"), vec![on_a.pid()]);
    // Send to all, from either side.
    assert_eq!(b.pg_send("workers", Cmd::Push(1)), 2);
    let mut got = vec![events.next().await.pid(), events.next().await.pid()];
    got.sort();
    let mut want = vec![on_a.pid(), on_b.pid()];
    want.sort();
    assert_eq!(got, want);
    // Picks.
    assert_eq!(a.pg_pick("workers", Pick::LocalFirst), Some(on_a.pid()));
    assert_eq!(b.pg_pick("workers", Pick::LocalFirst), Some(on_b.pid()));
    let rr: Vec<_> = (0..4).filter_map(|_| a.pg_pick("workers", Pick::RoundRobin)).collect();
    assert_eq!(rr, vec![on_a.pid(), on_b.pid(), on_a.pid(), on_b.pid()]);
    assert!(a.pg_pick("workers", Pick::Random).is_some_and(|p| want.contains(&p)));
    assert_eq!(a.pg_pick("nobody", Pick::Random), None);
    // A remote member that exits vanishes everywhere.
    let extra = probe(&b, ProbeArgs::default());
    b.pg_join("workers", extra.pid()).expect("join");
    eventually("a sees the extra member", || a.pg_members("workers").len() == 3).await;
    b.kill(extra.pid());
    eventually("the extra member is gone on a", || a.pg_members("workers").len() == 2).await;
    // A lost node's members vanish, and come back with the next connection.
    let mut changes = a.pg_subscribe();
    assert!(a.disconnect("b"));
    eventually("b's members are gone on a", || a.pg_members("workers") == vec![on_a.pid()]).await;
    let change = within("a change", changes.recv()).await.expect("change");
    assert_eq!((change.group.as_str(), change.left.clone()), ("workers", vec![on_b.pid()]));
    within("reconnect", a.pid_ref::<Probe>(on_b.pid()).call(Req::Ping, CALL)).await.expect("ping");
    eventually("b's member is back on a", || a.pg_members("workers").len() == 2).await;
    assert_eq!(a.dist_stats().expect("stats").protocol_errors, 0);
}

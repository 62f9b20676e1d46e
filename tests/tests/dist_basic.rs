//! Location transparency over real QUIC + mTLS on loopback: send, call, link, monitor, exit,
//! ordering, and node loss (G1, G2, G3, G9).

use soma::{CallError, ExitReason, PidRef};
use soma_tests::cluster::{mesh, TestCa};
use soma_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_remote_send_and_call_by_pid() {
    let ca = TestCa::new();
    let (a, b) = (ca.node("a", 1), ca.node("b", 1));
    mesh(&[&a, &b]);
    let (tx, mut events) = Events::new();
    let target = probe(&b, ProbeArgs::with_events(&tx));
    let r: PidRef<Probe> = a.pid_ref(target.pid());
    r.send(Cmd::Push(7)).unwrap();
    let e = within("remote message", events.next()).await;
    assert_eq!(e, Event::Handled { pid: target.pid(), n: 7, from: None, corr: None });
    assert_eq!(within("remote call", r.call(Req::Echo(41), CALL)).await, Ok(Reply::Num(41)));
    assert!(a.connected_nodes().contains(&b.id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_remote_messages_from_one_process_arrive_in_order() {
    let ca = TestCa::new();
    let (a, b) = (ca.node("a", 1), ca.node("b", 1));
    mesh(&[&a, &b]);
    let (tx, mut events) = Events::new();
    let target = probe(&b, ProbeArgs::with_events(&tx));
    let sender = probe(&a, ProbeArgs::default());
    for n in 0..5_000u64 {
        sender.send(Cmd::Forward { to: target.pid(), n }).unwrap();
    }
    for n in 0..5_000u64 {
        match within("ordered message", events.next()).await {
            Event::Handled { n: got, from, .. } => {
                assert_eq!(got, n);
                assert_eq!(from, Some(sender.pid()), "the sender's PID crosses the wire");
            }
            e => panic!("unexpected {e:?}"),
        }
    }
}

/// G2 across the two ways a frame leaves: messages then a call from one process to one remote
/// process, round after round — the first frame of a quiet lane is written by the sender
/// itself, the rest by the lane's writer — arrive in the order they were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_messages_and_calls_keep_their_order_whether_written_directly_or_batched() {
    let ca = TestCa::new();
    let (a, b) = (ca.node("a", 1), ca.node("b", 1));
    mesh(&[&a, &b]);
    let target = probe(&b, ProbeArgs::default());
    let sender = probe(&a, ProbeArgs::default());
    let mut want = Vec::new();
    for round in 0..200u64 {
        // 0, 1 or 2 messages, then a call that reads the target's log.
        for k in 0..round % 3 {
            let n = round * 10 + k;
            sender.send(Cmd::Forward { to: target.pid(), n }).expect("send");
            want.push(n);
        }
        let log = ask(&sender, Req::Call { to: target.pid(), req: Box::new(Req::Log) }).await;
        assert_eq!(log, Reply::Log(want.clone()), "round {round}");
    }
    assert!(a.dist_stats().expect("stats").direct_writes > 0, "the direct path was taken");
}

/// Many callers, many idle callees: every call is answered whether its callee ran on the
/// stream reader (the last frame of a read) or was handed to the scheduler (more followed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_concurrent_remote_calls_to_idle_processes_are_all_answered() {
    let ca = TestCa::new();
    let (a, b) = (ca.node("a", 1), ca.node("b", 1));
    mesh(&[&a, &b]);
    let targets: Vec<_> = (0..32).map(|_| probe(&b, ProbeArgs::default()).pid()).collect();
    let mut callers = Vec::new();
    for c in 0..8u64 {
        let (a, targets) = (a.clone(), targets.clone());
        callers.push(tokio::spawn(async move {
            for i in 0..100u64 {
                let t = targets[((c * 7 + i) % 32) as usize];
                let n = c * 1_000 + i;
                assert_eq!(a.pid_ref::<Probe>(t).call(Req::Echo(n), CALL).await, Ok(Reply::Num(n)));
            }
        }));
    }
    for c in callers {
        within("callers", c).await.expect("caller");
    }
    let s = b.dist_stats().expect("stats");
    assert_eq!((s.busy, s.mailbox_full, s.undecodable), (0, 0, 0), "{s:?}");
    assert!(s.inline_calls > 0, "some callees ran on the reader: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_remote_monitor_sees_the_exit_reason() {
    let ca = TestCa::new();
    let (a, b) = (ca.node("a", 1), ca.node("b", 1));
    mesh(&[&a, &b]);
    let (tx, mut events) = Events::new();
    let watcher = probe(&a, ProbeArgs::with_events(&tx));
    let target = probe(&b, ProbeArgs::default());
    let Reply::Ref(mref) = ask(&watcher, Req::Monitor(target.pid())).await else { panic!() };
    // The monitor is in place on b once a call on the same lane returns.
    within("ping", a.pid_ref::<Probe>(target.pid()).call(Req::Ping, CALL)).await.unwrap();
    b.kill(target.pid());
    match within("down", events.next()).await {
        Event::Down { pid, down } => {
            assert_eq!(pid, watcher.pid());
            assert_eq!((down.monitor, down.pid, down.reason), (mref, target.pid(), ExitReason::Killed));
        }
        e => panic!("unexpected {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_remote_link_propagates_a_crash_and_a_trapped_exit() {
    let ca = TestCa::new();
    let (a, b) = (ca.node("a", 1), ca.node("b", 1));
    mesh(&[&a, &b]);
    let (tx, mut events) = Events::new();
    let trapper = probe(&a, ProbeArgs { trap_exit: true, ..ProbeArgs::with_events(&tx) });
    let target = probe(&b, ProbeArgs::default());
    assert_eq!(ask(&trapper, Req::Link(target.pid())).await, Reply::Ok);
    within("ping", a.pid_ref::<Probe>(target.pid()).call(Req::Ping, CALL)).await.unwrap();
    target.send(Cmd::Panic("remote boom".into())).unwrap();
    match within("exit signal", events.next()).await {
        Event::Exit { pid, from, reason } => {
            assert_eq!((pid, from), (trapper.pid(), target.pid()));
            assert_crashed_with(&reason, "remote boom");
        }
        e => panic!("unexpected {e:?}"),
    }
    // And a non-trapping process on b dies with a's crash.
    let victim = probe(&b, ProbeArgs::default());
    let dying = probe(&a, ProbeArgs::default());
    let exited = b.wait_exit(victim.pid());
    assert_eq!(ask(&dying, Req::Link(victim.pid())).await, Reply::Ok);
    within("ping", a.pid_ref::<Probe>(victim.pid()).call(Req::Ping, CALL)).await.unwrap();
    dying.send(Cmd::Fail("a failed".into())).unwrap();
    assert_crashed_with(&within("victim exit", exited).await, "a failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_node_loss_fires_noconnection_and_fails_pending_calls() {
    let ca = TestCa::new();
    let (a, b) = (ca.node("a", 1), ca.node("b", 1));
    mesh(&[&a, &b]);
    let (tx, mut events) = Events::new();
    let watcher = probe(&a, ProbeArgs { trap_exit: true, ..ProbeArgs::with_events(&tx) });
    let target = probe(&b, ProbeArgs::default());
    let Reply::Ref(mref) = ask(&watcher, Req::Monitor(target.pid())).await else { panic!() };
    assert_eq!(ask(&watcher, Req::Link(target.pid())).await, Reply::Ok);
    let r = a.pid_ref::<Probe>(target.pid());
    within("ping", r.call(Req::Ping, CALL)).await.unwrap();
    // A call that will never be answered, then the connection goes.
    let hanging = tokio::spawn({
        let r = r.clone();
        async move { r.call(Req::Hang, CALL).await }
    });
    eventually("the hang reached b", || b.info(target.pid()).is_ok_and(|i| i.status == soma::ProcessStatus::Running))
        .await;
    let target_exit = b.wait_exit(target.pid());
    assert!(a.disconnect("b"));
    assert_eq!(within("pending call", hanging).await.unwrap(), Err(CallError::NoConnection));
    let mut got = vec![within("first", events.next()).await, within("second", events.next()).await];
    got.sort_by_key(|e| matches!(e, Event::Exit { .. }));
    assert_eq!(
        got,
        vec![
            Event::Down {
                pid: watcher.pid(),
                down: soma::Down { monitor: mref, pid: target.pid(), reason: ExitReason::NoConnection }
            },
            Event::Exit { pid: watcher.pid(), from: target.pid(), reason: ExitReason::NoConnection },
        ]
    );
    // On b, the link broke too: the (non-trapping) target died with `noconnection`.
    assert_eq!(within("target exit", target_exit).await, ExitReason::NoConnection);
    // The next use connects again.
    let fresh = probe(&b, ProbeArgs::default());
    let r = a.pid_ref::<Probe>(fresh.pid());
    assert_eq!(within("call after reconnect", r.call(Req::Echo(5), CALL)).await, Ok(Reply::Num(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_restarted_node_is_a_new_incarnation() {
    let ca = TestCa::new();
    let a = ca.node("a", 1);
    let b1 = ca.node("b", 1);
    mesh(&[&a, &b1]);
    let old = probe(&b1, ProbeArgs::default());
    within("call b1", a.pid_ref::<Probe>(old.pid()).call(Req::Ping, CALL)).await.unwrap();
    b1.shutdown(std::time::Duration::from_secs(1)).await;
    // b comes back (creation 2) with a process at the same serial.
    let b2 = ca.node("b", 2);
    mesh(&[&a, &b2]);
    let (tx, mut events) = Events::new();
    let new = probe(&b2, ProbeArgs::with_events(&tx));
    assert_eq!(new.pid().serial(), old.pid().serial());
    assert_ne!(new.pid(), old.pid());
    let r = a.pid_ref::<Probe>(new.pid());
    within("call b2", r.call(Req::Ping, CALL)).await.unwrap();
    // The old PID never reaches the new process: sends are dropped, calls say noproc.
    a.send(old.pid(), Cmd::Push(1)).unwrap();
    assert_eq!(within("old call", a.pid_ref::<Probe>(old.pid()).call(Req::Ping, CALL)).await, Err(CallError::NoProc));
    r.send(Cmd::Push(2)).unwrap();
    match within("message to the new one", events.next()).await {
        Event::Handled { n, .. } => assert_eq!(n, 2, "the message to the old PID was not delivered"),
        e => panic!("unexpected {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_calls_to_unreachable_nodes_fail_clearly() {
    let ca = TestCa::new();
    let a = ca.node("a", 1);
    let b = ca.node("b", 1);
    let target = probe(&b, ProbeArgs::default());
    // a does not know where b is.
    assert_eq!(
        within("call", a.pid_ref::<Probe>(target.pid()).call(Req::Ping, CALL)).await,
        Err(CallError::NoConnection)
    );
    a.send(target.pid(), Cmd::Push(1)).unwrap();
}

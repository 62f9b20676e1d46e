//! Monitors: `Down` notifications, `noproc`, demonitor (with flush), spawn_monitor.

use soma::{Down, ExitReason};
use soma_tests::*;

/// A monitor's `Down` carries the monitored process's exit reason (crashed, normal, shutdown,
/// killed) and its ref; the monitor shows in info on both sides until it fired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_down_carries_the_exit_reason() {
    let node = start("t-monitor-down");
    let (tx, mut events) = Events::new();
    let w = probe(&node, ProbeArgs::with_events(&tx));
    let cases: Vec<(Cmd, Option<ExitReason>)> = vec![
        (Cmd::Fail("gone".into()), None),
        (Cmd::Stop(ExitReason::Normal), Some(ExitReason::Normal)),
        (Cmd::Stop(ExitReason::Shutdown), Some(ExitReason::Shutdown)),
        (Cmd::Hang, Some(ExitReason::Killed)),
    ];
    for (cmd, expected) in cases {
        let t = probe(&node, ProbeArgs::default());
        let mref = ask(&w, Req::Monitor(t.pid())).await.mref();
        assert_eq!(node.info(w.pid()).unwrap().monitors, vec![t.pid()]);
        assert_eq!(node.info(t.pid()).unwrap().monitored_by, vec![w.pid()]);
        let exited = node.wait_exit(t.pid());
        let kill = cmd == Cmd::Hang;
        t.send(cmd).unwrap();
        if kill {
            node.kill(t.pid());
        }
        let reason = within("exit", exited).await;
        if let Some(expected) = expected {
            assert_eq!(reason, expected);
        } else {
            assert_crashed_with(&reason, "gone");
        }
        assert_eq!(
            events.next().await,
            Event::Down { pid: w.pid(), down: Down { monitor: mref, pid: t.pid(), reason } }
        );
        ask(&w, Req::Ping).await;
        assert!(node.info(w.pid()).unwrap().monitors.is_empty(), "a fired monitor is gone");
    }
}

/// Monitoring a dead PID gives an immediate `Down` with `noproc`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_of_dead_pid_gives_noproc() {
    let node = start("t-monitor-noproc");
    let (tx, mut events) = Events::new();
    let w = probe(&node, ProbeArgs::with_events(&tx));
    let t = probe(&node, ProbeArgs::default());
    let exited = node.wait_exit(t.pid());
    node.kill(t.pid());
    within("exit", exited).await;
    let mref = ask(&w, Req::Monitor(t.pid())).await.mref();
    assert_eq!(
        events.next().await,
        Event::Down { pid: w.pid(), down: Down { monitor: mref, pid: t.pid(), reason: ExitReason::NoProc } }
    );
}

/// `demonitor` before the exit: no `Down` ever arrives, and the target no longer lists the
/// watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demonitor_prevents_down() {
    let node = start("t-demonitor");
    let (tx, mut events) = Events::new();
    let w = probe(&node, ProbeArgs::with_events(&tx));
    let t = probe(&node, ProbeArgs::default());
    let mref = ask(&w, Req::Monitor(t.pid())).await.mref();
    ask(&w, Req::Demonitor(mref)).await;
    assert!(node.info(t.pid()).unwrap().monitored_by.is_empty());
    assert!(node.info(w.pid()).unwrap().monitors.is_empty());
    let exited = node.wait_exit(t.pid());
    t.send(Cmd::Panic("unwatched".into())).unwrap();
    within("exit", exited).await;
    // A Down would have been queued before this ping (it is pushed during the exit).
    ask(&w, Req::Ping).await;
    assert_eq!(events.drain(), vec![]);
}

/// `demonitor` flushes a `Down` that is already queued (Erlang's `demonitor(R, [flush])`):
/// the watcher kills the target, waits until it is gone (its `Down` is in the mailbox), then
/// demonitors — all in one handler — and never sees the `Down`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demonitor_flushes_a_queued_down_from_within_a_handler() {
    let node = start("t-demonitor-flush");
    let (tx, mut events) = Events::new();
    let w = probe(&node, ProbeArgs::with_events(&tx));
    let t = probe(&node, ProbeArgs::default());
    let mref = ask(&w, Req::Monitor(t.pid())).await.mref();
    assert_eq!(ask(&w, Req::KillWaitDemonitor { target: t.pid(), mref }).await, Reply::Ok);
    assert!(!node.is_alive(t.pid()));
    ask(&w, Req::Ping).await;
    assert_eq!(events.drain(), vec![]);
}

/// The same flush seen from outside: with the watcher suspended, a `demonitor` call is queued,
/// then the target dies and its `Down` is queued behind it (peek shows both); after resume
/// the `Down` is discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demonitor_flushes_a_down_queued_behind_it() {
    let node = start("t-demonitor-flush-peek");
    let (tx, mut events) = Events::new();
    let w = probe(&node, ProbeArgs::with_events(&tx));
    let t = probe(&node, ProbeArgs::default());
    let mref = ask(&w, Req::Monitor(t.pid())).await.mref();
    node.suspend(w.pid()).unwrap();
    let mut demon = Box::pin(w.call(Req::Demonitor(mref), CALL));
    assert!(is_pending(&mut demon).await);
    let exited = node.wait_exit(t.pid());
    node.kill(t.pid());
    within("exit", exited).await;
    let kinds: Vec<_> =
        node.peek(w.pid(), 10).unwrap().iter().map(|m| m["kind"].as_str().unwrap().to_owned()).collect();
    assert_eq!(kinds, vec!["call", "down"]);
    node.resume(w.pid()).unwrap();
    assert_eq!(within("demonitor", demon).await, Ok(Reply::Ok));
    ask(&w, Req::Ping).await;
    assert_eq!(events.drain(), vec![]);
}

/// Several monitors on one target each fire once, with their own refs, at their own watchers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_monitor_fires_once() {
    let node = start("t-monitor-many");
    let (tx, mut events) = Events::new();
    let w1 = probe(&node, ProbeArgs::with_events(&tx));
    let w2 = probe(&node, ProbeArgs::with_events(&tx));
    let t = probe(&node, ProbeArgs::default());
    let r1a = ask(&w1, Req::Monitor(t.pid())).await.mref();
    let r1b = ask(&w1, Req::Monitor(t.pid())).await.mref();
    let r2 = ask(&w2, Req::Monitor(t.pid())).await.mref();
    assert!(r1a != r1b && r1a != r2 && r1b != r2);
    assert_eq!(node.info(t.pid()).unwrap().monitored_by.len(), 3);
    let exited = node.wait_exit(t.pid());
    node.exit(t.pid(), ExitReason::Shutdown);
    within("exit", exited).await;
    ask(&w1, Req::Ping).await;
    ask(&w2, Req::Ping).await;
    let mut got: Vec<_> = events
        .drain()
        .into_iter()
        .map(|e| match e {
            Event::Down { pid, down } => {
                assert_eq!((down.pid, &down.reason), (t.pid(), &ExitReason::Shutdown));
                (pid, down.monitor)
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    got.sort();
    let mut want = vec![(w1.pid(), r1a), (w1.pid(), r1b), (w2.pid(), r2)];
    want.sort();
    assert_eq!(got, want);
}

/// `spawn_monitor` monitors the child before its init: the child's exit (here `normal`) comes
/// back as a `Down` with the returned ref; the child is not linked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_monitor_reports_the_child_exit() {
    let node = start("t-spawn-monitor");
    let (tx, mut events) = Events::new();
    let parent = probe(&node, ProbeArgs::with_events(&tx));
    let req = Req::Spawn { label: None, how: How::Monitor, init: InitMode::Ok, trap_exit: false };
    let (child, mref) = ask(&parent, req).await.spawned();
    let mref = mref.expect("spawn_monitor returns a ref");
    assert_eq!(node.info(parent.pid()).unwrap().monitors, vec![child]);
    assert!(node.info(child).unwrap().links.is_empty());
    node.send(child, Cmd::Stop(ExitReason::Normal)).unwrap();
    assert_eq!(events.next().await, Event::Terminate { pid: child, reason: ExitReason::Normal });
    assert_eq!(
        events.next().await,
        Event::Down { pid: parent.pid(), down: Down { monitor: mref, pid: child, reason: ExitReason::Normal } }
    );
    // Not linked: a crash of the child would not have touched the parent either.
    let req = Req::Spawn { label: None, how: How::Monitor, init: InitMode::Ok, trap_exit: false };
    let (child2, _) = ask(&parent, req).await.spawned();
    node.send(child2, Cmd::Panic("x".into())).unwrap();
    let Event::Down { down, .. } = events.next().await else { panic!("expected Down") };
    assert_crashed_with(&down.reason, "x");
    assert_eq!(ask(&parent, Req::Ping).await, Reply::Pong);
}

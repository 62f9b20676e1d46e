//! Send and call (G2: ordering and delivery) and correlation IDs (G10).

use std::time::Duration;

use soma::{Addr, CallError, CorrelationId, ExitReason, Pid};
use soma_tests::*;

/// G2: a call gets the handler's reply; a call from outside has no sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_call_returns_the_reply() {
    let node = start("t-g2-call");
    let a = probe(&node, ProbeArgs::default());
    let b = probe(&node, ProbeArgs::default());
    assert_eq!(ask(&a, Req::Echo(42)).await, Reply::Num(42));
    assert_eq!(ask(&a, Req::Sender).await, Reply::Pid(None));
    // A call made by a process reaches the callee and returns its reply.
    assert_eq!(ask(&a, Req::Call { to: b.pid(), req: Box::new(Req::Ping) }).await, Reply::Pong);
}

/// G2: a caller gets a timeout (not a hang) when no reply comes: the callee is suspended, or
/// its handler never finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_call_times_out() {
    let node = start("t-g2-timeout");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs::with_events(&tx));
    let short = Duration::from_millis(50);

    node.suspend(a.pid()).unwrap();
    assert_eq!(within("call", a.call(Req::Ping, short)).await, Err(CallError::Timeout(short)));
    node.resume(a.pid()).unwrap();
    assert_eq!(ask(&a, Req::Echo(1)).await, Reply::Num(1));

    assert_eq!(within("call", a.call(Req::Hang, short)).await, Err(CallError::Timeout(short)));
    assert_eq!(events.next().await, Event::Started { pid: a.pid() });
    assert!(a.is_alive(), "a timed-out call does not affect the callee");
}

/// G2: calling a process that has exited is `NoProc`, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_call_to_dead_process_is_noproc() {
    let node = start("t-g2-noproc");
    let a = probe(&node, ProbeArgs::default());
    let exited = node.wait_exit(a.pid());
    a.send(Cmd::Stop(ExitReason::Normal)).unwrap();
    assert_eq!(within("exit", exited).await, ExitReason::Normal);
    assert_eq!(within("call", a.call(Req::Ping, CALL)).await, Err(CallError::NoProc));
    let r = within("call_json", node.call_json(a.pid(), serde_json::json!("Ping"), None, CALL)).await;
    assert_eq!(r, Err(CallError::NoProc));
}

/// G2: when the callee crashes (panic or `Err`) or is killed while handling the call, the
/// caller gets `Exited` promptly — not a timeout (the call timeout is far beyond the guard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_callee_crash_during_call_gives_exited_promptly() {
    let node = start("t-g2-exited");
    let long = Duration::from_secs(600);

    let a = probe(&node, ProbeArgs::default());
    assert_eq!(within("call", a.call(Req::Panic("mid-call".into()), long)).await, Err(CallError::Exited));
    assert!(!a.is_alive());

    let b = probe(&node, ProbeArgs::default());
    assert_eq!(within("call", b.call(Req::Fail("nope".into()), long)).await, Err(CallError::Exited));
    assert!(!b.is_alive());

    let (tx, mut events) = Events::new();
    let c = probe(&node, ProbeArgs::with_events(&tx));
    let c2 = c.clone();
    let call = tokio::spawn(async move { c2.call(Req::Hang, long).await });
    assert_eq!(events.next().await, Event::Started { pid: c.pid() });
    node.kill(c.pid());
    assert_eq!(within("call", call).await.unwrap(), Err(CallError::Exited));

    // The same seen by a calling *process*: the (idle) callee runs inline on the caller's task
    // and crashes there; the caller gets `Exited` and survives.
    let caller = probe(&node, ProbeArgs::default());
    let d = probe(&node, ProbeArgs::default());
    let req = Req::Call { to: d.pid(), req: Box::new(Req::Panic("inline".into())) };
    assert_eq!(ask(&caller, req).await, Reply::Err("Exited".into()));
    assert!(!d.is_alive());
    assert_eq!(ask(&caller, Req::Ping).await, Reply::Pong);
}

/// G2: calls still queued when the process dies fail with `Exited` (their reply channels are
/// dropped with the mailbox).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_queued_calls_fail_with_exited_when_callee_dies() {
    let node = start("t-g2-queued-calls");
    let a = probe(&node, ProbeArgs::default());
    let long = Duration::from_secs(600);
    node.suspend(a.pid()).unwrap();
    let mut first = Box::pin(a.call(Req::Panic("first".into()), long));
    let mut second = Box::pin(a.call(Req::Ping, long));
    assert!(is_pending(&mut first).await && is_pending(&mut second).await);
    assert_eq!(node.info(a.pid()).unwrap().mailbox_depth, 2);
    node.resume(a.pid()).unwrap();
    assert_eq!(within("first call", first).await, Err(CallError::Exited));
    assert_eq!(within("second call", second).await, Err(CallError::Exited));
}

/// G2: sending to a dead process is not an error; the message is dropped (and counted when
/// sent by PID). A process sending to a dead PID keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_send_to_dead_process_is_ok_and_dropped() {
    let node = start("t-g2-dead-send");
    let dead = probe(&node, ProbeArgs::default());
    let exited = node.wait_exit(dead.pid());
    node.kill(dead.pid());
    within("exit", exited).await;

    assert_eq!(dead.send(Cmd::Push(1)), Ok(()));
    assert_eq!(dead.send_with(Cmd::Push(1), Some(CorrelationId(1))), Ok(()));
    within("send_wait to a dead process returns", dead.send_wait(Cmd::Push(1))).await;
    let before = node.dropped_messages();
    assert_eq!(node.send(dead.pid(), Cmd::Push(2)), Ok(()));
    assert_eq!(node.dropped_messages(), before + 1);

    let alive = probe(&node, ProbeArgs::default());
    alive.send(Cmd::Forward { to: dead.pid(), n: 3 }).unwrap();
    assert_eq!(ask(&alive, Req::Ping).await, Reply::Pong);
    assert_eq!(node.dropped_messages(), before + 2);
}

/// G2: messages sent from outside (one task) arrive in the order sent, interleaved sends and
/// calls included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_order_from_outside_is_preserved() {
    let node = start("t-g2-order-outside");
    let a = probe(&node, ProbeArgs::default());
    for n in 0..2000 {
        a.send(Cmd::Push(n)).unwrap();
        if n % 500 == 499 {
            // A call is queued behind the sends made before it.
            assert_eq!(ask(&a, Req::Log).await.log(), (0..=n).collect::<Vec<_>>());
        }
    }
    assert_eq!(ask(&a, Req::Log).await.log(), (0..2000).collect::<Vec<_>>());
}

/// G2: messages one process sends to another arrive in order and carry the sender's PID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_order_from_one_process_is_preserved() {
    let node = start("t-g2-order-process");
    let (tx, mut events) = Events::new();
    let sender = probe(&node, ProbeArgs::default());
    let target = probe(&node, ProbeArgs::with_events(&tx));
    assert_eq!(ask(&sender, Req::Burst { to: target.pid(), start: 0, count: 1000 }).await, Reply::Ok);
    assert_eq!(ask(&target, Req::Log).await.log(), (0..1000).collect::<Vec<_>>());
    let got = events.drain();
    assert_eq!(got.len(), 1000);
    for (i, e) in got.into_iter().enumerate() {
        assert_eq!(e, Event::Handled { pid: target.pid(), n: i as u64, from: Some(sender.pid()), corr: None });
    }
}

fn assert_each_sender_in_order(log: &[u64], senders: u64, per: u64) {
    assert_eq!(log.len() as u64, senders * per, "nothing lost or duplicated (G2: at most once)");
    for s in 0..senders {
        let start = s * 1_000_000;
        let mine: Vec<u64> = log.iter().copied().filter(|n| (start..start + per).contains(n)).collect();
        assert_eq!(mine, (start..start + per).collect::<Vec<_>>(), "sender {s} kept its order");
    }
}

/// G2: with several processes sending concurrently to one target, each sender's messages keep
/// their own order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_concurrent_process_senders_each_keep_their_order() {
    let node = start("t-g2-concurrent-procs");
    let target = probe(&node, ProbeArgs::default());
    let senders: Vec<Addr<Probe>> = (0..4).map(|_| probe(&node, ProbeArgs::default())).collect();
    let tasks: Vec<_> = senders
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (s, to) = (s.clone(), target.pid());
            tokio::spawn(async move { s.call(Req::Burst { to, start: i as u64 * 1_000_000, count: 500 }, CALL).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(within("burst", t).await.unwrap(), Ok(Reply::Ok));
    }
    assert_each_sender_in_order(&ask(&target, Req::Log).await.log(), 4, 500);
}

/// G2: the same with concurrent senders outside any process (tokio tasks on both workers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_concurrent_outside_senders_each_keep_their_order() {
    let node = start("t-g2-concurrent-tasks");
    let target = probe(&node, ProbeArgs::default());
    let tasks: Vec<_> = (0..4u64)
        .map(|s| {
            let t = target.clone();
            tokio::spawn(async move {
                for n in 0..500 {
                    t.send(Cmd::Push(s * 1_000_000 + n)).unwrap();
                    if n % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        within("senders", t).await.unwrap();
    }
    assert_each_sender_in_order(&ask(&target, Req::Log).await.log(), 4, 500);
}

/// G2: what a process sent before it exited arrives before its exit signal (trapped link) and
/// before its `Down` (monitor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_messages_arrive_before_the_senders_exit_signal_and_down() {
    let node = start("t-g2-before-exit");
    let (tx, mut events) = Events::new();
    let linked = probe(&node, ProbeArgs { trap_exit: true, ..ProbeArgs::with_events(&tx) });
    let watcher = probe(&node, ProbeArgs::with_events(&tx));
    let sender = probe(&node, ProbeArgs::default());
    ask(&linked, Req::Link(sender.pid())).await;
    let mref = ask(&watcher, Req::Monitor(sender.pid())).await.mref();

    let exited = node.wait_exit(sender.pid());
    ask(&sender, Req::Burst { to: linked.pid(), start: 0, count: 50 }).await;
    ask(&sender, Req::Burst { to: watcher.pid(), start: 100, count: 50 }).await;
    sender.send(Cmd::Fail("done".into())).unwrap();
    let reason = within("exit", exited).await;
    assert_crashed_with(&reason, "done");
    // Both observers have everything queued by now; a ping is a barrier behind it.
    ask(&linked, Req::Ping).await;
    ask(&watcher, Req::Ping).await;

    let got = events.drain();
    let of = |pid: Pid| got.iter().filter(|e| e.pid() == pid).cloned().collect::<Vec<_>>();
    let at_linked = of(linked.pid());
    assert_eq!(at_linked.len(), 51);
    for (i, e) in at_linked[..50].iter().enumerate() {
        assert!(matches!(e, Event::Handled { n, .. } if *n == i as u64), "{e:?}");
    }
    assert_eq!(at_linked[50], Event::Exit { pid: linked.pid(), from: sender.pid(), reason: reason.clone() });
    let at_watcher = of(watcher.pid());
    assert_eq!(at_watcher.len(), 51);
    for (i, e) in at_watcher[..50].iter().enumerate() {
        assert!(matches!(e, Event::Handled { n, .. } if *n == 100 + i as u64), "{e:?}");
    }
    let Event::Down { down, .. } = &at_watcher[50] else { panic!("expected Down last, got {:?}", at_watcher[50]) };
    assert_eq!((down.monitor, down.pid, &down.reason), (mref, sender.pid(), &reason));
}

/// G10: the correlation ID a message is sent with is the callee's `ctx.correlation()`; a
/// message without one has none (no leak from the previous message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g10_correlation_id_reaches_the_handler() {
    let node = start("t-g10-corr");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs::with_events(&tx));
    let c = CorrelationId(0xfeed);
    assert_eq!(within("call", a.call_with(Req::Correlation, Some(c), CALL)).await, Ok(Reply::Corr(Some(c))));
    assert_eq!(ask(&a, Req::Correlation).await, Reply::Corr(None));

    a.send_with(Cmd::Push(1), Some(c)).unwrap();
    a.send(Cmd::Push(2)).unwrap();
    node.send_json(a.pid(), serde_json::json!({"Push": 3}), Some(CorrelationId(3))).unwrap();
    assert_eq!(events.next().await, Event::Handled { pid: a.pid(), n: 1, from: None, corr: Some(c) });
    assert_eq!(events.next().await, Event::Handled { pid: a.pid(), n: 2, from: None, corr: None });
    assert_eq!(events.next().await, Event::Handled { pid: a.pid(), n: 3, from: None, corr: Some(CorrelationId(3)) });
}

/// G10: what a process sends or calls while handling a correlated message carries the same
/// correlation ID (observed by the second process); `set_correlation` changes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g10_correlation_id_propagates_to_outbound_sends_and_calls() {
    let node = start("t-g10-corr-propagate");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs::default());
    let b = probe(&node, ProbeArgs::with_events(&tx));

    let c1 = CorrelationId(11);
    a.send_with(Cmd::Forward { to: b.pid(), n: 7 }, Some(c1)).unwrap();
    assert_eq!(events.next().await, Event::Handled { pid: b.pid(), n: 7, from: Some(a.pid()), corr: Some(c1) });

    let c2 = CorrelationId(22);
    let seen =
        within("call", a.call_with(Req::Call { to: b.pid(), req: Box::new(Req::Correlation) }, Some(c2), CALL)).await;
    assert_eq!(seen, Ok(Reply::Corr(Some(c2))), "the callee of a nested call sees the caller's correlation");

    // Uncorrelated in, uncorrelated out.
    a.send(Cmd::Forward { to: b.pid(), n: 8 }).unwrap();
    assert_eq!(events.next().await, Event::Handled { pid: b.pid(), n: 8, from: Some(a.pid()), corr: None });

    let c3 = CorrelationId(33);
    let req = Req::ForwardAs { corr: Some(c3), to: b.pid(), n: 9 };
    within("call", a.call_with(req, Some(c2), CALL)).await.unwrap();
    assert_eq!(events.next().await, Event::Handled { pid: b.pid(), n: 9, from: Some(a.pid()), corr: Some(c3) });
    let req = Req::ForwardAs { corr: None, to: b.pid(), n: 10 };
    within("call", a.call_with(req, Some(c2), CALL)).await.unwrap();
    assert_eq!(events.next().await, Event::Handled { pid: b.pid(), n: 10, from: Some(a.pid()), corr: None });
}

//! Introspection without instrumentation: info, peek, state, processes, tree, JSON messages.

use std::time::Duration;

use serde_json::json;
use soma::{CallError, CorrelationId, ExitReason, IntrospectError, ProcessStatus, SpawnOpts};
use soma_tests::*;

/// info reports label, behaviour, parent, registered name, links, monitors (both ways), trap
/// and trace flags, mailbox capacity and a positive memory estimate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_reports_identity_and_relations() {
    let node = start("t-info-fields");
    let parent = probe(&node, ProbeArgs::default());
    let req = Req::Spawn { label: Some("kid".into()), how: How::Plain, init: InitMode::Ok, trap_exit: true };
    let (kid, _) = ask(&parent, req).await.spawned();
    let linked = probe(&node, ProbeArgs::default());
    let watcher = probe(&node, ProbeArgs::default());
    node.register("the-kid", kid).unwrap();
    ask(&linked, Req::Link(kid)).await;
    ask(&watcher, Req::Monitor(kid)).await.mref();
    node.trace(kid, true).unwrap();

    let info = node.info(kid).unwrap();
    assert_eq!(info.pid, kid);
    assert_eq!(info.label.as_deref(), Some("kid"));
    assert_eq!(info.behaviour, "probe");
    assert_eq!(info.status, ProcessStatus::Waiting);
    assert_eq!(info.parent, Some(parent.pid()));
    assert_eq!(info.registered_name.as_deref(), Some("the-kid"));
    assert_eq!(info.links, vec![linked.pid()]);
    assert_eq!(info.monitored_by, vec![watcher.pid()]);
    assert!(info.monitors.is_empty());
    assert!(info.trap_exit);
    assert!(info.traced);
    assert_eq!(info.mailbox_capacity, None);
    assert_eq!(info.mailbox_depth, 0);
    assert!(info.memory_bytes > 0);
    assert_eq!(node.info(watcher.pid()).unwrap().monitors, vec![kid]);
    assert_eq!(node.info(parent.pid()).unwrap().parent, None);
    assert!(!node.info(parent.pid()).unwrap().traced);

    let bounded = node.spawn::<Probe>(ProbeArgs::default(), SpawnOpts::default().bounded(7)).unwrap();
    assert_eq!(node.info(bounded.pid()).unwrap().mailbox_capacity, Some(7));
    // The info is JSON-ready (for the CLI / dashboard).
    let j = serde_json::to_value(node.info(kid).unwrap()).unwrap();
    assert_eq!(j["status"], "waiting");
    assert_eq!(j["pid"], kid.to_string());
}

/// received counts what was taken for handling (casts, calls); sent counts sends and calls a
/// process made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_counts_received_and_sent() {
    let node = start("t-info-counters");
    let x = probe(&node, ProbeArgs::default());
    let y = probe(&node, ProbeArgs::default());
    for n in 0..3 {
        x.send(Cmd::Push(n)).unwrap();
    }
    ask(&x, Req::Burst { to: y.pid(), start: 0, count: 5 }).await;
    ask(&x, Req::Call { to: y.pid(), req: Box::new(Req::Ping) }).await;
    let ix = node.info(x.pid()).unwrap();
    assert_eq!((ix.received, ix.sent), (5, 6));
    ask(&y, Req::Ping).await;
    let iy = node.info(y.pid()).unwrap();
    assert_eq!((iy.received, iy.sent), (7, 0));
}

/// status: `waiting` when idle, `running` while a handler runs (or awaits), `suspended` when
/// suspended — with the mailbox depth visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_status_and_depth() {
    let node = start("t-info-status");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs::with_events(&tx));
    assert_eq!(node.info(a.pid()).unwrap().status, ProcessStatus::Waiting);

    let b = probe(&node, ProbeArgs::default());
    node.suspend(b.pid()).unwrap();
    b.send(Cmd::Push(1)).unwrap();
    b.send(Cmd::Push(2)).unwrap();
    let ib = node.info(b.pid()).unwrap();
    assert_eq!((ib.status, ib.mailbox_depth), (ProcessStatus::Suspended, 2));
    node.resume(b.pid()).unwrap();
    ask(&b, Req::Ping).await;
    // The reply can arrive before the resumed runner has gone idle (status `running`): wait
    // for `waiting`, which must come without any further message.
    eventually("b goes idle", || node.info(b.pid()).unwrap().status == ProcessStatus::Waiting).await;
    let ib = node.info(b.pid()).unwrap();
    assert_eq!((ib.mailbox_depth, ib.received), (0, 3));

    a.send(Cmd::Hang).unwrap();
    a.send(Cmd::Push(1)).unwrap();
    assert_eq!(events.next().await, Event::Started { pid: a.pid() });
    let ia = node.info(a.pid()).unwrap();
    assert_eq!((ia.status, ia.mailbox_depth), (ProcessStatus::Running, 1));
    // Introspection of a busy process still answers (info is taken without its cooperation).
    assert_eq!(node.peek(a.pid(), 10).unwrap().len(), 1);
}

/// status is `exiting` while `terminate` runs (as documented), the process is still alive
/// then, and a kill still cuts a hanging `terminate` short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_status_exiting_while_terminate_runs() {
    let node = start("t-info-exiting");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs { hang_in_terminate: true, ..ProbeArgs::with_events(&tx) });
    a.send(Cmd::Stop(ExitReason::Shutdown)).unwrap();
    assert_eq!(events.next().await, Event::Terminate { pid: a.pid(), reason: ExitReason::Shutdown });
    assert_eq!(node.info(a.pid()).unwrap().status, ProcessStatus::Exiting);
    assert!(a.is_alive() && node.is_alive(a.pid()));
    let exited = node.wait_exit(a.pid());
    node.kill(a.pid());
    assert_eq!(within("exit", exited).await, ExitReason::Killed);
}

/// A peek returns at most `MAX_PEEK` messages, however many it asks for (G8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_is_bounded() {
    let node = start("t-peek-bound");
    let a = probe(&node, ProbeArgs::default());
    node.suspend(a.pid()).unwrap();
    let queued = soma::process::node::MAX_PEEK + 5;
    for _ in 0..queued {
        a.send(Cmd::Push(1)).unwrap();
    }
    assert_eq!(node.info(a.pid()).unwrap().mailbox_depth, queued);
    assert_eq!(node.peek(a.pid(), usize::MAX).unwrap().len(), soma::process::node::MAX_PEEK);
}

/// peek shows queued messages as JSON, oldest first, with kind, sender and correlation —
/// without consuming them: they are still handled, in order, after resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_shows_queued_messages_without_consuming_them() {
    let node = start("t-peek");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs::with_events(&tx));
    let sender = probe(&node, ProbeArgs::default());
    node.suspend(a.pid()).unwrap();
    a.send_with(Cmd::Push(1), Some(CorrelationId(5))).unwrap();
    sender.send(Cmd::Forward { to: a.pid(), n: 2 }).unwrap();
    ask(&sender, Req::Ping).await;
    node.send_json(a.pid(), json!({"Push": 3}), None).unwrap();
    let mut call = Box::pin(a.call(Req::Echo(4), CALL));
    assert!(is_pending(&mut call).await);

    let peek = node.peek(a.pid(), 100).unwrap();
    assert_eq!(
        peek,
        vec![
            json!({"kind": "cast", "from": null, "corr": 5, "msg": {"Push": 1}}),
            json!({"kind": "cast", "from": sender.pid().to_string(), "corr": null, "msg": {"Push": 2}}),
            json!({"kind": "cast", "from": null, "corr": null, "msg": {"Push": 3}}),
            json!({"kind": "call", "from": null, "corr": null, "msg": {"Echo": 4}}),
        ]
    );
    assert_eq!(node.peek(a.pid(), 2).unwrap(), peek[..2].to_vec());
    assert_eq!(node.peek(a.pid(), 100).unwrap(), peek, "peeking again shows the same");
    assert_eq!(node.info(a.pid()).unwrap().mailbox_depth, 4);

    node.resume(a.pid()).unwrap();
    assert_eq!(within("call", call).await, Ok(Reply::Num(4)));
    for n in 1..=3 {
        let Event::Handled { n: got, .. } = events.next().await else { panic!("expected Handled") };
        assert_eq!(got, n);
    }
    assert_eq!(node.peek(a.pid(), 100).unwrap(), Vec::<serde_json::Value>::new());
}

/// state() returns the snapshot of an opt-in behaviour, `NoSnapshot` otherwise, `NoProc` for
/// a dead process — and is served while the process is suspended (showing the state before
/// the queued messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_snapshot_is_opt_in_and_works_while_suspended() {
    let node = start("t-state");
    let counter = node.spawn::<Counter>(10, SpawnOpts::labeled("counter")).unwrap();
    assert_eq!(within("state", node.state(counter.pid(), CALL)).await, Ok(json!({"count": 10})));

    node.suspend(counter.pid()).unwrap();
    counter.send(5).unwrap();
    assert_eq!(within("state", node.state(counter.pid(), CALL)).await, Ok(json!({"count": 10})));
    assert_eq!(node.info(counter.pid()).unwrap().mailbox_depth, 1, "state() consumed no message");
    node.resume(counter.pid()).unwrap();
    assert_eq!(within("call", counter.call(CounterCall::Get, CALL)).await, Ok(15));
    assert_eq!(within("state", node.state(counter.pid(), CALL)).await, Ok(json!({"count": 15})));

    let hidden = probe(&node, ProbeArgs::default());
    assert_eq!(within("state", node.state(hidden.pid(), CALL)).await, Err(IntrospectError::NoSnapshot(hidden.pid())));
    let shown = probe(&node, ProbeArgs { expose: true, ..ProbeArgs::default() });
    shown.send(Cmd::Push(7)).unwrap();
    ask(&shown, Req::Ping).await;
    assert_eq!(within("state", node.state(shown.pid(), CALL)).await, Ok(json!({"log": [7]})));

    let exited = node.wait_exit(hidden.pid());
    node.kill(hidden.pid());
    within("exit", exited).await;
    assert_eq!(within("state", node.state(hidden.pid(), CALL)).await, Err(IntrospectError::NoProc(hidden.pid())));
    assert_eq!(node.info(hidden.pid()), Err(IntrospectError::NoProc(hidden.pid())));
    assert_eq!(node.peek(hidden.pid(), 1), Err(IntrospectError::NoProc(hidden.pid())));
}

/// state() of a process busy in a long handler times out rather than hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_of_a_busy_process_times_out() {
    let node = start("t-state-busy");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs { expose: true, ..ProbeArgs::with_events(&tx) });
    a.send(Cmd::Hang).unwrap();
    assert_eq!(events.next().await, Event::Started { pid: a.pid() });
    let short = Duration::from_millis(50);
    assert_eq!(within("state", node.state(a.pid(), short)).await, Err(IntrospectError::Timeout(a.pid(), short)));
}

/// processes() lists live processes in spawn order; tree() puts each under its (live) parent,
/// in spawn order, and promotes orphans to roots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_and_tree() {
    let node = start("t-tree");
    let root = node.spawn::<Probe>(ProbeArgs::default(), SpawnOpts::labeled("root")).unwrap();
    let spawn =
        |label: &str| Req::Spawn { label: Some(label.into()), how: How::Plain, init: InitMode::Ok, trap_exit: false };
    let (c1, _) = ask(&root, spawn("c1")).await.spawned();
    let (c2, _) = ask(&root, spawn("c2")).await.spawned();
    let c1_addr = node.addr::<Probe>(c1).unwrap();
    let (g, _) = ask(&c1_addr, spawn("g")).await.spawned();
    let other = node.spawn::<Counter>(0, SpawnOpts::labeled("other")).unwrap();
    assert_eq!(node.processes(), vec![root.pid(), c1, c2, g, other.pid()]);
    assert_eq!(node.process_count(), 5);

    let tree = node.tree();
    assert_eq!(tree.len(), 2);
    assert_eq!(
        (tree[0].pid, tree[0].label.as_deref(), tree[0].behaviour.as_str()),
        (root.pid(), Some("root"), "probe")
    );
    let kids: Vec<_> = tree[0].children.iter().map(|t| t.pid).collect();
    assert_eq!(kids, vec![c1, c2]);
    assert_eq!(tree[0].children[0].children.iter().map(|t| t.pid).collect::<Vec<_>>(), vec![g]);
    assert_eq!(tree[0].children[0].children[0].label.as_deref(), Some("g"));
    assert!(tree[0].children[1].children.is_empty());
    assert_eq!((tree[1].pid, tree[1].behaviour.as_str()), (other.pid(), "counter"));
    assert_eq!(tree[1].status, ProcessStatus::Waiting);

    let exited = node.wait_exit(c1);
    node.kill(c1);
    within("exit", exited).await;
    assert_eq!(node.processes(), vec![root.pid(), c2, g, other.pid()]);
    let roots: Vec<_> = node.tree().iter().map(|t| t.pid).collect();
    assert_eq!(roots, vec![root.pid(), g, other.pid()], "the orphan is a root now");
}

/// send_json / call_json decode into the behaviour's types and encode the reply; malformed
/// JSON gives a clear error naming the behaviour; dead PIDs give `no such process` / NoProc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_send_and_call_round_trip() {
    let node = start("t-json");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs::with_events(&tx));
    node.send_json(a.pid(), json!({"Push": 5}), Some(CorrelationId(9))).unwrap();
    assert_eq!(events.next().await, Event::Handled { pid: a.pid(), n: 5, from: None, corr: Some(CorrelationId(9)) });
    let call = |req| node.call_json(a.pid(), req, Some(CorrelationId(10)), CALL);
    assert_eq!(within("call_json", call(json!("Log"))).await, Ok(json!({"Log": [5]})));
    assert_eq!(within("call_json", call(json!({"Echo": 7}))).await, Ok(json!({"Num": 7})));
    assert_eq!(within("call_json", call(json!("Correlation"))).await, Ok(json!({"Corr": 10})));

    let err = node.send_json(a.pid(), json!({"Nope": 1}), None).unwrap_err();
    assert!(err.contains("probe") && err.contains("Nope"), "clear error: {err}");
    let err = within("call_json", call(json!({"Echo": "seven"}))).await.unwrap_err();
    assert!(matches!(&err, CallError::BadRequest(e) if e.contains("probe")), "{err:?}");
    let counter = node.spawn::<Counter>(0, SpawnOpts::default()).unwrap();
    assert!(node.send_json(counter.pid(), json!("not a number"), None).unwrap_err().contains("counter"));
    node.send_json(counter.pid(), json!(3), None).unwrap();
    assert_eq!(within("call_json", node.call_json(counter.pid(), json!("Get"), None, CALL)).await, Ok(json!(3)));
    assert_eq!(ask(&a, Req::Log).await.log(), vec![5], "malformed messages were not delivered");

    // A call_json whose handler crashes: Exited.
    let exited = node.wait_exit(a.pid());
    assert_eq!(within("call_json", call(json!({"Panic": "json"}))).await, Err(CallError::Exited));
    within("exit", exited).await;
    let err = node.send_json(a.pid(), json!({"Push": 1}), None).unwrap_err();
    assert!(err.contains("no such process"), "{err}");
    assert_eq!(within("call_json", call(json!("Ping"))).await, Err(CallError::NoProc));
}

/// call_json to a full bounded mailbox reports `Full` (not a decoding error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_json_to_full_mailbox_is_full() {
    let node = start("t-json-full");
    let a = node.spawn::<Probe>(ProbeArgs::default(), SpawnOpts::default().bounded(1)).unwrap();
    node.suspend(a.pid()).unwrap();
    a.send(Cmd::Push(1)).unwrap();
    let r = within("call_json", node.call_json(a.pid(), json!("Ping"), None, CALL)).await;
    assert_eq!(r, Err(CallError::Full));
}

/// The memory estimate includes the state's own heap estimate (`Behaviour::heap_size`) while
/// the process is idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_estimate_includes_state_heap() {
    let node = start("t-info-memory");
    let small = probe(&node, ProbeArgs::default());
    let big = probe(&node, ProbeArgs { heap_hint: 1 << 20, ..ProbeArgs::default() });
    let (ms, mb) = (node.info(small.pid()).unwrap().memory_bytes, node.info(big.pid()).unwrap().memory_bytes);
    assert!(ms > 0);
    assert_eq!(mb - ms, 1 << 20);
}

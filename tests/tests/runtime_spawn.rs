//! Spawn, `init`, labels and PIDs (G1).

use soma::{
    CallError, Down, ExitReason, IntrospectError, Node, NodeConfig, NodeError, Pid, SendError, SpawnError, SpawnOpts,
};
use soma_tests::*;
use tokio::sync::oneshot;

/// G1: every spawned PID has one textual form that parses back to the same PID (and the same
/// process), also through JSON; PIDs name their node and are never reused within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_spawned_pid_text_round_trips() {
    let node = start("t-g1-text");
    let addrs: Vec<_> = (0..3).map(|_| probe(&node, ProbeArgs::default())).collect();
    let pids: Vec<Pid> = addrs.iter().map(|a| a.pid()).collect();
    assert!(pids.windows(2).all(|w| w[0].serial() < w[1].serial()), "serials increase: {pids:?}");
    for (addr, pid) in addrs.iter().zip(&pids) {
        assert_eq!(pid.node(), node.id());
        let text = pid.to_string();
        assert!(text.starts_with("<t-g1-text."), "{text}");
        let parsed: Pid = text.parse().expect("pid text parses");
        assert_eq!(parsed, *pid);
        assert_eq!(parsed.to_string(), text);
        let json = serde_json::to_string(pid).unwrap();
        assert_eq!(serde_json::from_str::<Pid>(&json).unwrap(), *pid);
        // The parsed PID reaches the very same process.
        let again = node.addr::<Probe>(parsed).expect("parsed pid names a live probe");
        again.send(Cmd::Push(pid.serial())).unwrap();
        assert_eq!(ask(addr, Req::Log).await.log(), vec![pid.serial()]);
    }
}

/// G1: a PID of an earlier incarnation of a node (same name, other creation) never reaches a
/// process of a later one, even if the serials coincide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_pid_of_old_incarnation_never_reaches_new_one() {
    let old = Node::start(NodeConfig { creation: Some(1), ..NodeConfig::named("t-g1-incarnation") }).unwrap();
    let new = Node::start(NodeConfig { creation: Some(2), ..NodeConfig::named("t-g1-incarnation") }).unwrap();
    let stale = probe(&old, ProbeArgs::default()).pid();
    let fresh = probe(&new, ProbeArgs::default());
    assert_eq!(stale.serial(), fresh.pid().serial());
    assert_ne!(stale, fresh.pid());
    assert_ne!(stale.to_string(), fresh.pid().to_string());

    let dropped = new.dropped_messages();
    assert_eq!(new.send(stale, Cmd::Push(1)), Ok(()), "G2: no error for an unreachable pid");
    assert_eq!(new.dropped_messages(), dropped + 1);
    assert!(new.addr::<Probe>(stale).is_none());
    assert!(!new.is_alive(stale));
    assert_eq!(new.info(stale), Err(IntrospectError::NoProc(stale)));
    assert!(new.send_json(stale, serde_json::json!({"Push": 2}), None).is_err());
    assert_eq!(ask(&fresh, Req::Log).await.log(), Vec::<u64>::new());
}

/// `spawn` runs a non-awaiting `init` before it returns, and the label given at spawn is shown
/// by info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_runs_init_inline_and_label_shows_in_info() {
    let node = start("t-spawn-label");
    let addr = node
        .spawn::<Probe>(ProbeArgs { trap_exit: true, ..ProbeArgs::default() }, SpawnOpts::labeled("worker-1"))
        .unwrap();
    // init set trap_exit: visible at once, so init has run.
    let info = node.info(addr.pid()).unwrap();
    assert!(info.trap_exit);
    assert_eq!(info.label.as_deref(), Some("worker-1"));
    assert_eq!(info.behaviour, "probe");
    assert_eq!(info.parent, None);
    assert!(addr.is_alive() && node.is_alive(addr.pid()));
    assert_eq!(node.tree()[0].label.as_deref(), Some("worker-1"));
}

/// An `init` that fails while `spawn` runs it inline is a spawn error carrying the exit
/// reason (`crashed` with the error text, as OTP's `start_link` returns `{error, Reason}`),
/// and leaves no process behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_error_inline_is_a_spawn_error() {
    let node = start("t-init-error-inline");
    let args = ProbeArgs { init: InitMode::Fail("no config".into()), ..ProbeArgs::default() };
    match node.spawn::<Probe>(args, SpawnOpts::labeled("doomed")) {
        Err(SpawnError::Init(reason)) => assert_crashed_with(&reason, "no config"),
        other => panic!("expected SpawnError::Init, got {other:?}"),
    }
    let args = ProbeArgs { init: InitMode::Panic("init panicked".into()), ..ProbeArgs::default() };
    match node.spawn::<Probe>(args, SpawnOpts::default()) {
        Err(SpawnError::Init(reason)) => assert_crashed_with(&reason, "init panicked"),
        other => panic!("expected SpawnError::Init, got {other:?}"),
    }
    assert_eq!(node.process_count(), 0);
    assert!(node.tree().is_empty());
}

/// An `init` that fails after awaiting makes the running process exit `crashed` with the
/// error text; a monitor sees it; `terminate` does not run (there is no state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_error_exits_crashed_and_monitor_sees_it() {
    let node = start("t-init-error");
    let (tx, mut events) = Events::new();
    let watcher = probe(&node, ProbeArgs::with_events(&tx));
    let (gate_tx, gate) = oneshot::channel();
    let args =
        ProbeArgs { init: InitMode::Fail("no config".into()), init_gate: Some(gate), ..ProbeArgs::with_events(&tx) };
    let child = node.spawn::<Probe>(args, SpawnOpts::default()).expect("init still running: spawn succeeds");
    let mref = ask(&watcher, Req::Monitor(child.pid())).await.mref();
    let exited = node.wait_exit(child.pid());
    gate_tx.send(()).unwrap();
    let reason = within("exit", exited).await;
    assert_crashed_with(&reason, "no config");
    assert_eq!(
        events.next().await,
        Event::Down { pid: watcher.pid(), down: Down { monitor: mref, pid: child.pid(), reason } }
    );
    assert!(!child.is_alive());
    assert_eq!(child.call(Req::Ping, CALL).await, Err(CallError::NoProc));
    assert_eq!(ask(&watcher, Req::Ping).await, Reply::Pong);
    assert_eq!(events.drain(), vec![], "no terminate for a process whose init failed");
}

/// An inline `init` failure under `spawn_monitor` from a process: the spawn fails with the
/// reason, and the monitor set up before `init` has still delivered the `Down`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_error_under_spawn_monitor_fails_the_spawn_and_fires_the_monitor() {
    let node = start("t-init-error-monitor");
    let (tx, mut events) = Events::new();
    let parent = probe(&node, ProbeArgs::with_events(&tx));
    let req = Req::Spawn { label: None, how: How::Monitor, init: InitMode::Fail("no config".into()), trap_exit: false };
    let err = ask(&parent, req).await.err();
    assert!(err.contains("no config"), "{err}");
    let Event::Down { pid, down } = events.next().await else { panic!("expected Down") };
    assert_eq!(pid, parent.pid());
    assert_crashed_with(&down.reason, "no config");
    assert!(!node.is_alive(down.pid));
    assert_eq!(ask(&parent, Req::Ping).await, Reply::Pong, "the parent is unaffected");
}

/// An inline `init` failure is seen through a link as well: a trapping parent that used
/// spawn_link gets the crash as an exit signal (and the spawn fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_error_propagates_through_spawn_link() {
    let node = start("t-init-error-link");
    let (tx, mut events) = Events::new();
    let parent = probe(&node, ProbeArgs { trap_exit: true, ..ProbeArgs::with_events(&tx) });
    let req = Req::Spawn { label: None, how: How::Link, init: InitMode::Fail("bad args".into()), trap_exit: false };
    assert!(ask(&parent, req).await.err().contains("bad args"));
    let Event::Exit { pid, from, reason } = events.next().await else { panic!("expected Exit") };
    assert_eq!(pid, parent.pid());
    assert!(!node.is_alive(from));
    assert_crashed_with(&reason, "bad args");
}

/// An `init` that panics: the process exits `crashed` with the panic message (seen by the
/// spawn error and by the monitor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_panic_exits_crashed_with_panic_text() {
    let node = start("t-init-panic");
    let (tx, mut events) = Events::new();
    let parent = probe(&node, ProbeArgs::with_events(&tx));
    let req = Req::Spawn { label: None, how: How::Monitor, init: InitMode::Panic("kaboom 7".into()), trap_exit: false };
    assert!(ask(&parent, req).await.err().contains("kaboom 7"));
    let Event::Down { down, .. } = events.next().await else { panic!("expected Down") };
    assert_crashed_with(&down.reason, "kaboom 7");
    assert_eq!(ask(&parent, Req::Ping).await, Reply::Pong);
}

/// An `init` that awaits: `spawn` returns while it runs (status running), messages queue and
/// are handled once it finished, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_that_awaits_lets_spawn_return_and_messages_queue() {
    let node = start("t-init-await");
    let (tx, mut events) = Events::new();
    let (gate_tx, gate) = oneshot::channel();
    let addr = probe(&node, ProbeArgs { init_gate: Some(gate), ..ProbeArgs::with_events(&tx) });
    assert!(addr.is_alive());
    addr.send(Cmd::Push(1)).unwrap();
    addr.send(Cmd::Push(2)).unwrap();
    let info = node.info(addr.pid()).unwrap();
    assert_eq!(info.status, soma::ProcessStatus::Running);
    assert_eq!(info.mailbox_depth, 2);
    assert_eq!(info.received, 0);
    assert_eq!(events.drain(), vec![], "nothing handled before init finished");
    gate_tx.send(()).unwrap();
    assert_eq!(ask(&addr, Req::Log).await.log(), vec![1, 2]);
}

/// A kill reaches a process whose `init` is still awaiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_that_awaits_can_be_killed() {
    let node = start("t-init-kill");
    let (_gate_tx, gate) = oneshot::channel();
    let addr = probe(&node, ProbeArgs { init_gate: Some(gate), ..ProbeArgs::default() });
    let exited = node.wait_exit(addr.pid());
    node.kill(addr.pid());
    assert_eq!(within("exit", exited).await, ExitReason::Killed);
}

/// Spawn errors: a zero-capacity bounded mailbox is refused and leaves no process behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_rejects_zero_capacity_mailbox() {
    let node = start("t-spawn-zero");
    let r = node.spawn::<Probe>(ProbeArgs::default(), SpawnOpts::default().bounded(0));
    assert_eq!(r.unwrap_err(), SpawnError::ZeroCapacity);
    assert_eq!(node.process_count(), 0);
}

/// A node name outside `[A-Za-z0-9_.-]` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_start_rejects_bad_name() {
    assert!(matches!(Node::start(NodeConfig::named("bad name!")), Err(NodeError::Name(_))));
}

/// `Node::addr` is typed: the PID of a probe is not a `Counter`, and sending a wrong message
/// type by PID is an error naming the behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addr_lookup_and_send_by_pid_are_type_checked() {
    let node = start("t-spawn-typed");
    let p = probe(&node, ProbeArgs::default());
    assert!(node.addr::<Probe>(p.pid()).is_some());
    assert!(node.addr::<Counter>(p.pid()).is_none());
    assert_eq!(node.send(p.pid(), 5u64), Err(SendError::WrongType { pid: p.pid(), behaviour: "probe" }));
    node.send(p.pid(), Cmd::Push(5)).unwrap();
    assert_eq!(ask(&p, Req::Log).await.log(), vec![5]);
}

//! Links, exit signals and trapping exits.

use soma::ExitReason;
use soma_tests::*;

/// An abnormal exit propagates over a link: the linked, non-trapping process exits with the
/// same reason (and without `terminate`). Links show on both sides in info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_abnormal_exit_kills_linked_peer_with_same_reason() {
    let node = start("t-link-abnormal");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs::with_events(&tx));
    let b = probe(&node, ProbeArgs::default());
    assert_eq!(ask(&a, Req::Link(b.pid())).await, Reply::Ok);
    assert_eq!(node.info(a.pid()).unwrap().links, vec![b.pid()]);
    assert_eq!(node.info(b.pid()).unwrap().links, vec![a.pid()]);

    let (wa, wb) = (node.wait_exit(a.pid()), node.wait_exit(b.pid()));
    b.send(Cmd::Panic("linked crash".into())).unwrap();
    let rb = within("b exits", wb).await;
    assert_crashed_with(&rb, "linked crash");
    assert_eq!(within("a exits", wa).await, rb);
    assert_eq!(events.drain(), vec![], "a non-trapping process killed by a link runs no terminate");
}

/// A `killed` exit propagates over a link as `killed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_killed_propagates() {
    let node = start("t-link-killed");
    let a = probe(&node, ProbeArgs::default());
    let b = probe(&node, ProbeArgs::default());
    ask(&a, Req::Link(b.pid())).await;
    let wa = node.wait_exit(a.pid());
    node.kill(b.pid());
    assert_eq!(within("a exits", wa).await, ExitReason::Killed);
}

/// A `normal` exit does not kill linked peers; the link is gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_normal_exit_does_not_kill_peer() {
    let node = start("t-link-normal");
    let a = probe(&node, ProbeArgs::default());
    let b = probe(&node, ProbeArgs::default());
    ask(&a, Req::Link(b.pid())).await;
    let wb = node.wait_exit(b.pid());
    b.send(Cmd::Stop(ExitReason::Normal)).unwrap();
    assert_eq!(within("b exits", wb).await, ExitReason::Normal);
    // The exit signal (had there been one) was delivered during b's exit, before `wait_exit`
    // resolved, so this call would fail if it had killed a.
    assert_eq!(ask(&a, Req::Ping).await, Reply::Pong);
    assert!(node.info(a.pid()).unwrap().links.is_empty());
}

/// As in Erlang, only `normal` is ignored by a non-trapping linked process: `shutdown` (which
/// is not "abnormal" for restart decisions) still propagates over a link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_shutdown_exit_propagates_like_erlang() {
    let node = start("t-link-shutdown");
    let a = probe(&node, ProbeArgs::default());
    let b = probe(&node, ProbeArgs::default());
    ask(&a, Req::Link(b.pid())).await;
    let wa = node.wait_exit(a.pid());
    b.send(Cmd::Stop(ExitReason::Shutdown)).unwrap();
    assert_eq!(within("a exits", wa).await, ExitReason::Shutdown);
}

/// A trapping process gets exit signals as `handle_exit(from, reason)` — abnormal, normal and
/// from the node — and keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_exit_turns_exit_signals_into_handle_exit() {
    let node = start("t-link-trap");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs { trap_exit: true, ..ProbeArgs::with_events(&tx) });
    assert!(node.info(a.pid()).unwrap().trap_exit);
    let b = probe(&node, ProbeArgs::default());
    let c = probe(&node, ProbeArgs::default());
    ask(&a, Req::Link(b.pid())).await;
    ask(&a, Req::Link(c.pid())).await;

    let wb = node.wait_exit(b.pid());
    b.send(Cmd::Fail("b failed".into())).unwrap();
    let rb = within("b exits", wb).await;
    assert_eq!(events.next().await, Event::Exit { pid: a.pid(), from: b.pid(), reason: rb });

    c.send(Cmd::Stop(ExitReason::Normal)).unwrap();
    assert_eq!(events.next().await, Event::Exit { pid: a.pid(), from: c.pid(), reason: ExitReason::Normal });

    assert_eq!(ask(&a, Req::Ping).await, Reply::Pong);
    assert!(node.info(a.pid()).unwrap().links.is_empty());

    // Trapping can be switched off again: then an abnormal signal kills.
    ask(&a, Req::Trap(false)).await;
    assert!(!node.info(a.pid()).unwrap().trap_exit);
    let wa = node.wait_exit(a.pid());
    node.exit(a.pid(), ExitReason::Shutdown);
    assert_eq!(within("a exits", wa).await, ExitReason::Shutdown);
}

/// Linking to a dead PID gives an exit signal `noproc`: trapped, it is a `handle_exit`;
/// otherwise the process exits with `noproc`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_to_dead_pid_gives_noproc() {
    let node = start("t-link-noproc");
    let (tx, mut events) = Events::new();
    let dead = probe(&node, ProbeArgs::default());
    let w = node.wait_exit(dead.pid());
    node.kill(dead.pid());
    within("exit", w).await;

    let trapping = probe(&node, ProbeArgs { trap_exit: true, ..ProbeArgs::with_events(&tx) });
    ask(&trapping, Req::Link(dead.pid())).await;
    assert_eq!(events.next().await, Event::Exit { pid: trapping.pid(), from: dead.pid(), reason: ExitReason::NoProc });
    assert!(node.info(trapping.pid()).unwrap().links.is_empty());

    let plain = probe(&node, ProbeArgs::default());
    let w = node.wait_exit(plain.pid());
    plain.send(Cmd::Link(dead.pid())).unwrap();
    assert_eq!(within("exit", w).await, ExitReason::NoProc);
}

/// `unlink` removes the link on both sides: a later crash no longer propagates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlink_removes_the_link() {
    let node = start("t-unlink");
    let a = probe(&node, ProbeArgs::default());
    let b = probe(&node, ProbeArgs::default());
    ask(&a, Req::Link(b.pid())).await;
    ask(&a, Req::Unlink(b.pid())).await;
    assert!(node.info(a.pid()).unwrap().links.is_empty());
    assert!(node.info(b.pid()).unwrap().links.is_empty());
    let wb = node.wait_exit(b.pid());
    b.send(Cmd::Panic("alone".into())).unwrap();
    assert_crashed_with(&within("b exits", wb).await, "alone");
    assert_eq!(ask(&a, Req::Ping).await, Reply::Pong);
}

/// `spawn_link` links child and parent before the child's init; a child crash kills the
/// non-trapping parent with the same reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_link_links_child_and_parent() {
    let node = start("t-spawn-link");
    let parent = probe(&node, ProbeArgs::default());
    let req = Req::Spawn { label: Some("kid".into()), how: How::Link, init: InitMode::Ok, trap_exit: false };
    let (child, _) = ask(&parent, req).await.spawned();
    let info = node.info(child).unwrap();
    assert_eq!(info.parent, Some(parent.pid()));
    assert_eq!(info.links, vec![parent.pid()]);
    assert_eq!(node.info(parent.pid()).unwrap().links, vec![child]);

    let wp = node.wait_exit(parent.pid());
    node.send(child, Cmd::Panic("child crash".into())).unwrap();
    assert_crashed_with(&within("parent exits", wp).await, "child crash");
}

/// A child whose init fails under `spawn_link` takes its non-trapping parent down. The child's
/// exit signal arrives while the parent is still in the (non-awaiting) handler that spawned
/// it: the handler finishes — its call gets the spawn error as the reply — then the parent
/// exits with the child's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_link_init_failure_kills_non_trapping_parent() {
    let node = start("t-spawn-link-init");
    let parent = probe(&node, ProbeArgs::default());
    let wp = node.wait_exit(parent.pid());
    let req = Req::Spawn { label: None, how: How::Link, init: InitMode::Fail("cannot start".into()), trap_exit: false };
    assert!(ask(&parent, req).await.err().contains("cannot start"));
    assert_crashed_with(&within("parent exits", wp).await, "cannot start");
    assert_eq!(node.process_count(), 0);
}

/// An exit signal from the parent is not passed to a trapping child's `handle_exit`: the child
/// terminates with that reason (`terminate` runs), as OTP's gen_server does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_signal_from_parent_terminates_trapping_child() {
    let node = start("t-parent-exit");
    let (tx, mut events) = Events::new();
    let parent = probe(&node, ProbeArgs { trap_exit: true, ..ProbeArgs::with_events(&tx) });
    let req = Req::Spawn { label: None, how: How::Link, init: InitMode::Ok, trap_exit: true };
    let (child, _) = ask(&parent, req).await.spawned();
    assert!(node.info(child).unwrap().trap_exit);

    let wc = node.wait_exit(child);
    parent.send(Cmd::ExitTo { to: child, reason: ExitReason::Shutdown }).unwrap();
    assert_eq!(within("child exits", wc).await, ExitReason::Shutdown);
    assert_eq!(events.next().await, Event::Terminate { pid: child, reason: ExitReason::Shutdown });
    // The (trapping) parent then sees its linked child's exit as a message.
    assert_eq!(events.next().await, Event::Exit { pid: parent.pid(), from: child, reason: ExitReason::Shutdown });
    assert_eq!(ask(&parent, Req::Ping).await, Reply::Pong);
}

/// When a parent crashes, its linked trapping child terminates with the parent's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_crash_terminates_trapping_linked_child() {
    let node = start("t-parent-crash");
    let (tx, mut events) = Events::new();
    let parent = probe(&node, ProbeArgs::with_events(&tx));
    let req = Req::Spawn { label: None, how: How::Link, init: InitMode::Ok, trap_exit: true };
    let (child, _) = ask(&parent, req).await.spawned();
    let wc = node.wait_exit(child);
    parent.send(Cmd::Panic("parent down".into())).unwrap();
    let rc = within("child exits", wc).await;
    assert_crashed_with(&rc, "parent down");
    assert_eq!(events.drain(), vec![Event::Terminate { pid: child, reason: rc }]);
}

/// `Node::exit(pid, normal)` (and `ctx.exit(pid, normal)`) is ignored by a non-trapping
/// process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_normal_signal_is_ignored_by_non_trapping() {
    let node = start("t-exit-normal-ignored");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs::with_events(&tx));
    let other = probe(&node, ProbeArgs::default());
    node.exit(a.pid(), ExitReason::Normal);
    other.send(Cmd::ExitTo { to: a.pid(), reason: ExitReason::Normal }).unwrap();
    ask(&other, Req::Ping).await;
    assert_eq!(ask(&a, Req::Ping).await, Reply::Pong);
    assert!(a.is_alive());
    assert_eq!(events.drain(), vec![]);
}

/// A kill cannot be trapped: a trapping process exits `killed`, with no `handle_exit` and no
/// `terminate`; its linked trapping peer sees `killed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_is_untrappable() {
    let node = start("t-kill-untrappable");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs { trap_exit: true, ..ProbeArgs::with_events(&tx) });
    let peer = probe(&node, ProbeArgs { trap_exit: true, ..ProbeArgs::with_events(&tx) });
    ask(&peer, Req::Link(a.pid())).await;
    let wa = node.wait_exit(a.pid());
    node.kill(a.pid());
    assert_eq!(within("a exits", wa).await, ExitReason::Killed);
    assert_eq!(events.next().await, Event::Exit { pid: peer.pid(), from: a.pid(), reason: ExitReason::Killed });
    ask(&peer, Req::Ping).await;
    let at_a: Vec<Event> = events.drain().into_iter().filter(|e| e.pid() == a.pid()).collect();
    assert_eq!(at_a, vec![]);
}

/// The node is every process's ultimate parent: its exit signal terminates a trapping process
/// (`terminate` runs) instead of reaching `handle_exit` — how `Node::exit`/`shutdown` stop
/// top-level supervisors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_signal_from_the_node_terminates_a_trapping_process() {
    let node = start("t-node-exit-trap");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs { trap_exit: true, ..ProbeArgs::with_events(&tx) });
    let wa = node.wait_exit(a.pid());
    node.exit(a.pid(), ExitReason::Shutdown);
    assert_eq!(within("a exits", wa).await, ExitReason::Shutdown);
    assert_eq!(events.next().await, Event::Terminate { pid: a.pid(), reason: ExitReason::Shutdown });
}

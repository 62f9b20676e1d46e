//! Node shutdown.

use std::time::Duration;

use soma::{ExitReason, SpawnError, SpawnOpts};
use soma_tests::*;

/// `Node::shutdown` stops everything with `shutdown`: idle and busy (awaiting) top-level
/// processes, linked children (a trapping child terminates, running `terminate`); no process
/// needs the kill fallback (the shutdown timeout is far beyond the guard). Afterwards the
/// node is empty and refuses to spawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_everything() {
    let node = start("t-shutdown");
    let (tx, mut events) = Events::new();
    let idle = probe(&node, ProbeArgs::default());
    let busy = probe(&node, ProbeArgs::with_events(&tx));
    busy.send(Cmd::SleepHour).unwrap();
    assert_eq!(events.next().await, Event::Started { pid: busy.pid() });
    let parent = probe(&node, ProbeArgs::with_events(&tx));
    let link = |trap_exit| Req::Spawn { label: None, how: How::Link, init: InitMode::Ok, trap_exit };
    let (child, _) = ask(&parent, link(false)).await.spawned();
    let (trapping_child, _) = ask(&parent, link(true)).await.spawned();
    let registered =
        node.spawn::<Counter>(0, SpawnOpts { register: Some("c".into()), ..SpawnOpts::default() }).unwrap();

    let pids = node.processes();
    assert_eq!(pids.len(), 6);
    let waits: Vec<_> = pids.iter().map(|p| node.wait_exit(*p)).collect();
    within("shutdown", node.shutdown(Duration::from_secs(600))).await;
    for (pid, w) in pids.iter().zip(waits) {
        assert_eq!(within("exit", w).await, ExitReason::Shutdown, "{pid}");
    }
    assert_eq!(node.process_count(), 0);
    assert!(node.processes().is_empty() && node.tree().is_empty());
    assert_eq!(node.whereis("c"), None);
    assert!(!idle.is_alive() && !registered.is_alive() && !node.is_alive(child));
    assert_eq!(events.drain(), vec![Event::Terminate { pid: trapping_child, reason: ExitReason::Shutdown }]);
    assert_eq!(node.spawn::<Probe>(ProbeArgs::default(), SpawnOpts::default()).unwrap_err(), SpawnError::ShuttingDown);
}

/// What does not stop on the `shutdown` signal is killed once the shutdown timeout expires:
/// a trapping top-level process whose `terminate` never returns (the node's signal makes it
/// terminate, as a parent's would) and an unlinked child, which gets no signal at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kills_what_is_left_after_the_timeout() {
    let node = start("t-shutdown-kill");
    let (tx, mut events) = Events::new();
    let stubborn = probe(&node, ProbeArgs { trap_exit: true, hang_in_terminate: true, ..ProbeArgs::with_events(&tx) });
    let parent = probe(&node, ProbeArgs::default());
    let req = Req::Spawn { label: None, how: How::Plain, init: InitMode::Ok, trap_exit: false };
    let (orphan, _) = ask(&parent, req).await.spawned();
    let (ws, wp, wo) = (node.wait_exit(stubborn.pid()), node.wait_exit(parent.pid()), node.wait_exit(orphan));
    within("shutdown", node.shutdown(Duration::from_millis(100))).await;
    assert_eq!(within("exit", ws).await, ExitReason::Killed);
    assert_eq!(within("exit", wp).await, ExitReason::Shutdown);
    assert_eq!(within("exit", wo).await, ExitReason::Killed);
    assert_eq!(
        events.drain(),
        vec![Event::Terminate { pid: stubborn.pid(), reason: ExitReason::Shutdown }],
        "the trapping process started terminating on the shutdown signal; the kill cut it short"
    );
    assert_eq!(node.process_count(), 0);
}

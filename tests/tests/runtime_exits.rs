//! Exit reasons, `terminate`, crash isolation and kills.

use soma::{ExitReason, ProcessStatus};
use soma_tests::*;

fn terminates(events: &[Event]) -> Vec<ExitReason> {
    events
        .iter()
        .filter_map(|e| if let Event::Terminate { reason, .. } = e { Some(reason.clone()) } else { None })
        .collect()
}

/// `ctx.stop(normal)` ends the process with `normal` after the handler returns, running
/// `terminate` with that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_normal_via_stop_runs_terminate() {
    let node = start("t-exit-normal");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs::with_events(&tx));
    let exited = node.wait_exit(a.pid());
    a.send(Cmd::Stop(ExitReason::Normal)).unwrap();
    a.send(Cmd::Push(1)).unwrap();
    assert_eq!(within("exit", exited).await, ExitReason::Normal);
    assert_eq!(events.drain(), vec![Event::Terminate { pid: a.pid(), reason: ExitReason::Normal }]);
    assert!(!a.is_alive() && !node.is_alive(a.pid()));
    assert_eq!(node.process_count(), 0);
}

/// `ctx.stop(shutdown)` ends the process with `shutdown`; `terminate` runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_shutdown_via_stop_runs_terminate() {
    let node = start("t-exit-stop-shutdown");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs::with_events(&tx));
    let exited = node.wait_exit(a.pid());
    a.send(Cmd::Stop(ExitReason::Shutdown)).unwrap();
    assert_eq!(within("exit", exited).await, ExitReason::Shutdown);
    assert_eq!(terminates(&events.drain()), vec![ExitReason::Shutdown]);
}

/// An exit signal `shutdown` stops a non-trapping process with that reason and — as
/// `Node::exit` documents (and as in OTP) — without `terminate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_signal_shutdown_stops_non_trapping_without_terminate() {
    let node = start("t-exit-signal-shutdown");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs::with_events(&tx));
    let exited = node.wait_exit(a.pid());
    node.exit(a.pid(), ExitReason::Shutdown);
    assert_eq!(within("exit", exited).await, ExitReason::Shutdown);
    assert_eq!(events.drain(), vec![]);
}

/// `Node::kill` stops an idle process with `killed`; `terminate` does not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_killed_does_not_run_terminate() {
    let node = start("t-exit-killed");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs::with_events(&tx));
    let exited = node.wait_exit(a.pid());
    node.kill(a.pid());
    assert_eq!(within("exit", exited).await, ExitReason::Killed);
    assert_eq!(events.drain(), vec![], "no terminate after a kill");
}

/// A handler panic crashes the process with the panic message and its location as the reason
/// text (both `String` and `&str` payloads); `terminate` does not run after a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_crashed_carries_the_panic_message() {
    let node = start("t-exit-panic");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs::with_events(&tx));
    let exited = node.wait_exit(a.pid());
    a.send(Cmd::Panic("boom 42".into())).unwrap();
    let reason = within("exit", exited).await;
    assert_crashed_with(&reason, "boom 42");
    assert_eq!(reason.kind(), "crashed");
    // The panic hook soma installs adds where the panic happened (the probe's handler).
    assert_crashed_with(&reason, "(at tests/src/lib.rs:");

    let b = probe(&node, ProbeArgs::with_events(&tx));
    let exited = node.wait_exit(b.pid());
    b.send(Cmd::PanicStatic).unwrap();
    assert_crashed_with(&within("exit", exited).await, "static boom");
    assert_eq!(events.drain(), vec![], "no terminate after a panic");
}

/// A handler returning `Err` crashes the process with the error text; `terminate` runs with
/// that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_crashed_carries_the_handler_error_and_runs_terminate() {
    let node = start("t-exit-err");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs::with_events(&tx));
    let exited = node.wait_exit(a.pid());
    a.send(Cmd::Fail("disk full".into())).unwrap();
    let reason = within("exit", exited).await;
    assert_crashed_with(&reason, "disk full");
    assert_eq!(terminates(&events.drain()), vec![reason]);
}

/// A panic crashes only that process: its neighbours (including one it was messaging and a
/// process mid-call) keep their state and keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_crashes_only_that_process() {
    let node = start("t-exit-isolation");
    let left = probe(&node, ProbeArgs::default());
    let victim = probe(&node, ProbeArgs::default());
    let right = probe(&node, ProbeArgs::default());
    left.send(Cmd::Push(1)).unwrap();
    right.send(Cmd::Push(2)).unwrap();
    victim.send(Cmd::Forward { to: right.pid(), n: 3 }).unwrap();
    let exited = node.wait_exit(victim.pid());
    victim.send(Cmd::Panic("only me".into())).unwrap();
    assert_crashed_with(&within("exit", exited).await, "only me");

    assert_eq!(ask(&left, Req::Log).await.log(), vec![1]);
    assert_eq!(ask(&right, Req::Log).await.log(), vec![2, 3]);
    assert_eq!(node.processes(), vec![left.pid(), right.pid()]);

    // A panic inside a call handler is isolated in the same way.
    let caller = probe(&node, ProbeArgs::default());
    let left_exited = node.wait_exit(left.pid());
    let req = Req::Call { to: left.pid(), req: Box::new(Req::Panic("in call".into())) };
    assert_eq!(ask(&caller, req).await, Reply::Err("Exited".into()));
    assert_crashed_with(&within("exit", left_exited).await, "in call");
    assert_eq!(ask(&right, Req::Log).await.log(), vec![2, 3]);
    assert_eq!(ask(&caller, Req::Ping).await, Reply::Pong);
    assert_eq!(node.processes(), vec![right.pid(), caller.pid()]);
}

/// `Node::kill` interrupts a handler that is awaiting a one-hour sleep: the process exits
/// `killed` promptly (far below the hour; bounded by the guard), without `terminate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_interrupts_a_sleeping_handler() {
    let node = start("t-kill-sleep");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs::with_events(&tx));
    a.send(Cmd::SleepHour).unwrap();
    assert_eq!(events.next().await, Event::Started { pid: a.pid() });
    assert_eq!(node.info(a.pid()).unwrap().status, ProcessStatus::Running);
    let exited = node.wait_exit(a.pid());
    node.kill(a.pid());
    assert_eq!(within("exit", exited).await, ExitReason::Killed);
    assert_eq!(events.drain(), vec![]);
}

/// `Node::kill` interrupts a handler awaiting a future that never completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_interrupts_a_never_completing_handler() {
    let node = start("t-kill-pending");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs::with_events(&tx));
    a.send(Cmd::Hang).unwrap();
    a.send(Cmd::Push(1)).unwrap();
    assert_eq!(events.next().await, Event::Started { pid: a.pid() });
    let exited = node.wait_exit(a.pid());
    node.kill(a.pid());
    assert_eq!(within("exit", exited).await, ExitReason::Killed);
    assert_eq!(events.drain(), vec![], "the queued message is not handled after the kill");
}

/// A non-trappable kill sent by another process (`ctx.kill`) works the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_from_a_process() {
    let node = start("t-kill-ctx");
    let (tx, mut events) = Events::new();
    let killer = probe(&node, ProbeArgs::default());
    let a = probe(&node, ProbeArgs { trap_exit: true, ..ProbeArgs::with_events(&tx) });
    a.send(Cmd::Hang).unwrap();
    assert_eq!(events.next().await, Event::Started { pid: a.pid() });
    let exited = node.wait_exit(a.pid());
    killer.send(Cmd::KillTo(a.pid())).unwrap();
    assert_eq!(within("exit", exited).await, ExitReason::Killed);
    assert_eq!(events.drain(), vec![]);
    assert_eq!(ask(&killer, Req::Ping).await, Reply::Pong);
}

/// An exit signal (not only a kill) also interrupts a handler that is awaiting: a non-trapping
/// process in a one-hour sleep exits with the signal's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_signal_interrupts_an_awaiting_handler() {
    let node = start("t-exit-interrupt");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs::with_events(&tx));
    a.send(Cmd::SleepHour).unwrap();
    assert_eq!(events.next().await, Event::Started { pid: a.pid() });
    let exited = node.wait_exit(a.pid());
    node.exit(a.pid(), ExitReason::crashed("operator"));
    assert_eq!(within("exit", exited).await, ExitReason::crashed("operator"));
}

/// `wait_exit` gives every waiter the reason, and `noproc` for a process that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_exit_reports_the_reason_to_every_waiter() {
    let node = start("t-wait-exit");
    let a = probe(&node, ProbeArgs::default());
    let (w1, w2) = (node.wait_exit(a.pid()), node.wait_exit(a.pid()));
    a.send(Cmd::Fail("why".into())).unwrap();
    let (r1, r2) = within("exits", async { tokio::join!(w1, w2) }).await;
    assert_crashed_with(&r1, "why");
    assert_eq!(r1, r2);
    assert_eq!(within("exit", node.wait_exit(a.pid())).await, ExitReason::NoProc);
}

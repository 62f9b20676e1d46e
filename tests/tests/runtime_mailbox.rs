//! Bounded mailboxes and backpressure (G8); suspend and resume.

use soma::{CallError, ExitReason, ProcessStatus, SendError, SpawnOpts};
use soma_tests::*;
use tokio::sync::oneshot;

fn bounded(node: &soma::Node, cap: usize, args: ProbeArgs) -> soma::Addr<Probe> {
    node.spawn::<Probe>(args, SpawnOpts::default().bounded(cap)).unwrap()
}

/// G8: a suspended process with a `Bounded(3)` mailbox accepts 3 messages; the 4th send is
/// refused with `Full` (as are calls, JSON sends and sends by PID); after resume the accepted
/// ones are handled in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g8_bounded_mailbox_refuses_when_full() {
    let node = start("t-g8-full");
    let (tx, mut events) = Events::new();
    let a = bounded(&node, 3, ProbeArgs::with_events(&tx));
    node.suspend(a.pid()).unwrap();
    for n in 0..3 {
        assert_eq!(a.send(Cmd::Push(n)), Ok(()));
    }
    assert_eq!(a.send(Cmd::Push(3)), Err(SendError::Full(a.pid())));
    assert_eq!(node.send(a.pid(), Cmd::Push(3)), Err(SendError::Full(a.pid())));
    assert_eq!(within("call", a.call(Req::Ping, CALL)).await, Err(CallError::Full));
    assert_eq!(node.send_json(a.pid(), serde_json::json!({"Push": 3}), None), Err("mailbox full".into()));
    let info = node.info(a.pid()).unwrap();
    assert_eq!((info.mailbox_depth, info.mailbox_capacity), (3, Some(3)));

    node.resume(a.pid()).unwrap();
    for n in 0..3 {
        assert_eq!(events.next().await, Event::Handled { pid: a.pid(), n, from: None, corr: None });
    }
    // The batch the runner took counts against the bound until it comes back for more (here:
    // goes idle); then there is room for three again.
    eventually("the process goes idle", || node.info(a.pid()).unwrap().status == ProcessStatus::Waiting).await;
    node.suspend(a.pid()).unwrap();
    for n in 3..6 {
        assert_eq!(a.send(Cmd::Push(n)), Ok(()));
    }
    assert_eq!(a.send(Cmd::Push(6)), Err(SendError::Full(a.pid())));
}

/// G8: `send_wait` on a full mailbox blocks (it stays pending, the message is not queued)
/// until the process drains after `resume`; then it completes and the message is handled
/// after the earlier ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g8_send_wait_blocks_until_room() {
    let node = start("t-g8-send-wait");
    let (tx, mut events) = Events::new();
    let a = bounded(&node, 2, ProbeArgs::with_events(&tx));
    node.suspend(a.pid()).unwrap();
    a.send(Cmd::Push(0)).unwrap();
    a.send(Cmd::Push(1)).unwrap();
    let mut waiting = Box::pin(a.send_wait(Cmd::Push(99)));
    assert!(is_pending(&mut waiting).await);
    assert!(is_pending(&mut waiting).await, "still blocked: nothing was drained");
    assert_eq!(node.info(a.pid()).unwrap().mailbox_depth, 2, "the waiting message is not queued");

    node.resume(a.pid()).unwrap();
    within("send_wait completes after resume", waiting).await;
    for n in [0, 1, 99] {
        assert_eq!(events.next().await, Event::Handled { pid: a.pid(), n, from: None, corr: None });
    }
}

/// G8: a producer process using `send_wait` into a consumer with a `Bounded(2)` mailbox is
/// held back while the consumer is suspended, and everything arrives in order afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g8_send_wait_from_a_process_applies_backpressure_in_order() {
    let node = start("t-g8-backpressure");
    let (tx, mut events) = Events::new();
    let consumer = bounded(&node, 2, ProbeArgs::with_events(&tx));
    let producer = probe(&node, ProbeArgs::default());
    node.suspend(consumer.pid()).unwrap();
    let p = producer.clone();
    let to = consumer.pid();
    let mut burst = tokio::spawn(async move { p.call(Req::BurstWait { to, start: 0, count: 200 }, CALL).await });
    eventually("the consumer's mailbox fills up", || node.info(consumer.pid()).unwrap().mailbox_depth == 2).await;
    assert!(is_pending(&mut burst).await, "the producer is blocked on the full mailbox");
    assert_eq!(node.info(consumer.pid()).unwrap().mailbox_depth, 2, "never above the bound");

    node.resume(consumer.pid()).unwrap();
    assert_eq!(within("burst", burst).await.unwrap(), Ok(Reply::Ok));
    for n in 0..200 {
        assert_eq!(
            events.next().await,
            Event::Handled { pid: consumer.pid(), n, from: Some(producer.pid()), corr: None }
        );
    }
}

/// G8: an unbounded mailbox is never `Full`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g8_unbounded_mailbox_is_never_full() {
    let node = start("t-g8-unbounded");
    let a = probe(&node, ProbeArgs::default());
    node.suspend(a.pid()).unwrap();
    for n in 0..10_000 {
        assert_eq!(a.send(Cmd::Push(n)), Ok(()));
    }
    let info = node.info(a.pid()).unwrap();
    assert_eq!((info.mailbox_depth, info.mailbox_capacity), (10_000, None));
    node.resume(a.pid()).unwrap();
    assert_eq!(ask(&a, Req::Log).await.log(), (0..10_000).collect::<Vec<_>>());
}

/// G8: system notifications — a monitor's `Down` and a trapped exit signal — are never
/// refused by a full bounded mailbox; they queue behind the messages and are handled after
/// resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g8_down_and_exit_signals_bypass_a_full_mailbox() {
    let node = start("t-g8-signals");
    let (tx, mut events) = Events::new();
    let w = bounded(&node, 1, ProbeArgs { trap_exit: true, ..ProbeArgs::with_events(&tx) });
    let t1 = probe(&node, ProbeArgs::default());
    let t2 = probe(&node, ProbeArgs::default());
    let mref = ask(&w, Req::Monitor(t1.pid())).await.mref();
    ask(&w, Req::Link(t2.pid())).await;

    node.suspend(w.pid()).unwrap();
    w.send(Cmd::Push(1)).unwrap();
    assert_eq!(w.send(Cmd::Push(2)), Err(SendError::Full(w.pid())));
    // One after the other, so the Down is queued before the exit signal.
    let e1 = node.wait_exit(t1.pid());
    node.kill(t1.pid());
    within("t1 exits", e1).await;
    let e2 = node.wait_exit(t2.pid());
    node.kill(t2.pid());
    within("t2 exits", e2).await;

    let peek = node.peek(w.pid(), 10).unwrap();
    let kinds: Vec<&str> = peek.iter().map(|m| m["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["cast", "down", "exit"]);
    assert_eq!(node.info(w.pid()).unwrap().mailbox_depth, 3);

    node.resume(w.pid()).unwrap();
    assert_eq!(events.next().await, Event::Handled { pid: w.pid(), n: 1, from: None, corr: None });
    assert_eq!(
        events.next().await,
        Event::Down { pid: w.pid(), down: soma::Down { monitor: mref, pid: t1.pid(), reason: ExitReason::Killed } }
    );
    assert_eq!(events.next().await, Event::Exit { pid: w.pid(), from: t2.pid(), reason: ExitReason::Killed });
}

/// G8: a suspension that interrupts a batch the runner already took from the mailbox does not
/// let the mailbox grow beyond its bound: the unhandled rest of the batch still counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g8_suspension_mid_batch_keeps_the_bound() {
    const HEAP_MARK: usize = 1 << 30;
    let node = start("t-g8-mid-batch");
    let (tx, mut events) = Events::new();
    let (hold_tx, hold) = oneshot::channel();
    let a = bounded(&node, 3, ProbeArgs { hold: Some(hold), heap_hint: HEAP_MARK, ..ProbeArgs::with_events(&tx) });
    node.suspend(a.pid()).unwrap();
    a.send(Cmd::Hold).unwrap();
    a.send(Cmd::Push(1)).unwrap();
    a.send(Cmd::Push(2)).unwrap();
    node.resume(a.pid()).unwrap();
    // The runner took all three as one batch and is inside `Hold`.
    assert_eq!(events.next().await, Event::Started { pid: a.pid() });
    node.suspend(a.pid()).unwrap();
    hold_tx.send(()).unwrap();
    assert_eq!(events.next().await, Event::Handled { pid: a.pid(), n: HOLD_DONE, from: None, corr: None });
    // The runner now sees the suspension and parks the state in the cell (info's memory
    // estimate includes the state's heap only while it is parked).
    eventually("the runner parks", || node.info(a.pid()).unwrap().memory_bytes >= HEAP_MARK).await;
    assert_eq!(node.info(a.pid()).unwrap().mailbox_depth, 2);

    let accepted = (10..20).filter(|&n| a.send(Cmd::Push(n)).is_ok()).count();
    assert_eq!(accepted, 1, "room for exactly one more message");
    assert_eq!(node.info(a.pid()).unwrap().mailbox_depth, 3);
    node.resume(a.pid()).unwrap();
    for n in [1, 2, 10] {
        assert_eq!(events.next().await, Event::Handled { pid: a.pid(), n, from: None, corr: None });
    }
}

/// Suspend/resume: messages (from outside and from a process) queue while suspended, status
/// is `suspended` with the queue depth visible, and after resume they are handled in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_queues_messages_and_resume_handles_them_in_order() {
    let node = start("t-suspend");
    let a = probe(&node, ProbeArgs::default());
    let sender = probe(&node, ProbeArgs::default());
    assert_eq!(node.info(a.pid()).unwrap().status, ProcessStatus::Waiting);
    node.suspend(a.pid()).unwrap();
    for n in 0..5 {
        a.send(Cmd::Push(n)).unwrap();
    }
    ask(&sender, Req::Burst { to: a.pid(), start: 5, count: 5 }).await;
    let info = node.info(a.pid()).unwrap();
    assert_eq!(info.status, ProcessStatus::Suspended);
    assert_eq!(info.mailbox_depth, 10);
    assert_eq!(info.received, 0);
    node.resume(a.pid()).unwrap();
    assert_eq!(ask(&a, Req::Log).await.log(), (0..10).collect::<Vec<_>>());
    // The reply can arrive before the resumed runner has gone idle: wait for it to do so.
    let idle = || node.info(a.pid()).unwrap().status == ProcessStatus::Waiting;
    eventually("the process goes idle", idle).await;
    // Resuming a process that is not suspended is harmless.
    node.resume(a.pid()).unwrap();
    assert_eq!(ask(&a, Req::Echo(1)).await, Reply::Num(1));
}

/// A suspended process can still be killed, and still obeys exit signals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_process_can_be_killed_or_signalled() {
    let node = start("t-suspend-kill");
    let a = probe(&node, ProbeArgs::default());
    node.suspend(a.pid()).unwrap();
    a.send(Cmd::Push(1)).unwrap();
    let exited = node.wait_exit(a.pid());
    node.kill(a.pid());
    assert_eq!(within("exit", exited).await, ExitReason::Killed);

    let b = probe(&node, ProbeArgs::default());
    node.suspend(b.pid()).unwrap();
    let exited = node.wait_exit(b.pid());
    node.exit(b.pid(), ExitReason::Shutdown);
    assert_eq!(within("exit", exited).await, ExitReason::Shutdown);
}

/// No message is stranded when a resume races with a runner that saw the suspension while
/// part of its batch was still unhandled: after the final resume every message is handled,
/// in order, without any further message to wake the process. (Regression test: the runner
/// used to go idle with the rest of its batch in hand when the resume slipped in between its
/// flag check and going idle; the spin varies where the resume lands.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suspend_resume_race_strands_no_message() {
    let node = start("t-suspend-race");
    for round in 0..20_000u64 {
        let (tx, mut events) = Events::new();
        let (hold_tx, hold) = oneshot::channel();
        let a = probe(&node, ProbeArgs { hold: Some(hold), ..ProbeArgs::with_events(&tx) });
        let pid = a.pid();
        node.suspend(pid).unwrap();
        a.send(Cmd::Hold).unwrap();
        for i in 0..3 {
            a.send(Cmd::Push(i)).unwrap();
        }
        node.resume(pid).unwrap();
        // The runner holds all four as one batch and is inside `Hold`.
        assert_eq!(events.next().await, Event::Started { pid });
        node.suspend(pid).unwrap();
        hold_tx.send(()).unwrap();
        for _ in 0..round % 64 {
            std::hint::spin_loop();
        }
        node.resume(pid).unwrap();
        assert_eq!(events.next().await, Event::Handled { pid, n: HOLD_DONE, from: None, corr: None });
        for i in 0..3 {
            assert_eq!(events.next().await, Event::Handled { pid, n: i, from: None, corr: None }, "round {round}");
        }
        node.kill(pid);
    }
}

/// Where the last `resume` lands in [`suspend_resume_pinned_interleavings_strand_no_message`].
#[derive(Debug, Clone, Copy)]
enum ResumeAt {
    /// While the runner is still inside the held handler: it never sees the suspension.
    BeforeRelease,
    /// After the runner saw the suspension and parked its state; before that, while the
    /// handler was held, the process was suspended, resumed (a resume that finds the runner
    /// alive, so it spawns nothing) and suspended again.
    AfterParkFlapped,
    /// After the runner saw the suspension and parked its state.
    AfterPark,
}

/// Deterministic companion of [`suspend_resume_race_strands_no_message`]: the interleavings
/// of suspend, send and resume around a runner in the middle of a batch that can be pinned
/// from outside are forced one by one, with the runner held inside a `Hold` handler by a
/// oneshot the test owns (no sleeps). For each: the rest of the batch in hand is empty or not;
/// messages are sent while suspended or not — including sends that land between the
/// suspension and the runner going idle, and sends (from outside and from another process)
/// while it is parked. After the final resume, with nothing else sent to wake the process,
/// everything is handled exactly once and in order; nothing is handled while suspended.
///
/// Not pinnable with the public API: a resume landing *inside* the runner's transition to
/// idle (after its flag check saw the suspension, before `try_idle` takes the mailbox lock),
/// the window of the original bug (it stranded the rest of the batch when the mailbox queue
/// was empty: `in_batch` > 0 and no sends). `AfterPark` resumes right after the park, i.e. at
/// the edge of that window; the probabilistic test above sweeps the window itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_resume_pinned_interleavings_strand_no_message() {
    const HEAP_MARK: usize = 1 << 30;
    let node = start("t-suspend-pinned");
    let sender = probe(&node, ProbeArgs::default());
    for resume_at in [ResumeAt::BeforeRelease, ResumeAt::AfterParkFlapped, ResumeAt::AfterPark] {
        for in_batch in [0u64, 3] {
            for sends in [false, true] {
                let case = format!("{resume_at:?}, {in_batch} more in the batch, sends while suspended: {sends}");
                let (tx, mut events) = Events::new();
                let (hold_tx, hold) = oneshot::channel();
                let args = ProbeArgs { hold: Some(hold), heap_hint: HEAP_MARK, ..ProbeArgs::with_events(&tx) };
                let a = probe(&node, args);
                let pid = a.pid();
                let outside = |n: u64| Event::Handled { pid, n, from: None, corr: None };
                let mut expected = vec![outside(HOLD_DONE)];
                let send_outside = |range: std::ops::Range<u64>, expected: &mut Vec<Event>| {
                    for n in range {
                        a.send(Cmd::Push(n)).unwrap();
                        expected.push(outside(n));
                    }
                };

                // One batch: `Hold`, then `in_batch` messages.
                node.suspend(pid).unwrap();
                a.send(Cmd::Hold).unwrap();
                send_outside(0..in_batch, &mut expected);
                node.resume(pid).unwrap();
                assert_eq!(events.next().await, Event::Started { pid }, "{case}");

                // Pinned: the runner is inside `Hold` with the rest of its batch in hand.
                // Suspend it; sends now land between the suspension and the runner going idle.
                node.suspend(pid).unwrap();
                if sends {
                    send_outside(100..103, &mut expected);
                }
                let mut got = Vec::new();
                match resume_at {
                    ResumeAt::BeforeRelease => {
                        node.resume(pid).unwrap();
                        hold_tx.send(()).unwrap();
                    }
                    ResumeAt::AfterParkFlapped | ResumeAt::AfterPark => {
                        if let ResumeAt::AfterParkFlapped = resume_at {
                            node.resume(pid).unwrap();
                            if sends {
                                send_outside(150..152, &mut expected);
                            }
                            node.suspend(pid).unwrap();
                        }
                        hold_tx.send(()).unwrap();
                        got.push(events.next().await);
                        assert_eq!(got, expected[..1], "{case}");
                        // The runner now sees the suspension and parks the state in the cell
                        // (info's memory estimate includes the state's heap only while it is
                        // parked). From here it cannot take another message until resumed.
                        eventually("the runner parks", || node.info(pid).unwrap().memory_bytes >= HEAP_MARK).await;
                        if sends {
                            send_outside(200..203, &mut expected);
                            ask(&sender, Req::Burst { to: pid, start: 300, count: 3 }).await;
                            expected.extend((300..303).map(|n| Event::Handled {
                                pid,
                                n,
                                from: Some(sender.pid()),
                                corr: None,
                            }));
                        }
                        let info = node.info(pid).unwrap();
                        assert_eq!(info.status, ProcessStatus::Suspended, "{case}");
                        assert_eq!(info.received, 1, "{case}: only `Hold` was taken");
                        assert_eq!(info.mailbox_depth, expected.len() - 1, "{case}: the rest is queued");
                        assert!(events.drain().is_empty(), "{case}: nothing handled while suspended");
                        node.resume(pid).unwrap();
                    }
                }
                // Nothing else is sent: the resume alone gets every message handled, in order.
                while got.len() < expected.len() {
                    got.push(events.next().await);
                }
                assert_eq!(got, expected, "{case}");
                eventually("the process goes idle", || node.info(pid).unwrap().status == ProcessStatus::Waiting).await;
                let info = node.info(pid).unwrap();
                assert_eq!((info.mailbox_depth, info.received), (0, expected.len() as u64), "{case}");
                assert!(events.drain().is_empty(), "{case}: each message handled once");
                node.kill(pid);
            }
        }
    }
}

/// A backlog far beyond the mailbox's inline part (64 messages) and over many blocks of its
/// chain: a bounded mailbox counts all of it, peek shows it oldest first across the seams,
/// resume handles it in order, and going idle gives the chain's memory back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g8_a_long_backlog_keeps_order_and_its_memory_is_given_back_when_idle() {
    const N: u64 = 5_000;
    let node = start("t-backlog");
    let a = bounded(&node, N as usize, ProbeArgs::default());
    let idle_bytes = node.info(a.pid()).unwrap().memory_bytes;
    node.suspend(a.pid()).unwrap();
    for n in 0..N {
        assert_eq!(a.send(Cmd::Push(n)), Ok(()));
    }
    assert_eq!(a.send(Cmd::Push(N)), Err(SendError::Full(a.pid())));
    let info = node.info(a.pid()).unwrap();
    assert_eq!(info.mailbox_depth, N as usize);
    assert!(
        info.memory_bytes >= idle_bytes + N as usize * std::mem::size_of::<u64>(),
        "the backlog shows in the memory estimate: {} then {}",
        idle_bytes,
        info.memory_bytes
    );
    let peek = node.peek(a.pid(), 1000).unwrap();
    let shown: Vec<serde_json::Value> = peek.iter().map(|m| m["msg"].clone()).collect();
    let want: Vec<serde_json::Value> = (0..1000u64).map(|n| serde_json::json!({ "Push": n })).collect();
    assert_eq!(shown, want);

    node.resume(a.pid()).unwrap();
    // The mailbox is full until the runner has worked through its batch (in-hand messages count
    // against the bound): ask only once it is idle again.
    let done = || {
        let info = node.info(a.pid()).unwrap();
        info.status == ProcessStatus::Waiting && info.received == N
    };
    eventually("the backlog is handled", done).await;
    assert_eq!(ask(&a, Req::Log).await.log(), (0..N).collect::<Vec<_>>());
    eventually("the process goes idle", || node.info(a.pid()).unwrap().status == ProcessStatus::Waiting).await;
    let after = node.info(a.pid()).unwrap().memory_bytes;
    assert!(after < idle_bytes + 8 * 1024, "an idle process keeps no backlog blocks: {idle_bytes} then {after}");
    // And it works as before.
    for n in 0..3 {
        assert_eq!(a.send(Cmd::Push(N + n)), Ok(()));
    }
    assert_eq!(ask(&a, Req::Log).await.log().len(), N as usize + 3);
}

//! Live tracing (G10: the trace is the truth).

use serde_json::json;
use soma::{CorrelationId, ExitReason, IntrospectError, Node, NodeConfig, SpawnOpts, TraceEvent, TraceKind};
use soma_tests::*;

fn kinds(events: &[TraceEvent]) -> Vec<TraceKind> {
    events.iter().map(|e| e.kind).collect()
}

/// G10: tracing is off by default: nothing is captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g10_trace_is_off_by_default() {
    let node = start("t-g10-off");
    let a = probe(&node, ProbeArgs::default());
    a.send(Cmd::Push(1)).unwrap();
    ask(&a, Req::Ping).await;
    assert!(!node.info(a.pid()).unwrap().traced);
    assert_eq!(node.trace_read(a.pid(), 0, 100).unwrap(), vec![]);
}

/// G10: with tracing on, what the process received (casts, calls), replied, sent, called, its
/// state changes and its exit are recorded in order, with payloads as JSON, increasing
/// sequence numbers, the peer and the correlation ID; the live stream yields the same and ends
/// after the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g10_trace_records_what_happened_in_order() {
    let node = start("t-g10-on");
    let a = probe(&node, ProbeArgs { expose: true, ..ProbeArgs::default() });
    let b = probe(&node, ProbeArgs::default());
    node.trace(a.pid(), true).unwrap();
    node.trace(b.pid(), true).unwrap();
    assert!(node.info(a.pid()).unwrap().traced);
    let mut stream = node.trace_stream(a.pid()).unwrap();
    let (c5, c6, c7) = (CorrelationId(5), CorrelationId(6), CorrelationId(7));

    a.send_with(Cmd::Push(1), Some(c5)).unwrap();
    a.send_with(Cmd::Forward { to: b.pid(), n: 7 }, Some(c6)).unwrap();
    assert_eq!(within("call", a.call_with(Req::Echo(3), Some(c7), CALL)).await, Ok(Reply::Num(3)));
    assert_eq!(ask(&a, Req::Call { to: b.pid(), req: Box::new(Req::Ping) }).await, Reply::Pong);
    let alive = node.trace_read(a.pid(), 0, 100).unwrap();
    let exited = node.wait_exit(a.pid());
    a.send(Cmd::Stop(ExitReason::Normal)).unwrap();
    within("exit", exited).await;

    let mut got = Vec::new();
    while let Some(e) = within("trace stream", stream.next()).await {
        got.push(e);
    }
    use TraceKind::*;
    assert_eq!(
        kinds(&got),
        vec![Received, State, Received, Sent, CallReceived, Replied, CallReceived, Called, Replied, Received, Exited]
    );
    assert_eq!(got[..alive.len()], alive[..], "trace_read saw the same events while alive");
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
        assert_eq!(e.pid, a.pid());
    }
    assert!(got.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
    let (ap, bp) = (a.pid(), b.pid());
    let fields = |e: &TraceEvent| (e.peer, e.corr, e.payload.clone());
    assert_eq!(fields(&got[0]), (None, Some(c5), json!({"Push": 1})));
    assert_eq!(fields(&got[1]), (None, None, json!({"log": [1]})));
    assert_eq!(fields(&got[2]), (None, Some(c6), json!({"Forward": {"to": bp.to_string(), "n": 7}})));
    assert_eq!(fields(&got[3]), (Some(bp), Some(c6), json!({"Push": 7})));
    assert_eq!(fields(&got[4]), (None, Some(c7), json!({"Echo": 3})));
    assert_eq!(fields(&got[5]), (None, Some(c7), json!({"Num": 3})));
    assert_eq!(fields(&got[6]), (None, None, json!({"Call": {"to": bp.to_string(), "req": "Ping"}})));
    assert_eq!(fields(&got[7]), (Some(bp), None, json!("Ping")));
    assert_eq!(fields(&got[8]), (None, None, json!("Pong")));
    assert_eq!(fields(&got[9]), (None, None, json!({"Stop": "Normal"})));
    assert_eq!(fields(&got[10]), (None, None, json!("Normal")));

    // The other side: b recorded what a sent it, with a as the peer and the correlation.
    let at_b = node.trace_read(bp, 0, 100).unwrap();
    assert_eq!(kinds(&at_b), vec![Received, CallReceived, Replied]);
    assert_eq!(fields(&at_b[0]), (Some(ap), Some(c6), json!({"Push": 7})));
    assert_eq!(fields(&at_b[1]), (Some(ap), None, json!("Ping")));
    assert_eq!(fields(&at_b[2]), (Some(ap), None, json!("Pong")));
}

/// G10: trapped exit signals and monitor `Down`s are traced with the peer and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g10_trace_records_exit_signals_and_downs() {
    let node = start("t-g10-signals");
    let (tx, mut events) = Events::new();
    let a = probe(&node, ProbeArgs { trap_exit: true, ..ProbeArgs::with_events(&tx) });
    let b = probe(&node, ProbeArgs::default());
    let c = probe(&node, ProbeArgs::default());
    ask(&a, Req::Link(b.pid())).await;
    ask(&a, Req::Monitor(c.pid())).await;
    node.trace(a.pid(), true).unwrap();

    b.send(Cmd::Fail("b broke".into())).unwrap();
    assert!(matches!(events.next().await, Event::Exit { .. }));
    c.send(Cmd::Stop(ExitReason::Normal)).unwrap();
    assert!(matches!(events.next().await, Event::Down { .. }));

    let got = node.trace_read(a.pid(), 0, 100).unwrap();
    assert_eq!(kinds(&got), vec![TraceKind::ExitSignal, TraceKind::Down]);
    assert_eq!((got[0].peer, got[0].payload.clone()), (Some(b.pid()), json!({"Crashed": "b broke"})));
    assert_eq!((got[1].peer, got[1].payload.clone()), (Some(c.pid()), json!("Normal")));
}

/// G10 / G8: the trace ring is bounded: with `trace_capacity` 4 only the last 4 events are
/// kept (sequence numbers keep counting, so the gap is visible); `after` and `max` page it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g10_trace_ring_keeps_only_the_last_events() {
    let node = Node::start(NodeConfig { trace_capacity: 4, ..NodeConfig::named("t-g10-ring") }).unwrap();
    let a = probe(&node, ProbeArgs::default());
    node.trace(a.pid(), true).unwrap();
    for n in 0..10 {
        a.send(Cmd::Push(n)).unwrap();
    }
    ask(&a, Req::Ping).await;
    let got = node.trace_read(a.pid(), 0, 100).unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![9, 10, 11, 12]);
    assert_eq!(
        kinds(&got),
        vec![TraceKind::Received, TraceKind::Received, TraceKind::CallReceived, TraceKind::Replied]
    );
    assert_eq!((got[0].payload.clone(), got[1].payload.clone()), (json!({"Push": 8}), json!({"Push": 9})));
    assert_eq!(node.trace_read(a.pid(), 10, 100).unwrap(), got[2..].to_vec());
    assert_eq!(node.trace_read(a.pid(), 0, 1).unwrap(), got[..1].to_vec());
    assert_eq!(node.trace_read(a.pid(), 12, 100).unwrap(), vec![]);
}

/// G10: switching tracing off stops capture (what was captured stays readable); switching it
/// on again continues the same sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g10_trace_off_stops_capture() {
    let node = start("t-g10-toggle");
    let a = probe(&node, ProbeArgs::default());
    node.trace(a.pid(), true).unwrap();
    a.send(Cmd::Push(1)).unwrap();
    ask(&a, Req::Ping).await;
    node.trace(a.pid(), false).unwrap();
    assert!(!node.info(a.pid()).unwrap().traced);
    a.send(Cmd::Push(2)).unwrap();
    ask(&a, Req::Ping).await;
    let got = node.trace_read(a.pid(), 0, 100).unwrap();
    assert_eq!(kinds(&got), vec![TraceKind::Received, TraceKind::CallReceived, TraceKind::Replied]);
    assert_eq!(got[0].payload, json!({"Push": 1}));

    node.trace(a.pid(), true).unwrap();
    a.send(Cmd::Push(3)).unwrap();
    ask(&a, Req::Ping).await;
    let more = node.trace_read(a.pid(), 3, 100).unwrap();
    assert_eq!(more.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5, 6]);
    assert_eq!(more[0].payload, json!({"Push": 3}));
}

/// G10: a trace stream yields events live as they happen (it is pending in between) and ends
/// with `None` after the process's `exited` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g10_trace_stream_is_live_and_ends_after_exit() {
    let node = start("t-g10-stream");
    let a = probe(&node, ProbeArgs::default());
    node.trace(a.pid(), true).unwrap();
    a.send(Cmd::Push(0)).unwrap();
    ask(&a, Req::Ping).await;
    // A stream starts from now: earlier events are not replayed.
    let mut stream = node.trace_stream(a.pid()).unwrap();
    {
        let mut next = Box::pin(stream.next());
        assert!(is_pending(&mut next).await, "nothing happened yet");
    }
    a.send(Cmd::Push(1)).unwrap();
    let e = within("event", stream.next()).await.expect("an event");
    assert_eq!((e.kind, e.payload), (TraceKind::Received, json!({"Push": 1})));
    node.kill(a.pid());
    let e = within("event", stream.next()).await.expect("the exit event");
    assert_eq!((e.kind, e.payload), (TraceKind::Exited, json!("Killed")));
    assert_eq!(within("end", stream.next()).await, None);
    assert_eq!(within("end", stream.next()).await, None);
    assert!(matches!(node.trace_stream(a.pid()), Err(IntrospectError::NoProc(_))));
}

/// G10: a stream on a process whose tracing is off still ends when the process exits (it sees
/// only the exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g10_trace_stream_of_untraced_process_sees_the_exit() {
    let node = start("t-g10-stream-untraced");
    let a = probe(&node, ProbeArgs::default());
    let mut stream = node.trace_stream(a.pid()).unwrap();
    a.send(Cmd::Push(1)).unwrap();
    a.send(Cmd::Fail("end".into())).unwrap();
    let e = within("event", stream.next()).await.expect("the exit event");
    assert_eq!((e.kind, e.payload), (TraceKind::Exited, json!({"Crashed": "end"})));
    assert_eq!(within("end", stream.next()).await, None);
}

/// G10: `SpawnOpts::trace` traces a process from its first message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g10_spawn_with_tracing_on() {
    let node = start("t-g10-spawn");
    let a = node.spawn::<Probe>(ProbeArgs::default(), SpawnOpts { trace: true, ..SpawnOpts::default() }).unwrap();
    assert!(node.info(a.pid()).unwrap().traced);
    a.send(Cmd::Push(1)).unwrap();
    ask(&a, Req::Ping).await;
    let got = node.trace_read(a.pid(), 0, 100).unwrap();
    assert_eq!(got[0].seq, 1);
    assert_eq!((got[0].kind, got[0].payload.clone()), (TraceKind::Received, json!({"Push": 1})));
}

/// G10: a read of more events than one chunk (the ring's lock is held per chunk) returns all
/// of them, in order, without gaps or repeats; `max` still bounds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g10_trace_read_spans_chunks() {
    let node = Node::start(NodeConfig { trace_capacity: 2_000, ..NodeConfig::named("t-g10-chunks") }).unwrap();
    let a = probe(&node, ProbeArgs::default());
    node.trace(a.pid(), true).unwrap();
    for n in 0..700 {
        a.send(Cmd::Push(n)).unwrap();
    }
    ask(&a, Req::Ping).await;
    let got = node.trace_read(a.pid(), 0, 10_000).unwrap();
    assert_eq!(got.len(), 702, "700 casts, the call and its reply");
    assert!(got.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
    assert_eq!(got[699].payload, json!({"Push": 699}));
    assert_eq!(node.trace_read(a.pid(), 0, 300).unwrap(), got[..300].to_vec());
    assert_eq!(node.trace_read(a.pid(), 256, 300).unwrap(), got[256..556].to_vec());
}

//! Shared helpers for the tests in this package: test behaviours that report what happens to
//! them over channels (so tests synchronise on events, calls and exits — never on sleeps), and a
//! guard that turns a hang into a test failure.
//!
//! * [`Probe`] — a general-purpose process driven by [`Cmd`] casts and [`Req`] calls: it logs
//!   numbers, panics or fails on demand, awaits forever, links, monitors, spawns children, sends
//!   bursts, and reports every callback to an [`Events`] receiver.
//! * [`Counter`] — a tiny behaviour with a JSON snapshot, for `state()` and type-mismatch tests.

pub mod cluster;
pub mod hostile;
pub mod relay;

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use soma::{
    Addr, Behaviour, Context, CorrelationId, Down, Error, ExitReason, MonitorRef, Node, NodeConfig, Pid, SpawnOpts,
};
use tokio::sync::{mpsc, oneshot};

/// Upper bound for anything a test waits for. Only ever a failure guard: a test never passes
/// *because* this elapsed.
pub const GUARD: Duration = Duration::from_secs(5);

/// Timeout given to calls that are expected to be answered (the guard, not a synchroniser).
pub const CALL: Duration = Duration::from_secs(5);

/// Installs a `tracing` subscriber writing to the test's captured output when `SOMA_TEST_LOG`
/// holds a filter (e.g. `SOMA_TEST_LOG=soma=debug`), so a rare failure can be rerun with the
/// nodes' logs beside it. Without the variable nothing is installed. Idempotent.
pub fn test_log() {
    if let Ok(filter) = std::env::var("SOMA_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Awaits `fut`, failing the test if it takes longer than [`GUARD`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {GUARD:?} waiting for {what}"),
    }
}

/// Starts a node named `name` (each test uses its own name).
pub fn start(name: &str) -> Node {
    Node::start(NodeConfig::named(name)).expect("node starts")
}

/// Spawns a probe with `args` and no options.
pub fn probe(node: &Node, args: ProbeArgs) -> Addr<Probe> {
    node.spawn::<Probe>(args, SpawnOpts::default()).expect("spawn probe")
}

/// Calls a probe, failing the test on any error.
pub async fn ask(addr: &Addr<Probe>, req: Req) -> Reply {
    within("a call", addr.call(req, CALL)).await.expect("call succeeds")
}

/// Asserts `reason` is `crashed` with a text containing `needle`.
pub fn assert_crashed_with(reason: &ExitReason, needle: &str) {
    match reason {
        ExitReason::Crashed(text) => assert!(text.contains(needle), "crash text {text:?} should contain {needle:?}"),
        other => panic!("expected crashed containing {needle:?}, got {other}"),
    }
}

/// Polls `fut` exactly once and says whether it is still pending (used to show that a future
/// is blocked *now*, e.g. `send_wait` on a full mailbox, without sleeping).
pub async fn is_pending<F: Future + Unpin>(fut: &mut F) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut *fut).poll(cx).is_pending())).await
}

/// Repeatedly evaluates `cond` (yielding to the scheduler in between) until it holds; fails the
/// test after [`GUARD`]. For states that have no event to wait on (e.g. a runner going idle).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    })
    .await
}

/// What a [`Probe`] reports about itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A `Cmd::Push(n)` (or the end of `Cmd::Hold`, n = [`HOLD_DONE`]) was handled.
    Handled {
        /// The probe.
        pid: Pid,
        /// The number.
        n: u64,
        /// `ctx.sender()`.
        from: Option<Pid>,
        /// `ctx.correlation()`.
        corr: Option<CorrelationId>,
    },
    /// A long handler (`Hang`, `SleepHour`, `Hold`) started and is about to await.
    Started {
        /// The probe.
        pid: Pid,
    },
    /// `handle_exit` was called (trapped exit signal).
    Exit {
        /// The probe.
        pid: Pid,
        /// The signal's sender.
        from: Pid,
        /// Its reason.
        reason: ExitReason,
    },
    /// `handle_down` was called.
    Down {
        /// The probe.
        pid: Pid,
        /// The notification.
        down: Down,
    },
    /// `terminate` was called.
    Terminate {
        /// The probe.
        pid: Pid,
        /// With this reason.
        reason: ExitReason,
    },
}

impl Event {
    /// The probe that reported the event.
    pub fn pid(&self) -> Pid {
        match self {
            Event::Handled { pid, .. }
            | Event::Started { pid }
            | Event::Exit { pid, .. }
            | Event::Down { pid, .. }
            | Event::Terminate { pid, .. } => *pid,
        }
    }
}

/// The number a `Cmd::Hold` handler reports when its hold is released.
pub const HOLD_DONE: u64 = u64::MAX;

/// The receiving end of probe events.
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// A new channel: the sender goes into [`ProbeArgs::events`].
    pub fn new() -> (mpsc::UnboundedSender<Event>, Events) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Events { rx })
    }

    /// The next event (fails the test after [`GUARD`] or if every sender is gone).
    pub async fn next(&mut self) -> Event {
        within("a probe event", self.rx.recv()).await.expect("event channel closed")
    }

    /// The next event reported by `pid`, skipping (and discarding) other probes' events.
    pub async fn next_of(&mut self, pid: Pid) -> Event {
        loop {
            let e = self.next().await;
            if e.pid() == pid {
                return e;
            }
        }
    }

    /// Everything already in the channel, without waiting.
    pub fn drain(&mut self) -> Vec<Event> {
        let mut v = Vec::new();
        while let Ok(e) = self.rx.try_recv() {
            v.push(e);
        }
        v
    }
}

/// How a probe's `init` ends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum InitMode {
    /// Succeeds.
    #[default]
    Ok,
    /// Returns this error.
    Fail(String),
    /// Panics with this message.
    Panic(String),
}

/// A probe's spawn arguments.
#[derive(Default)]
pub struct ProbeArgs {
    /// Where to report events.
    pub events: Option<mpsc::UnboundedSender<Event>>,
    /// How `init` ends.
    pub init: InitMode,
    /// Trap exits from `init` on.
    pub trap_exit: bool,
    /// Opt in to `Behaviour::snapshot` (`{"log": [...]}`).
    pub expose: bool,
    /// If set, `init` awaits this before finishing (an `init` that awaits).
    pub init_gate: Option<oneshot::Receiver<()>>,
    /// What `Cmd::Hold` awaits (forever if `None`).
    pub hold: Option<oneshot::Receiver<()>>,
    /// Reported by `Behaviour::heap_size` (lets a test see whether the state is parked in the
    /// cell, i.e. the process is idle: info's memory estimate includes it only then).
    pub heap_hint: usize,
    /// `terminate` reports `Terminate`, then never returns.
    pub hang_in_terminate: bool,
}

impl ProbeArgs {
    /// Arguments reporting to `events`.
    pub fn with_events(events: &mpsc::UnboundedSender<Event>) -> Self {
        ProbeArgs { events: Some(events.clone()), ..ProbeArgs::default() }
    }
}

/// How `Req::Spawn` spawns its child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum How {
    /// `ctx.spawn`.
    Plain,
    /// `ctx.spawn_link`.
    Link,
    /// `ctx.spawn_monitor`.
    Monitor,
}

/// Casts a probe takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Cmd {
    /// Append `n` to the log and report `Handled`.
    Push(u64),
    /// Panic with this message (a `String` payload).
    Panic(String),
    /// Panic with a `&'static str` payload: "static boom".
    PanicStatic,
    /// Return this error from the handler.
    Fail(String),
    /// `ctx.stop(reason)`.
    Stop(ExitReason),
    /// Report `Started`, then await a future that never completes.
    Hang,
    /// Report `Started`, then `tokio::time::sleep` for an hour.
    SleepHour,
    /// Report `Started`, await the `hold` gate, then report `Handled(HOLD_DONE)`.
    Hold,
    /// `ctx.send_to(to, Cmd::Push(n))`.
    Forward {
        /// Target probe.
        to: Pid,
        /// Number.
        n: u64,
    },
    /// `ctx.exit(to, reason)`.
    ExitTo {
        /// Target.
        to: Pid,
        /// Reason.
        reason: ExitReason,
    },
    /// `ctx.kill(pid)`.
    KillTo(Pid),
    /// `ctx.link(pid)`.
    Link(Pid),
}

/// Calls a probe takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Req {
    /// Replies `Pong` (a barrier).
    Ping,
    /// Replies with the log.
    Log,
    /// Replies `Num(n)`.
    Echo(u64),
    /// Replies with `ctx.correlation()`.
    Correlation,
    /// Replies with `ctx.sender()`.
    Sender,
    /// Panics while handling the call.
    Panic(String),
    /// Fails while handling the call.
    Fail(String),
    /// Reports `Started` and never replies.
    Hang,
    /// `ctx.trap_exit(on)`.
    Trap(bool),
    /// `ctx.link(pid)`.
    Link(Pid),
    /// `ctx.unlink(pid)`.
    Unlink(Pid),
    /// `ctx.monitor(pid)` → `Ref`.
    Monitor(Pid),
    /// `ctx.demonitor(mref)`.
    Demonitor(MonitorRef),
    /// Kills `target`, waits until it has exited (so its `Down` is already queued here), then
    /// demonitors `mref` — all in one handler.
    KillWaitDemonitor {
        /// The monitored process.
        target: Pid,
        /// The monitor.
        mref: MonitorRef,
    },
    /// Spawns a child probe reporting to the same events channel → `Spawned`, or `Err` with
    /// the `SpawnError` text (e.g. an inline `init` failure).
    Spawn {
        /// Its label.
        label: Option<String>,
        /// Plain, linked or monitored.
        how: How,
        /// How its init ends.
        init: InitMode,
        /// Whether it traps exits.
        trap_exit: bool,
    },
    /// `ctx.register(name)`.
    Register(String),
    /// Sends `Push(start..start+count)` to `to` with `ctx.send` (fails on a full mailbox).
    Burst {
        /// Target probe.
        to: Pid,
        /// First number.
        start: u64,
        /// How many.
        count: u64,
    },
    /// Like `Burst` but with `ctx.send_wait` (waits for room).
    BurstWait {
        /// Target probe.
        to: Pid,
        /// First number.
        start: u64,
        /// How many.
        count: u64,
    },
    /// `ctx.call(to, req)` (`ctx.call_ref` for a PID of another node) → the callee's reply, or
    /// `Err` with the `CallError` (debug form).
    Call {
        /// The callee (a probe).
        to: Pid,
        /// The request.
        req: Box<Req>,
    },
    /// Sets the correlation ID for what this handler sends from now on, then forwards
    /// `Push(n)` to `to`.
    ForwardAs {
        /// New correlation ID.
        corr: Option<CorrelationId>,
        /// Target probe.
        to: Pid,
        /// Number.
        n: u64,
    },
}

/// Replies of a probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// Done.
    Ok,
    /// To `Ping`.
    Pong,
    /// The log.
    Log(Vec<u64>),
    /// A number.
    Num(u64),
    /// A correlation ID.
    Corr(Option<CorrelationId>),
    /// A PID (or none).
    Pid(Option<Pid>),
    /// A monitor.
    Ref(MonitorRef),
    /// A spawned child.
    Spawned {
        /// The child.
        pid: Pid,
        /// The monitor, for `How::Monitor`.
        mref: Option<MonitorRef>,
    },
    /// An operation failed (e.g. a registry error).
    Err(String),
}

impl Reply {
    /// The log, or panics.
    pub fn log(self) -> Vec<u64> {
        match self {
            Reply::Log(v) => v,
            other => panic!("expected Log, got {other:?}"),
        }
    }

    /// The monitor ref, or panics.
    pub fn mref(self) -> MonitorRef {
        match self {
            Reply::Ref(r) => r,
            other => panic!("expected Ref, got {other:?}"),
        }
    }

    /// The error text, or panics.
    pub fn err(self) -> String {
        match self {
            Reply::Err(e) => e,
            other => panic!("expected Err, got {other:?}"),
        }
    }

    /// The spawned child, or panics.
    pub fn spawned(self) -> (Pid, Option<MonitorRef>) {
        match self {
            Reply::Spawned { pid, mref } => (pid, mref),
            other => panic!("expected Spawned, got {other:?}"),
        }
    }
}

/// The general-purpose test process. See the module docs.
pub struct Probe {
    pid: Pid,
    log: Vec<u64>,
    events: Option<mpsc::UnboundedSender<Event>>,
    expose: bool,
    hold: Option<oneshot::Receiver<()>>,
    heap_hint: usize,
    hang_in_terminate: bool,
}

impl Probe {
    fn emit(&self, e: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    async fn park(&mut self) {
        self.emit(Event::Started { pid: self.pid });
        std::future::pending::<()>().await;
    }
}

/// `ctx.call` from a probe to a probe. Boxed: the callee's activation may run inline inside the
/// caller's future, so without the indirection `Probe::handle_call`'s future type would contain
/// itself.
fn call_probe(ctx: &Context<Probe>, to: Pid, req: Req) -> std::pin::Pin<Box<dyn Future<Output = Reply> + Send + '_>> {
    Box::pin(async move {
        let r = if to.node() == ctx.node().id() {
            let Some(addr) = ctx.node().addr::<Probe>(to) else { return Reply::Err("NoProc".into()) };
            ctx.call(&addr, req, CALL).await
        } else {
            ctx.call_ref(&ctx.node().pid_ref::<Probe>(to), req, CALL).await
        };
        match r {
            Ok(r) => r,
            Err(e) => Reply::Err(format!("{e:?}")),
        }
    })
}

impl Behaviour for Probe {
    type Args = ProbeArgs;
    type Msg = Cmd;
    type Call = Req;
    type Reply = Reply;

    fn name() -> &'static str {
        "probe"
    }

    async fn init(ctx: &mut Context<Self>, args: ProbeArgs) -> Result<Self, Error> {
        if args.trap_exit {
            ctx.trap_exit(true);
        }
        if let Some(gate) = args.init_gate {
            let _ = gate.await;
        }
        match args.init {
            InitMode::Ok => {}
            InitMode::Fail(e) => return Err(e.into()),
            InitMode::Panic(m) => panic!("{m}"),
        }
        Ok(Probe {
            pid: ctx.pid(),
            log: Vec::new(),
            events: args.events,
            expose: args.expose,
            hold: args.hold,
            heap_hint: args.heap_hint,
            hang_in_terminate: args.hang_in_terminate,
        })
    }

    async fn handle(&mut self, ctx: &mut Context<Self>, msg: Cmd) -> Result<(), Error> {
        match msg {
            Cmd::Push(n) => {
                self.log.push(n);
                self.emit(Event::Handled { pid: self.pid, n, from: ctx.sender(), corr: ctx.correlation() });
            }
            Cmd::Panic(m) => panic!("{m}"),
            Cmd::PanicStatic => panic!("static boom"),
            Cmd::Fail(e) => return Err(e.into()),
            Cmd::Stop(reason) => ctx.stop(reason),
            Cmd::Hang => self.park().await,
            Cmd::SleepHour => {
                self.emit(Event::Started { pid: self.pid });
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Cmd::Hold => {
                self.emit(Event::Started { pid: self.pid });
                match self.hold.take() {
                    Some(gate) => {
                        let _ = gate.await;
                    }
                    None => std::future::pending::<()>().await,
                }
                self.emit(Event::Handled { pid: self.pid, n: HOLD_DONE, from: ctx.sender(), corr: ctx.correlation() });
            }
            Cmd::Forward { to, n } => ctx.send_to(to, Cmd::Push(n))?,
            Cmd::ExitTo { to, reason } => ctx.exit(to, reason),
            Cmd::KillTo(pid) => ctx.kill(pid),
            Cmd::Link(pid) => ctx.link(pid),
        }
        Ok(())
    }

    async fn handle_call(&mut self, ctx: &mut Context<Self>, req: Req) -> Result<Reply, Error> {
        Ok(match req {
            Req::Ping => Reply::Pong,
            Req::Log => Reply::Log(self.log.clone()),
            Req::Echo(n) => Reply::Num(n),
            Req::Correlation => Reply::Corr(ctx.correlation()),
            Req::Sender => Reply::Pid(ctx.sender()),
            Req::Panic(m) => panic!("{m}"),
            Req::Fail(e) => return Err(e.into()),
            Req::Hang => {
                self.park().await;
                Reply::Ok
            }
            Req::Trap(on) => {
                ctx.trap_exit(on);
                Reply::Ok
            }
            Req::Link(pid) => {
                ctx.link(pid);
                Reply::Ok
            }
            Req::Unlink(pid) => {
                ctx.unlink(pid);
                Reply::Ok
            }
            Req::Monitor(pid) => Reply::Ref(ctx.monitor(pid)),
            Req::Demonitor(mref) => {
                ctx.demonitor(mref);
                Reply::Ok
            }
            Req::KillWaitDemonitor { target, mref } => {
                let node = ctx.node();
                let exited = node.wait_exit(target);
                ctx.kill(target);
                exited.await;
                ctx.demonitor(mref);
                Reply::Ok
            }
            Req::Spawn { label, how, init, trap_exit } => {
                let args = ProbeArgs { events: self.events.clone(), init, trap_exit, ..ProbeArgs::default() };
                let opts = SpawnOpts { label, ..SpawnOpts::default() };
                let spawned = match how {
                    How::Plain => ctx.spawn::<Probe>(args, opts).map(|a| (a.pid(), None)),
                    How::Link => ctx.spawn_link::<Probe>(args, opts).map(|a| (a.pid(), None)),
                    How::Monitor => ctx.spawn_monitor::<Probe>(args, opts).map(|(a, m)| (a.pid(), Some(m))),
                };
                match spawned {
                    Ok((pid, mref)) => Reply::Spawned { pid, mref },
                    Err(e) => Reply::Err(e.to_string()),
                }
            }
            Req::Register(name) => match ctx.register(&name) {
                Ok(()) => Reply::Ok,
                Err(e) => Reply::Err(e.to_string()),
            },
            Req::Burst { to, start, count } => {
                let addr = ctx.node().addr::<Probe>(to).ok_or("burst target is not a live probe")?;
                for n in start..start + count {
                    ctx.send(&addr, Cmd::Push(n))?;
                }
                Reply::Ok
            }
            Req::BurstWait { to, start, count } => {
                let addr = ctx.node().addr::<Probe>(to).ok_or("burst target is not a live probe")?;
                for n in start..start + count {
                    ctx.send_wait(&addr, Cmd::Push(n)).await;
                }
                Reply::Ok
            }
            Req::Call { to, req } => call_probe(ctx, to, *req).await,
            Req::ForwardAs { corr, to, n } => {
                ctx.set_correlation(corr);
                ctx.send_to(to, Cmd::Push(n))?;
                Reply::Ok
            }
        })
    }

    async fn handle_exit(&mut self, _ctx: &mut Context<Self>, from: Pid, reason: ExitReason) -> Result<(), Error> {
        self.emit(Event::Exit { pid: self.pid, from, reason });
        Ok(())
    }

    async fn handle_down(&mut self, _ctx: &mut Context<Self>, down: Down) -> Result<(), Error> {
        self.emit(Event::Down { pid: self.pid, down });
        Ok(())
    }

    async fn terminate(&mut self, _ctx: &mut Context<Self>, reason: &ExitReason) {
        self.emit(Event::Terminate { pid: self.pid, reason: reason.clone() });
        if self.hang_in_terminate {
            std::future::pending::<()>().await;
        }
    }

    fn snapshot(&self) -> Option<serde_json::Value> {
        self.expose.then(|| serde_json::json!({ "log": self.log }))
    }

    fn heap_size(&self) -> usize {
        self.heap_hint
    }
}

/// A counter with a JSON snapshot (`{"count": n}`).
#[derive(Debug, Serialize)]
pub struct Counter {
    /// The count.
    pub count: u64,
}

/// Calls a [`Counter`] takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CounterCall {
    /// The count.
    Get,
}

impl Behaviour for Counter {
    type Args = u64;
    type Msg = u64;
    type Call = CounterCall;
    type Reply = u64;

    fn name() -> &'static str {
        "counter"
    }

    async fn init(_ctx: &mut Context<Self>, start: u64) -> Result<Self, Error> {
        Ok(Counter { count: start })
    }

    async fn handle(&mut self, _ctx: &mut Context<Self>, n: u64) -> Result<(), Error> {
        self.count += n;
        Ok(())
    }

    async fn handle_call(&mut self, _ctx: &mut Context<Self>, _req: CounterCall) -> Result<u64, Error> {
        Ok(self.count)
    }

    fn snapshot(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }
}

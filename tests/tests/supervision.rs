//! Local supervisors executing OTP decisions with real processes: every strategy, restart types,
//! intensity escalation (G7), ordered shutdown with timeout then kill, nesting, dynamic children.

use std::time::Duration;

use soma::supervision::{
    ChildSpec, DynamicCall, DynamicReply, DynamicSpec, DynamicSupervisor, RestartType, Shutdown, Strategy, Supervisor,
    SupervisorCall, SupervisorReply, SupervisorSpec,
};
use soma::{Addr, Behaviour, Context, Error, ExitReason, Node, NodeConfig, Pid, SpawnOpts};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(10);

/// What test workers report.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Started(&'static str),
    Terminated(&'static str),
}

type Log = mpsc::UnboundedSender<Ev>;

/// How a test worker takes its supervisor's `shutdown` signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnShutdown {
    /// Does not trap exits: the signal stops it at once, without `terminate` (nothing logged).
    Die,
    /// Traps exits: `terminate` runs and logs `Terminated`.
    Terminate,
    /// Traps exits; `terminate` logs `Terminated`, then never returns (so the supervisor has
    /// to kill it once the child's shutdown timeout expires).
    Hang,
}

/// A worker that logs its start (and its `terminate`, if it traps exits), and can be told to
/// crash or stop.
struct Worker {
    id: &'static str,
    log: Log,
    on_shutdown: OnShutdown,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Cmd {
    Crash,
    StopNormal,
}

impl Behaviour for Worker {
    type Args = (&'static str, Log, OnShutdown);
    type Msg = Cmd;
    type Call = ();
    type Reply = Pid;
    async fn init(ctx: &mut Context<Self>, (id, log, on_shutdown): Self::Args) -> Result<Self, Error> {
        if on_shutdown != OnShutdown::Die {
            ctx.trap_exit(true);
        }
        let _ = log.send(Ev::Started(id));
        Ok(Worker { id, log, on_shutdown })
    }
    async fn handle(&mut self, ctx: &mut Context<Self>, cmd: Cmd) -> Result<(), Error> {
        match cmd {
            Cmd::Crash => panic!("worker {} told to crash", self.id),
            Cmd::StopNormal => ctx.stop(ExitReason::Normal),
        }
        Ok(())
    }
    async fn handle_call(&mut self, ctx: &mut Context<Self>, _: ()) -> Result<Pid, Error> {
        Ok(ctx.pid())
    }
    async fn terminate(&mut self, _ctx: &mut Context<Self>, _reason: &ExitReason) {
        let _ = self.log.send(Ev::Terminated(self.id));
        if self.on_shutdown == OnShutdown::Hang {
            std::future::pending::<()>().await;
        }
    }
}

/// A child spec for a [`Worker`].
fn worker(id: &'static str, log: &Log, on_shutdown: OnShutdown) -> ChildSpec {
    let log = log.clone();
    ChildSpec::worker::<Worker>(id, move || (id, log.clone(), on_shutdown))
}

/// The usual child: a worker that traps exits, so its `terminate` runs (and is logged) when it
/// is stopped.
fn trapper(id: &'static str, log: &Log) -> ChildSpec {
    worker(id, log, OnShutdown::Terminate)
}

async fn children(sup: &Addr<Supervisor>) -> Vec<(String, Option<Pid>)> {
    match sup.call(SupervisorCall::WhichChildren, T).await.expect("which_children") {
        SupervisorReply::Children(c) => c.into_iter().map(|c| (c.id, c.pid)).collect(),
        other => panic!("unexpected reply {other:?}"),
    }
}

fn pid_of(kids: &[(String, Option<Pid>)], id: &str) -> Option<Pid> {
    kids.iter().find(|(i, _)| i == id).and_then(|(_, p)| *p)
}

async fn drain(rx: &mut mpsc::UnboundedReceiver<Ev>, n: usize) -> Vec<Ev> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(tokio::time::timeout(T, rx.recv()).await.expect("event in time").expect("log open"));
    }
    v
}

fn start_sup(node: &Node, spec: SupervisorSpec) -> Addr<Supervisor> {
    node.spawn::<Supervisor>(spec, SpawnOpts::labeled("sup")).expect("spawn supervisor")
}

async fn crash(node: &Node, pid: Pid) {
    let exited = node.wait_exit(pid);
    node.send(pid, Cmd::Crash).expect("send crash");
    assert!(matches!(exited.await, ExitReason::Crashed(m) if m.contains("told to crash")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_one_restarts_only_the_crashed_child() {
    let node = Node::start(NodeConfig::named("sup-ofo")).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sup = start_sup(
        &node,
        SupervisorSpec::new(Strategy::OneForOne)
            .child(trapper("a", &tx))
            .child(trapper("b", &tx))
            .child(trapper("c", &tx)),
    );
    assert_eq!(drain(&mut rx, 3).await, vec![Ev::Started("a"), Ev::Started("b"), Ev::Started("c")]);
    let before = children(&sup).await;
    crash(&node, pid_of(&before, "b").unwrap()).await;
    assert_eq!(drain(&mut rx, 1).await, vec![Ev::Started("b")]);
    let after = children(&sup).await;
    assert_eq!(pid_of(&after, "a"), pid_of(&before, "a"));
    assert_eq!(pid_of(&after, "c"), pid_of(&before, "c"));
    assert_ne!(pid_of(&after, "b"), pid_of(&before, "b"));
    assert!(node.is_alive(pid_of(&after, "b").unwrap()));
    // The restarted child is under the supervisor in the tree.
    let tree = node.tree();
    let root = tree.iter().find(|t| t.pid == sup.pid()).expect("supervisor is a root");
    assert_eq!(root.children.iter().map(|c| c.label.clone().unwrap()).collect::<Vec<_>>(), vec!["a", "c", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_all_restarts_everyone_in_order() {
    let node = Node::start(NodeConfig::named("sup-ofa")).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sup = start_sup(
        &node,
        SupervisorSpec::new(Strategy::OneForAll)
            .child(trapper("a", &tx))
            .child(trapper("b", &tx))
            .child(trapper("c", &tx)),
    );
    drain(&mut rx, 3).await;
    let before = children(&sup).await;
    crash(&node, pid_of(&before, "b").unwrap()).await;
    // Others stopped in reverse start order, then all started in start order.
    assert_eq!(
        drain(&mut rx, 5).await,
        vec![Ev::Terminated("c"), Ev::Terminated("a"), Ev::Started("a"), Ev::Started("b"), Ev::Started("c")]
    );
    let after = children(&sup).await;
    for id in ["a", "b", "c"] {
        assert_ne!(pid_of(&after, id), pid_of(&before, id), "{id} restarted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_for_one_restarts_the_crashed_and_later_children() {
    let node = Node::start(NodeConfig::named("sup-rfo")).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sup = start_sup(
        &node,
        SupervisorSpec::new(Strategy::RestForOne)
            .child(trapper("a", &tx))
            .child(trapper("b", &tx))
            .child(trapper("c", &tx))
            .child(trapper("d", &tx)),
    );
    drain(&mut rx, 4).await;
    let before = children(&sup).await;
    crash(&node, pid_of(&before, "b").unwrap()).await;
    assert_eq!(
        drain(&mut rx, 5).await,
        vec![Ev::Terminated("d"), Ev::Terminated("c"), Ev::Started("b"), Ev::Started("c"), Ev::Started("d")]
    );
    let after = children(&sup).await;
    assert_eq!(pid_of(&after, "a"), pid_of(&before, "a"));
    for id in ["b", "c", "d"] {
        assert_ne!(pid_of(&after, id), pid_of(&before, id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_types_transient_and_temporary() {
    let node = Node::start(NodeConfig::named("sup-types")).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sup = start_sup(
        &node,
        SupervisorSpec::new(Strategy::OneForOne)
            .child(trapper("trans", &tx).restart(RestartType::Transient))
            .child(trapper("temp", &tx).restart(RestartType::Temporary)),
    );
    drain(&mut rx, 2).await;
    let kids = children(&sup).await;
    // Transient: a normal exit is not restarted; the spec stays.
    let trans = pid_of(&kids, "trans").unwrap();
    let exited = node.wait_exit(trans);
    node.send(trans, Cmd::StopNormal).unwrap();
    assert_eq!(exited.await, ExitReason::Normal);
    drain(&mut rx, 1).await; // its terminate
    let kids = children(&sup).await;
    assert!(kids.iter().any(|(id, pid)| id == "trans" && pid.is_none()), "{kids:?}");
    // ... and can be restarted by hand, then a crash restarts it.
    let SupervisorReply::Started(trans2) = sup.call(SupervisorCall::RestartChild("trans".into()), T).await.unwrap()
    else {
        panic!("restart_child")
    };
    assert_eq!(drain(&mut rx, 1).await, vec![Ev::Started("trans")]);
    crash(&node, trans2).await;
    assert_eq!(drain(&mut rx, 1).await, vec![Ev::Started("trans")]);
    // Temporary: never restarted, and forgotten.
    crash(&node, pid_of(&kids, "temp").unwrap()).await;
    let kids = children(&sup).await;
    assert!(!kids.iter().any(|(id, _)| id == "temp"), "{kids:?}");
    assert!(rx.try_recv().is_err(), "nothing else started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g7_intensity_exceeded_escalates_to_the_parent() {
    let node = Node::start(NodeConfig::named("sup-g7")).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The worker does not trap exits: only its starts are logged.
    let w = worker("w", &tx, OnShutdown::Die);
    let inner = SupervisorSpec::new(Strategy::OneForOne).intensity(2, Duration::from_secs(60)).child(w);
    let outer = start_sup(
        &node,
        SupervisorSpec::new(Strategy::OneForOne)
            .intensity(10, Duration::from_secs(60))
            .child(ChildSpec::supervisor("inner", inner)),
    );
    drain(&mut rx, 1).await;
    let inner_pid = pid_of(&children(&outer).await, "inner").unwrap();
    let inner_addr = node.addr::<Supervisor>(inner_pid).unwrap();
    let inner_exit = node.wait_exit(inner_pid);
    // Two restarts are allowed ...
    for _ in 0..2 {
        let w = pid_of(&children(&inner_addr).await, "w").unwrap();
        crash(&node, w).await;
        assert_eq!(drain(&mut rx, 1).await, vec![Ev::Started("w")]);
    }
    // ... the third crash within the period exceeds the intensity: the inner supervisor gives up
    // with reason shutdown, and the outer one restarts it (a fresh inner with a fresh worker).
    let w = pid_of(&children(&inner_addr).await, "w").unwrap();
    crash(&node, w).await;
    assert_eq!(inner_exit.await, ExitReason::Shutdown);
    assert_eq!(drain(&mut rx, 1).await, vec![Ev::Started("w")]);
    let inner2 = pid_of(&children(&outer).await, "inner").unwrap();
    assert_ne!(inner2, inner_pid);
    let restarts = outer.call(SupervisorCall::RestartsInWindow, T).await.unwrap();
    assert_eq!(restarts, SupervisorReply::Count(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g7_zero_intensity_gives_up_at_once() {
    let node = Node::start(NodeConfig::named("sup-g7z")).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sup = start_sup(
        &node,
        SupervisorSpec::new(Strategy::OneForOne)
            .intensity(0, Duration::from_secs(5))
            .child(trapper("a", &tx))
            .child(trapper("b", &tx)),
    );
    drain(&mut rx, 2).await;
    let sup_exit = node.wait_exit(sup.pid());
    crash(&node, pid_of(&children(&sup).await, "a").unwrap()).await;
    assert_eq!(sup_exit.await, ExitReason::Shutdown);
    assert_eq!(drain(&mut rx, 1).await, vec![Ev::Terminated("b")]);
    assert_eq!(node.process_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_shutdown_with_timeout_then_kill() {
    let node = Node::start(NodeConfig::named("sup-shut")).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let hanger = worker("hang", &tx, OnShutdown::Hang).shutdown(Shutdown::Timeout(Duration::from_millis(100)));
    let sup = start_sup(
        &node,
        SupervisorSpec::new(Strategy::OneForOne).child(trapper("a", &tx)).child(hanger).child(trapper("c", &tx)),
    );
    drain(&mut rx, 3).await;
    let hang_pid = pid_of(&children(&sup).await, "hang").unwrap();
    let hang_exit = node.wait_exit(hang_pid);
    let sup_exit = node.wait_exit(sup.pid());
    node.exit(sup.pid(), ExitReason::Shutdown);
    assert_eq!(sup_exit.await, ExitReason::Shutdown);
    // Reverse start order; the one whose terminate hangs is killed after its timeout.
    assert_eq!(drain(&mut rx, 3).await, vec![Ev::Terminated("c"), Ev::Terminated("hang"), Ev::Terminated("a")]);
    assert_eq!(hang_exit.await, ExitReason::Killed);
    assert_eq!(node.process_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_failing_init_fails_the_supervisor_start() {
    struct Bad;
    impl Behaviour for Bad {
        type Args = ();
        type Msg = ();
        type Call = ();
        type Reply = ();
        async fn init(_: &mut Context<Self>, _: ()) -> Result<Self, Error> {
            Err("no config".into())
        }
    }
    let node = Node::start(NodeConfig::named("sup-init")).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec =
        SupervisorSpec::new(Strategy::OneForOne).child(trapper("a", &tx)).child(ChildSpec::worker::<Bad>("bad", || ()));
    // Observed race-free from a process: spawn_monitor sets the monitor up before init runs.
    // If init fails inline, spawn reports it (OTP: {error, Reason}); if it awaited first, the
    // monitor sees the exit.
    struct Observer(mpsc::UnboundedSender<ExitReason>);
    impl Behaviour for Observer {
        type Args = (SupervisorSpec, mpsc::UnboundedSender<ExitReason>);
        type Msg = ();
        type Call = ();
        type Reply = ();
        async fn init(ctx: &mut Context<Self>, (spec, tx): Self::Args) -> Result<Self, Error> {
            match ctx.spawn_monitor::<Supervisor>(spec, SpawnOpts::labeled("sup")) {
                Err(soma::SpawnError::Init(reason)) => {
                    let _ = tx.send(reason);
                }
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
            Ok(Observer(tx))
        }
        async fn handle_down(&mut self, _: &mut Context<Self>, down: soma::Down) -> Result<(), Error> {
            let _ = self.0.send(down.reason);
            Ok(())
        }
    }
    let (rtx, mut rrx) = mpsc::unbounded_channel();
    let _observer = node.spawn::<Observer>((spec, rtx), SpawnOpts::labeled("observer")).unwrap();
    let reason = tokio::time::timeout(T, rrx.recv()).await.unwrap().unwrap();
    assert!(
        matches!(&reason, ExitReason::Crashed(m) if m.contains("failed to start child bad") && m.contains("no config")),
        "{reason:?}"
    );
    // The child started before it was stopped again.
    assert_eq!(drain(&mut rx, 2).await, vec![Ev::Started("a"), Ev::Terminated("a")]);
    assert_eq!(node.process_count(), 1, "only the observer is left");
}

/// A dynamic child: remembers its argument; can crash.
struct Dyn(u64);

impl Behaviour for Dyn {
    type Args = u64;
    type Msg = Cmd;
    type Call = ();
    type Reply = u64;
    async fn init(_: &mut Context<Self>, n: u64) -> Result<Self, Error> {
        Ok(Dyn(n))
    }
    async fn handle(&mut self, _: &mut Context<Self>, cmd: Cmd) -> Result<(), Error> {
        match cmd {
            Cmd::Crash => Err(format!("dyn {} crashed", self.0).into()),
            Cmd::StopNormal => Ok(()),
        }
    }
    async fn handle_call(&mut self, _: &mut Context<Self>, _: ()) -> Result<u64, Error> {
        Ok(self.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_supervisor_restarts_children_with_their_arguments() {
    let node = Node::start(NodeConfig::named("sup-dyn")).unwrap();
    let spec = DynamicSpec { max_children: Some(3), label: "dyn".into(), ..DynamicSpec::default() };
    let sup = node.spawn::<DynamicSupervisor<Dyn>>(spec, SpawnOpts::labeled("dynsup")).unwrap();
    let mut pids = Vec::new();
    for n in [10, 20, 30] {
        match sup.call(DynamicCall::StartChild(n), T).await.unwrap() {
            DynamicReply::Started(pid) => pids.push(pid),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(sup.call(DynamicCall::StartChild(40), T).await.unwrap(), DynamicReply::Error(_)));
    assert_eq!(sup.call(DynamicCall::CountChildren, T).await.unwrap(), DynamicReply::Count(3));
    assert_eq!(node.info(pids[1]).unwrap().label.as_deref(), Some("dyn-2"));

    // Crash the second: restarted under a new PID with the same argument.
    let exited = node.wait_exit(pids[1]);
    node.send(pids[1], Cmd::Crash).unwrap();
    assert!(
        matches!(tokio::time::timeout(T, exited).await.expect("exit in time"), ExitReason::Crashed(m) if m.contains("dyn 20 crashed"))
    );
    let DynamicReply::Children(now) = sup.call(DynamicCall::WhichChildren, T).await.unwrap() else { panic!() };
    assert_eq!(now.len(), 3);
    assert_eq!(now[0], pids[0]);
    assert_ne!(now[1], pids[1]);
    assert_eq!(node.addr::<Dyn>(now[1]).unwrap().call((), T).await.unwrap(), 20);

    // Terminate one for good.
    assert_eq!(sup.call(DynamicCall::TerminateChild(now[2]), T).await.unwrap(), DynamicReply::Ok);
    assert!(!node.is_alive(now[2]));
    assert_eq!(sup.call(DynamicCall::CountChildren, T).await.unwrap(), DynamicReply::Count(2));

    // Shutting the supervisor down stops its children.
    let sup_exit = node.wait_exit(sup.pid());
    node.exit(sup.pid(), ExitReason::Shutdown);
    assert_eq!(sup_exit.await, ExitReason::Shutdown);
    assert_eq!(node.process_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g7_dynamic_supervisor_escalates() {
    let node = Node::start(NodeConfig::named("sup-dyn-g7")).unwrap();
    let spec = DynamicSpec {
        intensity: soma::supervision::Intensity { max_restarts: 1, period_ms: 60_000 },
        ..DynamicSpec::default()
    };
    let sup = node.spawn::<DynamicSupervisor<Dyn>>(spec, SpawnOpts::labeled("dynsup")).unwrap();
    let DynamicReply::Started(first) = sup.call(DynamicCall::StartChild(1), T).await.unwrap() else { panic!() };
    let sup_exit = node.wait_exit(sup.pid());
    let crash_dyn = |pid: Pid| {
        let exited = node.wait_exit(pid);
        node.send(pid, Cmd::Crash).unwrap();
        exited
    };
    assert!(matches!(crash_dyn(first).await, ExitReason::Crashed(_)));
    let DynamicReply::Children(now) = sup.call(DynamicCall::WhichChildren, T).await.unwrap() else { panic!() };
    assert!(matches!(crash_dyn(now[0]).await, ExitReason::Crashed(_)));
    assert_eq!(sup_exit.await, ExitReason::Shutdown);
    assert_eq!(node.process_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_shutdown_stops_supervision_trees() {
    let node = Node::start(NodeConfig::named("sup-node-shut")).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sup =
        start_sup(&node, SupervisorSpec::new(Strategy::OneForOne).child(trapper("a", &tx)).child(trapper("b", &tx)));
    drain(&mut rx, 2).await;
    node.shutdown(T).await;
    assert_eq!(drain(&mut rx, 2).await, vec![Ev::Terminated("b"), Ev::Terminated("a")]);
    assert_eq!(node.process_count(), 0);
}

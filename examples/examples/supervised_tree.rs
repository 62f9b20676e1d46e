//! A supervised tree of agents: crash one, watch the supervisor restart it, read its trace.
//!
//! Run with `cargo run -p soma-examples --example supervised_tree`.
//!
//! * a `planner` agent and two `worker` agents under a one_for_one supervisor;
//! * the planner dispatches tasks to the workers with a correlation ID per task;
//! * tracing is switched on for worker-1 at run time; a poisoned task makes it panic;
//! * the supervisor restarts it (new PID, same label), the trace shows what it received, the
//!   state transitions, and its exit; the tree and `info` are printed as JSON.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use soma::supervision::{ChildSpec, Strategy, Supervisor, SupervisorCall, SupervisorReply, SupervisorSpec};
use soma::{Behaviour, Context, CorrelationId, Error, ExitReason, Node, NodeConfig, Pid, SpawnOpts};

/// A worker agent: counts the tasks it handled and panics on a poisoned one.
#[derive(Serialize)]
struct Worker {
    name: String,
    done: u64,
    last: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Task {
    Summarize(String),
    Poison,
}

impl Behaviour for Worker {
    type Args = String;
    type Msg = Task;
    type Call = ();
    type Reply = u64;

    fn name() -> &'static str {
        "example.worker"
    }

    async fn init(_ctx: &mut Context<Self>, name: String) -> Result<Self, Error> {
        Ok(Worker { name, done: 0, last: None })
    }

    async fn handle(&mut self, ctx: &mut Context<Self>, task: Task) -> Result<(), Error> {
        match task {
            Task::Summarize(text) => {
                self.done += 1;
                self.last = Some(text);
                tracing::info!(worker = %self.name, corr = ?ctx.correlation(), done = self.done, "task done");
                Ok(())
            }
            Task::Poison => panic!("{} choked on a poisoned task", self.name),
        }
    }

    async fn handle_call(&mut self, _ctx: &mut Context<Self>, _: ()) -> Result<u64, Error> {
        Ok(self.done)
    }

    fn snapshot(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }
}

async fn child_pid(sup: &soma::Addr<Supervisor>, id: &str) -> anyhow::Result<Pid> {
    match sup.call(SupervisorCall::WhichChildren, Duration::from_secs(5)).await? {
        SupervisorReply::Children(c) => {
            c.into_iter().find(|c| c.id == id).and_then(|c| c.pid).ok_or_else(|| anyhow::anyhow!("{id} not running"))
        }
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();

    let node = Node::start(NodeConfig::named("demo"))?;
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(3, Duration::from_secs(5))
        .child(ChildSpec::worker::<Worker>("worker-1", || "worker-1".to_owned()))
        .child(ChildSpec::worker::<Worker>("worker-2", || "worker-2".to_owned()));
    let sup = node.spawn::<Supervisor>(spec, SpawnOpts::labeled("agents"))?;

    let w1 = child_pid(&sup, "worker-1").await?;
    println!("== supervision tree\n{}", serde_json::to_string_pretty(&node.tree())?);

    // Live tracing, switched on at run time for one process.
    node.trace(w1, true)?;
    let mut stream = node.trace_stream(w1)?;

    node.send(w1, Task::Summarize("quarterly report".into()))?;
    let corr = CorrelationId(0x5eed);
    node.addr::<Worker>(w1).ok_or_else(|| anyhow::anyhow!("worker-1 gone"))?.send_with(Task::Poison, Some(corr))?;

    println!("\n== trace of worker-1 {w1} (streamed live)");
    while let Some(ev) = stream.next().await {
        println!("{}", serde_json::to_string(&ev)?);
        if ev.kind == soma::TraceKind::Exited {
            assert!(matches!(serde_json::from_value(ev.payload)?, ExitReason::Crashed(_)));
        }
    }

    // The supervisor has restarted it: same label, new PID, fresh state.
    let w1b = child_pid(&sup, "worker-1").await?;
    println!("\n== worker-1 restarted: {w1} -> {w1b}");
    assert_ne!(w1, w1b);
    println!("{}", serde_json::to_string_pretty(&node.info(w1b)?)?);
    println!("state: {}", node.state(w1b, Duration::from_secs(1)).await?);

    println!("\n== supervision tree after the restart\n{}", serde_json::to_string_pretty(&node.tree())?);
    node.shutdown(Duration::from_secs(5)).await;
    println!("\nshut down cleanly; {} processes left", node.process_count());
    Ok(())
}

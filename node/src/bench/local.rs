//! `soma bench local`: the process primitive's figures (DESIGN.md §4), as JSON lines.
//!
//! Each result is printed as `{"bench":"local","metric":NAME,"value":X,"unit":U}`. The workloads:
//!
//! * `spawn_ns_per_process`, `spawn_bytes_per_process`: spawn 1,000,000 idle processes from one
//!   task; bytes are the growth of the OS process's resident set (RSS) divided by the count.
//! * `send_msgs_per_sec`: 2,000,000 one-way messages from one task to one process, timed until
//!   the receiver has handled all of them. The median of [`SEND_ROUNDS`] runs.
//! * `call_round_trips_per_sec`: 1,000,000 sequential calls from one task to one process.
//! * `send_msgs_per_sec_traced`: the send case with live tracing on for the receiver (every
//!   message captured into its ring) and `send_traced_ratio` = traced / untraced. Untraced and
//!   traced runs alternate, [`SEND_ROUNDS`] of each, and each figure is the median of its
//!   runs: the ratio compares the two under the same conditions. (Run once each, untraced
//!   first and traced after the call case, one pair swung between 0.40 and 0.77 on the same
//!   binary: the scheduler's placement of sender and receiver, and the heap the call case
//!   left behind, weigh more than the tracing does.)

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{rss_bytes, BenchResult};

/// Runs of each send case (untraced, traced), alternated; each figure is the median.
pub const SEND_ROUNDS: usize = 5;
use crate::{Behaviour, Context, Error, Node, NodeConfig, SpawnOpts};

/// Sizes of the local benchmark (the defaults are the figures).
#[derive(Debug, Clone, Copy)]
pub struct LocalBenchSizes {
    /// Idle processes spawned.
    pub spawn: usize,
    /// One-way messages sent.
    pub send: u64,
    /// Sequential calls made.
    pub calls: u64,
}

impl Default for LocalBenchSizes {
    fn default() -> Self {
        LocalBenchSizes { spawn: 1_000_000, send: 2_000_000, calls: 1_000_000 }
    }
}

struct Idle;

impl Behaviour for Idle {
    type Args = ();
    type Msg = ();
    type Call = ();
    type Reply = ();
    fn name() -> &'static str {
        "bench.idle"
    }
    async fn init(_: &mut Context<Self>, _: ()) -> Result<Self, Error> {
        Ok(Idle)
    }
}

struct Sink {
    left: u64,
    done: Option<oneshot::Sender<()>>,
}

impl Behaviour for Sink {
    type Args = (u64, oneshot::Sender<()>);
    type Msg = u64;
    type Call = ();
    type Reply = ();
    fn name() -> &'static str {
        "bench.sink"
    }
    async fn init(_: &mut Context<Self>, (left, done): Self::Args) -> Result<Self, Error> {
        Ok(Sink { left, done: Some(done) })
    }
    async fn handle(&mut self, _: &mut Context<Self>, _: u64) -> Result<(), Error> {
        self.left -= 1;
        if self.left == 0 {
            if let Some(done) = self.done.take() {
                let _ = done.send(());
            }
        }
        Ok(())
    }
}

struct Echo;

impl Behaviour for Echo {
    type Args = ();
    type Msg = ();
    type Call = u64;
    type Reply = u64;
    fn name() -> &'static str {
        "bench.echo"
    }
    async fn init(_: &mut Context<Self>, _: ()) -> Result<Self, Error> {
        Ok(Echo)
    }
    async fn handle_call(&mut self, _: &mut Context<Self>, x: u64) -> Result<u64, Error> {
        Ok(x + 1)
    }
}

/// The median of a non-empty sample (the upper middle one for an even count).
fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn result(metric: &'static str, value: f64, unit: &'static str) -> BenchResult {
    BenchResult { bench: "local", metric, value, unit }
}

async fn send_case(node: &Node, n: u64, traced: bool) -> Result<f64, Error> {
    let (tx, rx) = oneshot::channel();
    let sink = node.spawn::<Sink>((n, tx), SpawnOpts::labeled("sink"))?;
    if traced {
        node.trace(sink.pid(), true)?;
    }
    let t0 = Instant::now();
    for i in 0..n {
        sink.send(i)?;
        // Let the receiver run on this worker too now and then, as a real sender would.
        if i % 4096 == 4095 {
            tokio::task::yield_now().await;
        }
    }
    rx.await?;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    node.kill(sink.pid());
    node.wait_exit(sink.pid()).await;
    Ok(rate)
}

/// Runs the local benchmark and returns its figures (call from a tokio multi-thread runtime).
pub async fn run_local(sizes: LocalBenchSizes, mut emit: impl FnMut(&BenchResult)) -> Result<Vec<BenchResult>, Error> {
    let mut out = Vec::new();
    let mut push = |r: BenchResult| {
        emit(&r);
        out.push(r);
    };

    // Spawn: 1M idle processes.
    {
        let node = Node::start(NodeConfig::named("bench-spawn"))?;
        let rss0 = rss_bytes();
        let t0 = Instant::now();
        for _ in 0..sizes.spawn {
            node.spawn::<Idle>((), SpawnOpts::default())?;
        }
        let dt = t0.elapsed();
        let rss1 = rss_bytes();
        assert_eq!(node.process_count(), sizes.spawn, "all spawned processes are alive");
        push(result("spawn_ns_per_process", dt.as_nanos() as f64 / sizes.spawn as f64, "ns"));
        push(result("spawn_bytes_per_process", rss1.saturating_sub(rss0) as f64 / sizes.spawn as f64, "bytes"));
        node.shutdown(Duration::from_secs(30)).await;
    }

    let node = Node::start(NodeConfig::named("bench"))?;
    // Warm up allocator and scheduler.
    send_case(&node, sizes.send / 10, false).await?;
    let (mut untraced, mut traced) = (Vec::with_capacity(SEND_ROUNDS), Vec::with_capacity(SEND_ROUNDS));
    for round in 0..SEND_ROUNDS {
        let (u, t) = (send_case(&node, sizes.send, false).await?, send_case(&node, sizes.send, true).await?);
        tracing::debug!(target: "soma::bench", round, untraced = u, traced = t, ratio = t / u, "send round");
        untraced.push(u);
        traced.push(t);
    }
    let (untraced, traced) = (median(&mut untraced), median(&mut traced));
    push(result("send_msgs_per_sec", untraced, "msgs/s"));
    push(result("send_msgs_per_sec_traced", traced, "msgs/s"));
    push(result("send_traced_ratio", traced / untraced, "ratio"));

    let echo = node.spawn::<Echo>((), SpawnOpts::labeled("echo"))?;
    let timeout = Duration::from_secs(5);
    for i in 0..(sizes.calls / 10) {
        echo.call(i, timeout).await?;
    }
    let t0 = Instant::now();
    for i in 0..sizes.calls {
        let r = echo.call(i, timeout).await?;
        debug_assert_eq!(r, i + 1);
    }
    push(result("call_round_trips_per_sec", sizes.calls as f64 / t0.elapsed().as_secs_f64(), "calls/s"));

    node.shutdown(Duration::from_secs(5)).await;
    Ok(out)
}

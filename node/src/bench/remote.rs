//! `soma bench remote`: distribution's figures, as JSON lines
//! (`{"bench":"remote","metric":NAME,"value":X,"unit":U}`).
//!
//! # Setup
//!
//! Two distributed nodes, `bench-a` and `bench-b`, run in **one OS process**, each with its own
//! quinn endpoint on `127.0.0.1` (ports chosen by the OS). Between them is real QUIC with real
//! mutual TLS 1.3: a throwaway cluster CA and the two node certificates are generated **in
//! memory** for the run (nothing is written to disk), exactly as a cluster made with
//! `soma cert` would be set up. Both nodes share the caller's tokio runtime (the binary uses the
//! multi-thread runtime on all cores), so both ends of the connection — encoding, QUIC and TLS,
//! UDP, decoding, the handlers — compete for the same cores; between two machines each end would
//! have its own.
//!
//! # Workloads
//!
//! All traffic goes from `bench-a` to processes on `bench-b`, sent by a **tokio task** on
//! `bench-a`'s runtime (not by a process: the sender has no PID, so every message travels on the
//! lane of the pair (none, receiver)) through a [`PidRef`](crate::PidRef).
//!
//! * `remote_send_msgs_per_sec`: [`RemoteBenchSizes::send`] one-way `u64` messages to one
//!   process on `bench-b`, timed from the first send until that process has handled **all** of
//!   them (it counts, and signals through a oneshot channel when the count reaches N). The
//!   sender uses [`PidRef::send_wait`](crate::PidRef::send_wait), which waits while the
//!   connection's lane is full (backpressure) instead of dropping, and yields to the scheduler
//!   every [`SENDER_YIELD_EVERY`] messages as a process handling a stream of work would. The
//!   count is checked at the end, and so are `bench-b`'s drop counters.
//! * `remote_send_1k_msgs_per_sec`: the same with 1 KiB payloads: a `String` of 1,024 bytes
//!   (text, what agents mostly exchange), a fresh clone per message. Not a `Vec<u8>`: serde
//!   moves a `Vec<u8>` element by element (no `serde_bytes` here), which on this bench halves
//!   the rate and measures serde's per-byte visitor rather than the transport.
//! * `remote_call_p50_us`, `remote_call_p99_us`: the latency of each of
//!   [`RemoteBenchSizes::calls`] sequential calls (`u64` in, `u64` out) to one process on
//!   `bench-b`, measured call by call, after a warm-up of a tenth as many;
//!   `remote_call_round_trips_per_sec`: the same calls per second of wall time.
//!
//! Each send case is preceded by a warm-up of a tenth of its size. Nothing here panics on an
//! error: every failure is a [`BenchError`].

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::BenchResult;
use crate::tls::{generate_ca, issue_node_cert, NodeTls, TlsError, Validity};
use crate::{
    Behaviour, CallError, Context, DistConfig, DistStats, Error, Message, Node, NodeConfig, NodeError, SendError,
    SpawnError, SpawnOpts,
};

/// The sender yields to the scheduler after this many messages (see the module docs).
pub const SENDER_YIELD_EVERY: u64 = 1024;

/// Payload size of the `remote_send_1k_msgs_per_sec` case, in bytes (a `String`).
pub const PAYLOAD_1K: usize = 1024;

/// How long a send case may take to be fully handled before it is reported incomplete.
const COMPLETION_TIMEOUT: Duration = Duration::from_secs(60);

/// Timeout of each benchmark call (a call that takes longer is an error, not a slow figure).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Sizes of the remote benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteBenchSizes {
    /// One-way `u64` messages sent (`remote_send_msgs_per_sec`).
    pub send: u64,
    /// One-way 1 KiB messages sent (`remote_send_1k_msgs_per_sec`).
    pub send_1k: u64,
    /// Sequential calls made (`remote_call_*`).
    pub calls: u64,
}

impl Default for RemoteBenchSizes {
    fn default() -> Self {
        RemoteBenchSizes { send: 1_000_000, send_1k: 200_000, calls: 100_000 }
    }
}

/// Why the remote benchmark could not produce its figures.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A size is out of range.
    #[error("invalid benchmark size: {0}")]
    Size(String),
    /// The throwaway CA or node certificates could not be made.
    #[error("cannot make the throwaway certificates: {0}")]
    Tls(#[from] TlsError),
    /// A node could not start (e.g. no UDP port on 127.0.0.1).
    #[error("cannot start a bench node: {0}")]
    Node(#[from] NodeError),
    /// A bench process could not be spawned.
    #[error("cannot spawn a bench process: {0}")]
    Spawn(#[from] SpawnError),
    /// A send failed (it does not for a `u64` or a 1 KiB vector unless the node is broken).
    #[error("send failed: {0}")]
    Send(#[from] SendError),
    /// A call failed (the first one also tells whether the two nodes could connect at all).
    #[error("call failed: {0}")]
    Call(#[from] CallError),
    /// A call came back with the wrong reply.
    #[error("call {sent} came back as {got} (expected {})", sent + 1)]
    WrongReply {
        /// The request.
        sent: u64,
        /// The reply.
        got: u64,
    },
    /// The receiver did not handle every message.
    #[error("{case}: the receiver handled {received} of {expected} messages within {waited:?}")]
    Incomplete {
        /// The case.
        case: &'static str,
        /// Messages handled.
        received: u64,
        /// Messages sent.
        expected: u64,
        /// How long the bench waited after the last send.
        waited: Duration,
    },
    /// The receiving node dropped or refused messages (its counters grew during the case).
    #[error("{case}: bench-b dropped or refused messages: {counters}")]
    Dropped {
        /// The case.
        case: &'static str,
        /// The counters that grew.
        counters: String,
    },
    /// A node reported no address although it was started distributed.
    #[error("bench node {0} has no local address")]
    NoAddr(String),
}

/// The receiver of the send cases: counts messages of type `M`, signals when it has `left` none.
struct Sink<M> {
    left: u64,
    seen: Arc<AtomicU64>,
    done: Option<oneshot::Sender<()>>,
    _m: PhantomData<fn() -> M>,
}

impl<M: Message> Behaviour for Sink<M> {
    type Args = (u64, Arc<AtomicU64>, oneshot::Sender<()>);
    type Msg = M;
    type Call = ();
    type Reply = ();
    fn name() -> &'static str {
        "bench.remote_sink"
    }
    async fn init(_: &mut Context<Self>, (left, seen, done): Self::Args) -> Result<Self, Error> {
        Ok(Sink { left, seen, done: Some(done), _m: PhantomData })
    }
    async fn handle(&mut self, _: &mut Context<Self>, _: M) -> Result<(), Error> {
        // One writer: a relaxed add is an uncontended increment, read only at the end.
        self.seen.fetch_add(1, Ordering::Relaxed);
        self.left = self.left.saturating_sub(1);
        if self.left == 0 {
            if let Some(done) = self.done.take() {
                let _ = done.send(());
            }
        }
        Ok(())
    }
}

/// The callee of the call case.
struct Echo;

impl Behaviour for Echo {
    type Args = ();
    type Msg = ();
    type Call = u64;
    type Reply = u64;
    fn name() -> &'static str {
        "bench.remote_echo"
    }
    async fn init(_: &mut Context<Self>, _: ()) -> Result<Self, Error> {
        Ok(Echo)
    }
    async fn handle_call(&mut self, _: &mut Context<Self>, x: u64) -> Result<u64, Error> {
        Ok(x.wrapping_add(1))
    }
}

fn result(metric: &'static str, value: f64, unit: &'static str) -> BenchResult {
    BenchResult { bench: "remote", metric, value, unit }
}

/// Starts the two bench nodes with certificates from a fresh in-memory CA, each told where the
/// other is.
fn start_pair() -> Result<(Node, Node), BenchError> {
    const CLUSTER: &str = "bench";
    let ca = generate_ca(CLUSTER)?;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let start = |name: &str| -> Result<Node, BenchError> {
        let leaf = issue_node_cert(&ca, name, &[], Validity::days_from_now(1))?;
        let tls = NodeTls::from_pem(&ca.cert_pem, &leaf.cert_pem, &leaf.key_pem)?;
        Ok(Node::start_distributed(NodeConfig::named(name), DistConfig::new(CLUSTER, loopback, tls))?)
    };
    let a = start("bench-a")?;
    let b = start("bench-b")?;
    let addr = |n: &Node| n.local_addr().ok_or_else(|| BenchError::NoAddr(n.id().name().to_string()));
    a.add_peer("bench-b", addr(&b)?);
    b.add_peer("bench-a", addr(&a)?);
    Ok((a, b))
}

/// Drop counters of the receiving node that must not grow during a send case.
fn drops(s: &DistStats) -> [(&'static str, u64); 4] {
    [
        ("to_dead_pid", s.to_dead_pid),
        ("undecodable", s.undecodable),
        ("mailbox_full", s.mailbox_full),
        ("disconnects", s.disconnects),
    ]
}

/// Sends `n` messages made by `make` from a task on `a` to a fresh sink on `b`; returns
/// messages per second, from the first send until the sink has handled the last one.
async fn send_case<M: Message>(
    a: &Node,
    b: &Node,
    case: &'static str,
    n: u64,
    make: impl Fn(u64) -> M,
) -> Result<f64, BenchError> {
    let (tx, rx) = oneshot::channel();
    let seen = Arc::new(AtomicU64::new(0));
    let sink = b.spawn::<Sink<M>>((n, Arc::clone(&seen), tx), SpawnOpts::labeled("sink"))?;
    let to = a.pid_ref::<Sink<M>>(sink.pid());
    let before = b.dist_stats().unwrap_or_default();

    let t0 = Instant::now();
    for i in 0..n {
        // Waits while the lane is full: nothing is dropped for backpressure.
        to.send_wait(make(i)).await?;
        if i % SENDER_YIELD_EVERY == SENDER_YIELD_EVERY - 1 {
            tokio::task::yield_now().await;
        }
    }
    let sent = Instant::now();
    let done = tokio::time::timeout(COMPLETION_TIMEOUT, rx).await;
    let elapsed = t0.elapsed();
    let received = seen.load(Ordering::Relaxed);
    b.kill(sink.pid());
    b.wait_exit(sink.pid()).await;
    if !matches!(done, Ok(Ok(()))) || received != n {
        return Err(BenchError::Incomplete { case, received, expected: n, waited: sent.elapsed() });
    }
    let after = b.dist_stats().unwrap_or_default();
    let grew: Vec<String> = drops(&before)
        .iter()
        .zip(drops(&after))
        .filter(|((_, x), (_, y))| y > x)
        .map(|((name, x), (_, y))| format!("{name} +{}", y - x))
        .collect();
    if !grew.is_empty() {
        return Err(BenchError::Dropped { case, counters: grew.join(", ") });
    }
    tracing::debug!(case, n, ?elapsed, a = ?a.dist_stats(), b = ?after, "send case done");
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// The value at percentile `p` (nearest rank) of sorted, non-empty `v`.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied().unwrap_or(0)
}

/// Runs the remote benchmark and returns its figures, each also passed to `emit` as soon as it
/// is measured (call from a tokio multi-thread runtime; see the module docs).
pub async fn run_remote(
    sizes: RemoteBenchSizes,
    mut emit: impl FnMut(&BenchResult),
) -> Result<Vec<BenchResult>, BenchError> {
    for (name, v) in [("send", sizes.send), ("send-1k", sizes.send_1k), ("calls", sizes.calls)] {
        if v == 0 {
            return Err(BenchError::Size(format!("{name} must be at least 1")));
        }
    }
    let (a, b) = start_pair()?;
    let r = run_cases(&a, &b, sizes, &mut emit).await;
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
    r
}

async fn run_cases(
    a: &Node,
    b: &Node,
    sizes: RemoteBenchSizes,
    emit: &mut impl FnMut(&BenchResult),
) -> Result<Vec<BenchResult>, BenchError> {
    let mut out = Vec::new();
    let mut push = |r: BenchResult| {
        emit(&r);
        out.push(r);
    };

    // Connect (dial, TLS, handshake) before anything is timed; this first call is also where a
    // connection failure shows, as `CallError::NoConnection`.
    let echo = b.spawn::<Echo>((), SpawnOpts::labeled("echo"))?;
    let callee = a.pid_ref::<Echo>(echo.pid());
    callee.call(0, CALL_TIMEOUT).await?;

    let small = "remote_send_msgs_per_sec";
    send_case(a, b, small, (sizes.send / 10).max(1), |i| i).await?;
    push(result(small, send_case(a, b, small, sizes.send, |i| i).await?, "msgs/s"));

    let big = "remote_send_1k_msgs_per_sec";
    let text = "x".repeat(PAYLOAD_1K);
    let make = |_| text.clone();
    send_case(a, b, big, (sizes.send_1k / 10).max(1), make).await?;
    push(result(big, send_case(a, b, big, sizes.send_1k, make).await?, "msgs/s"));

    for i in 0..(sizes.calls / 10).max(1) {
        callee.call(i, CALL_TIMEOUT).await?;
    }
    let mut lat = Vec::with_capacity(usize::try_from(sizes.calls).unwrap_or(0));
    let t0 = Instant::now();
    for i in 0..sizes.calls {
        let t = Instant::now();
        let got = callee.call(i, CALL_TIMEOUT).await?;
        lat.push(t.elapsed().as_nanos() as u64);
        if got != i.wrapping_add(1) {
            return Err(BenchError::WrongReply { sent: i, got });
        }
    }
    let total = t0.elapsed();
    lat.sort_unstable();
    push(result("remote_call_p50_us", percentile(&lat, 50.0) as f64 / 1e3, "us"));
    push(result("remote_call_p99_us", percentile(&lat, 99.0) as f64 / 1e3, "us"));
    push(result("remote_call_round_trips_per_sec", sizes.calls as f64 / total.as_secs_f64(), "calls/s"));
    b.kill(echo.pid());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_remote_emits_every_metric() {
        let sizes = RemoteBenchSizes { send: 2_000, send_1k: 300, calls: 200 };
        let mut emitted = Vec::new();
        let out = run_remote(sizes, |r| emitted.push(r.clone())).await.expect("remote bench runs");
        assert_eq!(out, emitted);
        let names: Vec<&str> = out.iter().map(|r| r.metric).collect();
        assert_eq!(
            names,
            [
                "remote_send_msgs_per_sec",
                "remote_send_1k_msgs_per_sec",
                "remote_call_p50_us",
                "remote_call_p99_us",
                "remote_call_round_trips_per_sec"
            ]
        );
        for r in &out {
            assert_eq!(r.bench, "remote");
            assert!(r.value.is_finite() && r.value > 0.0, "{r:?}");
        }
    }

    #[tokio::test]
    async fn zero_size_is_an_error() {
        let sizes = RemoteBenchSizes { calls: 0, ..RemoteBenchSizes::default() };
        assert!(matches!(run_remote(sizes, |_| {}).await, Err(BenchError::Size(_))));
    }
}

//! `soma bench detect`: failure detection (G4) on a busy cluster, as JSON lines
//! (`{"bench":"detect","metric":NAME,"value":X,"unit":U}`).
//!
//! # Setup
//!
//! [`DetectBenchSizes::nodes`] stable nodes plus one *victim* per round run in **one OS
//! process**, each a distributed node on its own quinn endpoint on `127.0.0.1` with real mutual
//! TLS (a throwaway in-memory CA), all running [`Membership`] with the default configuration
//! (gossip every 100 ms, phi 8) and seeded with the first node.
//!
//! # Workloads
//!
//! * **Load**: on every stable node a task sends `u64` messages as fast as backpressure allows
//!   (`send_wait`) to a sink process on each other stable node and on every victim, for the
//!   whole run. The cluster is busy: that is the point.
//! * `false_downs_under_load`: member `Down` events seen by any stable node about a node that
//!   was not stopped, during [`DetectBenchSizes::load_secs`] of load and then through all the
//!   rounds (must be 0).
//! * Each round stops one victim's gossip ([`Membership::stop`]: its heartbeat stops, its QUIC
//!   connections stay open and keep answering keep-alives — a hung membership layer, the
//!   hardest case for the transport's own timeout). `detect_every_peer_ms_p50` / `_max`: from the
//!   stop until **every** stable node has declared the victim down; `detect_ms_p50` / `_max`:
//!   per (peer, round).
//! * `load_msgs_per_sec`: messages the sinks handled per second over the run (how busy it was).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::BenchResult;
use crate::membership::{MemberEvent, Membership, MembershipConfig, MembershipError, Seed};
use crate::tls::{generate_ca, issue_node_cert, NodeTls, TlsError, Validity};
use crate::{Behaviour, Context, DistConfig, Error, Node, NodeConfig, NodeError, PidRef, SpawnError, SpawnOpts};

/// Sizes of the detection bench.
#[derive(Debug, Clone, Copy)]
pub struct DetectBenchSizes {
    /// Stable nodes (≥ 2).
    pub nodes: usize,
    /// Detection rounds (one victim each, ≥ 1).
    pub rounds: usize,
    /// Seconds of load before the first round.
    pub load_secs: u64,
}

impl Default for DetectBenchSizes {
    /// 4 stable nodes, 5 rounds, 10 s of load.
    fn default() -> Self {
        DetectBenchSizes { nodes: 4, rounds: 5, load_secs: 10 }
    }
}

/// Why the detection bench failed.
#[derive(Debug, thiserror::Error)]
pub enum DetectBenchError {
    /// A size is out of range.
    #[error("invalid benchmark size: {0}")]
    Size(String),
    /// The throwaway certificates could not be made.
    #[error("cannot make the throwaway certificates: {0}")]
    Tls(#[from] TlsError),
    /// A node could not start.
    #[error("cannot start a bench node: {0}")]
    Node(#[from] NodeError),
    /// Membership could not start.
    #[error("membership did not start: {0}")]
    Membership(#[from] MembershipError),
    /// A sink could not be spawned.
    #[error("cannot spawn a sink: {0}")]
    Spawn(#[from] SpawnError),
    /// Something did not happen in time.
    #[error("{0} did not happen within {1:?}")]
    Timeout(&'static str, Duration),
}

/// Counts what it receives into a shared counter.
struct Sink(Arc<AtomicU64>);

impl Behaviour for Sink {
    type Args = Arc<AtomicU64>;
    type Msg = u64;
    type Call = ();
    type Reply = ();
    fn name() -> &'static str {
        "bench.detect.sink"
    }
    async fn init(_: &mut Context<Self>, counter: Arc<AtomicU64>) -> Result<Self, Error> {
        Ok(Sink(counter))
    }
    async fn handle(&mut self, _: &mut Context<Self>, _: u64) -> Result<(), Error> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn result(metric: &'static str, value: f64, unit: &'static str) -> BenchResult {
    BenchResult { bench: "detect", metric, value, unit }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Waits for `cond` (polling every 10 ms) at most `limit`.
async fn wait_for(what: &'static str, limit: Duration, mut cond: impl FnMut() -> bool) -> Result<(), DetectBenchError> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            return Err(DetectBenchError::Timeout(what, limit));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Runs the bench on the current tokio runtime; `emit` gets each figure as it is measured.
pub async fn run_detect(
    sizes: DetectBenchSizes,
    mut emit: impl FnMut(&BenchResult),
) -> Result<Vec<BenchResult>, DetectBenchError> {
    if sizes.nodes < 2 || sizes.nodes > 16 || sizes.rounds == 0 || sizes.rounds > 32 {
        return Err(DetectBenchError::Size("nodes must be 2..=16 and rounds 1..=32".into()));
    }
    const CLUSTER: &str = "bench";
    let ca = generate_ca(CLUSTER)?;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let total = sizes.nodes + sizes.rounds;
    let mut nodes = Vec::with_capacity(total);
    for i in 0..total {
        let name = if i < sizes.nodes { format!("stable-{i}") } else { format!("victim-{}", i - sizes.nodes) };
        let leaf = issue_node_cert(&ca, &name, &[], Validity::days_from_now(1))?;
        let tls = NodeTls::from_pem(&ca.cert_pem, &leaf.cert_pem, &leaf.key_pem)?;
        nodes.push(Node::start_distributed(NodeConfig::named(&name), DistConfig::new(CLUSTER, loopback, tls))?);
    }
    let seed_addr = nodes[0].local_addr().ok_or(DetectBenchError::Timeout("a bound address", Duration::ZERO))?;
    let seed = Seed { name: "stable-0".into(), host: seed_addr.to_string() };
    let mut members = Vec::with_capacity(total);
    for (i, n) in nodes.iter().enumerate() {
        let seeds = if i == 0 { Vec::new() } else { vec![seed.clone()] };
        members.push(Membership::join(n, MembershipConfig { seeds, ..MembershipConfig::default() }).await?);
    }
    wait_for("membership convergence", Duration::from_secs(30), || members.iter().all(|m| m.len() == total)).await?;

    // Sinks everywhere, load from every stable node.
    let handled = Arc::new(AtomicU64::new(0));
    let mut sinks = Vec::with_capacity(total);
    for n in &nodes {
        sinks.push(n.spawn::<Sink>(Arc::clone(&handled), SpawnOpts::labeled("sink"))?.pid());
    }
    let stop_load = Arc::new(AtomicBool::new(false));
    let mut loaders = Vec::new();
    for (i, n) in nodes.iter().take(sizes.nodes).enumerate() {
        let targets: Vec<PidRef<Sink>> =
            sinks.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| n.pid_ref::<Sink>(*p)).collect();
        let stop = Arc::clone(&stop_load);
        loaders.push(tokio::spawn(async move {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for t in &targets {
                    // A victim's connection may be closed by now: errors just move on.
                    let _ = t.send_wait(k).await;
                }
                k += 1;
                if k % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }

    // False downs: any Down about a node that was not stopped.
    let stopped: Arc<parking_lot::Mutex<Vec<String>>> = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let false_downs = Arc::new(AtomicU64::new(0));
    let mut watchers = Vec::new();
    for m in members.iter().take(sizes.nodes) {
        let mut rx = m.subscribe();
        let (stopped, false_downs) = (Arc::clone(&stopped), Arc::clone(&false_downs));
        watchers.push(tokio::spawn(async move {
            while let Ok(e) = rx.recv().await {
                if let MemberEvent::Down { member, .. } = e {
                    if !stopped.lock().contains(&member.name) {
                        false_downs.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let load_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(sizes.load_secs)).await;

    let mut every_peer = Vec::with_capacity(sizes.rounds);
    let mut per_peer = Vec::with_capacity(sizes.rounds * sizes.nodes);
    for r in 0..sizes.rounds {
        let victim = &members[sizes.nodes + r];
        let name = format!("victim-{r}");
        let mut rxs: Vec<_> = members.iter().take(sizes.nodes).map(|m| m.subscribe()).collect();
        stopped.lock().push(name.clone());
        let t0 = Instant::now();
        victim.stop().await;
        let mut slowest = Duration::ZERO;
        for rx in &mut rxs {
            let seen = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    match rx.recv().await {
                        Ok(MemberEvent::Down { member, .. }) if member.name == name => return true,
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return false,
                    }
                }
            })
            .await;
            if !matches!(seen, Ok(true)) {
                return Err(DetectBenchError::Timeout("a victim declared down on every peer", Duration::from_secs(30)));
            }
            let t = t0.elapsed();
            per_peer.push(t.as_secs_f64() * 1e3);
            slowest = slowest.max(t);
        }
        every_peer.push(slowest.as_secs_f64() * 1e3);
        nodes[sizes.nodes + r].shutdown(Duration::from_secs(1)).await;
    }
    stop_load.store(true, Ordering::Relaxed);
    let elapsed = load_start.elapsed().as_secs_f64();
    for l in loaders {
        let _ = tokio::time::timeout(Duration::from_secs(5), l).await;
    }
    for w in watchers {
        w.abort();
    }
    every_peer.sort_by(f64::total_cmp);
    per_peer.sort_by(f64::total_cmp);
    let out = vec![
        result("load_msgs_per_sec", handled.load(Ordering::Relaxed) as f64 / elapsed.max(1e-9), "msgs/s"),
        result("false_downs_under_load", false_downs.load(Ordering::Relaxed) as f64, "events"),
        result("detect_every_peer_ms_p50", percentile(&every_peer, 0.5), "ms"),
        result("detect_every_peer_ms_max", every_peer.last().copied().unwrap_or(0.0), "ms"),
        result("detect_ms_p50", percentile(&per_peer, 0.5), "ms"),
        result("detect_ms_max", per_peer.last().copied().unwrap_or(0.0), "ms"),
    ];
    for r in &out {
        emit(r);
    }
    for n in nodes.iter().take(sizes.nodes) {
        n.shutdown(Duration::from_secs(1)).await;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tiny_run_reports_every_metric() {
        let sizes = DetectBenchSizes { nodes: 2, rounds: 1, load_secs: 0 };
        let out = run_detect(sizes, |_| {}).await.expect("bench runs");
        let names: Vec<_> = out.iter().map(|r| r.metric).collect();
        assert_eq!(
            names,
            vec![
                "load_msgs_per_sec",
                "false_downs_under_load",
                "detect_every_peer_ms_p50",
                "detect_every_peer_ms_max",
                "detect_ms_p50",
                "detect_ms_max"
            ]
        );
        assert!(out.iter().all(|r| r.value.is_finite() && r.value >= 0.0));
        assert!(out[2].value > 0.0, "a detection takes some time");
    }
}

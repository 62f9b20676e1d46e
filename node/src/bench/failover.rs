//! `soma bench failover`: how fast cluster supervision recovers, as JSON lines
//! (`{"bench":"failover","metric":NAME,"value":X,"unit":U}`).
//!
//! # Setup
//!
//! **In-process nodes**: 3 hot nodes (a Raft group of 3, real sled stores in a temporary
//! directory) and 3 cold nodes (two serving `openai`, one `anthropic`), each with its own quinn
//! endpoint on 127.0.0.1 and mutual TLS from a throwaway CA, gossip membership at the default
//! 100 ms / phi 8. One cluster supervisor holds one child `w` (`demo.counter`, provider
//! `openai`).
//!
//! # Trials
//!
//! * **Worker failover** (`--trials` times): the cold node running `w` is killed — its gossip
//!   stops and its node shuts down without announcing a leave. `detect_ms`: until no other node
//!   lists it as a member. `worker_failover_ms`: until `w` is committed running on another
//!   `openai` node **and answers a call** there. The killed node then comes back as a new
//!   incarnation, so the next trial has a spare.
//! * **Leader failover** (`--trials` times): the Raft leader is killed and, at the same instant,
//!   `w`'s process is killed. `leader_failover_ms`: until a new leader has restarted `w` (a new
//!   generation, answering a call) — the new leader acting on a failure the old one never saw.
//!   The dead leader is then removed from the group and a fresh hot node joins, to keep three.
//! * After every trial: `lost` counts children not running; `duplicates` counts incarnations of
//!   `w` beyond one on live nodes. Both must be 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::BenchResult;
use crate::csup::{Children, ClusterSupervisor};
use crate::demo::{CounterCall, DemoCounter};
use crate::membership::{Membership, MembershipConfig, Role, Seed};
use crate::raft::node::{RaftConfig, RaftNode};
use crate::tls::{generate_ca, issue_node_cert, NodeTls, PemPair, Validity};
use crate::{DistConfig, Node, NodeConfig, Pid};
use supervisor::cluster::placement::PlacementSpec;
use supervisor::cluster::{ChildSpec, Command, Phase, SupSpec};

/// Sizes of the failover benchmark.
#[derive(Debug, Clone, Copy)]
pub struct FailoverBenchSizes {
    /// Trials of each kind.
    pub trials: usize,
}

/// Why the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum FailoverBenchError {
    /// Setting up a node failed.
    #[error("setup: {0}")]
    Setup(String),
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

fn setup<E: std::fmt::Display>(e: E) -> FailoverBenchError {
    FailoverBenchError::Setup(e.to_string())
}

struct Member {
    node: Node,
    membership: Membership,
    children: Children,
    raft: Option<RaftNode>,
    csup: Option<ClusterSupervisor>,
}

impl Member {
    fn name(&self) -> String {
        self.node.id().name().to_string()
    }

    /// A crash: gossip stops, the supervisor and Raft stop, the node goes away; no leave.
    async fn kill(self) {
        self.membership.stop().await;
        if let Some(c) = &self.csup {
            c.stop();
        }
        if let Some(r) = &self.raft {
            r.shutdown().await;
        }
        self.node.shutdown(Duration::from_millis(200)).await;
    }
}

struct Cluster {
    ca: PemPair,
    dir: PathBuf,
    serial: u64,
}

fn seeds_of(hot: &[Member]) -> Vec<Seed> {
    hot.iter().filter_map(|m| m.node.local_addr().map(|a| Seed { name: m.name(), host: a.to_string() })).collect()
}

impl Cluster {
    /// Starts a member joining through `seeds` (the live hot nodes).
    async fn member(
        &mut self,
        name: &str,
        role: Role,
        providers: &[&str],
        seeds: Vec<Seed>,
    ) -> Result<Member, FailoverBenchError> {
        self.serial += 1;
        let leaf = issue_node_cert(&self.ca, name, &[], Validity::days_from_now(1)).map_err(setup)?;
        let tls = NodeTls::from_pem(&self.ca.cert_pem, &leaf.cert_pem, &leaf.key_pem).map_err(setup)?;
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let creation = now_ms() + self.serial;
        let cfg = NodeConfig { creation: Some(creation), ..NodeConfig::named(name) };
        let node = Node::start_distributed(cfg, DistConfig::new("bench", loopback, tls)).map_err(setup)?;
        crate::demo::register(&node).map_err(setup)?;
        let mcfg = MembershipConfig {
            role,
            providers: providers.iter().map(|p| p.to_string()).collect(),
            seeds,
            ..MembershipConfig::default()
        };
        let membership = Membership::join(&node, mcfg).await.map_err(setup)?;
        let children = Children::install(&node);
        let (raft, csup) = if role == Role::Hot {
            let dir = self.dir.join(format!("{name}-{}", self.serial));
            let r = RaftNode::start(&node, &membership, RaftConfig::new(dir, 3)).await.map_err(setup)?;
            let c = ClusterSupervisor::start(&node, &membership, &r, &children).map_err(setup)?;
            (Some(r), Some(c))
        } else {
            (None, None)
        };
        Ok(Member { node, membership, children, raft, csup })
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

async fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Result<Duration, FailoverBenchError> {
    let t0 = Instant::now();
    while !cond() {
        if t0.elapsed() > limit {
            return Err(FailoverBenchError::Timeout(what.into()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(t0.elapsed())
}

fn leader(hot: &[Member]) -> Option<usize> {
    hot.iter().position(|h| h.raft.as_ref().is_some_and(|r| r.is_leader()))
}

/// `w` as committed: (node, generation, pid), when running.
fn w_of(hot: &[Member]) -> Option<(String, u64, Pid)> {
    let i = leader(hot)?;
    hot[i].raft.as_ref()?.read(|s| {
        let c = s.child("bench", "w")?;
        if c.phase != Phase::Running {
            return None;
        }
        Some((c.node.clone()?, c.generation, c.pid.as_ref()?.parse().ok()?))
    })
}

/// Waits until `w` runs with a generation above `after` and answers a call; returns the time.
async fn until_serving(hot: &[Member], after: u64, t0: Instant) -> Result<Duration, FailoverBenchError> {
    let deadline = t0 + Duration::from_secs(30);
    loop {
        if Instant::now() > deadline {
            let statuses: Vec<String> =
                hot.iter().filter_map(|h| h.raft.as_ref()).map(|r| format!("{:?}", r.status())).collect();
            let w = hot
                .iter()
                .filter_map(|h| h.raft.as_ref())
                .next()
                .map(|r| r.read(|s| format!("{:?}", s.child("bench", "w"))));
            return Err(FailoverBenchError::Timeout(format!(
                "w to be restarted and answer (raft: {statuses:?}; w: {w:?})"
            )));
        }
        if let (Some((_, g, pid)), Some(i)) = (w_of(hot), leader(hot)) {
            if g > after {
                let r =
                    hot[i].node.pid_ref::<DemoCounter>(pid).call(CounterCall::Get, Duration::from_millis(500)).await;
                if r.is_ok() {
                    return Ok(t0.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn duplicates(cold: &[Member]) -> usize {
    let n: usize = cold.iter().map(|m| m.children.running().iter().filter(|r| r.child == "w").count()).sum();
    n.saturating_sub(1)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Runs the benchmark (see the module docs), calling `emit` for each figure.
pub async fn run_failover(
    sizes: FailoverBenchSizes,
    mut emit: impl FnMut(&BenchResult),
) -> Result<Vec<BenchResult>, FailoverBenchError> {
    let trials = sizes.trials.clamp(1, 100);
    let dir = std::env::temp_dir().join(format!("soma-bench-failover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = Cluster { ca: generate_ca("bench").map_err(setup)?, dir: dir.clone(), serial: 0 };
    let mut hot: Vec<Member> = Vec::new();
    for i in 0..3 {
        let seeds = seeds_of(&hot);
        hot.push(c.member(&format!("hot-{i}"), Role::Hot, &[], seeds).await?);
    }
    let mut cold = Vec::new();
    for (name, p) in [("cold-0", "openai"), ("cold-1", "openai"), ("cold-2", "anthropic")] {
        cold.push(c.member(name, Role::Cold, &[p], seeds_of(&hot)).await?);
    }
    wait("membership", Duration::from_secs(30), || hot.iter().chain(&cold).all(|m| m.membership.len() == 6)).await?;
    wait("a Raft group of 3", Duration::from_secs(30), || {
        leader(&hot).is_some_and(|i| hot[i].raft.as_ref().is_some_and(|r| r.status().voters.len() == 3))
    })
    .await?;
    let l = leader(&hot).ok_or_else(|| setup("no leader"))?;
    let sup = hot[l].csup.clone().ok_or_else(|| setup("no supervisor"))?;
    let create = Command::CreateSupervisor(SupSpec {
        name: "bench".into(),
        strategy: supervisor::Strategy::OneForOne,
        intensity: supervisor::Intensity::new(1000, 1000),
    });
    sup.propose(create).await.map_err(setup)?;
    let spec = ChildSpec {
        id: "w".into(),
        behaviour: "demo.counter".into(),
        args: "0".into(),
        restart: supervisor::RestartType::Permanent,
        placement: PlacementSpec {
            role: Some("cold".into()),
            providers: vec!["openai".into()],
            ..PlacementSpec::default()
        },
    };
    sup.propose(Command::AddChild { sup: "bench".into(), spec }).await.map_err(setup)?;
    until_serving(&hot, 0, Instant::now()).await?;

    let (mut detect, mut worker, mut lead) = (Vec::new(), Vec::new(), Vec::new());
    let (mut lost, mut dups) = (0usize, 0usize);
    for _ in 0..trials {
        // Worker failover.
        let (node, generation, _) = w_of(&hot).ok_or_else(|| setup("w is not running"))?;
        let idx = cold.iter().position(|m| m.name() == node).ok_or_else(|| setup("w's node"))?;
        let victim = cold.remove(idx);
        let providers: Vec<String> = victim.membership.member(&node).map(|m| m.providers).unwrap_or_default();
        let t0 = Instant::now();
        victim.kill().await;
        let detected = {
            let others: Vec<&Member> = hot.iter().chain(&cold).collect();
            wait("the lost node declared down", Duration::from_secs(10), || {
                others.iter().all(|m| m.membership.member(&node).is_none())
            })
            .await?
        };
        detect.push(detected.as_secs_f64() * 1000.0);
        worker.push(until_serving(&hot, generation, t0).await?.as_secs_f64() * 1000.0);
        tracing::debug!(
            ms = worker.last().copied().unwrap_or(0.0),
            detect_ms = detect.last().copied().unwrap_or(0.0),
            "worker failover"
        );
        dups += duplicates(&cold);
        lost += usize::from(w_of(&hot).is_none());
        let ps: Vec<&str> = providers.iter().map(String::as_str).collect();
        cold.push(c.member(&node, Role::Cold, &ps, seeds_of(&hot)).await?);
        wait("the node back", Duration::from_secs(30), || hot.iter().chain(&cold).all(|m| m.membership.len() == 6))
            .await?;
    }
    for t in 0..trials {
        // Leader failover: kill the leader and w's process at the same instant.
        let l = leader(&hot).ok_or_else(|| setup("no leader"))?;
        let (node, generation, pid) = w_of(&hot).ok_or_else(|| setup("w is not running"))?;
        let host = cold.iter().find(|m| m.name() == node).ok_or_else(|| setup("w's node"))?;
        let old = hot.remove(l);
        let old_name = old.name();
        let t0 = Instant::now();
        host.node.kill(pid);
        old.kill().await;
        lead.push(until_serving(&hot, generation, t0).await?.as_secs_f64() * 1000.0);
        tracing::debug!(trial = t, ms = lead.last().copied().unwrap_or(0.0), "leader failover");
        dups += duplicates(&cold);
        lost += usize::from(w_of(&hot).is_none());
        // Back to three live voters, never through a group of two: a fresh hot node joins
        // first (the leader adds it: four voters, one dead, quorum three), then the dead one
        // is removed.
        let seeds = seeds_of(&hot);
        hot.push(c.member(&format!("hot-r{t}"), Role::Hot, &[], seeds).await?);
        let settled = |hot: &[Member], n: usize| {
            leader(hot).is_some_and(|i| {
                hot[i].raft.as_ref().is_some_and(|r| {
                    let s = r.status();
                    s.voters.len() == n && s.learners.is_empty() && !s.changing
                })
            })
        };
        wait("four voters", Duration::from_secs(30), || settled(&hot, 4)).await?;
        let nl = leader(&hot).ok_or_else(|| setup("no leader"))?;
        if let Some(r) = &hot[nl].raft {
            r.remove(&old_name).await.map_err(setup)?;
        }
        wait("three voters again", Duration::from_secs(30), || settled(&hot, 3)).await?;
    }
    let mut out = Vec::new();
    let mut push = |metric: &'static str, value: f64, unit: &'static str| {
        let r = BenchResult { bench: "failover", metric, value, unit };
        emit(&r);
        out.push(r);
    };
    push("trials", trials as f64, "count");
    push("detect_ms_p50", percentile(&mut detect, 0.5), "ms");
    push("worker_failover_ms_p50", percentile(&mut worker, 0.5), "ms");
    push("worker_failover_ms_max", percentile(&mut worker, 1.0), "ms");
    push("leader_failover_ms_p50", percentile(&mut lead, 0.5), "ms");
    push("leader_failover_ms_max", percentile(&mut lead, 1.0), "ms");
    push("lost", lost as f64, "count");
    push("duplicates", dups as f64, "count");
    for m in hot.into_iter().chain(cold) {
        m.kill().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

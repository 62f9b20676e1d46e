//! Membership (Ganglion II): which node incarnations are in the cluster, in what role, serving
//! which providers, with what load — and which are gone.
//!
//! Nodes gossip their state with chitchat (scuttlebutt anti-entropy and a phi-accrual failure
//! detector), **over the authenticated QUIC transport** (G9, see [`transport`]): a host without a
//! certificate of the cluster CA cannot join or even be heard. [`Membership::join`] starts it on
//! a distributed [`Node`]; the decisions (who is up, who replaced whom) are the pure
//! [`View`]; this module is the shell around it.
//!
//! ## What membership drives
//!
//! * A member that comes up becomes dialable by name (its QUIC address is registered with the
//!   transport), so PIDs of its processes just work.
//! * A member declared down (dead, hung or cut off: no heartbeat for long enough) has its
//!   connection closed, so every monitor of its processes fires `Down` `noconnection`, every
//!   link propagates it and every pending call to it fails (G3) — on every node, each deciding
//!   from its own failure detector. The transport's idle timeout would catch a silent peer too;
//!   whichever is first wins, and the session ends once.
//! * Everything is published as [`MemberEvent`]s ([`Membership::subscribe`]) and as the current
//!   member list ([`Membership::members`]).
//!
//! ## Timing (G4)
//!
//! With the default gossip interval of 100 ms and phi threshold 8, a silent node is declared
//! down after roughly 0.5–0.8 s on loopback and in docker. The detector's prior is half a
//! gossip interval (not chitchat's default 5 s), so detection is as fast in the first seconds
//! of a node's life as later.

pub mod placement;
pub(crate) mod transport;
pub mod view;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use parking_lot::RwLock;
use serde::Serialize;
use tokio::sync::broadcast;

pub use placement::{place, Constraint, NoMatch};
pub use view::{DownReason, Load, Member, MemberEvent, Role, View};

use crate::dist::Dist;
use crate::Node;

/// Member events buffered per subscriber; a slower subscriber misses events (and is told so
/// by `broadcast::error::RecvError::Lagged`), it never slows membership down.
pub const EVENT_BUFFER: usize = 1024;

/// Most seeds (G8).
pub const MAX_SEEDS: usize = 64;

/// How often an advertised host name is re-resolved.
pub const ADVERTISE_REFRESH: Duration = Duration::from_secs(1);

/// A node to contact when joining: its name and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// The node's name (its certificate's name).
    pub name: String,
    /// `host:port` (a DNS name or an IP address).
    pub host: String,
}

impl FromStr for Seed {
    type Err = String;

    /// `name@host:port`, or `host:port` when the host *is* the node's name (as with
    /// docker-compose service names).
    fn from_str(s: &str) -> Result<Seed, String> {
        let (name, host) = match s.split_once('@') {
            Some((n, h)) => (n, h),
            None => {
                let host = s.rsplit_once(':').map(|(h, _)| h).ok_or_else(|| format!("seed {s:?} has no port"))?;
                if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
                    return Err(format!("seed {s:?} is an address: give the node's name too, as NAME@{s}"));
                }
                (host, s)
            }
        };
        cluster_proto::NodeId::validate_name(name).map_err(|e| format!("seed {s:?}: {e}"))?;
        let port = host.rsplit_once(':').map(|(_, p)| p).ok_or_else(|| format!("seed {s:?} has no port"))?;
        port.parse::<u16>().map_err(|_| format!("seed {s:?}: bad port {port:?}"))?;
        Ok(Seed { name: name.to_owned(), host: host.to_owned() })
    }
}

/// How a node takes part in membership.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Hot or cold.
    pub role: Role,
    /// Providers served (cold nodes).
    pub providers: Vec<String>,
    /// Processes the node is meant to hold (a placement weight).
    pub capacity: u64,
    /// The admin API's address, gossiped so that any node can route to any other's.
    pub admin: Option<SocketAddr>,
    /// The address peers reach this node's QUIC endpoint at (default: the bound address; must
    /// be given when bound to an unspecified address such as `0.0.0.0`).
    pub advertise: Option<SocketAddr>,
    /// The `host:port` `advertise` was resolved from, if it is a name: re-resolved every
    /// [`ADVERTISE_REFRESH`], and a new address is gossiped (a container reconnected to its
    /// network can come back with another IP).
    pub advertise_host: Option<String>,
    /// Nodes to contact on start.
    pub seeds: Vec<Seed>,
    /// Gossip round interval.
    pub gossip_interval: Duration,
    /// Phi-accrual threshold above which a node is declared down.
    pub phi_threshold: f64,
    /// How long a dead node's state is kept before it is forgotten.
    pub dead_grace: Duration,
    /// How often the node's load is re-published.
    pub load_interval: Duration,
}

impl Default for MembershipConfig {
    /// A hot node, gossip every 100 ms, phi 8, dead nodes forgotten after an hour, load
    /// published every second.
    fn default() -> Self {
        MembershipConfig {
            role: Role::Hot,
            providers: Vec::new(),
            capacity: 100_000,
            admin: None,
            advertise: None,
            advertise_host: None,
            seeds: Vec::new(),
            gossip_interval: Duration::from_millis(100),
            phi_threshold: 8.0,
            dead_grace: Duration::from_secs(3600),
            load_interval: Duration::from_secs(1),
        }
    }
}

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The node is not distributed (no QUIC transport to gossip over).
    #[error("membership needs a distributed node (Node::start_distributed)")]
    NotDistributed,
    /// No address to advertise.
    #[error("cannot advertise {0}: give an explicit advertise address")]
    Advertise(String),
    /// A configuration value is invalid.
    #[error("invalid membership config: {0}")]
    Config(String),
    /// chitchat did not start.
    #[error("gossip did not start: {0}")]
    Gossip(String),
}

/// Why a placed spawn failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacedSpawnError {
    /// No member fits the constraint.
    #[error(transparent)]
    NoMatch(#[from] NoMatch),
    /// The chosen member did not spawn it.
    #[error(transparent)]
    Spawn(#[from] crate::dist::spawn::RemoteSpawnError),
}

/// Counters of membership and its gossip transport.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MembershipStats {
    /// Gossip messages sent.
    pub gossip_sent: u64,
    /// Gossip messages received (decoded).
    pub gossip_received: u64,
    /// Gossip messages not sent (unknown address, unreachable node, full lane, too large).
    pub gossip_dropped_out: u64,
    /// Gossip messages received but dropped (chitchat's inbox full).
    pub gossip_dropped_in: u64,
    /// Gossip messages that did not decode.
    pub gossip_undecodable: u64,
    /// Members declared down so far.
    pub downs: u64,
}

struct Inner {
    node: Node,
    dist: Arc<Dist>,
    handle: tokio::sync::Mutex<Option<ChitchatHandle>>,
    view: RwLock<View>,
    events: broadcast::Sender<MemberEvent>,
    gossip: Arc<transport::GossipStats>,
    downs: std::sync::atomic::AtomicU64,
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A node's membership (see the module docs). Cheap to clone; [`Membership::leave`] ends it.
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("node", &self.inner.node.id()).field("members", &self.len()).finish()
    }
}

impl Membership {
    /// Joins the cluster: starts gossip over the node's QUIC transport, contacting `cfg.seeds`.
    pub async fn join(node: &Node, cfg: MembershipConfig) -> Result<Membership, MembershipError> {
        let dist = node.shared().dist.get().cloned().ok_or(MembershipError::NotDistributed)?;
        if cfg.seeds.len() > MAX_SEEDS {
            return Err(MembershipError::Config(format!("{} seeds, at most {MAX_SEEDS}", cfg.seeds.len())));
        }
        if !cfg.phi_threshold.is_finite() || cfg.phi_threshold <= 0.0 || cfg.gossip_interval.is_zero() {
            return Err(MembershipError::Config("phi threshold and gossip interval must be positive".into()));
        }
        for p in &cfg.providers {
            if p.is_empty() || p.len() > view::MAX_PROVIDER_LEN || p.contains(',') {
                return Err(MembershipError::Config(format!("bad provider name {p:?}")));
            }
        }
        let bound = dist.local_addr().ok_or_else(|| MembershipError::Advertise("no bound address".into()))?;
        let advertise = cfg.advertise.unwrap_or(bound);
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            return Err(MembershipError::Advertise(advertise.to_string()));
        }
        let id = node.id();
        let seeds = resolve_seeds(&dist, &cfg.seeds).await;
        let chitchat_id = ChitchatId::new(id.name().to_string(), id.creation(), advertise);
        let config = ChitchatConfig {
            chitchat_id,
            cluster_id: dist.cluster().to_owned(),
            gossip_interval: cfg.gossip_interval,
            listen_addr: advertise,
            seed_nodes: seeds.iter().map(SocketAddr::to_string).collect(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: cfg.phi_threshold,
                sampling_window_size: 1000,
                max_interval: Duration::from_secs(10),
                // The prior of the mean heartbeat interval (weight 5 samples): half a gossip
                // round, close to what is measured (heartbeats arrive through several peers'
                // rounds: ~60 ms at 100 ms gossip with 6 nodes). A full round made a young
                // cluster detect ~30 % slower than a settled one (850–1,030 ms in docker);
                // settled clusters are governed by their samples either way.
                initial_interval: cfg.gossip_interval / 2,
                dead_node_grace_period: cfg.dead_grace,
            },
            marked_for_deletion_grace_period: cfg.dead_grace,
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let mut kvs = vec![
            (view::keys::ROLE.to_owned(), cfg.role.as_str().to_owned()),
            (view::keys::CAPACITY.to_owned(), cfg.capacity.to_string()),
            (view::keys::LOAD_PROCESSES.to_owned(), node.process_count().to_string()),
        ];
        if !cfg.providers.is_empty() {
            kvs.push((view::keys::PROVIDERS.to_owned(), cfg.providers.join(",")));
        }
        if let Some(a) = cfg.admin {
            kvs.push((view::keys::ADMIN.to_owned(), a.to_string()));
        }
        let (transport, gossip) = transport::QuicTransport::install(&dist);
        let handle =
            spawn_chitchat(config, kvs, &transport).await.map_err(|e| MembershipError::Gossip(e.to_string()))?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let inner = Arc::new(Inner {
            node: node.clone(),
            dist,
            handle: tokio::sync::Mutex::new(None),
            view: RwLock::new(View::new()),
            events,
            gossip,
            downs: std::sync::atomic::AtomicU64::new(0),
            tasks: parking_lot::Mutex::new(Vec::new()),
        });
        let watcher = handle.chitchat().lock().await.live_nodes_watcher();
        *inner.handle.lock().await = Some(handle);
        let m = Membership { inner };
        let mut tasks = vec![
            tokio::spawn(watch_live(Arc::downgrade(&m.inner), watcher)),
            tokio::spawn(publish_load(Arc::downgrade(&m.inner), cfg.load_interval)),
            tokio::spawn(refresh_seeds(Arc::downgrade(&m.inner), cfg.seeds.clone())),
        ];
        if let Some(host) = cfg.advertise_host.clone() {
            tasks.push(tokio::spawn(refresh_advertise(Arc::downgrade(&m.inner), host, advertise)));
        }
        *m.inner.tasks.lock() = tasks;
        tracing::info!(node = %id, %advertise, role = %cfg.role, seeds = cfg.seeds.len(), "joined membership");
        Ok(m)
    }

    /// The current members (this node included), by name.
    pub fn members(&self) -> Vec<Member> {
        self.inner.view.read().members().cloned().collect()
    }

    /// The member named `name`, if it is one now.
    pub fn member(&self, name: &str) -> Option<Member> {
        self.inner.view.read().get(name).cloned()
    }

    /// Number of members (this node included).
    pub fn len(&self) -> usize {
        self.inner.view.read().len()
    }

    /// No members yet (not even this node: its own state shows after the first round).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Member events from now on (see [`EVENT_BUFFER`]).
    pub fn subscribe(&self) -> broadcast::Receiver<MemberEvent> {
        self.inner.events.subscribe()
    }

    /// Spawns `B` on the member that best fits `constraint` (see [`place`]); returns its PID.
    /// `NoMatch` (as [`PlacedSpawnError::NoMatch`]) when no member fits right now.
    pub async fn spawn<B: crate::Behaviour>(
        &self,
        constraint: &Constraint,
        args: &B::Args,
        opts: crate::dist::spawn::RemoteSpawnOpts,
    ) -> Result<crate::Pid, PlacedSpawnError>
    where
        B::Args: Serialize,
    {
        let target = self.place(constraint)?;
        Ok(self.inner.node.spawn_on::<B>(&target, args, opts).await?)
    }

    /// Spawns the behaviour registered as `behaviour` (JSON arguments) where `constraint` fits.
    pub async fn spawn_json(
        &self,
        constraint: &Constraint,
        behaviour: &str,
        args_json: &str,
        opts: crate::dist::spawn::RemoteSpawnOpts,
    ) -> Result<crate::Pid, PlacedSpawnError> {
        let target = self.place(constraint)?;
        Ok(self.inner.node.spawn_on_json(&target, behaviour, args_json, opts).await?)
    }

    /// The name of the member `constraint` picks now.
    pub fn place(&self, constraint: &Constraint) -> Result<String, NoMatch> {
        let v = self.inner.view.read();
        place(v.members(), constraint).map(|m| m.name.clone())
    }

    /// Counters.
    pub fn stats(&self) -> MembershipStats {
        let g = &self.inner.gossip;
        MembershipStats {
            gossip_sent: g.sent.load(Ordering::Relaxed),
            gossip_received: g.received.load(Ordering::Relaxed),
            gossip_dropped_out: g.dropped_out.load(Ordering::Relaxed),
            gossip_dropped_in: g.dropped_in.load(Ordering::Relaxed),
            gossip_undecodable: g.undecodable.load(Ordering::Relaxed),
            downs: self.inner.downs.load(Ordering::Relaxed),
        }
    }

    /// Sets a key of this node's gossiped state (for the layers above: provider status ...).
    pub async fn set_key(&self, key: &str, value: &str) {
        let chitchat = self.inner.handle.lock().await.as_ref().map(|h| h.chitchat());
        if let Some(c) = chitchat {
            c.lock().await.self_node_state().set(key, value);
        }
    }

    /// Stops gossiping at once, without announcing anything: to its peers this node looks
    /// hung (its heartbeat stops) and their failure detectors declare it down. What a crash of
    /// the membership layer looks like; also how tests exercise failure detection.
    pub async fn stop(&self) {
        for t in self.inner.tasks.lock().drain(..) {
            t.abort();
        }
        if let Some(h) = self.inner.handle.lock().await.take() {
            let _ = h.shutdown().await;
        }
    }

    /// Leaves gracefully: announces it (peers report the departure as [`DownReason::Left`]),
    /// gives the announcement `grace` to spread, then stops gossiping. Stopping the node itself
    /// is the caller's next step.
    pub async fn leave(&self, grace: Duration) {
        self.set_key(view::keys::STATUS, "leaving").await;
        tokio::time::sleep(grace).await;
        self.stop().await;
    }
}

/// Resolves seeds once, registering each with the transport; returns the addresses for chitchat.
async fn resolve_seeds(dist: &Dist, seeds: &[Seed]) -> Vec<SocketAddr> {
    let mut out = Vec::with_capacity(seeds.len());
    for s in seeds {
        match tokio::net::lookup_host(s.host.as_str()).await {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                // Prefer IPv4: docker's and most LANs' addresses.
                if let Some(a) = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()) {
                    dist.add_peer(&s.name, *a);
                    out.push(*a);
                }
            }
            Err(e) => tracing::debug!(seed = %s.host, error = %e, "cannot resolve a seed (yet)"),
        }
    }
    out
}

/// Re-resolves the seeds now and then (a seed container may come up after us, or move).
async fn refresh_seeds(inner: std::sync::Weak<Inner>, seeds: Vec<Seed>) {
    if seeds.is_empty() {
        return;
    }
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Some(i) = inner.upgrade() else { return };
        let resolved = resolve_seeds(&i.dist, &seeds).await;
        // Make sure chitchat talks to seeds that were unresolvable at start.
        let handle = i.handle.lock().await;
        if let Some(h) = handle.as_ref() {
            for a in resolved {
                let _ = h.gossip(a);
            }
        }
    }
}

/// Re-resolves the advertised host now and then; gossips the address when it changes.
async fn refresh_advertise(inner: std::sync::Weak<Inner>, host: String, mut current: SocketAddr) {
    loop {
        tokio::time::sleep(ADVERTISE_REFRESH).await;
        let Ok(addrs) = tokio::net::lookup_host(host.as_str()).await else { continue };
        let addrs: Vec<SocketAddr> = addrs.collect();
        let Some(now) = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied() else { continue };
        if now == current {
            continue;
        }
        let Some(i) = inner.upgrade() else { return };
        tracing::info!(%host, old = %current, new = %now, "advertised address changed");
        current = now;
        let chitchat = i.handle.lock().await.as_ref().map(|h| h.chitchat());
        if let Some(c) = chitchat {
            c.lock().await.self_node_state().set(view::keys::ADDR, now.to_string());
        }
    }
}

/// Diffs every live-node snapshot into the view and applies the effects.
async fn watch_live(
    inner: std::sync::Weak<Inner>,
    mut watcher: tokio::sync::watch::Receiver<std::collections::BTreeMap<ChitchatId, chitchat::NodeState>>,
) {
    loop {
        let live: Vec<Member> = {
            let snapshot = watcher.borrow_and_update();
            snapshot
                .iter()
                .map(|(id, st)| {
                    let (m, problems) =
                        Member::from_gossip(&id.node_id, id.generation_id, id.gossip_advertise_addr, st.key_values());
                    if !problems.is_empty() {
                        tracing::debug!(node = %id.node_id, ?problems, "odd gossip values");
                    }
                    m
                })
                .collect()
        };
        let Some(i) = inner.upgrade() else { return };
        // The transport learns new members' addresses *before* the view shows them, so whoever
        // sees a member in the view can reach it by name.
        let mut next = i.view.read().clone();
        let events = next.apply(live);
        for e in &events {
            // A member's address can change (see `keys::ADDR`): the transport follows.
            if let MemberEvent::Up(m) | MemberEvent::Changed(m) = e {
                if *m.name != *i.node.id().name() {
                    i.dist.add_peer(&m.name, m.addr);
                }
            }
        }
        *i.view.write() = next;
        let me = i.node.id();
        for e in events {
            match &e {
                MemberEvent::Up(m) if *m.name != *me.name() => {
                    tracing::info!(node = %m.name, creation = m.creation, role = %m.role, "member up");
                }
                MemberEvent::Down { member: m, reason } if *m.name != *me.name() => {
                    i.downs.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(node = %m.name, creation = m.creation, ?reason, "member down");
                    if *reason != DownReason::Replaced {
                        i.dist.node_down(&m.name, m.creation);
                    }
                }
                _ => {}
            }
            let _ = i.events.send(e);
        }
        drop(i);
        if watcher.changed().await.is_err() {
            return;
        }
    }
}

/// Publishes the node's load now and then.
async fn publish_load(inner: std::sync::Weak<Inner>, every: Duration) {
    let mut last = None;
    loop {
        tokio::time::sleep(every).await;
        let Some(i) = inner.upgrade() else { return };
        let procs = i.node.process_count();
        if last != Some(procs) {
            last = Some(procs);
            let chitchat = i.handle.lock().await.as_ref().map(|h| h.chitchat());
            if let Some(c) = chitchat {
                c.lock().await.self_node_state().set(view::keys::LOAD_PROCESSES, procs);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_with_or_without_a_name() {
        assert_eq!("hot-1:7100".parse(), Ok(Seed { name: "hot-1".into(), host: "hot-1:7100".into() }));
        assert_eq!("a@127.0.0.1:7101".parse(), Ok(Seed { name: "a".into(), host: "127.0.0.1:7101".into() }));
        assert!("127.0.0.1:7101".parse::<Seed>().unwrap_err().contains("NAME@"));
        assert!("hot-1".parse::<Seed>().is_err());
        assert!("hot-1:http".parse::<Seed>().is_err());
        assert!("bad name@1.2.3.4:1".parse::<Seed>().is_err());
    }
}

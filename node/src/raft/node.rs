//! A hot node's Raft: started on the node's sled store, talking over the QUIC transport, its
//! voting group formed and grown from gossip membership with no manual step.
//!
//! ## Forming the group
//!
//! ## Member ids belong to the data
//!
//! A hot node's Raft id is stored in its Raft store ([`LogStore::member_id`]): drawn at random
//! when the store is created, read back on every later start, and gossiped (key
//! [`keys::RAFT_ID`]). A node restarted **on its own data** keeps its id, its vote and its log,
//! and simply catches up. A node whose **data was wiped** comes back with a new id: to the
//! group it is a new member, which the leader adds (as a learner first) while removing the
//! old id of the same name in the same membership change. Reusing the old id instead would let
//! a voter that forgot its vote vote twice in one term, which breaks Raft's safety.
//! [`RaftStatus::id_origin`] tells which case a node is in.
//!
//! ## Forming the group
//!
//! * **First start**: once at least `expect_voters` hot members are visible with their Raft ids
//!   (and that view has not changed for [`RaftConfig::settle`]), the one with the
//!   smallest name among the `expect_voters` smallest-named hot members initializes Raft with
//!   exactly those as voters (the others wait to be contacted). With `expect_voters = 1` a lone
//!   hot node forms a one-voter group at once. Initializing again is harmless (openraft refuses,
//!   which is treated as done). No group is founded while a hot member that already belongs to
//!   one is in sight (gossip key [`keys::RAFT_INIT`]): a node that comes back with wiped data
//!   waits to be added to the existing group instead.
//! * **Growth**: the leader adds every hot member it sees whose id is not yet in the group, as a
//!   learner (caught up first) and then as a voter; an id of the same name already in the group
//!   (the member before its data was wiped) leaves it in the same change. A member that is
//!   lost stays a voter (it may come back with its data); `soma raft remove` removes one for
//!   good.
//!
//! ## Pre-vote (a returning cut-off node must not unseat a healthy leader)
//!
//! openraft 0.9 has no pre-vote: a follower whose election timer fires campaigns with a higher
//! term, even when it is the one cut off; back, that term makes the healthy leader step down.
//! So elections are **off** (`runtime_config().elect(false)`) unless this node has just asked
//! the voters and a majority of them (itself included) had not heard from a leader for an
//! election timeout either — Raft's pre-vote, done beside openraft:
//!
//! * every accepted AppendEntries or InstallSnapshot from a leader is noted
//!   (`network::LeaderContact`);
//! * every [`RaftConfig::heartbeat`], a node that is not the leader and has heard from a leader
//!   within the maximum election timeout (openraft's leader lease: voters refuse votes before
//!   it has expired) keeps elections off; otherwise it asks each voter
//!   (RPC `PreVote`, answered from that voter's own contact time, bounded by the heartbeat) and
//!   switches elections on only for a majority of "no leader for an election timeout";
//! * as in Raft's pre-vote (§9.6 of Ongaro's thesis), a voter also refuses an asker whose last
//!   log id is behind its own: that candidate would lose the vote, and its higher term would
//!   make the voter that can win wait a further election timeout (seen in `bench failover`: a
//!   freshly added voter one entry behind campaigned first, and leader failover took ~1.8 s
//!   instead of ~1 s).
//!
//! A node cut off the network gets no answers, so it never campaigns and its term never climbs,
//! however long the cut; when its leader is really gone, the others agree within one tick of the
//! election timeout and elect as before. The decision is taken fresh every tick, so elections
//! are on only while a majority sees no leader.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{Config, Raft, ServerState, SnapshotPolicy};
use serde::Serialize;
use supervisor::cluster::{ClusterState, Command};

use super::network::{last_log_id, pre_vote, Factory, LeaderContact, Service, RAFT_SERVICE};
use super::store::{open, LogStore, MemberIdOrigin, OpenError, StateMachine};
use super::{Applied, RaftMember, TypeConfig};
use crate::membership::view::keys;
use crate::membership::{Membership, Role};
use crate::Node;

/// How a node runs Raft.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// Where its sled store lives (its own directory).
    pub dir: PathBuf,
    /// How many hot nodes form the group on first start.
    pub expect_voters: usize,
    /// Leader heartbeat.
    pub heartbeat: Duration,
    /// Election timeout range.
    pub election: (Duration, Duration),
    /// How often membership is checked (forming, growing, the pre-vote guard).
    pub manage_every: Duration,
    /// How long the view of hot members must stay unchanged before a group is founded.
    pub settle: Duration,
    /// A snapshot is built after this many log entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot (the rest is purged); a follower further behind
    /// gets the snapshot instead.
    pub keep_logs: u64,
}

impl RaftConfig {
    /// Heartbeat 100 ms, elections after 250–500 ms of silence (on top of openraft's leader
    /// lease, the same 500 ms; short timeouts are safe because the pre-vote keeps a node that
    /// merely missed heartbeats from campaigning), group of `expect_voters`.
    pub fn new(dir: PathBuf, expect_voters: usize) -> RaftConfig {
        RaftConfig {
            dir,
            expect_voters: expect_voters.max(1),
            heartbeat: Duration::from_millis(100),
            election: (Duration::from_millis(250), Duration::from_millis(500)),
            manage_every: Duration::from_millis(200),
            settle: Duration::from_millis(1000),
            snapshot_every: 1000,
            keep_logs: 1000,
        }
    }
}

/// Why Raft did not start.
#[derive(Debug, thiserror::Error)]
pub enum RaftStartError {
    /// The node is not distributed.
    #[error("Raft needs a distributed node")]
    NotDistributed,
    /// The store did not open.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// openraft refused the configuration or did not start.
    #[error("Raft did not start: {0}")]
    Raft(String),
}

/// Why a proposal failed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader (the leader's name, if known).
    #[error("not the leader (the leader is {0:?})")]
    NotLeader(Option<String>),
    /// Raft failed.
    #[error("raft: {0}")]
    Raft(String),
}

/// What `soma raft status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct RaftStatus {
    /// This node's Raft id.
    pub id: u64,
    /// Where the id came from at start: `stored` (restarted on its own data), `new` (first
    /// start, or its data was wiped) or `from_name` (a store from before ids were stored).
    pub id_origin: String,
    /// Its name.
    pub name: String,
    /// leader, follower, candidate or learner.
    pub state: String,
    /// Current term.
    pub term: u64,
    /// The leader's name, if known.
    pub leader: Option<String>,
    /// Voters' names.
    pub voters: Vec<String>,
    /// Learners' names.
    pub learners: Vec<String>,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Last applied index.
    pub last_applied: Option<u64>,
    /// The last log index the newest snapshot covers.
    pub snapshot_index: Option<u64>,
    /// The last purged log index (entries up to it are only in the snapshot).
    pub purged_index: Option<u64>,
    /// Elections enabled: only while a majority of the voters, this node included, has not
    /// heard from a leader for an election timeout (the pre-vote, see the module docs).
    pub elections: bool,
    /// A membership change is in progress (joint configuration, or not yet applied here).
    pub changing: bool,
}

/// A hot node's Raft (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    raft: Raft<TypeConfig>,
    sm: StateMachine,
    id: u64,
    id_origin: MemberIdOrigin,
    name: String,
    membership: Membership,
    elections: Arc<std::sync::atomic::AtomicBool>,
    tasks: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode").field("name", &self.name).field("id", &self.id).finish()
    }
}

impl RaftNode {
    /// Starts Raft on `node` (distributed, with `membership`).
    pub async fn start(node: &Node, membership: &Membership, cfg: RaftConfig) -> Result<RaftNode, RaftStartError> {
        let dist = node.dist().cloned().ok_or(RaftStartError::NotDistributed)?;
        let name = node.id().name().to_string();
        let config = Config {
            cluster_name: "soma".into(),
            heartbeat_interval: cfg.heartbeat.as_millis() as u64,
            election_timeout_min: cfg.election.0.as_millis() as u64,
            election_timeout_max: cfg.election.1.as_millis() as u64,
            install_snapshot_timeout: 5000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: cfg.keep_logs,
            // Purge in steps of this many entries (openraft's default, 1000, would keep up to
            // `keep_logs` + 1000).
            purge_batch_size: cfg.keep_logs.clamp(1, 1000),
            // Off until a pre-vote passes (module docs).
            enable_elect: false,
            ..Config::default()
        }
        .validate()
        .map_err(|e| RaftStartError::Raft(e.to_string()))?;
        let (log, sm) = open(&cfg.dir)?;
        let (id, id_origin) = log.member_id(&name)?;
        tracing::info!(id = format_args!("{id:x}"), origin = ?id_origin, "Raft member id");
        let factory = Factory { dist: Arc::clone(&dist), me: id };
        let log_reader = log.clone();
        let raft = Raft::new(id, Arc::new(config), factory, log, sm.clone())
            .await
            .map_err(|e| RaftStartError::Raft(e.to_string()))?;
        let contact = Arc::new(LeaderContact::default());
        dist.set_rpc_service(
            RAFT_SERVICE,
            Arc::new(Service { raft: raft.clone(), me: id, contact: Arc::clone(&contact), log: log_reader.clone() }),
        );
        membership.set_key(keys::RAFT_ID, &id.to_string()).await;
        let rn = RaftNode {
            raft,
            sm,
            id,
            id_origin,
            name,
            membership: membership.clone(),
            elections: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            tasks: Arc::default(),
        };
        let guard = tokio::spawn(guard(rn.clone(), dist, contact, log_reader, cfg.heartbeat, cfg.election.1));
        let handle = tokio::spawn(manage(rn.clone(), membership.clone(), cfg));
        rn.tasks.lock().extend([guard, handle]);
        Ok(rn)
    }

    /// The openraft handle.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Reads the committed supervision state.
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        self.sm.read(|s, _| f(s))
    }

    /// Whether this node is the leader now (by its own metrics: an isolated old leader may
    /// still think so — act only on committed state).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The current term, if this node is its leader.
    pub fn leader_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        (m.state == ServerState::Leader).then_some(m.current_term)
    }

    /// Proposes `cmd`; answers once it is committed and applied here.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, ProposeError> {
        self.raft.client_write(cmd).await.map(|r| r.data).map_err(write_error)
    }

    /// The status (see [`RaftStatus`]).
    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow().clone();
        let names: BTreeMap<u64, String> = m.membership_config.nodes().map(|(id, n)| (*id, n.name.clone())).collect();
        let name_of = |id: &u64| names.get(id).cloned().unwrap_or_else(|| format!("#{id:x}"));
        let voters: BTreeSet<u64> = m.membership_config.voter_ids().collect();
        let learners: Vec<String> = m.membership_config.membership().learner_ids().map(|i| name_of(&i)).collect();
        RaftStatus {
            id: self.id,
            id_origin: self.id_origin.as_str().to_owned(),
            name: self.name.clone(),
            state: format!("{:?}", m.state).to_lowercase(),
            term: m.current_term,
            leader: m.current_leader.as_ref().map(name_of),
            voters: {
                let mut v: Vec<String> = voters.iter().map(name_of).collect();
                v.sort();
                v
            },
            learners,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            elections: self.elections.load(std::sync::atomic::Ordering::Relaxed),
            changing: m.membership_config.membership().get_joint_config().len() > 1
                || m.membership_config.log_id().map(|l| l.index) > m.last_applied.map(|l| l.index),
        }
    }

    /// Adds the hot node `name` as a voter (the leader only), under the Raft id it gossips;
    /// an older id of the same name leaves the group in the same change (module docs).
    pub async fn add_voter(&self, name: &str) -> Result<(), ProposeError> {
        let id =
            self.membership.member(name).and_then(|m| m.raft_id).ok_or_else(|| {
                ProposeError::Raft(format!("{name} gossips no Raft id (not a hot node running Raft?)"))
            })?;
        self.add_member(name, id).await
    }

    async fn add_member(&self, name: &str, id: u64) -> Result<(), ProposeError> {
        self.raft.add_learner(id, RaftMember { name: name.to_owned() }, true).await.map_err(write_error)?;
        let (mut voters, stale) = {
            let m = self.raft.metrics().borrow().membership_config.clone();
            let voters: BTreeSet<u64> = m.voter_ids().collect();
            let stale: BTreeSet<u64> =
                m.nodes().filter(|(i, n)| n.name == name && **i != id).map(|(i, _)| *i).collect();
            (voters, stale)
        };
        if !stale.is_empty() {
            tracing::info!(node = %name, new = format_args!("{id:x}"), old = ?stale, "a hot node with new data replaces its old Raft member");
        }
        voters.retain(|v| !stale.contains(v));
        voters.insert(id);
        // `retain = false`: the replaced id does not stay on as a learner.
        self.raft.change_membership(voters, false).await.map_err(write_error)?;
        let left: BTreeSet<u64> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .map(|(i, _)| *i)
            .filter(|i| stale.contains(i))
            .collect();
        if !left.is_empty() {
            self.raft
                .change_membership(openraft::ChangeMembers::RemoveNodes(left), false)
                .await
                .map_err(write_error)?;
        }
        Ok(())
    }

    /// Removes `name` from the group (the leader only): every Raft id it has had.
    pub async fn remove(&self, name: &str) -> Result<(), ProposeError> {
        let (mut voters, ids) = {
            let m = self.raft.metrics().borrow().membership_config.clone();
            let ids: BTreeSet<u64> = m.nodes().filter(|(_, n)| n.name == name).map(|(i, _)| *i).collect();
            (m.voter_ids().collect::<BTreeSet<u64>>(), ids)
        };
        let before = voters.len();
        voters.retain(|v| !ids.contains(v));
        if voters.len() == before {
            return Err(ProposeError::Raft(format!("{name} is not a voter")));
        }
        self.raft.change_membership(voters, false).await.map(|_| ()).map_err(write_error)
    }

    /// Stops Raft (and its membership manager).
    pub async fn shutdown(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        let _ = self.raft.shutdown().await;
    }
}

/// A write refused by Raft: "not the leader" (naming it) or another failure.
fn write_error(e: RaftError<u64, ClientWriteError<u64, RaftMember>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ProposeError::NotLeader(f.leader_node.map(|n| n.name))
        }
        other => ProposeError::Raft(other.to_string()),
    }
}

/// Forms and grows the group from membership (module docs; the pre-vote is [`guard`]'s).
async fn manage(rn: RaftNode, membership: Membership, cfg: RaftConfig) {
    let mut initialized = rn.raft.is_initialized().await.unwrap_or(false);
    let mut announced = false;
    // The hot members seen, and since when unchanged: a group is founded only on a view that
    // has settled (so two hot nodes started at once do not each found their own).
    let mut last_hot: Vec<(String, Option<u64>)> = Vec::new();
    let mut stable_since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.manage_every).await;
        // Hot members and their Raft ids (this node's own from here: gossip shows it a round late).
        let members = membership.members();
        let group_in_sight = members.iter().any(|m| m.role == Role::Hot && m.name != rn.name && m.raft_init);
        let mut hot: Vec<(String, Option<u64>)> = members
            .into_iter()
            .filter(|m| m.role == Role::Hot && !m.leaving)
            .map(|m| {
                let id = if m.name == rn.name { Some(rn.id) } else { m.raft_id };
                (m.name, id)
            })
            .collect();
        hot.sort();
        if hot != last_hot {
            last_hot = hot.clone();
            stable_since = tokio::time::Instant::now();
        }
        if !initialized {
            initialized = rn.raft.is_initialized().await.unwrap_or(false);
        }
        if initialized && !announced {
            membership.set_key(keys::RAFT_INIT, "1").await;
            announced = true;
        }
        if !initialized && !group_in_sight && hot.len() >= cfg.expect_voters && stable_since.elapsed() >= cfg.settle {
            let founders: Vec<(String, Option<u64>)> = hot.iter().take(cfg.expect_voters).cloned().collect();
            let all_ids = founders.iter().all(|(_, id)| id.is_some());
            if all_ids && founders.first().map(|(n, _)| n) == Some(&rn.name) {
                let members: BTreeMap<u64, RaftMember> =
                    founders.iter().filter_map(|(n, id)| id.map(|id| (id, RaftMember { name: n.clone() }))).collect();
                let founders: Vec<&String> = founders.iter().map(|(n, _)| n).collect();
                match rn.raft.initialize(members).await {
                    Ok(()) => tracing::info!(voters = ?founders, "formed the Raft group"),
                    Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot form the Raft group yet"),
                }
                initialized = true;
            }
        }
        // Growth: the leader adds hot members that are not in the group yet.
        if rn.is_leader() {
            let in_group: BTreeSet<u64> =
                rn.raft.metrics().borrow().membership_config.nodes().map(|(i, _)| *i).collect();
            for (name, id) in hot.iter().filter_map(|(n, id)| id.filter(|i| !in_group.contains(i)).map(|i| (n, i))) {
                match rn.add_member(name, id).await {
                    Ok(()) => tracing::info!(node = %name, "added a hot node to the Raft group"),
                    Err(e) => tracing::debug!(node = %name, error = %e, "cannot add a hot node yet"),
                }
            }
        }
    }
}

/// The pre-vote (module docs): every `tick`, elections on only if a majority of the voters,
/// this node included, has heard from no leader for `quiet` — the maximum election timeout,
/// which is also openraft's leader lease: a voter refuses votes until the lease since its last
/// leader contact has expired, so a campaign started earlier would only waste a round.
async fn guard(
    rn: RaftNode,
    dist: Arc<crate::dist::Dist>,
    contact: Arc<LeaderContact>,
    log: LogStore,
    tick: Duration,
    quiet: Duration,
) {
    let quiet_ms = quiet.as_millis() as u64;
    loop {
        tokio::time::sleep(tick).await;
        let (leader, voters) = {
            let m = rn.raft.metrics();
            let m = m.borrow();
            let names: BTreeMap<u64, String> = m.membership_config.nodes().map(|(i, n)| (*i, n.name.clone())).collect();
            let voters: Vec<(u64, String)> =
                m.membership_config.voter_ids().map(|i| (i, names.get(&i).cloned().unwrap_or_default())).collect();
            (m.state == ServerState::Leader, voters)
        };
        let heard = contact.since().is_some_and(|d| d < quiet);
        let allow = if leader || heard || !voters.iter().any(|(i, _)| *i == rn.id) {
            false
        } else {
            let last = last_log_id(&log).await;
            let mut asks = tokio::task::JoinSet::new();
            for (id, name) in voters.iter().filter(|(i, _)| *i != rn.id).cloned() {
                let dist = Arc::clone(&dist);
                asks.spawn(async move { pre_vote(&dist, &name, id, tick, last).await });
            }
            let mut agree = 1; // this node: no leader heard for `quiet`
            while let Some(answer) = asks.join_next().await {
                if let Ok(Some(since)) = answer {
                    if since.is_none_or(|ms| ms >= quiet_ms) {
                        agree += 1;
                    }
                }
            }
            agree * 2 > voters.len()
        };
        let was = rn.elections.swap(allow, std::sync::atomic::Ordering::Relaxed);
        if was != allow {
            rn.raft.runtime_config().elect(allow);
            tracing::debug!(elections = allow, voters = voters.len(), "Raft pre-vote");
        }
    }
}

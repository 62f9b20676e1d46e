//! Process groups, like Erlang's `pg`: named groups of processes across the cluster.
//!
//! A process joins and leaves groups; any node lists a group's members on every node, sends to
//! all of them, or picks one (random, round-robin, local first). A process that exits leaves
//! its groups; the members of a node that is lost (its connection ends — membership closes it
//! when the failure detector declares the node down) vanish from every group on every node.
//!
//! ## How it is kept
//!
//! Each node owns its local memberships ([`state::PgState`] is the pure core) and tells its
//! peers: a whole snapshot when a connection to a peer comes up (`Sync`, split into parts of
//! at most [`MAX_PG_BATCH`](cluster_proto::control::MAX_PG_BATCH) members), then every join
//! and leave as it happens. All of it travels on the connection's control lane, and every
//! message is queued while the state lock is held, so a peer applies changes in the order they
//! happened (a leave can never be overtaken by an older snapshot). Groups span the nodes this
//! node is connected to: with [`Membership`](crate::membership::Membership) running, that is
//! every member (gossip connects them all).
//!
//! Membership changes are published as [`PgChange`]s ([`Node::pg_subscribe`]).

pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cluster_proto::codec::{decode_payload, encode_payload};
use cluster_proto::control::{PgMessage, MAX_PG_BATCH};
use cluster_proto::frame::tag;
use cluster_proto::{NodeId, Pid};
use parking_lot::Mutex;
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::broadcast;

use state::PgState;
pub use state::{Change as PgChange, PgError};

use crate::dist::Dist;
use crate::process::behaviour::Message;
use crate::process::node::{Node, NodeShared};

/// Changes buffered per subscriber (a slower one misses changes, told by `Lagged`).
pub const EVENT_BUFFER: usize = 1024;

/// How [`Node::pg_pick`] chooses a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Any member, uniformly.
    Random,
    /// Members in turn (per group, on this node).
    RoundRobin,
    /// A member on this node if there is one (the first), else a random one.
    LocalFirst,
}

/// The process-group part of a node.
pub(crate) struct Pg {
    state: Mutex<PgState>,
    /// Local processes whose exit is being watched.
    watched: Mutex<FxHashSet<Pid>>,
    /// Sync parts received so far, per peer incarnation.
    syncing: Mutex<FxHashMap<NodeId, BTreeMap<String, BTreeSet<Pid>>>>,
    cursors: Mutex<FxHashMap<String, usize>>,
    events: broadcast::Sender<PgChange>,
    rng: AtomicU64,
}

impl Default for Pg {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9, |d| d.as_nanos() as u64);
        Pg {
            state: Mutex::new(PgState::default()),
            watched: Mutex::new(FxHashSet::default()),
            syncing: Mutex::new(FxHashMap::default()),
            cursors: Mutex::new(FxHashMap::default()),
            events: broadcast::channel(EVENT_BUFFER).0,
            rng: AtomicU64::new(seed | 1),
        }
    }
}

fn encode(msg: &PgMessage) -> Option<Vec<u8>> {
    let mut b = Vec::new();
    match encode_payload(&mut b, msg) {
        Ok(()) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, "process-group message not encodable");
            None
        }
    }
}

impl Pg {
    fn publish(&self, changes: impl IntoIterator<Item = PgChange>) {
        for c in changes {
            let _ = self.events.send(c);
        }
    }

    /// A random number (xorshift; good enough to spread picks).
    fn next_random(&self) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        x
    }

    /// Tells every connected peer (called with the state lock held, see the module docs).
    fn tell_peers(dist: Option<&Arc<Dist>>, msg: &PgMessage) {
        if let (Some(d), Some(body)) = (dist, encode(msg)) {
            d.broadcast_control(tag::PG, &body);
        }
    }

    /// A local process exited: it leaves its groups.
    fn exited(&self, node: &NodeShared, pid: Pid) {
        self.watched.lock().remove(&pid);
        let mut st = self.state.lock();
        let changes = st.exited(pid);
        for c in &changes {
            Self::tell_peers(node.dist.get(), &PgMessage::Leave(c.group.clone(), vec![pid.serial()]));
        }
        drop(st);
        self.publish(changes);
    }

    /// A connection to `peer` came up: send it our whole membership.
    pub(crate) fn peer_up(&self, dist: &Dist, peer: NodeId) {
        let Some(session) = dist.session_of(peer) else { return };
        let st = self.state.lock();
        let snapshot = st.local_snapshot();
        let mut parts: Vec<Vec<(String, Vec<u64>)>> = vec![Vec::new()];
        let mut count = 0;
        for (g, serials) in snapshot {
            for chunk in serials.chunks(MAX_PG_BATCH) {
                if count + chunk.len() > MAX_PG_BATCH {
                    parts.push(Vec::new());
                    count = 0;
                }
                count += chunk.len();
                if let Some(last) = parts.last_mut() {
                    last.push((g.clone(), chunk.to_vec()));
                }
            }
        }
        let n = parts.len();
        for (i, groups) in parts.into_iter().enumerate() {
            if let Some(body) = encode(&PgMessage::Sync { groups, more: i + 1 < n }) {
                let _ = session.control(tag::PG, &body);
            }
        }
        drop(st);
    }

    /// The connection to `peer` ended: its members leave.
    pub(crate) fn peer_down(&self, peer: NodeId) {
        self.syncing.lock().remove(&peer);
        let changes = self.state.lock().node_down(peer);
        self.publish(changes);
    }

    /// A process-group message from `from`.
    pub(crate) fn on_message(&self, from: NodeId, body: &[u8]) -> Result<(), String> {
        let msg = decode_payload::<PgMessage>(body).map_err(|e| e.to_string())?;
        let pids = |serials: Vec<u64>| -> Vec<Pid> { serials.into_iter().map(|s| Pid::new(from, s)).collect() };
        let changes = match msg {
            PgMessage::Join(g, serials) => {
                state::check_name(&g).map_err(|e| e.to_string())?;
                self.state.lock().remote_join(from, &g, pids(serials)).into_iter().collect()
            }
            PgMessage::Leave(g, serials) => {
                self.state.lock().remote_leave(from, &g, pids(serials)).into_iter().collect()
            }
            PgMessage::Sync { groups, more } => {
                let mut syncing = self.syncing.lock();
                let acc = syncing.entry(from).or_default();
                for (g, serials) in groups {
                    state::check_name(&g).map_err(|e| e.to_string())?;
                    if acc.len() >= state::MAX_GROUPS && !acc.contains_key(&g) {
                        return Err("sync with too many groups".into());
                    }
                    acc.entry(g).or_default().extend(pids(serials));
                }
                if more {
                    return Ok(());
                }
                let complete = syncing.remove(&from).unwrap_or_default();
                drop(syncing);
                self.state.lock().remote_sync(from, complete)
            }
        };
        self.publish(changes);
        Ok(())
    }
}

/// Process groups (see the [module docs](self)).
impl Node {
    /// Makes the local process `pid` a member of `group` (joining twice is joining once). It
    /// leaves when it exits.
    pub fn pg_join(&self, group: &str, pid: Pid) -> Result<(), PgError> {
        let shared = self.shared();
        if shared.lookup(pid).is_none() {
            return Err(PgError::NotLocal(pid));
        }
        let pg = &shared.pg;
        let change = {
            let mut st = pg.state.lock();
            let change = st.join(group, pid)?;
            if change.is_some() {
                Pg::tell_peers(shared.dist.get(), &PgMessage::Join(group.to_owned(), vec![pid.serial()]));
            }
            change
        };
        pg.publish(change);
        if pg.watched.lock().insert(pid) {
            // Resolves at once if the process died meanwhile: it leaves again.
            let exit = self.wait_exit(pid);
            let weak = Arc::downgrade(shared);
            shared.rt.spawn(async move {
                exit.await;
                if let Some(node) = weak.upgrade() {
                    node.pg.exited(&node, pid);
                }
            });
        }
        Ok(())
    }

    /// Removes the local process `pid` from `group` (no error if it was not a member).
    pub fn pg_leave(&self, group: &str, pid: Pid) {
        let shared = self.shared();
        let change = {
            let mut st = shared.pg.state.lock();
            let change = st.leave(group, pid);
            if change.is_some() {
                Pg::tell_peers(shared.dist.get(), &PgMessage::Leave(group.to_owned(), vec![pid.serial()]));
            }
            change
        };
        shared.pg.publish(change);
    }

    /// The members of `group` on every connected node: this node's first, each part in PID
    /// order.
    pub fn pg_members(&self, group: &str) -> Vec<Pid> {
        self.shared().pg.state.lock().members(group)
    }

    /// The members of `group` on this node.
    pub fn pg_local_members(&self, group: &str) -> Vec<Pid> {
        self.shared().pg.state.lock().local_members(group)
    }

    /// Every group with a member anywhere, sorted.
    pub fn pg_groups(&self) -> Vec<String> {
        self.shared().pg.state.lock().groups()
    }

    /// Membership changes of every group from now on.
    pub fn pg_subscribe(&self) -> broadcast::Receiver<PgChange> {
        self.shared().pg.events.subscribe()
    }

    /// Sends `msg` to every member of `group`; returns how many members it was sent to. Per
    /// member, delivery is as for [`Node::send`] (a full bounded mailbox or a wrong message
    /// type skips that member, and is counted as not sent).
    pub fn pg_send<M: Message>(&self, group: &str, msg: M) -> usize {
        self.pg_members(group).into_iter().filter(|pid| self.send(*pid, msg.clone()).is_ok()).count()
    }

    /// One member of `group`, chosen by `how`; `None` if the group is empty.
    pub fn pg_pick(&self, group: &str, how: Pick) -> Option<Pid> {
        let pg = &self.shared().pg;
        let members = self.pg_members(group);
        if members.is_empty() {
            return None;
        }
        let i = match how {
            Pick::Random => (pg.next_random() % members.len() as u64) as usize,
            Pick::RoundRobin => {
                let mut cursors = pg.cursors.lock();
                if cursors.len() >= state::MAX_GROUPS && !cursors.contains_key(group) {
                    cursors.clear();
                }
                let c = cursors.entry(group.to_owned()).or_insert(0);
                *c = c.wrapping_add(1);
                (*c - 1) % members.len()
            }
            Pick::LocalFirst => match members.first() {
                Some(p) if p.node() == self.id() => 0,
                _ => (pg.next_random() % members.len() as u64) as usize,
            },
        };
        members.get(i).copied()
    }
}

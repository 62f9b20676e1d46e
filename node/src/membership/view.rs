//! The membership view, as pure code: what the gossip layer says is alive goes in, member
//! events come out.
//!
//! The shell feeds [`View::apply`] every snapshot of chitchat's live nodes (already parsed into
//! [`Member`]s with [`Member::from_gossip`]); the view diffs it against what it held and returns
//! the events, in an order processes can rely on: for a node name, a `Down` of an incarnation
//! always comes before the `Up` of the next one.
//!
//! ## Invariants
//!
//! * At most one incarnation per node name is a member; a newer creation replaces an older one
//!   (`Down { reason: Replaced }`, then `Up`), an older one never replaces a newer one (a stale
//!   gossip entry of a restarted node is ignored).
//! * Every `Up` is followed by exactly one `Down` of the same incarnation, or by nothing while
//!   it stays alive.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Gossip keys of a node's state (kept small: the state is gossiped).
pub mod keys {
    /// `hot` or `cold`.
    pub const ROLE: &str = "role";
    /// Providers a cold node serves, comma-separated, in no particular order.
    pub const PROVIDERS: &str = "providers";
    /// The admin API's address (`ip:port`), if the node serves one.
    pub const ADMIN: &str = "admin";
    /// How many processes the node is meant to hold (a placement weight).
    pub const CAPACITY: &str = "capacity";
    /// Processes alive now.
    pub const LOAD_PROCESSES: &str = "load.procs";
    /// Messages queued across its mailboxes now.
    pub const LOAD_MAILBOX: &str = "load.mbox";
    /// `leaving` once the node has started a graceful leave.
    pub const STATUS: &str = "status";
    /// The node's QUIC address now (`ip:port`), when it differs from the one it joined with
    /// (its host was re-resolved to a new address, e.g. after a network reconnect).
    pub const ADDR: &str = "addr";
    /// Providers the node serves but has marked unavailable (rate-limited, breaker open),
    /// comma-separated.
    pub const PROVIDERS_DOWN: &str = "providers.down";
    /// A hot node's Raft member id (decimal), read from its Raft store: it changes when the
    /// node's data is wiped, so a wiped node joins the group as a new member.
    pub const RAFT_ID: &str = "raft.id";
    /// `1` once the hot node belongs to a Raft group (its store holds one): a node with an
    /// empty store does not found a new group while a member of one is in sight.
    pub const RAFT_INIT: &str = "raft.init";
}

/// Longest provider list a member may advertise (G8).
pub const MAX_PROVIDERS: usize = 32;
/// Longest provider name.
pub const MAX_PROVIDER_LEN: usize = 64;

/// What a node is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Orchestrators and the replicated supervision state.
    Hot,
    /// Workers pinned to LLM providers.
    Cold,
}

impl Role {
    /// The gossip (and CLI) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Hot => "hot",
            Role::Cold => "cold",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "hot" => Ok(Role::Hot),
            "cold" => Ok(Role::Cold),
            other => Err(format!("role must be `hot` or `cold`, not {other:?}")),
        }
    }
}

/// A node's current load, as it gossips it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// Processes alive.
    pub processes: u64,
    /// Messages queued across mailboxes.
    pub mailbox: u64,
}

/// A member of the cluster: one live node incarnation and what it gossips about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node name.
    pub name: String,
    /// Its incarnation.
    pub creation: u64,
    /// Where it serves QUIC (and gossip).
    pub addr: SocketAddr,
    /// Hot or cold.
    pub role: Role,
    /// Providers it serves (cold nodes), sorted.
    pub providers: Vec<String>,
    /// Its admin API, if any.
    pub admin: Option<SocketAddr>,
    /// Its capacity (processes).
    pub capacity: u64,
    /// Its load.
    pub load: Load,
    /// It has announced a graceful leave.
    pub leaving: bool,
    /// Providers it serves but has marked unavailable, sorted.
    #[serde(default)]
    pub unavailable: Vec<String>,
    /// Its Raft member id, once its Raft has started (hot nodes).
    #[serde(default)]
    pub raft_id: Option<u64>,
    /// It belongs to a Raft group.
    #[serde(default)]
    pub raft_init: bool,
}

impl Member {
    /// Builds a member from gossip: identity from chitchat's id, the rest from key/values.
    /// Missing or unparsable values take defaults (role `hot`, no providers ...) and are
    /// reported, so a node with a newer or broken key set is still seen.
    pub fn from_gossip<'a>(
        name: &str,
        creation: u64,
        addr: SocketAddr,
        kvs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> (Member, Vec<String>) {
        let mut m = Member {
            name: name.to_owned(),
            creation,
            addr,
            role: Role::Hot,
            providers: Vec::new(),
            admin: None,
            capacity: 0,
            load: Load::default(),
            leaving: false,
            unavailable: Vec::new(),
            raft_id: None,
            raft_init: false,
        };
        let mut problems = Vec::new();
        for (k, v) in kvs {
            match k {
                keys::ROLE => match v.parse() {
                    Ok(r) => m.role = r,
                    Err(e) => problems.push(e),
                },
                keys::PROVIDERS => m.providers = provider_list(v, &mut problems),
                keys::PROVIDERS_DOWN => m.unavailable = provider_list(v, &mut problems),
                keys::ADDR => match v.parse() {
                    Ok(a) => m.addr = a,
                    Err(_) => problems.push(format!("address {v:?} is not ip:port")),
                },
                keys::ADMIN => match v.parse() {
                    Ok(a) => m.admin = Some(a),
                    Err(_) => problems.push(format!("admin address {v:?} is not ip:port")),
                },
                keys::CAPACITY => num(v, k, &mut m.capacity, &mut problems),
                keys::LOAD_PROCESSES => num(v, k, &mut m.load.processes, &mut problems),
                keys::LOAD_MAILBOX => num(v, k, &mut m.load.mailbox, &mut problems),
                keys::STATUS => m.leaving = v == "leaving",
                keys::RAFT_INIT => m.raft_init = v == "1",
                keys::RAFT_ID => match v.parse() {
                    Ok(id) => m.raft_id = Some(id),
                    Err(_) => problems.push(format!("raft id {v:?} is not a number")),
                },
                _ => {} // keys of later versions
            }
        }
        (m, problems)
    }

    /// Whether the member serves `provider` (and has not marked it unavailable).
    pub fn serves(&self, provider: &str) -> bool {
        self.providers.iter().any(|p| p == provider) && !self.unavailable.iter().any(|p| p == provider)
    }
}

fn num(v: &str, k: &str, out: &mut u64, problems: &mut Vec<String>) {
    match v.parse() {
        Ok(n) => *out = n,
        Err(_) => problems.push(format!("{k} {v:?} is not a number")),
    }
}

/// Why a member went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DownReason {
    /// It announced a graceful leave before going.
    Left,
    /// The failure detector lost it (dead, hung, or cut off).
    Failed,
    /// A newer incarnation of the same node name appeared.
    Replaced,
}

/// A change of membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum MemberEvent {
    /// A node incarnation joined (or was first seen).
    Up(Member),
    /// A node incarnation is gone.
    Down {
        /// The member as last seen.
        member: Member,
        /// Why.
        reason: DownReason,
    },
    /// A member's gossiped state changed (role, providers, load ...).
    Changed(Member),
}

/// The members as the node currently sees them (see the module docs).
#[derive(Debug, Default, Clone)]
pub struct View {
    members: BTreeMap<String, Member>,
}

impl View {
    /// An empty view.
    pub fn new() -> View {
        View::default()
    }

    /// The current members, by name.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// The member named `name`.
    pub fn get(&self, name: &str) -> Option<&Member> {
        self.members.get(name)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// No members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Applies a snapshot of the live nodes; returns what changed. A name may appear more than
    /// once in `live` (two incarnations both still in the gossip state): the newest wins.
    pub fn apply(&mut self, live: impl IntoIterator<Item = Member>) -> Vec<MemberEvent> {
        let mut newest: BTreeMap<String, Member> = BTreeMap::new();
        for m in live {
            match newest.get(&m.name) {
                Some(seen) if seen.creation >= m.creation => {}
                _ => {
                    newest.insert(m.name.clone(), m);
                }
            }
        }
        let mut events = Vec::new();
        let gone: Vec<String> = self.members.keys().filter(|n| !newest.contains_key(*n)).cloned().collect();
        for name in gone {
            if let Some(old) = self.members.remove(&name) {
                let reason = if old.leaving { DownReason::Left } else { DownReason::Failed };
                events.push(MemberEvent::Down { member: old, reason });
            }
        }
        for (name, m) in newest {
            match self.members.get(&name) {
                None => {
                    events.push(MemberEvent::Up(m.clone()));
                    self.members.insert(name, m);
                }
                Some(old) if old.creation < m.creation => {
                    let old = old.clone();
                    events.push(MemberEvent::Down { member: old, reason: DownReason::Replaced });
                    events.push(MemberEvent::Up(m.clone()));
                    self.members.insert(name, m);
                }
                Some(old) if old.creation > m.creation => {} // a stale entry of an older incarnation
                Some(old) if *old != m => {
                    events.push(MemberEvent::Changed(m.clone()));
                    self.members.insert(name, m);
                }
                Some(_) => {}
            }
        }
        events
    }
}

/// A comma-separated provider list from gossip: trimmed, sorted, deduplicated, bounded.
fn provider_list(v: &str, problems: &mut Vec<String>) -> Vec<String> {
    let mut ps: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && p.len() <= MAX_PROVIDER_LEN)
        .map(str::to_owned)
        .collect();
    ps.sort();
    ps.dedup();
    if ps.len() > MAX_PROVIDERS {
        problems.push(format!("{} providers, only the first {MAX_PROVIDERS} kept", ps.len()));
        ps.truncate(MAX_PROVIDERS);
    }
    ps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, creation: u64) -> Member {
        let addr = "127.0.0.1:7100".parse().unwrap();
        Member::from_gossip(name, creation, addr, [(keys::ROLE, "cold"), (keys::PROVIDERS, "openai,anthropic")]).0
    }

    #[test]
    fn a_republished_address_replaces_the_joining_one() {
        let kvs = [(keys::ADDR, "10.0.0.9:7100")];
        let (m, problems) =
            Member::from_gossip("c1", 1, "10.0.0.2:7100".parse().unwrap(), kvs.iter().map(|(k, v)| (*k, *v)));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(m.addr, "10.0.0.9:7100".parse().unwrap());
        let kvs = [(keys::ADDR, "nonsense")];
        let (m, problems) =
            Member::from_gossip("c1", 1, "10.0.0.2:7100".parse().unwrap(), kvs.iter().map(|(k, v)| (*k, *v)));
        assert_eq!((m.addr, problems.len()), ("10.0.0.2:7100".parse().unwrap(), 1));
    }

    #[test]
    fn joins_changes_and_failures() {
        let mut v = View::new();
        let (a, b) = (m("a", 1), m("b", 1));
        assert_eq!(v.apply([a.clone(), b.clone()]), vec![MemberEvent::Up(a.clone()), MemberEvent::Up(b.clone())]);
        assert_eq!(v.apply([a.clone(), b.clone()]), vec![], "no change, no event");
        let mut b2 = b.clone();
        b2.load.processes = 7;
        assert_eq!(v.apply([a.clone(), b2.clone()]), vec![MemberEvent::Changed(b2.clone())]);
        assert_eq!(v.apply([a.clone()]), vec![MemberEvent::Down { member: b2, reason: DownReason::Failed }]);
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn a_newer_incarnation_replaces_and_an_older_one_never_does() {
        let mut v = View::new();
        v.apply([m("a", 1)]);
        assert_eq!(
            v.apply([m("a", 1), m("a", 2)]),
            vec![MemberEvent::Down { member: m("a", 1), reason: DownReason::Replaced }, MemberEvent::Up(m("a", 2))]
        );
        assert_eq!(v.apply([m("a", 1)]), vec![], "a stale entry of the old incarnation is ignored");
        assert_eq!(v.get("a").map(|x| x.creation), Some(2));
    }

    #[test]
    fn a_graceful_leave_is_reported_as_left() {
        let mut v = View::new();
        let mut a = m("a", 1);
        v.apply([a.clone()]);
        a.leaving = true;
        assert_eq!(v.apply([a.clone()]), vec![MemberEvent::Changed(a.clone())]);
        assert_eq!(v.apply([]), vec![MemberEvent::Down { member: a, reason: DownReason::Left }]);
    }

    #[test]
    fn gossip_values_are_parsed_defensively() {
        let addr = "10.0.0.1:7100".parse().unwrap();
        let long = "p".repeat(MAX_PROVIDER_LEN + 1);
        let providers = format!("b, a,,a,{long}");
        let kvs = [
            (keys::ROLE, "lukewarm"),
            (keys::PROVIDERS, providers.as_str()),
            (keys::ADMIN, "nope"),
            (keys::CAPACITY, "-3"),
            (keys::LOAD_PROCESSES, "12"),
            ("future.key", "whatever"),
        ];
        let (mem, problems) = Member::from_gossip("x", 5, addr, kvs);
        assert_eq!(mem.role, Role::Hot, "an unknown role keeps the default");
        assert_eq!(mem.providers, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!((mem.admin, mem.capacity, mem.load.processes), (None, 0, 12));
        assert_eq!(problems.len(), 3, "{problems:?}");
        let many: String = (0..100).map(|i| format!("p{i},")).collect();
        let (mem, problems) = Member::from_gossip("x", 5, addr, [(keys::PROVIDERS, many.as_str())]);
        assert_eq!((mem.providers.len(), problems.len()), (MAX_PROVIDERS, 1));
    }
}

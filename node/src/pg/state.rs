//! Process-group membership as pure code: joins, leaves, peers' memberships and their loss in,
//! membership changes out.
//!
//! ## Invariants
//!
//! * A group exists while it has a member; empty groups are removed.
//! * A process of this node is in `local`, a process of another node incarnation in `remote`
//!   under that incarnation — never both, and never under another incarnation.
//! * Every operation returns exactly the changes it made ([`Change`]), so events are complete
//!   and never duplicated (joining twice is one change, leaving an absent member none).

use std::collections::{BTreeMap, BTreeSet};

use cluster_proto::control::MAX_GROUP_NAME;
use cluster_proto::{NodeId, Pid};
use rustc_hash::FxHashMap;

/// Most groups a node's processes may be in, in all (G8).
pub const MAX_GROUPS: usize = 65_536;
/// Most members of one group from one node (G8).
pub const MAX_MEMBERS: usize = 1 << 20;

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgError {
    /// The group name is empty or longer than 255 bytes.
    #[error("invalid group name ({0} bytes; 1..=255 allowed)")]
    BadName(usize),
    /// The process is not a live process of this node.
    #[error("{0} is not a live process of this node")]
    NotLocal(Pid),
    /// Too many groups or members.
    #[error("process group limit reached: {0}")]
    Limit(&'static str),
}

/// Membership changes of one group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// The group.
    pub group: String,
    /// Processes that joined.
    pub joined: Vec<Pid>,
    /// Processes that left.
    pub left: Vec<Pid>,
}

type Groups = BTreeMap<String, BTreeSet<Pid>>;

/// See the module docs.
#[derive(Debug, Default)]
pub struct PgState {
    local: Groups,
    remote: FxHashMap<NodeId, Groups>,
    /// Groups each local process is in (to leave them all when it exits).
    by_pid: FxHashMap<Pid, BTreeSet<String>>,
}

/// Checks a group name.
pub fn check_name(group: &str) -> Result<(), PgError> {
    if group.is_empty() || group.len() > MAX_GROUP_NAME {
        return Err(PgError::BadName(group.len()));
    }
    Ok(())
}

fn insert(groups: &mut Groups, group: &str, pids: impl IntoIterator<Item = Pid>) -> Vec<Pid> {
    let set = groups.entry(group.to_owned()).or_default();
    let added: Vec<Pid> = pids.into_iter().filter(|p| set.len() < MAX_MEMBERS && set.insert(*p)).collect();
    if set.is_empty() {
        groups.remove(group);
    }
    added
}

fn remove(groups: &mut Groups, group: &str, pids: impl IntoIterator<Item = Pid>) -> Vec<Pid> {
    let Some(set) = groups.get_mut(group) else { return Vec::new() };
    let removed: Vec<Pid> = pids.into_iter().filter(|p| set.remove(p)).collect();
    if set.is_empty() {
        groups.remove(group);
    }
    removed
}

fn change(group: &str, joined: Vec<Pid>, left: Vec<Pid>) -> Option<Change> {
    (!joined.is_empty() || !left.is_empty()).then(|| Change { group: group.to_owned(), joined, left })
}

impl PgState {
    /// A local process joins `group`. `Ok(None)` if it was already a member.
    pub fn join(&mut self, group: &str, pid: Pid) -> Result<Option<Change>, PgError> {
        check_name(group)?;
        if !self.local.contains_key(group) && self.local.len() >= MAX_GROUPS {
            return Err(PgError::Limit("groups per node"));
        }
        if self.local.get(group).is_some_and(|s| s.len() >= MAX_MEMBERS && !s.contains(&pid)) {
            return Err(PgError::Limit("members per group"));
        }
        let added = insert(&mut self.local, group, [pid]);
        if !added.is_empty() {
            self.by_pid.entry(pid).or_default().insert(group.to_owned());
        }
        Ok(change(group, added, Vec::new()))
    }

    /// A local process leaves `group`.
    pub fn leave(&mut self, group: &str, pid: Pid) -> Option<Change> {
        let removed = remove(&mut self.local, group, [pid]);
        if !removed.is_empty() {
            if let Some(gs) = self.by_pid.get_mut(&pid) {
                gs.remove(group);
                if gs.is_empty() {
                    self.by_pid.remove(&pid);
                }
            }
        }
        change(group, Vec::new(), removed)
    }

    /// A local process exited: it leaves every group.
    pub fn exited(&mut self, pid: Pid) -> Vec<Change> {
        let groups = self.by_pid.remove(&pid).unwrap_or_default();
        groups.iter().filter_map(|g| change(g, Vec::new(), remove(&mut self.local, g, [pid]))).collect()
    }

    /// Whether a local process is in any group.
    pub fn is_member(&self, pid: Pid) -> bool {
        self.by_pid.contains_key(&pid)
    }

    /// Processes of `node` joined `group`.
    pub fn remote_join(&mut self, node: NodeId, group: &str, pids: Vec<Pid>) -> Option<Change> {
        let groups = self.remote.entry(node).or_default();
        if !groups.contains_key(group) && groups.len() >= MAX_GROUPS {
            return None;
        }
        let added = insert(groups, group, pids.into_iter().filter(|p| p.node() == node));
        change(group, added, Vec::new())
    }

    /// Processes of `node` left `group`.
    pub fn remote_leave(&mut self, node: NodeId, group: &str, pids: Vec<Pid>) -> Option<Change> {
        let groups = self.remote.get_mut(&node)?;
        let removed = remove(groups, group, pids);
        if groups.is_empty() {
            self.remote.remove(&node);
        }
        change(group, Vec::new(), removed)
    }

    /// `node`'s whole membership is `groups` now (a completed sync).
    pub fn remote_sync(&mut self, node: NodeId, groups: Groups) -> Vec<Change> {
        let old = self.remote.remove(&node).unwrap_or_default();
        let mut names: BTreeSet<&String> = old.keys().collect();
        names.extend(groups.keys());
        let empty = BTreeSet::new();
        let changes = names
            .into_iter()
            .filter_map(|g| {
                let (was, now) = (old.get(g).unwrap_or(&empty), groups.get(g).unwrap_or(&empty));
                change(g, now.difference(was).copied().collect(), was.difference(now).copied().collect())
            })
            .collect();
        let kept: Groups = groups
            .into_iter()
            .map(|(g, s)| (g, s.into_iter().filter(|p| p.node() == node).collect::<BTreeSet<_>>()))
            .filter(|(_, s)| !s.is_empty())
            .take(MAX_GROUPS)
            .collect();
        if !kept.is_empty() {
            self.remote.insert(node, kept);
        }
        changes
    }

    /// `node` is gone: its members leave every group.
    pub fn node_down(&mut self, node: NodeId) -> Vec<Change> {
        self.remote
            .remove(&node)
            .unwrap_or_default()
            .into_iter()
            .map(|(g, s)| Change { group: g, joined: Vec::new(), left: s.into_iter().collect() })
            .collect()
    }

    /// Members of `group` on every node, local ones first, each part in PID order.
    pub fn members(&self, group: &str) -> Vec<Pid> {
        let mut out = self.local_members(group);
        let mut remote: Vec<Pid> = self.remote.values().filter_map(|g| g.get(group)).flatten().copied().collect();
        remote.sort();
        out.extend(remote);
        out
    }

    /// Members of `group` on this node.
    pub fn local_members(&self, group: &str) -> Vec<Pid> {
        self.local.get(group).map(|s| s.iter().copied().collect()).unwrap_or_default()
    }

    /// Every group with a member anywhere, sorted.
    pub fn groups(&self) -> Vec<String> {
        let mut all: BTreeSet<&String> = self.local.keys().collect();
        for g in self.remote.values() {
            all.extend(g.keys());
        }
        all.into_iter().cloned().collect()
    }

    /// This node's membership, for a sync: groups with their members' serials.
    pub fn local_snapshot(&self) -> Vec<(String, Vec<u64>)> {
        self.local.iter().map(|(g, s)| (g.clone(), s.iter().map(|p| p.serial()).collect())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, creation: u64) -> NodeId {
        NodeId::intern(name, creation).unwrap()
    }

    #[test]
    fn local_joins_leaves_and_exits() {
        let me = node("pg-a", 1);
        let (p1, p2) = (Pid::new(me, 1), Pid::new(me, 2));
        let mut s = PgState::default();
        assert_eq!(s.join("g", p1).unwrap(), Some(Change { group: "g".into(), joined: vec![p1], left: vec![] }));
        assert_eq!(s.join("g", p1).unwrap(), None, "joining twice is one change");
        s.join("h", p1).unwrap();
        s.join("g", p2).unwrap();
        assert_eq!(s.members("g"), vec![p1, p2]);
        assert_eq!(s.leave("g", p2), Some(Change { group: "g".into(), joined: vec![], left: vec![p2] }));
        assert_eq!(s.leave("g", p2), None);
        let mut gone = s.exited(p1);
        gone.sort_by(|a, b| a.group.cmp(&b.group));
        assert_eq!(gone.iter().map(|c| c.group.as_str()).collect::<Vec<_>>(), vec!["g", "h"]);
        assert!(s.groups().is_empty(), "empty groups are removed");
        assert!(!s.is_member(p1));
        assert_eq!(s.join("", p1), Err(PgError::BadName(0)));
    }

    #[test]
    fn peers_sync_join_leave_and_go_down() {
        let (me, b, b2) = (node("pg-a", 1), node("pg-b", 1), node("pg-b", 2));
        let mut s = PgState::default();
        s.join("g", Pid::new(me, 1)).unwrap();
        let (x, y) = (Pid::new(b, 5), Pid::new(b, 6));
        assert_eq!(s.remote_join(b, "g", vec![x]).map(|c| c.joined), Some(vec![x]));
        assert_eq!(s.remote_join(b, "g", vec![Pid::new(b2, 9)]), None, "a PID of another incarnation is ignored");
        // A sync replaces what was known: y joins g, x moves to h.
        let synced: Groups = [("g".to_owned(), [y].into()), ("h".to_owned(), [x].into())].into();
        let mut ch = s.remote_sync(b, synced);
        ch.sort_by(|a, b| a.group.cmp(&b.group));
        assert_eq!(
            ch,
            vec![
                Change { group: "g".into(), joined: vec![y], left: vec![x] },
                Change { group: "h".into(), joined: vec![x], left: vec![] }
            ]
        );
        assert_eq!(s.members("g"), vec![Pid::new(me, 1), y], "local first");
        assert_eq!(s.remote_leave(b, "h", vec![x]).map(|c| c.left), Some(vec![x]));
        assert_eq!(s.node_down(b), vec![Change { group: "g".into(), joined: vec![], left: vec![y] }]);
        assert_eq!(s.members("g"), vec![Pid::new(me, 1)]);
        assert_eq!(s.local_snapshot(), vec![("g".to_owned(), vec![1])]);
    }
}

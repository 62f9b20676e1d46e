//! Placement of a single process (`soma spawn --placement`), as pure code: which member it
//! should start on, given constraints.
//!
//! [`place`] is the cluster supervisor's placement (`supervisor::cluster::placement::place`)
//! applied to the gossiped members: filter by role, by provider (in preference order: the first
//! provider some member serves and has not marked unavailable wins) and by exclusions, then pick
//! the least loaded (processes per unit of capacity; ties broken by name, so the choice is
//! deterministic for a given view). Members that announced a graceful leave are never chosen.
//! One rule set for both, so a process placed by hand lands where a supervisor would put it.

use serde::{Deserialize, Serialize};
use supervisor::cluster::placement::{self as cluster, Hints, NodeView, PlacementSpec};

use super::view::{Member, Role};

/// Where a process may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    /// Only members of this role.
    pub role: Option<Role>,
    /// Only members serving one of these providers, preferring earlier ones.
    pub providers: Vec<String>,
    /// Never these nodes (e.g. where the process just failed).
    pub avoid: Vec<String>,
}

/// Why no member fits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no member matches {0}")]
pub struct NoMatch(pub String);

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(r) = self.role {
            parts.push(format!("role={r}"));
        }
        if !self.providers.is_empty() {
            parts.push(format!("provider in [{}]", self.providers.join(", ")));
        }
        if !self.avoid.is_empty() {
            parts.push(format!("not on [{}]", self.avoid.join(", ")));
        }
        if parts.is_empty() {
            f.write_str("any member")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// A member as the placement rules see it.
pub fn node_view(m: &Member) -> NodeView {
    NodeView {
        name: m.name.clone(),
        role: m.role.as_str().to_owned(),
        providers: m.providers.clone(),
        unavailable: m.unavailable.clone(),
        load: m.load.processes,
        capacity: m.capacity,
        leaving: m.leaving,
        settling: false,
    }
}

/// The member to place a process on (see the module docs).
pub fn place<'a>(members: impl IntoIterator<Item = &'a Member>, c: &Constraint) -> Result<&'a Member, NoMatch> {
    let members: Vec<&Member> = members.into_iter().collect();
    let view: cluster::View = members.iter().map(|m| (m.name.clone(), node_view(m))).collect();
    let spec = PlacementSpec {
        role: c.role.map(|r| r.as_str().to_owned()),
        providers: c.providers.clone(),
        spread: false,
        avoid: c.avoid.clone(),
    };
    let placed = cluster::place(&view, &spec, Hints::default()).map_err(|_| NoMatch(c.to_string()))?;
    members.into_iter().find(|m| m.name == placed.node).ok_or_else(|| NoMatch(c.to_string()))
}

#[cfg(test)]
mod tests {
    use super::super::view::keys;
    use super::*;

    fn m(name: &str, role: &str, providers: &str, procs: u64, capacity: u64) -> Member {
        let addr = "127.0.0.1:1".parse().unwrap();
        let (procs, cap) = (procs.to_string(), capacity.to_string());
        let kvs = [
            (keys::ROLE, role),
            (keys::PROVIDERS, providers),
            (keys::LOAD_PROCESSES, procs.as_str()),
            (keys::CAPACITY, cap.as_str()),
        ];
        Member::from_gossip(name, 1, addr, kvs).0
    }

    #[test]
    fn role_provider_preference_and_least_loaded() {
        let ms = [
            m("hot-1", "hot", "", 5, 100),
            m("cold-1", "cold", "openai", 50, 100),
            m("cold-2", "cold", "openai,local", 10, 100),
            m("cold-3", "cold", "anthropic", 0, 100),
        ];
        let by = |c: Constraint| place(&ms, &c).map(|m| m.name.clone());
        assert_eq!(by(Constraint { role: Some(Role::Hot), ..Default::default() }), Ok("hot-1".into()));
        let openai = Constraint { providers: vec!["openai".into()], ..Default::default() };
        assert_eq!(by(openai.clone()), Ok("cold-2".into()), "the less loaded openai node");
        let pref = Constraint { providers: vec!["anthropic".into(), "openai".into()], ..Default::default() };
        assert_eq!(by(pref), Ok("cold-3".into()), "the first provider in preference order that any node serves");
        let avoid = Constraint { avoid: vec!["cold-2".into()], ..openai };
        assert_eq!(by(avoid), Ok("cold-1".into()));
        let none = Constraint { role: Some(Role::Hot), providers: vec!["openai".into()], ..Default::default() };
        assert_eq!(by(none).unwrap_err().to_string(), "no member matches role=hot, provider in [openai]");
        assert_eq!(by(Constraint::default()), Ok("cold-3".into()), "least loaded of all");
    }

    #[test]
    fn load_is_relative_to_capacity_and_leaving_members_are_skipped() {
        let mut big = m("big", "cold", "local", 50, 1000);
        let small = m("small", "cold", "local", 10, 100);
        let c = Constraint { providers: vec!["local".into()], ..Default::default() };
        assert_eq!(place([&big, &small], &c).map(|m| m.name.as_str()), Ok("big"), "5% beats 10%");
        big.leaving = true;
        assert_eq!(place([&big, &small], &c).map(|m| m.name.as_str()), Ok("small"));
    }
}

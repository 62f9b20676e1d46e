//! Placement, as pure code: which member a process should start on, given constraints.
//!
//! [`place`] filters the members by role, by provider (in preference order: the first provider
//! any member serves wins) and by exclusions, then picks the least loaded (processes per unit of
//! capacity; ties broken by name, so the choice is deterministic for a given view). Members that
//! announced a graceful leave are never chosen.

use serde::{Deserialize, Serialize};

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

/// Load per unit of capacity, compared without floating point: `processes / capacity`.
fn lighter(a: &Member, b: &Member) -> std::cmp::Ordering {
    let (ca, cb) = (u128::from(a.capacity.max(1)), u128::from(b.capacity.max(1)));
    (u128::from(a.load.processes) * cb).cmp(&(u128::from(b.load.processes) * ca)).then_with(|| a.name.cmp(&b.name))
}

/// The member to place a process on (see the module docs).
pub fn place<'a>(members: impl IntoIterator<Item = &'a Member>, c: &Constraint) -> Result<&'a Member, NoMatch> {
    let eligible: Vec<&Member> = members
        .into_iter()
        .filter(|m| !m.leaving)
        .filter(|m| c.role.is_none_or(|r| m.role == r))
        .filter(|m| !c.avoid.contains(&m.name))
        .collect();
    let pool: Vec<&Member> = if c.providers.is_empty() {
        eligible
    } else {
        c.providers
            .iter()
            .map(|p| eligible.iter().copied().filter(|m| m.serves(p)).collect::<Vec<_>>())
            .find(|v| !v.is_empty())
            .unwrap_or_default()
    };
    pool.into_iter().min_by(|a, b| lighter(a, b)).ok_or_else(|| NoMatch(c.to_string()))
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

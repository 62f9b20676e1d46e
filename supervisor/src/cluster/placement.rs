//! Placement of cluster-supervised children, as pure code: which node a child runs on, given
//! its constraints and what the leader's committed view of the cluster says.
//!
//! [`place`] keeps the nodes that are up, not leaving, of the wanted role and not avoided; then,
//! if the child names providers, takes them **in preference order**: the first provider that
//! some eligible node serves *and* has not marked unavailable wins, and only its nodes are
//! candidates. Among the candidates it prefers the child's previous node when asked (a crash
//! restarts in place if the node is healthy), then — with `spread` — the node with the fewest
//! children of the same supervisor, then the least loaded (processes per unit of capacity),
//! then the name (so the choice is deterministic for a given view).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest node, role or provider name accepted in a spec or a view.
pub const MAX_NAME: usize = 255;
/// Most providers in a child's preference list, and most avoided nodes.
pub const MAX_LIST: usize = 32;

/// Where a child may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PlacementSpec {
    /// Only nodes of this role (`hot`, `cold`).
    pub role: Option<String>,
    /// Only nodes serving one of these providers, earlier ones preferred.
    pub providers: Vec<String>,
    /// Prefer nodes holding fewer children of the same supervisor.
    pub spread: bool,
    /// Never these nodes.
    pub avoid: Vec<String>,
}

impl PlacementSpec {
    /// Checks the limits.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = |n: &String| !n.is_empty() && n.len() <= MAX_NAME;
        if self.role.as_ref().is_some_and(|r| !name_ok(r)) {
            return Err("bad role name".into());
        }
        if self.providers.len() > MAX_LIST || self.avoid.len() > MAX_LIST {
            return Err(format!("at most {MAX_LIST} providers and {MAX_LIST} avoided nodes"));
        }
        if !self.providers.iter().all(name_ok) || !self.avoid.iter().all(name_ok) {
            return Err(format!("provider and node names must be 1..={MAX_NAME} bytes"));
        }
        Ok(())
    }
}

/// A node as the leader sees it when placing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// Providers it serves.
    pub providers: Vec<String>,
    /// Providers it serves but has marked unavailable (rate-limited, breaker open).
    pub unavailable: Vec<String>,
    /// Processes it runs now.
    pub load: u64,
    /// Processes it is meant to hold.
    pub capacity: u64,
    /// It announced a graceful leave.
    pub leaving: bool,
    /// The leader has not heard yet what it runs (a new leader's first list to it is
    /// unanswered). [`place`] ignores this; `plan` holds back a child whose placement falls
    /// on such a node until the node has answered (see `plan`).
    #[serde(default)]
    pub settling: bool,
}

impl NodeView {
    /// Whether it serves `provider` now.
    pub fn serves(&self, provider: &str) -> bool {
        self.providers.iter().any(|p| p == provider) && !self.unavailable.iter().any(|p| p == provider)
    }
}

/// The cluster as the leader sees it: the nodes that are up, by name.
pub type View = BTreeMap<String, NodeView>;

/// Where a child goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    /// The node.
    pub node: String,
    /// The provider that made it eligible (the first of the child's preferences it serves).
    pub provider: Option<String>,
}

/// What else a placement takes into account.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hints<'a> {
    /// The child's previous node, preferred if it still fits.
    pub prefer: Option<&'a str>,
    /// A node to avoid this time (where the child was just lost).
    pub avoid_once: Option<&'a str>,
    /// Children of the same supervisor per node (for `spread`).
    pub siblings: Option<&'a BTreeMap<String, u64>>,
    /// Extra load per node placed in this round and not yet in the view.
    pub extra_load: Option<&'a BTreeMap<String, u64>>,
}

/// Picks the node for a child (see the module docs); `Err` says why none fits.
pub fn place(view: &View, spec: &PlacementSpec, hints: Hints<'_>) -> Result<Placed, String> {
    let eligible: Vec<&NodeView> = view
        .values()
        .filter(|n| !n.leaving)
        .filter(|n| spec.role.as_ref().is_none_or(|r| *r == n.role))
        .filter(|n| !spec.avoid.contains(&n.name))
        .filter(|n| hints.avoid_once != Some(n.name.as_str()))
        .collect();
    let (candidates, provider): (Vec<&NodeView>, Option<String>) = if spec.providers.is_empty() {
        (eligible, None)
    } else {
        match spec.providers.iter().find_map(|p| {
            let c: Vec<&NodeView> = eligible.iter().copied().filter(|n| n.serves(p)).collect();
            (!c.is_empty()).then(|| (c, p.clone()))
        }) {
            Some((c, p)) => (c, Some(p)),
            None => (Vec::new(), None),
        }
    };
    if candidates.is_empty() {
        return Err(describe_no_match(spec));
    }
    if let Some(prev) = hints.prefer {
        if let Some(n) = candidates.iter().find(|n| n.name == prev) {
            return Ok(Placed { node: n.name.clone(), provider });
        }
    }
    let siblings = |n: &NodeView| hints.siblings.and_then(|s| s.get(&n.name)).copied().unwrap_or(0);
    let load = |n: &NodeView| n.load + hints.extra_load.and_then(|l| l.get(&n.name)).copied().unwrap_or(0);
    let best = candidates
        .into_iter()
        .min_by(|a, b| {
            let spread = if spec.spread { siblings(a).cmp(&siblings(b)) } else { std::cmp::Ordering::Equal };
            let (ca, cb) = (u128::from(a.capacity.max(1)), u128::from(b.capacity.max(1)));
            spread
                .then_with(|| (u128::from(load(a)) * cb).cmp(&(u128::from(load(b)) * ca)))
                .then_with(|| a.name.cmp(&b.name))
        })
        .map(|n| n.name.clone());
    match best {
        Some(node) => Ok(Placed { node, provider }),
        None => Err(describe_no_match(spec)),
    }
}

fn describe_no_match(spec: &PlacementSpec) -> String {
    let mut parts = Vec::new();
    if let Some(r) = &spec.role {
        parts.push(format!("role {r}"));
    }
    if !spec.providers.is_empty() {
        parts.push(format!("an available provider of [{}]", spec.providers.join(", ")));
    }
    if !spec.avoid.is_empty() {
        parts.push(format!("not on [{}]", spec.avoid.join(", ")));
    }
    if parts.is_empty() {
        "no node is up".into()
    } else {
        format!("no node with {}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, role: &str, providers: &[&str], load: u64) -> NodeView {
        NodeView {
            name: name.into(),
            role: role.into(),
            providers: providers.iter().map(|p| p.to_string()).collect(),
            load,
            capacity: 100,
            ..NodeView::default()
        }
    }

    fn view(nodes: Vec<NodeView>) -> View {
        nodes.into_iter().map(|n| (n.name.clone(), n)).collect()
    }

    fn spec(role: Option<&str>, providers: &[&str]) -> PlacementSpec {
        PlacementSpec {
            role: role.map(str::to_owned),
            providers: providers.iter().map(|p| p.to_string()).collect(),
            ..PlacementSpec::default()
        }
    }

    #[test]
    fn providers_are_taken_in_preference_order() {
        let v = view(vec![
            node("c1", "cold", &["anthropic"], 50),
            node("c2", "cold", &["openai"], 0),
            node("c3", "cold", &["openai", "anthropic"], 10),
        ]);
        let p = place(&v, &spec(Some("cold"), &["anthropic", "openai"]), Hints::default()).unwrap();
        assert_eq!(p, Placed { node: "c3".into(), provider: Some("anthropic".into()) }, "least loaded anthropic node");
        // anthropic unavailable everywhere → the next provider.
        let mut v2 = v.clone();
        for n in v2.values_mut() {
            n.unavailable = vec!["anthropic".into()];
        }
        let p = place(&v2, &spec(Some("cold"), &["anthropic", "openai"]), Hints::default()).unwrap();
        assert_eq!(p, Placed { node: "c2".into(), provider: Some("openai".into()) });
    }

    #[test]
    fn role_avoid_leaving_and_no_match() {
        let mut v = view(vec![node("h1", "hot", &[], 0), node("c1", "cold", &["local"], 0)]);
        assert_eq!(place(&v, &spec(Some("hot"), &[]), Hints::default()).unwrap().node, "h1");
        let mut s = spec(Some("cold"), &["local"]);
        s.avoid = vec!["c1".into()];
        assert!(place(&v, &s, Hints::default()).unwrap_err().contains("not on [c1]"));
        v.get_mut("c1").unwrap().leaving = true;
        let e = place(&v, &spec(Some("cold"), &["local"]), Hints::default()).unwrap_err();
        assert!(e.contains("role cold") && e.contains("local"), "{e}");
        assert_eq!(place(&View::new(), &PlacementSpec::default(), Hints::default()).unwrap_err(), "no node is up");
    }

    #[test]
    fn previous_node_spread_and_extra_load() {
        let v = view(vec![node("a", "cold", &["p"], 0), node("b", "cold", &["p"], 0), node("c", "cold", &["p"], 0)]);
        let s = spec(Some("cold"), &["p"]);
        assert_eq!(place(&v, &s, Hints { prefer: Some("b"), ..Hints::default() }).unwrap().node, "b");
        assert_eq!(place(&v, &s, Hints { prefer: Some("gone"), ..Hints::default() }).unwrap().node, "a");
        assert_eq!(place(&v, &s, Hints { avoid_once: Some("a"), ..Hints::default() }).unwrap().node, "b");
        let extra: BTreeMap<String, u64> = [("a".to_owned(), 5), ("b".to_owned(), 1)].into();
        assert_eq!(place(&v, &s, Hints { extra_load: Some(&extra), ..Hints::default() }).unwrap().node, "c");
        let mut spread = s.clone();
        spread.spread = true;
        let sib: BTreeMap<String, u64> = [("a".to_owned(), 1), ("c".to_owned(), 1)].into();
        assert_eq!(place(&v, &spread, Hints { siblings: Some(&sib), ..Hints::default() }).unwrap().node, "b");
    }

    #[test]
    fn limits_are_checked() {
        assert!(PlacementSpec::default().validate().is_ok());
        let s = PlacementSpec { providers: vec![String::new()], ..PlacementSpec::default() };
        assert!(s.validate().is_err());
        let s = PlacementSpec { avoid: vec!["x".into(); MAX_LIST + 1], ..PlacementSpec::default() };
        assert!(s.validate().is_err());
    }
}

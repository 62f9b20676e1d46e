//! Fencing on the node that runs cluster-supervised children (G6), as pure code.
//!
//! Every incarnation of a child carries a **generation**: the Raft log index of the entry that
//! assigned it, so generations only grow and every replica agrees on them. A node keeps, per
//! child, the newest generation it has seen and what it runs:
//!
//! * a start at generation `g` is refused if the node has seen a newer one (a stale order from
//!   an old leader, or one overtaken on the wire); otherwise every older incarnation the node
//!   holds is to be stopped first, and the start goes ahead;
//! * a stop names a generation and stops that one or an older one (never a newer incarnation);
//! * a reconcile from the leader (the committed generation of every child, or its absence)
//!   stops whatever is older or no longer supervised.
//!
//! The table is bounded ([`MAX_CHILDREN`]); the oldest forgotten entries are those of stopped
//! children (a forgotten child's next start is judged as a first start, which is safe because a
//! leader only ever sends committed, hence newer, generations).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most children a node tracks.
pub const MAX_CHILDREN: usize = 1 << 20;

/// A child cluster-wide: its supervisor's name and its id there.
pub type ChildKey = (String, String);

/// What one child is on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    /// Newest generation seen for the child (started, stopped or reconciled).
    newest: u64,
    /// The incarnation running here, if any: its generation.
    running: Option<u64>,
}

/// The answer to a start order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartVerdict {
    /// Start it; first stop these older generations held here.
    Start {
        /// Older incarnations to stop before starting.
        stop_first: Vec<u64>,
    },
    /// Refused: a newer generation was seen.
    Stale {
        /// The newest generation seen.
        newest: u64,
    },
    /// This very generation already runs here (a duplicate order): nothing to do.
    AlreadyRunning,
}

/// A node's fencing table (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fence {
    children: BTreeMap<ChildKey, Entry>,
    /// Starts refused as stale, ever (reported by fault tests: must be all refusals, never a
    /// stale start accepted).
    refused: u64,
}

impl Fence {
    /// An empty table.
    pub fn new() -> Fence {
        Fence::default()
    }

    /// A start order for `child` at `generation`.
    pub fn on_start(&mut self, child: &ChildKey, generation: u64) -> StartVerdict {
        if !self.children.contains_key(child) && self.children.len() >= MAX_CHILDREN {
            self.forget_one_stopped();
        }
        let e = self.children.entry(child.clone()).or_default();
        if generation < e.newest {
            self.refused += 1;
            return StartVerdict::Stale { newest: e.newest };
        }
        if e.running == Some(generation) {
            return StartVerdict::AlreadyRunning;
        }
        let stop_first: Vec<u64> = e.running.filter(|r| *r < generation).into_iter().collect();
        e.newest = generation;
        e.running = Some(generation);
        StartVerdict::Start { stop_first }
    }

    /// The start of `generation` failed (or it exited): it no longer runs here.
    pub fn on_exit(&mut self, child: &ChildKey, generation: u64) {
        if let Some(e) = self.children.get_mut(child) {
            if e.running == Some(generation) {
                e.running = None;
            }
        }
    }

    /// A stop order for `child` at `generation`: the incarnation running here to stop, if it is
    /// that generation or older (an older one is fenced out by the newer order anyway). A stop
    /// for an older generation than the one running here stops nothing.
    pub fn on_stop(&mut self, child: &ChildKey, generation: u64) -> Option<u64> {
        let e = self.children.entry(child.clone()).or_default();
        e.newest = e.newest.max(generation);
        match e.running {
            Some(r) if r <= generation => {
                e.running = None;
                Some(r)
            }
            _ => None,
        }
    }

    /// The leader's committed generations (`None`: no longer supervised). Returns the
    /// incarnations running here to stop: older than committed, or not supervised at all.
    /// Children missing from `committed` are judged by `unknown_is_orphan`: a full reconcile
    /// lists every child, so a child it does not list is an orphan.
    pub fn reconcile(&mut self, committed: &BTreeMap<ChildKey, u64>, unknown_is_orphan: bool) -> Vec<(ChildKey, u64)> {
        let mut stop = Vec::new();
        for (key, e) in self.children.iter_mut() {
            match committed.get(key) {
                Some(&g) => {
                    e.newest = e.newest.max(g);
                    if let Some(r) = e.running.filter(|r| *r < g) {
                        stop.push((key.clone(), r));
                        e.running = None;
                    }
                }
                None if unknown_is_orphan => {
                    if let Some(r) = e.running.take() {
                        stop.push((key.clone(), r));
                    }
                }
                None => {}
            }
        }
        stop
    }

    /// What runs here: (child, generation), in key order.
    pub fn running(&self) -> Vec<(ChildKey, u64)> {
        self.children.iter().filter_map(|(k, e)| e.running.map(|g| (k.clone(), g))).collect()
    }

    /// The newest generation seen for `child`.
    pub fn newest(&self, child: &ChildKey) -> Option<u64> {
        self.children.get(child).map(|e| e.newest)
    }

    /// Stale starts refused so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    fn forget_one_stopped(&mut self) {
        let victim = self.children.iter().find(|(_, e)| e.running.is_none()).map(|(k, _)| k.clone());
        if let Some(k) = victim {
            self.children.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(c: &str) -> ChildKey {
        ("sup".into(), c.into())
    }

    #[test]
    fn newer_starts_replace_older_and_stale_ones_are_refused() {
        let mut f = Fence::new();
        assert_eq!(f.on_start(&key("w"), 5), StartVerdict::Start { stop_first: vec![] });
        assert_eq!(f.on_start(&key("w"), 5), StartVerdict::AlreadyRunning);
        assert_eq!(f.on_start(&key("w"), 9), StartVerdict::Start { stop_first: vec![5] });
        assert_eq!(f.on_start(&key("w"), 7), StartVerdict::Stale { newest: 9 });
        assert_eq!(f.refused(), 1);
        assert_eq!(f.running(), vec![(key("w"), 9)]);
        assert_eq!(f.on_stop(&key("w"), 5), None, "a stop of an older generation stops nothing");
        assert_eq!(f.on_stop(&key("w"), 9), Some(9));
        assert!(f.running().is_empty());
        assert_eq!(f.on_start(&key("w"), 9), StartVerdict::Start { stop_first: vec![] }, "restart of 9 allowed");
    }

    #[test]
    fn a_stop_for_a_newer_generation_fences_out_older_starts() {
        let mut f = Fence::new();
        assert_eq!(f.on_stop(&key("w"), 12), None);
        assert_eq!(f.on_start(&key("w"), 11), StartVerdict::Stale { newest: 12 });
        f.on_start(&key("v"), 3);
        assert_eq!(f.on_stop(&key("v"), 4), Some(3), "a newer stop fences out the older incarnation");
    }

    #[test]
    fn reconcile_stops_stale_and_orphans() {
        let mut f = Fence::new();
        f.on_start(&key("a"), 3);
        f.on_start(&key("b"), 4);
        f.on_start(&key("c"), 5);
        let committed: BTreeMap<ChildKey, u64> = [(key("a"), 8), (key("b"), 4)].into();
        assert_eq!(f.reconcile(&committed, false), vec![(key("a"), 3)]);
        assert_eq!(f.running(), vec![(key("b"), 4), (key("c"), 5)]);
        assert_eq!(f.reconcile(&committed, true), vec![(key("c"), 5)]);
        assert_eq!(f.running(), vec![(key("b"), 4)]);
        assert_eq!(f.on_start(&key("a"), 3), StartVerdict::Stale { newest: 8 });
    }

    proptest! {
        /// Whatever order starts, stops and exits arrive in: at most one incarnation per child
        /// runs, it is the newest started, and no start older than the newest seen is accepted.
        #[test]
        fn prop_at_most_one_incarnation_and_never_a_stale_start(
            ops in proptest::collection::vec((0u8..3, 0u8..3, 1u64..20), 1..200)
        ) {
            let mut f = Fence::new();
            let mut newest: BTreeMap<ChildKey, u64> = BTreeMap::new();
            for (op, c, g) in ops {
                let k = key(&c.to_string());
                let seen = newest.get(&k).copied().unwrap_or(0);
                match op {
                    0 => match f.on_start(&k, g) {
                        StartVerdict::Start { stop_first } => {
                            prop_assert!(g >= seen);
                            prop_assert!(stop_first.iter().all(|s| *s < g));
                            newest.insert(k.clone(), g);
                        }
                        StartVerdict::Stale { newest: n } => prop_assert!(g < n && n == seen),
                        StartVerdict::AlreadyRunning => prop_assert_eq!(f.running().iter().find(|(kk, _)| *kk == k).map(|x| x.1), Some(g)),
                    },
                    1 => {
                        let _ = f.on_stop(&k, g);
                        newest.insert(k.clone(), seen.max(g));
                    }
                    _ => f.on_exit(&k, g),
                }
                let running = f.running();
                let mut keys: Vec<&ChildKey> = running.iter().map(|(k, _)| k).collect();
                keys.dedup();
                prop_assert_eq!(keys.len(), running.len());
                for (k, g) in &running {
                    prop_assert_eq!(Some(*g), newest.get(k).copied(), "only the newest runs");
                }
            }
        }
    }
}

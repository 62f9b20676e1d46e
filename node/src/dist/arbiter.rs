//! Which connection to a peer is *the* connection: the decisions, as pure code.
//!
//! Between two nodes there is at most one live connection (as in Erlang distribution), so that
//! per-pair ordering (**G2**) and node-loss semantics (**G3**) hang on one thing. The
//! [`Arbiter`] holds one [`Slot`] per peer name and decides, for each event the shell reports
//! (a process wants to reach the peer, a dial succeeded or failed, a peer dialed us, a
//! connection was lost), what happens next. It takes time as input and does no I/O.
//!
//! ## Simultaneous connects
//!
//! If both nodes dial each other at once, the connection dialed by the node with the smaller
//! name wins, and both sides reach that verdict alone: a node that is dialing a peer and gets a
//! `Hello` from it rejects the incoming connection ([`RejectReason::Duplicate`]) if its own
//! name is smaller, and otherwise accepts it and abandons its own dial (which the peer rejects).
//! The rejection may reach the loser *before* the winner's `Hello` does; the loser then keeps
//! its slot `Dialing` (the shell waits, up to the connect timeout, instead of reporting
//! [`Arbiter::on_dial_failed`]), so that its session — with everything queued on it — carries
//! over to the winner's connection when it arrives.
//!
//! ## Incarnations
//!
//! A `Hello` from a newer creation of a connected peer replaces the old connection (the old
//! incarnation is gone: its processes are reported down); one from an older creation is
//! refused ([`RejectReason::Stale`]).
//!
//! A `Hello` from the *same* creation while connected is one of two things, and only the
//! dialer knows which: a redial after it lost the old connection (the new one must replace
//! it), or a crossed dial it has already abandoned — it dialed while we dialed it, accepted our
//! connection meanwhile, and its own `Hello` arrived here after our dial completed (the old
//! connection must stay: calls and messages are in flight on it). So the verdict is
//! [`OnIncoming::AskAlive`]: the acceptor asks (`Reply::Alive`, as in Erlang's distribution
//! handshake), the dialer answers whether that attempt is still its current one
//! ([`Arbiter::is_current_dial`]), and a `replace` answer comes back here as a confirmed
//! incoming connection, which replaces the old one.
//!
//! ## Backoff
//!
//! After a failed dial, the peer is unreachable for a backoff period (doubling from
//! [`Backoff::first_ms`] up to [`Backoff::max_ms`]); uses meanwhile fail at once (messages are
//! dropped, links and monitors report `noconnection`, calls fail). A peer that dials us is
//! accepted even during backoff.

use rustc_hash::FxHashMap;
use std::sync::Arc;

use cluster_proto::handshake::RejectReason;

/// Identifies one dial attempt or accepted connection (and the session built on it).
pub(crate) type ConnId = u64;

/// Backoff policy after failed dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure, in ms.
    pub first_ms: u64,
    /// Longest delay, in ms.
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { first_ms: 50, max_ms: 1_000 }
    }
}

impl Backoff {
    fn delay(&self, failures: u32) -> u64 {
        let shift = failures.saturating_sub(1).min(20);
        self.first_ms.saturating_mul(1 << shift).min(self.max_ms)
    }
}

/// The state of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A dial is in progress.
    Dialing {
        /// The attempt.
        attempt: ConnId,
        /// Failed dials before this one.
        failures: u32,
    },
    /// Connected.
    Up {
        /// The connection.
        conn: ConnId,
        /// The peer's creation.
        creation: u64,
    },
    /// The last dial failed; no new dial before `until_ms`.
    Backoff {
        /// End of the backoff.
        until_ms: u64,
        /// Consecutive failed dials.
        failures: u32,
    },
}

/// What a process that wants to reach the peer should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OnUse {
    /// Use this connection.
    Up {
        /// The connection.
        conn: ConnId,
        /// The peer's creation.
        creation: u64,
    },
    /// A dial is in progress: queue on its session.
    Wait {
        /// The attempt.
        attempt: ConnId,
    },
    /// Start this dial (and queue on its new session).
    Dial {
        /// The new attempt.
        attempt: ConnId,
    },
    /// The peer is in backoff: fail at once.
    Unreachable,
}

/// The verdict on an incoming connection whose handshake passed the stateless checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OnIncoming {
    /// Accept it as `conn`.
    Accept {
        /// Its id.
        conn: ConnId,
        /// What it supersedes: our own dial in progress (its session carries over), or an
        /// established connection (its session ends: the peer is down).
        supersedes: Option<Slot>,
    },
    /// Refuse it.
    Reject(RejectReason),
    /// We are connected to that very incarnation: ask the dialer whether this connection
    /// replaces the old one, and come back with its answer (`confirmed`). Nothing changed.
    AskAlive,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Arbiter {
    local: Arc<str>,
    slots: FxHashMap<Arc<str>, Slot>,
    next: ConnId,
    backoff: Backoff,
}

impl Arbiter {
    /// An arbiter for the node named `local`.
    pub(crate) fn new(local: Arc<str>, backoff: Backoff) -> Arbiter {
        Arbiter { local, slots: FxHashMap::default(), next: 1, backoff }
    }

    fn id(&mut self) -> ConnId {
        let id = self.next;
        self.next += 1;
        id
    }

    /// The slot of `peer`, if any.
    #[cfg(test)]
    pub(crate) fn slot(&self, peer: &str) -> Option<&Slot> {
        self.slots.get(peer)
    }

    /// A process wants to reach `peer`.
    pub(crate) fn on_use(&mut self, peer: &Arc<str>, now_ms: u64) -> OnUse {
        let failures = match self.slots.get(peer) {
            Some(Slot::Up { conn, creation }) => return OnUse::Up { conn: *conn, creation: *creation },
            Some(Slot::Dialing { attempt, .. }) => return OnUse::Wait { attempt: *attempt },
            Some(Slot::Backoff { until_ms, .. }) if now_ms < *until_ms => return OnUse::Unreachable,
            Some(Slot::Backoff { failures, .. }) => *failures,
            None => 0,
        };
        let attempt = self.id();
        self.slots.insert(Arc::clone(peer), Slot::Dialing { attempt, failures });
        OnUse::Dial { attempt }
    }

    /// Dial `attempt` completed its handshake with the peer at `creation`. `true`: it is now
    /// the connection; `false`: it was superseded meanwhile and must be closed.
    pub(crate) fn on_dialed(&mut self, peer: &str, attempt: ConnId, creation: u64) -> bool {
        let Some(slot) = self.slots.get_mut(peer) else { return false };
        if !matches!(*slot, Slot::Dialing { attempt: a, .. } if a == attempt) {
            return false;
        }
        *slot = Slot::Up { conn: attempt, creation };
        true
    }

    /// Dial `attempt` failed. `true` if it was the current attempt (its session ends: the peer
    /// is unreachable, and in backoff until `now_ms` + the backoff delay).
    pub(crate) fn on_dial_failed(&mut self, peer: &str, attempt: ConnId, now_ms: u64) -> bool {
        let delay = |f: u32| self.backoff.delay(f);
        let Some(slot) = self.slots.get_mut(peer) else { return false };
        let Slot::Dialing { attempt: a, failures } = *slot else { return false };
        if a != attempt {
            return false;
        }
        let failures = failures.saturating_add(1);
        *slot = Slot::Backoff { until_ms: now_ms.saturating_add(delay(failures)), failures };
        true
    }

    /// Whether dial `attempt` to `peer` is still in progress and current: the dialer's answer
    /// to an acceptor's `Alive` (`true`: this dial replaces whatever the acceptor holds, since
    /// we hold nothing; `false`: it was superseded, the acceptor keeps its connection).
    pub(crate) fn is_current_dial(&self, peer: &str, attempt: ConnId) -> bool {
        matches!(self.slots.get(peer), Some(Slot::Dialing { attempt: a, .. }) if *a == attempt)
    }

    /// `peer` (at `creation`) dialed us and passed the stateless handshake checks; `confirmed`
    /// once the dialer has answered an [`OnIncoming::AskAlive`] with "replace".
    pub(crate) fn on_incoming(&mut self, peer: &Arc<str>, creation: u64, confirmed: bool) -> OnIncoming {
        let current = self.slots.get(peer).cloned();
        match &current {
            Some(Slot::Dialing { .. }) if *self.local < **peer => return OnIncoming::Reject(RejectReason::Duplicate),
            Some(Slot::Up { creation: c, .. }) if creation < *c => {
                return OnIncoming::Reject(RejectReason::Stale { theirs: creation, current: *c })
            }
            Some(Slot::Up { creation: c, .. }) if creation == *c && !confirmed => return OnIncoming::AskAlive,
            _ => {}
        }
        let conn = self.id();
        self.slots.insert(Arc::clone(peer), Slot::Up { conn, creation });
        let supersedes = match current {
            s @ Some(Slot::Dialing { .. } | Slot::Up { .. }) => s,
            Some(Slot::Backoff { .. }) | None => None,
        };
        OnIncoming::Accept { conn, supersedes }
    }

    /// Connection `conn` to `peer` was lost (closed, timed out, or failed). `true` if it was
    /// the current one (its session ends: the peer is down). A later use dials again at once.
    pub(crate) fn on_lost(&mut self, peer: &str, conn: ConnId) -> bool {
        if matches!(self.slots.get(peer), Some(Slot::Up { conn: c, .. }) if *c == conn) {
            self.slots.remove(peer);
            return true;
        }
        false
    }

    /// Forgets every peer (shutdown); returns the slots that were current.
    pub(crate) fn clear(&mut self) -> Vec<(Arc<str>, Slot)> {
        self.slots.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arb(local: &str) -> Arbiter {
        Arbiter::new(Arc::from(local), Backoff { first_ms: 100, max_ms: 400 })
    }

    fn p(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn first_use_dials_once_then_waits_then_uses() {
        let mut a = arb("a");
        let b = p("b");
        assert_eq!(a.on_use(&b, 0), OnUse::Dial { attempt: 1 });
        assert_eq!(a.on_use(&b, 1), OnUse::Wait { attempt: 1 });
        assert!(a.on_dialed("b", 1, 77));
        assert_eq!(a.on_use(&b, 2), OnUse::Up { conn: 1, creation: 77 });
    }

    #[test]
    fn failed_dials_back_off_exponentially_up_to_the_cap() {
        let mut a = arb("a");
        let b = p("b");
        let mut now = 0;
        for (n, delay) in [(1u64, 100u64), (2, 200), (3, 400), (4, 400)] {
            let OnUse::Dial { attempt } = a.on_use(&b, now) else { panic!("dial {n}") };
            assert!(a.on_dial_failed("b", attempt, now));
            assert_eq!(a.on_use(&b, now + delay - 1), OnUse::Unreachable, "still backing off after failure {n}");
            now += delay;
        }
        let OnUse::Dial { attempt } = a.on_use(&b, now) else { panic!() };
        assert!(a.on_dialed("b", attempt, 1));
        // Success resets the count: the next failure backs off from the start.
        assert!(a.on_lost("b", attempt));
        let OnUse::Dial { attempt } = a.on_use(&b, now) else { panic!() };
        assert!(a.on_dial_failed("b", attempt, now));
        assert_eq!(a.slot("b"), Some(&Slot::Backoff { until_ms: now + 100, failures: 1 }));
    }

    #[test]
    fn simultaneous_connects_agree_on_the_smaller_names_dial() {
        // a < b. Both dial; each then sees the other's Hello.
        let (mut a, mut b) = (arb("a"), arb("b"));
        let OnUse::Dial { attempt: a_dial } = a.on_use(&p("b"), 0) else { panic!() };
        let OnUse::Dial { attempt: b_dial } = b.on_use(&p("a"), 0) else { panic!() };
        // a rejects b's connection: its own dial wins.
        assert_eq!(a.on_incoming(&p("b"), 5, false), OnIncoming::Reject(RejectReason::Duplicate));
        // b accepts a's connection and abandons its own dial.
        let OnIncoming::Accept { conn, supersedes } = b.on_incoming(&p("a"), 3, false) else { panic!() };
        assert_eq!(supersedes, Some(Slot::Dialing { attempt: b_dial, failures: 0 }));
        // a's dial completes; b's dial, rejected by a, fails but is no longer current.
        assert!(a.on_dialed("b", a_dial, 5));
        assert!(!b.on_dial_failed("a", b_dial, 1));
        assert_eq!(b.slot("a"), Some(&Slot::Up { conn, creation: 3 }));
    }

    #[test]
    fn a_superseded_dial_that_completes_is_closed() {
        let mut b = arb("b");
        let OnUse::Dial { attempt } = b.on_use(&p("a"), 0) else { panic!() };
        assert!(matches!(b.on_incoming(&p("a"), 3, false), OnIncoming::Accept { .. }));
        assert!(!b.on_dialed("a", attempt, 3));
    }

    #[test]
    fn incarnations_newer_replaces_older_is_refused_same_asks_the_dialer() {
        let mut a = arb("a");
        let OnIncoming::Accept { conn: c1, supersedes: None } = a.on_incoming(&p("b"), 10, false) else { panic!() };
        assert_eq!(
            a.on_incoming(&p("b"), 9, false),
            OnIncoming::Reject(RejectReason::Stale { theirs: 9, current: 10 })
        );
        let OnIncoming::Accept { conn: c2, supersedes } = a.on_incoming(&p("b"), 11, false) else { panic!() };
        assert_eq!(supersedes, Some(Slot::Up { conn: c1, creation: 10 }));
        // The same incarnation again: only the dialer knows whether it lost `c2`.
        assert_eq!(a.on_incoming(&p("b"), 11, false), OnIncoming::AskAlive);
        assert_eq!(a.slot("b"), Some(&Slot::Up { conn: c2, creation: 11 }), "asking changes nothing");
        let OnIncoming::Accept { supersedes, .. } = a.on_incoming(&p("b"), 11, true) else { panic!() };
        assert_eq!(supersedes, Some(Slot::Up { conn: c2, creation: 11 }));
        // The replaced connections' loss no longer matters.
        assert!(!a.on_lost("b", c1));
        assert!(!a.on_lost("b", c2));
    }

    #[test]
    fn a_crossed_dial_arriving_after_ours_completed_is_dropped_by_the_dialers_answer() {
        // b < c. Both dial. c accepts b's connection first (its own dial is superseded), so b's
        // dial completes; c's Hello reaches b only then, while b is up on its own dial. The
        // run that lost a call to `noconnection` before the alive check.
        let (mut b, mut c) = (arb("b"), arb("c"));
        let OnUse::Dial { attempt: b_dial } = b.on_use(&p("c"), 0) else { panic!() };
        let OnUse::Dial { attempt: c_dial } = c.on_use(&p("b"), 0) else { panic!() };
        let OnIncoming::Accept { conn: at_c, supersedes } = c.on_incoming(&p("b"), 1, false) else { panic!() };
        assert_eq!(supersedes, Some(Slot::Dialing { attempt: c_dial, failures: 0 }));
        assert!(b.on_dialed("c", b_dial, 1));
        assert_eq!(b.on_incoming(&p("c"), 1, false), OnIncoming::AskAlive);
        assert!(!c.is_current_dial("b", c_dial), "c answers: do not replace");
        // Both keep b's connection.
        assert_eq!(b.slot("c"), Some(&Slot::Up { conn: b_dial, creation: 1 }));
        assert_eq!(c.slot("b"), Some(&Slot::Up { conn: at_c, creation: 1 }));
        assert!(!c.on_dialed("b", c_dial, 1), "and c closes its dial if it completes");
    }

    #[test]
    fn a_redial_after_losing_the_connection_replaces_it_on_the_dialers_answer() {
        // c lost b's connection (b has not noticed yet) and dials again.
        let (mut b, mut c) = (arb("b"), arb("c"));
        let OnUse::Dial { attempt: b_dial } = b.on_use(&p("c"), 0) else { panic!() };
        let OnIncoming::Accept { conn: at_c, .. } = c.on_incoming(&p("b"), 1, false) else { panic!() };
        assert!(b.on_dialed("c", b_dial, 1));
        assert!(c.on_lost("b", at_c));
        let OnUse::Dial { attempt: redial } = c.on_use(&p("b"), 5) else { panic!() };
        assert_eq!(b.on_incoming(&p("c"), 1, false), OnIncoming::AskAlive);
        assert!(c.is_current_dial("b", redial), "c answers: replace");
        let OnIncoming::Accept { conn, supersedes } = b.on_incoming(&p("c"), 1, true) else { panic!() };
        assert_eq!(supersedes, Some(Slot::Up { conn: b_dial, creation: 1 }));
        assert!(c.on_dialed("b", redial, 1));
        assert_eq!(b.slot("c"), Some(&Slot::Up { conn, creation: 1 }));
    }

    #[test]
    fn an_incoming_connection_is_accepted_during_backoff() {
        let mut a = arb("a");
        let OnUse::Dial { attempt } = a.on_use(&p("b"), 0) else { panic!() };
        assert!(a.on_dial_failed("b", attempt, 0));
        assert!(matches!(a.on_incoming(&p("b"), 1, false), OnIncoming::Accept { supersedes: None, .. }));
        assert!(matches!(a.on_use(&p("b"), 1), OnUse::Up { .. }));
    }

    #[test]
    fn losing_the_connection_allows_an_immediate_redial() {
        let mut a = arb("a");
        let OnIncoming::Accept { conn, .. } = a.on_incoming(&p("b"), 1, false) else { panic!() };
        assert!(a.on_lost("b", conn));
        assert!(!a.on_lost("b", conn), "reported once");
        assert!(matches!(a.on_use(&p("b"), 0), OnUse::Dial { .. }));
    }
}

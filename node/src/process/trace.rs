//! Live tracing of one process (like Erlang's `sys:trace`), into a bounded ring.
//!
//! Off by default. When off, the only cost on the message path is one relaxed load of the
//! process's flag word, which the runner does anyway (to see kills and system messages). When on,
//! each event stores a *clone* of the message — rendering it as JSON is deferred until someone
//! reads the trace, so tracing does not serialize on the hot path.
//!
//! The ring keeps the last [`TraceRing::capacity`] events (oldest dropped first); every event has
//! a sequence number, so readers can resume (`after`) and notice gaps (`dropped`).

use std::sync::Arc;

use cluster_proto::{CorrelationId, Pid};
use serde::Serialize;
use tokio::sync::Notify;

/// A value kept in a trace record, rendered as JSON only when read.
pub(crate) trait Payload: Send + 'static {
    fn to_json(&self) -> serde_json::Value;
    /// For recycling a record's box for a value of the same type (see [`TraceRing::push_value`]).
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

impl<T: Serialize + Send + 'static> Payload for T {
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|e| serde_json::Value::String(format!("<unserializable: {e}>")))
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// What a trace event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceKind {
    /// A message (cast) was taken from the mailbox for handling.
    Received,
    /// A call request was taken from the mailbox for handling.
    CallReceived,
    /// The reply to a call was sent back.
    Replied,
    /// A trapped exit signal was handled.
    ExitSignal,
    /// A monitor's `Down` was handled.
    Down,
    /// The process sent a message (payload: the message; peer: the recipient).
    Sent,
    /// The process called another (payload: the request; peer: the callee).
    Called,
    /// The state changed (payload: the new snapshot; only for behaviours with `snapshot`).
    State,
    /// The process exited (payload: the reason).
    Exited,
}

pub(crate) struct TraceRecord {
    pub seq: u64,
    /// The trace clock's raw reading (see `NodeShared::now_raw`).
    pub at_raw: u64,
    pub kind: TraceKind,
    pub peer: Option<Pid>,
    pub corr: Option<CorrelationId>,
    pub payload: Option<Box<dyn Payload>>,
}

/// One event of a process trace, as read back (JSON-ready).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct TraceEvent {
    /// Sequence number within this process's trace (starts at 1, no reuse).
    pub seq: u64,
    /// Nanoseconds since the node started.
    pub at_ns: u64,
    /// What happened.
    pub kind: TraceKind,
    /// The traced process.
    pub pid: Pid,
    /// The other process involved (sender, recipient, callee, exiting link, ...), if any.
    pub peer: Option<Pid>,
    /// The correlation ID in effect.
    pub corr: Option<CorrelationId>,
    /// The message, reply, state or reason, as JSON.
    pub payload: serde_json::Value,
}

/// Where a process keeps its trace ring: a spin lock, held only for one push or one read.
///
/// The runner pushes under it once per traced event, so its cost is on the traced message
/// path: locking is one atomic read-modify-write and unlocking a plain release store (a
/// parking mutex unlocks with a second read-modify-write, which also waits for the ring's
/// stores to drain). Readers (trace read, streams, info) are rare and hold it just as briefly,
/// so a waiter spins for at most one push or one bounded read. Nothing that can block or take
/// another lock of the process runs under it.
pub(crate) type TraceSlot = spin::mutex::SpinMutex<Option<Box<TraceRing>>>;

/// The bounded ring of one process's trace events.
///
/// `records` grows up to `capacity` and is then overwritten in place, oldest first (`start` is
/// the oldest record's index once full): a full ring moves no record, and a record's payload box
/// is reused for the next value of the same type (see [`TraceRing::push_value`]).
pub(crate) struct TraceRing {
    capacity: usize,
    next_seq: u64,
    records: Vec<TraceRecord>,
    /// Index of the oldest record (0 until the ring is full).
    start: usize,
    pub(crate) notify: Arc<Notify>,
    pub(crate) watchers: usize,
    /// Last state snapshot recorded (to record `State` only on change).
    pub(crate) last_state: Option<serde_json::Value>,
}

impl TraceRing {
    /// Largest ring accepted.
    pub(crate) const MAX_CAPACITY: usize = 1 << 20;

    pub(crate) fn new(capacity: usize) -> TraceRing {
        let capacity = capacity.clamp(1, Self::MAX_CAPACITY);
        TraceRing {
            capacity,
            next_seq: 1,
            records: Vec::new(),
            start: 0,
            notify: Arc::new(Notify::new()),
            watchers: 0,
            last_state: None,
        }
    }

    /// The record the next push writes: a new one while the ring fills, else the oldest, which
    /// it overwrites. `None` while filling.
    #[inline]
    fn oldest_if_full(&mut self) -> Option<&mut TraceRecord> {
        if self.records.len() < self.capacity {
            return None;
        }
        self.records.get_mut(self.start)
    }

    /// Records `value`. A full ring overwrites its oldest record and, when that one held a value
    /// of the same type, moves `value` into its box: a traced process handling one kind of
    /// message allocates nothing per message once its ring has filled.
    #[inline]
    pub(crate) fn push_value<T: Payload>(
        &mut self,
        at_raw: u64,
        kind: TraceKind,
        peer: Option<Pid>,
        corr: Option<CorrelationId>,
        value: T,
    ) {
        if let Some(rec) = self.oldest_if_full() {
            if let Some(slot) = rec.payload.as_mut().and_then(|b| b.as_any_mut().downcast_mut::<T>()) {
                *slot = value;
                self.overwrite_oldest(at_raw, kind, peer, corr, None);
                return;
            }
        }
        self.push(at_raw, kind, peer, corr, Some(Box::new(value)));
    }

    pub(crate) fn push(
        &mut self,
        at_raw: u64,
        kind: TraceKind,
        peer: Option<Pid>,
        corr: Option<CorrelationId>,
        payload: Option<Box<dyn Payload>>,
    ) {
        if self.records.len() < self.capacity {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.records.push(TraceRecord { seq, at_raw, kind, peer, corr, payload });
            self.notify_watchers();
        } else {
            self.overwrite_oldest(at_raw, kind, peer, corr, Some(payload));
        }
    }

    /// Overwrites the oldest record of a full ring; `payload: None` keeps the record's payload
    /// (already replaced in place by `push_value`).
    #[inline]
    fn overwrite_oldest(
        &mut self,
        at_raw: u64,
        kind: TraceKind,
        peer: Option<Pid>,
        corr: Option<CorrelationId>,
        payload: Option<Option<Box<dyn Payload>>>,
    ) {
        let seq = self.next_seq;
        let start = self.start;
        let Some(rec) = self.records.get_mut(start) else {
            // Unreachable: only called on a full ring, whose `start` is in bounds.
            return;
        };
        self.next_seq += 1;
        rec.seq = seq;
        rec.at_raw = at_raw;
        rec.kind = kind;
        rec.peer = peer;
        rec.corr = corr;
        if let Some(p) = payload {
            rec.payload = p;
        }
        self.start = if start + 1 == self.capacity { 0 } else { start + 1 };
        self.notify_watchers();
    }

    #[inline]
    fn notify_watchers(&self) {
        if self.watchers > 0 {
            self.notify.notify_waiters();
        }
    }

    /// The records, oldest first.
    fn in_order(&self) -> impl Iterator<Item = &TraceRecord> + '_ {
        let (newer, older) = self.records.split_at(self.start.min(self.records.len()));
        older.iter().chain(newer.iter())
    }

    /// Events with `seq > after`, at most `max`, rendered as JSON; `to_ns` converts the raw
    /// clock readings.
    pub(crate) fn read(&self, pid: Pid, after: u64, max: usize, to_ns: impl Fn(u64) -> u64) -> Vec<TraceEvent> {
        // Records are in seq order; skip the prefix quickly.
        let first = self.records.get(self.start).map_or(0, |r| r.seq);
        let skip = after.saturating_add(1).saturating_sub(first.max(1)) as usize;
        self.in_order()
            .skip(skip)
            .filter(|r| r.seq > after)
            .take(max)
            .map(|r| TraceEvent {
                seq: r.seq,
                at_ns: to_ns(r.at_raw),
                kind: r.kind,
                pid,
                peer: r.peer,
                corr: r.corr,
                payload: r.payload.as_ref().map_or(serde_json::Value::Null, |p| p.to_json()),
            })
            .collect()
    }

    /// The sequence number of the newest record (0 if none was ever pushed).
    pub(crate) fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Reads in chunks of at most this many events, each under its own lock hold: a read
    /// renders JSON under the slot's lock, and the runner waits for it before its next push.
    pub(crate) const READ_CHUNK: usize = 256;

    pub(crate) fn approx_bytes(&self) -> usize {
        self.records.capacity() * std::mem::size_of::<TraceRecord>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_and_resumable() {
        let pid: Pid = "<t.1.1>".parse().unwrap();
        let mut r = TraceRing::new(3);
        for i in 0..5u32 {
            r.push(i as u64, TraceKind::Received, None, None, Some(Box::new(i)));
        }
        let all = r.read(pid, 0, 100, |t| t);
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(all[0].payload, serde_json::json!(2));
        assert_eq!(r.read(pid, 4, 100, |t| t).len(), 1);
        assert_eq!(r.read(pid, 5, 100, |t| t).len(), 0);
        assert_eq!(r.read(pid, 0, 2, |t| t).len(), 2);
    }

    /// Reads resume from any point of a ring that has wrapped around several times.
    #[test]
    fn reads_resume_across_the_wrap() {
        let pid: Pid = "<t.1.1>".parse().unwrap();
        let mut r = TraceRing::new(4);
        for i in 1..=11u64 {
            r.push_value(i, TraceKind::Received, None, None, i);
        }
        assert_eq!(r.last_seq(), 11);
        for after in 0..=11u64 {
            let got: Vec<u64> = r.read(pid, after, 100, |t| t).iter().map(|e| e.seq).collect();
            // Capacity 4: the ring holds 8..=11.
            let expect: Vec<u64> = ((after + 1).max(8)..=11).collect();
            assert_eq!(got, expect, "after {after}");
            for e in r.read(pid, after, 100, |t| t) {
                assert_eq!(e.payload, serde_json::json!(e.seq), "each record kept its own value");
                assert_eq!(e.at_ns, e.seq);
            }
        }
        assert_eq!(r.read(pid, 0, 2, |t| t).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![8, 9]);
    }

    #[test]
    fn a_full_ring_moves_values_of_the_same_type_into_the_box_it_drops() {
        let pid: Pid = "<t.1.1>".parse().unwrap();
        let mut r = TraceRing::new(2);
        r.push_value(1, TraceKind::Received, None, None, 1u64);
        r.push_value(2, TraceKind::Received, None, None, "two".to_string());
        let box_of =
            |r: &TraceRing, i: usize| r.records[i].payload.as_ref().map(|b| &**b as *const dyn Payload as *const u8);
        let first = box_of(&r, 0);
        // Full: the `u64` record is overwritten, and its box takes the next `u64`.
        r.push_value(3, TraceKind::Received, None, None, 3u64);
        assert_eq!(box_of(&r, 0), first, "recycled");
        // The `String` record goes; a `u64` cannot use its box, so it gets a new one.
        r.push_value(4, TraceKind::Received, None, None, 4u64);
        let all = r.read(pid, 0, 10, |t| t);
        assert_eq!(all.iter().map(|e| (e.seq, e.at_ns)).collect::<Vec<_>>(), vec![(3, 3), (4, 4)]);
        assert_eq!(
            all.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(),
            vec![serde_json::json!(3), serde_json::json!(4)]
        );
    }
}

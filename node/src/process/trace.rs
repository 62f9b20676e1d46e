//! Live tracing of one process (like Erlang's `sys:trace`), into a bounded ring.
//!
//! Off by default. When off, the only cost on the message path is one relaxed load of the
//! process's flag word, which the runner does anyway (to see kills and system messages). When on,
//! each event stores a *clone* of the message — rendering it as JSON is deferred until someone
//! reads the trace, so tracing does not serialize on the hot path. A clone of up to 24 bytes
//! (a number, a `String`, most small enums) is kept inside its record ([`Stored`]), and a full
//! ring overwrites records in place, so a traced process allocates nothing per message.
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

/// Words of a payload kept inside its trace record (no allocation): 24 bytes hold a `u64`, a
/// `String`, a `Vec`, a PID, and most small message enums.
const INLINE_WORDS: usize = 3;

/// How a record keeps its payload: inline when the value fits [`INLINE_WORDS`] (with the
/// functions that render and drop it), else boxed. Overwriting an inline payload is a drop and
/// a copy into the record itself: no allocation and no second cache line per traced message.
pub(crate) struct Stored(Repr);

enum Repr {
    Inline {
        /// Holds a value of the type `vt` was made for (see [`Stored::new`]).
        buf: std::mem::MaybeUninit<[u64; INLINE_WORDS]>,
        vt: &'static InlineVt,
    },
    Boxed(Box<dyn Payload>),
}

/// Type-erased operations on an inline payload.
struct InlineVt {
    /// Safety: the pointer is to a live value of the vtable's type.
    to_json: unsafe fn(*const u8) -> serde_json::Value,
    /// `None` if the type needs no drop. Safety: as `to_json`; the value is dead afterwards.
    drop: Option<unsafe fn(*mut u8)>,
}

struct VtOf<T>(std::marker::PhantomData<T>);

impl<T: Payload> VtOf<T> {
    const VT: InlineVt = InlineVt {
        to_json: |p| {
            // SAFETY: `InlineVt::to_json`'s contract: `p` points to a live `T`.
            unsafe { &*(p as *const T) }.to_json()
        },
        drop: if std::mem::needs_drop::<T>() {
            Some(|p| {
                // SAFETY: `InlineVt::drop`'s contract: `p` points to a live `T`, dropped once.
                unsafe { std::ptr::drop_in_place(p as *mut T) }
            })
        } else {
            None
        },
    };
}

// SAFETY: `Repr::Inline` holds a `T: Payload`, which is `Send`; `Repr::Boxed` is `Send` itself.
unsafe impl Send for Stored {}

impl Stored {
    #[inline]
    const fn fits<T>() -> bool {
        std::mem::size_of::<T>() <= std::mem::size_of::<[u64; INLINE_WORDS]>()
            && std::mem::align_of::<T>() <= std::mem::align_of::<u64>()
    }

    /// Stores `value`, inline if it fits.
    #[inline]
    pub(crate) fn new<T: Payload>(value: T) -> Stored {
        if Self::fits::<T>() {
            let mut buf = std::mem::MaybeUninit::<[u64; INLINE_WORDS]>::uninit();
            // SAFETY: `T` fits the buffer in size and alignment (checked above); the buffer is
            // uninitialized, so nothing is overwritten; `vt` is `T`'s.
            unsafe { std::ptr::write(buf.as_mut_ptr() as *mut T, value) };
            Stored(Repr::Inline { buf, vt: &VtOf::<T>::VT })
        } else {
            Stored(Repr::Boxed(Box::new(value)))
        }
    }

    /// Replaces the payload with `value`: in place when inline, into the same box when it holds
    /// a `T` (a full ring then allocates nothing per message), else a new store.
    #[inline]
    pub(crate) fn set<T: Payload>(&mut self, value: T) {
        if !Self::fits::<T>() {
            if let Repr::Boxed(b) = &mut self.0 {
                if let Some(slot) = b.as_any_mut().downcast_mut::<T>() {
                    *slot = value;
                    return;
                }
            }
        }
        // Drops the old payload first; sound even if that drop panics (the new one is written).
        *self = Stored::new(value);
    }

    /// The payload as JSON.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        match &self.0 {
            // SAFETY: `buf` holds a live value of `vt`'s type (see `Stored::new`).
            Repr::Inline { buf, vt } => unsafe { (vt.to_json)(buf.as_ptr() as *const u8) },
            Repr::Boxed(b) => b.to_json(),
        }
    }

    /// True if the value lives in the record itself.
    #[cfg(test)]
    fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Inline { .. })
    }

    /// The box's address (for tests of recycling).
    #[cfg(test)]
    fn box_addr(&self) -> Option<*const u8> {
        match &self.0 {
            Repr::Boxed(b) => Some(&**b as *const dyn Payload as *const u8),
            Repr::Inline { .. } => None,
        }
    }
}

impl Drop for Stored {
    #[inline]
    fn drop(&mut self) {
        if let Repr::Inline { buf, vt } = &mut self.0 {
            if let Some(drop) = vt.drop {
                // SAFETY: `buf` holds a live value of `vt`'s type, dropped only here.
                unsafe { drop(buf.as_mut_ptr() as *mut u8) }
            }
        }
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
    pub payload: Stored,
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
pub(crate) type TraceSlot = super::lock::SpinLock<Option<Box<TraceRing>>>;

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

    /// Records `value`. While the ring fills, a new record is appended; a full ring overwrites
    /// its oldest record, and its payload in place ([`Stored::set`]): a traced process allocates
    /// nothing per message once its ring has filled (small values live in the record; a larger
    /// one reuses the box of the value it replaces when the types match).
    #[inline]
    pub(crate) fn push_value<T: Payload>(
        &mut self,
        at_raw: u64,
        kind: TraceKind,
        peer: Option<Pid>,
        corr: Option<CorrelationId>,
        value: T,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.records.len() < self.capacity {
            self.records.push(TraceRecord { seq, at_raw, kind, peer, corr, payload: Stored::new(value) });
        } else if let Some(rec) = self.records.get_mut(self.start) {
            rec.payload.set(value);
            rec.seq = seq;
            rec.at_raw = at_raw;
            rec.kind = kind;
            rec.peer = peer;
            rec.corr = corr;
            self.start = if self.start + 1 == self.capacity { 0 } else { self.start + 1 };
        }
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
                payload: r.payload.to_json(),
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
            r.push_value(i as u64, TraceKind::Received, None, None, i);
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
    fn a_full_ring_reuses_the_box_of_a_large_value_of_the_same_type() {
        let pid: Pid = "<t.1.1>".parse().unwrap();
        let big = |x: u64| [x; 8];
        let mut r = TraceRing::new(2);
        r.push_value(1, TraceKind::Received, None, None, big(1));
        r.push_value(2, TraceKind::Received, None, None, "two".to_string());
        fn payload(r: &TraceRing, i: usize) -> &Stored {
            &r.records[i].payload
        }
        assert!(payload(&r, 1).is_inline(), "a String fits the record");
        let first = payload(&r, 0).box_addr();
        assert!(first.is_some(), "64 bytes do not");
        // Full: the first record is overwritten, and its box takes the next value of its type.
        r.push_value(3, TraceKind::Received, None, None, big(3));
        assert_eq!(payload(&r, 0).box_addr(), first, "recycled");
        // The `String` record goes; its inline space cannot take 64 bytes: a new box.
        r.push_value(4, TraceKind::Received, None, None, big(4));
        assert!(payload(&r, 1).box_addr().is_some());
        let all = r.read(pid, 0, 10, |t| t);
        assert_eq!(all.iter().map(|e| (e.seq, e.at_ns)).collect::<Vec<_>>(), vec![(3, 3), (4, 4)]);
        assert_eq!(
            all.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(),
            vec![serde_json::json!([3, 3, 3, 3, 3, 3, 3, 3]), serde_json::json!([4, 4, 4, 4, 4, 4, 4, 4])]
        );
    }

    /// Counts its drops; serializes as its number.
    struct Counted(u64, std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl Serialize for Counted {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_u64(self.0)
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Inline payloads of mixed types: each is rendered as its own type and dropped exactly
    /// once, whether it is overwritten by a value of the same type, of another inline type, or
    /// of a boxed one, or dropped with the ring.
    #[test]
    fn inline_payloads_are_rendered_and_dropped_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pid: Pid = "<t.1.1>".parse().unwrap();
        let drops = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = |x: u64| Counted(x, std::sync::Arc::clone(&drops));
        let mut r = TraceRing::new(3);
        let mut pushed = 0usize;
        for i in 0..30u64 {
            match i % 4 {
                0 | 1 => {
                    r.push_value(i, TraceKind::Received, None, None, counted(i));
                    pushed += 1;
                }
                2 => r.push_value(i, TraceKind::Received, None, None, format!("s{i}")),
                _ => r.push_value(i, TraceKind::Received, None, None, [i; 8]),
            }
        }
        let live =
            r.records.iter().filter(|rec| rec.at_raw % 4 < 2).inspect(|rec| assert!(rec.payload.is_inline())).count();
        assert_eq!(drops.load(Ordering::SeqCst), pushed - live, "every overwritten value was dropped once");
        let want: Vec<serde_json::Value> = (27..30u64)
            .map(|i| match i % 4 {
                0 | 1 => serde_json::json!(i),
                2 => serde_json::json!(format!("s{i}")),
                _ => serde_json::json!(vec![i; 8]),
            })
            .collect();
        assert_eq!(r.read(pid, 0, 10, |t| t).into_iter().map(|e| e.payload).collect::<Vec<_>>(), want);
        drop(r);
        assert_eq!(drops.load(Ordering::SeqCst), pushed, "the rest go with the ring");
    }
}

//! A session: everything this node holds about one connection to one peer incarnation.
//!
//! A session exists from the first use of a peer (while its dial is in progress, frames queue
//! in its lanes) until its connection is lost, replaced or refused; then it ends once, and its
//! end is what makes node loss visible to processes (**G3**): every link through it delivers an
//! exit signal `noconnection`, every monitor through it a `Down` `noconnection`, and every call
//! waiting on it fails at once.
//!
//! ## Lanes (ordering without one global head-of-line stream, G2)
//!
//! Outbound frames go into one of [`LANES`] lanes, chosen by the (sender, receiver) pair, so
//! everything one process says to another — messages, calls, replies, links, exits, downs —
//! keeps its order, while unrelated pairs do not queue behind each other. Each lane is a byte
//! buffer that senders encode frames straight into, drained by one writer task into one
//! long-lived QUIC stream (batches, never a stream per message).
//!
//! ## Direct writes
//!
//! A writer with nothing to write parks and leaves its stream in the lane. A call or a reply
//! (someone waits for it: [`Class`]) that finds the writer parked is written into the stream by
//! its sender (one non-blocking attempt under the lane lock, so order is kept), which saves
//! the hop to the writer task, a large part of a round trip's latency. Whatever the stream does
//! not take at once (flow control) stays in the lane for the writer. Messages and signals
//! always go through the writer, so streams of them keep their batching (writing messages
//! directly when the lane had been quiet for 20 µs cost ~5% of `remote_send_msgs_per_sec`).
//!
//! ## Backpressure (G8)
//!
//! A lane holds at most `lane_capacity` bytes of messages and calls: beyond it `send` fails with
//! `Full` and `send_wait` waits for the writer to drain it. Signals (links, exits, downs,
//! replies) are never refused by backpressure — like system messages in a bounded mailbox — but
//! are bounded too, at [`SIGNAL_SLACK`] times the capacity; past that they are dropped and
//! counted (delivery is at most once).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use cluster_proto::codec::{self, EncodeError};
use cluster_proto::frame::{Head, Limits, RemoteCallError};
use cluster_proto::{CorrelationId, ExitReason, MonitorRef, NodeId, Pid};
use parking_lot::Mutex;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;
use tokio::sync::{oneshot, Notify};

use super::arbiter::ConnId;
use super::stats::Stats;

/// Lanes per session for process traffic.
pub(crate) const LANES: usize = 4;

/// The lane of control traffic (gossip, later Raft): its own stream, so that membership
/// heartbeats never wait behind bulk messages (no false "down" on a busy link).
pub(crate) const CONTROL_LANE: usize = LANES;

/// Lanes per session in all: process lanes plus the control lane.
pub(crate) const ALL_LANES: usize = LANES + 1;

/// How far past its capacity a lane accepts signals (see the module docs).
pub(crate) const SIGNAL_SLACK: usize = 4;

/// Most calls from this node waiting for replies on one session.
pub(crate) const MAX_PENDING_CALLS: usize = 65_536;

/// Most calls from the peer being served at once on one session; more get `Busy`.
pub(crate) const MAX_INBOUND_CALLS: usize = 65_536;

/// The lane of a (sender serial, receiver serial) pair. Both ends of a pair pick the same
/// lane for the same direction; `0` stands for "no process".
#[inline]
pub(crate) fn lane_of(from: u64, to: u64) -> usize {
    let h = from.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ to.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    ((h >> 32) as usize) % LANES
}

struct LaneBuf {
    bytes: Vec<u8>,
    /// The writer is waiting for `wake`.
    parked: bool,
    /// The lane's stream while the writer is parked (see "Direct writes" in the module docs).
    stream: Option<quinn::SendStream>,
}

/// What kind of frame is queued: whether backpressure applies, and whether it may be written
/// directly (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// A message: subject to backpressure, batched by the writer.
    Message,
    /// A call: subject to backpressure; its caller waits, so it may be written directly.
    Call,
    /// A signal (link, exit, down, control): never refused by backpressure, batched.
    Signal,
    /// A reply: a signal whose caller waits, so it may be written directly.
    Reply,
}

impl Class {
    fn signal(self) -> bool {
        matches!(self, Class::Signal | Class::Reply)
    }

    fn direct(self) -> bool {
        matches!(self, Class::Call | Class::Reply)
    }
}

/// Polls `f` once, without a waker to wake: `None` if it was not ready.
fn poll_once<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

pub(crate) struct Lane {
    buf: Mutex<LaneBuf>,
    /// Wakes the writer.
    wake: Notify,
    /// Wakes senders waiting for room.
    room: Notify,
}

impl Lane {
    fn new() -> Lane {
        Lane {
            buf: Mutex::new(LaneBuf { bytes: Vec::new(), parked: false, stream: None }),
            wake: Notify::new(),
            room: Notify::new(),
        }
    }
}

/// Why a frame was not queued.
#[derive(Debug)]
pub(crate) enum Enqueue {
    /// The session has ended.
    Dead,
    /// The lane is full (messages and calls only).
    Full,
    /// The frame could not be encoded (message not serializable, too large).
    Encode(EncodeError),
}

/// Who holds what through this session: for the node-down effects.
#[derive(Default)]
pub(crate) struct PeerIndex {
    /// Links between a local process and a peer process.
    pub links: FxHashSet<(Pid, Pid)>,
    /// Monitors held by local watchers on peer targets: mref → (watcher, target).
    pub mon_out: FxHashMap<MonitorRef, (Pid, Pid)>,
    /// Monitors held by peer watchers on local targets: (watcher, mref, target).
    pub mon_in: FxHashSet<(Pid, MonitorRef, Pid)>,
}

type ReplyTx = oneshot::Sender<Result<Vec<u8>, RemoteCallError>>;
/// Where a caller waits for a remote reply.
pub(crate) type ReplyRx = oneshot::Receiver<Result<Vec<u8>, RemoteCallError>>;

/// See the module docs.
pub(crate) struct Session {
    /// The peer's name.
    pub peer: Arc<str>,
    /// The dial attempt or accepted connection this session is built on (changes only when an
    /// accepted connection supersedes this session's own dial).
    pub id: AtomicU64,
    /// The incarnation the session was opened for (from the PID that caused the dial), if any.
    pub expected: Option<u64>,
    /// The peer incarnation, once the handshake is done.
    pub remote: OnceLock<NodeId>,
    /// The connection, once up.
    pub conn: OnceLock<quinn::Connection>,
    lanes: [Lane; ALL_LANES],
    lane_capacity: usize,
    pub limits: Limits,
    pending: Mutex<FxHashMap<u64, ReplyTx>>,
    next_call: AtomicU64,
    pub index: Mutex<PeerIndex>,
    pub inbound_calls: AtomicUsize,
    dead: AtomicBool,
    ended: AtomicBool,
    /// Woken when the session gets its connection or ends (see [`Session::settled`]).
    settled: Notify,
    pub stats: Arc<Stats>,
}

impl Session {
    pub(crate) fn new(
        peer: Arc<str>,
        id: ConnId,
        expected: Option<u64>,
        lane_capacity: usize,
        limits: Limits,
        stats: Arc<Stats>,
    ) -> Session {
        Session {
            peer,
            id: AtomicU64::new(id),
            expected,
            remote: OnceLock::new(),
            conn: OnceLock::new(),
            lanes: std::array::from_fn(|_| Lane::new()),
            lane_capacity,
            limits,
            pending: Mutex::new(FxHashMap::default()),
            next_call: AtomicU64::new(1),
            index: Mutex::new(PeerIndex::default()),
            inbound_calls: AtomicUsize::new(0),
            dead: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            settled: Notify::new(),
            stats,
        }
    }

    pub(crate) fn id(&self) -> ConnId {
        self.id.load(Ordering::Acquire)
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Queues a frame of `class` built by `encode` on `lane`.
    pub(crate) fn enqueue(
        &self,
        lane: usize,
        class: Class,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
    ) -> Result<(), Enqueue> {
        let signal = class.signal();
        let l = &self.lanes[lane % ALL_LANES];
        let mut b = l.buf.lock();
        if self.is_dead() {
            return Err(Enqueue::Dead);
        }
        let cap = if signal { self.lane_capacity.saturating_mul(SIGNAL_SLACK) } else { self.lane_capacity };
        if b.bytes.len() >= cap {
            if signal {
                self.stats.signals_dropped.fetch_add(1, Ordering::Relaxed);
            }
            return Err(Enqueue::Full);
        }
        encode(&mut b.bytes).map_err(Enqueue::Encode)?;
        if b.parked {
            // The lane was empty (a parked writer has drained it): this frame alone is in it.
            if class.direct() && self.write_direct(&mut b) {
                return Ok(());
            }
            b.parked = false;
            drop(b);
            l.wake.notify_one();
        }
        Ok(())
    }

    /// Writes the lane's bytes straight into its stream, if the writer is parked with one;
    /// `true` if all of them went. Never waits: whatever the stream does not take at once
    /// stays for the writer.
    fn write_direct(&self, b: &mut LaneBuf) -> bool {
        let LaneBuf { bytes, stream: Some(s), .. } = b else { return false };
        match poll_once(s.write(bytes)) {
            Some(Ok(n)) => {
                self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                bytes.drain(..n);
                let all = bytes.is_empty();
                if all {
                    self.stats.direct_writes.fetch_add(1, Ordering::Relaxed);
                }
                all
            }
            // Blocked by flow control, or failed: the writer takes over (and sees the error).
            Some(Err(_)) | None => false,
        }
    }

    /// Queues a frame without payload (a signal); failures are counted, not reported (at most
    /// once).
    pub(crate) fn signal(&self, lane: usize, head: &Head<'_>) {
        let limits = self.limits;
        if let Err(Enqueue::Encode(e)) = self.enqueue(lane, Class::Signal, |b| codec::encode_frame(b, head, &limits)) {
            tracing::warn!(peer = %self.peer, kind = head.kind(), error = %e, "signal not encodable");
        }
    }

    /// Waits until `lane` has room (or the session ends).
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits.
    pub(crate) async fn wait_room(&self, lane: usize) {
        let l = &self.lanes[lane % ALL_LANES];
        loop {
            let notified = l.room.notified();
            {
                let b = l.buf.lock();
                if self.is_dead() || b.bytes.len() < self.lane_capacity {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Records a link or monitor through this session, unless it has ended (then `false`: the
    /// caller reports `noconnection` itself). Under the index lock, so that either the entry
    /// is in the index `end` takes, or the caller sees the end — never neither, never both.
    pub(crate) fn index_insert(&self, f: impl FnOnce(&mut PeerIndex)) -> bool {
        let mut idx = self.index.lock();
        if self.ended.load(Ordering::Acquire) {
            return false;
        }
        f(&mut idx);
        true
    }

    /// Registers a call waiting for its reply.
    pub(crate) fn register_call(&self) -> Option<(u64, ReplyRx)> {
        let mut p = self.pending.lock();
        if self.is_dead() || p.len() >= MAX_PENDING_CALLS {
            return None;
        }
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        p.insert(id, tx);
        Some((id, rx))
    }

    /// Forgets a call (timed out, or its frame could not be queued).
    pub(crate) fn forget_call(&self, id: u64) {
        self.pending.lock().remove(&id);
    }

    /// Completes a call with the peer's reply; unknown ids (timed out meanwhile) are ignored.
    pub(crate) fn complete_call(&self, id: u64, result: Result<Vec<u8>, RemoteCallError>) -> bool {
        match self.pending.lock().remove(&id) {
            Some(tx) => {
                let _ = tx.send(result);
                true
            }
            None => false,
        }
    }

    /// Records the session's connection (once) and wakes [`Session::settled`].
    pub(crate) fn set_conn(&self, conn: quinn::Connection) {
        let _ = self.conn.set(conn);
        self.settled.notify_waiters();
    }

    /// Completes once the session has a connection or has ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    pub(crate) async fn settled(&self) {
        loop {
            let woken = self.settled.notified();
            let mut woken = std::pin::pin!(woken);
            woken.as_mut().enable();
            if self.conn.get().is_some() || self.is_dead() {
                return;
            }
            woken.await;
        }
    }

    /// Ends the session: no more frames, writers stop, waiting calls fail (their senders are
    /// dropped). Returns the index for the node-down effects, once (`None` if already ended).
    pub(crate) fn end(&self) -> Option<PeerIndex> {
        // Under each lane lock, so no enqueue slips in after.
        for l in &self.lanes {
            let _b = l.buf.lock();
            self.dead.store(true, Ordering::Release);
        }
        for l in &self.lanes {
            l.wake.notify_one();
            l.room.notify_waiters();
            l.buf.lock().bytes = Vec::new();
        }
        drop(std::mem::take(&mut *self.pending.lock()));
        self.settled.notify_waiters();
        let mut idx = self.index.lock();
        if self.ended.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(std::mem::take(&mut *idx))
    }

    /// Drops what was queued for the wrong incarnation (the peer answered with another creation
    /// than the PIDs the frames were for).
    pub(crate) fn discard_queued(&self) {
        for l in &self.lanes {
            l.buf.lock().bytes.clear();
            l.room.notify_waiters();
        }
        drop(std::mem::take(&mut *self.pending.lock()));
    }

    /// The writer of `lane`: drains the lane into one uni stream of `conn` until the session
    /// ends or the stream fails (connection loss is seen by the session's watcher).
    pub(crate) async fn writer(self: Arc<Self>, lane: usize, conn: quinn::Connection) {
        let l = &self.lanes[lane];
        // The stream while the writer works; while it is parked, the stream is the lane's.
        let mut stream: Option<quinn::SendStream> = None;
        let mut spare: Vec<u8> = Vec::new();
        loop {
            let batch = {
                let mut b = l.buf.lock();
                if self.is_dead() {
                    break;
                }
                if b.bytes.is_empty() {
                    if stream.is_some() {
                        b.stream = stream.take();
                    }
                    b.parked = true;
                    None
                } else {
                    if stream.is_none() {
                        stream = b.stream.take();
                    }
                    Some(std::mem::replace(&mut b.bytes, std::mem::take(&mut spare)))
                }
            };
            let Some(mut batch) = batch else {
                l.wake.notified().await;
                continue;
            };
            l.room.notify_waiters();
            if stream.is_none() {
                match conn.open_uni().await {
                    Ok(s) => stream = Some(s),
                    Err(e) => {
                        tracing::debug!(peer = %self.peer, error = %e, "cannot open a lane stream");
                        break;
                    }
                }
            }
            let Some(s) = stream.as_mut() else { break };
            if let Err(e) = s.write_all(&batch).await {
                tracing::debug!(peer = %self.peer, error = %e, "lane write failed");
                break;
            }
            self.stats.bytes_out.fetch_add(batch.len() as u64, Ordering::Relaxed);
            batch.clear();
            if batch.capacity() <= 4 * self.limits.max_batch_bytes as usize {
                spare = batch;
            }
        }
        if let Some(mut s) = stream.or_else(|| l.buf.lock().stream.take()) {
            let _ = s.finish();
        }
    }

    /// Queues a message frame to `to` (a process of the peer).
    pub(crate) fn send<M: Serialize + ?Sized>(
        &self,
        from: Option<Pid>,
        to: u64,
        corr: Option<CorrelationId>,
        msg: &M,
    ) -> Result<(), Enqueue> {
        let f = from.map(Pid::serial);
        let limits = self.limits;
        let head = Head::Send { to, from: f, corr };
        self.enqueue(lane_of(f.unwrap_or(0), to), Class::Message, |b| codec::encode_frame_with(b, &head, msg, &limits))
    }

    /// Queues a control frame (tag `0x20..=0x7F`) with `body` on the control lane. Like a
    /// datagram: when the lane is far past its capacity the frame is dropped and counted.
    pub(crate) fn control(&self, tag: u8, body: &[u8]) -> Result<(), Enqueue> {
        let limits = self.limits;
        let head = Head::Control { tag };
        self.enqueue(CONTROL_LANE, Class::Signal, |b| codec::encode_frame_raw(b, &head, body, &limits))
    }

    /// The reason every effect of this session's end carries.
    pub(crate) fn down_reason() -> ExitReason {
        ExitReason::NoConnection
    }
}

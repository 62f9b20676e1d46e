//! The process cell: everything a process is while it exists, whether or not it is running.
//!
//! ## Layout and ownership
//!
//! A process is an `Arc<Cell<B>>` held by the node's process table (and by [`Addr`]s). It owns:
//! * a [`Header`] with what is the same for every behaviour: PID, parent, an atomic flag word,
//!   counters, [`Meta`] (label, links, monitors, registered name) behind a mutex, and the
//!   trace ring behind its own spin lock ([`TraceSlot`]: a traced runner takes it once per
//!   event, and a spin lock's unlock is a plain store where a parking mutex's is a second
//!   atomic read-modify-write);
//! * the **mailbox** (`Mutex<Mailbox>`): the queue senders push to, the system-message queue,
//!   and the scheduling state (`running`, `suspended`, `closed`);
//! * the **inbox** (a spin lock around a `SegQueue`, see [`queue`](super::queue) and
//!   [`InboxSlot`]): the batch the runner took from the mailbox and has not handled yet. Only
//!   the runner pops from it; introspection may lock it to peek. The runner takes this lock
//!   once per message: a pop must exclude a concurrent `peek`, and `peek` must see the in-hand
//!   batch, or the "thought log" would hide up to a whole batch of pending messages. A
//!   runner-local batch would save the lock but make the batch invisible; we chose visibility.
//!   The lock is a spin lock because its unlock is a plain store: with a parking mutex, the
//!   lock's two read-modify-writes were ~40% of the samples in the runner's loop;
//! * the **state** (`Mutex<Option<B>>`): the behaviour's state while the process is idle. The
//!   runner takes it out for the length of an activation and puts it back before going idle.
//!
//! ## Scheduling invariant (no lost wake-ups, at most one runner)
//!
//! `Mailbox::running` is true iff a runner exists (a tokio task, or the inline init poll in
//! `spawn`) or is about to be spawned. It is only changed under the mailbox lock:
//! * a sender that pushes while `!running && !suspended` sets `running` and spawns a runner;
//! * a runner that finds nothing to do (queue and sys queue empty, no kill pending, or suspended
//!   with no sys message) puts the state back *first*, then clears `running` under the lock.
//!
//! Hence exactly one runner touches the state at a time, and every pushed message is handled by
//! the runner that exists when it is pushed, or by the one the push spawns.
//!
//! Lock order: `inbox` before `mailbox`. `meta` and `trace` are never held while taking another
//! lock of the same cell.
//!
//! ## Cache-line layout
//!
//! A sender and the runner are often on two cores. Per message, a sender writes the mailbox
//! (its lock word and the queue's indices) and reads `capacity` and the scheduling fields; the
//! runner writes the inbox (its lock word and indices) and `Header::received`, reads
//! `Header::flags`, and, when traced, takes the `Header::trace` lock. If any of those shared a cache
//! line, every push would invalidate a line the runner needs for its pop and the reverse: the
//! line would cross between the cores about once per message. Measured on a 2-core machine,
//! that false sharing made one-way send swing between ~5 and ~13 M msgs/s depending on whether
//! the runner landed on the sender's core. So [`Cell`], [`Header`] and [`Mailbox`] are
//! `repr(C)`, laid out as: sender fields; a gap of fields no one touches per message (the
//! mailbox's `sys` and `waiters`, `Cell::gap`, the header's PID, parent and node handle); then
//! runner fields. A unit test keeps the two groups at least 128 bytes apart (x86 prefetches
//! lines in pairs); the gap costs 32 bytes of padding per process.
//!
//! [`Addr`]: crate::Addr

use std::any::Any;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;

use cluster_proto::{CorrelationId, ExitReason, MonitorRef, Pid};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::behaviour::{Behaviour, Down};
use super::introspect::{ProcessInfo, ProcessStatus};
use super::node::{CallError, NodeShared, SendError};
use super::queue::SegQueue;
use super::trace::{Payload, TraceKind, TraceSlot};

/// An exit signal is pending (see `Meta::pending_exit`): the runner must stop now.
pub(crate) const F_KILL: u32 = 1;
/// Tracing is on.
pub(crate) const F_TRACED: u32 = 1 << 1;
/// The system queue is non-empty.
pub(crate) const F_SYS: u32 = 1 << 2;
/// Suspended: user messages wait; system messages and kills are still handled.
pub(crate) const F_SUSPENDED: u32 = 1 << 3;
/// Trapping exits: exit signals become messages.
pub(crate) const F_TRAP: u32 = 1 << 4;
/// Exit processing has started; the process takes no more signals.
pub(crate) const F_EXITING: u32 = 1 << 5;

/// Words of explicit padding between sender and runner fields (see "Cache-line layout").
const GAP_WORDS: usize = 4;

/// Most system requests queued at once per process (G8).
const MAX_SYS: usize = 1024;
/// Most senders remembered as waiting for room in a bounded mailbox (G8); more still wait,
/// woken by the next drain.
const MAX_WAITERS: usize = 4096;

/// Limits on per-process link and monitor sets (G8).
pub(crate) const MAX_LINKS: usize = 65_536;
/// See [`MAX_LINKS`].
pub(crate) const MAX_MONITORS: usize = 65_536;

/// Where a call's reply goes.
pub(crate) enum ReplyTo<R> {
    Typed(oneshot::Sender<R>),
    Json(oneshot::Sender<Result<serde_json::Value, String>>),
    /// A caller on another node.
    Wire(crate::dist::inbound::WireReply),
}

/// Why a message or call from a peer was not queued.
pub(crate) enum WireRefused {
    /// The bounded mailbox is full.
    Full,
    /// The bytes are not a message (or request) of the behaviour's type.
    Undecodable {
        /// The target's behaviour.
        behaviour: &'static str,
        /// The decoder's complaint.
        error: String,
    },
}

/// One entry of a mailbox.
pub(crate) enum Envelope<B: Behaviour> {
    Cast {
        msg: B::Msg,
        from: Option<Pid>,
        corr: Option<CorrelationId>,
    },
    Call {
        req: B::Call,
        reply: ReplyTo<B::Reply>,
        from: Option<Pid>,
        corr: Option<CorrelationId>,
    },
    /// A trapped exit signal.
    Exit {
        from: Pid,
        reason: ExitReason,
    },
    Down(Down),
}

fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_else(|e| serde_json::Value::String(format!("<unserializable: {e}>")))
}

/// A copy of a queued envelope for `peek` (without the reply channel), taken under the locks and
/// rendered after.
enum Peeked<B: Behaviour> {
    Cast { msg: B::Msg, from: Option<Pid>, corr: Option<CorrelationId> },
    Call { req: B::Call, from: Option<Pid>, corr: Option<CorrelationId> },
    Exit { from: Pid, reason: ExitReason },
    Down(Down),
}

impl<B: Behaviour> Envelope<B> {
    fn peeked(&self) -> Peeked<B> {
        match self {
            Envelope::Cast { msg, from, corr } => Peeked::Cast { msg: msg.clone(), from: *from, corr: *corr },
            Envelope::Call { req, from, corr, .. } => Peeked::Call { req: req.clone(), from: *from, corr: *corr },
            Envelope::Exit { from, reason } => Peeked::Exit { from: *from, reason: reason.clone() },
            Envelope::Down(d) => Peeked::Down(d.clone()),
        }
    }
}

impl<B: Behaviour> Peeked<B> {
    fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Peeked::Cast { msg, from, corr } => {
                json!({"kind": "cast", "from": from, "corr": corr, "msg": to_json(msg)})
            }
            Peeked::Call { req, from, corr } => {
                json!({"kind": "call", "from": from, "corr": corr, "msg": to_json(req)})
            }
            Peeked::Exit { from, reason } => {
                json!({"kind": "exit", "from": from, "reason": reason.to_string()})
            }
            Peeked::Down(d) => {
                json!({"kind": "down", "pid": d.pid, "monitor": d.monitor, "reason": d.reason.to_string()})
            }
        }
    }
}

/// Requests served by the runner itself, ahead of user messages and even while suspended.
pub(crate) enum SysMsg {
    GetState(oneshot::Sender<Option<serde_json::Value>>),
}

/// `repr(C)`: what every push touches first, the rarely used `sys` and `waiters` last (they are
/// part of the gap between sender and runner fields, see the module docs).
#[repr(C)]
pub(crate) struct Mailbox<B: Behaviour> {
    pub queue: SegQueue<Envelope<B>>,
    pub running: bool,
    pub suspended: bool,
    pub closed: bool,
    /// Messages the runner took in its current batch (counted against a bounded capacity until
    /// the runner comes back for more).
    pub in_hand: usize,
    pub sys: Vec<SysMsg>,
    /// Senders waiting for room in a bounded mailbox.
    pub waiters: Vec<Waker>,
}

impl<B: Behaviour> Mailbox<B> {
    pub(crate) fn wake_waiters(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }
}

/// Per-process metadata that is the same for every behaviour.
#[derive(Default)]
pub(crate) struct Meta {
    pub label: Option<Arc<str>>,
    pub links: Vec<Pid>,
    /// Monitors this process holds on others.
    pub monitors: Vec<(MonitorRef, Pid)>,
    /// Monitors others hold on this process.
    pub monitored_by: Vec<(MonitorRef, Pid)>,
    /// Non-process observers waiting for the exit (`Node::wait_exit`).
    pub exit_waiters: Vec<oneshot::Sender<ExitReason>>,
    pub name: Option<Arc<str>>,
    /// Waker of the handler future in flight, woken by a kill.
    pub kill_waker: Option<Waker>,
    /// The exit signal that set `F_KILL`.
    pub pending_exit: Option<ExitReason>,
    pub exited: Option<ExitReason>,
    /// Exit processing has finished (set together with the `exited` trace event, after every
    /// exit effect was delivered): a trace stream ends only then, so it never misses `exited`.
    pub exit_done: bool,
    /// `terminate` is running (info shows `exiting`). Not `F_EXITING`: the process must still
    /// take a kill while it terminates.
    pub terminating: bool,
}

/// `repr(C)`: the fields no one writes after spawn first (part of the gap after the mailbox),
/// then `meta` (rarely touched on the message path), then what the runner touches per message:
/// the trace slot (when traced), the counters and flags; see "Cache-line layout" in the module
/// docs.
#[repr(C)]
pub(crate) struct Header {
    pub node: Arc<NodeShared>,
    pub pid: Pid,
    /// The spawning process (a supervisor, for supervised processes). Never changes.
    pub parent: Option<Pid>,
    pub meta: Mutex<Meta>,
    /// The trace ring, allocated when tracing is first switched on (or a stream is opened).
    pub trace: TraceSlot,
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub flags: AtomicU32,
}

impl Header {
    #[inline]
    pub(crate) fn flags(&self) -> u32 {
        self.flags.load(Ordering::Relaxed)
    }

    /// Single-writer counter bump (only the runner writes `received` and `sent`).
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.store(counter.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    /// Records `value` in the trace ring, if tracing is on (see [`TraceRing::push_value`]).
    ///
    /// Never inlined: the runner's message loop is one function per behaviour, and the traced
    /// branch's code inlined into it slowed the untraced path (median one-way send 19.7 → 16.6
    /// M msgs/s over 30 rounds when the inline payload store came in); out of line, untraced is
    /// back where it was and traced gained ~8%.
    #[inline(never)]
    pub(crate) fn trace_value<T: Payload>(
        &self,
        kind: TraceKind,
        peer: Option<Pid>,
        corr: Option<CorrelationId>,
        value: T,
    ) {
        let at = self.node.now_raw();
        if let Some(ring) = self.trace.lock().as_mut() {
            ring.push_value(at, kind, peer, corr, value);
        }
    }
}

/// An activation that a delivery from the wire *claimed* (the process was idle, see
/// [`Cell::push_claim`]). The stream reader runs it inline when it has nothing else to read —
/// a remote call to an idle process then costs no task hop on the callee's node — and
/// otherwise lets it go: dropping a `Claimed` hands the activation to the scheduler, so a
/// claimed process always runs.
pub(crate) struct Claimed(Option<Arc<dyn AnyProcess>>);

impl Claimed {
    /// Runs the activation on this task (polled once; see `runner::run_inline`).
    pub(crate) async fn run_inline(mut self) {
        if let Some(p) = self.0.take() {
            p.run_claimed().await;
        }
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.spawn_claimed();
        }
    }
}

/// The type-erased face of a process, used by the node (table, signals, introspection).
pub(crate) trait AnyProcess: Send + Sync + 'static {
    fn header(&self) -> &Header;
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    /// Delivers an exit signal (`kill` = untrappable).
    fn exit_signal(self: Arc<Self>, from: Pid, reason: ExitReason, kill: bool);
    /// Delivers a monitor's `Down`.
    fn down(self: Arc<Self>, down: Down);
    /// Queues a system request; false if the process is gone or its system queue is full.
    fn sys(self: Arc<Self>, msg: SysMsg) -> bool;
    fn set_suspended(self: Arc<Self>, on: bool);
    fn info(&self) -> ProcessInfo;
    fn peek_json(&self, max: usize) -> Vec<serde_json::Value>;
    fn send_json(self: Arc<Self>, msg: serde_json::Value, corr: Option<CorrelationId>) -> Result<(), String>;
    /// Sends a message of a type known only at run time (checked against the behaviour's).
    fn push_any(
        self: Arc<Self>,
        msg: Box<dyn Any + Send>,
        from: Option<Pid>,
        corr: Option<CorrelationId>,
    ) -> Result<(), SendError>;
    /// Queues a message that came from a peer, decoding it into the behaviour's type.
    fn push_wire(
        self: Arc<Self>,
        payload: &[u8],
        from: Option<Pid>,
        corr: Option<CorrelationId>,
    ) -> Result<(), WireRefused>;
    /// Queues a call that came from a peer; on refusal the reply slot has been answered.
    /// `Some`: the process was idle and the caller holds its next activation.
    fn call_wire(
        self: Arc<Self>,
        payload: &[u8],
        from: Option<Pid>,
        corr: Option<CorrelationId>,
        reply: crate::dist::inbound::WireReply,
    ) -> Result<Option<Claimed>, WireRefused>;
    /// Runs a claimed activation on the calling task (see [`Claimed`]).
    fn run_claimed(self: Arc<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
    /// Hands a claimed activation to the scheduler.
    fn spawn_claimed(self: Arc<Self>);
    /// Queues a JSON call. Errors: `BadRequest` (not decodable) or `Full`.
    fn call_json(
        self: Arc<Self>,
        req: serde_json::Value,
        corr: Option<CorrelationId>,
    ) -> Result<oneshot::Receiver<Result<serde_json::Value, String>>, CallError>;
}

/// A process. See the module docs.
///
/// `repr(C)`, in this order: what senders touch per message (`capacity`, the head of `mailbox`)
/// first, a gap of cold fields (the tail of `mailbox`, `gap`, the head of the header), then what
/// the runner touches per message (the header's `meta` lock when traced, its counters and flags,
/// `state`, `inbox`); see "Cache-line layout" in the module docs.
#[repr(C)]
pub(crate) struct Cell<B: Behaviour> {
    /// `usize::MAX` when unbounded.
    pub capacity: usize,
    pub mailbox: Mutex<Mailbox<B>>,
    /// Padding that completes the gap (see the module docs); never read.
    gap: [u64; GAP_WORDS],
    pub hdr: Header,
    pub state: Mutex<Option<B>>,
    pub inbox: InboxSlot<B>,
}

/// Where the runner keeps its in-hand batch: a spin lock, held for one pop (by the runner), one
/// swap with the mailbox queue, or one bounded copy (`info` counts, `peek` clones at most its
/// `max` messages and renders them after unlocking). Nothing that can block or await runs under
/// it (a message's `Clone` is the only user code); the only lock taken under it is the
/// mailbox's (lock order: inbox, then mailbox), which can park the holder: waiters back off to
/// the scheduler ([`Backoff`](super::lock::Backoff)). The lock is not fair: against a runner
/// busy with cheap messages a waiter may lose the race for a while, but at most until the
/// runner yields (every 128 messages, see `runner::BUDGET`).
pub(crate) type InboxSlot<B> = super::lock::SpinLock<SegQueue<Envelope<B>>>;

/// Why a push was refused.
pub(crate) enum PushError<B: Behaviour> {
    Full(Envelope<B>),
}

impl<B: Behaviour> Cell<B> {
    pub(crate) fn new(
        pid: Pid,
        node: Arc<NodeShared>,
        capacity: Option<usize>,
        label: Option<Arc<str>>,
        parent: Option<Pid>,
    ) -> Cell<B> {
        Cell {
            hdr: Header {
                pid,
                parent,
                flags: AtomicU32::new(0),
                received: AtomicU64::new(0),
                sent: AtomicU64::new(0),
                meta: Mutex::new(Meta { label, ..Meta::default() }),
                trace: TraceSlot::new(None),
                node,
            },
            capacity: capacity.unwrap_or(usize::MAX),
            mailbox: Mutex::new(Mailbox {
                queue: SegQueue::new(),
                sys: Vec::new(),
                // The spawner runs the first activation (init) itself.
                running: true,
                suspended: false,
                closed: false,
                in_hand: 0,
                waiters: Vec::new(),
            }),
            inbox: InboxSlot::new(SegQueue::new()),
            state: Mutex::new(None),
            gap: [0; GAP_WORDS],
        }
    }

    #[inline]
    pub(crate) fn pid(&self) -> Pid {
        self.hdr.pid
    }

    /// Queues `env` if there is room, spawning a runner if the process is idle. A closed (dead)
    /// mailbox drops it silently (G2). A full bounded mailbox gives it back.
    #[inline]
    pub(crate) fn push(self: &Arc<Self>, env: Envelope<B>) -> Result<(), PushError<B>> {
        self.push_inner(env, false)
    }

    #[inline]
    fn push_inner(self: &Arc<Self>, env: Envelope<B>, system: bool) -> Result<(), PushError<B>> {
        if self.push_claim(env, system)? {
            self.spawn_runner();
        }
        Ok(())
    }

    /// Queues `env`; returns `true` if the process was idle and the caller has *claimed* its
    /// next activation (it must run or spawn a runner).
    #[inline]
    pub(crate) fn push_claim(&self, env: Envelope<B>, system: bool) -> Result<bool, PushError<B>> {
        let mut mb = self.mailbox.lock();
        if mb.closed {
            drop(mb);
            drop(env);
            return Ok(false);
        }
        if !system && mb.queue.len() + mb.in_hand >= self.capacity {
            return Err(PushError::Full(env));
        }
        mb.queue.push_back(env);
        let claim = !mb.running && !mb.suspended;
        mb.running |= claim;
        Ok(claim)
    }

    /// Pushes, waiting for room in a bounded mailbox.
    ///
    /// # Cancel safety
    /// If the future is dropped before it completes, the message was not queued.
    pub(crate) async fn push_wait(self: &Arc<Self>, env: Envelope<B>) {
        let mut env = Some(env);
        std::future::poll_fn(|cx| {
            let mut mb = self.mailbox.lock();
            if mb.closed {
                drop(mb);
                env = None;
                return std::task::Poll::Ready(());
            }
            if mb.queue.len() + mb.in_hand >= self.capacity {
                if mb.waiters.len() < MAX_WAITERS && !mb.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    mb.waiters.push(cx.waker().clone());
                }
                return std::task::Poll::Pending;
            }
            if let Some(e) = env.take() {
                mb.queue.push_back(e);
            }
            let spawn = !mb.running && !mb.suspended;
            mb.running |= spawn;
            drop(mb);
            if spawn {
                self.spawn_runner();
            }
            std::task::Poll::Ready(())
        })
        .await
    }

    /// Spawns a runner task. The caller has set `running`.
    pub(crate) fn spawn_runner(self: &Arc<Self>) {
        let cell = Arc::clone(self);
        self.hdr.node.rt.spawn(super::runner::run(cell, None));
    }

    /// Schedules a runner if none exists (for kills and system messages).
    fn schedule(self: &Arc<Self>) {
        let mut mb = self.mailbox.lock();
        if mb.running || mb.closed {
            return;
        }
        mb.running = true;
        drop(mb);
        self.spawn_runner();
    }

    /// Makes the process exit with `reason` as soon as its runner gets to it (interrupting a
    /// handler in flight). `Killed` overrides any earlier pending reason.
    pub(crate) fn raise_exit(self: &Arc<Self>, reason: ExitReason) {
        let waker = {
            let mut meta = self.hdr.meta.lock();
            if meta.exited.is_some() {
                return;
            }
            if meta.pending_exit.is_none() || reason == ExitReason::Killed {
                meta.pending_exit = Some(reason);
            }
            self.hdr.flags.fetch_or(F_KILL, Ordering::SeqCst);
            meta.kill_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        self.schedule();
    }
}

impl<B: Behaviour> AnyProcess for Cell<B> {
    fn header(&self) -> &Header {
        &self.hdr
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn exit_signal(self: Arc<Self>, from: Pid, reason: ExitReason, kill: bool) {
        let f = self.hdr.flags.load(Ordering::SeqCst);
        if f & F_EXITING != 0 {
            return;
        }
        if kill {
            self.raise_exit(ExitReason::Killed);
        } else if f & F_TRAP != 0 {
            // Trapped: becomes a message, in order with what `from` sent before.
            let _ = self.push_inner(Envelope::Exit { from, reason }, true);
        } else if reason != ExitReason::Normal {
            self.raise_exit(reason);
        }
    }

    fn down(self: Arc<Self>, down: Down) {
        // System notifications are never refused by a bounded mailbox.
        let _ = self.push_inner(Envelope::Down(down), true);
    }

    fn sys(self: Arc<Self>, msg: SysMsg) -> bool {
        let mut mb = self.mailbox.lock();
        if mb.closed || mb.sys.len() >= MAX_SYS {
            return false;
        }
        mb.sys.push(msg);
        self.hdr.flags.fetch_or(F_SYS, Ordering::SeqCst);
        // Served even while suspended.
        let spawn = !mb.running;
        mb.running |= spawn;
        drop(mb);
        if spawn {
            self.spawn_runner();
        }
        true
    }

    fn set_suspended(self: Arc<Self>, on: bool) {
        let mut mb = self.mailbox.lock();
        if mb.closed {
            return;
        }
        mb.suspended = on;
        if on {
            self.hdr.flags.fetch_or(F_SUSPENDED, Ordering::SeqCst);
            return;
        }
        self.hdr.flags.fetch_and(!F_SUSPENDED, Ordering::SeqCst);
        // Resume: a runner that stopped for the suspension may have left messages in the queue
        // or in its in-hand batch; a fresh runner finds them (or goes idle at once).
        let spawn = !mb.running;
        mb.running |= spawn;
        drop(mb);
        if spawn {
            self.spawn_runner();
        }
    }

    fn info(&self) -> ProcessInfo {
        let f = self.hdr.flags.load(Ordering::Relaxed);
        let (running, queued, queue_bytes) = {
            let inbox = self.inbox.lock();
            let mb = self.mailbox.lock();
            (mb.running, inbox.len() + mb.queue.len(), inbox.heap_bytes() + mb.queue.heap_bytes())
        };
        // The state is only measurable while idle (the runner owns it otherwise).
        let state_heap = self.state.try_lock().and_then(|s| s.as_ref().map(|b| b.heap_size())).unwrap_or(0);
        let trace_bytes = self.hdr.trace.lock().as_ref().map_or(0, |t| t.approx_bytes());
        let meta = self.hdr.meta.lock();
        let status = if f & F_EXITING != 0 || meta.exited.is_some() || meta.terminating {
            ProcessStatus::Exiting
        } else if f & F_SUSPENDED != 0 {
            ProcessStatus::Suspended
        } else if running {
            ProcessStatus::Running
        } else {
            ProcessStatus::Waiting
        };
        let memory = std::mem::size_of::<Cell<B>>()
            + 2 * std::mem::size_of::<usize>() // Arc counts
            + queue_bytes
            + state_heap
            + meta.links.capacity() * std::mem::size_of::<Pid>()
            + (meta.monitors.capacity() + meta.monitored_by.capacity()) * std::mem::size_of::<(MonitorRef, Pid)>()
            + trace_bytes;
        ProcessInfo {
            pid: self.hdr.pid,
            label: meta.label.as_deref().map(str::to_owned),
            behaviour: B::name().to_owned(),
            status,
            mailbox_depth: queued,
            mailbox_capacity: (self.capacity != usize::MAX).then_some(self.capacity),
            received: self.hdr.received.load(Ordering::Relaxed),
            sent: self.hdr.sent.load(Ordering::Relaxed),
            links: meta.links.clone(),
            monitors: meta.monitors.iter().map(|(_, p)| *p).collect(),
            monitored_by: meta.monitored_by.iter().map(|(_, p)| *p).collect(),
            parent: self.hdr.parent,
            registered_name: meta.name.as_deref().map(str::to_owned),
            trap_exit: f & F_TRAP != 0,
            traced: f & F_TRACED != 0,
            memory_bytes: memory,
        }
    }

    fn peek_json(&self, max: usize) -> Vec<serde_json::Value> {
        // Clone under the locks, render after: the runner spins on the inbox lock meanwhile.
        let peeked: Vec<Peeked<B>> = {
            let inbox = self.inbox.lock();
            let mb = self.mailbox.lock();
            inbox.iter().chain(mb.queue.iter()).take(max).map(Envelope::peeked).collect()
        };
        peeked.iter().map(Peeked::to_json).collect()
    }

    fn send_json(self: Arc<Self>, msg: serde_json::Value, corr: Option<CorrelationId>) -> Result<(), String> {
        let msg: B::Msg =
            serde_json::from_value(msg).map_err(|e| format!("not a message {} understands: {e}", B::name()))?;
        match self.push(Envelope::Cast { msg, from: None, corr }) {
            Ok(()) => Ok(()),
            Err(PushError::Full(_)) => Err("mailbox full".to_owned()),
        }
    }

    fn push_any(
        self: Arc<Self>,
        msg: Box<dyn Any + Send>,
        from: Option<Pid>,
        corr: Option<CorrelationId>,
    ) -> Result<(), SendError> {
        let pid = self.pid();
        match msg.downcast::<B::Msg>() {
            Ok(msg) => match self.push(Envelope::Cast { msg: *msg, from, corr }) {
                Ok(()) => Ok(()),
                Err(PushError::Full(_)) => Err(SendError::Full(pid)),
            },
            Err(_) => Err(SendError::WrongType { pid, behaviour: B::name() }),
        }
    }

    fn push_wire(
        self: Arc<Self>,
        payload: &[u8],
        from: Option<Pid>,
        corr: Option<CorrelationId>,
    ) -> Result<(), WireRefused> {
        let msg = cluster_proto::codec::decode_payload::<B::Msg>(payload)
            .map_err(|e| WireRefused::Undecodable { behaviour: B::name(), error: e.to_string() })?;
        self.push(Envelope::Cast { msg, from, corr }).map_err(|_| WireRefused::Full)
    }

    fn call_wire(
        self: Arc<Self>,
        payload: &[u8],
        from: Option<Pid>,
        corr: Option<CorrelationId>,
        reply: crate::dist::inbound::WireReply,
    ) -> Result<Option<Claimed>, WireRefused> {
        use cluster_proto::frame::RemoteCallError;
        let req = match cluster_proto::codec::decode_payload::<B::Call>(payload) {
            Ok(req) => req,
            Err(e) => {
                let error = e.to_string();
                reply.fail(RemoteCallError::BadRequest(format!("not a request {} understands: {error}", B::name())));
                return Err(WireRefused::Undecodable { behaviour: B::name(), error });
            }
        };
        match self.push_claim(Envelope::Call { req, reply: ReplyTo::Wire(reply), from, corr }, false) {
            Ok(true) => Ok(Some(Claimed(Some(self)))),
            Ok(false) => Ok(None),
            Err(PushError::Full(env)) => {
                if let Envelope::Call { reply: ReplyTo::Wire(r), .. } = env {
                    r.fail(RemoteCallError::Full);
                }
                Err(WireRefused::Full)
            }
        }
    }

    fn run_claimed(self: Arc<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move { super::runner::run_inline(&self).await })
    }

    fn spawn_claimed(self: Arc<Self>) {
        self.spawn_runner();
    }

    fn call_json(
        self: Arc<Self>,
        req: serde_json::Value,
        corr: Option<CorrelationId>,
    ) -> Result<oneshot::Receiver<Result<serde_json::Value, String>>, CallError> {
        let req: B::Call = serde_json::from_value(req)
            .map_err(|e| CallError::BadRequest(format!("not a request {} understands: {e}", B::name())))?;
        let (tx, rx) = oneshot::channel();
        match self.push(Envelope::Call { req, reply: ReplyTo::Json(tx), from: None, corr }) {
            Ok(()) => Ok(rx),
            // A full mailbox is `CallError::Full`, as for typed calls — not a bad request.
            Err(PushError::Full(_)) => Err(CallError::Full),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;
    use crate::{Context, Error};

    struct Probe;

    impl Behaviour for Probe {
        type Args = ();
        type Msg = u64;
        type Call = ();
        type Reply = ();
        fn name() -> &'static str {
            "test.probe"
        }
        async fn init(_: &mut Context<Self>, _: ()) -> Result<Self, Error> {
            Ok(Probe)
        }
    }

    /// What senders write per message and what the runner writes per message are at least two
    /// cache lines apart (128 bytes: x86's adjacent-line prefetcher moves lines in pairs), so a
    /// sender and a runner on two cores do not invalidate each other's lines per message.
    #[test]
    fn sender_and_runner_fields_do_not_share_cache_lines() {
        let m: Mutex<Mailbox<Probe>> = Mutex::new(Mailbox {
            queue: SegQueue::new(),
            running: false,
            suspended: false,
            closed: false,
            in_hand: 0,
            sys: Vec::new(),
            waiters: Vec::new(),
        });
        let data = m.data_ptr() as usize - &m as *const _ as usize;
        // Senders touch the lock word and the fields up to `sys`.
        let sender_end = offset_of!(Cell<Probe>, mailbox) + data + offset_of!(Mailbox<Probe>, sys);
        assert!(offset_of!(Cell<Probe>, capacity) < sender_end);
        let runner_start = offset_of!(Cell<Probe>, hdr.meta)
            .min(offset_of!(Cell<Probe>, hdr.received))
            .min(offset_of!(Cell<Probe>, hdr.sent))
            .min(offset_of!(Cell<Probe>, hdr.flags))
            .min(offset_of!(Cell<Probe>, state))
            .min(offset_of!(Cell<Probe>, inbox));
        assert!(
            runner_start >= sender_end + 128,
            "sender fields end at {sender_end}, runner fields start at {runner_start}"
        );
    }
}

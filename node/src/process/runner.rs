//! The runner: one activation of a process, from being scheduled until it goes idle or exits.
//!
//! A runner is spawned when a message reaches an idle process (see the scheduling invariant in
//! [`cell`](super::cell)); the very first activation, which runs `init`, is polled inline by
//! `spawn` and only becomes a task if `init` actually awaits. A runner:
//!
//! 1. takes the state out of the cell;
//! 2. loops: checks the flag word (kill → exit now; system messages → serve them; suspended →
//!    go idle), takes the next envelope (from its in-hand batch, refilled by swapping the whole
//!    mailbox queue in one lock), and runs the handler under [`guarded`];
//! 3. when nothing is left, puts the state back and clears `running` (re-checking under the
//!    mailbox lock), and the task ends — an idle process has no task.
//!
//! [`guarded`] turns a handler panic into a crash reason and lets a kill interrupt a handler that
//! is awaiting something (e.g. a slow LLM call).

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use cluster_proto::ExitReason;

use super::behaviour::Behaviour;
use super::cell::{Cell, Envelope, Header, ReplyTo, SysMsg, F_KILL, F_SUSPENDED, F_SYS, F_TRACED};
use super::context::Context;
use super::trace::TraceKind;

/// Why a guarded future stopped without producing its output.
pub(crate) enum GuardExit {
    /// It panicked; the text is the panic message.
    Panic(String),
    /// An exit signal arrived (`F_KILL`).
    Killed,
}

thread_local! {
    /// How many [`guarded`] polls are on this thread's stack (a handler polled inside a handler
    /// through an inline call nests). Non-zero: a panic here is a process crash.
    static IN_GUARD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// Where the last process panic on this thread happened, left by the panic hook for
    /// [`panic_message`].
    static PANIC_AT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Installs (once per OS process) a panic hook that turns a panic inside a process handler into
/// a `tracing` event (target `soma::panic`, level debug, with its location) instead of the default
/// stderr message and backtrace: a handler panic is an ordinary crash, reported once as the
/// process's exit (`process crashed`, with the location in the reason). Panics anywhere else go
/// to the hook that was installed before.
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_GUARD.with(|g| g.get()) == 0 {
                return previous(info);
            }
            let at = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            tracing::debug!(target: "soma::panic", location = at.as_deref().unwrap_or("?"), "{}", info);
            PANIC_AT.with(|p| *p.borrow_mut() = at);
        }));
    });
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    let text = if let Some(s) = p.downcast_ref::<&str>() {
        format!("panic: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("panic: {s}")
    } else {
        "panic".to_owned()
    };
    match PANIC_AT.with(|at| at.borrow_mut().take()) {
        Some(at) => format!("{text} (at {at})"),
        None => text,
    }
}

/// Runs `f`, turning a panic into its message (with the location, when the hook saw it) without
/// the default hook's stderr report.
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    let _mark = GuardMark::enter();
    catch_unwind(AssertUnwindSafe(f)).map_err(panic_message)
}

/// Marks a guarded poll on this thread's stack for the panic hook; unmarks on drop (also when
/// unwinding).
struct GuardMark;

impl GuardMark {
    #[inline]
    fn enter() -> GuardMark {
        IN_GUARD.with(|g| g.set(g.get() + 1));
        GuardMark
    }
}

impl Drop for GuardMark {
    #[inline]
    fn drop(&mut self) {
        IN_GUARD.with(|g| g.set(g.get().saturating_sub(1)));
    }
}

/// Polls `fut` to completion unless it panics or the process is killed meanwhile.
pub(crate) async fn guarded<F: Future>(hdr: &Header, fut: F) -> Result<F::Output, GuardExit> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        if hdr.flags() & F_KILL != 0 {
            return Poll::Ready(Err(GuardExit::Killed));
        }
        match catch(|| fut.as_mut().poll(cx)) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => {
                {
                    let mut meta = hdr.meta.lock();
                    match &meta.kill_waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => meta.kill_waker = Some(cx.waker().clone()),
                    }
                }
                // Re-check after publishing the waker (see `Cell::raise_exit`).
                if hdr.flags.load(Ordering::SeqCst) & F_KILL != 0 {
                    Poll::Ready(Err(GuardExit::Killed))
                } else {
                    Poll::Pending
                }
            }
            Err(m) => Poll::Ready(Err(GuardExit::Panic(m))),
        }
    })
    .await
}

/// Takes the pending exit reason and clears `F_KILL`.
fn take_pending_exit<B: Behaviour>(cell: &Cell<B>) -> ExitReason {
    let mut meta = cell.hdr.meta.lock();
    cell.hdr.flags.fetch_and(!F_KILL, Ordering::SeqCst);
    meta.pending_exit.take().unwrap_or(ExitReason::Killed)
}

/// The next envelope: from the in-hand batch, else the whole mailbox queue is swapped in.
#[inline]
fn next_envelope<B: Behaviour>(cell: &Cell<B>) -> Option<Envelope<B>> {
    let mut inbox = cell.inbox.lock();
    if let Some(env) = inbox.pop_front() {
        return Some(env);
    }
    let mut mb = cell.mailbox.lock();
    if mb.queue.is_empty() {
        inbox.shrink_idle();
        return None;
    }
    std::mem::swap(&mut *inbox, &mut mb.queue);
    mb.in_hand = inbox.len();
    if !mb.waiters.is_empty() {
        mb.wake_waiters();
    }
    drop(mb);
    inbox.pop_front()
}

/// Tries to go idle: puts the state back, then clears `running` unless there is work after all
/// (in which case the state is handed back).
fn try_idle<B: Behaviour>(cell: &Cell<B>, state: B) -> Result<(), B> {
    *cell.state.lock() = Some(state);
    // The in-hand batch counts as work too: a runner that saw `F_SUSPENDED` may get here with
    // part of its batch still in the inbox. If a `resume` slipped in meanwhile (it found
    // `running` set and so spawned nothing), going idle would strand that rest of the batch
    // until some later push; and while suspended, the rest must keep counting against a
    // bounded mailbox's capacity (G8). Lock order: inbox before mailbox; only the runner pops
    // from the inbox, so its length is stable here.
    let inbox = cell.inbox.lock();
    let mut mb = cell.mailbox.lock();
    let kill = cell.hdr.flags.load(Ordering::SeqCst) & F_KILL != 0;
    let idle = !kill && mb.sys.is_empty() && (mb.suspended || (mb.queue.is_empty() && inbox.is_empty()));
    if idle {
        mb.running = false;
        mb.in_hand = inbox.len();
        mb.queue.shrink_idle();
        if !mb.waiters.is_empty() {
            mb.wake_waiters();
        }
        return Ok(());
    }
    drop(mb);
    drop(inbox);
    match cell.state.lock().take() {
        Some(s) => Err(s),
        // Unreachable: only the runner moves the state, and it just put it there.
        None => Ok(()),
    }
}

fn serve_sys<B: Behaviour>(cell: &Cell<B>, state: &B) {
    let msgs = {
        let mut mb = cell.mailbox.lock();
        cell.hdr.flags.fetch_and(!F_SYS, Ordering::SeqCst);
        std::mem::take(&mut mb.sys)
    };
    for msg in msgs {
        match msg {
            SysMsg::GetState(tx) => {
                let snap = catch(|| state.snapshot()).unwrap_or(None);
                let _ = tx.send(snap);
            }
        }
    }
}

/// Messages one activation handles before yielding to the scheduler (fairness, and the bound
/// on how long a caller hosts an inline activation).
const BUDGET: u32 = 128;

/// Most inline activations nested in one another on a thread (A calls idle B whose handler calls
/// idle C ...); deeper ones are spawned as tasks.
const MAX_INLINE_DEPTH: u32 = 8;

thread_local! {
    static INLINE_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs an activation the caller claimed (`Cell::push_claim`) on the caller's own task: polled
/// once, inline; if it does not finish at once (a handler awaits, or the budget ran out) it is
/// handed to the scheduler as its own task and goes on there. The callee's handlers thus never
/// depend on the caller staying around.
pub(crate) async fn run_inline<B: Behaviour>(cell: &Arc<Cell<B>>) {
    let depth = INLINE_DEPTH.with(|d| d.get());
    if depth >= MAX_INLINE_DEPTH {
        cell.spawn_runner();
        return;
    }
    let mut fut = Box::pin(run::<B>(Arc::clone(cell), None));
    let pending = std::future::poll_fn(|cx| {
        INLINE_DEPTH.with(|d| d.set(depth + 1));
        let p = fut.as_mut().poll(cx);
        INLINE_DEPTH.with(|d| d.set(depth));
        Poll::Ready(p.is_pending())
    })
    .await;
    if pending {
        cell.hdr.node.rt.spawn(fut);
    }
}

/// Yields once to the scheduler.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// One activation. `init` is `Some` for the first one (which runs `Behaviour::init`).
pub(crate) async fn run<B: Behaviour>(cell: Arc<Cell<B>>, init: Option<B::Args>) {
    let mut ctx = Context::new(Arc::clone(&cell));
    let hdr = &cell.hdr;
    let mut state = match init {
        Some(args) => match guarded(hdr, B::init(&mut ctx, args)).await {
            Ok(Ok(state)) => state,
            Ok(Err(e)) => return finish(&cell, ctx, None, ExitReason::crashed(format!("init: {e}")), false).await,
            Err(GuardExit::Panic(m)) => {
                return finish(&cell, ctx, None, ExitReason::crashed(format!("init: {m}")), false).await
            }
            Err(GuardExit::Killed) => {
                let reason = take_pending_exit(&cell);
                return finish(&cell, ctx, None, reason, false).await;
            }
        },
        None => match cell.state.lock().take() {
            Some(state) => state,
            // Only reachable if the invariant were broken; never run two activations.
            None => return,
        },
    };
    let mut budget = BUDGET;
    loop {
        if budget == 0 {
            budget = BUDGET;
            yield_once().await;
        }
        budget -= 1;
        let f = hdr.flags();
        if f & (F_KILL | F_SYS | F_SUSPENDED) != 0 {
            if f & F_KILL != 0 {
                let reason = take_pending_exit(&cell);
                return finish(&cell, ctx, Some(state), reason, false).await;
            }
            if f & F_SYS != 0 {
                serve_sys(&cell, &state);
                continue;
            }
            match try_idle(&cell, state) {
                Ok(()) => return,
                Err(s) => {
                    state = s;
                    if cell.mailbox.lock().suspended {
                        continue;
                    }
                }
            }
        }
        let Some(env) = next_envelope(&cell) else {
            match try_idle(&cell, state) {
                Ok(()) => return,
                Err(s) => {
                    state = s;
                    continue;
                }
            }
        };
        let traced = f & F_TRACED != 0;
        Header::bump(&hdr.received);
        let outcome = match env {
            Envelope::Cast { msg, from, corr } => {
                if traced {
                    hdr.trace_value(TraceKind::Received, from, corr, msg.clone());
                }
                ctx.begin(from, corr);
                guarded(hdr, state.handle(&mut ctx, msg)).await
            }
            Envelope::Call { req, reply, from, corr } => {
                if traced {
                    hdr.trace_value(TraceKind::CallReceived, from, corr, req.clone());
                }
                ctx.begin(from, corr);
                match guarded(hdr, state.handle_call(&mut ctx, req)).await {
                    Ok(Ok(rep)) => {
                        if traced {
                            hdr.trace_value(TraceKind::Replied, from, corr, rep.clone());
                        }
                        match reply {
                            ReplyTo::Typed(tx) => {
                                let _ = tx.send(rep);
                            }
                            ReplyTo::Json(tx) => {
                                let _ = tx.send(
                                    serde_json::to_value(&rep).map_err(|e| format!("reply not serializable: {e}")),
                                );
                            }
                            ReplyTo::Wire(w) => w.reply(&rep),
                        }
                        Ok(Ok(()))
                    }
                    Ok(Err(e)) => Ok(Err(e)),
                    Err(x) => Err(x),
                }
            }
            Envelope::Exit { from, reason } => {
                if traced {
                    hdr.trace_value(TraceKind::ExitSignal, Some(from), None, reason.clone());
                }
                // OTP: an exit signal from the parent terminates a trapping gen_server. The node
                // itself (serial 0: the runtime or an operator) has the same authority, so
                // `Node::exit`/`Node::shutdown` stop trapping processes and supervisors cleanly.
                let from_node = from.node() == hdr.pid.node() && from.serial() == 0;
                if Some(from) == hdr.parent || from_node {
                    return finish(&cell, ctx, Some(state), reason, true).await;
                }
                ctx.begin(Some(from), None);
                guarded(hdr, state.handle_exit(&mut ctx, from, reason)).await
            }
            Envelope::Down(down) => {
                let held = {
                    let mut meta = hdr.meta.lock();
                    match meta.monitors.iter().position(|(r, _)| *r == down.monitor) {
                        Some(i) => {
                            meta.monitors.swap_remove(i);
                            true
                        }
                        None => false,
                    }
                };
                if !held {
                    // Demonitored meanwhile: a stale Down is flushed, as `demonitor(R, [flush])`.
                    continue;
                }
                if traced {
                    hdr.trace_value(TraceKind::Down, Some(down.pid), None, down.reason.clone());
                }
                ctx.begin(Some(down.pid), None);
                guarded(hdr, state.handle_down(&mut ctx, down)).await
            }
        };
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return finish(&cell, ctx, Some(state), ExitReason::crashed(e), true).await,
            Err(GuardExit::Panic(m)) => return finish(&cell, ctx, None, ExitReason::crashed(m), false).await,
            Err(GuardExit::Killed) => {
                let reason = take_pending_exit(&cell);
                return finish(&cell, ctx, Some(state), reason, false).await;
            }
        }
        if traced {
            record_state(hdr, &state);
        }
        if let Some(reason) = ctx.stop.take() {
            return finish(&cell, ctx, Some(state), reason, true).await;
        }
    }
}

/// Records a `State` trace event if the snapshot changed since the last one recorded.
fn record_state<B: Behaviour>(hdr: &Header, state: &B) {
    let Ok(Some(snap)) = catch(|| state.snapshot()) else {
        return;
    };
    let changed = {
        match hdr.trace.lock().as_mut() {
            Some(ring) if ring.last_state.as_ref() != Some(&snap) => {
                ring.last_state = Some(snap.clone());
                true
            }
            _ => false,
        }
    };
    if changed {
        hdr.trace_value(TraceKind::State, None, None, snap);
    }
}

/// Ends the process: `terminate` (if asked and not killed meanwhile), then the node's exit
/// bookkeeping (links, monitors, registry, table, mailbox).
async fn finish<B: Behaviour>(
    cell: &Arc<Cell<B>>,
    mut ctx: Context<B>,
    state: Option<B>,
    mut reason: ExitReason,
    call_terminate: bool,
) {
    let mut state = state;
    if let (true, Some(s)) = (call_terminate, state.as_mut()) {
        // Documented status while `terminate` runs: `exiting`.
        cell.hdr.meta.lock().terminating = true;
        if let Err(GuardExit::Killed) = guarded(&cell.hdr, s.terminate(&mut ctx, &reason)).await {
            reason = take_pending_exit(cell);
        }
    }
    let _ = catch(move || drop(state));
    drop(ctx);
    // Any state left in the cell (e.g. the process was idle) goes too.
    let left = cell.state.lock().take();
    let _ = catch(move || drop(left));
    cell.hdr.node.exit_process(cell, reason);
}

//! The [`Behaviour`] trait: what a process does with its messages.
//!
//! A behaviour is the state of one process plus its callbacks, as in an OTP `gen_server`:
//!
//! | callback | when | default |
//! |---|---|---|
//! | [`init`](Behaviour::init) | once, when spawned; `spawn` returns after it finished (or, if it awaits, while it still runs) | — (required) |
//! | [`handle`](Behaviour::handle) | a message sent with `send` (a *cast*) | ignore |
//! | [`handle_call`](Behaviour::handle_call) | a request sent with `call`; the return value is the reply | error: crashes the process |
//! | [`handle_exit`](Behaviour::handle_exit) | an exit signal from a linked process, when trapping exits | ignore |
//! | [`handle_down`](Behaviour::handle_down) | a monitored process exited | ignore |
//! | [`terminate`](Behaviour::terminate) | the process stops by its own doing (`stop`, a handler error) or on a trapped exit signal from its parent or the node — not when killed, after a panic or on an untrapped exit signal | nothing |
//! | [`snapshot`](Behaviour::snapshot) | an operator asks for the state | `None` (opt-in) |
//!
//! Handlers are `async` and own the process while they run: messages are handled one at a time,
//! in mailbox order. A handler that returns `Err` or panics *crashes the process*: its exit
//! reason becomes [`ExitReason::Crashed`] with the error text or the panic message, and nothing
//! else in the node is affected.

use std::future::Future;

use cluster_proto::{ExitReason, MonitorRef, Pid};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::context::Context;

/// The error type handlers return. Any error converts into it with `?`; its text becomes the
/// crash reason.
pub type Error = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A message type: serde-serializable (so it can cross the wire and be shown as JSON), cloneable
/// (so tracing can keep a copy without slowing the handler) and sendable.
pub trait Message: Serialize + DeserializeOwned + Clone + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + 'static> Message for T {}

/// A monitored process went down.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Down {
    /// The monitor that fired (as returned by `monitor`).
    pub monitor: MonitorRef,
    /// The process that went down.
    pub pid: Pid,
    /// Why: its exit reason, `noproc` if it did not exist, `noconnection` if its node is lost.
    pub reason: ExitReason,
}

/// What a process is: its state and its callbacks. See the [module docs](self).
pub trait Behaviour: Sized + Send + 'static {
    /// What `init` is given.
    type Args: Send + 'static;
    /// Messages sent with `send` (casts).
    type Msg: Message;
    /// Requests sent with `call`.
    type Call: Message;
    /// Replies to calls.
    type Reply: Message;

    /// A stable name for this behaviour, shown in info, logs and the supervision tree.
    fn name() -> &'static str {
        std::any::type_name::<Self>()
    }

    /// Builds the state. An error makes the process exit with `crashed` before it handles
    /// anything.
    fn init(ctx: &mut Context<Self>, args: Self::Args) -> impl Future<Output = Result<Self, Error>> + Send;

    /// Handles one message sent with `send`.
    fn handle(&mut self, ctx: &mut Context<Self>, msg: Self::Msg) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = (ctx, msg);
        async { Ok(()) }
    }

    /// Handles one request sent with `call`; the `Ok` value is the reply.
    fn handle_call(
        &mut self,
        ctx: &mut Context<Self>,
        req: Self::Call,
    ) -> impl Future<Output = Result<Self::Reply, Error>> + Send {
        let _ = (ctx, req);
        async { Err(format!("{} does not handle calls", Self::name()).into()) }
    }

    /// Handles an exit signal from a linked process (only when trapping exits; see
    /// [`Context::trap_exit`]). An exit signal from the process's parent (its supervisor) or
    /// from the node itself (`Node::exit`, `Node::shutdown`) is not passed here: the process
    /// terminates with that reason (`terminate` runs), as OTP's `gen_server` does for its parent.
    fn handle_exit(
        &mut self,
        ctx: &mut Context<Self>,
        from: Pid,
        reason: ExitReason,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = (ctx, from, reason);
        async { Ok(()) }
    }

    /// Handles the `Down` notification of a monitor this process holds.
    fn handle_down(&mut self, ctx: &mut Context<Self>, down: Down) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = (ctx, down);
        async { Ok(()) }
    }

    /// Called at most once, as the process stops, with its exit reason — but only when the process
    /// stops *in an orderly way*, i.e. in exactly these cases:
    ///
    /// * a handler called [`Context::stop`] (after that handler returns);
    /// * a handler (`handle`, `handle_call`, `handle_exit`, `handle_down`) returned `Err`
    ///   (reason `crashed` with the error text);
    /// * the process **traps exits** and an exit signal (any reason) from its parent or from the
    ///   node reaches the front of its mailbox (a supervisor's `shutdown`, `Node::exit`,
    ///   `Node::shutdown`): `terminate` runs with that signal's reason instead of `handle_exit`.
    ///
    /// It does **not** run when:
    ///
    /// * `init` failed or panicked (there is no state yet);
    /// * a handler panicked (the state may be inconsistent);
    /// * the process was killed (`Context::kill`, `Node::kill`, a supervisor's brutal kill or
    ///   its kill after the shutdown timeout) — a kill cannot be trapped;
    /// * an exit signal was not trapped: while not trapping exits, any exit signal whose reason
    ///   is not `normal` stops the process at once with that reason (interrupting a handler
    ///   that is awaiting), without `terminate`. That covers a linked process's exit with any
    ///   reason but `normal` (`shutdown` and `killed` included, e.g. a linked supervisor giving
    ///   up), `Context::exit`/`Node::exit`, and the `shutdown` signal of a supervisor or of
    ///   `Node::shutdown`. To have `terminate` run on `shutdown`, trap exits (as in OTP).
    ///
    /// While `terminate` runs, the process shows as `exiting`; a kill (or, if the process does
    /// not trap exits, any untrapped exit signal as above) cuts it short, and the exit reason
    /// becomes that signal's. A panic in `terminate` is ignored (the reason stays).
    fn terminate(&mut self, ctx: &mut Context<Self>, reason: &ExitReason) -> impl Future<Output = ()> + Send {
        let _ = (ctx, reason);
        async {}
    }

    /// The state as JSON, for `soma state PID` and state transitions in traces. Opt in by
    /// returning `Some` (e.g. `serde_json::to_value(self).ok()`).
    fn snapshot(&self) -> Option<serde_json::Value> {
        None
    }

    /// Heap bytes owned by the state, added to the process's memory estimate (default 0).
    fn heap_size(&self) -> usize {
        0
    }
}

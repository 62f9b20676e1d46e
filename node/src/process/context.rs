//! [`Context`]: what a handler can do besides changing its state.
//!
//! Everything a process sends, calls or spawns through its context carries its PID as the sender
//! and the correlation ID of the message being handled, so causality flows without the handler
//! doing anything. When the process is traced, outbound sends and calls are recorded.

use std::sync::Arc;
use std::time::Duration;

use cluster_proto::{CorrelationId, ExitReason, MonitorRef, Pid};

use super::behaviour::{Behaviour, Message};
use super::cell::{Cell, Envelope, Header, F_TRACED, F_TRAP};
use super::node::{call_cell, Addr, CallError, Node, RegistryError, SendError, SpawnError, SpawnOpts};
use super::trace::TraceKind;

/// The handle a process's callbacks get: its identity, the message's sender and correlation ID,
/// and the operations that act on other processes.
pub struct Context<B: Behaviour> {
    pub(crate) cell: Arc<Cell<B>>,
    from: Option<Pid>,
    corr: Option<CorrelationId>,
    pub(crate) stop: Option<ExitReason>,
}

impl<B: Behaviour> Context<B> {
    pub(crate) fn new(cell: Arc<Cell<B>>) -> Self {
        Context { cell, from: None, corr: None, stop: None }
    }

    #[inline]
    pub(crate) fn begin(&mut self, from: Option<Pid>, corr: Option<CorrelationId>) {
        self.from = from;
        self.corr = corr;
    }

    fn hdr(&self) -> &Header {
        &self.cell.hdr
    }

    /// This process's PID.
    pub fn pid(&self) -> Pid {
        self.cell.pid()
    }

    /// The node this process runs on.
    pub fn node(&self) -> Node {
        Node::from_shared(Arc::clone(&self.hdr().node))
    }

    /// The process that spawned this one (its supervisor, if supervised).
    pub fn parent(&self) -> Option<Pid> {
        self.hdr().parent
    }

    /// This process's label, if it has one.
    pub fn label(&self) -> Option<Arc<str>> {
        self.hdr().meta.lock().label.clone()
    }

    /// Milliseconds since the node started: the monotonic clock fed to pure decision code.
    pub fn now_ms(&self) -> u64 {
        self.hdr().node.now_ms()
    }

    /// The sender of the message being handled, if it came from a process.
    pub fn sender(&self) -> Option<Pid> {
        self.from
    }

    /// The correlation ID of the message being handled.
    pub fn correlation(&self) -> Option<CorrelationId> {
        self.corr
    }

    /// Sets the correlation ID stamped on what this handler sends from now on.
    pub fn set_correlation(&mut self, corr: Option<CorrelationId>) {
        self.corr = corr;
    }

    /// Stops the process with `reason` once the current handler returns (`terminate` runs).
    pub fn stop(&mut self, reason: ExitReason) {
        self.stop = Some(reason);
    }

    /// Turns exit trapping on or off: when on, exit signals from linked processes arrive as
    /// `handle_exit` calls instead of stopping this process (`kill` is never trappable).
    pub fn trap_exit(&mut self, on: bool) {
        let flags = &self.hdr().flags;
        if on {
            flags.fetch_or(F_TRAP, std::sync::atomic::Ordering::SeqCst);
        } else {
            flags.fetch_and(!F_TRAP, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn note_out<M: Message>(&self, kind: TraceKind, to: Pid, msg: &M) {
        let hdr = self.hdr();
        Header::bump(&hdr.sent);
        if hdr.flags() & F_TRACED != 0 {
            hdr.trace_value(kind, Some(to), self.corr, msg.clone());
        }
    }

    /// Sends `msg` to `to` (does not wait). See [`Addr::send`].
    pub fn send<T: Behaviour>(&self, to: &Addr<T>, msg: T::Msg) -> Result<(), SendError> {
        self.note_out(TraceKind::Sent, to.pid(), &msg);
        to.push(Envelope::Cast { msg, from: Some(self.pid()), corr: self.corr })
    }

    /// Sends `msg` to `to`, waiting for room if its mailbox is bounded and full.
    ///
    /// # Cancel safety
    /// If dropped before completion, the message was not sent.
    pub async fn send_wait<T: Behaviour>(&self, to: &Addr<T>, msg: T::Msg) {
        self.note_out(TraceKind::Sent, to.pid(), &msg);
        to.cell.push_wait(Envelope::Cast { msg, from: Some(self.pid()), corr: self.corr }).await
    }

    /// Sends `msg` to the process `to` by PID; `M` must be its behaviour's message type.
    pub fn send_to<M: Message>(&self, to: Pid, msg: M) -> Result<(), SendError> {
        self.note_out(TraceKind::Sent, to, &msg);
        if let Some(d) = self.hdr().node.remote(to) {
            return d.send(to, Some(self.pid()), self.corr, &msg);
        }
        self.hdr().node.send_any(to, Box::new(msg), Some(self.pid()), self.corr)
    }

    /// Calls `to` and waits up to `timeout` for the reply.
    pub async fn call<T: Behaviour>(
        &self,
        to: &Addr<T>,
        req: T::Call,
        timeout: Duration,
    ) -> Result<T::Reply, CallError> {
        self.note_out(TraceKind::Called, to.pid(), &req);
        call_cell(&to.cell, req, Some(self.pid()), self.corr, timeout).await
    }

    /// Calls the process `to` (local or on another node) and waits up to `timeout` for the
    /// reply; the correlation ID being handled goes with the request.
    pub async fn call_ref<T: Behaviour>(
        &self,
        to: &crate::PidRef<T>,
        req: T::Call,
        timeout: Duration,
    ) -> Result<T::Reply, CallError> {
        self.note_out(TraceKind::Called, to.pid(), &req);
        to.call_from(Some(self.pid()), self.corr, req, timeout).await
    }

    /// Spawns a child process whose parent is this one.
    pub fn spawn<T: Behaviour>(&self, args: T::Args, opts: SpawnOpts) -> Result<Addr<T>, SpawnError> {
        self.hdr().node.spawn_inner::<T>(args, opts, Some(self.pid()), false, false).map(|(a, _)| a)
    }

    /// Spawns a child process linked to this one (atomically: the link exists before its `init`).
    pub fn spawn_link<T: Behaviour>(&self, args: T::Args, opts: SpawnOpts) -> Result<Addr<T>, SpawnError> {
        self.hdr().node.spawn_inner::<T>(args, opts, Some(self.pid()), true, false).map(|(a, _)| a)
    }

    /// Spawns a child process monitored by this one (the monitor exists before its `init`).
    pub fn spawn_monitor<T: Behaviour>(
        &self,
        args: T::Args,
        opts: SpawnOpts,
    ) -> Result<(Addr<T>, MonitorRef), SpawnError> {
        let (addr, mref) = self.hdr().node.spawn_inner::<T>(args, opts, Some(self.pid()), false, true)?;
        let mref = mref.ok_or(SpawnError::ShuttingDown)?;
        Ok((addr, mref))
    }

    /// Links this process to `pid`. If `pid` is not alive, this process gets an exit signal
    /// with reason `noproc` (trapped or not, as any exit signal).
    pub fn link(&self, pid: Pid) {
        self.hdr().node.link(self.pid(), pid);
    }

    /// Removes the link to `pid`, if any.
    pub fn unlink(&self, pid: Pid) {
        self.hdr().node.unlink(self.pid(), pid);
    }

    /// Monitors `pid`: when it exits (or if it is not alive), `handle_down` gets a [`Down`].
    ///
    /// [`Down`]: super::behaviour::Down
    pub fn monitor(&self, pid: Pid) -> MonitorRef {
        self.hdr().node.monitor(self.pid(), pid)
    }

    /// Removes a monitor; a `Down` for it that is already queued is discarded.
    pub fn demonitor(&self, mref: MonitorRef) {
        self.hdr().node.demonitor(self.pid(), mref);
    }

    /// Sends an exit signal to `pid` from this process (see [`Node::exit`]).
    pub fn exit(&self, pid: Pid, reason: ExitReason) {
        self.hdr().node.exit_signal(self.pid(), pid, reason, false);
    }

    /// Kills `pid` unconditionally (reason `killed`).
    pub fn kill(&self, pid: Pid) {
        self.hdr().node.exit_signal(self.pid(), pid, ExitReason::Killed, true);
    }

    /// Registers this process under `name` on its node.
    pub fn register(&self, name: &str) -> Result<(), RegistryError> {
        self.hdr().node.register(name, self.pid())
    }
}

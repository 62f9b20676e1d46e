//! What a node does with each frame a peer sends: the receiving half of location transparency.
//!
//! Every frame is turned into the same operation a local process would have caused (push,
//! call, link, monitor, exit signal, down), addressed by PIDs rebuilt from the serials on the
//! wire and the session's two incarnations. Bad input is never a panic: a message that does not
//! decode into the target's type is dropped, counted and logged (the 1st, 2nd, 4th, 8th ...
//! time, so floods do not flood the log); refusals (undecodable, full, busy) count towards the
//! session's flood budget. A message to a process that no longer exists is *not* a refusal: it
//! is what Erlang does too (dropped silently, counted in `to_dead_pid`), it happens to honest
//! peers after every crash, and dropping it costs a table lookup.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cluster_proto::frame::{Frame, Head, RemoteCallError};
use cluster_proto::{ExitReason, NodeId, Pid};
use serde::Serialize;

use super::session::{lane_of, Class, Session, MAX_INBOUND_CALLS};
use crate::process::cell::{Claimed, WireRefused};
use crate::process::node::NodeShared;

/// A frame the node refused (it counts towards the flood budget).
pub(crate) struct Refused;

/// The reply slot of a call from a peer, carried in the callee's mailbox like a local reply
/// channel. Dropped without a reply (the callee exited or crashed): the caller gets `Exited`.
pub(crate) struct WireReply {
    session: Arc<Session>,
    call_id: u64,
    lane: usize,
    done: bool,
}

impl WireReply {
    /// Sends the reply.
    pub(crate) fn reply<R: Serialize>(mut self, rep: &R) {
        self.done = true;
        let limits = self.session.limits;
        let head = Head::Reply { call_id: self.call_id, result: Ok(()) };
        let r = self
            .session
            .enqueue(self.lane, Class::Reply, |b| cluster_proto::codec::encode_frame_with(b, &head, rep, &limits));
        if let Err(super::session::Enqueue::Encode(e)) = r {
            tracing::warn!(peer = %self.session.peer, error = %e, "reply not encodable");
            self.session.signal(
                self.lane,
                &Head::Reply { call_id: self.call_id, result: Err(RemoteCallError::BadRequest(e.to_string())) },
            );
        }
    }

    /// Answers with an error.
    pub(crate) fn fail(mut self, e: RemoteCallError) {
        self.done = true;
        self.session.signal(self.lane, &Head::Reply { call_id: self.call_id, result: Err(e) });
    }
}

impl Drop for WireReply {
    fn drop(&mut self) {
        if !self.done {
            self.session
                .signal(self.lane, &Head::Reply { call_id: self.call_id, result: Err(RemoteCallError::Exited) });
        }
        self.session.inbound_calls.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Handles one frame from `session` (whose peer incarnation is `remote`). A call to an idle
/// process leaves its activation in `claimed` (see [`Claimed`]).
pub(crate) fn dispatch(
    node: &NodeShared,
    session: &Arc<Session>,
    remote: NodeId,
    f: Frame<'_>,
    claimed: &mut Option<Claimed>,
) -> Result<(), Refused> {
    let local = |serial: u64| Pid::new(node.id, serial);
    let peer = |serial: u64| Pid::new(remote, serial);
    let stats = &session.stats;
    stats.frames_in.fetch_add(1, Ordering::Relaxed);
    match f.head {
        Head::Send { to, from, corr } => {
            deliver(node, session, node.lookup(local(to)), from.map(peer), corr, f.payload)
        }
        Head::SendNamed { name, from, corr } => {
            let p = node.whereis(name).and_then(|pid| node.lookup(pid));
            deliver(node, session, p, from.map(peer), corr, f.payload)
        }
        Head::Call { call_id, to, from, corr } => {
            let p = node.lookup(local(to));
            *claimed = serve_call(session, p, call_id, from, from.map(peer), corr, f.payload)?;
            Ok(())
        }
        Head::CallNamed { call_id, name, from, corr } => {
            let p = node.whereis(name).and_then(|pid| node.lookup(pid));
            *claimed = serve_call(session, p, call_id, from, from.map(peer), corr, f.payload)?;
            Ok(())
        }
        Head::Reply { call_id, result } => {
            session.complete_call(call_id, result.map(|()| f.payload.to_vec()));
            Ok(())
        }
        Head::Link { from, to } => {
            let (l, r) = (local(to), peer(from));
            if node.link_from_remote(l, r) {
                session.index.lock().links.insert((l, r));
            } else {
                // Already gone: the linker gets `noproc` back, as a local link would.
                session.signal(
                    lane_of(to, from),
                    &Head::Exit { from: to, to: from, reason: ExitReason::NoProc, kill: false },
                );
            }
            Ok(())
        }
        Head::Unlink { from, to } => {
            let (l, r) = (local(to), peer(from));
            node.unlink_local_side(l, r);
            session.index.lock().links.remove(&(l, r));
            Ok(())
        }
        Head::Monitor { watcher, target, mref } => {
            let (t, w) = (local(target), peer(watcher));
            match node.monitor_from_remote(w, t, mref) {
                Ok(()) => {
                    session.index.lock().mon_in.insert((w, mref, t));
                }
                Err(reason) => {
                    session.signal(lane_of(target, watcher), &Head::Down { watcher, mref, pid: target, reason })
                }
            }
            Ok(())
        }
        Head::Demonitor { watcher, target, mref } => {
            let (t, w) = (local(target), peer(watcher));
            node.demonitor_from_remote(w, t, mref);
            session.index.lock().mon_in.remove(&(w, mref, t));
            Ok(())
        }
        Head::Exit { from, to, reason, kill } => {
            let (l, r) = (local(to), peer(from));
            // A link's exit (or an explicit exit): the link, if any, is gone either way.
            if session.index.lock().links.remove(&(l, r)) {
                node.unlink_local_side(l, r);
            }
            match node.lookup(l) {
                Some(p) => p.exit_signal(r, reason, kill),
                None => {
                    stats.to_dead_pid.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }
        Head::Down { watcher, mref, pid, reason } => {
            session.index.lock().mon_out.remove(&mref);
            match node.lookup(local(watcher)) {
                Some(w) => w.down(crate::Down { monitor: mref, pid: peer(pid), reason }),
                None => {
                    stats.to_dead_pid.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }
        Head::Control { tag } => {
            match (node.dist.get(), session.conn.get()) {
                (Some(d), Some(c)) => d.on_control(remote, c.remote_address(), tag, f.payload),
                _ => {
                    stats.control_ignored.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }
    }
}

/// Whether the `n`th occurrence of a per-node event is logged: the 1st, 2nd, 4th, 8th ... so a
/// flood of bad frames cannot flood the log too (the counters have the exact figures).
fn log_nth(n: u64) -> bool {
    n.is_power_of_two()
}

fn deliver(
    _node: &NodeShared,
    session: &Session,
    p: Option<Arc<dyn crate::process::cell::AnyProcess>>,
    from: Option<Pid>,
    corr: Option<cluster_proto::CorrelationId>,
    payload: &[u8],
) -> Result<(), Refused> {
    let stats = &session.stats;
    let Some(p) = p else {
        stats.to_dead_pid.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    };
    match p.push_wire(payload, from, corr) {
        Ok(()) => Ok(()),
        Err(WireRefused::Full) => {
            stats.mailbox_full.fetch_add(1, Ordering::Relaxed);
            Err(Refused)
        }
        Err(WireRefused::Undecodable { behaviour, error }) => {
            let n = stats.undecodable.fetch_add(1, Ordering::Relaxed) + 1;
            if log_nth(n) {
                tracing::warn!(peer = %session.peer, behaviour, %error, dropped = n, "dropped a message that does not decode into the target's type");
            }
            Err(Refused)
        }
    }
}

fn serve_call(
    session: &Arc<Session>,
    p: Option<Arc<dyn crate::process::cell::AnyProcess>>,
    call_id: u64,
    from_serial: Option<u64>,
    from: Option<Pid>,
    corr: Option<cluster_proto::CorrelationId>,
    payload: &[u8],
) -> Result<Option<Claimed>, Refused> {
    let in_flight = session.inbound_calls.fetch_add(1, Ordering::Relaxed);
    let lane = lane_of(p.as_ref().map_or(0, |p| p.header().pid.serial()), from_serial.unwrap_or(0));
    let reply = WireReply { session: Arc::clone(session), call_id, lane, done: false };
    if in_flight >= MAX_INBOUND_CALLS {
        session.stats.busy.fetch_add(1, Ordering::Relaxed);
        reply.fail(RemoteCallError::Busy);
        return Err(Refused);
    }
    let Some(p) = p else {
        session.stats.to_dead_pid.fetch_add(1, Ordering::Relaxed);
        reply.fail(RemoteCallError::NoProc);
        return Ok(None);
    };
    match p.call_wire(payload, from, corr, reply) {
        Ok(c) => Ok(c),
        Err(WireRefused::Full) => {
            session.stats.mailbox_full.fetch_add(1, Ordering::Relaxed);
            Err(Refused)
        }
        Err(WireRefused::Undecodable { behaviour, error }) => {
            let n = session.stats.undecodable.fetch_add(1, Ordering::Relaxed) + 1;
            if log_nth(n) {
                tracing::warn!(peer = %session.peer, behaviour, %error, dropped = n, "refused a call whose request does not decode");
            }
            Err(Refused)
        }
    }
}

//! Request/response between nodes over control frames: the generic RPC that services of a node
//! answer for their peers. Services by number, each a documented const beside its service:
//! admin = 1 ([`ADMIN_SERVICE`](crate::admin::ADMIN_SERVICE)), Raft = 2
//! ([`RAFT_SERVICE`](crate::raft::network::RAFT_SERVICE)), cluster supervision's children = 3
//! ([`CHILDREN_SERVICE`](crate::csup::CHILDREN_SERVICE)), remote spawn = 4
//! ([`SPAWN_SERVICE`](super::spawn::SPAWN_SERVICE), installed by every distributed node).
//!
//! A node asks service `service` of peer `node` with [`Dist::rpc`]: an [`RpcRequest`] (tag
//! `RPC`) on the control lane; the peer looks the service up, serves it **on its own task**
//! (never on the connection's reader; at most [`MAX_SERVING`] of a service at once, more are
//! refused as `Busy`; the bounds are per service, so a burst of remote spawns never starves
//! Raft) and answers with an [`RpcReply`] (tag `RPC_REPLY`) sent to the exact incarnation
//! that asked. The asker waits with a timeout; if its connection to the peer ends meanwhile,
//! the wait fails at once with [`RpcError::NoConnection`] (as pending calls do, G3).
//!
//! Delivery is at most once: a request lost with its connection is not retried here.
//! Services must be safe to retry (idempotent) if their callers retry.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster_proto::codec::{decode_payload, encode_payload};
use cluster_proto::control::{RpcRefused, RpcReply, RpcRequest, MAX_RPC_BODY};
use cluster_proto::frame::tag;
use cluster_proto::NodeId;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;

use super::Dist;

/// Most requests of one service served at once by a node (G8). Per service, so that a burst
/// of one (remote spawns, admin requests) never makes a node refuse another (Raft).
pub const MAX_SERVING: usize = 1024;
/// Most requests to one service of other nodes waiting for their replies, from one node (G8;
/// per service, as [`MAX_SERVING`]).
pub const MAX_PENDING: usize = 4096;

/// The future a service returns.
pub(crate) type RpcFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>;

/// A service peers can ask.
pub(crate) trait RpcService: Send + Sync + 'static {
    /// Serves `body` from peer incarnation `from`.
    fn serve(&self, from: NodeId, body: Vec<u8>) -> RpcFuture;
}

/// Why an RPC failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The node is unreachable, or its connection was lost before it answered.
    #[error("node {0} is unreachable")]
    NoConnection(String),
    /// No answer in time.
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    /// Too many requests of this node are waiting for replies.
    #[error("too many requests to other nodes in progress")]
    Busy,
    /// The request is larger than [`MAX_RPC_BODY`] or cannot be encoded.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The node answered that it did not serve it.
    #[error(transparent)]
    Refused(#[from] RpcRefused),
}

/// Where an answer goes: the answering incarnation and its result.
type AnswerTx = oneshot::Sender<(NodeId, Result<Vec<u8>, RpcRefused>)>;

/// The services of a node and its requests in flight.
#[derive(Default)]
pub(crate) struct Rpcs {
    /// Service number → the service and how many of its requests are being served.
    services: RwLock<FxHashMap<u16, Installed>>,
    /// The requests waiting for their answers.
    pending: Mutex<Pending>,
    next: AtomicU64,
}

impl Rpcs {
    /// Fails every request waiting on `peer` (its connection is gone): their senders are
    /// dropped, so their waits end with `NoConnection`.
    pub(crate) fn peer_lost(&self, peer: &str) {
        self.pending.lock().retain(|p| p != peer);
    }

    /// Requests waiting for their answers.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.lock().by_id.len()
    }
}

/// An installed service and how many of its requests are being served.
type Installed = (Arc<dyn RpcService>, Arc<AtomicUsize>);

/// A request waiting for its answer: the node asked, the service, where the answer goes.
type Waiting = (Arc<str>, u16, AnswerTx);

/// The requests waiting for answers, and how many per service (for [`MAX_PENDING`]).
#[derive(Default)]
struct Pending {
    by_id: FxHashMap<u64, Waiting>,
    per_service: FxHashMap<u16, usize>,
}

impl Pending {
    /// Adds a request unless its service has [`MAX_PENDING`] waiting already.
    fn insert(&mut self, id: u64, w: Waiting) -> bool {
        let n = self.per_service.entry(w.1).or_default();
        if *n >= MAX_PENDING {
            return false;
        }
        *n += 1;
        self.by_id.insert(id, w);
        true
    }

    fn remove(&mut self, id: u64) -> Option<Waiting> {
        let w = self.by_id.remove(&id)?;
        self.uncount(w.1);
        Some(w)
    }

    /// Keeps the requests whose node `keep` accepts.
    fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<u64> = self.by_id.iter().filter(|(_, w)| !keep(&w.0)).map(|(id, _)| *id).collect();
        for id in gone {
            self.remove(id);
        }
    }

    fn uncount(&mut self, service: u16) {
        if let Some(n) = self.per_service.get_mut(&service) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_service.remove(&service);
            }
        }
    }
}

impl Dist {
    /// Installs (or replaces) the service numbered `service`.
    pub(crate) fn set_rpc_service(&self, service: u16, s: Arc<dyn RpcService>) {
        self.rpcs.services.write().insert(service, (s, Arc::new(AtomicUsize::new(0))));
    }

    /// Asks service `service` of node `node`; returns the answering incarnation and its answer.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future forgets the request (its answer, if any, is dropped on arrival);
    /// the peer may still have served it.
    pub(crate) async fn rpc(
        self: &Arc<Self>,
        node: &str,
        service: u16,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(NodeId, Vec<u8>), RpcError> {
        if body.len() > MAX_RPC_BODY {
            return Err(RpcError::BadRequest(format!("{} bytes, more than {MAX_RPC_BODY}", body.len())));
        }
        let id = self.rpcs.next.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::with_capacity(body.len() + 16);
        encode_payload(&mut frame, &RpcRequest { id, service, body })
            .map_err(|e| RpcError::BadRequest(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        if !self.rpcs.pending.lock().insert(id, (Arc::from(node), service, tx)) {
            return Err(RpcError::Busy);
        }
        // Removes the entry however this future ends (answer, timeout, or being dropped).
        struct Forget<'a>(&'a Rpcs, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.pending.lock().remove(self.1);
            }
        }
        let _forget = Forget(&self.rpcs, id);
        if self.send_control(node, tag::RPC, &frame).is_err() {
            return Err(RpcError::NoConnection(node.to_owned()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok((remote, Ok(answer)))) => Ok((remote, answer)),
            Ok(Ok((_, Err(refused)))) => Err(refused.into()),
            Ok(Err(_)) => Err(RpcError::NoConnection(node.to_owned())),
            Err(_) => Err(RpcError::Timeout(node.to_owned(), timeout)),
        }
    }

    /// A request from `from`: served on its own task.
    pub(crate) fn serve_rpc(self: &Arc<Self>, from: NodeId, body: &[u8]) {
        let req = match decode_payload::<RpcRequest>(body) {
            Ok(r) => r,
            Err(e) => {
                self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                return tracing::warn!(peer = %from, error = %e, "dropped an RPC request that does not decode");
            }
        };
        let Some((service, serving)) = self.rpcs.services.read().get(&req.service).cloned() else {
            return self.reply_rpc(from, RpcReply { id: req.id, result: Err(RpcRefused::UnknownService(req.service)) });
        };
        if serving.fetch_add(1, Ordering::AcqRel) >= MAX_SERVING {
            serving.fetch_sub(1, Ordering::AcqRel);
            return self.reply_rpc(from, RpcReply { id: req.id, result: Err(RpcRefused::Busy(MAX_SERVING as u32)) });
        }
        let Some(node) = self.node.upgrade() else {
            serving.fetch_sub(1, Ordering::AcqRel);
            return;
        };
        let d = Arc::clone(self);
        node.rt.spawn(async move {
            // Released even if the service panics (the task unwinds through this guard).
            struct Release(Arc<AtomicUsize>);
            impl Drop for Release {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::AcqRel);
                }
            }
            let _release = Release(serving);
            let result = service.serve(from, req.body).await.map_err(RpcRefused::Failed);
            let result = match result {
                Ok(b) if b.len() > MAX_RPC_BODY => {
                    Err(RpcRefused::Failed(format!("answer of {} bytes, more than {MAX_RPC_BODY}", b.len())))
                }
                other => other,
            };
            d.reply_rpc(from, RpcReply { id: req.id, result });
        });
    }

    fn reply_rpc(&self, to: NodeId, reply: RpcReply) {
        let mut body = Vec::new();
        if let Err(e) = encode_payload(&mut body, &reply) {
            return tracing::warn!(error = %e, "RPC reply not encodable");
        }
        // The reply goes to the incarnation that asked; if it is gone, so is its request (a
        // newer incarnation's request ids are its own).
        let Some(s) = self.session_of(to) else { return };
        if s.control(tag::RPC_REPLY, &body).is_err() {
            tracing::debug!(peer = %to, "RPC reply not queued (connection full or gone)");
        }
    }

    /// A reply from a peer.
    pub(crate) fn complete_rpc(&self, from: NodeId, body: &[u8]) {
        match decode_payload::<RpcReply>(body) {
            Ok(rep) => {
                let waiting = self.rpcs.pending.lock().remove(rep.id);
                match waiting {
                    // Only the node asked may answer (a reply id from another peer is ignored).
                    Some((peer, _, tx)) if *peer == *from.name() => {
                        let _ = tx.send((from, rep.result));
                    }
                    Some(entry) => {
                        self.rpcs.pending.lock().insert(rep.id, entry);
                        self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(peer = %from, id = rep.id, "dropped an RPC reply for a request to another node");
                    }
                    None => {}
                }
            }
            Err(e) => {
                self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %from, error = %e, "dropped an RPC reply that does not decode");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(node: &str, service: u16) -> Waiting {
        (Arc::from(node), service, oneshot::channel().0)
    }

    #[test]
    fn the_pending_bound_is_per_service_and_counts_follow_removals() {
        let mut p = Pending::default();
        for id in 0..MAX_PENDING as u64 {
            assert!(p.insert(id, waiting("b", 4)));
        }
        assert!(!p.insert(u64::MAX, waiting("b", 4)), "spawns are at their bound");
        assert!(p.insert(u64::MAX, waiting("b", 2)), "Raft is not held up by them");
        assert!(p.remove(0).is_some());
        assert!(p.insert(0, waiting("c", 4)), "a slot freed is reusable");
        p.retain(|node| node != "b");
        assert_eq!(p.by_id.len(), 1, "only c's request is left");
        assert_eq!(p.per_service.get(&4), Some(&1));
        assert_eq!(p.per_service.get(&2), None);
        assert!(p.remove(7).is_none(), "an unknown id changes nothing");
    }
}

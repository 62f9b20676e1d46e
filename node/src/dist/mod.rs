//! Distribution (the Ganglion layer, part I): PIDs that work across nodes, over QUIC with mutual
//! TLS 1.3.
//!
//! One quinn endpoint per node (one UDP port) serves and dials. A connection to a peer is made
//! on first use, cached, and made again after loss; the [`arbiter`] decides which connection is
//! *the* one (one per pair of nodes) and when to back off. A [`session`] holds what this node
//! keeps per connection: lanes of outbound frames (per-pair order, G2; bounded, G8), calls
//! waiting for replies, and the index of links and monitors through it, whose end makes node
//! loss visible to processes (G3). [`inbound`] turns a peer's frames into local operations.
//!
//! Only members talk (G9): both ends present certificates of the cluster CA, and the name a
//! node claims in its handshake must be a name its certificate was issued for.
//!
//! The runtime calls in here (through `NodeShared`) whenever an operation names a PID of
//! another node; everything else never touches this layer.

mod api;
pub(crate) mod arbiter;
pub mod fault;
pub(crate) mod inbound;
pub mod rpc;
pub(crate) mod session;
pub mod spawn;
mod stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cluster_proto::codec::{DecodeError, MAX_CHUNK};
use cluster_proto::frame::{Head, Limits, RemoteCallError};
use cluster_proto::handshake::{self, HandshakeError, Hello, RejectReason, Reply};
use cluster_proto::{CorrelationId, ExitReason, MonitorRef, NodeId, Pid};
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::process::node::{CallError, NodeShared, SendError};
use crate::tls::NodeTls;
pub use api::PidRef;
pub use arbiter::Backoff;
use arbiter::{Arbiter, OnIncoming, OnUse, Slot};
use session::{lane_of, Class, Enqueue, Session};
pub use stats::DistStats;
use stats::Stats;

/// The QUIC application close codes a node closes connections with; the close reason (bytes)
/// says more, e.g. `protocol error: oversized`.
pub mod close {
    /// The node is shutting down, or was told to disconnect from the peer.
    pub const SHUTDOWN: u32 = 0;
    /// The peer broke the protocol: a bad or missing hello, a malformed, truncated, oversized or
    /// unknown frame, or an identity that cannot be used.
    pub const PROTOCOL: u32 = 1;
    /// The handshake was refused (wrong cluster, a name not in the certificate, a duplicate or
    /// stale connection ...): the reason is the `RejectReason`.
    pub const REJECTED: u32 = 2;
    /// Another connection between the two nodes replaced this one.
    pub const SUPERSEDED: u32 = 3;
    /// The peer sent more refused frames than [`FLOOD_REFUSALS`](super::FLOOD_REFUSALS) within
    /// [`FLOOD_WINDOW`](super::FLOOD_WINDOW).
    pub const FLOOD: u32 = 4;
}

/// More refused frames than this within [`FLOOD_WINDOW`] close the connection.
pub const FLOOD_REFUSALS: u32 = 10_000;
/// See [`FLOOD_REFUSALS`].
pub const FLOOD_WINDOW: Duration = Duration::from_secs(1);

/// Receives the control frames of one tag (gossip, later Raft) from every peer.
pub(crate) trait ControlHandler: Send + Sync + 'static {
    /// A frame from the peer incarnation `from`, whose connection comes from `addr`. Runs on the
    /// connection's reader: it must not block (hand the bytes to a bounded queue).
    fn on_control(&self, from: NodeId, addr: SocketAddr, body: &[u8]);
}

/// Why a control frame was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ControlError {
    /// No node is known at that address (or by that name).
    #[error("no known node at {0}")]
    Unknown(String),
    /// The peer is unreachable right now (dial failed or backing off).
    #[error("node {0} is unreachable")]
    Unreachable(String),
    /// The control lane is full (the frame was dropped, like a datagram).
    #[error("control lane to {0} is full")]
    Full(String),
}

/// How a node takes part in a cluster.
#[derive(Clone)]
pub struct DistConfig {
    /// The cluster's name (nodes of other clusters are refused).
    pub cluster: String,
    /// The UDP address to serve on (port 0: any).
    pub listen: SocketAddr,
    /// Certificates: the cluster CA and this node's certificate and key.
    pub tls: NodeTls,
    /// Codec limits.
    pub limits: Limits,
    /// QUIC keep-alive interval.
    pub keep_alive: Duration,
    /// A connection silent for this long is lost (node loss detection).
    pub idle_timeout: Duration,
    /// Most time for a dial and handshake (and for an accepted connection's handshake).
    pub connect_timeout: Duration,
    /// Bytes of queued messages per lane before senders are pushed back.
    pub lane_capacity: usize,
    /// Backoff after failed dials.
    pub backoff: Backoff,
    /// Known peers: name and address.
    pub peers: Vec<(String, SocketAddr)>,
    /// A switch that cuts this node off the network while set (fault tests; see [`fault`]).
    pub fault: Option<Arc<fault::NetFault>>,
}

impl DistConfig {
    /// Defaults for a node of `cluster` serving on `listen`: keep-alive 250 ms, idle timeout 1 s
    /// (a silent peer is down within a second), connect timeout 2 s, lanes of 1 MiB.
    pub fn new(cluster: impl Into<String>, listen: SocketAddr, tls: NodeTls) -> DistConfig {
        DistConfig {
            cluster: cluster.into(),
            listen,
            tls,
            limits: Limits::DEFAULT,
            keep_alive: Duration::from_millis(250),
            idle_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            lane_capacity: 1 << 20,
            backoff: Backoff::default(),
            peers: Vec::new(),
            fault: None,
        }
    }
}

/// Why distribution could not start.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The UDP socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The node's name is not the name in its certificate.
    #[error("node name {node:?} is not the certificate's name {cert:?}")]
    NameMismatch {
        /// The node's name.
        node: String,
        /// The certificate's.
        cert: String,
    },
    /// A configuration value is invalid.
    #[error("invalid distribution config: {0}")]
    Config(String),
}

/// Where an operation on a remote PID goes.
pub(crate) enum Route {
    Via(Arc<Session>),
    Gone(ExitReason),
}

struct State {
    arbiter: Arbiter,
    sessions: FxHashMap<Arc<str>, Arc<Session>>,
}

/// See the module docs.
pub(crate) struct Dist {
    node: Weak<NodeShared>,
    local: Arc<str>,
    creation: u64,
    cluster: String,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    limits: Limits,
    lane_capacity: usize,
    connect_timeout: Duration,
    addrs: Mutex<FxHashMap<Arc<str>, SocketAddr>>,
    /// The reverse of `addrs`, plus the addresses connected peers come from.
    addr_names: Mutex<FxHashMap<SocketAddr, Arc<str>>>,
    control: RwLock<FxHashMap<u8, Arc<dyn ControlHandler>>>,
    pub(crate) spawns: spawn::Spawns,
    pub(crate) rpcs: rpc::Rpcs,
    state: Mutex<State>,
    by_node: RwLock<FxHashMap<NodeId, Arc<Session>>>,
    stats: Arc<Stats>,
    started: Instant,
    closing: AtomicBool,
}

fn transport(cfg: &DistConfig) -> Result<Arc<quinn::TransportConfig>, DistError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(cfg.idle_timeout).map_err(|e| DistError::Config(e.to_string()))?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(cfg.keep_alive));
    // Lanes in each direction, plus slack for a restarted writer; one bidi stream for the
    // handshake. A peer cannot open more (bounds our reader tasks).
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(2 * session::ALL_LANES as u32));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(2));
    t.stream_receive_window(quinn::VarInt::from_u32(4 << 20));
    t.receive_window(quinn::VarInt::from_u32(16 << 20));
    t.send_window(16 << 20);
    t.datagram_receive_buffer_size(None);
    Ok(Arc::new(t))
}

impl Dist {
    /// Binds the endpoint and starts accepting (must run inside the node's runtime).
    pub(crate) fn start(node: &Arc<NodeShared>, cfg: DistConfig) -> Result<Arc<Dist>, DistError> {
        let local: Arc<str> = node.id.name();
        if cfg.tls.node_name() != &*local {
            return Err(DistError::NameMismatch { node: local.to_string(), cert: cfg.tls.node_name().to_owned() });
        }
        if cfg.limits.max_frame < handshake::MIN_MAX_FRAME
            || cfg.limits.max_frame as usize > cluster_proto::codec::HARD_LIMIT
        {
            return Err(DistError::Config(format!("max_frame {} out of range", cfg.limits.max_frame)));
        }
        let t = transport(&cfg)?;
        let server = cfg.tls.quinn_server_config(Arc::clone(&t));
        let client = cfg.tls.quinn_client_config(t);
        let endpoint = {
            let _g = node.rt.enter();
            let bind = |source| DistError::Bind { addr: cfg.listen, source };
            match &cfg.fault {
                None => quinn::Endpoint::server(server, cfg.listen).map_err(bind)?,
                Some(f) => {
                    let runtime = quinn::default_runtime()
                        .ok_or_else(|| DistError::Config("no async runtime for the endpoint".into()))?;
                    let std_socket = std::net::UdpSocket::bind(cfg.listen).map_err(bind)?;
                    let inner = runtime.wrap_udp_socket(std_socket).map_err(bind)?;
                    let socket = Arc::new(fault::Cuttable { inner, fault: Arc::clone(f) });
                    quinn::Endpoint::new_with_abstract_socket(
                        quinn::EndpointConfig::default(),
                        Some(server),
                        socket,
                        runtime,
                    )
                    .map_err(bind)?
                }
            }
        };
        let addrs: FxHashMap<Arc<str>, SocketAddr> =
            cfg.peers.iter().map(|(n, a)| (Arc::<str>::from(n.as_str()), *a)).collect();
        let addr_names = addrs.iter().map(|(n, a)| (*a, Arc::clone(n))).collect();
        let dist = Arc::new(Dist {
            node: Arc::downgrade(node),
            local: Arc::clone(&local),
            creation: node.id.creation(),
            cluster: cfg.cluster,
            endpoint,
            client,
            limits: cfg.limits,
            lane_capacity: cfg.lane_capacity.max(1),
            connect_timeout: cfg.connect_timeout,
            addrs: Mutex::new(addrs),
            addr_names: Mutex::new(addr_names),
            control: RwLock::new(FxHashMap::default()),
            spawns: spawn::Spawns::default(),
            rpcs: rpc::Rpcs::default(),
            state: Mutex::new(State { arbiter: Arbiter::new(local, cfg.backoff), sessions: FxHashMap::default() }),
            by_node: RwLock::new(FxHashMap::default()),
            stats: Arc::new(Stats::default()),
            started: Instant::now(),
            closing: AtomicBool::new(false),
        });
        dist.install_spawn_service();
        let d = Arc::clone(&dist);
        node.rt.spawn(async move { d.accept_loop().await });
        Ok(dist)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    pub(crate) fn add_peer(&self, name: &str, addr: SocketAddr) {
        let name: Arc<str> = Arc::from(name);
        if let Some(old) = self.addrs.lock().insert(Arc::clone(&name), addr) {
            if old != addr {
                self.addr_names.lock().remove(&old);
            }
        }
        self.addr_names.lock().insert(addr, name);
    }

    /// Installs the handler of control frames with `tag` (replacing any).
    pub(crate) fn set_control_handler(&self, tag: u8, handler: Arc<dyn ControlHandler>) {
        self.control.write().insert(tag, handler);
    }

    /// A control frame from a peer: to its handler, or counted as ignored.
    pub(crate) fn on_control(self: &Arc<Self>, from: NodeId, addr: SocketAddr, tag: u8, body: &[u8]) {
        match tag {
            cluster_proto::frame::tag::RPC => return self.serve_rpc(from, body),
            cluster_proto::frame::tag::RPC_REPLY => return self.complete_rpc(from, body),
            cluster_proto::frame::tag::PG => {
                let Some(node) = self.node.upgrade() else { return };
                if let Err(e) = node.pg.on_message(from, body) {
                    self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %from, error = %e, "dropped a bad process-group message");
                }
                return;
            }
            _ => {}
        }
        let h = self.control.read().get(&tag).cloned();
        match h {
            Some(h) => h.on_control(from, addr, body),
            None => {
                self.stats.control_ignored.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %from, tag, "control frame not handled by this node");
            }
        }
    }

    /// Sends a control frame to the node `name` (dialing it if needed). At most once, like a
    /// datagram: a frame queued on a connection that then fails is lost.
    pub(crate) fn send_control(self: &Arc<Self>, name: &str, tag: u8, body: &[u8]) -> Result<(), ControlError> {
        match self.route_name(name).via() {
            Some(s) => s.control(tag, body).map_err(|e| match e {
                Enqueue::Full => ControlError::Full(name.to_owned()),
                Enqueue::Dead | Enqueue::Encode(_) => ControlError::Unreachable(name.to_owned()),
            }),
            None => Err(ControlError::Unreachable(name.to_owned())),
        }
    }

    /// Sends a control frame to the node at `addr` (a configured peer address, or the address
    /// a connected peer comes from).
    pub(crate) fn send_control_to(
        self: &Arc<Self>,
        addr: SocketAddr,
        tag: u8,
        body: &[u8],
    ) -> Result<(), ControlError> {
        let name = self.addr_names.lock().get(&addr).cloned();
        match name {
            Some(n) => self.send_control(&n, tag, body),
            None => Err(ControlError::Unknown(addr.to_string())),
        }
    }

    pub(crate) fn stats(&self) -> DistStats {
        DistStats { rpc_pending: self.rpcs.pending_len() as u64, ..self.stats.snapshot() }
    }

    pub(crate) fn connected(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.by_node.read().keys().copied().collect();
        v.sort_by_key(|n| (n.name(), n.creation()));
        v
    }

    fn hello(&self) -> Hello {
        Hello {
            cluster: self.cluster.clone(),
            node: self.local.to_string(),
            creation: self.creation,
            max_frame: self.limits.max_frame,
        }
    }

    fn local_id(&self) -> handshake::Local<'_> {
        handshake::Local { cluster: &self.cluster, node: &self.local }
    }

    /// The session for operations on processes of `node` (dialing if needed).
    pub(crate) fn route(self: &Arc<Self>, node: NodeId) -> Route {
        if let Some(s) = self.by_node.read().get(&node) {
            if !s.is_dead() {
                return Route::Via(Arc::clone(s));
            }
        }
        self.route_slow(node.name(), Some(node.creation()), true)
    }

    /// The session to the node named `name`, whatever its incarnation (sends by name).
    pub(crate) fn route_name(self: &Arc<Self>, name: &str) -> Route {
        self.route_slow(Arc::from(name), None, true)
    }

    fn route_slow(self: &Arc<Self>, name: Arc<str>, creation: Option<u64>, retry: bool) -> Route {
        if self.closing.load(Ordering::Acquire) || name == self.local {
            return Route::Gone(ExitReason::NoConnection);
        }
        let now = self.now_ms();
        let mut st = self.state.lock();
        match st.arbiter.on_use(&name, now) {
            OnUse::Up { creation: c, .. } => match creation {
                Some(want) if want < c => Route::Gone(ExitReason::NoProc),
                Some(want) if want > c => {
                    // A PID of a newer incarnation than the one connected: the connection is
                    // to a node that has restarted (its close has not reached us yet). Drop it
                    // and dial the new one.
                    let old = st.sessions.get(&name).cloned();
                    drop(st);
                    let Some(old) = old.filter(|_| retry) else { return Route::Gone(ExitReason::NoConnection) };
                    tracing::info!(peer = %name, old = c, new = want, "peer restarted; reconnecting");
                    self.lost(&old);
                    self.route_slow(name, creation, false)
                }
                _ => {
                    st.sessions.get(&name).map_or(Route::Gone(ExitReason::NoConnection), |s| Route::Via(Arc::clone(s)))
                }
            },
            OnUse::Wait { .. } => match st.sessions.get(&name) {
                Some(s) if creation.is_none() || s.expected.is_none() || s.expected == creation => {
                    Route::Via(Arc::clone(s))
                }
                _ => Route::Gone(ExitReason::NoConnection),
            },
            OnUse::Dial { attempt } => {
                let Some(addr) = self.addrs.lock().get(&name).copied() else {
                    st.arbiter.on_dial_failed(&name, attempt, now);
                    tracing::debug!(peer = %name, "no address known for node");
                    return Route::Gone(ExitReason::NoConnection);
                };
                let s = self.new_session(Arc::clone(&name), attempt, creation);
                st.sessions.insert(name, Arc::clone(&s));
                drop(st);
                let (d, s2) = (Arc::clone(self), Arc::clone(&s));
                if let Some(node) = self.node.upgrade() {
                    node.rt.spawn(async move { d.dial(s2, addr).await });
                }
                Route::Via(s)
            }
            OnUse::Unreachable => Route::Gone(ExitReason::NoConnection),
        }
    }

    fn new_session(&self, peer: Arc<str>, id: arbiter::ConnId, expected: Option<u64>) -> Arc<Session> {
        Arc::new(Session::new(peer, id, expected, self.lane_capacity, self.limits, Arc::clone(&self.stats)))
    }

    /// An existing live session to `node` (never dials: for clean-up signals).
    fn existing(&self, node: NodeId) -> Option<Arc<Session>> {
        if let Some(s) = self.by_node.read().get(&node) {
            return Some(Arc::clone(s));
        }
        let st = self.state.lock();
        st.sessions.get(&*node.name()).filter(|s| s.remote.get().is_none_or(|r| *r == node)).cloned()
    }

    async fn dial(self: Arc<Self>, session: Arc<Session>, addr: SocketAddr) {
        let attempt = session.id();
        let peer = Arc::clone(&session.peer);
        let r = tokio::time::timeout(self.connect_timeout, self.handshake_out(&peer, addr, attempt)).await;
        let outcome = match r {
            Ok(Ok(Dialed::Welcomed(conn, hello))) => {
                let current = self.state.lock().arbiter.on_dialed(&peer, attempt, hello.creation);
                if current {
                    self.attach(session, conn, hello);
                } else {
                    conn.close(close::SUPERSEDED.into(), b"superseded");
                }
                return;
            }
            // Superseded here (its session lives on the peer's connection).
            Ok(Ok(Dialed::Crossed)) => {
                return tracing::debug!(%peer, "crossed dial dropped: the peer's connection is the one")
            }
            // The peer is dialing us and its dial wins: when its hello arrives, this session
            // (and all queued on it) carries over to that connection. Only if it does not
            // arrive in time is the peer unreachable.
            Ok(Ok(Dialed::PeersWins)) => {
                if tokio::time::timeout(self.connect_timeout, session.settled()).await.is_ok() {
                    return;
                }
                format!("the peer's own dial, which won, did not arrive within {:?}", self.connect_timeout)
            }
            Ok(Err(e)) => e,
            Err(_) => format!("no handshake within {:?}", self.connect_timeout),
        };
        self.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%peer, %addr, error = %outcome, "dial failed");
        let current = {
            let mut st = self.state.lock();
            let cur = st.arbiter.on_dial_failed(&peer, attempt, self.now_ms());
            if cur && st.sessions.get(&peer).is_some_and(|s| Arc::ptr_eq(s, &session)) {
                st.sessions.remove(&peer);
            }
            cur
        };
        if current {
            self.end_session(&session);
        }
    }

    /// Dial `attempt`'s handshake, up to the verdict (see [`Dialed`]).
    async fn handshake_out(&self, peer: &str, addr: SocketAddr, attempt: arbiter::ConnId) -> Result<Dialed, String> {
        let conn = self.endpoint.connect_with(self.client.clone(), addr, peer).map_err(|e| e.to_string())?;
        let conn = conn.await.map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&handshake::encode_hello(&self.hello())).await.map_err(|e| e.to_string())?;
        let mut reply = read_msg(&mut recv, handshake::decode_reply).await.map_err(|e| e.to_string())?;
        if reply == Reply::Alive {
            let replace = self.state.lock().arbiter.is_current_dial(peer, attempt);
            let confirm = handshake::encode_confirm(&handshake::Confirm { replace });
            send.write_all(&confirm).await.map_err(|e| e.to_string())?;
            if !replace {
                // The acceptor closes once it has read the answer; closing first would discard
                // it (the acceptor would count a failed handshake). Bounded all the same.
                let _ = send.finish();
                let _ = tokio::time::timeout(CLOSE_GRACE, conn.closed()).await;
                conn.close(close::SUPERSEDED.into(), b"crossed dial");
                return Ok(Dialed::Crossed);
            }
            reply = read_msg(&mut recv, handshake::decode_reply).await.map_err(|e| e.to_string())?;
        }
        match handshake::check_welcome(&self.local_id(), peer, reply) {
            Ok(hello) => {
                let _ = send.finish();
                Ok(Dialed::Welcomed(conn, hello))
            }
            Err(HandshakeError::Rejected(RejectReason::Duplicate)) => {
                conn.close(close::SUPERSEDED.into(), b"duplicate");
                Ok(Dialed::PeersWins)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The arbiter's verdict on an incoming connection from `peer`, applied to the sessions:
    /// the session it will carry (or why not) and the session it ends. `None`: ask the dialer
    /// first ([`OnIncoming::AskAlive`]).
    fn decide_incoming(&self, peer: &Arc<str>, creation: u64, confirmed: bool) -> Option<Decided> {
        let mut st = self.state.lock();
        match st.arbiter.on_incoming(peer, creation, confirmed) {
            OnIncoming::AskAlive => None,
            OnIncoming::Reject(r) => Some((Err(r), None)),
            OnIncoming::Accept { conn: id, supersedes } => {
                let old = st.sessions.remove(peer);
                let (session, ended) = match (supersedes, old) {
                    // Our own dial is superseded: its session (and what is queued on it)
                    // carries over to this connection.
                    (Some(Slot::Dialing { .. }), Some(s)) => {
                        s.id.store(id, Ordering::Release);
                        (s, None)
                    }
                    (_, old) => (self.new_session(Arc::clone(peer), id, None), old),
                };
                st.sessions.insert(Arc::clone(peer), Arc::clone(&session));
                Some((Ok(session), ended))
            }
        }
    }

    /// Asks a dialer already connected to us whether its new connection replaces the old
    /// one (see [`handshake`]); its answer, within the handshake's `deadline`.
    async fn ask_alive(
        &self,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
        deadline: tokio::time::Instant,
    ) -> Result<bool, String> {
        let exchange = async {
            send.write_all(&handshake::encode_reply(&Reply::Alive)).await.map_err(|e| e.to_string())?;
            let c = read_msg(recv, handshake::decode_confirm).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(c.replace)
        };
        tokio::time::timeout_at(deadline, exchange).await.map_err(|_| "no confirm in time".to_string())?
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            if self.closing.load(Ordering::Acquire) {
                incoming.refuse();
                continue;
            }
            let d = Arc::clone(&self);
            tokio::spawn(async move { d.accept(incoming).await });
        }
    }

    async fn accept(self: Arc<Self>, incoming: quinn::Incoming) {
        let remote_addr = incoming.remote_address();
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        // TLS first (a certificate the CA did not sign, or an expired one, ends here) ...
        let conn = match tokio::time::timeout_at(deadline, incoming).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                self.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                return tracing::info!(%remote_addr, error = %e, "incoming connection failed its TLS handshake");
            }
            Err(_) => {
                self.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                return tracing::info!(%remote_addr, "incoming connection did not finish its TLS handshake in time");
            }
        };
        // ... then our hello, in the same time budget.
        let r = tokio::time::timeout_at(deadline, async {
            let (send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
            let hello = read_msg(&mut recv, handshake::decode_hello).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((send, recv, hello))
        })
        .await;
        let (mut send, mut recv, hello) = match r {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                self.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%remote_addr, error = %e, "incoming connection sent a bad hello");
                return conn.close(close::PROTOCOL.into(), b"bad hello");
            }
            Err(_) => {
                self.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%remote_addr, "incoming connection sent no hello in time");
                return conn.close(close::PROTOCOL.into(), b"no hello in time");
            }
        };
        let verdict = handshake::check_hello(&self.local_id(), &hello)
            .and_then(|()| {
                crate::tls::peer_node_name_ok(&conn, &hello.node)
                    .map_err(|_| RejectReason::NotInCertificate(hello.node.clone()))
            })
            .and_then(|()| if self.closing.load(Ordering::Acquire) { Err(RejectReason::ShuttingDown) } else { Ok(()) });
        let peer: Arc<str> = Arc::from(hello.node.as_str());
        let mut confirmed = false;
        let (session, ended) = loop {
            if let Err(r) = &verdict {
                break (Err(r.clone()), None);
            }
            match self.decide_incoming(&peer, hello.creation, confirmed) {
                Some(decided) => break decided,
                None => match self.ask_alive(&mut send, &mut recv, deadline).await {
                    Ok(true) => confirmed = true,
                    Ok(false) => {
                        tracing::debug!(%peer, "crossed dial dropped: the peer keeps the connection in use");
                        return conn.close(close::SUPERSEDED.into(), b"crossed dial");
                    }
                    Err(e) => {
                        self.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%peer, %remote_addr, error = %e, "incoming connection did not confirm");
                        return conn.close(close::PROTOCOL.into(), b"no confirm");
                    }
                },
            }
        };
        if let Some(old) = ended {
            tracing::info!(%peer, "connection replaced by a new one from the peer");
            self.end_session(&old);
        }
        match session {
            Ok(session) => {
                let _ = send.write_all(&handshake::encode_reply(&Reply::Welcome(self.hello()))).await;
                let _ = send.finish();
                self.attach(session, conn, hello);
            }
            Err(reason) => {
                self.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, %remote_addr, %reason, "refused a connection");
                let _ = send.write_all(&handshake::encode_reply(&Reply::Reject(reason.clone()))).await;
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
                conn.close(close::REJECTED.into(), reason.to_string().as_bytes());
            }
        }
    }

    /// The handshake is done and this connection is the one: start moving frames.
    fn attach(self: &Arc<Self>, session: Arc<Session>, conn: quinn::Connection, hello: Hello) {
        let remote = match NodeId::intern(&hello.node, hello.creation) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(peer = %hello.node, error = %e, "cannot intern the peer's identity");
                conn.close(close::PROTOCOL.into(), b"identity");
                return self.lost(&session);
            }
        };
        let _ = session.remote.set(remote);
        session.set_conn(conn.clone());
        self.addr_names.lock().entry(conn.remote_address()).or_insert_with(|| Arc::clone(&session.peer));
        if let Some(expected) = session.expected.filter(|e| *e != hello.creation) {
            // What was queued was for another incarnation: its processes are gone.
            session.discard_queued();
            let reason = if expected < hello.creation { ExitReason::NoProc } else { ExitReason::NoConnection };
            let index = std::mem::take(&mut *session.index.lock());
            self.down_effects(index, reason);
        }
        self.by_node.write().insert(remote, Arc::clone(&session));
        if session.is_dead() {
            conn.close(close::SUPERSEDED.into(), b"ended");
            return self.lost(&session);
        }
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(peer = %remote, "connected");
        let Some(node) = self.node.upgrade() else { return };
        for lane in 0..session::ALL_LANES {
            node.rt.spawn(Arc::clone(&session).writer(lane, conn.clone()));
        }
        node.pg.peer_up(self, remote);
        let (d, s, c) = (Arc::clone(self), Arc::clone(&session), conn.clone());
        let n = Arc::clone(&node);
        node.rt.spawn(async move {
            while let Ok(recv) = c.accept_uni().await {
                let (d, s, c, n) = (Arc::clone(&d), Arc::clone(&s), c.clone(), Arc::clone(&n));
                tokio::spawn(async move { d.reader(n, s, remote, recv, c).await });
            }
        });
        let (d, s) = (Arc::clone(self), session);
        node.rt.spawn(async move {
            let why = conn.closed().await;
            tracing::info!(peer = %remote, reason = %why, "connection lost");
            d.lost(&s);
        });
    }

    /// The session's connection is gone (or never worked).
    fn lost(&self, session: &Arc<Session>) {
        {
            let mut st = self.state.lock();
            if st.arbiter.on_lost(&session.peer, session.id())
                && st.sessions.get(&session.peer).is_some_and(|s| Arc::ptr_eq(s, session))
            {
                st.sessions.remove(&session.peer);
            }
        }
        self.end_session(session);
    }

    fn end_session(&self, session: &Arc<Session>) {
        self.rpcs.peer_lost(&session.peer);
        if let Some(remote) = session.remote.get() {
            let mut by = self.by_node.write();
            if by.get(remote).is_some_and(|s| Arc::ptr_eq(s, session)) {
                by.remove(remote);
            }
            // Its members leave, unless another connection to the same incarnation took over.
            if !by.contains_key(remote) {
                drop(by);
                if let Some(node) = self.node.upgrade() {
                    node.pg.peer_down(*remote);
                }
            }
        }
        if let Some(conn) = session.conn.get() {
            conn.close(close::SUPERSEDED.into(), b"session ended");
        }
        if let Some(index) = session.end() {
            if session.conn.get().is_some() {
                self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
            }
            self.down_effects(index, Session::down_reason());
        }
    }

    /// Node loss, as processes see it (G3).
    fn down_effects(&self, index: session::PeerIndex, reason: ExitReason) {
        let Some(node) = self.node.upgrade() else { return };
        for (local, remote) in index.links {
            node.unlink_local_side(local, remote);
            if let Some(p) = node.lookup(local) {
                p.exit_signal(remote, reason.clone(), false);
            }
        }
        for (mref, (watcher, target)) in index.mon_out {
            if let Some(w) = node.lookup(watcher) {
                w.down(crate::Down { monitor: mref, pid: target, reason: reason.clone() });
            }
        }
        for (watcher, mref, target) in index.mon_in {
            node.demonitor_from_remote(watcher, target, mref);
        }
    }

    async fn reader(
        self: Arc<Self>,
        node: Arc<NodeShared>,
        session: Arc<Session>,
        remote: NodeId,
        mut recv: quinn::RecvStream,
        conn: quinn::Connection,
    ) {
        let mut fr = cluster_proto::codec::FrameReader::new(self.limits);
        let mut refusals = (Instant::now(), 0u32);
        let batch = self.limits.max_batch_frames.max(1);
        loop {
            let chunk = match recv.read_chunk(MAX_CHUNK, true).await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    if let Err(e) = fr.finish() {
                        self.protocol_error(&conn, remote, &e);
                    }
                    return;
                }
                Err(_) => return, // the connection's end is handled by its watcher
            };
            self.stats.bytes_in.fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
            if let Err(e) = fr.extend(&chunk.bytes) {
                return self.protocol_error(&conn, remote, &e);
            }
            let mut n = 0u32;
            // A call that found its callee idle: run here if this is the last frame buffered
            // (the reader would only wait for the network), else left to the scheduler.
            let mut claimed = None;
            loop {
                let f = match fr.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return self.protocol_error(&conn, remote, &e),
                };
                drop(claimed.take());
                if inbound::dispatch(&node, &session, remote, f, &mut claimed).is_err() {
                    if refusals.0.elapsed() > FLOOD_WINDOW {
                        refusals = (Instant::now(), 0);
                    }
                    refusals.1 += 1;
                    if refusals.1 > FLOOD_REFUSALS {
                        self.stats.floods.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(peer = %remote, refusals = refusals.1, "closing a flooding connection");
                        conn.close(close::FLOOD.into(), b"flood");
                        return;
                    }
                }
                n += 1;
                if n % batch == 0 {
                    drop(claimed.take());
                    tokio::task::yield_now().await;
                }
            }
            if let Some(c) = claimed {
                self.stats.inline_calls.fetch_add(1, Ordering::Relaxed);
                c.run_inline().await;
            }
        }
    }

    fn protocol_error(&self, conn: &quinn::Connection, remote: NodeId, e: &DecodeError) {
        self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = %remote, error = %e, "closing a connection: protocol error");
        conn.close(close::PROTOCOL.into(), format!("protocol error: {}", e.kind()).as_bytes());
    }

    // ---- operations on remote processes, called by the runtime ----

    pub(crate) fn send<M: Serialize + ?Sized>(
        self: &Arc<Self>,
        to: Pid,
        from: Option<Pid>,
        corr: Option<CorrelationId>,
        msg: &M,
    ) -> Result<(), SendError> {
        match self.route(to.node()) {
            Route::Via(s) => match s.send(from, to.serial(), corr, msg) {
                Ok(()) | Err(Enqueue::Dead) => Ok(()),
                Err(Enqueue::Full) => Err(SendError::Full(to)),
                Err(Enqueue::Encode(e)) => Err(SendError::Encode(e.to_string())),
            },
            Route::Gone(_) => Ok(()),
        }
    }

    pub(crate) async fn send_wait<M: Serialize + ?Sized>(
        self: &Arc<Self>,
        to: Pid,
        from: Option<Pid>,
        corr: Option<CorrelationId>,
        msg: &M,
    ) -> Result<(), SendError> {
        loop {
            let Route::Via(s) = self.route(to.node()) else { return Ok(()) };
            match s.send(from, to.serial(), corr, msg) {
                Ok(()) | Err(Enqueue::Dead) => return Ok(()),
                Err(Enqueue::Full) => s.wait_room(lane_of(from.map_or(0, Pid::serial), to.serial())).await,
                Err(Enqueue::Encode(e)) => return Err(SendError::Encode(e.to_string())),
            }
        }
    }

    pub(crate) fn send_named<M: Serialize + ?Sized>(
        self: &Arc<Self>,
        node: &str,
        name: &str,
        from: Option<Pid>,
        corr: Option<CorrelationId>,
        msg: &M,
    ) -> Result<(), SendError> {
        let Route::Via(s) = self.route_name(node) else { return Ok(()) };
        let f = from.map(Pid::serial);
        let head = Head::SendNamed { name, from: f, corr };
        let limits = self.limits;
        match s.enqueue(lane_of(f.unwrap_or(0), 0), Class::Message, |b| {
            cluster_proto::codec::encode_frame_with(b, &head, msg, &limits)
        }) {
            Ok(()) | Err(Enqueue::Dead) => Ok(()),
            Err(Enqueue::Full) => Err(SendError::FullNamed(name.to_owned())),
            Err(Enqueue::Encode(e)) => Err(SendError::Encode(e.to_string())),
        }
    }

    /// A call to a process of another node (`to`), or to a name there (`name`).
    pub(crate) async fn call<C: Serialize + ?Sized, R: DeserializeOwned>(
        self: &Arc<Self>,
        to: Result<Pid, (&str, &str)>,
        from: Option<Pid>,
        corr: Option<CorrelationId>,
        req: &C,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let route = match to {
            Ok(pid) => self.route(pid.node()),
            Err((node, _)) => self.route_name(node),
        };
        let s = match route {
            Route::Via(s) => s,
            Route::Gone(ExitReason::NoProc) => return Err(CallError::NoProc),
            Route::Gone(_) => return Err(CallError::NoConnection),
        };
        let Some((call_id, rx)) = s.register_call() else { return Err(CallError::NoConnection) };
        let f = from.map(Pid::serial);
        let limits = self.limits;
        let r = match to {
            Ok(pid) => {
                let head = Head::Call { call_id, to: pid.serial(), from: f, corr };
                s.enqueue(lane_of(f.unwrap_or(0), pid.serial()), Class::Call, |b| {
                    cluster_proto::codec::encode_frame_with(b, &head, req, &limits)
                })
            }
            Err((_, name)) => {
                let head = Head::CallNamed { call_id, name, from: f, corr };
                s.enqueue(lane_of(f.unwrap_or(0), 0), Class::Call, |b| {
                    cluster_proto::codec::encode_frame_with(b, &head, req, &limits)
                })
            }
        };
        if let Err(e) = r {
            s.forget_call(call_id);
            return Err(match e {
                Enqueue::Dead => CallError::NoConnection,
                Enqueue::Full => CallError::Full,
                Enqueue::Encode(e) => CallError::BadRequest(e.to_string()),
            });
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(bytes))) => cluster_proto::codec::decode_payload::<R>(&bytes)
                .map_err(|e| CallError::BadRequest(format!("reply does not decode: {e}"))),
            Ok(Ok(Err(e))) => Err(match e {
                RemoteCallError::NoProc => CallError::NoProc,
                RemoteCallError::Exited => CallError::Exited,
                RemoteCallError::Full => CallError::Full,
                RemoteCallError::BadRequest(m) => CallError::BadRequest(m),
                RemoteCallError::Busy => CallError::Busy,
            }),
            // The session ended: its pending calls fail at once (G3).
            Ok(Err(_)) => Err(CallError::NoConnection),
            Err(_) => {
                s.forget_call(call_id);
                Err(CallError::Timeout(timeout))
            }
        }
    }

    /// `local` links to `remote`. `Err`: the link cannot be made (the caller gets the exit
    /// signal with that reason).
    pub(crate) fn link(self: &Arc<Self>, local: Pid, remote: Pid) -> Result<(), ExitReason> {
        let s = match self.route(remote.node()) {
            Route::Via(s) => s,
            Route::Gone(r) => return Err(r),
        };
        if !s.index_insert(|i| {
            i.links.insert((local, remote));
        }) {
            return Err(ExitReason::NoConnection);
        }
        s.signal(lane_of(local.serial(), remote.serial()), &Head::Link { from: local.serial(), to: remote.serial() });
        Ok(())
    }

    pub(crate) fn unlink(&self, local: Pid, remote: Pid) {
        if let Some(s) = self.existing(remote.node()) {
            s.index.lock().links.remove(&(local, remote));
            s.signal(
                lane_of(local.serial(), remote.serial()),
                &Head::Unlink { from: local.serial(), to: remote.serial() },
            );
        }
    }

    pub(crate) fn monitor(self: &Arc<Self>, watcher: Pid, target: Pid, mref: MonitorRef) -> Result<(), ExitReason> {
        let s = match self.route(target.node()) {
            Route::Via(s) => s,
            Route::Gone(r) => return Err(r),
        };
        if !s.index_insert(|i| {
            i.mon_out.insert(mref, (watcher, target));
        }) {
            return Err(ExitReason::NoConnection);
        }
        s.signal(
            lane_of(watcher.serial(), target.serial()),
            &Head::Monitor { watcher: watcher.serial(), target: target.serial(), mref },
        );
        Ok(())
    }

    pub(crate) fn demonitor(&self, watcher: Pid, target: Pid, mref: MonitorRef) {
        if let Some(s) = self.existing(target.node()) {
            s.index.lock().mon_out.remove(&mref);
            s.signal(
                lane_of(watcher.serial(), target.serial()),
                &Head::Demonitor { watcher: watcher.serial(), target: target.serial(), mref },
            );
        }
    }

    /// An exit signal from local `from` to remote `to` (`linked`: because of a link, which is
    /// then gone).
    pub(crate) fn exit(self: &Arc<Self>, from: Pid, to: Pid, reason: ExitReason, kill: bool, linked: bool) {
        let s = if linked { self.existing(to.node()) } else { self.route(to.node()).via() };
        if let Some(s) = s {
            if linked {
                s.index.lock().links.remove(&(from, to));
            }
            s.signal(
                lane_of(from.serial(), to.serial()),
                &Head::Exit { from: from.serial(), to: to.serial(), reason, kill },
            );
        }
    }

    /// Local `pid`, monitored by remote `watcher` under `mref`, exited.
    pub(crate) fn down(&self, watcher: Pid, mref: MonitorRef, pid: Pid, reason: ExitReason) {
        if let Some(s) = self.existing(watcher.node()) {
            s.index.lock().mon_in.remove(&(watcher, mref, pid));
            s.signal(
                lane_of(pid.serial(), watcher.serial()),
                &Head::Down { watcher: watcher.serial(), mref, pid: pid.serial(), reason },
            );
        }
    }

    /// Closes every connection and stops accepting.
    pub(crate) fn shutdown(&self) {
        self.closing.store(true, Ordering::Release);
        let sessions: Vec<Arc<Session>> = {
            let mut st = self.state.lock();
            st.arbiter.clear();
            st.sessions.drain().map(|(_, s)| s).collect()
        };
        for s in sessions {
            self.end_session(&s);
        }
        self.endpoint.close(close::SHUTDOWN.into(), b"shutdown");
    }

    /// Cuts the connection to `name` (as a network failure would): for tests and operators.
    /// Queues a control frame to every connected peer (dropped where the lane is full).
    pub(crate) fn broadcast_control(&self, tag: u8, body: &[u8]) {
        let sessions: Vec<Arc<Session>> = self.by_node.read().values().cloned().collect();
        for s in sessions {
            let _ = s.control(tag, body);
        }
    }

    /// The live session to the incarnation `node`.
    pub(crate) fn session_of(&self, node: NodeId) -> Option<Arc<Session>> {
        self.by_node.read().get(&node).cloned()
    }

    /// The cluster's name.
    pub(crate) fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Membership says the incarnation `creation` of `name` is gone: close the connection to
    /// it, if that is the one connected (its session's end then delivers `noconnection`). A
    /// connection to a newer incarnation is left alone.
    pub(crate) fn node_down(&self, name: &str, creation: u64) -> bool {
        let s = self.state.lock().sessions.get(name).cloned();
        let Some(s) = s else { return false };
        let current = match s.remote.get() {
            Some(r) => r.creation() == creation,
            None => s.expected.is_none_or(|e| e == creation),
        };
        if !current {
            return false;
        }
        if let Some(c) = s.conn.get() {
            c.close(close::SHUTDOWN.into(), b"declared down by membership");
        }
        self.lost(&s);
        true
    }

    pub(crate) fn disconnect(&self, name: &str) -> bool {
        let s = self.state.lock().sessions.get(name).cloned();
        match s.and_then(|s| s.conn.get().cloned()) {
            Some(c) => {
                c.close(close::SHUTDOWN.into(), b"disconnect");
                true
            }
            None => false,
        }
    }
}

impl Route {
    fn via(self) -> Option<Arc<Session>> {
        match self {
            Route::Via(s) => Some(s),
            Route::Gone(_) => None,
        }
    }
}

/// A handshake decoder: the message and the bytes it used, or `None` while incomplete.
type Decoder<T> = fn(&[u8]) -> Result<Option<(T, usize)>, HandshakeError>;

/// Reads one handshake message from `recv` (bounded: at most one envelope and body).
/// How a dial's handshake ended, short of an error.
enum Dialed {
    /// Welcomed: the connection and the peer's identity.
    Welcomed(quinn::Connection, Hello),
    /// The peer asked (`Alive`) and this dial was superseded here meanwhile: dropped.
    Crossed,
    /// Refused as a duplicate: the peer is dialing us too, and its dial wins.
    PeersWins,
}

/// How long a dialer that told the acceptor "keep" waits for the acceptor to close.
const CLOSE_GRACE: Duration = Duration::from_millis(200);

/// An incoming connection's verdict: the session it carries (or why it is refused), and the
/// session it ends.
type Decided = (Result<Arc<Session>, RejectReason>, Option<Arc<Session>>);

async fn read_msg<T>(recv: &mut quinn::RecvStream, decode: Decoder<T>) -> Result<T, HandshakeError> {
    let mut buf = Vec::with_capacity(256);
    loop {
        let room = handshake::ENVELOPE_LEN + handshake::MAX_MESSAGE - buf.len();
        match recv.read_chunk(room.max(1), true).await {
            Ok(Some(c)) => buf.extend_from_slice(&c.bytes),
            Ok(None) => return Err(handshake::finish(buf.len())),
            Err(e) => return Err(HandshakeError::Unexpected(e.to_string())),
        }
        if let Some((msg, _)) = decode(&buf)? {
            return Ok(msg);
        }
        if buf.len() >= handshake::ENVELOPE_LEN + handshake::MAX_MESSAGE {
            return Err(HandshakeError::TooLong(buf.len()));
        }
    }
}

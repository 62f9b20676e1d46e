//! chitchat's transport over our QUIC connections: gossip rides mutual TLS (G9).
//!
//! chitchat talks to a [`Socket`] that sends a message to an address and receives messages with
//! the address they came from, UDP-style. Here a send becomes a control frame
//! ([`tag::GOSSIP`](cluster_proto::frame::tag::GOSSIP)) on the control lane of the connection
//! to the node at that address (dialed if needed), and a received frame is decoded and queued
//! for chitchat with the address its connection comes from. Only nodes with a certificate of
//! the cluster CA have connections, so only they can gossip.
//!
//! Semantics are a datagram's, which is what gossip expects: a message to an unknown address,
//! to an unreachable node or into a full control lane is dropped (and counted); a peer's
//! message that does not decode is dropped, counted and logged; the inbox towards chitchat is
//! bounded ([`INBOX`]) and drops when full.
//!
//! ## Limits (G8)
//!
//! A gossip message is at most [`MAX_GOSSIP`] bytes on the wire (chitchat's own datagram MTU).
//! Its decoder is chitchat's; it inflates zstd blocks of at most 64 KiB each, so a message can
//! expand to at most 64 KiB per block it carries — bounded, but a member that wanted to could
//! make its peers allocate up to a few hundred MiB for one message. Members are authenticated
//! (G9), so this needs a compromised node; the decode runs under `catch_unwind` as well, so a
//! decoder bug cannot take the node down.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use cluster_proto::frame::tag;
use cluster_proto::NodeId;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::dist::{ControlHandler, Dist};

/// Gossip messages queued towards chitchat at most.
pub(crate) const INBOX: usize = 1024;

/// Largest gossip message accepted or sent (chitchat's UDP payload limit).
pub(crate) const MAX_GOSSIP: usize = 65_507;

/// Counters of the gossip transport.
#[derive(Debug, Default)]
pub(crate) struct GossipStats {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub dropped_out: AtomicU64,
    pub dropped_in: AtomicU64,
    pub undecodable: AtomicU64,
}

/// Receives gossip frames from the distribution layer.
struct Inbox {
    tx: mpsc::Sender<(SocketAddr, ChitchatMessage)>,
    stats: Arc<GossipStats>,
}

impl ControlHandler for Inbox {
    fn on_control(&self, from: NodeId, addr: SocketAddr, body: &[u8]) {
        let decoded = if body.len() > MAX_GOSSIP {
            Err(format!("{} bytes, more than {MAX_GOSSIP}", body.len()))
        } else {
            let mut rest = body;
            match std::panic::catch_unwind(AssertUnwindSafe(|| ChitchatMessage::deserialize(&mut rest))) {
                Ok(Ok(m)) if rest.is_empty() => Ok(m),
                Ok(Ok(_)) => Err(format!("{} trailing bytes", rest.len())),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the gossip decoder panicked".to_owned()),
            }
        };
        match decoded {
            Ok(m) => {
                self.stats.received.fetch_add(1, Ordering::Relaxed);
                if self.tx.try_send((addr, m)).is_err() {
                    self.stats.dropped_in.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                let n = self.stats.undecodable.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(peer = %from, error = %e, dropped = n, "dropped a gossip message that does not decode");
                }
            }
        }
    }
}

/// The transport handed to chitchat; [`open`](Transport::open) works once.
pub(crate) struct QuicTransport {
    dist: Arc<Dist>,
    rx: Mutex<Option<mpsc::Receiver<(SocketAddr, ChitchatMessage)>>>,
    stats: Arc<GossipStats>,
}

impl QuicTransport {
    /// Installs the gossip handler on `dist` and returns the transport for chitchat.
    pub(crate) fn install(dist: &Arc<Dist>) -> (QuicTransport, Arc<GossipStats>) {
        let (tx, rx) = mpsc::channel(INBOX);
        let stats = Arc::new(GossipStats::default());
        dist.set_control_handler(tag::GOSSIP, Arc::new(Inbox { tx, stats: Arc::clone(&stats) }));
        (QuicTransport { dist: Arc::clone(dist), rx: Mutex::new(Some(rx)), stats: Arc::clone(&stats) }, stats)
    }
}

#[async_trait]
impl Transport for QuicTransport {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let rx = self.rx.lock().take().ok_or_else(|| anyhow::anyhow!("the gossip transport is already open"))?;
        Ok(Box::new(QuicSocket { dist: Arc::clone(&self.dist), rx, stats: Arc::clone(&self.stats), buf: Vec::new() }))
    }
}

struct QuicSocket {
    dist: Arc<Dist>,
    rx: mpsc::Receiver<(SocketAddr, ChitchatMessage)>,
    stats: Arc<GossipStats>,
    buf: Vec<u8>,
}

#[async_trait]
impl Socket for QuicSocket {
    /// Never fails: an undeliverable message is dropped, as a datagram would be (an error would
    /// stop chitchat's server loop for good).
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        self.buf.clear();
        msg.serialize(&mut self.buf);
        if self.buf.len() > MAX_GOSSIP {
            self.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%to, bytes = self.buf.len(), "gossip message too large, dropped");
            return Ok(());
        }
        match self.dist.send_control_to(to, tag::GOSSIP, &self.buf) {
            Ok(()) => {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(%to, error = %e, "gossip message dropped");
            }
        }
        if self.buf.capacity() > 4 * MAX_GOSSIP {
            self.buf = Vec::new();
        }
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        self.rx.recv().await.ok_or_else(|| anyhow::anyhow!("the gossip inbox is closed"))
    }
}

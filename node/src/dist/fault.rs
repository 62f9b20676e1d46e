//! A network fault a node can be put under from inside its own process: [`NetFault`], a switch
//! that silently drops every datagram the node's QUIC endpoint sends or receives while it is
//! set — a pulled cable, not a closed connection: peers see nothing at all, their connections
//! time out, gossip (which rides on the same endpoint) stops, and when the switch is cleared the
//! node is reachable again at the same address, the same incarnation.
//!
//! For fault tests and drills in one process, where `docker network disconnect` or a firewall
//! rule is not at hand. Off (`DistConfig::fault` = `None`), the endpoint uses quinn's own socket
//! and nothing of this module is on the path.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// A switch that cuts a node off the network (see the module docs). Shared: keep a clone to
/// flip it.
#[derive(Debug, Default)]
pub struct NetFault {
    cut: AtomicBool,
    dropped_out: AtomicU64,
    dropped_in: AtomicU64,
}

impl NetFault {
    /// A switch, not set.
    pub fn new() -> Arc<NetFault> {
        Arc::new(NetFault::default())
    }

    /// Drops every datagram from now on, both ways.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
    }

    /// Lets datagrams through again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::Release);
    }

    /// Whether the node is cut off now.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// Datagrams dropped so far: (sent, received).
    pub fn dropped(&self) -> (u64, u64) {
        (self.dropped_out.load(Ordering::Relaxed), self.dropped_in.load(Ordering::Relaxed))
    }
}

/// quinn's socket, with the switch in front of it.
pub(crate) struct Cuttable {
    pub(crate) inner: Arc<dyn AsyncUdpSocket>,
    pub(crate) fault: Arc<NetFault>,
}

impl fmt::Debug for Cuttable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cuttable").field("cut", &self.fault.is_cut()).finish()
    }
}

impl AsyncUdpSocket for Cuttable {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if self.fault.is_cut() {
            // "Sent": a datagram lost on the wire looks the same to the sender.
            self.fault.dropped_out.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.inner.poll_recv(cx, bufs, meta) {
                // Discarded; poll again, so that a `Pending` registers the waker.
                Poll::Ready(Ok(n)) if self.fault.is_cut() => {
                    self.fault.dropped_in.fetch_add(n as u64, Ordering::Relaxed);
                }
                other => return other,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

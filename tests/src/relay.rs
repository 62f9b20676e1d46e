//! A UDP relay between one client and one server on loopback that a test can cut: the way to
//! make a peer go *silent* (no close, no reset — like a cable pulled or a paused host) inside one
//! process.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use tokio::net::UdpSocket;

/// A running relay; it stops when dropped.
pub struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Relay {
    /// Starts a relay to `server`: datagrams sent to [`Relay::addr`] go to `server` (from the
    /// relay's own second socket), and the server's answers go back to the last client address.
    pub async fn start(server: SocketAddr) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind front"));
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind back"));
        let addr = front.local_addr().expect("front addr");
        let cut = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let forward = {
            let (front, back, cut, client) =
                (Arc::clone(&front), Arc::clone(&back), Arc::clone(&cut), Arc::clone(&client));
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *client.lock() = Some(from);
                    if !cut.load(Ordering::Acquire) {
                        let _ = back.send_to(&buf[..n], server).await;
                    }
                }
            })
        };
        let backward = {
            let (front, back, cut, client) = (front, back, Arc::clone(&cut), client);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, _)) = back.recv_from(&mut buf).await {
                    let to = *client.lock();
                    if let (false, Some(to)) = (cut.load(Ordering::Acquire), to) {
                        let _ = front.send_to(&buf[..n], to).await;
                    }
                }
            })
        };
        Relay { addr, cut, tasks: vec![forward, backward] }
    }

    /// Where clients should send (the server's stand-in address).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every datagram from now on, both ways (silently).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::Release);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

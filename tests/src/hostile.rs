//! A hostile peer: a raw QUIC client that speaks exactly as much of soma's protocol as a test
//! wants (any certificate or none, any hello, any bytes on a lane stream), to check what a node
//! does with it.

use std::net::SocketAddr;
use std::sync::Arc;

use cluster_proto::handshake::{
    decode_hello, decode_reply, encode_confirm, encode_hello, encode_reply, Confirm, HandshakeError, Hello, Reply,
};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;
use soma::tls::{crypto_provider, NodeTls, PemPair, ALPN};

/// What a peer presents: a certificate and key, or nothing.
pub enum Identity<'a> {
    /// No client certificate at all.
    None,
    /// This certificate and key (possibly expired, possibly from another CA).
    Cert(&'a PemPair),
}

/// A QUIC client configuration trusting `ca_pem` and presenting `id`, built straight from
/// rustls so that nothing checks the certificate before the node does.
pub fn client_config(ca_pem: &str, id: Identity<'_>) -> quinn::ClientConfig {
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(der.expect("CA PEM")).expect("CA cert");
    }
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots);
    let mut cfg = match id {
        Identity::None => builder.with_no_client_auth(),
        Identity::Cert(pair) => {
            let chain: Vec<_> =
                CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes()).collect::<Result<_, _>>().expect("cert PEM");
            let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).expect("key PEM");
            builder.with_client_auth_cert(chain, key).expect("client auth")
        }
    };
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(cfg).expect("QUIC client config")))
}

/// A raw connection to a node.
pub struct RawPeer {
    /// The client endpoint (kept alive with the connection).
    pub endpoint: quinn::Endpoint,
    /// The connection.
    pub conn: quinn::Connection,
}

impl RawPeer {
    /// Connects to the node at `addr`, expecting it to be called `server_name`. Under TLS 1.3
    /// this succeeds even when the node will refuse the client's certificate: the refusal shows
    /// on the first stream operation.
    pub async fn connect(cfg: quinn::ClientConfig, addr: SocketAddr, server_name: &str) -> Result<RawPeer, String> {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).map_err(|e| e.to_string())?;
        let conn = endpoint
            .connect_with(cfg, addr, server_name)
            .map_err(|e| format!("connect: {e}"))?
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        Ok(RawPeer { endpoint, conn })
    }

    /// Sends `hello` on a new bidirectional stream and reads the node's reply.
    pub async fn hello(&self, hello: &Hello) -> Result<Reply, String> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| format!("open_bi: {e}"))?;
        send.write_all(&encode_hello(hello)).await.map_err(|e| format!("write hello: {e}"))?;
        read_reply(&mut recv).await
    }

    /// Sends `hello`; if the node answers [`Reply::Alive`], answers it with a `Confirm` of
    /// `replace` and, after `replace: true`, reads the node's next reply too. Every reply, in
    /// order.
    pub async fn hello_confirming(&self, hello: &Hello, replace: bool) -> Result<Vec<Reply>, String> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| format!("open_bi: {e}"))?;
        send.write_all(&encode_hello(hello)).await.map_err(|e| format!("write hello: {e}"))?;
        let first = read_reply(&mut recv).await?;
        if first != Reply::Alive {
            return Ok(vec![first]);
        }
        send.write_all(&encode_confirm(&Confirm { replace })).await.map_err(|e| format!("write confirm: {e}"))?;
        if !replace {
            return Ok(vec![first]);
        }
        Ok(vec![first, read_reply(&mut recv).await?])
    }

    /// Writes `bytes` on a new unidirectional (lane) stream; finishes it if `finish`.
    pub async fn write_lane(&self, bytes: &[u8], finish: bool) -> Result<quinn::SendStream, String> {
        let mut s = self.conn.open_uni().await.map_err(|e| format!("open_uni: {e}"))?;
        s.write_all(bytes).await.map_err(|e| format!("write: {e}"))?;
        if finish {
            s.finish().map_err(|e| format!("finish: {e}"))?;
        }
        Ok(s)
    }

    /// Waits for the connection to close; returns the node's close code and reason when the
    /// node closed it at the application level, else the error's text as the reason.
    pub async fn closed(&self) -> (Option<u64>, String) {
        match self.conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(c) => {
                (Some(c.error_code.into_inner()), String::from_utf8_lossy(&c.reason).into_owned())
            }
            e => (None, e.to_string()),
        }
    }
}

/// Reads one handshake reply (and nothing after it: the node writes its next message only
/// once it has heard from us).
async fn read_reply(recv: &mut quinn::RecvStream) -> Result<Reply, String> {
    read_msg(recv, decode_reply).await
}

/// A handshake decoder (`decode_hello`, `decode_reply`, ...).
type Decoder<T> = fn(&[u8]) -> Result<Option<(T, usize)>, HandshakeError>;

/// Reads one handshake message with `decode`.
async fn read_msg<T>(recv: &mut quinn::RecvStream, decode: Decoder<T>) -> Result<T, String> {
    let mut got = Vec::new();
    loop {
        if let Some((msg, _)) = decode(&got).map_err(|e| format!("handshake message: {e}"))? {
            return Ok(msg);
        }
        match recv.read_chunk(1024, true).await.map_err(|e| format!("read: {e}"))? {
            Some(c) => got.extend_from_slice(&c.bytes),
            None => return Err(format!("stream ended after {} bytes of a handshake message", got.len())),
        }
    }
}

/// A raw node: a QUIC endpoint that serves and dials with a real node certificate and speaks
/// the handshake by hand, so a test can order both halves of a simultaneous connect.
pub struct RawNode {
    /// The endpoint (server and client).
    pub endpoint: quinn::Endpoint,
}

/// A connection a [`RawNode`] accepted, up to the dialer's `Hello`.
pub struct Accepted {
    /// The connection.
    pub conn: quinn::Connection,
    /// The handshake stream's sending half (for the reply).
    pub send: quinn::SendStream,
    /// The dialer's `Hello`.
    pub hello: Hello,
}

impl RawNode {
    /// A raw node on loopback presenting `pair` (issued by the CA in `ca_pem`).
    pub fn new(ca_pem: &str, pair: &PemPair) -> RawNode {
        let tls = NodeTls::from_pem(ca_pem, &pair.cert_pem, &pair.key_pem).expect("node TLS");
        let mut endpoint =
            quinn::Endpoint::server(tls.server_config(), "127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        endpoint.set_default_client_config(tls.client_config());
        RawNode { endpoint }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("bound")
    }

    /// Accepts the next connection and reads the dialer's `Hello`.
    pub async fn accept_hello(&self) -> Result<Accepted, String> {
        let incoming = self.endpoint.accept().await.ok_or("endpoint closed")?;
        let conn = incoming.await.map_err(|e| format!("TLS: {e}"))?;
        let (send, mut recv) = conn.accept_bi().await.map_err(|e| format!("accept_bi: {e}"))?;
        let hello = read_msg(&mut recv, decode_hello).await?;
        Ok(Accepted { conn, send, hello })
    }

    /// Dials the node at `addr` named `name` (the handshake is the caller's, on the result).
    pub async fn dial(&self, addr: SocketAddr, name: &str) -> Result<RawPeer, String> {
        let conn = self
            .endpoint
            .connect(addr, name)
            .map_err(|e| format!("connect: {e}"))?
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        Ok(RawPeer { endpoint: self.endpoint.clone(), conn })
    }
}

impl Accepted {
    /// Answers the dialer with `reply` and finishes the handshake stream.
    pub async fn reply(&mut self, reply: &Reply) -> Result<(), String> {
        self.send.write_all(&encode_reply(reply)).await.map_err(|e| format!("write reply: {e}"))?;
        self.send.finish().map_err(|e| format!("finish: {e}"))
    }
}

/// A hello from `node` of `cluster`.
pub fn hello(cluster: &str, node: &str, creation: u64) -> Hello {
    Hello {
        cluster: cluster.into(),
        node: node.into(),
        creation,
        max_frame: cluster_proto::frame::Limits::DEFAULT.max_frame,
    }
}

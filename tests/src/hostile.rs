//! A hostile peer: a raw QUIC client that speaks exactly as much of soma's protocol as a test
//! wants (any certificate or none, any hello, any bytes on a lane stream), to check what a node
//! does with it.

use std::net::SocketAddr;
use std::sync::Arc;

use cluster_proto::handshake::{decode_reply, encode_hello, Hello, Reply};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;
use soma::tls::{crypto_provider, PemPair, ALPN};

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
        let mut got = Vec::new();
        loop {
            if let Some((reply, _)) = decode_reply(&got).map_err(|e| format!("reply: {e}"))? {
                return Ok(reply);
            }
            match recv.read_chunk(1024, true).await.map_err(|e| format!("read reply: {e}"))? {
                Some(c) => got.extend_from_slice(&c.bytes),
                None => return Err(format!("stream ended after {} bytes of reply", got.len())),
            }
        }
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

/// A hello from `node` of `cluster`.
pub fn hello(cluster: &str, node: &str, creation: u64) -> Hello {
    Hello {
        cluster: cluster.into(),
        node: node.into(),
        creation,
        max_frame: cluster_proto::frame::Limits::DEFAULT.max_frame,
    }
}

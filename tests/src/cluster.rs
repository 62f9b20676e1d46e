//! Multi-node helpers: a test CA and distributed nodes on loopback (real QUIC, real mTLS).

use std::net::SocketAddr;

use soma::tls::{generate_ca, issue_node_cert, NodeTls, PemPair, Validity};
use soma::{DistConfig, Node, NodeConfig};

/// A cluster CA for one test.
pub struct TestCa {
    ca: PemPair,
}

impl TestCa {
    /// A fresh CA.
    pub fn new() -> TestCa {
        crate::test_log();
        TestCa { ca: generate_ca("test").expect("CA") }
    }

    /// The CA certificate (PEM), what every node trusts.
    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// A certificate and key for `name` with the given validity (expired ones included).
    pub fn issue(&self, name: &str, validity: Validity) -> PemPair {
        issue_node_cert(&self.ca, name, &[], validity).expect("node cert")
    }

    /// TLS material for node `name`, issued by this CA.
    pub fn node_tls(&self, name: &str) -> NodeTls {
        let leaf = issue_node_cert(&self.ca, name, &[], Validity::days_from_now(1)).expect("node cert");
        NodeTls::from_pem(&self.ca.cert_pem, &leaf.cert_pem, &leaf.key_pem).expect("node TLS")
    }

    /// A distribution config for `name` on a free loopback port.
    pub fn config(&self, name: &str) -> DistConfig {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        DistConfig::new("test", any, self.node_tls(name))
    }

    /// Starts a distributed node `name` (creation given, so restarts are distinguishable).
    pub fn node(&self, name: &str, creation: u64) -> Node {
        self.node_with(name, creation, self.config(name))
    }

    /// Starts a distributed node with a given config.
    pub fn node_with(&self, name: &str, creation: u64, cfg: DistConfig) -> Node {
        let mut nc = NodeConfig::named(name);
        nc.creation = Some(creation);
        Node::start_distributed(nc, cfg).expect("distributed node")
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// Tells each node where the others are.
pub fn mesh(nodes: &[&Node]) {
    for a in nodes {
        for b in nodes {
            if a.id() != b.id() {
                a.add_peer(&b.id().name(), b.local_addr().expect("distributed"));
            }
        }
    }
}

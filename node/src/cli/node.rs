//! `soma node`: runs a distributed node with the demo agent until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use soma::tls::NodeTls;
use soma::{DistConfig, Node, NodeConfig, SpawnOpts};

use super::demo::{DemoEcho, ECHO_NAME};
use super::{parse_peer, CertArgs, Peer};

/// How long processes get to stop after Ctrl-C or SIGTERM before they are killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// `soma node` arguments.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct NodeArgs {
    /// This node's name: must be the name in its certificate. Its PIDs read
    /// <NAME.CREATION.SERIAL>.
    #[arg(long, env = "SOMA_NAME", default_value = "soma")]
    pub name: String,
    /// UDP address to serve QUIC on.
    #[arg(long, env = "SOMA_LISTEN", default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// Cluster name: must be the same on every node (nodes of another cluster are refused).
    #[arg(long, env = "SOMA_CLUSTER", default_value = soma::tls::DEFAULT_CLUSTER)]
    pub cluster: String,
    #[command(flatten)]
    pub certs: CertArgs,
    /// Another node and its UDP address, NAME=HOST:PORT (repeatable; comma-separated in
    /// SOMA_PEER). Connections are made on first use.
    #[arg(long = "peer", value_name = "NAME=ADDR", env = "SOMA_PEER", value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<Peer>,
    /// Creation (incarnation) number [default: the start time in ms since the Unix epoch, so a
    /// restarted node is a new incarnation and old PIDs never reach its processes].
    #[arg(long, env = "SOMA_CREATION")]
    pub creation: Option<u64>,
}

/// Runs the node until Ctrl-C or SIGTERM (call outside any runtime: it builds its own).
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let paths = args.certs.paths(&args.name);
    let tls = NodeTls::load(&paths).with_context(|| format!("loading the certificates of node {:?}", args.name))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    rt.block_on(serve(args, tls))
}

async fn serve(args: NodeArgs, tls: NodeTls) -> anyhow::Result<()> {
    let mut dist = DistConfig::new(args.cluster.clone(), args.listen, tls);
    dist.peers = args.peers.iter().map(|p| (p.name.clone(), p.addr)).collect();
    let config = NodeConfig { creation: args.creation, ..NodeConfig::named(args.name.clone()) };
    let node = Node::start_distributed(config, dist).with_context(|| format!("starting node {:?}", args.name))?;
    let addr = node.local_addr().map_or_else(|| args.listen.to_string(), |a| a.to_string());
    tracing::info!(node = %node.id(), listen = %addr, cluster = %args.cluster, peers = args.peers.len(), "node up");

    let echo = node
        .spawn::<DemoEcho>((), SpawnOpts { register: Some(ECHO_NAME.to_owned()), ..SpawnOpts::labeled(ECHO_NAME) })
        .context("spawning the demo agent")?;
    tracing::info!(pid = %echo.pid(), name = ECHO_NAME, behaviour = "demo.echo", "demo agent up");
    println!("echo agent: {}", echo.pid());

    let stopped_by = stop_signal().await;
    match &stopped_by {
        Ok(sig) => tracing::info!(signal = sig, "stopping"),
        Err(e) => tracing::error!(error = %e, "cannot wait for signals; stopping"),
    }
    node.shutdown(SHUTDOWN_GRACE).await;
    tracing::info!(node = %node.id(), "node stopped");
    stopped_by.map(|_| ())
}

/// Waits for Ctrl-C (SIGINT) or, on Unix, SIGTERM; returns which.
async fn stop_signal() -> anyhow::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT").context("waiting for Ctrl-C"),
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        Ok("Ctrl-C")
    }
}

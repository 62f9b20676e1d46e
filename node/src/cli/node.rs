//! `soma node`: the node daemon. Starts a distributed node from its configuration
//! ([`config`](super::config)), joins the cluster's membership through its seeds, registers the
//! demo behaviours (so `soma spawn demo.echo` works with no code), serves the admin API, and
//! runs until SIGTERM or Ctrl-C, then leaves gracefully: peers are told (they see the node
//! *left*, not *failed*), processes are stopped in order (children before parents, with a
//! grace period, then killed), and connections are closed.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use soma::admin::http::AdminServer;
use soma::admin::Admin;
use soma::membership::{Membership, MembershipConfig, Role};
use soma::raft::node::{RaftConfig, RaftNode};
use soma::tls::{NodeTls, Validity};
use soma::{DistConfig, Node, NodeConfig, SpawnOpts};

use super::config::{read_token_file, resolve, FileConfig, NodeArgs, Settings, TokenSource};
use soma::demo::{DemoEcho, ECHO_NAME};

/// How long processes get to stop after SIGTERM before they are killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long the leave announcement gets to spread before gossip stops.
const LEAVE_GRACE: Duration = Duration::from_millis(500);

/// Runs the node until Ctrl-C or SIGTERM (call outside any runtime: it builds its own).
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(p) => FileConfig::read(p).map_err(|e| anyhow!("configuration file: {e}"))?,
        None => FileConfig::default(),
    };
    let settings = resolve(&args, &file).map_err(|e| anyhow!("configuration: {e}"))?;
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating the data directory {}", settings.data_dir.display()))?;
    let tls = load_or_make_tls(&settings)?;
    let token = match &settings.token {
        TokenSource::None => None,
        TokenSource::Inline(t) => Some(t.clone()),
        TokenSource::File(f) => Some(read_token_file(f).map_err(|e| anyhow!(e))?),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    rt.block_on(serve(settings, tls, token))
}

/// Loads the node's certificates; with no certificate location configured and none there
/// yet, and no other node to agree with (no seeds or peers), makes a single-node CA and
/// certificate under the data directory (so `soma node` with no configuration just works).
fn load_or_make_tls(s: &Settings) -> anyhow::Result<NodeTls> {
    let missing = !s.tls.ca.exists() && !s.tls.cert.exists() && !s.tls.key.exists();
    if missing && s.tls_defaulted {
        if !s.seeds.is_empty() || !s.peers.is_empty() {
            bail!(
                "no certificates in {} and this node joins others: make them with `soma cert ca` and \
                 `soma cert node {}` from the cluster's CA, then point --certs at them",
                s.tls.ca.parent().map_or_else(|| ".".into(), |p| p.display().to_string()),
                s.name
            );
        }
        let dir = s.tls.ca.parent().unwrap_or(Path::new("."));
        soma::tls::write_ca(dir, &s.cluster, Validity::days_from_now(soma::tls::DEFAULT_CA_DAYS), false)
            .context("making a single-node CA")?;
        soma::tls::write_node_cert(
            dir,
            dir,
            &s.name,
            &[],
            Validity::days_from_now(soma::tls::DEFAULT_NODE_DAYS),
            false,
        )
        .context("making this node's certificate")?;
        tracing::warn!(
            dir = %dir.display(),
            "no certificates configured: made a single-node cluster CA and certificate; to add nodes, \
             issue their certificates with `soma cert node NAME --ca-dir {}`",
            dir.display()
        );
    }
    NodeTls::load(&s.tls).with_context(|| format!("loading the certificates of node {:?}", s.name))
}

/// Resolves `host:port` now (docker service names, DNS), preferring IPv4.
async fn resolve_addr(hostport: &str) -> anyhow::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host(hostport).await.with_context(|| format!("cannot resolve {hostport:?}"))?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| anyhow!("{hostport:?} resolves to nothing"))
}

async fn serve(s: Settings, tls: NodeTls, token: Option<String>) -> anyhow::Result<()> {
    let mut dist = DistConfig::new(s.cluster.clone(), s.listen, tls);
    dist.peers = s.peers.iter().map(|p| (p.name.clone(), p.addr)).collect();
    let config = NodeConfig { creation: s.creation, ..NodeConfig::named(s.name.clone()) };
    let node = Node::start_distributed(config, dist).with_context(|| format!("starting node {:?}", s.name))?;
    let bound = node.local_addr().ok_or_else(|| anyhow!("the QUIC endpoint has no address"))?;
    let advertise = match &s.advertise {
        Some(a) => resolve_addr(a).await.map(|r| SocketAddr::new(r.ip(), r.port()))?,
        None => bound,
    };
    soma::demo::register(&node).context("registering the demo behaviours")?;

    // The admin address others see: the advertised host with the admin port when the API
    // listens on every interface.
    let admin_seen =
        if s.admin.ip().is_unspecified() { SocketAddr::new(advertise.ip(), s.admin.port()) } else { s.admin };
    let mcfg = MembershipConfig {
        role: s.role,
        providers: s.providers.clone(),
        capacity: s.capacity,
        admin: Some(admin_seen),
        advertise: Some(advertise),
        advertise_host: s.advertise.clone(),
        seeds: s.seeds.clone(),
        gossip_interval: s.gossip_interval,
        phi_threshold: s.phi,
        ..MembershipConfig::default()
    };
    let membership = Membership::join(&node, mcfg).await.context("joining the cluster")?;
    let raft = match s.role {
        Role::Hot => {
            let rcfg = RaftConfig::new(s.data_dir.join("raft"), s.raft_voters);
            Some(RaftNode::start(&node, &membership, rcfg).await.context("starting Raft")?)
        }
        Role::Cold => None,
    };
    let children = soma::csup::Children::install(&node);
    let csup = match &raft {
        Some(r) => Some(
            soma::csup::ClusterSupervisor::start(&node, &membership, r, &children)
                .context("starting the cluster supervisor")?,
        ),
        None => None,
    };
    let admin =
        Admin::new(node.clone(), Some(membership.clone())).with_raft(raft.clone()).with_cluster_supervisor(csup);
    let server = AdminServer::start(admin, s.admin, token).await.context("starting the admin API")?;
    tracing::info!(
        node = %node.id(),
        role = %s.role,
        providers = %s.providers.join(","),
        quic = %bound,
        %advertise,
        admin = %server.local_addr(),
        seeds = s.seeds.len(),
        "node up"
    );

    let echo = node
        .spawn::<DemoEcho>((), SpawnOpts { register: Some(ECHO_NAME.to_owned()), ..SpawnOpts::labeled(ECHO_NAME) })
        .context("spawning the demo agent")?;
    tracing::info!(pid = %echo.pid(), name = ECHO_NAME, behaviour = "demo.echo", "demo agent up");
    println!("echo agent: {}", echo.pid());

    let stopped_by = stop_signal().await;
    match &stopped_by {
        Ok(sig) => tracing::info!(signal = sig, "leaving the cluster"),
        Err(e) => tracing::error!(error = %e, "cannot wait for signals; leaving"),
    }
    membership.leave(LEAVE_GRACE).await;
    server.stop().await;
    if let Some(r) = &raft {
        r.shutdown().await;
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

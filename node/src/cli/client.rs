//! `soma send` and `soma call`: one-shot clients. Each starts a short-lived distributed node of
//! its own, connects to the target's node, acts from a process of its own (so the far side sees
//! a real sender PID), prints the outcome and exits.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use soma::tls::NodeTls;
use soma::{Behaviour, CallError, Context, DistConfig, Error, Node, NodeConfig, Pid, PidRef, SendError, SpawnOpts};
use tokio::sync::oneshot;

use super::demo::DemoEcho;
use super::{parse_duration, parse_peer, CertArgs, Peer};

/// A registered name no node uses: a call to it is answered `noproc` by the far node, which
/// makes it a round trip that touches nothing there.
const PROBE_NAME: &str = "soma.cli.probe";

/// Options every one-shot client takes.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ClientArgs {
    /// Name of this short-lived node: must be the name in its certificate (`soma cert node
    /// cli`). Each run is a new incarnation (creation = start time in ms), so runs one after
    /// another never clash.
    #[arg(long, env = "SOMA_CLI_NAME", default_value = "cli")]
    pub name: String,
    /// Cluster name (must be the target node's).
    #[arg(long, env = "SOMA_CLUSTER", default_value = soma::tls::DEFAULT_CLUSTER)]
    pub cluster: String,
    #[command(flatten)]
    pub certs: CertArgs,
    /// A node and its UDP address, NAME=HOST:PORT (repeatable; comma-separated in SOMA_PEER).
    /// The PID's node must be one of them.
    #[arg(long = "peer", value_name = "NAME=ADDR", env = "SOMA_PEER", value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<Peer>,
    /// How long to wait for the connection, and then for the reply (e.g. 500ms, 5s).
    #[arg(long, env = "SOMA_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `soma send` arguments.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct SendArgs {
    /// The target's PID, e.g. '<a.1732512345678.3>' (quote it: < and > are shell redirections)
    /// or a.1732512345678.3.
    pub pid: Pid,
    /// The message: a string, the demo agent's message type.
    pub text: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `soma call` arguments.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct CallArgs {
    /// The target's PID, e.g. '<a.1732512345678.3>' (quote it: < and > are shell redirections)
    /// or a.1732512345678.3.
    pub pid: Pid,
    /// The request: a string, the demo agent's call type.
    pub text: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What the client process does.
enum Op {
    Send(String),
    Call(String, Duration),
}

/// Why the client process's act failed.
enum ActError {
    Send(SendError),
    Call(CallError),
}

type Done = oneshot::Sender<Result<Option<String>, ActError>>;

/// The process the client acts from: its `init` does the one thing and reports through `done`.
struct ClientProc;

impl Behaviour for ClientProc {
    type Args = (PidRef<DemoEcho>, Op, Done);
    type Msg = ();
    type Call = ();
    type Reply = ();

    fn name() -> &'static str {
        "cli.client"
    }

    async fn init(ctx: &mut Context<Self>, (to, op, done): Self::Args) -> Result<Self, Error> {
        let r = match op {
            Op::Send(text) => ctx.send_to(to.pid(), text).map(|()| None).map_err(ActError::Send),
            Op::Call(text, timeout) => ctx.call_ref(&to, text, timeout).await.map(Some).map_err(ActError::Call),
        };
        let _ = done.send(r);
        Ok(ClientProc)
    }
}

/// `soma send PID TEXT`.
pub fn run_send(args: SendArgs) -> anyhow::Result<()> {
    let pid = args.pid;
    let out = run_client(&args.client, pid, Op::Send(args.text))?;
    if out.is_none() {
        println!("sent to {pid}");
    }
    Ok(())
}

/// `soma call PID TEXT`.
pub fn run_call(args: CallArgs) -> anyhow::Result<()> {
    let timeout = args.client.timeout;
    if let Some(reply) = run_client(&args.client, args.pid, Op::Call(args.text, timeout))? {
        println!("{reply}");
    }
    Ok(())
}

/// Where the PID's node is, from `--peer` (an error naming the flag to add if it is not there).
fn peer_of(args: &ClientArgs, pid: Pid) -> anyhow::Result<&Peer> {
    let node = pid.node().name();
    if *node == *args.name {
        bail!("this client's --name {:?} is the name of the PID's node: give the client its own name", args.name);
    }
    args.peers.iter().find(|p| *p.name == *node).ok_or_else(|| {
        anyhow!("no address for node {node:?}, the node of {pid}: pass --peer {node}=HOST:PORT (or set SOMA_PEER)")
    })
}

fn run_client(args: &ClientArgs, pid: Pid, op: Op) -> anyhow::Result<Option<String>> {
    let peer = peer_of(args, pid)?.clone();
    let paths = args.certs.paths(&args.name);
    let tls = NodeTls::load(&paths).with_context(|| format!("loading the certificates of node {:?}", args.name))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    rt.block_on(async {
        let any: IpAddr = if peer.addr.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
        let mut dist = DistConfig::new(args.cluster.clone(), SocketAddr::new(any, 0), tls);
        dist.peers = args.peers.iter().map(|p| (p.name.clone(), p.addr)).collect();
        let node = Node::start_distributed(NodeConfig::named(args.name.clone()), dist)
            .with_context(|| format!("starting the client node {:?}", args.name))?;
        let r = act(&node, args, &peer, pid, op).await;
        node.shutdown(Duration::from_secs(1)).await;
        r
    })
}

async fn act(node: &Node, args: &ClientArgs, peer: &Peer, pid: Pid, op: Op) -> anyhow::Result<Option<String>> {
    let is_send = matches!(op, Op::Send(_));
    // Connect first: an unreachable node, a wrong cluster or CA, and a restarted node (whose
    // old PIDs are gone) show here, clearly, before anything is sent.
    probe(node, args, peer).await?;
    let now = node.connected_nodes().into_iter().find(|n| *n.name() == *peer.name);
    if let Some(now) = now.filter(|n| *n != pid.node()) {
        bail!(
            "{pid} is a process of incarnation {} of node {}, which now runs as incarnation {}: that process is \
             gone{}",
            pid.node().creation(),
            peer.name,
            now.creation(),
            if is_send { " (a message to it would be dropped)" } else { "" }
        );
    }

    let (tx, rx) = oneshot::channel();
    node.spawn::<ClientProc>((node.pid_ref::<DemoEcho>(pid), op, tx), SpawnOpts::labeled("cli"))
        .context("spawning the client process")?;
    // The call has its own timeout; this one only guards against a client process gone wrong.
    let outcome = tokio::time::timeout(args.timeout + Duration::from_secs(1), rx)
        .await
        .map_err(|_| anyhow!("no outcome within {:?}", args.timeout))?
        .map_err(|_| anyhow!("the client process exited without an outcome"))?;
    match outcome {
        Ok(out) => {
            if is_send {
                // A send only queues the message. Make one more round trip to the node so the
                // connection has carried it before this node closes the connection.
                probe(node, args, peer).await?;
            }
            Ok(out)
        }
        Err(ActError::Send(e)) => Err(anyhow!("send to {pid} failed: {e}")),
        Err(ActError::Call(e)) => Err(call_error(e, pid, peer, args.timeout)),
    }
}

/// A round trip to `peer`'s node (dialing it if needed).
async fn probe(node: &Node, args: &ClientArgs, peer: &Peer) -> anyhow::Result<()> {
    let before = node.dist_stats().unwrap_or_default().handshake_failures;
    match node.call_named::<DemoEcho>(&peer.name, PROBE_NAME, String::new(), args.timeout).await {
        Ok(_) | Err(CallError::NoProc) => Ok(()),
        Err(e) => {
            let failed = node.dist_stats().unwrap_or_default().handshake_failures > before;
            let why = match e {
                CallError::Timeout(t) => format!("no answer within {t:?}"),
                CallError::NoConnection if failed => "the connection or its handshake failed".to_owned(),
                e => e.to_string(),
            };
            Err(anyhow!(
                "cannot reach node {} at {}: {why}. Is it running, and do --cluster and the certificates (same CA) \
                 match? RUST_LOG=info shows why a dial failed",
                peer.name,
                peer.addr
            ))
        }
    }
}

fn call_error(e: CallError, pid: Pid, peer: &Peer, timeout: Duration) -> anyhow::Error {
    match e {
        CallError::NoProc => anyhow!("no such process {pid} on node {} (it exited, or never existed)", peer.name),
        CallError::Exited => anyhow!("{pid} exited before replying"),
        CallError::Timeout(_) => anyhow!("{pid} did not reply within {timeout:?}"),
        CallError::NoConnection => {
            anyhow!("the connection to node {} at {} was lost before the reply", peer.name, peer.addr)
        }
        CallError::BadRequest(m) => {
            anyhow!("{pid} refused the request: {m} (soma call speaks the demo agent's types: does it run demo.echo?)")
        }
        e => anyhow!("call to {pid} failed: {e}"),
    }
}

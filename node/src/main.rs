//! The `soma` binary: run a node (with a demo agent), send to and call processes of running
//! nodes, make cluster certificates, run benchmarks (and, later, the admin CLI).

mod cli;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "soma",
    version,
    about = "soma: a distributed, observability-first runtime for AI-agent systems",
    after_help = "Logs go to stderr; RUST_LOG sets their level (e.g. RUST_LOG=debug). Every option of `soma node` can \
                  also come from the SOMA_* environment variable shown in its help, or from its --config file. \
                  The operator commands (nodes, ps, info, ...) talk to a node's admin API: --url (SOMA_ADMIN_URL, \
                  default http://127.0.0.1:7180) and --token (SOMA_ADMIN_TOKEN, else .soma/admin-token)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: join the cluster through its seeds, serve the admin API, run the demo agent
    /// (`demo.echo`, registered as `echo`) until SIGTERM or Ctrl-C, then leave gracefully.
    /// With no configuration: a single hot node on loopback, data in ./soma-data.
    Node(Box<cli::config::NodeArgs>),
    /// List the cluster's nodes: role, providers, status, load.
    Nodes {
        #[command(flatten)]
        out: OutArgs,
    },
    /// List processes (every node's, or one node's): PID, label, behaviour, mailbox, status.
    Ps {
        /// Only this node's.
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Show a process's info (any node's PID).
    Info {
        /// The PID, e.g. '<a.1732512345678.3>' (quote it: < and > are shell redirections) or
        /// a.1732512345678.3.
        pid: String,
        #[command(flatten)]
        api: cli::client::ApiArgs,
    },
    /// Show a process's state snapshot.
    State {
        /// The PID.
        pid: String,
        #[command(flatten)]
        api: cli::client::ApiArgs,
    },
    /// Show the messages queued in a process's mailbox, without consuming them.
    Mailbox {
        /// The PID.
        pid: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        max: u32,
        #[command(flatten)]
        api: cli::client::ApiArgs,
    },
    /// Trace a process live: switch tracing on and print each event until it exits or
    /// Ctrl-C (then switch it off again).
    Trace {
        /// The PID.
        pid: String,
        /// Print events as JSON lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: cli::client::ApiArgs,
    },
    /// Send a JSON message to a process (a bare word is sent as a JSON string).
    Send {
        /// The PID.
        pid: String,
        /// The message, e.g. '"hello"' or '{"add": 2}'.
        msg: String,
        #[command(flatten)]
        api: cli::client::ApiArgs,
    },
    /// Call a process with a JSON request and print its JSON reply.
    Call {
        /// The PID.
        pid: String,
        /// The request.
        msg: String,
        /// How long the process has to reply.
        #[arg(long, default_value = "5s", value_parser = cli::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        api: cli::client::ApiArgs,
    },
    /// Kill a process (reason `killed`).
    Kill {
        /// The PID.
        pid: String,
        #[command(flatten)]
        api: cli::client::ApiArgs,
    },
    /// List process groups and their members.
    Groups {
        #[command(flatten)]
        out: OutArgs,
    },
    /// Spawn a registered behaviour on a node, or where a role/provider constraint fits (least
    /// loaded first); prints its PID.
    Spawn {
        /// The behaviour's registered name, e.g. demo.echo or demo.counter.
        behaviour: String,
        /// Its arguments as JSON.
        #[arg(default_value = "null")]
        args: String,
        /// On this node.
        #[arg(long = "on", value_name = "NODE", conflicts_with_all = ["role", "providers"])]
        on: Option<String>,
        /// On a node of this role.
        #[arg(long)]
        role: Option<soma::membership::Role>,
        /// On a node serving this provider (repeatable: earlier ones preferred).
        #[arg(long = "provider", value_name = "NAME")]
        providers: Vec<String>,
        /// A label for the new process.
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Show supervision trees (every node's, or one node's).
    Tree {
        /// Only this node's.
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Cluster supervisors (Raft-replicated, run by the leader): create, add and remove children,
    /// list with each child's live status and where it runs.
    Sup {
        #[command(subcommand)]
        which: SupCmd,
    },
    /// Mark a provider of a node unavailable (down) or available again (up), in gossip: the
    /// cluster supervisor moves children off it.
    Provider {
        /// `up` or `down`.
        #[arg(value_parser = ["up", "down"])]
        state: String,
        /// The node.
        node: String,
        /// The provider.
        provider: String,
        #[command(flatten)]
        api: cli::client::ApiArgs,
    },
    /// See and change the Raft group of the hot nodes (the replicated supervision state).
    Raft {
        #[command(subcommand)]
        which: RaftCmd,
    },
    /// Run a benchmark and print one JSON object per result line.
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
    /// Make the cluster CA and node certificates for mutual TLS between nodes.
    Cert {
        #[command(subcommand)]
        which: CertCmd,
    },
}

/// Output options of the listing commands.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
struct OutArgs {
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: cli::client::ApiArgs,
}

#[derive(Subcommand, Debug)]
enum SupCmd {
    /// Create a cluster supervisor.
    Create {
        /// Its name.
        name: String,
        /// one_for_one, one_for_all or rest_for_one.
        #[arg(long, default_value = "one_for_one")]
        strategy: String,
        /// Restarts tolerated within the period before it gives up.
        #[arg(long, default_value_t = 3)]
        max_restarts: u32,
        /// The period.
        #[arg(long, default_value = "5s", value_parser = cli::parse_duration)]
        period: Duration,
        #[command(flatten)]
        api: cli::client::ApiArgs,
    },
    /// Add a child: a registered behaviour, placed by role and providers (in preference order).
    Add {
        /// The supervisor.
        sup: String,
        /// The child's id.
        id: String,
        /// The behaviour's registered name.
        behaviour: String,
        /// Its arguments as JSON.
        #[arg(default_value = "null")]
        args: String,
        /// permanent, transient or temporary.
        #[arg(long, default_value = "permanent")]
        restart: String,
        /// Only nodes of this role.
        #[arg(long)]
        role: Option<String>,
        /// A provider (repeatable; earlier preferred).
        #[arg(long = "provider", value_name = "NAME")]
        providers: Vec<String>,
        /// Prefer nodes with fewer children of this supervisor.
        #[arg(long)]
        spread: bool,
        /// Never on this node (repeatable).
        #[arg(long = "avoid", value_name = "NODE")]
        avoid: Vec<String>,
        #[command(flatten)]
        api: cli::client::ApiArgs,
    },
    /// Remove a child (stopping it), or a whole supervisor.
    Remove {
        /// The supervisor.
        sup: String,
        /// The child (the whole supervisor if omitted).
        id: Option<String>,
        #[command(flatten)]
        api: cli::client::ApiArgs,
    },
    /// List cluster supervisors and their children (status, node, PID, generation).
    List {
        #[command(flatten)]
        out: OutArgs,
    },
}

#[derive(Subcommand, Debug)]
enum RaftCmd {
    /// Every hot node's view: state, term, leader, voters, last applied index.
    Status {
        #[command(flatten)]
        out: OutArgs,
    },
    /// Add a hot node to the group as a voter (sent to the leader).
    Add {
        /// The node's name.
        node: String,
        #[command(flatten)]
        api: cli::client::ApiArgs,
    },
    /// Remove a node from the group for good (sent to the leader).
    Remove {
        /// The node's name.
        node: String,
        #[command(flatten)]
        api: cli::client::ApiArgs,
    },
}

#[derive(Subcommand, Debug)]
enum CertCmd {
    /// Set up a cluster's certificates in one step, idempotently: the CA (kept if DIR has one),
    /// a certificate for each NODE (kept if it has one), and optionally an admin token file
    /// (kept if it exists). What docker-compose's one-shot `certs` service runs.
    Init {
        /// Directory for ca.pem, ca-key.pem, NODE.pem and NODE-key.pem.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Cluster name, recorded in the CA certificate's subject.
        #[arg(long, default_value = soma::tls::DEFAULT_CLUSTER)]
        cluster: String,
        /// Also write a random admin token to FILE (mode 0600, owned like its directory, so a
        /// bind-mounted directory's owner can read it).
        #[arg(long, value_name = "FILE")]
        token: Option<PathBuf>,
        /// The nodes to issue certificates for.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Create a cluster CA: writes ca.pem (give it to every node) and ca-key.pem (keep it secret,
    /// off the nodes; it is needed only to issue node certificates).
    Ca {
        /// Directory to write into (created if missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Cluster name, recorded in the CA certificate's subject.
        #[arg(long, default_value = soma::tls::DEFAULT_CLUSTER)]
        cluster: String,
        /// Validity in days.
        #[arg(long, default_value_t = soma::tls::DEFAULT_CA_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate signed by the cluster CA: writes NAME.pem and NAME-key.pem.
    Node {
        /// The node name (also a DNS name in the certificate; peers dial the node by it).
        name: String,
        /// Directory holding ca.pem and ca-key.pem.
        #[arg(long, default_value = ".")]
        ca_dir: PathBuf,
        /// Directory to write into (created if missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Extra subject alternative name: an IP address or a DNS name (repeatable).
        #[arg(long = "san", value_name = "ADDR")]
        sans: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = soma::tls::DEFAULT_NODE_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// The process primitive: spawn, one-way send, call, traced send.
    Local {
        /// Idle processes to spawn.
        #[arg(long, default_value_t = 1_000_000)]
        spawn: usize,
        /// One-way messages to send.
        #[arg(long, default_value_t = 2_000_000)]
        send: u64,
        /// Sequential calls to make.
        #[arg(long, default_value_t = 1_000_000)]
        calls: u64,
    },
    /// Distribution: two nodes in this one OS process, each with its own QUIC endpoint on
    /// 127.0.0.1, mutual TLS from a throwaway in-memory CA; one-way sends (u64 and 1 KiB) and
    /// sequential calls from node A to processes on node B.
    Remote {
        /// One-way u64 messages to send.
        #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        send: u64,
        /// One-way 1 KiB messages to send.
        #[arg(long = "send-1k", default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
        send_1k: u64,
        /// Sequential calls to time (after a warm-up of a tenth as many).
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
        calls: u64,
    },
    /// Cluster supervision failover: in-process hot (Raft) and cold nodes; kills the node of a
    /// supervised child, then the Raft leader, and times until the child serves again.
    Failover {
        /// Trials of each kind.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100))]
        trials: u64,
    },
    /// Failure detection: in-process nodes with gossip membership under load; stops one victim's
    /// heartbeat per round and times until every peer declares it down; counts false downs.
    Detect {
        /// Stable nodes (they carry the load and watch the victims).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..=16))]
        nodes: u64,
        /// Rounds (one victim node each).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=32))]
        rounds: u64,
        /// Seconds of load before the first round.
        #[arg(long = "load-secs", default_value_t = 10)]
        load_secs: u64,
    },
}

/// Prints one benchmark figure as a JSON line.
fn print_result(r: &soma::bench::BenchResult) {
    match serde_json::to_string(r) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("cannot print {}: {e}", r.metric),
    }
}

/// Runs a benchmark driver on a tokio multi-thread runtime (all cores). The driver runs on a
/// worker thread, like a process would (block_on's thread is not a worker: every wake-up across
/// it is a futex round trip).
fn run_bench<F, Fut>(driver: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    rt.block_on(async move { tokio::spawn(driver()).await }).context("bench task panicked")?.context("bench failed")
}

/// Runs an operator command against the admin API.
async fn operator(cmd: Command) -> anyhow::Result<()> {
    use cli::client::{json_arg, pid_path, render_groups, render_nodes, render_ps, render_tree};
    use hyper::Method;
    let api_args = match &cmd {
        Command::Nodes { out }
        | Command::Ps { out, .. }
        | Command::Groups { out }
        | Command::Spawn { out, .. }
        | Command::Tree { out, .. } => &out.api,
        Command::Info { api, .. }
        | Command::State { api, .. }
        | Command::Mailbox { api, .. }
        | Command::Trace { api, .. }
        | Command::Send { api, .. }
        | Command::Call { api, .. }
        | Command::Kill { api, .. } => api,
        Command::Raft { which: RaftCmd::Status { out } } => &out.api,
        Command::Sup { which: SupCmd::List { out } } => &out.api,
        Command::Sup { which: SupCmd::Create { api, .. } | SupCmd::Add { api, .. } | SupCmd::Remove { api, .. } }
        | Command::Provider { api, .. } => api,
        Command::Raft { which: RaftCmd::Add { api, .. } | RaftCmd::Remove { api, .. } } => api,
        Command::Node(_) | Command::Bench { .. } | Command::Cert { .. } => return Ok(()),
    };
    let api = cli::client::api(api_args)?;
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    let show = |v: serde_json::Value, json: bool, render: fn(&serde_json::Value) -> String| {
        println!("{}", if json { pretty(&v) } else { render(&v) });
    };
    match cmd {
        Command::Nodes { out } => show(api.call(Method::GET, "/v1/nodes", None).await?, out.json, render_nodes),
        Command::Ps { node, out } => {
            let path = node.map_or_else(|| "/v1/processes".to_owned(), |n| format!("/v1/processes?node={n}"));
            show(api.call(Method::GET, &path, None).await?, out.json, render_ps);
        }
        Command::Info { pid, .. } => {
            println!("{}", pretty(&api.call(Method::GET, &format!("/v1/processes/{}", pid_path(&pid)?), None).await?))
        }
        Command::State { pid, .. } => {
            let path = format!("/v1/processes/{}/state", pid_path(&pid)?);
            println!("{}", pretty(&api.call(Method::GET, &path, None).await?));
        }
        Command::Mailbox { pid, max, .. } => {
            let path = format!("/v1/processes/{}/mailbox?max={max}", pid_path(&pid)?);
            println!("{}", pretty(&api.call(Method::GET, &path, None).await?));
        }
        Command::Trace { pid, json, .. } => cli::client::trace(&api, &pid, json).await?,
        Command::Send { pid, msg, .. } => {
            let body = serde_json::json!({ "msg": json_arg(&msg)? });
            api.call(Method::POST, &format!("/v1/processes/{}/send", pid_path(&pid)?), Some(&body)).await?;
        }
        Command::Call { pid, msg, timeout, .. } => {
            let body = serde_json::json!({ "msg": json_arg(&msg)?, "timeout_ms": timeout.as_millis() as u64 });
            let v = api.call(Method::POST, &format!("/v1/processes/{}/call", pid_path(&pid)?), Some(&body)).await?;
            println!("{}", pretty(v.get("reply").unwrap_or(&serde_json::Value::Null)));
        }
        Command::Kill { pid, .. } => {
            api.call(Method::POST, &format!("/v1/processes/{}/kill", pid_path(&pid)?), None).await?;
        }
        Command::Groups { out } => show(api.call(Method::GET, "/v1/groups", None).await?, out.json, render_groups),
        Command::Spawn { behaviour, args, on, role, providers, label, out } => {
            let body = serde_json::json!({
                "behaviour": behaviour,
                "args": json_arg(&args)?,
                "node": on,
                "role": role,
                "providers": providers,
                "label": label,
            });
            let v = api.call(Method::POST, "/v1/spawn", Some(&body)).await?;
            if out.json {
                println!("{}", pretty(&v));
            } else {
                let field = |k: &str| v.get(k).and_then(serde_json::Value::as_str).unwrap_or("?").to_owned();
                println!("{} on {}", field("pid"), field("node"));
            }
        }
        Command::Tree { node, out } => {
            let path = node.map_or_else(|| "/v1/tree".to_owned(), |n| format!("/v1/tree?node={n}"));
            show(api.call(Method::GET, &path, None).await?, out.json, render_tree);
        }
        Command::Raft { which: RaftCmd::Status { out } } => {
            show(api.call(Method::GET, "/v1/raft", None).await?, out.json, cli::client::render_raft)
        }
        Command::Raft { which: RaftCmd::Add { node, .. } } => {
            let v = api.call(Method::POST, "/v1/raft/voters", Some(&serde_json::json!({ "node": node }))).await?;
            println!("{}", pretty(&v));
        }
        Command::Raft { which: RaftCmd::Remove { node, .. } } => {
            let v = api.call(Method::DELETE, &format!("/v1/raft/voters/{node}"), None).await?;
            println!("{}", pretty(&v));
        }
        Command::Sup { which: SupCmd::List { out } } => {
            show(api.call(Method::GET, "/v1/sups", None).await?, out.json, cli::client::render_sups)
        }
        Command::Sup { which: SupCmd::Create { name, strategy, max_restarts, period, .. } } => {
            let body = serde_json::json!({"name": name, "strategy": strategy, "max_restarts": max_restarts,
                                          "period_ms": period.as_millis() as u64});
            println!("{}", pretty(&api.call(Method::POST, "/v1/sups", Some(&body)).await?));
        }
        Command::Sup {
            which: SupCmd::Add { sup, id, behaviour, args, restart, role, providers, spread, avoid, .. },
        } => {
            let body = serde_json::json!({"id": id, "behaviour": behaviour, "args": json_arg(&args)?, "restart": restart,
                                          "role": role, "providers": providers, "spread": spread, "avoid": avoid});
            println!("{}", pretty(&api.call(Method::POST, &format!("/v1/sups/{sup}/children"), Some(&body)).await?));
        }
        Command::Sup { which: SupCmd::Remove { sup, id, .. } } => {
            let path = match id {
                Some(c) => format!("/v1/sups/{sup}/children/{c}"),
                None => format!("/v1/sups/{sup}"),
            };
            println!("{}", pretty(&api.call(Method::DELETE, &path, None).await?));
        }
        Command::Provider { state, node, provider, .. } => {
            let body = serde_json::json!({ "available": state == "up" });
            let v = api.call(Method::PUT, &format!("/v1/nodes/{node}/providers/{provider}"), Some(&body)).await?;
            println!("{}", pretty(&v));
        }
        Command::Node(_) | Command::Bench { .. } | Command::Cert { .. } => {}
    }
    Ok(())
}

/// `soma cert init` (see its help).
fn cert_init(
    out: &std::path::Path,
    cluster: &str,
    token: Option<&std::path::Path>,
    nodes: &[String],
) -> anyhow::Result<()> {
    use soma::tls::{write_ca, write_node_cert, TlsPaths, Validity};
    for n in nodes {
        soma::NodeId::validate_name(n).map_err(|e| anyhow::anyhow!("node {n:?}: {e}"))?;
    }
    let ca = out.join("ca.pem");
    if ca.exists() && out.join("ca-key.pem").exists() {
        println!("kept {}", ca.display());
    } else {
        let f = write_ca(out, cluster, Validity::days_from_now(soma::tls::DEFAULT_CA_DAYS), false)?;
        println!("wrote {}", f.cert.display());
    }
    for n in nodes {
        let p = TlsPaths::in_dir(out, n);
        if p.cert.exists() && p.key.exists() {
            println!("kept {}", p.cert.display());
            continue;
        }
        let p = write_node_cert(out, out, n, &[], Validity::days_from_now(soma::tls::DEFAULT_NODE_DAYS), true)?;
        println!("wrote {}", p.cert.display());
    }
    if let Some(t) = token {
        if t.exists() {
            println!("kept {}", t.display());
        } else {
            write_token(t)?;
            println!("wrote {}", t.display());
        }
    }
    Ok(())
}

/// Writes a fresh random admin token (32 bytes, hex) to `path`: mode 0600, owned by the owner
/// of its directory.
fn write_token(path: &std::path::Path) -> anyhow::Result<()> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, format!("{hex}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all().with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
        // Fails harmlessly when not permitted (a non-root user owns both anyway).
        let _ = std::os::unix::fs::chown(path, Some(m.uid()), Some(m.gid()));
    }
    Ok(())
}

/// Runs the command; an error is printed as one line (its causes joined by `: `, no backtrace
/// even under RUST_BACKTRACE) and the exit status is 1.
fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    cli::init_logging(match cli.command {
        Command::Node(_) => "info,openraft=warn,openraft::replication=off",
        _ => "warn,openraft=off",
    });
    match cli.command {
        Command::Node(args) => cli::node::run(*args)?,
        Command::Nodes { .. }
        | Command::Ps { .. }
        | Command::Info { .. }
        | Command::State { .. }
        | Command::Mailbox { .. }
        | Command::Trace { .. }
        | Command::Send { .. }
        | Command::Call { .. }
        | Command::Kill { .. }
        | Command::Groups { .. }
        | Command::Spawn { .. }
        | Command::Tree { .. }
        | Command::Raft { .. }
        | Command::Sup { .. }
        | Command::Provider { .. } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
            rt.block_on(operator(cli.command))?;
        }
        Command::Bench { which: BenchCmd::Local { spawn, send, calls } } => {
            let sizes = soma::bench::LocalBenchSizes { spawn, send, calls };
            run_bench(|| async move {
                soma::bench::run_local(sizes, print_result).await.map(|_| ()).map_err(|e| anyhow::anyhow!("{e}"))
            })?;
        }
        Command::Bench { which: BenchCmd::Remote { send, send_1k, calls } } => {
            let sizes = soma::bench::RemoteBenchSizes { send, send_1k, calls };
            run_bench(|| async move { Ok(soma::bench::run_remote(sizes, print_result).await.map(|_| ())?) })?;
        }
        Command::Bench { which: BenchCmd::Failover { trials } } => {
            let sizes = soma::bench::failover::FailoverBenchSizes { trials: trials as usize };
            run_bench(
                || async move { Ok(soma::bench::failover::run_failover(sizes, print_result).await.map(|_| ())?) },
            )?;
        }
        Command::Bench { which: BenchCmd::Detect { nodes, rounds, load_secs } } => {
            let sizes =
                soma::bench::detect::DetectBenchSizes { nodes: nodes as usize, rounds: rounds as usize, load_secs };
            run_bench(|| async move { Ok(soma::bench::detect::run_detect(sizes, print_result).await.map(|_| ())?) })?;
        }
        Command::Cert { which: CertCmd::Init { out, cluster, token, nodes } } => {
            cert_init(&out, &cluster, token.as_deref(), &nodes)?;
        }
        Command::Cert { which: CertCmd::Ca { out, cluster, days, force } } => {
            let files = soma::tls::write_ca(&out, &cluster, soma::tls::Validity::days_from_now(days), force)?;
            println!("wrote {} and {}", files.cert.display(), files.key.display());
            eprintln!(
                "keep {} secret and off the nodes; give {} to every node",
                files.key.display(),
                files.cert.display()
            );
        }
        Command::Cert { which: CertCmd::Node { name, ca_dir, out, sans, days, force } } => {
            let validity = soma::tls::Validity::days_from_now(days);
            let paths = soma::tls::write_node_cert(&ca_dir, &out, &name, &sans, validity, force)?;
            println!("wrote {} and {}", paths.cert.display(), paths.key.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn node_flags() {
        let Command::Node(a) = Cli::try_parse_from(["soma", "node"]).expect("parses").command else {
            panic!("not node")
        };
        assert_eq!(*a, cli::config::NodeArgs::default(), "nothing set: the file and defaults decide");

        let argv = "soma node --name cold-1 --role cold --provider openai --provider local --listen 0.0.0.0:7100 \
                    --advertise cold-1:7100 --seed hot-1:7100 --seed b@127.0.0.1:7102 --certs /certs \
                    --admin 0.0.0.0:7180 --admin-token-file /run/token --creation 7 --gossip-interval 250ms";
        let Command::Node(a) = Cli::try_parse_from(argv.split_whitespace()).expect("parses").command else {
            panic!("not node")
        };
        assert_eq!(a.name.as_deref(), Some("cold-1"));
        assert_eq!(a.role, Some(soma::membership::Role::Cold));
        assert_eq!(a.providers, ["openai", "local"]);
        assert_eq!(a.seeds.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["hot-1", "b"]);
        assert_eq!(a.creation, Some(7));
        assert_eq!(a.gossip_interval, Some(Duration::from_millis(250)));
        let s = cli::config::resolve(&a, &cli::config::FileConfig::default()).expect("resolves");
        assert_eq!(s.tls.cert, PathBuf::from("/certs/cold-1.pem"));

        assert!(Cli::try_parse_from(["soma", "node", "--listen", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["soma", "node", "--role", "warm"]).is_err());
        assert!(Cli::try_parse_from(["soma", "node", "--seed", "10.0.0.1:7100"]).is_err());
    }

    #[test]
    fn operator_commands() {
        let argv = ["soma", "call", "<a.1732512345678.3>", "hello", "--timeout", "2s", "--url", "http://h:1"];
        let cli = Cli::try_parse_from(argv).expect("parses");
        let Command::Call { pid, msg, timeout, api } = cli.command else { panic!("not call") };
        assert_eq!(api.url, "http://h:1");
        assert_eq!((pid.as_str(), msg.as_str(), timeout), ("<a.1732512345678.3>", "hello", Duration::from_secs(2)));

        let cli = Cli::try_parse_from(["soma", "ps", "--token", "t0123456789abcdef", "--node", "hot-1", "--json"])
            .expect("parses");
        let Command::Ps { node, out } = cli.command else { panic!("not ps") };
        assert_eq!(out.api.token.as_deref(), Some("t0123456789abcdef"));
        assert_eq!((node.as_deref(), out.json), (Some("hot-1"), true));

        let argv = ["soma", "spawn", "demo.counter", "5", "--role", "cold", "--provider", "openai"];
        let Command::Spawn { behaviour, args, role, providers, on, .. } =
            Cli::try_parse_from(argv).expect("parses").command
        else {
            panic!("not spawn")
        };
        assert_eq!((behaviour.as_str(), args.as_str(), on), ("demo.counter", "5", None));
        assert_eq!((role, providers), (Some(soma::membership::Role::Cold), vec!["openai".to_owned()]));
        assert!(Cli::try_parse_from(["soma", "spawn", "x", "--on", "a", "--role", "hot"]).is_err());
        assert!(Cli::try_parse_from(["soma", "send", "<a.1.2>"]).is_err(), "MSG is required");

        let argv = ["soma", "cert", "init", "--out", "/certs", "--token", "/soma/admin-token", "hot-1", "cold-1"];
        let Command::Cert { which: CertCmd::Init { out, token, nodes, .. } } =
            Cli::try_parse_from(argv).expect("parses").command
        else {
            panic!("not cert init")
        };
        assert_eq!((out, token), (PathBuf::from("/certs"), Some(PathBuf::from("/soma/admin-token"))));
        assert_eq!(nodes, ["hot-1", "cold-1"]);
    }

    #[test]
    fn bench_remote_sizes() {
        let argv = ["soma", "bench", "remote", "--send", "10", "--send-1k", "5", "--calls", "3"];
        let Command::Bench { which: BenchCmd::Remote { send, send_1k, calls } } =
            Cli::try_parse_from(argv).expect("parses").command
        else {
            panic!("not bench remote")
        };
        assert_eq!((send, send_1k, calls), (10, 5, 3));
        assert!(Cli::try_parse_from(["soma", "bench", "remote", "--calls", "0"]).is_err());
    }
}

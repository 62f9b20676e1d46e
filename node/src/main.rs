//! The `soma` binary: run a node (with a demo agent), send to and call processes of running
//! nodes, make cluster certificates, run benchmarks (and, later, the admin CLI).

mod cli;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "soma",
    version,
    about = "soma: a distributed, observability-first runtime for AI-agent systems",
    after_help = "Logs go to stderr; RUST_LOG sets their level (e.g. RUST_LOG=debug). Every option of node, send \
                  and call can also come from the SOMA_* environment variable shown in its help."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a distributed node with a demo agent (`demo.echo`, registered as `echo`) until Ctrl-C
    /// or SIGTERM; prints the agent's PID on stdout, logs on stderr.
    Node(cli::node::NodeArgs),
    /// Send TEXT to the demo agent PID on another node, from a short-lived node of this command's
    /// own, and exit. Fire-and-forget, as in Erlang: a message to a process that does not exist
    /// (any more) is silently dropped by the far node; only an unreachable node, or a PID of an
    /// earlier incarnation of its node, is an error here.
    Send(cli::client::SendArgs),
    /// Call the demo agent PID on another node with TEXT, from a short-lived node of this
    /// command's own; print the reply and exit. A missing process, an unreachable node or no
    /// reply within --timeout is an error (exit status 1).
    Call(cli::client::CallArgs),
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

#[derive(Subcommand, Debug)]
enum CertCmd {
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
        Command::Node(_) => "info",
        _ => "warn",
    });
    match cli.command {
        Command::Node(args) => cli::node::run(args)?,
        Command::Send(args) => cli::client::run_send(args)?,
        Command::Call(args) => cli::client::run_call(args)?,
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
        Command::Bench { which: BenchCmd::Detect { nodes, rounds, load_secs } } => {
            let sizes =
                soma::bench::detect::DetectBenchSizes { nodes: nodes as usize, rounds: rounds as usize, load_secs };
            run_bench(|| async move { Ok(soma::bench::detect::run_detect(sizes, print_result).await.map(|_| ())?) })?;
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
    use std::time::Duration;

    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn node_defaults_and_flags() {
        let Command::Node(a) = Cli::try_parse_from(["soma", "node"]).expect("parses").command else {
            panic!("not node")
        };
        assert_eq!(a.name, "soma");
        assert_eq!(a.listen, "127.0.0.1:7100".parse().expect("addr"));
        assert_eq!(a.cluster, soma::tls::DEFAULT_CLUSTER);
        assert_eq!(a.certs.certs, PathBuf::from("."));
        assert!(a.peers.is_empty() && a.creation.is_none());

        let argv = "soma node --name a --listen 127.0.0.1:7101 --certs certs --key k.pem \
                    --peer b=127.0.0.1:7102 --peer c=127.0.0.1:7103 --creation 7";
        let argv = argv.split_whitespace();
        let Command::Node(a) = Cli::try_parse_from(argv).expect("parses").command else { panic!("not node") };
        assert_eq!(a.name, "a");
        assert_eq!(a.certs.paths("a").key, PathBuf::from("k.pem"));
        assert_eq!(a.certs.paths("a").cert, PathBuf::from("certs/a.pem"));
        let peers: Vec<&str> = a.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(peers, ["b", "c"]);
        assert_eq!(a.creation, Some(7));

        assert!(Cli::try_parse_from(["soma", "node", "--listen", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["soma", "node", "--peer", "b"]).is_err());
    }

    #[test]
    fn client_commands() {
        let argv = ["soma", "call", "<a.1732512345678.3>", "hello", "--peer", "a=127.0.0.1:7101", "--timeout", "2s"];
        let Command::Call(c) = Cli::try_parse_from(argv).expect("parses").command else { panic!("not call") };
        assert_eq!(c.pid.to_string(), "<a.1732512345678.3>");
        assert_eq!(c.text, "hello");
        assert_eq!(c.client.name, "cli");
        assert_eq!(c.client.timeout, Duration::from_secs(2));
        assert_eq!(c.client.peers[0].name, "a");

        let argv = ["soma", "send", "a.1732512345678.3", "hi there", "--name", "ops", "--certs", "certs"];
        let Command::Send(s) = Cli::try_parse_from(argv).expect("parses").command else { panic!("not send") };
        assert_eq!(s.pid.to_string(), "<a.1732512345678.3>");
        assert_eq!((s.text.as_str(), s.client.name.as_str()), ("hi there", "ops"));

        assert!(Cli::try_parse_from(["soma", "call", "not-a-pid", "x"]).is_err());
        assert!(Cli::try_parse_from(["soma", "send", "<a.1.2>"]).is_err(), "TEXT is required");
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

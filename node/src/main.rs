//! The `soma` binary: run benchmarks, make cluster certificates (and, later, run nodes and the
//! admin CLI).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "soma", version, about = "soma: a distributed, observability-first runtime for AI-agent systems")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

#[derive(Subcommand)]
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

#[derive(Subcommand)]
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
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

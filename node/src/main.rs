//! The `soma` binary: run benchmarks (and, later, nodes and the admin CLI).

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench { which: BenchCmd::Local { spawn, send, calls } } => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
            let sizes = soma::bench::LocalBenchSizes { spawn, send, calls };
            // The driver runs on a worker thread, like a process would (block_on's thread is not
            // a worker: every wake-up across it is a futex round trip).
            rt.block_on(async move {
                tokio::spawn(async move {
                    soma::bench::run_local(sizes, |r| {
                        println!("{}", serde_json::to_string(r).unwrap_or_default());
                    })
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
                })
                .await
            })
            .context("bench task panicked")?
            .map_err(|e| anyhow::anyhow!("bench failed: {e}"))?;
        }
    }
    Ok(())
}

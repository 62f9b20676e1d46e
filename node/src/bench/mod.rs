//! `soma bench`: the runtime's figures, as JSON lines.
//!
//! Every benchmark reports through a callback, one [`BenchResult`] at a time; the `soma` binary
//! prints each as one JSON object per line, `{"bench":FAMILY,"metric":NAME,"value":X,"unit":U}`.
//!
//! * [`local`] — `soma bench local`: the process primitive on one node (spawn, send, call,
//!   traced send).
//! * [`remote`] — `soma bench remote`: two distributed nodes in one OS process talking over real
//!   QUIC with mutual TLS on 127.0.0.1 (one-way send, 1 KiB send, call latency and rate).
//! * [`detect`] — `soma bench detect`: failure detection on a busy cluster of in-process nodes
//!   with gossip membership (time to declare a silent node down on every peer, false downs).

use serde::Serialize;

pub mod detect;
pub mod failover;
pub mod local;
pub mod remote;

pub use local::{run_local, LocalBenchSizes};
pub use remote::{run_remote, BenchError, RemoteBenchSizes};

/// One benchmark figure.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BenchResult {
    /// The benchmark family (`local` or `remote`).
    pub bench: &'static str,
    /// What was measured.
    pub metric: &'static str,
    /// The figure.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
}

/// Resident set size of this OS process, in bytes (Linux; 0 elsewhere).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

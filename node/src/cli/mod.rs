//! The binary's commands: `soma node` (the node daemon, [`node`], configured by [`config`]) and
//! the operator commands, clients of a node's admin API ([`client`]). Argument types shared by
//! them live here.

pub mod client;
pub mod config;
pub mod node;

use std::io::IsTerminal as _;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::time::Duration;

/// A peer node: its name and where it serves (`NAME=ADDR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The node's name.
    pub name: String,
    /// Its UDP address.
    pub addr: SocketAddr,
}

/// Parses `NAME=HOST:PORT` (the host may be an IP address or a name to resolve now).
pub fn parse_peer(s: &str) -> Result<Peer, String> {
    let (name, addr) = s.split_once('=').ok_or_else(|| format!("expected NAME=HOST:PORT, got {s:?}"))?;
    soma::NodeId::validate_name(name).map_err(|e| format!("peer {name:?}: {e}"))?;
    let addr = match addr.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => addr
            .to_socket_addrs()
            .map_err(|e| format!("peer {name}: cannot resolve {addr:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("peer {name}: {addr:?} resolves to no address"))?,
    };
    Ok(Peer { name: name.to_owned(), addr })
}

/// Parses a duration: `500ms`, `5s`, `2m`, or a bare number of seconds; more than zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("expected a duration like 500ms, 5s or 2m, got {s:?}");
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    let secs = v * scale;
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err(format!("duration {s:?} must be more than 0 and at most a day"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Logs to stderr with tracing (`RUST_LOG` overrides `default`); colours only when both stdout
/// and stderr are terminals and `NO_COLOR` is not set.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::stdout().is_terminal()
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // Only fails if a subscriber is already set, which then goes on logging.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse() {
        let p = parse_peer("a=127.0.0.1:7101").expect("peer");
        assert_eq!(p, Peer { name: "a".into(), addr: "127.0.0.1:7101".parse().expect("addr") });
        assert!(parse_peer("a").is_err());
        assert!(parse_peer("=127.0.0.1:1").is_err());
        assert!(parse_peer("a b=127.0.0.1:1").is_err());
        assert!(parse_peer("a=127.0.0.1").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("NaN").is_err());
    }
}

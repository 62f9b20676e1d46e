//! `soma node`'s configuration: flags, `SOMA_*` environment variables, an optional TOML file,
//! and defaults — in that order of precedence (a flag beats its environment variable, which
//! beats the file, which beats the default).
//!
//! clap resolves flag-over-environment; [`resolve`] then fills what is still unset from the
//! file and the defaults, and checks the result as a whole (a non-loopback admin API needs a
//! token, a cold node should name its providers ...). It is pure: no I/O but what its caller
//! passes in, so every precedence rule has a unit test.
//!
//! With no configuration at all, `soma node` is a single hot node named `soma`, QUIC on
//! `127.0.0.1:7100`, its data in `./soma-data`, its admin API on `127.0.0.1:7180` (no token:
//! loopback only), and — since there are no certificates yet and no other node to agree with
//! — a single-node CA and certificate generated into `./soma-data/tls` on first start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use soma::membership::{Role, Seed};
use soma::tls::TlsPaths;

use super::{parse_duration, parse_peer, Peer};

/// Default QUIC address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7100";
/// Default admin API address.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:7180";
/// Default data directory (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "soma-data";
/// Default node name.
pub const DEFAULT_NAME: &str = "soma";
/// Shortest admin token accepted (a token is a password: 16 bytes of text at least).
pub const MIN_TOKEN_LEN: usize = 16;
/// Largest configuration file read (G8).
pub const MAX_CONFIG_FILE: u64 = 1 << 20;

/// `soma node` arguments. Every one can also come from the environment variable shown, or
/// from the `--config` file (same names, `-` as `_`).
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct NodeArgs {
    /// A TOML file with any of the settings below (keys as the flags, `_` for `-`).
    #[arg(long, value_name = "FILE", env = "SOMA_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's name: must be the name in its certificate. Its PIDs read
    /// <NAME.CREATION.SERIAL>. [default: soma]
    #[arg(long, env = "SOMA_NAME")]
    pub name: Option<String>,
    /// `hot` (orchestrators, supervision state) or `cold` (workers pinned to providers).
    /// [default: hot]
    #[arg(long, env = "SOMA_ROLE")]
    pub role: Option<Role>,
    /// An LLM provider this node serves (repeatable; comma-separated in SOMA_PROVIDERS).
    #[arg(long = "provider", value_name = "NAME", env = "SOMA_PROVIDERS", value_delimiter = ',')]
    pub providers: Vec<String>,
    /// UDP address to serve QUIC (messages and gossip) on. [default: 127.0.0.1:7100]
    #[arg(long, env = "SOMA_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// HOST:PORT peers reach this node at (resolved at start); needed when --listen is
    /// 0.0.0.0. [default: the listen address]
    #[arg(long, value_name = "HOST:PORT", env = "SOMA_ADVERTISE")]
    pub advertise: Option<String>,
    /// A node to join through: NAME@HOST:PORT, or HOST:PORT when the host is the node's name
    /// (repeatable; comma-separated in SOMA_SEEDS).
    #[arg(long = "seed", value_name = "SEED", env = "SOMA_SEEDS", value_delimiter = ',')]
    pub seeds: Vec<Seed>,
    /// A node known by address without gossip, NAME=HOST:PORT (repeatable; comma-separated in
    /// SOMA_PEER).
    #[arg(long = "peer", value_name = "NAME=ADDR", env = "SOMA_PEER", value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<Peer>,
    /// Cluster name: the same on every node (nodes of another cluster are refused).
    /// [default: soma]
    #[arg(long, env = "SOMA_CLUSTER")]
    pub cluster: Option<String>,
    /// Directory holding ca.pem, NAME.pem and NAME-key.pem, as `soma cert` writes them.
    /// [default: DATA_DIR/tls]
    #[arg(long, value_name = "DIR", env = "SOMA_CERTS")]
    pub certs: Option<PathBuf>,
    /// The cluster CA certificate (instead of CERTS/ca.pem).
    #[arg(long, value_name = "FILE", env = "SOMA_CA")]
    pub ca: Option<PathBuf>,
    /// This node's certificate (instead of CERTS/NAME.pem).
    #[arg(long, value_name = "FILE", env = "SOMA_CERT")]
    pub cert: Option<PathBuf>,
    /// This node's private key (instead of CERTS/NAME-key.pem).
    #[arg(long, value_name = "FILE", env = "SOMA_KEY")]
    pub key: Option<PathBuf>,
    /// Where the node keeps its data. [default: ./soma-data]
    #[arg(long, value_name = "DIR", env = "SOMA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// TCP address of the admin HTTP API. [default: 127.0.0.1:7180]
    #[arg(long, value_name = "ADDR", env = "SOMA_ADMIN")]
    pub admin: Option<SocketAddr>,
    /// Token the admin API requires (`Authorization: Bearer TOKEN`); required unless the API
    /// listens on loopback only.
    #[arg(long, env = "SOMA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A file holding the admin token (its first line).
    #[arg(long, value_name = "FILE", env = "SOMA_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// How many processes this node is meant to hold (a placement weight). [default: 100000]
    #[arg(long, env = "SOMA_CAPACITY")]
    pub capacity: Option<u64>,
    /// How many hot nodes form the Raft group on first start (the smallest-named of the first
    /// N hot members founds it; later hot nodes are added by the leader). [default: 1]
    #[arg(long, env = "SOMA_RAFT_VOTERS")]
    pub raft_voters: Option<usize>,
    /// Gossip round interval, e.g. 100ms. [default: 100ms]
    #[arg(long, value_name = "DURATION", env = "SOMA_GOSSIP_INTERVAL", value_parser = parse_duration)]
    pub gossip_interval: Option<Duration>,
    /// Failure-detector threshold (phi). [default: 8]
    #[arg(long, env = "SOMA_PHI")]
    pub phi: Option<f64>,
    /// Creation (incarnation) number [default: the start time in ms since the Unix epoch, so a
    /// restarted node is a new incarnation and old PIDs never reach its processes].
    #[arg(long, env = "SOMA_CREATION")]
    pub creation: Option<u64>,
}

/// The configuration file (every key optional; unknown keys are an error, so a typo is not
/// silently ignored).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`NodeArgs::name`].
    pub name: Option<String>,
    /// See [`NodeArgs::role`].
    pub role: Option<String>,
    /// See [`NodeArgs::providers`].
    #[serde(default)]
    pub providers: Vec<String>,
    /// See [`NodeArgs::listen`].
    pub listen: Option<String>,
    /// See [`NodeArgs::advertise`].
    pub advertise: Option<String>,
    /// See [`NodeArgs::seeds`].
    #[serde(default)]
    pub seeds: Vec<String>,
    /// See [`NodeArgs::peers`].
    #[serde(default)]
    pub peers: Vec<String>,
    /// See [`NodeArgs::cluster`].
    pub cluster: Option<String>,
    /// See [`NodeArgs::certs`].
    pub certs: Option<PathBuf>,
    /// See [`NodeArgs::ca`].
    pub ca: Option<PathBuf>,
    /// See [`NodeArgs::cert`].
    pub cert: Option<PathBuf>,
    /// See [`NodeArgs::key`].
    pub key: Option<PathBuf>,
    /// See [`NodeArgs::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`NodeArgs::admin`].
    pub admin: Option<String>,
    /// See [`NodeArgs::admin_token`].
    pub admin_token: Option<String>,
    /// See [`NodeArgs::admin_token_file`].
    pub admin_token_file: Option<PathBuf>,
    /// See [`NodeArgs::capacity`].
    pub capacity: Option<u64>,
    /// See [`NodeArgs::raft_voters`].
    pub raft_voters: Option<usize>,
    /// See [`NodeArgs::gossip_interval`] (`"100ms"`).
    pub gossip_interval: Option<String>,
    /// See [`NodeArgs::phi`].
    pub phi: Option<f64>,
    /// See [`NodeArgs::creation`].
    pub creation: Option<u64>,
}

impl FileConfig {
    /// Parses a configuration file's text.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads and parses `path` (at most [`MAX_CONFIG_FILE`] bytes).
    pub fn read(path: &Path) -> Result<FileConfig, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.len() > MAX_CONFIG_FILE {
            return Err(format!("{}: {} bytes, more than {MAX_CONFIG_FILE}", path.display(), meta.len()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        FileConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Where the admin token comes from, once resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// No token (the API must listen on loopback only).
    None,
    /// Given inline.
    Inline(String),
    /// To be read from this file at start.
    File(PathBuf),
}

/// The resolved settings of a node.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Node name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Providers served, sorted and deduplicated.
    pub providers: Vec<String>,
    /// QUIC address to bind.
    pub listen: SocketAddr,
    /// HOST:PORT to advertise, if not the listen address.
    pub advertise: Option<String>,
    /// Seeds.
    pub seeds: Vec<Seed>,
    /// Static peers.
    pub peers: Vec<Peer>,
    /// Cluster name.
    pub cluster: String,
    /// Certificate files.
    pub tls: TlsPaths,
    /// No certificate location was configured at all (the default place under the data
    /// directory is used, and may be filled with a single-node CA on first start).
    pub tls_defaulted: bool,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Admin API address.
    pub admin: SocketAddr,
    /// Admin token.
    pub token: TokenSource,
    /// Placement weight.
    pub capacity: u64,
    /// Raft group size on first start (hot nodes).
    pub raft_voters: usize,
    /// Gossip interval.
    pub gossip_interval: Duration,
    /// Phi threshold.
    pub phi: f64,
    /// Creation, if fixed.
    pub creation: Option<u64>,
}

/// Merges flags/environment (`args`, already merged by clap) over `file` over the defaults,
/// and checks the result.
pub fn resolve(args: &NodeArgs, file: &FileConfig) -> Result<Settings, String> {
    let name = args.name.clone().or_else(|| file.name.clone()).unwrap_or_else(|| DEFAULT_NAME.to_owned());
    soma::NodeId::validate_name(&name).map_err(|e| format!("name {name:?}: {e}"))?;
    let role = match (&args.role, &file.role) {
        (Some(r), _) => *r,
        (None, Some(r)) => r.parse::<Role>()?,
        (None, None) => Role::Hot,
    };
    let mut providers = if args.providers.is_empty() { file.providers.clone() } else { args.providers.clone() };
    providers.retain(|p| !p.trim().is_empty());
    for p in &mut providers {
        *p = p.trim().to_owned();
        if p.len() > soma::membership::view::MAX_PROVIDER_LEN || p.contains(',') {
            return Err(format!("bad provider name {p:?}"));
        }
    }
    providers.sort();
    providers.dedup();
    if providers.len() > soma::membership::view::MAX_PROVIDERS {
        return Err(format!("{} providers, at most {}", providers.len(), soma::membership::view::MAX_PROVIDERS));
    }
    let listen = match (args.listen, &file.listen) {
        (Some(a), _) => a,
        (None, Some(s)) => s.parse().map_err(|_| format!("listen {s:?} is not an IP:PORT"))?,
        (None, None) => DEFAULT_LISTEN.parse().map_err(|_| "bad default listen".to_owned())?,
    };
    let advertise = args.advertise.clone().or_else(|| file.advertise.clone());
    if let Some(a) = &advertise {
        let port = a.rsplit_once(':').map(|(_, p)| p).ok_or_else(|| format!("advertise {a:?} has no port"))?;
        port.parse::<u16>().map_err(|_| format!("advertise {a:?}: bad port"))?;
    } else if listen.ip().is_unspecified() {
        return Err(format!(
            "listening on {listen}: give --advertise HOST:PORT (the address peers reach this node at)"
        ));
    }
    let seeds = if args.seeds.is_empty() {
        file.seeds.iter().map(|s| s.parse::<Seed>()).collect::<Result<Vec<_>, _>>()?
    } else {
        args.seeds.clone()
    };
    let peers = if args.peers.is_empty() {
        file.peers.iter().map(|s| parse_peer(s)).collect::<Result<Vec<_>, _>>()?
    } else {
        args.peers.clone()
    };
    let cluster =
        args.cluster.clone().or_else(|| file.cluster.clone()).unwrap_or_else(|| soma::tls::DEFAULT_CLUSTER.to_owned());
    let data_dir =
        args.data_dir.clone().or_else(|| file.data_dir.clone()).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let certs_dir = args.certs.clone().or_else(|| file.certs.clone());
    let ca = args.ca.clone().or_else(|| file.ca.clone());
    let cert = args.cert.clone().or_else(|| file.cert.clone());
    let key = args.key.clone().or_else(|| file.key.clone());
    let tls_defaulted = certs_dir.is_none() && ca.is_none() && cert.is_none() && key.is_none();
    let mut tls = TlsPaths::in_dir(&certs_dir.unwrap_or_else(|| data_dir.join("tls")), &name);
    if let Some(p) = ca {
        tls.ca = p;
    }
    if let Some(p) = cert {
        tls.cert = p;
    }
    if let Some(p) = key {
        tls.key = p;
    }
    let admin = match (args.admin, &file.admin) {
        (Some(a), _) => a,
        (None, Some(s)) => s.parse().map_err(|_| format!("admin {s:?} is not an IP:PORT"))?,
        (None, None) => DEFAULT_ADMIN.parse().map_err(|_| "bad default admin".to_owned())?,
    };
    let inline = args.admin_token.clone().or_else(|| file.admin_token.clone());
    let token_file = args.admin_token_file.clone().or_else(|| file.admin_token_file.clone());
    let token = match (inline, token_file) {
        (Some(_), Some(_)) => return Err("give the admin token inline or as a file, not both".into()),
        (Some(t), None) => {
            check_token(&t)?;
            TokenSource::Inline(t)
        }
        (None, Some(f)) => TokenSource::File(f),
        (None, None) => TokenSource::None,
    };
    if token == TokenSource::None && !admin.ip().is_loopback() {
        return Err(format!(
            "the admin API on {admin} is reachable from other hosts: give --admin-token or --admin-token-file \
             (or listen on 127.0.0.1)"
        ));
    }
    let capacity = args.capacity.or(file.capacity).unwrap_or(100_000);
    let raft_voters = args.raft_voters.or(file.raft_voters).unwrap_or(1);
    if !(1..=15).contains(&raft_voters) {
        return Err(format!("raft_voters must be 1..=15, not {raft_voters}"));
    }
    let gossip_interval = match (args.gossip_interval, &file.gossip_interval) {
        (Some(d), _) => d,
        (None, Some(s)) => parse_duration(s).map_err(|e| format!("gossip_interval: {e}"))?,
        (None, None) => Duration::from_millis(100),
    };
    let phi = args.phi.or(file.phi).unwrap_or(8.0);
    if !phi.is_finite() || phi <= 0.0 {
        return Err(format!("phi must be a positive number, not {phi}"));
    }
    if role == Role::Cold && providers.is_empty() {
        tracing::warn!(node = %name, "a cold node with no providers: nothing that needs a provider is placed on it");
    }
    Ok(Settings {
        name,
        role,
        providers,
        listen,
        advertise,
        seeds,
        peers,
        cluster,
        tls,
        tls_defaulted,
        data_dir,
        admin,
        token,
        capacity,
        raft_voters,
        gossip_interval,
        phi,
        creation: args.creation.or(file.creation),
    })
}

/// Checks an admin token's shape (no whitespace or control characters, long enough).
pub fn check_token(t: &str) -> Result<(), String> {
    if t.len() < MIN_TOKEN_LEN {
        return Err(format!("the admin token must be at least {MIN_TOKEN_LEN} characters"));
    }
    if t.len() > 4096 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the admin token must be at most 4096 printable characters without spaces".into());
    }
    Ok(())
}

/// Reads a token file: its first line, trimmed, checked.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("admin token file {}: {e}", path.display()))?;
    if meta.len() > 8192 {
        return Err(format!("admin token file {}: too large", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("admin token file {}: {e}", path.display()))?;
    let t = text.lines().next().unwrap_or("").trim().to_owned();
    check_token(&t).map_err(|e| format!("admin token file {}: {e}", path.display()))?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> NodeArgs {
        NodeArgs::default()
    }

    #[test]
    fn no_configuration_is_a_single_hot_node_on_loopback() {
        let s = resolve(&args(), &FileConfig::default()).expect("defaults resolve");
        assert_eq!(s.name, "soma");
        assert_eq!(s.role, Role::Hot);
        assert_eq!(s.listen, DEFAULT_LISTEN.parse().expect("addr"));
        assert_eq!(s.admin, DEFAULT_ADMIN.parse().expect("addr"));
        assert_eq!(s.token, TokenSource::None);
        assert_eq!(s.data_dir, PathBuf::from("soma-data"));
        assert!(s.tls_defaulted);
        assert_eq!(s.tls.ca, PathBuf::from("soma-data/tls/ca.pem"));
        assert_eq!(s.tls.cert, PathBuf::from("soma-data/tls/soma.pem"));
        assert!(s.seeds.is_empty() && s.peers.is_empty() && s.providers.is_empty());
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let file = FileConfig::parse(
            r#"
            name = "cold-1"
            role = "cold"
            providers = ["openai", "anthropic"]
            listen = "127.0.0.1:7200"
            seeds = ["hot-1:7100"]
            data_dir = "/var/lib/soma"
            gossip_interval = "250ms"
            capacity = 10
            "#,
        )
        .expect("parses");
        let s = resolve(&args(), &file).expect("resolves");
        assert_eq!((s.name.as_str(), s.role), ("cold-1", Role::Cold));
        assert_eq!(s.providers, ["anthropic", "openai"], "sorted");
        assert_eq!(s.listen, "127.0.0.1:7200".parse().expect("addr"));
        assert_eq!(s.seeds[0].name, "hot-1");
        assert_eq!(s.gossip_interval, Duration::from_millis(250));
        assert_eq!(s.capacity, 10);
        assert_eq!(s.tls.key, PathBuf::from("/var/lib/soma/tls/cold-1-key.pem"));

        let a = NodeArgs {
            name: Some("cold-2".into()),
            role: Some(Role::Hot),
            providers: vec!["local".into()],
            certs: Some("/certs".into()),
            capacity: Some(3),
            ..args()
        };
        let s = resolve(&a, &file).expect("resolves");
        assert_eq!((s.name.as_str(), s.role), ("cold-2", Role::Hot));
        assert_eq!(s.providers, ["local"]);
        assert_eq!(s.capacity, 3);
        assert!(!s.tls_defaulted);
        assert_eq!(s.tls.cert, PathBuf::from("/certs/cold-2.pem"));
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/soma"), "still from the file");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        assert!(FileConfig::parse("nmae = \"x\"").unwrap_err().contains("nmae"));
        let bad_role = FileConfig { role: Some("warm".into()), ..FileConfig::default() };
        assert!(resolve(&args(), &bad_role).unwrap_err().contains("warm"));
        let bad_listen = FileConfig { listen: Some("here".into()), ..FileConfig::default() };
        assert!(resolve(&args(), &bad_listen).unwrap_err().contains("here"));
        let bad_seed = FileConfig { seeds: vec!["10.0.0.1:7100".into()], ..FileConfig::default() };
        assert!(resolve(&args(), &bad_seed).unwrap_err().contains("NAME@"));
        let a = NodeArgs { name: Some("bad name".into()), ..args() };
        assert!(resolve(&a, &FileConfig::default()).is_err());
        let a = NodeArgs { phi: Some(f64::NAN), ..args() };
        assert!(resolve(&a, &FileConfig::default()).is_err());
    }

    #[test]
    fn an_exposed_admin_api_needs_a_token() {
        let a = NodeArgs { admin: Some("0.0.0.0:7180".parse().expect("addr")), ..args() };
        assert!(resolve(&a, &FileConfig::default()).unwrap_err().contains("token"));
        let a = NodeArgs { admin_token: Some("short".into()), ..a };
        assert!(resolve(&a, &FileConfig::default()).unwrap_err().contains("at least"));
        let a = NodeArgs { admin_token: Some("0123456789abcdef0123".into()), ..a };
        let s = resolve(&a, &FileConfig::default()).expect("resolves");
        assert_eq!(s.token, TokenSource::Inline("0123456789abcdef0123".into()));
        let a = NodeArgs { admin_token_file: Some("/run/token".into()), ..a };
        assert!(resolve(&a, &FileConfig::default()).unwrap_err().contains("not both"));
    }

    #[test]
    fn listening_on_any_address_needs_an_advertise_address() {
        let a = NodeArgs { listen: Some("0.0.0.0:7100".parse().expect("addr")), ..args() };
        assert!(resolve(&a, &FileConfig::default()).unwrap_err().contains("advertise"));
        let a = NodeArgs { advertise: Some("hot-1:7100".into()), ..a };
        assert_eq!(resolve(&a, &FileConfig::default()).expect("resolves").advertise.as_deref(), Some("hot-1:7100"));
        let a = NodeArgs { advertise: Some("hot-1".into()), ..a };
        assert!(resolve(&a, &FileConfig::default()).is_err());
    }

    #[test]
    fn token_files_are_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("soma-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("token");
        std::fs::write(&f, "0123456789abcdef0123\nignored\n").expect("write");
        assert_eq!(read_token_file(&f).expect("reads"), "0123456789abcdef0123");
        std::fs::write(&f, "short\n").expect("write");
        assert!(read_token_file(&f).is_err());
        assert!(read_token_file(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

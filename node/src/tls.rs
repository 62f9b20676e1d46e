//! Certificates and TLS configuration for the node transport (QUIC with mutual TLS 1.3).
//!
//! # Trust model
//!
//! * **One cluster CA is the only root of trust.** Every node holds the CA certificate
//!   (`ca.pem`) and its own node certificate and key, issued by that CA (`soma cert ca`,
//!   `soma cert node NAME`). The operating system's root store is never consulted: a certificate
//!   from any public CA is worth nothing to a soma node. The CA key (`ca-key.pem`) is needed only
//!   to issue node certificates and should not be deployed on the nodes.
//! * **Both sides authenticate.** A node both dials and accepts, so every node certificate has
//!   the extended key usages serverAuth *and* clientAuth. The accepting side requires a client
//!   certificate chained to the cluster CA ([`WebPkiClientVerifier`]); the dialling side checks
//!   the accepting side's certificate against the cluster CA with the peer's **node name** as the
//!   TLS server name. Expired or not-yet-valid certificates are refused on both sides.
//! * **A node's identity is its name, carried as a DNS subject alternative name.** A node
//!   certificate's first DNS SAN is the node name ([`NodeTls::node_name`]); further SANs
//!   (`--san`) make it valid for addresses other tools may dial. Node names must therefore be
//!   valid DNS names as well as valid soma node names ([`validate_node_name`]): e.g. `10.0.0.1`
//!   or a 64-character single label are valid node names but cannot be certified.
//! * **A valid certificate does not entitle a peer to any name.** Whoever accepts a connection
//!   learns the peer's name from the peer's own handshake message, and must check it with
//!   [`peer_node_name_ok`]: the claimed name must be (exactly, case included) a DNS SAN of the
//!   certificate the peer proved it holds. So node `a` cannot pose as node `b` even though both
//!   certificates come from the same CA. (Do not put another node's name in `--san`.)
//! * **TLS 1.3 only, ring only, no resumption, no 0-RTT.** Every configuration is built with
//!   `rustls::crypto::ring::default_provider()` explicitly (never a process-wide default
//!   provider). Session resumption is disabled so every connection verifies the peer's
//!   certificate afresh; 0-RTT is off (no replayable data). The ALPN protocol is [`ALPN`].
//! * **No revocation yet.** A compromised node key stays valid until its certificate expires
//!   (default [`DEFAULT_NODE_DAYS`] days) or the cluster moves to a new CA. `ca.pem` may hold
//!   several CA certificates, all trusted, so a cluster can roll to a new CA without downtime.
//!
//! Transport parameters (keep-alive, idle timeout, stream limits) are not set here: the
//! transport layer passes its own [`quinn::TransportConfig`] to
//! [`NodeTls::quinn_server_config`] and [`NodeTls::quinn_client_config`].
//!
//! Under TLS 1.3 a client whose certificate the server refuses may still see
//! `connect().await` succeed (the server's verdict arrives after the client's handshake is
//! done); the refusal shows on the client's first stream I/O, and no byte ever reaches the
//! server application.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster_proto::NodeId;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::RootCertStore;

/// The ALPN protocol identifier both sides of a node connection offer.
pub const ALPN: &[u8] = b"soma/1";
/// File name of the cluster CA certificate written by `soma cert ca`.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the cluster CA private key written by `soma cert ca` (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Default validity of a node certificate, in days.
pub const DEFAULT_NODE_DAYS: u32 = 825;
/// Default validity of a cluster CA certificate, in days (10 years).
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Default cluster name, used in the CA certificate's subject.
pub const DEFAULT_CLUSTER: &str = "soma";
/// How far before "now" a new certificate's validity starts, to tolerate clock skew between the
/// machine that issues it and the nodes that check it.
pub const BACKDATE: Duration = Duration::from_secs(3600);

/// Why a certificate could not be made, read, written or used.
///
/// Messages name the file (or, for [`NodeTls::from_pem`], the role of the input) and the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file to read does not exist.
    #[error("{}: file not found", path.display())]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file or directory could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file to write exists already and overwriting was not asked for.
    #[error("{} already exists; refusing to overwrite it (use --force to replace it)", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// The input holds no PEM block of the expected kind, or a malformed one.
    #[error("{origin}: {problem}")]
    Pem {
        /// The file (or input) that was read.
        origin: String,
        /// What is wrong, e.g. "no PEM CERTIFICATE block found".
        problem: String,
    },
    /// A certificate could not be parsed or lacks something soma needs.
    #[error("{origin}: not a usable certificate: {problem}")]
    BadCert {
        /// The file (or input) holding the certificate.
        origin: String,
        /// What is wrong.
        problem: String,
    },
    /// A private key could not be parsed or is of an unsupported kind.
    #[error("{origin}: not a usable private key: {problem}")]
    BadKey {
        /// The file (or input) holding the key.
        origin: String,
        /// What is wrong.
        problem: String,
    },
    /// The private key is not the key of the certificate it is paired with.
    #[error("{key} is not the private key of the certificate in {cert}")]
    KeyMismatch {
        /// The file (or input) holding the certificate.
        cert: String,
        /// The file (or input) holding the key.
        key: String,
    },
    /// The certificate does not chain to the cluster CA, or is not fit for node use (e.g. lacks
    /// the serverAuth/clientAuth extended key usages).
    #[error("{cert} is not a node certificate of the cluster CA in {ca}: {problem}")]
    NotIssuedByCa {
        /// The file (or input) holding the node certificate.
        cert: String,
        /// The file (or input) holding the CA certificate(s).
        ca: String,
        /// What verification reported.
        problem: String,
    },
    /// The certificate chains to the CA but is expired or not yet valid.
    #[error("{cert} is not valid now: {problem}")]
    NotValidNow {
        /// The file (or input) holding the certificate.
        cert: String,
        /// What verification reported.
        problem: String,
    },
    /// A node (or cluster) name cannot be certified.
    #[error("invalid name {name:?}: {problem}")]
    BadName {
        /// The refused name.
        name: String,
        /// Why it was refused.
        problem: String,
    },
    /// A `--san` value is neither an IP address nor a valid DNS name.
    #[error("invalid subject alternative name {san:?}: must be an IP address or a DNS name (no wildcards)")]
    BadSan {
        /// The refused value.
        san: String,
    },
    /// The requested validity period is unusable.
    #[error("invalid validity period: {0}")]
    BadValidity(String),
    /// Certificate generation failed.
    #[error("generating the certificate: {0}")]
    Generate(String),
    /// The TLS configuration could not be built.
    #[error("building the TLS configuration: {0}")]
    Config(String),
    /// The peer of a connection presented no certificate.
    #[error("the peer presented no certificate")]
    NoPeerIdentity,
    /// The peer's certificate is not valid for the node name it claims.
    #[error("the peer's certificate is not valid for node name {claimed:?}: {problem}")]
    PeerName {
        /// The name the peer claimed.
        claimed: String,
        /// What is wrong.
        problem: String,
    },
}

/// A certificate and its private key, both PEM-encoded.
#[derive(Clone)]
pub struct PemPair {
    /// The certificate (`-----BEGIN CERTIFICATE-----`).
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM-encoded. Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemPair").field("cert_pem", &self.cert_pem).field("key_pem", &"<secret>").finish()
    }
}

/// The validity period of a certificate to issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// First instant the certificate is valid.
    pub not_before: SystemTime,
    /// Last instant the certificate is valid.
    pub not_after: SystemTime,
}

impl Validity {
    /// From [`BACKDATE`] before now until `days` days from now.
    pub fn days_from_now(days: u32) -> Validity {
        let now = SystemTime::now();
        let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
        let not_after = now.checked_add(Duration::from_secs(u64::from(days) * 86_400)).unwrap_or(now);
        Validity { not_before, not_after }
    }

    /// Checks the period and writes it into `params`.
    fn apply(self, params: &mut CertificateParams) -> Result<(), TlsError> {
        // Latest instant X.509 GeneralizedTime (and rcgen's date type) can express: 9999-12-31.
        const MAX_SECS: u64 = 253_402_300_799;
        let secs = |t: SystemTime, what: &str| -> Result<Duration, TlsError> {
            let d =
                t.duration_since(UNIX_EPOCH).map_err(|_| TlsError::BadValidity(format!("{what} is before 1970")))?;
            if d.as_secs() > MAX_SECS {
                return Err(TlsError::BadValidity(format!("{what} is after the year 9999")));
            }
            Ok(Duration::from_secs(d.as_secs()))
        };
        let (nb, na) = (secs(self.not_before, "not_before")?, secs(self.not_after, "not_after")?);
        if na <= nb {
            return Err(TlsError::BadValidity("not_after must be later than not_before".into()));
        }
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + nb;
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + na;
        Ok(())
    }

    /// The middle of the period, as a time to check a freshly issued certificate at.
    fn midpoint(self) -> UnixTime {
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let (nb, na) = (secs(self.not_before), secs(self.not_after));
        UnixTime::since_unix_epoch(Duration::from_secs(nb + (na.saturating_sub(nb)) / 2))
    }
}

/// The crypto provider of every soma TLS configuration: ring, explicitly (never the process-wide
/// default, so a second provider elsewhere in the binary cannot change or break it).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks that `name` can be certified as a node name: a valid soma node name
/// ([`NodeId::validate_name`]: 1..=64 bytes of `[A-Za-z0-9_.-]`, no leading or trailing dot) that
/// is also a valid DNS name (labels of 1..=63 characters not starting or ending with `-`, last
/// label not numeric).
pub fn validate_node_name(name: &str) -> Result<(), TlsError> {
    NodeId::validate_name(name).map_err(|e| TlsError::BadName { name: name.into(), problem: e.to_string() })?;
    DnsName::try_from(name).map_err(|_| TlsError::BadName {
        name: name.into(),
        problem: "a node name in a certificate must also be a DNS name: dot-separated labels of 1 to 63 \
                  characters, none starting or ending with '-', the last one not all digits"
            .into(),
    })?;
    Ok(())
}

fn validate_cluster_name(cluster: &str) -> Result<(), TlsError> {
    NodeId::validate_name(cluster).map_err(|e| TlsError::BadName {
        name: cluster.into(),
        problem: format!("cluster names follow the node-name rule: {e}"),
    })
}

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn config_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// Generates a cluster CA (ECDSA P-256, self-signed) valid for [`DEFAULT_CA_DAYS`] days.
pub fn generate_ca(cluster: &str) -> Result<PemPair, TlsError> {
    generate_ca_with(cluster, Validity::days_from_now(DEFAULT_CA_DAYS))
}

/// Generates a cluster CA (ECDSA P-256, self-signed) valid for `validity`. The subject is
/// `O=soma, CN=soma cluster CA <cluster>`; it may sign end-entity certificates only (path length 0).
pub fn generate_ca_with(cluster: &str, validity: Validity) -> Result<PemPair, TlsError> {
    validate_cluster_name(cluster)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = CertificateParams::default();
    validity.apply(&mut params)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "soma");
    dn.push(DnType::CommonName, format!("soma cluster CA {cluster}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok(PemPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Parses `sans` (as given to `soma cert node --san`): IP addresses become IP SANs, anything
/// else must be a DNS name (wildcards are refused).
fn parse_sans(name: &str, sans: &[String]) -> Result<Vec<SanType>, TlsError> {
    let dns = |s: &str| -> Result<SanType, TlsError> {
        DnsName::try_from(s).map_err(|_| TlsError::BadSan { san: s.into() })?;
        let ia5 = s.try_into().map_err(|_| TlsError::BadSan { san: s.into() })?;
        Ok(SanType::DnsName(ia5))
    };
    let mut out = vec![dns(name)?];
    for s in sans {
        let san = match s.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => dns(s)?,
        };
        if !out.contains(&san) {
            out.push(san);
        }
    }
    Ok(out)
}

/// Issues a node certificate signed by the CA in `ca`.
///
/// Its SANs are `name` as a DNS name (first: it is the node's identity, see
/// [`NodeTls::node_name`]) and then each of `sans` (IP addresses as IP SANs, anything else as a
/// DNS name). The key is a new ECDSA P-256 key; the extended key usages are serverAuth and
/// clientAuth (a node both dials and accepts). If `ca.cert_pem` holds several CA certificates,
/// the one whose public key matches `ca.key_pem` signs. The new certificate is verified against
/// the CA before it is returned.
pub fn issue_node_cert(ca: &PemPair, name: &str, sans: &[String], validity: Validity) -> Result<PemPair, TlsError> {
    issue_node_cert_inner(ca, ("CA certificate", "CA key"), name, sans, validity)
}

fn issue_node_cert_inner(
    ca: &PemPair,
    (ca_origin, key_origin): (&str, &str),
    name: &str,
    sans: &[String],
    validity: Validity,
) -> Result<PemPair, TlsError> {
    validate_node_name(name)?;
    let san_list = parse_sans(name, sans)?;
    let mut params = CertificateParams::default();
    validity.apply(&mut params)?;

    // The CA certificate whose key we hold, and its subject (the new certificate's issuer).
    let ca_certs = parse_certs(ca.cert_pem.as_bytes(), ca_origin)?;
    let ca_key_der = parse_key(ca.key_pem.as_bytes(), key_origin)?;
    let ca_key = KeyPair::try_from(&ca_key_der)
        .map_err(|e| TlsError::BadKey { origin: key_origin.into(), problem: e.to_string() })?;
    let ca_spki = rcgen::PublicKeyData::subject_public_key_info(&ca_key);
    let mut signing = None;
    for der in &ca_certs {
        let anchor = webpki::anchor_from_trusted_cert(der)
            .map_err(|e| TlsError::BadCert { origin: ca_origin.into(), problem: describe(&e) })?;
        if webpki::spki_for_anchor(&anchor).as_ref() == ca_spki.as_slice() {
            signing = Some(anchor.to_owned());
            break;
        }
    }
    let Some(anchor) = signing else {
        return Err(TlsError::KeyMismatch { cert: ca_origin.into(), key: key_origin.into() });
    };
    let mut issuer_params = CertificateParams::default();
    issuer_params.distinguished_name = parse_name(anchor.subject.as_ref()).ok_or_else(|| TlsError::BadCert {
        origin: ca_origin.into(),
        problem: "cannot read its subject name".into(),
    })?;
    issuer_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let issuer = Issuer::new(issuer_params, ca_key);

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.subject_alt_names = san_list;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;

    // Self-check: the certificate must verify against the CA for both roles.
    let ee = webpki::EndEntityCert::try_from(cert.der()).map_err(|e| TlsError::Generate(describe(&e)))?;
    verify_node_cert(&ee, &[anchor], &[], validity.midpoint()).map_err(|e| {
        TlsError::Generate(format!("the new certificate does not verify against the CA: {}", describe(&e)))
    })?;
    Ok(PemPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Verifies `ee` as a node certificate: chained to one of `anchors`, valid at `now`, usable for
/// both serverAuth and clientAuth.
fn verify_node_cert(
    ee: &webpki::EndEntityCert<'_>,
    anchors: &[TrustAnchor<'_>],
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), webpki::Error> {
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms.all;
    for usage in [webpki::KeyUsage::server_auth(), webpki::KeyUsage::client_auth()] {
        ee.verify_for_usage(algs, anchors, intermediates, now, usage, None, None)?;
    }
    Ok(())
}

/// A readable description of a certificate verification error.
fn describe(e: &webpki::Error) -> String {
    fn ago(now: UnixTime, then: UnixTime) -> String {
        let (now, then) = (now.as_secs(), then.as_secs());
        let d = now.abs_diff(then);
        let amount = if d >= 2 * 86_400 { format!("{} days", d / 86_400) } else { format!("{d} s") };
        if now >= then {
            format!("{amount} ago")
        } else {
            format!("in {amount}")
        }
    }
    match e {
        webpki::Error::CertExpired { time, not_after } => format!("expired {}", ago(*time, *not_after)),
        webpki::Error::CertNotValidYet { time, not_before } => format!("not valid until {}", ago(*time, *not_before)),
        webpki::Error::UnknownIssuer => "not signed by any trusted CA certificate".into(),
        webpki::Error::InvalidSignatureForPublicKey => "its signature does not verify with the CA's key".into(),
        webpki::Error::RequiredEkuNotFoundContext(_) => {
            "lacks the extended key usages serverAuth and clientAuth a node certificate needs".into()
        }
        webpki::Error::CaUsedAsEndEntity => "is a CA certificate, not a node certificate".into(),
        other => format!("{other}"),
    }
}

/// Reads the attributes of an X.509 `Name` (the contents of its SEQUENCE) into an rcgen
/// [`DistinguishedName`], keeping their order and string types, so rcgen re-encodes the same
/// bytes (the issuer of a certificate must equal the subject of its CA byte for byte; the
/// self-check in [`issue_node_cert`] catches any name this cannot reproduce).
fn parse_name(mut input: &[u8]) -> Option<DistinguishedName> {
    let mut dn = DistinguishedName::new();
    while !input.is_empty() {
        let (tag, mut set, rest) = der_tlv(input)?;
        input = rest;
        if tag != 0x31 {
            return None;
        }
        while !set.is_empty() {
            let (tag, attr, rest) = der_tlv(set)?;
            set = rest;
            if tag != 0x30 {
                return None;
            }
            let (tag, oid, rest) = der_tlv(attr)?;
            if tag != 0x06 {
                return None;
            }
            let (tag, value, rest) = der_tlv(rest)?;
            if !rest.is_empty() {
                return None;
            }
            let text = std::str::from_utf8(value).ok()?;
            let value = match tag {
                0x0c => DnValue::Utf8String(text.into()),
                0x13 => DnValue::PrintableString(text.try_into().ok()?),
                0x16 => DnValue::Ia5String(text.try_into().ok()?),
                _ => return None,
            };
            dn.push(DnType::from_oid(&der_oid(oid)?), value);
        }
    }
    Some(dn)
}

/// Splits one DER TLV off `input`: (tag, value, rest). Single-byte tags only.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&len0, mut rest) = rest.split_first()?;
    let len = if len0 < 0x80 {
        usize::from(len0)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Decodes the contents of a DER OBJECT IDENTIFIER into its arcs.
fn der_oid(bytes: &[u8]) -> Option<Vec<u64>> {
    let mut arcs = Vec::new();
    let mut acc: u64 = 0;
    for &b in bytes {
        acc = acc.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        }
    }
    if bytes.last().is_none_or(|b| b & 0x80 != 0) {
        return None;
    }
    Some(arcs)
}

/// Where the three inputs of a [`NodeTls`] came from, for error messages.
struct Origins {
    ca: String,
    cert: String,
    key: String,
}

fn parse_certs(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { origin: origin.into(), problem: format!("malformed PEM: {e}") })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { origin: origin.into(), problem: "no PEM CERTIFICATE block found".into() });
    }
    Ok(certs)
}

fn parse_key(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError::Pem { origin: origin.into(), problem: "no PEM PRIVATE KEY block found".into() }
        }
        e => TlsError::Pem { origin: origin.into(), problem: format!("malformed PEM: {e}") },
    })
}

/// Paths of the three files a node's TLS needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The cluster CA certificate(s) (`ca.pem`); all certificates in it are trusted.
    pub ca: PathBuf,
    /// The node certificate, optionally followed by intermediate CA certificates.
    pub cert: PathBuf,
    /// The node's private key (PKCS#8, SEC1 or PKCS#1 PEM).
    pub key: PathBuf,
}

impl TlsPaths {
    /// The layout `soma cert` writes: `DIR/ca.pem`, `DIR/NODE.pem`, `DIR/NODE-key.pem`.
    pub fn in_dir(dir: &Path, node: &str) -> TlsPaths {
        TlsPaths {
            ca: dir.join(CA_CERT_FILE),
            cert: dir.join(format!("{node}.pem")),
            key: dir.join(format!("{node}-key.pem")),
        }
    }
}

/// Paths of a certificate and its key as written by [`write_ca`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PemFiles {
    /// The certificate file.
    pub cert: PathBuf,
    /// The private key file (mode 0600).
    pub key: PathBuf,
}

fn read_text(path: &Path) -> Result<String, TlsError> {
    let bytes = fs::read(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => TlsError::Missing { path: path.into() },
        _ => TlsError::Read { path: path.into(), source: e },
    })?;
    String::from_utf8(bytes).map_err(|_| TlsError::Pem {
        origin: path.display().to_string(),
        problem: "not PEM text (binary DER files are not supported)".into(),
    })
}

/// Writes `pair` to `cert_path` and `key_path` (the key with mode 0600 on Unix). Unless `force`,
/// refuses (before writing anything) if either file exists.
pub fn write_pem_pair(pair: &PemPair, cert_path: &Path, key_path: &Path, force: bool) -> Result<(), TlsError> {
    if !force {
        for p in [cert_path, key_path] {
            if p.symlink_metadata().is_ok() {
                return Err(TlsError::Exists { path: p.into() });
            }
        }
    }
    write_file(key_path, &pair.key_pem, true, force)?;
    write_file(cert_path, &pair.cert_pem, false, force)
}

fn write_file(path: &Path, contents: &str, secret: bool, force: bool) -> Result<(), TlsError> {
    let werr = |e: io::Error| TlsError::Write { path: path.into(), source: e };
    let mut opts = OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => TlsError::Exists { path: path.into() },
        _ => werr(e),
    })?;
    // A replaced (--force) file keeps its old mode: tighten it.
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(werr)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    f.write_all(contents.as_bytes()).map_err(werr)?;
    f.sync_all().map_err(werr)
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|e| TlsError::Write { path: dir.into(), source: e })
}

/// `soma cert ca`: generates a cluster CA and writes `ca.pem` and `ca-key.pem` (0600) into
/// `out_dir` (created if missing). Unless `force`, refuses to overwrite either file.
pub fn write_ca(out_dir: &Path, cluster: &str, validity: Validity, force: bool) -> Result<PemFiles, TlsError> {
    let files = PemFiles { cert: out_dir.join(CA_CERT_FILE), key: out_dir.join(CA_KEY_FILE) };
    let ca = generate_ca_with(cluster, validity)?;
    create_dir(out_dir)?;
    write_pem_pair(&ca, &files.cert, &files.key, force)?;
    Ok(files)
}

/// `soma cert node`: issues a certificate for node `name` with the CA in `ca_dir` (`ca.pem`,
/// `ca-key.pem`; see [`issue_node_cert`]) and writes `NAME.pem` and `NAME-key.pem` (0600) into
/// `out_dir` (created if missing). Unless `force`, refuses to overwrite either file. Returns the
/// paths a node loads them from ([`NodeTls::load`]).
pub fn write_node_cert(
    ca_dir: &Path,
    out_dir: &Path,
    name: &str,
    sans: &[String],
    validity: Validity,
    force: bool,
) -> Result<TlsPaths, TlsError> {
    validate_node_name(name)?;
    let (ca_cert, ca_key) = (ca_dir.join(CA_CERT_FILE), ca_dir.join(CA_KEY_FILE));
    let ca = PemPair { cert_pem: read_text(&ca_cert)?, key_pem: read_text(&ca_key)? };
    let (ca_origin, key_origin) = (ca_cert.display().to_string(), ca_key.display().to_string());
    let pair = issue_node_cert_inner(&ca, (&ca_origin, &key_origin), name, sans, validity)?;
    let paths = TlsPaths { ca: ca_cert, ..TlsPaths::in_dir(out_dir, name) };
    create_dir(out_dir)?;
    write_pem_pair(&pair, &paths.cert, &paths.key, force)?;
    Ok(paths)
}

/// A node's TLS identity and trust: the cluster CA, its own certificate chain and key, as ready
/// QUIC crypto configurations for accepting ([`NodeTls::server_config`]) and dialling
/// ([`NodeTls::client_config`]). Cheap to clone.
#[derive(Clone)]
pub struct NodeTls {
    name: Arc<str>,
    server: Arc<QuicServerConfig>,
    client: Arc<QuicClientConfig>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").field("node_name", &self.name).finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Loads the CA certificate(s), the node certificate (chain) and its key from `paths`.
    ///
    /// Fails, naming the file, if a file is missing or unreadable, holds no (or malformed) PEM,
    /// the key is not the certificate's key, the certificate does not chain to the CA or lacks
    /// the serverAuth/clientAuth usages, is expired or not yet valid, or its first DNS SAN is
    /// not a valid node name.
    pub fn load(paths: &TlsPaths) -> Result<NodeTls, TlsError> {
        let ca = read_text(&paths.ca)?;
        let cert = read_text(&paths.cert)?;
        let key = read_text(&paths.key)?;
        let origins = Origins {
            ca: paths.ca.display().to_string(),
            cert: paths.cert.display().to_string(),
            key: paths.key.display().to_string(),
        };
        Self::build(&ca, &cert, &key, &origins, true)
    }

    /// Like [`NodeTls::load`], from PEM text already in memory.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<NodeTls, TlsError> {
        let origins = Origins { ca: "CA certificate".into(), cert: "node certificate".into(), key: "node key".into() };
        Self::build(ca_pem, cert_pem, key_pem, &origins, true)
    }

    fn build(ca_pem: &str, cert_pem: &str, key_pem: &str, o: &Origins, check_time: bool) -> Result<NodeTls, TlsError> {
        let provider = crypto_provider();
        let mut roots = RootCertStore::empty();
        for der in parse_certs(ca_pem.as_bytes(), &o.ca)? {
            roots.add(der).map_err(|e| TlsError::BadCert { origin: o.ca.clone(), problem: e.to_string() })?;
        }
        let chain = parse_certs(cert_pem.as_bytes(), &o.cert)?;
        let key = parse_key(key_pem.as_bytes(), &o.key)?;

        let ee = webpki::EndEntityCert::try_from(&chain[0])
            .map_err(|e| TlsError::BadCert { origin: o.cert.clone(), problem: describe(&e) })?;
        let signing_key = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| TlsError::BadKey { origin: o.key.clone(), problem: e.to_string() })?;
        match rustls::sign::CertifiedKey::new(chain.clone(), signing_key).keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(TlsError::KeyMismatch { cert: o.cert.clone(), key: o.key.clone() })
            }
            // The key's public half is unknown: the handshake's signature will tell.
            Err(rustls::Error::InconsistentKeys(_)) => {}
            Err(e) => return Err(TlsError::BadCert { origin: o.cert.clone(), problem: e.to_string() }),
        }

        match verify_node_cert(&ee, &roots.roots, &chain[1..], UnixTime::now()) {
            Ok(()) => {}
            Err(e @ (webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. })) => {
                if check_time {
                    return Err(TlsError::NotValidNow { cert: o.cert.clone(), problem: describe(&e) });
                }
            }
            Err(e) => {
                return Err(TlsError::NotIssuedByCa { cert: o.cert.clone(), ca: o.ca.clone(), problem: describe(&e) })
            }
        }

        let name = ee.valid_dns_names().next().ok_or_else(|| TlsError::BadCert {
            origin: o.cert.clone(),
            problem: "it has no DNS subject alternative name (the node name)".into(),
        })?;
        validate_node_name(name).map_err(|e| TlsError::BadCert {
            origin: o.cert.clone(),
            problem: format!("its first DNS subject alternative name is not a node name: {e}"),
        })?;
        let name: Arc<str> = name.into();

        let roots = Arc::new(roots);
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build().map_err(config_err)?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config_err)?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        server.max_early_data_size = 0;

        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(config_err)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        client.resumption = Resumption::disabled();
        client.enable_early_data = false;

        Ok(NodeTls {
            name,
            server: Arc::new(QuicServerConfig::try_from(server).map_err(config_err)?),
            client: Arc::new(QuicClientConfig::try_from(client).map_err(config_err)?),
        })
    }

    /// This node's name: the first DNS subject alternative name of its certificate.
    pub fn node_name(&self) -> &str {
        &self.name
    }

    /// A QUIC server configuration with quinn's default transport parameters.
    pub fn server_config(&self) -> quinn::ServerConfig {
        quinn::ServerConfig::with_crypto(self.server.clone())
    }

    /// A QUIC client configuration with quinn's default transport parameters. Dial with the
    /// peer's node name as the server name: it must be a SAN of the peer's certificate.
    pub fn client_config(&self) -> quinn::ClientConfig {
        quinn::ClientConfig::new(self.client.clone())
    }

    /// [`NodeTls::server_config`] with the transport layer's parameters.
    pub fn quinn_server_config(&self, transport: Arc<quinn::TransportConfig>) -> quinn::ServerConfig {
        let mut cfg = self.server_config();
        cfg.transport_config(transport);
        cfg
    }

    /// [`NodeTls::client_config`] with the transport layer's parameters.
    pub fn quinn_client_config(&self, transport: Arc<quinn::TransportConfig>) -> quinn::ClientConfig {
        let mut cfg = self.client_config();
        cfg.transport_config(transport);
        cfg
    }
}

/// Checks that the peer of `conn` may call itself `claimed`: its certificate (already verified
/// against the cluster CA by the handshake) must carry `claimed` as a DNS subject alternative
/// name — exactly, case included, and not through a wildcard, since node names are
/// case-sensitive. Call it on both sides of every connection before trusting the name the peer
/// gives in its hello.
pub fn peer_node_name_ok(conn: &quinn::Connection, claimed: &str) -> Result<(), TlsError> {
    let peer_err = |problem: &str| TlsError::PeerName { claimed: claimed.into(), problem: problem.into() };
    validate_node_name(claimed)?;
    let identity = conn.peer_identity().ok_or(TlsError::NoPeerIdentity)?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| TlsError::NoPeerIdentity)?;
    let leaf = certs.first().ok_or(TlsError::NoPeerIdentity)?;
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| peer_err(&describe(&e)))?;
    let dns = DnsName::try_from(claimed).map_err(|_| peer_err("not a DNS name"))?.to_owned();
    ee.verify_is_valid_for_subject_name(&ServerName::DnsName(dns))
        .map_err(|_| peer_err("the name is not among the certificate's subject alternative names"))?;
    if !ee.valid_dns_names().any(|n| n == claimed) {
        return Err(peer_err("the certificate matches it only by case or wildcard; node names must match exactly"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::{Connection, Endpoint};
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Upper bound for anything that must happen on loopback; never used to wait for success.
    const LIMIT: Duration = Duration::from_secs(5);
    const DAY: Duration = Duration::from_secs(86_400);

    fn no_time_check(ca: &PemPair, node: &PemPair) -> Result<NodeTls, TlsError> {
        let o = Origins { ca: "ca".into(), cert: "cert".into(), key: "key".into() };
        NodeTls::build(&ca.cert_pem, &node.cert_pem, &node.key_pem, &o, false)
    }

    /// A CA valid from 30 days ago, so certificates in the recent past can be issued under it.
    fn test_ca() -> PemPair {
        let now = SystemTime::now();
        generate_ca_with("test", Validity { not_before: now - 30 * DAY, not_after: now + 30 * DAY }).unwrap()
    }

    fn node(ca: &PemPair, name: &str, sans: &[&str]) -> (PemPair, NodeTls) {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let pair = issue_node_cert(ca, name, &sans, Validity::days_from_now(DEFAULT_NODE_DAYS)).unwrap();
        let tls = NodeTls::from_pem(&ca.cert_pem, &pair.cert_pem, &pair.key_pem).unwrap();
        assert_eq!(tls.node_name(), name);
        (pair, tls)
    }

    fn expired_node(ca: &PemPair, name: &str) -> (PemPair, NodeTls) {
        let now = SystemTime::now();
        let validity = Validity { not_before: now - 3 * DAY, not_after: now - DAY };
        let pair = issue_node_cert(ca, name, &[], validity).unwrap();
        let tls = no_time_check(ca, &pair).unwrap();
        (pair, tls)
    }

    fn server(cfg: quinn::ServerConfig) -> (Endpoint, SocketAddr) {
        let ep = Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = ep.local_addr().unwrap();
        (ep, addr)
    }

    /// The server application: accepts one connection and one bidirectional stream, reads it to
    /// the end and echoes it. Returns what it read (i.e. what reached the application).
    async fn serve_one(ep: Endpoint) -> Result<(Vec<u8>, Connection), String> {
        let incoming = ep.accept().await.ok_or("endpoint closed before a connection arrived")?;
        let conn = incoming.await.map_err(|e| format!("handshake: {e}"))?;
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| format!("accept_bi: {e}"))?;
        let data = recv.read_to_end(1 << 16).await.map_err(|e| format!("read: {e}"))?;
        send.write_all(&data).await.map_err(|e| format!("write: {e}"))?;
        send.finish().map_err(|e| format!("finish: {e}"))?;
        Ok((data, conn))
    }

    /// The client: connects, opens a stream, writes `payload`, finishes, reads the echo.
    async fn exchange(
        cfg: quinn::ClientConfig,
        addr: SocketAddr,
        server_name: &str,
        payload: &[u8],
    ) -> Result<(Vec<u8>, Connection, Endpoint), String> {
        let ep = Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
        let conn = ep
            .connect_with(cfg, addr, server_name)
            .map_err(|e| format!("connect: {e}"))?
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("open_bi: {e}"))?;
        send.write_all(payload).await.map_err(|e| format!("write: {e}"))?;
        send.finish().map_err(|e| format!("finish: {e}"))?;
        let echo = recv.read_to_end(1 << 16).await.map_err(|e| format!("read: {e}"))?;
        Ok((echo, conn, ep))
    }

    /// Runs a client against a server that must refuse it: the client must get an error (within
    /// [`LIMIT`]) and no byte may reach the server application. Returns the client's error and
    /// the server application's.
    async fn assert_refused(
        server_cfg: quinn::ServerConfig,
        client_cfg: quinn::ClientConfig,
        name: &str,
    ) -> (String, String) {
        let (ep, addr) = server(server_cfg);
        let srv = tokio::spawn(serve_one(ep.clone()));
        let client = tokio::time::timeout(LIMIT, exchange(client_cfg, addr, name, b"must not arrive"))
            .await
            .expect("the client neither failed nor succeeded within the limit");
        let err = match client {
            Ok((echo, _, _)) => panic!("client exchange succeeded: {echo:?}"),
            Err(e) => e,
        };
        // Whatever state the server is in, closing its endpoint ends `serve_one`.
        ep.close(0u32.into(), b"test over");
        let served = tokio::time::timeout(LIMIT, srv).await.expect("server task did not end").unwrap();
        match served {
            Ok((data, _)) => panic!("{} bytes reached the server application: {data:?}", data.len()),
            Err(server_err) => (err, server_err),
        }
    }

    fn client_without_cert(ca: &PemPair) -> quinn::ClientConfig {
        let mut roots = RootCertStore::empty();
        for der in parse_certs(ca.cert_pem.as_bytes(), "ca").unwrap() {
            roots.add(der).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(cfg).unwrap()))
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("soma-tls-{}-{n}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn nodes_of_one_ca_round_trip_a_bidirectional_stream() {
        let ca = test_ca();
        let (_, a) = node(&ca, "a", &[]);
        let (_, b) = node(&ca, "b", &[]);
        let (ep, addr) = server(a.server_config());
        let srv = tokio::spawn(serve_one(ep));
        let (echo, conn, _cep) =
            tokio::time::timeout(LIMIT, exchange(b.client_config(), addr, "a", b"hello soma")).await.unwrap().unwrap();
        assert_eq!(echo, b"hello soma");
        let (data, _sconn) = tokio::time::timeout(LIMIT, srv).await.unwrap().unwrap().unwrap();
        assert_eq!(data, b"hello soma");
        assert_eq!(
            conn.handshake_data().unwrap().downcast::<quinn::crypto::rustls::HandshakeData>().unwrap().protocol,
            Some(ALPN.to_vec())
        );
    }

    #[tokio::test]
    async fn transport_parameters_come_from_the_caller() {
        let ca = test_ca();
        let (_, a) = node(&ca, "a", &[]);
        let (_, b) = node(&ca, "b", &[]);
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_millis(200)));
        transport.max_idle_timeout(Some(Duration::from_secs(2).try_into().unwrap()));
        let transport = Arc::new(transport);
        let (ep, addr) = server(a.quinn_server_config(transport.clone()));
        let srv = tokio::spawn(serve_one(ep));
        let (echo, _conn, _cep) =
            tokio::time::timeout(LIMIT, exchange(b.quinn_client_config(transport), addr, "a", b"x"))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(echo, b"x");
        tokio::time::timeout(LIMIT, srv).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn client_without_certificate_is_refused() {
        let ca = test_ca();
        let (_, a) = node(&ca, "a", &[]);
        let (client, server) = assert_refused(a.server_config(), client_without_cert(&ca), "a").await;
        // TLS 1.3: the client's handshake completes; the refusal shows on its stream I/O.
        assert!(!client.starts_with("handshake:"), "{client}");
        assert!(server.contains("no certificates"), "{server}");
    }

    #[tokio::test]
    async fn client_from_another_ca_is_refused() {
        let ca = test_ca();
        let other_ca = test_ca();
        let (_, a) = node(&ca, "a", &[]);
        // `b` trusts the cluster CA, but its own certificate comes from another CA.
        let b_pair = issue_node_cert(&other_ca, "b", &[], Validity::days_from_now(30)).unwrap();
        let err = NodeTls::from_pem(&ca.cert_pem, &b_pair.cert_pem, &b_pair.key_pem).unwrap_err();
        assert!(matches!(err, TlsError::NotIssuedByCa { .. }), "{err}");
        let b = {
            let mut both = ca.cert_pem.clone();
            both.push_str(&other_ca.cert_pem);
            // Trusting both CAs lets `b` verify `a`; `a` still trusts only the cluster CA.
            NodeTls::from_pem(&both, &b_pair.cert_pem, &b_pair.key_pem).unwrap()
        };
        let (_, server) = assert_refused(a.server_config(), b.client_config(), "a").await;
        assert!(server.contains("invalid peer certificate"), "{server}");
    }

    #[tokio::test]
    async fn expired_client_certificate_is_refused() {
        let ca = test_ca();
        let (_, a) = node(&ca, "a", &[]);
        let (_, b) = expired_node(&ca, "b");
        let (_, server) = assert_refused(a.server_config(), b.client_config(), "a").await;
        assert!(server.contains("expired"), "{server}");
    }

    #[tokio::test]
    async fn expired_server_certificate_is_refused_by_the_client() {
        let ca = test_ca();
        let (_, a) = expired_node(&ca, "a");
        let (_, b) = node(&ca, "b", &[]);
        let (err, _) = assert_refused(a.server_config(), b.client_config(), "a").await;
        assert!(err.starts_with("handshake:") && err.contains("expired"), "the client itself must refuse: {err}");
    }

    #[tokio::test]
    async fn server_name_must_be_a_san_of_the_server_certificate() {
        let ca = test_ca();
        let (_, a) = node(&ca, "a", &["127.0.0.1", "a.example"]);
        let (_, b) = node(&ca, "b", &[]);
        let (err, _) = assert_refused(a.server_config(), b.client_config(), "b").await;
        assert!(err.starts_with("handshake:") && err.contains("not valid for name"), "the client must refuse: {err}");
        // The extra SANs work: a DNS name and an IP address.
        for name in ["a.example", "127.0.0.1"] {
            let (ep, addr) = server(a.server_config());
            let srv = tokio::spawn(serve_one(ep));
            let (echo, _c, _e) =
                tokio::time::timeout(LIMIT, exchange(b.client_config(), addr, name, b"ok")).await.unwrap().unwrap();
            assert_eq!(echo, b"ok");
            tokio::time::timeout(LIMIT, srv).await.unwrap().unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn peer_node_name_ok_accepts_the_true_name_only() {
        let ca = test_ca();
        let (_, a) = node(&ca, "a", &["a.example"]);
        let (_, b) = node(&ca, "b", &[]);
        let (ep, addr) = server(a.server_config());
        let srv = tokio::spawn(serve_one(ep));
        let (_, client_conn, _cep) =
            tokio::time::timeout(LIMIT, exchange(b.client_config(), addr, "a", b"hi")).await.unwrap().unwrap();
        let (_, server_conn) = tokio::time::timeout(LIMIT, srv).await.unwrap().unwrap().unwrap();

        // Server side: the client is `b`.
        peer_node_name_ok(&server_conn, "b").unwrap();
        for wrong in ["a", "B", "c"] {
            let err = peer_node_name_ok(&server_conn, wrong).unwrap_err();
            assert!(matches!(err, TlsError::PeerName { .. }), "{wrong}: {err}");
        }
        // Client side: the server is `a` (and its extra SAN).
        peer_node_name_ok(&client_conn, "a").unwrap();
        peer_node_name_ok(&client_conn, "a.example").unwrap();
        // `A` passes DNS's case-insensitive match but is another soma node name.
        let err = peer_node_name_ok(&client_conn, "A").unwrap_err();
        assert!(matches!(err, TlsError::PeerName { .. }), "{err}");
        assert!(matches!(peer_node_name_ok(&client_conn, "b").unwrap_err(), TlsError::PeerName { .. }));
        assert!(matches!(peer_node_name_ok(&client_conn, "not valid").unwrap_err(), TlsError::BadName { .. }));
    }

    #[test]
    fn cli_files_round_trip_through_load() {
        let dir = TempDir::new("cli");
        let (ca_dir, out) = (dir.0.join("ca"), dir.0.join("nodes"));
        let ca = write_ca(&ca_dir, "prod", Validity::days_from_now(DEFAULT_CA_DAYS), false).unwrap();
        assert_eq!(ca, PemFiles { cert: ca_dir.join("ca.pem"), key: ca_dir.join("ca-key.pem") });
        let sans = vec!["10.1.2.3".to_string(), "n1.internal".to_string()];
        let paths = write_node_cert(&ca_dir, &out, "n1", &sans, Validity::days_from_now(825), false).unwrap();
        assert_eq!(paths, TlsPaths { ca: ca.cert.clone(), ..TlsPaths::in_dir(&out, "n1") });
        assert_eq!(paths.key, out.join("n1-key.pem"));
        let tls = NodeTls::load(&paths).unwrap();
        assert_eq!(tls.node_name(), "n1");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for key in [&ca.key, &paths.key] {
                assert_eq!(fs::metadata(key).unwrap().permissions().mode() & 0o777, 0o600, "{}", key.display());
            }
        }

        // No overwrite without force, and nothing is touched.
        let before = fs::read(&ca.key).unwrap();
        let err = write_ca(&ca_dir, "prod", Validity::days_from_now(10), false).unwrap_err();
        assert!(matches!(&err, TlsError::Exists { path } if *path == ca.cert), "{err}");
        assert_eq!(fs::read(&ca.key).unwrap(), before);
        let err = write_node_cert(&ca_dir, &out, "n1", &[], Validity::days_from_now(1), false).unwrap_err();
        assert!(matches!(err, TlsError::Exists { .. }), "{err}");

        // With force: replaced, and a loosened key mode is tightened again.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&ca.key, fs::Permissions::from_mode(0o644)).unwrap();
        }
        write_ca(&ca_dir, "prod", Validity::days_from_now(10), true).unwrap();
        assert_ne!(fs::read(&ca.key).unwrap(), before);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(fs::metadata(&ca.key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // The old node certificate no longer chains to the new CA.
        let err = NodeTls::load(&paths).unwrap_err();
        assert!(matches!(err, TlsError::NotIssuedByCa { .. }), "{err}");
        write_node_cert(&ca_dir, &out, "n1", &[], Validity::days_from_now(1), true).unwrap();
        NodeTls::load(&paths).unwrap();
    }

    #[test]
    fn load_errors_name_the_file_and_the_problem() {
        let dir = TempDir::new("load");
        let d = &dir.0;
        let ca_files = write_ca(d, "t", Validity::days_from_now(30), false).unwrap();
        let good = write_node_cert(d, d, "good", &[], Validity::days_from_now(30), false).unwrap();
        let other = write_node_cert(d, d, "other", &[], Validity::days_from_now(30), false).unwrap();

        // Missing file.
        let missing = TlsPaths { cert: d.join("nope.pem"), ..good.clone() };
        let err = NodeTls::load(&missing).unwrap_err();
        assert!(matches!(&err, TlsError::Missing { path } if *path == d.join("nope.pem")), "{err}");
        assert!(err.to_string().contains("nope.pem"), "{err}");

        // Garbage instead of PEM, in each file.
        let garbage = d.join("garbage.pem");
        fs::write(&garbage, "this is not a certificate\n").unwrap();
        for paths in [
            TlsPaths { ca: garbage.clone(), ..good.clone() },
            TlsPaths { cert: garbage.clone(), ..good.clone() },
            TlsPaths { key: garbage.clone(), ..good.clone() },
        ] {
            let err = NodeTls::load(&paths).unwrap_err();
            assert!(matches!(&err, TlsError::Pem { origin, .. } if origin.contains("garbage.pem")), "{err}");
        }
        // A PEM block whose contents are not a certificate.
        let junk = d.join("junk.pem");
        fs::write(&junk, "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n").unwrap();
        let err = NodeTls::load(&TlsPaths { cert: junk, ..good.clone() }).unwrap_err();
        assert!(matches!(err, TlsError::BadCert { .. }), "{err}");

        // Key of another certificate.
        let err = NodeTls::load(&TlsPaths { key: other.key.clone(), ..good.clone() }).unwrap_err();
        assert!(
            matches!(&err, TlsError::KeyMismatch { cert, key } if cert.contains("good.pem") && key.contains("other-key.pem")),
            "{err}"
        );

        // A certificate from another CA.
        let foreign_ca = generate_ca("t").unwrap();
        let foreign = issue_node_cert(&foreign_ca, "good", &[], Validity::days_from_now(30)).unwrap();
        let (fc, fk) = (d.join("foreign.pem"), d.join("foreign-key.pem"));
        write_pem_pair(&foreign, &fc, &fk, false).unwrap();
        let err = NodeTls::load(&TlsPaths { ca: ca_files.cert.clone(), cert: fc, key: fk }).unwrap_err();
        assert!(matches!(err, TlsError::NotIssuedByCa { .. }), "{err}");

        // The CA certificate used as a node certificate.
        let err =
            NodeTls::load(&TlsPaths { ca: ca_files.cert.clone(), cert: ca_files.cert, key: ca_files.key }).unwrap_err();
        assert!(matches!(err, TlsError::NotIssuedByCa { .. } | TlsError::BadCert { .. }), "{err}");
    }

    #[test]
    fn expired_and_future_certificates_do_not_load() {
        let ca = test_ca();
        let (expired, _) = expired_node(&ca, "old");
        let err = NodeTls::from_pem(&ca.cert_pem, &expired.cert_pem, &expired.key_pem).unwrap_err();
        assert!(matches!(&err, TlsError::NotValidNow { problem, .. } if problem.contains("expired")), "{err}");
        let now = SystemTime::now();
        let future =
            issue_node_cert(&ca, "new", &[], Validity { not_before: now + DAY, not_after: now + 3 * DAY }).unwrap();
        let err = NodeTls::from_pem(&ca.cert_pem, &future.cert_pem, &future.key_pem).unwrap_err();
        assert!(matches!(err, TlsError::NotValidNow { .. }), "{err}");
    }

    #[test]
    fn several_cas_in_ca_pem_are_all_trusted_and_the_matching_one_signs() {
        let (old, new) = (test_ca(), test_ca());
        let bundle = PemPair { cert_pem: format!("{}{}", old.cert_pem, new.cert_pem), key_pem: new.key_pem.clone() };
        let n = issue_node_cert(&bundle, "n", &[], Validity::days_from_now(30)).unwrap();
        NodeTls::from_pem(&bundle.cert_pem, &n.cert_pem, &n.key_pem).unwrap();
        NodeTls::from_pem(&new.cert_pem, &n.cert_pem, &n.key_pem).unwrap();
        let err = NodeTls::from_pem(&old.cert_pem, &n.cert_pem, &n.key_pem).unwrap_err();
        assert!(matches!(err, TlsError::NotIssuedByCa { .. }), "{err}");
        // A CA key that matches none of the CA certificates.
        let wrong = PemPair { cert_pem: old.cert_pem.clone(), key_pem: new.key_pem };
        let err = issue_node_cert(&wrong, "n", &[], Validity::days_from_now(30)).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn names_sans_and_validity_are_checked() {
        for ok in ["a", "node-1", "db.eu-west.internal", "under_score", "A"] {
            validate_node_name(ok).unwrap();
        }
        let long_label = "x".repeat(64);
        for bad in ["", ".a", "a.", "a b", "10.0.0.1", "-a", "a-", "a..b", long_label.as_str(), "ünï"] {
            assert!(matches!(validate_node_name(bad), Err(TlsError::BadName { .. })), "{bad:?}");
        }
        let ca = test_ca();
        let v = Validity::days_from_now(1);
        for bad in ["*.example", "a b", ""] {
            let err = issue_node_cert(&ca, "n", &[bad.to_string()], v).unwrap_err();
            assert!(matches!(err, TlsError::BadSan { .. }), "{bad:?}: {err}");
        }
        let now = SystemTime::now();
        let err = issue_node_cert(&ca, "n", &[], Validity { not_before: now, not_after: now }).unwrap_err();
        assert!(matches!(err, TlsError::BadValidity(_)), "{err}");
        let err = issue_node_cert(&ca, "n", &[], Validity::days_from_now(u32::MAX)).unwrap_err();
        assert!(matches!(err, TlsError::BadValidity(_)), "{err}");
        assert!(matches!(generate_ca("bad name"), Err(TlsError::BadName { .. })));
    }

    #[test]
    fn subject_names_round_trip_through_the_der_reader() {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, DnValue::PrintableString("DE".try_into().unwrap()));
        dn.push(DnType::OrganizationName, "Ünïcode GmbH");
        dn.push(DnType::CommonName, "x".repeat(300));
        params.distinguished_name = dn.clone();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let anchor = webpki::anchor_from_trusted_cert(cert.der()).unwrap();
        assert_eq!(parse_name(anchor.subject.as_ref()).unwrap(), dn);
        assert_eq!(der_oid(&[0x55, 0x04, 0x03]).unwrap(), vec![2, 5, 4, 3]);
        assert_eq!(der_oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]).unwrap(), vec![1, 2, 840, 113_549]);
        assert!(der_oid(&[0x86]).is_none());
    }
}

//! Process identifiers and interned node identities.
//!
//! ## Invariants
//! * A [`NodeId`] is an index into a process-wide, append-only interner of `(name, creation)`
//!   pairs. Two `NodeId`s are equal iff their name and creation are equal.
//! * The interner never forgets an entry (a `NodeId` must stay resolvable for as long as a `Pid`
//!   holding it may exist) and is bounded by [`NodeId::MAX_INTERNED`]: each entry is one node
//!   *incarnation* ever seen by this OS process.
//! * Node names are 1..=[`NodeId::MAX_NAME_LEN`] bytes of `[A-Za-z0-9_-]` plus interior `.`, so
//!   the textual PID form `<name.creation.serial>` parses unambiguously from the right.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a node name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeNameError {
    /// The name is empty.
    #[error("node name is empty")]
    Empty,
    /// The name is longer than [`NodeId::MAX_NAME_LEN`] bytes.
    #[error("node name is {len} bytes, longer than the limit of {limit}")]
    TooLong {
        /// Length of the refused name.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The name holds a character outside `[A-Za-z0-9_.-]`, or starts/ends with `.`.
    #[error("node name {0:?} may only hold A-Z a-z 0-9 _ - and interior dots")]
    BadChar(String),
    /// The interner already holds [`NodeId::MAX_INTERNED`] node incarnations.
    #[error("too many distinct node incarnations (limit {0})")]
    InternerFull(usize),
}

#[derive(Default)]
struct Interner {
    by_key: FxHashMap<(Arc<str>, u64), u32>,
    entries: Vec<(Arc<str>, u64)>,
}

fn interner() -> &'static RwLock<Interner> {
    static INTERNER: OnceLock<RwLock<Interner>> = OnceLock::new();
    INTERNER.get_or_init(|| RwLock::new(Interner::default()))
}

/// One node incarnation: a node name and its creation number, interned to a 4-byte handle.
///
/// The creation distinguishes successive runs of a node with the same name, so PIDs of an old
/// incarnation never reach processes of a new one (**G1**).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u32);

impl NodeId {
    /// Longest node name accepted, in bytes.
    pub const MAX_NAME_LEN: usize = 64;
    /// Most distinct `(name, creation)` pairs one OS process will intern.
    pub const MAX_INTERNED: usize = 65_536;

    /// Checks that `name` is a valid node name.
    pub fn validate_name(name: &str) -> Result<(), NodeNameError> {
        if name.is_empty() {
            return Err(NodeNameError::Empty);
        }
        if name.len() > Self::MAX_NAME_LEN {
            return Err(NodeNameError::TooLong { len: name.len(), limit: Self::MAX_NAME_LEN });
        }
        let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !ok_chars || name.starts_with('.') || name.ends_with('.') {
            return Err(NodeNameError::BadChar(name.to_owned()));
        }
        Ok(())
    }

    /// Interns `(name, creation)`, returning its handle. Idempotent.
    pub fn intern(name: &str, creation: u64) -> Result<NodeId, NodeNameError> {
        Self::validate_name(name)?;
        {
            let r = interner().read();
            // Lookup by borrowed key without allocating: scan the map with an owned key only on miss.
            if let Some(id) = r.by_key.get(&(Arc::<str>::from(name), creation)) {
                return Ok(NodeId(*id));
            }
        }
        let mut w = interner().write();
        let key: (Arc<str>, u64) = (Arc::from(name), creation);
        if let Some(id) = w.by_key.get(&key) {
            return Ok(NodeId(*id));
        }
        if w.entries.len() >= Self::MAX_INTERNED {
            return Err(NodeNameError::InternerFull(Self::MAX_INTERNED));
        }
        let id = u32::try_from(w.entries.len()).map_err(|_| NodeNameError::InternerFull(Self::MAX_INTERNED))?;
        w.entries.push(key.clone());
        w.by_key.insert(key, id);
        Ok(NodeId(id))
    }

    fn entry(self) -> (Arc<str>, u64) {
        let r = interner().read();
        // A NodeId can only be made by `intern`, so the index is always present.
        r.entries.get(self.0 as usize).cloned().unwrap_or_else(|| (Arc::from("?"), 0))
    }

    /// The node's name.
    pub fn name(self) -> Arc<str> {
        self.entry().0
    }

    /// The node's creation (incarnation) number.
    pub fn creation(self) -> u64 {
        self.entry().1
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, creation) = self.entry();
        write!(f, "{name}.{creation}")
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A process identifier (**G1**): which node incarnation the process lives on, and its serial
/// number there. Serials are never reused within an incarnation.
///
/// Textual form: `<name.creation.serial>`, e.g. `<hot-1.1732512345678.42>`. [`FromStr`] also
/// accepts the form without angle brackets (handy on a shell command line).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid {
    node: NodeId,
    serial: u64,
}

impl Pid {
    /// Builds a PID from its parts.
    pub const fn new(node: NodeId, serial: u64) -> Pid {
        Pid { node, serial }
    }

    /// The node incarnation the process lives on.
    pub const fn node(self) -> NodeId {
        self.node
    }

    /// The serial number of the process on its node incarnation.
    pub const fn serial(self) -> u64 {
        self.serial
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, creation) = self.node.entry();
        write!(f, "<{name}.{creation}.{}>", self.serial)
    }
}

impl fmt::Debug for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a PID's textual form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PidParseError {
    /// Longer than any valid PID.
    #[error("PID text is {0} bytes, too long")]
    TooLong(usize),
    /// Not of the form `<name.creation.serial>`.
    #[error("PID must look like <name.creation.serial>, got {0:?}")]
    Malformed(String),
    /// The node name part is invalid.
    #[error(transparent)]
    Node(#[from] NodeNameError),
}

/// A PID's text split into its parts **without interning** the node name: for input from
/// users (the admin API, the CLI), where a stream of made-up node names must not fill the
/// interner (G8). [`PidParts::to_pid`] interns, once the node is known to exist.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PidParts {
    /// The node name (valid per [`NodeId::validate_name`]).
    pub node: String,
    /// The node incarnation.
    pub creation: u64,
    /// The serial on that incarnation.
    pub serial: u64,
}

impl PidParts {
    /// The PID (interning the node name).
    pub fn to_pid(&self) -> Result<Pid, NodeNameError> {
        Ok(Pid { node: NodeId::intern(&self.node, self.creation)?, serial: self.serial })
    }
}

impl fmt::Display for PidParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}.{}.{}>", self.node, self.creation, self.serial)
    }
}

impl From<Pid> for PidParts {
    fn from(p: Pid) -> PidParts {
        PidParts { node: p.node().name().to_string(), creation: p.node().creation(), serial: p.serial() }
    }
}

impl FromStr for PidParts {
    type Err = PidParseError;

    /// `<name.creation.serial>`, brackets optional.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // name (64) + two u64 (20 each) + 2 dots + 2 brackets
        const MAX: usize = NodeId::MAX_NAME_LEN + 20 + 20 + 4;
        if s.len() > MAX {
            return Err(PidParseError::TooLong(s.len()));
        }
        let malformed = || PidParseError::Malformed(s.to_owned());
        let inner = match (s.strip_prefix('<'), s.ends_with('>')) {
            (Some(rest), true) => &rest[..rest.len() - 1],
            (None, false) => s,
            _ => return Err(malformed()),
        };
        let (rest, serial) = inner.rsplit_once('.').ok_or_else(malformed)?;
        let (name, creation) = rest.rsplit_once('.').ok_or_else(malformed)?;
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(serial) || !digits(creation) {
            return Err(malformed());
        }
        let serial: u64 = serial.parse().map_err(|_| malformed())?;
        let creation: u64 = creation.parse().map_err(|_| malformed())?;
        NodeId::validate_name(name)?;
        Ok(PidParts { node: name.to_owned(), creation, serial })
    }
}

impl FromStr for Pid {
    type Err = PidParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(s.parse::<PidParts>()?.to_pid()?)
    }
}

/// PIDs serialize as their parts (name, creation, serial), so they are meaningful on any node.
impl Serialize for Pid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            let (name, creation) = self.node.entry();
            (&*name, creation, self.serial).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Pid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let (name, creation, serial) = <(std::borrow::Cow<'de, str>, u64, u64)>::deserialize(d)?;
            let node = NodeId::intern(&name, creation).map_err(serde::de::Error::custom)?;
            Ok(Pid { node, serial })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pid_parts_parse_without_interning() {
        let p: PidParts = "<never-interned-node.7.42>".parse().expect("parses");
        assert_eq!(p, PidParts { node: "never-interned-node".into(), creation: 7, serial: 42 });
        assert_eq!(p.to_string(), "<never-interned-node.7.42>");
        assert!(interner().read().by_key.keys().all(|(n, _)| &**n != "never-interned-node"));
        let pid = p.to_pid().expect("interns");
        assert_eq!(PidParts::from(pid), p);
        assert!("<bad name.1.2>".parse::<PidParts>().is_err());
        assert!("<a.1>".parse::<PidParts>().is_err());
        assert!("a.1.2>".parse::<PidParts>().is_err());
    }

    #[test]
    fn g1_display_round_trips() {
        let node = NodeId::intern("hot-1", 1_732_512_345_678).unwrap();
        let pid = Pid::new(node, 42);
        assert_eq!(pid.to_string(), "<hot-1.1732512345678.42>");
        assert_eq!("<hot-1.1732512345678.42>".parse::<Pid>().unwrap(), pid);
        assert_eq!("hot-1.1732512345678.42".parse::<Pid>().unwrap(), pid);
    }

    #[test]
    fn g1_creation_distinguishes_incarnations() {
        let a = Pid::new(NodeId::intern("n", 1).unwrap(), 7);
        let b = Pid::new(NodeId::intern("n", 2).unwrap(), 7);
        assert_ne!(a, b);
        assert_ne!(a.node(), b.node());
        assert_eq!(a.node(), NodeId::intern("n", 1).unwrap());
    }

    #[test]
    fn dotted_names_parse_from_the_right() {
        let pid: Pid = "<db.eu-west.internal.5.9>".parse().unwrap();
        assert_eq!(&*pid.node().name(), "db.eu-west.internal");
        assert_eq!(pid.node().creation(), 5);
        assert_eq!(pid.serial(), 9);
    }

    #[test]
    fn bad_pids_are_refused_with_clear_errors() {
        for bad in [
            "",
            "<>",
            "<a.1>",
            "<a..1.2>",
            "<a.1.2",
            "a.1.2>",
            "<a.x.2>",
            "<a.1.-2>",
            "<a b.1.2>",
            "<.1.2>",
            "<a.1.99999999999999999999999>",
        ] {
            assert!(bad.parse::<Pid>().is_err(), "{bad:?} parsed");
        }
        let long = format!("<{}.1.2>", "a".repeat(65));
        assert!(matches!(long.parse::<Pid>(), Err(PidParseError::Node(NodeNameError::TooLong { .. }))));
        assert!(matches!("x".repeat(1000).parse::<Pid>(), Err(PidParseError::TooLong(1000))));
    }

    #[test]
    fn pid_is_small_and_copy() {
        fn is_copy<T: Copy>() {}
        is_copy::<Pid>();
        assert_eq!(std::mem::size_of::<Pid>(), 16);
    }

    #[test]
    fn serde_json_uses_the_text_form() {
        let pid: Pid = "<n.3.4>".parse().unwrap();
        let j = serde_json::to_string(&pid).unwrap();
        assert_eq!(j, "\"<n.3.4>\"");
        assert_eq!(serde_json::from_str::<Pid>(&j).unwrap(), pid);
        assert!(serde_json::from_str::<Pid>("\"nope\"").is_err());
    }

    proptest! {
        #[test]
        fn prop_text_round_trip(name in "[a-z][a-z0-9_-]{0,20}(\\.[a-z0-9]{1,5}){0,2}", creation: u64, serial: u64) {
            let pid = Pid::new(NodeId::intern(&name, creation).unwrap(), serial);
            let text = pid.to_string();
            prop_assert_eq!(text.parse::<Pid>().unwrap(), pid);
        }

        #[test]
        fn prop_parse_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<Pid>();
        }
    }
}

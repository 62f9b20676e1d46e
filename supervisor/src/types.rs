//! Vocabulary types: exit classes, strategies, restart types, intensity,
//! child specs and the decisions handed back to the runtime.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{echo, SupervisionError};

/// Identifier of a child in a static [`crate::Supervision`].
///
/// Must be 1..=[`MAX_CHILD_ID_BYTES`] bytes long.
pub type ChildId = String;

/// Longest accepted [`ChildId`], in bytes.
pub const MAX_CHILD_ID_BYTES: usize = 255;

/// How the caller classifies a child's exit reason.
///
/// This mirrors OTP, where the reasons `normal`, `shutdown` and
/// `{shutdown, Term}` are "clean" exits and anything else is abnormal.
/// The runtime maps its own exit reasons onto these three classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitClass {
    /// The child finished its work (OTP reason `normal`).
    Normal,
    /// The child was asked to stop, or stopped itself with a shutdown
    /// reason (OTP `shutdown` / `{shutdown, Term}`).
    Shutdown,
    /// Anything else: a crash, a panic, a kill.
    Abnormal,
}

impl ExitClass {
    /// The snake_case name of the class (`"normal"`, `"shutdown"`, `"abnormal"`).
    pub fn name(&self) -> &'static str {
        match self {
            ExitClass::Normal => "normal",
            ExitClass::Shutdown => "shutdown",
            ExitClass::Abnormal => "abnormal",
        }
    }

    /// Whether a `transient` child exiting with this class is restarted.
    pub fn is_abnormal(&self) -> bool {
        matches!(self, ExitClass::Abnormal)
    }
}

impl fmt::Display for ExitClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which children are restarted together when one child must be restarted.
///
/// Serialized as the OTP names (`"one_for_one"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the exited child is restarted (OTP default).
    #[default]
    OneForOne,
    /// Every other running child is terminated (reverse start order) and all
    /// children are started again (start order).
    OneForAll,
    /// The children started after the exited child are terminated (reverse
    /// start order), then the exited child and those are started again
    /// (start order).
    RestForOne,
}

impl Strategy {
    /// The OTP name of the strategy: `"one_for_one"`, `"one_for_all"` or
    /// `"rest_for_one"`.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::OneForOne => "one_for_one",
            Strategy::OneForAll => "one_for_all",
            Strategy::RestForOne => "rest_for_one",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = SupervisionError;

    /// Parses the OTP names accepted by [`Strategy::name`] (exact, case-sensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "one_for_one" => Ok(Strategy::OneForOne),
            "one_for_all" => Ok(Strategy::OneForAll),
            "rest_for_one" => Ok(Strategy::RestForOne),
            other => Err(SupervisionError::UnknownStrategy(echo(other))),
        }
    }
}

/// When an exited child is restarted (OTP `restart` key of a child spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartType {
    /// Always restarted, whatever the exit class.
    #[default]
    Permanent,
    /// Restarted only after an [`ExitClass::Abnormal`] exit.
    Transient,
    /// Never restarted; its spec is forgotten when it exits or when a
    /// sibling's restart terminates it.
    Temporary,
}

impl RestartType {
    /// The OTP name: `"permanent"`, `"transient"` or `"temporary"`.
    pub fn name(&self) -> &'static str {
        match self {
            RestartType::Permanent => "permanent",
            RestartType::Transient => "transient",
            RestartType::Temporary => "temporary",
        }
    }

    /// Whether a child of this type exiting with `class` is restarted.
    pub fn restarts_after(&self, class: ExitClass) -> bool {
        match self {
            RestartType::Permanent => true,
            RestartType::Transient => class.is_abnormal(),
            RestartType::Temporary => false,
        }
    }
}

impl fmt::Display for RestartType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RestartType {
    type Err = SupervisionError;

    /// Parses the OTP names accepted by [`RestartType::name`] (exact, case-sensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "permanent" => Ok(RestartType::Permanent),
            "transient" => Ok(RestartType::Transient),
            "temporary" => Ok(RestartType::Temporary),
            other => Err(SupervisionError::UnknownRestartType(echo(other))),
        }
    }
}

/// OTP restart intensity: more than `max_restarts` restarts within
/// `period_ms` milliseconds make the supervisor give up (escalate).
///
/// A restart at time `t` is counted at time `now` while `t >= now - period_ms`
/// (inclusive, exactly like OTP's `add_restart/3`, but in milliseconds rather
/// than seconds).
///
/// The default is **3 restarts in 5000 ms**. OTP's default is intensity 1 in
/// 5 s; soma picks a slightly more tolerant default because one transient
/// failure plus one retry of a failing start would already exhaust OTP's
/// budget.
///
/// `max_restarts` above [`crate::RestartWindow::MAX_TRACKED_RESTARTS`] is
/// clamped to that value (to bound the history); `period_ms == 0` (invalid in
/// OTP) means only restarts within the same millisecond are counted together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Intensity {
    /// Restarts tolerated within the period; one more escalates.
    pub max_restarts: u32,
    /// Length of the sliding window, in milliseconds.
    pub period_ms: u64,
}

impl Intensity {
    /// An intensity of `max_restarts` within `period_ms` milliseconds.
    pub const fn new(max_restarts: u32, period_ms: u64) -> Self {
        Intensity { max_restarts, period_ms }
    }
}

impl Default for Intensity {
    fn default() -> Self {
        Intensity::new(3, 5000)
    }
}

/// The part of a child spec the decision core needs: its id and restart type.
/// (Start functions, shutdown timeouts etc. live in the runtime.)
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChildSpecInfo {
    /// Unique id within its supervisor.
    pub id: ChildId,
    /// When the child is restarted.
    #[serde(default)]
    pub restart: RestartType,
}

impl ChildSpecInfo {
    /// A spec with the given id and restart type.
    pub fn new(id: impl Into<ChildId>, restart: RestartType) -> Self {
        ChildSpecInfo { id: id.into(), restart }
    }
}

/// Whether the supervisor believes a child's process is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildStatus {
    /// The runtime reported the child started and it has not exited since.
    Running,
    /// Not started yet, exited, terminated, or waiting to be (re)started
    /// (OTP: pid `undefined` or `{restarting, _}`).
    Stopped,
}

/// What the runtime must do after a child exit or failed start of a static
/// supervisor, in order.
///
/// The decision's effect on the supervision state is already applied when it
/// is returned: children named in `terminate` are already [`ChildStatus::Stopped`]
/// (temporary ones among them are already forgotten), children named in
/// `start` are `Stopped` until the runtime reports each with
/// [`crate::Supervision::mark_running`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Nothing to do (e.g. a transient child exited normally and stays
    /// stopped; its spec is kept).
    None,
    /// A temporary child exited and its spec has been removed.
    Remove {
        /// The removed child.
        id: ChildId,
    },
    /// Stop `terminate` in that order (reverse start order), then start
    /// `start` in that order (start order).
    Restart {
        /// Running children to stop, first to last.
        terminate: Vec<ChildId>,
        /// Children to (re)start, first to last.
        start: Vec<ChildId>,
    },
    /// Restart intensity exceeded: stop every child in `terminate` (all
    /// running children, reverse start order), then the supervisor itself
    /// exits with reason shutdown (OTP `reached_max_restart_intensity`).
    Escalate {
        /// Running children to stop, first to last.
        terminate: Vec<ChildId>,
    },
}

/// What the runtime must do after a child exit or failed start of a
/// [`crate::DynamicSupervision`].
///
/// As with [`Decision`], the state change is applied when the decision is
/// returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DynDecision {
    /// Nothing to do. Never produced by the current rules (dynamic
    /// supervisors forget every child they do not restart, as OTP's
    /// `simple_one_for_one` does); kept so callers can handle it uniformly.
    None,
    /// The child is forgotten (its id is never reused).
    Remove {
        /// The forgotten child.
        id: u64,
    },
    /// Start the child again under the same id.
    Restart {
        /// The child to restart.
        id: u64,
    },
    /// Restart intensity exceeded: stop every child in `terminate` (reverse
    /// start order), then the supervisor exits with reason shutdown.
    Escalate {
        /// Children to stop, first to last.
        terminate: Vec<u64>,
    },
}

/// Checks a child id against the length limits.
pub(crate) fn validate_child_id(id: &str) -> Result<(), SupervisionError> {
    if id.is_empty() || id.len() > MAX_CHILD_ID_BYTES {
        return Err(SupervisionError::InvalidChildId { len: id.len(), max: MAX_CHILD_ID_BYTES });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_names_round_trip() {
        for s in [Strategy::OneForOne, Strategy::OneForAll, Strategy::RestForOne] {
            assert_eq!(s.name().parse::<Strategy>(), Ok(s));
            assert_eq!(s.to_string(), s.name());
        }
        assert_eq!(Strategy::default(), Strategy::OneForOne);
        assert_eq!(
            "simple_one_for_one".parse::<Strategy>(),
            Err(SupervisionError::UnknownStrategy("simple_one_for_one".into()))
        );
        assert!("One_For_One".parse::<Strategy>().is_err());
    }

    #[test]
    fn restart_type_names_round_trip() {
        for r in [RestartType::Permanent, RestartType::Transient, RestartType::Temporary] {
            assert_eq!(r.name().parse::<RestartType>(), Ok(r));
            assert_eq!(r.to_string(), r.name());
        }
        assert_eq!(RestartType::default(), RestartType::Permanent);
        assert!(matches!("forever".parse::<RestartType>(), Err(SupervisionError::UnknownRestartType(_))));
    }

    #[test]
    fn parse_error_echo_is_bounded() {
        let junk = "x".repeat(10_000);
        match junk.parse::<Strategy>() {
            Err(SupervisionError::UnknownStrategy(s)) => {
                assert_eq!(s.len(), crate::error::MAX_ECHOED_BYTES)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn restart_rules_match_otp() {
        use ExitClass::*;
        use RestartType::*;
        for c in [Normal, Shutdown, Abnormal] {
            assert!(Permanent.restarts_after(c));
            assert!(!Temporary.restarts_after(c));
        }
        assert!(Transient.restarts_after(Abnormal));
        assert!(!Transient.restarts_after(Normal));
        assert!(!Transient.restarts_after(Shutdown));
    }

    #[test]
    fn intensity_default() {
        assert_eq!(Intensity::default(), Intensity::new(3, 5000));
    }

    #[test]
    fn child_id_limits() {
        assert!(validate_child_id("a").is_ok());
        assert!(validate_child_id(&"a".repeat(MAX_CHILD_ID_BYTES)).is_ok());
        assert_eq!(validate_child_id(""), Err(SupervisionError::InvalidChildId { len: 0, max: MAX_CHILD_ID_BYTES }));
        assert!(validate_child_id(&"a".repeat(MAX_CHILD_ID_BYTES + 1)).is_err());
    }
}

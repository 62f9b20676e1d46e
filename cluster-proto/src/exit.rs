//! Exit reasons, correlation IDs and monitor references.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why a process exited. Carried by exit signals (links) and `Down` notifications (monitors).
///
/// Restart decisions classify reasons as *normal* (`Normal`), *shutdown* (`Shutdown`) or
/// *abnormal* (everything else), exactly as OTP does for `transient` children (see
/// [`is_abnormal`](ExitReason::is_abnormal)). Links use a different rule: only `Normal` is
/// harmless to a linked process.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    /// The process finished its work (it asked to stop, or init returned "ignore").
    Normal,
    /// The process was asked to shut down (by its supervisor or an operator), or a supervisor
    /// gave up after reaching its restart intensity.
    Shutdown,
    /// The process was killed unconditionally (the kill itself cannot be trapped and skips
    /// `terminate`). Propagated over a link, `killed` is an ordinary exit signal: a trapping
    /// peer gets it as `handle_exit`, a non-trapping one exits with `killed` too (as in OTP).
    Killed,
    /// A handler panicked or returned an error; the text is the panic message or the error.
    Crashed(Arc<str>),
    /// The process did not exist (monitor or link to a dead or unknown PID).
    NoProc,
    /// The node the process lived on became unreachable (**G3**).
    NoConnection,
}

impl ExitReason {
    /// A crash reason from any displayable error or message.
    pub fn crashed(msg: impl fmt::Display) -> ExitReason {
        ExitReason::Crashed(Arc::from(msg.to_string()))
    }

    /// `true` for `Killed`, `Crashed`, `NoProc` and `NoConnection`; `false` for `Normal` and
    /// `Shutdown`. This is OTP's notion of an abnormal exit (OTP also counts `{shutdown, Term}`
    /// as not abnormal; soma has no such reason). What it decides, and what it does not:
    ///
    /// * **Restarts**: a `transient` child is restarted only after an abnormal exit (a
    ///   `permanent` child always, a `temporary` one never). Supervisors also log abnormal child
    ///   exits as warnings.
    /// * **Links: not this rule.** An exit signal stops a linked process that does not trap
    ///   exits for every reason except `Normal` — `Shutdown` propagates over links too (as in
    ///   OTP, where `shutdown` is not `normal`), and so does `Killed`. A process that traps exits
    ///   gets every reason, `Normal` included, as `handle_exit`.
    /// * **Monitors: not this rule either.** A `Down` is delivered for every exit, `Normal`
    ///   included, carrying the reason unchanged.
    pub fn is_abnormal(&self) -> bool {
        !matches!(self, ExitReason::Normal | ExitReason::Shutdown)
    }

    /// A short stable name: `normal`, `shutdown`, `killed`, `crashed`, `noproc`, `noconnection`.
    pub fn kind(&self) -> &'static str {
        match self {
            ExitReason::Normal => "normal",
            ExitReason::Shutdown => "shutdown",
            ExitReason::Killed => "killed",
            ExitReason::Crashed(_) => "crashed",
            ExitReason::NoProc => "noproc",
            ExitReason::NoConnection => "noconnection",
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Crashed(why) => write!(f, "crashed: {why}"),
            other => f.write_str(other.kind()),
        }
    }
}

impl fmt::Debug for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Ties a message to everything done while handling it: a process handling a message carrying a
/// correlation ID stamps the same ID on what it sends and calls meanwhile.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CorrelationId(pub u64);

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "corr:{self}")
    }
}

/// Identifies one monitor: returned by `monitor`, carried by its `Down` notification and used
/// to `demonitor`. Unique per node incarnation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
pub struct MonitorRef(pub u64);

impl fmt::Display for MonitorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#Ref<{}>", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abnormal_follows_otp() {
        assert!(!ExitReason::Normal.is_abnormal());
        assert!(!ExitReason::Shutdown.is_abnormal());
        assert!(ExitReason::Killed.is_abnormal());
        assert!(ExitReason::crashed("boom").is_abnormal());
        assert!(ExitReason::NoProc.is_abnormal());
        assert!(ExitReason::NoConnection.is_abnormal());
        assert_eq!(ExitReason::crashed("boom").to_string(), "crashed: boom");
    }

    #[test]
    fn exit_reason_json() {
        let j = serde_json::to_string(&ExitReason::crashed("x")).unwrap();
        assert_eq!(j, r#"{"Crashed":"x"}"#);
        assert_eq!(serde_json::from_str::<ExitReason>(&j).unwrap(), ExitReason::crashed("x"));
    }
}

//! The error type shared by every supervision API.

/// Longest caller-supplied text echoed back inside an error (in bytes, cut
/// at a character boundary). Keeps errors small whatever the caller passes.
pub(crate) const MAX_ECHOED_BYTES: usize = 64;

/// Why a supervision call was rejected.
///
/// Every rejection leaves the supervision state exactly as it was before the
/// call: errors are reported, never half-applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisionError {
    /// No child with this id is known to the supervisor.
    #[error("unknown child {0:?}")]
    UnknownChild(String),
    /// A child spec with this id already exists.
    #[error("duplicate child id {0:?}")]
    DuplicateChild(String),
    /// The operation needs a stopped child but the child is running.
    #[error("child {0:?} is still running")]
    StillRunning(String),
    /// The operation needs a running child but the child is stopped.
    #[error("child {0:?} is not running")]
    NotRunning(String),
    /// The runtime reported a start of a child that is already running.
    #[error("child {0:?} is already running")]
    AlreadyRunning(String),
    /// The supervisor already holds its maximum number of children.
    #[error("too many children (limit {limit})")]
    TooManyChildren {
        /// The limit that was reached.
        limit: usize,
    },
    /// A child id is empty or longer than [`crate::MAX_CHILD_ID_BYTES`].
    #[error("invalid child id: length {len} bytes, expected 1..={max}")]
    InvalidChildId {
        /// Length of the rejected id in bytes.
        len: usize,
        /// The maximum accepted length in bytes.
        max: usize,
    },
    /// No dynamic child with this id is alive in the dynamic supervisor.
    #[error("unknown dynamic child {0}")]
    UnknownDynamicChild(u64),
    /// The dynamic supervisor allocated every possible child id.
    #[error("dynamic child ids exhausted")]
    IdsExhausted,
    /// A string did not name a restart strategy.
    #[error("unknown restart strategy {0:?} (expected one_for_one, one_for_all or rest_for_one)")]
    UnknownStrategy(String),
    /// A string did not name a restart type.
    #[error("unknown restart type {0:?} (expected permanent, transient or temporary)")]
    UnknownRestartType(String),
}

/// Copies at most [`MAX_ECHOED_BYTES`] of `text` (at a char boundary) for
/// inclusion in an error.
pub(crate) fn echo(text: &str) -> String {
    if text.len() <= MAX_ECHOED_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_ECHOED_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let out = &text[..end];
    debug_assert!(out.len() <= MAX_ECHOED_BYTES);
    out.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_truncates_at_char_boundary() {
        assert_eq!(echo("abc"), "abc");
        let long = "é".repeat(100); // 2 bytes each
        let e = echo(&long);
        assert!(e.len() <= MAX_ECHOED_BYTES);
        assert_eq!(e.len(), MAX_ECHOED_BYTES);
        let odd = format!("a{}", "é".repeat(100));
        let e = echo(&odd);
        assert_eq!(e.len(), MAX_ECHOED_BYTES - 1);
    }
}

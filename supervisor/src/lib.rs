//! Supervision decisions for soma, as deterministic pure code.
//!
//! This crate is the decision-making core of OTP-style supervision. It does
//! no I/O, reads no clock and spawns nothing: time comes in as `now_ms` (a
//! monotonic millisecond reading supplied by the caller), events come in as
//! method calls, and decisions come out as data ([`Decision`],
//! [`DynDecision`]) for the async runtime to execute. The same sequence of
//! calls always produces the same decisions.
//!
//! Two state machines are provided:
//!
//! - [`Supervision`]: a static supervisor with strategy `one_for_one`,
//!   `one_for_all` or `rest_for_one` over an ordered list of child specs;
//! - [`DynamicSupervision`]: OTP `simple_one_for_one` / Elixir
//!   `DynamicSupervisor`, many children of one spec, one_for_one only.
//!
//! Both count restarts in a [`RestartWindow`].
//!
//! # Semantics (following OTP `supervisor.erl`)
//!
//! **Restart types.** A `permanent` child is restarted after every exit; a
//! `transient` child only after an [`ExitClass::Abnormal`] exit; a
//! `temporary` child never. A temporary child's spec is deleted as soon as
//! it exits ([`Decision::Remove`]). A transient child that exits normally
//! keeps its spec in a static supervisor and simply stays stopped
//! ([`Decision::None`]); a dynamic supervisor forgets it
//! ([`DynDecision::Remove`]), as OTP's `simple_one_for_one` does.
//!
//! **Intensity.** Each restart (including each retry after a failed start)
//! is recorded at `now_ms`. If more than `max_restarts` restarts then lie in
//! the inclusive window `[now_ms - period_ms, now_ms]`, the supervisor gives
//! up: [`Decision::Escalate`] lists every running child in reverse start
//! order; the runtime stops them and the supervisor exits with reason
//! `shutdown` (OTP `reached_max_restart_intensity`). Exits that do not
//! lead to a restart never count.
//!
//! **Strategies** (static supervisor, child X must be restarted):
//!
//! - `one_for_one`: `Restart { terminate: [], start: [X] }`.
//! - `rest_for_one`: the *affected* children are X and every child after X
//!   in start order. `terminate` = the running affected children in reverse
//!   start order; `start` = every non-temporary affected child in start
//!   order. Example: children `[a, b, c, d]`, `b` crashes →
//!   `Restart { terminate: [d, c], start: [b, c, d] }`.
//! - `one_for_all`: like `rest_for_one` with every child affected:
//!   `b` crashes → `Restart { terminate: [d, c, a], start: [a, b, c, d] }`.
//!
//! Two OTP details are kept on purpose:
//!
//! - temporary children among the affected ones are terminated (if running)
//!   and their specs deleted; they are never in `start` ("a temporary child
//!   is never restarted, even when a sibling's death causes it to be
//!   terminated" — OTP docs; `terminate_children/2` removes them);
//! - `start` contains *every* non-temporary affected child, including ones
//!   that were already stopped (a transient child that had exited normally,
//!   a child stopped by the operator): OTP's `start_children/2` starts every
//!   child of the list it was given.
//!
//! **Failed starts.** When a start in a `Restart` fails, the runtime stops
//! executing that decision and calls `on_start_failed`. As with OTP's
//! `try_again_restart`, this counts as another restart and applies the
//! strategy again from the failed child: `one_for_one` → `start: [X]`;
//! `rest_for_one` → terminate the running children after X, start X and
//! the rest; `one_for_all` → terminate the children already (re)started in
//! this round and start everything again.
//!
//! # Protocol with the runtime (static supervisor)
//!
//! 1. Build the supervisor and [`Supervision::add_child`] every spec. Start
//!    the children in [`Supervision::children`] order, reporting each
//!    success with [`Supervision::mark_running`].
//! 2. When a running child exits on its own, call
//!    [`Supervision::on_child_exit`] and execute the decision:
//!    - `None` / `Remove`: nothing to do;
//!    - `Restart { terminate, start }`: stop the `terminate` children one
//!      by one in that order, then start the `start` children in order,
//!      calling `mark_running` after each success. On the first failure
//!      call [`Supervision::on_start_failed`] and execute *its* decision
//!      instead of the rest of this one;
//!    - `Escalate { terminate }`: stop them in order, then exit with reason
//!      shutdown.
//! 3. To shut the supervisor down, stop [`Supervision::shutdown_order`].
//!
//! The state change of a decision is applied when it is returned: the
//! exited child and every child in `terminate` are already
//! [`ChildStatus::Stopped`] (temporary ones already deleted). The runtime
//! therefore does not report those stops, and the exits it observes while
//! stopping them must not be fed to `on_child_exit` (doing so returns
//! [`SupervisionError::NotRunning`], which is safe to ignore).
//!
//! # Limits and errors
//!
//! A static supervisor holds at most [`Supervision::MAX_CHILDREN`] specs with
//! ids of 1..=[`MAX_CHILD_ID_BYTES`] bytes; a dynamic one at most
//! [`DynamicSupervision::MAX_CHILDREN`] live children. The restart history
//! holds at most `max_restarts + 1` timestamps, with `max_restarts` clamped
//! to [`RestartWindow::MAX_TRACKED_RESTARTS`]. Caller mistakes (unknown ids,
//! wrong status, limits) are reported as [`SupervisionError`] and leave the
//! state unchanged; nothing panics on caller-supplied data. A clock reading
//! that goes backwards is clamped to the newest recorded restart.
//!
//! # Not modelled
//!
//! OTP's `auto_shutdown` / significant children, shutdown timeouts and
//! `ignore` start results are runtime concerns or not supported.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod cluster;
mod dynamic;
mod error;
mod supervision;
mod types;
mod window;

#[cfg(test)]
mod proptests;

pub use dynamic::DynamicSupervision;
pub use error::SupervisionError;
pub use supervision::Supervision;
pub use types::{
    ChildId, ChildSpecInfo, ChildStatus, Decision, DynDecision, ExitClass, Intensity, RestartType, Strategy,
    MAX_CHILD_ID_BYTES,
};
pub use window::{RestartVerdict, RestartWindow};

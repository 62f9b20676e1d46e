//! Restart-intensity bookkeeping shared by both supervisor kinds.
//!
//! This is OTP's `add_restart/1`: every restart pushes the current time onto
//! a history, entries older than the period are dropped, and if more than
//! `max_restarts` entries remain the supervisor must give up.

use std::collections::VecDeque;

use crate::types::Intensity;

/// Outcome of recording one restart in a [`RestartWindow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestartVerdict {
    /// The restart fits within the intensity; go ahead.
    Allowed,
    /// More than `max_restarts` restarts within the period: escalate.
    Exceeded,
}

/// Sliding window of restart timestamps (milliseconds, caller-supplied).
///
/// Invariants (checked by assertions):
/// - timestamps are kept oldest first and never decrease;
/// - at most `max_restarts + 1` timestamps are kept: once that many are in
///   the window the verdict is [`RestartVerdict::Exceeded`] whatever older
///   entries say, so anything older is dropped.
///
/// Time must be monotonic. A `now_ms` earlier than the newest recorded
/// restart is treated as equal to it (the clock is clamped, never trusted to
/// go backwards), so bad readings cannot corrupt the window or panic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestartWindow {
    intensity: Intensity,
    stamps: VecDeque<u64>,
}

impl RestartWindow {
    /// Largest `max_restarts` honoured; larger values are clamped to it so
    /// the history stays bounded (at most `MAX_TRACKED_RESTARTS + 1` entries).
    pub const MAX_TRACKED_RESTARTS: u32 = 65_536;

    /// An empty window for `intensity` (with `max_restarts` clamped to
    /// [`Self::MAX_TRACKED_RESTARTS`]).
    pub fn new(intensity: Intensity) -> Self {
        let intensity = Intensity {
            max_restarts: intensity.max_restarts.min(Self::MAX_TRACKED_RESTARTS),
            period_ms: intensity.period_ms,
        };
        RestartWindow { intensity, stamps: VecDeque::new() }
    }

    /// The effective (possibly clamped) intensity.
    pub fn intensity(&self) -> Intensity {
        self.intensity
    }

    /// Most timestamps ever kept: `max_restarts + 1`.
    pub fn capacity(&self) -> usize {
        self.intensity.max_restarts as usize + 1
    }

    /// Records a restart at `now_ms` and says whether it stays within the
    /// intensity. The restart is recorded even when the verdict is
    /// [`RestartVerdict::Exceeded`] (as in OTP).
    #[must_use]
    pub fn record(&mut self, now_ms: u64) -> RestartVerdict {
        let now = self.clamp(now_ms);
        let threshold = now.saturating_sub(self.intensity.period_ms);
        while self.stamps.front().is_some_and(|&t| t < threshold) {
            self.stamps.pop_front();
        }
        self.stamps.push_back(now);
        while self.stamps.len() > self.capacity() {
            self.stamps.pop_front();
        }
        assert!(self.stamps.len() <= self.capacity(), "history over capacity");
        debug_assert!(self.stamps.iter().zip(self.stamps.iter().skip(1)).all(|(a, b)| a <= b));
        if self.stamps.len() > self.intensity.max_restarts as usize {
            RestartVerdict::Exceeded
        } else {
            RestartVerdict::Allowed
        }
    }

    /// Restarts counted in the window ending at `now_ms` (entries with
    /// `t >= now_ms - period_ms`), saturating at `max_restarts + 1` since
    /// only that many are kept. Recording a restart at `now_ms` would
    /// escalate iff this is `>= max_restarts`.
    pub fn count_in_window(&self, now_ms: u64) -> usize {
        let now = self.clamp(now_ms);
        let threshold = now.saturating_sub(self.intensity.period_ms);
        // Sorted oldest first: count the suffix at or after the threshold.
        let stale = self.stamps.partition_point(|&t| t < threshold);
        self.stamps.len() - stale
    }

    /// Number of timestamps currently kept (≤ [`Self::capacity`]); may
    /// include entries that have aged out since the last restart.
    pub fn len(&self) -> usize {
        self.stamps.len()
    }

    /// Whether no restart is kept.
    pub fn is_empty(&self) -> bool {
        self.stamps.is_empty()
    }

    /// Forgets every recorded restart.
    pub fn clear(&mut self) {
        self.stamps.clear();
    }

    fn clamp(&self, now_ms: u64) -> u64 {
        match self.stamps.back() {
            Some(&last) => now_ms.max(last),
            None => now_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RestartVerdict::*;

    #[test]
    fn fourth_restart_in_window_is_exceeded() {
        let mut w = RestartWindow::new(Intensity::new(3, 5000));
        assert_eq!(w.record(0), Allowed);
        assert_eq!(w.record(1000), Allowed);
        assert_eq!(w.record(2000), Allowed);
        assert_eq!(w.count_in_window(2000), 3);
        assert_eq!(w.record(3000), Exceeded);
        assert_eq!(w.len(), 4);
    }

    #[test]
    fn window_is_inclusive_like_otp() {
        let mut w = RestartWindow::new(Intensity::new(1, 5000));
        assert_eq!(w.record(0), Allowed);
        // 0 >= 5000 - 5000: still counted.
        assert_eq!(w.count_in_window(5000), 1);
        assert_eq!(w.count_in_window(5001), 0);
        assert_eq!(w.record(5000), Exceeded);

        let mut w = RestartWindow::new(Intensity::new(1, 5000));
        assert_eq!(w.record(0), Allowed);
        assert_eq!(w.record(5001), Allowed);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn zero_intensity_exceeds_immediately() {
        let mut w = RestartWindow::new(Intensity::new(0, 5000));
        assert_eq!(w.record(10), Exceeded);
        assert_eq!(w.len(), 1);
        assert_eq!(w.record(11), Exceeded);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn spaced_restarts_never_exceed() {
        let mut w = RestartWindow::new(Intensity::new(1, 100));
        for i in 0..1000u64 {
            assert_eq!(w.record(i * 101), Allowed);
            assert_eq!(w.len(), 1);
        }
    }

    #[test]
    fn history_is_bounded() {
        let mut w = RestartWindow::new(Intensity::new(2, u64::MAX));
        for t in 0..100 {
            let _ = w.record(t);
            assert!(w.len() <= 3);
        }
        assert_eq!(w.record(100), Exceeded);
    }

    #[test]
    fn huge_intensity_is_clamped() {
        let w = RestartWindow::new(Intensity::new(u32::MAX, 1));
        assert_eq!(w.intensity().max_restarts, RestartWindow::MAX_TRACKED_RESTARTS);
        assert_eq!(w.intensity().period_ms, 1);
    }

    #[test]
    fn backwards_time_is_clamped() {
        let mut w = RestartWindow::new(Intensity::new(5, 10));
        assert_eq!(w.record(1000), Allowed);
        assert_eq!(w.record(3), Allowed); // treated as 1000
        assert_eq!(w.count_in_window(0), 2);
        assert_eq!(w.count_in_window(1010), 2);
        assert_eq!(w.count_in_window(1011), 0);
    }

    #[test]
    fn period_zero_counts_same_millisecond_only() {
        let mut w = RestartWindow::new(Intensity::new(1, 0));
        assert_eq!(w.record(7), Allowed);
        assert_eq!(w.record(7), Exceeded);
        let mut w = RestartWindow::new(Intensity::new(1, 0));
        assert_eq!(w.record(7), Allowed);
        assert_eq!(w.record(8), Allowed);
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let mut w = RestartWindow::new(Intensity::new(1, u64::MAX));
        assert_eq!(w.record(u64::MAX), Allowed);
        assert_eq!(w.count_in_window(0), 1);
        assert_eq!(w.record(u64::MAX), Exceeded);
    }
}

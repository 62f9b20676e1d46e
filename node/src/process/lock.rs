//! The spin locks of a process's per-message paths (the runner's inbox, the trace ring).
//!
//! A spin lock's unlock is a plain release store, where a parking mutex's is a second atomic
//! read-modify-write; on paths taken once per message that is a measured difference (see
//! `cell.rs`). What a spin lock costs instead is the waiting: a waiter burns its core, and if
//! the holder is descheduled (or itself waits for a parking mutex, as the runner does for the
//! mailbox while holding its inbox), pure spinning can burn a whole time slice. [`Backoff`]
//! spins briefly and then yields the thread to the OS scheduler, so a waiter gives the holder
//! its core back.

use std::cell::Cell;

/// Spins this many times between two yields.
const SPINS_PER_YIELD: u32 = 64;

thread_local! {
    static SPINS: Cell<u32> = const { Cell::new(0) };
}

/// Spin, then yield (see the module docs). Only waiters call it: an uncontended lock never does.
pub(crate) struct Backoff;

impl spin::RelaxStrategy for Backoff {
    #[inline]
    fn relax() {
        let n = SPINS.with(|s| {
            let n = s.get().wrapping_add(1);
            s.set(n);
            n
        });
        if n % SPINS_PER_YIELD == 0 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// A spin lock that backs off to the scheduler ([`Backoff`]).
pub(crate) type SpinLock<T> = spin::mutex::SpinMutex<T, Backoff>;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn waiters_get_the_lock_while_a_holder_sleeps_and_counts_add_up() {
        let lock = Arc::new(SpinLock::new(0u64));
        let held = lock.lock();
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        *lock.lock() += 1;
                    }
                })
            })
            .collect();
        // The waiters spin and yield meanwhile; the holder (this thread) lets go later.
        std::thread::yield_now();
        drop(held);
        for w in waiters {
            w.join().expect("waiter");
        }
        assert_eq!(*lock.lock(), 4000);
    }
}

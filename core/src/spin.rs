//! An owner's own polling window: how a task awaiting an operation polls the transport itself
//! for a while before it leaves the operation to a progress thread and sleeps.
//!
//! Handing a completion from a progress thread to a sleeping task costs a wake-up of each
//! (tens of microseconds apiece on a virtual machine with few cores), and a transfer is a chain
//! of them. An owner that polls its own operation for a short window instead catches the end
//! without any. The nixl and ucx backends both poll this way.

use std::sync::{Arc, LazyLock};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

/// The longest an owner looks back to back within one poll. Each slice ends in a wake-up
/// through the owner's runtime (with a multi-threaded tokio runtime on 2 vCPUs, often a
/// futex wake of another worker), so slices are long; other futures of the owner's task (the
/// other side of a transfer awaited with `join!`) run only between slices, so a backend whose
/// owner could be waiting on another Connector of its task progresses that one meanwhile.
///
/// Measured with the nixl backend (4 KiB, cached registrations): between two Connectors of one
/// task, 50 µs slices took a 184 µs p50, 10 µs slices 58 µs, and 200 µs slices with the owner
/// progressing the other Connector 28 µs; across two processes, 200 µs slices added 8–38 µs to
/// the raw loop's p50 where 10 µs slices added 33–63 µs (three alternating runs each).
pub const SLICE: Duration = Duration::from_micros(200);

/// The waker of a poll that no task waits behind: ferry's `Operation::status` polls with it.
/// A backend whose owners poll their transport themselves takes one look on such a poll
/// ([`is_glance`]) and returns: it starts no window and hands nothing over, so `status()`
/// never waits.
pub fn glance() -> &'static Waker {
    static GLANCE: LazyLock<Waker> = LazyLock::new(|| Waker::from(Arc::new(Glance)));
    &GLANCE
}

/// Whether `cx` polls with [`glance`]'s waker.
pub fn is_glance(cx: &Context<'_>) -> bool {
    cx.waker().will_wake(glance())
}

/// What [`glance`]'s waker wakes: nothing.
struct Glance;

impl Wake for Glance {
    fn wake(self: Arc<Self>) {}
}

/// An owner's polling window of `budget`, started at its first poll.
///
/// Within it the owner looks again back to back for up to [`SLICE`] per poll, giving up the
/// CPU between looks (on a host with few cores the peer's process, or the progress thread, may
/// be what the transfer waits for), then returns `Pending` having woken itself, so other tasks
/// on its runtime thread run between slices. Past the window it hands over.
#[derive(Debug, Clone)]
pub struct Spin {
    budget: Duration,
    until: Option<Instant>,
}

/// What an owner does after a look that found its operation still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// Look again now (the CPU was given up once).
    Again,
    /// Return `Pending`, woken at once: the slice is spent, the window is not.
    Later,
    /// Leave the operation to the progress thread.
    HandOver,
}

impl Spin {
    /// A window of `budget` (at most [`Spin::LONGEST`]), not yet started. A zero budget hands
    /// over at the first look.
    pub fn new(budget: Duration) -> Spin {
        Spin {
            budget: budget.min(Spin::LONGEST),
            until: None,
        }
    }

    /// The longest window: a budget beyond it is cut to it (an `Instant` that far ahead
    /// could overflow).
    pub const LONGEST: Duration = Duration::from_secs(3600);

    /// The window's length.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// When the window ends; `None` before the first poll.
    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    /// Starts the window if this is the first poll, and returns where this poll's slice ends.
    pub fn slice(&mut self) -> Instant {
        let now = Instant::now();
        self.until.get_or_insert(now + self.budget);
        now + SLICE
    }

    /// What to do after a look that found the operation running, in the slice ending at
    /// `slice_end`. Gives up the CPU once before it answers [`Look::Again`].
    pub fn next(&self, slice_end: Instant) -> Look {
        let now = Instant::now();
        match self.until {
            Some(until) if now < until && now < slice_end => {
                std::thread::yield_now();
                Look::Again
            }
            Some(until) if now < until => Look::Later,
            _ => Look::HandOver,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_glance_waker_is_a_glance() {
        assert!(is_glance(&Context::from_waker(glance())));
        assert!(!is_glance(&Context::from_waker(Waker::noop())));
        let task = Waker::from(Arc::new(Glance));
        assert!(!is_glance(&Context::from_waker(&task)));
    }

    #[test]
    fn a_window_hands_over_once_spent() {
        let mut spin = Spin::new(Duration::ZERO);
        assert_eq!(spin.until(), None);
        let slice = spin.slice();
        assert!(spin.until().is_some());
        assert_eq!(spin.next(slice), Look::HandOver);
    }

    #[test]
    fn a_budget_of_ages_is_cut_to_the_longest_window() {
        let mut spin = Spin::new(Duration::MAX);
        let _ = spin.slice();
        let left = spin.until().expect("started") - Instant::now();
        assert!(left <= Spin::LONGEST);
    }

    #[test]
    fn a_spent_slice_asks_for_a_later_poll() {
        let mut spin = Spin::new(Duration::from_secs(3600));
        let _ = spin.slice();
        assert_eq!(spin.next(Instant::now()), Look::Later);
        let slice = spin.slice();
        assert_eq!(spin.next(slice), Look::Again);
    }
}

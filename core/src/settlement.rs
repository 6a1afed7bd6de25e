//! One operation's ending, settled exactly once between the thread that moves its bytes and the
//! task that owns it.
//!
//! A backend whose bytes move on a thread of its own (a progress thread, a driver) races the
//! operation's owner: the thread may finish the transfer while the owner cancels it or drops
//! it. SPEC §3 rule 2 wants exactly one terminal state whichever wins, and rule 3 wants the
//! backend off the owner's memory once the cancel or drop has returned. [`Settlement`] is that
//! decision, in one place:
//!
//! ```text
//!   backend thread (Settler)                 owner task (Settlement)
//!   touch(|| land bytes) ──┐   one mutex   ┌── poll_ended(cx): Pending, waker kept
//!   settle(Completed) ─────┴───── slot ────┴── close() on cancel / drop
//! ```
//!
//! - The first of [`Settler::settle`] and [`Settlement::close`] decides. A settle after a close
//!   returns `false` and changes nothing; a close after a settle hands the settled event back,
//!   so the owner ends in the state the backend reached (completion won the race).
//! - [`Settler::touch`] runs its closure only while the operation is live, holding the slot, so
//!   a close waits for a touch in progress and no touch starts after it: once `close` (or the
//!   drop) returns, nothing touches the memory through this settlement.
//! - [`Settler::settle_with`] is a touch that settles: a step past which the operation cannot
//!   be cancelled (sending the completion notification) is taken only while it is live, and
//!   settles it in the same hold of the slot, so a close comes wholly before or after.
//! - A settle wakes an owner parked in [`Settlement::poll_ended`]; no wake-up is lost.
//!
//! The synchronisation comes from the crate's loom shim, and `tests/loom_settlement.rs` checks
//! these promises under every interleaving loom can produce.
//!
//! ```
//! use ferry_core::state::Event;
//! use ferry_core::Settlement;
//!
//! let (mut owner, backend) = Settlement::new();
//! std::thread::spawn(move || {
//!     backend.touch(|| { /* land the bytes */ });
//!     backend.settle(Event::Completed)
//! })
//! .join()
//! .unwrap();
//! assert_eq!(owner.close(), Some(Event::Completed), "completion won the race");
//! ```

use std::fmt;
use std::task::{Context, Poll, Waker};

use crate::loom::sync::{Arc, Mutex, MutexGuard};
use crate::state::Event;

#[derive(Debug, Default)]
struct Slot {
    /// What the backend settled, kept (sticky) once set.
    ended: Option<Event>,
    /// The owner cancelled or dropped the operation: nothing may settle or touch any more.
    closed: bool,
    /// The owner's task, parked in `poll_ended`.
    waker: Option<Waker>,
}

impl Slot {
    fn live(&self) -> bool {
        !self.closed && self.ended.is_none()
    }
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    // A panic while holding the lock can only come from a closure given to `touch`; the slot's
    // fields are each valid on their own, so carrying on is sound.
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The owner's side of an operation's ending. Dropping it is [`Settlement::close`].
pub struct Settlement {
    slot: Arc<Mutex<Slot>>,
}

/// The backend's side of an operation's ending; clone it for every source of an ending (the
/// transfer, a deadline timer, peer loss).
#[derive(Clone)]
pub struct Settler {
    slot: Arc<Mutex<Slot>>,
}

impl Settlement {
    /// A live, unsettled operation's two sides.
    pub fn new() -> (Settlement, Settler) {
        let slot = Arc::new(Mutex::new(Slot::default()));
        (Settlement { slot: slot.clone() }, Settler { slot })
    }

    /// The settled event, or `Pending` with `cx`'s waker kept for the settle. After a close
    /// that won, it is `Ready(CancelRequested)`.
    pub fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<Event> {
        let mut slot = lock(&self.slot);
        match (&slot.ended, slot.closed) {
            (Some(event), _) => Poll::Ready(event.clone()),
            (None, true) => Poll::Ready(Event::CancelRequested),
            (None, false) => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// [`Settlement::poll_ended`] without keeping a waker: `None` while the operation runs.
    /// For an owner that polls its transport itself between looks, so that a settle during
    /// its look wakes nothing.
    pub fn ended(&self) -> Option<Event> {
        let slot = lock(&self.slot);
        match (&slot.ended, slot.closed) {
            (Some(event), _) => Some(event.clone()),
            (None, true) => Some(Event::CancelRequested),
            (None, false) => None,
        }
    }

    /// Ends the operation from the owner's side (cancel or drop). Returns the event the backend
    /// settled first, if it did (the operation then ends in that state, not `Cancelled`), or
    /// `None` when this close decided. Either way, when it returns no [`Settler::touch`] is
    /// running and none will run.
    pub fn close(&mut self) -> Option<Event> {
        let mut slot = lock(&self.slot);
        slot.closed = true;
        slot.waker = None;
        slot.ended.clone()
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        self.close();
    }
}

impl Settler {
    /// Settles the operation with `event` if nothing has yet (neither a settle nor the owner's
    /// close), waking the owner. Returns whether this call decided.
    pub fn settle(&self, event: Event) -> bool {
        self.settle_with(|| (event, ())).is_some()
    }

    /// Runs `decide` only while the operation is live, holding the slot as [`Settler::touch`]
    /// does, and settles with the event it returns, waking the owner; its other result comes
    /// back. `None`, without running it, once the operation has been settled or closed.
    ///
    /// For a step past which the operation cannot be cancelled, such as sending the peer the
    /// completion notification: the owner's close either comes first (the step is not taken)
    /// or finds the operation settled with what `decide` returned, never in between.
    pub fn settle_with<R>(&self, decide: impl FnOnce() -> (Event, R)) -> Option<R> {
        let mut slot = lock(&self.slot);
        if !slot.live() {
            return None;
        }
        let (event, decided) = decide();
        slot.ended = Some(event);
        let waker = slot.waker.take();
        drop(slot);
        if let Some(waker) = waker {
            waker.wake();
        }
        Some(decided)
    }

    /// Runs `access` (for example, landing bytes in the owner's memory) only while the
    /// operation is live, and returns its result; `None`, without running it, once the
    /// operation has been settled or closed. The owner's close waits for a running `access`.
    pub fn touch<R>(&self, access: impl FnOnce() -> R) -> Option<R> {
        let slot = lock(&self.slot);
        slot.live().then(access)
    }

    /// Whether the operation is neither settled nor closed.
    pub fn is_live(&self) -> bool {
        lock(&self.slot).live()
    }
}

impl fmt::Debug for Settlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Settlement")
            .field(&*lock(&self.slot))
            .finish()
    }
}

impl fmt::Debug for Settler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Settler").field(&*lock(&self.slot)).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn first_settle_wins_and_wakes_the_owner() {
        let (owner, backend) = Settlement::new();
        let counter = std::sync::Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(owner.poll_ended(&mut cx), Poll::Pending);
        assert!(backend.settle(Event::Completed));
        assert!(!backend.clone().settle(Event::Failed(Error::StaleMetadata)));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(owner.poll_ended(&mut cx), Poll::Ready(Event::Completed));
        assert_eq!(backend.touch(|| 1), None, "settled: no more access");
    }

    #[test]
    fn a_close_shuts_the_backend_out() {
        let (mut owner, backend) = Settlement::new();
        assert_eq!(backend.touch(|| 7), Some(7));
        assert_eq!(owner.close(), None);
        assert!(!backend.is_live());
        assert_eq!(backend.touch(|| 7), None);
        assert!(!backend.settle(Event::Completed));
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            owner.poll_ended(&mut cx),
            Poll::Ready(Event::CancelRequested)
        );
    }

    #[test]
    fn settle_with_takes_the_step_only_while_live() {
        let (mut owner, backend) = Settlement::new();
        let mut steps = 0;
        assert_eq!(
            backend.settle_with(|| {
                steps += 1;
                (Event::Completed, "sent")
            }),
            Some("sent")
        );
        assert_eq!(
            backend.settle_with(|| {
                steps += 1;
                (Event::Failed(Error::StaleMetadata), "sent twice")
            }),
            None,
            "settled: the step is not taken again"
        );
        assert_eq!(steps, 1);
        assert_eq!(owner.close(), Some(Event::Completed));

        let (mut owner, backend) = Settlement::new();
        assert_eq!(owner.close(), None);
        assert_eq!(backend.settle_with(|| (Event::Completed, ())), None);
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            owner.poll_ended(&mut cx),
            Poll::Ready(Event::CancelRequested)
        );
    }

    #[test]
    fn dropping_the_owner_closes() {
        let (owner, backend) = Settlement::new();
        drop(owner);
        assert!(!backend.settle(Event::Completed));
        assert_eq!(backend.touch(|| ()), None);
    }
}

//! The outcome table: how each operation's ending is decided between its owner and whoever
//! drives the worker (the progress thread, or an owner polling under the progress state's
//! lock), through ferry-core's [`Settlement`] (the owner's side) and [`Settler`] (the table's).
//!
//! ```text
//!  owner (caller threads)                    Table (one mutex)          worker's driver
//!  ────────────────────                      ─────────────────          ───────────────
//!  PassiveTransfer: Settlement ──── passive: KeyTable<Settler> ◄─ notify: take + settle
//!  ActiveTransfer:  Settlement ──── active:  id → Settler      ◄─ end: settle_with(send
//!                                                                    the notification)
//! ```
//!
//! - A notification settles the passive operation it names and consumes its key at once
//!   (SPEC §3 rule 4: first one wins, O(1), nothing left behind); a notification that finds no
//!   key is counted. The owner's cancel or drop closes its settlement and removes the key in
//!   one hold of the table, so a notification either settled first (the owner ends in that
//!   state) or finds no key.
//! - An active operation's completion notification is sent inside
//!   [`Settler::settle_with`]: the owner's close comes wholly before it (the peer is told
//!   `cancel` instead, and never sees both) or finds the operation `Complete`. A close that
//!   decided waits for the progress thread to drain the operation's requests before it
//!   returns.
//!
//! Lock order: the table, then one settlement; never a settlement, then the table. (The
//! closure given to `settle_with` may take the table: with UCX's `self` transport, a
//! notification to this worker is delivered inside `am_send`; so nothing closes or settles an
//! active operation while holding the table.) The progress state's lock, held by whoever
//! drives the worker, comes before both; nothing takes it while holding the table or a
//! settlement.
//!
//! This file is also compiled by ferry-core's loom model (`core/tests/loom_settlement.rs`
//! includes it by path), which checks these races under every interleaving: it uses only
//! `ferry_core`, `std::collections` and its parent's `sync` module (std's types here, loom's
//! there).

use std::collections::HashMap;

use ferry_core::state::Event;
use ferry_core::{Error, KeyTable, Notification, NotificationKey, Settlement, Settler};

use super::sync::{Mutex, MutexGuard};

/// The settlers of every live operation of one backend, shared by its callers and its
/// worker's drivers.
#[derive(Default)]
pub(crate) struct Table {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Passive operations by notification key.
    passive: KeyTable<Settler>,
    /// Active operations by id, until the worker's driver ends them.
    active: HashMap<u64, Settler>,
    /// Notifications that were not a key's completion or cancel message.
    unparsed: u64,
}

/// How the worker's driver ended an active operation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ending<M> {
    /// `Complete`: the completion notification (`M`, still leaving) was sent.
    Notified(M),
    /// `Errored`, with the event the owner gets.
    Failed,
    /// The owner closed first: the operation is `Cancelled`, and its peer must be told so.
    Cancelled,
}

/// Operations the table holds, for leak checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Passive operations waiting for their notification.
    pub(crate) live_keys: usize,
    /// Active operations the worker's driver has not ended.
    pub(crate) live_transfers: usize,
    /// Notifications that matched no live operation.
    pub(crate) unmatched: u64,
}

impl Table {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Each field is valid on its own (a panic cannot leave one half-updated), so a poisoned
        // lock is carried on with.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A passive operation exposed under `key`; its owner holds the settlement. `None` if the
    /// key is already live (keys are random: only a caller reusing one gets here).
    pub(crate) fn expose(&self, key: NotificationKey) -> Option<Settlement> {
        let (settlement, settler) = Settlement::new();
        self.lock()
            .passive
            .insert(key, settler)
            .then_some(settlement)
    }

    /// An inbound notification (the active-message handler, run by whoever progresses the worker): settles the
    /// passive operation it names, `Complete` or `Cancelled` by the peer, and consumes its key.
    /// Whether it matched a live operation; a miss (unknown key, already ended, unparseable) is
    /// counted.
    pub(crate) fn notify(&self, message: &[u8]) -> bool {
        let mut inner = self.lock();
        let (key, event) = match Notification::parse(message) {
            Some(Notification::Complete(key)) => (key, Event::Completed),
            Some(Notification::Cancel(key)) => (key, Event::PeerCancelled),
            None => {
                inner.unparsed += 1;
                return false;
            }
        };
        // A settler in the table belongs to an operation its owner has not closed (the close
        // removes it in the same hold), so this settle decides.
        inner
            .passive
            .take(&key)
            .is_some_and(|settler| settler.settle(event))
    }

    /// The owner's cancel or drop of the passive operation `key`: closes its settlement and
    /// forgets the key, in one hold of the table. The event a notification settled first, if
    /// one did (the operation ends in that state); `None` when this close decided.
    pub(crate) fn close_passive(
        &self,
        key: &NotificationKey,
        settlement: &mut Settlement,
    ) -> Option<Event> {
        let mut inner = self.lock();
        let settled = settlement.close();
        inner.passive.remove(key);
        settled
    }

    /// An active operation `id`, about to be posted; its owner holds the settlement.
    pub(crate) fn begin(&self, id: u64) -> Settlement {
        let (settlement, settler) = Settlement::new();
        self.lock().active.insert(id, settler);
        settlement
    }

    /// The settler of active operation `id`, for the worker's driver; `None` once it ended.
    pub(crate) fn settler(&self, id: u64) -> Option<Settler> {
        self.lock().active.get(&id).cloned()
    }

    /// Ends active operation `id` (by the worker's driver), once none of its requests is in
    /// flight: `moved` says how they went, and `notify` sends the completion notification.
    /// The notification is sent only if the owner has not closed the operation, and settles it
    /// in the same step. The table forgets the operation before its owner can see the ending.
    pub(crate) fn end<M>(
        &self,
        id: u64,
        settler: &Settler,
        moved: Result<(), Error>,
        notify: impl FnOnce() -> Result<M, Error>,
    ) -> Ending<M> {
        self.lock().active.remove(&id);
        let ending = match moved {
            Ok(()) => settler.settle_with(|| match notify() {
                Ok(message) => (Event::Completed, Ending::Notified(message)),
                Err(e) => (Event::Failed(e), Ending::Failed),
            }),
            Err(e) => settler.settle(Event::Failed(e)).then_some(Ending::Failed),
        };
        ending.unwrap_or(Ending::Cancelled)
    }

    /// The owner's cancel or drop of active operation `id`. The event the worker's driver
    /// settled first, if it did (it then has nothing of the operation in flight); otherwise
    /// this close decided (`Cancelled`), and `drain` is called to wait until the thread has
    /// no request of the operation in flight and has told the peer. Either way, once this
    /// returns nothing touches the operation's memory.
    pub(crate) fn close_active(
        &self,
        id: u64,
        settlement: &mut Settlement,
        drain: impl FnOnce(),
    ) -> Option<Event> {
        let settled = settlement.close();
        if settled.is_none() {
            drain();
        }
        self.forget(id);
        settled
    }

    /// Forgets active operation `id` (a post that never reached the worker).
    pub(crate) fn forget(&self, id: u64) {
        self.lock().active.remove(&id);
    }

    /// What the table holds now.
    pub(crate) fn counts(&self) -> Counts {
        let inner = self.lock();
        Counts {
            live_keys: inner.passive.len(),
            live_transfers: inner.active.len(),
            unmatched: inner.passive.unmatched() + inner.unparsed,
        }
    }
}

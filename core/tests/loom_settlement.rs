//! A loom model of the completion / cancel / drop race (SPEC §3 rules 2 and 3) on
//! [`ferry_core::Settlement`]: a backend thread lands bytes and settles while the owner waits,
//! cancels or drops the operation. loom runs every interleaving of the threads (its `Mutex`
//! and atomics replace std's through the crate's shim) and each check below must hold in all
//! of them:
//!
//! - exactly one side decides the ending (the settle returned `true` exactly when the close
//!   handed the settled event back);
//! - once the owner's close or drop has returned, the backend never touches the memory (the
//!   owner marks it freed right after, and a touch that sees the mark fails the model);
//! - an owner parked waiting is woken by the settle (a lost wake-up is a loom deadlock);
//! - of several settlers racing (the transfer, a deadline timer), exactly one wins;
//! - a step past which the operation cannot be cancelled (`settle_with`: sending the
//!   completion notification) is taken only if the close has not come first, and then the
//!   close finds the operation settled.
//!
//! The second half runs the ucx backend's own outcome table, `backend-ucx/src/backend/table.rs`
//! (included by path; its `sync` types are loom's here), against its progress thread and its
//! operations' owners: a notification against a passive cancel, an active operation's ending
//! against its cancel (with the drain the cancel waits for), and a Connector reading from
//! itself, where the completion notification is delivered inside the send (lock order).
//!
//! Run it (a few seconds in release):
//! `RUSTFLAGS="--cfg loom" cargo test -p ferry-core --release --test loom_settlement`
#![cfg(loom)]

use std::future::poll_fn;

use ferry_core::state::Event;
use ferry_core::{Error, NotificationKey, Settlement, Settler};
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

/// What the ucx table takes from its parent module: loom's types here, std's in the backend.
mod sync {
    pub(super) use loom::sync::{Mutex, MutexGuard};
}

/// The ucx backend's outcome table, the file the backend compiles.
#[path = "../../backend-ucx/src/backend/table.rs"]
mod ucx_table;

use ucx_table::{Ending, Table};

/// `loom::model`, counting the interleavings it explored and printing the count.
fn explore(name: &str, model: impl Fn() + Sync + Send + 'static) {
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = runs.clone();
    loom::model(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        model();
    });
    let runs = runs.load(std::sync::atomic::Ordering::Relaxed);
    assert!(runs > 1, "{name}: loom explored a single interleaving");
    println!("{name}: {runs} interleavings explored");
}

/// The owner's memory, as far as the model cares: whether the owner has freed it, and how many
/// bytes the backend landed in it.
#[derive(Default)]
struct Memory {
    freed: AtomicBool,
    landed: AtomicUsize,
}

impl Memory {
    fn land(&self) {
        assert!(
            !self.freed.load(SeqCst),
            "the backend touched memory after its operation was closed"
        );
        self.landed.fetch_add(1, SeqCst);
    }
}

#[test]
fn completion_races_cancel() {
    explore("completion_races_cancel", || {
        let memory = Arc::new(Memory::default());
        let (mut owner, backend) = Settlement::new();
        let thread_memory = memory.clone();
        let transfer = thread::spawn(move || {
            backend.touch(|| thread_memory.land());
            backend.settle(Event::Completed)
        });
        let decided = owner.close();
        memory.freed.store(true, SeqCst);
        let settled = transfer.join().expect("backend thread");
        assert_eq!(
            settled,
            decided.is_some(),
            "one terminal state, not two or none"
        );
        if let Some(event) = decided {
            assert_eq!(event, Event::Completed);
            assert_eq!(
                memory.landed.load(SeqCst),
                1,
                "complete only with the bytes"
            );
        }
    });
}

#[test]
fn completion_races_drop() {
    explore("completion_races_drop", || {
        let memory = Arc::new(Memory::default());
        let (owner, backend) = Settlement::new();
        let thread_memory = memory.clone();
        let transfer = thread::spawn(move || {
            let landed = backend.touch(|| thread_memory.land()).is_some();
            let settled = backend.settle(Event::Completed);
            (landed, settled)
        });
        drop(owner);
        memory.freed.store(true, SeqCst);
        let (landed, settled) = transfer.join().expect("backend thread");
        assert!(landed || !settled, "settled complete without landing");
        assert_eq!(memory.landed.load(SeqCst), usize::from(landed));
    });
}

#[test]
fn completion_wakes_a_waiting_owner() {
    explore("completion_wakes_a_waiting_owner", || {
        let memory = Arc::new(Memory::default());
        let (owner, backend) = Settlement::new();
        let thread_memory = memory.clone();
        let transfer = thread::spawn(move || {
            backend.touch(|| thread_memory.land());
            assert!(backend.settle(Event::Completed), "nobody else decides");
        });
        let ended = loom::future::block_on(poll_fn(|cx| owner.poll_ended(cx)));
        assert_eq!(ended, Event::Completed);
        assert_eq!(
            memory.landed.load(SeqCst),
            1,
            "the bytes landed before the wake"
        );
        transfer.join().expect("backend thread");
    });
}

#[test]
fn a_deadline_races_completion_and_cancel() {
    explore("a_deadline_races_completion_and_cancel", || {
        let (mut owner, transfer_side) = Settlement::new();
        let timer_side = transfer_side.clone();
        let transfer = thread::spawn(move || transfer_side.settle(Event::Completed));
        let timer =
            thread::spawn(move || timer_side.settle(Event::Failed(Error::DeadlineExceeded)));
        let decided = owner.close();
        let by_transfer = transfer.join().expect("transfer thread");
        let by_timer = timer.join().expect("timer thread");
        let winners =
            usize::from(by_transfer) + usize::from(by_timer) + usize::from(decided.is_none());
        assert_eq!(winners, 1, "exactly one ending");
        match decided {
            Some(Event::Completed) => assert!(by_transfer),
            Some(Event::Failed(Error::DeadlineExceeded)) => assert!(by_timer),
            Some(other) => panic!("settled with {other:?}"),
            None => {}
        }
    });
}

#[test]
fn the_notification_commits_or_the_cancel_wins() {
    explore("the_notification_commits_or_the_cancel_wins", || {
        let peer = Arc::new(Peer::default());
        let (mut owner, backend) = Settlement::new();
        let thread_peer = peer.clone();
        let transfer = thread::spawn(move || {
            let sent = backend.settle_with(|| {
                thread_peer.completion.store(true, SeqCst);
                (Event::Completed, ())
            });
            if sent.is_none() {
                thread_peer.cancel.store(true, SeqCst);
            }
        });
        let decided = owner.close();
        transfer.join().expect("backend thread");
        peer.heard_exactly_one();
        assert_eq!(
            decided == Some(Event::Completed),
            peer.completion.load(SeqCst),
            "the owner's ending and what its peer heard disagree"
        );
    });
}

// The ucx backend's outcome table.

/// What an active operation's peer was told.
#[derive(Default)]
struct Peer {
    completion: AtomicBool,
    cancel: AtomicBool,
}

impl Peer {
    fn heard_exactly_one(&self) {
        assert!(
            self.completion.load(SeqCst) != self.cancel.load(SeqCst),
            "the peer must hear exactly one of completion and cancel"
        );
    }
}

/// The progress thread's answer to a cancel: set once the operation has nothing in flight.
#[derive(Default)]
struct Drained {
    done: Mutex<bool>,
    signal: Condvar,
}

impl Drained {
    fn set(&self) {
        *self.done.lock().expect("drained") = true;
        self.signal.notify_all();
    }

    fn wait(&self) {
        let mut done = self.done.lock().expect("drained");
        while !*done {
            done = self.signal.wait(done).expect("drained");
        }
    }
}

const KEY: [u8; 16] = [7; 16];
const ACTIVE: u64 = 1;

/// An active operation on the ucx table, raced by the progress thread and its owner.
struct ActiveRace {
    table: Arc<Table>,
    memory: Arc<Memory>,
    drained: Arc<Drained>,
}

impl ActiveRace {
    /// Begins operation [`ACTIVE`] on `table`; its owner holds the settlement.
    fn begin(table: &Arc<Table>) -> (ActiveRace, Settlement) {
        let race = ActiveRace {
            table: table.clone(),
            memory: Arc::default(),
            drained: Arc::default(),
        };
        (race, table.begin(ACTIVE))
    }

    /// The progress thread's part, as `progress.rs` does it around the table: the post finds
    /// the settler (and posts nothing once the owner has closed), the requests land bytes,
    /// then the table ends the operation with `notify` as the completion's send, and a
    /// cancelled operation's peer is told so by `tell_cancelled`. Then the drain is answered.
    fn spawn_progress(
        &self,
        notify: impl FnOnce(&Table) + Send + 'static,
        tell_cancelled: impl FnOnce(&Table) + Send + 'static,
    ) -> thread::JoinHandle<Option<Ending<()>>> {
        let (table, memory, drained) = (
            self.table.clone(),
            self.memory.clone(),
            self.drained.clone(),
        );
        thread::spawn(move || {
            let ending = match table.settler(ACTIVE).filter(Settler::is_live) {
                None => {
                    table.forget(ACTIVE);
                    tell_cancelled(&table);
                    None
                }
                Some(settler) => {
                    memory.land();
                    let ending = table.end(ACTIVE, &settler, Ok(()), || {
                        notify(&table);
                        Ok(())
                    });
                    if ending == Ending::Cancelled {
                        tell_cancelled(&table);
                    }
                    Some(ending)
                }
            };
            drained.set();
            ending
        })
    }

    /// The owner's cancel or drop, which waits for the drain when it decided; the memory is
    /// freed once it returns.
    fn cancel(&self, owner: &mut Settlement) -> Option<Event> {
        let decided = self
            .table
            .close_active(ACTIVE, owner, || self.drained.wait());
        self.memory.freed.store(true, SeqCst);
        decided
    }
}

#[test]
fn ucx_notification_races_passive_cancel() {
    explore("ucx_notification_races_passive_cancel", || {
        let table = Arc::new(Table::default());
        let key = NotificationKey::from_random_bytes(KEY);
        let mut owner = table.expose(key).expect("a new key");
        let thread_table = table.clone();
        let progress = thread::spawn(move || {
            let first = thread_table.notify(&key.completion_message());
            let second = thread_table.notify(&key.cancel_message());
            (first, second)
        });
        let decided = table.close_passive(&key, &mut owner);
        let (first, second) = progress.join().expect("progress thread");
        assert_eq!(
            first,
            decided.is_some(),
            "one terminal state, not two or none"
        );
        if let Some(event) = decided {
            assert_eq!(event, Event::Completed, "the first notification wins");
        }
        assert!(!second, "the key is consumed by its first notification");
        let counts = table.counts();
        assert_eq!(counts.live_keys, 0, "the key is left behind");
        assert_eq!(counts.unmatched, 2 - u64::from(first));
    });
}

#[test]
fn ucx_notification_wakes_a_waiting_passive() {
    explore("ucx_notification_wakes_a_waiting_passive", || {
        let table = Arc::new(Table::default());
        let key = NotificationKey::from_random_bytes(KEY);
        let mut owner = table.expose(key).expect("a new key");
        let thread_table = table.clone();
        let progress =
            thread::spawn(move || assert!(thread_table.notify(&key.completion_message())));
        let ended = loom::future::block_on(poll_fn(|cx| owner.poll_ended(cx)));
        assert_eq!(ended, Event::Completed);
        assert_eq!(
            table.close_passive(&key, &mut owner),
            Some(Event::Completed)
        );
        progress.join().expect("progress thread");
        assert_eq!(table.counts().live_keys, 0);
    });
}

#[test]
fn ucx_active_ending_races_cancel() {
    explore("ucx_active_ending_races_cancel", || {
        let table = Arc::new(Table::default());
        let peer = Arc::new(Peer::default());
        let (race, mut owner) = ActiveRace::begin(&table);
        let (completion, cancel) = (peer.clone(), peer.clone());
        let progress = race.spawn_progress(
            move |_| completion.completion.store(true, SeqCst),
            move |_| cancel.cancel.store(true, SeqCst),
        );
        let decided = race.cancel(&mut owner);
        let ending = progress.join().expect("progress thread");
        peer.heard_exactly_one();
        match decided {
            Some(event) => {
                assert_eq!(event, Event::Completed);
                assert_eq!(ending, Some(Ending::Notified(())));
                let landed = race.memory.landed.load(SeqCst);
                assert_eq!(landed, 1, "complete only with the bytes");
            }
            None => assert!(
                !peer.completion.load(SeqCst),
                "cancelled here, completed at the peer"
            ),
        }
        assert_eq!(
            table.counts().live_transfers,
            0,
            "the operation is left behind"
        );
    });
}

#[test]
fn ucx_connector_reading_from_itself() {
    explore("ucx_connector_reading_from_itself", || {
        let table = Arc::new(Table::default());
        let key = NotificationKey::from_random_bytes(KEY);
        let mut readable = table.expose(key).expect("a new key");
        let (race, mut read) = ActiveRace::begin(&table);
        // UCX's `self` transport runs the handler inside the send: the completion reaches the
        // readable while the read's settlement is held.
        let progress = race.spawn_progress(
            move |table| {
                table.notify(&key.completion_message());
            },
            move |table| {
                table.notify(&key.cancel_message());
            },
        );
        let passive_table = table.clone();
        let passive_owner = thread::spawn(move || passive_table.close_passive(&key, &mut readable));
        let active = race.cancel(&mut read);
        progress.join().expect("progress thread");
        let passive = passive_owner.join().expect("readable's owner");
        if active.is_none() {
            assert_ne!(
                passive,
                Some(Event::Completed),
                "the reader cancelled but the readable completed"
            );
        }
        if passive == Some(Event::Completed) {
            assert_eq!(active, Some(Event::Completed));
        }
        let counts = table.counts();
        assert_eq!((counts.live_keys, counts.live_transfers), (0, 0));
    });
}

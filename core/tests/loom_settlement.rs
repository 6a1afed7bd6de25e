//! A loom model of the completion / cancel / drop race (SPEC §3 rules 2 and 3) on
//! [`ferry_core::Settlement`]: a backend thread lands bytes and settles while the owner waits,
//! cancels or drops the operation. loom runs every interleaving of the two threads (its
//! `Mutex` and atomics replace std's through the crate's shim) and each check below must hold
//! in all of them:
//!
//! - exactly one side decides the ending (the settle returned `true` exactly when the close
//!   handed the settled event back);
//! - once the owner's close or drop has returned, the backend never touches the memory (the
//!   owner marks it freed right after, and a touch that sees the mark fails the model);
//! - an owner parked waiting is woken by the settle (a lost wake-up is a loom deadlock);
//! - of several settlers racing (the transfer, a deadline timer), exactly one wins.
//!
//! Run it (about a second in release):
//! `RUSTFLAGS="--cfg loom" cargo test -p ferry-core --release --test loom_settlement`
#![cfg(loom)]

use std::future::poll_fn;

use ferry_core::state::Event;
use ferry_core::{Error, Settlement};
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use loom::sync::Arc;
use loom::thread;

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

//! Back-to-back nixl operations whose owners await them leave the progress thread parked.
//! Before, every exposed operation woke it, and every owner woke it again after each 50 µs
//! slice of its own polling: a futex wake and a thread hop per operation, on both sides.
#![cfg(feature = "nixl")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::nixl::{NixlBackend, NixlConfig};
use ferry::{Connector, Descriptor};

async fn connector(name: &str) -> (Connector, Arc<NixlBackend>) {
    let config = NixlConfig::named(format!("{name}-{}-1", std::process::id()));
    common::nixl_connector(name, config, 4).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaited_operations_do_not_wake_the_progress_thread() {
    if let Err(reason) = ferry::nixl::available(None) {
        println!("skipped: {reason}");
        return;
    }
    let (reader, reader_backend) = connector("progress-reader").await;
    let (owner, owner_backend) = connector("progress-owner").await;
    const CYCLES: u64 = 60;
    for seed in 0..CYCLES {
        common::read_cycle(&reader, &owner, seed).await;
    }
    // The first operation on each side wakes a thread parked since its start; an owner whose
    // operation outlives its 1 ms window on a loaded host hands over, and wakes it too.
    for stats in [reader_backend.stats(), owner_backend.stats()] {
        assert!(stats.thread_wakes <= CYCLES / 4, "{stats:?}");
        assert_eq!((stats.live_keys, stats.live_transfers), (0, 0), "{stats:?}");
    }
}

/// An operation that no owner polls still finishes: the progress thread looks at it within
/// 20 ms of the end of the owner's window its post opened, and drives it to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_nobody_polls_are_finished_by_the_thread() {
    if let Err(reason) = ferry::nixl::available(None) {
        println!("skipped: {reason}");
        return;
    }
    let (reader, reader_backend) = connector("adopt-reader").await;
    let (owner, _) = connector("adopt-owner").await;
    for seed in 0..3 {
        let source = ferry::demo::pattern(4096, seed);
        let mut landing = vec![0u8; 4096];
        let mut readable = owner
            .create_readable([Descriptor::from_slice(&source)])
            .await
            .expect("readable");
        let mut read = reader
            .begin_read(
                readable.metadata(),
                [Descriptor::from_mut_slice(&mut landing)],
            )
            .await
            .expect("read");
        // Neither operation is polled: only the two progress threads move them. The read's
        // request leaves the reader's books once the thread has seen it finish.
        let posted = Instant::now();
        while reader_backend.stats().live_transfers > 0 {
            assert!(
                posted.elapsed() < Duration::from_secs(5),
                "the thread never finished a read nobody polled: {:?}",
                reader_backend.stats()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        println!(
            "read {seed} finished by the thread after {:?}",
            posted.elapsed()
        );
        read.wait_for_completion().await.expect("read completes");
        readable
            .wait_for_completion()
            .await
            .expect("readable completes");
        drop((read, readable));
        assert_eq!(landing, source);
    }
}

/// `status()` looks at NIXL once and returns. Before, it polled as an awaiting owner does:
/// each of its first calls on an operation whose peer had not begun looked back to back
/// until its 200 µs slice ended, for the whole 1 ms window it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_looks_once() {
    if let Err(reason) = ferry::nixl::available(None) {
        println!("skipped: {reason}");
        return;
    }
    let (owner, _) = connector("glance-owner").await;
    let (reader, _) = connector("glance-reader").await;
    let quickest = common::quickest_status_call(&owner, &reader).await;
    assert!(
        quickest < Duration::from_micros(150),
        "status() waited like an owner's poll: {quickest:?} at best"
    );
}

/// While owners await back-to-back operations the thread sets no timer per owner's window: it
/// parks for up to 20 ms at a time. Before, it woke at the end of every window (each
/// operation's 1 ms), about once a millisecond per busy Connector, on a vCPU that was copying
/// or polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaited_operations_set_the_thread_no_timer_per_window() {
    if let Err(reason) = ferry::nixl::available(None) {
        println!("skipped: {reason}");
        return;
    }
    let (reader, reader_backend) = connector("timer-reader").await;
    let (owner, owner_backend) = connector("timer-owner").await;
    common::read_cycle(&reader, &owner, 0).await;
    let before = [reader_backend.stats(), owner_backend.stats()];
    let started = Instant::now();
    let mut seed = 1;
    while started.elapsed() < Duration::from_millis(300) {
        common::read_cycle(&reader, &owner, seed).await;
        seed += 1;
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    for (before, after) in before
        .iter()
        .zip([reader_backend.stats(), owner_backend.stats()])
    {
        let parks = after.thread_parks - before.thread_parks;
        println!("{seed} cycles in {elapsed_ms} ms: the thread parked {parks} times");
        // One park per 20 ms, plus those after wake-ups by owners whose operation outlived
        // their window on a loaded host, and lingering looks (every millisecond) in gaps
        // between operations: well below the one per millisecond of the old rhythm.
        assert!(
            parks < elapsed_ms / 2,
            "{parks} parks in {elapsed_ms} ms: {after:?}"
        );
    }
}

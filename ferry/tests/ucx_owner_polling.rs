//! Owners that await their ucx operations drive the worker themselves: a host-memory read,
//! with its connect and the readable's mapping, sends the progress thread no command. Before,
//! every operation cost the thread a command and a wake-up for its post, and a readable
//! another for mapping its memory; with `owner_spin` zero it still does.
#![cfg(feature = "ucx")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use ferry::ucx::{UcxBackend, UcxConfig};
use ferry::Connector;

async fn connector(name: &str, owner_spin: Duration) -> (Connector, Arc<UcxBackend>) {
    let config = UcxConfig {
        owner_spin,
        ..UcxConfig::from_env().expect("the environment's ucx settings")
    };
    let backend = Arc::new(UcxBackend::with_config(config).expect("a ucx backend"));
    let connector = Connector::builder()
        .worker_id(name)
        .backend_arc(backend.clone())
        .build()
        .await
        .expect("a ucx Connector");
    (connector, backend)
}

const CYCLES: u64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaited_operations_send_the_progress_thread_nothing() {
    if let Err(reason) = ferry::ucx::available() {
        println!("skipped: {reason}");
        return;
    }
    let spin = UcxConfig::default().owner_spin;
    let (reader, reader_backend) = connector("owner-polling-reader", spin).await;
    let (owner, owner_backend) = connector("owner-polling-owner", spin).await;
    for seed in 0..CYCLES {
        common::read_cycle(&reader, &owner, seed).await;
    }
    for stats in [reader_backend.stats(), owner_backend.stats()] {
        assert_eq!(stats.thread_commands, 0, "{stats:?}");
        assert_eq!((stats.live_keys, stats.live_transfers), (0, 0), "{stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_owner_polling_the_thread_does_it_all() {
    if let Err(reason) = ferry::ucx::available() {
        println!("skipped: {reason}");
        return;
    }
    let (reader, reader_backend) = connector("thread-reader", Duration::ZERO).await;
    let (owner, owner_backend) = connector("thread-owner", Duration::ZERO).await;
    for seed in 0..CYCLES {
        common::read_cycle(&reader, &owner, seed).await;
    }
    // A post per read; a map per readable (registered and deregistered each time).
    let (reader_stats, owner_stats) = (reader_backend.stats(), owner_backend.stats());
    assert!(reader_stats.thread_commands >= CYCLES, "{reader_stats:?}");
    assert!(owner_stats.thread_commands >= CYCLES, "{owner_stats:?}");
}

/// Regression: posting on the caller's thread made `begin_write` of 1 MiB over tcp take about
/// 1 ms (UCX copies a put into the socket as it posts it), and an owner spinning beside the
/// threads slowed large transfers. An operation over 256 KiB is posted by the thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_operations_are_posted_by_the_thread() {
    if let Err(reason) = ferry::ucx::available() {
        println!("skipped: {reason}");
        return;
    }
    let spin = UcxConfig::default().owner_spin;
    let (reader, reader_backend) = connector("large-reader", spin).await;
    let (owner, _owner_backend) = connector("large-owner", spin).await;
    let source = ferry::demo::pattern(1 << 20, 7);
    let mut landing = vec![0u8; source.len()];
    common::read_in_pieces(&owner, &reader, &source, &mut landing, source.len()).await;
    let stats = reader_backend.stats();
    assert_eq!(stats.thread_commands, 1, "one post: {stats:?}");
}

/// `status()` looks at the worker once and returns. Before, it polled as an awaiting owner
/// does: each of its first calls on an operation whose peer had not begun looked back to back
/// until its 200 µs slice ended, for the whole window it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_looks_once() {
    if let Err(reason) = ferry::ucx::available() {
        println!("skipped: {reason}");
        return;
    }
    let spin = UcxConfig::default().owner_spin;
    let (owner, _) = connector("glance-owner", spin).await;
    let (reader, _) = connector("glance-reader", spin).await;
    let quickest = common::quickest_status_call(&owner, &reader).await;
    assert!(
        quickest < Duration::from_micros(150),
        "status() waited like an owner's poll: {quickest:?} at best"
    );
}

//! Back-to-back nixl operations whose owners await them leave the progress thread parked.
//! Before, every exposed operation woke it, and every owner woke it again after each 50 µs
//! slice of its own polling: a futex wake and a thread hop per operation, on both sides.
#![cfg(feature = "nixl")]

mod common;

use std::sync::Arc;

use ferry::nixl::{NixlBackend, NixlConfig};
use ferry::Connector;

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

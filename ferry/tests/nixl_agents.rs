//! A nixl Connector keeps a bounded set of remote agents loaded: each is loaded once while a
//! blob of its metadata is cached or an operation uses it, and unloaded (NIXL's
//! `invalidate_remote_md`) when neither holds it. Before, an agent stayed loaded in NIXL after
//! its blob left the cache, so a long-lived worker meeting ever new peers kept them all.
//!
//! NIXL also keeps the regions of every blob of an agent it has loaded until the agent is
//! unloaded, so an agent that stayed in use kept every region a peer registering per operation
//! ever offered; now it is loaded afresh once it holds more blobs than the cache.
#![cfg(feature = "nixl")]

mod common;

use std::sync::Arc;

use ferry::nixl::{NixlBackend, NixlConfig};
use ferry::{Connector, Descriptor};

async fn connector(name: &str, peer_cache: usize) -> (Connector, Arc<NixlBackend>) {
    let config = NixlConfig {
        peer_cache,
        ..NixlConfig::named(format!("{name}-{}-1", std::process::id()))
    };
    common::nixl_connector(name, config, 0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_agents_are_bounded_by_the_cache_and_reused() {
    if let Err(reason) = ferry::nixl::available(None) {
        println!("skipped: {reason}");
        return;
    }
    let (reader, backend) = connector("reader", 2).await;
    let mut owners = Vec::new();
    for i in 0..4 {
        owners.push(connector(&format!("owner{i}"), 256).await);
    }

    // One agent, however many of its blobs (each registration changes its metadata).
    common::read_cycle(&reader, &owners[0].0, 1).await;
    common::read_cycle(&reader, &owners[0].0, 2).await;
    let stats = backend.stats();
    assert_eq!(stats.remote_agents, 1, "{stats:?}");

    for (i, (owner, _)) in owners.iter().enumerate() {
        common::read_cycle(&reader, owner, 10 + i as u64).await;
        let stats = backend.stats();
        assert!(stats.loaded_peers <= 2, "{stats:?}");
        assert!(stats.remote_agents <= 2, "{stats:?}");
    }

    // An agent whose blob left the cache was unloaded; meeting it again loads it again.
    common::read_cycle(&reader, &owners[0].0, 20).await;
    let stats = backend.stats();
    assert!(stats.remote_agents <= 2, "{stats:?}");
}

/// However many operations held a remote agent, once they have ended and its blob has left
/// the cache nothing keeps it loaded: exactly the agent of the one cached blob stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_operations_leave_no_hold_on_their_agent() {
    if let Err(reason) = ferry::nixl::available(None) {
        println!("skipped: {reason}");
        return;
    }
    let (reader, backend) = connector("holds", 1).await;
    let mut owners = Vec::new();
    for i in 0..3 {
        owners.push(connector(&format!("held{i}"), 256).await);
    }
    for (i, (owner, _)) in owners.iter().enumerate() {
        for round in 0..3 {
            common::read_cycle(&reader, owner, 100 * i as u64 + round).await;
        }
        // Only the agent of the one cached blob is loaded: the earlier agents' operations
        // ended and released them.
        let stats = backend.stats();
        assert_eq!(stats.remote_agents, 1, "after owner {i}: {stats:?}");
        assert_eq!(stats.loaded_peers, 1, "after owner {i}: {stats:?}");
    }
}

/// A peer registering per operation sends new agent metadata with every operation, over new
/// regions; the reader's NIXL does not keep the regions of all of them. Before, the first
/// region was still held after 40 operations (NIXL adds each blob's regions to the agent's and
/// drops them only when the agent is unloaded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_in_use_keeps_the_regions_of_few_blobs() {
    if let Err(reason) = ferry::nixl::available(None) {
        println!("skipped: {reason}");
        return;
    }
    const CACHE: usize = 4;
    const OPERATIONS: usize = 40;
    let (reader, backend) = connector("regions", CACHE).await;
    let (owner, owner_backend) = connector("offers", 256).await;
    let agent = owner_backend.agent_name();
    let arena = ferry::demo::pattern(4096 * OPERATIONS, 7);
    let mut landing = vec![0u8; 4096];
    let mut offered = Vec::new();
    for piece in arena.chunks(4096) {
        let mut readable = owner
            .create_readable([Descriptor::from_slice(piece)])
            .await
            .expect("readable");
        offered.push(readable.metadata().descriptors[0]);
        common::read_readable(
            &reader,
            &mut readable,
            [Descriptor::from_mut_slice(&mut landing)],
        )
        .await;
        assert_eq!(landing, piece);
    }
    let held = offered
        .iter()
        .filter(|region| backend.holds_remote_region(&agent, region))
        .count();
    let stats = backend.stats();
    assert!(
        backend.holds_remote_region(&agent, offered.last().expect("offered")),
        "{stats:?}"
    );
    assert!(
        held <= CACHE + 1,
        "NIXL holds {held} of the {OPERATIONS} regions offered: {stats:?}"
    );
    assert!(stats.fresh_loads >= 1, "{stats:?}");
}

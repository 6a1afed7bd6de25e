//! A nixl Connector makes its transfer requests from prepared descriptor lists: kept while
//! the registrations and the remote metadata they were prepared against live, released before
//! either changes, so operations over reused buffers prepare nothing and operations over
//! memory registered anew still land every byte.
#![cfg(feature = "nixl")]

mod common;

use std::sync::Arc;

use ferry::nixl::{NixlBackend, NixlConfig};
use ferry::{Connector, Descriptor};

async fn connector(name: &str, cache: usize) -> (Connector, Arc<NixlBackend>) {
    let config = NixlConfig::named(format!("{name}-{}-prep", std::process::id()));
    common::nixl_connector(name, config, cache).await
}

/// `reader` reads `source` from a readable of `owner` into `landing`; both complete and every
/// byte lands.
async fn read_into(reader: &Connector, owner: &Connector, source: &[u8], landing: &mut [u8]) {
    landing.fill(0);
    common::read_in_pieces(owner, reader, source, landing, source.len()).await;
    assert_eq!(landing, source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_buffers_reuse_their_prepared_lists() {
    if let Err(reason) = ferry::nixl::available(None) {
        println!("skipped: {reason}");
        return;
    }
    let (reader, backend) = connector("reader", 4).await;
    let (owner, _) = connector("owner", 4).await;
    let source = ferry::demo::pattern(4096, 5);
    let mut landing = vec![0u8; 4096];

    read_into(&reader, &owner, &source, &mut landing).await;
    let first = backend.stats();
    assert_eq!(
        first.lists_prepared, 2,
        "one local and one remote list: {first:?}"
    );
    for _ in 0..10 {
        read_into(&reader, &owner, &source, &mut landing).await;
    }
    let after = backend.stats();
    assert_eq!(after.lists_prepared, 2, "nothing prepared again: {after:?}");
    assert_eq!(after.prepared_lists, 2, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistered_memory_releases_its_prepared_lists() {
    if let Err(reason) = ferry::nixl::available(None) {
        println!("skipped: {reason}");
        return;
    }
    // No registration cache: the reader registers and deregisters its landing per operation,
    // so no local list survives an operation, and every read still lands its bytes.
    let (reader, backend) = connector("reader", 0).await;
    let (owner, _) = connector("owner", 4).await;
    let source = ferry::demo::pattern(4096, 6);
    let mut landing = vec![0u8; 4096];
    for round in 1..=3u64 {
        read_into(&reader, &owner, &source, &mut landing).await;
        let stats = backend.stats();
        assert_eq!(stats.registrations, 0, "{stats:?}");
        assert_eq!(
            stats.prepared_lists, 1,
            "only the remote list is kept: {stats:?}"
        );
        assert_eq!(
            stats.lists_prepared,
            round + 1,
            "a local list per read: {stats:?}"
        );
    }

    // A cache of one registration: reading into another buffer evicts the first one's, and
    // with it every local list; reading into the first again prepares anew and lands.
    let (reader, backend) = connector("cached-reader", 1).await;
    let mut other = vec![0u8; 4096];
    read_into(&reader, &owner, &source, &mut landing).await;
    read_into(&reader, &owner, &source, &mut other).await;
    let before = backend.stats().lists_prepared;
    read_into(&reader, &owner, &source, &mut landing).await;
    let stats = backend.stats();
    assert_eq!(stats.registrations, 1, "{stats:?}");
    assert_eq!(
        stats.lists_prepared,
        before + 1,
        "the local list again: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_remote_metadata_releases_the_remote_lists() {
    if let Err(reason) = ferry::nixl::available(None) {
        println!("skipped: {reason}");
        return;
    }
    let (reader, backend) = connector("reader", 4).await;
    let (owner, _) = connector("owner", 0).await;
    let pool = ferry::demo::pattern(16384, 11);
    let source = &pool[..4096];
    let mut landing = vec![0u8; 4096];
    read_into(&reader, &owner, source, &mut landing).await;
    assert_eq!(backend.stats().lists_prepared, 2);

    // Each round the owner pins another pool around the source in place of the last, so its
    // next readable offers another registration and carries new agent metadata; the reader
    // loads it, releasing the remote list prepared against the old, and prepares it again
    // over the same regions.
    let pools = [16384, 12288, 8192].map(|end| Descriptor::from_slice(&pool[..end]));
    let mut pin = None;
    for (round, around) in pools.iter().enumerate() {
        drop(pin.take());
        pin = Some(owner.register([around]).expect("register"));
        read_into(&reader, &owner, source, &mut landing).await;
        let stats = backend.stats();
        assert_eq!(stats.prepared_lists, 2, "{stats:?}");
        assert_eq!(
            stats.lists_prepared,
            round as u64 + 3,
            "the remote list again, the local one kept: {stats:?}"
        );
    }

    // Pieces: a list of several descriptors on each side.
    let source = ferry::demo::pattern(4096, 30);
    landing.fill(0);
    common::read_in_pieces(&owner, &reader, &source, &mut landing, 1024).await;
    assert_eq!(landing, source);
}

/// A Connector reading from itself prepares its "remote" list against its own agent, whose
/// NIXL section is its registrations: deregistering memory must release that list too. Before
/// (236ac55) it was kept, and the next request carried the freed registration's metadata
/// (a crash in `sendXferRange` within a few rounds; valgrind saw the read of freed memory at
/// the first reuse).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_reading_from_itself_releases_its_own_lists_with_its_memory() {
    if let Err(reason) = ferry::nixl::available(None) {
        println!("skipped: {reason}");
        return;
    }
    let (connector, backend) = connector("self", 0).await;
    let mut source = vec![0u8; 4096];
    let mut landing = vec![0u8; 4096];
    for round in 0..20u64 {
        source.copy_from_slice(&ferry::demo::pattern(4096, 100 + round));
        read_into(&connector, &connector, &source, &mut landing).await;
        let stats = backend.stats();
        assert_eq!(stats.registrations, 0, "{stats:?}");
        assert_eq!(
            stats.prepared_lists, 0,
            "nothing outlives the memory: {stats:?}"
        );
    }
}

/// A remote region the peer never registered is refused before anything moves, as
/// `AccessDenied` (NIXL finds it in no metadata held for the peer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_the_peer_never_offered_is_refused() {
    if let Err(reason) = ferry::nixl::available(None) {
        println!("skipped: {reason}");
        return;
    }
    let (reader, _) = connector("reader", 4).await;
    let (owner, _) = connector("owner", 4).await;
    let source = ferry::demo::pattern(4096, 40);
    let mut landing = vec![0u8; 4096];
    let readable = owner
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let mut forged = readable.metadata().clone();
    let elsewhere = vec![0u8; 1 << 20];
    forged.descriptors[0].ptr = elsewhere.as_ptr() as u64 + 4096;
    let refused = reader
        .begin_read(&forged, [Descriptor::from_mut_slice(&mut landing)])
        .await
        .map(|_| ());
    assert!(
        matches!(refused, Err(ferry::Error::AccessDenied { .. })),
        "{refused:?}"
    );
    assert!(landing.iter().all(|&b| b == 0));
    drop(readable);
}

/// With a pin inside a pinned pool, regions leased from either are all read: the offer names
/// the pool and leaves out the pin inside it (NIXL looks a region up among neighbouring
/// sections; this layout read correctly here with both offered too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_inside_a_pool_is_offered_as_the_pool() {
    if let Err(reason) = ferry::nixl::available(None) {
        println!("skipped: {reason}");
        return;
    }
    let (reader, _) = connector("reader", 0).await;
    let (owner, _) = connector("owner", 0).await;
    let pool = ferry::demo::pattern(8192, 50);
    let (inner, whole) = (
        Descriptor::from_slice(&pool[4096..5120]),
        Descriptor::from_slice(&pool[..]),
    );
    // The inner pin is the older, so it is the one leased for the region inside it.
    let _inner = owner.register([&inner]).expect("inner pin");
    let _whole = owner.register([&whole]).expect("pool pin");
    let pieces = [4096..5120, 0..100, 5200..5300];
    let mut landings: Vec<Vec<u8>> = pieces.iter().map(|r| vec![0u8; r.len()]).collect();
    let mut readable = owner
        .create_readable(
            pieces
                .iter()
                .map(|r| Descriptor::from_slice(&pool[r.clone()])),
        )
        .await
        .expect("readable");
    common::read_readable(
        &reader,
        &mut readable,
        landings.iter_mut().map(|l| Descriptor::from_mut_slice(l)),
    )
    .await;
    for (landing, range) in landings.iter().zip(pieces) {
        assert_eq!(landing.as_slice(), &pool[range]);
    }
}

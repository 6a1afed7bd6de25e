//! Touching descriptors over nixl: both sides cut a buffer in many pieces, registered as one
//! region per side (ferry_core::coalesce), or on one side piece by piece (a pool pinned so,
//! as a Dynamo worker registers each descriptor on its own): every byte lands either way.
#![cfg(feature = "nixl")]

mod common;

use ferry::nixl::NixlConfig;
use ferry::{Connector, Descriptor};

async fn connector(name: &str) -> Connector {
    let config = NixlConfig::named(format!("{name}-{}-1", std::process::id()));
    common::nixl_connector(name, config, 0).await.0
}

/// `reader` reads `source` from a readable of `owner` in pieces of `piece` bytes on both sides.
async fn read_in_pieces(owner: &Connector, reader: &Connector, source: &[u8], piece: usize) {
    let mut landing = vec![0u8; source.len()];
    let mut readable = owner
        .create_readable(source.chunks(piece).map(Descriptor::from_slice))
        .await
        .expect("readable");
    let mut read = reader
        .begin_read(
            readable.metadata(),
            landing.chunks_mut(piece).map(Descriptor::from_mut_slice),
        )
        .await
        .expect("begin_read");
    let (r, p) = tokio::join!(read.wait_for_completion(), readable.wait_for_completion());
    r.expect("read");
    p.expect("readable");
    drop(read);
    assert_eq!(landing, source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touching_pieces_move_whether_or_not_registered_apart() {
    if let Err(reason) = ferry::nixl::available(None) {
        println!("skipped: {reason}");
        return;
    }
    let owner = connector("pieces-owner").await;
    let reader = connector("pieces-reader").await;
    let source = ferry::demo::pattern(1 << 20, 7);
    // Registered as one on both sides.
    read_in_pieces(&owner, &reader, &source, 256).await;
    // The owner's pieces pinned one by one: its readable leases those 256 registrations.
    let pieces: Vec<Descriptor<'_>> = source.chunks(4096).map(Descriptor::from_slice).collect();
    let pinned = owner.register(&pieces).expect("register");
    assert_eq!(pinned.len(), 256);
    let before = owner.stats();
    read_in_pieces(&owner, &reader, &source, 4096).await;
    assert_eq!(
        owner.stats().registrations,
        before.registrations,
        "no new registration"
    );
    drop(pinned);
}

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
    let mut landing = vec![0u8; source.len()];
    common::read_in_pieces(&owner, &reader, &source, &mut landing, 256).await;
    // The owner's pieces pinned one by one: its readable leases those 256 registrations.
    let pieces: Vec<Descriptor<'_>> = source.chunks(4096).map(Descriptor::from_slice).collect();
    let pinned = owner.register(&pieces).expect("register");
    assert_eq!(pinned.len(), 256);
    let before = owner.stats();
    landing.fill(0);
    common::read_in_pieces(&owner, &reader, &source, &mut landing, 4096).await;
    assert_eq!(
        owner.stats().registrations,
        before.registrations,
        "no new registration"
    );
    drop(pinned);
}

//! An operation over many touching pieces of one buffer registers that buffer once. Before,
//! every descriptor was its own registration: 4096 pieces of 1 MiB made 4096 NIXL
//! registrations per side and per operation (NIXL removes each from a list in linear time),
//! and a peer's metadata named 4096 regions; a one-process nixl transfer of them took a
//! 140 ms p50.
#![cfg(feature = "sim")]

mod common;

use ferry::sim::{SimBackend, SimWorld};
use ferry::{Connector, Descriptor};

async fn pair(seed: u64) -> (Connector, Connector) {
    let world = SimWorld::new(seed);
    let build = |name: &str| SimBackend::new(&world, name).expect("in a runtime");
    let a = Connector::builder()
        .backend(build("a"))
        .build()
        .await
        .expect("builds");
    let b = Connector::builder()
        .backend(build("b"))
        .build()
        .await
        .expect("builds");
    (a, b)
}

#[tokio::test]
async fn touching_pieces_register_once() {
    let (a, b) = pair(1).await;
    let source = ferry::demo::pattern(1 << 20, 1);
    let mut landing = vec![0u8; 1 << 20];
    common::read_in_pieces(&a, &b, &source, &mut landing, 256).await;
    for side in [&a, &b] {
        let stats = side.stats();
        assert_eq!(stats.registrations, 1, "4096 pieces, one buffer: {stats:?}");
        assert_eq!(stats.live_registrations, 0, "{stats:?}");
    }
}

#[tokio::test]
async fn separate_buffers_register_apart() {
    let (a, b) = pair(2).await;
    let (first, second) = (ferry::demo::pattern(4096, 2), ferry::demo::pattern(4096, 3));
    let (mut land_first, mut land_second) = (vec![0u8; 4096], vec![0u8; 4096]);
    let mut readable = a
        .create_readable([
            Descriptor::from_slice(&first),
            Descriptor::from_slice(&second),
        ])
        .await
        .expect("readable");
    let mut read = b
        .begin_read(
            readable.metadata(),
            [
                Descriptor::from_mut_slice(&mut land_first),
                Descriptor::from_mut_slice(&mut land_second),
            ],
        )
        .await
        .expect("begin_read");
    let (r, p) = tokio::join!(read.wait_for_completion(), readable.wait_for_completion());
    r.expect("read");
    p.expect("readable");
    drop((read, readable));
    assert_eq!((land_first, land_second), (first, second));
    // Two allocations are never merged (a gap between them, however small, was not offered).
    assert_eq!(a.stats().registrations, 2, "{:?}", a.stats());
    assert_eq!(b.stats().registrations, 2, "{:?}", b.stats());
}

#[tokio::test]
async fn a_pool_pinned_piece_by_piece_still_serves_touching_pieces() {
    let (a, b) = pair(3).await;
    let pool = ferry::demo::pattern(4 * 4096, 4);
    let pieces: Vec<Descriptor<'_>> = pool.chunks(4096).map(Descriptor::from_slice).collect();
    let registration = a.register(&pieces).expect("register");
    assert_eq!(registration.len(), 4);
    let before = a.stats();
    let mut landing = vec![0u8; 4 * 4096];
    common::read_in_pieces(&a, &b, &pool, &mut landing, 4096).await;
    let after = a.stats();
    assert_eq!(after.registrations, before.registrations, "{after:?}");
    assert_eq!(after.cache.hits - before.cache.hits, 4, "{after:?}");
    drop(registration);
    assert_eq!(a.stats().live_registrations, 0);
}

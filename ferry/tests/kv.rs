//! KV-cache block transfers on sim and tcp: scattered, partly adjacent and repeated block ids
//! between pools of different sizes and strides, data verified chunk by chunk; layouts that
//! cannot pair and bad block lists refused before any operation exists.
#![cfg(all(feature = "sim", feature = "tcp"))]

use std::time::Duration;

use ferry::kv::{
    KvBlockSet, KvError, KvLayout, KvMemory, KvOffer, KvPlanes, KvPool, KvShape, KvStrides,
};
use ferry::tcp::{TcpBackend, TcpConfig};
use ferry::{Connector, Side};

const LIMIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sim,
    Tcp,
    #[cfg(feature = "nixl")]
    Nixl,
}

async fn connector(backend: Backend, name: &str) -> Connector {
    let builder = Connector::builder().worker_id(name);
    let builder = match backend {
        Backend::Sim => builder,
        Backend::Tcp => builder.backend(
            TcpBackend::bind(TcpConfig::default())
                .await
                .expect("a tcp listener on 127.0.0.1"),
        ),
        #[cfg(feature = "nixl")]
        Backend::Nixl => {
            let agent = format!("kv-{name}-{}", std::process::id());
            builder.backend(
                ferry::nixl::NixlBackend::new(ferry::nixl::NixlConfig::named(agent))
                    .expect("a NIXL agent"),
            )
        }
    };
    builder.build().await.expect("a Connector")
}

fn shape(planes: KvPlanes, blocks: u32) -> KvShape {
    KvShape {
        layers: 3,
        planes,
        blocks,
        tokens_per_block: 4,
        kv_heads: 2,
        head_dim: 8,
        element_size: 2,
    }
}

/// The prefill pool: one packed allocation, 64 blocks.
fn prefill_layout(planes: KvPlanes) -> KvLayout {
    KvLayout::new(shape(planes, 64)).expect("prefill layout")
}

/// The decode pool: 96 blocks, one allocation per layer, a padded plane stride.
fn decode_layout(planes: KvPlanes) -> KvLayout {
    let shape = shape(planes, 96);
    let chunk = KvLayout::new(shape).expect("packed").chunk_bytes();
    let strides = KvStrides {
        block: chunk,
        plane: match planes {
            KvPlanes::Separate => 96 * chunk + 4096,
            KvPlanes::Fused => 0,
        },
        layer: None,
    };
    KvLayout::with_strides(shape, strides).expect("decode layout")
}

/// Source ids: a run, a lone block, a repeat of a block already sent, a pair, the last block.
const SOURCE: [u32; 8] = [3, 4, 5, 10, 3, 40, 41, 63];
/// Destination ids: a run, a lone block, a pair whose first half does not follow its source,
/// the last block.
const DESTINATION: [u32; 8] = [0, 1, 2, 50, 7, 8, 9, 95];
/// Runs per layer and plane that are adjacent on both sides: [0-2], [50], [7], [8-9], [95].
const RUNS: usize = 5;

/// The byte `i` of chunk (layer, plane, block) of the source pool.
fn byte(layer: u32, plane: u64, block: u32, i: usize) -> u8 {
    (layer as usize * 131 + plane as usize * 71 + block as usize * 17 + i * 3 + 1) as u8
}

fn fill(pool: &mut KvPool<'_>) {
    let shape = *pool.layout().shape();
    for layer in 0..shape.layers {
        for plane in 0..shape.planes.count() {
            for block in 0..shape.blocks {
                let chunk = pool.chunk_mut(layer, plane, block).expect("in range");
                for (i, b) in chunk.iter_mut().enumerate() {
                    *b = byte(layer, plane, block, i);
                }
            }
        }
    }
}

/// Every destination chunk holds its source chunk's bytes; every other block is untouched.
fn verify(pool: &KvPool<'_>) {
    let shape = *pool.layout().shape();
    for layer in 0..shape.layers {
        for plane in 0..shape.planes.count() {
            for block in 0..shape.blocks {
                let chunk = pool.chunk(layer, plane, block).expect("in range");
                match DESTINATION.iter().position(|&d| d == block) {
                    Some(i) => {
                        let source = SOURCE[i];
                        for (j, &b) in chunk.iter().enumerate() {
                            assert_eq!(
                                b,
                                byte(layer, plane, source, j),
                                "layer {layer} plane {plane} block {block} (from {source}) byte {j}"
                            );
                        }
                    }
                    None => assert!(
                        chunk.iter().all(|&b| b == 0),
                        "layer {layer} plane {plane} block {block} was not a destination"
                    ),
                }
            }
        }
    }
}

fn memory(layout: &KvLayout) -> Vec<Vec<u8>> {
    vec![vec![0u8; layout.span() as usize]; layout.allocations()]
}

/// The source pool, every chunk filled, and the empty destination pool.
fn pools<'m>(
    (prefill, source_layout, source_memory): (&Connector, KvLayout, &'m mut [Vec<u8>]),
    (decode, destination_layout, destination_memory): (&Connector, KvLayout, &'m mut [Vec<u8>]),
) -> (KvPool<'m>, KvPool<'m>) {
    let per_layer = |memory: &'m mut [Vec<u8>]| memory.iter_mut().map(Vec::as_mut_slice).collect();
    let mut source = KvPool::new(
        prefill,
        source_layout,
        KvMemory::exclusive_per_layer(per_layer(source_memory)),
    )
    .expect("source pool");
    fill(&mut source);
    let destination = KvPool::new(
        decode,
        destination_layout,
        KvMemory::exclusive_per_layer(per_layer(destination_memory)),
    )
    .expect("destination pool");
    (source, destination)
}

/// Decode pulls: it sends its destination ids, prefill exposes a readable and answers with
/// an offer, decode reads.
async fn read_blocks(backend: Backend, planes: KvPlanes) {
    let prefill = connector(backend, "prefill").await;
    let decode = connector(backend, "decode").await;
    let (source_layout, destination_layout) = (prefill_layout(planes), decode_layout(planes));
    let mut source_memory = memory(&source_layout);
    let mut destination_memory = memory(&destination_layout);
    let (source, mut destination) = pools(
        (&prefill, source_layout, &mut source_memory),
        (&decode, destination_layout, &mut destination_memory),
    );
    let wanted =
        KvBlockSet::from_json(&destination.block_set(&DESTINATION).expect("ids").to_json())
            .expect("the block set parses");
    let (mut readable, offer) = source
        .create_readable(&SOURCE, &wanted)
        .await
        .expect("readable");
    let offer = KvOffer::from_json(&offer.to_json()).expect("the offer parses");
    let mut read = destination
        .begin_read(&DESTINATION, &offer)
        .await
        .expect("begin_read");
    let planes_per_layer = planes.count() as usize;
    assert_eq!(read.descriptor_count(), 3 * planes_per_layer * RUNS);
    assert_eq!(readable.descriptor_count(), read.descriptor_count());
    assert_eq!(read.chunk_count(), 3 * planes_per_layer as u64 * 8);
    let done = tokio::time::timeout(LIMIT, async {
        tokio::try_join!(read.wait_for_completion(), readable.wait_for_completion())
    })
    .await
    .expect("the transfer ends in time");
    done.expect("both sides complete");
    drop(read);
    verify(&destination);
}

/// Prefill pushes: it sends its source ids, decode exposes a writable and answers with an
/// offer, prefill writes.
async fn write_blocks(backend: Backend, planes: KvPlanes) {
    let prefill = connector(backend, "prefill").await;
    let decode = connector(backend, "decode").await;
    let (source_layout, destination_layout) = (prefill_layout(planes), decode_layout(planes));
    let mut source_memory = memory(&source_layout);
    let mut destination_memory = memory(&destination_layout);
    let (source, mut destination) = pools(
        (&prefill, source_layout, &mut source_memory),
        (&decode, destination_layout, &mut destination_memory),
    );
    let sending = source.block_set(&SOURCE).expect("ids");
    let (mut writable, offer) = destination
        .create_writable(&DESTINATION, &sending)
        .await
        .expect("writable");
    let mut write = source
        .begin_write(&SOURCE, &offer)
        .await
        .expect("begin_write");
    assert_eq!(write.descriptor_count(), 3 * planes.count() as usize * RUNS);
    let done = tokio::time::timeout(LIMIT, async {
        tokio::try_join!(write.wait_for_completion(), writable.wait_for_completion())
    })
    .await
    .expect("the transfer ends in time");
    done.expect("both sides complete");
    drop(writable);
    verify(&destination);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scattered_blocks_read_and_written_on_sim() {
    for planes in [KvPlanes::Separate, KvPlanes::Fused] {
        read_blocks(Backend::Sim, planes).await;
        write_blocks(Backend::Sim, planes).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scattered_blocks_read_and_written_on_tcp() {
    for planes in [KvPlanes::Separate, KvPlanes::Fused] {
        read_blocks(Backend::Tcp, planes).await;
        write_blocks(Backend::Tcp, planes).await;
    }
}

/// On nixl the blocks move between two NIXL agents over UCX, each chunk run one entry of the
/// transfer's descriptor lists.
#[cfg(feature = "nixl")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scattered_blocks_read_and_written_on_nixl() {
    if let Err(reason) = ferry::nixl::available(None) {
        println!("skipped: {reason}");
        return;
    }
    for planes in [KvPlanes::Separate, KvPlanes::Fused] {
        read_blocks(Backend::Nixl, planes).await;
        write_blocks(Backend::Nixl, planes).await;
    }
}

#[tokio::test]
async fn contiguous_blocks_need_one_descriptor() {
    let prefill = connector(Backend::Sim, "prefill").await;
    let decode = connector(Backend::Sim, "decode").await;
    let layout = KvLayout::new(shape(KvPlanes::Separate, 16)).unwrap();
    let source_memory = vec![9u8; layout.span() as usize];
    let mut destination_memory = vec![0u8; layout.span() as usize];
    let source = KvPool::new(&prefill, layout, KvMemory::shared(&source_memory)).unwrap();
    let mut destination = KvPool::new(
        &decode,
        layout,
        KvMemory::exclusive(&mut destination_memory),
    )
    .unwrap();
    let all: Vec<u32> = (0..16).collect();
    let (mut readable, offer) = source
        .create_readable(&all, &destination.block_set(&all).unwrap())
        .await
        .unwrap();
    let mut read = destination.begin_read(&all, &offer).await.unwrap();
    assert_eq!(read.descriptor_count(), 1);
    assert_eq!(read.chunk_count(), 3 * 2 * 16);
    assert_eq!(read.bytes(), layout.span());
    tokio::try_join!(read.wait_for_completion(), readable.wait_for_completion()).unwrap();
    drop(read);
    drop(destination);
    assert!(destination_memory.iter().all(|&b| b == 9));
    // Registered once at pool creation: the transfer registered nothing more.
    assert_eq!(prefill.stats().registrations, 1);
    assert_eq!(decode.stats().registrations, 1);
}

#[tokio::test]
async fn mismatched_layouts_and_bad_lists_are_refused_before_any_operation() {
    let prefill = connector(Backend::Sim, "prefill").await;
    let decode = connector(Backend::Sim, "decode").await;
    let layout = prefill_layout(KvPlanes::Separate);
    let mut other_shape = shape(KvPlanes::Separate, 64);
    other_shape.kv_heads = 4;
    let other = KvLayout::new(other_shape).unwrap();
    let source_memory = vec![1u8; layout.span() as usize];
    let mut destination_memory = vec![0u8; other.span() as usize];
    let source = KvPool::new(&prefill, layout, KvMemory::shared(&source_memory)).unwrap();
    let mut destination =
        KvPool::new(&decode, other, KvMemory::exclusive(&mut destination_memory)).unwrap();

    let wanted = destination.block_set(&[0, 1]).unwrap();
    let refused = source.create_readable(&[0, 1], &wanted).await.unwrap_err();
    assert_eq!(
        refused,
        KvError::LayoutMismatch {
            field: "kv_heads",
            local: "2".into(),
            remote: "4".into(),
        }
    );
    // A hash that does not match the layout it travels with.
    let mut forged = source.block_set(&[0, 1]).unwrap();
    forged.compat_hash = "0000000000000000".into();
    assert!(matches!(
        destination.create_writable(&[0, 1], &forged).await,
        Err(KvError::HashMismatch { .. })
    ));
    // Bad lists.
    let mut same_memory = vec![0u8; layout.span() as usize];
    let mut same = KvPool::new(&decode, layout, KvMemory::exclusive(&mut same_memory)).unwrap();
    let sending = source.block_set(&[5, 6]).unwrap();
    assert_eq!(
        same.create_writable(&[2, 2], &sending).await.unwrap_err(),
        KvError::DuplicateBlock { id: 2 }
    );
    assert_eq!(
        same.create_writable(&[2], &sending).await.unwrap_err(),
        KvError::BlockCountMismatch {
            local: 1,
            remote: 2
        }
    );
    assert_eq!(
        same.create_writable(&[2, 64], &sending).await.unwrap_err(),
        KvError::BlockOutOfRange {
            side: Side::Local,
            id: 64,
            blocks: 64
        }
    );
    assert_eq!(source.block_set(&[]).unwrap_err(), KvError::NoBlocks);
    // A shared pool cannot receive.
    let mut read_only = KvPool::new(&decode, layout, KvMemory::shared(&source_memory)).unwrap();
    let (_readable, offer) = source
        .create_readable(&[5, 6], &read_only.block_set(&[1, 2]).unwrap())
        .await
        .unwrap();
    assert_eq!(
        read_only.begin_read(&[1, 2], &offer).await.unwrap_err(),
        KvError::ReadOnly
    );
    // Only that one readable was ever created; decode began nothing.
    assert_eq!(prefill.stats().operations, 1);
    assert_eq!(decode.stats().operations, 0);
}

#[tokio::test]
async fn pools_check_their_memory() {
    let connector = connector(Backend::Sim, "pool").await;
    let layout = prefill_layout(KvPlanes::Separate);
    let short = vec![0u8; layout.span() as usize - 1];
    assert!(matches!(
        KvPool::new(&connector, layout, KvMemory::shared(&short)),
        Err(KvError::MemoryTooSmall { allocation: 0, .. })
    ));
    let per_layer = decode_layout(KvPlanes::Separate);
    let one = vec![0u8; per_layer.span() as usize];
    assert_eq!(
        KvPool::new(&connector, per_layer, KvMemory::shared(&one)).unwrap_err(),
        KvError::AllocationCount {
            expected: 3,
            found: 1
        }
    );
    assert!(KvOffer::from_json("{\"blocks\": 3}").is_err());
    assert_eq!(connector.stats().registrations, 0);
}

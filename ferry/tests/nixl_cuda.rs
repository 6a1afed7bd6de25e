//! CUDA device memory over the nixl backend (features `nixl` and `cuda`): device round trips
//! between two nixl Connectors of this process, device → device, device → host and host →
//! device, reads and writes; and, everywhere, that a backend which cannot move device memory
//! says why and refuses it.
//!
//! The round trips need a GPU (and the `nixl-cu12` wheel, whose UCX plugin lists VRAM); where
//! one is missing they print `skipped: <reason>` and pass. On this project's development
//! machines there is no GPU: they are unverified there.
//!
//! ```text
//! cargo test -p ferry --features nixl,cuda --test nixl_cuda -- --nocapture
//! ```
#![cfg(all(feature = "nixl", feature = "cuda"))]

mod common;

use common::cuda::{assert_refuses_device_metadata, every_round_trip};
use ferry::core::cuda;
use ferry::nixl::{NixlBackend, NixlConfig};
use ferry::{Connector, Device};

/// A nixl Connector and whether its backend moves device memory (or why not); `None`, with
/// the skip line printed, where NIXL is missing.
async fn nixl(name: &str) -> Option<(Connector, Result<(), String>)> {
    if let Err(reason) = ferry::nixl::available(None) {
        println!("skipped: {reason}");
        return None;
    }
    let agent = format!("{name}-{}-1", std::process::id());
    let backend = NixlBackend::new(NixlConfig::named(agent)).expect("a NIXL agent");
    let support = backend.cuda_support();
    let connector = Connector::builder()
        .worker_id(name)
        .backend(backend)
        .build()
        .await
        .expect("a nixl Connector");
    Some((connector, support))
}

/// Reads and writes; device → device, device → host, host → device; one byte to 8 MiB, one
/// and two descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nixl_moves_device_memory_in_one_process() {
    let stream = match cuda::context(0) {
        Ok(context) => context.default_stream(),
        Err(e) => {
            println!("skipped: no usable CUDA device: {e}");
            return;
        }
    };
    let Some((a, support)) = nixl("cuda-a").await else {
        return;
    };
    if let Err(reason) = support {
        println!("skipped: the nixl backend does not move device memory here: {reason}");
        return;
    }
    let Some((b, _)) = nixl("cuda-b").await else {
        return;
    };
    every_round_trip(&stream, &a, &b, "nixl").await;
    println!("every device round trip over nixl landed");
}

/// Runs everywhere: where the backend cannot move device memory it says why, its capabilities
/// do not list CUDA, and metadata naming the peer's device memory is refused at `begin_read`
/// with the device and the backend named, before any byte moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_metadata_is_refused_where_nixl_cannot_move_it() {
    let Some((a, _)) = nixl("refuse-a").await else {
        return;
    };
    let Some((b, support)) = nixl("refuse-b").await else {
        return;
    };
    match support {
        Ok(()) => {
            assert!(b.capabilities().reaches(Device::cuda(0)));
            println!("skipped: this nixl backend moves device memory (the refusal needs one that cannot)");
            return;
        }
        Err(reason) => {
            assert!(!reason.is_empty());
            assert!(!b.capabilities().reaches(Device::cuda(0)));
            println!("device memory refused here because: {reason}");
        }
    }
    assert_refuses_device_metadata(&a, &b, "nixl").await;
}

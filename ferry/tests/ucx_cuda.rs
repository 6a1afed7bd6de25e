//! CUDA device memory over the ucx backend (features `ucx` and `cuda`): device round trips
//! between two ucx Connectors of this process, device → device, device → host and host →
//! device, in both pairings, under peer error handling (the default) and none; and the typed
//! refusal of device memory where the backend cannot move it.
//!
//! The round trips need a GPU, a CUDA-enabled UCX and UCX protocols that honour memory types
//! (`UcxBackend::cuda_support`); where any is missing they print `skipped: <reason>` and pass.
//! Debian's UCX 1.13 has no cuda transports, so on this project's machines they skip; on a GPU
//! machine put a CUDA-enabled UCX with the same sonames first on `LD_LIBRARY_PATH` (PyPI's
//! `libucx-cu12`, UCX 1.22, whose `libucx/lib` holds `libucp.so.0` and `ucx/libuct_cuda.so`).
//! The refusal test runs everywhere.
//!
//! ```text
//! cargo test -p ferry --features ucx,cuda --test ucx_cuda -- --nocapture
//! ```
#![cfg(all(feature = "ucx", feature = "cuda"))]

use std::sync::Arc;

mod common;

use common::cuda::{assert_refuses_device_metadata, every_round_trip};
use ferry::core::cuda::{self, cudarc::driver::CudaStream};
use ferry::ucx::{ErrorHandling, UcxBackend, UcxConfig};
use ferry::{Connector, Device, Error};

/// A ucx Connector with `handling`, and whether its backend moves device memory (or why not);
/// `None` (with the skip line printed) where UCX is missing.
async fn ucx(handling: ErrorHandling) -> Option<(Connector, Result<(), String>)> {
    let backend = match UcxBackend::with_config(UcxConfig {
        error_handling: handling,
        ..UcxConfig::default()
    }) {
        Ok(backend) => backend,
        Err(Error::BackendUnavailable { reason, .. }) => {
            println!("skipped: {reason}");
            return None;
        }
        Err(other) => panic!("{other}"),
    };
    let support = backend.cuda_support();
    let connector = Connector::builder()
        .backend(backend)
        .build()
        .await
        .expect("builds");
    Some((connector, support))
}

/// A stream on device 0 and two ucx Connectors that move device memory; `None` after printing
/// why not.
async fn device_pair(handling: ErrorHandling) -> Option<(Arc<CudaStream>, Connector, Connector)> {
    let stream = match cuda::context(0) {
        Ok(context) => context.default_stream(),
        Err(e) => {
            println!("skipped: no usable CUDA device: {e}");
            return None;
        }
    };
    let (a, support) = ucx(handling).await?;
    if let Err(reason) = support {
        println!("skipped: the ucx backend does not move device memory here: {reason}");
        return None;
    }
    let (b, _) = ucx(handling).await?;
    Some((stream, a, b))
}

/// Every pairing; device → device, device → host, host → device; one byte to 8 MiB, one and
/// two descriptors (of one allocation, so one registration covers both); under UCX's peer
/// error handling (ferry's default) and without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ucx_moves_device_memory_in_one_process() {
    for handling in [ErrorHandling::Peer, ErrorHandling::None] {
        let Some((stream, a, b)) = device_pair(handling).await else {
            return;
        };
        every_round_trip(&stream, &a, &b, &format!("{handling:?}")).await;
        println!("{handling:?}: every device round trip landed");
    }
}

/// Runs everywhere: a ucx Connector that cannot move device memory refuses metadata naming
/// device memory on the peer's side at `begin_read`, before connecting, with the device and
/// the backend named (SPEC §4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_metadata_is_refused_where_the_backend_cannot_move_it() {
    let Some((a, _)) = ucx(ErrorHandling::default()).await else {
        return;
    };
    let Some((b, support)) = ucx(ErrorHandling::default()).await else {
        return;
    };
    if let Ok(()) = support {
        assert!(b.capabilities().reaches(Device::cuda(0)));
        println!(
            "skipped: this ucx backend moves device memory (the refusal needs one that cannot)"
        );
        return;
    }
    assert_refuses_device_metadata(&a, &b, "ucx").await;
}

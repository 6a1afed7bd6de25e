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
use std::time::Duration;

use ferry::core::cuda::{self, cudarc::driver::CudaSlice, cudarc::driver::CudaStream};
use ferry::ucx::{ErrorHandling, UcxBackend, UcxConfig};
use ferry::{Connector, Descriptor, Device, Error, OperationKind, RdmaMetadata};

/// How long one transfer may take before the test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(30);

/// A ucx Connector with `handling`, and whether its backend moves device memory (or why not);
/// `None` (with the skip line printed) where UCX is missing.
async fn ucx(handling: ErrorHandling) -> Option<(Connector, Result<(), String>)> {
    let backend = match UcxBackend::with_config(UcxConfig {
        error_handling: handling,
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

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

/// One side's memory: a host `Vec` or a device allocation.
enum Buffer {
    Host(Vec<u8>),
    Device(CudaSlice<u8>),
}

impl Buffer {
    fn holding(bytes: &[u8], on_device: bool, stream: &Arc<CudaStream>) -> Buffer {
        if on_device {
            Buffer::Device(stream.clone_htod(bytes).expect("copies to the device"))
        } else {
            Buffer::Host(bytes.to_vec())
        }
    }

    fn contents(&self, stream: &Arc<CudaStream>) -> Vec<u8> {
        match self {
            Buffer::Host(bytes) => bytes.clone(),
            Buffer::Device(slice) => stream.clone_dtoh(slice).expect("copies to the host"),
        }
    }

    /// The buffer as descriptors, split at `cut` into two when given: read-only ones for the
    /// side whose bytes leave, writable ones for the side they land in.
    fn descriptors(&mut self, writable: bool, cut: Option<usize>) -> Vec<Descriptor<'_>> {
        let at = |len: usize| cut.unwrap_or(len).min(len);
        let mut pieces: Vec<Descriptor<'_>> = match (self, writable) {
            (Buffer::Host(bytes), false) => {
                let (head, tail) = bytes.split_at(at(bytes.len()));
                [head, tail].map(Descriptor::from_slice).into()
            }
            (Buffer::Host(bytes), true) => {
                let at = at(bytes.len());
                let (head, tail) = bytes.split_at_mut(at);
                [head, tail].map(Descriptor::from_mut_slice).into()
            }
            (Buffer::Device(slice), false) => {
                let at = at(slice.len());
                [slice.slice(..at), slice.slice(at..)]
                    .map(Descriptor::from_cuda_view)
                    .into()
            }
            (Buffer::Device(slice), true) => {
                let at = at(slice.len());
                let (head, tail) = slice.split_at_mut(at);
                [head, tail].map(Descriptor::from_cuda_view_mut).into()
            }
        };
        // Uncut: the whole buffer, one descriptor (the empty tail goes).
        if cut.is_none() {
            pieces.truncate(1);
        }
        pieces
    }
}

/// Moves `len` bytes from `a`'s memory into `b`'s with `kind` (b reads a readable of a, or a
/// writes into a writable of b), both sides waited for, and checks every byte.
async fn round_trip(
    stream: &Arc<CudaStream>,
    a: &Connector,
    b: &Connector,
    kind: OperationKind,
    (from_device, to_device): (bool, bool),
    len: usize,
    cut: Option<usize>,
) -> Result<(), Error> {
    let sent = pattern(len, (len % 251) as u8);
    let mut source = Buffer::holding(&sent, from_device, stream);
    let mut target = Buffer::holding(&vec![0u8; len], to_device, stream);
    match kind {
        OperationKind::Read => {
            let mut readable = a.create_readable(source.descriptors(false, cut)).await?;
            let metadata = RdmaMetadata::from_json(&readable.metadata().to_json())?;
            let mut read = b
                .begin_read(&metadata, target.descriptors(true, cut))
                .await?;
            tokio::try_join!(
                read.wait_for_completion_timeout(LIMIT),
                readable.wait_for_completion_timeout(LIMIT)
            )?;
        }
        OperationKind::Write => {
            let mut writable = b.create_writable(target.descriptors(true, cut)).await?;
            let metadata = RdmaMetadata::from_json(&writable.metadata().to_json())?;
            let mut write = a
                .begin_write(source.descriptors(false, cut), &metadata)
                .await?;
            tokio::try_join!(
                write.wait_for_completion_timeout(LIMIT),
                writable.wait_for_completion_timeout(LIMIT)
            )?;
        }
    }
    let landed = target.contents(stream);
    if let Some(at) = landed.iter().zip(&sent).position(|(l, s)| l != s) {
        panic!(
            "{kind:?} of {len} bytes (from device {from_device}, to device {to_device}, cut \
             {cut:?}): first wrong byte at {at}"
        );
    }
    Ok(())
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
        let cases: [(usize, Option<usize>); 4] = [
            (1, None),
            (4096, None),
            ((8 << 20) + 3, None),
            ((3 << 20) + 7, Some(1 << 20)),
        ];
        for kind in [OperationKind::Read, OperationKind::Write] {
            for sides in [(true, true), (true, false), (false, true)] {
                for (len, cut) in cases {
                    round_trip(&stream, &a, &b, kind, sides, len, cut)
                        .await
                        .unwrap_or_else(|e| {
                            panic!("{handling:?} {kind:?} {len} bytes {sides:?} cut {cut:?}: {e}")
                        });
                }
            }
        }
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
    assert!(!b.capabilities().reaches(Device::cuda(0)));
    let exposed = vec![3u8; 4096];
    let readable = a
        .create_readable([Descriptor::from_slice(&exposed)])
        .await
        .expect("exposes host memory");
    // The peer's metadata, its descriptor relabelled as device memory of the peer's.
    let mut metadata = readable.metadata().clone();
    metadata.descriptors[0].device = Device::cuda(2);
    let mut landing = vec![0u8; 4096];
    let refused = b
        .begin_read(&metadata, [Descriptor::from_mut_slice(&mut landing)])
        .await
        .err();
    assert_eq!(
        refused,
        Some(Error::UnsupportedDevice {
            device: Device::cuda(2),
            backend: "ucx",
        })
    );
    assert_eq!(landing, vec![0u8; 4096], "no byte moved");
    drop(readable);
}

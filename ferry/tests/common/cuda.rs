//! Device memory on both sides of a transfer, for the backends' cuda tests.

use std::sync::Arc;
use std::time::Duration;

use ferry::core::cuda::cudarc::driver::{CudaSlice, CudaStream};
use ferry::{Connector, Descriptor, Error, OperationKind, RdmaMetadata};

/// How long one transfer may take before the test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(30);

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
pub async fn round_trip(
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

/// `reader` (whose backend cannot move device memory) is handed metadata of `owner`'s that
/// names device memory on `owner`'s side: `begin_read` refuses it with the device and
/// `backend` named, before connecting, and no byte lands.
pub async fn assert_refuses_device_metadata(owner: &Connector, reader: &Connector, backend: &str) {
    assert!(!reader.capabilities().reaches(ferry::Device::cuda(0)));
    let exposed = vec![3u8; 4096];
    let readable = owner
        .create_readable([Descriptor::from_slice(&exposed)])
        .await
        .expect("exposes host memory");
    let mut metadata = readable.metadata().clone();
    metadata.descriptors[0].device = ferry::Device::cuda(2);
    let mut landing = vec![0u8; 4096];
    let refused = reader
        .begin_read(&metadata, [Descriptor::from_mut_slice(&mut landing)])
        .await
        .err();
    match refused {
        Some(Error::UnsupportedDevice {
            device,
            backend: named,
        }) => {
            assert_eq!((device, named), (ferry::Device::cuda(2), backend));
        }
        other => panic!("expected UnsupportedDevice from {backend}, got {other:?}"),
    }
    assert_eq!(landing, vec![0u8; 4096], "no byte moved");
}

/// Every pairing of [`round_trip`] the backends' cuda tests run: reads and writes; device →
/// device, device → host, host → device; one byte to 8 MiB, one and two descriptors (of one
/// allocation). Panics naming `label` and the case that failed.
pub async fn every_round_trip(stream: &Arc<CudaStream>, a: &Connector, b: &Connector, label: &str) {
    let cases: [(usize, Option<usize>); 4] = [
        (1, None),
        (4096, None),
        ((8 << 20) + 3, None),
        ((3 << 20) + 7, Some(1 << 20)),
    ];
    for kind in [OperationKind::Read, OperationKind::Write] {
        for sides in [(true, true), (true, false), (false, true)] {
            for (len, cut) in cases {
                round_trip(stream, a, b, kind, sides, len, cut)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("{label}: {kind:?} {len} bytes {sides:?} cut {cut:?}: {e}")
                    });
            }
        }
    }
}

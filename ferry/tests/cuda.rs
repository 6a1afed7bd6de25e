//! CUDA device memory (the `cuda` feature): round trips of device memory over tcp (staged
//! through host buffers), in both pairings and every mix of host and device on the two sides,
//! in one process and across two; and the typed refusal of device memory by backends that
//! cannot move it.
//!
//! Tests that need a GPU print `skipped: <reason>` and pass where there is none (this
//! project's CI has none); the refusal tests run everywhere.
//!
//! ```text
//! cargo test -p ferry --features cuda --test cuda -- --nocapture
//! ```
#![cfg(feature = "cuda")]

use std::sync::Arc;

use ferry::core::cuda::{self, cudarc::driver::CudaSlice, cudarc::driver::CudaStream};
use ferry::core::{validate_passive, DeviceKind, Region};
use ferry::sim::{SimBackend, SimWorld};
use ferry::tcp::TcpBackend;
use ferry::{Connector, Descriptor, Device, Error, OperationKind, RdmaMetadata};

/// A stream on device 0, or `None` after printing why there is none.
fn gpu() -> Option<Arc<CudaStream>> {
    match cuda::context(0) {
        Ok(ctx) => Some(ctx.default_stream()),
        Err(e) => {
            println!("skipped: no usable CUDA device: {e}");
            None
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

async fn tcp() -> Connector {
    Connector::builder()
        .backend(TcpBackend::new().await.expect("binds"))
        .build()
        .await
        .expect("builds")
}

/// Memory on one side of a transfer.
enum Memory {
    Host(Vec<u8>),
    Gpu(CudaSlice<u8>),
}

impl Memory {
    fn new(gpu: bool, bytes: &[u8], stream: &Arc<CudaStream>) -> Memory {
        match gpu {
            true => Memory::Gpu(stream.clone_htod(bytes).expect("copies to the device")),
            false => Memory::Host(bytes.to_vec()),
        }
    }

    fn bytes(&self, stream: &Arc<CudaStream>) -> Vec<u8> {
        match self {
            Memory::Host(v) => v.clone(),
            Memory::Gpu(s) => stream.clone_dtoh(s).expect("copies to the host"),
        }
    }

    /// Read-only descriptors: the whole buffer, or two pieces split at `cut`.
    fn shared(&self, cut: Option<usize>) -> Vec<Descriptor<'_>> {
        match (self, cut) {
            (Memory::Host(v), None) => vec![Descriptor::from_slice(v)],
            (Memory::Host(v), Some(c)) => {
                let (a, b) = v.split_at(c);
                vec![Descriptor::from_slice(a), Descriptor::from_slice(b)]
            }
            (Memory::Gpu(s), None) => vec![Descriptor::from_cuda_slice(s)],
            (Memory::Gpu(s), Some(c)) => vec![
                Descriptor::from_cuda_view(s.slice(..c)),
                Descriptor::from_cuda_view(s.slice(c..)),
            ],
        }
    }

    /// Writable descriptors, split as [`Memory::shared`].
    fn exclusive(&mut self, cut: Option<usize>) -> Vec<Descriptor<'_>> {
        match (self, cut) {
            (Memory::Host(v), None) => vec![Descriptor::from_mut_slice(v)],
            (Memory::Host(v), Some(c)) => {
                let (a, b) = v.split_at_mut(c);
                vec![Descriptor::from_mut_slice(a), Descriptor::from_mut_slice(b)]
            }
            (Memory::Gpu(s), None) => vec![Descriptor::from_cuda_slice_mut(s)],
            (Memory::Gpu(s), Some(c)) => {
                let (a, b) = s.split_at_mut(c);
                vec![
                    Descriptor::from_cuda_view_mut(a),
                    Descriptor::from_cuda_view_mut(b),
                ]
            }
        }
    }
}

/// Moves `len` bytes from `source` memory to `target` memory over tcp with `kind` (a read of
/// a readable, or a write into a writable), checks every byte, and returns the error if the
/// transfer failed.
async fn round_trip(
    stream: &Arc<CudaStream>,
    kind: OperationKind,
    source_on_gpu: bool,
    target_on_gpu: bool,
    len: usize,
    cut: Option<usize>,
) -> Result<(), Error> {
    let sent = pattern(len, len as u8 ^ 0x5a);
    let source = Memory::new(source_on_gpu, &sent, stream);
    let mut target = Memory::new(target_on_gpu, &vec![0u8; len], stream);
    let (a, b) = (tcp().await, tcp().await);
    match kind {
        OperationKind::Read => {
            let mut readable = a.create_readable(source.shared(cut)).await?;
            let metadata = RdmaMetadata::from_json(&readable.metadata().to_json())?;
            let mut read = b.begin_read(&metadata, target.exclusive(cut)).await?;
            tokio::try_join!(read.wait_for_completion(), readable.wait_for_completion())?;
        }
        OperationKind::Write => {
            let mut writable = b.create_writable(target.exclusive(cut)).await?;
            let metadata = RdmaMetadata::from_json(&writable.metadata().to_json())?;
            let mut write = a.begin_write(source.shared(cut), &metadata).await?;
            tokio::try_join!(write.wait_for_completion(), writable.wait_for_completion())?;
        }
    }
    let landed = target.bytes(stream);
    assert_eq!(landed.len(), sent.len());
    if let Some(i) = landed.iter().zip(&sent).position(|(l, s)| l != s) {
        panic!(
            "{kind:?} {len} bytes (source on gpu: {source_on_gpu}, target on gpu: \
             {target_on_gpu}, cut {cut:?}): first wrong byte at {i}"
        );
    }
    Ok(())
}

/// Every pairing, every mix of host and device, one byte to several staging chunks, one and
/// two descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_moves_device_memory_both_ways() {
    let Some(stream) = gpu() else { return };
    let cases: [(usize, Option<usize>); 4] = [
        (1, None),
        ((8 << 20) + 3, None),
        ((5 << 20) + (3 << 20) + 7, Some(5 << 20)),
        (3 << 10, Some(1)),
    ];
    for kind in [OperationKind::Read, OperationKind::Write] {
        for (source_on_gpu, target_on_gpu) in [(true, true), (true, false), (false, true)] {
            for (len, cut) in cases {
                round_trip(&stream, kind, source_on_gpu, target_on_gpu, len, cut)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("{kind:?} {len} (gpu→{source_on_gpu}, →gpu {target_on_gpu}): {e}")
                    });
            }
        }
    }
}

/// Many device transfers in flight on one pair of Connectors, each landing its own bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_device_transfers_in_flight_stay_apart() {
    let Some(stream) = gpu() else { return };
    let len = (4 << 20) + 1;
    let sources: Vec<Vec<u8>> = (0..8).map(|i| pattern(len, i)).collect();
    let on_gpu: Vec<CudaSlice<u8>> = sources
        .iter()
        .map(|s| stream.clone_htod(s).expect("copies"))
        .collect();
    let mut targets: Vec<CudaSlice<u8>> = (0..8)
        .map(|_| stream.alloc_zeros::<u8>(len).expect("allocates"))
        .collect();
    let (a, b) = (tcp().await, tcp().await);
    let mut readables = Vec::new();
    for s in &on_gpu {
        readables.push(
            a.create_readable([Descriptor::from_cuda_slice(s)])
                .await
                .expect("exposes"),
        );
    }
    let mut reads = Vec::new();
    for (r, t) in readables.iter().zip(targets.iter_mut()) {
        let metadata = r.metadata();
        reads.push(
            b.begin_read(metadata, [Descriptor::from_cuda_slice_mut(t)])
                .await
                .expect("begins"),
        );
    }
    let passive = futures_all(readables.iter_mut().map(|r| r.wait_for_completion()));
    let active = futures_all(reads.iter_mut().map(|r| r.wait_for_completion()));
    let (p, q) = tokio::join!(passive, active);
    p.expect("readables complete");
    q.expect("reads complete");
    drop(reads);
    for (t, s) in targets.iter().zip(&sources) {
        assert!(stream.clone_dtoh(t).expect("copies") == *s, "bytes crossed");
    }
}

/// Awaits every future concurrently (tokio's `join!` for a list), first error wins.
async fn futures_all<F>(futures: impl Iterator<Item = F>) -> Result<(), Error>
where
    F: std::future::Future<Output = Result<(), Error>>,
{
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        let mut i = 0;
        while i < set.len() {
            match set[i].as_mut().poll(cx) {
                std::task::Poll::Ready(Ok(())) => {
                    drop(set.swap_remove(i));
                }
                std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
                std::task::Poll::Pending => {
                    pending = true;
                    i += 1;
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(Ok(()))
        }
    })
    .await
}

/// The peer process's side of [`tcp_moves_device_memory_across_two_processes`]: run by it
/// (`--ignored --exact`), never on its own. `FERRY_CUDA_PEER` says `read` (expose a readable
/// on the device) or `write` (expose a writable on the device and check what lands); the
/// metadata goes out on stdout after `METADATA `, the outcome after `PEER `, each ending its
/// line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the peer process of tcp_moves_device_memory_across_two_processes, started by it"]
async fn device_peer_process() {
    let Ok(role) = std::env::var(PEER_ROLE) else {
        println!("skipped: {PEER_ROLE} is not set: this is the peer process of another test");
        return;
    };
    let stream = gpu().expect("the parent process found a GPU");
    let len = two_process_len();
    let expected = pattern(len, 0x3c);
    let connector = tcp().await;
    let outcome = match role.as_str() {
        "read" => {
            let memory = stream.clone_htod(&expected).expect("copies");
            let mut readable = connector
                .create_readable([Descriptor::from_cuda_slice(&memory)])
                .await
                .expect("exposes");
            println!("METADATA {}", readable.metadata().to_json());
            match readable.wait_for_completion_timeout(PEER_LIMIT).await {
                Ok(()) => "complete".to_owned(),
                Err(e) => format!("failed: {e}"),
            }
        }
        _ => {
            let mut memory = stream.alloc_zeros::<u8>(len).expect("allocates");
            let mut writable = connector
                .create_writable([Descriptor::from_cuda_slice_mut(&mut memory)])
                .await
                .expect("exposes");
            println!("METADATA {}", writable.metadata().to_json());
            let waited = writable.wait_for_completion_timeout(PEER_LIMIT).await;
            drop(writable);
            match waited {
                Ok(()) if stream.clone_dtoh(&memory).expect("copies") == expected => {
                    "complete".to_owned()
                }
                Ok(()) => "complete but the bytes differ".to_owned(),
                Err(e) => format!("failed: {e}"),
            }
        }
    };
    println!("PEER {outcome}");
}

const PEER_ROLE: &str = "FERRY_CUDA_PEER";
const PEER_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

fn two_process_len() -> usize {
    (9 << 20) + 5
}

/// Device memory read from, and written into, a tcp Connector in another process (this test
/// binary started again as [`device_peer_process`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_moves_device_memory_across_two_processes() {
    let Some(stream) = gpu() else { return };
    let len = two_process_len();
    let expected = pattern(len, 0x3c);
    let connector = tcp().await;
    for role in ["read", "write"] {
        let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--ignored", "--exact", "device_peer_process", "--nocapture"])
            .env(PEER_ROLE, role)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("starts the peer");
        let stdout = child.stdout.take().expect("piped");
        let (lines, mut next) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let metadata =
            RdmaMetadata::from_json(&line_with(&mut next, "METADATA ").await).expect("decodes");
        match role {
            "read" => {
                let mut memory = stream.alloc_zeros::<u8>(len).expect("allocates");
                let mut read = connector
                    .begin_read(&metadata, [Descriptor::from_cuda_slice_mut(&mut memory)])
                    .await
                    .expect("begins");
                read.wait_for_completion_timeout(PEER_LIMIT)
                    .await
                    .expect("reads");
                drop(read);
                assert!(stream.clone_dtoh(&memory).expect("copies") == expected);
            }
            _ => {
                let memory = stream.clone_htod(&expected).expect("copies");
                let mut write = connector
                    .begin_write([Descriptor::from_cuda_slice(&memory)], &metadata)
                    .await
                    .expect("begins");
                write
                    .wait_for_completion_timeout(PEER_LIMIT)
                    .await
                    .expect("writes");
            }
        }
        assert_eq!(line_with(&mut next, "PEER ").await, "complete", "{role}");
        // The peer's stdout closes when it exits.
        while tokio::time::timeout(PEER_LIMIT, next.recv())
            .await
            .expect("the peer exits")
            .is_some()
        {}
        assert!(child.wait().expect("waits").success(), "{role}");
    }
}

/// What follows `prefix` in the first line from the peer that holds it.
async fn line_with(
    next: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    prefix: &str,
) -> String {
    loop {
        match tokio::time::timeout(PEER_LIMIT, next.recv()).await {
            Ok(Some(line)) => {
                // libtest may have begun the line with `test device_peer_process ... `.
                if let Some((_, rest)) = line.split_once(prefix) {
                    return rest.to_owned();
                }
            }
            Ok(None) => panic!("the peer exited before a {prefix:?} line"),
            Err(_) => panic!("no {prefix:?} line from the peer within {PEER_LIMIT:?}"),
        }
    }
}

/// The simulator moves host memory only: a device descriptor is refused before any
/// operation exists, with the device and the backend named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_refuses_device_descriptors() {
    let Some(stream) = gpu() else { return };
    let world = SimWorld::new(7);
    let sim = Connector::builder()
        .backend(SimBackend::new(&world, "a").expect("in a runtime"))
        .build()
        .await
        .expect("builds");
    let mut memory = stream.alloc_zeros::<u8>(4096).expect("allocates");
    let expected = Error::UnsupportedDevice {
        device: Device::cuda(0),
        backend: "sim",
    };
    let refused = sim
        .create_readable([Descriptor::from_cuda_slice(&memory)])
        .await
        .err();
    assert_eq!(refused, Some(expected.clone()));
    let refused = sim
        .create_writable([Descriptor::from_cuda_slice_mut(&mut memory)])
        .await
        .err();
    assert_eq!(refused, Some(expected));
}

/// Runs everywhere: the backends' capabilities and SPEC §4's check refuse device memory where
/// the backend cannot move it, and tcp built with `cuda` accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_only_backends_refuse_device_regions_before_any_operation() {
    let world = SimWorld::new(7);
    let sim = Connector::builder()
        .backend(SimBackend::new(&world, "a").expect("in a runtime"))
        .build()
        .await
        .expect("builds");
    let device = Region {
        addr: 0x7f00_0000_0000,
        len: 4096,
        device: Device::cuda(1),
    };
    for kind in [OperationKind::Read, OperationKind::Write] {
        assert_eq!(
            validate_passive(kind, sim.capabilities(), &[device], &[true]),
            Err(Error::UnsupportedDevice {
                device: Device::cuda(1),
                backend: "sim",
            })
        );
    }
    let tcp = tcp().await;
    assert!(tcp.capabilities().devices.contains(&DeviceKind::Cuda));
    assert_eq!(
        validate_passive(OperationKind::Read, tcp.capabilities(), &[device], &[false]),
        Ok(())
    );

    // Metadata naming device memory on the peer's side: the simulator refuses it at
    // begin_read, before connecting, with the remote device named.
    let readable_memory = vec![1u8; 4096];
    let peer = Connector::builder()
        .backend(SimBackend::new(&world, "b").expect("in a runtime"))
        .build()
        .await
        .expect("builds");
    let readable = peer
        .create_readable([Descriptor::from_slice(&readable_memory)])
        .await
        .expect("exposes host memory");
    let json =
        readable
            .metadata()
            .to_json()
            .replacen("\"device\":\"cpu\"", "\"device\":\"cuda:2\"", 1);
    let metadata = RdmaMetadata::from_json(&json).expect("decodes");
    let mut landing = vec![0u8; 4096];
    let refused = sim
        .begin_read(&metadata, [Descriptor::from_mut_slice(&mut landing)])
        .await
        .err();
    assert_eq!(
        refused,
        Some(Error::UnsupportedDevice {
            device: Device::cuda(2),
            backend: "sim",
        })
    );
}

/// Detection never panics, and says why when there is no device.
#[test]
fn detection_reports_instead_of_panicking() {
    match cuda::device_count() {
        Ok(n) => {
            assert!(n > 0);
            assert!(cuda::context(n).is_err(), "one past the last device");
        }
        Err(Error::BackendUnavailable { backend, reason }) => {
            assert_eq!(backend, cuda::DRIVER);
            println!("skipped: GPU part: {reason}");
        }
        Err(other) => panic!("unexpected detection error {other:?}"),
    }
}

//! ferry-bench-cuda's measurements: CUDA device memory over ferry's tcp backend (staged
//! through host buffers), in one process and across two, beside plain CUDA copies and
//! loopback TCP of the same size, measured in the same run.
//!
//! ```text
//!  rows per size                              reference (same run)
//!  ─────────────                              ────────────────────
//!  tcp read  device → device (1 and 2 procs)  cudarc copies: H2D, D2H, D2D (pageable host)
//!  tcp read  host   → device                  loopback TCP: iperf3 -c 127.0.0.1 (else a
//!  tcp read  device → host                    tokio stream of the same size)
//!  tcp write device → device (1 proc)         ferry tcp host → host
//!  nixl read/write device → device (1 proc)   cudarc D2D copy
//! ```
//!
//! The judged ratio is each staged tcp row's throughput over the lower of loopback TCP and the
//! host-to-device copy, and each nixl row's over the device-to-device copy (issue 8's targets:
//! at least 0.8 × each). The nixl rows need NIXL's UCX plugin to list VRAM
//! (`NixlBackend::cuda_support`); they keep their registrations cached, as a worker moving
//! KV blocks between pools registered once does. The host copies use pageable memory: a pinned baseline needs cudarc's
//! `alloc_pinned`, an `unsafe fn`, which this workspace allows only in the ucx and nixl
//! crates. Pinned copies are at least as fast, so where the H2D copy is the lower reference the
//! ratio printed is an upper bound on the ratio against a pinned copy.
//!
//! Included from `src/bin/cuda.rs`, whose peer process serves the two-process rows over JSON
//! lines on its stdin and stdout ([`ferry_benches::lines`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::core::cuda::cudarc::driver::{CudaSlice, CudaStream};
use ferry::tcp::TcpBackend;
use ferry::{Connector, Descriptor, OperationKind, RdmaMetadata};
use ferry_benches::lines::{error_of, JsonLines};
use ferry_benches::stats::{gigabytes, IterationPlan, Summary};
use ferry_benches::units::format_size;
use ferry_benches::{checksum, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Memory on one side of a transfer: host or device 0.
pub enum Memory {
    /// Host memory.
    Host(Vec<u8>),
    /// Device memory.
    Gpu(CudaSlice<u8>),
}

impl Memory {
    /// `bytes` placed on the device (`gpu`) or the host.
    pub fn new(gpu: bool, bytes: &[u8], stream: &Arc<CudaStream>) -> Result<Memory> {
        Ok(match gpu {
            true => Memory::Gpu(stream.clone_htod(bytes).map_err(|e| format!("H2D: {e}"))?),
            false => Memory::Host(bytes.to_vec()),
        })
    }

    /// A read-only descriptor of the whole buffer.
    pub fn shared(&self) -> Descriptor<'_> {
        match self {
            Memory::Host(v) => Descriptor::from_slice(v),
            Memory::Gpu(s) => Descriptor::from_cuda_slice(s),
        }
    }

    /// A writable descriptor of the whole buffer.
    pub fn exclusive(&mut self) -> Descriptor<'_> {
        match self {
            Memory::Host(v) => Descriptor::from_mut_slice(v),
            Memory::Gpu(s) => Descriptor::from_cuda_slice_mut(s),
        }
    }

    /// The bytes, copied to the host where they are on the device.
    pub fn bytes(&self, stream: &Arc<CudaStream>) -> Result<Vec<u8>> {
        Ok(match self {
            Memory::Host(v) => v.clone(),
            Memory::Gpu(s) => stream.clone_dtoh(s).map_err(|e| format!("D2H: {e}"))?,
        })
    }
}

/// Where the bytes of a row start and end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path {
    /// Read (pull from a readable) or write (push into a writable).
    pub kind: OperationKind,
    /// The source is device memory.
    pub from_gpu: bool,
    /// The destination is device memory.
    pub to_gpu: bool,
}

impl Path {
    /// `read D→D`, `write H→D` and so on.
    pub fn name(&self) -> String {
        let side = |gpu: bool| if gpu { "D" } else { "H" };
        let kind = match self.kind {
            OperationKind::Read => "read",
            OperationKind::Write => "write",
        };
        format!("{kind} {}→{}", side(self.from_gpu), side(self.to_gpu))
    }

    /// Whether device memory takes part (a staged row, judged).
    pub fn staged(&self) -> bool {
        self.from_gpu || self.to_gpu
    }
}

/// The paths measured in one process.
pub const ONE_PROCESS: [Path; 5] = [
    Path {
        kind: OperationKind::Read,
        from_gpu: true,
        to_gpu: true,
    },
    Path {
        kind: OperationKind::Read,
        from_gpu: false,
        to_gpu: true,
    },
    Path {
        kind: OperationKind::Read,
        from_gpu: true,
        to_gpu: false,
    },
    Path {
        kind: OperationKind::Write,
        from_gpu: true,
        to_gpu: true,
    },
    Path {
        kind: OperationKind::Read,
        from_gpu: false,
        to_gpu: false,
    },
];

/// The paths measured across two processes (this one reads from the peer's readable).
pub const TWO_PROCESSES: [Path; 3] = [ONE_PROCESS[0], ONE_PROCESS[1], ONE_PROCESS[2]];

/// Which backend a row's Connectors run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// tcp on 127.0.0.1, device memory staged through host buffers.
    Tcp,
    /// NIXL's UCX plugin, device memory registered as VRAM (registrations cached).
    Nixl,
}

/// A Connector on `backend` (a tcp one on 127.0.0.1, or a nixl one on an agent of its own).
pub async fn connector(backend: Backend) -> Result<Connector> {
    match backend {
        Backend::Tcp => Ok(Connector::builder()
            .backend(TcpBackend::new().await?)
            .build()
            .await?),
        Backend::Nixl => Ok(Connector::builder()
            .registration_cache(4)
            .backend(nixl_backend()?)
            .build()
            .await?),
    }
}

/// A NIXL backend on a fresh agent of this process.
fn nixl_backend() -> Result<ferry::nixl::NixlBackend> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static MADE: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "ferry-bench-cuda-{}-{}",
        std::process::id(),
        MADE.fetch_add(1, Ordering::Relaxed)
    );
    Ok(ferry::nixl::NixlBackend::new(
        ferry::nixl::NixlConfig::named(name),
    )?)
}

/// Whether the nixl rows can run here: NIXL loads and its UCX plugin moves device memory.
pub fn nixl_support() -> std::result::Result<(), String> {
    ferry::nixl::available(None)?;
    nixl_backend().map_err(|e| e.to_string())?.cuda_support()
}

/// The bytes every row moves: a pattern that differs per size, checked once per row.
pub fn payload(size: usize) -> Vec<u8> {
    ferry::demo::pattern(size, size as u64 ^ 0xc0da)
}

/// Times `plan`'s worth of `copy` calls (each synchronizing its stream).
pub fn time_copies(
    plan: IterationPlan,
    mut copy: impl FnMut() -> Result<()>,
) -> Result<Option<Summary>> {
    copy()?; // warm-up: first-touch, lazy module loads
    let mut samples = Vec::new();
    let mut spent = Duration::ZERO;
    while plan.wants_more(samples.len(), spent) {
        let start = Instant::now();
        copy()?;
        let elapsed = start.elapsed();
        spent += elapsed;
        samples.push(elapsed);
    }
    Ok(Summary::from_samples(samples))
}

/// Plain cudarc copies of `size` bytes between pageable host memory and device 0, and within
/// the device: `(H2D, D2H, D2D)`.
pub fn cuda_copies(
    stream: &Arc<CudaStream>,
    size: usize,
    plan: IterationPlan,
) -> Result<[Option<Summary>; 3]> {
    let cuda = |e: ferry::core::cuda::cudarc::driver::DriverError| format!("CUDA: {e}");
    let mut host = payload(size);
    let mut a = stream.clone_htod(&host).map_err(cuda)?;
    let mut b = stream.alloc_zeros::<u8>(size).map_err(cuda)?;
    let h2d = time_copies(plan, || {
        stream.memcpy_htod(&host, &mut a).map_err(cuda)?;
        Ok(stream.synchronize().map_err(cuda)?)
    })?;
    let d2h = time_copies(plan, || {
        stream.memcpy_dtoh(&a, &mut host).map_err(cuda)?;
        Ok(stream.synchronize().map_err(cuda)?)
    })?;
    let d2d = time_copies(plan, || {
        stream.memcpy_dtod(&a, &mut b).map_err(cuda)?;
        Ok(stream.synchronize().map_err(cuda)?)
    })?;
    Ok([h2d, d2h, d2d])
}

/// `size` bytes over a plain tokio TCP stream on 127.0.0.1 (1 MiB writes, a one-byte
/// acknowledgement at the end), as `plan` says: loopback TCP where iperf3 is not installed.
pub async fn tokio_stream(size: usize, plan: IterationPlan) -> Result<Option<Summary>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let mut left = size;
            while left > 0 {
                let want = left.min(buf.len());
                let n = socket.read(&mut buf[..want]).await?;
                if n == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                left -= n;
            }
            socket.write_all(&[1]).await?;
        }
    });
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let data = payload(size.min(1 << 20));
    let limit = ferry_benches::operation_limit(size);
    tokio::time::timeout(limit, blast(&mut socket, &data, size))
        .await
        .map_err(|_| "a loopback stream took too long")??;
    let mut samples = Vec::new();
    let mut spent = Duration::ZERO;
    while plan.wants_more(samples.len(), spent) {
        let start = Instant::now();
        tokio::time::timeout(limit, blast(&mut socket, &data, size))
            .await
            .map_err(|_| "a loopback stream took too long")??;
        let elapsed = start.elapsed();
        spent += elapsed;
        samples.push(elapsed);
    }
    drop(socket);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(Summary::from_samples(samples))
}

/// Writes `size` bytes (`data` over and over) and waits for the one-byte acknowledgement.
async fn blast(socket: &mut tokio::net::TcpStream, data: &[u8], size: usize) -> Result<()> {
    let mut left = size;
    while left > 0 {
        let n = left.min(data.len());
        socket.write_all(&data[..n]).await?;
        left -= n;
    }
    let mut ack = [0u8; 1];
    socket.read_exact(&mut ack).await?;
    Ok(())
}

/// One operation of `path` between two Connectors of this process, awaited on both sides.
async fn one_transfer(
    path: Path,
    a: &Connector,
    b: &Connector,
    source: &Memory,
    target: &mut Memory,
) -> Result<()> {
    match path.kind {
        OperationKind::Read => {
            let mut readable = a.create_readable([source.shared()]).await?;
            let metadata = readable.metadata().clone();
            let mut read = b.begin_read(&metadata, [target.exclusive()]).await?;
            tokio::try_join!(read.wait_for_completion(), readable.wait_for_completion())?;
        }
        OperationKind::Write => {
            let mut writable = b.create_writable([target.exclusive()]).await?;
            let metadata = writable.metadata().clone();
            let mut write = a.begin_write([source.shared()], &metadata).await?;
            tokio::try_join!(write.wait_for_completion(), writable.wait_for_completion())?;
        }
    }
    Ok(())
}

/// Times `path` on `backend` in one process: each operation from creating the passive side
/// to both sides complete. The first operation's bytes are checked.
pub async fn one_process(
    stream: &Arc<CudaStream>,
    backend: Backend,
    path: Path,
    size: usize,
    plan: IterationPlan,
) -> Result<Option<Summary>> {
    let sent = payload(size);
    let source = Memory::new(path.from_gpu, &sent, stream)?;
    let mut target = Memory::new(path.to_gpu, &vec![0u8; size], stream)?;
    let (a, b) = (connector(backend).await?, connector(backend).await?);
    let limit = ferry_benches::operation_limit(size);
    let timed = |r: std::result::Result<Result<()>, _>| {
        r.map_err(|_| {
            format!(
                "{} of {} ran past {limit:?}",
                path.name(),
                format_size(size)
            )
        })?
    };
    timed(tokio::time::timeout(limit, one_transfer(path, &a, &b, &source, &mut target)).await)?;
    if checksum(&target.bytes(stream)?) != checksum(&sent) {
        return Err(format!("{} of {}: the bytes differ", path.name(), format_size(size)).into());
    }
    let mut samples = Vec::new();
    let mut spent = Duration::ZERO;
    while plan.wants_more(samples.len(), spent) {
        let start = Instant::now();
        timed(tokio::time::timeout(limit, one_transfer(path, &a, &b, &source, &mut target)).await)?;
        let elapsed = start.elapsed();
        spent += elapsed;
        samples.push(elapsed);
    }
    Ok(Summary::from_samples(samples))
}

/// The peer process: on `{"readable":N,"gpu":bool}` it exposes N bytes of [`payload`] (on
/// device 0 or the host) and answers `{"metadata":…}`, then `{"done":true}` once the reader
/// has finished; it serves until its input closes.
pub async fn serve_peer(stream: Arc<CudaStream>) -> Result<()> {
    let mut channel = ferry_benches::lines::peer_stdio();
    let connector = connector(Backend::Tcp).await?;
    let mut memory: Option<(usize, bool, Memory)> = None;
    loop {
        let request = match channel.recv(Duration::from_secs(600)).await {
            Ok(request) => request,
            Err(_) => return Ok(()),
        };
        let (Some(size), Some(gpu)) = (request["readable"].as_u64(), request["gpu"].as_bool())
        else {
            channel.send(&json!({"error": "unknown request"})).await?;
            continue;
        };
        let size = usize::try_from(size)?;
        if !matches!(&memory, Some((s, g, _)) if *s == size && *g == gpu) {
            memory = Some((size, gpu, Memory::new(gpu, &payload(size), &stream)?));
        }
        let Some((_, _, buffer)) = &memory else {
            continue;
        };
        let served = async {
            let mut readable = connector.create_readable([buffer.shared()]).await?;
            channel
                .send(&json!({"metadata": readable.metadata().to_json()}))
                .await?;
            tokio::time::timeout(
                ferry_benches::operation_limit(size),
                readable.wait_for_completion(),
            )
            .await
            .map_err(|_| "the reader did not finish in time")??;
            Result::<()>::Ok(())
        };
        let reply = match served.await {
            Ok(()) => json!({"done": true}),
            Err(e) => json!({"error": e.to_string()}),
        };
        channel.send(&reply).await?;
    }
}

/// The other process of the two-process rows.
pub struct Peer {
    child: tokio::process::Child,
    channel: JsonLines<tokio::process::ChildStdout, tokio::process::ChildStdin>,
}

impl Peer {
    /// Starts this program again with `--peer`.
    pub fn spawn() -> Result<Peer> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("--peer")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
            return Err("the peer has no stdio".into());
        };
        Ok(Peer {
            child,
            channel: JsonLines::new(stdout, stdin),
        })
    }

    async fn expect(&mut self, key: &str, limit: Duration) -> Result<Value> {
        let reply = self.channel.recv(limit).await?;
        if let Some(e) = error_of(&reply) {
            return Err(format!("peer: {e}").into());
        }
        reply
            .get(key)
            .cloned()
            .ok_or_else(|| format!("peer answered {reply} without {key:?}").into())
    }

    /// One read of the peer's readable into `target`, timed from `begin_read` to this side
    /// complete; then waits for the peer's own completion (untimed).
    async fn read(
        &mut self,
        connector: &Connector,
        size: usize,
        from_gpu: bool,
        target: &mut Memory,
    ) -> Result<Duration> {
        let limit = ferry_benches::operation_limit(size);
        self.channel
            .send(&json!({"readable": size, "gpu": from_gpu}))
            .await?;
        let metadata = self.expect("metadata", limit).await?;
        let metadata = RdmaMetadata::from_json(metadata.as_str().unwrap_or_default())?;
        let start = Instant::now();
        let mut read = connector
            .begin_read(&metadata, [target.exclusive()])
            .await?;
        tokio::time::timeout(limit, read.wait_for_completion())
            .await
            .map_err(|_| format!("a read of {} ran past {limit:?}", format_size(size)))??;
        let elapsed = start.elapsed();
        drop(read);
        self.expect("done", limit).await?;
        Ok(elapsed)
    }

    /// Times reads of `path` from the peer; the first one's bytes are checked.
    pub async fn time(
        &mut self,
        stream: &Arc<CudaStream>,
        connector: &Connector,
        path: Path,
        size: usize,
        plan: IterationPlan,
    ) -> Result<Option<Summary>> {
        let mut target = Memory::new(path.to_gpu, &vec![0u8; size], stream)?;
        self.read(connector, size, path.from_gpu, &mut target)
            .await?;
        if checksum(&target.bytes(stream)?) != checksum(&payload(size)) {
            return Err(
                format!("{} of {}: the bytes differ", path.name(), format_size(size)).into(),
            );
        }
        let mut samples = Vec::new();
        let mut spent = Duration::ZERO;
        while plan.wants_more(samples.len(), spent) {
            let elapsed = self
                .read(connector, size, path.from_gpu, &mut target)
                .await?;
            spent += elapsed;
            samples.push(elapsed);
        }
        Ok(Summary::from_samples(samples))
    }

    /// Closes the peer's input and waits (bounded) for it to exit.
    pub async fn finish(self) {
        let Peer { mut child, channel } = self;
        drop(channel);
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub what: String,
    /// Bytes per operation.
    pub size: usize,
    /// The timings.
    pub summary: Summary,
    /// Throughput over the reference, for judged rows.
    pub ratio: Option<f64>,
    /// What the ratio divides by (`min(loopback TCP, H2D)` or `D2D copy`).
    pub reference: &'static str,
}

impl Row {
    /// Bytes per second.
    pub fn rate(&self) -> f64 {
        self.summary.throughput(self.size)
    }

    /// The row as JSON.
    pub fn json(&self) -> Value {
        json!({
            "what": self.what,
            "size": self.size,
            "iterations": self.summary.iterations,
            "p50_us": self.summary.p50.as_secs_f64() * 1e6,
            "gb_per_s": gigabytes(self.rate()),
            "ratio_to_reference": self.ratio,
            "reference": self.reference,
        })
    }
}

/// The markdown table of `rows`, with the 0.8 target marked.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| what | size | ops | p50 | GB/s | ÷ reference | ≥ 0.8 |\n\
         |---|---:|---:|---:|---:|---:|:---:|\n",
    );
    for r in rows {
        let (ratio, met) = match r.ratio {
            Some(x) => (
                format!("{x:.2} (÷ {})", r.reference),
                if x >= 0.8 { "yes" } else { "no" },
            ),
            None => (String::new(), ""),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} µs | {:.2} | {ratio} | {met} |\n",
            r.what,
            format_size(r.size),
            r.summary.iterations,
            r.summary.p50.as_secs_f64() * 1e6,
            gigabytes(r.rate()),
        ));
    }
    out
}

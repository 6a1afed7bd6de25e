//! The tcp backend's two sides: the passive peer process, and the active side that times
//! reads and writes against it.
//!
//! The peer is this same program re-run with `--peer`. It reads one command per line on stdin
//! (`{"op":"readable","size":N,"verify":b}`, `{"op":"writable",…}`, `{"op":"exit"}`), exposes
//! a buffer it allocated once per size, prints the operation's metadata
//! ([`ferry::RdmaMetadata::to_json`]) as one line, awaits the operation, and prints
//! `{"done":true}` (with a `checksum` of a written buffer when asked to verify) or
//! `{"done":false,"error":…}`. On tcp a passive operation moves bytes only while its owner
//! awaits it, which the peer does, in its own process, while the active side transfers.
//!
//! A command with `"count":N` (N > 1) asks for a batch: the peer exposes N operations at once,
//! one over each of N buffers (allocated once, reused like the single one), prints N metadata
//! lines, awaits all N concurrently in one task ([`join_all`]), and prints one done line (with
//! `checksums`, one per buffer, when asked to verify a write). The active side begins all N and
//! awaits them together: N operations in flight, as bandwidth tools measure (ucx_perftest's
//! window of outstanding operations, nixlbench's batch size).

use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry::tcp::{TcpBackend, TcpConfig};
use ferry::{kind, Connector, Descriptor, Operation, RdmaMetadata};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::join::{join_all, BoxFuture};
use crate::lines::{error_of, Closed, JsonLines};
use crate::stats::{IterationPlan, Summary};
use crate::{baseline, checksum, operation_limit, Result};

/// Seed of the pattern a peer's readable holds ([`ferry::demo::pattern`]); buffer `i` of a
/// batch holds the pattern of `READ_SEED + i`.
pub const READ_SEED: u64 = 0x5245_4144;

/// Seed of the pattern the active side writes; buffer `i` of a batch writes the pattern of
/// `WRITE_SEED + i`, so bytes that land in the wrong buffer fail the check.
pub const WRITE_SEED: u64 = 0x5752_4954;

/// How long the peer waits for its next command before it gives up on the active side.
const COMMAND_LIMIT: Duration = Duration::from_secs(600);

/// How long the peer may take to start and report ready.
const START_LIMIT: Duration = Duration::from_secs(30);

/// How long the peer may take to exit once told to.
const EXIT_LIMIT: Duration = Duration::from_secs(10);

/// Which way the bytes go, seen from the active side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The active side reads the peer's readable: bytes flow peer → active.
    Read,
    /// The active side writes into the peer's writable: bytes flow active → peer.
    Write,
}

impl Direction {
    /// `read` or `write`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Read => "read",
            Direction::Write => "write",
        }
    }

    /// The passive operation the peer creates for it: `readable` or `writable`.
    fn passive(self) -> &'static str {
        match self {
            Direction::Read => "readable",
            Direction::Write => "writable",
        }
    }
}

/// A Connector on a fresh tcp backend with the default configuration (127.0.0.1, any port).
pub async fn connector(worker_id: &str) -> Result<Connector> {
    let backend = TcpBackend::bind(TcpConfig::default()).await?;
    Ok(Connector::builder()
        .worker_id(worker_id)
        .backend(backend)
        .build()
        .await?)
}

/// The seed of the pattern buffer `index` of a batch is read from.
fn read_seed(index: usize) -> u64 {
    READ_SEED.wrapping_add(index as u64)
}

/// The seed of the pattern buffer `index` of a batch writes.
fn write_seed(index: usize) -> u64 {
    WRITE_SEED.wrapping_add(index as u64)
}

/// The peer's buffer: one allocation per size, reused by every operation of that size.
#[derive(Debug, Default)]
struct PeerBuffer {
    bytes: Vec<u8>,
    /// The seed of the pattern the bytes hold, if they hold one.
    pattern: Option<u64>,
}

impl PeerBuffer {
    /// Makes the buffer `size` bytes of the `seed` pattern.
    fn hold_pattern(&mut self, size: usize, seed: u64) {
        if !(self.pattern == Some(seed) && self.bytes.len() == size) {
            self.bytes = Vec::new(); // free the old buffer before making the new one
            self.bytes = ferry::demo::pattern(size, seed);
            self.pattern = Some(seed);
        }
    }

    /// Makes the buffer `size` bytes long, zeroed if `clear` or if newly allocated.
    fn hold_landing(&mut self, size: usize, clear: bool) {
        if self.bytes.len() != size {
            self.bytes = Vec::new();
            self.bytes = vec![0; size];
        } else if clear {
            self.bytes.fill(0);
        }
        self.pattern = None;
    }
}

/// Runs the passive side: serves a ping-pong listener for the baseline, then answers
/// commands on stdin until `exit` or end of input. Everything it prints on stdout is one
/// JSON line; its first line is `{"ready":true,"echo_port":P,"pid":N}`.
pub async fn run_peer() -> Result<()> {
    let connector = connector("ferry-bench-peer").await?;
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_port = echo.local_addr()?.port();
    tokio::spawn(baseline::serve_ping_pong(echo));

    let mut io = JsonLines::new(tokio::io::stdin(), tokio::io::stdout());
    io.send(&json!({"ready": true, "echo_port": echo_port, "pid": std::process::id()}))
        .await?;
    // Buffer 0 serves single operations; a batch of N uses buffers 0..N.
    let mut buffers: Vec<PeerBuffer> = Vec::new();
    loop {
        let command = match io.recv(COMMAND_LIMIT).await {
            Ok(command) => command,
            Err(e) if e.is::<Closed>() => return Ok(()),
            Err(e) => return Err(e),
        };
        let number = |field: &str| {
            command[field]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
        };
        let size = number("size");
        let count = number("count").unwrap_or(1);
        let verify = command["verify"].as_bool().unwrap_or(false);
        let direction = match command["op"].as_str() {
            Some("exit") => return Ok(()),
            Some("readable") => Some(Direction::Read),
            Some("writable") => Some(Direction::Write),
            _ => None,
        };
        match (direction, size) {
            (Some(direction), Some(size)) if count >= 1 && size.checked_mul(count).is_some() => {
                // Buffers past this command's count are freed; the others are reused.
                buffers.truncate(count);
                buffers.resize_with(count, PeerBuffer::default);
                if count == 1 {
                    serve(
                        &connector,
                        &mut io,
                        &mut buffers[0],
                        direction,
                        size,
                        verify,
                    )
                    .await?;
                } else {
                    serve_batch(&connector, &mut io, &mut buffers, direction, size, verify).await?;
                }
            }
            _ => {
                io.send(&json!({"error": format!("unknown command {command}")}))
                    .await?
            }
        }
    }
}

/// Creates one passive operation over `buffer`, prints its metadata, awaits it, and prints
/// how it ended.
async fn serve<R, W>(
    connector: &Connector,
    io: &mut JsonLines<R, W>,
    buffer: &mut PeerBuffer,
    direction: Direction,
    size: usize,
    verify: bool,
) -> Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let limit = operation_limit(size);
    let outcome = match direction {
        Direction::Read => {
            buffer.hold_pattern(size, read_seed(0));
            let mut op = match connector
                .create_readable([Descriptor::from_slice(&buffer.bytes)])
                .await
            {
                Ok(op) => op,
                Err(e) => return io.send(&json!({"error": e.to_string()})).await,
            };
            io.send_line(&op.metadata().to_json()).await?;
            tokio::time::timeout(limit, op.wait_for_completion()).await
        }
        Direction::Write => {
            buffer.hold_landing(size, verify);
            let mut op = match connector
                .create_writable([Descriptor::from_mut_slice(&mut buffer.bytes)])
                .await
            {
                Ok(op) => op,
                Err(e) => return io.send(&json!({"error": e.to_string()})).await,
            };
            io.send_line(&op.metadata().to_json()).await?;
            tokio::time::timeout(limit, op.wait_for_completion()).await
        }
    };
    let reply = match outcome {
        Ok(Ok(())) if verify && direction == Direction::Write => {
            json!({"done": true, "checksum": checksum(&buffer.bytes)})
        }
        Ok(Ok(())) => json!({"done": true}),
        Ok(Err(e)) => json!({"done": false, "error": e.to_string()}),
        Err(_) => json!({"done": false, "error": format!("not complete within {limit:?}")}),
    };
    io.send(&reply).await
}

/// Creates one passive operation over each of `buffers` at once, prints their metadata one
/// line each, awaits them all concurrently in this task, and prints how they ended, in one
/// line: `{"done":true}`, with `checksums` (one per buffer) when asked to verify a write.
async fn serve_batch<R, W>(
    connector: &Connector,
    io: &mut JsonLines<R, W>,
    buffers: &mut [PeerBuffer],
    direction: Direction,
    size: usize,
    verify: bool,
) -> Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let limit = operation_limit(size.saturating_mul(buffers.len()));
    let outcome = match direction {
        Direction::Read => {
            for (index, buffer) in buffers.iter_mut().enumerate() {
                buffer.hold_pattern(size, read_seed(index));
            }
            let mut ops = Vec::with_capacity(buffers.len());
            for buffer in buffers.iter() {
                match connector
                    .create_readable([Descriptor::from_slice(&buffer.bytes)])
                    .await
                {
                    Ok(op) => ops.push(op),
                    Err(e) => return io.send(&json!({"error": e.to_string()})).await,
                }
            }
            expose_and_await(io, &mut ops, limit).await?
        }
        Direction::Write => {
            for buffer in buffers.iter_mut() {
                buffer.hold_landing(size, verify);
            }
            let mut ops = Vec::with_capacity(buffers.len());
            for buffer in buffers.iter_mut() {
                match connector
                    .create_writable([Descriptor::from_mut_slice(&mut buffer.bytes)])
                    .await
                {
                    Ok(op) => ops.push(op),
                    Err(e) => return io.send(&json!({"error": e.to_string()})).await,
                }
            }
            expose_and_await(io, &mut ops, limit).await?
        }
    };
    let reply = match outcome {
        Ok(()) if verify && direction == Direction::Write => {
            let checksums: Vec<u64> = buffers.iter().map(|b| checksum(&b.bytes)).collect();
            json!({"done": true, "checksums": checksums})
        }
        Ok(()) => json!({"done": true}),
        Err(why) => json!({"done": false, "error": why}),
    };
    io.send(&reply).await
}

/// Prints each passive operation's metadata, one line each, then awaits them all at once, for
/// at most `limit`. The inner `Err` says why not all completed.
async fn expose_and_await<R, W, K>(
    io: &mut JsonLines<R, W>,
    ops: &mut [Operation<'_, K>],
    limit: Duration,
) -> Result<Result<(), String>>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
    K: kind::Passive + Send,
{
    // Taken first: an operation is not Sync, so no borrow of one may live across an await.
    let lines: Vec<String> = ops.iter().map(|op| op.metadata().to_json()).collect();
    for line in &lines {
        io.send_line(line).await?;
    }
    let count = ops.len();
    Ok(match tokio::time::timeout(limit, complete_all(ops)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("not all {count} complete within {limit:?}")),
    })
}

/// Awaits every operation in `ops` concurrently, in this task; the first error (in the order
/// of `ops`) if any failed. Returns when all have ended; bound it with a timeout.
async fn complete_all<K: Send>(ops: &mut [Operation<'_, K>]) -> Result<(), ferry::Error> {
    let waits: Vec<BoxFuture<'_, Result<(), ferry::Error>>> = ops
        .iter_mut()
        .map(|op| -> BoxFuture<'_, _> { Box::pin(op.wait_for_completion()) })
        .collect();
    join_all(waits).await.into_iter().collect()
}

/// The peer process, seen from the active side. Killed (by its PID) when dropped.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    io: JsonLines<ChildStdout, ChildStdin>,
    echo_port: u16,
}

impl Peer {
    /// Starts this program again with `--peer` and `args`, and waits for it to report ready.
    pub async fn spawn(args: &[&str]) -> Result<Peer> {
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .arg("--peer")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("the peer has no stdout pipe")?;
        let stdin = child.stdin.take().ok_or("the peer has no stdin pipe")?;
        let mut io = JsonLines::new(stdout, stdin);
        let ready = io.recv(START_LIMIT).await?;
        let echo_port = ready["echo_port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| format!("the peer did not start: {ready}"))?;
        Ok(Peer {
            child,
            io,
            echo_port,
        })
    }

    /// The peer's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Where the peer's ping-pong server listens.
    pub fn echo_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.echo_port))
    }

    /// Tells the peer to exit and waits for it; kills it if it does not exit in time.
    pub async fn exit(mut self) -> Result<()> {
        let told = self.io.send(&json!({"op": "exit"})).await;
        match tokio::time::timeout(EXIT_LIMIT, self.child.wait()).await {
            Ok(status) if told.is_ok() && status.as_ref().is_ok_and(|s| s.success()) => Ok(()),
            Ok(status) => Err(format!("the peer ended badly: {status:?}").into()),
            Err(_) => {
                self.child.kill().await?;
                Err(format!("the peer did not exit within {EXIT_LIMIT:?}; killed").into())
            }
        }
    }
}

/// One size, direction and number of operations in flight, measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// Which way the bytes went.
    pub direction: Direction,
    /// Bytes per operation.
    pub size: usize,
    /// Operations in flight at once: 1 for one operation at a time, N for batches of N.
    pub in_flight: usize,
    /// The timed operations, or with N in flight the timed batches (the verified warm-up
    /// excluded).
    pub summary: Summary,
    /// Whether the warm-up's bytes matched, byte for byte (read) or by checksum (write), in
    /// every buffer.
    pub verified: bool,
}

impl Measured {
    /// Mean throughput, bytes per second: `in_flight` × size × iterations ÷ total time.
    pub fn throughput(&self) -> f64 {
        self.summary
            .throughput(self.size.saturating_mul(self.in_flight))
    }
}

/// Measures `direction` at `size` against `peer`, with `in_flight` operations at once (1: one
/// at a time; N > 1: batches of N, each operation on its own buffer): one untimed warm-up
/// whose bytes are verified, then timed operations or batches as `plan` says (it counts
/// batches). An operation's time runs from just before `begin_read`/`begin_write` to its
/// `wait_for_completion` returning `Ok`; a batch's from just before the first begin to when
/// all N have returned `Ok`. The metadata exchange is not in it.
pub async fn measure(
    connector: &Connector,
    peer: &mut Peer,
    direction: Direction,
    size: usize,
    in_flight: usize,
    plan: IterationPlan,
) -> Result<Measured> {
    let in_flight = in_flight.max(1);
    let (mut buffers, verified) = match direction {
        Direction::Read => {
            let mut landings = vec![vec![0u8; size]; in_flight];
            exchange(connector, peer, direction, &mut landings, true).await?;
            let verified = landings
                .iter()
                .enumerate()
                .all(|(i, landing)| *landing == ferry::demo::pattern(size, read_seed(i)));
            (landings, verified)
        }
        Direction::Write => {
            let mut sources: Vec<Vec<u8>> = (0..in_flight)
                .map(|i| ferry::demo::pattern(size, write_seed(i)))
                .collect();
            let expected: Vec<Option<u64>> = sources.iter().map(|s| Some(checksum(s))).collect();
            let (_, done) = exchange(connector, peer, direction, &mut sources, true).await?;
            let reported: Vec<Option<u64>> = if in_flight == 1 {
                vec![done["checksum"].as_u64()]
            } else {
                done["checksums"]
                    .as_array()
                    .map(|all| all.iter().map(Value::as_u64).collect())
                    .unwrap_or_default()
            };
            (sources, reported == expected)
        }
    };
    let mut samples = Vec::new();
    let mut spent = Duration::ZERO;
    while plan.wants_more(samples.len(), spent) {
        let (elapsed, _) = exchange(connector, peer, direction, &mut buffers, false).await?;
        spent += elapsed;
        samples.push(elapsed);
    }
    let summary = Summary::from_samples(samples).ok_or("the plan asked for no operations")?;
    Ok(Measured {
        direction,
        size,
        in_flight,
        summary,
        verified,
    })
}

/// One operation over the only buffer of `buffers`, or a batch over each of them.
async fn exchange(
    connector: &Connector,
    peer: &mut Peer,
    direction: Direction,
    buffers: &mut [Vec<u8>],
    verify: bool,
) -> Result<(Duration, Value)> {
    match buffers {
        [buffer] => transfer(connector, peer, direction, buffer, verify).await,
        _ => transfer_batch(connector, peer, direction, buffers, verify).await,
    }
}

/// One operation: asks the peer for a passive operation, begins the active one over `buffer`
/// and times it, then reads the peer's completion line, which it returns.
async fn transfer(
    connector: &Connector,
    peer: &mut Peer,
    direction: Direction,
    buffer: &mut [u8],
    verify: bool,
) -> Result<(Duration, Value)> {
    let size = buffer.len();
    let limit = operation_limit(size);
    peer.io
        .send(&json!({"op": direction.passive(), "size": size, "verify": verify}))
        .await?;
    let metadata = recv_metadata(peer, size, limit).await?;
    let timed = async {
        let start = Instant::now();
        let elapsed = match direction {
            Direction::Read => {
                let mut op = connector
                    .begin_read(&metadata, [Descriptor::from_mut_slice(buffer)])
                    .await?;
                op.wait_for_completion().await?;
                start.elapsed()
            }
            Direction::Write => {
                let mut op = connector
                    .begin_write([Descriptor::from_slice(buffer)], &metadata)
                    .await?;
                op.wait_for_completion().await?;
                start.elapsed()
            }
        };
        Ok::<_, ferry::Error>(elapsed)
    };
    let elapsed = tokio::time::timeout(limit, timed)
        .await
        .map_err(|_| {
            format!(
                "{} of {size} bytes not complete within {limit:?}",
                direction.name()
            )
        })?
        .map_err(|e| format!("{} of {size} bytes failed: {e}", direction.name()))?;
    let done = recv_done(peer, direction, limit).await?;
    Ok((elapsed, done))
}

/// One batch: asks the peer for `buffers.len()` passive operations at once, begins an active
/// one over each buffer, awaits them all concurrently and times the lot, then reads the peer's
/// completion line, which it returns.
async fn transfer_batch(
    connector: &Connector,
    peer: &mut Peer,
    direction: Direction,
    buffers: &mut [Vec<u8>],
    verify: bool,
) -> Result<(Duration, Value)> {
    let count = buffers.len();
    let size = buffers.first().map_or(0, Vec::len);
    let limit = operation_limit(size.saturating_mul(count));
    peer.io
        .send(&json!({
            "op": direction.passive(),
            "size": size,
            "count": count,
            "verify": verify,
        }))
        .await?;
    let mut metadata = Vec::with_capacity(count);
    for _ in 0..count {
        metadata.push(recv_metadata(peer, size, limit).await?);
    }
    let timed = async {
        let start = Instant::now();
        let elapsed = match direction {
            Direction::Read => {
                let mut ops = Vec::with_capacity(count);
                for (buffer, metadata) in buffers.iter_mut().zip(&metadata) {
                    ops.push(
                        connector
                            .begin_read(metadata, [Descriptor::from_mut_slice(buffer)])
                            .await?,
                    );
                }
                complete_all(&mut ops).await?;
                start.elapsed()
            }
            Direction::Write => {
                let mut ops = Vec::with_capacity(count);
                for (buffer, metadata) in buffers.iter().zip(&metadata) {
                    ops.push(
                        connector
                            .begin_write([Descriptor::from_slice(buffer)], metadata)
                            .await?,
                    );
                }
                complete_all(&mut ops).await?;
                start.elapsed()
            }
        };
        Ok::<_, ferry::Error>(elapsed)
    };
    let elapsed = tokio::time::timeout(limit, timed)
        .await
        .map_err(|_| {
            format!(
                "{count} {}s of {size} bytes not complete within {limit:?}",
                direction.name()
            )
        })?
        .map_err(|e| format!("{count} {}s of {size} bytes: {e}", direction.name()))?;
    let done = recv_done(peer, direction, limit).await?;
    Ok((elapsed, done))
}

/// Reads one metadata line from the peer, or the error it sent instead.
async fn recv_metadata(peer: &mut Peer, size: usize, limit: Duration) -> Result<RdmaMetadata> {
    let line = peer.io.recv_line(limit).await?;
    let reply: Value = serde_json::from_str(line)?;
    if let Some(e) = error_of(&reply) {
        return Err(format!("the peer could not expose {size} bytes: {e}").into());
    }
    Ok(RdmaMetadata::from_json(line)?)
}

/// Reads the peer's done line; an error unless it says `"done":true`.
async fn recv_done(peer: &mut Peer, direction: Direction, limit: Duration) -> Result<Value> {
    let done = peer.io.recv(limit).await?;
    if done["done"] != Value::Bool(true) {
        let why = error_of(&done).unwrap_or_else(|| done.to_string());
        return Err(format!("the peer's {} failed: {why}", direction.passive()).into());
    }
    Ok(done)
}

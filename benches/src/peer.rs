//! The passive peer process every benchmark runs beside itself: this same program re-run with
//! `--peer`, spoken to in JSON lines over its stdin and stdout ([`JsonLines`]), and the buffer
//! it allocates once per size and reuses.
//!
//! Each backend's module (such as [`crate::tcp`]) defines the commands its peer answers; what
//! they share is here: starting the peer and waiting for its ready line, its buffers, serving
//! one passive operation ([`serve_pieces`]) and running one active operation against it
//! ([`transfer_against`]), or a batch of N of each at once ([`serve_batch`],
//! [`transfer_batch`]: N operations in flight, as bandwidth tools keep a window of them),
//! reading a metadata line or a done line back, and telling it to exit.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry::{kind, Connector, Descriptor, Operation, RdmaMetadata};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::clock::unix_nanos;
use crate::join::{join_all, BoxFuture};
use crate::lines::{error_of, Closed, JsonLines};
use crate::{checksum, operation_limit, Result};

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
    pub fn passive(self) -> &'static str {
        match self {
            Direction::Read => "readable",
            Direction::Write => "writable",
        }
    }

    /// The direction whose passive operation is `name` (`readable` or `writable`).
    pub fn from_passive(name: &str) -> Option<Direction> {
        match name {
            "readable" => Some(Direction::Read),
            "writable" => Some(Direction::Write),
            _ => None,
        }
    }
}

/// The peer process, seen from the active side. Killed (by its PID) when dropped.
#[derive(Debug)]
pub struct PeerProcess {
    child: Child,
    /// The peer's stdout (its replies) and stdin (the commands).
    pub io: JsonLines<ChildStdout, ChildStdin>,
    ready: Value,
}

impl PeerProcess {
    /// Starts this program again with `--peer` and `args`, and waits for its first line,
    /// which must say `"ready":true`.
    pub async fn spawn(args: &[&str]) -> Result<PeerProcess> {
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
        if ready["ready"] != Value::Bool(true) {
            let why = error_of(&ready).unwrap_or_else(|| ready.to_string());
            return Err(format!("the peer did not start: {why}").into());
        }
        Ok(PeerProcess { child, io, ready })
    }

    /// The peer's ready line, with whatever the backend's peer put in it.
    pub fn ready(&self) -> &Value {
        &self.ready
    }

    /// The peer's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
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

    /// Reads one metadata line, or the error the peer sent instead ([`recv_metadata`]).
    pub async fn recv_metadata(&mut self, size: usize, limit: Duration) -> Result<RdmaMetadata> {
        recv_metadata(&mut self.io, size, limit).await
    }

    /// Reads the peer's done line; an error unless it says `"done":true` ([`recv_done`]).
    /// `what` names the peer's side of the operation, for the error.
    pub async fn recv_done(&mut self, what: &str, limit: Duration) -> Result<Value> {
        recv_done(&mut self.io, what, limit).await
    }
}

/// Reads one metadata line from a peer over `io`, or the error the peer sent instead.
pub async fn recv_metadata<R, W>(
    io: &mut JsonLines<R, W>,
    size: usize,
    limit: Duration,
) -> Result<RdmaMetadata>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let line = io.recv_line(limit).await?;
    let reply: Value = serde_json::from_str(line)?;
    if let Some(e) = error_of(&reply) {
        return Err(format!("the peer could not expose {size} bytes: {e}").into());
    }
    Ok(RdmaMetadata::from_json(line)?)
}

/// Reads a peer's done line over `io`; an error unless it says `"done":true`. `what` names the
/// peer's side of the operation, for the error.
pub async fn recv_done<R, W>(io: &mut JsonLines<R, W>, what: &str, limit: Duration) -> Result<Value>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let done = io.recv(limit).await?;
    if done["done"] != Value::Bool(true) {
        let why = error_of(&done).unwrap_or_else(|| done.to_string());
        return Err(format!("the peer's {what} failed: {why}").into());
    }
    Ok(done)
}

/// A peer's buffer: one allocation per size, reused by every operation of that size.
#[derive(Debug, Default)]
pub struct PeerBuffer {
    /// The bytes a passive operation exposes.
    pub bytes: Vec<u8>,
    /// The seed of the pattern the bytes hold, if they hold one.
    pattern: Option<u64>,
}

impl PeerBuffer {
    /// Makes the buffer `size` bytes of the `seed` pattern ([`ferry::demo::pattern`]).
    pub fn hold_pattern(&mut self, size: usize, seed: u64) {
        if !(self.pattern == Some(seed) && self.bytes.len() == size) {
            self.bytes = Vec::new(); // free the old buffer before making the new one
            self.bytes = ferry::demo::pattern(size, seed);
            self.pattern = Some(seed);
        }
    }

    /// Makes the buffer `size` bytes long, zeroed if `clear` or if newly allocated.
    pub fn hold_landing(&mut self, size: usize, clear: bool) {
        if self.bytes.len() != size {
            self.bytes = Vec::new();
            self.bytes = vec![0; size];
        } else if clear {
            self.bytes.fill(0);
        }
        self.pattern = None;
    }

    /// Frees the bytes.
    pub fn release(&mut self) {
        *self = PeerBuffer::default();
    }
}

/// Serves one passive operation on the peer, its buffer split evenly over `descriptors`
/// descriptors (1: the whole buffer; more: nixlbench's batch size): makes `buffer` hold the
/// `seed` pattern (for a read) or `size` landing bytes (for a write, zeroed when `verify`),
/// creates the readable or writable over its pieces on `connector`, prints its metadata as one
/// line, awaits it (for at most [`operation_limit`]), and prints how it ended:
/// `{"done":true,"at_ns":T}`, where `T` is the instant its wait returned ([`unix_nanos`]), with
/// the `checksum` of a written buffer when `verify`; or `{"done":false,"error":…}`. An
/// operation that cannot be created, or a `size` that does not split into that many non-empty
/// pieces ([`crate::local::piece`]), is answered `{"error":…}` instead of its metadata.
#[allow(clippy::too_many_arguments)]
pub async fn serve_pieces<R, W>(
    connector: &Connector,
    io: &mut JsonLines<R, W>,
    buffer: &mut PeerBuffer,
    direction: Direction,
    size: usize,
    descriptors: usize,
    seed: u64,
    verify: bool,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(piece) = crate::local::piece(size, descriptors) else {
        let why = format!("{size} bytes do not split into {descriptors} descriptors");
        return io.send(&json!({ "error": why })).await;
    };
    let limit = operation_limit(size);
    let (outcome, at) = match direction {
        Direction::Read => {
            buffer.hold_pattern(size, seed);
            let pieces = buffer.bytes.chunks(piece).map(Descriptor::from_slice);
            match connector.create_readable(pieces).await {
                Ok(op) => (expose_and_await(io, &mut [op], limit).await?, unix_nanos()),
                Err(e) => return io.send(&json!({"error": e.to_string()})).await,
            }
        }
        Direction::Write => {
            buffer.hold_landing(size, verify);
            let pieces = buffer
                .bytes
                .chunks_mut(piece)
                .map(Descriptor::from_mut_slice);
            match connector.create_writable(pieces).await {
                Ok(op) => (expose_and_await(io, &mut [op], limit).await?, unix_nanos()),
                Err(e) => return io.send(&json!({"error": e.to_string()})).await,
            }
        }
    };
    let reply = match outcome {
        Ok(()) if verify && direction == Direction::Write => {
            json!({"done": true, "at_ns": at, "checksum": checksum(&buffer.bytes)})
        }
        Ok(()) => json!({"done": true, "at_ns": at}),
        Err(why) => json!({"done": false, "error": why}),
    };
    io.send(&reply).await
}

/// Prints each passive operation's metadata, one line each, then awaits them all at once, for
/// at most `limit`. The inner `Err` says why not all completed.
pub async fn expose_and_await<R, W, K>(
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
pub async fn complete_all<K: Send>(ops: &mut [Operation<'_, K>]) -> Result<(), ferry::Error> {
    let waits: Vec<BoxFuture<'_, Result<(), ferry::Error>>> = ops
        .iter_mut()
        .map(|op| -> BoxFuture<'_, _> { Box::pin(op.wait_for_completion()) })
        .collect();
    join_all(waits).await.into_iter().collect()
}

/// The local memory of an active operation.
#[derive(Debug)]
pub enum Local<'a> {
    /// Where a read lands.
    Landing(&'a mut [u8]),
    /// What a write sends.
    Source(&'a [u8]),
}

impl<'a> Local<'a> {
    /// `buffer` as the local memory of an operation in `direction`.
    pub fn of(direction: Direction, buffer: &'a mut [u8]) -> Local<'a> {
        match direction {
            Direction::Read => Local::Landing(buffer),
            Direction::Write => Local::Source(buffer),
        }
    }

    /// The direction of the operation it serves.
    pub fn direction(&self) -> Direction {
        match self {
            Local::Landing(_) => Direction::Read,
            Local::Source(_) => Direction::Write,
        }
    }

    /// How many bytes.
    pub fn len(&self) -> usize {
        match self {
            Local::Landing(bytes) => bytes.len(),
            Local::Source(bytes) => bytes.len(),
        }
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Begins the active operation over `local` against a peer's `metadata` (`begin_read` into a
/// landing, `begin_write` from a source) and awaits it, for at most `limit`. Returns the time
/// from just before the begin until `wait_for_completion` returned `Ok`.
pub async fn transfer_against(
    connector: &Connector,
    metadata: &RdmaMetadata,
    local: Local<'_>,
    limit: Duration,
) -> Result<Duration> {
    let (size, direction) = (local.len(), local.direction());
    let timed = async {
        let start = Instant::now();
        match local {
            Local::Landing(buffer) => {
                let mut op = connector
                    .begin_read(metadata, [Descriptor::from_mut_slice(buffer)])
                    .await?;
                op.wait_for_completion().await?;
            }
            Local::Source(buffer) => {
                let mut op = connector
                    .begin_write([Descriptor::from_slice(buffer)], metadata)
                    .await?;
                op.wait_for_completion().await?;
            }
        }
        Ok::<_, ferry::Error>(start.elapsed())
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
    Ok(elapsed)
}

/// Parses an `--in-flight` value: a whole number, at least 1.
pub fn parse_in_flight(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{text:?}: expected a whole number of operations, at least 1"
        )),
    }
}

/// The numbers in flight to measure `size` at: 1, and `in_flight` when it is above 1 and a
/// batch of it moves at most `batch_bytes`.
pub fn in_flight_widths(size: usize, in_flight: usize, batch_bytes: usize) -> Vec<usize> {
    let batch = size.checked_mul(in_flight);
    if in_flight > 1 && batch.is_some_and(|b| b <= batch_bytes) {
        vec![1, in_flight]
    } else {
        vec![1]
    }
}

/// How long a peer waits for its next command before it gives up on the active side.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(600);

/// The peer's command loop: answers each `readable`/`writable` command (`size`, `verify`,
/// `count` for a batch, `descriptors` for a split operation) with [`serve_count`], until
/// `exit` or the end of input; anything else is answered `{"error":…}`. Its buffers are freed
/// when it returns.
pub async fn serve_commands<R, W>(
    connector: &Connector,
    io: &mut JsonLines<R, W>,
    read_seed: fn(usize) -> u64,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
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
        let (size, count) = (number("size"), number("count").unwrap_or(1));
        let descriptors = number("descriptors").unwrap_or(1);
        let verify = command["verify"].as_bool().unwrap_or(false);
        let op = command["op"].as_str().unwrap_or_default();
        match (op, Direction::from_passive(op), size) {
            ("exit", _, _) => return Ok(()),
            (_, Some(direction), Some(size)) if count >= 1 && size.checked_mul(count).is_some() => {
                serve_count(
                    connector,
                    io,
                    &mut buffers,
                    direction,
                    size,
                    (count, descriptors),
                    verify,
                    read_seed,
                )
                .await?
            }
            _ => {
                let error = format!("unknown command {command}");
                io.send(&json!({ "error": error })).await?
            }
        }
    }
}

/// Serves one `readable`/`writable` command on the peer: one operation over buffer 0, its
/// bytes split over `descriptors` descriptors ([`serve_pieces`], with the pattern of
/// `read_seed(0)`), when `count` is 1, else a batch over buffers `0..count` ([`serve_batch`],
/// one descriptor each; a batch of split operations is answered `{"error":…}`). Buffers past
/// `count` are freed; the others are reused.
#[allow(clippy::too_many_arguments)]
pub async fn serve_count<R, W>(
    connector: &Connector,
    io: &mut JsonLines<R, W>,
    buffers: &mut Vec<PeerBuffer>,
    direction: Direction,
    size: usize,
    (count, descriptors): (usize, usize),
    verify: bool,
    read_seed: fn(usize) -> u64,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let count = count.max(1);
    buffers.truncate(count);
    buffers.resize_with(count, PeerBuffer::default);
    match buffers.as_mut_slice() {
        [buffer] => {
            let (seed, n) = (read_seed(0), descriptors.max(1));
            serve_pieces(connector, io, buffer, direction, size, n, seed, verify).await
        }
        _ if descriptors > 1 => {
            let why = "a batch takes one descriptor per operation";
            io.send(&json!({ "error": why })).await
        }
        _ => serve_batch(connector, io, buffers, direction, size, verify, read_seed).await,
    }
}

/// Serves a batch on the peer: one passive operation over each of `buffers` at once (buffer
/// `i` holding the pattern of `read_seed(i)` for reads, landing bytes for writes), prints
/// their metadata one line each, awaits them all concurrently in this task, and prints how
/// they ended in one line: `{"done":true,"at_ns":T}` (`T` when the last one completed, as
/// [`unix_nanos`]), with `checksums` (one per buffer) when asked to verify a write; or
/// `{"done":false,"error":…}`.
pub async fn serve_batch<R, W>(
    connector: &Connector,
    io: &mut JsonLines<R, W>,
    buffers: &mut [PeerBuffer],
    direction: Direction,
    size: usize,
    verify: bool,
    read_seed: fn(usize) -> u64,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
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
    let at = unix_nanos();
    let reply = match outcome {
        Ok(()) if verify && direction == Direction::Write => {
            let checksums: Vec<u64> = buffers.iter().map(|b| checksum(&b.bytes)).collect();
            json!({"done": true, "at_ns": at, "checksums": checksums})
        }
        Ok(()) => json!({"done": true, "at_ns": at}),
        Err(why) => json!({"done": false, "error": why}),
    };
    io.send(&reply).await
}

/// One timed batch ([`transfer_batch`]).
#[derive(Debug, Clone)]
pub struct Batch {
    /// From just before the first begin until every operation's wait returned `Ok`.
    pub elapsed: Duration,
    /// The instant of that start ([`unix_nanos`]), to compare with the peer's `at_ns`.
    pub begun_ns: u64,
    /// The peer's done line.
    pub done: Value,
}

/// One batch against a peer serving [`serve_batch`] (asked with `"count":N`): asks it for
/// `buffers.len()` passive operations at once, begins an active one over each buffer, awaits
/// them all concurrently in this task and times the lot, then reads the peer's done line.
pub async fn transfer_batch(
    connector: &Connector,
    peer: &mut PeerProcess,
    direction: Direction,
    buffers: &mut [Vec<u8>],
    verify: bool,
) -> Result<Batch> {
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
        metadata.push(peer.recv_metadata(size, limit).await?);
    }
    let begun_ns = unix_nanos();
    let timed = async {
        let start = Instant::now();
        match direction {
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
            }
        }
        Ok::<_, ferry::Error>(start.elapsed())
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
    let done = peer.recv_done(direction.passive(), limit).await?;
    Ok(Batch {
        elapsed,
        begun_ns,
        done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_command_loop_serves_refuses_and_exits() {
        let world = ferry::sim::SimWorld::new(7);
        let connector = |name: &str| {
            let backend = ferry::sim::SimBackend::new(&world, name).unwrap();
            Connector::builder()
                .worker_id(name)
                .backend(backend)
                .build()
        };
        let (peer, active) = (
            connector("peer").await.unwrap(),
            connector("active").await.unwrap(),
        );
        let (near, far) = tokio::io::duplex(1 << 16);
        let (far_read, far_write) = tokio::io::split(far);
        let serving = tokio::spawn(async move {
            let mut io = JsonLines::new(far_read, far_write);
            serve_commands(&peer, &mut io, |i| 40 + i as u64).await
        });
        let (near_read, near_write) = tokio::io::split(near);
        let mut io = JsonLines::new(near_read, near_write);
        let limit = Duration::from_secs(10);
        io.send(&json!({"op": "juggle", "size": 4096}))
            .await
            .unwrap();
        let refused = io.recv(limit).await.unwrap();
        assert!(error_of(&refused).unwrap().contains("unknown command"));
        io.send(&json!({"op": "readable", "size": 4096}))
            .await
            .unwrap();
        let metadata = recv_metadata(&mut io, 4096, limit).await.unwrap();
        let mut landing = vec![0u8; 4096];
        let local = Local::of(Direction::Read, &mut landing);
        transfer_against(&active, &metadata, local, limit)
            .await
            .unwrap();
        let done = recv_done(&mut io, "readable", limit).await.unwrap();
        assert_eq!(done["done"], true);
        assert_eq!(landing, ferry::demo::pattern(4096, 40));
        io.send(&json!({"op": "exit"})).await.unwrap();
        serving.await.unwrap().unwrap();
    }

    #[test]
    fn buffers_are_reused_until_the_size_or_pattern_changes() {
        let mut buffer = PeerBuffer::default();
        buffer.hold_pattern(64, 1);
        let first = buffer.bytes.as_ptr();
        buffer.hold_pattern(64, 1);
        assert_eq!(buffer.bytes.as_ptr(), first);
        assert_eq!(buffer.bytes, ferry::demo::pattern(64, 1));
        buffer.hold_landing(64, true);
        assert!(buffer.bytes.iter().all(|&b| b == 0));
        buffer.hold_landing(32, false);
        assert_eq!(buffer.bytes.len(), 32);
        buffer.release();
        assert!(buffer.bytes.is_empty());
    }

    #[test]
    fn batches_only_where_they_fit() {
        assert_eq!(in_flight_widths(4096, 8, 1 << 20), vec![1, 8]);
        assert_eq!(in_flight_widths(1 << 20, 8, 1 << 20), vec![1]);
        assert_eq!(in_flight_widths(4096, 1, 1 << 20), vec![1]);
        assert_eq!(in_flight_widths(usize::MAX, 2, usize::MAX), vec![1]);
        assert_eq!(parse_in_flight(" 4 "), Ok(4));
        assert!(parse_in_flight("0").is_err());
    }
}

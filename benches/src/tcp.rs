//! The tcp backend's two sides: the passive peer process, and the active side that times
//! reads and writes against it.
//!
//! The peer is this same program re-run with `--peer`. It reads one command per line on stdin
//! (`{"op":"readable","size":N,"verify":b}`, `{"op":"writable",…}`, `{"op":"exit"}`), exposes
//! a buffer it allocated once per size, prints the operation's metadata
//! ([`ferry::RdmaMetadata::to_json`]) as one line, awaits the operation, and prints
//! `{"done":true,"at_ns":T}` (with a `checksum` of a written buffer when asked to verify) or
//! `{"done":false,"error":…}` ([`serve_pieces`](crate::peer::serve_pieces)). On tcp a passive operation moves bytes only
//! while its owner awaits it, which the peer does, in its own process, while the active side
//! transfers.
//!
//! A command with `"count":N` (N > 1) asks for a batch: the peer exposes N operations at once,
//! one over each of N buffers (allocated once, reused like the single one), prints N metadata
//! lines, awaits all N concurrently in one task ([`crate::join::join_all`]), and prints one done line (with
//! `checksums`, one per buffer, when asked to verify a write). The active side begins all N and
//! awaits them together: N operations in flight, as bandwidth tools measure (ucx_perftest's
//! window of outstanding operations, nixlbench's batch size).
//!
//! A command with `"descriptors":D` (and no count) splits the one buffer evenly over D
//! descriptors ([`serve_pieces`](crate::peer::serve_pieces)), as `ferry bench`'s two-process
//! rows of 16 to 4096 descriptors ask.

use std::time::Duration;

use ferry::tcp::{TcpBackend, TcpConfig};
use ferry::Connector;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::peer::{serve_commands, transfer_against, transfer_batch, Local, PeerProcess};
use crate::stats::{IterationPlan, Summary};
use crate::{baseline, checksum, operation_limit, Result};

/// Seed of the pattern a peer's readable holds ([`ferry::demo::pattern`]); buffer `i` of a
/// batch holds the pattern of `READ_SEED + i`.
pub const READ_SEED: u64 = 0x5245_4144;

/// Seed of the pattern the active side writes; buffer `i` of a batch writes the pattern of
/// `WRITE_SEED + i`, so bytes that land in the wrong buffer fail the check.
pub const WRITE_SEED: u64 = 0x5752_4954;

pub use crate::peer::Direction;

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

/// Runs the passive side: serves a ping-pong listener for the baseline, then answers
/// commands on stdin until `exit` or end of input. Everything it prints on stdout is one
/// JSON line; its first line is `{"ready":true,"echo_port":P,"pid":N}`.
pub async fn run_peer() -> Result<()> {
    let connector = connector("ferry-bench-peer").await?;
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_port = echo.local_addr()?.port();
    tokio::spawn(baseline::serve_ping_pong(echo));

    let mut io = crate::lines::peer_stdio();
    io.send(&json!({"ready": true, "echo_port": echo_port, "pid": std::process::id()}))
        .await?;
    serve_commands(&connector, &mut io, read_seed).await
}

/// The peer process, seen from the active side, with the port of its ping-pong server.
/// Killed (by its PID) when dropped.
#[derive(Debug)]
pub struct Peer {
    process: PeerProcess,
    echo_port: u16,
}

impl Peer {
    /// Starts this program again with `--peer` and `args`, and waits for it to report ready.
    pub async fn spawn(args: &[&str]) -> Result<Peer> {
        let process = PeerProcess::spawn(args).await?;
        let echo_port = process.ready()["echo_port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| format!("the peer did not start: {}", process.ready()))?;
        Ok(Peer { process, echo_port })
    }

    /// The peer's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The peer process itself, for commands of other modules (such as [`crate::split`]).
    pub fn process(&mut self) -> &mut PeerProcess {
        &mut self.process
    }

    /// Where the peer's ping-pong server listens.
    pub fn echo_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.echo_port))
    }

    /// Tells the peer to exit and waits for it; kills it if it does not exit in time.
    pub async fn exit(self) -> Result<()> {
        self.process.exit().await
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
        _ => {
            let batch =
                transfer_batch(connector, &mut peer.process, direction, buffers, verify).await?;
            Ok((batch.elapsed, batch.done))
        }
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
    peer.process
        .io
        .send(&json!({"op": direction.passive(), "size": size, "verify": verify}))
        .await?;
    let metadata = peer.process.recv_metadata(size, limit).await?;
    let local = Local::of(direction, buffer);
    let elapsed = transfer_against(connector, &metadata, local, limit).await?;
    let done = peer.process.recv_done(direction.passive(), limit).await?;
    Ok((elapsed, done))
}

//! Two-process operations whose bytes are split over many descriptors: `ferry bench`'s rows of
//! 16 to 4096 descriptors across two processes, on any backend whose peer process answers a
//! `{"op":"readable"|"writable","size":N,"descriptors":D}` command
//! ([`serve_pieces`](crate::peer::serve_pieces): tcp's, nixl's and ucx's peers do).
//!
//! ```text
//!  active side (this process)                 peer process
//!  {"op":…,"size":N,"descriptors":D} ─ stdin ▶ create_readable/create_writable, D pieces
//!  RdmaMetadata::from_json ◀────────── stdout ─ metadata().to_json()
//!  begin_read/begin_write, D pieces ─┐ post
//!  wait_for_completion ──────────────┘ active  wait_for_completion → at_ns
//!                          ◀────────── stdout ─ {"done":true,"at_ns":T}
//! ```
//!
//! Three times per operation: *post* (the begin returning), *active* (until this side's
//! `wait_for_completion` returned `Ok`) and *both* (until both sides knew: the later of the
//! active side's completion and the peer's, which reports its instant on the system clock both
//! processes share). One untimed warm-up per row is verified first: a read's landing against
//! the peer's pattern, a write's checksum as the peer reports it.

use std::time::{Duration, Instant};

use ferry::{Connector, Descriptor};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::clock::unix_nanos;
use crate::cpu::CpuTime;
use crate::lines::JsonLines;
use crate::local::piece;
use crate::peer::{recv_done, recv_metadata, Direction};
use crate::progress::Progress;
use crate::stats::{IterationPlan, Summary};
use crate::suite::AcrossRow;
use crate::units::format_size;
use crate::{checksum, operation_limit, Result};

/// Seed of the pattern the active side writes (xored with the descriptor count).
pub const WRITE_SEED: u64 = 0x5350_4c49_5457;

/// One size, direction and descriptor count, measured against a peer process.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Which way the bytes went.
    pub direction: Direction,
    /// Bytes per operation, over all its descriptors.
    pub size: usize,
    /// Descriptors per operation, on each side.
    pub descriptors: usize,
    /// Until the begin returned.
    pub post: Summary,
    /// Until this side's wait returned `Ok`.
    pub active: Summary,
    /// Until both sides knew the operation finished.
    pub both: Summary,
    /// Whether the warm-up's bytes were right.
    pub verified: bool,
}

/// Which of a split row's times a two-process table row keeps, to match the backend's rows of
/// one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Until this side's wait returned (tcp's rows).
    Active,
    /// Until both sides knew (nixl's and ucx's rows).
    BothSides,
}

/// Whose split rows [`rows`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowsOf {
    /// The backend's name in the table (`tcp`, `nixl`, `ucx`).
    pub backend: &'static str,
    /// The seed of the pattern the peer's readables hold.
    pub read_seed: u64,
    /// Which time the rows keep.
    pub until: Until,
}

/// Measures every cell of `cells` with more than one descriptor, read and write, against the
/// peer over `peer` ([`measure`]), as two-process rows of `of.backend` (path `ferry`, the
/// post time kept, this process's CPU over each row, its warm-up included); one progress step
/// per row.
pub async fn rows<R, W>(
    connector: &Connector,
    peer: &mut JsonLines<R, W>,
    of: RowsOf,
    cells: &[(usize, usize)],
    plan: IterationPlan,
    progress: &mut Progress,
) -> Result<Vec<AcrossRow>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut rows = Vec::new();
    for &(size, descriptors) in cells.iter().filter(|(_, n)| *n > 1) {
        for direction in [Direction::Read, Direction::Write] {
            progress.step(&format!(
                "two processes: {} {} {} × {descriptors}",
                of.backend,
                direction.name(),
                format_size(size)
            ));
            let before = CpuTime::now();
            let shape = (direction, size, descriptors);
            let m = measure(connector, peer, shape, of.read_seed, plan).await?;
            let transfer = match of.until {
                Until::Active => m.active,
                Until::BothSides => m.both,
            };
            rows.push(AcrossRow {
                backend: of.backend,
                path: "ferry",
                direction,
                size,
                descriptors,
                cpu_operations: transfer.iterations + 1,
                transfer,
                post: Some(m.post),
                cpu: CpuTime::used_since(before),
                verified: m.verified,
            });
        }
    }
    Ok(rows)
}

/// One operation's times.
#[derive(Debug, Clone, Copy)]
struct Times {
    post: Duration,
    active: Duration,
    both: Duration,
}

/// Measures `direction` at `size` split over `descriptors` on both sides, against the peer
/// spoken to over `peer` (a [`crate::peer::PeerProcess`]'s `io`; its readables hold the
/// pattern of `read_seed`): one verified warm-up, then timed operations as `plan` says.
pub async fn measure<R, W>(
    connector: &Connector,
    peer: &mut JsonLines<R, W>,
    (direction, size, descriptors): (Direction, usize, usize),
    read_seed: u64,
    plan: IterationPlan,
) -> Result<Split>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let piece = piece(size, descriptors)
        .ok_or_else(|| format!("{size} bytes do not split into {descriptors} descriptors"))?;
    let mut buffer = match direction {
        Direction::Read => vec![0u8; size],
        Direction::Write => ferry::demo::pattern(size, WRITE_SEED ^ descriptors as u64),
    };
    let (_, done) = operation(connector, peer, direction, &mut buffer, piece, true).await?;
    let verified = match direction {
        Direction::Read => buffer == ferry::demo::pattern(size, read_seed),
        Direction::Write => done["checksum"].as_u64() == Some(checksum(&buffer)),
    };
    let (mut post, mut active, mut both) = (Vec::new(), Vec::new(), Vec::new());
    let mut spent = Duration::ZERO;
    while plan.wants_more(both.len(), spent) {
        let (times, _) = operation(connector, peer, direction, &mut buffer, piece, false).await?;
        spent += times.both;
        post.push(times.post);
        active.push(times.active);
        both.push(times.both);
    }
    let none = "the plan asked for no operations";
    Ok(Split {
        direction,
        size,
        descriptors,
        post: Summary::from_samples(post).ok_or(none)?,
        active: Summary::from_samples(active).ok_or(none)?,
        both: Summary::from_samples(both).ok_or(none)?,
        verified,
    })
}

/// One operation over `buffer` in pieces of `piece` bytes: asks the peer for its passive side,
/// begins and awaits the active one (bounded by [`operation_limit`]), and reads the peer's
/// done line, which it returns with the times.
async fn operation<R, W>(
    connector: &Connector,
    peer: &mut JsonLines<R, W>,
    direction: Direction,
    buffer: &mut [u8],
    piece: usize,
    verify: bool,
) -> Result<(Times, Value)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let size = buffer.len();
    let descriptors = size / piece.max(1);
    let limit = operation_limit(size);
    let request = json!({
        "op": direction.passive(),
        "size": size,
        "descriptors": descriptors,
        "verify": verify,
    });
    peer.send(&request).await?;
    let metadata = recv_metadata(peer, size, limit).await?;
    let begun_ns = unix_nanos();
    let timed = async {
        let start = Instant::now();
        let post = match direction {
            Direction::Read => {
                let pieces = buffer.chunks_mut(piece).map(Descriptor::from_mut_slice);
                let mut op = connector.begin_read(&metadata, pieces).await?;
                let post = start.elapsed();
                op.wait_for_completion().await?;
                post
            }
            Direction::Write => {
                let pieces = buffer.chunks(piece).map(Descriptor::from_slice);
                let mut op = connector.begin_write(pieces, &metadata).await?;
                let post = start.elapsed();
                op.wait_for_completion().await?;
                post
            }
        };
        Ok::<_, ferry::Error>((post, start.elapsed()))
    };
    let what = format!(
        "{} of {size} bytes in {descriptors} pieces",
        direction.name()
    );
    let (post, active) = tokio::time::timeout(limit, timed)
        .await
        .map_err(|_| format!("{what}: not complete within {limit:?}"))?
        .map_err(|e| format!("{what}: {e}"))?;
    let done = recv_done(peer, direction.passive(), limit).await?;
    let at = done["at_ns"]
        .as_u64()
        .ok_or_else(|| format!("the peer's done line has no at_ns: {done}"))?;
    let passive = Duration::from_nanos(at.saturating_sub(begun_ns));
    let times = Times {
        post,
        active,
        both: active.max(passive),
    };
    Ok((times, done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp;

    /// The tcp peer is this test binary re-run with `--peer`, which it is not: so the peer side
    /// runs in this process, over an in-memory pipe, on its own Connector.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn split_operations_move_verified_bytes_against_a_peer() {
        use crate::peer::{serve_count, PeerBuffer};

        let (active_end, peer_end) = tokio::io::duplex(1 << 16);
        let (peer_read, peer_write) = tokio::io::split(peer_end);
        let server = tokio::spawn(async move {
            let connector = tcp::connector("split-test-peer").await.unwrap();
            let mut io = JsonLines::new(peer_read, peer_write);
            let mut buffers: Vec<PeerBuffer> = Vec::new();
            while let Ok(command) = io.recv(Duration::from_secs(30)).await {
                let Some(direction) = command["op"].as_str().and_then(Direction::from_passive)
                else {
                    break;
                };
                let size = command["size"].as_u64().unwrap() as usize;
                let descriptors = command["descriptors"].as_u64().unwrap() as usize;
                let verify = command["verify"].as_bool().unwrap();
                serve_count(
                    &connector,
                    &mut io,
                    &mut buffers,
                    direction,
                    size,
                    (1, descriptors),
                    verify,
                    |_| 77,
                )
                .await
                .unwrap();
            }
        });
        let (active_read, active_write) = tokio::io::split(active_end);
        let mut peer = JsonLines::new(active_read, active_write);
        let connector = tcp::connector("split-test-active").await.unwrap();
        let plan = IterationPlan {
            target: Duration::ZERO,
            min: 2,
            max: 2,
        };
        for direction in [Direction::Read, Direction::Write] {
            let split = measure(&connector, &mut peer, (direction, 64 << 10, 16), 77, plan)
                .await
                .unwrap();
            assert!(split.verified, "{direction:?}");
            assert_eq!(split.both.iterations, 2);
            assert!(split.both.p50 >= split.active.p50 && split.active.p50 >= split.post.p50);
        }
        assert!(
            measure(&connector, &mut peer, (Direction::Read, 100, 3), 77, plan)
                .await
                .is_err()
        );
        drop(peer);
        server.await.unwrap();
    }
}

//! ferry's ucx backend between two processes, beside `ucx_perftest` ([`perftest`]) run in the
//! same run with the same `UCX_*` environment.
//!
//! ```text
//!  ferry-bench-ucx (active side)                ferry-bench-ucx --peer (passive side)
//!  ─────────────────────────────                ─────────────────────────────────────
//!  {"op":"writable","size":N} ──── stdin ─────▶ create_writable(buffer)
//!  RdmaMetadata::from_json    ◀─── stdout ───── metadata().to_json()
//!  begin_write ─┐ (timed)                       wait_for_completion()
//!               │◀═ UCX: put, flush, AM(key) ═▶ │
//!  wait_for_completion ─┘                       └─ at_ns (when it returned)
//!                             ◀─── stdout ───── {"done":true,"at_ns":T}
//!  ucx_perftest 127.0.0.1 -t ucp_put_bw ◀══════▶ ucx_perftest -t ucp_put_bw  (server)
//! ```
//!
//! **N in flight.** With `"count":N` the peer exposes N writables at once
//! ([`crate::peer::serve_batch`]) and the active side begins N writes, one per buffer, and awaits them
//! together ([`transfer_batch`]); a batch is timed from just before its first begin until both
//! sides knew all N finished. `ucp_put_bw` keeps a window of puts in flight too: `-O`, its
//! bound on outstanding sends, is left at its default, 0 (no bound).
//!
//! **What is timed.** As in ferry-bench-nixl: from just before `begin_write` (or
//! `begin_read`) until **both** sides know the operation finished, the later of the active
//! side's `wait_for_completion` returning `Ok` and the passive side's (the peer reports that
//! instant as nanoseconds of the system clock both processes share). For a write that is one
//! put, the endpoint flush, and the completion notification (an active message) arriving at
//! the peer. The metadata exchange over the pipe is not in it; the active side's own time is
//! kept too.
//!
//! Both processes inherit this process's environment, so ferry and `ucx_perftest` run under
//! the same `UCX_TLS` and `UCX_NET_DEVICES`. ferry's endpoints use
//! `UCP_FEATURE_WAKEUP` and, by default, `UCP_ERR_HANDLING_MODE_PEER` (`--error-handling`); `ucx_perftest` by default uses neither, so UCX may select
//! other transports for it (`ferry probe` shows ferry's).

pub mod perftest;
pub mod report;

use std::time::Duration;

use ferry::ucx::{ErrorHandling, UcxBackend, UcxConfig};
use ferry::Connector;
use serde_json::json;

use crate::clock::unix_nanos;
use crate::peer::{
    serve_commands, transfer_against, transfer_batch, Direction, Local, PeerProcess,
};
use crate::report::Row;
use crate::stats::{IterationPlan, Summary};
use crate::{checksum, operation_limit, Result};

/// Seed of the pattern a peer's readable holds ([`ferry::demo::pattern`]); buffer `i` of a
/// batch holds the pattern of `READ_SEED + i`.
pub const READ_SEED: u64 = 0x5543_5852;

/// Seed of the pattern the active side writes; buffer `i` of a batch writes the pattern of
/// `WRITE_SEED + i`, so bytes that land in the wrong buffer fail the check.
pub const WRITE_SEED: u64 = 0x5543_5857;

/// The seed of the pattern buffer `index` of a batch is read from.
fn read_seed(index: usize) -> u64 {
    READ_SEED.wrapping_add(index as u64)
}

/// The seed of the pattern buffer `index` of a batch writes.
fn write_seed(index: usize) -> u64 {
    WRITE_SEED.wrapping_add(index as u64)
}

/// The name of an [`ErrorHandling`] on the command line: `peer-if-supported`, `peer`, `none`.
pub fn error_handling_name(handling: ErrorHandling) -> &'static str {
    match handling {
        ErrorHandling::Peer => "peer",
        ErrorHandling::None => "none",
        _ => "peer-if-supported",
    }
}

/// The [`ErrorHandling`] named `name` ([`error_handling_name`]).
pub fn parse_error_handling(name: &str) -> Result<ErrorHandling, String> {
    [
        ErrorHandling::PeerIfSupported,
        ErrorHandling::Peer,
        ErrorHandling::None,
    ]
    .into_iter()
    .find(|&h| error_handling_name(h) == name.trim())
    .ok_or_else(|| format!("{name:?}: expected peer-if-supported, peer or none"))
}

/// A Connector on a fresh ucx backend made with `config` (UCX reads `UCX_*` from the
/// environment).
pub async fn connector(worker_id: &str, config: &UcxConfig) -> Result<Connector> {
    let backend = UcxBackend::with_config(config.clone())?;
    Ok(Connector::builder()
        .worker_id(worker_id)
        .backend(backend)
        .build()
        .await?)
}

/// Runs the passive side: answers `readable`/`writable` commands (`size`, `verify`, and
/// `count` for a batch) by running [`serve_commands`] until `exit` or end of input. Its first line is
/// `{"ready":true,"pid":N}`, or `{"ready":false,"error":…}` when UCX is not usable.
pub async fn run_peer(config: UcxConfig) -> Result<()> {
    let mut io = crate::lines::peer_stdio();
    let connector = match connector("ferry-bench-ucx-peer", &config).await {
        Ok(connector) => connector,
        Err(e) => {
            io.send(&json!({"ready": false, "error": e.to_string()}))
                .await?;
            return Err(e);
        }
    };
    io.send(&json!({"ready": true, "pid": std::process::id()}))
        .await?;
    serve_commands(&connector, &mut io, read_seed).await
}

/// One size, direction and number in flight, measured: the shared table row (its summary
/// runs until both sides knew each operation, or each batch of `in_flight`, finished;
/// `verified` says whether the warm-up's bytes arrived in every buffer, checked in full for
/// a read and by checksum for a write), and the same operations or batches until the active
/// side alone knew.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// Size, direction, the both-sides summary and the warm-up's check.
    pub row: Row,
    /// Each operation until the active side knew it finished.
    pub active: Summary,
}

/// The active side: its Connector and the peer process.
#[derive(Debug)]
pub struct Bench {
    connector: Connector,
    peer: PeerProcess,
}

impl Bench {
    /// Makes this process's Connector and starts the peer. The error says why UCX cannot be
    /// used when it cannot.
    /// Both sides' backends are made with `config`.
    pub async fn start(config: UcxConfig) -> Result<Bench> {
        let connector = connector("ferry-bench-ucx", &config).await?;
        let name = error_handling_name(config.error_handling);
        let spin = config.owner_spin.as_micros().to_string();
        let peer =
            PeerProcess::spawn(&["--error-handling", name, "--owner-spin-us", &spin]).await?;
        Ok(Bench { connector, peer })
    }

    /// The peer's process id, while it runs.
    pub fn peer_pid(&self) -> Option<u32> {
        self.peer.pid()
    }

    /// This process's ferry Connector (with no registration cache) and the peer process, for
    /// commands of other modules (such as [`crate::split`]).
    pub fn ferry_and_peer(&mut self) -> (&Connector, &mut PeerProcess) {
        (&self.connector, &mut self.peer)
    }

    /// Tells the peer to exit and waits for it.
    pub async fn exit(self) -> Result<()> {
        let Bench { connector, peer } = self;
        let exited = peer.exit().await;
        drop(connector);
        exited
    }

    /// Measures `direction` at `size` with `in_flight` operations at once (1: one at a time;
    /// N: batches of N, each on its own buffer): one untimed warm-up whose bytes are checked
    /// and `warm_up` more untimed ones, then timed operations or batches as `plan` says (it
    /// counts batches).
    pub async fn measure(
        &mut self,
        size: usize,
        direction: Direction,
        in_flight: usize,
        plan: IterationPlan,
        warm_up: usize,
    ) -> Result<Measured> {
        let in_flight = in_flight.max(1);
        let mut buffers: Vec<Vec<u8>> = (0..in_flight)
            .map(|i| match direction {
                Direction::Read => vec![0u8; size],
                Direction::Write => ferry::demo::pattern(size, write_seed(i)),
            })
            .collect();
        let (_, done) = self.exchange(&mut buffers, direction, true).await?;
        let verified = match direction {
            Direction::Read => buffers
                .iter()
                .enumerate()
                .all(|(i, b)| *b == ferry::demo::pattern(size, read_seed(i))),
            Direction::Write => {
                let expected: Vec<Option<u64>> =
                    buffers.iter().map(|b| Some(checksum(b))).collect();
                let reported: Vec<Option<u64>> = if in_flight == 1 {
                    vec![done["checksum"].as_u64()]
                } else {
                    done["checksums"]
                        .as_array()
                        .map(|all| all.iter().map(serde_json::Value::as_u64).collect())
                        .unwrap_or_default()
                };
                reported == expected
            }
        };
        for _ in 0..warm_up {
            self.exchange(&mut buffers, direction, false).await?;
        }
        let (mut both, mut active) = (Vec::new(), Vec::new());
        let mut spent = Duration::ZERO;
        while plan.wants_more(both.len(), spent) {
            let (timing, _) = self.exchange(&mut buffers, direction, false).await?;
            spent += timing.0;
            both.push(timing.0);
            active.push(timing.1);
        }
        Ok(Measured {
            row: Row {
                size,
                in_flight,
                direction: direction.name(),
                summary: Summary::from_samples(both).ok_or("the plan asked for no operations")?,
                verified,
                iperf_around: Vec::new(),
            },
            active: Summary::from_samples(active).ok_or("no active samples")?,
        })
    }

    /// One operation over the only buffer of `buffers`, or a batch over each of them; returns
    /// (both sides' time, active side's time) and the peer's done line.
    async fn exchange(
        &mut self,
        buffers: &mut [Vec<u8>],
        direction: Direction,
        verify: bool,
    ) -> Result<((Duration, Duration), serde_json::Value)> {
        if let [buffer] = buffers {
            return self.operation(buffer, direction, verify).await;
        }
        let batch =
            transfer_batch(&self.connector, &mut self.peer, direction, buffers, verify).await?;
        let passive = passive_lag(&batch.done, batch.begun_ns)?;
        Ok(((batch.elapsed.max(passive), batch.elapsed), batch.done))
    }

    /// One operation over `buffer`: asks the peer for its passive side, begins and awaits
    /// the active one, and reads the peer's done line. Returns (both sides' time, active
    /// side's time) and the done line.
    async fn operation(
        &mut self,
        buffer: &mut [u8],
        direction: Direction,
        verify: bool,
    ) -> Result<((Duration, Duration), serde_json::Value)> {
        let size = buffer.len();
        let limit = operation_limit(size);
        let request = json!({"op": direction.passive(), "size": size, "verify": verify});
        self.peer.io.send(&request).await?;
        let metadata = self.peer.recv_metadata(size, limit).await?;
        let begun = unix_nanos();
        let local = Local::of(direction, buffer);
        let active = transfer_against(&self.connector, &metadata, local, limit).await?;
        let done = self.peer.recv_done(direction.passive(), limit).await?;
        let passive = passive_lag(&done, begun)?;
        Ok(((active.max(passive), active), done))
    }
}

/// How long after `begun` (unix nanoseconds) the peer's done line says its side finished. A
/// peer instant before the start (a clock step) counts as no lag.
fn passive_lag(done: &serde_json::Value, begun: u64) -> Result<Duration> {
    let at = done["at_ns"]
        .as_u64()
        .ok_or_else(|| format!("the peer's done line has no at_ns: {done}"))?;
    Ok(Duration::from_nanos(at.saturating_sub(begun)))
}

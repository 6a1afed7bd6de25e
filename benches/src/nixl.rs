//! ferry's nixl backend between two processes, beside a raw nixl-sys loop doing the same
//! transfers between the same two processes ([`raw`]), in the same run.
//!
//! ```text
//!  ferry-bench-nixl (active side)                 ferry-bench-nixl --peer (passive side)
//!  ──────────────────────────────                 ──────────────────────────────────────
//!  ferry, per operation:
//!  {"op":"readable","size":N} ──── stdin ────────▶ create_readable(buffer)
//!  RdmaMetadata::from_json    ◀─── stdout ─────── metadata().to_json()
//!  begin_read ─┐ (timed)                          wait_for_completion()
//!              │◀════ NIXL agent ⇄ NIXL agent ═══▶ │
//!  wait_for_completion ─┘                          └─ at_ns (when it returned)
//!                             ◀─── stdout ─────── {"done":true,"at_ns":T}
//!  raw nixl-sys, once per size and direction:
//!  {"op":"raw-expose","size":N} ─────────────────▶ SystemStorage, registered once
//!  load_remote_md             ◀────────────────── agent metadata, address
//!  raw nixl-sys, per operation:
//!  {"op":"raw-await","message":M} ───────────────▶ polls get_notifications for M
//!  create_xfer_req(M), post,  ◀─── {"armed":…} ─── │
//!  get_xfer_status ─┐ (timed) ◀═══ raw agents ═══▶ │
//!                   └ Success                      └─ at_ns (M arrived)
//!                             ◀─── stdout ─────── {"done":true,"at_ns":T}
//! ```
//!
//! **What is timed.** An operation's time runs from just before the active side begins it
//! (`begin_read`/`begin_write`, or `create_xfer_req`) until **both** sides know it finished:
//! the later of the active side's completion (`wait_for_completion` returning `Ok`, or
//! `get_xfer_status` saying `Success`) and the passive side's (its `wait_for_completion`
//! returning `Ok`, or the notification arriving). The peer reports its instant as nanoseconds
//! of the system clock ([`crate::clock::unix_nanos`]), which both processes share; the metadata
//! exchange and the reply lines are not in the time. The active side's own time is kept too.
//!
//! **The cycle** ([`Bench::measure_cycle`]) is what one transfer costs a worker from nothing:
//! the active side asks the peer for a readable (create_readable there, its metadata back over
//! the pipe), begins the read, and both complete. Its time runs from just before the request
//! is written until both sides know the read finished, so it includes the two pipe hops that
//! carry the request and the metadata, as any pair of workers needs some channel for them.
//!
//! **Four paths** per size and direction ([`Path`]): the raw loop, its memory registered
//! once; the raw loop registering per operation (the initiator around each request, the
//! target before it arms and until it is notified, its metadata sent with each operation and
//! loaded when it changed), to show what that costs NIXL itself; ferry as a Dynamo worker uses
//! it (each operation registers its memory, and the passive side's metadata names the new
//! registration: loaded again whenever it differs, which on this host's transports it did
//! not); and ferry with a registration cache on both Connectors (memory registered once, like
//! the raw loop). Both ferry paths are judged against the raw loop registering once. They run
//! in alternating rounds ([`Bench::measure`]), so that a noisy neighbour slows all of them
//! alike.
//!
//! **Same source bytes.** By default ([`Sources::Shared`]) ferry's timed operations send from
//! the raw loop's registered buffers (a read pulls the peer's raw buffer, a write sends this
//! side's), so both paths move the same bytes from the same memory; only the landing buffers
//! differ. ferry's warm-ups use its own pattern buffers, so its bytes are still checked
//! against a pattern. On the 2-vCPU development VM, large reads were a quarter slower from
//! the raw loop's buffer than from ferry's own, whichever path read them; sharing the sources
//! keeps that out of the ratios (`--ferry-sources own` shows it).
//!
//! Every process holds a ferry Connector on its own NIXL agent (plus, per size and direction,
//! one with a registration cache on another agent) and a raw agent: NIXL agents without
//! NIXL's progress thread, each with the UCX backend and NIXL's default UCX parameters, so the
//! UCX settings (the process's `UCX_*` environment) are the same for every path.

pub mod dynamo;
pub mod raw;
pub mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use ferry::nixl::{NixlBackend, NixlConfig};
use ferry::{Connector, Descriptor};
use nixl_sys::XferOp;
use serde_json::{json, Value};

use crate::clock::unix_nanos;
use crate::lines::{error_of, Closed, JsonLines};
use crate::peer::{
    expose_and_await, serve_pieces, transfer_against, Direction, Local, PeerBuffer, PeerProcess,
    COMMAND_LIMIT,
};
use crate::stats::{IterationPlan, Summary};
use crate::{checksum, operation_limit, Result};
use nixl_sys::SystemStorage;
use raw::{Polling, RawAgent, RawBuffer, RawWorker, Span};

/// Seed of the pattern a peer's ferry readable holds ([`ferry::demo::pattern`]).
pub const READ_SEED: u64 = 0x4e49_584c_5244;

/// Seed of the pattern the active side writes through ferry.
pub const WRITE_SEED: u64 = 0x4e49_584c_5752;

/// The byte a peer's raw buffer holds for reads (a [`nixl_sys::SystemStorage`] can only be
/// filled with one value).
pub const RAW_READ_FILL: u8 = 0xa5;

/// The byte the active side's raw buffer holds for writes.
pub const RAW_WRITE_FILL: u8 = 0x5a;

/// Registrations a cached Connector keeps: each process uses one buffer per size and
/// direction, so a few are plenty.
pub const CACHE_CAPACITY: usize = 4;

/// How long a reply that needs no transfer (raw set-up, row end) may take.
const REPLY_LIMIT: Duration = Duration::from_secs(60);

/// How the bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// nixl-sys directly: buffers registered once, one request per operation ([`raw`]).
    Raw,
    /// nixl-sys directly, both sides registering their memory per operation: the initiator
    /// around each request (timed), the target from before it arms until it is notified.
    /// Shown, not judged: what registering per operation costs NIXL itself.
    RawPerOp,
    /// ferry's Connector on the nixl backend, as Dynamo's workers use theirs: memory
    /// registered per operation.
    Ferry,
    /// ferry's Connector on the nixl backend with a registration cache on both sides.
    FerryCached,
}

impl Path {
    /// Every path, in the order the table lists them.
    pub const ALL: [Path; 4] = [Path::Raw, Path::RawPerOp, Path::Ferry, Path::FerryCached];

    /// The short name, as on the command line and in JSON: `raw`, `raw-per-op`, `ferry`,
    /// `ferry-cached`.
    pub fn key(self) -> &'static str {
        match self {
            Path::Raw => "raw",
            Path::RawPerOp => "raw-per-op",
            Path::Ferry => "ferry",
            Path::FerryCached => "ferry-cached",
        }
    }

    /// The name in the table.
    pub fn describe(self) -> &'static str {
        match self {
            Path::Raw => "raw nixl-sys",
            Path::RawPerOp => "raw nixl-sys, registered per operation",
            Path::Ferry => "ferry",
            Path::FerryCached => "ferry, cached registrations",
        }
    }

    /// Whether nixl-sys moves the bytes with no ferry code in the path.
    pub fn is_raw(self) -> bool {
        matches!(self, Path::Raw | Path::RawPerOp)
    }

    /// The path named `key` ([`Path::key`]).
    pub fn from_key(key: &str) -> Option<Path> {
        Path::ALL.into_iter().find(|p| p.key() == key.trim())
    }
}

/// Which memory ferry's timed operations send from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sources {
    /// The raw loop's registered buffers ([`nixl_sys::SystemStorage`]): a ferry read pulls
    /// from the peer's raw buffer, a ferry write sends this side's raw buffer, so both paths
    /// move the very same source bytes; each path keeps its own landing buffer (a ferry
    /// landing must be a `&mut [u8]`, which a `SystemStorage` does not lend). On the 2-vCPU
    /// VM this mattered: reads of 256 MiB and 1 GiB from the raw loop's buffer took about a
    /// quarter longer than from ferry's own, whichever path read them.
    #[default]
    Shared,
    /// ferry's own pattern buffers, as in its verified warm-ups.
    Own,
}

impl Sources {
    /// `shared` or `own`.
    pub fn key(self) -> &'static str {
        match self {
            Sources::Shared => "shared",
            Sources::Own => "own",
        }
    }

    /// The sources named `key` ([`Sources::key`]).
    pub fn from_key(key: &str) -> Option<Sources> {
        [Sources::Shared, Sources::Own]
            .into_iter()
            .find(|s| s.key() == key.trim())
    }
}

/// A Connector on a fresh NIXL agent named `agent`, keeping up to `cache` registrations
/// (0: none, ferry's default).
pub async fn connector(agent: &str, cache: usize) -> Result<Connector> {
    Ok(connector_and_backend(agent, cache).await?.0)
}

/// [`connector`], and its backend, for its stats.
async fn connector_and_backend(agent: &str, cache: usize) -> Result<(Connector, Arc<NixlBackend>)> {
    let backend = Arc::new(NixlBackend::new(NixlConfig::named(agent))?);
    let connector = Connector::builder()
        .worker_id(agent)
        .backend_arc(backend.clone())
        .registration_cache(cache)
        .build()
        .await?;
    Ok((connector, backend))
}

/// One size and direction of an operation, the unit a cached Connector is kept for.
type RowKey = (usize, Direction);

/// What the peer process holds.
struct PeerSide {
    ferry: Connector,
    raw: RawAgent,
    /// The cached Connector of the current size and direction; dropped before the buffer it
    /// registered changes.
    cached: Option<(RowKey, Connector)>,
    cached_made: u64,
    buffer: PeerBuffer,
    raw_buffer: Option<RawBuffer>,
    /// The raw target's buffer for [`Path::RawPerOp`], registered per operation.
    raw_per_op: Option<SystemStorage>,
    polling: Polling,
}

/// Runs the passive side: answers commands on stdin until `exit` or end of input, its raw
/// target polling as `polling` says. Everything it prints on stdout is one JSON line; its first
/// line is `{"ready":true,"pid":N}`, or `{"ready":false,"error":…}` when NIXL is not usable.
pub async fn run_peer(polling: Polling) -> Result<()> {
    let mut io = crate::lines::peer_stdio();
    let pid = std::process::id();
    let ferry = match connector(&format!("ferry-bench-peer-{pid}"), 0).await {
        Ok(ferry) => ferry,
        Err(e) => {
            io.send(&json!({"ready": false, "error": e.to_string()}))
                .await?;
            return Err(e);
        }
    };
    let raw = match RawAgent::new(&format!("ferry-bench-peer-raw-{pid}")) {
        Ok(raw) => raw,
        Err(e) => {
            io.send(&json!({"ready": false, "error": e.to_string()}))
                .await?;
            return Err(e.into());
        }
    };
    let mut side = PeerSide {
        ferry,
        raw,
        cached: None,
        cached_made: 0,
        buffer: PeerBuffer::default(),
        raw_buffer: None,
        raw_per_op: None,
        polling,
    };
    io.send(&json!({"ready": true, "pid": pid})).await?;
    loop {
        let command = match io.recv(COMMAND_LIMIT).await {
            Ok(command) => command,
            Err(e) if e.is::<Closed>() => break,
            Err(e) => return Err(e),
        };
        let size = command["size"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok());
        let verify = command["verify"].as_bool().unwrap_or(false);
        let op = command["op"].as_str().unwrap_or_default();
        match (op, Direction::from_passive(op), size) {
            ("exit", _, _) => break,
            (_, Some(direction), Some(size)) => {
                let cached = command["cached"].as_bool().unwrap_or(false);
                let raw_source = command["source"] == "raw";
                let ask = Ask {
                    verify,
                    cached,
                    raw_source,
                };
                let descriptors = command["descriptors"].as_u64().unwrap_or(1) as usize;
                serve_ferry(&mut side, &mut io, (direction, size, descriptors), ask).await?;
            }
            ("raw-expose", _, Some(size)) => {
                let fill = command["fill"].as_u64().and_then(|b| u8::try_from(b).ok());
                let per_op = command["per_op"].as_bool().unwrap_or(false);
                let reply = raw_expose(&mut side, size, fill, per_op)
                    .unwrap_or_else(|e| json!({"error": e.to_string()}));
                io.send(&reply).await?;
            }
            ("raw-await", _, _) => {
                let message = command["message"].as_str().unwrap_or_default().to_owned();
                let per_op = command["per_op"].as_bool().unwrap_or(false);
                serve_raw(&side, &mut io, message.as_bytes(), verify, per_op).await?;
            }
            ("row-end", _, _) => {
                side.cached = None;
                side.raw_buffer = None;
                side.raw_per_op = None;
                io.send(&json!({"ended": true})).await?;
            }
            _ => {
                io.send(&json!({"error": format!("unknown command {command}")}))
                    .await?
            }
        }
    }
    // Operations and registrations go before the agents that hold them.
    side.cached = None;
    side.raw_buffer = None;
    side.raw_per_op = None;
    side.buffer.release();
    Ok(())
}

/// Serves one ferry passive operation of `size` bytes as `ask` says: over the peer's own
/// buffer split over `descriptors` ([`serve_pieces`]) or, for a read with `raw_source`, over
/// its raw buffer; on the cached Connector when `cached`.
async fn serve_ferry<R, W>(
    side: &mut PeerSide,
    io: &mut JsonLines<R, W>,
    (direction, size, descriptors): (Direction, usize, usize),
    ask: Ask,
) -> Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let Ask {
        verify,
        cached,
        raw_source,
    } = ask;
    let row = (size, direction);
    // A cached registration must not outlive the buffer it covers: the buffer changes only
    // with the size or direction, so a cached Connector of another row goes first.
    if side.cached.as_ref().is_some_and(|(at, _)| *at != row) {
        side.cached = None;
    }
    if cached && side.cached.is_none() {
        side.cached_made += 1;
        let name = format!(
            "ferry-bench-peer-cached-{}-{}",
            std::process::id(),
            side.cached_made
        );
        match connector(&name, CACHE_CAPACITY).await {
            Ok(connector) => side.cached = Some((row, connector)),
            Err(e) => return io.send(&json!({"error": e.to_string()})).await,
        }
    }
    let PeerSide {
        ferry,
        cached: cached_connector,
        buffer,
        raw_buffer,
        ..
    } = side;
    let connector = match (cached, cached_connector.as_ref()) {
        (true, Some((_, connector))) => connector,
        _ => ferry,
    };
    match (direction, raw_source, raw_buffer.as_ref()) {
        (Direction::Read, true, Some(raw)) if raw.len() == size => {
            serve_raw_readable(connector, io, raw.bytes()).await
        }
        (_, true, _) => {
            let why = "a shared source needs a read and a raw buffer of its size (raw-expose)";
            io.send(&json!({"error": why})).await
        }
        _ => {
            let (n, seed) = (descriptors, READ_SEED);
            serve_pieces(connector, io, buffer, direction, size, n, seed, verify).await
        }
    }
}

/// Serves one ferry readable over `bytes` (the raw loop's buffer): prints its metadata, awaits
/// it, and prints `{"done":true,"at_ns":T}` or why not.
async fn serve_raw_readable<R, W>(
    connector: &Connector,
    io: &mut JsonLines<R, W>,
    bytes: &[u8],
) -> Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let limit = operation_limit(bytes.len());
    let op = match connector
        .create_readable([Descriptor::from_slice(bytes)])
        .await
    {
        Ok(op) => op,
        Err(e) => return io.send(&json!({"error": e.to_string()})).await,
    };
    let outcome = expose_and_await(io, &mut [op], limit).await?;
    let at = unix_nanos();
    let reply = match outcome {
        Ok(()) => json!({"done": true, "at_ns": at}),
        Err(why) => json!({"done": false, "error": why}),
    };
    io.send(&reply).await
}

/// Registers a fresh raw buffer of `size` bytes (filled with `fill`, if given) in place of
/// the last one, and answers with what an initiator needs: the agent's name and metadata, and
/// where the buffer is. With `per_op`, also a second buffer alike for [`Path::RawPerOp`],
/// registered only while an operation uses it (`per_op_addr`).
fn raw_expose(side: &mut PeerSide, size: usize, fill: Option<u8>, per_op: bool) -> Result<Value> {
    // Deregister and free the old ones first.
    side.raw_buffer = None;
    side.raw_per_op = None;
    let buffer = side.raw.filled_buffer(size, fill.unwrap_or(0))?;
    let metadata = side.raw.metadata()?;
    let mut reply = json!({
        "agent": side.raw.name(),
        "metadata": base64::engine::general_purpose::STANDARD.encode(metadata),
        "addr": buffer.addr(),
        "len": buffer.len(),
    });
    side.raw_buffer = Some(buffer);
    if per_op {
        let storage = raw::unregistered(size, fill.unwrap_or(0))?;
        reply["per_op_addr"] = json!(storage.as_slice().as_ptr() as usize);
        side.raw_per_op = Some(storage);
    }
    Ok(reply)
}

/// Says it is armed, polls the raw agent until `message` arrives, and prints the instant it
/// did (with a checksum of the raw buffer when asked to verify). With `per_op`, on the buffer
/// of [`Path::RawPerOp`], as a target registering per operation does: it registers the buffer
/// first and arms with its agent's metadata (which names the new registration), and
/// deregisters before it takes the instant, as a ferry passive operation ends once its memory
/// is deregistered.
async fn serve_raw<R, W>(
    side: &PeerSide,
    io: &mut JsonLines<R, W>,
    message: &[u8],
    verify: bool,
    per_op: bool,
) -> Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let not_exposed = json!({"done": false, "error": "raw-await before raw-expose"});
    let mut armed = json!({"armed": true});
    let (bytes, registration) = match (per_op, &side.raw_per_op, &side.raw_buffer) {
        (true, Some(storage), _) => {
            let registered = side
                .raw
                .register(storage)
                .and_then(|registration| Ok((registration, side.raw.metadata()?)));
            match registered {
                Ok((registration, metadata)) => {
                    let metadata = base64::engine::general_purpose::STANDARD.encode(metadata);
                    armed["metadata"] = json!(metadata);
                    (storage.as_slice(), Some(registration))
                }
                Err(e) => {
                    let refused = json!({"armed": false, "error": e.to_string()});
                    return io.send(&refused).await;
                }
            }
        }
        (false, _, Some(buffer)) => (buffer.bytes(), None),
        _ => return io.send(&not_exposed).await,
    };
    io.send(&armed).await?;
    // Polls on this task's thread ([`Polling`]), as a program driving NIXL by hand would.
    let outcome = side
        .raw
        .await_notification(message, operation_limit(bytes.len()), side.polling);
    drop(registration);
    let at = unix_nanos();
    let reply = match outcome {
        Ok(()) if verify => {
            json!({"done": true, "at_ns": at, "checksum": checksum(bytes)})
        }
        Ok(()) => json!({"done": true, "at_ns": at}),
        Err(e) => json!({"done": false, "error": e.to_string()}),
    };
    io.send(&reply).await
}

/// One path, size and direction, measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// How the bytes moved.
    pub path: Path,
    /// Which way.
    pub direction: Direction,
    /// Bytes per operation.
    pub size: usize,
    /// Each operation until both sides knew it finished.
    pub both: Summary,
    /// Each operation until the active side knew it finished.
    pub active: Summary,
    /// Whether the warm-up's bytes arrived, checked in full.
    pub verified: bool,
    /// For a ferry row, how many of its timed operations NIXL finished within their post
    /// ([`ferry::nixl::NixlStats::finished_in_post`]): UCX moved the bytes there, and
    /// ferry did not poll them again.
    pub finished_in_post: Option<u64>,
}

impl Measured {
    /// Mean throughput until both sides knew, bytes per second.
    pub fn throughput(&self) -> f64 {
        self.both.throughput(self.size)
    }
}

/// One operation's times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timing {
    both: Duration,
    active: Duration,
}

impl Timing {
    /// The times of an operation whose clock started at `start_ns` (system clock) and whose
    /// active side finished after `active`, given the peer's done line.
    fn of(start_ns: u64, active: Duration, done: &Value) -> Result<Timing> {
        let at = done["at_ns"]
            .as_u64()
            .ok_or_else(|| format!("the peer's done line has no at_ns: {done}"))?;
        let passive = Duration::from_nanos(at.saturating_sub(start_ns));
        Ok(Timing {
            both: active.max(passive),
            active,
        })
    }
}

/// Samples gathered for one path, across rounds.
#[derive(Debug, Default)]
struct Samples {
    both: Vec<Duration>,
    active: Vec<Duration>,
    spent: Duration,
}

impl Samples {
    fn push(&mut self, timing: Timing) {
        self.both.push(timing.both);
        self.active.push(timing.active);
        self.spent += timing.both;
    }

    fn summarise(self) -> Result<(Summary, Summary)> {
        let both = Summary::from_samples(self.both).ok_or("the plan asked for no operations")?;
        let active = Summary::from_samples(self.active).ok_or("no active samples")?;
        Ok((both, active))
    }
}

/// The share of `plan` due after round `round` of `rounds` (1-based): that fraction of its
/// time and of its fewest and most operations, so the last round is the whole plan.
pub fn share(plan: IterationPlan, round: usize, rounds: usize) -> IterationPlan {
    let rounds = rounds.max(1);
    let round = round.clamp(1, rounds);
    let part = |n: usize| n.saturating_mul(round).div_ceil(rounds);
    IterationPlan {
        target: plan.target.mul_f64(round as f64 / rounds as f64),
        min: part(plan.min),
        max: part(plan.max.max(plan.min)),
    }
}

/// Where the clock of a ferry operation starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClockFrom {
    /// Just before `begin_read`/`begin_write`: an operation.
    Begin,
    /// Just before the request for a passive operation is written: a whole cycle.
    Request,
}

/// The active side: its Connector and raw agent, and the peer process.
#[derive(Debug)]
pub struct Bench {
    ferry: Connector,
    ferry_backend: Arc<NixlBackend>,
    raw: RawAgent,
    peer: PeerProcess,
    polling: Polling,
    cached_made: u64,
    messages: u64,
}

impl Bench {
    /// Checks that NIXL loads, makes this process's Connector and raw agent, and starts the
    /// peer; both sides' raw loops poll as `polling` says. The error says why NIXL cannot be
    /// used when it cannot.
    pub async fn start(polling: Polling) -> Result<Bench> {
        ferry::nixl::available(None)?;
        let pid = std::process::id();
        let (ferry, ferry_backend) =
            connector_and_backend(&format!("ferry-bench-{pid}"), 0).await?;
        let raw = RawAgent::new(&format!("ferry-bench-raw-{pid}"))?;
        let peer = PeerProcess::spawn(&["--raw-polling", polling.key()]).await?;
        Ok(Bench {
            ferry,
            ferry_backend,
            raw,
            peer,
            polling,
            cached_made: 0,
            messages: 0,
        })
    }

    /// The peer's process id, while it runs.
    pub fn peer_pid(&self) -> Option<u32> {
        self.peer.pid()
    }

    /// This process's ferry Connector (with no registration cache) and the peer process, for
    /// commands of other modules (such as [`crate::split`]).
    pub fn ferry_and_peer(&mut self) -> (&Connector, &mut PeerProcess) {
        (&self.ferry, &mut self.peer)
    }

    /// Tells the peer to exit and waits for it.
    pub async fn exit(self) -> Result<()> {
        let Bench {
            ferry, raw, peer, ..
        } = self;
        let exited = peer.exit().await;
        drop((ferry, raw));
        exited
    }

    /// Measures `direction` at `size` over each of `paths`: one untimed warm-up per path
    /// whose bytes are checked (ferry's over its own pattern buffers), then `rounds` rounds in
    /// which every path in turn (the first one rotating) runs its share of `plan` ([`share`]).
    /// `sources` says which memory ferry's timed operations send from ([`Sources`]).
    pub async fn measure(
        &mut self,
        size: usize,
        direction: Direction,
        paths: &[Path],
        sources: Sources,
        plan: IterationPlan,
        rounds: usize,
    ) -> Result<Vec<Measured>> {
        let pid = std::process::id();
        // ferry's buffer (both ferry paths use it), then the raw one, then the cached
        // Connector: dropped in the reverse order, so no registration outlives its memory.
        let mut buffer = match direction {
            Direction::Read => vec![0u8; size],
            Direction::Write => ferry::demo::pattern(size, WRITE_SEED),
        };
        let mut raw = None;
        if paths.iter().any(|p| p.is_raw()) || sources == Sources::Shared {
            let per_op = paths.contains(&Path::RawPerOp);
            let row = RawRow::open(
                &self.raw,
                &mut self.peer,
                (size, direction),
                self.polling,
                per_op,
            );
            raw = Some(row.await?);
        }
        let mut cached = None;
        if paths.contains(&Path::FerryCached) {
            self.cached_made += 1;
            let name = format!("ferry-bench-cached-{pid}-{}", self.cached_made);
            cached = Some(connector_and_backend(&name, CACHE_CAPACITY).await?);
        }

        let mut samples: Vec<(Path, Samples, bool)> = Vec::new();
        for &path in paths {
            let verified = match (path, &mut raw, &cached) {
                (Path::Raw, Some(raw), _) => {
                    let message = self.next_message();
                    raw.warm_up(&mut self.peer, &message).await?
                }
                (Path::RawPerOp, Some(raw), _) => {
                    let message = self.next_message();
                    raw.warm_up_per_op(&mut self.peer, &message).await?
                }
                (Path::Ferry, _, _) => {
                    warm_up_ferry(&self.ferry, &mut self.peer, direction, &mut buffer, false)
                        .await?
                }
                (Path::FerryCached, _, Some((cached, _))) => {
                    warm_up_ferry(cached, &mut self.peer, direction, &mut buffer, true).await?
                }
                _ => return Err(format!("path {} was not set up", path.key()).into()),
            };
            samples.push((path, Samples::default(), verified));
        }
        // Each ferry path has a backend of its own; the warm-ups are not counted.
        let in_post = |backend: &NixlBackend| backend.stats().finished_in_post;
        let default_in_post = in_post(&self.ferry_backend);
        let cached_in_post = cached.as_ref().map(|(_, backend)| in_post(backend));

        let rounds = rounds.max(1);
        for round in 1..=rounds {
            let due = share(plan, round, rounds);
            let count = samples.len();
            for turn in 0..count {
                let (path, gathered, _) = &mut samples[(turn + round - 1) % count];
                while due.wants_more(gathered.both.len(), gathered.spent) {
                    let timing = match (*path, &raw, &cached) {
                        (Path::Raw | Path::RawPerOp, Some(raw), _) => {
                            let message = self.next_message();
                            let ask = RawAsk {
                                per_op: *path == Path::RawPerOp,
                                ..RawAsk::default()
                            };
                            raw.operation(&mut self.peer, &message, ask).await?.timing
                        }
                        (Path::Ferry | Path::FerryCached, _, _) => {
                            let connector = match (*path, &cached) {
                                (Path::FerryCached, Some((cached, _))) => cached,
                                _ => &self.ferry,
                            };
                            let shared = raw.as_ref().filter(|_| sources == Sources::Shared);
                            let local = match (direction, shared) {
                                (Direction::Write, Some(raw)) => Local::Source(raw.local.bytes()),
                                _ => Local::of(direction, &mut buffer),
                            };
                            let ask = Ask {
                                verify: false,
                                cached: *path == Path::FerryCached,
                                raw_source: shared.is_some() && direction == Direction::Read,
                            };
                            ferry_operation(connector, &mut self.peer, local, ask, ClockFrom::Begin)
                                .await?
                                .0
                        }
                        _ => return Err(format!("path {} was not set up", path.key()).into()),
                    };
                    gathered.push(timing);
                }
            }
        }

        // The peer drops its cached Connector and raw buffer; then this side does.
        self.peer.io.send(&json!({"op": "row-end"})).await?;
        let ended = self.peer.io.recv(REPLY_LIMIT).await?;
        if ended["ended"] != Value::Bool(true) {
            return Err(format!("the peer did not end the row: {ended}").into());
        }
        let default_in_post = in_post(&self.ferry_backend) - default_in_post;
        let cached_in_post = cached
            .as_ref()
            .zip(cached_in_post)
            .map(|((_, backend), before)| in_post(backend) - before);
        drop(cached);
        drop(raw);
        drop(buffer);

        let mut measured = Vec::with_capacity(samples.len());
        for (path, gathered, verified) in samples {
            let (both, active) = gathered.summarise()?;
            let finished_in_post = match path {
                Path::Ferry => Some(default_in_post),
                Path::FerryCached => cached_in_post,
                Path::Raw | Path::RawPerOp => None,
            };
            measured.push(Measured {
                path,
                direction,
                size,
                both,
                active,
                verified,
                finished_in_post,
            });
        }
        Ok(measured)
    }

    /// Measures the cycle at `size` with ferry: per iteration, the peer's create_readable
    /// (requested over the pipe, its metadata back over the pipe), `begin_read` here, and both
    /// sides completing, timed from just before the request until both know. One untimed
    /// warm-up whose bytes are checked.
    pub async fn measure_cycle(&mut self, size: usize, plan: IterationPlan) -> Result<Measured> {
        let mut buffer = vec![0u8; size];
        let verified = warm_up_ferry(
            &self.ferry,
            &mut self.peer,
            Direction::Read,
            &mut buffer,
            false,
        )
        .await?;
        let ask = Ask {
            verify: false,
            cached: false,
            raw_source: false,
        };
        let mut gathered = Samples::default();
        while plan.wants_more(gathered.both.len(), gathered.spent) {
            let local = Local::Landing(&mut buffer);
            let (timing, _) =
                ferry_operation(&self.ferry, &mut self.peer, local, ask, ClockFrom::Request)
                    .await?;
            gathered.push(timing);
        }
        let (both, active) = gathered.summarise()?;
        Ok(Measured {
            path: Path::Ferry,
            direction: Direction::Read,
            size,
            both,
            active,
            verified,
            finished_in_post: None,
        })
    }

    fn next_message(&mut self) -> String {
        self.messages += 1;
        format!("ferry-bench-raw-{}", self.messages)
    }
}

/// One ferry warm-up over ferry's own buffers, its bytes checked: a read lands in a zeroed
/// buffer and must equal the peer's pattern; a write's checksum, as the peer reports it, must
/// equal this side's.
async fn warm_up_ferry(
    connector: &Connector,
    peer: &mut PeerProcess,
    direction: Direction,
    buffer: &mut [u8],
    cached: bool,
) -> Result<bool> {
    if direction == Direction::Read {
        buffer.fill(0);
    }
    let ask = Ask {
        verify: true,
        cached,
        raw_source: false,
    };
    let local = Local::of(direction, buffer);
    let (_, done) = ferry_operation(connector, peer, local, ask, ClockFrom::Begin).await?;
    Ok(match direction {
        Direction::Read => *buffer == ferry::demo::pattern(buffer.len(), READ_SEED)[..],
        Direction::Write => done["checksum"].as_u64() == Some(checksum(buffer)),
    })
}

/// What a ferry operation asks of the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ask {
    /// Report a checksum of what a write delivered.
    verify: bool,
    /// Use the peer's cached Connector.
    cached: bool,
    /// Expose the peer's raw buffer to a read rather than its own pattern buffer.
    raw_source: bool,
}

/// One ferry operation against the peer: asks it for a passive operation as `ask` says,
/// begins the active one over `local`, awaits it, and reads the peer's done line. Returns the
/// times and the done line.
async fn ferry_operation(
    connector: &Connector,
    peer: &mut PeerProcess,
    local: Local<'_>,
    ask: Ask,
    clock: ClockFrom,
) -> Result<(Timing, Value)> {
    let (size, direction) = (local.len(), local.direction());
    let limit = operation_limit(size);
    let request = json!({
        "op": direction.passive(),
        "size": size,
        "verify": ask.verify,
        "cached": ask.cached,
        "source": if ask.raw_source { "raw" } else { "own" },
    });
    let requested = (unix_nanos(), Instant::now());
    peer.io.send(&request).await?;
    let metadata = peer.recv_metadata(size, limit).await?;
    let begun = (unix_nanos(), Instant::now());
    let elapsed = transfer_against(connector, &metadata, local, limit).await?;
    let (start, active) = match clock {
        ClockFrom::Begin => (begun.0, elapsed),
        ClockFrom::Request => (requested.0, begun.1.duration_since(requested.1) + elapsed),
    };
    let done = peer.recv_done(direction.passive(), limit).await?;
    Ok((Timing::of(start, active, &done)?, done))
}

/// The raw paths of one size and direction: this side's registered buffer and the worker
/// that transfers between it and the peer's; with [`Path::RawPerOp`], a second worker whose
/// own buffer it registers per operation.
struct RawRow {
    local: RawBuffer,
    worker: RawWorker,
    per_op: Option<RawWorker>,
    size: usize,
    direction: Direction,
}

/// What a raw operation asks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RawAsk {
    /// The peer reports a checksum of its buffer.
    verify: bool,
    /// On the worker that registers its memory per operation.
    per_op: bool,
    /// A checked warm-up on that worker: its memory filled with this first and its checksum
    /// taken after, both untimed.
    fill: Option<u8>,
}

/// A raw operation's times, the peer's done line, and the per-operation worker's checksum of
/// its memory.
struct RawDone {
    timing: Timing,
    done: Value,
    checksum: Option<u64>,
}

impl RawRow {
    /// Has the peer register a raw buffer (holding [`RAW_READ_FILL`] for reads), loads its
    /// agent's metadata, registers this side's buffer (holding [`RAW_WRITE_FILL`] for
    /// writes), and starts the worker with both descriptor lists built. With `per_op`, the
    /// peer also makes the buffer of [`Path::RawPerOp`], and a second worker here transfers
    /// between it and a buffer of its own, both registered per operation.
    async fn open(
        agent: &RawAgent,
        peer: &mut PeerProcess,
        (size, direction): (usize, Direction),
        polling: Polling,
        per_op: bool,
    ) -> Result<RawRow> {
        let fill = (direction == Direction::Read).then_some(RAW_READ_FILL);
        peer.io
            .send(&json!({"op": "raw-expose", "size": size, "fill": fill, "per_op": per_op}))
            .await?;
        let reply = peer.io.recv(REPLY_LIMIT + operation_limit(size)).await?;
        if let Some(e) = error_of(&reply) {
            return Err(format!("the peer could not expose a raw buffer: {e}").into());
        }
        let metadata = reply["metadata"]
            .as_str()
            .and_then(|m| base64::engine::general_purpose::STANDARD.decode(m).ok())
            .ok_or_else(|| format!("no agent metadata in {reply}"))?;
        let address = |key: &str| {
            reply[key]
                .as_u64()
                .and_then(|a| usize::try_from(a).ok())
                .ok_or_else(|| format!("no {key} in {reply}"))
        };
        let remote_addr = address("addr")?;
        if reply["len"].as_u64() != Some(size as u64) {
            return Err(format!("the peer's raw buffer is not {size} bytes: {reply}").into());
        }
        let remote_agent = agent.load_remote(&metadata)?;
        let local = agent.filled_buffer(size, local_fill(direction))?;
        let span = Span {
            local: (local.addr(), local.len()),
            remote_agent,
            remote: (remote_addr, size),
        };
        let op = xfer_op(direction);
        let worker = RawWorker::start(agent, op, span.clone(), raw::Local::Registered, polling)?;
        let per_op = match per_op {
            true => {
                let (own, at) = raw::Local::per_operation(size, local_fill(direction))?;
                let span = Span {
                    local: at,
                    remote: (address("per_op_addr")?, size),
                    ..span
                };
                Some(RawWorker::start(agent, op, span, own, polling)?)
            }
            false => None,
        };
        Ok(RawRow {
            local,
            worker,
            per_op,
            size,
            direction,
        })
    }

    /// The raw warm-up, its bytes checked in full: a read must fill the zeroed local buffer
    /// with [`RAW_READ_FILL`]; after a write the peer's checksum must equal this side's.
    async fn warm_up(&mut self, peer: &mut PeerProcess, message: &str) -> Result<bool> {
        if self.direction == Direction::Read {
            self.local.fill(0);
        }
        let ask = RawAsk {
            verify: true,
            ..RawAsk::default()
        };
        let RawDone { done, .. } = self.operation(peer, message, ask).await?;
        Ok(match self.direction {
            Direction::Read => self.local.bytes().iter().all(|&b| b == RAW_READ_FILL),
            Direction::Write => done["checksum"].as_u64() == Some(checksum(self.local.bytes())),
        })
    }

    /// The same warm-up on the per-operation worker, whose memory only its thread touches: it
    /// zeroes it first for a read (refills it for a write), and reports its checksum after.
    async fn warm_up_per_op(&mut self, peer: &mut PeerProcess, message: &str) -> Result<bool> {
        let ask = RawAsk {
            verify: true,
            per_op: true,
            fill: Some(local_fill(self.direction)),
        };
        let RawDone {
            done,
            checksum: ours,
            ..
        } = self.operation(peer, message, ask).await?;
        let expected = match self.direction {
            Direction::Read => Some(checksum(&vec![RAW_READ_FILL; self.size])),
            Direction::Write => done["checksum"].as_u64(),
        };
        Ok(ours.is_some() && ours == expected)
    }

    /// One raw operation: arms the peer (it starts polling for `message`), has the worker
    /// `ask` names create, post and poll the request, and reads the peer's done line.
    async fn operation(
        &self,
        peer: &mut PeerProcess,
        message: &str,
        ask: RawAsk,
    ) -> Result<RawDone> {
        let size = self.size;
        let limit = operation_limit(size);
        let worker = match (ask.per_op, &self.per_op) {
            (false, _) => &self.worker,
            (true, Some(worker)) => worker,
            (true, None) => return Err("the per-operation raw worker was not started".into()),
        };
        let command = json!({
            "op": "raw-await",
            "message": message,
            "verify": ask.verify,
            "per_op": ask.per_op,
        });
        peer.io.send(&command).await?;
        let armed = peer.io.recv(REPLY_LIMIT).await?;
        if armed["armed"] != Value::Bool(true) {
            let why = error_of(&armed).unwrap_or_else(|| armed.to_string());
            return Err(format!("the peer did not arm: {why}").into());
        }
        let target = match ask.per_op {
            true => Some(
                armed["metadata"]
                    .as_str()
                    .and_then(|m| base64::engine::general_purpose::STANDARD.decode(m).ok())
                    .ok_or_else(|| format!("no agent metadata in {armed}"))?,
            ),
            false => None,
        };
        let timed = worker
            .transfer(message.as_bytes(), target, limit, ask.fill)
            .await
            .map_err(|e| format!("raw {} of {size} bytes failed: {e}", self.direction.name()))?;
        let done = peer.recv_done("raw target", limit).await?;
        Ok(RawDone {
            timing: Timing::of(timed.start_ns, timed.active, &done)?,
            done,
            checksum: timed.checksum,
        })
    }
}

/// What this side's raw buffer holds before an operation: zeroes to read into, or
/// [`RAW_WRITE_FILL`] to write.
fn local_fill(direction: Direction) -> u8 {
    match direction {
        Direction::Read => 0,
        Direction::Write => RAW_WRITE_FILL,
    }
}

fn xfer_op(direction: Direction) -> XferOp {
    match direction {
        Direction::Read => XferOp::Read,
        Direction::Write => XferOp::Write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_by_key() {
        for path in Path::ALL {
            assert_eq!(Path::from_key(path.key()), Some(path));
        }
        assert_eq!(Path::from_key("ucx"), None);
    }

    #[test]
    fn rounds_share_the_plan() {
        let plan = IterationPlan {
            target: Duration::from_secs(2),
            min: 3,
            max: 2000,
        };
        let first = share(plan, 1, 4);
        assert_eq!(first.target, Duration::from_millis(500));
        assert_eq!((first.min, first.max), (1, 500));
        assert_eq!(share(plan, 4, 4), plan);
        assert_eq!(share(plan, 1, 1), plan);
        assert_eq!(share(plan, 9, 0), plan);
    }

    #[test]
    fn both_sides_time_is_the_later_completion() {
        let done = json!({"done": true, "at_ns": 1_000_500u64});
        let t = Timing::of(1_000_000, Duration::from_nanos(200), &done).unwrap();
        assert_eq!(t.both, Duration::from_nanos(500));
        assert_eq!(t.active, Duration::from_nanos(200));
        let t = Timing::of(1_000_000, Duration::from_nanos(900), &done).unwrap();
        assert_eq!(t.both, Duration::from_nanos(900));
        // A peer instant before the start (a clock step) counts as no passive lag.
        let t = Timing::of(2_000_000, Duration::from_nanos(10), &done).unwrap();
        assert_eq!(t.both, Duration::from_nanos(10));
        assert!(Timing::of(0, Duration::ZERO, &json!({"done": true})).is_err());
    }
}

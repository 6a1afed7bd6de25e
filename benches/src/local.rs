//! Transfers between two Connectors of one process, on one backend: the passive side's
//! `create_readable`/`create_writable`, its metadata through JSON, the active side's
//! `begin_read`/`begin_write`, and both awaited at once, with the bytes split over 1 to 4096
//! descriptors. What ferry costs with no second process in the way, beside a single-thread
//! memcpy of the same size ([`crate::baseline::memcpy`]).
//!
//! Each operation is cut the way nixlbench reports its transfers:
//!
//! ```text
//!  prepare  ├ create_readable / create_writable, metadata().to_json(), RdmaMetadata::from_json ┤
//!  post                                            ├ begin_read / begin_write returned ┤
//!  transfer                                        ├ … both sides' wait_for_completion Ok ┤
//! ```
//!
//! `transfer` runs from just before the begin until both sides have completed (it includes
//! `post`); GB/s is bytes × operations ÷ total transfer time. The sim backend moves the bytes
//! in memory and runs its link model on a virtual clock, which adds no wall-clock time: its
//! figures are ferry's core plus the simulator's copies (into the world when a readable is
//! exposed or a write posted, out when the operation is next polled), not a network's.

use std::time::{Duration, Instant};

use ferry::{Connector, Descriptor, RdmaMetadata};

use crate::cpu::CpuTime;
use crate::peer::Direction;
use crate::stats::{IterationPlan, Summary};
use crate::{operation_limit, Result};

/// A backend measured in one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalBackend {
    /// The in-memory simulator on its default link (2 µs, 25 GB/s, virtual time).
    Sim,
    /// Two tcp Connectors over 127.0.0.1.
    Tcp,
    /// Two NIXL agents (UCX) in this process.
    Nixl,
    /// Two Connectors on ferry's ucx backend (the system UCX): measured only by a program
    /// built with the `ucx` feature (ferry-bench-ucx, for `ferry bench`), since NIXL refuses to
    /// start in a process that links the system UCX.
    Ucx,
}

impl LocalBackend {
    /// Every backend, in report order.
    pub const ALL: [LocalBackend; 4] = [
        LocalBackend::Sim,
        LocalBackend::Tcp,
        LocalBackend::Nixl,
        LocalBackend::Ucx,
    ];

    /// `sim`, `tcp`, `nixl` or `ucx`.
    pub fn name(self) -> &'static str {
        match self {
            LocalBackend::Sim => "sim",
            LocalBackend::Tcp => "tcp",
            LocalBackend::Nixl => "nixl",
            LocalBackend::Ucx => "ucx",
        }
    }

    /// The backend named `name` ([`LocalBackend::name`]).
    pub fn from_name(name: &str) -> Option<LocalBackend> {
        LocalBackend::ALL
            .into_iter()
            .find(|b| b.name() == name.trim())
    }

    /// Why it cannot run in this process, if it cannot.
    pub fn unusable(self) -> Option<String> {
        match self {
            LocalBackend::Nixl => ferry::nixl::available(None).err(),
            #[cfg(feature = "ucx")]
            LocalBackend::Ucx => ferry::ucx::available().err(),
            #[cfg(not(feature = "ucx"))]
            LocalBackend::Ucx => Some(NO_UCX.into()),
            LocalBackend::Sim | LocalBackend::Tcp => None,
        }
    }
}

/// Two Connectors on one backend in this process: the passive side and the active side.
#[derive(Debug)]
pub struct Pair {
    /// Which backend.
    pub backend: LocalBackend,
    /// Creates the readables and writables.
    pub passive: Connector,
    /// Begins the reads and writes.
    pub active: Connector,
}

impl Pair {
    /// Two fresh Connectors on `backend`, each keeping up to `cache` registrations (0: none,
    /// ferry's default: memory registered per operation).
    pub async fn open(backend: LocalBackend, cache: usize) -> Result<Pair> {
        let pid = std::process::id();
        let made = next_pair();
        let name = |side: &str| format!("ferry-bench-{}-{side}-{pid}-{made}", backend.name());
        let build = |side: &str| {
            Connector::builder()
                .worker_id(name(side))
                .registration_cache(cache)
        };
        let (passive, active) = match backend {
            LocalBackend::Sim => {
                let world = ferry::sim::SimWorld::new(made);
                let passive = ferry::sim::SimBackend::new(&world, &name("passive"))?;
                let active = ferry::sim::SimBackend::new(&world, &name("active"))?;
                (
                    build("passive").backend(passive).build().await?,
                    build("active").backend(active).build().await?,
                )
            }
            LocalBackend::Tcp => {
                let config = ferry::tcp::TcpConfig::default;
                let passive = ferry::tcp::TcpBackend::bind(config()).await?;
                let active = ferry::tcp::TcpBackend::bind(config()).await?;
                (
                    build("passive").backend(passive).build().await?,
                    build("active").backend(active).build().await?,
                )
            }
            LocalBackend::Nixl => {
                let config = |side: &str| ferry::nixl::NixlConfig::named(name(side));
                let passive = ferry::nixl::NixlBackend::new(config("passive"))?;
                let active = ferry::nixl::NixlBackend::new(config("active"))?;
                (
                    build("passive").backend(passive).build().await?,
                    build("active").backend(active).build().await?,
                )
            }
            #[cfg(feature = "ucx")]
            LocalBackend::Ucx => {
                let config = || ferry::ucx::UcxConfig {
                    error_handling: UCX_ERROR_HANDLING.get().copied().unwrap_or_default(),
                    ..Default::default()
                };
                let passive = ferry::ucx::UcxBackend::with_config(config())?;
                let active = ferry::ucx::UcxBackend::with_config(config())?;
                (
                    build("passive").backend(passive).build().await?,
                    build("active").backend(active).build().await?,
                )
            }
            #[cfg(not(feature = "ucx"))]
            LocalBackend::Ucx => return Err(NO_UCX.into()),
        };
        Ok(Pair {
            backend,
            passive,
            active,
        })
    }
}

/// How the endpoints of ucx pairs treat a lost peer, where a program set it.
#[cfg(feature = "ucx")]
static UCX_ERROR_HANDLING: std::sync::OnceLock<ferry::ucx::ErrorHandling> =
    std::sync::OnceLock::new();

/// Makes every ucx [`Pair`] this process opens from now on (and the KV hand-off's) use
/// `error_handling` (ferry's default, peer, until set); the first call wins.
#[cfg(feature = "ucx")]
pub fn set_ucx_error_handling(error_handling: ferry::ucx::ErrorHandling) {
    let _ = UCX_ERROR_HANDLING.set(error_handling);
}

/// Why ucx cannot run in a program built without the `ucx` feature.
#[cfg(not(feature = "ucx"))]
const NO_UCX: &str = "this program is built without the ucx feature";

/// A number for each pair made in this process, for unique agent names and sim seeds.
fn next_pair() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static MADE: AtomicU64 = AtomicU64::new(0);
    MADE.fetch_add(1, Ordering::Relaxed)
}

/// One operation's times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    /// The passive operation created and its metadata through JSON.
    pub prepare: Duration,
    /// The active operation begun.
    pub post: Duration,
    /// From just before the begin until both sides completed.
    pub transfer: Duration,
}

/// One backend, direction, size and descriptor count, measured in one process.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalRow {
    /// Which backend.
    pub backend: LocalBackend,
    /// Which way the bytes went.
    pub direction: Direction,
    /// Bytes per operation, over all its descriptors.
    pub size: usize,
    /// Descriptors per operation (nixlbench's batch size); each is `size / descriptors` bytes.
    pub descriptors: usize,
    /// Prepare times of the timed operations.
    pub prepare: Summary,
    /// Post times.
    pub post: Summary,
    /// Transfer times.
    pub transfer: Summary,
    /// This process's CPU (both sides are in it) over the timed operations; `None` where
    /// `/proc/self/stat` could not be read.
    pub cpu: Option<CpuTime>,
    /// Whether the warm-up's bytes equalled the source's, every byte.
    pub verified: bool,
}

impl LocalRow {
    /// Mean throughput, bytes per second: bytes × operations ÷ total transfer time.
    pub fn throughput(&self) -> f64 {
        self.transfer.throughput(self.size)
    }

    /// CPU per operation, user plus system.
    pub fn cpu_per_operation(&self) -> Option<Duration> {
        let operations = u32::try_from(self.transfer.iterations).ok()?.max(1);
        Some(self.cpu?.total() / operations)
    }
}

/// The (size, descriptors) cells of one backend and direction: every size at one descriptor,
/// and each of `split_sizes` split over each of `descriptors` that splits it evenly, sorted.
pub fn cells(sizes: &[usize], split_sizes: &[usize], descriptors: &[usize]) -> Vec<(usize, usize)> {
    let mut cells: Vec<(usize, usize)> = sizes.iter().map(|&s| (s, 1)).collect();
    for &size in split_sizes {
        for &n in descriptors {
            if n > 1 && piece(size, n).is_some() && !cells.contains(&(size, n)) {
                cells.push((size, n));
            }
        }
    }
    cells.sort_unstable();
    cells
}

/// The bytes of each of `descriptors` descriptors splitting `size` bytes, if they split it
/// evenly into non-empty pieces.
pub fn piece(size: usize, descriptors: usize) -> Option<usize> {
    (descriptors > 0 && size % descriptors == 0 && size >= descriptors).then(|| size / descriptors)
}

/// Measures `direction` at `size` split over `descriptors` on `pair`: one untimed warm-up whose
/// bytes are checked, then timed operations as `plan` says.
pub async fn measure(
    pair: &Pair,
    direction: Direction,
    size: usize,
    descriptors: usize,
    plan: IterationPlan,
) -> Result<LocalRow> {
    let piece = piece(size, descriptors)
        .ok_or_else(|| format!("{size} bytes do not split into {descriptors} descriptors"))?;
    let source = ferry::demo::pattern(size, 0x6c6f_6361 ^ size as u64);
    let mut destination = vec![0u8; size];
    operation(pair, direction, &source, &mut destination, piece).await?;
    let verified = destination == source;
    let (mut prepare, mut post, mut transfer) = (Vec::new(), Vec::new(), Vec::new());
    let mut spent = Duration::ZERO;
    let before = CpuTime::now();
    while plan.wants_more(transfer.len(), spent) {
        let phases = operation(pair, direction, &source, &mut destination, piece).await?;
        spent += phases.transfer;
        prepare.push(phases.prepare);
        post.push(phases.post);
        transfer.push(phases.transfer);
    }
    let cpu = CpuTime::now()
        .zip(before)
        .map(|(now, then)| now.since(then));
    let none = "the plan asked for no operations";
    Ok(LocalRow {
        backend: pair.backend,
        direction,
        size,
        descriptors,
        prepare: Summary::from_samples(prepare).ok_or(none)?,
        post: Summary::from_samples(post).ok_or(none)?,
        transfer: Summary::from_samples(transfer).ok_or(none)?,
        cpu,
        verified,
    })
}

/// One operation from `source` to `destination` in pieces of `piece` bytes, both sides on
/// `pair`, bounded by [`operation_limit`].
async fn operation(
    pair: &Pair,
    direction: Direction,
    source: &[u8],
    destination: &mut [u8],
    piece: usize,
) -> Result<Phases> {
    let size = source.len();
    let limit = operation_limit(size);
    let timed = async {
        let sources = || source.chunks(piece).map(Descriptor::from_slice);
        let start = Instant::now();
        let (begun, posted) = match direction {
            Direction::Read => {
                let mut passive = pair.passive.create_readable(sources()).await?;
                let metadata = RdmaMetadata::from_json(&passive.metadata().to_json())?;
                let begun = Instant::now();
                let landing = destination
                    .chunks_mut(piece)
                    .map(Descriptor::from_mut_slice);
                let mut active = pair.active.begin_read(&metadata, landing).await?;
                let posted = Instant::now();
                let (a, p) =
                    tokio::join!(active.wait_for_completion(), passive.wait_for_completion());
                a.and(p)?;
                (begun, posted)
            }
            Direction::Write => {
                let landing = destination
                    .chunks_mut(piece)
                    .map(Descriptor::from_mut_slice);
                let mut passive = pair.passive.create_writable(landing).await?;
                let metadata = RdmaMetadata::from_json(&passive.metadata().to_json())?;
                let begun = Instant::now();
                let mut active = pair.active.begin_write(sources(), &metadata).await?;
                let posted = Instant::now();
                let (a, p) =
                    tokio::join!(active.wait_for_completion(), passive.wait_for_completion());
                a.and(p)?;
                (begun, posted)
            }
        };
        Ok::<_, crate::BoxError>(Phases {
            prepare: begun.duration_since(start),
            post: posted.duration_since(begun),
            transfer: begun.elapsed(),
        })
    };
    tokio::time::timeout(limit, timed)
        .await
        .map_err(|_| {
            format!(
                "{} of {size} bytes in one process not complete within {limit:?}",
                direction.name()
            )
        })?
        .map_err(|e| {
            format!(
                "{} {} of {size} bytes in one process: {e}",
                pair.backend.name(),
                direction.name()
            )
            .into()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_evenly() {
        assert_eq!(piece(1 << 20, 4096), Some(256));
        assert_eq!(piece(4096, 1), Some(4096));
        assert_eq!(piece(4096, 0), None);
        assert_eq!(piece(100, 3), None);
        assert_eq!(piece(8, 16), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_local_backend_moves_verified_bytes() {
        let plan = IterationPlan {
            target: Duration::from_millis(1),
            min: 2,
            max: 2,
        };
        for backend in [LocalBackend::Sim, LocalBackend::Tcp] {
            let pair = Pair::open(backend, 0).await.unwrap();
            for direction in [Direction::Read, Direction::Write] {
                let row = measure(&pair, direction, 64 << 10, 16, plan).await.unwrap();
                assert!(row.verified, "{backend:?} {direction:?}");
                assert_eq!(row.transfer.iterations, 2);
                assert!(row.transfer.p50 >= row.post.p50);
            }
        }
        assert_eq!(LocalBackend::from_name("nixl"), Some(LocalBackend::Nixl));
    }
}

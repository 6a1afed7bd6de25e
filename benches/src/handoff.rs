//! The KV-cache hand-off in one process: a prefill Connector holds a Llama-3-70B-shaped BF16 KV
//! pool ([`crate::kv::llama_70b`], one allocation per layer, K and V apart) and a decode
//! Connector on the same backend pulls `blocks` blocks of it (204 blocks, 1020 MiB, in a full
//! run) into its own, larger pool, five ways ([`Variant`]):
//!
//! ```text
//!  per block       KvPool, registered once; destination blocks scattered: one descriptor per
//!                  block per layer plane (blocks × 160), one operation
//!  per layer       KvPool, registered once; blocks adjacent on both sides: coalesced to one
//!                  descriptor per layer plane (160), one operation
//!  pipelined       80 single-layer KvPools per side, registered once; one operation per layer
//!                  (2 descriptors each), all begun at once, each layer usable when its own
//!                  read completes
//!  register per op plain Connector operations over the same 160 runs, no pool: the memory is
//!                  registered and deregistered by every operation (Dynamo's way)
//!  cached          the same on Connectors with a registration cache: registered by the
//!                  first operation, reused by the others
//! ```
//!
//! Timed per hand-off: `prepare` (the decode side's block set, the prefill side's
//! `create_readable`, its offer or metadata through JSON), then from just before the first
//! `begin_read` until every operation on both sides completed (`transfer`), and until the
//! first layer's read completed (`first layer`: for one operation, the whole transfer; a
//! decode worker can start on layer 0 only then). One untimed hand-off whose every moved chunk
//! is compared with its source goes first, on the memory the timed ones use.

use std::time::{Duration, Instant};

use ferry::kv::{KvLayout, KvMemory, KvOffer, KvPool, KvShape};
use ferry::{Descriptor, RdmaMetadata};

use crate::cpu::CpuTime;
use crate::join::{join_all, BoxFuture};
use crate::kv::{llama_70b, per_layer_layout, BlockSet};
use crate::local::{LocalBackend, Pair};
use crate::stats::{IterationPlan, Summary};
use crate::{operation_limit, Result};

/// Registrations a cached Connector keeps: 80 layer allocations per side, with room.
pub const CACHE_CAPACITY: usize = 256;

/// The plan of a KV hand-off row, from a benchmark's plan of an ordinary row: at least 1.5 s
/// of hand-offs (50 ms when `quick`), at least 3 (2), at most 50.
pub fn plan(rows: IterationPlan, quick: bool) -> IterationPlan {
    IterationPlan {
        target: rows
            .target
            .max(Duration::from_millis(if quick { 50 } else { 1500 })),
        min: if quick { 2 } else { 3 },
        max: rows.max.min(50),
    }
}

/// How the blocks are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// One descriptor per block per layer plane, pool registered once.
    PerBlock,
    /// Coalesced to one descriptor per layer plane, pool registered once, one operation.
    PerLayer,
    /// One operation per layer, pools registered once.
    Pipelined,
    /// The coalesced runs as plain operations, memory registered per operation.
    RegisterPerOperation,
    /// The same on Connectors with a registration cache.
    Cached,
}

impl Variant {
    /// Every variant, in report order.
    pub const ALL: [Variant; 5] = [
        Variant::PerBlock,
        Variant::PerLayer,
        Variant::Pipelined,
        Variant::RegisterPerOperation,
        Variant::Cached,
    ];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Variant::PerBlock => "per block, pool",
            Variant::PerLayer => "per layer, pool",
            Variant::Pipelined => "per layer pipelined, pools",
            Variant::RegisterPerOperation => "per layer, register per op",
            Variant::Cached => "per layer, registration cache",
        }
    }
}

/// Both pools' memory, allocated once for every variant and backend.
#[derive(Debug)]
pub struct Memory {
    blocks: u32,
    prefill_layout: KvLayout,
    decode_layout: KvLayout,
    prefill: Vec<Vec<u8>>,
    decode: Vec<Vec<u8>>,
}

impl Memory {
    /// A prefill pool of `blocks` blocks, each layer its own pattern, and a zeroed decode pool
    /// of `2 × blocks + 16` (room for the scattered set).
    pub fn new(blocks: u32) -> Result<Memory> {
        let blocks = blocks.max(1);
        let prefill_layout = per_layer_layout(llama_70b(blocks))?;
        let decode_layout = per_layer_layout(llama_70b(2 * blocks + 16))?;
        let span = |layout: &KvLayout| usize::try_from(layout.span());
        let (prefill_span, decode_span) = (span(&prefill_layout)?, span(&decode_layout)?);
        let prefill = (0..prefill_layout.allocations())
            .map(|layer| ferry::demo::pattern(prefill_span, 0x6b76_0000 + layer as u64))
            .collect();
        let decode = vec![vec![0u8; decode_span]; decode_layout.allocations()];
        Ok(Memory {
            blocks,
            prefill_layout,
            decode_layout,
            prefill,
            decode,
        })
    }

    /// Bytes a hand-off moves.
    pub fn bytes(&self) -> u64 {
        self.prefill_layout.chunk_bytes() * u64::from(self.blocks) * 2 * self.prefill.len() as u64
    }

    /// Bytes both pools hold.
    pub fn held(blocks: u32) -> u64 {
        let chunk = 32u64 << 10;
        chunk * 2 * 80 * (u64::from(blocks) + u64::from(2 * blocks + 16))
    }

    /// Whether every destination chunk of `set` holds its source chunk.
    fn verify(&self, set: BlockSet) -> bool {
        let (source, destination) = set.ids(self.blocks, self.decode_layout.shape().blocks);
        let chunk = self.prefill_layout.chunk_bytes() as usize;
        let at = |layout: &KvLayout, plane: u64, block: u32| {
            let strides = layout.strides();
            (plane * strides.plane + u64::from(block) * strides.block) as usize
        };
        self.prefill.iter().zip(&self.decode).all(|(from, to)| {
            (0..2).all(|plane| {
                source.iter().zip(&destination).all(|(&s, &d)| {
                    let s = at(&self.prefill_layout, plane, s);
                    let d = at(&self.decode_layout, plane, d);
                    from.get(s..s + chunk) == to.get(d..d + chunk)
                })
            })
        })
    }

    fn clear_decode(&mut self) {
        for layer in &mut self.decode {
            layer.fill(0);
        }
    }
}

/// One backend and variant, measured.
#[derive(Debug, Clone, PartialEq)]
pub struct HandoffRow {
    /// Which backend.
    pub backend: LocalBackend,
    /// Which variant.
    pub variant: Variant,
    /// Blocks per hand-off.
    pub blocks: u32,
    /// Bytes per hand-off.
    pub bytes: u64,
    /// Operations per hand-off (1, or 80 pipelined).
    pub operations: usize,
    /// Descriptors per hand-off, over all its operations.
    pub descriptors: usize,
    /// The prepare times.
    pub prepare: Summary,
    /// The transfer times.
    pub transfer: Summary,
    /// The times until the first layer was usable.
    pub first_layer: Summary,
    /// This process's CPU over the timed hand-offs (both sides are in it).
    pub cpu: Option<CpuTime>,
    /// Whether the warm-up moved every chunk to its place.
    pub verified: bool,
}

impl HandoffRow {
    /// Mean throughput, bytes per second.
    pub fn throughput(&self) -> f64 {
        self.transfer.throughput(self.bytes as usize)
    }
}

/// Times gathered over hand-offs.
#[derive(Debug, Default)]
struct Gathered {
    prepare: Vec<Duration>,
    transfer: Vec<Duration>,
    first_layer: Vec<Duration>,
    spent: Duration,
    operations: usize,
    descriptors: usize,
}

impl Gathered {
    fn push(&mut self, prepare: Duration, transfer: Duration, first_layer: Duration) {
        self.prepare.push(prepare);
        self.transfer.push(transfer);
        self.first_layer.push(first_layer);
        self.spent += transfer;
    }

    fn wants_more(&self, plan: IterationPlan) -> bool {
        plan.wants_more(self.transfer.len(), self.spent)
    }
}

/// Measures `variant` on `backend` with `memory`: one verified hand-off, then timed ones as
/// `plan` says.
pub async fn measure(
    backend: LocalBackend,
    variant: Variant,
    memory: &mut Memory,
    plan: IterationPlan,
) -> Result<HandoffRow> {
    let cache = if variant == Variant::Cached {
        CACHE_CAPACITY
    } else {
        0
    };
    let pair = Pair::open(backend, cache).await?;
    let set = match variant {
        Variant::PerBlock => BlockSet::Scattered,
        _ => BlockSet::Contiguous,
    };
    let once = IterationPlan {
        target: Duration::ZERO,
        min: 1,
        max: 1,
    };
    memory.clear_decode();
    run(&pair, variant, memory, once).await?;
    let verified = memory.verify(set);
    let before = CpuTime::now();
    let gathered = run(&pair, variant, memory, plan).await?;
    let cpu = CpuTime::now()
        .zip(before)
        .map(|(now, then)| now.since(then));
    let none = "the plan asked for no hand-offs";
    Ok(HandoffRow {
        backend,
        variant,
        blocks: memory.blocks,
        bytes: memory.bytes(),
        operations: gathered.operations,
        descriptors: gathered.descriptors,
        prepare: Summary::from_samples(gathered.prepare).ok_or(none)?,
        transfer: Summary::from_samples(gathered.transfer).ok_or(none)?,
        first_layer: Summary::from_samples(gathered.first_layer).ok_or(none)?,
        cpu,
        verified,
    })
}

/// Runs hand-offs of `variant` as `plan` says, bounded in time.
async fn run(
    pair: &Pair,
    variant: Variant,
    memory: &mut Memory,
    plan: IterationPlan,
) -> Result<Gathered> {
    let limit = operation_limit(memory.bytes() as usize);
    let mut gathered = Gathered::default();
    let work = async {
        match variant {
            Variant::PerBlock => {
                pooled(pair, memory, BlockSet::Scattered, plan, &mut gathered).await
            }
            Variant::PerLayer => {
                pooled(pair, memory, BlockSet::Contiguous, plan, &mut gathered).await
            }
            Variant::Pipelined => pipelined(pair, memory, plan, &mut gathered).await,
            Variant::RegisterPerOperation | Variant::Cached => {
                plain(pair, memory, plan, &mut gathered).await
            }
        }
    };
    // Every hand-off is bounded by the limit; the plan bounds how many there are.
    let whole = limit.saturating_mul(u32::try_from(plan.max.max(plan.min)).unwrap_or(u32::MAX));
    tokio::time::timeout(whole, work)
        .await
        .map_err(|_| format!("{} hand-offs ran past {whole:?}", variant.name()))?
        .map_err(|e| format!("{} {}: {e}", pair.backend.name(), variant.name()))?;
    Ok(gathered)
}

/// One whole-model pool per side, one read per hand-off of `set`.
async fn pooled(
    pair: &Pair,
    memory: &mut Memory,
    set: BlockSet,
    plan: IterationPlan,
    gathered: &mut Gathered,
) -> Result<()> {
    let (source, destination) = set.ids(memory.blocks, memory.decode_layout.shape().blocks);
    let prefill = KvPool::new(
        &pair.passive,
        memory.prefill_layout,
        KvMemory::shared_per_layer(memory.prefill.iter().map(Vec::as_slice).collect()),
    )?;
    let mut decode = KvPool::new(
        &pair.active,
        memory.decode_layout,
        KvMemory::exclusive_per_layer(memory.decode.iter_mut().map(Vec::as_mut_slice).collect()),
    )?;
    while gathered.wants_more(plan) {
        let start = Instant::now();
        let wanted = decode.block_set(&destination)?;
        let (mut readable, offer) = prefill.create_readable(&source, &wanted).await?;
        let offer = KvOffer::from_json(&offer.to_json())?;
        let begun = Instant::now();
        let mut read = decode.begin_read(&destination, &offer).await?;
        let (r, p) = tokio::join!(read.wait_for_completion(), readable.wait_for_completion());
        r.and(p)?;
        let transfer = begun.elapsed();
        gathered.operations = 1;
        gathered.descriptors = read.descriptor_count();
        gathered.push(begun.duration_since(start), transfer, transfer);
    }
    Ok(())
}

/// A single-layer pool per layer and side; one read per layer per hand-off, all begun at once.
async fn pipelined(
    pair: &Pair,
    memory: &mut Memory,
    plan: IterationPlan,
    gathered: &mut Gathered,
) -> Result<()> {
    let one_layer = |layout: &KvLayout| -> Result<KvLayout> {
        let shape = KvShape {
            layers: 1,
            ..*layout.shape()
        };
        per_layer_layout(shape)
    };
    let (prefill_layout, decode_layout) = (
        one_layer(&memory.prefill_layout)?,
        one_layer(&memory.decode_layout)?,
    );
    let (source, destination) =
        BlockSet::Contiguous.ids(memory.blocks, memory.decode_layout.shape().blocks);
    let mut prefill = Vec::with_capacity(memory.prefill.len());
    for layer in &memory.prefill {
        let layer = KvMemory::shared(layer.as_slice());
        prefill.push(KvPool::new(&pair.passive, prefill_layout, layer)?);
    }
    let mut decode = Vec::with_capacity(memory.decode.len());
    for layer in &mut memory.decode {
        let layer = KvMemory::exclusive(layer.as_mut_slice());
        decode.push(KvPool::new(&pair.active, decode_layout, layer)?);
    }
    while gathered.wants_more(plan) {
        let start = Instant::now();
        let (mut readables, mut offers) = (Vec::new(), Vec::new());
        for (from, to) in prefill.iter().zip(&decode) {
            let wanted = to.block_set(&destination)?;
            let (readable, offer) = from.create_readable(&source, &wanted).await?;
            readables.push(readable);
            offers.push(KvOffer::from_json(&offer.to_json())?);
        }
        let begun = Instant::now();
        let mut reads = Vec::with_capacity(decode.len());
        for (to, offer) in decode.iter_mut().zip(&offers) {
            reads.push(to.begin_read(&destination, offer).await?);
        }
        let descriptors = reads.iter().map(|r| r.descriptor_count()).sum();
        let mut waits: Vec<BoxFuture<'_, Result<Option<Duration>, ferry::Error>>> = Vec::new();
        for read in &mut reads {
            waits.push(Box::pin(async move {
                read.wait_for_completion()
                    .await
                    .map(|()| Some(begun.elapsed()))
            }));
        }
        for readable in &mut readables {
            waits.push(Box::pin(async move {
                readable.wait_for_completion().await.map(|()| None)
            }));
        }
        let mut first = None::<Duration>;
        for ended in join_all(waits).await {
            if let Some(at) = ended? {
                first = Some(first.map_or(at, |f| f.min(at)));
            }
        }
        let transfer = begun.elapsed();
        gathered.operations = reads.len();
        gathered.descriptors = descriptors;
        gathered.push(
            begun.duration_since(start),
            transfer,
            first.unwrap_or(transfer),
        );
    }
    Ok(())
}

/// Plain Connector operations over the coalesced runs (K and V of each layer): no pool, so
/// each operation registers its memory unless the Connectors cache registrations.
async fn plain(
    pair: &Pair,
    memory: &mut Memory,
    plan: IterationPlan,
    gathered: &mut Gathered,
) -> Result<()> {
    let run = (memory.prefill_layout.chunk_bytes() * u64::from(memory.blocks)) as usize;
    let (prefill_plane, decode_plane) = (
        memory.prefill_layout.strides().plane as usize,
        memory.decode_layout.strides().plane as usize,
    );
    let prefill = &memory.prefill;
    let decode = &mut memory.decode;
    while gathered.wants_more(plan) {
        let start = Instant::now();
        let sources = prefill.iter().flat_map(|layer| {
            [
                Descriptor::from_slice(&layer[..run]),
                Descriptor::from_slice(&layer[prefill_plane..prefill_plane + run]),
            ]
        });
        let mut readable = pair.passive.create_readable(sources).await?;
        let metadata = RdmaMetadata::from_json(&readable.metadata().to_json())?;
        let begun = Instant::now();
        let landings = decode.iter_mut().flat_map(|layer| {
            let (k, v) = layer.split_at_mut(decode_plane);
            [
                Descriptor::from_mut_slice(&mut k[..run]),
                Descriptor::from_mut_slice(&mut v[..run]),
            ]
        });
        let mut read = pair.active.begin_read(&metadata, landings).await?;
        let (r, p) = tokio::join!(read.wait_for_completion(), readable.wait_for_completion());
        r.and(p)?;
        let transfer = begun.elapsed();
        gathered.operations = 1;
        gathered.descriptors = 2 * prefill.len();
        gathered.push(begun.duration_since(start), transfer, transfer);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_variant_moves_every_chunk_on_tcp() {
        let mut memory = Memory::new(2).unwrap();
        assert_eq!(memory.bytes(), 2 * 2 * 80 * (32 << 10));
        let plan = IterationPlan {
            target: Duration::ZERO,
            min: 1,
            max: 1,
        };
        for variant in Variant::ALL {
            let row = measure(LocalBackend::Tcp, variant, &mut memory, plan)
                .await
                .unwrap();
            assert!(row.verified, "{variant:?}");
            let (operations, descriptors) = match variant {
                Variant::PerBlock => (1, 2 * 160),
                Variant::Pipelined => (80, 160),
                _ => (1, 160),
            };
            assert_eq!((row.operations, row.descriptors), (operations, descriptors));
            assert!(row.first_layer.p50 <= row.transfer.p50);
        }
    }
}

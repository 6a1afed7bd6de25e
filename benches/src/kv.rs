//! The KV-cache scenario over tcp between two processes: a prefill worker (the peer process)
//! holds a pool shaped like Llama-3-70B's KV cache and a decode worker (this process) pulls a
//! set of blocks into its own pool with one [`ferry::kv`] read, for contiguous, partly
//! adjacent and scattered block sets.
//!
//! ```text
//!  ferry-bench-kv (decode)                    ferry-bench-kv --peer (prefill)
//!  {"op":"kv_readable","ids":[…],"peer":set} ─▶ pool.create_readable(ids, set)
//!  KvOffer::from_json  ◀────────── stdout ──── offer.to_json()
//!  pool.begin_read … wait (timed) ◀═ tcp ═▶    wait_for_completion()
//!                      ◀────────── stdout ──── {"done":true}
//! ```
//!
//! Both pools keep each layer in an allocation of its own (non-contiguous across layers), K
//! and V as separate planes, as vLLM's per-layer tensors do. Every chunk of the prefill pool
//! holds its own pattern, so a chunk that lands in the wrong place fails the check.

use std::time::{Duration, Instant};

use ferry::kv::{KvBlockSet, KvLayout, KvMemory, KvOffer, KvPlanes, KvPool, KvShape, KvStrides};
use ferry::Connector;
use serde_json::{json, Value};

use crate::lines::{error_of, Closed, JsonLines};
use crate::peer::{PeerProcess, COMMAND_LIMIT};
use crate::stats::{IterationPlan, Summary};
use crate::{operation_limit, tcp, Result};

/// Llama-3-70B's KV cache, BF16: 80 layers, 8 KV heads of 128, 16-token blocks; K and V
/// apart. One chunk (a block of one layer's K or V) is 32 KiB; a block across the model is
/// 5 MiB.
pub fn llama_70b(blocks: u32) -> KvShape {
    KvShape {
        layers: 80,
        planes: KvPlanes::Separate,
        blocks,
        tokens_per_block: 16,
        kv_heads: 8,
        head_dim: 128,
        element_size: 2,
    }
}

/// A pool of `shape` with one allocation per layer, packed inside each layer.
pub fn per_layer_layout(shape: KvShape) -> Result<KvLayout> {
    let chunk = KvLayout::new(shape)?.chunk_bytes();
    Ok(KvLayout::with_strides(
        shape,
        KvStrides {
            block: chunk,
            plane: chunk * u64::from(shape.blocks),
            layer: None,
        },
    )?)
}

/// Which blocks a transfer moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockSet {
    /// Blocks 0..n on both sides.
    Contiguous,
    /// Runs of 8 adjacent blocks, the runs scattered over the decode pool.
    Runs,
    /// No two decode blocks adjacent: one descriptor per chunk, as without coalescing.
    Scattered,
}

impl BlockSet {
    /// Every set, in report order.
    pub const ALL: [BlockSet; 3] = [BlockSet::Contiguous, BlockSet::Runs, BlockSet::Scattered];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            BlockSet::Contiguous => "contiguous",
            BlockSet::Runs => "runs of 8",
            BlockSet::Scattered => "scattered",
        }
    }

    /// (prefill ids, decode ids) for `count` blocks out of pools of `pool` blocks each. The
    /// prefill side sends 0..count; the decode side receives as the set says. Scattered and
    /// runs need `pool ≥ 2 × count`.
    pub fn ids(self, count: u32, pool: u32) -> (Vec<u32>, Vec<u32>) {
        let source: Vec<u32> = (0..count).collect();
        let destination = match self {
            BlockSet::Contiguous => source.clone(),
            // Every other block, in a shuffled order: adjacent on neither side's runs.
            BlockSet::Scattered => {
                let mut ids: Vec<u32> = (0..count).map(|i| 2 * i).collect();
                shuffle(&mut ids, 0x5ca7);
                ids
            }
            BlockSet::Runs => {
                let runs = count.div_ceil(8);
                let mut starts: Vec<u32> = (0..runs).map(|r| r * 16).collect();
                shuffle(&mut starts, 0x7275);
                starts
                    .iter()
                    .flat_map(|&start| start..start + 8)
                    .take(count as usize)
                    .collect()
            }
        };
        debug_assert!(destination.iter().all(|&id| id < pool));
        (source, destination)
    }
}

/// A seeded Fisher–Yates shuffle.
fn shuffle(ids: &mut [u32], seed: u64) {
    let mut state = seed | 1;
    for i in (1..ids.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ids.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

/// The seed of chunk (layer, plane, block)'s pattern in the prefill pool.
fn chunk_seed(layer: u32, plane: u64, block: u32) -> u64 {
    (u64::from(layer) << 40) ^ (plane << 32) ^ u64::from(block) ^ 0x4b56
}

/// Memory for `layout`: one zeroed allocation per layer.
fn allocations(layout: &KvLayout) -> Vec<Vec<u8>> {
    vec![vec![0u8; layout.span() as usize]; layout.allocations()]
}

/// Runs the prefill side on tcp: a pool of `blocks` blocks, every chunk its own pattern;
/// answers `kv_readable` commands until `exit` or end of input.
pub async fn run_peer(blocks: u32) -> Result<()> {
    run_peer_on(tcp::connector("ferry-bench-kv-prefill").await?, blocks).await
}

/// [`run_peer`] on `connector`, whatever its backend.
pub async fn run_peer_on(connector: Connector, blocks: u32) -> Result<()> {
    let layout = per_layer_layout(llama_70b(blocks))?;
    let mut memory = allocations(&layout);
    let mut pool = KvPool::new(
        &connector,
        layout,
        KvMemory::exclusive_per_layer(memory.iter_mut().map(Vec::as_mut_slice).collect()),
    )?;
    for layer in 0..80 {
        for plane in 0..2 {
            for block in 0..blocks {
                let pattern = ferry::demo::pattern(
                    layout.chunk_bytes() as usize,
                    chunk_seed(layer, plane, block),
                );
                if let Some(chunk) = pool.chunk_mut(layer, plane, block) {
                    chunk.copy_from_slice(&pattern);
                }
            }
        }
    }
    let mut io = crate::lines::peer_stdio();
    io.send(&json!({"ready": true, "pid": std::process::id()}))
        .await?;
    loop {
        let command = match io.recv(COMMAND_LIMIT).await {
            Ok(command) => command,
            Err(e) if e.is::<Closed>() => return Ok(()),
            Err(e) => return Err(e),
        };
        match command["op"].as_str() {
            Some("exit") => return Ok(()),
            Some("kv_readable") => serve_readable(&pool, &mut io, &command).await?,
            _ => {
                io.send(&json!({"error": format!("unknown command {command}")}))
                    .await?
            }
        }
    }
}

async fn serve_readable<R, W>(
    pool: &KvPool<'_>,
    io: &mut JsonLines<R, W>,
    command: &Value,
) -> Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let ids: Vec<u32> = serde_json::from_value(command["ids"].clone()).unwrap_or_default();
    let peer = match KvBlockSet::from_json(&command["peer"].to_string()) {
        Ok(peer) => peer,
        Err(e) => return io.send(&json!({"error": e.to_string()})).await,
    };
    let (mut readable, offer) = match pool.create_readable(&ids, &peer).await {
        Ok(created) => created,
        Err(e) => return io.send(&json!({"error": e.to_string()})).await,
    };
    io.send_line(&offer.to_json()).await?;
    let limit = operation_limit(readable.bytes() as usize);
    let reply = match tokio::time::timeout(limit, readable.wait_for_completion()).await {
        Ok(Ok(())) => json!({"done": true}),
        Ok(Err(e)) => json!({"done": false, "error": e.to_string()}),
        Err(_) => json!({"done": false, "error": format!("not complete within {limit:?}")}),
    };
    io.send(&reply).await
}

/// One block set, measured.
#[derive(Debug, Clone, PartialEq)]
pub struct KvRow {
    /// Which set.
    pub set: BlockSet,
    /// Blocks moved.
    pub blocks: u32,
    /// Bytes per transfer.
    pub bytes: u64,
    /// Descriptors per transfer, and chunks (what one descriptor per block and layer plane
    /// would need).
    pub descriptors: usize,
    /// Chunks per transfer.
    pub chunks: u64,
    /// From just before `begin_read` to its `wait_for_completion` returning `Ok`.
    pub summary: Summary,
    /// From just before `begin_read` until it returned (planning, pairing, posting).
    pub begin: Summary,
    /// Whether the verified warm-up's every chunk held its source's pattern.
    pub verified: bool,
}

impl KvRow {
    /// Mean throughput, bytes per second.
    pub fn throughput(&self) -> f64 {
        self.summary.throughput(self.bytes as usize)
    }
}

/// One read, timed.
struct Timed {
    elapsed: Duration,
    begin: Duration,
    descriptors: usize,
    chunks: u64,
    bytes: u64,
}

/// The decode side: its connector and the prefill peer process.
pub struct Decode {
    connector: Connector,
    peer: PeerProcess,
}

impl Decode {
    /// Starts the prefill peer (ferry-bench-kv's, on tcp) with a pool of `pool_blocks` blocks.
    pub async fn start(pool_blocks: u32) -> Result<Decode> {
        let connector = tcp::connector("ferry-bench-kv-decode").await?;
        Decode::start_on(connector, &["--pool-blocks", &pool_blocks.to_string()]).await
    }

    /// Starts this program again with `--peer` and `peer_args` as the prefill peer (which must
    /// run [`run_peer_on`] on the same backend as `connector`).
    pub async fn start_on(connector: Connector, peer_args: &[&str]) -> Result<Decode> {
        let peer = PeerProcess::spawn(peer_args).await?;
        Ok(Decode { connector, peer })
    }

    /// Measures `set` of `count` blocks: one verified warm-up, then timed reads as `plan`
    /// says, into a decode pool of `pool_blocks` blocks.
    pub async fn measure(
        &mut self,
        set: BlockSet,
        count: u32,
        pool_blocks: u32,
        plan: IterationPlan,
    ) -> Result<KvRow> {
        let layout = per_layer_layout(llama_70b(pool_blocks))?;
        let (source, destination) = set.ids(count, pool_blocks);
        let mut memory = allocations(&layout);
        let mut pool = KvPool::new(
            &self.connector,
            layout,
            KvMemory::exclusive_per_layer(memory.iter_mut().map(Vec::as_mut_slice).collect()),
        )?;
        // One verified warm-up, not timed.
        let warm = self.read(&mut pool, &source, &destination).await?;
        let verified = verify(&pool, &source, &destination);
        let (mut samples, mut begins) = (Vec::new(), Vec::new());
        let mut spent = Duration::ZERO;
        while plan.wants_more(samples.len(), spent) {
            let timed = self.read(&mut pool, &source, &destination).await?;
            spent += timed.elapsed;
            samples.push(timed.elapsed);
            begins.push(timed.begin);
        }
        Ok(KvRow {
            set,
            blocks: count,
            bytes: warm.bytes,
            descriptors: warm.descriptors,
            chunks: warm.chunks,
            summary: Summary::from_samples(samples).ok_or("no timed read")?,
            begin: Summary::from_samples(begins).ok_or("no timed read")?,
            verified,
        })
    }

    async fn read(
        &mut self,
        pool: &mut KvPool<'_>,
        source: &[u32],
        destination: &[u32],
    ) -> Result<Timed> {
        let wanted = pool.block_set(destination)?;
        let command = json!({
            "op": "kv_readable",
            "ids": source,
            "peer": serde_json::to_value(&wanted)?,
        });
        self.peer.io.send(&command).await?;
        let limit = operation_limit(1 << 30);
        let line = self.peer.io.recv_line(limit).await?;
        if let Some(e) = serde_json::from_str::<Value>(line)
            .ok()
            .as_ref()
            .and_then(error_of)
        {
            return Err(format!("the prefill peer could not expose the blocks: {e}").into());
        }
        let offer = KvOffer::from_json(line)?;
        let start = Instant::now();
        let mut read = pool.begin_read(destination, &offer).await?;
        let begin = start.elapsed();
        tokio::time::timeout(limit, read.wait_for_completion())
            .await
            .map_err(|_| format!("the read did not end within {limit:?}"))??;
        let elapsed = start.elapsed();
        let figures = Timed {
            elapsed,
            begin,
            descriptors: read.descriptor_count(),
            chunks: read.chunk_count(),
            bytes: read.bytes(),
        };
        drop(read);
        self.peer.recv_done("readable", limit).await?;
        Ok(figures)
    }

    /// Tells the peer to exit.
    pub async fn exit(self) -> Result<()> {
        self.peer.exit().await
    }
}

/// Whether every destination chunk holds its source chunk's pattern.
fn verify(pool: &KvPool<'_>, source: &[u32], destination: &[u32]) -> bool {
    let chunk = pool.layout().chunk_bytes() as usize;
    (0..80).all(|layer| {
        (0..2).all(|plane| {
            source.iter().zip(destination).all(|(&s, &d)| {
                pool.chunk(layer, plane, d).is_some_and(|bytes| {
                    bytes == ferry::demo::pattern(chunk, chunk_seed(layer, plane, s))
                })
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sets_have_the_adjacency_they_claim() {
        for set in BlockSet::ALL {
            let (source, destination) = set.ids(20, 48);
            assert_eq!(source.len(), 20);
            assert_eq!(destination.len(), 20);
            let mut sorted = destination.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 20, "{set:?}: no destination twice");
            assert!(destination.iter().all(|&d| d < 48));
            let adjacent = destination.windows(2).filter(|w| w[1] == w[0] + 1).count();
            match set {
                BlockSet::Contiguous => assert_eq!(adjacent, 19),
                BlockSet::Runs => assert_eq!(adjacent, 20 - 3),
                BlockSet::Scattered => assert_eq!(adjacent, 0),
            }
        }
    }

    #[test]
    fn the_llama_chunk_is_32_kib() {
        let layout = per_layer_layout(llama_70b(4)).unwrap();
        assert_eq!(layout.chunk_bytes(), 32 << 10);
        assert_eq!(layout.allocations(), 80);
    }
}

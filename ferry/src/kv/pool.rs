//! `KvPool`: a layout bound to memory and registered once; transfers of block lists.

use std::ops::{Deref, DerefMut};

use ferry_core::{Descriptor, RdmaMetadata, Side};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::plan::{check_ids, plan, Run};
use super::{KvError, KvLayout};
use crate::operation::{Read, Readable, Writable, Write};
use crate::{Connector, Operation, Registration};

/// The memory a pool lives in: one allocation, or one per layer (as the layout's
/// [`KvStrides::layer`](super::KvStrides::layer) says), borrowed exclusively (the pool can
/// send and receive) or shared (it can only send).
#[derive(Debug)]
pub struct KvMemory<'m> {
    allocations: Allocations<'m>,
}

#[derive(Debug)]
enum Allocations<'m> {
    Shared(Vec<&'m [u8]>),
    Exclusive(Vec<&'m mut [u8]>),
}

impl<'m> KvMemory<'m> {
    /// One allocation the pool may write into.
    pub fn exclusive(memory: &'m mut [u8]) -> Self {
        Self::exclusive_per_layer(vec![memory])
    }

    /// One allocation per layer, which the pool may write into.
    pub fn exclusive_per_layer(layers: Vec<&'m mut [u8]>) -> Self {
        KvMemory {
            allocations: Allocations::Exclusive(layers),
        }
    }

    /// One allocation the pool only reads.
    pub fn shared(memory: &'m [u8]) -> Self {
        Self::shared_per_layer(vec![memory])
    }

    /// One allocation per layer, which the pool only reads.
    pub fn shared_per_layer(layers: Vec<&'m [u8]>) -> Self {
        KvMemory {
            allocations: Allocations::Shared(layers),
        }
    }

    fn len(&self) -> usize {
        match &self.allocations {
            Allocations::Shared(a) => a.len(),
            Allocations::Exclusive(a) => a.len(),
        }
    }

    fn allocation(&self, index: usize) -> &[u8] {
        match &self.allocations {
            Allocations::Shared(a) => a[index],
            Allocations::Exclusive(a) => a[index],
        }
    }
}

/// A KV-cache pool: a [`KvLayout`] bound to memory and registered with a Connector once, for
/// as long as the pool lives. Transfers borrow the pool: a source shares it, a destination
/// holds it exclusively until the operation is dropped.
pub struct KvPool<'m> {
    connector: Connector,
    layout: KvLayout,
    memory: KvMemory<'m>,
    _registration: Registration<'m>,
}

impl std::fmt::Debug for KvPool<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvPool")
            .field("layout", &self.layout)
            .field("allocations", &self.memory.len())
            .finish()
    }
}

impl<'m> KvPool<'m> {
    /// Binds `layout` to `memory` and registers the bytes it reaches with `connector`, once.
    pub fn new(
        connector: &Connector,
        layout: KvLayout,
        memory: KvMemory<'m>,
    ) -> Result<Self, KvError> {
        if memory.len() != layout.allocations() {
            return Err(KvError::AllocationCount {
                expected: layout.allocations(),
                found: memory.len(),
            });
        }
        let mut regions = Vec::with_capacity(memory.len());
        for index in 0..memory.len() {
            let allocation = memory.allocation(index);
            let reached = usize::try_from(layout.span())
                .ok()
                .filter(|&needed| needed <= allocation.len())
                .ok_or(KvError::MemoryTooSmall {
                    allocation: index,
                    needed: layout.span(),
                    len: allocation.len(),
                })?;
            regions.push(Descriptor::from_slice(&allocation[..reached]).region());
        }
        let registration = connector.register_regions(&regions)?;
        Ok(KvPool {
            connector: connector.clone(),
            layout,
            memory,
            _registration: registration,
        })
    }

    /// The layout.
    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    /// The bytes of chunk `(layer, plane, block)` (plane 0 is K, 1 is V; 0 when fused), or
    /// `None` if it is out of range.
    pub fn chunk(&self, layer: u32, plane: u64, block: u32) -> Option<&[u8]> {
        let (allocation, offset) = self.place(layer, plane, block)?;
        let start = offset as usize;
        Some(&self.memory.allocation(allocation)[start..start + self.chunk_len()])
    }

    /// The bytes of chunk `(layer, plane, block)` to fill, or `None` if it is out of range or
    /// the pool's memory is shared.
    pub fn chunk_mut(&mut self, layer: u32, plane: u64, block: u32) -> Option<&mut [u8]> {
        let (allocation, offset) = self.place(layer, plane, block)?;
        let (start, len) = (offset as usize, self.chunk_len());
        match &mut self.memory.allocations {
            Allocations::Exclusive(a) => Some(&mut a[allocation][start..start + len]),
            Allocations::Shared(_) => None,
        }
    }

    fn place(&self, layer: u32, plane: u64, block: u32) -> Option<(usize, u64)> {
        let shape = self.layout.shape();
        let inside = layer < shape.layers && plane < shape.planes.count() && block < shape.blocks;
        inside.then(|| self.layout.position(layer, plane, block))
    }

    fn chunk_len(&self) -> usize {
        // Fits: the pool's memory holds the whole span.
        self.layout.chunk_bytes() as usize
    }

    /// What to tell the peer before it exposes its side of a transfer of `ids`: this pool's
    /// layout, its compatibility hash and the ids, in transfer order.
    pub fn block_set(&self, ids: &[u32]) -> Result<KvBlockSet, KvError> {
        check_ids(&self.layout, ids, Side::Local)?;
        Ok(KvBlockSet {
            compat_hash: hash_text(self.layout.compat_hash()),
            layout: self.layout,
            block_ids: ids.to_vec(),
        })
    }

    /// Exposes blocks `ids` for the peer that sent `peer` to read into its blocks (the i-th
    /// of `ids` into the peer's i-th). Send the returned offer to that peer.
    pub async fn create_readable(
        &self,
        ids: &[u32],
        peer: &KvBlockSet,
    ) -> Result<(KvOperation<'_, Readable>, KvOffer), KvError> {
        let runs = plan(&self.layout, ids, &peer.checked()?, &peer.block_ids)?;
        let blocks = self.block_set(ids)?;
        let descriptors = self.sources(&runs);
        let operation = self.connector.create_readable(descriptors).await?;
        let offer = KvOffer {
            blocks,
            metadata: operation.metadata().clone(),
        };
        Ok((KvOperation::new(operation, &runs, &self.layout), offer))
    }

    /// Exposes blocks `ids` for the peer that sent `peer` to write into (its i-th block into
    /// the i-th of `ids`). Send the returned offer to that peer.
    pub async fn create_writable(
        &mut self,
        ids: &[u32],
        peer: &KvBlockSet,
    ) -> Result<(KvOperation<'_, Writable>, KvOffer), KvError> {
        let runs = plan(&self.layout, ids, &peer.checked()?, &peer.block_ids)?;
        let blocks = self.block_set(ids)?;
        let layout = self.layout;
        let connector = self.connector.clone();
        let descriptors = self.destinations(ids, &runs)?;
        let operation = connector.create_writable(descriptors).await?;
        let offer = KvOffer {
            blocks,
            metadata: operation.metadata().clone(),
        };
        Ok((KvOperation::new(operation, &runs, &layout), offer))
    }

    /// Reads the peer's offered blocks into blocks `ids` (the i-th of the offer's into the
    /// i-th of `ids`).
    pub async fn begin_read(
        &mut self,
        ids: &[u32],
        offer: &KvOffer,
    ) -> Result<KvOperation<'_, Read>, KvError> {
        let blocks = &offer.blocks;
        let runs = plan(&self.layout, ids, &blocks.checked()?, &blocks.block_ids)?;
        let layout = self.layout;
        let connector = self.connector.clone();
        let descriptors = self.destinations(ids, &runs)?;
        let operation = connector.begin_read(&offer.metadata, descriptors).await?;
        Ok(KvOperation::new(operation, &runs, &layout))
    }

    /// Writes blocks `ids` into the peer's offered blocks (the i-th of `ids` into the i-th of
    /// the offer's).
    pub async fn begin_write(
        &self,
        ids: &[u32],
        offer: &KvOffer,
    ) -> Result<KvOperation<'_, Write>, KvError> {
        let blocks = &offer.blocks;
        let runs = plan(&self.layout, ids, &blocks.checked()?, &blocks.block_ids)?;
        let descriptors = self.sources(&runs);
        let operation = self
            .connector
            .begin_write(descriptors, &offer.metadata)
            .await?;
        Ok(KvOperation::new(operation, &runs, &self.layout))
    }

    /// One shared descriptor per run.
    fn sources(&self, runs: &[Run]) -> Vec<Descriptor<'_>> {
        runs.iter()
            .map(|run| {
                let (start, len) = (run.local.offset as usize, run.len as usize);
                let allocation = self.memory.allocation(run.local.allocation);
                Descriptor::from_slice(&allocation[start..start + len])
            })
            .collect()
    }

    /// One exclusive descriptor per run, in run order: the allocations are split at the runs,
    /// which do not overlap because `ids` names no block twice.
    fn destinations(&mut self, ids: &[u32], runs: &[Run]) -> Result<Vec<Descriptor<'_>>, KvError> {
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(KvError::DuplicateBlock { id: pair[0] });
        }
        let Allocations::Exclusive(allocations) = &mut self.memory.allocations else {
            return Err(KvError::ReadOnly);
        };
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_unstable_by_key(|&i| (runs[i].local.allocation, runs[i].local.offset));
        let mut pieces: Vec<Option<&mut [u8]>> = runs.iter().map(|_| None).collect();
        let mut rests: Vec<(u64, &mut [u8])> = allocations
            .iter_mut()
            .map(|allocation| (0, &mut **allocation))
            .collect();
        for index in order {
            let run = &runs[index];
            let (consumed, rest) = &mut rests[run.local.allocation];
            // Runs of distinct blocks are disjoint, and sorted they start at or after what
            // earlier ones consumed.
            let skip = (run.local.offset - *consumed) as usize;
            let (piece, after) = std::mem::take(rest)[skip..].split_at_mut(run.len as usize);
            *consumed = run.local.offset + run.len;
            *rest = after;
            pieces[index] = Some(piece);
        }
        Ok(pieces
            .into_iter()
            .flatten()
            .map(Descriptor::from_mut_slice)
            .collect())
    }
}

fn hash_text(hash: u64) -> String {
    format!("{hash:016x}")
}

/// What one side tells the other before a transfer: its layout, the layout's compatibility
/// hash, and its block ids in transfer order. JSON on the wire ([`KvBlockSet::to_json`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvBlockSet {
    /// [`KvLayout::compat_hash`] of `layout`, 16 hex digits.
    pub compat_hash: String,
    /// The sender's layout (checked again on arrival).
    pub layout: KvLayout,
    /// The sender's block ids.
    pub block_ids: Vec<u32>,
}

impl KvBlockSet {
    /// The set as JSON.
    pub fn to_json(&self) -> String {
        // A plain struct of numbers and strings always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a set a peer sent; its layout is validated as it parses.
    pub fn from_json(json: &str) -> Result<Self, KvError> {
        serde_json::from_str(json).map_err(|e| KvError::Invalid {
            what: "block set",
            reason: e.to_string(),
        })
    }

    /// The layout, once the carried hash is checked against it.
    fn checked(&self) -> Result<KvLayout, KvError> {
        let computed = hash_text(self.layout.compat_hash());
        if computed != self.compat_hash {
            return Err(KvError::HashMismatch {
                carried: self.compat_hash.clone(),
                computed,
            });
        }
        Ok(self.layout)
    }
}

/// What the passive side of a transfer hands its peer: its own block set and the
/// operation's metadata (Dynamo's `RdmaMetadata` JSON, unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvOffer {
    /// The passive side's layout and block ids.
    pub blocks: KvBlockSet,
    /// The passive operation's metadata.
    pub metadata: RdmaMetadata,
}

impl KvOffer {
    /// The offer as JSON: `{"blocks": {…}, "metadata": {…}}`.
    pub fn to_json(&self) -> String {
        let metadata: Value = serde_json::from_str(&self.metadata.to_json()).unwrap_or(Value::Null);
        serde_json::json!({ "blocks": self.blocks, "metadata": metadata }).to_string()
    }

    /// Parses an offer a peer sent.
    pub fn from_json(json: &str) -> Result<Self, KvError> {
        let invalid = |reason: String| KvError::Invalid {
            what: "offer",
            reason,
        };
        let mut value: Value = serde_json::from_str(json).map_err(|e| invalid(e.to_string()))?;
        let blocks = serde_json::from_value(value["blocks"].take())
            .map_err(|e| invalid(format!("blocks: {e}")))?;
        let metadata = RdmaMetadata::from_json(&value["metadata"].to_string())
            .map_err(|e| invalid(format!("metadata: {e}")))?;
        Ok(KvOffer { blocks, metadata })
    }
}

/// A block transfer: an [`Operation`] (it derefs to one) with what the plan made of it.
#[must_use = "dropping an operation cancels it"]
pub struct KvOperation<'p, K> {
    operation: Operation<'p, K>,
    descriptors: usize,
    chunks: u64,
    bytes: u64,
}

impl<'p, K> KvOperation<'p, K> {
    fn new(operation: Operation<'p, K>, runs: &[Run], layout: &KvLayout) -> Self {
        let bytes: u64 = runs.iter().map(|run| run.len).sum();
        KvOperation {
            operation,
            descriptors: runs.len(),
            chunks: bytes / layout.chunk_bytes(),
            bytes,
        }
    }

    /// Descriptors the transfer used: runs of chunks adjacent on both sides.
    pub fn descriptor_count(&self) -> usize {
        self.descriptors
    }

    /// Chunks it moves: layers × planes × blocks; one descriptor each without coalescing.
    pub fn chunk_count(&self) -> u64 {
        self.chunks
    }

    /// Bytes it moves.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The operation itself.
    pub fn into_operation(self) -> Operation<'p, K> {
        self.operation
    }
}

impl<'p, K> Deref for KvOperation<'p, K> {
    type Target = Operation<'p, K>;

    fn deref(&self) -> &Self::Target {
        &self.operation
    }
}

impl<K> DerefMut for KvOperation<'_, K> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.operation
    }
}

impl<K> std::fmt::Debug for KvOperation<'_, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvOperation")
            .field("operation", &self.operation)
            .field("descriptors", &self.descriptors)
            .field("chunks", &self.chunks)
            .finish()
    }
}

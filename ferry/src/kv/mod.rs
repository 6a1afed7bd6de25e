//! KV-cache blocks moved by id: pools described once, registered once, and transfers of block
//! lists in one operation, with adjacent blocks coalesced into single descriptors.
//!
//! Engines keep the KV cache in large pools (per layer, K and V, blocks of a fixed number of
//! tokens) and move lists of block ids per request. One descriptor per block per layer is what
//! makes frameworks build hundreds of thousands of descriptors for one transfer; here a run of
//! blocks that is adjacent on both sides is one descriptor.
//!
//! ```text
//!  decode (destination blocks)                     prefill (source blocks)
//!  pool.block_set(&dst_ids) ──── KvBlockSet (JSON) ───▶ pool.create_readable(&src_ids, &set)
//!  pool.begin_read(&dst_ids, &offer) ◀── KvOffer (JSON) ── (the readable and its offer)
//!  both sides wait_for_completion()
//! ```
//!
//! - [`KvLayout`]: a pool's shape and strides, validated on construction (zero sizes,
//!   overflows, overlapping chunks are typed errors).
//! - [`KvPool`]: a layout bound to memory (host memory now), registered once with a
//!   Connector ([`Connector::register`](crate::Connector::register)'s pinned registration).
//! - [`KvBlockSet`]: what one side tells the other before a transfer: its layout, the layout's
//!   compatibility hash and its block ids in transfer order. The passive side needs its peer's
//!   set because both sides must cut the transfer into the same descriptors: a run ends where
//!   either side's blocks stop being adjacent.
//! - [`KvOffer`]: what the passive side hands back: its own block set and the operation's
//!   [`RdmaMetadata`](crate::RdmaMetadata).
//!
//! Layouts that cannot pair (different layers, heads, head size, element size, tokens per
//! block, or fused against separate K and V) are refused with [`KvError::LayoutMismatch`],
//! naming the field, before any operation is created. Block counts and strides are each
//! side's own: a prefill pool and a decode pool of different sizes pair.
//!
//! Ids pair by position: the i-th id of one list moves to or from the i-th of the other.
//! A source list may repeat an id (one block copied to several places); a destination list
//! may not ([`KvError::DuplicateBlock`]).
//!
//! ```
//! use ferry::kv::{KvLayout, KvMemory, KvPlanes, KvPool, KvShape};
//! use ferry::Connector;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ferry::kv::KvError> {
//! let shape = KvShape {
//!     layers: 4,
//!     planes: KvPlanes::Separate,
//!     blocks: 32,
//!     tokens_per_block: 16,
//!     kv_heads: 2,
//!     head_dim: 8,
//!     element_size: 2,
//! };
//! let layout = KvLayout::new(shape)?;
//! let prefill = Connector::auto().await?;
//! let decode = Connector::auto().await?;
//! let mut prefill_memory = vec![7u8; layout.span() as usize];
//! let mut decode_memory = vec![0u8; layout.span() as usize];
//! let source = KvPool::new(&prefill, layout, KvMemory::exclusive(&mut prefill_memory))?;
//! let mut destination = KvPool::new(&decode, layout, KvMemory::exclusive(&mut decode_memory))?;
//!
//! let wanted = destination.block_set(&[4, 5, 6, 20])?; // decode → prefill, as JSON
//! let (mut readable, offer) = source.create_readable(&[0, 1, 2, 9], &wanted).await?;
//! let mut read = destination.begin_read(&[4, 5, 6, 20], &offer).await?; // prefill → decode
//! assert_eq!(read.descriptor_count(), 4 * 2 * 2); // per layer and plane: [0, 1, 2] and [9]
//! tokio::try_join!(read.wait_for_completion(), readable.wait_for_completion())?;
//! # Ok(()) }
//! ```

use ferry_core::Side;

mod layout;
mod plan;
mod pool;

pub use layout::{KvLayout, KvPlanes, KvShape, KvStrides};
pub use plan::MAX_CHUNKS;
pub use pool::{KvBlockSet, KvMemory, KvOffer, KvOperation, KvPool};

/// Everything a KV-cache transfer can refuse, and the transfer's own errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// A size in a layout is zero.
    #[error("the layout's {field} is zero")]
    ZeroSize {
        /// Which shape field.
        field: &'static str,
    },
    /// A size or offset in a layout does not fit in 64 bits.
    #[error("the layout's {what} overflows")]
    Overflow {
        /// Which quantity.
        what: &'static str,
    },
    /// Two chunks of a layout would share bytes.
    #[error("chunks overlap: {what}")]
    Overlap {
        /// Which stride is too small.
        what: &'static str,
    },
    /// The two sides' layouts cannot pair.
    #[error("KV layouts differ in {field}: {local} here, {remote} at the peer")]
    LayoutMismatch {
        /// The first differing field, in the order layers checked last: `planes`, `layers`,
        /// `tokens_per_block`, `kv_heads`, `head_dim`, `element_size`.
        field: &'static str,
        /// This side's value.
        local: String,
        /// The peer's value.
        remote: String,
    },
    /// A block set's compatibility hash does not match the layout it carries.
    #[error("the peer's compatibility hash {carried} does not match its layout ({computed})")]
    HashMismatch {
        /// The hash it carried.
        carried: String,
        /// The hash of the layout it carried.
        computed: String,
    },
    /// The two block lists differ in length.
    #[error("block count mismatch: {local} here, {remote} at the peer")]
    BlockCountMismatch {
        /// This side's count.
        local: usize,
        /// The peer's count.
        remote: usize,
    },
    /// An empty block list.
    #[error("no blocks to move")]
    NoBlocks,
    /// A block id past the end of its pool.
    #[error("{side} block {id} is out of range: the pool has {blocks} blocks")]
    BlockOutOfRange {
        /// Whose list.
        side: Side,
        /// The id.
        id: u32,
        /// The pool's block count.
        blocks: u32,
    },
    /// A destination list names a block twice.
    #[error("destination block {id} is listed twice")]
    DuplicateBlock {
        /// The id.
        id: u32,
    },
    /// A transfer of more chunks than [`MAX_CHUNKS`].
    #[error("{chunks} chunks in one transfer; at most {most}")]
    TooManyChunks {
        /// Layers × planes × blocks.
        chunks: u64,
        /// The limit.
        most: u64,
    },
    /// A transfer that would need more descriptors than metadata may list
    /// ([`MAX_DESCRIPTORS`](crate::core::MAX_DESCRIPTORS)): move its blocks in several.
    #[error("{descriptors} descriptors in one transfer; metadata lists at most {most}")]
    TooManyDescriptors {
        /// Runs the plan made.
        descriptors: usize,
        /// The limit.
        most: usize,
    },
    /// The memory given to a pool has the wrong number of allocations for its layout.
    #[error("the layout needs {expected} allocation(s), the memory has {found}")]
    AllocationCount {
        /// One, or one per layer.
        expected: usize,
        /// What was given.
        found: usize,
    },
    /// An allocation is smaller than the layout reaches.
    #[error("allocation {allocation} holds {len} bytes; the layout reaches {needed}")]
    MemoryTooSmall {
        /// Which allocation.
        allocation: usize,
        /// Bytes the layout reaches in it.
        needed: u64,
        /// Bytes it has.
        len: usize,
    },
    /// A pool over shared memory was asked to receive bytes.
    #[error("the pool's memory is shared (read-only): it can only be a source")]
    ReadOnly,
    /// A block set or offer that does not parse.
    #[error("invalid KV {what}: {reason}")]
    Invalid {
        /// `block set` or `offer`.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The operation itself failed (pairing, backend, peer).
    #[error(transparent)]
    Transfer(#[from] crate::Error),
}

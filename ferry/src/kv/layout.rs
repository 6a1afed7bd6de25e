//! `KvLayout`: where every block of a KV-cache pool lives, validated once.

use serde::{Deserialize, Serialize};

use super::KvError;

/// Whether K and V of a block are stored apart or together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvPlanes {
    /// K and V are two planes of blocks, each block `tokens × heads × head_dim` elements
    /// (vLLM's per-layer `[2, blocks, tokens, heads, head_dim]`).
    Separate,
    /// K and V of a block are adjacent and move as one chunk of twice the size
    /// (`[blocks, 2, tokens, heads, head_dim]`).
    Fused,
}

impl KvPlanes {
    /// How many planes a layer has.
    pub fn count(self) -> u64 {
        match self {
            KvPlanes::Separate => 2,
            KvPlanes::Fused => 1,
        }
    }
}

/// The shape of a pool: what both sides of a transfer must agree on, and its block count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KvShape {
    /// Transformer layers.
    pub layers: u32,
    /// K and V apart or fused.
    pub planes: KvPlanes,
    /// Blocks in the pool (each side's own; the two sides may differ).
    pub blocks: u32,
    /// Tokens per block.
    pub tokens_per_block: u32,
    /// KV heads per layer.
    pub kv_heads: u32,
    /// Elements per head.
    pub head_dim: u32,
    /// Bytes per element (2 for BF16).
    pub element_size: u32,
}

/// Byte distances in a pool. Each side describes its own memory, so the two sides of a
/// transfer may use different strides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KvStrides {
    /// From one block to the next, within a plane.
    pub block: u64,
    /// From the K plane to the V plane of a layer (unused, and 0, when fused).
    pub plane: u64,
    /// From one layer to the next in one allocation, or `None` when each layer has an
    /// allocation of its own (a list of per-layer tensors).
    pub layer: Option<u64>,
}

/// A KV-cache pool described once: its shape and strides, checked on construction so that no
/// two chunks overlap and no offset overflows.
///
/// A *chunk* is what one block holds of one layer's plane: `tokens_per_block × kv_heads ×
/// head_dim × element_size` bytes (twice that when fused). Chunk `(layer, plane, block)`
/// starts `layer × strides.layer + plane × strides.plane + block × strides.block` bytes into
/// the pool (into the layer's own allocation when `strides.layer` is `None`).
///
/// ```
/// use ferry::kv::{KvLayout, KvPlanes, KvShape};
///
/// // Llama-3-70B: 80 layers, 8 KV heads of 128, BF16, 16-token blocks.
/// let layout = KvLayout::new(KvShape {
///     layers: 80,
///     planes: KvPlanes::Separate,
///     blocks: 64,
///     tokens_per_block: 16,
///     kv_heads: 8,
///     head_dim: 128,
///     element_size: 2,
/// })?;
/// assert_eq!(layout.chunk_bytes(), 32 << 10);
/// assert_eq!(layout.span(), 80 * 2 * 64 * (32 << 10));
/// # Ok::<(), ferry::kv::KvError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawLayout", into = "RawLayout")]
pub struct KvLayout {
    shape: KvShape,
    strides: KvStrides,
    chunk: u64,
    layer_extent: u64,
    span: u64,
}

/// The unchecked form a layout travels in.
#[derive(Serialize, Deserialize)]
struct RawLayout {
    shape: KvShape,
    strides: KvStrides,
}

impl TryFrom<RawLayout> for KvLayout {
    type Error = KvError;

    fn try_from(raw: RawLayout) -> Result<Self, KvError> {
        KvLayout::with_strides(raw.shape, raw.strides)
    }
}

impl From<KvLayout> for RawLayout {
    fn from(layout: KvLayout) -> Self {
        RawLayout {
            shape: layout.shape,
            strides: layout.strides,
        }
    }
}

impl KvLayout {
    /// A pool in one allocation, packed: layer after layer, within a layer the K plane then
    /// the V plane (or the fused plane), within a plane block after block.
    pub fn new(shape: KvShape) -> Result<Self, KvError> {
        let chunk = chunk_bytes(&shape)?;
        let plane = chunk
            .checked_mul(u64::from(shape.blocks))
            .ok_or(KvError::Overflow { what: "plane size" })?;
        let layer = plane
            .checked_mul(shape.planes.count())
            .ok_or(KvError::Overflow { what: "layer size" })?;
        let strides = KvStrides {
            block: chunk,
            plane: if shape.planes == KvPlanes::Fused {
                0
            } else {
                plane
            },
            layer: Some(layer),
        };
        Self::with_strides(shape, strides)
    }

    /// A pool with the given strides: rejected if a size is zero, an offset overflows, or two
    /// chunks overlap.
    ///
    /// Overlap is judged dimension by dimension, from the smallest stride up: each stride must
    /// cover everything the smaller ones span. Every packed or padded layout engines use
    /// passes; an interleaving that does not nest this way is refused as overlapping.
    pub fn with_strides(shape: KvShape, strides: KvStrides) -> Result<Self, KvError> {
        for (field, value) in [
            ("layers", shape.layers),
            ("blocks", shape.blocks),
            ("tokens_per_block", shape.tokens_per_block),
            ("kv_heads", shape.kv_heads),
            ("head_dim", shape.head_dim),
            ("element_size", shape.element_size),
        ] {
            if value == 0 {
                return Err(KvError::ZeroSize { field });
            }
        }
        let chunk = chunk_bytes(&shape)?;
        let planes = shape.planes.count();
        if shape.planes == KvPlanes::Fused && strides.plane != 0 {
            return Err(KvError::Overlap {
                what: "a fused layout has one plane: its plane stride must be 0",
            });
        }
        let mut dims = vec![("block", strides.block, u64::from(shape.blocks))];
        if planes > 1 {
            dims.push(("plane", strides.plane, planes));
        }
        let layer_extent = nested_extent(chunk, &mut dims)?;
        let span = match strides.layer {
            Some(layer) => nested_extent(
                layer_extent,
                &mut [("layer", layer, u64::from(shape.layers))],
            )?,
            None => layer_extent,
        };
        Ok(KvLayout {
            shape,
            strides,
            chunk,
            layer_extent,
            span,
        })
    }

    /// The shape.
    pub fn shape(&self) -> &KvShape {
        &self.shape
    }

    /// The strides.
    pub fn strides(&self) -> &KvStrides {
        &self.strides
    }

    /// Bytes of one chunk: one block of one layer's plane.
    pub fn chunk_bytes(&self) -> u64 {
        self.chunk
    }

    /// Bytes one layer's chunks reach, from the layer's first byte.
    pub fn layer_extent(&self) -> u64 {
        self.layer_extent
    }

    /// Bytes the whole pool reaches in one allocation (with per-layer allocations, what each
    /// layer's allocation must hold).
    pub fn span(&self) -> u64 {
        self.span
    }

    /// How many allocations the pool lives in: 1, or one per layer.
    pub fn allocations(&self) -> usize {
        match self.strides.layer {
            Some(_) => 1,
            None => self.shape.layers as usize,
        }
    }

    /// Where chunk `(layer, plane, block)` starts: the allocation and the byte offset in it.
    /// The caller has checked the indices against the shape.
    pub(crate) fn position(&self, layer: u32, plane: u64, block: u32) -> (usize, u64) {
        // Cannot overflow: `with_strides` bounded every offset by `span`.
        let within = plane * self.strides.plane + u64::from(block) * self.strides.block;
        match self.strides.layer {
            Some(stride) => (0, u64::from(layer) * stride + within),
            None => (layer as usize, within),
        }
    }

    /// A hash of what two sides must agree on to pair (every shape field except the block
    /// count; strides are each side's own business), as vLLM's compatibility hash: FNV-1a 64
    /// over a versioned text.
    pub fn compat_hash(&self) -> u64 {
        let s = &self.shape;
        let text = format!(
            "ferry-kv/1 layers={} planes={:?} tokens_per_block={} kv_heads={} head_dim={} \
             element_size={}",
            s.layers, s.planes, s.tokens_per_block, s.kv_heads, s.head_dim, s.element_size
        );
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// The first field, in a fixed order, where `remote` cannot pair with this layout.
    pub fn incompatibility(&self, remote: &KvLayout) -> Option<KvError> {
        let (a, b) = (&self.shape, &remote.shape);
        if a.planes != b.planes {
            return Some(KvError::LayoutMismatch {
                field: "planes",
                local: format!("{:?}", a.planes),
                remote: format!("{:?}", b.planes),
            });
        }
        [
            ("layers", a.layers, b.layers),
            ("tokens_per_block", a.tokens_per_block, b.tokens_per_block),
            ("kv_heads", a.kv_heads, b.kv_heads),
            ("head_dim", a.head_dim, b.head_dim),
            ("element_size", a.element_size, b.element_size),
        ]
        .into_iter()
        .find(|(_, local, remote)| local != remote)
        .map(|(field, local, remote)| KvError::LayoutMismatch {
            field,
            local: local.to_string(),
            remote: remote.to_string(),
        })
    }
}

fn chunk_bytes(shape: &KvShape) -> Result<u64, KvError> {
    [
        shape.kv_heads,
        shape.head_dim,
        shape.element_size,
        match shape.planes {
            KvPlanes::Separate => 1,
            KvPlanes::Fused => 2, // K and V together
        },
    ]
    .into_iter()
    .try_fold(u64::from(shape.tokens_per_block), |acc, factor| {
        acc.checked_mul(u64::from(factor))
    })
    .ok_or(KvError::Overflow { what: "chunk size" })
}

/// The bytes `dims` reach from a unit of `inner` bytes, checking that each dimension, from
/// the smallest stride up, steps over everything the smaller ones reach.
fn nested_extent(inner: u64, dims: &mut [(&'static str, u64, u64)]) -> Result<u64, KvError> {
    dims.sort_by_key(|&(_, stride, _)| stride);
    let mut extent = inner;
    for &(name, stride, count) in dims.iter() {
        if count <= 1 {
            continue;
        }
        if stride < extent {
            return Err(KvError::Overlap {
                what: match name {
                    "block" => "the block stride is smaller than what it must step over",
                    "plane" => "the plane stride is smaller than what it must step over",
                    _ => "the layer stride is smaller than a layer",
                },
            });
        }
        extent = stride
            .checked_mul(count - 1)
            .and_then(|last| last.checked_add(extent))
            .ok_or(KvError::Overflow { what: "pool size" })?;
    }
    Ok(extent)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn shape(planes: KvPlanes) -> KvShape {
        KvShape {
            layers: 3,
            planes,
            blocks: 10,
            tokens_per_block: 2,
            kv_heads: 2,
            head_dim: 4,
            element_size: 2,
        }
    }

    #[test]
    fn packed_layouts_reach_exactly_their_chunks() {
        let separate = KvLayout::new(shape(KvPlanes::Separate)).unwrap();
        assert_eq!(separate.chunk_bytes(), 32);
        assert_eq!(separate.span(), 3 * 2 * 10 * 32);
        assert_eq!(separate.position(1, 1, 3), (0, 640 + 320 + 96));
        let fused = KvLayout::new(shape(KvPlanes::Fused)).unwrap();
        assert_eq!(fused.chunk_bytes(), 64);
        assert_eq!(fused.span(), 3 * 10 * 64);
        assert_eq!(fused.strides().plane, 0);
    }

    #[test]
    fn per_layer_allocations_and_padding() {
        let layout = KvLayout::with_strides(
            shape(KvPlanes::Separate),
            KvStrides {
                block: 48,
                plane: 500,
                layer: None,
            },
        )
        .unwrap();
        assert_eq!(layout.allocations(), 3);
        assert_eq!(layout.span(), 500 + 9 * 48 + 32);
        assert_eq!(layout.position(2, 1, 1), (2, 548));
        // K and V interleaved per block: the plane stride is the smallest.
        let interleaved = KvLayout::with_strides(
            shape(KvPlanes::Separate),
            KvStrides {
                block: 64,
                plane: 32,
                layer: Some(640),
            },
        )
        .unwrap();
        assert_eq!(interleaved.span(), 3 * 640);
    }

    #[test]
    fn zero_sizes_overlaps_and_overflows_are_typed_errors() {
        let mut zero = shape(KvPlanes::Separate);
        zero.head_dim = 0;
        assert_eq!(
            KvLayout::new(zero),
            Err(KvError::ZeroSize { field: "head_dim" })
        );
        let overlapping = KvStrides {
            block: 16,
            plane: 320,
            layer: Some(640),
        };
        assert!(matches!(
            KvLayout::with_strides(shape(KvPlanes::Separate), overlapping),
            Err(KvError::Overlap { .. })
        ));
        let planes_collide = KvStrides {
            block: 32,
            plane: 100,
            layer: Some(640),
        };
        assert!(matches!(
            KvLayout::with_strides(shape(KvPlanes::Separate), planes_collide),
            Err(KvError::Overlap { .. })
        ));
        let layers_collide = KvStrides {
            block: 32,
            plane: 320,
            layer: Some(639),
        };
        assert!(matches!(
            KvLayout::with_strides(shape(KvPlanes::Separate), layers_collide),
            Err(KvError::Overlap { .. })
        ));
        let fused_plane = KvStrides {
            block: 64,
            plane: 64,
            layer: None,
        };
        assert!(matches!(
            KvLayout::with_strides(shape(KvPlanes::Fused), fused_plane),
            Err(KvError::Overlap { .. })
        ));
        let mut huge = shape(KvPlanes::Separate);
        huge.tokens_per_block = u32::MAX;
        huge.kv_heads = u32::MAX;
        huge.head_dim = u32::MAX;
        assert!(matches!(KvLayout::new(huge), Err(KvError::Overflow { .. })));
        let far = KvStrides {
            block: u64::MAX / 4,
            plane: 0,
            layer: None,
        };
        let mut fused = shape(KvPlanes::Fused);
        fused.blocks = 10;
        assert!(matches!(
            KvLayout::with_strides(fused, far),
            Err(KvError::Overflow { .. })
        ));
    }

    #[test]
    fn compatibility_ignores_block_counts_and_strides_and_names_the_difference() {
        let a = KvLayout::new(shape(KvPlanes::Separate)).unwrap();
        let mut bigger = shape(KvPlanes::Separate);
        bigger.blocks = 1000;
        let b = KvLayout::with_strides(
            bigger,
            KvStrides {
                block: 64,
                plane: 64_000,
                layer: None,
            },
        )
        .unwrap();
        assert_eq!(a.compat_hash(), b.compat_hash());
        assert_eq!(a.incompatibility(&b), None);
        let mut other = shape(KvPlanes::Separate);
        other.head_dim = 8;
        let c = KvLayout::new(other).unwrap();
        assert_ne!(a.compat_hash(), c.compat_hash());
        assert_eq!(
            a.incompatibility(&c),
            Some(KvError::LayoutMismatch {
                field: "head_dim",
                local: "4".into(),
                remote: "8".into(),
            })
        );
        let fused = KvLayout::new(shape(KvPlanes::Fused)).unwrap();
        assert!(matches!(
            a.incompatibility(&fused),
            Some(KvError::LayoutMismatch {
                field: "planes",
                ..
            })
        ));
    }

    #[test]
    fn a_layout_travels_as_json_and_is_checked_on_arrival() {
        let layout = KvLayout::new(shape(KvPlanes::Separate)).unwrap();
        let json = serde_json::to_string(&layout).unwrap();
        let back: KvLayout = serde_json::from_str(&json).unwrap();
        assert_eq!(back, layout);
        let forged = json.replace("\"block\":32", "\"block\":8");
        assert!(serde_json::from_str::<KvLayout>(&forged).is_err());
    }
}

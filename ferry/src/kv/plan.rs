//! The descriptors of a block transfer: runs of chunks that are adjacent on both sides.
//!
//! Both sides compute the plan from the same two (layout, block ids) pairs, so they arrive at
//! the same descriptor count and sizes, which ferry's pairing rules require (SPEC §4).

use ferry_core::{Side, MAX_DESCRIPTORS};

use super::{KvError, KvLayout};

/// The most chunks (layers × planes × blocks) one transfer may move.
pub const MAX_CHUNKS: u64 = 1 << 22;

/// Where a run starts on one side: the allocation and the byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) allocation: usize,
    pub(crate) offset: u64,
}

/// One descriptor of the transfer, on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) local: Place,
    pub(crate) remote: Place,
    pub(crate) len: u64,
}

/// Checks `ids` against `layout` on `side`.
pub(crate) fn check_ids(layout: &KvLayout, ids: &[u32], side: Side) -> Result<(), KvError> {
    if ids.is_empty() {
        return Err(KvError::NoBlocks);
    }
    let blocks = layout.shape().blocks;
    match ids.iter().find(|&&id| id >= blocks) {
        Some(&id) => Err(KvError::BlockOutOfRange { side, id, blocks }),
        None => Ok(()),
    }
}

/// The runs that move `local_ids` of `local` to or from `remote_ids` of `remote`, pairing the
/// i-th id of one list with the i-th of the other. Chunks go in a fixed order, layer by
/// layer, plane by plane, then in the order of the lists; consecutive chunks share a run when
/// they are adjacent in the same allocation on both sides.
pub(crate) fn plan(
    local: &KvLayout,
    local_ids: &[u32],
    remote: &KvLayout,
    remote_ids: &[u32],
) -> Result<Vec<Run>, KvError> {
    if let Some(mismatch) = local.incompatibility(remote) {
        return Err(mismatch);
    }
    if local_ids.len() != remote_ids.len() {
        return Err(KvError::BlockCountMismatch {
            local: local_ids.len(),
            remote: remote_ids.len(),
        });
    }
    check_ids(local, local_ids, Side::Local)?;
    check_ids(remote, remote_ids, Side::Remote)?;
    let shape = local.shape();
    let planes = shape.planes.count();
    let chunks = u64::from(shape.layers) * planes * local_ids.len() as u64;
    if chunks > MAX_CHUNKS {
        return Err(KvError::TooManyChunks {
            chunks,
            most: MAX_CHUNKS,
        });
    }
    let chunk = local.chunk_bytes();
    let mut runs: Vec<Run> = Vec::new();
    for layer in 0..shape.layers {
        for plane in 0..planes {
            for (&l, &r) in local_ids.iter().zip(remote_ids) {
                let (la, lo) = local.position(layer, plane, l);
                let (ra, ro) = remote.position(layer, plane, r);
                if let Some(last) = runs.last_mut() {
                    let adjacent = last.local.allocation == la
                        && last.local.offset + last.len == lo
                        && last.remote.allocation == ra
                        && last.remote.offset + last.len == ro;
                    if adjacent {
                        last.len += chunk;
                        continue;
                    }
                }
                runs.push(Run {
                    local: Place {
                        allocation: la,
                        offset: lo,
                    },
                    remote: Place {
                        allocation: ra,
                        offset: ro,
                    },
                    len: chunk,
                });
            }
        }
    }
    if runs.len() > MAX_DESCRIPTORS {
        return Err(KvError::TooManyDescriptors {
            descriptors: runs.len(),
            most: MAX_DESCRIPTORS,
        });
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvPlanes, KvShape, KvStrides};

    fn shape(planes: KvPlanes, blocks: u32) -> KvShape {
        KvShape {
            layers: 2,
            planes,
            blocks,
            tokens_per_block: 1,
            kv_heads: 1,
            head_dim: 4,
            element_size: 1,
        }
    }

    fn lens(runs: &[Run]) -> Vec<u64> {
        runs.iter().map(|r| r.len).collect()
    }

    #[test]
    fn adjacent_blocks_on_both_sides_become_one_descriptor_per_plane() {
        let a = KvLayout::new(shape(KvPlanes::Separate, 8)).unwrap();
        let b = KvLayout::new(shape(KvPlanes::Separate, 16)).unwrap();
        let runs = plan(&a, &[2, 3, 4], &b, &[10, 11, 12]).unwrap();
        // 2 layers × 2 planes, one run of 3 chunks each.
        assert_eq!(lens(&runs), vec![12; 4]);
        assert_eq!(runs[1].local.offset, 32 + 8);
        assert_eq!(runs[1].remote.offset, 64 + 40);
    }

    #[test]
    fn a_run_breaks_where_either_side_breaks_and_both_sides_agree() {
        let a = KvLayout::new(shape(KvPlanes::Separate, 8)).unwrap();
        let b = KvLayout::new(shape(KvPlanes::Separate, 8)).unwrap();
        let local = [0, 1, 2, 5, 6];
        let remote = [3, 4, 7, 0, 1];
        let runs = plan(&a, &local, &b, &remote).unwrap();
        let mirror = plan(&b, &remote, &a, &local).unwrap();
        // local breaks after 2, remote after 4 and after 7: runs [0,1] [2] [5,6] per plane.
        assert_eq!(lens(&runs[..3]), vec![8, 4, 8]);
        assert_eq!(runs.len(), 12);
        assert_eq!(lens(&runs), lens(&mirror));
        for (run, other) in runs.iter().zip(&mirror) {
            assert_eq!((run.local, run.remote), (other.remote, other.local));
        }
    }

    #[test]
    fn whole_pools_coalesce_across_planes_and_layers_but_not_across_allocations() {
        let packed = KvLayout::new(shape(KvPlanes::Separate, 4)).unwrap();
        let all = [0, 1, 2, 3];
        assert_eq!(lens(&plan(&packed, &all, &packed, &all).unwrap()), vec![64]);
        let per_layer = KvLayout::with_strides(
            shape(KvPlanes::Separate, 4),
            KvStrides {
                block: 4,
                plane: 16,
                layer: None,
            },
        )
        .unwrap();
        assert_eq!(
            lens(&plan(&packed, &all, &per_layer, &all).unwrap()),
            vec![32, 32]
        );
    }

    #[test]
    fn repeated_source_blocks_and_fused_planes() {
        let fused = KvLayout::new(shape(KvPlanes::Fused, 4)).unwrap();
        let runs = plan(&fused, &[1, 1, 2], &fused, &[0, 1, 2]).unwrap();
        // Chunks are 8 bytes (K and V); the repeated 1 breaks the local run.
        assert_eq!(lens(&runs), vec![8, 16, 8, 16]);
    }

    #[test]
    fn peers_that_cannot_pair_are_refused_before_any_plan() {
        let a = KvLayout::new(shape(KvPlanes::Separate, 4)).unwrap();
        let fused = KvLayout::new(shape(KvPlanes::Fused, 4)).unwrap();
        assert!(matches!(
            plan(&a, &[0], &fused, &[0]),
            Err(KvError::LayoutMismatch {
                field: "planes",
                ..
            })
        ));
        assert_eq!(
            plan(&a, &[0, 1], &a, &[0]),
            Err(KvError::BlockCountMismatch {
                local: 2,
                remote: 1
            })
        );
        assert_eq!(plan(&a, &[], &a, &[]), Err(KvError::NoBlocks));
        assert_eq!(
            plan(&a, &[0], &a, &[4]),
            Err(KvError::BlockOutOfRange {
                side: Side::Remote,
                id: 4,
                blocks: 4
            })
        );
        let mut many = shape(KvPlanes::Separate, u32::MAX);
        many.layers = 1024;
        let big = KvLayout::with_strides(
            many,
            KvStrides {
                block: 4,
                plane: 4 << 32,
                layer: None,
            },
        )
        .unwrap();
        let ids: Vec<u32> = (0..4096).collect();
        assert!(matches!(
            plan(&big, &ids, &big, &ids),
            Err(KvError::TooManyChunks { .. })
        ));
        // More runs than metadata may list: every other block of 64 layers × 2 planes.
        let mut wide = shape(KvPlanes::Separate, 1024);
        wide.layers = 64;
        let wide = KvLayout::new(wide).unwrap();
        let even: Vec<u32> = (0..513).map(|i| 2 * i % 1024).collect();
        let odd: Vec<u32> = (0..513).map(|i| (2 * i + 1) % 1024).collect();
        assert_eq!(
            plan(&wide, &even, &wide, &odd),
            Err(KvError::TooManyDescriptors {
                descriptors: 64 * 2 * 513,
                most: MAX_DESCRIPTORS
            })
        );
    }
}

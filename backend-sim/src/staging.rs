//! What peers have written into a writable, before it lands in the operation's memory.

use bytes::Bytes;

/// One region's written bytes. A write covering the whole region is kept as it came (no
/// copy); partial writes go into a region-sized buffer with a bitmap of the bytes written, so
/// landing never touches a byte no peer wrote and memory stays within 1.125 × the region
/// whatever a peer sends.
#[derive(Debug, Default)]
pub(crate) enum Staged {
    #[default]
    Empty,
    Whole(Bytes),
    Patch {
        data: Vec<u8>,
        written: Vec<u64>,
    },
}

impl Staged {
    /// Records `bytes` written at `offset`. The caller has checked that they lie inside the
    /// region; anything outside is ignored rather than trusted.
    pub(crate) fn write(&mut self, region_len: usize, offset: usize, bytes: Bytes) {
        let Some(end) = offset
            .checked_add(bytes.len())
            .filter(|&end| end <= region_len)
        else {
            return;
        };
        if offset == 0 && end == region_len {
            *self = Staged::Whole(bytes);
            return;
        }
        if bytes.is_empty() {
            return;
        }
        if !matches!(self, Staged::Patch { .. }) {
            let words = region_len.div_ceil(64);
            *self = match std::mem::take(self) {
                Staged::Whole(whole) => Staged::Patch {
                    data: whole.to_vec(),
                    written: vec![u64::MAX; words],
                },
                _ => Staged::Patch {
                    data: vec![0; region_len],
                    written: vec![0; words],
                },
            };
        }
        if let Staged::Patch { data, written } = self {
            data[offset..end].copy_from_slice(&bytes);
            mark(written, offset, end);
        }
    }

    /// Copies the written bytes, and only those, into `target`.
    pub(crate) fn land(&self, target: &mut [u8]) {
        match self {
            Staged::Empty => {}
            Staged::Whole(bytes) => {
                if let Some(dst) = target.get_mut(..bytes.len()) {
                    dst.copy_from_slice(bytes);
                }
            }
            Staged::Patch { data, written } => {
                let len = data.len().min(target.len());
                for (w, &word) in written.iter().enumerate() {
                    let start = w * 64;
                    if start >= len {
                        break;
                    }
                    let end = (start + 64).min(len);
                    if word == u64::MAX {
                        target[start..end].copy_from_slice(&data[start..end]);
                    } else if word != 0 {
                        for i in start..end {
                            if word >> (i - start) & 1 == 1 {
                                target[i] = data[i];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Sets the bits for bytes `start..end`.
fn mark(written: &mut [u64], start: usize, end: usize) {
    let mut i = start;
    while i < end {
        let (word, bit) = (i / 64, i % 64);
        if bit == 0 && end - i >= 64 {
            written[word] = u64::MAX;
            i += 64;
        } else {
            written[word] |= 1 << bit;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Landing agrees with applying every write, in order, to the original memory.
        #[test]
        fn lands_exactly_what_was_written(len in 1usize..300, writes in proptest::collection::vec((0usize..320, 0usize..140, any::<u8>()), 0..80)) {
            let original: Vec<u8> = (0..len).map(|i| i as u8 ^ 0xa5).collect();
            let mut model = original.clone();
            let mut staged = Staged::default();
            for (offset, size, fill) in writes {
                let bytes = Bytes::from(vec![fill; size]);
                if offset + size <= len {
                    model[offset..offset + size].fill(fill);
                }
                staged.write(len, offset, bytes);
            }
            let mut target = original;
            staged.land(&mut target);
            prop_assert_eq!(target, model);
        }
    }
}

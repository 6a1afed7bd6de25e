//! The zlib framing of agent metadata in `nixl_metadata`, as Dynamo reads and writes it.
//!
//! Dynamo compresses the agent metadata with `zlib.compress` and decompresses what it is given
//! with `zlib.decompress`, which takes any zlib stream. Agent metadata is usually a few hundred
//! bytes, and there a deflate costs more than it saves: flate2's compressor allocates and
//! clears several hundred KiB of state per stream (~6 µs measured here before a byte is
//! compressed, ~9 µs for 303 bytes at level 6), and its decompressor its window (~4 µs).
//! A passive operation registering its memory makes new metadata, so that was paid on both
//! sides of every such operation. So metadata up to [`STORE_UP_TO`] bytes is written as
//! *stored* deflate blocks (a valid zlib stream holding the bytes as they are, 11 bytes more
//! than them), and a stream made only of stored blocks is read without flate2; anything else
//! (a Dynamo peer's compressed metadata, larger metadata) goes through flate2.

use std::io::{Read as _, Write as _};

/// Metadata up to this many bytes is stored rather than compressed: past it the bytes
/// compression saves start to matter in a request payload.
pub(crate) const STORE_UP_TO: usize = 16 << 10;

/// The compression level for larger metadata (zlib's default, which Dynamo's
/// `zlib.compress` uses too).
const LEVEL: u32 = 6;

/// The most bytes one stored block holds (its length is 16 bits).
const BLOCK: usize = u16::MAX as usize;

/// Adler-32's modulus.
const ADLER_MOD: u32 = 65_521;

/// Why a stream did not inflate.
#[derive(Debug)]
pub(crate) enum InflateError {
    /// Not a zlib stream, or a damaged one.
    Corrupt(std::io::Error),
    /// It inflates past the limit it was read with.
    TooLarge,
}

/// `data` as a zlib stream: stored blocks up to [`STORE_UP_TO`] bytes, compressed past that.
pub(crate) fn deflate(data: &[u8]) -> std::io::Result<Vec<u8>> {
    if data.len() <= STORE_UP_TO {
        return Ok(store(data));
    }
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(LEVEL));
    encoder.write_all(data)?;
    encoder.finish()
}

/// `data` as a zlib stream of stored blocks: the header of a 32 KiB window at the fastest
/// level (`78 01`), then per block of at most 65 535 bytes a header byte (final or not), its
/// length and that length's complement (little-endian), and the bytes; then the Adler-32 of
/// `data`, big-endian. No data is one empty final block.
pub(crate) fn store(data: &[u8]) -> Vec<u8> {
    let blocks = data.len().div_ceil(BLOCK).max(1);
    let mut out = Vec::with_capacity(2 + blocks * 5 + data.len() + 4);
    out.extend_from_slice(&[0x78, 0x01]);
    let mut chunks = data.chunks(BLOCK).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        // A chunk holds at most BLOCK bytes, so its length fits.
        let len = chunk.len() as u16;
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

/// The bytes `compressed` inflates to, at most `limit` of them.
pub(crate) fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    if let Some(data) = stored(compressed, limit) {
        return Ok(data);
    }
    let mut data = Vec::new();
    flate2::read::ZlibDecoder::new(compressed)
        .take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut data)
        .map_err(InflateError::Corrupt)?;
    if data.len() > limit {
        return Err(InflateError::TooLarge);
    }
    Ok(data)
}

/// The bytes of a zlib stream made only of stored blocks, which ends where `compressed` ends,
/// whose checksum matches and which holds at most `limit` bytes; `None` for anything else,
/// which flate2 then reads (and judges).
fn stored(compressed: &[u8], limit: usize) -> Option<Vec<u8>> {
    let ([cmf, flg], mut rest) = compressed.split_first_chunk::<2>().map(|(h, r)| (*h, r))?;
    let header_ok = cmf & 0x0f == 8
        && cmf >> 4 <= 7
        && flg & 0x20 == 0
        && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0;
    if !header_ok {
        return None;
    }
    let mut data = Vec::new();
    loop {
        let (&[head], after) = rest.split_first_chunk::<1>()?;
        let (&[l0, l1, n0, n1], after) = after.split_first_chunk::<4>()?;
        let (len, nlen) = (u16::from_le_bytes([l0, l1]), u16::from_le_bytes([n0, n1]));
        // Bits 1-2 are the block type: 0 is stored; its other bits pad to the byte.
        if head & 0b110 != 0 || len != !nlen {
            return None;
        }
        let len = usize::from(len);
        if after.len() < len || data.len() + len > limit {
            return None;
        }
        let (bytes, after) = after.split_at(len);
        data.extend_from_slice(bytes);
        rest = after;
        if head & 1 == 1 {
            break;
        }
    }
    let checksum = u32::from_be_bytes(*<&[u8; 4]>::try_from(rest).ok()?);
    (checksum == adler32(&data)).then_some(data)
}

/// The Adler-32 checksum of `data` (RFC 1950).
fn adler32(data: &[u8]) -> u32 {
    // 5552 bytes is the most that can be summed before `b` could overflow a u32.
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5552) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= ADLER_MOD;
        b %= ADLER_MOD;
    }
    b << 16 | a
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn flate2_inflate(compressed: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut data = Vec::new();
        flate2::read::ZlibDecoder::new(compressed).read_to_end(&mut data)?;
        Ok(data)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn stored_streams_are_zlib_and_read_back_without_flate2() {
        for len in [0, 1, 303, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 17] {
            let data = pattern(len);
            let stream = store(&data);
            assert_eq!(flate2_inflate(&stream).unwrap(), data, "{len} bytes");
            assert_eq!(
                stored(&stream, usize::MAX),
                Some(data.clone()),
                "{len} bytes"
            );
            assert_eq!(inflate(&stream, len).unwrap(), data);
            assert!(
                matches!(
                    inflate(&stream, len.saturating_sub(1)),
                    Err(InflateError::TooLarge)
                ) || len == 0
            );
        }
    }

    #[test]
    fn small_metadata_is_stored_and_large_metadata_compressed() {
        let small = pattern(STORE_UP_TO);
        assert_eq!(deflate(&small).unwrap(), store(&small));
        let large = vec![7u8; STORE_UP_TO + 1];
        let compressed = deflate(&large).unwrap();
        assert!(compressed.len() < large.len() / 10);
        assert_eq!(stored(&compressed, usize::MAX), None, "not stored blocks");
        assert_eq!(inflate(&compressed, large.len()).unwrap(), large);
    }

    #[test]
    fn checksums_match_known_values() {
        assert_eq!(adler32(b""), 1);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        let long = vec![0xffu8; 100_000];
        let mut reference = flate2::Compress::new(flate2::Compression::none(), true);
        let mut out = Vec::with_capacity(200_000);
        reference
            .compress_vec(&long, &mut out, flate2::FlushCompress::Finish)
            .unwrap();
        let tail: [u8; 4] = out[out.len() - 4..].try_into().unwrap();
        assert_eq!(adler32(&long), u32::from_be_bytes(tail));
    }

    #[test]
    fn damaged_stored_streams_are_left_to_flate2() {
        let stream = store(&pattern(1000));
        for cut in 0..stream.len() {
            assert_eq!(stored(&stream[..cut], usize::MAX), None, "cut at {cut}");
            assert!(inflate(&stream[..cut], usize::MAX).is_err(), "cut at {cut}");
        }
        for at in 0..stream.len() {
            let mut bad = stream.clone();
            bad[at] ^= 0x40;
            // A flip in a padding bit of the block header still reads right; every other
            // flip is refused by both readers.
            match stored(&bad, usize::MAX) {
                Some(data) => assert_eq!(data, pattern(1000), "flip at {at}"),
                None => assert!(
                    flate2_inflate(&bad).map_or(true, |d| d == pattern(1000)),
                    "flip at {at}"
                ),
            }
        }
        let mut trailing = stream.clone();
        trailing.push(0);
        assert_eq!(
            stored(&trailing, usize::MAX),
            None,
            "bytes after the stream"
        );
    }

    proptest! {
        #[test]
        fn the_fast_path_agrees_with_flate2(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Some(data) = stored(&bytes, usize::MAX) {
                prop_assert_eq!(flate2_inflate(&bytes).ok(), Some(data));
            }
            let _ = inflate(&bytes, 1 << 20);
        }

        #[test]
        fn any_bytes_round_trip(data in proptest::collection::vec(any::<u8>(), 0..70_000)) {
            let stream = deflate(&data).unwrap();
            prop_assert_eq!(inflate(&stream, data.len()).unwrap(), data.clone());
            prop_assert_eq!(flate2_inflate(&stream).unwrap(), data);
        }
    }
}

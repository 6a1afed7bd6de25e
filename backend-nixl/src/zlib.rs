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
const STORED_BLOCK_MAX: usize = u16::MAX as usize;

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
        return Ok(stored_stream(data));
    }
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(LEVEL));
    encoder.write_all(data)?;
    encoder.finish()
}

/// `data` as a zlib stream of stored blocks: the header of a 32 KiB window at the fastest
/// level (`78 01`), then per block of at most 65 535 bytes a header byte (final or not), its
/// length and that length's complement (little-endian), and the bytes; then the Adler-32 of
/// `data`, big-endian. No data is one empty final block.
pub(crate) fn stored_stream(data: &[u8]) -> Vec<u8> {
    let blocks = data.len().div_ceil(STORED_BLOCK_MAX).max(1);
    let mut out = Vec::with_capacity(2 + blocks * 5 + data.len() + 4);
    out.extend_from_slice(&[0x78, 0x01]);
    let mut chunks = data.chunks(STORED_BLOCK_MAX).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        // A chunk holds at most STORED_BLOCK_MAX bytes, so its length fits.
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
    match stored_contents(compressed, limit) {
        Stored::Contents(data) => return Ok(data),
        Stored::TooLarge => return Err(InflateError::TooLarge),
        Stored::Other => {}
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

/// What [`stored_contents`] made of a stream.
#[derive(Debug, PartialEq, Eq)]
enum Stored {
    /// A stream of stored blocks, ending where the input ends, whose checksum matches.
    Contents(Vec<u8>),
    /// Well-formed stored blocks so far, holding more than the limit: flate2 would inflate
    /// past it too.
    TooLarge,
    /// Anything else, which flate2 then reads (and judges).
    Other,
}

/// The bytes of a zlib stream made only of stored blocks, which ends where `compressed` ends
/// and whose checksum matches, if it holds at most `limit` bytes.
fn stored_contents(compressed: &[u8], limit: usize) -> Stored {
    let Some(([cmf, flg], mut rest)) = compressed.split_first_chunk::<2>().map(|(h, r)| (*h, r))
    else {
        return Stored::Other;
    };
    let header_ok = cmf & 0x0f == 8
        && cmf >> 4 <= 7
        && flg & 0x20 == 0
        && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0;
    if !header_ok {
        return Stored::Other;
    }
    // The contents are never longer than the stream that holds them.
    let mut data = Vec::with_capacity(compressed.len().min(limit));
    loop {
        let Some((&[head, l0, l1, n0, n1], after)) = rest.split_first_chunk::<5>() else {
            return Stored::Other;
        };
        let (len, nlen) = (u16::from_le_bytes([l0, l1]), u16::from_le_bytes([n0, n1]));
        // Bits 1-2 are the block type: 0 is stored; its other bits pad to the byte.
        if head & 0b110 != 0 || len != !nlen {
            return Stored::Other;
        }
        let len = usize::from(len);
        if after.len() < len {
            return Stored::Other;
        }
        // `data` holds at most the input's length, so this cannot overflow.
        if data.len() + len > limit {
            return Stored::TooLarge;
        }
        let (bytes, after) = after.split_at(len);
        data.extend_from_slice(bytes);
        rest = after;
        if head & 1 == 1 {
            break;
        }
    }
    match <[u8; 4]>::try_from(rest) {
        Ok(checksum) if u32::from_be_bytes(checksum) == adler32(&data) => Stored::Contents(data),
        _ => Stored::Other,
    }
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
        let max = STORED_BLOCK_MAX;
        for len in [0, 1, 303, max - 1, max, max + 1, 3 * max + 17] {
            let data = pattern(len);
            let stream = stored_stream(&data);
            assert_eq!(flate2_inflate(&stream).unwrap(), data, "{len} bytes");
            let contents = stored_contents(&stream, usize::MAX);
            assert_eq!(contents, Stored::Contents(data.clone()), "{len} bytes");
            assert_eq!(inflate(&stream, len).unwrap(), data);
            if len > 0 {
                let short = stored_contents(&stream, len - 1);
                assert_eq!(short, Stored::TooLarge, "{len} bytes");
                assert!(matches!(
                    inflate(&stream, len - 1),
                    Err(InflateError::TooLarge)
                ));
            }
        }
    }

    #[test]
    fn small_metadata_is_stored_and_large_metadata_compressed() {
        let small = pattern(STORE_UP_TO);
        assert_eq!(deflate(&small).unwrap(), stored_stream(&small));
        let large = vec![7u8; STORE_UP_TO + 1];
        let compressed = deflate(&large).unwrap();
        assert!(compressed.len() < large.len() / 10);
        let contents = stored_contents(&compressed, usize::MAX);
        assert_eq!(contents, Stored::Other, "not stored blocks");
        assert_eq!(inflate(&compressed, large.len()).unwrap(), large);
        assert!(matches!(
            inflate(&compressed, large.len() - 1),
            Err(InflateError::TooLarge)
        ));
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

    /// What flate2 alone makes of `stream` under `limit`, as `inflate` read every stream
    /// before the fast path: the bytes, or whether it failed by inflating past the limit.
    fn flate2_limited(stream: &[u8], limit: usize) -> Result<Vec<u8>, bool> {
        let mut data = Vec::new();
        let read = flate2::read::ZlibDecoder::new(stream)
            .take(limit as u64 + 1)
            .read_to_end(&mut data);
        match read {
            Err(_) => Err(false),
            Ok(_) if data.len() > limit => Err(true),
            Ok(_) => Ok(data),
        }
    }

    /// Whether the fast path and flate2 agree on `stream` under `limit`: the fast path reads
    /// nothing that flate2 would refuse or read differently, and refuses as too large only
    /// what flate2 refuses too (a stream both too large and damaged may fail either way in
    /// flate2, by where the damage sits); it may leave to flate2 what flate2 reads.
    fn agree(stream: &[u8], limit: usize) -> Result<(), String> {
        let slow = flate2_limited(stream, limit);
        match (stored_contents(stream, limit), slow) {
            (Stored::Contents(fast), Ok(slow)) if fast == slow => Ok(()),
            (Stored::TooLarge, Err(_)) | (Stored::Other, _) => Ok(()),
            (fast, slow) => Err(format!("fast path {fast:?}, flate2 {slow:?}")),
        }
    }

    #[test]
    fn damaged_stored_streams_are_refused_as_flate2_refuses_them() {
        let data = pattern(1000);
        let stream = stored_stream(&data);
        for cut in 0..stream.len() {
            let contents = stored_contents(&stream[..cut], usize::MAX);
            assert_eq!(contents, Stored::Other, "cut at {cut}");
            assert!(inflate(&stream[..cut], usize::MAX).is_err(), "cut at {cut}");
        }
        for at in 0..stream.len() {
            for bit in 0..8 {
                let mut bad = stream.clone();
                bad[at] ^= 1 << bit;
                agree(&bad, 1 << 20).unwrap_or_else(|e| panic!("bit {bit} of byte {at}: {e}"));
                if let Ok(read) = inflate(&bad, usize::MAX) {
                    // A flipped padding bit of the block header changes nothing.
                    assert!(at == 2 && bit >= 3 && read == data, "{at}/{bit}");
                }
            }
        }
        let mut trailing = stream.clone();
        trailing.push(0);
        let contents = stored_contents(&trailing, usize::MAX);
        assert_eq!(contents, Stored::Other, "bytes after the stream");
    }

    /// A stream of stored blocks over `data`, split where `cuts` say, its header and block
    /// headers' free bits set from `noise`, and its checksum right or not.
    fn shaped(data: &[u8], cuts: &[usize], noise: u8, right_sum: bool) -> Vec<u8> {
        let cmf = 0x08 | ((noise & 0x0f) << 4);
        let mut flg = noise & 0xc0;
        flg += (31 - ((u16::from(cmf) << 8 | u16::from(flg)) % 31) as u8) % 31;
        let mut out = vec![cmf, flg];
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        bounds.push(0);
        bounds.push(data.len());
        bounds.sort_unstable();
        bounds.dedup();
        let pieces: Vec<&[u8]> = match bounds.len() {
            1 => vec![data],
            _ => bounds.windows(2).map(|w| &data[w[0]..w[1]]).collect(),
        };
        for (i, piece) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            let len = piece.len() as u16;
            out.push(u8::from(last) | (noise & 0xf8));
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(piece);
        }
        let sum = adler32(data) ^ u32::from(!right_sum);
        out.extend_from_slice(&sum.to_be_bytes());
        out
    }

    proptest! {
        #[test]
        fn the_fast_path_agrees_with_flate2(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            cuts in proptest::collection::vec(any::<usize>(), 0..4),
            noise in any::<u8>(),
            right_sum in any::<bool>(),
            limit in 0usize..4000,
            flip in proptest::option::of((any::<prop::sample::Index>(), 0u8..8)),
        ) {
            let mut stream = shaped(&data, &cuts, noise, right_sum);
            if let Some((at, bit)) = flip {
                let at = at.index(stream.len());
                stream[at] ^= 1 << bit;
            }
            prop_assert_eq!(agree(&stream, limit), Ok(()));
            prop_assert_eq!(agree(&stream, 1 << 20), Ok(()));
            let _ = inflate(&stream, limit);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            prop_assert_eq!(agree(&bytes, 1 << 20), Ok(()));
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

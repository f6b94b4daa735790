//! How a chunk is stored and sent: one tag byte, then the raw bytes or their
//! zstd compression, whichever is smaller. The id is always blake3 of the
//! raw bytes, and decoding checks it, so a chunk is never handed out unverified.

use crate::{chunking::MAX_CHUNK_BYTES, ChunkId, Error, Result};
use std::cell::RefCell;
use zstd::bulk::Decompressor;

const TAG_RAW: u8 = 0;
const TAG_ZSTD: u8 = 1;

/// Encodes `raw` for storage or the wire, compressing at zstd `level` when
/// that saves space. For many chunks, reuse a [`ChunkEncoder`].
pub fn encode_chunk(raw: &[u8], level: i32) -> Vec<u8> {
    ChunkEncoder::new(level).encode(raw)
}

/// Encodes chunks with one reused zstd context: creating a context costs
/// more than compressing an 8 KiB chunk.
pub struct ChunkEncoder {
    compressor: Option<zstd::bulk::Compressor<'static>>,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for ChunkEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkEncoder").finish_non_exhaustive()
    }
}

impl ChunkEncoder {
    /// An encoder compressing at zstd `level` (raw only if zstd cannot start).
    pub fn new(level: i32) -> Self {
        ChunkEncoder {
            compressor: zstd::bulk::Compressor::new(level).ok(),
            scratch: Vec::new(),
        }
    }

    /// Encodes one chunk: compressed if strictly smaller, raw otherwise.
    pub fn encode(&mut self, raw: &[u8]) -> Vec<u8> {
        self.scratch.clear();
        self.scratch.reserve(raw.len());
        let compressed = self.compressor.as_mut().is_some_and(|c| {
            c.compress_to_buffer(raw, &mut self.scratch).is_ok() && self.scratch.len() < raw.len()
        });
        let (tag, body) = if compressed {
            (TAG_ZSTD, &self.scratch[..])
        } else {
            (TAG_RAW, raw)
        };
        let mut out = Vec::with_capacity(1 + body.len());
        out.push(tag);
        out.extend_from_slice(body);
        out
    }
}

/// Decodes an encoded chunk and checks it against `expected`. Decompression
/// is bounded by [`MAX_CHUNK_BYTES`], so a small input cannot expand without limit.
pub fn decode_chunk(encoded: &[u8], expected: &ChunkId) -> Result<Vec<u8>> {
    let raw = match encoded.split_first() {
        Some((&TAG_RAW, raw)) if raw.len() <= MAX_CHUNK_BYTES as usize => raw.to_vec(),
        Some((&TAG_RAW, _)) => return Err(Error::invalid("chunk", "longer than 4 MiB")),
        Some((&TAG_ZSTD, compressed)) => decompress(compressed)?,
        Some((tag, _)) => return Err(Error::invalid("chunk", format!("unknown encoding {tag}"))),
        None => return Err(Error::invalid("chunk", "empty")),
    };
    let actual = ChunkId::of(&raw);
    if actual != *expected {
        return Err(Error::ChunkMismatch {
            expected: *expected,
            actual,
        });
    }
    Ok(raw)
}

thread_local! {
    /// One zstd context per thread: creating one costs about as much as
    /// decompressing an 8 KiB chunk, and every chunk received or served is
    /// decompressed to check its id.
    static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Decompresses a chunk body into a buffer of the size its frame header
/// states (at most [`MAX_CHUNK_BYTES`]; zstd refuses a frame whose content
/// differs from that size).
fn decompress(compressed: &[u8]) -> Result<Vec<u8>> {
    let max = MAX_CHUNK_BYTES as usize;
    let capacity = match zstd::zstd_safe::get_frame_content_size(compressed) {
        Ok(Some(n)) if n > max as u64 => return Err(Error::invalid("chunk", "longer than 4 MiB")),
        Ok(Some(n)) => n as usize,
        _ => max,
    };
    let mut out = Vec::with_capacity(capacity);
    DECOMPRESSOR
        .with_borrow_mut(|slot| {
            if slot.is_none() {
                *slot = Some(Decompressor::new()?);
            }
            match slot.as_mut() {
                Some(d) => d.decompress_to_buffer(compressed, &mut out),
                None => Ok(0),
            }
        })
        .map_err(|e| Error::invalid("chunk", format!("bad zstd data: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compressible_chunks_are_compressed_and_random_ones_are_not() {
        let text = b"fleetmesh ".repeat(1000);
        let enc = encode_chunk(&text, 3);
        assert_eq!(enc[0], TAG_ZSTD);
        assert!(enc.len() < text.len() / 10);
        assert_eq!(
            decode_chunk(&enc, &ChunkId::of(&text)).expect("valid"),
            text
        );

        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let enc = encode_chunk(&noise, 3);
        assert!(enc.len() <= noise.len() + 1);
        assert_eq!(
            decode_chunk(&enc, &ChunkId::of(&noise)).expect("valid"),
            noise
        );
    }

    #[test]
    fn oversize_and_corrupt_frames_are_refused_and_the_next_chunk_still_decodes() {
        let huge = vec![0u8; MAX_CHUNK_BYTES as usize + 1];
        let enc = encode_chunk(&huge, 3);
        assert_eq!(enc[0], TAG_ZSTD);
        let err = decode_chunk(&enc, &ChunkId::of(&huge)).expect_err("over the limit");
        assert!(err.to_string().contains("longer than 4 MiB"), "{err}");

        let text = b"fleetmesh ".repeat(500);
        let good = encode_chunk(&text, 3);
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad.truncate(last);
        assert!(decode_chunk(&bad, &ChunkId::of(&text)).is_err());
        assert_eq!(
            decode_chunk(&good, &ChunkId::of(&text)).expect("valid"),
            text
        );
    }

    proptest! {
        /// A flipped bit in the chunk's bytes is always caught; one in its
        /// encoding either fails to decode or (in zstd framing bits that do not
        /// affect the output) decodes to the original bytes: never to other data.
        #[test]
        fn any_flipped_bit_is_caught(data in proptest::collection::vec(any::<u8>(), 1..3000), bit in any::<usize>()) {
            let id = ChunkId::of(&data);
            let mut flipped = data.clone();
            let raw_bit = bit % (flipped.len() * 8);
            flipped[raw_bit / 8] ^= 1 << (raw_bit % 8);
            let err = decode_chunk(&encode_chunk(&flipped, 3), &id);
            prop_assert!(matches!(err, Err(Error::ChunkMismatch { .. })), "{:?}", err);

            let mut enc = encode_chunk(&data, 3);
            let enc_bit = bit % (enc.len() * 8);
            enc[enc_bit / 8] ^= 1 << (enc_bit % 8);
            if let Ok(decoded) = decode_chunk(&enc, &id) {
                prop_assert_eq!(decoded, data);
            }
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = decode_chunk(&data, &ChunkId([0; 32]));
        }
    }
}

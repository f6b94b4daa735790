//! Content-defined chunking (FastCDC 2020).
//!
//! Boundaries depend only on the bytes near them, so an edit or an insertion
//! changes the chunks around it and leaves the rest of the image's chunks, and
//! their ids, as they were. See docs/chunking.md for how the sizes were chosen.
//! Cutting runs on whole buffers ([`BlockChunker`]): faster than a byte
//! stream, and a buffer of chunks is the unit handed to worker threads.

use crate::{Error, Result};
use fastcdc::v2020::{self, Normalization};
use serde::{Deserialize, Serialize};
use std::io::Read;

/// The largest chunk any fleetmesh party accepts.
pub const MAX_CHUNK_BYTES: u32 = 4 << 20;

/// Chunk size bounds, carried in every manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkParams {
    /// No chunk but the last is shorter.
    pub min: u32,
    /// The expected chunk length; a power of two.
    pub avg: u32,
    /// No chunk is longer.
    pub max: u32,
    /// FastCDC normalisation level, 0-3: higher packs sizes closer to `avg`.
    pub normalization: u8,
}

impl ChunkParams {
    /// Average 8 KiB: measured in docs/chunking.md as the largest size whose
    /// delta stays within 1.10x of the changed bytes.
    pub const DEFAULT: ChunkParams = ChunkParams::for_avg(8 << 10);

    /// Bounds at a quarter and twice `avg`, normalisation level 1. Measured
    /// in docs/chunking.md: a maximum of 2x keeps the chunks of zero runs
    /// (where no content cut exists) small, and level 1, unlike level 2,
    /// re-synchronises within a chunk or two after an insertion.
    pub const fn for_avg(avg: u32) -> ChunkParams {
        ChunkParams {
            min: avg / 4,
            avg,
            max: avg.saturating_mul(2),
            normalization: 1,
        }
    }

    fn level(&self) -> Normalization {
        match self.normalization {
            0 => Normalization::Level0,
            1 => Normalization::Level1,
            2 => Normalization::Level2,
            _ => Normalization::Level3,
        }
    }

    /// Checks the bounds against what the chunker and the wire allow.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::invalid("chunk parameters", reason));
        if !self.avg.is_power_of_two() {
            return bad(format!("average {} is not a power of two", self.avg));
        }
        if !(v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&self.avg) {
            return bad(format!("average {} is outside 256 B-4 MiB", self.avg));
        }
        if self.min < v2020::MINIMUM_MIN || self.min > self.avg {
            return bad(format!("minimum {} must be 64 B..average", self.min));
        }
        if self.max < self.avg.max(v2020::MAXIMUM_MIN) || self.max > MAX_CHUNK_BYTES {
            return bad(format!(
                "maximum {} must be average (and 1 KiB)..4 MiB",
                self.max
            ));
        }
        if self.normalization > 3 {
            return bad(format!(
                "normalisation level {} must be 0-3",
                self.normalization
            ));
        }
        Ok(())
    }
}

/// Complete chunks cut from a stream, in one buffer: what a reader hands to
/// the threads that hash, compress and store them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// Stream offset of `data[0]`.
    pub offset: u64,
    /// The bytes of the chunks, back to back.
    pub data: Vec<u8>,
    /// `(start, len)` of each chunk within `data`, in order, covering it.
    pub chunks: Vec<(usize, usize)>,
}

/// Cuts a stream into [`Block`]s of about `block_size` bytes. Boundaries are
/// exactly those [`chunk_bounds`] finds on the whole stream: the last chunk
/// found in a buffer may have been cut short by the buffer's end, so it is
/// carried into the next buffer and cut again. Memory is bounded by
/// `block_size` + `params.max`, whatever the stream's length.
#[derive(Debug)]
pub struct BlockChunker<R> {
    reader: R,
    params: ChunkParams,
    block_size: usize,
    carry: Vec<u8>,
    offset: u64,
    done: bool,
}

impl<R: Read> BlockChunker<R> {
    /// A chunker over `reader`; `block_size` is raised to twice `params.max`
    /// so that every buffer holds at least one final cut.
    pub fn new(reader: R, params: ChunkParams, block_size: usize) -> Result<Self> {
        params.validate()?;
        Ok(BlockChunker {
            reader,
            params,
            block_size: block_size.max(2 * params.max as usize),
            carry: Vec::new(),
            offset: 0,
            done: false,
        })
    }

    fn next_block(&mut self) -> Result<Option<Block>> {
        let mut data = std::mem::take(&mut self.carry);
        let eof = fill(&mut self.reader, &mut data, self.block_size)?;
        if data.is_empty() {
            self.done = true;
            return Ok(None);
        }
        let mut chunks = chunk_bounds(&data, self.params)?;
        if !eof {
            // Cut again with what follows; every earlier cut is final.
            if let Some((start, _)) = chunks.pop() {
                self.carry = data.split_off(start);
            }
        }
        self.done = eof;
        let block = Block {
            offset: self.offset,
            data,
            chunks,
        };
        self.offset += block.data.len() as u64;
        Ok(Some(block))
    }
}

/// Reads into `buf` until it holds `target` bytes; true at end of stream.
fn fill(reader: &mut impl Read, buf: &mut Vec<u8>, target: usize) -> Result<bool> {
    let mut filled = buf.len();
    buf.resize(target.max(filled), 0);
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => {
                buf.truncate(filled);
                return Ok(true);
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

impl<R: Read> Iterator for BlockChunker<R> {
    type Item = Result<Block>;

    fn next(&mut self) -> Option<Result<Block>> {
        if self.done {
            return None;
        }
        let next = self.next_block();
        if next.is_err() {
            self.done = true;
        }
        next.transpose()
    }
}

/// The `(offset, length)` of every chunk of an in-memory buffer.
pub fn chunk_bounds(data: &[u8], params: ChunkParams) -> Result<Vec<(usize, usize)>> {
    params.validate()?;
    let cdc = v2020::FastCDC::with_level(data, params.min, params.avg, params.max, params.level());
    Ok(cdc.map(|c| (c.offset, c.length)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    const SMALL: ChunkParams = ChunkParams::for_avg(1024);

    fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
        data
    }

    fn ids(data: &[u8]) -> Vec<blake3::Hash> {
        chunk_bounds(data, ChunkParams::DEFAULT)
            .expect("valid params")
            .into_iter()
            .map(|(o, l)| blake3::hash(&data[o..o + l]))
            .collect()
    }

    #[test]
    fn blocks_agree_with_the_whole_and_cover_the_input() {
        let data = random_bytes(1, 300_000);
        let whole = chunk_bounds(&data, SMALL).expect("valid params");
        // Block sizes below, near and above the chunk sizes, and one that
        // holds everything.
        for block_size in [1, 2048, 5000, 65_536, 1 << 20] {
            let mut got = Vec::new();
            let mut next = 0u64;
            for block in BlockChunker::new(&data[..], SMALL, block_size).expect("valid params") {
                let block = block.expect("no I/O error");
                assert_eq!(block.offset, next);
                let mut pos = 0;
                for &(start, len) in &block.chunks {
                    assert_eq!(start, pos, "chunks cover the block");
                    got.push((block.offset as usize + start, len));
                    pos += len;
                }
                assert_eq!(pos, block.data.len());
                assert_eq!(block.data[..], data[next as usize..next as usize + pos]);
                next += pos as u64;
            }
            assert_eq!(got, whole, "block size {block_size}");
        }
        let empty: Vec<_> = BlockChunker::new(&[][..], SMALL, 4096)
            .expect("valid")
            .collect();
        assert!(empty.is_empty());
    }

    #[test]
    fn bad_params_are_refused() {
        for params in [
            ChunkParams::for_avg(1000),
            ChunkParams::for_avg(128),
            ChunkParams::for_avg(4 << 20),
            ChunkParams::for_avg(256),
            ChunkParams {
                min: 32,
                ..ChunkParams::for_avg(1024)
            },
            ChunkParams {
                normalization: 4,
                ..ChunkParams::DEFAULT
            },
        ] {
            assert!(params.validate().is_err(), "{params:?}");
        }
        ChunkParams::DEFAULT.validate().expect("default is valid");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn chunking_is_deterministic(seed in any::<u64>(), len in 0usize..200_000) {
            let data = random_bytes(seed, len);
            prop_assert_eq!(ids(&data), ids(&data.clone()));
        }

        /// An insertion changes only the chunks around it: every chunk that ends
        /// well before it or starts well after it is still there.
        #[test]
        fn insertion_changes_only_nearby_chunks(
            seed in any::<u64>(),
            at in 0usize..2_000_000,
            insert_len in 1usize..20_000,
        ) {
            let before = random_bytes(seed, 2_000_000);
            let mut after = before.clone();
            let insert = random_bytes(seed ^ 0xff, insert_len);
            after.splice(at..at, insert);
            let old: std::collections::HashSet<_> = ids(&before).into_iter().collect();
            let new = ids(&after);
            let fresh = new.iter().filter(|id| !old.contains(id)).count();
            // The insertion lands in one chunk, may add cut points inside
            // itself, and the chunker re-synchronises within a few chunks after
            // it (a new cut can hide the next old one behind the minimum size).
            // Of ~200 chunks, only those overlapping the insertion (at most
            // len/min + 2) and a short re-synchronisation after it may change
            // (measured over 1000 insertions: at most 4 more, docs/chunking.md).
            let bound = 2 + insert_len / ChunkParams::DEFAULT.min as usize + 5;
            prop_assert!(fresh <= bound, "{} new chunks of {}, bound {}", fresh, new.len(), bound);
        }
    }
}

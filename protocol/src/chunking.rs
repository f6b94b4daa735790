//! Content-defined chunking (FastCDC 2020).
//!
//! Boundaries depend only on the bytes near them, so an edit or an insertion
//! changes the chunks around it and leaves the rest of the image's chunks, and
//! their ids, as they were. See docs/chunking.md for how the sizes were chosen.

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

/// One chunk cut from a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Position of the first byte in the stream.
    pub offset: u64,
    /// The chunk's bytes.
    pub data: Vec<u8>,
}

/// Cuts `reader` into chunks, streaming: memory use is bounded by
/// `params.max`, whatever the image size.
pub fn chunk_reader<R: Read>(
    reader: R,
    params: ChunkParams,
) -> Result<impl Iterator<Item = Result<Chunk>>> {
    params.validate()?;
    let cdc =
        v2020::StreamCDC::with_level(reader, params.min, params.avg, params.max, params.level());
    Ok(cdc.map(|res| {
        res.map(|c| Chunk {
            offset: c.offset,
            data: c.data,
        })
        .map_err(|e| Error::Io(e.into()))
    }))
}

/// The `(offset, length)` of every chunk of an in-memory buffer; the same
/// boundaries as [`chunk_reader`] gives for the same bytes.
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
    fn stream_and_slice_agree_and_cover_the_input() {
        let data = random_bytes(1, 300_000);
        let streamed: Vec<Chunk> = chunk_reader(&data[..], SMALL)
            .expect("valid params")
            .collect::<Result<_>>()
            .expect("no I/O error");
        let bounds = chunk_bounds(&data, SMALL).expect("valid params");
        assert_eq!(streamed.len(), bounds.len());
        let mut next = 0;
        for (chunk, (offset, len)) in streamed.iter().zip(&bounds) {
            assert_eq!(chunk.offset as usize, *offset);
            assert_eq!(chunk.offset as usize, next);
            assert_eq!(chunk.data, data[*offset..offset + len]);
            next += len;
        }
        assert_eq!(next, data.len());
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

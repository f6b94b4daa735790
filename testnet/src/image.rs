//! Deterministic synthetic OS images and their "next version".
//!
//! An image is a sequence of 64 KiB blocks whose content depends only on
//! (seed, block index): incompressible runs (already-compressed files),
//! text-like runs (configs, scripts), zero runs (free space) and structured
//! binary (executables, tables), in proportions resembling a root
//! filesystem. A v2 is made from a v1 by an [`EditPlan`]: whole 1 MiB regions
//! rewritten, scattered small edits and one insertion, and the plan knows
//! exactly how many bytes it changed.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Serialize;
use std::io::{self, Read, Write};

const BLOCK: usize = 64 << 10;

/// Words for text-like blocks.
const WORDS: &[&str] = &[
    "the", "fleet", "node", "update", "kernel", "config", "service", "enable", "true", "false",
    "path", "/usr/lib", "/etc", "systemd", "network", "mesh", "chunk", "image", "slot", "boot",
    "0", "1", "42", "=", "\n", "#", "[unit]", "after", "wants", "exec", "start", "stop",
];

fn block_rng(seed: u64, index: u64, salt: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&index.to_le_bytes());
    key[16..24].copy_from_slice(&salt.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// Fills `out` with block `index` of the image for `seed`.
fn fill_block(seed: u64, index: u64, out: &mut [u8]) {
    let mut rng = block_rng(seed, index, 0);
    // Runs of 16 blocks (1 MiB) share a kind, like files on a filesystem.
    let kind = block_rng(seed, index / 16, 1).next_u32() % 100;
    match kind {
        0..=29 => rng.fill_bytes(out),
        30..=59 => fill_text(&mut rng, out),
        60..=79 => out.fill(0),
        _ => fill_structured(&mut rng, out),
    }
}

fn fill_text(rng: &mut ChaCha8Rng, out: &mut [u8]) {
    let mut pos = 0;
    while pos < out.len() {
        let word = WORDS[rng.next_u32() as usize % WORDS.len()].as_bytes();
        let n = word.len().min(out.len() - pos);
        out[pos..pos + n].copy_from_slice(&word[..n]);
        pos += n;
        if pos < out.len() {
            out[pos] = b' ';
            pos += 1;
        }
    }
}

fn fill_structured(rng: &mut ChaCha8Rng, out: &mut [u8]) {
    // Little-endian records with small, correlated fields.
    let mut base = rng.next_u32();
    for record in out.chunks_mut(16) {
        base = base.wrapping_add(rng.next_u32() % 64);
        let fields = [base, rng.next_u32() % 256, 0, base ^ 0xffff];
        for (dst, f) in record.chunks_mut(4).zip(fields) {
            dst.copy_from_slice(&f.to_le_bytes()[..dst.len()]);
        }
    }
}

/// Writes `size` bytes of the image for `seed` to `out`.
pub fn write_image(seed: u64, size: u64, mut out: impl Write) -> io::Result<()> {
    let mut block = vec![0u8; BLOCK];
    let mut written = 0u64;
    let mut index = 0u64;
    while written < size {
        fill_block(seed, index, &mut block);
        let n = (size - written).min(BLOCK as u64) as usize;
        out.write_all(&block[..n])?;
        written += n as u64;
        index += 1;
    }
    out.flush()
}

/// One change from v1 to v2, at an offset of v1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Edit {
    /// Overwrite `len` bytes with new ones.
    Rewrite {
        /// Offset in v1.
        offset: u64,
        /// Bytes rewritten.
        len: u64,
    },
    /// Insert `len` new bytes before `offset`.
    Insert {
        /// Offset in v1.
        offset: u64,
        /// Bytes inserted.
        len: u64,
    },
}

impl Edit {
    fn offset(&self) -> u64 {
        match *self {
            Edit::Rewrite { offset, .. } | Edit::Insert { offset, .. } => offset,
        }
    }

    fn len(&self) -> u64 {
        match *self {
            Edit::Rewrite { len, .. } | Edit::Insert { len, .. } => len,
        }
    }
}

/// How v2 differs from v1.
#[derive(Clone, Debug, Serialize)]
pub struct EditPlan {
    /// Non-overlapping edits, sorted by offset.
    pub edits: Vec<Edit>,
    /// Seed of the new bytes.
    pub seed: u64,
}

impl EditPlan {
    /// The benchmark's v2: `region_fraction` of the image in 1 MiB regions
    /// rewritten, `small_edits` scattered edits of 1-64 bytes and one 64 KiB
    /// insertion, placed by `seed`.
    pub fn standard(size: u64, seed: u64, region_fraction: f64, small_edits: usize) -> Self {
        const REGION: u64 = 1 << 20;
        let mut rng = block_rng(seed, u64::MAX, 2);
        // At least one region when the image is large enough to hold it.
        let regions = ((size as f64 * region_fraction) / REGION as f64).round() as usize;
        let regions = if size >= 4 * REGION {
            regions.max(1)
        } else {
            regions
        };
        let mut edits: Vec<Edit> = Vec::new();
        let mut place = |edits: &mut Vec<Edit>, len: u64, insert: bool| {
            if size <= len + 1 {
                return;
            }
            for _ in 0..1000 {
                let offset = rng.next_u64() % (size - len);
                let clash = edits.iter().any(|e| {
                    offset < e.offset() + e.len().max(1) + 64 && e.offset() < offset + len + 64
                });
                if !clash {
                    edits.push(if insert {
                        Edit::Insert { offset, len }
                    } else {
                        Edit::Rewrite { offset, len }
                    });
                    return;
                }
            }
        };
        for _ in 0..regions {
            place(&mut edits, REGION, false);
        }
        for i in 0..small_edits {
            place(&mut edits, 1 + (i as u64 * 7919) % 64, false);
        }
        place(&mut edits, 64 << 10, true);
        edits.sort_by_key(Edit::offset);
        EditPlan { edits, seed }
    }

    /// Bytes that differ: every rewritten and inserted byte.
    pub fn changed_bytes(&self) -> u64 {
        self.edits.iter().map(Edit::len).sum()
    }

    /// Streams v1 from `input` to `output` with the edits applied.
    pub fn apply(&self, mut input: impl Read, mut output: impl Write) -> io::Result<()> {
        let mut pos = 0u64;
        let mut rng = block_rng(self.seed, u64::MAX, 3);
        for edit in &self.edits {
            io::copy(&mut (&mut input).take(edit.offset() - pos), &mut output)?;
            pos = edit.offset();
            let mut fresh = vec![0u8; edit.len() as usize];
            rng.fill_bytes(&mut fresh);
            output.write_all(&fresh)?;
            if let Edit::Rewrite { len, .. } = *edit {
                io::copy(&mut (&mut input).take(len), &mut io::sink())?;
                pos += len;
            }
        }
        io::copy(&mut input, &mut output)?;
        output.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_deterministic_and_mixed() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_image(7, 3 << 20, &mut a).expect("write");
        write_image(7, 3 << 20, &mut b).expect("write");
        assert_eq!(a, b);
        let mut c = Vec::new();
        write_image(8, 3 << 20, &mut c).expect("write");
        assert_ne!(a, c);
        let compressed = zstd_len(&a);
        assert!(
            compressed < a.len() * 9 / 10 && compressed > a.len() / 20,
            "{compressed}"
        );
    }

    fn zstd_len(data: &[u8]) -> usize {
        fleetmesh_protocol::chunk::encode_chunk(data, 1).len()
    }

    #[test]
    fn edit_plan_changes_exactly_what_it_says() {
        let size = 8u64 << 20;
        let mut v1 = Vec::new();
        write_image(1, size, &mut v1).expect("write");
        let plan = EditPlan::standard(size, 5, 0.25, 20);
        let mut v2 = Vec::new();
        plan.apply(&v1[..], &mut v2).expect("apply");
        let inserted: u64 = plan
            .edits
            .iter()
            .filter(|e| matches!(e, Edit::Insert { .. }))
            .map(Edit::len)
            .sum();
        assert_eq!(inserted, 64 << 10);
        assert_eq!(v2.len() as u64, size + inserted);
        assert_eq!(plan.edits.len(), 2 + 20 + 1);
        // Outside the edits, v2 is v1 shifted by what was inserted before.
        let mut shift = 0u64;
        let mut prev_end = 0u64;
        for edit in &plan.edits {
            let (s, e) = (prev_end as usize, edit.offset() as usize);
            assert_eq!(v1[s..e], v2[s + shift as usize..e + shift as usize]);
            match *edit {
                Edit::Insert { len, .. } => {
                    shift += len;
                    prev_end = edit.offset();
                }
                Edit::Rewrite { offset, len } => prev_end = offset + len,
            }
        }
        assert!(plan.changed_bytes() >= 2 * (1 << 20) + 20 + (64 << 10));
    }
}

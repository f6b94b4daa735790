//! The chunk-size measurement behind docs/chunking.md: for each average
//! chunk size, how many bytes of new chunks a v2 needs compared with the
//! bytes that actually changed, against the per-chunk costs.

use crate::image::{write_image, EditPlan};
use fleetmesh_protocol::chunking::chunk_bounds;
use fleetmesh_protocol::{codec, ChunkId, ChunkParams, ChunkRef, ImageHash, Manifest, UnixTime};
use serde::Serialize;
use std::collections::HashSet;

/// One average chunk size, measured.
#[derive(Clone, Debug, Serialize)]
pub struct SweepRow {
    /// Average chunk size.
    pub avg: u32,
    /// FastCDC normalisation level.
    pub normalization: u8,
    /// Chunks in v2.
    pub chunks: usize,
    /// v2 chunks not in v1.
    pub new_chunks: usize,
    /// Their bytes.
    pub new_bytes: u64,
    /// Bytes the edit plan changed.
    pub changed_bytes: u64,
    /// new_bytes / changed_bytes.
    pub delta_ratio: f64,
    /// Encoded v2 manifest size.
    pub manifest_bytes: usize,
    /// (new_bytes + manifest_bytes) / changed_bytes: what a node that has v1
    /// really downloads.
    pub transfer_ratio: f64,
}

/// Images and plan for a sweep, built once and measured at several sizes.
#[derive(Debug)]
pub struct SweepInput {
    v1: Vec<u8>,
    v2: Vec<u8>,
    changed: u64,
}

impl SweepInput {
    /// The benchmark's v1 and v2 of `size` bytes, in memory.
    pub fn generate(size: u64, seed: u64, small_edits: usize) -> std::io::Result<Self> {
        let mut v1 = Vec::with_capacity(size as usize);
        write_image(seed, size, &mut v1)?;
        let plan = EditPlan::standard(size, seed, 0.05, small_edits);
        let mut v2 = Vec::with_capacity(size as usize + (64 << 10));
        plan.apply(&v1[..], &mut v2)?;
        Ok(SweepInput {
            v1,
            v2,
            changed: plan.changed_bytes(),
        })
    }

    /// Measures one average chunk size at one normalisation level.
    pub fn measure(&self, avg: u32, normalization: u8) -> fleetmesh_protocol::Result<SweepRow> {
        let params = ChunkParams {
            normalization,
            ..ChunkParams::for_avg(avg)
        };
        let old: HashSet<ChunkId> = chunk_bounds(&self.v1, params)?
            .into_iter()
            .map(|(o, l)| ChunkId::of(&self.v1[o..o + l]))
            .collect();
        let mut seen = HashSet::new();
        let (mut new_chunks, mut new_bytes) = (0, 0u64);
        let mut refs = Vec::new();
        for (offset, len) in chunk_bounds(&self.v2, params)? {
            let id = ChunkId::of(&self.v2[offset..offset + len]);
            if !old.contains(&id) && seen.insert(id) {
                new_chunks += 1;
                new_bytes += len as u64;
            }
            refs.push(ChunkRef {
                id,
                offset: offset as u64,
                len: len as u32,
            });
        }
        let manifest_bytes = codec::encode(&Manifest {
            version: semver::Version::new(2, 0, 0),
            channel: "stable".into(),
            platforms: vec!["generic".into()],
            image_len: self.v2.len() as u64,
            image_hash: ImageHash([0; 32]),
            chunking: params,
            chunks: refs.clone(),
            created_at: UnixTime(0),
            expires_at: UnixTime(1),
        })?
        .len();
        let changed = self.changed as f64;
        Ok(SweepRow {
            avg,
            normalization,
            chunks: refs.len(),
            new_chunks,
            new_bytes,
            changed_bytes: self.changed,
            delta_ratio: new_bytes as f64 / changed,
            manifest_bytes,
            transfer_ratio: (new_bytes + manifest_bytes as u64) as f64 / changed,
        })
    }
}

//! One release as the mesh holds it: its verified manifest, which pieces
//! this node has (and in which order it got them, for incremental
//! have-updates), the download scheduler while it downloads, and counters.

use crate::store::{ChunkFiles, StoreError};
use fleetmesh_protocol::manifest::Manifest;
use fleetmesh_protocol::mesh::pieces;
use fleetmesh_protocol::sched::{Bits, Scheduler};
use fleetmesh_protocol::{ChunkId, ImageHash, ReleaseId, Signed, VerifiedManifest};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Bytes moved for one release, kept across restarts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Chunk bytes received (as sent: compressed).
    pub bytes_down: u64,
    /// Of those, from peers of this node's site.
    pub bytes_down_same_site: u64,
    /// Chunk bytes sent to peers.
    pub bytes_up: u64,
}

/// A release known to the mesh.
#[derive(Debug)]
pub struct Release {
    pub(crate) manifest: VerifiedManifest,
    /// Distinct chunks in first-appearance order, with their lengths.
    pub(crate) pieces: Vec<(ChunkId, u32)>,
    index: HashMap<ChunkId, u32>,
    pub(crate) have: Bits,
    /// Pieces in the order they were gained, for incremental have-updates.
    pub(crate) have_log: Vec<u32>,
    /// Present while downloading.
    pub(crate) sched: Option<Scheduler<PeerId>>,
    /// True once the whole image verified and the release was recorded.
    pub(crate) complete: bool,
    /// True while the whole-image check runs.
    pub(crate) verifying: bool,
    pub(crate) counters: Counters,
}

impl Release {
    /// A release whose present pieces are those with a chunk file.
    pub fn new(manifest: VerifiedManifest, files: &ChunkFiles) -> Self {
        let pieces = pieces(manifest.manifest());
        let index = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.0, i as u32))
            .collect();
        let mut have = Bits::new(pieces.len());
        let mut have_log = Vec::new();
        for (i, (id, _)) in pieces.iter().enumerate() {
            if files.has_chunk(id) {
                have.set(i);
                have_log.push(i as u32);
            }
        }
        Release {
            manifest,
            pieces,
            index,
            have,
            have_log,
            sched: None,
            complete: false,
            verifying: false,
            counters: Counters::default(),
        }
    }

    /// The release id.
    pub fn id(&self) -> ReleaseId {
        self.manifest.id()
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        self.manifest.manifest()
    }

    /// The signed manifest, to serve.
    pub fn signed(&self) -> &Signed<Manifest> {
        self.manifest.signed()
    }

    /// The piece index of a chunk id.
    pub fn piece_of(&self, id: &ChunkId) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// Records a piece gained; returns true if it was new.
    pub fn gained(&mut self, piece: u32) -> bool {
        if self.have.set(piece as usize) {
            self.have_log.push(piece);
            return true;
        }
        false
    }

    /// Forgets a piece whose stored copy is corrupt.
    pub fn lost(&mut self, piece: u32) {
        self.have.clear(piece as usize);
        if let Some(s) = self.sched.as_mut() {
            s.lost(piece);
        }
    }

    /// True when every piece is present.
    pub fn all_present(&self) -> bool {
        self.have.count() == self.pieces.len()
    }
}

/// Reads the whole image back from the chunk files, verifying every chunk,
/// and compares its hash with the manifest. Returns the chunks that are
/// missing or corrupt (empty and `Ok` if the image is whole and right).
pub fn verify_image(files: &ChunkFiles, manifest: &Manifest) -> Result<Vec<ChunkId>, StoreError> {
    let mut hasher = blake3::Hasher::new();
    let mut bad = Vec::new();
    for chunk in &manifest.chunks {
        match files.read_chunk(&chunk.id) {
            Ok(raw) => {
                hasher.update(&raw);
            }
            Err(StoreError::Missing(_) | StoreError::Corrupt { .. }) => {
                if !bad.contains(&chunk.id) {
                    bad.push(chunk.id);
                }
            }
            Err(e) => return Err(e),
        }
    }
    if bad.is_empty() && ImageHash::from(hasher.finalize()) != manifest.image_hash {
        // Every chunk matched its id yet the image does not: the manifest
        // itself is inconsistent, which a valid signature should rule out.
        return Err(StoreError::Invalid(
            fleetmesh_protocol::Error::InvalidMessage {
                what: "manifest",
                reason: "chunks do not hash to the image hash".into(),
            },
        ));
    }
    Ok(bad)
}

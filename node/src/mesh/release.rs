//! One release as the mesh holds it: its verified manifest, which pieces
//! this node has (and in which order it got them, for incremental
//! have-updates), the download scheduler while it downloads, and counters.

use crate::store::{ChunkFiles, StoreError};
use fleetmesh_protocol::manifest::Manifest;
use fleetmesh_protocol::mesh::{pieces, ManifestParts};
use fleetmesh_protocol::sched::{Bits, Scheduler};
use fleetmesh_protocol::{ChunkId, ReleaseId, Signed, VerifiedManifest};
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
    pub(crate) pieces: std::sync::Arc<[(ChunkId, u32)]>,
    index: HashMap<ChunkId, u32>,
    pub(crate) have: Bits,
    /// Pieces in the order they were gained, for incremental have-updates.
    pub(crate) have_log: Vec<u32>,
    /// How many of `have_log`'s first pieces were chunk files found on
    /// disk rather than received and verified by this process: after a
    /// crash one may be torn, so they are checked before completion.
    found: usize,
    /// Present while downloading.
    pub(crate) sched: Option<Scheduler<PeerId>>,
    /// True once every chunk is present and verified, synced, and the
    /// release recorded.
    pub(crate) complete: bool,
    /// True while the final check runs.
    pub(crate) verifying: bool,
    /// False while a download waits for room under the store's cap.
    pub(crate) admitted: bool,
    pub(crate) counters: Counters,
    /// The signed manifest's encoding and its parts, made when a peer
    /// first asks for a part.
    encoded: Option<(Vec<u8>, ManifestParts)>,
}

impl Release {
    /// A release whose present pieces are those `present` says have a
    /// chunk file.
    pub fn new(manifest: VerifiedManifest, present: impl Fn(&ChunkId) -> bool) -> Self {
        let pieces: std::sync::Arc<[(ChunkId, u32)]> = pieces(manifest.manifest()).into();
        let index = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.0, i as u32))
            .collect();
        let mut have = Bits::new(pieces.len());
        let mut have_log = Vec::new();
        for (i, (id, _)) in pieces.iter().enumerate() {
            if present(id) {
                have.set(i);
                have_log.push(i as u32);
            }
        }
        Release {
            manifest,
            pieces,
            index,
            have,
            found: have_log.len(),
            have_log,
            sched: None,
            complete: false,
            verifying: false,
            admitted: true,
            counters: Counters::default(),
            encoded: None,
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

    /// The signed manifest, to store.
    pub fn signed(&self) -> &Signed<Manifest> {
        self.manifest.signed()
    }

    /// Part `i` of the encoded signed manifest, to serve.
    pub fn manifest_part(&mut self, i: usize) -> Option<Vec<u8>> {
        if self.encoded.is_none() {
            let bytes = fleetmesh_protocol::codec::encode(self.manifest.signed()).ok()?;
            let parts = ManifestParts::of(&bytes);
            self.encoded = Some((bytes, parts));
        }
        let (bytes, parts) = self.encoded.as_ref()?;
        parts.part(bytes, i).map(<[u8]>::to_vec)
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

    /// Bytes of the pieces not present yet (raw: what a download may
    /// still add to the store, at most).
    pub fn missing_bytes(&self) -> u64 {
        self.pieces
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.have.get(*i))
            .map(|(_, p)| u64::from(p.1))
            .sum()
    }

    /// The chunks to check before the release completes: those found on
    /// disk. Chunks received since were verified against their ids before
    /// they were stored, and the install verifies every chunk again and
    /// the slot against the image hash.
    pub fn unchecked(&self) -> Vec<ChunkId> {
        self.have_log[..self.found]
            .iter()
            .map(|&i| self.pieces[i as usize].0)
            .collect()
    }
}

/// Reads back and verifies the given chunks; returns those that are
/// missing or corrupt.
pub fn verify_chunks(files: &ChunkFiles, ids: &[ChunkId]) -> Result<Vec<ChunkId>, StoreError> {
    let mut bad = Vec::new();
    for id in ids {
        match files.read_chunk(id) {
            Ok(_) => {}
            Err(StoreError::Missing(_) | StoreError::Corrupt { .. }) => bad.push(*id),
            Err(e) => return Err(e),
        }
    }
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{image, release};
    use crate::ChunkStore;

    #[test]
    fn only_chunks_found_on_disk_are_checked_before_completion_and_a_torn_one_is_caught() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ChunkStore::open(dir.path()).expect("open");
        let m = release(&store, &image(1 << 20));
        let ids: Vec<ChunkId> = pieces(m.manifest()).iter().map(|p| p.0).collect();
        assert!(ids.len() >= 4, "{} chunks", ids.len());
        // A restart finds half of the chunks on disk; one of them is torn.
        let (missing, found) = ids.split_at(ids.len() / 2);
        store.remove_chunks(missing).expect("remove");
        let torn = found[0];
        std::fs::write(store.chunk_path(&torn), b"torn").expect("tear");
        // As a node finds them: from the store's listing.
        let listed = store.files().ids().expect("list");
        let mut r = Release::new(m, |id| listed.contains(id));
        assert_eq!(r.unchecked(), found);
        assert_eq!(
            verify_chunks(store.files(), &r.unchecked()).expect("check"),
            vec![torn]
        );
        // A piece received (and verified) since is not read back again.
        assert!(r.gained(0));
        assert_eq!(r.unchecked(), found);
    }
}

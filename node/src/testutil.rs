//! Test helpers shared by the crate's unit tests.

use crate::ChunkStore;
use fleetmesh_protocol::chunk::ChunkEncoder;
use fleetmesh_protocol::chunking::BlockChunker;
use fleetmesh_protocol::keys::{Policy, Release, Root, SecretKey};
use fleetmesh_protocol::{
    ChunkParams, ChunkRef, ImageHash, Manifest, RoleKeys, Signed, TrustChain, TrustDoc, TrustState,
    UnixTime, VerifiedManifest,
};

/// Stores `image` as a signed release and returns its verified manifest.
pub fn release(store: &ChunkStore, image: &[u8]) -> VerifiedManifest {
    let (root, release) = (
        SecretKey::<Root>::from_seed([1; 32]),
        SecretKey::<Release>::from_seed([2; 32]),
    );
    let doc = TrustDoc {
        version: 1,
        issued_at: UnixTime(0),
        expires_at: UnixTime(1000),
        root: RoleKeys::single(root.public()),
        release: RoleKeys::single(release.public()),
        policy: RoleKeys::single(SecretKey::<Policy>::from_seed([3; 32]).public()),
    };
    let chain = TrustChain {
        docs: vec![Signed::sign(&doc, &[&root]).expect("sign")],
    };
    let trust = TrustState::from_chain(RoleKeys::single(root.public()), &chain).expect("trust");
    let writer = store.writer();
    let mut encoder = ChunkEncoder::new(3);
    let mut chunks = Vec::new();
    for block in BlockChunker::new(image, ChunkParams::DEFAULT, 1 << 16).expect("params") {
        let block = block.expect("read");
        for &(start, len) in &block.chunks {
            let added = writer
                .add_raw(&block.data[start..start + len], &mut encoder)
                .expect("stage");
            chunks.push(ChunkRef {
                id: added.id,
                offset: block.offset + start as u64,
                len: len as u32,
            });
        }
    }
    writer.commit().expect("commit");
    let manifest = Manifest {
        version: semver::Version::new(2, 0, 0),
        channel: "stable".into(),
        platforms: vec!["generic".into()],
        image_len: image.len() as u64,
        image_hash: ImageHash::of(image),
        chunking: ChunkParams::DEFAULT,
        chunks,
        created_at: UnixTime(1),
        expires_at: UnixTime(999),
    };
    Signed::sign(&manifest, &[&release])
        .expect("sign")
        .verify_release(&trust, UnixTime(2))
        .expect("verifies")
}

/// A deterministic test image of `len` bytes.
pub fn image(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8 ^ (i / 5000) as u8)
        .collect()
}

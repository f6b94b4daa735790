use super::*;
use crate::slots::file::FileBackend;
use fleetmesh_protocol::chunk::ChunkEncoder;
use fleetmesh_protocol::chunking::BlockChunker;
use fleetmesh_protocol::keys::{Policy, Release, Root, SecretKey};
use fleetmesh_protocol::{
    ChunkParams, ChunkRef, Manifest, RoleKeys, Signed, TrustChain, TrustDoc, TrustState, UnixTime,
};

/// Stores `image` as a signed release and returns its verified manifest.
fn release(store: &ChunkStore, image: &[u8]) -> VerifiedManifest {
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

fn image(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8 ^ (i / 5000) as u8)
        .collect()
}

struct Lab {
    dir: tempfile::TempDir,
    store: ChunkStore,
    backend: FileBackend,
}

fn lab() -> Lab {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ChunkStore::open(&dir.path().join("store")).expect("store");
    let backend = FileBackend::new(
        dir.path().join("slot-a"),
        dir.path().join("slot-b"),
        dir.path().join("boot.json"),
    );
    std::fs::write(dir.path().join("slot-a"), b"the running OS").expect("slot a");
    // Slot B holds a longer older image: install must leave no tail of it.
    std::fs::write(dir.path().join("slot-b"), vec![0xAA; 600_000]).expect("slot b");
    Lab {
        dir,
        store,
        backend,
    }
}

#[test]
fn installs_the_inactive_slot_exactly_and_leaves_the_active_one() {
    let lab = lab();
    let img = image(300_000);
    let m = release(&lab.store, &img);
    install(&lab.store, &m, &lab.backend, Slot::A, Slot::B).expect("install");
    assert_eq!(
        std::fs::read(lab.dir.path().join("slot-b")).expect("read"),
        img
    );
    assert_eq!(
        std::fs::read(lab.dir.path().join("slot-a")).expect("read"),
        b"the running OS"
    );
    assert_eq!(
        hash_prefix(&lab.dir.path().join("slot-b"), img.len() as u64).expect("hash"),
        ImageHash::of(&img)
    );
}

#[test]
fn the_running_slot_is_refused() {
    let lab = lab();
    let m = release(&lab.store, &image(50_000));
    let err = install(&lab.store, &m, &lab.backend, Slot::B, Slot::B).expect_err("refused");
    assert!(
        matches!(&err, FailReason::Write(e) if e.contains("it is the running slot")),
        "{err}"
    );
    assert_eq!(
        std::fs::read(lab.dir.path().join("slot-b")).expect("read"),
        vec![0xAA; 600_000]
    );
}

#[test]
fn a_corrupt_chunk_fails_the_install_naming_it() {
    let lab = lab();
    let m = release(&lab.store, &image(200_000));
    let victim = m.manifest().chunks[3].id;
    let path = lab.store.chunk_path(&victim);
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&path, bytes).expect("corrupt");
    let err = install(&lab.store, &m, &lab.backend, Slot::A, Slot::B).expect_err("corrupt chunk");
    assert!(
        matches!(&err, FailReason::Write(e) if e.contains(&victim.to_hex())),
        "{err}"
    );
    assert_eq!(
        std::fs::read(lab.dir.path().join("slot-a")).expect("read"),
        b"the running OS"
    );
}

use super::*;
use crate::slots::file::FileBackend;
use crate::testutil::{image, release};

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

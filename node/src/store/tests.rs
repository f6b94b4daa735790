use super::*;
use fleetmesh_protocol::chunk::ChunkEncoder;
use fleetmesh_protocol::keys::{Release, SecretKey};
use fleetmesh_protocol::{ChunkParams, ChunkRef, ImageHash, UnixTime};

fn enc() -> ChunkEncoder {
    ChunkEncoder::new(3)
}

fn store() -> (tempfile::TempDir, ChunkStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ChunkStore::open(dir.path()).expect("open");
    (dir, store)
}

#[test]
fn chunks_become_visible_only_on_commit_and_dedupe() {
    let (_dir, store) = store();
    let data = b"hello chunk".repeat(100);
    let writer = store.writer();
    let first = writer.add_raw(&data, &mut enc()).expect("add");
    assert!(first.new && first.stored_bytes > 0);
    assert!(
        !writer.add_raw(&data, &mut enc()).expect("add again").new,
        "same batch dedupes"
    );
    assert!(!store.has_chunk(&first.id), "visible before commit");
    assert_eq!(writer.commit().expect("commit"), vec![first.id]);
    assert_eq!(store.read_chunk(&first.id).expect("read"), data);
    assert!(
        !store.writer().add_raw(&data, &mut enc()).expect("add").new,
        "store dedupes"
    );
}

#[test]
fn the_listing_names_committed_chunks_only() {
    let (_dir, store) = store();
    let writer = store.writer();
    let kept: BTreeSet<ChunkId> = (0..40u32)
        .map(|i| {
            writer
                .add_raw(&i.to_le_bytes().repeat(50), &mut enc())
                .expect("add")
                .id
        })
        .collect();
    writer.commit().expect("commit");
    // Staged but not committed, and a stray file: neither is a chunk.
    let staging = store.writer();
    let staged = staging
        .add_raw(b"staged, not committed", &mut enc())
        .expect("add");
    let first = kept.iter().next().expect("a chunk");
    fs::write(store.shard_dir(first).join("stray"), b"x").expect("stray");
    let listed: BTreeSet<ChunkId> = store.files().ids().expect("ids").into_iter().collect();
    assert_eq!(listed, kept);
    assert!(!listed.contains(&staged.id));
    let listed_with_sizes: BTreeSet<ChunkId> = store
        .files()
        .list()
        .expect("list")
        .into_iter()
        .map(|(id, ..)| id)
        .collect();
    assert_eq!(listed_with_sizes, kept);
}

#[test]
fn a_dropped_writer_leaves_nothing() {
    let (_dir, store) = store();
    let writer = store.writer();
    let added = writer.add_raw(b"abandoned", &mut enc()).expect("add");
    let shard = store.shard_dir(&added.id);
    assert_eq!(
        fs::read_dir(&shard).expect("ls").count(),
        1,
        "temp file staged"
    );
    drop(writer);
    assert!(!store.has_chunk(&added.id));
    assert_eq!(fs::read_dir(&shard).expect("ls").count(), 0);
}

#[test]
fn corrupt_and_missing_chunks_are_errors_not_data() {
    let (_dir, store) = store();
    let writer = store.writer();
    let id = writer.add_raw(&[7u8; 5000], &mut enc()).expect("add").id;
    writer.commit().expect("commit");
    let path = store.chunk_path(&id);
    let mut bytes = fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&path, bytes).expect("corrupt it");
    assert!(matches!(
        store.read_chunk(&id),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        store.read_encoded(&id),
        Err(StoreError::Corrupt { .. })
    ));
    let absent = ChunkId([1; 32]);
    assert!(matches!(
        store.read_chunk(&absent),
        Err(StoreError::Missing(_))
    ));
}

#[test]
fn encoded_chunks_are_verified_before_they_are_staged() {
    let (_dir, store) = store();
    let good = enc().encode(b"payload");
    let writer = store.writer();
    let other = ChunkId::of(b"other");
    let err = writer.add_encoded(other, &good).expect_err("mismatch");
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert_eq!(
        fs::read_dir(store.shard_dir(&other)).expect("ls").count(),
        0
    );
    let id = ChunkId::of(b"payload");
    assert!(writer.add_encoded(id, &good).expect("valid").new);
    writer.commit().expect("commit");
    assert_eq!(store.read_encoded(&id).expect("read"), good);
}

#[test]
fn releases_and_counters_persist_across_reopen_and_stale_temps_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = Manifest {
        version: semver::Version::new(1, 0, 0),
        channel: "stable".into(),
        platforms: vec!["generic".into()],
        image_len: 7,
        image_hash: ImageHash::of(b"payload"),
        chunking: ChunkParams::DEFAULT,
        chunks: vec![ChunkRef {
            id: ChunkId::of(b"payload"),
            offset: 0,
            len: 7,
        }],
        created_at: UnixTime(1),
        expires_at: UnixTime(2),
    };
    let signed =
        Signed::sign(&manifest, &[&SecretKey::<Release>::from_seed([1; 32])]).expect("sign");
    let info = ReleaseInfo {
        version: "1.0.0".into(),
        channel: "stable".into(),
        release_id: signed.release_id().to_hex(),
        image_bytes: 7,
        chunks: 1,
        new_chunks: 1,
        new_bytes: 7,
        stored_bytes: 8,
    };
    {
        let store = ChunkStore::open(dir.path()).expect("open");
        store.record_release(&signed, &info).expect("record");
    }
    // A crashed writer: the dirty marker and a temp file are left behind.
    let leftover = dir.path().join("chunks/ab/.abcd.tmp");
    fs::write(&leftover, b"x").expect("simulate crash leftovers");
    fs::write(dir.path().join("dirty"), b"open\n").expect("simulate crash");
    let store = ChunkStore::open(dir.path()).expect("reopen");
    assert!(!leftover.exists(), "stale temp file removed");
    assert_eq!(store.releases().expect("list"), vec![info]);
    assert_eq!(
        store.manifest(&signed.release_id()).expect("get"),
        Some(signed)
    );
    assert_eq!(store.counters().expect("counters")["bytes_written"], 8);
    drop(store);
    assert!(
        !dir.path().join("dirty").exists(),
        "clean close clears the marker"
    );
}

/// sled 0.34 writes snapshots to `snap.N.generating` and renames them when
/// done; a kill in between leaves a file that makes the next open fail with
/// "Read corrupted data" (spacejam/sled#1527, seen in our SIGKILL test).
#[test]
fn an_interrupted_sled_snapshot_does_not_stop_the_store_opening() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = ChunkStore::open(dir.path()).expect("open");
        store
            .tree("journal")
            .expect("tree")
            .insert("state", "rebooting")
            .expect("insert");
        store.flush().expect("flush");
    }
    fs::write(
        dir.path().join("meta/snap.00000000FFFFFFFF.generating"),
        b"",
    )
    .expect("torn snapshot");
    let store = ChunkStore::open(dir.path()).expect("reopens");
    let state = store
        .tree("journal")
        .expect("tree")
        .get("state")
        .expect("get");
    assert_eq!(state.as_deref(), Some(&b"rebooting"[..]));
    assert!(!dir
        .path()
        .join("meta/snap.00000000FFFFFFFF.generating")
        .exists());
}

#[test]
fn a_second_opener_is_refused_and_leaves_the_first_ones_work_alone() {
    let (dir, store) = store();
    let writer = store.writer();
    let added = writer.add_raw(b"in progress", &mut enc()).expect("add");
    let temps = |d: &Path| {
        walk_files(d)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(".tmp"))
            .count()
    };
    let before = temps(dir.path());
    assert!(before > 0, "the writer has a temp file");
    match ChunkStore::open(dir.path()) {
        Err(e @ StoreError::InUse(_)) => {
            assert!(e
                .to_string()
                .contains("in use by another fleetmesh process"))
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    assert_eq!(temps(dir.path()), before, "the refused opener cleaned up");
    assert_eq!(writer.commit().expect("commit"), vec![added.id]);
    drop(store);
    ChunkStore::open(dir.path()).expect("open once the first is closed");
}

fn walk_files(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(d).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

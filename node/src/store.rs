//! The content-addressed chunk store shared by the seed and the nodes.
//!
//! Chunk bytes live in files named by their id, `chunks/ab/abcd…`, in the
//! encoding of [`fleetmesh_protocol::chunk`]. Metadata (signed manifests,
//! release records, counters) lives in sled. Following iroh-blobs: data in
//! files, small data in the database, and no database write per chunk.
//!
//! Writes go through a [`ChunkWriter`]: each chunk is verified against its id
//! and written to a temp name in its shard directory (`chunks/ab/.abcd….tmp`:
//! one huge temp directory makes creates slow and contended, and a rename
//! within one directory is cheaper than across two); [`ChunkWriter::commit`]
//! makes all of them durable with one `syncfs` (a group commit; fsync per
//! file costs ~0.5 ms each here), then renames them into place and fsyncs
//! the shard directories. A reader never sees a partial chunk, and every read
//! is verified, so a corrupt file is an error, never data. A writer dropped
//! without commit removes its temp files. The store keeps a `dirty` marker
//! while open; finding it at [`ChunkStore::open`] means the last process
//! died, and only then are the shards scanned for temp files to remove.

use crate::fsutil::{self, Context, IoError};
use fleetmesh_protocol::chunk::{decode_chunk, ChunkEncoder};
use fleetmesh_protocol::manifest::Manifest;
use fleetmesh_protocol::{codec, ChunkId, ReleaseId, Signed};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Store failures. `Corrupt` and `Missing` name the chunk; everything else
/// names the file or the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Db(#[from] sled::Error),
    /// The chunk is not in the store.
    #[error("chunk {0} is not in the store")]
    Missing(ChunkId),
    /// The chunk file does not decode to bytes with its id.
    #[error("chunk {id} on disk is corrupt: {source}")]
    Corrupt {
        /// The chunk.
        id: ChunkId,
        /// What is wrong with it.
        source: fleetmesh_protocol::Error,
    },
    /// Bytes offered for storage failed verification.
    #[error(transparent)]
    Invalid(#[from] fleetmesh_protocol::Error),
    /// Another process has the store open.
    #[error("{}: the store is in use by another fleetmesh process; try again when it is done", .0.display())]
    InUse(PathBuf),
    /// A metadata record does not decode.
    #[error("metadata record for release {id}: {reason}")]
    BadRecord {
        /// The release.
        id: ReleaseId,
        /// What is wrong.
        reason: String,
    },
}

/// What the store records about a release, as `fleetmesh-seed publish` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    /// Semantic version.
    pub version: String,
    /// Channel.
    pub channel: String,
    /// Release id (hex).
    pub release_id: String,
    /// Image length.
    pub image_bytes: u64,
    /// Chunks in the manifest.
    pub chunks: u64,
    /// Chunks that were not in the store before this release.
    pub new_chunks: u64,
    /// Uncompressed bytes of those new chunks.
    pub new_bytes: u64,
    /// Bytes those new chunks take on disk (compressed where that helped).
    pub stored_bytes: u64,
}

/// The chunk files of a store, without its database: what the mesh reads
/// and writes, and what a seed daemon serves while `publish` holds the
/// database. Several processes may hold one.
#[derive(Clone, Debug)]
pub struct ChunkFiles {
    chunks: PathBuf,
}

impl ChunkFiles {
    /// The chunk files of the store in `dir` (which must exist).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let chunks = dir.join("chunks");
        fs::read_dir(&chunks).ctx("open chunk directory", &chunks)?;
        Ok(ChunkFiles { chunks })
    }

    /// Where a chunk's file is.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        self.shard_dir(id).join(id.to_hex())
    }

    pub(crate) fn shard_dir(&self, id: &ChunkId) -> PathBuf {
        self.chunks.join(hex::encode(&id.0[..1]))
    }

    /// True if a file for `id` exists (its content is checked on read).
    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        self.chunk_path(id).is_file()
    }

    /// The chunk's stored encoding, verified against `id`: what a peer is sent.
    pub fn read_encoded(&self, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        Ok(self.read_verified(id)?.0)
    }

    /// The chunk's raw bytes, verified against `id`.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        Ok(self.read_verified(id)?.1)
    }

    fn read_verified(&self, id: &ChunkId) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let path = self.chunk_path(id);
        let encoded = match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::Missing(*id)),
            other => other.ctx("read", &path)?,
        };
        let raw =
            decode_chunk(&encoded, id).map_err(|source| StoreError::Corrupt { id: *id, source })?;
        Ok((encoded, raw))
    }

    /// Stores a chunk received from a peer: verified, written to a temp
    /// name and renamed, so no reader sees a partial or wrong chunk. Not
    /// fsynced: a download becomes durable when its release is recorded
    /// (after a `syncfs`), and a chunk torn by a crash fails verification
    /// on read and is fetched again. Returns false if it was already there.
    pub fn put_received(&self, id: &ChunkId, encoded: &[u8]) -> Result<bool, StoreError> {
        decode_chunk(encoded, id)?;
        let path = self.chunk_path(id);
        if path.is_file() {
            return Ok(false);
        }
        // Two responses may carry the same chunk (endgame): unique temp names.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.shard_dir(id).join(format!(".{id}.{n}{TEMP_SUFFIX}"));
        fs::write(&tmp, encoded).ctx("write", &tmp)?;
        if let Err(e) = fs::rename(&tmp, &path).ctx("rename into", &path) {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        Ok(true)
    }

    /// Removes a chunk found corrupt, so it is fetched again.
    pub fn remove(&self, id: &ChunkId) -> Result<(), StoreError> {
        let path = self.chunk_path(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => Ok(other.ctx("remove", &path)?),
        }
    }

    /// Every chunk file: its id, its size on disk and when it was written.
    /// Temp files are not listed.
    pub fn list(&self) -> Result<Vec<(ChunkId, u64, std::time::SystemTime)>, StoreError> {
        let mut out = Vec::new();
        self.each_file(|id, entry| {
            // Gone since it was listed (evicted, or found corrupt): skip.
            if let Ok(meta) = entry.metadata() {
                let written = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                out.push((id, meta.len(), written));
            }
        })?;
        Ok(out)
    }

    /// The ids of every chunk file, from the shard directories' listings
    /// alone: one `getdents` per shard instead of a `stat` per chunk, which
    /// for a release of 11,000 chunks took 60 ms on a quiet machine and
    /// 400 ms on a busy one.
    pub fn ids(&self) -> Result<HashSet<ChunkId>, StoreError> {
        let mut out = HashSet::new();
        self.each_file(|id, _| {
            out.insert(id);
        })?;
        Ok(out)
    }

    /// Calls `f` for every chunk file (not temp files) in the shards.
    fn each_file(&self, mut f: impl FnMut(ChunkId, &fs::DirEntry)) -> Result<(), StoreError> {
        for shard in 0..=255u8 {
            let dir = self.chunks.join(hex::encode([shard]));
            let entries = match fs::read_dir(&dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                other => other.ctx("list", &dir)?,
            };
            for entry in entries {
                let entry = entry.ctx("list", &dir)?;
                if let Ok(id) = entry.file_name().to_string_lossy().parse::<ChunkId>() {
                    f(id, &entry);
                }
            }
        }
        Ok(())
    }

    /// Makes every chunk written so far durable (one `syncfs`).
    pub fn sync(&self) -> Result<(), StoreError> {
        Ok(fsutil::syncfs(&self.chunks)?)
    }
}

/// A chunk store rooted at one directory.
#[derive(Debug)]
pub struct ChunkStore {
    files: ChunkFiles,
    chunks: PathBuf,
    dirty: PathBuf,
    db: sled::Db,
    manifests: sled::Tree,
    infos: sled::Tree,
    counters: sled::Tree,
    /// Held (locked) while the store is open.
    _lock: fs::File,
}

impl ChunkStore {
    /// Opens (creating if needed) the store in `dir`, and removes temp files
    /// an interrupted writer left.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        // One process at a time, before anything is cleaned: another's temp
        // files are work in progress, not debris.
        fs::create_dir_all(dir).ctx("create directory", dir)?;
        let lock_path = dir.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .ctx("open", &lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(StoreError::InUse(dir.to_owned())),
            Err(fs::TryLockError::Error(e)) => {
                return Err(StoreError::Io(IoError {
                    op: "lock",
                    path: lock_path,
                    source: e,
                }))
            }
        }
        let chunks = dir.join("chunks");
        let dirty = dir.join("dirty");
        let crashed = dirty.exists();
        for shard in 0..=255u8 {
            let path = chunks.join(hex::encode([shard]));
            fs::create_dir_all(&path).ctx("create directory", &path)?;
            if crashed {
                remove_temp_files(&path)?;
            }
        }
        fsutil::write_atomic(&dirty, b"open\n", 0o644)?;
        let db_path = dir.join("meta");
        remove_torn_snapshots(&db_path)?;
        let db = sled::open(&db_path).map_err(|e| match e {
            sled::Error::Io(source) => StoreError::Io(IoError {
                op: "open database (is another fleetmesh process using it?)",
                path: db_path.clone(),
                source,
            }),
            other => StoreError::Db(other),
        })?;
        Ok(ChunkStore {
            files: ChunkFiles {
                chunks: chunks.clone(),
            },
            chunks,
            dirty,
            manifests: db.open_tree("manifests")?,
            infos: db.open_tree("release_info")?,
            counters: db.open_tree("counters")?,
            db,
            _lock: lock,
        })
    }

    /// Where chunk `id` lives.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        self.files.chunk_path(id)
    }

    pub(crate) fn shard_dir(&self, id: &ChunkId) -> PathBuf {
        self.files.shard_dir(id)
    }

    /// The store's chunk files.
    pub fn files(&self) -> &ChunkFiles {
        &self.files
    }

    /// True if a file for `id` exists (its content is checked on read).
    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        self.files.has_chunk(id)
    }

    /// The chunk's stored encoding, verified against `id`.
    pub fn read_encoded(&self, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        self.files.read_encoded(id)
    }

    /// The chunk's raw bytes, verified against `id`.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        self.files.read_chunk(id)
    }

    /// Starts a batch of chunk writes.
    pub fn writer(&self) -> ChunkWriter<'_> {
        ChunkWriter {
            store: self,
            staged: Mutex::new(BTreeMap::new()),
            committed: false,
        }
    }

    /// Removes chunks (a failed publish's new chunks) and makes that durable.
    pub fn remove_chunks(&self, ids: &[ChunkId]) -> Result<(), StoreError> {
        let mut dirs = BTreeSet::new();
        for id in ids {
            let path = self.chunk_path(id);
            match fs::remove_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => other.ctx("remove", &path)?,
            }
            dirs.insert(self.shard_dir(id));
        }
        for dir in dirs {
            fsutil::fsync_dir(&dir)?;
        }
        Ok(())
    }

    /// Records a release whose chunks are all durable in the store: the
    /// signed manifest, its info and the counters, in one transaction,
    /// flushed before returning.
    pub fn record_release(
        &self,
        signed: &Signed<Manifest>,
        info: &ReleaseInfo,
    ) -> Result<(), StoreError> {
        let id = signed.release_id();
        let manifest = codec::encode(signed)?;
        let info_bytes = serde_json::to_vec(info).map_err(|e| StoreError::BadRecord {
            id,
            reason: e.to_string(),
        })?;
        let counters = self.counters()?;
        let bump = |name: &str, by: u64| {
            (
                name.to_owned(),
                counters.get(name).copied().unwrap_or(0) + by,
            )
        };
        let updated = [
            bump("releases", 1),
            bump("chunks_written", info.new_chunks),
            bump("bytes_written", info.stored_bytes),
        ];
        (&self.manifests, &self.infos, &self.counters)
            .transaction(|(m, i, c)| {
                m.insert(&id.0, manifest.as_slice())?;
                i.insert(&id.0, info_bytes.as_slice())?;
                for (name, value) in &updated {
                    c.insert(name.as_bytes(), &value.to_be_bytes())?;
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(tx_error)?;
        self.db.flush()?;
        Ok(())
    }

    /// Replaces the signed manifest of a recorded release with another
    /// signing of the same body (after a key rotation); flushed.
    pub fn replace_manifest(&self, signed: &Signed<Manifest>) -> Result<(), StoreError> {
        let id = signed.release_id();
        if self.manifests.get(id.0)?.is_none() {
            return Err(StoreError::BadRecord {
                id,
                reason: "no such release to re-sign".into(),
            });
        }
        self.manifests.insert(id.0, codec::encode(signed)?)?;
        self.db.flush()?;
        Ok(())
    }

    /// Forgets a recorded release (evicted): its manifest and info, in one
    /// transaction, flushed. Its chunks are the caller's to remove.
    pub fn forget_release(&self, id: &ReleaseId) -> Result<(), StoreError> {
        (&self.manifests, &self.infos)
            .transaction(|(m, i)| {
                m.remove(&id.0)?;
                i.remove(&id.0)?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(tx_error)?;
        self.db.flush()?;
        Ok(())
    }

    /// Every recorded release's info, in no particular order.
    pub fn releases(&self) -> Result<Vec<ReleaseInfo>, StoreError> {
        self.infos
            .iter()
            .map(|item| {
                let (key, value) = item?;
                serde_json::from_slice(&value).map_err(|e| StoreError::BadRecord {
                    id: release_id_from_key(&key),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// The signed manifest of a recorded release.
    pub fn manifest(&self, id: &ReleaseId) -> Result<Option<Signed<Manifest>>, StoreError> {
        let Some(bytes) = self.manifests.get(id.0)? else {
            return Ok(None);
        };
        codec::decode(&bytes)
            .map(Some)
            .map_err(|e| StoreError::BadRecord {
                id: *id,
                reason: e.to_string(),
            })
    }

    /// A named metadata tree in the store's database (the updater's journal).
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// Makes every metadata write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// The store's counters: `releases`, `chunks_written`, `bytes_written`.
    pub fn counters(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        self.counters
            .iter()
            .map(|item| {
                let (key, value) = item?;
                let n = value
                    .as_ref()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Ok((String::from_utf8_lossy(&key).into_owned(), n))
            })
            .collect()
    }
}

impl Drop for ChunkStore {
    fn drop(&mut self) {
        // Closed cleanly: every writer has committed or removed its temps.
        let _ = fs::remove_file(&self.dirty);
    }
}

const TEMP_SUFFIX: &str = ".tmp";

fn tx_error(e: sled::transaction::TransactionError<()>) -> StoreError {
    match e {
        sled::transaction::TransactionError::Storage(e) => StoreError::Db(e),
        sled::transaction::TransactionError::Abort(()) => {
            StoreError::Db(sled::Error::Unsupported("transaction aborted".into()))
        }
    }
}

/// sled 0.34 writes a snapshot to `snap.N.generating` and renames it when
/// complete; a process killed in between leaves the partial file, and the
/// next open fails with "Read corrupted data" (spacejam/sled#1527; our
/// SIGKILL test hit it). Such a file is by definition incomplete, and sled
/// recovers from the previous snapshot and its log without it.
fn remove_torn_snapshots(db: &Path) -> Result<(), StoreError> {
    let Ok(entries) = fs::read_dir(db) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry.ctx("list", db)?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(path = %path.display(), "removing an interrupted sled snapshot");
            fs::remove_file(&path).ctx("remove interrupted snapshot", &path)?;
        }
    }
    Ok(())
}

fn remove_temp_files(shard: &Path) -> Result<(), StoreError> {
    for entry in fs::read_dir(shard).ctx("list", shard)? {
        let path = entry.ctx("list", shard)?.path();
        if path.to_string_lossy().ends_with(TEMP_SUFFIX) {
            fs::remove_file(&path).ctx("remove stale temp file", &path)?;
        }
    }
    Ok(())
}

fn release_id_from_key(key: &[u8]) -> ReleaseId {
    let mut id = [0u8; 32];
    let n = key.len().min(32);
    id[..n].copy_from_slice(&key[..n]);
    ReleaseId(id)
}

/// The outcome of adding one chunk to a [`ChunkWriter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Added {
    /// The chunk's id.
    pub id: ChunkId,
    /// False if the store (or this batch) already had it.
    pub new: bool,
    /// Bytes it takes on disk if new, else 0.
    pub stored_bytes: u64,
}

/// A batch of chunk writes, safe to use from several threads. Nothing is
/// visible in the store until [`ChunkWriter::commit`].
#[derive(Debug)]
pub struct ChunkWriter<'a> {
    store: &'a ChunkStore,
    staged: Mutex<BTreeMap<ChunkId, PathBuf>>,
    committed: bool,
}

impl ChunkWriter<'_> {
    /// Adds a chunk given its raw bytes, encoded by `encoder` (one per
    /// thread); its id is computed here.
    pub fn add_raw(&self, raw: &[u8], encoder: &mut ChunkEncoder) -> Result<Added, StoreError> {
        let id = ChunkId::of(raw);
        self.stage(id, || Ok(encoder.encode(raw)))
    }

    /// Adds a chunk received in its stored encoding; it must decode to bytes
    /// whose id is `id`.
    pub fn add_encoded(&self, id: ChunkId, encoded: &[u8]) -> Result<Added, StoreError> {
        self.stage(id, || {
            decode_chunk(encoded, &id)?;
            Ok(encoded.to_vec())
        })
    }

    fn stage(
        &self,
        id: ChunkId,
        encode: impl FnOnce() -> Result<Vec<u8>, StoreError>,
    ) -> Result<Added, StoreError> {
        let tmp = self
            .store
            .shard_dir(&id)
            .join(format!(".{id}{TEMP_SUFFIX}"));
        {
            let mut staged = self.staged.lock().unwrap_or_else(|p| p.into_inner());
            if staged.contains_key(&id) || self.store.has_chunk(&id) {
                return Ok(Added {
                    id,
                    new: false,
                    stored_bytes: 0,
                });
            }
            staged.insert(id, tmp.clone());
        }
        let written = encode().and_then(|bytes| {
            fs::write(&tmp, &bytes).ctx("write", &tmp)?;
            Ok(bytes.len() as u64)
        });
        match written {
            Ok(stored_bytes) => Ok(Added {
                id,
                new: true,
                stored_bytes,
            }),
            Err(e) => {
                self.staged
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Makes every added chunk durable and visible; returns the ids placed.
    /// On error, nothing of this batch remains in the store.
    pub fn commit(mut self) -> Result<Vec<ChunkId>, StoreError> {
        self.committed = true;
        let staged = std::mem::take(&mut *self.staged.lock().unwrap_or_else(|p| p.into_inner()));
        let mut placed = Vec::with_capacity(staged.len());
        let result = self.place(&staged, &mut placed);
        if let Err(e) = result {
            let _ = self.store.remove_chunks(&placed);
            for tmp in staged.values() {
                let _ = fs::remove_file(tmp);
            }
            return Err(e);
        }
        Ok(placed)
    }

    fn place(
        &self,
        staged: &BTreeMap<ChunkId, PathBuf>,
        placed: &mut Vec<ChunkId>,
    ) -> Result<(), StoreError> {
        if staged.is_empty() {
            return Ok(());
        }
        fsutil::syncfs(&self.store.chunks)?;
        // Renames are independent per shard; ids are sorted, so contiguous
        // parts touch few shards each. One thread per core.
        let entries: Vec<(&ChunkId, &PathBuf)> = staged.iter().collect();
        let threads = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(8);
        let parts = std::thread::scope(|s| {
            let handles: Vec<_> = entries
                .chunks(entries.len().div_ceil(threads))
                .map(|part| s.spawn(move || self.place_part(part)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect::<Vec<_>>()
        });
        let mut result = Ok(());
        for (done, outcome) in parts {
            placed.extend(done);
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }

    /// Renames one part of a batch into place and fsyncs its shard
    /// directories; returns what it placed even when it fails midway.
    fn place_part(&self, part: &[(&ChunkId, &PathBuf)]) -> (Vec<ChunkId>, Result<(), StoreError>) {
        let mut placed = Vec::with_capacity(part.len());
        let mut dirs = BTreeSet::new();
        for (id, tmp) in part {
            let path = self.store.chunk_path(id);
            if let Err(e) = fs::rename(tmp, &path).ctx("rename into", &path) {
                return (placed, Err(e.into()));
            }
            placed.push(**id);
            dirs.insert(self.store.shard_dir(id));
        }
        for dir in dirs {
            if let Err(e) = fsutil::fsync_dir(&dir) {
                return (placed, Err(e.into()));
            }
        }
        (placed, Ok(()))
    }
}

impl Drop for ChunkWriter<'_> {
    fn drop(&mut self) {
        if !self.committed {
            for tmp in self
                .staged
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .values()
            {
                let _ = fs::remove_file(tmp);
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! `fleetmesh-seed publish`: chunk, hash, compress, store, sign, record.
//!
//! The image is read once, as a stream. The reading thread cuts chunks and
//! feeds the whole-image hash; worker threads hash, compress and write each
//! chunk to the store's temp area. Only when every chunk is durable (one
//! group commit) is the manifest signed and the release recorded, so an
//! interrupted or failed publish leaves no half release; a failed one also
//! removes the chunks it added.

use crate::layout::Seed;
use crate::{Result, SeedError};
use fleetmesh_node::store::{Added, ChunkWriter};
use fleetmesh_node::{ChunkStore, ReleaseInfo, StoreError};
use fleetmesh_protocol::chunking::{chunk_reader, Chunk};
use fleetmesh_protocol::keys::Release;
use fleetmesh_protocol::manifest::is_valid_name;
use fleetmesh_protocol::{ChunkParams, ChunkRef, Manifest, Signed, UnixTime};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};

/// What to publish.
#[derive(Clone, Debug)]
pub struct PublishRequest {
    /// The image file.
    pub image: PathBuf,
    /// Its version.
    pub version: semver::Version,
    /// Channel; the config's default if `None`.
    pub channel: Option<String>,
    /// Platforms; the config's defaults if empty.
    pub platforms: Vec<String>,
}

/// Progress callback: bytes of the image read so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// Publishes `req` in `seed` at time `now`.
pub fn publish(
    seed: &Seed,
    req: &PublishRequest,
    now: UnixTime,
    progress: Progress<'_>,
) -> Result<ReleaseInfo> {
    let cfg = &seed.config.publish;
    let channel = req
        .channel
        .clone()
        .unwrap_or_else(|| cfg.default_channel.clone());
    let platforms = if req.platforms.is_empty() {
        cfg.default_platforms.clone()
    } else {
        req.platforms.clone()
    };
    check_names(&channel, &platforms)?;
    let (file, image_len) = open_image(&req.image, cfg.max_image_bytes)?;
    let trust = seed.trust()?;
    let key = seed.key::<Release>()?;
    let store = seed.store()?;
    check_newer(&store, &req.version, &channel)?;

    let params = seed.config.chunk_params();
    let limit = cfg.max_image_bytes;
    let writer = store.writer(cfg.zstd_level);
    let cut = cut_image(file, &req.image, params, limit, &writer, progress)?;
    if cut.image_len != image_len {
        return Err(bad_image(
            &req.image,
            "changed while it was being published",
        ));
    }
    let placed = writer.commit()?;

    let manifest = Manifest {
        version: req.version.clone(),
        channel: channel.clone(),
        platforms,
        image_len: cut.image_len,
        image_hash: cut.image_hash.into(),
        chunking: params,
        chunks: cut.chunks,
        created_at: now,
        expires_at: now.plus_secs(cfg.release_ttl_days * 24 * 3600),
    };
    let recorded = sign_and_record(&store, &manifest, &key, &trust, now, &cut.totals);
    if recorded.is_err() {
        // Best effort: the chunks are valid, only unreferenced; removing them
        // keeps "a failed publish changes nothing".
        let _ = store.remove_chunks(&placed);
    }
    recorded
}

fn sign_and_record(
    store: &ChunkStore,
    manifest: &Manifest,
    key: &fleetmesh_protocol::keys::SecretKey<Release>,
    trust: &fleetmesh_protocol::TrustState,
    now: UnixTime,
    totals: &Totals,
) -> Result<ReleaseInfo> {
    let signed = Signed::sign(manifest, &[key])?;
    // Verify as a node would: catches a release key the trust document does
    // not delegate, an expired trust document, an inconsistent manifest.
    signed
        .verify_release(trust, now)
        .map_err(SeedError::Trust)?;
    let info = ReleaseInfo {
        version: manifest.version.to_string(),
        channel: manifest.channel.clone(),
        release_id: signed.release_id().to_hex(),
        image_bytes: manifest.image_len,
        chunks: manifest.chunks.len() as u64,
        new_chunks: totals.new_chunks,
        new_bytes: totals.new_bytes,
        stored_bytes: totals.stored_bytes,
    };
    store.record_release(&signed, &info)?;
    Ok(info)
}

fn check_names(channel: &str, platforms: &[String]) -> Result<()> {
    if !is_valid_name(channel) {
        return Err(SeedError::BadArgument(format!(
            "channel {channel:?} must be 1-64 characters of a-z, 0-9, '-', '_', '.'"
        )));
    }
    if let Some(p) = platforms.iter().find(|p| !is_valid_name(p)) {
        return Err(SeedError::BadArgument(format!(
            "platform {p:?} must be 1-64 characters of a-z, 0-9, '-', '_', '.'"
        )));
    }
    if platforms.len() > fleetmesh_protocol::manifest::MAX_PLATFORMS {
        return Err(SeedError::BadArgument("at most 32 platforms".into()));
    }
    Ok(())
}

fn open_image(path: &Path, max: u64) -> Result<(File, u64)> {
    let file = File::open(path).map_err(|e| bad_image(path, &e.to_string()))?;
    let meta = file
        .metadata()
        .map_err(|e| bad_image(path, &e.to_string()))?;
    if !meta.is_file() {
        return Err(bad_image(path, "not a regular file"));
    }
    match meta.len() {
        0 => Err(bad_image(path, "is empty")),
        n if n > max => Err(bad_image(
            path,
            &format!("is {n} bytes, over the limit of {max} (publish.max_image_bytes)"),
        )),
        n => Ok((file, n)),
    }
}

fn bad_image(path: &Path, reason: &str) -> SeedError {
    SeedError::BadImage {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn check_newer(store: &ChunkStore, version: &semver::Version, channel: &str) -> Result<()> {
    let newest = store
        .releases()?
        .into_iter()
        .filter(|r| r.channel == channel)
        .filter_map(|r| semver::Version::parse(&r.version).ok())
        .max();
    match newest {
        Some(newest) if *version <= newest => Err(SeedError::VersionNotNewer {
            version: version.to_string(),
            newest: newest.to_string(),
            channel: channel.into(),
        }),
        _ => Ok(()),
    }
}

#[derive(Debug, Default)]
struct Totals {
    new_chunks: u64,
    new_bytes: u64,
    stored_bytes: u64,
}

#[derive(Debug)]
struct Cut {
    image_len: u64,
    image_hash: blake3::Hash,
    chunks: Vec<ChunkRef>,
    totals: Totals,
}

/// Chunks sent to workers in flight at most, per worker.
const QUEUE_PER_WORKER: usize = 4;

/// Streams `file` through the chunker into `writer` using all cores.
fn cut_image(
    file: File,
    path: &Path,
    params: ChunkParams,
    limit: u64,
    writer: &ChunkWriter<'_>,
    progress: Progress<'_>,
) -> Result<Cut> {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    let (tx, rx) = mpsc::sync_channel::<(usize, Chunk)>(workers * QUEUE_PER_WORKER);
    let rx = Mutex::new(rx);
    let results = Mutex::new(Vec::new());
    let failure: Mutex<Option<StoreError>> = Mutex::new(None);
    let stop = AtomicBool::new(false);

    let read = std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| store_chunks(&rx, writer, &results, &failure, &stop));
        }
        let read = read_chunks(file, path, params, limit, &tx, &stop, progress);
        drop(tx);
        read
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e.into());
    }
    let (image_len, image_hash) = read?;
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_unstable_by_key(|(seq, _, _)| *seq);
    let mut totals = Totals::default();
    let chunks = results
        .into_iter()
        .map(|(_, chunk, added)| {
            if added.new {
                totals.new_chunks += 1;
                totals.new_bytes += u64::from(chunk.len);
                totals.stored_bytes += added.stored_bytes;
            }
            chunk
        })
        .collect();
    Ok(Cut {
        image_len,
        image_hash,
        chunks,
        totals,
    })
}

/// The reading side: chunk boundaries and the whole-image hash.
fn read_chunks(
    file: File,
    path: &Path,
    params: ChunkParams,
    limit: u64,
    tx: &mpsc::SyncSender<(usize, Chunk)>,
    stop: &AtomicBool,
    progress: Progress<'_>,
) -> Result<(u64, blake3::Hash)> {
    let reader = BufReader::with_capacity(1 << 20, file.take(limit.saturating_add(1)));
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    for (seq, chunk) in chunk_reader(reader, params)?.enumerate() {
        let chunk = chunk.map_err(|e| bad_image(path, &e.to_string()))?;
        hasher.update(&chunk.data);
        len += chunk.data.len() as u64;
        if len > limit {
            return Err(bad_image(
                path,
                "grew past publish.max_image_bytes while being read",
            ));
        }
        progress(len);
        if stop.load(Ordering::Relaxed) || tx.send((seq, chunk)).is_err() {
            break;
        }
    }
    Ok((len, hasher.finalize()))
}

/// The worker side: hash, compress and stage each chunk.
fn store_chunks(
    rx: &Mutex<mpsc::Receiver<(usize, Chunk)>>,
    writer: &ChunkWriter<'_>,
    results: &Mutex<Vec<(usize, ChunkRef, Added)>>,
    failure: &Mutex<Option<StoreError>>,
    stop: &AtomicBool,
) {
    loop {
        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok((seq, chunk)) = next else { return };
        if stop.load(Ordering::Relaxed) {
            continue; // drain so the reader never blocks on a full queue
        }
        match writer.add_raw(&chunk.data) {
            Ok(added) => {
                let r = ChunkRef {
                    id: added.id,
                    offset: chunk.offset,
                    len: chunk.data.len() as u32,
                };
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((seq, r, added));
            }
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
            }
        }
    }
}

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
use fleetmesh_protocol::chunk::ChunkEncoder;
use fleetmesh_protocol::chunking::{Block, BlockChunker};
use fleetmesh_protocol::keys::Release;
use fleetmesh_protocol::manifest::is_valid_name;
use fleetmesh_protocol::{ChunkParams, ChunkRef, Manifest, Signed, UnixTime};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Instant;

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
    let keys = seed.release_keys()?;
    let store = seed.store()?;
    check_newer(&store, &req.version, &channel)?;

    let params = seed.config.chunk_params();
    let limit = cfg.max_image_bytes;
    let writer = store.writer();
    let started = Instant::now();
    let cut = cut_image(
        file,
        &req.image,
        params,
        limit,
        cfg.zstd_level,
        &writer,
        progress,
    )?;
    if cut.image_len != image_len {
        return Err(bad_image(
            &req.image,
            "changed while it was being published",
        ));
    }
    let staged_secs = started.elapsed().as_secs_f64();
    let placed = writer.commit()?;
    let durable_secs = started.elapsed().as_secs_f64();
    tracing::debug!(
        staged_secs,
        durable_secs,
        chunks = cut.chunks.len(),
        "chunks stored"
    );

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
    let recorded = sign_and_record(&store, &manifest, &keys, &trust, now, &cut.totals);
    if recorded.is_err() {
        // Best effort: the chunks are valid, only unreferenced; removing them
        // keeps "a failed publish changes nothing".
        let _ = store.remove_chunks(&placed);
    }
    let info = recorded?;
    // For a running `fleetmesh-seed run` to announce at once. If this fails
    // the release is still recorded, and `run` exports it when it starts.
    crate::serve::export_manifests(seed, &store)?;
    Ok(info)
}

fn sign_and_record(
    store: &ChunkStore,
    manifest: &Manifest,
    keys: &[fleetmesh_protocol::keys::SecretKey<Release>],
    trust: &fleetmesh_protocol::TrustState,
    now: UnixTime,
    totals: &Totals,
) -> Result<ReleaseInfo> {
    let signed = Signed::sign(manifest, &keys.iter().collect::<Vec<_>>())?;
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

/// Bytes read and cut at a time: large enough that channel and lock costs
/// vanish, small enough that blocks in flight stay a few MiB.
const BLOCK_BYTES: usize = 4 << 20;
/// Blocks queued for the workers, per worker.
const QUEUE_PER_WORKER: usize = 2;

type BlockResult = (usize, Vec<(ChunkRef, Added)>);

/// Streams `file` through the chunker into `writer` using all cores: this
/// thread reads, cuts and hashes the whole image; workers hash, compress and
/// stage each chunk.
fn cut_image(
    file: File,
    path: &Path,
    params: ChunkParams,
    limit: u64,
    level: i32,
    writer: &ChunkWriter<'_>,
    progress: Progress<'_>,
) -> Result<Cut> {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    let (tx, rx) = mpsc::sync_channel::<(usize, Block)>(workers * QUEUE_PER_WORKER);
    let rx = Mutex::new(rx);
    let results = Mutex::new(Vec::new());
    let failure: Mutex<Option<StoreError>> = Mutex::new(None);
    let stop = AtomicBool::new(false);

    let read = std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| store_blocks(&rx, writer, level, &results, &failure, &stop));
        }
        let read = read_blocks(file, path, params, limit, &tx, &stop, progress);
        drop(tx);
        read
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e.into());
    }
    let (image_len, image_hash) = read?;
    let mut results: Vec<BlockResult> = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_unstable_by_key(|(seq, _)| *seq);
    let mut totals = Totals::default();
    let chunks = results
        .into_iter()
        .flat_map(|(_, block)| block)
        .map(|(chunk, added)| {
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
fn read_blocks(
    file: File,
    path: &Path,
    params: ChunkParams,
    limit: u64,
    tx: &mpsc::SyncSender<(usize, Block)>,
    stop: &AtomicBool,
    progress: Progress<'_>,
) -> Result<(u64, blake3::Hash)> {
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    let blocks = BlockChunker::new(file.take(limit.saturating_add(1)), params, BLOCK_BYTES)?;
    for (seq, block) in blocks.enumerate() {
        let block = block.map_err(|e| bad_image(path, &e.to_string()))?;
        hasher.update(&block.data);
        len += block.data.len() as u64;
        if len > limit {
            return Err(bad_image(
                path,
                "grew past publish.max_image_bytes while being read",
            ));
        }
        progress(len);
        if stop.load(Ordering::Relaxed) || tx.send((seq, block)).is_err() {
            break;
        }
    }
    Ok((len, hasher.finalize()))
}

/// The worker side: hash, compress and stage each chunk of each block.
fn store_blocks(
    rx: &Mutex<mpsc::Receiver<(usize, Block)>>,
    writer: &ChunkWriter<'_>,
    level: i32,
    results: &Mutex<Vec<BlockResult>>,
    failure: &Mutex<Option<StoreError>>,
    stop: &AtomicBool,
) {
    let mut encoder = ChunkEncoder::new(level);
    loop {
        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok((seq, block)) = next else { return };
        if stop.load(Ordering::Relaxed) {
            continue; // drain so the reader never blocks on a full queue
        }
        match store_block(&block, writer, &mut encoder) {
            Ok(done) => results
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((seq, done)),
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

fn store_block(
    block: &Block,
    writer: &ChunkWriter<'_>,
    encoder: &mut ChunkEncoder,
) -> Result<Vec<(ChunkRef, Added)>, StoreError> {
    block
        .chunks
        .iter()
        .map(|&(start, len)| {
            let added = writer.add_raw(&block.data[start..start + len], encoder)?;
            let offset = block.offset + start as u64;
            Ok((
                ChunkRef {
                    id: added.id,
                    offset,
                    len: len as u32,
                },
                added,
            ))
        })
        .collect()
}

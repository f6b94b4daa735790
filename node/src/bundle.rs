//! Release bundles for sites without a link to the mesh: one file holding
//! what a node needs to take a release as if the mesh had brought it — the
//! seed's trust chain, the signed manifest, a signed announcement and the
//! chunks (all of them, or only those a given earlier release lacks).
//!
//! Nothing in a bundle is trusted for being in it: the importing node checks
//! the chain against its provisioned root key, the manifest and the
//! announcement against the chain, and every chunk against its id and the
//! manifest. A trailing blake3 hash of everything before it tells a cut or
//! damaged file from a bad release.
//!
//! Layout: [`MAGIC`]; four sections, each a little-endian `u32` length and
//! its bytes — the trust chain, the signed manifest, the signed
//! announcement (all in the wire codec) and the base version (UTF-8, empty
//! for a full bundle); the chunk count (`u64`); per chunk its id (32 bytes),
//! a `u32` length and its stored encoding; the 32-byte hash.

use crate::fsutil::{self, Context, IoError};
use fleetmesh_protocol::codec::{self, Message};
use fleetmesh_protocol::manifest::Manifest;
use fleetmesh_protocol::mesh::Announcement;
use fleetmesh_protocol::{ChunkId, Signed, TrustChain};
use std::io::{Read, Write};
use std::path::Path;

/// The first bytes of every bundle.
pub const MAGIC: &[u8; 18] = b"FLEETMESH-BUNDLE1\n";

/// Largest stored chunk accepted (a chunk is at most 4 MiB raw; its stored
/// form may be a little larger).
const MAX_CHUNK_BYTES: u32 = 5 << 20;

/// What a bundle carries besides its chunks.
#[derive(Clone, Debug)]
pub struct Head {
    /// The seed's trust chain.
    pub chain: TrustChain,
    /// The release's signed manifest.
    pub manifest: Signed<Manifest>,
    /// A signed announcement of the release.
    pub announcement: Signed<Announcement>,
    /// For a delta bundle, the version whose chunks it leaves out.
    pub base: Option<String>,
}

/// Why a bundle cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The file is not a bundle, is cut short or damaged.
    #[error("{path}: {reason}")]
    Bad {
        /// The bundle.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A chunk could not be read or stored.
    #[error("chunk {id}: {reason}")]
    Chunk {
        /// The chunk.
        id: ChunkId,
        /// What went wrong.
        reason: String,
    },
}

/// Writes a bundle to `path` atomically (a failed export leaves no file).
/// `chunks` yields each chunk's id and stored encoding. Returns the bytes
/// written.
pub fn write<E>(
    path: &Path,
    head: &Head,
    count: u64,
    chunks: impl Iterator<Item = Result<(ChunkId, Vec<u8>), E>>,
) -> Result<u64, BundleError>
where
    BundleError: From<E>,
{
    let sections = [
        codec::encode(&head.chain).map_err(|e| bad(path, e))?,
        codec::encode(&head.manifest).map_err(|e| bad(path, e))?,
        codec::encode(&head.announcement).map_err(|e| bad(path, e))?,
        head.base.clone().unwrap_or_default().into_bytes(),
    ];
    let mut written = 0u64;
    fsutil::write_atomic_with(path, 0o644, |file| {
        let mut out = Hashing {
            inner: file,
            hash: blake3::Hasher::new(),
            bytes: 0,
        };
        let io = |r: std::io::Result<()>| r.ctx("write", path);
        io(out.write_all(MAGIC))?;
        for s in &sections {
            io(out.write_all(&(s.len() as u32).to_le_bytes()))?;
            io(out.write_all(s))?;
        }
        io(out.write_all(&count.to_le_bytes()))?;
        let mut n = 0u64;
        for chunk in chunks {
            let (id, encoded) = chunk?;
            io(out.write_all(&id.0))?;
            io(out.write_all(&(encoded.len() as u32).to_le_bytes()))?;
            io(out.write_all(&encoded))?;
            n += 1;
        }
        if n != count {
            return Err(bad(path, format!("{n} chunks written, {count} announced")));
        }
        let hash = out.hash.finalize();
        io(out.inner.write_all(hash.as_bytes()))?;
        written = out.bytes + 32;
        Ok(())
    })?;
    Ok(written)
}

/// Reads a bundle: its head and chunk count, handed to `head` before any chunk (so the
/// caller can check it and refuse the rest), then each chunk handed to
/// `chunk` with what `head` returned (id and stored encoding, unverified),
/// then checks the trailing hash. Returns `head`'s value and the count.
pub fn read<H>(
    path: &Path,
    head: impl FnOnce(&Head, u64) -> Result<H, BundleError>,
    chunk: impl FnMut(&mut H, ChunkId, Vec<u8>) -> Result<(), BundleError>,
) -> Result<(H, u64), BundleError> {
    let file = std::fs::File::open(path).ctx("open", path)?;
    read_from(std::io::BufReader::new(file), path, head, chunk)
}

/// [`read`] from any reader; `path` only names it in errors.
pub fn read_from<H>(
    input: impl Read,
    path: &Path,
    head: impl FnOnce(&Head, u64) -> Result<H, BundleError>,
    mut chunk: impl FnMut(&mut H, ChunkId, Vec<u8>) -> Result<(), BundleError>,
) -> Result<(H, u64), BundleError> {
    let mut r = Reader {
        inner: input,
        hash: blake3::Hasher::new(),
        path,
    };
    let mut magic = [0u8; MAGIC.len()];
    r.exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(bad(path, "not a fleetmesh release bundle"));
    }
    let h = Head {
        chain: r.section()?,
        manifest: r.section()?,
        announcement: r.section()?,
        base: {
            let bytes = r.bytes(64)?;
            let text =
                String::from_utf8(bytes).map_err(|_| bad(path, "base version is not text"))?;
            (!text.is_empty()).then_some(text)
        },
    };
    let count = u64::from_le_bytes(r.array()?);
    let mut state = head(&h, count)?;
    for _ in 0..count {
        let id = ChunkId(r.array()?);
        let len = u32::from_le_bytes(r.array()?);
        if len > MAX_CHUNK_BYTES {
            return Err(bad(path, format!("chunk {id} claims {len} bytes")));
        }
        let mut encoded = vec![0u8; len as usize];
        r.exact(&mut encoded)?;
        chunk(&mut state, id, encoded)?;
    }
    let expected = r.hash.finalize();
    let mut stored = [0u8; 32];
    r.inner.read_exact(&mut stored).map_err(|_| cut(path))?;
    if stored != *expected.as_bytes() {
        return Err(bad(path, "damaged: its checksum does not match"));
    }
    if r.inner.read(&mut [0u8; 1]).ctx("read", path)? != 0 {
        return Err(bad(path, "has bytes after its end"));
    }
    Ok((state, count))
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> BundleError {
    BundleError::Bad {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn cut(path: &Path) -> BundleError {
    bad(path, "cut short (an incomplete copy?)")
}

/// A writer that hashes and counts what passes through.
struct Hashing<'a, W: Write> {
    inner: &'a mut W,
    hash: blake3::Hasher,
    bytes: u64,
}

impl<W: Write> Write for Hashing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct Reader<'a, R: Read> {
    inner: R,
    hash: blake3::Hasher,
    path: &'a Path,
}

impl<R: Read> Reader<'_, R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), BundleError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => cut(self.path),
            _ => BundleError::Io(IoError {
                op: "read",
                path: self.path.to_owned(),
                source: e,
            }),
        })?;
        self.hash.update(buf);
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], BundleError> {
        let mut a = [0u8; N];
        self.exact(&mut a)?;
        Ok(a)
    }

    fn bytes(&mut self, max: usize) -> Result<Vec<u8>, BundleError> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        if len > max {
            return Err(bad(self.path, format!("a section claims {len} bytes")));
        }
        let mut b = vec![0u8; len];
        self.exact(&mut b)?;
        Ok(b)
    }

    fn section<T: Message>(&mut self) -> Result<T, BundleError> {
        let bytes = self.bytes(T::MAX_BYTES)?;
        codec::decode(&bytes).map_err(|e| bad(self.path, e))
    }
}

/// What an import did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Imported {
    /// The release's version.
    pub version: String,
    /// Its channel.
    pub channel: String,
    /// Its id, hex.
    pub release_id: String,
    /// The version a delta bundle was cut against.
    pub base: Option<String>,
    /// Chunks in the bundle.
    pub chunks_in_bundle: u64,
    /// Of those, new to this node.
    pub chunks_new: u64,
    /// True if the bundle's trust chain was newer and is now the node's.
    pub trust_advanced: bool,
}

/// The name of an imported release's announcement in the node's
/// `releases/`, beside its manifest; the running node loads and relays it.
pub fn announcement_file(id: &fleetmesh_protocol::ReleaseId) -> String {
    format!("{id}.announcement")
}

/// Verifies the bundle at `path` against node `dir`'s root key and platform
/// and loads it: its chunks into the store's files, then (once every chunk
/// of the release is present) its announcement and manifest into
/// `releases/`, where the node — running or at its next start — takes the
/// release as complete and serves it to its peers. A bundle that fails a
/// check changes nothing but verified chunks of the release.
/// `progress` is told chunks read and chunks in the bundle.
pub fn import(
    dir: &Path,
    path: &Path,
    now: fleetmesh_protocol::UnixTime,
    progress: &dyn Fn(u64, u64),
) -> anyhow::Result<Imported> {
    use anyhow::Context as _;
    use fleetmesh_protocol::TrustState;
    let config = crate::config::NodeConfig::load(dir)?;
    let (root, chain) = crate::daemon::load_trust(dir)?;
    let mut trust = TrustState::from_chain(root.clone(), &chain)?;
    let store = dir.join("store");
    if !store.join("chunks").exists() {
        // A node that has never run: make its store.
        drop(crate::ChunkStore::open(&store)?);
    }
    let files = crate::ChunkFiles::open(&store)?;
    struct Checked {
        manifest: fleetmesh_protocol::VerifiedManifest,
        announcement: Signed<Announcement>,
        chain: Option<TrustChain>,
        wanted: std::collections::BTreeSet<ChunkId>,
        base: Option<String>,
        new: u64,
        read: u64,
        total: u64,
    }
    let (c, count) = read(
        path,
        |head, total| {
            let refuse = |what: &str, e: &dyn std::fmt::Display| bad(path, format!("{what}: {e}"));
            let mut new_chain = None;
            if head.chain.docs.len() > chain.docs.len() {
                let state = TrustState::from_chain(root.clone(), &head.chain).map_err(|e| {
                    refuse(
                        "its trust chain does not verify against this node's root key",
                        &e,
                    )
                })?;
                if state.version() > trust.version() {
                    trust = state;
                    new_chain = Some(head.chain.clone());
                }
            }
            let m = head
                .manifest
                .verify_release(&trust, now)
                .map_err(|e| refuse("its manifest", &e))?;
            m.check_platform(&config.platform)
                .map_err(|e| refuse("its release", &e))?;
            let a = head
                .announcement
                .verify_announcement(&trust, now)
                .map_err(|e| refuse("its announcement", &e))?;
            if a.release_id != m.id() {
                return Err(bad(path, "its announcement is for another release"));
            }
            // The store cap holds for imports too, checked before a chunk
            // is written (counted uncompressed, as the mesh does).
            let cap = config.store.max_bytes;
            if cap > 0 {
                let missing: u64 = fleetmesh_protocol::mesh::pieces(m.manifest())
                    .iter()
                    .filter(|(id, _)| !files.has_chunk(id))
                    .map(|(_, len)| u64::from(*len))
                    .sum();
                let used: u64 = files
                    .list()
                    .map_err(|e| bad(path, format!("the store: {e}")))?
                    .iter()
                    .map(|f| f.1)
                    .sum();
                if used + missing > cap {
                    return Err(bad(
                        path,
                        format!(
                            "release {} needs up to {missing} more bytes, but the store cap (store.max_bytes = {cap}) leaves {}; raise the cap, or let the running node evict older releases first",
                            m.manifest().version,
                            cap.saturating_sub(used)
                        ),
                    ));
                }
            }
            Ok(Checked {
                wanted: m.manifest().chunks.iter().map(|c| c.id).collect(),
                manifest: m,
                announcement: head.announcement.clone(),
                chain: new_chain,
                base: head.base.clone(),
                new: 0,
                read: 0,
                total,
            })
        },
        |c, id, encoded| {
            if !c.wanted.contains(&id) {
                return Err(bad(path, format!("chunk {id} is not in the release")));
            }
            let stored = files
                .put_received(&id, &encoded)
                .map_err(|e| BundleError::Chunk {
                    id,
                    reason: e.to_string(),
                })?;
            c.new += u64::from(stored);
            c.read += 1;
            if c.read % 64 == 0 || c.read == c.total {
                progress(c.read, c.total);
            }
            Ok(())
        },
    )?;
    let missing = c.wanted.iter().filter(|id| !files.has_chunk(id)).count();
    if missing > 0 {
        anyhow::bail!(
            "{}: {missing} of the release's {} chunks are neither in the bundle nor on this node{}",
            path.display(),
            c.wanted.len(),
            c.base.as_ref().map_or(String::new(), |b| format!(
                " (a delta from {b}: import {b} first, or a full bundle)"
            )),
        );
    }
    // Chunks durable before the files that point at them.
    fsutil::syncfs(&dir.join("store"))?;
    if let Some(chain) = &c.chain {
        fsutil::write_atomic(&dir.join("trust.chain"), &codec::encode(chain)?, 0o644)?;
    }
    let releases = dir.join("releases");
    std::fs::create_dir_all(&releases).ctx("create", &releases)?;
    let m = &c.manifest;
    let id = m.id();
    fsutil::write_atomic(
        &releases.join(announcement_file(&id)),
        &codec::encode(&c.announcement)?,
        0o644,
    )?;
    fsutil::write_atomic(
        &releases.join(format!("{id}.manifest")),
        &codec::encode(m.signed())?,
        0o644,
    )
    .context("record the release")?;
    Ok(Imported {
        version: m.manifest().version.to_string(),
        channel: m.manifest().channel.clone(),
        release_id: id.to_string(),
        base: c.base.clone(),
        chunks_in_bundle: count,
        chunks_new: c.new,
        trust_advanced: c.chain.is_some(),
    })
}

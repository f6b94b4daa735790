//! Writing a verified release into the inactive slot.
//!
//! Streaming: chunks are read (and verified) one at a time from the store
//! and written through a 1 MiB buffer, so memory stays flat whatever the
//! image size. After an fsync the slot is read back and its whole-image
//! blake3 compared with the signed manifest's before anything is switched.

use crate::fsutil::Context;
use crate::slots::{open_for_write, SlotBackend};
use crate::ChunkStore;
use fleetmesh_protocol::update::{FailReason, Slot};
use fleetmesh_protocol::{ImageHash, VerifiedManifest};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

const BUFFER: usize = 1 << 20;

/// Writes `manifest`'s image into `slot` (never `booted`) and verifies it.
pub fn install(
    store: &ChunkStore,
    manifest: &VerifiedManifest,
    backend: &dyn SlotBackend,
    booted: Slot,
    slot: Slot,
) -> Result<(), FailReason> {
    let m = manifest.manifest();
    let path = backend.slot_path(slot);
    let write_err = |e: &dyn std::fmt::Display| FailReason::Write(e.to_string());
    let mut file = open_for_write(backend, booted, slot).map_err(|e| write_err(&e))?;
    check_room(&mut file, path, m.image_len)?;
    let mut out = BufWriter::with_capacity(BUFFER, &mut file);
    for chunk in &m.chunks {
        let raw = store.read_chunk(&chunk.id).map_err(|e| write_err(&e))?;
        out.write_all(&raw)
            .ctx("write slot", path)
            .map_err(|e| write_err(&e))?;
    }
    out.flush()
        .ctx("write slot", path)
        .map_err(|e| write_err(&e))?;
    drop(out);
    if file.metadata().map(|md| md.is_file()).unwrap_or(false) {
        file.set_len(m.image_len)
            .ctx("truncate slot", path)
            .map_err(|e| write_err(&e))?;
    }
    file.sync_all()
        .ctx("fsync slot", path)
        .map_err(|e| write_err(&e))?;
    drop(file);
    let written = hash_prefix(path, m.image_len).map_err(|e| write_err(&e))?;
    if written != m.image_hash {
        return Err(FailReason::Write(format!(
            "slot {slot} reads back as {written}, the manifest says {}",
            m.image_hash
        )));
    }
    Ok(())
}

/// Refuses an image that cannot fit: a block device too small, or a
/// filesystem without the room to grow a slot file.
fn check_room(file: &mut File, path: &Path, need: u64) -> Result<(), FailReason> {
    let err = |e: &dyn std::fmt::Display| FailReason::Write(e.to_string());
    let meta = file
        .metadata()
        .ctx("stat slot", path)
        .map_err(|e| err(&e))?;
    let room = if meta.is_file() {
        let fs = rustix::fs::fstatvfs(&*file).map_err(|e| err(&e))?;
        meta.len() + fs.f_bavail * fs.f_frsize
    } else {
        file.seek(SeekFrom::End(0))
            .ctx("size slot", path)
            .map_err(|e| err(&e))?
    };
    if room < need {
        return Err(FailReason::InsufficientStorage(format!(
            "{} has room for {room} bytes, the image needs {need}",
            path.display()
        )));
    }
    file.seek(SeekFrom::Start(0))
        .ctx("seek slot", path)
        .map_err(|e| err(&e))?;
    Ok(())
}

/// blake3 of the first `len` bytes of `path`.
pub fn hash_prefix(path: &Path, len: u64) -> Result<ImageHash, crate::fsutil::IoError> {
    let file = File::open(path).ctx("open slot", path)?;
    let mut hasher = blake3::Hasher::new();
    let mut reader = file.take(len);
    let mut buf = vec![0u8; BUFFER];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).ctx("read slot", path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    if total != len {
        let short = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{total} of {len} bytes"),
        );
        return Err(crate::fsutil::IoError {
            op: "read slot",
            path: path.to_owned(),
            source: short,
        });
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests;

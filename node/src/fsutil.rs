//! Durable file writes: temp name, fsync, rename, fsync the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// An I/O error with the operation and path it happened on, so a one-line
/// message tells the operator what failed where.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {}", path.display(), describe(source))]
pub struct IoError {
    /// What was being done: "write", "read", "rename", …
    pub op: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::StorageFull => "no space left on device".into(),
        _ => e.to_string(),
    }
}

/// Adds the operation and path to an `io::Result`.
pub trait Context<T> {
    /// Tags the error with `op` and `path`.
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, IoError>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, IoError> {
        self.map_err(|source| IoError {
            op,
            path: path.to_owned(),
            source,
        })
    }
}

/// Writes `bytes` to `path` so that after a crash the file holds either its
/// old content or all of `bytes`: temp file in the same directory (created
/// with `mode`), fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IoError> {
    write_atomic_with(path, mode, |file| file.write_all(bytes).ctx("write", path))
}

/// As [`write_atomic`], with the content streamed by `fill`; if `fill`
/// fails, `path` is untouched and the temp file removed.
pub fn write_atomic_with<E: From<IoError>>(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut io::BufWriter<File>) -> Result<(), E>,
) -> Result<(), E> {
    let dir = parent(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .ctx("create", &tmp)?;
        let mut out = io::BufWriter::new(file);
        fill(&mut out)?;
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .ctx("write", &tmp)?;
        file.sync_all().ctx("fsync", &tmp)?;
        fs::rename(&tmp, path).ctx("rename into", path)?;
        fsync_dir(dir)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `path` (which must not exist) with `mode`, writes `bytes` and fsyncs.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IoError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .ctx("create", path)?;
    file.write_all(bytes).ctx("write", path)?;
    file.sync_all().ctx("fsync", path)
}

/// A file's modification time, `None` if it cannot be read (absent): what
/// the daemons compare to notice that a file another process writes has
/// changed.
pub fn mtime(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// fsyncs a directory, making renames and creations in it durable.
pub fn fsync_dir(dir: &Path) -> Result<(), IoError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", dir)
}

/// Flushes every dirty page of the filesystem holding `dir`: one group
/// commit instead of one fsync per file.
pub fn syncfs(dir: &Path) -> Result<(), IoError> {
    let d = File::open(dir).ctx("open", dir)?;
    rustix::fs::syncfs(&d)
        .map_err(io::Error::from)
        .ctx("syncfs", dir)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_atomic_replaces_whole_file_with_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        write_atomic(&path, b"old", 0o600).expect("first write");
        write_atomic(&path, b"new content", 0o600).expect("replace");
        assert_eq!(fs::read(&path).expect("read"), b"new content");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(names.len(), 1, "temp file left behind");
    }

    #[test]
    fn errors_name_the_operation_and_path() {
        let err = write_atomic(Path::new("/nonexistent-dir/x"), b"", 0o600).expect_err("no dir");
        let msg = err.to_string();
        assert!(msg.starts_with("create /nonexistent-dir/.x.tmp-"), "{msg}");
    }
}

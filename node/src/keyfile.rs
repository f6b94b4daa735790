//! Secret key files: one key per file, mode 0600, written atomically.

use crate::fsutil::{self, Context, IoError};
use fleetmesh_protocol::keys::{Role, SecretKey};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use zeroize::Zeroizing;

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Other users may read it: the key must be treated as leaked.
    #[error("{path}: mode {mode:o} lets other users read the key; chmod 600 it")]
    Exposed {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a key file, or a key of another role.
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        source: fleetmesh_protocol::Error,
    },
}

/// Writes `key` to `path` with mode 0600.
pub fn write<R: Role>(path: &Path, key: &SecretKey<R>) -> Result<(), KeyFileError> {
    Ok(fsutil::write_atomic(path, key.to_text().as_bytes(), 0o600)?)
}

/// Reads a key of role `R`, refusing a file that group or others can read.
pub fn read<R: Role>(path: &Path) -> Result<SecretKey<R>, KeyFileError> {
    let mode = fs::metadata(path).ctx("stat", path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Exposed {
            path: path.display().to_string(),
            mode,
        });
    }
    let text = Zeroizing::new(fs::read_to_string(path).ctx("read", path)?);
    SecretKey::from_text(&text).map_err(|source| KeyFileError::Invalid {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmesh_protocol::keys::{Policy, Release};

    #[test]
    fn round_trip_mode_and_role_checks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("release.key");
        let key = SecretKey::<Release>::from_seed([5; 32]);
        write(&path, &key).expect("write");
        assert_eq!(read::<Release>(&path).expect("read").public(), key.public());
        assert!(matches!(
            read::<Policy>(&path),
            Err(KeyFileError::Invalid { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = read::<Release>(&path).expect_err("exposed");
        assert!(err.to_string().contains("mode 644"), "{err}");
    }
}

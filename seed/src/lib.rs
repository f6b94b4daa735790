//! The fleetmesh seed: the release service and policy authority.
//!
//! One module per operator command; `main.rs` only parses arguments, reads
//! the clock and prints. Every command leaves the seed directory either as it
//! was or with its change complete.

pub mod config;
pub mod dashboard;
pub mod export;
pub mod fleet;
pub mod inbox;
pub mod init;
pub mod layout;
pub mod members;
pub mod policy;
pub mod publish;
pub mod rotate;
pub mod serve;
pub mod verify;

use fleetmesh_node::fsutil::IoError;
use fleetmesh_node::keyfile::KeyFileError;
use fleetmesh_node::StoreError;
use std::path::PathBuf;

/// What went wrong, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// `init` on a directory that already has files.
    #[error("{} is not empty; use --force to initialise a seed there anyway", .0.display())]
    NotEmpty(PathBuf),
    /// A command on a directory that `init` did not make.
    #[error("{} is not a seed directory ({reason}); run `fleetmesh-seed init --dir {}` first", .dir.display(), .dir.display())]
    NotASeed {
        /// The directory.
        dir: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The configuration does not parse or breaks a rule.
    #[error("{}: {reason}", .path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// The key and the problem.
        reason: String,
    },
    /// The image to publish is unusable.
    #[error("image {}: {reason}", .path.display())]
    BadImage {
        /// The image file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A command-line value is malformed.
    #[error("{0}")]
    BadArgument(String),
    /// The version is not greater than the newest of its channel.
    #[error("version {version} is not greater than {newest}, the newest in channel {channel}")]
    VersionNotNewer {
        /// Offered.
        version: String,
        /// Newest published.
        newest: String,
        /// Channel.
        channel: String,
    },
    /// No release with that version.
    #[error("no release with version {0}")]
    NoSuchRelease(String),
    /// The seed's own signed state does not verify (expired trust document,
    /// key that does not match it).
    #[error("seed trust state: {0}")]
    Trust(fleetmesh_protocol::Error),
    /// File I/O.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A key file.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The chunk store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Encoding or verification.
    #[error(transparent)]
    Protocol(#[from] fleetmesh_protocol::Error),
}

/// Result with [`SeedError`].
pub type Result<T, E = SeedError> = std::result::Result<T, E>;

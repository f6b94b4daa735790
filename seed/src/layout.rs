//! Where things live in a seed directory.
//!
//! ```text
//! DIR/config.toml      settings (written last by init: its presence marks a seed)
//! DIR/root.pub         the root public key nodes are provisioned with
//! DIR/trust.chain      every root-signed trust document
//! DIR/keys/*.key       secret keys, mode 0600, directory 0700
//! DIR/store/           the chunk store (chunks/, tmp/, meta/)
//! DIR/releases/        signed manifests, for `run` to serve and announce
//! DIR/run/             `run`'s status (mesh.json)
//! ```

use crate::config::Config;
use crate::{Result, SeedError};
use fleetmesh_node::fsutil::Context;
use fleetmesh_node::{keyfile, ChunkStore};
use fleetmesh_protocol::keys::{Release, Role, Root, SecretKey};
use fleetmesh_protocol::{codec, RoleKeys, TrustChain, TrustState};
use std::fs;
use std::path::{Path, PathBuf};

/// Paths inside a seed directory.
#[derive(Clone, Debug)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The layout of `dir` (nothing is checked).
    pub fn new(dir: &Path) -> Self {
        Layout {
            dir: dir.to_owned(),
        }
    }

    /// The seed directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `config.toml`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// `root.pub`.
    pub fn root_pub(&self) -> PathBuf {
        self.dir.join("root.pub")
    }

    /// `trust.chain`.
    pub fn trust_chain(&self) -> PathBuf {
        self.dir.join("trust.chain")
    }

    /// `keys/`.
    pub fn keys(&self) -> PathBuf {
        self.dir.join("keys")
    }

    /// `keys/<role>.key`.
    pub fn key<R: Role>(&self) -> PathBuf {
        self.keys().join(format!("{}.key", R::NAME))
    }

    /// A role's key `i` (from 0), for a k-of-n role: `keys/<role>.key`,
    /// then `keys/<role>-2.key`, ...
    pub fn role_key<R: Role>(&self, i: usize) -> PathBuf {
        match i {
            0 => self.key::<R>(),
            _ => self.keys().join(format!("{}-{}.key", R::NAME, i + 1)),
        }
    }

    /// The files of a role's keys that are here, in order.
    pub fn role_keys_here<R: Role>(&self) -> Vec<PathBuf> {
        (0..fleetmesh_protocol::signed::MAX_SIGNERS)
            .map(|i| self.role_key::<R>(i))
            .filter(|p| p.exists())
            .collect()
    }

    /// `store/`.
    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// `releases/`: one signed manifest per release, `<id>.manifest`, for
    /// `run` to pick up without the store's database (which `publish`
    /// holds while it works).
    pub fn releases(&self) -> PathBuf {
        self.dir.join("releases")
    }

    /// `run/`: the running daemon's status.
    pub fn run(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// Every entry `init` creates, for `init --force` to replace.
    pub fn entries(&self) -> [PathBuf; 5] {
        [
            self.config(),
            self.root_pub(),
            self.trust_chain(),
            self.keys(),
            self.store(),
        ]
    }
}

/// An initialised seed directory with its configuration loaded.
#[derive(Clone, Debug)]
pub struct Seed {
    /// Its paths.
    pub layout: Layout,
    /// Its configuration.
    pub config: Config,
}

impl Seed {
    /// Opens `dir`, which `init` must have made.
    pub fn open(dir: &Path) -> Result<Self> {
        let layout = Layout::new(dir);
        let meta = fs::metadata(dir).ctx("open seed directory", dir)?;
        if !meta.is_dir() {
            return Err(not_a_seed(dir, "not a directory"));
        }
        fs::read_dir(dir).ctx("read seed directory", dir)?;
        if !layout.config().is_file() {
            return Err(not_a_seed(dir, "no config.toml"));
        }
        let config = Config::load(&layout.config())?;
        Ok(Seed { layout, config })
    }

    /// The provisioned root key(s).
    pub fn root_keys(&self) -> Result<RoleKeys<Root>> {
        let path = self.layout.root_pub();
        let text = fs::read_to_string(&path).ctx("read", &path)?;
        text.parse().map_err(SeedError::Trust)
    }

    /// The trust chain as stored.
    pub fn trust_chain(&self) -> Result<TrustChain> {
        let path = self.layout.trust_chain();
        let bytes = fs::read(&path).ctx("read", &path)?;
        codec::decode(&bytes).map_err(SeedError::Trust)
    }

    /// The trust state the seed's own documents give, walked from `root.pub`
    /// exactly as a node would.
    pub fn trust(&self) -> Result<TrustState> {
        TrustState::from_chain(self.root_keys()?, &self.trust_chain()?).map_err(SeedError::Trust)
    }

    /// A secret key of role `R`.
    pub fn key<R: Role>(&self) -> Result<SecretKey<R>> {
        Ok(keyfile::read(&self.layout.key::<R>())?)
    }

    /// Every release key here (`release.key`, `release-2.key`, ...): what
    /// manifests and announcements are signed with, so that a k-of-n
    /// release role gets its signatures.
    pub fn release_keys(&self) -> Result<Vec<SecretKey<Release>>> {
        let mut keys = vec![self.key::<Release>()?];
        for path in self.layout.role_keys_here::<Release>().iter().skip(1) {
            keys.push(keyfile::read(path)?);
        }
        Ok(keys)
    }

    /// Opens the chunk store (exclusively: sled locks it).
    pub fn store(&self) -> Result<ChunkStore> {
        Ok(ChunkStore::open(&self.layout.store())?)
    }
}

fn not_a_seed(dir: &Path, reason: &str) -> SeedError {
    SeedError::NotASeed {
        dir: dir.to_owned(),
        reason: reason.into(),
    }
}

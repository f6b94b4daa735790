//! `fleetmesh-seed init`: keys, the first trust document, the config.

use crate::config::Config;
use crate::layout::Layout;
use crate::{Result, SeedError};
use fleetmesh_node::fsutil::{self, Context, IoError};
use fleetmesh_node::keyfile;
use fleetmesh_protocol::keys::{Policy, Release, Role, Root, SecretKey};
use fleetmesh_protocol::{codec, RoleKeys, Signed, TrustChain, TrustDoc, UnixTime};
use rand_core::CryptoRngCore;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// How long the first trust document is valid.
pub const TRUST_TTL_SECS: u64 = 365 * 24 * 3600;

/// How many keys `init` makes for a role, and how many must sign.
#[derive(Clone, Copy, Debug)]
pub struct KeyCount {
    /// How many.
    pub n: usize,
    /// How many must sign.
    pub threshold: u8,
}

impl Default for KeyCount {
    fn default() -> Self {
        KeyCount { n: 1, threshold: 1 }
    }
}

/// The root and release keys `init` makes (the policy key is one).
#[derive(Clone, Copy, Debug, Default)]
pub struct Keys {
    /// Root keys: they sign trust documents.
    pub root: KeyCount,
    /// Release keys: they sign manifests and announcements.
    pub release: KeyCount,
}

/// `count` keys of role `R`, checked as a role before anything is written;
/// `flag` names the option in the error.
fn make_keys<R: Role>(
    count: KeyCount,
    flag: &str,
    rng: &mut impl CryptoRngCore,
) -> Result<(Vec<SecretKey<R>>, RoleKeys<R>)> {
    let max = fleetmesh_protocol::signed::MAX_SIGNERS;
    if !(1..=max).contains(&count.n) {
        return Err(SeedError::BadArgument(format!(
            "--{flag}-keys {} must be 1-{max}",
            count.n
        )));
    }
    let secrets: Vec<SecretKey<R>> = (0..count.n).map(|_| SecretKey::generate(rng)).collect();
    let role = RoleKeys {
        keys: secrets.iter().map(|k| k.public()).collect(),
        threshold: count.threshold,
    };
    role.validate()
        .map_err(|e| SeedError::BadArgument(format!("--{flag}-keys/--{flag}-threshold: {e}")))?;
    Ok((secrets, role))
}

/// Creates a seed in `dir` and returns the root public key(s) as nodes are
/// provisioned with them (`root.pub`: hex, or `K:HEX,HEX,...`).
///
/// `dir` must be absent or empty unless `force`; with `force`, a seed already
/// there is replaced (its keys, trust, config and store are removed; other
/// files are left alone).
pub fn init(
    dir: &Path,
    force: bool,
    counts: Keys,
    now: UnixTime,
    rng: &mut impl CryptoRngCore,
) -> Result<String> {
    let layout = Layout::new(dir);
    let (root_secrets, root) = make_keys::<Root>(counts.root, "root", rng)?;
    let (release_secrets, release) = make_keys::<Release>(counts.release, "release", rng)?;
    prepare_dir(&layout, force)?;
    let keys = layout.keys();
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&keys)
        .ctx("create directory", &keys)?;

    let policy = SecretKey::<Policy>::generate(rng);
    for (i, key) in root_secrets.iter().enumerate() {
        keyfile::write(&layout.role_key::<Root>(i), key)?;
    }
    for (i, key) in release_secrets.iter().enumerate() {
        keyfile::write(&layout.role_key::<Release>(i), key)?;
    }
    keyfile::write(&layout.key::<Policy>(), &policy)?;
    fsutil::fsync_dir(&keys)?;

    let doc = TrustDoc {
        version: 1,
        issued_at: now,
        expires_at: now.plus_secs(TRUST_TTL_SECS),
        root,
        release,
        policy: RoleKeys::single(policy.public()),
    };
    let chain = TrustChain {
        docs: vec![Signed::sign(
            &doc,
            &root_secrets.iter().collect::<Vec<_>>(),
        )?],
    };
    fsutil::write_atomic(&layout.trust_chain(), &codec::encode(&chain)?, 0o644)?;
    let root_hex = doc.root.to_string();
    fsutil::write_atomic(
        &layout.root_pub(),
        format!("{root_hex}\n").as_bytes(),
        0o644,
    )?;
    // Last: config.toml is what marks the directory as an initialised seed.
    let config = Config::default().to_commented_toml();
    fsutil::write_atomic(&layout.config(), config.as_bytes(), 0o644)?;
    Ok(root_hex)
}

fn prepare_dir(layout: &Layout, force: bool) -> Result<()> {
    let dir = layout.dir();
    let is_empty = match fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true).mode(0o755);
            builder.create(dir).ctx("create directory", dir)?;
            return Ok(());
        }
        Err(source) => {
            let op = "read directory";
            return Err(IoError {
                op,
                path: dir.to_owned(),
                source,
            }
            .into());
        }
        Ok(mut entries) => entries.next().is_none(),
    };
    if !is_empty && !force {
        return Err(SeedError::NotEmpty(dir.to_owned()));
    }
    for path in layout.entries() {
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path).ctx("remove", &path)?,
            Ok(_) => fs::remove_file(&path).ctx("remove", &path)?,
            Err(_) => {}
        }
    }
    Ok(())
}

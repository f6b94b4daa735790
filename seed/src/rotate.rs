//! `rotate-key`: replaces the release or the policy key with a new one,
//! delegated by the next root-signed trust document.
//!
//! The root key is needed only here and in `init`, so it can live offline
//! (`--root-key FILE`, repeatable for a k-of-n root). What the old key
//! signed is signed again with the new one (every manifest for the release
//! key; the policy and every issued credential for the policy key), since
//! nodes that take the new trust document refuse the old key from then on:
//! that is what revokes a stolen key. The order makes a crash harmless:
//! the new key is written aside, the chain is extended (atomically), the
//! key moved into place, then documents are re-signed; running the command
//! again finishes (with yet another key) whatever a crash left undone.

use crate::layout::Seed;
use crate::{Result, SeedError};
use fleetmesh_node::fsutil::{self, Context};
use fleetmesh_node::keyfile;
use fleetmesh_protocol::keys::{Policy, Release, Role, Root, SecretKey};
use fleetmesh_protocol::{codec, RoleKeys, Signed, TrustChain, TrustDoc, TrustState, UnixTime};
use serde::Serialize;
use std::path::PathBuf;

/// Which key to replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Rotate {
    /// The key that signs manifests and announcements.
    Release,
    /// The key that signs policies and membership credentials.
    Policy,
}

/// What `rotate-key` did.
#[derive(Debug, Serialize)]
pub struct Rotated {
    /// The trust document version that delegates the new key.
    pub trust_version: u64,
    /// The new public key.
    pub new_key: String,
    /// Manifests signed again (release key).
    pub manifests: usize,
    /// The policy version signed with the new key (policy key).
    pub policy_version: Option<u64>,
    /// Credentials in `members/` signed again (policy key): give each node
    /// its new file.
    pub credentials: usize,
}

/// How long the new trust document is valid.
const TRUST_DAYS: u64 = 365;

fn root_keys(seed: &Seed, files: &[PathBuf]) -> Result<Vec<SecretKey<Root>>> {
    // By default the root keys `init` left on the seed (all of them, or
    // the first alone, to name it in the error when it is offline).
    let mut default = seed.layout.role_keys_here::<Root>();
    if default.is_empty() {
        default.push(seed.layout.key::<Root>());
    }
    let files = if files.is_empty() { &default } else { files };
    files
        .iter()
        .map(|f| {
            if !f.exists() {
                return Err(SeedError::BadArgument(format!(
                    "{} is not here (is the root key kept offline?): pass --root-key FILE",
                    f.display()
                )));
            }
            Ok(keyfile::read::<Root>(f)?)
        })
        .collect()
}

/// Rotates `role`'s key. Stop `fleetmesh-seed run` first and start it
/// after: it serves the chain and keys it started with.
pub fn rotate(
    seed: &Seed,
    role: Rotate,
    root_files: &[PathBuf],
    now: UnixTime,
    rng: &mut impl rand_core::CryptoRngCore,
) -> Result<Rotated> {
    let chain = seed.trust_chain()?;
    seed.trust()?;
    let last = chain
        .docs
        .last()
        .ok_or_else(|| SeedError::BadArgument("trust.chain is empty".into()))?;
    let current: TrustDoc = last.unverified_body()?;
    let roots = root_keys(seed, root_files)?;
    let mut doc = TrustDoc {
        version: current.version + 1,
        issued_at: now,
        expires_at: current.expires_at.max(now.plus_secs(TRUST_DAYS * 86_400)),
        ..current
    };
    let signers: Vec<&SecretKey<Root>> = roots.iter().collect();
    let (manifests, policy_version, credentials, new_key) = match role {
        Rotate::Release => {
            let key = SecretKey::<Release>::generate(rng);
            doc.release = RoleKeys::single(key.public());
            extend_chain(seed, chain, &doc, &signers, &key)?;
            // The new role is the one key: the others of a k-of-n role go.
            for old in seed.layout.role_keys_here::<Release>().iter().skip(1) {
                std::fs::remove_file(old).ctx("remove", old)?;
            }
            (
                resign_manifests(seed, &key)?,
                None,
                0,
                key.public().to_string(),
            )
        }
        Rotate::Policy => {
            let key = SecretKey::<Policy>::generate(rng);
            doc.policy = RoleKeys::single(key.public());
            extend_chain(seed, chain, &doc, &signers, &key)?;
            let policy_version = match crate::policy::current(seed)? {
                Some((mut p, _)) => {
                    p.version += 1;
                    p.issued_at = now;
                    p.expires_at = p.expires_at.max(now.plus_secs(86_400));
                    crate::policy::sign_and_install(seed, &p, now, "policy key rotated")?;
                    Some(p.version)
                }
                None => None,
            };
            // The seed's own credential is issued again at its next start.
            let own = seed.layout.run().join(fleetmesh_node::daemon::MEMBER_FILE);
            if own.exists() {
                std::fs::remove_file(&own).ctx("remove", &own)?;
            }
            let credentials = resign_credentials(seed, &key)?;
            (0, policy_version, credentials, key.public().to_string())
        }
    };
    Ok(Rotated {
        trust_version: doc.version,
        new_key,
        manifests,
        policy_version,
        credentials,
    })
}

/// Writes `key` aside, appends `doc` signed by `roots` to `chain` and
/// checks it from `root.pub` (a refusal removes the key again), writes the
/// chain, then moves the key into place.
fn extend_chain<R: Role>(
    seed: &Seed,
    mut chain: TrustChain,
    doc: &TrustDoc,
    roots: &[&SecretKey<Root>],
    key: &SecretKey<R>,
) -> Result<()> {
    let path = seed.layout.key::<R>();
    let aside = path.with_extension("key.next");
    keyfile::write(&aside, key)?;
    chain.docs.push(Signed::sign(doc, roots)?);
    if let Err(e) = TrustState::from_chain(seed.root_keys()?, &chain) {
        let _ = std::fs::remove_file(&aside);
        return Err(SeedError::BadArgument(format!(
            "the root key(s) given cannot sign the next trust document: {e}"
        )));
    }
    fsutil::write_atomic(&seed.layout.trust_chain(), &codec::encode(&chain)?, 0o644)?;
    std::fs::rename(&aside, &path).ctx("move into place", &aside)?;
    Ok(())
}

/// Signs every manifest again (same body, so the same release id), in
/// `releases/` and in the store.
fn resign_manifests(seed: &Seed, key: &SecretKey<Release>) -> Result<usize> {
    let store = seed.store()?;
    let mut n = 0;
    for info in store.releases()? {
        let Ok(id) = info.release_id.parse() else {
            continue;
        };
        let Some(old) = store.manifest(&id)? else {
            continue;
        };
        let signed = Signed::sign(&old.unverified_body()?, &[key])?;
        store.replace_manifest(&signed)?;
        let path = seed.layout.releases().join(format!("{id}.manifest"));
        fsutil::write_atomic(&path, &codec::encode(&signed)?, 0o644)?;
        n += 1;
    }
    Ok(n)
}

/// Signs every credential in `members/` again.
fn resign_credentials(seed: &Seed, key: &SecretKey<Policy>) -> Result<usize> {
    let issued = crate::members::credentials_in(&seed.layout.dir().join("members"))?;
    for (path, m) in &issued {
        fsutil::write_atomic(path, &codec::encode(&Signed::sign(m, &[key])?)?, 0o644)?;
    }
    Ok(issued.len())
}

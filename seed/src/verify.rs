//! `fleetmesh-seed verify`: re-read and re-hash every chunk, check every
//! signature, as a node receiving the releases would.

use crate::layout::Seed;
use crate::{Result, SeedError};
use fleetmesh_node::ReleaseInfo;
use fleetmesh_protocol::{codec, Manifest, ReleaseId, UnixTime};
use serde::Serialize;
use std::collections::BTreeMap;

/// The findings for one release.
#[derive(Clone, Debug, Serialize)]
pub struct ReleaseCheck {
    /// Version.
    pub version: String,
    /// Channel.
    pub channel: String,
    /// Release id.
    pub release_id: String,
    /// Signature, trust or manifest problems.
    pub problems: Vec<String>,
    /// Chunks that are missing or do not match their id, with the reason.
    pub bad_chunks: BTreeMap<String, String>,
}

impl ReleaseCheck {
    /// True if nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.bad_chunks.is_empty()
    }
}

/// Checks every release, or only `version`.
pub fn verify(
    seed: &Seed,
    version: Option<&semver::Version>,
    now: UnixTime,
) -> Result<Vec<ReleaseCheck>> {
    let store = seed.store()?;
    let trust = seed.trust();
    let mut releases = store.releases()?;
    if let Some(v) = version {
        releases.retain(|r| r.version == v.to_string());
        if releases.is_empty() {
            return Err(SeedError::NoSuchRelease(v.to_string()));
        }
    }
    releases.sort_by(|a, b| (&a.channel, &a.version).cmp(&(&b.channel, &b.version)));
    releases
        .into_iter()
        .map(|info| check_release(&store, trust.as_ref(), info, now))
        .collect()
}

fn check_release(
    store: &fleetmesh_node::ChunkStore,
    trust: std::result::Result<&fleetmesh_protocol::TrustState, &SeedError>,
    info: ReleaseInfo,
    now: UnixTime,
) -> Result<ReleaseCheck> {
    let mut check = ReleaseCheck {
        version: info.version,
        channel: info.channel,
        release_id: info.release_id,
        problems: Vec::new(),
        bad_chunks: BTreeMap::new(),
    };
    let id: ReleaseId = check.release_id.parse()?;
    let Some(signed) = store.manifest(&id)? else {
        check
            .problems
            .push("manifest is missing from the store".into());
        return Ok(check);
    };
    match trust {
        Ok(trust) => {
            if let Err(e) = signed.verify_release(trust, now) {
                check.problems.push(e.to_string());
            }
        }
        Err(e) => check.problems.push(e.to_string()),
    }
    // Chunks are checked even when the signature is not, to report all damage.
    let manifest: Manifest = codec::decode(signed.body_bytes())?;
    let mut image = blake3::Hasher::new();
    for chunk in &manifest.chunks {
        match store.read_chunk(&chunk.id) {
            Ok(raw) => {
                image.update(&raw);
            }
            Err(e) => {
                check.bad_chunks.insert(chunk.id.to_hex(), e.to_string());
            }
        }
    }
    if check.bad_chunks.is_empty()
        && fleetmesh_protocol::ImageHash::from(image.finalize()) != manifest.image_hash
    {
        check
            .problems
            .push("chunks do not hash to the manifest's image hash".into());
    }
    Ok(check)
}

//! `fleetmesh-seed export`: a release as one bundle file for a site
//! without a link to the mesh (format and checks in
//! [`fleetmesh_node::bundle`]). With a base version, only the chunks the
//! base lacks go in: a delta for a site that already runs the base.

use crate::layout::Seed;
use crate::{Result, SeedError};
use fleetmesh_node::bundle::{self, Head};
use fleetmesh_node::{ChunkStore, ReleaseInfo};
use fleetmesh_protocol::mesh::Announcement;
use fleetmesh_protocol::{ChunkId, ReleaseId, Signed, TrustState, UnixTime, VerifiedManifest};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// What to export.
#[derive(Clone, Debug)]
pub struct ExportRequest {
    /// The release's version.
    pub version: semver::Version,
    /// Its channel, when the version is in several.
    pub channel: Option<String>,
    /// Leave out the chunks of this version (same channel).
    pub from: Option<semver::Version>,
    /// The bundle file to write (must not exist).
    pub out: PathBuf,
}

/// What was exported.
#[derive(Clone, Debug, Serialize)]
pub struct Exported {
    /// Version.
    pub version: String,
    /// Channel.
    pub channel: String,
    /// Release id, hex.
    pub release_id: String,
    /// The base of a delta.
    pub base: Option<String>,
    /// Chunks in the bundle.
    pub chunks: u64,
    /// Chunks in the release.
    pub chunks_total: u64,
    /// Bundle size.
    pub bytes: u64,
    /// Where it is.
    pub out: PathBuf,
}

/// Writes the bundle; a failed export leaves no file. `progress` is told
/// chunks written and chunks to write.
pub fn export(
    seed: &Seed,
    req: &ExportRequest,
    now: UnixTime,
    progress: &dyn Fn(u64, u64),
) -> Result<Exported> {
    let bad = |m: String| SeedError::BadArgument(m);
    if req.out.exists() {
        return Err(bad(format!(
            "{} exists; remove it or choose another --out",
            req.out.display()
        )));
    }
    let store = seed.store()?;
    let trust = seed.trust()?;
    let releases = store.releases()?;
    let info = find(&releases, &req.version, req.channel.as_deref())?;
    let release = verified(&store, &trust, info, now)?;
    let base: BTreeSet<ChunkId> = match &req.from {
        None => BTreeSet::new(),
        Some(v) => {
            let b = find(&releases, v, Some(&info.channel))?;
            let m = verified(&store, &trust, b, now)?;
            m.manifest().chunks.iter().map(|c| c.id).collect()
        }
    };
    let mut seen = BTreeSet::new();
    let ids: Vec<ChunkId> = release
        .manifest()
        .chunks
        .iter()
        .map(|c| c.id)
        .filter(|id| seen.insert(*id) && !base.contains(id))
        .collect();
    let announcement = Signed::sign(
        &Announcement::of(&release, now)?,
        &seed.release_keys()?.iter().collect::<Vec<_>>(),
    )?;
    let head = Head {
        chain: seed.trust_chain()?,
        manifest: release.signed().clone(),
        announcement,
        base: req.from.as_ref().map(ToString::to_string),
    };
    let files = store.files();
    let total = ids.len() as u64;
    let chunks = ids.iter().enumerate().map(|(n, id)| {
        if n % 64 == 0 {
            progress(n as u64, total);
        }
        files
            .read_encoded(id)
            .map(|bytes| (*id, bytes))
            .map_err(|e| bundle::BundleError::Chunk {
                id: *id,
                reason: e.to_string(),
            })
    });
    let bytes =
        bundle::write(&req.out, &head, ids.len() as u64, chunks).map_err(|e| bad(e.to_string()))?;
    Ok(Exported {
        version: info.version.clone(),
        channel: info.channel.clone(),
        release_id: info.release_id.clone(),
        base: head.base,
        chunks: ids.len() as u64,
        chunks_total: seen.len() as u64,
        bytes,
        out: req.out.clone(),
    })
}

/// The release `version` (in `channel` if given); the error says which
/// versions there are.
fn find<'a>(
    releases: &'a [ReleaseInfo],
    version: &semver::Version,
    channel: Option<&str>,
) -> Result<&'a ReleaseInfo> {
    let v = version.to_string();
    let found: Vec<&ReleaseInfo> = releases
        .iter()
        .filter(|r| r.version == v && channel.is_none_or(|c| r.channel == c))
        .collect();
    match found[..] {
        [one] => Ok(one),
        [] => Err(SeedError::BadArgument(format!(
            "no release {v}{}; `fleetmesh-seed releases` lists them",
            channel.map_or(String::new(), |c| format!(" in channel {c}"))
        ))),
        _ => Err(SeedError::BadArgument(format!(
            "{v} is in several channels; give --channel"
        ))),
    }
}

fn verified(
    store: &ChunkStore,
    trust: &TrustState,
    info: &ReleaseInfo,
    now: UnixTime,
) -> Result<VerifiedManifest> {
    let id: ReleaseId = info
        .release_id
        .parse()
        .map_err(|_| SeedError::BadArgument(format!("bad release id {}", info.release_id)))?;
    let signed = store.manifest(&id)?.ok_or_else(|| {
        SeedError::BadArgument(format!(
            "release {} has no manifest in the store",
            info.version
        ))
    })?;
    Ok(signed.verify_release(trust, now)?)
}

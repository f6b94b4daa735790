//! The chunk store's disk cap (`[store] max_bytes`): which releases a node
//! evicts, and which downloads it may start.
//!
//! With a cap, a pass runs at start, every [`EVICT_EVERY`], and when a
//! download completes, a new one is loaded or the updater's status changes.
//! It lists the chunk files (off the event loop) and:
//! - evicts, oldest version first, complete releases older than the one
//!   that runs, except the staged one and the policy's rollback target,
//!   and a release the node rolled back from once a newer one of its
//!   channel is held, and only as many as it takes to get under the cap;
//! - admits a waiting download only if the store, plus what every admitted
//!   download still lacks, stays under the cap; otherwise the download
//!   waits, and the status and the log say why;
//! - removes chunk files no release references that are older than
//!   [`ORPHAN_AGE`] (an eviction cut short by a crash; a bundle import in
//!   progress is younger).
//!
//! Without knowing which version runs (no updater status yet) nothing is
//! evictable. Evicting removes the release's record first, then its
//! manifest file, then the chunks no other release uses: a crash after the
//! first step leaves a manifest whose chunks are all there, which the next
//! start verifies and records again; after the second, orphans.

use super::{Done, Mesh, Role};
use crate::fsutil::{self, Context as _};
use fleetmesh_protocol::{ChunkId, ReleaseId};
use semver::Version;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How often the cap is checked when nothing else asks for it.
pub(super) const EVICT_EVERY: Duration = Duration::from_secs(30);
/// Chunk files no release references are removed once this old.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// How a pass may treat a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hold {
    /// Complete and needed: running, staged or a rollback target, or newer.
    Keep,
    /// Complete, older than what runs, and not needed.
    Evictable,
    /// Downloading (`admitted`) or waiting for room.
    Download {
        /// Already allowed to fetch.
        admitted: bool,
    },
}

/// A release as a pass sees it.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub id: ReleaseId,
    pub version: Version,
    pub pieces: Arc<[(ChunkId, u32)]>,
    pub hold: Hold,
    /// Downloads: raw bytes of the pieces not present yet.
    pub missing: u64,
}

/// What the node needs, from the updater's status and the policy.
#[derive(Debug)]
pub(crate) struct Needed {
    /// The version that runs.
    pub running: Version,
    /// Versions kept whatever their age: the running one, the target of an
    /// update in progress, the policy's rollback target.
    pub keep: BTreeSet<Version>,
    /// The target the updater rolled back from or failed on. It is not
    /// installed again, so it stays only until a newer release of its
    /// channel arrives: on a tight cap it would otherwise hold the room
    /// that newer release (the fix) needs, for ever.
    pub abandoned: Option<Version>,
}

impl Needed {
    /// How a pass treats a complete release; `superseded` says whether a
    /// newer release of its channel is held (asked only when it matters).
    pub fn hold(&self, version: &Version, superseded: impl FnOnce() -> bool) -> Hold {
        let old = *version < self.running;
        let dropped = self.abandoned.as_ref() == Some(version) && superseded();
        if !self.keep.contains(version) && (old || dropped) {
            Hold::Evictable
        } else {
            Hold::Keep
        }
    }
}

/// What a pass decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Releases to evict, in order, each with the chunks only it used.
    pub evict: Vec<(ReleaseId, Vec<ChunkId>)>,
    /// Waiting downloads that now fit.
    pub admit: Vec<ReleaseId>,
    /// Bytes in use after the evictions plus what admitted downloads lack.
    pub demand: u64,
    /// Why a download still waits.
    pub waiting: Option<String>,
}

/// Decides a pass: `usage` is the bytes the chunk files take, `size` each
/// file's size on disk (absent: not stored).
pub(crate) fn plan(held: &[Held], usage: u64, cap: u64, size: &HashMap<ChunkId, u64>) -> Plan {
    let mut refs: HashMap<ChunkId, u32> = HashMap::new();
    for h in held {
        for (id, _) in h.pieces.iter() {
            *refs.entry(*id).or_default() += 1;
        }
    }
    let mut evictable: Vec<&Held> = held.iter().filter(|h| h.hold == Hold::Evictable).collect();
    evictable.sort_by(|a, b| a.version.cmp(&b.version).then(a.id.cmp(&b.id)));
    // What evicting each in turn would free: freed[k] for the first k.
    let mut steps = Vec::with_capacity(evictable.len());
    let mut freed = vec![0u64];
    for h in evictable {
        let mut only = Vec::new();
        let mut bytes = 0;
        for (id, _) in h.pieces.iter() {
            let n = refs.entry(*id).or_insert(1);
            *n -= 1;
            if *n == 0 {
                if let Some(s) = size.get(id) {
                    only.push(*id);
                    bytes += s;
                }
            }
        }
        steps.push((h.id, only));
        freed.push(freed[freed.len() - 1] + bytes);
    }
    // The fewest evictions that bring `demand` under the cap.
    let fit = |demand: u64| (0..freed.len()).find(|&k| demand.saturating_sub(freed[k]) <= cap);
    let mut demand = usage
        + held
            .iter()
            .filter(|h| h.hold == Hold::Download { admitted: true })
            .map(|h| h.missing)
            .sum::<u64>();
    let mut k = fit(demand).unwrap_or(steps.len());
    let mut waiting: Vec<&Held> = held
        .iter()
        .filter(|h| h.hold == Hold::Download { admitted: false })
        .collect();
    waiting.sort_by(|a, b| a.version.cmp(&b.version).then(a.id.cmp(&b.id)));
    let mut plan = Plan::default();
    for h in waiting {
        match fit(demand + h.missing) {
            Some(need) => {
                k = k.max(need);
                demand += h.missing;
                plan.admit.push(h.id);
            }
            None if plan.waiting.is_none() => {
                let room = cap.saturating_sub(demand.saturating_sub(freed[steps.len()]));
                plan.waiting = Some(format!(
                    "release {} needs up to {} more bytes, but the store cap (store.max_bytes = {cap}) leaves {room} after evicting every release that may go",
                    h.version, h.missing
                ));
            }
            None => {}
        }
    }
    plan.demand = demand.saturating_sub(freed[k]);
    steps.truncate(k);
    plan.evict = steps;
    plan
}

/// What a pass did, for the event loop.
#[derive(Debug)]
pub(super) struct Outcome {
    pub plan: Plan,
    /// Bytes the chunk files take after the pass.
    pub usage: u64,
    /// Orphan chunk files removed.
    pub orphans: usize,
}

/// Runs a pass (blocking: lists and removes files).
fn run_pass(
    store: &crate::ChunkStore,
    releases_dir: &std::path::Path,
    held: &[Held],
    cap: u64,
) -> Result<Outcome, String> {
    let listed = store.files().list().map_err(|e| e.to_string())?;
    let referenced: BTreeSet<ChunkId> = held
        .iter()
        .flat_map(|h| h.pieces.iter().map(|p| p.0))
        .collect();
    let now = SystemTime::now();
    let (orphans, kept): (Vec<_>, Vec<_>) = listed.into_iter().partition(|(id, _, written)| {
        !referenced.contains(id) && now.duration_since(*written).unwrap_or_default() >= ORPHAN_AGE
    });
    let orphan_ids: Vec<ChunkId> = orphans.iter().map(|o| o.0).collect();
    store
        .remove_chunks(&orphan_ids)
        .map_err(|e| e.to_string())?;
    let size: HashMap<ChunkId, u64> = kept.iter().map(|(id, len, _)| (*id, *len)).collect();
    let usage: u64 = size.values().sum();
    let plan = plan(held, usage, cap, &size);
    let mut freed = 0;
    for (id, only) in &plan.evict {
        store.forget_release(id).map_err(|e| e.to_string())?;
        let path = releases_dir.join(format!("{id}.manifest"));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other.ctx("remove", &path).map_err(|e| e.to_string())?,
        }
        fsutil::fsync_dir(releases_dir).map_err(|e| e.to_string())?;
        store.remove_chunks(only).map_err(|e| e.to_string())?;
        freed += only.iter().filter_map(|c| size.get(c)).sum::<u64>();
    }
    Ok(Outcome {
        usage: usage - freed,
        orphans: orphan_ids.len(),
        plan,
    })
}

impl Mesh {
    /// What the updater's status says the node needs; `None` while the
    /// updater has not said what runs.
    fn needed_versions(&self) -> Option<Needed> {
        let status: serde_json::Value =
            serde_json::from_slice(self.update_seen.1.as_deref()?).ok()?;
        let version = |v: &serde_json::Value| v.as_str().and_then(|s| Version::parse(s).ok());
        let running = version(&status["booted_version"])?;
        let mut keep = BTreeSet::from([running.clone()]);
        let target = version(&status["update"]["target_version"]);
        let abandoned = matches!(
            status["update"]["state"].as_str(),
            Some("rolled_back" | "failed")
        );
        if !abandoned {
            keep.extend(target.clone());
        }
        if let Some((policy, _)) = &self.policy {
            keep.extend(policy.rollback_for(&self.labels).cloned());
        }
        Some(Needed {
            running,
            keep,
            abandoned: target.filter(|_| abandoned),
        })
    }

    /// Starts a pass if one is due and none runs.
    pub(super) fn maybe_evict(&mut self, now: Instant) {
        let cap = self.p.store_cap;
        let Some(store) = self.p.store.clone() else {
            return;
        };
        if cap == 0 || self.p.role != Role::Node || self.evicting {
            return;
        }
        if !self.evict_due && now - self.last_evict < EVICT_EVERY {
            return;
        }
        self.evict_due = false;
        self.last_evict = now;
        let needed = self.needed_versions();
        let held: Vec<Held> = self
            .releases
            .iter()
            .map(|(id, r)| {
                let m = r.manifest();
                let version = m.version.clone();
                let superseded = || {
                    self.releases.values().any(|o| {
                        let om = o.manifest();
                        om.channel == m.channel && om.version > m.version
                    })
                };
                let hold = match &needed {
                    _ if !r.complete => Hold::Download {
                        admitted: r.admitted,
                    },
                    Some(needed) => needed.hold(&version, superseded),
                    None => Hold::Keep,
                };
                Held {
                    id: *id,
                    version,
                    pieces: r.pieces.clone(),
                    hold,
                    missing: if r.complete { 0 } else { r.missing_bytes() },
                }
            })
            .collect();
        self.evicting = true;
        let (tx, dir) = (self.done_tx.clone(), self.p.releases_dir.clone());
        tokio::spawn(async move {
            let outcome = tokio::task::spawn_blocking(move || run_pass(&store, &dir, &held, cap))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            let _ = tx.send(Done::Evicted(outcome)).await;
        });
    }

    /// Unloads what a pass evicted and starts what it admitted.
    pub(super) fn on_evicted(&mut self, outcome: Result<Outcome, String>) {
        self.evicting = false;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("store cap: {e}");
                return;
            }
        };
        if outcome.orphans > 0 {
            tracing::info!(n = outcome.orphans, "removed chunk files no release uses");
        }
        for (id, only) in &outcome.plan.evict {
            if let Some(r) = self.releases.remove(id) {
                tracing::info!(version = %r.manifest().version, release = %id, chunks = only.len(), "release evicted to stay under the store cap");
            }
            for peer in self.peers.values_mut() {
                peer.sent.remove(id);
                peer.in_sched.remove(id);
            }
            // A release loaded during the pass may share a removed chunk.
            for r in self.releases.values_mut() {
                for chunk in only {
                    if let Some(i) = r.piece_of(chunk) {
                        if r.have.get(i as usize) && !self.p.files.has_chunk(chunk) {
                            r.lost(i);
                        }
                    }
                }
            }
        }
        for id in &outcome.plan.admit {
            if let Some(r) = self.releases.get_mut(id) {
                r.admitted = true;
                tracing::info!(version = %r.manifest().version, "download fits under the store cap; starting it");
            }
        }
        if outcome.plan.waiting != self.store.waiting {
            if let Some(why) = &outcome.plan.waiting {
                tracing::warn!("download waits: {why}");
            }
        }
        self.store.used_bytes = outcome.usage;
        self.store.waiting = outcome.plan.waiting;
        self.store.evicted += outcome.plan.evict.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn held(n: u8, version: &str, chunks: &[u8], hold: Hold, missing: u64) -> Held {
        Held {
            id: ReleaseId([n; 32]),
            version: Version::parse(version).expect("version"),
            pieces: chunks.iter().map(|&c| (chunk(c), 100)).collect(),
            hold,
            missing,
        }
    }

    fn sizes(chunks: &[u8]) -> HashMap<ChunkId, u64> {
        chunks.iter().map(|&c| (chunk(c), 100)).collect()
    }

    #[test]
    fn a_rolled_back_release_goes_only_once_a_newer_one_is_held() {
        let v = |s: &str| Version::parse(s).expect("version");
        let needed = |abandoned: Option<&str>| Needed {
            running: v("2.0.0"),
            keep: BTreeSet::from([v("2.0.0"), v("1.5.0")]),
            abandoned: abandoned.map(v),
        };
        let rolled_back = needed(Some("3.0.0"));
        assert_eq!(rolled_back.hold(&v("3.0.0"), || false), Hold::Keep);
        assert_eq!(rolled_back.hold(&v("3.0.0"), || true), Hold::Evictable);
        // Older ones go whether or not anything newer is held; what runs and
        // the rollback target never do.
        assert_eq!(rolled_back.hold(&v("1.0.0"), || false), Hold::Evictable);
        assert_eq!(rolled_back.hold(&v("2.0.0"), || true), Hold::Keep);
        assert_eq!(rolled_back.hold(&v("1.5.0"), || true), Hold::Keep);
        // A newer release the node has not tried stays.
        assert_eq!(rolled_back.hold(&v("3.1.0"), || true), Hold::Keep);
        assert_eq!(needed(None).hold(&v("3.0.0"), || true), Hold::Keep);
    }

    #[test]
    fn under_the_cap_nothing_is_evicted() {
        let held = [
            held(1, "1.0.0", &[1, 2], Hold::Evictable, 0),
            held(2, "2.0.0", &[2, 3], Hold::Keep, 0),
        ];
        let plan = plan(&held, 300, 300, &sizes(&[1, 2, 3]));
        assert!(plan.evict.is_empty(), "{plan:?}");
        assert_eq!(plan.demand, 300);
    }

    #[test]
    fn the_oldest_goes_first_and_only_chunks_no_kept_release_uses_are_removed() {
        let held = [
            held(2, "2.0.0", &[2, 4], Hold::Evictable, 0),
            held(1, "1.0.0", &[1, 2], Hold::Evictable, 0),
            held(3, "3.0.0", &[2, 3], Hold::Keep, 0),
        ];
        // 400 bytes in use, cap 300: evicting 1.0.0 frees chunk 1 (chunk 2
        // is shared), which is enough; 2.0.0 stays.
        let plan = plan(&held, 400, 300, &sizes(&[1, 2, 3, 4]));
        assert_eq!(plan.evict, vec![(ReleaseId([1; 32]), vec![chunk(1)])]);
        assert_eq!(plan.demand, 300);
    }

    #[test]
    fn kept_releases_are_never_evicted_even_over_the_cap() {
        let held = [
            held(1, "1.0.0", &[1], Hold::Keep, 0),
            held(2, "2.0.0", &[2], Hold::Download { admitted: true }, 0),
        ];
        let plan = plan(&held, 200, 100, &sizes(&[1, 2]));
        assert!(plan.evict.is_empty());
        assert_eq!(plan.demand, 200);
    }

    #[test]
    fn a_download_is_admitted_when_evictions_make_room_and_waits_when_nothing_can() {
        let held = [
            held(1, "1.0.0", &[1, 2], Hold::Evictable, 0),
            held(2, "2.0.0", &[2, 3], Hold::Keep, 0),
            held(3, "3.0.0", &[3, 5], Hold::Download { admitted: false }, 100),
        ];
        let s = sizes(&[1, 2, 3]);
        // 300 used + 100 missing, cap 300: evicting 1.0.0 (chunk 1) makes room.
        let fits = plan(&held, 300, 300, &s);
        assert_eq!(fits.admit, vec![ReleaseId([3; 32])]);
        assert_eq!(fits.evict, vec![(ReleaseId([1; 32]), vec![chunk(1)])]);
        assert_eq!(fits.waiting, None);
        // Missing 200: even with 1.0.0 gone, 200 + 200 does not fit under
        // 300. Nothing is evicted for a download that cannot start.
        let mut big = held.clone();
        big[2].missing = 200;
        let waits = plan(&big, 300, 300, &s);
        assert!(
            waits.admit.is_empty() && waits.evict.is_empty(),
            "{waits:?}"
        );
        let why = waits.waiting.expect("a reason");
        assert!(why.contains("3.0.0") && why.contains("leaves 100"), "{why}");
    }

    #[test]
    fn admitted_downloads_count_what_they_still_lack() {
        let held = [
            held(1, "1.0.0", &[1], Hold::Evictable, 0),
            held(2, "2.0.0", &[2], Hold::Download { admitted: true }, 150),
            held(3, "2.1.0", &[3], Hold::Download { admitted: false }, 150),
        ];
        // 200 used + 150 the admitted one lacks: 1.0.0 goes (100), and the
        // second download (150 more) does not fit under 300.
        let plan = plan(&held, 200, 300, &sizes(&[1, 2]));
        assert_eq!(plan.evict.len(), 1);
        assert!(plan.admit.is_empty());
        assert_eq!(plan.demand, 250);
    }
}

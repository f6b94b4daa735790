//! The fleet view and automatic rollout decisions, built from the nodes'
//! signed status reports (which `fleetmesh-seed run` keeps in
//! `run/mesh.json`).
//!
//! A node counts as a success for a release only when it reports
//! `committed` with that version booted: the updater reports `committed`
//! after the trial boot passed its health check, so a node that fell back
//! never counts. `rolled_back` or `failed` with that target counts as an
//! error.

use crate::layout::Seed;
use crate::policy::{current, sign_and_install};
use crate::Result;
use fleetmesh_policy::doc::PolicyDoc;
use fleetmesh_policy::rollout::{Rollout, RolloutState, Step, WaveCounts};
use fleetmesh_protocol::mesh::Report;
use fleetmesh_protocol::UnixTime;
use serde::Serialize;
use std::collections::BTreeMap;

/// One node in the fleet view.
#[derive(Clone, Debug, Serialize)]
pub struct NodeRow {
    /// Peer id.
    pub node_id: String,
    /// Site label.
    pub site: String,
    /// Booted version.
    pub version: Option<String>,
    /// Booted slot.
    pub slot: Option<String>,
    /// Update state.
    pub state: String,
    /// Why waiting, rolled back or failed.
    pub reason: Option<String>,
    /// When it last reported.
    pub last_report: UnixTime,
    /// True if that was more than the stale limit ago.
    pub stale: bool,
}

/// One wave's progress.
#[derive(Clone, Debug, Serialize)]
pub struct WaveView {
    /// Its name.
    pub name: String,
    /// Open (the rollout has reached it).
    pub open: bool,
    /// Nodes in it, successes, errors.
    pub members: u64,
    /// Committed.
    pub succeeded: u64,
    /// Rolled back or failed.
    pub failed: u64,
}

/// One rollout's progress.
#[derive(Clone, Debug, Serialize)]
pub struct RolloutView {
    /// Version.
    pub version: String,
    /// State.
    pub state: RolloutState,
    /// Its waves.
    pub waves: Vec<WaveView>,
}

/// The fleet.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetView {
    /// Nodes that have reported.
    pub nodes: Vec<NodeRow>,
    /// Node counts by booted version.
    pub by_version: BTreeMap<String, u64>,
    /// By update state.
    pub by_state: BTreeMap<String, u64>,
    /// By site.
    pub by_site: BTreeMap<String, u64>,
    /// Nodes not heard from within the stale limit.
    pub stale: u64,
    /// Rollouts of the current policy.
    pub rollouts: Vec<RolloutView>,
    /// Chunk bytes the nodes of each site received, by where from.
    pub sites: Vec<SiteTransfer>,
}

/// What the nodes of one site received, summed over releases, as they
/// report it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SiteTransfer {
    /// Site label.
    pub site: String,
    /// Nodes that reported.
    pub nodes: u64,
    /// From peers in the site (its LAN).
    pub bytes_same_site: u64,
    /// From other sites and the seed: over the site's WAN link.
    pub bytes_wan: u64,
}

/// Counts of a rollout's wave `wave` among the reports.
pub fn wave_counts(
    r: &Rollout,
    wave: usize,
    policy: &PolicyDoc,
    reports: &BTreeMap<String, Report>,
) -> WaveCounts {
    let version = r.version.to_string();
    let mut c = WaveCounts::default();
    let Some(w) = r.waves.get(wave) else {
        return c;
    };
    for rep in reports.values() {
        let mut labels = rep.labels.clone();
        labels.insert("node".into(), rep.node_id.clone());
        if !w.contains(&rep.node_id, &labels, &policy.groups, &version) {
            continue;
        }
        c.members += 1;
        let booted = rep.booted_version.as_deref() == Some(version.as_str());
        let target = rep.target_version.as_deref() == Some(version.as_str());
        if rep.state == "committed" && booted {
            c.succeeded += 1;
        } else if target && (rep.state == "rolled_back" || rep.state == "failed") {
            c.failed += 1;
        }
    }
    c
}

/// The fleet view. A node is stale when its last report is older than
/// `stale_after`, or than three of its repeats if that is longer: unchanged
/// reports thin out as the fleet grows
/// ([`fleetmesh_protocol::mesh::report_every_secs`]).
pub fn view(
    reports: &BTreeMap<String, Report>,
    policy: Option<&PolicyDoc>,
    now: UnixTime,
    stale_after: u64,
) -> FleetView {
    let stale_after =
        stale_after.max(3 * fleetmesh_protocol::mesh::report_every_secs(reports.len()));
    let mut v = FleetView::default();
    let mut sites: BTreeMap<String, SiteTransfer> = BTreeMap::new();
    for rep in reports.values() {
        let stale = now.0.saturating_sub(rep.at.0) > stale_after;
        let site = rep.labels.get("site").cloned().unwrap_or_default();
        let t = sites.entry(site.clone()).or_insert_with(|| SiteTransfer {
            site: site.clone(),
            ..SiteTransfer::default()
        });
        t.nodes += 1;
        for r in &rep.releases {
            t.bytes_same_site += r.bytes_same_site;
            t.bytes_wan += r.bytes_wan;
        }
        let version = rep.booted_version.clone();
        *v.by_version
            .entry(version.clone().unwrap_or_else(|| "unknown".into()))
            .or_default() += 1;
        *v.by_state.entry(rep.state.clone()).or_default() += 1;
        *v.by_site.entry(site.clone()).or_default() += 1;
        v.stale += u64::from(stale);
        v.nodes.push(NodeRow {
            node_id: rep.node_id.clone(),
            site,
            version,
            slot: rep.slot.clone(),
            state: rep.state.clone(),
            reason: rep.reason.clone(),
            last_report: rep.at,
            stale,
        });
    }
    v.sites = sites.into_values().collect();
    if let Some(p) = policy {
        for r in &p.rollouts {
            let waves = r
                .waves
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let c = wave_counts(r, i, p, reports);
                    WaveView {
                        name: w.name.clone(),
                        open: i <= r.wave,
                        members: c.members,
                        succeeded: c.succeeded,
                        failed: c.failed,
                    }
                })
                .collect();
            v.rollouts.push(RolloutView {
                version: r.version.to_string(),
                state: r.state.clone(),
                waves,
            });
        }
    }
    v
}

/// An empty wave (no reporting node falls into it) opens the next only
/// after this long, so that nodes that have not reported yet are not
/// skipped over.
pub const EMPTY_WAVE_GRACE_SECS: u64 = 60;

/// Advances, halts or completes the running rollouts of `published`
/// versions from the reports; signs and installs a new policy version if
/// anything changed. Returns what was decided, for the log.
pub fn step_rollouts(
    seed: &Seed,
    reports: &BTreeMap<String, Report>,
    published: &[String],
    now: UnixTime,
) -> Result<Vec<String>> {
    let Some((mut doc, _)) = current(seed)? else {
        return Ok(Vec::new());
    };
    let mut decided = Vec::new();
    let snapshot = doc.clone();
    for r in &mut doc.rollouts {
        // A rollout waits for its release: nothing can succeed before it.
        if !published.contains(&r.version.to_string()) {
            continue;
        }
        let counts = wave_counts(r, r.wave, &snapshot, reports);
        let grace = r.waves[r.wave].soak_secs.max(EMPTY_WAVE_GRACE_SECS);
        if counts.members == 0 && (reports.is_empty() || now.0 < r.wave_opened_at.0 + grace) {
            continue;
        }
        let Some(step) = r.evaluate(now, counts) else {
            continue;
        };
        let wave = r.waves[r.wave].name.clone();
        match step {
            Step::Advance => {
                r.wave += 1;
                r.wave_opened_at = now;
                decided.push(format!(
                    "rollout {}: wave {wave} met its threshold ({} of {} committed); opening wave {}",
                    r.version, counts.succeeded, counts.members, r.waves[r.wave].name
                ));
            }
            Step::Complete => {
                r.state = RolloutState::Complete;
                decided.push(format!(
                    "rollout {}: complete ({} of {} committed in the last wave)",
                    r.version, counts.succeeded, counts.members
                ));
            }
            Step::Halt(reason) => {
                r.state = RolloutState::Halted {
                    reason: reason.clone(),
                };
                decided.push(format!("rollout {}: halted: {reason}", r.version));
            }
        }
    }
    if decided.is_empty() {
        return Ok(decided);
    }
    doc.version += 1;
    doc.issued_at = now;
    doc.expires_at = doc.expires_at.max(now.plus_secs(86_400));
    sign_and_install(seed, &doc, now, &decided.join("; "))?;
    for d in &decided {
        tracing::info!("{d}");
    }
    Ok(decided)
}

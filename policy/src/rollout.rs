//! Rollout plans: ordered waves, each a percentage of the fleet or a named
//! group, with a soak time, a success threshold to advance and an error
//! threshold that halts.
//!
//! Wave membership needs no per-node lists: a node's position for a
//! release is a hash of (node id, release) in `0..10_000` (basis points),
//! and a percentage wave takes the nodes whose position is below it.
//! Percentages are cumulative, so widening a wave (or opening the next)
//! never removes a node that was already in.

use crate::group::{Group, Labels};
use fleetmesh_protocol::UnixTime;
use serde::{Deserialize, Serialize};

/// Which nodes a wave takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveTarget {
    /// Nodes whose position is below this percentage (1-100).
    Percent(u8),
    /// Every node of the named group.
    Group(String),
}

/// One wave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    /// Its name, for logs and the fleet view.
    pub name: String,
    /// Who is in it.
    pub target: WaveTarget,
    /// How long after it opens before the next may open.
    pub soak_secs: u64,
    /// Percentage of its nodes that must have committed to advance.
    pub success_pct: u8,
    /// Percentage of its nodes whose update failed that halts the rollout.
    pub error_pct: u8,
}

/// Where a rollout stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Waves up to the current one are open.
    Running,
    /// No new installs; resumes where it was.
    Paused,
    /// Stopped by an operator; no new installs.
    Aborted,
    /// Stopped by the error threshold; no new installs.
    Halted {
        /// Why.
        reason: String,
    },
    /// Every wave is open.
    Complete,
}

/// The rollout of one release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The release's version.
    pub version: semver::Version,
    /// Its state.
    pub state: RolloutState,
    /// Index of the newest open wave.
    pub wave: usize,
    /// When that wave opened.
    pub wave_opened_at: UnixTime,
    /// The waves, in order.
    pub waves: Vec<Wave>,
}

/// A node's position for a release, in basis points (`0..10_000`).
pub fn position(node_id: &str, release: &str) -> u32 {
    let mut h = blake3::Hasher::new();
    h.update(b"fleetmesh-wave-v1\0");
    h.update(node_id.as_bytes());
    h.update(b"\0");
    h.update(release.as_bytes());
    let bytes: [u8; 8] = h.finalize().as_bytes()[..8].try_into().unwrap_or_default();
    (u64::from_le_bytes(bytes) % 10_000) as u32
}

impl Wave {
    /// True if the node is in this wave for `release`.
    pub fn contains(
        &self,
        node_id: &str,
        labels: &Labels,
        groups: &[Group],
        release: &str,
    ) -> bool {
        match &self.target {
            WaveTarget::Percent(p) => position(node_id, release) < u32::from(*p) * 100,
            WaveTarget::Group(name) => groups.iter().any(|g| g.name == *name && g.matches(labels)),
        }
    }
}

/// Progress of the current wave, from the nodes' signed reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaveCounts {
    /// Nodes in the wave.
    pub members: u64,
    /// Of those, committed to the release (after a good boot).
    pub succeeded: u64,
    /// Of those, whose update failed or rolled back.
    pub failed: u64,
}

/// What the seed should do with a running rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Open the next wave.
    Advance,
    /// Stop: the error threshold was reached.
    Halt(String),
    /// The last wave met its threshold.
    Complete,
}

impl Rollout {
    /// True if the rollout lets this node install now.
    pub fn admits(&self, node_id: &str, labels: &Labels, groups: &[Group]) -> bool {
        if !matches!(self.state, RolloutState::Running | RolloutState::Complete) {
            return false;
        }
        let release = self.version.to_string();
        self.waves
            .iter()
            .take(self.wave + 1)
            .any(|w| w.contains(node_id, labels, groups, &release))
    }

    /// Decides from the current wave's counts whether to advance, halt or
    /// finish; `None` means wait (soaking, or too few successes yet).
    pub fn evaluate(&self, now: UnixTime, counts: WaveCounts) -> Option<Step> {
        if self.state != RolloutState::Running {
            return None;
        }
        let wave = self.waves.get(self.wave)?;
        let pct = |n: u64| n * 100 / counts.members.max(1);
        if counts.members > 0
            && counts.failed > 0
            && pct(counts.failed) >= u64::from(wave.error_pct)
        {
            return Some(Step::Halt(format!(
                "wave {} ({}): {} of {} nodes failed, error threshold {}%",
                self.wave, wave.name, counts.failed, counts.members, wave.error_pct
            )));
        }
        let soaked = now.0 >= self.wave_opened_at.0.saturating_add(wave.soak_secs);
        // A wave no node falls into has nothing to wait for but its soak.
        let enough = counts.members == 0 || pct(counts.succeeded) >= u64::from(wave.success_pct);
        if !soaked || !enough {
            return None;
        }
        if self.wave + 1 < self.waves.len() {
            Some(Step::Advance)
        } else {
            Some(Step::Complete)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Rollout {
        let wave = |name: &str, target, soak_secs| Wave {
            name: name.into(),
            target,
            soak_secs,
            success_pct: 90,
            error_pct: 20,
        };
        Rollout {
            version: semver::Version::new(2, 0, 0),
            state: RolloutState::Running,
            wave: 0,
            wave_opened_at: UnixTime(1000),
            waves: vec![
                wave("canary", WaveTarget::Percent(10), 600),
                wave("half", WaveTarget::Percent(50), 600),
                wave("all", WaveTarget::Percent(100), 0),
            ],
        }
    }

    #[test]
    fn positions_spread_evenly_and_waves_only_grow() {
        let nodes: Vec<String> = (0..10_000).map(|i| format!("node-{i}")).collect();
        let mut r = plan();
        let admitted = |r: &Rollout| -> Vec<bool> {
            nodes
                .iter()
                .map(|n| r.admits(n, &Labels::new(), &[]))
                .collect()
        };
        let canary = admitted(&r);
        let n = canary.iter().filter(|&&a| a).count();
        assert!((850..=1150).contains(&n), "canary took {n} of 10000");
        r.wave = 1;
        let half = admitted(&r);
        assert!(
            canary.iter().zip(&half).all(|(c, h)| !c || *h),
            "widening removed a node"
        );
        let n = half.iter().filter(|&&a| a).count();
        assert!((4700..=5300).contains(&n), "half took {n}");
        // Positions depend on the release: another version picks other canaries.
        assert_ne!(position("node-1", "2.0.0"), position("node-1", "2.0.1"));
        r.state = RolloutState::Paused;
        assert!(admitted(&r).iter().all(|a| !a));
    }

    #[test]
    fn advance_after_soak_and_success_halt_on_errors() {
        let r = plan();
        let counts = |members, succeeded, failed| WaveCounts {
            members,
            succeeded,
            failed,
        };
        assert_eq!(
            r.evaluate(UnixTime(1599), counts(10, 10, 0)),
            None,
            "soaking"
        );
        assert_eq!(
            r.evaluate(UnixTime(1600), counts(10, 8, 0)),
            None,
            "80% < 90%"
        );
        assert_eq!(
            r.evaluate(UnixTime(1600), counts(10, 9, 0)),
            Some(Step::Advance)
        );
        let halt = r.evaluate(UnixTime(1001), counts(10, 0, 2)).expect("halts");
        assert!(
            matches!(halt, Step::Halt(ref why) if why.contains("2 of 10")),
            "{halt:?}"
        );
        assert_eq!(
            r.evaluate(UnixTime(1001), counts(10, 0, 1)),
            None,
            "10% < 20%"
        );
        assert_eq!(
            r.evaluate(UnixTime(1600), counts(0, 0, 0)),
            Some(Step::Advance),
            "empty wave"
        );
        let last = Rollout { wave: 2, ..plan() };
        assert_eq!(
            last.evaluate(UnixTime(1000), counts(4, 4, 0)),
            Some(Step::Complete)
        );
    }
}

//! The policy document: versioned, signed by the policy role, expiring;
//! and the one decision nodes take from it.

use crate::group::{most_specific, Group, Labels};
use crate::rollout::{Rollout, RolloutState, WaveTarget};
use crate::window::{zone, Opening, Schedule, MAX_DURATION_SECS};
use fleetmesh_protocol::codec::{Kind, Message};
use fleetmesh_protocol::keys::Policy;
use fleetmesh_protocol::member::Revocation;
use fleetmesh_protocol::signed::{Signed, SignedBody};
use fleetmesh_protocol::{TrustState, UnixTime};
use serde::{Deserialize, Serialize};

/// Most entries of each list in a policy.
pub const MAX_ENTRIES: usize = 256;
/// Most revocations a policy carries (an entry is dropped once the
/// credentials it voids have expired).
pub const MAX_REVOKED: usize = 2048;

/// A maintenance window as the policy states it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowDef {
    /// Its name.
    pub name: String,
    /// Groups it applies to; empty: every node without a more specific one.
    pub groups: Vec<String>,
    /// IANA time zone of its cron times.
    pub tz: String,
    /// Recurring: when it opens (five-field cron, wall-clock in `tz`).
    pub cron: Option<String>,
    /// Recurring: how long it stays open, 1 s - 24 h.
    pub duration_secs: u64,
    /// One-off: opens.
    pub start: Option<UnixTime>,
    /// One-off: closes.
    pub end: Option<UnixTime>,
}

/// A version a group must run (pin), or may go back to (rollback).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The group.
    pub group: String,
    /// The version.
    pub version: semver::Version,
}

/// Download and upload caps for groups during a recurring period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BandwidthDef {
    /// Groups it applies to; empty: every node.
    pub groups: Vec<String>,
    /// IANA time zone.
    pub tz: String,
    /// When the period starts (cron, wall-clock in `tz`).
    pub cron: String,
    /// How long it lasts.
    pub duration_secs: u64,
    /// Download cap in bytes/s (0: none).
    pub download_bps: u64,
    /// Upload cap in bytes/s (0: none).
    pub upload_bps: u64,
}

/// The policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDoc {
    /// Goes up with every change.
    pub version: u64,
    /// When it was signed.
    pub issued_at: UnixTime,
    /// After this, nodes stop installing until a newer one arrives.
    pub expires_at: UnixTime,
    /// Named selectors.
    pub groups: Vec<Group>,
    /// Maintenance windows.
    pub windows: Vec<WindowDef>,
    /// Bandwidth schedules.
    pub bandwidth: Vec<BandwidthDef>,
    /// One rollout per release being rolled out.
    pub rollouts: Vec<Rollout>,
    /// Versions groups must run.
    pub pins: Vec<Pin>,
    /// Emergency rollback: older versions groups may install.
    pub rollback: Vec<Pin>,
    /// Nodes whose membership credentials are void (`fleetmesh-seed revoke`).
    pub revoked: Vec<Revocation>,
}

impl Message for PolicyDoc {
    const KIND: Kind = Kind::Policy;
    const WHAT: &'static str = "policy";
    const MAX_BYTES: usize = 256 << 10;
}

impl SignedBody for PolicyDoc {
    type Role = Policy;
    const SIGNED_KIND: Kind = Kind::SignedPolicy;
}

/// Why a policy is refused, naming the entry and the rule.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

fn valid_name(s: &str) -> bool {
    fleetmesh_protocol::manifest::is_valid_name(s)
}

impl WindowDef {
    /// The schedule it describes.
    pub fn schedule(&self) -> Result<Schedule, String> {
        match (&self.cron, self.start, self.end) {
            (Some(cron), None, None) => {
                let cron = cron.parse().map_err(|e| format!("cron: {e}"))?;
                Ok(Schedule::Every {
                    cron,
                    duration_secs: self.duration_secs,
                    tz: zone(&self.tz)?,
                })
            }
            (None, Some(start), Some(end)) if start < end => Ok(Schedule::Once { start, end }),
            (None, Some(_), Some(_)) => Err("end must be after start".into()),
            _ => Err("needs either cron (with duration) or start and end".into()),
        }
    }
}

impl PolicyDoc {
    /// Checks every rule; the error names the entry.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let err = |s: String| Err(PolicyError(s));
        if self.expires_at <= self.issued_at {
            return err("policy expires before it is issued".into());
        }
        for (what, n) in [
            ("groups", self.groups.len()),
            ("windows", self.windows.len()),
            ("bandwidth", self.bandwidth.len()),
            ("rollouts", self.rollouts.len()),
            ("pins", self.pins.len()),
            ("rollback", self.rollback.len()),
        ] {
            if n > MAX_ENTRIES {
                return err(format!("{what}: {n} entries, at most {MAX_ENTRIES}"));
            }
        }
        if self.revoked.len() > MAX_REVOKED {
            return err(format!(
                "revoked: {} entries, at most {MAX_REVOKED}",
                self.revoked.len()
            ));
        }
        for (i, g) in self.groups.iter().enumerate() {
            if !valid_name(&g.name) {
                return err(format!(
                    "group {}: name {:?} is not a valid name",
                    i + 1,
                    g.name
                ));
            }
            if self.groups[..i].iter().any(|o| o.name == g.name) {
                return err(format!("group {}: {:?} is defined twice", i + 1, g.name));
            }
        }
        let known = |name: &str| self.groups.iter().any(|g| g.name == name);
        for (i, w) in self.windows.iter().enumerate() {
            let at = format!("window {} ({})", i + 1, w.name);
            if let Some(g) = w.groups.iter().find(|g| !known(g)) {
                return err(format!("{at}: unknown group {g:?}"));
            }
            if w.cron.is_some() && !(1..=MAX_DURATION_SECS).contains(&w.duration_secs) {
                return err(format!("{at}: duration must be 1 s-24 h"));
            }
            let schedule = w
                .schedule()
                .map_err(|e| PolicyError(format!("{at}: {e}")))?;
            if let Schedule::Every { cron, .. } = &schedule {
                if !cron.can_fire() {
                    return err(format!("{at}: cron {cron} never fires"));
                }
            }
        }
        for (i, b) in self.bandwidth.iter().enumerate() {
            let at = format!("bandwidth {}", i + 1);
            if let Some(g) = b.groups.iter().find(|g| !known(g)) {
                return err(format!("{at}: unknown group {g:?}"));
            }
            zone(&b.tz).map_err(|e| PolicyError(format!("{at}: {e}")))?;
            b.cron
                .parse::<crate::cron::Cron>()
                .map_err(|e| PolicyError(format!("{at}: cron: {e}")))?;
            if !(1..=MAX_DURATION_SECS).contains(&b.duration_secs) {
                return err(format!("{at}: duration must be 1 s-24 h"));
            }
        }
        for (i, r) in self.rollouts.iter().enumerate() {
            let at = format!("rollout {} ({})", i + 1, r.version);
            if self.rollouts[..i].iter().any(|o| o.version == r.version) {
                return err(format!("{at}: version has two rollouts"));
            }
            if r.waves.is_empty() || r.wave >= r.waves.len() {
                return err(format!(
                    "{at}: needs waves, and its current wave must be one of them"
                ));
            }
            let mut last_pct = 0;
            for (j, w) in r.waves.iter().enumerate() {
                let at = format!("{at} wave {} ({})", j + 1, w.name);
                match &w.target {
                    WaveTarget::Percent(p) if !(1..=100).contains(p) => {
                        return err(format!("{at}: percent must be 1-100"))
                    }
                    WaveTarget::Percent(p) if *p < last_pct => {
                        return err(format!(
                            "{at}: percent {p} is below an earlier wave's {last_pct}"
                        ))
                    }
                    WaveTarget::Percent(p) => last_pct = *p,
                    WaveTarget::Group(g) if !known(g) => {
                        return err(format!("{at}: unknown group {g:?}"))
                    }
                    WaveTarget::Group(_) => {}
                }
                if w.success_pct > 100 || !(1..=100).contains(&w.error_pct) {
                    return err(format!(
                        "{at}: success_pct must be 0-100 and error_pct 1-100"
                    ));
                }
            }
        }
        for (what, list) in [("pin", &self.pins), ("rollback", &self.rollback)] {
            for (i, p) in list.iter().enumerate() {
                if !known(&p.group) {
                    return err(format!("{what} {}: unknown group {:?}", i + 1, p.group));
                }
            }
        }
        Ok(())
    }

    /// The rollout of `version`, if any.
    pub fn rollout(&self, version: &semver::Version) -> Option<&Rollout> {
        self.rollouts.iter().find(|r| r.version == *version)
    }

    /// Whether `node` may install `version` now. `running` is the version it
    /// runs; `install_secs` how long an install is expected to take (a
    /// window that closes sooner is not used).
    pub fn decide(
        &self,
        node_id: &str,
        labels: &Labels,
        version: &semver::Version,
        running: Option<&semver::Version>,
        now: UnixTime,
        install_secs: u64,
    ) -> Decision {
        if now >= self.expires_at {
            return Decision::wait(
                format!("policy {} expired; waiting for a newer one", self.version),
                None,
            );
        }
        let pin = self.applicable(&self.pins, labels);
        if let Some(p) = pin {
            if p.version != *version {
                return Decision::Never(format!("group {} is pinned to {}", p.group, p.version));
            }
        }
        // A group rolled back stays there until the permission is removed.
        if let Some(rb) = self.rollback_for(labels) {
            if version > rb {
                return Decision::Never(format!("rolled back to {rb} by policy"));
            }
        }
        let older = running.is_some_and(|r| version < r);
        if older {
            return match self.applicable(&self.rollback, labels) {
                Some(p) if p.version == *version => Decision::Install,
                _ => Decision::Never(format!(
                    "{version} is older than the running {}",
                    running.map_or(String::new(), |r| r.to_string())
                )),
            };
        }
        if pin.is_none() {
            match self.rollout(version) {
                None => return Decision::wait(format!("no rollout for {version}"), None),
                Some(r)
                    if matches!(r.state, RolloutState::Aborted | RolloutState::Halted { .. }) =>
                {
                    return Decision::Never(format!("rollout of {version} is {:?}", r.state))
                }
                Some(r) if !r.admits(node_id, labels, &self.groups) => {
                    return Decision::wait(format!("not in an open wave of {version}"), None)
                }
                Some(_) => {}
            }
        }
        self.window_decision(labels, now, install_secs)
    }

    /// The older version this node's group may roll back to, if granted.
    pub fn rollback_for(&self, labels: &Labels) -> Option<&semver::Version> {
        self.applicable(&self.rollback, labels).map(|p| &p.version)
    }

    /// The entry of `list` for the node's most specific group among those
    /// the list names.
    fn applicable<'a>(&'a self, list: &'a [Pin], labels: &Labels) -> Option<&'a Pin> {
        let g = most_specific(&self.groups, labels, list.iter().map(|p| p.group.as_str()))?;
        list.iter().find(|p| p.group == g.name)
    }

    /// The (download, upload) caps in bytes/s a bandwidth schedule sets for
    /// a node at `now` (0: no cap), or `None` if none is in force. Rules of
    /// the node's most specific group apply, else the rules for every node.
    pub fn bandwidth_for(&self, labels: &Labels, now: UnixTime) -> Option<(u64, u64)> {
        let names = self
            .bandwidth
            .iter()
            .flat_map(|b| b.groups.iter().map(String::as_str));
        let rules: Vec<&BandwidthDef> = match most_specific(&self.groups, labels, names) {
            Some(g) => self
                .bandwidth
                .iter()
                .filter(|b| b.groups.contains(&g.name))
                .collect(),
            None => self
                .bandwidth
                .iter()
                .filter(|b| b.groups.is_empty())
                .collect(),
        };
        rules.into_iter().find_map(|b| {
            let schedule = Schedule::Every {
                cron: b.cron.parse().ok()?,
                duration_secs: b.duration_secs,
                tz: zone(&b.tz).ok()?,
            };
            schedule
                .open_at(now)
                .map(|_| (b.download_bps, b.upload_bps))
        })
    }

    /// The windows that apply to a node: those of its most specific group
    /// that has windows, else the windows for every node.
    pub fn windows_for(&self, labels: &Labels) -> Vec<&WindowDef> {
        let names = self
            .windows
            .iter()
            .flat_map(|w| w.groups.iter().map(String::as_str));
        match most_specific(&self.groups, labels, names) {
            Some(g) => self
                .windows
                .iter()
                .filter(|w| w.groups.contains(&g.name))
                .collect(),
            None => self
                .windows
                .iter()
                .filter(|w| w.groups.is_empty())
                .collect(),
        }
    }

    /// True if a node with these labels is inside one of its maintenance
    /// windows at `now`, or has none (it may install at any time).
    pub fn window_open(&self, labels: &Labels, now: UnixTime) -> bool {
        let windows = self.windows_for(labels);
        windows.is_empty()
            || windows
                .iter()
                .any(|w| w.schedule().is_ok_and(|s| s.open_at(now).is_some()))
    }

    fn window_decision(&self, labels: &Labels, now: UnixTime, install_secs: u64) -> Decision {
        let windows = self.windows_for(labels);
        if windows.is_empty() {
            return Decision::Install;
        }
        let mut next: Option<Opening> = None;
        for w in windows {
            let Ok(s) = w.schedule() else { continue };
            if let Some(o) = s.open_at(now) {
                if o.end.0.saturating_sub(now.0) >= install_secs {
                    return Decision::Install;
                }
                // Too little of this opening left: the one after it.
                if let Some(n) = s.next(o.end) {
                    next = Some(next.map_or(n, |c| c.min(n)));
                }
            } else if let Some(n) = s.next(now) {
                next = Some(next.map_or(n, |c| c.min(n)));
            }
        }
        Decision::wait(
            "outside its maintenance windows".into(),
            next.map(|o| o.start),
        )
    }
}

/// What a node may do with a release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Install now.
    Install,
    /// Not now; maybe at `until`.
    Wait {
        /// Why.
        reason: String,
        /// When to look again, if known.
        until: Option<UnixTime>,
    },
    /// Not this release (pinned elsewhere, rollout stopped, a downgrade).
    Never(String),
}

impl Decision {
    fn wait(reason: String, until: Option<UnixTime>) -> Self {
        Decision::Wait { reason, until }
    }
}

/// Verifies a signed policy against the trust state: policy-role
/// signatures, its rules, its expiry, and a version above `known`.
pub fn verify_policy(
    signed: &Signed<PolicyDoc>,
    trust: &TrustState,
    known: Option<u64>,
    now: UnixTime,
) -> Result<PolicyDoc, String> {
    let doc = trust.current(now).map_err(|e| e.to_string())?;
    let policy = signed.verify(&doc.policy).map_err(|e| e.to_string())?;
    policy.validate().map_err(|e| e.to_string())?;
    if now >= policy.expires_at {
        return Err(format!(
            "policy {} expired at {}",
            policy.version, policy.expires_at
        ));
    }
    if let Some(k) = known {
        if policy.version <= k {
            return Err(format!(
                "policy version {} is not newer than {k}",
                policy.version
            ));
        }
    }
    Ok(policy)
}

#[cfg(test)]
mod tests;

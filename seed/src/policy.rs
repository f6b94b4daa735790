//! `fleetmesh-seed policy apply|show` and `rollout start|pause|resume|abort`.
//!
//! The operator writes a TOML file; `apply` validates it, carries over the
//! state of rollouts already running, signs it with the policy key as the
//! next version and writes `policy/current.policy` (and a copy under
//! `policy/history/`), which a running `fleetmesh-seed run` gossips within
//! one tick. Every signed version is logged with its reason in
//! `policy/log.jsonl`.
//!
//! ```toml
//! expires_days = 7
//!
//! [[group]]
//! name = "berlin"
//! selector = { site = "ber1" }
//!
//! [[window]]
//! name = "nights"
//! groups = ["berlin"]          # empty or absent: every node
//! tz = "Europe/Berlin"
//! cron = "0 1 * * *"           # or start/end = "2026-12-01T01:00:00+01:00"
//! duration_minutes = 120
//!
//! [[rollout]]
//! version = "2.0.0"
//! [[rollout.wave]]
//! name = "canary"
//! percent = 10                 # or group = "berlin"
//! soak_minutes = 60
//! success_pct = 90
//! error_pct = 10
//!
//! [[pin]]
//! group = "berlin"
//! version = "1.9.0"
//! ```

use crate::layout::Seed;
use crate::{Result, SeedError};
use fleetmesh_node::fsutil::{self, Context};
use fleetmesh_policy::doc::{BandwidthDef, Pin, PolicyDoc, WindowDef};
use fleetmesh_policy::group::{Group, Labels};
use fleetmesh_policy::rollout::{Rollout, RolloutState, Wave, WaveTarget};
use fleetmesh_protocol::keys::Policy;
use fleetmesh_protocol::{codec, Signed, UnixTime};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The operator's policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Days until the signed policy expires (1-365).
    #[serde(default = "default_expiry")]
    pub expires_days: u64,
    /// Groups.
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupFile>,
    /// Windows.
    #[serde(default, rename = "window")]
    pub windows: Vec<WindowFile>,
    /// Bandwidth schedules.
    #[serde(default)]
    pub bandwidth: Vec<BandwidthFile>,
    /// Rollouts.
    #[serde(default, rename = "rollout")]
    pub rollouts: Vec<RolloutFile>,
    /// Pins.
    #[serde(default, rename = "pin")]
    pub pins: Vec<PinFile>,
    /// Emergency rollback permissions.
    #[serde(default)]
    pub rollback: Vec<PinFile>,
}

fn default_expiry() -> u64 {
    7
}

/// `[[group]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    name: String,
    #[serde(default)]
    selector: Labels,
}

/// `[[window]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowFile {
    name: String,
    #[serde(default)]
    groups: Vec<String>,
    tz: String,
    cron: Option<String>,
    #[serde(default)]
    duration_minutes: u64,
    start: Option<String>,
    end: Option<String>,
}

/// `[[bandwidth]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthFile {
    #[serde(default)]
    groups: Vec<String>,
    tz: String,
    cron: String,
    duration_minutes: u64,
    #[serde(default)]
    download_bytes_per_sec: u64,
    #[serde(default)]
    upload_bytes_per_sec: u64,
}

/// `[[rollout]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutFile {
    version: String,
    #[serde(rename = "wave")]
    waves: Vec<WaveFile>,
}

/// `[[rollout.wave]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaveFile {
    name: String,
    percent: Option<u8>,
    group: Option<String>,
    #[serde(default)]
    soak_minutes: u64,
    #[serde(default = "default_success")]
    success_pct: u8,
    #[serde(default = "default_error")]
    error_pct: u8,
}

fn default_success() -> u8 {
    90
}
fn default_error() -> u8 {
    10
}

/// `[[pin]]`, `[[rollback]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinFile {
    group: String,
    version: String,
}

fn bad(path: &Path, reason: String) -> SeedError {
    SeedError::Config {
        path: path.to_owned(),
        reason,
    }
}

fn version(path: &Path, what: &str, v: &str) -> Result<semver::Version> {
    v.parse()
        .map_err(|e| bad(path, format!("{what}: version {v:?}: {e}")))
}

fn instant(path: &Path, what: &str, s: &str) -> Result<UnixTime> {
    let t: jiff::Timestamp = s.parse().map_err(|e| {
        bad(
            path,
            format!("{what}: {s:?} is not an RFC 3339 time with offset: {e}"),
        )
    })?;
    Ok(UnixTime(t.as_second().max(0) as u64))
}

/// Paths of the policy files in a seed directory.
pub fn current_path(seed: &Seed) -> PathBuf {
    seed.layout.dir().join("policy").join("current.policy")
}

/// The policy in force, if any.
pub fn current(seed: &Seed) -> Result<Option<(PolicyDoc, Signed<PolicyDoc>)>> {
    let path = current_path(seed);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(fsutil::IoError {
                op: "read",
                path,
                source: e,
            }
            .into())
        }
    };
    let signed: Signed<PolicyDoc> = codec::decode(&bytes)?;
    let doc: PolicyDoc = codec::decode(signed.body_bytes())?;
    Ok(Some((doc, signed)))
}

impl PolicyFile {
    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| bad(path, e.to_string()))?;
        toml::from_str(&text)
            .map_err(|e| bad(path, fleetmesh_node::config::toml_error_line(&text, &e)))
    }

    /// The document, with rollouts that already run keeping their state.
    fn to_doc(
        &self,
        path: &Path,
        previous: Option<&PolicyDoc>,
        now: UnixTime,
    ) -> Result<PolicyDoc> {
        if !(1..=365).contains(&self.expires_days) {
            return Err(bad(path, "expires_days must be 1-365".into()));
        }
        let mut windows = Vec::new();
        for (i, w) in self.windows.iter().enumerate() {
            let what = format!("window {}", i + 1);
            windows.push(WindowDef {
                name: w.name.clone(),
                groups: w.groups.clone(),
                tz: w.tz.clone(),
                cron: w.cron.clone(),
                duration_secs: w.duration_minutes * 60,
                start: w
                    .start
                    .as_deref()
                    .map(|s| instant(path, &what, s))
                    .transpose()?,
                end: w
                    .end
                    .as_deref()
                    .map(|s| instant(path, &what, s))
                    .transpose()?,
            });
        }
        let mut rollouts = Vec::new();
        for (i, r) in self.rollouts.iter().enumerate() {
            let what = format!("rollout {}", i + 1);
            let v = version(path, &what, &r.version)?;
            let mut waves = Vec::new();
            for (j, w) in r.waves.iter().enumerate() {
                let target = match (&w.percent, &w.group) {
                    (Some(p), None) => WaveTarget::Percent(*p),
                    (None, Some(g)) => WaveTarget::Group(g.clone()),
                    _ => {
                        return Err(bad(
                            path,
                            format!(
                                "{what} wave {}: give exactly one of percent or group",
                                j + 1
                            ),
                        ))
                    }
                };
                waves.push(Wave {
                    name: w.name.clone(),
                    target,
                    soak_secs: w.soak_minutes * 60,
                    success_pct: w.success_pct,
                    error_pct: w.error_pct,
                });
            }
            let old = previous.and_then(|p| p.rollout(&v));
            rollouts.push(Rollout {
                version: v,
                state: old.map_or(RolloutState::Running, |o| o.state.clone()),
                wave: old.map_or(0, |o| o.wave.min(waves.len().saturating_sub(1))),
                wave_opened_at: old.map_or(now, |o| o.wave_opened_at),
                waves,
            });
        }
        let pins = |list: &[PinFile], what: &str| -> Result<Vec<Pin>> {
            list.iter()
                .enumerate()
                .map(|(i, p)| {
                    Ok(Pin {
                        group: p.group.clone(),
                        version: version(path, &format!("{what} {}", i + 1), &p.version)?,
                    })
                })
                .collect()
        };
        let doc = PolicyDoc {
            version: previous.map_or(1, |p| p.version + 1),
            issued_at: now,
            expires_at: now.plus_secs(self.expires_days * 86_400),
            groups: self
                .groups
                .iter()
                .map(|g| Group {
                    name: g.name.clone(),
                    selector: g.selector.clone(),
                })
                .collect(),
            windows,
            bandwidth: self
                .bandwidth
                .iter()
                .map(|b| BandwidthDef {
                    groups: b.groups.clone(),
                    tz: b.tz.clone(),
                    cron: b.cron.clone(),
                    duration_secs: b.duration_minutes * 60,
                    download_bps: b.download_bytes_per_sec,
                    upload_bps: b.upload_bytes_per_sec,
                })
                .collect(),
            rollouts,
            pins: pins(&self.pins, "pin")?,
            rollback: pins(&self.rollback, "rollback")?,
            // Revocations are not in the file: they carry over, less the
            // ones whose credentials have all expired.
            revoked: previous
                .map(|p| {
                    p.revoked
                        .iter()
                        .filter(|r| r.until > now)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
        };
        doc.validate().map_err(|e| bad(path, e.to_string()))?;
        Ok(doc)
    }
}

/// Validates, signs and installs the policy in `file`; returns it.
pub fn apply(seed: &Seed, file: &Path, now: UnixTime) -> Result<PolicyDoc> {
    let parsed = PolicyFile::load(file)?;
    let previous = current(seed)?.map(|(d, _)| d);
    let doc = parsed.to_doc(file, previous.as_ref(), now)?;
    sign_and_install(seed, &doc, now, &format!("applied {}", file.display()))?;
    Ok(doc)
}

/// What `rollout` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutCommand {
    /// Run from the first wave.
    Start,
    /// Stop opening waves and installing.
    Pause,
    /// Continue a paused rollout.
    Resume,
    /// Stop for good.
    Abort,
}

/// Changes a rollout's state and signs the result as the next version.
pub fn rollout(
    seed: &Seed,
    version: &semver::Version,
    cmd: RolloutCommand,
    now: UnixTime,
) -> Result<PolicyDoc> {
    let Some((mut doc, _)) = current(seed)? else {
        return Err(SeedError::BadArgument(
            "no policy yet: run `fleetmesh-seed policy apply` first".into(),
        ));
    };
    let Some(r) = doc.rollouts.iter_mut().find(|r| r.version == *version) else {
        return Err(SeedError::BadArgument(format!(
            "the policy has no rollout for {version}"
        )));
    };
    match (cmd, &r.state) {
        (RolloutCommand::Start, _) => {
            r.state = RolloutState::Running;
            r.wave = 0;
            r.wave_opened_at = now;
        }
        (RolloutCommand::Pause, RolloutState::Running) => r.state = RolloutState::Paused,
        (RolloutCommand::Resume, RolloutState::Paused) => r.state = RolloutState::Running,
        (RolloutCommand::Abort, _) => r.state = RolloutState::Aborted,
        (cmd, state) => {
            return Err(SeedError::BadArgument(
                format!("cannot {cmd:?} a rollout that is {state:?}").to_lowercase(),
            ))
        }
    }
    doc.version += 1;
    doc.issued_at = now;
    doc.expires_at = doc.expires_at.max(now.plus_secs(86_400));
    sign_and_install(seed, &doc, now, &format!("rollout {version}: {cmd:?}"))?;
    Ok(doc)
}

/// Signs `doc`, writes it as the current policy and logs why.
pub fn sign_and_install(seed: &Seed, doc: &PolicyDoc, now: UnixTime, reason: &str) -> Result<()> {
    doc.validate()
        .map_err(|e| SeedError::BadArgument(e.to_string()))?;
    let key = seed.key::<Policy>()?;
    let signed = Signed::sign(doc, &[&key])?;
    // Verify as a node would (catches a policy key the trust chain does not delegate).
    fleetmesh_policy::doc::verify_policy(&signed, &seed.trust()?, None, now)
        .map_err(|e| SeedError::BadArgument(format!("the signed policy does not verify: {e}")))?;
    let dir = seed.layout.dir().join("policy");
    let history = dir.join("history");
    std::fs::create_dir_all(&history).ctx("create", &history)?;
    let bytes = codec::encode(&signed)?;
    fsutil::write_atomic(
        &history.join(format!("{}.policy", doc.version)),
        &bytes,
        0o644,
    )?;
    fsutil::write_atomic(&current_path(seed), &bytes, 0o644)?;
    let line = serde_json::json!({ "at": now.0, "version": doc.version, "reason": reason });
    let log = dir.join("log.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap_or_default();
    text.push_str(&format!("{line}\n"));
    fsutil::write_atomic(&log, text.as_bytes(), 0o644)?;
    tracing::info!(version = doc.version, reason, "policy signed");
    Ok(())
}

//! The updater: runs the update state machine over a slot backend, the
//! chunk store and a journal in sled.
//!
//! Every `Action::Journal` is written and flushed before the next action
//! runs, and after it `run/status.json` is replaced for `fleetmesh-node
//! status`. One `Updater` lives for one boot: [`Updater::start`] asks the
//! backend what booted, [`Updater::resume`] carries on from the journal, and
//! [`Updater::offer`] stages the newest verified release for this platform.

use crate::config::{HealthKind, UpdateConfig};
use crate::fsutil::{self, IoError};
use crate::install::{hash_prefix, install};
use crate::slots::{SlotBackend, SlotError};
use crate::{ChunkStore, StoreError};
use fleetmesh_protocol::update::{
    Action, BootInfo, Event, FailReason, Machine, Slot, State, Target,
};
use fleetmesh_protocol::{ReleaseId, TrustState, UnixTime, VerifiedManifest};
use serde::Serialize;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the caller must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing pending.
    Idle,
    /// Reboot (the file backend: restart the process).
    Reboot,
}

/// Failures that stop the updater (the journal keeps its place).
#[derive(Debug, thiserror::Error)]
pub enum UpdaterError {
    /// The store or the journal.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The journal database.
    #[error("journal: {0}")]
    Journal(#[from] sled::Error),
    /// The slot backend.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// A file.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A journal record that does not decode.
    #[error("journal record: {0}")]
    BadRecord(String),
}

/// What `fleetmesh-node status` shows.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Status {
    /// The running slot.
    pub active_slot: Slot,
    /// The running release's version, if known.
    pub booted_version: Option<String>,
    /// The update in progress or last finished.
    pub update: UpdateStatus,
}

/// The update part of [`Status`].
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct UpdateStatus {
    /// The state's name.
    pub state: String,
    /// The release being applied.
    pub target_version: Option<String>,
    /// Why it rolled back or failed.
    pub reason: Option<String>,
}

/// The updater for one boot.
pub struct Updater<'s> {
    store: &'s ChunkStore,
    backend: Box<dyn SlotBackend>,
    journal: sled::Tree,
    slots: sled::Tree,
    machine: Machine,
    trust: TrustState,
    platform: String,
    config: UpdateConfig,
    run_dir: PathBuf,
    boot: BootInfo,
    running: std::cell::OnceCell<Option<semver::Version>>,
    gate: Option<Gate>,
    /// Why the staged release is not installing (policy), for the status.
    waiting: Option<String>,
}

/// A signed policy as it applies to this node.
#[derive(Clone, Debug)]
pub struct Gate {
    /// The verified policy.
    pub policy: fleetmesh_policy::doc::PolicyDoc,
    /// This node's id (its peer id).
    pub node_id: String,
    /// Its labels, with `node`, `site` and `platform`.
    pub labels: fleetmesh_policy::group::Labels,
}

/// Install throughput assumed before the first install has been measured.
const INSTALL_BYTES_PER_SEC: u64 = 20 << 20;
/// Where the measured install throughput is kept (in the slot-versions tree).
const INSTALL_RATE_KEY: &str = "install_bytes_per_sec";
/// Fixed install overhead (boot, health check) in that estimate.
const INSTALL_OVERHEAD_SECS: u64 = 60;

impl std::fmt::Debug for Updater<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("state", self.machine.state())
            .field("boot", &self.boot)
            .finish()
    }
}

const STATE_KEY: &str = "state";
/// Verdict file of `mark-good` / `mark-bad`, in the run directory.
pub const VERDICT_FILE: &str = "health.verdict";
/// Status file, in the run directory.
pub const STATUS_FILE: &str = "status.json";

impl<'s> Updater<'s> {
    /// Boots: asks the backend what booted and loads the journal.
    pub fn start(
        store: &'s ChunkStore,
        mut backend: Box<dyn SlotBackend>,
        trust: TrustState,
        platform: String,
        config: UpdateConfig,
        run_dir: PathBuf,
    ) -> Result<Self, UpdaterError> {
        let boot = backend.boot()?;
        let journal = store.tree("journal")?;
        let state = match journal.get(STATE_KEY)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| UpdaterError::BadRecord(e.to_string()))?,
            None => State::Idle,
        };
        // A verdict from an earlier boot says nothing about this one.
        let _ = std::fs::remove_file(run_dir.join(VERDICT_FILE));
        Ok(Updater {
            store,
            slots: store.tree("slot_versions")?,
            backend,
            journal,
            machine: Machine::new(state),
            trust,
            platform,
            config,
            run_dir,
            boot,
            running: std::cell::OnceCell::new(),
            gate: None,
            waiting: None,
        })
    }

    /// Installs from now on only as `gate`'s policy allows (`None`: as
    /// `update.install_when_staged` says).
    pub fn set_policy(&mut self, gate: Option<Gate>) {
        self.gate = gate;
    }

    /// Whether a staged release may install now: by the policy if there is
    /// one, else by the configuration. Records why not, for the status.
    fn may_install(
        &mut self,
        target: &semver::Version,
        image_len: u64,
        now: UnixTime,
    ) -> Result<bool, UpdaterError> {
        let Some(gate) = &self.gate else {
            self.waiting = None;
            return Ok(self.config.install_when_staged);
        };
        let running = self.running_version(now)?;
        let install_secs = image_len / self.install_rate()? + INSTALL_OVERHEAD_SECS;
        let decision = gate.policy.decide(
            &gate.node_id,
            &gate.labels,
            target,
            running.as_ref(),
            now,
            install_secs,
        );
        use fleetmesh_policy::doc::Decision;
        let why = match decision {
            Decision::Install => None,
            Decision::Wait {
                reason,
                until: Some(t),
            } => Some(format!("{reason}; next at {t}")),
            Decision::Wait {
                reason,
                until: None,
            }
            | Decision::Never(reason) => Some(reason),
        };
        if why != self.waiting {
            match &why {
                Some(w) => tracing::info!(version = %target, "not installing yet: {w}"),
                None => tracing::info!(version = %target, "policy allows the install now"),
            }
        }
        self.waiting = why;
        Ok(self.waiting.is_none())
    }

    /// Install throughput in bytes/s: the last install's, or a conservative
    /// default before the first.
    fn install_rate(&self) -> Result<u64, UpdaterError> {
        Ok(self
            .slots
            .get(INSTALL_RATE_KEY)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .filter(|&r| r > 0)
            .unwrap_or(INSTALL_BYTES_PER_SEC))
    }

    /// A stored release's image length (0 if its manifest is gone).
    fn image_len(&self, release: &ReleaseId) -> Result<u64, UpdaterError> {
        Ok(self
            .store
            .manifest(release)?
            .and_then(|s| {
                fleetmesh_protocol::codec::decode::<fleetmesh_protocol::Manifest>(s.body_bytes())
                    .ok()
            })
            .map_or(0, |m| m.image_len))
    }

    fn record_install_rate(&self, target: &Target, secs: f64) -> Result<(), UpdaterError> {
        let len = self.image_len(&target.release)?;
        let rate = (len as f64 / secs.max(1e-3)) as u64;
        if rate > 0 {
            self.slots.insert(INSTALL_RATE_KEY, &rate.to_be_bytes())?;
        }
        Ok(())
    }

    /// Replaces the trust state (the mesh brought a newer trust chain).
    pub fn set_trust(&mut self, trust: TrustState) {
        self.trust = trust;
    }

    /// The current state.
    pub fn state(&self) -> &State {
        self.machine.state()
    }

    /// Carries on from the journal after this boot.
    pub fn resume(&mut self, now: UnixTime) -> Result<Next, UpdaterError> {
        let actions = self.machine.handle(Event::Booted(self.boot));
        let next = self.execute(actions, now)?;
        self.write_status(now)?;
        Ok(next)
    }

    /// Stages the newest verified release for this platform that is newer
    /// than what runs (or exactly `version`, and then installs it at once).
    pub fn offer(
        &mut self,
        now: UnixTime,
        version: Option<&semver::Version>,
    ) -> Result<Next, UpdaterError> {
        let staged = match self.machine.state() {
            State::Staged(t) | State::WaitingForWindow(t) => Some((t.version.clone(), t.release)),
            _ => None,
        };
        if staged.is_none() && !self.machine.state().at_rest() {
            return Ok(Next::Idle);
        }
        // One read of the store decides both whether a newer release replaces
        // the staged one and which release to stage.
        let releases = match (&staged, version) {
            (Some(_), Some(_)) => Vec::new(),
            _ => self.verified_releases(now)?,
        };
        let newer = staged
            .as_ref()
            .is_some_and(|(v, _)| releases.iter().any(|m| m.manifest().version > *v));
        if let Some((target, release)) = staged.filter(|_| !newer) {
            // Already staged, nothing newer: ask again whether it may install now.
            let image_len = self.image_len(&release)?;
            let allowed = version == Some(&target) || self.may_install(&target, image_len, now)?;
            let actions = self.machine.handle(Event::InstallAllowed(allowed));
            let next = self.execute(actions, now)?;
            self.write_status(now)?;
            return Ok(next);
        }
        let running = self
            .running_version(now)?
            .unwrap_or(semver::Version::new(0, 0, 0));
        // An emergency rollback the policy grants this node's group.
        let rollback = self.gate.as_ref().and_then(|g| {
            let to = g.policy.rollback_for(&g.labels)?;
            (*to < running).then(|| to.clone())
        });
        let pick = match version.or(rollback.as_ref()) {
            Some(v) => releases.into_iter().find(|m| m.manifest().version == *v),
            None => releases
                .into_iter()
                .filter(|m| m.manifest().version > running)
                .max_by(|a, b| a.manifest().version.cmp(&b.manifest().version)),
        };
        let Some(release) = pick else {
            return Ok(Next::Idle);
        };
        let m = release.manifest();
        let downgrade_allowed = m.version < running;
        let mut actions = self.machine.handle(Event::Staged {
            release: release.id(),
            version: m.version.clone(),
            image_hash: m.image_hash,
            running,
            downgrade_allowed,
        });
        if self.machine.state().target().map(|t| t.release) != Some(release.id()) {
            // Not taken (a staged release stays unless this is newer).
            let next = self.execute(actions, now)?;
            self.write_status(now)?;
            return Ok(next);
        }
        let (target, image_len) = (m.version.clone(), m.image_len);
        let allowed = version.is_some() || self.may_install(&target, image_len, now)?;
        actions.extend(self.machine.handle(Event::InstallAllowed(allowed)));
        let next = self.execute(actions, now)?;
        self.write_status(now)?;
        Ok(next)
    }

    fn execute(&mut self, actions: Vec<Action>, now: UnixTime) -> Result<Next, UpdaterError> {
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            tracing::debug!(?action, "update action");
            let event = match action {
                Action::Journal(state) => {
                    self.write_journal(&state, now)?;
                    None
                }
                Action::Install(target) => {
                    self.slots.remove(target.slot.to_string())?;
                    let started = Instant::now();
                    let result = self.install(&target, now);
                    let secs = started.elapsed().as_secs_f64();
                    if result.is_ok() {
                        self.record_install_rate(&target, secs)?;
                    }
                    tracing::info!(slot = %target.slot, version = %target.version, secs, ok = result.is_ok(), "install finished");
                    Some(Event::InstallFinished(result))
                }
                Action::SetTrial(slot) => Some(Event::TrialSet(
                    self.backend.set_trial(slot).map_err(|e| e.to_string()),
                )),
                Action::Reboot => return Ok(Next::Reboot),
                Action::RunHealthCheck => Some(Event::HealthChecked(self.health_check(now))),
                Action::Commit(slot) => {
                    self.backend.commit(slot)?;
                    if let Some(t) = self.machine.state().target() {
                        self.slots
                            .insert(slot.to_string(), t.version.to_string().as_bytes())?;
                        self.store.flush()?;
                    }
                    None
                }
                Action::ClearTrial => {
                    self.backend.clear_trial()?;
                    None
                }
            };
            if let Some(event) = event {
                queue.extend(self.machine.handle(event));
            }
        }
        Ok(Next::Idle)
    }

    fn write_journal(&mut self, state: &State, now: UnixTime) -> Result<(), UpdaterError> {
        let bytes =
            serde_json::to_vec(state).map_err(|e| UpdaterError::BadRecord(e.to_string()))?;
        self.journal.insert(STATE_KEY, bytes)?;
        self.store.flush()?;
        tracing::info!(state = state.name(), "update state");
        self.write_status(now)
    }

    /// The verified manifest of `release`, or why it no longer verifies.
    fn manifest(&self, release: &ReleaseId, now: UnixTime) -> Result<VerifiedManifest, FailReason> {
        let signed = self
            .store
            .manifest(release)
            .map_err(|e| FailReason::Signature(e.to_string()))?
            .ok_or_else(|| {
                FailReason::Signature(format!("release {release} is not in the store"))
            })?;
        let verified = signed
            .verify_release(&self.trust, now)
            .map_err(|e| FailReason::Signature(e.to_string()))?;
        verified
            .check_platform(&self.platform)
            .map_err(|e| FailReason::Signature(e.to_string()))?;
        Ok(verified)
    }

    fn install(&self, target: &Target, now: UnixTime) -> Result<(), FailReason> {
        let manifest = self.manifest(&target.release, now)?;
        install(
            self.store,
            &manifest,
            self.backend.as_ref(),
            self.boot.booted,
            target.slot,
        )
    }

    fn health_check(&self, now: UnixTime) -> Result<(), String> {
        let Some(target) = self.machine.state().target() else {
            return Err("no target".into());
        };
        if self.boot.booted != target.slot {
            return Err(format!(
                "booted slot {}, expected {}",
                self.boot.booted, target.slot
            ));
        }
        let timeout = Duration::from_secs(self.config.health_timeout_secs);
        match self.config.health {
            HealthKind::Builtin => {
                let m = self
                    .manifest(&target.release, now)
                    .map_err(|e| e.to_string())?;
                let path = self.backend.slot_path(self.boot.booted);
                let hash = hash_prefix(path, m.manifest().image_len).map_err(|e| e.to_string())?;
                if hash == target.image_hash {
                    Ok(())
                } else {
                    Err(format!("slot {} reads back as {hash}", target.slot))
                }
            }
            HealthKind::Command => run_check(&self.config.health_command, &target.version, timeout),
            HealthKind::External => wait_for_verdict(&self.run_dir.join(VERDICT_FILE), timeout),
        }
    }

    fn verified_releases(&self, now: UnixTime) -> Result<Vec<VerifiedManifest>, UpdaterError> {
        let mut out = Vec::new();
        for info in self.store.releases()? {
            let Ok(id) = info.release_id.parse::<ReleaseId>() else {
                continue;
            };
            match self.manifest(&id, now) {
                Ok(m) => out.push(m),
                Err(e) => tracing::debug!(version = info.version, %e, "release not usable here"),
            }
        }
        Ok(out)
    }

    /// The running release's version: recorded at commit, or found by
    /// reading the booted slot back against the releases in the store.
    pub fn running_version(&self, now: UnixTime) -> Result<Option<semver::Version>, UpdaterError> {
        // The running slot does not change within a boot; without the cache a
        // factory image that is no release would be re-hashed at every status write.
        if let Some(known) = self.running.get() {
            return Ok(known.clone());
        }
        let found = self.find_running_version(now)?;
        let _ = self.running.set(found.clone());
        Ok(found)
    }

    fn find_running_version(&self, now: UnixTime) -> Result<Option<semver::Version>, UpdaterError> {
        let booted = self.boot.booted;
        if let Some(v) = self.slots.get(booted.to_string())? {
            return Ok(semver::Version::parse(&String::from_utf8_lossy(&v)).ok());
        }
        let path = self.backend.slot_path(booted);
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        for m in self.verified_releases(now)? {
            let m = m.manifest();
            if m.image_len <= len && hash_prefix(path, m.image_len).is_ok_and(|h| h == m.image_hash)
            {
                self.slots
                    .insert(booted.to_string(), m.version.to_string().as_bytes())?;
                self.store.flush()?;
                return Ok(Some(m.version.clone()));
            }
        }
        Ok(None)
    }

    /// The status as `fleetmesh-node status` shows it.
    pub fn status(&self, now: UnixTime) -> Result<Status, UpdaterError> {
        let state = self.machine.state();
        let reason = match state {
            State::RolledBack { reason, .. } | State::Failed { reason, .. } => {
                Some(reason.to_string())
            }
            State::Staged(_) | State::WaitingForWindow(_) => self.waiting.clone(),
            _ => None,
        };
        Ok(Status {
            active_slot: self.boot.booted,
            booted_version: self.running_version(now)?.map(|v| v.to_string()),
            update: UpdateStatus {
                state: state.name().into(),
                target_version: state.target().map(|t| t.version.to_string()),
                reason,
            },
        })
    }

    fn write_status(&self, now: UnixTime) -> Result<(), UpdaterError> {
        let status = self.status(now)?;
        let bytes = serde_json::to_vec_pretty(&status)
            .map_err(|e| UpdaterError::BadRecord(e.to_string()))?;
        Ok(fsutil::write_atomic(
            &self.run_dir.join(STATUS_FILE),
            &bytes,
            0o644,
        )?)
    }
}

/// Runs the health command; exit 0 within `timeout` is healthy.
fn run_check(argv: &[String], version: &semver::Version, timeout: Duration) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("no health command")?;
    let mut child = Command::new(program)
        .args(args)
        .env("FLEETMESH_TARGET_VERSION", version.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{program} exited with {status}")),
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} did not finish within {} s",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{program}: {e}")),
        }
    }
}

/// Waits for `mark-good` / `mark-bad` to write the verdict file.
fn wait_for_verdict(path: &Path, timeout: Duration) -> Result<(), String> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Ok(text) = std::fs::read_to_string(path) {
            let text = text.trim();
            return match text.strip_prefix("bad") {
                Some(reason) => Err(format!("marked bad{reason}")),
                None if text == "good" => Ok(()),
                None => Err(format!("unreadable verdict {text:?}")),
            };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("not marked good within {} s", timeout.as_secs()))
}

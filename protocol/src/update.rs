//! The update state machine: sans-IO, driven by events, returning actions.
//!
//! ```text
//! Idle → Staged → WaitingForWindow → Installing → Installed → Rebooting → Trial
//!      → HealthCheck → Committed | RolledBack        (and Failed(reason) from any step)
//! ```
//!
//! The node's runtime journals every [`Action::Journal`] durably **before**
//! carrying out the actions after it, and every other action is idempotent.
//! Each process start is a boot: the runtime loads the journaled state and
//! sends [`Event::Booted`], and the machine re-issues the effects of that
//! state (or moves on, if the boot tells it what happened). So a kill at any
//! point resumes forward or rolls back. Every retry is counted in the state
//! and bounded; past the bound the machine stops in `Failed`.
//!
//! The machine never names the running slot as a target: it installs into
//! and trials only the slot it did not boot from. The bootloader's own
//! decision is [`BootState::boot`], shared by the file backend and the tests.

use crate::{ImageHash, ReleaseId};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Attempts per step (install, trial boot, health check, rollback) before
/// the machine gives up.
pub const MAX_ATTEMPTS: u8 = 3;

/// One of the two A/B slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "a",
            Slot::B => "b",
        })
    }
}

/// A pending trial boot: boot `slot` while `tries_left` > 0, then fall back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// The slot on trial.
    pub slot: Slot,
    /// Boots of it left.
    pub tries_left: u8,
}

/// What the bootloader keeps: the default slot and an optional trial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    /// Booted when no trial is pending.
    pub default: Slot,
    /// A trial boot, if one is set.
    pub trial: Option<Trial>,
}

impl BootState {
    /// The bootloader's decision at power-on: boot the trial slot while it
    /// has tries left (using one), else the default. A trial with no tries
    /// left stays, so the system can see that the trial boot was attempted
    /// and fell back.
    pub fn boot(&mut self) -> Slot {
        match &mut self.trial {
            Some(trial) if trial.tries_left > 0 => {
                trial.tries_left -= 1;
                trial.slot
            }
            _ => self.default,
        }
    }
}

/// What the bootloader did this boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootInfo {
    /// The slot that is running.
    pub booted: Slot,
    /// The trial as the bootloader left it after this boot.
    pub trial: Option<Trial>,
}

/// The release being applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Its release id.
    pub release: ReleaseId,
    /// Its version.
    pub version: semver::Version,
    /// Its whole-image hash, checked after writing.
    pub image_hash: ImageHash,
    /// The slot it goes to: never the one running when it was staged.
    pub slot: Slot,
}

/// Why an update stopped, in terms an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailReason {
    /// The release is older than (or the same as) what runs, and no policy allows a downgrade.
    Downgrade {
        /// Running version.
        running: String,
        /// Offered version.
        offered: String,
    },
    /// The release's signatures, trust or expiry no longer check out.
    Signature(String),
    /// Writing or verifying the inactive slot failed.
    Write(String),
    /// The slot does not have room for the image.
    InsufficientStorage(String),
    /// Setting up the trial boot failed, or the trial boot never happened.
    BootConfig(String),
    /// The trial boot did not come up (the bootloader fell back).
    BootFailed(String),
    /// The health check failed or timed out.
    HealthCheckFailed(String),
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::Downgrade { running, offered } => {
                write!(
                    f,
                    "downgrade from {running} to {offered} not allowed by policy"
                )
            }
            FailReason::Signature(e) => write!(f, "signature: {e}"),
            FailReason::Write(e) => write!(f, "write: {e}"),
            FailReason::InsufficientStorage(e) => write!(f, "insufficient storage: {e}"),
            FailReason::BootConfig(e) => write!(f, "boot config: {e}"),
            FailReason::BootFailed(e) => write!(f, "boot failed: {e}"),
            FailReason::HealthCheckFailed(e) => write!(f, "health check failed: {e}"),
        }
    }
}

/// The journaled state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Nothing to do.
    #[default]
    Idle,
    /// Every chunk of the target is verified and stored.
    Staged(Target),
    /// Waiting for the policy to allow installing (window and wave).
    WaitingForWindow(Target),
    /// Writing the inactive slot; `attempt` counts starts.
    Installing {
        /// The release.
        target: Target,
        /// 1-based.
        attempt: u8,
    },
    /// The slot is written and verified; setting up the trial boot.
    Installed(Target),
    /// Trial boot set; rebooting into it.
    Rebooting {
        /// The release.
        target: Target,
        /// 1-based.
        attempt: u8,
    },
    /// Running the new slot on trial.
    Trial(Target),
    /// Checking the trial boot's health.
    HealthCheck {
        /// The release.
        target: Target,
        /// 1-based.
        attempt: u8,
    },
    /// The new slot is the default.
    Committed(Target),
    /// Back on the old slot.
    RolledBack {
        /// The release.
        target: Target,
        /// Why.
        reason: FailReason,
        /// Reboots made to get back, 1-based.
        attempt: u8,
    },
    /// Stopped; the running slot is untouched.
    Failed {
        /// The release, if one was staged.
        target: Option<Target>,
        /// Why.
        reason: FailReason,
    },
}

impl State {
    /// The state's name as status reports show it.
    pub fn name(&self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Staged(_) => "staged",
            State::WaitingForWindow(_) => "waiting_for_window",
            State::Installing { .. } => "installing",
            State::Installed(_) => "installed",
            State::Rebooting { .. } => "rebooting",
            State::Trial(_) => "trial",
            State::HealthCheck { .. } => "health_check",
            State::Committed(_) => "committed",
            State::RolledBack { .. } => "rolled_back",
            State::Failed { .. } => "failed",
        }
    }

    /// The release this state is about.
    pub fn target(&self) -> Option<&Target> {
        match self {
            State::Idle => None,
            State::Staged(t)
            | State::WaitingForWindow(t)
            | State::Installed(t)
            | State::Trial(t)
            | State::Committed(t)
            | State::Installing { target: t, .. }
            | State::Rebooting { target: t, .. }
            | State::HealthCheck { target: t, .. }
            | State::RolledBack { target: t, .. } => Some(t),
            State::Failed { target, .. } => target.as_ref(),
        }
    }

    /// True when no update is in progress (a new one may be staged).
    pub fn at_rest(&self) -> bool {
        matches!(
            self,
            State::Idle | State::Committed(_) | State::RolledBack { .. } | State::Failed { .. }
        )
    }
}

/// Something that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The process started: the bootloader booted this.
    Booted(BootInfo),
    /// A verified release for this platform is fully downloaded.
    Staged {
        /// Its id.
        release: ReleaseId,
        /// Its version.
        version: semver::Version,
        /// Its image hash.
        image_hash: ImageHash,
        /// The version running now.
        running: semver::Version,
        /// A signed policy allows installing an older version.
        downgrade_allowed: bool,
    },
    /// The policy's answer to "may this node install now?" (window and wave).
    InstallAllowed(bool),
    /// The [`Action::Install`] finished.
    InstallFinished(Result<(), FailReason>),
    /// The [`Action::SetTrial`] finished.
    TrialSet(Result<(), String>),
    /// The [`Action::RunHealthCheck`] finished.
    HealthChecked(Result<(), String>),
}

/// Something for the runtime to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write this state to the journal durably before doing anything after it.
    Journal(State),
    /// Write the target image into `target.slot` from verified chunks, re-read
    /// and check its hash; answer with [`Event::InstallFinished`].
    Install(Target),
    /// Make the bootloader boot `slot` once; answer with [`Event::TrialSet`].
    SetTrial(Slot),
    /// Restart the machine (the file backend: restart the process).
    Reboot,
    /// Run the health check; answer with [`Event::HealthChecked`].
    RunHealthCheck,
    /// Make `slot` the default and clear the trial.
    Commit(Slot),
    /// Clear any trial, so the next boot is the default slot.
    ClearTrial,
}

/// The state machine. Holds the journaled state and the booted slot.
#[derive(Clone, Debug)]
pub struct Machine {
    state: State,
    booted: Option<Slot>,
}

impl Machine {
    /// A machine resuming from the journaled `state`; send [`Event::Booted`] first.
    pub fn new(state: State) -> Self {
        Machine {
            state,
            booted: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Applies `event` and returns what to do.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::Booted(info) => {
                self.booted = Some(info.booted);
                self.on_boot(info)
            }
            Event::Staged {
                release,
                version,
                image_hash,
                running,
                downgrade_allowed,
            } => self.on_staged(release, version, image_hash, running, downgrade_allowed),
            Event::InstallAllowed(allowed) => self.on_allowed(allowed),
            Event::InstallFinished(result) => self.on_installed(result),
            Event::TrialSet(result) => self.on_trial_set(result),
            Event::HealthChecked(result) => self.on_health(result),
        }
    }

    fn go(&mut self, state: State, effects: &[Action]) -> Vec<Action> {
        self.state = state.clone();
        let mut actions = vec![Action::Journal(state)];
        actions.extend_from_slice(effects);
        actions
    }

    fn on_staged(
        &mut self,
        release: ReleaseId,
        version: semver::Version,
        image_hash: ImageHash,
        running: semver::Version,
        downgrade_allowed: bool,
    ) -> Vec<Action> {
        let Some(booted) = self.booted else {
            return Vec::new();
        };
        // A staged release not yet installed gives way to a newer one (the
        // fix for a release whose rollout halted): no slot was touched.
        let superseded = matches!(&self.state,
            State::Staged(t) | State::WaitingForWindow(t) if version > t.version);
        if !(self.state.at_rest() || superseded)
            || self.state.target().is_some_and(|t| t.release == release)
        {
            return Vec::new();
        }
        let target = Target {
            release,
            version: version.clone(),
            image_hash,
            slot: booted.other(),
        };
        if version <= running && !downgrade_allowed {
            let reason = FailReason::Downgrade {
                running: running.to_string(),
                offered: version.to_string(),
            };
            return self.go(
                State::Failed {
                    target: Some(target),
                    reason,
                },
                &[],
            );
        }
        self.go(State::Staged(target), &[])
    }

    fn on_allowed(&mut self, allowed: bool) -> Vec<Action> {
        let target = match &self.state {
            State::Staged(t) | State::WaitingForWindow(t) => t.clone(),
            _ => return Vec::new(),
        };
        if allowed {
            self.install(target, 1)
        } else if matches!(self.state, State::Staged(_)) {
            self.go(State::WaitingForWindow(target), &[])
        } else {
            Vec::new()
        }
    }

    fn install(&mut self, target: Target, attempt: u8) -> Vec<Action> {
        if attempt > MAX_ATTEMPTS {
            let reason = FailReason::Write(format!("install interrupted {MAX_ATTEMPTS} times"));
            return self.go(
                State::Failed {
                    target: Some(target),
                    reason,
                },
                &[],
            );
        }
        let effect = Action::Install(target.clone());
        self.go(State::Installing { target, attempt }, &[effect])
    }

    fn on_installed(&mut self, result: Result<(), FailReason>) -> Vec<Action> {
        let State::Installing { target, attempt } = &self.state else {
            return Vec::new();
        };
        let (target, attempt) = (target.clone(), *attempt);
        match result {
            Ok(()) => {
                let slot = target.slot;
                self.go(State::Installed(target), &[Action::SetTrial(slot)])
            }
            Err(reason @ (FailReason::InsufficientStorage(_) | FailReason::Signature(_))) => self
                .go(
                    State::Failed {
                        target: Some(target),
                        reason,
                    },
                    &[],
                ),
            Err(reason) if attempt >= MAX_ATTEMPTS => self.go(
                State::Failed {
                    target: Some(target),
                    reason,
                },
                &[],
            ),
            Err(_) => self.install(target, attempt + 1),
        }
    }

    fn on_trial_set(&mut self, result: Result<(), String>) -> Vec<Action> {
        let (target, attempt) = match &self.state {
            State::Installed(t) => (t.clone(), 1),
            State::Rebooting { target, attempt } => (target.clone(), *attempt),
            _ => return Vec::new(),
        };
        match result {
            Ok(()) => self.go(State::Rebooting { target, attempt }, &[Action::Reboot]),
            Err(e) => {
                let reason = FailReason::BootConfig(e);
                self.go(
                    State::Failed {
                        target: Some(target),
                        reason,
                    },
                    &[Action::ClearTrial],
                )
            }
        }
    }

    fn on_health(&mut self, result: Result<(), String>) -> Vec<Action> {
        let State::HealthCheck { target, .. } = &self.state else {
            return Vec::new();
        };
        let target = target.clone();
        match result {
            Ok(()) => {
                let slot = target.slot;
                self.go(State::Committed(target), &[Action::Commit(slot)])
            }
            Err(e) => self.roll_back(target, FailReason::HealthCheckFailed(e), 1),
        }
    }

    /// Back to the old slot: cancel the trial, and reboot if the new slot runs.
    fn roll_back(&mut self, target: Target, reason: FailReason, attempt: u8) -> Vec<Action> {
        let on_new = self.booted == Some(target.slot);
        if on_new && attempt > MAX_ATTEMPTS {
            let reason = FailReason::BootConfig(format!(
                "still on the new slot after {MAX_ATTEMPTS} rollback reboots ({reason})"
            ));
            return self.go(
                State::Failed {
                    target: Some(target),
                    reason,
                },
                &[Action::ClearTrial],
            );
        }
        let effects: &[Action] = if on_new {
            &[Action::ClearTrial, Action::Reboot]
        } else {
            &[Action::ClearTrial]
        };
        self.go(
            State::RolledBack {
                target,
                reason,
                attempt,
            },
            effects,
        )
    }

    fn on_boot(&mut self, info: BootInfo) -> Vec<Action> {
        match self.state.clone() {
            State::Idle | State::Staged(_) | State::WaitingForWindow(_) => Vec::new(),
            State::Installing { target, attempt } => self.install(target, attempt + 1),
            // Killed after setting the trial but before journaling Rebooting:
            // this boot may already be the trial.
            State::Installed(target) => self.boot_after_switch(target, 0, info),
            State::Rebooting { target, attempt } => self.boot_after_switch(target, attempt, info),
            State::Trial(target) | State::HealthCheck { target, .. } => {
                self.boot_during_check(target, info)
            }
            State::Committed(target) if info.booted == target.slot => {
                vec![Action::Commit(target.slot)]
            }
            State::Committed(target) => {
                let reason = FailReason::BootFailed(
                    "the commit did not persist; the old slot booted".into(),
                );
                self.roll_back(target, reason, 1)
            }
            State::RolledBack {
                target,
                reason,
                attempt,
            } => {
                if info.booted == target.slot {
                    self.roll_back(target, reason, attempt + 1)
                } else {
                    vec![Action::ClearTrial]
                }
            }
            State::Failed { .. } => vec![Action::ClearTrial],
        }
    }

    /// First boot after the trial was set.
    fn boot_after_switch(&mut self, target: Target, attempt: u8, info: BootInfo) -> Vec<Action> {
        if info.booted == target.slot {
            let check = State::HealthCheck {
                target: target.clone(),
                attempt: 1,
            };
            let mut actions = self.go(State::Trial(target), &[]);
            actions.extend(self.go(check, &[Action::RunHealthCheck]));
            return actions;
        }
        let fell_back = info
            .trial
            .is_some_and(|t| t.slot == target.slot && t.tries_left == 0);
        if fell_back {
            let reason = FailReason::BootFailed(format!(
                "slot {} did not boot; the bootloader fell back",
                target.slot
            ));
            return self.roll_back(target, reason, 1);
        }
        // The trial was never set or the reboot never happened: set it again.
        if attempt >= MAX_ATTEMPTS {
            let reason = FailReason::BootConfig(format!(
                "trial boot of slot {} never happened",
                target.slot
            ));
            return self.go(
                State::Failed {
                    target: Some(target),
                    reason,
                },
                &[Action::ClearTrial],
            );
        }
        let slot = target.slot;
        self.go(
            State::Rebooting {
                target,
                attempt: attempt + 1,
            },
            &[Action::SetTrial(slot)],
        )
    }

    /// A boot while the trial was being checked: the check never finished.
    fn boot_during_check(&mut self, target: Target, info: BootInfo) -> Vec<Action> {
        let reason = if info.booted == target.slot {
            FailReason::HealthCheckFailed("restarted before the health check passed".into())
        } else {
            FailReason::BootFailed(
                "restarted before the health check passed; the old slot booted".into(),
            )
        };
        self.roll_back(target, reason, 1)
    }
}

#[cfg(test)]
mod tests;

//! The GRUB backend: `grub-editenv` variables read by the grub.cfg snippet
//! in docs/slots.md, which boots the trial slot while `fm_trial_tries` is
//! above zero (counting it down with `save_env`) and the default otherwise.
//!
//! | variable | meaning |
//! |---|---|
//! | `fm_default` | `a` or `b`: booted when no trial is pending |
//! | `fm_trial` | `a`, `b` or empty: the slot on trial |
//! | `fm_trial_tries` | boots of the trial left (`0`, `1`) |
//!
//! Every change is one `grub-editenv set` call, which rewrites the 1 KiB
//! environment block in one write. The booted slot comes from the kernel
//! command line (`fleetmesh.slot=a`), which the snippet sets.

use super::env_tool::{parse_vars, run};
use super::{booted_from_cmdline, parse_slot, Backend, BootEnv, SlotError};
use fleetmesh_protocol::update::{BootInfo, BootState, Slot, Trial};
use std::path::PathBuf;
use std::process::Command;

/// The grubenv file and the kernel command line.
#[derive(Debug)]
pub struct GrubEnv {
    env: PathBuf,
    cmdline: PathBuf,
}

/// Slots on block devices (or files), boot selection in a grubenv file.
pub type GrubBackend = Backend<GrubEnv>;

impl GrubBackend {
    /// `env` is the grubenv file (usually /boot/grub/grubenv); `cmdline` the
    /// kernel command line (usually /proc/cmdline).
    pub fn new(slot_a: PathBuf, slot_b: PathBuf, env: PathBuf, cmdline: PathBuf) -> Self {
        Backend::with_env(slot_a, slot_b, GrubEnv { env, cmdline })
    }
}

impl GrubEnv {
    fn cmd(&self, verb: &str, args: &[String]) -> Command {
        let mut cmd = Command::new("grub-editenv");
        cmd.arg(&self.env).arg(verb).args(args);
        cmd
    }
}

impl BootEnv for GrubEnv {
    fn load(&self) -> Result<BootState, SlotError> {
        let vars = parse_vars(&run(self.cmd("list", &[]))?);
        let slot = |name: &str| vars.get(name).and_then(|v| parse_slot(v));
        let tries = vars
            .get("fm_trial_tries")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        Ok(BootState {
            default: slot("fm_default").unwrap_or(Slot::A),
            trial: slot("fm_trial").map(|slot| Trial {
                slot,
                tries_left: tries,
            }),
        })
    }

    /// One `grub-editenv set` call.
    fn store(&self, state: &BootState) -> Result<(), SlotError> {
        let trial = state.trial.map_or(String::new(), |t| t.slot.to_string());
        let tries = state.trial.map_or(0, |t| t.tries_left);
        let vars = [
            format!("fm_default={}", state.default),
            format!("fm_trial={trial}"),
            format!("fm_trial_tries={tries}"),
        ];
        if !self.env.exists() {
            run(self.cmd("create", &[]))?;
        }
        run(self.cmd("set", &vars)).map(drop)
    }

    fn booted(&mut self) -> Result<BootInfo, SlotError> {
        booted_from_cmdline(self, &self.cmdline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::{BootEnv, SlotBackend};

    /// What the grub.cfg snippet does at power-on, on the real grubenv file:
    /// pick the slot, count the trial down with save_env, pass the slot on
    /// the kernel command line.
    fn grub_boots(b: &GrubBackend) {
        let b = b.env();
        let mut state = b.load().expect("grub reads its env");
        let slot = state.boot();
        b.store(&state).expect("save_env");
        std::fs::write(
            &b.cmdline,
            format!("root=/dev/vda fleetmesh.slot={slot} quiet\n"),
        )
        .expect("cmdline");
    }

    #[test]
    fn trial_fallback_and_commit_through_real_grub_editenv() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| dir.path().join(n);
        let mut b = GrubBackend::new(p("a"), p("b"), p("grubenv"), p("cmdline"));
        b.commit(Slot::A).expect("initial env");
        grub_boots(&b);
        assert_eq!(
            b.boot().expect("boot"),
            BootInfo {
                booted: Slot::A,
                trial: None
            }
        );

        b.set_trial(Slot::B).expect("trial");
        let listed = std::fs::read_to_string(p("grubenv")).expect("grubenv");
        assert!(
            listed.contains("fm_trial=b") && listed.contains("fm_trial_tries=1"),
            "{listed}"
        );
        grub_boots(&b);
        let used = Some(Trial {
            slot: Slot::B,
            tries_left: 0,
        });
        assert_eq!(
            b.boot().expect("boot"),
            BootInfo {
                booted: Slot::B,
                trial: used
            }
        );
        grub_boots(&b); // not committed: falls back
        assert_eq!(
            b.boot().expect("boot"),
            BootInfo {
                booted: Slot::A,
                trial: used
            }
        );

        b.set_trial(Slot::B).expect("trial");
        grub_boots(&b);
        b.commit(Slot::B).expect("commit");
        grub_boots(&b);
        assert_eq!(
            b.boot().expect("boot"),
            BootInfo {
                booted: Slot::B,
                trial: None
            }
        );
        b.clear_trial().expect("clear is idempotent");
        assert_eq!(b.env().load().expect("load").default, Slot::B);
    }

    #[test]
    fn tool_failures_and_missing_cmdline_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| dir.path().join(n);
        let mut b = GrubBackend::new(p("a"), p("b"), p("no-such-dir/grubenv"), p("cmdline"));
        let err = b.set_trial(Slot::B).expect_err("no env dir");
        assert!(err.to_string().starts_with("grub-editenv: "), "{err}");
        std::fs::write(p("cmdline"), "root=/dev/vda quiet\n").expect("write");
        let err = b.boot().expect_err("no slot on cmdline");
        assert!(err.to_string().contains("no fleetmesh.slot=a|b"), "{err}");
    }
}

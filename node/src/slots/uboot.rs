//! The U-Boot backend: `fw_printenv` / `fw_setenv` with U-Boot's boot-count
//! semantics. While `upgrade_available=1`, U-Boot increments `bootcount` at
//! every boot and, once it exceeds `bootlimit`, runs `altbootcmd`, which
//! boots `fm_fallback` instead of `fm_slot`.
//!
//! | variable | meaning |
//! |---|---|
//! | `fm_slot` | `a` or `b`: the slot `bootcmd` boots |
//! | `fm_fallback` | the slot `altbootcmd` boots: the last committed one |
//! | `upgrade_available` | `1` while a trial is pending |
//! | `bootcount`, `bootlimit` | boots made / allowed on trial (`bootlimit=1`: boot once) |
//!
//! Every change is one `fw_setenv -s` script, so the switch is one write of
//! the environment (atomic with a redundant environment).

use super::env_tool::{parse_vars, run};
use super::{booted_from_cmdline, parse_slot, Backend, BootEnv, SlotError};
use fleetmesh_protocol::update::{BootInfo, BootState, Slot, Trial};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The libubootenv configuration and the kernel command line.
#[derive(Debug)]
pub struct UbootEnv {
    config: PathBuf,
    cmdline: PathBuf,
}

/// Slots on block devices (or files), boot selection in the U-Boot environment.
pub type UbootBackend = Backend<UbootEnv>;

impl UbootBackend {
    /// `config` is the libubootenv configuration (fw_env.config) naming the
    /// environment's device or file; `cmdline` the kernel command line.
    pub fn new(slot_a: PathBuf, slot_b: PathBuf, config: PathBuf, cmdline: PathBuf) -> Self {
        Backend::with_env(slot_a, slot_b, UbootEnv { config, cmdline })
    }
}

impl UbootEnv {
    /// The environment's variables.
    pub fn vars(&self) -> Result<std::collections::BTreeMap<String, String>, SlotError> {
        let mut cmd = Command::new("fw_printenv");
        cmd.arg("-c").arg(&self.config);
        Ok(parse_vars(&run(cmd)?))
    }

    /// Sets variables in one `fw_setenv -s` call (`name=` deletes).
    pub fn set_vars(&self, vars: &[(&str, String)]) -> Result<(), SlotError> {
        let script: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        let tool = || SlotError::Tool {
            tool: "fw_setenv".into(),
            reason: "cannot pass the script".into(),
        };
        let mut child = Command::new("fw_setenv")
            .arg("-c")
            .arg(&self.config)
            .args(["-s", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| SlotError::Tool {
                tool: "fw_setenv".into(),
                reason: e.to_string(),
            })?;
        child
            .stdin
            .take()
            .ok_or_else(tool)?
            .write_all(script.as_bytes())
            .map_err(|_| tool())?;
        let out = child.wait_with_output().map_err(|_| tool())?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let reason = format!(
                "{} ({})",
                stderr.lines().next().unwrap_or("failed").trim(),
                out.status
            );
            return Err(SlotError::Tool {
                tool: "fw_setenv".into(),
                reason,
            });
        }
        Ok(())
    }
}

impl BootEnv for UbootEnv {
    /// The boot state the variables describe.
    fn load(&self) -> Result<BootState, SlotError> {
        let vars = self.vars()?;
        let num = |name: &str| {
            vars.get(name)
                .and_then(|v| v.parse::<u8>().ok())
                .unwrap_or(0)
        };
        let slot = |name: &str| vars.get(name).and_then(|v| parse_slot(v));
        let current = slot("fm_slot").unwrap_or(Slot::A);
        if num("upgrade_available") == 1 {
            let tries_left = num("bootlimit").saturating_sub(num("bootcount"));
            let default = slot("fm_fallback").unwrap_or(current.other());
            return Ok(BootState {
                default,
                trial: Some(Trial {
                    slot: current,
                    tries_left,
                }),
            });
        }
        Ok(BootState {
            default: current,
            trial: None,
        })
    }

    /// Writes a whole boot state in one `fw_setenv -s` call.
    fn store(&self, state: &BootState) -> Result<(), SlotError> {
        let vars = match state.trial {
            Some(t) => [
                ("fm_slot", t.slot.to_string()),
                ("fm_fallback", state.default.to_string()),
                ("upgrade_available", "1".into()),
                ("bootlimit", "1".into()),
                ("bootcount", (1 - t.tries_left.min(1)).to_string()),
            ],
            None => [
                ("fm_slot", state.default.to_string()),
                ("fm_fallback", state.default.to_string()),
                ("upgrade_available", "0".into()),
                ("bootlimit", "1".into()),
                ("bootcount", "0".into()),
            ],
        };
        self.set_vars(&vars)
    }

    fn booted(&mut self) -> Result<BootInfo, SlotError> {
        booted_from_cmdline(self, &self.cmdline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::SlotBackend;
    use std::path::Path;

    /// U-Boot at power-on, on the real environment: count the boot while an
    /// upgrade is available, run altbootcmd past the limit.
    fn uboot_boots(b: &UbootBackend) {
        let b = b.env();
        let vars = b.vars().expect("env");
        let get = |k: &str| vars.get(k).cloned().unwrap_or_default();
        let mut slot = get("fm_slot");
        if get("upgrade_available") == "1" {
            let count = get("bootcount").parse::<u32>().unwrap_or(0) + 1;
            b.set_vars(&[("bootcount", count.to_string())])
                .expect("saveenv");
            if count > get("bootlimit").parse().unwrap_or(1) {
                slot = get("fm_fallback"); // altbootcmd
            }
        }
        std::fs::write(&b.cmdline, format!("console=ttyS0 fleetmesh.slot={slot}\n"))
            .expect("cmdline");
    }

    fn backend(dir: &Path) -> UbootBackend {
        let env = dir.join("uboot.env");
        std::fs::write(&env, vec![0u8; 0x4000]).expect("env file");
        std::fs::write(
            dir.join("fw_env.config"),
            format!("{} 0x0 0x4000\n", env.display()),
        )
        .expect("config");
        // A blank environment needs a default environment once, as at the factory.
        std::fs::write(dir.join("default.env"), "bootlimit=1\n").expect("default env");
        let status = Command::new("fw_setenv")
            .arg("-c")
            .arg(dir.join("fw_env.config"))
            .arg("-f")
            .arg(dir.join("default.env"))
            .args(["fm_slot", "a"])
            .status()
            .expect("fw_setenv");
        assert!(status.success());
        UbootBackend::new(
            dir.join("a"),
            dir.join("b"),
            dir.join("fw_env.config"),
            dir.join("cmdline"),
        )
    }

    #[test]
    fn trial_fallback_and_commit_through_real_fw_setenv() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = backend(dir.path());
        uboot_boots(&b);
        assert_eq!(
            b.boot().expect("boot"),
            BootInfo {
                booted: Slot::A,
                trial: None
            }
        );

        b.set_trial(Slot::B).expect("trial");
        let vars = b.env().vars().expect("vars");
        assert_eq!(vars.get("upgrade_available").map(String::as_str), Some("1"));
        assert_eq!(vars.get("fm_fallback").map(String::as_str), Some("a"));
        uboot_boots(&b);
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
        uboot_boots(&b); // bootcount 2 > bootlimit 1: altbootcmd
        assert_eq!(
            b.boot().expect("boot"),
            BootInfo {
                booted: Slot::A,
                trial: used
            }
        );

        b.set_trial(Slot::B).expect("trial");
        uboot_boots(&b);
        b.commit(Slot::B).expect("commit");
        uboot_boots(&b);
        assert_eq!(
            b.boot().expect("boot"),
            BootInfo {
                booted: Slot::B,
                trial: None
            }
        );
        assert_eq!(
            b.env()
                .vars()
                .expect("vars")
                .get("bootcount")
                .map(String::as_str),
            Some("0")
        );
    }

    #[test]
    fn a_bad_config_is_reported_by_the_tool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = UbootBackend::new(
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("missing.config"),
            dir.path().join("cmdline"),
        );
        let err = b.set_trial(Slot::B).expect_err("no config");
        assert!(err.to_string().starts_with("fw_printenv: "), "{err}");
    }
}

//! A/B slot backends: where the two slots are and how the bootloader is told
//! which to boot. The update state machine never knows which backend runs.
//!
//! - [`file::FileBackend`]: slots are files (or block devices) and the boot
//!   state is a JSON file written atomically; the default, and the testnet's.
//! - [`grub::GrubBackend`]: `grub-editenv` variables read by a grub.cfg
//!   snippet that counts trial boots down (docs/slots.md).
//! - [`uboot::UbootBackend`]: `fw_setenv` / `fw_printenv` with U-Boot's
//!   `upgrade_available` + `bootcount` + `bootlimit`.
//!
//! A real bootloader decides what boots; the file backend simulates that
//! decision with [`BootState::boot`] at process start, and the grub and
//! U-Boot tests simulate it on the real tools' environments.

mod env_tool;
pub mod file;
pub mod grub;
pub mod uboot;

use crate::fsutil::{Context, IoError};
use fleetmesh_protocol::update::{BootInfo, BootState, Slot, Trial};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why a slot operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// File I/O.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Refused: the slot (or a path that is the same file) is the one running.
    #[error("refusing to write slot {slot} ({}): it is the running slot", .path.display())]
    ActiveSlot {
        /// The slot asked for.
        slot: Slot,
        /// Its device or file.
        path: PathBuf,
    },
    /// The bootloader environment tool failed or said something unexpected.
    #[error("{tool}: {reason}")]
    Tool {
        /// `grub-editenv`, `fw_setenv`, …
        tool: String,
        /// What happened.
        reason: String,
    },
    /// The boot state does not parse or names no valid slot.
    #[error("boot state {}: {reason}", .path.display())]
    BadState {
        /// Where it was read.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// How the node tells the bootloader what to boot.
pub trait SlotBackend: Send {
    /// At process start: what booted, and the trial as the bootloader left it.
    fn boot(&mut self) -> Result<BootInfo, SlotError>;
    /// Boot `slot` once at the next boot, falling back to the default after.
    fn set_trial(&mut self, slot: Slot) -> Result<(), SlotError>;
    /// Make `slot` the default and clear any trial.
    fn commit(&mut self, slot: Slot) -> Result<(), SlotError>;
    /// Clear any trial; the next boot is the default.
    fn clear_trial(&mut self) -> Result<(), SlotError>;
    /// The file or block device holding `slot`.
    fn slot_path(&self, slot: Slot) -> &Path;
}

/// Where a backend keeps the bootloader's state, and how it learns what booted.
pub trait BootEnv: Send {
    /// The boot state as stored.
    fn load(&self) -> Result<BootState, SlotError>;
    /// Replaces the boot state in one write.
    fn store(&self, state: &BootState) -> Result<(), SlotError>;
    /// At process start: what booted, and the trial as the bootloader left it.
    fn booted(&mut self) -> Result<BootInfo, SlotError>;
}

/// Two slots and a boot environment: every backend is one of these.
#[derive(Debug)]
pub struct Backend<E> {
    slots: [PathBuf; 2],
    env: E,
}

impl<E> Backend<E> {
    /// Slot A and B at these paths, boot selection in `env`.
    pub fn with_env(slot_a: PathBuf, slot_b: PathBuf, env: E) -> Self {
        Backend {
            slots: [slot_a, slot_b],
            env,
        }
    }

    /// The boot environment.
    pub fn env(&self) -> &E {
        &self.env
    }
}

impl<E: BootEnv> Backend<E> {
    fn update(&self, change: impl FnOnce(&mut BootState)) -> Result<(), SlotError> {
        let mut state = self.env.load()?;
        change(&mut state);
        self.env.store(&state)
    }
}

impl<E: BootEnv> SlotBackend for Backend<E> {
    fn boot(&mut self) -> Result<BootInfo, SlotError> {
        self.env.booted()
    }

    fn set_trial(&mut self, slot: Slot) -> Result<(), SlotError> {
        self.update(|s| {
            s.trial = Some(Trial {
                slot,
                tries_left: 1,
            })
        })
    }

    fn commit(&mut self, slot: Slot) -> Result<(), SlotError> {
        self.env.store(&BootState {
            default: slot,
            trial: None,
        })
    }

    fn clear_trial(&mut self) -> Result<(), SlotError> {
        self.update(|s| s.trial = None)
    }

    fn slot_path(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.slots[0],
            Slot::B => &self.slots[1],
        }
    }
}

/// Opens `slot` for writing, refusing the running slot, also when the two
/// slot paths are the same file under different names.
pub fn open_for_write(
    backend: &dyn SlotBackend,
    booted: Slot,
    slot: Slot,
) -> Result<File, SlotError> {
    let path = backend.slot_path(slot);
    let refuse = || SlotError::ActiveSlot {
        slot,
        path: path.to_owned(),
    };
    if slot == booted {
        return Err(refuse());
    }
    let running = backend.slot_path(booted);
    if let (Ok(a), Ok(b)) = (std::fs::metadata(path), std::fs::metadata(running)) {
        if a.dev() == b.dev() && a.ino() == b.ino() {
            return Err(refuse());
        }
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .ctx("open slot for writing", path)
        .map_err(SlotError::from)
}

/// Parses `a` / `b`.
pub fn parse_slot(s: &str) -> Option<Slot> {
    match s.trim() {
        "a" | "A" => Some(Slot::A),
        "b" | "B" => Some(Slot::B),
        _ => None,
    }
}

/// What booted, for bootloaders that name the slot on the kernel command
/// line: the slot from `cmdline`, the trial as `env` holds it.
pub fn booted_from_cmdline(env: &impl BootEnv, cmdline: &Path) -> Result<BootInfo, SlotError> {
    let booted = slot_from_cmdline(cmdline)?;
    Ok(BootInfo {
        booted,
        trial: env.load()?.trial,
    })
}

/// Reads the booted slot from a kernel command line (`fleetmesh.slot=a`).
pub fn slot_from_cmdline(path: &Path) -> Result<Slot, SlotError> {
    let text = std::fs::read_to_string(path).ctx("read", path)?;
    text.split_whitespace()
        .find_map(|arg| arg.strip_prefix("fleetmesh.slot=").and_then(parse_slot))
        .ok_or_else(|| SlotError::BadState {
            path: path.to_owned(),
            reason: "no fleetmesh.slot=a|b on the kernel command line".into(),
        })
}

//! The file backend: two slot files (or block devices) and a boot-state file.
//!
//! The boot state is JSON (`{"default":"A","trial":{"slot":"B","tries_left":1}}`)
//! replaced atomically (temp, fsync, rename, fsync dir). A simulated reboot is
//! a process restart: [`FileBackend::boot`] applies the bootloader's decision
//! ([`BootState::boot`]) and persists it, as a bootloader decrementing its try
//! counter would.

use super::{Backend, BootEnv, SlotError};
use crate::fsutil::{self, Context};
use fleetmesh_protocol::update::{BootInfo, BootState, Slot};
use std::path::PathBuf;

/// The boot state as a file.
#[derive(Debug)]
pub struct FileEnv {
    state: PathBuf,
}

/// Slots as files, boot state as a file.
pub type FileBackend = Backend<FileEnv>;

impl FileBackend {
    /// Slot A and B at these paths; the boot state at `state` (slot A is the
    /// default while it does not exist).
    pub fn new(slot_a: PathBuf, slot_b: PathBuf, state: PathBuf) -> Self {
        Backend::with_env(slot_a, slot_b, FileEnv { state })
    }
}

impl BootEnv for FileEnv {
    fn load(&self) -> Result<BootState, SlotError> {
        match std::fs::read(&self.state) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BootState {
                default: Slot::A,
                trial: None,
            }),
            other => {
                let bytes = other.ctx("read", &self.state)?;
                serde_json::from_slice(&bytes).map_err(|e| SlotError::BadState {
                    path: self.state.clone(),
                    reason: e.to_string(),
                })
            }
        }
    }

    fn store(&self, state: &BootState) -> Result<(), SlotError> {
        let bytes = serde_json::to_vec(state).map_err(|e| SlotError::BadState {
            path: self.state.clone(),
            reason: e.to_string(),
        })?;
        Ok(fsutil::write_atomic(&self.state, &bytes, 0o644)?)
    }

    /// The simulated bootloader: decide, persist the counted-down trial.
    fn booted(&mut self) -> Result<BootInfo, SlotError> {
        let mut state = self.load()?;
        let booted = state.boot();
        self.store(&state)?;
        Ok(BootInfo {
            booted,
            trial: state.trial,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::{open_for_write, SlotBackend};
    use fleetmesh_protocol::update::Trial;

    fn backend(dir: &std::path::Path) -> FileBackend {
        FileBackend::new(
            dir.join("slot-a"),
            dir.join("slot-b"),
            dir.join("boot.json"),
        )
    }

    #[test]
    fn trial_boots_once_then_falls_back_and_commit_sticks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = backend(dir.path());
        assert_eq!(b.boot().expect("boot").booted, Slot::A);
        b.set_trial(Slot::B).expect("trial");
        let info = b.boot().expect("boot");
        assert_eq!(
            info,
            BootInfo {
                booted: Slot::B,
                trial: Some(Trial {
                    slot: Slot::B,
                    tries_left: 0
                })
            }
        );
        // Not committed: the next boot falls back, and says the trial was used.
        let info = b.boot().expect("boot");
        assert_eq!(
            info,
            BootInfo {
                booted: Slot::A,
                trial: Some(Trial {
                    slot: Slot::B,
                    tries_left: 0
                })
            }
        );
        b.set_trial(Slot::B).expect("trial");
        b.boot().expect("boot");
        b.commit(Slot::B).expect("commit");
        assert_eq!(
            b.boot().expect("boot"),
            BootInfo {
                booted: Slot::B,
                trial: None
            }
        );
        // The state survives a new backend (a new process).
        assert_eq!(backend(dir.path()).boot().expect("boot").booted, Slot::B);
    }

    #[test]
    fn the_running_slot_is_never_opened_for_writing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = backend(dir.path());
        std::fs::write(dir.path().join("slot-a"), b"running os").expect("write");
        let err = open_for_write(&b, Slot::A, Slot::A).expect_err("refused");
        assert!(err.to_string().contains("it is the running slot"), "{err}");
        open_for_write(&b, Slot::A, Slot::B).expect("inactive slot opens");
        // Misconfigured: slot B is a hard link to the running slot A.
        let twin = FileBackend::new(
            dir.path().join("slot-a"),
            dir.path().join("slot-a-link"),
            dir.path().join("s"),
        );
        std::fs::hard_link(dir.path().join("slot-a"), dir.path().join("slot-a-link"))
            .expect("link");
        assert!(matches!(
            open_for_write(&twin, Slot::A, Slot::B),
            Err(SlotError::ActiveSlot { .. })
        ));
        assert_eq!(
            std::fs::read(dir.path().join("slot-a")).expect("read"),
            b"running os"
        );
    }

    #[test]
    fn a_corrupt_boot_state_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("boot.json"), b"{not json").expect("write");
        let err = backend(dir.path()).boot().expect_err("corrupt");
        assert!(err.to_string().starts_with("boot state "), "{err}");
    }
}

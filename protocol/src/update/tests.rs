//! Table tests for the transitions, and a simulated device (bootloader,
//! two slots, a journal) on which crashes are injected at every point.

use super::*;
use proptest::prelude::*;

fn v(s: &str) -> semver::Version {
    semver::Version::parse(s).expect("version")
}

fn staged(version: &str) -> Event {
    Event::Staged {
        release: ReleaseId([7; 32]),
        version: v(version),
        image_hash: ImageHash([8; 32]),
        running: v("1.0.0"),
        downgrade_allowed: false,
    }
}

fn boot(booted: Slot, trial: Option<(Slot, u8)>) -> Event {
    Event::Booted(BootInfo {
        booted,
        trial: trial.map(|(slot, tries_left)| Trial { slot, tries_left }),
    })
}

fn effects(actions: &[Action]) -> Vec<Action> {
    actions
        .iter()
        .filter(|a| !matches!(a, Action::Journal(_)))
        .cloned()
        .collect()
}

fn target() -> Target {
    Target {
        release: ReleaseId([7; 32]),
        version: v("2.0.0"),
        image_hash: ImageHash([8; 32]),
        slot: Slot::B,
    }
}

#[test]
fn happy_path_journals_before_every_effect() {
    let mut m = Machine::new(State::Idle);
    assert!(m.handle(boot(Slot::A, None)).is_empty());
    let a = m.handle(staged("2.0.0"));
    assert_eq!(a, vec![Action::Journal(State::Staged(target()))]);
    assert_eq!(
        m.handle(Event::InstallAllowed(false)),
        vec![Action::Journal(State::WaitingForWindow(target()))]
    );
    assert!(
        m.handle(Event::InstallAllowed(false)).is_empty(),
        "no journal churn while waiting"
    );
    let a = m.handle(Event::InstallAllowed(true));
    assert_eq!(
        a,
        vec![
            Action::Journal(State::Installing {
                target: target(),
                attempt: 1
            }),
            Action::Install(target())
        ]
    );
    let a = m.handle(Event::InstallFinished(Ok(())));
    assert_eq!(
        a,
        vec![
            Action::Journal(State::Installed(target())),
            Action::SetTrial(Slot::B)
        ]
    );
    let a = m.handle(Event::TrialSet(Ok(())));
    assert_eq!(
        a,
        vec![
            Action::Journal(State::Rebooting {
                target: target(),
                attempt: 1
            }),
            Action::Reboot
        ]
    );
    // The process restarts: a new machine from the journal.
    let mut m = Machine::new(m.state().clone());
    let a = m.handle(boot(Slot::B, Some((Slot::B, 0))));
    assert_eq!(
        a,
        vec![
            Action::Journal(State::Trial(target())),
            Action::Journal(State::HealthCheck {
                target: target(),
                attempt: 1
            }),
            Action::RunHealthCheck
        ]
    );
    let a = m.handle(Event::HealthChecked(Ok(())));
    assert_eq!(
        a,
        vec![
            Action::Journal(State::Committed(target())),
            Action::Commit(Slot::B)
        ]
    );
}

#[test]
fn downgrades_need_policy_and_old_news_is_ignored() {
    let mut m = Machine::new(State::Idle);
    m.handle(boot(Slot::A, None));
    let a = m.handle(staged("1.0.0"));
    assert!(matches!(
        &a[..],
        [Action::Journal(State::Failed {
            reason: FailReason::Downgrade { .. },
            ..
        })]
    ));
    let mut m = Machine::new(State::Idle);
    m.handle(boot(Slot::A, None));
    let a = m.handle(Event::Staged {
        release: ReleaseId([1; 32]),
        version: v("0.9.0"),
        image_hash: ImageHash([1; 32]),
        running: v("1.0.0"),
        downgrade_allowed: true,
    });
    assert!(matches!(&a[..], [Action::Journal(State::Staged(_))]));
    // While an update runs, another staged release waits.
    let mut busy = Machine::new(State::Installing {
        target: target(),
        attempt: 1,
    });
    busy.handle(boot(Slot::A, None));
    assert!(busy
        .handle(staged("3.0.0"))
        .iter()
        .all(|a| !matches!(a, Action::Journal(State::Staged(_)))));
}

#[test]
fn events_that_do_not_fit_the_state_do_nothing() {
    for (state, booted) in [
        (State::Idle, Slot::A),
        (State::Committed(target()), Slot::B),
        (State::Staged(target()), Slot::A),
    ] {
        let mut m = Machine::new(state.clone());
        m.handle(boot(booted, None));
        for e in [
            Event::InstallFinished(Ok(())),
            Event::TrialSet(Ok(())),
            Event::HealthChecked(Ok(())),
        ] {
            assert!(m.handle(e).is_empty());
            assert_eq!(m.state(), &state);
        }
    }
}

#[test]
fn install_failures_retry_then_fail_and_storage_fails_at_once() {
    let mut m = Machine::new(State::Installing {
        target: target(),
        attempt: 1,
    });
    m.handle(boot(Slot::A, None)); // a restart mid-install retries
    assert_eq!(
        m.state(),
        &State::Installing {
            target: target(),
            attempt: 2
        }
    );
    m.handle(Event::InstallFinished(Err(FailReason::Write("EIO".into()))));
    assert_eq!(
        m.state(),
        &State::Installing {
            target: target(),
            attempt: 3
        }
    );
    let a = m.handle(Event::InstallFinished(Err(FailReason::Write("EIO".into()))));
    assert!(matches!(
        &a[..],
        [Action::Journal(State::Failed {
            reason: FailReason::Write(_),
            ..
        })]
    ));

    let mut m = Machine::new(State::Installing {
        target: target(),
        attempt: 1,
    });
    m.handle(boot(Slot::A, None));
    let a = m.handle(Event::InstallFinished(Err(
        FailReason::InsufficientStorage("slot 1 GiB".into()),
    )));
    assert!(matches!(
        &a[..],
        [Action::Journal(State::Failed {
            reason: FailReason::InsufficientStorage(_),
            ..
        })]
    ));
}

#[test]
fn fallback_boot_and_failed_health_check_roll_back() {
    let rebooting = State::Rebooting {
        target: target(),
        attempt: 1,
    };
    let mut m = Machine::new(rebooting.clone());
    let a = m.handle(boot(Slot::A, Some((Slot::B, 0))));
    assert!(matches!(
        &a[0],
        Action::Journal(State::RolledBack {
            reason: FailReason::BootFailed(_),
            ..
        })
    ));
    assert_eq!(effects(&a), vec![Action::ClearTrial]);

    // Booted the old slot with the trial still pending: the reboot never
    // happened; set the trial again rather than roll back.
    let mut m = Machine::new(rebooting);
    let a = m.handle(boot(Slot::A, Some((Slot::B, 1))));
    assert_eq!(
        a,
        vec![
            Action::Journal(State::Rebooting {
                target: target(),
                attempt: 2
            }),
            Action::SetTrial(Slot::B)
        ]
    );

    let mut m = Machine::new(State::HealthCheck {
        target: target(),
        attempt: 1,
    });
    m.handle(boot(Slot::B, Some((Slot::B, 0))));
    let a = m.handle(boot(Slot::B, None));
    assert!(matches!(&a[0], Action::Journal(State::RolledBack { .. })));
    let mut m = Machine::new(State::HealthCheck {
        target: target(),
        attempt: 1,
    });
    m.booted = Some(Slot::B);
    let a = m.handle(Event::HealthChecked(Err("service down".into())));
    assert!(matches!(
        &a[0],
        Action::Journal(State::RolledBack {
            reason: FailReason::HealthCheckFailed(_),
            ..
        })
    ));
    assert_eq!(effects(&a), vec![Action::ClearTrial, Action::Reboot]);
}

// ---- A simulated device -------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Content {
    /// A whole image: its version, whether it boots, whether it is healthy.
    Image {
        version: u8,
        boots: bool,
        healthy: bool,
    },
    /// A half-written slot.
    Garbage,
}

#[derive(Clone, Debug)]
struct Device {
    boot: BootState,
    slots: [Content; 2],
    journal: State,
    /// The new release's behaviour once written.
    new_image: Content,
}

fn idx(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

fn good(content: Content) -> bool {
    matches!(
        content,
        Content::Image {
            boots: true,
            healthy: true,
            ..
        }
    )
}

#[derive(Debug)]
struct Outcome {
    state: State,
    booted: Slot,
    device: Device,
    boots: usize,
}

/// Runs the device until the update settles, crashing (restarting the
/// process, which here is a reboot) just before the actions numbered in
/// `crashes`. Checks the safety invariants at every step.
fn run(mut dev: Device, crashes: &[usize]) -> Outcome {
    let old = Slot::A;
    let mut step = 0usize;
    let mut boots = 0usize;
    'boot: loop {
        boots += 1;
        assert!(boots < 40, "no progress: {dev:?}");
        let booted = dev.boot.boot();
        if !matches!(dev.slots[idx(booted)], Content::Image { boots: true, .. }) {
            continue 'boot; // it never comes up; the watchdog reboots
        }
        let mut m = Machine::new(dev.journal.clone());
        let mut queue: std::collections::VecDeque<Action> = m
            .handle(Event::Booted(BootInfo {
                booted,
                trial: dev.boot.trial,
            }))
            .into();
        // What the node's runtime does at every start: offer the downloaded
        // release while nothing has happened yet, and ask the policy.
        if m.state() == &State::Idle {
            queue.extend(m.handle(staged("2.0.0")));
        }
        if matches!(m.state(), State::Staged(_) | State::WaitingForWindow(_)) {
            queue.extend(m.handle(Event::InstallAllowed(true)));
        }
        while let Some(action) = queue.pop_front() {
            step += 1;
            if crashes.contains(&step) {
                if let Action::Install(t) = &action {
                    dev.slots[idx(t.slot)] = Content::Garbage; // killed mid-write
                }
                continue 'boot;
            }
            let reply = match action {
                Action::Journal(s) => {
                    dev.journal = s;
                    None
                }
                Action::Install(t) => {
                    assert_ne!(t.slot, booted, "install into the running slot");
                    assert_ne!(t.slot, old, "install into the old slot");
                    dev.slots[idx(t.slot)] = dev.new_image;
                    Some(Event::InstallFinished(Ok(())))
                }
                Action::SetTrial(slot) => {
                    assert_ne!(slot, booted, "trial of the running slot");
                    dev.boot.trial = Some(Trial {
                        slot,
                        tries_left: 1,
                    });
                    Some(Event::TrialSet(Ok(())))
                }
                Action::Reboot => continue 'boot,
                Action::RunHealthCheck => {
                    let healthy = good(dev.slots[idx(booted)]);
                    Some(Event::HealthChecked(if healthy {
                        Ok(())
                    } else {
                        Err("unhealthy".into())
                    }))
                }
                Action::Commit(slot) => {
                    assert!(good(dev.slots[idx(slot)]), "committing a bad slot");
                    dev.boot = BootState {
                        default: slot,
                        trial: None,
                    };
                    None
                }
                Action::ClearTrial => {
                    dev.boot.trial = None;
                    None
                }
            };
            assert!(
                good(dev.slots[idx(dev.boot.default)]),
                "default slot is not good: {dev:?}"
            );
            if let Some(event) = reply {
                queue.extend(m.handle(event));
            }
        }
        if m.state().at_rest() {
            return Outcome {
                state: m.state().clone(),
                booted,
                device: dev,
                boots,
            };
        }
        panic!("stopped in {:?} with nothing to do", m.state());
    }
}

fn device(new_image: Content) -> Device {
    Device {
        boot: BootState {
            default: Slot::A,
            trial: None,
        },
        slots: [
            Content::Image {
                version: 1,
                boots: true,
                healthy: true,
            },
            Content::Garbage,
        ],
        journal: State::Idle,
        new_image,
    }
}

const GOOD: Content = Content::Image {
    version: 2,
    boots: true,
    healthy: true,
};
const UNHEALTHY: Content = Content::Image {
    version: 2,
    boots: true,
    healthy: false,
};
const UNBOOTABLE: Content = Content::Image {
    version: 2,
    boots: false,
    healthy: false,
};

#[test]
fn without_crashes_good_commits_unhealthy_and_unbootable_roll_back() {
    let out = run(device(GOOD), &[]);
    assert!(matches!(out.state, State::Committed(_)), "{out:?}");
    assert_eq!((out.booted, out.device.boot.default), (Slot::B, Slot::B));

    let out = run(device(UNHEALTHY), &[]);
    assert!(
        matches!(
            out.state,
            State::RolledBack {
                reason: FailReason::HealthCheckFailed(_),
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!((out.booted, out.device.boot.default), (Slot::A, Slot::A));

    let out = run(device(UNBOOTABLE), &[]);
    assert!(
        matches!(
            out.state,
            State::RolledBack {
                reason: FailReason::BootFailed(_),
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(out.booted, Slot::A);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any crashes, anywhere: the update settles (bounded), the old slot is
    /// never written, the default slot always boots a good image, and the
    /// node ends on the new release only if it is good.
    #[test]
    fn any_crash_sequence_settles_safely(
        crashes in proptest::collection::vec(1usize..30, 0..6),
        image in prop_oneof![Just(GOOD), Just(UNHEALTHY), Just(UNBOOTABLE)],
    ) {
        let out = run(device(image), &crashes);
        prop_assert!(out.boots < 40);
        match &out.state {
            State::Committed(t) => {
                prop_assert_eq!(image, GOOD);
                prop_assert_eq!(out.booted, t.slot);
                prop_assert_eq!(out.device.boot.default, t.slot);
            }
            State::RolledBack { .. } | State::Failed { .. } => {
                prop_assert_eq!(out.booted, Slot::A);
                prop_assert_eq!(out.device.boot.default, Slot::A);
                prop_assert_eq!(out.device.slots[0], Content::Image { version: 1, boots: true, healthy: true });
            }
            other => prop_assert!(false, "ended in {:?}", other),
        }
        if crashes.is_empty() && image == GOOD {
            prop_assert!(matches!(out.state, State::Committed(_)));
        }
    }
}

#[test]
fn a_release_that_no_longer_verifies_fails_without_retries() {
    let mut m = Machine::new(State::Installing {
        target: target(),
        attempt: 1,
    });
    m.booted = Some(Slot::A);
    let a = m.handle(Event::InstallFinished(Err(FailReason::Signature(
        "manifest expired".into(),
    ))));
    assert!(
        matches!(
            &a[..],
            [Action::Journal(State::Failed {
                reason: FailReason::Signature(_),
                ..
            })]
        ),
        "{a:?}"
    );
}

/// A release waiting for its window (its rollout halted, say) gives way
/// to a newer one, the fix, before anything is installed; an older or the
/// same one does not replace it.
#[test]
fn a_waiting_release_gives_way_to_a_newer_one_not_an_older() {
    let mut m = Machine::new(State::Idle);
    m.handle(boot(Slot::A, None));
    m.handle(staged("2.0.0"));
    m.handle(Event::InstallAllowed(false));
    assert_eq!(m.state(), &State::WaitingForWindow(target()));
    let other = |version: &str, id: u8| Event::Staged {
        release: ReleaseId([id; 32]),
        version: v(version),
        image_hash: ImageHash([id; 32]),
        running: v("1.0.0"),
        downgrade_allowed: false,
    };
    assert!(m.handle(other("1.5.0", 3)).is_empty(), "older");
    assert!(m.handle(staged("2.0.0")).is_empty(), "the same");
    let fix = Target {
        release: ReleaseId([9; 32]),
        version: v("2.0.1"),
        image_hash: ImageHash([9; 32]),
        slot: Slot::B,
    };
    assert_eq!(
        m.handle(other("2.0.1", 9)),
        vec![Action::Journal(State::Staged(fix.clone()))]
    );
    let a = m.handle(Event::InstallAllowed(true));
    assert_eq!(
        m.state(),
        &State::Installing {
            target: fix,
            attempt: 1
        },
        "{a:?}"
    );
}

use super::*;
use crate::rollout::Wave;

fn labels(node: &str, site: &str) -> Labels {
    [("node", node), ("site", site), ("platform", "generic")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn v(s: &str) -> semver::Version {
    s.parse().expect("version")
}

fn at(rfc3339: &str) -> UnixTime {
    UnixTime(rfc3339.parse::<jiff::Timestamp>().expect("ts").as_second() as u64)
}

/// Nightly 01:00-03:00 Berlin for site ber1, 22:00-23:00 New York for
/// everyone else; a 2.0.0 rollout at 100%.
fn policy() -> PolicyDoc {
    PolicyDoc {
        version: 3,
        issued_at: at("2026-01-01T00:00:00Z"),
        expires_at: at("2027-01-01T00:00:00Z"),
        groups: vec![
            Group {
                name: "berlin".into(),
                selector: [("site".to_string(), "ber1".to_string())].into(),
            },
            Group {
                name: "lab-host".into(),
                selector: [("node".to_string(), "lab".to_string())].into(),
            },
        ],
        windows: vec![
            WindowDef {
                name: "berlin-nights".into(),
                groups: vec!["berlin".into()],
                tz: "Europe/Berlin".into(),
                cron: Some("0 1 * * *".into()),
                duration_secs: 7200,
                start: None,
                end: None,
            },
            WindowDef {
                name: "evenings".into(),
                groups: vec![],
                tz: "America/New_York".into(),
                cron: Some("0 22 * * *".into()),
                duration_secs: 3600,
                start: None,
                end: None,
            },
        ],
        bandwidth: vec![],
        rollouts: vec![Rollout {
            version: v("2.0.0"),
            state: RolloutState::Running,
            wave: 0,
            wave_opened_at: at("2026-01-01T00:00:00Z"),
            waves: vec![Wave {
                name: "all".into(),
                target: WaveTarget::Percent(100),
                soak_secs: 0,
                success_pct: 100,
                error_pct: 10,
            }],
        }],
        pins: vec![],
        rollback: vec![],
        revoked: vec![],
    }
}

#[test]
fn installs_only_inside_the_nodes_own_window() {
    let p = policy();
    p.validate().expect("valid");
    let ber = labels("n1", "ber1");
    let nyc = labels("n2", "nyc1");
    let d =
        |l: &Labels, t: &str| p.decide(&l["node"], l, &v("2.0.0"), Some(&v("1.0.0")), at(t), 600);
    // 01:30 CEST in Berlin: inside the Berlin window.
    assert_eq!(d(&ber, "2026-06-10T23:30:00Z"), Decision::Install);
    // The same instant is 19:30 in New York: outside the evening window.
    match d(&nyc, "2026-06-10T23:30:00Z") {
        Decision::Wait { until, .. } => assert_eq!(until, Some(at("2026-06-11T02:00:00Z"))),
        other => panic!("{other:?}"),
    }
    // Berlin does not use the evening window that is open now.
    assert!(matches!(
        d(&ber, "2026-06-11T02:30:00Z"),
        Decision::Wait { .. }
    ));
    // 02:55 Berlin: five minutes left, the install needs ten: next night.
    match d(&ber, "2026-06-11T00:55:00Z") {
        Decision::Wait { until, .. } => assert_eq!(until, Some(at("2026-06-11T23:00:00Z"))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn window_open_follows_the_nodes_own_windows() {
    let mut p = policy();
    let (ber, nyc) = (labels("n1", "ber1"), labels("n2", "nyc1"));
    let t = at("2026-06-10T23:30:00Z"); // 01:30 Berlin, 19:30 New York
    assert!(p.window_open(&ber, t));
    assert!(!p.window_open(&nyc, t));
    assert!(p.window_open(&nyc, at("2026-06-11T02:30:00Z")));
    p.windows.clear();
    assert!(p.window_open(&nyc, t), "no windows: always open");
}

#[test]
fn waves_pins_halts_rollback_and_expiry() {
    let mut p = policy();
    let nyc = labels("n2", "nyc1");
    let evening = at("2026-06-11T02:30:00Z");
    let d = |p: &PolicyDoc, ver: &str, running: &str| {
        p.decide("n2", &nyc, &v(ver), Some(&v(running)), evening, 60)
    };
    assert_eq!(d(&p, "2.0.0", "1.0.0"), Decision::Install);
    assert!(
        matches!(d(&p, "3.0.0", "1.0.0"), Decision::Wait { .. }),
        "no rollout"
    );
    p.rollouts[0].state = RolloutState::Halted {
        reason: "errors".into(),
    };
    assert!(matches!(d(&p, "2.0.0", "1.0.0"), Decision::Never(_)));
    p.rollouts[0].state = RolloutState::Running;
    p.groups.push(Group {
        name: "all".into(),
        selector: Labels::new(),
    });
    p.pins.push(Pin {
        group: "all".into(),
        version: v("1.5.0"),
    });
    assert!(matches!(d(&p, "2.0.0", "1.0.0"), Decision::Never(ref w) if w.contains("pinned")));
    assert_eq!(
        d(&p, "1.5.0", "1.0.0"),
        Decision::Install,
        "a pin needs no rollout"
    );
    assert!(matches!(d(&p, "1.5.0", "2.0.0"), Decision::Never(ref w) if w.contains("older")));
    p.rollback.push(Pin {
        group: "all".into(),
        version: v("1.5.0"),
    });
    assert_eq!(
        d(&p, "1.5.0", "2.0.0"),
        Decision::Install,
        "signed rollback permission"
    );
    p.expires_at = at("2026-06-01T00:00:00Z");
    assert!(matches!(d(&p, "1.5.0", "1.0.0"), Decision::Wait { .. }));
}

#[test]
fn validation_names_the_entry_and_rule() {
    type Breaker = Box<dyn Fn(&mut PolicyDoc)>;
    let cases: Vec<(Breaker, &str)> = vec![
        (
            Box::new(|p| p.windows[1].duration_secs = 0),
            "window 2 (evenings): duration must be 1 s-24 h",
        ),
        (
            Box::new(|p| p.windows[1].duration_secs = 90_000),
            "window 2 (evenings): duration must be 1 s-24 h",
        ),
        (
            Box::new(|p| p.windows[0].tz = "Mars/Olympus".into()),
            "window 1 (berlin-nights): unknown time zone",
        ),
        (
            Box::new(|p| p.windows[0].cron = Some("0 25 * * *".into())),
            "window 1 (berlin-nights): cron: hour: 25",
        ),
        (
            Box::new(|p| p.windows[0].groups = vec!["paris".into()]),
            "window 1 (berlin-nights): unknown group \"paris\"",
        ),
        (
            Box::new(|p| p.windows[0].cron = Some("0 1 30 feb *".into())),
            "never fires",
        ),
        (
            Box::new(|p| p.rollouts[0].waves[0].target = WaveTarget::Percent(0)),
            "wave 1 (all): percent must be 1-100",
        ),
        (
            Box::new(|p| p.groups[1].name = "berlin".into()),
            "group 2: \"berlin\" is defined twice",
        ),
        (
            Box::new(|p| p.expires_at = p.issued_at),
            "expires before it is issued",
        ),
    ];
    for (break_it, expect) in cases {
        let mut p = policy();
        break_it(&mut p);
        let err = p.validate().expect_err(expect).to_string();
        assert!(err.contains(expect), "{expect}: {err}");
    }
}

#[test]
fn signed_policies_verify_and_refuse_old_versions() {
    use fleetmesh_protocol::keys::{Policy, Release, Root, SecretKey};
    use fleetmesh_protocol::{RoleKeys, TrustChain, TrustDoc};
    let root = SecretKey::<Root>::from_seed([1; 32]);
    let key = SecretKey::<Policy>::from_seed([2; 32]);
    let doc = TrustDoc {
        version: 1,
        issued_at: UnixTime(0),
        expires_at: at("2030-01-01T00:00:00Z"),
        root: RoleKeys::single(root.public()),
        release: RoleKeys::single(SecretKey::<Release>::from_seed([3; 32]).public()),
        policy: RoleKeys::single(key.public()),
    };
    let chain = TrustChain {
        docs: vec![Signed::sign(&doc, &[&root]).expect("sign")],
    };
    let trust = TrustState::from_chain(RoleKeys::single(root.public()), &chain).expect("trust");
    let now = at("2026-06-01T00:00:00Z");
    let signed = Signed::sign(&policy(), &[&key]).expect("sign");
    assert_eq!(
        verify_policy(&signed, &trust, Some(2), now)
            .expect("valid")
            .version,
        3
    );
    assert!(verify_policy(&signed, &trust, Some(3), now)
        .expect_err("replay")
        .contains("not newer"));
    let forged =
        Signed::sign(&policy(), &[&SecretKey::<Policy>::from_seed([9; 32])]).expect("sign");
    assert!(verify_policy(&forged, &trust, None, now).is_err());
    assert!(
        verify_policy(&signed, &trust, None, at("2027-02-01T00:00:00Z")).is_err(),
        "expired"
    );
}

#[test]
fn bandwidth_schedules_by_group_and_time_of_day() {
    let mut p = policy();
    p.bandwidth = vec![
        BandwidthDef {
            groups: vec!["berlin".into()],
            tz: "Europe/Berlin".into(),
            cron: "0 8 * * mon-fri".into(),
            duration_secs: 10 * 3600,
            download_bps: 1_000_000,
            upload_bps: 200_000,
        },
        BandwidthDef {
            groups: vec![],
            tz: "UTC".into(),
            cron: "0 0 * * *".into(),
            duration_secs: 24 * 3600,
            download_bps: 5_000_000,
            upload_bps: 0,
        },
    ];
    p.validate().expect("valid");
    let ber = labels("n1", "ber1");
    let nyc = labels("n2", "nyc1");
    // Wednesday 10:00 in Berlin: office hours cap.
    let office = at("2026-06-10T08:00:00Z");
    assert_eq!(p.bandwidth_for(&ber, office), Some((1_000_000, 200_000)));
    // Berlin at night: its group has rules, none in force; the global rule is not its.
    assert_eq!(p.bandwidth_for(&ber, at("2026-06-10T22:00:00Z")), None);
    // Saturday: no office hours.
    assert_eq!(p.bandwidth_for(&ber, at("2026-06-13T08:00:00Z")), None);
    // Everyone else: the all-day global rule.
    assert_eq!(p.bandwidth_for(&nyc, office), Some((5_000_000, 0)));
}

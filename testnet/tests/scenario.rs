//! `fleetmesh-testnet run --scenario`: the checked-in fault scenario run as
//! real processes, and bad scenario files refused with one line.

use std::process::Command;

fn testnet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fleetmesh-testnet"))
}

/// Runs a checked-in scenario on 127.0.0.1; it must pass. Its report.
fn run_checked_in(file: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let scenario = format!("{}/scenarios/{file}", env!("CARGO_MANIFEST_DIR"));
    let out = testnet()
        .args(["run", "--scenario", &scenario, "--work"])
        .arg(dir.path().join("lab"))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("json")
}

#[test]
fn the_fault_scenario_holds_and_reports() {
    let report = run_checked_in("faults.toml");
    assert_eq!(
        report["faults"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    assert_eq!(report["honest_running"], 5, "{report}");
    assert_eq!(report["images_verified"], 5, "{report}");
    // The corrupt node's same-site peers must catch it (their download cap
    // keeps them fetching long enough to ask it).
    let by = report["corrupt_banned_by"][0][1].as_u64().expect("count");
    assert!(by >= 2, "{report}");
}

#[test]
fn a_release_that_fails_its_health_check_is_rolled_back_everywhere() {
    let report = run_checked_in("bad-release.toml");
    let releases = report["releases"].as_array().expect("releases");
    let field = |k: usize, f: &str| releases[k][f].as_u64().unwrap_or(u64::MAX);
    assert_eq!(releases.len(), 3, "{report}");
    assert_eq!(field(0, "committed"), 4, "{report}");
    // 2.0.0: nobody keeps it; those that tried rolled back; halted.
    assert_eq!(field(1, "committed"), 0, "{report}");
    assert!((1..=4).contains(&field(1, "rolled_back")), "{report}");
    assert_eq!(releases[1]["halted"], true, "{report}");
    assert_eq!(field(2, "committed"), 4, "{report}");
    assert!(releases.iter().all(|r| r["ok"] == true), "{report}");
}

#[test]
fn bad_scenarios_are_refused_with_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (text, want) in [
        ("name = \"x\"\nimage_size = \"1MiB\"\n", "site"),
        (
            "name = \"x\"\nimage_size = \"1MB\"\n[[site]]\nname = \"a\"\nnodes = 1\n",
            "image_size",
        ),
        (
            "name = \"x\"\nimage_size = \"1MiB\"\n[[site]]\nname = \"a\"\nnodes = 1\n\
             [[fault]]\nat_secs = 1\naction = \"kill\"\nnode = 5\n",
            "fault 1",
        ),
        (
            "name = \"x\"\nimage_size = \"1MiB\"\n[[site]]\nname = \"a\"\nnodes = 1\n\
             [[fault]]\nat_secs = 1\naction = \"explode\"\n",
            "explode",
        ),
        (
            "name = \"x\"\nimage_size = \"1MiB\"\n[[site]]\nname = \"a\"\nnodes = 1\n\
             [[release]]\nversion = \"2.0.0\"\n[[release]]\nversion = \"1.0.0\"\n",
            "release 2: version 1.0.0 must be above",
        ),
        (
            "name = \"x\"\nimage_size = \"1MiB\"\n[[site]]\nname = \"a\"\nnodes = 1\n\
             [[release]]\nversion = \"1.0.0\"\nfails_health = true\n",
            "release 1: fails_health needs install",
        ),
    ] {
        let path = dir.path().join("s.toml");
        std::fs::write(&path, text).expect("write");
        let out = testnet()
            .args(["run", "--scenario"])
            .arg(&path)
            .arg("--work")
            .arg(dir.path().join("lab"))
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(err.contains(want), "{text}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

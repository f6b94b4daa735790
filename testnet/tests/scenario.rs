//! `fleetmesh-testnet run --scenario`: the checked-in fault scenario run as
//! real processes, and bad scenario files refused with one line.

use std::process::Command;

fn testnet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fleetmesh-testnet"))
}

#[test]
fn the_fault_scenario_holds_and_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/faults.toml");
    let out = testnet()
        .args(["run", "--scenario", scenario, "--work"])
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
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("json");
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

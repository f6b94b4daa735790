//! The README's first command, small: the demo drives real seed processes
//! and must pass its own checks. Needs `fleetmesh-seed` built next to
//! `fleetmesh-testnet`, which `cargo test --workspace` does.

use std::process::Command;

#[test]
fn demo_runs_and_writes_a_passing_report() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_fleetmesh-testnet"))
        .args(["demo", "--size", "8MiB", "--work"])
        .arg(&dir)
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("report.json"))
            .expect("JSON");
    let checks = report["checks"].as_array().expect("checks");
    assert!(
        checks.len() >= 4 && checks.iter().all(|c| c["ok"] == true),
        "{report}"
    );
    assert_eq!(report["image_bytes"], 8 << 20);
    assert!(report["delta_ratio"].as_f64().expect("ratio") > 1.0);

    // A second run replaces the first; a foreign non-empty directory is refused.
    let again = Command::new(env!("CARGO_BIN_EXE_fleetmesh-testnet"))
        .args(["demo", "--size", "4MiB", "--work"])
        .arg(&dir)
        .output()
        .expect("run demo");
    assert!(again.status.success());
    // The first run was moved aside and removed once the second ended.
    assert!(!work.path().join("demo.old").exists());
    assert!(dir.join("report.json").is_file());
    let refused = Command::new(env!("CARGO_BIN_EXE_fleetmesh-testnet"))
        .args(["demo", "--work"])
        .arg(work.path())
        .output()
        .expect("run demo");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr)
        .contains("neither an empty directory nor an earlier demo"));
    // So is a foreign directory where the earlier demo would be moved aside.
    let aside = work.path().join("demo.old");
    std::fs::create_dir(&aside).expect("mkdir");
    std::fs::write(aside.join("mine"), b"keep").expect("write");
    let refused = Command::new(env!("CARGO_BIN_EXE_fleetmesh-testnet"))
        .args(["demo", "--work"])
        .arg(&dir)
        .output()
        .expect("run demo");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("demo.old is neither"));
    assert!(aside.join("mine").is_file() && dir.join("report.json").is_file());
}

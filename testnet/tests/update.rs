//! The A/B updater end to end, as real processes: a seed publishes v1 and
//! v2, a node (file slots, running v1 from slot A) installs v2, and is
//! killed with SIGKILL at random points during install and trial boot.
//! Needs `fleetmesh-seed` and `fleetmesh-node` built next to this test's
//! binary, which `cargo test --workspace` does.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin(name: &str) -> PathBuf {
    fleetmesh_testnet::lab::binary_next_to(env!("CARGO_BIN_EXE_fleetmesh-testnet"), name)
        .expect("workspace binary")
}

fn image(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    fleetmesh_testnet::image::write_image(seed, len as u64, &mut out).expect("image");
    out
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("ls") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).expect("copy");
        }
    }
}

struct Release {
    seed_dir: PathBuf,
    v1: Vec<u8>,
    v2: Vec<u8>,
}

/// A seed with v1.0.0 and v2.0.0 of a `len`-byte image.
fn publish(root: &Path, len: usize) -> Release {
    let seed_dir = root.join("seed");
    let seed = bin("fleetmesh-seed");
    let ok = |args: &[&str]| {
        let out = Command::new(&seed).args(args).output().expect("seed");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&["init", "--dir", seed_dir.to_str().expect("utf-8")]);
    let (v1, v2) = (image(1, len), image(2, len));
    for (img, version) in [(&v1, "1.0.0"), (&v2, "2.0.0")] {
        let path = root.join(format!("{version}.img"));
        fs::write(&path, img).expect("write image");
        ok(&[
            "publish",
            "--dir",
            seed_dir.to_str().expect("utf-8"),
            "--image",
            path.to_str().expect("utf-8"),
            "--version",
            version,
        ]);
    }
    Release { seed_dir, v1, v2 }
}

/// A node running v1 from slot A, with both releases in its store.
fn node(release: &Release, dir: &Path, health: &str) -> PathBuf {
    let _ = fs::remove_dir_all(dir);
    copy_dir(&release.seed_dir.join("store"), &dir.join("store"));
    for f in ["root.pub", "trust.chain"] {
        fs::copy(release.seed_dir.join(f), dir.join(f)).expect("provision");
    }
    fs::write(dir.join("slot-a"), &release.v1).expect("slot a");
    let config = format!(
        "platform = \"generic\"\n[slots]\nbackend = \"file\"\nslot_a = \"slot-a\"\nslot_b = \"slot-b\"\n[update]\n{health}\n"
    );
    fs::write(dir.join("node.toml"), config).expect("node.toml");
    dir.to_owned()
}

fn run_once(dir: &Path) -> i32 {
    let out = Command::new(bin("fleetmesh-node"))
        .args(["run", "--once", "--dir"])
        .arg(dir)
        .output()
        .expect("run node");
    let code = out.status.code().expect("exit code");
    assert!(
        code == 0 || code == 75,
        "node failed ({code}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    code
}

/// Boots until a boot ends idle (exit 0), at most `limit` times.
fn settle(dir: &Path, limit: usize) {
    for _ in 0..limit {
        if run_once(dir) == 0 {
            return;
        }
    }
    panic!("no rest after {limit} boots");
}

fn status(dir: &Path) -> serde_json::Value {
    let out = Command::new(bin("fleetmesh-node"))
        .args(["status", "--json", "--dir"])
        .arg(dir)
        .output()
        .expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The bootloader's default slot; A until the first boot writes the state.
fn default_slot(dir: &Path) -> String {
    let Ok(bytes) = fs::read(dir.join("boot-state.json")) else {
        return "a".into();
    };
    let state: serde_json::Value =
        serde_json::from_slice(&bytes).expect("boot state is whole JSON");
    state["default"].as_str().expect("default").to_lowercase()
}

/// Never bricked: slot A still holds v1, and the default slot holds a whole
/// good image.
fn assert_safe(dir: &Path, release: &Release) {
    let a = fs::read(dir.join("slot-a")).expect("slot a");
    assert!(a == release.v1, "the running slot A was modified");
    if default_slot(dir) == "b" {
        assert!(
            fs::read(dir.join("slot-b")).expect("slot b") == release.v2,
            "default slot B is not v2"
        );
    }
}

#[test]
fn good_release_commits_and_unhealthy_one_rolls_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let release = publish(tmp.path(), 2 << 20);

    let good = node(&release, &tmp.path().join("good"), "health = \"builtin\"");
    settle(&good, 6);
    let s = status(&good);
    assert_eq!(s["update"]["state"], "committed", "{s}");
    assert_eq!(s["active_slot"], "B");
    assert_eq!(s["booted_version"], "2.0.0");
    assert_safe(&good, &release);
    assert_eq!(default_slot(&good), "b");

    let bad = node(
        &release,
        &tmp.path().join("bad"),
        "health = \"command\"\nhealth_command = [\"false\"]",
    );
    settle(&bad, 6);
    let s = status(&bad);
    assert_eq!(s["update"]["state"], "rolled_back", "{s}");
    assert_eq!(s["active_slot"], "A");
    assert_eq!(s["booted_version"], "1.0.0");
    assert!(
        s["update"]["reason"]
            .as_str()
            .expect("reason")
            .starts_with("health check failed"),
        "{s}"
    );
    assert_eq!(default_slot(&bad), "a");
    assert_safe(&bad, &release);
    // It stays rolled back: the same release is not retried in a loop.
    assert_eq!(run_once(&bad), 0);
    assert_eq!(status(&bad)["update"]["state"], "rolled_back");
}

#[test]
fn sigkill_at_random_points_never_bricks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let release = publish(tmp.path(), 8 << 20);
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut kills, mut scenarios, mut outcomes) = (0, 0, std::collections::BTreeMap::new());
    let started = Instant::now();
    while kills < 60 && started.elapsed() < Duration::from_secs(240) {
        scenarios += 1;
        // A health check that takes a moment, so kills land in the trial too.
        let dir = node(
            &release,
            &tmp.path().join("crash"),
            "health = \"command\"\nhealth_command = [\"sleep\", \"0.2\"]",
        );
        for _ in 0..12 {
            let log = tmp.path().join("node.log");
            let mut child = Command::new(bin("fleetmesh-node"))
                .args(["run", "--once", "--dir"])
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).expect("log"))
                .spawn()
                .expect("spawn node");
            std::thread::sleep(Duration::from_millis(next() % 400));
            let done = child.try_wait().expect("wait");
            if done.is_none() {
                child.kill().expect("SIGKILL");
                kills += 1;
            }
            let status = child.wait().expect("reap");
            assert_safe(&dir, &release);
            if done.is_some_and(|s| s.code() == Some(0)) {
                break;
            }
            assert!(
                done.is_none() || status.code() == Some(75),
                "node failed: {status}: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        settle(&dir, 8);
        assert_safe(&dir, &release);
        let s = status(&dir);
        let state = s["update"]["state"].as_str().expect("state").to_owned();
        assert!(
            ["committed", "rolled_back", "failed"].contains(&state.as_str()),
            "{s}"
        );
        if state == "committed" {
            assert_eq!(
                (s["active_slot"].as_str(), default_slot(&dir).as_str()),
                (Some("B"), "b")
            );
        } else {
            assert_eq!(
                (s["active_slot"].as_str(), default_slot(&dir).as_str()),
                (Some("A"), "a")
            );
        }
        *outcomes.entry(state).or_insert(0) += 1;
    }
    eprintln!("crash injection: {kills} SIGKILLs over {scenarios} updates; outcomes {outcomes:?}");
    assert!(kills >= 50, "only {kills} kills landed");
}

fn node_cmd(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(bin("fleetmesh-node"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("fleetmesh-node")
}

/// Boots until the node waits in the health check for an external verdict,
/// gives it, and lets the update settle.
fn settle_with_verdict(dir: &Path, verdict: &[&str]) {
    assert_eq!(run_once(dir), 75, "install ends in a reboot");
    let mut trial = Command::new(bin("fleetmesh-node"))
        .args(["run", "--once", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(dir)["update"]["state"] != "health_check" {
        assert!(Instant::now() < deadline, "never reached the health check");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(node_cmd(verdict, dir).status.success());
    let code = trial.wait().expect("wait").code();
    assert!(code == Some(0) || code == Some(75), "{code:?}");
    settle(dir, 4);
}

#[test]
fn external_verdicts_policy_hook_and_platform_are_obeyed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let release = publish(tmp.path(), 1 << 20);
    let external = "health = \"external\"\nhealth_timeout_secs = 30";

    let good = node(&release, &tmp.path().join("good"), external);
    settle_with_verdict(&good, &["mark-good"]);
    assert_eq!(status(&good)["update"]["state"], "committed");

    let bad = node(&release, &tmp.path().join("bad"), external);
    settle_with_verdict(&bad, &["mark-bad", "--reason", "sensor offline"]);
    let s = status(&bad);
    assert_eq!(s["update"]["state"], "rolled_back", "{s}");
    assert!(
        s["update"]["reason"]
            .as_str()
            .expect("reason")
            .contains("sensor offline"),
        "{s}"
    );

    // Not allowed to install yet: it waits, until an operator forces it.
    let held = node(
        &release,
        &tmp.path().join("held"),
        "install_when_staged = false",
    );
    assert_eq!(run_once(&held), 0);
    assert_eq!(status(&held)["update"]["state"], "waiting_for_window");
    assert!(node_cmd(&["install", "--version", "2.0.0"], &held)
        .status
        .success());
    settle(&held, 6);
    assert_eq!(status(&held)["update"]["state"], "committed");

    // A node of another platform never stages these releases.
    let other = node(&release, &tmp.path().join("other"), "");
    let config = fs::read_to_string(other.join("node.toml")).expect("config");
    fs::write(
        other.join("node.toml"),
        config.replace("\"generic\"", "\"arm64-board\""),
    )
    .expect("config");
    assert_eq!(run_once(&other), 0);
    let s = status(&other);
    assert_eq!(s["update"]["state"], "idle", "{s}");
    assert_eq!(
        fs::metadata(other.join("slot-b")).ok().map(|m| m.len()),
        None,
        "slot B untouched"
    );
}

//! `fleetmesh-node` as an operator meets it: bad input gets one line naming
//! the problem and a non-zero exit. (The update flows, which need a seed,
//! are in testnet/tests/update.rs.)

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn node(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetmesh-node"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run fleetmesh-node")
}

fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "unexpected success");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    err
}

#[test]
fn bad_config_is_one_line_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("platform = \"generic\"\n[slots]\nbackend = \"floppy\"\nslot_a = \"a\"\nslot_b = \"b\"\n", "line 3"),
        ("platform = \"generic\"\n[slots]\nbackend = \"file\"\nslot_a = \"a\"\nslot_b = \"b\"\n[update]\nhealth = \"command\"\n", "update.health_command must be set"),
        ("platform = \"Generic Board\"\n[slots]\nbackend = \"file\"\nslot_a = \"a\"\nslot_b = \"b\"\n", "platform \"Generic Board\""),
        ("platform = \"generic\"\n[slot]\n", "unknown field `slot`"),
    ];
    for (text, expect) in cases {
        fs::write(dir.path().join("node.toml"), text).expect("write config");
        let err = one_line_error(&node(&["run", "--once"], dir.path()));
        assert!(
            err.contains("node.toml") && err.contains(expect),
            "{expect}: {err}"
        );
    }
    // An environment override is checked like the file, and named.
    let good =
        "platform = \"generic\"\n[slots]\nbackend = \"file\"\nslot_a = \"a\"\nslot_b = \"b\"\n";
    fs::write(dir.path().join("node.toml"), good).expect("write config");
    for (var, value, expect) in [
        (
            "FLEETMESH_MESH__MAX_PEERS",
            "0",
            "mesh.max_peers must be 1-10000",
        ),
        (
            "FLEETMESH_MESH__MAX_PEERS",
            "many",
            "FLEETMESH_MESH__MAX_PEERS=\"many\": invalid type",
        ),
        (
            "FLEETMESH_MESH__BOOTSTRAP",
            "[\"nowhere\"]",
            "mesh.bootstrap[0]",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_fleetmesh-node"))
            .args(["run", "--once", "--dir"])
            .arg(dir.path())
            .env(var, value)
            .output()
            .expect("run fleetmesh-node");
        let err = one_line_error(&out);
        assert!(err.contains(expect), "{var}={value}: {err}");
    }
}

#[test]
fn missing_provisioning_and_status_before_run_are_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("node.toml"),
        "platform = \"generic\"\n[slots]\nbackend = \"file\"\nslot_a = \"a\"\nslot_b = \"b\"\n",
    )
    .expect("write config");
    let err = one_line_error(&node(&["run", "--once"], dir.path()));
    assert!(err.contains("root.pub"), "{err}");
    let err = one_line_error(&node(&["status"], dir.path()));
    assert!(err.contains("has `fleetmesh-node run` started?"), "{err}");
    let out = node(&["install", "--version", "1.0"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line_error(&out).contains("not a semantic version"));
}

#[test]
fn verdicts_are_written_for_the_running_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(
        node(&["mark-bad", "--reason", "disk smart errors"], dir.path())
            .status
            .success()
    );
    let verdict = fs::read_to_string(dir.path().join("run/health.verdict")).expect("verdict");
    assert_eq!(verdict, "bad: disk smart errors\n");
    assert!(node(&["mark-good"], dir.path()).status.success());
    assert_eq!(
        fs::read_to_string(dir.path().join("run/health.verdict")).expect("verdict"),
        "good\n"
    );
}

const ROOT: &str = "c3c32ae4a9c9693853c67eaf0a426c41b5cfb102105a37c240ee8badf89eec52";

#[test]
fn init_writes_a_node_that_reads_back_and_refuses_bad_options() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("n1");
    let init = |dir: &Path, extra: &[&str]| {
        let mut args = vec!["init", "--root-key", ROOT];
        if !extra.contains(&"--site") {
            args.extend(["--site", "rack-1"]);
        }
        args.extend(extra);
        node(&args, dir)
    };
    let out = init(&dir, &["--label", "region=eu", "--no-mdns"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peer_id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(peer_id.starts_with("12D3KooW"), "{peer_id}");
    let config = fs::read_to_string(dir.join("node.toml")).expect("config");
    assert!(config.contains("site = \"rack-1\"") && config.contains("region = \"eu\""));
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dir.join("node.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A node directory without its key is not started.
    let nokey = tmp.path().join("nokey");
    fs::create_dir_all(&nokey).expect("mkdir");
    for f in ["node.toml", "root.pub"] {
        fs::copy(dir.join(f), nokey.join(f)).expect("copy");
    }
    let err = one_line_error(&node(&["run"], &nokey));
    assert!(err.contains("no node.key"), "{err}");
    // A second init would replace the node's identity: refused.
    let err = one_line_error(&init(&dir, &[]));
    assert!(err.contains("already holds a node"), "{err}");
    for (extra, expect) in [
        (
            vec!["--bootstrap", "/ip4/127.0.0.1/tcp/4001"],
            "must end with /p2p/",
        ),
        (vec!["--bootstrap", "not-an-address"], "is not a multiaddr"),
        (vec!["--label", "Region=EU"], "not a valid label"),
        (vec!["--site", "Site A"], "mesh.site"),
    ] {
        let fresh = tmp.path().join("fresh");
        let err = one_line_error(&init(&fresh, &extra));
        assert!(err.contains(expect), "{expect}: {err}");
        assert!(
            !fresh.join("node.toml").exists(),
            "nothing is written on error"
        );
    }
    let err = one_line_error(&node(
        &["init", "--root-key", "abcd", "--site", "a"],
        &tmp.path().join("x"),
    ));
    assert!(err.contains("--root-key"), "{err}");
    // A k-of-n root, as a seed made with --root-keys prints it.
    use fleetmesh_protocol::keys::{Root, SecretKey};
    let other = SecretKey::<Root>::from_seed([3; 32]).public();
    let k_of_n = format!("2:{ROOT},{other}");
    let multi = tmp.path().join("multi");
    let out = node(&["init", "--root-key", &k_of_n, "--site", "a"], &multi);
    assert!(out.status.success(), "{out:?}");
    let (root, _) = fleetmesh_node::daemon::load_trust(&multi).expect("trust");
    assert_eq!((root.keys.len(), root.threshold), (2, 2));
    let err = one_line_error(&node(
        &[
            "init",
            "--root-key",
            &format!("3:{ROOT},{other}"),
            "--site",
            "a",
        ],
        &tmp.path().join("y"),
    ));
    assert!(err.contains("threshold 3"), "{err}");
}

#[test]
fn json_log_lines_are_json_objects() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("n");
    let out = node(
        &["init", "--root-key", ROOT, "--site", "a", "--no-mdns"],
        &dir,
    );
    assert!(out.status.success(), "{out:?}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetmesh-node"))
        .args([
            "--log-format",
            "json",
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .arg("--dir")
        .arg(&dir)
        .env("FLEETMESH_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the node");
    let stderr = child.stderr.take().expect("stderr");
    let lines: Vec<String> = BufReader::new(stderr)
        .lines()
        .take(2)
        .map(|l| l.expect("read a log line"))
        .collect();
    child.kill().expect("stop the node");
    child.wait().expect("reap the node");
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

/// The units in dist/ pass `systemd-analyze verify` without a warning
/// (with ExecStart pointed at a binary that exists here, and the seed's
/// user, which only an installed system has, left out).
#[test]
fn the_systemd_units_verify_cleanly() {
    let exe = env!("CARGO_BIN_EXE_fleetmesh-node");
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["fleetmesh-node", "fleetmesh-seed"] {
        let unit = fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../dist")
                .join(format!("{name}.service")),
        )
        .expect("read the unit");
        let bin = format!("/usr/bin/{name}");
        assert!(unit.contains(&format!("ExecStart={bin} ")), "{unit}");
        let local = unit
            .replace(&bin, exe)
            .replace("User=fleetmesh\n", "")
            .replace("Group=fleetmesh\n", "");
        let path = dir.path().join(format!("{name}.service"));
        fs::write(&path, local).expect("write");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze (Debian: systemd)");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{name}: {err}"
        );
    }
}

//! Policy end to end, as real processes: the seed signs a policy and
//! gossips it; nodes download at once but install only inside their
//! maintenance window.

use fleetmesh_testnet::lab::{wait_until, Lab};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn bin(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_fleetmesh-testnet")).with_file_name(name);
    assert!(
        path.is_file(),
        "{} missing: run `cargo test --workspace`",
        path.display()
    );
    path
}

fn rfc3339(unix: u64) -> String {
    jiff::Timestamp::from_second(unix as i64)
        .expect("time")
        .to_string()
}

fn update_state(lab: &Lab, i: usize) -> Option<serde_json::Value> {
    let out = lab.node_cmd(i, &["status", "--json"]).ok()?;
    serde_json::from_str(&out).ok()
}

#[test]
fn nodes_stage_outside_their_window_and_install_when_it_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lab =
        Lab::new(dir.path(), &bin("fleetmesh-seed"), &bin("fleetmesh-node")).expect("lab");
    let now = fleetmesh_node::cli::unix_now().0;
    let opens = now + 40;
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[window]]\nname = \"soon\"\ntz = \"UTC\"\nstart = \"{}\"\nend = \"{}\"\n\n\
             [[rollout]]\nversion = \"1.0.0\"\n[[rollout.wave]]\nname = \"all\"\npercent = 100\n",
            rfc3339(opens),
            rfc3339(opens + 600)
        ),
    )
    .expect("policy");
    lab.seed_cmd(&["policy", "apply", policy.to_str().expect("utf-8")])
        .expect("apply");
    lab.start_seed().expect("seed");
    let nodes: Vec<usize> = (0..2)
        .map(|_| lab.add_node("a", "").expect("node"))
        .collect();
    for &i in &nodes {
        lab.start_node(i, &[]).expect("start");
    }
    lab.wait_connected(Duration::from_secs(60))
        .expect("connected");
    let image = dir.path().join("image");
    let mut bytes = Vec::new();
    fleetmesh_testnet::image::write_image(3, 2 << 20, &mut bytes).expect("image");
    std::fs::write(&image, &bytes).expect("write");
    lab.publish(&image, "1.0.0").expect("publish");
    lab.wait_complete(&nodes, "1.0.0", Duration::from_secs(60))
        .expect("downloaded");
    // Downloaded, staged, waiting: the window has not opened.
    for &i in &nodes {
        let status = wait_until(Duration::from_secs(20), || {
            update_state(&lab, i).filter(|s| s["update"]["state"] == "waiting_for_window")
        })
        .unwrap_or_else(|| panic!("node{i:02} is not waiting: {:?}", update_state(&lab, i)));
        assert_eq!(status["policy_version"], 1, "{status}");
        let reason = status["update"]["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("outside its maintenance windows"),
            "{status}"
        );
        assert_ne!(status["booted_version"], "1.0.0");
    }
    assert!(
        fleetmesh_node::cli::unix_now().0 < opens,
        "the test took too long to observe the closed window"
    );
    // The window opens: each node installs, reboots into B and commits.
    for &i in &nodes {
        let status = wait_until(Duration::from_secs(120), || {
            update_state(&lab, i).filter(|s| s["update"]["state"] == "committed")
        })
        .unwrap_or_else(|| panic!("node{i:02} did not commit: {:?}", update_state(&lab, i)));
        assert_eq!(status["booted_version"], "1.0.0", "{status}");
        assert_eq!(status["active_slot"], "B", "{status}");
        assert!(
            fleetmesh_node::cli::unix_now().0 >= opens,
            "installed before the window"
        );
    }
}

//! Policy end to end, as real processes: the seed signs a policy and
//! gossips it; nodes download at once but install only inside their
//! maintenance window.

use fleetmesh_testnet::lab::{wait_until, Lab};
use std::path::PathBuf;
use std::time::Duration;

fn bin(name: &str) -> PathBuf {
    fleetmesh_testnet::lab::binary_next_to(env!("CARGO_BIN_EXE_fleetmesh-testnet"), name)
        .expect("workspace binary")
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

fn policy_show(lab: &Lab) -> serde_json::Value {
    serde_json::from_str(&lab.seed_cmd(&["policy", "show", "--json"]).expect("show")).expect("json")
}

fn rollout_state(lab: &Lab, version: &str) -> serde_json::Value {
    let p = policy_show(lab);
    p["rollouts"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["version"] == version))
        .map(|r| r["state"].clone())
        .unwrap_or_default()
}

/// Every node's update state and policy version, for failure messages.
fn fleet_dump(lab: &Lab) -> String {
    (0..lab.nodes.len())
        .map(|i| match update_state(lab, i) {
            Some(s) => format!(
                "node{i:02} booted {} slot {} state {} target {} policy {} reason {}",
                s["booted_version"],
                s["active_slot"],
                s["update"]["state"],
                s["update"]["target_version"],
                s["policy_version"],
                s["update"]["reason"]
            ),
            None => format!("node{i:02}: no status"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn in_canary(node_id: &str, version: &str) -> bool {
    fleetmesh_policy::rollout::position(node_id, version) < 1000
}

#[test]
fn waves_advance_on_success_and_a_failing_release_halts_at_the_canary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lab =
        Lab::new(dir.path(), &bin("fleetmesh-seed"), &bin("fleetmesh-node")).expect("lab");
    let policy = dir.path().join("policy.toml");
    let waves = "[[rollout.wave]]\nname = \"canary\"\npercent = 10\nsuccess_pct = 100\nerror_pct = 1\n\
                 [[rollout.wave]]\nname = \"half\"\npercent = 50\nsuccess_pct = 100\nerror_pct = 1\n\
                 [[rollout.wave]]\nname = \"all\"\npercent = 100\nsuccess_pct = 100\nerror_pct = 1\n";
    std::fs::write(
        &policy,
        format!(
            "[[rollout]]\nversion = \"1.0.0\"\n{waves}\n[[rollout]]\nversion = \"2.0.0\"\n{waves}"
        ),
    )
    .expect("policy");
    lab.seed_cmd(&["policy", "apply", policy.to_str().expect("utf-8")])
        .expect("apply");
    lab.start_seed().expect("seed");
    // 2.0.0 fails its health check on every node. At least ten nodes, and
    // enough that both canaries (10% by hashed position) have a member.
    let health = "update.health = \"command\"\n\
                  update.health_command = [\"sh\", \"-c\", \"test \\\"$FLEETMESH_TARGET_VERSION\\\" != 2.0.0\"]\n\
                  update.health_timeout_secs = 20";
    while lab.nodes.len() < 10
        || !["1.0.0", "2.0.0"]
            .iter()
            .all(|v| lab.nodes.iter().any(|n| in_canary(&n.peer_id, v)))
    {
        assert!(lab.nodes.len() < 40, "no canary member in 40 nodes");
        lab.add_node("a", health).expect("node");
    }
    let all: Vec<usize> = (0..lab.nodes.len()).collect();
    for &i in &all {
        lab.start_node(i, &[]).expect("start");
    }
    lab.wait_connected(Duration::from_secs(90))
        .expect("connected");
    let publish = |lab: &Lab, seed: u64, version: &str| {
        let image = dir.path().join(format!("image-{version}"));
        let mut bytes = Vec::new();
        fleetmesh_testnet::image::write_image(seed, 1 << 20, &mut bytes).expect("image");
        std::fs::write(&image, &bytes).expect("write");
        lab.publish(&image, version).expect("publish");
    };

    // 1.0.0 is healthy: canary, half, all, complete.
    publish(&lab, 1, "1.0.0");
    let done = wait_until(Duration::from_secs(300), || {
        (rollout_state(&lab, "1.0.0") == "complete").then_some(())
    });
    assert!(
        done.is_some(),
        "1.0.0 rollout did not complete: {}\n{}\n{}",
        policy_show(&lab),
        lab.seed_cmd(&["status"]).unwrap_or_default(),
        fleet_dump(&lab)
    );
    let log = std::fs::read_to_string(lab.seed_dir.join("policy/log.jsonl")).expect("log");
    let half = log.find("opening wave half").expect("opened half");
    let full = log.find("opening wave all").expect("opened all");
    let complete = log.find("rollout 1.0.0: complete").expect("completed");
    assert!(half < full && full < complete, "{log}");
    for &i in &all {
        let s = update_state(&lab, i).expect("status");
        assert_eq!(s["booted_version"], "1.0.0", "node{i:02}: {s}");
    }

    // 2.0.0 fails: the canary rolls back and the rollout halts there.
    publish(&lab, 2, "2.0.0");
    let halted = wait_until(Duration::from_secs(300), || {
        rollout_state(&lab, "2.0.0").get("halted").map(|_| ())
    });
    assert!(
        halted.is_some(),
        "2.0.0 rollout did not halt: {}\n{}",
        policy_show(&lab),
        fleet_dump(&lab)
    );
    // Give any wrongly admitted node time to act before looking.
    std::thread::sleep(Duration::from_secs(15));
    let p = policy_show(&lab);
    let r = p["rollouts"]
        .as_array()
        .expect("rollouts")
        .iter()
        .find(|r| r["version"] == "2.0.0")
        .expect("2.0.0");
    assert_eq!(r["wave"], 0, "halted beyond the canary: {r}");
    let mut rolled_back = 0;
    for &i in &all {
        let s = update_state(&lab, i).expect("status");
        assert_eq!(
            s["booted_version"], "1.0.0",
            "node{i:02} does not run 1.0.0: {s}"
        );
        if in_canary(&lab.nodes[i].peer_id, "2.0.0") {
            // A canary node either tried and rolled back, or the halt came
            // before its turn.
            if s["update"]["state"] == "rolled_back" {
                rolled_back += 1;
            } else {
                assert_eq!(s["active_slot"], "B", "canary node{i:02}: {s}");
            }
        } else {
            assert_ne!(
                s["update"]["state"], "rolled_back",
                "node{i:02} outside the canary tried 2.0.0: {s}"
            );
            assert_eq!(
                s["active_slot"], "B",
                "node{i:02} outside the canary touched its slots: {s}"
            );
        }
    }
    assert!(rolled_back >= 1, "no canary node rolled back");
}

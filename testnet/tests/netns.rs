//! `fleetmesh-testnet run --netns`: the lab on real kernel links. As root
//! (CI), a site is partitioned and healed behind shaped WAN links, and an
//! interrupted run deletes everything it made. Without root, and as root
//! for an unprivileged user, `--netns` is refused with one line.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn testnet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fleetmesh-testnet"))
}

fn scenario(name: &str) -> String {
    format!("{}/scenarios/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Namespaces whose names a testnet process `pid` would have made.
fn namespaces_of(pid: u32) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("fmlab{pid}-")))
        .map(String::from)
        .collect()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn netns_is_refused_without_root_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("lab");
    let mut cmd = if is_root() {
        // As an unprivileged user: the check, not the kernel, must refuse.
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_fleetmesh-testnet"));
        c
    } else {
        testnet()
    };
    let out = cmd
        .args(["run", "--netns", "--scenario"])
        .arg(scenario("netns-partition.toml"))
        .arg("--work")
        .arg(&work)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(err.contains("--netns needs root"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!work.exists(), "nothing is written before the check");
}

#[test]
fn a_partitioned_site_heals_and_every_node_ends_with_the_image() {
    if !is_root() {
        eprintln!("skipped: --netns needs root (CI runs this as root)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let child = testnet()
        .args(["run", "--netns", "--scenario"])
        .arg(scenario("netns-partition.toml"))
        .arg("--work")
        .arg(dir.path().join("lab"))
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", text(&out));
    assert!(namespaces_of(pid).is_empty(), "namespaces left behind");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("json");
    assert_eq!(r["mode"], "netns", "{r}");
    assert_eq!(r["images_verified"], 4, "{r}");
    assert_eq!(r["faults"].as_array().map(Vec::len), Some(2), "{r}");
    // The links' counters saw the release enter each site about once
    // (headers and gossip on top), and nothing while site b was cut off.
    let links = &r["links"];
    for site in links["site_wan"].as_array().expect("sites") {
        let ratio = site["in_ratio"].as_f64().expect("ratio");
        assert!((1.0..1.6).contains(&ratio), "{site}");
    }
    let series = links["series"].as_array().expect("series");
    let cut: Vec<f64> = series
        .iter()
        .filter(|x| (1.5..5.0).contains(&x["t"].as_f64().unwrap_or(0.0)))
        .map(|x| x["site_in_mbit"][1].as_f64().unwrap_or(f64::MAX))
        .collect();
    assert!(!cut.is_empty(), "{links}");
    assert!(
        cut.iter().all(|&m| m < 0.5),
        "site b got data while cut: {cut:?}"
    );
    let t_min = r["t_min_secs"].as_f64().expect("t_min");
    let took = r["completion_secs"].as_f64().expect("completion");
    assert!(
        t_min > 0.0 && took > 5.0,
        "b cannot finish before the heal: {r}"
    );
    // The counters' window, on the wall clock, spans the publish and the
    // run and ended before the report was read.
    let window: Vec<f64> = links["window_unix_secs"]
        .as_array()
        .expect("window")
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        window.len() == 2 && window[1] - window[0] >= took && window[1] - window[0] < took + 60.0,
        "window {window:?} for a {took} s run"
    );
    assert!(window[1] <= now, "window {window:?} ends after {now}");
}

#[test]
fn an_interrupted_netns_run_deletes_what_it_made() {
    if !is_root() {
        eprintln!("skipped: --netns needs root (CI runs this as root)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let s = dir.path().join("slow.toml");
    // Slow enough that the run is still going when it is interrupted.
    std::fs::write(
        &s,
        "name = \"slow\"\nimage_size = \"64MiB\"\nseed_mbit = 2\n\
         [[site]]\nname = \"a\"\nnodes = 2\nwan_mbit = 2\n",
    )
    .expect("write");
    let child = testnet()
        .args(["run", "--netns", "--scenario"])
        .arg(&s)
        .arg("--work")
        .arg(dir.path().join("lab"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let pid = child.id();
    let start = Instant::now();
    while namespaces_of(pid).len() < 5 || !lab_running(&dir.path().join("lab")) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "lab never came up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("interrupted"), "{}", text(&out));
    assert_eq!(namespaces_of(pid), Vec::<String>::new());
}

/// True once the lab's nodes have written a status (they run).
fn lab_running(lab: &Path) -> bool {
    lab.join("node01/run/mesh.json").exists()
}

//! The mesh end to end: a real seed and real nodes on 127.0.0.1 (QUIC and
//! TCP), fault injection by SIGKILL, a node serving corrupt chunks, a node
//! gossiping forged announcements, and the seed going away. Needs
//! `fleetmesh-seed` and `fleetmesh-node` built next to this test's binary,
//! which `cargo test --workspace` does.

use fleetmesh_node::keyfile;
use fleetmesh_node::ChunkFiles;
use fleetmesh_protocol::keys::{Release, SecretKey};
use fleetmesh_protocol::manifest::Manifest;
use fleetmesh_protocol::mesh::{Announcement, ManifestParts};
use fleetmesh_protocol::{codec, ChunkId, ImageHash, ReleaseId, Signed, UnixTime};
use fleetmesh_testnet::lab::{free_port, http_get, wait_until, Lab};
use fleetmesh_testnet::meshbench::{self, node_image_hash, BenchConfig};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(180);

fn bin(name: &str) -> PathBuf {
    fleetmesh_testnet::lab::binary_next_to(env!("CARGO_BIN_EXE_fleetmesh-testnet"), name)
        .expect("workspace binary")
}

/// A lab with a published `size`-byte v1.0.0 and a running seed.
struct Fixture {
    lab: Lab,
    /// The image's hash.
    hash: ImageHash,
    /// The release's stored (sent) bytes.
    wire: u64,
    /// The release id, hex.
    id: String,
    /// The seed's local API.
    http: std::net::SocketAddr,
}

fn lab_with_release(dir: &Path, size: u64) -> Fixture {
    let mut lab = Lab::new(dir, &bin("fleetmesh-seed"), &bin("fleetmesh-node")).expect("lab");
    let (bytes, summary) = publish_image(&lab, dir, 1, size, "1.0.0");
    let http = local_addr();
    lab.start_seed_with(&["--http", &http.to_string()])
        .expect("seed");
    Fixture {
        lab,
        hash: blake3::hash(&bytes).into(),
        wire: summary["stored_bytes"].as_u64().expect("stored_bytes"),
        id: summary["release_id"]
            .as_str()
            .expect("release_id")
            .to_owned(),
        http,
    }
}

/// Writes generated image `seed` of `size` bytes under `dir` and publishes
/// it as `version`; returns the image and the publish summary.
fn publish_image(
    lab: &Lab,
    dir: &Path,
    seed: u64,
    size: u64,
    version: &str,
) -> (Vec<u8>, serde_json::Value) {
    let image = dir.join(format!("image-{version}"));
    let mut bytes = Vec::new();
    fleetmesh_testnet::image::write_image(seed, size, &mut bytes).expect("image");
    std::fs::write(&image, &bytes).expect("write image");
    let summary = lab.publish(&image, version).expect("publish");
    (bytes, summary)
}

/// Adds a node in site `a`, starts it and waits until it holds v1.
fn node_with_v1(lab: &mut Lab) -> usize {
    let n = lab.add_node("a", "").expect("node");
    lab.start_node(n, &[]).expect("start");
    lab.wait_complete(&[n], "1.0.0", TIMEOUT).expect("v1");
    n
}

/// An address on 127.0.0.1 for a local API.
fn local_addr() -> std::net::SocketAddr {
    (std::net::Ipv4Addr::LOCALHOST, free_port().expect("port")).into()
}

fn manifest_chunks(lab: &Lab) -> BTreeSet<ChunkId> {
    let dir = lab.seed_dir.join("releases");
    let entry = std::fs::read_dir(&dir)
        .expect("releases")
        .flatten()
        .next()
        .expect("a manifest");
    let signed: Signed<Manifest> =
        codec::decode(&std::fs::read(entry.path()).expect("read")).expect("decode");
    let m: Manifest = codec::decode(signed.body_bytes()).expect("body");
    m.chunks.iter().map(|c| c.id).collect()
}

/// Chunk ids present as files in a node's store.
fn chunk_files(node_dir: &Path) -> Vec<ChunkId> {
    let mut out = Vec::new();
    let Ok(shards) = std::fs::read_dir(node_dir.join("store/chunks")) else {
        return out;
    };
    for shard in shards.flatten() {
        for f in std::fs::read_dir(shard.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(id) = f.file_name().to_string_lossy().parse::<ChunkId>() {
                out.push(id);
            }
        }
    }
    out
}

#[test]
fn six_nodes_in_two_sites_get_the_image_and_spare_the_seed_and_the_wan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = BenchConfig {
        work: dir.path().join("lab"),
        nodes: 6,
        sites: 2,
        size: 32 << 20,
        timeout: TIMEOUT,
    };
    let r = meshbench::run(&cfg, &bin("fleetmesh-seed"), &bin("fleetmesh-node")).expect("bench");
    eprintln!("{}", serde_json::to_string(&r).expect("json"));
    assert_eq!(r.images_verified, 6);
    assert!(
        r.seed_egress_ratio <= 1.5,
        "seed sent {:.2}x the image",
        r.seed_egress_ratio
    );
    let crossed: u64 = r.sites.iter().map(|s| s.wan_in_bytes).sum();
    let limit = 1.5 * r.wire_bytes as f64 * cfg.sites as f64;
    assert!(
        (crossed as f64) <= limit,
        "{crossed} bytes crossed between sites, limit {limit}"
    );
}

/// Three sites share the manifest's parts: each takes its share from the
/// seed and the rest from the others, so the seed sends the manifest
/// about once, not once a site. A site that comes later takes it over its
/// WAN about once too, from the nodes that hold it: one of its nodes
/// fetches, the others take it from that one.
#[test]
fn three_sites_share_the_manifest_and_the_seed_sends_it_about_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lab =
        Lab::new(dir.path(), &bin("fleetmesh-seed"), &bin("fleetmesh-node")).expect("lab");
    let http = local_addr();
    lab.start_seed_with(&["--http", &http.to_string()])
        .expect("seed");
    let mut apis = vec![http];
    let nodes: Vec<usize> = ["a", "a", "b", "b", "c", "c"]
        .iter()
        .map(|site| lab.add_node(site, "").expect("node"))
        .collect();
    for &i in &nodes {
        let api = local_addr();
        apis.push(api);
        lab.start_node(i, &["--api", &api.to_string()])
            .expect("start");
    }
    lab.wait_connected(TIMEOUT).expect("connected");
    // 64 MiB in 8 KiB chunks: a manifest of four parts.
    publish_image(&lab, dir.path(), 5, 64 << 20, "1.0.0");
    lab.wait_complete(&nodes, "1.0.0", TIMEOUT)
        .expect("complete");
    let manifest = std::fs::read_dir(lab.seed_dir.join("releases"))
        .expect("releases")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".manifest"))
        .and_then(|e| e.metadata().ok())
        .expect("a manifest")
        .len() as f64;
    let parts = fleetmesh_protocol::mesh::ManifestParts::of(&vec![0; manifest as usize]);
    assert!(
        parts.ids.len() >= 3,
        "{manifest} bytes, {} parts",
        parts.ids.len()
    );
    // Manifest bytes sent by the seed, and by the nodes to other sites.
    let sent = |apis: &[std::net::SocketAddr]| -> (f64, f64) {
        let mut out = (0.0, 0.0);
        for (n, api) in apis.iter().enumerate() {
            let (code, metrics) = http_get(*api, "/metrics").expect("GET /metrics");
            assert_eq!(code, 200, "{metrics}");
            let prefix = "fleetmesh_manifest_bytes_sent_total";
            match n {
                0 => out.0 += metric_sum(&metrics, prefix, ""),
                _ => out.1 += metric_sum(&metrics, prefix, "cross_site"),
            }
        }
        out
    };
    let (seed, between) = sent(&apis);
    eprintln!("the seed sent {seed} manifest bytes, the sites {between} to each other, of a {manifest}-byte manifest");
    assert!(
        seed >= manifest && seed <= 1.5 * manifest,
        "the seed sent {seed} manifest bytes of a {manifest}-byte manifest to 3 sites"
    );

    let late: Vec<usize> = (0..3)
        .map(|_| lab.add_node("d", "").expect("node"))
        .collect();
    for &i in &late {
        lab.start_node(i, &[]).expect("start");
    }
    lab.wait_complete(&late, "1.0.0", TIMEOUT)
        .expect("late site complete");
    let (seed_after, between_after) = sent(&apis);
    let into_d = seed_after - seed + between_after - between;
    eprintln!("site d took {into_d} manifest bytes from outside");
    assert!(
        into_d >= manifest && into_d <= 1.5 * manifest,
        "site d's 3 nodes took {into_d} manifest bytes from outside, of a {manifest}-byte manifest"
    );
}

#[test]
fn a_node_killed_at_half_resumes_without_downloading_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Fixture {
        mut lab,
        hash,
        wire,
        id,
        ..
    } = lab_with_release(dir.path(), 16 << 20);
    // A capped download, so that "half way" lasts long enough to hit.
    let n = lab
        .add_node("a", "mesh.download_bytes_per_sec = 2000000")
        .expect("node");
    lab.start_node(n, &[]).expect("start");
    let before = wait_until(TIMEOUT, || {
        let s = lab.node_status(n)?;
        let r = s.releases.first()?;
        (r.chunks_have * 2 >= r.chunks_total).then_some(r.chunks_have)
    })
    .expect("reached half");
    lab.kill_node(n);
    let on_disk = chunk_files(&lab.nodes[n].dir).len() as u64;
    assert!(
        on_disk >= before,
        "{on_disk} chunk files, status said {before}"
    );
    lab.start_node(n, &[]).expect("restart");
    lab.wait_complete(&[n], "1.0.0", TIMEOUT)
        .expect("completes");
    let log = std::fs::read_to_string(dir.path().join(format!("node{n:02}.log"))).expect("log");
    let resumed_with: u64 = log
        .lines()
        .rev()
        .filter(|l| l.contains("release loaded"))
        .filter_map(|l| {
            l.split("have=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .next()
        .expect("a release loaded line");
    assert!(
        resumed_with >= before,
        "resumed with {resumed_with} chunks, had {before}"
    );
    let down = lab.node_status(n).expect("status").releases[0].bytes_down;
    assert!(
        (down as f64) < 1.15 * wire as f64,
        "downloaded {down} bytes in all for a {wire}-byte release"
    );
    assert_eq!(
        node_image_hash(&lab.nodes[n].dir, &id).expect("image"),
        hash
    );
}

#[test]
fn a_peer_serving_corrupt_chunks_is_banned_and_nothing_corrupt_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Fixture {
        mut lab,
        hash,
        id,
        http,
        ..
    } = lab_with_release(dir.path(), 8 << 20);
    // The bad node fetches honestly, then serves every chunk corrupted. It
    // is in the honest nodes' site, so they ask it first.
    let bad = lab.add_node("a", "").expect("node");
    lab.start_node(bad, &["--chaos-corrupt-uploads"])
        .expect("start");
    lab.wait_complete(&[bad], "1.0.0", TIMEOUT)
        .expect("bad node completes");
    // A download cap (8 MiB at 1 MiB/s) keeps every honest node fetching
    // long enough to find the bad node: uncapped on loopback, one could
    // finish from the seed and its honest peers before it learnt of it.
    let honest: Vec<usize> = (0..3)
        .map(|_| {
            lab.add_node("a", "mesh.download_bytes_per_sec = 1048576")
                .expect("node")
        })
        .collect();
    // The first honest node serves its local API.
    let api = local_addr();
    let api_arg = api.to_string();
    for &i in &honest {
        let extra: &[&str] = if i == honest[0] {
            &["--api", &api_arg]
        } else {
            &[]
        };
        lab.start_node(i, extra).expect("start");
    }
    lab.wait_complete(&honest, "1.0.0", TIMEOUT)
        .expect("honest nodes complete");
    check_api(&lab, honest[0], api);
    check_seed_api(&lab, http);
    let bad_id = lab.nodes[bad].peer_id.clone();
    for &i in &honest {
        let status = lab.node_status(i).expect("status");
        assert!(
            status.banned.contains(&bad_id),
            "node{i:02} did not ban the bad node: {:?}",
            status.banned
        );
        let node_dir = &lab.nodes[i].dir;
        let files = ChunkFiles::open(&node_dir.join("store")).expect("store");
        for id in chunk_files(node_dir) {
            files
                .read_chunk(&id)
                .unwrap_or_else(|e| panic!("node{i:02} stored a bad chunk: {e}"));
        }
        assert_eq!(node_image_hash(node_dir, &id).expect("image"), hash);
    }
}

/// The node's `/status` is its status; its `/metrics` count the chunks it
/// received (and match the status), the corrupt one it rejected, and
/// transport bytes at least as many as the chunk bytes.
fn check_api(lab: &Lab, i: usize, api: std::net::SocketAddr) {
    let (code, body) = http_get(api, "/status").expect("GET /status");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(status["node_id"], lab.nodes[i].peer_id.as_str());
    let release = &status["releases"][0];
    let (code, metrics) = http_get(api, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{metrics}");
    let sum = |prefix: &str, filter: &str| metric_sum(&metrics, prefix, filter);
    // The release's counter stops at completion; the metric also counts
    // late responses (endgame duplicates) that arrive after it.
    let chunk_bytes = sum("fleetmesh_chunk_bytes_received_total", "");
    let bytes_down = release["bytes_down"].as_f64().expect("bytes_down");
    assert!(
        chunk_bytes >= bytes_down && bytes_down > 0.0,
        "{chunk_bytes} counted, {bytes_down} in the status: {metrics}"
    );
    assert_eq!(
        sum("fleetmesh_chunk_bytes_received_total", "same_site")
            + sum("fleetmesh_chunk_bytes_received_total", "seed"),
        chunk_bytes,
        "from its own site and the seed only: {metrics}"
    );
    assert!(
        sum("fleetmesh_chunks_rejected_total", "") >= 1.0,
        "{metrics}"
    );
    assert!(
        sum("fleetmesh_chunks_verified_total", "") >= release["chunks_total"].as_f64().expect("n"),
        "{metrics}"
    );
    assert_eq!(sum("fleetmesh_update_state", "state="), 1.0, "{metrics}");
    let transport_in = sum("fleetmesh_libp2p_bandwidth_bytes_total", "Inbound");
    assert!(transport_in >= chunk_bytes, "{metrics}");
    let (code, _) = http_get(api, "/nothing").expect("GET /nothing");
    assert_eq!(code, 404);
}

/// The sum of the samples of metric lines that start with `prefix` and
/// contain `filter`.
fn metric_sum(metrics: &str, prefix: &str, filter: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The seed's `/status` is `status --json` (with the fleet); its
/// `/metrics` count the chunk bytes it sent as its status does.
fn check_seed_api(lab: &Lab, http: std::net::SocketAddr) {
    let (code, body) = http_get(http, "/status").expect("GET /status");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    assert!(status["fleet"].is_object(), "{body}");
    let sent = lab.seed_status().expect("seed status").releases[0].bytes_up;
    let (code, metrics) = http_get(http, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{metrics}");
    let counted = metric_sum(&metrics, "fleetmesh_chunk_bytes_sent_total", "");
    // The status file is written every second: it may lag the counters.
    assert!(
        counted >= sent as f64 && sent > 0,
        "{counted} counted, {sent} in the status"
    );
}

fn signed_announcement(
    key: &SecretKey<Release>,
    version: u64,
    id: u8,
    expires: UnixTime,
) -> Vec<u8> {
    let now = fleetmesh_node::cli::unix_now();
    let a = Announcement {
        release_id: ReleaseId([id; 32]),
        version: semver::Version::new(version, 0, 0),
        channel: "stable".into(),
        platforms: vec!["generic".into()],
        image_len: 1 << 20,
        manifest: ManifestParts::of(&[id]),
        issued_at: UnixTime(now.0.saturating_sub(7200)),
        expires_at: expires,
    };
    codec::encode(&Signed::sign(&a, &[key]).expect("sign")).expect("encode")
}

#[test]
fn forged_announcements_are_not_acted_on_and_the_forger_is_banned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Fixture { mut lab, .. } = lab_with_release(dir.path(), 2 << 20);
    let honest: Vec<usize> = (0..2)
        .map(|_| lab.add_node("a", "").expect("node"))
        .collect();
    for &i in &honest {
        lab.start_node(i, &[]).expect("start");
    }
    lab.wait_complete(&honest, "1.0.0", TIMEOUT)
        .expect("complete");
    let real = keyfile::read::<Release>(&lab.seed_dir.join("keys/release.key")).expect("key");
    let forger_key = SecretKey::<Release>::from_seed([66; 32]);
    let now = fleetmesh_node::cli::unix_now();
    let future = now.plus_secs(86_400);
    let forged = [
        signed_announcement(&forger_key, 9, 0xf1, future), // wrong key
        signed_announcement(&real, 0, 0xf2, future),       // older than 1.0.0
        signed_announcement(&real, 8, 0xf3, UnixTime(now.0 - 3600)), // expired
    ];
    let mut file = Vec::new();
    for m in &forged {
        file.extend((m.len() as u32).to_be_bytes());
        file.extend(m);
    }
    let chaos = dir.path().join("forged.bin");
    std::fs::write(&chaos, file).expect("write");
    let forger = lab.add_node("b", "").expect("node");
    lab.start_node(forger, &["--chaos-gossip", chaos.to_str().expect("utf-8")])
        .expect("start");
    let forger_id = lab.nodes[forger].peer_id.clone();
    let banned = wait_until(Duration::from_secs(60), || {
        honest
            .iter()
            .all(|&i| {
                lab.node_status(i)
                    .is_some_and(|s| s.banned.contains(&forger_id))
            })
            .then_some(())
    });
    assert!(banned.is_some(), "the honest nodes did not ban the forger");
    for &i in &honest {
        let s = lab.node_status(i).expect("status");
        assert!(
            s.gossip_rejected >= 3,
            "node{i:02} rejected {}",
            s.gossip_rejected
        );
        let versions: Vec<&str> = s.releases.iter().map(|r| r.version.as_str()).collect();
        assert_eq!(
            versions,
            ["1.0.0"],
            "node{i:02} acted on a forged announcement"
        );
        let manifests = std::fs::read_dir(lab.nodes[i].dir.join("releases"))
            .expect("ls")
            .count();
        assert_eq!(manifests, 1);
    }
}

#[test]
fn the_fleet_completes_after_the_seed_goes_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Fixture {
        mut lab, hash, id, ..
    } = lab_with_release(dir.path(), 16 << 20);
    let all_chunks = manifest_chunks(&lab);
    let nodes: Vec<usize> = (0..4)
        .map(|i| {
            let site = if i % 2 == 0 { "a" } else { "b" };
            lab.add_node(site, "mesh.download_bytes_per_sec = 1500000")
                .expect("node")
        })
        .collect();
    for &i in &nodes {
        lab.start_node(i, &[]).expect("start");
    }
    // As soon as every chunk is on some node, the seed goes away.
    let covered = wait_until(TIMEOUT, || {
        let mut union = BTreeSet::new();
        for &i in &nodes {
            union.extend(chunk_files(&lab.nodes[i].dir));
        }
        all_chunks.is_subset(&union).then_some(())
    });
    assert!(covered.is_some(), "chunks never covered");
    let incomplete = nodes
        .iter()
        .filter(|&&i| !lab.node_complete(i, "1.0.0"))
        .count();
    lab.kill_seed();
    assert!(
        incomplete > 0,
        "every node finished before the seed left; the test proves nothing"
    );
    lab.wait_complete(&nodes, "1.0.0", TIMEOUT)
        .expect("completes without the seed");
    for &i in &nodes {
        assert_eq!(
            node_image_hash(&lab.nodes[i].dir, &id).expect("image"),
            hash
        );
    }
}

/// The error line of a command that must fail.
fn fails(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("run");
    assert!(!out.status.success(), "{cmd:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    err
}

/// An air-gapped site: bundles exported from the seed are imported into
/// one node (a full v1, then a v2 delta); a second node of the site, which
/// never reaches the seed, gets v2 from the first over the mesh. Damaged,
/// cut and out-of-order bundles are refused with one line.
#[test]
fn an_air_gapped_site_takes_releases_from_bundles_and_shares_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let Fixture { mut lab, .. } = lab_with_release(dir, 3 << 20);
    let mut v2 = Vec::new();
    fleetmesh_testnet::image::write_image(1, 3 << 20, &mut v2).expect("image");
    for i in (0..v2.len()).step_by(1 << 20) {
        v2[i..i + 100].fill(0x5a);
    }
    std::fs::write(dir.join("v2"), &v2).expect("write v2");
    let v2_id = lab.publish(&dir.join("v2"), "1.1.0").expect("publish v2")["release_id"]
        .as_str()
        .expect("id")
        .to_owned();

    let (full, delta) = (dir.join("v1.bundle"), dir.join("v2-delta.bundle"));
    let export = |args: &[&str]| -> serde_json::Value {
        serde_json::from_str(&lab.seed_cmd(&[&["export"], args].concat()).expect("export"))
            .expect("export JSON")
    };
    let f = export(&["--version", "1.0.0", "--out", full.to_str().expect("path")]);
    let d = export(&[
        "--version",
        "1.1.0",
        "--from",
        "1.0.0",
        "--out",
        delta.to_str().expect("path"),
    ]);
    assert_eq!(f["chunks"], f["chunks_total"]);
    let (dc, dt) = (
        d["chunks"].as_u64().expect("n"),
        d["chunks_total"].as_u64().expect("n"),
    );
    assert!(dc > 0 && dc * 4 < dt, "delta {dc} of {dt} chunks");
    let seed_bin = bin("fleetmesh-seed");
    let seed_dir = lab.seed_dir.to_str().expect("path").to_owned();
    let err = fails(std::process::Command::new(&seed_bin).args([
        "export",
        "--dir",
        &seed_dir,
        "--version",
        "1.0.0",
        "--out",
        full.to_str().expect("p"),
    ]));
    assert!(err.contains("exists"), "{err}");
    let err = fails(std::process::Command::new(&seed_bin).args([
        "export",
        "--dir",
        &seed_dir,
        "--version",
        "9.0.0",
        "--out",
        "/nonexistent/x",
    ]));
    assert!(err.contains("no release 9.0.0"), "{err}");

    // The island's first node: provisioned, then cut off from the seed.
    let a = lab.add_node("island", "").expect("node");
    lab.kill_seed();
    lab.start_node(a, &[]).expect("start");
    let node_bin = bin("fleetmesh-node");
    let import = |i: usize, file: &Path| {
        let mut c = std::process::Command::new(&node_bin);
        c.args(["import", "--dir"]).arg(&lab.nodes[i].dir).arg(file);
        c
    };
    wait_until(TIMEOUT, || lab.node_status(a)).expect("the first node runs");
    let err = fails(&mut import(a, &delta));
    assert!(err.contains("import 1.0.0 first"), "{err}");

    let mut damaged = std::fs::read(&full).expect("read");
    let at = damaged.len() / 2;
    damaged[at] ^= 0xff;
    std::fs::write(dir.join("damaged.bundle"), &damaged).expect("write");
    let err = fails(&mut import(a, &dir.join("damaged.bundle")));
    assert!(err.contains("chunk") || err.contains("checksum"), "{err}");
    let cut = &std::fs::read(&full).expect("read")[..at];
    std::fs::write(dir.join("cut.bundle"), cut).expect("write");
    let err = fails(&mut import(a, &dir.join("cut.bundle")));
    assert!(err.contains("cut short"), "{err}");
    let err = fails(&mut import(a, &dir.join("image-1.0.0")));
    assert!(err.contains("not a fleetmesh release bundle"), "{err}");
    let held = chunk_files(&lab.nodes[a].dir).len();
    let err = fails(import(a, &full).env("FLEETMESH_STORE__MAX_BYTES", "1000000"));
    assert!(err.contains("store cap"), "{err}");
    assert_eq!(
        chunk_files(&lab.nodes[a].dir).len(),
        held,
        "a refused import wrote chunks"
    );
    assert!(!lab.node_complete(a, "1.0.0"));

    let out = lab
        .node_cmd(a, &["import", full.to_str().expect("p")])
        .expect("import v1");
    assert!(out.contains("\"trust_advanced\":true"), "{out}");
    lab.node_cmd(a, &["import", delta.to_str().expect("p")])
        .expect("import v2");
    lab.wait_complete(&[a], "1.1.0", TIMEOUT)
        .expect("v2 on the first node");

    // The second node knows only the first.
    let addr = wait_until(TIMEOUT, || {
        lab.node_status(a)?
            .listen
            .into_iter()
            .find(|l| l.contains("/tcp/"))
    })
    .expect("first node's address");
    let b = lab
        .add_node("island", &format!("mesh.bootstrap = [{addr:?}]"))
        .expect("node");
    lab.start_node(b, &[]).expect("start");
    lab.wait_complete(&[b], "1.1.0", TIMEOUT)
        .expect("v2 on the second node");
    assert_eq!(
        node_image_hash(&lab.nodes[b].dir, &v2_id).expect("image"),
        blake3::hash(&v2).into()
    );
}

/// Only enrolled nodes take part. A node without a credential gets nothing:
/// its peers answer it `NotMember` and drop it. With its credential copied
/// in, the same node joins and completes. Revoked (a new signed policy), it
/// is dropped by the seed and by its own site's peer within seconds.
#[test]
fn a_non_member_cannot_fetch_chunks_and_a_revoked_node_is_dropped() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let Fixture {
        mut lab, hash, id, ..
    } = lab_with_release(dir, 2 << 20);
    let member = lab.add_node("a", "").expect("node");
    let stranger = lab.add_node("a", "").expect("node");
    // Not enrolled: no credential on the node, none issued at the seed
    // (the seed hands an enrolled node its credential).
    let credential = lab.nodes[stranger].dir.join("member.cred");
    std::fs::remove_file(&credential).expect("take the credential away");
    let issued = lab
        .seed_dir
        .join("members")
        .join(format!("{}.cred", lab.nodes[stranger].peer_id));
    let kept = dir.join("stranger.cred");
    std::fs::rename(&issued, &kept).expect("un-enroll");
    lab.start_node(member, &[]).expect("start");
    lab.start_node(stranger, &[]).expect("start");
    lab.wait_complete(&[member], "1.0.0", TIMEOUT)
        .expect("the member completes");
    let stranger_id = lab.nodes[stranger].peer_id.clone();
    let banned_by_seed = |lab: &Lab| {
        lab.seed_status()
            .is_some_and(|s| s.banned.contains(&stranger_id))
    };
    wait_until(Duration::from_secs(60), || {
        banned_by_seed(&lab).then_some(())
    })
    .expect("the seed refuses the stranger");
    assert!(
        chunk_files(&lab.nodes[stranger].dir).is_empty(),
        "a non-member got chunks"
    );
    assert!(!lab.node_complete(stranger, "1.0.0"));

    // Enrolled at the seed: the node gets its credential from the seed
    // when it next says hello, with nothing copied to it.
    std::fs::rename(&kept, &issued).expect("enroll");
    lab.wait_complete(&[stranger], "1.0.0", TIMEOUT)
        .expect("the enrolled node completes");
    assert!(credential.exists(), "the node did not keep its credential");
    assert_eq!(
        node_image_hash(&lab.nodes[stranger].dir, &id).expect("image"),
        hash
    );
    // The member refused the stranger a while ago; restarted, it finds it
    // again (through the seed's routing table) at once.
    lab.kill_node(member);
    lab.start_node(member, &[]).expect("restart");
    wait_until(TIMEOUT, || {
        (lab.node_status(member)?.peers == 2 && lab.node_status(stranger)?.peers == 2).then_some(())
    })
    .expect("the two nodes and the seed are all connected");

    // Revocations travel in the policy: apply one, then revoke.
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, "").expect("policy");
    lab.seed_cmd(&["policy", "apply", policy.to_str().expect("utf-8")])
        .expect("apply");
    lab.seed_cmd(&["revoke", "--node-key", &stranger_id])
        .expect("revoke");
    wait_until(Duration::from_secs(60), || {
        let by_member = lab.node_status(member)?.banned.contains(&stranger_id);
        (by_member && banned_by_seed(&lab) && lab.node_status(stranger)?.peers == 0).then_some(())
    })
    .expect("the revoked node is dropped by the seed and its peer");
    let err = lab
        .seed_cmd(&["enroll", "--node-key", "not-a-key", "--site", "a"])
        .expect_err("a bad key");
    assert!(err.to_string().contains("neither 64 hex digits"), "{err}");
}

/// The chunk ids of a release published in `lab`, from the seed's copy.
fn release_chunks(lab: &Lab, id: &str) -> BTreeSet<ChunkId> {
    let path = lab.seed_dir.join("releases").join(format!("{id}.manifest"));
    let signed: Signed<Manifest> =
        codec::decode(&std::fs::read(&path).expect("read manifest")).expect("decode");
    let m: Manifest = codec::decode(signed.body_bytes()).expect("body");
    m.chunks.iter().map(|c| c.id).collect()
}

/// Publishes an incompressible image of `len` bytes as `v` (so that the
/// release takes its size on disk); returns the release id.
fn publish_incompressible(lab: &Lab, dir: &Path, v: &str, len: usize) -> String {
    let mut bytes = vec![0u8; len];
    blake3::Hasher::new()
        .update(v.as_bytes())
        .finalize_xof()
        .fill(&mut bytes);
    let image = dir.join(format!("image-{v}"));
    std::fs::write(&image, &bytes).expect("write image");
    let summary = lab.publish(&image, v).expect("publish");
    summary["release_id"].as_str().expect("id").to_owned()
}

#[test]
fn the_store_stays_under_its_cap_by_evicting_old_releases_never_the_running_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lab =
        Lab::new(dir.path(), &bin("fleetmesh-seed"), &bin("fleetmesh-node")).expect("lab");
    let publish = |lab: &Lab, v: &str, len: usize| publish_incompressible(lab, dir.path(), v, len);
    let size = 1 << 20;
    let mut ids = vec![publish(&lab, "1.0.0", size)];
    lab.start_seed().expect("seed");
    // Room for two releases and a half: the third evicts the first.
    let cap = size as u64 * 5 / 2;
    let extra = format!("store.max_bytes = {cap}\nupdate.install_when_staged = true");
    let n = lab.add_node("a", &extra).expect("node");
    let api = local_addr();
    lab.start_node(n, &["--api", &api.to_string()])
        .expect("start");
    let node_dir = lab.nodes[n].dir.clone();
    let committed = |lab: &Lab, v: &str| {
        wait_until(TIMEOUT, || {
            fleetmesh_testnet::lab::fleet(lab)[n]
                .committed(v)
                .then_some(())
        })
        .unwrap_or_else(|| panic!("{v} never committed: {:?}", lab.node_update(n)))
    };
    let store = |lab: &Lab| {
        lab.node_status(n)
            .and_then(|s| s.store)
            .expect("store status")
    };
    let manifest = |id: &str| node_dir.join("releases").join(format!("{id}.manifest"));
    let held = |lab: &Lab, id: &str| {
        let files: BTreeSet<ChunkId> = chunk_files(&node_dir).into_iter().collect();
        let all = release_chunks(lab, id);
        (all.intersection(&files).count(), all.len())
    };
    committed(&lab, "1.0.0");
    ids.push(publish(&lab, "2.0.0", size));
    committed(&lab, "2.0.0");
    // Two releases fit: nothing is evicted.
    assert!(manifest(&ids[0]).exists(), "1.0.0 evicted under the cap");
    ids.push(publish(&lab, "3.0.0", size));
    committed(&lab, "3.0.0");
    let s = store(&lab);
    assert!(s.evicted >= 1 && s.used_bytes <= cap, "{s:?}, cap {cap}");
    assert!(!manifest(&ids[0]).exists(), "1.0.0 kept over the cap");
    assert_eq!(held(&lab, &ids[0]).0, 0, "1.0.0's chunks kept");
    for id in &ids[1..] {
        let (have, all) = held(&lab, id);
        assert_eq!(have, all, "{id} lost chunks");
    }
    // A release that cannot fit even with 2.0.0 gone waits, and nothing is
    // evicted for it.
    let big = publish(&lab, "4.0.0", 2 * size);
    let waiting = wait_until(TIMEOUT, || store(&lab).waiting).expect("4.0.0 never waited");
    assert!(waiting.contains("4.0.0"), "{waiting}");
    assert_eq!(held(&lab, &big).0, 0, "4.0.0 fetched over the cap");
    assert!(manifest(&ids[1]).exists(), "2.0.0 evicted for nothing");
    assert!(store(&lab).used_bytes <= cap);
    assert_eq!(
        fleetmesh_testnet::lab::fleet(&lab)[n].booted.as_deref(),
        Some("3.0.0")
    );
    let (code, metrics) = http_get(api, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains(&format!("fleetmesh_store{{value=\"max_bytes\"}} {cap}")),
        "{metrics}"
    );
    assert!(
        metric_sum(&metrics, "fleetmesh_store{", "evicted") >= 1.0,
        "{metrics}"
    );
}

#[test]
fn a_release_that_rolled_back_gives_its_room_on_a_full_store_to_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lab =
        Lab::new(dir.path(), &bin("fleetmesh-seed"), &bin("fleetmesh-node")).expect("lab");
    let size = 1 << 20;
    publish_incompressible(&lab, dir.path(), "1.0.0", size);
    lab.start_seed().expect("seed");
    // Room for two releases and a half, and 2.0.0 fails its health check.
    let cap = size as u64 * 5 / 2;
    let extra = format!(
        "store.max_bytes = {cap}\nupdate.install_when_staged = true\n{}",
        r#"update.health = "command"
update.health_command = ["sh", "-c", "test \"$FLEETMESH_TARGET_VERSION\" != 2.0.0"]"#
    );
    let n = lab.add_node("a", &extra).expect("node");
    lab.start_node(n, &[]).expect("start");
    let state = |lab: &Lab, done: &dyn Fn(&fleetmesh_testnet::lab::View) -> bool, what: &str| {
        wait_until(TIMEOUT, || {
            done(&fleetmesh_testnet::lab::fleet(lab)[n]).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{what}: {:?} {:?}",
                lab.node_update(n),
                lab.node_status(n).and_then(|s| s.store)
            )
        })
    };
    state(&lab, &|v| v.committed("1.0.0"), "1.0.0 never committed");
    let bad = publish_incompressible(&lab, dir.path(), "2.0.0", size);
    state(&lab, &|v| v.rolled_back("2.0.0"), "2.0.0 never rolled back");
    // The fix needs the room 2.0.0 takes: 1.0.0 runs and cannot go.
    publish_incompressible(&lab, dir.path(), "3.0.0", size);
    state(&lab, &|v| v.committed("3.0.0"), "3.0.0 never committed");
    let manifest = lab.nodes[n]
        .dir
        .join("releases")
        .join(format!("{bad}.manifest"));
    assert!(!manifest.exists(), "2.0.0 kept");
    let store = lab.node_status(n).and_then(|s| s.store).expect("store");
    assert!(store.evicted >= 1 && store.used_bytes <= cap, "{store:?}");
}

#[test]
fn slow_retrieval_a_peer_that_trickles_is_passed_over_and_the_chunks_come_from_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Fixture {
        mut lab, hash, id, ..
    } = lab_with_release(dir.path(), 4 << 20);
    // The slow node fetches at full speed, then holds every chunk response
    // for longer than the test runs. It is in the other node's site, so
    // that node asks it first.
    let slow = lab.add_node("a", "").expect("node");
    lab.start_node(slow, &["--chaos-upload-delay", "600"])
        .expect("start");
    lab.wait_complete(&[slow], "1.0.0", TIMEOUT)
        .expect("slow node completes");
    let node = lab.add_node("a", "").expect("node");
    lab.start_node(node, &[]).expect("start");
    let took = lab
        .wait_complete(&[node], "1.0.0", TIMEOUT)
        .expect("completes despite the slow peer");
    let status = lab.node_status(node).expect("status");
    let r = &status.releases[0];
    eprintln!("completed in {took:?}: {r:?}");
    // Nothing came from the slow peer, though it was asked: every byte came
    // from the seed, and the slow node shows requests held, none answered.
    assert_eq!(r.bytes_down_same_site, 0, "{r:?}");
    let slow_status = lab.node_status(slow).expect("slow status");
    assert_eq!(slow_status.releases[0].bytes_up, 0, "{slow_status:?}");
    let slow_log =
        std::fs::read_to_string(lab.dir.join(format!("node{slow:02}.log"))).expect("slow log");
    assert!(
        slow_log.contains("holding a chunk response"),
        "the slow peer was never asked; the test proves nothing"
    );
    assert_eq!(
        node_image_hash(&lab.nodes[node].dir, &id).expect("image"),
        hash
    );
}

#[test]
fn after_a_policy_key_rotation_nodes_get_their_resigned_credential_from_the_seed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Fixture { mut lab, .. } = lab_with_release(dir.path(), 1 << 20);
    let n = node_with_v1(&mut lab);
    let cred = lab.nodes[n].dir.join("member.cred");
    let before = std::fs::read(&cred).expect("credential");
    // The operator rotates the policy key with the seed stopped; the node
    // keeps running with a credential the old key signed. The seed comes
    // back on the address the node bootstraps from.
    let addr = lab.seed_addr.clone().expect("seed address");
    let tcp = addr.split("/p2p/").next().expect("address").to_owned();
    lab.kill_seed();
    lab.seed_cmd(&["rotate-key", "--role", "policy"])
        .expect("rotate");
    let issued = lab
        .seed_dir
        .join("members")
        .join(format!("{}.cred", lab.nodes[n].peer_id));
    let resigned = std::fs::read(&issued).expect("re-signed credential");
    assert_ne!(
        before, resigned,
        "rotate-key did not re-sign the credential"
    );
    lab.start_seed_with(&["--listen", &tcp]).expect("seed");
    // The seed hands the node its re-signed credential; the node keeps it
    // and is a member again: it fetches the next release.
    wait_until(TIMEOUT, || {
        (std::fs::read(&cred).ok()? == resigned).then_some(())
    })
    .unwrap_or_else(|| {
        let log = |name: &str| std::fs::read_to_string(lab.dir.join(name)).unwrap_or_default();
        panic!(
            "the node never got its re-signed credential\nseed:\n{}\nnode:\n{}",
            log("seed.log"),
            log(&format!("node{n:02}.log"))
        )
    });
    publish_image(&lab, dir.path(), 2, 1 << 20, "2.0.0");
    lab.wait_complete(&[n], "2.0.0", TIMEOUT)
        .expect("the renewed node fetches the next release");
}

#[test]
fn the_seed_takes_a_nodes_site_and_labels_from_its_credential_not_its_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Fixture { mut lab, .. } = lab_with_release(dir.path(), 256 << 10);
    // The node's own configuration claims rack r9; it was enrolled in r1.
    let n = lab
        .add_node("a", "mesh.labels = { rack = \"r9\" }")
        .expect("node");
    let peer = lab.nodes[n].peer_id.clone();
    let out = dir.path().join("relabelled.cred");
    lab.seed_cmd(&[
        "enroll",
        "--node-key",
        &peer,
        "--site",
        "a",
        "--label",
        "rack=r1",
        "--out",
        out.to_str().expect("utf-8"),
    ])
    .expect("enroll");
    std::fs::rename(&out, lab.nodes[n].dir.join("member.cred")).expect("credential");
    lab.start_node(n, &[]).expect("start");
    let labels = wait_until(TIMEOUT, || {
        Some(lab.seed_status()?.nodes.get(&peer)?.labels.clone())
    })
    .expect("the seed never had the node's report");
    assert_eq!(
        labels.get("rack").map(String::as_str),
        Some("r1"),
        "{labels:?}"
    );
    assert_eq!(
        labels.get("site").map(String::as_str),
        Some("a"),
        "{labels:?}"
    );
}

#[test]
fn a_restarted_node_gets_the_next_release_without_its_old_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Fixture { mut lab, .. } = lab_with_release(dir.path(), 2 << 20);
    let n = node_with_v1(&mut lab);
    // The node is the seed's only peer; it may have dialed it more than once.
    let old = wait_until(TIMEOUT, || {
        Some(lab.seed_status()?.connections).filter(|&c| c >= 1)
    })
    .expect("the seed's status shows its connections to the node");
    // Killed, its QUIC connections linger at the seed (no reset) until the
    // restarted process's hello on a new one makes the seed close them;
    // libp2p would otherwise send requests to the node round-robin into them.
    lab.kill_node(n);
    lab.start_node(n, &[]).expect("restart");
    let seed_log = dir.path().join("seed.log");
    let closed: usize = wait_until(TIMEOUT, || {
        let log = std::fs::read_to_string(&seed_log).ok()?;
        let line = log
            .lines()
            .find(|l| l.contains("hello on a newer connection: closing the older ones"))?;
        line.split_once(" n=")?
            .1
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
    .expect("the seed closes the dead process's connections");
    assert!(
        closed >= old,
        "the dead process held {old} connections; the seed closed {closed}"
    );
    publish_image(&lab, dir.path(), 2, 2 << 20, "2.0.0");
    lab.wait_complete(&[n], "2.0.0", TIMEOUT)
        .expect("v2 reaches the restarted node");
}

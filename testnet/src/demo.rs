//! `fleetmesh-testnet demo`: the local job a new user runs first.
//!
//! It drives real processes on 127.0.0.1: a seed publishes a generated
//! image, six nodes in two sites fetch it over the mesh, the seed publishes
//! a v2 with known edits while they run, and they fetch the delta. It checks
//! every node's reassembled images and reports the bytes the seed, each
//! site's WAN and each node moved. (Installing in maintenance windows and
//! rollback come with the policy and testnet stages.)

use anyhow::{bail, Context, Result};
use fleetmesh_node::mesh::status::MeshStatus;
use fleetmesh_protocol::ImageHash;
use fleetmesh_testnet::image::{write_image, EditPlan};
use fleetmesh_testnet::lab::Lab;
use fleetmesh_testnet::meshbench::node_image_hash;
use serde::Serialize;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MARKER: &str = ".fleetmesh-demo";

/// What the demo is asked to do.
#[derive(Debug)]
pub struct DemoConfig {
    /// Working directory (replaced if it holds an earlier demo).
    pub work: PathBuf,
    /// Image size.
    pub size: u64,
    /// Seed of the generated image.
    pub seed: u64,
    /// Scattered small edits in v2.
    pub small_edits: usize,
}

/// One expectation and whether it held.
#[derive(Debug, Serialize)]
pub struct Check {
    /// What was expected.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// The measured value.
    pub detail: String,
}

/// The demo's report, also written as `report.json`.
#[derive(Debug, Serialize)]
pub struct DemoReport {
    /// Image size.
    pub image_bytes: u64,
    /// `publish` output for v1, with its wall time.
    pub v1: serde_json::Value,
    /// Seconds v1's publish took.
    pub v1_seconds: f64,
    /// `publish` output for v2.
    pub v2: serde_json::Value,
    /// Seconds v2's publish took.
    pub v2_seconds: f64,
    /// Bytes the edit plan changed.
    pub changed_bytes: u64,
    /// v2's new chunk bytes / changed bytes.
    pub delta_ratio: f64,
    /// v1's stored bytes / image bytes (compression).
    pub stored_ratio: f64,
    /// Distribution of each release to the nodes.
    pub distribution: Vec<Distribution>,
    /// Expectations.
    pub checks: Vec<Check>,
}

/// One release going from the seed to every node.
#[derive(Debug, Serialize)]
pub struct Distribution {
    /// Version.
    pub version: String,
    /// Seconds from the end of publish to every node verified.
    pub seconds: f64,
    /// Chunk bytes the release needs on the wire (its new chunks, compressed).
    pub wire_bytes: u64,
    /// Chunk bytes the seed sent for it.
    pub seed_egress_bytes: u64,
    /// Chunk bytes received by each node.
    pub node_bytes_down: Vec<u64>,
    /// Per site: chunk bytes its nodes pulled from outside the site.
    pub site_wan_bytes: Vec<(String, u64)>,
    /// Nodes whose reassembled image matched the published image.
    pub images_verified: usize,
}

impl DemoReport {
    /// True if every expectation held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// Sites and nodes per site in the demo.
const SITES: [&str; 2] = ["site-a", "site-b"];
const NODES_PER_SITE: usize = 3;

/// Runs the demo, printing progress lines through `say`.
pub fn run(cfg: &DemoConfig, say: &mut dyn FnMut(&str)) -> Result<DemoReport> {
    let seed_bin = sibling_binary("fleetmesh-seed")?;
    let node_bin = sibling_binary("fleetmesh-node")?;
    prepare_work_dir(&cfg.work)?;
    let (v1, v2) = (cfg.work.join("v1.img"), cfg.work.join("v2.img"));

    say(&format!(
        "generating a {} MiB image and its v2",
        cfg.size >> 20
    ));
    write_image(cfg.seed, cfg.size, BufWriter::new(File::create(&v1)?))?;
    let plan = EditPlan::standard(cfg.size, cfg.seed, 0.05, cfg.small_edits);
    plan.apply(
        BufReader::new(File::open(&v1)?),
        BufWriter::new(File::create(&v2)?),
    )?;

    let mut lab = Lab::new(&cfg.work, &seed_bin, &node_bin)?;
    say(&format!("seed initialised in {}", lab.seed_dir.display()));
    lab.start_seed()?;
    say(&format!(
        "seed serving at {}",
        lab.seed_addr.as_deref().unwrap_or("?")
    ));
    for site in SITES {
        for _ in 0..NODES_PER_SITE {
            lab.add_node(site, "")?;
        }
    }
    for i in 0..lab.nodes.len() {
        lab.start_node(i, &[])?;
    }
    say(&format!(
        "{} nodes started in {} sites (logs: {}/node*.log)",
        lab.nodes.len(),
        SITES.len(),
        cfg.work.display()
    ));
    lab.wait_connected(Duration::from_secs(60))?;
    say("all nodes connected to each other and the seed");
    let (p1, t1) = timed(|| lab.publish(&v1, "1.0.0"))?;
    say(&format!(
        "published v1.0.0 in {t1:.2} s while the mesh runs: {p1}"
    ));
    let d1 = distribute(&lab, &v1, &p1, "1.0.0", say)?;
    let (p2, t2) = timed(|| lab.publish(&v2, "1.1.0"))?;
    say(&format!(
        "published v1.1.0 in {t2:.2} s while the mesh runs: {p2}"
    ));
    let d2 = distribute(&lab, &v2, &p2, "1.1.0", say)?;
    drop(lab);
    let verified = run_seed(
        &seed_bin,
        &["verify", "--dir", path_str(&cfg.work.join("seed"))?],
    );

    let num = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    let changed = plan.changed_bytes();
    let delta_ratio = num(&p2, "new_bytes") as f64 / changed as f64;
    let stored_ratio = num(&p1, "stored_bytes") as f64 / cfg.size as f64;
    let nodes = SITES.len() * NODES_PER_SITE;
    let max_down = |d: &Distribution| d.node_bytes_down.iter().copied().max().unwrap_or(0);
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    let checks = vec![
        check(
            "every node reassembled both images exactly",
            d1.images_verified == nodes && d2.images_verified == nodes,
            format!(
                "{} and {} of {nodes}",
                d1.images_verified, d2.images_verified
            ),
        ),
        check(
            "seed egress for v1 <= 1.5x the release",
            ratio(d1.seed_egress_bytes, d1.wire_bytes) <= 1.5,
            format!("{:.2}x", ratio(d1.seed_egress_bytes, d1.wire_bytes)),
        ),
        check(
            "each site's WAN carried v1 <= 1.5x",
            d1.site_wan_bytes
                .iter()
                .all(|(_, b)| ratio(*b, d1.wire_bytes) <= 1.5),
            format!(
                "{:?}",
                d1.site_wan_bytes
                    .iter()
                    .map(|(_, b)| format!("{:.2}x", ratio(*b, d1.wire_bytes)))
                    .collect::<Vec<_>>()
            ),
        ),
        check(
            "a node downloads about the delta for v2 (<= 1.5x its new chunks)",
            ratio(max_down(&d2), d2.wire_bytes) <= 1.5,
            format!("{} bytes for {} new", max_down(&d2), d2.wire_bytes),
        ),
        check(
            "delta bytes / changed bytes <= 1.5 at demo size",
            delta_ratio <= 1.5,
            format!("{delta_ratio:.3}"),
        ),
        check(
            "compression saves space",
            stored_ratio < 0.9,
            format!("{stored_ratio:.3}"),
        ),
        check(
            "seed verify passes",
            verified.is_ok(),
            verified.err().map_or("ok".into(), |e| e.to_string()),
        ),
    ];
    let report = DemoReport {
        image_bytes: cfg.size,
        v1: p1,
        v1_seconds: t1,
        v2: p2,
        v2_seconds: t2,
        changed_bytes: changed,
        delta_ratio,
        stored_ratio,
        distribution: vec![d1, d2],
        checks,
    };
    fs::write(
        cfg.work.join("report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    Ok(report)
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let start = Instant::now();
    let v = f()?;
    Ok((v, start.elapsed().as_secs_f64()))
}

/// Waits for every node to have `version`, checks their images and
/// collects the bytes it took.
fn distribute(
    lab: &Lab,
    image: &Path,
    published: &serde_json::Value,
    version: &str,
    say: &mut dyn FnMut(&str),
) -> Result<Distribution> {
    let all: Vec<usize> = (0..lab.nodes.len()).collect();
    let took = lab.wait_complete(&all, version, Duration::from_secs(600))?;
    let id = published["release_id"]
        .as_str()
        .context("publish summary")?;
    let expected = ImageHash::from(blake3::hash(&fs::read(image)?));
    let mut verified = 0;
    for node in &lab.nodes {
        if node_image_hash(&node.dir, id)? == expected {
            verified += 1;
        }
    }
    // Statuses are rewritten every second.
    std::thread::sleep(Duration::from_millis(1500));
    let of = |s: &MeshStatus| -> Option<(u64, u64, u64)> {
        let r = s.releases.iter().find(|r| r.version == version)?;
        Some((r.bytes_down, r.bytes_down_same_site, r.egress_bytes))
    };
    let mut node_bytes_down = Vec::new();
    let mut site_wan: Vec<(String, u64)> = SITES.iter().map(|s| (s.to_string(), 0)).collect();
    for (i, node) in lab.nodes.iter().enumerate() {
        let (down, same, _) = lab.node_status(i).as_ref().and_then(of).unwrap_or_default();
        node_bytes_down.push(down);
        if let Some(site) = site_wan.iter_mut().find(|(s, _)| *s == node.site) {
            site.1 += down - same;
        }
    }
    let seed_egress = lab.seed_status().as_ref().and_then(of).map_or(0, |r| r.2);
    let wire_bytes = published["stored_bytes"].as_u64().unwrap_or(0);
    say(&format!(
        "v{version} on all {} nodes in {:.2} s; seed sent {seed_egress} B for a {wire_bytes} B release; images verified on {verified}",
        lab.nodes.len(),
        took.as_secs_f64()
    ));
    Ok(Distribution {
        version: version.into(),
        seconds: took.as_secs_f64(),
        wire_bytes,
        seed_egress_bytes: seed_egress,
        node_bytes_down,
        site_wan_bytes: site_wan,
        images_verified: verified,
    })
}

fn check(name: &str, ok: bool, detail: impl ToString) -> Check {
    Check {
        name: name.into(),
        ok,
        detail: detail.to_string(),
    }
}

fn run_seed(bin: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "fleetmesh-seed {}: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

/// A workspace binary built next to this one.
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locate fleetmesh-testnet")?;
    let path = exe.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{name} not found next to {}; build everything with `cargo build --release --workspace`",
            exe.display()
        );
    }
    Ok(path)
}

fn prepare_work_dir(work: &Path) -> Result<()> {
    if work.join(MARKER).is_file() {
        fs::remove_dir_all(work)
            .with_context(|| format!("remove earlier demo {}", work.display()))?;
    } else if fs::read_dir(work)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
    {
        bail!(
            "{} is not empty and not an earlier demo; choose another --work",
            work.display()
        );
    }
    fs::create_dir_all(work).with_context(|| format!("create {}", work.display()))?;
    fs::write(
        work.join(MARKER),
        b"fleetmesh-testnet demo working directory\n",
    )?;
    Ok(())
}

//! `fleetmesh-testnet demo`: the local job a new user runs first.
//!
//! Today (foundation stage) it drives real `fleetmesh-seed` processes: init a
//! seed, generate a deterministic image, publish v1, publish a v2 with known
//! edits, verify, and report how few bytes the delta needed. The mesh,
//! updater and policy stages extend it to nodes, distribution and rollback.

use anyhow::{bail, Context, Result};
use fleetmesh_testnet::image::{write_image, EditPlan};
use serde::Serialize;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

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
    /// Expectations.
    pub checks: Vec<Check>,
}

impl DemoReport {
    /// True if every expectation held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// Runs the demo, printing progress lines through `say`.
pub fn run(cfg: &DemoConfig, say: &mut dyn FnMut(&str)) -> Result<DemoReport> {
    let seed_bin = sibling_binary("fleetmesh-seed")?;
    prepare_work_dir(&cfg.work)?;
    let seed_dir = cfg.work.join("seed");
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

    let root = run_seed(&seed_bin, &["init", "--dir", path_str(&seed_dir)?])?;
    say(&format!("seed initialised; root key {}", root.trim()));
    let (p1, t1) = publish(&seed_bin, &seed_dir, &v1, "1.0.0")?;
    say(&format!("published v1.0.0 in {t1:.2} s: {p1}"));
    let (p2, t2) = publish(&seed_bin, &seed_dir, &v2, "1.1.0")?;
    say(&format!("published v1.1.0 in {t2:.2} s: {p2}"));
    let verified = run_seed(&seed_bin, &["verify", "--dir", path_str(&seed_dir)?]);
    say(&format!(
        "verify: {}",
        if verified.is_ok() {
            "all chunks and signatures good"
        } else {
            "FAILED"
        }
    ));

    let num = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    let changed = plan.changed_bytes();
    let delta_ratio = num(&p2, "new_bytes") as f64 / changed as f64;
    let stored_ratio = num(&p1, "stored_bytes") as f64 / cfg.size as f64;
    let checks = vec![
        check(
            "v2 reuses most of v1's chunks",
            num(&p2, "new_chunks") * 2 < num(&p2, "chunks"),
            format!("{} new of {}", num(&p2, "new_chunks"), num(&p2, "chunks")),
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
            "verify passes",
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
        checks,
    };
    fs::write(
        cfg.work.join("report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    Ok(report)
}

fn check(name: &str, ok: bool, detail: impl ToString) -> Check {
    Check {
        name: name.into(),
        ok,
        detail: detail.to_string(),
    }
}

fn publish(
    bin: &Path,
    dir: &Path,
    image: &Path,
    version: &str,
) -> Result<(serde_json::Value, f64)> {
    let start = Instant::now();
    let out = run_seed(
        bin,
        &[
            "publish",
            "--dir",
            path_str(dir)?,
            "--image",
            path_str(image)?,
            "--version",
            version,
        ],
    )?;
    let secs = start.elapsed().as_secs_f64();
    Ok((
        serde_json::from_str(&out).context("publish output is not JSON")?,
        secs,
    ))
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

//! `fleetmesh-testnet`: the local lab.

mod demo;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use fleetmesh_testnet::image::{write_image, EditPlan};
use fleetmesh_testnet::parse_size;
use fleetmesh_testnet::sweep::SweepInput;
use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

/// The fleetmesh lab: demo, images and measurements.
#[derive(Debug, Parser)]
#[command(name = "fleetmesh-testnet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the local demo: a seed and nodes in sites on 127.0.0.1. Publish
    /// v1 and install it when the maintenance window opens, publish a v2
    /// delta and install it, publish a v3 that fails its health check and
    /// watch the canary roll back; check every step and report.
    Demo {
        /// Working directory; an earlier demo there is replaced.
        #[arg(long, default_value = "fleetmesh-demo")]
        work: PathBuf,
        /// Image size (B, KiB, MiB, GiB).
        #[arg(long, default_value = "64MiB", value_parser = parse_size)]
        size: u64,
        /// Seed of the generated image.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Nodes, spread round-robin over the sites.
        #[arg(long, default_value_t = 8)]
        nodes: usize,
        /// Sites.
        #[arg(long, default_value_t = 2)]
        sites: usize,
    },
    /// Write a deterministic image (and optionally its v2) and print the edit
    /// plan's changed bytes as JSON.
    GenImage {
        /// Image size.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Generator seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file for v1.
        #[arg(long)]
        out: PathBuf,
        /// Output file for v2 (5% in 1 MiB regions, small edits, one insertion).
        #[arg(long)]
        v2: Option<PathBuf>,
        /// Scattered small edits in v2.
        #[arg(long, default_value_t = 300)]
        small_edits: usize,
    },
    /// Distribute one release from a seed to nodes in sites (real processes
    /// on 127.0.0.1); print completion time, seed egress and per-site WAN
    /// bytes as JSON.
    MeshBench {
        /// Lab directory; must not exist or be empty.
        #[arg(long, default_value = "fleetmesh-meshbench")]
        work: PathBuf,
        /// Nodes, spread round-robin over the sites.
        #[arg(long, default_value_t = 20)]
        nodes: usize,
        /// Sites.
        #[arg(long, default_value_t = 4)]
        sites: usize,
        /// Image size.
        #[arg(long, default_value = "128MiB", value_parser = parse_size)]
        size: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 900)]
        timeout_secs: u64,
    },
    /// Run a scenario file (topology, image, timed faults) as real
    /// processes on 127.0.0.1, or in network namespaces with shaped links;
    /// print or write its report as JSON. Exits non-zero if a running
    /// honest node lacks the exact image or nobody banned a corrupt peer.
    Run {
        /// The scenario (see testnet/scenarios/).
        #[arg(long)]
        scenario: PathBuf,
        /// Each process in its own network namespace, sites behind WAN
        /// links shaped with tc tbf (root only); everything made is
        /// deleted on exit and on Ctrl-C.
        #[arg(long)]
        netns: bool,
        /// Lab directory; must not exist or be empty.
        #[arg(long, default_value = "fleetmesh-scenario")]
        work: PathBuf,
        /// Write the report here as well as to stdout.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Simulate the mesh's manifest fetching and scheduler for many nodes
    /// (discrete-event, one thread, seeded); print completion against the
    /// topology's lower bound, seed and WAN bytes, and the trace hash as
    /// JSON. Exits non-zero if a node did not complete or an invariant broke.
    Sim {
        /// Edge nodes.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Sites.
        #[arg(long, default_value_t = 10)]
        sites: usize,
        /// Random seed: the same seed gives the same trace hash.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Image size.
        #[arg(long, default_value = "64MiB", value_parser = parse_size)]
        size: u64,
        /// Piece size (the node's chunks average 64 KiB; coarser pieces
        /// keep 10,000 nodes within a minute of wall time).
        #[arg(long, default_value = "1MiB", value_parser = parse_size)]
        piece: u64,
        /// Each site's WAN, Mbit/s each way.
        #[arg(long, default_value_t = 20.0)]
        wan_mbit: f64,
        /// The seed's uplink, Mbit/s.
        #[arg(long, default_value_t = 50.0)]
        seed_mbit: f64,
        /// Probability that a response is lost.
        #[arg(long, default_value_t = 0.0)]
        drop: f64,
        /// Nodes that crash once and restart 5 s later.
        #[arg(long, default_value_t = 0)]
        crashes: usize,
        /// Sites whose WAN is cut once for 10 s.
        #[arg(long, default_value_t = 0)]
        partitions: usize,
        /// Nodes that serve corrupt pieces.
        #[arg(long, default_value_t = 0)]
        corrupt: usize,
        /// Every node starts with the release's manifest instead of
        /// gathering its parts first.
        #[arg(long)]
        no_manifest: bool,
    },
    /// Measure delta ratio and per-chunk costs for several average chunk sizes.
    ChunkSweep {
        /// Image size (held in memory twice).
        #[arg(long, default_value = "256MiB", value_parser = parse_size)]
        size: u64,
        /// Generator seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Scattered small edits in v2.
        #[arg(long, default_value_t = 300)]
        small_edits: usize,
        /// Average chunk sizes to try.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "4096,8192,16384,32768,65536,131072"
        )]
        avg: Vec<u32>,
        /// FastCDC normalisation levels to try.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        normalization: Vec<u8>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(_) if fleetmesh_testnet::lab::check_interrupted().is_err() => {
            eprintln!("error: interrupted; every process the lab started is stopped and everything it made on the network is deleted");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Demo {
            work,
            size,
            seed,
            nodes,
            sites,
        } => {
            // About 100 small edits per 64 MiB: the benchmark's density (300
            // per GiB) raised so that a small demo image still sees them.
            let small_edits = (size / (640 << 10)).max(1) as usize;
            let cfg = demo::DemoConfig {
                work,
                size,
                seed,
                small_edits,
                nodes,
                sites,
                live: std::io::stderr().is_terminal(),
            };
            let report = demo::run(&cfg, &mut |line| eprintln!("demo: {line}"))?;
            print_summary(&cfg, &report);
            if !report.passed() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::GenImage {
            size,
            seed,
            out,
            v2,
            small_edits,
        } => {
            write_image(seed, size, BufWriter::new(File::create(&out)?))?;
            let plan = EditPlan::standard(size, seed, 0.05, small_edits);
            if let Some(v2) = v2 {
                plan.apply(
                    BufReader::new(File::open(&out)?),
                    BufWriter::new(File::create(v2)?),
                )?;
            }
            println!(
                "{}",
                serde_json::json!({ "size": size, "seed": seed, "edits": plan.edits.len(), "changed_bytes": plan.changed_bytes() })
            );
        }
        Cmd::MeshBench {
            work,
            nodes,
            sites,
            size,
            timeout_secs,
        } => {
            if std::fs::read_dir(&work).is_ok_and(|mut d| d.next().is_some()) {
                anyhow::bail!("{} is not empty; choose another --work", work.display());
            }
            let cfg = fleetmesh_testnet::meshbench::BenchConfig {
                work,
                nodes,
                sites,
                size,
                timeout: std::time::Duration::from_secs(timeout_secs),
            };
            let report = fleetmesh_testnet::meshbench::run(
                &cfg,
                &demo::sibling_binary("fleetmesh-seed")?,
                &demo::sibling_binary("fleetmesh-node")?,
            )?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Cmd::Run {
            scenario,
            netns,
            work,
            json,
        } => {
            let s = fleetmesh_testnet::scenario::Scenario::load(&scenario, netns)?;
            fleetmesh_testnet::lab::catch_interrupts()?;
            let report = fleetmesh_testnet::scenario::run(
                &s,
                &work,
                netns,
                &demo::sibling_binary("fleetmesh-seed")?,
                &demo::sibling_binary("fleetmesh-node")?,
                &mut |line| eprintln!("run: {line}"),
            )?;
            let text = serde_json::to_string_pretty(&report)?;
            if let Some(path) = json {
                std::fs::write(&path, &text)
                    .with_context(|| format!("write {}", path.display()))?;
            }
            println!("{text}");
            if !report.passed() {
                eprintln!("error: scenario {:?} did not hold", s.name);
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Sim {
            nodes,
            sites,
            seed,
            size,
            piece,
            wan_mbit,
            seed_mbit,
            drop,
            crashes,
            partitions,
            corrupt,
            no_manifest,
        } => {
            let mut cfg = fleetmesh_testnet::sim::SimConfig::new(nodes, sites, seed);
            cfg.image_bytes = size;
            cfg.piece_bytes = u32::try_from(piece)
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| anyhow::anyhow!("--piece {piece} must be 1 B-4 GiB"))?;
            for (name, mbit) in [("--wan-mbit", wan_mbit), ("--seed-mbit", seed_mbit)] {
                if !(mbit > 0.0 && mbit.is_finite()) {
                    anyhow::bail!("{name} {mbit} must be a positive rate");
                }
            }
            cfg.wan_bps = wan_mbit * 1e6 / 8.0;
            cfg.seed_bps = seed_mbit * 1e6 / 8.0;
            cfg.drop = drop;
            cfg.crashes = crashes;
            cfg.partitions = partitions;
            cfg.corrupt = corrupt;
            cfg.manifests = !no_manifest;
            let report = fleetmesh_testnet::sim::run(&cfg).map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.passed() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::ChunkSweep {
            size,
            seed,
            small_edits,
            avg,
            normalization,
        } => {
            let input = SweepInput::generate(size, seed, small_edits)?;
            println!(
                "{:>8} {:>5} {:>8} {:>8} {:>12} {:>8} {:>10} {:>9}",
                "AVG", "NORM", "CHUNKS", "NEW", "NEW BYTES", "DELTA", "MANIFEST", "TRANSFER"
            );
            for a in avg {
                for &n in &normalization {
                    let r = input.measure(a, n)?;
                    println!(
                        "{:>8} {:>5} {:>8} {:>8} {:>12} {:>8.3} {:>10} {:>9.3}",
                        r.avg,
                        r.normalization,
                        r.chunks,
                        r.new_chunks,
                        r.new_bytes,
                        r.delta_ratio,
                        r.manifest_bytes,
                        r.transfer_ratio
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(cfg: &demo::DemoConfig, report: &demo::DemoReport) {
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    println!("image              {} bytes", report.image_bytes);
    for (p, t) in report.published.iter().zip(&report.publish_seconds) {
        println!(
            "publish v{:<9} {t:.2} s, {} new chunk bytes",
            p["version"].as_str().unwrap_or("?"),
            p["new_bytes"]
        );
    }
    println!("compression        stored/image {:.3}", report.stored_ratio);
    println!(
        "delta v2           new chunk bytes / changed bytes {:.3}",
        report.delta_ratio
    );
    for d in &report.distribution {
        println!(
            "distribute v{:<6} {:.2} s to {} nodes; seed sent {:.2}x the release; WAN per site {}; most a node pulled {:.2}x",
            d.version,
            d.seconds,
            d.node_bytes_down.len(),
            ratio(d.seed_egress_bytes, d.wire_bytes),
            d.site_wan_bytes
                .iter()
                .map(|(s, b)| format!("{s} {:.2}x", ratio(*b, d.wire_bytes)))
                .collect::<Vec<_>>()
                .join(", "),
            ratio(
                d.node_bytes_down.iter().copied().max().unwrap_or(0),
                d.wire_bytes
            )
        );
    }
    println!(
        "install v1         every node committed {:.1} s after its window opened",
        report.v1_install_seconds
    );
    println!(
        "install v2         every node committed {:.1} s after its distribution was checked (installs start as soon as a node has it)",
        report.v2_install_seconds
    );
    println!("v3 canary          {}", report.canary.join(", "));
    for n in &report.nodes {
        println!(
            "  {} {:<7} slot {} runs {} ({})",
            n.name,
            n.site,
            n.active_slot,
            n.booted_version.as_deref().unwrap_or("-"),
            n.update_state
        );
    }
    for c in &report.checks {
        println!(
            "[{}] {} ({})",
            if c.ok { " ok " } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    println!(
        "report             {} and {}",
        cfg.work.join("report.json").display(),
        cfg.work.join("progress.svg").display()
    );
}

//! `fleetmesh-testnet demo`: the local job a new user runs first.
//!
//! It drives real processes on 127.0.0.1: a seed and nodes in sites. The
//! seed signs a policy whose maintenance window is closed, publishes v1,
//! and the nodes fetch it over the mesh and wait. The operator opens the
//! window with a new policy and every node installs v1 into its inactive
//! (file) slot, boots it on trial and commits. A v2 with known edits moves
//! as a delta and installs. A v3 whose health check fails goes to a canary
//! wave, which rolls back by itself; the seed halts the rollout and no
//! other node touches its slots. Every step is checked; the report goes
//! to `report.json` and a plot of chunks held over time to `progress.svg`.

use anyhow::{bail, Context, Result};
use fleetmesh_node::mesh::status::MeshStatus;
use fleetmesh_protocol::ImageHash;
use fleetmesh_testnet::image::{write_image, EditPlan};
use fleetmesh_testnet::lab::{
    fleet, free_port, http_get, node_name, rollout_halted, wait_until, Lab, View,
};
use fleetmesh_testnet::meshbench::node_image_hash;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MARKER: &str = ".fleetmesh-demo";
/// The demo's releases: v1, its delta v2, and v3 that fails its health check.
const VERSIONS: [&str; 3] = ["1.0.0", "2.0.0", "3.0.0"];
/// Longest wait for any one step.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// How long after the window policy is applied the window opens.
const WINDOW_DELAY: u64 = 10;

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
    /// Nodes, spread round-robin over the sites.
    pub nodes: usize,
    /// Sites.
    pub sites: usize,
    /// Print the per-node progress lines (on a terminal; not when piped,
    /// where only the steps are printed).
    pub live: bool,
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
    /// `publish` output for each release.
    pub published: Vec<serde_json::Value>,
    /// Seconds each publish took.
    pub publish_seconds: Vec<f64>,
    /// Bytes the v2 edit plan changed.
    pub changed_bytes: u64,
    /// v2's new chunk bytes / changed bytes.
    pub delta_ratio: f64,
    /// v1's stored bytes / image bytes (compression).
    pub stored_ratio: f64,
    /// Distribution of each release to the nodes.
    pub distribution: Vec<Distribution>,
    /// Seconds from the window opening to every node committed to v1.
    pub v1_install_seconds: f64,
    /// Seconds from v2's distribution to every node committed to it.
    pub v2_install_seconds: f64,
    /// The nodes of v3's canary wave.
    pub canary: Vec<String>,
    /// Every node at the end.
    pub nodes: Vec<NodeOutcome>,
    /// Expectations.
    pub checks: Vec<Check>,
}

/// Where a node ended.
#[derive(Debug, Serialize)]
pub struct NodeOutcome {
    /// `nodeNN`.
    pub name: String,
    /// Its site.
    pub site: String,
    /// The running slot.
    pub active_slot: String,
    /// The running version.
    pub booted_version: Option<String>,
    /// Its last update state.
    pub update_state: String,
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
    /// Seconds since publish, and each node's share of chunks held.
    pub samples: Vec<(f64, Vec<f64>)>,
}

impl DemoReport {
    /// True if every expectation held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// Runs the demo, printing progress lines through `say`.
pub fn run(cfg: &DemoConfig, say: &mut dyn FnMut(&str)) -> Result<DemoReport> {
    if cfg.sites == 0 || cfg.nodes < 2 * cfg.sites {
        bail!(
            "--nodes {} --sites {}: the demo needs at least two nodes per site",
            cfg.nodes,
            cfg.sites
        );
    }
    let seed_bin = sibling_binary("fleetmesh-seed")?;
    let node_bin = sibling_binary("fleetmesh-node")?;
    // Declared before the lab, so dropped after it: removed once every
    // process has stopped.
    let _earlier = prepare_work_dir(&cfg.work)?;
    let images: Vec<PathBuf> = VERSIONS
        .iter()
        .map(|v| cfg.work.join(format!("v{v}.img")))
        .collect();
    say(&format!(
        "generating a {} MiB image, its v2 (5% rewritten, {} small edits) and v3",
        cfg.size >> 20,
        cfg.small_edits
    ));
    write_image(
        cfg.seed,
        cfg.size,
        BufWriter::new(File::create(&images[0])?),
    )?;
    let plan = EditPlan::standard(cfg.size, cfg.seed, 0.05, cfg.small_edits);
    plan.apply(
        BufReader::new(File::open(&images[0])?),
        BufWriter::new(File::create(&images[1])?),
    )?;
    let v2_len = fs::metadata(&images[1])?.len();
    EditPlan::standard(v2_len, cfg.seed + 1, 0.01, cfg.small_edits / 4).apply(
        BufReader::new(File::open(&images[1])?),
        BufWriter::new(File::create(&images[2])?),
    )?;

    let mut lab = Lab::new(&cfg.work, &seed_bin, &node_bin)?;
    let dashboard: std::net::SocketAddr = (std::net::Ipv4Addr::LOCALHOST, free_port()?).into();
    lab.start_seed_with(&["--http", &dashboard.to_string()])?;
    say(&format!(
        "seed {} serving at {}; dashboard at http://{dashboard}/",
        lab.seed_dir.display(),
        lab.seed_addr.as_deref().unwrap_or("?")
    ));
    // Every node's health check fails on v3 (a bad release); the first
    // node of each site is in v3's canary ring.
    let sites: Vec<String> = (0..cfg.sites)
        .map(|s| format!("site-{}", (b'a' + (s % 26) as u8) as char))
        .collect();
    let health = "update.health = \"command\"\n\
                  update.health_command = [\"sh\", \"-c\", \"test \\\"$FLEETMESH_TARGET_VERSION\\\" != 3.0.0\"]\n\
                  update.health_timeout_secs = 30";
    for i in 0..cfg.nodes {
        let ring = if i < cfg.sites {
            "\nmesh.labels = { ring = \"canary\" }"
        } else {
            ""
        };
        lab.add_node(&sites[i % cfg.sites], &format!("{health}{ring}"))?;
    }
    let canary: Vec<usize> = (0..cfg.sites).collect();
    let far = fleetmesh_node::cli::unix_now().0 + 86_400;
    apply_policy(&lab, far, "the maintenance window opens tomorrow")?;
    say("policy 1 signed: the maintenance window opens tomorrow");
    for i in 0..lab.nodes.len() {
        lab.start_node(i, &[])?;
    }
    say(&format!(
        "{} nodes started in {} sites (logs: {}/node*.log)",
        lab.nodes.len(),
        sites.len(),
        cfg.work.display()
    ));
    lab.wait_connected(Duration::from_secs(120))?;
    say("all nodes connected to each other and the seed");

    let mut published = Vec::new();
    let mut publish_seconds = Vec::new();
    let mut distribution = Vec::new();
    let mut checks = Vec::new();
    let mut release = |lab: &Lab, n: usize, say: &mut dyn FnMut(&str)| -> Result<()> {
        // Nodes restart to boot a new slot: let them find each other again,
        // and publish to a settled fleet: a node in its first seconds
        // leaves fetching for its site to the others (docs/mesh.md).
        lab.wait_connected(Duration::from_secs(120))?;
        std::thread::sleep(fleetmesh_node::mesh::FIND_SITE);
        let (p, t) = timed(|| lab.publish(&images[n], VERSIONS[n]))?;
        say(&format!(
            "published v{} in {t:.2} s: {} new chunks, {} new bytes",
            VERSIONS[n], p["new_chunks"], p["new_bytes"]
        ));
        let d = distribute(lab, &images[n], &p, VERSIONS[n], &sites, cfg.live, say)?;
        published.push(p);
        publish_seconds.push(t);
        distribution.push(d);
        Ok(())
    };

    // v1: downloaded and staged everywhere, installed nowhere.
    release(&lab, 0, say)?;
    let waiting = watch(&lab, cfg.live, say, Duration::from_secs(60), |views| {
        views.iter().all(|v| v.state == "waiting_for_window")
    });
    checks.push(step_check(
        "with the window closed, every node stages v1 and waits",
        &waiting,
        || "all waiting".into(),
    ));

    // The operator opens the window.
    let opens = fleetmesh_node::cli::unix_now().0 + WINDOW_DELAY;
    apply_policy(&lab, opens, "the maintenance window opens now")?;
    say(&format!(
        "policy 2 signed: the maintenance window opens in {WINDOW_DELAY} s"
    ));
    let mut early = Vec::new();
    let start = Instant::now();
    let installed = watch(&lab, cfg.live, say, STEP_TIMEOUT, |views| {
        let now = fleetmesh_node::cli::unix_now().0;
        for v in views {
            if now < opens && v.state != "waiting_for_window" && !early.contains(&v.name) {
                early.push(v.name.clone());
            }
        }
        views.iter().all(|v| v.committed(VERSIONS[0]))
    });
    let v1_install_seconds = start.elapsed().as_secs_f64() - WINDOW_DELAY as f64;
    checks.push(check(
        "no node installs before its window opens",
        early.is_empty(),
        if early.is_empty() {
            "none early".to_string()
        } else {
            format!("early: {}", early.join(", "))
        },
    ));
    checks.push(step_check(
        "every node installs v1 in the window, boots it and commits",
        &installed,
        || format!("{v1_install_seconds:.1} s after the window opened"),
    ));
    installed?;

    // v2: a delta, installed at once (the window is open).
    release(&lab, 1, say)?;
    let start = Instant::now();
    let installed = watch(&lab, cfg.live, say, STEP_TIMEOUT, |views| {
        views.iter().all(|v| v.committed(VERSIONS[1]))
    });
    let v2_install_seconds = start.elapsed().as_secs_f64();
    checks.push(step_check(
        "every node installs v2 and commits",
        &installed,
        || format!("in {v2_install_seconds:.1} s"),
    ));
    installed?;

    // v3: the canary fails its health check and rolls back; the seed halts.
    let slots_before: Vec<String> = fleet(&lab).into_iter().map(|v| v.slot).collect();
    release(&lab, 2, say)?;
    let canary_names: Vec<String> = canary.iter().map(|&i| node_name(i)).collect();
    say(&format!(
        "v3's canary wave is {}; its health check fails on every node",
        canary_names.join(", ")
    ));
    let halted = watch(&lab, cfg.live, say, STEP_TIMEOUT, |views| {
        // The halt may come before a canary node's turn: it then stays put.
        canary.iter().any(|&i| views[i].state == "rolled_back")
            && views.iter().all(View::settled)
            && rollout_halted(&lab, VERSIONS[2])
    });
    checks.push(step_check(
        "v3's canary rolls back by itself and the seed halts the rollout",
        &halted,
        || "halted at the canary".into(),
    ));
    // Give a wrongly admitted node time to act before the final look.
    std::thread::sleep(Duration::from_secs(10));
    let views = fleet(&lab);
    let on_v2 = views
        .iter()
        .filter(|v| v.booted.as_deref() == Some(VERSIONS[1]))
        .count();
    checks.push(check(
        "every node runs v2 at the end",
        on_v2 == views.len(),
        format!("{on_v2} of {}", views.len()),
    ));
    let touched: Vec<&str> = views
        .iter()
        .enumerate()
        .filter(|(i, v)| {
            let staged_only = matches!(v.state.as_str(), "staged" | "waiting_for_window");
            !canary.contains(i)
                && (v.slot != slots_before[*i]
                    || (v.target.as_deref() == Some(VERSIONS[2]) && !staged_only))
        })
        .map(|(_, v)| v.name.as_str())
        .collect();
    checks.push(check(
        "no node outside the canary tries v3",
        touched.is_empty(),
        if touched.is_empty() {
            "none".to_string()
        } else {
            touched.join(", ")
        },
    ));
    checks.push(dashboard_check(dashboard, cfg.nodes));
    let node_sites: Vec<String> = lab.nodes.iter().map(|n| n.site.clone()).collect();
    lab.kill_seed();
    let verified = lab.seed_cmd(&["verify"]);
    drop(lab);

    let num = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    let changed = plan.changed_bytes();
    let delta_ratio = num(&published[1], "new_bytes") as f64 / changed as f64;
    let stored_ratio = num(&published[0], "stored_bytes") as f64 / cfg.size as f64;
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    let (d1, d2) = (&distribution[0], &distribution[1]);
    let max_down = |d: &Distribution| d.node_bytes_down.iter().copied().max().unwrap_or(0);
    let all_verified = distribution.iter().all(|d| d.images_verified == cfg.nodes);
    checks.extend([
        check(
            "every node reassembled every image exactly",
            all_verified,
            distribution
                .iter()
                .map(|d| format!("v{} {}/{}", d.version, d.images_verified, cfg.nodes))
                .collect::<Vec<_>>()
                .join(", "),
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
            d1.site_wan_bytes
                .iter()
                .map(|(s, b)| format!("{s} {:.2}x", ratio(*b, d1.wire_bytes)))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        check(
            "a node downloads about the delta for v2 (<= 1.5x its new chunks)",
            ratio(max_down(d2), d2.wire_bytes) <= 1.5,
            format!("{} bytes for {} new", max_down(d2), d2.wire_bytes),
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
    ]);
    let nodes = views
        .into_iter()
        .map(|v| NodeOutcome {
            name: v.name,
            site: v.site,
            active_slot: v.slot,
            booted_version: v.booted,
            update_state: v.state,
        })
        .collect();
    let report = DemoReport {
        image_bytes: cfg.size,
        published,
        publish_seconds,
        changed_bytes: changed,
        delta_ratio,
        stored_ratio,
        distribution,
        v1_install_seconds,
        v2_install_seconds,
        canary: canary_names,
        nodes,
        checks,
    };
    fs::write(
        cfg.work.join("report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    fs::write(
        cfg.work.join("progress.svg"),
        progress_svg(&report.distribution, &sites, &node_sites),
    )?;
    Ok(report)
}

/// Signs and installs the demo's policy: one window starting at `opens`
/// for an hour, v1 and v2 to every node, v3 to the canary ring first.
fn apply_policy(lab: &Lab, opens: u64, why: &str) -> Result<()> {
    let at = |t: u64| -> Result<String> {
        Ok(jiff::Timestamp::from_second(t as i64)
            .context("window time")?
            .to_string())
    };
    let text = format!(
        "# {why}\n\
         [[group]]\nname = \"canary\"\nselector = {{ ring = \"canary\" }}\n\n\
         [[window]]\nname = \"maintenance\"\ntz = \"UTC\"\nstart = \"{}\"\nend = \"{}\"\n\n\
         [[rollout]]\nversion = \"1.0.0\"\n[[rollout.wave]]\nname = \"all\"\npercent = 100\n\n\
         [[rollout]]\nversion = \"2.0.0\"\n[[rollout.wave]]\nname = \"all\"\npercent = 100\n\n\
         [[rollout]]\nversion = \"3.0.0\"\n\
         [[rollout.wave]]\nname = \"canary\"\ngroup = \"canary\"\nsuccess_pct = 100\nerror_pct = 1\n\
         [[rollout.wave]]\nname = \"all\"\npercent = 100\n",
        at(opens)?,
        at(opens + 3600)?
    );
    let path = lab.dir.join("policy.toml");
    fs::write(&path, text)?;
    lab.seed_cmd(&["policy", "apply", path_str(&path)?])?;
    Ok(())
}

/// Polls the fleet until `done`, printing a line per site whenever a
/// node's state changes.
fn watch(
    lab: &Lab,
    live: bool,
    say: &mut dyn FnMut(&str),
    timeout: Duration,
    mut done: impl FnMut(&[View]) -> bool,
) -> Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    let finished = wait_until(timeout, || {
        let views = fleet(lab);
        let line = table(views.iter().map(|v| (v.site.as_str(), v.short())));
        if line != last && live {
            say(&format!("{:6.1}s {line}", start.elapsed().as_secs_f64()));
            last = line;
        }
        done(&views).then_some(())
    });
    finished.with_context(|| {
        format!(
            "not reached within {timeout:?}: {}",
            table(fleet(lab).iter().map(|v| (v.site.as_str(), v.short())))
        )
    })
}

/// One compact line of (site, cell) pairs: each site's cells in order.
fn table<'a>(cells: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let mut by_site: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (site, cell) in cells {
        by_site.entry(site).or_default().push(cell);
    }
    by_site
        .iter()
        .map(|(s, vs)| format!("{s} [{}]", vs.join(" ")))
        .collect::<Vec<_>>()
        .join("  ")
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let start = Instant::now();
    let v = f()?;
    Ok((v, start.elapsed().as_secs_f64()))
}

/// Waits for every node to have `version`, printing and sampling their
/// progress, then checks their images and collects the bytes it took.
fn distribute(
    lab: &Lab,
    image: &Path,
    published: &serde_json::Value,
    version: &str,
    sites: &[String],
    live: bool,
    say: &mut dyn FnMut(&str),
) -> Result<Distribution> {
    let start = Instant::now();
    let held = |s: &Option<MeshStatus>| -> f64 {
        s.as_ref()
            .and_then(|s| s.releases.iter().find(|r| r.version == version))
            .map_or(0.0, |r| r.chunks_have as f64 / r.chunks_total.max(1) as f64)
    };
    let mut samples: Vec<(f64, Vec<f64>)> = Vec::new();
    let mut last_print = Instant::now();
    let complete = wait_until(STEP_TIMEOUT, || {
        let statuses: Vec<Option<MeshStatus>> =
            (0..lab.nodes.len()).map(|i| lab.node_status(i)).collect();
        let shares: Vec<f64> = statuses.iter().map(held).collect();
        let t = start.elapsed().as_secs_f64();
        if samples.last().is_none_or(|(_, s)| *s != shares) {
            samples.push((t, shares.clone()));
        }
        let done = statuses.iter().all(|s| {
            s.as_ref().is_some_and(|s| {
                s.releases
                    .iter()
                    .any(|r| r.version == version && r.complete)
            })
        });
        if live && (done || last_print.elapsed() >= Duration::from_secs(1)) {
            last_print = Instant::now();
            let line = table(
                lab.nodes
                    .iter()
                    .zip(&shares)
                    .map(|(n, s)| (n.site.as_str(), format!("{:3.0}%", s * 100.0))),
            );
            say(&format!("{t:6.1}s v{version} {line}"));
        }
        done.then_some(())
    });
    complete.with_context(|| format!("v{version} did not reach every node in {STEP_TIMEOUT:?}"))?;
    let took = start.elapsed();
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
    let mut site_wan: Vec<(String, u64)> = sites.iter().map(|s| (s.clone(), 0)).collect();
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
        samples,
    })
}

/// An SVG with one panel per release: each node's share of chunks held
/// against seconds since publish, coloured by site.
fn progress_svg(dists: &[Distribution], sites: &[String], node_sites: &[String]) -> String {
    const COLOURS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let (w, h, pad) = (640.0, 180.0, 40.0);
    let total_h = dists.len() as f64 * (h + pad) + pad;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{total_h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        w + 2.0 * pad
    );
    for (k, d) in dists.iter().enumerate() {
        let top = pad + k as f64 * (h + pad);
        let t_max = d.seconds.max(0.1);
        let _ = writeln!(
            svg,
            "<text x=\"{pad}\" y=\"{}\">v{}: chunks held per node over {:.1} s (y: 0-100%)</text>\n\
             <rect x=\"{pad}\" y=\"{top}\" width=\"{w}\" height=\"{h}\" fill=\"none\" stroke=\"#999\"/>",
            top - 8.0,
            d.version,
            t_max
        );
        for (node, node_site) in node_sites.iter().enumerate() {
            let points: Vec<String> = d
                .samples
                .iter()
                .filter_map(|(t, shares)| {
                    let s = shares.get(node)?;
                    Some(format!(
                        "{:.1},{:.1}",
                        pad + w * (t / t_max).min(1.0),
                        top + h * (1.0 - s)
                    ))
                })
                .collect();
            let site = sites.iter().position(|s| s == node_site).unwrap_or(0);
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
                COLOURS[site % COLOURS.len()],
                points.join(" ")
            );
        }
    }
    for (i, s) in sites.iter().enumerate() {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" fill=\"{}\">{s}</text>",
            pad + 80.0 * i as f64,
            total_h - 10.0,
            COLOURS[i % COLOURS.len()]
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A step that waited for the fleet: held if it finished, with `detail`,
/// else failed with the wait's error.
/// The seed's dashboard is served and its status lists every node.
fn dashboard_check(addr: std::net::SocketAddr, nodes: usize) -> Check {
    let page = http_get(addr, "/");
    let listed = http_get(addr, "/status").ok().and_then(|(_, body)| {
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(v["fleet"]["nodes"].as_array()?.len())
    });
    let served = matches!(&page, Ok((200, body)) if body.contains("fleetmesh seed"));
    check(
        "the seed's dashboard shows every node",
        served && listed == Some(nodes),
        format!(
            "page {}, {} of {nodes} nodes listed",
            if served { "served" } else { "not served" },
            listed.unwrap_or(0)
        ),
    )
}

fn step_check(name: &str, step: &Result<()>, detail: impl FnOnce() -> String) -> Check {
    match step {
        Ok(()) => check(name, true, detail()),
        Err(e) => check(name, false, e),
    }
}

fn check(name: &str, ok: bool, detail: impl ToString) -> Check {
    Check {
        name: name.into(),
        ok,
        detail: detail.to_string(),
    }
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

/// Makes `work` an empty demo directory. An earlier demo there is moved
/// aside and removed only when this one ends ([`Earlier`]): deleting tens
/// of thousands of chunk files just before the nodes create as many slows
/// file creation (ext4 without a journal skips recently freed inodes one by
/// one), which would show up as a slower distribution.
fn prepare_work_dir(work: &Path) -> Result<Earlier> {
    let name = work
        .file_name()
        .with_context(|| format!("--work {}: name a directory (not / or ..)", work.display()))?;
    let aside = work.with_file_name(format!("{}.old", name.to_string_lossy()));
    let empty_dir = |d: &Path| fs::read_dir(d).is_ok_and(|mut e| e.next().is_none());
    for dir in [&aside, work] {
        if dir.exists() && !dir.join(MARKER).is_file() && !empty_dir(dir) {
            bail!(
                "{} is neither an empty directory nor an earlier demo; choose another --work",
                dir.display()
            );
        }
    }
    if aside.exists() {
        fs::remove_dir_all(&aside)
            .with_context(|| format!("remove earlier demo {}", aside.display()))?;
    }
    let earlier = if work.join(MARKER).is_file() {
        fs::rename(work, &aside).with_context(|| {
            format!(
                "move earlier demo {} to {}",
                work.display(),
                aside.display()
            )
        })?;
        Earlier(Some(aside))
    } else {
        Earlier(None)
    };
    fs::create_dir_all(work).with_context(|| format!("create {}", work.display()))?;
    fs::write(
        work.join(MARKER),
        b"fleetmesh-testnet demo working directory\n",
    )?;
    Ok(earlier)
}

/// An earlier demo's directory, moved aside; removed when dropped.
struct Earlier(Option<PathBuf>);

impl Drop for Earlier {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            if let Err(e) = fs::remove_dir_all(&dir) {
                eprintln!("demo: could not remove earlier demo {}: {e}", dir.display());
            }
        }
    }
}

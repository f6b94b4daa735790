//! `fleetmesh-testnet run --scenario FILE.toml`: a topology, a release and
//! timed faults, run as real processes on 127.0.0.1, with the bytes and
//! times measured and every node's image checked.
//!
//! ```toml
//! name = "kill and restart"
//! image_size = "16MiB"
//! timeout_secs = 300
//! corrupt_nodes = [2]          # serve every chunk corrupted
//!
//! [[site]]
//! name = "a"
//! nodes = 3
//! download_bytes_per_sec = 0   # each node's cap; 0 is none
//!
//! [[fault]]
//! at_secs = 1.0                # after publish
//! action = "kill"              # kill | restart | seed_offline
//! node = 1
//! ```

use crate::image::write_image;
use crate::lab::Lab;
use crate::meshbench::node_image_hash;
use anyhow::{bail, Context, Result};
use fleetmesh_protocol::ImageHash;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What it is about.
    pub name: String,
    /// Image size (B, KiB, MiB, GiB).
    pub image_size: String,
    /// Give up after this long.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Sites and their nodes; nodes are numbered site by site from 0.
    pub site: Vec<SiteSpec>,
    /// Nodes that serve corrupt chunks (they fetch honestly first).
    #[serde(default)]
    pub corrupt_nodes: Vec<usize>,
    /// Timed faults.
    #[serde(default)]
    pub fault: Vec<Fault>,
}

fn default_timeout() -> u64 {
    600
}

/// One site.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    /// Its label.
    pub name: String,
    /// How many nodes.
    pub nodes: usize,
    /// Each node's download cap in bytes/s (0: none), for slow sites.
    #[serde(default)]
    pub download_bytes_per_sec: u64,
}

/// A fault at a time after publish.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Seconds after publish.
    pub at_secs: f64,
    /// What happens.
    pub action: Action,
    /// The node, for `kill` and `restart`.
    pub node: Option<usize>,
}

/// What a fault does.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// SIGKILL a node.
    Kill,
    /// Start a killed node again.
    Restart,
    /// SIGKILL the seed for the rest of the run.
    SeedOffline,
}

impl Scenario {
    /// Reads and checks a scenario file; errors name the file and the key.
    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read scenario {}", path.display()))?;
        let s: Scenario = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {}",
                path.display(),
                e.message().lines().next().unwrap_or("invalid")
            )
        })?;
        s.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(s)
    }

    fn nodes(&self) -> usize {
        self.site.iter().map(|s| s.nodes).sum()
    }

    fn validate(&self) -> Result<(), String> {
        crate::parse_size(&self.image_size).map_err(|e| format!("image_size: {e}"))?;
        if self.site.is_empty() || self.site.iter().any(|s| s.nodes == 0) {
            return Err("every [[site]] needs nodes >= 1, and there must be one".into());
        }
        let n = self.nodes();
        if n > 64 {
            return Err(format!("{n} nodes: at most 64 run as processes here"));
        }
        if let Some(&c) = self.corrupt_nodes.iter().find(|&&c| c >= n) {
            return Err(format!(
                "corrupt_nodes: node {c} does not exist (0-{})",
                n - 1
            ));
        }
        for (i, f) in self.fault.iter().enumerate() {
            if !(f.at_secs >= 0.0 && f.at_secs.is_finite()) {
                return Err(format!("fault {}: at_secs must be >= 0", i + 1));
            }
            match (f.action, f.node) {
                (Action::Kill | Action::Restart, Some(k)) if k < n => {}
                (Action::Kill | Action::Restart, _) => {
                    return Err(format!("fault {}: needs node = 0-{}", i + 1, n - 1))
                }
                (Action::SeedOffline, None) => {}
                (Action::SeedOffline, Some(_)) => {
                    return Err(format!("fault {}: seed_offline takes no node", i + 1))
                }
            }
        }
        Ok(())
    }
}

/// A fault as it happened.
#[derive(Debug, Serialize)]
pub struct Applied {
    /// The fault.
    pub fault: Fault,
    /// Seconds after publish it was applied.
    pub at_secs: f64,
}

/// What the run measured.
#[derive(Debug, Serialize)]
pub struct ScenarioReport {
    /// The scenario's name.
    pub name: String,
    /// Image size.
    pub image_bytes: u64,
    /// The release's stored (wire) bytes.
    pub wire_bytes: u64,
    /// Seconds from publish to every running honest node complete.
    pub completion_secs: f64,
    /// Seed egress / wire bytes.
    pub seed_egress_ratio: f64,
    /// Per site: bytes its nodes pulled from outside it / wire bytes.
    pub site_wan_ratio: Vec<(String, f64)>,
    /// Faults applied.
    pub faults: Vec<Applied>,
    /// Honest running nodes whose reassembled image matched.
    pub images_verified: usize,
    /// Honest running nodes.
    pub honest_running: usize,
    /// Per corrupt node: how many honest running nodes banned it.
    pub corrupt_banned_by: Vec<(usize, usize)>,
}

impl ScenarioReport {
    /// True if every honest running node has the exact image (nothing
    /// corrupt got in) and every corrupt node was caught by someone.
    pub fn passed(&self) -> bool {
        self.images_verified == self.honest_running
            && self.corrupt_banned_by.iter().all(|&(_, by)| by > 0)
    }
}

/// Runs `s` in the lab directory `work` (which must not exist or be empty).
pub fn run(
    s: &Scenario,
    work: &Path,
    seed_bin: &Path,
    node_bin: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<ScenarioReport> {
    if std::fs::read_dir(work).is_ok_and(|mut d| d.next().is_some()) {
        bail!("{} is not empty; choose another --work", work.display());
    }
    let size = crate::parse_size(&s.image_size).map_err(anyhow::Error::msg)?;
    let mut lab = Lab::new(work, seed_bin, node_bin)?;
    let image: PathBuf = work.join("image-v1");
    write_image(1, size, std::fs::File::create(&image)?)?;
    lab.start_seed()?;
    for site in &s.site {
        let cap = format!(
            "mesh.download_bytes_per_sec = {}",
            site.download_bytes_per_sec
        );
        for _ in 0..site.nodes {
            lab.add_node(&site.name, &cap)?;
        }
    }
    let n = lab.nodes.len();
    let corrupt = |i: usize| s.corrupt_nodes.contains(&i);
    // Corrupt nodes get the image honestly first, so they have chunks to
    // serve when the others start.
    for i in (0..n).filter(|&i| corrupt(i)) {
        lab.start_node(i, &["--chaos-corrupt-uploads"])?;
    }
    let published = lab.publish(&image, "1.0.0")?;
    let bad: Vec<usize> = (0..n).filter(|&i| corrupt(i)).collect();
    if !bad.is_empty() {
        lab.wait_complete(&bad, "1.0.0", Duration::from_secs(s.timeout_secs))?;
        say(&format!("corrupt nodes {bad:?} have the release"));
    }
    for i in (0..n).filter(|&i| !corrupt(i)) {
        lab.start_node(i, &[])?;
    }
    say(&format!("{n} nodes started in {} sites", s.site.len()));
    let start = Instant::now();
    let mut faults: Vec<Fault> = s.fault.clone();
    faults.sort_by(|a, b| a.at_secs.total_cmp(&b.at_secs));
    let mut applied = Vec::new();
    let mut running = vec![true; n];
    let deadline = start + Duration::from_secs(s.timeout_secs);
    loop {
        let t = start.elapsed().as_secs_f64();
        while faults.first().is_some_and(|f| f.at_secs <= t) {
            let f = faults.remove(0);
            match (f.action, f.node) {
                (Action::Kill, Some(k)) => {
                    lab.kill_node(k);
                    running[k] = false;
                }
                (Action::Restart, Some(k)) => {
                    if !running[k] {
                        let extra: &[&str] = if corrupt(k) {
                            &["--chaos-corrupt-uploads"]
                        } else {
                            &[]
                        };
                        lab.start_node(k, extra)?;
                        running[k] = true;
                    }
                }
                _ => lab.kill_seed(),
            }
            say(&format!("{t:6.1}s fault {:?} {:?}", f.action, f.node));
            applied.push(Applied {
                fault: f,
                at_secs: t,
            });
        }
        let honest: Vec<usize> = (0..n).filter(|&i| running[i] && !corrupt(i)).collect();
        if faults.is_empty() && honest.iter().all(|&i| lab.node_complete(i, "1.0.0")) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "scenario {:?}: not every running node had the release after {} s",
                s.name,
                s.timeout_secs
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let completion = start.elapsed().as_secs_f64();
    say(&format!(
        "every running honest node complete at {completion:.1} s"
    ));
    let id = published["release_id"]
        .as_str()
        .context("publish summary")?;
    let wire = published["stored_bytes"]
        .as_u64()
        .context("publish summary")?;
    let expected = ImageHash::from(blake3::hash(&std::fs::read(&image)?));
    let honest: Vec<usize> = (0..n).filter(|&i| running[i] && !corrupt(i)).collect();
    std::thread::sleep(Duration::from_millis(1500));
    let mut verified = 0;
    let mut banned_by: Vec<(usize, usize)> = bad.iter().map(|&b| (b, 0)).collect();
    let mut wan: Vec<(String, u64)> = s.site.iter().map(|x| (x.name.clone(), 0)).collect();
    for &i in &honest {
        if node_image_hash(&lab.nodes[i].dir, id)? == expected {
            verified += 1;
        }
        let status = lab.node_status(i).context("node status")?;
        for (b, by) in &mut banned_by {
            if status.banned.contains(&lab.nodes[*b].peer_id) {
                *by += 1;
            }
        }
        if let Some(w) = wan.iter_mut().find(|(s, _)| *s == lab.nodes[i].site) {
            w.1 += status.wan_in_bytes();
        }
    }
    let seed_egress = lab.seed_status().map_or(0, |st| st.egress_bytes());
    let ratio = |b: u64| b as f64 / wire.max(1) as f64;
    Ok(ScenarioReport {
        name: s.name.clone(),
        image_bytes: size,
        wire_bytes: wire,
        completion_secs: completion,
        seed_egress_ratio: ratio(seed_egress),
        site_wan_ratio: wan.into_iter().map(|(s, b)| (s, ratio(b))).collect(),
        faults: applied,
        images_verified: verified,
        honest_running: honest.len(),
        corrupt_banned_by: banned_by,
    })
}

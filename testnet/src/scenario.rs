//! `fleetmesh-testnet run --scenario FILE.toml [--netns]`: a topology, a
//! release and timed faults, run as real processes, with the bytes and
//! times measured and every node's image checked. On 127.0.0.1 sites are
//! labels and bytes are what the nodes count; with `--netns` every process
//! has its own network namespace, sites have shaped WAN links (see
//! [`crate::netns`]) and bytes also come from the links' counters.
//!
//! ```toml
//! name = "kill and restart"
//! image_size = "16MiB"
//! timeout_secs = 300
//! corrupt_nodes = [2]          # serve every chunk corrupted
//! seed_mbit = 50               # --netns: the seed's uplink
//! lan_mbit = 1000              # --netns: each node's LAN link (0: unshaped)
//! settle_secs = 0              # let the connected fleet settle before publish
//!
//! [[site]]
//! name = "a"
//! nodes = 3
//! download_bytes_per_sec = 0   # each node's cap; 0 is none
//! wan_mbit = 20                # --netns: the site's WAN link, each way
//!
//! [[release]]                 # optional; default: one release 1.0.0
//! version = "1.0.0"            # semver, each above the one before
//! install = true               # installed once everywhere (window open)
//!
//! [[release]]                  # published once the one before is done
//! version = "2.0.0"
//! changed = 0.05               # share of the previous image rewritten
//! install = true
//! fails_health = true          # its health check fails on every node
//!
//! [[fault]]
//! at_secs = 1.0                # after the first publish
//! action = "kill"              # kill | restart | seed_offline | partition | heal
//! node = 1                     # kill, restart
//! # site = "a"                 # partition, heal (--netns only)
//! ```

use crate::image::{write_image, EditPlan};
use crate::lab::{check_interrupted, fleet, rollout_halted, wait_until, Lab, View};
use crate::meshbench::node_image_hash;
use crate::netns::{Counters, Net, Topology};
use anyhow::{bail, Context, Result};
use fleetmesh_protocol::ImageHash;
use serde::{Deserialize, Serialize};
use std::io::{BufReader, BufWriter};
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
    /// Releases in publish order; none is one release 1.0.0, not installed.
    /// Completion, bytes and links are measured for the first.
    #[serde(default)]
    pub release: Vec<ReleaseSpec>,
    /// Seconds to let a connected fleet settle (start-up discovery and
    /// gossip traffic) before publishing; not with corrupt nodes.
    #[serde(default)]
    pub settle_secs: u64,
    /// `--netns`: the seed's uplink in Mbit/s (none: unshaped).
    pub seed_mbit: Option<f64>,
    /// `--netns`: each node's LAN link in Mbit/s (0: unshaped).
    #[serde(default = "default_lan")]
    pub lan_mbit: f64,
}

fn default_lan() -> f64 {
    1000.0
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
    /// `--netns`: its WAN link in Mbit/s, each way (none: unshaped).
    pub wan_mbit: Option<f64>,
}

/// One release of a scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSpec {
    /// Its version (semver), above the one before.
    pub version: String,
    /// Share of the previous release's image rewritten (not the first's).
    #[serde(default = "default_changed")]
    pub changed: f64,
    /// Every node installs it once it has it: the policy's window is open
    /// all run and its rollout is one wave of every node.
    #[serde(default)]
    pub install: bool,
    /// Its health check fails on every node: each node that installs it
    /// must roll back by itself, and the seed must halt its rollout.
    #[serde(default)]
    pub fails_health: bool,
}

fn default_changed() -> f64 {
    0.05
}

/// Most releases in one scenario.
const MAX_RELEASES: usize = 8;

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
    /// The site, for `partition` and `heal`.
    pub site: Option<String>,
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
    /// Cut a site's WAN link (`--netns`).
    Partition,
    /// Restore a site's WAN link.
    Heal,
}

impl Scenario {
    /// Reads and checks a scenario file for a run on 127.0.0.1 or in
    /// namespaces; errors name the file and the key.
    pub fn load(path: &Path, netns: bool) -> Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read scenario {}", path.display()))?;
        let s: Scenario = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {}",
                path.display(),
                e.message().lines().next().unwrap_or("invalid")
            )
        })?;
        s.validate(netns)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(s)
    }

    fn nodes(&self) -> usize {
        self.site.iter().map(|s| s.nodes).sum()
    }

    fn validate(&self, netns: bool) -> Result<(), String> {
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
        let positive = |r: f64| r > 0.0 && r.is_finite();
        if self.seed_mbit.is_some_and(|r| !positive(r)) {
            return Err("seed_mbit must be a positive rate".into());
        }
        if self.settle_secs > 0 && !self.corrupt_nodes.is_empty() {
            return Err("settle_secs: not with corrupt_nodes (they start first)".into());
        }
        if !(self.lan_mbit == 0.0 || positive(self.lan_mbit)) {
            return Err("lan_mbit must be a positive rate or 0".into());
        }
        for site in &self.site {
            if site.wan_mbit.is_some_and(|r| !positive(r)) {
                return Err(format!(
                    "site {}: wan_mbit must be a positive rate",
                    site.name
                ));
            }
        }
        if self.release.len() > MAX_RELEASES {
            return Err(format!("at most {MAX_RELEASES} [[release]]s"));
        }
        let mut last: Option<semver::Version> = None;
        for (i, r) in self.release.iter().enumerate() {
            let what = format!("release {}", i + 1);
            let v = semver::Version::parse(&r.version)
                .map_err(|e| format!("{what}: version {:?}: {e}", r.version))?;
            if last.as_ref().is_some_and(|l| &v <= l) {
                return Err(format!(
                    "{what}: version {v} must be above the release before it"
                ));
            }
            last = Some(v);
            if !(r.changed > 0.0 && r.changed <= 1.0) {
                return Err(format!("{what}: changed must be in (0, 1]"));
            }
            if r.fails_health && !r.install {
                return Err(format!("{what}: fails_health needs install = true"));
            }
        }
        for (i, f) in self.fault.iter().enumerate() {
            let what = format!("fault {}", i + 1);
            if !(f.at_secs >= 0.0 && f.at_secs.is_finite()) {
                return Err(format!("{what}: at_secs must be >= 0"));
            }
            let (needs_node, needs_site) = match f.action {
                Action::Kill | Action::Restart => (true, false),
                Action::SeedOffline => (false, false),
                Action::Partition | Action::Heal => (false, true),
            };
            match f.node {
                Some(k) if needs_node && k < n => {}
                _ if needs_node => return Err(format!("{what}: needs node = 0-{}", n - 1)),
                Some(_) => return Err(format!("{what}: {:?} takes no node", f.action)),
                None => {}
            }
            match &f.site {
                Some(name) if needs_site => {
                    if !self.site.iter().any(|s| &s.name == name) {
                        return Err(format!("{what}: no site {name:?}"));
                    }
                    if !netns {
                        return Err(format!("{what}: partition and heal need --netns"));
                    }
                }
                None if needs_site => return Err(format!("{what}: needs site = NAME")),
                Some(_) => return Err(format!("{what}: {:?} takes no site", f.action)),
                None => {}
            }
        }
        Ok(())
    }

    /// The releases to publish: the file's, or one 1.0.0 not installed.
    fn releases(&self) -> Vec<ReleaseSpec> {
        if !self.release.is_empty() {
            return self.release.clone();
        }
        vec![ReleaseSpec {
            version: "1.0.0".into(),
            changed: default_changed(),
            install: false,
            fails_health: false,
        }]
    }

    /// The link rates for `--netns`, in bits/s.
    fn topology(&self) -> Topology {
        let bps = |mbit: Option<f64>| mbit.map_or(0, |m| (m * 1e6) as u64);
        Topology {
            seed_bps: bps(self.seed_mbit),
            lan_bps: bps(Some(self.lan_mbit)),
            sites: self
                .site
                .iter()
                .map(|s| (s.name.clone(), s.nodes, bps(s.wan_mbit)))
                .collect(),
        }
    }

    /// The lower bound for `bytes` over the links that bound this run:
    /// all of them in namespaces, only the nodes' download caps on
    /// 127.0.0.1.
    fn t_min(&self, bytes: u64, netns: bool) -> Option<f64> {
        let byte_rate = |mbit: Option<f64>| mbit.filter(|_| netns).map(|m| m * 1e6 / 8.0);
        let lan = Some(self.lan_mbit).filter(|&m| m > 0.0);
        let node = self
            .site
            .iter()
            .filter(|s| s.download_bytes_per_sec > 0)
            .map(|s| s.download_bytes_per_sec as f64)
            .chain(byte_rate(lan))
            .reduce(f64::min);
        let wan: Vec<Option<f64>> = self.site.iter().map(|s| byte_rate(s.wan_mbit)).collect();
        crate::t_min(bytes, byte_rate(self.seed_mbit), &wan, node)
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

/// Bytes the links carried, from their interface counters (`--netns`):
/// every packet, headers and gossip included, over the release's wire bytes.
#[derive(Debug, Serialize)]
pub struct LinkBytes {
    /// What the seed's uplink sent.
    pub seed_tx_ratio: f64,
    /// Packets the seed's uplink shaper dropped.
    pub seed_drops: u64,
    /// Per site: into it over its WAN link, and out of it.
    pub site_wan: Vec<SiteLink>,
    /// About every second: the links' rates.
    pub series: Vec<LinkSample>,
    /// When the counters were read before publish and at completion, in
    /// seconds since the Unix epoch: the window to cut a packet capture
    /// to (bench/linkmix.sh).
    pub window_unix_secs: [f64; 2],
}

/// Link rates over about a second.
#[derive(Debug, Serialize)]
pub struct LinkSample {
    /// Seconds since publish.
    pub t: f64,
    /// The seed's uplink, Mbit/s.
    pub seed_mbit: f64,
    /// Into each site over its WAN link, Mbit/s.
    pub site_in_mbit: Vec<f64>,
    /// Out of each site over its WAN link, Mbit/s.
    pub site_out_mbit: Vec<f64>,
    /// Packets dropped into each site in that time (its WAN shaper).
    pub site_in_drops: Vec<u64>,
    /// Packets dropped out of each site in that time (its router's shaper).
    pub site_out_drops: Vec<u64>,
}

/// One site's WAN link.
#[derive(Debug, Serialize)]
pub struct SiteLink {
    /// The site.
    pub site: String,
    /// Into the site / wire bytes.
    pub in_ratio: f64,
    /// Out of the site / wire bytes.
    pub out_ratio: f64,
    /// Packets into the site its WAN shaper dropped (queue full).
    pub in_drops: u64,
    /// Packets out of the site its router's shaper dropped.
    pub out_drops: u64,
}

/// What the run measured.
#[derive(Debug, Serialize)]
pub struct ScenarioReport {
    /// The scenario's name.
    pub name: String,
    /// `netns` or `loopback`.
    pub mode: &'static str,
    /// Image size.
    pub image_bytes: u64,
    /// The release's stored (wire) bytes.
    pub wire_bytes: u64,
    /// Seconds from the end of publish to every running honest node
    /// complete (statuses are written every second).
    pub completion_secs: f64,
    /// The topology's lower bound for the wire bytes, where links bound it.
    pub t_min_secs: Option<f64>,
    /// completion / T_min.
    pub completion_over_t_min: Option<f64>,
    /// Chunk bytes the seed sent (as it counts them) / wire bytes.
    pub seed_egress_ratio: f64,
    /// Per site: chunk bytes its nodes pulled from outside it (as they
    /// count them) / wire bytes.
    pub site_wan_ratio: Vec<(String, f64)>,
    /// `--netns`: what the links' counters saw.
    pub links: Option<LinkBytes>,
    /// Faults applied.
    pub faults: Vec<Applied>,
    /// Honest running nodes whose reassembled image matched.
    pub images_verified: usize,
    /// Honest running nodes.
    pub honest_running: usize,
    /// Per corrupt node: how many honest running nodes banned it.
    pub corrupt_banned_by: Vec<(usize, usize)>,
    /// Every release: its distribution and install.
    pub releases: Vec<ReleaseOutcome>,
}

/// What became of one release.
#[derive(Debug, Serialize)]
pub struct ReleaseOutcome {
    /// Its version.
    pub version: String,
    /// Seconds from its publish until every running honest node held it.
    pub distributed_secs: f64,
    /// Running honest nodes whose reassembled image matched.
    pub images_verified: usize,
    /// Installed: running honest nodes that boot it, committed.
    pub committed: usize,
    /// Installed: nodes that failed its health check and rolled back.
    pub rolled_back: usize,
    /// The seed halted its rollout.
    pub halted: bool,
    /// What was expected of it happened.
    pub ok: bool,
    /// What was expected, and what happened.
    pub detail: String,
}

impl ScenarioReport {
    /// True if every honest running node has the exact image (nothing
    /// corrupt got in) and every corrupt node was caught by someone.
    pub fn passed(&self) -> bool {
        self.images_verified == self.honest_running
            && self.corrupt_banned_by.iter().all(|&(_, by)| by > 0)
            && self.releases.iter().all(|r| r.ok)
    }
}

/// The wall clock, in seconds since the Unix epoch.
fn unix_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Counters of the seed's uplink and every site's WAN link (`--netns`).
fn read_links(lab: &Lab) -> Result<Option<(Counters, Vec<Counters>)>> {
    lab.net.as_ref().map(Net::links).transpose()
}

/// Runs `s` in the lab directory `work` (which must not exist or be
/// empty), in network namespaces if `netns`.
pub fn run(
    s: &Scenario,
    work: &Path,
    netns: bool,
    seed_bin: &Path,
    node_bin: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<ScenarioReport> {
    if std::fs::read_dir(work).is_ok_and(|mut d| d.next().is_some()) {
        bail!("{} is not empty; choose another --work", work.display());
    }
    let size = crate::parse_size(&s.image_size).map_err(anyhow::Error::msg)?;
    let net = if netns {
        crate::netns::require_root()?;
        for ns in crate::netns::remove_stale()? {
            say(&format!("removed namespace {ns} left by an earlier run"));
        }
        let net = Net::create(&s.topology())?;
        say(&format!(
            "{} namespaces: seed, core router, {}, {}",
            net.namespaces().len(),
            count(s.site.len(), "site router"),
            count(net.nodes.len(), "node")
        ));
        Some(net)
    } else {
        if s.seed_mbit.is_some() || s.site.iter().any(|x| x.wan_mbit.is_some()) {
            say("seed_mbit and wan_mbit are enforced only with --netns");
        }
        None
    };
    let mut lab = Lab::new(work, seed_bin, node_bin)?;
    lab.net = net;
    let releases = s.releases();
    let images = write_images(work, size, &releases)?;
    let (image, first) = (&images[0], releases[0].version.as_str());
    lab.start_seed()?;
    let health = health_config(&releases);
    for site in &s.site {
        let cap = format!(
            "mesh.download_bytes_per_sec = {}{health}",
            site.download_bytes_per_sec
        );
        for _ in 0..site.nodes {
            lab.add_node(&site.name, &cap)?;
        }
    }
    if releases.iter().any(|r| r.install) {
        apply_install_policy(&lab, &releases)?;
    }
    let n = lab.nodes.len();
    let corrupt = |i: usize| s.corrupt_nodes.contains(&i);
    let bad: Vec<usize> = (0..n).filter(|&i| corrupt(i)).collect();
    let timeout = Duration::from_secs(s.timeout_secs);
    let sites = s.site.len();
    let (published, before, from) = if bad.is_empty() {
        // The fleet is up and connected before the release exists, as in
        // production.
        for i in 0..n {
            lab.start_node(i, &[])?;
        }
        lab.wait_connected(Duration::from_secs(60))?;
        say(&format!(
            "{} in {} connected",
            count(n, "node"),
            count(sites, "site")
        ));
        if s.settle_secs > 0 {
            say(&format!("settling for {} s", s.settle_secs));
            let settle = Instant::now() + Duration::from_secs(s.settle_secs);
            while Instant::now() < settle {
                check_interrupted()?;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let before = read_links(&lab)?;
        let from = unix_secs();
        (lab.publish(image, first)?, before, from)
    } else {
        // Corrupt nodes get the image honestly first, so that they have
        // chunks to serve when the others start.
        for &i in &bad {
            lab.start_node(i, &["--chaos-corrupt-uploads"])?;
        }
        let published = lab.publish(image, first)?;
        lab.wait_complete(&bad, first, timeout)?;
        say(&format!("corrupt nodes {bad:?} have the release"));
        let before = read_links(&lab)?;
        let from = unix_secs();
        for i in (0..n).filter(|&i| !corrupt(i)) {
            lab.start_node(i, &[])?;
        }
        say(&format!("{n} nodes started in {sites} sites"));
        (published, before, from)
    };
    let start = Instant::now();
    let mut last = before.clone().map(|b| (Instant::now(), b));
    let mut series = Vec::new();
    let mut faults: Vec<Fault> = s.fault.clone();
    faults.sort_by(|a, b| a.at_secs.total_cmp(&b.at_secs));
    let mut applied = Vec::new();
    let mut running = vec![true; n];
    let deadline = start + timeout;
    loop {
        check_interrupted()?;
        let t = start.elapsed().as_secs_f64();
        while faults.first().is_some_and(|f| f.at_secs <= t) {
            let f = faults.remove(0);
            let site = f
                .site
                .as_ref()
                .and_then(|name| s.site.iter().position(|x| &x.name == name));
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
                (Action::Partition | Action::Heal, _) => {
                    let net = lab.net.as_ref().context("partition needs --netns")?;
                    net.partition(site.context("no such site")?, f.action == Action::Partition)?;
                }
                _ => lab.kill_seed(),
            }
            let target = f
                .node
                .map(|k| format!("node{k:02}"))
                .or(f.site.clone())
                .unwrap_or_default();
            say(&format!("{t:6.1}s fault {:?} {target}", f.action));
            applied.push(Applied {
                fault: f,
                at_secs: t,
            });
        }
        let honest: Vec<usize> = (0..n).filter(|&i| running[i] && !corrupt(i)).collect();
        if faults.is_empty() && honest.iter().all(|&i| lab.node_complete(i, first)) {
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
        if let Some(prev) = &mut last {
            if prev.0.elapsed() >= Duration::from_secs(1) {
                let now = read_links(&lab)?.context("link counters")?;
                let dt = prev.0.elapsed().as_secs_f64();
                let mbit = |a: u64, b: u64| (b - a) as f64 * 8.0 / dt / 1e6;
                let sites = || prev.1 .1.iter().zip(&now.1);
                series.push(LinkSample {
                    t: start.elapsed().as_secs_f64(),
                    seed_mbit: mbit(prev.1 .0.tx, now.0.tx),
                    site_in_mbit: sites().map(|(a, b)| mbit(a.tx, b.tx)).collect(),
                    site_out_mbit: sites().map(|(a, b)| mbit(a.rx, b.rx)).collect(),
                    site_in_drops: sites().map(|(a, b)| b.drops - a.drops).collect(),
                    site_out_drops: sites().map(|(a, b)| b.out_drops - a.out_drops).collect(),
                });
                *prev = (Instant::now(), now);
            }
        }
    }
    let completion = start.elapsed().as_secs_f64();
    let after = read_links(&lab)?;
    let to = unix_secs();
    say(&format!(
        "every running honest node complete at {completion:.1} s"
    ));
    let id = published["release_id"]
        .as_str()
        .context("publish summary")?;
    let wire = published["stored_bytes"]
        .as_u64()
        .context("publish summary")?;
    let honest: Vec<usize> = (0..n).filter(|&i| running[i] && !corrupt(i)).collect();
    std::thread::sleep(Duration::from_millis(1500));
    let verified = images_exact(&lab, &honest, id, image)?;
    let mut banned_by: Vec<(usize, usize)> = bad.iter().map(|&b| (b, 0)).collect();
    let mut wan: Vec<(String, u64)> = s.site.iter().map(|x| (x.name.clone(), 0)).collect();
    for &i in &honest {
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
    let links = before
        .zip(after)
        .map(|((seed0, wan0), (seed1, wan1))| LinkBytes {
            series,
            seed_tx_ratio: ratio(seed1.tx - seed0.tx),
            seed_drops: seed1.drops - seed0.drops,
            site_wan: s
                .site
                .iter()
                .zip(wan0.iter().zip(&wan1))
                .map(|(site, (a, b))| SiteLink {
                    site: site.name.clone(),
                    in_ratio: ratio(b.tx - a.tx),
                    out_ratio: ratio(b.rx - a.rx),
                    in_drops: b.drops - a.drops,
                    out_drops: b.out_drops - a.out_drops,
                })
                .collect(),
            window_unix_secs: [from, to],
        });
    let t_min = s.t_min(wire, netns);
    let outcomes = follow_releases(
        &lab,
        s,
        &releases,
        &images,
        (completion, verified),
        &honest,
        say,
    )?;
    Ok(ScenarioReport {
        name: s.name.clone(),
        mode: if netns { "netns" } else { "loopback" },
        image_bytes: size,
        wire_bytes: wire,
        completion_secs: completion,
        t_min_secs: t_min,
        completion_over_t_min: t_min.map(|t| completion / t),
        seed_egress_ratio: ratio(seed_egress),
        site_wan_ratio: wan.into_iter().map(|(s, b)| (s, ratio(b))).collect(),
        links,
        faults: applied,
        images_verified: verified,
        honest_running: honest.len(),
        corrupt_banned_by: banned_by,
        releases: outcomes,
    })
}

/// Writes every release's image: the first from scratch, each next one by
/// rewriting a share of the one before.
fn write_images(work: &Path, size: u64, releases: &[ReleaseSpec]) -> Result<Vec<PathBuf>> {
    let mut images: Vec<PathBuf> = Vec::new();
    for (k, r) in releases.iter().enumerate() {
        let path = work.join(format!("image-{}", r.version));
        match images.last() {
            None => write_image(1, size, std::fs::File::create(&path)?)?,
            Some(prev) => {
                let len = std::fs::metadata(prev)?.len();
                EditPlan::standard(len, k as u64 + 1, r.changed, 16).apply(
                    BufReader::new(std::fs::File::open(prev)?),
                    BufWriter::new(std::fs::File::create(&path)?),
                )?
            }
        }
        images.push(path);
    }
    Ok(images)
}

/// Node config lines that fail the health check of the failing releases.
fn health_config(releases: &[ReleaseSpec]) -> String {
    let failing: Vec<&str> = releases
        .iter()
        .filter(|r| r.fails_health)
        .map(|r| r.version.as_str())
        .collect();
    if failing.is_empty() {
        return String::new();
    }
    format!(
        "\nupdate.health = \"command\"\n\
         update.health_command = [\"sh\", \"-c\", \"case \\\"$FLEETMESH_TARGET_VERSION\\\" in {}) exit 1;; esac\"]\n\
         update.health_timeout_secs = 30",
        failing.join("|")
    )
}

/// Signs a policy whose window is open for the whole run, with a rollout
/// of one wave to every node for each release to install.
fn apply_install_policy(lab: &Lab, releases: &[ReleaseSpec]) -> Result<()> {
    let now = fleetmesh_node::cli::unix_now().0 as i64;
    let at = |t: i64| -> Result<String> {
        Ok(jiff::Timestamp::from_second(t)
            .context("window time")?
            .to_string())
    };
    let mut text = format!(
        "[[window]]\nname = \"open\"\ntz = \"UTC\"\nstart = \"{}\"\nend = \"{}\"\n",
        at(now - 3600)?,
        at(now + 86_400)?
    );
    for r in releases.iter().filter(|r| r.install) {
        text += &format!(
            "\n[[rollout]]\nversion = \"{}\"\n[[rollout.wave]]\nname = \"all\"\npercent = 100\n",
            r.version
        );
    }
    let path = lab.dir.join("policy.toml");
    std::fs::write(&path, text)?;
    lab.seed_cmd(&["policy", "apply", &path.to_string_lossy()])?;
    Ok(())
}

/// How many of nodes `which` reassemble release `id` into exactly `image`.
fn images_exact(lab: &Lab, which: &[usize], id: &str, image: &Path) -> Result<usize> {
    let expected = ImageHash::from(blake3::hash(&std::fs::read(image)?));
    let mut exact = 0;
    for &i in which {
        exact += usize::from(node_image_hash(&lab.nodes[i].dir, id)? == expected);
    }
    Ok(exact)
}

/// The views of nodes `which`.
fn of<'a>(views: &'a [View], which: &[usize]) -> Vec<&'a View> {
    which.iter().filter_map(|&i| views.get(i)).collect()
}

/// Publishes the releases after the first, each once the one before is
/// done, and checks every install: a good release ends committed on every
/// running honest node; a failing one is rolled back by every node that
/// tried it, its rollout halts, and every node still runs the release
/// before it. `first` is the first release's (completion, images verified).
fn follow_releases(
    lab: &Lab,
    s: &Scenario,
    releases: &[ReleaseSpec],
    images: &[PathBuf],
    first: (f64, usize),
    honest: &[usize],
    say: &mut dyn FnMut(&str),
) -> Result<Vec<ReleaseOutcome>> {
    let timeout = Duration::from_secs(s.timeout_secs);
    let mut out = Vec::new();
    // What every node runs: the last release installed and committed.
    let mut good: Option<String> = fleet(lab).first().and_then(|v| v.booted.clone());
    for (k, r) in releases.iter().enumerate() {
        let v = r.version.as_str();
        let (distributed_secs, images_verified) = if k == 0 {
            first
        } else {
            let published = lab.publish(&images[k], v)?;
            let took = lab.wait_complete(honest, v, timeout)?.as_secs_f64();
            say(&format!("{v} on every running honest node in {took:.1} s"));
            let id = published["release_id"]
                .as_str()
                .context("publish summary")?;
            (took, images_exact(lab, honest, id, &images[k])?)
        };
        let mut o = ReleaseOutcome {
            version: r.version.clone(),
            distributed_secs,
            images_verified,
            committed: 0,
            rolled_back: 0,
            halted: false,
            ok: images_verified == honest.len(),
            detail: format!("{images_verified}/{} images exact", honest.len()),
        };
        if r.install {
            let done = wait_until(timeout, || {
                check_interrupted().ok()?;
                let views = fleet(lab);
                let ours = of(&views, honest);
                let done = if r.fails_health {
                    rollout_halted(lab, v)
                        && ours.iter().all(|n| n.settled())
                        && ours.iter().any(|n| n.rolled_back(v))
                } else {
                    ours.iter().all(|n| n.committed(v))
                };
                done.then_some(())
            });
            check_interrupted()?;
            if r.fails_health && done.is_some() {
                // Give a node wrongly admitted after the halt time to act.
                std::thread::sleep(Duration::from_secs(5));
            }
            let views = fleet(lab);
            let ours = of(&views, honest);
            o.committed = ours.iter().filter(|n| n.committed(v)).count();
            o.rolled_back = ours.iter().filter(|n| n.rolled_back(v)).count();
            o.halted = rollout_halted(lab, v);
            let n = ours.len();
            if r.fails_health {
                let on_good = ours.iter().filter(|n| n.booted == good).count();
                o.ok &= done.is_some() && o.halted && o.rolled_back > 0 && on_good == n;
                o.detail += &format!(
                    "; fails its health check: {} rolled back, rollout {}, {on_good}/{n} still run {}",
                    o.rolled_back,
                    if o.halted { "halted" } else { "not halted" },
                    good.as_deref().unwrap_or("the factory image")
                );
            } else {
                o.ok &= o.committed == n;
                o.detail += &format!("; {}/{n} committed", o.committed);
                good = Some(r.version.clone());
            }
            say(&format!("{v}: {}", o.detail));
        }
        out.push(o);
    }
    Ok(out)
}

/// `n` and the noun, plural unless `n` is 1: "1 node", "12 nodes".
fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

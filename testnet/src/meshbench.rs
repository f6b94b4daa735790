//! Distribution of one release over a lab of sites: how long until every
//! node has it, what the seed sent, what crossed each site's WAN link.
//! On loopback, "sites" are labels: the figures that matter are bytes
//! (seed egress, bytes between sites), which the nodes count themselves.

use crate::image::write_image;
use crate::lab::Lab;
use anyhow::{bail, Context, Result};
use fleetmesh_node::ChunkFiles;
use fleetmesh_protocol::manifest::Manifest;
use fleetmesh_protocol::{codec, ImageHash, Signed};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Lab directory (created).
    pub work: PathBuf,
    /// Nodes, spread round-robin over the sites.
    pub nodes: usize,
    /// Sites.
    pub sites: usize,
    /// Image size.
    pub size: u64,
    /// Give up after this long.
    pub timeout: Duration,
}

/// Bytes one site pulled over its WAN link.
#[derive(Clone, Debug, Serialize)]
pub struct SiteReport {
    /// Site label.
    pub site: String,
    /// Nodes in it.
    pub nodes: usize,
    /// Chunk bytes its nodes received from outside the site.
    pub wan_in_bytes: u64,
    /// That over the release's wire size: 1.0 is each chunk once.
    pub wan_ratio: f64,
}

/// The measurement.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// Nodes.
    pub nodes: usize,
    /// Image size.
    pub image_bytes: u64,
    /// The release's chunks as stored and sent (compressed).
    pub wire_bytes: u64,
    /// From the end of publish until every node had the announcement.
    pub announce_secs: f64,
    /// From the end of publish until every node had the release verified.
    pub completion_secs: f64,
    /// The nodes' peak resident memory, MiB: mean and most.
    pub node_rss_mib_mean: f64,
    /// See `node_rss_mib_mean`.
    pub node_rss_mib_max: f64,
    /// Chunk bytes the seed sent.
    pub seed_egress_bytes: u64,
    /// That over the wire size.
    pub seed_egress_ratio: f64,
    /// Per site.
    pub sites: Vec<SiteReport>,
    /// Every node's reassembled image hashed to the published image's hash.
    pub images_verified: usize,
}

/// Runs the benchmark and checks every node's image.
pub fn run(cfg: &BenchConfig, seed_bin: &Path, node_bin: &Path) -> Result<BenchReport> {
    if cfg.nodes == 0 || cfg.sites == 0 {
        bail!("need at least one node and one site");
    }
    let mut lab = Lab::new(&cfg.work, seed_bin, node_bin)?;
    let image = cfg.work.join("image-v1");
    let mut file = std::fs::File::create(&image)?;
    write_image(1, cfg.size, &mut file)?;
    drop(file);
    lab.start_seed()?;
    for i in 0..cfg.nodes {
        lab.add_node(&format!("site{}", i % cfg.sites), "")?;
    }
    for i in 0..cfg.nodes {
        lab.start_node(i, &[])?;
    }
    // The fleet is up before the release exists, as in production: the
    // time measured is from publish to the last node verified.
    lab.wait_connected(Duration::from_secs(60))?;
    let published = lab.publish(&image, "1.0.0")?;
    let published_at = jiff::Timestamp::now();
    let wire_bytes = published["stored_bytes"]
        .as_u64()
        .context("publish summary")?;
    let release_id = published["release_id"]
        .as_str()
        .context("publish summary")?;
    let all: Vec<usize> = (0..cfg.nodes).collect();
    let took = lab.wait_complete(&all, "1.0.0", cfg.timeout)?;
    let expected = ImageHash::from(blake3::hash(&std::fs::read(&image)?));
    let mut verified = 0;
    for node in &lab.nodes {
        let got = node_image_hash(&node.dir, release_id)?;
        if got != expected {
            bail!(
                "{}: reassembled image hash {got} != published {expected}",
                node.dir.display()
            );
        }
        verified += 1;
    }
    let mut announce_secs: f64 = 0.0;
    for i in 0..cfg.nodes {
        let at = lab
            .node_announced_at(i, "1.0.0")
            .with_context(|| format!("node{i:02} logged no announcement"))?;
        announce_secs = announce_secs.max(at.duration_since(published_at).as_secs_f64());
    }
    let rss: Vec<f64> = (0..cfg.nodes)
        .filter_map(|i| lab.node_peak_rss_kib(i))
        .map(|k| k as f64 / 1024.0)
        .collect();
    // Let the last statuses (written every second) settle.
    std::thread::sleep(Duration::from_millis(1500));
    let seed_egress = lab.seed_status().context("seed status")?.egress_bytes();
    let mut sites = Vec::new();
    for s in 0..cfg.sites {
        let site = format!("site{s}");
        let members: Vec<usize> = (0..cfg.nodes).filter(|i| i % cfg.sites == s).collect();
        let mut wan = 0;
        for &i in &members {
            let st = lab
                .node_status(i)
                .with_context(|| format!("node{i:02} status"))?;
            wan += st.wan_in_bytes();
        }
        sites.push(SiteReport {
            site,
            nodes: members.len(),
            wan_in_bytes: wan,
            wan_ratio: wan as f64 / wire_bytes as f64,
        });
    }
    Ok(BenchReport {
        nodes: cfg.nodes,
        image_bytes: cfg.size,
        wire_bytes,
        announce_secs,
        completion_secs: took.as_secs_f64(),
        node_rss_mib_mean: rss.iter().sum::<f64>() / rss.len().max(1) as f64,
        node_rss_mib_max: rss.iter().copied().fold(0.0, f64::max),
        seed_egress_bytes: seed_egress,
        seed_egress_ratio: seed_egress as f64 / wire_bytes as f64,
        sites,
        images_verified: verified,
    })
}

/// Reassembles the image of release `release_id` (hex) from a node's chunk
/// files and hashes it.
pub fn node_image_hash(node_dir: &Path, release_id: &str) -> Result<ImageHash> {
    let path = node_dir
        .join("releases")
        .join(format!("{release_id}.manifest"));
    let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    let signed: Signed<Manifest> = codec::decode(&bytes)?;
    let manifest: Manifest = codec::decode(signed.body_bytes())?;
    let files = ChunkFiles::open(&node_dir.join("store"))?;
    let mut hasher = blake3::Hasher::new();
    for chunk in &manifest.chunks {
        hasher.update(&files.read_chunk(&chunk.id)?);
    }
    Ok(hasher.finalize().into())
}

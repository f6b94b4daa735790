//! The seed's `config.toml`. Unknown keys are errors, so a typo is caught
//! rather than silently ignored.

use crate::{Result, SeedError};
use fleetmesh_node::config::parse_with_env;
use fleetmesh_protocol::manifest::is_valid_name;
use fleetmesh_protocol::ChunkParams;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How releases are made.
    pub publish: PublishConfig,
    /// How `run` serves the mesh.
    pub mesh: SeedMeshConfig,
    /// The dashboard and API of `run`.
    pub http: HttpConfig,
    /// The release inbox `run` publishes from.
    pub inbox: InboxConfig,
}

/// `[http]`: the dashboard, `/status` and `/metrics`; off unless `listen`
/// is set (`run --http` overrides it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address and port, for example "127.0.0.1:9181".
    pub listen: Option<std::net::SocketAddr>,
}

/// `[inbox]`: `run` publishes every image dropped into `dir` with a sidecar
/// (docs/seed.md); off unless `dir` is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboxConfig {
    /// The folder, relative to the seed directory unless absolute.
    pub dir: Option<PathBuf>,
    /// How often it is scanned, seconds; an image is published once its
    /// size and modification time held still for one scan.
    pub scan_secs: u64,
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig {
            dir: None,
            scan_secs: 2,
        }
    }
}

/// `[mesh]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeedMeshConfig {
    /// Multiaddrs to listen on (nodes bootstrap to these).
    pub listen: Vec<String>,
    /// The seed's site label (its own: nodes count it as across the WAN).
    pub site: String,
    /// Upload cap in bytes/s, so the seed is not the bottleneck for
    /// everything else on its link; 0 means none.
    pub upload_bytes_per_sec: u64,
    /// Find LAN peers with mDNS.
    pub mdns: bool,
    /// Most connected peers.
    pub max_peers: usize,
    /// A node not heard from for this long shows as stale.
    pub report_stale_after_secs: u64,
}

impl Default for SeedMeshConfig {
    fn default() -> Self {
        SeedMeshConfig {
            listen: vec![
                "/ip4/0.0.0.0/udp/4001/quic-v1".into(),
                "/ip4/0.0.0.0/tcp/4001".into(),
            ],
            site: "seed".into(),
            upload_bytes_per_sec: 0,
            mdns: true,
            max_peers: 256,
            report_stale_after_secs: 300,
        }
    }
}

/// `[publish]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Largest image `publish` accepts.
    pub max_image_bytes: u64,
    /// Average chunk size; a power of two, 1 KiB-1 MiB.
    pub chunk_avg_bytes: u32,
    /// zstd level for stored chunks (1-19).
    pub zstd_level: i32,
    /// Days until a manifest expires (nodes refuse it after).
    pub release_ttl_days: u64,
    /// Channel when `--channel` is not given.
    pub default_channel: String,
    /// Platforms when no `--platform` is given.
    pub default_platforms: Vec<String>,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            max_image_bytes: 16 << 30,
            chunk_avg_bytes: ChunkParams::DEFAULT.avg,
            zstd_level: 3,
            release_ttl_days: 365,
            default_channel: "stable".into(),
            default_platforms: vec!["generic".into()],
        }
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| SeedError::Config {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let config: Config =
            parse_with_env(&text, std::env::vars()).map_err(|reason| SeedError::Config {
                path: path.to_owned(),
                reason,
            })?;
        config.validate().map_err(|reason| SeedError::Config {
            path: path.to_owned(),
            reason,
        })?;
        Ok(config)
    }

    /// The commented file `init` writes.
    pub fn to_commented_toml(&self) -> String {
        let p = &self.publish;
        format!(
            "# fleetmesh seed configuration (see docs/seed.md)\n\n\
             [publish]\n\
             # Largest image `publish` accepts, in bytes.\n\
             max_image_bytes = {}\n\
             # Average content-defined chunk size (power of two, 1024-1048576); see docs/chunking.md.\n\
             chunk_avg_bytes = {}\n\
             # zstd level for stored chunks (1-19); chunks are stored raw when that is smaller.\n\
             zstd_level = {}\n\
             # Days until a release manifest expires; nodes refuse expired manifests.\n\
             release_ttl_days = {}\n\
             # Channel and platforms used when publish is not given --channel / --platform.\n\
             default_channel = {:?}\n\
             default_platforms = {:?}\n\n\
             [mesh]\n\
             # Addresses `fleetmesh-seed run` listens on; nodes bootstrap to them.\n\
             listen = {:?}\n\
             # The seed's own site label.\n\
             site = {:?}\n\
             # Upload cap in bytes/s (0: none).\n\
             upload_bytes_per_sec = {}\n\
             mdns = {}\n\
             max_peers = {}\n\
             # A node not heard from for this long shows as stale in `status`\n\
             # (in a big fleet, at least three of its report repeats).\n\
             report_stale_after_secs = {}\n\n\
             [http]\n\
             # The web dashboard, /status and /metrics of `run` (docs/monitoring.md); off unless set.\n\
             # listen = \"127.0.0.1:9181\"\n\n\
             [inbox]\n\
             # `run` publishes images dropped here with a sidecar IMAGE.release.toml (docs/seed.md); off unless set.\n\
             # dir = \"inbox\"\n\
             scan_secs = {}\n",
            p.max_image_bytes,
            p.chunk_avg_bytes,
            p.zstd_level,
            p.release_ttl_days,
            p.default_channel,
            p.default_platforms,
            self.mesh.listen,
            self.mesh.site,
            self.mesh.upload_bytes_per_sec,
            self.mesh.mdns,
            self.mesh.max_peers,
            self.mesh.report_stale_after_secs,
            self.inbox.scan_secs,
        )
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let p = &self.publish;
        if p.max_image_bytes == 0 {
            return Err("publish.max_image_bytes must be at least 1".into());
        }
        ChunkParams::for_avg(p.chunk_avg_bytes)
            .validate()
            .ok()
            .filter(|()| (1 << 10..=1 << 20).contains(&p.chunk_avg_bytes))
            .ok_or("publish.chunk_avg_bytes must be a power of two from 1024 to 1048576")?;
        if !(1..=19).contains(&p.zstd_level) {
            return Err("publish.zstd_level must be 1-19".into());
        }
        if !(1..=3650).contains(&p.release_ttl_days) {
            return Err("publish.release_ttl_days must be 1-3650".into());
        }
        if !is_valid_name(&p.default_channel) {
            return Err("publish.default_channel is not a valid name".into());
        }
        if p.default_platforms.is_empty() || !p.default_platforms.iter().all(|n| is_valid_name(n)) {
            return Err("publish.default_platforms must be non-empty valid names".into());
        }
        let m = &self.mesh;
        fleetmesh_node::config::parse_addrs("mesh.listen", &m.listen)?;
        if !is_valid_name(&m.site) {
            return Err(format!("mesh.site {:?} is not a valid name", m.site));
        }
        if !(1..=100_000).contains(&m.max_peers) {
            return Err("mesh.max_peers must be 1-100000".into());
        }
        if !(1..=3600).contains(&self.inbox.scan_secs) {
            return Err("inbox.scan_secs must be 1-3600".into());
        }
        Ok(())
    }

    /// The chunking parameters publish uses.
    pub fn chunk_params(&self) -> ChunkParams {
        ChunkParams::for_avg(self.publish.chunk_avg_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_config_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, Config::default().to_commented_toml()).expect("write");
        assert_eq!(Config::load(&path).expect("load"), Config::default());
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        for (text, expect) in [
            (
                "[publish]\nchunk_avg_bytes = 1000\n",
                "publish.chunk_avg_bytes",
            ),
            (
                "[publish]\nzstd_levl = 3\n",
                "line 2: unknown field `zstd_levl`",
            ),
            ("[publish]\nmax_image_bytes = \"big\"\n", "line 2"),
        ] {
            std::fs::write(&path, text).expect("write");
            let err = Config::load(&path).expect_err(text).to_string();
            assert!(err.contains(expect), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }
}

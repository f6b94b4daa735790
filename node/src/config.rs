//! The node's `node.toml`. Paths are relative to the node directory.
//! Unknown keys are errors naming the line.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", .path.display())]
pub struct ConfigError {
    /// The config file.
    pub path: PathBuf,
    /// The key and the problem.
    pub reason: String,
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's platform; only releases naming it are installed.
    pub platform: String,
    /// Where the slots are and how boot is selected.
    pub slots: SlotsConfig,
    /// How updates are applied.
    #[serde(default)]
    pub update: UpdateConfig,
    /// How the node joins the mesh.
    #[serde(default)]
    pub mesh: MeshConfig,
    /// The local HTTP API.
    #[serde(default)]
    pub api: ApiConfig,
    /// The chunk store.
    #[serde(default)]
    pub store: StoreConfig,
}

/// `[store]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Most bytes the chunk files may take; 0 means no cap. Over it, the
    /// node evicts releases older than the one it runs (never the active
    /// or staged one, nor the policy's rollback target) and a release it
    /// rolled back from once a newer one of its channel is held; a
    /// download that would not fit waits.
    pub max_bytes: u64,
}

/// `[api]`: `GET /status` and `/metrics` over HTTP, off unless `listen` is
/// set. Read-only, but it tells whoever can reach it what the node runs:
/// keep it on 127.0.0.1 or a management network.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address and port, for example "127.0.0.1:9180".
    pub listen: Option<std::net::SocketAddr>,
}

/// `[mesh]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// This node's site: peers with the same label share chunks over the
    /// LAN and split the site's WAN fetching between them.
    pub site: String,
    /// Labels (region, rack, …) for policy groups.
    pub labels: BTreeMap<String, String>,
    /// Channels to fetch; empty fetches every channel.
    pub channels: Vec<String>,
    /// Multiaddrs to listen on.
    pub listen: Vec<String>,
    /// Multiaddrs (with `/p2p/<id>`) of peers to join through, usually the seed.
    pub bootstrap: Vec<String>,
    /// Find LAN peers with mDNS.
    pub mdns: bool,
    /// Download cap in bytes/s; 0 means none.
    pub download_bytes_per_sec: u64,
    /// Upload cap in bytes/s; 0 means none.
    pub upload_bytes_per_sec: u64,
    /// Most connected peers.
    pub max_peers: usize,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            site: "default".into(),
            labels: BTreeMap::new(),
            channels: Vec::new(),
            listen: vec![
                "/ip4/0.0.0.0/udp/0/quic-v1".into(),
                "/ip4/0.0.0.0/tcp/0".into(),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            download_bytes_per_sec: 0,
            upload_bytes_per_sec: 0,
            max_peers: 64,
        }
    }
}

impl MeshConfig {
    /// Checks names and addresses; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        use fleetmesh_protocol::manifest::is_valid_name;
        if !is_valid_name(&self.site) {
            return Err(format!("mesh.site {:?} is not a valid name", self.site));
        }
        for (k, v) in &self.labels {
            if !is_valid_name(k) || !is_valid_name(v) {
                return Err(format!("mesh.labels: {k:?} = {v:?} is not a valid label"));
            }
        }
        if let Some(c) = self.channels.iter().find(|c| !is_valid_name(c)) {
            return Err(format!("mesh.channels: {c:?} is not a valid name"));
        }
        parse_addrs("mesh.listen", &self.listen)?;
        for (i, a) in parse_addrs("mesh.bootstrap", &self.bootstrap)?
            .iter()
            .enumerate()
        {
            if !matches!(a.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) {
                return Err(format!(
                    "mesh.bootstrap[{i}]: {a} must end with /p2p/<peer id>"
                ));
            }
        }
        if !(1..=10_000).contains(&self.max_peers) {
            return Err("mesh.max_peers must be 1-10000".into());
        }
        Ok(())
    }
}

/// Parses multiaddrs; the error names the key and the index.
pub fn parse_addrs(key: &str, addrs: &[String]) -> Result<Vec<libp2p::Multiaddr>, String> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse()
                .map_err(|e| format!("{key}[{i}]: {a:?} is not a multiaddr: {e}"))
        })
        .collect()
}

/// Which slot backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Slot files and a boot-state file (simulated bootloader).
    File,
    /// grub-editenv.
    Grub,
    /// fw_setenv / fw_printenv.
    Uboot,
}

/// `[slots]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotsConfig {
    /// `file`, `grub` or `uboot`.
    pub backend: BackendKind,
    /// Slot A's file or block device.
    pub slot_a: PathBuf,
    /// Slot B's file or block device.
    pub slot_b: PathBuf,
    /// file: the boot-state file.
    #[serde(default = "default_boot_state")]
    pub boot_state: PathBuf,
    /// grub: the grubenv file.
    #[serde(default = "default_grubenv")]
    pub grubenv: PathBuf,
    /// uboot: the libubootenv configuration.
    #[serde(default = "default_fw_env")]
    pub fw_env_config: PathBuf,
    /// grub, uboot: the kernel command line carrying `fleetmesh.slot=`.
    #[serde(default = "default_cmdline")]
    pub cmdline: PathBuf,
}

fn default_boot_state() -> PathBuf {
    "boot-state.json".into()
}
fn default_grubenv() -> PathBuf {
    "/boot/grub/grubenv".into()
}
fn default_fw_env() -> PathBuf {
    "/etc/fw_env.config".into()
}
fn default_cmdline() -> PathBuf {
    "/proc/cmdline".into()
}

/// How a trial boot is judged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// The booted slot is the target and reads back as the signed image.
    #[default]
    Builtin,
    /// `health_command` exits 0 within the timeout.
    Command,
    /// `fleetmesh-node mark-good` / `mark-bad` within the timeout.
    External,
}

/// `[update]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// Install a staged release at once (until a signed policy decides).
    pub install_when_staged: bool,
    /// How the trial boot is judged.
    pub health: HealthKind,
    /// The command for `health = "command"`, as argv.
    pub health_command: Vec<String>,
    /// Seconds the health check may take.
    pub health_timeout_secs: u64,
    /// grub, uboot: how to reboot (the file backend restarts the process).
    pub reboot_command: Vec<String>,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            install_when_staged: true,
            health: HealthKind::Builtin,
            health_command: Vec::new(),
            health_timeout_secs: 60,
            reboot_command: vec!["systemctl".into(), "reboot".into()],
        }
    }
}

/// A toml error as one line with its line number, for config errors that
/// name the key and the line.
pub fn toml_error_line(text: &str, e: &toml::de::Error) -> String {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let msg = e.message().trim().replace('\n', " ");
    match line {
        Some(n) => format!("line {n}: {msg}"),
        None => msg,
    }
}

/// `FLEETMESH_*` variables that are not config overrides.
pub const NOT_CONFIG: [&str; 4] = [
    "FLEETMESH_LOG",
    "FLEETMESH_LOG_FORMAT",
    "FLEETMESH_LAB_LOG",
    "FLEETMESH_TARGET_VERSION",
];

/// Parses a TOML config, then applies the `FLEETMESH_*` variables of `env`
/// over it: `FLEETMESH_MESH__SITE=east` sets `mesh.site` (sections and keys
/// upper-cased, joined by `__`). A value is read as TOML (`1000`, `true`,
/// `["a", "b"]`) and otherwise as a string. The error names the file's line
/// or the variable, and the problem.
pub fn parse_with_env<T: serde::de::DeserializeOwned>(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, String> {
    // The file alone first, so its errors carry its line numbers.
    let parsed: T = toml::from_str(text).map_err(|e| toml_error_line(text, &e))?;
    let mut overrides: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("FLEETMESH_") && !NOT_CONFIG.contains(&k.as_str()))
        .collect();
    if overrides.is_empty() {
        return Ok(parsed);
    }
    overrides.sort();
    let mut table: toml::Table = toml::from_str(text).map_err(|e| toml_error_line(text, &e))?;
    for (name, value) in &overrides {
        let path: Vec<String> = name["FLEETMESH_".len()..]
            .split("__")
            .map(str::to_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(format!(
                "{name}: not a config key (FLEETMESH_KEY or FLEETMESH_SECTION__KEY)"
            ));
        }
        let as_toml = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"));
        let mut last = String::new();
        for v in as_toml
            .into_iter()
            .chain([toml::Value::String(value.clone())])
        {
            let mut candidate = table.clone();
            set_path(&mut candidate, &path, v).map_err(|e| format!("{name}: {e}"))?;
            match toml::Value::Table(candidate.clone()).try_into::<T>() {
                Ok(_) => {
                    table = candidate;
                    last.clear();
                    break;
                }
                Err(e) => last = e.message().trim().replace('\n', " "),
            }
        }
        if !last.is_empty() {
            return Err(format!("{name}={value:?}: {last}"));
        }
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e| e.message().trim().replace('\n', " "))
}

/// Sets `path` in `table` to `value`, making sections on the way.
fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (key, sections) = path.split_last().ok_or("empty key")?;
    let mut t = table;
    for s in sections {
        let entry = t
            .entry(s.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("{s} is not a section"))?;
    }
    t.insert(key.clone(), value);
    Ok(())
}

impl NodeConfig {
    /// Reads `DIR/node.toml`, applies `FLEETMESH_*` overrides from the
    /// environment ([`parse_with_env`]) and resolves paths against DIR.
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join("node.toml");
        let err = |reason: String| ConfigError {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        let mut config: NodeConfig = parse_with_env(&text, std::env::vars()).map_err(err)?;
        if !fleetmesh_protocol::manifest::is_valid_name(&config.platform) {
            return Err(err(format!(
                "platform {:?} is not a valid name",
                config.platform
            )));
        }
        config.mesh.validate().map_err(err)?;
        let u = &config.update;
        if u.health == HealthKind::Command && u.health_command.is_empty() {
            return Err(err(
                "update.health_command must be set when update.health = \"command\"".into(),
            ));
        }
        if !(1..=86_400).contains(&u.health_timeout_secs) {
            return Err(err("update.health_timeout_secs must be 1-86400".into()));
        }
        let s = &mut config.slots;
        for p in [
            &mut s.slot_a,
            &mut s.slot_b,
            &mut s.boot_state,
            &mut s.grubenv,
            &mut s.fw_env_config,
            &mut s.cmdline,
        ] {
            *p = dir.join(&*p);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "platform = \"x86\"\n[slots]\nbackend = \"file\"\nslot_a = \"a\"\nslot_b = \"b\"\n[mesh]\nsite = \"west\"\n";

    fn parse(env: &[(&str, &str)]) -> Result<NodeConfig, String> {
        parse_with_env(
            TEXT,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn environment_variables_override_the_file_key_by_key() {
        let c = parse(&[
            ("FLEETMESH_MESH__SITE", "east"),
            ("FLEETMESH_MESH__DOWNLOAD_BYTES_PER_SEC", "1000"),
            ("FLEETMESH_MESH__MDNS", "false"),
            ("FLEETMESH_MESH__BOOTSTRAP", "[\"/ip4/10.0.0.1/tcp/4001\"]"),
            ("FLEETMESH_MESH__LABELS__RACK", "r7"),
            ("FLEETMESH_API__LISTEN", "127.0.0.1:9180"),
            ("FLEETMESH_PLATFORM", "arm64"),
            ("FLEETMESH_UPDATE__HEALTH", "command"),
            // Not config: ignored.
            ("FLEETMESH_LOG", "debug"),
            ("PATH", "/bin"),
        ])
        .expect("config");
        assert_eq!(c.mesh.site, "east");
        assert_eq!(c.mesh.download_bytes_per_sec, 1000);
        assert!(!c.mesh.mdns);
        assert_eq!(c.mesh.bootstrap, ["/ip4/10.0.0.1/tcp/4001"]);
        assert_eq!(c.mesh.labels["rack"], "r7");
        assert_eq!(c.api.listen, Some("127.0.0.1:9180".parse().expect("addr")));
        assert_eq!(c.platform, "arm64");
        assert_eq!(c.update.health, HealthKind::Command);
        // Without overrides the file stands.
        assert_eq!(parse(&[]).expect("config").mesh.site, "west");
    }

    #[test]
    fn a_bad_override_names_the_variable_and_the_problem() {
        for (env, expect) in [
            (
                ("FLEETMESH_MESH__MAX_PEERS", "lots"),
                "FLEETMESH_MESH__MAX_PEERS=\"lots\": invalid type",
            ),
            (("FLEETMESH_MESH__SITEE", "x"), "unknown field `sitee`"),
            (
                ("FLEETMESH_NOPE", "1"),
                "FLEETMESH_NOPE=\"1\": unknown field `nope`",
            ),
            (
                ("FLEETMESH_MESH__", "1"),
                "FLEETMESH_MESH__: not a config key",
            ),
            (
                ("FLEETMESH_PLATFORM__X", "1"),
                "FLEETMESH_PLATFORM__X: platform is not a section",
            ),
        ] {
            let err = parse(&[env]).expect_err(env.0);
            assert!(err.contains(expect), "{err:?} lacks {expect:?}");
            assert!(!err.contains('\n'), "{err:?}");
        }
        // The file's own errors keep their line numbers.
        let err = parse_with_env::<NodeConfig>("platform = 1\n", []).expect_err("bad file");
        assert!(err.starts_with("line 1:"), "{err}");
    }
}

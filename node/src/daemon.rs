//! The node directory and the `init` / `run` commands' library side.
//!
//! ```text
//! DIR/node.toml     configuration (written by init)
//! DIR/node.key      the node's secret key, mode 0600: its libp2p identity
//! DIR/root.pub      the provisioned root public key
//! DIR/trust.chain   the trust chain, fetched from peers and kept current
//! DIR/member.cred   the membership credential from `fleetmesh-seed enroll`
//! DIR/releases/     signed manifests of releases the node fetches
//! DIR/store/        the chunk store
//! DIR/run/          status files, install requests, health verdicts
//! ```

use crate::config::{parse_addrs, NodeConfig};
use crate::fsutil::{self, Context, IoError};
use crate::keyfile;
use crate::mesh::{self, Role};
use crate::store::ChunkStore;
use fleetmesh_protocol::keys::{Node, PublicKey, Root, SecretKey};
use fleetmesh_protocol::member::Membership;
use fleetmesh_protocol::{codec, RoleKeys, Signed, TrustChain, TrustState};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a node keeps the newest signed policy it accepted.
pub const POLICY_FILE: &str = "policy.signed";
/// The node's membership credential (`fleetmesh-seed enroll` writes it).
pub const MEMBER_FILE: &str = "member.cred";

/// What `init` writes.
#[derive(Debug)]
pub struct InitOptions {
    /// The root public key(s) (`fleetmesh-seed init` prints them; `root.pub`).
    pub root_key: RoleKeys<Root>,
    /// Site label.
    pub site: String,
    /// Extra labels.
    pub labels: BTreeMap<String, String>,
    /// Bootstrap multiaddrs.
    pub bootstrap: Vec<String>,
    /// Listen multiaddrs (empty: the defaults).
    pub listen: Vec<String>,
    /// Platform.
    pub platform: String,
    /// mDNS on or off.
    pub mdns: bool,
}

/// Why `init` refused.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The directory already holds a node.
    #[error("{} already holds a node (node.toml exists)", .0.display())]
    Exists(PathBuf),
    /// An option is malformed.
    #[error("{0}")]
    Bad(String),
    /// Files.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The key file.
    #[error(transparent)]
    Key(#[from] keyfile::KeyFileError),
}

fn toml_str(s: &str) -> String {
    format!("{s:?}")
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// Creates a node directory: a fresh node key, the root key, `node.toml`
/// (written last: its presence marks a node). Returns the node's peer id.
pub fn init(
    dir: &Path,
    opts: &InitOptions,
    rng: &mut impl rand_core::CryptoRngCore,
) -> Result<String, InitError> {
    let config_path = dir.join("node.toml");
    if config_path.exists() {
        return Err(InitError::Exists(dir.to_owned()));
    }
    let mut mesh = crate::config::MeshConfig {
        site: opts.site.clone(),
        labels: opts.labels.clone(),
        bootstrap: opts.bootstrap.clone(),
        mdns: opts.mdns,
        ..Default::default()
    };
    if !opts.listen.is_empty() {
        mesh.listen = opts.listen.clone();
    }
    mesh.validate().map_err(InitError::Bad)?;
    if !fleetmesh_protocol::manifest::is_valid_name(&opts.platform) {
        return Err(InitError::Bad(format!(
            "platform {:?} is not a valid name",
            opts.platform
        )));
    }
    std::fs::create_dir_all(dir).ctx("create", dir)?;
    let key = SecretKey::<Node>::generate(rng);
    keyfile::write(&dir.join("node.key"), &key)?;
    fsutil::write_atomic(
        &dir.join("root.pub"),
        format!("{}\n", opts.root_key).as_bytes(),
        0o644,
    )?;
    let labels: Vec<String> = mesh
        .labels
        .iter()
        .map(|(k, v)| format!("{k} = {}", toml_str(v)))
        .collect();
    let text = format!(
        "# fleetmesh node configuration; paths are relative to this directory.\n\
         platform = {platform}\n\n\
         [mesh]\n\
         site = {site}\n\
         labels = {{ {labels} }}\n\
         listen = {listen}\n\
         bootstrap = {bootstrap}\n\
         mdns = {mdns}\n\
         # Caps in bytes/s; 0 means none.\n\
         download_bytes_per_sec = 0\n\
         upload_bytes_per_sec = 0\n\n\
         [slots]\n\
         backend = \"file\"\n\
         slot_a = \"slot-a.img\"\n\
         slot_b = \"slot-b.img\"\n\n\
         [update]\n\
         # Until a signed policy decides when to install, install only on request\n\
         # (`fleetmesh-node install --version X.Y.Z`); set true to install at once.\n\
         install_when_staged = false\n\n\
         [store]\n\
         # Most bytes the chunk store may take; 0 means no cap. Over it, releases\n\
         # older than the running one are evicted (and one that rolled back, once a\n\
         # newer one arrives), and a download that would not fit (counted at its\n\
         # uncompressed size) waits.\n\
         max_bytes = 0\n",
        platform = toml_str(&opts.platform),
        site = toml_str(&mesh.site),
        labels = labels.join(", "),
        listen = toml_list(&mesh.listen),
        bootstrap = toml_list(&mesh.bootstrap),
        mdns = mesh.mdns,
    );
    fsutil::write_atomic(&config_path, text.as_bytes(), 0o644)?;
    fsutil::fsync_dir(dir)?;
    Ok(mesh::peer_id_of(&key.public()).to_string())
}

/// A node key as a libp2p identity.
pub fn keypair_of(key: &SecretKey<Node>) -> libp2p::identity::Keypair {
    let mut seed = key.seed();
    libp2p::identity::Keypair::ed25519_from_bytes(seed.as_mut_slice())
        .expect("an ed25519 seed is always 32 bytes")
}

/// The node's key as a libp2p identity.
pub fn node_keypair(path: &Path) -> Result<libp2p::identity::Keypair, keyfile::KeyFileError> {
    Ok(keypair_of(&keyfile::read::<Node>(path)?))
}

/// The provisioned root key and the trust chain held so far (empty if the
/// node has not fetched one yet).
pub fn load_trust(dir: &Path) -> anyhow::Result<(RoleKeys<Root>, TrustChain)> {
    use anyhow::Context as _;
    let root_path = dir.join("root.pub");
    let root: RoleKeys<Root> = std::fs::read_to_string(&root_path)
        .with_context(|| format!("read {}", root_path.display()))?
        .parse()
        .with_context(|| format!("parse {}", root_path.display()))?;
    let chain_path = dir.join("trust.chain");
    let chain = match std::fs::read(&chain_path) {
        Ok(bytes) => {
            codec::decode(&bytes).with_context(|| format!("decode {}", chain_path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TrustChain::default(),
        Err(e) => return Err(e).with_context(|| format!("read {}", chain_path.display())),
    };
    Ok((root, chain))
}

/// The trust state from `root.pub` and `trust.chain`.
pub fn trust_state(dir: &Path) -> anyhow::Result<TrustState> {
    let (root, chain) = load_trust(dir)?;
    Ok(TrustState::from_chain(root, &chain)?)
}

/// The saved policy as it applies to this node, if there is one.
pub fn policy_gate(
    dir: &Path,
    config: &NodeConfig,
    now: fleetmesh_protocol::UnixTime,
) -> anyhow::Result<Option<crate::updater::Gate>> {
    let bytes = match std::fs::read(dir.join(POLICY_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let signed = codec::decode(&bytes)?;
    let policy = fleetmesh_policy::doc::verify_policy(&signed, &trust_state(dir)?, None, now)
        .map_err(anyhow::Error::msg)?;
    let node_id = node_keypair(&dir.join("node.key"))?
        .public()
        .to_peer_id()
        .to_string();
    let mut labels = config.mesh.labels.clone();
    labels.insert("node".into(), node_id.clone());
    labels.insert("site".into(), config.mesh.site.clone());
    labels.insert("platform".into(), config.platform.clone());
    Ok(Some(crate::updater::Gate {
        policy,
        node_id,
        labels,
    }))
}

/// `fleetmesh-node status --json` and the API's `/status`: the mesh's
/// status and the updater's in one object, and whether the node is inside
/// a maintenance window of its policy (`window_open` and `policy_version`,
/// absent without a policy or without a `config`).
pub fn status_json(dir: &Path, config: Option<&NodeConfig>) -> anyhow::Result<serde_json::Value> {
    let run = dir.join("run");
    let read = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(run.join(name)).ok()?).ok()
    };
    let (mesh, update) = (
        read(crate::mesh::status::MESH_STATUS_FILE),
        read(crate::updater::STATUS_FILE),
    );
    if mesh.is_none() && update.is_none() {
        anyhow::bail!(
            "no status in {} (has `fleetmesh-node run` started?)",
            run.display()
        );
    }
    let mut out = mesh.unwrap_or_else(|| serde_json::json!({}));
    if let (Some(out), Some(serde_json::Value::Object(u))) = (out.as_object_mut(), update) {
        out.extend(u);
    }
    let now = crate::cli::unix_now();
    // A policy that no longer verifies is reported by the updater; here
    // it simply gives no window.
    if let Some(Ok(Some(gate))) = config.map(|c| policy_gate(dir, c, now)) {
        out["window_open"] = gate.policy.window_open(&gate.labels, now).into();
        out["policy_version"] = gate.policy.version.into();
    }
    Ok(out)
}

/// The mesh parameters of a node directory.
pub fn node_params(
    dir: &Path,
    config: &NodeConfig,
    store: Arc<ChunkStore>,
    listen_override: &[String],
) -> anyhow::Result<mesh::Params> {
    let key_path = dir.join("node.key");
    if !key_path.exists() {
        anyhow::bail!(
            "{} has no node.key; create the node with `fleetmesh-node init --dir {} ...` first",
            dir.display(),
            dir.display()
        );
    }
    let m = &config.mesh;
    let listen = if listen_override.is_empty() {
        &m.listen
    } else {
        listen_override
    };
    let (root, chain) = load_trust(dir)?;
    let releases_dir = dir.join("releases");
    std::fs::create_dir_all(&releases_dir).ctx("create", &releases_dir)?;
    let run_dir = dir.join("run");
    std::fs::create_dir_all(&run_dir).ctx("create", &run_dir)?;
    let node_key = keyfile::read::<Node>(&key_path)?;
    check_credential(&dir.join(MEMBER_FILE), &node_key.public(), &m.site)?;
    Ok(mesh::Params {
        keypair: keypair_of(&node_key),
        node_key: Some(node_key),
        labels: m.labels.clone(),
        role: Role::Node,
        site: m.site.clone(),
        platform: config.platform.clone(),
        channels: m.channels.clone(),
        listen: parse_addrs("--listen", listen).map_err(anyhow::Error::msg)?,
        bootstrap: parse_addrs("mesh.bootstrap", &m.bootstrap).map_err(anyhow::Error::msg)?,
        mdns: m.mdns,
        download_cap: m.download_bytes_per_sec,
        upload_cap: m.upload_bytes_per_sec,
        max_peers: m.max_peers,
        root,
        chain,
        chain_path: Some(dir.join("trust.chain")),
        releases_dir,
        run_dir,
        files: store.files().clone(),
        store: Some(store),
        release_keys: Vec::new(),
        sched: Default::default(),
        policy_file: dir.join(POLICY_FILE),
        chaos_corrupt_uploads: false,
        chaos_upload_delay: std::time::Duration::ZERO,
        chaos_gossip: Vec::new(),
        store_cap: config.store.max_bytes,
        metrics: Default::default(),
        member_file: dir.join(MEMBER_FILE),
        members_dir: None,
    })
}

/// Refuses a credential that is for another node or another site (its
/// signature and expiry are the peers' to judge, with the trust chain).
/// A missing one is not an error: the node runs, refused by its peers,
/// until the credential is copied in.
pub fn check_credential(path: &Path, key: &PublicKey<Node>, site: &str) -> anyhow::Result<()> {
    let Some((_, m)) = read_credential(path)? else {
        return Ok(());
    };
    if m.node != *key {
        anyhow::bail!(
            "{}: the credential is for node key {}, not this node's {}",
            path.display(),
            m.node,
            key
        );
    }
    if m.site != site {
        anyhow::bail!(
            "{}: the credential enrolls this node in site {:?}, but mesh.site is {site:?}",
            path.display(),
            m.site
        );
    }
    Ok(())
}

/// A credential file and what it says (unverified), or `None` if there is
/// no such file.
pub fn read_credential(path: &Path) -> anyhow::Result<Option<(Signed<Membership>, Membership)>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!("read {}: {e}", path.display()),
    };
    let decoded =
        codec::decode::<Signed<Membership>>(&bytes).and_then(|s| Ok((s.unverified_body()?, s)));
    let (m, signed) = decoded.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Some((signed, m)))
}

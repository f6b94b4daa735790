//! `fleetmesh-seed run`: the seed on the mesh. It serves chunks straight
//! from the store's chunk files and announces the releases found in
//! `releases/`, so `publish` can run (and hold the store's database) while
//! the daemon serves; a publish shows up within one tick.

use crate::layout::Seed;
use crate::Result;
use fleetmesh_node::fsutil::{self, Context};
use fleetmesh_node::mesh::{self, Role};
use fleetmesh_node::{keyfile, ChunkFiles, ChunkStore};
use fleetmesh_protocol::keys::{Node, PublicKey, SecretKey};
use fleetmesh_protocol::{codec, ReleaseId};

/// Writes `releases/<id>.manifest` for every release in the store that
/// lacks one.
pub fn export_manifests(seed: &Seed, store: &ChunkStore) -> Result<usize> {
    let dir = seed.layout.releases();
    std::fs::create_dir_all(&dir).ctx("create", &dir)?;
    let mut written = 0;
    for info in store.releases()? {
        let Ok(id) = info.release_id.parse::<ReleaseId>() else {
            continue;
        };
        let path = dir.join(format!("{id}.manifest"));
        if path.exists() {
            continue;
        }
        if let Some(signed) = store.manifest(&id)? {
            fsutil::write_atomic(&path, &codec::encode(&signed)?, 0o644)?;
            written += 1;
        }
    }
    Ok(written)
}

/// The seed's mesh identity, `keys/node.key`, created on first run.
fn node_key(seed: &Seed, rng: &mut impl rand_core::CryptoRngCore) -> Result<SecretKey<Node>> {
    let path = seed.layout.keys().join("node.key");
    if !path.exists() {
        keyfile::write(&path, &SecretKey::<Node>::generate(rng))?;
    }
    Ok(keyfile::read(&path)?)
}

/// The public half of the seed's mesh identity.
pub fn own_node_key(seed: &Seed) -> Result<PublicKey<Node>> {
    Ok(keyfile::read::<Node>(&seed.layout.keys().join("node.key"))?.public())
}

/// The mesh parameters of a seed directory. Opens the store briefly to
/// export manifests, then works from files only.
pub fn params(
    seed: &Seed,
    listen_override: &[String],
    rng: &mut impl rand_core::CryptoRngCore,
) -> Result<mesh::Params> {
    export_manifests(seed, &seed.store()?)?;
    let m = &seed.config.mesh;
    let listen = if listen_override.is_empty() {
        &m.listen
    } else {
        listen_override
    };
    let listen = fleetmesh_node::config::parse_addrs("--listen", listen)
        .map_err(crate::SeedError::BadArgument)?;
    let run = seed.layout.run();
    std::fs::create_dir_all(&run).ctx("create", &run)?;
    let key = node_key(seed, rng)?;
    let member_file =
        crate::members::renew_own(seed, key.public(), fleetmesh_node::cli::unix_now())?;
    Ok(mesh::Params {
        keypair: fleetmesh_node::daemon::keypair_of(&key),
        node_key: None,
        labels: Default::default(),
        role: Role::Seed,
        site: m.site.clone(),
        platform: "seed".into(),
        channels: Vec::new(),
        listen,
        bootstrap: Vec::new(),
        mdns: m.mdns,
        download_cap: 0,
        upload_cap: m.upload_bytes_per_sec,
        max_peers: m.max_peers,
        root: seed.root_keys()?,
        chain: seed.trust_chain()?,
        chain_path: None,
        releases_dir: seed.layout.releases(),
        run_dir: run,
        files: ChunkFiles::open(&seed.layout.store())?,
        store: None,
        release_keys: seed.release_keys()?,
        sched: Default::default(),
        policy_file: crate::policy::current_path(seed),
        chaos_corrupt_uploads: false,
        chaos_upload_delay: std::time::Duration::ZERO,
        chaos_gossip: Vec::new(),
        store_cap: 0,
        metrics: Default::default(),
        member_file,
        members_dir: Some(crate::members::members_dir(seed)),
    })
}

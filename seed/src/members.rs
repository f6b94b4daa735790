//! `enroll` and `revoke`: who belongs to the fleet.
//!
//! ```text
//! DIR/members/<peer id>.cred          credentials issued, newest per node
//! DIR/members/revoked/<peer id>.cred  credentials of revoked nodes
//! DIR/run/member.cred                 the seed's own (renewed by `run`)
//! ```
//!
//! A credential is signed with the policy key; a revocation is a new
//! signed policy version, so it reaches nodes as policy does.

use crate::layout::Seed;
use crate::{Result, SeedError};
use fleetmesh_node::daemon::read_credential;
use fleetmesh_node::fsutil::{self, Context};
use fleetmesh_protocol::keys::{Node, Policy, PublicKey};
use fleetmesh_protocol::member::{Membership, Revocation};
use fleetmesh_protocol::{codec, Signed, UnixTime};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Longest validity of a credential, in days.
pub const MAX_DAYS: u64 = 3650;
/// The seed's own credential: valid this long, renewed when half is left.
const OWN_DAYS: u64 = 7;

/// What `enroll` did.
#[derive(Debug, Serialize)]
pub struct Enrolled {
    /// The node's peer id.
    pub node_id: String,
    /// Its key.
    pub node_key: String,
    /// Its site.
    pub site: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// When the credential expires.
    pub expires_at: UnixTime,
    /// The credential file to copy to the node as `member.cred`.
    pub credential: PathBuf,
}

/// Parses a node key given as 64 hex digits or as the node's peer id
/// (what `fleetmesh-node init` prints).
pub fn parse_node_key(s: &str) -> Result<PublicKey<Node>> {
    let s = s.trim();
    if let Ok(key) = s.parse::<PublicKey<Node>>() {
        return Ok(key);
    }
    s.parse::<libp2p::PeerId>()
        .ok()
        .and_then(|p| fleetmesh_node::mesh::node_key_of(&p))
        .ok_or_else(|| {
            SeedError::BadArgument(format!(
                "--node-key {s:?} is neither 64 hex digits nor an ed25519 peer id"
            ))
        })
}

/// The peer id of a node key, as text.
pub fn peer_id(key: &PublicKey<Node>) -> String {
    fleetmesh_node::mesh::peer_id_of(key).to_string()
}

/// Where the credentials issued are, by peer id (the mesh hands a node
/// its newest one when the one it presents fails).
pub fn members_dir(seed: &Seed) -> PathBuf {
    seed.layout.dir().join("members")
}

/// Signs a credential and checks it as a peer would.
fn issue(seed: &Seed, m: &Membership, now: UnixTime) -> Result<Signed<Membership>> {
    m.validate()
        .map_err(|e| SeedError::BadArgument(e.to_string()))?;
    let signed = Signed::sign(m, &[&seed.key::<Policy>()?])?;
    let revoked = crate::policy::current(seed)?.map_or_else(Vec::new, |(d, _)| d.revoked);
    signed
        .verify_member(&seed.trust()?, &m.node, &revoked, now)
        .map_err(|e| SeedError::BadArgument(format!("the credential does not verify: {e}")))?;
    Ok(signed)
}

/// Issues `node` a credential for `site` valid `days` days, writes it to
/// `members/<peer id>.cred` and, if given, to `out` (which must not exist).
pub fn enroll(
    seed: &Seed,
    node: PublicKey<Node>,
    site: &str,
    labels: BTreeMap<String, String>,
    days: u64,
    out: Option<&std::path::Path>,
    now: UnixTime,
) -> Result<Enrolled> {
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(SeedError::BadArgument(format!(
            "--days {days}: must be 1-{MAX_DAYS}"
        )));
    }
    if let Some(out) = out.filter(|o| o.exists()) {
        return Err(SeedError::BadArgument(format!(
            "{} exists; not overwriting it",
            out.display()
        )));
    }
    let m = Membership {
        node,
        site: site.to_owned(),
        labels,
        seed: false,
        issued_at: now,
        expires_at: now.plus_secs(days * 86_400),
    };
    let bytes = codec::encode(&issue(seed, &m, now)?)?;
    let dir = members_dir(seed);
    std::fs::create_dir_all(&dir).ctx("create", &dir)?;
    let id = peer_id(&node);
    let path = dir.join(format!("{id}.cred"));
    fsutil::write_atomic(&path, &bytes, 0o644)?;
    let credential = match out {
        Some(out) => {
            fsutil::write_atomic(out, &bytes, 0o644)?;
            out.to_owned()
        }
        None => path,
    };
    Ok(Enrolled {
        node_id: id,
        node_key: node.to_string(),
        site: m.site,
        labels: m.labels,
        expires_at: m.expires_at,
        credential,
    })
}

/// Revokes every credential issued to `node` so far: signs the next policy
/// version with the revocation and moves its credential to `revoked/`.
/// Returns the policy version that carries it.
pub fn revoke(seed: &Seed, node: PublicKey<Node>, now: UnixTime) -> Result<u64> {
    let Some((mut doc, _)) = crate::policy::current(seed)? else {
        return Err(SeedError::BadArgument(
            "no policy yet: revocations travel in the signed policy; \
             run `fleetmesh-seed policy apply` first"
                .into(),
        ));
    };
    let id = peer_id(&node);
    let path = members_dir(seed).join(format!("{id}.cred"));
    // Until every credential it voids has expired: the newest one's expiry
    // if this seed issued it, else the longest a credential can live.
    let until = read_credential(&path)
        .ok()
        .flatten()
        .map_or(now.plus_secs(MAX_DAYS * 86_400), |(_, m)| m.expires_at);
    doc.revoked.retain(|r| r.until > now && r.node != node);
    doc.revoked.push(Revocation {
        node,
        at: now,
        until,
    });
    doc.version += 1;
    doc.issued_at = now;
    doc.expires_at = doc.expires_at.max(now.plus_secs(86_400));
    crate::policy::sign_and_install(seed, &doc, now, &format!("revoked node {id}"))?;
    if path.exists() {
        let revoked = members_dir(seed).join("revoked");
        std::fs::create_dir_all(&revoked).ctx("create", &revoked)?;
        let to = revoked.join(format!("{id}.cred"));
        std::fs::rename(&path, &to).ctx("move to revoked/", &path)?;
    }
    Ok(doc.version)
}

/// The seed's own credential (`run/member.cred`), issued or renewed if it
/// is missing or has less than half its life left. Returns its path.
pub fn renew_own(seed: &Seed, node: PublicKey<Node>, now: UnixTime) -> Result<PathBuf> {
    let path = seed.layout.run().join(fleetmesh_node::daemon::MEMBER_FILE);
    let fresh = read_credential(&path).ok().flatten().is_some_and(|(_, m)| {
        m.node == node
            && m.site == seed.config.mesh.site
            && now.plus_secs(OWN_DAYS * 86_400 / 2) < m.expires_at
    });
    if !fresh {
        let m = Membership {
            node,
            site: seed.config.mesh.site.clone(),
            labels: BTreeMap::new(),
            seed: true,
            issued_at: now,
            expires_at: now.plus_secs(OWN_DAYS * 86_400),
        };
        let bytes = codec::encode(&issue(seed, &m, now)?)?;
        std::fs::create_dir_all(seed.layout.run()).ctx("create", &seed.layout.run())?;
        fsutil::write_atomic(&path, &bytes, 0o644)?;
    }
    Ok(path)
}

/// One issued credential, as `members` lists it.
#[derive(Debug, Serialize)]
pub struct Member {
    /// The node's peer id.
    pub node_id: String,
    /// Its site.
    pub site: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// When the credential was issued.
    pub issued_at: UnixTime,
    /// When it expires.
    pub expires_at: UnixTime,
    /// `enrolled`, `expired` or `revoked`.
    pub status: &'static str,
}

/// Every credential issued (newest per node), revoked ones too, by site
/// and peer id. An unreadable file is an error naming it.
pub fn list(seed: &Seed, now: UnixTime) -> Result<Vec<Member>> {
    let dir = members_dir(seed);
    let mut out = Vec::new();
    for (sub, revoked) in [(dir.clone(), false), (dir.join("revoked"), true)] {
        for (_, m) in credentials_in(&sub)? {
            let status = if revoked {
                "revoked"
            } else if now >= m.expires_at {
                "expired"
            } else {
                "enrolled"
            };
            out.push(Member {
                node_id: peer_id(&m.node),
                site: m.site,
                labels: m.labels,
                issued_at: m.issued_at,
                expires_at: m.expires_at,
                status,
            });
        }
    }
    out.sort_by(|a, b| (&a.site, &a.node_id).cmp(&(&b.site, &b.node_id)));
    Ok(out)
}

/// The `.cred` files in `dir` (none if it does not exist) and what they say.
pub fn credentials_in(dir: &std::path::Path) -> Result<Vec<(PathBuf, Membership)>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for path in entries.flatten().map(|e| e.path()) {
        if path.extension().is_none_or(|x| x != "cred") {
            continue;
        }
        if let Some((_, m)) =
            read_credential(&path).map_err(|e| SeedError::BadArgument(e.to_string()))?
        {
            out.push((path, m));
        }
    }
    Ok(out)
}

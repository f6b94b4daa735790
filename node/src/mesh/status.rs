//! `run/mesh.json`: the mesh's status, rewritten atomically every second so
//! that `fleetmesh-node status` and `fleetmesh-seed status` work while the
//! daemon runs. Its counters are read back at start, so they count across
//! restarts.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// File name in the run directory.
pub const MESH_STATUS_FILE: &str = "mesh.json";

/// The whole status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshStatus {
    /// This node's libp2p peer id.
    pub node_id: String,
    /// `node` or `seed`.
    pub role: String,
    /// Its site label.
    pub site: String,
    /// Connected peers that are verified fleet members.
    pub peers: usize,
    /// Connected peers by site.
    pub peer_sites: BTreeMap<String, usize>,
    /// Open connections to peers, members or not (a peer may hold several).
    #[serde(default)]
    pub connections: usize,
    /// Addresses it listens on, with its peer id (to bootstrap others from).
    pub listen: Vec<String>,
    /// Per release.
    pub releases: Vec<ReleaseStatus>,
    /// Unix time of this status.
    pub updated_at: u64,
    /// Peers banned now (bad chunks, invalid gossip).
    #[serde(default)]
    pub banned: Vec<String>,
    /// Gossip messages rejected (and not relayed) since start.
    #[serde(default)]
    pub gossip_rejected: u64,
    /// Version of the signed policy held.
    #[serde(default)]
    pub policy_version: Option<u64>,
    /// Nodes with a store cap: its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreStatus>,
    /// Seed: the latest signed status report of each node, by peer id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, fleetmesh_protocol::mesh::Report>,
}

impl MeshStatus {
    /// Chunk bytes received from outside this node's site, all releases.
    pub fn wan_in_bytes(&self) -> u64 {
        self.releases
            .iter()
            .map(|r| r.bytes_down - r.bytes_down_same_site)
            .sum()
    }

    /// Chunk bytes sent to other nodes, all releases.
    pub fn egress_bytes(&self) -> u64 {
        self.releases.iter().map(|r| r.egress_bytes).sum()
    }
}

/// The chunk store under its cap (`[store] max_bytes`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// The cap.
    pub max_bytes: u64,
    /// Bytes the chunk files took at the last check.
    pub used_bytes: u64,
    /// Releases evicted (counted across restarts).
    pub evicted: u64,
    /// Why a download waits for room, if one does.
    pub waiting: Option<String>,
}

/// One release.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseStatus {
    /// Release id (hex).
    pub release_id: String,
    /// Version.
    pub version: String,
    /// Channel.
    pub channel: String,
    /// Distinct chunks in the release.
    pub chunks_total: u64,
    /// Of those, present.
    pub chunks_have: u64,
    /// Chunk bytes received.
    pub bytes_down: u64,
    /// Of those, from same-site peers.
    pub bytes_down_same_site: u64,
    /// Chunk bytes sent.
    pub bytes_up: u64,
    /// Same as `bytes_up`: what left this node for the release.
    pub egress_bytes: u64,
    /// Every chunk present and verified, and the release recorded.
    pub complete: bool,
}

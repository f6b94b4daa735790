//! The mesh: a libp2p swarm that discovers peers (mDNS, Kademlia with
//! bootstrap peers, identify carrying the site label), gossips signed
//! release announcements, and swaps verified chunks over the exchange
//! protocol, driven by the sans-IO [`fleetmesh_protocol::sched`] scheduler.
//!
//! One event loop owns all state (no locks). File work (reading chunks to
//! serve, verifying and storing received ones, the final check of a
//! download)
//! runs on blocking threads and reports back over a bounded channel.
//! Every queue is bounded: requests in flight by the scheduler's per-peer
//! caps, chunks being served by [`MAX_SERVING`], peers by
//! [`Params::max_peers`].
//!
//! The seed runs the same loop with every piece of its releases present,
//! signing and re-announcing them; it never downloads.

pub mod codec;
mod evict;
pub mod release;
mod reporters;
pub mod status;

use crate::api::{Metrics, PeerClass};
use crate::store::{ChunkFiles, ChunkStore};
use crate::{fsutil, ReleaseInfo};
use codec::{ExchangeCodec, PROTOCOL};
use fleetmesh_policy::doc::{verify_policy, PolicyDoc};
use fleetmesh_protocol::bucket::TokenBucket;
pub use fleetmesh_protocol::gather::FIND_SITE;
use fleetmesh_protocol::gather::{part_rank, Gather, PartFetch, PartPeer, MANIFEST_RETRY};
use fleetmesh_protocol::keys::{Node, PublicKey, Release as ReleaseRole, Root, SecretKey};
use fleetmesh_protocol::manifest::Manifest;
use fleetmesh_protocol::member::{Membership, Revocation};
use fleetmesh_protocol::mesh::{
    judge_report, Accepted, Announcement, Announcements, Have, Hello, ManifestParts,
    ReleaseProgress, Report, ReportEnvelope, ReportVerdict, Request, Response, MAX_BATCH,
    MAX_HAVE_ADDED, RESPONSE_BUDGET,
};
use fleetmesh_protocol::sched::{self, Bits, PeerInfo, Planned, RequestId, Scheduler};
use fleetmesh_protocol::TrustState;
use fleetmesh_protocol::{codec as wire, ChunkId, ReleaseId, RoleKeys, Signed, TrustChain};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{behaviour::toggle::Toggle, ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{connection_limits, identify, identity::Keypair, kad, mdns, noise, tcp, yamux};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm};
use release::{verify_chunks, Release};
use reporters::{Reporters, MAX_REPORTERS};
use status::{MeshStatus, ReleaseStatus, StoreStatus, MESH_STATUS_FILE};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Most inbound chunk requests being read or paced at once; more get `Busy`.
pub const MAX_SERVING: usize = 64;
/// Most of those for one peer, so that one peer cannot take every slot.
const MAX_SERVING_PER_PEER: usize = MAX_SERVING / 2;
/// Connections still handshaking, each way.
const MAX_PENDING_CONNECTIONS: u32 = 64;
/// Connections to one peer (dials may cross, over QUIC and TCP).
const MAX_CONNECTIONS_PER_PEER: u32 = 4;
/// At shutdown: how long to wait for connections to close, and then for
/// their close frames to leave.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);
const GOODBYE_FLUSH: Duration = Duration::from_millis(50);
/// A request waits at most this long for upload tokens; longer gets `Busy`.
/// Requests a peer may make per second (an honest one, pulling at LAN
/// speed, makes a few hundred); more are answered `Busy` unread.
const MAX_REQUESTS_PER_SEC: u32 = 1000;
/// Requests refused in a row that count as one strike (a flood).
const FLOOD_STRIKE: u32 = 1000;
/// How long a same-site peer whose request timed out is left out; it
/// doubles with each timeout in a row, up to the maximum.
const SLOW_BACKOFF: Duration = Duration::from_secs(30);
const SLOW_BACKOFF_MAX: Duration = Duration::from_secs(600);
const MAX_UPLOAD_WAIT: Duration = Duration::from_secs(2);
/// Rejected messages (gossip, hello) after which a peer is banned.
const MAX_STRIKES: u32 = 3;
/// How long a peer that sent a bad chunk or bad gossip stays banned.
const BAN: Duration = Duration::from_secs(300);
const TICK: Duration = Duration::from_millis(50);
const HAVE_EVERY: Duration = Duration::from_millis(100);
/// Have-maps to peers in other sites go at most this often: each is a
/// request over a thin WAN link, and every node of a site sends them to
/// every node it knows elsewhere...
const HAVE_EVERY_WAN: Duration = Duration::from_secs(1);
/// ...and to each less often when it knows more than this many of them, so
/// that what a site receives stays about the same however many nodes the
/// other sites have.
const HAVE_WAN_PEERS: u32 = 8;
/// How long a release a peer did not know is not offered to it again.
const RETRY_FULL_HAVE: Duration = Duration::from_secs(2);
const STATUS_EVERY: Duration = Duration::from_secs(1);
const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);
/// How often a node looks for what `fleetmesh-node import` left.
const IMPORTS_EVERY: Duration = Duration::from_secs(2);
/// Imported announcements taken per scan.
const MAX_IMPORTS_PER_TICK: usize = 16;
const DISCOVER_EVERY: Duration = Duration::from_secs(300);
/// Below this many member peers (or `max_peers`) a node looks for more
/// every [`REDIAL_EVERY`].
const FEW_PEERS: usize = 8;
/// How often a node with no member peers dials its bootstrap peers again
/// (and one with few looks for more).
const REDIAL_EVERY: Duration = Duration::from_secs(10);
/// A report that gossip could not take yet (no peer subscribed) is tried
/// again this often.
const REPORT_RETRY: Duration = Duration::from_secs(1);
/// How long a connected peer has to present a valid membership credential.
const MEMBER_GRACE: Duration = Duration::from_secs(20);
/// How long a non-member is not redialled or accepted after it was refused.
const NOT_MEMBER_BAN: Duration = Duration::from_secs(30);
/// How often connected members' credentials are checked again (expiry).
const MEMBERS_EVERY: Duration = Duration::from_secs(1);

const TOPIC_ANNOUNCE: &str = "fleetmesh/announce/1";
const TOPIC_STATUS: &str = "fleetmesh/status/1";
const TOPIC_POLICY: &str = "fleetmesh/policy/1";
/// Every topic a node subscribes to.
const TOPICS: [&str; 3] = [TOPIC_ANNOUNCE, TOPIC_STATUS, TOPIC_POLICY];

/// Whether this process is an edge node or the seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Downloads releases for its platform and serves what it has.
    Node,
    /// Serves and announces its published releases.
    Seed,
}

/// Everything the mesh needs to start.
#[derive(Debug)]
pub struct Params {
    /// The libp2p identity (the node key).
    pub keypair: Keypair,
    /// Node or seed.
    pub role: Role,
    /// This node's site label.
    pub site: String,
    /// Its platform (nodes fetch releases for it).
    pub platform: String,
    /// Channels to fetch; empty means every channel.
    pub channels: Vec<String>,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start and to seed Kademlia with.
    pub bootstrap: Vec<Multiaddr>,
    /// Discover LAN peers with mDNS.
    pub mdns: bool,
    /// Download cap, bytes/s (0: none).
    pub download_cap: u64,
    /// Upload cap, bytes/s (0: none).
    pub upload_cap: u64,
    /// Most connected peers.
    pub max_peers: usize,
    /// The provisioned root keys.
    pub root: RoleKeys<Root>,
    /// The trust chain held so far.
    pub chain: TrustChain,
    /// Where the trust chain is kept (rewritten when a peer brings a newer one).
    pub chain_path: Option<PathBuf>,
    /// Directory of signed manifests (`<release id>.manifest`).
    pub releases_dir: PathBuf,
    /// Where `mesh.json` (status) goes.
    pub run_dir: PathBuf,
    /// The chunk files.
    pub files: ChunkFiles,
    /// Nodes: the store that completed releases are recorded in.
    pub store: Option<Arc<ChunkStore>>,
    /// Nodes: most bytes the chunk files may take (0: no cap).
    pub store_cap: u64,
    /// Nodes: the key that signs status reports.
    pub node_key: Option<SecretKey<Node>>,
    /// Nodes: labels from the configuration (reported with site and platform).
    pub labels: BTreeMap<String, String>,
    /// Seed: the keys that sign announcements (k-of-n: all it holds).
    pub release_keys: Vec<SecretKey<ReleaseRole>>,
    /// Scheduler tunables.
    pub sched: sched::Config,
    /// Seed: the current policy, read when it changes. Node: where an
    /// accepted policy is saved for the updater.
    pub policy_file: PathBuf,
    /// Fault injection for tests: serve every chunk with a flipped byte.
    pub chaos_corrupt_uploads: bool,
    /// Fault injection for tests: hold every chunk response this long.
    pub chaos_upload_delay: Duration,
    /// Fault injection for tests: raw announce-topic messages to gossip
    /// every few seconds, as a forger would.
    pub chaos_gossip: Vec<Vec<u8>>,
    /// Counters for the local API's `/metrics`.
    pub metrics: Arc<Metrics>,
    /// This node's membership credential (`member.cred`), re-read when it
    /// changes: peers refuse a node without a valid one.
    pub member_file: PathBuf,
    /// Seed: the credentials it issued (`<peer id>.cred`), handed to a node
    /// whose own one fails.
    pub members_dir: Option<PathBuf>,
}

/// Why the mesh could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The swarm could not be built or could not listen.
    #[error("network: {0}")]
    Network(String),
    /// Files.
    #[error(transparent)]
    Io(#[from] fsutil::IoError),
    /// The store.
    #[error(transparent)]
    Store(#[from] crate::StoreError),
    /// Trust or encoding.
    #[error(transparent)]
    Protocol(#[from] fleetmesh_protocol::Error),
}

fn net_err(e: impl std::fmt::Display) -> MeshError {
    MeshError::Network(e.to_string())
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    gossip: gossipsub::Behaviour,
    exchange: request_response::Behaviour<ExchangeCodec>,
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

#[derive(Debug, Default)]
struct Peer {
    /// From identify: site label, seed or not.
    info: Option<PeerInfo>,
    /// From identify: its platform.
    platform: Option<String>,
    /// Have-maps received, per release.
    haves: BTreeMap<ReleaseId, Bits>,
    /// Releases whose scheduler knows this peer.
    in_sched: BTreeSet<ReleaseId>,
    /// Per release: how much of our have-log this peer has been sent.
    sent: BTreeMap<ReleaseId, usize>,
    /// Per release the peer did not know when it got our have-map: not
    /// offered again before this, so one release it ignores cannot keep
    /// the others from being offered.
    retry_full: BTreeMap<ReleaseId, Instant>,
    have_in_flight: bool,
    /// When we last sent it a have-map.
    have_sent_at: Option<Instant>,
    strikes: u32,
    /// Same-site peers: timeouts in a row, and until when it is left out
    /// of the schedulers for them.
    slow: u32,
    slow_until: Option<Instant>,
    /// Its requests this second.
    rate: fleetmesh_protocol::bucket::RequestRate,
    /// Its membership credential, once one verified.
    member: Option<Membership>,
    /// When it connected (it has [`MEMBER_GRACE`] to prove membership).
    connected_at: Option<Instant>,
    /// The connection it last said hello on.
    hello_on: Option<ConnectionId>,
    /// Its open connections, oldest first (at most
    /// [`MAX_CONNECTIONS_PER_PEER`]).
    conns: Vec<ConnectionId>,
}

#[derive(Debug)]
enum Outbound {
    Hello,
    Have {
        release: ReleaseId,
        upto: usize,
    },
    ManifestPart(ReleaseId, u32),
    /// The pieces asked for, kept so that a response arriving after the
    /// scheduler gave up on it is still stored.
    Chunks {
        release: ReleaseId,
        req: RequestId,
        pieces: Vec<u32>,
    },
}

/// Results of blocking file work.
#[derive(Debug)]
enum Done {
    Stored {
        release: ReleaseId,
        req: RequestId,
        peer: PeerId,
        got: Vec<u32>,
        lacks: Vec<u32>,
        bytes: u64,
        bad: Option<String>,
    },
    Served {
        release: ReleaseId,
        peer: PeerId,
        channel: ResponseChannel<Response>,
        response: Response,
        /// When the request came in.
        since: Instant,
    },
    Verified {
        release: ReleaseId,
        result: Result<Vec<ChunkId>, String>,
    },
    Evicted(Result<evict::Outcome, String>),
}

/// The mesh event loop.
struct Mesh {
    swarm: Swarm<Behaviour>,
    p: Params,
    start: Instant,
    me: PeerInfo,
    trust: TrustState,
    announcements: Announcements,
    releases: BTreeMap<ReleaseId, Release>,
    /// Announced releases this node wants, whose manifest it does not have.
    wanted: BTreeMap<ReleaseId, Wanted>,
    peers: BTreeMap<PeerId, Peer>,
    banned: BTreeMap<PeerId, Instant>,
    outbound: HashMap<OutboundRequestId, Outbound>,
    down: TokenBucket,
    up: TokenBucket,
    serving: usize,
    /// Of those, per peer.
    serving_by: HashMap<PeerId, usize>,
    done_tx: mpsc::Sender<Done>,
    last_have: Instant,
    last_status: Instant,
    last_announce: Instant,
    last_discover: Instant,
    /// Node: when `releases/` was last scanned for imports.
    last_imports: Instant,
    /// Node: announcement files already taken from `releases/`.
    imported: BTreeSet<PathBuf>,
    /// Node: `trust.chain`'s length when last looked at.
    chain_file_len: u64,
    /// Latest signed status report from each node (seed view).
    reports: BTreeMap<String, Report>,
    /// Nodes whose reports this node has heard lately: the fleet's size,
    /// which spaces out its own unchanged reports.
    reporters: Reporters<PeerId>,
    /// A report is to go out: something changed, or it is time to repeat
    /// it, and gossip has not yet taken it (no peer subscribed yet).
    report_due: bool,
    /// When a report was last tried.
    report_tried: Instant,
    /// Every site named in a valid status report (at most
    /// [`sched::MAX_SITES`]): the schedulers split the seed's share by site.
    sites: std::collections::BTreeSet<String>,
    /// Counters from the last run, by release, until the release loads.
    saved_counters: BTreeMap<ReleaseId, release::Counters>,
    listening: Vec<Multiaddr>,
    last_report: Instant,
    gossip_rejected: u64,
    /// The newest valid policy, decoded and as signed bytes.
    policy: Option<(PolicyDoc, Vec<u8>)>,
    policy_seen: Option<std::time::SystemTime>,
    /// The updater's status file: when it last changed and its content
    /// (a different content is reported at once).
    update_seen: (Option<std::time::SystemTime>, Option<Vec<u8>>),
    /// This node's labels for policy: configured ones, `node`, `site`, `platform`.
    labels: BTreeMap<String, String>,
    /// This node's own credential, presented in every hello, and the
    /// credential file's mtime when it was read.
    member: Option<Signed<Membership>>,
    member_seen: Option<std::time::SystemTime>,
    last_members: Instant,
    /// The store cap: a pass runs, one is due, when the last one started,
    /// and what it found.
    evicting: bool,
    evict_due: bool,
    last_evict: Instant,
    store: StoreStatus,
}

/// An announced release whose manifest this node wants.
#[derive(Debug)]
struct Wanted {
    /// The manifest's parts as announced.
    parts: ManifestParts,
    /// What this node has of them (their bytes, checked against `parts`);
    /// the requests it holds for parts it is fetching itself (by whom, to
    /// answer on).
    gather: Gather<PeerId, (PeerId, ResponseChannel<Response>), Vec<u8>>,
    /// Peers that sent a have-map for it: they hold its manifest.
    holders: BTreeSet<PeerId>,
    /// Their maps, applied when the manifest loads: asking a peer to send
    /// its map again costs [`RETRY_FULL_HAVE`], and the seed's map would
    /// arrive that long after the manifest.
    early: HashMap<PeerId, Bits>,
}

/// The peer id of a node key.
pub fn peer_id_of(key: &PublicKey<Node>) -> PeerId {
    let public = libp2p::identity::ed25519::PublicKey::try_from_bytes(&key.to_bytes())
        .expect("a verified node key is a valid ed25519 key");
    libp2p::identity::PublicKey::from(public).to_peer_id()
}

/// The node key a peer id stands for (ed25519 peer ids embed the key).
pub fn node_key_of(peer: &PeerId) -> Option<PublicKey<Node>> {
    let key = libp2p::identity::PublicKey::try_decode_protobuf(peer.as_ref().digest()).ok()?;
    PublicKey::from_bytes(&key.try_into_ed25519().ok()?.to_bytes()).ok()
}

/// A stable 64-bit tag of a peer id, for the scheduler's hashing.
fn tag_of(peer: &PeerId) -> u64 {
    let h = blake3::hash(&peer.to_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default())
}

fn agent(role: Role, site: &str, platform: &str) -> String {
    let role = match role {
        Role::Node => "node",
        Role::Seed => "seed",
    };
    format!(
        "fleetmesh/{} role={role} site={site} platform={platform}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The value of `key=value` in an agent string, if it is a valid name.
fn agent_field(agent: &str, key: &str) -> Option<String> {
    agent
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .find(|(k, v)| *k == key && fleetmesh_protocol::manifest::is_valid_name(v))
        .map(|(_, v)| v.to_owned())
}

/// Peer scoring that punishes invalid messages (P4) and protocol
/// misbehaviour (P7), not delivery rates: the topics carry too few
/// messages for those to mean anything. Three invalid messages push a peer
/// below the graylist threshold (-80), and [`MAX_STRIKES`] bans it.
fn gossip_score() -> gossipsub::PeerScoreParams {
    let mut params = gossipsub::PeerScoreParams {
        // Many nodes behind one address (NAT, a lab on loopback) is normal
        // for a fleet, not a Sybil attack.
        ip_colocation_factor_weight: 0.0,
        // A node that restarts (every install does) has forgotten the
        // backoff a peer set when it pruned the node from its mesh, and
        // grafts again on every topic at once: up to two penalties a
        // topic. Counted from the first, they would graylist it for a
        // second; only more than that is misbehaviour.
        behaviour_penalty_threshold: 2.0 * TOPICS.len() as f64,
        ..Default::default()
    };
    for topic in TOPICS {
        let t = gossipsub::TopicScoreParams {
            topic_weight: 1.0,
            time_in_mesh_weight: 0.0,
            first_message_deliveries_weight: 0.0,
            mesh_message_deliveries_weight: 0.0,
            mesh_failure_penalty_weight: 0.0,
            invalid_message_deliveries_weight: -10.0,
            invalid_message_deliveries_decay: 0.9,
            ..Default::default()
        };
        params.topics.insert(IdentTopic::new(topic).hash(), t);
    }
    params
}

fn build_swarm(p: &Params) -> Result<Swarm<Behaviour>, MeshError> {
    let agent = agent(p.role, &p.site, &p.platform);
    let use_mdns = p.mdns;
    // Room for every peer twice over, plus strangers being refused.
    let max_connections =
        u32::try_from(p.max_peers.saturating_mul(2).saturating_add(32)).unwrap_or(u32::MAX);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(p.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(net_err)?
        .with_quic()
        .with_bandwidth_metrics(&mut p.metrics.registry())
        .with_behaviour(|key| {
            // A smaller mesh than the default (6, 5..12, lazy 6): every
            // message reaches each node from about mesh_n peers, mostly
            // across WAN links.
            let gossip_config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_secs(1))
                .mesh_n(4)
                .mesh_n_low(3)
                .mesh_n_high(6)
                .gossip_lazy(3)
                .validation_mode(gossipsub::ValidationMode::Strict)
                .validate_messages()
                .max_transmit_size(64 << 10)
                .build()?;
            let mut gossip = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_config,
            )?;
            gossip.with_peer_score(gossip_score(), gossipsub::PeerScoreThresholds::default())?;
            let exchange = request_response::Behaviour::with_codec(
                ExchangeCodec,
                [(PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(60))
                    .with_max_concurrent_streams(512),
            );
            let identify = identify::Behaviour::new(
                identify::Config::new("/fleetmesh/1".into(), key.public())
                    .with_agent_version(agent),
            );
            let peer_id = key.public().to_peer_id();
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                kad::store::MemoryStore::new(peer_id),
                kad::Config::new(StreamProtocol::new("/fleetmesh/kad/1")),
            );
            kad.set_mode(Some(kad::Mode::Server));
            let mdns = if use_mdns {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    peer_id,
                )?)
            } else {
                None
            };
            let limits = connection_limits::ConnectionLimits::default()
                .with_max_pending_incoming(Some(MAX_PENDING_CONNECTIONS))
                .with_max_pending_outgoing(Some(MAX_PENDING_CONNECTIONS))
                .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
                .with_max_established(Some(max_connections));
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Behaviour {
                limits: connection_limits::Behaviour::new(limits),
                gossip,
                exchange,
                identify,
                kad,
                mdns: Toggle::from(mdns),
            })
        })
        .map_err(net_err)?
        // Smart dialing tries QUIC first and TCP a moment later (Happy
        // Eyeballs): TCP is the fallback where UDP does not get through.
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(600))
                .with_smart_dial()
        })
        .build();
    Ok(swarm)
}

/// Runs the mesh until `shutdown` resolves (or forever).
pub async fn run(
    params: Params,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), MeshError> {
    let (done_tx, mut done_rx) = mpsc::channel(1024);
    let mut mesh = Mesh::new(params, done_tx)?;
    mesh.start_network()?;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            event = mesh.swarm.select_next_some() => mesh.on_swarm(event),
            Some(done) = done_rx.recv() => mesh.on_done(done),
            _ = tick.tick() => mesh.on_tick(),
            () = &mut shutdown => break,
        }
    }
    mesh.write_status();
    mesh.say_goodbye().await;
    Ok(())
}

impl Mesh {
    /// Closes every connection before the process ends (or restarts into
    /// the new slot), so that peers stop sending requests into them now
    /// and not after QUIC's idle timeout: QUIC has no reset, and a peer
    /// would otherwise wait that long on every request it sent here.
    async fn say_goodbye(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let _ = tokio::time::timeout(GOODBYE_WAIT, async {
            while self.swarm.connected_peers().next().is_some() {
                self.swarm.select_next_some().await;
            }
        })
        .await;
        // The connections' close frames go out on the endpoint's own task.
        tokio::time::sleep(GOODBYE_FLUSH).await;
    }

    fn new(p: Params, done_tx: mpsc::Sender<Done>) -> Result<Self, MeshError> {
        let swarm = build_swarm(&p)?;
        let me = PeerInfo {
            site: p.site.clone(),
            seed: p.role == Role::Seed,
            tag: tag_of(swarm.local_peer_id()),
        };
        let trust = TrustState::from_chain(p.root.clone(), &p.chain)?;
        let now = Instant::now();
        let mut mesh = Mesh {
            swarm,
            start: now,
            me,
            trust,
            announcements: Announcements::default(),
            releases: BTreeMap::new(),
            wanted: BTreeMap::new(),
            peers: BTreeMap::new(),
            banned: BTreeMap::new(),
            outbound: HashMap::new(),
            down: TokenBucket::new(p.download_cap, p.download_cap / 4),
            up: TokenBucket::new(p.upload_cap, p.upload_cap / 4),
            serving: 0,
            serving_by: HashMap::new(),
            done_tx,
            last_have: now,
            last_status: now,
            last_announce: now - ANNOUNCE_EVERY,
            // The first Kademlia round 2 s after start, once the bootstrap
            // peers are connected: a restarted node finds its site again
            // at once, not after DISCOVER_EVERY.
            last_discover: now
                .checked_sub(DISCOVER_EVERY - Duration::from_secs(2))
                .unwrap_or(now),
            last_imports: now,
            imported: BTreeSet::new(),
            chain_file_len: 0,
            reports: BTreeMap::new(),
            sites: std::collections::BTreeSet::new(),
            saved_counters: BTreeMap::new(),
            listening: Vec::new(),
            last_report: now,
            reporters: Reporters::new(now),
            report_due: true,
            report_tried: now,
            gossip_rejected: 0,
            policy: None,
            policy_seen: None,
            update_seen: (None, None),
            labels: BTreeMap::new(),
            member: None,
            member_seen: None,
            last_members: now,
            evicting: false,
            evict_due: true,
            last_evict: now,
            store: StoreStatus {
                max_bytes: p.store_cap,
                ..Default::default()
            },
            p,
        };
        mesh.labels = mesh.p.labels.clone();
        mesh.labels
            .insert("node".into(), mesh.swarm.local_peer_id().to_string());
        mesh.labels.insert("site".into(), mesh.p.site.clone());
        mesh.labels
            .insert("platform".into(), mesh.p.platform.clone());
        mesh.load_counters();
        mesh.scan_releases();
        mesh.load_policy();
        mesh.load_member();
        Ok(mesh)
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn start_network(&mut self) -> Result<(), MeshError> {
        for topic in TOPICS {
            self.swarm
                .behaviour_mut()
                .gossip
                .subscribe(&IdentTopic::new(topic))
                .map_err(net_err)?;
        }
        for addr in self.p.listen.clone() {
            self.swarm.listen_on(addr).map_err(net_err)?;
        }
        for addr in &self.p.bootstrap {
            if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
            }
        }
        self.dial_bootstrap();
        Ok(())
    }

    fn dial_bootstrap(&mut self) {
        for addr in self.p.bootstrap.clone() {
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::warn!(%addr, "cannot dial bootstrap peer: {e}");
            }
        }
    }

    // ---- releases on disk ----

    /// Takes `chain` if it is valid under the root key and newer than the
    /// one held; saves it if `save`.
    fn adopt_chain(&mut self, chain: TrustChain, save: bool) -> Result<(), String> {
        if chain.docs.len() <= self.p.chain.docs.len() {
            return Ok(());
        }
        let state =
            TrustState::from_chain(self.p.root.clone(), &chain).map_err(|e| e.to_string())?;
        if state.version() <= self.trust.version() {
            return Ok(());
        }
        tracing::info!(version = state.version(), "trust chain advanced");
        self.trust = state;
        self.p.chain = chain;
        // Pass it on at once: a peer still on the old chain would refuse,
        // and hold against the relayer, what the new keys sign.
        self.hello_all();
        if let (true, Some(path)) = (save, &self.p.chain_path) {
            let written = wire::encode(&self.p.chain)
                .map_err(|e| e.to_string())
                .and_then(|b| fsutil::write_atomic(path, &b, 0o644).map_err(|e| e.to_string()));
            if let Err(e) = written {
                tracing::error!("cannot save trust chain: {e}");
            }
        }
        Ok(())
    }

    /// Node: takes what `fleetmesh-node import` left on disk while the node
    /// runs — a newer trust chain, release manifests, and announcements,
    /// which it accepts and relays so its peers fetch the release from it.
    fn load_imports(&mut self) {
        if let Some(path) = self.p.chain_path.clone() {
            // Decoded only when its length changed: a newer chain is longer.
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            let changed = len != std::mem::replace(&mut self.chain_file_len, len);
            let chain = changed
                .then(|| std::fs::read(&path).ok())
                .flatten()
                .and_then(|b| wire::decode::<TrustChain>(&b).ok());
            if let Some(chain) = chain {
                if let Err(e) = self.adopt_chain(chain, false) {
                    tracing::warn!(path = %path.display(), "trust chain on disk: {e}");
                }
            }
        }
        self.scan_releases();
        let Ok(entries) = std::fs::read_dir(&self.p.releases_dir) else {
            return;
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "announcement"))
            .filter(|p| !self.imported.contains(p))
            .collect();
        found.sort();
        for path in found.into_iter().take(MAX_IMPORTS_PER_TICK) {
            let read = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    let signed =
                        wire::decode::<Signed<Announcement>>(&b).map_err(|e| e.to_string())?;
                    Ok((b, signed))
                });
            let accepted = read.and_then(|(b, s)| Ok((self.on_announcement(&s)?, b)));
            match accepted {
                Ok((MessageAcceptance::Accept, bytes)) => {
                    // The file's bytes are the message. No subscribers yet
                    // is fine: peers get it in hello.
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .gossip
                        .publish(IdentTopic::new(TOPIC_ANNOUNCE), bytes);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(path = %path.display(), "imported announcement: {e}"),
            }
            self.imported.insert(path);
        }
    }

    /// Loads signed manifests from the releases directory that are not
    /// loaded yet (the seed calls this every tick to pick up publishes).
    fn scan_releases(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.p.releases_dir) else {
            return;
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.strip_suffix(".manifest") else {
                continue;
            };
            match hex.parse::<ReleaseId>() {
                Ok(id) if !self.releases.contains_key(&id) => found.push(entry.path()),
                _ => {}
            }
        }
        if found.is_empty() {
            return;
        }
        let listed = self.listed_chunks();
        let now = crate::cli::unix_now();
        for path in found {
            let verified = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| wire::decode::<Signed<Manifest>>(&b).map_err(|e| e.to_string()))
                .and_then(|s| {
                    s.verify_release(&self.trust, now)
                        .map_err(|e| e.to_string())
                });
            match verified {
                Ok(m) => self.add_release(m, listed.as_ref()),
                Err(e) => tracing::warn!(path = %path.display(), "skipping stored manifest: {e}"),
            }
        }
    }

    /// A node's chunk files, listed once for the releases it is about to
    /// load (its store holds a few). `None` for the seed, whose store keeps
    /// every release it published, and if the listing fails: each chunk is
    /// then looked up.
    fn listed_chunks(&self) -> Option<HashSet<ChunkId>> {
        if self.p.role == Role::Seed {
            return None;
        }
        self.p
            .files
            .ids()
            .inspect_err(|e| tracing::warn!("cannot list the chunk store: {e}"))
            .ok()
    }

    fn add_release(
        &mut self,
        manifest: fleetmesh_protocol::VerifiedManifest,
        listed: Option<&HashSet<ChunkId>>,
    ) {
        let id = manifest.id();
        let files = &self.p.files;
        let mut release = Release::new(manifest, |id| match listed {
            Some(ids) => ids.contains(id),
            None => files.has_chunk(id),
        });
        if let Some(c) = self.saved_counters.remove(&id) {
            release.counters = c;
        }
        let recorded = match &self.p.store {
            None => true,
            Some(store) => store.manifest(&id).ok().flatten().is_some(),
        };
        if self.p.role == Role::Seed || (recorded && release.all_present()) {
            release.complete = true;
        } else {
            // With a store cap, a download waits for a pass to admit it.
            release.admitted = self.p.store_cap == 0;
            self.evict_due = true;
            let mut sched = Scheduler::new(
                self.p.sched.clone(),
                self.me.clone(),
                &release.pieces,
                |i| release.have.get(i),
            );
            for site in &self.sites {
                sched.add_site(site);
            }
            release.sched = Some(sched);
        }
        tracing::info!(
            version = %release.manifest().version,
            release = %id,
            have = release.have.count(),
            pieces = release.pieces.len(),
            "release loaded"
        );
        let (early, held) = self
            .wanted
            .remove(&id)
            .map(|mut w| (w.early, w.gather.take_held()))
            .unwrap_or_default();
        self.releases.insert(id, release);
        self.answer_held(id, held);
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            if let Some(state) = self.peers.get_mut(&peer) {
                state.sent.remove(&id);
                state.in_sched.remove(&id);
            }
            self.sync_peer(&peer);
        }
        for (peer, bits) in early {
            let have = Have {
                release: id,
                pieces: bits.len() as u32,
                full: Some(bits.to_bytes()),
                added: Vec::new(),
            };
            // A map of the wrong size is struck here, as on arrival.
            self.on_have(peer, have);
        }
    }

    // ---- swarm events ----

    fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                let known = self.peers.contains_key(&peer_id);
                if self.is_banned(&peer_id) || (!known && self.peers.len() >= self.p.max_peers) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                let state = self.peers.entry(peer_id).or_insert_with(|| Peer {
                    connected_at: Some(Instant::now()),
                    ..Peer::default()
                });
                state.conns.push(connection_id);
                if num_established.get() == 1 {
                    let hello = Request::Hello(self.hello());
                    self.send(peer_id, hello, Outbound::Hello);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if num_established == 0 {
                    self.forget_peer(&peer_id);
                } else if let Some(state) = self.peers.get_mut(&peer_id) {
                    state.conns.retain(|&c| c != connection_id);
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address.with(libp2p::multiaddr::Protocol::P2p(
                    *self.swarm.local_peer_id(),
                ));
                tracing::info!(%full, "listening");
                self.listening.push(full);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Exchange(e)) => self.on_exchange(e),
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(e)) => self.on_gossip(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => self.on_identify(peer_id, info),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer,
                addresses,
                ..
            })) => self.maybe_dial(peer, addresses.iter().cloned().collect()),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                // One dial per peer with all its addresses, so that smart
                // dialing can choose among them.
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in list {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    by_peer.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in by_peer {
                    self.maybe_dial(peer, addrs);
                }
            }
            _ => {}
        }
    }

    fn maybe_dial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == *self.swarm.local_peer_id()
            || self.swarm.is_connected(&peer)
            || self.is_banned(&peer)
            || self.peers.len() >= self.p.max_peers
        {
            return;
        }
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(addrs)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, "dial: {e}");
        }
    }

    fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned.get(peer).is_some_and(|t| Instant::now() < *t)
    }

    fn forget_peer(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
        self.unschedule(peer);
    }

    /// Takes a peer out of every download's scheduler.
    fn unschedule(&mut self, peer: &PeerId) {
        for r in self.releases.values_mut() {
            if let Some(s) = r.sched.as_mut() {
                s.remove_peer(peer);
            }
        }
    }

    fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
        if !info.agent_version.starts_with("fleetmesh/") {
            tracing::debug!(%peer, agent = %info.agent_version, "not a fleetmesh peer");
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        for addr in info.listen_addrs {
            self.swarm.behaviour_mut().kad.add_address(&peer, addr);
        }
        if let Some(state) = self.peers.get_mut(&peer) {
            // Its site and role come from its membership credential, not
            // from what it says of itself here.
            state.platform = agent_field(&info.agent_version, "platform");
        }
        self.sync_peer(&peer);
    }

    /// Adds an identified peer to the schedulers of the releases it takes
    /// part in, with what it is known to have. A peer takes part if it is
    /// the seed, runs a platform the release is for, or said it has pieces:
    /// so every node knows its site's members from the start, before their
    /// have-maps arrive, and does not fetch everything from the seed alone.
    fn sync_peer(&mut self, peer: &PeerId) {
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        let Some(info) = state.info.clone() else {
            return;
        };
        if state.slow_until.is_some() {
            return;
        }
        for (id, r) in &mut self.releases {
            let Some(s) = r.sched.as_mut() else {
                continue;
            };
            let takes_part = info.seed
                || state.haves.contains_key(id)
                || state
                    .platform
                    .as_ref()
                    .is_some_and(|p| r.manifest.manifest().supports(p));
            if !takes_part || !state.in_sched.insert(*id) {
                continue;
            }
            s.add_peer(*peer, info.clone());
            if let Some(bits) = state.haves.get(id) {
                s.peer_has(peer, bits.ones().map(|i| i as u32));
            }
        }
    }

    /// Slow retrieval: a same-site peer whose chunk request timed out is
    /// left out of the schedulers for a while, doubling with each timeout in
    /// a row. The schedulers wait for a same-site peer that has a piece
    /// (the site rule), so one that trickles would otherwise hold the node
    /// for ever; without it the pieces come from the WAN. Remote peers
    /// are only slowed down: a timeout halves their share.
    fn sideline(&mut self, peer: PeerId) {
        if self.class_of(&peer) != PeerClass::SameSite {
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.slow = p.slow.saturating_add(1);
        let secs = SLOW_BACKOFF.as_secs() << (p.slow - 1).min(5);
        let pause = Duration::from_secs(secs).min(SLOW_BACKOFF_MAX);
        p.slow_until = Some(Instant::now() + pause);
        p.in_sched.clear();
        tracing::warn!(%peer, timeouts = p.slow, secs = pause.as_secs(), "same-site peer too slow: its requests time out; fetching elsewhere for now");
        self.unschedule(&peer);
    }

    fn ban(&mut self, peer: PeerId, why: &str) {
        tracing::warn!(%peer, "banning peer: {why}");
        self.banned.insert(peer, Instant::now() + BAN);
        let now = self.now();
        for r in self.releases.values_mut() {
            if let Some(s) = r.sched.as_mut() {
                s.ban(now, &peer);
            }
        }
        self.peers.remove(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    fn strike(&mut self, peer: PeerId, why: &str) {
        let strikes = self.peers.get_mut(&peer).map(|p| {
            p.strikes += 1;
            p.strikes
        });
        tracing::warn!(%peer, "strike: {why}");
        if strikes.is_some_and(|s| s >= MAX_STRIKES) {
            self.ban(
                peer,
                "too many strikes (invalid messages or request floods)",
            );
        }
    }

    // ---- gossip ----

    fn on_gossip(&mut self, event: gossipsub::Event) {
        let gossipsub::Event::Message {
            propagation_source,
            message_id,
            message,
        } = event
        else {
            return;
        };
        let topic = message.topic.as_str().to_owned();
        let verdict = match topic.as_str() {
            // Gossip is taken only from members, and not relayed otherwise.
            _ if !self.is_member(&propagation_source) => Ok(MessageAcceptance::Ignore),
            TOPIC_ANNOUNCE => match wire::decode::<Signed<Announcement>>(&message.data) {
                Ok(signed) => self.on_announcement(&signed),
                Err(e) => Err(e.to_string()),
            },
            TOPIC_STATUS => self.on_report(&message.data),
            TOPIC_POLICY => self.on_policy(&message.data),
            _ => Ok(MessageAcceptance::Ignore),
        };
        let acceptance = match verdict {
            Ok(a) => a,
            Err(why) => {
                self.gossip_rejected += 1;
                self.strike(propagation_source, &why);
                MessageAcceptance::Reject
            }
        };
        self.swarm
            .behaviour_mut()
            .gossip
            .report_message_validation_result(&message_id, &propagation_source, acceptance);
    }

    /// Validates an announcement (signature, trust chain, expiry, not older
    /// than known) and acts on a new one. `Err` means: reject and penalise.
    fn on_announcement(
        &mut self,
        signed: &Signed<Announcement>,
    ) -> Result<MessageAcceptance, String> {
        let now = crate::cli::unix_now();
        if self.trust.current(now).is_err() {
            // No usable trust document yet: cannot judge, do not relay.
            return Ok(MessageAcceptance::Ignore);
        }
        match self.announcements.accept(signed, &self.trust, now) {
            Ok(Accepted::Known) => Ok(MessageAcceptance::Accept),
            Ok(Accepted::New(a)) => {
                tracing::info!(version = %a.version, channel = %a.channel, release = %a.release_id, "release announced");
                self.want(a);
                // Ask for its parts now, not at the next tick: every level
                // a part climbs would wait for one.
                self.fetch_manifests();
                Ok(MessageAcceptance::Accept)
            }
            // A validly signed older release: a late relay or a replay.
            // Not acted on and not relayed, but not a reason to ban: honest
            // peers relay old announcements that cross a new one.
            Err(e @ fleetmesh_protocol::Error::VersionRollback { .. }) => {
                tracing::debug!("ignoring announcement: {e}");
                Ok(MessageAcceptance::Ignore)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn want(&mut self, a: Announcement) {
        let matches = self.p.role == Role::Node
            && a.platforms.contains(&self.p.platform)
            && (self.p.channels.is_empty() || self.p.channels.contains(&a.channel));
        if matches && !self.releases.contains_key(&a.release_id) {
            let (parts, now) = (a.manifest.ids.len(), self.now());
            self.wanted.entry(a.release_id).or_insert(Wanted {
                parts: a.manifest,
                gather: Gather::new(parts, now),
                holders: BTreeSet::new(),
                early: HashMap::new(),
            });
        }
    }

    /// A node's signed report: the signature must verify with the key it
    /// carries, and that key must be the node id's.
    fn on_report(&mut self, data: &[u8]) -> Result<MessageAcceptance, String> {
        let envelope: ReportEnvelope = wire::decode(data).map_err(|e| e.to_string())?;
        let mut report = envelope.verify().map_err(|e| e.to_string())?;
        let peer = peer_id_of(&envelope.key);
        if peer.to_string() != report.node_id {
            return Err(format!("report for {} signed by {peer}", report.node_id));
        }
        if self.p.members_dir.is_some() {
            // Seed: a report counts only from a node enrolled here, and with
            // the site and labels its credential gives (the rollout's
            // groups), not the ones it claims. Relays are not to blame.
            let Some((_, m)) = self.issued_to(&peer) else {
                tracing::debug!(node = %report.node_id, "ignoring report: the node is not enrolled (or expired, or revoked)");
                return Ok(MessageAcceptance::Ignore);
            };
            report.labels.extend(m.labels);
            report.labels.insert("site".into(), m.site);
        }
        let verdict = judge_report(
            self.reports.get(&report.node_id),
            &report,
            crate::cli::unix_now(),
        );
        if verdict != ReportVerdict::Newer {
            tracing::debug!(node = %report.node_id, at = %report.at, "ignoring report: {verdict:?}");
            return Ok(MessageAcceptance::Ignore);
        }
        if let Some(site) = report.labels.get("site") {
            if self.sites.len() < sched::MAX_SITES && self.sites.insert(site.clone()) {
                for s in self.releases.values_mut().filter_map(|r| r.sched.as_mut()) {
                    s.add_site(site);
                }
            }
        }
        self.reporters.heard(peer, Instant::now());
        if self.p.role == Role::Seed
            && (self.reports.len() < MAX_REPORTERS || self.reports.contains_key(&report.node_id))
        {
            self.reports.insert(report.node_id.clone(), report);
        }
        Ok(MessageAcceptance::Accept)
    }

    fn hello(&self) -> Hello {
        Hello {
            trust: self.p.chain.clone(),
            announcements: self.announcements.signed(),
            policy: self
                .policy
                .as_ref()
                .map(|p| p.1.clone())
                .unwrap_or_default(),
            member: self.member.clone(),
        }
    }

    /// Reads this node's credential if the file changed. A credential that
    /// does not verify is still presented (the trust chain may not have
    /// arrived yet), but logged.
    fn load_member(&mut self) {
        let modified = fsutil::mtime(&self.p.member_file);
        if modified == self.member_seen {
            return;
        }
        self.member_seen = modified;
        let path = self.p.member_file.display();
        if modified.is_none() {
            tracing::error!("{path}: no membership credential: peers will refuse this node until it is enrolled (fleetmesh-seed enroll)");
            self.member = None;
            return;
        }
        match std::fs::read(&self.p.member_file)
            .map_err(|e| e.to_string())
            .and_then(|b| wire::decode::<Signed<Membership>>(&b).map_err(|e| e.to_string()))
        {
            Ok(signed) if self.trust.current(crate::cli::unix_now()).is_err() => {
                tracing::info!("membership credential loaded (checked once a trust chain arrives)");
                self.member = Some(signed);
            }
            Ok(signed) => {
                match self.check_member(self.swarm.local_peer_id(), Some(&signed)) {
                    Ok(m) => {
                        tracing::info!(site = %m.site, expires_at = %m.expires_at, "membership credential loaded")
                    }
                    Err(e) => tracing::warn!("{path}: {e}"),
                }
                self.member = Some(signed);
            }
            Err(e) => {
                tracing::error!("{path}: {e}");
                self.member = None;
            }
        }
    }

    /// Seed: the credential issued to `peer`, if there is one and it
    /// verifies (not expired, not revoked).
    fn issued_to(&self, peer: &PeerId) -> Option<(Signed<Membership>, Membership)> {
        let path = self.p.members_dir.as_ref()?.join(format!("{peer}.cred"));
        let signed = wire::decode::<Signed<Membership>>(&std::fs::read(path).ok()?).ok()?;
        let m = self.check_member(peer, Some(&signed)).ok()?;
        Some((signed, m))
    }

    /// A peer (the seed) sent this node a newer credential: kept if it
    /// verifies (under the chain that came with it, if that is newer), is
    /// for this node's site, and the one held does not verify; then every
    /// peer gets a new hello.
    fn on_renewal(&mut self, peer: PeerId, trust: TrustChain, signed: Signed<Membership>) {
        if let Err(e) = self.adopt_chain(trust, true) {
            self.strike(peer, &format!("trust chain: {e}"));
            return;
        }
        let me = *self.swarm.local_peer_id();
        if self.check_member(&me, self.member.as_ref()).is_ok() {
            return;
        }
        let m = match self.check_member(&me, Some(&signed)) {
            Ok(m) if m.site == self.p.site => m,
            Ok(m) => {
                tracing::warn!(%peer, site = %m.site, "ignoring a credential for another site");
                return;
            }
            Err(e) => {
                tracing::warn!(%peer, "ignoring a credential that does not verify: {e}");
                return;
            }
        };
        let saved = wire::encode(&signed)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                fsutil::write_atomic(&self.p.member_file, &b, 0o644).map_err(|e| e.to_string())
            });
        if let Err(e) = saved {
            tracing::error!("cannot save the renewed credential: {e}");
            return;
        }
        tracing::info!(%peer, expires_at = %m.expires_at, "membership credential renewed");
        self.member = Some(signed);
        self.member_seen = fsutil::mtime(&self.p.member_file);
        self.hello_all();
    }

    /// Says hello again to every peer (this node's chain or credential
    /// changed).
    fn hello_all(&mut self) {
        let hello = self.hello();
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            self.send(peer, Request::Hello(hello.clone()), Outbound::Hello);
        }
    }

    /// Revocations in the policy held.
    fn revoked(&self) -> &[Revocation] {
        self.policy
            .as_ref()
            .map_or(&[], |(d, _)| d.revoked.as_slice())
    }

    /// Verifies the credential `peer` presented.
    fn check_member(
        &self,
        peer: &PeerId,
        signed: Option<&Signed<Membership>>,
    ) -> Result<Membership, String> {
        let signed = signed.ok_or("it presented no membership credential")?;
        let key = node_key_of(peer).ok_or("its peer id is not an ed25519 key")?;
        signed
            .verify_member(&self.trust, &key, self.revoked(), crate::cli::unix_now())
            .map_err(|e| e.to_string())
    }

    fn is_member(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.member.is_some())
    }

    /// Drops members whose credential expired or was revoked, and peers
    /// that did not present a valid one within [`MEMBER_GRACE`].
    fn check_members(&mut self) {
        let (now, unix_now) = (Instant::now(), crate::cli::unix_now());
        let (mut refuse, mut silent) = (Vec::new(), Vec::new());
        for (peer, state) in &self.peers {
            let why = match &state.member {
                Some(m) if m.is_revoked(self.revoked()) => {
                    Some("its membership was revoked".to_owned())
                }
                Some(m) if unix_now >= m.expires_at => {
                    Some("its membership credential expired".to_owned())
                }
                Some(_) => None,
                None => {
                    // No hello came through (a slow link, a stranger): drop
                    // the connection, but let it try again.
                    if state.connected_at.is_some_and(|t| now - t >= MEMBER_GRACE) {
                        silent.push(*peer);
                    }
                    None
                }
            };
            if let Some(why) = why {
                refuse.push((*peer, why));
            }
        }
        for peer in silent {
            tracing::info!(%peer, "disconnecting: no hello with a valid membership credential");
            self.forget_peer(&peer);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        for (peer, why) in refuse {
            self.refuse(peer, &why);
        }
    }

    /// Disconnects a non-member and keeps it away for a while.
    fn refuse(&mut self, peer: PeerId, why: &str) {
        tracing::warn!(%peer, "refusing peer: {why}");
        self.p.metrics.peer_refused();
        self.banned.insert(peer, Instant::now() + NOT_MEMBER_BAN);
        self.forget_peer(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// Loads the policy file (the seed's current policy, or the one a node
    /// accepted before a restart) if it changed.
    fn load_policy(&mut self) {
        let modified = fsutil::mtime(&self.p.policy_file);
        if modified.is_none() || modified == self.policy_seen {
            return;
        }
        self.policy_seen = modified;
        let Ok(bytes) = std::fs::read(&self.p.policy_file) else {
            return;
        };
        match self.check_policy(&bytes) {
            Ok(Some(doc)) => {
                tracing::info!(version = doc.version, "policy loaded");
                self.policy = Some((doc, bytes));
                self.publish_policy();
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("{}: {e}", self.p.policy_file.display()),
        }
    }

    /// Verifies an encoded signed policy; `Some(policy)` if it is newer
    /// than the one held, `None` if it is the one held or an older one
    /// (a late relay: not acted on, not relayed, not held against anyone).
    fn check_policy(&self, bytes: &[u8]) -> Result<Option<PolicyDoc>, String> {
        if self.policy.as_ref().is_some_and(|p| p.1 == bytes) {
            return Ok(None);
        }
        let signed: Signed<PolicyDoc> = wire::decode(bytes).map_err(|e| e.to_string())?;
        let doc = verify_policy(&signed, &self.trust, None, crate::cli::unix_now())?;
        let newer = self
            .policy
            .as_ref()
            .is_none_or(|p| doc.version > p.0.version);
        Ok(newer.then_some(doc))
    }

    /// A policy from a peer: newer and valid is kept (and saved, for the
    /// updater); the one held is a re-publish; anything else is refused.
    fn on_policy(&mut self, bytes: &[u8]) -> Result<MessageAcceptance, String> {
        if self.trust.current(crate::cli::unix_now()).is_err() {
            return Ok(MessageAcceptance::Ignore);
        }
        let Some(doc) = self.check_policy(bytes)? else {
            let same = self.policy.as_ref().is_some_and(|p| p.1 == bytes);
            return Ok(if same {
                MessageAcceptance::Accept
            } else {
                MessageAcceptance::Ignore
            });
        };
        if self.p.role == Role::Node {
            if let Err(e) = fsutil::write_atomic(&self.p.policy_file, bytes, 0o644) {
                tracing::error!("cannot save policy: {e}");
                return Ok(MessageAcceptance::Ignore);
            }
            self.policy_seen = fsutil::mtime(&self.p.policy_file);
        }
        tracing::info!(version = doc.version, "policy accepted");
        self.policy = Some((doc, bytes.to_vec()));
        Ok(MessageAcceptance::Accept)
    }

    /// Caps from the policy's bandwidth schedule for this node, if one is
    /// in force; a schedule only tightens the configured caps.
    fn apply_bandwidth_schedule(&mut self) {
        let scheduled = self
            .policy
            .as_ref()
            .and_then(|(doc, _)| doc.bandwidth_for(&self.labels, crate::cli::unix_now()));
        let tighter = |configured: u64, scheduled: u64| match (configured, scheduled) {
            (0, s) => s,
            (c, 0) => c,
            (c, s) => c.min(s),
        };
        let (down, up) = match scheduled {
            Some((d, u)) => (
                tighter(self.p.download_cap, d),
                tighter(self.p.upload_cap, u),
            ),
            None => (self.p.download_cap, self.p.upload_cap),
        };
        let now = self.now();
        if down != self.down.rate() || up != self.up.rate() {
            tracing::info!(down, up, "bandwidth caps (bytes/s, 0: none)");
            self.down.set_rate(now, down, down / 4);
            self.up.set_rate(now, up, up / 4);
        }
    }

    fn publish_policy(&mut self) {
        if self.p.role != Role::Seed {
            return;
        }
        if let Some((_, bytes)) = &self.policy {
            let topic = IdentTopic::new(TOPIC_POLICY);
            let _ = self
                .swarm
                .behaviour_mut()
                .gossip
                .publish(topic, bytes.clone());
        }
    }

    /// Takes a peer's hello; `Err` if it is not a member (then nothing in
    /// it but a valid trust chain is used).
    fn on_hello(&mut self, peer: PeerId, hello: Hello) -> Result<(), String> {
        // A chain verifies on its own from the root key, whoever brings it,
        // and is needed to check the credential.
        if let Err(e) = self.adopt_chain(hello.trust, true) {
            self.strike(peer, &format!("trust chain: {e}"));
            return Err(format!("trust chain: {e}"));
        }
        let member = self.check_member(&peer, hello.member.as_ref())?;
        let Some(state) = self.peers.get_mut(&peer) else {
            // Disconnected meanwhile (or refused for the limits): nothing
            // to hold against it.
            return Ok(());
        };
        state.info = Some(PeerInfo {
            site: member.site.clone(),
            seed: member.seed,
            tag: tag_of(&peer),
        });
        state.member = Some(member);
        self.sync_peer(&peer);
        for signed in hello
            .announcements
            .iter()
            .take(fleetmesh_protocol::mesh::MAX_ANNOUNCEMENTS)
        {
            if let Err(e) = self.on_announcement(signed) {
                tracing::debug!(%peer, "announcement in hello: {e}");
            }
        }
        if !hello.policy.is_empty() {
            if let Err(e) = self.on_policy(&hello.policy) {
                self.strike(peer, &format!("policy in hello: {e}"));
            }
        }
        Ok(())
    }

    /// A peer that says hello may have restarted and reconnected before
    /// its old connection timed out here (QUIC has no reset: the old one
    /// lingers, so the peer never looked disconnected): it knows nothing
    /// of what was sent on that one, so its have-maps go again in full.
    /// And a peer says hello when it starts with its first connection to
    /// us (or when its credential changes), so a second hello, on a newer
    /// connection than its first, means the connections older than that
    /// one may belong to a process that is gone (a peer can hold several,
    /// dialed at once): they are closed, or libp2p would keep sending
    /// requests to this peer round-robin into them until QUIC's idle
    /// timeout. A live one among them costs only a retry.
    fn greeted_by(&mut self, peer: &PeerId, conn: ConnectionId) {
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        state.sent.clear();
        state.retry_full.clear();
        state.have_in_flight = false;
        if state.hello_on.replace(conn).is_none_or(|last| last > conn) {
            return;
        }
        let older: Vec<ConnectionId> = state.conns.iter().copied().filter(|&c| c < conn).collect();
        if !older.is_empty() {
            tracing::info!(%peer, n = older.len(), "hello on a newer connection: closing the older ones");
        }
        for c in older {
            self.swarm.close_connection(c);
        }
    }

    // ---- exchange protocol ----

    fn send(&mut self, peer: PeerId, request: Request, what: Outbound) {
        let id = self
            .swarm
            .behaviour_mut()
            .exchange
            .send_request(&peer, request);
        self.outbound.insert(id, what);
    }

    fn on_exchange(&mut self, event: request_response::Event<Request, Response>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                connection_id,
                message:
                    Message::Request {
                        request, channel, ..
                    },
            } => self.on_request(peer, connection_id, request, channel),
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(what) = self.outbound.remove(&request_id) {
                    self.on_response(peer, what, response);
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                connection_id,
            } => {
                if let Some(what) = self.outbound.remove(&request_id) {
                    tracing::debug!(%peer, %connection_id, "request failed: {error}");
                    self.on_failure(peer, what);
                }
            }
            _ => {}
        }
    }

    fn on_request(
        &mut self,
        peer: PeerId,
        conn: ConnectionId,
        request: Request,
        channel: ResponseChannel<Response>,
    ) {
        let now = self.now();
        let admitted = self
            .peers
            .get_mut(&peer)
            .map(|p| (p.rate.admit(now, MAX_REQUESTS_PER_SEC), p.rate.refused()));
        let response = match request {
            _ if admitted.is_some_and(|(ok, _)| !ok) => {
                if admitted.is_some_and(|(_, n)| n % FLOOD_STRIKE == 0) {
                    self.strike(peer, "request flood");
                }
                Response::Busy
            }
            Request::Hello(hello) => match self.on_hello(peer, hello) {
                Ok(()) => {
                    self.greeted_by(&peer, conn);
                    Response::Hello(self.hello())
                }
                Err(why) => match self.issued_to(&peer) {
                    Some((signed, _)) => {
                        tracing::info!(%peer, "its credential fails ({why}); sending the newer one issued to it");
                        Response::Renewal {
                            trust: self.p.chain.clone(),
                            member: signed,
                        }
                    }
                    None => {
                        if self.trust.version() == 0 {
                            // Nothing to check against yet: the node is new.
                            tracing::info!(%peer, "cannot check its credential yet: {why}");
                        } else {
                            tracing::warn!(%peer, "not a fleet member: {why}");
                        }
                        Response::NotMember(why)
                    }
                },
            },
            _ if !self.is_member(&peer) => {
                Response::NotMember("send a hello with a valid membership credential first".into())
            }
            Request::Have(have) => Response::HaveAck {
                need_full: self.on_have(peer, have),
            },
            Request::ManifestPart {
                release,
                part,
                reach,
            } => return self.serve_manifest_part(peer, release, part as usize, reach, channel),
            Request::Chunks { release, pieces } => {
                return self.serve_chunks(peer, release, &pieces, channel)
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .exchange
            .send_response(channel, response);
    }

    /// Takes a have-map; returns true if the sender should send it whole.
    fn on_have(&mut self, peer: PeerId, have: Have) -> bool {
        if have.validate().is_err() {
            self.strike(peer, "malformed have-map");
            return false;
        }
        let Some(release) = self.releases.get(&have.release) else {
            // Not loaded yet: the peer has its manifest, so ask it for that,
            // and keep its map for when the manifest loads.
            let Some(w) = self.wanted.get_mut(&have.release) else {
                return true;
            };
            if w.holders.len() >= self.p.max_peers && !w.holders.contains(&peer) {
                return true;
            }
            w.holders.insert(peer);
            let n = have.pieces as usize;
            let kept = match &have.full {
                Some(full) => w
                    .early
                    .entry(peer)
                    .insert_entry(Bits::from_bytes(n, full))
                    .into_mut(),
                None => match w.early.get_mut(&peer) {
                    Some(kept) if kept.len() == n => kept,
                    _ => return true,
                },
            };
            for &i in &have.added {
                kept.set(i as usize);
            }
            return false;
        };
        if have.pieces as usize != release.pieces.len() {
            self.strike(peer, "have-map of the wrong size");
            return false;
        }
        let Some(state) = self.peers.get_mut(&peer) else {
            return false;
        };
        let known = state.haves.contains_key(&have.release);
        if !known && have.full.is_none() {
            return true;
        }
        let bits = state
            .haves
            .entry(have.release)
            .or_insert_with(|| Bits::new(have.pieces as usize));
        let mut new = Vec::new();
        if let Some(full) = &have.full {
            for i in Bits::from_bytes(have.pieces as usize, full).ones() {
                if bits.set(i) {
                    new.push(i as u32);
                }
            }
        }
        for &i in &have.added {
            if bits.set(i as usize) {
                new.push(i);
            }
        }
        if state.in_sched.contains(&have.release) {
            if let Some(s) = self
                .releases
                .get_mut(&have.release)
                .and_then(|r| r.sched.as_mut())
            {
                s.peer_has(&peer, new);
            }
        } else {
            self.sync_peer(&peer);
        }
        false
    }

    fn serve_chunks(
        &mut self,
        peer: PeerId,
        release: ReleaseId,
        pieces: &[u32],
        channel: ResponseChannel<Response>,
    ) {
        let (ids, estimate): (Vec<ChunkId>, u64) = match self.releases.get(&release) {
            Some(r)
                if pieces.len() <= MAX_BATCH
                    && pieces.iter().all(|&i| (i as usize) < r.pieces.len()) =>
            {
                let (ids, lens): (Vec<ChunkId>, Vec<u32>) =
                    pieces.iter().map(|&i| r.pieces[i as usize]).unzip();
                (ids, lens.into_iter().map(u64::from).sum())
            }
            _ => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .exchange
                    .send_response(channel, Response::Chunks(Vec::new()));
                return;
            }
        };
        let now = self.now();
        let by_peer = self.serving_by.get(&peer).copied().unwrap_or(0);
        if self.serving >= MAX_SERVING
            || by_peer >= MAX_SERVING_PER_PEER
            || self.up.wait_for(now, estimate) > MAX_UPLOAD_WAIT
        {
            let _ = self
                .swarm
                .behaviour_mut()
                .exchange
                .send_response(channel, Response::Busy);
            return;
        }
        let delay = self.up.reserve(now, estimate);
        self.serving += 1;
        *self.serving_by.entry(peer).or_insert(0) += 1;
        let files = self.p.files.clone();
        let tx = self.done_tx.clone();
        let corrupt = self.p.chaos_corrupt_uploads;
        let chaos = self.p.chaos_upload_delay;
        if !chaos.is_zero() {
            tracing::info!(%peer, secs = chaos.as_secs(), "chaos: holding a chunk response");
        }
        let delay = delay + chaos;
        tracing::trace!(%peer, n = ids.len(), "serving");
        let since = Instant::now();
        tokio::spawn(async move {
            let read =
                tokio::task::spawn_blocking(move || read_for_peer(&files, &ids, corrupt)).await;
            tokio::time::sleep(delay).await;
            let response = match read {
                Ok(chunks) => Response::Chunks(chunks),
                Err(_) => Response::Busy,
            };
            let _ = tx
                .send(Done::Served {
                    release,
                    peer,
                    channel,
                    response,
                    since,
                })
                .await;
        });
    }

    fn on_response(&mut self, peer: PeerId, what: Outbound, response: Response) {
        match (what, response) {
            (Outbound::Hello, Response::Hello(hello)) => {
                if let Err(why) = self.on_hello(peer, hello) {
                    self.refuse(peer, &why);
                }
            }
            (Outbound::Hello, Response::Renewal { trust, member }) => {
                self.on_renewal(peer, trust, member)
            }
            (what, Response::NotMember(why)) => {
                if why == fleetmesh_protocol::Error::NoTrust.to_string() {
                    tracing::info!(%peer, "the peer cannot check this node's credential yet: {why}");
                } else {
                    tracing::warn!(%peer, "the peer refuses this node as a fleet member: {why}");
                }
                self.on_failure(peer, what);
            }
            (Outbound::Have { release, upto }, Response::HaveAck { need_full }) => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.have_in_flight = false;
                    if need_full {
                        state.sent.remove(&release);
                        state
                            .retry_full
                            .insert(release, Instant::now() + RETRY_FULL_HAVE);
                    } else {
                        state.sent.insert(release, upto);
                    }
                }
            }
            (Outbound::ManifestPart(id, part), Response::ManifestPart(Some(bytes))) => {
                self.on_manifest_part(peer, id, part as usize, bytes)
            }
            (Outbound::ManifestPart(id, part), Response::ManifestPart(None)) => {
                tracing::debug!(%peer, release = %id, part, "manifest part: none");
                let now = self.now();
                if let Some(w) = self.wanted.get_mut(&id) {
                    // The mesh's age is `now`.
                    w.gather.none(peer, part as usize, now, now);
                }
            }
            (Outbound::ManifestPart(id, part), Response::ManifestPartLater) => {
                tracing::debug!(%peer, release = %id, part, "manifest part: later");
                let now = self.now();
                if let Some(w) = self.wanted.get_mut(&id) {
                    w.gather.later(peer, part as usize, now);
                }
            }
            (
                Outbound::Chunks {
                    release,
                    req,
                    pieces,
                },
                Response::Chunks(chunks),
            ) => {
                tracing::debug!(%peer, req = req.0, n = chunks.len(), "chunks received");
                self.store_chunks(peer, release, req, &pieces, chunks)
            }
            (what, Response::Busy) => self.on_failure(peer, what),
            (what, _) => {
                self.strike(peer, "response does not match its request");
                self.on_failure(peer, what);
            }
        }
    }

    fn on_failure(&mut self, peer: PeerId, what: Outbound) {
        match what {
            Outbound::Chunks { release, req, .. } => {
                if let Some(s) = self
                    .releases
                    .get_mut(&release)
                    .and_then(|r| r.sched.as_mut())
                {
                    s.failed(req);
                }
            }
            Outbound::Have { release, .. } => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.have_in_flight = false;
                    state.sent.remove(&release);
                }
            }
            Outbound::ManifestPart(id, part) => {
                let now = self.now();
                if let Some(w) = self.wanted.get_mut(&id) {
                    // The mesh's age is `now`.
                    w.gather.missed(peer, part as usize, now, now);
                }
            }
            Outbound::Hello => {}
        }
    }

    /// Answers a request for a manifest part: with the part if this node
    /// has it (from a loaded release's manifest, or among the parts it is
    /// gathering), later if it is fetching that part itself, else none.
    fn serve_manifest_part(
        &mut self,
        peer: PeerId,
        release: ReleaseId,
        part: usize,
        reach: u64,
        channel: ResponseChannel<Response>,
    ) {
        let now = self.now();
        let mate = self
            .peers
            .get(&peer)
            .and_then(|p| p.info.as_ref())
            .is_some_and(|i| i.site == self.me.site && !i.seed);
        let mine = self.wanted.get(&release).filter(|_| mate).map(|w| {
            let f = self.part_fetch(release, w, now);
            (!f.is_site_fetcher()).then(|| f.reach(part))
        });
        let own = part_rank(&release, &self.me.site, part);
        let mut taken_up = false;
        if let (Some(mine), Some(w)) = (mine, self.wanted.get_mut(&release)) {
            taken_up = w.gather.site_asks(peer, part, reach, mine, own, now);
        }
        if taken_up {
            tracing::debug!(%peer, %release, part, "taking up a manifest part for the site");
            self.fetch_manifests();
        }
        let unheld = match self.wanted.get_mut(&release) {
            Some(w) => w.gather.hold(part, now, (peer, channel)),
            None => Some((peer, channel)),
        };
        if let Some((peer, channel)) = unheld {
            self.answer_part(peer, channel, release, part);
        }
    }

    /// Part `part` of a release's encoded manifest, if this node has it:
    /// from a loaded release's manifest, or among the parts it gathers.
    fn manifest_part(&mut self, release: ReleaseId, part: usize) -> Option<Vec<u8>> {
        if let Some(r) = self.releases.get_mut(&release) {
            return r.manifest_part(part);
        }
        self.wanted.get(&release)?.gather.part(part).cloned()
    }

    /// Answers with part `part` of `release`'s manifest if this node has
    /// it; else later if it is gathering that manifest itself, else none.
    fn answer_part(
        &mut self,
        peer: PeerId,
        channel: ResponseChannel<Response>,
        release: ReleaseId,
        part: usize,
    ) {
        let bytes = self.manifest_part(release, part);
        let sent = bytes.as_ref().map_or(0, Vec::len) as u64;
        self.p.metrics.sent_manifest(self.class_of(&peer), sent);
        let response = match bytes {
            None if self.wanted.contains_key(&release) => Response::ManifestPartLater,
            bytes => Response::ManifestPart(bytes),
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .exchange
            .send_response(channel, response);
    }

    /// Answers held requests for parts of `release` with what this node
    /// has of them now.
    fn answer_held(
        &mut self,
        release: ReleaseId,
        held: Vec<(usize, (PeerId, ResponseChannel<Response>))>,
    ) {
        for (part, (peer, channel)) in held {
            self.answer_part(peer, channel, release, part);
        }
    }

    /// Takes a manifest part checked against its announced hash; with the
    /// last one, decodes and loads the manifest.
    fn on_manifest_part(&mut self, peer: PeerId, id: ReleaseId, part: usize, bytes: Vec<u8>) {
        let now = self.now();
        let Some(w) = self.wanted.get_mut(&id) else {
            return;
        };
        if part >= w.gather.len() || w.gather.has(part) {
            return;
        }
        if !w.parts.check(part, &bytes) {
            w.gather.want(part, now);
            self.strike(peer, "manifest part does not match its announced hash");
            return;
        }
        tracing::debug!(%peer, release = %id, part, "manifest part received");
        let ready = w.gather.got(part, bytes);
        self.answer_held(id, ready.into_iter().map(|r| (part, r)).collect());
        let Some(parts) = self.wanted.get(&id).and_then(|w| w.gather.complete()) else {
            return;
        };
        let encoded: Vec<u8> = parts.into_iter().flatten().copied().collect();
        match wire::decode::<Signed<Manifest>>(&encoded) {
            Ok(signed) => self.on_manifest(peer, id, signed),
            Err(e) => tracing::error!(release = %id, "announced manifest parts do not decode: {e}"),
        }
        // Still wanted: it did not load, so its parts were wrong as
        // announced; fetch them again later rather than keep them.
        if let Some(w) = self.wanted.get_mut(&id) {
            w.gather.restart(now + MANIFEST_RETRY);
        }
    }

    fn on_manifest(&mut self, peer: PeerId, id: ReleaseId, signed: Signed<Manifest>) {
        if signed.release_id() != id {
            self.strike(peer, "manifest does not match the requested release id");
            return;
        }
        let verified = match signed.verify_release(&self.trust, crate::cli::unix_now()) {
            Ok(v) => v,
            Err(e) => {
                self.strike(peer, &format!("manifest: {e}"));
                return;
            }
        };
        if let Err(e) = verified.check_platform(&self.p.platform) {
            tracing::warn!("announced release does not match its manifest: {e}");
            self.wanted.remove(&id);
            return;
        }
        let path = self.p.releases_dir.join(format!("{id}.manifest"));
        let saved = wire::encode(&signed)
            .map_err(|e| e.to_string())
            .and_then(|b| fsutil::write_atomic(&path, &b, 0o644).map_err(|e| e.to_string()));
        if let Err(e) = saved {
            tracing::error!("cannot save manifest: {e}");
            return;
        }
        let listed = self.listed_chunks();
        self.add_release(verified, listed.as_ref());
    }

    fn store_chunks(
        &mut self,
        peer: PeerId,
        release: ReleaseId,
        req: RequestId,
        pieces: &[u32],
        chunks: Vec<Option<Vec<u8>>>,
    ) {
        let Some(r) = self.releases.get(&release).filter(|r| r.sched.is_some()) else {
            return;
        };
        let ids: Vec<(u32, ChunkId)> = pieces
            .iter()
            .filter_map(|&i| Some((i, r.pieces.get(i as usize)?.0)))
            .collect();
        if chunks.len() > ids.len() {
            self.ban(peer, "sent more chunks than requested");
            return;
        }
        let files = self.p.files.clone();
        let tx = self.done_tx.clone();
        tokio::spawn(async move {
            let done = tokio::task::spawn_blocking(move || {
                let (mut got, mut lacks, mut bytes, mut bad) = (Vec::new(), Vec::new(), 0, None);
                for ((piece, id), chunk) in ids.iter().zip(chunks) {
                    match chunk {
                        None => lacks.push(*piece),
                        Some(encoded) => match files.put_received(id, &encoded) {
                            Ok(_) => {
                                got.push(*piece);
                                bytes += encoded.len() as u64;
                            }
                            Err(crate::StoreError::Invalid(e)) => {
                                bad = Some(format!("bad chunk {id}: {e}"));
                                break;
                            }
                            Err(e) => {
                                tracing::error!("cannot store chunk {id}: {e}");
                                break;
                            }
                        },
                    }
                }
                Done::Stored {
                    release,
                    req,
                    peer,
                    got,
                    lacks,
                    bytes,
                    bad,
                }
            })
            .await;
            if let Ok(done) = done {
                let _ = tx.send(done).await;
            }
        });
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Served {
                release,
                peer,
                channel,
                response,
                since,
            } => {
                self.serving = self.serving.saturating_sub(1);
                if let Some(n) = self.serving_by.get_mut(&peer) {
                    *n -= 1;
                    if *n == 0 {
                        self.serving_by.remove(&peer);
                    }
                }
                if let Response::Chunks(chunks) = &response {
                    let bytes: u64 = chunks.iter().flatten().map(|c| c.len() as u64).sum();
                    self.p.metrics.sent(self.class_of(&peer), bytes);
                    if let Some(r) = self.releases.get_mut(&release) {
                        r.counters.bytes_up += bytes;
                    }
                }
                // From request to here: reading, then waiting for this
                // loop (a busy node answers late).
                tracing::debug!(%peer, ms = since.elapsed().as_millis() as u64, "chunks served");
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .exchange
                    .send_response(channel, response);
            }
            Done::Stored {
                release,
                req,
                peer,
                got,
                lacks,
                bytes,
                bad,
            } => self.on_stored(release, req, peer, got, lacks, bytes, bad),
            Done::Verified { release, result } => self.on_verified(release, result),
            Done::Evicted(outcome) => self.on_evicted(outcome),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_stored(
        &mut self,
        release: ReleaseId,
        req: RequestId,
        peer: PeerId,
        got: Vec<u32>,
        lacks: Vec<u32>,
        bytes: u64,
        bad: Option<String>,
    ) {
        tracing::debug!(%peer, req = req.0, got = got.len(), lacks = lacks.len(), "chunks stored");
        let now = self.now();
        let class = self.class_of(&peer);
        let same_site = class == PeerClass::SameSite;
        self.p
            .metrics
            .received(class, bytes, got.len() as u64, bad.is_some());
        let Some(r) = self.releases.get_mut(&release) else {
            return;
        };
        let Some(s) = r.sched.as_mut() else {
            return;
        };
        let new = s.finish(now, req, &got, &lacks);
        if !got.is_empty() {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.slow = 0;
            }
        }
        r.counters.bytes_down += bytes;
        if same_site {
            r.counters.bytes_down_same_site += bytes;
        }
        for i in new {
            r.gained(i);
        }
        if let Some(why) = bad {
            self.ban(peer, &why);
        }
        self.pump();
    }

    fn start_verify(&mut self, id: ReleaseId) {
        let Some(r) = self.releases.get_mut(&id) else {
            return;
        };
        r.verifying = true;
        let unchecked = r.unchecked();
        let files = self.p.files.clone();
        let tx = self.done_tx.clone();
        tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || {
                verify_chunks(&files, &unchecked)
                    .and_then(|bad| {
                        if bad.is_empty() {
                            files.sync()?;
                        }
                        Ok(bad)
                    })
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            let _ = tx
                .send(Done::Verified {
                    release: id,
                    result,
                })
                .await;
        });
    }

    fn on_verified(&mut self, id: ReleaseId, result: Result<Vec<ChunkId>, String>) {
        let Some(r) = self.releases.get_mut(&id) else {
            return;
        };
        r.verifying = false;
        match result {
            Ok(bad) if bad.is_empty() => {
                let m = r.manifest();
                let info = ReleaseInfo {
                    version: m.version.to_string(),
                    channel: m.channel.clone(),
                    release_id: id.to_hex(),
                    image_bytes: m.image_len,
                    chunks: m.chunks.len() as u64,
                    new_chunks: r.pieces.len() as u64,
                    new_bytes: r.pieces.iter().map(|p| u64::from(p.1)).sum(),
                    stored_bytes: r.counters.bytes_down,
                };
                if let Some(store) = &self.p.store {
                    if let Err(e) = store.record_release(r.signed(), &info) {
                        tracing::error!("cannot record release {}: {e}", info.version);
                        return;
                    }
                }
                r.complete = true;
                r.sched = None;
                self.evict_due = true;
                // The seed's fleet view learns of it now, not at the next
                // repeat, which in a big fleet is far off.
                self.report_due = true;
                tracing::info!(version = %info.version, release = %id, "release complete and verified");
                self.write_status();
            }
            Ok(bad) => {
                tracing::warn!(
                    n = bad.len(),
                    "corrupt or missing chunks found before completion; fetching them again"
                );
                for chunk in bad {
                    let _ = self.p.files.remove(&chunk);
                    if let Some(i) = r.piece_of(&chunk) {
                        r.lost(i);
                    }
                }
            }
            Err(e) => tracing::error!("final check of {id}: {e}"),
        }
    }

    // ---- periodic work ----

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.banned.retain(|_, t| *t > now);
        if now - self.last_members >= MEMBERS_EVERY {
            self.last_members = now;
            self.load_member();
            self.check_members();
        }
        if self.p.role == Role::Seed {
            let known = self.releases.len();
            self.scan_releases();
            // A new publish is announced at once, then with the rest.
            self.load_policy();
            if self.releases.len() != known || now - self.last_announce >= ANNOUNCE_EVERY {
                self.last_announce = now;
                self.announce_all();
                self.publish_policy();
            }
        }
        if self.p.role == Role::Node && now - self.last_imports >= IMPORTS_EVERY {
            self.last_imports = now;
            self.load_imports();
        }
        // Alone (the links were down, or peers refused this node before
        // it was enrolled): try the bootstrap peers again, every
        // REDIAL_EVERY rather than every DISCOVER_EVERY. With few peers (a
        // round that ran before the bootstrap peer answered finds nobody,
        // and the others' rounds ran before this node was known), look
        // again at the same pace.
        let members = self.peers.values().filter(|p| p.member.is_some()).count();
        let alone = members == 0;
        let few = members < self.p.max_peers.min(FEW_PEERS);
        if now - self.last_discover >= DISCOVER_EVERY
            || (few && now - self.last_discover >= REDIAL_EVERY)
        {
            self.last_discover = now;
            if alone {
                self.dial_bootstrap();
            }
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
        self.fetch_manifests();
        let mono = self.now();
        let mut late = BTreeSet::new();
        for r in self.releases.values_mut() {
            if let Some(s) = r.sched.as_mut() {
                for (req, peer) in s.expire(mono) {
                    tracing::debug!(%peer, req = req.0, "chunk request timed out");
                    late.insert(peer);
                }
            }
        }
        for peer in late {
            self.sideline(peer);
        }
        let back: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.slow_until.is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for peer in back {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.slow_until = None;
            }
            self.sync_peer(&peer);
        }
        self.pump();
        if now - self.last_have >= HAVE_EVERY {
            self.last_have = now;
            self.send_haves();
        }
        if now - self.last_status >= STATUS_EVERY {
            self.last_status = now;
            self.apply_bandwidth_schedule();
            self.write_status();
        }
        // The updater rewrites its status file whenever it re-checks a
        // staged release; only a different content is a change to report.
        let path = self.p.run_dir.join(crate::updater::STATUS_FILE);
        let modified = fsutil::mtime(&path);
        let mut changed = false;
        if modified != self.update_seen.0 {
            self.update_seen.0 = modified;
            let content = std::fs::read(&path).ok();
            changed = content != self.update_seen.1;
            self.update_seen.1 = content;
            self.evict_due |= changed;
        }
        self.maybe_evict(now);
        let every = self.reporters.every(now);
        self.report_due |= changed || now - self.last_report >= every;
        if self.p.role == Role::Node
            && self.report_due
            && (changed || now - self.report_tried >= REPORT_RETRY)
        {
            self.report_tried = now;
            if self.publish_report() {
                self.last_report = now;
                self.report_due = false;
            }
            for bytes in self.p.chaos_gossip.clone() {
                let topic = IdentTopic::new(TOPIC_ANNOUNCE);
                let _ = self.swarm.behaviour_mut().gossip.publish(topic, bytes);
            }
        }
    }

    fn status(&self) -> MeshStatus {
        let mut peer_sites = BTreeMap::new();
        // Members only: a peer's site is known from its credential.
        for info in self.peers.values().filter_map(|p| p.info.as_ref()) {
            *peer_sites.entry(info.site.clone()).or_insert(0) += 1;
        }
        MeshStatus {
            node_id: self.swarm.local_peer_id().to_string(),
            role: match self.p.role {
                Role::Node => "node".into(),
                Role::Seed => "seed".into(),
            },
            site: self.p.site.clone(),
            peers: self.peers.values().filter(|p| p.member.is_some()).count(),
            peer_sites,
            connections: self.peers.values().map(|p| p.conns.len()).sum(),
            listen: self.listening.iter().map(|a| a.to_string()).collect(),
            releases: self
                .releases
                .iter()
                .map(|(id, r)| ReleaseStatus {
                    release_id: id.to_hex(),
                    version: r.manifest().version.to_string(),
                    channel: r.manifest().channel.clone(),
                    chunks_total: r.pieces.len() as u64,
                    chunks_have: r.have.count() as u64,
                    bytes_down: r.counters.bytes_down,
                    bytes_down_same_site: r.counters.bytes_down_same_site,
                    bytes_up: r.counters.bytes_up,
                    egress_bytes: r.counters.bytes_up,
                    complete: r.complete,
                })
                .collect(),
            updated_at: crate::cli::unix_now().0,
            banned: self.banned.keys().map(|p| p.to_string()).collect(),
            gossip_rejected: self.gossip_rejected,
            policy_version: self.policy.as_ref().map(|p| p.0.version),
            store: (self.store.max_bytes > 0).then(|| self.store.clone()),
            nodes: self.reports.clone(),
        }
    }

    /// Where a peer is, as far as identify has told.
    fn class_of(&self, peer: &PeerId) -> PeerClass {
        match self.peers.get(peer).and_then(|p| p.info.as_ref()) {
            None => PeerClass::Unknown,
            Some(i) if i.seed => PeerClass::Seed,
            Some(i) if i.site == self.me.site => PeerClass::SameSite,
            Some(_) => PeerClass::CrossSite,
        }
    }

    fn write_status(&self) {
        let mut counts = [0usize; PeerClass::ALL.len()];
        for peer in self.peers.keys() {
            counts[self.class_of(peer) as usize] += 1;
        }
        self.p.metrics.set_peers(|class| counts[class as usize]);
        let path = self.p.run_dir.join(MESH_STATUS_FILE);
        let written = serde_json::to_vec_pretty(&self.status())
            .map_err(|e| e.to_string())
            .and_then(|b| fsutil::write_atomic(&path, &b, 0o644).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }

    /// Counters of the previous run, from its last status.
    fn load_counters(&mut self) {
        let path = self.p.run_dir.join(MESH_STATUS_FILE);
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        let Ok(old) = serde_json::from_slice::<MeshStatus>(&bytes) else {
            tracing::warn!("ignoring unreadable {}", path.display());
            return;
        };
        self.store.evicted = old.store.map_or(0, |s| s.evicted);
        for r in old.releases {
            if let Ok(id) = r.release_id.parse::<ReleaseId>() {
                let c = release::Counters {
                    bytes_down: r.bytes_down,
                    bytes_down_same_site: r.bytes_down_same_site,
                    bytes_up: r.bytes_up,
                };
                self.saved_counters.insert(id, c);
            }
        }
    }

    /// Signs and gossips this node's status report (the seed's fleet view is
    /// built from it); false if gossip has no peer to take it yet (the tick
    /// tries again after [`REPORT_RETRY`]).
    fn publish_report(&mut self) -> bool {
        let Some(key) = &self.p.node_key else {
            return true;
        };
        let st = self.status();
        // The updater's status as the tick last read it (it reads the file
        // whenever it changes), not read again for every report or retry.
        let update: serde_json::Value = self
            .update_seen
            .1
            .as_deref()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        let mut labels = self.labels.clone();
        labels.remove("node");
        let report = Report {
            node_id: st.node_id,
            at: crate::cli::unix_now(),
            labels,
            booted_version: text(&update["booted_version"]),
            slot: text(&update["active_slot"]),
            state: text(&update["update"]["state"]).unwrap_or_else(|| "unknown".into()),
            target_version: text(&update["update"]["target_version"]),
            reason: text(&update["update"]["reason"]).map(|r| r.chars().take(500).collect()),
            releases: st
                .releases
                .iter()
                .rev()
                .take(fleetmesh_protocol::mesh::MAX_REPORT_ITEMS)
                .map(|r| ReleaseProgress {
                    version: r.version.clone(),
                    held: r.chunks_have,
                    total: r.chunks_total,
                    bytes_same_site: r.bytes_down_same_site,
                    bytes_wan: r.bytes_down - r.bytes_down_same_site,
                })
                .collect(),
        };
        let envelope = Signed::sign(&report, &[key]).map(|signed| ReportEnvelope {
            key: key.public(),
            signed,
        });
        let bytes = match envelope.and_then(|e| wire::encode(&e)) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!("cannot sign status report: {e}");
                return true;
            }
        };
        let topic = IdentTopic::new(TOPIC_STATUS);
        match self.swarm.behaviour_mut().gossip.publish(topic, bytes) {
            Ok(_) => true,
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic)
            | Err(gossipsub::PublishError::AllQueuesFull(_)) => false,
            Err(e) => {
                tracing::warn!("cannot gossip status report: {e}");
                true
            }
        }
    }

    /// Plans and sends chunk requests for every download, and starts the
    /// final check of downloads that have every piece.
    fn pump(&mut self) {
        let now = self.now();
        let mut to_send: Vec<(ReleaseId, Planned<PeerId>)> = Vec::new();
        let mut to_verify = Vec::new();
        for (id, r) in &mut self.releases {
            if r.complete || r.verifying || !r.admitted {
                continue;
            }
            if r.all_present() {
                to_verify.push(*id);
                continue;
            }
            let Some(s) = r.sched.as_mut() else {
                continue;
            };
            let budget = self.down.available(now);
            for planned in s.plan(now, budget) {
                self.down.reserve(now, planned.bytes);
                to_send.push((*id, planned));
            }
        }
        for (id, planned) in to_send {
            tracing::debug!(peer = %planned.peer, req = planned.id.0, n = planned.pieces.len(), "requesting chunks");
            // Ascending, as the wire wants them; the response comes back
            // in this order.
            let pieces = ascending(planned.pieces);
            self.send(
                planned.peer,
                Request::Chunks {
                    release: id,
                    pieces: pieces.clone(),
                },
                Outbound::Chunks {
                    release: id,
                    req: planned.id,
                    pieces,
                },
            );
        }
        for id in to_verify {
            self.start_verify(id);
        }
    }

    /// Asks peers for the parts of each wanted manifest, where
    /// [`PartFetch`] says, and answers the requests for parts held longer
    /// than [`MANIFEST_PART_HOLD`]. So a site pulls a manifest over its WAN
    /// about once, and the seed sends it about once, not once a site.
    fn fetch_manifests(&mut self) {
        let now = self.now();
        let mut expired = Vec::new();
        for (id, w) in &mut self.wanted {
            expired.push((*id, w.gather.expired(now)));
        }
        for (id, old) in expired {
            self.answer_held(id, old);
        }
        let mut sends = Vec::new();
        for (id, w) in &self.wanted {
            let due = w.gather.due(now);
            if due.is_empty() {
                continue;
            }
            let fetch = self.part_fetch(*id, w, now);
            sends.extend(
                fetch
                    .sources(&due)
                    .into_iter()
                    .map(|(peer, part)| (peer, *id, part, fetch.reach(part))),
            );
        }
        for (peer, id, part, reach) in sends {
            if let Some(w) = self.wanted.get_mut(&id) {
                w.gather.asked(part, now, peer);
            }
            let part = part as u32;
            tracing::debug!(%peer, release = %id, part, "asking for a manifest part");
            self.send(
                peer,
                Request::ManifestPart {
                    release: id,
                    part,
                    reach,
                },
                Outbound::ManifestPart(id, part),
            );
        }
    }

    /// What [`PartFetch`] needs to know to pick where to ask for the parts
    /// of release `id`'s manifest.
    fn part_fetch<'a>(
        &'a self,
        id: ReleaseId,
        w: &'a Wanted,
        now: Duration,
    ) -> PartFetch<'a, PeerId> {
        let peers = self
            .peers
            .iter()
            .filter_map(|(k, p)| {
                let i = p.info.as_ref()?;
                Some(PartPeer {
                    id: *k,
                    site: &i.site,
                    tag: i.tag,
                    seed: i.seed,
                    holder: w.holders.contains(k),
                    fetching: w.gather.is_fetching(k, now),
                    declined: w.gather.is_declined(k, now),
                })
            })
            .collect();
        PartFetch {
            release: id,
            site: &self.me.site,
            tag: self.me.tag,
            up: now,
            wanted_for: w.gather.wanted_for(now),
            peers,
            fleet: self.sites.iter().map(String::as_str).collect(),
            routes: w.gather.routes(),
        }
    }

    /// Sends each peer the pieces it has not been told about, one request
    /// in flight per peer, to peers in other sites at most every
    /// [`HAVE_EVERY_WAN`].
    fn send_haves(&mut self) {
        let now = Instant::now();
        let remote_peers = self
            .peers
            .values()
            .filter_map(|p| p.info.as_ref())
            .filter(|i| !i.seed && i.site != self.me.site)
            .count() as u32;
        let every_wan =
            HAVE_EVERY_WAN.mul_f64((f64::from(remote_peers) / f64::from(HAVE_WAN_PEERS)).max(1.0));
        let mut sends = Vec::new();
        for (peer, state) in &self.peers {
            let Some(info) = &state.info else {
                continue;
            };
            if state.have_in_flight || info.seed {
                continue;
            }
            let remote = info.site != self.me.site;
            if remote && state.have_sent_at.is_some_and(|t| now - t < every_wan) {
                continue;
            }
            for (id, r) in &self.releases {
                let sent = state.sent.get(id).copied();
                if sent == Some(r.have_log.len())
                    || (sent.is_none() && r.have_log.is_empty() && r.complete)
                    || state.retry_full.get(id).is_some_and(|t| *t > now)
                {
                    continue;
                }
                let (full, added, upto) = match sent {
                    None => (Some(r.have.to_bytes()), Vec::new(), r.have_log.len()),
                    Some(from) => {
                        let upto = r.have_log.len().min(from + MAX_HAVE_ADDED);
                        (None, ascending(r.have_log[from..upto].to_vec()), upto)
                    }
                };
                let have = Have {
                    release: *id,
                    pieces: r.pieces.len() as u32,
                    full,
                    added,
                };
                sends.push((*peer, have, upto));
                break;
            }
        }
        for (peer, have, upto) in sends {
            let release = have.release;
            if let Some(state) = self.peers.get_mut(&peer) {
                state.have_in_flight = true;
                state.have_sent_at = Some(now);
            }
            self.send(peer, Request::Have(have), Outbound::Have { release, upto });
        }
    }

    fn announce_all(&mut self) {
        if self.p.release_keys.is_empty() {
            return;
        }
        let keys: Vec<&SecretKey<ReleaseRole>> = self.p.release_keys.iter().collect();
        let now = crate::cli::unix_now();
        // Only the newest release of each channel is announced.
        let mut newest: BTreeMap<String, &Release> = BTreeMap::new();
        for r in self.releases.values() {
            let m = r.manifest();
            if m.expires_at <= now {
                continue;
            }
            let keep = newest
                .get(&m.channel)
                .is_none_or(|cur| cur.manifest().version < m.version);
            if keep {
                newest.insert(m.channel.clone(), r);
            }
        }
        let mut messages = Vec::new();
        for r in newest.values() {
            let signed = Announcement::of(&r.manifest, now).and_then(|a| Signed::sign(&a, &keys));
            match signed.and_then(|s| Ok((wire::encode(&s)?, s))) {
                Ok(m) => messages.push(m),
                Err(e) => tracing::error!("cannot sign announcement: {e}"),
            }
        }
        for (bytes, signed) in messages {
            let _ = self.announcements.accept(&signed, &self.trust, now);
            // No subscribers yet is not an error: peers get it in hello.
            let _ = self
                .swarm
                .behaviour_mut()
                .gossip
                .publish(IdentTopic::new(TOPIC_ANNOUNCE), bytes);
        }
    }
}

/// Piece indices sorted and without repeats, as the wire carries them.
fn ascending(mut pieces: Vec<u32>) -> Vec<u32> {
    pieces.sort_unstable();
    pieces.dedup();
    pieces
}

/// Reads chunks for a peer: verified copies only, within the response
/// budget. `corrupt` (fault injection) flips a byte in each.
fn read_for_peer(files: &ChunkFiles, ids: &[ChunkId], corrupt: bool) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::with_capacity(ids.len());
    let mut total = 0;
    for id in ids {
        if total >= RESPONSE_BUDGET {
            break;
        }
        match files.read_encoded(id) {
            Ok(mut bytes) => {
                total += bytes.len();
                if corrupt {
                    let last = bytes.len() - 1;
                    bytes[last] ^= 0x5a;
                }
                out.push(Some(bytes));
            }
            Err(crate::StoreError::Corrupt { .. }) => {
                tracing::error!(chunk = %id, "stored chunk is corrupt; removing it");
                let _ = files.remove(id);
                out.push(None);
            }
            Err(_) => out.push(None),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{gossip_score, TOPICS};

    #[test]
    fn a_restarted_peer_grafting_within_backoff_keeps_its_score() {
        let params = gossip_score();
        assert_eq!(params.validate(), Ok(()));
        // One restart: a graft on every topic, each penalised twice early
        // in the backoff (libp2p-gossipsub's extra graft-flood penalty).
        assert!(params.behaviour_penalty_threshold >= 2.0 * TOPICS.len() as f64);
        // More than that still counts.
        assert!(params.behaviour_penalty_weight < 0.0);
        assert_eq!(params.topics.len(), TOPICS.len());
    }
}

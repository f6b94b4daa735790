//! The chunk scheduler: which pieces of a release to request from which
//! peer. Sans-IO: the caller feeds it peers, have-maps, deliveries, failures
//! and `now` (a monotonic duration since any fixed start), and it returns
//! requests to send. The node runs it over libp2p; the simulator runs it over
//! a virtual network.
//!
//! Rules, in order:
//! 1. A piece that a same-site peer has comes from the site (the LAN), from
//!    the peer with the best throughput per request in flight. If same-site
//!    peers have it but are all busy, the node waits for them.
//! 2. Otherwise it may cross the site's WAN link only if this node owns it:
//!    the node with the highest hash of (node, piece) among the same-site
//!    nodes fetching the release (rendezvous hashing). So each site fetches
//!    each piece over its WAN about once, different nodes fetch different
//!    pieces, and the site fans them out over the LAN. Joins and leaves move
//!    only the pieces of the node that came or went.
//! 3. Over the WAN, a cross-site peer that has the piece is preferred to the
//!    seed. From the seed, a node fetches only the pieces its site owns
//!    among the sites it knows (rendezvous over site names) and it owns in
//!    its site, so each piece leaves the seed about once and the sites then
//!    trade it between them.
//! 4. Among candidates, rarest first, ties broken by a per-node hash so nodes
//!    spread out.
//! 5. A node that has had nothing to do while its site gained nothing it
//!    lacks for `wan_fallback_after` (the site has stalled) may fetch any
//!    piece over the WAN, so nothing starves. A node merely waiting for its
//!    site's owners while the site makes progress is not stalled.
//! 6. Per-peer caps on pieces in flight; requests time out and their pieces
//!    go back to be requested elsewhere; a banned peer is never asked.
//! 7. Endgame: when every missing piece is in flight and few remain, a piece
//!    may be requested from a second same-site peer, and from a second
//!    peer anywhere the rules above allow once its request is overdue (twice
//!    the time the peer's throughput predicts, at least [`OVERDUE_MIN`]): a
//!    real transport can sit in retransmission backoff for seconds, and the
//!    whole site waits for the last piece its owner fetches.
//! 8. Over the WAN (cross-site peers and the seed together), a node keeps
//!    in flight about `wan_queue` of what it has been receiving over the WAN
//!    lately, and at least a floor: enough to keep its share of the link
//!    busy, and little enough that a response is not queued behind seconds
//!    of others at a remote uplink, where it times out, is fetched twice
//!    and holds up the site's last pieces. The floor is `wan_floor` bytes
//!    until that rate is measured, then `wan_floor_time` of the rate
//!    (between `wan_floor_min` and `wan_floor`): a fixed floor is seconds
//!    of a thin site's link once its nodes share it, and what they keep
//!    queued beyond it is dropped at its inbound queue and sent again.
//!    Each remote peer gets at most `wan_queue` of its own measured rate
//!    (at least a quarter of `wan_floor`), so a slow site's peers cannot
//!    hold the whole budget; the seed at most `seed_queue` of it: its flows
//!    cross every site's inbound link, and what they keep queued there is
//!    dropped and sent again, and delays the other flows'
//!    acknowledgements.
//! 9. Seed first: while the seed is delivering pieces this node fetches from
//!    it that no other peer has yet, the node asks cross-site peers only for
//!    those pieces. Every site's inbound WAN link then carries the seed's
//!    share early, at the seed's full rate, instead of sharing it with many
//!    cross-site flows that starve the seed's; the sites trade afterwards
//!    with every piece already somewhere. A seed that delivers nothing for
//!    `wan_fallback_after` ends the phase. Only `seed_first_cross` bytes
//!    may be in flight to cross-site peers meanwhile (pieces the node owns
//!    for its site, rules 2-3): the seed alone leaves part of each site's
//!    link idle, and the sites' uplinks wholly, and a small trickle fills
//!    that without starving the seed's flows.
//! 10. Whole requests over the WAN: every request costs a stream, its
//!     protocol negotiation and acknowledgements on the link, whatever it
//!     carries. A plan fills a request it has begun to a remote peer (up to
//!     `batch` pieces) before it starts one to another; a remote peer with
//!     a request in flight gets the next once it has room for half a batch;
//!     rule 9's allowance and rule 8's budget are spent once half of them
//!     is free, not a piece at a time as responses come in.

use crate::ChunkId;
use std::collections::BTreeMap;
use std::time::Duration;

/// Tunables.
#[derive(Clone, Debug)]
pub struct Config {
    /// Most pieces in flight to one peer.
    pub per_peer_pieces: usize,
    /// Most pieces in one request.
    pub batch: usize,
    /// Duplicate requests only when at most this many pieces remain.
    pub endgame_pieces: usize,
    /// A request never times out sooner than this.
    pub min_timeout: Duration,
    /// ...nor later than this, however slow its peer has been (a lost
    /// response must not hold its pieces for ever).
    pub max_timeout: Duration,
    /// How long a peer that sent a bad chunk stays banned.
    pub ban: Duration,
    /// Idle time after which any piece may cross the WAN.
    pub wan_fallback_after: Duration,
    /// WAN bytes in flight: this long at the recent WAN receive rate...
    pub wan_queue: Duration,
    /// ...and at least this many until that rate is measured...
    pub wan_floor: u64,
    /// ...then at least this long at it, within `wan_floor_min..=wan_floor`.
    pub wan_floor_time: Duration,
    /// The least the floor falls to.
    pub wan_floor_min: u64,
    /// In flight to the seed: this long at its measured rate (at least a
    /// quarter of `wan_floor`).
    pub seed_queue: Duration,
    /// Rule 9 on or off.
    pub seed_first: bool,
    /// Rule 9's allowance: bytes in flight to cross-site peers while the
    /// seed-first phase lasts, for pieces this node owns for its site.
    pub seed_first_cross: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            per_peer_pieces: 64,
            batch: 16,
            endgame_pieces: 8,
            min_timeout: Duration::from_secs(10),
            max_timeout: Duration::from_secs(60),
            ban: Duration::from_secs(300),
            wan_fallback_after: Duration::from_secs(10),
            wan_queue: Duration::from_secs(1),
            wan_floor: 1 << 20,
            wan_floor_time: Duration::from_secs(2),
            wan_floor_min: 128 << 10,
            seed_queue: Duration::from_millis(400),
            seed_first: true,
            seed_first_cross: 128 << 10,
        }
    }
}

/// What the scheduler needs to know about a peer (or about itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its site label.
    pub site: String,
    /// True for the seed: a source of last resort, never a site member.
    pub seed: bool,
    /// A stable 64-bit hash of its identity, for rendezvous hashing.
    pub tag: u64,
}

/// A fixed-size bit set; its byte form is the have-map wire format
/// (bit `i` in byte `i / 8`, lowest bit first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bits {
    len: usize,
    words: Vec<u64>,
}

impl Bits {
    /// `len` clear bits.
    pub fn new(len: usize) -> Self {
        Bits {
            len,
            words: vec![0; len.div_ceil(64)],
        }
    }

    /// The set of `len` bits encoded in `bytes` (which must be `len / 8`
    /// rounded up long); bits past `len` are ignored.
    pub fn from_bytes(len: usize, bytes: &[u8]) -> Self {
        let mut bits = Bits::new(len);
        for i in 0..len {
            if bytes.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0) {
                bits.set(i);
            }
        }
        bits
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len.div_ceil(8)];
        for i in self.ones() {
            out[i / 8] |= 1 << (i % 8);
        }
        out
    }

    /// Number of bits.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are no bits at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bit `i` (false when out of range).
    pub fn get(&self, i: usize) -> bool {
        i < self.len && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// Sets bit `i`; returns true if it was clear. Out of range is ignored.
    pub fn set(&mut self, i: usize) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.words[i / 64] |= 1 << (i % 64);
        true
    }

    /// Clears bit `i`; returns true if it was set.
    pub fn clear(&mut self, i: usize) -> bool {
        if !self.get(i) {
            return false;
        }
        self.words[i / 64] &= !(1 << (i % 64));
        true
    }

    /// Number of set bits.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The set bits, in order.
    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                let bit = rest.trailing_zeros() as usize;
                rest &= rest.wrapping_sub(1);
                (bit < 64).then_some(w * 64 + bit)
            })
        })
    }

    /// Word `w`'s bits that lie within the set's length.
    fn in_range(&self, w: usize) -> u64 {
        match self.len - w * 64 {
            n if n >= 64 => u64::MAX,
            n => (1 << n) - 1,
        }
    }
}

/// Identifies one planned request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// A request the caller should send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned<P> {
    /// Its id, to report the outcome with.
    pub id: RequestId,
    /// Who to ask.
    pub peer: P,
    /// Piece indices to ask for.
    pub pieces: Vec<u32>,
    /// Their uncompressed bytes (what the download budget was charged).
    pub bytes: u64,
}

#[derive(Debug)]
struct Peer {
    info: PeerInfo,
    /// A member of this node's site (not the seed), worked out once.
    lan: bool,
    have: Bits,
    in_flight: usize,
    /// Bytes per second, smoothed over responses.
    rate: f64,
    banned_until: Option<Duration>,
}

impl Peer {
    fn banned_at(&self, now: Duration) -> bool {
        self.banned_until.is_some_and(|t| now < t)
    }
}

/// Where a peer is, as the rules see it. The order indexes `pick`'s bests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Lan = 0,
    Wan = 1,
    Seed = 2,
}

/// A peer as one plan sees it.
#[derive(Debug)]
struct View<'a, P> {
    key: &'a P,
    class: Class,
    have: &'a Bits,
    rate: f64,
    /// Pieces it may have in flight, and how many more this plan may ask.
    limit: usize,
    free: usize,
    /// Pieces this plan has asked of it.
    taken: usize,
}

#[derive(Debug)]
struct Pending<P> {
    peer: P,
    pieces: Vec<u32>,
    sent: Duration,
    /// When a second peer may be asked in the endgame.
    overdue: Duration,
    deadline: Duration,
    bytes: u64,
}

/// An endgame request is overdue no sooner than this after it was sent.
pub const OVERDUE_MIN: Duration = Duration::from_secs(2);

/// Throughput assumed for a peer before its first response.
const INITIAL_RATE: f64 = 1e6;

/// The download of one release.
#[derive(Debug)]
pub struct Scheduler<P> {
    cfg: Config,
    me: PeerInfo,
    lens: Vec<u32>,
    /// Mean piece length, at least 1.
    avg_len: f64,
    keys: Vec<u64>,
    /// The pieces in this node's tie-break order among equally rare pieces
    /// (a hash of node and piece, then the index), worked out once.
    by_rank: Vec<u32>,
    have: Bits,
    /// Peers (not banned at the time they told us) that have each piece.
    avail: Vec<u32>,
    /// Same-site peers (not banned) known to have each piece: lets a plan
    /// skip, without looking at any peer, the pieces it may not fetch yet.
    lan_avail: Vec<u32>,
    /// The pieces whose `lan_avail` is not zero: a plan looks only at
    /// these and at the pieces it may fetch over the WAN, a word at a time.
    lan_has: Bits,
    /// Requests outstanding per piece.
    requested: Vec<u8>,
    peers: PeerMap<P>,
    /// The seed among them.
    seed: Option<P>,
    pending: BTreeMap<RequestId, Pending<P>>,
    next_id: u64,
    /// Pieces this node fetches over the WAN, and those it fetches from the
    /// seed; `None` when membership changed.
    mine: Option<(Bits, Bits)>,
    idle_since: Option<Duration>,
    /// A same-site peer gained a piece this node lacks since the last plan.
    site_progress: bool,
    /// When the seed last delivered to this node (or the download started).
    seed_progress: Option<Duration>,
    /// Bytes received over the WAN: in total, at the last rate sample, and
    /// when that was; and the smoothed rate, bytes per second.
    wan_received: u64,
    wan_mark: (u64, Option<Duration>),
    wan_rate: f64,
    /// Tags of the other sites known to take part (from status reports),
    /// at most [`MAX_SITES`].
    sites: Vec<u64>,
}

/// The peers of a scheduler, by key: sorted keys apart from the values, so
/// that a lookup reads a few compact lines and a plan's scan of every peer
/// reads memory in order (a plan and a have-map are the simulator's hot
/// paths at 10,000 nodes).
#[derive(Debug)]
struct PeerMap<P> {
    keys: Vec<P>,
    values: Vec<Peer>,
}

impl<P> Default for PeerMap<P> {
    fn default() -> Self {
        PeerMap {
            keys: Vec::new(),
            values: Vec::new(),
        }
    }
}

impl<P: Ord> PeerMap<P> {
    fn len(&self) -> usize {
        self.keys.len()
    }

    fn contains_key(&self, key: &P) -> bool {
        self.keys.binary_search(key).is_ok()
    }

    fn get(&self, key: &P) -> Option<&Peer> {
        let at = self.keys.binary_search(key).ok()?;
        Some(&self.values[at])
    }

    fn get_mut(&mut self, key: &P) -> Option<&mut Peer> {
        let at = self.keys.binary_search(key).ok()?;
        Some(&mut self.values[at])
    }

    /// Adds a peer not yet present.
    fn insert(&mut self, key: P, peer: Peer) {
        if let Err(at) = self.keys.binary_search(&key) {
            self.keys.insert(at, key);
            self.values.insert(at, peer);
        }
    }

    fn remove(&mut self, key: &P) -> Option<Peer> {
        let at = self.keys.binary_search(key).ok()?;
        self.keys.remove(at);
        Some(self.values.remove(at))
    }

    fn iter(&self) -> impl Iterator<Item = (&P, &Peer)> {
        self.keys.iter().zip(&self.values)
    }

    fn values(&self) -> impl Iterator<Item = &Peer> {
        self.values.iter()
    }
}

/// Most sites a scheduler keeps track of.
pub const MAX_SITES: usize = 65_536;

/// A site's rendezvous tag: FNV-1a of its name.
fn site_tag(site: &str) -> u64 {
    site.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Rule 10: `free` bytes of room out of `whole` are spent in whole
/// requests, once at least half of it is free, not a piece at a time as
/// responses come in.
fn in_halves(free: u64, whole: u64) -> u64 {
    if free < whole / 2 {
        0
    } else {
        free
    }
}

/// splitmix64: a cheap, well-mixed hash for rendezvous and tie-breaks.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl<P: Ord + Clone> Scheduler<P> {
    /// A download of `pieces` (id, length) by the node `me`; `have` says
    /// which pieces it already holds.
    pub fn new(
        cfg: Config,
        me: PeerInfo,
        pieces: &[(ChunkId, u32)],
        have: impl Fn(usize) -> bool,
    ) -> Self {
        let n = pieces.len();
        let mut bits = Bits::new(n);
        for i in 0..n {
            if have(i) {
                bits.set(i);
            }
        }
        let keys: Vec<u64> = pieces
            .iter()
            .map(|p| u64::from_le_bytes(p.0 .0[..8].try_into().unwrap_or_default()))
            .collect();
        let mut by_rank: Vec<u32> = (0..n as u32).collect();
        by_rank.sort_unstable_by_key(|&i| (mix(me.tag ^ keys[i as usize]), i));
        Scheduler {
            cfg,
            me,
            lens: pieces.iter().map(|p| p.1).collect(),
            avg_len: (pieces.iter().map(|p| f64::from(p.1)).sum::<f64>() / n.max(1) as f64)
                .max(1.0),
            keys,
            by_rank,
            have: bits,
            avail: vec![0; n],
            lan_avail: vec![0; n],
            lan_has: Bits::new(n),
            requested: vec![0; n],
            peers: PeerMap::default(),
            seed: None,
            pending: BTreeMap::new(),
            next_id: 0,
            mine: None,
            idle_since: None,
            site_progress: false,
            seed_progress: None,
            wan_received: 0,
            wan_mark: (0, None),
            wan_rate: 0.0,
            sites: Vec::new(),
        }
    }

    /// The pieces held.
    pub fn have(&self) -> &Bits {
        &self.have
    }

    /// True when every piece is held.
    pub fn is_complete(&self) -> bool {
        self.have.count() == self.lens.len()
    }

    /// Number of peers known for this release.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Records a piece obtained outside a request (for example from another
    /// release that shares it); returns true if it was new.
    pub fn got(&mut self, piece: u32) -> bool {
        self.have.set(piece as usize)
    }

    /// Forgets a piece (its stored copy turned out corrupt).
    pub fn lost(&mut self, piece: u32) {
        self.have.clear(piece as usize);
    }

    /// A site known to take part in the fleet (every node's status report
    /// names its site), connected or not: the seed's share is split among
    /// every site known, so nodes that see different peers still agree.
    pub fn add_site(&mut self, site: &str) {
        let tag = site_tag(site);
        if tag == site_tag(&self.me.site) || self.sites.len() >= MAX_SITES {
            return;
        }
        if let Err(at) = self.sites.binary_search(&tag) {
            self.sites.insert(at, tag);
            self.mine = None;
        }
    }

    /// A peer that takes part in this release, with nothing known yet.
    pub fn add_peer(&mut self, peer: P, info: PeerInfo) {
        if self.peers.contains_key(&peer) {
            return;
        }
        self.membership_changed(&info);
        if info.seed {
            self.seed = Some(peer.clone());
        }
        let lan = self.is_member(&info);
        self.peers.insert(
            peer,
            Peer {
                lan,
                info,
                have: Bits::new(self.lens.len()),
                in_flight: 0,
                rate: INITIAL_RATE,
                banned_until: None,
            },
        );
    }

    /// A peer left: its requests fail, its pieces no longer count.
    pub fn remove_peer(&mut self, peer: &P) {
        self.fail_requests_to(peer);
        if self.seed.as_ref() == Some(peer) {
            self.seed = None;
        }
        if let Some(p) = self.peers.remove(peer) {
            let lan = u32::from(p.lan);
            for i in p.have.ones() {
                self.avail[i] -= 1;
                self.lan_avail[i] -= lan;
                if self.lan_avail[i] == 0 {
                    self.lan_has.clear(i);
                }
            }
            self.membership_changed(&p.info);
        }
    }

    /// The peer has these pieces; returns true if it newly has one this
    /// node lacks (news a plan could act on).
    pub fn peer_has(&mut self, peer: &P, pieces: impl IntoIterator<Item = u32>) -> bool {
        let Some(p) = self.peers.get_mut(peer) else {
            return false;
        };
        let lan = u32::from(p.lan);
        let mut news = false;
        for i in pieces {
            if p.have.set(i as usize) {
                self.avail[i as usize] += 1;
                self.lan_avail[i as usize] += lan;
                if lan == 1 {
                    self.lan_has.set(i as usize);
                }
                news |= !self.have.get(i as usize);
            }
        }
        self.site_progress |= news && lan == 1;
        news
    }

    /// Bans a peer (it sent a bad chunk) until `now + ban`; its requests fail.
    pub fn ban(&mut self, now: Duration, peer: &P) {
        self.fail_requests_to(peer);
        if let Some(p) = self.peers.get_mut(peer) {
            p.banned_until = Some(now + self.cfg.ban);
            let lan = u32::from(p.lan);
            for i in p.have.ones() {
                self.avail[i] -= 1;
                self.lan_avail[i] -= lan;
                if self.lan_avail[i] == 0 {
                    self.lan_has.clear(i);
                }
            }
            p.have = Bits::new(self.lens.len());
            if !p.info.seed {
                self.mine = None;
            }
        }
    }

    /// True if the peer is banned at `now`.
    pub fn is_banned(&self, now: Duration, peer: &P) -> bool {
        self.peers.get(peer).is_some_and(|p| p.banned_at(now))
    }

    /// A request finished: `got` were received, verified and stored;
    /// the peer said it `lacks` others. Pieces in neither go back to be
    /// requested again. Returns the pieces that were new (also for a late
    /// response to a request that already expired).
    pub fn finish(&mut self, now: Duration, id: RequestId, got: &[u32], lacks: &[u32]) -> Vec<u32> {
        let Some(req) = self.take_pending(id) else {
            // A response after its request expired: what it brought is
            // stored and verified all the same, and not fetched again.
            return got
                .iter()
                .copied()
                .filter(|&i| self.have.set(i as usize))
                .collect();
        };
        let new: Vec<u32> = got
            .iter()
            .copied()
            .filter(|&i| req.pieces.contains(&i) && self.have.set(i as usize))
            .collect();
        if let Some(p) = self.peers.get_mut(&req.peer) {
            let lan = u32::from(p.lan);
            for &i in lacks {
                if req.pieces.contains(&i) && p.have.clear(i as usize) {
                    self.avail[i as usize] -= 1;
                    self.lan_avail[i as usize] -= lan;
                    if self.lan_avail[i as usize] == 0 {
                        self.lan_has.clear(i as usize);
                    }
                }
            }
            let secs = (now.saturating_sub(req.sent)).as_secs_f64().max(1e-3);
            let received: u64 = got.iter().map(|&i| u64::from(self.lens[i as usize])).sum();
            if received > 0 {
                p.rate = 0.7 * p.rate + 0.3 * (received as f64 / secs);
                if p.info.seed {
                    self.seed_progress = Some(now);
                }
                if !p.lan {
                    self.wan_received += received;
                }
            }
        }
        new
    }

    /// A request failed (error, timeout, busy peer): its pieces go back and
    /// the peer's throughput estimate halves.
    pub fn failed(&mut self, id: RequestId) {
        if let Some(req) = self.take_pending(id) {
            if let Some(p) = self.peers.get_mut(&req.peer) {
                p.rate /= 2.0;
            }
        }
    }

    /// Requests past their deadline, failed here, with the peer each went
    /// to; the caller drops their responses if they still come.
    pub fn expire(&mut self, now: Duration) -> Vec<(RequestId, P)> {
        let late: Vec<(RequestId, P)> = self
            .pending
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(id, r)| (*id, r.peer.clone()))
            .collect();
        for (id, _) in &late {
            self.failed(*id);
        }
        late
    }

    /// The earliest deadline of a request in flight.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.pending.values().map(|r| r.deadline).min()
    }

    /// The pieces a request in flight asked for.
    pub fn pieces_of(&self, id: RequestId) -> Option<&[u32]> {
        self.pending.get(&id).map(|r| r.pieces.as_slice())
    }

    /// True when a request in the endgame is overdue (rule 7): a plan may
    /// then double it, though nothing else changed.
    pub fn endgame_due(&self, now: Duration) -> bool {
        self.in_endgame() && self.pending.values().any(|r| r.overdue <= now)
    }

    fn in_endgame(&self) -> bool {
        self.lens.len() - self.have.count() <= self.cfg.endgame_pieces
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Plans new requests, charging at most `budget` bytes.
    pub fn plan(&mut self, now: Duration, budget: u64) -> Vec<Planned<P>> {
        if std::mem::take(&mut self.site_progress) {
            self.idle_since = None;
        }
        let planned = self.plan_inner(now, budget);
        if planned.is_empty() && self.pending.is_empty() && !self.is_complete() {
            self.idle_since.get_or_insert(now);
        } else {
            self.idle_since = None;
        }
        planned
    }

    fn plan_inner(&mut self, now: Duration, mut budget: u64) -> Vec<Planned<P>> {
        if self.is_complete() {
            return Vec::new();
        }
        debug_assert!(
            (0..self.lens.len()).all(|i| self.lan_has.get(i) == (self.lan_avail[i] > 0)),
            "lan_has out of step with lan_avail"
        );
        let (mut wan_budget, mut wan_idle) = self.wan_budget(now);
        if self.mine.is_none() {
            self.mine = Some(self.compute_mine(now));
        }
        let any_wan = self
            .idle_since
            .is_some_and(|t| now.saturating_sub(t) >= self.cfg.wan_fallback_after);
        let seed_first = self.seed_first(now);
        let mut cross_free = if seed_first { self.cross_free() } else { 0 };
        // With cross-site room, rule 9 admits pieces from other sites too.
        let seed_only = seed_first && cross_free == 0;
        // Nothing the rules and the WAN cap allow to ask for, and no
        // endgame: skip looking at every peer.
        let wan_ok = wan_budget > 0 || wan_idle;
        let wanted = |&i: &usize| !self.have.get(i) && self.requested[i] == 0 && self.avail[i] > 0;
        if !self.in_endgame()
            && !self
                .fetchable(wan_ok, any_wan, seed_only)
                .ones()
                .any(|i| wanted(&i))
        {
            return Vec::new();
        }
        self.seed_progress.get_or_insert(now);
        let mut views = self.views(now);
        let total: usize = views.iter().map(|v| v.free).sum();
        // Plan in batches: a lone free slot waits for company.
        if total == 0 || (total < self.cfg.batch && !self.pending.is_empty()) {
            return Vec::new();
        }
        // Candidates: pieces `pick` does not refuse before looking at any
        // peer, rarest first, ties in this node's rank order (a stable
        // sort of a fixed order). `pick`, which looks at every peer, runs
        // only on the candidates the loop reaches: a plan only takes free
        // slots, so a piece `pick` refuses at the start it refuses later.
        let fetchable = self.fetchable(true, any_wan, seed_only);
        let mut cands: Vec<usize> = self
            .by_rank
            .iter()
            .map(|&i| i as usize)
            .filter(|&i| fetchable.get(i) && wanted(&i))
            .collect();
        cands.sort_by_key(|&i| self.avail[i]);
        let mut eligible = false;
        let mut batches: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        let mut left = total;
        for &i in &cands {
            if left == 0 {
                break;
            }
            if let Some(k) = self.pick(i, &views, any_wan, seed_only, &[]) {
                eligible = true;
                let len = u64::from(self.lens[i]);
                if budget < len {
                    break;
                }
                if seed_first && !self.seed_share(i) && views[k].class != Class::Lan {
                    if views[k].class == Class::Seed || cross_free < len {
                        continue;
                    }
                    cross_free -= len;
                }
                if views[k].class != Class::Lan {
                    if wan_budget >= len {
                        wan_budget -= len;
                        wan_idle = false;
                    } else if std::mem::take(&mut wan_idle) {
                        // Nothing in flight: one piece bigger than the cap.
                        wan_budget = 0;
                    } else {
                        continue;
                    }
                }
                views[k].free -= 1;
                views[k].taken += 1;
                left -= 1;
                batches.entry(k).or_default().push(i as u32);
                budget -= len;
            }
        }
        if !eligible {
            self.plan_endgame(now, &mut views, &mut batches, budget, any_wan);
        }
        let batches: Vec<(P, Vec<u32>)> = batches
            .into_iter()
            .map(|(k, pieces)| (views[k].key.clone(), pieces))
            .collect();
        self.issue(now, batches)
    }

    /// Every missing piece is requested or unavailable: if few remain, ask
    /// a second peer for those with one request out.
    fn plan_endgame(
        &self,
        now: Duration,
        views: &mut [View<'_, P>],
        batches: &mut BTreeMap<usize, Vec<u32>>,
        mut budget: u64,
        any_wan: bool,
    ) {
        if !self.in_endgame() {
            return;
        }
        for i in (0..self.lens.len()).filter(|&i| !self.have.get(i) && self.requested[i] == 1) {
            let len = u64::from(self.lens[i]);
            if budget < len {
                break;
            }
            let reqs = || {
                self.pending
                    .values()
                    .filter(|r| r.pieces.contains(&(i as u32)))
            };
            let asked: Vec<usize> = reqs()
                .filter_map(|r| views.iter().position(|v| *v.key == r.peer))
                .collect();
            // A second WAN copy is what the site rule exists to avoid: only
            // an overdue request earns one.
            let overdue = reqs().all(|r| r.overdue <= now);
            let pick = self.pick(i, views, any_wan, false, &asked);
            if let Some(k) = pick.filter(|&k| overdue || views[k].class == Class::Lan) {
                views[k].free -= 1;
                batches.entry(k).or_default().push(i as u32);
                budget -= len;
            }
        }
    }

    /// The peers a plan may use (not banned), with their free slots.
    fn views(&self, now: Duration) -> Vec<View<'_, P>> {
        let avg = self.avg_len;
        self.peers
            .iter()
            .filter(|(_, p)| !p.banned_at(now))
            .map(|(key, p)| {
                // Rule 8, per peer: a slow remote peer holds only its share
                // of the WAN budget, not all of it.
                let limit = if p.lan {
                    self.cfg.per_peer_pieces
                } else {
                    let queue = if p.info.seed {
                        self.cfg.seed_queue
                    } else {
                        self.cfg.wan_queue
                    };
                    let bytes = (p.rate * queue.as_secs_f64()).max(self.cfg.wan_floor as f64 / 4.0);
                    ((bytes / avg).ceil() as usize).clamp(1, self.cfg.per_peer_pieces)
                };
                let mut free = limit.saturating_sub(p.in_flight);
                // A remote peer busy with a request gets the next one once
                // it has room for half a batch, not a piece at a time as
                // its responses come in.
                if !p.lan && p.in_flight > 0 && free < self.cfg.batch / 2 {
                    free = 0;
                }
                View {
                    key,
                    class: if p.info.seed {
                        Class::Seed
                    } else if p.lan {
                        Class::Lan
                    } else {
                        Class::Wan
                    },
                    have: &p.have,
                    rate: p.rate,
                    limit,
                    free,
                    taken: 0,
                }
            })
            .collect()
    }

    /// Rule 8: the WAN bytes a plan may add, and whether none are in
    /// flight, after updating the WAN receive rate (sampled at most once a
    /// second).
    fn wan_budget(&mut self, now: Duration) -> (u64, bool) {
        let (bytes, at) = self.wan_mark;
        let at = at.unwrap_or(now);
        let dt = now.saturating_sub(at).as_secs_f64();
        if dt >= 1.0 || self.wan_mark.1.is_none() {
            if dt > 0.0 {
                let sample = (self.wan_received - bytes) as f64 / dt;
                self.wan_rate = 0.5 * self.wan_rate + 0.5 * sample;
            }
            self.wan_mark = (self.wan_received, Some(now));
        }
        let cap = (self.wan_rate * self.cfg.wan_queue.as_secs_f64()) as u64;
        let in_flight = self.in_flight_to(|p| !p.lan);
        let floor = if self.wan_rate > 0.0 {
            let follow = (self.wan_rate * self.cfg.wan_floor_time.as_secs_f64()) as u64;
            follow.max(self.cfg.wan_floor_min).min(self.cfg.wan_floor)
        } else {
            self.cfg.wan_floor
        };
        let free = cap.max(floor).saturating_sub(in_flight);
        (in_halves(free, floor), in_flight == 0)
    }

    /// Rule 9's cross-site room: its allowance less the bytes in flight to
    /// cross-site peers.
    fn cross_free(&self) -> u64 {
        let in_flight = self.in_flight_to(|p| !p.lan && !p.info.seed);
        let free = self.cfg.seed_first_cross.saturating_sub(in_flight);
        in_halves(free, self.cfg.seed_first_cross)
    }

    /// Bytes in flight to the peers `which` selects.
    fn in_flight_to(&self, which: impl Fn(&Peer) -> bool) -> u64 {
        self.pending
            .values()
            .filter(|r| self.peers.get(&r.peer).is_some_and(&which))
            .map(|r| r.bytes)
            .sum()
    }

    /// Piece `i` is one this node fetches from the seed (rule 3).
    fn seed_share(&self, i: usize) -> bool {
        self.mine.as_ref().is_some_and(|(_, seed)| seed.get(i))
    }

    /// Rule 9: the seed is delivering pieces this node fetches from it that
    /// only the seed has.
    fn seed_first(&self, now: Duration) -> bool {
        let Some((_, from_seed)) = self.mine.as_ref().filter(|_| self.cfg.seed_first) else {
            return false;
        };
        let seed = self.seed.as_ref().and_then(|k| self.peers.get(k));
        let Some(seed) = seed.filter(|p| !p.banned_at(now)) else {
            return false;
        };
        let since = self.seed_progress.unwrap_or(now);
        now.saturating_sub(since) < self.cfg.wan_fallback_after
            && from_seed
                .ones()
                .any(|i| !self.have.get(i) && self.avail[i] == 1 && seed.have.get(i))
    }

    /// The view index of the peer to ask for piece `i`, by the rules in the
    /// module docs; `skip` are views already asked; `seed_first` is rule 9.
    fn pick(
        &self,
        i: usize,
        views: &[View<'_, P>],
        any_wan: bool,
        seed_first: bool,
        skip: &[usize],
    ) -> Option<usize> {
        // No same-site copy and not this node's to fetch over the WAN: the
        // rules below would refuse it after looking at every peer.
        let wan_ok = self.wan_allowed(i, any_wan, seed_first);
        if self.lan_avail[i] == 0 && !wan_ok {
            return None;
        }
        let mut best: [Option<(usize, f64)>; 3] = [None; 3];
        let mut lan_has = false;
        for (k, v) in views.iter().enumerate() {
            if !v.have.get(i) {
                continue;
            }
            // A same-site copy keeps the piece off the WAN even when its
            // holder is busy or already asked.
            lan_has |= v.class == Class::Lan;
            if v.free == 0 || skip.contains(&k) {
                continue;
            }
            // Throughput per piece in flight, counting this plan's. Over
            // the WAN a request this plan has begun is filled first: every
            // request costs a stream, its negotiation and acknowledgements
            // on the link, so a few full ones beat many small ones.
            let busy = v.limit.saturating_sub(v.free);
            let open = v.class != Class::Lan && v.taken % self.cfg.batch.max(1) != 0;
            let score = if open {
                f64::INFINITY
            } else {
                v.rate / (busy as f64 + 1.0)
            };
            let slot = &mut best[v.class as usize];
            if slot.is_none_or(|(_, s)| score > s) {
                *slot = Some((k, score));
            }
        }
        let [lan, wan, seed] = best;
        if let Some((k, _)) = lan {
            return Some(k);
        }
        if lan_has || !wan_ok {
            return None;
        }
        wan.or(if self.seed_share(i) || any_wan {
            seed
        } else {
            None
        })
        .map(|(k, _)| k)
    }

    /// The pieces a same-site peer has, and, if `wan`, those
    /// [`Self::wan_allowed`] admits: what a plan may consider, worked out a
    /// word of 64 pieces at a time.
    fn fetchable(&self, wan: bool, any_wan: bool, seed_first: bool) -> Bits {
        let mut out = self.lan_has.clone();
        if let Some((site, seed)) = self.mine.as_ref().filter(|_| wan) {
            for (w, word) in out.words.iter_mut().enumerate() {
                let site = if any_wan { u64::MAX } else { site.words[w] };
                let seed = if seed_first { seed.words[w] } else { u64::MAX };
                *word = (*word | (site & seed)) & self.lan_has.in_range(w);
            }
        }
        out
    }

    /// Rules 2, 5 and 9: piece `i` may come over the WAN when no same-site
    /// peer has it.
    fn wan_allowed(&self, i: usize, any_wan: bool, seed_first: bool) -> bool {
        let mine = self.mine.as_ref().is_some_and(|(site, _)| site.get(i));
        (mine || any_wan) && (self.seed_share(i) || !seed_first)
    }

    fn issue(&mut self, now: Duration, batches: Vec<(P, Vec<u32>)>) -> Vec<Planned<P>> {
        let mut out = Vec::new();
        for (peer, pieces) in batches {
            for part in pieces.chunks(self.cfg.batch.max(1)) {
                let bytes: u64 = part.iter().map(|&i| u64::from(self.lens[i as usize])).sum();
                let Some(p) = self.peers.get_mut(&peer) else {
                    continue;
                };
                p.in_flight += part.len();
                let expected = Duration::from_secs_f64(4.0 * bytes as f64 / p.rate.max(1.0))
                    .min(self.cfg.max_timeout);
                for &i in part {
                    self.requested[i as usize] = self.requested[i as usize].saturating_add(1);
                }
                let id = RequestId(self.next_id);
                self.next_id += 1;
                self.pending.insert(
                    id,
                    Pending {
                        peer: peer.clone(),
                        pieces: part.to_vec(),
                        sent: now,
                        overdue: now + (expected / 2).max(OVERDUE_MIN),
                        deadline: now + expected.max(self.cfg.min_timeout),
                        bytes,
                    },
                );
                out.push(Planned {
                    id,
                    peer: peer.clone(),
                    pieces: part.to_vec(),
                    bytes,
                });
            }
        }
        out
    }

    fn is_member(&self, info: &PeerInfo) -> bool {
        info.site == self.me.site && !info.seed
    }

    /// Any change to the non-seed peers changes who owns what.
    fn membership_changed(&mut self, info: &PeerInfo) {
        if !info.seed {
            self.mine = None;
        }
    }

    /// Pieces this node owns for WAN fetching among its site's members, and
    /// pieces it owns for fetching from the seed: those its site owns among
    /// the sites it knows of (rendezvous over site names; with every site
    /// known from status reports, nodes that see different peers of a big
    /// fleet still agree), and that it owns within its site.
    fn compute_mine(&self, now: Duration) -> (Bits, Bits) {
        let live = |p: &&Peer| !p.info.seed && !p.banned_at(now);
        let site: Vec<u64> = self
            .peers
            .values()
            .filter(live)
            .filter(|p| p.lan)
            .map(|p| p.info.tag)
            .collect();
        let my_site = site_tag(&self.me.site);
        let mut sites: Vec<u64> = self
            .peers
            .values()
            .filter(live)
            .map(|p| site_tag(&p.info.site))
            .filter(|&t| t != my_site)
            .chain(self.sites.iter().copied())
            .collect();
        sites.sort_unstable();
        sites.dedup();
        let mut mine = (Bits::new(self.lens.len()), Bits::new(self.lens.len()));
        for (i, key) in self.keys.iter().enumerate() {
            let me = mix(self.me.tag ^ key);
            if site.iter().all(|t| mix(t ^ key) < me) {
                mine.0.set(i);
                let ours = mix(my_site ^ key);
                if sites.iter().all(|t| mix(t ^ key) < ours) {
                    mine.1.set(i);
                }
            }
        }
        mine
    }

    fn take_pending(&mut self, id: RequestId) -> Option<Pending<P>> {
        let req = self.pending.remove(&id)?;
        for &i in &req.pieces {
            self.requested[i as usize] = self.requested[i as usize].saturating_sub(1);
        }
        if let Some(p) = self.peers.get_mut(&req.peer) {
            p.in_flight = p.in_flight.saturating_sub(req.pieces.len());
        }
        Some(req)
    }

    fn fail_requests_to(&mut self, peer: &P) {
        let ids: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, r)| &r.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.take_pending(id);
        }
    }

    /// Uncompressed bytes of the requests in flight.
    pub fn bytes_in_flight(&self) -> u64 {
        self.pending.values().map(|r| r.bytes).sum()
    }
}

#[cfg(test)]
mod tests;

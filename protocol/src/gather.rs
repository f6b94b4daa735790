//! Gathering a release's manifest in parts: where to ask for each part
//! ([`PartFetch`]) and what a node has of them ([`Gather`]). Pure: the node
//! and the simulator run the same code, with `now` passed in.

use crate::ReleaseId;
use std::collections::BTreeMap;
use std::time::Duration;

/// A part asked for and not answered in this long is asked for again.
pub const MANIFEST_RETRY: Duration = Duration::from_secs(3);
/// A peer that did not have a manifest part is asked again after this.
pub const MANIFEST_PART_RETRY: Duration = Duration::from_millis(100);
/// A node asked for a manifest part that it is fetching itself holds the
/// request up to this long, and answers it as soon as the part comes.
pub const MANIFEST_PART_HOLD: Duration = Duration::from_millis(500);
/// Most requests for manifest parts a node holds per release.
pub const MAX_HELD_PARTS: usize = 256;

/// How high `site` ranks for part `part` of a release's manifest. A node
/// takes a part it lacks from a site that ranks higher for it, so parts
/// climb towards the sites that rank highest, and a site that knows of
/// none ranking higher fetches the part from the seed. The ranks move
/// between parts and releases, so sites share that work.
pub fn part_rank(release: &ReleaseId, site: &str, part: usize) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&release.0);
    h.update(&(part as u64).to_le_bytes());
    h.update(site.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// A node this young may not have found all of its site yet (when a site
/// boots at once, each node knows one or two others after a second): it
/// does not take itself for its site's fetching node, and its
/// [`MANIFEST_WAIT`] and [`MANIFEST_PART_WAIT`] count from then.
pub const FIND_SITE: Duration = Duration::from_secs(4);
/// How long a node waits for a same-site peer to have a manifest before
/// it asks outside its site (one node per site asks at once).
pub const MANIFEST_WAIT: Duration = Duration::from_secs(2);
/// How long a site waits for another site to fetch its share of a
/// manifest's parts before it asks the seed for them itself.
pub const MANIFEST_PART_WAIT: Duration = Duration::from_secs(1);
/// How long a site's fetching node that knows of no site ranking above its
/// own for a part, while the fleet has one, waits for its site's other
/// nodes to say that they know of one (see [`PartFetch`]) before it asks
/// the seed. They say so in their own requests for the parts, which they
/// send as soon as they hear the announcement.
pub const MANIFEST_HINT_WAIT: Duration = Duration::from_millis(200);
/// How long a node waits at most for its site's fetching node while that
/// node says it is still fetching the parts (a seed whose uplink is
/// queued with chunks can take seconds to send one).
pub const MANIFEST_WAIT_FETCHING: Duration = Duration::from_secs(10);

/// How long a manifest has been wanted (for `wanted_for`) by a node whose
/// mesh has run for `up`, not counting the node's first [`FIND_SITE`].
fn manifest_waited(up: Duration, wanted_for: Duration) -> Duration {
    wanted_for.min(up.saturating_sub(FIND_SITE))
}

/// A peer as a node sees it when it picks where to ask for manifest parts.
#[derive(Clone, Copy, Debug)]
pub struct PartPeer<'a, P> {
    /// How the caller names the peer.
    pub id: P,
    /// The site it says it is in.
    pub site: &'a str,
    /// Its rendezvous tag.
    pub tag: u64,
    /// It is the seed.
    pub seed: bool,
    /// It sent a have-map for the release, so it holds the manifest.
    pub holder: bool,
    /// It said lately that it is fetching the parts asked of it.
    pub fetching: bool,
    /// It answered without the part while not gathering the manifest,
    /// long after the announcement: it does not want this release (another
    /// platform or channel), so it is nobody's fetching node for it.
    pub declined: bool,
}

/// Where a node asks for the parts of one manifest it wants, decided from
/// what it knows of its peers. Pure, so that the node and the simulator
/// make the same choices.
///
/// A same-site peer that holds the manifest is asked for every part.
/// Otherwise one node per site (the highest `tag ^ key` among the site's
/// nodes this one knows, `key` from the release id) asks outside the site
/// at once, and for up to [`MANIFEST_WAIT`] the others ask it, or as long as
/// it says it is fetching them (up to [`MANIFEST_WAIT_FETCHING`]): a slow
/// seed must not send a whole site outside, one node per part. Outside the
/// site: a peer that holds the manifest; else, for each part, a node in the
/// peer site that ranks highest for it ([`part_rank`]) if that ranks above
/// this node's site: that node gathers the manifest too, holds the request
/// and passes the part on as it comes. A site that knows of none ranking
/// higher asks the seed, and so does one whose higher site has neither
/// answered within [`MANIFEST_PART_WAIT`] nor said it is fetching. The
/// requests climb the ranks, so they never go round in a circle, and the
/// seed sends each part once for each site that knows of no higher one:
/// once when every site knows every other.
///
/// A site knows more sites than any one node of it does: with 100 sites,
/// a node connected to 8 nodes elsewhere knows no site above its own for
/// one part in 9, and the seed sent each part to 12.7 sites. So each node
/// tells its site's fetching node, in its requests for the parts, how
/// high the highest site it has a peer in ranks for that part (its
/// [`Self::reach`]). A fetching node that knows of no higher site for a
/// part, while the fleet has one, asks the site node that reaches
/// highest, if one reaches above the site, and waits
/// [`MANIFEST_HINT_WAIT`] for the others to say so before it asks the
/// seed. A node asked by a site node for a part that it reaches higher
/// for than the asker takes the part up ([`Gather::site_asks`]): it climbs
/// for it as a fetching node does.
#[derive(Clone, Debug)]
pub struct PartFetch<'a, P> {
    /// The release whose manifest is wanted.
    pub release: ReleaseId,
    /// This node's site.
    pub site: &'a str,
    /// This node's rendezvous tag.
    pub tag: u64,
    /// How long this node's mesh has run.
    pub up: Duration,
    /// How long this node has wanted the manifest.
    pub wanted_for: Duration,
    /// Its peers.
    pub peers: Vec<PartPeer<'a, P>>,
    /// The sites it has heard of in the fleet (from status reports).
    pub fleet: Vec<&'a str>,
    /// What its site's nodes said of each part ([`Gather::routes`]).
    pub routes: &'a [Route<P>],
}

/// What a node's site said of one manifest part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route<P> {
    /// The site node that reaches highest for the part, and how high.
    pub hint: Option<(P, u64)>,
    /// A site node asked this node for the part, and this node reaches
    /// higher: it climbs for the part as its site's fetching node would,
    /// its waits counting from then (how long the manifest had been
    /// wanted then).
    pub taken_up: Option<Duration>,
    /// The node of `hint` was asked for the part.
    pub hint_asked: bool,
}

impl<P> Route<P> {
    /// Nothing said of the part yet.
    pub const NONE: Route<P> = Route {
        hint: None,
        taken_up: None,
        hint_asked: false,
    };
}

/// A node of `site` that may be asked for parts: not the seed, and it did
/// not decline the manifest.
fn in_site<P>(p: &PartPeer<'_, P>, site: &str) -> bool {
    p.site == site && !p.seed && !p.declined
}

impl<P: Copy + PartialEq> PartFetch<'_, P> {
    /// How long the manifest has been wanted, not counting the node's
    /// first [`FIND_SITE`].
    pub fn waited(&self) -> Duration {
        manifest_waited(self.up, self.wanted_for)
    }

    /// The rendezvous key from the release id: `tag ^ key` ranks nodes.
    fn key(&self) -> u64 {
        u64::from_le_bytes(self.release.0[..8].try_into().unwrap_or_default())
    }

    /// The peer matching `pick` with the highest `tag ^ key`: the choice
    /// moves between releases, and every node that knows it makes it.
    fn best(&self, pick: impl Fn(&PartPeer<'_, P>) -> bool) -> Option<&PartPeer<'_, P>> {
        let key = self.key();
        self.peers
            .iter()
            .filter(|p| pick(p))
            .max_by_key(|p| p.tag ^ key)
    }

    /// The sites other than its own that this node has a peer in.
    fn peer_sites(&self) -> Vec<&str> {
        let mut sites: Vec<&str> = self
            .peers
            .iter()
            .filter(|p| !p.seed && !p.declined && p.site != self.site)
            .map(|p| p.site)
            .collect();
        sites.sort_unstable();
        sites.dedup();
        sites
    }

    /// The highest site this node has a peer in for `part`, with its rank.
    fn highest<'s>(&self, sites: &[&'s str], part: usize) -> Option<(u64, &'s str)> {
        sites
            .iter()
            .map(|s| (part_rank(&self.release, s, part), *s))
            .max()
    }

    /// How high the highest site this node has a peer in ranks for
    /// `part` (0: none): what its requests to its own site say.
    pub fn reach(&self, part: usize) -> u64 {
        self.highest(&self.peer_sites(), part).map_or(0, |(r, _)| r)
    }

    /// The node of this node's site it takes for the site's fetching
    /// node: the highest `tag ^ key` among its site's nodes it knows that
    /// did not decline the manifest.
    fn site_fetcher(&self) -> Option<&PartPeer<'_, P>> {
        self.best(|p| in_site(p, self.site))
    }

    /// Whether this node takes itself for its site's fetching node.
    pub fn is_site_fetcher(&self) -> bool {
        let key = self.key();
        self.up >= FIND_SITE
            && self
                .site_fetcher()
                .is_none_or(|p| p.tag ^ key < self.tag ^ key)
    }

    /// Whom to ask for each of `due` (part numbers).
    pub fn sources(&self, due: &[usize]) -> Vec<(P, usize)> {
        let waited = self.waited();
        let id = |p: Option<&PartPeer<'_, P>>| p.map(|p| p.id);
        let local = id(self.best(|p| p.site == self.site && !p.seed && p.holder));
        let site_fetcher = self.site_fetcher();
        let chosen = self.is_site_fetcher();
        let waits = !chosen
            && (waited < MANIFEST_WAIT
                || (waited < MANIFEST_WAIT_FETCHING && site_fetcher.is_some_and(|p| p.fetching)));
        let remote_holder = id(self.best(|p| p.holder && !p.seed));
        let seed = id(self.best(|p| p.seed).or_else(|| self.best(|p| !p.declined)));
        let sites = self.peer_sites();
        due.iter()
            .filter_map(|&part| {
                let route = self.routes.get(part).copied().unwrap_or(Route::NONE);
                let waited = route
                    .taken_up
                    .map_or(waited, |at| self.wanted_for.saturating_sub(at));
                let from = local.or_else(|| {
                    if waits && route.taken_up.is_none() {
                        return id(site_fetcher);
                    }
                    if remote_holder.is_some() {
                        return remote_holder;
                    }
                    let own = part_rank(&self.release, self.site, part);
                    let known = self.highest(&sites, part).filter(|(r, _)| *r > own);
                    let higher =
                        known.and_then(|(r, site)| Some((r, self.best(|p| in_site(p, site))?)));
                    // Knowing of no higher site, a site node that does,
                    // if it is still a peer: it takes the part up when
                    // asked. (Not one that reaches higher than a site
                    // this node knows: the part is asked of one route at
                    // a time, or two would bring it over the WAN.)
                    let hinted = route.hint.and_then(|(k, r)| {
                        let p = self
                            .peers
                            .iter()
                            .find(|p| p.id == k && in_site(p, self.site))?;
                        (r > own && known.is_none()).then_some((r, p))
                    });
                    match higher.or(hinted) {
                        Some((_, p))
                            if waited < MANIFEST_PART_WAIT
                                || (waited < MANIFEST_WAIT_FETCHING && p.fetching) =>
                        {
                            Some(p.id)
                        }
                        Some(_) => seed,
                        // The fleet has a higher site that no peer is in:
                        // give the site's nodes a moment to say they reach
                        // one.
                        None if route.taken_up.is_none()
                            && waited < MANIFEST_HINT_WAIT
                            && self
                                .fleet
                                .iter()
                                .any(|s| part_rank(&self.release, s, part) > own) =>
                        {
                            None
                        }
                        None => seed,
                    }
                });
                from.map(|peer| (peer, part))
            })
            .collect()
    }
}

/// What a node has of one manifest it gathers: each part wanted (from an
/// instant on), asked for, or got (`B`: its bytes, which the caller checked
/// against the announcement; the simulator keeps none); the requests it
/// holds for parts it is fetching itself (`H`: whatever the caller answers
/// them with); and the peers (`P`) that said they are fetching parts too.
#[derive(Debug)]
pub struct Gather<P, H, B> {
    since: Duration,
    parts: Vec<PartState<P, B>>,
    held: Vec<(usize, Duration, H)>,
    fetching: BTreeMap<P, Duration>,
    declined: BTreeMap<P, Duration>,
    routes: Vec<Route<P>>,
}

#[derive(Debug)]
enum PartState<P, B> {
    /// Ask for it from this instant on.
    Want(Duration),
    /// Asked of this peer at this instant.
    Asked(Duration, P),
    Got(B),
}

impl<P, B> PartState<P, B> {
    fn is_got(&self) -> bool {
        matches!(self, PartState::Got(_))
    }
}

impl<P: Ord + Copy, H, B> Gather<P, H, B> {
    /// A manifest of `parts` parts, wanted from `now`.
    pub fn new(parts: usize, now: Duration) -> Self {
        Gather {
            since: now,
            parts: (0..parts).map(|_| PartState::Want(now)).collect(),
            held: Vec::new(),
            fetching: BTreeMap::new(),
            declined: BTreeMap::new(),
            routes: vec![Route::NONE; parts],
        }
    }

    /// What this node's site said of each part, for [`PartFetch::routes`].
    pub fn routes(&self) -> &[Route<P>] {
        &self.routes
    }

    /// `peer`, a node of this node's site whose highest peer site ranks
    /// `theirs` for `part`, asked for the part; this node's site ranks
    /// `own`, and its own reach is `mine` (`None` if it takes itself for
    /// its site's fetching node, which climbs for every part anyway). The
    /// asker's reach is kept as a hint if it is the highest heard (or it
    /// is the asker's own, which it updates). If this node reaches higher
    /// than both, it takes the part up and asks for it again now, by its
    /// new route: returns true then.
    pub fn site_asks(
        &mut self,
        peer: P,
        part: usize,
        theirs: u64,
        mine: Option<u64>,
        own: u64,
        now: Duration,
    ) -> bool {
        let lacks = !self.has(part);
        let Some(route) = self.routes.get_mut(part) else {
            return false;
        };
        if route
            .hint
            .is_none_or(|(k, r)| k == peer || (theirs > r && !route.hint_asked))
        {
            route.hint = Some((peer, theirs));
        }
        let take = mine.is_some_and(|m| m > theirs.max(own)) && route.taken_up.is_none() && lacks;
        if take {
            route.taken_up = Some(now.saturating_sub(self.since));
            self.want(part, now);
        }
        take
    }

    /// How many parts the manifest has.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// True for a manifest of no parts (which no announcement allows).
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// How long the manifest has been wanted.
    pub fn wanted_for(&self, now: Duration) -> Duration {
        now.saturating_sub(self.since)
    }

    /// The parts to ask for now: wanted from before `now`, or asked for
    /// [`MANIFEST_RETRY`] ago and not answered.
    pub fn due(&self, now: Duration) -> Vec<usize> {
        (0..self.parts.len())
            .filter(|&i| match self.parts[i] {
                PartState::Want(from) => now >= from,
                PartState::Asked(at, _) => now.saturating_sub(at) >= MANIFEST_RETRY,
                PartState::Got(_) => false,
            })
            .collect()
    }

    /// Part `part` was asked of `peer` at `now`. A site node asked for
    /// it as the one that reaches highest keeps that place for the part:
    /// a higher reach heard later must not have a second node fetch it
    /// over the site's WAN.
    pub fn asked(&mut self, part: usize, now: Duration, peer: P) {
        if let Some(p) = self.parts.get_mut(part).filter(|p| !p.is_got()) {
            *p = PartState::Asked(now, peer);
        }
        if let Some(r) = self.routes.get_mut(part) {
            r.hint_asked |= r.hint.is_some_and(|(k, _)| k == peer);
        }
    }

    /// Part `part`, if it is here.
    pub fn part(&self, part: usize) -> Option<&B> {
        match self.parts.get(part)? {
            PartState::Got(b) => Some(b),
            _ => None,
        }
    }

    /// Whether part `part` is here.
    pub fn has(&self, part: usize) -> bool {
        self.part(part).is_some()
    }

    /// Whether every part is here.
    pub fn is_complete(&self) -> bool {
        self.parts.iter().all(PartState::is_got)
    }

    /// Every part in order, once all are here.
    pub fn complete(&self) -> Option<Vec<&B>> {
        (0..self.parts.len()).map(|i| self.part(i)).collect()
    }

    /// Part `part` came and checked out: the requests held for it, to
    /// answer with it.
    pub fn got(&mut self, part: usize, bytes: B) -> Vec<H> {
        if let Some(p) = self.parts.get_mut(part) {
            *p = PartState::Got(bytes);
        }
        let (ready, held) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.0 == part);
        self.held = held;
        ready.into_iter().map(|h| h.2).collect()
    }

    /// Part `part` is wanted again from `at` (it came wrong, or it did not
    /// come: pass `at` = `now` plus the wait).
    pub fn want(&mut self, part: usize, at: Duration) {
        if let Some(p) = self.parts.get_mut(part).filter(|p| !p.is_got()) {
            *p = PartState::Want(at);
        }
    }

    /// Every part is wanted again from `at`: together they were not the
    /// manifest announced.
    pub fn restart(&mut self, at: Duration) {
        self.parts.iter_mut().for_each(|p| *p = PartState::Want(at));
    }

    /// A request for `part` went unanswered or was answered without it,
    /// at `now` on a node whose mesh has run for `up`: ask again soon while
    /// the sites share the parts out (the manifest wanted less than
    /// [`MANIFEST_WAIT`], not counting the node's first [`FIND_SITE`]),
    /// then seldom.
    /// Only the answer of the peer last asked counts: one that comes after
    /// the part was asked of another (it was taken up) leaves it asked.
    pub fn missed(&mut self, peer: P, part: usize, now: Duration, up: Duration) {
        let after = if manifest_waited(up, self.wanted_for(now)) < MANIFEST_WAIT {
            MANIFEST_PART_RETRY
        } else {
            MANIFEST_RETRY
        };
        self.answered(peer, part, now + after);
    }

    /// `peer` answered "later" for `part`: it is fetching it too; ask again
    /// soon.
    pub fn later(&mut self, peer: P, part: usize, now: Duration) {
        self.declined.remove(&peer);
        self.fetching.insert(peer, now);
        self.answered(peer, part, now + MANIFEST_PART_RETRY);
    }

    /// `peer` answered without `part`: wanted again from `at` if it is the
    /// peer the part was last asked of.
    fn answered(&mut self, peer: P, part: usize, at: Duration) {
        if matches!(self.parts.get(part), Some(PartState::Asked(_, p)) if *p == peer) {
            self.want(part, at);
        }
    }

    /// `peer` answered without `part` and without "later": it does not
    /// gather the manifest. Asked again as [`Self::missed`] says. Once the
    /// manifest has been wanted for [`MANIFEST_PART_HOLD`], long after any
    /// peer has heard the announcement, the peer is taken not to want the
    /// release for [`MANIFEST_WAIT_FETCHING`] (at most [`MAX_HELD_PARTS`]
    /// such peers): a node of another platform or channel must not be a
    /// site's fetching node whom its site waits for, then passes by one
    /// node at a time.
    pub fn none(&mut self, peer: P, part: usize, now: Duration, up: Duration) {
        self.missed(peer, part, now, up);
        if self.wanted_for(now) >= MANIFEST_PART_HOLD && self.declined.len() < MAX_HELD_PARTS {
            self.fetching.remove(&peer);
            self.declined.insert(peer, now);
        }
    }

    /// Whether `peer` answered lately that it does not gather the manifest.
    pub fn is_declined(&self, peer: &P, now: Duration) -> bool {
        self.declined
            .get(peer)
            .is_some_and(|&t| now.saturating_sub(t) < MANIFEST_WAIT_FETCHING)
    }

    /// Whether `peer` said lately (within [`MANIFEST_WAIT`]) that it is
    /// fetching parts.
    pub fn is_fetching(&self, peer: &P, now: Duration) -> bool {
        self.fetching
            .get(peer)
            .is_some_and(|&t| now.saturating_sub(t) < MANIFEST_WAIT)
    }

    /// A request for a part this node lacks is held (up to
    /// [`MAX_HELD_PARTS`]), whether it has asked for the part or waits to
    /// ask again: answering "later" at once would send the asker into a
    /// retry that lands after the part came, one such wait for each level
    /// the part climbs. A request for a part that is here, or beyond the
    /// bound, comes back, to be answered now.
    pub fn hold(&mut self, part: usize, now: Duration, request: H) -> Option<H> {
        let lacks = self.parts.get(part).is_some_and(|p| !p.is_got());
        if lacks && self.held.len() < MAX_HELD_PARTS {
            self.held.push((part, now, request));
            None
        } else {
            Some(request)
        }
    }

    /// The requests held [`MANIFEST_PART_HOLD`] or longer, to answer now
    /// ("later", if the part is still not here); forgets peers that said
    /// they were fetching longer ago than [`MANIFEST_WAIT`], and those that
    /// declined longer ago than [`MANIFEST_WAIT_FETCHING`].
    pub fn expired(&mut self, now: Duration) -> Vec<(usize, H)> {
        self.fetching
            .retain(|_, t| now.saturating_sub(*t) < MANIFEST_WAIT);
        self.declined
            .retain(|_, t| now.saturating_sub(*t) < MANIFEST_WAIT_FETCHING);
        let (old, held) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| now.saturating_sub(h.1) >= MANIFEST_PART_HOLD);
        self.held = held;
        old.into_iter().map(|h| (h.0, h.2)).collect()
    }

    /// Every request held, to answer now (the manifest is loaded).
    pub fn take_held(&mut self) -> Vec<(usize, H)> {
        std::mem::take(&mut self.held)
            .into_iter()
            .map(|h| (h.0, h.2))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A part is due when wanted, then not until its request is answered
    /// or [`MANIFEST_RETRY`] has passed; answers without it bring it back
    /// soon or seldom; a part that came is never due again.
    #[test]
    fn parts_are_due_when_wanted_and_again_when_missed() {
        let mut g: Gather<u32, (), ()> = Gather::new(3, Duration::ZERO);
        assert_eq!(g.due(Duration::ZERO), [0, 1, 2]);
        (0..3).for_each(|i| g.asked(i, Duration::ZERO, 1));
        assert!(g.due(MANIFEST_RETRY - MS).is_empty());
        assert_eq!(g.due(MANIFEST_RETRY), [0, 1, 2]);
        // Wanted for MANIFEST_WAIT: by a node in its first FIND_SITE (its
        // wait has not begun), and by one up long before.
        let now = MANIFEST_WAIT;
        g.missed(1, 0, now, Duration::ZERO);
        g.missed(1, 1, now, Duration::MAX);
        assert_eq!(g.due(now + MANIFEST_PART_RETRY), [0]);
        assert_eq!(g.due(now + MANIFEST_RETRY), [0, 1, 2]);
        assert!(g.got(2, ()).is_empty());
        g.missed(1, 2, now, Duration::ZERO);
        assert!(g.has(2) && !g.is_complete());
        assert_eq!(g.due(now + MANIFEST_RETRY), [0, 1]);
        g.got(0, ());
        g.got(1, ());
        assert!(g.is_complete());
        g.restart(now);
        assert_eq!(g.due(now), [0, 1, 2]);
    }

    /// Requests are held for parts not here, asked for yet or not, at
    /// most [`MAX_HELD_PARTS`]; a part's arrival releases its own, and the
    /// rest come back after [`MANIFEST_PART_HOLD`].
    #[test]
    fn requests_are_held_while_the_part_is_fetched() {
        let mut g: Gather<u32, u32, ()> = Gather::new(3, Duration::ZERO);
        g.got(2, ());
        assert_eq!(g.hold(2, Duration::ZERO, 7), Some(7), "here: answered now");
        assert_eq!(g.hold(0, Duration::ZERO, 1), None, "not asked yet");
        g.asked(1, Duration::ZERO, 1);
        assert_eq!(g.hold(1, 100 * MS, 2), None);
        for r in 3..3 + MAX_HELD_PARTS as u32 - 2 {
            assert_eq!(g.hold(1, 100 * MS, r), None);
        }
        assert_eq!(g.hold(1, 100 * MS, 999), Some(999), "full");
        assert_eq!(g.got(0, ()), [1]);
        assert!(g.expired(MANIFEST_PART_HOLD).is_empty());
        let old = g.expired(100 * MS + MANIFEST_PART_HOLD);
        assert_eq!(old.len(), MAX_HELD_PARTS - 1);
        assert!(old.iter().all(|(part, _)| *part == 1));
        assert!(g.take_held().is_empty());
    }

    /// A peer that says "later" counts as fetching for [`MANIFEST_WAIT`],
    /// and the part is asked for again after [`MANIFEST_PART_RETRY`].
    #[test]
    fn a_later_answer_marks_the_peer_fetching_for_a_while() {
        let mut g: Gather<u32, (), ()> = Gather::new(1, Duration::ZERO);
        g.asked(0, Duration::ZERO, 5);
        g.later(5, 0, 10 * MS);
        assert!(g.is_fetching(&5, 10 * MS) && !g.is_fetching(&6, 10 * MS));
        assert!(g.due(10 * MS).is_empty());
        assert_eq!(g.due(10 * MS + MANIFEST_PART_RETRY), [0]);
        assert!(!g.is_fetching(&5, 10 * MS + MANIFEST_WAIT));
        g.expired(10 * MS + MANIFEST_WAIT);
        assert!(g.fetching.is_empty(), "forgotten");
    }

    /// A site node's request leaves its reach as a hint (the highest
    /// heard, or the same node's newer one, until the hinted node is
    /// asked); a node that reaches higher than the asker and its own site
    /// takes the part up, unless it is its site's fetching node: the part
    /// is due again at once, and an answer from the peer it asked before
    /// no longer moves it.
    #[test]
    fn a_site_node_that_reaches_higher_takes_the_part_up() {
        let mut g: Gather<u32, (), ()> = Gather::new(2, Duration::ZERO);
        let (own, now) = (100, 10 * MS);
        assert!(!g.site_asks(7, 0, 300, Some(200), own, now), "reaches less");
        assert_eq!(g.routes()[0].hint, Some((7, 300)));
        g.site_asks(8, 0, 250, None, own, now);
        assert_eq!(g.routes()[0].hint, Some((7, 300)), "lower: kept");
        g.site_asks(7, 0, 150, None, own, now);
        assert_eq!(g.routes()[0].hint, Some((7, 150)), "its own, newer");
        g.asked(0, now, 7);
        g.site_asks(8, 0, 400, None, own, now);
        assert_eq!(g.routes()[0].hint, Some((7, 150)), "asked: kept");
        // Node 5 is asked for part 1 and answers later; meanwhile node 7
        // asks for it, reaching less than this node: taken up.
        g.asked(1, now, 5);
        assert!(
            !g.site_asks(7, 1, 300, None, own, now),
            "site's fetching node"
        );
        assert!(g.due(now).is_empty());
        assert!(g.site_asks(7, 1, 300, Some(500), own, now));
        assert_eq!(g.routes()[1].taken_up, Some(now));
        assert_eq!(g.due(now), [1]);
        g.asked(1, now, 9);
        g.later(5, 1, now + MS);
        assert!(g.due(now + MANIFEST_PART_RETRY + MS).is_empty(), "stale");
        assert!(!g.site_asks(7, 1, 300, Some(500), own, now), "once");
        g.got(1, ());
        assert!(!g.site_asks(6, 1, 0, Some(500), own, now), "here");
    }

    /// "None" while the announcement may still be spreading only means
    /// "ask again"; after [`MANIFEST_PART_HOLD`] it marks the peer as not
    /// gathering the manifest, until it says "later" or
    /// [`MANIFEST_WAIT_FETCHING`] has passed.
    #[test]
    fn a_none_answer_late_marks_the_peer_declined() {
        let mut g: Gather<u32, (), ()> = Gather::new(1, Duration::ZERO);
        let up = Duration::from_secs(60);
        g.none(5, 0, 10 * MS, up);
        assert!(!g.is_declined(&5, 10 * MS), "too early to tell");
        assert_eq!(g.due(10 * MS + MANIFEST_PART_RETRY), [0]);
        let late = MANIFEST_PART_HOLD;
        g.none(5, 0, late, up);
        assert!(g.is_declined(&5, late) && !g.is_declined(&6, late));
        g.later(5, 0, late + MS);
        assert!(!g.is_declined(&5, late + MS) && g.is_fetching(&5, late + MS));
        g.none(6, 0, late, up);
        assert!(g.is_declined(&6, late + MANIFEST_WAIT_FETCHING - MS));
        g.expired(late + MANIFEST_WAIT_FETCHING);
        assert!(g.declined.is_empty(), "forgotten");
    }
}

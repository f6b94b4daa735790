//! What nodes say to each other on the mesh: signed release announcements
//! (gossip) and the exchange protocol (trust chain, manifests, have-maps and
//! chunks, peer to peer).
//!
//! An announcement is a small signed pointer: the manifest is fetched in
//! parts from any peers, each part checked against a hash the announcement
//! carries, and the whole verified on its own signatures, so a relay never
//! has to be trusted. Every message has a size limit that the codec checks
//! before decoding.

use crate::codec::{Kind, Message};
use crate::keys::{Node, PublicKey, Release};
use crate::manifest::{is_valid_name, Manifest, VerifiedManifest, MAX_CHUNKS, MAX_PLATFORMS};
use crate::member::Membership;
use crate::signed::RoleKeys;
use crate::signed::{Signed, SignedBody};
use crate::time::UnixTime;
use crate::trust::{TrustChain, TrustState};
use crate::{ChunkId, Error, ReleaseId, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most chunk ids in one request.
pub const MAX_BATCH: usize = 64;
/// A responder stops adding chunks once a response holds this many bytes
/// (it always sends at least one chunk it has).
pub const RESPONSE_BUDGET: usize = 1 << 20;
/// Most announcements a node keeps and hands to a new peer.
pub const MAX_ANNOUNCEMENTS: usize = 16;
/// Largest encoded signed policy carried in a hello.
pub const MAX_POLICY_BYTES: usize = 300 << 10;
/// Most piece indices in one incremental have-update.
pub const MAX_HAVE_ADDED: usize = 8192;

/// A signed pointer to a release: enough to decide whether to fetch it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The release id (blake3 of the signed manifest body).
    pub release_id: ReleaseId,
    /// Its version.
    pub version: semver::Version,
    /// Its channel.
    pub channel: String,
    /// The platforms it runs on.
    pub platforms: Vec<String>,
    /// Image length in bytes.
    pub image_len: u64,
    /// How the signed manifest's encoding is cut into parts for fetching,
    /// and each part's hash.
    pub manifest: ManifestParts,
    /// When this announcement was signed.
    pub issued_at: UnixTime,
    /// After this, nodes ignore it.
    pub expires_at: UnixTime,
}

impl Message for Announcement {
    const KIND: Kind = Kind::Announcement;
    const WHAT: &'static str = "announcement";
    const MAX_BYTES: usize = 4096 + MAX_MANIFEST_PARTS * 33;
}

impl SignedBody for Announcement {
    type Role = Release;
    const SIGNED_KIND: Kind = Kind::SignedAnnouncement;
}

impl Announcement {
    /// The announcement of a verified manifest, valid for as long as it.
    pub fn of(release: &VerifiedManifest, now: UnixTime) -> Result<Self> {
        let manifest = release.manifest();
        Ok(Announcement {
            release_id: release.id(),
            version: manifest.version.clone(),
            channel: manifest.channel.clone(),
            platforms: manifest.platforms.clone(),
            image_len: manifest.image_len,
            manifest: ManifestParts::of(&crate::codec::encode(release.signed())?),
            issued_at: now,
            expires_at: manifest.expires_at,
        })
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::invalid(Self::WHAT, reason));
        if !is_valid_name(&self.channel) {
            return bad(format!("channel {:?} is not a valid name", self.channel));
        }
        if self.platforms.is_empty() || self.platforms.len() > MAX_PLATFORMS {
            return bad("must name 1-32 platforms".into());
        }
        if self.expires_at <= self.issued_at {
            return bad("expires before it is issued".into());
        }
        self.manifest.validate()
    }
}

/// Most parts a signed manifest is cut into (see [`ManifestParts`]).
pub const MAX_MANIFEST_PARTS: usize = 64;
/// The shortest part: a manifest under this travels as one.
pub const MIN_MANIFEST_PART: u32 = 64 << 10;

/// A signed manifest's encoding cut into parts of `part_len` bytes (the
/// last one shorter), with each part's blake3. The announcement carries
/// this, so a node can take some parts from the seed and the rest from
/// other sites, and check each one as it arrives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestParts {
    /// Bytes in each part but the last.
    pub part_len: u32,
    /// Each part's blake3, in order.
    pub ids: Vec<ChunkId>,
}

impl ManifestParts {
    /// The parts of an encoded signed manifest, [`Self::part_len`] long.
    pub fn of(encoded: &[u8]) -> Self {
        let part_len = Self::part_len(encoded.len());
        ManifestParts {
            part_len: u32::try_from(part_len).unwrap_or(u32::MAX),
            ids: encoded.chunks(part_len).map(ChunkId::of).collect(),
        }
    }

    /// How long the parts of an encoded manifest of `len` bytes are (but
    /// the last): [`MIN_MANIFEST_PART`], or longer when that would make
    /// more than [`MAX_MANIFEST_PARTS`].
    pub fn part_len(len: usize) -> usize {
        len.div_ceil(MAX_MANIFEST_PARTS)
            .max(MIN_MANIFEST_PART as usize)
    }

    /// Part `i` of `encoded`, the signed manifest these parts describe.
    pub fn part<'a>(&self, encoded: &'a [u8], i: usize) -> Option<&'a [u8]> {
        encoded.chunks(self.part_len as usize).nth(i)
    }

    /// Whether `bytes` is part `i`: its length and its hash.
    pub fn check(&self, i: usize, bytes: &[u8]) -> bool {
        let len_ok = if i + 1 == self.ids.len() {
            (1..=self.part_len as usize).contains(&bytes.len())
        } else {
            bytes.len() == self.part_len as usize
        };
        len_ok && self.ids.get(i) == Some(&ChunkId::of(bytes))
    }

    fn validate(&self) -> Result<()> {
        let n = self.ids.len();
        let max_len = <Signed<Manifest> as Message>::MAX_BYTES;
        if n == 0 || n > MAX_MANIFEST_PARTS {
            return Err(Error::invalid(
                Announcement::WHAT,
                format!("{n} manifest parts, not 1-{MAX_MANIFEST_PARTS}"),
            ));
        }
        if self.part_len < MIN_MANIFEST_PART || (n - 1) * self.part_len as usize >= max_len {
            return Err(Error::invalid(
                Announcement::WHAT,
                format!("manifest parts of {} bytes", self.part_len),
            ));
        }
        Ok(())
    }
}

impl Signed<Announcement> {
    /// Checks the release signatures against the current trust document,
    /// the announcement's rules and its expiry.
    pub fn verify_announcement(&self, trust: &TrustState, now: UnixTime) -> Result<Announcement> {
        let doc = trust.current(now)?;
        let a = self.verify(&doc.release)?;
        a.validate()?;
        if now >= a.expires_at {
            return Err(Error::Expired {
                what: Announcement::WHAT,
                expired_at: a.expires_at,
                now,
            });
        }
        Ok(a)
    }
}

/// What a node knows of the releases announced to it: the newest per
/// channel. Older versions are replays (or a frozen authority) and are
/// refused; the same release again is a duplicate.
#[derive(Clone, Debug, Default)]
pub struct Announcements {
    newest: BTreeMap<String, (Announcement, Signed<Announcement>)>,
}

/// What [`Announcements::accept`] made of a valid announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// A release this node did not know: act on it and relay it.
    New(Announcement),
    /// A release already known (a re-announcement): relay, do not act.
    Known,
}

impl Announcements {
    /// Verifies `signed` and records it if it is the newest of its channel.
    pub fn accept(
        &mut self,
        signed: &Signed<Announcement>,
        trust: &TrustState,
        now: UnixTime,
    ) -> Result<Accepted> {
        let a = signed.verify_announcement(trust, now)?;
        if let Some((known, _)) = self.newest.get(&a.channel) {
            if a.version < known.version {
                return Err(Error::VersionRollback {
                    what: Announcement::WHAT,
                    trusted: known.version.to_string(),
                    offered: a.version.to_string(),
                });
            }
            if a.version == known.version {
                if a.release_id != known.release_id {
                    return Err(Error::invalid(
                        Announcement::WHAT,
                        format!("a different release already has version {}", a.version),
                    ));
                }
                return Ok(Accepted::Known);
            }
        }
        if !self.newest.contains_key(&a.channel) && self.newest.len() >= MAX_ANNOUNCEMENTS {
            return Err(Error::invalid(
                Announcement::WHAT,
                "too many channels announced",
            ));
        }
        self.newest
            .insert(a.channel.clone(), (a.clone(), signed.clone()));
        Ok(Accepted::New(a))
    }

    /// The newest announcement of every channel, signed, to hand to a peer.
    pub fn signed(&self) -> Vec<Signed<Announcement>> {
        self.newest.values().map(|(_, s)| s.clone()).collect()
    }

    /// The newest announcement of every channel.
    pub fn iter(&self) -> impl Iterator<Item = &Announcement> {
        self.newest.values().map(|(a, _)| a)
    }
}

/// A request on the exchange protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Sent on connect: what I trust and what I know is announced.
    Hello(Hello),
    /// Which pieces of a release the sender has (pieces are the manifest's
    /// distinct chunk ids in first-appearance order).
    Have(Have),
    /// One part of a release's encoded signed manifest
    /// ([`Announcement::manifest`]).
    ManifestPart {
        /// The release.
        release: ReleaseId,
        /// The part's index.
        part: u32,
        /// How high the highest site the asker has a peer in ranks for
        /// the part ([`crate::gather::PartFetch::reach`]): a node of its
        /// own site that reaches higher takes the part up.
        reach: u64,
    },
    /// Chunks of a release by piece index, at most [`MAX_BATCH`]: the
    /// responder finds their ids in its manifest.
    Chunks {
        /// The release they belong to.
        release: ReleaseId,
        /// Their piece indices, ascending.
        #[serde(with = "ascending")]
        pieces: Vec<u32>,
    },
}

/// The trust chain and announcements a node knows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Every trust document the sender holds, oldest first.
    pub trust: TrustChain,
    /// The newest announcement per channel.
    pub announcements: Vec<Signed<Announcement>>,
    /// The newest signed policy the sender holds, encoded (empty: none).
    /// Bytes, because the policy type lives in the policy crate.
    #[serde(with = "crate::codec::bytes")]
    pub policy: Vec<u8>,
    /// The sender's membership credential, if it has one: without a valid
    /// one, peers answer nothing but hellos and ignore its gossip.
    pub member: Option<Signed<Membership>>,
}

/// A have-map or an update to one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Have {
    /// The release.
    pub release: ReleaseId,
    /// Its number of pieces.
    pub pieces: u32,
    /// The whole map (bit `i` of byte `i / 8`, lowest bit first), if set.
    #[serde(with = "crate::codec::bytes::option")]
    pub full: Option<Vec<u8>>,
    /// Pieces gained since the last update, ascending, at most
    /// [`MAX_HAVE_ADDED`].
    #[serde(with = "ascending")]
    pub added: Vec<u32>,
}

impl Have {
    /// Checks the sizes against the piece count.
    pub fn validate(&self) -> Result<()> {
        let n = self.pieces as usize;
        if n == 0 || n > MAX_CHUNKS {
            return Err(Error::invalid("have", format!("{n} pieces")));
        }
        if self.full.as_ref().is_some_and(|m| m.len() != n.div_ceil(8)) {
            return Err(Error::invalid("have", "map length does not match pieces"));
        }
        if self.added.len() > MAX_HAVE_ADDED || self.added.iter().any(|&i| i as usize >= n) {
            return Err(Error::invalid("have", "added pieces out of range"));
        }
        Ok(())
    }
}

/// Ascending, distinct piece indices on the wire: the first, then each
/// one's distance from the one before. bincode writes a number under 251 in
/// one byte and anything up to 65535 in three, so a have-update or a chunk
/// request costs about a byte a piece instead of three. Indices that do not
/// ascend cannot be written, and a repeat (a zero distance) or an overflow
/// does not decode, so a list has one encoding.
mod ascending {
    use serde::{de, ser, Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(pieces: &[u32], s: S) -> Result<S::Ok, S::Error> {
        let mut gaps = Vec::with_capacity(pieces.len());
        let mut prev = None;
        for &i in pieces {
            gaps.push(match prev {
                None => i,
                Some(p) if i > p => i - p,
                Some(_) => return Err(ser::Error::custom("piece indices do not ascend")),
            });
            prev = Some(i);
        }
        gaps.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        let gaps = Vec::<u32>::deserialize(d)?;
        let mut pieces: Vec<u32> = Vec::with_capacity(gaps.len());
        for gap in gaps {
            let next = match pieces.last() {
                None => Some(gap),
                Some(_) if gap == 0 => None,
                Some(&p) => p.checked_add(gap),
            };
            pieces.push(next.ok_or_else(|| de::Error::custom("piece indices do not ascend"))?);
        }
        Ok(pieces)
    }
}

/// A response on the exchange protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The responder's own hello.
    Hello(Hello),
    /// A have-map was taken; if `need_full`, send the whole map next time
    /// (the responder did not know the release when it came).
    HaveAck {
        /// Send the full map again later.
        need_full: bool,
    },
    /// The manifest part, if the responder has it.
    ManifestPart(#[serde(with = "crate::codec::bytes::option")] Option<Vec<u8>>),
    /// Chunks in request order: the stored (compressed) encoding, or `None`
    /// where the responder has no verified copy or the budget ran out.
    Chunks(#[serde(with = "crate::codec::bytes::list")] Vec<Option<Vec<u8>>>),
    /// The responder is at its upload or queue limit; ask again later.
    Busy,
    /// The responder does not take the requester for a fleet member (no
    /// credential, or one that is expired, revoked or not for its key).
    NotMember(String),
    /// Answer to a hello whose credential did not verify, from the seed,
    /// which holds a newer one for the requester (re-signed after a
    /// policy-key rotation, renewed, or re-enrolled): the requester checks
    /// it under the trust chain that comes with it, keeps it, and says
    /// hello again.
    Renewal {
        /// The responder's trust chain (the credential may need a newer
        /// one than the requester holds).
        trust: TrustChain,
        /// The credential.
        member: Signed<Membership>,
    },
    /// The responder is fetching that manifest part itself and does not
    /// have it yet: ask again soon.
    ManifestPartLater,
}

impl Message for Request {
    const KIND: Kind = Kind::Request;
    const WHAT: &'static str = "request";
    const MAX_BYTES: usize = <TrustChain as Message>::MAX_BYTES
        + MAX_ANNOUNCEMENTS * <Signed<Announcement> as Message>::MAX_BYTES
        + MAX_POLICY_BYTES
        + <Signed<Membership> as Message>::MAX_BYTES;
}

impl Message for Response {
    const KIND: Kind = Kind::Response;
    const WHAT: &'static str = "response";
    const MAX_BYTES: usize = <Signed<Manifest> as Message>::MAX_BYTES + 64;
}

// A chunk response (the budget plus one oversized chunk) fits the limit.
const _: () = assert!(RESPONSE_BUDGET + (5 << 20) < <Response as Message>::MAX_BYTES);
const _: () = assert!(<Response as Message>::MAX_BYTES <= crate::codec::MAX_MESSAGE_BYTES);
const _: () = assert!(<Request as Message>::MAX_BYTES <= crate::codec::MAX_MESSAGE_BYTES);

/// The distinct chunks of a manifest in first-appearance order: piece `i`
/// of a have-map is `pieces(m)[i]`.
pub fn pieces(manifest: &Manifest) -> Vec<(ChunkId, u32)> {
    let mut seen = std::collections::BTreeSet::new();
    manifest
        .chunks
        .iter()
        .filter(|c| seen.insert(c.id))
        .map(|c| (c.id, c.len))
        .collect()
}

/// Most labels, releases or characters of free text in a report.
pub const MAX_REPORT_ITEMS: usize = 32;

/// A node's status, signed with its node key and gossiped; the seed's
/// fleet view and rollout decisions are built from these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The node's peer id (derived from the key that signs the report).
    pub node_id: String,
    /// When the node made the report.
    pub at: UnixTime,
    /// Its labels, with `site` and `platform`.
    pub labels: BTreeMap<String, String>,
    /// The version it booted, if known.
    pub booted_version: Option<String>,
    /// The slot it booted.
    pub slot: Option<String>,
    /// The update state (`idle`, `waiting_for_window`, `committed`,
    /// `rolled_back`, …). `committed` is only reported after a good boot.
    pub state: String,
    /// The release being (or last) applied.
    pub target_version: Option<String>,
    /// Why it is waiting, rolled back or failed.
    pub reason: Option<String>,
    /// Download progress per release.
    pub releases: Vec<ReleaseProgress>,
}

/// One release's download progress in a [`Report`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseProgress {
    /// Its version.
    pub version: String,
    /// Distinct chunks held.
    pub held: u64,
    /// Distinct chunks in the release.
    pub total: u64,
    /// Chunk bytes received from peers of the node's own site.
    pub bytes_same_site: u64,
    /// Chunk bytes received from anywhere else (other sites, the seed):
    /// what crossed the site's WAN link for this node.
    pub bytes_wan: u64,
}

impl Message for Report {
    const KIND: Kind = Kind::Report;
    const WHAT: &'static str = "status report";
    const MAX_BYTES: usize = 16 << 10;
}

impl SignedBody for Report {
    type Role = Node;
    const SIGNED_KIND: Kind = Kind::SignedReport;
}

/// Unchanged status reports the whole fleet sends in a second, on average.
/// Every report reaches every node through gossip, so this, not the fleet's
/// size, is what each node's link carries of them when nothing changes.
pub const FLEET_REPORTS_PER_SEC: f64 = 0.5;
/// An unchanged report is repeated no more often than this.
pub const REPORT_EVERY_MIN_SECS: u64 = 15;

/// Seconds between a node's unchanged status reports in a fleet of `nodes`
/// reporting nodes (a change goes at once): [`REPORT_EVERY_MIN_SECS`] in a
/// small fleet, and longer in a big one, so that the fleet together sends
/// about [`FLEET_REPORTS_PER_SEC`] (30 nodes: 60 s; 10,000: 5.6 hours).
pub fn report_every_secs(nodes: usize) -> u64 {
    ((nodes as f64 / FLEET_REPORTS_PER_SEC).ceil() as u64).max(REPORT_EVERY_MIN_SECS)
}

/// A report older than this (by its own time) is not taken or relayed: a
/// replay, or too late to matter.
pub const REPORT_MAX_AGE_SECS: u64 = 300;
/// A report dated further ahead than this comes from a wrong clock.
pub const REPORT_MAX_AHEAD_SECS: u64 = 60;

/// What a receiver makes of a report whose signature verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportVerdict {
    /// Newer than the one held from that node: take it and relay it.
    Newer,
    /// Older than the one held, or the same: a replay or a duplicate. (Two
    /// different reports of one second are both taken, the later last.)
    Replay,
    /// Older than [`REPORT_MAX_AGE_SECS`].
    Stale,
    /// Dated more than [`REPORT_MAX_AHEAD_SECS`] ahead.
    Ahead,
}

/// Judges `report` against the one `held` from the same node. Anything but
/// [`ReportVerdict::Newer`] is ignored, not punished: a skewed clock is
/// not an attack by the peer that relayed it.
pub fn judge_report(held: Option<&Report>, report: &Report, now: UnixTime) -> ReportVerdict {
    if report.at.0.saturating_add(REPORT_MAX_AGE_SECS) < now.0 {
        ReportVerdict::Stale
    } else if report.at.0 > now.0.saturating_add(REPORT_MAX_AHEAD_SECS) {
        ReportVerdict::Ahead
    } else if held.is_some_and(|h| h.at > report.at || h == report) {
        ReportVerdict::Replay
    } else {
        ReportVerdict::Newer
    }
}

/// A signed report with the key that signed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportEnvelope {
    /// The node's public key.
    pub key: PublicKey<Node>,
    /// The report.
    pub signed: Signed<Report>,
}

impl Message for ReportEnvelope {
    const KIND: Kind = Kind::ReportEnvelope;
    const WHAT: &'static str = "status report";
    const MAX_BYTES: usize = <Signed<Report> as Message>::MAX_BYTES + 128;
}

impl ReportEnvelope {
    /// Checks the signature with the enclosed key and the report's sizes.
    /// The caller checks that `node_id` is the key's peer id.
    pub fn verify(&self) -> Result<Report> {
        let report = self.signed.verify(&RoleKeys::single(self.key))?;
        let long = |s: &Option<String>| s.as_ref().is_some_and(|s| s.len() > 512);
        if report.labels.len() > MAX_REPORT_ITEMS
            || report.releases.len() > MAX_REPORT_ITEMS
            || long(&report.reason)
        {
            return Err(Error::invalid(
                Report::WHAT,
                "too many labels or releases, or reason too long",
            ));
        }
        Ok(report)
    }
}

//! What the fuzz targets share: a fixed fleet (keys from constant seeds, so
//! the seed inputs `seeds` writes verify), the instant everything is checked
//! at, and a decoder for every message kind.

use fleetmesh_policy::doc::PolicyDoc;
use fleetmesh_protocol::codec::{self, Message, FORMAT_VERSION, MAGIC};
use fleetmesh_protocol::keys::{Policy, Release, Root, SecretKey};
use fleetmesh_protocol::member::Membership;
use fleetmesh_protocol::mesh::{Announcement, Report, ReportEnvelope, Request, Response};
use fleetmesh_protocol::{Manifest, RoleKeys, Signed, TrustChain, TrustDoc, TrustState, UnixTime};
use std::fmt::Debug;
use std::sync::OnceLock;

/// When the fuzzed documents are checked.
pub const NOW: UnixTime = UnixTime(1_800_000_000);

/// The fleet every target verifies against.
pub struct Fleet {
    /// Root key.
    pub root: SecretKey<Root>,
    /// Release key.
    pub release: SecretKey<Release>,
    /// Policy key.
    pub policy: SecretKey<Policy>,
    /// The one-document chain.
    pub chain: TrustChain,
    /// The trust state it gives.
    pub trust: TrustState,
}

/// The fixed fleet.
pub fn fleet() -> &'static Fleet {
    static FLEET: OnceLock<Fleet> = OnceLock::new();
    FLEET.get_or_init(|| {
        let root = SecretKey::<Root>::from_seed([1; 32]);
        let release = SecretKey::<Release>::from_seed([2; 32]);
        let policy = SecretKey::<Policy>::from_seed([3; 32]);
        let doc = TrustDoc {
            version: 1,
            issued_at: UnixTime(NOW.0 - 1000),
            expires_at: UnixTime(NOW.0 + 1_000_000),
            root: RoleKeys::single(root.public()),
            release: RoleKeys::single(release.public()),
            policy: RoleKeys::single(policy.public()),
        };
        let chain = TrustChain {
            docs: vec![Signed::sign(&doc, &[&root]).expect("the fixture signs")],
        };
        let trust = TrustState::from_chain(RoleKeys::single(root.public()), &chain)
            .expect("the fixture chain verifies");
        Fleet {
            root,
            release,
            policy,
            chain,
            trust,
        }
    })
}

/// `body` behind a valid header of `kind`, so that the fuzzer spends its
/// time in the body decoder rather than rediscovering the magic.
pub fn framed(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![MAGIC[0], MAGIC[1], FORMAT_VERSION, kind];
    out.extend_from_slice(body);
    out
}

/// Decodes `bytes` as `T`; a success must re-encode and decode to the same
/// value (one meaning per accepted input).
pub fn round_trip<T: Message + PartialEq + Debug>(bytes: &[u8]) -> Option<T> {
    let value = codec::decode::<T>(bytes).ok()?;
    let again = codec::encode(&value).expect("a decoded message re-encodes");
    let back = codec::decode::<T>(&again).expect("a re-encoded message decodes");
    assert_eq!(back, value, "decode(encode(x)) != x");
    Some(value)
}

/// Every decoder on `bytes`, with the checks each decoded value gets next.
pub fn decode_all(bytes: &[u8]) {
    let _ = round_trip::<TrustDoc>(bytes);
    let _ = round_trip::<Signed<TrustDoc>>(bytes);
    if let Some(chain) = round_trip::<TrustChain>(bytes) {
        let _ = TrustState::from_chain(fleet().trust_root(), &chain);
    }
    if let Some(m) = round_trip::<Manifest>(bytes) {
        if m.validate().is_ok() {
            let _ = fleetmesh_protocol::mesh::pieces(&m);
        }
    }
    let _ = round_trip::<Signed<Manifest>>(bytes);
    let _ = round_trip::<Announcement>(bytes);
    let _ = round_trip::<Signed<Announcement>>(bytes);
    if let Some(Request::Have(have)) = round_trip::<Request>(bytes) {
        let _ = have.validate();
    }
    let _ = round_trip::<Response>(bytes);
    if let Some(p) = round_trip::<PolicyDoc>(bytes) {
        exercise_policy(&p);
    }
    let _ = round_trip::<Signed<PolicyDoc>>(bytes);
    let _ = round_trip::<Report>(bytes);
    let _ = round_trip::<Signed<Report>>(bytes);
    if let Some(envelope) = round_trip::<ReportEnvelope>(bytes) {
        let _ = envelope.verify();
    }
    if let Some(m) = round_trip::<Membership>(bytes) {
        let _ = m.validate();
    }
    let _ = round_trip::<Signed<Membership>>(bytes);
}

/// What nodes do with a policy: validate it, and if valid, ask it every
/// question a node asks.
pub fn exercise_policy(p: &PolicyDoc) {
    if p.validate().is_err() {
        return;
    }
    let labels = [("site", "a"), ("rack", "r1"), ("node", "n1")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let v = semver::Version::new(1, 2, 3);
    let running = semver::Version::new(1, 0, 0);
    for now in [NOW, p.issued_at, UnixTime(p.expires_at.0.saturating_sub(1))] {
        let _ = p.decide("n1", &labels, &v, Some(&running), now, 600);
        let _ = p.window_open(&labels, now);
        let _ = p.bandwidth_for(&labels, now);
    }
}

impl Fleet {
    /// The provisioned root keys.
    pub fn trust_root(&self) -> RoleKeys<Root> {
        RoleKeys::single(self.root.public())
    }
}

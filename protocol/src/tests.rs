//! Cross-module tests: signed manifests under a trust chain, and the codec
//! against hostile bytes.

use crate::codec::{self, Message};
use crate::keys::{Policy, Release, Root, SecretKey};
use crate::*;
use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

pub(crate) struct Fixture {
    pub(crate) release: SecretKey<Release>,
    pub(crate) policy: SecretKey<Policy>,
    pub(crate) trust: TrustState,
    pub(crate) chain: TrustChain,
}

/// A fleet with one trust document (valid from 0 to 10,000) and its keys.
pub(crate) fn fixture(seed: u64) -> Fixture {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let root = SecretKey::<Root>::generate(&mut rng);
    let release = SecretKey::<Release>::generate(&mut rng);
    let policy = SecretKey::<Policy>::generate(&mut rng);
    let doc = TrustDoc {
        version: 1,
        issued_at: UnixTime(0),
        expires_at: UnixTime(10_000),
        root: RoleKeys::single(root.public()),
        release: RoleKeys::single(release.public()),
        policy: RoleKeys::single(policy.public()),
    };
    let chain = TrustChain {
        docs: vec![Signed::sign(&doc, &[&root]).expect("signs")],
    };
    let trust = TrustState::from_chain(RoleKeys::single(root.public()), &chain).expect("chain");
    Fixture {
        release,
        policy,
        trust,
        chain,
    }
}

fn manifest(chunks: usize) -> Manifest {
    let len = 4096u32;
    Manifest {
        version: semver::Version::new(1, 2, 3),
        channel: "stable".into(),
        platforms: vec!["x86_64-generic".into()],
        image_len: chunks as u64 * u64::from(len),
        image_hash: ImageHash([9; 32]),
        chunking: ChunkParams::for_avg(4096),
        chunks: (0..chunks)
            .map(|i| ChunkRef {
                id: ChunkId([i as u8; 32]),
                offset: i as u64 * u64::from(len),
                len,
            })
            .collect(),
        created_at: UnixTime(100),
        expires_at: UnixTime(5000),
    }
}

#[test]
fn a_signed_manifest_verifies_and_keeps_its_id() {
    let f = fixture(1);
    let signed = Signed::sign(&manifest(3), &[&f.release]).expect("signs");
    let bytes = codec::encode(&signed).expect("encodes");
    let back: Signed<Manifest> = codec::decode(&bytes).expect("decodes");
    let verified = back
        .verify_release(&f.trust, UnixTime(200))
        .expect("verifies");
    assert_eq!(verified.manifest(), &manifest(3));
    assert_eq!(verified.id(), signed.release_id());
    verified.check_platform("x86_64-generic").expect("platform");
    assert!(matches!(
        verified.check_platform("arm64"),
        Err(Error::Incompatible(_))
    ));
}

#[test]
fn wrong_key_expired_and_inconsistent_manifests_are_refused() {
    let f = fixture(1);
    let other = fixture(2);
    let forged = Signed::sign(&manifest(3), &[&other.release]).expect("signs");
    assert!(matches!(
        forged.verify_release(&f.trust, UnixTime(200)),
        Err(Error::BadSignature { .. })
    ));

    let signed = Signed::sign(&manifest(3), &[&f.release]).expect("signs");
    assert!(matches!(
        signed.verify_release(&f.trust, UnixTime(5000)),
        Err(Error::Expired {
            what: "manifest",
            ..
        })
    ));
    assert!(matches!(
        signed.verify_release(&f.trust, UnixTime(10_000)),
        Err(Error::Expired {
            what: "trust document",
            ..
        })
    ));

    let mut gap = manifest(3);
    gap.chunks[1].offset += 1;
    let signed = Signed::sign(&gap, &[&f.release]).expect("signs");
    let err = signed
        .verify_release(&f.trust, UnixTime(200))
        .expect_err("gap");
    assert!(err.to_string().contains("chunk 1 starts at 4097"), "{err}");
}

#[test]
fn a_root_key_cannot_sign_a_manifest() {
    // Same seed bytes in the root role: the signature is domain-separated by
    // role, so it must not pass as the release key's.
    let f = fixture(1);
    let seed_twin = fixture(1);
    let signed = Signed::sign(&manifest(1), &[&seed_twin.release]).expect("signs");
    signed
        .verify_release(&f.trust, UnixTime(200))
        .expect("same key verifies");
    let bytes = codec::encode(&signed).expect("encodes");
    // Re-label the same bytes as a trust document: kind byte differs, refused.
    assert!(codec::decode::<Signed<TrustDoc>>(&bytes).is_err());
}

#[test]
fn codec_refuses_oversize_trailing_and_foreign_input() {
    let f = fixture(1);
    let mut bytes = codec::encode(&f.chain).expect("encodes");
    codec::decode::<TrustChain>(&bytes).expect("round trip");
    bytes.push(0);
    let err = codec::decode::<TrustChain>(&bytes).expect_err("trailing");
    assert!(err.to_string().contains("1 trailing bytes"), "{err}");
    bytes.pop();
    bytes[2] = 9;
    assert!(matches!(
        codec::decode::<TrustChain>(&bytes),
        Err(Error::Incompatible(_))
    ));
    let huge = vec![0u8; TrustDoc::MAX_BYTES + 1];
    let err = codec::decode::<TrustDoc>(&huge).expect_err("oversize");
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    let too_many = manifest(manifest::MAX_CHUNKS + 1);
    assert!(codec::encode(&too_many).is_err() || too_many.validate().is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_flipped_bit_in_a_signed_manifest_is_rejected(bit in any::<usize>()) {
        let f = fixture(1);
        let signed = Signed::sign(&manifest(4), &[&f.release]).expect("signs");
        let mut bytes = codec::encode(&signed).expect("encodes");
        let bit = bit % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        let result = codec::decode::<Signed<Manifest>>(&bytes)
            .and_then(|s| s.verify_release(&f.trust, UnixTime(200)));
        prop_assert!(result.is_err());
    }

    #[test]
    fn any_flipped_bit_in_a_trust_chain_is_rejected(bit in any::<usize>()) {
        let f = fixture(3);
        let root = f.chain.docs[0].verify(&f.trust.clone().current(UnixTime(1)).expect("current").root).expect("ok").root;
        let mut bytes = codec::encode(&f.chain).expect("encodes");
        let bit = bit % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        let result = codec::decode::<TrustChain>(&bytes)
            .and_then(|chain| TrustState::from_chain(root.clone(), &chain));
        prop_assert!(result.is_err());
    }

    #[test]
    fn random_bytes_never_panic_any_decoder(mut bytes in proptest::collection::vec(any::<u8>(), 0..2048), kind in 1u8..=5) {
        // Half the cases get a valid header so the body decoder is exercised.
        if bytes.len() >= 4 && bytes[0] & 1 == 0 {
            bytes[..4].copy_from_slice(&[b'F', b'M', codec::FORMAT_VERSION, kind]);
        }
        let _ = codec::decode::<TrustDoc>(&bytes);
        let _ = codec::decode::<Signed<TrustDoc>>(&bytes);
        let _ = codec::decode::<TrustChain>(&bytes);
        let _ = codec::decode::<Manifest>(&bytes);
        let _ = codec::decode::<Signed<Manifest>>(&bytes);
    }
}

#[test]
fn message_limits_fit_the_largest_valid_documents() {
    // A manifest at the chunk limit must encode within its own limit.
    let m = manifest(manifest::MAX_CHUNKS);
    let bytes = codec::encode(&m).expect("largest manifest encodes");
    assert!(bytes.len() <= Manifest::MAX_BYTES);
}

fn announcement(version: u64, id: u8, expires: u64) -> mesh::Announcement {
    mesh::Announcement {
        release_id: ReleaseId([id; 32]),
        version: semver::Version::new(version, 0, 0),
        channel: "stable".into(),
        platforms: vec!["generic".into()],
        image_len: 1,
        manifest: mesh::ManifestParts::of(&[id]),
        issued_at: UnixTime(100),
        expires_at: UnixTime(expires),
    }
}

#[test]
fn announcements_refuse_forged_old_expired_and_conflicting() {
    use mesh::{Accepted, Announcements};
    let f = fixture(7);
    let now = UnixTime(200);
    let sign = |a: &mesh::Announcement| Signed::sign(a, &[&f.release]).expect("signs");
    let mut known = Announcements::default();
    let v2 = announcement(2, 1, 5000);
    assert_eq!(
        known.accept(&sign(&v2), &f.trust, now).expect("valid"),
        Accepted::New(v2.clone())
    );
    assert_eq!(
        known.accept(&sign(&v2), &f.trust, now).expect("again"),
        Accepted::Known
    );
    let forger = SecretKey::<Release>::from_seed([3; 32]);
    let forged = Signed::sign(&announcement(3, 2, 5000), &[&forger]).expect("signs");
    assert!(matches!(
        known.accept(&forged, &f.trust, now),
        Err(Error::BadSignature { .. })
    ));
    assert!(matches!(
        known.accept(&sign(&announcement(1, 3, 5000)), &f.trust, now),
        Err(Error::VersionRollback { .. })
    ));
    assert!(matches!(
        known.accept(&sign(&announcement(4, 4, 150)), &f.trust, now),
        Err(Error::Expired { .. })
    ));
    assert!(known
        .accept(&sign(&announcement(2, 9, 5000)), &f.trust, now)
        .is_err());
    // None of the refused ones replaced the known release.
    assert_eq!(known.signed(), vec![sign(&v2)]);
    let v3 = announcement(3, 5, 5000);
    assert_eq!(
        known.accept(&sign(&v3), &f.trust, now).expect("newer"),
        Accepted::New(v3)
    );
}

/// A signed manifest is cut into parts that each check on their own, and
/// put back together they are the manifest; the announcement of the
/// largest manifest stays within its limit.
#[test]
fn manifest_parts_check_one_by_one_and_rebuild_the_manifest() {
    use mesh::{ManifestParts, MAX_MANIFEST_PARTS, MIN_MANIFEST_PART};
    let f = fixture(3);
    let signed = Signed::sign(&manifest(20_000), &[&f.release]).expect("signs");
    let bytes = codec::encode(&signed).expect("encodes");
    let parts = ManifestParts::of(&bytes);
    assert_eq!(parts.part_len, MIN_MANIFEST_PART);
    assert_eq!(
        parts.ids.len(),
        bytes.len().div_ceil(MIN_MANIFEST_PART as usize)
    );
    assert!(parts.ids.len() > 2, "{} parts", parts.ids.len());
    let mut rebuilt = Vec::new();
    for i in 0..parts.ids.len() {
        let part = parts.part(&bytes, i).expect("part");
        assert!(parts.check(i, part), "part {i}");
        assert!(
            !parts.check((i + 1) % parts.ids.len(), part),
            "part {i} elsewhere"
        );
        let mut bad = part.to_vec();
        bad[0] ^= 1;
        assert!(!parts.check(i, &bad), "altered part {i}");
        rebuilt.extend_from_slice(part);
    }
    assert!(parts.part(&bytes, parts.ids.len()).is_none());
    assert_eq!(
        codec::decode::<Signed<Manifest>>(&rebuilt).expect("decodes"),
        signed
    );

    // Past 64 parts of the shortest length, parts grow instead.
    let big = vec![7u8; 100 * MIN_MANIFEST_PART as usize];
    let parts = ManifestParts::of(&big);
    assert_eq!(parts.ids.len(), MAX_MANIFEST_PARTS);
    assert!(parts.check(63, parts.part(&big, 63).expect("last")));

    // The largest manifest's announcement encodes within its limit, and
    // one with too many parts does not verify.
    let largest = vec![0u8; <Signed<Manifest> as Message>::MAX_BYTES];
    let mut a = announcement(1, 1, 5000);
    a.manifest = ManifestParts::of(&largest);
    let signed_a = Signed::sign(&a, &[&f.release]).expect("signs");
    codec::encode(&signed_a).expect("largest announcement encodes");
    signed_a
        .verify_announcement(&f.trust, UnixTime(200))
        .expect("verifies");
    a.manifest.ids.push(ChunkId([0; 32]));
    let too_many = Signed::sign(&a, &[&f.release]).expect("signs");
    assert!(too_many
        .verify_announcement(&f.trust, UnixTime(200))
        .is_err());
}

/// Sites rank differently for each part, so the sites that rank highest,
/// which fetch parts from the seed, differ from part to part.
#[test]
fn sites_rank_differently_for_each_part() {
    let release = ReleaseId([5; 32]);
    let sites: Vec<String> = (0..100).map(|i| format!("site-{i}")).collect();
    let top = |part| {
        sites
            .iter()
            .max_by_key(|s| crate::gather::part_rank(&release, s, part))
            .expect("a site")
    };
    let tops: std::collections::BTreeSet<&String> = (0..8).map(top).collect();
    assert!(tops.len() >= 6, "{tops:?}");
    assert_eq!(
        crate::gather::part_rank(&release, "a", 3),
        crate::gather::part_rank(&release, "a", 3)
    );
    assert_ne!(
        crate::gather::part_rank(&release, "a", 3),
        crate::gather::part_rank(&ReleaseId([6; 32]), "a", 3)
    );
}

/// A peer for `PartFetch`: node 0 is the seed, which holds the manifest.
fn part_peer(id: u32, site: &'static str, tag: u64) -> crate::gather::PartPeer<'static, u32> {
    crate::gather::PartPeer {
        id,
        site,
        tag,
        seed: id == 0,
        holder: id == 0,
        fetching: false,
        declined: false,
    }
}

/// Where a node asks for manifest parts, rule by rule: a same-site holder
/// first; else the site's fetching node (the highest tag) asks outside at
/// once and the others wait for it; outside, a holder, else a node in a
/// higher-ranked site for the part, else the seed.
#[test]
fn manifest_parts_come_from_the_site_then_higher_sites_then_the_seed() {
    use crate::gather::{
        part_rank, PartFetch, PartPeer, FIND_SITE, MANIFEST_HINT_WAIT, MANIFEST_PART_WAIT,
        MANIFEST_WAIT, MANIFEST_WAIT_FETCHING,
    };
    use std::time::Duration;
    let release = ReleaseId([0; 32]);
    let peer = part_peer;
    // Seed 0; site a: this node (tag 5) and node 1 (tag 9); site b: nodes
    // 2 (tag 3) and 3 (tag 7), so 3 fetches for b.
    let peers = vec![
        peer(0, "seed", 1),
        peer(1, "a", 9),
        peer(2, "b", 3),
        peer(3, "b", 7),
    ];
    let up = FIND_SITE + Duration::from_secs(60);
    let fetch = |tag: u64, wanted_for: Duration, peers: Vec<PartPeer<'static, u32>>| PartFetch {
        release,
        site: "a",
        tag,
        up,
        wanted_for,
        peers,
        fleet: vec!["a", "b"],
        routes: &[],
    };
    let parts: Vec<usize> = (0..8).collect();
    let by_part = |f: &PartFetch<'_, u32>| -> Vec<u32> {
        let got = f.sources(&parts);
        assert_eq!(got.iter().map(|s| s.1).collect::<Vec<_>>(), parts);
        got.into_iter().map(|s| s.0).collect()
    };
    // Not the site's fetching node: ask node 1, until MANIFEST_WAIT ...
    assert_eq!(by_part(&fetch(5, Duration::ZERO, peers.clone())), [1; 8]);
    let late = fetch(5, MANIFEST_WAIT, peers.clone());
    assert!(by_part(&late).iter().all(|&p| p == 0 || p == 3));
    // ... or while node 1 says it is fetching them, up to
    // MANIFEST_WAIT_FETCHING.
    let mut busy = peers.clone();
    busy[1].fetching = true;
    assert_eq!(by_part(&fetch(5, MANIFEST_WAIT, busy.clone())), [1; 8]);
    let given_up = fetch(5, MANIFEST_WAIT_FETCHING, busy);
    assert!(by_part(&given_up).iter().all(|&p| p == 0 || p == 3));
    // The fetching node: the parts for which b ranks higher from node 3,
    // the others from the seed.
    let want: Vec<u32> = parts
        .iter()
        .map(|&part| {
            if part_rank(&release, "b", part) > part_rank(&release, "a", part) {
                3
            } else {
                0
            }
        })
        .collect();
    assert!(want.contains(&0) && want.contains(&3), "{want:?}");
    assert_eq!(by_part(&fetch(10, Duration::ZERO, peers.clone())), want);
    // From the seed once b has had MANIFEST_PART_WAIT, unless it says it
    // is fetching them.
    assert_eq!(
        by_part(&fetch(10, MANIFEST_PART_WAIT, peers.clone())),
        [0; 8]
    );
    let mut fetching = peers.clone();
    fetching[3].fetching = true;
    assert_eq!(by_part(&fetch(10, MANIFEST_PART_WAIT, fetching)), want);
    // A young node is never its site's fetching node, and its waits count
    // from the end of FIND_SITE.
    let mut young = fetch(10, Duration::from_secs(60), peers.clone());
    young.up = FIND_SITE / 2;
    assert_eq!(young.waited(), Duration::ZERO);
    assert_eq!(by_part(&young), [1; 8]);
    // A holder outside the site beats the ranks; one inside beats all.
    let mut held = peers.clone();
    held[2].holder = true;
    assert_eq!(by_part(&fetch(10, Duration::ZERO, held.clone())), [2; 8]);
    held[1].holder = true;
    assert_eq!(by_part(&fetch(5, Duration::ZERO, held)), [1; 8]);
    // A node that declined (another platform) is nobody's fetching node:
    // with node 1 out, this one (tag 5) fetches for a at once; with node
    // 3 out, node 2 is the one to ask in b; with both of b out, b is not
    // there to climb to.
    let mut other = peers.clone();
    other[1].declined = true;
    assert_eq!(by_part(&fetch(5, Duration::ZERO, other.clone())), want);
    other[3].declined = true;
    let via_2: Vec<u32> = want.iter().map(|&p| if p == 3 { 2 } else { p }).collect();
    assert_eq!(by_part(&fetch(5, Duration::ZERO, other.clone())), via_2);
    other[2].declined = true;
    assert_eq!(by_part(&fetch(5, MANIFEST_HINT_WAIT, other)), [0; 8]);
    // Nobody to ask: no requests.
    assert!(fetch(5, MANIFEST_WAIT, Vec::new())
        .sources(&parts)
        .is_empty());
}

/// A site's fetching node that knows no site above its own for a part,
/// while the fleet has one, waits a moment for its site's nodes to say
/// they reach one, asks the one that does, and the seed if none does. A
/// site it knows itself comes first.
#[test]
fn a_fetching_node_climbs_through_a_site_node_that_reaches_higher() {
    use crate::gather::{part_rank, PartFetch, PartPeer, Route, MANIFEST_HINT_WAIT};
    use std::time::Duration;
    let release = ReleaseId([3; 32]);
    let peer = part_peer;
    // This node (tag 10) fetches for site a; node 1 is in a too. The
    // fleet has sites a, b and c; this node has no peer in b or c.
    let peers = vec![peer(0, "seed", 1), peer(1, "a", 0)];
    let parts: Vec<usize> = (0..16).collect();
    let rank = |site: &str, part: usize| part_rank(&release, site, part);
    let above = |part: usize| rank("b", part).max(rank("c", part)) > rank("a", part);
    assert!(parts.iter().any(|&p| above(p)) && parts.iter().any(|&p| !above(p)));
    let fetch =
        |wanted_for: Duration, routes: &[Route<u32>], peers: Vec<PartPeer<'static, u32>>| {
            PartFetch {
                release,
                site: "a",
                tag: u64::MAX,
                up: Duration::from_secs(60),
                wanted_for,
                peers,
                fleet: vec!["a", "b", "c"],
                routes,
            }
            .sources(&parts)
        };
    let none = Route::NONE;
    // No hint yet: the parts a higher site could bring wait, the rest
    // come from the seed.
    let asked = fetch(Duration::ZERO, &[none; 16], peers.clone());
    let want: Vec<usize> = parts.iter().copied().filter(|&p| !above(p)).collect();
    assert_eq!(asked.iter().map(|a| a.1).collect::<Vec<_>>(), want);
    assert!(asked.iter().all(|a| a.0 == 0));
    // After MANIFEST_HINT_WAIT without a hint: all from the seed.
    let asked = fetch(MANIFEST_HINT_WAIT, &[none; 16], peers.clone());
    assert_eq!(asked.len(), 16);
    assert!(asked.iter().all(|a| a.0 == 0));
    // Node 1 said it reaches b for every part: the parts above a go to
    // node 1, which will take them up.
    let routes: Vec<Route<u32>> = parts
        .iter()
        .map(|&p| Route {
            hint: Some((1, rank("b", p))),
            ..none
        })
        .collect();
    let asked = fetch(MANIFEST_HINT_WAIT, &routes, peers.clone());
    for (from, part) in asked {
        let via_1 = rank("b", part) > rank("a", part);
        assert_eq!(from, if via_1 { 1 } else { 0 }, "part {part}");
    }
    // A peer of its own in c: the parts c ranks above a go there, however
    // high node 1 reaches; the hint serves only the rest.
    let mut with_c = peers.clone();
    with_c.push(peer(2, "c", 4));
    for (from, part) in fetch(Duration::ZERO, &routes, with_c) {
        let want = if rank("c", part) > rank("a", part) {
            2
        } else if rank("b", part) > rank("a", part) {
            1
        } else {
            0
        };
        assert_eq!(from, want, "part {part}");
    }
}

#[test]
fn exchange_messages_round_trip_and_check_have_maps() {
    let have = mesh::Have {
        release: ReleaseId([1; 32]),
        pieces: 10,
        full: Some(vec![0xff, 0x03]),
        added: vec![9],
    };
    have.validate().expect("valid");
    let req = mesh::Request::Have(have.clone());
    let bytes = codec::encode(&req).expect("encodes");
    assert_eq!(
        codec::decode::<mesh::Request>(&bytes).expect("decodes"),
        req
    );
    let bad_len = mesh::Have {
        full: Some(vec![0xff]),
        ..have.clone()
    };
    assert!(bad_len.validate().is_err());
    let out_of_range = mesh::Have {
        added: vec![10],
        ..have
    };
    assert!(out_of_range.validate().is_err());
    let resp = mesh::Response::Chunks(vec![Some(vec![1, 2, 3]), None]);
    let bytes = codec::encode(&resp).expect("encodes");
    assert_eq!(
        codec::decode::<mesh::Response>(&bytes).expect("decodes"),
        resp
    );
    assert!(
        codec::decode::<mesh::Request>(&bytes).is_err(),
        "kind is checked"
    );
}

/// Have-updates and chunk requests carry ascending piece indices as
/// distances: small, one encoding per list, and nothing else decodes.
#[test]
fn piece_lists_go_as_ascending_distances() {
    let pieces: Vec<u32> = (0..500).map(|i| 70_000 + i * 37).collect();
    let req = mesh::Request::Chunks {
        release: ReleaseId([2; 32]),
        pieces: pieces.clone(),
    };
    let bytes = codec::encode(&req).expect("encodes");
    assert!(bytes.len() < 600, "{} bytes for 500 pieces", bytes.len());
    assert_eq!(
        codec::decode::<mesh::Request>(&bytes).expect("decodes"),
        req
    );
    for bad in [vec![5, 5], vec![6, 5]] {
        let req = mesh::Request::Chunks {
            release: ReleaseId([2; 32]),
            pieces: bad.clone(),
        };
        assert!(codec::encode(&req).is_err(), "{bad:?} encoded");
    }
    // Hand-made distances: a repeat (a zero distance) and an overflow.
    let have = |added: Vec<u32>| mesh::Have {
        release: ReleaseId([1; 32]),
        pieces: 10,
        full: None,
        added,
    };
    let good = codec::encode(&mesh::Request::Have(have(vec![3, 4]))).expect("encodes");
    let tail = good.len() - 2;
    assert_eq!(&good[tail..], &[3, 1], "written as distances");
    let mut repeat = good.clone();
    repeat[tail + 1] = 0;
    assert!(
        codec::decode::<mesh::Request>(&repeat).is_err(),
        "a repeat decoded"
    );
    let big = codec::encode(&mesh::Request::Have(have(vec![u32::MAX]))).expect("encodes");
    // ... [1 entry][0xfc, u32::MAX] becomes [2 entries][u32::MAX][u32::MAX].
    let max = &big[big.len() - 5..];
    assert_eq!(big[big.len() - 6], 1);
    let mut overflow = big[..big.len() - 6].to_vec();
    overflow.push(2);
    overflow.extend_from_slice(max);
    overflow.extend_from_slice(max);
    // The control: [2 entries][0][u32::MAX] is pieces 0 and u32::MAX.
    let mut fine = big[..big.len() - 6].to_vec();
    fine.extend_from_slice(&[2, 0]);
    fine.extend_from_slice(max);
    assert!(
        codec::decode::<mesh::Request>(&fine).is_ok(),
        "the control decodes"
    );
    assert!(
        codec::decode::<mesh::Request>(&overflow).is_err(),
        "an overflow decoded"
    );
}

/// Fast-forward recovery after a key rotation (TUF): the release key is
/// compromised and the root rotates it away. A node holding only the first
/// trust document takes the newer chain from anyone and walks it from its
/// root key; from then on it trusts the new key and refuses what the old
/// one signs, announcements included. It cannot be walked back, and a
/// chain extended by anyone but the root is refused.
#[test]
fn fast_forward_after_key_rotation_trusts_the_new_key_and_refuses_the_old() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let root = SecretKey::<Root>::generate(&mut rng);
    let old = SecretKey::<Release>::generate(&mut rng);
    let new = SecretKey::<Release>::generate(&mut rng);
    let policy = SecretKey::<Policy>::generate(&mut rng);
    let doc = |version, release: &SecretKey<Release>, root_key: &SecretKey<Root>| TrustDoc {
        version,
        issued_at: UnixTime(0),
        expires_at: UnixTime(10_000),
        root: RoleKeys::single(root_key.public()),
        release: RoleKeys::single(release.public()),
        policy: RoleKeys::single(policy.public()),
    };
    let anchor = RoleKeys::single(root.public());
    let v1 = Signed::sign(&doc(1, &old, &root), &[&root]).expect("signs");
    let v2 = Signed::sign(&doc(2, &new, &root), &[&root]).expect("signs");
    let now = UnixTime(200);
    let by_old = Signed::sign(&manifest(2), &[&old]).expect("signs");
    let by_new = Signed::sign(&manifest(2), &[&new]).expect("signs");
    let stale = TrustState::from_chain(
        anchor.clone(),
        &TrustChain {
            docs: vec![v1.clone()],
        },
    )
    .expect("first chain");
    by_old
        .verify_release(&stale, now)
        .expect("the old key is trusted before");

    // Whoever holds the old release key cannot extend the chain itself.
    let usurper = SecretKey::<Root>::generate(&mut rng);
    let forged = Signed::sign(&doc(2, &old, &usurper), &[&usurper]).expect("signs");
    assert!(matches!(
        TrustState::from_chain(
            anchor.clone(),
            &TrustChain {
                docs: vec![v1.clone(), forged]
            }
        ),
        Err(Error::BadSignature { .. })
    ));

    let mut node = TrustState::from_chain(
        anchor,
        &TrustChain {
            docs: vec![v1.clone(), v2],
        },
    )
    .expect("fast-forward");
    assert_eq!(node.version(), 2);
    by_new
        .verify_release(&node, now)
        .expect("the new key is trusted");
    assert!(matches!(
        by_old.verify_release(&node, now),
        Err(Error::BadSignature { .. })
    ));
    let announced = Signed::sign(&announcement(9, 1, 5000), &[&old]).expect("signs");
    assert!(mesh::Announcements::default()
        .accept(&announced, &node, now)
        .is_err());
    assert!(matches!(
        node.advance(&v1),
        Err(Error::VersionRollback { .. })
    ));
}

/// Mix and match: parts of one release cannot stand in for another's. A
/// manifest fetched for one release id must hash to it (the id covers the
/// whole signed chunk list), and a chunk is taken only for the id its
/// bytes hash to.
#[test]
fn mix_and_match_of_two_releases_is_refused() {
    let f = fixture(12);
    let a = Signed::sign(&manifest(3), &[&f.release]).expect("signs");
    let mut other = manifest(3);
    other.chunks[1].id = ChunkId([0xee; 32]);
    let b = Signed::sign(&other, &[&f.release]).expect("signs");
    assert_ne!(a.release_id(), b.release_id(), "one id for two chunk lists");
    let raw_a = chunk::encode_chunk(b"chunk of release a", 3);
    let raw_b = chunk::encode_chunk(b"chunk of release b", 3);
    let id_a = ChunkId::of(b"chunk of release a");
    chunk::decode_chunk(&raw_a, &id_a).expect("its own chunk");
    assert!(matches!(
        chunk::decode_chunk(&raw_b, &id_a),
        Err(Error::ChunkMismatch { .. })
    ));
}

/// Replayed status reports: a node's signed report, recorded and replayed
/// later, is not taken again; neither is an older one, one older than
/// REPORT_MAX_AGE_SECS (the seed restarted and holds nothing), or one from
/// a clock far ahead.
#[test]
fn replayed_and_stale_status_reports_are_ignored() {
    use mesh::{judge_report, Report, ReportVerdict, REPORT_MAX_AGE_SECS};
    let report = |at: u64, state: &str| Report {
        node_id: "n1".into(),
        at: UnixTime(at),
        labels: Default::default(),
        booted_version: Some("1.0.0".into()),
        slot: None,
        state: state.into(),
        target_version: None,
        reason: None,
        releases: vec![],
    };
    let now = UnixTime(10_000);
    let committed = report(9_990, "committed");
    let later = report(9_995, "rolled_back");
    assert_eq!(judge_report(None, &committed, now), ReportVerdict::Newer);
    assert_eq!(
        judge_report(Some(&committed), &later, now),
        ReportVerdict::Newer
    );
    // The attacker replays the older "committed" after the rollback.
    assert_eq!(
        judge_report(Some(&later), &committed, now),
        ReportVerdict::Replay
    );
    assert_eq!(
        judge_report(Some(&later), &later, now),
        ReportVerdict::Replay
    );
    // Same second, new state: taken.
    let same_second = report(9_995, "failed");
    assert_eq!(
        judge_report(Some(&later), &same_second, now),
        ReportVerdict::Newer
    );
    let old = report(now.0 - REPORT_MAX_AGE_SECS - 1, "committed");
    assert_eq!(judge_report(None, &old, now), ReportVerdict::Stale);
    assert_eq!(
        judge_report(None, &report(now.0 + 3600, "committed"), now),
        ReportVerdict::Ahead
    );
}

/// Unchanged reports: every 15 s in a small fleet; in a big one the whole
/// fleet sends about FLEET_REPORTS_PER_SEC, so each node receives that many
/// whatever the fleet's size.
#[test]
fn unchanged_reports_thin_out_as_the_fleet_grows() {
    use mesh::{report_every_secs, FLEET_REPORTS_PER_SEC, REPORT_EVERY_MIN_SECS};
    assert_eq!(report_every_secs(0), REPORT_EVERY_MIN_SECS);
    assert_eq!(report_every_secs(7), REPORT_EVERY_MIN_SECS);
    assert_eq!(report_every_secs(30), 60);
    for nodes in [30, 1_000, 10_000, 100_000] {
        let fleet_rate = nodes as f64 / report_every_secs(nodes) as f64;
        assert!(
            fleet_rate <= FLEET_REPORTS_PER_SEC && fleet_rate > 0.99 * FLEET_REPORTS_PER_SEC,
            "{nodes} nodes send {fleet_rate} reports a second"
        );
    }
}

//! Writes seed inputs for every target to `seeds/<target>/`: validly
//! encoded and signed documents of the fixed fleet, so the fuzzer starts
//! past the signatures and mutates real structure.

use fleetmesh_fuzz::{fleet, NOW};
use fleetmesh_policy::doc::{BandwidthDef, Pin, PolicyDoc, WindowDef};
use fleetmesh_policy::group::Group;
use fleetmesh_policy::rollout::{Rollout, RolloutState, Wave, WaveTarget};
use fleetmesh_protocol::codec::{self, Message, HEADER_LEN};
use fleetmesh_protocol::keys::{Node, SecretKey};
use fleetmesh_protocol::member::{Membership, Revocation};
use fleetmesh_protocol::mesh::{
    Announcement, Have, Hello, ManifestParts, Report, ReportEnvelope, Request, Response,
};
use fleetmesh_protocol::{
    chunk, ChunkId, ChunkParams, ChunkRef, ImageHash, Manifest, Signed, UnixTime,
};
use std::path::Path;

fn body<T: Message>(value: &T) -> Vec<u8> {
    codec::encode(value).expect("encodes")[HEADER_LEN..].to_vec()
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn main() {
    let f = fleet();
    let data: Vec<Vec<u8>> = vec![
        vec![7; 3000],
        (0..5000u32).map(|i| (i % 251) as u8).collect(),
    ];
    let mut offset = 0;
    let chunks: Vec<ChunkRef> = data
        .iter()
        .map(|d| {
            let c = ChunkRef {
                id: ChunkId::of(d),
                offset,
                len: d.len() as u32,
            };
            offset += d.len() as u64;
            c
        })
        .collect();
    let manifest = Manifest {
        version: semver::Version::new(1, 2, 3),
        channel: "stable".into(),
        platforms: vec!["generic".into()],
        image_len: offset,
        image_hash: ImageHash::of(&data.concat()),
        chunking: ChunkParams::for_avg(4096),
        chunks,
        created_at: UnixTime(NOW.0 - 10),
        expires_at: UnixTime(NOW.0 + 100_000),
    };
    let signed_manifest = Signed::sign(&manifest, &[&f.release]).expect("signs");
    let id = signed_manifest.release_id();
    let announcement = Signed::sign(
        &Announcement {
            release_id: id,
            version: manifest.version.clone(),
            channel: manifest.channel.clone(),
            platforms: manifest.platforms.clone(),
            image_len: manifest.image_len,
            manifest: ManifestParts::of(&codec::encode(&signed_manifest).expect("encodes")),
            issued_at: UnixTime(NOW.0 - 5),
            expires_at: manifest.expires_at,
        },
        &[&f.release],
    )
    .expect("signs");
    let node = SecretKey::<Node>::from_seed([4; 32]);
    let membership = Signed::sign(
        &Membership {
            node: node.public(),
            site: "a".into(),
            labels: [("rack".to_owned(), "r1".to_owned())].into(),
            seed: false,
            issued_at: UnixTime(NOW.0 - 100),
            expires_at: UnixTime(NOW.0 + 100_000),
        },
        &[&f.policy],
    )
    .expect("signs");
    let policy = PolicyDoc {
        version: 2,
        issued_at: UnixTime(NOW.0 - 100),
        expires_at: UnixTime(NOW.0 + 100_000),
        groups: vec![Group {
            name: "racks".into(),
            selector: [("rack".to_owned(), "r1".to_owned())].into(),
        }],
        windows: vec![WindowDef {
            name: "nights".into(),
            groups: vec!["racks".into()],
            tz: "Europe/Berlin".into(),
            cron: Some("0 2 * * 1-5".into()),
            duration_secs: 7200,
            start: None,
            end: None,
        }],
        bandwidth: vec![BandwidthDef {
            groups: vec![],
            tz: "UTC".into(),
            cron: "0 8 * * *".into(),
            duration_secs: 36_000,
            download_bps: 1 << 20,
            upload_bps: 1 << 19,
        }],
        rollouts: vec![Rollout {
            version: semver::Version::new(1, 2, 3),
            state: RolloutState::Running,
            wave: 0,
            wave_opened_at: UnixTime(NOW.0 - 50),
            waves: vec![
                Wave {
                    name: "canary".into(),
                    target: WaveTarget::Percent(10),
                    soak_secs: 600,
                    success_pct: 90,
                    error_pct: 10,
                },
                Wave {
                    name: "racks".into(),
                    target: WaveTarget::Group("racks".into()),
                    soak_secs: 0,
                    success_pct: 95,
                    error_pct: 5,
                },
            ],
        }],
        pins: vec![],
        rollback: vec![Pin {
            group: "racks".into(),
            version: semver::Version::new(1, 0, 0),
        }],
        revoked: vec![Revocation {
            node: node.public(),
            at: UnixTime(NOW.0 - 1000),
            until: UnixTime(NOW.0 + 1000),
        }],
    };
    let signed_policy = Signed::sign(&policy, &[&f.policy]).expect("signs");
    let report = Report {
        node_id: "n1".into(),
        at: NOW,
        labels: [("site".to_owned(), "a".to_owned())].into(),
        booted_version: Some("1.0.0".into()),
        slot: Some("a".into()),
        state: "idle".into(),
        target_version: None,
        reason: None,
        releases: vec![],
    };
    let envelope = ReportEnvelope {
        key: node.public(),
        signed: Signed::sign(&report, &[&node]).expect("signs"),
    };
    let hello = Request::Hello(Hello {
        trust: f.chain.clone(),
        announcements: vec![announcement.clone()],
        policy: codec::encode(&signed_policy).expect("encodes"),
        member: Some(membership.clone()),
    });
    let have = Request::Have(Have {
        release: id,
        pieces: 2,
        full: Some(vec![0b11]),
        added: vec![1],
    });
    let part = Request::ManifestPart {
        release: id,
        part: 0,
        reach: u64::MAX / 3,
    };
    let part_bytes = codec::encode(&signed_manifest).expect("encodes");
    let part_response = Response::ManifestPart(Some(part_bytes[..64].to_vec()));

    // The seeds must verify, or the verify targets start at a refusal.
    signed_manifest
        .verify_release(&f.trust, NOW)
        .expect("the manifest seed verifies");
    announcement
        .verify_announcement(&f.trust, NOW)
        .expect("the announcement seed verifies");
    let p = fleetmesh_policy::doc::verify_policy(&signed_policy, &f.trust, None, NOW)
        .expect("the policy seed verifies");
    assert!(membership
        .verify_member(&f.trust, &node.public(), &[], NOW)
        .is_ok());
    assert!(
        membership
            .verify_member(&f.trust, &node.public(), &p.revoked, NOW)
            .is_ok(),
        "revoked before it was issued: a re-enrollment, valid"
    );
    envelope.verify().expect("the report seed verifies");

    use fleetmesh_protocol::codec::Kind;
    for (kind, bytes, name) in [
        (Kind::TrustChain, body(&f.chain), "chain"),
        (Kind::SignedManifest, body(&signed_manifest), "manifest"),
        (
            Kind::SignedAnnouncement,
            body(&announcement),
            "announcement",
        ),
        (Kind::Request, body(&hello), "hello"),
        (Kind::Request, body(&have), "have"),
        (Kind::Request, body(&part), "manifest-part"),
        (
            Kind::Response,
            body(&part_response),
            "manifest-part-response",
        ),
        (Kind::Policy, body(&policy), "policy"),
        (Kind::SignedPolicy, body(&signed_policy), "signed-policy"),
        (Kind::ReportEnvelope, body(&envelope), "report"),
        (Kind::SignedMembership, body(&membership), "membership"),
    ] {
        let mut input = vec![kind as u8];
        input.extend_from_slice(&bytes);
        write("decode", name, &input);
    }
    write("verify_manifest", "manifest", &body(&signed_manifest));
    write("verify_manifest", "announcement", &body(&announcement));
    write("verify_policy", "policy", &body(&signed_policy));
    write("verify_policy", "membership", &body(&membership));
    write("verify_trust", "chain", &body(&f.chain));

    // A bundle as `fleetmesh-seed export` writes it (docs/protocol.md).
    let mut bundle = b"FLEETMESH-BUNDLE1\n".to_vec();
    for section in [
        codec::encode(&f.chain).expect("encodes"),
        codec::encode(&signed_manifest).expect("encodes"),
        codec::encode(&announcement).expect("encodes"),
        Vec::new(),
    ] {
        bundle.extend_from_slice(&(section.len() as u32).to_le_bytes());
        bundle.extend_from_slice(&section);
    }
    bundle.extend_from_slice(&(data.len() as u64).to_le_bytes());
    for d in &data {
        let encoded = chunk::encode_chunk(d, 3);
        bundle.extend_from_slice(&ChunkId::of(d).0);
        bundle.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        bundle.extend_from_slice(&encoded);
    }
    let hash = *blake3::hash(&bundle).as_bytes();
    bundle.extend_from_slice(&hash);
    write("bundle", "release", &bundle);
}

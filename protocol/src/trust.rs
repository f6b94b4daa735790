//! The trust document and its chain.
//!
//! A node is provisioned with the root public key(s) only. The root signs a
//! trust document that delegates the release and policy roles (keys and
//! thresholds) and names the root keys for the next document. A later
//! document is accepted only if the current root keys signed it (and its own
//! root keys too, proving they are held) and its version is higher. The chain
//! may pass through expired documents; only the newest must be unexpired for
//! anything signed under it to be trusted.

use crate::codec::{Kind, Message};
use crate::keys::{Policy, Release, Root};
use crate::signed::{RoleKeys, Signed, SignedBody};
use crate::time::UnixTime;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Longest chain of trust documents a node will walk.
pub const MAX_CHAIN: usize = 256;

/// Who may sign what, as decided by the root.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrustDoc {
    /// Goes up by at least one with every document.
    pub version: u64,
    /// When it was signed.
    pub issued_at: UnixTime,
    /// After this, nothing is trusted under it.
    pub expires_at: UnixTime,
    /// Root keys that must sign the next document.
    pub root: RoleKeys<Root>,
    /// Keys that sign release manifests.
    pub release: RoleKeys<Release>,
    /// Keys that sign policies.
    pub policy: RoleKeys<Policy>,
}

impl Message for TrustDoc {
    const KIND: Kind = Kind::TrustDoc;
    const WHAT: &'static str = "trust document";
    const MAX_BYTES: usize = 16 << 10;
}

impl SignedBody for TrustDoc {
    type Role = Root;
    const SIGNED_KIND: Kind = Kind::SignedTrustDoc;
}

impl TrustDoc {
    fn validate(&self) -> Result<()> {
        self.root.validate()?;
        self.release.validate()?;
        self.policy.validate()?;
        if self.expires_at <= self.issued_at {
            return Err(Error::invalid(Self::WHAT, "expires before it is issued"));
        }
        Ok(())
    }
}

/// Every signed trust document from the first, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrustChain {
    /// The documents.
    pub docs: Vec<Signed<TrustDoc>>,
}

impl Message for TrustChain {
    const KIND: Kind = Kind::TrustChain;
    const WHAT: &'static str = "trust chain";
    const MAX_BYTES: usize = MAX_CHAIN * (TrustDoc::MAX_BYTES + 4096);
}

/// What a party currently trusts: the root keys and the newest verified
/// trust document.
#[derive(Clone, Debug)]
pub struct TrustState {
    root: RoleKeys<Root>,
    current: Option<TrustDoc>,
}

impl TrustState {
    /// Trust in the provisioned root keys only.
    pub fn anchored(root: RoleKeys<Root>) -> Result<Self> {
        root.validate()?;
        Ok(TrustState {
            root,
            current: None,
        })
    }

    /// Anchors at `root` and walks `chain`.
    pub fn from_chain(root: RoleKeys<Root>, chain: &TrustChain) -> Result<Self> {
        if chain.docs.len() > MAX_CHAIN {
            return Err(Error::invalid(
                TrustChain::WHAT,
                "longer than 256 documents",
            ));
        }
        let mut state = Self::anchored(root)?;
        for doc in &chain.docs {
            state.advance(doc)?;
        }
        Ok(state)
    }

    /// Accepts the next trust document: signed by the current root keys and
    /// by its own root keys, with a higher version.
    pub fn advance(&mut self, signed: &Signed<TrustDoc>) -> Result<()> {
        let doc = signed.verify(&self.root)?;
        signed.verify(&doc.root)?;
        doc.validate()?;
        if let Some(current) = &self.current {
            if doc.version <= current.version {
                return Err(Error::VersionRollback {
                    what: TrustDoc::WHAT,
                    trusted: current.version.to_string(),
                    offered: doc.version.to_string(),
                });
            }
        }
        self.root = doc.root.clone();
        self.current = Some(doc);
        Ok(())
    }

    /// The newest trust document, if it has not expired at `now`.
    pub fn current(&self, now: UnixTime) -> Result<&TrustDoc> {
        let doc = self.current.as_ref().ok_or(Error::NoTrust)?;
        if now >= doc.expires_at {
            return Err(Error::Expired {
                what: TrustDoc::WHAT,
                expired_at: doc.expires_at,
                now,
            });
        }
        Ok(doc)
    }

    /// The version of the newest accepted document, 0 if none.
    pub fn version(&self) -> u64 {
        self.current.as_ref().map_or(0, |d| d.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    struct Keys {
        root: SecretKey<Root>,
        release: SecretKey<Release>,
        policy: SecretKey<Policy>,
    }

    fn keys(seed: u64) -> Keys {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Keys {
            root: SecretKey::generate(&mut rng),
            release: SecretKey::generate(&mut rng),
            policy: SecretKey::generate(&mut rng),
        }
    }

    fn doc(version: u64, next: &Keys) -> TrustDoc {
        TrustDoc {
            version,
            issued_at: UnixTime(100),
            expires_at: UnixTime(1000),
            root: RoleKeys::single(next.root.public()),
            release: RoleKeys::single(next.release.public()),
            policy: RoleKeys::single(next.policy.public()),
        }
    }

    #[test]
    fn chain_rotates_root_only_with_both_signatures() {
        let (a, b) = (keys(1), keys(2));
        let mut state = TrustState::anchored(RoleKeys::single(a.root.public())).expect("valid");
        state
            .advance(&Signed::sign(&doc(1, &a), &[&a.root]).expect("signs"))
            .expect("first doc");
        // Rotation to b's root signed by a only: b never proved it holds the key.
        let half = Signed::sign(&doc(2, &b), &[&a.root]).expect("signs");
        assert!(matches!(
            state.advance(&half),
            Err(Error::BadSignature { .. })
        ));
        // Signed by b only: not authorised by the current root.
        let usurp = Signed::sign(&doc(2, &b), &[&b.root]).expect("signs");
        assert!(matches!(
            state.advance(&usurp),
            Err(Error::BadSignature { .. })
        ));
        let full = Signed::sign(&doc(2, &b), &[&a.root, &b.root]).expect("signs");
        state.advance(&full).expect("rotation");
        assert_eq!(state.version(), 2);
        let current = state.current(UnixTime(500)).expect("not expired");
        assert_eq!(current.release.keys[0], b.release.public());
    }

    #[test]
    fn versions_only_go_up() {
        let a = keys(1);
        let mut state = TrustState::anchored(RoleKeys::single(a.root.public())).expect("valid");
        state
            .advance(&Signed::sign(&doc(5, &a), &[&a.root]).expect("signs"))
            .expect("first doc");
        for v in [5, 4] {
            let old = Signed::sign(&doc(v, &a), &[&a.root]).expect("signs");
            assert!(matches!(
                state.advance(&old),
                Err(Error::VersionRollback { .. })
            ));
        }
    }

    #[test]
    fn expired_trust_doc_is_not_current() {
        let a = keys(1);
        let anchored = TrustState::anchored(RoleKeys::single(a.root.public())).expect("valid");
        assert!(matches!(anchored.current(UnixTime(0)), Err(Error::NoTrust)));
        let chain = TrustChain {
            docs: vec![Signed::sign(&doc(1, &a), &[&a.root]).expect("signs")],
        };
        let state =
            TrustState::from_chain(RoleKeys::single(a.root.public()), &chain).expect("chain");
        assert!(state.current(UnixTime(999)).is_ok());
        assert!(matches!(
            state.current(UnixTime(1000)),
            Err(Error::Expired { .. })
        ));
    }

    #[test]
    fn threshold_counts_distinct_valid_keys() {
        let (a, b, c) = (keys(1), keys(2), keys(3));
        let root = RoleKeys {
            keys: vec![a.root.public(), b.root.public(), c.root.public()],
            threshold: 2,
        };
        let body = TrustDoc {
            root: root.clone(),
            ..doc(1, &a)
        };
        let mut state = TrustState::anchored(root.clone()).expect("valid");
        let one = Signed::sign(&body, &[&a.root]).expect("signs");
        let err = state.advance(&one).expect_err("below threshold");
        assert!(
            err.to_string()
                .contains("1 valid root signature(s), 2 required"),
            "{err}"
        );
        let twice = Signed::sign(&body, &[&a.root, &a.root]).expect("signs");
        assert!(state.advance(&twice).is_err());
        let two = Signed::sign(&body, &[&a.root, &c.root]).expect("signs");
        state.advance(&two).expect("threshold met");
    }

    #[test]
    fn role_keys_as_text_round_trip_and_bad_text_is_refused() {
        let (a, b) = (keys(1), keys(2));
        let one = RoleKeys::single(a.root.public());
        assert_eq!(one.to_string(), a.root.public().to_string());
        let two = RoleKeys {
            keys: vec![a.root.public(), b.root.public()],
            threshold: 2,
        };
        let text = two.to_string();
        assert!(text.starts_with("2:") && text.contains(','), "{text}");
        for keys in [one, two] {
            let parsed: RoleKeys<Root> = keys.to_string().parse().expect("parses");
            assert_eq!(parsed, keys);
        }
        let (x, y) = (a.root.public(), b.root.public());
        for (bad, why) in [
            (format!("3:{x},{y}"), "threshold 3"),
            (format!("0:{x}"), "threshold 0"),
            (format!("two:{x},{y}"), "not a number"),
            (format!("1:{x},{x}"), "repeat"),
            ("1:abc".to_owned(), "64 hex digits"),
        ] {
            let err = bad.parse::<RoleKeys<Root>>().expect_err(&bad);
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }
}

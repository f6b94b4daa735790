//! Fleet membership: who may take part in the mesh.
//!
//! The seed enrolls a node by signing a [`Membership`] credential with the
//! policy key: the node's key, its site and labels, and an expiry. A node
//! presents its credential in its hello; peers exchange chunks and gossip
//! only with peers whose credential verifies against the current trust
//! document, names the key the connection is authenticated with, has not
//! expired and has not been revoked. Revocations travel in the signed
//! policy (see [`Revocation`]), so they reach every node the way policy
//! does and cannot be rolled back.

use crate::codec::{Kind, Message};
use crate::keys::{Node, Policy, PublicKey};
use crate::manifest::is_valid_name;
use crate::mesh::MAX_REPORT_ITEMS;
use crate::signed::{Signed, SignedBody};
use crate::time::UnixTime;
use crate::trust::TrustState;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest label value in a credential.
pub const MAX_LABEL_LEN: usize = 64;

/// A seed-signed statement that a node key belongs to the fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The node's key (its libp2p identity).
    pub node: PublicKey<Node>,
    /// The site it belongs to: peers trust this, not what the node says.
    pub site: String,
    /// Labels the seed assigned.
    pub labels: BTreeMap<String, String>,
    /// True for the seed itself.
    pub seed: bool,
    /// When it was signed.
    pub issued_at: UnixTime,
    /// After this, peers refuse it.
    pub expires_at: UnixTime,
}

impl Message for Membership {
    const KIND: Kind = Kind::Membership;
    const WHAT: &'static str = "membership credential";
    const MAX_BYTES: usize = 8 << 10;
}

impl SignedBody for Membership {
    type Role = Policy;
    const SIGNED_KIND: Kind = Kind::SignedMembership;
}

/// A revoked node: every credential issued to `node` at or before `at` is
/// void. A credential issued later (re-enrollment) is not affected. The
/// entry can be dropped after `until`, when every credential it voids has
/// expired anyway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The node's key.
    pub node: PublicKey<Node>,
    /// Credentials issued at or before this are revoked.
    pub at: UnixTime,
    /// The latest expiry of the credentials it voids.
    pub until: UnixTime,
}

impl Membership {
    /// Checks names, label counts and the validity period.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::invalid(Self::WHAT, reason));
        if !is_valid_name(&self.site) {
            return bad(format!("site {:?} is not a valid name", self.site));
        }
        if self.labels.len() > MAX_REPORT_ITEMS {
            return bad(format!("more than {MAX_REPORT_ITEMS} labels"));
        }
        if let Some((k, _)) = self
            .labels
            .iter()
            .find(|(k, v)| !is_valid_name(k) || v.is_empty() || v.len() > MAX_LABEL_LEN)
        {
            return bad(format!(
                "label {k:?}: the key must be a valid name and the value 1-{MAX_LABEL_LEN} bytes"
            ));
        }
        if self.expires_at <= self.issued_at {
            return bad("expires before it is issued".into());
        }
        Ok(())
    }

    /// True if `revoked` voids this credential.
    pub fn is_revoked(&self, revoked: &[Revocation]) -> bool {
        revoked
            .iter()
            .any(|r| r.node == self.node && self.issued_at <= r.at)
    }
}

impl Signed<Membership> {
    /// Verifies a credential presented by the holder of `node`: signed by
    /// the policy role of the current trust document, for this key, valid
    /// at `now` and not revoked.
    pub fn verify_member(
        &self,
        trust: &TrustState,
        node: &PublicKey<Node>,
        revoked: &[Revocation],
        now: UnixTime,
    ) -> Result<Membership> {
        let doc = trust.current(now)?;
        let m = self.verify(&doc.policy)?;
        m.validate()?;
        if m.node != *node {
            return Err(Error::invalid(
                Membership::WHAT,
                format!(
                    "issued to node key {}, presented by {}",
                    m.node.id(),
                    node.id()
                ),
            ));
        }
        if now < m.issued_at {
            return Err(Error::invalid(
                Membership::WHAT,
                format!("issued in the future ({}, now {now})", m.issued_at),
            ));
        }
        if now >= m.expires_at {
            return Err(Error::Expired {
                what: Membership::WHAT,
                expired_at: m.expires_at,
                now,
            });
        }
        if m.is_revoked(revoked) {
            return Err(Error::invalid(Membership::WHAT, "revoked"));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::keys::SecretKey;
    use crate::tests::fixture as fleet;

    fn credential(node: PublicKey<Node>, issued: u64) -> Membership {
        Membership {
            node,
            site: "plant-1".into(),
            labels: BTreeMap::from([("rack".into(), "r7".into())]),
            seed: false,
            issued_at: UnixTime(issued),
            expires_at: UnixTime(5_000),
        }
    }

    #[test]
    fn a_credential_verifies_only_for_its_key_while_valid_and_unrevoked() {
        let f = fleet(1);
        let me = SecretKey::<Node>::from_seed([9; 32]).public();
        let other = SecretKey::<Node>::from_seed([8; 32]).public();
        let signed = Signed::sign(&credential(me, 100), &[&f.policy]).expect("signs");
        let bytes = codec::encode(&signed).expect("encodes");
        let signed: Signed<Membership> = codec::decode(&bytes).expect("decodes");
        let now = UnixTime(200);
        assert_eq!(
            signed
                .verify_member(&f.trust, &me, &[], now)
                .expect("valid")
                .site,
            "plant-1"
        );
        let err = signed
            .verify_member(&f.trust, &other, &[], now)
            .expect_err("stolen");
        assert!(err.to_string().contains("presented by"), "{err}");
        assert!(matches!(
            signed.verify_member(&f.trust, &me, &[], UnixTime(5_000)),
            Err(Error::Expired { .. })
        ));
        assert!(signed
            .verify_member(&f.trust, &me, &[], UnixTime(50))
            .is_err());
        let revoked = [Revocation {
            node: me,
            at: UnixTime(150),
            until: UnixTime(5_000),
        }];
        let err = signed
            .verify_member(&f.trust, &me, &revoked, now)
            .expect_err("revoked");
        assert!(err.to_string().contains("revoked"), "{err}");
        // Re-enrolled after the revocation: the new credential is valid.
        let again = Signed::sign(&credential(me, 160), &[&f.policy]).expect("signs");
        again
            .verify_member(&f.trust, &me, &revoked, now)
            .expect("re-enrolled");
    }

    #[test]
    fn a_credential_needs_the_policy_key() {
        let f = fleet(1);
        let me = SecretKey::<Node>::from_seed([9; 32]).public();
        // A node cannot enroll itself, and the release key is not the policy key.
        let own = SecretKey::<Policy>::from_seed([9; 32]);
        let forged = Signed::sign(&credential(me, 100), &[&own]).expect("signs");
        assert!(matches!(
            forged.verify_member(&f.trust, &me, &[], UnixTime(200)),
            Err(Error::BadSignature { .. })
        ));
        let as_release = SecretKey::<Policy>::from_seed(*f.release.seed());
        let forged = Signed::sign(&credential(me, 100), &[&as_release]).expect("signs");
        assert!(forged
            .verify_member(&f.trust, &me, &[], UnixTime(200))
            .is_err());
        let mut bad = credential(me, 100);
        bad.labels.insert("Bad Key".into(), "x".into());
        let signed = Signed::sign(&bad, &[&f.policy]).expect("signs");
        assert!(signed
            .verify_member(&f.trust, &me, &[], UnixTime(200))
            .is_err());
    }
}

//! `Signed<T>`: a document's exact encoded bytes plus signatures over them.
//!
//! The body stays bytes until [`Signed::verify`] has checked enough
//! signatures from the keys the caller trusts for `T`'s role; only then is it
//! decoded. Nothing trusted is ever parsed from unverified bytes.

use crate::codec::{self, Kind, Message};
use crate::keys::{KeyId, PublicKey, Role, SecretKey};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::marker::PhantomData;

/// Most signatures a document may carry, and most keys a role may have.
pub const MAX_SIGNERS: usize = 16;

/// A document type that is signed by keys of one role.
pub trait SignedBody: Message {
    /// The role whose keys sign it.
    type Role: Role;
    /// The envelope kind of `Signed<Self>`.
    const SIGNED_KIND: Kind;
}

/// One signature in a [`Signed`] document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Which key made it.
    pub key_id: KeyId,
    /// The 64-byte ed25519 signature.
    #[serde(with = "crate::codec::bytes")]
    pub bytes: Vec<u8>,
}

/// The keys a role is delegated to and how many of them must sign.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct RoleKeys<R: Role> {
    /// The role's keys, distinct, at most [`MAX_SIGNERS`].
    pub keys: Vec<PublicKey<R>>,
    /// How many distinct keys must sign; 1..=keys.len().
    pub threshold: u8,
}

impl<R: Role> Clone for RoleKeys<R> {
    fn clone(&self) -> Self {
        RoleKeys {
            keys: self.keys.clone(),
            threshold: self.threshold,
        }
    }
}

impl<R: Role> PartialEq for RoleKeys<R> {
    fn eq(&self, other: &Self) -> bool {
        self.keys == other.keys && self.threshold == other.threshold
    }
}

impl<R: Role> RoleKeys<R> {
    /// One key, threshold one.
    pub fn single(key: PublicKey<R>) -> Self {
        RoleKeys {
            keys: vec![key],
            threshold: 1,
        }
    }

    /// Checks the threshold and that keys are distinct and few enough.
    pub fn validate(&self) -> Result<()> {
        let what = "role keys";
        if self.keys.is_empty() || self.keys.len() > MAX_SIGNERS {
            return Err(Error::invalid(
                what,
                format!("{} must have 1-16 keys", R::NAME),
            ));
        }
        if self.threshold == 0 || usize::from(self.threshold) > self.keys.len() {
            return Err(Error::invalid(
                what,
                format!(
                    "{} threshold {} must be 1..={}",
                    R::NAME,
                    self.threshold,
                    self.keys.len()
                ),
            ));
        }
        let ids: BTreeSet<KeyId> = self.keys.iter().map(|k| k.id()).collect();
        if ids.len() != self.keys.len() {
            return Err(Error::invalid(what, format!("{} keys repeat", R::NAME)));
        }
        Ok(())
    }

    fn find(&self, id: &KeyId) -> Option<&PublicKey<R>> {
        self.keys.iter().find(|k| k.id() == *id)
    }
}

/// As text (`root.pub`, `--root-key`): one key is its hex; k-of-n keys
/// are `K:HEX,HEX,...`.
impl<R: Role> std::fmt::Display for RoleKeys<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let ([key], 1) = (self.keys.as_slice(), self.threshold) {
            return write!(f, "{key}");
        }
        write!(f, "{}:", self.threshold)?;
        for (i, key) in self.keys.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{key}")?;
        }
        Ok(())
    }
}

impl<R: Role> std::str::FromStr for RoleKeys<R> {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let keys = match s.split_once(':') {
            None => RoleKeys::single(s.parse()?),
            Some((k, list)) => RoleKeys {
                threshold: k.trim().parse().map_err(|_| {
                    Error::invalid(
                        "role keys",
                        format!(
                            "{} threshold {k:?} is not a number (K:HEX,HEX,...)",
                            R::NAME
                        ),
                    )
                })?,
                keys: list.split(',').map(str::parse).collect::<Result<_>>()?,
            },
        };
        keys.validate()?;
        Ok(keys)
    }
}

/// A document of type `T` with its signatures.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    #[serde(with = "crate::codec::bytes")]
    body: Vec<u8>,
    signatures: Vec<Signature>,
    #[serde(skip)]
    kind: PhantomData<fn() -> T>,
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Signed {
            body: self.body.clone(),
            signatures: self.signatures.clone(),
            kind: PhantomData,
        }
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.body == other.body && self.signatures == other.signatures
    }
}

impl<T: SignedBody> Signed<T> {
    /// Encodes `value` and signs it with each of `signers`.
    pub fn sign(value: &T, signers: &[&SecretKey<T::Role>]) -> Result<Self> {
        let body = codec::encode(value)?;
        let mut signed = Signed {
            body,
            signatures: Vec::new(),
            kind: PhantomData,
        };
        for key in signers {
            signed.add_signature(key);
        }
        Ok(signed)
    }

    /// Adds (or replaces) `key`'s signature, for threshold signing by several
    /// parties one after another.
    pub fn add_signature(&mut self, key: &SecretKey<T::Role>) {
        let key_id = key.public().id();
        self.signatures.retain(|s| s.key_id != key_id);
        self.signatures.push(Signature {
            key_id,
            bytes: key.sign(T::WHAT.as_bytes(), &self.body).to_vec(),
        });
    }

    /// The exact signed bytes (an encoded `T`).
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    /// Decodes the body without checking any signature: only for what the
    /// holder wrote itself or is about to verify against keys it lacks now.
    pub fn unverified_body(&self) -> Result<T> {
        crate::codec::decode(&self.body)
    }

    /// Checks that at least `keys.threshold` distinct keys of `keys` signed
    /// the body, then decodes it.
    pub fn verify(&self, keys: &RoleKeys<T::Role>) -> Result<T> {
        self.check_signatures(keys)?;
        codec::decode(&self.body)
    }

    fn check_signatures(&self, keys: &RoleKeys<T::Role>) -> Result<()> {
        if self.signatures.len() > MAX_SIGNERS {
            return Err(Error::invalid(T::WHAT, "more than 16 signatures"));
        }
        let mut good = BTreeSet::new();
        for sig in &self.signatures {
            let Some(key) = keys.find(&sig.key_id) else {
                continue;
            };
            if key.verifies(T::WHAT.as_bytes(), &self.body, &sig.bytes) {
                good.insert(sig.key_id);
            }
        }
        if good.len() < usize::from(keys.threshold) {
            return Err(Error::bad_signature(
                T::WHAT,
                format!(
                    "{} valid {} signature(s), {} required",
                    good.len(),
                    <T::Role as Role>::NAME,
                    keys.threshold
                ),
            ));
        }
        Ok(())
    }
}

impl<T: SignedBody> Message for Signed<T> {
    const KIND: Kind = T::SIGNED_KIND;
    const WHAT: &'static str = T::WHAT;
    const MAX_BYTES: usize = T::MAX_BYTES + 4096;
}

//! Typed ed25519 keys.
//!
//! A key's role is part of its type (`SecretKey<Release>` cannot sign where a
//! `SecretKey<Root>` is required), secrets are zeroized on drop and never
//! printed by `Debug`, and every signature is domain-separated by the role
//! and the document kind, so a signature made for one purpose never verifies
//! for another.

use crate::{Error, Result};
use ed25519_dalek::{Signer, Verifier};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::str::FromStr;
use zeroize::Zeroizing;

mod sealed {
    pub trait Sealed {}
}

/// A key role. Implemented only by the four marker types below.
pub trait Role: sealed::Sealed + Copy + Send + Sync + fmt::Debug + 'static {
    /// The role's name in key files, messages and errors.
    const NAME: &'static str;
}

macro_rules! role {
    ($(#[$doc:meta])* $ty:ident, $name:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $ty;
        impl sealed::Sealed for $ty {}
        impl Role for $ty {
            const NAME: &'static str = $name;
        }
    };
}

role!(
    /// The offline trust anchor: signs trust documents only.
    Root,
    "root"
);
role!(
    /// Signs release manifests and announcements.
    Release,
    "release"
);
role!(
    /// Signs policy documents.
    Policy,
    "policy"
);
role!(
    /// A node's own identity: signs status reports.
    Node,
    "node"
);

/// Short identifier of a public key: the first 8 bytes of its blake3.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A secret signing key for role `R`.
pub struct SecretKey<R: Role> {
    inner: ed25519_dalek::SigningKey,
    role: PhantomData<R>,
}

impl<R: Role> SecretKey<R> {
    /// A fresh key from the caller's cryptographic RNG.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self::from_seed(ed25519_dalek::SigningKey::generate(rng).to_bytes())
    }

    /// The key with this 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let seed = Zeroizing::new(seed);
        SecretKey {
            inner: ed25519_dalek::SigningKey::from_bytes(&seed),
            role: PhantomData,
        }
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey<R> {
        PublicKey {
            inner: self.inner.verifying_key(),
            role: PhantomData,
        }
    }

    /// Signs `message` under the domain `context`.
    pub(crate) fn sign(&self, context: &[u8], message: &[u8]) -> [u8; 64] {
        self.inner
            .sign(&domain_message::<R>(context, message))
            .to_bytes()
    }

    /// The 32-byte seed (for handing the node key to libp2p).
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.inner.to_bytes())
    }

    /// The key file text: `fleetmesh-secret-key-v1 <role> <hex seed>`.
    pub fn to_text(&self) -> Zeroizing<String> {
        let seed = Zeroizing::new(self.inner.to_bytes());
        Zeroizing::new(format!(
            "{KEY_FILE_TAG} {} {}\n",
            R::NAME,
            *Zeroizing::new(hex::encode(*seed))
        ))
    }

    /// Parses key file text written by [`SecretKey::to_text`]; the role in the
    /// file must be `R`.
    pub fn from_text(text: &str) -> Result<Self> {
        let mut parts = text.split_whitespace();
        let (tag, role, seed_hex) = (parts.next(), parts.next(), parts.next());
        if tag != Some(KEY_FILE_TAG) || parts.next().is_some() {
            return Err(Error::invalid(
                "secret key",
                format!("not a `{KEY_FILE_TAG} <role> <hex>` key file"),
            ));
        }
        if role != Some(R::NAME) {
            return Err(Error::invalid(
                "secret key",
                format!("is a {} key, expected {}", role.unwrap_or("?"), R::NAME),
            ));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(seed_hex.unwrap_or(""), seed.as_mut_slice())
            .map_err(|_| Error::invalid("secret key", "seed is not 64 hex digits"))?;
        Ok(Self::from_seed(*seed))
    }
}

const KEY_FILE_TAG: &str = "fleetmesh-secret-key-v1";

impl<R: Role> fmt::Debug for SecretKey<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey<{}>(..)", R::NAME)
    }
}

/// A public verifying key for role `R`.
pub struct PublicKey<R: Role> {
    inner: ed25519_dalek::VerifyingKey,
    role: PhantomData<R>,
}

impl<R: Role> PublicKey<R> {
    /// The key from its 32 bytes; fails on bytes that are not a valid point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self> {
        let inner = ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map_err(|_| Error::invalid("public key", format!("not a valid {} key", R::NAME)))?;
        Ok(PublicKey {
            inner,
            role: PhantomData,
        })
    }

    /// The key's 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.inner.to_bytes()
    }

    /// The key's short id.
    pub fn id(&self) -> KeyId {
        let digest = blake3::hash(self.inner.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_bytes()[..8]);
        KeyId(id)
    }

    /// True if `signature` is this key's signature of `message` in `context`.
    pub(crate) fn verifies(&self, context: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        let message = domain_message::<R>(context, message);
        // verify_strict rejects small-order keys and malleable signatures.
        self.inner.verify(&message, &signature).is_ok()
            && self.inner.verify_strict(&message, &signature).is_ok()
    }
}

/// The exact bytes every signature covers: the protocol, the signer's role
/// and the document kind, then the document.
fn domain_message<R: Role>(context: &[u8], message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + context.len() + message.len());
    out.extend_from_slice(b"fleetmesh-sig-v1\0");
    out.extend_from_slice(R::NAME.as_bytes());
    out.push(0);
    out.extend_from_slice(context);
    out.push(0);
    out.extend_from_slice(message);
    out
}

impl<R: Role> Clone for PublicKey<R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R: Role> Copy for PublicKey<R> {}

impl<R: Role> PartialEq for PublicKey<R> {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}
impl<R: Role> Eq for PublicKey<R> {}

impl<R: Role> Hash for PublicKey<R> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.as_bytes().hash(state)
    }
}

impl<R: Role> fmt::Display for PublicKey<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.inner.as_bytes()))
    }
}

impl<R: Role> fmt::Debug for PublicKey<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey<{}>({})", R::NAME, self.id())
    }
}

impl<R: Role> FromStr for PublicKey<R> {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut bytes).map_err(|_| {
            Error::invalid(
                "public key",
                format!("{} key is not 64 hex digits", R::NAME),
            )
        })?;
        Self::from_bytes(&bytes)
    }
}

impl<R: Role> Serialize for PublicKey<R> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.inner.as_bytes().serialize(serializer)
    }
}

impl<'de, R: Role> Deserialize<'de> for PublicKey<R> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let bytes = <[u8; 32]>::deserialize(deserializer)?;
        Self::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    #[test]
    fn debug_never_prints_the_secret() {
        let key = SecretKey::<Root>::from_seed([7; 32]);
        let shown = format!("{key:?}");
        assert_eq!(shown, "SecretKey<root>(..)");
        assert!(!shown.contains(&hex::encode([7u8; 32])));
    }

    #[test]
    fn key_text_round_trips_and_checks_role() {
        let key = SecretKey::<Release>::generate(&mut ChaCha8Rng::seed_from_u64(1));
        let text = key.to_text();
        let back = SecretKey::<Release>::from_text(&text).expect("parses");
        assert_eq!(back.public(), key.public());
        let err = SecretKey::<Root>::from_text(&text).expect_err("wrong role");
        assert!(
            err.to_string().contains("is a release key, expected root"),
            "{err}"
        );
    }

    #[test]
    fn signature_is_bound_to_role_and_context() {
        let seed = [3; 32];
        let release = SecretKey::<Release>::from_seed(seed);
        let policy_pub = SecretKey::<Policy>::from_seed(seed).public();
        let sig = release.sign(b"manifest", b"body");
        assert!(release.public().verifies(b"manifest", b"body", &sig));
        assert!(!release.public().verifies(b"policy", b"body", &sig));
        assert!(!policy_pub.verifies(b"manifest", b"body", &sig));
        assert!(!release.public().verifies(b"manifest", b"bodz", &sig));
    }
}

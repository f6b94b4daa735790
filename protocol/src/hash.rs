//! Content identifiers: blake3 digests with a type per use, so that a chunk id
//! can never be passed where a release id is expected.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! digest_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The blake3 digest of `bytes`.
            pub fn of(bytes: &[u8]) -> Self {
                $name(*blake3::hash(bytes).as_bytes())
            }

            /// Lower-case hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl From<blake3::Hash> for $name {
            fn from(h: blake3::Hash) -> Self {
                $name(*h.as_bytes())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), &self.to_hex()[..16])
            }
        }

        impl FromStr for $name {
            type Err = crate::Error;
            fn from_str(s: &str) -> crate::Result<Self> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|e| {
                    crate::Error::invalid(stringify!($name), format!("not 64 hex digits: {e}"))
                })?;
                Ok($name(out))
            }
        }
    };
}

digest_newtype!(
    /// blake3 of a chunk's uncompressed bytes.
    ChunkId
);
digest_newtype!(
    /// blake3 of a release manifest's signed body bytes: what announcements point to.
    ReleaseId
);
digest_newtype!(
    /// blake3 of a whole OS image.
    ImageHash
);

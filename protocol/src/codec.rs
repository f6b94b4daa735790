//! The one wire and disk codec: bincode 2 (serde) behind a versioned envelope.
//!
//! Every encoded message starts with a 4-byte header: the magic `FM`, the
//! format version and the message kind. Decoding checks the size limit of the
//! kind *before* looking at the bytes, then the header, then decodes with
//! bincode's own allocation limit and refuses trailing bytes, so a message has
//! exactly one accepted encoding length and random input never panics or
//! allocates more than the limit.

use crate::{Error, Result};
use serde::{de::DeserializeOwned, Serialize};

/// First two bytes of every encoded message.
pub const MAGIC: [u8; 2] = *b"FM";
/// The envelope format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the envelope header.
pub const HEADER_LEN: usize = 4;
/// No message of any kind is larger than this (bincode's allocation limit).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The kinds of message, one byte on the wire. Never reuse a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// [`crate::TrustDoc`], the body of a signed trust document.
    TrustDoc = 1,
    /// [`crate::Signed`]`<TrustDoc>`.
    SignedTrustDoc = 2,
    /// [`crate::TrustChain`]: every trust document from the first.
    TrustChain = 3,
    /// [`crate::Manifest`], the body of a signed manifest.
    Manifest = 4,
    /// [`crate::Signed`]`<Manifest>`.
    SignedManifest = 5,
    /// [`crate::mesh::Announcement`], the body of a signed announcement.
    Announcement = 6,
    /// [`crate::Signed`]`<Announcement>`.
    SignedAnnouncement = 7,
    /// [`crate::mesh::Request`] on the exchange protocol.
    Request = 8,
    /// [`crate::mesh::Response`] on the exchange protocol.
    Response = 9,
    /// A policy document (the `fleetmesh-policy` crate's `PolicyDoc`).
    Policy = 10,
    /// A signed policy document.
    SignedPolicy = 11,
    /// [`crate::mesh::Report`], a node's status report.
    Report = 12,
    /// A signed report.
    SignedReport = 13,
    /// [`crate::mesh::ReportEnvelope`]: key and signed report.
    ReportEnvelope = 14,
    /// [`crate::member::Membership`], the body of a membership credential.
    Membership = 15,
    /// [`crate::Signed`]`<Membership>`: a credential.
    SignedMembership = 16,
}

/// A type that travels or is stored through this codec.
pub trait Message: Serialize + DeserializeOwned {
    /// Its kind byte.
    const KIND: Kind;
    /// Its name in errors.
    const WHAT: &'static str;
    /// The largest encoding accepted, header included.
    const MAX_BYTES: usize;
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// Encodes `value` with its header. Fails if the result would exceed the
/// kind's limit, so that nothing is produced that a peer would refuse.
pub fn encode<T: Message>(value: &T) -> Result<Vec<u8>> {
    let mut out = vec![MAGIC[0], MAGIC[1], FORMAT_VERSION, T::KIND as u8];
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| Error::invalid(T::WHAT, format!("cannot encode: {e}")))?;
    if out.len() > T::MAX_BYTES {
        return Err(Error::invalid(
            T::WHAT,
            format!("{} bytes exceeds the limit of {}", out.len(), T::MAX_BYTES),
        ));
    }
    Ok(out)
}

/// Decodes a `T` from exactly `bytes`.
pub fn decode<T: Message>(bytes: &[u8]) -> Result<T> {
    if bytes.len() > T::MAX_BYTES {
        return Err(Error::invalid(
            T::WHAT,
            format!(
                "{} bytes exceeds the limit of {}",
                bytes.len(),
                T::MAX_BYTES
            ),
        ));
    }
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(Error::invalid(T::WHAT, "shorter than its header"));
    };
    if header[..2] != MAGIC {
        return Err(Error::invalid(
            T::WHAT,
            "not a fleetmesh message (bad magic)",
        ));
    }
    if header[2] != FORMAT_VERSION {
        return Err(Error::Incompatible(format!(
            "{} uses format version {}, this build reads {FORMAT_VERSION}",
            T::WHAT,
            header[2]
        )));
    }
    if header[3] != T::KIND as u8 {
        return Err(Error::invalid(
            T::WHAT,
            format!(
                "message kind {} where {} was expected",
                header[3],
                T::KIND as u8
            ),
        ));
    }
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| Error::invalid(T::WHAT, e.to_string()))?;
    if used != body.len() {
        return Err(Error::invalid(
            T::WHAT,
            format!("{} trailing bytes", body.len() - used),
        ));
    }
    Ok(value)
}

/// Byte strings as a length and one copy. Serde's derive writes and reads a
/// `Vec<u8>` one `u8` call at a time, which for chunk responses cost more
/// CPU than decompressing them; bincode encodes both ways identically (a
/// varint length, then the bytes), so this changes no wire or disk format.
/// For `#[serde(with = "...")]` on `Vec<u8>`, `Option<Vec<u8>>` and
/// `Vec<Option<Vec<u8>>>` fields.
pub(crate) mod bytes {
    use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(Buf::deserialize(d)?.0)
    }

    struct Slice<'a>(&'a [u8]);

    impl Serialize for Slice<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    struct Buf(Vec<u8>);

    impl<'de> Deserialize<'de> for Buf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_byte_buf(BufVisitor).map(Buf)
        }
    }

    struct BufVisitor;

    impl<'de> de::Visitor<'de> for BufVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        /// Formats that write bytes as a list of numbers (JSON).
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }

    /// `Option<Vec<u8>>`.
    pub mod option {
        use super::{Buf, Slice};
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            bytes.as_deref().map(Slice).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            Ok(Option::<Buf>::deserialize(d)?.map(|b| b.0))
        }
    }

    /// `Vec<Option<Vec<u8>>>`.
    pub mod list {
        use super::{Buf, Slice};
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(list: &[Option<Vec<u8>>], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(list.iter().map(|b| b.as_deref().map(Slice)))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<Option<Vec<u8>>>, D::Error> {
            let list = Vec::<Option<Buf>>::deserialize(d)?;
            Ok(list.into_iter().map(|b| b.map(|b| b.0)).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::config;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Fast {
        #[serde(with = "super::bytes")]
        one: Vec<u8>,
        #[serde(with = "super::bytes::option")]
        maybe: Option<Vec<u8>>,
        #[serde(with = "super::bytes::list")]
        list: Vec<Option<Vec<u8>>>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Derived {
        one: Vec<u8>,
        maybe: Option<Vec<u8>>,
        list: Vec<Option<Vec<u8>>>,
    }

    #[test]
    fn byte_strings_encode_as_serde_derives_them() {
        let long: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        for (one, maybe, list) in [
            (vec![], None, vec![]),
            (
                long.clone(),
                Some(vec![]),
                vec![None, Some(long.clone()), Some(vec![0])],
            ),
            (
                vec![255],
                Some(long.clone()),
                vec![Some(vec![1, 2, 3]), None],
            ),
        ] {
            let derived = Derived { one, maybe, list };
            let fast = Fast {
                one: derived.one.clone(),
                maybe: derived.maybe.clone(),
                list: derived.list.clone(),
            };
            let a = bincode::serde::encode_to_vec(&fast, config()).expect("fast");
            let b = bincode::serde::encode_to_vec(&derived, config()).expect("derived");
            assert_eq!(a, b, "one wire format");
            let (back, used): (Fast, usize) =
                bincode::serde::decode_from_slice(&b, config()).expect("decode");
            assert_eq!((back, used), (fast, b.len()));
        }
    }

    #[test]
    fn a_byte_string_longer_than_its_input_is_refused() {
        let fast = Fast {
            one: vec![9; 100],
            maybe: None,
            list: vec![Some(vec![1; 50])],
        };
        let bytes = bincode::serde::encode_to_vec(&fast, config()).expect("encode");
        for cut in 0..bytes.len() {
            assert!(
                bincode::serde::decode_from_slice::<Fast, _>(&bytes[..cut], config()).is_err(),
                "decoded from {cut} of {} bytes",
                bytes.len()
            );
        }
    }
}

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

//! The one error type of the protocol crate.
//!
//! Variants say who is at fault so that callers can act without parsing
//! strings: a peer that sent [`Error::InvalidMessage`] or [`Error::BadSignature`]
//! misbehaved; [`Error::Expired`] and [`Error::VersionRollback`] are replay or
//! freeze attempts (or a stale authority); [`Error::Incompatible`] means the
//! other side speaks something this build does not; [`Error::NoTrust`] is
//! nobody's fault: this side has nothing to check signatures against yet.

use crate::time::UnixTime;

/// Errors from decoding, verifying and chunking.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes that do not decode to a well-formed message, or a decoded value
    /// that breaks the message's own rules (sizes, ordering, ranges).
    #[error("invalid {what}: {reason}")]
    InvalidMessage {
        /// The kind of message being decoded.
        what: &'static str,
        /// What exactly is wrong.
        reason: String,
    },
    /// Signatures missing, forged, or from keys the trust document does not
    /// delegate the role to; or fewer valid ones than the role's threshold.
    #[error("bad signature on {what}: {reason}")]
    BadSignature {
        /// The kind of document.
        what: &'static str,
        /// What was wrong with the signatures.
        reason: String,
    },
    /// This side has accepted no trust document yet (a node before its
    /// first chain arrives from the seed or a peer), so no signature can be
    /// checked.
    #[error("no trust chain yet: it comes from the seed or a peer that has one")]
    NoTrust,
    /// A signed document whose expiry has passed.
    #[error("{what} expired at {expired_at} (now {now})")]
    Expired {
        /// The kind of document.
        what: &'static str,
        /// Its expiry.
        expired_at: UnixTime,
        /// The time it was checked at.
        now: UnixTime,
    },
    /// A document whose version is not newer than the one already trusted.
    #[error("{what} version {offered} is not newer than trusted version {trusted}")]
    VersionRollback {
        /// The kind of document.
        what: &'static str,
        /// The version already trusted.
        trusted: String,
        /// The version offered.
        offered: String,
    },
    /// A message or release this build or this node cannot use: unknown
    /// format version, wrong platform.
    #[error("incompatible: {0}")]
    Incompatible(String),
    /// A chunk whose bytes do not hash to the id they were offered under.
    #[error("chunk {expected} does not match its id (got {actual})")]
    ChunkMismatch {
        /// The id the chunk was requested or stored under.
        expected: crate::ChunkId,
        /// The id of the bytes actually received.
        actual: crate::ChunkId,
    },
    /// I/O from a reader the caller supplied (for example the image being chunked).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidMessage {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn bad_signature(what: &'static str, reason: impl Into<String>) -> Self {
        Error::BadSignature {
            what,
            reason: reason.into(),
        }
    }
}

/// Result with the protocol [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

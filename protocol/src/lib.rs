//! What two fleetmesh parties must agree on, and nothing that does I/O.
//!
//! Goals: typed keys and domain-separated signatures; a root-anchored trust
//! chain; signed release manifests that can only be decoded after they are
//! verified; content-defined chunking; one size-limited codec.
//!
//! Non-goals: sockets, files, the clock, randomness of its own. Callers pass
//! `now` and an RNG in, which is what lets the simulator and the property
//! tests drive this crate.

pub mod bucket;
pub mod chunk;
pub mod chunking;
pub mod codec;
mod error;
pub mod gather;
mod hash;
pub mod keys;
pub mod manifest;
pub mod member;
pub mod mesh;
pub mod sched;
pub mod signed;
mod time;
pub mod trust;
pub mod update;

pub use chunking::ChunkParams;
pub use error::{Error, Result};
pub use hash::{ChunkId, ImageHash, ReleaseId};
pub use manifest::{ChunkRef, Manifest, VerifiedManifest};
pub use signed::{RoleKeys, Signed};
pub use time::UnixTime;
pub use trust::{TrustChain, TrustDoc, TrustState};

#[cfg(test)]
mod tests;

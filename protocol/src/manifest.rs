//! Release manifests: what an image is, chunk by chunk, signed by the
//! release role.
//!
//! Code that installs takes a [`VerifiedManifest`], and the only way to get
//! one is [`Signed::<Manifest>::verify_release`], which checks the signatures
//! against the current trust document, the expiry and the manifest's own
//! consistency (parse, don't validate).

use crate::chunking::ChunkParams;
use crate::codec::{Kind, Message};
use crate::keys::Release;
use crate::signed::{Signed, SignedBody};
use crate::time::UnixTime;
use crate::trust::TrustState;
use crate::{ChunkId, Error, ImageHash, ReleaseId, Result};
use serde::{Deserialize, Serialize};

/// Most chunks in one manifest: 1 Mi chunks is 16 GiB at the default size.
pub const MAX_CHUNKS: usize = 1 << 20;
/// Longest channel name.
pub const MAX_NAME_LEN: usize = 64;
/// Most platforms one release may name.
pub const MAX_PLATFORMS: usize = 32;

/// One chunk of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// blake3 of its uncompressed bytes.
    pub id: ChunkId,
    /// Where it starts in the image.
    pub offset: u64,
    /// Its uncompressed length.
    pub len: u32,
}

/// A release of an OS image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Semantic version; unique and increasing within a channel.
    pub version: semver::Version,
    /// Release channel, such as `stable`.
    pub channel: String,
    /// Platforms the image runs on; a node installs only its own.
    pub platforms: Vec<String>,
    /// Image length in bytes.
    pub image_len: u64,
    /// blake3 of the whole image.
    pub image_hash: ImageHash,
    /// How the image was chunked.
    pub chunking: ChunkParams,
    /// The chunks, in image order, contiguous from offset 0.
    pub chunks: Vec<ChunkRef>,
    /// When it was published.
    pub created_at: UnixTime,
    /// After this, nodes refuse it.
    pub expires_at: UnixTime,
}

impl Message for Manifest {
    const KIND: Kind = Kind::Manifest;
    const WHAT: &'static str = "manifest";
    const MAX_BYTES: usize = 1024 + MAX_CHUNKS * 48 + MAX_PLATFORMS * (MAX_NAME_LEN + 2);
}

// The largest signed manifest must fit the codec's allocation limit.
const _: () = assert!(<Signed<Manifest> as Message>::MAX_BYTES <= crate::codec::MAX_MESSAGE_BYTES);

impl SignedBody for Manifest {
    type Role = Release;
    const SIGNED_KIND: Kind = Kind::SignedManifest;
}

/// True for a non-empty name of at most 64 lower-case ASCII letters, digits,
/// `-`, `_` and `.`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

impl Manifest {
    /// Checks the manifest's internal rules.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::invalid(Self::WHAT, reason));
        if !is_valid_name(&self.channel) {
            return bad(format!("channel {:?} is not a valid name", self.channel));
        }
        if self.platforms.is_empty() || self.platforms.len() > MAX_PLATFORMS {
            return bad("must name 1-32 platforms".into());
        }
        if let Some(p) = self.platforms.iter().find(|p| !is_valid_name(p)) {
            return bad(format!("platform {p:?} is not a valid name"));
        }
        if self.expires_at <= self.created_at {
            return bad("expires before it is created".into());
        }
        self.chunking.validate()?;
        self.validate_chunks()
    }

    fn validate_chunks(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::invalid(Self::WHAT, reason));
        if self.image_len == 0 || self.chunks.is_empty() {
            return bad("image is empty".into());
        }
        if self.chunks.len() > MAX_CHUNKS {
            return bad(format!("{} chunks, limit {MAX_CHUNKS}", self.chunks.len()));
        }
        let mut next = 0u64;
        for (i, chunk) in self.chunks.iter().enumerate() {
            if chunk.offset != next {
                return bad(format!(
                    "chunk {i} starts at {}, expected {next}",
                    chunk.offset
                ));
            }
            if chunk.len == 0 || chunk.len > self.chunking.max {
                return bad(format!("chunk {i} is {} bytes", chunk.len));
            }
            next += u64::from(chunk.len);
        }
        if next != self.image_len {
            return bad(format!(
                "chunks cover {next} bytes, image is {}",
                self.image_len
            ));
        }
        Ok(())
    }

    /// True if the release runs on `platform`.
    pub fn supports(&self, platform: &str) -> bool {
        self.platforms.iter().any(|p| p == platform)
    }
}

/// A manifest whose signatures, trust chain, expiry and consistency have been
/// checked. Only [`Signed::<Manifest>::verify_release`] makes one.
#[derive(Clone, Debug)]
pub struct VerifiedManifest {
    id: ReleaseId,
    manifest: Manifest,
    signed: Signed<Manifest>,
}

impl VerifiedManifest {
    /// The release id: blake3 of the signed body.
    pub fn id(&self) -> ReleaseId {
        self.id
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The signed form, to store or forward.
    pub fn signed(&self) -> &Signed<Manifest> {
        &self.signed
    }

    /// Refuses a release that does not run on `platform`.
    pub fn check_platform(&self, platform: &str) -> Result<()> {
        if self.manifest.supports(platform) {
            return Ok(());
        }
        Err(Error::Incompatible(format!(
            "release {} is for {:?}, this node is {platform:?}",
            self.manifest.version, self.manifest.platforms
        )))
    }
}

impl Signed<Manifest> {
    /// The release id, computable before verification (it names the bytes,
    /// it does not vouch for them).
    pub fn release_id(&self) -> ReleaseId {
        ReleaseId::of(self.body_bytes())
    }

    /// Verifies against the release keys of the current trust document and
    /// checks expiry and consistency.
    pub fn verify_release(&self, trust: &TrustState, now: UnixTime) -> Result<VerifiedManifest> {
        let doc = trust.current(now)?;
        let manifest = self.verify(&doc.release)?;
        manifest.validate()?;
        if now >= manifest.expires_at {
            return Err(Error::Expired {
                what: Manifest::WHAT,
                expired_at: manifest.expires_at,
                now,
            });
        }
        Ok(VerifiedManifest {
            id: self.release_id(),
            manifest,
            signed: self.clone(),
        })
    }
}

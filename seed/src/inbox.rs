//! The release inbox: `fleetmesh-seed run` publishes every image dropped
//! into a folder with a sidecar `IMAGE.release.toml` (version, and
//! optionally channel and platforms). The sidecar is the signal: copy the
//! image first, then write the sidecar. An image is published once its size
//! and modification time held still for one scan; then both files move to
//! `published/` (with the publish summary), or, if the publish was refused,
//! to `failed/` with the one-line reason. Nothing in the inbox is deleted.

use crate::layout::Seed;
use crate::publish::{publish, PublishRequest};
use crate::{Result, SeedError};
use fleetmesh_node::fsutil::{self, Context};
use fleetmesh_node::{ReleaseInfo, StoreError};
use fleetmesh_protocol::UnixTime;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What names a sidecar: the image's file name and this.
pub const SIDECAR_SUFFIX: &str = ".release.toml";

/// Where published images go, inside the inbox.
pub const PUBLISHED: &str = "published";
/// Where refused images go, inside the inbox.
pub const FAILED: &str = "failed";

/// `IMAGE.release.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    version: String,
    channel: Option<String>,
    #[serde(default)]
    platforms: Vec<String>,
}

/// What one scan did with one sidecar.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Published; the files are in `published/`.
    Published(ReleaseInfo),
    /// Refused; the files are in `failed/` with this reason.
    Failed {
        /// The image file name.
        image: String,
        /// Why.
        reason: String,
    },
}

/// The inbox and what it saw of each image at the last scan.
#[derive(Debug)]
pub struct Inbox {
    dir: PathBuf,
    seen: BTreeMap<PathBuf, (u64, SystemTime)>,
}

impl Inbox {
    /// The inbox at `dir` (created if absent).
    pub fn new(dir: PathBuf) -> Result<Inbox> {
        std::fs::create_dir_all(&dir).ctx("create", &dir)?;
        Ok(Inbox {
            dir,
            seen: BTreeMap::new(),
        })
    }

    /// One scan: publishes every image whose sidecar is there and that has
    /// not changed since the last scan. A store busy with another publish
    /// is left for the next scan.
    pub fn scan(&mut self, seed: &Seed, now: UnixTime) -> Result<Vec<Outcome>> {
        let mut sidecars: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .ctx("read", &self.dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && file_name(p).ends_with(SIDECAR_SUFFIX))
            .collect();
        sidecars.sort();
        let mut seen = BTreeMap::new();
        let mut out = Vec::new();
        for sidecar in sidecars {
            let name = file_name(&sidecar);
            let image = self
                .dir
                .join(name.strip_suffix(SIDECAR_SUFFIX).unwrap_or(&name));
            let state = match std::fs::metadata(&image) {
                Ok(m) => (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)),
                Err(e) => {
                    let reason = format!("no image {} next to the sidecar: {e}", image.display());
                    out.push(self.file_away(&image, &sidecar, Err(reason))?);
                    continue;
                }
            };
            if self.seen.get(&image) != Some(&state) {
                // New or still changing: look again at the next scan.
                seen.insert(image, state);
                continue;
            }
            match self.publish_one(seed, &image, &sidecar, now) {
                Err(SeedError::Store(StoreError::InUse(_))) => {
                    seen.insert(image, state);
                }
                result => {
                    let result = result.map_err(|e| e.to_string());
                    out.push(self.file_away(&image, &sidecar, result)?);
                }
            }
        }
        self.seen = seen;
        Ok(out)
    }

    fn publish_one(
        &self,
        seed: &Seed,
        image: &Path,
        sidecar: &Path,
        now: UnixTime,
    ) -> Result<ReleaseInfo> {
        let text = std::fs::read_to_string(sidecar).ctx("read", sidecar)?;
        let bad =
            |reason: String| SeedError::BadArgument(format!("{}: {reason}", sidecar.display()));
        let s: Sidecar = toml::from_str(&text)
            .map_err(|e| bad(fleetmesh_node::config::toml_error_line(&text, &e)))?;
        let version = semver::Version::parse(&s.version)
            .map_err(|e| bad(format!("version {:?}: {e}", s.version)))?;
        let req = PublishRequest {
            image: image.to_owned(),
            version,
            channel: s.channel,
            platforms: s.platforms,
        };
        publish(seed, &req, now, &|_| {})
    }

    /// Moves the image (if any) and its sidecar to `published/` or
    /// `failed/`, with the summary or the reason beside them.
    fn file_away(
        &self,
        image: &Path,
        sidecar: &Path,
        result: std::result::Result<ReleaseInfo, String>,
    ) -> Result<Outcome> {
        let to = self
            .dir
            .join(if result.is_ok() { PUBLISHED } else { FAILED });
        std::fs::create_dir_all(&to).ctx("create", &to)?;
        let name = file_name(image);
        let (note, text, outcome) = match result {
            Ok(info) => (
                format!("{name}.published.json"),
                serde_json::to_string_pretty(&info).unwrap_or_default() + "\n",
                Outcome::Published(info),
            ),
            Err(reason) => (
                format!("{name}.error"),
                format!("{reason}\n"),
                Outcome::Failed {
                    image: name.clone(),
                    reason,
                },
            ),
        };
        // The note first: a crash after it leaves the files in the inbox to
        // be tried again, never moved without a word.
        fsutil::write_atomic(&to.join(note), text.as_bytes(), 0o644)?;
        for from in [image, sidecar] {
            if from.exists() {
                let dest = to.join(file_name(from));
                std::fs::rename(from, &dest).ctx("move into", &dest)?;
            }
        }
        Ok(outcome)
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(dir: &Path) -> Seed {
        let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(7);
        crate::init::init(
            dir,
            false,
            Default::default(),
            UnixTime(1_700_000_000),
            &mut rng,
        )
        .expect("init");
        Seed::open(dir).expect("open")
    }

    fn image(len: usize, salt: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ salt ^ (i >> 9) as u8)
            .collect()
    }

    #[test]
    fn a_dropped_image_is_published_once_it_holds_still_and_bad_ones_are_set_aside() {
        let tmp = tempfile::tempdir().expect("tmp");
        let seed = seed(&tmp.path().join("seed"));
        let dir = tmp.path().join("inbox");
        let mut inbox = Inbox::new(dir.clone()).expect("inbox");
        let now = UnixTime(1_700_000_100);

        std::fs::write(dir.join("os.img"), image(300_000, 1)).expect("image");
        // An image without a sidecar is not touched.
        std::fs::write(dir.join("later.img"), image(1000, 2)).expect("image");
        std::fs::write(
            dir.join("os.img.release.toml"),
            "version = \"1.2.0\"\nchannel = \"beta\"\n",
        )
        .expect("sidecar");
        std::fs::write(dir.join("bad.img"), image(1000, 3)).expect("image");
        std::fs::write(dir.join("bad.img.release.toml"), "version = \"one\"\n").expect("sidecar");
        std::fs::write(dir.join("ghost.img.release.toml"), "version = \"1.0.0\"\n")
            .expect("sidecar");

        // First scan: only the sidecar without an image is set aside; the
        // others are new and wait one scan.
        let first = inbox.scan(&seed, now).expect("scan");
        assert!(
            matches!(&first[..], [Outcome::Failed { image, reason }] if image == "ghost.img" && reason.contains("no image")),
            "{first:?}"
        );
        let second = inbox.scan(&seed, now).expect("scan");
        assert_eq!(second.len(), 2, "{second:?}");
        let published: Vec<&ReleaseInfo> = second
            .iter()
            .filter_map(|o| match o {
                Outcome::Published(i) => Some(i),
                Outcome::Failed { .. } => None,
            })
            .collect();
        assert_eq!(published.len(), 1, "{second:?}");
        assert_eq!(
            (published[0].version.as_str(), published[0].channel.as_str()),
            ("1.2.0", "beta")
        );
        let releases = seed.store().expect("store").releases().expect("releases");
        assert_eq!(releases.len(), 1);

        for f in [
            "published/os.img",
            "published/os.img.release.toml",
            "published/os.img.published.json",
            "failed/bad.img",
            "failed/bad.img.release.toml",
            "failed/ghost.img.release.toml",
            "later.img",
        ] {
            assert!(dir.join(f).exists(), "{f} missing");
        }
        let why = std::fs::read_to_string(dir.join("failed/bad.img.error")).expect("error");
        assert!(
            why.contains("version \"one\"") && why.lines().count() == 1,
            "{why}"
        );
        assert!(!dir.join("os.img").exists());

        // The same version again is refused by publish, and set aside.
        std::fs::write(dir.join("again.img"), image(2000, 4)).expect("image");
        std::fs::write(
            dir.join("again.img.release.toml"),
            "version = \"1.2.0\"\nchannel = \"beta\"\n",
        )
        .expect("sidecar");
        assert!(inbox.scan(&seed, now).expect("scan").is_empty());
        let refused = inbox.scan(&seed, now).expect("scan");
        assert!(
            matches!(&refused[..], [Outcome::Failed { image, .. }] if image == "again.img"),
            "{refused:?}"
        );
        assert_eq!(
            seed.store()
                .expect("store")
                .releases()
                .expect("releases")
                .len(),
            1
        );
    }

    #[test]
    fn an_image_still_being_written_waits() {
        let tmp = tempfile::tempdir().expect("tmp");
        let seed = seed(&tmp.path().join("seed"));
        let dir = tmp.path().join("inbox");
        let mut inbox = Inbox::new(dir.clone()).expect("inbox");
        let now = UnixTime(1_700_000_100);
        std::fs::write(dir.join("os.img"), image(1000, 1)).expect("image");
        std::fs::write(dir.join("os.img.release.toml"), "version = \"1.0.0\"\n").expect("sidecar");
        assert!(inbox.scan(&seed, now).expect("scan").is_empty());
        // It grew since: not yet.
        std::fs::write(dir.join("os.img"), image(200_000, 1)).expect("image");
        assert!(inbox.scan(&seed, now).expect("scan").is_empty());
        let done = inbox.scan(&seed, now).expect("scan");
        assert!(matches!(&done[..], [Outcome::Published(_)]), "{done:?}");
    }
}

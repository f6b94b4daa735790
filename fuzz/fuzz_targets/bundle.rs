//! Release bundles, read and checked as `fleetmesh-node import` does
//! (chain from the fixed root, manifest, announcement, every chunk against
//! its id), from memory. Needs `--features node`.
#![no_main]

use fleetmesh_fuzz::{fleet, NOW};
use fleetmesh_node::bundle::{read_from, BundleError};
use fleetmesh_protocol::{chunk, TrustState};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fn refuse(reason: impl std::fmt::Display) -> BundleError {
    BundleError::Bad {
        path: "fuzz".into(),
        reason: reason.to_string(),
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fleet();
    let _ = read_from(
        data,
        Path::new("fuzz"),
        |head, _count| {
            let trust = TrustState::from_chain(f.trust_root(), &head.chain).map_err(refuse)?;
            let verified = head.manifest.verify_release(&trust, NOW).map_err(refuse)?;
            head.announcement
                .verify_announcement(&trust, NOW)
                .map_err(refuse)?;
            Ok(verified)
        },
        |_, id, encoded| {
            chunk::decode_chunk(&encoded, &id).map_err(refuse)?;
            Ok(())
        },
    );
});

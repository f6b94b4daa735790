//! Manifest and announcement verification against the fixed fleet: decode
//! a signed manifest (header supplied), verify it as a node does, and check
//! what a node checks next. Seeds from `seeds` are validly signed, so
//! mutations explore both the signature and the body checks.
#![no_main]

use fleetmesh_fuzz::{fleet, framed, NOW};
use fleetmesh_protocol::codec::{self, Kind};
use fleetmesh_protocol::mesh::{pieces, Announcement, Announcements};
use fleetmesh_protocol::{Manifest, Signed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fleet();
    if let Ok(signed) = codec::decode::<Signed<Manifest>>(&framed(Kind::SignedManifest as u8, data))
    {
        if let Ok(verified) = signed.verify_release(&f.trust, NOW) {
            assert_eq!(verified.id(), signed.release_id());
            let p = pieces(verified.manifest());
            assert!(p.len() <= verified.manifest().chunks.len());
            let _ = verified.check_platform("generic");
        }
    }
    if let Ok(signed) =
        codec::decode::<Signed<Announcement>>(&framed(Kind::SignedAnnouncement as u8, data))
    {
        let mut known = Announcements::default();
        let _ = known.accept(&signed, &f.trust, NOW);
    }
});

//! Policy and membership verification against the fixed fleet: a signed
//! policy is verified and, if valid, asked every question a node asks; a
//! signed membership credential is verified for the policy's revocations.
#![no_main]

use fleetmesh_fuzz::{exercise_policy, fleet, framed, NOW};
use fleetmesh_policy::doc::{verify_policy, PolicyDoc};
use fleetmesh_protocol::codec::{self, Kind};
use fleetmesh_protocol::keys::{Node, SecretKey};
use fleetmesh_protocol::member::Membership;
use fleetmesh_protocol::Signed;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fleet();
    let mut revoked = Vec::new();
    if let Ok(signed) = codec::decode::<Signed<PolicyDoc>>(&framed(Kind::SignedPolicy as u8, data))
    {
        if let Ok(p) = verify_policy(&signed, &f.trust, None, NOW) {
            exercise_policy(&p);
            revoked = p.revoked;
        }
    }
    if let Ok(signed) =
        codec::decode::<Signed<Membership>>(&framed(Kind::SignedMembership as u8, data))
    {
        let node = SecretKey::<Node>::from_seed([4; 32]).public();
        let _ = signed.verify_member(&f.trust, &node, &revoked, NOW);
    }
});

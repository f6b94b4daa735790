//! Trust chains: decoded and walked from the fixed root key, as a node
//! takes one from a peer's hello or a bundle.
#![no_main]

use fleetmesh_fuzz::{fleet, framed, NOW};
use fleetmesh_protocol::codec::{self, Kind};
use fleetmesh_protocol::{TrustChain, TrustState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fleet();
    if let Ok(chain) = codec::decode::<TrustChain>(&framed(Kind::TrustChain as u8, data)) {
        if let Ok(state) = TrustState::from_chain(f.trust_root(), &chain) {
            assert!(state.version() >= 1 || chain.docs.is_empty());
            let _ = state.current(NOW);
        }
    }
});

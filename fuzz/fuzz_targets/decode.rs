//! Every wire and disk decoder: the input's first byte picks a message
//! kind and the rest is its body behind a valid header; the raw input is
//! decoded too, as every kind. Nothing may panic, and whatever decodes must
//! re-encode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&kind, body)) = data.split_first() {
        fleetmesh_fuzz::decode_all(&fleetmesh_fuzz::framed(kind % 17, body));
    }
    fleetmesh_fuzz::decode_all(data);
});

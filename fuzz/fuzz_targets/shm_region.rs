//! Arbitrary shared-region contents (and a peer rewriting them) under a ring's reader.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rpc_transport::shm::fuzzing::region(data));

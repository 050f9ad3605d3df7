//! Fuzz target: see initrd_helper::fuzzing::pcrsig_target.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| initrd_helper::fuzzing::pcrsig_target(data));

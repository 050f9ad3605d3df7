//! Fuzz target: see initrd_helper::fuzzing::grow_target.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| initrd_helper::fuzzing::grow_target(data));

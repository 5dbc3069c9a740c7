#![no_main]
//! Fuzz target `metadata`: see `flowstate::fuzzing`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flowstate::fuzzing::run("metadata", data);
});

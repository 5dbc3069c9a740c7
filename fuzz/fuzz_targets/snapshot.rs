#![no_main]
//! Fuzz target `snapshot`: see `flowstate::fuzzing`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flowstate::fuzzing::run("snapshot", data);
});

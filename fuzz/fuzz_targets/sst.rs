#![no_main]
//! Fuzz target `sst`: see `flowstate::fuzzing`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flowstate::fuzzing::run("sst", data);
});

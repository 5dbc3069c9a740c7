#![no_main]
//! Fuzz target `manifest`: see `flowstate::fuzzing`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flowstate::fuzzing::run("manifest", data);
});

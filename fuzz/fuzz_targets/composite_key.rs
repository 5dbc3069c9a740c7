#![no_main]
//! Fuzz target `composite_key`: see `flowstate::fuzzing`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flowstate::fuzzing::run("composite_key", data);
});

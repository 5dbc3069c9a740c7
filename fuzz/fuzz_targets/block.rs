#![no_main]
//! Fuzz target `block`: see `flowstate::fuzzing`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flowstate::fuzzing::run("block", data);
});

#![no_main]
//! Fuzz target `batch`: see `flowstate::fuzzing`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flowstate::fuzzing::run("batch", data);
});

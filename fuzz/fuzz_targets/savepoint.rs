#![no_main]
//! Fuzz target `savepoint`: see `flowstate::fuzzing`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flowstate::fuzzing::run("savepoint", data);
});

#![no_main]
//! Fuzz target `wal`: see `flowstate::fuzzing`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flowstate::fuzzing::run("wal", data);
});

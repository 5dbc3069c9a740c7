#![no_main]
//! Fuzz target `varint`: see `flowstate::fuzzing`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flowstate::fuzzing::run("varint", data);
});

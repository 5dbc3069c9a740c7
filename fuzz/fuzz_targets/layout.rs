#![no_main]
//! Fuzz target `layout`: see `flowstate::fuzzing`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flowstate::fuzzing::run("layout", data);
});

//! Regression: the varint decoder accepted overlong forms such as `9c 00` for 28, although
//! FORMAT.md §1.1 says readers reject them. Found by the `batch` fuzz target (its first minute):
//! a write batch whose key-length varint was `9c 00` decoded, but re-encoding it gave `1c`, so
//! the same batch had two encodings. Every decoder reads varints through `codec::varint`, so the
//! fix (a zero last byte after others is corruption) applies to all formats. The crashing input
//! is kept as `fuzz/corpus/batch/crash-overlong-varint`.

use flowstate::internals::{decode_write_batch, get_varint32, get_varint64};

/// The input the fuzzer found: base sequence 1, count 4, ... with an overlong length at byte 20.
const CRASH: &[u8] = &[
    0x1, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x4, 0x0, 0x0, 0x0, 0x0, 0x0, 0x4, 0x0, 0x0, 0x70,
    0x70, 0x1, 0x9c, 0x0, 0x1, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x4, 0x0, 0x0, 0x0, 0x0,
];

#[test]
fn the_fuzzed_batch_is_corruption_at_the_overlong_varint() {
    let err = decode_write_batch(CRASH, "wal", 100).unwrap_err();
    match &err {
        flowstate::Error::Corruption { offset, what, .. } => {
            assert_eq!(*offset, 120, "{err}");
            assert!(what.contains("overlong"), "{err}");
        }
        other => panic!("expected corruption, got {other}"),
    }
    // The corpus replay must keep running the input without a panic.
    assert!(flowstate::fuzzing::run("batch", CRASH));
}

#[test]
fn every_value_has_exactly_one_encoding() {
    assert_eq!(get_varint64(&[0x1c], "f", 0).unwrap(), (28, 1));
    for overlong in [&[0x9c, 0x00][..], &[0x80, 0x00], &[0xff, 0x80, 0x00]] {
        assert!(get_varint64(overlong, "f", 0).unwrap_err().is_corruption());
        assert!(get_varint32(overlong, "f", 0).unwrap_err().is_corruption());
    }
    // Zero itself is one zero byte, and a zero byte alone is still valid.
    assert_eq!(get_varint64(&[0x00, 0x00], "f", 0).unwrap(), (0, 1));
}

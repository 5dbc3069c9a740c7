//! Bodies of the fuzz targets, shared by `fuzz/` (cargo-fuzz) and `tests/format_corpus.rs`,
//! which replays every committed corpus file so CI runs them on stable.
//!
//! Each function decodes arbitrary bytes with one decoder; decoding must return `Ok` or `Err`,
//! never panic, hang or allocate beyond the input. Where the bytes decode, the value is encoded
//! again and decoded again, and the two values must be equal (the harness panics if not: that
//! is a bug the fuzzer reports).

use crate::checkpoint::savepoint::{decode_savepoint, encode_savepoint};
use crate::codec::record::{decode_records, put_record};
use crate::codec::varint::{get_varint64, put_varint64};
use crate::keys::{CompositeKey, composite_key};
use crate::lsm::manifest::replay;
use crate::lsm::version::VersionEdit;

/// The names of every fuzz target, as in `fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: &[&str] = &["varint", "record", "composite_key", "savepoint", "manifest"];

/// Runs the target `name` on `data`; unknown names do nothing and return false.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "varint" => varint(data),
        "record" => record(data),
        "composite_key" => composite(data),
        "savepoint" => savepoint(data),
        "manifest" => manifest(data),
        _ => return false,
    }
    true
}

/// Varint decoder.
pub fn varint(data: &[u8]) {
    if let Ok((value, used)) = get_varint64(data, "fuzz", 0) {
        let mut out = Vec::new();
        put_varint64(&mut out, value);
        assert!(out.len() <= used, "canonical encoding is never longer");
        assert_eq!(get_varint64(&out, "fuzz", 0).ok(), Some((value, out.len())));
    }
}

/// A file of framed records.
pub fn record(data: &[u8]) {
    if let Ok(payloads) = decode_records(data, "fuzz") {
        let mut out = Vec::new();
        for p in &payloads {
            put_record(&mut out, p);
        }
        assert_eq!(out, data, "records re-encode to the same bytes");
    }
}

/// Composite key decoder.
pub fn composite(data: &[u8]) {
    if let Ok(k) = CompositeKey::decode(data, "fuzz", 0) {
        assert_eq!(
            composite_key(k.key_group, k.key, k.namespace, k.user_key),
            data
        );
    }
}

/// Savepoint file decoder.
pub fn savepoint(data: &[u8]) {
    if let Ok(sp) = decode_savepoint(data, "fuzz") {
        let bytes = encode_savepoint(&sp).expect("a decoded savepoint re-encodes");
        assert_eq!(decode_savepoint(&bytes, "fuzz").ok(), Some(sp));
    }
}

/// Manifest replay and version edits.
pub fn manifest(data: &[u8]) {
    let _ = replay(data, "fuzz");
    if let Ok(edit) = VersionEdit::decode(data, "fuzz", 0) {
        assert_eq!(
            VersionEdit::decode(&edit.encode(), "fuzz", 0).ok(),
            Some(edit)
        );
    }
}

/// Valid seed inputs for every target: (target, file name, bytes).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use crate::backend::{BackendKind, StateDescriptor, StateKind};
    use crate::checkpoint::savepoint::{Savepoint, SavepointHeader};
    use crate::keys::KeyGroupRange;
    use crate::lsm::format::{ValueKind, internal_key};
    use crate::lsm::version::{FileMeta, RangeTombstone};

    let mut out = Vec::new();
    for (i, v) in [0u64, 127, 128, 300, u64::MAX].iter().enumerate() {
        let mut b = Vec::new();
        put_varint64(&mut b, *v);
        out.push(("varint", format!("seed-{i}"), b));
    }
    let mut records = Vec::new();
    for p in [&b""[..], b"hello", &[7u8; 300]] {
        put_record(&mut records, p);
    }
    out.push(("record", "seed-0".to_string(), records));
    out.push((
        "composite_key",
        "seed-0".to_string(),
        composite_key(7, b"user-1", b"window", b"mapkey"),
    ));
    out.push((
        "composite_key",
        "seed-1".to_string(),
        composite_key(0, b"", b"", b""),
    ));
    let ttl = crate::ttl::TtlConfig::new(std::time::Duration::from_secs(60));
    let sp = Savepoint {
        header: SavepointHeader {
            max_parallelism: 128,
            key_group_range: KeyGroupRange::all(128),
            source: BackendKind::Memory,
            created_ms: 1,
            states: vec![
                StateDescriptor::new("values", StateKind::Value),
                StateDescriptor::new("lists", StateKind::List).with_ttl(ttl),
            ],
        },
        entries: vec![
            vec![
                (composite_key(1, b"a", b"", b""), b"1".to_vec()),
                (composite_key(2, b"b", b"", b""), b"2".to_vec()),
            ],
            vec![(
                composite_key(3, b"c", b"ns", b""),
                vec![9, 0, 0, 0, 0, 0, 0, 0, 1, 7],
            )],
        ],
    };
    if let Ok(bytes) = encode_savepoint(&sp) {
        out.push(("savepoint", "seed-0".to_string(), bytes));
    }
    let edit = VersionEdit {
        next_file_number: Some(9),
        last_sequence: Some(100),
        cf_added: vec![(0, "default".to_string())],
        cf_log_numbers: vec![(0, 3)],
        new_files: vec![(
            0,
            1,
            FileMeta {
                number: 5,
                size: 4096,
                crc32: 1,
                smallest: internal_key(b"a", 1, ValueKind::Put),
                largest: internal_key(b"z", 2, ValueKind::Put),
                smallest_seq: 1,
                largest_seq: 2,
                entries: 10,
                created_ms: 3,
            },
        )],
        tombstones_added: vec![(
            0,
            RangeTombstone {
                start: b"b".to_vec(),
                end: b"c".to_vec(),
                sequence: 50,
            },
        )],
        ..VersionEdit::default()
    };
    out.push(("manifest", "edit-0".to_string(), edit.encode()));
    let mut manifest = Vec::new();
    let mut header = crate::lsm::manifest::MANIFEST_MAGIC.to_vec();
    header.extend_from_slice(&crate::lsm::manifest::MANIFEST_VERSION.to_le_bytes());
    put_record(&mut manifest, &header);
    put_record(&mut manifest, &edit.encode());
    out.push(("manifest", "manifest-0".to_string(), manifest));
    out
}

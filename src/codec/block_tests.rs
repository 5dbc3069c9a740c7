//! Tests of the block format: a BTreeMap model for the iterator, and damaged blocks that must
//! fail with `Error::Corruption` and never panic.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::lsm::iterator::InternalIterator;

type Entries = Vec<(Vec<u8>, Vec<u8>)>;

fn build(entries: &Entries, restart_interval: usize, compression: Compression) -> Vec<u8> {
    let mut builder = BlockBuilder::new(restart_interval, compression);
    for (k, v) in entries {
        builder.add(k, v).unwrap();
    }
    assert_eq!(builder.len(), entries.len());
    builder.finish()
}

fn decode(stored: &[u8]) -> Arc<Block> {
    Arc::new(Block::decode(stored, "test-block", 100).unwrap())
}

#[derive(Clone, Debug)]
enum Op {
    SeekToFirst,
    SeekToLast,
    Seek(Vec<u8>),
    SeekForPrev(Vec<u8>),
    Next,
    Prev,
}

fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
    // A small alphabet so keys share prefixes.
    proptest::collection::vec(0u8..4, 0..8)
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::SeekToFirst),
        Just(Op::SeekToLast),
        key_strategy().prop_map(Op::Seek),
        key_strategy().prop_map(Op::SeekForPrev),
        Just(Op::Next),
        Just(Op::Next),
        Just(Op::Prev),
        Just(Op::Prev),
    ]
}

fn compression_strategy() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        (1i32..4).prop_map(|level| Compression::Zstd { level })
    ]
}

/// Applies `op` to the model position over sorted `keys`; `None` means invalid. Moves on an
/// invalid position are skipped (the trait requires `valid()`).
fn model_step(keys: &[&Vec<u8>], pos: Option<usize>, op: &Op) -> Option<usize> {
    match op {
        Op::SeekToFirst => (!keys.is_empty()).then_some(0),
        Op::SeekToLast => keys.len().checked_sub(1),
        Op::Seek(t) => {
            let i = keys.partition_point(|k| k.as_slice() < t.as_slice());
            (i < keys.len()).then_some(i)
        }
        Op::SeekForPrev(t) => keys
            .partition_point(|k| k.as_slice() <= t.as_slice())
            .checked_sub(1),
        Op::Next => pos.and_then(|i| (i + 1 < keys.len()).then_some(i + 1)),
        Op::Prev => pos.and_then(|i| i.checked_sub(1)),
    }
}

fn apply(it: &mut BlockIter, op: &Op) -> Result<()> {
    match op {
        Op::SeekToFirst => it.seek_to_first(),
        Op::SeekToLast => it.seek_to_last(),
        Op::Seek(t) => it.seek(t),
        Op::SeekForPrev(t) => it.seek_for_prev(t),
        Op::Next if it.valid() => it.next(),
        Op::Prev if it.valid() => it.prev(),
        Op::Next | Op::Prev => Ok(()),
    }
}

/// Drives every kind of move over a possibly damaged block; errors must be corruption.
fn exercise(block: &Arc<Block>) {
    let mut it = block.iter(bytewise);
    let check = |r: Result<()>| {
        if let Err(e) = r {
            assert!(e.is_corruption(), "{e}");
        }
    };
    check(it.seek_to_first());
    for _ in 0..64 {
        if !it.valid() {
            break;
        }
        let _ = (it.key(), it.value());
        check(it.next());
    }
    check(it.seek_to_last());
    for _ in 0..64 {
        if !it.valid() {
            break;
        }
        check(it.prev());
    }
    for target in [&b""[..], b"\x01", b"\x02\x02", b"\xff"] {
        check(it.seek(target));
        check(it.seek_for_prev(target));
    }
}

#[test]
fn empty_block_round_trips() {
    let stored = build(&Vec::new(), 16, Compression::None);
    let block = decode(&stored);
    assert!(block.is_empty());
    let mut it = block.iter(bytewise);
    it.seek_to_first().unwrap();
    assert!(!it.valid());
    it.seek_to_last().unwrap();
    assert!(!it.valid());
    it.seek(b"a").unwrap();
    assert!(!it.valid());
}

#[test]
fn zstd_is_used_when_it_pays() {
    let entries: Entries = (0..200u32)
        .map(|i| (format!("key-{i:05}").into_bytes(), vec![b'v'; 40]))
        .collect();
    let plain = build(&entries, 16, Compression::None);
    let packed = build(&entries, 16, Compression::Zstd { level: 3 });
    assert!(
        packed.len() < plain.len() / 2,
        "{} vs {}",
        packed.len(),
        plain.len()
    );
    assert_eq!(packed[packed.len() - BLOCK_TRAILER_LEN], TYPE_ZSTD);
    // Incompressible payloads are stored as is.
    let noise: Entries = vec![(
        b"k".to_vec(),
        (0..64u8).map(|i| i.wrapping_mul(97)).collect(),
    )];
    let stored = build(&noise, 16, Compression::Zstd { level: 3 });
    assert_eq!(stored[stored.len() - BLOCK_TRAILER_LEN], TYPE_NONE);
    let mut it = decode(&packed).iter(bytewise);
    it.seek(b"key-00150").unwrap();
    assert_eq!(it.key(), b"key-00150");
}

/// Reseals `payload` as a zstd block that declares `declared` bytes.
fn zstd_block(declared: u64, frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint64(&mut out, declared);
    out.extend_from_slice(frame);
    out.push(TYPE_ZSTD);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

#[test]
fn declared_size_bounds_decompression() {
    let payload = vec![0u8; 4096];
    let frame = zstd::bulk::compress(&payload, 3).unwrap();
    let err = Block::decode(&zstd_block(MAX_BLOCK_SIZE as u64 + 1, &frame), "f", 7).unwrap_err();
    assert!(err.to_string().contains("maximum"), "{err}");
    // A frame larger than declared is refused, not truncated.
    let err = Block::decode(&zstd_block(100, &frame), "f", 7).unwrap_err();
    assert!(err.is_corruption());
    let err = Block::decode(&zstd_block(8192, &frame), "f", 7).unwrap_err();
    assert!(err.is_corruption());
}

#[test]
fn errors_name_file_and_offset() {
    let stored = build(&vec![(b"a".to_vec(), b"1".to_vec())], 16, Compression::None);
    let mut bad = stored.clone();
    bad[0] ^= 0x40;
    match Block::decode(&bad, "000042.sst", 4096).unwrap_err() {
        Error::Corruption { file, offset, what } => {
            assert_eq!(file, "000042.sst");
            assert_eq!(offset, 4096);
            assert!(what.contains("crc32"), "{what}");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn every_truncation_and_bit_flip_is_corruption() {
    let entries: Entries = (0..24u8)
        .map(|i| (vec![1, i / 4, i], vec![i; usize::from(i % 5)]))
        .collect();
    for compression in [Compression::None, Compression::Zstd { level: 1 }] {
        let stored = build(&entries, 4, compression);
        for cut in 0..stored.len() {
            assert!(
                Block::decode(&stored[..cut], "t", 0)
                    .unwrap_err()
                    .is_corruption()
            );
        }
        for bit in 0..stored.len() * 8 {
            let mut bad = stored.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(Block::decode(&bad, "t", 0).unwrap_err().is_corruption());
        }
    }
}

#[test]
fn damaged_payload_with_valid_crc_never_panics() {
    let entries: Entries = (0..24u8)
        .map(|i| (vec![1, i / 4, i], vec![i; usize::from(i % 5)]))
        .collect();
    let stored = build(&entries, 4, Compression::None);
    let payload = &stored[..stored.len() - BLOCK_TRAILER_LEN];
    for bit in 0..payload.len() * 8 {
        let mut bad = payload.to_vec();
        bad[bit / 8] ^= 1 << (bit % 8);
        match Block::decode(&seal(&bad, Compression::None), "t", 0) {
            Ok(block) => exercise(&Arc::new(block)),
            Err(e) => assert!(e.is_corruption(), "{e}"),
        }
    }
    for cut in 0..payload.len() {
        if let Ok(block) = Block::decode(&seal(&payload[..cut], Compression::None), "t", 0) {
            exercise(&Arc::new(block));
        }
    }
}

proptest! {
    #[test]
    fn iterator_matches_model(
        model in proptest::collection::btree_map(key_strategy(), proptest::collection::vec(0u8..3, 0..12), 0..60),
        restart_interval in 1usize..20,
        compression in compression_strategy(),
        ops in proptest::collection::vec(op_strategy(), 1..60),
    ) {
        let entries: Entries = model.clone().into_iter().collect();
        let block = decode(&build(&entries, restart_interval, compression));
        let keys: Vec<&Vec<u8>> = model.keys().collect();
        let mut it = block.iter(bytewise);
        let mut pos = None;
        for op in &ops {
            if matches!(op, Op::Next | Op::Prev) && pos.is_none() {
                continue;
            }
            apply(&mut it, op).unwrap();
            pos = model_step(&keys, pos, op);
            prop_assert_eq!(it.valid(), pos.is_some(), "after {:?}", op);
            if let Some(i) = pos {
                prop_assert_eq!(it.key(), keys[i].as_slice());
                prop_assert_eq!(it.value(), model[keys[i]].as_slice());
            }
        }
        // A full walk each way sees every entry once.
        let mut forward = BTreeMap::new();
        it.seek_to_first().unwrap();
        while it.valid() {
            forward.insert(it.key().to_vec(), it.value().to_vec());
            it.next().unwrap();
        }
        prop_assert_eq!(&forward, &model);
        let mut backward = Vec::new();
        it.seek_to_last().unwrap();
        while it.valid() {
            backward.push(it.key().to_vec());
            it.prev().unwrap();
        }
        backward.reverse();
        prop_assert_eq!(backward, keys.into_iter().cloned().collect::<Vec<_>>());
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(block) = Block::decode(&bytes, "t", 0) {
            exercise(&Arc::new(block));
        }
        // Give random payloads a valid crc so decoding reaches the restart and entry checks.
        if let Ok(block) = Block::decode(&seal(&bytes, Compression::None), "t", 0) {
            exercise(&Arc::new(block));
        }
    }
}

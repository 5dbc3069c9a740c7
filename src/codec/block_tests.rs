//! Tests of the block format: a BTreeMap model for the iterator, and damaged blocks that must
//! fail with `Error::Corruption` and never panic.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::codec::iter::InternalIterator;

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
        Just(Compression::Lz4),
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
    // Flattening a damaged block never panics; what it returns lies inside the entry area.
    if let Some(flat) = crate::codec::block_iter::flat_entries(block) {
        let area = block.entries();
        let inside = |s: &[u8]| s.is_empty() || area.as_ptr_range().contains(&s.as_ptr());
        for e in flat.iter() {
            assert!(inside(e.key(area)) && inside(e.value(area)));
        }
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

/// A sealed block of `kind` holding `declared` and `data` after it (a valid crc).
fn typed_block(kind: u8, declared: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint64(&mut out, declared);
    out.extend_from_slice(data);
    out.push(kind);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

#[test]
fn declared_size_bounds_decompression() {
    let payload = vec![0u8; 4096];
    let frame = zstd::bulk::compress(&payload, 3).unwrap();
    let err = Block::decode(
        &typed_block(TYPE_ZSTD, MAX_BLOCK_SIZE as u64 + 1, &frame),
        "f",
        7,
    )
    .unwrap_err();
    assert!(err.to_string().contains("maximum"), "{err}");
    // A frame larger than declared is refused, not truncated.
    let err = Block::decode(&typed_block(TYPE_ZSTD, 100, &frame), "f", 7).unwrap_err();
    assert!(err.is_corruption());
    let err = Block::decode(&typed_block(TYPE_ZSTD, 8192, &frame), "f", 7).unwrap_err();
    assert!(err.is_corruption());
}

#[test]
fn lz4_is_used_when_it_pays_and_reads_back() {
    let entries: Entries = (0..200u32)
        .map(|i| (format!("key-{i:05}").into_bytes(), vec![b'v'; 40]))
        .collect();
    let plain = build(&entries, 16, Compression::None);
    let packed = build(&entries, 16, Compression::Lz4);
    assert!(
        packed.len() < plain.len() / 2,
        "{} vs {}",
        packed.len(),
        plain.len()
    );
    assert_eq!(packed[packed.len() - BLOCK_TRAILER_LEN], TYPE_LZ4);
    let (declared, _) = get_varint64(&packed, "t", 0).unwrap();
    assert_eq!(declared as usize, plain.len() - BLOCK_TRAILER_LEN);
    let mut it = decode(&packed).iter(bytewise);
    it.seek(b"key-00150").unwrap();
    assert_eq!(it.key(), b"key-00150");
    assert_eq!(it.value(), &[b'v'; 40][..]);
    // Incompressible payloads are stored as is.
    let noise: Entries = vec![(
        b"k".to_vec(),
        (0..64u8).map(|i| i.wrapping_mul(97)).collect(),
    )];
    let stored = build(&noise, 16, Compression::Lz4);
    assert_eq!(stored[stored.len() - BLOCK_TRAILER_LEN], TYPE_NONE);
}

/// LZ4 data under a valid crc that is malformed, longer or shorter than declared, or declares
/// more than the maximum is corruption, never a panic or an allocation of the declared size.
#[test]
fn lz4_damage_under_a_valid_crc_is_corruption() {
    let payload = build(&vec![(b"a".to_vec(), vec![7; 300])], 16, Compression::None);
    let payload = &payload[..payload.len() - BLOCK_TRAILER_LEN];
    let compressed = lz4_flex::block::compress(payload);
    let good = typed_block(TYPE_LZ4, payload.len() as u64, &compressed);
    assert!(Block::decode(&good, "f", 7).is_ok());
    let corrupt = |block: Vec<u8>| {
        let err = Block::decode(&block, "f", 7).unwrap_err();
        assert!(err.is_corruption(), "{err}");
        err.to_string()
    };
    let what = corrupt(typed_block(
        TYPE_LZ4,
        MAX_BLOCK_SIZE as u64 + 1,
        &compressed,
    ));
    assert!(what.contains("maximum"), "{what}");
    corrupt(typed_block(TYPE_LZ4, payload.len() as u64 - 1, &compressed));
    corrupt(typed_block(TYPE_LZ4, payload.len() as u64 + 1, &compressed));
    corrupt(typed_block(
        TYPE_LZ4,
        payload.len() as u64,
        &compressed[..compressed.len() - 1],
    ));
    corrupt(typed_block(TYPE_LZ4, 64, &[0xff; 16]));
    // Arbitrary bytes as LZ4 data: any answer but a panic.
    let mut seed = 0x9e37_79b9_u32;
    for len in 0..200 {
        let data: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        let _ = Block::decode(&typed_block(TYPE_LZ4, 512, &data), "f", 7);
    }
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
    for compression in [
        Compression::None,
        Compression::Zstd { level: 1 },
        Compression::Lz4,
    ] {
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

/// `n` entries whose values never compress (`seed` varies them).
fn noise_entries(n: u32, seed: u64) -> Entries {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            let value = (0..100)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            (format!("key-{i:05}").into_bytes(), value)
        })
        .collect()
}

fn compressible_entries(n: u32) -> Entries {
    (0..n)
        .map(|i| (format!("key-{i:05}").into_bytes(), vec![b'v'; 100]))
        .collect()
}

fn finish_with(builder: &mut BlockBuilder, entries: &Entries, out: &mut Vec<u8>) -> u8 {
    for (k, v) in entries {
        builder.add(k, v).unwrap();
    }
    builder.finish_into(out);
    // Every block still round-trips, whatever it was stored as.
    let block = decode(out);
    let mut it = block.iter(bytewise);
    it.seek_to_first().unwrap();
    for (k, v) in entries {
        assert!(it.valid());
        assert_eq!((it.key(), it.value()), (k.as_slice(), v.as_slice()));
        it.next().unwrap();
    }
    assert!(!it.valid());
    out[out.len() - BLOCK_TRAILER_LEN]
}

#[test]
fn compression_is_skipped_after_a_run_of_incompressible_blocks() {
    let mut builder = BlockBuilder::new(16, Compression::Zstd { level: 3 });
    let mut out = Vec::new();
    for seed in 0..u64::from(SKIP_AFTER) {
        assert_eq!(
            finish_with(&mut builder, &noise_entries(30, seed + 1), &mut out),
            TYPE_NONE
        );
    }
    // The next SKIP_BLOCKS blocks are not even tried, compressible or not.
    for _ in 0..SKIP_BLOCKS {
        assert_eq!(
            finish_with(&mut builder, &compressible_entries(30), &mut out),
            TYPE_NONE
        );
    }
    // Then zstd is tried again, and a success resets the run.
    assert_eq!(
        finish_with(&mut builder, &compressible_entries(30), &mut out),
        TYPE_ZSTD
    );
    for seed in 0..u64::from(SKIP_AFTER) - 1 {
        assert_eq!(
            finish_with(&mut builder, &noise_entries(30, seed + 50), &mut out),
            TYPE_NONE
        );
    }
    assert_eq!(
        finish_with(&mut builder, &compressible_entries(30), &mut out),
        TYPE_ZSTD
    );
    // After a probe that fails, the builder skips again right away.
    for seed in 0..u64::from(SKIP_AFTER) {
        finish_with(&mut builder, &noise_entries(30, seed + 90), &mut out);
    }
    for _ in 0..SKIP_BLOCKS {
        finish_with(&mut builder, &compressible_entries(30), &mut out);
    }
    assert_eq!(
        finish_with(&mut builder, &noise_entries(30, 7), &mut out),
        TYPE_NONE
    );
    assert_eq!(
        finish_with(&mut builder, &compressible_entries(30), &mut out),
        TYPE_NONE
    );
}

#[test]
fn shared_prefix_len_matches_a_bytewise_count() {
    let keys: [&[u8]; 9] = [
        b"",
        b"a",
        b"abcdefg",
        b"abcdefgh",
        b"abcdefghi",
        b"abcdefgh\x00jklmnopq",
        b"abcdefghijklmnopq",
        b"abcdefghijklmnopr",
        b"abcdefghijklmnopqrstuvwxyz0123456789",
    ];
    for a in keys {
        for b in keys {
            let expected = a.iter().zip(b).take_while(|(x, y)| x == y).count();
            assert_eq!(shared_prefix_len(a, b), expected, "{a:?} {b:?}");
        }
    }
}

/// Stores `n` compressible blocks and counts how many came out compressed.
fn compressed_of(builder: &mut BlockBuilder, n: u32, out: &mut Vec<u8>) -> u32 {
    (0..n)
        .map(|_| u32::from(finish_with(builder, &compressible_entries(30), out) == TYPE_ZSTD))
        .sum()
}

#[test]
fn failed_probes_double_the_skip_up_to_a_cap() {
    let mut builder = BlockBuilder::new(16, Compression::Zstd { level: 3 });
    let mut out = Vec::new();
    let mut noise = 1;
    let mut fail = |builder: &mut BlockBuilder, out: &mut Vec<u8>| {
        noise += 1;
        assert_eq!(
            finish_with(builder, &noise_entries(30, noise), out),
            TYPE_NONE
        );
    };
    for _ in 0..SKIP_AFTER {
        fail(&mut builder, &mut out);
    }
    // Skips of 32, 64, 128, 256, 512, 512 blocks, each ended by a probe that fails.
    let mut skip = SKIP_BLOCKS;
    for _ in 0..6 {
        assert_eq!(
            compressed_of(&mut builder, skip, &mut out),
            0,
            "skip {skip}"
        );
        fail(&mut builder, &mut out);
        skip = (skip * 2).min(MAX_SKIP_BLOCKS);
    }
    assert_eq!(skip, MAX_SKIP_BLOCKS);
    assert_eq!(compressed_of(&mut builder, MAX_SKIP_BLOCKS, &mut out), 0);
    // The probe after the capped skip succeeds: no more skipping, and a new run of failures
    // starts again from the shortest skip.
    assert_eq!(compressed_of(&mut builder, 3, &mut out), 3);
    for _ in 0..SKIP_AFTER {
        fail(&mut builder, &mut out);
    }
    assert_eq!(compressed_of(&mut builder, SKIP_BLOCKS, &mut out), 0);
    assert_eq!(compressed_of(&mut builder, 1, &mut out), 1);
}

#[test]
fn damaged_skipped_blocks_are_corruption() {
    let mut builder = BlockBuilder::new(16, Compression::Zstd { level: 3 });
    let mut out = Vec::new();
    for seed in 0..u64::from(SKIP_AFTER) {
        finish_with(&mut builder, &noise_entries(30, seed + 1), &mut out);
    }
    finish_with(&mut builder, &compressible_entries(30), &mut out);
    let stored = out.clone();
    assert_eq!(stored[stored.len() - BLOCK_TRAILER_LEN], TYPE_NONE);
    for at in (0..stored.len()).step_by(7) {
        let mut bad = stored.clone();
        bad[at] ^= 0x10;
        for result in [
            Block::decode(&bad, "f.sst", 300),
            Block::decode_copied(&bad, Arc::from("f.sst"), 300),
        ] {
            match result.unwrap_err() {
                Error::Corruption { file, offset, .. } => {
                    assert_eq!((file.as_str(), offset), ("f.sst", 300));
                }
                other => panic!("{other}"),
            }
        }
    }
    let err = Block::decode(&stored[..stored.len() - 1], "f.sst", 300).unwrap_err();
    assert!(err.is_corruption());
}

/// Internal-key order as in SST files: user key ascending, then the 8-byte trailer descending.
fn internal_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let (ua, ta) = a.split_at(a.len().saturating_sub(8));
    let (ub, tb) = b.split_at(b.len().saturating_sub(8));
    ua.cmp(ub).then_with(|| tb.cmp(ta))
}

proptest! {
    /// `seek` (binary search over restart keys, then a scan) lands where a linear scan of the
    /// sorted entries does, for both orders and any restart interval.
    #[test]
    fn seek_matches_linear_scan(
        user_keys in proptest::collection::btree_set(proptest::collection::vec(0u8..3, 0..6), 0..150),
        versions in 1u8..3,
        restart_interval in 1usize..20,
        internal in any::<bool>(),
        targets in proptest::collection::vec((proptest::collection::vec(0u8..3, 0..6), 0u8..4), 1..40),
    ) {
        let order: Comparator = if internal { internal_order } else { bytewise };
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for user_key in &user_keys {
            for v in 0..versions {
                let mut key = user_key.clone();
                if internal {
                    key.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9 - v]);
                } else {
                    key.push(v);
                }
                keys.push(key);
            }
        }
        keys.sort_by(|a, b| order(a, b));
        let entries: Entries = keys.iter().map(|k| (k.clone(), k.repeat(2))).collect();
        let block = decode(&build(&entries, restart_interval, Compression::None));
        let mut it = block.iter(order);
        // Index blocks (interval 1) always flatten; others only if no key shares a prefix.
        let flat = crate::codec::block_iter::flat_entries(&block);
        prop_assert!(restart_interval > 1 || flat.is_some());
        if let Some(flat) = &flat {
            prop_assert_eq!(flat.len(), entries.len());
        }
        for (user_key, trailer) in &targets {
            let mut target = user_key.clone();
            if internal {
                target.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7 + trailer]);
            } else {
                target.push(*trailer);
            }
            it.seek(&target).unwrap();
            let expected = entries.iter().find(|(k, _)| order(k, &target) != std::cmp::Ordering::Less);
            if let Some(flat) = &flat {
                // The flat seek (a binary search over whole keys) lands on the same entry.
                let area = block.entries();
                let at = flat
                    .partition_point(|e| order(e.key(area), &target) == std::cmp::Ordering::Less);
                match expected {
                    Some((k, v)) => {
                        prop_assert_eq!(flat[at].key(area), k.as_slice());
                        prop_assert_eq!(flat[at].value(area), v.as_slice());
                    }
                    None => prop_assert_eq!(at, flat.len()),
                }
            }
            match expected {
                Some((k, v)) => {
                    prop_assert!(it.valid());
                    prop_assert_eq!(it.key(), k.as_slice());
                    prop_assert_eq!(it.value(), v.as_slice());
                }
                None => prop_assert!(!it.valid()),
            }
        }
    }
}

/// A restart point moved inside an entry, with the restart array still in shape (increasing,
/// within the entry area), fails the forward walk — which `verify` runs — naming the restart
/// point; before, only a backward walk (which decodes from restart points) tripped over it.
#[test]
fn restart_points_inside_entries_are_corruption() {
    let entries: Entries = (0..24u8).map(|i| (vec![1, i / 4, i], vec![i; 3])).collect();
    let stored = build(&entries, 4, Compression::None);
    let payload = &stored[..stored.len() - BLOCK_TRAILER_LEN];
    let count = u32::from_le_bytes(payload[payload.len() - 4..].try_into().unwrap()) as usize;
    let restarts_at = payload.len() - 4 - 4 * count;
    // Entry starts, from the lengths (all single-byte varints here).
    let mut starts = Vec::new();
    let mut pos = 0;
    while pos < restarts_at {
        starts.push(pos);
        pos += 3 + usize::from(payload[pos + 1]) + usize::from(payload[pos + 2]);
    }
    assert_eq!(starts.len(), entries.len());
    let restart = |i: usize| {
        let at = restarts_at + 4 * i;
        u32::from_le_bytes(payload[at..at + 4].try_into().unwrap()) as usize
    };
    let mut checked = 0;
    for index in 1..count {
        let upper = if index + 1 < count {
            restart(index + 1)
        } else {
            restarts_at
        };
        for offset in restart(index - 1) + 1..upper {
            if starts.contains(&offset) {
                continue;
            }
            let mut bad = payload.to_vec();
            let at = restarts_at + 4 * index;
            bad[at..at + 4].copy_from_slice(&(offset as u32).to_le_bytes());
            let block = Arc::new(Block::decode(&seal(&bad, Compression::None), "t", 0).unwrap());
            let mut it = block.iter(bytewise);
            let mut walk = it.seek_to_first();
            while walk.is_ok() && it.valid() {
                walk = it.next();
            }
            let err = walk.expect_err("the forward walk must stop at the moved restart point");
            assert!(err.is_corruption(), "{err}");
            assert!(
                err.to_string()
                    .contains(&format!("restart point {index} at payload offset {offset}")),
                "{err}"
            );
            checked += 1;
        }
    }
    assert!(checked > 50, "{checked}");
}

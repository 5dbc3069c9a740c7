//! Compaction job tests: a model test comparing `resolve` before and after the job at every live
//! snapshot and the latest sequence (with range tombstones, merges, and older data below the
//! output when not bottommost), compaction filter cases, file cutting, and cleanup on errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;
use crate::lsm::format::{MAX_SEQUENCE, compare_internal, user_key};
use crate::lsm::merge::{AppendOperator, VersionRef, resolve};
use crate::lsm::merge_iter::{MergingIterator, VecIterator};
use crate::lsm::sst::SstReader;

type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// One owned version of a user key.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Version {
    sequence: u64,
    kind: ValueKind,
    value: Vec<u8>,
}

fn params<'a>(sst: &'a SstOptions) -> JobParams<'a> {
    JobParams {
        fs: &crate::fs::StdFs,
        level: 1,
        bottommost: false,
        snapshots: &[],
        tombstones: &[],
        merge_operator: Some(&AppendOperator),
        filter: None,
        sst_options: sst,
        target_file_size: 1 << 20,
        cut_prefix_len: 0,
        now_ms: 1_700_000_000_000,
    }
}

fn entry(key: &[u8], sequence: u64, kind: ValueKind, value: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (internal_key(key, sequence, kind), value.to_vec())
}

fn sorted(mut entries: Entries) -> Entries {
    entries.sort_by(|a, b| compare_internal(&a.0, &b.0));
    entries
}

/// A `new_file` that numbers files from 1 in `dir`.
fn numbering(dir: &Path) -> impl FnMut() -> Result<(u64, PathBuf)> + '_ {
    let mut next = 0u64;
    move || {
        next += 1;
        Ok((next, dir.join(format!("{next:06}.sst"))))
    }
}

/// Runs the job over `children` (each sorted) and returns the output and each file's entries,
/// after checking the files' order and properties.
fn run_children(
    dir: &Path,
    children: Vec<Entries>,
    params: &JobParams<'_>,
) -> Result<(JobOutput, Vec<Entries>)> {
    let children: Vec<Box<dyn InternalIterator>> = children
        .into_iter()
        .map(|c| Box::new(VecIterator::new(c, compare_internal)) as Box<dyn InternalIterator>)
        .collect();
    let mut input = MergingIterator::new(children, compare_internal);
    let output = run(&mut input, params, &mut numbering(dir))?;
    let mut files = Vec::new();
    for (number, meta) in &output.files {
        let reader = SstReader::open(&meta.path, *number, None)?;
        let mut iter = reader.iter();
        let mut entries = Vec::new();
        iter.seek_to_first()?;
        while iter.valid() {
            entries.push((iter.key().to_vec(), iter.value().to_vec()));
            iter.next()?;
        }
        check_file(&entries, meta, params.now_ms);
        files.push(entries);
    }
    let all: Vec<_> = files.iter().flatten().collect();
    assert!(
        all.windows(2)
            .all(|w| compare_internal(&w[0].0, &w[1].0).is_lt()),
        "outputs sorted and non-overlapping"
    );
    for pair in files.windows(2) {
        let (Some(last), Some(first)) = (pair[0].last(), pair[1].first()) else {
            panic!("empty output file");
        };
        assert!(
            user_key(&last.0) < user_key(&first.0),
            "user key split across files"
        );
    }
    let total: u64 = output
        .files
        .iter()
        .map(|(_, m)| m.properties.entry_count)
        .sum();
    assert_eq!(output.entries_out, total);
    assert_eq!(
        output.entries_in,
        output.entries_out + output.entries_dropped
    );
    assert_eq!(
        output.bytes_written,
        output.files.iter().map(|(_, m)| m.file_size).sum::<u64>()
    );
    Ok((output, files))
}

fn check_file(entries: &Entries, meta: &SstMetadata, now_ms: u64) {
    let props = &meta.properties;
    assert!(!entries.is_empty(), "no empty output files");
    assert_eq!(props.entry_count, entries.len() as u64);
    assert_eq!(Some(&props.smallest_key), entries.first().map(|e| &e.0));
    assert_eq!(Some(&props.largest_key), entries.last().map(|e| &e.0));
    let seqs: Vec<u64> = entries.iter().map(|e| parse(&e.0).1.sequence).collect();
    assert_eq!(Some(props.smallest_seq), seqs.iter().copied().min());
    assert_eq!(Some(props.largest_seq), seqs.iter().copied().max());
    assert_eq!(props.creation_time_ms, now_ms);
    let on_disk = std::fs::metadata(&meta.path).map(|m| m.len()).ok();
    assert_eq!(on_disk, Some(meta.file_size));
}

fn parse(key: &[u8]) -> (Vec<u8>, Version) {
    let p = parse_internal_key(key, "test", 0).unwrap();
    let version = Version {
        sequence: p.sequence,
        kind: p.kind,
        value: Vec::new(),
    };
    (p.user_key.to_vec(), version)
}

/// Entries grouped per user key, versions newest first.
fn by_key<'e>(
    entries: impl IntoIterator<Item = &'e (Vec<u8>, Vec<u8>)>,
) -> BTreeMap<Vec<u8>, Vec<Version>> {
    let mut map: BTreeMap<Vec<u8>, Vec<Version>> = BTreeMap::new();
    for (key, value) in entries {
        let (user, mut version) = parse(key);
        version.value = value.clone();
        map.entry(user).or_default().push(version);
    }
    map
}

/// What a reader at `snapshot` sees of `key` through `versions` (newest first).
fn read(
    key: &[u8],
    versions: &[Version],
    snapshot: u64,
    tombstones: &[RangeTombstone],
    merge: Option<&dyn MergeOperator>,
) -> Option<Vec<u8>> {
    let refs = versions.iter().map(|v| VersionRef {
        sequence: v.sequence,
        kind: v.kind,
        value: &v.value,
    });
    let covered = |seq| tombstones.iter().any(|t| t.covers(key, seq, snapshot));
    resolve(key, refs, snapshot, covered, merge)
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    Merge(u8, u8),
    RangeDelete(u8, u8),
}

const KEYS: u8 = 4;

fn key_of(k: u8) -> Vec<u8> {
    vec![b'a' + k]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0..KEYS).prop_map(Op::Delete),
        4 => (0..KEYS, any::<u8>()).prop_map(|(k, v)| Op::Merge(k, v)),
        1 => (0..KEYS, 1..3u8).prop_map(|(k, len)| Op::RangeDelete(k, len)),
    ]
}

#[derive(Clone, Debug)]
struct Case {
    history: Vec<Op>,
    snapshots: Vec<u64>,
    bottommost: bool,
    with_operator: bool,
    /// Per key: how many of its oldest versions lie below the output (when not bottommost).
    below: Vec<usize>,
    /// Child of the merging iterator each input entry goes to.
    child_of: Vec<usize>,
    target_file_size: u64,
    cut_prefix_len: usize,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(op_strategy(), 1..40),
        proptest::collection::btree_set(0u64..45, 0..5),
        any::<bool>(),
        prop_oneof![4 => Just(true), 1 => Just(false)],
        proptest::collection::vec(0usize..4, KEYS as usize),
        proptest::collection::vec(0usize..3, 40),
        (prop_oneof![1u64..300, Just(1u64 << 20)], 0usize..4),
    )
        .prop_map(
            |(
                history,
                snapshots,
                bottommost,
                with_operator,
                below,
                child_of,
                (target_file_size, cut_prefix_len),
            )| {
                Case {
                    history,
                    snapshots: snapshots.into_iter().collect(),
                    bottommost,
                    with_operator,
                    below,
                    child_of,
                    target_file_size,
                    cut_prefix_len,
                }
            },
        )
}

fn check_case(case: &Case) -> Result<()> {
    let mut tombstones = Vec::new();
    let mut versions: BTreeMap<Vec<u8>, Vec<Version>> = BTreeMap::new();
    for (i, op) in case.history.iter().enumerate() {
        let sequence = i as u64 + 1;
        let (k, kind, value) = match *op {
            Op::Put(k, v) => (k, ValueKind::Put, vec![b'p', v]),
            Op::Delete(k) => (k, ValueKind::Delete, Vec::new()),
            Op::Merge(k, v) => (k, ValueKind::Merge, vec![v]),
            Op::RangeDelete(k, len) => {
                tombstones.push(RangeTombstone {
                    start: key_of(k),
                    end: key_of(k + len),
                    sequence,
                });
                continue;
            }
        };
        let version = Version {
            sequence,
            kind,
            value,
        };
        versions.entry(key_of(k)).or_default().insert(0, version);
    }
    // Split each key's versions into the job's input and older data below the output.
    let mut input: Entries = Vec::new();
    let mut below: BTreeMap<Vec<u8>, Vec<Version>> = BTreeMap::new();
    for (k, list) in &versions {
        let below_count = if case.bottommost {
            0
        } else {
            case.below[usize::from(k[0] - b'a')].min(list.len())
        };
        let (upper, lower) = list.split_at(list.len() - below_count);
        below.insert(k.clone(), lower.to_vec());
        input.extend(upper.iter().map(|v| entry(k, v.sequence, v.kind, &v.value)));
    }
    let input = sorted(input);
    let mut children: Vec<Entries> = vec![Vec::new(); 3];
    for (i, e) in input.iter().enumerate() {
        children[case.child_of.get(i).copied().unwrap_or(0)].push(e.clone());
    }

    let sst = SstOptions {
        block_size: 128,
        ..SstOptions::default()
    };
    let operator = AppendOperator;
    let merge: Option<&dyn MergeOperator> = case.with_operator.then_some(&operator as _);
    let params = JobParams {
        fs: &crate::fs::StdFs,
        level: 2,
        bottommost: case.bottommost,
        snapshots: &case.snapshots,
        tombstones: &tombstones,
        merge_operator: merge,
        filter: None,
        sst_options: &sst,
        target_file_size: case.target_file_size,
        cut_prefix_len: case.cut_prefix_len,
        now_ms: 42,
    };
    let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
    let (output, files) = run_children(dir.path(), children, &params)?;
    let prefix = |key: &[u8]| {
        let user = &key[..key.len() - 8];
        user[..user.len().min(case.cut_prefix_len)].to_vec()
    };
    for pair in files.windows(2) {
        if let (Some(last), Some(first)) = (pair[0].last(), pair[1].first())
            && case.cut_prefix_len > 0
        {
            assert_ne!(
                prefix(&last.0),
                prefix(&first.0),
                "a prefix spans two files"
            );
        }
    }
    assert_eq!(output.entries_in, input.len() as u64);
    let before = by_key(&input);
    let after = by_key(files.iter().flatten());
    if case.bottommost {
        for (k, list) in &after {
            let oldest = list.last().map(|v| v.kind);
            assert_ne!(
                oldest,
                Some(ValueKind::Delete),
                "bottommost keeps a useless tombstone of {k:?}"
            );
        }
    }
    let readers = case
        .snapshots
        .iter()
        .copied()
        .chain([case.history.len() as u64, MAX_SEQUENCE]);
    for reader in readers {
        for k in 0..KEYS {
            let key = key_of(k);
            let lower = below.get(&key).cloned().unwrap_or_default();
            let mut old = before.get(&key).cloned().unwrap_or_default();
            let mut new = after.get(&key).cloned().unwrap_or_default();
            old.extend(lower.iter().cloned());
            new.extend(lower.iter().cloned());
            assert_eq!(
                read(&key, &new, reader, &tombstones, merge),
                read(&key, &old, reader, &tombstones, merge),
                "key {key:?} at {reader}: input {old:?}, output {new:?}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn reads_are_unchanged_at_every_snapshot(case in case_strategy()) {
        check_case(&case).unwrap();
    }
}

/// Values starting with `EXPIRED` are removed, values starting with `b'c'` get a `!` appended.
#[derive(Debug)]
struct TtlFilter;

const EXPIRED: u8 = 0xff;

impl CompactionFilter for TtlFilter {
    fn filter(&self, _level: usize, _key: &[u8], value: &[u8]) -> FilterDecision {
        match value.first() {
            Some(&EXPIRED) => FilterDecision::Remove,
            Some(b'c') => FilterDecision::Change([value, b"!"].concat()),
            _ => FilterDecision::Keep,
        }
    }
}

/// Runs one sorted input through the job and returns the surviving versions per user key.
fn compact_entries(
    input: Entries,
    params: &JobParams<'_>,
) -> (JobOutput, BTreeMap<Vec<u8>, Vec<Version>>) {
    let dir = tempfile::tempdir().unwrap();
    let (output, files) = run_children(dir.path(), vec![sorted(input)], params).unwrap();
    let map = by_key(files.iter().flatten());
    (output, map)
}

fn v(sequence: u64, kind: ValueKind, value: &[u8]) -> Version {
    Version {
        sequence,
        kind,
        value: value.to_vec(),
    }
}

#[test]
fn filter_removes_expired_values_at_the_bottom() {
    let sst = SstOptions::default();
    let params = JobParams {
        bottommost: true,
        filter: Some(&TtlFilter),
        ..params(&sst)
    };
    let input = vec![
        entry(b"a", 2, ValueKind::Put, &[EXPIRED, 1]),
        entry(b"a", 1, ValueKind::Put, b"old"),
        entry(b"b", 3, ValueKind::Put, b"fresh"),
    ];
    let (output, map) = compact_entries(input, &params);
    assert_eq!(map.get(&b"a"[..]), None);
    assert_eq!(
        map.get(&b"b"[..]),
        Some(&vec![v(3, ValueKind::Put, b"fresh")])
    );
    assert_eq!(
        (
            output.entries_in,
            output.entries_out,
            output.entries_dropped
        ),
        (3, 1, 2)
    );
}

#[test]
fn filter_writes_a_tombstone_above_older_data() {
    let sst = SstOptions::default();
    let params = JobParams {
        filter: Some(&TtlFilter),
        ..params(&sst)
    };
    let input = vec![
        entry(b"a", 5, ValueKind::Merge, &[1]),
        entry(b"a", 4, ValueKind::Put, &[EXPIRED]),
        entry(b"a", 3, ValueKind::Put, b"old"),
    ];
    let (_, map) = compact_entries(input, &params);
    let out = map.get(&b"a"[..]).cloned().unwrap_or_default();
    // The merged value [EXPIRED, 1] is removed: a Delete at its sequence hides the data below.
    assert_eq!(out, vec![v(5, ValueKind::Delete, b"")]);
    let mut through = out.clone();
    through.push(v(1, ValueKind::Put, b"below"));
    assert_eq!(
        read(b"a", &through, MAX_SEQUENCE, &[], Some(&AppendOperator)),
        None
    );
}

#[test]
fn filter_changes_values() {
    let sst = SstOptions::default();
    let params = JobParams {
        filter: Some(&TtlFilter),
        ..params(&sst)
    };
    let input = vec![entry(b"k", 7, ValueKind::Put, b"cat")];
    let (_, map) = compact_entries(input, &params);
    assert_eq!(
        map.get(&b"k"[..]),
        Some(&vec![v(7, ValueKind::Put, b"cat!")])
    );
}

#[test]
fn filter_never_touches_values_a_snapshot_sees() {
    let sst = SstOptions::default();
    for bottommost in [false, true] {
        let params = JobParams {
            bottommost,
            snapshots: &[3, 6],
            filter: Some(&TtlFilter),
            ..params(&sst)
        };
        let input = vec![
            // Only snapshot 3 sees the expired value at 2; snapshot 6 sees "cold" at 5.
            entry(b"a", 2, ValueKind::Put, &[EXPIRED]),
            entry(b"b", 5, ValueKind::Put, b"cold"),
            // Latest sees the expired value at 8, snapshot 3 sees "old" at 1.
            entry(b"c", 8, ValueKind::Put, &[EXPIRED]),
            entry(b"c", 1, ValueKind::Put, b"old"),
        ];
        let (_, map) = compact_entries(input, &params);
        assert_eq!(
            map.get(&b"a"[..]),
            Some(&vec![v(2, ValueKind::Put, &[EXPIRED])])
        );
        assert_eq!(
            map.get(&b"b"[..]),
            Some(&vec![v(5, ValueKind::Put, b"cold")])
        );
        let c = map.get(&b"c"[..]).cloned().unwrap_or_default();
        assert_eq!(
            c,
            vec![v(8, ValueKind::Delete, b""), v(1, ValueKind::Put, b"old")]
        );
        assert_eq!(read(b"c", &c, 3, &[], None), Some(b"old".to_vec()));
        assert_eq!(read(b"c", &c, MAX_SEQUENCE, &[], None), None);
    }
}

#[test]
fn merges_fold_within_stripes() {
    let sst = SstOptions::default();
    let params = JobParams {
        snapshots: &[4],
        ..params(&sst)
    };
    let input = vec![
        entry(b"k", 9, ValueKind::Merge, b"d"),
        entry(b"k", 8, ValueKind::Merge, b"c"),
        entry(b"k", 4, ValueKind::Merge, b"b"),
        entry(b"k", 3, ValueKind::Put, b"a"),
        entry(b"k", 2, ValueKind::Put, b"hidden"),
        entry(b"m", 6, ValueKind::Merge, b"y"),
        entry(b"m", 5, ValueKind::Merge, b"x"),
    ];
    let (_, map) = compact_entries(input.clone(), &params);
    assert_eq!(
        map.get(&b"k"[..]),
        Some(&vec![
            v(9, ValueKind::Merge, b"cd"),
            v(4, ValueKind::Put, b"ab")
        ])
    );
    // Not bottommost: operands stay operands (there may be a base below).
    assert_eq!(
        map.get(&b"m"[..]),
        Some(&vec![v(6, ValueKind::Merge, b"xy")])
    );
    let bottom = JobParams {
        bottommost: true,
        ..params
    };
    let (_, map) = compact_entries(input.clone(), &bottom);
    assert_eq!(map.get(&b"m"[..]), Some(&vec![v(6, ValueKind::Put, b"xy")]));
    // Without an operator, operands are kept as they are.
    let raw = JobParams {
        merge_operator: None,
        ..params
    };
    let (_, map) = compact_entries(input, &raw);
    assert_eq!(
        map.get(&b"k"[..]),
        Some(&vec![
            v(9, ValueKind::Merge, b"d"),
            v(8, ValueKind::Merge, b"c"),
            v(4, ValueKind::Merge, b"b"),
            v(3, ValueKind::Put, b"a"),
        ])
    );
}

/// With a cut prefix, full files are cut only where the prefix changes: each prefix (a key
/// group in the LSM backend) lies in exactly one output file, a file holds a run of them, and a
/// prefix larger than the target makes one larger file instead of being split.
#[test]
fn files_are_cut_only_between_prefixes() {
    let sst = SstOptions::default().block_size(256);
    let params = JobParams {
        target_file_size: 1024,
        cut_prefix_len: 2,
        ..params(&sst)
    };
    let mut input = Vec::new();
    let mut sequence = 0;
    for group in 0..40u16 {
        // Group 7 alone is several times the target size; the others are small.
        let keys = if group == 7 {
            400
        } else {
            u32::from(group % 5) * 3 + 1
        };
        for k in 0..keys {
            let mut key = group.to_be_bytes().to_vec();
            key.extend_from_slice(format!("k{k:05}").as_bytes());
            sequence += 1;
            input.push(entry(&key, sequence, ValueKind::Put, &[7; 40]));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (output, files) = run_children(dir.path(), vec![sorted(input.clone())], &params).unwrap();
    assert_eq!(output.entries_out, input.len() as u64);
    assert!(files.len() >= 3, "{} files", files.len());
    let mut file_of_group = std::collections::BTreeMap::new();
    for (n, file) in files.iter().enumerate() {
        let mut groups = std::collections::BTreeSet::new();
        for (key, _) in file {
            let group = [key[0], key[1]];
            assert_eq!(
                *file_of_group.entry(group).or_insert(n),
                n,
                "group {group:?} split"
            );
            groups.insert(group);
        }
        assert!(!groups.is_empty());
    }
    assert_eq!(file_of_group.len(), 40);
    // Small groups share files: fewer files than groups.
    assert!(files.len() < 20, "{} files", files.len());
    // Without the prefix rule the large group is split across files.
    let plain = JobParams {
        cut_prefix_len: 0,
        ..params
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, files) = run_children(dir.path(), vec![sorted(input)], &plain).unwrap();
    let holding_group_7 = files
        .iter()
        .filter(|f| f.iter().any(|(key, _)| key[..2] == 7u16.to_be_bytes()))
        .count();
    assert!(holding_group_7 > 1, "{holding_group_7}");
}

#[test]
fn files_are_cut_between_user_keys() {
    let sst = SstOptions {
        block_size: 256,
        ..SstOptions::default()
    };
    let params = JobParams {
        target_file_size: 1024,
        ..params(&sst)
    };
    let mut input = Vec::new();
    for k in 0..200u32 {
        let key = format!("key{k:05}");
        for seq in 0..3u64 {
            // All versions below the snapshot stay: 3 versions per key.
            let sequence = u64::from(k) * 3 + seq + 1;
            input.push(entry(key.as_bytes(), sequence, ValueKind::Put, &[7; 40]));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    // Latest stripe only: one version per key survives.
    let (output, files) = run_children(dir.path(), vec![sorted(input.clone())], &params).unwrap();
    assert!(files.len() >= 4, "{} files", files.len());
    assert_eq!(output.entries_out, 200);
    // With every version kept by a snapshot per version, keys still never split.
    let snapshots: Vec<u64> = (1..=600).collect();
    let params = JobParams {
        snapshots: &snapshots,
        ..params
    };
    let dir = tempfile::tempdir().unwrap();
    let (output, files) = run_children(dir.path(), vec![sorted(input)], &params).unwrap();
    assert!(files.len() >= 10, "{} files", files.len());
    assert_eq!(output.entries_out, 600);
    assert!(files.iter().all(|f| f.len() % 3 == 0));
}

#[test]
fn empty_output_makes_no_file() {
    let sst = SstOptions::default();
    let params = JobParams {
        bottommost: true,
        ..params(&sst)
    };
    let input = vec![
        entry(b"a", 2, ValueKind::Delete, b""),
        entry(b"a", 1, ValueKind::Put, b"x"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let (output, files) = run_children(dir.path(), vec![input], &params).unwrap();
    assert!(output.files.is_empty() && files.is_empty());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn errors_delete_the_outputs() {
    let sst = SstOptions::default();
    let params = JobParams {
        target_file_size: 1,
        ..params(&sst)
    };
    let input: Entries = (0..50u32)
        .map(|k| {
            entry(
                format!("k{k:03}").as_bytes(),
                u64::from(k) + 1,
                ValueKind::Put,
                b"v",
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // A corrupt entry (a key without trailer) after 30 files were written.
    let mut corrupt = input[..30].to_vec();
    corrupt.push((b"z".to_vec(), Vec::new()));
    let mut failing = VecIterator::new(corrupt, |a, b| a.cmp(b));
    let err = run(&mut failing, &params, &mut numbering(dir.path())).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // A failing file allocation after some files were written.
    let mut handed = 0;
    let mut inner = numbering(dir.path());
    let mut new_file = || {
        handed += 1;
        if handed > 5 {
            return Err(Error::invalid("out of file numbers"));
        }
        inner()
    };
    let mut iter = VecIterator::new(input, compare_internal);
    assert!(run(&mut iter, &params, &mut new_file).is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn rejects_unordered_input_and_range_tombstone_entries() {
    let sst = SstOptions::default();
    let params = params(&sst);
    let dir = tempfile::tempdir().unwrap();
    // Sorted by bytes, not by internal key: seq 1 before seq 2 of the same key.
    let unordered = vec![
        entry(b"a", 1, ValueKind::Put, b"x"),
        entry(b"a", 2, ValueKind::Put, b"y"),
    ];
    let mut iter = VecIterator::new(unordered, |a, b| a.cmp(b));
    assert!(run(&mut iter, &params, &mut numbering(dir.path())).is_err());
    let ranged = vec![entry(b"a", 1, ValueKind::RangeDelete, b"z")];
    let mut iter = VecIterator::new(ranged, compare_internal);
    assert!(run(&mut iter, &params, &mut numbering(dir.path())).is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

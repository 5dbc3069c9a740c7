//! The LSM backend beyond the conformance suite: TTL cleanup by the compaction filter (reads,
//! savepoints, disk, periodic compaction of cold files), incremental checkpoints whose upload
//! bytes stay bounded by the changed data, shared-file reference counts under retention,
//! byte-exact restore, rescaling 2→1, 1→3, 3→2, 2→3 and 8→1 against a model (and a proptest
//! of random rescales against a `BTreeMap`) with a check that a restored store holds no byte of a
//! key group it does not own and was neither clipped nor compacted, flushes cut between key
//! groups, a savepoint round trip
//! memory → lsm → fs → memory, and a crash-during-checkpoint kill test.
//!
//! Randomized parts read `FLOWSTATE_SEED`; the kill test does 4 kills by default and 60 with
//! `FLOWSTATE_SOAK=1 cargo test --test lsm_backend killed`.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowstate::backend::lsm::LsmBackendOptions;
use flowstate::checkpoint::storage::{
    CheckpointStorage, LocalDirStorage, metadata_path, parse_checkpoint_dir,
};
use flowstate::internals::{CheckpointRegistry, read_metadata};
use flowstate::internals::{range_tombstones, snapshot_handle, sst_contents};
use flowstate::savepoint::{restore_savepoint, write_savepoint};
use flowstate::ttl::wrap;
use flowstate::{
    BackendConfig, Error, FsBackend, KeyGroupRange, LsmBackend, ManualClock, MemoryBackend,
    SnapshotHandle, StateBackend, StateDescriptor, StateKind, TtlConfig,
};
use support::{
    Contents, MAX_PARALLELISM, config, contents, key, kill_child_after, mix, next_owned_key, range,
    restrict, seed,
};

fn lsm_in(dir: &Path, config: BackendConfig, options: LsmBackendOptions) -> LsmBackend {
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::open(dir.join("checkpoints")).unwrap());
    LsmBackend::open(config, storage, options.working_dir(dir.join("work"))).unwrap()
}

#[test]
fn ttl_entries_vanish_from_reads_savepoints_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let cfg = config(KeyGroupRange::all(MAX_PARALLELISM)).with_clock(clock.clone());
    let mut b = lsm_in(dir.path(), cfg, LsmBackendOptions::default());
    let ttl = TtlConfig::new(Duration::from_millis(100));
    let v = b
        .register(&StateDescriptor::new("v", StateKind::Value).with_ttl(ttl))
        .unwrap();
    let plain = b
        .register(&StateDescriptor::new("plain", StateKind::Value))
        .unwrap();
    for i in 0..200 {
        b.put(v, &key(i), &wrap(clock.now_ms_for_test(), b"payload"))
            .unwrap();
        b.put(plain, &key(i), b"kept").unwrap();
    }
    b.flush_write_cache().unwrap();
    b.db().flush().unwrap();
    clock.advance(150);
    // A savepoint leaves out what expired.
    let sp = dir.path().join("sp");
    let stats = write_savepoint(&mut b, &sp).unwrap();
    assert_eq!(stats.entries, 200, "only the plain state's entries");
    // Manual compaction drops them from disk.
    let cf = b.column_family(v).unwrap().clone();
    b.db().compact_range(&cf, None, None).unwrap();
    assert_eq!(b.scan_prefix(v, &[]).unwrap().count(), 0);
    assert_eq!(b.scan_prefix(plain, &[]).unwrap().count(), 200);
    let live = b.db().live_files();
    assert!(live.files.iter().all(|f| f.cf != cf.name()), "no file of v");
}

/// `set_state_ttl` reaches the running compaction filter, is recorded by later checkpoints and
/// is refused for a state without TTL.
#[test]
fn a_changed_ttl_drives_the_compaction_filter_and_the_next_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let cfg = config(KeyGroupRange::all(MAX_PARALLELISM)).with_clock(clock.clone());
    let mut b = lsm_in(dir.path(), cfg.clone(), LsmBackendOptions::default());
    let long = TtlConfig::new(Duration::from_secs(3600));
    let v = b
        .register(&StateDescriptor::new("v", StateKind::Value).with_ttl(long))
        .unwrap();
    let plain = b
        .register(&StateDescriptor::new("plain", StateKind::Value))
        .unwrap();
    for i in 0..100 {
        b.put(v, &key(i), &wrap(clock.now_ms_for_test(), b"payload"))
            .unwrap();
    }
    b.flush_write_cache().unwrap();
    b.db().flush().unwrap();
    clock.advance(60_000);
    let cf = b.column_family(v).unwrap().clone();
    // Within the hour: compaction keeps everything.
    b.db().compact_range(&cf, None, None).unwrap();
    assert_eq!(b.scan_prefix(v, &[]).unwrap().count(), 100);
    // Ten seconds of TTL: the same compaction drops every value, a minute old.
    let short = TtlConfig::new(Duration::from_secs(10));
    b.set_state_ttl(v, short).unwrap();
    b.db().compact_range(&cf, None, None).unwrap();
    assert_eq!(b.scan_prefix(v, &[]).unwrap().count(), 0);
    // Registering again must name the new TTL; the old one is now a mismatch.
    let again = StateDescriptor::new("v", StateKind::Value).with_ttl(short);
    assert_eq!(b.register(&again).unwrap(), v);
    let old = StateDescriptor::new("v", StateKind::Value).with_ttl(long);
    assert!(matches!(b.register(&old), Err(Error::StateMismatch { .. })));
    // A state without TTL cannot get one.
    let err = b.set_state_ttl(plain, short).unwrap_err();
    assert!(
        matches!(err, Error::StateMismatch { ref name, .. } if name == "plain"),
        "{err}"
    );
    // The next checkpoint records the new TTL, and a restore applies it.
    let handle = b.snapshot(1).unwrap().run().unwrap();
    let restored_descriptor = handle.states.iter().find(|d| d.name == "v").unwrap();
    assert_eq!(restored_descriptor.ttl, Some(short));
    let other = tempfile::tempdir().unwrap();
    let mut r = lsm_in(other.path(), cfg, LsmBackendOptions::default());
    r.restore(&[handle], KeyGroupRange::all(MAX_PARALLELISM))
        .unwrap();
    assert_eq!(r.register(&again).unwrap(), v);
}

#[test]
fn periodic_compaction_cleans_a_cold_file_within_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let cfg = config(KeyGroupRange::all(MAX_PARALLELISM)).with_clock(clock.clone());
    let mut b = lsm_in(dir.path(), cfg, LsmBackendOptions::default());
    let ttl = TtlConfig::new(Duration::from_millis(1_000));
    let l = b
        .register(&StateDescriptor::new("l", StateKind::List).with_ttl(ttl))
        .unwrap();
    for i in 0..50 {
        let mut element = Vec::new();
        flowstate::internals::push_list_element(&mut element, &wrap(1_000_000, b"e"));
        b.merge(l, &key(i), &element).unwrap();
    }
    b.db().flush().unwrap();
    let cf = b.column_family(l).unwrap().clone();
    let files_of = |b: &LsmBackend| {
        b.db()
            .live_files()
            .files
            .iter()
            .filter(|f| f.cf == cf.name())
            .count()
    };
    assert_eq!(files_of(&b), 1);
    // Nothing touches the file; once it is older than the period, the background thread
    // compacts it and the TTL filter drops every expired list.
    clock.advance(1_001);
    let start = Instant::now();
    while files_of(&b) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "cold file not compacted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(b.scan_prefix(l, &[]).unwrap().count(), 0);
}

/// Fills `keys` values of ~100 incompressible-ish bytes.
fn value(round: u64, i: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(100);
    let mut z = mix(round * 1_000_003 + i);
    while out.len() < 100 {
        out.extend_from_slice(&z.to_le_bytes());
        z = mix(z);
    }
    out
}

/// Fills 20,000 keys, checkpoints, then 20 rounds of changing `changes` keys and checkpointing;
/// returns (bytes uploaded, delta bytes, base switches) of the 20 rounds and checks each round.
fn incremental_rounds(options: LsmBackendOptions, changes: u64, test: &str) -> (u64, u64, usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = lsm_in(
        dir.path(),
        config(KeyGroupRange::all(MAX_PARALLELISM)),
        options,
    );
    let v = b
        .register(&StateDescriptor::new("v", StateKind::Value))
        .unwrap();
    const KEYS: u64 = 20_000;
    for i in 0..KEYS {
        b.put(v, &key(i), &value(0, i)).unwrap();
    }
    b.snapshot(1).unwrap().run().unwrap();
    let first = b.last_checkpoint_stats().unwrap();
    assert!(first.uploaded_bytes > 1_000_000, "{first:?}");
    let mut rng = seed(test);
    let (mut uploaded, mut deltas, mut switches) = (0u64, 0u64, 0usize);
    for round in 1..=20u64 {
        for _ in 0..changes {
            rng = mix(rng);
            b.put(v, &key(rng % KEYS), &value(round, rng)).unwrap();
        }
        b.snapshot(round + 1).unwrap().run().unwrap();
        let stats = b.last_checkpoint_stats().unwrap();
        eprintln!("round {round}: {stats:?}");
        // Changed data: `changes` values of ~125 bytes with their keys.
        assert!(
            stats.delta_bytes > 0 && stats.delta_bytes < changes * 300,
            "{stats:?}"
        );
        assert!(
            stats.uploaded_bytes <= 10 * stats.delta_bytes,
            "round {round}: {stats:?}"
        );
        uploaded += stats.uploaded_bytes;
        deltas += stats.delta_bytes;
        switches += usize::from(stats.base_switched);
    }
    // The latest checkpoint restores exactly.
    let expected = contents(&mut b);
    let mut restored = lsm_in(
        &dir.path().join("r"),
        config(KeyGroupRange::all(MAX_PARALLELISM)),
        LsmBackendOptions::default(),
    );
    let storage = b.storage().clone();
    let metadata = read_metadata(storage.as_ref(), 21).unwrap();
    restored
        .restore(
            &[snapshot_handle(storage.as_ref(), &metadata)],
            KeyGroupRange::all(MAX_PARALLELISM),
        )
        .unwrap();
    assert_eq!(contents(&mut restored), expected);
    (uploaded, deltas, switches)
}

#[test]
fn incremental_checkpoints_upload_about_the_changed_bytes() {
    let options = LsmBackendOptions::default().min_materialization_bytes(0);
    let (uploaded, deltas, _) = incremental_rounds(options, 200, "incremental_checkpoints");
    assert!(
        uploaded <= 2 * deltas + deltas / 10,
        "20 rounds uploaded {uploaded} bytes for {deltas} changed bytes"
    );
}

#[test]
fn rematerialized_bases_keep_uploads_bounded() {
    // 10% of the keys change per round: the deltas outgrow 5% of the base at once, and the
    // target is materialized within the budget while compaction rewrites the store.
    let options = LsmBackendOptions::default()
        .delta_ratio(0.05)
        .min_materialization_bytes(16 << 10)
        .target_file_size(64 << 10);
    let (uploaded, deltas, switches) = incremental_rounds(options, 2_000, "rematerialized_bases");
    assert!(switches >= 1, "no base switch in 20 rounds");
    assert!(
        uploaded <= 2 * deltas + deltas / 10,
        "20 rounds uploaded {uploaded} bytes for {deltas} changed bytes"
    );
}

#[test]
fn shared_files_are_reference_counted_under_retention() {
    let dir = tempfile::tempdir().unwrap();
    let options = LsmBackendOptions::default().retained_checkpoints(2);
    let mut b = lsm_in(
        dir.path(),
        config(KeyGroupRange::all(MAX_PARALLELISM)),
        options,
    );
    let v = b
        .register(&StateDescriptor::new("v", StateKind::Value))
        .unwrap();
    let storage = b.storage().clone();
    let mut models = BTreeMap::new();
    for id in 1..=8u64 {
        for i in 0..300 {
            b.put(v, &key(i * 7 % 1000 + id), &value(id, i)).unwrap();
        }
        b.snapshot(id).unwrap().run().unwrap();
        models.insert(id, contents(&mut b));
        let completed = b.completed_checkpoints();
        assert_eq!(completed.len(), (id as usize).min(2));
        // Every shared file in storage is referenced by a retained checkpoint, and every file a
        // retained checkpoint lists exists.
        let mut listed = BTreeMap::new();
        for c in &completed {
            for f in read_metadata(storage.as_ref(), *c).unwrap().files {
                assert!(storage.exists(&f.file.path).unwrap());
                *listed.entry(f.file.path).or_insert(0u32) += 1;
            }
        }
        for path in storage.list("shared").unwrap() {
            let refs = listed.get(&path).copied().unwrap_or(0);
            assert!(refs > 0, "unreferenced shared file {path}");
            assert_eq!(b.shared_references(&path), refs, "{path}");
        }
    }
    // Reopening the storage rebuilds the same counts and removes nothing.
    let (registry, report) = CheckpointRegistry::open(storage.clone()).unwrap();
    assert!(report.removed_files.is_empty(), "{report:?}");
    assert_eq!(report.completed, [7, 8]);
    for path in storage.list("shared").unwrap() {
        assert_eq!(
            registry.shared_references(&path),
            b.shared_references(&path)
        );
    }
    // Both retained checkpoints restore exactly.
    for id in [7u64, 8] {
        let mut r = lsm_in(
            &dir.path().join(format!("r{id}")),
            config(KeyGroupRange::all(MAX_PARALLELISM)),
            LsmBackendOptions::default(),
        );
        let m = read_metadata(storage.as_ref(), id).unwrap();
        r.restore(
            &[snapshot_handle(storage.as_ref(), &m)],
            KeyGroupRange::all(MAX_PARALLELISM),
        )
        .unwrap();
        assert_eq!(contents(&mut r), models[&id], "checkpoint {id}");
    }
}

/// Applies seeded random writes (puts, deletes, list appends, a prefix delete) for keys the
/// backend owns to it and to `model`.
fn random_writes(
    b: &mut LsmBackend,
    model: &mut Contents,
    rng: &mut u64,
    count: usize,
    round: u64,
) {
    let v = b
        .register(&StateDescriptor::new("v", StateKind::Value))
        .unwrap();
    let l = b
        .register(&StateDescriptor::new("l", StateKind::List))
        .unwrap();
    let owned = b.config().key_group_range;
    for _ in 0..count {
        let k = next_owned_key(owned, rng, 400);
        match *rng % 10 {
            0 => {
                b.delete(v, &k).unwrap();
                model.remove(&("v".to_string(), k));
            }
            1..=3 => {
                let operand = vec![1, round as u8];
                b.merge(l, &k, &operand).unwrap();
                model
                    .entry(("l".to_string(), k))
                    .or_default()
                    .extend_from_slice(&operand);
            }
            4 => {
                b.delete_prefix(l, &k).unwrap();
                model.remove(&("l".to_string(), k));
            }
            _ => {
                let val = value(round, *rng)[..20].to_vec();
                b.put(v, &k, &val).unwrap();
                model.insert(("v".to_string(), k), val);
            }
        }
    }
}

fn checkpoint(b: &mut LsmBackend, id: u64) -> SnapshotHandle {
    b.snapshot(id).unwrap().run().unwrap()
}

#[test]
fn rescale_two_to_one_to_three_to_two() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = seed("rescale");
    let mut model = Contents::new();
    let mut n = 0;
    let mut fresh = |r: KeyGroupRange| {
        n += 1;
        lsm_in(
            &dir.path().join(format!("b{n}")),
            config(r),
            LsmBackendOptions::default(),
        )
    };
    // Two tasks, each with a few checkpoints so there are bases, deltas and compactions.
    let halves = [range(0, 63), range(64, 127)];
    let mut handles = Vec::new();
    for r in halves {
        let mut b = fresh(r);
        for id in 1..=3 {
            random_writes(&mut b, &mut model, &mut rng, 300, id);
            let h = checkpoint(&mut b, id);
            if id == 3 {
                handles.push(h);
            }
        }
        assert_eq!(contents(&mut b), restrict(&model, r));
    }
    // 2 -> 1.
    let all = KeyGroupRange::all(MAX_PARALLELISM);
    let mut one = fresh(all);
    one.restore(&handles, all).unwrap();
    assert_eq!(contents(&mut one), model, "2 -> 1");
    random_writes(&mut one, &mut model, &mut rng, 300, 10);
    let h = checkpoint(&mut one, 10);
    // 1 -> 3.
    let thirds = [range(0, 41), range(42, 84), range(85, 127)];
    let mut handles = Vec::new();
    for r in thirds {
        let mut b = fresh(r);
        b.restore(std::slice::from_ref(&h), r).unwrap();
        assert_holds_only(&b, r, "1 -> 3");
        assert_eq!(contents(&mut b), restrict(&model, r), "1 -> 3 at {r}");
        random_writes(&mut b, &mut model, &mut rng, 200, 11);
        handles.push(checkpoint(&mut b, 11));
    }
    // 3 -> 2.
    for r in halves {
        let mut b = fresh(r);
        b.restore(&handles, r).unwrap();
        assert_holds_only(&b, r, "3 -> 2");
        assert_eq!(contents(&mut b), restrict(&model, r), "3 -> 2 at {r}");
        random_writes(&mut b, &mut model, &mut rng, 100, 12);
        assert_eq!(contents(&mut b), restrict(&model, r), "writes after 3 -> 2");
    }
}

/// The store of `b` holds no byte of a key group outside `r`: every live SST's smallest and
/// largest key and every entry it holds, and every range tombstone, lie within `r`.
fn assert_holds_only(b: &LsmBackend, r: KeyGroupRange, context: &str) {
    let in_r = |k: &[u8]| k.len() >= 2 && r.contains(u16::from_be_bytes([k[0], k[1]]));
    let live = b.db().live_files();
    for f in &live.files {
        let (smallest, largest, entries) = sst_contents(f).unwrap();
        assert!(
            in_r(&smallest) && in_r(&largest),
            "{context}: file {} of {} spans {smallest:02x?}..{largest:02x?}, outside {r}",
            f.number(),
            f.cf
        );
        for (k, _, _) in &entries {
            assert!(
                in_r(k),
                "{context}: file {} holds {k:02x?}, outside {r}",
                f.number()
            );
        }
    }
    let (lo, hi) = (r.start_key().to_vec(), r.end_key().map(|k| k.to_vec()));
    for (cf, start, end, _) in range_tombstones(b.db()) {
        assert!(
            start >= lo && hi.as_ref().is_none_or(|hi| end <= *hi),
            "{context}: tombstone {start:02x?}..{end:02x?} of {cf} reaches outside {r}"
        );
    }
}

/// Options that make flushes write several files (cut between key groups) and compactions
/// reach L2 on a few thousand writes.
fn small_files() -> LsmBackendOptions {
    LsmBackendOptions::default()
        .write_buffer_size(32 << 10)
        .write_cache_size(0)
        .target_file_size(4 << 10)
}

/// Checkpoints of `from` tasks, each after rounds of puts and deletes, restored into `to`
/// tasks: each restored store equals the model restricted to its key groups, holds nothing
/// outside them, has no range tombstone and did no compaction; the straddling files were
/// rewritten, the others taken whole. Then each restored task writes, checkpoints, and the
/// checkpoints restore back into `from` tasks.
fn rescale_by_whole_files(from: u16, to: u16) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = seed(&format!("rescale {from} -> {to}"));
    let mut model = Contents::new();
    let mut n = 0;
    let mut fresh = |r: KeyGroupRange, background: bool| {
        n += 1;
        lsm_in(
            &dir.path().join(format!("b{n}")),
            config(r),
            small_files().background_work(background),
        )
    };
    let ranges = |p: u16| -> Vec<KeyGroupRange> {
        (0..p)
            .map(|i| KeyGroupRange::for_operator(MAX_PARALLELISM, p, i).unwrap())
            .collect()
    };
    let mut handles = Vec::new();
    for r in ranges(from) {
        let mut b = fresh(r, true);
        for id in 1..=3 {
            support::random_writes(&mut b, &mut model, &mut rng, 1500 / usize::from(from) + 200);
            let h = checkpoint(&mut b, id);
            if id == 3 {
                handles.push(h);
            }
        }
        assert_eq!(contents(&mut b), restrict(&model, r));
    }
    let mut rewritten = 0;
    let mut taken_whole = 0;
    let mut next = Vec::new();
    for r in ranges(to) {
        let context = format!("{from} -> {to} at {r}");
        let mut b = fresh(r, false);
        b.restore(&handles, r).unwrap();
        let stats = b.last_restore_stats().unwrap();
        assert_eq!(
            b.db().stats().compaction_bytes_read,
            0,
            "{context}: no compaction"
        );
        assert!(range_tombstones(b.db()).is_empty(), "{context}: tombstones");
        assert_holds_only(&b, r, &context);
        assert_eq!(contents(&mut b), restrict(&model, r), "{context}");
        rewritten += stats.rewritten_files;
        taken_whole += stats.files - stats.rewritten_files;
        support::random_writes(&mut b, &mut model, &mut rng, 300);
        next.push(checkpoint(&mut b, 10));
        assert_holds_only(&b, r, &format!("{context}, after writes"));
    }
    if to == 1 {
        // One task owns every key group: every file is taken as it is.
        assert_eq!(rewritten, 0, "{from} -> 1 rewrote files");
    } else {
        assert!(
            rewritten > 0,
            "{from} -> {to}: no file straddled a boundary"
        );
    }
    assert!(taken_whole > 0, "{from} -> {to}: no file was taken whole");
    for r in ranges(from) {
        let mut b = fresh(r, false);
        b.restore(&next, r).unwrap();
        assert_holds_only(&b, r, &format!("{to} -> {from} at {r}"));
        assert_eq!(
            contents(&mut b),
            restrict(&model, r),
            "{to} -> {from} at {r}"
        );
    }
}

#[test]
fn rescale_two_to_three_by_whole_files() {
    rescale_by_whole_files(2, 3);
}

#[test]
fn rescale_three_to_two_by_whole_files() {
    rescale_by_whole_files(3, 2);
}

#[test]
fn rescale_eight_to_one_by_whole_files() {
    rescale_by_whole_files(8, 1);
}

#[test]
fn flushes_cut_between_key_groups_and_count_as_one_l0_run() {
    let dir = tempfile::tempdir().unwrap();
    let all = KeyGroupRange::all(MAX_PARALLELISM);
    let mut b = lsm_in(
        dir.path(),
        config(all),
        small_files().background_work(false),
    );
    let mut model = Contents::new();
    let mut rng = seed("flush cuts");
    support::random_writes(&mut b, &mut model, &mut rng, 150);
    b.db().flush().unwrap();
    let live = b.db().live_files();
    let mut groups: Vec<(u16, u16)> = Vec::new();
    for f in live.files.iter().filter(|f| f.level == 0) {
        let (smallest, largest, _) = sst_contents(f).unwrap();
        groups.push((
            u16::from_be_bytes([smallest[0], smallest[1]]),
            u16::from_be_bytes([largest[0], largest[1]]),
        ));
    }
    assert!(groups.len() > 1, "one flush of ~18 KB wrote {groups:?}");
    assert!(
        groups.len() < 20,
        "a small flush is not cut per key group: {} files",
        groups.len()
    );
    groups.sort_unstable();
    for pair in groups.windows(2) {
        assert!(
            pair[0].1 < pair[1].0,
            "a key group spans two files: {groups:?}"
        );
    }
    for (cf, runs, files) in flowstate::internals::l0_runs(b.db()) {
        if files > 0 {
            assert_eq!(runs, 1, "{cf}: {files} files of one flush");
        }
    }
    drop(live);
    assert_eq!(contents(&mut b), model);
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config {
        cases: 12,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    })]
    /// Rescaling from `from` to `to` tasks equals the model: puts, deletes and list appends of
    /// random keys, checkpointed by each source task, restored into every target task.
    #[test]
    fn rescale_matches_btreemap(
        from in 1u16..=8,
        to in 1u16..=8,
        writes in proptest::collection::vec((0u64..600, 0u8..10, proptest::num::u64::ANY), 50..400),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut model = Contents::new();
        let mut handles = Vec::new();
        let mut n = 0;
        for i in 0..from {
            let r = KeyGroupRange::for_operator(MAX_PARALLELISM, from, i).unwrap();
            n += 1;
            let options = small_files().write_buffer_size(4 << 10).target_file_size(1 << 10);
            let mut b = lsm_in(&dir.path().join(format!("b{n}")), config(r), options);
            let v = b.register(&StateDescriptor::new("v", StateKind::Value)).unwrap();
            let l = b.register(&StateDescriptor::new("l", StateKind::List)).unwrap();
            for (round, chunk) in writes.chunks(writes.len().div_ceil(2)).enumerate() {
                for &(k, op, x) in chunk {
                    let k = key(k);
                    if !r.contains(u16::from_be_bytes([k[0], k[1]])) {
                        continue;
                    }
                    match op {
                        0 | 1 => {
                            b.delete(v, &k).unwrap();
                            model.remove(&("v".to_string(), k));
                        }
                        2 | 3 => {
                            let operand = x.to_le_bytes()[..3].to_vec();
                            b.merge(l, &k, &operand).unwrap();
                            model.entry(("l".to_string(), k)).or_default().extend(operand);
                        }
                        _ => {
                            let val = x.to_le_bytes().repeat(usize::from(op));
                            b.put(v, &k, &val).unwrap();
                            model.insert(("v".to_string(), k), val);
                        }
                    }
                }
                let h = checkpoint(&mut b, round as u64 + 1);
                if round == 1 || writes.len() < 2 {
                    handles.push(h);
                }
            }
        }
        proptest::prop_assume!(handles.len() == usize::from(from));
        for i in 0..to {
            let r = KeyGroupRange::for_operator(MAX_PARALLELISM, to, i).unwrap();
            n += 1;
            let mut b = lsm_in(
                &dir.path().join(format!("b{n}")),
                config(r),
                small_files().background_work(false),
            );
            b.restore(&handles, r).unwrap();
            assert_holds_only(&b, r, &format!("{from} -> {to} at {r}"));
            proptest::prop_assert_eq!(contents(&mut b), restrict(&model, r));
        }
    }
}

#[test]
fn savepoint_round_trip_memory_lsm_fs_memory() {
    let dir = tempfile::tempdir().unwrap();
    let all = KeyGroupRange::all(MAX_PARALLELISM);
    let mut memory = MemoryBackend::new(config(all));
    let v = memory
        .register(&StateDescriptor::new("v", StateKind::Value))
        .unwrap();
    let l = memory
        .register(&StateDescriptor::new("l", StateKind::List))
        .unwrap();
    for i in 0..500 {
        memory.put(v, &key(i), &value(1, i)[..30]).unwrap();
        memory.merge(l, &key(i % 50), &[1, i as u8]).unwrap();
    }
    let original = contents(&mut memory);
    let sp = |name: &str| -> PathBuf { dir.path().join(name) };
    write_savepoint(&mut memory, &sp("m")).unwrap();
    let mut lsm = lsm_in(&sp("lsm"), config(all), LsmBackendOptions::default());
    restore_savepoint(&mut lsm, &[sp("m")]).unwrap();
    assert_eq!(contents(&mut lsm), original);
    write_savepoint(&mut lsm, &sp("l")).unwrap();
    let storage = Arc::new(LocalDirStorage::open(sp("fs")).unwrap());
    let mut fs = FsBackend::new(config(all), storage).unwrap();
    restore_savepoint(&mut fs, &[sp("l")]).unwrap();
    assert_eq!(contents(&mut fs), original);
    write_savepoint(&mut fs, &sp("f")).unwrap();
    let mut back = MemoryBackend::new(config(all));
    restore_savepoint(&mut back, &[sp("f")]).unwrap();
    assert_eq!(contents(&mut back), original);
}

// ---- Kill test -----------------------------------------------------------------------------

const CHILD_ENV: &str = "FLOWSTATE_LSM_CRASH_CHILD_DIR";
const CRASH_KEYS: u64 = 400;

/// The writes of step `n`, a pure function of `n`: `Some(v)` puts (or appends to "l"),
/// `None` deletes.
/// One write of a step: state, key, value (`None` deletes).
type StepWrite = (&'static str, Vec<u8>, Option<Vec<u8>>);

fn step(n: u64) -> Vec<StepWrite> {
    let mut out = Vec::new();
    for j in 0..60 {
        let h = mix(n * 1_000 + j);
        let v = (!h.is_multiple_of(7)).then(|| [n.to_le_bytes(), j.to_le_bytes()].concat());
        out.push(("v", key(h % CRASH_KEYS), v));
    }
    out.push(("l", key(n % 50), Some(vec![1, n as u8])));
    out
}

fn model(n: u64) -> Contents {
    let mut m = Contents::new();
    for i in 1..=n {
        for (state, k, v) in step(i) {
            let slot = (state.to_string(), k);
            match v {
                None => {
                    m.remove(&slot);
                }
                Some(v) if state == "l" => m.entry(slot).or_default().extend_from_slice(&v),
                Some(v) => {
                    m.insert(slot, v);
                }
            }
        }
    }
    m
}

fn crash_backend(dir: &Path) -> LsmBackend {
    let options = LsmBackendOptions::default()
        .write_buffer_size(64 << 10)
        .retained_checkpoints(2)
        .min_materialization_bytes(16 << 10);
    let mut b = lsm_in(dir, config(KeyGroupRange::all(MAX_PARALLELISM)), options);
    b.register(&StateDescriptor::new("v", StateKind::Value))
        .unwrap();
    b.register(&StateDescriptor::new("l", StateKind::List))
        .unwrap();
    b
}

/// The child: resume from the latest completed checkpoint, then step and checkpoint forever.
#[test]
fn lsm_crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // not re-executed by the parent
    };
    let mut b = crash_backend(Path::new(&dir));
    let start = b.restore_latest().unwrap().unwrap_or(0);
    assert_eq!(contents(&mut b), model(start), "child restored wrong state");
    let v = b
        .register(&StateDescriptor::new("v", StateKind::Value))
        .unwrap();
    let l = b
        .register(&StateDescriptor::new("l", StateKind::List))
        .unwrap();
    for n in start + 1.. {
        for (state, k, val) in step(n) {
            match (state, val) {
                (_, None) => b.delete(v, &k).unwrap(),
                ("l", Some(x)) => b.merge(l, &k, &x).unwrap(),
                (_, Some(x)) => b.put(v, &k, &x).unwrap(),
            }
        }
        b.snapshot(n).unwrap().run().unwrap();
    }
}

#[test]
fn killed_checkpointing_restores_latest_complete_checkpoint() {
    let soak = std::env::var("FLOWSTATE_SOAK").is_ok_and(|v| v == "1");
    let kills = if soak { 60 } else { 4 };
    let mut rng = seed("lsm killed_checkpointing");
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalDirStorage::open(dir.path().join("checkpoints")).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut latest = 0u64;
    for round in 0..kills {
        rng = mix(rng);
        let delay = Duration::from_millis(200 + rng % 600);
        kill_child_after(&exe, "lsm_crash_child", CHILD_ENV, dir.path(), delay, round);

        let mut complete = Vec::new();
        for name in storage.children("").unwrap() {
            if let Some(id) = parse_checkpoint_dir(&name)
                && storage.exists(&metadata_path(id)).unwrap()
            {
                read_metadata(&storage, id).unwrap();
                complete.push(id);
            }
        }
        complete.sort_unstable();
        let newest = complete.last().copied().unwrap_or(0);
        assert!(
            newest >= latest,
            "round {round}: checkpoint {latest} was lost"
        );
        let mut b = crash_backend(dir.path());
        latest = b.restore_latest().unwrap().unwrap_or(0);
        assert_eq!(latest, newest);
        assert_eq!(contents(&mut b), model(latest), "round {round}: {latest}");
        for id in complete.iter().rev().skip(1) {
            let m = read_metadata(&storage, *id).unwrap();
            b.restore(
                &[snapshot_handle(&storage, &m)],
                KeyGroupRange::all(MAX_PARALLELISM),
            )
            .unwrap();
            assert_eq!(
                contents(&mut b),
                model(*id),
                "round {round}: checkpoint {id}"
            );
        }
        eprintln!("round {round}: killed after {delay:?}; latest {latest}");
    }
    assert!(latest > 0, "the child never completed a checkpoint");
}

/// `ManualClock::now_ms` through the `Clock` trait.
trait NowForTest {
    fn now_ms_for_test(&self) -> u64;
}

impl NowForTest for ManualClock {
    fn now_ms_for_test(&self) -> u64 {
        flowstate::Clock::now_ms(self)
    }
}

/// A store left in the working directory by a backend that died (here: a directory whose LOCK
/// nobody holds) is removed when a new backend starts; a live backend's store is not.
#[test]
fn stale_working_stores_are_removed_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let working = dir.path().join("work");
    let config = flowstate::BackendConfig::new(128, flowstate::KeyGroupRange::all(128)).unwrap();
    let storage = |name: &str| {
        std::sync::Arc::new(
            flowstate::checkpoint::storage::LocalDirStorage::open(dir.path().join(name)).unwrap(),
        )
    };
    let live = flowstate::LsmBackend::open(
        config.clone(),
        storage("a"),
        LsmBackendOptions::new(&working),
    )
    .unwrap();
    let stale = working.join("db-00000000deadbeef-0");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("LOCK"), b"").unwrap();
    std::fs::write(stale.join("000007.sst"), b"leftover").unwrap();
    let _second =
        flowstate::LsmBackend::open(config, storage("b"), LsmBackendOptions::new(&working))
            .unwrap();
    assert!(!stale.exists(), "stale store kept");
    assert!(live.db().path().exists(), "live store removed");
}

/// Full checkpoints (an option): only owned full snapshot files, nothing shared, sound for
/// `verify`; an incremental-mode backend restores them into the same contents, 1 -> 2 as well.
#[test]
fn full_checkpoints_are_self_contained_and_restore_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let full = LsmBackendOptions::default().full_checkpoints(true);
    let mut backend = lsm_in(&dir.path().join("a"), config(range(0, 127)), full);
    let values = backend
        .register(&StateDescriptor::new("values", StateKind::Value))
        .unwrap();
    let lists = backend
        .register(&StateDescriptor::new("lists", StateKind::List))
        .unwrap();
    for i in 0..3000u64 {
        backend.put(values, &key(i), &i.to_le_bytes()).unwrap();
        if i % 5 == 0 {
            backend.merge(lists, &key(i), &[1, i as u8]).unwrap();
        }
    }
    let first = backend.snapshot(1).unwrap().run().unwrap();
    backend.delete(values, &key(7)).unwrap();
    let handle = backend.snapshot(2).unwrap().run().unwrap();
    let expected = contents(&mut backend);

    let storage = LocalDirStorage::open(dir.path().join("a/checkpoints")).unwrap();
    let listed = read_metadata(&storage, 2).unwrap();
    assert!(
        listed
            .files
            .iter()
            .all(|f| !f.shared && f.file.path.starts_with("chk-2/"))
    );
    assert!(
        !dir.path().join("a/checkpoints/shared").exists()
            || std::fs::read_dir(dir.path().join("a/checkpoints/shared"))
                .unwrap()
                .next()
                .is_none()
    );
    let report = flowstate::verify::verify_storage(&storage).unwrap();
    assert!(report.is_sound(), "{report:?}");
    drop(first);

    let mut whole = lsm_in(
        &dir.path().join("b"),
        config(range(0, 127)),
        LsmBackendOptions::default(),
    );
    whole
        .restore(std::slice::from_ref(&handle), range(0, 127))
        .unwrap();
    assert_eq!(contents(&mut whole), expected);

    let mut merged: Contents = BTreeMap::new();
    for (i, part) in [range(0, 63), range(64, 127)].into_iter().enumerate() {
        let mut half = lsm_in(
            &dir.path().join(format!("half{i}")),
            config(part),
            LsmBackendOptions::default(),
        );
        half.restore(std::slice::from_ref(&handle), part).unwrap();
        for ((state, k), v) in contents(&mut half) {
            assert!(part.contains(u16::from_be_bytes([k[0], k[1]])));
            merged.insert((state, k), v);
        }
    }
    assert_eq!(merged, expected);
}

/// The `db-*` directories under the working directory.
fn store_dirs(work: &Path) -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(work)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("db-"))
        .collect();
    dirs.sort();
    dirs
}

/// A restore replaces the working store: the replaced store's directory is removed at once when
/// nothing holds it, and after its last holder lets it go otherwise; only the live store stays.
#[test]
fn restores_leave_one_working_store() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let mut b = lsm_in(
        dir.path(),
        config(KeyGroupRange::all(MAX_PARALLELISM)),
        LsmBackendOptions::default(),
    );
    let v = b
        .register(&StateDescriptor::new("v", StateKind::Value))
        .unwrap();
    for i in 0..100 {
        b.put(v, &key(i), b"value").unwrap();
    }
    let handle = b.snapshot(1).unwrap().run().unwrap();
    assert_eq!(store_dirs(&work).len(), 1);
    for round in 0..3 {
        b.restore(
            std::slice::from_ref(&handle),
            KeyGroupRange::all(MAX_PARALLELISM),
        )
        .unwrap();
        assert_eq!(
            store_dirs(&work).len(),
            1,
            "after restore {round}: {:?}",
            store_dirs(&work)
        );
        assert_eq!(b.scan_prefix(v, &[]).unwrap().count(), 100);
    }
    // A store still held when a restore replaces it stays until it is let go.
    let held = b.db().clone();
    b.restore(
        std::slice::from_ref(&handle),
        KeyGroupRange::all(MAX_PARALLELISM),
    )
    .unwrap();
    assert_eq!(store_dirs(&work).len(), 2, "the held store stays");
    drop(held);
    b.snapshot(2).unwrap().run().unwrap();
    assert_eq!(
        store_dirs(&work).len(),
        1,
        "removed once let go: {:?}",
        store_dirs(&work)
    );
    assert_eq!(b.scan_prefix(v, &[]).unwrap().count(), 100);
}

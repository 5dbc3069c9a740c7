//! The metrics flowstate records, captured by a thread-local `DebuggingRecorder`: a real LSM and
//! fs checkpoint (per-state sizes), an LSM restore, store flushes and compactions, and
//! coordinator rounds (completed / failed / aborted counts, timing histograms, the growth alert).
//!
//! Everything measured runs on the test's own thread (the local recorder sees nothing else).

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowstate::backend::lsm::LsmBackendOptions;
use flowstate::backend::{BackendKind, SnapshotData};
use flowstate::checkpoint::storage::LocalDirStorage;
use flowstate::engine::CheckpointOptions;
use flowstate::engine::GrowthAlert;
use flowstate::internals::SourcePosition;
use flowstate::internals::{CheckpointCoordinator, OperatorAck};
use flowstate::lsm::{Db, Options};
use flowstate::observe;
use flowstate::{BackendConfig, FsBackend, KeyGroupRange, KeyedState, LsmBackend, SnapshotHandle};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// A metric's value: (name, labels sorted, value).
type Sample = (String, Vec<(String, String)>, DebugValue);

/// Runs `body` with a local recorder; returns what it recorded.
fn record<T>(body: impl FnOnce() -> T) -> (T, Vec<Sample>) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let out = metrics::with_local_recorder(&recorder, body);
    let samples = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let (_, key) = key.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            labels.sort();
            (key.name().to_string(), labels, value)
        })
        .collect();
    (out, samples)
}

fn find<'a>(samples: &'a [Sample], name: &str) -> Vec<&'a Sample> {
    samples.iter().filter(|(n, _, _)| n == name).collect()
}

fn counter(samples: &[Sample], name: &str) -> u64 {
    find(samples, name)
        .iter()
        .map(|(_, _, v)| match v {
            DebugValue::Counter(c) => *c,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

fn gauge(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    find(samples, name).iter().find_map(|(_, l, v)| {
        let wanted: Vec<(String, String)> = {
            let mut w: Vec<_> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            w.sort();
            w
        };
        match v {
            DebugValue::Gauge(g) if *l == wanted => Some(g.into_inner()),
            _ => None,
        }
    })
}

fn histogram(samples: &[Sample], name: &str) -> Vec<f64> {
    find(samples, name)
        .iter()
        .flat_map(|(_, _, v)| match v {
            DebugValue::Histogram(h) => h.iter().map(|x| x.into_inner()).collect::<Vec<_>>(),
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .collect()
}

fn fill(keyed: &KeyedState, keys: u64) {
    let count = keyed.value_state::<u64>("count").unwrap();
    let names = keyed.value_state::<String>("name").unwrap();
    for k in 0..keys {
        keyed.set_current_key(&format!("key-{k}")).unwrap();
        count.update(&k).unwrap();
        if k % 4 == 0 {
            names
                .update(&format!("a longer value for key {k}"))
                .unwrap();
        }
    }
}

#[test]
fn lsm_checkpoint_records_state_sizes_and_restore_records_time_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalDirStorage::open(dir.path().join("checkpoints")).unwrap());
    let range = KeyGroupRange::all(128);
    let config = BackendConfig::new(128, range).unwrap();
    let backend = LsmBackend::open(
        config.clone(),
        storage.clone(),
        LsmBackendOptions::new(dir.path().join("work")),
    )
    .unwrap();
    let keyed = KeyedState::new(backend);
    let (handle, samples) = record(|| {
        fill(&keyed, 2000);
        keyed.snapshot(1).unwrap().run().unwrap()
    });
    let count = gauge(
        &samples,
        observe::STATE_SIZE_BYTES,
        &[("state", "count"), ("key_groups", "0-127")],
    )
    .expect("count state size");
    let name = gauge(
        &samples,
        observe::STATE_SIZE_BYTES,
        &[("state", "name"), ("key_groups", "0-127")],
    )
    .expect("name state size");
    let referenced: u64 = match &handle.data {
        SnapshotData::Files { files, .. } => files.iter().map(|f| f.size).sum(),
        SnapshotData::Memory(_) => panic!("lsm handle holds files"),
    };
    assert!(count > 0.0 && name > 0.0, "{count} {name}");
    assert!(
        (count + name) as u64 <= referenced,
        "per-state SST bytes {count} + {name} within the {referenced} referenced"
    );

    let restored = KeyedState::new(
        LsmBackend::open(
            config.clone(),
            storage,
            LsmBackendOptions::new(dir.path().join("work2")),
        )
        .unwrap(),
    );
    let ((), samples) = record(|| {
        restored
            .restore(std::slice::from_ref(&handle), range)
            .unwrap()
    });
    let times = histogram(&samples, observe::RESTORE_DURATION_SECONDS);
    assert_eq!(times.len(), 1, "one restore");
    assert!(times[0] > 0.0 && times[0] < 60.0, "{times:?}");
    let restore = find(&samples, observe::RESTORE_DURATION_SECONDS);
    assert_eq!(
        restore[0].1,
        vec![("backend".to_string(), "lsm".to_string())]
    );
    // Checkpoints in a local directory: every SST is hard-linked, nothing is downloaded
    // (tests/local_recovery.rs counts real downloads from a storage that cannot be linked).
    let bytes = counter(&samples, observe::RESTORE_DOWNLOADED_BYTES_TOTAL);
    assert_eq!(bytes, 0, "linked, not downloaded");
    // Restored into the same storage: nothing to copy.
    assert_eq!(counter(&samples, observe::RESTORE_COPIED_BYTES_TOTAL), 0);

    // Restored into another directory (a restart's new task root): every file is linked in.
    let elsewhere = KeyedState::new(
        LsmBackend::open(
            config,
            Arc::new(LocalDirStorage::open(dir.path().join("checkpoints-2")).unwrap()),
            LsmBackendOptions::new(dir.path().join("work3")),
        )
        .unwrap(),
    );
    let ((), samples) = record(|| elsewhere.restore(&[handle], range).unwrap());
    assert_eq!(
        counter(&samples, observe::RESTORE_COPIED_BYTES_TOTAL),
        referenced,
        "every restored file linked into the new root"
    );
}

#[test]
fn fs_checkpoint_records_key_and_value_bytes_per_state() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalDirStorage::open(dir.path()).unwrap());
    let config = BackendConfig::new(128, KeyGroupRange::all(128)).unwrap();
    let keyed = KeyedState::new(FsBackend::new(config, storage).unwrap());
    fill(&keyed, 400);
    let (_, samples) = record(|| keyed.snapshot(1).unwrap().run().unwrap());
    let count = gauge(
        &samples,
        observe::STATE_SIZE_BYTES,
        &[("state", "count"), ("key_groups", "0-127")],
    )
    .unwrap();
    let name = gauge(
        &samples,
        observe::STATE_SIZE_BYTES,
        &[("state", "name"), ("key_groups", "0-127")],
    )
    .unwrap();
    // 400 composite keys of at least 8 bytes with varint counts; 100 names of ~28 bytes.
    assert!((400.0 * 8.0..400.0 * 64.0).contains(&count), "{count}");
    assert!((100.0 * 30.0..100.0 * 80.0).contains(&name), "{name}");
}

#[test]
fn flushes_and_compactions_count_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default().background_work(false);
    let db = Db::open(dir.path(), options).unwrap();
    let cf = db.default_cf();
    let ((), samples) = record(|| {
        for round in 0..3u32 {
            for i in 0..500u32 {
                db.put(&cf, format!("k{i:05}").as_bytes(), &round.to_le_bytes())
                    .unwrap();
            }
            db.flush().unwrap();
        }
        db.compact_range(&cf, None, None).unwrap();
    });
    assert_eq!(counter(&samples, observe::LSM_FLUSHES_TOTAL), 3);
    let flushed = counter(&samples, observe::LSM_FLUSH_WRITTEN_BYTES_TOTAL);
    let stats = db.stats();
    assert_eq!(flushed, stats.flush_bytes_written);
    assert!(flushed > 3 * 500 * 8, "{flushed}");
    assert!(counter(&samples, observe::LSM_COMPACTIONS_TOTAL) >= 1);
    let read = counter(&samples, observe::LSM_COMPACTION_READ_BYTES_TOTAL);
    let written = counter(&samples, observe::LSM_COMPACTION_WRITTEN_BYTES_TOTAL);
    assert_eq!(read, stats.compaction_bytes_read);
    assert_eq!(written, stats.compaction_bytes_written);
    assert_eq!(read, flushed, "the compaction read the three flushed files");
    assert!(
        written > 0 && written < read,
        "overwrites dropped: {written} < {read}"
    );
}

fn ack(sync_ms: u64, async_ms: u64) -> OperatorAck {
    OperatorAck {
        handle: SnapshotHandle {
            backend: BackendKind::Fs,
            checkpoint_id: 0,
            max_parallelism: 128,
            key_group_range: KeyGroupRange::all(128),
            states: Vec::new(),
            data: SnapshotData::Files {
                root: String::new(),
                files: Vec::new(),
            },
        },
        sync: Duration::from_millis(sync_ms),
        asynchronous: Duration::from_millis(async_ms),
        alignment: Duration::from_millis(1),
    }
}

#[test]
fn coordinator_rounds_record_counts_timings_and_the_growth_alert() {
    let options = CheckpointOptions::default()
        .interval(Some(Duration::from_millis(10)))
        .max_concurrent(2)
        .tolerable_failures(5)
        .growth_alert(Some(GrowthAlert {
            fraction: 0.5,
            checkpoints: 2,
        }));
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let mut c = CheckpointCoordinator::new(options, 2, 1, 1);
    let ((), samples) = record(|| {
        // Three completed checkpoints whose state grows 100 -> 120 -> 200 bytes, then a failed
        // one (declined) and a subsumed one.
        for (i, size) in [100u64, 120, 200].into_iter().enumerate() {
            let id = c.poll_trigger(at(100 * i as u64), false).unwrap();
            assert!(c.ack_source(id, SourcePosition::default()).is_none());
            assert!(c.ack_operator(id, 0, ack(2, 30)).is_none());
            assert!(c.ack_operator(id, 1, ack(3, 20)).is_none());
            let mut done = c.ack_sink(id, 0, 5).unwrap().record;
            done.state_size = size;
            done.bytes_written = size / 2;
            c.record_completed(done, at(100 * i as u64 + 50));
        }
        assert!(c.growth_alert_active(), "200 is 100 % above 100");
        let failed = c.poll_trigger(at(400), false).unwrap();
        c.decline(failed, "disk full", at(410)).unwrap();
        let old = c.poll_trigger(at(500), false).unwrap();
        let new = c.poll_trigger(at(520), false).unwrap();
        assert!(old < new);
        c.ack_source(new, SourcePosition::default());
        c.ack_operator(new, 0, ack(1, 1));
        c.ack_operator(new, 1, ack(1, 1));
        let mut done = c.ack_sink(new, 0, 0).unwrap().record;
        done.state_size = 170;
        c.record_completed(done, at(600));
        assert!(!c.growth_alert_active(), "170 is 42 % above 120: cleared");
    });
    assert_eq!(counter(&samples, observe::CHECKPOINTS_COMPLETED_TOTAL), 4);
    assert_eq!(counter(&samples, observe::CHECKPOINTS_FAILED_TOTAL), 1);
    assert_eq!(counter(&samples, observe::CHECKPOINTS_ABORTED_TOTAL), 1);
    let sync = histogram(&samples, observe::CHECKPOINT_SYNC_SECONDS);
    assert_eq!(
        sync[..3],
        [0.003, 0.003, 0.003],
        "the slowest operator's sync part"
    );
    let asynchronous = histogram(&samples, observe::CHECKPOINT_ASYNC_SECONDS);
    assert_eq!(asynchronous[..3], [0.03, 0.03, 0.03]);
    assert_eq!(
        histogram(&samples, observe::CHECKPOINT_ALIGNMENT_SECONDS).len(),
        4
    );
    assert_eq!(
        histogram(&samples, observe::CHECKPOINT_WRITTEN_BYTES),
        [50.0, 60.0, 100.0, 0.0]
    );
    assert!(
        histogram(&samples, observe::CHECKPOINT_DURATION_SECONDS)
            .iter()
            .all(|d| *d >= 0.0 && *d < 60.0)
    );
    assert_eq!(
        gauge(&samples, observe::CHECKPOINT_STATE_SIZE_BYTES, &[]),
        Some(170.0)
    );
    assert_eq!(counter(&samples, observe::STATE_GROWTH_ALERTS_TOTAL), 1);
    assert_eq!(
        gauge(&samples, observe::STATE_GROWTH_ALERT_ACTIVE, &[]),
        Some(0.0)
    );
}

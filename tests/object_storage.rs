//! Checkpoint storage on object stores without a server: the `CheckpointStorage` contract and
//! FsBackend / LsmBackend checkpoint → restore round trips through `memory://` (in-process store)
//! and `file://` (the object-store code path on a local directory), compared with a model.
//! The same scenarios run against a real S3 server (Garage) in `tests/garage.rs`.

mod support;

use std::sync::Arc;

use flowstate::checkpoint::storage::CheckpointStorage;
use flowstate::checkpoint::uri::{StorageOptions, open_storage};
use flowstate::internals::CheckpointMetadata;
use flowstate::internals::{CheckpointRegistry, read_metadata};
use flowstate::{KeyGroupRange, LsmBackendOptions, StateBackend};
use support::*;

fn file_uri(dir: &std::path::Path) -> String {
    format!("file://{}", dir.display())
}

#[test]
fn memory_store_keeps_the_storage_contract() {
    let storage = open_storage("memory://contract/job-1").unwrap();
    assert_eq!(storage.location(), "memory://contract/job-1");
    assert_eq!(storage.upload_parallelism(), 8);
    storage_contract(storage.as_ref());
}

#[test]
fn memory_store_at_the_bucket_root_keeps_the_storage_contract() {
    storage_contract(open_storage("memory://contract-root").unwrap().as_ref());
}

#[test]
fn file_store_keeps_the_storage_contract() {
    let dir = tempfile::tempdir().unwrap();
    let uri = file_uri(&dir.path().join("checkpoints"));
    let storage = open_storage(&uri).unwrap();
    assert_eq!(storage.location(), uri);
    storage_contract(storage.as_ref());
}

#[test]
fn lsm_incremental_checkpoints_round_trip_through_memory() {
    let work = tempfile::tempdir().unwrap();
    lsm_incremental_round_trip(
        "memory://lsm-round-trip",
        &StorageOptions::new(),
        work.path(),
        5,
    );
}

#[test]
fn lsm_incremental_checkpoints_round_trip_through_file_uri() {
    let dir = tempfile::tempdir().unwrap();
    let uri = file_uri(&dir.path().join("store"));
    lsm_incremental_round_trip(&uri, &StorageOptions::new(), &dir.path().join("work"), 5);
}

#[test]
fn fs_checkpoints_round_trip_through_memory_and_file_uri() {
    fs_round_trip("memory://fs-round-trip", &StorageOptions::new());
    let dir = tempfile::tempdir().unwrap();
    fs_round_trip(&file_uri(&dir.path().join("store")), &StorageOptions::new());
}

/// On an object store `_metadata` alone does not make a checkpoint complete: a listed file that
/// is missing or has another size makes the start-up scan treat it as incomplete.
#[test]
fn start_up_scan_drops_checkpoints_with_missing_or_resized_files() {
    let location = "memory://completeness";
    let storage = open_storage(location).unwrap();
    let all = KeyGroupRange::all(MAX_PARALLELISM);
    let mut b = flowstate::FsBackend::open(
        config(all),
        storage.clone(),
        flowstate::backend::FsBackendOptions::default().retained_checkpoints(3),
    )
    .unwrap();
    let mut model = Contents::new();
    let mut rng = 7;
    let mut models = Vec::new();
    for id in 1..=3 {
        random_writes(&mut b, &mut model, &mut rng, 200);
        b.snapshot(id).unwrap().run().unwrap();
        models.push(model.clone());
    }
    let files = |id| -> CheckpointMetadata { read_metadata(storage.as_ref(), id).unwrap() };
    let victim3 = files(3).files[0].file.path.clone();
    storage.delete(&victim3).unwrap();
    let victim2 = files(2).files[0].file.path.clone();
    // Names are written once: damage is simulated by replacing the object.
    assert!(storage.write_file(&victim2, b"short").is_err());
    storage.delete(&victim2).unwrap();
    storage.write_file(&victim2, b"short").unwrap();
    // The scan learns every size, `_metadata` included, from one listing: no size request.
    #[derive(Debug, Default)]
    struct SizeRequests(std::sync::atomic::AtomicUsize);
    impl StorageInterceptor for SizeRequests {
        fn file_size(&self, inner: &dyn CheckpointStorage, path: &str) -> flowstate::Result<u64> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            inner.file_size(path)
        }
    }
    let counted = Arc::new(InterceptedStorage {
        inner: storage.clone(),
        interceptor: SizeRequests::default(),
    });
    let listed_files: usize = (1..=3).map(|id| files(id).files.len()).sum();
    assert!(listed_files > 6, "{listed_files}");
    let (registry, report) = CheckpointRegistry::open(counted.clone()).unwrap();
    assert_eq!(
        counted
            .interceptor
            .0
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(report.completed, [1]);
    assert_eq!(report.removed_incomplete, [2, 3]);
    assert_eq!(registry.completed_ids(), [1]);
    assert!(storage.list("chk-3").unwrap().is_empty());
    let mut restored = flowstate::FsBackend::new(config(all), storage.clone()).unwrap();
    assert_eq!(restored.restore_latest().unwrap(), Some(1));
    assert_eq!(contents(&mut restored), models[0]);
}

/// The upload loops (LSM SSTs, full-checkpoint files) run `upload_parallelism` uploads at once;
/// one failing upload fails only that checkpoint, and the next one completes and restores
/// exactly.
#[test]
fn a_failed_upload_fails_only_its_checkpoint() {
    #[derive(Debug)]
    struct Flaky {
        fail_next_create: std::sync::atomic::AtomicBool,
    }
    impl StorageInterceptor for Flaky {
        fn create_file(
            &self,
            inner: &dyn CheckpointStorage,
            path: &str,
        ) -> flowstate::Result<Box<dyn flowstate::checkpoint::storage::CheckpointFileWriter>>
        {
            if (path.starts_with("shared/") || path.contains("/kg-"))
                && self
                    .fail_next_create
                    .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                return Err(flowstate::Error::invalid("injected upload failure"));
            }
            inner.create_file(path)
        }
    }
    let flaky = Arc::new(InterceptedStorage {
        inner: open_storage("memory://flaky").unwrap(),
        interceptor: Flaky {
            fail_next_create: false.into(),
        },
    });
    let work = tempfile::tempdir().unwrap();
    let all = KeyGroupRange::all(MAX_PARALLELISM);
    let options = LsmBackendOptions::default().write_buffer_size(32 << 10);
    let mut b = flowstate::LsmBackend::open(
        config(all),
        flaky.clone(),
        options.working_dir(work.path().join("a")),
    )
    .unwrap();
    let mut model = Contents::new();
    let mut rng = 11;
    random_writes(&mut b, &mut model, &mut rng, 2000);
    b.snapshot(1).unwrap().run().unwrap();
    random_writes(&mut b, &mut model, &mut rng, 2000);
    flaky
        .interceptor
        .fail_next_create
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = b.snapshot(2).unwrap().run().unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    assert_eq!(b.completed_checkpoints(), [1]);
    random_writes(&mut b, &mut model, &mut rng, 500);
    let h = b.snapshot(3).unwrap().run().unwrap();
    assert_eq!(b.completed_checkpoints(), [1, 3]);
    let mut r = flowstate::LsmBackend::open(
        config(all),
        open_storage("memory://flaky-restore").unwrap(),
        LsmBackendOptions::new(work.path().join("r")),
    )
    .unwrap();
    r.restore(&[h], all).unwrap();
    assert_eq!(contents(&mut r), model);

    // The same for full checkpoints, whose files `upload_parallelism` threads encode and upload.
    let flaky = Arc::new(InterceptedStorage {
        inner: open_storage("memory://flaky-fs").unwrap(),
        interceptor: Flaky {
            fail_next_create: false.into(),
        },
    });
    assert!(flaky.upload_parallelism() > 1);
    let mut f = flowstate::FsBackend::new(config(all), flaky.clone()).unwrap();
    let mut model = Contents::new();
    random_writes(&mut f, &mut model, &mut rng, 2000);
    f.snapshot(1).unwrap().run().unwrap();
    flaky
        .interceptor
        .fail_next_create
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = f.snapshot(2).unwrap().run().unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    assert_eq!(f.completed_checkpoints(), [1]);
    random_writes(&mut f, &mut model, &mut rng, 500);
    f.snapshot(3).unwrap().run().unwrap();
    assert_eq!(f.completed_checkpoints(), [1, 3]);
    let mut r = flowstate::FsBackend::new(config(all), flaky.clone()).unwrap();
    assert_eq!(r.restore_latest().unwrap(), Some(3));
    assert_eq!(contents(&mut r), model);
}

#[test]
fn lsm_incremental_checkpoints_round_trip_through_local_dir() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().join("store").display().to_string();
    lsm_incremental_round_trip(&loc, &StorageOptions::new(), &dir.path().join("work"), 5);
}

/// A caller running inside its own tokio runtime (async stream-processor code) can use the
/// storage: its blocking calls must not panic with "cannot start a runtime from within a runtime".
#[test]
fn storage_calls_work_from_inside_a_tokio_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let storage = open_storage("memory://inside-runtime").unwrap();
        storage.write_file("chk-1/a", b"bytes").unwrap();
        assert_eq!(storage.read_file("chk-1/a").unwrap(), b"bytes");
        assert_eq!(storage.list("").unwrap(), ["chk-1/a"]);
    });
}

/// An SST larger than one download request (8 MiB) is restored from object storage in ranged
/// reads, checked against `_metadata`, and counted as downloaded.
#[test]
fn lsm_restore_downloads_a_large_sst_in_chunks() {
    use flowstate::backend::lsm::LsmBackend;
    use flowstate::backend::{StateDescriptor, StateKind};

    let work = tempfile::tempdir().unwrap();
    let all = KeyGroupRange::all(MAX_PARALLELISM);
    let storage = open_storage("memory://large-sst/a").unwrap();
    // Flushes are cut at the target file size: 16 MiB keeps the 12 MB flush in one file.
    let options = LsmBackendOptions::default()
        .write_cache_size(0)
        .target_file_size(16 << 20);
    let mut b = LsmBackend::open(
        config(all),
        storage.clone(),
        options.clone().working_dir(work.path().join("a")),
    )
    .unwrap();
    let v = b
        .register(&StateDescriptor::new("v", StateKind::Value))
        .unwrap();
    // 12 MB of values zstd cannot shrink, flushed by the snapshot into one L0 file.
    let mut z = 7u64;
    for i in 0..12_000u64 {
        let mut value = Vec::with_capacity(1000);
        while value.len() < 1000 {
            z = mix(z);
            value.extend_from_slice(&z.to_le_bytes());
        }
        b.put(v, &key(i), &value).unwrap();
    }
    let handle = b.snapshot(1).unwrap().run().unwrap();
    let sizes: Vec<u64> = storage
        .list("shared")
        .unwrap()
        .iter()
        .map(|path| storage.file_size(path).unwrap())
        .collect();
    assert!(sizes.iter().any(|&size| size > 8 << 20), "{sizes:?}");
    let mut restored = lsm_at(&work.path().join("b"), "memory://large-sst/b", &options);
    restored.restore(&[handle], all).unwrap();
    let stats = restored.last_restore_stats().unwrap();
    assert_eq!(stats.downloaded_files, sizes.len() as u64);
    assert_eq!(stats.downloaded_bytes, sizes.iter().sum::<u64>());
    assert_eq!(contents(&mut restored), contents(&mut b));
}

/// Restored into another root of the same store (the engine's restart into a new task root),
/// the restored SSTs are copied there by the store itself — a server-side copy in a bucket or
/// in-process store, a hard link between local directories — so the first checkpoint after the
/// restart uploads what changed, not the whole state. Across stores nothing is copied and the
/// checkpoint uploads the files as before.
#[test]
fn a_restart_into_a_new_root_copies_instead_of_uploading() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("local-base");
    let cases = [
        (
            "memory://restart-copy/tasks/1/t0".to_string(),
            "memory://restart-copy/tasks/2/t0".to_string(),
            true,
        ),
        (
            dir.join("tasks/1/t0").display().to_string(),
            dir.join("tasks/2/t0").display().to_string(),
            true,
        ),
        (
            "memory://restart-copy-a/t0".to_string(),
            "memory://restart-copy-b/t0".to_string(),
            false,
        ),
        (
            file_uri(&dir.join("file-a")),
            file_uri(&dir.join("file-b")),
            false,
        ),
    ];
    for (i, (from, to, copies)) in cases.iter().enumerate() {
        let (restored, checkpoint) = restart_into_a_new_root(
            from,
            to,
            &StorageOptions::new(),
            &work.path().join(format!("case-{i}")),
        );
        assert!(restored.files >= 2, "{from}: {restored:?}");
        if *copies {
            assert_eq!(
                restored.copied_files, restored.files,
                "{from}: {restored:?}"
            );
            assert_eq!(
                restored.copied_bytes, restored.bytes,
                "{from}: {restored:?}"
            );
            // Only the 50 writes after the restore went up.
            assert!(
                checkpoint.uploaded_bytes < restored.bytes / 4,
                "{from}: {checkpoint:?} after {restored:?}"
            );
        } else {
            assert_eq!(restored.copied_files, 0, "{from}: {restored:?}");
            // The restored state went up again (as a materialization target).
            assert!(
                checkpoint.uploaded_bytes >= restored.bytes / 2,
                "{from}: {checkpoint:?} after {restored:?}"
            );
        }
    }
    // Local directories share the file: the new root's SSTs are hard links.
    use std::os::unix::fs::MetadataExt;
    let shared = dir.join("tasks/2/t0/shared");
    let linked = std::fs::read_dir(&shared)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().metadata().unwrap().nlink() > 1)
        .count();
    assert!(linked > 0, "no hard-linked SST in {}", shared.display());
}

/// With local recovery on, the files a restart copied into its new root also get local copies
/// (as uploaded ones do), so the restart after that restores them from local disk instead of
/// downloading them again.
#[test]
fn copied_files_get_local_recovery_copies() {
    use flowstate::backend::lsm::LsmBackendOptions;

    let work = tempfile::tempdir().unwrap();
    let all = KeyGroupRange::all(MAX_PARALLELISM);
    let options = LsmBackendOptions::default()
        .write_cache_size(0)
        .write_buffer_size(64 << 10)
        .local_recovery_dir(Some(work.path().join("local-recovery")));
    let attempt = |n: u32| {
        lsm_at(
            &work.path().join(format!("work-{n}")),
            &format!("memory://copied-local/tasks/{n}/t0"),
            &options,
        )
    };
    let mut model = Contents::new();
    let mut rng = seed("copied_files_get_local_recovery_copies");
    let mut first = attempt(1);
    random_writes(&mut first, &mut model, &mut rng, 6000);
    let handle = first.snapshot(1).unwrap().run().unwrap();
    drop(first);

    let mut second = attempt(2);
    second.restore(&[handle], all).unwrap();
    let restored = second.last_restore_stats().unwrap();
    assert_eq!(restored.copied_files, restored.files, "{restored:?}");
    random_writes(&mut second, &mut model, &mut rng, 50);
    let handle = second.snapshot(2).unwrap().run().unwrap();
    drop(second);

    let mut third = attempt(3);
    third.restore(&[handle], all).unwrap();
    let again = third.last_restore_stats().unwrap();
    assert!(
        again.local_bytes >= restored.copied_bytes && again.downloaded_bytes < again.bytes / 4,
        "{again:?} after {restored:?}"
    );
    assert_eq!(contents(&mut third), model);
}

/// A server-side copy that fails (a permission, a flaky store) does not fail the restore: the
/// file is simply uploaded by the checkpoints after it, and everything restores.
#[test]
fn a_failed_copy_leaves_the_file_to_the_next_checkpoint() {
    use flowstate::backend::lsm::{LsmBackend, LsmBackendOptions};

    #[derive(Debug)]
    struct CopyFails;
    impl StorageInterceptor for CopyFails {
        fn copy_from(
            &self,
            _inner: &dyn CheckpointStorage,
            _source: &dyn CheckpointStorage,
            from: &str,
            _to: &str,
        ) -> flowstate::Result<bool> {
            Err(flowstate::Error::invalid(format!("copy of {from} refused")))
        }
    }
    let work = tempfile::tempdir().unwrap();
    let all = KeyGroupRange::all(MAX_PARALLELISM);
    let options = LsmBackendOptions::default()
        .write_cache_size(0)
        .write_buffer_size(64 << 10);
    let mut model = Contents::new();
    let mut rng = seed("a_failed_copy_leaves_the_file_to_the_next_checkpoint");
    let mut old = lsm_at(
        &work.path().join("old"),
        "memory://failed-copy/tasks/1/t0",
        &options,
    );
    random_writes(&mut old, &mut model, &mut rng, 6000);
    let handle = old.snapshot(1).unwrap().run().unwrap();
    drop(old);
    let own = Arc::new(InterceptedStorage {
        inner: open_storage("memory://failed-copy/tasks/2/t0").unwrap(),
        interceptor: CopyFails,
    });
    let mut new = LsmBackend::open(
        config(all),
        own,
        options.clone().working_dir(work.path().join("new")),
    )
    .unwrap();
    new.restore(&[handle], all).unwrap();
    let restored = new.last_restore_stats().unwrap();
    assert_eq!(restored.copied_files, 0, "{restored:?}");
    let next = new.snapshot(2).unwrap().run().unwrap();
    let checkpoint = new.last_checkpoint_stats().unwrap();
    assert!(
        checkpoint.uploaded_bytes >= restored.bytes / 2,
        "{checkpoint:?} after {restored:?}"
    );
    let mut again = lsm_at(
        &work.path().join("again"),
        "memory://failed-copy/tasks/3/t0",
        &options,
    );
    again.restore(&[next], all).unwrap();
    assert_eq!(contents(&mut again), model);
}

/// An LSM backend over all key groups with its store in `dir`, checkpointing to `location`.
fn lsm_at(
    dir: &std::path::Path,
    location: &str,
    options: &flowstate::backend::lsm::LsmBackendOptions,
) -> flowstate::LsmBackend {
    let storage = open_storage(location).unwrap();
    let all = KeyGroupRange::all(MAX_PARALLELISM);
    flowstate::LsmBackend::open(config(all), storage, options.clone().working_dir(dir)).unwrap()
}

/// Names are written once: when retention fails after checkpoint 2 is durably published (the
/// checkpoint is reported failed), checkpoint 3 neither rewrites nor re-creates any file that
/// published checkpoint 2 lists — every file is created exactly once and keeps its bytes.
#[test]
fn a_retention_failure_after_publish_never_rewrites_published_files() {
    #[derive(Debug, Default)]
    struct RetentionFails {
        created: parking_lot::Mutex<Vec<String>>,
        fail_unpublish: std::sync::atomic::AtomicBool,
    }
    impl StorageInterceptor for RetentionFails {
        fn create_file(
            &self,
            inner: &dyn CheckpointStorage,
            path: &str,
        ) -> flowstate::Result<Box<dyn flowstate::checkpoint::storage::CheckpointFileWriter>>
        {
            self.created.lock().push(path.to_string());
            inner.create_file(path)
        }
        fn unpublish_metadata(
            &self,
            inner: &dyn CheckpointStorage,
            checkpoint_id: u64,
        ) -> flowstate::Result<()> {
            if self
                .fail_unpublish
                .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                return Err(flowstate::Error::invalid("injected retention failure"));
            }
            inner.unpublish_metadata(checkpoint_id)
        }
    }
    for location in ["dir", "memory://write-once-retention"] {
        let dir = tempfile::tempdir().unwrap();
        let inner = if location == "dir" {
            open_storage(&dir.path().join("ckpt").display().to_string()).unwrap()
        } else {
            open_storage(location).unwrap()
        };
        let storage = Arc::new(InterceptedStorage {
            inner,
            interceptor: RetentionFails::default(),
        });
        let all = KeyGroupRange::all(MAX_PARALLELISM);
        let options = LsmBackendOptions::default()
            .write_buffer_size(32 << 10)
            .retained_checkpoints(1);
        let mut b = flowstate::LsmBackend::open(
            config(all),
            storage.clone(),
            options.working_dir(dir.path().join("work")),
        )
        .unwrap();
        let mut model = Contents::new();
        let mut rng = 5;
        random_writes(&mut b, &mut model, &mut rng, 2000);
        b.snapshot(1).unwrap().run().unwrap();
        random_writes(&mut b, &mut model, &mut rng, 2000);
        storage
            .interceptor
            .fail_unpublish
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let err = b.snapshot(2).unwrap().run().unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        // Checkpoint 2 is published all the same: its files are what a restore would read.
        let published = read_metadata(storage.as_ref(), 2).unwrap();
        let bytes_of = |m: &CheckpointMetadata| -> Vec<(String, Vec<u8>)> {
            m.files
                .iter()
                .map(|f| {
                    let path = f.file.path.clone();
                    let bytes = storage.read_file(&path).unwrap();
                    (path, bytes)
                })
                .collect()
        };
        let before = bytes_of(&published);
        random_writes(&mut b, &mut model, &mut rng, 500);
        b.snapshot(3).unwrap().run().unwrap();
        for (path, bytes) in &before {
            if storage.exists(path).unwrap() {
                assert_eq!(
                    &storage.read_file(path).unwrap(),
                    bytes,
                    "{location}: {path}"
                );
            }
        }
        let created = storage.interceptor.created.lock().clone();
        let mut unique = created.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            created.len(),
            "{location}: a name was written twice: {created:?}"
        );
        let h = b.snapshot(4).unwrap().run().unwrap();
        let mut r = flowstate::LsmBackend::open(
            config(all),
            storage.clone(),
            LsmBackendOptions::new(dir.path().join("restored")),
        )
        .unwrap();
        r.restore(&[h], all).unwrap();
        assert_eq!(contents(&mut r), model, "{location}");
    }
}

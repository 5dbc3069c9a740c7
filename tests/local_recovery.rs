//! Local recovery of the LSM backend: with checkpoints in a storage that is not a local directory
//! (here a wrapper that counts the bytes read, as an object store would bill them), a restore on
//! the same machine takes the SSTs from the local copies whose size and crc32 match, downloads
//! only what is missing or damaged, reports both in `RestoreStats`, and prunes copies no retained
//! checkpoint lists.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flowstate::backend::lsm::LsmBackendOptions;
use flowstate::checkpoint::storage::{CheckpointStorage, LocalDirStorage};
use flowstate::internals::read_metadata;
use flowstate::internals::root_key;
use flowstate::keys::{composite_key, key_group_for_key};
use flowstate::{BackendConfig, LsmBackend, Result, StateBackend, StateDescriptor, StateKind};
use support::{InterceptedStorage, StorageInterceptor};

/// Makes the storage it intercepts look remote: another location (not reachable by path, so
/// restore cannot hard-link from it), and it counts the bytes read.
#[derive(Debug, Default)]
struct Remote {
    read: AtomicU64,
}

impl StorageInterceptor for Remote {
    fn location(&self, _inner: &dyn CheckpointStorage) -> String {
        "remote://test-bucket/job".to_string()
    }
    fn read_file(&self, inner: &dyn CheckpointStorage, path: &str) -> Result<Vec<u8>> {
        let bytes = inner.read_file(path)?;
        self.read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }
    fn read_range(
        &self,
        inner: &dyn CheckpointStorage,
        path: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        self.read.fetch_add(len, Ordering::Relaxed);
        inner.read_range(path, offset, len)
    }
}

/// Checkpoint storage in a local directory that looks remote and counts the bytes read from it.
type RemoteStorage = InterceptedStorage<Remote>;

impl RemoteStorage {
    fn open(dir: &Path) -> Arc<Self> {
        Arc::new(InterceptedStorage {
            inner: Arc::new(LocalDirStorage::open(dir).unwrap()),
            interceptor: Remote::default(),
        })
    }

    fn bytes_read(&self) -> u64 {
        self.interceptor.read.load(Ordering::Relaxed)
    }
}

/// A backend with its working directory at `work`, checkpointing into `storage`, keeping
/// local-recovery copies in `local` if given.
fn backend(work: &Path, storage: &Arc<RemoteStorage>, local: Option<&Path>) -> LsmBackend {
    LsmBackend::open(
        BackendConfig::default(),
        storage.clone(),
        options(local).working_dir(work),
    )
    .unwrap()
}

fn key(i: u64) -> Vec<u8> {
    let user = format!("key-{i}");
    composite_key(
        key_group_for_key(user.as_bytes(), 128),
        user.as_bytes(),
        b"",
        b"",
    )
}

fn options(local: Option<&Path>) -> LsmBackendOptions {
    LsmBackendOptions::default()
        .write_buffer_size(64 << 10)
        .target_file_size(64 << 10)
        .retained_checkpoints(2)
        .local_recovery_dir(local.map(Path::to_path_buf))
}

fn contents(backend: &mut LsmBackend) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let id = backend
        .register(&StateDescriptor::new("counts", StateKind::Value))
        .unwrap();
    backend
        .scan_prefix(id, &[])
        .unwrap()
        .map(|e| e.unwrap())
        .collect()
}

/// Writes `rounds` rounds of 2000 keys with a checkpoint after each; returns the model.
fn write_rounds(backend: &mut LsmBackend, rounds: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let id = backend
        .register(&StateDescriptor::new("counts", StateKind::Value))
        .unwrap();
    let mut model = BTreeMap::new();
    for round in 1..=rounds {
        for i in 0..2000u64 {
            let k = key((i * 7 + round * 13) % 5000);
            let v = format!("round {round} value {i:0>90}").into_bytes();
            backend.put(id, &k, &v).unwrap();
            model.insert(k, v);
        }
        backend.snapshot(round).unwrap().run().unwrap();
    }
    model
}

fn local_copies(local: &Path, storage: &RemoteStorage) -> Vec<std::path::PathBuf> {
    let dir = local.join(root_key(&storage.location())).join("shared");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn restore_uses_matching_local_copies_and_downloads_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local-recovery");
    let storage = RemoteStorage::open(&dir.path().join("remote"));
    let mut first = backend(&dir.path().join("work-1"), &storage, Some(&local));
    let model = write_rounds(&mut first, 4);
    drop(first);
    let copies = local_copies(&local, &storage);
    assert!(!copies.is_empty(), "checkpoints keep local copies");

    // Same machine, new process: everything comes from the local copies.
    let mut second = backend(&dir.path().join("work-2"), &storage, Some(&local));
    let read_before = storage.bytes_read();
    assert_eq!(second.restore_latest().unwrap(), Some(4));
    let stats = second.last_restore_stats().unwrap();
    assert_eq!(stats.checkpoint_ids, vec![4]);
    assert!(stats.files > 0 && stats.bytes > 0);
    assert_eq!((stats.downloaded_files, stats.downloaded_bytes), (0, 0));
    assert_eq!(
        (stats.local_files, stats.local_bytes),
        (stats.files, stats.bytes)
    );
    // Only `_metadata` was read from storage.
    let metadata_bytes = storage.bytes_read() - read_before;
    assert!(
        metadata_bytes < stats.bytes / 4,
        "read {metadata_bytes} bytes"
    );
    assert_eq!(contents(&mut second), model);
    drop(second);

    // A damaged copy (same size, other bytes) and a missing one are downloaded; the rest is local.
    let listed = read_metadata(storage.as_ref(), 4).unwrap().files;
    let copies: Vec<_> = local_copies(&local, &storage)
        .into_iter()
        .filter(|p| {
            let name = format!("shared/{}", p.file_name().unwrap().to_str().unwrap());
            listed.iter().any(|f| f.file.path == name)
        })
        .collect();
    assert!(copies.len() >= 2, "{copies:?}");
    let damaged = &copies[0];
    let mut bytes = std::fs::read(damaged).unwrap();
    bytes[10] ^= 0xff;
    // Break the hard link first so the store's own file (if any) stays intact.
    std::fs::remove_file(damaged).unwrap();
    std::fs::write(damaged, &bytes).unwrap();
    let missing = &copies[1];
    let missing_size = std::fs::metadata(missing).unwrap().len();
    std::fs::remove_file(missing).unwrap();
    let mut third = backend(&dir.path().join("work-3"), &storage, Some(&local));
    assert_eq!(third.restore_latest().unwrap(), Some(4));
    let stats = third.last_restore_stats().unwrap();
    assert_eq!(stats.downloaded_files, 2, "{stats:?}");
    assert_eq!(stats.downloaded_bytes, bytes.len() as u64 + missing_size);
    assert_eq!(stats.local_files, stats.files - 2);
    assert_eq!(
        stats.local_bytes + stats.downloaded_bytes + stats.linked_bytes,
        stats.bytes
    );
    assert_eq!(contents(&mut third), model);
    drop(third);
    // The downloads replaced the bad copies: the next restore is all local again.
    let mut fourth = backend(&dir.path().join("work-4"), &storage, Some(&local));
    fourth.restore_latest().unwrap();
    let stats = fourth.last_restore_stats().unwrap();
    assert_eq!(stats.downloaded_bytes, 0, "{stats:?}");
    assert_eq!(contents(&mut fourth), model);
}

#[test]
fn without_local_recovery_everything_is_downloaded() {
    let dir = tempfile::tempdir().unwrap();
    let storage = RemoteStorage::open(&dir.path().join("remote"));
    let mut first = backend(&dir.path().join("work-1"), &storage, None);
    let model = write_rounds(&mut first, 2);
    drop(first);
    let mut second = backend(&dir.path().join("work-2"), &storage, None);
    let read_before = storage.bytes_read();
    second.restore_latest().unwrap();
    let stats = second.last_restore_stats().unwrap();
    assert_eq!(stats.local_files, 0);
    assert_eq!(
        (stats.downloaded_files, stats.downloaded_bytes),
        (stats.files, stats.bytes)
    );
    assert!(storage.bytes_read() - read_before >= stats.bytes);
    assert_eq!(contents(&mut second), model);
}

#[test]
fn copies_not_listed_by_a_retained_checkpoint_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local-recovery");
    let storage = RemoteStorage::open(&dir.path().join("remote"));
    let mut backend = backend(&dir.path().join("work"), &storage, Some(&local));
    write_rounds(&mut backend, 12);
    let copies = local_copies(&local, &storage);
    let shared: Vec<String> = storage.list("shared").unwrap();
    let names = |paths: &[std::path::PathBuf]| -> Vec<String> {
        paths
            .iter()
            .map(|p| format!("shared/{}", p.file_name().unwrap().to_str().unwrap()))
            .collect()
    };
    // Every copy is a file some retained checkpoint lists (retention deleted the others from
    // storage, and pruning from the local copies).
    for name in names(&copies) {
        assert!(backend.shared_references(&name) > 0, "{name} kept");
        assert!(shared.contains(&name), "{name} is in storage");
    }
    assert!(copies.len() <= shared.len());
}

/// Every SST block and the footer end with the crc32 of the bytes before them, and the crc32 of
/// `M || crc32(M)` is a constant, so rewriting the footer's bytes and its crc32 gives another
/// file of the same size and whole-file crc32. A local copy like that is not the listed file:
/// the restore must see it (by the listed XXH3-64) and download the file instead.
#[test]
fn a_local_copy_with_the_listed_size_and_crc32_but_other_content_is_downloaded_again() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local-recovery");
    let storage = RemoteStorage::open(&dir.path().join("remote"));
    let mut first = backend(&dir.path().join("work-1"), &storage, Some(&local));
    let model = write_rounds(&mut first, 2);
    drop(first);
    let listed = read_metadata(storage.as_ref(), 2).unwrap().files;
    let copy = local_copies(&local, &storage)
        .into_iter()
        .find(|p| {
            let name = format!("shared/{}", p.file_name().unwrap().to_str().unwrap());
            listed.iter().any(|f| f.file.path == name)
        })
        .unwrap();
    let original = std::fs::read(&copy).unwrap();
    let mut forged = original.clone();
    // The 64-byte footer: 52 covered bytes, their crc32, the 8-byte magic (FORMAT.md §8).
    let footer = forged.len() - 64;
    forged[footer] ^= 0x5a;
    let crc = crc32fast::hash(&forged[footer..footer + 52]);
    forged[footer + 52..footer + 56].copy_from_slice(&crc.to_le_bytes());
    assert_ne!(forged, original);
    assert_eq!(
        crc32fast::hash(&forged),
        crc32fast::hash(&original),
        "the whole-file crc32 does not see the change"
    );
    std::fs::remove_file(&copy).unwrap();
    std::fs::write(&copy, &forged).unwrap();

    let mut second = backend(&dir.path().join("work-2"), &storage, Some(&local));
    assert_eq!(second.restore_latest().unwrap(), Some(2));
    let stats = second.last_restore_stats().unwrap();
    assert_eq!(stats.downloaded_files, 1, "{stats:?}");
    assert_eq!(stats.downloaded_bytes, original.len() as u64);
    assert_eq!(contents(&mut second), model);
}

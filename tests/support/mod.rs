//! Scenarios shared by the object-storage tests: the `CheckpointStorage` contract and backend
//! checkpoint → restore round trips against a BTreeMap model, run on any storage location
//! (`memory://`, `file://`, a Garage `s3://` bucket).
#![allow(dead_code)]

pub mod garage;
pub mod oracle;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use flowstate::backend::lsm::LsmBackendOptions;
use flowstate::checkpoint::storage::{CheckpointFileWriter, CheckpointStorage, metadata_path};
use flowstate::checkpoint::uri::{StorageOptions, open_storage_with};
use flowstate::internals::read_metadata;
use flowstate::internals::snapshot_handle;
use flowstate::keys::{composite_key, key_group_for_key};
use flowstate::{
    BackendConfig, FsBackend, KeyGroupRange, LsmBackend, SnapshotHandle, StateBackend,
    StateDescriptor, StateKind,
};

pub const MAX_PARALLELISM: u16 = 128;

pub type Contents = BTreeMap<(String, Vec<u8>), Vec<u8>>;

pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("FLOWSTATE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: FLOWSTATE_SEED={seed}");
    seed
}

pub fn key(index: u64) -> Vec<u8> {
    let user = format!("key-{index}");
    composite_key(
        key_group_for_key(user.as_bytes(), MAX_PARALLELISM),
        user.as_bytes(),
        b"",
        b"",
    )
}

pub fn range(first: u16, last: u16) -> KeyGroupRange {
    KeyGroupRange::new(first, last).unwrap()
}

pub fn config(r: KeyGroupRange) -> BackendConfig {
    BackendConfig::new(MAX_PARALLELISM, r).unwrap()
}

pub fn contents(backend: &mut dyn StateBackend) -> Contents {
    let mut out = Contents::new();
    for descriptor in backend.states() {
        let id = backend.register(&descriptor).unwrap();
        for entry in backend.scan_prefix(id, &[]).unwrap() {
            let (k, v) = entry.unwrap();
            out.insert((descriptor.name.clone(), k), v);
        }
    }
    out
}

pub fn restrict(contents: &Contents, r: KeyGroupRange) -> Contents {
    contents
        .iter()
        .filter(|((_, k), _)| r.contains(u16::from_be_bytes([k[0], k[1]])))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Steps `rng` until it picks, among the first `keys` keys, one whose key group is in `owned`.
pub fn next_owned_key(owned: KeyGroupRange, rng: &mut u64, keys: u64) -> Vec<u8> {
    loop {
        *rng = mix(*rng);
        let k = key(*rng % keys);
        if owned.contains(u16::from_be_bytes([k[0], k[1]])) {
            return k;
        }
    }
}

/// Seeded puts (values of ~100 bytes) and deletes of keys the backend owns, mirrored in `model`.
pub fn random_writes(b: &mut dyn StateBackend, model: &mut Contents, rng: &mut u64, count: usize) {
    let v = b
        .register(&StateDescriptor::new("v", StateKind::Value))
        .unwrap();
    let owned = b.config().key_group_range;
    for _ in 0..count {
        let k = next_owned_key(owned, rng, 3000);
        if (*rng).is_multiple_of(8) {
            b.delete(v, &k).unwrap();
            model.remove(&("v".to_string(), k));
        } else {
            let mut val = Vec::with_capacity(104);
            let mut z = *rng;
            while val.len() < 100 {
                z = mix(z);
                val.extend_from_slice(&z.to_le_bytes());
            }
            b.put(v, &k, &val).unwrap();
            model.insert(("v".to_string(), k), val);
        }
    }
}

/// The `CheckpointStorage` contract (the assertions of `LocalDirStorage`'s own test, plus
/// multipart-sized files and an abandoned writer). `storage` must be empty.
pub fn storage_contract(storage: &dyn CheckpointStorage) {
    storage_contract_with(storage, true);
}

/// [`storage_contract`]; `refuses_overwrite` is false for a server that ignores conditional
/// PUT (`If-None-Match: *`), where a single PUT to an existing name replaces the object.
pub fn storage_contract_with(storage: &dyn CheckpointStorage, refuses_overwrite: bool) {
    assert!(
        storage.list("").unwrap().is_empty(),
        "storage must start empty"
    );
    storage.write_file("chk-3/a", b"hello world").unwrap();
    storage.write_file("shared/s1", b"s").unwrap();
    // Names are written once: an existing file is refused, never replaced (FORMAT.md §4.5).
    if refuses_overwrite {
        write_once(storage);
    }
    // A small file created only if absent: exactly one of two writers wins.
    assert!(storage.create_once("OWNER", b"job 1\n").unwrap());
    assert!(!storage.create_once("OWNER", b"job 2\n").unwrap());
    assert_eq!(storage.read_file("OWNER").unwrap(), b"job 1\n");
    storage.delete("OWNER").unwrap();
    assert_eq!(storage.read_file("chk-3/a").unwrap(), b"hello world");
    assert_eq!(storage.read_range("chk-3/a", 6, 5).unwrap(), b"world");
    assert_eq!(storage.read_range("chk-3/a", 11, 0).unwrap(), b"");
    assert!(
        storage
            .read_range("chk-3/a", 6, 6)
            .unwrap_err()
            .is_corruption()
    );
    assert!(
        storage
            .read_range("chk-3/a", u64::MAX, 2)
            .unwrap_err()
            .is_corruption()
    );
    assert_eq!(storage.file_size("chk-3/a").unwrap(), 11);
    let missing = storage.file_size("chk-3/missing").unwrap_err();
    assert!(
        matches!(&missing, flowstate::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{missing}"
    );
    assert!(storage.read_file("chk-3/missing").is_err());
    assert!(!storage.exists("chk-3/missing").unwrap());
    storage.publish_metadata(3, b"meta").unwrap();
    storage.publish_metadata(4, b"meta").unwrap();
    storage.unpublish_metadata(4).unwrap();
    storage.unpublish_metadata(4).unwrap();
    storage.delete_all("chk-4").unwrap();
    assert_eq!(
        storage.list("").unwrap(),
        ["chk-3/_metadata", "chk-3/a", "shared/s1"]
    );
    assert_eq!(storage.children("").unwrap(), ["chk-3", "shared"]);
    assert_eq!(storage.children("chk-3").unwrap(), ["_metadata", "a"]);
    assert!(storage.children("nothing-here").unwrap().is_empty());
    assert!(storage.list("nothing-here").unwrap().is_empty());
    assert_eq!(
        storage.list_sizes("").unwrap(),
        [
            ("chk-3/_metadata".to_string(), 4),
            ("chk-3/a".to_string(), 11),
            ("shared/s1".to_string(), 1)
        ]
    );
    assert_eq!(
        storage.list_sizes("shared").unwrap(),
        [("shared/s1".to_string(), 1)]
    );
    assert!(storage.list_sizes("nothing-here").unwrap().is_empty());
    assert!(storage.exists(&metadata_path(3)).unwrap());
    assert_eq!(storage.read_file(&metadata_path(3)).unwrap(), b"meta");
    storage.delete("chk-3/a").unwrap();
    storage.delete("chk-3/a").unwrap();
    storage.delete_all("chk-3").unwrap();
    assert_eq!(storage.list("").unwrap(), ["shared/s1"]);
    assert!(storage.delete_all("").is_err());
    // Paths are validated: nothing escapes the root.
    assert!(storage.write_file("../escape", b"x").is_err());
    assert!(storage.read_file("/etc/passwd").is_err());
    assert!(storage.create_file("a//b").is_err());

    // A file larger than a part (8 MiB by default) goes multipart; written in odd chunks.
    let big: Vec<u8> = (0..(12u64 << 20) + 12_345)
        .map(|i| (mix(i) >> 7) as u8)
        .collect();
    let mut writer = storage.create_file("shared/big").unwrap();
    for chunk in big.chunks(999_983) {
        writer.write_all(chunk).unwrap();
    }
    assert!(
        !storage.exists("shared/big").unwrap(),
        "visible before finish"
    );
    assert_eq!(writer.finish().unwrap(), big.len() as u64);
    assert_eq!(storage.file_size("shared/big").unwrap(), big.len() as u64);
    assert!(
        storage
            .list_sizes("shared")
            .unwrap()
            .contains(&("shared/big".to_string(), big.len() as u64))
    );
    assert!(storage.read_file("shared/big").unwrap() == big);
    // A multipart upload to an existing name is refused too, and changes nothing.
    if let (true, Ok(mut writer)) = (refuses_overwrite, storage.create_file("shared/big")) {
        let refused = writer
            .write_all(&big)
            .and_then(|()| writer.finish().map(|_| ()));
        assert!(
            refused.is_err(),
            "a multipart upload replaced an existing file"
        );
    }
    assert!(storage.read_file("shared/big").unwrap() == big);
    let at = (8u64 << 20) - 10;
    assert_eq!(
        storage.read_range("shared/big", at, 20).unwrap(),
        big[at as usize..at as usize + 20]
    );
    // An abandoned writer (dropped without finish, part way through a multipart upload)
    // leaves no object behind.
    let mut writer = storage.create_file("shared/abandoned").unwrap();
    writer.write_all(&big).unwrap();
    drop(writer);
    assert!(!storage.exists("shared/abandoned").unwrap());
    storage.delete_all("shared").unwrap();
    assert!(storage.list("").unwrap().is_empty());
}

/// An existing name is refused by `write_file` and by a writer (at creation or at finish), and
/// the file keeps its bytes. Expects `chk-3/a` = "hello world" and `shared/s1` = "s".
fn write_once(storage: &dyn CheckpointStorage) {
    let again = storage.write_file("chk-3/a", b"other bytes").unwrap_err();
    assert!(
        matches!(&again, flowstate::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{again}"
    );
    // Refused when the writer is created (a local directory) or when it finishes (a PUT).
    if let Ok(mut writer) = storage.create_file("shared/s1") {
        let refused = writer
            .write_all(b"t")
            .and_then(|()| writer.finish().map(|_| ()));
        assert!(refused.is_err(), "an existing file was replaced");
    }
    assert_eq!(storage.read_file("shared/s1").unwrap(), b"s");
}

/// What a test storage changes about the storage it wraps (counts reads, fails an upload, names
/// another location); every call it does not change goes to `inner` as is.
pub trait StorageInterceptor: std::fmt::Debug + Send + Sync {
    fn location(&self, inner: &dyn CheckpointStorage) -> String {
        inner.location()
    }
    fn create_file(
        &self,
        inner: &dyn CheckpointStorage,
        path: &str,
    ) -> flowstate::Result<Box<dyn CheckpointFileWriter>> {
        inner.create_file(path)
    }
    fn read_file(&self, inner: &dyn CheckpointStorage, path: &str) -> flowstate::Result<Vec<u8>> {
        inner.read_file(path)
    }
    fn read_range(
        &self,
        inner: &dyn CheckpointStorage,
        path: &str,
        offset: u64,
        len: u64,
    ) -> flowstate::Result<Vec<u8>> {
        inner.read_range(path, offset, len)
    }
    fn file_size(&self, inner: &dyn CheckpointStorage, path: &str) -> flowstate::Result<u64> {
        inner.file_size(path)
    }
    fn copy_from(
        &self,
        inner: &dyn CheckpointStorage,
        source: &dyn CheckpointStorage,
        from: &str,
        to: &str,
    ) -> flowstate::Result<bool> {
        inner.copy_from(source, from, to)
    }
    fn unpublish_metadata(
        &self,
        inner: &dyn CheckpointStorage,
        checkpoint_id: u64,
    ) -> flowstate::Result<()> {
        inner.unpublish_metadata(checkpoint_id)
    }
}

/// `inner` seen through `interceptor`. `write_file` and `open_sibling` keep the trait's
/// defaults (so `write_file` goes through `create_file`); the rest is forwarded to `inner`.
#[derive(Debug)]
pub struct InterceptedStorage<I> {
    pub inner: Arc<dyn CheckpointStorage>,
    pub interceptor: I,
}

impl<I: StorageInterceptor> CheckpointStorage for InterceptedStorage<I> {
    fn location(&self) -> String {
        self.interceptor.location(self.inner.as_ref())
    }
    fn create_file(&self, path: &str) -> flowstate::Result<Box<dyn CheckpointFileWriter>> {
        self.interceptor.create_file(self.inner.as_ref(), path)
    }
    fn read_file(&self, path: &str) -> flowstate::Result<Vec<u8>> {
        self.interceptor.read_file(self.inner.as_ref(), path)
    }
    fn read_range(&self, path: &str, offset: u64, len: u64) -> flowstate::Result<Vec<u8>> {
        self.interceptor
            .read_range(self.inner.as_ref(), path, offset, len)
    }
    fn file_size(&self, path: &str) -> flowstate::Result<u64> {
        self.interceptor.file_size(self.inner.as_ref(), path)
    }
    fn exists(&self, path: &str) -> flowstate::Result<bool> {
        self.inner.exists(path)
    }
    fn list(&self, prefix: &str) -> flowstate::Result<Vec<String>> {
        self.inner.list(prefix)
    }
    fn list_sizes(&self, prefix: &str) -> flowstate::Result<Vec<(String, u64)>> {
        self.inner.list_sizes(prefix)
    }
    fn copy_from(
        &self,
        source: &dyn CheckpointStorage,
        from: &str,
        to: &str,
    ) -> flowstate::Result<bool> {
        self.interceptor
            .copy_from(self.inner.as_ref(), source, from, to)
    }
    fn children(&self, prefix: &str) -> flowstate::Result<Vec<String>> {
        self.inner.children(prefix)
    }
    fn delete(&self, path: &str) -> flowstate::Result<()> {
        self.inner.delete(path)
    }
    fn delete_all(&self, prefix: &str) -> flowstate::Result<()> {
        self.inner.delete_all(prefix)
    }
    fn publish_metadata(&self, checkpoint_id: u64, bytes: &[u8]) -> flowstate::Result<()> {
        self.inner.publish_metadata(checkpoint_id, bytes)
    }
    fn unpublish_metadata(&self, checkpoint_id: u64) -> flowstate::Result<()> {
        self.interceptor
            .unpublish_metadata(self.inner.as_ref(), checkpoint_id)
    }
    fn upload_parallelism(&self) -> usize {
        self.inner.upload_parallelism()
    }
}

pub fn open(location: &str, options: &StorageOptions) -> Arc<dyn CheckpointStorage> {
    open_storage_with(location, options).unwrap()
}

fn lsm(work: &Path, storage: Arc<dyn CheckpointStorage>, r: KeyGroupRange) -> LsmBackend {
    let options = LsmBackendOptions::new(work)
        .retained_checkpoints(2)
        .write_buffer_size(64 << 10)
        // Every write reaches the store at once, so its flushes and compactions (and with them
        // retention deleting shared files) follow the write pattern; the cache is covered by
        // the conformance suite.
        .write_cache_size(0);
    LsmBackend::open(config(r), storage, options).unwrap()
}

/// Checks that every file a completed checkpoint lists exists with its size and that every
/// shared object is referenced by a retained checkpoint.
pub fn check_storage_consistent(b: &LsmBackend) {
    let storage = b.storage();
    let mut listed = BTreeMap::new();
    for id in b.completed_checkpoints() {
        for f in read_metadata(storage.as_ref(), id).unwrap().files {
            assert_eq!(storage.file_size(&f.file.path).unwrap(), f.file.size);
            *listed.entry(f.file.path).or_insert(0u32) += 1;
        }
    }
    for path in storage.list("shared").unwrap() {
        let refs = listed.get(&path).copied().unwrap_or(0);
        assert!(refs > 0, "unreferenced shared object {path}");
        assert_eq!(b.shared_references(&path), refs, "{path}");
    }
}

/// Two LSM tasks (key groups halved) take `rounds` incremental checkpoints each into
/// `<location>/task-<i>` (retention 2 deletes shared files), then a fresh backend restores both
/// latest handles (rescale 2 -> 1), checkpoints into its own prefix, and a third restores that.
/// Every restore is compared with the model. Returns the model size for the caller's message.
pub fn lsm_incremental_round_trip(
    location: &str,
    options: &StorageOptions,
    work: &Path,
    rounds: u64,
) -> usize {
    let mut rng = seed("lsm_incremental_round_trip");
    let mut model = Contents::new();
    let halves = [range(0, 63), range(64, 127)];
    let mut handles: Vec<SnapshotHandle> = Vec::new();
    for (i, r) in halves.into_iter().enumerate() {
        let storage = open(&format!("{location}/task-{i}"), options);
        let mut b = lsm(&work.join(format!("task-{i}")), storage.clone(), r);
        let mut shared_seen = std::collections::BTreeSet::new();
        let mut last = None;
        for id in 1..=rounds {
            random_writes(&mut b, &mut model, &mut rng, 1500);
            b.flush_write_cache().unwrap();
            b.db().flush().unwrap();
            last = Some(b.snapshot(id).unwrap().run().unwrap());
            assert_eq!(b.completed_checkpoints().len(), (id as usize).min(2));
            check_storage_consistent(&b);
            shared_seen.extend(storage.list("shared").unwrap());
        }
        let now: std::collections::BTreeSet<_> =
            storage.list("shared").unwrap().into_iter().collect();
        assert!(
            rounds < 5 || shared_seen.len() > now.len(),
            "retention deleted no shared object ({} seen, {} now)",
            shared_seen.len(),
            now.len()
        );
        assert_eq!(contents(&mut b), restrict(&model, r));
        handles.push(last.unwrap());
    }
    let all = KeyGroupRange::all(MAX_PARALLELISM);
    let own = open(&format!("{location}/restored"), options);
    let mut one = lsm(&work.join("restored"), own.clone(), all);
    one.restore(&handles, all).unwrap();
    assert_eq!(contents(&mut one), model, "2 -> 1 through {location}");
    random_writes(&mut one, &mut model, &mut rng, 500);
    let h = one.snapshot(100).unwrap().run().unwrap();
    assert!(h_root(&h).starts_with(location));
    let mut again = lsm(
        &work.join("again"),
        open(&format!("{location}/again"), options),
        all,
    );
    again.restore(&[h], all).unwrap();
    assert_eq!(
        contents(&mut again),
        model,
        "restore of the rescaled checkpoint"
    );
    // A fresh backend on the same storage finds the checkpoints and restores the latest.
    let mut reopened = lsm(
        &work.join("reopened"),
        open(&format!("{location}/restored"), options),
        all,
    );
    assert_eq!(reopened.restore_latest().unwrap(), Some(100));
    assert_eq!(contents(&mut reopened), model);
    model.len()
}

fn h_root(h: &SnapshotHandle) -> String {
    match &h.data {
        flowstate::backend::SnapshotData::Files { root, .. } => root.clone(),
        other => panic!("not a file handle: {other:?}"),
    }
}

/// FsBackend: full checkpoints into `location`, restore into a fresh backend (also by URI from
/// a backend whose own storage is elsewhere), compared with the model.
pub fn fs_round_trip(location: &str, options: &StorageOptions) {
    let mut rng = seed("fs_round_trip");
    let mut model = Contents::new();
    let all = KeyGroupRange::all(MAX_PARALLELISM);
    let storage = open(location, options);
    let mut b = FsBackend::open(
        config(all),
        storage.clone(),
        flowstate::backend::FsBackendOptions::default().retained_checkpoints(2),
    )
    .unwrap();
    let mut handle = None;
    for id in 1..=3 {
        random_writes(&mut b, &mut model, &mut rng, 800);
        handle = Some(b.snapshot(id).unwrap().run().unwrap());
    }
    assert_eq!(b.completed_checkpoints(), [2, 3]);
    let handle = handle.unwrap();
    assert_eq!(h_root(&handle), location);
    let mut restored = FsBackend::new(config(all), open(location, options)).unwrap();
    assert_eq!(restored.restore_latest().unwrap(), Some(3));
    assert_eq!(contents(&mut restored), model);
    let other = open(&format!("{location}-other"), options);
    let mut elsewhere = FsBackend::new(config(all), other).unwrap();
    elsewhere
        .restore(std::slice::from_ref(&handle), all)
        .unwrap();
    assert_eq!(contents(&mut elsewhere), model);
    let meta = read_metadata(storage.as_ref(), 3).unwrap();
    assert_eq!(
        h_root(&snapshot_handle(storage.as_ref(), &meta)),
        h_root(&handle)
    );
}

/// A task restarted into a new storage root (the engine opens one per attempt) restores from
/// the old root's checkpoint, then takes its next checkpoint. `from` and `to` are locations.
/// Returns the restore's stats and what that checkpoint uploaded; afterwards the old root is
/// deleted and the new checkpoint must restore alone to the same contents.
pub fn restart_into_a_new_root(
    from: &str,
    to: &str,
    storage_options: &StorageOptions,
    work: &Path,
) -> (
    flowstate::backend::lsm::RestoreStats,
    flowstate::backend::lsm::CheckpointStats,
) {
    let all = KeyGroupRange::all(MAX_PARALLELISM);
    let options = LsmBackendOptions::default()
        .write_cache_size(0)
        .write_buffer_size(64 << 10);
    let old_storage = open(from, storage_options);
    let mut old = LsmBackend::open(
        config(all),
        old_storage.clone(),
        options.clone().working_dir(work.join("old")),
    )
    .unwrap();
    let mut model = Contents::new();
    let mut rng = seed("restart_into_a_new_root");
    random_writes(&mut old, &mut model, &mut rng, 6000);
    let handle = old.snapshot(1).unwrap().run().unwrap();
    drop(old);

    let mut new = LsmBackend::open(
        config(all),
        open(to, storage_options),
        options.clone().working_dir(work.join("new")),
    )
    .unwrap();
    new.restore(&[handle], all).unwrap();
    let restored = new.last_restore_stats().unwrap();
    random_writes(&mut new, &mut model, &mut rng, 50);
    let next = new.snapshot(2).unwrap().run().unwrap();
    let checkpoint = new.last_checkpoint_stats().unwrap();
    assert_eq!(contents(&mut new), model);
    drop(new);

    // The new root stands alone: the old one may be deleted (as the engine deletes old
    // generations) and its checkpoint still restores.
    old_storage.delete_all("shared").unwrap();
    old_storage.delete_all("chk-1").unwrap();
    let mut again = LsmBackend::open(
        config(all),
        open(&format!("{to}-again"), storage_options),
        options.working_dir(work.join("again")),
    )
    .unwrap();
    again.restore(&[next], all).unwrap();
    assert_eq!(contents(&mut again), model, "{from} -> {to}");
    (restored, checkpoint)
}

/// Runs test `child_test` of the test binary `exe` as a child process (with `env_key` set to
/// `dir`), lets it work for `delay`, then SIGKILLs it. Panics with the child's stderr if it
/// ended by itself first: a kill test whose child never gets killed tests nothing.
pub fn kill_child_after(
    exe: &Path,
    child_test: &str,
    env_key: &str,
    dir: &Path,
    delay: std::time::Duration,
    round: usize,
) {
    use std::io::Read;
    let mut child = std::process::Command::new(exe)
        .args(["--exact", child_test, "--nocapture", "--test-threads=1"])
        .env(env_key, dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    if let Some(status) = child.try_wait().unwrap() {
        let mut err = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            stderr.read_to_string(&mut err).unwrap();
        }
        panic!("round {round}: child exited by itself ({status}):\n{err}");
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
}

/// An `FsBackend` over all key groups of `max_parallelism`, checkpointing into the local
/// directory `dir`.
pub fn fs_backend_in(dir: &Path, max_parallelism: u16) -> FsBackend {
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(flowstate::checkpoint::storage::LocalDirStorage::open(dir).unwrap());
    let config = BackendConfig::new(max_parallelism, KeyGroupRange::all(max_parallelism)).unwrap();
    FsBackend::new(config, storage).unwrap()
}

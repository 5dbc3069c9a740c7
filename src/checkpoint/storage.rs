//! Checkpoint storage: where checkpoint files live (FORMAT.md §4, §10).
//!
//! [`CheckpointStorage`] is the small file-access trait every checkpoint writer and reader goes
//! through (a local directory now, an object store later), so it assumes no rename for data
//! files: only a checkpoint's `_metadata` is published atomically. [`LocalDirStorage`] keeps
//! the invariant that a `chk-<id>/_metadata` in place is durable together with every file it names.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fs::{FsRef, WritableFile, create_dir_durable, std_fs, sync_dir};
use crate::keys::KeyGroupRange;

/// Name of the file that makes a checkpoint directory a completed checkpoint.
pub const METADATA_FILE_NAME: &str = "_metadata";

/// Suffix of temporary files; anything ending in it is incomplete and removed at start-up.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Directory (prefix) of files shared by several checkpoints.
pub const SHARED_DIR: &str = "shared";

/// Prefix of a checkpoint's directory name: `chk-<id>`.
pub const CHECKPOINT_DIR_PREFIX: &str = "chk-";

/// The directory of checkpoint `checkpoint_id`, relative to the storage root: `chk-<id>`.
pub fn checkpoint_dir(checkpoint_id: u64) -> String {
    format!("{CHECKPOINT_DIR_PREFIX}{checkpoint_id}")
}

/// The `_metadata` path of checkpoint `checkpoint_id`: `chk-<id>/_metadata`.
pub fn metadata_path(checkpoint_id: u64) -> String {
    format!("{}/{METADATA_FILE_NAME}", checkpoint_dir(checkpoint_id))
}

/// The checkpoint id of a directory name `chk-<id>` (decimal, no sign, no leading zeros).
pub fn parse_checkpoint_dir(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(CHECKPOINT_DIR_PREFIX)?;
    let id: u64 = digits.parse().ok()?;
    (digits == id.to_string()).then_some(id)
}

/// The ids of the `chk-<id>` directories at the root of `storage` (complete or not), ascending.
pub fn checkpoint_ids(storage: &dyn CheckpointStorage) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> = storage
        .children("")?
        .iter()
        .filter_map(|name| parse_checkpoint_dir(name))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Checks a storage path: relative, `/`-separated, no empty, `.` or `..` component, no `\` or NUL.
///
/// Every path a [`CheckpointStorage`] is given, and every path read from a `_metadata` file,
/// goes through this check, so a corrupt or hostile path can never leave the storage root.
pub fn validate_path(path: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::invalid(format!("storage path '{path}' {why}")));
    if path.is_empty() {
        return bad("is empty");
    }
    if path.starts_with('/') {
        return bad("is absolute");
    }
    if path.contains('\\') || path.contains('\0') {
        return bad("contains '\\' or NUL");
    }
    for component in path.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return bad("has an empty, '.' or '..' component");
        }
    }
    Ok(())
}

/// A file being written; durable once [`CheckpointFileWriter::finish`] returns.
pub trait CheckpointFileWriter: Send {
    /// Appends `bytes`.
    fn write_all(&mut self, bytes: &[u8]) -> Result<()>;
    /// Flushes and fsyncs the file; returns its size in bytes.
    fn finish(self: Box<Self>) -> Result<u64>;
}

/// Where checkpoint files live. Paths are relative to the storage root and checked with
/// [`validate_path`]; prefixes name directories (`""` is the root).
///
/// Data files are written once under their final name (no rename is assumed, so an object store
/// can implement this). The only atomic step is [`CheckpointStorage::publish_metadata`]: a
/// checkpoint exists exactly when its `_metadata` does.
pub trait CheckpointStorage: Send + Sync + fmt::Debug {
    /// Where the storage is, for handles and messages (a directory path or a URI).
    fn location(&self) -> String;

    /// Writes a whole new data file (through [`CheckpointStorage::create_file`], so an existing
    /// name is refused where `create_file` refuses it) and fsyncs it before returning.
    fn write_file(&self, path: &str, bytes: &[u8]) -> Result<()> {
        let mut writer = self.create_file(path)?;
        writer.write_all(bytes)?;
        writer.finish().map(|_| ())
    }

    /// Creates a new data file for streaming writes. Checkpoint files are written once: a
    /// writer never truncates or rewrites an existing file (the local directory storage fails
    /// with an I/O error when `path` exists); a retry writes to a new name.
    fn create_file(&self, path: &str) -> Result<Box<dyn CheckpointFileWriter>>;

    /// Reads a whole file.
    fn read_file(&self, path: &str) -> Result<Vec<u8>>;

    /// Reads `len` bytes at `offset`; reading past the end is [`Error::Corruption`].
    fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// The size of a file in bytes.
    fn file_size(&self, path: &str) -> Result<u64>;

    /// Whether a file exists.
    fn exists(&self, path: &str) -> Result<bool>;

    /// Every file under the directory `prefix` (recursively), as sorted paths relative to the root.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;

    /// Every file under the directory `prefix` (recursively) with its size, sorted by path. An
    /// object store answers from its listing (one request per 1000 files) instead of a size
    /// request per file; the default asks [`CheckpointStorage::file_size`] for each listed file
    /// and leaves out one deleted since the listing.
    fn list_sizes(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for path in self.list(prefix)? {
            match self.file_size(&path) {
                Ok(size) => out.push((path, size)),
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Names of the immediate children (files and directories) of the directory `prefix`, sorted.
    fn children(&self, prefix: &str) -> Result<Vec<String>>;

    /// Deletes a file; a missing file is not an error.
    fn delete(&self, path: &str) -> Result<()>;

    /// Deletes every file under the directory `prefix` and the directory itself; missing is fine.
    fn delete_all(&self, prefix: &str) -> Result<()>;

    /// Atomically and durably puts `bytes` in place as `chk-<checkpoint_id>/_metadata`, after
    /// making every data file written before it durable (FORMAT.md §10).
    fn publish_metadata(&self, checkpoint_id: u64, bytes: &[u8]) -> Result<()>;

    /// Durably removes `chk-<checkpoint_id>/_metadata`: once this returns, the checkpoint is
    /// incomplete even across a crash, so its files may go (FORMAT.md §10). Missing is fine.
    fn unpublish_metadata(&self, checkpoint_id: u64) -> Result<()>;

    /// Creates the small file `path` holding `bytes` only if no file is there: `Ok(true)` when
    /// this call created it (whole and durable), `Ok(false)` when a file existed (left as it
    /// was). Atomic between writers in the local directory storage (a hard link of a complete
    /// temp file) and on object stores with conditional PUT; this default (look, then write) is
    /// not, and serves storages that cannot do better.
    fn create_once(&self, path: &str, bytes: &[u8]) -> Result<bool> {
        if self.exists(path)? {
            return Ok(false);
        }
        self.write_file(path, bytes)?;
        Ok(true)
    }

    /// How many files a checkpoint should upload, and an LSM restore fetch, at once: 1 for a
    /// local directory (the disk is the bottleneck), more for an object store (each request
    /// waits on the network).
    fn upload_parallelism(&self) -> usize {
        1
    }

    /// Makes file `from` of `source` (complete and immutable) file `to` of this storage without
    /// its bytes passing through this process: a hard link between local directories on one
    /// file system, a server-side copy inside one bucket or in-process store. Returns false,
    /// having changed nothing, when the two storages cannot do that (the caller then writes the
    /// bytes itself). On true, `to` is as durable and visible as after `write_file`.
    fn copy_from(&self, source: &dyn CheckpointStorage, from: &str, to: &str) -> Result<bool> {
        let _ = (source, from, to);
        Ok(false)
    }

    /// [`CheckpointStorage::copy_from`] for several files of one source, `(from, to)` each:
    /// whether each was copied, in order. On success every copied file is as durable as after
    /// `copy_from`; on an error some may have been made and must be treated as not copied. The
    /// local directory storage makes every link first and then fsyncs each directory that
    /// gained names once, instead of once per file; this default copies them one by one.
    fn copy_many_from(
        &self,
        source: &dyn CheckpointStorage,
        files: &[(&str, &str)],
    ) -> Result<Vec<bool>> {
        files
            .iter()
            .map(|(from, to)| self.copy_from(source, from, to))
            .collect()
    }

    /// The file's path on the local file system, when the storage is a local directory (so a
    /// restore may hard-link it instead of copying its bytes); `None` for remote storage.
    fn local_path(&self, _path: &str) -> Option<std::path::PathBuf> {
        None
    }

    /// Opens `location`, another place in the same service (a snapshot handle's root), with this
    /// storage's options and credentials; None when this storage has none to lend (a local
    /// directory), and the caller opens `location` with the defaults.
    fn open_sibling(&self, location: &str) -> Option<Result<Arc<dyn CheckpointStorage>>> {
        let _ = location;
        None
    }
}

/// A file a snapshot handle references, in checkpoint storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// Path relative to the checkpoint storage root (e.g. `chk-7/kg-00000-00015` or `shared/000012.sst`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC-32 (IEEE) of the whole file.
    pub crc32: u32,
    /// XXH3-64 of the whole file: a content checksum (the CRC-32s inside SST blocks make the
    /// whole-file CRC-32 of an SST depend on its block sizes only). `None` for files listed by
    /// checkpoints of `_metadata` version 1.
    pub xxh3: Option<u64>,
    /// The key groups the file holds entries of.
    pub key_groups: KeyGroupRange,
}

impl FileRef {
    /// A file at `path` with the size and checksums `listed`, holding entries of `key_groups`.
    pub fn new(path: impl Into<String>, listed: &Listed, key_groups: KeyGroupRange) -> Self {
        FileRef {
            path: path.into(),
            size: listed.size,
            crc32: listed.crc32,
            xxh3: listed.xxh3,
            key_groups,
        }
    }
}

/// A file's size and checksums, as `_metadata` lists them (FORMAT.md §4.3) or as computed from
/// its bytes: the CRC-32 (IEEE) of the whole file and its XXH3-64. The XXH3-64 is what identifies
/// the content: every SST block and footer ends with the CRC-32 of the bytes before it, and the
/// CRC-32 of `M || crc32(M)` is a constant, so the whole-file CRC-32 of an SST depends only on its
/// block sizes. `_metadata` of version 1 lists no XXH3-64 (`None`); then only size and CRC-32
/// are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Size in bytes.
    pub size: u64,
    /// CRC-32 (IEEE) of the whole file.
    pub crc32: u32,
    /// XXH3-64 of the whole file, when known.
    pub xxh3: Option<u64>,
}

impl Listed {
    /// What `_metadata` lists of `file`.
    pub fn of(file: &FileRef) -> Self {
        Listed {
            size: file.size,
            crc32: file.crc32,
            xxh3: file.xxh3,
        }
    }

    /// Size and checksums of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        let mut digest = Digest::new();
        digest.update(bytes);
        digest.finish()
    }

    /// Checks `actual` (computed from the bytes of `path`) against this listing: size, CRC-32,
    /// and XXH3-64 when listed. A mismatch is [`Error::Corruption`] naming `path`.
    pub fn check(&self, path: &str, actual: &Listed) -> Result<()> {
        let hash_differs = matches!((self.xxh3, actual.xxh3), (Some(a), Some(b)) if a != b);
        if actual.size == self.size && actual.crc32 == self.crc32 && !hash_differs {
            return Ok(());
        }
        let hash = |h: Option<u64>| h.map_or(String::new(), |h| format!(", xxh3 {h:#018x}"));
        let what = if actual.size != self.size {
            "size mismatch"
        } else if actual.crc32 != self.crc32 {
            "crc32 mismatch"
        } else {
            "xxh3 mismatch (same size and crc32: other content of the same block sizes)"
        };
        Err(Error::corruption(
            path,
            0,
            format!(
                "{what}: file has {} bytes with crc32 {:#010x}{}, _metadata says {} bytes with \
                 crc32 {:#010x}{}",
                actual.size,
                actual.crc32,
                hash(actual.xxh3),
                self.size,
                self.crc32,
                hash(self.xxh3)
            ),
        ))
    }
}

/// Size, CRC-32 and XXH3-64 of bytes fed in pieces.
pub struct Digest {
    size: u64,
    crc: crc32fast::Hasher,
    xxh3: xxhash_rust::xxh3::Xxh3,
}

impl Default for Digest {
    fn default() -> Self {
        Self::new()
    }
}

impl Digest {
    /// The digest of no bytes yet.
    pub fn new() -> Self {
        Digest {
            size: 0,
            crc: crc32fast::Hasher::new(),
            xxh3: xxhash_rust::xxh3::Xxh3::new(),
        }
    }

    /// Feeds the next piece of the file.
    pub fn update(&mut self, piece: &[u8]) {
        self.size += piece.len() as u64;
        self.crc.update(piece);
        self.xxh3.update(piece);
    }

    /// Size and checksums of everything fed.
    pub fn finish(self) -> Listed {
        Listed {
            size: self.size,
            crc32: self.crc.finalize(),
            xxh3: Some(self.xxh3.digest()),
        }
    }
}

/// Checks `bytes`, the content of `path`, against what its `_metadata` lists.
pub fn check_listed(path: &str, bytes: &[u8], listed: &Listed) -> Result<()> {
    listed.check(path, &Listed::of_bytes(bytes))
}

/// Checks that `path` in `storage` has the size its `_metadata` lists (before any byte of it is
/// read).
pub(crate) fn check_listed_size(
    storage: &dyn CheckpointStorage,
    path: &str,
    size: u64,
) -> Result<()> {
    let actual = storage.file_size(path)?;
    if actual != size {
        return Err(Error::corruption(
            path,
            actual.min(size),
            format!("file is {actual} bytes, _metadata says {size}"),
        ));
    }
    Ok(())
}

/// Reads `path` from `storage` and checks it against what its `_metadata` lists.
/// The size is checked first, so a wrong file is never read whole into memory.
pub fn read_listed(
    storage: &dyn CheckpointStorage,
    path: &str,
    listed: &Listed,
) -> Result<Vec<u8>> {
    check_listed_size(storage, path, listed.size)?;
    let bytes = storage.read_file(path)?;
    check_listed(path, &bytes, listed)?;
    Ok(bytes)
}

/// [`CheckpointStorage`] on a local directory (layout in FORMAT.md §4).
///
/// ```
/// use flowstate::checkpoint::storage::{CheckpointStorage, LocalDirStorage};
///
/// let dir = tempfile::tempdir().unwrap();
/// let storage = LocalDirStorage::open(dir.path())?;
/// storage.write_file("chk-1/kg-0", b"data")?;
/// storage.publish_metadata(1, b"metadata bytes")?;
/// assert_eq!(storage.list("chk-1")?, ["chk-1/_metadata", "chk-1/kg-0"]);
/// # Ok::<(), flowstate::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct LocalDirStorage {
    root: PathBuf,
    fs: FsRef,
}

impl LocalDirStorage {
    /// Opens (creating if needed, durably) checkpoint storage rooted at `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        LocalDirStorage::open_on(std_fs(), root)
    }

    /// [`LocalDirStorage::open`] on the file system `fs`.
    pub fn open_on(fs: FsRef, root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        create_dir_durable(fs.as_ref(), &root)?;
        Ok(LocalDirStorage { root, fs })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file system the storage is on.
    pub fn fs(&self) -> &FsRef {
        &self.fs
    }

    fn resolve(&self, path: &str) -> Result<PathBuf> {
        validate_path(path)?;
        Ok(self.root.join(path))
    }

    fn resolve_prefix(&self, prefix: &str) -> Result<PathBuf> {
        if prefix.is_empty() {
            Ok(self.root.clone())
        } else {
            self.resolve(prefix)
        }
    }

    /// Creates the parent directories of `full`, fsyncing each directory that gained an entry,
    /// so a file's directory chain is durable once the file is.
    fn create_parents(&self, full: &Path) -> Result<()> {
        match full.parent() {
            Some(parent) => create_dir_durable(self.fs.as_ref(), parent),
            None => Ok(()),
        }
    }

    fn sync_dir(&self, dir: &Path) -> Result<()> {
        sync_dir(self.fs.as_ref(), dir)
    }

    /// Hard-links each `(from, to)` of `source` that is a local file (whether it was, in
    /// order), recording in `made` each name created, then fsyncs each directory that gained
    /// names once (the originals were fsynced when they were written).
    fn link_all(
        &self,
        source: &dyn CheckpointStorage,
        files: &[(&str, &str)],
        made: &mut Vec<PathBuf>,
    ) -> Result<Vec<bool>> {
        let mut linked = Vec::with_capacity(files.len());
        let mut dirs = std::collections::BTreeSet::new();
        for &(from, to) in files {
            let original = source.local_path(from).filter(|p| self.fs.is_file(p));
            let Some(original) = original else {
                linked.push(false);
                continue;
            };
            let full = self.resolve(to)?;
            self.create_parents(&full)?;
            // A name already taken (never, with store-id file names) or another file system:
            // no link, the caller writes the file.
            let done = self.fs.hard_link(&original, &full).is_ok();
            if done {
                dirs.insert(full.parent().unwrap_or(&self.root).to_path_buf());
                made.push(full);
            }
            linked.push(done);
        }
        for dir in &dirs {
            self.sync_dir(dir)?;
        }
        Ok(linked)
    }

    fn is_dir(&self, path: &Path) -> Result<bool> {
        self.fs.is_dir(path).map_err(|e| Error::io(path, e))
    }

    /// Every file under `dir` with its size, as paths relative to the root under `prefix`.
    fn list_into(&self, dir: &Path, prefix: &str, out: &mut Vec<(String, u64)>) -> Result<()> {
        for entry in self.fs.read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let relative = if prefix.is_empty() {
                entry.name.clone()
            } else {
                format!("{prefix}/{}", entry.name)
            };
            if entry.is_dir {
                self.list_into(&dir.join(&entry.name), &relative, out)?;
            } else {
                out.push((relative, entry.len));
            }
        }
        Ok(())
    }
}

struct LocalFileWriter {
    path: PathBuf,
    file: Box<dyn WritableFile>,
    written: u64,
}

impl CheckpointFileWriter for LocalFileWriter {
    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<u64> {
        self.file
            .sync_all()
            .map_err(|e| Error::fsync(&self.path, e))?;
        Ok(self.written)
    }
}

impl CheckpointStorage for LocalDirStorage {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    /// Another existing local directory, on the same file system.
    fn open_sibling(&self, location: &str) -> Option<Result<Arc<dyn CheckpointStorage>>> {
        let Ok(crate::checkpoint::uri::Location::Dir { path }) =
            crate::checkpoint::uri::Location::parse(location)
        else {
            return None;
        };
        if !self.fs.is_dir(Path::new(&path)).unwrap_or(false) {
            return None;
        }
        Some(
            LocalDirStorage::open_on(self.fs.clone(), path)
                .map(|s| Arc::new(s) as Arc<dyn CheckpointStorage>),
        )
    }

    fn local_path(&self, path: &str) -> Option<PathBuf> {
        self.resolve(path).ok()
    }

    fn copy_from(&self, source: &dyn CheckpointStorage, from: &str, to: &str) -> Result<bool> {
        Ok(self.copy_many_from(source, &[(from, to)])? == [true])
    }

    fn copy_many_from(
        &self,
        source: &dyn CheckpointStorage,
        files: &[(&str, &str)],
    ) -> Result<Vec<bool>> {
        let mut made = Vec::new();
        let result = self.link_all(source, files, &mut made);
        if result.is_err() {
            // Nothing is reported as copied: take the names made back, so that the uploads
            // which follow find them free (best effort: a removal that fails leaves an
            // unreferenced name, and the upload of that file fails on it).
            for name in &made {
                let _ = self.fs.remove_file(name);
            }
        }
        result
    }

    fn create_file(&self, path: &str) -> Result<Box<dyn CheckpointFileWriter>> {
        let full = self.resolve(path)?;
        self.create_parents(&full)?;
        // Uploaded names are written once (FORMAT.md §11.1): never truncate an existing file.
        let file = self.fs.create_new(&full).map_err(|e| Error::io(&full, e))?;
        Ok(Box::new(LocalFileWriter {
            path: full,
            file,
            written: 0,
        }))
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let full = self.resolve(path)?;
        self.fs.read(&full).map_err(|e| Error::io(&full, e))
    }

    fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let full = self.resolve(path)?;
        let file = self.fs.open_read(&full).map_err(|e| Error::io(&full, e))?;
        let size = file.len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::corruption(
                path,
                offset,
                format!("range of {len} bytes at {offset} exceeds the file size {size}"),
            ));
        }
        // `len` was checked against the file's real size, so this allocation is bounded by it.
        let mut out =
            vec![0u8; usize::try_from(len).map_err(|_| Error::invalid("range too large"))?];
        file.read_exact_at(&mut out, offset)
            .map_err(|e| Error::io(&full, e))?;
        Ok(out)
    }

    fn file_size(&self, path: &str) -> Result<u64> {
        let full = self.resolve(path)?;
        self.fs
            .metadata(&full)
            .map(|m| m.len)
            .map_err(|e| Error::io(&full, e))
    }

    fn exists(&self, path: &str) -> Result<bool> {
        let full = self.resolve(path)?;
        self.fs.exists(&full).map_err(|e| Error::io(&full, e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .list_sizes(prefix)?
            .into_iter()
            .map(|(path, _)| path)
            .collect())
    }

    fn list_sizes(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let dir = self.resolve_prefix(prefix)?;
        let mut out = Vec::new();
        if self.is_dir(&dir)? {
            self.list_into(&dir, prefix, &mut out)?;
        }
        out.sort();
        Ok(out)
    }

    fn children(&self, prefix: &str) -> Result<Vec<String>> {
        let dir = self.resolve_prefix(prefix)?;
        if !self.is_dir(&dir)? {
            return Ok(Vec::new());
        }
        let mut out: Vec<String> = self
            .fs
            .read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .into_iter()
            .map(|entry| entry.name)
            .collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, path: &str) -> Result<()> {
        let full = self.resolve(path)?;
        match self.fs.remove_file(&full) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&full, e)),
            _ => Ok(()),
        }
    }

    fn delete_all(&self, prefix: &str) -> Result<()> {
        if prefix.is_empty() {
            return Err(Error::invalid(
                "refusing to delete the whole checkpoint storage",
            ));
        }
        let full = self.resolve(prefix)?;
        self.fs
            .remove_dir_all(&full)
            .map_err(|e| Error::io(&full, e))
    }

    fn create_once(&self, path: &str, bytes: &[u8]) -> Result<bool> {
        let full = self.resolve(path)?;
        self.create_parents(&full)?;
        // A complete, fsynced temp file gets the final name by a hard link, which fails when
        // the name exists: no reader ever sees the file partly written.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut tmp = full.as_os_str().to_owned();
        tmp.push(format!(".{}-{unique}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = self.fs.remove_file(&tmp);
        crate::fs::write_new_synced(self.fs.as_ref(), &tmp, bytes)?;
        let linked = self.fs.hard_link(&tmp, &full);
        self.fs.remove_file(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let parent = full.parent().unwrap_or(&self.root);
        match linked {
            Ok(()) => {
                self.sync_dir(parent)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io(&full, e)),
        }
    }

    fn publish_metadata(&self, checkpoint_id: u64, bytes: &[u8]) -> Result<()> {
        // FORMAT.md §10: data files were fsynced when written; make their directory entries
        // durable, then write the temp file, fsync it, rename it, fsync the directory.
        let dir_name = checkpoint_dir(checkpoint_id);
        let dir = self.root.join(&dir_name);
        self.create_parents(&dir.join(METADATA_FILE_NAME))?;
        let shared = self.root.join(SHARED_DIR);
        if self.is_dir(&shared)? {
            self.sync_dir(&shared)?;
        }
        self.sync_dir(&dir)?;
        let temp = dir.join(format!("{METADATA_FILE_NAME}{TEMP_SUFFIX}"));
        let target = dir.join(METADATA_FILE_NAME);
        {
            let mut file = self.fs.create(&temp).map_err(|e| Error::io(&temp, e))?;
            file.write_all(bytes).map_err(|e| Error::io(&temp, e))?;
            file.sync_all().map_err(|e| Error::fsync(&temp, e))?;
        }
        self.fs
            .rename(&temp, &target)
            .map_err(|e| Error::io(&target, e))?;
        self.sync_dir(&dir)
    }

    fn unpublish_metadata(&self, checkpoint_id: u64) -> Result<()> {
        self.delete(&metadata_path(checkpoint_id))?;
        let dir = self.root.join(checkpoint_dir(checkpoint_id));
        if self.is_dir(&dir)? {
            self.sync_dir(&dir)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_validated() {
        for bad in ["", "/abs", "a/../b", "..", "a//b", "a/./b", "a\\b", "a/"] {
            assert!(validate_path(bad).is_err(), "{bad:?}");
        }
        for good in ["chk-1/_metadata", "shared/000012.sst", "x"] {
            validate_path(good).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalDirStorage::open(dir.path()).unwrap();
        assert!(storage.write_file("../escape", b"x").is_err());
        assert!(storage.read_file("/etc/passwd").is_err());
    }

    #[test]
    fn checkpoint_dir_names() {
        assert_eq!(parse_checkpoint_dir("chk-17"), Some(17));
        assert_eq!(
            parse_checkpoint_dir(&checkpoint_dir(u64::MAX)),
            Some(u64::MAX)
        );
        for bad in ["chk-", "chk-01", "chk--1", "chk-+1", "chk-1x", "shared"] {
            assert_eq!(parse_checkpoint_dir(bad), None, "{bad}");
        }
    }

    #[test]
    fn write_read_list_delete_publish() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalDirStorage::open(dir.path()).unwrap();
        storage.write_file("chk-3/a", b"hello world").unwrap();
        storage.write_file("shared/s1", b"s").unwrap();
        assert_eq!(storage.read_file("chk-3/a").unwrap(), b"hello world");
        assert_eq!(storage.read_range("chk-3/a", 6, 5).unwrap(), b"world");
        assert!(
            storage
                .read_range("chk-3/a", 6, 6)
                .unwrap_err()
                .is_corruption()
        );
        assert_eq!(storage.file_size("chk-3/a").unwrap(), 11);
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
        assert!(storage.exists(&metadata_path(3)).unwrap());
        storage.delete("chk-3/a").unwrap();
        storage.delete("chk-3/a").unwrap();
        storage.delete_all("chk-3").unwrap();
        assert_eq!(storage.list("").unwrap(), ["shared/s1"]);
        assert!(storage.delete_all("").is_err());
    }
}

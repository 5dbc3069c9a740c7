//! Local recovery (Flink's `state.backend.local-recovery`): hard-linked local copies of the SST
//! files a checkpoint lists, kept on the task's machine, so a restore there reads them instead of
//! downloading them from (remote) checkpoint storage.
//!
//! Layout (FORMAT.md §11.6): `<local-recovery dir>/<root key>/<storage path>`, where the root key
//! is 16 hex digits of the FNV-1a hash of the storage location and `ROOT` beside the copies names
//! that location. Copies are only ever used after their size, CRC-32 and XXH3-64 match the `_metadata`
//! of the checkpoint being restored; a copy that does not match is removed and downloaded.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::checkpoint::storage::validate_path;
use crate::error::{Error, Result};
use crate::fs::{FsRef, create_dir_durable, write_new_synced};

/// Name of the file, beside the copies of one storage root, that holds the root's location.
pub const ROOT_FILE_NAME: &str = "ROOT";

/// The directory name of a storage location's copies: FNV-1a (64-bit) of its UTF-8 bytes, as
/// 16 lower-case hex digits.
pub fn root_key(location: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in location.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The local copies of one checkpoint storage root.
#[derive(Debug, Clone)]
pub struct LocalCopies {
    dir: PathBuf,
    fs: FsRef,
}

impl LocalCopies {
    /// The copies of storage `location` under `base` on the file system `fs` (nothing is
    /// created until a copy is kept).
    pub fn new(fs: &FsRef, base: &Path, location: &str) -> Self {
        LocalCopies {
            dir: base.join(root_key(location)),
            fs: std::sync::Arc::clone(fs),
        }
    }

    /// The directory holding the copies.
    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, storage_path: &str) -> Result<PathBuf> {
        validate_path(storage_path)?;
        Ok(self.dir.join(storage_path))
    }

    /// Keeps a copy of the local SST `source` as `storage_path` by hard link (no bytes are
    /// copied); returns false when the file system cannot link (the copy is then simply absent).
    /// A file already there of `source`'s size is taken as the copy (copies are checked before
    /// use); one of another size is replaced.
    pub fn keep(&self, location: &str, storage_path: &str, source: &Path) -> Result<bool> {
        let target = self.path_of(storage_path)?;
        if let Ok(existing) = self.fs.metadata(&target) {
            let wanted = self.fs.metadata(source).map(|m| m.len).ok();
            if !existing.is_dir && Some(existing.len) == wanted {
                return Ok(true);
            }
            self.discard(storage_path)?;
        }
        let parent = target.parent().unwrap_or(&self.dir);
        create_dir_durable(self.fs.as_ref(), parent)?;
        let root_file = self.dir.join(ROOT_FILE_NAME);
        if !self.fs.is_file(&root_file) {
            // Several copies are kept at once (parallel restores): the first writer creates the
            // file, the others find it.
            match write_new_synced(self.fs.as_ref(), &root_file, location.as_bytes()) {
                Ok(()) => {}
                Err(Error::Io { source, .. }) if source.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        // Copies are checked (size, crc32, xxh3) before use, so their names need no fsync.
        match self.fs.hard_link(source, &target) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(_) => Ok(false), // Another file system, or links not supported: no copy.
        }
    }

    /// The copy of `storage_path` when one of exactly `size` bytes exists.
    pub fn find(&self, storage_path: &str, size: u64) -> Option<PathBuf> {
        let path = self.path_of(storage_path).ok()?;
        let metadata = self.fs.metadata(&path).ok()?;
        (!metadata.is_dir && metadata.len == size).then_some(path)
    }

    /// Removes a copy (one that turned out not to match); missing is fine.
    pub fn discard(&self, storage_path: &str) -> Result<()> {
        let path = self.path_of(storage_path)?;
        match self.fs.remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Removes every copy under `prefix` (a storage directory such as `shared`) whose storage
    /// path `keep` rejects; returns how many were removed.
    pub fn prune(&self, prefix: &str, keep: impl Fn(&str) -> bool) -> Result<usize> {
        let dir = self.path_of(prefix)?;
        let entries = match self.fs.read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let mut removed = 0;
        for entry in entries {
            if !keep(&format!("{prefix}/{}", entry.name)) {
                let path = dir.join(&entry.name);
                self.fs
                    .remove_file(&path)
                    .map_err(|e| Error::io(&path, e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_key_is_stable_and_distinguishes_locations() {
        // FNV-1a test vectors: "" and "a".
        assert_eq!(root_key(""), "cbf29ce484222325");
        assert_eq!(root_key("a"), "af63dc4c8601ec8c");
        assert_ne!(root_key("s3://b/p1"), root_key("s3://b/p2"));
    }

    #[test]
    fn keep_find_discard_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let sst = dir.path().join("000007.sst");
        std::fs::write(&sst, b"sst bytes").unwrap();
        let copies = LocalCopies::new(
            &crate::fs::std_fs(),
            &dir.path().join("local"),
            "memory://x",
        );
        assert!(copies.find("shared/a.sst", 9).is_none());
        assert!(copies.keep("memory://x", "shared/a.sst", &sst).unwrap());
        assert!(copies.keep("memory://x", "shared/a.sst", &sst).unwrap());
        assert!(copies.keep("memory://x", "shared/b.sst", &sst).unwrap());
        let root = std::fs::read_to_string(copies.dir().join(ROOT_FILE_NAME)).unwrap();
        assert_eq!(root, "memory://x");
        // A missing source is no copy, not an error.
        assert!(
            !copies
                .keep("memory://x", "shared/c.sst", &dir.path().join("gone.sst"))
                .unwrap()
        );
        assert_eq!(
            copies.find("shared/a.sst", 9),
            Some(copies.dir().join("shared/a.sst"))
        );
        assert!(copies.find("shared/a.sst", 10).is_none(), "size must match");
        // A copy of the wrong size (damaged, or left by another store) is replaced, not kept.
        // (Unlinked first: the kept copy is a hard link of the source.)
        std::fs::remove_file(copies.dir().join("shared/b.sst")).unwrap();
        std::fs::write(copies.dir().join("shared/b.sst"), b"short").unwrap();
        assert!(copies.find("shared/b.sst", 9).is_none());
        assert!(copies.keep("memory://x", "shared/b.sst", &sst).unwrap());
        assert_eq!(
            std::fs::read(copies.dir().join("shared/b.sst")).unwrap(),
            b"sst bytes"
        );
        assert!(copies.find("../escape", 9).is_none());
        assert!(copies.keep("memory://x", "../escape", &sst).is_err());
        assert_eq!(copies.prune("shared", |p| p == "shared/a.sst").unwrap(), 1);
        assert!(copies.find("shared/b.sst", 9).is_none());
        copies.discard("shared/a.sst").unwrap();
        copies.discard("shared/a.sst").unwrap();
        assert!(copies.find("shared/a.sst", 9).is_none());
        // Removing a copy never touches the store's file.
        assert_eq!(std::fs::read(&sst).unwrap(), b"sst bytes");
    }
}

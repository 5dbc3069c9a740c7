//! Exclusive lock files: one process per store or state directory.
//!
//! The lock is an OS file lock on a file in the directory ([`FileSystem::try_lock`]), held as
//! long as the returned guard lives and released by the OS when the process dies, so a crash
//! never leaves a stale lock behind.

use std::path::Path;

use crate::error::{Error, Result};
use crate::fs::{FileLock, FileSystem};

/// Locks `path` on `fs` (creating it if needed) for this process; `Ok(None)` when another
/// holds it.
pub fn try_lock_file(fs: &dyn FileSystem, path: &Path) -> Result<Option<Box<dyn FileLock>>> {
    fs.try_lock(path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCK");
        let first = try_lock_file(&crate::fs::StdFs, &path).unwrap();
        assert!(first.is_some());
        assert!(try_lock_file(&crate::fs::StdFs, &path).unwrap().is_none());
        drop(first);
        assert!(try_lock_file(&crate::fs::StdFs, &path).unwrap().is_some());
    }
}

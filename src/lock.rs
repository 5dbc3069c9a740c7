//! Exclusive lock files: one process per store or state directory.
//!
//! The lock is an OS file lock (`File::try_lock`) on a file in the directory, held as long as the
//! returned `File` lives and released by the OS when the process dies, so a crash never leaves a
//! stale lock behind.

use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::error::{Error, Result};

/// Locks `path` (creating it if needed) for this process; `Ok(None)` when another holds it.
pub fn try_lock_file(path: &Path) -> Result<Option<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCK");
        let first = try_lock_file(&path).unwrap();
        assert!(first.is_some());
        assert!(try_lock_file(&path).unwrap().is_none());
        drop(first);
        assert!(try_lock_file(&path).unwrap().is_some());
    }
}

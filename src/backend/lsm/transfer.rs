//! Moving SSTs between a store's directory and checkpoint storage: uploads streamed with their
//! size and crc32 checked against the manifest, downloads streamed in bounded chunks and checked
//! against `_metadata`, both up to `CheckpointStorage::upload_parallelism` files at once.
//!
//! Invariant: `upload_all` returns Ok only when every job's file is in storage, complete; a
//! download leaves a file in place only when its size and checksums match. On the first error the
//! other workers take no new job and the error fails the whole checkpoint or restore.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::checkpoint::UploadedFile;
use crate::backend::parallel::run_parallel;
use crate::checkpoint::storage::{
    CheckpointStorage, Digest, Listed, check_listed, check_listed_size,
};
use crate::error::{Error, Result};
use crate::fs::FileSystem;
use crate::lsm::version::FileMeta;

/// Bytes read per request when downloading a file, and so the most a download holds in memory
/// (a file up to this size is one request).
pub(super) const DOWNLOAD_CHUNK: u64 = 8 << 20;

/// Bytes read at a time from local files.
const READ_BUFFER: usize = 1 << 20;

/// Copies a local SST into storage at `path`, checking size and crc32 against `meta`.
fn upload(
    fs: &dyn FileSystem,
    storage: &dyn CheckpointStorage,
    local: &std::path::Path,
    meta: &FileMeta,
    path: &str,
) -> Result<UploadedFile> {
    let mut writer = storage.create_file(path)?;
    let digest = read_in_pieces(fs, local, |piece| writer.write_all(piece))?;
    writer.finish()?;
    let (size, crc32) = (digest.size, digest.crc32);
    if size != meta.size || crc32 != meta.crc32 {
        return Err(Error::corruption(
            local.display(),
            0,
            format!(
                "SST is {size} bytes with crc32 {crc32:#010x}; the manifest says {} bytes, {:#010x}",
                meta.size, meta.crc32
            ),
        ));
    }
    Ok(UploadedFile {
        path: path.to_string(),
        size,
        crc32,
        xxh3: digest.xxh3,
    })
}

/// A file to upload: the local SST, its manifest metadata, its path in storage.
pub(super) struct UploadJob {
    pub local: std::path::PathBuf,
    pub meta: Arc<FileMeta>,
    pub path: String,
}

/// Uploads `jobs` with up to `storage.upload_parallelism()` in flight; returns the uploaded files
/// by local file number, or the first error (the other workers stop taking new jobs).
pub(super) fn upload_all(
    fs: &dyn FileSystem,
    storage: &dyn CheckpointStorage,
    jobs: Vec<UploadJob>,
) -> Result<HashMap<u64, UploadedFile>> {
    let uploaded = run_parallel(&jobs, storage.upload_parallelism(), |job| {
        upload(fs, storage, &job.local, &job.meta, &job.path).map(|file| (job.meta.number, file))
    })?;
    Ok(uploaded.into_iter().collect())
}

/// Checks the local file `local` (a link to or copy of storage file `path`) against what
/// `_metadata` lists (size, crc32, xxh3), reading it in 1 MiB pieces.
pub(super) fn check_local(
    fs: &dyn FileSystem,
    local: &Path,
    path: &str,
    listed: &Listed,
) -> Result<()> {
    listed.check(path, &read_in_pieces(fs, local, |_| Ok(()))?)
}

/// Reads the local file `local` in 1 MiB pieces, handing each to `each`; returns its size and
/// checksums.
fn read_in_pieces(
    fs: &dyn FileSystem,
    local: &Path,
    mut each: impl FnMut(&[u8]) -> Result<()>,
) -> Result<Listed> {
    let file = fs.open_read(local).map_err(|e| Error::io(local, e))?;
    let len = file.len();
    let mut hasher = Digest::new();
    let mut buffer = vec![0u8; READ_BUFFER.min(usize::try_from(len).unwrap_or(READ_BUFFER))];
    let mut offset = 0u64;
    while offset < len {
        let n = (len - offset).min(buffer.len() as u64) as usize;
        let piece = buffer.get_mut(..n).unwrap_or_default();
        file.read_exact_at(piece, offset)
            .map_err(|e| Error::io(local, e))?;
        hasher.update(piece);
        each(piece)?;
        offset += n as u64;
    }
    Ok(hasher.finish())
}

/// Downloads storage file `path` into the new local file `local`, in requests of at most
/// [`DOWNLOAD_CHUNK`] bytes, checking its size before the first byte is read and its checksums
/// at the end; on any error the partial file is removed.
pub(super) fn download(
    fs: &dyn FileSystem,
    storage: &dyn CheckpointStorage,
    path: &str,
    listed: &Listed,
    local: &Path,
) -> Result<()> {
    download_in_chunks(fs, storage, path, listed, local, DOWNLOAD_CHUNK)
}

/// [`download`] with requests of at most `chunk` bytes.
fn download_in_chunks(
    fs: &dyn FileSystem,
    storage: &dyn CheckpointStorage,
    path: &str,
    listed: &Listed,
    local: &Path,
    chunk: u64,
) -> Result<()> {
    let size = listed.size;
    check_listed_size(storage, path, size)?;
    let mut file = fs.create_new(local).map_err(|e| Error::io(local, e))?;
    let result = (|| -> Result<()> {
        if size <= chunk {
            // One request; `read_file` needs no second size lookup.
            let bytes = storage.read_file(path)?;
            check_listed(path, &bytes, listed)?;
            return file.write_all(&bytes).map_err(|e| Error::io(local, e));
        }
        let mut hasher = Digest::new();
        let mut offset = 0u64;
        while offset < size {
            let len = chunk.min(size - offset);
            let chunk = storage.read_range(path, offset, len)?;
            hasher.update(&chunk);
            file.write_all(&chunk).map_err(|e| Error::io(local, e))?;
            offset += len;
        }
        listed.check(path, &hasher.finish())
    })();
    if result.is_err() {
        // Only the file this call created (`create_new`) is removed.
        drop(file);
        let _ = fs.remove_file(local);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::storage::LocalDirStorage;

    #[test]
    fn downloads_in_chunks_check_size_and_crc_and_leave_nothing_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::fs::StdFs;
        let storage = LocalDirStorage::open(dir.path().join("storage")).unwrap();
        let bytes: Vec<u8> = (0..10_007u32).map(|i| (i * 31 % 251) as u8).collect();
        storage.write_file("shared/a.sst", &bytes).unwrap();
        let listed = Listed::of_bytes(&bytes);
        let (size, crc) = (listed.size, listed.crc32);
        for (n, chunk) in [1000u64, 10_007, 1 << 20, 1].into_iter().enumerate() {
            let local = dir.path().join(format!("{n}.sst"));
            download_in_chunks(&fs, &storage, "shared/a.sst", &listed, &local, chunk).unwrap();
            assert_eq!(std::fs::read(&local).unwrap(), bytes, "chunk {chunk}");
            check_local(&fs, &local, "shared/a.sst", &listed).unwrap();
        }
        let local = dir.path().join("bad.sst");
        let hash = listed.xxh3;
        let other_hash = hash.map(|h| h ^ 1);
        for (listed_size, listed_crc, listed_hash, chunk) in [
            (size, crc ^ 1, hash, 1000),
            (size, crc ^ 1, hash, 1 << 20),
            (size, crc, other_hash, 1000),
            (size, crc, other_hash, 1 << 20),
            (size - 1, crc, hash, 1000),
            (size + 1, crc, hash, 1 << 20),
        ] {
            let wrong = Listed {
                size: listed_size,
                crc32: listed_crc,
                xxh3: listed_hash,
            };
            let err = download_in_chunks(&fs, &storage, "shared/a.sst", &wrong, &local, chunk)
                .unwrap_err();
            assert!(err.is_corruption(), "{err}");
            assert!(err.to_string().contains("shared/a.sst"), "{err}");
            assert!(!local.exists(), "a failed download leaves no file");
        }
        // A file already at the target is neither overwritten nor removed.
        let taken = dir.path().join("taken.sst");
        std::fs::write(&taken, b"someone else's").unwrap();
        assert!(download_in_chunks(&fs, &storage, "shared/a.sst", &listed, &taken, 1000).is_err());
        assert_eq!(std::fs::read(&taken).unwrap(), b"someone else's");
        let wrong = Listed {
            crc32: crc ^ 1,
            ..listed
        };
        let err = check_local(&fs, &dir.path().join("0.sst"), "shared/a.sst", &wrong).unwrap_err();
        assert!(err.is_corruption(), "{err}");
    }
}

//! Uploading SSTs into checkpoint storage: each file streamed with its size and crc32 checked
//! against the manifest, up to `CheckpointStorage::upload_parallelism` files at once.
//!
//! Invariant: `upload_all` returns Ok only when every job's file is in storage, complete; on the
//! first error the other workers take no new job and the error fails the whole checkpoint.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::checkpoint::UploadedFile;
use crate::checkpoint::storage::CheckpointStorage;
use crate::error::{Error, Result};
use crate::lsm::version::FileMeta;

/// Copies a local SST into storage at `path`, checking size and crc32 against `meta`.
fn upload(
    storage: &dyn CheckpointStorage,
    local: &std::path::Path,
    meta: &FileMeta,
    path: &str,
) -> Result<UploadedFile> {
    let mut file = std::fs::File::open(local).map_err(|e| Error::io(local, e))?;
    let mut writer = storage.create_file(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(|e| Error::io(local, e))?;
        if n == 0 {
            break;
        }
        let chunk = buffer.get(..n).unwrap_or_default();
        hasher.update(chunk);
        writer.write_all(chunk)?;
        size += n as u64;
    }
    writer.finish()?;
    let crc32 = hasher.finalize();
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
    storage: &dyn CheckpointStorage,
    jobs: Vec<UploadJob>,
) -> Result<HashMap<u64, UploadedFile>> {
    let workers = storage.upload_parallelism().clamp(1, jobs.len().max(1));
    if workers == 1 {
        let mut out = HashMap::new();
        for job in &jobs {
            out.insert(
                job.meta.number,
                upload(storage, &job.local, &job.meta, &job.path)?,
            );
        }
        return Ok(out);
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results = Mutex::new(Vec::with_capacity(jobs.len()));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    let result = upload(storage, &job.local, &job.meta, &job.path);
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    results.lock().push((job.meta.number, result));
                }
            });
        }
    });
    let mut out = HashMap::new();
    for (number, result) in results.into_inner() {
        out.insert(number, result?);
    }
    Ok(out)
}

//! Live SST files shared by versions, readers and checkpoints.
//!
//! A [`TableFile`] is reference counted: versions (through super versions), iterators and
//! checkpoint pins hold it. When a compaction removes it from the current version it is marked
//! obsolete, and the file is deleted when the last holder lets go — so no reader, iterator or
//! checkpoint ever loses a file under its feet, and none has to wait for a compaction.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::Result;
use crate::fs::FsRef;
use crate::lsm::block_cache::BlockCache;
use crate::lsm::sst::reader::SstReader;
use crate::lsm::version::FileMeta;

/// File name of SST `number`.
pub fn sst_file_name(number: u64) -> String {
    format!("{number:06}.sst")
}

/// Parses an SST file name.
pub fn parse_sst_file_name(name: &str) -> Option<u64> {
    name.strip_suffix(".sst")?.parse().ok()
}

/// One live SST file.
pub struct TableFile {
    meta: Arc<FileMeta>,
    path: PathBuf,
    cache: Option<Arc<BlockCache>>,
    /// Read through a memory map (else with `pread`): `Options::allow_mmap_reads`.
    mmap: bool,
    fs: FsRef,
    reader: OnceLock<Arc<SstReader>>,
    obsolete: AtomicBool,
}

impl std::fmt::Debug for TableFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableFile")
            .field("path", &self.path)
            .field("meta", &self.meta)
            .finish()
    }
}

impl TableFile {
    /// A table for `meta` in `dir`; the file is opened on first use, and read through a memory
    /// map when `mmap` is true, with `pread` otherwise.
    pub fn new(
        fs: &FsRef,
        dir: &Path,
        meta: Arc<FileMeta>,
        cache: Option<Arc<BlockCache>>,
        mmap: bool,
    ) -> Arc<Self> {
        Arc::new(TableFile {
            fs: Arc::clone(fs),
            path: dir.join(sst_file_name(meta.number)),
            meta,
            cache,
            mmap,
            reader: OnceLock::new(),
            obsolete: AtomicBool::new(false),
        })
    }

    /// The file's metadata.
    pub fn meta(&self) -> &Arc<FileMeta> {
        &self.meta
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The reader, opening the file on first use.
    pub fn reader(&self) -> Result<&Arc<SstReader>> {
        if let Some(reader) = self.reader.get() {
            return Ok(reader);
        }
        let opened = Arc::new(SstReader::open_on(
            self.fs.as_ref(),
            &self.path,
            self.meta.number,
            self.cache.clone(),
            self.mmap,
        )?);
        // Another thread may have opened it meanwhile; either reader is fine.
        Ok(self.reader.get_or_init(|| opened))
    }

    /// Marks the file for deletion once nothing holds it any more.
    pub fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::Release);
    }
}

impl Drop for TableFile {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            if let Some(cache) = &self.cache {
                cache.erase_file(self.meta.number);
            }
            // Drop the mapping before unlinking (not required on Unix, tidy everywhere).
            drop(self.reader.take());
            let _ = self.fs.remove_file(&self.path);
        }
    }
}

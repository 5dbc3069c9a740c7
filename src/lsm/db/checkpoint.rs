//! Checkpoints of the store: the live files of a consistent view, and openable copies that
//! share immutable SSTs by hard link.
//!
//! Because every memtable switch freezes all column families together and flushes apply in
//! order, the current version always holds exactly the writes up to one sequence number: its
//! files are a consistent cut, with no WAL needed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::DbInner;
use crate::error::{Error, Result};
use crate::fs::sync_dir;
use crate::fs::{FileSystem, create_dir_durable, write_new_synced};
use crate::lsm::manifest::Manifest;
use crate::lsm::table::TableFile;
use crate::lsm::version::FileMeta;

/// One file of a consistent view.
#[derive(Clone, Debug)]
pub struct LiveFile {
    /// Column family name.
    pub cf: String,
    /// Column family id.
    pub cf_id: u32,
    /// Level.
    pub level: usize,
    /// The file's metadata (number, size, crc32, key range).
    pub(crate) meta: Arc<FileMeta>,
    /// Where it is now.
    pub path: PathBuf,
}

/// The files of a consistent view and the sequence it covers; while this value lives, none of
/// them is deleted (compactions may still replace them in newer versions).
#[derive(Debug)]
pub struct LiveFiles {
    /// Every write with a sequence at or below this is in the files, none above.
    pub sequence: u64,
    /// The files, by column family and level.
    pub files: Vec<LiveFile>,
    /// The version the files come from (for writing a manifest that opens them).
    pub(crate) version: Arc<crate::lsm::version::Version>,
    _pins: Vec<Arc<TableFile>>,
}

impl LiveFile {
    /// The file's number (its name is `<number:06>.sst`).
    pub fn number(&self) -> u64 {
        self.meta.number
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.meta.size
    }

    /// Entries in the file (puts, deletes, merge operands).
    pub fn entries(&self) -> u64 {
        self.meta.entries
    }
}

impl LiveFiles {
    /// Total bytes of the files.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.meta.size).sum()
    }
}

pub(super) fn live_files(inner: &DbInner) -> LiveFiles {
    let core = inner.core.lock();
    let mut files = Vec::new();
    let mut pins = Vec::new();
    for (id, cf) in &core.version.cfs {
        for (level, metas) in cf.levels.iter().enumerate() {
            for meta in metas {
                if let Some(table) = core.tables.get(&meta.number) {
                    pins.push(table.clone());
                    files.push(LiveFile {
                        cf: cf.name.clone(),
                        cf_id: *id,
                        level,
                        meta: meta.clone(),
                        path: table.path().to_path_buf(),
                    });
                }
            }
        }
    }
    LiveFiles {
        sequence: core.version.last_sequence,
        files,
        version: core.version.clone(),
        _pins: pins,
    }
}

/// The files one flush added: captured when [`super::Db::capture_flushes`] is on, pinned against
/// deletion until dropped (an incremental checkpoint uploads them as the changelog of the
/// interval even if a compaction already replaced them).
#[derive(Debug)]
pub struct FlushOutput {
    /// The flush holds exactly the writes with sequences above the previous flush's
    /// `last_sequence` and at or below this one.
    pub last_sequence: u64,
    /// The new L0 files (flushes cut like compaction output: several per column family).
    pub files: Vec<LiveFile>,
    /// Range tombstones the flush added to the version, by column family name.
    pub(crate) tombstones: Vec<(String, crate::lsm::version::RangeTombstone)>,
    _pins: Vec<Arc<TableFile>>,
}

/// Builds the [`FlushOutput`] of a flush edit just applied (core lock held by the caller).
pub(super) fn flush_output(
    core: &super::Core,
    last_sequence: u64,
    edit: &crate::lsm::version::VersionEdit,
) -> FlushOutput {
    let name = |cf: &u32| core.cfs.get(cf).map(|c| c.name.clone()).unwrap_or_default();
    let mut files = Vec::new();
    let mut pins = Vec::new();
    for (cf, level, meta) in &edit.new_files {
        if let Some(table) = core.tables.get(&meta.number) {
            pins.push(table.clone());
            files.push(LiveFile {
                cf: name(cf),
                cf_id: *cf,
                level: usize::from(*level),
                meta: table.meta().clone(),
                path: table.path().to_path_buf(),
            });
        }
    }
    FlushOutput {
        last_sequence,
        files,
        tombstones: edit
            .tombstones_added
            .iter()
            .map(|(cf, t)| (name(cf), t.clone()))
            .collect(),
        _pins: pins,
    }
}

/// Hard-links (or copies, across file systems) `from` to `to`; a copy is fsynced. The caller
/// fsyncs `to`'s directory to make the new name durable.
pub fn link_or_copy(fs: &dyn FileSystem, from: &Path, to: &Path) -> Result<()> {
    if fs.hard_link(from, to).is_ok() {
        return Ok(());
    }
    let bytes = fs.read(from).map_err(|e| Error::io(from, e))?;
    write_new_synced(fs, to, &bytes)
}

pub(super) fn checkpoint(inner: &DbInner, dir: &Path) -> Result<LiveFiles> {
    let fs = &inner.options.fs;
    if fs.exists(dir).map_err(|e| Error::io(dir, e))? {
        return Err(Error::invalid(format!(
            "checkpoint directory {} already exists",
            dir.display()
        )));
    }
    let live = live_files(inner);
    // The directory is durable in its parent before anything in it is relied on.
    create_dir_durable(fs.as_ref(), dir)?;
    for file in &live.files {
        let name = file.path.file_name().unwrap_or_default();
        link_or_copy(fs.as_ref(), &file.path, &dir.join(name))?;
    }
    sync_dir(fs.as_ref(), dir)?;
    let mut version = (*live.version).clone();
    version.next_file_number = version.next_file_number.max(2);
    Manifest::create(fs, dir, 1, &version)?;
    Ok(live)
}

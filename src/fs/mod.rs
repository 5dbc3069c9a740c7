//! The file-system seam: every file operation on state, checkpoint and output files goes through
//! one [`FileSystem`] (like RocksDB's `FileSystem` or SQLite's VFS).
//!
//! [`StdFs`] is the real implementation, the standard library's. [`SimFs`] is a simulated,
//! in-memory file system for tests that models what POSIX allows at a power loss (unsynced data
//! lost or torn, unsynced directory entries undone) and injects I/O errors; the crash tests run
//! the store, the backends and the engine on it. Code outside this module does not call
//! `std::fs` for the files it owns.
//!
//! Operations return [`std::io::Result`], like `std::fs`; callers attach the path with
//! [`crate::Error::io`].

mod sim;
mod std_fs;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};

pub use sim::{FaultKind, FaultOp, PowerLoss, SimFs};
pub use std_fs::StdFs;

/// The bytes of a mapped (or fully read) file, shared and kept alive by whoever holds a clone:
/// a block decoded from it may borrow them instead of copying.
pub type SharedBytes = std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A shared handle on a file system.
pub type FsRef = Arc<dyn FileSystem>;

/// The process-wide [`StdFs`], the default file system of every component.
pub fn std_fs() -> FsRef {
    static STD: OnceLock<FsRef> = OnceLock::new();
    Arc::clone(STD.get_or_init(|| Arc::new(StdFs)))
}

/// What [`FileSystem::read_dir`] lists for one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name (one path component).
    pub name: String,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// A file's length in bytes (0 for directories).
    pub len: u64,
}

/// What [`FileSystem::metadata`] says of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// Whether it is a directory.
    pub is_dir: bool,
    /// A file's length in bytes (0 for directories).
    pub len: u64,
}

/// A file open for writing. Writes go to the file at its end (or at the length given to
/// [`WritableFile::set_len`]); nothing is durable before [`WritableFile::sync_data`] or
/// [`WritableFile::sync_all`] returns `Ok`.
pub trait WritableFile: Send {
    /// Writes all of `buf`. On an error, an unknown prefix of `buf` may have been written.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Forces the file's data to stable storage (`fdatasync`). After an error the unsynced data
    /// is undefined: a later successful sync does not make it durable.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Forces data and metadata to stable storage (`fsync`).
    fn sync_all(&mut self) -> io::Result<()>;
    /// Truncates (or extends with zeros) the file to `len` bytes; later writes follow it.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// A [`WritableFile`] as an [`io::Write`] (for `BufWriter`): every `write` writes all of it.
pub struct IoWriter(pub Box<dyn WritableFile>);

impl io::Write for IoWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A [`ReadableFile`] as a sequential [`io::Read`] from its start (for `BufReader`).
pub struct IoReader {
    file: Arc<dyn ReadableFile>,
    at: u64,
}

impl IoReader {
    /// Reads `file` from offset 0.
    pub fn new(file: Arc<dyn ReadableFile>) -> Self {
        IoReader { file, at: 0 }
    }
}

impl io::Read for IoReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.file.len().saturating_sub(self.at);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        self.file.read_exact_at(&mut buf[..n], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// A file open for positioned reads.
pub trait ReadableFile: Send + Sync {
    /// The file's length when it was opened.
    fn len(&self) -> u64;
    /// Whether the file was empty when opened.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset`; reading past the end is an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The whole file as shared bytes that stay valid as long as they live: a memory map on a
    /// real file system, a copy in memory on a simulated one. Only for files that never change
    /// once written (SSTs).
    fn map(&self) -> io::Result<SharedBytes>;
}

/// An exclusive lock, held until dropped (or the process dies).
pub trait FileLock: Send + Sync + fmt::Debug {}

/// The file operations flowstate performs on the files it owns.
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// Creates `path` for writing; fails with `AlreadyExists` if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Creates `path` for writing, truncating it if it exists.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Creates `path` (which must not exist, as with [`FileSystem::create_new`]) for many small
    /// appends, such as a WAL's records. Each `write_all` hands its bytes to the OS before it
    /// returns, as with `create_new`, so a process crash loses none of them; an implementation
    /// may preallocate the file ahead of the writes, so that while the file is open (and after a
    /// crash) it may be longer than what was written, the rest zero bytes. Readers of such a
    /// file must take a run of zeros at its end for unwritten space (FORMAT.md §7.3). The
    /// default is `create_new`; [`StdFs`] on Linux writes through a memory map, an append being
    /// a copy with no system call.
    fn create_log(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        self.create_new(path)
    }
    /// Opens an existing file for writing; writes go to its end.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Opens an existing file for positioned reads.
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadableFile>>;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let file = self.open_read(path)?;
        let len = usize::try_from(file.len())
            .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "file too large"))?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }
    /// Renames `from` to `to`, replacing a file at `to` (atomic once the directories are synced).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes `to` a new name of the file `from`; fails if `to` exists.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Creates one directory; fails with `AlreadyExists` if it exists.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Forces a directory's entries (creates, renames, links, removals in it) to stable storage.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// The entries of a directory, in no particular order.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>>;
    /// What `path` is; `NotFound` when nothing is there.
    fn metadata(&self, path: &Path) -> io::Result<Metadata>;
    /// Takes an exclusive lock on `path` (created if needed); `Ok(None)` when another holder has it.
    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn FileLock>>>;
    /// The absolute form of an existing `path`, with `.`, `..` (and, on a real file system,
    /// symbolic links) resolved; `NotFound` when nothing is there.
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf>;
}

impl dyn FileSystem + '_ {
    /// Whether `path` is a file (false when nothing is there or it cannot be read).
    pub fn is_file(&self, path: &Path) -> bool {
        self.metadata(path).is_ok_and(|m| !m.is_dir)
    }

    /// Whether `path` is a directory; `Ok(false)` when nothing is there.
    pub fn is_dir(&self, path: &Path) -> io::Result<bool> {
        match self.metadata(path) {
            Ok(meta) => Ok(meta.is_dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether something exists at `path`.
    pub fn exists(&self, path: &Path) -> io::Result<bool> {
        match self.metadata(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes a directory and everything under it; a missing directory is no error.
    pub fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let entries = match self.read_dir(path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let child = path.join(&entry.name);
            if entry.is_dir {
                self.remove_dir_all(&child)?;
            } else {
                match self.remove_file(&child) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        match self.remove_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// Creates `dir` and any missing parents, and makes each new directory durable in its parent
/// (the parent is fsynced after the child is created). An existing directory is left as it is.
pub(crate) fn create_dir_durable(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at {
        if path.as_os_str().is_empty() {
            break;
        }
        match fs.metadata(path) {
            Ok(meta) if meta.is_dir => break,
            Ok(_) => {
                return Err(Error::io(
                    path,
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "exists and is not a directory",
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(path.to_path_buf()),
            Err(e) => return Err(Error::io(path, e)),
        }
        at = path.parent();
    }
    for path in missing.iter().rev() {
        match fs.create_dir(path) {
            Ok(()) => {}
            // Another thread made it meanwhile; it still has to be durable.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(path, e)),
        }
        sync_parent(fs, path)?;
    }
    Ok(())
}

/// fsyncs the directory `dir`, so the names created, renamed or removed in it are durable.
pub(crate) fn sync_dir(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    fs.sync_dir(dir).map_err(|e| Error::fsync(dir, e))
}

/// fsyncs the directory holding `path`, so a new, renamed or removed name in it is durable.
pub(crate) fn sync_parent(fs: &dyn FileSystem, path: &Path) -> Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(fs, p),
        _ => sync_dir(fs, Path::new(".")),
    }
}

/// Writes `bytes` to `path` atomically: a temp file beside it (`<name>.tmp`), fsynced, renamed
/// over `path`, then the directory fsynced. After a crash a reader finds the old file or the new
/// one, never a mix; after this returns the new one survives power loss.
pub(crate) fn write_atomic(fs: &dyn FileSystem, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = fs.create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    commit_temp(fs, file, &tmp, path)
}

/// Makes `tmp`, written through `file`, durable under the name `path`: fsyncs and closes it,
/// renames it over `path`, then fsyncs the directory holding `path`. The end of
/// [`write_atomic`], for writers that stream a file instead of handing over its bytes.
pub(crate) fn commit_temp(
    fs: &dyn FileSystem,
    mut file: Box<dyn WritableFile>,
    tmp: &Path,
    path: &Path,
) -> Result<()> {
    file.sync_all().map_err(|e| Error::fsync(tmp, e))?;
    drop(file);
    fs.rename(tmp, path).map_err(|e| Error::io(path, e))?;
    sync_parent(fs, path)
}

/// Writes a new file (which must not exist) and fsyncs it; the caller syncs the directory.
pub(crate) fn write_new_synced(fs: &dyn FileSystem, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = fs.create_new(path).map_err(|e| Error::io(path, e))?;
    file.write_all(bytes).map_err(|e| Error::io(path, e))?;
    file.sync_data().map_err(|e| Error::fsync(path, e))
}

/// Linux's `EIO`.
pub(crate) const EIO: i32 = 5;
/// Linux's `ENOSPC`.
pub(crate) const ENOSPC: i32 = 28;

//! [`StdFs`]: the [`FileSystem`] of the standard library (and `memmap2` for maps).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::SharedBytes;
use crate::fs::{DirEntry, FileLock, FileSystem, Metadata, ReadableFile, WritableFile};

/// The real file system, through `std::fs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

struct StdWritable {
    file: File,
}

impl WritableFile for StdWritable {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.seek(SeekFrom::Start(len)).map(|_| ())
    }
}

/// Bytes a [`MappedLog`] preallocates and maps at a time. Only the chunk being written is
/// mapped, so the pages of a log count towards the process's resident memory for no longer than
/// it takes to fill one chunk (they stay in the page cache, as written pages do).
#[cfg(target_os = "linux")]
const LOG_CHUNK: u64 = 1 << 20;

/// A log file written through a shared memory map of the chunk holding its end: an append is a
/// copy into the page cache, with no system call, and survives a crash of the process as a
/// `write` would (the pages belong to the kernel's cache of the file, not to the process).
///
/// Each chunk is allocated on disk (`posix_fallocate`) before it is mapped: a full disk is then
/// an error from [`WritableFile::write_all`], as it would be from `write`, never a fault on a
/// store into the map. The file is therefore up to one chunk longer than what was written, the
/// rest zero bytes, until the writer is dropped, which cuts it to the written length. On Linux,
/// `fdatasync` writes back pages dirtied through a shared map like pages dirtied by `write` (a
/// store into a clean page faults and marks it dirty), so syncs are plain `fdatasync`/`fsync`.
#[cfg(target_os = "linux")]
struct MappedLog {
    file: File,
    /// Bytes written: where the next write goes.
    len: u64,
    /// The mapped chunk, `LOG_CHUNK` bytes of the file from `map_start`.
    map: Option<memmap2::MmapMut>,
    map_start: u64,
}

#[cfg(target_os = "linux")]
impl MappedLog {
    /// Maps the chunk starting at `start` (a multiple of `LOG_CHUNK`), allocating it first.
    fn map_chunk(&mut self, start: u64) -> io::Result<()> {
        // Unmapped, the previous chunk's pages stay in the page cache (dirty until written back).
        self.map = None;
        allocate(&self.file, start, LOG_CHUNK)?;
        // SAFETY: the mapping covers bytes `start..start + LOG_CHUNK`, which `allocate` just made
        // part of the file (its length is at least their end) with blocks reserved, so no access
        // through it is past the end of the file or needs a block the disk may not have. The
        // file was created by this writer (`create_new`), flowstate never truncates, rewrites
        // or opens for writing a live log through any other handle, and `set_len` and `drop`
        // unmap before they change the length. The map is only reached through `self.map`,
        // which `&mut self` keeps to one user at a time.
        #[allow(unsafe_code)]
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(start)
                .len(LOG_CHUNK as usize)
                .map_mut(&self.file)
        }?;
        self.map_start = start;
        self.map = Some(map);
        Ok(())
    }
}

/// Reserves disk blocks for `len` bytes of `file` from `offset`, extending it if needed.
#[cfg(target_os = "linux")]
fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let too_large = || io::Error::new(io::ErrorKind::InvalidInput, "log file offset too large");
    let offset = libc::off_t::try_from(offset).map_err(|_| too_large())?;
    let len = libc::off_t::try_from(len).map_err(|_| too_large())?;
    // SAFETY: `posix_fallocate` only reads its integer arguments; the descriptor is open for
    // writing and owned by `file`, which outlives the call.
    #[allow(unsafe_code)]
    let errno = unsafe { libc::posix_fallocate(file.as_raw_fd(), offset, len) };
    match errno {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(target_os = "linux")]
impl WritableFile for MappedLog {
    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            if self.map.is_none() || self.len - self.map_start >= LOG_CHUNK {
                self.map_chunk(self.len - self.len % LOG_CHUNK)?;
            }
            let at = (self.len - self.map_start) as usize;
            let Some(map) = self.map.as_mut() else {
                return Err(io::Error::other("log chunk not mapped"));
            };
            let n = buf.len().min(map.len() - at);
            map[at..at + n].copy_from_slice(&buf[..n]);
            self.len += n as u64;
            buf = &buf[n..];
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.map = None;
        self.file.set_len(len)?;
        self.len = len;
        Ok(())
    }
}

#[cfg(target_os = "linux")]
impl Drop for MappedLog {
    fn drop(&mut self) {
        self.map = None;
        // Cut the preallocated tail. Not synced, and a failure is harmless: a reader takes the
        // zeros after the last record for unwritten space either way (FORMAT.md §7.3).
        let _ = self.file.set_len(self.len);
    }
}

struct StdReadable {
    file: File,
    len: u64,
}

impl ReadableFile for StdReadable {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn map(&self) -> io::Result<SharedBytes> {
        if self.len == 0 {
            // An empty file cannot be mapped on every platform; nothing to borrow anyway.
            return Ok(Arc::new(Vec::<u8>::new()));
        }
        // SAFETY: `map` is only called for files flowstate never changes once written (SSTs:
        // never truncated, rewritten or appended to after `SstBuilder::finish`) and deletes only
        // by unlinking, which keeps the pages of an existing map valid. The map is owned by the
        // returned `Arc`, which every block borrowing from it keeps alive, so no slice outlives it.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&self.file) }?;
        Ok(Arc::new(map))
    }
}

#[derive(Debug)]
struct StdLock {
    _file: File,
}

impl FileLock for StdLock {}

impl FileSystem for StdFs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        Ok(Box::new(StdWritable { file }))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = File::create(path)?;
        Ok(Box::new(StdWritable { file }))
    }

    #[cfg(target_os = "linux")]
    fn create_log(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(MappedLog {
            file,
            len: 0,
            map: None,
            map_start: 0,
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let mut file = OpenOptions::new().write(true).open(path)?;
        file.seek(SeekFrom::End(0))?;
        Ok(Box::new(StdWritable { file }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadableFile>> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Arc::new(StdReadable { file, len }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Removed between the listing and the stat: not there any more.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let Ok(name) = entry.file_name().into_string() else {
                // Not a name flowstate writes; skip it rather than fail the listing.
                continue;
            };
            out.push(DirEntry {
                name,
                is_dir: meta.is_dir(),
                len: if meta.is_dir() { 0 } else { meta.len() },
            });
        }
        Ok(out)
    }

    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        let meta = std::fs::metadata(path)?;
        Ok(Metadata {
            is_dir: meta.is_dir(),
            len: if meta.is_dir() { 0 } else { meta.len() },
        })
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::canonicalize(path)
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn FileLock>>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(StdLock { _file: file }))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// `n` bytes that differ from their neighbours and are never all zero in a row.
    fn pattern(n: usize, salt: u8) -> Vec<u8> {
        (0..n).map(|i| ((i % 251) as u8 ^ salt) | 1).collect()
    }

    #[test]
    fn a_log_is_in_the_file_while_open_and_cut_to_its_writes_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000001.wal");
        let mut log = StdFs.create_log(&path).unwrap();
        assert!(StdFs.create_log(&path).is_err(), "the log exists");
        // Writes of odd sizes across two chunk boundaries, one larger than a chunk.
        let mut written = Vec::new();
        for (i, n) in [
            100,
            5000,
            LOG_CHUNK as usize + 123,
            77,
            LOG_CHUNK as usize - 20,
        ]
        .into_iter()
        .enumerate()
        {
            let bytes = pattern(n, i as u8);
            log.write_all(&bytes).unwrap();
            written.extend_from_slice(&bytes);
            // What another process (or this one after a crash) reads: every write, then zeros.
            let seen = std::fs::read(&path).unwrap();
            assert_eq!(seen.len() as u64 % LOG_CHUNK, 0);
            assert!(seen.len() - written.len() < LOG_CHUNK as usize);
            assert_eq!(&seen[..written.len()], &written[..], "write {i}");
            assert!(seen[written.len()..].iter().all(|&b| b == 0));
        }
        log.sync_data().unwrap();
        log.sync_all().unwrap();
        // Truncation, then appends after the new end.
        log.set_len(4096).unwrap();
        written.truncate(4096);
        log.write_all(b"tail").unwrap();
        written.extend_from_slice(b"tail");
        drop(log);
        assert_eq!(std::fs::read(&path).unwrap(), written);
    }
}

//! Appends write batches to a WAL file, one framed record per batch (FORMAT.md §7.3).
//!
//! Each append reaches the OS before it returns (the log is created with
//! [`FileSystem::create_log`](crate::fs::FileSystem::create_log): a copy into a shared memory map
//! of the file on Linux, one `write` elsewhere), so a process crash loses nothing appended; only
//! unsynced data can be lost to a power failure. After any failed write
//! or sync the writer refuses further calls, since the file's state is then unknown.

use std::path::{Path, PathBuf};

use crate::codec::record::put_record;
use crate::error::{Error, Result};
#[cfg(test)]
use crate::fs::std_fs;
use crate::fs::{FsRef, WritableFile, sync_parent};
use crate::lsm::batch::WriteBatch;
#[cfg(test)]
use crate::lsm::wal::reader::{DamageKind, RecoveryMode, WalRecovery};
use crate::lsm::wal::{WAL_HEADER_LEN, encode_header};

/// When the writer forces appended data to stable storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// `fsync` (`sync_data`) after every appended batch: an acknowledged batch survives power
    /// loss.
    EveryBatch,
    /// Only on an explicit sync ([`Db::sync_wal`](crate::lsm::Db::sync_wal)): batches appended since the last sync survive a
    /// process crash but may be lost to power loss. The default (as `lsm::Options` has it, and
    /// like RocksDB's `sync = false`).
    #[default]
    Manual,
}

/// Appends write batches to one WAL file.
pub struct WalWriter {
    file: Box<dyn WritableFile>,
    fs: FsRef,
    path: PathBuf,
    sync_mode: SyncMode,
    /// Bytes in the file: header plus complete records.
    len: u64,
    /// The smallest base sequence the next batch may have.
    next_sequence: u64,
    /// Scratch for one framed record, reused between appends.
    record: Vec<u8>,
    failed: bool,
    /// Whether the file's directory entry is known durable (its directory was fsynced after
    /// the file was created). [`WalWriter::sync`] makes it so before it first returns.
    name_durable: bool,
}

impl WalWriter {
    /// Creates a new WAL at `path` (which must not exist) and writes its header. With
    /// [`SyncMode::EveryBatch`] the file and its directory are synced before this returns.
    #[cfg(test)]
    pub fn create(path: &Path, log_number: u64, sync_mode: SyncMode) -> Result<WalWriter> {
        WalWriter::create_on(&std_fs(), path, log_number, sync_mode)
    }

    /// [`WalWriter::create`] on the file system `fs`.
    pub fn create_on(
        fs: &FsRef,
        path: &Path,
        log_number: u64,
        sync_mode: SyncMode,
    ) -> Result<WalWriter> {
        let file = fs.create_log(path).map_err(|e| Error::io(path, e))?;
        let mut writer = WalWriter::new(fs, file, path, sync_mode, 0, 0);
        writer.write_out(&encode_header(log_number))?;
        writer.len = WAL_HEADER_LEN as u64;
        if sync_mode == SyncMode::EveryBatch {
            writer.sync()?;
        }
        Ok(writer)
    }

    /// Recovers the WAL at `path` with `mode`, truncates a torn tail so new appends follow the
    /// last good record, and returns a writer positioned there with what was recovered.
    ///
    /// A torn header is rewritten with `log_number`. A header naming another log number, or
    /// damage with valid records after it (even in [`RecoveryMode::StopAtFirstCorruption`]), is
    /// [`Error::Corruption`]: such bytes are never discarded here; start a new log instead.
    #[cfg(test)]
    pub fn reopen(
        path: &Path,
        log_number: u64,
        sync_mode: SyncMode,
        mode: RecoveryMode,
    ) -> Result<(WalWriter, WalRecovery)> {
        WalWriter::reopen_on(&std_fs(), path, log_number, sync_mode, mode)
    }

    /// [`WalWriter::reopen`] on the file system `fs`.
    #[cfg(test)]
    pub fn reopen_on(
        fs: &FsRef,
        path: &Path,
        log_number: u64,
        sync_mode: SyncMode,
        mode: RecoveryMode,
    ) -> Result<(WalWriter, WalRecovery)> {
        let recovery = WalRecovery::read_on(fs.as_ref(), path, mode)?;
        if let Some(found) = recovery.log_number.filter(|&n| n != log_number) {
            return Err(Error::corruption(
                path.display(),
                12,
                format!("WAL header has log number {found}, expected {log_number}"),
            ));
        }
        if let Some(stop) = recovery
            .stop
            .as_ref()
            .filter(|s| s.kind == DamageKind::Corruption)
        {
            return Err(Error::corruption(
                path.display(),
                stop.offset,
                format!("cannot append after a damaged record: {}", stop.what),
            ));
        }
        let file = fs.open_append(path).map_err(|e| Error::io(path, e))?;
        let next_sequence = recovery
            .batches
            .last()
            .map_or(0, |b| b.last_sequence() + u64::from(!b.is_empty()));
        let mut writer = WalWriter::new(fs, file, path, sync_mode, 0, next_sequence);
        writer.truncate_to(recovery.valid_len)?;
        if recovery.log_number.is_none() {
            writer.write_out(&encode_header(log_number))?;
            writer.len = WAL_HEADER_LEN as u64;
        }
        if recovery.stop.is_some() {
            // Make the truncation (and a rewritten header) durable before anything follows it.
            writer.sync()?;
        }
        Ok((writer, recovery))
    }

    fn new(
        fs: &FsRef,
        file: Box<dyn WritableFile>,
        path: &Path,
        sync_mode: SyncMode,
        len: u64,
        next_sequence: u64,
    ) -> WalWriter {
        WalWriter {
            file,
            fs: std::sync::Arc::clone(fs),
            path: path.to_path_buf(),
            sync_mode,
            len,
            next_sequence,
            record: Vec::new(),
            failed: false,
            name_durable: false,
        }
    }

    /// Appends `batch` as one record and returns the record's offset in the file.
    ///
    /// The batch's base sequence must not be below the sequences already in the log. The
    /// record reaches the OS before this returns, and stable storage too with
    /// [`SyncMode::EveryBatch`].
    pub fn append(&mut self, batch: &WriteBatch) -> Result<u64> {
        if self.failed {
            return Err(Error::Closed);
        }
        if batch.base_sequence() < self.next_sequence {
            return Err(Error::invalid(format!(
                "batch base sequence {} is below the log's next sequence {}",
                batch.base_sequence(),
                self.next_sequence
            )));
        }
        let offset = self.len;
        let mut record = std::mem::take(&mut self.record);
        record.clear();
        // A batch is at most MAX_BATCH_LEN = MAX_RECORD_LEN bytes, so framing cannot fail.
        put_record(&mut record, batch.encoded());
        let written = self.write_out(&record);
        self.record = record;
        written?;
        self.len += (self.record.len()) as u64;
        self.next_sequence = batch.last_sequence() + u64::from(!batch.is_empty());
        if self.sync_mode == SyncMode::EveryBatch {
            self.sync()?;
        }
        Ok(offset)
    }

    /// Makes the file's name durable in its directory (fsyncs the directory). Needed once per
    /// log before a sync of its records can be relied on after a power loss.
    pub fn sync_dir(&mut self) -> Result<()> {
        if self.failed {
            return Err(Error::Closed);
        }
        sync_parent(self.fs.as_ref(), &self.path).inspect_err(|_| self.failed = true)?;
        self.name_durable = true;
        Ok(())
    }

    /// Forces everything appended so far to stable storage (`fdatasync`), and, the first
    /// time, the file's name in its directory: a synced record of a file whose directory entry
    /// a power loss undoes would be lost with it.
    pub fn sync(&mut self) -> Result<()> {
        if self.failed {
            return Err(Error::Closed);
        }
        self.file.sync_data().map_err(|e| {
            self.failed = true;
            Error::fsync(&self.path, e)
        })?;
        if !self.name_durable {
            self.sync_dir()?;
        }
        Ok(())
    }

    /// Bytes in the file: the header plus every appended record.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.len
    }

    fn write_out(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes).map_err(|e| {
            // A partial record may now be in the file; recovery treats it as a torn tail.
            self.failed = true;
            Error::io(&self.path, e)
        })
    }

    #[cfg(test)]
    fn truncate_to(&mut self, len: u64) -> Result<()> {
        self.file.set_len(len).map_err(|e| {
            self.failed = true;
            Error::io(&self.path, e)
        })?;
        self.len = len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::wal::wal_file_name;

    fn batch(base: u64, key: &[u8]) -> WriteBatch {
        let mut b = WriteBatch::new();
        b.put_id(0, key, b"value").unwrap();
        b.delete_range_id(2, b"a", b"z").unwrap();
        b.set_base_sequence(base).unwrap();
        b
    }

    #[test]
    fn append_recover_and_reopen_after_every_torn_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(wal_file_name(5));
        let mut wal = WalWriter::create(&path, 5, SyncMode::EveryBatch).unwrap();
        let mut offsets = Vec::new();
        for i in 0..3u64 {
            offsets.push(wal.append(&batch(1 + 2 * i, &[i as u8; 3])).unwrap());
        }
        assert!(
            wal.append(&batch(2, b"old")).is_err(),
            "sequence went backwards"
        );
        drop(wal);
        let full = std::fs::read(&path).unwrap();
        for cut in offsets[2] as usize..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let (mut wal, rec) =
                WalWriter::reopen(&path, 5, SyncMode::Manual, RecoveryMode::default()).unwrap();
            assert_eq!(rec.batches.len(), 2, "cut {cut}");
            assert_eq!(rec.dropped_bytes(), cut as u64 - offsets[2]);
            assert_eq!(wal.len(), offsets[2]);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), offsets[2]);
            assert_eq!(wal.append(&batch(10, b"new")).unwrap(), offsets[2]);
            drop(wal);
            let rec = WalRecovery::read(&path, RecoveryMode::Strict).unwrap();
            let bases: Vec<u64> = rec.batches.iter().map(WriteBatch::base_sequence).collect();
            assert_eq!(bases, [1, 3, 10], "cut {cut}");
        }
    }

    #[test]
    fn reopen_rewrites_a_torn_header_and_refuses_middle_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(wal_file_name(8));
        std::fs::write(&path, &encode_header(8)[..10]).unwrap();
        let (mut wal, rec) =
            WalWriter::reopen(&path, 8, SyncMode::EveryBatch, RecoveryMode::default()).unwrap();
        assert_eq!((rec.log_number, rec.dropped_bytes()), (None, 10));
        wal.append(&batch(1, b"a")).unwrap();
        let second = wal.append(&batch(3, b"b")).unwrap();
        wal.append(&batch(5, b"c")).unwrap();
        drop(wal);
        assert!(WalWriter::reopen(&path, 9, SyncMode::Manual, RecoveryMode::default()).is_err());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[second as usize + 10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        for mode in [
            RecoveryMode::TolerateTornTail,
            RecoveryMode::StopAtFirstCorruption,
        ] {
            match WalWriter::reopen(&path, 8, SyncMode::Manual, mode) {
                Err(Error::Corruption { offset, .. }) => assert_eq!(offset, second),
                other => panic!("{mode:?}: {:?}", other.map(|(_, r)| r)),
            }
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "damaged log left untouched"
        );
        let rec = WalRecovery::read(&path, RecoveryMode::StopAtFirstCorruption).unwrap();
        assert_eq!(rec.batches.len(), 1);
        assert_eq!(rec.stop.unwrap().offset, second);
    }

    #[test]
    fn create_refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(wal_file_name(1));
        WalWriter::create(&path, 1, SyncMode::Manual).unwrap();
        assert!(WalWriter::create(&path, 1, SyncMode::Manual).is_err());
    }

    #[test]
    fn wal_appended_batch_is_recovered() -> std::result::Result<(), Box<dyn std::error::Error>> {
        use crate::lsm::batch::WriteBatch;
        use crate::lsm::wal::{RecoveryMode, SyncMode, WalRecovery, WalWriter, wal_file_name};

        let dir = tempfile::tempdir()?;
        let path = dir.path().join(wal_file_name(1));
        let mut wal = WalWriter::create(&path, 1, SyncMode::Manual)?;
        let mut batch = WriteBatch::new();
        batch.put_id(0, b"k", b"v")?;
        batch.set_base_sequence(1)?;
        wal.append(&batch)?;
        wal.sync()?;
        let recovered = WalRecovery::read(&path, RecoveryMode::default())?;
        assert_eq!(recovered.batches, vec![batch]);
        Ok(())
    }
}

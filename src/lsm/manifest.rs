//! The manifest: a log of version edits from which the current [`Version`] is rebuilt on open
//! (FORMAT.md §9).
//!
//! `CURRENT` names the live manifest file. Every edit is appended as one framed record and
//! fsynced before the change it describes is used; files an edit adds were fsynced before it.
//! On open the manifest is replayed and then rolled over to a fresh file holding one snapshot
//! edit, so a torn tail left by a crash is never appended to.

use std::path::{Path, PathBuf};

use crate::codec::cursor::Cursor;
use crate::codec::record::{RecordError, put_record, read_record};
use crate::error::{Error, Result};
use crate::fs::{FileSystem, FsRef, WritableFile, write_atomic};
use crate::lsm::version::{Version, VersionEdit};

/// On disk: never change; FORMAT.md §9.
pub const MANIFEST_MAGIC: [u8; 8] = *b"FLSTMANI";
/// The manifest format version this code writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
/// Name of the file that names the live manifest.
pub const CURRENT_FILE: &str = "CURRENT";

/// File name of manifest `number`.
pub fn manifest_file_name(number: u64) -> String {
    format!("MANIFEST-{number:06}")
}

/// The live manifest, open for appending.
pub struct Manifest {
    dir: PathBuf,
    number: u64,
    file: Box<dyn WritableFile>,
    size: u64,
    /// Set by a failed write or sync: the file's tail is then unknown (a torn record, or pages
    /// a failed fsync may have dropped), so nothing may be appended after it.
    failed: bool,
}

impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manifest")
            .field("dir", &self.dir)
            .field("number", &self.number)
            .field("size", &self.size)
            .field("failed", &self.failed)
            .finish()
    }
}

impl Manifest {
    /// Writes manifest `number` holding `version` as one snapshot edit, fsyncs it, and points
    /// `CURRENT` at it (temp name, fsync, rename, directory fsync). The previous manifest, if
    /// any, is deleted afterwards.
    pub fn create(fs: &FsRef, dir: &Path, number: u64, version: &Version) -> Result<Manifest> {
        let name = manifest_file_name(number);
        let path = dir.join(&name);
        let mut bytes = Vec::new();
        let mut header = MANIFEST_MAGIC.to_vec();
        header.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
        put_record(&mut bytes, &header);
        put_record(&mut bytes, &version.snapshot_edit().encode());
        let mut file = fs.create(&path).map_err(|e| Error::io(&path, e))?;
        file.write_all(&bytes).map_err(|e| Error::io(&path, e))?;
        file.sync_all().map_err(|e| Error::fsync(&path, e))?;
        let previous = read_current(fs.as_ref(), dir).ok().flatten();
        write_current(fs.as_ref(), dir, &name)?;
        if let Some(old) = previous.filter(|old| *old != name) {
            let _ = fs.remove_file(&dir.join(old));
        }
        Ok(Manifest {
            dir: dir.to_path_buf(),
            number,
            file,
            size: bytes.len() as u64,
            failed: false,
        })
    }

    /// Appends `edit` and fsyncs it: once this returns, the edit survives a crash.
    ///
    /// After a failed write or fsync the manifest refuses every further append (the store is
    /// then read-only until reopened): its tail may hold a torn record or bytes a failed fsync
    /// dropped, and a retry would append after them. Recovery at the next open replays the
    /// durable prefix; the failed edit is there whole or not at all, and either is consistent,
    /// since every file it adds was fsynced before it and no file it removes is deleted before
    /// it succeeds.
    pub fn append(&mut self, edit: &VersionEdit) -> Result<()> {
        let path = self.dir.join(manifest_file_name(self.number));
        if self.failed {
            return Err(Error::io(
                &path,
                std::io::Error::other(
                    "an earlier manifest write or fsync failed; the store is read-only until reopened",
                ),
            ));
        }
        let mut record = Vec::new();
        put_record(&mut record, &edit.encode());
        let written = match self.file.write_all(&record) {
            Ok(()) => self.file.sync_data().map_err(|e| Error::fsync(&path, e)),
            Err(e) => Err(Error::io(&path, e)),
        };
        if let Err(e) = written {
            self.failed = true;
            return Err(e);
        }
        self.size += record.len() as u64;
        Ok(())
    }

    /// Whether a write or fsync of this manifest failed (no more appends).
    #[cfg(test)]
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Bytes written to this manifest (roll over when large).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// This manifest's file number.
    #[cfg(test)]
    pub fn number(&self) -> u64 {
        self.number
    }
}

/// Reads `CURRENT`; `None` when the store does not exist yet.
pub fn read_current(fs: &dyn FileSystem, dir: &Path) -> Result<Option<String>> {
    let path = dir.join(CURRENT_FILE);
    let text = match fs.read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let name = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| t.strip_suffix('\n'))
        .filter(|n| n.starts_with("MANIFEST-") && !n.contains('/'))
        .ok_or_else(|| Error::corruption(path.display(), 0, "CURRENT does not name a manifest"))?;
    Ok(Some(name.to_string()))
}

fn write_current(fs: &dyn FileSystem, dir: &Path, name: &str) -> Result<()> {
    write_atomic(fs, &dir.join(CURRENT_FILE), format!("{name}\n").as_bytes())
}

/// Rebuilds the version from the manifest `CURRENT` names. A torn last record (the file ends
/// inside it) is an edit that was never acknowledged and is ignored — except the first edit,
/// which was durable before the manifest became current; any other damage is corruption naming
/// the manifest and offset. (A flipped bit in the length field of the last record looks like a
/// torn append and drops that edit: the record framing's crc covers the payload only.)
pub fn recover(fs: &dyn FileSystem, dir: &Path) -> Result<Option<(Version, u64)>> {
    let Some(name) = read_current(fs, dir)? else {
        return Ok(None);
    };
    let number = name
        .strip_prefix("MANIFEST-")
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| {
            Error::corruption(dir.join(CURRENT_FILE).display(), 0, "bad manifest name")
        })?;
    let path = dir.join(&name);
    let bytes = fs.read(&path).map_err(|e| Error::io(&path, e))?;
    let file = path.display().to_string();
    let version = replay(&bytes, &file)?;
    Ok(Some((version, number)))
}

/// Replays manifest bytes into a version (pure; the manifest fuzz target drives it).
pub fn replay(bytes: &[u8], file: &str) -> Result<Version> {
    let mut pos = 0usize;
    let mut version = Version::default();
    let mut first = true;
    let mut edits = 0usize;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let (payload, used) = match read_record(rest) {
            Ok(ok) => ok,
            // Only an append can be torn: the snapshot edit that opens every manifest was
            // fsynced before CURRENT named the file, so it must be whole.
            Err(RecordError::Truncated) if !first && edits > 0 => {
                if crate::codec::record::length_damaged(rest) {
                    return Err(Error::corruption(
                        file,
                        pos as u64,
                        "record length field damaged (the whole record is present)",
                    ));
                }
                break;
            }
            Err(RecordError::Truncated) => {
                return Err(Error::corruption(
                    file,
                    pos as u64,
                    "manifest header truncated",
                ));
            }
            Err(RecordError::Corrupt(what)) => {
                return Err(Error::corruption(file, pos as u64, what));
            }
        };
        let base = pos as u64 + 8;
        if first {
            let mut c = Cursor::new(payload, file, base);
            if c.bytes(8, "magic")? != MANIFEST_MAGIC {
                return Err(Error::corruption(
                    file,
                    base,
                    "not a flowstate manifest (bad magic)",
                ));
            }
            let at = c.offset();
            let v = c.u32_le("manifest version")?;
            if v != MANIFEST_VERSION {
                return Err(Error::corruption(
                    file,
                    at,
                    format!("unsupported manifest version {v}"),
                ));
            }
            c.finish("manifest header")?;
            first = false;
        } else {
            let edit = VersionEdit::decode(payload, file, base)?;
            version = version.apply(&edit, file, pos as u64)?;
            edits += 1;
        }
        pos += used;
    }
    if first {
        return Err(Error::corruption(file, 0, "empty manifest"));
    }
    if edits == 0 {
        return Err(Error::corruption(
            file,
            pos as u64,
            "manifest holds no version (its first edit is missing)",
        ));
    }
    if version.cf_id("default") != Some(0) {
        return Err(Error::corruption(
            file,
            pos as u64,
            "manifest has no default column family",
        ));
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fs::{FaultKind, FaultOp, PowerLoss, SimFs, std_fs};

    #[test]
    fn create_append_recover_and_torn_tail() {
        let fs = std_fs();
        let dir = tempfile::tempdir().unwrap();
        let v = Version::default();
        let mut m = Manifest::create(&fs, dir.path(), 1, &v).unwrap();
        let edit = VersionEdit {
            cf_added: vec![(0, "default".into())],
            last_sequence: Some(42),
            ..VersionEdit::default()
        };
        m.append(&edit).unwrap();
        let (rec, n) = recover(fs.as_ref(), dir.path()).unwrap().unwrap();
        assert_eq!((rec.last_sequence, n), (42, 1));
        assert_eq!(rec.cf_id("default"), Some(0));

        // A torn record at the end is ignored; a flipped byte in the middle is corruption.
        let path = dir.path().join(manifest_file_name(1));
        let good = std::fs::read(&path).unwrap();
        let mut torn = good.clone();
        torn.extend_from_slice(&[50, 0, 0, 0, 1, 2]);
        assert_eq!(replay(&torn, "m").unwrap().last_sequence, 42);
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 2] ^= 1;
        assert!(replay(&bad, "m").unwrap_err().is_corruption());
        assert!(replay(&[], "m").is_err());

        // Rolling over keeps the state and removes the old manifest.
        let m2 = Manifest::create(&fs, dir.path(), 2, &rec).unwrap();
        assert_eq!(m2.number(), 2);
        assert!(!path.exists());
        assert_eq!(
            recover(fs.as_ref(), dir.path())
                .unwrap()
                .unwrap()
                .0
                .last_sequence,
            42
        );
    }

    #[test]
    fn a_failed_append_poisons_the_manifest_and_recovery_sees_a_consistent_prefix() {
        let edit = |seq| VersionEdit {
            last_sequence: Some(seq),
            ..VersionEdit::default()
        };
        for (op, kind) in [
            (FaultOp::Write, FaultKind::Enospc),
            (FaultOp::Write, FaultKind::Eio),
            (FaultOp::Sync, FaultKind::Eio),
        ] {
            let sim = SimFs::new(11);
            let fs: FsRef = sim.clone();
            let dir = Path::new("/db");
            fs.create_dir(dir).unwrap();
            fs.sync_dir(Path::new("/")).unwrap();
            let mut m = Manifest::create(&fs, dir, 1, &Version::default()).unwrap();
            m.append(&VersionEdit {
                cf_added: vec![(0, "default".into())],
                ..edit(1)
            })
            .unwrap();
            sim.inject(op, 0, kind, false);
            assert!(m.append(&edit(2)).is_err(), "{op:?}");
            assert!(m.has_failed());
            // The fault fired once; a retry would now succeed at the file system, but the
            // manifest refuses it: it would follow a torn or undefined record.
            let retry = m.append(&edit(3)).unwrap_err();
            assert!(retry.to_string().contains("read-only"), "{retry}");
            drop(m);
            sim.power_loss(PowerLoss::DropUnsynced);
            let (version, _) = recover(fs.as_ref(), dir).unwrap().unwrap();
            assert_eq!(
                version.last_sequence, 1,
                "{op:?}: only the acknowledged edit survives"
            );
        }
    }
}

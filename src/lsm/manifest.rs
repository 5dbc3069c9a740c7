//! The manifest: a log of version edits from which the current [`Version`] is rebuilt on open
//! (FORMAT.md §9).
//!
//! `CURRENT` names the live manifest file. Every edit is appended as one framed record and
//! fsynced before the change it describes is used; files an edit adds were fsynced before it.
//! On open the manifest is replayed and then rolled over to a fresh file holding one snapshot
//! edit, so a torn tail left by a crash is never appended to.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::codec::cursor::Cursor;
use crate::codec::record::{RecordError, put_record, read_record};
use crate::error::{Error, Result};
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
#[derive(Debug)]
pub struct Manifest {
    dir: PathBuf,
    number: u64,
    file: File,
    size: u64,
}

impl Manifest {
    /// Writes manifest `number` holding `version` as one snapshot edit, fsyncs it, and points
    /// `CURRENT` at it (temp name, fsync, rename, directory fsync). The previous manifest, if
    /// any, is deleted afterwards.
    pub fn create(dir: &Path, number: u64, version: &Version) -> Result<Manifest> {
        let name = manifest_file_name(number);
        let path = dir.join(&name);
        let mut bytes = Vec::new();
        let mut header = MANIFEST_MAGIC.to_vec();
        header.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
        put_record(&mut bytes, &header);
        put_record(&mut bytes, &version.snapshot_edit().encode());
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.write_all(&bytes).map_err(|e| Error::io(&path, e))?;
        file.sync_all().map_err(|e| Error::io(&path, e))?;
        let previous = read_current(dir).ok().flatten();
        write_current(dir, &name)?;
        if let Some(old) = previous.filter(|old| *old != name) {
            let _ = std::fs::remove_file(dir.join(old));
        }
        Ok(Manifest {
            dir: dir.to_path_buf(),
            number,
            file,
            size: bytes.len() as u64,
        })
    }

    /// Appends `edit` and fsyncs it: once this returns, the edit survives a crash.
    pub fn append(&mut self, edit: &VersionEdit) -> Result<()> {
        let path = self.dir.join(manifest_file_name(self.number));
        let mut record = Vec::new();
        put_record(&mut record, &edit.encode());
        self.file
            .write_all(&record)
            .map_err(|e| Error::io(&path, e))?;
        self.file.sync_data().map_err(|e| Error::io(&path, e))?;
        self.size += record.len() as u64;
        Ok(())
    }

    /// Bytes written to this manifest (roll over when large).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// This manifest's file number.
    pub fn number(&self) -> u64 {
        self.number
    }
}

/// Reads `CURRENT`; `None` when the store does not exist yet.
pub fn read_current(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(CURRENT_FILE);
    let text = match std::fs::read(&path) {
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

fn write_current(dir: &Path, name: &str) -> Result<()> {
    let tmp = dir.join("CURRENT.tmp");
    let path = dir.join(CURRENT_FILE);
    let mut file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(format!("{name}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)
}

/// fsyncs a directory so renames and new names in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Rebuilds the version from the manifest `CURRENT` names. A torn last record (the file ends
/// inside it) is an edit that was never acknowledged and is ignored — except the first edit,
/// which was durable before the manifest became current; any other damage is corruption naming
/// the manifest and offset. (A flipped bit in the length field of the last record looks like a
/// torn append and drops that edit: the record framing's crc covers the payload only.)
pub fn recover(dir: &Path) -> Result<Option<(Version, u64)>> {
    let Some(name) = read_current(dir)? else {
        return Ok(None);
    };
    let number = name
        .strip_prefix("MANIFEST-")
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| {
            Error::corruption(dir.join(CURRENT_FILE).display(), 0, "bad manifest name")
        })?;
    let path = dir.join(&name);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
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

    #[test]
    fn create_append_recover_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let v = Version::default();
        let mut m = Manifest::create(dir.path(), 1, &v).unwrap();
        let edit = VersionEdit {
            cf_added: vec![(0, "default".into())],
            last_sequence: Some(42),
            ..VersionEdit::default()
        };
        m.append(&edit).unwrap();
        let (rec, n) = recover(dir.path()).unwrap().unwrap();
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
        let m2 = Manifest::create(dir.path(), 2, &rec).unwrap();
        assert_eq!(m2.number(), 2);
        assert!(!path.exists());
        assert_eq!(recover(dir.path()).unwrap().unwrap().0.last_sequence, 42);
    }
}

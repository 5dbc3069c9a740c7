//! A filtered copy of an SST: the entries of one user-key range, written through the builder
//! as they are (same internal keys, so sequence numbers and kinds keep their meaning).

use std::path::Path;

use crate::error::{Error, Result};
use crate::fs::FileSystem;
use crate::lsm::format::{ValueKind, parse_internal_key, user_key};
use crate::lsm::iterator::InternalIterator;
use crate::lsm::sst::format::seek_key;
use crate::lsm::sst::{SstBuilder, SstMetadata, SstOptions, SstReader};

/// Where [`copy_range`] reads and writes, and what it keeps.
#[derive(Clone, Copy, Debug)]
pub struct CopyRange<'a> {
    /// The SST read.
    pub from: &'a Path,
    /// The new SST (created; must not exist).
    pub to: &'a Path,
    /// How the new file is written.
    pub options: SstOptions,
    /// Entries with a user key at or above this are kept ...
    pub start: &'a [u8],
    /// ... and below this (`None`: no upper bound).
    pub end: Option<&'a [u8]>,
    /// Creation time recorded in the new file (ms since the Unix epoch).
    pub created_ms: u64,
}

/// Writes the entries of `range.from` whose user key lies in `[start, end)` to a new SST at
/// `range.to` and returns its metadata, or `None` (and no file) when no entry lies there. A
/// range tombstone entry in the range is refused (they live in the version, never in a file
/// this store writes); a damaged source is [`Error::Corruption`]. On error the new file is
/// removed.
pub fn copy_range(fs: &dyn FileSystem, range: &CopyRange<'_>) -> Result<Option<SstMetadata>> {
    let reader = SstReader::open_on(fs, range.from, 0, None, false)?;
    let mut iter = reader.scan_iter();
    iter.seek(&seek_key(range.start, u64::MAX))?;
    let in_range = |iter: &dyn InternalIterator| {
        iter.valid() && range.end.is_none_or(|end| user_key(iter.key()) < end)
    };
    if !in_range(&iter) {
        return Ok(None);
    }
    let mut builder = SstBuilder::create_on(fs, range.to, range.options)?;
    builder.set_creation_time(range.created_ms);
    let label = range.from.display().to_string();
    let copied = (|| {
        while in_range(&iter) {
            let key = iter.key();
            if parse_internal_key(key, &label, 0)?.kind == ValueKind::RangeDelete {
                return Err(Error::invalid(format!(
                    "{label} holds a range tombstone entry; range tombstones live in the version"
                )));
            }
            builder.add(key, iter.value())?;
            iter.next()?;
        }
        builder.finish()
    })();
    match copied {
        Ok(meta) => Ok(Some(meta)),
        Err(e) => {
            let _ = fs.remove_file(range.to);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::format::internal_key;

    fn entries(fs: &dyn FileSystem, path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        let reader = SstReader::open_on(fs, path, 0, None, false).unwrap();
        let mut iter = reader.iter();
        iter.seek_to_first().unwrap();
        let mut out = Vec::new();
        while iter.valid() {
            out.push((iter.key().to_vec(), iter.value().to_vec()));
            iter.next().unwrap();
        }
        out
    }

    #[test]
    fn copies_one_key_range_with_sequences_and_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::fs::std_fs();
        let from = dir.path().join("from.sst");
        let mut builder = SstBuilder::create_on(fs.as_ref(), &from, SstOptions::default()).unwrap();
        let mut all = Vec::new();
        for group in 0u16..6 {
            for (seq, kind) in [
                (9, ValueKind::Put),
                (4, ValueKind::Delete),
                (2, ValueKind::Merge),
            ] {
                let mut user = group.to_be_bytes().to_vec();
                user.extend_from_slice(b"key");
                let key = internal_key(&user, seq + u64::from(group), kind);
                let value = format!("v{group}-{seq}").into_bytes();
                builder.add(&key, &value).unwrap();
                all.push((key, value));
            }
        }
        builder.finish().unwrap();
        let to = dir.path().join("to.sst");
        let range = CopyRange {
            from: &from,
            to: &to,
            options: SstOptions::default(),
            start: &[0, 2],
            end: Some(&[0, 4]),
            created_ms: 77,
        };
        let meta = copy_range(fs.as_ref(), &range).unwrap().unwrap();
        assert_eq!(meta.properties.entry_count, 6);
        assert_eq!(meta.properties.creation_time_ms, 77);
        assert_eq!(entries(fs.as_ref(), &to), all[6..12].to_vec());
        // Open above: to the end of the file.
        let tail = dir.path().join("tail.sst");
        let range = CopyRange {
            to: &tail,
            start: &[0, 5],
            end: None,
            ..range
        };
        copy_range(fs.as_ref(), &range).unwrap().unwrap();
        assert_eq!(entries(fs.as_ref(), &tail), all[15..].to_vec());
        // Nothing in the range: no file.
        let none = dir.path().join("none.sst");
        let range = CopyRange {
            to: &none,
            start: &[0, 9],
            end: None,
            ..range
        };
        assert!(copy_range(fs.as_ref(), &range).unwrap().is_none());
        assert!(!none.exists());
    }

    #[test]
    fn a_damaged_source_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::fs::std_fs();
        let from = dir.path().join("from.sst");
        std::fs::write(&from, vec![7u8; 200]).unwrap();
        let to = dir.path().join("to.sst");
        let range = CopyRange {
            from: &from,
            to: &to,
            options: SstOptions::default(),
            start: &[],
            end: None,
            created_ms: 0,
        };
        assert!(matches!(
            copy_range(fs.as_ref(), &range),
            Err(Error::Corruption { .. })
        ));
        assert!(!to.exists());
    }
}

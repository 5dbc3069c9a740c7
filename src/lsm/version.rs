//! Versions of the store: which SST files make up each column family at each level, and the
//! edits that move from one version to the next (FORMAT.md §9).
//!
//! A [`Version`] is immutable and shared (`Arc`) by readers, iterators and checkpoints; an edit is
//! applied with [`Version::apply`], the same pure function at recovery (replaying the manifest)
//! and live, so what is logged is exactly what runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::codec::cursor::Cursor;
use crate::codec::varint::{put_varint32, put_varint64};
use crate::error::{Error, Result};
use crate::lsm::format::{compare_internal, user_key};

/// Number of levels (L0 ..= L6).
pub const NUM_LEVELS: usize = 7;

/// Metadata of one SST file, as recorded in the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// File number: the file is `<number:06>.sst` in the store's directory.
    pub number: u64,
    /// Size in bytes.
    pub size: u64,
    /// CRC-32 of the whole file (checkpoints record and verify it).
    pub crc32: u32,
    /// Smallest internal key in the file.
    pub smallest: Vec<u8>,
    /// Largest internal key in the file.
    pub largest: Vec<u8>,
    /// Smallest sequence number in the file.
    pub smallest_seq: u64,
    /// Largest sequence number in the file.
    pub largest_seq: u64,
    /// Number of entries.
    pub entries: u64,
    /// Wall-clock ms when the file was written (periodic compaction of cold TTL files uses it).
    pub created_ms: u64,
}

impl FileMeta {
    /// Smallest user key of the file.
    pub fn smallest_user_key(&self) -> &[u8] {
        user_key(&self.smallest)
    }

    /// Largest user key of the file.
    pub fn largest_user_key(&self) -> &[u8] {
        user_key(&self.largest)
    }

    /// Whether the file's user-key range intersects `[start, end]` (`None` = unbounded).
    pub fn overlaps(&self, start: Option<&[u8]>, end: Option<&[u8]>) -> bool {
        let before = end.is_some_and(|e| self.smallest_user_key() > e);
        let after = start.is_some_and(|s| self.largest_user_key() < s);
        !before && !after
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_varint64(out, self.number);
        put_varint64(out, self.size);
        out.extend_from_slice(&self.crc32.to_le_bytes());
        put_varint32(out, self.smallest.len() as u32);
        out.extend_from_slice(&self.smallest);
        put_varint32(out, self.largest.len() as u32);
        out.extend_from_slice(&self.largest);
        put_varint64(out, self.smallest_seq);
        put_varint64(out, self.largest_seq);
        put_varint64(out, self.entries);
        put_varint64(out, self.created_ms);
    }

    fn decode(c: &mut Cursor<'_>) -> Result<Self> {
        Ok(FileMeta {
            number: c.varint64()?,
            size: c.varint64()?,
            crc32: c.u32_le("file crc32")?,
            smallest: c.len_prefixed("smallest key")?.to_vec(),
            largest: c.len_prefixed("largest key")?.to_vec(),
            smallest_seq: c.varint64()?,
            largest_seq: c.varint64()?,
            entries: c.varint64()?,
            created_ms: c.varint64()?,
        })
    }
}

/// A range deletion: user keys in `[start, end)` written before `sequence` are deleted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RangeTombstone {
    /// First deleted user key.
    pub start: Vec<u8>,
    /// End of the range (exclusive).
    pub end: Vec<u8>,
    /// Sequence number of the deletion.
    pub sequence: u64,
}

impl RangeTombstone {
    /// Whether the tombstone deletes `user_key` at `sequence` for a reader at `snapshot`.
    pub fn covers(&self, user_key: &[u8], sequence: u64, snapshot: u64) -> bool {
        self.sequence <= snapshot
            && sequence < self.sequence
            && self.start.as_slice() <= user_key
            && user_key < self.end.as_slice()
    }
}

/// A change from one version to the next; one manifest record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionEdit {
    /// Next file number to hand out.
    pub next_file_number: Option<u64>,
    /// Last sequence number durably covered.
    pub last_sequence: Option<u64>,
    /// Next column family id to hand out (ids are never reused).
    pub next_cf_id: Option<u32>,
    /// Column families created (id, name).
    pub cf_added: Vec<(u32, String)>,
    /// Column families dropped.
    pub cf_dropped: Vec<u32>,
    /// Per column family: WAL number from which its unflushed writes start.
    pub cf_log_numbers: Vec<(u32, u64)>,
    /// Files added (column family, level, file).
    pub new_files: Vec<(u32, u8, FileMeta)>,
    /// Files removed (column family, level, file number).
    pub deleted_files: Vec<(u32, u8, u64)>,
    /// Range tombstones added (column family, tombstone).
    pub tombstones_added: Vec<(u32, RangeTombstone)>,
    /// Range tombstones removed (column family, tombstone).
    pub tombstones_removed: Vec<(u32, RangeTombstone)>,
}

// Edit field tags. On disk: never change, never reuse; FORMAT.md §9.
const TAG_NEXT_FILE: u8 = 1;
const TAG_LAST_SEQUENCE: u8 = 2;
const TAG_CF_ADD: u8 = 3;
const TAG_CF_DROP: u8 = 4;
const TAG_CF_LOG_NUMBER: u8 = 5;
const TAG_NEW_FILE: u8 = 6;
const TAG_DELETED_FILE: u8 = 7;
const TAG_TOMBSTONE_ADD: u8 = 8;
const TAG_TOMBSTONE_REMOVE: u8 = 9;
const TAG_NEXT_CF_ID: u8 = 10;

fn encode_tombstone(out: &mut Vec<u8>, cf: u32, t: &RangeTombstone) {
    put_varint32(out, cf);
    put_varint32(out, t.start.len() as u32);
    out.extend_from_slice(&t.start);
    put_varint32(out, t.end.len() as u32);
    out.extend_from_slice(&t.end);
    put_varint64(out, t.sequence);
}

fn decode_tombstone(c: &mut Cursor<'_>) -> Result<(u32, RangeTombstone)> {
    let cf = c.varint32()?;
    let start = c.len_prefixed("tombstone start")?.to_vec();
    let end = c.len_prefixed("tombstone end")?.to_vec();
    let sequence = c.varint64()?;
    Ok((
        cf,
        RangeTombstone {
            start,
            end,
            sequence,
        },
    ))
}

impl VersionEdit {
    /// The edit's bytes (one manifest record payload; FORMAT.md §9).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(n) = self.next_file_number {
            out.push(TAG_NEXT_FILE);
            put_varint64(&mut out, n);
        }
        if let Some(s) = self.last_sequence {
            out.push(TAG_LAST_SEQUENCE);
            put_varint64(&mut out, s);
        }
        if let Some(id) = self.next_cf_id {
            out.push(TAG_NEXT_CF_ID);
            put_varint32(&mut out, id);
        }
        for (cf, name) in &self.cf_added {
            out.push(TAG_CF_ADD);
            put_varint32(&mut out, *cf);
            put_varint32(&mut out, name.len() as u32);
            out.extend_from_slice(name.as_bytes());
        }
        for cf in &self.cf_dropped {
            out.push(TAG_CF_DROP);
            put_varint32(&mut out, *cf);
        }
        for (cf, log) in &self.cf_log_numbers {
            out.push(TAG_CF_LOG_NUMBER);
            put_varint32(&mut out, *cf);
            put_varint64(&mut out, *log);
        }
        for (cf, level, file) in &self.new_files {
            out.push(TAG_NEW_FILE);
            put_varint32(&mut out, *cf);
            out.push(*level);
            file.encode(&mut out);
        }
        for (cf, level, number) in &self.deleted_files {
            out.push(TAG_DELETED_FILE);
            put_varint32(&mut out, *cf);
            out.push(*level);
            put_varint64(&mut out, *number);
        }
        for (cf, t) in &self.tombstones_added {
            out.push(TAG_TOMBSTONE_ADD);
            encode_tombstone(&mut out, *cf, t);
        }
        for (cf, t) in &self.tombstones_removed {
            out.push(TAG_TOMBSTONE_REMOVE);
            encode_tombstone(&mut out, *cf, t);
        }
        out
    }

    /// Decodes an edit; `base` is the payload's offset in `file`.
    pub fn decode(payload: &[u8], file: &str, base: u64) -> Result<Self> {
        let mut c = Cursor::new(payload, file, base);
        let mut edit = VersionEdit::default();
        while !c.is_empty() {
            let at = c.offset();
            match c.u8("edit tag")? {
                TAG_NEXT_FILE => edit.next_file_number = Some(c.varint64()?),
                TAG_LAST_SEQUENCE => edit.last_sequence = Some(c.varint64()?),
                TAG_NEXT_CF_ID => edit.next_cf_id = Some(c.varint32()?),
                TAG_CF_ADD => {
                    let cf = c.varint32()?;
                    edit.cf_added.push((cf, c.string("column family name")?));
                }
                TAG_CF_DROP => edit.cf_dropped.push(c.varint32()?),
                TAG_CF_LOG_NUMBER => {
                    let cf = c.varint32()?;
                    edit.cf_log_numbers.push((cf, c.varint64()?));
                }
                TAG_NEW_FILE => {
                    let cf = c.varint32()?;
                    let level = level(&mut c)?;
                    edit.new_files.push((cf, level, FileMeta::decode(&mut c)?));
                }
                TAG_DELETED_FILE => {
                    let cf = c.varint32()?;
                    let level = level(&mut c)?;
                    edit.deleted_files.push((cf, level, c.varint64()?));
                }
                TAG_TOMBSTONE_ADD => edit.tombstones_added.push(decode_tombstone(&mut c)?),
                TAG_TOMBSTONE_REMOVE => edit.tombstones_removed.push(decode_tombstone(&mut c)?),
                tag => {
                    return Err(Error::corruption(
                        file,
                        at,
                        format!("unknown version edit tag {tag}"),
                    ));
                }
            }
        }
        Ok(edit)
    }
}

fn level(c: &mut Cursor<'_>) -> Result<u8> {
    let at = c.offset();
    let level = c.u8("level")?;
    if usize::from(level) >= NUM_LEVELS {
        return Err(Error::corruption(
            c.file(),
            at,
            format!("level {level} >= {NUM_LEVELS}"),
        ));
    }
    Ok(level)
}

/// The sorted runs of the L0 files `l0` (newest first). A flush may write several L0 files (cut
/// like compaction output), which are disjoint in keys and share their creation time;
/// consecutive files with one creation time and pairwise disjoint key ranges count as one run.
/// A read looks at one file per run at most, so runs, not files, are what the L0 compaction
/// trigger and the write stall count.
pub fn l0_runs<'a>(l0: impl IntoIterator<Item = &'a FileMeta>) -> usize {
    let mut runs = 0;
    let mut run: Vec<&FileMeta> = Vec::new();
    for file in l0 {
        let joins = run.first().is_some_and(|first| {
            first.created_ms == file.created_ms
                && run.iter().all(|f| {
                    !f.overlaps(
                        Some(file.smallest_user_key()),
                        Some(file.largest_user_key()),
                    )
                })
        });
        if !joins {
            runs += 1;
            run.clear();
        }
        run.push(file);
    }
    runs
}

/// One column family in a version.
#[derive(Clone, Debug, Default)]
pub struct CfVersion {
    /// The column family's name.
    pub name: String,
    /// WAL number from which its unflushed writes start.
    pub log_number: u64,
    /// Files per level. L0 newest first (overlapping); L1+ sorted by smallest key, disjoint.
    pub levels: [Vec<Arc<FileMeta>>; NUM_LEVELS],
    /// Range tombstones that still apply to files of this column family.
    pub tombstones: Vec<RangeTombstone>,
}

impl CfVersion {
    /// Total bytes of the files at `level`.
    pub fn level_bytes(&self, level: usize) -> u64 {
        self.levels
            .get(level)
            .map_or(0, |files| files.iter().map(|f| f.size).sum())
    }

    /// The sorted runs of L0 ([`l0_runs`]).
    pub fn l0_runs(&self) -> usize {
        l0_runs(self.levels[0].iter().map(|f| &**f))
    }

    /// Every live file of the column family.
    pub fn files(&self) -> impl Iterator<Item = &Arc<FileMeta>> {
        self.levels.iter().flatten()
    }

    /// The newest range tombstone covering (`user_key`, `sequence`) for a reader at `snapshot`.
    #[cfg(test)]
    pub fn covered(&self, user_key: &[u8], sequence: u64, snapshot: u64) -> bool {
        self.tombstones
            .iter()
            .any(|t| t.covers(user_key, sequence, snapshot))
    }
}

/// The set of live files of every column family.
#[derive(Clone, Debug, Default)]
pub struct Version {
    /// Column families by id.
    pub cfs: BTreeMap<u32, CfVersion>,
    /// Next file number to hand out.
    pub next_file_number: u64,
    /// Last sequence number durably covered by flushed files or the WAL.
    pub last_sequence: u64,
    /// Next column family id to hand out.
    pub next_cf_id: u32,
}

impl Version {
    /// The version after `edit`. Inconsistent edits (a file deleted that is not there, a column
    /// family created twice) are corruption of `file` at `offset`: the manifest is damaged.
    pub fn apply(&self, edit: &VersionEdit, file: &str, offset: u64) -> Result<Version> {
        let bad = |what: String| Error::corruption(file, offset, what);
        let mut next = self.clone();
        if let Some(n) = edit.next_file_number {
            next.next_file_number = next.next_file_number.max(n);
        }
        if let Some(s) = edit.last_sequence {
            next.last_sequence = next.last_sequence.max(s);
        }
        if let Some(id) = edit.next_cf_id {
            next.next_cf_id = next.next_cf_id.max(id);
        }
        for (cf, name) in &edit.cf_added {
            next.next_cf_id = next.next_cf_id.max(cf.saturating_add(1));
            if next.cfs.contains_key(cf) || next.cfs.values().any(|c| &c.name == name) {
                return Err(bad(format!("column family {cf} ('{name}') created twice")));
            }
            next.cfs.insert(
                *cf,
                CfVersion {
                    name: name.clone(),
                    ..CfVersion::default()
                },
            );
        }
        for cf in &edit.cf_dropped {
            next.cfs
                .remove(cf)
                .ok_or_else(|| bad(format!("dropped unknown column family {cf}")))?;
        }
        for (cf, log) in &edit.cf_log_numbers {
            let c = next
                .cfs
                .get_mut(cf)
                .ok_or_else(|| bad(format!("unknown column family {cf}")))?;
            c.log_number = c.log_number.max(*log);
        }
        let levels_ok = edit
            .deleted_files
            .iter()
            .map(|(_, l, _)| *l)
            .chain(edit.new_files.iter().map(|(_, l, _)| *l))
            .all(|l| usize::from(l) < NUM_LEVELS);
        if !levels_ok {
            return Err(bad(format!("edit names a level >= {NUM_LEVELS}")));
        }
        for (cf, level, number) in &edit.deleted_files {
            let c = next
                .cfs
                .get_mut(cf)
                .ok_or_else(|| bad(format!("unknown column family {cf}")))?;
            let files = &mut c.levels[usize::from(*level)];
            let before = files.len();
            files.retain(|f| f.number != *number);
            if files.len() == before {
                return Err(bad(format!(
                    "deleted file {number} is not in L{level} of cf {cf}"
                )));
            }
        }
        for (cf, level, meta) in &edit.new_files {
            let c = next
                .cfs
                .get_mut(cf)
                .ok_or_else(|| bad(format!("unknown column family {cf}")))?;
            if compare_internal(&meta.smallest, &meta.largest) == std::cmp::Ordering::Greater {
                return Err(bad(format!(
                    "file {} has smallest key > largest key",
                    meta.number
                )));
            }
            c.levels[usize::from(*level)].push(Arc::new(meta.clone()));
            next.next_file_number = next.next_file_number.max(meta.number + 1);
        }
        for (cf, t) in &edit.tombstones_removed {
            let c = next
                .cfs
                .get_mut(cf)
                .ok_or_else(|| bad(format!("unknown column family {cf}")))?;
            c.tombstones.retain(|x| x != t);
        }
        for (cf, t) in &edit.tombstones_added {
            let c = next
                .cfs
                .get_mut(cf)
                .ok_or_else(|| bad(format!("unknown column family {cf}")))?;
            c.tombstones.push(t.clone());
        }
        for c in next.cfs.values_mut() {
            sort_levels(c);
            check_disjoint(c).map_err(bad)?;
        }
        Ok(next)
    }

    /// An edit that recreates this whole version from nothing (the first record of a new
    /// manifest when the old one is rolled over).
    pub fn snapshot_edit(&self) -> VersionEdit {
        let mut edit = VersionEdit {
            next_file_number: Some(self.next_file_number),
            last_sequence: Some(self.last_sequence),
            next_cf_id: Some(self.next_cf_id),
            ..VersionEdit::default()
        };
        for (id, cf) in &self.cfs {
            edit.cf_added.push((*id, cf.name.clone()));
            edit.cf_log_numbers.push((*id, cf.log_number));
            for (level, files) in cf.levels.iter().enumerate() {
                for f in files {
                    edit.new_files.push((*id, level as u8, (**f).clone()));
                }
            }
            for t in &cf.tombstones {
                edit.tombstones_added.push((*id, t.clone()));
            }
        }
        edit
    }

    /// Every live file number.
    pub fn live_file_numbers(&self) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .cfs
            .values()
            .flat_map(|c| c.files().map(|f| f.number))
            .collect();
        out.sort_unstable();
        out
    }

    /// The column family id of `name`.
    pub fn cf_id(&self, name: &str) -> Option<u32> {
        self.cfs
            .iter()
            .find(|(_, c)| c.name == name)
            .map(|(id, _)| *id)
    }
}

fn sort_levels(cf: &mut CfVersion) {
    // L0: newest (largest sequence) first, so reads see newer files before older ones.
    cf.levels[0].sort_by(|a, b| {
        b.largest_seq
            .cmp(&a.largest_seq)
            .then(b.number.cmp(&a.number))
    });
    for files in cf.levels.iter_mut().skip(1) {
        files.sort_by(|a, b| compare_internal(&a.smallest, &b.smallest));
    }
}

fn check_disjoint(cf: &CfVersion) -> std::result::Result<(), String> {
    for (level, files) in cf.levels.iter().enumerate().skip(1) {
        for pair in files.windows(2) {
            if compare_internal(&pair[0].largest, &pair[1].smallest) != std::cmp::Ordering::Less {
                return Err(format!(
                    "files {} and {} overlap in L{level} of '{}'",
                    pair[0].number, pair[1].number, cf.name
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::format::{ValueKind, internal_key};

    fn meta(number: u64, a: &[u8], b: &[u8], seq: u64) -> FileMeta {
        FileMeta {
            number,
            size: 100,
            crc32: 7,
            smallest: internal_key(a, seq, ValueKind::Put),
            largest: internal_key(b, seq, ValueKind::Put),
            smallest_seq: seq,
            largest_seq: seq,
            entries: 2,
            created_ms: 5,
        }
    }

    fn base() -> Version {
        let edit = VersionEdit {
            cf_added: vec![(0, "default".into()), (1, "other".into())],
            new_files: vec![
                (0, 1, meta(3, b"a", b"c", 1)),
                (0, 1, meta(4, b"d", b"f", 2)),
                (1, 0, meta(5, b"a", b"z", 3)),
            ],
            tombstones_added: vec![(
                0,
                RangeTombstone {
                    start: b"b".to_vec(),
                    end: b"e".to_vec(),
                    sequence: 9,
                },
            )],
            next_file_number: Some(6),
            last_sequence: Some(9),
            ..VersionEdit::default()
        };
        Version::default().apply(&edit, "m", 0).unwrap()
    }

    #[test]
    fn edits_round_trip_and_snapshot_rebuilds_the_version() {
        let v = base();
        let snap = v.snapshot_edit();
        let decoded = VersionEdit::decode(&snap.encode(), "m", 0).unwrap();
        assert_eq!(decoded, snap);
        let rebuilt = Version::default().apply(&decoded, "m", 0).unwrap();
        assert_eq!(rebuilt.live_file_numbers(), vec![3, 4, 5]);
        assert_eq!(rebuilt.cf_id("other"), Some(1));
        assert!(rebuilt.cfs[&0].covered(b"c", 1, 100));
        assert!(
            !rebuilt.cfs[&0].covered(b"c", 1, 8),
            "tombstone not visible at snapshot 8"
        );
        assert!(!rebuilt.cfs[&0].covered(b"e", 1, 100), "end is exclusive");
    }

    #[test]
    fn inconsistent_edits_are_corruption() {
        let v = base();
        let del = VersionEdit {
            deleted_files: vec![(0, 2, 3)],
            ..VersionEdit::default()
        };
        assert!(v.apply(&del, "m", 40).unwrap_err().is_corruption());
        let overlap = VersionEdit {
            new_files: vec![(0, 1, meta(9, b"b", b"e", 5))],
            ..VersionEdit::default()
        };
        assert!(v.apply(&overlap, "m", 0).is_err());
        let twice = VersionEdit {
            cf_added: vec![(7, "default".into())],
            ..VersionEdit::default()
        };
        assert!(v.apply(&twice, "m", 0).is_err());
        assert!(VersionEdit::decode(&[99], "m", 0).is_err());
        assert!(VersionEdit::decode(&[TAG_NEW_FILE, 0, 9], "m", 0).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = VersionEdit::decode(&bytes, "m", 0);
        }
    }
}

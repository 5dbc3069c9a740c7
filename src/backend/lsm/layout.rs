//! The LSM layout of a checkpoint: the bytes `LsmBackend` puts in the `extra` field of
//! `_metadata` (FORMAT.md §11.3) — column families, every SST the restored store consists of
//! (role, level, key range, sequences) and its range tombstones.
//!
//! Encoder and decoder sit side by side; the decoder never panics and checks every count against
//! the bytes left before it allocates. `_metadata`'s crc32 already covers these bytes.

use std::collections::HashSet;

use crate::codec::cursor::Cursor;
use crate::codec::varint::{put_varint32, put_varint64};
use crate::error::{Error, Result};
use crate::keys::{KeyGroupRange, key_group_of};
use crate::lsm::format::{compare_internal, parse_internal_key};
use crate::lsm::version::{FileMeta, NUM_LEVELS, RangeTombstone};

/// First bytes of the layout. On disk: never change; FORMAT.md §11.3.
pub const LAYOUT_MAGIC: [u8; 4] = *b"FLSM";
/// The layout version this code writes and the only one it reads. FORMAT.md §11.3.
pub const LAYOUT_VERSION: u8 = 1;

// Smallest encodings, used to bound counts before allocating (FORMAT.md §11.3).
const MIN_CF_LEN: usize = 2;
const MIN_FILE_LEN: usize = 31;
const MIN_TOMBSTONE_LEN: usize = 4;

/// What a file is to the checkpoint. On disk: never change; FORMAT.md §11.3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileRole {
    /// A file of the base version, restored at its level.
    Base,
    /// A flush output newer than the base, restored at L0.
    Delta,
}

impl FileRole {
    fn tag(self) -> u8 {
        match self {
            FileRole::Base => 0,
            FileRole::Delta => 1,
        }
    }
}

/// One SST of the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutFile {
    /// Index into [`CheckpointLayout::column_families`].
    pub cf: u32,
    /// Base or delta.
    pub role: FileRole,
    /// Level to restore it at (0 for deltas).
    pub level: u8,
    /// Index of the file in `_metadata`'s file list.
    pub file_index: u32,
    /// The file's metadata as the writing store had it (number, size, crc32, keys, sequences).
    pub meta: FileMeta,
}

/// One range tombstone of the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutTombstone {
    /// Index into [`CheckpointLayout::column_families`].
    pub cf: u32,
    /// The tombstone.
    pub tombstone: RangeTombstone,
}

/// The decoded `extra` of an LSM checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointLayout {
    /// Every write at or below this sequence is in the files, none above.
    pub sequence: u64,
    /// The sequence of the base version; deltas hold writes above it.
    pub base_sequence: u64,
    /// Random id of the backend instance that wrote the checkpoint (names its shared files).
    pub instance_id: u64,
    /// (state name, column family name), in state-id order.
    pub column_families: Vec<(String, String)>,
    /// Base files, then delta files.
    pub files: Vec<LayoutFile>,
    /// Range tombstones of the restored store.
    pub tombstones: Vec<LayoutTombstone>,
}

impl CheckpointLayout {
    /// The encoded layout (FORMAT.md §11.3).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = LAYOUT_MAGIC.to_vec();
        out.push(LAYOUT_VERSION);
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.base_sequence.to_le_bytes());
        out.extend_from_slice(&self.instance_id.to_le_bytes());
        put_varint32(&mut out, self.column_families.len() as u32);
        for (state, cf) in &self.column_families {
            put_bytes(&mut out, state.as_bytes());
            put_bytes(&mut out, cf.as_bytes());
        }
        put_varint32(&mut out, self.files.len() as u32);
        for f in &self.files {
            put_varint32(&mut out, f.cf);
            out.push(f.role.tag());
            out.push(f.level);
            put_varint32(&mut out, f.file_index);
            let m = &f.meta;
            put_varint64(&mut out, m.number);
            put_varint64(&mut out, m.size);
            out.extend_from_slice(&m.crc32.to_le_bytes());
            put_bytes(&mut out, &m.smallest);
            put_bytes(&mut out, &m.largest);
            put_varint64(&mut out, m.smallest_seq);
            put_varint64(&mut out, m.largest_seq);
            put_varint64(&mut out, m.entries);
            put_varint64(&mut out, m.created_ms);
        }
        put_varint32(&mut out, self.tombstones.len() as u32);
        for t in &self.tombstones {
            put_varint32(&mut out, t.cf);
            put_bytes(&mut out, &t.tombstone.start);
            put_bytes(&mut out, &t.tombstone.end);
            put_varint64(&mut out, t.tombstone.sequence);
        }
        out
    }

    /// Decodes a layout; `file` and `base` (the offset of `bytes` in it) locate errors.
    pub fn decode(bytes: &[u8], file: &str, base: u64) -> Result<Self> {
        let mut c = Cursor::new(bytes, file, base);
        if c.bytes(4, "layout magic")? != LAYOUT_MAGIC {
            return Err(Error::corruption(
                file,
                base,
                "extra is not an LSM checkpoint layout (bad magic)",
            ));
        }
        let at = c.offset();
        let version = c.u8("layout version")?;
        if version != LAYOUT_VERSION {
            return Err(Error::corruption(
                file,
                at,
                format!(
                    "unsupported LSM layout version {version} (this reader knows {LAYOUT_VERSION})"
                ),
            ));
        }
        let sequence = c.u64_le("sequence")?;
        let base_sequence = c.u64_le("base sequence")?;
        let instance_id = c.u64_le("instance id")?;
        if base_sequence > sequence {
            return Err(c.error(format!(
                "base sequence {base_sequence} is above the checkpoint's sequence {sequence}"
            )));
        }
        let cf_count = c.count(MIN_CF_LEN, "column family")?;
        let mut column_families = Vec::with_capacity(cf_count);
        // Hash sets, not a scan of the list: a crafted layout of a million names stays linear.
        let mut state_names = HashSet::with_capacity(cf_count);
        let mut cf_names = HashSet::with_capacity(cf_count);
        for _ in 0..cf_count {
            let at = c.offset();
            let state = c.string("state name")?;
            let cf = c.string("column family name")?;
            if state.is_empty() || cf.is_empty() {
                return Err(Error::corruption(
                    file,
                    at,
                    "empty state or column family name",
                ));
            }
            let new_state = state_names.insert(state.clone());
            let new_cf = cf_names.insert(cf.clone());
            if !new_state || !new_cf {
                return Err(Error::corruption(
                    file,
                    at,
                    format!("state '{state}' or column family '{cf}' listed twice"),
                ));
            }
            column_families.push((state, cf));
        }
        let file_count = c.count(MIN_FILE_LEN, "file")?;
        let mut files = Vec::with_capacity(file_count);
        for _ in 0..file_count {
            files.push(decode_file(&mut c, cf_count)?);
        }
        let tombstone_count = c.count(MIN_TOMBSTONE_LEN, "tombstone")?;
        let mut tombstones = Vec::with_capacity(tombstone_count);
        for _ in 0..tombstone_count {
            let at = c.offset();
            let cf = cf_index(&mut c, cf_count)?;
            let start = c.len_prefixed("tombstone start")?.to_vec();
            let end = c.len_prefixed("tombstone end")?.to_vec();
            let sequence = c.varint64()?;
            if start >= end {
                return Err(Error::corruption(file, at, "tombstone with start >= end"));
            }
            tombstones.push(LayoutTombstone {
                cf,
                tombstone: RangeTombstone {
                    start,
                    end,
                    sequence,
                },
            });
        }
        c.finish("the LSM layout")?;
        Ok(CheckpointLayout {
            sequence,
            base_sequence,
            instance_id,
            column_families,
            files,
            tombstones,
        })
    }
}

/// The key groups of a file's user-key range: those of its smallest through its largest user
/// key; `None` when a key is too short to have a key group or the two are out of order.
pub(crate) fn file_key_groups(meta: &FileMeta) -> Option<KeyGroupRange> {
    let first = key_group_of(meta.smallest_user_key())?;
    let last = key_group_of(meta.largest_user_key())?;
    KeyGroupRange::new(first, last).ok()
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

fn cf_index(c: &mut Cursor<'_>, cf_count: usize) -> Result<u32> {
    let at = c.offset();
    let cf = c.varint32()?;
    if cf as usize >= cf_count {
        return Err(Error::corruption(
            c.file(),
            at,
            format!("column family index {cf} >= {cf_count}"),
        ));
    }
    Ok(cf)
}

fn decode_file(c: &mut Cursor<'_>, cf_count: usize) -> Result<LayoutFile> {
    let at = c.offset();
    let cf = cf_index(c, cf_count)?;
    let role = match c.u8("file role")? {
        0 => FileRole::Base,
        1 => FileRole::Delta,
        other => return Err(c.error(format!("unknown file role {other}"))),
    };
    let level = c.u8("level")?;
    if usize::from(level) >= NUM_LEVELS || (role == FileRole::Delta && level != 0) {
        return Err(c.error(format!("level {level} is not valid for a {role:?} file")));
    }
    let file_index = c.varint32()?;
    let number = c.varint64()?;
    let size = c.varint64()?;
    let crc32 = c.u32_le("file crc32")?;
    let key_at = c.offset();
    let smallest = c.len_prefixed("smallest key")?.to_vec();
    let largest = c.len_prefixed("largest key")?.to_vec();
    let file = c.file();
    parse_internal_key(&smallest, file, key_at)?;
    parse_internal_key(&largest, file, key_at)?;
    if compare_internal(&smallest, &largest) == std::cmp::Ordering::Greater {
        return Err(Error::corruption(
            file,
            key_at,
            "smallest key > largest key",
        ));
    }
    let smallest_seq = c.varint64()?;
    let largest_seq = c.varint64()?;
    if smallest_seq > largest_seq {
        return Err(Error::corruption(
            file,
            at,
            "smallest sequence > largest sequence",
        ));
    }
    Ok(LayoutFile {
        cf,
        role,
        level,
        file_index,
        meta: FileMeta {
            number,
            size,
            crc32,
            smallest,
            largest,
            smallest_seq,
            largest_seq,
            entries: c.varint64()?,
            created_ms: c.varint64()?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::format::{ValueKind, internal_key};

    fn sample() -> CheckpointLayout {
        let meta = |n: u64, a: &[u8], b: &[u8]| FileMeta {
            number: n,
            size: 1000 + n,
            crc32: 0xdead_beef,
            smallest: internal_key(a, 3, ValueKind::Put),
            largest: internal_key(b, 9, ValueKind::Merge),
            smallest_seq: 3,
            largest_seq: 9,
            entries: 12,
            created_ms: 77,
        };
        CheckpointLayout {
            sequence: 40,
            base_sequence: 20,
            instance_id: 0x0123_4567_89ab_cdef,
            column_families: vec![
                ("a".into(), "state:a".into()),
                ("b".into(), "state:b".into()),
            ],
            files: vec![
                LayoutFile {
                    cf: 0,
                    role: FileRole::Base,
                    level: 3,
                    file_index: 0,
                    meta: meta(7, b"\0\x01k", b"\0\x05z"),
                },
                LayoutFile {
                    cf: 1,
                    role: FileRole::Delta,
                    level: 0,
                    file_index: 1,
                    meta: meta(9, b"\0\x02a", b"\0\x02b"),
                },
            ],
            tombstones: vec![LayoutTombstone {
                cf: 1,
                tombstone: RangeTombstone {
                    start: b"\0\x01".to_vec(),
                    end: b"\0\x02".to_vec(),
                    sequence: 33,
                },
            }],
        }
    }

    #[test]
    fn round_trips() {
        let layout = sample();
        let bytes = layout.encode();
        assert_eq!(CheckpointLayout::decode(&bytes, "x", 0).unwrap(), layout);
        let empty = CheckpointLayout::default();
        assert_eq!(
            CheckpointLayout::decode(&empty.encode(), "x", 0).unwrap(),
            empty
        );
    }

    #[test]
    fn every_truncation_and_bad_field_is_corruption() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            let err = CheckpointLayout::decode(&bytes[..len], "x", 100).unwrap_err();
            assert!(err.is_corruption(), "{len}: {err}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(CheckpointLayout::decode(&extra, "x", 0).is_err());
        let mut version = bytes.clone();
        version[4] = 2;
        assert!(CheckpointLayout::decode(&version, "x", 0).is_err());
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x5a;
            let _ = CheckpointLayout::decode(&flipped, "x", 0);
        }
    }

    /// A count far beyond the bytes behind it is corruption before anything is allocated for
    /// it: four billion column families, files or tombstones cannot size a `Vec`.
    #[test]
    fn a_huge_count_with_few_bytes_is_corruption() {
        // Each encoding ends in its three counts, one byte each (here 0); cut back to the
        // count under test.
        let cut = |layout: &CheckpointLayout, counts_left: usize| {
            let mut bytes = layout.encode();
            bytes.truncate(bytes.len() - counts_left);
            bytes
        };
        let one_cf = CheckpointLayout {
            column_families: vec![("s".into(), "state:s".into())],
            ..CheckpointLayout::default()
        };
        let cfs = cut(&CheckpointLayout::default(), 3);
        let files = cut(&one_cf, 2);
        let tombstones = cut(&one_cf, 1);
        for (what, mut bytes) in [
            ("column family", cfs),
            ("file", files),
            ("tombstone", tombstones),
        ] {
            put_varint32(&mut bytes, u32::MAX);
            bytes.extend_from_slice(&[1, b'a', 1, b'b', 0, 0, 0, 0]);
            let err = CheckpointLayout::decode(&bytes, "x", 0).unwrap_err();
            assert!(err.is_corruption(), "{what}: {err}");
            assert!(
                err.to_string()
                    .contains(&format!("{what} count {} cannot fit", u32::MAX)),
                "{what}: {err}"
            );
        }
    }

    /// A layout of `n` distinct column families, then `dup` (state, cf) appended.
    fn many_cfs(n: usize, dup: Option<(&str, &str)>) -> (Vec<u8>, usize) {
        let mut layout = CheckpointLayout {
            column_families: (0..n).map(|i| (format!("s{i}"), format!("c{i}"))).collect(),
            ..CheckpointLayout::default()
        };
        let at = layout.encode().len() - 2; // before the file and tombstone counts (0, 0)
        if let Some((s, c)) = dup {
            layout.column_families.push((s.into(), c.into()));
        }
        (layout.encode(), at)
    }

    #[test]
    fn many_column_families_decode_and_a_late_duplicate_is_found() {
        // 200 000 names (about 3 MB, well inside a 64 MiB `_metadata`): a pairwise check would
        // compare 2 * 10^10 pairs; the hash sets look each name up once.
        let n = 200_000;
        let (bytes, _) = many_cfs(n, None);
        let layout = CheckpointLayout::decode(&bytes, "x", 0).unwrap();
        assert_eq!(layout.column_families.len(), n);
        for dup in [("s0", "fresh"), ("fresh", "c0"), ("s199999", "c199999")] {
            let (bytes, at) = many_cfs(n, Some(dup));
            let err = CheckpointLayout::decode(&bytes, "x", 10).unwrap_err();
            assert!(err.to_string().contains("listed twice"), "{err}");
            match err {
                Error::Corruption { offset, .. } => {
                    // n and n + 1 both take 3 varint bytes: the entries do not move.
                    assert_eq!(offset, 10 + at as u64, "{dup:?}");
                }
                other => panic!("{other}"),
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let mut with_magic = LAYOUT_MAGIC.to_vec();
            with_magic.push(LAYOUT_VERSION);
            with_magic.extend_from_slice(&bytes);
            let _ = CheckpointLayout::decode(&with_magic, "x", 0);
            let _ = CheckpointLayout::decode(&bytes, "x", 0);
        }
    }
}

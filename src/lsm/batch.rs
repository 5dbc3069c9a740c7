//! `WriteBatch`: an ordered list of puts, deletes, range deletes and merges across column
//! families, applied atomically (one WAL record, consecutive sequence numbers).
//!
//! The batch keeps its encoded form (FORMAT.md §7.4) as its only representation, as LevelDB's
//! `WriteBatch::rep_` does: the WAL writes those bytes unchanged, and [`WriteBatch::decode`]
//! validates every count and length once, so iterating a batch never fails.

use crate::codec::record::MAX_RECORD_LEN;
use crate::codec::varint::{get_varint32, put_varint32};
use crate::error::{Error, Result};
use crate::lsm::db::ColumnFamily;
use crate::lsm::format::{MAX_SEQUENCE, ValueKind};

/// Bytes of the batch header: base sequence (u64 LE) then operation count (u32 LE).
pub const BATCH_HEADER_LEN: usize = 12;

/// Largest encoded batch (on disk: a batch is one WAL record; FORMAT.md §7.4).
pub const MAX_BATCH_LEN: usize = MAX_RECORD_LEN as usize;

/// Fewest bytes one operation takes: tag, a 1-byte cf varint, a 1-byte key-length varint.
const MIN_OP_LEN: usize = 3;

/// One operation of a batch, borrowing the batch's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchOp<'a> {
    /// Sets `key` to `value` in column family `cf`.
    Put {
        /// Column family.
        cf: u32,
        /// User key.
        key: &'a [u8],
        /// New value.
        value: &'a [u8],
    },
    /// Deletes `key` in column family `cf`.
    Delete {
        /// Column family.
        cf: u32,
        /// User key.
        key: &'a [u8],
    },
    /// Deletes every user key in `[start, end)` in column family `cf`.
    DeleteRange {
        /// Column family.
        cf: u32,
        /// First deleted key (inclusive).
        start: &'a [u8],
        /// End of the range (exclusive).
        end: &'a [u8],
    },
    /// Appends `operand` to `key`'s value through the column family's merge operator.
    Merge {
        /// Column family.
        cf: u32,
        /// User key.
        key: &'a [u8],
        /// Merge operand.
        operand: &'a [u8],
    },
}

impl<'a> BatchOp<'a> {
    /// The on-disk kind of this operation.
    pub fn kind(&self) -> ValueKind {
        match self {
            BatchOp::Put { .. } => ValueKind::Put,
            BatchOp::Delete { .. } => ValueKind::Delete,
            BatchOp::DeleteRange { .. } => ValueKind::RangeDelete,
            BatchOp::Merge { .. } => ValueKind::Merge,
        }
    }

    /// The column family the operation writes to.
    pub fn cf(&self) -> u32 {
        match *self {
            BatchOp::Put { cf, .. }
            | BatchOp::Delete { cf, .. }
            | BatchOp::DeleteRange { cf, .. }
            | BatchOp::Merge { cf, .. } => cf,
        }
    }

    /// The memtable form of the operation: (user key, value). For a range delete the key is the
    /// range start and the value its end; for a delete the value is empty.
    pub fn key_value(&self) -> (&'a [u8], &'a [u8]) {
        match *self {
            BatchOp::Put { key, value, .. } => (key, value),
            BatchOp::Delete { key, .. } => (key, &[]),
            BatchOp::DeleteRange { start, end, .. } => (start, end),
            BatchOp::Merge { key, operand, .. } => (key, operand),
        }
    }
}

/// Writes applied atomically: one WAL record, sequence numbers `base_sequence ..
/// base_sequence + count`, in the order they were added.
///
/// ```
/// use flowstate::lsm::{Db, Options, WriteBatch};
///
/// let dir = tempfile::tempdir()?;
/// let db = Db::open(dir.path(), Options::default())?;
/// let cf = db.default_cf();
/// let mut batch = WriteBatch::new();
/// batch.put(&cf, b"a", b"1")?;
/// batch.put(&cf, b"b", b"2")?;
/// batch.delete(&cf, b"a")?;
/// db.write(batch)?;
/// assert_eq!(db.get(&cf, b"a")?, None);
/// assert_eq!(db.get(&cf, b"b")?, Some(b"2".to_vec()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct WriteBatch {
    /// FORMAT.md §7.4: `base_sequence u64 LE | count u32 LE | ops`. Always valid.
    rep: Vec<u8>,
    /// The column families the operations name (a function of `rep`, kept so that checking
    /// them does not parse every operation again).
    cfs: CfSet,
}

/// Which column families a batch's operations name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CfSet {
    /// No operation.
    Empty,
    /// Every operation names this one.
    One(u32),
    /// Two or more.
    Several,
}

impl CfSet {
    /// The set after an operation on `cf` is added.
    fn with(self, cf: u32) -> CfSet {
        match self {
            CfSet::Empty => CfSet::One(cf),
            CfSet::One(one) if one == cf => self,
            _ => CfSet::Several,
        }
    }
}

impl Default for WriteBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for WriteBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBatch")
            .field("base_sequence", &self.base_sequence())
            .field("ops", &self.iter().map(|(_, op)| op).collect::<Vec<_>>())
            .finish()
    }
}

impl WriteBatch {
    /// An empty batch with base sequence 0.
    pub fn new() -> Self {
        WriteBatch {
            rep: vec![0; BATCH_HEADER_LEN],
            cfs: CfSet::Empty,
        }
    }

    /// An empty batch whose encoding has room for `bytes` bytes of operations without growing
    /// (an operation takes its key and value bytes plus at most 16).
    pub fn with_capacity(bytes: usize) -> Self {
        let mut rep = Vec::with_capacity(BATCH_HEADER_LEN.saturating_add(bytes));
        rep.resize(BATCH_HEADER_LEN, 0);
        WriteBatch {
            rep,
            cfs: CfSet::Empty,
        }
    }

    /// Adds a put of `key` = `value` in column family `cf`.
    pub fn put(&mut self, cf: &ColumnFamily, key: &[u8], value: &[u8]) -> Result<()> {
        self.put_id(cf.id(), key, value)
    }

    /// Adds a delete of `key` in column family `cf`.
    pub fn delete(&mut self, cf: &ColumnFamily, key: &[u8]) -> Result<()> {
        self.delete_id(cf.id(), key)
    }

    /// Adds a delete of every key in `[start, end)` in column family `cf`.
    pub fn delete_range(&mut self, cf: &ColumnFamily, start: &[u8], end: &[u8]) -> Result<()> {
        self.delete_range_id(cf.id(), start, end)
    }

    /// Adds a merge of `operand` into `key` in column family `cf`.
    pub fn merge(&mut self, cf: &ColumnFamily, key: &[u8], operand: &[u8]) -> Result<()> {
        self.merge_id(cf.id(), key, operand)
    }

    /// [`WriteBatch::put`] by column family id (any id: the batch format allows every `u32`).
    pub(crate) fn put_id(&mut self, cf: u32, key: &[u8], value: &[u8]) -> Result<()> {
        self.push(ValueKind::Put, cf, key, Some(value))
    }

    /// [`WriteBatch::delete`] by column family id.
    pub(crate) fn delete_id(&mut self, cf: u32, key: &[u8]) -> Result<()> {
        self.push(ValueKind::Delete, cf, key, None)
    }

    /// [`WriteBatch::delete_range`] by column family id.
    pub(crate) fn delete_range_id(&mut self, cf: u32, start: &[u8], end: &[u8]) -> Result<()> {
        self.push(ValueKind::RangeDelete, cf, start, Some(end))
    }

    /// [`WriteBatch::merge`] by column family id.
    pub(crate) fn merge_id(&mut self, cf: u32, key: &[u8], operand: &[u8]) -> Result<()> {
        self.push(ValueKind::Merge, cf, key, Some(operand))
    }

    /// Number of operations.
    pub fn count(&self) -> u32 {
        read_u32_at(&self.rep, 8)
    }

    /// True when the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Sequence number of the first operation.
    pub(crate) fn base_sequence(&self) -> u64 {
        read_u64_at(&self.rep, 0)
    }

    /// Sequence number of the last operation (`base_sequence` when the batch is empty).
    pub(crate) fn last_sequence(&self) -> u64 {
        self.base_sequence() + u64::from(self.count().saturating_sub(1))
    }

    /// Assigns sequence numbers `base .. base + count` to the operations (done at commit).
    pub(crate) fn set_base_sequence(&mut self, base: u64) -> Result<()> {
        if !sequences_fit(base, self.count()) {
            return Err(Error::limit_exceeded(format!(
                "sequence {base} + {} operations exceeds the largest sequence {MAX_SEQUENCE}",
                self.count()
            )));
        }
        self.rep[..8].copy_from_slice(&base.to_le_bytes());
        Ok(())
    }

    /// The encoded batch (FORMAT.md §7.4), the payload of its WAL record.
    pub(crate) fn encoded(&self) -> &[u8] {
        &self.rep
    }

    /// Removes every operation and resets the base sequence to 0.
    pub fn clear(&mut self) {
        self.rep.clear();
        self.rep.resize(BATCH_HEADER_LEN, 0);
        self.cfs = CfSet::Empty;
    }

    /// The first column family id among the operations' for which `pred` holds, each distinct
    /// id tried at least once; without parsing the operations when they all name one.
    pub(crate) fn find_cf(&self, mut pred: impl FnMut(u32) -> bool) -> Option<u32> {
        match self.cfs {
            CfSet::Empty => None,
            CfSet::One(cf) => pred(cf).then_some(cf),
            CfSet::Several => self.iter().map(|(_, op)| op.cf()).find(|&cf| pred(cf)),
        }
    }

    /// The operations in order, each with its sequence number.
    pub(crate) fn iter(&self) -> BatchIter<'_> {
        BatchIter {
            rest: self.rep.get(BATCH_HEADER_LEN..).unwrap_or_default(),
            sequence: self.base_sequence(),
            remaining: self.count(),
        }
    }

    /// Validates `bytes` as an encoded batch; `file` and `offset` (of `bytes[0]` in the file)
    /// label a corruption error.
    pub(crate) fn decode(bytes: &[u8], file: &str, offset: u64) -> Result<WriteBatch> {
        let corrupt = |at: usize, what: String| Error::corruption(file, offset + at as u64, what);
        if bytes.len() < BATCH_HEADER_LEN {
            return Err(corrupt(
                0,
                format!(
                    "write batch of {} bytes is shorter than its header",
                    bytes.len()
                ),
            ));
        }
        if bytes.len() > MAX_BATCH_LEN {
            return Err(corrupt(0, format!("write batch of {} bytes", bytes.len())));
        }
        let base = read_u64_at(bytes, 0);
        let count = read_u32_at(bytes, 8);
        let body = bytes.len() - BATCH_HEADER_LEN;
        if count as usize > body / MIN_OP_LEN {
            return Err(corrupt(
                8,
                format!("write batch count {count} does not fit in {body} bytes"),
            ));
        }
        if !sequences_fit(base, count) {
            return Err(corrupt(
                0,
                format!("write batch sequences {base} + {count} exceed {MAX_SEQUENCE}"),
            ));
        }
        let mut pos = BATCH_HEADER_LEN;
        let mut cfs = CfSet::Empty;
        for _ in 0..count {
            let (op, used) = parse_op(bytes, pos, file, offset)?;
            cfs = cfs.with(op.cf());
            pos += used;
        }
        if pos != bytes.len() {
            return Err(corrupt(
                pos,
                format!("{} bytes after the last operation", bytes.len() - pos),
            ));
        }
        Ok(WriteBatch {
            rep: bytes.to_vec(),
            cfs,
        })
    }

    fn push(&mut self, kind: ValueKind, cf: u32, key: &[u8], second: Option<&[u8]>) -> Result<()> {
        let count = self.count();
        let key_len = u32::try_from(key.len()).ok();
        let second_len = second.map(|s| u32::try_from(s.len()).ok());
        let added = 1 + 5 + 5 + key.len() + second.map_or(0, |s| 5 + s.len());
        if count == u32::MAX
            || key_len.is_none()
            || second_len == Some(None)
            || self.rep.len().saturating_add(added) > MAX_BATCH_LEN
        {
            return Err(Error::limit_exceeded(format!(
                "write batch would exceed {MAX_BATCH_LEN} bytes or {} operations",
                u32::MAX
            )));
        }
        if !sequences_fit(self.base_sequence(), count + 1) {
            return Err(Error::limit_exceeded(
                "write batch sequences exceed the largest",
            ));
        }
        // One reservation for the whole operation, not a growth step per field.
        self.rep.reserve(added);
        self.rep.push(kind as u8);
        put_varint32(&mut self.rep, cf);
        put_slice(&mut self.rep, key);
        if let Some(second) = second {
            put_slice(&mut self.rep, second);
        }
        self.rep[8..BATCH_HEADER_LEN].copy_from_slice(&(count + 1).to_le_bytes());
        self.cfs = self.cfs.with(cf);
        Ok(())
    }
}

/// Iterator over a batch's operations with their sequence numbers.
pub struct BatchIter<'a> {
    rest: &'a [u8],
    sequence: u64,
    remaining: u32,
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = (u64, BatchOp<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        // The rep was built by `push` or validated by `decode`, so parsing cannot fail.
        match parse_op(self.rest, 0, "write batch", 0) {
            Ok((op, used)) => {
                self.rest = self.rest.get(used..).unwrap_or_default();
                let item = (self.sequence, op);
                self.sequence += 1;
                self.remaining -= 1;
                Some(item)
            }
            Err(e) => {
                debug_assert!(false, "a validated write batch failed to parse: {e}");
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining as usize))
    }
}

/// Whether sequences `base .. base + count` all fit in 56 bits.
fn sequences_fit(base: u64, count: u32) -> bool {
    base <= MAX_SEQUENCE && MAX_SEQUENCE - base >= u64::from(count.saturating_sub(1))
}

fn put_slice(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

fn read_u64_at(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes)
}

fn read_u32_at(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes)
}

/// Parses the operation at `bytes[pos..]`; returns it and the bytes it takes.
fn parse_op<'a>(
    bytes: &'a [u8],
    pos: usize,
    file: &str,
    offset: u64,
) -> Result<(BatchOp<'a>, usize)> {
    let at = |p: usize| offset + p as u64;
    let tag = *bytes
        .get(pos)
        .ok_or_else(|| Error::corruption(file, at(pos), "write batch ends before an operation"))?;
    let kind = ValueKind::from_tag(tag).ok_or_else(|| {
        Error::corruption(file, at(pos), format!("unknown write batch tag {tag}"))
    })?;
    let mut p = pos + 1;
    let (cf, used) = get_varint32(bytes.get(p..).unwrap_or_default(), file, at(p))?;
    p += used;
    let key = get_slice(bytes, &mut p, file, offset)?;
    let op = match kind {
        ValueKind::Delete => BatchOp::Delete { cf, key },
        ValueKind::Put => BatchOp::Put {
            cf,
            key,
            value: get_slice(bytes, &mut p, file, offset)?,
        },
        ValueKind::Merge => BatchOp::Merge {
            cf,
            key,
            operand: get_slice(bytes, &mut p, file, offset)?,
        },
        ValueKind::RangeDelete => BatchOp::DeleteRange {
            cf,
            start: key,
            end: get_slice(bytes, &mut p, file, offset)?,
        },
    };
    Ok((op, p - pos))
}

/// Reads `varint len | bytes` at `*pos`, checking `len` against the bytes left.
fn get_slice<'a>(bytes: &'a [u8], pos: &mut usize, file: &str, offset: u64) -> Result<&'a [u8]> {
    let start = *pos;
    let (len, used) = get_varint32(
        bytes.get(start..).unwrap_or_default(),
        file,
        offset + start as u64,
    )?;
    let from = start + used;
    let slice = bytes
        .get(from..)
        .and_then(|rest| rest.get(..len as usize))
        .ok_or_else(|| {
            Error::corruption(
                file,
                offset + start as u64,
                format!("length {len} runs past the end of the write batch"),
            )
        })?;
    *pos = from + len as usize;
    Ok(slice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An owned operation, the model the tests compare against.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Op {
        Put(u32, Vec<u8>, Vec<u8>),
        Delete(u32, Vec<u8>),
        DeleteRange(u32, Vec<u8>, Vec<u8>),
        Merge(u32, Vec<u8>, Vec<u8>),
    }

    fn owned(op: BatchOp<'_>) -> Op {
        match op {
            BatchOp::Put { cf, key, value } => Op::Put(cf, key.to_vec(), value.to_vec()),
            BatchOp::Delete { cf, key } => Op::Delete(cf, key.to_vec()),
            BatchOp::DeleteRange { cf, start, end } => {
                Op::DeleteRange(cf, start.to_vec(), end.to_vec())
            }
            BatchOp::Merge { cf, key, operand } => Op::Merge(cf, key.to_vec(), operand.to_vec()),
        }
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..200)
    }

    fn op() -> impl Strategy<Value = Op> {
        let cf = prop_oneof![0u32..4, any::<u32>()];
        prop_oneof![
            (cf.clone(), bytes(), bytes()).prop_map(|(c, k, v)| Op::Put(c, k, v)),
            (cf.clone(), bytes()).prop_map(|(c, k)| Op::Delete(c, k)),
            (cf.clone(), bytes(), bytes()).prop_map(|(c, k, v)| Op::DeleteRange(c, k, v)),
            (cf, bytes(), bytes()).prop_map(|(c, k, v)| Op::Merge(c, k, v)),
        ]
    }

    fn build(ops: &[Op], base: u64) -> WriteBatch {
        let mut b = WriteBatch::new();
        for op in ops {
            match op {
                Op::Put(c, k, v) => b.put_id(*c, k, v),
                Op::Delete(c, k) => b.delete_id(*c, k),
                Op::DeleteRange(c, s, e) => b.delete_range_id(*c, s, e),
                Op::Merge(c, k, v) => b.merge_id(*c, k, v),
            }
            .unwrap();
        }
        b.set_base_sequence(base).unwrap();
        b
    }

    #[test]
    fn known_encoding() {
        let mut b = WriteBatch::new();
        b.put_id(1, b"k", b"vv").unwrap();
        b.delete_id(300, b"").unwrap();
        b.set_base_sequence(7).unwrap();
        let mut expected = vec![7, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0];
        expected.extend_from_slice(&[1, 1, 1, b'k', 2, b'v', b'v']);
        expected.extend_from_slice(&[0, 0xac, 0x02, 0]);
        assert_eq!(b.encoded(), expected.as_slice());
        assert_eq!(b.last_sequence(), 8);
    }

    #[test]
    fn a_presized_batch_encodes_like_a_grown_one_without_growing() {
        let ops: Vec<(u32, Vec<u8>, Vec<u8>)> = (0..100u32)
            .map(|i| {
                (
                    i % 3,
                    i.to_be_bytes().to_vec(),
                    vec![i as u8; (i * 7 % 300) as usize],
                )
            })
            .collect();
        let bytes = ops.iter().map(|(_, k, v)| k.len() + v.len() + 16).sum();
        let (mut grown, mut sized) = (WriteBatch::new(), WriteBatch::with_capacity(bytes));
        let capacity = sized.rep.capacity();
        for (cf, k, v) in &ops {
            grown.put_id(*cf, k, v).unwrap();
            sized.put_id(*cf, k, v).unwrap();
        }
        assert_eq!(sized.encoded(), grown.encoded());
        assert_eq!(sized.rep.capacity(), capacity, "the presized batch grew");
    }

    #[test]
    fn huge_count_is_rejected_before_allocating() {
        let mut bytes = vec![0u8; BATCH_HEADER_LEN];
        bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = WriteBatch::decode(&bytes, "wal", 100).unwrap_err();
        assert!(
            matches!(err, Error::Corruption { offset: 108, .. }),
            "{err}"
        );
    }

    #[test]
    fn sequences_past_the_maximum_are_rejected() {
        let mut b = WriteBatch::new();
        b.put_id(0, b"a", b"").unwrap();
        b.put_id(0, b"b", b"").unwrap();
        assert!(b.set_base_sequence(MAX_SEQUENCE).is_err());
        assert!(b.set_base_sequence(MAX_SEQUENCE - 1).is_ok());
        let mut raw = b.encoded().to_vec();
        raw[..8].copy_from_slice(&MAX_SEQUENCE.to_le_bytes());
        assert!(WriteBatch::decode(&raw, "wal", 0).is_err());
    }

    #[test]
    fn trailing_bytes_and_bad_tags_are_corruption() {
        let b = build(&[Op::Put(0, b"k".to_vec(), b"v".to_vec())], 1);
        let mut extra = b.encoded().to_vec();
        extra.push(0);
        assert!(
            WriteBatch::decode(&extra, "f", 0)
                .unwrap_err()
                .is_corruption()
        );
        let mut bad_tag = b.encoded().to_vec();
        bad_tag[BATCH_HEADER_LEN] = 9;
        let err = WriteBatch::decode(&bad_tag, "f", 50).unwrap_err();
        assert!(matches!(err, Error::Corruption { offset: 62, .. }), "{err}");
    }

    proptest! {
        #[test]
        fn round_trip(ops in proptest::collection::vec(op(), 0..12), base in 0..MAX_SEQUENCE - 100) {
            let batch = build(&ops, base);
            prop_assert_eq!(batch.count() as usize, ops.len());
            let decoded = WriteBatch::decode(batch.encoded(), "t", 0).unwrap();
            prop_assert_eq!(&decoded, &batch);
            let got: Vec<(u64, Op)> = decoded.iter().map(|(s, op)| (s, owned(op))).collect();
            let want: Vec<(u64, Op)> = ops.into_iter().enumerate().map(|(i, op)| (base + i as u64, op)).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn find_cf_gives_the_first_matching_id_of_the_operations(
            ops in proptest::collection::vec(op(), 0..8),
            wanted in proptest::collection::btree_set(0u32..4, 0..3),
        ) {
            let built = build(&ops, 1);
            let decoded = WriteBatch::decode(built.encoded(), "t", 0).unwrap();
            let first = ops.iter().map(|op| match op {
                Op::Put(c, ..) | Op::Delete(c, _) | Op::DeleteRange(c, ..) | Op::Merge(c, ..) => *c,
            }).find(|c| wanted.contains(c));
            prop_assert_eq!(built.find_cf(|c| wanted.contains(&c)), first);
            prop_assert_eq!(decoded.find_cf(|c| wanted.contains(&c)), first);
            let mut cleared = built.clone();
            cleared.clear();
            prop_assert_eq!(cleared.find_cf(|_| true), None);
            prop_assert_eq!(cleared, WriteBatch::new());
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(b) = WriteBatch::decode(&bytes, "t", 0) {
                prop_assert_eq!(b.iter().count(), b.count() as usize);
            }
        }

        #[test]
        fn mutated_batches_never_panic(ops in proptest::collection::vec(op(), 1..4),
                                       at in any::<prop::sample::Index>(), byte in any::<u8>(),
                                       cut in any::<prop::sample::Index>()) {
            let mut raw = build(&ops, 3).encoded().to_vec();
            let i = at.index(raw.len());
            raw[i] = byte;
            raw.truncate(cut.index(raw.len() + 1));
            if let Ok(b) = WriteBatch::decode(&raw, "t", 0) {
                prop_assert_eq!(b.iter().count(), b.count() as usize);
            }
        }
    }
}

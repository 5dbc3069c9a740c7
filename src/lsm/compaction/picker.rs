//! The compaction picker: a pure function of a column family's version (no I/O), so it can be
//! simulated and tested on its own.
//!
//! Leveled compaction: L0 is compacted into L1 when it holds `level0_file_trigger` sorted runs
//! (flushes: the files of one flush count once, `version::l0_runs`); a level
//! n >= 1 is compacted into n+1 when its bytes exceed `max_bytes_for_level_base *
//! level_size_multiplier^(n-1)`. Within a level, the file whose overlap with the next level is
//! smallest relative to its own size is chosen (RocksDB's min-overlapping-ratio), which keeps
//! write amplification — and the bytes an incremental checkpoint must upload — low.

use std::sync::Arc;

use crate::lsm::format::compare_internal;
use crate::lsm::version::{CfVersion, FileMeta, NUM_LEVELS};

/// Sizes that drive leveled compaction.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactionOptions {
    /// Number of L0 sorted runs that triggers an L0 → L1 compaction (default 4). A run is one
    /// flush: its files (cut at `target_file_size`) count once (`version::l0_runs`).
    pub level0_file_trigger: usize,
    /// Target size of L1 in bytes (default 64 MiB).
    pub max_bytes_for_level_base: u64,
    /// Each level below L1 targets this many times the bytes of the one above (default 10).
    pub level_size_multiplier: u64,
    /// Compaction and flush output files are cut at about this size (default 16 MiB).
    pub target_file_size: u64,
    /// Compaction and flush output files are cut only between user keys whose first
    /// `cut_prefix_len` bytes differ, so that no such prefix spans two files of the store
    /// (RocksDB's fixed-prefix SST partitioner, except that a file holds a run of prefixes up to
    /// the target size); a file may then exceed `target_file_size` by what one prefix holds.
    /// Default 0: cut anywhere between user keys. The LSM backend sets 2 (the key group,
    /// FORMAT.md §2.2).
    pub cut_prefix_len: usize,
}

impl Default for CompactionOptions {
    fn default() -> Self {
        CompactionOptions {
            level0_file_trigger: 4,
            max_bytes_for_level_base: 64 << 20,
            level_size_multiplier: 10,
            target_file_size: 16 << 20,
            cut_prefix_len: 0,
        }
    }
}

impl CompactionOptions {
    /// Target bytes of `level` (>= 1).
    pub fn level_target(&self, level: usize) -> u64 {
        let mut target = self.max_bytes_for_level_base.max(1);
        for _ in 1..level {
            target = target.saturating_mul(self.level_size_multiplier.max(2));
        }
        target
    }
}

/// Why a compaction runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactionReason {
    /// L0 reached its file trigger.
    Level0Files,
    /// A level exceeded its target size.
    LevelSize,
    /// Requested with `compact_range`.
    #[cfg(test)]
    Manual,
    /// A file of a TTL state was not compacted for longer than the periodic-compaction period.
    Periodic,
}

/// One compaction: `inputs` of `level` merged with the overlapping `next_inputs` of
/// `output_level`, written as new files of `output_level`.
#[derive(Clone, Debug)]
pub struct CompactionTask {
    /// Column family id.
    pub cf: u32,
    /// Level of `inputs`.
    pub level: usize,
    /// Level the outputs go to.
    pub output_level: usize,
    /// Files of `level`.
    pub inputs: Vec<Arc<FileMeta>>,
    /// Files of `output_level` overlapping `inputs`.
    pub next_inputs: Vec<Arc<FileMeta>>,
    /// No level below `output_level` holds keys in the task's range: tombstones and merge
    /// operands without a base can be resolved for good.
    pub bottommost: bool,
    /// Why.
    #[cfg_attr(not(test), expect(dead_code, reason = "the picker's tests assert it"))]
    pub reason: CompactionReason,
}

impl CompactionTask {}

/// The compaction `cf` needs most, if any level is over its target.
pub fn pick(cf_id: u32, cf: &CfVersion, options: &CompactionOptions) -> Option<CompactionTask> {
    let mut best: Option<(f64, usize)> = None;
    let l0_score = cf.l0_runs() as f64 / options.level0_file_trigger.max(1) as f64;
    if l0_score >= 1.0 {
        best = Some((l0_score, 0));
    }
    for level in 1..NUM_LEVELS - 1 {
        let score = cf.level_bytes(level) as f64 / options.level_target(level) as f64;
        if score >= 1.0 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, level));
        }
    }
    let (_, level) = best?;
    if level == 0 {
        let inputs = cf.levels[0].clone();
        return Some(task(cf_id, cf, 0, inputs, CompactionReason::Level0Files));
    }
    let file = cf.levels[level]
        .iter()
        .min_by(|a, b| {
            let ra = overlap_bytes(cf, level + 1, a) as f64 / a.size.max(1) as f64;
            let rb = overlap_bytes(cf, level + 1, b) as f64 / b.size.max(1) as f64;
            ra.total_cmp(&rb).then(a.number.cmp(&b.number))
        })?
        .clone();
    Some(task(
        cf_id,
        cf,
        level,
        vec![file],
        CompactionReason::LevelSize,
    ))
}

/// A manual compaction of every file overlapping `[start, end]` at `level` into `level + 1`
/// (or within the last level), or `None` when the level has no such file.
#[cfg(test)]
pub fn pick_range(
    cf_id: u32,
    cf: &CfVersion,
    level: usize,
    start: Option<&[u8]>,
    end: Option<&[u8]>,
) -> Option<CompactionTask> {
    let mut inputs: Vec<Arc<FileMeta>> = cf
        .levels
        .get(level)?
        .iter()
        .filter(|f| f.overlaps(start, end))
        .cloned()
        .collect();
    if inputs.is_empty() {
        return None;
    }
    if level == 0 {
        // L0 files overlap each other: take every L0 file overlapping the chosen ones, so an
        // older version never lands below a newer one.
        inputs = cf.levels[0].clone();
    }
    Some(task(cf_id, cf, level, inputs, CompactionReason::Manual))
}

/// A compaction of the single file `number` at `level` (periodic compaction).
pub fn pick_file(cf_id: u32, cf: &CfVersion, level: usize, number: u64) -> Option<CompactionTask> {
    let file = cf
        .levels
        .get(level)?
        .iter()
        .find(|f| f.number == number)?
        .clone();
    let inputs = if level == 0 {
        cf.levels[0].clone()
    } else {
        vec![file]
    };
    Some(task(cf_id, cf, level, inputs, CompactionReason::Periodic))
}

fn task(
    cf_id: u32,
    cf: &CfVersion,
    level: usize,
    inputs: Vec<Arc<FileMeta>>,
    reason: CompactionReason,
) -> CompactionTask {
    let output_level = (level + 1).min(NUM_LEVELS - 1);
    let (start, end) = key_range(&inputs);
    let next_inputs: Vec<Arc<FileMeta>> = if output_level == level {
        Vec::new()
    } else {
        cf.levels[output_level]
            .iter()
            .filter(|f| f.overlaps(Some(start.as_slice()), Some(end.as_slice())))
            .cloned()
            .collect()
    };
    let (start, end) = key_range(
        inputs
            .iter()
            .chain(next_inputs.iter())
            .cloned()
            .collect::<Vec<_>>()
            .as_slice(),
    );
    let bottommost = cf
        .levels
        .iter()
        .skip(output_level + 1)
        .flatten()
        .all(|f| !f.overlaps(Some(start.as_slice()), Some(end.as_slice())));
    CompactionTask {
        cf: cf_id,
        level,
        output_level,
        inputs,
        next_inputs,
        bottommost,
        reason,
    }
}

/// Smallest and largest user key over `files` (which must not be empty for a meaningful range).
fn key_range(files: &[Arc<FileMeta>]) -> (Vec<u8>, Vec<u8>) {
    let smallest = files
        .iter()
        .map(|f| f.smallest.as_slice())
        .min_by(|a, b| compare_internal(a, b))
        .unwrap_or_default();
    let largest = files
        .iter()
        .map(|f| f.largest.as_slice())
        .max_by(|a, b| compare_internal(a, b))
        .unwrap_or_default();
    (
        crate::lsm::format::user_key(smallest).to_vec(),
        crate::lsm::format::user_key(largest).to_vec(),
    )
}

fn overlap_bytes(cf: &CfVersion, level: usize, file: &FileMeta) -> u64 {
    cf.levels.get(level).map_or(0, |files| {
        files
            .iter()
            .filter(|f| {
                f.overlaps(
                    Some(file.smallest_user_key()),
                    Some(file.largest_user_key()),
                )
            })
            .map(|f| f.size)
            .sum()
    })
}

impl CompactionOptions {
    option_setters! { CompactionOptions {
        level0_file_trigger: usize,
        max_bytes_for_level_base: u64,
        level_size_multiplier: u64,
        target_file_size: u64,
        cut_prefix_len: usize,
    }}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::format::{ValueKind, internal_key};

    fn file(number: u64, a: &[u8], b: &[u8], size: u64) -> Arc<FileMeta> {
        Arc::new(FileMeta {
            number,
            size,
            crc32: 0,
            smallest: internal_key(a, number, ValueKind::Put),
            largest: internal_key(b, number, ValueKind::Put),
            smallest_seq: number,
            largest_seq: number,
            entries: 1,
            // Each file its own flush (a flush's files share their creation time).
            created_ms: number,
        })
    }

    fn small_options() -> CompactionOptions {
        CompactionOptions {
            level0_file_trigger: 2,
            max_bytes_for_level_base: 100,
            level_size_multiplier: 10,
            target_file_size: 50,
            cut_prefix_len: 0,
        }
    }

    #[test]
    fn nothing_to_do_below_targets() {
        let mut cf = CfVersion::default();
        cf.levels[0].push(file(1, b"a", b"z", 10));
        assert!(pick(0, &cf, &small_options()).is_none());
    }

    #[test]
    fn l0_trigger_takes_all_l0_and_overlapping_l1() {
        let mut cf = CfVersion::default();
        cf.levels[0] = vec![file(5, b"c", b"d", 10), file(4, b"a", b"b", 10)];
        cf.levels[1] = vec![file(1, b"a", b"a", 10), file(2, b"e", b"f", 10)];
        cf.levels[2] = vec![file(3, b"x", b"y", 10)];
        let t = pick(0, &cf, &small_options()).unwrap();
        assert_eq!(
            (t.level, t.output_level, t.reason),
            (0, 1, CompactionReason::Level0Files)
        );
        assert_eq!(t.inputs.len(), 2);
        assert_eq!(
            t.next_inputs.iter().map(|f| f.number).collect::<Vec<_>>(),
            vec![1]
        );
        assert!(t.bottommost, "L2 holds only x..y, outside a..d");
    }

    #[test]
    fn l0_trigger_counts_the_files_of_one_flush_once() {
        let flushed = |number: u64, a: &[u8], b: &[u8], created_ms: u64| {
            let mut f = (*file(number, a, b, 10)).clone();
            f.created_ms = created_ms;
            Arc::new(f)
        };
        let mut cf = CfVersion::default();
        // One flush cut into three files (disjoint, one creation time).
        cf.levels[0] = vec![
            flushed(3, b"e", b"f", 7),
            flushed(2, b"c", b"d", 7),
            flushed(1, b"a", b"b", 7),
        ];
        assert_eq!(cf.l0_runs(), 1);
        assert!(pick(0, &cf, &small_options()).is_none());
        // A second flush overlapping the first: two runs reach the trigger of 2.
        cf.levels[0].insert(0, flushed(4, b"a", b"z", 8));
        assert_eq!(cf.l0_runs(), 2);
        let t = pick(0, &cf, &small_options()).unwrap();
        assert_eq!(t.inputs.len(), 4);
        // Overlapping files of one creation time are still different runs.
        cf.levels[0] = vec![flushed(6, b"a", b"c", 9), flushed(5, b"b", b"d", 9)];
        assert_eq!(cf.l0_runs(), 2);
    }

    #[test]
    fn level_size_picks_min_overlap_file() {
        let mut cf = CfVersion::default();
        cf.levels[1] = vec![file(1, b"a", b"c", 60), file(2, b"m", b"o", 60)];
        cf.levels[2] = vec![file(3, b"a", b"b", 500), file(4, b"n", b"n", 5)];
        cf.levels[3] = vec![file(9, b"n", b"n", 5)];
        let t = pick(0, &cf, &small_options()).unwrap();
        assert_eq!((t.level, t.inputs[0].number), (1, 2));
        assert_eq!(t.next_inputs[0].number, 4);
        assert!(!t.bottommost, "L3 overlaps n");
    }

    #[test]
    fn manual_range_and_periodic() {
        let mut cf = CfVersion::default();
        cf.levels[6] = vec![file(1, b"a", b"c", 60), file(2, b"m", b"o", 60)];
        let t = pick_range(0, &cf, 6, Some(b"n"), None).unwrap();
        assert_eq!((t.output_level, t.inputs.len(), t.bottommost), (6, 1, true));
        assert!(pick_range(0, &cf, 6, Some(b"x"), None).is_none());
        let p = pick_file(0, &cf, 6, 1).unwrap();
        assert_eq!(
            (p.inputs[0].number, p.reason),
            (1, CompactionReason::Periodic)
        );
    }
}

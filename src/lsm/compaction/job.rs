//! The compaction job: reads the merged input of a compaction and writes new SSTs at the output
//! level, keeping of each user key only what some reader (a live snapshot or the latest
//! sequence) can still see: merge operands are folded, range-deleted versions and obsolete
//! tombstones dropped, and the compaction filter applied. Invariant (model-tested): [`resolve`]
//! at every live snapshot and at the latest sequence returns the same before and after the job.
//!
//! [`resolve`]: crate::lsm::merge::resolve

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::fs::FileSystem;
use crate::lsm::compaction::output::{CutRule, OutputFiles};
use crate::lsm::format::{ValueKind, internal_key, parse_internal_key};
use crate::lsm::iterator::InternalIterator;
use crate::lsm::merge::{CompactionFilter, FilterDecision, MergeOperator};
use crate::lsm::sst::{SstMetadata, SstOptions};
use crate::lsm::version::RangeTombstone;

/// What one compaction job needs besides its input.
#[derive(Clone, Copy, Debug)]
pub struct JobParams<'a> {
    /// The file system output files are written to.
    pub fs: &'a dyn FileSystem,
    /// Output level.
    pub level: usize,
    /// No older data for the input's keys exists below the output level.
    pub bottommost: bool,
    /// Sequences of the live snapshots, ascending.
    pub snapshots: &'a [u64],
    /// Range tombstones of the column family (from the version).
    pub tombstones: &'a [RangeTombstone],
    /// The column family's merge operator, if it has one.
    pub merge_operator: Option<&'a dyn MergeOperator>,
    /// The column family's compaction filter, if it has one.
    pub filter: Option<&'a dyn CompactionFilter>,
    /// How the output files are written.
    pub sst_options: &'a SstOptions,
    /// Output files are cut once they reach about this many bytes (never inside a user key).
    pub target_file_size: u64,
    /// A full output file is cut only before a user key whose first `cut_prefix_len` bytes
    /// differ from the previous key's: no such prefix spans two output files (0: any key).
    pub cut_prefix_len: usize,
    /// Creation time recorded in the output files (ms since the Unix epoch).
    pub now_ms: u64,
}

/// What a finished job wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobOutput {
    /// Output files (file number, metadata), in key order; empty if nothing survived.
    pub files: Vec<(u64, SstMetadata)>,
    /// Bytes of all output files.
    pub bytes_written: u64,
    /// Entries read from the input.
    pub entries_in: u64,
    /// Entries written to the outputs.
    pub entries_out: u64,
    /// `entries_in - entries_out`: versions dropped or folded into others.
    pub entries_dropped: u64,
}

/// Reads `input` (already merged, sorted by `compare_internal`; positioned by `seek_to_first`
/// here) and writes output SSTs; `new_file` hands out (file number, path) for each output file.
///
/// Range tombstone entries (`ValueKind::RangeDelete`) are not expected in the input (they live
/// in the version) and are rejected. On error every file this job created is deleted.
pub fn run(
    input: &mut dyn InternalIterator,
    params: &JobParams<'_>,
    new_file: &mut dyn FnMut() -> Result<(u64, PathBuf)>,
) -> Result<JobOutput> {
    let mut snapshots = params.snapshots.to_vec();
    snapshots.sort_unstable();
    snapshots.dedup();
    let rule = CutRule {
        target_file_size: params.target_file_size,
        cut_prefix_len: params.cut_prefix_len,
    };
    let mut outputs = Outputs {
        files: OutputFiles::new(
            params.fs,
            *params.sst_options,
            params.now_ms,
            rule,
            new_file,
        ),
    };
    let result = compact(input, params, &snapshots, &mut outputs)
        .and_then(|entries_in| Ok((entries_in, outputs.files.finish()?)));
    match result {
        Ok((entries_in, files)) => {
            let entries_out = outputs.files.entries();
            Ok(JobOutput {
                bytes_written: files.iter().map(|(_, m)| m.file_size).sum(),
                files,
                entries_in,
                entries_out,
                entries_dropped: entries_in.saturating_sub(entries_out),
            })
        }
        Err(e) => {
            outputs.files.remove_created();
            Err(e)
        }
    }
}

/// Label of corruption errors found in the (already merged) input.
const INPUT_LABEL: &str = "compaction input";

/// Stripe of versions no live snapshot sees: only the latest reader does.
const LATEST: u64 = u64::MAX;

/// One version of the user key being compacted.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    sequence: u64,
    kind: ValueKind,
    value: Vec<u8>,
}

/// The versions of one user key that the same reader sees first: those whose smallest live
/// snapshot at or above their sequence is `snapshot` (or [`LATEST`]). Entries newest first.
#[derive(Debug)]
struct Stripe {
    snapshot: u64,
    entries: Vec<Entry>,
}

/// Reads the input one user key at a time and hands each key's versions to the outputs.
/// Returns the number of entries read.
fn compact(
    input: &mut dyn InternalIterator,
    params: &JobParams<'_>,
    snapshots: &[u64],
    outputs: &mut Outputs<'_>,
) -> Result<u64> {
    input.seek_to_first()?;
    let mut entries_in = 0u64;
    let mut key: Vec<u8> = Vec::new();
    let mut versions: Vec<Entry> = Vec::new();
    while input.valid() {
        let parsed = parse_internal_key(input.key(), INPUT_LABEL, 0)?;
        if parsed.kind == ValueKind::RangeDelete {
            return Err(Error::invalid(
                "compaction input holds a range tombstone entry; range tombstones live in the version",
            ));
        }
        let same_key = !versions.is_empty() && parsed.user_key == key.as_slice();
        let in_order = match versions.last() {
            None => true,
            Some(last) if same_key => parsed.sequence < last.sequence,
            Some(_) => parsed.user_key > key.as_slice(),
        };
        if !in_order {
            return Err(Error::corruption(
                INPUT_LABEL,
                0,
                format!("entry {entries_in} is out of internal key order"),
            ));
        }
        if !same_key {
            if !versions.is_empty() {
                let stripes =
                    compact_user_key(&key, std::mem::take(&mut versions), params, snapshots);
                outputs.write_user_key(&key, &stripes)?;
            }
            key.clear();
            key.extend_from_slice(parsed.user_key);
        }
        versions.push(Entry {
            sequence: parsed.sequence,
            kind: parsed.kind,
            value: input.value().to_vec(),
        });
        entries_in += 1;
        input.next()?;
    }
    if !versions.is_empty() {
        let stripes = compact_user_key(&key, versions, params, snapshots);
        outputs.write_user_key(&key, &stripes)?;
    }
    Ok(entries_in)
}

/// The smallest live snapshot at or above `sequence`, or `u64::MAX` (only the latest reader):
/// the first reader to see a version of that sequence. `snapshots` is ascending.
pub(crate) fn stripe_of(snapshots: &[u64], sequence: u64) -> u64 {
    let i = snapshots.partition_point(|&s| s < sequence);
    snapshots.get(i).copied().unwrap_or(LATEST)
}

/// What survives of one user key's `versions` (newest first), as stripes newest first.
fn compact_user_key(
    key: &[u8],
    versions: Vec<Entry>,
    params: &JobParams<'_>,
    snapshots: &[u64],
) -> Vec<Stripe> {
    let covering: Vec<u64> = params
        .tombstones
        .iter()
        .filter(|t| t.start.as_slice() <= key && key < t.end.as_slice())
        .map(|t| t.sequence)
        .collect();
    let mut stripes: Vec<Stripe> = Vec::new();
    for version in versions {
        let snapshot = stripe_of(snapshots, version.sequence);
        // Every reader that can see the version (at or above its stripe) also sees a tombstone
        // deleting it: no live snapshot lies between the version and the tombstone.
        if covering
            .iter()
            .any(|&t| version.sequence < t && t <= snapshot)
        {
            continue;
        }
        match stripes.last_mut() {
            Some(stripe) if stripe.snapshot == snapshot => stripe.entries.push(version),
            _ => stripes.push(Stripe {
                snapshot,
                entries: vec![version],
            }),
        }
    }
    let merge = params.merge_operator;
    for stripe in &mut stripes {
        fold_stripe(key, &mut stripe.entries, merge);
    }
    if params.bottommost {
        trim_bottom(key, &mut stripes, merge);
    }
    apply_filter(key, &mut stripes, params);
    if let Some(op) = merge {
        for stripe in &mut stripes {
            partial_merge_stripe(key, &mut stripe.entries, op);
        }
    }
    stripes
}

/// Keeps of one stripe what its reader sees: nothing below the newest Put or Delete, and merge
/// operands above it folded into one Put (kept as they are without a merge operator).
fn fold_stripe(key: &[u8], entries: &mut Vec<Entry>, merge: Option<&dyn MergeOperator>) {
    let Some(end) = entries.iter().position(|e| e.kind != ValueKind::Merge) else {
        return;
    };
    entries.truncate(end + 1);
    let (Some(op), Some((terminal, operands))) = (merge, entries.split_last()) else {
        return;
    };
    let Some(newest) = operands.first() else {
        return;
    };
    let base = (terminal.kind == ValueKind::Put).then_some(terminal.value.as_slice());
    let oldest_first: Vec<&[u8]> = operands.iter().rev().map(|e| e.value.as_slice()).collect();
    let folded = Entry {
        sequence: newest.sequence,
        kind: ValueKind::Put,
        value: op.full_merge(key, base, &oldest_first),
    };
    *entries = vec![folded];
}

/// At the bottommost level: drops Deletes with nothing older left to hide, and turns merge
/// operands with nothing older into a Put (as a reader finds them: merged onto nothing).
fn trim_bottom(key: &[u8], stripes: &mut Vec<Stripe>, merge: Option<&dyn MergeOperator>) {
    while let Some(last) = stripes.last_mut() {
        if last.entries.last().map(|e| e.kind) != Some(ValueKind::Delete) {
            break;
        }
        last.entries.pop();
        if last.entries.is_empty() {
            stripes.pop();
        }
    }
    let (Some(op), Some(last)) = (merge, stripes.last_mut()) else {
        return;
    };
    if last.entries.iter().any(|e| e.kind != ValueKind::Merge) {
        return;
    }
    let Some(newest) = last.entries.first() else {
        return;
    };
    let oldest_first: Vec<&[u8]> = last
        .entries
        .iter()
        .rev()
        .map(|e| e.value.as_slice())
        .collect();
    let folded = Entry {
        sequence: newest.sequence,
        kind: ValueKind::Put,
        value: op.full_merge(key, None, &oldest_first),
    };
    last.entries = vec![folded];
}

/// Runs the compaction filter on the key's newest value if only the latest reader sees it. A
/// removed value becomes a Delete of the same sequence (older versions stay hidden), which the
/// bottommost level then drops if nothing older is left.
fn apply_filter(key: &[u8], stripes: &mut Vec<Stripe>, params: &JobParams<'_>) {
    let Some(filter) = params.filter else {
        return;
    };
    let Some(newest) = stripes.first_mut() else {
        return;
    };
    if newest.snapshot != LATEST {
        return;
    }
    let Some(entry) = newest.entries.first_mut() else {
        return;
    };
    if entry.kind != ValueKind::Put {
        return;
    }
    match filter.filter(params.level, key, &entry.value) {
        FilterDecision::Keep => {}
        FilterDecision::Change(value) => entry.value = value,
        FilterDecision::Remove => {
            entry.kind = ValueKind::Delete;
            entry.value.clear();
            newest.entries.truncate(1);
            if params.bottommost {
                trim_bottom(key, stripes, None);
            }
        }
    }
}

/// Combines a stripe made only of merge operands into one operand, if the operator can.
fn partial_merge_stripe(key: &[u8], entries: &mut Vec<Entry>, op: &dyn MergeOperator) {
    if entries.len() < 2 || entries.iter().any(|e| e.kind != ValueKind::Merge) {
        return;
    }
    let Some(newest) = entries.first() else {
        return;
    };
    let oldest_first: Vec<&[u8]> = entries.iter().rev().map(|e| e.value.as_slice()).collect();
    if let Some(value) = op.partial_merge(key, &oldest_first) {
        let combined = Entry {
            sequence: newest.sequence,
            kind: ValueKind::Merge,
            value,
        };
        *entries = vec![combined];
    }
}

/// The job's output files (cut by [`CutRule`]) and the entries written to them.
struct Outputs<'a> {
    files: OutputFiles<'a>,
}

impl Outputs<'_> {
    /// Writes what survived of `key`.
    fn write_user_key(&mut self, key: &[u8], stripes: &[Stripe]) -> Result<()> {
        for entry in stripes.iter().flat_map(|s| &s.entries) {
            self.files
                .add(&internal_key(key, entry.sequence, entry.kind), &entry.value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "job_tests.rs"]
mod tests;

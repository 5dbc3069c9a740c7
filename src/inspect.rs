//! Read-only inventory of checkpoint storage (`flowstate inspect`): per completed checkpoint its
//! time, backend, states, full size and the bytes new since the previous completed checkpoint;
//! how many completed checkpoints reference each file; and the file-level diff of two checkpoints.
//!
//! Sizes come from `_metadata` (files are not opened: checking them is `flowstate verify`'s job),
//! and only reading methods of [`CheckpointStorage`] are called: inspecting never changes anything.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use crate::backend::{BackendKind, FileRef};
use crate::error::{Error, Result};

use super::verify::{FileProblem, problem};
use crate::checkpoint::metadata::CheckpointMetadata;
use crate::checkpoint::registry::read_metadata;
use crate::checkpoint::storage::{CheckpointStorage, checkpoint_ids, metadata_path};

/// What `_metadata` says about one completed checkpoint, and what it adds to the previous one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointSummary {
    /// The `<id>` of the `chk-<id>` directory.
    pub checkpoint_id: u64,
    /// When it was taken, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The backend that wrote it.
    pub backend: BackendKind,
    /// Names of its states, in state-id order.
    pub states: Vec<String>,
    /// Number of files it references.
    pub file_count: usize,
    /// Sum of the sizes of every file it references.
    pub full_bytes: u64,
    /// Number of its files that the previous completed checkpoint does not reference.
    pub new_file_count: usize,
    /// Sum of the sizes of those files: what this checkpoint wrote to storage (the first
    /// completed checkpoint counts every file as new).
    pub new_bytes: u64,
}

/// One `chk-<id>` directory as inspection found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InspectedCheckpoint {
    /// `_metadata` decodes.
    Completed(CheckpointSummary),
    /// No `_metadata`: never completed (restore never uses it).
    Incomplete {
        /// The checkpoint id.
        checkpoint_id: u64,
    },
    /// `_metadata` is in place but cannot be read or decoded.
    Damaged {
        /// The checkpoint id.
        checkpoint_id: u64,
        /// Which file, where, and what is wrong.
        problem: FileProblem,
    },
}

/// A file referenced by at least one completed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileUsage {
    /// Path relative to the storage root.
    pub path: String,
    /// Size in bytes, as `_metadata` lists it.
    pub size: u64,
    /// True for files under `shared/`.
    pub shared: bool,
    /// The completed checkpoints that reference it, ascending; its reference count is the length.
    pub checkpoints: Vec<u64>,
}

/// Everything inspection found in one checkpoint storage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Every `chk-<id>` directory, ascending id.
    pub checkpoints: Vec<InspectedCheckpoint>,
    /// Every file a completed checkpoint references, by path.
    pub files: Vec<FileUsage>,
}

/// Inspects every `chk-<id>` directory under the storage root. An error is returned only when
/// the storage cannot be listed; a damaged `_metadata` is reported in the result.
pub fn inspect_storage(storage: &dyn CheckpointStorage) -> Result<Inventory> {
    let ids = checkpoint_ids(storage)?;
    let mut inventory = Inventory::default();
    let mut files: BTreeMap<String, FileUsage> = BTreeMap::new();
    let mut previous: HashSet<String> = HashSet::new();
    for checkpoint_id in ids {
        let metadata = match load(storage, checkpoint_id) {
            Ok(Some(metadata)) => metadata,
            Ok(None) => {
                inventory
                    .checkpoints
                    .push(InspectedCheckpoint::Incomplete { checkpoint_id });
                continue;
            }
            Err(e) => {
                let problem = problem(&metadata_path(checkpoint_id), e);
                inventory.checkpoints.push(InspectedCheckpoint::Damaged {
                    checkpoint_id,
                    problem,
                });
                continue;
            }
        };
        let mut summary = CheckpointSummary {
            checkpoint_id,
            timestamp_ms: metadata.timestamp_ms,
            backend: metadata.backend,
            states: metadata.states.iter().map(|s| s.name.clone()).collect(),
            file_count: metadata.files.len(),
            full_bytes: 0,
            new_file_count: 0,
            new_bytes: 0,
        };
        for entry in &metadata.files {
            let file = &entry.file;
            summary.full_bytes = summary.full_bytes.saturating_add(file.size);
            if !previous.contains(&file.path) {
                summary.new_file_count += 1;
                summary.new_bytes = summary.new_bytes.saturating_add(file.size);
            }
            files
                .entry(file.path.clone())
                .or_insert_with(|| FileUsage {
                    path: file.path.clone(),
                    size: file.size,
                    shared: entry.shared,
                    checkpoints: Vec::new(),
                })
                .checkpoints
                .push(checkpoint_id);
        }
        previous = metadata.files.into_iter().map(|f| f.file.path).collect();
        inventory
            .checkpoints
            .push(InspectedCheckpoint::Completed(summary));
    }
    inventory.files = files.into_values().collect();
    Ok(inventory)
}

/// `Ok(None)` when checkpoint `checkpoint_id` has no `_metadata` (incomplete).
fn load(storage: &dyn CheckpointStorage, checkpoint_id: u64) -> Result<Option<CheckpointMetadata>> {
    if !storage.exists(&metadata_path(checkpoint_id))? {
        return Ok(None);
    }
    read_metadata(storage, checkpoint_id).map(Some)
}

impl Inventory {
    /// The summaries of the completed checkpoints, ascending id.
    pub fn completed(&self) -> impl Iterator<Item = &CheckpointSummary> {
        self.checkpoints.iter().filter_map(|c| match c {
            InspectedCheckpoint::Completed(summary) => Some(summary),
            _ => None,
        })
    }

    /// True when no `_metadata` is damaged (incomplete checkpoints do not count).
    pub fn is_sound(&self) -> bool {
        !self
            .checkpoints
            .iter()
            .any(|c| matches!(c, InspectedCheckpoint::Damaged { .. }))
    }

    /// The listing `flowstate inspect` prints: one line per checkpoint, a totals line, then the
    /// files grouped by reference count (`every_file`: one line per file instead).
    pub fn render(&self, every_file: bool) -> String {
        let mut out = String::new();
        let (mut incomplete, mut damaged) = (0, 0);
        for checkpoint in &self.checkpoints {
            match checkpoint {
                InspectedCheckpoint::Completed(s) => {
                    let _ = writeln!(
                        out,
                        "chk-{:<5} {}  {:<3}  full {:>10}  new {:>10}  {:>5} files ({} new)  states: {}",
                        s.checkpoint_id,
                        utc_time(s.timestamp_ms),
                        s.backend.to_string(),
                        format_bytes(s.full_bytes),
                        format_bytes(s.new_bytes),
                        s.file_count,
                        s.new_file_count,
                        s.states.join(","),
                    );
                }
                InspectedCheckpoint::Incomplete { checkpoint_id } => {
                    incomplete += 1;
                    let _ = writeln!(
                        out,
                        "chk-{checkpoint_id:<5} INCOMPLETE  no _metadata (never completed; not used by restore)"
                    );
                }
                InspectedCheckpoint::Damaged {
                    checkpoint_id,
                    problem,
                } => {
                    damaged += 1;
                    let _ = writeln!(out, "chk-{checkpoint_id:<5} DAMAGED  {problem}");
                }
            }
        }
        let total: u64 = self
            .files
            .iter()
            .fold(0, |sum, f| sum.saturating_add(f.size));
        let _ = writeln!(
            out,
            "{} completed, {incomplete} incomplete, {damaged} damaged; {} distinct files, {} referenced",
            self.completed().count(),
            self.files.len(),
            format_bytes(total)
        );
        if self.files.is_empty() {
            return out;
        }
        if every_file {
            let _ = writeln!(out, "\n{:>4}  {:>10}  path  (checkpoints)", "refs", "size");
            for f in &self.files {
                let ids: Vec<String> = f.checkpoints.iter().map(u64::to_string).collect();
                let _ = writeln!(
                    out,
                    "{:>4}  {:>10}  {}  ({})",
                    f.checkpoints.len(),
                    format_bytes(f.size),
                    f.path,
                    ids.join(",")
                );
            }
            return out;
        }
        // refs -> (shared files, their bytes, owned files, their bytes)
        let mut by_refs: BTreeMap<usize, (usize, u64, usize, u64)> = BTreeMap::new();
        for f in &self.files {
            let row = by_refs.entry(f.checkpoints.len()).or_default();
            if f.shared {
                row.0 += 1;
                row.1 = row.1.saturating_add(f.size);
            } else {
                row.2 += 1;
                row.3 = row.3.saturating_add(f.size);
            }
        }
        let _ = writeln!(
            out,
            "\nfiles by reference count (completed checkpoints referencing them; --files lists each):"
        );
        let _ = writeln!(
            out,
            "{:>4}  {:>12}  {:>10}  {:>12}  {:>10}",
            "refs", "shared files", "bytes", "owned files", "bytes"
        );
        for (refs, (shared, shared_bytes, owned, owned_bytes)) in by_refs.iter().rev() {
            let _ = writeln!(
                out,
                "{refs:>4}  {shared:>12}  {:>10}  {owned:>12}  {:>10}",
                format_bytes(*shared_bytes),
                format_bytes(*owned_bytes)
            );
        }
        out
    }
}

/// The files of two completed checkpoints, split by where they are referenced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointDiff {
    /// The first checkpoint (`A`).
    pub from: u64,
    /// The second checkpoint (`B`).
    pub to: u64,
    /// Files only `A` references, by path.
    pub only_in_from: Vec<FileRef>,
    /// Files only `B` references, by path.
    pub only_in_to: Vec<FileRef>,
    /// Files both reference (same path), by path.
    pub in_both: Vec<FileRef>,
}

/// Compares the files of completed checkpoints `from` and `to`. A checkpoint without `_metadata`
/// is [`Error::NotFound`]; a damaged one is the read error (corruption names the file).
pub fn diff_checkpoints(
    storage: &dyn CheckpointStorage,
    from: u64,
    to: u64,
) -> Result<CheckpointDiff> {
    let read = |id: u64| -> Result<Vec<FileRef>> {
        let metadata = load(storage, id)?.ok_or_else(|| {
            Error::not_found(format!(
                "chk-{id} is not a completed checkpoint (no _metadata)"
            ))
        })?;
        let mut files: Vec<FileRef> = metadata.files.into_iter().map(|f| f.file).collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    };
    let a = read(from)?;
    let b = read(to)?;
    let a_paths: HashSet<&str> = a.iter().map(|f| f.path.as_str()).collect();
    let b_paths: HashSet<&str> = b.iter().map(|f| f.path.as_str()).collect();
    let only_in_to = b
        .iter()
        .filter(|f| !a_paths.contains(f.path.as_str()))
        .cloned()
        .collect();
    let (in_both, only_in_from) = a
        .into_iter()
        .partition(|f| b_paths.contains(f.path.as_str()));
    Ok(CheckpointDiff {
        from,
        to,
        only_in_from,
        only_in_to,
        in_both,
    })
}

/// Sum of the listed sizes of `files`.
pub fn total_bytes(files: &[FileRef]) -> u64 {
    files.iter().fold(0, |sum, f| sum.saturating_add(f.size))
}

impl CheckpointDiff {
    /// The listing `flowstate inspect --diff A B` prints: three sections of `size path` lines,
    /// each headed by its file count and byte total.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let sections = [
            (format!("only in chk-{}", self.from), &self.only_in_from),
            (format!("only in chk-{}", self.to), &self.only_in_to),
            ("shared".to_string(), &self.in_both),
        ];
        for (title, files) in sections {
            let _ = writeln!(
                out,
                "{title}: {} files, {} ({} bytes)",
                files.len(),
                format_bytes(total_bytes(files)),
                total_bytes(files)
            );
            for f in files {
                let _ = writeln!(out, "  {:>10}  {}", format_bytes(f.size), f.path);
            }
        }
        out
    }
}

/// `flowstate inspect <dir> [--diff A B] [--files]`: prints the listing (or the diff) to stdout,
/// errors to stderr, and returns the exit status: 0, 1 when the directory cannot be read or a
/// `_metadata` is damaged, 2 on usage errors (not a directory, `--diff` without two ids or
/// naming a checkpoint that has no `_metadata`).
pub fn inspect_command(
    storage: &dyn CheckpointStorage,
    diff: Option<&[u64]>,
    every_file: bool,
) -> u8 {
    match diff {
        None => match inspect_storage(storage) {
            Ok(inventory) => {
                print!("{}", inventory.render(every_file));
                if inventory.is_sound() {
                    0
                } else {
                    eprintln!("error: damaged _metadata (see DAMAGED lines)");
                    1
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
        Some(&[from, to]) => match diff_checkpoints(storage, from, to) {
            Ok(diff) => {
                print!("{}", diff.render());
                0
            }
            Err(Error::NotFound(what)) => {
                eprintln!("error: {what}");
                2
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
        Some(_) => {
            eprintln!("error: --diff takes two checkpoint ids");
            2
        }
    }
}

/// `1536` -> `1.5 KiB`.
fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match UNITS.get(unit) {
        Some(name) if unit > 0 => format!("{value:.1} {name}"),
        _ => format!("{bytes} B"),
    }
}

/// `timestamp_ms` as `YYYY-MM-DD HH:MM:SS.mmm UTC` (proleptic Gregorian calendar).
pub fn utc_time(timestamp_ms: u64) -> String {
    let secs = timestamp_ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        timestamp_ms % 1000
    )
}

/// Year, month, day of `days` since 1970-01-01 (Howard Hinnant's `civil_from_days`, for
/// non-negative day counts; every u64 ms timestamp fits in i128 arithmetic).
fn civil_from_days(days: u64) -> (i128, u32, u32) {
    let z = i128::from(days) + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i128::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
#[path = "inspect_tests.rs"]
mod tests;

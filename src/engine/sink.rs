//! The two-phase file sink: output is invisible until the checkpoint that covers it completes.
//!
//! Per task and epoch the sink writes `.part-<task>-<after>.inprogress` (after = the barrier
//! that opened the epoch). On barrier n it flushes, fsyncs and renames the file to
//! `.part-<task>-<n>.pending` and fsyncs the directory (pre-commit); when checkpoint n completes it
//! renames every pending file of epoch <= n to `part-<task>-<epoch>` (commit). On restore from
//! checkpoint c, [`reconcile`] commits pending files of epochs <= c and deletes every other
//! hidden part file, so committed output is exactly the output of completed checkpoints.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::failure::{FailurePoint, FailureSchedule};
use crate::error::{Error, Result};
use crate::fs::{FileSystem, FsRef, IoWriter, commit_temp, create_dir_durable, sync_dir};

/// Sub-directory of the output directory for rejected lines.
pub const REJECTED_DIR: &str = "rejected";

/// Output of one batch of records: result lines and rejected lines, each `\n`-terminated.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SinkBatch {
    /// `key,count,sum` lines.
    pub lines: Vec<u8>,
    /// `line_number,original_line` lines for the side output.
    pub rejected: Vec<u8>,
}

/// Control messages from the coordinator to a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkControl {
    /// Checkpoint n completed: commit pending epochs <= n.
    Complete(u64),
}

/// The committed name of epoch `epoch` of task `task`.
pub fn committed_name(task: u16, epoch: u64) -> String {
    format!("part-{task}-{epoch}")
}

fn pending_name(task: u16, epoch: u64) -> String {
    format!(".part-{task}-{epoch}.pending")
}

/// `(task, epoch)` of a pending file name.
fn parse_pending(name: &str) -> Option<(u16, u64)> {
    let body = name.strip_prefix(".part-")?.strip_suffix(".pending")?;
    let (task, epoch) = body.split_once('-')?;
    Some((task.parse().ok()?, epoch.parse().ok()?))
}

/// One output directory's open epoch file.
struct EpochWriter {
    fs: FsRef,
    dir: PathBuf,
    /// The open file, its writer and the bytes written to it.
    open: Option<(PathBuf, BufWriter<IoWriter>, u64)>,
}

impl std::fmt::Debug for EpochWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochWriter")
            .field("dir", &self.dir)
            .field("open", &self.open.as_ref().map(|(path, _, n)| (path, n)))
            .finish()
    }
}

impl EpochWriter {
    fn write(&mut self, task: u16, after: u64, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.open.is_none() {
            let path = self.dir.join(format!(".part-{task}-{after}.inprogress"));
            let file = self.fs.create(&path).map_err(|e| Error::io(&path, e))?;
            self.open = Some((path, BufWriter::with_capacity(1 << 16, IoWriter(file)), 0));
        }
        if let Some((path, writer, written)) = self.open.as_mut() {
            writer.write_all(bytes).map_err(|e| Error::io(&*path, e))?;
            *written += bytes.len() as u64;
        }
        Ok(())
    }

    /// Closes the epoch: durable under its pending name. Returns the pending path and size.
    fn pre_commit(&mut self, task: u16, epoch: u64) -> Result<Option<(PathBuf, u64)>> {
        let Some((path, writer, size)) = self.open.take() else {
            return Ok(None);
        };
        let file = writer
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        let pending = self.dir.join(pending_name(task, epoch));
        commit_temp(self.fs.as_ref(), file.0, &path, &pending)?;
        Ok(Some((pending, size)))
    }
}

/// The sink of one task.
#[derive(Debug)]
pub struct TwoPhaseFileSink {
    task: u16,
    /// The barrier that opened the current epoch.
    after: u64,
    main: EpochWriter,
    rejected: EpochWriter,
    /// Pre-committed files: (epoch, pending path, committed path).
    pending: Vec<(u64, PathBuf, PathBuf)>,
}

impl TwoPhaseFileSink {
    /// The sink of task `task` writing into `dir` (and `dir/rejected`) on `fs`, resuming after
    /// checkpoint `restored` (0 for a fresh start). Call [`reconcile`] before.
    pub fn open(fs: &FsRef, dir: &Path, task: u16, restored: u64) -> Result<Self> {
        let rejected = dir.join(REJECTED_DIR);
        create_dir_durable(fs.as_ref(), &rejected)?;
        Ok(TwoPhaseFileSink {
            task,
            after: restored,
            main: EpochWriter {
                fs: fs.clone(),
                dir: dir.to_path_buf(),
                open: None,
            },
            rejected: EpochWriter {
                fs: fs.clone(),
                dir: rejected,
                open: None,
            },
            pending: Vec::new(),
        })
    }

    /// Appends a batch to the current epoch.
    pub fn write(&mut self, batch: &SinkBatch) -> Result<()> {
        self.main.write(self.task, self.after, &batch.lines)?;
        self.rejected.write(self.task, self.after, &batch.rejected)
    }

    /// Barrier `epoch` passed: make the epoch's output durable under pending names. Returns
    /// the bytes pre-committed.
    pub fn pre_commit(&mut self, epoch: u64, failures: &FailureSchedule) -> Result<u64> {
        let mut bytes = 0;
        for writer in [&mut self.main, &mut self.rejected] {
            if let Some((pending, size)) = writer.pre_commit(self.task, epoch)? {
                let dir = writer.dir.clone();
                self.pending
                    .push((epoch, pending, dir.join(committed_name(self.task, epoch))));
                bytes += size;
            }
        }
        self.after = epoch;
        failures.check(FailurePoint::SinkPreCommit)?;
        Ok(bytes)
    }

    /// Checkpoint `checkpoint_id` completed: make every pending epoch <= it visible.
    pub fn commit(&mut self, checkpoint_id: u64, failures: &FailureSchedule) -> Result<()> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut kept = Vec::new();
        for (epoch, pending, committed) in std::mem::take(&mut self.pending) {
            if epoch > checkpoint_id {
                kept.push((epoch, pending, committed));
                continue;
            }
            self.main
                .fs
                .rename(&pending, &committed)
                .map_err(|e| Error::io(&committed, e))?;
            failures.check(FailurePoint::SinkCommit)?;
            if let Some(dir) = committed.parent()
                && !dirs.iter().any(|d| d == dir)
            {
                dirs.push(dir.to_path_buf());
            }
        }
        self.pending = kept;
        for dir in dirs {
            sync_dir(self.main.fs.as_ref(), &dir)?;
        }
        Ok(())
    }
}

/// What [`reconcile`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Pending files committed.
    pub committed: usize,
    /// Hidden part files deleted.
    pub discarded: usize,
}

/// Brings `dir` (and `dir/rejected`) in line with completed checkpoint `completed` (0: none):
/// pending epochs <= `completed` are committed, every other hidden part file is deleted.
/// Idempotent, so a crash during it is repaired by running it again.
pub fn reconcile(fs: &dyn FileSystem, dir: &Path, completed: u64) -> Result<Reconciled> {
    let mut report = Reconciled::default();
    for dir in [dir.to_path_buf(), dir.join(REJECTED_DIR)] {
        let entries = match fs.read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let mut changed = false;
        for entry in entries {
            let name = entry.name.as_str();
            if entry.is_dir || !name.starts_with(".part-") {
                continue;
            }
            let path = dir.join(name);
            match parse_pending(name) {
                Some((task, epoch)) if epoch <= completed => {
                    let target = dir.join(committed_name(task, epoch));
                    fs.rename(&path, &target)
                        .map_err(|e| Error::io(&target, e))?;
                    report.committed += 1;
                }
                _ => {
                    fs.remove_file(&path).map_err(|e| Error::io(&path, e))?;
                    report.discarded += 1;
                }
            }
            changed = true;
        }
        if changed {
            sync_dir(fs, &dir)?;
        }
    }
    Ok(report)
}

/// `(task, epoch)` of a committed file name `part-<task>-<epoch>`.
fn parse_committed(name: &str) -> Option<(u16, u64)> {
    let (task, epoch) = name.strip_prefix("part-")?.split_once('-')?;
    Some((task.parse().ok()?, epoch.parse().ok()?))
}

/// Committed part files of `dir` and `dir/rejected` of epochs above `checkpoint`: output that
/// only a checkpoint newer than `checkpoint` can have committed. `(epoch, path)`, sorted.
pub fn committed_beyond(
    fs: &dyn FileSystem,
    dir: &Path,
    checkpoint: u64,
) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for dir in [dir.to_path_buf(), dir.join(REJECTED_DIR)] {
        for path in committed_files(fs, &dir)? {
            let epoch = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_committed)
                .map(|(_, epoch)| epoch);
            if let Some(epoch) = epoch.filter(|e| *e > checkpoint) {
                out.push((epoch, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The directory (under `dir`) that committed output beyond checkpoint `checkpoint` is moved
/// to when the job resumes from that older checkpoint on request: `.superseded-after-<c>`, or
/// `.superseded-after-<c>.<n>` when that exists already. Hidden, so readers skip it.
fn superseded_dir(fs: &dyn FileSystem, dir: &Path, checkpoint: u64) -> Result<PathBuf> {
    let base = format!(".superseded-after-{checkpoint}");
    let mut candidate = dir.join(&base);
    let mut n = 0;
    while fs
        .exists(&candidate)
        .map_err(|e| Error::io(&candidate, e))?
    {
        n += 1;
        candidate = dir.join(format!("{base}.{n}"));
    }
    Ok(candidate)
}

/// Moves `files` (from [`committed_beyond`] for `checkpoint`) out of the committed output of
/// `dir` into a new superseded directory (`superseded_dir`; side output into its `rejected/`),
/// durably; returns that directory.
pub fn move_aside(
    fs: &dyn FileSystem,
    dir: &Path,
    checkpoint: u64,
    files: &[(u64, PathBuf)],
) -> Result<PathBuf> {
    let target = superseded_dir(fs, dir, checkpoint)?;
    let rejected = dir.join(REJECTED_DIR);
    let mut touched: Vec<PathBuf> = Vec::new();
    for (_, path) in files {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            continue;
        };
        let to_dir = if parent == rejected {
            target.join(REJECTED_DIR)
        } else {
            target.clone()
        };
        create_dir_durable(fs, &to_dir)?;
        let to = to_dir.join(name);
        fs.rename(path, &to).map_err(|e| Error::io(path, e))?;
        for d in [parent.to_path_buf(), to_dir] {
            if !touched.contains(&d) {
                touched.push(d);
            }
        }
    }
    if !touched.is_empty() {
        touched.push(dir.to_path_buf());
    }
    for d in touched {
        sync_dir(fs, &d)?;
    }
    Ok(target)
}

/// Paths of the committed part files of `dir`, sorted.
pub fn committed_files(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs.read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out: Vec<PathBuf> = entries
        .into_iter()
        .filter(|e| !e.is_dir && e.name.starts_with("part-"))
        .map(|e| dir.join(e.name))
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{StdFs, std_fs};
    use std::fs;

    fn names(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }

    fn batch(lines: &str) -> SinkBatch {
        SinkBatch {
            lines: lines.as_bytes().to_vec(),
            rejected: Vec::new(),
        }
    }

    #[test]
    fn pre_commit_hides_commit_shows() {
        let dir = tempfile::tempdir().unwrap();
        let none = FailureSchedule::none();
        let mut sink = TwoPhaseFileSink::open(&std_fs(), dir.path(), 0, 0).unwrap();
        sink.write(&batch("a,1,1\n")).unwrap();
        assert_eq!(names(dir.path()), [".part-0-0.inprogress"]);
        assert_eq!(sink.pre_commit(1, &none).unwrap(), 6);
        sink.write(&batch("a,2,3\n")).unwrap();
        sink.pre_commit(2, &none).unwrap();
        sink.pre_commit(3, &none).unwrap(); // empty epoch: no file
        assert_eq!(
            names(dir.path()),
            [".part-0-1.pending", ".part-0-2.pending"]
        );
        sink.commit(1, &none).unwrap();
        assert_eq!(names(dir.path()), [".part-0-2.pending", "part-0-1"]);
        sink.commit(3, &none).unwrap();
        assert_eq!(names(dir.path()), ["part-0-1", "part-0-2"]);
        assert_eq!(
            fs::read_to_string(dir.path().join("part-0-2")).unwrap(),
            "a,2,3\n"
        );
    }

    #[test]
    fn reconcile_commits_completed_and_discards_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let none = FailureSchedule::none();
        let mut sink = TwoPhaseFileSink::open(&std_fs(), dir.path(), 3, 0).unwrap();
        for epoch in 1..=3 {
            sink.write(&SinkBatch {
                lines: format!("k,{epoch},0\n").into_bytes(),
                rejected: format!("{epoch},bad\n").into_bytes(),
            })
            .unwrap();
            sink.pre_commit(epoch, &none).unwrap();
        }
        sink.write(&batch("k,4,0\n")).unwrap(); // in progress at the crash
        drop(sink);
        // Checkpoint 2 completed but the crash came before the commit; 3 never completed.
        let report = reconcile(&StdFs, dir.path(), 2).unwrap();
        assert_eq!(
            report,
            Reconciled {
                committed: 4,
                discarded: 3
            }
        );
        assert_eq!(names(dir.path()), ["part-3-1", "part-3-2"]);
        assert_eq!(
            names(&dir.path().join(REJECTED_DIR)),
            ["part-3-1", "part-3-2"]
        );
        assert_eq!(
            reconcile(&StdFs, dir.path(), 2).unwrap(),
            Reconciled::default()
        );
    }

    #[test]
    fn failed_commit_is_finished_by_reconcile() {
        let dir = tempfile::tempdir().unwrap();
        let fail = FailureSchedule::new(vec![(FailurePoint::SinkCommit, 1)]);
        let mut sink = TwoPhaseFileSink::open(&std_fs(), dir.path(), 0, 0).unwrap();
        sink.write(&SinkBatch {
            lines: b"a,1,1\n".to_vec(),
            rejected: b"2,x\n".to_vec(),
        })
        .unwrap();
        sink.pre_commit(1, &fail).unwrap();
        assert!(sink.commit(1, &fail).is_err());
        reconcile(&StdFs, dir.path(), 1).unwrap();
        assert_eq!(names(dir.path()), ["part-0-1"]);
        assert_eq!(names(&dir.path().join(REJECTED_DIR)), ["part-0-1"]);
    }
}

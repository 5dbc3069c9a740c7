//! `flowstate run` after the newest checkpoint was damaged: a job `_metadata` with a flipped
//! byte, truncated, zeroed or deleted, or a task checkpoint's `_metadata` damaged, while the
//! output that checkpoint committed is still there. The run must refuse (exit 1, saying what it
//! found), keep the damaged checkpoint under `quarantine/`, and leave the output as it was; with
//! `--allow-older-checkpoint` it resumes from the older checkpoint and the committed output is
//! again exactly the failure-free output.
//!
//! The expected output is computed here from the generated input (per key: running count and
//! sum), not with the job's own parser.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EXE: &str = env!("CARGO_BIN_EXE_flowstate");

/// Writes `lines` input lines `key,value` and returns the lines a correct run commits: for the
/// i-th event of key k, `k,i,<sum of k's first i values>`, sorted.
fn write_input(path: &Path, lines: u64) -> Vec<String> {
    let mut text = String::new();
    let mut totals: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    let mut expected = Vec::new();
    let mut z: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..lines {
        z ^= z << 13;
        z ^= z >> 7;
        z ^= z << 17;
        let key = format!("key-{}", z % 53);
        let value = (z >> 20) as i64 % 2001 - 1000;
        text.push_str(&format!("{key},{value}\n"));
        let total = totals.entry(key.clone()).or_insert((0, 0));
        total.0 += 1;
        total.1 += value;
        expected.push(format!("{key},{},{}", total.0, total.1));
    }
    fs::write(path, text).unwrap();
    expected.sort();
    expected
}

fn run(dir: &Path, backend: &str, extra: &[&str]) -> Output {
    let p = |name: &str| dir.join(name).display().to_string();
    Command::new(EXE)
        .args(["run", "--input", &p("input"), "--output", &p("out")])
        .args(["--state", &p("state"), "--backend", backend])
        .args(["--parallelism", "2", "--checkpoint-interval-ms", "10"])
        .args(["--retained", "3", "--quiet"])
        .args(extra)
        .output()
        .unwrap()
}

/// Every committed line (`part-*` files of the output directory, sorted).
fn committed_lines(out: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in fs::read_dir(out).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("part-") {
            let text = fs::read_to_string(entry.path()).unwrap();
            lines.extend(text.lines().map(str::to_string));
        }
    }
    lines.sort();
    lines
}

/// The largest epoch among the committed `part-<task>-<epoch>` files.
fn newest_committed_epoch(out: &Path) -> u64 {
    fs::read_dir(out)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_prefix("part-")?
                .split_once('-')?
                .1
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap()
}

/// Ids of the `chk-<id>` directories of a checkpoint root, ascending.
fn checkpoint_ids(root: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = fs::read_dir(root)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_prefix("chk-")?.parse().ok()
        })
        .collect();
    ids.sort_unstable();
    ids
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    FlipByte,
    Truncate,
    Zero,
    Delete,
}

fn damage(path: &Path, how: Damage) {
    let mut bytes = fs::read(path).unwrap();
    match how {
        Damage::FlipByte => {
            let at = bytes.len() / 2;
            bytes[at] ^= 0x10;
        }
        Damage::Truncate => bytes.truncate(bytes.len() - 5),
        Damage::Zero => bytes.iter_mut().for_each(|b| *b = 0),
        Damage::Delete => {
            fs::remove_file(path).unwrap();
            return;
        }
    }
    fs::write(path, bytes).unwrap();
}

/// A finished run whose last step (writing `FINISHED`) is undone, as after a crash right after
/// the final checkpoint: a rerun resumes. Returns the expected lines and the newest epoch that
/// committed output; several checkpoints are retained. A run so fast (or a machine so loaded)
/// that fewer than two checkpoints completed is repeated on a fresh directory with a larger
/// input, so the cases below always start from several retained checkpoints.
fn finished_run_without_marker(dir: &Path, backend: &str) -> (Vec<String>, u64) {
    let mut lines = 60_000;
    let (expected, ids) = loop {
        for sub in ["state", "out"] {
            let _ = fs::remove_dir_all(dir.join(sub));
        }
        let expected = write_input(&dir.join("input"), lines);
        let first = run(dir, backend, &[]);
        assert_eq!(
            first.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&first.stderr)
        );
        assert_eq!(committed_lines(&dir.join("out")), expected);
        let ids = checkpoint_ids(&dir.join("state/job"));
        if ids.len() >= 2 || lines >= 960_000 {
            break (expected, ids);
        }
        lines *= 2;
    };
    fs::remove_file(dir.join("state/FINISHED")).unwrap();
    assert!(ids.len() >= 2, "too few retained checkpoints: {ids:?}");
    let epoch = newest_committed_epoch(&dir.join("out"));
    assert!(
        epoch > ids[0],
        "the oldest retained checkpoint {} covers all output",
        ids[0]
    );
    (expected, epoch)
}

/// Damages the `_metadata` of every job checkpoint from `epoch` (the newest that committed
/// output) on; returns the ids damaged.
fn damage_newest_job_metadata(dir: &Path, epoch: u64, how: Damage) -> Vec<u64> {
    let job = dir.join("state/job");
    let victims: Vec<u64> = checkpoint_ids(&job)
        .into_iter()
        .filter(|id| *id >= epoch)
        .collect();
    assert!(!victims.is_empty());
    for id in &victims {
        damage(&job.join(format!("chk-{id}/_metadata")), how);
    }
    victims
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The refused run, then the run with the flag; `quarantined` are the paths (relative to the
/// test directory) that must hold the damaged checkpoints.
fn refuse_then_allow(dir: &Path, backend: &str, expected: &[String], quarantined: &[PathBuf]) {
    let refused = run(dir, backend, &[]);
    let text = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(text.contains("cannot resume exactly once"), "{text}");
    assert!(text.contains("--allow-older-checkpoint"), "{text}");
    assert!(text.contains("committed output file(s)"), "{text}");
    assert!(text.contains("part-"), "{text}");
    for q in quarantined {
        assert!(dir.join(q).join("_metadata").is_file() || dir.join(q).is_dir());
        assert!(
            text.contains(&q.file_name().unwrap().to_string_lossy().into_owned()),
            "{text}"
        );
    }
    // Nothing was committed twice, nothing lost.
    assert_eq!(committed_lines(&dir.join("out")), expected);
    // A second refused run says the same and still changes nothing.
    let again = run(dir, backend, &[]);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert_eq!(committed_lines(&dir.join("out")), expected);

    let allowed = run(dir, backend, &["--allow-older-checkpoint"]);
    assert_eq!(allowed.status.code(), Some(0), "{}", stderr(&allowed));
    assert!(stderr(&allowed).contains(".superseded-after-"));
    assert_eq!(committed_lines(&dir.join("out")), expected);
    assert!(
        fs::read_dir(dir.join("out")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".superseded-after-")),
        "the output beyond the older checkpoint is kept aside"
    );
    for q in quarantined {
        assert!(dir.join(q).exists(), "{} is gone", q.display());
    }
    let done = run(dir, backend, &[]);
    assert_eq!(done.status.code(), Some(0), "{}", stderr(&done));
    assert!(String::from_utf8_lossy(&done.stdout).contains("already finished"));
}

fn job_metadata_case(backend: &str, how: Damage) {
    let dir = tempfile::tempdir().unwrap();
    let (expected, epoch) = finished_run_without_marker(dir.path(), backend);
    let victims = damage_newest_job_metadata(dir.path(), epoch, how);
    let quarantined: Vec<PathBuf> = match how {
        // A deleted `_metadata` leaves nothing to quarantine; the committed output gives it away.
        Damage::Delete => Vec::new(),
        _ => victims
            .iter()
            .map(|id| PathBuf::from(format!("state/job/quarantine/chk-{id}")))
            .collect(),
    };
    refuse_then_allow(dir.path(), backend, &expected, &quarantined);
}

#[test]
fn lsm_flipped_byte_in_newest_job_metadata_refuses_then_resumes_on_request() {
    job_metadata_case("lsm", Damage::FlipByte);
}

#[test]
fn lsm_truncated_newest_job_metadata_refuses_then_resumes_on_request() {
    job_metadata_case("lsm", Damage::Truncate);
}

#[test]
fn lsm_zeroed_newest_job_metadata_refuses_then_resumes_on_request() {
    job_metadata_case("lsm", Damage::Zero);
}

#[test]
fn lsm_deleted_newest_job_metadata_refuses_then_resumes_on_request() {
    job_metadata_case("lsm", Damage::Delete);
}

#[test]
fn fs_flipped_byte_in_newest_job_metadata_refuses_then_resumes_on_request() {
    job_metadata_case("fs", Damage::FlipByte);
}

#[test]
fn fs_truncated_newest_job_metadata_refuses_then_resumes_on_request() {
    job_metadata_case("fs", Damage::Truncate);
}

#[test]
fn fs_zeroed_newest_job_metadata_refuses_then_resumes_on_request() {
    job_metadata_case("fs", Damage::Zero);
}

#[test]
fn fs_deleted_newest_job_metadata_refuses_then_resumes_on_request() {
    job_metadata_case("fs", Damage::Delete);
}

/// The task checkpoints (`tasks/<gen>/t<i>/chk-<id>`) of job checkpoint `id`.
fn task_checkpoints(state: &Path, id: u64) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for generation in fs::read_dir(state.join("tasks")).unwrap() {
        for task in fs::read_dir(generation.unwrap().path()).unwrap() {
            let chk = task.unwrap().path().join(format!("chk-{id}"));
            if chk.join("_metadata").is_file() {
                out.push(chk);
            }
        }
    }
    out.sort();
    out
}

fn task_metadata_case(backend: &str, how: Damage) {
    let dir = tempfile::tempdir().unwrap();
    let (expected, epoch) = finished_run_without_marker(dir.path(), backend);
    let state = dir.path().join("state");
    let newest = *checkpoint_ids(&state.join("job")).last().unwrap();
    // Damage a task checkpoint of every job checkpoint from the newest that committed output
    // on, so that no job checkpoint at or after it stays usable.
    let mut quarantined = Vec::new();
    for id in epoch..=newest {
        let Some(victim) = task_checkpoints(&state, id).into_iter().next() else {
            continue;
        };
        damage(&victim.join("_metadata"), how);
        let root = victim.parent().unwrap();
        quarantined.push(
            root.join(format!("quarantine/chk-{id}"))
                .strip_prefix(dir.path())
                .unwrap()
                .to_path_buf(),
        );
        quarantined.push(PathBuf::from(format!("state/job/quarantine/chk-{id}")));
    }
    assert!(!quarantined.is_empty());
    let refused = run(dir.path(), backend, &[]);
    let text = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(text.contains("task checkpoint"), "{text}");
    for q in &quarantined {
        assert!(
            dir.path().join(q).is_dir(),
            "{} missing: {text}",
            q.display()
        );
    }
    assert_eq!(committed_lines(&dir.path().join("out")), expected);
    refuse_then_allow(dir.path(), backend, &expected, &quarantined);
}

#[test]
fn lsm_damaged_task_metadata_is_quarantined_and_refused() {
    task_metadata_case("lsm", Damage::FlipByte);
}

#[test]
fn fs_damaged_task_metadata_is_quarantined_and_refused() {
    task_metadata_case("fs", Damage::FlipByte);
}

#[test]
fn fs_deleted_task_metadata_is_quarantined_and_refused() {
    task_metadata_case("fs", Damage::Delete);
}

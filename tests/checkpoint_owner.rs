//! One checkpoint storage, one job: a job run with `--checkpoint-storage` claims the base (its
//! `OWNER` object names the job's id from `<state>/JOB_ID`); a second job with another state
//! directory and the same checkpoint storage is refused before it touches anything, and the
//! owning job resumes and finishes as before.

mod support;

use std::path::Path;

use flowstate::engine::BackendChoice;
use flowstate::engine::{JobConfig, run_job};
use flowstate::internals::generate_input;

fn config(dir: &Path, name: &str, storage: &str) -> JobConfig {
    let mut config = JobConfig::new(
        dir.join("input.txt"),
        dir.join(format!("out-{name}")),
        dir.join(format!("state-{name}")),
    );
    config.checkpoint_storage = Some(storage.to_string());
    config.backend = BackendChoice::Lsm;
    config
}

fn second_job_is_refused(storage: &str, dir: &Path) {
    generate_input(&dir.join("input.txt"), 5_000, 50, 1).unwrap();
    let first = config(dir, "a", storage);
    run_job(&first).unwrap();
    support::oracle::assert_exactly_once(&first.input, &first.output, storage);
    let job_id = std::fs::read_to_string(first.state.join("JOB_ID")).unwrap();

    let second = config(dir, "b", storage);
    let err = run_job(&second).unwrap_err().to_string();
    assert!(
        err.contains("belongs to another job")
            && err.contains(job_id.trim())
            && err.contains(&first.state.display().to_string())
            && err.contains("OWNER"),
        "{err}"
    );
    assert!(
        !second.output.join("part-0-1").exists()
            && support::oracle::committed(&second.output).is_empty(),
        "the refused job committed nothing"
    );
    // The owner is unaffected: it still resumes (here: finds itself finished).
    let again = run_job(&first).unwrap();
    assert!(again.already_finished);
    support::oracle::assert_exactly_once(&first.input, &first.output, storage);
}

#[test]
fn a_second_job_on_a_local_checkpoint_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("checkpoints").display().to_string();
    second_job_is_refused(&storage, dir.path());
    assert!(dir.path().join("checkpoints/OWNER").is_file());
}

#[cfg(feature = "object-store")]
#[test]
fn a_second_job_on_an_object_store_base_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    second_job_is_refused("memory://checkpoint-owner-test/job", dir.path());
}

#[test]
fn the_base_is_claimed_once_by_concurrent_writers() {
    use flowstate::checkpoint::storage::{CheckpointStorage, LocalDirStorage};
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalDirStorage::open(dir.path()).unwrap();
    let won: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let storage = &storage;
                s.spawn(move || storage.create_once("OWNER", format!("job {i}\n").as_bytes()))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let text = String::from_utf8(storage.read_file("OWNER").unwrap()).unwrap();
    let winner = won.iter().position(|w| *w).unwrap();
    assert_eq!(text, format!("job {winner}\n"));
    assert_eq!(storage.list("").unwrap(), ["OWNER"], "no temp file is left");
}

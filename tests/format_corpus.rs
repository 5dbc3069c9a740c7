//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/*`) through the same harness
//! the fuzzer runs, so CI checks on stable that no known input makes a decoder panic.
//!
//! `cargo test --test format_corpus -- --ignored write_seed_corpus` regenerates the seed files
//! from valid encodings (commit them together with any format change).

use std::path::{Path, PathBuf};

use flowstate::fuzzing::{TARGETS, run};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

#[test]
fn every_corpus_file_replays_without_panic() {
    let mut replayed = 0;
    for target in TARGETS {
        let dir = corpus_dir(target);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut count = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            assert!(run(target, &data), "unknown target {target}");
            // Every truncation of a seed must be handled too.
            for cut in (0..data.len()).step_by(data.len() / 64 + 1) {
                run(target, &data[..cut]);
            }
            count += 1;
        }
        assert!(count > 0, "corpus of {target} is empty");
        replayed += count;
    }
    assert!(replayed >= TARGETS.len());
}

#[test]
#[ignore = "writes seed files into fuzz/corpus; run by hand after a format change"]
fn write_seed_corpus() {
    for (target, name, bytes) in flowstate::fuzzing::seeds() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

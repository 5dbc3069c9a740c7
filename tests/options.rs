//! Options are checked before anything touches a file: a bad value is `Error::InvalidOption`
//! naming the option, and the directories and checkpoint storage are left exactly as they were
//! (no start-up scan deletes anything, no store or state directory is created).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flowstate::backend::FsBackendOptions;
use flowstate::backend::lsm::LsmBackendOptions;
use flowstate::checkpoint::storage::{CheckpointStorage, LocalDirStorage};
use flowstate::engine::{CheckpointOptions, GrowthAlert, JobConfig, run_job};
use flowstate::lsm::{Compression, Db, Options};
use flowstate::{BackendConfig, Error, FsBackend, KeyGroupRange, LsmBackend};

/// The option an error names, or a panic saying what the error was instead.
fn option_of(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::InvalidOption { option, .. }) => option,
        other => panic!("expected InvalidOption, got {other:?}"),
    }
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Checkpoint storage holding an incomplete checkpoint (a data file, no `_metadata`): the
/// start-up scan of a backend would delete it.
fn storage_with_incomplete_checkpoint(dir: &Path) -> Arc<dyn CheckpointStorage> {
    std::fs::create_dir_all(dir.join("chk-7")).unwrap();
    std::fs::write(dir.join("chk-7/kg-00000-00127"), b"half written").unwrap();
    Arc::new(LocalDirStorage::open(dir).unwrap())
}

fn config() -> BackendConfig {
    BackendConfig::new(128, KeyGroupRange::all(128)).unwrap()
}

#[test]
fn bad_fs_backend_options_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_with_incomplete_checkpoint(dir.path());
    let before = files(dir.path());
    for (options, name) in [
        (
            FsBackendOptions::default().retained_checkpoints(0),
            "FsBackendOptions::retained_checkpoints",
        ),
        (
            FsBackendOptions::default().key_groups_per_file(0),
            "FsBackendOptions::key_groups_per_file",
        ),
    ] {
        let err = FsBackend::open(config(), storage.clone(), options);
        assert_eq!(option_of(err), name);
        assert_eq!(files(dir.path()), before, "nothing deleted");
    }
    // Good options: the scan runs and removes the incomplete checkpoint.
    let backend = FsBackend::open(config(), storage, FsBackendOptions::default()).unwrap();
    assert_eq!(backend.recovery_report().removed_incomplete, [7]);
}

#[test]
fn bad_lsm_backend_options_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_with_incomplete_checkpoint(&dir.path().join("checkpoints"));
    let work = dir.path().join("work");
    let before = files(dir.path());
    let cases: Vec<(LsmBackendOptions, &str)> = vec![
        (
            LsmBackendOptions::default().write_buffer_size(0),
            "LsmBackendOptions::write_buffer_size",
        ),
        (
            LsmBackendOptions::default().delta_ratio(-1.0),
            "LsmBackendOptions::delta_ratio",
        ),
        (
            LsmBackendOptions::default().delta_ratio(f64::NAN),
            "LsmBackendOptions::delta_ratio",
        ),
        (
            LsmBackendOptions::default().compression(Compression::Zstd { level: 99 }),
            "LsmBackendOptions::compression",
        ),
        (
            LsmBackendOptions::default().state_compression("s", Compression::Zstd { level: 0 }),
            "LsmBackendOptions::state_compression['s']",
        ),
        (
            LsmBackendOptions::default()
                .compression_per_level(vec![Compression::Lz4, Compression::Zstd { level: 23 }]),
            "LsmBackendOptions::compression_per_level[1]",
        ),
        (
            LsmBackendOptions::default().compression_per_level(vec![Compression::Lz4; 8]),
            "LsmBackendOptions::compression_per_level",
        ),
        (
            LsmBackendOptions::default().max_delta_files_per_cf(0),
            "LsmBackendOptions::max_delta_files_per_cf",
        ),
        (
            LsmBackendOptions::default().target_file_size(0),
            "LsmBackendOptions::target_file_size",
        ),
    ];
    for (options, name) in cases {
        let err = LsmBackend::open(config(), storage.clone(), options.working_dir(&work));
        assert_eq!(option_of(err), name);
        assert_eq!(files(dir.path()), before, "nothing deleted or created");
        assert!(!work.exists(), "no working directory");
    }
    // `Default` has no working directory: opening with it names the option.
    let err = LsmBackend::open(config(), storage.clone(), LsmBackendOptions::default());
    assert_eq!(option_of(err), "LsmBackendOptions::working_dir");
    assert_eq!(files(dir.path()), before, "nothing deleted or created");
}

#[test]
fn bad_store_options_name_the_option_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let options = Options::default().write_buffer_size(0);
    assert_eq!(
        option_of(Db::open(&path, options)),
        "lsm::Options::write_buffer_size"
    );
    let mut options = Options::default();
    options.default_cf_options.sst.block_size = 0;
    let option = option_of(Db::open(&path, options));
    assert!(option.contains("sst.block_size"), "{option}");
    assert!(!path.exists());
}

/// Per-column-family options given with `Options::cf_options` reach that column family (a bad
/// one is named with it), and a second call for the same name replaces the first.
#[test]
fn cf_options_setter_replaces_by_name_and_reaches_the_column_family() {
    use flowstate::lsm::{CfOptions, SstOptions};
    let dir = tempfile::tempdir().unwrap();
    let bad = CfOptions::default().sst(SstOptions::default().restart_interval(0));
    let options = Options::default()
        .cf_options("events", bad.clone())
        .cf_options("events", CfOptions::default());
    assert_eq!(options.cf_options.len(), 1);
    let db = Db::open(dir.path().join("good"), options).unwrap();
    db.create_cf("events", CfOptions::default()).unwrap();
    drop(db);
    let options = Options::default().cf_options("default", bad);
    let option = option_of(Db::open(dir.path().join("bad"), options));
    assert!(
        option.contains("restart_interval") && option.contains("'default'"),
        "{option}"
    );
}

#[test]
fn bad_job_config_names_the_field_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let job = |edit: &dyn Fn(&mut JobConfig)| {
        let mut config = JobConfig::new(
            dir.path().join("input"),
            dir.path().join("out"),
            dir.path().join("state"),
        );
        edit(&mut config);
        run_job(&config).map(drop)
    };
    type Edit<'a> = &'a dyn Fn(&mut JobConfig);
    let cases: Vec<(Edit, &str)> = vec![
        (&|c| c.parallelism = 0, "JobConfig::parallelism"),
        (
            &|c| c.max_parallelism = Some(0),
            "JobConfig::max_parallelism",
        ),
        (&|c| c.channel_capacity = 0, "JobConfig::channel_capacity"),
        (&|c| c.batch_records = 0, "JobConfig::batch_records"),
        (&|c| c.input = "".into(), "JobConfig::input"),
        (
            &|c| c.checkpoints.interval = Some(Duration::ZERO),
            "CheckpointOptions::interval",
        ),
        (
            &|c| c.checkpoints.timeout = Duration::ZERO,
            "CheckpointOptions::timeout",
        ),
        (
            &|c| c.checkpoints.max_concurrent = 0,
            "CheckpointOptions::max_concurrent",
        ),
        (
            &|c| c.checkpoints.retained = 0,
            "CheckpointOptions::retained",
        ),
        (
            &|c| {
                c.checkpoints.growth_alert = Some(GrowthAlert {
                    fraction: f64::INFINITY,
                    checkpoints: 3,
                })
            },
            "CheckpointOptions::growth_alert",
        ),
    ];
    for (edit, name) in cases {
        assert_eq!(option_of(job(edit)), name);
        assert!(files(dir.path()).is_empty(), "{name}: nothing created");
        assert!(!dir.path().join("state").exists() && !dir.path().join("out").exists());
    }
    assert!(CheckpointOptions::default().validate().is_ok());
}

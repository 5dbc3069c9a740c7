//! Opening a store: lock, rebuild the version from the manifest, replay the WAL into fresh L0
//! files, start a new WAL and manifest, and delete whatever no version needs.
//!
//! Recovery writes nothing the old state depends on until the new manifest is durable: a crash
//! at any point of it leaves either the old manifest and WALs (replayed again) or the new ones.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use parking_lot::{Condvar, Mutex, RwLock};

use super::flush::build_table;
use super::{CfState, Core, Counters, DEFAULT_CF, DbInner, SuperVersion, WriterState};
use crate::error::{Error, Result};
use crate::fs::sync_dir;
use crate::fs::{FileLock, FileSystem, FsRef, create_dir_durable};
use crate::lsm::block_cache::BlockCache;
use crate::lsm::manifest::{self, Manifest};
use crate::lsm::memtable::Memtable;
use crate::lsm::options::Options;
use crate::lsm::table::{TableFile, parse_sst_file_name};
use crate::lsm::version::{Version, VersionEdit};
use crate::lsm::wal::{WalRecovery, WalWriter, parse_wal_file_name, wal_file_name};

/// Name of the lock file that keeps a second process out.
pub const LOCK_FILE: &str = "LOCK";

/// Opens the store in `dir` (creating it if allowed): locks it, rebuilds the version, replays
/// the WAL into L0 files, starts a new WAL and manifest, and removes what no version needs.
pub(super) fn open(dir: &Path, options: Options) -> Result<DbInner> {
    let fs = Arc::clone(&options.fs);
    prepare_dir(fs.as_ref(), dir, &options)?;
    let lock = lock_dir(&fs, dir)?;
    let cache = BlockCache::with_budget(options.block_cache_size, options.memory_budget.clone());

    let version = recover_version(fs.as_ref(), dir, &options)?;
    let names = list_dir(fs.as_ref(), dir)?;
    let next_file_number = first_free_file_number(&version, &names);
    let (memtables, last_sequence) = replay_wals(fs.as_ref(), dir, &options, &version, &names)?;
    let restarted = restart(
        &fs,
        dir,
        &options,
        version,
        &memtables,
        last_sequence,
        next_file_number,
    )?;
    remove_obsolete(fs.as_ref(), dir, &names, &restarted)?;

    let Restarted {
        version,
        manifest,
        wal,
        log_number,
        next_file_number,
        ..
    } = restarted;
    let memtable_pool = options
        .memory_budget
        .clone()
        .map(|b| crate::budget::Pool::new(b, crate::budget::Component::Memtable));
    let core = new_core(
        &fs,
        dir,
        &options,
        &cache,
        version,
        next_file_number,
        &memtable_pool,
    );
    let inner = DbInner {
        dir: dir.to_path_buf(),
        options,
        cache,
        manifest: Mutex::new(manifest),
        writer: Mutex::new(WriterState {
            wal,
            log_number,
            last_sequence,
        }),
        core: Mutex::new(core),
        work: Condvar::new(),
        super_version: RwLock::new(Arc::new(SuperVersion {
            cfs: BTreeMap::new(),
        })),
        visible_sequence: AtomicU64::new(last_sequence),
        snapshots: Mutex::new(BTreeMap::new()),
        shutdown: AtomicBool::new(false),
        background_error: Mutex::new(None),
        counters: Counters::default(),
        compaction_lock: Mutex::new(()),
        flush_lock: Mutex::new(()),
        flush_log: Mutex::new(None),
        flush_requested: AtomicBool::new(false),
        memtable_pool,
        budget_id: std::sync::atomic::AtomicUsize::new(0),
        _lock: lock,
    };
    let initial = inner.install_super_version(&inner.core.lock());
    drop(initial);
    Ok(inner)
}

/// Refuses a missing `dir` unless `create_if_missing`, then makes `dir` exist durably.
fn prepare_dir(fs: &dyn FileSystem, dir: &Path, options: &Options) -> Result<()> {
    if !fs.exists(dir).map_err(|e| Error::io(dir, e))? && !options.create_if_missing {
        return Err(Error::not_found(format!(
            "no store at {} and create_if_missing is false",
            dir.display()
        )));
    }
    // Also when the directory exists: a crash may have left it created but not yet durable.
    create_dir_durable(fs, dir)
}

/// The version the manifest `CURRENT` names, or that of a new, empty store when there is none
/// and `create_if_missing` allows one.
fn recover_version(fs: &dyn FileSystem, dir: &Path, options: &Options) -> Result<Version> {
    match manifest::recover(fs, dir)? {
        Some((version, _)) => Ok(version),
        None if options.create_if_missing => {
            let edit = VersionEdit {
                cf_added: vec![(0, DEFAULT_CF.to_string())],
                next_cf_id: Some(1),
                next_file_number: Some(1),
                ..VersionEdit::default()
            };
            Version::default().apply(&edit, "new store", 0)
        }
        None => Err(Error::not_found(format!(
            "{} has no CURRENT file and create_if_missing is false",
            dir.display()
        ))),
    }
}

/// The first file number to hand out: above the version's and above every WAL, SST and
/// manifest in the directory (`names`).
fn first_free_file_number(version: &Version, names: &[String]) -> u64 {
    let next_file_number = version.next_file_number.max(1);
    // Files a crash left behind (an unfinished flush or compaction) may carry numbers the
    // manifest never recorded: hand out numbers above every file in the directory.
    let highest = names
        .iter()
        .filter_map(|n| {
            parse_wal_file_name(n)
                .or_else(|| parse_sst_file_name(n))
                .or_else(|| n.strip_prefix("MANIFEST-").and_then(|m| m.parse().ok()))
        })
        .max();
    next_file_number.max(highest.map_or(0, |h| h + 1))
}

/// Replays every WAL of `names` that may hold unflushed writes of some column family into one
/// memtable per column family; returns them and the highest sequence seen (at least the
/// version's).
fn replay_wals(
    fs: &dyn FileSystem,
    dir: &Path,
    options: &Options,
    version: &Version,
    names: &[String],
) -> Result<(BTreeMap<u32, Memtable>, u64)> {
    let mut wals: Vec<u64> = names
        .iter()
        .filter_map(|n| parse_wal_file_name(n))
        .collect();
    wals.sort_unstable();
    let memtables: BTreeMap<u32, Memtable> = version
        .cfs
        .keys()
        .map(|id| {
            (
                *id,
                Memtable::with_buffer_entries(options.memtable_buffer_entries),
            )
        })
        .collect();
    let min_log = version
        .cfs
        .values()
        .map(|c| c.log_number)
        .min()
        .unwrap_or(0);
    let mut last_sequence = version.last_sequence;
    for &number in wals.iter().filter(|&&n| n >= min_log) {
        let path = dir.join(wal_file_name(number));
        let recovered = WalRecovery::read_on(fs, &path, options.wal_recovery)?;
        for batch in &recovered.batches {
            for (sequence, op) in batch.iter() {
                let Some(cf) = version.cfs.get(&op.cf()) else {
                    continue;
                };
                if number < cf.log_number {
                    continue;
                }
                if let Some(memtable) = memtables.get(&op.cf()) {
                    let (key, value) = op.key_value();
                    memtable.insert(key, sequence, op.kind(), value);
                }
            }
            last_sequence = last_sequence.max(batch.last_sequence());
        }
    }
    Ok((memtables, last_sequence))
}

/// The store after [`restart`]: its new version, manifest and WAL.
struct Restarted {
    version: Version,
    manifest: Manifest,
    /// `None` with `Options::disable_wal`.
    wal: Option<WalWriter>,
    log_number: u64,
    manifest_number: u64,
    next_file_number: u64,
}

/// Writes the replayed memtables to L0, then starts a new WAL and a new manifest whose version
/// names those files; nothing older is removed yet.
fn restart(
    fs: &FsRef,
    dir: &Path,
    options: &Options,
    version: Version,
    memtables: &BTreeMap<u32, Memtable>,
    last_sequence: u64,
    mut next_file_number: u64,
) -> Result<Restarted> {
    let mut edit = flush_replayed(
        fs.as_ref(),
        dir,
        options,
        &version,
        memtables,
        &mut next_file_number,
    )?;
    let log_number = next_file_number;
    let manifest_number = next_file_number + 1;
    next_file_number += 2;
    edit.cf_log_numbers = version.cfs.keys().map(|id| (*id, log_number)).collect();
    edit.last_sequence = Some(last_sequence);
    edit.next_file_number = Some(next_file_number);
    sync_dir(fs.as_ref(), dir)?;
    let version = version.apply(&edit, "recovery", 0)?;
    let manifest = Manifest::create(fs, dir, manifest_number, &version)?;
    let wal = if options.disable_wal {
        None
    } else {
        Some(WalWriter::create_on(
            fs,
            &dir.join(wal_file_name(log_number)),
            log_number,
            options.wal_sync,
        )?)
    };
    Ok(Restarted {
        version,
        manifest,
        wal,
        log_number,
        manifest_number,
        next_file_number,
    })
}

/// Writes each non-empty replayed memtable to an L0 file numbered from `next_file_number`;
/// returns the edit adding those files and their range tombstones.
fn flush_replayed(
    fs: &dyn FileSystem,
    dir: &Path,
    options: &Options,
    version: &Version,
    memtables: &BTreeMap<u32, Memtable>,
    next_file_number: &mut u64,
) -> Result<VersionEdit> {
    let now = options.clock.now_ms();
    let mut edit = VersionEdit::default();
    for (id, memtable) in memtables {
        if memtable.is_empty() {
            continue;
        }
        let name = version
            .cfs
            .get(id)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let cf_options = options.cf(&name);
        let mut new_number = || {
            let number = *next_file_number;
            *next_file_number += 1;
            number
        };
        let (metas, tombstones) =
            build_table(fs, dir, &mut new_number, memtable, &cf_options, now, &[])?;
        for meta in metas {
            edit.new_files.push((*id, 0, meta));
        }
        edit.tombstones_added
            .extend(tombstones.into_iter().map(|t| (*id, t)));
    }
    Ok(edit)
}

/// Removes every file of `names` that the restarted store does not need (older WALs, SSTs no
/// version lists, other manifests, temp files), best effort, then fsyncs the directory.
fn remove_obsolete(
    fs: &dyn FileSystem,
    dir: &Path,
    names: &[String],
    restarted: &Restarted,
) -> Result<()> {
    // Everything else is garbage of earlier runs or crashes.
    let live: std::collections::HashSet<u64> =
        restarted.version.live_file_numbers().into_iter().collect();
    for name in names {
        let obsolete = parse_wal_file_name(name).is_some_and(|n| n < restarted.log_number)
            || parse_sst_file_name(name).is_some_and(|n| !live.contains(&n))
            || (name.starts_with("MANIFEST-")
                && *name != manifest::manifest_file_name(restarted.manifest_number))
            || name.ends_with(".tmp");
        if obsolete {
            let _ = fs.remove_file(&dir.join(name));
        }
    }
    sync_dir(fs, dir)
}

/// The in-memory core of the opened store: `version`, a table handle for each of its files,
/// and an empty memtable per column family.
fn new_core(
    fs: &FsRef,
    dir: &Path,
    options: &Options,
    cache: &Arc<BlockCache>,
    version: Version,
    next_file_number: u64,
    pool: &Option<Arc<crate::budget::Pool>>,
) -> Core {
    let mut tables = HashMap::new();
    for cf in version.cfs.values() {
        for file in cf.files() {
            tables.insert(
                file.number,
                TableFile::new(
                    fs,
                    dir,
                    file.clone(),
                    Some(cache.clone()),
                    options.allow_mmap_reads,
                ),
            );
        }
    }
    let cfs = version
        .cfs
        .iter()
        .map(|(id, c)| {
            (
                *id,
                CfState {
                    name: c.name.clone(),
                    options: Arc::new(options.cf(&c.name)),
                    memtable: Arc::new(options.new_memtable(pool)),
                },
            )
        })
        .collect();
    Core {
        version: Arc::new(version),
        cfs,
        frozen: Vec::new(),
        tables,
        next_file_number,
    }
}

/// Takes the store's `LOCK` file, or says the store is in use.
fn lock_dir(fs: &FsRef, dir: &Path) -> Result<Box<dyn FileLock>> {
    let path = dir.join(LOCK_FILE);
    crate::lock::try_lock_file(fs.as_ref(), &path)?.ok_or_else(|| {
        Error::in_use(format!(
            "the store at {} is in use by another process (its LOCK file is held)",
            dir.display()
        ))
    })
}

/// The names in `dir`.
fn list_dir(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<String>> {
    Ok(fs
        .read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .into_iter()
        .map(|entry| entry.name)
        .collect())
}

//! The conformance suite every backend passes: each test is written once, generic over a
//! [`BackendFactory`], and `conformance_suite!(name, Factory);` instantiates all of them for one
//! backend. Covered: every state kind through the typed API and the byte-level trait, namespaces,
//! TTL in every mode, snapshot/restore exactness, rescaling, bad input, streaming map and list
//! reads, and model tests.
//!
//! To add a backend, implement [`BackendFactory`] (build it from a `BackendConfig` and a scratch
//! directory) and add one `conformance_suite!` line at the bottom of this file.

#[path = "conformance/errors.rs"]
mod errors;
#[path = "conformance/harness.rs"]
mod harness;
#[path = "conformance/model.rs"]
mod model;
#[path = "conformance/snapshot.rs"]
mod snapshot;
#[path = "conformance/streaming.rs"]
mod streaming;
#[path = "conformance/ttl.rs"]
mod ttl;
#[path = "conformance/typed.rs"]
mod typed;
#[path = "conformance/update_with.rs"]
mod update_with;

use std::path::Path;

use flowstate::{BackendConfig, MemoryBackend, Result, StateBackend};

pub use harness::BackendFactory;

/// Instantiates every conformance test for one backend: `conformance_suite!(module, Factory);`,
/// and after a `;` the tests only some backends can run, so that a suite without them does not
/// report them as passed.
///
/// Heap backends only (memory, fs): `ttl::incremental_cleanup_removes_unread_keys`, which checks
/// that accesses to a TTL state remove expired entries of keys nobody reads. The LSM backend has
/// no such cleanup: its compaction filter drops expired entries when their files are compacted,
/// which `tests/lsm_backend.rs` checks (`ttl_entries_vanish_from_reads_savepoints_and_disk`,
/// `periodic_compaction_cleans_a_cold_file_within_the_ttl`).
macro_rules! conformance_suite {
    ($name:ident, $factory:ty $(; $($extra_module:ident :: $extra:ident),+ $(,)?)?) => {
        mod $name {
            use super::*;

            conformance_suite!(@tests $factory;
                typed::value_state_get_update_clear,
                typed::list_state_add_get_update_clear,
                typed::map_state_operations,
                typed::reducing_state_add_get_clear,
                typed::aggregating_state_add_get_clear_merge,
                typed::namespaces_keep_state_apart,
                typed::keys_lists_keys_of_a_state_in_a_namespace,
                ttl::value_on_create_and_write,
                ttl::value_on_read_and_write,
                ttl::value_return_expired_once,
                ttl::list_per_element_ttl,
                ttl::map_per_entry_ttl,
                ttl::reducing_and_aggregating_ttl,
                ttl::snapshot_leaves_out_expired,
                snapshot::restore_returns_exactly_the_snapshot,
                snapshot::snapshot_ignores_writes_after_its_synchronous_part,
                snapshot::rescale_split_and_merge,
                snapshot::rescale_three_to_two,
                errors::state_without_current_key,
                errors::incompatible_registration,
                errors::foreign_key_groups,
                errors::unknown_state_id,
                errors::bad_restore_handles,
                errors::handles_that_disagree_on_a_state,
                errors::garbage_values_are_errors,
                update_with::read_modify_write_keeps_frozen_bytes,
                update_with::update_with_on_garbage_is_an_error,
                streaming::map_iteration_reads_one_chunk_per_call,
                streaming::writes_during_iteration_are_seen_after_the_chunk,
                streaming::damaged_values_while_streaming,
                $($($extra_module::$extra,)+)?
            );

            proptest::proptest! {
                #![proptest_config(model::config())]
                #[test]
                fn model_matches_btreemap(ops in model::ops()) {
                    model::run::<$factory>(ops)?;
                }
            }

            proptest::proptest! {
                #![proptest_config(streaming::config())]
                #[test]
                fn streaming_reads_match_btreemap(ops in streaming::ops()) {
                    streaming::run::<$factory>(ops)?;
                }
            }

            proptest::proptest! {
                #![proptest_config(update_with::config())]
                #[test]
                fn update_with_matches_value_then_update((ttl, steps) in update_with::cases()) {
                    update_with::run::<$factory>(ttl, steps)?;
                }
            }
        }
    };
    (@tests $factory:ty; $($module:ident :: $test:ident),* $(,)?) => {
        mod cases {
            use super::*;
            $(
                #[test]
                fn $test() {
                    $module::$test::<$factory>();
                }
            )*
        }
    };
}

/// [`MemoryBackend`]: the scratch directory is not needed.
pub struct MemoryFactory;

impl BackendFactory for MemoryFactory {
    fn create(config: BackendConfig, _scratch: &Path) -> Result<Box<dyn StateBackend>> {
        Ok(Box::new(MemoryBackend::new(config)))
    }
}

conformance_suite!(memory, MemoryFactory; ttl::incremental_cleanup_removes_unread_keys);

/// [`FsBackend`](flowstate::FsBackend) writing full snapshots into its scratch directory.
pub struct FsFactory;

impl BackendFactory for FsFactory {
    fn create(config: BackendConfig, scratch: &Path) -> Result<Box<dyn StateBackend>> {
        let storage = flowstate::checkpoint::storage::LocalDirStorage::open(scratch)?;
        Ok(Box::new(flowstate::FsBackend::new(
            config,
            std::sync::Arc::new(storage),
        )?))
    }
}

conformance_suite!(fs, FsFactory; ttl::incremental_cleanup_removes_unread_keys);

/// [`LsmBackend`](flowstate::LsmBackend): its store and its checkpoints both in the scratch
/// directory, with a write-back cache of `CACHE` bytes (`usize::MAX`: the default size; 0: no
/// cache; a tiny one evicts and spills to the store all the time). Expired entries leave
/// through the compaction filter, not incremental cleanup: its suites leave out the test of that
/// cleanup.
pub struct LsmFactory<const CACHE: usize>;

impl<const CACHE: usize> BackendFactory for LsmFactory<CACHE> {
    const INCREMENTAL_TTL_CLEANUP: bool = false;

    fn create(config: BackendConfig, scratch: &Path) -> Result<Box<dyn StateBackend>> {
        let storage =
            flowstate::checkpoint::storage::LocalDirStorage::open(scratch.join("checkpoints"))?;
        let mut options = flowstate::LsmBackendOptions::new(scratch.join("work"));
        if CACHE != usize::MAX {
            options = options.write_cache_size(CACHE);
        }
        Ok(Box::new(flowstate::LsmBackend::open(
            config,
            std::sync::Arc::new(storage),
            options,
        )?))
    }
}

conformance_suite!(lsm, LsmFactory<{ usize::MAX }>);
conformance_suite!(lsm_uncached, LsmFactory<0>);
conformance_suite!(lsm_tiny_cache, LsmFactory<600>);

/// [`LsmBackend`](flowstate::LsmBackend) on a memory budget of `MIB` MiB of its own: the write
/// cache, memtables and block cache keep running out of memory, so writes settle, evict, flush
/// and wait through every case.
pub struct LsmBudgetFactory<const MIB: usize>;

impl<const MIB: usize> BackendFactory for LsmBudgetFactory<MIB> {
    const INCREMENTAL_TTL_CLEANUP: bool = false;

    fn create(config: BackendConfig, scratch: &Path) -> Result<Box<dyn StateBackend>> {
        let storage =
            flowstate::checkpoint::storage::LocalDirStorage::open(scratch.join("checkpoints"))?;
        let options = flowstate::LsmBackendOptions::new(scratch.join("work"))
            .memory_budget(Some(flowstate::MemoryBudget::with_mib(MIB)));
        Ok(Box::new(flowstate::LsmBackend::open(
            config,
            std::sync::Arc::new(storage),
            options,
        )?))
    }
}

conformance_suite!(lsm_budget, LsmBudgetFactory<1>);

/// [`LsmBackend`](flowstate::LsmBackend) with full checkpoints (full snapshot files).
pub struct LsmFullFactory;

impl BackendFactory for LsmFullFactory {
    const INCREMENTAL_TTL_CLEANUP: bool = false;

    fn create(config: BackendConfig, scratch: &Path) -> Result<Box<dyn StateBackend>> {
        let storage =
            flowstate::checkpoint::storage::LocalDirStorage::open(scratch.join("checkpoints"))?;
        let options =
            flowstate::LsmBackendOptions::new(scratch.join("work")).full_checkpoints(true);
        Ok(Box::new(flowstate::LsmBackend::open(
            config,
            std::sync::Arc::new(storage),
            options,
        )?))
    }
}

conformance_suite!(lsm_full, LsmFullFactory);

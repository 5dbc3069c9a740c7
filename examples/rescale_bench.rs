//! Rescale restores of a large LSM state: `from` tasks each write their share of the keys in four
//! rounds with a checkpoint after each, then `to` tasks restore from the last checkpoints, one
//! after the other, each into its own key-group range. Prints, per scenario, the wall time of
//! every restore and the bytes it fetched (hard-linked from the local checkpoint directory and
//! read once to check them), read and wrote after fetching (clipping compactions, or rewrites of
//! the files straddling the range), and the files it took. Then (untimed) every restored task
//! must hold keys of its own key groups only, and the tasks together every key once; a wrong
//! answer exits non-zero.
//!
//! `cargo run --release --example rescale_bench` (default: 100 MB of keys and values, scenarios
//! 2->3, 3->2 and 8->1; BENCHMARKS.md uses `FLOWSTATE_RESCALE_MB=1000`). `FLOWSTATE_RESCALE_MB` sets the state size, `FLOWSTATE_RESCALE` the
//! scenarios (`2:3,3:2,8:1`), `FLOWSTATE_RESCALE_DIR` the scratch directory (default a temporary
//! one).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use flowstate::keys::{
    composite_key, key_group_for_key, key_group_of, operator_index_for_key_group,
};
use flowstate::{
    BackendConfig, KeyGroupRange, LocalDirStorage, LsmBackend, LsmBackendOptions, SnapshotHandle,
    StateBackend, StateDescriptor, StateKind,
};

const MAX_PARALLELISM: u16 = 128;
const VALUE_LEN: usize = 100;
const ROUNDS: u64 = 4;
const MB: f64 = 1e6;

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn open(dir: &Path, name: &str, range: KeyGroupRange) -> flowstate::Result<LsmBackend> {
    let config = BackendConfig::new(MAX_PARALLELISM, range)?;
    let storage = Arc::new(LocalDirStorage::open(dir.join("checkpoints").join(name))?);
    LsmBackend::open(
        config,
        storage,
        LsmBackendOptions::new(dir.join("work").join(name)),
    )
}

/// Writes `keys` keys with 100-byte values into `from` tasks, checkpointing all after each of
/// four rounds; returns the last handles.
fn build(dir: &Path, from: u16, keys: u64) -> flowstate::Result<Vec<SnapshotHandle>> {
    let mut tasks = Vec::new();
    for i in 0..from {
        let range = KeyGroupRange::for_operator(MAX_PARALLELISM, from, i)?;
        let mut b = open(dir, &format!("p{from}-t{i}"), range)?;
        let state = b.register(&StateDescriptor::new("v", StateKind::Value))?;
        tasks.push((b, state));
    }
    let mut value = vec![0u8; VALUE_LEN];
    let mut handles = Vec::new();
    for round in 0..ROUNDS {
        for k in (round * keys / ROUNDS)..((round + 1) * keys / ROUNDS) {
            let user = format!("key-{k:012}");
            let group = key_group_for_key(user.as_bytes(), MAX_PARALLELISM);
            let owner = operator_index_for_key_group(MAX_PARALLELISM, from, group);
            let mut z = k;
            for chunk in value.chunks_mut(8) {
                z = mix(z);
                chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
            }
            let (b, state) = &mut tasks[usize::from(owner)];
            b.put(
                *state,
                &composite_key(group, user.as_bytes(), b"", b""),
                &value,
            )?;
        }
        handles.clear();
        for (b, _) in &mut tasks {
            handles.push(b.snapshot(round + 1)?.run()?);
            b.notify_checkpoint_complete(round + 1)?;
        }
    }
    Ok(handles)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mb: f64 = std::env::var("FLOWSTATE_RESCALE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100.0);
    let scenarios: Vec<(u16, u16)> = std::env::var("FLOWSTATE_RESCALE")
        .unwrap_or_else(|_| "2:3,3:2,8:1".to_string())
        .split(',')
        .filter_map(|s| {
            let (a, b) = s.split_once(':')?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        })
        .collect();
    // key-<12 digits> in a composite key: 2 + 1 + 16 + 1 + 1 bytes, plus the value.
    let entry = (21 + VALUE_LEN) as f64;
    let keys = (mb * MB / entry) as u64;
    let scratch = std::env::var("FLOWSTATE_RESCALE_DIR").ok();
    for (from, to) in scenarios {
        let temp = match &scratch {
            Some(d) => tempfile::tempdir_in(d)?,
            None => tempfile::tempdir()?,
        };
        let dir = temp.path();
        let started = Instant::now();
        let handles = build(dir, from, keys)?;
        let checkpoint_bytes: u64 = handles
            .iter()
            .map(|h| match &h.data {
                flowstate::backend::SnapshotData::Files { files, .. } => {
                    files.iter().map(|f| f.size).sum()
                }
                _ => 0,
            })
            .sum();
        println!(
            "{from} -> {to}: {keys} keys ({:.0} MB of keys and values), checkpoints of {:.0} MB, built in {:.1} s",
            keys as f64 * entry / MB,
            checkpoint_bytes as f64 / MB,
            started.elapsed().as_secs_f64()
        );
        let (mut wall, mut fetched, mut read, mut written, mut files, mut rewritten) =
            (0.0, 0u64, 0u64, 0u64, 0u64, 0u64);
        let mut slowest: f64 = 0.0;
        let mut restored_keys = 0u64;
        for i in 0..to {
            let range = KeyGroupRange::for_operator(MAX_PARALLELISM, to, i)?;
            let mut b = open(dir, &format!("q{to}-t{i}"), range)?;
            let t = Instant::now();
            b.restore(&handles, range)?;
            let secs = t.elapsed().as_secs_f64();
            let stats = b.last_restore_stats().expect("restore stats");
            let db = b.db().stats();
            let after_read = db.compaction_bytes_read + stats.rewritten_source_bytes;
            let after_written = db.compaction_bytes_written + stats.rewritten_bytes;
            println!(
                "  task {i} ({range}): {secs:.2} s, fetched {} files {:.1} MB, then read {:.1} MB and wrote {:.1} MB ({} files rewritten)",
                stats.files,
                stats.bytes as f64 / MB,
                after_read as f64 / MB,
                after_written as f64 / MB,
                stats.rewritten_files,
            );
            wall += secs;
            slowest = slowest.max(secs);
            fetched += stats.bytes;
            read += after_read;
            written += after_written;
            files += stats.files;
            rewritten += stats.rewritten_files;
            let state = b.register(&StateDescriptor::new("v", StateKind::Value))?;
            for entry in b.scan_prefix(state, &[])? {
                let (composite, _) = entry?;
                let group = key_group_of(&composite).unwrap_or(u16::MAX);
                if !range.contains(group) {
                    return Err(format!("task {i} ({range}) holds key group {group}").into());
                }
                restored_keys += 1;
            }
        }
        if restored_keys != keys {
            return Err(
                format!("{from} -> {to}: {restored_keys} keys restored, {keys} written").into(),
            );
        }
        println!(
            "  total: {wall:.2} s (slowest task {slowest:.2} s), fetched {files} files {:.1} MB, bytes read {:.1} MB (fetched + after), written {:.1} MB, {rewritten} files rewritten",
            fetched as f64 / MB,
            (fetched + read) as f64 / MB,
            written as f64 / MB,
        );
    }
    Ok(())
}

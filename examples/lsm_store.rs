//! The LSM store on its own, checked against a `BTreeMap` model: two column families, atomic
//! write batches of puts, merges and deletes, a snapshot that keeps seeing the old contents,
//! bounded iterators in both directions, a range delete, flushes and a manual compaction, a
//! checkpoint opened as a store of its own, and a reopen from the WAL. Exits non-zero on a
//! wrong answer.
//!
//! `cargo run --release --example lsm_store`

use std::collections::BTreeMap;

use flowstate::lsm::{CfOptions, ColumnFamily, Db, Options, ReadOptions, WriteBatch};

const ROUNDS: u64 = 200;
const BATCH: u64 = 100;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn user(i: u64) -> Vec<u8> {
    format!("user:{:05}", i % 5_000).into_bytes()
}

/// Every (key, value) of `cf` in key order, read with `options`.
fn scan(db: &Db, cf: &ColumnFamily, options: ReadOptions) -> flowstate::Result<Model> {
    let mut iter = db.iter(cf, options)?;
    iter.seek_to_first()?;
    iter.entries().collect()
}

fn options() -> Options {
    Options::default().write_buffer_size(256 << 10)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir()?;
    let db_dir = dir.path().join("db");
    let db = Db::open(&db_dir, options())?;
    let profiles = db.create_cf("profiles", CfOptions::default())?;
    let events = db.create_cf("events", CfOptions::default())?;
    let (mut profiles_model, mut events_model) = (Model::new(), Model::new());

    // Batches: each writes a profile, appends an event (the default merge appends) and deletes
    // an older profile, atomically across both column families.
    let mut snapshot = None;
    for round in 0..ROUNDS {
        let mut batch = WriteBatch::new();
        for j in 0..BATCH {
            let i = round * BATCH + j;
            let value = format!("profile-{i}").into_bytes();
            batch.put(&profiles, &user(i), &value)?;
            profiles_model.insert(user(i), value);
            let event = format!("e{i};").into_bytes();
            batch.merge(&events, &user(i * 7), &event)?;
            events_model.entry(user(i * 7)).or_default().extend(event);
            if i.is_multiple_of(10) {
                batch.delete(&profiles, &user(i / 2))?;
                profiles_model.remove(&user(i / 2));
            }
        }
        db.write(batch)?;
        if round == ROUNDS / 2 {
            snapshot = Some((db.snapshot(), profiles_model.clone(), events_model.clone()));
        }
    }

    // Point reads and full scans against the model; the snapshot still sees round ROUNDS / 2.
    for (key, value) in profiles_model.iter().step_by(37) {
        assert_eq!(db.get(&profiles, key)?.as_ref(), Some(value));
    }
    assert_eq!(
        scan(&db, &profiles, ReadOptions::default())?,
        profiles_model
    );
    assert_eq!(scan(&db, &events, ReadOptions::default())?, events_model);
    let (snapshot, old_profiles, old_events) = snapshot.expect("taken");
    let at = ReadOptions::default().at(&snapshot);
    assert_eq!(scan(&db, &profiles, at.clone())?, old_profiles);
    assert_eq!(scan(&db, &events, at)?, old_events);
    drop(snapshot);

    // Bounded iteration backwards: the profiles of users 01000..01100, last first.
    let bounded = ReadOptions {
        lower_bound: Some(b"user:01000".to_vec()),
        upper_bound: Some(b"user:01100".to_vec()),
        ..ReadOptions::default()
    };
    let mut iter = db.iter(&profiles, bounded)?;
    iter.seek_to_last()?;
    let mut backwards = Vec::new();
    while iter.valid() {
        backwards.push(iter.key().to_vec());
        iter.prev()?;
    }
    let expected: Vec<Vec<u8>> = profiles_model
        .range(b"user:01000".to_vec()..b"user:01100".to_vec())
        .rev()
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(backwards, expected);

    // A range delete, a flush and a manual compaction keep the contents.
    db.delete_range(&profiles, b"user:02000", b"user:03000")?;
    profiles_model.retain(|k, _| {
        !(b"user:02000".as_slice()..b"user:03000".as_slice()).contains(&k.as_slice())
    });
    db.flush()?;
    let flushed = db.stats().flush_bytes_written;
    assert!(flushed > 0, "nothing was flushed");
    db.compact_range(&profiles, None, None)?;
    assert_eq!(
        scan(&db, &profiles, ReadOptions::default())?,
        profiles_model
    );

    // A checkpoint is a store of its own: later writes are not in it.
    let checkpoint_dir = dir.path().join("checkpoint");
    let live = db.checkpoint(&checkpoint_dir)?;
    db.put(&profiles, b"user:99999", b"after the checkpoint")?;
    {
        let copy = Db::open(&checkpoint_dir, options())?;
        let copy_profiles = copy
            .cf("profiles")
            .expect("column family in the checkpoint");
        let copy_events = copy.cf("events").expect("column family in the checkpoint");
        assert_eq!(
            scan(&copy, &copy_profiles, ReadOptions::default())?,
            profiles_model
        );
        assert_eq!(
            scan(&copy, &copy_events, ReadOptions::default())?,
            events_model
        );
        assert_eq!(copy.get(&copy_profiles, b"user:99999")?, None);
    }
    profiles_model.insert(b"user:99999".to_vec(), b"after the checkpoint".to_vec());

    // Reopening replays the WAL: the write after the flush is back.
    db.close()?;
    drop(db);
    let db = Db::open(&db_dir, options())?;
    let profiles = db.cf("profiles").expect("column family after reopen");
    let events = db.cf("events").expect("column family after reopen");
    assert_eq!(
        scan(&db, &profiles, ReadOptions::default())?,
        profiles_model
    );
    assert_eq!(scan(&db, &events, ReadOptions::default())?, events_model);

    println!(
        "lsm_store: {ROUNDS} batches ({flushed} bytes flushed), {} profiles and {} event lists \
         checked; checkpoint of {} files ({} bytes) in {:.2} s",
        profiles_model.len(),
        events_model.len(),
        live.files.len(),
        live.total_size(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

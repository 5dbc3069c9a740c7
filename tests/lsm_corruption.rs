//! Damaged store files: a flipped byte in an SST or the manifest, or a WAL damaged before its
//! end, gives `Error::Corruption` naming the file (and offset) — never a panic, never wrong data.

use flowstate::Error;
use flowstate::lsm::{Db, Options, ReadOptions};

fn filled(dir: &std::path::Path) {
    let db = Db::open(dir, Options::default()).unwrap();
    let cf = db.default_cf();
    for i in 0..2000u32 {
        db.put(&cf, format!("key{i:05}").as_bytes(), &[7u8; 64])
            .unwrap();
    }
    db.flush().unwrap();
}

fn files(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.to_string_lossy().ends_with(suffix)
                || p.file_name().unwrap().to_string_lossy().starts_with(suffix)
        })
        .collect();
    out.sort();
    out
}

/// Reads every key; returns the first error, or None if every value was right.
fn read_all(db: &Db) -> Option<Error> {
    let cf = db.default_cf();
    for i in 0..2000u32 {
        match db.get(&cf, format!("key{i:05}").as_bytes()) {
            Ok(Some(v)) => assert_eq!(v, vec![7u8; 64], "wrong data returned for key{i:05}"),
            Ok(None) => panic!("key{i:05} silently missing"),
            Err(e) => return Some(e),
        }
    }
    let mut it = match db.iter(&cf, ReadOptions::default()) {
        Ok(it) => it,
        Err(e) => return Some(e),
    };
    if let Err(e) = it.seek_to_first() {
        return Some(e);
    }
    let mut n = 0;
    while it.valid() {
        assert_eq!(it.value(), &[7u8; 64][..]);
        n += 1;
        if let Err(e) = it.next() {
            return Some(e);
        }
    }
    assert_eq!(n, 2000, "scan silently lost keys");
    None
}

#[test]
fn flipped_sst_bytes_are_reported_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path());
    let sst = files(dir.path(), ".sst").pop().expect("an sst");
    let original = std::fs::read(&sst).unwrap();
    let step = (original.len() / 97).max(1);
    let mut detected = 0;
    for pos in (0..original.len()).step_by(step) {
        let mut bytes = original.clone();
        bytes[pos] ^= 0x40;
        std::fs::write(&sst, &bytes).unwrap();
        let outcome = Db::open(dir.path(), Options::default()).map(|db| read_all(&db));
        let err = match outcome {
            Ok(None) => continue, // A byte no read touched (e.g. inside an unused bloom bit).
            Ok(Some(e)) | Err(e) => e,
        };
        match &err {
            Error::Corruption { file, .. } => {
                assert!(file.contains(".sst"), "error names {file}, not the sst");
                detected += 1;
            }
            other => panic!("flip at {pos}: expected corruption, got {other}"),
        }
    }
    std::fs::write(&sst, &original).unwrap();
    assert!(detected > 50, "only {detected} flips detected");
    assert!(read_all(&Db::open(dir.path(), Options::default()).unwrap()).is_none());
}

/// Regression (found by this test): a flipped bit in the length field of the manifest's last
/// record made it look like a torn append, so recovery silently dropped the edit — a flush whose
/// WAL was already deleted, i.e. lost data, or with the first edit an empty store. Now a
/// "torn" record whose bytes match its crc as a whole is corruption, and the first edit must be
/// whole.
#[test]
fn damaged_manifest_and_current_fail_open_with_corruption() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path());
    let manifest = files(dir.path(), "MANIFEST-").pop().expect("a manifest");
    let original = std::fs::read(&manifest).unwrap();
    for pos in 0..original.len() {
        let mut bytes = original.clone();
        bytes[pos] ^= 0x01;
        std::fs::write(&manifest, &bytes).unwrap();
        match Db::open(dir.path(), Options::default()) {
            Err(Error::Corruption { file, .. }) => assert!(file.contains("MANIFEST"), "{file}"),
            Err(other) => panic!("flip at {pos}: {other}"),
            Ok(db) => panic!(
                "flip at {pos} in the manifest went unnoticed: {:?}",
                db.stats()
            ),
        }
    }
    std::fs::write(&manifest, &original).unwrap();
    std::fs::write(dir.path().join("CURRENT"), b"garbage").unwrap();
    assert!(matches!(
        Db::open(dir.path(), Options::default()),
        Err(Error::Corruption { .. })
    ));
}

#[test]
fn torn_wal_tail_is_recovered_and_middle_damage_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), Options::default()).unwrap();
        let cf = db.default_cf();
        for i in 0..100u32 {
            db.put(&cf, format!("w{i:03}").as_bytes(), b"v").unwrap();
        }
        db.sync_wal().unwrap();
    }
    let wal = files(dir.path(), ".wal").pop().expect("a wal");
    let bytes = std::fs::read(&wal).unwrap();
    // Torn tail: the last record loses its end.
    std::fs::write(&wal, &bytes[..bytes.len() - 3]).unwrap();
    {
        let db = Db::open(dir.path(), Options::default()).unwrap();
        let cf = db.default_cf();
        assert_eq!(db.get(&cf, b"w098").unwrap(), Some(b"v".to_vec()));
        assert_eq!(
            db.get(&cf, b"w099").unwrap(),
            None,
            "the torn batch is dropped"
        );
    }
    // Damage in the middle of a WAL (followed by valid records) is corruption.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), Options::default()).unwrap();
        let cf = db.default_cf();
        for i in 0..100u32 {
            db.put(&cf, format!("w{i:03}").as_bytes(), b"v").unwrap();
        }
    }
    let wal = files(dir.path(), ".wal").pop().expect("a wal");
    let mut bytes = std::fs::read(&wal).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&wal, &bytes).unwrap();
    match Db::open(dir.path(), Options::default()) {
        Err(Error::Corruption { file, .. }) => assert!(file.contains(".wal"), "{file}"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("middle WAL damage went unnoticed"),
    }
}

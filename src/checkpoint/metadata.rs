//! The `_metadata` file of a checkpoint (FORMAT.md §4.3): what the checkpoint is and every file
//! it needs, with size, crc32 and xxh3.
//!
//! Encoder and decoder sit side by side. The decoder never panics, checks every length and count
//! against the bytes left before it allocates, and verifies the whole-file crc32 before it
//! believes any field after the version.

use std::collections::HashSet;

use crate::checkpoint::storage::FileRef;
use crate::codec::cursor::Cursor;
use crate::codec::record::crc32;
use crate::codec::varint::{put_varint32, put_varint64};
use crate::descriptor::{BackendKind, StateDescriptor};
use crate::error::{Error, Result};
use crate::keys::{KeyGroupRange, check_max_parallelism};

use super::storage::{SHARED_DIR, checkpoint_dir, validate_path};

/// First 8 bytes of every `_metadata` file. On disk: never change; FORMAT.md §4.3.
pub const METADATA_MAGIC: [u8; 8] = *b"FLWSMETA";
/// The format version this code writes and the newest it reads. FORMAT.md §4.3.
pub const METADATA_VERSION: u32 = 2;
/// The oldest format version this code reads: version 1 lists no XXH3-64 per file.
pub const OLDEST_METADATA_VERSION: u32 = 1;
/// Bytes before the body: magic, version, body length.
pub const METADATA_HEADER_LEN: usize = 16;
/// Bytes after the body: crc32.
pub const METADATA_TRAILER_LEN: usize = 4;
/// Largest body a reader accepts (64 MiB): bounds what a corrupt length can make it read.
pub const MAX_METADATA_BODY_LEN: u32 = 64 << 20;

// Smallest encodings, used to bound counts before allocating (FORMAT.md §4.3).
const MIN_STATE_LEN: usize = 5; // name len + 1 byte + kind + ttl flag + serializer len
const MIN_FILE_LEN: usize = 12; // path len + 1 byte + size + crc + 2 x kg + ownership

/// One file a checkpoint needs, and whether it is shared with other checkpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointFile {
    /// Path, size, crc32 and key groups.
    pub file: FileRef,
    /// True for files under `shared/` (reference-counted across checkpoints); false for files
    /// under the checkpoint's own `chk-<id>/` directory.
    pub shared: bool,
}

/// The decoded contents of a `_metadata` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointMetadata {
    /// The checkpoint's id; equals the `<id>` of its `chk-<id>` directory.
    pub checkpoint_id: u64,
    /// The backend kind that wrote it.
    pub backend: BackendKind,
    /// `max_parallelism` of the job.
    pub max_parallelism: u16,
    /// The key groups the checkpoint covers.
    pub key_group_range: KeyGroupRange,
    /// When the checkpoint was taken, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Every state, in state-id order; files refer to states by index in this list.
    pub states: Vec<StateDescriptor>,
    /// Every file the checkpoint needs.
    pub files: Vec<CheckpointFile>,
    /// Opaque bytes for the engine (e.g. source positions); empty when unused.
    pub extra: Vec<u8>,
}

impl CheckpointMetadata {
    /// The encoded `_metadata` file (FORMAT.md §4.3).
    ///
    /// Fails with [`Error::LimitExceeded`] when the body would exceed
    /// [`MAX_METADATA_BODY_LEN`]: a reader rejects such a file, so it is never written.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        body.extend_from_slice(&self.checkpoint_id.to_le_bytes());
        body.extend_from_slice(&self.timestamp_ms.to_le_bytes());
        body.push(self.backend.tag());
        body.extend_from_slice(&self.max_parallelism.to_le_bytes());
        put_range(&mut body, &self.key_group_range);
        put_varint32(&mut body, self.states.len() as u32);
        for state in &self.states {
            state.encode(&mut body);
        }
        put_varint32(&mut body, self.files.len() as u32);
        for entry in &self.files {
            put_string(&mut body, &entry.file.path);
            put_varint64(&mut body, entry.file.size);
            body.extend_from_slice(&entry.file.crc32.to_le_bytes());
            match entry.file.xxh3 {
                Some(hash) => {
                    body.push(1);
                    body.extend_from_slice(&hash.to_le_bytes());
                }
                None => body.push(0),
            }
            put_range(&mut body, &entry.file.key_groups);
            body.push(u8::from(entry.shared));
        }
        put_varint32(&mut body, self.extra.len() as u32);
        body.extend_from_slice(&self.extra);
        if body.len() > MAX_METADATA_BODY_LEN as usize {
            return Err(Error::limit_exceeded(format!(
                "checkpoint {} metadata body of {} bytes ({} files, {} bytes of extra) exceeds \
                 the _metadata limit of {MAX_METADATA_BODY_LEN} bytes",
                self.checkpoint_id,
                body.len(),
                self.files.len(),
                self.extra.len()
            )));
        }

        let mut out = Vec::with_capacity(METADATA_HEADER_LEN + body.len() + METADATA_TRAILER_LEN);
        out.extend_from_slice(&METADATA_MAGIC);
        out.extend_from_slice(&METADATA_VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Decodes a `_metadata` file; `file` names it in errors. Checks magic, version, length and
    /// crc32 first, then every field (FORMAT.md §4.3 lists what a reader must reject).
    pub fn decode(bytes: &[u8], file: &str) -> Result<Self> {
        let mut header = Cursor::new(bytes, file, 0);
        if header.bytes(8, "magic")? != METADATA_MAGIC {
            return Err(Error::corruption(
                file,
                0,
                "bad magic: not a _metadata file",
            ));
        }
        let version = header.u32_le("format version")?;
        if !(OLDEST_METADATA_VERSION..=METADATA_VERSION).contains(&version) {
            return Err(Error::corruption(
                file,
                8,
                format!(
                    "unsupported version {version} (this reader knows \
                     {OLDEST_METADATA_VERSION}..={METADATA_VERSION})"
                ),
            ));
        }
        let body_len = header.u32_le("body length")?;
        if body_len > MAX_METADATA_BODY_LEN {
            return Err(Error::corruption(
                file,
                12,
                format!("body length {body_len} exceeds the maximum {MAX_METADATA_BODY_LEN}"),
            ));
        }
        let expected = METADATA_HEADER_LEN + body_len as usize + METADATA_TRAILER_LEN;
        if bytes.len() != expected {
            return Err(Error::corruption(
                file,
                bytes.len().min(expected) as u64,
                format!("file is {} bytes, header says {expected}", bytes.len()),
            ));
        }
        let crc_at = METADATA_HEADER_LEN + body_len as usize;
        let (covered, stored) = bytes.split_at(crc_at);
        let stored =
            u32::from_le_bytes(stored.try_into().map_err(|_| {
                Error::corruption(file, crc_at as u64, "crc32 field is not 4 bytes")
            })?);
        let actual = crc32(covered);
        if stored != actual {
            return Err(Error::corruption(
                file,
                crc_at as u64,
                format!("crc32 mismatch: stored {stored:#010x}, computed {actual:#010x}"),
            ));
        }
        let body = covered.get(METADATA_HEADER_LEN..).unwrap_or_default();
        decode_body(Cursor::new(body, file, METADATA_HEADER_LEN as u64), version)
    }
}

fn decode_body(mut c: Cursor<'_>, version: u32) -> Result<CheckpointMetadata> {
    let checkpoint_id = c.u64_le("checkpoint id")?;
    let timestamp_ms = c.u64_le("timestamp")?;
    let at = c.offset();
    let backend = BackendKind::from_tag(c.u8("backend kind")?)
        .ok_or_else(|| c.error_at(at, "unknown backend kind tag"))?;
    let at = c.offset();
    let max_parallelism = check_max_parallelism(c.u16_le("max parallelism")?)
        .map_err(|_| c.error_at(at, "max parallelism outside 1..=32768"))?;
    let key_group_range = read_range(&mut c, max_parallelism, "checkpoint key-group range")?;

    let state_count = c.count(MIN_STATE_LEN, "state count")?;
    let mut states = Vec::with_capacity(state_count);
    let mut names = HashSet::with_capacity(state_count);
    for _ in 0..state_count {
        let at = c.offset();
        let state = StateDescriptor::decode(&mut c)?;
        if !names.insert(state.name.clone()) {
            return Err(c.error_at(at, format!("state '{}' listed twice", state.name)));
        }
        states.push(state);
    }

    let file_count = c.count(MIN_FILE_LEN, "file count")?;
    let mut files = Vec::with_capacity(file_count);
    let mut paths = HashSet::with_capacity(file_count);
    let owned_prefix = format!("{}/", checkpoint_dir(checkpoint_id));
    let shared_prefix = format!("{SHARED_DIR}/");
    for _ in 0..file_count {
        let at = c.offset();
        let path = c.string("file path")?;
        if validate_path(&path).is_err() {
            return Err(c.error_at(at, format!("invalid file path '{path}'")));
        }
        let size = c.varint64()?;
        let crc = c.u32_le("file crc32")?;
        let xxh3 = if version >= 2 {
            let at_hash = c.offset();
            match c.u8("xxh3 presence")? {
                0 => None,
                1 => Some(c.u64_le("file xxh3")?),
                other => return Err(c.error_at(at_hash, format!("unknown xxh3 presence {other}"))),
            }
        } else {
            None
        };
        let key_groups = read_range(&mut c, max_parallelism, "file key-group range")?;
        let at_flag = c.offset();
        let shared = match c.u8("ownership")? {
            0 => false,
            1 => true,
            other => return Err(c.error_at(at_flag, format!("unknown ownership tag {other}"))),
        };
        let prefix = if shared {
            &shared_prefix
        } else {
            &owned_prefix
        };
        if !path.starts_with(prefix.as_str()) || path.ends_with("/_metadata") {
            return Err(c.error_at(at, format!("file '{path}' is not under '{prefix}'")));
        }
        if !paths.insert(path.clone()) {
            return Err(c.error_at(at, format!("file '{path}' listed twice")));
        }
        files.push(CheckpointFile {
            file: FileRef {
                path,
                size,
                crc32: crc,
                xxh3,
                key_groups,
            },
            shared,
        });
    }
    let extra_len = c.varint32()?;
    let extra = c.bytes(extra_len as usize, "extra")?.to_vec();
    if !c.is_empty() {
        return Err(c.error_at(c.offset(), "trailing bytes after the extra field"));
    }
    Ok(CheckpointMetadata {
        checkpoint_id,
        backend,
        max_parallelism,
        key_group_range,
        timestamp_ms,
        states,
        files,
        extra,
    })
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    put_varint32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

fn put_range(out: &mut Vec<u8>, range: &KeyGroupRange) {
    out.extend_from_slice(&range.first().to_le_bytes());
    out.extend_from_slice(&range.last().to_le_bytes());
}

/// Reads a `first u16 LE | last u16 LE` key-group range that must lie inside
/// `0..max_parallelism` (FORMAT.md §4.3); `what` names the field in errors.
fn read_range(c: &mut Cursor<'_>, max_parallelism: u16, what: &str) -> Result<KeyGroupRange> {
    let at = c.offset();
    let first = c.u16_le(what)?;
    let last = c.u16_le(what)?;
    if first > last || last >= max_parallelism {
        return Err(c.error_at(
            at,
            format!(
                "{what} {first}..={last} is empty or exceeds max parallelism {max_parallelism}"
            ),
        ));
    }
    KeyGroupRange::new(first, last).map_err(|_| c.error_at(at, what.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::StateKind;
    use crate::ttl::{TtlConfig, UpdateType, Visibility};
    use proptest::prelude::*;

    fn sample() -> CheckpointMetadata {
        CheckpointMetadata {
            checkpoint_id: 7,
            backend: BackendKind::Fs,
            max_parallelism: 128,
            key_group_range: KeyGroupRange::new(0, 63).unwrap(),
            timestamp_ms: 1_700_000_000_000,
            states: vec![
                StateDescriptor::new("counts", StateKind::Value),
                StateDescriptor::new("seen", StateKind::Map).with_ttl(
                    TtlConfig::new(std::time::Duration::from_secs(60))
                        .with_visibility(Visibility::ReturnExpiredIfNotCleanedUp),
                ),
            ],
            files: vec![
                CheckpointFile {
                    file: FileRef {
                        path: "chk-7/kg-00003".into(),
                        size: 1234,
                        crc32: 0xdead_beef,
                        xxh3: None,
                        key_groups: KeyGroupRange::new(3, 3).unwrap(),
                    },
                    shared: false,
                },
                CheckpointFile {
                    file: FileRef {
                        path: "shared/000012.sst".into(),
                        size: 99,
                        crc32: 1,
                        xxh3: None,
                        key_groups: KeyGroupRange::new(0, 63).unwrap(),
                    },
                    shared: true,
                },
            ],
            extra: b"source offsets".to_vec(),
        }
    }

    #[test]
    fn round_trip_and_every_truncation_fails() {
        let m = sample();
        let bytes = m.encode().unwrap();
        assert_eq!(CheckpointMetadata::decode(&bytes, "m").unwrap(), m);
        for cut in 0..bytes.len() {
            let e = CheckpointMetadata::decode(&bytes[..cut], "m").unwrap_err();
            assert!(e.is_corruption(), "cut {cut}: {e}");
        }
    }

    #[test]
    fn encode_refuses_a_body_the_reader_would_reject() {
        let mut m = sample();
        m.extra.clear();
        // Exactly at the limit: written, and read back.
        let fixed = m.encode().unwrap().len() - METADATA_HEADER_LEN - METADATA_TRAILER_LEN;
        let room = MAX_METADATA_BODY_LEN as usize - fixed;
        // The extra field's varint length grows from 1 to 4 bytes.
        m.extra = vec![7; room - 3];
        let bytes = m.encode().unwrap();
        assert_eq!(CheckpointMetadata::decode(&bytes, "m").unwrap(), m);
        // One byte more: refused with a message naming the limit, nothing returned to publish.
        m.extra.push(7);
        let e = m.encode().unwrap_err();
        assert!(matches!(e, Error::LimitExceeded(_)), "{e}");
        assert!(
            e.to_string()
                .contains("exceeds the _metadata limit of 67108864 bytes"),
            "{e}"
        );
    }

    #[test]
    fn version_1_files_still_decode_without_xxh3_and_reencode_as_version_2() {
        let v1 = include_bytes!("testdata/metadata-v1");
        assert_eq!(u32::from_le_bytes(v1[8..12].try_into().unwrap()), 1);
        let m = CheckpointMetadata::decode(v1, "chk-7/_metadata").unwrap();
        assert_eq!(m.files.len(), 2);
        assert!(m.files.iter().all(|f| f.file.xxh3.is_none()));
        let again = m.encode().unwrap();
        assert_eq!(u32::from_le_bytes(again[8..12].try_into().unwrap()), 2);
        assert_eq!(CheckpointMetadata::decode(&again, "m").unwrap(), m);
    }

    #[test]
    fn xxh3_presence_must_be_0_or_1() {
        let mut m = sample();
        m.files.truncate(1);
        m.files[0].file.xxh3 = Some(0x1122_3344_5566_7788);
        let bytes = m.encode().unwrap();
        assert_eq!(CheckpointMetadata::decode(&bytes, "m").unwrap(), m);
        let at = bytes
            .windows(8)
            .position(|w| w == 0x1122_3344_5566_7788u64.to_le_bytes())
            .unwrap()
            - 1;
        let mut bad = bytes.clone();
        bad[at] = 2;
        let body_end = bad.len() - 4;
        let crc = crc32(&bad[..body_end]);
        bad[body_end..].copy_from_slice(&crc.to_le_bytes());
        let e = CheckpointMetadata::decode(&bad, "m").unwrap_err();
        assert!(e.to_string().contains("unknown xxh3 presence 2"), "{e}");
    }

    #[test]
    fn unknown_version_is_unsupported() {
        let mut bytes = sample().encode().unwrap();
        bytes[8] = 3;
        let e = CheckpointMetadata::decode(&bytes, "chk-7/_metadata").unwrap_err();
        assert!(e.to_string().contains("unsupported version 3"), "{e}");
    }

    #[test]
    fn rejects_paths_outside_the_checkpoint() {
        for (path, shared) in [
            ("chk-8/kg-1", false),
            ("../x", false),
            ("chk-7/kg-1", true),
            ("chk-7/_metadata", false),
        ] {
            let mut m = sample();
            m.files[0].file.path = path.into();
            m.files[0].shared = shared;
            let e = CheckpointMetadata::decode(&m.encode().unwrap(), "m").unwrap_err();
            assert!(e.is_corruption(), "{path}: {e}");
        }
    }

    #[test]
    fn every_byte_flip_fails() {
        let bytes = sample().encode().unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(CheckpointMetadata::decode(&bad, "m").is_err(), "byte {i}");
        }
    }

    fn arb_descriptor() -> impl Strategy<Value = StateDescriptor> {
        (
            "[a-z]{1,8}",
            0u8..5,
            proptest::option::of((any::<u64>(), any::<bool>(), any::<bool>())),
            "[a-z0-9]{0,8}",
        )
            .prop_map(|(name, kind, ttl, serializer)| StateDescriptor {
                name,
                kind: StateKind::from_tag(kind).unwrap(),
                ttl: ttl.map(|(ttl_ms, u, v)| TtlConfig {
                    ttl_ms,
                    update_type: if u {
                        UpdateType::OnReadAndWrite
                    } else {
                        UpdateType::OnCreateAndWrite
                    },
                    visibility: if v {
                        Visibility::ReturnExpiredIfNotCleanedUp
                    } else {
                        Visibility::NeverReturnExpired
                    },
                }),
                serializer,
            })
    }

    proptest! {
        #[test]
        fn round_trip(
            id in any::<u64>(),
            ts in any::<u64>(),
            states in proptest::collection::vec(arb_descriptor(), 0..5),
            files in proptest::collection::vec((any::<u64>(), any::<u32>(), 0u16..128, any::<bool>()), 0..6),
            extra in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut seen = HashSet::new();
            let states: Vec<_> = states.into_iter().filter(|s| seen.insert(s.name.clone())).collect();
            let files = files.into_iter().enumerate().map(|(i, (size, crc, kg, shared))| CheckpointFile {
                file: FileRef {
                    path: if shared { format!("shared/{i}.sst") } else { format!("chk-{id}/f{i}") },
                    size,
                    crc32: crc,
                    xxh3: None,
                    key_groups: KeyGroupRange::new(kg, kg).unwrap(),
                },
                shared,
            }).collect();
            let m = CheckpointMetadata {
                checkpoint_id: id,
                backend: BackendKind::Lsm,
                max_parallelism: 128,
                key_group_range: KeyGroupRange::all(128),
                timestamp_ms: ts,
                states,
                files,
                extra,
            };
            prop_assert_eq!(CheckpointMetadata::decode(&m.encode().unwrap(), "m").unwrap(), m);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = CheckpointMetadata::decode(&bytes, "m");
        }

        #[test]
        fn body_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            // Bypasses the crc32 so the field decoders see arbitrary bytes.
            let _ = decode_body(Cursor::new(&body, "m", 16), METADATA_VERSION);
        }
    }
}

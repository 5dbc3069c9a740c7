//! Time-to-live at the byte level (FORMAT.md §3): the config, the clock and the value envelope.
//!
//! This sits below the backends because they need it too: heap backends drop expired entries
//! while writing full snapshots and during incremental cleanup, the LSM backend in its compaction
//! filter. A TTL state's value is `last_access_ms (u64 BE) | payload`; a list value is a sequence
//! of `varint len | element` frames, and with TTL each element carries its own timestamp.

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::clock::{Clock, ManualClock, SharedClock, SystemClock, system_clock};
use crate::codec::varint::{get_varint32, put_varint32};
use crate::error::{Error, Result};

/// Bytes of the timestamp that prefixes a TTL value or list element.
pub const TTL_TIMESTAMP_LEN: usize = 8;

/// When the last-access timestamp of an entry is refreshed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UpdateType {
    /// Refreshed when the entry is created or written (Flink's `OnCreateAndWrite`).
    OnCreateAndWrite,
    /// Refreshed on every read as well (Flink's `OnReadAndWrite`).
    OnReadAndWrite,
}

/// Whether an expired entry that is still stored may be returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Visibility {
    /// Expired entries are never returned (Flink's `NeverReturnExpired`).
    NeverReturnExpired,
    /// An expired entry is returned if cleanup has not removed it yet
    /// (Flink's `ReturnExpiredIfNotCleanedUp`).
    ReturnExpiredIfNotCleanedUp,
}

/// TTL settings of one state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TtlConfig {
    /// How long an entry lives after its last access (as defined by `update_type`), in ms.
    pub ttl_ms: u64,
    /// Which accesses refresh the timestamp.
    pub update_type: UpdateType,
    /// Whether expired, not yet removed entries may be returned.
    pub visibility: Visibility,
}

impl TtlConfig {
    /// A TTL of `ttl` with `OnCreateAndWrite` and `NeverReturnExpired` (Flink's defaults).
    pub fn new(ttl: Duration) -> Self {
        TtlConfig {
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            update_type: UpdateType::OnCreateAndWrite,
            visibility: Visibility::NeverReturnExpired,
        }
    }

    /// Sets the update type.
    pub fn with_update_type(mut self, update_type: UpdateType) -> Self {
        self.update_type = update_type;
        self
    }

    /// Sets the visibility of expired entries.
    pub fn with_visibility(mut self, visibility: Visibility) -> Self {
        self.visibility = visibility;
        self
    }

    /// Whether an entry last accessed at `timestamp_ms` has expired at `now_ms`.
    pub fn is_expired(&self, timestamp_ms: u64, now_ms: u64) -> bool {
        timestamp_ms.saturating_add(self.ttl_ms) <= now_ms
    }
}

/// Prepends `timestamp_ms` to `payload`: the TTL envelope of a value or list element.
pub fn wrap(timestamp_ms: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(TTL_TIMESTAMP_LEN + payload.len());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a TTL envelope into its timestamp and payload.
pub fn unwrap(bytes: &[u8]) -> Result<(u64, &[u8])> {
    let (ts, payload) = bytes
        .split_first_chunk::<TTL_TIMESTAMP_LEN>()
        .ok_or_else(|| {
            Error::corruption(
                "ttl value",
                0,
                format!(
                    "TTL value of {} bytes lacks its 8-byte timestamp",
                    bytes.len()
                ),
            )
        })?;
    Ok((u64::from_be_bytes(*ts), payload))
}

/// Appends one list element frame (`varint len | element`) to `out`.
pub(crate) fn push_list_element(out: &mut Vec<u8>, element: &[u8]) {
    put_varint32(out, element.len() as u32);
    out.extend_from_slice(element);
}

/// Splits a list value into its element frames.
pub(crate) fn list_elements(bytes: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while let Some((element, next)) = next_list_element(bytes, pos)? {
        out.push(element);
        pos = next;
    }
    Ok(out)
}

/// The element of the list value `bytes` whose frame starts at byte `pos`, and where the next
/// frame starts; `None` at (or past) the end. Decodes one frame, so a list can be read element
/// by element without splitting it first.
pub(crate) fn next_list_element(bytes: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>> {
    let Some(rest) = bytes.get(pos..).filter(|rest| !rest.is_empty()) else {
        return Ok(None);
    };
    let (len, used) = get_varint32(rest, "list value", pos as u64)?;
    let body = rest.get(used..).unwrap_or_default();
    let element = body.get(..len as usize).ok_or_else(|| {
        Error::corruption(
            "list value",
            pos as u64,
            format!("list element of {len} bytes but only {} left", body.len()),
        )
    })?;
    Ok(Some((element, pos + used + element.len())))
}

/// What a stored value becomes once expired parts are dropped at `now_ms`; `None` when nothing
/// is left. This is the whole cleanup rule shared by snapshots, incremental cleanup and the
/// compaction filter: a value of a TTL state is dropped when expired; a list keeps its
/// unexpired elements.
pub(crate) fn drop_expired(
    is_list: bool,
    ttl: &TtlConfig,
    value: &[u8],
    now_ms: u64,
) -> Result<Option<Vec<u8>>> {
    if !is_list {
        let (ts, _) = unwrap(value)?;
        return Ok((!ttl.is_expired(ts, now_ms)).then(|| value.to_vec()));
    }
    let elements = list_elements(value)?;
    let mut kept = Vec::with_capacity(value.len());
    let mut any_dropped = false;
    for element in elements {
        let (ts, _) = unwrap(element)?;
        if ttl.is_expired(ts, now_ms) {
            any_dropped = true;
        } else {
            push_list_element(&mut kept, element);
        }
    }
    if kept.is_empty() {
        Ok(None)
    } else if any_dropped {
        Ok(Some(kept))
    } else {
        Ok(Some(value.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_boundary() {
        let ttl = TtlConfig::new(Duration::from_millis(10));
        assert!(!ttl.is_expired(100, 109));
        assert!(ttl.is_expired(100, 110));
        assert!(!ttl.is_expired(u64::MAX - 1, u64::MAX - 1));
    }

    #[test]
    fn drop_expired_values_and_list_elements() {
        let ttl = TtlConfig::new(Duration::from_millis(10));
        assert_eq!(
            drop_expired(false, &ttl, &wrap(5, b"x"), 14).unwrap(),
            Some(wrap(5, b"x"))
        );
        assert_eq!(drop_expired(false, &ttl, &wrap(5, b"x"), 15).unwrap(), None);
        let mut list = Vec::new();
        push_list_element(&mut list, &wrap(1, b"old"));
        push_list_element(&mut list, &wrap(20, b"new"));
        let mut expect = Vec::new();
        push_list_element(&mut expect, &wrap(20, b"new"));
        assert_eq!(drop_expired(true, &ttl, &list, 25).unwrap(), Some(expect));
        assert_eq!(drop_expired(true, &ttl, &list, 30).unwrap(), None);
        assert!(drop_expired(false, &ttl, b"short", 0).is_err());
        assert!(drop_expired(true, &ttl, &[5, 1], 0).is_err());
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(7);
        assert_eq!(c.now_ms(), 7);
        c.advance(3);
        assert_eq!(c.now_ms(), 10);
        c.set(1);
        assert_eq!(c.now_ms(), 1);
    }
}

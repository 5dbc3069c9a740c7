//! TTL semantics of typed state: what a read returns and what it writes back.
//!
//! Mirrors Flink's TTL decorators: an expired entry found on read is removed, and returned only
//! with [`Visibility::ReturnExpiredIfNotCleanedUp`]; a live entry read under
//! [`UpdateType::OnReadAndWrite`] gets a fresh timestamp. Lists and maps expire per element and
//! per entry. The byte envelope itself lives in [`crate::ttl`].

use serde::Serialize;
use serde::de::DeserializeOwned;

use std::collections::VecDeque;

use super::{Context, from_bytes};
use crate::backend::{Entry, StateId};
use crate::codec::varint::put_varint32;
use crate::error::{Error, Result};
use crate::ttl::{
    TTL_TIMESTAMP_LEN, TtlConfig, UpdateType, Visibility, next_list_element, push_list_element,
    unwrap, wrap,
};

pub use crate::ttl::Clock;

/// Encodes a payload for storage: wrapped with `now` when the state has a TTL.
pub(crate) fn encode(ttl: Option<&TtlConfig>, now_ms: u64, payload: &[u8]) -> Vec<u8> {
    match ttl {
        Some(_) => wrap(now_ms, payload),
        None => payload.to_vec(),
    }
}

/// Appends one list element frame (payload wrapped when the state has a TTL) to `out`.
pub(crate) fn push_element(
    out: &mut Vec<u8>,
    ttl: Option<&TtlConfig>,
    now_ms: u64,
    payload: &[u8],
) {
    match ttl {
        Some(_) => push_list_element(out, &wrap(now_ms, payload)),
        None => push_list_element(out, payload),
    }
}

/// The outcome of checking one stored envelope.
enum Check<'a> {
    Live { timestamp: u64, payload: &'a [u8] },
    Expired { payload: &'a [u8] },
}

fn check<'a>(ttl: &TtlConfig, now_ms: u64, stored: &'a [u8]) -> Result<Check<'a>> {
    let (timestamp, payload) = unwrap(stored)?;
    Ok(if ttl.is_expired(timestamp, now_ms) {
        Check::Expired { payload }
    } else {
        Check::Live { timestamp, payload }
    })
}

fn refresh_on_read(ttl: &TtlConfig) -> bool {
    ttl.update_type == UpdateType::OnReadAndWrite
}

fn return_expired(ttl: &TtlConfig) -> bool {
    ttl.visibility == Visibility::ReturnExpiredIfNotCleanedUp
}

/// Reads the payload under `key`, applying TTL (cleanup of expired, refresh on read).
pub(crate) fn get(
    ctx: &mut Context,
    id: StateId,
    ttl: Option<&TtlConfig>,
    key: &[u8],
) -> Result<Option<Vec<u8>>> {
    let Some(stored) = ctx.backend.get(id, key)? else {
        return Ok(None);
    };
    let Some(ttl) = ttl else {
        return Ok(Some(stored));
    };
    let now = ctx.now_ms();
    match check(ttl, now, &stored)? {
        Check::Expired { payload } => {
            let result = return_expired(ttl).then(|| payload.to_vec());
            ctx.backend.delete(id, key)?;
            Ok(result)
        }
        Check::Live { timestamp, payload } => {
            if refresh_on_read(ttl) && timestamp != now {
                ctx.backend.put(id, key, &wrap(now, payload))?;
            }
            Ok(Some(payload.to_vec()))
        }
    }
}

/// Stores `payload` under `key` with a fresh timestamp when the state has a TTL.
pub(crate) fn put(
    ctx: &mut Context,
    id: StateId,
    ttl: Option<&TtlConfig>,
    key: &[u8],
    payload: &[u8],
) -> Result<()> {
    match ttl {
        Some(ttl) => {
            let stored = encode(Some(ttl), ctx.now_ms(), payload);
            ctx.backend.put(id, key, &stored)
        }
        None => ctx.backend.put(id, key, payload),
    }
}

/// Read-modify-write of the value under `key` in one backend call, with the TTL semantics of
/// [`get`] followed by [`put`]: an expired value is passed to `f` only with
/// [`Visibility::ReturnExpiredIfNotCleanedUp`] (else `f` sees `None`), and the new value is
/// stored with a fresh timestamp (which also covers the removal or refresh a read would write).
/// Returns `f`'s value.
pub(crate) fn read_modify_write<T: Serialize + DeserializeOwned>(
    ctx: &mut Context,
    id: StateId,
    ttl: Option<&TtlConfig>,
    key: &[u8],
    f: impl FnOnce(Option<T>) -> T,
) -> Result<T> {
    let now = match ttl {
        Some(_) => ctx.now_ms(),
        None => 0,
    };
    let mut f = Some(f);
    let mut new = None;
    ctx.backend.read_modify_write(id, key, &mut |stored, out| {
        let old = match (stored, ttl) {
            (None, _) => None,
            (Some(stored), None) => Some(from_bytes(stored)?),
            (Some(stored), Some(ttl)) => match check(ttl, now, stored)? {
                Check::Live { payload, .. } => Some(from_bytes(payload)?),
                Check::Expired { payload } if return_expired(ttl) => Some(from_bytes(payload)?),
                Check::Expired { .. } => None,
            },
        };
        let f = f
            .take()
            .ok_or_else(|| Error::invalid("read_modify_write called its function twice"))?;
        let value = f(old);
        if ttl.is_some() {
            out.extend_from_slice(&now.to_be_bytes());
        }
        let buffer = postcard::to_extend(&value, std::mem::take(out))
            .map_err(|e| Error::Serialization(e.to_string()))?;
        *out = buffer;
        new = Some(value);
        Ok(())
    })?;
    new.ok_or_else(|| Error::invalid("read_modify_write did not call its function"))
}

/// Reads the list value under `key` for [`next_list_payload`], and the time to read it at.
/// With TTL, first writes back what the read changes, in one pass over the frames that
/// decodes no element: expired elements leave storage (the whole list when none is left) and,
/// under [`UpdateType::OnReadAndWrite`], live ones get a fresh timestamp. A damaged frame is an
/// error before anything is written.
pub(crate) fn read_list(
    ctx: &mut Context,
    id: StateId,
    ttl: Option<&TtlConfig>,
    key: &[u8],
) -> Result<Option<(Vec<u8>, u64)>> {
    let Some(stored) = ctx.backend.get(id, key)? else {
        return Ok(None);
    };
    let Some(ttl) = ttl else {
        return Ok(Some((stored, 0)));
    };
    let now = ctx.now_ms();
    let mut rewrite = false;
    let mut pos = 0;
    while let Some((element, next)) = next_list_element(&stored, pos)? {
        rewrite |= match check(ttl, now, element)? {
            Check::Expired { .. } => true,
            Check::Live { timestamp, .. } => refresh_on_read(ttl) && timestamp != now,
        };
        pos = next;
    }
    if rewrite {
        let mut kept = Vec::with_capacity(stored.len());
        let mut pos = 0;
        while let Some((element, next)) = next_list_element(&stored, pos)? {
            if let Check::Live { timestamp, payload } = check(ttl, now, element)? {
                let timestamp = if refresh_on_read(ttl) { now } else { timestamp };
                put_varint32(&mut kept, (TTL_TIMESTAMP_LEN + payload.len()) as u32);
                kept.extend_from_slice(&timestamp.to_be_bytes());
                kept.extend_from_slice(payload);
            }
            pos = next;
        }
        if kept.is_empty() {
            ctx.backend.delete(id, key)?;
        } else {
            ctx.backend.put(id, key, &kept)?;
        }
    }
    Ok(Some((stored, now)))
}

/// The payload of the next element a read of the list value `bytes` (from [`read_list`], read
/// at `now_ms`) returns, from the frame at `pos` on, and where the frame after it starts; `None`
/// at the end. Skips expired elements, unless the state's visibility returns them once.
pub(crate) fn next_list_payload<'a>(
    bytes: &'a [u8],
    mut pos: usize,
    ttl: Option<&TtlConfig>,
    now_ms: u64,
) -> Result<Option<(&'a [u8], usize)>> {
    while let Some((element, next)) = next_list_element(bytes, pos)? {
        let Some(ttl) = ttl else {
            return Ok(Some((element, next)));
        };
        match check(ttl, now_ms, element)? {
            Check::Live { payload, .. } => return Ok(Some((payload, next))),
            Check::Expired { payload } if return_expired(ttl) => return Ok(Some((payload, next))),
            Check::Expired { .. } => pos = next,
        }
    }
    Ok(None)
}

/// A scan of the entries under one prefix, read in chunks with TTL applied (the map
/// iterators' engine): each [`PrefixScan::fill`] is one backend call that resumes after the
/// last key read before.
pub(crate) struct PrefixScan {
    id: StateId,
    ttl: Option<TtlConfig>,
    /// The composite key of the (key, namespace) whose entries are scanned.
    prefix: Vec<u8>,
    /// The last composite key read, returned or not: the next chunk starts after it.
    after: Option<Vec<u8>>,
    /// Stored entries one backend call reads at most.
    chunk: usize,
    /// Entries read and not taken yet: (composite key, payload).
    pub buffer: VecDeque<Entry>,
    /// Whether the backend has no entry after `after` under the prefix.
    pub done: bool,
}

impl PrefixScan {
    /// A scan of `prefix` in state `id` reading at most `chunk` entries per call (at least 1).
    pub fn new(id: StateId, ttl: Option<TtlConfig>, prefix: Vec<u8>, chunk: usize) -> Self {
        PrefixScan {
            id,
            ttl,
            prefix,
            after: None,
            chunk: chunk.max(1),
            buffer: VecDeque::new(),
            done: false,
        }
    }

    /// Length of the prefix: a composite key past it is the entry's user key.
    pub fn prefix_len(&self) -> usize {
        self.prefix.len()
    }

    /// Reads the next chunk into `buffer`: in one backend call, at most `chunk` stored entries,
    /// and none after the `max_visible`-th returned one. TTL applies per entry as in [`get`]:
    /// an expired entry is returned only with [`Visibility::ReturnExpiredIfNotCleanedUp`] and is
    /// removed; a live one read under [`UpdateType::OnReadAndWrite`] gets a fresh timestamp.
    /// Those writes are made after the backend call, and touch keys of this chunk only. A chunk
    /// may return nothing (all expired) while `done` stays false.
    pub fn fill(&mut self, ctx: &mut Context, max_visible: usize) -> Result<()> {
        let ttl = self.ttl.as_ref();
        let now = match ttl {
            Some(_) => ctx.now_ms(),
            None => 0,
        };
        let mut expired = Vec::new();
        let mut refreshed = Vec::new();
        // Whether the last key read went into `buffer` (else it is the last of `expired`).
        let mut last_returned = true;
        let mut read = 0;
        let mut visible = 0;
        {
            let mut entries = match &self.after {
                None => ctx.backend.scan_prefix(self.id, &self.prefix)?,
                Some(after) => ctx
                    .backend
                    .scan_prefix_after(self.id, &self.prefix, after)?,
            };
            while read < self.chunk && visible < max_visible {
                let Some(entry) = entries.next() else {
                    self.done = true;
                    break;
                };
                let (key, stored) = entry?;
                read += 1;
                let Some(ttl) = ttl else {
                    self.buffer.push_back((key, stored));
                    visible += 1;
                    last_returned = true;
                    continue;
                };
                match check(ttl, now, &stored)? {
                    Check::Expired { payload } => {
                        last_returned = return_expired(ttl);
                        if last_returned {
                            self.buffer.push_back((key.clone(), payload.to_vec()));
                            visible += 1;
                        }
                        expired.push(key);
                    }
                    Check::Live { timestamp, payload } => {
                        if refresh_on_read(ttl) && timestamp != now {
                            refreshed.push((key.clone(), wrap(now, payload)));
                        }
                        self.buffer.push_back((key, payload.to_vec()));
                        visible += 1;
                        last_returned = true;
                    }
                }
            }
        }
        if read > 0 {
            let last = if last_returned {
                self.buffer.back().map(|(key, _)| key)
            } else {
                expired.last()
            };
            self.after = last.cloned();
        }
        for key in expired {
            ctx.backend.delete(self.id, &key)?;
        }
        for (key, value) in refreshed {
            ctx.backend.put(self.id, &key, &value)?;
        }
        Ok(())
    }
}

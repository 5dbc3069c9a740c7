//! TTL semantics of typed state: what a read returns and what it writes back.
//!
//! Mirrors Flink's TTL decorators: an expired entry found on read is removed, and returned only
//! with [`Visibility::ReturnExpiredIfNotCleanedUp`]; a live entry read under
//! [`UpdateType::OnReadAndWrite`] gets a fresh timestamp. Lists and maps expire per element and
//! per entry. The byte envelope itself lives in [`crate::ttl`].

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Context, from_bytes};
use crate::backend::StateId;
use crate::error::{Error, Result};
use crate::ttl::{
    TtlConfig, UpdateType, Visibility, list_elements, push_list_element, unwrap, wrap,
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

/// Reads a list's element payloads, dropping expired elements from storage.
pub(crate) fn get_list(
    ctx: &mut Context,
    id: StateId,
    ttl: Option<&TtlConfig>,
    key: &[u8],
) -> Result<Option<Vec<Vec<u8>>>> {
    let Some(stored) = ctx.backend.get(id, key)? else {
        return Ok(None);
    };
    let elements = list_elements(&stored)?;
    let Some(ttl) = ttl else {
        return Ok(Some(elements.into_iter().map(<[u8]>::to_vec).collect()));
    };
    let now = ctx.now_ms();
    let mut result = Vec::with_capacity(elements.len());
    let mut kept = Vec::with_capacity(stored.len());
    let mut rewrite = false;
    for element in elements {
        match check(ttl, now, element)? {
            Check::Expired { payload } => {
                rewrite = true;
                if return_expired(ttl) {
                    result.push(payload.to_vec());
                }
            }
            Check::Live { timestamp, payload } => {
                let refreshed = refresh_on_read(ttl) && timestamp != now;
                rewrite |= refreshed;
                let ts = if refreshed { now } else { timestamp };
                push_list_element(&mut kept, &wrap(ts, payload));
                result.push(payload.to_vec());
            }
        }
    }
    if rewrite {
        if kept.is_empty() {
            ctx.backend.delete(id, key)?;
        } else {
            ctx.backend.put(id, key, &kept)?;
        }
    }
    Ok((!result.is_empty()).then_some(result))
}

/// Scans every entry under `prefix`, applying TTL per entry; returns (user key, payload) pairs,
/// where the user key is the composite key with `prefix` removed.
pub(crate) fn scan(
    ctx: &mut Context,
    id: StateId,
    ttl: Option<&TtlConfig>,
    prefix: &[u8],
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let now = ctx.now_ms();
    let mut out = Vec::new();
    let mut expired = Vec::new();
    let mut refreshed = Vec::new();
    for entry in ctx.backend.scan_prefix(id, prefix)? {
        let (key, stored) = entry?;
        let user_key = key.get(prefix.len()..).unwrap_or_default().to_vec();
        let Some(ttl) = ttl else {
            out.push((user_key, stored));
            continue;
        };
        match check(ttl, now, &stored)? {
            Check::Expired { payload } => {
                if return_expired(ttl) {
                    out.push((user_key, payload.to_vec()));
                }
                expired.push(key);
            }
            Check::Live { timestamp, payload } => {
                if refresh_on_read(ttl) && timestamp != now {
                    refreshed.push((key, wrap(now, payload)));
                }
                out.push((user_key, payload.to_vec()));
            }
        }
    }
    for key in expired {
        ctx.backend.delete(id, &key)?;
    }
    for (key, value) in refreshed {
        ctx.backend.put(id, &key, &value)?;
    }
    Ok(out)
}

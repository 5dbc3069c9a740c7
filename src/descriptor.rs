//! What names a state and a backend on disk: [`StateDescriptor`] (name, kind, TTL; FORMAT.md
//! §3.4), [`StateKind`], [`StateId`] and [`BackendKind`]. Below both the checkpoint layer, whose
//! `_metadata` lists them, and the backends, which register and restore them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec::cursor::Cursor;
use crate::codec::varint::put_varint32;
use crate::error::{Error, Result};
use crate::ttl::{TtlConfig, UpdateType, Visibility};

/// The id a backend hands out when a state is registered; valid for that backend only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StateId(pub u32);

/// The kind of a state. It decides how values are laid out (FORMAT.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StateKind {
    /// One value per (key, namespace).
    Value,
    /// A list per (key, namespace), appended to with [`StateBackend::merge`](crate::StateBackend::merge).
    List,
    /// A map per (key, namespace): one stored entry per map key (the composite key's user key).
    Map,
    /// One accumulated value per (key, namespace), folded with a reduce function.
    Reducing,
    /// One accumulator per (key, namespace), folded with an aggregate function.
    Aggregating,
}

impl StateKind {
    /// On disk: never change. The tag of the kind in metadata (FORMAT.md §3).
    pub(crate) fn tag(self) -> u8 {
        match self {
            StateKind::Value => 0,
            StateKind::List => 1,
            StateKind::Map => 2,
            StateKind::Reducing => 3,
            StateKind::Aggregating => 4,
        }
    }

    /// The kind of an on-disk tag.
    pub(crate) fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            0 => StateKind::Value,
            1 => StateKind::List,
            2 => StateKind::Map,
            3 => StateKind::Reducing,
            4 => StateKind::Aggregating,
            _ => return None,
        })
    }
}

/// What identifies a state: name, kind, TTL and serializer id.
///
/// Registering the same name again must give an identical descriptor, or the backend answers
/// [`Error::StateMismatch`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StateDescriptor {
    /// Unique name of the state within the backend.
    pub name: String,
    /// The state's kind.
    pub kind: StateKind,
    /// TTL settings, if entries expire.
    pub ttl: Option<TtlConfig>,
    /// Names the value serializer (and its version); a different id on re-registration or restore
    /// is a mismatch. The typed layer uses `"postcard"` unless told otherwise.
    pub serializer: String,
}

impl StateDescriptor {
    /// A descriptor with no TTL and the default `"postcard"` serializer id.
    pub fn new(name: impl Into<String>, kind: StateKind) -> Self {
        StateDescriptor {
            name: name.into(),
            kind,
            ttl: None,
            serializer: "postcard".to_string(),
        }
    }

    /// Sets the TTL.
    pub fn with_ttl(mut self, ttl: TtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets the serializer id.
    pub fn with_serializer(mut self, serializer: impl Into<String>) -> Self {
        self.serializer = serializer.into();
        self
    }

    /// Checks that `requested` may use the state registered (or restored) as `self`.
    pub fn check_compatible(&self, requested: &StateDescriptor) -> Result<()> {
        if self == requested {
            return Ok(());
        }
        Err(Error::StateMismatch {
            name: self.name.clone(),
            existing: self.summary(),
            requested: requested.summary(),
        })
    }

    /// Appends the descriptor's on-disk encoding (FORMAT.md §3.4) to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_varint32(out, self.name.len() as u32);
        out.extend_from_slice(self.name.as_bytes());
        out.push(self.kind.tag());
        match &self.ttl {
            None => out.push(0),
            Some(ttl) => {
                out.push(1);
                out.extend_from_slice(&ttl.ttl_ms.to_le_bytes());
                out.push(match ttl.update_type {
                    UpdateType::OnCreateAndWrite => 0,
                    UpdateType::OnReadAndWrite => 1,
                });
                out.push(match ttl.visibility {
                    Visibility::NeverReturnExpired => 0,
                    Visibility::ReturnExpiredIfNotCleanedUp => 1,
                });
            }
        }
        put_varint32(out, self.serializer.len() as u32);
        out.extend_from_slice(self.serializer.as_bytes());
    }

    /// Decodes a descriptor written by [`StateDescriptor::encode`].
    pub(crate) fn decode(cursor: &mut Cursor<'_>) -> Result<Self> {
        let name = cursor.string("state name")?;
        let at = cursor.offset();
        let tag = cursor.u8("state kind")?;
        let kind = StateKind::from_tag(tag).ok_or_else(|| {
            Error::corruption(cursor.file(), at, format!("unknown state kind {tag}"))
        })?;
        let at = cursor.offset();
        let ttl = match cursor.u8("ttl flag")? {
            0 => None,
            1 => {
                let ttl_ms = cursor.u64_le("ttl")?;
                let at = cursor.offset();
                let update_type = match cursor.u8("ttl update type")? {
                    0 => UpdateType::OnCreateAndWrite,
                    1 => UpdateType::OnReadAndWrite,
                    t => {
                        return Err(Error::corruption(
                            cursor.file(),
                            at,
                            format!("unknown TTL update type {t}"),
                        ));
                    }
                };
                let at = cursor.offset();
                let visibility = match cursor.u8("ttl visibility")? {
                    0 => Visibility::NeverReturnExpired,
                    1 => Visibility::ReturnExpiredIfNotCleanedUp,
                    t => {
                        return Err(Error::corruption(
                            cursor.file(),
                            at,
                            format!("unknown TTL visibility {t}"),
                        ));
                    }
                };
                Some(TtlConfig {
                    ttl_ms,
                    update_type,
                    visibility,
                })
            }
            flag => {
                return Err(Error::corruption(
                    cursor.file(),
                    at,
                    format!("bad TTL flag {flag}"),
                ));
            }
        };
        let serializer = cursor.string("serializer id")?;
        if name.is_empty() {
            return Err(cursor.error("state name is empty"));
        }
        Ok(StateDescriptor {
            name,
            kind,
            ttl,
            serializer,
        })
    }

    fn summary(&self) -> String {
        let ttl = match &self.ttl {
            None => "no TTL".to_string(),
            Some(t) => format!(
                "TTL {} ms ({:?}, {:?})",
                t.ttl_ms, t.update_type, t.visibility
            ),
        };
        format!(
            "{:?} state, {ttl}, serializer '{}'",
            self.kind, self.serializer
        )
    }
}

/// Which implementation a backend (or a snapshot handle) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BackendKind {
    /// [`MemoryBackend`](crate::MemoryBackend).
    Memory,
    /// The file-system backend (heap state, full snapshots as files).
    Fs,
    /// The log-structured backend (incremental snapshots).
    Lsm,
}

impl BackendKind {
    /// On disk: never change. The tag of the kind in `_metadata` (FORMAT.md).
    pub(crate) fn tag(self) -> u8 {
        match self {
            BackendKind::Memory => 0,
            BackendKind::Fs => 1,
            BackendKind::Lsm => 2,
        }
    }

    /// The kind of an on-disk tag.
    pub(crate) fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            0 => BackendKind::Memory,
            1 => BackendKind::Fs,
            2 => BackendKind::Lsm,
            _ => return None,
        })
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Memory => "memory",
            BackendKind::Fs => "fs",
            BackendKind::Lsm => "lsm",
        })
    }
}

//! The one error type of the crate.
//!
//! Every fallible function returns [`Result<T>`]. Anything read from outside the process (files,
//! handles, user input) that is wrong becomes an `Error`, never a panic: corrupt bytes become
//! [`Error::Corruption`] naming the file and the byte offset where the problem was seen.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::keys::KeyGroupRange;

/// Result alias used throughout flowstate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in flowstate.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed on `path`.
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// Bytes read from `file` are not what the format allows (FORMAT.md is the reference).
    Corruption {
        /// The file (or logical stream, such as an in-memory buffer) the bytes came from.
        file: String,
        /// Byte offset within `file` where the problem was detected.
        offset: u64,
        /// What was wrong, in words.
        what: String,
    },
    /// A caller passed something the API does not accept; the message says what and why.
    InvalidArgument(String),
    /// A state was registered again under the same name with a different kind, TTL or serializer.
    StateMismatch {
        /// The state's name.
        name: String,
        /// What is already registered (or stored in the restored snapshot).
        existing: String,
        /// What the caller asked for.
        requested: String,
    },
    /// A composite key's key group is not owned by this backend.
    KeyGroupOutOfRange {
        /// The key group of the key.
        key_group: u16,
        /// The range the backend owns.
        range: KeyGroupRange,
    },
    /// A snapshot handle of one backend kind was given to a backend of another kind.
    BackendMismatch {
        /// The kind of the backend asked to restore.
        expected: String,
        /// The kind recorded in the handle.
        found: String,
    },
    /// A state id that this backend never handed out.
    UnknownState(u32),
    /// A value could not be serialized or deserialized with the state's serializer.
    Serialization(String),
    /// The backend (or store) was closed or failed earlier and accepts no more calls.
    Closed,
    /// Resuming the job would break exactly-once output (a newer checkpoint is damaged or
    /// missing while output it committed is still there); the message says what was found and
    /// what the user can do.
    ResumeRefused(String),
}

impl Error {
    /// Builds an [`Error::Io`] from an `io::Error` and the path it concerned.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Corruption`].
    pub fn corruption(file: impl fmt::Display, offset: u64, what: impl Into<String>) -> Self {
        Error::Corruption {
            file: file.to_string(),
            offset,
            what: what.into(),
        }
    }

    /// Builds an [`Error::Corruption`] in the cursor's file at absolute offset `offset`.
    pub fn corruption_at(
        cursor: &crate::codec::cursor::Cursor<'_>,
        offset: u64,
        what: impl Into<String>,
    ) -> Self {
        Self::corruption(cursor.file(), offset, what)
    }

    /// Builds an [`Error::InvalidArgument`].
    pub fn invalid(what: impl Into<String>) -> Self {
        Error::InvalidArgument(what.into())
    }

    /// True for [`Error::Corruption`].
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "I/O error on {}: {source}", path.display()),
            Error::Corruption { file, offset, what } => write!(
                f,
                "corruption in {file} at byte {offset}: {what} \
                 (the file is damaged; restore from an older checkpoint or run `flowstate verify`)"
            ),
            Error::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            Error::StateMismatch {
                name,
                existing,
                requested,
            } => write!(
                f,
                "state '{name}' is already registered as {existing} but was requested as \
                 {requested}; use a new state name or migrate the state through a savepoint"
            ),
            Error::KeyGroupOutOfRange { key_group, range } => write!(
                f,
                "key group {key_group} is outside this backend's key-group range {range}; \
                 the key was routed to the wrong task"
            ),
            Error::BackendMismatch { expected, found } => write!(
                f,
                "cannot restore a {found} snapshot into a {expected} backend; \
                 use a savepoint to move state between backend kinds"
            ),
            Error::UnknownState(id) => write!(f, "unknown state id {id}: register the state first"),
            Error::Serialization(what) => write!(f, "serialization failed: {what}"),
            Error::Closed => write!(f, "the backend is closed or failed earlier"),
            Error::ResumeRefused(what) => write!(f, "cannot resume exactly once: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corruption_message_names_file_and_offset() {
        let e = Error::corruption("chk-3/_metadata", 17, "bad crc32");
        let s = e.to_string();
        assert!(s.contains("chk-3/_metadata"), "{s}");
        assert!(s.contains("byte 17"), "{s}");
        assert!(e.is_corruption());
    }

    #[test]
    fn io_error_keeps_source_and_path() {
        let e = Error::io("/nope", io::Error::new(io::ErrorKind::NotFound, "gone"));
        assert!(e.to_string().contains("/nope"));
        assert!(std::error::Error::source(&e).is_some());
    }
}

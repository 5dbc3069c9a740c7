//! The one error type of the crate.
//!
//! Every fallible function returns [`Result<T>`]. Anything read from outside the process (files,
//! handles, user input) that is wrong becomes an `Error`, never a panic: corrupt bytes become
//! [`Error::Corruption`] naming the file and the byte offset where the problem was seen.
//!
//! Each variant is one kind of failure a caller can match on; [`Error::Context`] adds what was
//! being done without changing the kind ([`Error::root_cause`] finds it). An error's `Display`
//! is the whole chain, `what: what: cause`, so `std::error::Error::source` returns `None`: a
//! report that walks sources would print every cause twice otherwise. The operating system's
//! error stays available as [`Error::io_error`].

use std::fmt;
use std::io;
use std::path::PathBuf;

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
    /// An option has a value it cannot have: `option` names it (as a path such as
    /// `lsm::Options::write_buffer_size`), `what` says what is wrong.
    InvalidOption {
        /// The option's name.
        option: String,
        /// What is wrong with its value.
        what: String,
    },
    /// Something named does not exist: a column family, a state, a checkpoint, a store.
    NotFound(String),
    /// A directory, store or checkpoint storage is held by another process or job.
    InUse(String),
    /// State or checkpoints were made with a configuration this run cannot continue from (another
    /// backend kind or max parallelism, an unfinished in-memory run); the message says which and
    /// what to do.
    Incompatible(String),
    /// A size or count limit would be exceeded (states, batch size, record size, sequences).
    LimitExceeded(String),
    /// A checkpoint could not be taken or completed; the job goes on and a later one may succeed.
    CheckpointFailed {
        /// The checkpoint's id.
        checkpoint_id: u64,
        /// Why.
        what: String,
    },
    /// A task, the checkpoint coordinator or an observer panicked; the message is the panic's.
    Panicked(String),
    /// The work was cancelled because another part of the job failed first.
    Cancelled(String),
    /// A failure injected by a test's failure schedule.
    Injected(String),
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
        /// The first key group the backend owns.
        first: u16,
        /// The last key group the backend owns (inclusive).
        last: u16,
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
    /// `source` happened while doing `what`: context added on the way up, without changing
    /// what went wrong (see [`Error::root_cause`]; the Display shows both, `source()` returns
    /// `source`).
    Context {
        /// What was being done, in words.
        what: String,
        /// The error underneath (its kind is the kind of the whole).
        source: Box<Error>,
    },
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

    /// Builds an [`Error::InvalidArgument`].
    pub fn invalid(what: impl Into<String>) -> Self {
        Error::InvalidArgument(what.into())
    }

    /// Builds an [`Error::NotFound`].
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound(what.into())
    }

    /// Builds an [`Error::InUse`].
    pub fn in_use(what: impl Into<String>) -> Self {
        Error::InUse(what.into())
    }

    /// Builds an [`Error::Incompatible`].
    pub fn incompatible(what: impl Into<String>) -> Self {
        Error::Incompatible(what.into())
    }

    /// Builds an [`Error::LimitExceeded`].
    pub fn limit_exceeded(what: impl Into<String>) -> Self {
        Error::LimitExceeded(what.into())
    }

    /// Builds an [`Error::Panicked`].
    pub fn panicked(what: impl Into<String>) -> Self {
        Error::Panicked(what.into())
    }

    /// Builds an [`Error::Cancelled`].
    pub fn cancelled(what: impl Into<String>) -> Self {
        Error::Cancelled(what.into())
    }

    /// Builds an [`Error::Injected`].
    pub fn injected(what: impl Into<String>) -> Self {
        Error::Injected(what.into())
    }

    /// Builds an [`Error::InvalidOption`].
    pub fn invalid_option(option: impl Into<String>, what: impl Into<String>) -> Self {
        Error::InvalidOption {
            option: option.into(),
            what: what.into(),
        }
    }

    /// Builds an [`Error::CheckpointFailed`].
    pub fn checkpoint_failed(checkpoint_id: u64, what: impl Into<String>) -> Self {
        Error::CheckpointFailed {
            checkpoint_id,
            what: what.into(),
        }
    }

    /// The operating system's error under every [`Error::Context`], if this is an
    /// [`Error::Io`].
    pub fn io_error(&self) -> Option<&io::Error> {
        match self.root_cause() {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }

    /// True for [`Error::Corruption`] (under any [`Error::Context`]).
    pub fn is_corruption(&self) -> bool {
        matches!(self.root_cause(), Error::Corruption { .. })
    }

    /// Wraps `self` in [`Error::Context`]: `what` failed because of `self`.
    pub fn context(self, what: impl Into<String>) -> Self {
        Error::Context {
            what: what.into(),
            source: Box::new(self),
        }
    }

    /// The error under every [`Error::Context`]: what actually went wrong.
    pub fn root_cause(&self) -> &Error {
        let mut error = self;
        while let Error::Context { source, .. } = error {
            error = source;
        }
        error
    }

    /// An fsync of `path` failed: an [`Error::Io`] in an [`Error::Context`] saying so. After a
    /// failed fsync the page cache may have dropped the unwritten data, so retrying cannot be
    /// trusted ([`Error::is_curable_by_restart`] is false).
    pub fn fsync(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::io(path, source).context(FSYNC_FAILED)
    }

    /// Whether restarting the job (from its last checkpoint) may cure this error. False for a
    /// full disk, an exceeded quota, a read-only file system ([`io_error_is_permanent`]) and a
    /// failed fsync ([`Error::fsync`]), which every restart would meet again (or, for fsync,
    /// cannot recover from safely); true for everything else.
    pub fn is_curable_by_restart(&self) -> bool {
        let mut error = self;
        loop {
            match error {
                Error::Context { what, .. } if what == FSYNC_FAILED => return false,
                Error::Context { source, .. } => error = source,
                Error::Io { source, .. } => return !io_error_is_permanent(source),
                _ => return true,
            }
        }
    }
}

/// The [`Error::Context`] text of a failed fsync ([`Error::fsync`]).
const FSYNC_FAILED: &str = "fsync failed";

/// Whether `error` is one no retry cures: ENOSPC (28, no space left on device), EROFS (30,
/// read-only file system), EDQUOT (122, disk quota exceeded), by raw OS error or by kind.
pub fn io_error_is_permanent(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(28 | 30 | 122))
        || matches!(
            error.kind(),
            io::ErrorKind::StorageFull
                | io::ErrorKind::ReadOnlyFilesystem
                | io::ErrorKind::QuotaExceeded
        )
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "I/O error on {}: {source}", path.display()),
            Error::Corruption { file, offset, what } => {
                write!(f, "corruption in {file} at byte {offset}: {what}")
            }
            Error::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            Error::InvalidOption { option, what } => write!(f, "invalid option {option}: {what}"),
            Error::NotFound(what) => write!(f, "not found: {what}"),
            Error::InUse(what) => write!(f, "in use: {what}"),
            Error::Incompatible(what) => write!(f, "incompatible state: {what}"),
            Error::LimitExceeded(what) => write!(f, "limit exceeded: {what}"),
            Error::CheckpointFailed {
                checkpoint_id,
                what,
            } => write!(f, "checkpoint {checkpoint_id} failed: {what}"),
            Error::Panicked(what) => write!(f, "panicked: {what}"),
            Error::Cancelled(what) => write!(f, "cancelled: {what}"),
            Error::Injected(what) => write!(f, "injected failure: {what}"),
            Error::StateMismatch {
                name,
                existing,
                requested,
            } => write!(
                f,
                "state '{name}' is already registered as {existing} but was requested as \
                 {requested}; use a new state name or migrate the state through a savepoint"
            ),
            Error::KeyGroupOutOfRange {
                key_group,
                first,
                last,
            } => write!(
                f,
                "key group {key_group} is outside this backend's key-group range \
                 [{first}..={last}]; \
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
            Error::Context { what, source } => write!(f, "{what}: {source}"),
            Error::ResumeRefused(what) => write!(f, "cannot resume exactly once: {what}"),
        }
    }
}

/// `source()` is `None` for every variant: `Display` already shows the whole chain (see the
/// module docs); [`Error::root_cause`] and [`Error::io_error`] give the causes.
impl std::error::Error for Error {}

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
    fn full_disk_read_only_quota_and_fsync_are_not_curable_by_restart() {
        let os = |code| Error::io("/out/part-0-3", io::Error::from_raw_os_error(code));
        for code in [28, 30, 122] {
            assert!(!os(code).is_curable_by_restart(), "os error {code}");
            assert!(io_error_is_permanent(&io::Error::from_raw_os_error(code)));
        }
        for kind in [
            io::ErrorKind::StorageFull,
            io::ErrorKind::ReadOnlyFilesystem,
            io::ErrorKind::QuotaExceeded,
        ] {
            assert!(io_error_is_permanent(&io::Error::from(kind)), "{kind:?}");
        }
        for code in [2, 4, 5, 11, 13, 110] {
            assert!(os(code).is_curable_by_restart(), "os error {code}");
        }
        for kind in [
            io::ErrorKind::NotFound,
            io::ErrorKind::Interrupted,
            io::ErrorKind::TimedOut,
            io::ErrorKind::PermissionDenied,
        ] {
            assert!(!io_error_is_permanent(&io::Error::from(kind)), "{kind:?}");
        }
        // A failed fsync is not curable whatever its OS error; context keeps the verdict.
        let fsync = Error::fsync("/out/.part-0-3.pending", io::Error::from_raw_os_error(5));
        assert!(!fsync.is_curable_by_restart());
        assert!(!os(28).context("sink 0 failed").is_curable_by_restart());
        assert!(Error::invalid("injected").is_curable_by_restart());
        assert!(Error::corruption("f", 0, "bad").is_curable_by_restart());
    }

    #[test]
    fn context_keeps_the_kind_and_the_chain_is_printed_once() {
        let e = Error::io("/state/x", io::Error::from_raw_os_error(28))
            .context("sink 0 failed")
            .context("job failed after 0 restarts");
        assert!(
            matches!(e.root_cause(), Error::Io { source, .. } if source.raw_os_error() == Some(28))
        );
        let text = e.to_string();
        assert!(
            text.starts_with("job failed after 0 restarts: sink 0 failed: I/O error on /state/x"),
            "{text}"
        );
        assert_eq!(text.matches("os error 28").count(), 1, "{text}");
        assert!(!text.contains("invalid argument"), "{text}");
        // No source: a reporter walking sources prints the chain once, from Display.
        assert!(std::error::Error::source(&e).is_none());
        assert_eq!(e.io_error().and_then(io::Error::raw_os_error), Some(28));
    }

    #[test]
    fn io_error_keeps_source_and_path() {
        let e = Error::io("/nope", io::Error::new(io::ErrorKind::NotFound, "gone"));
        assert!(e.to_string().contains("/nope"));
        assert!(e.to_string().contains("gone"));
        assert_eq!(
            e.io_error().map(io::Error::kind),
            Some(io::ErrorKind::NotFound)
        );
    }
}

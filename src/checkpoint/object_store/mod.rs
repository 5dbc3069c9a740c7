//! [`ObjectStoreCheckpointStorage`]: checkpoint storage on an object store (S3, GCS, Azure,
//! in-memory, local files through the `object_store` crate); layout in FORMAT.md §4.5.
//!
//! Object key = prefix + "/" + storage path. No temp objects, no renames: data objects are PUT
//! under their final keys, and `chk-<id>/_metadata`, PUT after every data PUT returned, is the
//! commit point. The async client runs on a small tokio runtime owned by the storage.

mod build;
mod writer;

use std::fmt;
use std::io;
use std::sync::Arc;

use ::object_store::path::Path as ObjectPath;
use ::object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use futures_util::{StreamExt, TryStreamExt};

use super::storage::{
    CheckpointFileWriter, CheckpointStorage, METADATA_FILE_NAME, metadata_path, validate_path,
};
use super::uri::{Location, StorageOptions};
use crate::error::{Error, Result};

/// What every clone and file writer of one storage shares.
struct Shared {
    store: Arc<dyn ObjectStore>,
    /// Key prefix without a trailing `/`; empty for the bucket root.
    prefix: String,
    /// The normalized URI, [`CheckpointStorage::location`].
    uri: String,
    runtime: OwnedRuntime,
    part_size: usize,
    upload_parallelism: usize,
    /// What the storage was opened with, lent to [`CheckpointStorage::open_sibling`].
    location: Location,
    options: StorageOptions,
}

/// The storage's tokio runtime. Dropped inside another runtime (the caller's async code) a
/// runtime must not block on its workers, so it is then shut down in the background.
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for OwnedRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &Self::Target {
        // `Some` from construction until `drop`, which alone takes it.
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("runtime used after drop"))
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            runtime.shutdown_background();
        }
    }
}

/// Whether an error message of the `object_store` crate reports HTTP 401/403 (its list and some
/// other requests wrap them in `Error::Generic`).
fn is_access_denied(e: &::object_store::Error) -> bool {
    let text = e.to_string();
    [
        "403 Forbidden",
        "401 Unauthorized",
        "AccessDenied",
        "InvalidAccessKeyId",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

impl Shared {
    /// The object key of a storage path (checked with [`validate_path`]).
    fn key(&self, path: &str) -> Result<ObjectPath> {
        validate_path(path)?;
        Ok(self.raw_key(path))
    }

    fn raw_key(&self, path: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(path)
        } else {
            ObjectPath::from(format!("{}/{path}", self.prefix))
        }
    }

    /// The key of a directory prefix (`""` is the storage root); None for the bucket root.
    fn prefix_key(&self, prefix: &str) -> Result<Option<ObjectPath>> {
        if prefix.is_empty() {
            return Ok((!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str())));
        }
        self.key(prefix).map(Some)
    }

    /// The storage path of an object key; None for a key outside the prefix.
    fn relative(&self, key: &ObjectPath) -> Option<String> {
        let key = key.as_ref();
        if self.prefix.is_empty() {
            return Some(key.to_string());
        }
        key.strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')
            .map(str::to_string)
    }

    /// Maps an `object_store` error on `path` to [`Error::Io`] naming the object's URI.
    fn error(&self, path: &str, e: ::object_store::Error) -> Error {
        let uri = if path.is_empty() {
            self.uri.clone()
        } else {
            format!("{}/{path}", self.uri)
        };
        let (kind, message) = match &e {
            ::object_store::Error::NotFound { .. } => {
                (io::ErrorKind::NotFound, format!("{uri} does not exist"))
            }
            ::object_store::Error::AlreadyExists { .. }
            | ::object_store::Error::Precondition { .. } => (
                io::ErrorKind::AlreadyExists,
                format!("{uri} exists already (checkpoint files are written once)"),
            ),
            ::object_store::Error::PermissionDenied { .. }
            | ::object_store::Error::Unauthenticated { .. } => (
                io::ErrorKind::PermissionDenied,
                format!(
                    "access denied to {} (check credentials / bucket policy): {e}",
                    self.uri
                ),
            ),
            _ if is_access_denied(&e) => (
                io::ErrorKind::PermissionDenied,
                format!(
                    "access denied to {} (check credentials / bucket policy): {e}",
                    self.uri
                ),
            ),
            _ => (
                io::ErrorKind::Other,
                format!("request to {uri} failed (is the endpoint reachable?): {e}"),
            ),
        };
        Error::io(uri, io::Error::new(kind, message))
    }

    /// Runs `future` to completion on the storage's runtime. From inside another tokio runtime
    /// (a caller's async code) `block_on` would panic, so there it runs on a scoped thread.
    fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.runtime.block_on(future);
        }
        std::thread::scope(
            |scope| match scope.spawn(|| self.runtime.block_on(future)).join() {
                Ok(output) => output,
                Err(panic) => std::panic::resume_unwind(panic),
            },
        )
    }

    /// PUTs a new object at `key` (storage path `path`) only if none is there (FORMAT.md §4.5:
    /// names are written once); an existing object is an `AlreadyExists` error. A store without
    /// conditional PUT is asked first (not atomic, but one writer owns a root).
    fn put_new(&self, path: &str, key: &ObjectPath, payload: PutPayload) -> Result<()> {
        let options = PutOptions::from(PutMode::Create);
        match self.run(self.store.put_opts(key, payload.clone(), options)) {
            Ok(_) => Ok(()),
            Err(::object_store::Error::NotImplemented { .. }) => {
                self.refuse_existing(path, key)?;
                self.block_on(path, self.store.put(key, payload))
                    .map(|_| ())
            }
            Err(e) => Err(self.error(path, e)),
        }
    }

    /// An `AlreadyExists` error when an object is at `key`.
    fn refuse_existing(&self, path: &str, key: &ObjectPath) -> Result<()> {
        match self.run(self.store.head(key)) {
            Ok(_) => Err(self.error(
                path,
                ::object_store::Error::AlreadyExists {
                    path: path.to_string(),
                    source: "HEAD found an object".into(),
                },
            )),
            Err(::object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(path, e)),
        }
    }

    fn block_on<T: Send>(
        &self,
        path: &str,
        future: impl Future<Output = ::object_store::Result<T>> + Send,
    ) -> Result<T> {
        self.run(future).map_err(|e| self.error(path, e))
    }
}

/// [`CheckpointStorage`] on an object store, opened from a URI with
/// [`open_storage`](super::uri::open_storage) (FORMAT.md §4.5).
///
/// ```
/// use flowstate::checkpoint::storage::CheckpointStorage;
/// use flowstate::checkpoint::uri::open_storage;
///
/// let storage = open_storage("memory://object-store-doc/job")?;
/// storage.write_file("chk-1/kg-0", b"data")?;
/// storage.publish_metadata(1, b"metadata bytes")?;
/// assert_eq!(storage.list("chk-1")?, ["chk-1/_metadata", "chk-1/kg-0"]);
/// # Ok::<(), flowstate::Error>(())
/// ```
#[derive(Clone)]
pub struct ObjectStoreCheckpointStorage {
    shared: Arc<Shared>,
}

impl fmt::Debug for ObjectStoreCheckpointStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreCheckpointStorage")
            .field("uri", &self.shared.uri)
            .field("part_size", &self.shared.part_size)
            .field("upload_parallelism", &self.shared.upload_parallelism)
            .finish()
    }
}

impl ObjectStoreCheckpointStorage {
    /// Opens the store of a parsed location (not a plain directory).
    pub(crate) fn open(location: &Location, options: &StorageOptions) -> Result<Self> {
        let uri = location.uri();
        let prefix = match location {
            Location::Cloud { prefix, .. } | Location::Memory { prefix, .. } => prefix.clone(),
            Location::File { .. } | Location::Dir { .. } => String::new(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("flowstate-object-store")
            .enable_all()
            .build()
            .map_err(|e| Error::io(&uri, e))?;
        // Building a cloud client does no I/O, but keep it inside the runtime: some builders
        // look for a reactor.
        let store = {
            let _guard = runtime.enter();
            build::build_store(location, options)?
        };
        Ok(ObjectStoreCheckpointStorage {
            shared: Arc::new(Shared {
                store,
                prefix,
                uri,
                runtime: OwnedRuntime(Some(runtime)),
                part_size: options.part_size.max(1),
                upload_parallelism: options.upload_parallelism.max(1),
                location: location.clone(),
                options: options.clone(),
            }),
        })
    }

    /// Object metadata of `path`, None when it does not exist.
    fn head(&self, path: &str) -> Result<Option<u64>> {
        let key = self.shared.key(path)?;
        match self.shared.run(self.shared.store.head(&key)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(::object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.shared.error(path, e)),
        }
    }

    /// Deletes objects by key; missing ones are fine.
    fn delete_keys(&self, keys: Vec<ObjectPath>) -> Result<()> {
        let shared = &self.shared;
        let stream = futures_util::stream::iter(keys.into_iter().map(Ok)).boxed();
        let results: Vec<_> = shared.run(shared.store.delete_stream(stream).collect::<Vec<_>>());
        for result in results {
            match result {
                Ok(_) | Err(::object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(shared.error("", e)),
            }
        }
        Ok(())
    }
}

impl CheckpointStorage for ObjectStoreCheckpointStorage {
    fn location(&self) -> String {
        self.shared.uri.clone()
    }

    fn create_file(&self, path: &str) -> Result<Box<dyn CheckpointFileWriter>> {
        let key = self.shared.key(path)?;
        Ok(Box::new(writer::ObjectFileWriter {
            shared: self.shared.clone(),
            path: path.to_string(),
            key,
            buffer: Vec::new(),
            upload: None,
            written: 0,
        }))
    }

    fn write_file(&self, path: &str, bytes: &[u8]) -> Result<()> {
        if bytes.len() > self.shared.part_size {
            let mut writer = self.create_file(path)?;
            writer.write_all(bytes)?;
            return writer.finish().map(|_| ());
        }
        let key = self.shared.key(path)?;
        self.shared
            .put_new(path, &key, PutPayload::from(bytes.to_vec()))
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let key = self.shared.key(path)?;
        let store = &self.shared.store;
        let bytes = self
            .shared
            .block_on(path, async { store.get(&key).await?.bytes().await })?;
        Ok(Vec::from(bytes))
    }

    fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let size = self.file_size(path)?;
        let end = offset.checked_add(len).filter(|end| *end <= size);
        let Some(end) = end else {
            return Err(Error::corruption(
                path,
                offset,
                format!("range of {len} bytes at {offset} exceeds the file size {size}"),
            ));
        };
        if len == 0 {
            return Ok(Vec::new());
        }
        let key = self.shared.key(path)?;
        let bytes = self
            .shared
            .block_on(path, self.shared.store.get_range(&key, offset..end))?;
        if bytes.len() as u64 != len {
            // The object changed between HEAD and GET.
            return Err(Error::corruption(
                path,
                offset,
                format!("ranged read returned {} bytes, expected {len}", bytes.len()),
            ));
        }
        Ok(Vec::from(bytes))
    }

    fn file_size(&self, path: &str) -> Result<u64> {
        self.head(path)?.ok_or_else(|| {
            self.shared.error(
                path,
                ::object_store::Error::NotFound {
                    path: path.to_string(),
                    source: "HEAD found no object".into(),
                },
            )
        })
    }

    fn exists(&self, path: &str) -> Result<bool> {
        Ok(self.head(path)?.is_some())
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .list_sizes(prefix)?
            .into_iter()
            .map(|(path, _)| path)
            .collect())
    }

    fn list_sizes(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let key = self.shared.prefix_key(prefix)?;
        let shared = &self.shared;
        let listed = shared.run(
            shared
                .store
                .list(key.as_ref())
                .map_ok(|meta| (meta.location, meta.size))
                .try_collect::<Vec<_>>(),
        );
        let objects = match listed {
            Ok(objects) => objects,
            Err(::object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(shared.error(prefix, e)),
        };
        let mut out: Vec<(String, u64)> = objects
            .iter()
            .filter_map(|(key, size)| Some((shared.relative(key)?, *size)))
            .collect();
        out.sort();
        Ok(out)
    }

    fn children(&self, prefix: &str) -> Result<Vec<String>> {
        let key = self.shared.prefix_key(prefix)?;
        let shared = &self.shared;
        let listed = shared.run(shared.store.list_with_delimiter(key.as_ref()));
        let listed = match listed {
            Ok(listed) => listed,
            Err(::object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(shared.error(prefix, e)),
        };
        let names = listed
            .common_prefixes
            .iter()
            .chain(listed.objects.iter().map(|o| &o.location))
            .filter_map(|k| k.filename().map(str::to_string));
        let mut out: Vec<String> = names.collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn delete(&self, path: &str) -> Result<()> {
        let key = self.shared.key(path)?;
        match self.shared.run(self.shared.store.delete(&key)) {
            Ok(()) | Err(::object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.shared.error(path, e)),
        }
    }

    fn delete_all(&self, prefix: &str) -> Result<()> {
        if prefix.is_empty() {
            return Err(Error::invalid(
                "refusing to delete the whole checkpoint storage",
            ));
        }
        let paths = self.list(prefix)?;
        // A `_metadata` goes first (FORMAT.md §4.5): a crash part way leaves an incomplete
        // checkpoint, never a completed one with files missing.
        let (metadata, data): (Vec<String>, Vec<String>) = paths
            .into_iter()
            .partition(|p| p.rsplit('/').next() == Some(METADATA_FILE_NAME));
        let keys = |paths: Vec<String>| paths.iter().map(|p| self.shared.raw_key(p)).collect();
        self.delete_keys(keys(metadata))?;
        self.delete_keys(keys(data))
    }

    fn publish_metadata(&self, checkpoint_id: u64, bytes: &[u8]) -> Result<()> {
        // FORMAT.md §4.5: every data object was PUT (and acknowledged) before this call, so
        // this single PUT is the commit point; S3 makes the whole object visible at once.
        let path = metadata_path(checkpoint_id);
        let key = self.shared.key(&path)?;
        let payload = PutPayload::from(bytes.to_vec());
        self.shared
            .block_on(&path, self.shared.store.put(&key, payload))
            .map(|_| ())
    }

    fn unpublish_metadata(&self, checkpoint_id: u64) -> Result<()> {
        self.delete(&metadata_path(checkpoint_id))
    }

    fn create_once(&self, path: &str, bytes: &[u8]) -> Result<bool> {
        // Asked first as well: some servers (Garage 2.x) ignore `If-None-Match: *` and would
        // replace the object. Then atomic where the server honours the condition.
        if self.head(path)?.is_some() {
            return Ok(false);
        }
        let key = self.shared.key(path)?;
        let payload = PutPayload::from(bytes.to_vec());
        let options = PutOptions::from(PutMode::Create);
        match self
            .shared
            .run(self.shared.store.put_opts(&key, payload, options))
        {
            Ok(_) => Ok(true),
            Err(::object_store::Error::AlreadyExists { .. })
            | Err(::object_store::Error::Precondition { .. }) => Ok(false),
            Err(::object_store::Error::NotImplemented { .. }) => {
                // No conditional PUT in this store: look, then write (not atomic).
                if self.head(path)?.is_some() {
                    return Ok(false);
                }
                self.write_file(path, bytes)?;
                Ok(true)
            }
            Err(e) => Err(self.shared.error(path, e)),
        }
    }

    fn upload_parallelism(&self) -> usize {
        self.shared.upload_parallelism
    }

    fn copy_from(&self, source: &dyn CheckpointStorage, from: &str, to: &str) -> Result<bool> {
        // Only inside one bucket (or one in-process store): there this client reaches the
        // source's objects too, under the source's prefix.
        let Ok(theirs) = Location::parse(&source.location()) else {
            return Ok(false);
        };
        let their_prefix = match (&self.shared.location, &theirs) {
            (
                Location::Cloud {
                    scheme: a,
                    bucket: b,
                    ..
                },
                Location::Cloud {
                    scheme: c,
                    bucket: d,
                    prefix,
                },
            ) if a == c && b == d => prefix,
            (Location::Memory { name: a, .. }, Location::Memory { name: b, prefix }) if a == b => {
                prefix
            }
            _ => return Ok(false),
        };
        validate_path(from)?;
        let from_key = if their_prefix.is_empty() {
            ObjectPath::from(from)
        } else {
            ObjectPath::from(format!("{their_prefix}/{from}"))
        };
        let to_key = self.shared.key(to)?;
        self.shared
            .run(self.shared.store.copy(&from_key, &to_key))
            .map_err(|e| self.shared.error(to, e))?;
        Ok(true)
    }

    fn open_sibling(&self, location: &str) -> Option<Result<Arc<dyn CheckpointStorage>>> {
        // Only a bucket of the same cloud service shares endpoint and credentials; memory and
        // file locations need neither.
        let Location::Cloud { scheme: own, .. } = &self.shared.location else {
            return None;
        };
        match Location::parse(location) {
            Ok(parsed @ Location::Cloud { scheme, .. }) if scheme == *own => Some(
                ObjectStoreCheckpointStorage::open(&parsed, &self.shared.options)
                    .map(|s| Arc::new(s) as Arc<dyn CheckpointStorage>),
            ),
            _ => None,
        }
    }
}

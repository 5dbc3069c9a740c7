//! Opening checkpoint storage by location: `s3://`, `gs://`, `az://`, `memory://`, `file://` URIs
//! go to `ObjectStoreCheckpointStorage` (feature `object-store`, on by default), a plain path to
//! [`LocalDirStorage`] (FORMAT.md §4.5).
//!
//! A storage's [`CheckpointStorage::location`] is the normalized URI it was opened with, so the
//! root of a snapshot handle reopens the same store through [`open_storage`].

#[cfg(feature = "object-store")]
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
#[cfg(feature = "object-store")]
use std::sync::LazyLock;
use std::time::Duration;

#[cfg(feature = "object-store")]
use ::object_store::memory::InMemory;
#[cfg(feature = "object-store")]
use parking_lot::Mutex;

#[cfg(feature = "object-store")]
use super::object_store::ObjectStoreCheckpointStorage;
use super::storage::{CheckpointStorage, LocalDirStorage, validate_path};
use crate::error::{Error, Result};
use crate::fs::{FsRef, std_fs};

/// Options of object-store checkpoint storage, with documented defaults.
///
/// Timeouts bound every request: with the defaults a closed port, a wrong host or a dead node
/// gives an error in well under 30 s, never a hang. Keys the store itself understands (for S3
/// `access_key_id`, `secret_access_key`, `endpoint`, `region`, `allow_http`, …, with or without
/// the `aws_` prefix; the `object_store` crate's `AmazonS3ConfigKey`, `GoogleConfigKey`,
/// `AzureConfigKey` and `ClientConfigKey` names) are passed to it with [`StorageOptions::set`].
///
/// ```
/// use flowstate::checkpoint::uri::{StorageOptions, open_storage_with};
///
/// let options = StorageOptions::new().set("part_size", "16777216")?.set("max_retries", "2")?;
/// assert_eq!(options.part_size, 16 << 20);
/// # #[cfg(feature = "object-store")] {
/// let storage = open_storage_with("memory://doc-example/job-1", &options)?;
/// assert_eq!(storage.location(), "memory://doc-example/job-1");
/// # }
/// # Ok::<(), flowstate::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct StorageOptions {
    /// Time allowed to establish a connection (default 5 s).
    pub connect_timeout: Duration,
    /// Time allowed for one whole request, body included (default 30 s); a timed-out request
    /// is retried.
    pub request_timeout: Duration,
    /// No retry starts later than this after a request's first attempt (default 15 s).
    pub retry_timeout: Duration,
    /// Retries of one request with exponential backoff from 100 ms (default 4).
    pub max_retries: usize,
    /// Files up to this size are one PUT; larger ones are multipart uploads of parts this size
    /// (default 8 MiB, at least 5 MiB: S3's smallest part).
    pub part_size: usize,
    /// Files a checkpoint uploads, and an LSM restore downloads, at once (default 8).
    pub upload_parallelism: usize,
    /// Whether to read the usual environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`) before
    /// the explicit options (default true).
    pub from_env: bool,
    /// Options passed to the store, applied after the environment, in order.
    pub store_options: Vec<(String, String)>,
    /// The file system a local-directory location is opened on (default the real one,
    /// [`std_fs`]; tests use a simulated one).
    pub fs: FsRef,
}

/// The smallest multipart part S3 accepts (except for the last part).
pub const MIN_PART_SIZE: usize = 5 << 20;

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retry_timeout: Duration::from_secs(15),
            max_retries: 4,
            part_size: 8 << 20,
            upload_parallelism: 8,
            from_env: true,
            store_options: Vec::new(),
            fs: std_fs(),
        }
    }
}

fn parse_number(key: &str, value: &str) -> Result<u64> {
    value
        .trim()
        .parse()
        .map_err(|_| Error::invalid(format!("storage option {key}={value}: not a number")))
}

/// A duration as `<n>ms`, `<n>s` or plain seconds.
fn parse_duration(key: &str, value: &str) -> Result<Duration> {
    let value = value.trim();
    if let Some(ms) = value.strip_suffix("ms") {
        return Ok(Duration::from_millis(parse_number(key, ms)?));
    }
    let secs = value.strip_suffix('s').unwrap_or(value);
    Ok(Duration::from_secs(parse_number(key, secs)?))
}

impl StorageOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets one option by name: `connect_timeout`, `timeout` (or `request_timeout`),
    /// `retry_timeout` (durations as `500ms`, `10s` or seconds), `max_retries`, `part_size`
    /// (bytes), `upload_parallelism`, `from_env` (`true`/`false`); any other key is passed to the
    /// store, which rejects it when it opens if it does not know it.
    pub fn set(mut self, key: &str, value: &str) -> Result<Self> {
        match key {
            "connect_timeout" => self.connect_timeout = parse_duration(key, value)?,
            "timeout" | "request_timeout" => self.request_timeout = parse_duration(key, value)?,
            "retry_timeout" => self.retry_timeout = parse_duration(key, value)?,
            "max_retries" => self.max_retries = parse_number(key, value)? as usize,
            "part_size" => {
                let size = parse_number(key, value)?;
                self.part_size = usize::try_from(size)
                    .ok()
                    .filter(|s| *s >= MIN_PART_SIZE)
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "storage option part_size={value}: must be at least {MIN_PART_SIZE}"
                        ))
                    })?;
            }
            "upload_parallelism" => {
                self.upload_parallelism = (parse_number(key, value)? as usize).max(1)
            }
            "from_env" => {
                self.from_env = value.parse().map_err(|_| {
                    Error::invalid(format!("storage option from_env={value}: not true/false"))
                })?
            }
            _ => self
                .store_options
                .push((key.to_string(), value.to_string())),
        }
        Ok(self)
    }

    /// Sets every `key=value` pair of `pairs` with [`StorageOptions::set`].
    pub fn with_pairs<'a>(
        mut self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self> {
        for (key, value) in pairs {
            self = self.set(key, value)?;
        }
        Ok(self)
    }
}

/// A parsed checkpoint-storage location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Location {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`.
    Cloud {
        scheme: &'static str,
        bucket: String,
        prefix: String,
    },
    /// `memory://name/prefix`.
    Memory { name: String, prefix: String },
    /// `file:///abs/path`.
    File { path: String },
    /// A plain directory path.
    Dir { path: String },
}

impl Location {
    /// Parses `location`; a string without `scheme://` is a plain path.
    pub(crate) fn parse(location: &str) -> Result<Self> {
        let Some((scheme, rest)) = location.split_once("://") else {
            if location.is_empty() {
                return Err(Error::invalid("empty checkpoint storage location"));
            }
            return Ok(Location::Dir {
                path: location.to_string(),
            });
        };
        let bad = |why: &str| {
            Err(Error::invalid(format!(
                "storage location '{location}' {why}"
            )))
        };
        let split = |rest: &str| -> Result<(String, String)> {
            let rest = rest.trim_end_matches('/');
            let (first, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if first.is_empty() {
                return Err(Error::invalid(format!(
                    "storage location '{location}' names no bucket (or store name)"
                )));
            }
            if !prefix.is_empty() {
                validate_path(prefix)?;
            }
            Ok((first.to_string(), prefix.to_string()))
        };
        let cloud = |scheme: &'static str| -> Result<Location> {
            let (bucket, prefix) = split(rest)?;
            Ok(Location::Cloud {
                scheme,
                bucket,
                prefix,
            })
        };
        match scheme {
            "s3" | "s3a" => cloud("s3"),
            "gs" => cloud("gs"),
            "az" | "azure" => cloud("az"),
            "memory" => {
                let (name, prefix) = split(rest)?;
                Ok(Location::Memory { name, prefix })
            }
            "file" => {
                if !rest.starts_with('/') {
                    return bad("is not file:///absolute/path");
                }
                let path = rest.trim_end_matches('/');
                Ok(Location::File {
                    path: if path.is_empty() { "/" } else { path }.to_string(),
                })
            }
            _ => bad("has an unknown scheme (known: s3, gs, az, memory, file, or a plain path)"),
        }
    }

    /// The normalized URI (`scheme://bucket[/prefix]`), or the plain path.
    pub(crate) fn uri(&self) -> String {
        let join = |scheme: &str, first: &str, prefix: &str| {
            if prefix.is_empty() {
                format!("{scheme}://{first}")
            } else {
                format!("{scheme}://{first}/{prefix}")
            }
        };
        match self {
            Location::Cloud {
                scheme,
                bucket,
                prefix,
            } => join(scheme, bucket, prefix),
            Location::Memory { name, prefix } => join("memory", name, prefix),
            Location::File { path } => format!("file://{path}"),
            Location::Dir { path } => path.clone(),
        }
    }
}

/// In-memory stores by name: `memory://name` opened twice in one process is the same store.
#[cfg(feature = "object-store")]
static MEMORY_STORES: LazyLock<Mutex<HashMap<String, Arc<InMemory>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

#[cfg(feature = "object-store")]
pub(crate) fn memory_store(name: &str) -> Arc<InMemory> {
    MEMORY_STORES
        .lock()
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone()
}

/// Opens checkpoint storage at `location` with the default [`StorageOptions`] (credentials,
/// endpoint and region from the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_ENDPOINT_URL` or `AWS_ENDPOINT`, `AWS_REGION`, `AWS_ALLOW_HTTP`, …).
///
/// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`, `memory://name[/prefix]`
/// (an in-process store shared by name) and `file:///abs/path` (the object-store code path on a
/// local directory) give an `ObjectStoreCheckpointStorage` (feature `object-store`); anything
/// without `scheme://` is a directory for [`LocalDirStorage`] (created if missing).
pub fn open_storage(location: &str) -> Result<Arc<dyn CheckpointStorage>> {
    open_storage_with(location, &StorageOptions::default())
}

/// [`open_storage`] with explicit options.
pub fn open_storage_with(
    location: &str,
    options: &StorageOptions,
) -> Result<Arc<dyn CheckpointStorage>> {
    match Location::parse(location)? {
        Location::Dir { path } => Ok(Arc::new(LocalDirStorage::open_on(
            options.fs.clone(),
            path,
        )?)),
        #[cfg(feature = "object-store")]
        parsed => Ok(Arc::new(ObjectStoreCheckpointStorage::open(
            &parsed, options,
        )?)),
        #[cfg(not(feature = "object-store"))]
        parsed => {
            let _ = options;
            Err(Error::invalid(format!(
                "'{}' is object storage, and this build of flowstate has no object-store support \
                 (enable the `object-store` feature) or give a local directory",
                parsed.uri()
            )))
        }
    }
}

/// The storage the files of a snapshot handle with root `root` live in, and whether it is
/// `own`: `own` itself when `root` is its location, a store in the same service opened with
/// `own`'s options and credentials ([`CheckpointStorage::open_sibling`]), a store opened by URI
/// with the default options, or an existing local directory (a missing one is an error).
pub fn storage_for_root(
    own: &Arc<dyn CheckpointStorage>,
    root: &str,
) -> Result<(Arc<dyn CheckpointStorage>, bool)> {
    if root == own.location() {
        return Ok((own.clone(), true));
    }
    if let Some(sibling) = own.open_sibling(root) {
        return Ok((sibling?, false));
    }
    match Location::parse(root)? {
        Location::Dir { path } => {
            if Path::new(&path).is_dir() {
                Ok((Arc::new(LocalDirStorage::open(path)?), false))
            } else {
                Err(Error::invalid(format!(
                    "snapshot files live in '{root}', which is neither this backend's storage \
                     nor a local directory"
                )))
            }
        }
        _ => Ok((open_storage(root)?, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_normalize() {
        let cases = [
            ("s3://bucket", "s3://bucket"),
            ("s3://bucket/", "s3://bucket"),
            ("s3://bucket/a/b/", "s3://bucket/a/b"),
            ("s3a://bucket/a", "s3://bucket/a"),
            ("gs://b/p", "gs://b/p"),
            ("az://c/p", "az://c/p"),
            ("memory://name/p", "memory://name/p"),
            ("file:///tmp/x/", "file:///tmp/x"),
            ("relative/dir", "relative/dir"),
            ("/abs/dir", "/abs/dir"),
        ];
        for (input, uri) in cases {
            assert_eq!(Location::parse(input).unwrap().uri(), uri, "{input}");
        }
        for bad in [
            "",
            "s3://",
            "s3:///p",
            "s3://b/../x",
            "s3://b/a//c",
            "file://rel",
            "ftp://x",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_parse() {
        let o = StorageOptions::new()
            .with_pairs([
                ("connect_timeout", "250ms"),
                ("timeout", "7s"),
                ("retry_timeout", "3"),
                ("max_retries", "1"),
                ("upload_parallelism", "0"),
                ("region", "garage"),
            ])
            .unwrap();
        assert_eq!(o.connect_timeout, Duration::from_millis(250));
        assert_eq!(o.request_timeout, Duration::from_secs(7));
        assert_eq!(o.retry_timeout, Duration::from_secs(3));
        assert_eq!(o.max_retries, 1);
        assert_eq!(o.upload_parallelism, 1);
        assert_eq!(o.store_options, [("region".into(), "garage".into())]);
        assert!(StorageOptions::new().set("part_size", "1024").is_err());
        assert!(StorageOptions::new().set("max_retries", "x").is_err());
    }

    #[cfg(feature = "object-store")]
    #[test]
    fn memory_stores_are_shared_by_name() {
        let a = open_storage("memory://uri-test-shared").unwrap();
        a.write_file("x", b"1").unwrap();
        let b = open_storage("memory://uri-test-shared").unwrap();
        assert_eq!(b.read_file("x").unwrap(), b"1");
        let other = open_storage("memory://uri-test-other").unwrap();
        assert!(!other.exists("x").unwrap());
        let (same, own) = storage_for_root(&a, "memory://uri-test-shared").unwrap();
        assert!(own && Arc::ptr_eq(&same, &a));
        let (_, own) = storage_for_root(&a, "memory://uri-test-other").unwrap();
        assert!(!own);
        assert!(storage_for_root(&a, "/definitely/not/a/dir").is_err());
    }

    #[cfg(not(feature = "object-store"))]
    #[test]
    fn object_storage_needs_the_feature() {
        for uri in ["s3://bucket/p", "memory://name", "file:///tmp/x"] {
            let Err(err) = open_storage(uri) else {
                panic!("{uri} opened without object-store support");
            };
            assert!(err.to_string().contains("object-store"), "{uri}: {err}");
        }
        let dir = std::env::temp_dir().join(format!("flowstate-uri-{}", std::process::id()));
        let storage = open_storage(dir.to_str().unwrap()).unwrap();
        assert_eq!(storage.location(), dir.to_str().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Building an `object_store` client for a parsed location: environment first, then explicit
//! options, with bounded timeouts and retries (the defaults in `StorageOptions`).
//!
//! Invariant: every HTTP store gets the connect/request timeouts and the retry budget, so no
//! request can wait forever on a dead endpoint.

use std::sync::Arc;

use ::object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use ::object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use ::object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use ::object_store::local::LocalFileSystem;
use ::object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use crate::checkpoint::uri::{Location, StorageOptions, memory_store};
use crate::error::{Error, Result};

/// The environment variables starting with `prefix`, lower-cased (as `from_env` reads them).
fn env_with_prefix(prefix: &str) -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

fn client_options(options: &StorageOptions) -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(options.connect_timeout)
        .with_timeout(options.request_timeout)
}

fn retry_config(options: &StorageOptions) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: options.max_retries,
        retry_timeout: options.retry_timeout,
    }
}

fn unknown_key(uri: &str, key: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("storage option '{key}' for {uri}: {e}"))
}

fn build_failed(uri: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("cannot open checkpoint storage {uri}: {e}"))
}

/// The store of `location` (not a plain directory).
pub(super) fn build_store(
    location: &Location,
    options: &StorageOptions,
) -> Result<Arc<dyn ObjectStore>> {
    let uri = location.uri();
    let env = |prefix: &str| {
        if options.from_env {
            env_with_prefix(prefix)
        } else {
            Vec::new()
        }
    };
    // The three cloud builders share no trait: one shape, three types. Settings come from the
    // environment first (unknown variables of the prefix belong to other tools and are
    // ignored, as object_store's `from_env` does), then from the explicit options (an unknown
    // key there is an error).
    macro_rules! cloud_store {
        ($builder:ident, $key:ident, $env:literal, $with_bucket:ident, $bucket:expr) => {{
            let mut builder = $builder::new()
                .with_client_options(client_options(options))
                .with_retry(retry_config(options));
            for (key, value) in env($env) {
                if let Ok(key) = key.parse::<$key>() {
                    builder = builder.with_config(key, value);
                }
            }
            for (key, value) in &options.store_options {
                let parsed = key.parse::<$key>().map_err(|e| unknown_key(&uri, key, e))?;
                builder = builder.with_config(parsed, value);
            }
            let store = builder
                .$with_bucket($bucket)
                .build()
                .map_err(|e| build_failed(&uri, e))?;
            Ok(Arc::new(store))
        }};
    }
    match location {
        Location::Cloud { scheme, bucket, .. } => match *scheme {
            "s3" => cloud_store!(
                AmazonS3Builder,
                AmazonS3ConfigKey,
                "AWS_",
                with_bucket_name,
                bucket
            ),
            "gs" => cloud_store!(
                GoogleCloudStorageBuilder,
                GoogleConfigKey,
                "GOOGLE_",
                with_bucket_name,
                bucket
            ),
            _ => cloud_store!(
                MicrosoftAzureBuilder,
                AzureConfigKey,
                "AZURE_",
                with_container_name,
                bucket
            ),
        },
        Location::Memory { name, .. } => {
            no_store_options(&uri, options)?;
            Ok(memory_store(name))
        }
        Location::File { path } => {
            no_store_options(&uri, options)?;
            std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
            let store = LocalFileSystem::new_with_prefix(path)
                .map_err(|e| build_failed(&uri, e))?
                .with_automatic_cleanup(true)
                .with_fsync(true);
            Ok(Arc::new(store))
        }
        Location::Dir { path } => Err(Error::invalid(format!(
            "'{path}' is a local directory, not an object store location"
        ))),
    }
}

fn no_store_options(uri: &str, options: &StorageOptions) -> Result<()> {
    match options.store_options.first() {
        Some((key, _)) => Err(unknown_key(uri, key, "this store takes no such option")),
        None => Ok(()),
    }
}

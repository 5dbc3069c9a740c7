//! Opening checkpoint storage by location: a local directory path (placeholder until object
//! storage lands: URIs are refused with a clear message).

use std::sync::Arc;

use super::storage::{CheckpointStorage, LocalDirStorage};
use crate::error::{Error, Result};

/// Opens the checkpoint storage at `location`.
pub fn open_storage(location: &str) -> Result<Arc<dyn CheckpointStorage>> {
    if location.contains("://") {
        return Err(Error::invalid(format!(
            "checkpoint storage '{location}': URIs are not supported yet"
        )));
    }
    Ok(Arc::new(LocalDirStorage::open(location)?))
}

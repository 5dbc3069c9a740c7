//! Streaming writes of one object: buffered up to a part size, then one PUT for a small file or a
//! multipart upload (at most `PARTS_IN_FLIGHT` parts in flight) for a large one.
//!
//! Invariant: the object appears only when `finish` returns Ok (S3 makes a PUT or a completed
//! multipart upload visible atomically); an upload that fails or is dropped is aborted.

use std::sync::Arc;

use ::object_store::path::Path as ObjectPath;
use ::object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use bytes::Bytes;

use super::Shared;
use crate::checkpoint::storage::CheckpointFileWriter;
use crate::error::Result;

/// Parts of one file uploading at once: memory per file is at most this + 1 part sizes.
pub(super) const PARTS_IN_FLIGHT: usize = 2;

/// A file being written to an object store.
pub(super) struct ObjectFileWriter {
    pub(super) shared: Arc<Shared>,
    pub(super) path: String,
    pub(super) key: ObjectPath,
    pub(super) buffer: Vec<u8>,
    pub(super) upload: Option<WriteMultipart>,
    pub(super) written: u64,
}

impl ObjectFileWriter {
    /// Sends the full buffer as the next part, starting the multipart upload if needed.
    fn send_part(&mut self) -> Result<()> {
        let part = Bytes::from(std::mem::take(&mut self.buffer));
        let shared = self.shared.clone();
        if self.upload.is_none() {
            // A multipart upload cannot be conditional here: refuse an existing name first.
            shared.refuse_existing(&self.path, &self.key)?;
        }
        let result = shared.run(async {
            if self.upload.is_none() {
                let upload = shared.store.put_multipart(&self.key).await?;
                self.upload = Some(WriteMultipart::new_with_chunk_size(
                    upload,
                    shared.part_size,
                ));
            }
            if let Some(upload) = self.upload.as_mut() {
                upload.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                upload.put(part);
            }
            Ok::<_, ::object_store::Error>(())
        });
        result.map_err(|e| {
            self.abort();
            self.shared.error(&self.path, e)
        })
    }

    /// Aborts a started multipart upload (best effort: the store expires leftovers).
    fn abort(&mut self) {
        if let Some(upload) = self.upload.take() {
            let _ = self.shared.run(upload.abort());
        }
    }
}

impl CheckpointFileWriter for ObjectFileWriter {
    fn write_all(&mut self, mut bytes: &[u8]) -> Result<()> {
        let part_size = self.shared.part_size;
        while !bytes.is_empty() {
            let room = part_size.saturating_sub(self.buffer.len());
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.buffer.extend_from_slice(now);
            self.written += now.len() as u64;
            bytes = rest;
            if self.buffer.len() >= part_size {
                self.send_part()?;
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<u64> {
        let shared = self.shared.clone();
        let last = Bytes::from(std::mem::take(&mut self.buffer));
        let Some(mut upload) = self.upload.take() else {
            // One PUT, conditional: an existing name is refused, never replaced.
            shared.put_new(&self.path, &self.key, PutPayload::from(last))?;
            return Ok(self.written);
        };
        let result = shared.run(async {
            if !last.is_empty() {
                upload.put(last);
            }
            // Aborts the upload itself when a part or the completion fails.
            upload.finish().await.map(|_| ())
        });
        result.map_err(|e| shared.error(&self.path, e))?;
        Ok(self.written)
    }
}

impl Drop for ObjectFileWriter {
    fn drop(&mut self) {
        self.abort();
    }
}

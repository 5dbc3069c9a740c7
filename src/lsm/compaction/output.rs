//! Output files of a flush or a compaction: entries in internal-key order go to one SST after
//! another, and a file is cut once it reaches the target size, only between user keys and,
//! with a cut prefix, only where that prefix changes. Flushes and compactions share this rule,
//! so no file of the store ever splits a cut prefix (the LSM backend's key group).

use std::path::PathBuf;

use crate::error::Result;
use crate::fs::FileSystem;
use crate::lsm::format::user_key;
use crate::lsm::sst::{SstBuilder, SstMetadata, SstOptions};

/// Where and how output files are written, and where they are cut.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CutRule {
    /// A file is cut once it reaches about this many bytes.
    pub target_file_size: u64,
    /// A full file is cut only before a user key whose first `cut_prefix_len` bytes differ from
    /// the previous key's (0: before any new user key).
    pub cut_prefix_len: usize,
}

/// Output SSTs opened lazily and cut by a [`CutRule`]; `new_file` hands out (number, path).
pub(crate) struct OutputFiles<'a> {
    fs: &'a dyn FileSystem,
    sst_options: SstOptions,
    now_ms: u64,
    rule: CutRule,
    new_file: &'a mut dyn FnMut() -> Result<(u64, PathBuf)>,
    current: Option<(u64, SstBuilder)>,
    /// Every file created so far (finished or not), deleted by [`OutputFiles::remove_created`].
    created: Vec<PathBuf>,
    files: Vec<(u64, SstMetadata)>,
    entries: u64,
    /// The cut prefix (or, without one, the user key) of the entry that made the current file
    /// full: the file is cut before the next entry without it.
    full_at: Option<Vec<u8>>,
}

impl<'a> OutputFiles<'a> {
    /// No file yet; files are written with `sst_options` and stamped with `now_ms`.
    pub(crate) fn new(
        fs: &'a dyn FileSystem,
        sst_options: SstOptions,
        now_ms: u64,
        rule: CutRule,
        new_file: &'a mut dyn FnMut() -> Result<(u64, PathBuf)>,
    ) -> Self {
        OutputFiles {
            fs,
            sst_options,
            now_ms,
            rule,
            new_file,
            current: None,
            created: Vec::new(),
            files: Vec::new(),
            entries: 0,
            full_at: None,
        }
    }

    /// The part of `user` that must not span two files.
    fn cut_key<'k>(&self, user: &'k [u8]) -> &'k [u8] {
        match self.rule.cut_prefix_len {
            0 => user,
            n => &user[..user.len().min(n)],
        }
    }

    /// Appends an entry (internal key strictly after the previous one), first cutting the
    /// current file if it is full and the entry starts another cut prefix.
    pub(crate) fn add(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let user = user_key(key);
        if let Some(full_at) = &self.full_at
            && full_at.as_slice() != self.cut_key(user)
        {
            self.finish_current()?;
        }
        let builder = match &mut self.current {
            Some((_, builder)) => builder,
            None => self.open()?,
        };
        builder.add(key, value)?;
        let full = builder.estimated_file_size() >= self.rule.target_file_size;
        self.entries += 1;
        if full && self.full_at.is_none() {
            self.full_at = Some(self.cut_key(user).to_vec());
        }
        Ok(())
    }

    /// Entries added so far.
    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    fn open(&mut self) -> Result<&mut SstBuilder> {
        let (number, path) = (self.new_file)()?;
        let mut builder = SstBuilder::create_on(self.fs, &path, self.sst_options)?;
        self.created.push(path);
        builder.set_creation_time(self.now_ms);
        Ok(&mut self.current.insert((number, builder)).1)
    }

    fn finish_current(&mut self) -> Result<()> {
        self.full_at = None;
        if let Some((number, builder)) = self.current.take() {
            self.files.push((number, builder.finish()?));
        }
        Ok(())
    }

    /// Finishes the last file and returns every file (number, metadata) in key order; empty
    /// when nothing was added. On error the caller should [`remove_created`](Self::remove_created).
    pub(crate) fn finish(&mut self) -> Result<Vec<(u64, SstMetadata)>> {
        self.finish_current()?;
        Ok(std::mem::take(&mut self.files))
    }

    /// Deletes every file created so far (best effort: the caller already failed).
    pub(crate) fn remove_created(&mut self) {
        self.current = None;
        for path in self.created.drain(..) {
            let _ = self.fs.remove_file(&path);
        }
        self.files.clear();
    }
}

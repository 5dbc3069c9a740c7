//! Leveled compaction: the pure picker (`picker`), the job that merges input files into new
//! ones, resolving versions, tombstones and merges and applying the compaction filter, and the
//! output files with the cut rule flushes share (`output`).

pub mod job;
pub(crate) mod output;
pub mod picker;

pub use picker::CompactionOptions;

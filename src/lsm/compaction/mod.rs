//! Leveled compaction: the pure picker (`picker`) and the job that merges input files into new
//! ones, resolving versions, tombstones and merges and applying the compaction filter.

pub mod job;
pub mod picker;

pub use picker::CompactionOptions;

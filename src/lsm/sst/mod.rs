//! Sorted string tables: immutable sorted files of blocks (FORMAT.md §8).

pub mod bloom;
pub mod builder;
pub mod reader;

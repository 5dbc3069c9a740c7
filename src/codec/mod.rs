//! Byte-level building blocks shared by every file flowstate writes (FORMAT.md §1).
//!
//! Every decoder here takes `&[u8]`, returns `Result`, checks each length against the bytes left
//! before using it, and never panics or allocates more than its input can justify.

pub mod block;
pub mod block_iter;
pub mod cursor;
pub mod iter;
pub mod record;
pub mod varint;

//! Hash functions: MurmurHash3 x86-32 ([`murmur3_32`], on disk: key groups and bloom filters)
//! and the fast seeded hasher of the in-memory tables (heap state, the LSM backend's write cache,
//! the block cache): short keys are hashed on every access, where SipHash costs several times
//! more.

use std::hash::{BuildHasher, Hasher};

/// Builds [`KeyHasher`]s with one random seed per table, so the layout of one process's tables
/// cannot be predicted from the keys alone.
#[derive(Clone, Copy, Debug)]
pub struct KeyHasherBuilder {
    seed: u64,
}

impl KeyHasherBuilder {
    /// A builder with a fresh random seed.
    pub fn random() -> Self {
        // RandomState is seeded from the OS once per thread and then incremented: hashing a
        // constant with it yields a fresh seed per table.
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        KeyHasherBuilder { seed }
    }
}

impl BuildHasher for KeyHasherBuilder {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher { state: self.seed }
    }
}

/// A fast multiply-rotate hasher over 8-byte words (in the style of rustc's FxHash, with a
/// seed and a final avalanche). Composite keys are short and hashed on every access; SipHash
/// costs several times more for them.
#[derive(Clone, Copy, Debug)]
pub struct KeyHasher {
    state: u64,
}

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl KeyHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.state = (self.state.rotate_left(26) ^ word).wrapping_mul(MULTIPLIER);
    }
}

impl Hasher for KeyHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // Avalanche (murmur3's fmix64) so the table's low bits depend on every input bit.
        let mut h = self.state;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// MurmurHash3, x86 32-bit variant (Austin Appleby's reference `MurmurHash3_x86_32`).
///
/// On disk: never change. It decides which key group (and so which task and which checkpoint
/// file) each key belongs to.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    let mut k: u32 = 0;
    for (i, &b) in tail.iter().enumerate() {
        k |= u32::from(b) << (8 * i);
    }
    if !tail.is_empty() {
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

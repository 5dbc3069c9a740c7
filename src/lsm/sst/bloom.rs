//! The bloom filter of an SST file over its user keys (FORMAT.md §8.3).
//!
//! Two MurmurHash3 x86-32 hashes of the user key (different seeds) drive double hashing:
//! probe `i` sets bit `(h1 + i * h2) mod 2^32 mod num_bits`. The encoding is the bit array then
//! the probe count; a reader needs nothing else to probe it.

use crate::error::{Error, Result};
use crate::hash::murmur3_32;

/// Default bits of filter per distinct user key (about 1% false positives).
pub const DEFAULT_BITS_PER_KEY: u32 = 10;

/// Seed of the first hash (on disk: never change; FORMAT.md §8.3).
const SEED_1: u32 = 0xbc9f_1d34;
/// Seed of the second hash (on disk: never change; FORMAT.md §8.3).
const SEED_2: u32 = 0x5bd1_e995;

/// Most probes a filter may use; larger counts in a file are corruption.
pub const MAX_PROBES: u8 = 30;

/// Fewest bits a filter has, so that tiny files still filter.
const MIN_BITS: u64 = 64;

/// Largest bit array, so the filter fits in one block.
const MAX_BITS: u64 = ((crate::codec::block::MAX_BLOCK_SIZE - 1) as u64) * 8;

/// The two hashes of a user key.
fn hashes(user_key: &[u8]) -> (u32, u32) {
    (murmur3_32(user_key, SEED_1), murmur3_32(user_key, SEED_2))
}

/// The probe count for `bits_per_key`: `round(bits_per_key * ln 2)`, clamped to 1..=30.
pub fn probes_for(bits_per_key: u32) -> u8 {
    let k = (f64::from(bits_per_key) * std::f64::consts::LN_2).round();
    k.clamp(1.0, f64::from(MAX_PROBES)) as u8
}

/// `x mod num_bits` for any u32 `x`, with the divisor fixed per filter: two multiplications
/// instead of a 64-bit division per probe (Lemire, Kaser and Kurz, "Faster remainder by direct
/// computation", 2019), exact for every u32 `x` and every divisor in `1..2^32`.
#[derive(Clone, Copy, Debug)]
struct BitIndex {
    num_bits: u64,
    /// `ceil(2^64 / num_bits)` (0 for a divisor of 1, whose remainders are all 0).
    magic: u64,
}

impl BitIndex {
    fn new(num_bits: u64) -> Self {
        let magic = match num_bits {
            1..=0xffff_ffff => (u64::MAX / num_bits).wrapping_add(1),
            _ => 0,
        };
        BitIndex { num_bits, magic }
    }

    /// `x mod num_bits`.
    #[inline]
    fn reduce(&self, x: u32) -> u64 {
        if self.num_bits > u64::from(u32::MAX) {
            // Every u32 is below the divisor (0 bits: no filter decodes or encodes that).
            return if self.num_bits == 0 { 0 } else { u64::from(x) };
        }
        let low = self.magic.wrapping_mul(u64::from(x));
        ((u128::from(low) * u128::from(self.num_bits)) >> 64) as u64
    }
}

/// Bit positions probed for the hashes `(h1, h2)` (FORMAT.md §8.3:
/// `(h1 + i * h2) mod 2^32 mod num_bits`).
fn positions(h1: u32, h2: u32, probes: u8, index: BitIndex) -> impl Iterator<Item = u64> {
    (0..u32::from(probes)).map(move |i| index.reduce(h1.wrapping_add(i.wrapping_mul(h2))))
}

/// Collects the user keys of a file and encodes their filter.
#[derive(Debug)]
pub struct BloomBuilder {
    bits_per_key: u32,
    hashes: Vec<(u32, u32)>,
}

impl BloomBuilder {
    /// A builder using `bits_per_key` bits per key (at least 1).
    pub fn new(bits_per_key: u32) -> Self {
        BloomBuilder {
            bits_per_key: bits_per_key.max(1),
            hashes: Vec::new(),
        }
    }

    /// Adds a user key; callers add each distinct key once (duplicates only waste bits).
    pub fn add_key(&mut self, user_key: &[u8]) {
        self.hashes.push(hashes(user_key));
    }

    /// The encoded filter: `bit array | probes u8`.
    pub fn finish(&self) -> Vec<u8> {
        let wanted = (self.hashes.len() as u64).saturating_mul(u64::from(self.bits_per_key));
        let num_bits = wanted.clamp(MIN_BITS, MAX_BITS).div_ceil(8) * 8;
        let probes = probes_for(self.bits_per_key);
        let mut out = vec![0u8; (num_bits / 8) as usize + 1];
        let index = BitIndex::new(num_bits);
        for &(h1, h2) in &self.hashes {
            for bit in positions(h1, h2, probes, index) {
                out[(bit / 8) as usize] |= 1 << (bit % 8);
            }
        }
        if let Some(last) = out.last_mut() {
            *last = probes;
        }
        out
    }
}

/// A decoded filter that answers "may this file hold the user key?".
#[derive(Clone, Debug)]
pub struct BloomFilter {
    bits: Box<[u8]>,
    probes: u8,
    index: BitIndex,
}

impl BloomFilter {
    /// Decodes an encoded filter read from `file` at `offset` (both label errors).
    pub fn decode(encoded: &[u8], file: &str, offset: u64) -> Result<Self> {
        let Some((&probes, bits)) = encoded.split_last() else {
            return Err(Error::corruption(file, offset, "empty bloom filter"));
        };
        if bits.is_empty() {
            return Err(Error::corruption(file, offset, "bloom filter has no bits"));
        }
        if probes == 0 || probes > MAX_PROBES {
            return Err(Error::corruption(
                file,
                offset,
                format!("bloom filter probe count {probes} is outside 1..={MAX_PROBES}"),
            ));
        }
        Ok(BloomFilter {
            bits: bits.into(),
            probes,
            index: BitIndex::new(bits.len() as u64 * 8),
        })
    }

    /// False if the file certainly does not hold `user_key`; true if it may.
    pub fn may_contain(&self, user_key: &[u8]) -> bool {
        let (h1, h2) = hashes(user_key);
        positions(h1, h2, self.probes, self.index).all(|bit| {
            self.bits
                .get((bit / 8) as usize)
                .is_some_and(|byte| byte & (1 << (bit % 8)) != 0)
        })
    }

    /// Size of the bit array in bytes.
    pub fn len_bytes(&self) -> usize {
        self.bits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter_of(keys: impl Iterator<Item = Vec<u8>>, bits_per_key: u32) -> BloomFilter {
        let mut builder = BloomBuilder::new(bits_per_key);
        for key in keys {
            builder.add_key(&key);
        }
        BloomFilter::decode(&builder.finish(), "t", 0).unwrap()
    }

    #[test]
    fn no_false_negatives_and_low_false_positive_rate() {
        let n = 10_000u32;
        let filter = filter_of((0..n).map(|i| format!("key-{i}").into_bytes()), 10);
        assert!((0..n).all(|i| filter.may_contain(format!("key-{i}").as_bytes())));
        let false_positives = (0..n)
            .filter(|i| filter.may_contain(format!("absent-{i}").as_bytes()))
            .count();
        let rate = false_positives as f64 / f64::from(n);
        // 10 bits per key and 7 probes give about 0.8% in theory.
        assert!(rate < 0.02, "false positive rate {rate}");
        let loose = filter_of((0..n).map(|i| format!("key-{i}").into_bytes()), 4);
        let loose_rate = (0..n)
            .filter(|i| loose.may_contain(format!("absent-{i}").as_bytes()))
            .count() as f64
            / f64::from(n);
        assert!(loose_rate > rate, "{loose_rate} vs {rate}");
    }

    #[test]
    fn empty_filter_rejects_everything() {
        let filter = filter_of(std::iter::empty(), 10);
        assert!(!filter.may_contain(b"a"));
        assert_eq!(filter.len_bytes(), 8);
    }

    #[test]
    fn probe_counts_and_bad_encodings() {
        assert_eq!(probes_for(10), 7);
        assert_eq!(probes_for(1), 1);
        assert_eq!(probes_for(100), MAX_PROBES);
        assert!(BloomFilter::decode(&[], "t", 0).is_err());
        assert!(BloomFilter::decode(&[7], "t", 0).is_err());
        assert!(BloomFilter::decode(&[0xff, 0], "t", 0).is_err());
        assert!(BloomFilter::decode(&[0xff, 31], "t", 0).is_err());
    }

    #[test]
    fn bit_index_is_the_remainder() {
        let divisors = [
            1u64,
            2,
            3,
            7,
            8,
            64,
            1000,
            3_290_880,
            (1 << 29) - 8,
            (1 << 31) + 1,
        ];
        let extremes = [0u32, 1, 2, 63, 64, 65, u32::MAX - 1, u32::MAX];
        for d in divisors
            .into_iter()
            .chain([u64::from(u32::MAX), 1 << 32, 1 << 40])
        {
            let index = BitIndex::new(d);
            for x in extremes {
                assert_eq!(index.reduce(x), u64::from(x) % d, "{x} mod {d}");
            }
        }
        let seed = std::env::var("FLOWSTATE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_u64);
        println!("FLOWSTATE_SEED={seed}");
        let mut state = seed | 1;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200_000 {
            let d = (next() >> 32).max(1);
            let d = if next() & 1 == 0 {
                d >> (next() % 32)
            } else {
                d
            }
            .max(1);
            let x = next() as u32;
            assert_eq!(BitIndex::new(d).reduce(x), u64::from(x) % d, "{x} mod {d}");
        }
    }

    #[test]
    fn known_probe_positions() {
        // Pins FORMAT.md §8.3 so an independent reader can check itself: for "flowstate",
        // h1 = 0xcd79c2a3 and h2 = 0xa96125f8; in a 64-bit filter the 7 probes hit bits
        // 35, 27, 19, 11, 3, 59, 51 (bit 3 of every byte but byte 5).
        assert_eq!(hashes(b"flowstate"), (0xcd79_c2a3, 0xa961_25f8));
        let mut builder = BloomBuilder::new(10);
        builder.add_key(b"flowstate");
        assert_eq!(builder.finish(), [8, 8, 8, 8, 8, 0, 8, 8, 7]);
    }
}

//! LEB128 varints (FORMAT.md §1.1): the length prefix of every variable-size field.
//!
//! Encoding is unsigned little-endian base-128: seven bits per byte, low group first, high bit
//! set on every byte but the last. Decoding rejects overlong forms (a zero last byte after
//! others), forms that overflow the target width, and truncated input, returning
//! [`Error::Corruption`] with the offset of the varint.

use crate::error::{Error, Result};

/// Largest number of bytes a `u64` varint takes.
pub const MAX_VARINT64_LEN: usize = 10;

/// Appends `value` as a varint to `out`.
pub fn put_varint64(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends `value` as a varint to `out`.
pub fn put_varint32(out: &mut Vec<u8>, value: u32) {
    put_varint64(out, u64::from(value));
}

/// Number of bytes `value` takes as a varint.
pub fn varint_len(mut value: u64) -> usize {
    let mut n = 1;
    while value >= 0x80 {
        value >>= 7;
        n += 1;
    }
    n
}

/// Decodes a `u64` varint from the front of `input`; returns the value and the bytes consumed.
///
/// `file` and `offset` only label the error: `offset` is the position of `input[0]` in the file.
#[inline]
pub fn get_varint64(input: &[u8], file: &str, offset: u64) -> Result<(u64, usize)> {
    // Fast path: block entry lengths are almost always one byte.
    if let Some(&byte) = input.first()
        && byte < 0x80
    {
        return Ok((u64::from(byte), 1));
    }
    get_varint64_slow(input, file, offset)
}

fn get_varint64_slow(input: &[u8], file: &str, offset: u64) -> Result<(u64, usize)> {
    let mut value: u64 = 0;
    for (i, &byte) in input.iter().enumerate().take(MAX_VARINT64_LEN) {
        let group = u64::from(byte & 0x7f);
        if i == MAX_VARINT64_LEN - 1 && group > 1 {
            return Err(Error::corruption(file, offset, "varint overflows 64 bits"));
        }
        value |= group << (7 * i);
        if byte & 0x80 == 0 {
            // A last byte of 0 after others adds nothing: an overlong form (FORMAT.md §1.1),
            // which no writer produces, so that every value has exactly one encoding.
            if byte == 0 && i > 0 {
                return Err(Error::corruption(file, offset, "overlong varint"));
            }
            return Ok((value, i + 1));
        }
    }
    if input.len() >= MAX_VARINT64_LEN {
        Err(Error::corruption(
            file,
            offset,
            "varint longer than 10 bytes",
        ))
    } else {
        Err(Error::corruption(file, offset, "truncated varint"))
    }
}

/// Decodes a `u32` varint from the front of `input`; returns the value and the bytes consumed.
#[inline]
pub fn get_varint32(input: &[u8], file: &str, offset: u64) -> Result<(u32, usize)> {
    let (value, used) = get_varint64(input, file, offset)?;
    let value = u32::try_from(value)
        .map_err(|_| Error::corruption(file, offset, "varint overflows 32 bits"))?;
    Ok((value, used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        let mut v = Vec::new();
        put_varint64(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        v.clear();
        put_varint64(&mut v, u64::MAX);
        assert_eq!(v.len(), MAX_VARINT64_LEN);
        assert_eq!(get_varint64(&v, "t", 0).unwrap(), (u64::MAX, 10));
    }

    #[test]
    fn rejects_truncated_and_overflow() {
        assert!(get_varint64(&[0x80], "t", 0).unwrap_err().is_corruption());
        assert!(get_varint64(&[], "t", 0).unwrap_err().is_corruption());
        let over = [0xff; 10];
        assert!(get_varint64(&over, "t", 0).unwrap_err().is_corruption());
        let mut v = Vec::new();
        put_varint64(&mut v, u64::from(u32::MAX) + 1);
        assert!(get_varint32(&v, "t", 0).unwrap_err().is_corruption());
        for overlong in [&[0x80, 0x00][..], &[0x9c, 0x00], &[0xac, 0x82, 0x00]] {
            let e = get_varint64(overlong, "t", 0).unwrap_err();
            assert!(e.to_string().contains("overlong"), "{overlong:?}: {e}");
        }
    }

    proptest! {
        #[test]
        fn round_trip(x in any::<u64>(), tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut v = Vec::new();
            put_varint64(&mut v, x);
            prop_assert_eq!(v.len(), varint_len(x));
            v.extend_from_slice(&tail);
            prop_assert_eq!(get_varint64(&v, "t", 0).unwrap(), (x, varint_len(x)));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = get_varint64(&bytes, "t", 0);
            let _ = get_varint32(&bytes, "t", 0);
        }
    }
}

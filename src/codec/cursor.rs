//! A bounds-checked reader over a byte slice: the one way decoders consume input.
//!
//! Every read checks the bytes left first and fails with [`Error::Corruption`] naming the file
//! and the absolute offset of the field, so decoders never index out of range, never panic, and
//! never size an allocation from an unchecked length.

use crate::codec::varint::{get_varint32, get_varint64};
use crate::error::{Error, Result};

/// A position in a byte slice of a named file.
#[derive(Clone, Debug)]
pub struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    file: &'a str,
    base: u64,
}

impl<'a> Cursor<'a> {
    /// A cursor over `bytes`, which start at byte `base` of `file`.
    pub fn new(bytes: &'a [u8], file: &'a str, base: u64) -> Self {
        Cursor {
            bytes,
            pos: 0,
            file,
            base,
        }
    }

    /// Absolute offset (in the file) of the next byte.
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// A corruption error at the current offset.
    pub fn error(&self, what: impl Into<String>) -> Error {
        Error::corruption(self.file, self.offset(), what)
    }

    /// A corruption error at absolute offset `at` of the cursor's file (a field that started
    /// before the current position).
    pub fn error_at(&self, at: u64, what: impl Into<String>) -> Error {
        Error::corruption(self.file, at, what)
    }

    /// The file name errors carry.
    pub fn file(&self) -> &'a str {
        self.file
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self, what: &str) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.error(format!("{} trailing bytes after {what}", self.remaining())))
        }
    }

    /// The next `len` bytes.
    pub fn bytes(&mut self, len: usize, what: &str) -> Result<&'a [u8]> {
        if len > self.remaining() {
            return Err(self.error(format!(
                "{what} of {len} bytes exceeds the {} bytes left",
                self.remaining()
            )));
        }
        let out = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A big-endian u16.
    #[cfg(test)]
    pub fn u16_be(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// A little-endian u16.
    pub fn u16_le(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    /// A little-endian u32.
    pub fn u32_le(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// A little-endian u64.
    pub fn u64_le(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A varint u64.
    pub fn varint64(&mut self) -> Result<u64> {
        let (value, used) = get_varint64(&self.bytes[self.pos..], self.file, self.offset())?;
        self.pos += used;
        Ok(value)
    }

    /// A varint u32.
    pub fn varint32(&mut self) -> Result<u32> {
        let (value, used) = get_varint32(&self.bytes[self.pos..], self.file, self.offset())?;
        self.pos += used;
        Ok(value)
    }

    /// A varint length, then that many bytes.
    pub fn len_prefixed(&mut self, what: &str) -> Result<&'a [u8]> {
        let len = self.varint32()?;
        self.bytes(len as usize, what)
    }

    /// A varint length, then that many bytes of UTF-8.
    pub fn string(&mut self, what: &str) -> Result<String> {
        let at = self.offset();
        let raw = self.len_prefixed(what)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| Error::corruption(self.file, at, format!("{what} is not UTF-8")))
    }

    /// A varint count of items each at least `min_item_len` bytes long, checked against the
    /// bytes left so it can size an allocation.
    pub fn count(&mut self, min_item_len: usize, what: &str) -> Result<usize> {
        let at = self.offset();
        let count = self.varint32()? as usize;
        if count.saturating_mul(min_item_len.max(1)) > self.remaining() {
            return Err(Error::corruption(
                self.file,
                at,
                format!(
                    "{what} count {count} cannot fit in the {} bytes left",
                    self.remaining()
                ),
            ));
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::varint::put_varint32;

    #[test]
    fn reads_fields_and_reports_offsets() {
        let mut buf = vec![1u8, 0, 2];
        put_varint32(&mut buf, 3);
        buf.extend_from_slice(b"abc");
        let mut c = Cursor::new(&buf, "f", 10);
        assert_eq!(c.u8("a").unwrap(), 1);
        assert_eq!(c.u16_be("b").unwrap(), 2);
        assert_eq!(c.string("s").unwrap(), "abc");
        c.finish("all").unwrap();
        let err = c.u8("x").unwrap_err();
        match err {
            Error::Corruption { offset, file, .. } => {
                assert_eq!((offset, file.as_str()), (17, "f"))
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn counts_are_bounded_by_input() {
        let mut buf = Vec::new();
        put_varint32(&mut buf, 1_000_000);
        assert!(Cursor::new(&buf, "f", 0).count(1, "items").is_err());
        let mut small = Vec::new();
        put_varint32(&mut small, 2);
        small.extend_from_slice(&[0, 0]);
        assert_eq!(Cursor::new(&small, "f", 0).count(1, "items").unwrap(), 2);
    }
}

//! Pure byte codecs: no I/O.
//!
//! Every decoder takes `&[u8]` and returns a value or a [`DecodeError`]; none
//! panics on any input, so each can be fuzzed alone. FORMAT.md is the spec.
//! All integers are little-endian; every checksum is CRC-32C (Castagnoli).

pub mod checkpoint;
pub mod cursor;
pub mod dedup_run;
pub mod envelope;
pub mod group;
pub mod index;
pub mod journal;
pub mod producer;
pub mod record;
pub mod segment;
pub mod token;
pub mod topic_change;
pub mod topic_meta;
pub mod webhook;

/// Why bytes failed to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended before a field or frame was complete.
    #[error("truncated: needed {needed} bytes, {available} available")]
    Truncated {
        /// Bytes the field needed.
        needed: u64,
        /// Bytes that were left.
        available: u64,
    },
    /// The file does not start with the magic of its kind.
    #[error("bad magic")]
    BadMagic,
    /// The format version is not one this build reads.
    #[error("unsupported format version {found}")]
    UnsupportedVersion {
        /// The version found in the header.
        found: u16,
    },
    /// A stored CRC-32C does not match the bytes it covers.
    #[error("CRC mismatch: stored {expected:#010x}, computed {actual:#010x}")]
    CrcMismatch {
        /// The CRC stored in the bytes.
        expected: u32,
        /// The CRC computed over the bytes.
        actual: u32,
    },
    /// A length field exceeds its bound from `limits.rs`; nothing was allocated.
    #[error("length {len} out of bounds (max {max})")]
    LengthOutOfBounds {
        /// The length read.
        len: u64,
        /// The largest length allowed.
        max: u64,
    },
    /// A field holds a value its rules forbid; the text names the rule.
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

/// CRC-32C of `bytes`.
pub fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// A bounds-checked little-endian reader over a byte slice.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, position: 0 }
    }

    /// Bytes consumed so far.
    #[inline]
    pub fn position(&self) -> usize {
        self.position
    }

    /// Bytes left.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    /// The next `len` bytes.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] when fewer than `len` bytes are left.
    #[inline]
    pub fn bytes(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < len {
            return Err(DecodeError::Truncated {
                needed: len as u64,
                available: self.remaining() as u64,
            });
        }
        let slice = &self.bytes[self.position..self.position + len];
        self.position += len;
        Ok(slice)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.bytes(N)?);
        Ok(array)
    }

    /// The next `u8`, little-endian.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] when fewer than 1 bytes are left.
    #[inline]
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// The next `u16`, little-endian.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] when fewer than 2 bytes are left.
    #[inline]
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// The next `u32`, little-endian.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] when fewer than 4 bytes are left.
    #[inline]
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// The next `u64`, little-endian.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] when fewer than 8 bytes are left.
    #[inline]
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// The next `i64`, little-endian.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] when fewer than 8 bytes are left.
    #[inline]
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// A `u16`-length-prefixed byte string of at most `max` bytes.
    ///
    /// # Errors
    /// [`DecodeError::LengthOutOfBounds`] above `max`, [`DecodeError::Truncated`] on short input.
    pub fn bytes16(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()? as usize;
        check_len(len as u64, max as u64)?;
        self.bytes(len)
    }

    /// A `u32`-length-prefixed byte string of at most `max` bytes.
    ///
    /// # Errors
    /// [`DecodeError::LengthOutOfBounds`] above `max`, [`DecodeError::Truncated`] on short input.
    pub fn bytes32(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        check_len(len as u64, max as u64)?;
        self.bytes(len)
    }

    /// A `u16`-length-prefixed UTF-8 string of at most `max` bytes.
    ///
    /// # Errors
    /// As [`Reader::bytes16`], and [`DecodeError::Invalid`] when the bytes are not UTF-8.
    pub fn str16(&mut self, max: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes16(max)?).map_err(|_| DecodeError::Invalid("string is not UTF-8"))
    }
}

/// Fails when `len > max`.
///
/// # Errors
/// [`DecodeError::LengthOutOfBounds`] when `len > max`.
pub fn check_len(len: u64, max: u64) -> Result<(), DecodeError> {
    if len > max {
        Err(DecodeError::LengthOutOfBounds { len, max })
    } else {
        Ok(())
    }
}

/// Little-endian appends to a byte vector.
pub trait Put {
    /// Appends a `u8`.
    fn put_u8(&mut self, value: u8);
    /// Appends a `u16`, little-endian.
    fn put_u16(&mut self, value: u16);
    /// Appends a `u32`, little-endian.
    fn put_u32(&mut self, value: u32);
    /// Appends a `u64`, little-endian.
    fn put_u64(&mut self, value: u64);
    /// Appends an `i64`, little-endian.
    fn put_i64(&mut self, value: i64);
    /// A `u16` length then the bytes. The caller has checked the length.
    ///
    /// # Panics
    /// When `bytes` is longer than `u16::MAX`.
    fn put_bytes16(&mut self, bytes: &[u8]);
    /// A `u32` length then the bytes. The caller has checked the length.
    ///
    /// # Panics
    /// When `bytes` is longer than `u32::MAX`.
    fn put_bytes32(&mut self, bytes: &[u8]);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, value: u8) {
        self.push(value);
    }
    fn put_u16(&mut self, value: u16) {
        self.extend_from_slice(&value.to_le_bytes());
    }
    fn put_u32(&mut self, value: u32) {
        self.extend_from_slice(&value.to_le_bytes());
    }
    fn put_u64(&mut self, value: u64) {
        self.extend_from_slice(&value.to_le_bytes());
    }
    fn put_i64(&mut self, value: i64) {
        self.extend_from_slice(&value.to_le_bytes());
    }
    fn put_bytes16(&mut self, bytes: &[u8]) {
        let len = u16::try_from(bytes.len()).expect("caller checked the length against a u16 limit");
        self.put_u16(len);
        self.extend_from_slice(bytes);
    }
    fn put_bytes32(&mut self, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).expect("caller checked the length against a u32 limit");
        self.put_u32(len);
        self.extend_from_slice(bytes);
    }
}

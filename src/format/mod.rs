//! Pure byte codecs: no I/O.
//!
//! Every decoder takes `&[u8]` and returns a value or a [`DecodeError`]; none
//! panics on any input, so each can be fuzzed alone. FORMAT.md is the spec.
//! All integers are little-endian; every checksum is CRC-32C (Castagnoli).

pub mod checkpoint;
pub mod envelope;
pub mod index;
pub mod record;
pub mod segment;

/// Why bytes failed to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated: needed {needed} bytes, {available} available")]
    Truncated { needed: u64, available: u64 },
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported format version {found}")]
    UnsupportedVersion { found: u16 },
    #[error("CRC mismatch: stored {expected:#010x}, computed {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("length {len} out of bounds (max {max})")]
    LengthOutOfBounds { len: u64, max: u64 },
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
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, position: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

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

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.bytes(N)?);
        Ok(array)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// A `u16`-length-prefixed byte string of at most `max` bytes.
    pub fn bytes16(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()? as usize;
        check_len(len as u64, max as u64)?;
        self.bytes(len)
    }

    /// A `u32`-length-prefixed byte string of at most `max` bytes.
    pub fn bytes32(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        check_len(len as u64, max as u64)?;
        self.bytes(len)
    }

    /// A `u16`-length-prefixed UTF-8 string of at most `max` bytes.
    pub fn str16(&mut self, max: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes16(max)?).map_err(|_| DecodeError::Invalid("string is not UTF-8"))
    }
}

/// Fails when `len > max`.
pub fn check_len(len: u64, max: u64) -> Result<(), DecodeError> {
    if len > max {
        Err(DecodeError::LengthOutOfBounds { len, max })
    } else {
        Ok(())
    }
}

/// Little-endian appends to a byte vector.
pub trait Put {
    fn put_u8(&mut self, value: u8);
    fn put_u16(&mut self, value: u16);
    fn put_u32(&mut self, value: u32);
    fn put_u64(&mut self, value: u64);
    fn put_i64(&mut self, value: i64);
    /// A `u16` length then the bytes. The caller has checked the length.
    fn put_bytes16(&mut self, bytes: &[u8]);
    /// A `u32` length then the bytes. The caller has checked the length.
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

//! The segment file header. See FORMAT.md.
//!
//! | off | size | type | field          | meaning                              |
//! |-----|------|------|----------------|--------------------------------------|
//! | 0   | 8    | [u8] | magic          | `STELESEG`                           |
//! | 8   | 2    | u16  | format_version | 1                                    |
//! | 10  | 2    | u16  | flags          | 0                                    |
//! | 12  | 4    | u32  | partition      | the partition's index                |
//! | 16  | 8    | u64  | base_offset    | offset of the segment's first record |
//! | 24  | 8    | i64  | created_ms     | creation time, Unix ms               |
//! | 32  | 4    | u32  | reserved       | 0                                    |
//! | 36  | 4    | u32  | header_crc     | CRC-32C of bytes [0, 36)             |

use super::{DecodeError, Put, Reader, crc};
use crate::event::{Offset, PartitionId};

/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"STELESEG";
/// Format version this build writes.
pub const SEGMENT_VERSION: u16 = 1;
/// Versions this build reads.
pub const SEGMENT_VERSIONS_SUPPORTED: &[u16] = &[1];
/// Length of the segment header; the first record frame starts at this position.
pub const SEGMENT_HEADER_LEN: usize = 40;

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The partition's index; must match the directory.
    pub partition: PartitionId,
    /// The offset of the segment's first record; must match the file name.
    pub base_offset: Offset,
    /// Creation time, Unix milliseconds; drives rolling by age.
    pub created_ms: i64,
}

/// Encodes a header.
pub fn encode(header: &SegmentHeader) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SEGMENT_HEADER_LEN);
    bytes.extend_from_slice(SEGMENT_MAGIC);
    bytes.put_u16(SEGMENT_VERSION);
    bytes.put_u16(0);
    bytes.put_u32(header.partition.0);
    bytes.put_u64(header.base_offset.0);
    bytes.put_i64(header.created_ms);
    bytes.put_u32(0);
    let checksum = crc(&bytes);
    bytes.put_u32(checksum);
    debug_assert_eq!(bytes.len(), SEGMENT_HEADER_LEN);
    bytes
}

/// Decodes and checks a header.
///
/// # Errors
/// [`DecodeError::Truncated`], [`DecodeError::CrcMismatch`], [`DecodeError::BadMagic`] or
/// [`DecodeError::UnsupportedVersion`], checked in that order.
pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, DecodeError> {
    let mut reader = Reader::new(bytes);
    let magic = reader.bytes(8)?;
    let version = reader.u16()?;
    let _flags = reader.u16()?;
    let partition = PartitionId(reader.u32()?);
    let base_offset = Offset(reader.u64()?);
    let created_ms = reader.i64()?;
    let _reserved = reader.u32()?;
    let stored = reader.u32()?;
    let computed = crc(&bytes[..SEGMENT_HEADER_LEN - 4]);
    if stored != computed {
        return Err(DecodeError::CrcMismatch {
            expected: stored,
            actual: computed,
        });
    }
    if magic != SEGMENT_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if !SEGMENT_VERSIONS_SUPPORTED.contains(&version) {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    Ok(SegmentHeader {
        partition,
        base_offset,
        created_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_roundtrips_and_detects_damage() {
        let header = SegmentHeader {
            partition: PartitionId(3),
            base_offset: Offset(1234),
            created_ms: 99,
        };
        let bytes = encode(&header);
        assert_eq!(decode(&bytes), Ok(header));
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&damaged).is_err(), "bit {bit} undetected");
        }
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err());
        }
    }
}

//! The dedup run file (`dedup/*.run`, `STELEDDP`): an immutable, sorted slice of
//! a partition's idempotency-id fingerprint index. See FORMAT.md, "Dedup run file".
//!
//! A 64-byte header in a 4096-byte block of its own, then blocks of 170 entries
//! (`u64 fingerprint`, `u64 offset`, `i64 timestamp_ms`) each with a CRC in its
//! last four bytes, then the fence array (the first fingerprint of each block).

use super::{DecodeError, Put, Reader, check_len, crc};
use crate::limits::{
    DEDUP_RUN_BLOCK_ENTRIES_COUNT, DEDUP_RUN_BLOCK_SIZE, DEDUP_RUN_ENTRIES_COUNT_MAX, DEDUP_RUN_ENTRY_LEN,
};

/// The magic of a dedup run file.
pub const RUN_MAGIC: &[u8; 8] = b"STELEDDP";
/// The version this build writes: fingerprints of (key, idempotency id).
pub const RUN_VERSION: u16 = 2;
/// Version 1: fingerprints of the idempotency id alone (`Fingerprint::legacy`).
pub const RUN_VERSION_ID_ONLY: u16 = 1;
/// The versions this build reads.
pub const RUN_VERSIONS_SUPPORTED: &[u16] = &[RUN_VERSION_ID_ONLY, RUN_VERSION];
/// Length of the run header; it sits in a block of its own, zero-padded.
pub const RUN_HEADER_LEN: usize = 64;
/// Position of a block's CRC within the block.
pub const BLOCK_CRC_POSITION: usize = DEDUP_RUN_BLOCK_SIZE - 4;
/// [`DEDUP_RUN_BLOCK_SIZE`] as a byte position.
pub const BLOCK_SIZE_U64: u64 = DEDUP_RUN_BLOCK_SIZE as u64;
const _: () = assert!(RUN_HEADER_LEN <= DEDUP_RUN_BLOCK_SIZE);
const _: () = assert!(DEDUP_RUN_ENTRY_LEN == 24);

/// One entry: an event at `offset`, appended at `timestamp_ms`, carries an id whose
/// fingerprint is `fingerprint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunEntry {
    /// The keyed fingerprint (version 2) or the id's fingerprint (version 1).
    pub fingerprint: u64,
    /// The offset of the event that carries the id.
    pub offset: u64,
    /// The append timestamp of that event, Unix ms.
    pub timestamp_ms: i64,
}

// ---------------------------------------------------------------------------

/// The fields of a run header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunHeader {
    /// One of `RUN_VERSIONS_SUPPORTED`; it says which fingerprint the entries hold.
    pub version: u16,
    /// Entries in the run.
    pub entries_count: u64,
    /// First offset of the run's claim.
    pub offset_start: u64,
    /// One past the last offset of the claim.
    pub offset_end: u64,
    /// Smallest entry timestamp, Unix ms; 0 when the run is empty.
    pub timestamp_min: i64,
    /// Largest entry timestamp, Unix ms; 0 when the run is empty.
    pub timestamp_max: i64,
    /// CRC-32C of the whole fence array.
    pub fence_crc: u32,
}

/// Encodes a run header (64 bytes, its CRC last).
pub fn encode_header(header: &RunHeader) -> Vec<u8> {
    let bytes = header_bytes(header);
    debug_assert_eq!(bytes.len(), RUN_HEADER_LEN);
    debug_assert_eq!(decode_header(&bytes), Ok(*header));
    bytes
}

/// The header's bytes as written, without the debug self-check (tests encode
/// headers the decoder must refuse).
fn header_bytes(header: &RunHeader) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(RUN_HEADER_LEN);
    bytes.extend_from_slice(RUN_MAGIC);
    bytes.put_u16(header.version);
    bytes.put_u16(0);
    bytes.put_u32(DEDUP_RUN_BLOCK_SIZE as u32);
    bytes.put_u64(header.entries_count);
    bytes.put_u64(header.offset_start);
    bytes.put_u64(header.offset_end);
    bytes.put_i64(header.timestamp_min);
    bytes.put_i64(header.timestamp_max);
    bytes.put_u32(header.fence_crc);
    let header_crc = crc(&bytes);
    bytes.put_u32(header_crc);
    bytes
}

/// Decodes and checks a run header: CRC, magic, version, flags, block size, the
/// entry count bound and the order of the claim and of the timestamps.
///
/// # Errors
/// The first [`DecodeError`] among those checks.
pub fn decode_header(bytes: &[u8]) -> Result<RunHeader, DecodeError> {
    let mut reader = Reader::new(bytes);
    let magic = reader.bytes(8)?;
    let version = reader.u16()?;
    let flags = reader.u16()?;
    let block_size = reader.u32()?;
    let entries_count = reader.u64()?;
    let offset_start = reader.u64()?;
    let offset_end = reader.u64()?;
    let timestamp_min = reader.i64()?;
    let timestamp_max = reader.i64()?;
    let fence_crc = reader.u32()?;
    let header_crc = reader.u32()?;
    let computed = crc(&bytes[..RUN_HEADER_LEN - 4]);
    if header_crc != computed {
        return Err(DecodeError::CrcMismatch {
            expected: header_crc,
            actual: computed,
        });
    }
    if magic != RUN_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if !RUN_VERSIONS_SUPPORTED.contains(&version) {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    if flags != 0 {
        return Err(DecodeError::Invalid("dedup run flags are not 0"));
    }
    if block_size as usize != DEDUP_RUN_BLOCK_SIZE {
        return Err(DecodeError::Invalid("dedup run block size is not 4096"));
    }
    check_len(entries_count, DEDUP_RUN_ENTRIES_COUNT_MAX)?;
    if offset_start > offset_end {
        return Err(DecodeError::Invalid("dedup run offset_start is above offset_end"));
    }
    if entries_count > 0 && timestamp_min > timestamp_max {
        return Err(DecodeError::Invalid(
            "dedup run timestamp_min is above timestamp_max",
        ));
    }
    Ok(RunHeader {
        version,
        entries_count,
        offset_start,
        offset_end,
        timestamp_min,
        timestamp_max,
        fence_crc,
    })
}

/// Blocks of a run of `entries_count` entries.
pub fn blocks_count(entries_count: u64) -> u64 {
    entries_count.div_ceil(DEDUP_RUN_BLOCK_ENTRIES_COUNT as u64)
}

/// Byte position of block `block_index`.
pub fn block_position(block_index: u64) -> u64 {
    BLOCK_SIZE_U64 * (1 + block_index)
}

/// Byte position of the fence array of a run of `blocks` blocks.
pub fn fence_position(blocks: u64) -> u64 {
    block_position(blocks)
}

/// The exact length of a run file of `blocks` blocks.
pub fn run_file_len(blocks: u64) -> u64 {
    fence_position(blocks) + 8 * blocks
}

/// Entries in block `block_index` of a run of `entries_count` entries.
pub fn block_entries_count(entries_count: u64, block_index: u64) -> usize {
    let before = block_index * DEDUP_RUN_BLOCK_ENTRIES_COUNT as u64;
    let left = entries_count.saturating_sub(before);
    left.min(DEDUP_RUN_BLOCK_ENTRIES_COUNT as u64) as usize
}

/// Encodes up to one block of entries into `block` (exactly one block long).
///
/// # Panics
/// When `entries` overfill a block or `block` is not one block long: callers
/// split entries by [`DEDUP_RUN_BLOCK_ENTRIES_COUNT`].
pub fn encode_block(entries: &[RunEntry], block: &mut [u8]) {
    assert!(
        entries.len() <= DEDUP_RUN_BLOCK_ENTRIES_COUNT,
        "block overfull: {}",
        entries.len()
    );
    assert_eq!(block.len(), DEDUP_RUN_BLOCK_SIZE);
    block.fill(0);
    for (index, entry) in entries.iter().enumerate() {
        let bytes = &mut block[index * DEDUP_RUN_ENTRY_LEN..(index + 1) * DEDUP_RUN_ENTRY_LEN];
        bytes[0..8].copy_from_slice(&entry.fingerprint.to_le_bytes());
        bytes[8..16].copy_from_slice(&entry.offset.to_le_bytes());
        bytes[16..24].copy_from_slice(&entry.timestamp_ms.to_le_bytes());
    }
    let block_crc = crc(&block[..BLOCK_CRC_POSITION]);
    block[BLOCK_CRC_POSITION..].copy_from_slice(&block_crc.to_le_bytes());
}

/// Checks a block's CRC and decodes its first `entries_count` entries.
///
/// # Errors
/// [`DecodeError::Truncated`] for a short block, [`DecodeError::LengthOutOfBounds`]
/// for a count above a block's, [`DecodeError::CrcMismatch`].
pub fn decode_block(block: &[u8], entries_count: usize, out: &mut Vec<RunEntry>) -> Result<(), DecodeError> {
    if block.len() != DEDUP_RUN_BLOCK_SIZE {
        return Err(DecodeError::Truncated {
            needed: DEDUP_RUN_BLOCK_SIZE as u64,
            available: block.len() as u64,
        });
    }
    check_len(entries_count as u64, DEDUP_RUN_BLOCK_ENTRIES_COUNT as u64)?;
    let mut reader = Reader::new(&block[BLOCK_CRC_POSITION..]);
    let stored = reader.u32()?;
    let computed = crc(&block[..BLOCK_CRC_POSITION]);
    if stored != computed {
        return Err(DecodeError::CrcMismatch {
            expected: stored,
            actual: computed,
        });
    }
    let mut reader = Reader::new(&block[..entries_count * DEDUP_RUN_ENTRY_LEN]);
    for _ in 0..entries_count {
        out.push(RunEntry {
            fingerprint: reader.u64()?,
            offset: reader.u64()?,
            timestamp_ms: reader.i64()?,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> RunHeader {
        RunHeader {
            version: RUN_VERSION,
            entries_count: 171,
            offset_start: 10,
            offset_end: 400,
            timestamp_min: 5,
            timestamp_max: 9,
            fence_crc: 0xDEAD_BEEF,
        }
    }

    #[test]
    fn header_roundtrips_and_rejects_every_flipped_bit() {
        let bytes = encode_header(&header());
        assert_eq!(bytes.len(), RUN_HEADER_LEN);
        assert_eq!(decode_header(&bytes), Ok(header()));
        for bit in 0..RUN_HEADER_LEN * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_header(&damaged).is_err(), "bit {bit} undetected");
        }
        let backwards = RunHeader {
            offset_start: 500,
            ..header()
        };
        assert!(decode_header(&header_bytes(&backwards)).is_err());
        assert!(decode_header(&bytes[..RUN_HEADER_LEN - 1]).is_err());
    }

    #[test]
    fn blocks_roundtrip_and_a_flipped_bit_fails_the_crc() {
        let entries: Vec<RunEntry> = (0..DEDUP_RUN_BLOCK_ENTRIES_COUNT as u64)
            .map(|index| RunEntry {
                fingerprint: index * 3,
                offset: 1000 - index,
                timestamp_ms: index as i64,
            })
            .collect();
        let mut block = vec![0; DEDUP_RUN_BLOCK_SIZE];
        encode_block(&entries[..5], &mut block);
        let mut out = Vec::new();
        decode_block(&block, 5, &mut out).expect("decodes");
        assert_eq!(out, entries[..5]);
        encode_block(&entries, &mut block);
        out.clear();
        decode_block(&block, entries.len(), &mut out).expect("decodes");
        assert_eq!(out, entries);
        block[17] ^= 4;
        assert!(matches!(
            decode_block(&block, entries.len(), &mut Vec::new()),
            Err(DecodeError::CrcMismatch { .. })
        ));
        assert!(decode_block(&block[1..], 1, &mut Vec::new()).is_err());
        assert!(decode_block(&block, DEDUP_RUN_BLOCK_ENTRIES_COUNT + 1, &mut Vec::new()).is_err());
        assert_eq!(blocks_count(171), 2);
        assert_eq!(block_entries_count(171, 1), 1);
        assert_eq!(run_file_len(2), 4096 * 3 + 16);
    }
}

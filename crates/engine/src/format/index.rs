//! The sparse index of a sealed segment (`.idx`), in an envelope (`STELEIDX`).
//!
//! Body, version 1:
//!
//! | off | size | type | field         | meaning                                  |
//! |-----|------|------|---------------|------------------------------------------|
//! | 0   | 8    | u64  | base_offset   | the segment's base offset                |
//! | 8   | 8    | u64  | segment_size  | the segment's length in bytes            |
//! | 16  | 8    | u64  | records_count | records in the segment                   |
//! | 24  | 8    | i64  | timestamp_max | largest record timestamp, or i64::MIN    |
//! | 32  | 4    | u32  | entries_count | number of entries that follow            |
//! | 36  | 16×n |      | entries       | see below, strictly increasing offsets   |
//!
//! Entry: `u32 offset_delta` (offset - base_offset), `u32 position` (of the frame),
//! `i64 timestamp_ms` (of that record).

use super::{DecodeError, Put, Reader, envelope};
use crate::event::Offset;

/// Magic of an index file's envelope.
pub const INDEX_MAGIC: &[u8; 8] = b"STELEIDX";
/// Body version this build writes.
pub const INDEX_VERSION: u16 = 1;
/// Body versions this build reads.
pub const INDEX_VERSIONS_SUPPORTED: &[u16] = &[1];
/// Encoded length of one [`IndexEntry`], in bytes.
pub const INDEX_ENTRY_LEN: usize = 16;

/// One sparse index entry: where a record starts, and its timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// The record's offset minus the segment's base offset.
    pub offset_delta: u32,
    /// The byte position of the record's frame within the segment file.
    pub position: u32,
    /// The record's timestamp, Unix milliseconds.
    pub timestamp_ms: i64,
}

/// A sealed segment's summary and sparse index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentIndex {
    /// The segment's base offset.
    pub base_offset: Offset,
    /// The segment file's length in bytes; an index disagreeing with the file is rebuilt.
    pub segment_size: u64,
    /// Records in the segment.
    pub records_count: u64,
    /// The largest record timestamp, Unix milliseconds; `i64::MIN` for no records.
    pub timestamp_max: i64,
    /// Entries with strictly increasing offsets and positions.
    pub entries: Vec<IndexEntry>,
}

/// Encodes an index file.
///
/// # Panics
/// When there are more than `u32::MAX` entries.
pub fn encode(index: &SegmentIndex) -> Vec<u8> {
    let mut body = Vec::with_capacity(36 + index.entries.len() * INDEX_ENTRY_LEN);
    body.put_u64(index.base_offset.0);
    body.put_u64(index.segment_size);
    body.put_u64(index.records_count);
    body.put_i64(index.timestamp_max);
    body.put_u32(u32::try_from(index.entries.len()).expect("entries are bounded by u32 records"));
    for entry in &index.entries {
        body.put_u32(entry.offset_delta);
        body.put_u32(entry.position);
        body.put_i64(entry.timestamp_ms);
    }
    envelope::encode(INDEX_MAGIC, INDEX_VERSION, &body)
}

/// Decodes and checks an index file. `segment_size_max` bounds the sizes it may
/// claim.
///
/// # Errors
/// A [`DecodeError`] on a bad envelope, a count disagreeing with the length, or
/// entries not increasing or outside the segment.
pub fn decode(bytes: &[u8], segment_size_max: u64) -> Result<SegmentIndex, DecodeError> {
    let (_, body) = envelope::decode(bytes, INDEX_MAGIC, INDEX_VERSIONS_SUPPORTED, segment_size_max)?;
    let mut reader = Reader::new(body);
    let base_offset = Offset(reader.u64()?);
    let segment_size = reader.u64()?;
    let records_count = reader.u64()?;
    let timestamp_max = reader.i64()?;
    let entries_count = reader.u32()? as usize;
    if entries_count * INDEX_ENTRY_LEN != reader.remaining() {
        return Err(DecodeError::Invalid("index entry count disagrees with length"));
    }
    let mut entries = Vec::with_capacity(entries_count);
    for _ in 0..entries_count {
        let entry = IndexEntry {
            offset_delta: reader.u32()?,
            position: reader.u32()?,
            timestamp_ms: reader.i64()?,
        };
        if let Some(previous) = entries.last() {
            let previous: &IndexEntry = previous;
            if entry.offset_delta <= previous.offset_delta || entry.position <= previous.position {
                return Err(DecodeError::Invalid("index entries not increasing"));
            }
        }
        if entry.position as u64 >= segment_size || entry.offset_delta as u64 >= records_count {
            return Err(DecodeError::Invalid("index entry outside its segment"));
        }
        entries.push(entry);
    }
    Ok(SegmentIndex {
        base_offset,
        segment_size,
        records_count,
        timestamp_max,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_roundtrips_and_rejects_damage() {
        let index = SegmentIndex {
            base_offset: Offset(100),
            segment_size: 10_000,
            records_count: 50,
            timestamp_max: 77,
            entries: vec![
                IndexEntry {
                    offset_delta: 0,
                    position: 40,
                    timestamp_ms: 5,
                },
                IndexEntry {
                    offset_delta: 20,
                    position: 4000,
                    timestamp_ms: 6,
                },
            ],
        };
        let bytes = encode(&index);
        assert_eq!(decode(&bytes, 1 << 30), Ok(index));
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&damaged, 1 << 30).is_err(), "bit {bit} undetected");
        }
    }
}

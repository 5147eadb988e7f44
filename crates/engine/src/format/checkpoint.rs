//! The partition checkpoint (`checkpoint`), in an envelope (`STELECKP`): the
//! derived state of a partition (key states, producer states) as of an offset, so
//! that reopening replays only the log after it. See FORMAT.md.
//!
//! Body, version 1: `u32 partition`, `u64 next_offset` (the checkpoint covers
//! records below it), `u64 floor_base_offset` and `u64 floor_position` (the segment
//! and byte position up to which the log was synced when the checkpoint was
//! written), `i64 last_timestamp_ms`, `u64 keys_count` then per key
//! `u64 hash, u64 last_sequence, u64 last_offset`; `u32 collided_count` then per key
//! `u16 key_len, key, u64 last_sequence, u64 last_offset`; `u32 producers_count`
//! then per producer `u64 id, u32 epoch, u64 last_sequence, i64 last_timestamp_ms,
//! u8 recent_count` and per recent append `u64 sequence, u64 first_offset,
//! u64 first_sequence, u64 last_sequence, i64 timestamp_ms`.

use super::{DecodeError, Put, Reader, check_len, envelope};
use crate::event::{Epoch, Offset, PartitionId, ProducerId, Sequence};
use crate::limits;

/// Magic of a checkpoint file's envelope.
pub const CHECKPOINT_MAGIC: &[u8; 8] = b"STELECKP";
/// Body version this build writes.
pub const CHECKPOINT_VERSION: u16 = 1;
/// Body versions this build reads.
pub const CHECKPOINT_VERSIONS_SUPPORTED: &[u16] = &[1];

/// One of a producer's recent appends in a partition, kept to answer retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecentAppend {
    /// The producer sequence of the append.
    pub sequence: Sequence,
    /// The offset of the append's first event.
    pub first_offset: Offset,
    /// The key sequence of the append's first event.
    pub first_sequence: Sequence,
    /// The key sequence of the append's last event.
    pub last_sequence: Sequence,
    /// The append timestamp, Unix milliseconds.
    pub timestamp_ms: i64,
}

/// A producer's state in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerSnapshot {
    /// The producer's id.
    pub id: ProducerId,
    /// The newest epoch seen from the producer in this partition.
    pub epoch: Epoch,
    /// The producer sequence of its last append to this partition.
    pub last_sequence: Sequence,
    /// The timestamp of its last append, Unix milliseconds; drives idle expiry.
    pub last_timestamp_ms: i64,
    /// Oldest first, at most `PRODUCER_RECENT_APPENDS_COUNT`.
    pub recent: Vec<RecentAppend>,
}

/// A decoded checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// The partition; must match the directory.
    pub partition: PartitionId,
    /// The state covers records below this offset.
    pub next_offset: Offset,
    /// The base offset of the segment holding the sync floor.
    pub floor_base_offset: Offset,
    /// Bytes of that segment known to be synced; a bad frame below is corruption.
    pub floor_position: u64,
    /// The newest assigned timestamp, Unix milliseconds.
    pub last_timestamp_ms: i64,
    /// (hash, last_sequence, last_offset).
    pub keys: Vec<(u64, Sequence, Offset)>,
    /// (key, last_sequence, last_offset) of keys whose hash is taken.
    pub collided: Vec<(Vec<u8>, Sequence, Offset)>,
    /// The state of every producer known to the partition.
    pub producers: Vec<ProducerSnapshot>,
}

/// Encodes a checkpoint file.
///
/// # Panics
/// When a count or a key length does not fit its field; callers keep them within `limits`.
pub fn encode(checkpoint: &Checkpoint) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + checkpoint.keys.len() * 24);
    body.put_u32(checkpoint.partition.0);
    body.put_u64(checkpoint.next_offset.0);
    body.put_u64(checkpoint.floor_base_offset.0);
    body.put_u64(checkpoint.floor_position);
    body.put_i64(checkpoint.last_timestamp_ms);
    body.put_u64(checkpoint.keys.len() as u64);
    for (hash, sequence, offset) in &checkpoint.keys {
        body.put_u64(*hash);
        body.put_u64(sequence.0);
        body.put_u64(offset.0);
    }
    body.put_u32(u32::try_from(checkpoint.collided.len()).expect("collided keys fit in u32"));
    for (key, sequence, offset) in &checkpoint.collided {
        body.put_bytes16(key);
        body.put_u64(sequence.0);
        body.put_u64(offset.0);
    }
    body.put_u32(u32::try_from(checkpoint.producers.len()).expect("producers are bounded"));
    for producer in &checkpoint.producers {
        body.put_u64(producer.id.0);
        body.put_u32(producer.epoch.0);
        body.put_u64(producer.last_sequence.0);
        body.put_i64(producer.last_timestamp_ms);
        body.put_u8(u8::try_from(producer.recent.len()).expect("recent appends are bounded"));
        for recent in &producer.recent {
            body.put_u64(recent.sequence.0);
            body.put_u64(recent.first_offset.0);
            body.put_u64(recent.first_sequence.0);
            body.put_u64(recent.last_sequence.0);
            body.put_i64(recent.timestamp_ms);
        }
    }
    envelope::encode(CHECKPOINT_MAGIC, CHECKPOINT_VERSION, &body)
}

/// Decodes and checks a checkpoint file.
///
/// # Errors
/// A [`DecodeError`] on any malformed envelope or body, including trailing bytes.
pub fn decode(bytes: &[u8]) -> Result<Checkpoint, DecodeError> {
    let (_, body) = envelope::decode(
        bytes,
        CHECKPOINT_MAGIC,
        CHECKPOINT_VERSIONS_SUPPORTED,
        limits::CHECKPOINT_SIZE_BYTES_MAX,
    )?;
    let mut reader = Reader::new(body);
    let mut checkpoint = Checkpoint {
        partition: PartitionId(reader.u32()?),
        next_offset: Offset(reader.u64()?),
        floor_base_offset: Offset(reader.u64()?),
        floor_position: reader.u64()?,
        last_timestamp_ms: reader.i64()?,
        ..Checkpoint::default()
    };
    let keys_count = reader.u64()?;
    check_len(keys_count.saturating_mul(24), reader.remaining() as u64)?;
    checkpoint.keys.reserve(keys_count as usize);
    for _ in 0..keys_count {
        let hash = reader.u64()?;
        let sequence = Sequence(reader.u64()?);
        let offset = Offset(reader.u64()?);
        checkpoint.keys.push((hash, sequence, offset));
    }
    let collided_count = reader.u32()? as u64;
    check_len(collided_count.saturating_mul(18), reader.remaining() as u64)?;
    for _ in 0..collided_count {
        let key = reader.bytes16(limits::KEY_SIZE_MAX)?.to_vec();
        let sequence = Sequence(reader.u64()?);
        let offset = Offset(reader.u64()?);
        checkpoint.collided.push((key, sequence, offset));
    }
    let producers_count = reader.u32()? as u64;
    check_len(producers_count, limits::PARTITION_PRODUCERS_COUNT_MAX as u64)?;
    for _ in 0..producers_count {
        let id = ProducerId(reader.u64()?);
        let epoch = Epoch(reader.u32()?);
        let last_sequence = Sequence(reader.u64()?);
        let last_timestamp_ms = reader.i64()?;
        let recent_count = reader.u8()? as u64;
        check_len(recent_count, limits::PRODUCER_RECENT_APPENDS_COUNT as u64)?;
        let mut recent = Vec::with_capacity(recent_count as usize);
        for _ in 0..recent_count {
            recent.push(RecentAppend {
                sequence: Sequence(reader.u64()?),
                first_offset: Offset(reader.u64()?),
                first_sequence: Sequence(reader.u64()?),
                last_sequence: Sequence(reader.u64()?),
                timestamp_ms: reader.i64()?,
            });
        }
        checkpoint.producers.push(ProducerSnapshot {
            id,
            epoch,
            last_sequence,
            last_timestamp_ms,
            recent,
        });
    }
    if reader.remaining() != 0 {
        return Err(DecodeError::Invalid("trailing bytes in checkpoint"));
    }
    Ok(checkpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_roundtrips_and_rejects_damage() {
        let checkpoint = Checkpoint {
            partition: PartitionId(2),
            next_offset: Offset(100),
            floor_base_offset: Offset(50),
            floor_position: 4000,
            last_timestamp_ms: 123,
            keys: vec![(1, Sequence(2), Offset(3)), (4, Sequence(5), Offset(6))],
            collided: vec![(b"key".to_vec(), Sequence(7), Offset(8))],
            producers: vec![ProducerSnapshot {
                id: ProducerId(1),
                epoch: Epoch(3),
                last_sequence: Sequence(9),
                last_timestamp_ms: 10,
                recent: vec![RecentAppend {
                    sequence: Sequence(9),
                    first_offset: Offset(90),
                    first_sequence: Sequence(0),
                    last_sequence: Sequence(1),
                    timestamp_ms: 10,
                }],
            }],
        };
        let bytes = encode(&checkpoint);
        assert_eq!(decode(&bytes), Ok(checkpoint));
        for bit in (0..bytes.len() * 8).step_by(7) {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&damaged).is_err(), "bit {bit} undetected");
        }
    }
}

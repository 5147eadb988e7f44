//! The topic meta file (`topic.meta`), in an envelope (`STELETOP`): a topic's name
//! and the options that shape its data on disk. See FORMAT.md, "Topic meta".
//!
//! Body, version 1: `u16 name_len`, name, `u32 partitions`, `u8 partition_hash`,
//! `u8 durability`, `u64 sync_interval_ms`, `u64 retention_age_ms`,
//! `u64 retention_bytes`, `u64 dedup_window_ms`, `u64 segment_size_bytes_max`,
//! `u64 segment_age_ms_max`, `u32 payload_size_max`, `u32 index_interval_bytes`,
//! `u8 preallocate`, `u64 producer_idle_ms_max`, `u64 checkpoint_interval_bytes`;
//! `u64::MAX` is "no limit" for the optional limits.

use super::{DecodeError, Put, Reader, envelope};
use crate::config::{Durability, TopicOptions};
use crate::limits;

/// The magic of `topic.meta`'s envelope.
pub const TOPIC_META_MAGIC: &[u8; 8] = b"STELETOP";
/// Body version this build writes.
pub const TOPIC_META_VERSION: u16 = 1;
/// Body versions this build reads.
pub const TOPIC_META_VERSIONS_SUPPORTED: &[u16] = &[1];
/// The key-to-partition hash recorded in a topic's meta: FNV-1a 64.
pub const HASH_FNV1A64: u8 = 1;
const NONE_U64: u64 = u64::MAX;

/// Encodes `topic.meta` for topic `name`.
pub fn encode(name: &str, options: &TopicOptions) -> Vec<u8> {
    let mut body = Vec::new();
    body.put_bytes16(name.as_bytes());
    body.put_u32(options.partitions);
    body.put_u8(HASH_FNV1A64);
    let (durability_kind, interval_ms) = match options.durability {
        Durability::Always => (0, 0),
        Durability::Interval { interval_ms } => (1, interval_ms),
        Durability::None => (2, 0),
    };
    body.put_u8(durability_kind);
    body.put_u64(interval_ms);
    body.put_u64(options.retention_age_ms.unwrap_or(NONE_U64));
    body.put_u64(options.retention_bytes.unwrap_or(NONE_U64));
    body.put_u64(options.dedup_window_ms);
    body.put_u64(options.segment_size_bytes_max);
    body.put_u64(options.segment_age_ms_max.unwrap_or(NONE_U64));
    body.put_u32(options.payload_size_max);
    body.put_u32(options.index_interval_bytes);
    body.put_u8(u8::from(options.preallocate));
    body.put_u64(options.producer_idle_ms_max);
    body.put_u64(options.checkpoint_interval_bytes);
    envelope::encode(TOPIC_META_MAGIC, TOPIC_META_VERSION, &body)
}

/// Decodes `topic.meta` into the topic's name and options.
///
/// # Errors
/// As [`envelope::decode`]; [`DecodeError::Invalid`] for an unknown hash or
/// durability, trailing bytes, or options that fail validation.
pub fn decode(bytes: &[u8]) -> Result<(String, TopicOptions), DecodeError> {
    let (_, body) = envelope::decode(bytes, TOPIC_META_MAGIC, TOPIC_META_VERSIONS_SUPPORTED, 4096)?;
    let mut reader = Reader::new(body);
    let name = reader.str16(limits::TOPIC_NAME_SIZE_MAX)?.to_string();
    let partitions = reader.u32()?;
    if reader.u8()? != HASH_FNV1A64 {
        return Err(DecodeError::Invalid("unknown partition hash"));
    }
    let durability_kind = reader.u8()?;
    let interval_ms = reader.u64()?;
    let durability = match durability_kind {
        0 => Durability::Always,
        1 => Durability::Interval { interval_ms },
        2 => Durability::None,
        _ => return Err(DecodeError::Invalid("unknown durability")),
    };
    let optional = |value: u64| (value != NONE_U64).then_some(value);
    let options = TopicOptions {
        partitions,
        durability,
        retention_age_ms: optional(reader.u64()?),
        retention_bytes: optional(reader.u64()?),
        dedup_window_ms: reader.u64()?,
        segment_size_bytes_max: reader.u64()?,
        segment_age_ms_max: optional(reader.u64()?),
        payload_size_max: reader.u32()?,
        index_interval_bytes: reader.u32()?,
        preallocate: reader.u8()? != 0,
        producer_idle_ms_max: reader.u64()?,
        checkpoint_interval_bytes: reader.u64()?,
    };
    if reader.remaining() != 0 {
        return Err(DecodeError::Invalid("trailing bytes in topic meta"));
    }
    if options.validate().is_err() {
        return Err(DecodeError::Invalid("topic options out of bounds"));
    }
    Ok((name, options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_meta_roundtrips() {
        let options = TopicOptions {
            partitions: 16,
            retention_age_ms: Some(1000),
            retention_bytes: None,
            durability: Durability::Interval { interval_ms: 5 },
            preallocate: true,
            ..TopicOptions::default()
        };
        let bytes = encode("orders", &options);
        assert_eq!(decode(&bytes), Ok(("orders".to_string(), options)));
    }

    #[test]
    fn bad_meta_bodies_are_refused() {
        // Goal: options that fail validation or unknown enumerations never decode.
        let bytes = encode("orders", &TopicOptions::default().partitions(0));
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::Invalid("topic options out of bounds"))
        );
        let fresh = encode("orders", &TopicOptions::default());
        let (_, body) = envelope::decode(&fresh, TOPIC_META_MAGIC, TOPIC_META_VERSIONS_SUPPORTED, 4096)
            .expect("a fresh meta decodes");
        let mut trailing = body.to_vec();
        trailing.push(0);
        let bytes = envelope::encode(TOPIC_META_MAGIC, TOPIC_META_VERSION, &trailing);
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::Invalid("trailing bytes in topic meta"))
        );
    }
}

//! The topic meta file (`topic.meta`), in an envelope (`STELETOP`): a topic's name,
//! the options that shape its data on disk, and the record of their last change.
//! See FORMAT.md, "Topic meta".
//!
//! Body, version 1: `u16 name_len`, name, `u32 partitions`, `u8 partition_hash`,
//! `u8 durability`, `u64 sync_interval_ms`, `u64 retention_age_ms`,
//! `u64 retention_bytes`, `u64 dedup_window_ms`, `u64 segment_size_bytes_max`,
//! `u64 segment_age_ms_max`, `u32 payload_size_max`, `u32 index_interval_bytes`,
//! `u8 preallocate`, `u64 producer_idle_ms_max`, `u64 checkpoint_interval_bytes`;
//! `u64::MAX` is "no limit" for the optional limits.
//! Version 2 (written now) appends `u64 revision` (0 for a topic never changed,
//! then one more per change) and `i64 changed_ms` (the time of the last change,
//! 0 when never changed); a version 1 body reads as revision 0.

use super::{DecodeError, Put, Reader, envelope};
use crate::config::{Durability, TopicOptions};
use crate::limits;

/// The magic of `topic.meta`'s envelope.
pub const TOPIC_META_MAGIC: &[u8; 8] = b"STELETOP";
/// Body version this build writes.
pub const TOPIC_META_VERSION: u16 = 2;
/// Body versions this build reads.
pub const TOPIC_META_VERSIONS_SUPPORTED: &[u16] = &[1, 2];
/// Largest body accepted.
pub const TOPIC_META_BODY_SIZE_MAX: u64 = 4096;
/// The key-to-partition hash recorded in a topic's meta: FNV-1a 64.
pub const HASH_FNV1A64: u8 = 1;
const NONE_U64: u64 = u64::MAX;

/// A topic's meta: its name, options and the record of their last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    /// The topic's name; it must match the directory.
    pub name: String,
    /// The options in effect.
    pub options: TopicOptions,
    /// 0 for a topic never changed, then one more per change.
    pub revision: u64,
    /// Time of the last change, Unix ms; 0 when never changed.
    pub changed_ms: i64,
}

/// Encodes `topic.meta` for topic `name` at revision 0 (a new topic).
pub fn encode(name: &str, options: &TopicOptions) -> Vec<u8> {
    encode_meta(&TopicMeta {
        name: name.to_string(),
        options: options.clone(),
        revision: 0,
        changed_ms: 0,
    })
}

/// Encodes `topic.meta` (version [`TOPIC_META_VERSION`]).
pub fn encode_meta(meta: &TopicMeta) -> Vec<u8> {
    let mut body = Vec::new();
    body.put_bytes16(meta.name.as_bytes());
    body.put_u32(meta.options.partitions);
    body.put_u8(HASH_FNV1A64);
    put_options(&mut body, &meta.options);
    body.put_u64(meta.revision);
    body.put_i64(meta.changed_ms);
    envelope::encode(TOPIC_META_MAGIC, TOPIC_META_VERSION, &body)
}

/// Appends every option but the partition count, in the order of the meta
/// body (shared with the topic change journal).
pub(crate) fn put_options(body: &mut Vec<u8>, options: &TopicOptions) {
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
}

/// Reads what [`put_options`] wrote, with the partition count given.
///
/// # Errors
/// [`DecodeError::Invalid`] for an unknown durability or options that fail
/// validation; [`DecodeError::Truncated`].
pub(crate) fn read_options(reader: &mut Reader<'_>, partitions: u32) -> Result<TopicOptions, DecodeError> {
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
    if options.validate().is_err() {
        return Err(DecodeError::Invalid("topic options out of bounds"));
    }
    Ok(options)
}

/// Decodes `topic.meta` into the topic's name and options.
///
/// # Errors
/// As [`decode_meta`].
pub fn decode(bytes: &[u8]) -> Result<(String, TopicOptions), DecodeError> {
    decode_meta(bytes).map(|meta| (meta.name, meta.options))
}

/// Decodes `topic.meta` of any supported version (version 1 as revision 0).
///
/// # Errors
/// As [`envelope::decode`]; [`DecodeError::Invalid`] for an unknown hash or
/// durability, trailing bytes, or options that fail validation.
pub fn decode_meta(bytes: &[u8]) -> Result<TopicMeta, DecodeError> {
    let (version, body) = envelope::decode(
        bytes,
        TOPIC_META_MAGIC,
        TOPIC_META_VERSIONS_SUPPORTED,
        TOPIC_META_BODY_SIZE_MAX,
    )?;
    let mut reader = Reader::new(body);
    let name = reader.str16(limits::TOPIC_NAME_SIZE_MAX)?.to_string();
    let partitions = reader.u32()?;
    if reader.u8()? != HASH_FNV1A64 {
        return Err(DecodeError::Invalid("unknown partition hash"));
    }
    let options = read_options(&mut reader, partitions)?;
    let (revision, changed_ms) = if version >= 2 {
        (reader.u64()?, reader.i64()?)
    } else {
        (0, 0)
    };
    if reader.remaining() != 0 {
        return Err(DecodeError::Invalid("trailing bytes in topic meta"));
    }
    Ok(TopicMeta {
        name,
        options,
        revision,
        changed_ms,
    })
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

    #[test]
    fn version_1_reads_as_revision_0_and_version_2_roundtrips() {
        // Goal: a topic meta written before changes were recorded (version 1,
        // the committed fixture) still opens as never changed, and the current
        // version keeps the revision and time. The v2 fixture is checked byte
        // for byte, so a change of the layout fails here.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let v1 = std::fs::read(root.join("v1/topics/fixture/topic.meta")).expect("the v1 fixture");
        let (version, _) = envelope::decode(&v1, TOPIC_META_MAGIC, &[1], 4096).expect("a v1 envelope");
        assert_eq!(version, 1);
        let meta = decode_meta(&v1).expect("a v1 meta decodes");
        assert_eq!(meta.name, "fixture");
        assert_eq!(meta.options.partitions, 2);
        assert_eq!((meta.revision, meta.changed_ms), (0, 0));
        let changed = TopicMeta {
            name: "orders".to_string(),
            options: TopicOptions {
                partitions: 3,
                retention_age_ms: Some(3_600_000),
                durability: Durability::None,
                ..TopicOptions::default()
            },
            revision: 2,
            changed_ms: 1_750_000_000_000,
        };
        let bytes = encode_meta(&changed);
        if std::env::var_os("STELE_WRITE_FIXTURES").is_some() {
            std::fs::create_dir_all(root.join("topic-meta-v2")).expect("fixture directory");
            std::fs::write(root.join("topic-meta-v2/topic.meta"), &bytes).expect("write the fixture");
        }
        let fixture = std::fs::read(root.join("topic-meta-v2/topic.meta"))
            .expect("the v2 fixture (STELE_WRITE_FIXTURES=1 writes it)");
        assert_eq!(fixture, bytes, "version 2 is written as the fixture holds it");
        assert_eq!(decode_meta(&fixture), Ok(changed));
        let mut truncated = bytes.clone();
        truncated.truncate(truncated.len() - 1);
        assert!(decode_meta(&truncated).is_err());
    }
}

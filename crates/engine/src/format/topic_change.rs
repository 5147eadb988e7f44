//! Topic change journal records (`STELECHG`): the history of a topic's option
//! changes, one record per change. See FORMAT.md, "Topic change journal".
//!
//! Change (kind 1): `u8 kind`, `u64 revision` (1, 2, 3, ..., increasing),
//! `i64 changed_ms`, principal (`u16` length, UTF-8, may be empty),
//! `u32 partitions`, the options before and the options after, each as in the
//! topic meta body from `durability` on. Records are never removed, so the
//! journal's map is the whole history, keyed by revision.

use super::journal::{JournalRecord, ReplayError};
use super::topic_meta::{put_options, read_options};
use super::{DecodeError, Put, Reader};
use crate::config::TopicOptions;
use crate::limits::{CHANGE_PRINCIPAL_SIZE_MAX, TOPIC_CHANGES_COUNT_MAX};

/// The magic of a topic change journal.
pub const TOPIC_CHANGE_MAGIC: &[u8; 8] = b"STELECHG";
/// Record kind: one change.
const KIND_CHANGE: u8 = 1;
/// Bytes of one encoded option set (from `durability` to
/// `checkpoint_interval_bytes` in the topic meta body).
const OPTIONS_LEN: u32 = 1 + 8 * 6 + 4 + 4 + 1 + 8 + 8;
/// Largest record body.
pub const TOPIC_CHANGE_RECORD_SIZE_MAX: u32 =
    1 + 8 + 8 + 2 + CHANGE_PRINCIPAL_SIZE_MAX as u32 + 4 + 2 * OPTIONS_LEN;

const _: () = assert!(CHANGE_PRINCIPAL_SIZE_MAX <= u16::MAX as usize);

/// One change of a topic's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicChangeRecord {
    /// The topic's revision after the change: 1 for the first change.
    pub revision: u64,
    /// When the change was made, Unix ms.
    pub changed_ms: i64,
    /// Who made it (the server's principal of the caller); empty when unknown.
    pub principal: String,
    /// The options before the change.
    pub previous: TopicOptions,
    /// The options after the change (same partition count).
    pub options: TopicOptions,
}

impl JournalRecord for TopicChangeRecord {
    const MAGIC: &'static [u8; 8] = TOPIC_CHANGE_MAGIC;
    const BODY_SIZE_MAX: u32 = TOPIC_CHANGE_RECORD_SIZE_MAX;
    const ENTRIES_COUNT_MAX: usize = TOPIC_CHANGES_COUNT_MAX;
    type Key = u64;
    type Value = TopicChangeRecord;
    type Context = ();
    /// The newest revision recorded (0 before the first change).
    type Index = u64;

    fn encode(&self, out: &mut Vec<u8>) {
        out.put_u8(KIND_CHANGE);
        out.put_u64(self.revision);
        out.put_i64(self.changed_ms);
        out.put_bytes16(self.principal.as_bytes());
        out.put_u32(self.options.partitions);
        put_options(out, &self.previous);
        put_options(out, &self.options);
    }

    fn decode(body: &[u8], _context: ()) -> Result<TopicChangeRecord, DecodeError> {
        let mut reader = Reader::new(body);
        if reader.u8()? != KIND_CHANGE {
            return Err(DecodeError::Invalid("unknown topic change record kind"));
        }
        let revision = reader.u64()?;
        let changed_ms = reader.i64()?;
        let principal = reader.str16(CHANGE_PRINCIPAL_SIZE_MAX)?.to_string();
        let partitions = reader.u32()?;
        let previous = read_options(&mut reader, partitions)?;
        let options = read_options(&mut reader, partitions)?;
        if reader.remaining() != 0 {
            return Err(DecodeError::Invalid("trailing bytes in a topic change record"));
        }
        if revision == 0 {
            return Err(DecodeError::Invalid("topic change revision 0"));
        }
        Ok(TopicChangeRecord {
            revision,
            changed_ms,
            principal,
            previous,
            options,
        })
    }

    fn key(&self) -> &u64 {
        &self.revision
    }

    fn apply(
        &self,
        current: Option<&TopicChangeRecord>,
        newest: &u64,
        _context: (),
    ) -> Result<Option<TopicChangeRecord>, ReplayError> {
        // Increasing, and dense as written; a gap is a history that starts
        // later (a journal lost or restored older than its meta).
        if current.is_some() || self.revision <= *newest {
            return Err(DecodeError::Invalid("topic change revisions do not increase").into());
        }
        Ok(Some(self.clone()))
    }

    fn snapshot(_revision: &u64, change: &TopicChangeRecord) -> TopicChangeRecord {
        change.clone()
    }

    fn update_index(
        newest: &mut u64,
        _previous: Option<&TopicChangeRecord>,
        next: Option<&TopicChangeRecord>,
    ) {
        if let Some(change) = next {
            *newest = (*newest).max(change.revision);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Durability;
    use crate::format::journal::replay;

    fn change(revision: u64) -> TopicChangeRecord {
        TopicChangeRecord {
            revision,
            changed_ms: 1_750_000_000_000 + revision as i64,
            principal: "token:abc".to_string(),
            previous: TopicOptions::default().partitions(2),
            options: TopicOptions::default()
                .partitions(2)
                .durability(Durability::Interval { interval_ms: 50 })
                .retention_bytes(Some(1 << 20)),
        }
    }

    #[test]
    fn changes_roundtrip_and_replay_only_dense_revisions() {
        // Goal: a record decodes to what was encoded, its size stays within the
        // bound, and replay refuses a revision that repeats or goes back.
        let mut body = Vec::new();
        change(1).encode(&mut body);
        assert!(body.len() <= TOPIC_CHANGE_RECORD_SIZE_MAX as usize);
        assert_eq!(TopicChangeRecord::decode(&body, ()), Ok(change(1)));
        let mut entries = BTreeMap::new();
        let mut newest = 0u64;
        replay::<TopicChangeRecord>(&mut entries, &mut newest, (), &body).expect("revision 1 first");
        assert_eq!(newest, 1);
        assert!(replay::<TopicChangeRecord>(&mut entries, &mut newest, (), &body).is_err());
        let mut later = Vec::new();
        change(3).encode(&mut later);
        replay::<TopicChangeRecord>(&mut entries, &mut newest, (), &later).expect("revision 3 next");
        let mut back = Vec::new();
        change(2).encode(&mut back);
        assert!(replay::<TopicChangeRecord>(&mut entries, &mut newest, (), &back).is_err());
        assert_eq!(entries.len(), 2);
        assert_eq!(newest, 3);
        let mut trailing = body.clone();
        trailing.push(0);
        assert!(TopicChangeRecord::decode(&trailing, ()).is_err());
    }
}

//! Cursor journal records (`STELECUR`): named consumer cursors of one topic and
//! their committed offsets by partition. See FORMAT.md, "Cursor store records".
//!
//! Set (kind 1): `u8 kind`, name (`u16` length, UTF-8 without control
//! characters), `u32 entries_count` (at most the topic's partition count), then
//! per entry `u32 partition`, `u64 offset`. Delete (kind 2): `u8 kind`, name.

use super::journal::{JournalRecord, ReplayError, decode_name, encode_name};
use super::{DecodeError, Put, Reader, check_len};
use crate::event::{Offset, PartitionId};
use crate::limits::{CURSOR_NAME_SIZE_MAX, CURSORS_COUNT_MAX, PARTITIONS_COUNT_MAX};

/// The magic of a cursor journal.
pub const CURSOR_MAGIC: &[u8; 8] = b"STELECUR";
/// Record kind: set the offsets of some partitions of a cursor, creating it.
const KIND_SET: u8 = 1;
/// Record kind: delete a cursor.
const KIND_DELETE: u8 = 2;
/// Size of one (partition, offset) entry of a set record.
const ENTRY_LEN: usize = 12;
/// Largest record body: a set of every partition under a maximal name.
pub const CURSOR_RECORD_SIZE_MAX: u32 =
    (1 + 2 + CURSOR_NAME_SIZE_MAX + 4 + ENTRY_LEN * PARTITIONS_COUNT_MAX as usize) as u32;

const _: () = assert!(CURSOR_NAME_SIZE_MAX <= u16::MAX as usize);
const _: () = assert!(
    (1 + 2 + CURSOR_NAME_SIZE_MAX + 4 + ENTRY_LEN * PARTITIONS_COUNT_MAX as usize) <= u32::MAX as usize
);

/// A cursor's committed offsets, indexed by partition (`None`: never committed).
pub type CursorOffsets = Vec<Option<Offset>>;

/// One record of a cursor journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorRecord {
    /// Sets the committed offsets of some partitions of a cursor, creating it.
    Set {
        /// The cursor.
        name: String,
        /// (partition, committed offset) pairs.
        entries: Vec<(PartitionId, Offset)>,
    },
    /// Removes a cursor (an absent one is allowed and does nothing).
    Delete {
        /// The cursor.
        name: String,
    },
}

impl JournalRecord for CursorRecord {
    const MAGIC: &'static [u8; 8] = CURSOR_MAGIC;
    const BODY_SIZE_MAX: u32 = CURSOR_RECORD_SIZE_MAX;
    const ENTRIES_COUNT_MAX: usize = CURSORS_COUNT_MAX;
    type Key = String;
    type Value = CursorOffsets;
    /// The topic's partition count.
    type Context = u32;
    type Index = ();

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            CursorRecord::Set { name, entries } => {
                out.reserve(1 + 2 + name.len() + 4 + ENTRY_LEN * entries.len());
                out.put_u8(KIND_SET);
                encode_name(out, name);
                out.put_u32(
                    u32::try_from(entries.len()).expect("entries are bounded by the partition count"),
                );
                for (partition, offset) in entries {
                    out.put_u32(partition.0);
                    out.put_u64(offset.0);
                }
            }
            CursorRecord::Delete { name } => {
                out.put_u8(KIND_DELETE);
                encode_name(out, name);
            }
        }
    }

    fn decode(body: &[u8], partitions: u32) -> Result<CursorRecord, DecodeError> {
        let mut reader = Reader::new(body);
        let kind = reader.u8()?;
        let name = decode_name(&mut reader, CURSOR_NAME_SIZE_MAX)?.to_string();
        let record = match kind {
            KIND_SET => {
                let count = reader.u32()?;
                check_len(u64::from(count), u64::from(partitions))?;
                let mut entries = Vec::with_capacity(count as usize);
                // Bounded by `count`, itself bounded by the partition count.
                for _ in 0..count {
                    entries.push((PartitionId(reader.u32()?), Offset(reader.u64()?)));
                }
                CursorRecord::Set { name, entries }
            }
            KIND_DELETE => CursorRecord::Delete { name },
            _ => return Err(DecodeError::Invalid("unknown cursor record kind")),
        };
        if reader.remaining() != 0 {
            return Err(DecodeError::Invalid("trailing bytes in a cursor record"));
        }
        Ok(record)
    }

    fn key(&self) -> &String {
        match self {
            CursorRecord::Set { name, .. } | CursorRecord::Delete { name } => name,
        }
    }

    fn apply(
        &self,
        current: Option<&CursorOffsets>,
        _index: &(),
        partitions: u32,
    ) -> Result<Option<CursorOffsets>, ReplayError> {
        let CursorRecord::Set { entries, .. } = self else {
            return Ok(None);
        };
        let mut offsets = current
            .cloned()
            .unwrap_or_else(|| vec![None; partitions as usize]);
        for &(partition, offset) in entries {
            let Some(slot) = offsets.get_mut(partition.0 as usize) else {
                return Err(ReplayError::Inconsistent(format!(
                    "cursor record names partition {partition}, but the topic has {partitions} partitions"
                )));
            };
            *slot = Some(offset);
        }
        Ok(Some(offsets))
    }

    fn snapshot(name: &String, offsets: &CursorOffsets) -> CursorRecord {
        CursorRecord::Set {
            name: name.clone(),
            entries: committed(offsets).collect(),
        }
    }

    fn snapshot_body_len(name: &String, offsets: &CursorOffsets) -> usize {
        1 + 2 + name.len() + 4 + ENTRY_LEN * committed(offsets).count()
    }
}

/// The committed (partition, offset) pairs of a cursor, by partition.
pub fn committed(offsets: &CursorOffsets) -> impl Iterator<Item = (PartitionId, Offset)> + '_ {
    offsets
        .iter()
        .enumerate()
        .filter_map(|(index, offset)| offset.map(|offset| (PartitionId(index as u32), offset)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::format::journal::replay;

    fn body(record: &CursorRecord) -> Vec<u8> {
        let mut body = Vec::new();
        record.encode(&mut body);
        body
    }

    #[test]
    fn records_roundtrip_and_snapshot_lengths_match() {
        let set = CursorRecord::Set {
            name: "billing".to_string(),
            entries: vec![(PartitionId(0), Offset(10)), (PartitionId(3), Offset(7))],
        };
        let delete = CursorRecord::Delete {
            name: "billing".to_string(),
        };
        for record in [&set, &delete] {
            assert_eq!(CursorRecord::decode(&body(record), 4).as_ref(), Ok(record));
        }
        let offsets = vec![Some(Offset(10)), None, None, Some(Offset(7))];
        let name = "billing".to_string();
        assert_eq!(
            CursorRecord::snapshot_body_len(&name, &offsets),
            body(&CursorRecord::snapshot(&name, &offsets)).len()
        );
        assert_eq!(CursorRecord::snapshot(&name, &offsets), set);
    }

    #[test]
    fn bad_bodies_are_invalid_and_a_partition_beyond_the_topic_is_inconsistent() {
        // Goal: replay refuses every rule of FORMAT.md's cursor records.
        let set = |partition: u32| CursorRecord::Set {
            name: "c".to_string(),
            entries: vec![(PartitionId(partition), Offset(1))],
        };
        let mut trailing = body(&set(0));
        trailing.push(0);
        let mut unknown_kind = body(&set(0));
        unknown_kind[0] = 9;
        for bad in [trailing, unknown_kind, vec![KIND_SET, 0, 0, 0, 0, 0, 0]] {
            assert!(CursorRecord::decode(&bad, 4).is_err(), "{bad:?}");
        }
        // Two entries for a topic of one partition: the count is out of bounds.
        let two = CursorRecord::Set {
            name: "c".to_string(),
            entries: vec![(PartitionId(0), Offset(1)), (PartitionId(0), Offset(2))],
        };
        assert!(matches!(
            CursorRecord::decode(&body(&two), 1),
            Err(DecodeError::LengthOutOfBounds { len: 2, max: 1 })
        ));
        let mut cursors = BTreeMap::new();
        assert!(matches!(
            replay::<CursorRecord>(&mut cursors, &mut (), 2, &body(&set(3))),
            Err(ReplayError::Inconsistent(_))
        ));
        assert!(cursors.is_empty());
        assert_eq!(
            replay::<CursorRecord>(&mut cursors, &mut (), 2, &body(&set(1))),
            Ok(("c".to_string(), None))
        );
        assert_eq!(cursors["c"], vec![None, Some(Offset(1))]);
        let delete = CursorRecord::Delete {
            name: "c".to_string(),
        };
        assert!(replay::<CursorRecord>(&mut cursors, &mut (), 2, &body(&delete)).is_ok());
        assert!(replay::<CursorRecord>(&mut cursors, &mut (), 2, &body(&delete)).is_ok());
        assert!(cursors.is_empty());
    }
}

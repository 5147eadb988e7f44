//! Producer journal records (`STELEPRD`): a topic's idempotent producers, name ->
//! (id, epoch). See FORMAT.md, "Producer registry records".
//!
//! Open producer (kind 1): `u8 kind`, name (`u16` length, UTF-8 without control
//! characters), `u64 id` (never 0 or `u64::MAX`), `u32 epoch`. A later record of a
//! name repeats its id with a larger epoch; a new name never takes an id in use.

use std::collections::HashSet;

use super::journal::{JournalRecord, ReplayError, decode_name, encode_name};
use super::{DecodeError, Put, Reader};
use crate::event::{Epoch, ProducerId};
use crate::limits::{PRODUCER_NAME_SIZE_MAX, PRODUCERS_COUNT_MAX};

/// The magic of a producer journal.
pub const PRODUCER_MAGIC: &[u8; 8] = b"STELEPRD";
/// Record kind: a producer name has this id and epoch.
const KIND_OPEN: u8 = 1;
/// Largest record body: a maximal name, an id and an epoch.
pub const PRODUCER_RECORD_SIZE_MAX: u32 = (1 + 2 + PRODUCER_NAME_SIZE_MAX + 8 + 4) as u32;

const _: () = assert!(PRODUCER_NAME_SIZE_MAX <= u16::MAX as usize);

/// One record of a producer journal: `name` has `id` at `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    /// The producer's name.
    pub name: String,
    /// Its id, fixed by its first record.
    pub id: ProducerId,
    /// Its current epoch.
    pub epoch: Epoch,
}

impl JournalRecord for ProducerRecord {
    const MAGIC: &'static [u8; 8] = PRODUCER_MAGIC;
    const BODY_SIZE_MAX: u32 = PRODUCER_RECORD_SIZE_MAX;
    const ENTRIES_COUNT_MAX: usize = PRODUCERS_COUNT_MAX;
    type Key = String;
    type Value = (ProducerId, Epoch);
    type Context = ();
    /// The ids held by some name.
    type Index = HashSet<ProducerId>;

    fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(1 + 2 + self.name.len() + 8 + 4);
        out.put_u8(KIND_OPEN);
        encode_name(out, &self.name);
        out.put_u64(self.id.0);
        out.put_u32(self.epoch.0);
    }

    fn decode(body: &[u8], _context: ()) -> Result<ProducerRecord, DecodeError> {
        let mut reader = Reader::new(body);
        if reader.u8()? != KIND_OPEN {
            return Err(DecodeError::Invalid("unknown producer record kind"));
        }
        let name = decode_name(&mut reader, PRODUCER_NAME_SIZE_MAX)?.to_string();
        let id = ProducerId(reader.u64()?);
        let epoch = Epoch(reader.u32()?);
        if reader.remaining() != 0 {
            return Err(DecodeError::Invalid("trailing bytes in a producer record"));
        }
        if id.0 == 0 || id.0 == u64::MAX {
            return Err(DecodeError::Invalid("producer id 0 or u64::MAX"));
        }
        Ok(ProducerRecord { name, id, epoch })
    }

    fn key(&self) -> &String {
        &self.name
    }

    fn apply(
        &self,
        current: Option<&(ProducerId, Epoch)>,
        ids: &HashSet<ProducerId>,
        _context: (),
    ) -> Result<Option<(ProducerId, Epoch)>, ReplayError> {
        match current {
            Some(&(known_id, known_epoch)) => {
                if known_id != self.id {
                    return Err(DecodeError::Invalid("producer name changed its id").into());
                }
                if self.epoch <= known_epoch {
                    return Err(DecodeError::Invalid("producer epoch did not increase").into());
                }
            }
            None => {
                if ids.contains(&self.id) {
                    return Err(DecodeError::Invalid("producer id reused by another name").into());
                }
            }
        }
        Ok(Some((self.id, self.epoch)))
    }

    fn snapshot(name: &String, &(id, epoch): &(ProducerId, Epoch)) -> ProducerRecord {
        ProducerRecord {
            name: name.clone(),
            id,
            epoch,
        }
    }

    fn snapshot_body_len(name: &String, _value: &(ProducerId, Epoch)) -> usize {
        1 + 2 + name.len() + 8 + 4
    }

    fn update_index(
        ids: &mut HashSet<ProducerId>,
        previous: Option<&(ProducerId, Epoch)>,
        next: Option<&(ProducerId, Epoch)>,
    ) {
        if let Some((id, _)) = previous {
            ids.remove(id);
        }
        if let Some((id, _)) = next {
            ids.insert(*id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::format::journal::replay;

    fn body(name: &str, id: u64, epoch: u32) -> Vec<u8> {
        let mut body = Vec::new();
        ProducerRecord {
            name: name.to_string(),
            id: ProducerId(id),
            epoch: Epoch(epoch),
        }
        .encode(&mut body);
        body
    }

    #[test]
    fn records_roundtrip_and_snapshot_lengths_match() {
        let record = ProducerRecord {
            name: "ingest".to_string(),
            id: ProducerId(7),
            epoch: Epoch(3),
        };
        let mut encoded = Vec::new();
        record.encode(&mut encoded);
        assert_eq!(ProducerRecord::decode(&encoded, ()), Ok(record.clone()));
        let value = (ProducerId(7), Epoch(3));
        assert_eq!(ProducerRecord::snapshot(&record.name, &value), record);
        assert_eq!(
            ProducerRecord::snapshot_body_len(&record.name, &value),
            encoded.len()
        );
    }

    #[test]
    fn replay_refuses_a_reused_id_a_changed_id_and_a_lower_epoch() {
        // Goal: the registry's invariants hold on well-framed records.
        let bad_journals: [&[(&str, u64, u32)]; 5] = [
            &[("a", 1, 0), ("b", 1, 0)],
            &[("a", 1, 3), ("a", 1, 2)],
            &[("a", 1, 3), ("a", 1, 3)],
            &[("a", 1, 0), ("a", 2, 1)],
            &[("a", 0, 0)],
        ];
        for records in bad_journals {
            let mut producers = BTreeMap::new();
            let mut ids = HashSet::new();
            let results: Vec<_> = records
                .iter()
                .map(|&(name, id, epoch)| {
                    replay::<ProducerRecord>(&mut producers, &mut ids, (), &body(name, id, epoch))
                })
                .collect();
            let last = results.last().expect("a record");
            assert!(matches!(last, Err(ReplayError::Invalid(_))), "{records:?}");
            assert!(
                results[..results.len() - 1].iter().all(Result::is_ok),
                "{records:?}"
            );
        }
        let mut trailing = body("a", 1, 0);
        trailing.push(0);
        assert!(ProducerRecord::decode(&trailing, ()).is_err());
        assert!(ProducerRecord::decode(&[2], ()).is_err());
    }
}

//! The registry of one topic's idempotent producers: name -> (id, epoch), kept
//! durably in a journal (FORMAT-cursor.md, "Producer registry").
//!
//! Opening a name for the first time assigns the next id (from 1) with epoch 0;
//! opening it again bumps the epoch, which fences the older epoch: partitions
//! compare a stamp's epoch with [`ProducerRegistry::current_epoch`].
//!
//! Invariant: an id is never reused within a topic. Producers are never removed,
//! so the next id is one past the largest id in the journal, and compaction keeps
//! every producer.
//! Invariant: a new id or epoch is visible to `current_epoch` only once durable.
//!
//! Opens are rare, so they are written one at a time under the writer's lock; the
//! hot path (`current_epoch`) takes only a read lock on a hash map.

// The topic module, the only user outside tests, is merged separately.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crate::error::{Error, Result};
use crate::event::{Epoch, ProducerId};
use crate::format::{DecodeError, Put, Reader};
use crate::io::Storage;
use crate::journal::{
    COMPACT_SIZE_BYTES_MIN, FRAME_HEADER_LEN, Journal, check_name, decode_name, encode_frame, encode_name,
};
use crate::limits::{PRODUCER_NAME_SIZE_MAX, PRODUCERS_COUNT_MAX};

/// The magic of a producer journal.
pub(crate) const PRODUCER_MAGIC: &[u8; 8] = b"STELEPRD";
/// Record kind: a producer name has this id and epoch.
const KIND_OPEN: u8 = 1;
/// Largest record body: a maximal name, an id and an epoch.
pub(crate) const PRODUCER_RECORD_SIZE_MAX: u32 = (1 + 2 + PRODUCER_NAME_SIZE_MAX + 8 + 4) as u32;

const _: () = assert!(PRODUCER_NAME_SIZE_MAX <= u16::MAX as usize);

/// The producers of one topic.
#[derive(Debug)]
pub(crate) struct ProducerRegistry {
    compact_size_bytes_min: u64,
    writer: Mutex<Writer>,
    /// The durable epoch of every id: the hot path's only lock.
    epochs: RwLock<HashMap<ProducerId, Epoch>>,
}

#[derive(Debug)]
struct Writer {
    journal: Journal,
    /// Durable producers by name.
    producers: BTreeMap<String, (ProducerId, Epoch)>,
    /// The id the next new name gets.
    next_id: u64,
    /// Bytes of frames a compaction would write.
    live_size: u64,
}

impl ProducerRegistry {
    /// Opens or creates the registry at `path`.
    ///
    /// # Errors
    /// [`Error::Corruption`] for a bad record before the tail (a torn tail is cut),
    /// or for records that reuse an id or move an epoch backwards; I/O errors.
    pub(crate) fn open(storage: Arc<dyn Storage>, path: PathBuf) -> Result<ProducerRegistry> {
        ProducerRegistry::open_with(storage, path, COMPACT_SIZE_BYTES_MIN)
    }

    fn open_with(
        storage: Arc<dyn Storage>,
        path: PathBuf,
        compact_size_bytes_min: u64,
    ) -> Result<ProducerRegistry> {
        let mut producers = BTreeMap::new();
        let mut epochs = HashMap::new();
        let replay_path = path.clone();
        let journal = Journal::open(
            storage,
            path,
            PRODUCER_MAGIC,
            PRODUCER_RECORD_SIZE_MAX,
            &mut |position, body| {
                replay(&mut producers, &mut epochs, body)
                    .map_err(|reason| Error::corruption(&replay_path, position, reason))
            },
        )?;
        let next_id = epochs.keys().map(|id| id.0).max().unwrap_or(0) + 1;
        let live_size = producers.keys().map(|name| snapshot_frame_size(name)).sum();
        Ok(ProducerRegistry {
            compact_size_bytes_min,
            writer: Mutex::new(Writer {
                journal,
                producers,
                next_id,
                live_size,
            }),
            epochs: RwLock::new(epochs),
        })
    }

    /// Bytes of a torn journal tail that open cut.
    pub(crate) fn torn_bytes_count(&self) -> u64 {
        self.lock().journal.torn_bytes_count()
    }

    /// Registers `name` (a new id, epoch 0) or bumps its epoch, durably before
    /// returning.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad name; [`Error::LimitExceeded`] for too
    /// many producers, or an epoch or id that would overflow; I/O errors, after
    /// which the registry is unchanged.
    pub(crate) fn open_producer(&self, name: &str) -> Result<(ProducerId, Epoch)> {
        check_name(name, PRODUCER_NAME_SIZE_MAX, "producer")?;
        let mut writer = self.lock();
        let (id, epoch) = match writer.producers.get(name) {
            Some(&(id, epoch)) => {
                let Some(bumped) = epoch.0.checked_add(1) else {
                    return Err(Error::LimitExceeded {
                        what: "producer epoch",
                        value: u64::from(epoch.0) + 1,
                        max: u64::from(u32::MAX),
                    });
                };
                (id, Epoch(bumped))
            }
            None => {
                if writer.producers.len() >= PRODUCERS_COUNT_MAX {
                    return Err(Error::LimitExceeded {
                        what: "producers in the topic",
                        value: writer.producers.len() as u64 + 1,
                        max: PRODUCERS_COUNT_MAX as u64,
                    });
                }
                let id = writer.next_id;
                let Some(next_id) = id.checked_add(1) else {
                    return Err(Error::LimitExceeded {
                        what: "producer id",
                        value: id,
                        max: u64::MAX - 1,
                    });
                };
                // The id is spent even if the write fails, so that an id whose
                // record might survive a crash is never handed to another name.
                writer.next_id = next_id;
                (ProducerId(id), Epoch(0))
            }
        };
        let mut frames = Vec::new();
        encode_frame(&mut frames, &encode_record(name, id, epoch));
        {
            let Writer {
                journal, producers, ..
            } = &mut *writer;
            journal.append(&frames, &|| encode_snapshot(producers))?;
        }
        if writer.producers.insert(name.to_string(), (id, epoch)).is_none() {
            writer.live_size += snapshot_frame_size(name);
        }
        self.epochs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, epoch);
        if writer
            .journal
            .should_compact(writer.live_size, self.compact_size_bytes_min)
        {
            let snapshot = encode_snapshot(&writer.producers);
            // A failed compaction leaves the journal usable (or marked broken, so
            // that the next append rewrites it); the open is durable either way.
            let _ = writer.journal.rewrite(&snapshot);
        }
        Ok((id, epoch))
    }

    /// The current epoch of a producer id, `None` if unknown.
    pub(crate) fn current_epoch(&self, producer: ProducerId) -> Option<Epoch> {
        self.epochs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&producer)
            .copied()
    }

    /// All producers: (name, id, epoch), sorted by name.
    pub(crate) fn list(&self) -> Vec<(String, ProducerId, Epoch)> {
        self.lock()
            .producers
            .iter()
            .map(|(name, &(id, epoch))| (name.clone(), id, epoch))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn journal_path(&self) -> PathBuf {
        self.lock().journal.path().to_path_buf()
    }
}

fn encode_record(name: &str, id: ProducerId, epoch: Epoch) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + 2 + name.len() + 8 + 4);
    body.put_u8(KIND_OPEN);
    encode_name(&mut body, name);
    body.put_u64(id.0);
    body.put_u32(epoch.0);
    body
}

/// The bytes of the frame that a compaction writes for one producer.
fn snapshot_frame_size(name: &str) -> u64 {
    (FRAME_HEADER_LEN + 1 + 2 + name.len() + 8 + 4) as u64
}

/// The frames of a compacted journal: one record per producer.
fn encode_snapshot(producers: &BTreeMap<String, (ProducerId, Epoch)>) -> Vec<u8> {
    let mut frames = Vec::new();
    for (name, &(id, epoch)) in producers {
        encode_frame(&mut frames, &encode_record(name, id, epoch));
    }
    frames
}

/// Applies one record read at open.
pub(crate) fn replay(
    producers: &mut BTreeMap<String, (ProducerId, Epoch)>,
    epochs: &mut HashMap<ProducerId, Epoch>,
    body: &[u8],
) -> Result<(), DecodeError> {
    let mut reader = Reader::new(body);
    if reader.u8()? != KIND_OPEN {
        return Err(DecodeError::Invalid("unknown producer record kind"));
    }
    let name = decode_name(&mut reader, PRODUCER_NAME_SIZE_MAX)?;
    let id = ProducerId(reader.u64()?);
    let epoch = Epoch(reader.u32()?);
    if reader.remaining() != 0 {
        return Err(DecodeError::Invalid("trailing bytes in a producer record"));
    }
    if id.0 == 0 || id.0 == u64::MAX {
        return Err(DecodeError::Invalid("producer id 0 or u64::MAX"));
    }
    match producers.get(name) {
        Some(&(known_id, known_epoch)) => {
            if known_id != id {
                return Err(DecodeError::Invalid("producer name changed its id"));
            }
            if epoch <= known_epoch {
                return Err(DecodeError::Invalid("producer epoch did not increase"));
            }
        }
        None => {
            if epochs.contains_key(&id) {
                return Err(DecodeError::Invalid("producer id reused by another name"));
            }
            if producers.len() >= PRODUCERS_COUNT_MAX {
                return Err(DecodeError::LengthOutOfBounds {
                    len: producers.len() as u64 + 1,
                    max: PRODUCERS_COUNT_MAX as u64,
                });
            }
        }
    }
    producers.insert(name.to_string(), (id, epoch));
    epochs.insert(id, epoch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::error::ErrorKind;
    use crate::io::{Fault, FaultyStorage, StdStorage};
    use crate::journal::{encode_frame, encode_header};

    const FILE_NAME: &str = "producers.stele";

    fn open(storage: &Arc<dyn Storage>, path: &Path) -> Result<ProducerRegistry> {
        ProducerRegistry::open(Arc::clone(storage), path.to_path_buf())
    }

    fn listed(entries: &[(&str, u64, u32)]) -> Vec<(String, ProducerId, Epoch)> {
        entries
            .iter()
            .map(|&(name, id, epoch)| (name.to_string(), ProducerId(id), Epoch(epoch)))
            .collect()
    }

    /// A journal file holding the given records.
    fn write_journal(path: &Path, records: &[(&str, u64, u32)]) -> anyhow::Result<()> {
        let mut bytes = encode_header(PRODUCER_MAGIC);
        for &(name, id, epoch) in records {
            encode_frame(&mut bytes, &encode_record(name, ProducerId(id), Epoch(epoch)));
        }
        std::fs::write(path, bytes)?;
        Ok(())
    }

    #[test]
    fn opening_a_producer_again_bumps_its_epoch_and_survives_reopen() -> anyhow::Result<()> {
        // Goal: ids start at 1, reopening a name bumps only its epoch, and the
        // registry (including current_epoch) is the same after a reopen.
        let directory = tempfile::tempdir()?;
        let path = directory.path().join(FILE_NAME);
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        let registry = open(&storage, &path)?;
        assert_eq!(registry.current_epoch(ProducerId(1)), None);
        assert_eq!(registry.open_producer("ingest")?, (ProducerId(1), Epoch(0)));
        assert_eq!(registry.open_producer("billing")?, (ProducerId(2), Epoch(0)));
        assert_eq!(registry.open_producer("ingest")?, (ProducerId(1), Epoch(1)));
        assert_eq!(registry.open_producer("ingest")?, (ProducerId(1), Epoch(2)));
        assert_eq!(registry.current_epoch(ProducerId(1)), Some(Epoch(2)));
        assert_eq!(registry.current_epoch(ProducerId(2)), Some(Epoch(0)));
        assert_eq!(registry.current_epoch(ProducerId(0)), None);
        let expected = listed(&[("billing", 2, 0), ("ingest", 1, 2)]);
        assert_eq!(registry.list(), expected);
        drop(registry);

        let registry = open(&storage, &path)?;
        assert_eq!(registry.list(), expected);
        assert_eq!(registry.torn_bytes_count(), 0);
        assert_eq!(registry.current_epoch(ProducerId(1)), Some(Epoch(2)));
        assert_eq!(registry.open_producer("ingest")?, (ProducerId(1), Epoch(3)));
        assert_eq!(registry.open_producer("new")?, (ProducerId(3), Epoch(0)));
        Ok(())
    }

    #[test]
    fn producer_ids_are_never_reused_across_reopens_and_compactions() -> anyhow::Result<()> {
        // Goal: every name keeps its id and new names get fresh ones, while
        // compaction rewrites the journal. Method: with no minimum compaction
        // size, bump epochs many times between new names and reopens.
        let directory = tempfile::tempdir()?;
        let path = directory.path().join(FILE_NAME);
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        let mut ids = HashMap::new();
        for round in 0..5u64 {
            let registry = ProducerRegistry::open_with(Arc::clone(&storage), path.clone(), 0)?;
            let (id, epoch) = registry.open_producer(&format!("producer-{round}"))?;
            assert_eq!((id, epoch), (ProducerId(round + 1), Epoch(0)));
            for _ in 0..30 {
                registry.open_producer("producer-0")?;
            }
            for (name, id, _) in registry.list() {
                assert_eq!(*ids.entry(name).or_insert(id), id);
            }
            let journal_len = std::fs::metadata(registry.journal_path())?.len();
            assert!(
                journal_len < 2048,
                "journal of {journal_len} bytes was not compacted"
            );
        }
        let registry = open(&storage, &path)?;
        assert_eq!(
            registry.list()[0],
            ("producer-0".to_string(), ProducerId(1), Epoch(150))
        );
        assert_eq!(registry.list().len(), 5);
        Ok(())
    }

    #[test]
    fn bad_producer_names_are_rejected() -> anyhow::Result<()> {
        let directory = tempfile::tempdir()?;
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        let registry = open(&storage, &directory.path().join(FILE_NAME))?;
        let long = "p".repeat(PRODUCER_NAME_SIZE_MAX + 1);
        for name in ["", "carriage\rreturn", "\u{1b}[31m", long.as_str()] {
            let expected = if name.len() > PRODUCER_NAME_SIZE_MAX {
                ErrorKind::LimitExceeded
            } else {
                ErrorKind::InvalidArgument
            };
            assert_eq!(registry.open_producer(name).map_err(|e| e.kind()), Err(expected));
        }
        assert!(registry.list().is_empty());
        assert_eq!(
            registry.open_producer(&"p".repeat(PRODUCER_NAME_SIZE_MAX))?,
            (ProducerId(1), Epoch(0))
        );
        Ok(())
    }

    #[test]
    fn an_epoch_at_its_maximum_cannot_be_bumped() -> anyhow::Result<()> {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join(FILE_NAME);
        write_journal(&path, &[("old", 7, u32::MAX)])?;
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        let registry = open(&storage, &path)?;
        assert_eq!(
            registry.open_producer("old").map_err(|e| e.kind()),
            Err(ErrorKind::LimitExceeded)
        );
        assert_eq!(registry.current_epoch(ProducerId(7)), Some(Epoch(u32::MAX)));
        // The next id follows the largest one on disk.
        assert_eq!(registry.open_producer("young")?, (ProducerId(8), Epoch(0)));
        Ok(())
    }

    #[test]
    fn records_that_reuse_an_id_or_lower_an_epoch_are_corruption() -> anyhow::Result<()> {
        // Goal: replay enforces the registry's invariants on well-framed records.
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        let bad_journals: [&[(&str, u64, u32)]; 4] = [
            &[("a", 1, 0), ("b", 1, 0)],
            &[("a", 1, 3), ("a", 1, 2)],
            &[("a", 1, 0), ("a", 2, 1)],
            &[("a", 0, 0)],
        ];
        for records in bad_journals {
            let directory = tempfile::tempdir()?;
            let path = directory.path().join(FILE_NAME);
            write_journal(&path, records)?;
            let error = open(&storage, &path).err();
            assert!(
                matches!(error, Some(Error::Corruption { .. })),
                "{records:?}: {error:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_torn_last_record_recovers_and_an_earlier_flipped_bit_is_corruption() -> anyhow::Result<()> {
        // Goal: the producer journal follows the journal recovery rules.
        // Method: cut the file at every byte of the last record (recovers to the
        // previous one), and flip every bit of the first record (Corruption).
        let source = tempfile::tempdir()?;
        let path = source.path().join(FILE_NAME);
        write_journal(&path, &[("a", 1, 0), ("b", 2, 0), ("a", 1, 1)])?;
        let bytes = std::fs::read(&path)?;
        let header_len = crate::journal::JOURNAL_HEADER_LEN;
        let record_len = FRAME_HEADER_LEN + 1 + 2 + 1 + 8 + 4;
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        for cut in header_len + 2 * record_len..bytes.len() {
            let directory = tempfile::tempdir()?;
            let path = directory.path().join(FILE_NAME);
            std::fs::write(&path, &bytes[..cut])?;
            let registry = open(&storage, &path)?;
            assert_eq!(registry.list(), listed(&[("a", 1, 0), ("b", 2, 0)]), "cut {cut}");
            assert_eq!(
                registry.torn_bytes_count(),
                (cut - header_len - 2 * record_len) as u64
            );
            assert_eq!(registry.open_producer("a")?, (ProducerId(1), Epoch(1)));
            drop(registry);
            assert_eq!(
                open(&storage, &path)?.current_epoch(ProducerId(1)),
                Some(Epoch(1))
            );
        }
        for bit in header_len * 8..(header_len + record_len) * 8 {
            let directory = tempfile::tempdir()?;
            let path = directory.path().join(FILE_NAME);
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&path, &damaged)?;
            let error = open(&storage, &path).err();
            assert!(
                matches!(error, Some(Error::Corruption { position, .. }) if position == header_len as u64),
                "bit {bit}: {error:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn failed_writes_and_syncs_leave_the_registry_unchanged() -> anyhow::Result<()> {
        // Goal: an open that fails on I/O registers nothing and bumps nothing, now
        // or after a crash, and later opens work.
        // Method: for each fault, fail a bump and a registration, check memory,
        // crash, reopen, and open again.
        for (seed, fault) in [
            Fault::WriteError,
            Fault::ShortWrite,
            Fault::DiskFull,
            Fault::SyncError,
        ]
        .into_iter()
        .enumerate()
        {
            let directory = tempfile::tempdir()?;
            let path = directory.path().join(FILE_NAME);
            let faulty = FaultyStorage::new();
            let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
            let registry = open(&storage, &path)?;
            assert_eq!(registry.open_producer("a")?, (ProducerId(1), Epoch(0)));
            for name in ["a", "b"] {
                if fault == Fault::DiskFull {
                    faulty.set_disk_full(true);
                } else {
                    faulty.arm(fault, FILE_NAME, 0);
                }
                assert!(registry.open_producer(name).is_err(), "{fault:?} {name}");
                faulty.set_disk_full(false);
                assert_eq!(registry.list(), listed(&[("a", 1, 0)]), "{fault:?} {name}");
                assert_eq!(registry.current_epoch(ProducerId(1)), Some(Epoch(0)));
                assert_eq!(registry.current_epoch(ProducerId(2)), None);
            }
            drop(registry);
            faulty.crash(seed as u64)?;
            let registry = open(&storage, &path)?;
            assert_eq!(registry.list(), listed(&[("a", 1, 0)]), "{fault:?}");
            assert_eq!(registry.open_producer("a")?, (ProducerId(1), Epoch(1)));
            let (id, epoch) = registry.open_producer("b")?;
            assert_eq!(epoch, Epoch(0));
            assert!(id.0 >= 2);
            drop(registry);
            faulty.crash(seed as u64 + 100)?;
            assert_eq!(open(&storage, &path)?.current_epoch(id), Some(Epoch(0)));
        }
        Ok(())
    }

    #[test]
    fn concurrent_opens_get_distinct_ids_and_consistent_epochs() -> anyhow::Result<()> {
        // Goal: opens from many threads never share an id and never lose a bump.
        let directory = tempfile::tempdir()?;
        let path = directory.path().join(FILE_NAME);
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        let registry = open(&storage, &path)?;
        let results: Vec<Vec<(ProducerId, Epoch)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..6)
                .map(|thread| {
                    let registry = &registry;
                    scope.spawn(move || -> Result<Vec<(ProducerId, Epoch)>> {
                        let mut opened = vec![registry.open_producer(&format!("own-{thread}"))?];
                        for _ in 0..10 {
                            opened.push(registry.open_producer("shared")?);
                        }
                        Ok(opened)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("an opener panicked"))
                .collect::<Result<Vec<_>>>()
        })?;
        let mut own_ids: Vec<u64> = results.iter().map(|opened| opened[0].0.0).collect();
        own_ids.sort_unstable();
        own_ids.dedup();
        assert_eq!(own_ids.len(), 6);
        let mut shared_epochs: Vec<u32> = results
            .iter()
            .flat_map(|opened| opened[1..].iter().map(|o| o.1.0))
            .collect();
        shared_epochs.sort_unstable();
        assert_eq!(shared_epochs, (0..60).collect::<Vec<u32>>());
        drop(registry);
        let registry = open(&storage, &path)?;
        assert_eq!(registry.list().len(), 7);
        assert_eq!(registry.list().iter().map(|entry| entry.1.0).max(), Some(7));
        Ok(())
    }
}

//! The registry of one topic's idempotent producers: name -> (id, epoch), kept
//! durably in a journal-backed map of producer records (FORMAT.md, "Producer
//! registry records"; `format::producer`).
//!
//! Opening a name for the first time assigns the next id (from 1) with epoch 0;
//! opening it again bumps the epoch, which fences the older epoch: partitions
//! compare a stamp's epoch with [`ProducerRegistry::current_epoch`].
//!
//! Invariant: an id is never reused within a topic. Producers are never removed,
//! so the next id is one past the largest id in the journal, and compaction keeps
//! every producer; an id handed out by a write that failed is spent all the same.
//! Invariant: a new id or epoch is visible to `current_epoch` only once durable.
//!
//! Opens are rare, so they are written one at a time under `next_id`'s lock; the
//! hot path (`current_epoch`) takes only a read lock on a hash map.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::error::{Error, Result};
use crate::event::{Epoch, ProducerId};
use crate::format::producer::ProducerRecord;
use crate::io::Storage;
use crate::journal::{COMPACT_SIZE_BYTES_MIN, JournalMap, check_name};
use crate::limits::{PRODUCER_NAME_SIZE_MAX, PRODUCERS_COUNT_MAX};

/// The producers of one topic.
#[derive(Debug)]
pub(crate) struct ProducerRegistry {
    producers: JournalMap<ProducerRecord>,
    /// The id the next new name gets; its lock serialises opens.
    next_id: Mutex<u64>,
    /// The durable epoch of every id: the hot path's only lock.
    epochs: RwLock<HashMap<ProducerId, Epoch>>,
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
        let producers = JournalMap::open_with(storage, path, (), compact_size_bytes_min)?;
        let epochs: HashMap<ProducerId, Epoch> =
            producers.read(|producers| producers.values().copied().collect());
        let next_id = epochs.keys().map(|id| id.0).max().unwrap_or(0) + 1;
        Ok(ProducerRegistry {
            producers,
            next_id: Mutex::new(next_id),
            epochs: RwLock::new(epochs),
        })
    }

    /// Bytes of a torn journal tail that open cut.
    pub(crate) fn torn_bytes_count(&self) -> u64 {
        self.producers.torn_bytes_count()
    }

    /// Writes the durable producer registry as a fresh compacted journal at `path`, for a
    /// backup; returns the file's bytes.
    ///
    /// # Errors
    /// I/O errors.
    pub(crate) fn write_snapshot(&self, storage: &dyn Storage, path: &std::path::Path) -> Result<Vec<u8>> {
        self.producers.write_snapshot(storage, path)
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
        let mut next_id = self.next_id.lock().unwrap_or_else(PoisonError::into_inner);
        let (id, epoch) = self.producers.write(|producers| {
            let (id, epoch) = match producers.get(name) {
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
                    if producers.len() >= PRODUCERS_COUNT_MAX {
                        return Err(Error::LimitExceeded {
                            what: "producers in the topic",
                            value: producers.len() as u64 + 1,
                            max: PRODUCERS_COUNT_MAX as u64,
                        });
                    }
                    let id = *next_id;
                    let Some(bumped) = id.checked_add(1) else {
                        return Err(Error::LimitExceeded {
                            what: "producer id",
                            value: id,
                            max: u64::MAX - 1,
                        });
                    };
                    // The id is spent even if the write fails, so that an id whose
                    // record might survive a crash is never handed to another name.
                    *next_id = bumped;
                    (ProducerId(id), Epoch(0))
                }
            };
            let record = ProducerRecord {
                name: name.to_string(),
                id,
                epoch,
            };
            Ok((record, (id, epoch)))
        })?;
        self.epochs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, epoch);
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
        self.producers.read(|producers| {
            producers
                .iter()
                .map(|(name, &(id, epoch))| (name.clone(), id, epoch))
                .collect()
        })
    }

    #[cfg(test)]
    fn journal_path(&self) -> PathBuf {
        self.producers.path()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::error::ErrorKind;
    use crate::format::journal::{
        FRAME_HEADER_LEN, JOURNAL_HEADER_LEN, JournalRecord, encode_frame, encode_header,
    };
    use crate::format::producer::PRODUCER_MAGIC;
    use crate::io::{Fault, FaultyStorage, StdStorage};

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
            let mut body = Vec::new();
            ProducerRecord {
                name: name.to_string(),
                id: ProducerId(id),
                epoch: Epoch(epoch),
            }
            .encode(&mut body);
            encode_frame(&mut bytes, &body);
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
        let header_len = JOURNAL_HEADER_LEN;
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

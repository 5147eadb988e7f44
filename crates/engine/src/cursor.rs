//! Named consumer cursors of one topic: per partition, the committed offset (the
//! next offset the consumer will read), kept durably in a journal-backed map of
//! cursor records (FORMAT.md, "Cursor store records"; `format::cursor`).
//!
//! Every commit or delete appends one record and returns only once it is durable;
//! concurrent commits share one write and one sync (the map's group commit).
//!
//! Invariant: a commit is checked against the written view (the durable state plus
//! the changes still being written), so it never moves a cursor backwards past a
//! pending commit; readers see only the durable view.
//!
//! It does not know partitions' high watermarks; `commit` asks the caller.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::event::{Offset, PartitionId};
use crate::format::cursor::{CursorOffsets, CursorRecord};
use crate::io::Storage;
use crate::journal::{COMPACT_SIZE_BYTES_MIN, JournalMap, check_name};
use crate::limits::{CURSOR_NAME_SIZE_MAX, CURSORS_COUNT_MAX, PARTITIONS_COUNT_MAX};

/// The store of one topic's cursors.
#[derive(Debug)]
pub(crate) struct CursorStore {
    partitions: u32,
    cursors: JournalMap<CursorRecord>,
}

impl CursorStore {
    /// Opens or creates the store at `path` (a file in the topic directory) for a
    /// topic of `partitions` partitions.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a partition count of 0 or above the limit;
    /// [`Error::Corruption`] for a bad record before the tail (a torn tail is cut,
    /// see [`CursorStore::torn_bytes_count`]); [`Error::Inconsistent`] for a record
    /// naming a partition the topic does not have; I/O errors.
    pub(crate) fn open(storage: Arc<dyn Storage>, path: PathBuf, partitions: u32) -> Result<CursorStore> {
        CursorStore::open_with(storage, path, partitions, COMPACT_SIZE_BYTES_MIN)
    }

    fn open_with(
        storage: Arc<dyn Storage>,
        path: PathBuf,
        partitions: u32,
        compact_size_bytes_min: u64,
    ) -> Result<CursorStore> {
        if partitions == 0 || partitions > PARTITIONS_COUNT_MAX {
            return Err(Error::InvalidArgument(format!(
                "partition count {partitions} is not within 1..={PARTITIONS_COUNT_MAX}"
            )));
        }
        Ok(CursorStore {
            partitions,
            cursors: JournalMap::open_with(storage, path, partitions, compact_size_bytes_min)?,
        })
    }

    /// Bytes of a torn journal tail that open cut.
    pub(crate) fn torn_bytes_count(&self) -> u64 {
        self.cursors.torn_bytes_count()
    }

    /// Writes the durable cursors as a fresh compacted journal at `path`, for a
    /// backup; returns the file's bytes.
    ///
    /// # Errors
    /// I/O errors.
    pub(crate) fn write_snapshot(&self, storage: &dyn Storage, path: &std::path::Path) -> Result<Vec<u8>> {
        self.cursors.write_snapshot(storage, path)
    }

    /// Commits offsets for some partitions of cursor `name` (created on first
    /// commit), durably before returning. `high_watermark` is called with this
    /// store's lock held, so it must not call back into the store.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad name, a partition out of range or one
    /// named twice; [`Error::LimitExceeded`] for a new cursor beyond the limit;
    /// [`Error::CursorAheadOfHighWatermark`]; [`Error::CursorBackwards`] unless
    /// `allow_backwards`; I/O errors. On any error nothing is written.
    pub(crate) fn commit(
        &self,
        name: &str,
        offsets: &[(PartitionId, Offset)],
        allow_backwards: bool,
        high_watermark: &dyn Fn(PartitionId) -> Offset,
    ) -> Result<()> {
        check_name(name, CURSOR_NAME_SIZE_MAX, "cursor")?;
        let mut seen = vec![false; self.partitions as usize];
        for &(partition, _) in offsets {
            let Some(slot) = seen.get_mut(partition.0 as usize) else {
                return Err(Error::InvalidArgument(format!(
                    "partition {partition} out of range: the topic has {} partitions",
                    self.partitions
                )));
            };
            if *slot {
                return Err(Error::InvalidArgument(format!(
                    "partition {partition} named twice in one commit"
                )));
            }
            *slot = true;
        }
        self.cursors.write(|cursors| {
            let current = cursors.get(name);
            if current.is_none() && cursors.len() >= CURSORS_COUNT_MAX {
                return Err(Error::LimitExceeded {
                    what: "cursors in the topic",
                    value: cursors.len() as u64 + 1,
                    max: CURSORS_COUNT_MAX as u64,
                });
            }
            for &(partition, offset) in offsets {
                let high_watermark = high_watermark(partition);
                if offset > high_watermark {
                    return Err(Error::CursorAheadOfHighWatermark {
                        partition,
                        requested: offset,
                        high_watermark,
                    });
                }
                let committed = current.and_then(|current| current[partition.0 as usize]);
                if let Some(committed) = committed
                    && offset < committed
                    && !allow_backwards
                {
                    return Err(Error::CursorBackwards {
                        partition,
                        committed,
                        requested: offset,
                    });
                }
            }
            let record = CursorRecord::Set {
                name: name.to_string(),
                entries: offsets.to_vec(),
            };
            Ok((record, ()))
        })
    }

    /// The committed offsets of a cursor, one per partition (`None` = never
    /// committed).
    ///
    /// # Errors
    /// [`Error::CursorNotFound`].
    pub(crate) fn get(&self, name: &str) -> Result<CursorOffsets> {
        self.cursors
            .get(name)
            .ok_or_else(|| Error::CursorNotFound(name.to_string()))
    }

    /// Every cursor, sorted by name.
    pub(crate) fn list(&self) -> Vec<(String, CursorOffsets)> {
        self.cursors.list()
    }

    /// Deletes a cursor durably.
    ///
    /// # Errors
    /// [`Error::CursorNotFound`]; [`Error::InvalidArgument`] for a bad name; I/O
    /// errors, after which the cursor is still there.
    pub(crate) fn delete(&self, name: &str) -> Result<()> {
        check_name(name, CURSOR_NAME_SIZE_MAX, "cursor")?;
        self.cursors.write(|cursors| {
            if !cursors.contains_key(name) {
                return Err(Error::CursorNotFound(name.to_string()));
            }
            Ok((
                CursorRecord::Delete {
                    name: name.to_string(),
                },
                (),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use std::collections::BTreeMap;

    use super::*;
    use crate::error::ErrorKind;
    use crate::format::journal::snapshot_frame_len;
    use crate::io::{Fault, FaultyStorage, StdStorage};

    const PARTITIONS: u32 = 4;
    const FILE_NAME: &str = "cursors.stele";

    fn open(storage: &Arc<dyn Storage>, path: &Path) -> Result<CursorStore> {
        CursorStore::open(Arc::clone(storage), path.to_path_buf(), PARTITIONS)
    }

    fn unbounded(_: PartitionId) -> Offset {
        Offset(u64::MAX)
    }

    fn commit(store: &CursorStore, name: &str, partition: u32, offset: u64) -> Result<()> {
        store.commit(
            name,
            &[(PartitionId(partition), Offset(offset))],
            false,
            &unbounded,
        )
    }

    fn offsets(entries: &[(usize, u64)]) -> Vec<Option<Offset>> {
        let mut offsets = vec![None; PARTITIONS as usize];
        for &(partition, offset) in entries {
            offsets[partition] = Some(Offset(offset));
        }
        offsets
    }

    fn file_len(path: &Path) -> anyhow::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    #[test]
    fn commits_gets_lists_and_deletes_survive_reopen() -> anyhow::Result<()> {
        // Goal: the public operations roundtrip through the journal.
        // Method: commit, delete and commit again, checking memory and a reopened store.
        let directory = tempfile::tempdir()?;
        let path = directory.path().join(FILE_NAME);
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        let store = open(&storage, &path)?;
        assert!(store.list().is_empty());
        store.commit(
            "billing",
            &[(PartitionId(0), Offset(10)), (PartitionId(3), Offset(7))],
            false,
            &unbounded,
        )?;
        commit(&store, "audit", 1, 4)?;
        commit(&store, "billing", 0, 12)?;
        commit(&store, "doomed", 2, 1)?;
        store.delete("doomed")?;
        store.commit("empty", &[], false, &unbounded)?;
        let expected = vec![
            ("audit".to_string(), offsets(&[(1, 4)])),
            ("billing".to_string(), offsets(&[(0, 12), (3, 7)])),
            ("empty".to_string(), offsets(&[])),
        ];
        assert_eq!(store.list(), expected);
        assert_eq!(store.get("billing")?, offsets(&[(0, 12), (3, 7)]));
        assert_eq!(
            store.get("doomed").map_err(|e| e.kind()),
            Err(ErrorKind::CursorNotFound)
        );
        assert_eq!(
            store.delete("doomed").map_err(|e| e.kind()),
            Err(ErrorKind::CursorNotFound)
        );
        drop(store);

        let store = open(&storage, &path)?;
        assert_eq!(store.list(), expected);
        assert_eq!(store.torn_bytes_count(), 0);
        assert_eq!(
            store.get("doomed").map_err(|e| e.kind()),
            Err(ErrorKind::CursorNotFound)
        );
        Ok(())
    }

    #[test]
    fn moving_backwards_is_rejected_unless_allowed() -> anyhow::Result<()> {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join(FILE_NAME);
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        let store = open(&storage, &path)?;
        commit(&store, "c", 0, 10)?;
        let error = commit(&store, "c", 0, 9).err();
        assert!(
            matches!(
                error,
                Some(Error::CursorBackwards {
                    partition: PartitionId(0),
                    committed: Offset(10),
                    requested: Offset(9)
                })
            ),
            "{error:?}"
        );
        // Committing the same offset again is not backwards.
        commit(&store, "c", 0, 10)?;
        store.commit("c", &[(PartitionId(0), Offset(3))], true, &unbounded)?;
        assert_eq!(store.get("c")?, offsets(&[(0, 3)]));
        drop(store);
        assert_eq!(open(&storage, &path)?.get("c")?, offsets(&[(0, 3)]));
        Ok(())
    }

    #[test]
    fn commit_past_the_high_watermark_is_rejected_and_writes_nothing() -> anyhow::Result<()> {
        // Goal: a commit with one bad partition writes nothing, not even its good ones.
        let directory = tempfile::tempdir()?;
        let path = directory.path().join(FILE_NAME);
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        let store = open(&storage, &path)?;
        let high_watermark = |partition: PartitionId| Offset(100 + u64::from(partition.0));
        store.commit("c", &[(PartitionId(1), Offset(101))], false, &high_watermark)?;
        let len_before = file_len(&path)?;
        let error = store
            .commit(
                "c",
                &[(PartitionId(0), Offset(50)), (PartitionId(2), Offset(103))],
                false,
                &high_watermark,
            )
            .err();
        assert!(
            matches!(
                error,
                Some(Error::CursorAheadOfHighWatermark {
                    partition: PartitionId(2),
                    requested: Offset(103),
                    high_watermark: Offset(102)
                })
            ),
            "{error:?}"
        );
        assert_eq!(file_len(&path)?, len_before);
        assert_eq!(store.get("c")?, offsets(&[(1, 101)]));
        drop(store);
        assert_eq!(open(&storage, &path)?.get("c")?, offsets(&[(1, 101)]));
        Ok(())
    }

    #[test]
    fn bad_arguments_are_rejected_and_write_nothing() -> anyhow::Result<()> {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join(FILE_NAME);
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        let store = open(&storage, &path)?;
        let len_before = file_len(&path)?;
        let long = "x".repeat(CURSOR_NAME_SIZE_MAX + 1);
        for name in ["", "line\nbreak", "bell\u{7}", long.as_str()] {
            let expected = if name.len() > CURSOR_NAME_SIZE_MAX {
                ErrorKind::LimitExceeded
            } else {
                ErrorKind::InvalidArgument
            };
            assert_eq!(commit(&store, name, 0, 1).map_err(|e| e.kind()), Err(expected));
            assert_eq!(store.delete(name).map_err(|e| e.kind()), Err(expected));
        }
        assert!(commit(&store, &"x".repeat(CURSOR_NAME_SIZE_MAX), 0, 1).is_ok());
        let len_before_partitions = file_len(&path)?;
        assert!(len_before_partitions > len_before);
        assert_eq!(
            commit(&store, "c", PARTITIONS, 1).map_err(|e| e.kind()),
            Err(ErrorKind::InvalidArgument)
        );
        assert_eq!(
            store
                .commit(
                    "c",
                    &[(PartitionId(1), Offset(1)), (PartitionId(1), Offset(2))],
                    false,
                    &unbounded
                )
                .map_err(|e| e.kind()),
            Err(ErrorKind::InvalidArgument)
        );
        assert_eq!(file_len(&path)?, len_before_partitions);
        assert_eq!(store.list().len(), 1);
        assert!(matches!(
            CursorStore::open(Arc::clone(&storage), path.clone(), 0),
            Err(Error::InvalidArgument(_))
        ));
        Ok(())
    }

    #[test]
    fn a_record_for_a_partition_the_topic_lacks_is_inconsistent() -> anyhow::Result<()> {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join(FILE_NAME);
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        commit(&open(&storage, &path)?, "c", 3, 1)?;
        let reopened = CursorStore::open(Arc::clone(&storage), path.clone(), 2);
        assert_eq!(
            reopened.map_err(|e| e.kind()).err(),
            Some(ErrorKind::Inconsistent)
        );
        Ok(())
    }

    #[test]
    fn compaction_keeps_the_state_across_reopen() -> anyhow::Result<()> {
        // Goal: compaction bounds the journal and loses nothing.
        // Method: with no minimum size, commit many times to a few cursors, delete
        // one; the file stays near the live size, and a reopen sees the same state.
        let directory = tempfile::tempdir()?;
        let path = directory.path().join(FILE_NAME);
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        let store = CursorStore::open_with(Arc::clone(&storage), path.clone(), PARTITIONS, 0)?;
        for round in 0..200u64 {
            for (index, name) in ["alpha", "beta", "gamma"].into_iter().enumerate() {
                commit(&store, name, (round % 4) as u32, round * 3 + index as u64)?;
            }
        }
        store.delete("beta")?;
        let expected = store.list();
        assert_eq!(expected.len(), 2);
        let live_size: u64 = expected
            .iter()
            .map(|(name, offsets)| snapshot_frame_len::<CursorRecord>(name, offsets))
            .sum();
        let len = file_len(&path)?;
        assert!(
            len <= 2 * (crate::format::journal::JOURNAL_HEADER_LEN as u64 + live_size) + 200,
            "journal of {len} bytes for {live_size} live bytes"
        );
        drop(store);
        let store = CursorStore::open_with(Arc::clone(&storage), path.clone(), PARTITIONS, 0)?;
        assert_eq!(store.list(), expected);
        commit(&store, "alpha", 0, 10_000)?;
        drop(store);
        assert_eq!(open(&storage, &path)?.get("alpha")?[0], Some(Offset(10_000)));
        assert!(!Path::new(&format!("{}.compact", path.display())).exists());
        Ok(())
    }

    /// Writes a journal of three commits; returns its bytes, the file length after
    /// each commit, and the state after each commit.
    #[allow(clippy::type_complexity)]
    fn three_commits(
        directory: &Path,
    ) -> anyhow::Result<(Vec<u8>, Vec<u64>, Vec<Vec<(String, CursorOffsets)>>)> {
        let path = directory.join(FILE_NAME);
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        let store = open(&storage, &path)?;
        let mut lens = vec![file_len(&path)?];
        let mut states = vec![store.list()];
        for (name, partition, offset) in [("a", 0, 1), ("b", 1, 2), ("a", 2, 3)] {
            commit(&store, name, partition, offset)?;
            lens.push(file_len(&path)?);
            states.push(store.list());
        }
        drop(store);
        Ok((std::fs::read(&path)?, lens, states))
    }

    #[test]
    fn a_torn_last_record_recovers_to_the_previous_record_at_every_byte() -> anyhow::Result<()> {
        // Goal: a crash mid-write of the last record loses only that record.
        // Method: for every byte boundary inside the last record, and for every bit
        // of it, damage a copy of the file there; reopening must cut the tail back
        // to the previous record, and a later commit must survive another reopen.
        let source = tempfile::tempdir()?;
        let (bytes, lens, states) = three_commits(source.path())?;
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        let (start, end) = (lens[2] as usize, lens[3] as usize);
        let mut cases: Vec<Vec<u8>> = (start..end).map(|cut| bytes[..cut].to_vec()).collect();
        for bit in start * 8..end * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            cases.push(damaged);
        }
        for (case, damaged) in cases.iter().enumerate() {
            let directory = tempfile::tempdir()?;
            let path = directory.path().join(FILE_NAME);
            std::fs::write(&path, damaged)?;
            let store = open(&storage, &path)?;
            assert_eq!(store.list(), states[2], "case {case}");
            assert_eq!(
                store.torn_bytes_count(),
                damaged.len() as u64 - lens[2],
                "case {case}"
            );
            assert_eq!(file_len(&path)?, lens[2], "case {case}");
            commit(&store, "a", 3, 9)?;
            drop(store);
            assert_eq!(
                open(&storage, &path)?.get("a")?,
                offsets(&[(0, 1), (3, 9)]),
                "case {case}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_flipped_bit_in_an_earlier_record_or_the_header_is_corruption() -> anyhow::Result<()> {
        // Goal: damage before the tail is reported, never cut silently.
        // Method: flip every bit of the header and of the middle record in turn;
        // reopening must fail with Corruption at the damaged structure's position.
        let source = tempfile::tempdir()?;
        let (bytes, lens, _) = three_commits(source.path())?;
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        let header_bits = (0..crate::format::journal::JOURNAL_HEADER_LEN * 8).map(|bit| (bit, 0));
        let record_bits = (lens[1] as usize * 8..lens[2] as usize * 8).map(|bit| (bit, lens[1]));
        for (bit, position) in header_bits.chain(record_bits) {
            let directory = tempfile::tempdir()?;
            let path = directory.path().join(FILE_NAME);
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&path, &damaged)?;
            let error = open(&storage, &path).err();
            assert!(
                matches!(&error, Some(Error::Corruption { position: found, .. }) if *found == position),
                "bit {bit}: {error:?}"
            );
            // Nothing was cut.
            assert_eq!(std::fs::read(&path)?, damaged);
        }
        Ok(())
    }

    #[test]
    fn failed_writes_and_syncs_keep_the_previous_state() -> anyhow::Result<()> {
        // Goal: a commit that fails on I/O changes nothing, now or after a crash,
        // and the store keeps working.
        // Method: for each fault, commit, inject the fault into the next commit,
        // commit again on the same store, then crash (dropping unsynced bytes) and
        // reopen; then once more with a crash right after the failure.
        for (seed, fault) in [
            Fault::WriteError,
            Fault::ShortWrite,
            Fault::DiskFull,
            Fault::SyncError,
        ]
        .into_iter()
        .enumerate()
        {
            for continue_before_crash in [true, false] {
                let directory = tempfile::tempdir()?;
                let path = directory.path().join(FILE_NAME);
                let faulty = FaultyStorage::new();
                let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
                let store = open(&storage, &path)?;
                commit(&store, "c", 0, 5)?;
                commit(&store, "d", 1, 5)?;
                if fault == Fault::DiskFull {
                    faulty.set_disk_full(true);
                } else {
                    faulty.arm(fault, FILE_NAME, 0);
                }
                let error = store
                    .commit(
                        "c",
                        &[(PartitionId(0), Offset(7)), (PartitionId(2), Offset(1))],
                        false,
                        &unbounded,
                    )
                    .err();
                let expected_kind = if fault == Fault::DiskFull {
                    ErrorKind::DiskFull
                } else {
                    ErrorKind::Io
                };
                assert_eq!(error.map(|e| e.kind()), Some(expected_kind), "{fault:?}");
                assert!(faulty.injected_count() >= 1);
                assert_eq!(store.get("c")?, offsets(&[(0, 5)]), "{fault:?}");
                faulty.set_disk_full(false);
                let mut expected = offsets(&[(0, 5)]);
                if continue_before_crash {
                    commit(&store, "c", 0, 8)?;
                    expected = offsets(&[(0, 8)]);
                }
                drop(store);
                faulty.crash(seed as u64 * 2 + u64::from(continue_before_crash))?;
                let store = open(&storage, &path)?;
                assert_eq!(store.get("c")?, expected, "{fault:?}");
                assert_eq!(store.get("d")?, offsets(&[(1, 5)]), "{fault:?}");
                commit(&store, "c", 0, 9)?;
                drop(store);
                faulty.crash(seed as u64)?;
                assert_eq!(open(&storage, &path)?.get("c")?, offsets(&[(0, 9)]), "{fault:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn a_failed_compaction_keeps_the_journal_usable() -> anyhow::Result<()> {
        // Goal: compaction failures never lose acknowledged commits.
        // Method: fail each step of several compactions (write, sync of the
        // temporary file) and keep committing; then crash, reopen and compare.
        let directory = tempfile::tempdir()?;
        let path = directory.path().join(FILE_NAME);
        let faulty = FaultyStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
        let store = CursorStore::open_with(Arc::clone(&storage), path.clone(), PARTITIONS, 0)?;
        faulty.arm(Fault::WriteError, ".compact", 0);
        faulty.arm(Fault::SyncError, ".compact", 1);
        faulty.arm(Fault::ShortWrite, ".compact", 3);
        for offset in 0..50 {
            commit(&store, "c", (offset % 4) as u32, offset)?;
        }
        assert_eq!(faulty.injected_count(), 3);
        let expected = store.list();
        drop(store);
        faulty.crash(7)?;
        assert_eq!(open(&storage, &path)?.list(), expected);
        Ok(())
    }

    #[test]
    fn concurrent_commits_from_many_threads_are_all_durable() -> anyhow::Result<()> {
        // Goal: group commit acknowledges a commit only once it is durable.
        // Method: threads commit to their own cursors and to a shared one, with
        // compaction on; then a crash drops every unsynced byte, and a reopen must
        // still hold every acknowledged commit.
        const THREADS: u64 = 8;
        const COMMITS: u64 = 40;
        let directory = tempfile::tempdir()?;
        let path = directory.path().join(FILE_NAME);
        let faulty = FaultyStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
        let store = CursorStore::open_with(Arc::clone(&storage), path.clone(), PARTITIONS, 2048)?;
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|thread| {
                    let store = &store;
                    scope.spawn(move || -> Result<()> {
                        let name = format!("consumer-{thread}");
                        for offset in 1..=COMMITS {
                            commit(store, &name, (thread % 4) as u32, offset)?;
                            store.commit("shared", &[(PartitionId(0), Offset(offset))], true, &unbounded)?;
                            assert_eq!(store.get(&name)?[(thread % 4) as usize], Some(Offset(offset)));
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|handle| handle.join().expect("a committer panicked"))
        })?;
        let expected = store.list();
        assert_eq!(expected.len(), THREADS as usize + 1);
        for thread in 0..THREADS {
            let mut wanted = vec![None; PARTITIONS as usize];
            wanted[(thread % 4) as usize] = Some(Offset(COMMITS));
            assert_eq!(store.get(&format!("consumer-{thread}"))?, wanted);
        }
        drop(store);
        faulty.crash(42)?;
        assert_eq!(open(&storage, &path)?.list(), expected);
        Ok(())
    }

    #[derive(Debug, Clone)]
    enum Operation {
        Commit {
            name: u8,
            partition: u32,
            offset: u64,
            allow_backwards: bool,
        },
        Delete {
            name: u8,
        },
        Reopen,
    }

    fn operation() -> impl Strategy<Value = Operation> {
        prop_oneof![
            6 => (0..4u8, 0..PARTITIONS + 1, 0..60u64, any::<bool>()).prop_map(
                |(name, partition, offset, allow_backwards)| Operation::Commit {
                    name,
                    partition,
                    offset,
                    allow_backwards
                }
            ),
            1 => (0..4u8).prop_map(|name| Operation::Delete { name }),
            1 => Just(Operation::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn random_operations_match_a_model_across_reopens(
            operations in proptest::collection::vec(operation(), 1..40)
        ) {
            // Goal: the store behaves like a map of cursors, across reopens and
            // compactions. Method: run random operations against both and compare
            // every result and the final state; a high watermark of 50 makes some
            // commits fail.
            let directory = tempfile::tempdir().expect("temporary directory");
            let path = directory.path().join(FILE_NAME);
            let storage: Arc<dyn Storage> = Arc::new(StdStorage);
            let reopen = || CursorStore::open_with(Arc::clone(&storage), path.clone(), PARTITIONS, 64)
                .expect("open");
            let mut store = reopen();
            let mut model: BTreeMap<String, CursorOffsets> = BTreeMap::new();
            let high_watermark = |_: PartitionId| Offset(50);
            for operation in operations {
                match operation {
                    Operation::Commit { name, partition, offset, allow_backwards } => {
                        let name = format!("cursor-{name}");
                        let result = store.commit(
                            &name, &[(PartitionId(partition), Offset(offset))], allow_backwards, &high_watermark,
                        );
                        let committed = model.get(&name).and_then(|offsets| {
                            offsets.get(partition as usize).copied().flatten()
                        });
                        let expected = if partition >= PARTITIONS {
                            Err(ErrorKind::InvalidArgument)
                        } else if offset > 50 {
                            Err(ErrorKind::CursorAheadOfHighWatermark)
                        } else if committed.is_some_and(|committed| Offset(offset) < committed) && !allow_backwards {
                            Err(ErrorKind::CursorBackwards)
                        } else {
                            model.entry(name).or_insert_with(|| vec![None; PARTITIONS as usize])
                                [partition as usize] = Some(Offset(offset));
                            Ok(())
                        };
                        prop_assert_eq!(result.map_err(|e| e.kind()), expected);
                    }
                    Operation::Delete { name } => {
                        let name = format!("cursor-{name}");
                        let expected = model.remove(&name).map(|_| ()).ok_or(ErrorKind::CursorNotFound);
                        prop_assert_eq!(store.delete(&name).map_err(|e| e.kind()), expected);
                    }
                    Operation::Reopen => {
                        drop(store);
                        store = reopen();
                    }
                }
            }
            prop_assert_eq!(store.list(), model.clone().into_iter().collect::<Vec<_>>());
            drop(store);
            prop_assert_eq!(reopen().list(), model.into_iter().collect::<Vec<_>>());
        }
    }
}

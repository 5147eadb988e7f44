//! Named consumer cursors of one topic: per partition, the committed offset (the
//! next offset the consumer will read), kept durably in a journal
//! (FORMAT-cursor.md, "Cursor store").
//!
//! Every commit or delete appends one record and returns only once it is durable.
//! Writers that arrive while a write is in flight join the next batch, and one of
//! them (the leader) writes and syncs that whole batch for everyone: a group commit.
//!
//! Invariant: `State::cursors` is the *written* view: the durable state plus the
//! changes of the batch in flight and of the next batch, in that order. Each
//! pending change keeps the value it replaced, so readers see only the durable
//! view, and a failed batch is undone exactly.
//! Invariant: when a batch fails, every pending change fails with it, because
//! later changes were checked against the failed ones.
//!
//! It does not know partitions' high watermarks; `commit` asks the caller.

// The topic module, the only user outside tests, is merged separately.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

use crate::error::{Error, Result};
use crate::event::{Offset, PartitionId};
use crate::format::{DecodeError, Put, Reader, check_len};
use crate::io::Storage;
use crate::journal::{
    COMPACT_SIZE_BYTES_MIN, FRAME_HEADER_LEN, Journal, check_name, decode_name, encode_frame, encode_name,
};
use crate::limits::{CURSOR_NAME_SIZE_MAX, CURSORS_COUNT_MAX, PARTITIONS_COUNT_MAX};

/// The magic of a cursor journal.
pub(crate) const CURSOR_MAGIC: &[u8; 8] = b"STELECUR";
/// Record kind: set the offsets of some partitions of a cursor, creating it.
const KIND_SET: u8 = 1;
/// Record kind: delete a cursor.
const KIND_DELETE: u8 = 2;
/// Size of one (partition, offset) entry of a set record.
const ENTRY_LEN: usize = 12;
/// Largest record body: a set of every partition under a maximal name.
pub(crate) const CURSOR_RECORD_SIZE_MAX: u32 =
    (1 + 2 + CURSOR_NAME_SIZE_MAX + 4 + ENTRY_LEN * PARTITIONS_COUNT_MAX as usize) as u32;

const _: () = assert!(CURSOR_NAME_SIZE_MAX <= u16::MAX as usize);
const _: () = assert!(
    (1 + 2 + CURSOR_NAME_SIZE_MAX + 4 + ENTRY_LEN * PARTITIONS_COUNT_MAX as usize) <= u32::MAX as usize
);

/// A cursor's committed offsets, indexed by partition.
type Offsets = Vec<Option<Offset>>;

/// The store of one topic's cursors.
#[derive(Debug)]
pub(crate) struct CursorStore {
    partitions: u32,
    compact_size_bytes_min: u64,
    state: Mutex<State>,
    /// Signalled whenever a batch is resolved or leadership is released.
    resolved: Condvar,
}

#[derive(Debug)]
struct State {
    journal: Journal,
    /// The written view (see the module's invariant).
    cursors: BTreeMap<String, Offsets>,
    /// Bytes of frames a compaction of `cursors` would write.
    live_size: u64,
    /// The changes of the batch the leader is writing, oldest first.
    in_flight: Vec<Undo>,
    /// The batch that writers are joining.
    next: Batch,
    /// Whether some writer is writing a batch now.
    leading: bool,
}

/// A pending change: the cursor and the value it replaced.
#[derive(Debug)]
struct Undo {
    name: String,
    previous: Option<Offsets>,
}

type Outcome = Arc<OnceLock<Result<()>>>;

#[derive(Debug, Default)]
struct Batch {
    frames: Vec<u8>,
    undo: Vec<Undo>,
    outcome: Outcome,
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
        let mut cursors = BTreeMap::new();
        let replay_path = path.clone();
        let journal = Journal::open(
            storage,
            path,
            CURSOR_MAGIC,
            CURSOR_RECORD_SIZE_MAX,
            &mut |position, body| replay(&mut cursors, partitions, &replay_path, position, body),
        )?;
        let live_size = cursors
            .iter()
            .map(|(name, offsets)| snapshot_frame_size(name, offsets))
            .sum();
        Ok(CursorStore {
            partitions,
            compact_size_bytes_min,
            state: Mutex::new(State {
                journal,
                cursors,
                live_size,
                in_flight: Vec::new(),
                next: Batch::default(),
                leading: false,
            }),
            resolved: Condvar::new(),
        })
    }

    /// Bytes of a torn journal tail that open cut.
    pub(crate) fn torn_bytes_count(&self) -> u64 {
        self.lock().journal.torn_bytes_count()
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
        let state = self.lock();
        let current = state.cursors.get(name);
        if current.is_none() && state.cursors.len() >= CURSORS_COUNT_MAX {
            return Err(Error::LimitExceeded {
                what: "cursors in the topic",
                value: state.cursors.len() as u64 + 1,
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
        let mut updated = current
            .cloned()
            .unwrap_or_else(|| vec![None; self.partitions as usize]);
        for &(partition, offset) in offsets {
            updated[partition.0 as usize] = Some(offset);
        }
        let body = encode_set(name, offsets.iter().copied());
        self.enqueue(state, name, Some(updated), &body)
    }

    /// The committed offsets of a cursor, one per partition (`None` = never
    /// committed).
    ///
    /// # Errors
    /// [`Error::CursorNotFound`].
    pub(crate) fn get(&self, name: &str) -> Result<Vec<Option<Offset>>> {
        let state = self.lock();
        // The oldest pending change of a cursor holds its durable value.
        let pending = state
            .in_flight
            .iter()
            .chain(&state.next.undo)
            .find(|undo| undo.name == name);
        let durable = match pending {
            Some(undo) => undo.previous.as_ref(),
            None => state.cursors.get(name),
        };
        durable
            .cloned()
            .ok_or_else(|| Error::CursorNotFound(name.to_string()))
    }

    /// Every cursor, sorted by name.
    pub(crate) fn list(&self) -> Vec<(String, Vec<Option<Offset>>)> {
        let state = self.lock();
        durable_view(&state.cursors, &state.in_flight, &state.next.undo)
            .into_iter()
            .collect()
    }

    /// Deletes a cursor durably.
    ///
    /// # Errors
    /// [`Error::CursorNotFound`]; [`Error::InvalidArgument`] for a bad name; I/O
    /// errors, after which the cursor is still there.
    pub(crate) fn delete(&self, name: &str) -> Result<()> {
        check_name(name, CURSOR_NAME_SIZE_MAX, "cursor")?;
        let state = self.lock();
        if !state.cursors.contains_key(name) {
            return Err(Error::CursorNotFound(name.to_string()));
        }
        let mut body = vec![KIND_DELETE];
        encode_name(&mut body, name);
        self.enqueue(state, name, None, &body)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a checked change to the written view, adds its record to the next
    /// batch, and waits until that batch is durable or failed, leading it if no one
    /// else is writing.
    fn enqueue<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        name: &str,
        value: Option<Offsets>,
        body: &[u8],
    ) -> Result<()> {
        let previous = state.replace(name, value);
        state.next.undo.push(Undo {
            name: name.to_string(),
            previous,
        });
        encode_frame(&mut state.next.frames, body);
        let outcome = Arc::clone(&state.next.outcome);
        // Bounded: each pass either leads a batch, which resolves the batch holding
        // this change or an earlier one, or waits for a leader to do so.
        loop {
            if let Some(result) = outcome.get() {
                return result.as_ref().map(|_| ()).map_err(Error::duplicate);
            }
            if state.leading {
                state = self.resolved.wait(state).unwrap_or_else(PoisonError::into_inner);
            } else {
                state = self.lead(state);
            }
        }
    }

    /// Writes and syncs the next batch for everyone in it, then resolves it.
    fn lead<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        assert!(!state.leading, "two leaders");
        let batch = std::mem::take(&mut state.next);
        assert!(!batch.undo.is_empty(), "a leader leads a batch with a change");
        state.in_flight = batch.undo;
        state.leading = true;
        let prepared = {
            let State {
                journal,
                cursors,
                in_flight,
                next,
                ..
            } = &mut *state;
            journal.prepare(&|| encode_snapshot(&durable_view(cursors, in_flight, &next.undo)))
        };
        let result = match prepared {
            Err(error) => {
                let orphan = state.undo_pending();
                let _ = orphan.set(Err(error.duplicate()));
                Err(error)
            }
            Ok(write) => {
                drop(state);
                let outcome = write.perform(&batch.frames);
                state = self.lock();
                let orphan = outcome.is_err().then(|| state.undo_pending());
                let State { journal, cursors, .. } = &mut *state;
                // After a failure nothing is pending any more, so `cursors` is durable.
                let result = journal.finish(write, batch.frames.len() as u64, outcome, &|| {
                    encode_snapshot(cursors)
                });
                if let (Some(orphan), Err(error)) = (orphan, &result) {
                    let _ = orphan.set(Err(error.duplicate()));
                }
                result
            }
        };
        if result.is_ok() {
            state.in_flight.clear();
            if state
                .journal
                .should_compact(state.live_size, self.compact_size_bytes_min)
            {
                let snapshot = encode_snapshot(&durable_view(&state.cursors, &[], &state.next.undo));
                // A failed compaction leaves the journal usable (or marked broken, so
                // that the next append rewrites it); the batch is durable either way.
                let _ = state.journal.rewrite(&snapshot);
            }
        }
        batch
            .outcome
            .set(result)
            .expect("only the leader resolves a batch, once");
        state.leading = false;
        self.resolved.notify_all();
        state
    }
}

impl State {
    /// Sets a cursor in the written view (`None` deletes it) and returns the value
    /// it replaced.
    fn replace(&mut self, name: &str, value: Option<Offsets>) -> Option<Offsets> {
        if let Some(value) = &value {
            self.live_size += snapshot_frame_size(name, value);
        }
        let previous = match value {
            Some(value) => self.cursors.insert(name.to_string(), value),
            None => self.cursors.remove(name),
        };
        if let Some(previous) = &previous {
            self.live_size -= snapshot_frame_size(name, previous);
        }
        previous
    }

    /// Undoes every pending change, newest first, and returns the outcome of the
    /// next batch, which fails with the in-flight one (its changes were checked
    /// against the failed ones).
    fn undo_pending(&mut self) -> Outcome {
        let next = std::mem::take(&mut self.next);
        let in_flight = std::mem::take(&mut self.in_flight);
        for undo in next.undo.into_iter().rev().chain(in_flight.into_iter().rev()) {
            self.replace(&undo.name, undo.previous);
        }
        next.outcome
    }
}

/// The durable view: the written view with the pending changes undone.
fn durable_view(
    cursors: &BTreeMap<String, Offsets>,
    in_flight: &[Undo],
    next: &[Undo],
) -> BTreeMap<String, Offsets> {
    let mut view = cursors.clone();
    for undo in next.iter().rev().chain(in_flight.iter().rev()) {
        match &undo.previous {
            Some(previous) => view.insert(undo.name.clone(), previous.clone()),
            None => view.remove(&undo.name),
        };
    }
    view
}

/// A set record body for `entries`.
fn encode_set(name: &str, entries: impl ExactSizeIterator<Item = (PartitionId, Offset)>) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + 2 + name.len() + 4 + ENTRY_LEN * entries.len());
    body.put_u8(KIND_SET);
    encode_name(&mut body, name);
    body.put_u32(u32::try_from(entries.len()).expect("entries are bounded by the partition count"));
    for (partition, offset) in entries {
        body.put_u32(partition.0);
        body.put_u64(offset.0);
    }
    body
}

fn committed(offsets: &Offsets) -> impl ExactSizeIterator<Item = (PartitionId, Offset)> + '_ {
    let entries: Vec<(PartitionId, Offset)> = offsets
        .iter()
        .enumerate()
        .filter_map(|(index, offset)| offset.map(|offset| (PartitionId(index as u32), offset)))
        .collect();
    entries.into_iter()
}

/// The bytes of the frame that a compaction writes for one cursor.
fn snapshot_frame_size(name: &str, offsets: &Offsets) -> u64 {
    let entries = offsets.iter().filter(|offset| offset.is_some()).count();
    (FRAME_HEADER_LEN + 1 + 2 + name.len() + 4 + ENTRY_LEN * entries) as u64
}

/// The frames of a compacted journal: one set record per cursor.
fn encode_snapshot(cursors: &BTreeMap<String, Offsets>) -> Vec<u8> {
    let mut frames = Vec::new();
    for (name, offsets) in cursors {
        encode_frame(&mut frames, &encode_set(name, committed(offsets)));
    }
    frames
}

/// Applies one record read at open.
pub(crate) fn replay(
    cursors: &mut BTreeMap<String, Offsets>,
    partitions: u32,
    path: &std::path::Path,
    position: u64,
    body: &[u8],
) -> Result<()> {
    let corruption = |reason| Error::corruption(path, position, reason);
    let mut reader = Reader::new(body);
    let kind = reader.u8().map_err(corruption)?;
    let name = decode_name(&mut reader, CURSOR_NAME_SIZE_MAX).map_err(corruption)?;
    match kind {
        KIND_SET => {
            let count = reader.u32().map_err(corruption)?;
            check_len(u64::from(count), u64::from(partitions)).map_err(corruption)?;
            if !cursors.contains_key(name) && cursors.len() >= CURSORS_COUNT_MAX {
                return Err(corruption(DecodeError::LengthOutOfBounds {
                    len: cursors.len() as u64 + 1,
                    max: CURSORS_COUNT_MAX as u64,
                }));
            }
            let offsets = cursors
                .entry(name.to_string())
                .or_insert_with(|| vec![None; partitions as usize]);
            // Bounded by `count`, itself bounded by the partition count.
            for _ in 0..count {
                let partition = reader.u32().map_err(corruption)?;
                let offset = reader.u64().map_err(corruption)?;
                let Some(slot) = offsets.get_mut(partition as usize) else {
                    return Err(Error::Inconsistent {
                        path: path.to_path_buf(),
                        reason: format!(
                            "cursor record at position {position} names partition {partition}, \
                             but the topic has {partitions} partitions"
                        ),
                    });
                };
                *slot = Some(Offset(offset));
            }
        }
        KIND_DELETE => {
            // Deleting an absent cursor is harmless; the journal never holds one.
            cursors.remove(name);
        }
        _ => return Err(corruption(DecodeError::Invalid("unknown cursor record kind"))),
    }
    if reader.remaining() != 0 {
        return Err(corruption(DecodeError::Invalid(
            "trailing bytes in a cursor record",
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;
    use crate::error::ErrorKind;
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
            .map(|(name, offsets)| snapshot_frame_size(name, offsets))
            .sum();
        let len = file_len(&path)?;
        assert!(
            len <= 2 * (crate::journal::JOURNAL_HEADER_LEN as u64 + live_size) + 200,
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
    fn three_commits(directory: &Path) -> anyhow::Result<(Vec<u8>, Vec<u64>, Vec<Vec<(String, Offsets)>>)> {
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
        let header_bits = (0..crate::journal::JOURNAL_HEADER_LEN * 8).map(|bit| (bit, 0));
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
            let mut model: BTreeMap<String, Offsets> = BTreeMap::new();
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

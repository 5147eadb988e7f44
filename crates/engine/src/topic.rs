//! A topic: routes keys to partitions, owns its partitions, cursors and producer
//! registry.
//!
//! Invariant: a key always maps to the same partition: FNV-1a 64 of the key bytes,
//! modulo the partition count, which is fixed for the topic's life.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::config::{LogOptions, TopicOptions};
use crate::cursor::CursorStore;
use crate::error::{Error, Result};
use crate::event::{
    AppendAck, AppendRequest, Direction, Epoch, Event, ExpectedSequence, Offset, PartitionId, ProducerId,
    RecordedEvent, Sequence,
};
use crate::partition::{Completion, Partition, PartitionContext, PartitionInfo, RecoveryReport};
use crate::paths;
use crate::producer::ProducerRegistry;
use crate::subscribe::WaitPast;
use crate::view::{EventFilter, EventRef, StoredEvents};

/// The partition of `key` in a topic of `partitions` partitions: FNV-1a 64 over
/// the key bytes (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`), then
/// the remainder of the division by `partitions`. Stable across platforms and
/// versions; clients use it to route keys.
///
/// # Panics
/// When `partitions` is 0.
pub fn partition_for_key(key: &[u8], partitions: u32) -> PartitionId {
    assert!(partitions > 0, "a topic has at least one partition");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= *byte as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    PartitionId((hash % partitions as u64) as u32)
}

/// A cursor's position in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorPosition {
    /// The partition this position is in.
    pub partition: PartitionId,
    /// The next offset the consumer will read; `None` when never committed.
    pub committed: Option<Offset>,
    /// Events between the committed offset (or the earliest) and the high watermark.
    pub lag: u64,
}

/// A handle to an open topic. Cheap to clone; all methods take `&self` and may be
/// called from many threads.
#[derive(Clone)]
pub struct Topic {
    inner: Arc<TopicInner>,
}

struct TopicInner {
    name: String,
    dir: PathBuf,
    options: Arc<TopicOptions>,
    partitions: Vec<Arc<Partition>>,
    cursors: CursorStore,
    producers: Arc<ProducerRegistry>,
    closed: AtomicBool,
}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic").field("name", &self.inner.name).finish()
    }
}

/// A one-shot slot a blocking caller waits on.
struct Slot<T> {
    value: Mutex<Option<T>>,
    ready: Condvar,
}

impl<T> Slot<T> {
    fn new() -> Arc<Slot<T>> {
        Arc::new(Slot {
            value: Mutex::new(None),
            ready: Condvar::new(),
        })
    }

    fn put(&self, value: T) {
        *self.value.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(value);
        self.ready.notify_all();
    }

    fn take(&self) -> T {
        let mut guard = self.value.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            if let Some(value) = guard.take() {
                return value;
            }
            guard = self
                .ready
                .wait(guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

impl Topic {
    pub(crate) fn open(
        name: String,
        dir: PathBuf,
        options: TopicOptions,
        log_options: &LogOptions,
        metrics: &crate::metrics::EngineMetrics,
    ) -> Result<Topic> {
        let storage = Arc::clone(&log_options.storage);
        let clock = Arc::clone(&log_options.clock);
        let options = Arc::new(options);
        let producers = Arc::new(ProducerRegistry::open(
            Arc::clone(&storage),
            paths::producers_journal(&dir),
        )?);
        let cursors = CursorStore::open(
            Arc::clone(&storage),
            paths::cursors_journal(&dir),
            options.partitions,
        )?;
        let registry = Arc::clone(&producers);
        let context = PartitionContext {
            options: Arc::clone(&options),
            storage,
            clock,
            epoch_of: Arc::new(move |producer| registry.current_epoch(producer)),
            housekeeping_interval: log_options.housekeeping_interval,
            metrics: metrics.topic(&name),
        };
        // Partitions recover independently: open them on as many threads as
        // there are cores (recovery is CPU-bound: CRC checks and replay).
        let count = options.partitions as usize;
        let threads = std::thread::available_parallelism()
            .map_or(1, |threads| threads.get())
            .min(count);
        let mut opened: Vec<Option<Result<Arc<Partition>>>> = (0..count).map(|_| None).collect();
        std::thread::scope(|scope| {
            let chunk_size = count.div_ceil(threads.max(1));
            for (chunk_index, chunk) in opened.chunks_mut(chunk_size.max(1)).enumerate() {
                let context = &context;
                let dir = &dir;
                scope.spawn(move || {
                    for (offset, slot) in chunk.iter_mut().enumerate() {
                        let index = (chunk_index * chunk_size + offset) as u32;
                        *slot = Some(Partition::open(
                            paths::partition_dir(dir, index),
                            PartitionId(index),
                            context.clone(),
                        ));
                    }
                });
            }
        });
        let mut partitions = Vec::with_capacity(count);
        let mut first_error = None;
        for result in opened {
            match result.expect("every partition slot was filled") {
                Ok(partition) => partitions.push(partition),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        if let Some(error) = first_error {
            for partition in &partitions {
                let _ = partition.close();
            }
            return Err(error);
        }
        Ok(Topic {
            inner: Arc::new(TopicInner {
                name,
                dir,
                options,
                partitions,
                cursors,
                producers,
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The topic's options.
    pub fn options(&self) -> &TopicOptions {
        &self.inner.options
    }

    pub(crate) fn dir(&self) -> &PathBuf {
        &self.inner.dir
    }

    /// The number of partitions.
    pub fn partitions_count(&self) -> u32 {
        self.inner.partitions.len() as u32
    }

    /// The partition `key` belongs to.
    pub fn partition_for(&self, key: &[u8]) -> PartitionId {
        partition_for_key(key, self.partitions_count())
    }

    fn partition(&self, partition: PartitionId) -> Result<&Arc<Partition>> {
        self.inner.partitions.get(partition.0 as usize).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "partition {partition} out of range: topic {:?} has {} partitions",
                self.inner.name,
                self.inner.partitions.len()
            ))
        })
    }

    /// Appends events to a key, atomically and contiguously, if the key's last
    /// sequence matches `expected`.
    ///
    /// An idempotency id names one event of this key (the same id on another key
    /// is an unrelated event). When every event repeats an event of the key stored
    /// within the dedup window (same id, type, payload and headers, headers in any
    /// order), and those are stored one after another in this order, nothing is
    /// written and the ack carries their positions with `duplicate: true`, whatever
    /// `expected` says.
    ///
    /// # Errors
    /// [`Error::IdempotencyIdReused`] with the original's position when an id of
    /// the key names an event with other content, or the originals are not one run
    /// in this order; [`Error::WrongExpectedSequence`] with the actual sequence when
    /// the condition fails; [`Error::PartialDuplicate`] when only some events repeat
    /// events of the key within the dedup window; [`Error::RepeatedIdempotencyId`]
    /// when an id repeats within the append; [`Error::LimitExceeded`] / [`Error::InvalidArgument`]
    /// for bad input; [`Error::DiskFull`], [`Error::Io`], [`Error::Poisoned`] for
    /// storage failures. Nothing is written when an error is returned.
    pub fn append(
        &self,
        key: impl Into<Vec<u8>>,
        expected: ExpectedSequence,
        events: Vec<Event>,
    ) -> Result<AppendAck> {
        self.append_request(AppendRequest::new(key, events).expect(expected))
    }

    /// Appends one request and waits for its acknowledgement. See [`Topic::append`].
    ///
    /// A stamped request's producer sequence must be 0 when the partition does not
    /// know the producer in that epoch (its first append there, or the partition
    /// forgot it after `producer_idle_ms_max` without appends, or evicted it to
    /// keep its producer table bounded), and the last sequence plus 1 otherwise.
    /// A retry of one of the producer's recent appends there (same sequence, key
    /// and events; events since removed by retention are not compared) answers
    /// with the original's positions and `duplicate: true`.
    ///
    /// # Errors
    /// As [`Topic::append`], plus the producer errors [`Error::ProducerFenced`],
    /// [`Error::UnknownProducer`], [`Error::ProducerOutOfOrder`] (with `expected`
    /// 0 when the partition does not know the producer: re-open it, which starts a
    /// new epoch at 0 everywhere, after checking what was stored), and
    /// [`Error::IdempotencyIdReused`] when a recent sequence comes with other
    /// events than the append stored under it.
    pub fn append_request(&self, request: AppendRequest) -> Result<AppendAck> {
        let slot = Slot::new();
        let filled = Arc::clone(&slot);
        self.submit(request, move |result| filled.put(result));
        slot.take()
    }

    /// Appends many requests (any keys), each atomic with its own condition and
    /// result; results come back in request order. Requests for different
    /// partitions proceed in parallel and share group commits.
    pub fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<Result<AppendAck>> {
        struct Batch {
            results: Mutex<(Vec<Option<Result<AppendAck>>>, usize)>,
            done: Condvar,
        }
        let count = requests.len();
        let batch = Arc::new(Batch {
            results: Mutex::new(((0..count).map(|_| None).collect(), count)),
            done: Condvar::new(),
        });
        for (index, request) in requests.into_iter().enumerate() {
            let batch = Arc::clone(&batch);
            self.submit(request, move |result| {
                let mut guard = batch
                    .results
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                guard.0[index] = Some(result);
                guard.1 -= 1;
                if guard.1 == 0 {
                    batch.done.notify_all();
                }
            });
        }
        let mut guard = batch
            .results
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while guard.1 > 0 {
            guard = batch
                .done
                .wait(guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        std::mem::take(&mut guard.0)
            .into_iter()
            .map(|result| result.expect("every request completed"))
            .collect()
    }

    /// Appends without blocking for durability: `completion` is called exactly once
    /// with the outcome, possibly before `submit` returns, otherwise from the
    /// partition's worker thread (keep it short: send it somewhere).
    pub fn submit(
        &self,
        request: AppendRequest,
        completion: impl FnOnce(Result<AppendAck>) + Send + 'static,
    ) {
        let completion: Completion = Box::new(completion);
        if self.inner.closed.load(Ordering::Acquire) {
            return completion(Err(Error::Closed));
        }
        let partition = self.partition_for(&request.key);
        self.inner.partitions[partition.0 as usize].submit(request, completion);
    }

    /// Registers (or re-opens, bumping the epoch of) an idempotent producer.
    /// Appends stamped with an older epoch of the same producer fail with
    /// [`Error::ProducerFenced`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad name, [`Error::LimitExceeded`], I/O.
    pub fn open_producer(&self, name: &str) -> Result<(ProducerId, Epoch)> {
        self.inner.producers.open_producer(name)
    }

    /// Every registered producer: (name, id, current epoch).
    pub fn producers(&self) -> Vec<(String, ProducerId, Epoch)> {
        self.inner.producers.list()
    }

    /// Reads up to `count_max` events of a partition from `from`, and about
    /// `bytes_max` bytes at most (always at least one event when one exists).
    ///
    /// # Errors
    /// [`Error::OffsetOutOfRange`] below the earliest offset or past the high
    /// watermark; [`Error::Corruption`] when stored bytes fail their checksum.
    pub fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        count_max: usize,
        bytes_max: u64,
    ) -> Result<Vec<RecordedEvent>> {
        self.partition(partition)?.read(from, count_max, bytes_max)
    }

    /// Visits events of a partition from `from` without copying them, while
    /// `visit` returns true, at most `count_max` events and about `bytes_max`
    /// bytes of frames (at least one event when one exists); returns the offset
    /// after the last visited event.
    ///
    /// # Errors
    /// As [`Topic::read`].
    pub fn scan(
        &self,
        partition: PartitionId,
        from: Offset,
        count_max: usize,
        bytes_max: u64,
        mut visit: impl FnMut(&EventRef<'_>) -> bool,
    ) -> Result<Offset> {
        self.partition(partition)?
            .scan(from, count_max, bytes_max, |view| {
                visit(&EventRef::from_view(partition, view))
            })
    }

    /// The events of a partition from `from` that pass `filter`, as an owned
    /// batch over the segments' memory mappings (no event is copied): it
    /// examines at most `count_max` events and about `bytes_max` bytes of frames
    /// (at least one event when one exists) and continues at its
    /// [`StoredEvents::next_offset`].
    ///
    /// # Errors
    /// As [`Topic::read`].
    pub fn scan_events(
        &self,
        partition: PartitionId,
        from: Offset,
        count_max: usize,
        bytes_max: u64,
        filter: &EventFilter,
    ) -> Result<StoredEvents> {
        self.partition(partition)?
            .scan_events(from, count_max, bytes_max, filter)
    }

    /// Reads a key's history: forwards from sequence `from` (default 0), or
    /// backwards from `from` (default the newest), at most `count_max` events.
    ///
    /// # Errors
    /// [`Error::Corruption`] when stored bytes fail their checksum.
    pub fn read_key(
        &self,
        key: &[u8],
        from: Option<Sequence>,
        direction: Direction,
        count_max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        Ok(self
            .read_key_events(key, from, direction, count_max)?
            .into_recorded())
    }

    /// [`Topic::read_key`] as an owned batch over the segments' memory
    /// mappings (no event is copied), in the order read.
    ///
    /// # Errors
    /// As [`Topic::read_key`].
    pub fn read_key_events(
        &self,
        key: &[u8],
        from: Option<Sequence>,
        direction: Direction,
        count_max: usize,
    ) -> Result<StoredEvents> {
        validate_key(key)?;
        self.partition(self.partition_for(key))?
            .read_key(key, from, direction, count_max)
    }

    /// The key's last sequence, `None` when it has no events.
    ///
    /// # Errors
    /// I/O or corruption while confirming the key against the log.
    pub fn key_sequence(&self, key: &[u8]) -> Result<Option<Sequence>> {
        validate_key(key)?;
        Ok(self
            .partition(self.partition_for(key))?
            .key_last(key)?
            .map(|(sequence, _)| sequence))
    }

    /// The first offset of `partition` whose timestamp is at or after
    /// `timestamp_ms`, or the high watermark when all events are older.
    ///
    /// # Errors
    /// [`Error::Corruption`] when stored bytes fail their checksum.
    pub fn offset_for_timestamp(&self, partition: PartitionId, timestamp_ms: i64) -> Result<Offset> {
        self.partition(partition)?.offset_for_timestamp(timestamp_ms)
    }

    /// A summary of every partition.
    pub fn partition_infos(&self) -> Vec<PartitionInfo> {
        self.inner
            .partitions
            .iter()
            .map(|partition| partition.info())
            .collect()
    }

    /// What recovery found when each partition was opened.
    pub fn recovery_reports(&self) -> Vec<RecoveryReport> {
        self.inner
            .partitions
            .iter()
            .map(|partition| partition.recovery().clone())
            .collect()
    }

    /// Bytes cut from the torn tails of the topic's cursor and producer journals
    /// when it was opened: (cursors, producers).
    pub fn journal_bytes_cut(&self) -> (u64, u64) {
        (
            self.inner.cursors.torn_bytes_count(),
            self.inner.producers.torn_bytes_count(),
        )
    }

    /// The high watermark of a partition.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a partition out of range.
    pub fn high_watermark(&self, partition: PartitionId) -> Result<Offset> {
        Ok(self.partition(partition)?.high_watermark())
    }

    /// The oldest retained offset of `partition`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a partition out of range.
    pub fn earliest(&self, partition: PartitionId) -> Result<Offset> {
        Ok(self.partition(partition)?.earliest())
    }

    /// Blocks until `partition`'s high watermark passes `after`, or `timeout`;
    /// returns the high watermark. Returns early when the topic closes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a partition out of range.
    pub fn wait_for(&self, partition: PartitionId, after: Offset, timeout: Duration) -> Result<Offset> {
        Ok(self.partition(partition)?.wait_past(after, timeout))
    }

    /// A future that resolves to the high watermark once it passes `after` (or the
    /// topic closes). Runtime-agnostic: it registers a `Waker`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a partition out of range.
    pub fn wait_past(
        &self,
        partition: PartitionId,
        after: Offset,
    ) -> Result<WaitPast<impl FnMut() -> Option<Offset> + Unpin + use<>>> {
        let partition = Arc::clone(self.partition(partition)?);
        let checked = Arc::clone(&partition);
        Ok(WaitPast {
            notifier: partition,
            check: move || {
                let high_watermark = checked.high_watermark();
                (high_watermark > after || checked.is_closing()).then_some(high_watermark)
            },
        })
    }

    /// Commits a cursor's offsets (the next offsets to read) durably.
    ///
    /// # Errors
    /// [`Error::CursorAheadOfHighWatermark`] past the high watermark;
    /// [`Error::CursorBackwards`] when moving back without `allow_backwards`;
    /// [`Error::InvalidArgument`] for a bad name or partition. Nothing is written
    /// on error.
    pub fn commit_cursor(
        &self,
        name: &str,
        offsets: &[(PartitionId, Offset)],
        allow_backwards: bool,
    ) -> Result<()> {
        let partitions = &self.inner.partitions;
        self.inner
            .cursors
            .commit(name, offsets, allow_backwards, &|partition: PartitionId| {
                partitions
                    .get(partition.0 as usize)
                    .map_or(Offset(0), |partition| partition.high_watermark())
            })
    }

    /// A cursor's position in every partition, with lag.
    ///
    /// # Errors
    /// [`Error::CursorNotFound`].
    pub fn cursor(&self, name: &str) -> Result<Vec<CursorPosition>> {
        let offsets = self.inner.cursors.get(name)?;
        Ok(self.positions(&offsets))
    }

    fn positions(&self, offsets: &[Option<Offset>]) -> Vec<CursorPosition> {
        self.inner
            .partitions
            .iter()
            .zip(offsets)
            .map(|(partition, committed)| {
                let from = committed
                    .unwrap_or(partition.earliest())
                    .max(partition.earliest());
                CursorPosition {
                    partition: partition.id,
                    committed: *committed,
                    lag: partition.high_watermark().0.saturating_sub(from.0),
                }
            })
            .collect()
    }

    /// Every cursor with its positions and lag, sorted by name.
    pub fn cursors(&self) -> Vec<(String, Vec<CursorPosition>)> {
        self.inner
            .cursors
            .list()
            .into_iter()
            .map(|(name, offsets)| {
                let positions = self.positions(&offsets);
                (name, positions)
            })
            .collect()
    }

    /// Deletes a cursor.
    ///
    /// # Errors
    /// [`Error::CursorNotFound`], I/O.
    pub fn delete_cursor(&self, name: &str) -> Result<()> {
        self.inner.cursors.delete(name)
    }

    /// Deletes sealed segments beyond the retention limits now (it also happens
    /// in the background). Returns how many segments were deleted.
    ///
    /// # Errors
    /// I/O.
    pub fn enforce_retention(&self) -> Result<usize> {
        let mut deleted = 0;
        for partition in &self.inner.partitions {
            deleted += partition.enforce_retention()?;
        }
        Ok(deleted)
    }

    /// Writes a checkpoint of every partition now (it also happens in the
    /// background and at close), so that reopening replays less.
    ///
    /// # Errors
    /// I/O.
    pub fn checkpoint(&self) -> Result<()> {
        for partition in &self.inner.partitions {
            partition.write_checkpoint()?;
        }
        Ok(())
    }

    /// Bytes of RAM held by per-key state, over all partitions.
    pub fn keys_memory_bytes(&self) -> usize {
        self.inner
            .partitions
            .iter()
            .map(|partition| partition.keys_memory_bytes())
            .sum()
    }

    /// Flushes, checkpoints and stops every partition. Later appends fail with
    /// [`Error::Closed`]; reads of published data keep working.
    ///
    /// # Errors
    /// The first I/O error met; every partition is closed regardless.
    pub(crate) fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut first_error = None;
        for partition in &self.inner.partitions {
            if let Err(error) = partition.close() {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for TopicInner {
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            for partition in &self.partitions {
                let _ = partition.close();
            }
        }
    }
}

/// Checks a key given to a read: 1 to `KEY_SIZE_MAX` bytes, as appends require.
fn validate_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("key is empty".to_string()));
    }
    if key.len() > crate::limits::KEY_SIZE_MAX {
        return Err(Error::LimitExceeded {
            what: "key size",
            value: key.len() as u64,
            max: crate::limits::KEY_SIZE_MAX as u64,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_hash_is_fnv1a64() {
        // Goal: the routing hash is the documented one; these values are computed
        // from the FNV-1a 64 definition (empty input gives the offset basis).
        assert_eq!(
            partition_for_key(b"", u32::MAX),
            PartitionId((0xcbf2_9ce4_8422_2325u64 % u32::MAX as u64) as u32)
        );
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        hash ^= b'a' as u64;
        hash = hash.wrapping_mul(0x100_0000_01b3);
        assert_eq!(hash, 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            partition_for_key(b"a", 1000),
            PartitionId((0xaf63_dc4c_8601_ec8cu64 % 1000) as u32)
        );
    }
}

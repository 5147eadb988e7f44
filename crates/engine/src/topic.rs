//! A topic: routes keys to partitions, owns its partitions, cursors and producer
//! registry.
//!
//! Invariant: a key always maps to the same partition: FNV-1a 64 of the key bytes,
//! modulo the partition count, which is fixed for the topic's life.
//!
//! The other options can change while the topic is open
//! ([`Topic::update_options`]): a change is recorded in `changes.journal`
//! first (the commit point), then written into `topic.meta`, then installed
//! in the options cell every partition reads. Open rolls a change the journal
//! holds but the meta does not into the meta.
//! Invariant: once the topic is open, the journal's newest revision is at most
//! the meta's (equal unless the history lost its newest records), and every
//! change records the meta's revision plus one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::config::{Clock, LiveOptions, LogOptions, TopicChange, TopicOptions};
use crate::cursor::CursorStore;
use crate::error::{Error, Result};
use crate::event::{
    AppendAck, AppendRequest, Direction, Epoch, Event, ExpectedSequence, Offset, PartitionId, ProducerId,
    RecordedEvent, Sequence,
};
use crate::format::topic_change::TopicChangeRecord;
use crate::format::topic_meta::{self, TopicMeta};
use crate::io::{self, Storage};
use crate::journal::JournalMap;
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
    options: Arc<LiveOptions>,
    /// The topic's revision and the time of its last change; held for the
    /// whole of a change, so that changes are made one at a time.
    revision: Mutex<(u64, i64)>,
    /// The history of option changes (`changes.journal`).
    changes: JournalMap<TopicChangeRecord>,
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
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

/// The outcome of [`Topic::update_options`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicUpdate {
    /// The options before the change.
    pub previous: TopicOptions,
    /// The options in effect now.
    pub options: TopicOptions,
    /// The topic's revision now: one more per change, 0 when never changed.
    pub revision: u64,
    /// When the last change was made, Unix ms; 0 when never changed.
    pub changed_ms: i64,
}

impl Topic {
    pub(crate) fn open(
        dir: PathBuf,
        meta: TopicMeta,
        log_options: &LogOptions,
        metrics: &crate::metrics::EngineMetrics,
        pool: &Arc<crate::partition::pool::PoolHandle>,
    ) -> Result<Topic> {
        let storage = Arc::clone(&log_options.storage);
        let clock = Arc::clone(&log_options.clock);
        let changes = JournalMap::<TopicChangeRecord>::open(
            Arc::clone(&storage),
            paths::topic_changes_journal(&dir),
            (),
        )?;
        let meta = roll_forward(&*storage, &dir, meta, &changes)?;
        let TopicMeta {
            name,
            options,
            revision,
            changed_ms,
        } = meta;
        let live = Arc::new(LiveOptions::new(options.clone()));
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
            options: Arc::clone(&live),
            storage,
            clock,
            epoch_of: Arc::new(move |producer| registry.current_epoch(producer)),
            housekeeping_interval: log_options.housekeeping_interval,
            metrics: metrics.topic(&name),
            pool: Arc::clone(pool),
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
                            context.for_partition(),
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
                options: live,
                revision: Mutex::new((revision, changed_ms)),
                changes,
                storage: Arc::clone(&log_options.storage),
                clock: Arc::clone(&log_options.clock),
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

    /// The topic's options now (they change with [`Topic::update_options`]).
    pub fn options(&self) -> TopicOptions {
        TopicOptions::clone(&self.inner.options.get())
    }

    /// The topic's revision (0 when never changed, then one more per change)
    /// and the time of its last change, Unix ms (0 when never changed).
    pub fn revision(&self) -> (u64, i64) {
        *self
            .inner
            .revision
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every recorded change of the topic's options, oldest first.
    pub fn changes(&self) -> Vec<TopicChangeRecord> {
        self.inner
            .changes
            .list()
            .into_iter()
            .map(|(_, change)| change)
            .collect()
    }

    /// Changes the topic's options while it is open, without a restart and
    /// without holding up appends: the change is recorded in the topic's
    /// history (with `principal`, who asked for it; empty when unknown), written
    /// into `topic.meta`, and then applies to every partition:
    /// - retention, at the next retention pass (housekeeping, or
    ///   [`Topic::enforce_retention`]);
    /// - the payload limit and the durability, from the next append (appends
    ///   accepted before are acknowledged under the durability they were
    ///   accepted with; the first append acknowledged under `Always` syncs every
    ///   segment written without a sync before it);
    /// - the segment size, at the next roll decision (the next append): an
    ///   active segment already past a smaller size rolls then;
    /// - the dedup window, at once (see [`TopicChange::dedup_window_ms`]).
    ///
    /// A change that sets every option to its current value changes nothing
    /// and records nothing. The partition count cannot change (see
    /// [`TopicChange`]).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the change sets nothing;
    /// [`Error::Config`] or [`Error::LimitExceeded`] when the new options fail
    /// validation (nothing is changed); [`Error::LimitExceeded`] past
    /// `TOPIC_CHANGES_COUNT_MAX` changes; [`Error::Closed`]; I/O errors. An
    /// I/O error writing `topic.meta` comes after the change is recorded: it
    /// is in effect, and open writes it into the meta.
    pub fn update_options(&self, change: &TopicChange, principal: &str) -> Result<TopicUpdate> {
        if change.is_empty() {
            return Err(Error::InvalidArgument("the change sets no option".to_string()));
        }
        let inner = &self.inner;
        let mut revision = inner
            .revision
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let previous = TopicOptions::clone(&inner.options.get());
        let options = change.apply_to(&previous);
        options.validate()?;
        if options == previous {
            return Ok(TopicUpdate {
                options,
                previous,
                revision: revision.0,
                changed_ms: revision.1,
            });
        }
        let recorded = inner.changes.read(|entries| entries.len());
        if recorded >= crate::limits::TOPIC_CHANGES_COUNT_MAX {
            return Err(Error::LimitExceeded {
                what: "topic changes",
                value: recorded as u64 + 1,
                max: crate::limits::TOPIC_CHANGES_COUNT_MAX as u64,
            });
        }
        let record = TopicChangeRecord {
            revision: revision.0 + 1,
            changed_ms: inner.clock.now_ms(),
            principal: cut_at_boundary(principal, crate::limits::CHANGE_PRINCIPAL_SIZE_MAX).to_string(),
            previous: previous.clone(),
            options: options.clone(),
        };
        inner.changes.write(|_| Ok((record.clone(), ())))?;
        // Recorded: the change is made. Install it before writing the meta, so
        // that a failed meta write (rolled forward at open) leaves the running
        // topic and its history in agreement.
        *revision = (record.revision, record.changed_ms);
        inner.options.set(options.clone());
        for partition in &inner.partitions {
            partition.options_changed(&options);
        }
        let meta = TopicMeta {
            name: inner.name.clone(),
            options: options.clone(),
            revision: record.revision,
            changed_ms: record.changed_ms,
        };
        write_meta(&*inner.storage, &inner.dir, &meta)?;
        tracing::debug!(
            topic = %inner.name,
            revision = record.revision,
            principal = %record.principal,
            "topic options changed"
        );
        Ok(TopicUpdate {
            previous,
            options,
            revision: record.revision,
            changed_ms: record.changed_ms,
        })
    }

    pub(crate) fn dir(&self) -> &PathBuf {
        &self.inner.dir
    }

    /// The partitions, for a backup's pins (`backup.rs`).
    pub(crate) fn partitions(&self) -> &[Arc<Partition>] {
        &self.inner.partitions
    }

    /// Writes the durable cursors as a fresh journal at `path` (a backup's copy).
    pub(crate) fn snapshot_cursors(
        &self,
        storage: &dyn crate::io::Storage,
        path: &std::path::Path,
    ) -> Result<Vec<u8>> {
        self.inner.cursors.write_snapshot(storage, path)
    }

    /// Writes the durable history of option changes as a fresh journal at
    /// `path` (a backup's copy; taken after the meta, so that a change made
    /// in between is rolled forward when the copy is opened).
    pub(crate) fn snapshot_changes(
        &self,
        storage: &dyn crate::io::Storage,
        path: &std::path::Path,
    ) -> Result<Vec<u8>> {
        self.inner.changes.write_snapshot(storage, path)
    }

    /// Writes the durable producer registry as a fresh journal at `path` (a
    /// backup's copy).
    pub(crate) fn snapshot_producers(
        &self,
        storage: &dyn crate::io::Storage,
        path: &std::path::Path,
    ) -> Result<Vec<u8>> {
        self.inner.producers.write_snapshot(storage, path)
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
        // Inside a `coalesce_writes` scope the append is held: release it
        // before waiting for it.
        crate::partition::coalesce::release_all();
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
        // One write (or worker wake-up) per partition for the whole batch.
        crate::coalesce_writes(|| {
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
        });
        // Inside a caller's scope, the batch's appends are still held: waiting
        // for them would wait for this thread.
        crate::partition::coalesce::release_all();
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

    /// The partitions opened quarantined (see [`crate::Quarantine`]), with
    /// where each is damaged.
    pub fn quarantines(&self) -> Vec<(PartitionId, crate::Quarantine)> {
        self.inner
            .partitions
            .iter()
            .filter_map(|partition| Some((partition.id, partition.quarantine()?.clone())))
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
    /// [`Error::InvalidArgument`] for a partition out of range;
    /// [`Error::Quarantined`] when the partition is quarantined and `after` is at
    /// or past the end of what it serves (nothing more will come).
    pub fn wait_past(
        &self,
        partition: PartitionId,
        after: Offset,
    ) -> Result<WaitPast<impl FnMut() -> Option<Offset> + Unpin + use<>>> {
        let partition = Arc::clone(self.partition(partition)?);
        if let Some(quarantine) = partition.quarantine()
            && after >= partition.high_watermark()
        {
            return Err(quarantine.error(partition.id));
        }
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

/// The longest prefix of `text` of at most `size_max` bytes that ends at a
/// character boundary.
fn cut_at_boundary(text: &str, size_max: usize) -> &str {
    let mut end = text.len().min(size_max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Replaces `topic.meta` atomically (temporary file, fdatasync, rename,
/// directory fsync).
fn write_meta(storage: &dyn Storage, dir: &std::path::Path, meta: &TopicMeta) -> Result<()> {
    let path = paths::topic_meta(dir);
    io::write_file_atomic(storage, &path, &topic_meta::encode_meta(meta))
        .map_err(|error| Error::io("write topic meta", &path, error))
}

/// The meta as of the newest recorded change: a change recorded in the
/// journal whose meta write did not happen (a crash, a failed write) is
/// written into the meta now.
///
/// # Errors
/// [`Error::Inconsistent`] when the journal's newest change does not fit
/// the topic; I/O errors.
fn roll_forward(
    storage: &dyn Storage,
    dir: &std::path::Path,
    meta: TopicMeta,
    changes: &JournalMap<TopicChangeRecord>,
) -> Result<TopicMeta> {
    let newest = changes.read(|entries| entries.values().next_back().cloned());
    let newest_revision = newest.as_ref().map_or(0, |change| change.revision);
    if newest_revision < meta.revision {
        // The meta is the options' authority; a history behind it lost its
        // newest records (a journal removed, or copied before the meta).
        // Later changes continue from the meta's revision.
        tracing::warn!(
            dir = %dir.display(),
            meta = meta.revision,
            journal = newest_revision,
            "the topic's change history ends before its meta's revision"
        );
        return Ok(meta);
    }
    let Some(change) = newest.filter(|change| change.revision > meta.revision) else {
        return Ok(meta);
    };
    if change.options.partitions != meta.options.partitions {
        return Err(Error::Inconsistent {
            path: paths::topic_changes_journal(dir),
            reason: "a recorded change names another partition count".to_string(),
        });
    }
    tracing::info!(
        dir = %dir.display(),
        from = meta.revision,
        to = change.revision,
        "a recorded topic change is written into its meta"
    );
    let rolled = TopicMeta {
        name: meta.name,
        options: change.options,
        revision: change.revision,
        changed_ms: change.changed_ms,
    };
    write_meta(storage, dir, &rolled)?;
    Ok(rolled)
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

#[cfg(test)]
mod update_tests {
    use super::*;
    use crate::config::Durability;
    use crate::{ExpectedSequence, Log};

    fn append_one(topic: &Topic, key: &str, payload_size: usize) -> Result<AppendAck> {
        topic.append(
            key,
            ExpectedSequence::Any,
            vec![Event::new("e", vec![7u8; payload_size])],
        )
    }

    #[test]
    fn options_change_live_are_recorded_and_survive_a_reopen() -> anyhow::Result<()> {
        // Goal: a change applies to a running topic without losing appends
        // (durability switched back and forth under concurrent appenders, the
        // payload limit, the segment size), is refused whole when invalid,
        // and is read back with its history after a reopen.
        // Method: appender threads run through every durability switch; each
        // acknowledged offset must be readable after the reopen.
        let dir = tempfile::tempdir()?;
        let log = Log::open(dir.path(), LogOptions::default())?;
        let topic = log.create_topic("t", TopicOptions::default().partitions(2))?;
        assert_eq!(topic.revision(), (0, 0));
        let stop = Arc::new(AtomicBool::new(false));
        let appenders: Vec<_> = (0..3)
            .map(|thread| {
                let topic = topic.clone();
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut acks = Vec::new();
                    let mut index = 0u64;
                    while !stop.load(Ordering::Acquire) || index < 50 {
                        let ack = append_one(&topic, &format!("k{thread}-{}", index % 7), 100)
                            .expect("appends succeed through every change");
                        acks.push(ack);
                        index += 1;
                    }
                    acks
                })
            })
            .collect();
        let switches = [
            Durability::None,
            Durability::Interval { interval_ms: 5 },
            Durability::Always,
            Durability::None,
            Durability::Always,
        ];
        for durability in switches {
            let change = TopicChange {
                durability: Some(durability),
                ..TopicChange::default()
            };
            let update = log.update_topic("t", &change, "tester")?;
            assert_eq!(update.options.durability, durability);
            assert_eq!(topic.options().durability, durability);
        }
        stop.store(true, Ordering::Release);
        let acks: Vec<AppendAck> = appenders
            .into_iter()
            .flat_map(|appender| appender.join().expect("appender"))
            .collect();
        assert_eq!(topic.revision().0, switches.len() as u64);

        // Invalid values change nothing.
        let before = topic.options();
        let bad = TopicChange {
            segment_size_bytes_max: Some(1),
            ..TopicChange::default()
        };
        assert_eq!(
            log.update_topic("t", &bad, "").expect_err("refused").kind(),
            crate::ErrorKind::Config
        );
        let too_big = TopicChange {
            payload_size_max: Some(crate::limits::PAYLOAD_SIZE_MAX_LIMIT + 1),
            ..TopicChange::default()
        };
        assert_eq!(
            log.update_topic("t", &too_big, "").expect_err("refused").kind(),
            crate::ErrorKind::LimitExceeded
        );
        assert_eq!(
            log.update_topic("t", &TopicChange::default(), "")
                .expect_err("refused")
                .kind(),
            crate::ErrorKind::InvalidArgument
        );
        assert_eq!(
            log.update_topic("nope", &bad, "").expect_err("refused").kind(),
            crate::ErrorKind::TopicNotFound
        );
        assert_eq!(topic.options(), before);
        assert_eq!(topic.revision().0, switches.len() as u64);

        // The payload limit applies to the next append.
        let limit = TopicChange {
            payload_size_max: Some(1000),
            ..TopicChange::default()
        };
        log.update_topic("t", &limit, "tester")?;
        assert_eq!(
            append_one(&topic, "big", 1001).expect_err("refused").kind(),
            crate::ErrorKind::LimitExceeded
        );
        append_one(&topic, "big", 1000)?;
        // The same values again record nothing.
        let same = log.update_topic("t", &limit, "tester")?;
        assert_eq!(same.revision, switches.len() as u64 + 1);

        log.close()?;
        drop(log);
        let log = Log::open(dir.path(), LogOptions::default())?;
        let topic = log.topic("t")?;
        assert_eq!(topic.revision().0, switches.len() as u64 + 1);
        assert_eq!(topic.options().payload_size_max, 1000);
        assert_eq!(topic.options().durability, Durability::Always);
        let history = topic.changes();
        assert_eq!(history.len(), switches.len() + 1);
        for (index, change) in history.iter().enumerate() {
            assert_eq!(change.revision, index as u64 + 1);
            assert_eq!(change.principal, "tester");
            if index > 0 {
                assert_eq!(change.previous, history[index - 1].options);
            }
        }
        assert_eq!(history[0].previous, TopicOptions::default().partitions(2));
        for ack in &acks {
            let events = topic.read(ack.partition, ack.first_offset, 1, u64::MAX)?;
            assert_eq!(events.len(), 1, "acknowledged {ack:?} is stored");
        }
        Ok(())
    }

    #[test]
    fn a_change_recorded_but_not_in_the_meta_is_rolled_forward_at_open() -> anyhow::Result<()> {
        // Goal: the change journal is the commit point: a meta left at the old
        // revision (a crash between the two writes) is brought forward at open.
        // Method: keep the meta of revision 0, change, put the old meta back, reopen.
        let dir = tempfile::tempdir()?;
        let log = Log::open(dir.path(), LogOptions::default())?;
        let topic = log.create_topic("t", TopicOptions::default().partitions(1))?;
        let meta_path = paths::topic_meta(topic.dir());
        let old_meta = std::fs::read(&meta_path)?;
        let change = TopicChange {
            retention_bytes: Some(Some(1 << 20)),
            ..TopicChange::default()
        };
        log.update_topic("t", &change, "")?;
        log.close()?;
        drop(log);
        std::fs::write(&meta_path, &old_meta)?;
        let log = Log::open(dir.path(), LogOptions::default())?;
        let topic = log.topic("t")?;
        assert_eq!(topic.options().retention_bytes, Some(1 << 20));
        assert_eq!(topic.revision().0, 1);
        let meta = topic_meta::decode_meta(&std::fs::read(&meta_path)?)?;
        assert_eq!(meta.revision, 1);
        Ok(())
    }

    #[test]
    fn a_backup_keeps_the_topics_revision_and_history() -> anyhow::Result<()> {
        // Goal: a restored backup opens with the options, revision and
        // history of changes the topic had (the change journal is copied
        // with the meta).
        let dir = tempfile::tempdir()?;
        let log = Log::open(dir.path().join("data"), LogOptions::default())?;
        log.create_topic("t", TopicOptions::default().partitions(1))?;
        for window_ms in [1000, 2000] {
            let change = TopicChange {
                dedup_window_ms: Some(window_ms),
                ..TopicChange::default()
            };
            log.update_topic("t", &change, "admin")?;
        }
        let backup = dir.path().join("backup");
        log.backup(&backup, crate::backup::BackupOptions::default())?;
        log.close()?;
        drop(log);
        let restored = dir.path().join("restored");
        crate::backup::restore(&backup, &restored, None)?;
        let log = Log::open(&restored, LogOptions::default())?;
        let topic = log.topic("t")?;
        assert_eq!(topic.revision().0, 2);
        assert_eq!(topic.options().dedup_window_ms, 2000);
        let revisions: Vec<u64> = topic.changes().iter().map(|change| change.revision).collect();
        assert_eq!(revisions, vec![1, 2]);
        Ok(())
    }
}

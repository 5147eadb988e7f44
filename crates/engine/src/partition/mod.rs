//! One partition: ordered segments, the append path with group commit, reads,
//! recovery, retention and checkpoints.
//!
//! Appenders encode their records under the partition's state lock into an open
//! group (no I/O for `Durability::Always`). A worker thread takes the open group,
//! writes it with pwrite, fdatasyncs once, then publishes it: the segment's
//! published size, the high watermark, the key/producer/dedup state, then the
//! acknowledgements. While it syncs, new appends fill the next group, so one
//! fdatasync carries everything that arrived during the previous one. For
//! `Interval` and `None` the appender writes and publishes inline, also without
//! the lock (its group is the flushing group meanwhile).
//!
//! No file I/O happens under the state lock. A roll only plans the next
//! segment; the writer of the group creates its file (header fdatasync,
//! directory fsync) before writing records into it. Sealing a full segment,
//! writing and merging dedup runs, checkpoints and retention are worker jobs:
//! planned under the lock, done without it, installed under it.
//!
//! Invariant: state visible to readers (segment published sizes, the high
//! watermark, `State::keys`) only ever describes acknowledged records.
//! Invariant: the writer-side view of a key, producer or idempotency id is the
//! open group's overlay, else the flushing group's overlay, else the published
//! state; a failed write discards both overlays and every pending append fails.
//! Invariant: a failed fdatasync poisons the partition; it is never retried.

mod append;
pub(crate) mod coalesce;
pub(crate) mod pool;
mod quarantine;
mod read;
mod recover;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use crate::config::{Clock, LiveOptions, TopicOptions};
use crate::dedup::DedupIndex;
use crate::error::{Error, Result};
use crate::event::{AppendAck, Epoch, Offset, PartitionId, ProducerId};
use crate::format::checkpoint::ProducerSnapshot;
use crate::format::index::IndexEntry;
use crate::io::Storage;
use crate::keys::{KeyIndex, KeyState};
use crate::limits;
use crate::segment::Segment;
use crate::subscribe::{AsNotifier, Notifier};

pub use quarantine::Quarantine;
pub use recover::RecoveryReport;
pub(crate) use recover::{PartitionPin, PinnedSegment};

/// The longest a group commit waits for more appends to join.
const GROUP_COMMIT_WAIT_MAX: Duration = Duration::from_micros(500);

/// Called once with the outcome of an append.
pub(crate) type Completion = Box<dyn FnOnce(Result<AppendAck>) + Send>;

/// Groups with more acknowledgements than this are delivered by the completer.
const COMPLETER_GROUP_SIZE_MIN: usize = 16;

/// Group commits one step of the worker makes before the pool thread turns
/// to other partitions (each may be an fdatasync).
const STEP_FLUSHES_MAX: usize = 4;

/// Looks up a producer's current epoch in the topic's registry.
pub(crate) type EpochOf = Arc<dyn Fn(ProducerId) -> Option<Epoch> + Send + Sync>;

/// What a partition needs from its topic.
#[derive(Clone)]
pub(crate) struct PartitionContext {
    /// The topic's options, one cell per partition (see
    /// [`PartitionContext::for_partition`]), replaced whole by a change
    /// ([`Partition::options_changed`]).
    pub(crate) options: Arc<LiveOptions>,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) epoch_of: EpochOf,
    /// How often the worker looks at retention, checkpoints and idle producers.
    pub(crate) housekeeping_interval: Duration,
    /// Where the partition records fsync, group commit, roll and retention figures.
    pub(crate) metrics: crate::metrics::TopicMetrics,
    /// The log's worker pool, which runs the partition's background work.
    pub(crate) pool: Arc<pool::PoolHandle>,
}

impl PartitionContext {
    /// This context with an options cell of its own. Every append reads the
    /// options (a read lock and a reference count): one cell shared by the
    /// topic's partitions would make appenders of different partitions write
    /// the same cache lines on every append.
    pub(crate) fn for_partition(&self) -> PartitionContext {
        PartitionContext {
            options: Arc::new(LiveOptions::new(TopicOptions::clone(&self.options()))),
            ..self.clone()
        }
    }

    /// The topic's options now.
    pub(crate) fn options(&self) -> Arc<TopicOptions> {
        self.options.get()
    }
}

/// A summary of a partition for callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The partition described.
    pub partition: PartitionId,
    /// The oldest retained offset.
    pub earliest: Offset,
    /// One past the newest acknowledged offset.
    pub high_watermark: Offset,
    /// Bytes of segment files.
    pub size_bytes: u64,
    /// Segment files, sealed and active.
    pub segments_count: usize,
    /// Keys with at least one event ever.
    pub keys_count: usize,
    /// Bytes of RAM held by the idempotency index.
    pub dedup_memory_bytes: usize,
    /// Files of the idempotency index.
    pub dedup_runs_count: usize,
    /// Set when the partition was opened quarantined: where the damage is and
    /// which offsets are still served.
    pub quarantine: Option<Quarantine>,
}

pub(crate) struct Partition {
    pub(crate) id: PartitionId,
    pub(crate) dir: PathBuf,
    context: PartitionContext,
    segments: RwLock<Vec<Arc<Segment>>>,
    high_watermark: AtomicU64,
    earliest: AtomicU64,
    state: Mutex<State>,
    /// Wakes the worker: an open group to flush, or shutdown.
    work: Condvar,
    /// Wakes appenders waiting for room in the open group.
    room: Condvar,
    /// Signalled when a housekeeping round starts (tests wait for rounds).
    #[cfg(test)]
    housekeeping_round: Condvar,
    tail: Notifier,
    poisoned: AtomicBool,
    closing: AtomicBool,
    /// Held while full segments are sealed: by the worker after a roll, and by
    /// retention, which seals what is full before it judges segments, so that
    /// an explicit `enforce_retention` does not depend on the worker's timing.
    sealing: Mutex<()>,
    /// This partition, for queueing it in the pool from `&self`.
    me: Weak<Partition>,
    /// Its place in the worker pool.
    schedule: pool::Schedule,
    /// Set once the worker was started, and once it stopped (at close).
    worker_started: AtomicBool,
    worker_stopped: Mutex<bool>,
    stopped: Condvar,
    recovery: RecoveryReport,
    /// Set when recovery found damage it may not repair: the partition serves
    /// the offsets below it, refuses the rest and every append, has no worker
    /// and writes nothing.
    quarantine: Option<Quarantine>,
}

impl AsNotifier for Partition {
    fn notifier(&self) -> &Notifier {
        &self.tail
    }
}

/// The state behind the partition lock.
pub(crate) struct State {
    /// Published key states.
    keys: KeyIndex,
    /// Published producer states.
    producers: HashMap<ProducerId, ProducerSnapshot>,
    /// Published idempotency fingerprints.
    dedup: DedupIndex,
    /// Appends encoded but not yet handed to the worker.
    open: Pending,
    /// Overlays of the group the worker is writing.
    flushing: Option<Pending>,
    /// The next offset to assign.
    next_offset: Offset,
    /// The newest assigned timestamp; timestamps never decrease.
    last_timestamp_ms: i64,
    /// The segment appends go to.
    active: Arc<Segment>,
    /// Position after the last encoded byte of the active segment.
    write_end: u64,
    /// Position of the newest sparse index entry of the active segment.
    last_index_position: Option<u64>,
    /// Unsynced bytes written (`Interval` and `None`).
    unsynced: bool,
    /// Groups taken for writing and groups finished (published or failed):
    /// groups are numbered from 1 and finish in order.
    groups_taken: u64,
    groups_finished: u64,
    /// The worker waits for an inline writer's group before taking the next.
    worker_waits_for_flush: bool,
    /// The worker waits on `work` ([`Partition::wait_for_work`]).
    worker_sleeping: bool,
    /// Appenders waiting on `room` (back-pressure).
    room_waiters: usize,
    /// A segment may have become complete: the worker seals it.
    seal_due: bool,
    /// The dedup index froze a memtable: the worker writes it out.
    dedup_due: bool,
    /// Appends in the previous group commit, and how long writing and syncing it
    /// took: the next group waits a moment for as many (`gather`).
    last_group_size: usize,
    last_flush_duration: Duration,
    /// When the active segment was last synced (`Interval`).
    last_sync: std::time::Instant,
    /// The offset the newest checkpoint covers.
    checkpoint_offset: Offset,
    bytes_since_checkpoint: u64,
    last_housekeeping: std::time::Instant,
    /// The next offset when housekeeping last ran, and how many rounds in a
    /// row found it unchanged (capped at `HOUSEKEEPING_BACKOFF_SHIFT_MAX`): an
    /// idle partition's housekeeping interval is the log's shifted left by it.
    housekeeping_offset: Offset,
    housekeeping_backoff: u32,
    /// When the first housekeeping rounds started (tests read the gaps).
    #[cfg(test)]
    housekeeping_rounds: Vec<std::time::Instant>,
}

/// Appends encoded but not yet published, with the state they would publish.
#[derive(Default)]
pub(crate) struct Pending {
    writes: Vec<SegmentWrite>,
    completions: Vec<(Completion, Result<AppendAck>)>,
    /// Key states after this group, by key.
    keys: HashMap<Vec<u8>, PendingKey>,
    /// Offsets of the events with idempotency ids in this group, by keyed
    /// fingerprint.
    ids: HashMap<u64, Vec<Offset>>,
    /// The appends of this group with an idempotency id or a producer stamp, in
    /// offset order, with their events: retries are compared with these.
    calls: Vec<PendingCall>,
    /// Producer states after this group.
    producers: HashMap<ProducerId, ProducerSnapshot>,
    /// The first and one past the last offset of this group; `None` when it
    /// holds no records.
    first_offset: Option<Offset>,
    end_offset: Option<Offset>,
    /// Records encoded into this group.
    records_count: u64,
    /// The group's number once taken for writing (`State::groups_taken`).
    number: u64,
    bytes: u64,
    /// Some append of this group was accepted under `Durability::Always`: the
    /// group is acknowledged only after every unsealed segment is synced,
    /// whatever the durability is when it is written (it may have changed).
    sync_required: bool,
}

impl State {
    /// The state of a partition just opened: nothing pending, nothing due.
    #[allow(clippy::too_many_arguments)]
    fn opened(
        keys: KeyIndex,
        producers: HashMap<ProducerId, ProducerSnapshot>,
        dedup: DedupIndex,
        active: Arc<Segment>,
        next_offset: Offset,
        last_timestamp_ms: i64,
        checkpoint_offset: Offset,
    ) -> State {
        let write_end = active.published_size();
        let last_index_position = active.last_index_position();
        State {
            keys,
            producers,
            dedup,
            open: Pending::default(),
            flushing: None,
            next_offset,
            last_timestamp_ms,
            active,
            write_end,
            last_index_position,
            unsynced: false,
            last_sync: std::time::Instant::now(),
            groups_taken: 0,
            groups_finished: 0,
            worker_waits_for_flush: false,
            worker_sleeping: false,
            room_waiters: 0,
            seal_due: false,
            dedup_due: false,
            last_group_size: 0,
            last_flush_duration: Duration::ZERO,
            checkpoint_offset,
            bytes_since_checkpoint: 0,
            last_housekeeping: std::time::Instant::now(),
            housekeeping_offset: next_offset,
            housekeeping_backoff: 0,
            #[cfg(test)]
            housekeeping_rounds: Vec::new(),
        }
    }

    /// A housekeeping round starts now: an idle partition's next one comes
    /// twice as late as this one did (up to the cap), a busy one's after the
    /// base interval.
    fn housekeeping_started(&mut self) {
        self.last_housekeeping = std::time::Instant::now();
        #[cfg(test)]
        if self.housekeeping_rounds.len() < 16 {
            self.housekeeping_rounds.push(self.last_housekeeping);
        }
        self.housekeeping_backoff = if self.next_offset == self.housekeeping_offset {
            (self.housekeeping_backoff + 1).min(crate::config::HOUSEKEEPING_BACKOFF_SHIFT_MAX)
        } else {
            0
        };
        self.housekeeping_offset = self.next_offset;
    }

    /// Time between housekeeping rounds: `base` after appends, doubled for
    /// every round in a row that found none (the partition is idle).
    fn housekeeping_interval(&self, base: Duration) -> Duration {
        if self.next_offset == self.housekeeping_offset {
            base.saturating_mul(1 << self.housekeeping_backoff)
        } else {
            base
        }
    }
}

impl Partition {
    /// A partition over recovered segments and state; its worker is not started.
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        id: PartitionId,
        dir: PathBuf,
        context: PartitionContext,
        segments: Vec<Arc<Segment>>,
        state: State,
        earliest: Offset,
        recovery: RecoveryReport,
        quarantine: Option<Quarantine>,
    ) -> Arc<Partition> {
        Arc::new_cyclic(|me| Partition {
            id,
            dir,
            context,
            segments: RwLock::new(segments),
            high_watermark: AtomicU64::new(state.next_offset.0),
            earliest: AtomicU64::new(earliest.0),
            state: Mutex::new(state),
            work: Condvar::new(),
            room: Condvar::new(),
            #[cfg(test)]
            housekeeping_round: Condvar::new(),
            tail: Notifier::default(),
            poisoned: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            sealing: Mutex::new(()),
            me: me.clone(),
            schedule: pool::Schedule::default(),
            worker_started: AtomicBool::new(false),
            worker_stopped: Mutex::new(false),
            stopped: Condvar::new(),
            recovery,
            quarantine,
        })
    }
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.completions.is_empty() && self.writes.is_empty()
    }
}

pub(crate) struct PendingKey {
    hash: u64,
    state: KeyState,
    owns_hash: bool,
}

/// An append of a pending group, kept until publication for comparing retries.
pub(crate) struct PendingCall {
    /// The append's acknowledgement (not a duplicate).
    ack: AppendAck,
    key: Vec<u8>,
    events: Vec<crate::event::Event>,
}

impl Pending {
    /// The pending append holding `offset`, and the event's index within it.
    fn call_at(&self, offset: Offset) -> Option<(&PendingCall, usize)> {
        let after = self.calls.partition_point(|call| call.ack.first_offset <= offset);
        let call = self.calls.get(after.checked_sub(1)?)?;
        let index = usize::try_from(offset.0 - call.ack.first_offset.0).ok()?;
        (index < call.events.len()).then_some((call, index))
    }
}

/// Bytes to write into one segment, and what to publish there afterwards.
pub(crate) struct SegmentWrite {
    segment: Arc<Segment>,
    position: u64,
    bytes: Vec<u8>,
    end_offset: Offset,
    timestamp_max: i64,
    index: Vec<IndexEntry>,
    /// Fingerprints to insert into the dedup index once published.
    fingerprints: Vec<(u64, Offset, i64)>,
}

impl Partition {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn high_watermark(&self) -> Offset {
        Offset(self.high_watermark.load(Ordering::Acquire))
    }

    pub(crate) fn earliest(&self) -> Offset {
        Offset(self.earliest.load(Ordering::Acquire))
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    pub(crate) fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The quarantine the partition was opened under, if any.
    pub(crate) fn quarantine(&self) -> Option<&Quarantine> {
        self.quarantine.as_ref()
    }

    /// `Err(Quarantined)` when the partition is quarantined.
    fn refuse_if_quarantined(&self) -> Result<()> {
        match &self.quarantine {
            Some(quarantine) => Err(quarantine.error(self.id)),
            None => Ok(()),
        }
    }

    fn segments(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Segment>>> {
        self.segments
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn info(&self) -> PartitionInfo {
        // The state lock is never taken while holding the segments lock.
        let (keys_count, dedup_memory_bytes, dedup_runs_count) = {
            let state = self.lock();
            (
                state.keys.len(),
                state.dedup.memory_bytes(),
                state.dedup.runs_count(),
            )
        };
        let segments = self.segments();
        PartitionInfo {
            partition: self.id,
            earliest: self.earliest(),
            high_watermark: self.high_watermark(),
            size_bytes: segments.iter().map(|segment| segment.published_size()).sum(),
            segments_count: segments.len(),
            keys_count,
            dedup_memory_bytes,
            dedup_runs_count,
            quarantine: self.quarantine.clone(),
        }
    }

    /// Bytes of RAM held by per-key state.
    pub(crate) fn keys_memory_bytes(&self) -> usize {
        self.lock().keys.memory_bytes()
    }

    /// Blocks until the high watermark passes `after` or `timeout` elapses;
    /// returns the high watermark.
    pub(crate) fn wait_past(&self, after: Offset, timeout: Duration) -> Offset {
        self.tail.wait_until(timeout, || {
            self.high_watermark() > after || self.closing.load(Ordering::Acquire)
        });
        self.high_watermark()
    }

    /// Whether the partition is shutting down.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Starts the worker: its first step runs on the pool.
    fn start_worker(self: &Arc<Self>) -> Result<()> {
        self.worker_started.store(true, Ordering::Release);
        self.wake();
        Ok(())
    }

    /// Wakes the worker: inside a step waiting for appenders to join a group
    /// (`gather`), through the condition variable; otherwise through the pool.
    fn wake_worker(&self, state: &State) {
        if state.worker_sleeping {
            self.work.notify_one();
        } else {
            self.wake();
        }
    }

    /// The worker's last step ended: `close` may go on.
    fn worker_stopped(&self) {
        *self
            .worker_stopped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
        self.stopped.notify_all();
    }

    /// Delivers acknowledgements: a large group on the pool's completer
    /// thread, so that the worker can start the next group commit.
    fn complete(&self, completions: Vec<(Completion, Result<AppendAck>)>) {
        // Waking a few appenders is cheaper than a hop to another thread.
        if completions.len() <= COMPLETER_GROUP_SIZE_MIN {
            append::run(completions);
            return;
        }
        if let Some(unsent) = self.context.pool.complete(completions) {
            append::run(unsent);
        }
    }

    /// Flushes what is pending, writes a checkpoint, persists the dedup index and
    /// stops the worker. Appends after this fail with `Closed`.
    ///
    /// Never called on a pool thread (it waits for the worker's last step).
    pub(crate) fn close(&self) -> Result<()> {
        {
            let state = self.lock();
            self.closing.store(true, Ordering::Release);
            self.work.notify_all();
            self.room.notify_all();
            drop(state);
        }
        if self.worker_started.load(Ordering::Acquire) {
            self.wake();
            let mut stopped = self
                .worker_stopped
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            while !*stopped {
                stopped = self
                    .stopped
                    .wait(stopped)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
        // The worker handed over its last acknowledgements; let them be delivered.
        self.context.pool.drain_completions();
        self.tail.notify();
        if self.is_poisoned() || self.quarantine.is_some() {
            return Ok(());
        }
        self.sync_unsynced()?;
        self.write_checkpoint()?;
        self.run_dedup_jobs(self.context.clock.now_ms(), true)
    }

    /// One step of the worker, run by a pool thread: jobs, group commits,
    /// housekeeping and timers, until it would wait (or has made
    /// `STEP_FLUSHES_MAX` group commits and lets other partitions run).
    pub(crate) fn work_step(&self) -> pool::Step {
        let mut state = self.lock();
        state.worker_waits_for_flush = false;
        let mut flushes = 0;
        loop {
            let closing = self.closing.load(Ordering::Acquire);
            if (state.seal_due || state.dedup_due) && !self.is_poisoned() {
                // Jobs that publication made due, done without the lock: sealing
                // a complete segment, writing a frozen dedup memtable.
                let seal = std::mem::take(&mut state.seal_due);
                let dedup = std::mem::take(&mut state.dedup_due);
                drop(state);
                if seal {
                    self.seal_full_segments();
                }
                if dedup && let Err(error) = self.run_dedup_jobs(self.context.clock.now_ms(), false) {
                    self.dedup_failed(&error);
                }
                state = self.lock();
                continue;
            }
            if !state.open.is_empty() {
                if state.flushing.is_some() {
                    // An inline writer (`Interval`, `None`) holds the flushing
                    // group; it wakes the worker when it has published.
                    state.worker_waits_for_flush = true;
                    return pool::Step::Wait(None);
                }
                if self.is_poisoned() {
                    // Poisoned outside a flush (a failed seal, checkpoint or sync):
                    // appends that joined the open group before it must still hear.
                    let error = Error::Poisoned { partition: self.id };
                    let completions = self.fail_pending(&mut state, error, Vec::new());
                    drop(state);
                    append::run(completions);
                    state = self.lock();
                } else {
                    let high_watermark = self.high_watermark();
                    let finished = state.groups_finished;
                    state = self.gather(state);
                    if state.flushing.is_some() || state.open.is_empty() {
                        continue;
                    }
                    state = self.flush_group(state);
                    // Invariant: one group finished, and the high watermark never
                    // moves backwards.
                    assert!(
                        state.groups_finished > finished,
                        "group commit finished no group: {} -> {}",
                        finished,
                        state.groups_finished
                    );
                    assert!(
                        self.high_watermark() >= high_watermark,
                        "high watermark moved backwards: {high_watermark} -> {}",
                        self.high_watermark()
                    );
                    flushes += 1;
                    if flushes >= STEP_FLUSHES_MAX && !state.open.is_empty() {
                        return pool::Step::Yield;
                    }
                }
                continue;
            }
            if closing {
                if state.flushing.is_some() {
                    state.worker_waits_for_flush = true;
                    return pool::Step::Wait(None);
                }
                drop(state);
                // The last complete segments are sealed before the worker stops.
                if !self.is_poisoned() {
                    self.seal_full_segments();
                }
                return pool::Step::Stopped;
            }
            let housekeeping_interval = state.housekeeping_interval(self.context.housekeeping_interval);
            if state.last_housekeeping.elapsed() >= housekeeping_interval
                || state.bytes_since_checkpoint >= self.context.options().checkpoint_interval_bytes
            {
                state.housekeeping_started();
                #[cfg(test)]
                self.housekeeping_round.notify_all();
                drop(state);
                // Housekeeping failures are reported by the next operation that
                // depends on them (a poisoned partition, an I/O error on append).
                let _ = self.housekeeping();
                state = self.lock();
                continue;
            }
            let wait = match self.context.options().durability {
                crate::config::Durability::Interval { interval_ms } if state.unsynced => {
                    let interval = Duration::from_millis(interval_ms);
                    let elapsed = state.last_sync.elapsed();
                    if elapsed >= interval {
                        drop(state);
                        let _ = self.sync_unsynced();
                        state = self.lock();
                        continue;
                    }
                    interval - elapsed
                }
                _ => housekeeping_interval.saturating_sub(state.last_housekeeping.elapsed()),
            };
            return pool::Step::Wait(Some(std::time::Instant::now() + wait));
        }
    }

    /// Runs dedup upkeep as jobs: each is planned under the lock, does its file
    /// work (run writes, merges, deletions) without it, and is installed under
    /// it. `flush_only`: write out everything in memory (at close).
    fn run_dedup_jobs(&self, now_ms: i64, flush_only: bool) -> Result<()> {
        // Bounded: each job removes a frozen memtable or at least one run.
        for _ in 0..limits::DEDUP_RUNS_COUNT_MAX + 8 {
            let job = self.lock().dedup.next_job(now_ms, flush_only)?;
            let Some(job) = job else {
                return Ok(());
            };
            let done = job.run();
            let result = self.lock().dedup.finish_job(done);
            // Appends may wait for frozen memtables to be written out.
            self.room.notify_all();
            result?;
        }
        Ok(())
    }

    /// A dedup job failed: its work stays queued for the next round. When
    /// appends are already held back for it, the partition cannot go on
    /// without losing ids and is poisoned.
    fn dedup_failed(&self, error: &Error) {
        let backlogged = self.lock().dedup.is_backlogged();
        if backlogged {
            self.poison(error);
        } else {
            tracing::warn!(dir = %self.dir.display(), %error, "dedup upkeep failed; retried at the next housekeeping");
        }
    }

    /// The worker, inside a step, waits on `work` for at most `timeout`,
    /// marked as asleep meanwhile: appenders notify the condition variable
    /// only then (a wake-up is a system call), and the pool otherwise.
    fn wait_for_work<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        state.worker_sleeping = true;
        let mut state = self
            .work
            .wait_timeout(state, timeout)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
        state.worker_sleeping = false;
        state
    }

    /// Group commit: before flushing a group smaller than the previous one, waits
    /// a moment for the appenders the previous group woke to come back, so that
    /// one fdatasync carries them all. The wait is at most half the previous
    /// flush's duration (bounded by `GROUP_COMMIT_WAIT_MAX`), and none at all
    /// for a lone appender (its group had one append).
    fn gather<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        if self.context.options().durability != crate::config::Durability::Always {
            return state;
        }
        let wait = (state.last_flush_duration / 2).min(GROUP_COMMIT_WAIT_MAX);
        let deadline = std::time::Instant::now() + wait;
        while state.open.completions.len() < state.last_group_size
            && state.open.bytes < limits::PENDING_SIZE_BYTES_MAX / 2
            && !self.is_closing()
        {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            state = self.wait_for_work(state, deadline - now);
        }
        state
    }

    /// fdatasyncs the segments written without sync (the active one, and any
    /// complete one whose seal is still to come), without the lock.
    /// A failure poisons the partition.
    fn sync_unsynced(&self) -> Result<()> {
        {
            let mut state = self.lock();
            if !state.unsynced {
                return Ok(());
            }
            state.unsynced = false;
            state.last_sync = std::time::Instant::now();
        }
        self.sync_unsealed(&self.unsealed_segments())
    }

    /// The segments not sealed yet that have a file, oldest first.
    fn unsealed_segments(&self) -> Vec<Arc<Segment>> {
        let segments = self.segments();
        let first = segments.partition_point(|segment| segment.is_sealed());
        segments[first..]
            .iter()
            .filter(|segment| segment.is_created())
            .cloned()
            .collect()
    }

    /// fdatasyncs `segments`; a failure poisons the partition.
    fn sync_unsealed(&self, segments: &[Arc<Segment>]) -> Result<()> {
        for segment in segments {
            self.sync_data(segment).map_err(|error| {
                let error = Error::io("sync segment", &segment.path, error);
                self.poison(&error);
                error
            })?;
        }
        Ok(())
    }

    /// fdatasyncs a segment file and records how long it took.
    fn sync_data(&self, segment: &Segment) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        let result = segment.file().sync_data();
        self.context.metrics.fsync(started.elapsed());
        result
    }

    /// Retention, checkpoints, producer expiry, dedup upkeep.
    fn housekeeping(&self) -> Result<()> {
        let now = self.context.clock.now_ms();
        {
            let mut state = self.lock();
            let idle_max = self.context.options().producer_idle_ms_max as i64;
            state
                .producers
                .retain(|_, producer| now.saturating_sub(producer.last_timestamp_ms) < idle_max);
        }
        if let Err(error) = self.run_dedup_jobs(now, false) {
            self.dedup_failed(&error);
            return Err(error);
        }
        let due = self.lock().bytes_since_checkpoint >= self.context.options().checkpoint_interval_bytes;
        if due {
            self.write_checkpoint()?;
        }
        self.enforce_retention()?;
        Ok(())
    }

    /// Takes up options the topic has just changed: installs them in the
    /// partition's own cell, then the
    /// dedup index's window is changed under the state lock, and the worker is
    /// woken to re-plan its wait (a sync timer that starts or stops). Every
    /// other option is read where it is used, so it applies from the next
    /// append (payload limit, durability, segment size: the next roll) or the
    /// next housekeeping round (retention).
    /// Bytes written without a sync are synced now: appends acknowledged under
    /// `Interval` were promised a sync within the interval, which a switch to
    /// another durability must not take back (a failure poisons the partition,
    /// as the worker's timer does).
    pub(crate) fn options_changed(&self, options: &TopicOptions) {
        self.context.options.set(options.clone());
        {
            let mut state = self.lock();
            state.dedup.set_window_ms(options.dedup_window_ms);
            // A new retention applies within one housekeeping interval, even on
            // an idle partition.
            state.housekeeping_backoff = 0;
            self.wake_worker(&state);
        }
        if !self.is_poisoned() {
            let _ = self.sync_unsynced();
        }
    }

    fn poison(&self, error: &Error) {
        if !self.poisoned.swap(true, Ordering::AcqRel) {
            tracing::error!(dir = %self.dir.display(), %error, "partition poisoned: writes fail until it is reopened");
        }
        self.room.notify_all();
        // Appends waiting in the open group hear of it from the worker.
        self.wake();
    }
}

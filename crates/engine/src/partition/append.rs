//! The write path: the partition's view for the append rules (`crate::rules`),
//! encoding into the open group, the group commit, publication and rollback.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use super::{Completion, Partition, Pending, PendingCall, PendingKey, SegmentWrite, State, coalesce};
use crate::config::{Durability, TopicOptions};
use crate::error::{Error, Result};
use crate::event::{AppendAck, AppendRequest, Epoch, Offset, PartitionId, ProducerId, Sequence};
use crate::format::checkpoint::ProducerSnapshot;
use crate::format::index::IndexEntry;
use crate::format::record::{self, FLAG_CALL_END, NO_PREVIOUS, RecordView};
use crate::keys::KeyState;
use crate::limits;
use crate::rules::{self, Decision, Fingerprint, PartitionView, Prepared, StoredEvent, remember_append};
use crate::segment::Segment;

/// A group taken for writing: its writes, its acknowledgements, and whether
/// it must be synced before they are delivered.
type TakenGroup = (Vec<SegmentWrite>, Vec<(Completion, Result<AppendAck>)>, bool);

/// Most groups an appender writes in a row under `Interval` and `None` (its own,
/// then those of appends that arrived meanwhile) before the worker takes over.
const INLINE_GROUPS_MAX: u32 = 8;

/// The partition as the append rules read it: its locked state as the writer
/// sees it, open overlay, then flushing overlay, then published state.
struct WriterView<'a> {
    partition: &'a Partition,
    state: &'a mut State,
    /// The options of this append, read once by `submit`.
    options: &'a TopicOptions,
}

impl State {
    /// Whether an append must wait for room: the open group is full, or the
    /// dedup index has frozen memtables to write out first.
    fn needs_room(&self) -> bool {
        self.open.completions.len() >= limits::PENDING_APPENDS_COUNT_MAX
            || self.open.bytes >= limits::PENDING_SIZE_BYTES_MAX
            || self.dedup.is_backlogged()
    }

    /// A producer's state as the writer sees it.
    fn writer_producer(&self, producer: ProducerId) -> Option<&ProducerSnapshot> {
        self.open
            .producers
            .get(&producer)
            .or_else(|| {
                self.flushing
                    .as_ref()
                    .and_then(|group| group.producers.get(&producer))
            })
            .or_else(|| self.producers.get(&producer))
    }
}

impl PartitionView for WriterView<'_> {
    fn partition(&self) -> PartitionId {
        self.partition.id
    }

    fn dedup_window_ms(&self) -> u64 {
        self.options.dedup_window_ms
    }

    fn current_epoch(&self, producer: ProducerId) -> Option<Epoch> {
        (self.partition.context.epoch_of)(producer)
    }

    fn producer(&self, producer: ProducerId) -> Option<&ProducerSnapshot> {
        self.state.writer_producer(producer)
    }

    /// Open overlay, flushing overlay, then published state confirmed against
    /// the log.
    fn key_state(&mut self, key: &[u8], hash: u64) -> Result<(Option<KeyState>, bool)> {
        let state = &mut *self.state;
        for group in [Some(&state.open), state.flushing.as_ref()].into_iter().flatten() {
            if let Some(pending) = group.keys.get(key) {
                return Ok((Some(pending.state), pending.owns_hash));
            }
        }
        let partition = self.partition;
        let found = state
            .keys
            .get(key, hash, |offset| partition.is_key_at(key, offset))?;
        let owns_hash = match found {
            Some(_) => !state.keys.is_collided(key),
            None => !state.keys.contains_hash(hash),
        };
        Ok((found, owns_hash))
    }

    /// The open group, the flushing group, then the dedup index.
    fn id_candidates(
        &self,
        fingerprint: Fingerprint,
        now_ms: i64,
        candidates: &mut Vec<Offset>,
    ) -> Result<usize> {
        let state = &*self.state;
        let first = candidates.len();
        for group in [Some(&state.open), state.flushing.as_ref()].into_iter().flatten() {
            if let Some(offsets) = group.ids.get(&fingerprint.keyed) {
                candidates.extend(offsets.iter().rev());
            }
        }
        let pending = candidates.len() - first;
        state.dedup.candidates(fingerprint, now_ms, candidates)?;
        Ok(pending)
    }

    /// The open group, the flushing group, else the published log.
    fn with_event_at<T>(&self, offset: Offset, f: impl FnOnce(&StoredEvent<'_>) -> T) -> Result<Option<T>> {
        let state = &*self.state;
        for group in [Some(&state.open), state.flushing.as_ref()].into_iter().flatten() {
            if let Some((call, index)) = group.call_at(offset) {
                let event = &call.events[index];
                let stored = StoredEvent {
                    key: &call.key,
                    sequence: call.ack.first_sequence + index as u64,
                    timestamp_ms: call.ack.timestamp_ms,
                    published: false,
                    event_type: &event.event_type,
                    payload: &event.payload,
                    headers: event
                        .headers
                        .iter()
                        .map(|(name, value)| (name.as_str(), value.as_slice()))
                        .collect(),
                    idempotency_id: event.idempotency_id.as_deref(),
                };
                return Ok(Some(f(&stored)));
            }
        }
        if offset >= self.partition.high_watermark() {
            return Ok(None);
        }
        let result = self.partition.with_record(offset, |view| {
            let stored = StoredEvent {
                key: view.key,
                sequence: view.sequence,
                timestamp_ms: view.timestamp_ms,
                published: true,
                event_type: view.event_type,
                payload: view.payload,
                // Decoding checked the header block, so every header parses.
                headers: record::headers(view.headers).filter_map(Result::ok).collect(),
                idempotency_id: view.idempotency_id,
            };
            f(&stored)
        });
        match result {
            Ok(found) => Ok(Some(found)),
            Err(Error::OffsetOutOfRange { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn high_watermark(&self) -> Offset {
        self.partition.high_watermark()
    }
}

impl Partition {
    /// Appends, calling `completion` once with the outcome: at once for a rejected
    /// or already-published duplicate append, else when the group is acknowledged.
    pub(crate) fn submit(self: &Arc<Self>, request: AppendRequest, completion: Completion) {
        if let Err(error) = self.refuse_if_quarantined() {
            return completion(Err(error));
        }
        // One reading of the options for the whole append: a change made
        // meanwhile applies from the next one.
        let options = self.context.options();
        let prepared = match rules::prepare(request, options.payload_size_max) {
            Ok(prepared) => prepared,
            Err(error) => return completion(Err(error)),
        };
        let mut state = self.lock();
        if state.needs_room() {
            // What fills the open group may be this thread's own held appends:
            // they are written (or handed to the worker) before it waits (a
            // no-op when this thread holds nothing here).
            drop(state);
            coalesce::release_one(self);
            state = self.lock();
        }
        // Back-pressure: wait for the worker to take the open group, and for its
        // dedup jobs to write out frozen memtables.
        while state.needs_room() && !self.is_poisoned() && !self.is_closing() {
            state.room_waiters += 1;
            state = self
                .room
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state.room_waiters -= 1;
        }
        if self.is_poisoned() {
            drop(state);
            return completion(Err(Error::Poisoned { partition: self.id }));
        }
        if self.is_closing() {
            drop(state);
            return completion(Err(Error::Closed));
        }
        let now = self.context.clock.now_ms().max(state.last_timestamp_ms);
        let decision = rules::decide(
            &mut WriterView {
                partition: self,
                state: &mut state,
                options: &options,
            },
            &prepared,
            now,
        );
        match decision {
            Err(error) => {
                drop(state);
                completion(Err(error));
            }
            Ok(Decision::Duplicate { ack, published: true }) => {
                drop(state);
                completion(Ok(ack));
            }
            Ok(Decision::Duplicate {
                ack,
                published: false,
            }) => {
                state.open.completions.push((completion, Ok(ack)));
                self.after_accept(state, options.durability);
            }
            Ok(Decision::Write { key, owns_hash }) => {
                let failed = self
                    .encode(&mut state, &options, prepared, key, owns_hash, completion)
                    .err();
                if failed.is_none() && options.durability == Durability::Always {
                    state.open.sync_required = true;
                }
                self.after_accept(state, options.durability);
                // Encoding fails only when rolling a segment fails; the append is
                // answered outside the lock, like every other.
                if let Some((completion, error)) = failed {
                    completion(Err(error));
                }
            }
        }
    }

    /// After an append joined the open group: inside a [`coalesce::coalesce_writes`]
    /// scope, leave it there until the scope ends; otherwise as `after_encode`.
    fn after_accept(self: &Arc<Self>, state: MutexGuard<'_, State>, durability: Durability) {
        if coalesce::hold(self) {
            return;
        }
        self.after_encode(state, durability);
    }

    /// A scope that held this partition's appends back has ended: what they
    /// left in the open group is written or handed to the worker now, under
    /// the durability in force (an append accepted under `Always` is synced
    /// whichever: its group carries `sync_required`).
    pub(super) fn release_held(&self) {
        let state = self.lock();
        if state.open.is_empty() {
            return;
        }
        let durability = self.context.options().durability;
        self.after_encode(state, durability);
    }

    /// After an append joined the open group: hand it to the worker, or write and
    /// publish it inline. The inline write happens without the lock, like the
    /// worker's: the group is the flushing group meanwhile, and appends that
    /// arrive go to the next group, which the worker takes.
    fn after_encode<'a>(&'a self, mut state: MutexGuard<'a, State>, durability: Durability) {
        match durability {
            Durability::Always => {
                self.wake_worker(&state);
            }
            Durability::Interval { .. } | Durability::None => {
                if state.flushing.is_some() {
                    // A group is being written (inline by an appender, or by the
                    // worker): that writer takes this one once it has published,
                    // with no hand-off to another thread.
                    return;
                }
                // Bounded: this thread writes at most INLINE_GROUPS_MAX groups in
                // a row (the appends that arrived while it wrote), then hands the
                // rest to the worker, so an appender is never held for long.
                for round in 1..=INLINE_GROUPS_MAX {
                    let (writes, completions, sync) = self.take_group(&mut state);
                    // Waking is a system call: only when an appender waits for room.
                    let waiters = state.room_waiters > 0;
                    drop(state);
                    if waiters {
                        self.room.notify_all();
                    }
                    let outcome = self.write_taken(&writes, sync);
                    state = self.lock();
                    let left_unsynced = outcome.is_ok() && !writes.is_empty() && !sync;
                    let became_unsynced = left_unsynced && !state.unsynced;
                    state.unsynced |= left_unsynced;
                    let completions = self.finish_group(&mut state, outcome, writes, completions);
                    let start_timer = became_unsynced && matches!(durability, Durability::Interval { .. });
                    let more = !state.open.is_empty() && round < INLINE_GROUPS_MAX && !self.is_poisoned();
                    // The worker may be waiting for this group (to take the next
                    // one), for the sync timer, for jobs that publication made
                    // due, or for the appends this thread leaves to it.
                    if start_timer
                        || state.worker_waits_for_flush
                        || state.seal_due
                        || state.dedup_due
                        || (!state.open.is_empty() && !more)
                    {
                        self.wake_worker(&state);
                    }
                    drop(state);
                    self.tail.notify();
                    run(completions);
                    if !more {
                        return;
                    }
                    state = self.lock();
                    if state.flushing.is_some() || state.open.is_empty() {
                        // Another appender (or the worker) took the group meanwhile.
                        return;
                    }
                }
            }
        }
    }

    /// Encodes an accepted append into the open group. On failure (a roll that
    /// could not create its segment) the completion is handed back unanswered.
    fn encode(
        &self,
        state: &mut State,
        options: &TopicOptions,
        prepared: Prepared,
        key: Option<KeyState>,
        owns_hash: bool,
        completion: Completion,
    ) -> std::result::Result<(), (Completion, Error)> {
        if let Err(error) = self.roll_if_needed(state, options, prepared.size()) {
            return Err((completion, error));
        }
        let request = prepared.request();
        let now = self.context.clock.now_ms().max(state.last_timestamp_ms);
        state.last_timestamp_ms = now;
        let first_offset = state.next_offset;
        let first_sequence = key.map_or(Sequence(0), |key| key.last_sequence.next());
        let count = request.events.len() as u64;
        let last_sequence = first_sequence + (count - 1);
        let ack = AppendAck {
            partition: self.id,
            first_offset,
            first_sequence,
            last_sequence,
            timestamp_ms: now,
            duplicate: false,
        };
        let active = Arc::clone(&state.active);
        let interval = options.index_interval_bytes as u64;
        let mut write_end = state.write_end;
        let mut last_index_position = state.last_index_position;
        let open = &mut state.open;
        let write = match open.writes.last_mut() {
            Some(write) if Arc::ptr_eq(&write.segment, &active) => write,
            _ => {
                open.writes.push(SegmentWrite {
                    segment: Arc::clone(&active),
                    position: write_end,
                    bytes: Vec::with_capacity(prepared.size() as usize),
                    end_offset: first_offset,
                    timestamp_max: now,
                    index: Vec::new(),
                    fingerprints: Vec::new(),
                });
                open.writes.last_mut().expect("just pushed")
            }
        };
        let mut previous = key.map_or(NO_PREVIOUS, |key| key.last_offset.0);
        for (index, (event, fingerprint)) in request.events.iter().zip(prepared.fingerprints()).enumerate() {
            let offset = Offset(first_offset.0 + index as u64);
            if last_index_position.is_none_or(|last| write_end - last >= interval) {
                write.index.push(IndexEntry {
                    offset_delta: u32::try_from(offset.0 - active.base_offset.0)
                        .expect("segments roll before u32 offsets overflow"),
                    position: u32::try_from(write_end).expect("segments roll before u32 positions overflow"),
                    timestamp_ms: now,
                });
                last_index_position = Some(write_end);
            }
            let view = RecordView {
                offset,
                timestamp_ms: now,
                sequence: first_sequence + index as u64,
                key_previous_offset: previous,
                producer: request.producer,
                flags: if index as u64 == count - 1 {
                    FLAG_CALL_END
                } else {
                    0
                },
                key: &request.key,
                event_type: &event.event_type,
                idempotency_id: event.idempotency_id.as_deref(),
                headers: &[],
                payload: &event.payload,
            };
            let before = write.bytes.len();
            record::encode(&mut write.bytes, &view, &event.headers);
            write_end += (write.bytes.len() - before) as u64;
            previous = offset.0;
            if let Some(fingerprint) = fingerprint {
                write.fingerprints.push((fingerprint.keyed, offset, now));
                open.ids.entry(fingerprint.keyed).or_default().push(offset);
            }
        }
        let end_offset = Offset(first_offset.0 + count);
        write.end_offset = end_offset;
        write.timestamp_max = now;
        debug_assert!(
            open.end_offset.is_none_or(|end| end == first_offset),
            "offsets of a group are contiguous"
        );
        open.first_offset.get_or_insert(first_offset);
        open.end_offset = Some(end_offset);
        open.records_count += count;
        open.bytes += prepared.size();
        open.keys.insert(
            request.key.clone(),
            PendingKey {
                hash: prepared.key_hash(),
                state: KeyState {
                    last_sequence,
                    last_offset: Offset(end_offset.0 - 1),
                },
                owns_hash,
            },
        );
        if let Some(stamp) = request.producer {
            let mut producer = state
                .writer_producer(stamp.producer)
                .filter(|producer| producer.epoch == stamp.epoch)
                .cloned()
                .unwrap_or(ProducerSnapshot {
                    id: stamp.producer,
                    epoch: stamp.epoch,
                    last_sequence: Sequence(0),
                    last_timestamp_ms: now,
                    recent: Vec::new(),
                });
            remember_append(&mut producer, stamp, &ack);
            state.open.producers.insert(stamp.producer, producer);
        }
        state.next_offset = end_offset;
        state.write_end = write_end;
        state.last_index_position = last_index_position;
        // Retries are compared with the events themselves until they are published
        // and can be read back from the log.
        let compared = request.producer.is_some() || prepared.fingerprints().iter().any(Option::is_some);
        if compared {
            let request = prepared.into_request();
            state.open.calls.push(PendingCall {
                ack,
                key: request.key,
                events: request.events,
            });
        }
        state.open.completions.push((completion, Ok(ack)));
        Ok(())
    }

    /// Starts a new segment when the append would not fit the active one, or the
    /// active one is too old. The segment is only planned; see
    /// [`Partition::write_group`].
    fn roll_if_needed(&self, state: &mut State, options: &TopicOptions, size: u64) -> Result<()> {
        let active = &state.active;
        let has_records = state.next_offset > active.base_offset;
        if !has_records {
            return Ok(());
        }
        let full = state.write_end + size > options.segment_size_bytes_max;
        let old = options
            .segment_age_ms_max
            .is_some_and(|age| self.context.clock.now_ms().saturating_sub(active.created_ms) >= age as i64);
        let too_many = state.next_offset.0 - active.base_offset.0 + limits::APPEND_EVENTS_COUNT_MAX as u64
            >= limits::SEGMENT_RECORDS_COUNT_MAX;
        if !(full || old || too_many) {
            return Ok(());
        }
        // No I/O here: the writer creates the file (header and directory entry
        // synced) before it writes the first records into it.
        let segment = Arc::new(Segment::planned(
            &self.dir,
            state.next_offset,
            self.context.clock.now_ms(),
        ));
        self.segments
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Arc::clone(&segment));
        state.write_end = crate::format::segment::SEGMENT_HEADER_LEN as u64;
        state.last_index_position = None;
        state.active = segment;
        // The previous segment is complete once its records are published.
        state.seal_due = true;
        self.context.metrics.segment_rolled();
        Ok(())
    }

    /// Takes the open group as the flushing group, numbered: groups are written
    /// and published one at a time, in this order.
    /// Also says whether the group must be synced before it is acknowledged
    /// (`Pending::sync_required`); such a group's sync covers every unsealed
    /// segment, so nothing written before it stays unsynced.
    fn take_group(&self, state: &mut State) -> TakenGroup {
        assert!(
            state.flushing.is_none(),
            "a group is taken while another is being written"
        );
        let mut group = std::mem::take(&mut state.open);
        state.groups_taken += 1;
        group.number = state.groups_taken;
        let writes = std::mem::take(&mut group.writes);
        let completions = std::mem::take(&mut group.completions);
        let sync = group.sync_required;
        if sync {
            state.unsynced = false;
        }
        state.flushing = Some(group);
        (writes, completions, sync)
    }

    /// Writes a taken group and, when it must be durable, fdatasyncs every
    /// unsealed segment: the group's own, and any written before without a
    /// sync (the durability was `Interval` or `None` until a change). Without
    /// the state lock.
    fn write_taken(&self, writes: &[SegmentWrite], sync: bool) -> Result<()> {
        self.write_group(writes)?;
        if sync && !writes.is_empty() {
            self.sync_unsealed(&self.unsealed_segments())?;
        }
        Ok(())
    }

    /// Publishes the flushing group after its write, or fails it; returns the
    /// acknowledgements to deliver.
    fn finish_group(
        &self,
        state: &mut State,
        outcome: Result<()>,
        writes: Vec<SegmentWrite>,
        completions: Vec<(Completion, Result<AppendAck>)>,
    ) -> Vec<(Completion, Result<AppendAck>)> {
        let group = state.flushing.take().expect("the writer owns the flushing group");
        // Invariant: groups finish in the order they were taken, each once.
        assert_eq!(
            group.number,
            state.groups_finished + 1,
            "group {} finishes after group {}",
            group.number,
            state.groups_finished
        );
        assert_eq!(
            group.number, state.groups_taken,
            "only the newest group is in flight"
        );
        state.groups_finished = group.number;
        match outcome {
            Ok(()) => {
                self.publish(state, group, writes);
                completions
            }
            Err(error) => self.fail_pending(state, error, completions),
        }
    }

    /// Worker side of group commit: takes the open group, writes and syncs it
    /// without the lock, then publishes or rolls back.
    pub(super) fn flush_group<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        assert!(
            state.flushing.is_none(),
            "the worker flushes only when no group is being written"
        );
        let (writes, completions, sync) = self.take_group(&mut state);
        state.last_group_size = completions.len();
        let waiters = state.room_waiters > 0;
        drop(state);
        if waiters {
            self.room.notify_all();
        }
        let started = std::time::Instant::now();
        let outcome = self.write_taken(&writes, sync);
        let elapsed = started.elapsed();
        let mut state = self.lock();
        state.last_flush_duration = elapsed;
        if outcome.is_ok() && !writes.is_empty() && !sync {
            state.unsynced = true;
        }
        // Groups publish in order: the events of this one start at the high watermark.
        let events = state
            .flushing
            .as_ref()
            .and_then(|group| group.end_offset)
            .map_or(0, |end| end.0.saturating_sub(self.high_watermark().0));
        let published = outcome.is_ok();
        let completions = self.finish_group(&mut state, outcome, writes, completions);
        drop(state);
        if published {
            self.context.metrics.group_commit(completions.len(), events);
        }
        self.tail.notify();
        self.complete(completions);
        self.lock()
    }

    /// Writes a group's bytes with pwrite, creating each segment a roll planned
    /// first (header fdatasync and directory fsync before any record goes in).
    /// Called without the state lock, by the one thread that holds the flushing
    /// group.
    pub(super) fn write_group(&self, writes: &[SegmentWrite]) -> Result<()> {
        for write in writes {
            if !write.segment.is_created() {
                let options = self.context.options();
                write.segment.materialize(
                    &*self.context.storage,
                    &self.dir,
                    self.id,
                    options.preallocate.then_some(options.segment_size_bytes_max),
                )?;
            }
            debug_assert!(
                !write.segment.is_sealed(),
                "a write into sealed segment {}",
                write.segment.base_offset
            );
            write
                .segment
                .file()
                .write_at(&write.bytes, write.position)
                .map_err(|error| Error::io("append to segment", &write.segment.path, error))?;
        }
        Ok(())
    }

    /// Makes a written (and, for `Always`, synced) group visible and durable state.
    /// No I/O: sealing full segments and writing dedup runs are left to the
    /// worker (`seal_due`, `dedup_due`).
    fn publish(&self, state: &mut State, group: Pending, writes: Vec<SegmentWrite>) {
        let high_watermark = self.high_watermark();
        if let (Some(first), Some(end)) = (group.first_offset, group.end_offset) {
            // Invariant: offsets published are exactly the offsets encoded, and the
            // group starts where the previous one ended.
            assert_eq!(
                first, high_watermark,
                "group {} starts at {first}, the high watermark is {high_watermark}",
                group.number
            );
            assert_eq!(
                end.0 - first.0,
                group.records_count,
                "group {} spans [{first}, {end}) but encoded {} records",
                group.number,
                group.records_count
            );
            assert_eq!(
                writes.last().map(|write| write.end_offset),
                Some(end),
                "group {} writes end where its offsets end",
                group.number
            );
        } else {
            assert!(
                writes.is_empty(),
                "group {} has writes but no records",
                group.number
            );
        }
        for write in &writes {
            debug_assert!(!write.segment.is_sealed(), "a write into a sealed segment");
            debug_assert!(
                write.segment.is_created(),
                "a write into a segment without a file"
            );
            let end = write.position + write.bytes.len() as u64;
            // Invariant: a segment's published size never shrinks, and each write
            // continues exactly where the segment's published bytes end.
            assert_eq!(
                write.position,
                write.segment.published_size(),
                "write into segment {} at {} leaves a gap or overlap",
                write.segment.base_offset,
                write.position
            );
            write
                .segment
                .publish(end, write.end_offset, write.timestamp_max, &write.index);
        }
        if let Some(end_offset) = group.end_offset {
            let previous = self.high_watermark.swap(end_offset.0, Ordering::AcqRel);
            // Invariant: the high watermark is monotonic; only publication moves it.
            assert!(
                previous < end_offset.0,
                "high watermark does not advance: {previous} -> {end_offset}"
            );
            assert_eq!(
                previous, high_watermark.0,
                "the high watermark moved during publication"
            );
        }
        for (key, pending) in group.keys {
            state
                .keys
                .set(&key, pending.hash, pending.state, pending.owns_hash);
        }
        for (id, producer) in group.producers {
            state.producers.insert(id, producer);
        }
        if state.producers.len() > limits::PARTITION_PRODUCERS_COUNT_MAX {
            evict_idlest(&mut state.producers);
        }
        for write in &writes {
            for (fingerprint, offset, timestamp) in &write.fingerprints {
                state.dedup_due |= state.dedup.insert_deferred(*fingerprint, *offset, *timestamp);
            }
        }
        state.bytes_since_checkpoint += group.bytes;
        // A write into a segment that is no longer active may have completed it,
        // and the first write into a segment created its file, which completes
        // the one before it: the worker seals them.
        if writes.iter().any(|write| {
            !Arc::ptr_eq(&write.segment, &state.active)
                || write.position == crate::format::segment::SEGMENT_HEADER_LEN as u64
        }) {
            state.seal_due = true;
        }
    }

    /// Seals segments that are no longer active once all their records are
    /// published (the next segment starts right after them and has its file): trim, fdatasync,
    /// `.idx` written. Segments are sealed in order, so only those after the
    /// newest sealed one are looked at. A worker job: never under the state lock.
    pub(super) fn seal_full_segments(&self) {
        // One sealer at a time: two would race on a segment's index file.
        let _sealing = self
            .sealing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let full: Vec<Arc<Segment>> = {
            let segments = self.segments();
            let mut full = Vec::new();
            for index in (0..segments.len().saturating_sub(1)).rev() {
                let segment = &segments[index];
                if segment.is_sealed() {
                    break;
                }
                // Complete once its records are published and the next segment's
                // file exists: a roll whose file creation failed (a full disk)
                // leaves it unsealed, so a transient failure there never turns
                // into a failed seal, which would poison the partition.
                let next = &segments[index + 1];
                if segment.published_end_offset() == next.base_offset && next.is_created() {
                    full.push(Arc::clone(segment));
                }
            }
            full
        };
        for segment in full.into_iter().rev() {
            assert!(segment.is_created(), "a full segment has a file");
            if let Err(error) = segment.seal(&*self.context.storage) {
                self.poison(&error);
                return;
            }
        }
    }

    /// Fails every pending append after a failed write or sync. A write failure
    /// rolls the files back to their published size; a sync failure (or a failed
    /// rollback) poisons the partition.
    pub(super) fn fail_pending(
        &self,
        state: &mut State,
        error: Error,
        mut completions: Vec<(Completion, Result<AppendAck>)>,
    ) -> Vec<(Completion, Result<AppendAck>)> {
        completions.append(&mut std::mem::take(&mut state.open).completions);
        state.flushing = None;
        let high_watermark = self.high_watermark();
        if !self.is_poisoned()
            && let Err(rollback) = self.roll_back(state, high_watermark)
        {
            self.poison(&rollback);
        }
        state.next_offset = high_watermark;
        completions
            .into_iter()
            .map(|(completion, _)| (completion, Err(error.duplicate())))
            .collect()
    }

    /// Cuts unpublished bytes from the files and drops segments rolled for
    /// appends that failed. A segment starting at the high watermark stays (an
    /// empty active segment, or a planned one created by the next write): the
    /// segment before it is full and may already be sealed, so appends never go
    /// back to it.
    fn roll_back(&self, state: &mut State, high_watermark: Offset) -> Result<()> {
        let mut segments = self
            .segments
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while segments.len() > 1
            && segments
                .last()
                .is_some_and(|segment| segment.base_offset > high_watermark)
        {
            let segment = segments.pop().expect("checked non-empty");
            assert_eq!(
                segment.records_count(),
                0,
                "a dropped segment has no published records"
            );
            if segment.is_created() {
                let _ = self.context.storage.remove_file(&segment.path);
            }
        }
        let active = Arc::clone(segments.last().expect("a partition always has a segment"));
        drop(segments);
        assert!(
            !active.is_sealed(),
            "appends never go back to sealed segment {}",
            active.base_offset
        );
        let size = active.published_size();
        if active.is_created() {
            active
                .file()
                .set_len(size)
                .map_err(|error| Error::io("roll back unpublished bytes", &active.path, error))?;
        }
        state.write_end = size;
        state.last_index_position = active.last_index_position();
        state.active = active;
        Ok(())
    }
}

fn evict_idlest(producers: &mut HashMap<crate::event::ProducerId, ProducerSnapshot>) {
    while producers.len() > limits::PARTITION_PRODUCERS_COUNT_MAX {
        let idlest = producers
            .values()
            .min_by_key(|producer| producer.last_timestamp_ms)
            .map(|producer| producer.id)
            .expect("the map is not empty");
        producers.remove(&idlest);
    }
}

pub(super) fn run(completions: Vec<(Completion, Result<AppendAck>)>) {
    for (completion, result) in completions {
        completion(result);
    }
}

//! The write path: validation, conditions, encoding into the open group, the
//! group commit, publication and rollback.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use super::{Completion, Partition, Pending, PendingCall, PendingKey, SegmentWrite, State};
use crate::config::Durability;
use crate::dedup::Fingerprint;
use crate::error::{Error, Result};
use crate::event::{AppendAck, AppendRequest, Event, ExpectedSequence, Offset, ProducerStamp, Sequence};
use crate::format::checkpoint::{ProducerSnapshot, RecentAppend};
use crate::format::index::IndexEntry;
use crate::format::record::{self, FLAG_CALL_END, NO_PREVIOUS, RecordView};
use crate::keys::{KeyState, key_hash};
use crate::limits;
use crate::segment::Segment;

/// An append request checked against the limits, with its hashes computed.
pub(crate) struct Prepared {
    request: AppendRequest,
    hash: u64,
    fingerprints: Vec<Option<Fingerprint>>,
    size: u64,
}

/// Checks every bound of a request; computes hashes outside the lock.
pub(crate) fn prepare(request: AppendRequest, payload_size_max: u32) -> Result<Prepared> {
    let limit = |what: &'static str, value: usize, max: usize| -> Result<()> {
        if value > max {
            Err(Error::LimitExceeded {
                what,
                value: value as u64,
                max: max as u64,
            })
        } else {
            Ok(())
        }
    };
    if request.key.is_empty() {
        return Err(Error::InvalidArgument("key is empty".to_string()));
    }
    limit("key size", request.key.len(), limits::KEY_SIZE_MAX)?;
    if request.events.is_empty() {
        return Err(Error::InvalidArgument("append has no events".to_string()));
    }
    limit(
        "events in one append",
        request.events.len(),
        limits::APPEND_EVENTS_COUNT_MAX,
    )?;
    let mut size = 0u64;
    let mut fingerprints = Vec::with_capacity(request.events.len());
    let ids_count = request
        .events
        .iter()
        .filter(|event| event.idempotency_id.is_some())
        .count();
    let mut seen: HashMap<&[u8], usize> = HashMap::with_capacity(if ids_count > 1 { ids_count } else { 0 });
    for (index, event) in request.events.iter().enumerate() {
        if event.event_type.is_empty() {
            return Err(Error::InvalidArgument(format!("event {index} has an empty type")));
        }
        if event.event_type.bytes().any(|byte| byte < 0x20 || byte == 0x7f) {
            return Err(Error::InvalidArgument(format!(
                "event {index} type contains ASCII control characters"
            )));
        }
        limit(
            "event type size",
            event.event_type.len(),
            limits::EVENT_TYPE_SIZE_MAX,
        )?;
        limit("payload size", event.payload.len(), payload_size_max as usize)?;
        limit("headers count", event.headers.len(), limits::HEADERS_COUNT_MAX)?;
        for (name, _) in &event.headers {
            if name.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "event {index} has an empty header name"
                )));
            }
            limit("header name size", name.len(), limits::HEADER_NAME_SIZE_MAX)?;
        }
        let headers_size = record::headers_size(&event.headers);
        limit("headers size", headers_size, limits::HEADERS_SIZE_MAX)?;
        let id = event.idempotency_id.as_deref();
        if let Some(id) = id {
            if id.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "event {index} has an empty idempotency id"
                )));
            }
            limit("idempotency id size", id.len(), limits::IDEMPOTENCY_ID_SIZE_MAX)?;
            if ids_count > 1
                && let Some(first) = seen.insert(id, index)
            {
                return Err(Error::RepeatedIdempotencyId { first, second: index });
            }
        }
        fingerprints.push(id.map(|id| Fingerprint::of(&request.key, id)));
        size += record::frame_size(
            request.key.len(),
            event.event_type.len(),
            id.map_or(0, <[u8]>::len),
            headers_size,
            event.payload.len(),
        );
    }
    if size > limits::APPEND_SIZE_BYTES_MAX {
        return Err(Error::LimitExceeded {
            what: "append size",
            value: size,
            max: limits::APPEND_SIZE_BYTES_MAX,
        });
    }
    let hash = key_hash(&request.key);
    Ok(Prepared {
        request,
        hash,
        fingerprints,
        size,
    })
}

/// Most groups an appender writes in a row under `Interval` and `None` (its own,
/// then those of appends that arrived meanwhile) before the worker takes over.
const INLINE_GROUPS_MAX: u32 = 8;

/// The earlier event an idempotency id of the key names.
#[derive(Debug, Clone, Copy)]
struct Original {
    offset: Offset,
    sequence: Sequence,
    timestamp_ms: i64,
    /// Below the high watermark (else in the open or flushing group).
    published: bool,
    /// Same type, payload and headers as the event asking.
    same_content: bool,
}

/// An event as the writer sees it: in a pending group or in the log.
struct Stored<'a> {
    key: &'a [u8],
    sequence: Sequence,
    timestamp_ms: i64,
    published: bool,
    event: EventContent<'a>,
}

/// The parts of an event a retry must repeat, borrowed.
struct EventContent<'a> {
    event_type: &'a str,
    payload: &'a [u8],
    headers: Vec<(&'a str, &'a [u8])>,
    idempotency_id: Option<&'a [u8]>,
}

impl EventContent<'_> {
    /// Same type, payload and headers (in any order: the wire form of headers is a
    /// map, so their order is not the client's to keep).
    fn same_content(&self, event: &Event) -> bool {
        if self.event_type != event.event_type
            || self.payload != event.payload.as_slice()
            || self.headers.len() != event.headers.len()
        {
            return false;
        }
        let mut given: Vec<(&str, &[u8])> = event
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice()))
            .collect();
        if given == self.headers {
            return true;
        }
        let mut stored = self.headers.clone();
        stored.sort_unstable();
        given.sort_unstable();
        stored == given
    }
}

/// What the conditions say about an append.
enum Decision {
    /// Write it.
    Write { key: Option<KeyState>, owns_hash: bool },
    /// A retry of an append already stored: answer with the original.
    Duplicate { ack: AppendAck, published: bool },
}

impl Partition {
    /// Appends, calling `completion` once with the outcome: at once for a rejected
    /// or already-published duplicate append, else when the group is acknowledged.
    pub(crate) fn submit(&self, request: AppendRequest, completion: Completion) {
        let prepared = match prepare(request, self.context.options.payload_size_max) {
            Ok(prepared) => prepared,
            Err(error) => return completion(Err(error)),
        };
        let mut state = self.lock();
        // Back-pressure: wait for the worker to take the open group, and for its
        // dedup jobs to write out frozen memtables.
        while (state.open.completions.len() >= limits::PENDING_APPENDS_COUNT_MAX
            || state.open.bytes >= limits::PENDING_SIZE_BYTES_MAX
            || state.dedup.is_backlogged())
            && !self.is_poisoned()
            && !self.is_closing()
        {
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
        match self.decide(&mut state, &prepared) {
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
                self.after_encode(state);
            }
            Ok(Decision::Write { key, owns_hash }) => {
                let failed = self
                    .encode(&mut state, prepared, key, owns_hash, completion)
                    .err();
                self.after_encode(state);
                // Encoding fails only when rolling a segment fails; the append is
                // answered outside the lock, like every other.
                if let Some((completion, error)) = failed {
                    completion(Err(error));
                }
            }
        }
    }

    /// After an append joined the open group: hand it to the worker, or write and
    /// publish it inline. The inline write happens without the lock, like the
    /// worker's: the group is the flushing group meanwhile, and appends that
    /// arrive go to the next group, which the worker takes.
    fn after_encode<'a>(&'a self, mut state: MutexGuard<'a, State>) {
        match self.context.options.durability {
            Durability::Always => {
                self.work.notify_one();
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
                    let (writes, completions) = self.take_group(&mut state);
                    // Waking is a system call: only when an appender waits for room.
                    let waiters = state.room_waiters > 0;
                    drop(state);
                    if waiters {
                        self.room.notify_all();
                    }
                    let outcome = self.write_group(&writes);
                    state = self.lock();
                    let published = outcome.is_ok() && !writes.is_empty();
                    let became_unsynced = published && !state.unsynced;
                    state.unsynced |= published;
                    let completions = self.finish_group(&mut state, outcome, writes, completions);
                    let start_timer = became_unsynced
                        && matches!(self.context.options.durability, Durability::Interval { .. });
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
                        self.work.notify_one();
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

    /// The current state of a key as the writer sees it: open overlay, flushing
    /// overlay, then published state confirmed against the log.
    fn key_state(&self, state: &mut State, key: &[u8], hash: u64) -> Result<(Option<KeyState>, bool)> {
        for group in [Some(&state.open), state.flushing.as_ref()].into_iter().flatten() {
            if let Some(pending) = group.keys.get(key) {
                return Ok((Some(pending.state), pending.owns_hash));
            }
        }
        let found = state.keys.get(key, hash, |offset| self.is_key_at(key, offset))?;
        let owns_hash = match found {
            Some(_) => !state.keys.is_collided(key),
            None => !state.keys.contains_hash(hash),
        };
        Ok((found, owns_hash))
    }

    fn decide(&self, state: &mut State, prepared: &Prepared) -> Result<Decision> {
        let request = &prepared.request;
        let now = self.context.clock.now_ms().max(state.last_timestamp_ms);
        if let Some(stamp) = request.producer
            && let Some(decision) = self.check_producer(state, request, stamp)?
        {
            return Ok(decision);
        }
        if let Some(decision) = self.check_ids(state, prepared, now)? {
            return Ok(decision);
        }
        let (key, owns_hash) = self.key_state(state, &request.key, prepared.hash)?;
        let actual = key.map(|key| key.last_sequence);
        let matches = match request.expected {
            ExpectedSequence::Any => true,
            ExpectedSequence::NoEvents => actual.is_none(),
            ExpectedSequence::Exact(expected) => actual == Some(expected),
        };
        if !matches {
            return Err(Error::WrongExpectedSequence {
                expected: request.expected,
                actual,
            });
        }
        Ok(Decision::Write { key, owns_hash })
    }

    fn producer_state<'a>(&self, state: &'a State, stamp: &ProducerStamp) -> Option<&'a ProducerSnapshot> {
        state
            .open
            .producers
            .get(&stamp.producer)
            .or_else(|| {
                state
                    .flushing
                    .as_ref()
                    .and_then(|group| group.producers.get(&stamp.producer))
            })
            .or_else(|| state.producers.get(&stamp.producer))
    }

    fn check_producer(
        &self,
        state: &State,
        request: &AppendRequest,
        stamp: ProducerStamp,
    ) -> Result<Option<Decision>> {
        let current = (self.context.epoch_of)(stamp.producer).ok_or(Error::UnknownProducer {
            producer: stamp.producer,
            epoch: stamp.epoch,
        })?;
        if stamp.epoch < current {
            return Err(Error::ProducerFenced {
                producer: stamp.producer,
                epoch: stamp.epoch,
                current,
            });
        }
        if stamp.epoch > current {
            return Err(Error::UnknownProducer {
                producer: stamp.producer,
                epoch: stamp.epoch,
            });
        }
        let Some(producer) = self.producer_state(state, &stamp) else {
            // Unknown here: new in this partition, or forgotten after idleness or
            // eviction. The partition cannot tell the two apart, so either way the
            // sequence starts at 0.
            return if stamp.sequence == Sequence(0) {
                Ok(None)
            } else {
                Err(self.out_of_order(stamp, Sequence(0)))
            };
        };
        if producer.epoch < stamp.epoch {
            // A new epoch restarts the sequence at 0.
            return if stamp.sequence == Sequence(0) {
                Ok(None)
            } else {
                Err(self.out_of_order(stamp, Sequence(0)))
            };
        }
        if producer.epoch > stamp.epoch {
            return Err(Error::ProducerFenced {
                producer: stamp.producer,
                epoch: stamp.epoch,
                current: producer.epoch,
            });
        }
        if stamp.sequence == Sequence(producer.last_sequence.0.wrapping_add(1)) {
            return Ok(None);
        }
        if let Some(recent) = producer
            .recent
            .iter()
            .find(|recent| recent.sequence == stamp.sequence)
        {
            // The same sequence with other events is not a retry: never answer with
            // positions of events that are not the caller's.
            self.check_producer_retry(state, request, recent)?;
            let ack = AppendAck {
                partition: self.id,
                first_offset: recent.first_offset,
                first_sequence: recent.first_sequence,
                last_sequence: recent.last_sequence,
                timestamp_ms: recent.timestamp_ms,
                duplicate: true,
            };
            let published = recent.first_offset < self.high_watermark();
            return Ok(Some(Decision::Duplicate { ack, published }));
        }
        Err(self.out_of_order(stamp, Sequence(producer.last_sequence.0.wrapping_add(1))))
    }

    fn out_of_order(&self, stamp: ProducerStamp, expected: Sequence) -> Error {
        Error::ProducerOutOfOrder {
            producer: stamp.producer,
            partition: self.id,
            expected,
            got: stamp.sequence,
        }
    }

    /// Finds events of the request whose idempotency ids (scoped to the key) were
    /// seen within the window. All are retries of events stored one after another in
    /// this order: the original positions. Some: `PartialDuplicate`. None: `None`.
    /// An id whose event differs, or originals out of order: `IdempotencyIdReused`.
    fn check_ids(&self, state: &State, prepared: &Prepared, now: i64) -> Result<Option<Decision>> {
        if prepared.fingerprints.iter().all(Option::is_none) {
            return Ok(None);
        }
        let request = &prepared.request;
        let events = &request.events;
        let mut originals: Vec<Option<Original>> = Vec::with_capacity(events.len());
        let mut candidates = Vec::new();
        for (index, (event, fingerprint)) in events.iter().zip(&prepared.fingerprints).enumerate() {
            let (Some(id), Some(fingerprint)) = (event.idempotency_id.as_deref(), fingerprint) else {
                originals.push(None);
                continue;
            };
            let found =
                self.find_original(state, &request.key, id, event, *fingerprint, now, &mut candidates)?;
            if let Some(original) = &found
                && !original.same_content
            {
                return Err(self.id_reused(index, original));
            }
            originals.push(found);
        }
        let duplicates = originals.iter().filter(|original| original.is_some()).count();
        if duplicates == 0 {
            return Ok(None);
        }
        if duplicates < events.len() {
            return Err(Error::PartialDuplicate {
                duplicates,
                events: events.len(),
            });
        }
        let first = originals[0].expect("every event is a duplicate");
        // The answer names a contiguous range: it must hold exactly the caller's
        // events, in the caller's order.
        for (index, original) in originals.iter().enumerate() {
            let original = original.expect("every event is a duplicate");
            if original.offset.0 != first.offset.0 + index as u64
                || original.sequence != first.sequence + index as u64
            {
                return Err(self.id_reused(index, &original));
            }
        }
        let last = originals[events.len() - 1].expect("every event is a duplicate");
        let ack = AppendAck {
            partition: self.id,
            first_offset: first.offset,
            first_sequence: first.sequence,
            last_sequence: last.sequence,
            timestamp_ms: first.timestamp_ms,
            duplicate: true,
        };
        let published = originals.iter().flatten().all(|original| original.published);
        Ok(Some(Decision::Duplicate { ack, published }))
    }

    /// The event of `key` that idempotency id `id` names within the window, if any:
    /// the open group, the flushing group, then the dedup index confirmed against the
    /// log. Only an event of the same key with the same id counts.
    #[allow(clippy::too_many_arguments)]
    fn find_original(
        &self,
        state: &State,
        key: &[u8],
        id: &[u8],
        event: &Event,
        fingerprint: Fingerprint,
        now: i64,
        candidates: &mut Vec<Offset>,
    ) -> Result<Option<Original>> {
        let window = self.context.options.dedup_window_ms as i64;
        candidates.clear();
        for group in [Some(&state.open), state.flushing.as_ref()].into_iter().flatten() {
            if let Some(offsets) = group.ids.get(&fingerprint.keyed) {
                candidates.extend(offsets.iter().rev());
            }
        }
        let pending = candidates.len();
        state.dedup.candidates(fingerprint, now, candidates)?;
        for (index, offset) in candidates.iter().enumerate() {
            let found = self.with_event_at(state, *offset, |stored| {
                let in_window = index < pending || now.saturating_sub(stored.timestamp_ms) < window;
                (stored.key == key && stored.event.idempotency_id == Some(id) && in_window).then(|| {
                    Original {
                        offset: *offset,
                        sequence: stored.sequence,
                        timestamp_ms: stored.timestamp_ms,
                        published: stored.published,
                        same_content: stored.event.same_content(event),
                    }
                })
            })?;
            if let Some(Some(original)) = found {
                return Ok(Some(original));
            }
        }
        Ok(None)
    }

    /// Calls `f` with the event at `offset` as the writer sees it (open group,
    /// flushing group, else the published log); `None` when no retained event is
    /// there.
    fn with_event_at<T>(
        &self,
        state: &State,
        offset: Offset,
        f: impl FnOnce(&Stored<'_>) -> T,
    ) -> Result<Option<T>> {
        for group in [Some(&state.open), state.flushing.as_ref()].into_iter().flatten() {
            if let Some((call, index)) = group.call_at(offset) {
                let event = &call.events[index];
                let stored = Stored {
                    key: &call.key,
                    sequence: call.ack.first_sequence + index as u64,
                    timestamp_ms: call.ack.timestamp_ms,
                    published: false,
                    event: EventContent {
                        event_type: &event.event_type,
                        payload: &event.payload,
                        headers: event
                            .headers
                            .iter()
                            .map(|(name, value)| (name.as_str(), value.as_slice()))
                            .collect(),
                        idempotency_id: event.idempotency_id.as_deref(),
                    },
                };
                return Ok(Some(f(&stored)));
            }
        }
        if offset >= self.high_watermark() {
            return Ok(None);
        }
        let result = self.with_record(offset, |view| {
            let stored = Stored {
                key: view.key,
                sequence: view.sequence,
                timestamp_ms: view.timestamp_ms,
                published: true,
                event: EventContent {
                    event_type: view.event_type,
                    payload: view.payload,
                    // Decoding checked the header block, so every header parses.
                    headers: record::headers(view.headers).filter_map(Result::ok).collect(),
                    idempotency_id: view.idempotency_id,
                },
            };
            f(&stored)
        });
        match result {
            Ok(found) => Ok(Some(found)),
            Err(Error::OffsetOutOfRange { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn id_reused(&self, index: usize, original: &Original) -> Error {
        Error::IdempotencyIdReused {
            index,
            partition: self.id,
            offset: original.offset,
            sequence: original.sequence,
        }
    }

    /// Checks that a producer's retry carries the same key and events as the append
    /// it retries (`recent`, still retained); `IdempotencyIdReused` naming the first
    /// differing event otherwise.
    fn check_producer_retry(
        &self,
        state: &State,
        request: &AppendRequest,
        recent: &RecentAppend,
    ) -> Result<()> {
        let stored_count = recent.last_sequence.0 - recent.first_sequence.0 + 1;
        let count = request.events.len() as u64;
        for index in 0..count.max(stored_count) {
            let event_index = index.min(count - 1);
            let stored_index = index.min(stored_count - 1);
            let offset = Offset(recent.first_offset.0 + stored_index);
            let same = index < count
                && index < stored_count
                && self
                    .with_event_at(state, offset, |stored| {
                        let event = &request.events[event_index as usize];
                        stored.key == request.key.as_slice()
                            && stored.event.idempotency_id == event.idempotency_id.as_deref()
                            && stored.event.same_content(event)
                    })?
                    // An original that retention removed cannot be compared; the
                    // sequence alone identifies it, as it did when it was stored.
                    .unwrap_or(true);
            if !same {
                return Err(Error::IdempotencyIdReused {
                    index: event_index as usize,
                    partition: self.id,
                    offset,
                    sequence: recent.first_sequence + stored_index,
                });
            }
        }
        Ok(())
    }

    /// Encodes an accepted append into the open group. On failure (a roll that
    /// could not create its segment) the completion is handed back unanswered.
    fn encode(
        &self,
        state: &mut State,
        prepared: Prepared,
        key: Option<KeyState>,
        owns_hash: bool,
        completion: Completion,
    ) -> std::result::Result<(), (Completion, Error)> {
        if let Err(error) = self.roll_if_needed(state, prepared.size) {
            return Err((completion, error));
        }
        let request = &prepared.request;
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
        let interval = self.context.options.index_interval_bytes as u64;
        let mut write_end = state.write_end;
        let mut last_index_position = state.last_index_position;
        let open = &mut state.open;
        let write = match open.writes.last_mut() {
            Some(write) if Arc::ptr_eq(&write.segment, &active) => write,
            _ => {
                open.writes.push(SegmentWrite {
                    segment: Arc::clone(&active),
                    position: write_end,
                    bytes: Vec::with_capacity(prepared.size as usize),
                    end_offset: first_offset,
                    timestamp_max: now,
                    index: Vec::new(),
                    fingerprints: Vec::new(),
                });
                open.writes.last_mut().expect("just pushed")
            }
        };
        let mut previous = key.map_or(NO_PREVIOUS, |key| key.last_offset.0);
        for (index, (event, fingerprint)) in request.events.iter().zip(&prepared.fingerprints).enumerate() {
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
        open.bytes += prepared.size;
        open.keys.insert(
            request.key.clone(),
            PendingKey {
                hash: prepared.hash,
                state: KeyState {
                    last_sequence,
                    last_offset: Offset(end_offset.0 - 1),
                },
                owns_hash,
            },
        );
        if let Some(stamp) = request.producer {
            let mut producer = self
                .producer_state(state, &stamp)
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
        let compared = request.producer.is_some() || prepared.fingerprints.iter().any(Option::is_some);
        if compared {
            let Prepared { request, .. } = prepared;
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
    fn roll_if_needed(&self, state: &mut State, size: u64) -> Result<()> {
        let options = &self.context.options;
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
    fn take_group(&self, state: &mut State) -> (Vec<SegmentWrite>, Vec<(Completion, Result<AppendAck>)>) {
        assert!(
            state.flushing.is_none(),
            "a group is taken while another is being written"
        );
        let mut group = std::mem::take(&mut state.open);
        state.groups_taken += 1;
        group.number = state.groups_taken;
        let writes = std::mem::take(&mut group.writes);
        let completions = std::mem::take(&mut group.completions);
        state.flushing = Some(group);
        (writes, completions)
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
        let (writes, completions) = self.take_group(&mut state);
        state.last_group_size = completions.len();
        drop(state);
        self.room.notify_all();
        let started = std::time::Instant::now();
        let outcome = self.write_group(&writes).and_then(|()| {
            if self.context.options.durability == Durability::Always {
                sync_all(&writes, self)
            } else {
                Ok(())
            }
        });
        let elapsed = started.elapsed();
        let mut state = self.lock();
        state.last_flush_duration = elapsed;
        if outcome.is_ok() && !writes.is_empty() && self.context.options.durability != Durability::Always {
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
                let options = &self.context.options;
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

/// Remembers a producer's append so that a retry is answered as a duplicate.
pub(super) fn remember_append(producer: &mut ProducerSnapshot, stamp: ProducerStamp, ack: &AppendAck) {
    producer.epoch = stamp.epoch;
    producer.last_sequence = stamp.sequence;
    producer.last_timestamp_ms = ack.timestamp_ms;
    if producer.recent.len() == limits::PRODUCER_RECENT_APPENDS_COUNT {
        producer.recent.remove(0);
    }
    producer.recent.push(RecentAppend {
        sequence: stamp.sequence,
        first_offset: ack.first_offset,
        first_sequence: ack.first_sequence,
        last_sequence: ack.last_sequence,
        timestamp_ms: ack.timestamp_ms,
    });
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

fn sync_all(writes: &[SegmentWrite], partition: &Partition) -> Result<()> {
    for write in writes {
        if let Err(error) = partition.sync_data(&write.segment) {
            let error = Error::io("sync segment", &write.segment.path, error);
            partition.poison(&error);
            return Err(error);
        }
    }
    Ok(())
}

pub(super) fn run(completions: Vec<(Completion, Result<AppendAck>)>) {
    for (completion, result) in completions {
        completion(result);
    }
}

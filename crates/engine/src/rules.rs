//! The append rules: whether an append is written, is a retry answered with the
//! original acknowledgement, or fails. Every backend decides with these rules.
//!
//! [`prepare`] checks a request against the limits and computes its hashes, with no
//! partition at hand. [`decide`] then reads a partition through [`PartitionView`]:
//! the producer's stamp first (fencing, order, retries of a recent sequence), then
//! the idempotency ids (duplicates within the dedup window), then the key's
//! expected sequence. The engine's partition implements the view over its locked
//! state (open overlay, flushing overlay, published state); a backend whose events
//! live remotely fetches the events [`offsets_to_read`] names before it decides.
//!
//! Invariant: `decide` reads events (`PartitionView::with_event_at`) only at offsets
//! that `offsets_to_read` lists for the same view, request and time.
//! Invariant: a duplicate is answered only when every event of the request is the
//! caller's own (same key, id and content), stored one after another in its order.
//!
//! This module changes nothing: it does not encode, write or publish, and
//! remembering an accepted append (the key's new state, [`remember_append`] for the
//! producer) is the caller's job.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::event::{
    AppendAck, AppendRequest, Epoch, Event, ExpectedSequence, Offset, PartitionId, ProducerId, ProducerStamp,
    Sequence,
};
use crate::format::checkpoint::{ProducerSnapshot, RecentAppend};
use crate::format::record;
use crate::keys::key_hash;
use crate::limits;

pub use crate::dedup::Fingerprint;
pub use crate::keys::KeyState;

#[cfg(test)]
mod tests;

/// An append request checked against the limits, with its hashes computed.
#[derive(Debug)]
pub struct Prepared {
    request: AppendRequest,
    hash: u64,
    fingerprints: Vec<Option<Fingerprint>>,
    size: u64,
}

impl Prepared {
    /// The request checked.
    #[inline]
    pub fn request(&self) -> &AppendRequest {
        &self.request
    }

    /// The request checked, given back.
    #[inline]
    pub fn into_request(self) -> AppendRequest {
        self.request
    }

    /// The hash of the request's key within a partition.
    #[inline]
    pub fn key_hash(&self) -> u64 {
        self.hash
    }

    /// The fingerprint of each event's idempotency id, in event order; `None` for
    /// an event without one.
    #[inline]
    pub fn fingerprints(&self) -> &[Option<Fingerprint>] {
        &self.fingerprints
    }

    /// The bytes of the request's encoded record frames.
    #[inline]
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// Checks every bound of a request and computes its hashes (outside any lock).
///
/// # Errors
/// `InvalidArgument` for an empty key, no events, an empty or control-character
/// event type, an empty header name or an empty idempotency id;
/// `LimitExceeded` for a size or count past its bound (`payload_size_max` for
/// payloads, `limits.rs` for the rest); `RepeatedIdempotencyId` when two events
/// of the request carry the same id.
pub fn prepare(request: AppendRequest, payload_size_max: u32) -> Result<Prepared> {
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

/// What the rules say about an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Write it.
    Write {
        /// The key's state before the append; `None` for a key with no events.
        key: Option<KeyState>,
        /// Whether the key owns its hash in the key index (as
        /// [`PartitionView::key_state`] answered).
        owns_hash: bool,
    },
    /// A retry of an append already stored: answer with the original.
    Duplicate {
        /// The original acknowledgement, with `duplicate` set.
        ack: AppendAck,
        /// Whether every original event is below the high watermark (else some
        /// are pending, and the answer waits for their group).
        published: bool,
    },
}

/// An event as the writer sees it (pending or published), borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent<'a> {
    /// The event's key.
    pub key: &'a [u8],
    /// The event's key sequence.
    pub sequence: Sequence,
    /// The append timestamp, Unix milliseconds.
    pub timestamp_ms: i64,
    /// Below the high watermark (else in a pending group).
    pub published: bool,
    /// The event type.
    pub event_type: &'a str,
    /// The payload.
    pub payload: &'a [u8],
    /// The headers, in stored order.
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// The idempotency id, if any.
    pub idempotency_id: Option<&'a [u8]>,
}

impl StoredEvent<'_> {
    /// Same type, payload and headers as `event` (headers in any order: the wire
    /// form of headers is a map, so their order is not the client's to keep). The
    /// key and the idempotency id are not compared.
    pub fn same_content(&self, event: &Event) -> bool {
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

/// What the rules read of a partition, as its writer sees it (pending appends
/// included).
pub trait PartitionView {
    /// The partition's id, named in errors and acknowledgements.
    fn partition(&self) -> PartitionId;

    /// The topic's dedup window: an idempotency id names an event younger than
    /// this.
    fn dedup_window_ms(&self) -> u64;

    /// The producer's current epoch in the topic's registry; `None` when the
    /// registry does not know it.
    fn current_epoch(&self, producer: ProducerId) -> Option<Epoch>;

    /// The producer's state in this partition (pending overlays first, then
    /// published).
    fn producer(&self, producer: ProducerId) -> Option<&ProducerSnapshot>;

    /// The key's state and whether it owns its hash (the engine's key index
    /// detail; another view answers true).
    ///
    /// # Errors
    /// Whatever reading the partition to confirm the key fails with.
    fn key_state(&mut self, key: &[u8], hash: u64) -> Result<(Option<KeyState>, bool)>;

    /// Appends to `candidates` the offsets of events that may carry
    /// `fingerprint`, newest first: first the pending ones (in the window whatever
    /// their timestamps), then the indexed ones within the window at `now_ms`;
    /// returns how many are pending. The rules confirm each candidate by reading
    /// it.
    ///
    /// # Errors
    /// Whatever reading the index fails with.
    fn id_candidates(
        &self,
        fingerprint: Fingerprint,
        now_ms: i64,
        candidates: &mut Vec<Offset>,
    ) -> Result<usize>;

    /// Calls `f` with the event at `offset` as the writer sees it; `None` when no
    /// retained event is there.
    ///
    /// # Errors
    /// Whatever reading the event fails with.
    fn with_event_at<T>(&self, offset: Offset, f: impl FnOnce(&StoredEvent<'_>) -> T) -> Result<Option<T>>;

    /// One past the newest published offset (a duplicate below it is answered at
    /// once).
    fn high_watermark(&self) -> Offset;
}

/// The decision for `prepared` at time `now_ms` (the caller's clock, never before
/// the partition's newest timestamp). Checks, in this order: the producer stamp,
/// the idempotency ids, the expected sequence.
///
/// # Errors
/// `UnknownProducer`, `ProducerFenced`, `ProducerOutOfOrder` for a stamp the
/// producer's state refuses; `IdempotencyIdReused` for a retry (by id or by
/// producer sequence) whose events are not the originals; `PartialDuplicate`
/// when only some events are duplicates; `WrongExpectedSequence` with the actual
/// sequence; and whatever the view fails with.
pub fn decide<V: PartitionView>(view: &mut V, prepared: &Prepared, now_ms: i64) -> Result<Decision> {
    let request = &prepared.request;
    if let Some(stamp) = request.producer
        && let Some(decision) = check_producer(&*view, request, stamp)?
    {
        return Ok(decision);
    }
    if let Some(decision) = check_ids(&*view, prepared, now_ms)? {
        return Ok(decision);
    }
    let (key, owns_hash) = view.key_state(&request.key, prepared.hash)?;
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

/// Every offset [`decide`] may read with `with_event_at` for this request at
/// `now_ms` (the id candidates of each idempotency id, or the stored events a
/// producer retry names), so that a view whose events live remotely can fetch
/// them before calling `decide`. Sorted, without repeats.
///
/// # Errors
/// Whatever the view's `id_candidates` fails with.
pub fn offsets_to_read<V: PartitionView>(view: &V, prepared: &Prepared, now_ms: i64) -> Result<Vec<Offset>> {
    let request = &prepared.request;
    let mut offsets = Vec::new();
    if let Some(stamp) = request.producer {
        match check_stamp(view, stamp) {
            // `decide` fails on the stamp before it reads anything.
            Err(_) => return Ok(offsets),
            // `decide` compares the retry with the events it names, then answers
            // (a duplicate or `IdempotencyIdReused`) without looking at the ids.
            Ok(Stamp::Retry(recent)) => {
                let compared = (request.events.len() as u64).min(stored_count(recent));
                offsets.extend((0..compared).map(|index| Offset(recent.first_offset.0 + index)));
                return Ok(offsets);
            }
            Ok(Stamp::Next) => {}
        }
    }
    let mut candidates = Vec::new();
    for fingerprint in prepared.fingerprints.iter().flatten() {
        candidates.clear();
        view.id_candidates(*fingerprint, now_ms, &mut candidates)?;
        offsets.extend_from_slice(&candidates);
    }
    offsets.sort_unstable();
    offsets.dedup();
    Ok(offsets)
}

/// Remembers a producer's append so that a retry is answered as a duplicate.
pub fn remember_append(producer: &mut ProducerSnapshot, stamp: ProducerStamp, ack: &AppendAck) {
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

/// What a producer's stamp says before any event is read.
enum Stamp<'a> {
    /// The next sequence (or a new start at 0): the other checks decide.
    Next,
    /// The sequence of a recent append: a retry if it carries the same events.
    Retry(&'a RecentAppend),
}

/// Checks a stamp against the registry's epoch and the producer's state here.
fn check_stamp<V: PartitionView>(view: &V, stamp: ProducerStamp) -> Result<Stamp<'_>> {
    let current = view.current_epoch(stamp.producer).ok_or(Error::UnknownProducer {
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
    let Some(producer) = view.producer(stamp.producer) else {
        // Unknown here: new in this partition, or forgotten after idleness or
        // eviction. The partition cannot tell the two apart, so either way the
        // sequence starts at 0.
        return if stamp.sequence == Sequence(0) {
            Ok(Stamp::Next)
        } else {
            Err(out_of_order(view, stamp, Sequence(0)))
        };
    };
    if producer.epoch < stamp.epoch {
        // A new epoch restarts the sequence at 0.
        return if stamp.sequence == Sequence(0) {
            Ok(Stamp::Next)
        } else {
            Err(out_of_order(view, stamp, Sequence(0)))
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
        return Ok(Stamp::Next);
    }
    if let Some(recent) = producer
        .recent
        .iter()
        .find(|recent| recent.sequence == stamp.sequence)
    {
        return Ok(Stamp::Retry(recent));
    }
    Err(out_of_order(
        view,
        stamp,
        Sequence(producer.last_sequence.0.wrapping_add(1)),
    ))
}

/// The producer's verdict: `None` to go on, a duplicate for a retry of a recent
/// append with the same events.
fn check_producer<V: PartitionView>(
    view: &V,
    request: &AppendRequest,
    stamp: ProducerStamp,
) -> Result<Option<Decision>> {
    let Stamp::Retry(recent) = check_stamp(view, stamp)? else {
        return Ok(None);
    };
    // The same sequence with other events is not a retry: never answer with
    // positions of events that are not the caller's.
    check_producer_retry(view, request, recent)?;
    let ack = AppendAck {
        partition: view.partition(),
        first_offset: recent.first_offset,
        first_sequence: recent.first_sequence,
        last_sequence: recent.last_sequence,
        timestamp_ms: recent.timestamp_ms,
        duplicate: true,
    };
    let published = recent.first_offset < view.high_watermark();
    Ok(Some(Decision::Duplicate { ack, published }))
}

fn out_of_order<V: PartitionView>(view: &V, stamp: ProducerStamp, expected: Sequence) -> Error {
    Error::ProducerOutOfOrder {
        producer: stamp.producer,
        partition: view.partition(),
        expected,
        got: stamp.sequence,
    }
}

/// The number of events of a recent append.
fn stored_count(recent: &RecentAppend) -> u64 {
    recent.last_sequence.0 - recent.first_sequence.0 + 1
}

/// Checks that a producer's retry carries the same key and events as the append
/// it retries (`recent`, still retained); `IdempotencyIdReused` naming the first
/// differing event otherwise.
fn check_producer_retry<V: PartitionView>(
    view: &V,
    request: &AppendRequest,
    recent: &RecentAppend,
) -> Result<()> {
    let stored_count = stored_count(recent);
    let count = request.events.len() as u64;
    for index in 0..count.max(stored_count) {
        let event_index = index.min(count - 1);
        let stored_index = index.min(stored_count - 1);
        let offset = Offset(recent.first_offset.0 + stored_index);
        let same = index < count
            && index < stored_count
            && view
                .with_event_at(offset, |stored| {
                    let event = &request.events[event_index as usize];
                    stored.key == request.key.as_slice()
                        && stored.idempotency_id == event.idempotency_id.as_deref()
                        && stored.same_content(event)
                })?
                // An original that retention removed cannot be compared; the
                // sequence alone identifies it, as it did when it was stored.
                .unwrap_or(true);
        if !same {
            return Err(Error::IdempotencyIdReused {
                index: event_index as usize,
                partition: view.partition(),
                offset,
                sequence: recent.first_sequence + stored_index,
            });
        }
    }
    Ok(())
}

/// The earlier event an idempotency id of the key names.
#[derive(Debug, Clone, Copy)]
struct Original {
    offset: Offset,
    sequence: Sequence,
    timestamp_ms: i64,
    /// Below the high watermark (else in a pending group).
    published: bool,
    /// Same type, payload and headers as the event asking.
    same_content: bool,
}

/// Finds events of the request whose idempotency ids (scoped to the key) were
/// seen within the window. All are retries of events stored one after another in
/// this order: the original positions. Some: `PartialDuplicate`. None: `None`.
/// An id whose event differs, or originals out of order: `IdempotencyIdReused`.
fn check_ids<V: PartitionView>(view: &V, prepared: &Prepared, now_ms: i64) -> Result<Option<Decision>> {
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
        let found = find_original(
            view,
            &request.key,
            id,
            event,
            *fingerprint,
            now_ms,
            &mut candidates,
        )?;
        if let Some(original) = &found
            && !original.same_content
        {
            return Err(id_reused(view, index, original));
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
            return Err(id_reused(view, index, &original));
        }
    }
    let last = originals[events.len() - 1].expect("every event is a duplicate");
    let ack = AppendAck {
        partition: view.partition(),
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
/// the pending candidates, then the indexed ones, each confirmed by reading it.
/// Only an event of the same key with the same id counts.
fn find_original<V: PartitionView>(
    view: &V,
    key: &[u8],
    id: &[u8],
    event: &Event,
    fingerprint: Fingerprint,
    now_ms: i64,
    candidates: &mut Vec<Offset>,
) -> Result<Option<Original>> {
    let window = view.dedup_window_ms() as i64;
    candidates.clear();
    let pending = view.id_candidates(fingerprint, now_ms, candidates)?;
    for (index, offset) in candidates.iter().enumerate() {
        let found = view.with_event_at(*offset, |stored| {
            let in_window = index < pending || now_ms.saturating_sub(stored.timestamp_ms) < window;
            (stored.key == key && stored.idempotency_id == Some(id) && in_window).then(|| Original {
                offset: *offset,
                sequence: stored.sequence,
                timestamp_ms: stored.timestamp_ms,
                published: stored.published,
                same_content: stored.same_content(event),
            })
        })?;
        if let Some(Some(original)) = found {
            return Ok(Some(original));
        }
    }
    Ok(None)
}

fn id_reused<V: PartitionView>(view: &V, index: usize, original: &Original) -> Error {
    Error::IdempotencyIdReused {
        index,
        partition: view.partition(),
        offset: original.offset,
        sequence: original.sequence,
    }
}

//! Stored events as readers see them, without the disk format.
//!
//! [`EventRef`] borrows one stored event, with its headers as an iterator
//! ([`Headers`]). [`StoredEvents`] is an owned batch of one partition's events,
//! the answer of a scan or a key read: read from the engine, it holds the
//! segments' memory mappings (by `Arc`) and where each event's fields are in
//! them, so an encoder writes each event straight from the mapped bytes with no
//! per-event allocation; a backend without mappings (a remote log) fills the
//! same type from owned events ([`StoredEvents::from_events`]).
//! [`EventFilter`] is the one filter by event types and key prefix, used by
//! subscriptions and webhook delivery and applied where the events are read.
//!
//! Invariant: the frames of a mapped batch were decoded, CRC checked, when the
//! batch was read, and the bytes below a segment's published size never change
//! while the process runs; iterating re-slices them without decoding again.
//! Holding a batch keeps its segments' mappings alive, as any reader does.

use std::collections::HashSet;
use std::sync::Arc;

use crate::event::{Offset, PartitionId, ProducerStamp, RecordedEvent, Sequence};
use crate::format::record::{self, RecordView};
use crate::segment::Segment;

/// One stored event, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    /// The partition holding the event.
    pub partition: PartitionId,
    /// The event's offset within its partition.
    pub offset: Offset,
    /// The append timestamp, Unix milliseconds.
    pub timestamp_ms: i64,
    /// The event's key.
    pub key: &'a [u8],
    /// The event's sequence within its key, dense from 0.
    pub sequence: Sequence,
    /// The event's type name.
    pub event_type: &'a str,
    /// The payload bytes.
    pub payload: &'a [u8],
    /// The headers, in the order they were appended.
    pub headers: Headers<'a>,
    /// The idempotency id, or `None` when the event had none.
    pub idempotency_id: Option<&'a [u8]>,
    /// The producer stamp of the append that wrote this event, if any.
    pub producer: Option<ProducerStamp>,
}

impl<'a> EventRef<'a> {
    /// The event of a decoded record of `partition`.
    pub(crate) fn from_view(partition: PartitionId, view: &RecordView<'a>) -> EventRef<'a> {
        EventRef {
            partition,
            offset: view.offset,
            timestamp_ms: view.timestamp_ms,
            key: view.key,
            sequence: view.sequence,
            event_type: view.event_type,
            payload: view.payload,
            headers: Headers(HeadersRepr::Block(view.headers)),
            idempotency_id: view.idempotency_id,
            producer: view.producer,
        }
    }

    /// An owned copy.
    pub fn to_recorded(&self) -> RecordedEvent {
        RecordedEvent {
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.to_vec(),
            sequence: self.sequence,
            event_type: self.event_type.to_string(),
            payload: self.payload.to_vec(),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_vec()))
                .collect(),
            idempotency_id: self.idempotency_id.map(<[u8]>::to_vec),
            producer: self.producer,
        }
    }
}

impl RecordedEvent {
    /// The event, borrowed.
    pub fn as_event_ref(&self) -> EventRef<'_> {
        EventRef {
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: &self.key,
            sequence: self.sequence,
            event_type: &self.event_type,
            payload: &self.payload,
            headers: Headers::from_pairs(&self.headers),
            idempotency_id: self.idempotency_id.as_deref(),
            producer: self.producer,
        }
    }
}

/// An event's headers, borrowed: (name, value) pairs in appended order.
#[derive(Clone, Copy)]
pub struct Headers<'a>(HeadersRepr<'a>);

#[derive(Clone, Copy)]
enum HeadersRepr<'a> {
    /// A stored header block, validated when its record was decoded.
    Block(&'a [u8]),
    /// Owned pairs.
    Pairs(&'a [(String, Vec<u8>)]),
}

impl<'a> Headers<'a> {
    /// Headers over owned pairs.
    pub fn from_pairs(pairs: &'a [(String, Vec<u8>)]) -> Headers<'a> {
        Headers(HeadersRepr::Pairs(pairs))
    }

    /// The (name, value) pairs in appended order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let (block, pairs): (&'a [u8], &'a [(String, Vec<u8>)]) = match self.0 {
            HeadersRepr::Block(block) => (block, &[]),
            HeadersRepr::Pairs(pairs) => (&[], pairs),
        };
        // A block was validated when its record was decoded, so nothing is
        // dropped here in practice; a malformed one would end early.
        record::headers(block).map_while(Result::ok).chain(
            pairs
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_slice())),
        )
    }

    /// The value of the first header named `name`.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.iter()
            .find(|(header, _)| *header == name)
            .map(|(_, value)| value)
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        match self.0 {
            HeadersRepr::Block(block) => block.is_empty(),
            HeadersRepr::Pairs(pairs) => pairs.is_empty(),
        }
    }
}

impl std::fmt::Debug for Headers<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for Headers<'_> {
    fn eq(&self, other: &Headers<'_>) -> bool {
        self.iter().eq(other.iter())
    }
}

/// Which events a reader wants: any of a set of event types (all when empty)
/// and keys starting with a prefix (all when empty). Cloning is cheap.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// `None` accepts everything, so an unfiltered scan pays no per-event check.
    inner: Option<Arc<FilterParts>>,
}

#[derive(Debug)]
struct FilterParts {
    event_types: HashSet<String>,
    key_prefix: Vec<u8>,
}

impl EventFilter {
    /// The filter that accepts every event.
    pub fn all() -> EventFilter {
        EventFilter::default()
    }

    /// Events of any of `event_types` (every type when empty) whose key starts
    /// with `key_prefix` (every key when empty).
    pub fn new(event_types: impl IntoIterator<Item = String>, key_prefix: impl Into<Vec<u8>>) -> EventFilter {
        let event_types: HashSet<String> = event_types.into_iter().collect();
        let key_prefix = key_prefix.into();
        if event_types.is_empty() && key_prefix.is_empty() {
            return EventFilter::all();
        }
        EventFilter {
            inner: Some(Arc::new(FilterParts {
                event_types,
                key_prefix,
            })),
        }
    }

    /// Whether every event passes.
    pub fn is_all(&self) -> bool {
        self.inner.is_none()
    }

    /// Whether an event of `event_type` with `key` passes.
    #[inline]
    pub fn accepts(&self, event_type: &str, key: &[u8]) -> bool {
        let Some(parts) = &self.inner else {
            return true;
        };
        // The emptiness checks keep a filter on one dimension free of a hash
        // or a `memcmp` call per event on the other.
        (parts.event_types.is_empty() || parts.event_types.contains(event_type))
            && (parts.key_prefix.is_empty() || key.starts_with(&parts.key_prefix))
    }

    /// Whether `event` passes.
    pub fn accepts_event(&self, event: &EventRef<'_>) -> bool {
        self.accepts(event.event_type, event.key)
    }
}

/// An owned batch of one partition's stored events, in the order read: offset
/// order for a scan, the requested direction for a key read.
pub struct StoredEvents {
    partition: PartitionId,
    next_offset: Offset,
    events: Events,
}

enum Events {
    /// Frames in memory-mapped segments.
    Mapped {
        segments: Vec<Arc<Segment>>,
        frames: Vec<Frame>,
    },
    /// Owned events (a backend without mappings).
    Owned(Vec<RecordedEvent>),
}

/// Where one event's fields are: the fixed ones copied, the variable ones
/// (key, type, idempotency id, header block, payload, stored in that order)
/// by position in their segment.
struct Frame {
    segment: u32,
    variable_position: u64,
    offset: Offset,
    timestamp_ms: i64,
    sequence: Sequence,
    producer: Option<ProducerStamp>,
    key_len: u16,
    type_len: u8,
    id_len: u8,
    headers_len: u16,
    payload_len: u32,
}

impl Frame {
    fn variable_len(&self) -> u64 {
        self.key_len as u64
            + self.type_len as u64
            + self.id_len as u64
            + self.headers_len as u64
            + self.payload_len as u64
    }
}

impl StoredEvents {
    /// A batch of owned events of `partition`, in the order read; a scan
    /// continues at `next_offset`.
    pub fn from_events(
        partition: PartitionId,
        events: Vec<RecordedEvent>,
        next_offset: Offset,
    ) -> StoredEvents {
        debug_assert!(
            events.iter().all(|event| event.partition == partition),
            "a batch holds one partition's events"
        );
        StoredEvents {
            partition,
            next_offset,
            events: Events::Owned(events),
        }
    }

    /// An empty mapped batch, filled by the partition's read path.
    pub(crate) fn mapped(partition: PartitionId) -> StoredEvents {
        StoredEvents {
            partition,
            next_offset: Offset(0),
            events: Events::Mapped {
                segments: Vec::new(),
                frames: Vec::new(),
            },
        }
    }

    /// Adds the record `view`, decoded from `segment` at `position` with its
    /// CRC checked.
    pub(crate) fn push_mapped(
        &mut self,
        segment: &Arc<Segment>,
        position: u64,
        size: u64,
        view: &RecordView<'_>,
    ) {
        let Events::Mapped { segments, frames } = &mut self.events else {
            unreachable!("mapped records go into a mapped batch");
        };
        if !segments.last().is_some_and(|last| Arc::ptr_eq(last, segment)) {
            segments.push(Arc::clone(segment));
        }
        let id_len = view.idempotency_id.map_or(0, <[u8]>::len);
        let variable_len =
            (view.key.len() + view.event_type.len() + id_len + view.headers.len() + view.payload.len())
                as u64;
        // The variable part ends the frame.
        let variable_position = position + size - variable_len;
        debug_assert_eq!(
            segment
                .published_bytes(variable_position, variable_position + view.key.len() as u64)
                .as_ptr(),
            view.key.as_ptr(),
            "the key starts the variable part of a frame"
        );
        let frame = Frame {
            segment: (segments.len() - 1) as u32,
            variable_position,
            offset: view.offset,
            timestamp_ms: view.timestamp_ms,
            sequence: view.sequence,
            producer: view.producer,
            key_len: view.key.len() as u16,
            type_len: view.event_type.len() as u8,
            id_len: id_len as u8,
            headers_len: view.headers.len() as u16,
            payload_len: view.payload.len() as u32,
        };
        debug_assert_eq!(frame.variable_len(), variable_len);
        frames.push(frame);
    }

    /// Sets where a scan continues.
    pub(crate) fn set_next_offset(&mut self, next_offset: Offset) {
        self.next_offset = next_offset;
    }

    /// The partition of the events.
    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    /// Where a scan continues: the offset after the last event it examined,
    /// events the filter left out included. For a key read, the offset after
    /// the last event returned (0 when none).
    pub fn next_offset(&self) -> Offset {
        self.next_offset
    }

    /// How many events the batch holds.
    pub fn len(&self) -> usize {
        match &self.events {
            Events::Mapped { frames, .. } => frames.len(),
            Events::Owned(events) => events.len(),
        }
    }

    /// Whether the batch holds no events.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The events, borrowed, in the order read.
    pub fn iter(&self) -> impl Iterator<Item = EventRef<'_>> + '_ {
        let partition = self.partition;
        let (segments, frames, owned): (&[Arc<Segment>], &[Frame], &[RecordedEvent]) = match &self.events {
            Events::Mapped { segments, frames } => (segments, frames, &[]),
            Events::Owned(events) => (&[], &[], events),
        };
        frames
            .iter()
            .map(move |frame| mapped_event(partition, segments, frame))
            .chain(owned.iter().map(RecordedEvent::as_event_ref))
    }

    /// The events, owned.
    pub fn into_recorded(self) -> Vec<RecordedEvent> {
        match self.events {
            Events::Owned(events) => events,
            Events::Mapped { .. } => self.iter().map(|event| event.to_recorded()).collect(),
        }
    }
}

fn mapped_event<'a>(partition: PartitionId, segments: &'a [Arc<Segment>], frame: &Frame) -> EventRef<'a> {
    let start = frame.variable_position;
    let bytes = segments[frame.segment as usize].published_bytes(start, start + frame.variable_len());
    let (key, rest) = bytes.split_at(frame.key_len as usize);
    let (event_type, rest) = rest.split_at(frame.type_len as usize);
    let (id, rest) = rest.split_at(frame.id_len as usize);
    let (headers, payload) = rest.split_at(frame.headers_len as usize);
    debug_assert_eq!(payload.len(), frame.payload_len as usize);
    EventRef {
        partition,
        offset: frame.offset,
        timestamp_ms: frame.timestamp_ms,
        key,
        sequence: frame.sequence,
        // Checked when the frame was decoded; the bytes have not changed since.
        event_type: std::str::from_utf8(event_type).unwrap_or_default(),
        payload,
        headers: Headers(HeadersRepr::Block(headers)),
        idempotency_id: (!id.is_empty()).then_some(id),
        producer: frame.producer,
    }
}

impl std::fmt::Debug for StoredEvents {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StoredEvents")
            .field("partition", &self.partition)
            .field("next_offset", &self.next_offset)
            .field("events", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Durability, LogOptions, TopicOptions};
    use crate::event::{AppendRequest, Direction, Event};
    use crate::limits;
    use crate::log::Log;

    /// A log with one topic of one partition in segments of the smallest size,
    /// holding `count` events of 3 types over 7 keys, some with headers and ids.
    fn sample_log(count: u64) -> (tempfile::TempDir, Log, crate::topic::Topic) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = Log::open(dir.path(), LogOptions::default()).expect("open");
        let options = TopicOptions::default()
            .partitions(1)
            .durability(Durability::None)
            .segment_size_bytes_max(limits::SEGMENT_SIZE_BYTES_MIN);
        let topic = log.create_topic("t", options).expect("topic");
        for index in 0..count {
            let mut event = Event::new(
                format!("type-{}", index % 3),
                vec![index as u8; index as usize * 7],
            );
            if index % 2 == 0 {
                event = event
                    .with_header("a", index.to_le_bytes())
                    .with_header("b", Vec::new());
            }
            if index % 5 == 0 {
                event = event.with_idempotency_id(format!("id-{index}"));
            }
            topic
                .append_request(AppendRequest::new(format!("key-{}", index % 7), vec![event]))
                .expect("append");
        }
        (dir, log, topic)
    }

    #[test]
    fn mapped_batches_hold_what_copying_reads_return() {
        // Goal: events sliced from the segments' mappings are the stored events,
        // field for field, across segment boundaries; the filter keeps exactly
        // the matching events while the batch still continues after every event
        // examined. Method: compare with the copying read, and with a filter
        // applied by hand.
        let (_dir, log, topic) = sample_log(300);
        assert!(topic.partition_infos()[0].segments_count > 2, "several segments");
        let partition = PartitionId(0);
        let all = topic
            .scan_events(partition, Offset(0), usize::MAX, u64::MAX, &EventFilter::all())
            .expect("scan");
        let copied = topic
            .read(partition, Offset(0), usize::MAX, u64::MAX)
            .expect("read");
        assert_eq!(copied.len(), 300);
        assert_eq!(all.next_offset(), Offset(300));
        assert_eq!(all.len(), copied.len());
        for (event, expected) in all.iter().zip(&copied) {
            assert_eq!(event.to_recorded(), *expected);
            assert_eq!(event.headers, expected.as_event_ref().headers);
        }
        assert_eq!(all.into_recorded(), copied);

        let filter = EventFilter::new(["type-1".to_string(), "type-2".to_string()], b"key-3".to_vec());
        let filtered = topic
            .scan_events(partition, Offset(10), 100, u64::MAX, &filter)
            .expect("scan");
        let expected: Vec<RecordedEvent> = copied[10..110]
            .iter()
            .filter(|event| event.event_type != "type-0" && event.key == b"key-3")
            .cloned()
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(filtered.next_offset(), Offset(110));
        assert_eq!(filtered.into_recorded(), expected);
        drop(topic);
        log.close().expect("close");
    }

    #[test]
    fn key_reads_as_batches_follow_the_direction() {
        // Goal: a key's history as a mapped batch is the copying read's, in
        // both directions, and ends after the last event returned.
        let (_dir, log, topic) = sample_log(100);
        for direction in [Direction::Forwards, Direction::Backwards] {
            let batch = topic
                .read_key_events(b"key-2", Some(Sequence(3)), direction, 5)
                .expect("read key");
            let copied = topic
                .read_key(b"key-2", Some(Sequence(3)), direction, 5)
                .expect("read key");
            assert!(!copied.is_empty());
            let last = copied.last().expect("an event").offset;
            assert_eq!(batch.next_offset(), last.next());
            assert_eq!(batch.into_recorded(), copied, "{direction:?}");
        }
        drop(topic);
        log.close().expect("close");
    }

    #[test]
    fn filters_accept_by_type_and_key_prefix() {
        // Goal: empty dimensions accept everything, set ones must both match.
        assert!(EventFilter::all().accepts("x", b"k"));
        assert!(EventFilter::new(Vec::new(), Vec::new()).is_all());
        let types = EventFilter::new(["a".to_string()], Vec::new());
        assert!(types.accepts("a", b"anything"));
        assert!(!types.accepts("b", b"anything"));
        let prefix = EventFilter::new(Vec::new(), b"or".to_vec());
        assert!(prefix.accepts("any", b"order-1"));
        assert!(!prefix.accepts("any", b"o"));
        let both = EventFilter::new(["a".to_string()], b"or".to_vec());
        assert!(both.accepts("a", b"order"));
        assert!(!both.accepts("b", b"order"));
        assert!(!both.accepts("a", b"invoice"));
    }

    #[test]
    fn owned_batches_borrow_their_events() {
        // Goal: a batch filled from owned events (a backend without mappings)
        // yields them unchanged.
        let event = RecordedEvent {
            partition: PartitionId(4),
            offset: Offset(9),
            timestamp_ms: 17,
            key: b"k".to_vec(),
            sequence: Sequence(2),
            event_type: "t".to_string(),
            payload: b"p".to_vec(),
            headers: vec![("h".to_string(), b"v".to_vec())],
            idempotency_id: Some(b"i".to_vec()),
            producer: None,
        };
        let batch = StoredEvents::from_events(PartitionId(4), vec![event.clone()], Offset(10));
        assert_eq!(batch.len(), 1);
        assert_eq!(batch.next_offset(), Offset(10));
        let borrowed: Vec<EventRef<'_>> = batch.iter().collect();
        assert_eq!(borrowed[0].headers.get("h"), Some(b"v".as_slice()));
        assert_eq!(borrowed[0].to_recorded(), event);
        assert_eq!(batch.into_recorded(), vec![event]);
    }
}

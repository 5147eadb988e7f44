//! Hand-written protobuf for the read path's hottest message.
//!
//! A subscription sends `stele.v1.EventBatch` messages of up to thousands of
//! events. Building a generated `RecordedEvent` per stored record costs five or
//! more allocations and a second copy of every byte before prost encodes it
//! again; here each record is encoded once, straight from the memory-mapped
//! frame (an [`EventRef`] of a batch over the segments' mappings) into the
//! batch's buffer. `build.rs` maps `stele.v1.EventBatch` to
//! [`EventBatch`] (prost `extern_path`), so the generated `SubscribeResponse`
//! carries it, and clients decode it into generated `RecordedEvent`s as before.
//!
//! Invariant: the bytes [`EventBatch::push_event`] writes decode, with the
//! generated types, to exactly what `convert::event_to_proto_recorded` builds for
//! the same event (checked by the tests below); the wire format is the proto's,
//! so clients in other languages see no difference.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};

use crate::proto;
use stele_engine::view::EventRef;

/// Field numbers of `stele.v1.EventBatch`.
const BATCH_PARTITION: u32 = 1;
const BATCH_EVENTS: u32 = 2;
const BATCH_NEXT_OFFSET: u32 = 3;

/// Field numbers of `stele.v1.RecordedEvent`.
const EVENT_PARTITION: u32 = 1;
const EVENT_OFFSET: u32 = 2;
const EVENT_TIMESTAMP_MS: u32 = 3;
const EVENT_KEY: u32 = 4;
const EVENT_SEQUENCE: u32 = 5;
const EVENT_TYPE: u32 = 6;
const EVENT_PAYLOAD: u32 = 7;
const EVENT_HEADERS: u32 = 8;
const EVENT_IDEMPOTENCY_ID: u32 = 9;
const EVENT_PRODUCER: u32 = 10;

/// Field numbers of a map entry and of `stele.v1.ProducerStamp`.
const ENTRY_KEY: u32 = 1;
const ENTRY_VALUE: u32 = 2;
const STAMP_PRODUCER_ID: u32 = 1;
const STAMP_EPOCH: u32 = 2;
const STAMP_SEQUENCE: u32 = 3;

/// `stele.v1.EventBatch`: the events of one partition, in offset order.
///
/// Decoded batches (clients) hold their events in `events`; batches built by
/// the server hold them already encoded, appended with [`EventBatch::push_event`].
#[derive(Clone, PartialEq, Default)]
pub struct EventBatch {
    /// The partition the events come from.
    pub partition: u32,
    /// Decoded events (empty on the server, which encodes them directly).
    pub events: Vec<proto::RecordedEvent>,
    /// Where this partition continues: the offset after the last event examined.
    pub next_offset: u64,
    /// Events encoded as complete `events` fields (key, length, body).
    encoded: Vec<u8>,
    encoded_count: usize,
}

impl EventBatch {
    /// An empty batch of `partition`.
    pub fn new(partition: u32) -> EventBatch {
        EventBatch {
            partition,
            ..EventBatch::default()
        }
    }

    /// Appends a stored event as an `events` entry, encoded straight from its
    /// borrowed bytes. The event's own partition is written, as the generated
    /// path does.
    pub fn push_event(&mut self, event: &EventRef<'_>) {
        debug_assert_eq!(
            event.partition.0, self.partition,
            "an event of the batch's partition"
        );
        let body_len = event_body_len(event);
        let buf = &mut self.encoded;
        buf.reserve(
            encoding::key_len(BATCH_EVENTS) + encoding::encoded_len_varint(body_len as u64) + body_len,
        );
        let start = buf.len();
        encoding::encode_key(BATCH_EVENTS, WireType::LengthDelimited, buf);
        encoding::encode_varint(body_len as u64, buf);
        let body_start = buf.len();
        encode_event_body(event, buf);
        debug_assert_eq!(buf.len() - body_start, body_len, "event body length");
        debug_assert!(buf.len() > start);
        self.encoded_count += 1;
    }

    /// Events in the batch, decoded or encoded.
    pub fn len(&self) -> usize {
        self.events.len() + self.encoded_count
    }

    /// Whether the batch has no events.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for EventBatch {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EventBatch")
            .field("partition", &self.partition)
            .field("events", &self.events)
            .field("encoded_events", &self.encoded_count)
            .field("encoded_bytes", &self.encoded.len())
            .field("next_offset", &self.next_offset)
            .finish()
    }
}

impl prost::Message for EventBatch {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if self.partition != 0 {
            encoding::uint32::encode(BATCH_PARTITION, &self.partition, buf);
        }
        for event in &self.events {
            encoding::message::encode(BATCH_EVENTS, event, buf);
        }
        buf.put_slice(&self.encoded);
        if self.next_offset != 0 {
            encoding::uint64::encode(BATCH_NEXT_OFFSET, &self.next_offset, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        context: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match tag {
            BATCH_PARTITION => encoding::uint32::merge(wire_type, &mut self.partition, buf, context),
            BATCH_EVENTS => encoding::message::merge_repeated(wire_type, &mut self.events, buf, context),
            BATCH_NEXT_OFFSET => encoding::uint64::merge(wire_type, &mut self.next_offset, buf, context),
            _ => encoding::skip_field(wire_type, tag, buf, context),
        }
    }

    fn encoded_len(&self) -> usize {
        let partition = if self.partition != 0 {
            encoding::uint32::encoded_len(BATCH_PARTITION, &self.partition)
        } else {
            0
        };
        let next_offset = if self.next_offset != 0 {
            encoding::uint64::encoded_len(BATCH_NEXT_OFFSET, &self.next_offset)
        } else {
            0
        };
        partition
            + encoding::message::encoded_len_repeated(BATCH_EVENTS, &self.events)
            + self.encoded.len()
            + next_offset
    }

    fn clear(&mut self) {
        *self = EventBatch::default();
    }
}

fn varint_field_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        encoding::key_len(tag) + encoding::encoded_len_varint(value)
    }
}

fn bytes_field_len(tag: u32, value: &[u8]) -> usize {
    if value.is_empty() {
        0
    } else {
        encoding::key_len(tag) + encoding::encoded_len_varint(value.len() as u64) + value.len()
    }
}

fn put_varint_field(tag: u32, value: u64, buf: &mut Vec<u8>) {
    if value != 0 {
        encoding::encode_key(tag, WireType::Varint, buf);
        encoding::encode_varint(value, buf);
    }
}

fn put_bytes_field(tag: u32, value: &[u8], buf: &mut Vec<u8>) {
    if !value.is_empty() {
        encoding::encode_key(tag, WireType::LengthDelimited, buf);
        encoding::encode_varint(value.len() as u64, buf);
        buf.put_slice(value);
    }
}

/// The length of a nested message field with a body of `body_len` bytes.
fn nested_len(tag: u32, body_len: usize) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(body_len as u64) + body_len
}

fn header_entry_len(name: &str, value: &[u8]) -> usize {
    bytes_field_len(ENTRY_KEY, name.as_bytes()) + bytes_field_len(ENTRY_VALUE, value)
}

fn stamp_body_len(stamp: &stele_engine::event::ProducerStamp) -> usize {
    varint_field_len(STAMP_PRODUCER_ID, stamp.producer.0)
        + varint_field_len(STAMP_EPOCH, u64::from(stamp.epoch.0))
        + varint_field_len(STAMP_SEQUENCE, stamp.sequence.0)
}

fn event_body_len(event: &EventRef<'_>) -> usize {
    let headers: usize = event
        .headers
        .iter()
        .map(|(name, value)| nested_len(EVENT_HEADERS, header_entry_len(name, value)))
        .sum();
    varint_field_len(EVENT_PARTITION, u64::from(event.partition.0))
        + varint_field_len(EVENT_OFFSET, event.offset.0)
        + varint_field_len(EVENT_TIMESTAMP_MS, event.timestamp_ms as u64)
        + bytes_field_len(EVENT_KEY, event.key)
        + varint_field_len(EVENT_SEQUENCE, event.sequence.0)
        + bytes_field_len(EVENT_TYPE, event.event_type.as_bytes())
        + bytes_field_len(EVENT_PAYLOAD, event.payload)
        + headers
        + bytes_field_len(EVENT_IDEMPOTENCY_ID, event.idempotency_id.unwrap_or_default())
        + event
            .producer
            .as_ref()
            .map_or(0, |stamp| nested_len(EVENT_PRODUCER, stamp_body_len(stamp)))
}

fn encode_event_body(event: &EventRef<'_>, buf: &mut Vec<u8>) {
    put_varint_field(EVENT_PARTITION, u64::from(event.partition.0), buf);
    put_varint_field(EVENT_OFFSET, event.offset.0, buf);
    // int64 is encoded as its two's complement varint.
    put_varint_field(EVENT_TIMESTAMP_MS, event.timestamp_ms as u64, buf);
    put_bytes_field(EVENT_KEY, event.key, buf);
    put_varint_field(EVENT_SEQUENCE, event.sequence.0, buf);
    put_bytes_field(EVENT_TYPE, event.event_type.as_bytes(), buf);
    put_bytes_field(EVENT_PAYLOAD, event.payload, buf);
    for (name, value) in event.headers.iter() {
        encoding::encode_key(EVENT_HEADERS, WireType::LengthDelimited, buf);
        encoding::encode_varint(header_entry_len(name, value) as u64, buf);
        put_bytes_field(ENTRY_KEY, name.as_bytes(), buf);
        put_bytes_field(ENTRY_VALUE, value, buf);
    }
    put_bytes_field(
        EVENT_IDEMPOTENCY_ID,
        event.idempotency_id.unwrap_or_default(),
        buf,
    );
    if let Some(stamp) = &event.producer {
        // Present even when every field is zero, so the receiver sees `Some`.
        encoding::encode_key(EVENT_PRODUCER, WireType::LengthDelimited, buf);
        encoding::encode_varint(stamp_body_len(stamp) as u64, buf);
        put_varint_field(STAMP_PRODUCER_ID, stamp.producer.0, buf);
        put_varint_field(STAMP_EPOCH, u64::from(stamp.epoch.0), buf);
        put_varint_field(STAMP_SEQUENCE, stamp.sequence.0, buf);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::convert;
    use stele_engine::event::{
        Epoch, Offset, PartitionId, ProducerId, ProducerStamp, RecordedEvent, Sequence,
    };

    proptest! {
        #[test]
        fn encoded_events_decode_to_what_the_generated_path_builds(
            partition in prop_oneof![Just(0u32), any::<u32>()],
            offset in prop_oneof![Just(0u64), any::<u64>()],
            timestamp_ms in prop_oneof![Just(0i64), any::<i64>()],
            sequence in prop_oneof![Just(0u64), any::<u64>()],
            key in proptest::collection::vec(any::<u8>(), 1..40),
            event_type in "[a-z.]{1,20}",
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            headers in proptest::collection::btree_map("[a-z-]{1,10}", proptest::collection::vec(any::<u8>(), 0..20), 0..4),
            idempotency_id in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..30)),
            producer in proptest::option::of((any::<u64>(), any::<u32>(), any::<u64>())),
            next_offset in any::<u64>(),
        ) {
            // Goal: the hand-written encoding is the generated one, field for
            // field, including zero fields and a producer stamp of zeros.
            let event = RecordedEvent {
                partition: PartitionId(partition),
                offset: Offset(offset),
                timestamp_ms,
                key,
                sequence: Sequence(sequence),
                event_type,
                payload,
                headers: headers.into_iter().collect(),
                idempotency_id,
                producer: producer.map(|(producer, epoch, sequence)| ProducerStamp {
                    producer: ProducerId(producer),
                    epoch: Epoch(epoch),
                    sequence: Sequence(sequence),
                }),
            };
            let view = event.as_event_ref();
            let mut batch = EventBatch::new(partition);
            batch.push_event(&view);
            batch.push_event(&view);
            batch.next_offset = next_offset;
            prop_assert_eq!(batch.len(), 2);
            let bytes = batch.encode_to_vec();
            prop_assert_eq!(bytes.len(), batch.encoded_len());
            let decoded = EventBatch::decode(bytes.as_slice()).expect("decodes");
            let expected = convert::stored_to_proto(&view);
            prop_assert_eq!(decoded.partition, partition);
            prop_assert_eq!(decoded.next_offset, next_offset);
            prop_assert_eq!(&decoded.events, &vec![expected.clone(), expected]);
            // Re-encoding the decoded form gives the same bytes length.
            prop_assert_eq!(decoded.encoded_len(), bytes.len());
        }
    }

    #[test]
    fn events_borrowed_from_mapped_frames_encode_as_the_generated_path() {
        // Goal: the zero-copy path (events sliced from segment mappings, headers
        // as stored blocks, across segment boundaries) writes what the generated
        // types build from owned copies. Method: a log with tiny segments holds
        // events with and without headers, ids and producer stamps; one scan's
        // batch is encoded both ways.
        use stele_engine::config::{Durability, TopicOptions};
        use stele_engine::event::{AppendRequest, Event};
        use stele_engine::{EventFilter, Log, LogOptions};

        let dir = tempfile::tempdir().expect("temporary directory");
        let log = Log::open(dir.path(), LogOptions::default()).expect("open");
        let options = TopicOptions::default()
            .partitions(1)
            .durability(Durability::None)
            .segment_size_bytes_max(stele_engine::limits::SEGMENT_SIZE_BYTES_MIN);
        let topic = log.create_topic("t", options).expect("topic");
        let producer = topic.open_producer("p").expect("producer");
        let payload = vec![7u8; 2_000];
        for index in 0..200u64 {
            let mut event = Event::new(
                format!("type-{}", index % 3),
                payload[..(index as usize * 10)].to_vec(),
            );
            if index % 2 == 0 {
                event = event
                    .with_header("trace", index.to_le_bytes())
                    .with_header("bin", vec![0xff]);
            }
            if index % 5 == 0 {
                event = event.with_idempotency_id(format!("id-{index}"));
            }
            let mut request = AppendRequest::new(format!("key-{}", index % 7), vec![event]);
            if index % 4 == 0 {
                request = request.stamped(ProducerStamp {
                    producer: producer.0,
                    epoch: producer.1,
                    sequence: Sequence(index / 4),
                });
            }
            topic.append_request(request).expect("append");
        }
        assert!(
            topic.partition_infos()[0].segments_count > 1,
            "the events span segments"
        );
        let events = topic
            .scan_events(
                PartitionId(0),
                Offset(0),
                usize::MAX,
                u64::MAX,
                &EventFilter::all(),
            )
            .expect("scan");
        assert_eq!(events.len(), 200);
        assert_eq!(events.next_offset(), Offset(200));
        let mut batch = EventBatch::new(0);
        for event in events.iter() {
            batch.push_event(&event);
        }
        let decoded = EventBatch::decode(batch.encode_to_vec().as_slice()).expect("decodes");
        let expected: Vec<proto::RecordedEvent> = topic
            .read(PartitionId(0), Offset(0), usize::MAX, u64::MAX)
            .expect("read")
            .iter()
            .map(|event| convert::stored_to_proto(&event.as_event_ref()))
            .collect();
        assert!(
            expected
                .iter()
                .any(|event| event.producer.is_some() && !event.headers.is_empty())
        );
        assert_eq!(decoded.events, expected);
        drop(topic);
        log.close().expect("close");
    }

    #[test]
    fn unknown_batch_fields_are_skipped() {
        // Goal: a newer server's extra field does not break an older client.
        let mut bytes = EventBatch {
            partition: 3,
            next_offset: 9,
            ..EventBatch::default()
        }
        .encode_to_vec();
        encoding::uint64::encode(15, &77, &mut bytes);
        let decoded = EventBatch::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded.partition, 3);
        assert_eq!(decoded.next_offset, 9);
        assert!(decoded.is_empty());
    }
}

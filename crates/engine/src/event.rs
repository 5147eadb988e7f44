//! Events and the identifiers that cross module boundaries.
//!
//! Words have one meaning each (see ARCHITECTURE.md): an **offset** is the logical
//! number of a record within a partition, a **sequence** is the number of an event
//! within its key, a **position** is a byte position within a segment file.

use std::fmt;

macro_rules! id_newtype {
    ($(#[$meta:meta])* $name:ident($inner:ty)) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_newtype!(
    /// The logical number of a record within a partition: dense, from 0.
    Offset(u64)
);
id_newtype!(
    /// A partition's index within its topic.
    PartitionId(u32)
);
id_newtype!(
    /// An idempotent producer's id within a topic; 0 is never assigned.
    ProducerId(u64)
);
id_newtype!(
    /// A producer's epoch: opening the same producer name again bumps it.
    Epoch(u32)
);
id_newtype!(
    /// A number in a dense series from 0: an event's number within its key (the
    /// key sequence), or an idempotent producer's number for its appends to one
    /// partition (the producer sequence).
    Sequence(u64)
);

impl Sequence {
    /// The next sequence.
    pub fn next(self) -> Sequence {
        Sequence(self.0 + 1)
    }
}

/// The sequence `count` places further on (the sequences of an append's events
/// are its first one plus their index).
impl std::ops::Add<u64> for Sequence {
    type Output = Sequence;

    fn add(self, count: u64) -> Sequence {
        Sequence(self.0 + count)
    }
}

impl Offset {
    /// The next offset.
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

/// One event to append.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The event's type name, e.g. `payment_failed`; 1 to 255 bytes of UTF-8.
    pub event_type: String,
    /// Opaque payload bytes.
    pub payload: Vec<u8>,
    /// Small metadata map; names are UTF-8, values are bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// An id that makes retries of this event harmless within the topic's dedup
    /// window. It names one event of one key: the same id on another key is an
    /// unrelated event, and the same key and id with another type, payload or
    /// headers is refused ([`crate::Error::IdempotencyIdReused`]).
    pub idempotency_id: Option<Vec<u8>>,
}

impl Event {
    /// An event with a type and a payload, no headers and no idempotency id.
    pub fn new(event_type: impl Into<String>, payload: impl Into<Vec<u8>>) -> Event {
        Event {
            event_type: event_type.into(),
            payload: payload.into(),
            headers: Vec::new(),
            idempotency_id: None,
        }
    }

    /// Sets the idempotency id.
    pub fn with_idempotency_id(mut self, id: impl Into<Vec<u8>>) -> Event {
        self.idempotency_id = Some(id.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Event {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// The condition an append states about its key's last sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpectedSequence {
    /// No condition.
    #[default]
    Any,
    /// The key has no events yet.
    NoEvents,
    /// The key's last sequence is exactly this.
    Exact(Sequence),
}

impl fmt::Display for ExpectedSequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedSequence::Any => f.write_str("any"),
            ExpectedSequence::NoEvents => f.write_str("no events"),
            ExpectedSequence::Exact(sequence) => sequence.fmt(f),
        }
    }
}

/// An idempotent producer's stamp on one append: the producer, its epoch, and the
/// producer's sequence number for the target partition (0, 1, 2, ... per partition).
///
/// The first append of an epoch in a partition carries sequence 0, and so does the
/// next append after the partition forgot the producer (idle for
/// `producer_idle_ms_max`, or evicted); any other sequence is then refused with
/// [`crate::Error::ProducerOutOfOrder`] expecting 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    /// The producer's id, as registered in the topic.
    pub producer: ProducerId,
    /// The producer's epoch; an older epoch than the registered one is fenced.
    pub epoch: Epoch,
    /// The producer's sequence for the target partition, dense from 0.
    pub sequence: Sequence,
}

/// One atomic append: events for one key, with a condition and an optional stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendRequest {
    /// The key the events belong to; it also picks the partition. Must not be empty.
    pub key: Vec<u8>,
    /// The condition on the key's last sequence; [`ExpectedSequence::Any`] for none.
    pub expected: ExpectedSequence,
    /// The events, appended together or not at all; must not be empty.
    pub events: Vec<Event>,
    /// The idempotent producer's stamp; `None` for an unstamped append.
    pub producer: Option<ProducerStamp>,
}

impl AppendRequest {
    /// A request without condition or stamp.
    pub fn new(key: impl Into<Vec<u8>>, events: Vec<Event>) -> AppendRequest {
        AppendRequest {
            key: key.into(),
            expected: ExpectedSequence::Any,
            events,
            producer: None,
        }
    }

    /// Sets the expected sequence.
    pub fn expect(mut self, expected: ExpectedSequence) -> AppendRequest {
        self.expected = expected;
        self
    }

    /// Sets the producer stamp.
    pub fn stamped(mut self, stamp: ProducerStamp) -> AppendRequest {
        self.producer = Some(stamp);
        self
    }
}

/// The acknowledgement of an append: where its events are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendAck {
    /// The partition the events were appended to.
    pub partition: PartitionId,
    /// The offset of the first event; the others follow contiguously.
    pub first_offset: Offset,
    /// The key sequence of the first event.
    pub first_sequence: Sequence,
    /// The key sequence of the last event.
    pub last_sequence: Sequence,
    /// The append timestamp (Unix milliseconds) of the events.
    pub timestamp_ms: i64,
    /// True when the append was a retry of one already stored; the positions are
    /// those of the original, and they hold exactly the caller's events.
    pub duplicate: bool,
}

/// An event as stored, with the positions the engine assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// The partition holding the event.
    pub partition: PartitionId,
    /// The event's offset within its partition.
    pub offset: Offset,
    /// The append timestamp, Unix milliseconds.
    pub timestamp_ms: i64,
    /// The event's key.
    pub key: Vec<u8>,
    /// The event's sequence within its key, dense from 0.
    pub sequence: Sequence,
    /// The event's type name.
    pub event_type: String,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// The headers, in the order they were appended.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The idempotency id, or `None` when the event had none.
    pub idempotency_id: Option<Vec<u8>>,
    /// The producer stamp of the append that wrote this event, if any.
    pub producer: Option<ProducerStamp>,
}

/// Which way a key's history is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the given sequence towards the newest event.
    Forwards,
    /// From the given sequence towards the oldest event.
    Backwards,
}

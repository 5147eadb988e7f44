//! The public error type.
//!
//! Every layer has its own small error (`format::DecodeError` for bytes); they are
//! converted into [`Error`] at the boundary of the engine. Callers branch on
//! [`Error::kind`], never on message text.

use std::path::PathBuf;

use crate::event::{Epoch, Offset, PartitionId, ProducerId, Sequence};
use crate::format::DecodeError;

/// A result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error other than a full disk.
    #[error("I/O during {op} on {path}: {source}")]
    Io {
        /// The operation that failed, e.g. `"fdatasync segment"`.
        op: &'static str,
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The disk (or quota) is full. Nothing of the failed append was kept; appends
    /// work again once space is freed.
    #[error("disk full during {op} on {path}")]
    DiskFull {
        /// The operation that failed for lack of space.
        op: &'static str,
        /// The file or directory the operation was on.
        path: PathBuf,
    },
    /// Bytes on disk fail a check. Nothing from the damaged place is served.
    #[error("corruption in {path} at position {position}: {reason}")]
    Corruption {
        /// The damaged file.
        path: PathBuf,
        /// The byte position of the damage within the file.
        position: u64,
        /// The check that failed.
        reason: DecodeError,
    },
    /// A file is well-formed but disagrees with the rest of the data directory.
    #[error("inconsistent data in {path}: {reason}")]
    Inconsistent {
        /// The file that disagrees.
        path: PathBuf,
        /// What it disagrees with, in words.
        reason: String,
    },
    /// Options failed validation.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An argument is malformed (bad name, bad UTF-8, empty batch).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An argument exceeds a hard bound.
    #[error("{what} is {value}, above the limit of {max}")]
    LimitExceeded {
        /// The bounded quantity, e.g. `"payload size"`.
        what: &'static str,
        /// The argument's value (bytes or count).
        value: u64,
        /// The largest value allowed.
        max: u64,
    },
    /// No topic of that name exists.
    #[error("topic {0:?} not found")]
    TopicNotFound(String),
    /// A topic of that name exists already (with other settings, for `create`).
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// The key's last sequence is not what the append expected. Nothing was written.
    #[error("wrong expected sequence for key: expected {expected}, actual {}", display_sequence(*actual))]
    WrongExpectedSequence {
        /// The condition the append stated.
        expected: crate::event::ExpectedSequence,
        /// The key's last sequence, `None` when the key has no events.
        actual: Option<Sequence>,
    },
    /// Some but not all events of an append carry idempotency ids already seen.
    /// Nothing was written.
    #[error("{duplicates} of {events} events are duplicates of earlier events; nothing was written")]
    PartialDuplicate {
        /// How many events of the append are duplicates.
        duplicates: usize,
        /// How many events the append has.
        events: usize,
    },
    /// An event's idempotency id already names an earlier event of the same key within
    /// the dedup window, and this append is not a retry of it: the event type, payload
    /// or headers differ, or (for an append of several events) the events it names
    /// are not stored one after another in the order of this append. Also returned
    /// when a producer's retry (same producer, epoch and sequence) carries other
    /// events than the append stored under that sequence. Nothing was written.
    ///
    /// The position is that of the original event; an id on another key is never
    /// compared, since it names an unrelated event.
    #[error(
        "idempotency id of event {index} already names the event at offset {offset} (key sequence {sequence}) of partition {partition}, which differs; nothing was written"
    )]
    IdempotencyIdReused {
        /// The 0-based index, within the append, of the event that is not a retry.
        index: usize,
        /// The partition of the original event.
        partition: PartitionId,
        /// The offset of the original event.
        offset: Offset,
        /// The key sequence of the original event.
        sequence: Sequence,
    },
    /// An append carried the same idempotency id twice.
    #[error("idempotency id repeated within one append (events {first} and {second})")]
    RepeatedIdempotencyId {
        /// The 0-based index of the first event carrying the id.
        first: usize,
        /// The 0-based index of the later event repeating it.
        second: usize,
    },
    /// The producer was opened again with a newer epoch.
    #[error("producer {producer} fenced: epoch {epoch} < current {current}")]
    ProducerFenced {
        /// The fenced producer.
        producer: ProducerId,
        /// The stale epoch the append carried.
        epoch: Epoch,
        /// The producer's current epoch.
        current: Epoch,
    },
    /// The producer id is not registered in the topic, or its epoch is in the future.
    #[error("unknown producer {producer} epoch {epoch}")]
    UnknownProducer {
        /// The producer id the append carried.
        producer: ProducerId,
        /// The epoch the append carried.
        epoch: Epoch,
    },
    /// The producer's sequence is not the next one for that partition. A partition
    /// that does not know the producer in its epoch (its first append there, or
    /// the producer was forgotten after `producer_idle_ms_max` without appends, or
    /// evicted) expects 0: retries from before cannot be recognised any more, so
    /// the producer should re-open (a new epoch) and check what was stored.
    #[error(
        "out-of-order sequence for producer {producer} in partition {partition}: expected {expected}, got {got}"
    )]
    ProducerOutOfOrder {
        /// The producer.
        producer: ProducerId,
        /// The partition the append went to.
        partition: PartitionId,
        /// The producer sequence the partition expected next.
        expected: Sequence,
        /// The producer sequence the append carried.
        got: Sequence,
    },
    /// A read asked for an offset outside the partition's retained range.
    #[error("offset {requested} out of range [{earliest}, {high_watermark})")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: Offset,
        /// The earliest retained offset of the partition.
        earliest: Offset,
        /// The partition's high watermark (one past the newest acknowledged offset).
        high_watermark: Offset,
    },
    /// No cursor of that name exists in the topic.
    #[error("cursor {0:?} not found")]
    CursorNotFound(String),
    /// A cursor commit would move backwards without being asked to.
    #[error("cursor commit would move partition {partition} back from {committed} to {requested}")]
    CursorBackwards {
        /// The partition whose position would move back.
        partition: PartitionId,
        /// The cursor's committed offset in that partition.
        committed: Offset,
        /// The smaller offset the commit asked for.
        requested: Offset,
    },
    /// A cursor commit is past the partition's high watermark.
    #[error("cursor commit {requested} is past the high watermark {high_watermark} of partition {partition}")]
    CursorAheadOfHighWatermark {
        /// The partition of the commit.
        partition: PartitionId,
        /// The offset the commit asked for.
        requested: Offset,
        /// The partition's high watermark at the time of the commit.
        high_watermark: Offset,
    },
    /// An earlier fsync failed; the partition refuses writes until reopened.
    #[error("partition {partition} is poisoned after a failed fsync; reopen to recover")]
    Poisoned {
        /// The poisoned partition.
        partition: PartitionId,
    },
    /// Another process holds the data directory.
    #[error("data directory {path} is locked by another process")]
    Locked {
        /// The data directory.
        path: PathBuf,
    },
    /// The log or topic was closed.
    #[error("closed")]
    Closed,
    /// A distributed backend cannot serve the call now (no quorum, a timeout,
    /// its cluster unreachable); the outcome of a write is not known unless the
    /// reason says so. Retrying later is safe with idempotency ids.
    #[error("backend unavailable during {what}: {reason}")]
    Unavailable {
        /// What was being done, e.g. `"publish to a partition stream"`.
        what: &'static str,
        /// What the backend said.
        reason: String,
    },
    /// No webhook endpoint of that name exists.
    #[error("webhook {0:?} not found")]
    WebhookNotFound(String),
    /// A webhook endpoint of that name exists already.
    #[error("webhook {0:?} already exists")]
    WebhookExists(String),
    /// No consumer group of that name exists.
    #[error("consumer group {0:?} not found")]
    GroupNotFound(String),
    /// A consumer group of that name exists already.
    #[error("consumer group {0:?} already exists")]
    GroupExists(String),
    /// A settle names a delivery its member no longer holds (lease expired,
    /// member joined again, group seeked, settled already); nothing changed.
    #[error("delivery {delivery_id} is not held by this member: {reason}")]
    DeliveryStale {
        /// The delivery id as the member sent it.
        delivery_id: String,
        /// Why, in words.
        reason: &'static str,
    },
    /// A newer stream joined the group with the same instance id.
    #[error("member {0:?} was replaced by a newer stream with the same instance id")]
    MemberReplaced(String),
    /// A backup or restore destination exists and is not empty: nothing was
    /// written there.
    #[error("destination {path} exists and is not empty")]
    DestinationNotEmpty {
        /// The destination.
        path: PathBuf,
    },
    /// The backend cannot do what was asked (an option that cannot change live
    /// on it); nothing changed.
    #[error("not supported here: {0}")]
    Unsupported(String),
    /// The partition was opened quarantined: recovery found damage it may not
    /// repair by itself. Offsets below the damage stay readable; a read that
    /// reaches the damage, a key read and every append fail with this error
    /// until `stele repair` cuts the partition or a backup is restored.
    #[error(
        "partition {partition} is quarantined: damage in {} at position {}: {}; offsets from {} are not served (see `stele repair`)",
        quarantine.file,
        quarantine.position,
        quarantine.reason,
        quarantine.served_end
    )]
    Quarantined {
        /// The quarantined partition.
        partition: PartitionId,
        /// Where it is damaged and what it still serves.
        quarantine: Box<Quarantine>,
    },
}

/// Where a quarantined partition is damaged and what it still serves (see
/// [`Error::Quarantined`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// The damaged file, relative to the data directory, `/`-separated (for
    /// example `topics/orders/p00001/00000000000000000034.log`).
    pub file: String,
    /// The byte position of the damage within the file.
    pub position: u64,
    /// What is wrong there, in words.
    pub reason: String,
    /// One past the last offset served: offsets below it read normally.
    pub served_end: Offset,
}

fn display_sequence(sequence: Option<Sequence>) -> String {
    match sequence {
        Some(sequence) => sequence.to_string(),
        None => "no events".to_string(),
    }
}

/// A coarse classification of [`Error`], stable for callers to branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// An I/O error: [`Error::Io`].
    Io,
    /// The disk is full: [`Error::DiskFull`].
    DiskFull,
    /// Bytes on disk fail a check: [`Error::Corruption`].
    Corruption,
    /// A file disagrees with the data directory: [`Error::Inconsistent`].
    Inconsistent,
    /// Options failed validation: [`Error::Config`].
    Config,
    /// An argument is malformed: [`Error::InvalidArgument`].
    InvalidArgument,
    /// An argument exceeds a hard bound: [`Error::LimitExceeded`].
    LimitExceeded,
    /// No such topic: [`Error::TopicNotFound`].
    TopicNotFound,
    /// The topic exists already: [`Error::TopicExists`].
    TopicExists,
    /// The key's last sequence is not the expected one: [`Error::WrongExpectedSequence`].
    WrongExpectedSequence,
    /// Some events of an append are duplicates: [`Error::PartialDuplicate`].
    PartialDuplicate,
    /// An idempotency id repeats within one append: [`Error::RepeatedIdempotencyId`].
    RepeatedIdempotencyId,
    /// An idempotency id names an earlier, different event of the key:
    /// [`Error::IdempotencyIdReused`].
    IdempotencyIdReused,
    /// The producer was fenced by a newer epoch: [`Error::ProducerFenced`].
    ProducerFenced,
    /// The producer or epoch is unknown: [`Error::UnknownProducer`].
    UnknownProducer,
    /// The producer's sequence is not the next one: [`Error::ProducerOutOfOrder`].
    ProducerOutOfOrder,
    /// A read offset is outside the retained range: [`Error::OffsetOutOfRange`].
    OffsetOutOfRange,
    /// No such cursor: [`Error::CursorNotFound`].
    CursorNotFound,
    /// A cursor commit would move backwards: [`Error::CursorBackwards`].
    CursorBackwards,
    /// A cursor commit is past the high watermark: [`Error::CursorAheadOfHighWatermark`].
    CursorAheadOfHighWatermark,
    /// The partition is poisoned after a failed fsync: [`Error::Poisoned`].
    Poisoned,
    /// The data directory is locked by another process: [`Error::Locked`].
    Locked,
    /// The log or topic was closed: [`Error::Closed`].
    Closed,
    /// A distributed backend cannot serve the call now: [`Error::Unavailable`].
    Unavailable,
    /// No such webhook: [`Error::WebhookNotFound`].
    WebhookNotFound,
    /// The webhook exists already: [`Error::WebhookExists`].
    WebhookExists,
    /// No such consumer group: [`Error::GroupNotFound`].
    GroupNotFound,
    /// The consumer group exists already: [`Error::GroupExists`].
    GroupExists,
    /// A settle of a delivery no longer held: [`Error::DeliveryStale`].
    DeliveryStale,
    /// A member stream replaced by a newer one: [`Error::MemberReplaced`].
    MemberReplaced,
    /// A backup or restore destination holds files: [`Error::DestinationNotEmpty`].
    DestinationNotEmpty,
    /// Not supported by the backend: [`Error::Unsupported`].
    Unsupported,
    /// The partition is quarantined after damage found at open: [`Error::Quarantined`].
    Quarantined,
}

impl Error {
    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } => ErrorKind::Io,
            Error::DiskFull { .. } => ErrorKind::DiskFull,
            Error::Corruption { .. } => ErrorKind::Corruption,
            Error::Inconsistent { .. } => ErrorKind::Inconsistent,
            Error::Config(_) => ErrorKind::Config,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::LimitExceeded { .. } => ErrorKind::LimitExceeded,
            Error::TopicNotFound(_) => ErrorKind::TopicNotFound,
            Error::TopicExists(_) => ErrorKind::TopicExists,
            Error::WrongExpectedSequence { .. } => ErrorKind::WrongExpectedSequence,
            Error::PartialDuplicate { .. } => ErrorKind::PartialDuplicate,
            Error::RepeatedIdempotencyId { .. } => ErrorKind::RepeatedIdempotencyId,
            Error::IdempotencyIdReused { .. } => ErrorKind::IdempotencyIdReused,
            Error::ProducerFenced { .. } => ErrorKind::ProducerFenced,
            Error::UnknownProducer { .. } => ErrorKind::UnknownProducer,
            Error::ProducerOutOfOrder { .. } => ErrorKind::ProducerOutOfOrder,
            Error::OffsetOutOfRange { .. } => ErrorKind::OffsetOutOfRange,
            Error::CursorNotFound(_) => ErrorKind::CursorNotFound,
            Error::CursorBackwards { .. } => ErrorKind::CursorBackwards,
            Error::CursorAheadOfHighWatermark { .. } => ErrorKind::CursorAheadOfHighWatermark,
            Error::Poisoned { .. } => ErrorKind::Poisoned,
            Error::Locked { .. } => ErrorKind::Locked,
            Error::Closed => ErrorKind::Closed,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::WebhookNotFound(_) => ErrorKind::WebhookNotFound,
            Error::WebhookExists(_) => ErrorKind::WebhookExists,
            Error::GroupNotFound(_) => ErrorKind::GroupNotFound,
            Error::GroupExists(_) => ErrorKind::GroupExists,
            Error::DeliveryStale { .. } => ErrorKind::DeliveryStale,
            Error::MemberReplaced(_) => ErrorKind::MemberReplaced,
            Error::DestinationNotEmpty { .. } => ErrorKind::DestinationNotEmpty,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Quarantined { .. } => ErrorKind::Quarantined,
        }
    }

    /// Wraps an I/O error with the operation and path; a full disk becomes
    /// [`Error::DiskFull`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        let path = path.into();
        if is_disk_full(&source) {
            Error::DiskFull { op, path }
        } else {
            Error::Io { op, path, source }
        }
    }

    /// Wraps a decode failure with the file and byte position.
    pub(crate) fn corruption(path: impl Into<PathBuf>, position: u64, reason: DecodeError) -> Error {
        Error::Corruption {
            path: path.into(),
            position,
            reason,
        }
    }

    /// A copy for delivering one failure to many waiters. I/O sources are not
    /// `Clone`; their kind and message are kept.
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Io { op, path, source } => Error::Io {
                op,
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Error::DiskFull { op, path } => Error::DiskFull {
                op,
                path: path.clone(),
            },
            Error::Corruption {
                path,
                position,
                reason,
            } => Error::Corruption {
                path: path.clone(),
                position: *position,
                reason: *reason,
            },
            Error::Inconsistent { path, reason } => Error::Inconsistent {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::Config(message) => Error::Config(message.clone()),
            Error::InvalidArgument(message) => Error::InvalidArgument(message.clone()),
            Error::LimitExceeded { what, value, max } => Error::LimitExceeded {
                what,
                value: *value,
                max: *max,
            },
            Error::TopicNotFound(name) => Error::TopicNotFound(name.clone()),
            Error::TopicExists(name) => Error::TopicExists(name.clone()),
            Error::WrongExpectedSequence { expected, actual } => Error::WrongExpectedSequence {
                expected: *expected,
                actual: *actual,
            },
            Error::PartialDuplicate { duplicates, events } => Error::PartialDuplicate {
                duplicates: *duplicates,
                events: *events,
            },
            Error::RepeatedIdempotencyId { first, second } => Error::RepeatedIdempotencyId {
                first: *first,
                second: *second,
            },
            Error::IdempotencyIdReused {
                index,
                partition,
                offset,
                sequence,
            } => Error::IdempotencyIdReused {
                index: *index,
                partition: *partition,
                offset: *offset,
                sequence: *sequence,
            },
            Error::ProducerFenced {
                producer,
                epoch,
                current,
            } => Error::ProducerFenced {
                producer: *producer,
                epoch: *epoch,
                current: *current,
            },
            Error::UnknownProducer { producer, epoch } => Error::UnknownProducer {
                producer: *producer,
                epoch: *epoch,
            },
            Error::ProducerOutOfOrder {
                producer,
                partition,
                expected,
                got,
            } => Error::ProducerOutOfOrder {
                producer: *producer,
                partition: *partition,
                expected: *expected,
                got: *got,
            },
            Error::OffsetOutOfRange {
                requested,
                earliest,
                high_watermark,
            } => Error::OffsetOutOfRange {
                requested: *requested,
                earliest: *earliest,
                high_watermark: *high_watermark,
            },
            Error::CursorNotFound(name) => Error::CursorNotFound(name.clone()),
            Error::CursorBackwards {
                partition,
                committed,
                requested,
            } => Error::CursorBackwards {
                partition: *partition,
                committed: *committed,
                requested: *requested,
            },
            Error::CursorAheadOfHighWatermark {
                partition,
                requested,
                high_watermark,
            } => Error::CursorAheadOfHighWatermark {
                partition: *partition,
                requested: *requested,
                high_watermark: *high_watermark,
            },
            Error::Poisoned { partition } => Error::Poisoned {
                partition: *partition,
            },
            Error::Locked { path } => Error::Locked { path: path.clone() },
            Error::Closed => Error::Closed,
            Error::Unavailable { what, reason } => Error::Unavailable {
                what,
                reason: reason.clone(),
            },
            Error::WebhookNotFound(name) => Error::WebhookNotFound(name.clone()),
            Error::WebhookExists(name) => Error::WebhookExists(name.clone()),
            Error::GroupNotFound(name) => Error::GroupNotFound(name.clone()),
            Error::GroupExists(name) => Error::GroupExists(name.clone()),
            Error::DeliveryStale { delivery_id, reason } => Error::DeliveryStale {
                delivery_id: delivery_id.clone(),
                reason,
            },
            Error::MemberReplaced(name) => Error::MemberReplaced(name.clone()),
            Error::DestinationNotEmpty { path } => Error::DestinationNotEmpty { path: path.clone() },
            Error::Unsupported(message) => Error::Unsupported(message.clone()),
            Error::Quarantined {
                partition,
                quarantine,
            } => Error::Quarantined {
                partition: *partition,
                quarantine: quarantine.clone(),
            },
        }
    }
}

/// Whether an I/O error means the disk or quota is full.
pub(crate) fn is_disk_full(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || error.kind() == std::io::ErrorKind::StorageFull
}

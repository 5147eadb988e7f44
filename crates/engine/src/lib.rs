//! The Stele storage engine: an append-only event log, embedded as a library.
//!
//! This crate names nothing from gRPC or HTTP: the wire API is `stele-wire`, the
//! server `stele-server`, the client `stele-client` (ARCHITECTURE.md, "Code map").
//!
//! A [`Log`] is a data directory of named [`Topic`]s. A topic has a fixed number
//! of partitions; an event's key picks its partition ([`partition_for_key`]), so
//! order is total per partition and per key. Every key has its own sequence
//! (0, 1, 2, ...) and appends may state the sequence they expect.
//!
//! ```
//! use stele_engine::{Direction, Event, ExpectedSequence, Log, LogOptions, Sequence, TopicOptions};
//!
//! # fn main() -> stele_engine::Result<()> {
//! let dir = tempfile::tempdir().expect("temporary directory");
//! let log = Log::open(dir.path(), LogOptions::default())?;
//! let orders = log.create_topic("orders", TopicOptions::default().partitions(4))?;
//!
//! // The first event of a key: expect that the key has none yet.
//! let ack = orders.append("invoice-42", ExpectedSequence::NoEvents, vec![Event::new("created", b"{}".to_vec())])?;
//! assert_eq!(ack.first_sequence, Sequence(0));
//!
//! // A writer that lost a race learns the actual sequence and writes nothing.
//! let stale = orders.append("invoice-42", ExpectedSequence::NoEvents, vec![Event::new("created", b"{}".to_vec())]);
//! assert_eq!(stale.unwrap_err().kind(), stele_engine::ErrorKind::WrongExpectedSequence);
//!
//! // A retried event with an idempotency id is recognised.
//! let paid = Event::new("paid", b"{}".to_vec()).with_idempotency_id("payment-7");
//! let first = orders.append("invoice-42", ExpectedSequence::Exact(Sequence(0)), vec![paid.clone()])?;
//! let retry = orders.append("invoice-42", ExpectedSequence::Exact(Sequence(0)), vec![paid])?;
//! assert!(retry.duplicate);
//! assert_eq!(retry.first_offset, first.first_offset);
//!
//! let history = orders.read_key(b"invoice-42", None, Direction::Forwards, 100)?;
//! assert_eq!(history.len(), 2);
//! log.close()?;
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod backup;
pub mod civil;
pub mod config;
mod cursor;
mod dedup;
pub mod error;
pub mod event;
pub mod format;
pub mod group;
pub mod io;
pub mod journal;
mod keys;
pub mod limits;
mod log;
pub mod metrics;
mod partition;
pub mod paths;
mod producer;
pub mod repair;
pub mod rules;
mod segment;
pub mod subscribe;
pub mod token;
mod topic;
pub mod verify;
pub mod view;
pub mod webhook;

pub use config::{Clock, Durability, LogOptions, ManualClock, SystemClock, TopicChange, TopicOptions};
pub use error::{Error, ErrorKind, Result};
pub use event::{
    AppendAck, AppendRequest, Direction, Epoch, Event, ExpectedSequence, Offset, PartitionId, ProducerId,
    ProducerStamp, RecordedEvent, Sequence,
};
pub use format::topic_change::TopicChangeRecord;
pub use log::{Log, validate_topic_name};
pub use partition::coalesce::coalesce_writes;
pub use partition::{PartitionInfo, Quarantine, RecoveryReport};
pub use segment::{ExcessKind, SealedExcess, TailRecovery};
pub use topic::{CursorPosition, Topic, TopicUpdate, partition_for_key};
pub use view::{EventFilter, EventRef, Headers, StoredEvents};

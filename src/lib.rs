//! Stele: an append-only event log storage engine.
#![deny(unsafe_code)]

pub mod config;
pub mod error;
pub mod event;
pub mod format;
pub mod io;
pub mod limits;

pub use config::{Clock, Durability, LogOptions, ManualClock, SystemClock, TopicOptions};
pub use error::{Error, ErrorKind, Result};
pub use event::{
    AppendAck, AppendRequest, Direction, Epoch, Event, ExpectedSequence, Offset, PartitionId, ProducerId,
    ProducerStamp, RecordedEvent,
};

//! Stele: an append-only event log storage engine.
//!
//! This package is the `stele` command and a facade over the workspace's crates
//! (ARCHITECTURE.md, "Code map"): the engine's embedding API at the top level, the
//! other crates under their own names.
//!
//! ```
//! use stele::{Event, ExpectedSequence, Log, LogOptions, Sequence, TopicOptions};
//!
//! # fn main() -> stele::Result<()> {
//! let dir = tempfile::tempdir().expect("temporary directory");
//! let log = Log::open(dir.path(), LogOptions::default())?;
//! let orders = log.create_topic("orders", TopicOptions::default().partitions(4))?;
//! let ack = orders.append("invoice-42", ExpectedSequence::NoEvents, vec![Event::new("created", b"{}".to_vec())])?;
//! assert_eq!(ack.first_sequence, Sequence(0));
//! log.close()?;
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub use stele_engine::*;

/// The load generator behind `stele bench` (`stele-bench`).
pub use stele_bench as loadgen;
/// The typed gRPC client (`stele-client`).
pub use stele_client as client;
/// The gRPC server (`stele-server`).
pub use stele_server as server;
/// The wire API: generated types, conversions, the error model (`stele-wire`).
pub use stele_wire as wire;

//! Stele's wire API: the `stele.v1` types generated from `proto/` (no system
//! `protoc`: build.rs compiles with protox), the hand-written conversions to the
//! engine's types, and the error model both sides speak (`google.rpc.Status` with
//! Stele's details, [`status`]).
//!
//! Generated types never reach the engine's API: [`convert`] maps them by hand.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod batch;
pub mod codec;
pub mod convert;
pub mod proto;
pub mod status;
pub mod webhook;

use stele_engine::limits;

/// The largest gRPC message accepted: a maximal append call plus framing.
pub const MESSAGE_SIZE_BYTES_MAX: usize = (limits::APPEND_SIZE_BYTES_MAX as usize) + (1 << 20);

/// HTTP/2 flow-control window of one stream, for both directions. HTTP/2's
/// default of 64 KiB makes a 1 MiB subscription batch or a stream of pipelined
/// appends wait for sixteen window updates; 2 MiB lets a whole batch fly.
pub const HTTP2_STREAM_WINDOW_BYTES: u32 = 2 << 20;
/// HTTP/2 flow-control window of a connection: what a peer may have in flight
/// over all its streams, and so the most one connection can make the other side buffer.
pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 8 << 20;

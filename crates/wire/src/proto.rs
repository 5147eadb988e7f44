//! The generated `stele.v1` types and stubs.
#![allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]

tonic::include_proto!("stele.v1");
include!(concat!(env!("OUT_DIR"), "/server/stele.v1.rs"));

// `stele.v1.EventBatch` is hand-written (`crate::batch::EventBatch`): the
// generated `SubscribeResponse` names it through prost's `extern_path`
// (build.rs), the one place where generated code refers to this crate.

/// The encoded file descriptor set of `stele.v1`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/stele_descriptor.bin"));

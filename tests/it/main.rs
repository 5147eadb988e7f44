//! Integration tests through the public API and through real gRPC.

mod auth;
mod compat;
mod contract;
mod embed;
mod faults;
mod group_client;
mod grpc;
mod idempotency;
mod model;
mod regress_failed_roll;
mod regress_poisoned_open_group;
mod regress_roll_gap;
mod regress_unsealed_roll;
mod support;
mod torn;

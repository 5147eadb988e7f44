//! Integration tests through the public API.

mod embed;
mod grpc;

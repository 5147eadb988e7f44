//! Integration tests through the public API.

mod compat;
mod embed;

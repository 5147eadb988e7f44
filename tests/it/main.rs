//! Integration tests through the public API.

mod embed;
mod support;
mod torn;

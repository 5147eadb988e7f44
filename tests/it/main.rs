//! Integration tests through the public API.

mod compat;
mod embed;
mod faults;
mod model;
mod regress_failed_roll;
mod regress_poisoned_open_group;
mod support;
mod torn;

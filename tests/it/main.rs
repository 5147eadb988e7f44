//! Integration tests through the public API.

mod embed;
mod faults;
mod model;
mod regress_failed_roll;
mod regress_poisoned_open_group;
mod support;
mod torn;

//! Coalesced writes: appends submitted by one thread inside
//! [`coalesce_writes`] leave their partition's open group unwritten (under
//! `Interval` and `None`) and the worker unwoken (under `Always`) until the
//! scope ends, so that a burst of single-event appends to a partition costs one
//! `pwrite` (or one worker wake-up) instead of one each.
//!
//! Invariants:
//! - a partition held by a scope is released exactly once, when the scope
//!   ends, also when it unwinds: its open group is then written or handed to
//!   the worker, as `submit` would have done;
//! - a held partition never waits for room on its own held appends: `submit`
//!   releases it first (the appends it holds are what fills the group);
//! - a blocking append inside a scope releases every held partition before it
//!   waits (it would otherwise wait for itself).

use std::cell::RefCell;
use std::sync::Arc;

use super::Partition;

thread_local! {
    /// The partitions this thread holds back, while a scope is open.
    static HELD: RefCell<Option<Vec<Arc<Partition>>>> = const { RefCell::new(None) };
}

/// Most partitions one scope holds; the one after is written at once.
const HELD_PARTITIONS_MAX: usize = 64;

/// Runs `f` with the appends it submits from this thread coalesced per
/// partition: they are accepted (checked, sequenced, encoded) at once, in
/// order, and written or handed to the worker together when `f` returns.
/// Their completions run then, not before. Nested scopes join the outer one.
///
/// For callers that drain a burst of requests synchronously (a session's
/// received messages); `f` must not wait for those appends' completions
/// (a blocking [`crate::Topic::append`] is safe: it releases first).
pub fn coalesce_writes<R>(f: impl FnOnce() -> R) -> R {
    let opened = HELD.with(|held| {
        let mut held = held.borrow_mut();
        if held.is_some() {
            return false;
        }
        *held = Some(Vec::new());
        true
    });
    if !opened {
        return f();
    }
    /// Releases the scope's partitions and closes it, on return or unwind.
    struct Scope;
    impl Drop for Scope {
        fn drop(&mut self) {
            let held = HELD.with(|held| held.borrow_mut().take()).unwrap_or_default();
            release(held);
        }
    }
    let _scope = Scope;
    f()
}

/// Whether `partition`'s write is held back by this thread's scope: true
/// when a scope is open and holds it, or takes it now. Outside a scope, or
/// when the scope is full, false: the caller writes as usual.
pub(super) fn hold(partition: &Arc<Partition>) -> bool {
    HELD.with(|held| {
        let mut held = held.borrow_mut();
        let Some(held) = held.as_mut() else {
            return false;
        };
        if held.iter().any(|other| Arc::ptr_eq(other, partition)) {
            return true;
        }
        if held.len() >= HELD_PARTITIONS_MAX {
            return false;
        }
        held.push(Arc::clone(partition));
        true
    })
}

/// Releases `partition` from this thread's scope now (the scope stays open).
pub(super) fn release_one(partition: &Partition) {
    let taken = HELD.with(|held| {
        let mut held = held.borrow_mut();
        let held = held.as_mut()?;
        let index = held
            .iter()
            .position(|other| std::ptr::eq(Arc::as_ptr(other), partition))?;
        Some(held.swap_remove(index))
    });
    if let Some(partition) = taken {
        partition.release_held();
    }
}

/// Releases every partition of this thread's scope now (the scope stays open).
pub(crate) fn release_all() {
    let taken = HELD.with(|held| held.borrow_mut().as_mut().map(std::mem::take));
    release(taken.unwrap_or_default());
}

fn release(held: Vec<Arc<Partition>>) {
    for partition in held {
        partition.release_held();
    }
}

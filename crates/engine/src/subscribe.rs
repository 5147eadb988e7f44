//! The live-tail primitive: waiting, without polling, for a partition's high
//! watermark to pass an offset. Both a blocking wait and a runtime-agnostic
//! `Future` are offered; the server's subscriptions build on the future.
//!
//! Invariant: the high watermark is stored before `notify` is called, and waiters
//! check it while holding the notifier's lock, so no wake-up is lost.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Wakes blocked and async waiters when a partition publishes.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    waiters: Mutex<Waiters>,
    condvar: Condvar,
}

/// Who waits on a [`Notifier`], behind its lock.
#[derive(Debug, Default)]
struct Waiters {
    wakers: Vec<Waker>,
    /// Threads blocked in [`Notifier::wait_until`]: waking the condition
    /// variable is a system call even with no one waiting, and `notify` runs
    /// on every publication (every append of a lone appender).
    sleepers: usize,
}

impl Notifier {
    /// Wakes every waiter. Call after storing the new high watermark.
    pub(crate) fn notify(&self) {
        let wakers = {
            let mut waiters = self
                .waiters
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if waiters.sleepers > 0 {
                self.condvar.notify_all();
            }
            std::mem::take(&mut waiters.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// Blocks until `ready()` holds or `timeout` passes; returns whether it holds.
    pub(crate) fn wait_until(&self, timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            if ready() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard.sleepers += 1;
            guard = self
                .condvar
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
            guard.sleepers -= 1;
        }
    }

    /// Registers `waker` unless `ready()` already holds; returns whether it holds.
    pub(crate) fn register(&self, waker: &Waker, ready: impl FnOnce() -> bool) -> bool {
        let mut waiters = self
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if ready() {
            return true;
        }
        if !waiters.wakers.iter().any(|existing| existing.will_wake(waker)) {
            waiters.wakers.push(waker.clone());
        }
        false
    }
}

/// A future that resolves once a condition on a partition holds. Created by
/// [`Topic::wait_past`](crate::Topic::wait_past).
pub struct WaitPast<F: FnMut() -> Option<crate::event::Offset> + Unpin> {
    pub(crate) notifier: std::sync::Arc<dyn AsNotifier>,
    pub(crate) check: F,
}

/// Gives access to a notifier (implemented by partitions).
pub(crate) trait AsNotifier: Send + Sync {
    fn notifier(&self) -> &Notifier;
}

impl<F: FnMut() -> Option<crate::event::Offset> + Unpin> Future for WaitPast<F> {
    type Output = crate::event::Offset;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<crate::event::Offset> {
        let this = self.get_mut();
        if let Some(offset) = (this.check)() {
            return Poll::Ready(offset);
        }
        let mut result = None;
        let notifier = this.notifier.clone();
        let ready = notifier.notifier().register(context.waker(), || {
            result = (this.check)();
            result.is_some()
        });
        match (ready, result) {
            (true, Some(offset)) => Poll::Ready(offset),
            _ => Poll::Pending,
        }
    }
}

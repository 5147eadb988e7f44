//! The fixed pool of threads that runs every partition's background work
//! (group commit under `Durability::Always`, seals, dedup jobs, sync timers,
//! housekeeping), and the thread that delivers large groups of
//! acknowledgements. A log has one pool, sized from the cores and independent
//! of how many partitions it holds.
//!
//! A partition is scheduled when there is work for it ([`Partition::wake`]):
//! it joins the run queue once, a pool thread runs one step of its worker
//! ([`Partition::work_step`]), and the step ends when the partition would wait.
//! A wake that arrives while the step runs makes it run again, so no wake is
//! lost between the step's last look at the state and its end. A step that
//! waits for time (housekeeping, an `Interval` sync) arms a timer, kept at most
//! once per partition: the earliest deadline wins.
//!
//! Bounds: the run queue holds a partition at most once (only the wake that
//! finds it idle queues it), so at most the log's partitions; the timer heap
//! holds one live timer per partition, and a timer replaced by an earlier one
//! stays until its own deadline (at most the longest wait a step asks for:
//! the housekeeping interval or a topic's sync interval), then
//! is dropped unfired.
//!
//! Invariant: a partition's steps never run concurrently (its schedule is a
//! single owner token: idle, scheduled, or scheduled and woken again).
//! Invariant: a partition that is closing is stepped until it reports that it
//! stopped; the pool outlives every partition of its log.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use super::{Completion, Partition};
use crate::error::{Error, Result};
use crate::event::AppendAck;
use crate::limits::WORKER_THREADS_MAX;

/// Pool threads per core when the options leave it to the cores. Pool
/// threads mostly wait in fdatasync, which holds no core, so more syncs are
/// in flight at once: with 10,000 partitions
/// appended to one event at a time under `Always` (`stele bench --scenario
/// partitions`), 4 threads gave 4,667 events/s, 16 gave 8,270 and 64 gave
/// 11,752 on the 2-core machine of BENCHMARKS.md.
const WORKER_THREADS_PER_CORE: usize = 8;

/// The fewest pool threads sized from the cores.
const WORKER_THREADS_MIN: usize = 16;

/// A partition's schedule: not queued and not running.
const IDLE: u8 = 0;
/// Queued or running.
const SCHEDULED: u8 = 1;
/// Running, and woken again meanwhile: it runs once more.
const WOKEN: u8 = 2;

/// What a step of a partition's worker asks for next.
pub(crate) enum Step {
    /// Run again when woken, or at the deadline.
    Wait(Option<Instant>),
    /// More work is ready: run again after the partitions already queued.
    Yield,
    /// The partition closed: never run again.
    Stopped,
}

/// The completer's work, done in the order it was sent.
enum CompleterJob {
    /// A group of acknowledgements to deliver.
    Run(Vec<(Completion, Result<AppendAck>)>),
    /// Answered once every job sent before it is done.
    Barrier(std::sync::mpsc::SyncSender<()>),
}

/// A partition's place in the pool.
#[derive(Default)]
pub(crate) struct Schedule {
    state: AtomicU8,
    /// The deadline of the timer armed for the partition, if any.
    armed: Mutex<Option<Instant>>,
}

/// The pool a partition's context refers to: the queue, the timers and the
/// completer, without ownership of the threads (see [`WorkerPool`]).
pub(crate) struct PoolHandle {
    queue: Mutex<Queue>,
    ready: Condvar,
    completer: Mutex<Option<std::sync::mpsc::Sender<CompleterJob>>>,
    threads: usize,
}

struct Queue {
    runnable: VecDeque<Arc<Partition>>,
    timers: BinaryHeap<Reverse<Timer>>,
    /// Numbers timers in the order they were armed.
    timers_armed: u64,
    /// Pool threads waiting for work.
    idle: usize,
    stopping: bool,
}

struct Timer {
    deadline: Instant,
    /// Breaks ties, so that timers are ordered without comparing partitions.
    sequence: u64,
    partition: Weak<Partition>,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Timer) -> bool {
        (self.deadline, self.sequence) == (other.deadline, other.sequence)
    }
}

impl Eq for Timer {}

impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Timer) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timer {
    fn cmp(&self, other: &Timer) -> std::cmp::Ordering {
        (self.deadline, self.sequence).cmp(&(other.deadline, other.sequence))
    }
}

/// The owner of the pool's threads: dropping it stops and joins them. The
/// log holds it; partitions hold only the [`PoolHandle`].
pub(crate) struct WorkerPool {
    handle: Arc<PoolHandle>,
    threads: Vec<std::thread::JoinHandle<()>>,
    completer: Option<std::thread::JoinHandle<()>>,
}

/// Pool threads for `requested` (0: from the cores).
pub(crate) fn worker_threads_for(requested: usize) -> usize {
    if requested > 0 {
        return requested.min(WORKER_THREADS_MAX);
    }
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    (cores * WORKER_THREADS_PER_CORE).clamp(WORKER_THREADS_MIN, WORKER_THREADS_MAX)
}

impl WorkerPool {
    /// Starts `threads` pool threads (0: from the cores) and the completer.
    pub(crate) fn start(threads: usize) -> Result<WorkerPool> {
        let threads = worker_threads_for(threads);
        let (sender, receiver) = std::sync::mpsc::channel::<CompleterJob>();
        let handle = Arc::new(PoolHandle {
            queue: Mutex::new(Queue {
                runnable: VecDeque::new(),
                timers: BinaryHeap::new(),
                timers_armed: 0,
                idle: 0,
                stopping: false,
            }),
            ready: Condvar::new(),
            completer: Mutex::new(Some(sender)),
            threads,
        });
        let mut pool = WorkerPool {
            handle: Arc::clone(&handle),
            threads: Vec::with_capacity(threads),
            completer: None,
        };
        let spawn_error = |error: std::io::Error| Error::io("spawn partition worker pool", "", error);
        // `start` returns once every thread runs (and carries its name).
        let started = Arc::new(Started::default());
        let completer_started = Arc::clone(&started);
        pool.completer = Some(
            std::thread::Builder::new()
                .name("stele-ack".into())
                .spawn(move || {
                    completer_started.arrive();
                    for job in receiver {
                        match job {
                            CompleterJob::Run(completions) => super::append::run(completions),
                            CompleterJob::Barrier(done) => {
                                let _ = done.send(());
                            }
                        }
                    }
                })
                .map_err(spawn_error)?,
        );
        for index in 0..threads {
            let handle = Arc::clone(&handle);
            let thread_started = Arc::clone(&started);
            pool.threads.push(
                std::thread::Builder::new()
                    .name(format!("stele-w{index}"))
                    .spawn(move || {
                        thread_started.arrive();
                        handle.run();
                    })
                    .map_err(spawn_error)?,
            );
        }
        started.wait_for(threads + 1);
        Ok(pool)
    }

    /// What partitions are given to reach the pool.
    pub(crate) fn handle(&self) -> &Arc<PoolHandle> {
        &self.handle
    }
}

/// Counts the pool's threads as they start running.
#[derive(Default)]
struct Started {
    count: Mutex<usize>,
    arrived: Condvar,
}

impl Started {
    fn arrive(&self) {
        *self.count.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) += 1;
        self.arrived.notify_all();
    }

    fn wait_for(&self, threads: usize) {
        let mut count = self.count.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while *count < threads {
            count = self
                .arrived
                .wait(count)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        {
            let mut queue = self.handle.lock();
            queue.stopping = true;
            self.handle.ready.notify_all();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.handle
            .completer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(completer) = self.completer.take() {
            let _ = completer.join();
        }
    }
}

impl PoolHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The number of pool threads.
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// Queues `partition` to run a step (its schedule already says so).
    fn push(&self, partition: Arc<Partition>) {
        let mut queue = self.lock();
        queue.runnable.push_back(partition);
        if queue.idle > 0 {
            self.ready.notify_one();
        }
    }

    /// Arms a timer that wakes `partition` at `deadline`, unless one at or
    /// before it is armed already.
    fn arm(&self, partition: &Arc<Partition>, deadline: Instant) {
        {
            let mut armed = partition
                .schedule
                .armed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if armed.is_some_and(|armed| armed <= deadline) {
                return;
            }
            *armed = Some(deadline);
        }
        let mut queue = self.lock();
        queue.timers_armed += 1;
        let sequence = queue.timers_armed;
        let earliest = queue
            .timers
            .peek()
            .is_none_or(|Reverse(timer)| deadline < timer.deadline);
        queue.timers.push(Reverse(Timer {
            deadline,
            sequence,
            partition: Arc::downgrade(partition),
        }));
        // A thread asleep until a later deadline looks again.
        if earliest && queue.idle > 0 {
            self.ready.notify_one();
        }
    }

    /// Delivers acknowledgements on the completer thread; returns them when
    /// it has stopped.
    pub(crate) fn complete(
        &self,
        completions: Vec<(Completion, Result<AppendAck>)>,
    ) -> Option<Vec<(Completion, Result<AppendAck>)>> {
        let completer = self
            .completer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(sender) = completer.as_ref() else {
            return Some(completions);
        };
        match sender.send(CompleterJob::Run(completions)) {
            Ok(()) => None,
            Err(std::sync::mpsc::SendError(CompleterJob::Run(completions))) => Some(completions),
            Err(std::sync::mpsc::SendError(CompleterJob::Barrier(_))) => None,
        }
    }

    /// Waits until every acknowledgement handed to the completer so far has
    /// been delivered.
    pub(crate) fn drain_completions(&self) {
        let (done, finished) = std::sync::mpsc::sync_channel::<()>(1);
        let sent = {
            let completer = self
                .completer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            completer
                .as_ref()
                .is_some_and(|sender| sender.send(CompleterJob::Barrier(done)).is_ok())
        };
        if sent {
            let _ = finished.recv();
        }
    }

    /// A pool thread: takes due timers and runnable partitions, runs steps.
    fn run(&self) {
        let mut queue = self.lock();
        loop {
            if queue.stopping {
                return;
            }
            let now = Instant::now();
            while queue
                .timers
                .peek()
                .is_some_and(|Reverse(timer)| timer.deadline <= now)
            {
                let Some(Reverse(timer)) = queue.timers.pop() else {
                    break;
                };
                drop(queue);
                if let Some(partition) = timer.partition.upgrade() {
                    let fired = {
                        let mut armed = partition
                            .schedule
                            .armed
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                        let fired = *armed == Some(timer.deadline);
                        if fired {
                            *armed = None;
                        }
                        fired
                    };
                    if fired {
                        partition.wake();
                    }
                }
                queue = self.lock();
            }
            if let Some(partition) = queue.runnable.pop_front() {
                drop(queue);
                self.step(partition);
                queue = self.lock();
                continue;
            }
            let wait = queue
                .timers
                .peek()
                .map(|Reverse(timer)| timer.deadline.saturating_duration_since(now));
            queue.idle += 1;
            queue = match wait {
                Some(wait) => {
                    self.ready
                        .wait_timeout(queue, wait.max(Duration::from_micros(50)))
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0
                }
                None => self
                    .ready
                    .wait(queue)
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            };
            queue.idle -= 1;
        }
    }

    /// Runs steps of `partition` while it is woken during them, then leaves
    /// it idle (with a timer when it asked for one), queued again, or stopped.
    fn step(&self, partition: Arc<Partition>) {
        loop {
            match partition.work_step() {
                Step::Stopped => {
                    // Stays SCHEDULED: no wake queues it again.
                    partition.worker_stopped();
                    return;
                }
                Step::Yield => {
                    let _ = partition.schedule.state.compare_exchange(
                        WOKEN,
                        SCHEDULED,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                    self.push(partition);
                    return;
                }
                Step::Wait(deadline) => {
                    if let Some(deadline) = deadline {
                        self.arm(&partition, deadline);
                    }
                    match partition.schedule.state.compare_exchange(
                        SCHEDULED,
                        IDLE,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return,
                        // Woken during the step: look again.
                        Err(_) => partition.schedule.state.store(SCHEDULED, Ordering::Release),
                    }
                }
            }
        }
    }
}

impl Partition {
    /// Asks the pool to run a step of this partition's worker: it is queued
    /// if idle, or runs again if a step is under way. Cheap when the worker is
    /// already scheduled (one atomic operation). Does nothing before the
    /// worker is started, and never for a quarantined partition.
    pub(crate) fn wake(&self) {
        // A quarantined partition has no worker and must write nothing: a
        // topic change or a poisoning does not start one.
        if !self.worker_started.load(Ordering::Acquire) {
            return;
        }
        let mut current = self.schedule.state.load(Ordering::Acquire);
        loop {
            let next = match current {
                IDLE => SCHEDULED,
                SCHEDULED => WOKEN,
                _ => return,
            };
            match self
                .schedule
                .state
                .compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        if current == IDLE
            && let Some(partition) = self.me.upgrade()
        {
            self.context.pool.push(partition);
        }
    }
}

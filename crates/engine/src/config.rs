//! Options, their defaults, and validation.
//!
//! Defaults are named constants so that the server's configuration can share
//! them. `validate` runs once where options enter the engine; nothing re-checks
//! them later. A topic's options are written to its `topic.meta` file when it is
//! created and read back on reopen.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::error::{Error, Result};
use crate::io::{StdStorage, Storage};
use crate::limits;

/// Default number of partitions of a new topic.
pub const PARTITIONS_COUNT_DEFAULT: u32 = 4;
/// Default dedup window, in milliseconds (2 minutes).
pub const DEDUP_WINDOW_MS_DEFAULT: u64 = 2 * 60 * 1000;
/// Default size at which the active segment rolls, in bytes (128 MiB).
pub const SEGMENT_SIZE_BYTES_MAX_DEFAULT: u64 = 128 << 20;
/// Default distance between sparse index entries, in bytes of segment.
pub const INDEX_INTERVAL_BYTES_DEFAULT: u32 = 4096;
/// Default idleness after which a producer's partition state is forgotten, in milliseconds (24 hours).
pub const PRODUCER_IDLE_MS_MAX_DEFAULT: u64 = 24 * 60 * 60 * 1000;
/// Default number of appended bytes between checkpoints (256 MiB).
pub const CHECKPOINT_INTERVAL_BYTES_DEFAULT: u64 = 256 << 20;
/// How often partitions look at retention, checkpoints and idle producers.
pub const HOUSEKEEPING_INTERVAL_DEFAULT: std::time::Duration = std::time::Duration::from_millis(1000);
/// An idle partition's housekeeping interval doubles after each round that
/// found nothing appended since the one before, up to the interval times
/// `1 << HOUSEKEEPING_BACKOFF_SHIFT_MAX` (32 s by default); an append, or a
/// change of the topic's options, brings it back to the interval.
pub const HOUSEKEEPING_BACKOFF_SHIFT_MAX: u32 = 5;
/// The sync interval of [`Durability::Interval`] when none is given, in milliseconds.
pub const SYNC_INTERVAL_MS_DEFAULT: u64 = 100;
/// Largest sync interval of [`Durability::Interval`], in milliseconds.
pub const SYNC_INTERVAL_MS_MAX: u64 = 60_000;

/// When an append is acknowledged relative to fdatasync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The append returns after its data is fdatasync'd. Concurrent appends share
    /// one sync (group commit). Acknowledged data survives power loss.
    #[default]
    Always,
    /// The append returns once written to the OS; the data is synced at most
    /// `interval_ms` later. Survives a process crash; acknowledged data written in
    /// the last interval may be lost on power failure.
    Interval {
        /// Longest time between a write and its sync, in milliseconds; 1..=[`SYNC_INTERVAL_MS_MAX`].
        interval_ms: u64,
    },
    /// Not synced on the append path: the engine syncs only before writing a
    /// checkpoint (every `checkpoint_interval_bytes`) and at close; otherwise
    /// the OS writes back eventually. Survives a process crash; acknowledged
    /// data may be lost on power failure.
    None,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Always => f.write_str("always"),
            Durability::Interval { interval_ms } => write!(f, "interval({interval_ms}ms)"),
            Durability::None => f.write_str("none"),
        }
    }
}

/// A topic's settings. The partition count is fixed for the topic's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicOptions {
    /// Number of partitions, 1..=`PARTITIONS_COUNT_MAX`.
    pub partitions: u32,
    /// Sealed segments whose newest event is older than this are deleted.
    pub retention_age_ms: Option<u64>,
    /// Oldest sealed segments are deleted while a partition holds more bytes.
    pub retention_bytes: Option<u64>,
    /// Idempotency ids are remembered this long, to the millisecond.
    pub dedup_window_ms: u64,
    /// When appends are acknowledged.
    pub durability: Durability,
    /// The active segment rolls once it holds this many bytes.
    pub segment_size_bytes_max: u64,
    /// The active segment rolls once it is this old (checked at append).
    pub segment_age_ms_max: Option<u64>,
    /// Largest event payload.
    pub payload_size_max: u32,
    /// One sparse index entry per this many bytes of segment.
    pub index_interval_bytes: u32,
    /// Reserve each segment's blocks when it is created (fallocate).
    pub preallocate: bool,
    /// A producer's state in a partition is forgotten after this much idleness;
    /// its next append there must then carry sequence 0 (see [`crate::ProducerStamp`]).
    pub producer_idle_ms_max: u64,
    /// A checkpoint of derived state is written after this many appended bytes.
    pub checkpoint_interval_bytes: u64,
}

impl Default for TopicOptions {
    fn default() -> TopicOptions {
        TopicOptions {
            partitions: PARTITIONS_COUNT_DEFAULT,
            retention_age_ms: None,
            retention_bytes: None,
            dedup_window_ms: DEDUP_WINDOW_MS_DEFAULT,
            durability: Durability::Always,
            segment_size_bytes_max: SEGMENT_SIZE_BYTES_MAX_DEFAULT,
            segment_age_ms_max: None,
            payload_size_max: limits::PAYLOAD_SIZE_MAX_DEFAULT,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            preallocate: false,
            producer_idle_ms_max: PRODUCER_IDLE_MS_MAX_DEFAULT,
            checkpoint_interval_bytes: CHECKPOINT_INTERVAL_BYTES_DEFAULT,
        }
    }
}

impl TopicOptions {
    /// Sets the partition count.
    pub fn partitions(mut self, partitions: u32) -> TopicOptions {
        self.partitions = partitions;
        self
    }

    /// Sets the durability mode.
    pub fn durability(mut self, durability: Durability) -> TopicOptions {
        self.durability = durability;
        self
    }

    /// Sets the dedup window.
    pub fn dedup_window_ms(mut self, window_ms: u64) -> TopicOptions {
        self.dedup_window_ms = window_ms;
        self
    }

    /// Sets the segment size limit.
    pub fn segment_size_bytes_max(mut self, size: u64) -> TopicOptions {
        self.segment_size_bytes_max = size;
        self
    }

    /// Sets retention by age.
    pub fn retention_age_ms(mut self, age_ms: Option<u64>) -> TopicOptions {
        self.retention_age_ms = age_ms;
        self
    }

    /// Sets retention by size.
    pub fn retention_bytes(mut self, bytes: Option<u64>) -> TopicOptions {
        self.retention_bytes = bytes;
        self
    }

    /// Checks every option against `limits`.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad option.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(Error::Config(message));
        if self.partitions == 0 {
            return bad("partitions is 0, must be at least 1".to_string());
        }
        if self.partitions > limits::PARTITIONS_COUNT_MAX {
            return Err(Error::LimitExceeded {
                what: "partition count",
                value: u64::from(self.partitions),
                max: u64::from(limits::PARTITIONS_COUNT_MAX),
            });
        }
        if !(limits::SEGMENT_SIZE_BYTES_MIN..=limits::SEGMENT_SIZE_BYTES_MAX)
            .contains(&self.segment_size_bytes_max)
        {
            return bad(format!(
                "segment_size_bytes_max is {}, must be {}..={}",
                self.segment_size_bytes_max,
                limits::SEGMENT_SIZE_BYTES_MIN,
                limits::SEGMENT_SIZE_BYTES_MAX
            ));
        }
        if self.payload_size_max > limits::PAYLOAD_SIZE_MAX_LIMIT {
            return Err(Error::LimitExceeded {
                what: "payload_size_max",
                value: u64::from(self.payload_size_max),
                max: u64::from(limits::PAYLOAD_SIZE_MAX_LIMIT),
            });
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be positive".to_string());
        }
        if let Durability::Interval { interval_ms } = self.durability
            && (interval_ms == 0 || interval_ms > SYNC_INTERVAL_MS_MAX)
        {
            return bad(format!(
                "sync interval is {interval_ms} ms, must be 1..={SYNC_INTERVAL_MS_MAX}"
            ));
        }
        if self.retention_age_ms == Some(0) || self.retention_bytes == Some(0) {
            return bad("retention limits must be positive (use None for no limit)".to_string());
        }
        if self.segment_age_ms_max == Some(0) {
            return bad("segment_age_ms_max must be positive".to_string());
        }
        if self.producer_idle_ms_max == 0 {
            return bad("producer_idle_ms_max must be positive".to_string());
        }
        if self.checkpoint_interval_bytes == 0 {
            return bad("checkpoint_interval_bytes must be positive".to_string());
        }
        Ok(())
    }
}

/// A change of a live topic's options ([`crate::Topic::update_options`]): each
/// field that is `Some` is set, the others keep their value.
///
/// The partition count is not here: the key-to-partition mapping (FNV-1a 64 of
/// the key modulo the partition count) would move keys to other partitions and
/// break their order and sequences. A topic that needs more partitions is a new
/// topic, filled with `stele export` and `stele import`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicChange {
    /// Retention by age: `Some(None)` removes the limit.
    pub retention_age_ms: Option<Option<u64>>,
    /// Retention by size: `Some(None)` removes the limit.
    pub retention_bytes: Option<Option<u64>>,
    /// The dedup window. Shrinking it stops matching ids older than the new
    /// window at once (a retry of one is a new append) and drops their runs at
    /// the next dedup upkeep; growing it does not bring back ids already
    /// dropped, so it is fully in effect once the new window has passed.
    pub dedup_window_ms: Option<u64>,
    /// The durability, from the next append on (appends accepted before are
    /// acknowledged under the durability they were accepted with).
    pub durability: Option<Durability>,
    /// The size at which the active segment rolls, from the next append on.
    pub segment_size_bytes_max: Option<u64>,
    /// The largest payload, for appends from now on; stored events stay readable.
    pub payload_size_max: Option<u32>,
}

impl TopicChange {
    /// Whether the change sets nothing.
    pub fn is_empty(&self) -> bool {
        *self == TopicChange::default()
    }

    /// `options` with the change applied (not validated).
    pub fn apply_to(&self, options: &TopicOptions) -> TopicOptions {
        let mut next = options.clone();
        if let Some(age) = self.retention_age_ms {
            next.retention_age_ms = age;
        }
        if let Some(bytes) = self.retention_bytes {
            next.retention_bytes = bytes;
        }
        if let Some(window) = self.dedup_window_ms {
            next.dedup_window_ms = window;
        }
        if let Some(durability) = self.durability {
            next.durability = durability;
        }
        if let Some(size) = self.segment_size_bytes_max {
            next.segment_size_bytes_max = size;
        }
        if let Some(size) = self.payload_size_max {
            next.payload_size_max = size;
        }
        next
    }
}

/// The options that differ between `previous` and `next`, each as (name,
/// previous value, next value) in text, in a fixed order; "none" is no limit.
/// Names are the fields of [`TopicOptions`].
pub fn option_differences(
    previous: &TopicOptions,
    next: &TopicOptions,
) -> Vec<(&'static str, String, String)> {
    fn limit(value: Option<u64>) -> String {
        value.map_or_else(|| "none".to_string(), |value| value.to_string())
    }
    let pairs = [
        (
            "partitions",
            previous.partitions.to_string(),
            next.partitions.to_string(),
        ),
        (
            "retention_age_ms",
            limit(previous.retention_age_ms),
            limit(next.retention_age_ms),
        ),
        (
            "retention_bytes",
            limit(previous.retention_bytes),
            limit(next.retention_bytes),
        ),
        (
            "dedup_window_ms",
            previous.dedup_window_ms.to_string(),
            next.dedup_window_ms.to_string(),
        ),
        (
            "durability",
            previous.durability.to_string(),
            next.durability.to_string(),
        ),
        (
            "segment_size_bytes_max",
            previous.segment_size_bytes_max.to_string(),
            next.segment_size_bytes_max.to_string(),
        ),
        (
            "segment_age_ms_max",
            limit(previous.segment_age_ms_max),
            limit(next.segment_age_ms_max),
        ),
        (
            "payload_size_max",
            previous.payload_size_max.to_string(),
            next.payload_size_max.to_string(),
        ),
        (
            "index_interval_bytes",
            previous.index_interval_bytes.to_string(),
            next.index_interval_bytes.to_string(),
        ),
        (
            "preallocate",
            previous.preallocate.to_string(),
            next.preallocate.to_string(),
        ),
        (
            "producer_idle_ms_max",
            previous.producer_idle_ms_max.to_string(),
            next.producer_idle_ms_max.to_string(),
        ),
        (
            "checkpoint_interval_bytes",
            previous.checkpoint_interval_bytes.to_string(),
            next.checkpoint_interval_bytes.to_string(),
        ),
    ];
    pairs
        .into_iter()
        .filter(|(_, before, after)| before != after)
        .collect()
}

/// The options every partition of a topic reads: one cell per topic, replaced
/// whole by a change, so that a reader sees the options before or after it,
/// never a mixture.
#[derive(Debug)]
pub(crate) struct LiveOptions {
    current: std::sync::RwLock<Arc<TopicOptions>>,
}

impl LiveOptions {
    pub(crate) fn new(options: TopicOptions) -> LiveOptions {
        LiveOptions {
            current: std::sync::RwLock::new(Arc::new(options)),
        }
    }

    /// The options now. A leaf lock: nothing else is taken while it is held.
    pub(crate) fn get(&self) -> Arc<TopicOptions> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    pub(crate) fn set(&self, options: TopicOptions) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(options);
    }
}

/// A source of wall-clock time in Unix milliseconds. Tests inject a manual clock.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    /// A clock at `now_ms`.
    pub fn new(now_ms: i64) -> ManualClock {
        ManualClock {
            now_ms: AtomicI64::new(now_ms),
        }
    }

    /// Moves the clock forwards (or backwards) by `delta_ms`.
    pub fn advance(&self, delta_ms: i64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// Options for opening a data directory.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// The file system; tests inject faults here.
    pub storage: Arc<dyn Storage>,
    /// The wall clock; tests inject a manual clock here.
    pub clock: Arc<dyn Clock>,
    /// How often each partition's worker checks retention, checkpoints, idle
    /// producers and the dedup index (real time, not the injected clock); an
    /// idle partition backs off to 32 times this
    /// ([`HOUSEKEEPING_BACKOFF_SHIFT_MAX`]).
    pub housekeeping_interval: std::time::Duration,
    /// Threads of the pool that runs every partition's background work
    /// (group commit under `Durability::Always`, seals, dedup jobs, timers);
    /// 0 sizes it from the cores (eight per core, at least 16). Partitions do
    /// not get threads of their own, so this bounds the log's threads.
    pub worker_threads: usize,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            storage: Arc::new(StdStorage),
            clock: Arc::new(SystemClock),
            housekeeping_interval: HOUSEKEEPING_INTERVAL_DEFAULT,
            worker_threads: 0,
        }
    }
}

impl LogOptions {
    /// Sets the storage.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> LogOptions {
        self.storage = storage;
        self
    }

    /// Sets the clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> LogOptions {
        self.clock = clock;
        self
    }

    /// Sets the housekeeping interval.
    pub fn housekeeping_interval(mut self, interval: std::time::Duration) -> LogOptions {
        self.housekeeping_interval = interval;
        self
    }

    /// Sets the worker pool's threads (0: from the cores).
    pub fn worker_threads(mut self, threads: usize) -> LogOptions {
        self.worker_threads = threads;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_each_bad_option() {
        let cases = [
            TopicOptions::default().partitions(0),
            TopicOptions::default().partitions(limits::PARTITIONS_COUNT_MAX + 1),
            TopicOptions::default().segment_size_bytes_max(10),
            TopicOptions::default().durability(Durability::Interval { interval_ms: 0 }),
            TopicOptions::default().retention_bytes(Some(0)),
            TopicOptions {
                payload_size_max: limits::PAYLOAD_SIZE_MAX_LIMIT + 1,
                ..TopicOptions::default()
            },
        ];
        for options in cases {
            // Values above a hard bound name it; the rest are configuration errors.
            assert!(
                matches!(
                    options.validate(),
                    Err(Error::Config(_) | Error::LimitExceeded { .. })
                ),
                "accepted {options:?}"
            );
        }
        assert!(TopicOptions::default().validate().is_ok());
    }
}

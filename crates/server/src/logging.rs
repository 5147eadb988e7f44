//! Log lines that a client, a receiver or the disk can make repeat: each call
//! site logs at most once per window, and its next line says how many it left
//! out, so that a failing endpoint or a full disk is logged, not flooded.
//! [`DiskWatch`] turns the data directory's free space into one line per
//! crossing of a threshold.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

/// The window of [`limited!`]: one line per call site per ten seconds.
pub const LIMITED_WINDOW_MS: u64 = 10_000;

/// A call site's rate limit: the time of its last line and the lines left out
/// since.
pub struct LogLimit {
    window_ms: u64,
    state: Mutex<LimitState>,
}

struct LimitState {
    /// Unix ms of the last line logged; 0 before the first.
    last_ms: u64,
    suppressed: u64,
}

impl LogLimit {
    /// A limit of one line per `window_ms`.
    pub const fn new(window_ms: u64) -> LogLimit {
        LogLimit {
            window_ms,
            state: Mutex::new(LimitState {
                last_ms: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(lines left out since the last one)` when a line may be logged at
    /// `now_ms`, else `None` (and the line is counted as left out).
    pub fn check(&self, now_ms: u64) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.last_ms != 0 && now_ms < state.last_ms.saturating_add(self.window_ms) {
            state.suppressed += 1;
            return None;
        }
        state.last_ms = now_ms.max(1);
        Some(std::mem::take(&mut state.suppressed))
    }
}

/// `tracing::$level!` at most once per [`LIMITED_WINDOW_MS`] for this call
/// site, with a `suppressed` field counting the lines left out before it.
#[macro_export]
macro_rules! limited {
    ($level:ident, $($rest:tt)+) => {{
        static LIMIT: $crate::logging::LogLimit = $crate::logging::LogLimit::new($crate::logging::LIMITED_WINDOW_MS);
        let now_ms = $crate::delivery::now_ms().max(0) as u64;
        if let Some(suppressed) = LIMIT.check(now_ms) {
            tracing::$level!(suppressed, $($rest)+);
        }
    }};
}

/// Free space below which the data directory's disk is "nearly full" (warn).
pub const DISK_LOW_PERCENT: u64 = 10;
/// Free space below which it is critical (error): appends will soon fail.
pub const DISK_CRITICAL_PERCENT: u64 = 5;
/// Free space above which a low disk is logged as recovered (hysteresis, so
/// that a disk hovering at a threshold logs once, not at every check).
pub const DISK_RECOVERED_PERCENT: u64 = 15;

/// How full the disk was at the last check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DiskLevel {
    Fine = 0,
    Low = 1,
    Critical = 2,
}

/// The disk level of the data directory across checks: a line when it changes.
#[derive(Default)]
pub struct DiskWatch {
    level: AtomicU8,
}

impl DiskWatch {
    /// The level for `available` of `total` bytes given the previous level,
    /// with hysteresis on the way back up.
    pub fn level_of(previous: DiskLevel, available: u64, total: u64) -> DiskLevel {
        if total == 0 {
            return previous;
        }
        let percent = available.saturating_mul(100) / total;
        if percent < DISK_CRITICAL_PERCENT {
            DiskLevel::Critical
        } else if percent < DISK_LOW_PERCENT {
            DiskLevel::Low
        } else if previous != DiskLevel::Fine && percent < DISK_RECOVERED_PERCENT {
            // Between the thresholds on the way back: still low.
            DiskLevel::Low
        } else {
            DiskLevel::Fine
        }
    }

    /// Records a check and logs the change of level, if any; returns the new level.
    pub fn check(&self, dir: &std::path::Path, available: u64, total: u64) -> DiskLevel {
        let previous = match self.level.load(Ordering::Relaxed) {
            2 => DiskLevel::Critical,
            1 => DiskLevel::Low,
            _ => DiskLevel::Fine,
        };
        let level = DiskWatch::level_of(previous, available, total);
        if level != previous {
            self.level.store(level as u8, Ordering::Relaxed);
            let free_percent = available.saturating_mul(100) / total.max(1);
            match level {
                DiskLevel::Critical => tracing::error!(
                    dir = %dir.display(), available_bytes = available, total_bytes = total, free_percent,
                    "disk nearly full: appends will fail with DISK_FULL when it is (docs/runbooks/disk-filling.md)"
                ),
                DiskLevel::Low => tracing::warn!(
                    dir = %dir.display(), available_bytes = available, total_bytes = total, free_percent,
                    "disk space low (docs/runbooks/disk-filling.md)"
                ),
                DiskLevel::Fine => tracing::info!(
                    dir = %dir.display(), available_bytes = available, total_bytes = total, free_percent,
                    "disk space recovered"
                ),
            }
        }
        level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_logs_once_per_window_and_counts_what_it_left_out() {
        let limit = LogLimit::new(1000);
        assert_eq!(limit.check(5_000), Some(0));
        assert_eq!(limit.check(5_001), None);
        assert_eq!(limit.check(5_999), None);
        assert_eq!(limit.check(6_000), Some(2));
        assert_eq!(limit.check(6_000), None);
        assert_eq!(limit.check(9_000), Some(1));
    }

    #[test]
    fn disk_levels_cross_thresholds_with_hysteresis() {
        use DiskLevel::*;
        let level = |previous, percent| DiskWatch::level_of(previous, percent, 100);
        assert_eq!(level(Fine, 50), Fine);
        assert_eq!(level(Fine, 10), Fine);
        assert_eq!(level(Fine, 9), Low);
        assert_eq!(level(Low, 4), Critical);
        assert_eq!(level(Critical, 5), Low);
        // Back above the low threshold but below the recovered one: still low.
        assert_eq!(level(Low, 12), Low);
        assert_eq!(level(Low, 15), Fine);
        assert_eq!(level(Fine, 12), Fine);
        assert_eq!(
            DiskWatch::level_of(Low, 0, 0),
            Low,
            "an unknown size keeps the level"
        );
    }

    #[test]
    fn a_watch_remembers_its_level_across_checks() {
        let watch = DiskWatch::default();
        let dir = std::path::Path::new("/data");
        assert_eq!(watch.check(dir, 50, 100), DiskLevel::Fine);
        assert_eq!(watch.check(dir, 8, 100), DiskLevel::Low);
        assert_eq!(watch.check(dir, 12, 100), DiskLevel::Low);
        assert_eq!(watch.check(dir, 3, 100), DiskLevel::Critical);
        assert_eq!(watch.check(dir, 40, 100), DiskLevel::Fine);
    }
}

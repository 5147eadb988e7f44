//! Progress bars of the long commands (`export`, `import`, `verify`, and
//! whatever else moves a lot of data): drawn on standard error when it is a
//! terminal, never otherwise, so scripts, pipes and tests see nothing.
//!
//! ```ignore
//! let progress = Progress::bytes(Some(total), "backup").quiet(args.json);
//! progress.inc(chunk.len() as u64);
//! progress.finish();
//! ```
//!
//! A [`Progress`] is cheap to clone (clones draw the same bar) and may be moved
//! to another thread. A total of `None` draws a spinner with the count and the
//! rate instead of a bar and an ETA. `--json` callers pass their flag to
//! [`Progress::quiet`]: a program reading JSON has no use for a bar.
//!
//! `STELE_PROGRESS=never` hides every bar even on a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};

/// The environment variable that turns progress bars off (`never`).
const PROGRESS_ENV: &str = "STELE_PROGRESS";

/// A progress display: a bar on a terminal, nothing elsewhere.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    /// `None` when nothing is drawn.
    bar: Option<ProgressBar>,
}

/// What a bar counts.
#[derive(Debug, Clone, Copy)]
enum Unit {
    Bytes,
    Events,
}

impl Progress {
    /// A bar over `total` bytes (or a counter without a total), labelled `label`.
    pub(crate) fn bytes(total: Option<u64>, label: &str) -> Progress {
        Progress::new(total, label, Unit::Bytes)
    }

    /// A bar over `total` events (or a counter without a total), labelled `label`.
    pub(crate) fn events(total: Option<u64>, label: &str) -> Progress {
        Progress::new(total, label, Unit::Events)
    }

    /// Nothing drawn, whatever stderr is.
    pub(crate) fn hidden() -> Progress {
        Progress { bar: None }
    }

    /// This display, or nothing when `quiet` (e.g. `--json`).
    pub(crate) fn quiet(self, quiet: bool) -> Progress {
        if quiet {
            if let Some(bar) = &self.bar {
                bar.finish_and_clear();
            }
            return Progress::hidden();
        }
        self
    }

    /// Whether a bar would be drawn: stderr is a terminal, and
    /// `STELE_PROGRESS` does not say `never`.
    pub(crate) fn enabled() -> bool {
        let off = std::env::var(PROGRESS_ENV).is_ok_and(|value| value.eq_ignore_ascii_case("never"));
        !off && std::io::stderr().is_terminal()
    }

    fn new(total: Option<u64>, label: &str, unit: Unit) -> Progress {
        if !Progress::enabled() {
            return Progress::hidden();
        }
        let template = match (unit, total) {
            (Unit::Bytes, Some(_)) => {
                "{prefix} [{wide_bar}] {bytes}/{total_bytes} ({binary_bytes_per_sec}, ETA {eta})"
            }
            (Unit::Events, Some(_)) => {
                "{prefix} [{wide_bar}] {human_pos}/{human_len} events ({per_sec}, ETA {eta})"
            }
            (Unit::Bytes, None) => "{prefix} {spinner} {bytes} ({binary_bytes_per_sec}, {elapsed})",
            (Unit::Events, None) => "{prefix} {spinner} {human_pos} events ({per_sec}, {elapsed})",
        };
        let style = ProgressStyle::with_template(template)
            .expect("the templates above are valid")
            .progress_chars("=> ");
        let bar = match total {
            Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
        };
        // A bar dropped on an error path clears its line too, so the error
        // message starts on a clean one.
        let bar = bar.with_finish(ProgressFinish::AndClear);
        bar.set_style(style);
        bar.set_prefix(label.to_string());
        Progress { bar: Some(bar) }
    }

    /// Counts `count` more bytes or events.
    pub(crate) fn inc(&self, count: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(count);
        }
    }

    /// Removes the bar from the terminal; the command prints its own summary.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Directory levels [`dir_size_bytes`] descends (a data directory has four:
/// `topics/NAME/PARTITION/dedup`).
const DIR_DEPTH_MAX: usize = 8;

/// The bytes of the regular files under `dir` (a progress total: unreadable
/// entries count 0, symbolic links are not followed).
pub(crate) fn dir_size_bytes(dir: &std::path::Path) -> u64 {
    fn walk(dir: &std::path::Path, depth: usize) -> u64 {
        if depth > DIR_DEPTH_MAX {
            return 0;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|entry| match entry.file_type() {
                Ok(kind) if kind.is_dir() => walk(&entry.path(), depth + 1),
                Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |metadata| metadata.len()),
                _ => 0,
            })
            .sum()
    }
    walk(dir, 0)
}

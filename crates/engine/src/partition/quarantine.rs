//! Opening a partition quarantined: when recovery finds damage it may not
//! repair by itself, the partition opens read-only over its good prefix
//! instead of failing the log.
//!
//! What quarantines: any `Corruption` or `Inconsistent` error of the normal
//! open (a bad frame in a sealed segment or below the checkpoint's sync floor,
//! a valid frame after a bad one in the active segment, a sealed segment
//! shorter than its index, segments that do not follow each other, a bad
//! checkpoint that cannot be ignored, a checkpoint past the log's end). A torn
//! or zero tail of the active segment is still cut silently by the normal
//! open and never gets here; I/O errors still fail the open.
//!
//! Invariant: a quarantined partition writes nothing (no cut, no rebuilt
//! index, no checkpoint, no dedup run, no retention); it has no worker thread.
//! It serves the offsets below the first damaged frame (up to the last complete
//! append call before it) and answers every other read, every key read and
//! every append with `Error::Quarantined`, which names the damaged file
//! relative to the data directory and the byte position.
//! Its key index is not rebuilt: key reads fail rather than answer from a
//! partial replay.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Partition, PartitionContext, State};
use crate::dedup::DedupIndex;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Offset, PartitionId};
use crate::keys::KeyIndex;
use crate::paths;
use crate::segment::{self, OpenedSegment, Segment};

use super::recover::RecoveryReport;

pub use crate::error::Quarantine;

impl Quarantine {
    /// The error a refused operation on the partition returns.
    pub fn error(&self, partition: PartitionId) -> Error {
        Error::Quarantined {
            partition,
            quarantine: Box::new(self.clone()),
        }
    }
}

/// Whether an error of the normal open means damage, which quarantines the
/// partition, rather than a failure that fails the open.
pub(crate) fn quarantines(error: &Error) -> bool {
    matches!(error.kind(), ErrorKind::Corruption | ErrorKind::Inconsistent)
}

/// `path` relative to the data directory that holds the partition directory
/// `dir` (`{data}/topics/{topic}/pNNNNN`); just the file name when it is
/// elsewhere.
fn relative_to_data(dir: &Path, path: &Path) -> String {
    let relative = dir
        .ancestors()
        .nth(3)
        .and_then(|data| path.strip_prefix(data).ok());
    match relative {
        Some(relative) => relative
            .components()
            .map(|component| component.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/"),
        None => path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// Where an error of the normal open points: file, position, reason.
fn damage_of(error: &Error, dir: &Path) -> (PathBuf, u64, String) {
    match error {
        Error::Corruption { path, position, .. } => (path.clone(), *position, segment::damage_reason(error)),
        Error::Inconsistent { path, .. } => (path.clone(), 0, segment::damage_reason(error)),
        other => (dir.to_path_buf(), 0, other.to_string()),
    }
}

impl Partition {
    /// Opens a partition quarantined after the normal open failed with
    /// `cause`: scans every segment, CRC checked, from the first, and serves
    /// the frames before the first damage found (the cause's place when the
    /// scan finds none in the segments, e.g. a bad checkpoint). Reads files
    /// only.
    pub(super) fn open_quarantined(
        dir: PathBuf,
        id: PartitionId,
        context: PartitionContext,
        cause: &Error,
    ) -> Result<Arc<Partition>> {
        let storage = &*context.storage;
        let options = context.options();
        let names = storage
            .read_dir(&dir)
            .map_err(|error| Error::io("list partition directory", &dir, error))?;
        let mut bases: Vec<Offset> = names
            .iter()
            .filter_map(|name| paths::parse_segment_file_name(name))
            .collect();
        bases.sort();
        let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len());
        let mut damage: Option<(PathBuf, u64, String)> = None;
        for (index, base) in bases.iter().enumerate() {
            let opened = OpenedSegment::open(storage, &dir, *base)?;
            if let Some(previous) = segments.last()
                && previous.published_end_offset() != *base
            {
                damage = Some((
                    opened.path.clone(),
                    0,
                    format!(
                        "segment starts at offset {base} but the previous one ends at {}",
                        previous.published_end_offset()
                    ),
                ));
                break;
            }
            let path = opened.path.clone();
            let last = index + 1 == bases.len();
            let prefix = Segment::open_prefix(storage, &dir, id, opened, options.index_interval_bytes, last)?;
            if let Some(segment) = prefix.segment {
                segments.push(Arc::new(segment));
            }
            if let Some((position, reason)) = prefix.damage {
                damage = Some((path, position, reason));
                break;
            }
        }
        let (path, position, reason) = damage.unwrap_or_else(|| damage_of(cause, &dir));
        if segments.is_empty() {
            // Nothing is served; an empty planned segment (no file) stands in.
            let base = bases.first().copied().unwrap_or(Offset(0));
            segments.push(Arc::new(Segment::planned(&dir, base, context.clock.now_ms())));
        }
        let earliest = segments.first().map_or(Offset(0), |segment| segment.base_offset);
        let active = Arc::clone(segments.last().expect("at least one segment"));
        let served_end = active.published_end_offset();
        let quarantine = Quarantine {
            file: relative_to_data(&dir, &path),
            position,
            reason,
            served_end,
        };
        tracing::error!(
            dir = %dir.display(),
            file = %quarantine.file,
            position = quarantine.position,
            reason = %quarantine.reason,
            served_end = %served_end,
            %cause,
            "partition quarantined: damage recovery may not repair; offsets below served_end are served, appends refused (see `stele repair` and docs/runbooks/corruption-detected.md)"
        );
        let dedup = DedupIndex::detached(
            Arc::clone(&context.storage),
            paths::dedup_dir(&dir),
            options.dedup_window_ms,
        );
        let last_timestamp_ms = active.timestamp_max();
        let state = State::opened(
            KeyIndex::default(),
            std::collections::HashMap::new(),
            dedup,
            active,
            served_end,
            last_timestamp_ms,
            served_end,
        );
        let report = RecoveryReport {
            quarantine: Some(quarantine.clone()),
            ..RecoveryReport::default()
        };
        Ok(Partition::assemble(
            id,
            dir,
            context,
            segments,
            state,
            earliest,
            report,
            Some(quarantine),
        ))
    }
}

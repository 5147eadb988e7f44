//! Offline repair of a damaged partition (`stele repair`): find the last good
//! append call, and cut the partition there.
//!
//! The plan is read-only: every segment is scanned, CRC checked, from the
//! first (the same scan a quarantined partition's open does), and the cut is
//! put after the last complete append call before the first damage (a bad
//! frame, a lost or unreadable header, a gap between segments) or, with no
//! damage, before a non-zero torn tail of the last segment.
//! Applying it moves the cut bytes aside into
//! `{data}/repair/{topic}/pNNNNN/{stamp}/`, never deleting them: the damaged
//! segment is copied there whole and replaced (write temp, fdatasync, rename,
//! directory fsync) by a new file holding its kept prefix, so no inode ever
//! shrinks (a backup may hard-link segment files); later segments, the cut
//! segment's `.idx`, dedup runs starting at or past the cut and a checkpoint
//! that covers cut offsets are moved there by rename.
//! Dedup runs that straddle the cut are truncated by the next open, as after
//! any recovery that lowers the log's end.
//!
//! Invariant: every step leaves a directory that the next open either opens
//! clean or quarantines again at a place a new plan cuts the same way, so a
//! repair interrupted by a crash is finished by running it again.
//!
//! Limit: with segments deleted by retention, a checkpoint that covers cut
//! offsets cannot be rebuilt (the key sequences of deleted events live only in
//! it); the plan refuses, and a restore from backup is the way out.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::event::{Offset, PartitionId};
use crate::format::checkpoint;
use crate::io::{self, OpenMode, Storage, StorageFile};
use crate::limits;
use crate::paths;
use crate::segment::{self, OpenedSegment, Segment};

/// The name of the directory, in the data directory, that repairs move cut
/// files into. It is not part of the data format: the engine never reads it.
pub const REPAIR_DIR: &str = "repair";

/// The damage a plan cuts at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairDamage {
    /// The damaged file, relative to the data directory, `/`-separated.
    pub file: String,
    /// The byte position of the damage within the file.
    pub position: u64,
    /// What is wrong there, in words.
    pub reason: String,
}

/// What a repair does to one segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentCut {
    /// The segment file, relative to the data directory.
    pub file: String,
    /// The segment's base offset.
    pub base_offset: Offset,
    /// Bytes kept from the start (header included); `None` when the whole
    /// file is moved aside.
    pub kept_bytes: Option<u64>,
    /// The file's size: bytes `[kept_bytes, size_bytes)` are cut.
    pub size_bytes: u64,
}

/// What `stele repair` would do to a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairPlan {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: PartitionId,
    /// The damage found; `None` when only a torn tail is cut (or nothing).
    pub damage: Option<RepairDamage>,
    /// The partition's high watermark after the repair: offsets from here are cut.
    pub cut_offset: Offset,
    /// One past the last offset known to have been stored before the repair
    /// (from the segments' names and indexes; frames past the damage cannot
    /// be read, so more may be lost inside the damaged range).
    pub known_end_offset: Offset,
    /// The segment files cut or moved, oldest first.
    pub segments: Vec<SegmentCut>,
    /// Derived files moved aside (indexes, checkpoint, dedup runs), relative
    /// to the data directory; the next open rebuilds what it needs.
    pub derived: Vec<String>,
}

impl RepairPlan {
    /// Events cut (at least: see [`RepairPlan::known_end_offset`]).
    pub fn events_lost(&self) -> u64 {
        self.known_end_offset.0.saturating_sub(self.cut_offset.0)
    }

    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.derived.is_empty()
    }
}

/// Takes the data directory's `LOCK` like `Log::open` does; held while the
/// returned file lives.
///
/// # Errors
/// [`Error::Locked`] when another process (a running server) holds it; I/O.
pub fn lock_data_dir(storage: &dyn Storage, data: &Path) -> Result<Arc<dyn StorageFile>> {
    let lock_path = paths::lock_file(data);
    let lock = storage
        .open(&lock_path, OpenMode::CreateTruncate)
        .map_err(|error| Error::io("open lock file", &lock_path, error))?;
    if !lock
        .try_lock()
        .map_err(|error| Error::io("lock data directory", &lock_path, error))?
    {
        return Err(Error::Locked {
            path: data.to_path_buf(),
        });
    }
    Ok(lock)
}

/// `path` relative to `data`, `/`-separated.
fn relative(data: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(data).unwrap_or(path);
    relative
        .components()
        .map(|component| component.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// The partition directory of `topic`/`partition` in `data`, checked to exist.
fn partition_dir(storage: &dyn Storage, data: &Path, topic: &str, partition: PartitionId) -> Result<PathBuf> {
    let topic_dir = paths::topic_dir(&paths::topics_dir(data), topic);
    if !storage.exists(&paths::topic_meta(&topic_dir)) {
        return Err(Error::TopicNotFound(topic.to_string()));
    }
    let dir = paths::partition_dir(&topic_dir, partition.0);
    if !storage.exists(&dir) {
        return Err(Error::InvalidArgument(format!(
            "topic {topic:?} has no partition {partition}"
        )));
    }
    Ok(dir)
}

/// Damage as found: the file, the byte position, the reason.
type Found = (PathBuf, u64, String);

/// Plans the repair of one partition; reads files only. The caller holds the
/// data directory's lock ([`lock_data_dir`]).
///
/// # Errors
/// [`Error::TopicNotFound`], [`Error::InvalidArgument`] for a partition the
/// topic lacks; [`Error::Inconsistent`] when the cut would need a checkpoint
/// that cannot be rebuilt (segments deleted by retention); I/O.
pub fn plan(storage: &dyn Storage, data: &Path, topic: &str, partition: PartitionId) -> Result<RepairPlan> {
    let dir = partition_dir(storage, data, topic, partition)?;
    let names = storage
        .read_dir(&dir)
        .map_err(|error| Error::io("list partition directory", &dir, error))?;
    let mut bases: Vec<Offset> = names
        .iter()
        .filter_map(|name| paths::parse_segment_file_name(name))
        .collect();
    bases.sort();
    let earliest = bases.first().copied().unwrap_or(Offset(0));
    let interval = crate::config::TopicOptions::default().index_interval_bytes;
    // The first segment cut: its index in `bases`, the bytes kept (None: all
    // moved), its size, the damage.
    let mut cut: Option<(usize, Option<u64>, u64, Option<Found>)> = None;
    let mut end = earliest;
    for (index, base) in bases.iter().enumerate() {
        let opened = OpenedSegment::open(storage, &dir, *base)?;
        let path = opened.path.clone();
        if *base != end {
            let size = opened.size();
            let reason = format!("segment starts at offset {base} but the previous one ends at {end}");
            cut = Some((index, None, size, Some((path, 0, reason))));
            break;
        }
        let last = index + 1 == bases.len();
        let prefix = Segment::open_prefix(storage, &dir, partition, opened, interval, last)?;
        let Some(segment) = prefix.segment else {
            cut = Some((
                index,
                None,
                prefix.size,
                prefix.damage.map(|(position, reason)| (path, position, reason)),
            ));
            break;
        };
        let kept = segment.published_size();
        end = segment.published_end_offset();
        if let Some((position, reason)) = prefix.damage {
            cut = Some((index, Some(kept), prefix.size, Some((path, position, reason))));
            break;
        }
        if last && prefix.tail_nonzero {
            cut = Some((index, Some(kept), prefix.size, None));
        }
    }
    let cut_offset = end;
    let mut plan = RepairPlan {
        topic: topic.to_string(),
        partition,
        damage: None,
        cut_offset,
        known_end_offset: cut_offset,
        segments: Vec::new(),
        derived: Vec::new(),
    };
    if let Some((first, kept, size, damage)) = cut {
        plan.damage = damage.map(|(path, position, reason)| RepairDamage {
            file: relative(data, &path),
            position,
            reason,
        });
        for (index, base) in bases.iter().enumerate().skip(first) {
            let path = dir.join(paths::segment_file_name(*base));
            let size_bytes = if index == first {
                size
            } else {
                storage
                    .open(&path, OpenMode::Read)
                    .and_then(|file| file.len())
                    .map_err(|error| Error::io("stat segment", &path, error))?
            };
            let known = match segment::indexed_end_offset(storage, &dir, *base) {
                Some(end) => end,
                // The last segment has no index: count its readable calls.
                None if index + 1 == bases.len() && index != first => {
                    let opened = OpenedSegment::open(storage, &dir, *base)?;
                    Segment::open_prefix(storage, &dir, partition, opened, interval, true)?
                        .segment
                        .map_or(*base, |segment| segment.published_end_offset())
                }
                None => *base,
            };
            plan.known_end_offset = plan.known_end_offset.max(known);
            plan.segments.push(SegmentCut {
                file: relative(data, &path),
                base_offset: *base,
                kept_bytes: if index == first { kept } else { None },
                size_bytes,
            });
            let index_path = dir.join(paths::index_file_name(*base));
            if storage.exists(&index_path) {
                plan.derived.push(relative(data, &index_path));
            }
        }
    }
    plan_checkpoint(storage, data, &dir, earliest, &mut plan)?;
    plan_dedup_runs(storage, data, &dir, &mut plan)?;
    Ok(plan)
}

/// Adds the checkpoint to the plan when it covers cut offsets (or cannot be
/// read, or its sync floor is past the cut), so that the next open rebuilds
/// state from the log. Refuses when early segments were deleted.
fn plan_checkpoint(
    storage: &dyn Storage,
    data: &Path,
    dir: &Path,
    earliest: Offset,
    plan: &mut RepairPlan,
) -> Result<()> {
    let path = paths::checkpoint(dir);
    if !storage.exists(&path) {
        return Ok(());
    }
    let bytes = io::read_file(storage, &path, limits::CHECKPOINT_SIZE_BYTES_MAX)
        .map_err(|error| Error::io("read checkpoint", &path, error))?;
    let kept_of = |base: Offset| {
        plan.segments
            .iter()
            .find(|cut| cut.base_offset == base)
            .map(|cut| cut.kept_bytes.unwrap_or(0))
    };
    let covers_cut = match checkpoint::decode(&bytes) {
        Err(_) => true,
        Ok(checkpoint) => {
            checkpoint.partition != plan.partition
                || checkpoint.next_offset > plan.cut_offset
                || kept_of(checkpoint.floor_base_offset).is_some_and(|kept| checkpoint.floor_position > kept)
                || plan.segments.first().is_some_and(|cut| {
                    cut.kept_bytes.is_none() && checkpoint.floor_base_offset >= cut.base_offset
                })
        }
    };
    if !covers_cut {
        return Ok(());
    }
    if earliest > Offset(0) {
        return Err(Error::Inconsistent {
            path,
            reason: format!(
                "the checkpoint covers offsets the repair would cut (from {}), and segments before offset {earliest} were deleted by retention, so key sequences cannot be rebuilt from the log: restore the partition from a backup instead",
                plan.cut_offset
            ),
        });
    }
    plan.derived.push(relative(data, &path));
    Ok(())
}

/// Adds the dedup runs that start at or past the cut.
fn plan_dedup_runs(storage: &dyn Storage, data: &Path, dir: &Path, plan: &mut RepairPlan) -> Result<()> {
    if plan.segments.is_empty() {
        return Ok(());
    }
    let dedup = paths::dedup_dir(dir);
    if !storage.exists(&dedup) {
        return Ok(());
    }
    let mut names = storage
        .read_dir(&dedup)
        .map_err(|error| Error::io("list dedup directory", &dedup, error))?;
    names.sort();
    for name in names {
        if let Some((_, offset_start)) = paths::parse_run_file_name(&name)
            && offset_start >= plan.cut_offset.0
        {
            plan.derived.push(relative(data, &dedup.join(name)));
        }
    }
    Ok(())
}

/// The bytes copied at a time.
const COPY_CHUNK_SIZE_BYTES: u64 = 1 << 20;

/// Copies bytes `[0, length)` of `from` into a new file `to`, fdatasynced.
fn copy_prefix(storage: &dyn Storage, from: &Path, to: &Path, length: u64) -> Result<()> {
    let source = storage
        .open(from, OpenMode::Read)
        .map_err(|error| Error::io("open segment", from, error))?;
    let target = storage
        .open(to, OpenMode::CreateTruncate)
        .map_err(|error| Error::io("create repair copy", to, error))?;
    let mut buffer = vec![0u8; COPY_CHUNK_SIZE_BYTES as usize];
    let mut position = 0u64;
    // Bounded: every round copies a non-empty chunk or stops.
    while position < length {
        let wanted = (length - position).min(COPY_CHUNK_SIZE_BYTES) as usize;
        let read = source
            .read_at_most(&mut buffer[..wanted], position)
            .map_err(|error| Error::io("read segment", from, error))?;
        if read == 0 {
            return Err(Error::io(
                "read segment",
                from,
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file shorter than planned"),
            ));
        }
        target
            .write_at(&buffer[..read], position)
            .map_err(|error| Error::io("write repair copy", to, error))?;
        position += read as u64;
    }
    target
        .sync_data()
        .map_err(|error| Error::io("sync repair copy", to, error))
}

/// Syncs `path` and its parents up to `data`, so a new directory is durable.
fn sync_dirs_up_to(storage: &dyn Storage, data: &Path, path: &Path) -> Result<()> {
    for dir in path.ancestors() {
        storage
            .sync_dir(dir)
            .map_err(|error| Error::io("sync repair directory", dir, error))?;
        if dir == data {
            break;
        }
    }
    Ok(())
}

/// Applies `plan` (made by [`plan`] under the same lock, with nothing changed
/// since): moves what it cuts into `{data}/repair/{topic}/pNNNNN/{stamp}/` and
/// returns that directory. The caller holds the data directory's lock.
///
/// # Errors
/// [`Error::InvalidArgument`] when the repair directory exists already; I/O.
pub fn apply(storage: &dyn Storage, data: &Path, plan: &RepairPlan, stamp: &str) -> Result<PathBuf> {
    let dir = partition_dir(storage, data, &plan.topic, plan.partition)?;
    let saved = data
        .join(REPAIR_DIR)
        .join(&plan.topic)
        .join(paths::partition_dir_name(plan.partition.0))
        .join(stamp);
    if storage.exists(&saved) {
        return Err(Error::InvalidArgument(format!(
            "the repair directory {} exists already",
            relative(data, &saved)
        )));
    }
    storage
        .create_dir_all(&saved)
        .map_err(|error| Error::io("create repair directory", &saved, error))?;
    sync_dirs_up_to(storage, data, &saved)?;
    let move_aside = |file: &str| -> Result<()> {
        let from = data.join(file);
        let to = saved.join(
            Path::new(file)
                .strip_prefix(relative(data, &dir))
                .unwrap_or(Path::new(file)),
        );
        if let Some(parent) = to.parent() {
            storage
                .create_dir_all(parent)
                .map_err(|error| Error::io("create repair directory", parent, error))?;
        }
        storage
            .rename(&from, &to)
            .map_err(|error| Error::io("move aside", &from, error))
    };
    // Later segments first, newest first: an interruption leaves a shorter
    // log that still ends in the damaged segment, which a rerun cuts.
    for cut in plan.segments.iter().rev() {
        match cut.kept_bytes {
            None => move_aside(&cut.file)?,
            Some(kept) => {
                let path = data.join(&cut.file);
                let name = path.file_name().map(PathBuf::from).unwrap_or_default();
                // The whole original is saved first (a copy: the original
                // inode is replaced, never shrunk), then the kept prefix
                // replaces it by rename.
                copy_prefix(storage, &path, &saved.join(&name), cut.size_bytes)?;
                storage
                    .sync_dir(&saved)
                    .map_err(|error| Error::io("sync repair directory", &saved, error))?;
                let temporary = paths::atomic_temporary(&path);
                copy_prefix(storage, &path, &temporary, kept)?;
                storage
                    .rename(&temporary, &path)
                    .map_err(|error| Error::io("replace segment", &path, error))?;
            }
        }
        storage
            .sync_dir(&dir)
            .map_err(|error| Error::io("sync partition directory", &dir, error))?;
    }
    for file in &plan.derived {
        move_aside(file)?;
    }
    storage
        .sync_dir(&dir)
        .map_err(|error| Error::io("sync partition directory", &dir, error))?;
    let dedup = paths::dedup_dir(&dir);
    if storage.exists(&dedup) {
        storage
            .sync_dir(&dedup)
            .map_err(|error| Error::io("sync dedup directory", &dedup, error))?;
    }
    let saved_dedup = saved.join(paths::DEDUP_DIR);
    if storage.exists(&saved_dedup) {
        storage
            .sync_dir(&saved_dedup)
            .map_err(|error| Error::io("sync repair directory", &saved_dedup, error))?;
    }
    storage
        .sync_dir(&saved)
        .map_err(|error| Error::io("sync repair directory", &saved, error))?;
    Ok(saved)
}

//! Opening a partition (recovery), checkpoints and retention.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::quarantine::{self, Quarantine};
use super::{Partition, PartitionContext, State};
use crate::dedup::{DedupIndex, Fingerprint};
use crate::error::{Error, Result};
use crate::event::{AppendAck, Offset, PartitionId, ProducerId, Sequence};
use crate::format::checkpoint::{self, Checkpoint, ProducerSnapshot};
use crate::format::record::RecordView;
use crate::format::segment::SEGMENT_HEADER_LEN;
use crate::io;
use crate::keys::{KeyIndex, KeyState, key_hash};
use crate::limits;
use crate::paths;
use crate::rules::remember_append;
use crate::segment::{ExcessKind, OpenedSegment, SealedExcess, Segment, TailRecovery};

/// What opening a partition found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The torn tail cut from the active segment.
    pub tail: TailRecovery,
    /// Records replayed from the log to rebuild derived state.
    pub records_replayed: u64,
    /// The checkpoint was missing or unreadable and state was rebuilt from the log.
    pub checkpoint_rebuilt: bool,
    /// Dedup run files dropped as damaged (rebuilt from the log).
    pub dedup_runs_dropped: usize,
    /// Sealed segments with bytes past their indexed end, which are not served.
    pub sealed_excess: Vec<SealedExcess>,
    /// Set when recovery found damage it may not repair: the partition was
    /// opened quarantined (see [`Quarantine`]).
    pub quarantine: Option<Quarantine>,
}

/// Replays records into derived state.
struct Replayer<'a> {
    keys: &'a mut KeyIndex,
    producers: &'a mut HashMap<ProducerId, ProducerSnapshot>,
    dedup: &'a mut DedupIndex,
    partition: PartitionId,
    keys_from: Offset,
    dedup_from: Offset,
    /// First offset, first sequence and timestamp of the call being replayed.
    call: Option<(Offset, Sequence, i64)>,
    records: u64,
    last_timestamp_ms: i64,
}

impl Replayer<'_> {
    fn apply(&mut self, view: &RecordView<'_>) -> Result<()> {
        self.records += 1;
        self.last_timestamp_ms = self.last_timestamp_ms.max(view.timestamp_ms);
        let call = *self
            .call
            .get_or_insert((view.offset, view.sequence, view.timestamp_ms));
        if view.offset >= self.keys_from {
            self.keys.replay(
                view.key,
                key_hash(view.key),
                view.sequence,
                view.offset,
                view.key_previous_offset,
            );
        }
        if view.offset >= self.dedup_from
            && let Some(id) = view.idempotency_id
        {
            self.dedup.insert(
                Fingerprint::of(view.key, id).keyed,
                view.offset,
                view.timestamp_ms,
            )?;
        }
        if view.is_call_end() {
            self.call = None;
            if let (Some(stamp), true) = (view.producer, view.offset >= self.keys_from) {
                let ack = AppendAck {
                    partition: self.partition,
                    first_offset: call.0,
                    first_sequence: call.1,
                    last_sequence: view.sequence,
                    timestamp_ms: call.2,
                    duplicate: false,
                };
                let producer = self
                    .producers
                    .entry(stamp.producer)
                    .or_insert_with(|| ProducerSnapshot {
                        id: stamp.producer,
                        epoch: stamp.epoch,
                        last_sequence: Sequence(0),
                        last_timestamp_ms: call.2,
                        recent: Vec::new(),
                    });
                if producer.epoch != stamp.epoch {
                    producer.recent.clear();
                }
                remember_append(producer, stamp, &ack);
            }
        }
        Ok(())
    }
}

impl Partition {
    /// Opens or creates a partition directory, recovering after a crash. Damage
    /// recovery may not repair by itself (corruption or an inconsistency, not a
    /// torn tail) opens the partition quarantined instead of failing.
    pub(crate) fn open(dir: PathBuf, id: PartitionId, context: PartitionContext) -> Result<Arc<Partition>> {
        match Partition::open_recovering(dir.clone(), id, context.clone()) {
            Err(error) if quarantine::quarantines(&error) => {
                Partition::open_quarantined(dir, id, context, &error)
            }
            result => result,
        }
    }

    /// Opens a partition whose files recovery can make whole.
    fn open_recovering(dir: PathBuf, id: PartitionId, context: PartitionContext) -> Result<Arc<Partition>> {
        let storage = &*context.storage;
        let options = context.options();
        storage
            .create_dir_all(&dir)
            .map_err(|error| Error::io("create partition directory", &dir, error))?;
        let names = storage
            .read_dir(&dir)
            .map_err(|error| Error::io("list partition directory", &dir, error))?;
        let mut bases: Vec<Offset> = names
            .iter()
            .filter_map(|name| paths::parse_segment_file_name(name))
            .collect();
        bases.sort();
        // Each segment file is opened once and its size measured once on that
        // descriptor; every decision below uses that size.
        let mut opened: Vec<OpenedSegment> = bases
            .iter()
            .map(|base| OpenedSegment::open(storage, &dir, *base))
            .collect::<Result<_>>()?;
        drop_unfinished_last_segment(storage, &mut opened)?;
        let bases: Vec<Offset> = opened.iter().map(|opened| opened.base_offset).collect();
        let mut report = RecoveryReport::default();

        let checkpoint_path = paths::checkpoint(&dir);
        let checkpoint = load_checkpoint(storage, &checkpoint_path, id)?;
        let earliest_base = bases.first().copied();
        let checkpoint = match checkpoint {
            Some(Ok(checkpoint)) => Some(checkpoint),
            Some(Err(error)) if earliest_base.is_some_and(|base| base > Offset(0)) => {
                // Segments were deleted by retention: rebuilding from the log would
                // restart the sequences of keys whose events are gone.
                return Err(error);
            }
            Some(Err(_)) => {
                report.checkpoint_rebuilt = true;
                None
            }
            None => {
                if earliest_base.is_some_and(|base| base > Offset(0)) {
                    return Err(Error::Inconsistent {
                        path: checkpoint_path,
                        reason: "checkpoint missing while early segments are deleted".to_string(),
                    });
                }
                None
            }
        };

        let (mut dedup, dedup_report) = DedupIndex::open(
            Arc::clone(&context.storage),
            paths::dedup_dir(&dir),
            options.dedup_window_ms,
        )?;
        report.dedup_runs_dropped = dedup_report.runs_dropped;

        let now = context.clock.now_ms();
        let mut keys = KeyIndex::default();
        let mut producers = HashMap::new();
        let mut keys_from = Offset(0);
        let mut last_timestamp_ms = i64::MIN;
        let mut floor = (Offset(0), 0u64);
        if let Some(checkpoint) = checkpoint {
            keys.reserve(checkpoint.keys.len());
            for (hash, sequence, offset) in checkpoint.keys {
                keys.set(
                    &[],
                    hash,
                    KeyState {
                        last_sequence: sequence,
                        last_offset: offset,
                    },
                    true,
                );
            }
            for (key, sequence, offset) in checkpoint.collided {
                keys.set(
                    &key,
                    key_hash(&key),
                    KeyState {
                        last_sequence: sequence,
                        last_offset: offset,
                    },
                    false,
                );
            }
            for producer in checkpoint.producers {
                producers.insert(producer.id, producer);
            }
            keys_from = checkpoint.next_offset;
            last_timestamp_ms = checkpoint.last_timestamp_ms;
            floor = (checkpoint.floor_base_offset, checkpoint.floor_position);
        }

        // Open the sealed segments. Segments at the end without a valid index, and
        // not below the checkpoint's sync floor, may not have been sealed when the
        // process stopped (sealing writes the index after all their records were
        // acknowledged): they are recovered like the active segment, below.
        // Segments below the floor were synced whole; a missing index there is
        // rebuilt, and damage is corruption.
        let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len().max(1));
        let mut sealed_count = bases.len().saturating_sub(1);
        while sealed_count > 0
            && bases[sealed_count - 1] >= floor.0
            && !opened[sealed_count - 1].is_sealed_on_disk(storage, &dir)
        {
            sealed_count -= 1;
        }
        let mut opened = opened.into_iter();
        for opened in opened.by_ref().take(sealed_count) {
            let (segment, excess) =
                Segment::open_sealed(storage, &dir, id, opened, options.index_interval_bytes)?;
            if let Some(previous) = segments.last() {
                check_contiguous(previous, &segment)?;
            }
            if let Some(excess) = excess {
                report_excess(&segment, &excess);
                report.sealed_excess.push(excess);
            }
            segments.push(Arc::new(segment));
        }

        // Replay from the older of what the checkpoint covers and what the dedup
        // index lacks within the window.
        let window_start = now.saturating_sub(options.dedup_window_ms as i64);
        // The first sealed segment with an event in the window; else the first
        // unsealed one (whose timestamps are known only once scanned below).
        let dedup_window_offset = segments
            .iter()
            .find(|segment| segment.timestamp_max() >= window_start)
            .map_or(bases.get(sealed_count).copied().unwrap_or(Offset(0)), |segment| {
                segment.base_offset
            });
        let dedup_from = dedup.persisted_end().max(dedup_window_offset);
        let mut replayer = Replayer {
            keys: &mut keys,
            producers: &mut producers,
            dedup: &mut dedup,
            partition: id,
            keys_from,
            dedup_from,
            call: None,
            records: 0,
            last_timestamp_ms,
        };
        let replay_from = keys_from.min(dedup_from);
        for segment in &segments {
            if segment.published_end_offset() <= replay_from {
                continue;
            }
            let mut position = if segment.base_offset >= replay_from {
                SEGMENT_HEADER_LEN as u64
            } else {
                segment.position_of(replay_from)?
            };
            while position < segment.published_size() {
                // Below the checkpoint only idempotency ids are replayed: records
                // without one are skipped by their header (their CRCs were
                // checked when they were written and are checked when read).
                let (size, offset, flags, id_len) = segment.summary_at(position)?;
                if offset < keys_from && id_len == 0 {
                    if flags & crate::format::record::FLAG_CALL_END != 0 {
                        replayer.call = None;
                    }
                    position += size;
                    continue;
                }
                let (view, size) = segment.decode_at(position)?;
                replayer.apply(&view)?;
                position += size;
            }
        }

        // The unsealed segments, in order: scan each whole and cut a torn tail. The
        // first one that ends torn, or short of the next one's base offset (its
        // last calls never reached the disk), ends the log: later segments hold
        // only records written after it, which were never acknowledged (a group
        // commit syncs a segment's records before any later one's are
        // acknowledged), and are removed.
        let tail_bases = &bases[sealed_count..];
        let mut active = None;
        for (position, (base, opened)) in tail_bases.iter().zip(opened).enumerate() {
            if active.is_some() {
                drop(opened);
                remove_segment_files(storage, &dir, *base)?;
                report.tail.segments_removed += 1;
                continue;
            }
            let durable_floor = if floor.0 == *base { floor.1 } else { 0 };
            let (segment, tail) = Segment::open_active(
                id,
                opened,
                options.index_interval_bytes,
                durable_floor,
                |view, _| {
                    if view.offset >= replay_from {
                        replayer.apply(view)?;
                    }
                    Ok(())
                },
            )?;
            report.tail.bytes_cut += tail.bytes_cut;
            report.tail.records_cut += tail.records_cut;
            report.tail.zero_bytes_cut += tail.zero_bytes_cut;
            if let Some(previous) = segments.last() {
                check_contiguous(previous, &segment)?;
            }
            let next = tail_bases.get(position + 1);
            let ends_here =
                next.is_none_or(|next| tail.bytes_cut > 0 || segment.published_end_offset() != *next);
            if ends_here {
                if next.is_some() && floor.0 > *base {
                    return Err(Error::Inconsistent {
                        path: segment.path.clone(),
                        reason: format!(
                            "the log ends in this segment at offset {} but the checkpoint says segment {} was synced",
                            segment.published_end_offset(),
                            floor.0
                        ),
                    });
                }
                active = Some(Arc::new(segment));
            } else {
                segment.seal(storage)?;
                segments.push(Arc::new(segment));
            }
        }
        let active = match active {
            Some(active) => active,
            None => Arc::new(Segment::create(
                storage,
                &dir,
                id,
                keys_from,
                now,
                options.preallocate.then_some(options.segment_size_bytes_max),
            )?),
        };
        report.records_replayed = replayer.records;
        last_timestamp_ms = replayer.last_timestamp_ms;
        segments.push(Arc::clone(&active));

        let high_watermark = active.published_end_offset();
        if high_watermark < keys_from {
            return Err(Error::Inconsistent {
                path: checkpoint_path,
                reason: format!("checkpoint covers offset {keys_from} but the log ends at {high_watermark}"),
            });
        }
        if dedup.persisted_end() > high_watermark {
            dedup.truncate_from(high_watermark);
        }
        let earliest = segments.first().map_or(Offset(0), |segment| segment.base_offset);
        let state = State::opened(
            keys,
            producers,
            dedup,
            active,
            high_watermark,
            last_timestamp_ms,
            keys_from,
        );
        let partition = Partition::assemble(id, dir, context, segments, state, earliest, report, None);
        debug_assert!(
            partition.segments()[..partition.segments().len() - 1]
                .iter()
                .all(|segment| segment.is_sealed()),
            "every segment but the active one is sealed at open"
        );
        let report = &partition.recovery;
        if report.tail.bytes_cut > 0 {
            tracing::warn!(
                dir = %partition.dir.display(),
                bytes_cut = report.tail.bytes_cut,
                records_cut = report.tail.records_cut,
                "cut a torn tail from the active segment"
            );
        }
        if report.tail.zero_bytes_cut > 0 {
            tracing::info!(
                dir = %partition.dir.display(),
                zero_bytes_cut = report.tail.zero_bytes_cut,
                "cut a zero-filled tail from the active segment"
            );
        }
        if report.checkpoint_rebuilt {
            tracing::warn!(dir = %partition.dir.display(), "checkpoint unreadable: state rebuilt from the log");
        }
        if report.dedup_runs_dropped > 0 {
            tracing::warn!(
                dir = %partition.dir.display(),
                runs = report.dedup_runs_dropped,
                "damaged dedup runs dropped: rebuilt from the log"
            );
        }
        tracing::debug!(dir = %partition.dir.display(), records_replayed = report.records_replayed, "partition open");
        partition.start_worker()?;
        Ok(partition)
    }

    /// Writes a checkpoint of the published state. The state is taken under the
    /// lock (no I/O there); the data it covers is synced after, without the lock,
    /// and before the checkpoint is written, so a checkpoint never covers bytes
    /// a power cut could lose. Its sync floor is the oldest segment not sealed
    /// (sealing is a worker job, so a complete segment may wait for its seal):
    /// every segment below it was synced whole by its seal.
    pub(crate) fn write_checkpoint(&self) -> Result<()> {
        if self.quarantine.is_some() {
            // Its state is not rebuilt: a checkpoint of it would be wrong.
            return Ok(());
        }
        let (bytes, high_watermark, unsealed) = {
            let mut state = self.lock();
            let high_watermark = self.high_watermark();
            // Lock order: state, then the segment list.
            let unsealed = self.unsealed_segments();
            let checkpoint = self.checkpoint_of(&state, high_watermark);
            state.bytes_since_checkpoint = 0;
            (checkpoint::encode(&checkpoint), high_watermark, unsealed)
        };
        self.sync_unsealed(&unsealed)?;
        let path = paths::checkpoint(&self.dir);
        io::write_file_atomic(&*self.context.storage, &path, &bytes)
            .map_err(|error| Error::io("write checkpoint", &path, error))?;
        let mut state = self.lock();
        // Invariant: the offset checkpoints cover never moves backwards.
        assert!(
            high_watermark >= state.checkpoint_offset,
            "checkpoint offset moves backwards: {} -> {high_watermark}",
            state.checkpoint_offset
        );
        state.checkpoint_offset = high_watermark;
        Ok(())
    }

    /// Pins the published state for a backup (`backup.rs`), under the lock and
    /// without I/O: the high watermark, the earliest offset, every segment with
    /// its published size and whether it is sealed, and the bytes of a
    /// checkpoint of exactly that state (its sync floor is the oldest segment
    /// not sealed at its published size, which the backup copies whole). The
    /// backup then copies the segments without the lock: bytes below a
    /// published size never change, and a sealed segment never changes at all.
    pub(crate) fn pin(&self) -> PartitionPin {
        let state = self.lock();
        let high_watermark = self.high_watermark();
        // Lock order: state, then the segment list.
        let segments = self
            .segments()
            .iter()
            .map(|segment| PinnedSegment {
                size: segment.published_size(),
                sealed: segment.is_sealed(),
                created: segment.is_created(),
                segment: Arc::clone(segment),
            })
            .collect();
        let checkpoint = checkpoint::encode(&self.checkpoint_of(&state, high_watermark));
        PartitionPin {
            id: self.id,
            high_watermark,
            earliest: self.earliest(),
            segments,
            checkpoint,
        }
    }

    /// A checkpoint of the published state (`state` is the locked state) at
    /// `high_watermark`.
    fn checkpoint_of(&self, state: &State, high_watermark: Offset) -> Checkpoint {
        {
            let floor_segment = {
                let segments = self.segments();
                let first = segments.partition_point(|segment| segment.is_sealed());
                Arc::clone(&segments[first.min(segments.len() - 1)])
            };
            assert!(
                floor_segment.base_offset <= state.active.base_offset,
                "the sync floor {} is past the active segment {}",
                floor_segment.base_offset,
                state.active.base_offset
            );
            Checkpoint {
                partition: self.id,
                next_offset: high_watermark,
                floor_base_offset: floor_segment.base_offset,
                // Published bytes were written before publication, so syncing
                // after this point covers them.
                floor_position: floor_segment.published_size(),
                last_timestamp_ms: state.last_timestamp_ms,
                keys: state
                    .keys
                    .iter_by_hash()
                    .map(|(hash, key)| (hash, key.last_sequence, key.last_offset))
                    .collect(),
                collided: state
                    .keys
                    .iter_collided()
                    .map(|(key, state)| (key.to_vec(), state.last_sequence, state.last_offset))
                    .collect(),
                producers: state.producers.values().cloned().collect(),
            }
        }
    }

    /// Deletes whole sealed segments beyond the retention limits. Returns how many
    /// were deleted.
    pub(crate) fn enforce_retention(&self) -> Result<usize> {
        let options = self.context.options();
        if self.quarantine.is_some()
            || (options.retention_age_ms.is_none() && options.retention_bytes.is_none())
        {
            return Ok(0);
        }
        // Only sealed segments are deleted; seal the full ones first (without
        // the state lock) rather than leave them to the worker's next round.
        if !self.is_poisoned() {
            self.seal_full_segments();
        }
        let now = self.context.clock.now_ms();
        let doomed: Vec<Arc<Segment>> = {
            let segments = self.segments();
            let mut total: u64 = segments.iter().map(|segment| segment.published_size()).sum();
            let mut doomed = Vec::new();
            for segment in &segments[..segments.len() - 1] {
                if !segment.is_sealed() {
                    break;
                }
                let too_old = options
                    .retention_age_ms
                    .is_some_and(|age| now.saturating_sub(segment.timestamp_max()) > age as i64);
                let too_big = options.retention_bytes.is_some_and(|bytes| total > bytes);
                if !(too_old || too_big) {
                    break;
                }
                total -= segment.published_size();
                doomed.push(Arc::clone(segment));
            }
            doomed
        };
        let Some(last) = doomed.last() else {
            return Ok(0);
        };
        // Key sequences must survive the deletion: the checkpoint must cover it.
        if self.lock().checkpoint_offset < last.published_end_offset() {
            self.write_checkpoint()?;
        }
        {
            let mut segments = self
                .segments
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            segments.drain(..doomed.len());
            let earliest = segments
                .first()
                .expect("the active segment is never deleted")
                .base_offset;
            self.earliest.store(earliest.0, Ordering::Release);
        }
        let storage = &*self.context.storage;
        let doomed_bytes: u64 = doomed.iter().map(|segment| segment.published_size()).sum();
        for segment in &doomed {
            // Unlinking is safe while readers hold a mapping: the inode lives on.
            storage
                .remove_file(&segment.path)
                .map_err(|error| Error::io("delete segment", &segment.path, error))?;
            let index_path = paths::index_of_segment(&segment.path);
            if storage.exists(&index_path) {
                storage
                    .remove_file(&index_path)
                    .map_err(|error| Error::io("delete segment index", &index_path, error))?;
            }
        }
        storage
            .sync_dir(&self.dir)
            .map_err(|error| Error::io("sync partition directory", &self.dir, error))?;
        self.context.metrics.retention_deleted(doomed.len(), doomed_bytes);
        tracing::info!(dir = %self.dir.display(), segments = doomed.len(), earliest = %self.earliest(), "retention deleted segments");
        Ok(doomed.len())
    }
}

/// Removes a segment file and its index (unacknowledged records after the end of
/// the recovered log), and makes the removal durable.
fn remove_segment_files(storage: &dyn crate::io::Storage, dir: &Path, base: Offset) -> Result<()> {
    for name in [paths::segment_file_name(base), paths::index_file_name(base)] {
        let path = dir.join(name);
        if storage.exists(&path) {
            storage
                .remove_file(&path)
                .map_err(|error| Error::io("remove unacknowledged segment", &path, error))?;
        }
    }
    storage
        .sync_dir(dir)
        .map_err(|error| Error::io("sync partition directory", dir, error))
}

fn check_contiguous(previous: &Segment, next: &Segment) -> Result<()> {
    if previous.published_end_offset() != next.base_offset {
        return Err(Error::Inconsistent {
            path: next.path.clone(),
            reason: format!(
                "segment starts at offset {} but the previous one ends at {}",
                next.base_offset,
                previous.published_end_offset()
            ),
        });
    }
    Ok(())
}

/// A crash while a segment was being created can leave a last file shorter than
/// its header; it holds no records and is removed.
fn drop_unfinished_last_segment(
    storage: &dyn crate::io::Storage,
    opened: &mut Vec<OpenedSegment>,
) -> Result<()> {
    let Some(last) = opened.last() else {
        return Ok(());
    };
    if last.is_unfinished()? {
        let last = opened.pop().expect("a last segment");
        let path = last.path.clone();
        drop(last);
        storage
            .remove_file(&path)
            .map_err(|error| Error::io("remove unfinished segment", &path, error))?;
    }
    Ok(())
}

/// Logs bytes found past a sealed segment's indexed end: zeros quietly (an
/// artefact of the file system), anything else loudly.
fn report_excess(segment: &Segment, excess: &SealedExcess) {
    let path = segment.path.display();
    match excess.kind {
        ExcessKind::Zeros => tracing::info!(
            path = %path,
            position = excess.position,
            bytes = excess.bytes_count,
            "zero bytes past a sealed segment's indexed end: not served"
        ),
        ExcessKind::Unreadable => tracing::warn!(
            path = %path,
            position = excess.position,
            bytes = excess.bytes_count,
            "the file system reports bytes past a sealed segment's indexed end that cannot be read: not served"
        ),
        ExcessKind::Frames => tracing::error!(
            path = %path,
            position = excess.position,
            bytes = excess.bytes_count,
            "valid record frames past a sealed segment's indexed end: not served; inspect with `stele verify`"
        ),
        ExcessKind::Garbage => tracing::warn!(
            path = %path,
            position = excess.position,
            bytes = excess.bytes_count,
            "non-zero bytes past a sealed segment's indexed end: not served"
        ),
    }
}

fn load_checkpoint(
    storage: &dyn crate::io::Storage,
    path: &Path,
    partition: PartitionId,
) -> Result<Option<Result<Checkpoint>>> {
    if !storage.exists(path) {
        return Ok(None);
    }
    let bytes = io::read_file(storage, path, limits::CHECKPOINT_SIZE_BYTES_MAX)
        .map_err(|error| Error::io("read checkpoint", path, error))?;
    Ok(Some(
        checkpoint::decode(&bytes)
            .map_err(|reason| Error::corruption(path, 0, reason))
            .and_then(|checkpoint| {
                if checkpoint.partition == partition {
                    Ok(checkpoint)
                } else {
                    Err(Error::Inconsistent {
                        path: path.to_path_buf(),
                        reason: format!("checkpoint of partition {}", checkpoint.partition),
                    })
                }
            }),
    ))
}

/// A partition's published state pinned for a backup ([`Partition::pin`]).
pub(crate) struct PartitionPin {
    pub(crate) id: PartitionId,
    pub(crate) high_watermark: Offset,
    pub(crate) earliest: Offset,
    /// Oldest first.
    pub(crate) segments: Vec<PinnedSegment>,
    /// A checkpoint (`STELECKP` envelope) at exactly `high_watermark`.
    pub(crate) checkpoint: Vec<u8>,
}

/// One segment of a [`PartitionPin`].
pub(crate) struct PinnedSegment {
    /// Holds the segment's mapping alive while the backup reads it.
    pub(crate) segment: Arc<Segment>,
    /// The published size when pinned.
    pub(crate) size: u64,
    pub(crate) sealed: bool,
    /// Whether its file exists (a roll plans a segment before its writer creates it).
    pub(crate) created: bool,
}

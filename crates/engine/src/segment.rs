//! One segment: a file of record frames after a header, named by its base offset,
//! with a sparse in-memory index; plus recovery of a segment's tail.
//!
//! Invariant: bytes below `published_size` are complete, checksummed frames with
//! contiguous offsets from `base_offset`; they never change or move while the
//! process runs. Readers touch nothing at or beyond `published_size`.
//! Invariant: only the active (last) segment of a partition grows; a sealed segment
//! is immutable and has an `.idx` file (derived data, rebuilt when missing or bad).
//! Invariant: recovery decides everything about a segment file from one
//! descriptor and one size measured on it (`OpenedSegment`), and reads it through
//! that descriptor (`ChunkReader`), never through a mapping: a file shorter than
//! its size says ends the scan instead of faulting. A sealed segment serves up to
//! its indexed end and maps no more than that, which is within the file; bytes
//! past it are reported (`SealedExcess`), never served and never cut.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use crate::error::{Error, Result};
use crate::event::{Offset, PartitionId};
use crate::format::index::{IndexEntry, SegmentIndex};
use crate::format::record::{self, RECORD_HEADER_LEN, RecordView};
use crate::format::segment::{SEGMENT_HEADER_LEN, SegmentHeader};
use crate::format::{self, DecodeError};
use crate::io::{self, Map, OpenMode, Storage, StorageFile};
use crate::limits;
use crate::paths;

/// The address space reserved for one segment's read-only mapping: a header,
/// the largest segment, and one append call past its size limit.
pub const SEGMENT_MAP_SIZE_BYTES: u64 =
    SEGMENT_HEADER_LEN as u64 + limits::SEGMENT_SIZE_BYTES_MAX + limits::APPEND_SIZE_BYTES_MAX;
// Positions within a segment are stored as `u32`.
const _: () = assert!(SEGMENT_MAP_SIZE_BYTES <= u32::MAX as u64);
// A segment always holds its header and at least one record.
const _: () = assert!(limits::SEGMENT_SIZE_BYTES_MIN > SEGMENT_HEADER_LEN as u64);

/// One segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base_offset: Offset,
    pub(crate) path: PathBuf,
    pub(crate) created_ms: i64,
    /// The file and its mapping, set once the file exists with a synced header
    /// and directory entry. A segment planned by a roll has neither until the
    /// writer creates it, outside the partition's state lock, before the first
    /// bytes go into it; nothing is published into it before then.
    file: OnceLock<Arc<dyn StorageFile>>,
    map: OnceLock<Map>,
    index: RwLock<Vec<IndexEntry>>,
    published_size: AtomicU64,
    published_end_offset: AtomicU64,
    timestamp_max: AtomicI64,
    sealed: AtomicBool,
}

/// What recovery of a segment's tail found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TailRecovery {
    /// Bytes cut from the end (torn or half-written frames, or an unfinished call).
    pub bytes_cut: u64,
    /// Whole frames cut because their append call was not complete.
    pub records_cut: u64,
    /// Segment files removed because they followed the end of the recovered log
    /// (created by a roll whose earlier records never reached the disk).
    pub segments_removed: u64,
    /// Zero bytes cut after the last complete call: preallocated space, or a
    /// file whose size ran ahead of its data (a power cut can leave a zero-filled
    /// tail). Not counted in `bytes_cut`.
    pub zero_bytes_cut: u64,
}

/// Bytes found past a sealed segment's indexed end. They are never served: the
/// segment serves up to the end its `.idx` records, and these bytes stay on disk
/// for inspection (`stele verify` reports them too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedExcess {
    /// The segment's base offset.
    pub base_offset: Offset,
    /// The indexed end: where the excess starts.
    pub position: u64,
    /// How many bytes follow the indexed end.
    pub bytes_count: u64,
    /// What they look like.
    pub kind: ExcessKind,
}

/// What the bytes past a sealed segment's indexed end look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExcessKind {
    /// All zero: a lost trim of preallocated space or a size that ran ahead of
    /// the data. An artefact of the file system.
    Zeros,
    /// A valid frame continuing the segment's offsets starts at the indexed end.
    /// Records were written to a segment after it was sealed, which the engine
    /// never does: worth a look.
    Frames,
    /// Anything else.
    Garbage,
    /// The descriptor's size counts them, but reading finds the file's end
    /// first: the size ran ahead of the data, or the file shrank.
    Unreadable,
}

/// A segment file opened for recovery, with its size measured once on the open
/// descriptor. Every later decision about the file (sealed or not, where its
/// frames end, how much to map) uses this size and this descriptor, never
/// another open or a path lookup: a file system's caches can make those disagree.
#[derive(Debug)]
pub(crate) struct OpenedSegment {
    pub(crate) base_offset: Offset,
    pub(crate) path: PathBuf,
    file: Arc<dyn StorageFile>,
    size: u64,
    /// The `.idx`, once read: read at most once, so that deciding whether the
    /// segment is sealed and opening it use the same index.
    index: Option<Option<SegmentIndex>>,
}

impl OpenedSegment {
    /// Opens `{base_offset}.log` in `dir` for reading and writing and measures it.
    pub(crate) fn open(storage: &dyn Storage, dir: &Path, base_offset: Offset) -> Result<OpenedSegment> {
        let path = dir.join(paths::segment_file_name(base_offset));
        let file = storage
            .open(&path, OpenMode::ReadWrite)
            .map_err(|error| Error::io("open segment", &path, error))?;
        let size = file
            .len()
            .map_err(|error| Error::io("stat segment", &path, error))?;
        Ok(OpenedSegment {
            base_offset,
            path,
            file,
            size,
            index: None,
        })
    }

    /// The file's size, measured once on its descriptor.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Whether the file is shorter than a header or its header is all zero: a
    /// crash while the segment was being created.
    pub(crate) fn is_unfinished(&self) -> Result<bool> {
        if self.size < SEGMENT_HEADER_LEN as u64 {
            return Ok(true);
        }
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        match self.file.read_at(&mut header, 0) {
            Ok(()) => Ok(header.iter().all(|byte| *byte == 0)),
            // Shorter than measured: the header never fully landed.
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(true),
            Err(error) => Err(Error::io("read segment header", &self.path, error)),
        }
    }

    /// Whether the segment was sealed: its `.idx` exists, agrees with its base
    /// offset and does not reach past the file's end. Sealing writes the index
    /// last, after every record of the segment was acknowledged, so a segment
    /// without one may end torn. Bytes past the indexed end do not unseal it.
    pub(crate) fn is_sealed_on_disk(&mut self, storage: &dyn Storage, dir: &Path) -> bool {
        let size = self.size;
        self.index(storage, dir)
            .is_some_and(|index| index_fits(index, size))
    }

    /// The segment's `.idx` (see [`load_index`]), read on first use.
    fn index(&mut self, storage: &dyn Storage, dir: &Path) -> Option<&SegmentIndex> {
        let base_offset = self.base_offset;
        self.index
            .get_or_insert_with(|| load_index(storage, dir, base_offset))
            .as_ref()
    }

    fn header(&self, partition: PartitionId) -> Result<SegmentHeader> {
        let header = read_header(&*self.file, &self.path, self.size)?;
        if header.partition != partition || header.base_offset != self.base_offset {
            return Err(Error::Inconsistent {
                path: self.path.clone(),
                reason: format!(
                    "header says partition {} base offset {}, file name says partition {partition} base offset {}",
                    header.partition, header.base_offset, self.base_offset
                ),
            });
        }
        Ok(header)
    }
}

/// Whether the segment was sealed, for `stele verify`, which opens files read
/// only: the same rule as [`OpenedSegment::is_sealed_on_disk`], on a size
/// measured once on a descriptor of its own.
pub(crate) fn is_sealed_on_disk(storage: &dyn Storage, dir: &Path, base_offset: Offset) -> bool {
    let path = dir.join(paths::segment_file_name(base_offset));
    let Ok(file) = storage.open(&path, OpenMode::Read) else {
        return false;
    };
    let Ok(size) = file.len() else {
        return false;
    };
    load_index(storage, dir, base_offset).is_some_and(|index| index_fits(&index, size))
}

/// Whether an index can describe a file of `size` bytes: its end is past the
/// header and not past the file's end.
fn index_fits(index: &SegmentIndex, size: u64) -> bool {
    index.segment_size >= SEGMENT_HEADER_LEN as u64 && index.segment_size <= size
}

impl Segment {
    /// Creates a new, empty segment file and makes it durable (file and directory).
    pub(crate) fn create(
        storage: &dyn Storage,
        dir: &Path,
        partition: PartitionId,
        base_offset: Offset,
        created_ms: i64,
        preallocate_bytes: Option<u64>,
    ) -> Result<Segment> {
        let segment = Segment::planned(dir, base_offset, created_ms);
        segment.materialize(storage, dir, partition, preallocate_bytes)?;
        Ok(segment)
    }

    /// A segment that a roll decided on, without its file yet: no I/O. Records
    /// may be encoded for it; [`Segment::materialize`] creates the file before
    /// any of them is written.
    pub(crate) fn planned(dir: &Path, base_offset: Offset, created_ms: i64) -> Segment {
        Segment {
            base_offset,
            path: dir.join(paths::segment_file_name(base_offset)),
            created_ms,
            file: OnceLock::new(),
            map: OnceLock::new(),
            index: RwLock::new(Vec::new()),
            published_size: AtomicU64::new(SEGMENT_HEADER_LEN as u64),
            published_end_offset: AtomicU64::new(base_offset.0),
            timestamp_max: AtomicI64::new(i64::MIN),
            sealed: AtomicBool::new(false),
        }
    }

    /// Whether the segment's file exists (with a synced header and directory
    /// entry). Only a segment planned by a roll and not yet written lacks one.
    pub(crate) fn is_created(&self) -> bool {
        self.file.get().is_some()
    }

    /// Creates a planned segment's file and makes it durable (header fdatasync,
    /// directory fsync) before records go into it; nothing when it exists. The
    /// partition calls it from its writer, never under the state lock. Only one
    /// thread writes a partition's segments at a time, so it never races itself.
    pub(crate) fn materialize(
        &self,
        storage: &dyn Storage,
        dir: &Path,
        partition: PartitionId,
        preallocate_bytes: Option<u64>,
    ) -> Result<()> {
        if self.is_created() {
            return Ok(());
        }
        assert!(
            self.published_size() == SEGMENT_HEADER_LEN as u64,
            "segment {} published {} bytes before its file exists",
            self.base_offset,
            self.published_size()
        );
        let path = &self.path;
        let file = storage
            .open(path, OpenMode::CreateTruncate)
            .map_err(|error| Error::io("create segment", path, error))?;
        let header = format::segment::encode(&SegmentHeader {
            partition,
            base_offset: self.base_offset,
            created_ms: self.created_ms,
        });
        let prepared = (|| {
            if let Some(bytes) = preallocate_bytes {
                file.allocate(bytes)
                    .map_err(|error| Error::io("preallocate segment", path, error))?;
            }
            file.write_at(&header, 0)
                .map_err(|error| Error::io("write segment header", path, error))?;
            file.sync_data()
                .map_err(|error| Error::io("sync segment header", path, error))?;
            storage
                .sync_dir(dir)
                .map_err(|error| Error::io("sync partition directory", dir, error))?;
            file.map_reserved(SEGMENT_MAP_SIZE_BYTES)
                .map_err(|error| Error::io("map segment", path, error))
        })();
        match prepared {
            Ok(map) => {
                // Invariant: the mapping is set before the file, so that a
                // created segment always has both.
                assert!(
                    self.map.set(map).is_ok(),
                    "segment {} mapped twice",
                    self.base_offset
                );
                assert!(
                    self.file.set(file).is_ok(),
                    "segment {} created twice",
                    self.base_offset
                );
                Ok(())
            }
            Err(error) => {
                // A failed roll must not leave a file behind: once later records go
                // to the previous segment, a stray file in the middle of the
                // partition would fail the next open. A crash before this removal
                // leaves it last, where opening drops it as unfinished (or keeps
                // it as an empty active segment when its header was synced).
                drop(file);
                let _ = storage.remove_file(path);
                Err(error)
            }
        }
    }

    /// A segment with no published records yet, that this process will append
    /// to: its mapping reserves the address space a segment can grow to, and
    /// readers only touch the published bytes, which this process wrote or
    /// read back through the descriptor.
    fn empty(
        path: PathBuf,
        file: Arc<dyn StorageFile>,
        base_offset: Offset,
        created_ms: i64,
    ) -> Result<Segment> {
        let map = file
            .map_reserved(SEGMENT_MAP_SIZE_BYTES)
            .map_err(|error| Error::io("map segment", &path, error))?;
        Ok(Segment::header_only(path, file, map, base_offset, created_ms))
    }

    /// A segment over `map` holding only its header; records are published
    /// into it later.
    fn header_only(
        path: PathBuf,
        file: Arc<dyn StorageFile>,
        map: Map,
        base_offset: Offset,
        created_ms: i64,
    ) -> Segment {
        Segment::with_file(
            path,
            file,
            map,
            base_offset,
            created_ms,
            Vec::new(),
            SEGMENT_HEADER_LEN as u64,
            base_offset,
            i64::MIN,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn with_file(
        path: PathBuf,
        file: Arc<dyn StorageFile>,
        map: Map,
        base_offset: Offset,
        created_ms: i64,
        index: Vec<IndexEntry>,
        size: u64,
        end_offset: Offset,
        timestamp_max: i64,
    ) -> Segment {
        assert!(
            size <= map.len(),
            "segment {} published size {size} past its mapping of {} bytes",
            path.display(),
            map.len()
        );
        Segment {
            base_offset,
            path,
            created_ms,
            file: OnceLock::from(file),
            map: OnceLock::from(map),
            index: RwLock::new(index),
            published_size: AtomicU64::new(size),
            published_end_offset: AtomicU64::new(end_offset.0),
            timestamp_max: AtomicI64::new(timestamp_max),
            sealed: AtomicBool::new(false),
        }
    }

    /// Opens a sealed segment. With a `.idx` that agrees with the base offset
    /// and ends within the file, the segment serves up to the indexed end, and
    /// bytes past it are classified and returned, never served. Without one, the
    /// index is rebuilt by a scan through the descriptor: a bad frame is
    /// corruption, but zeros after the last complete call are excess like bytes
    /// past an indexed end.
    pub(crate) fn open_sealed(
        storage: &dyn Storage,
        dir: &Path,
        partition: PartitionId,
        mut opened: OpenedSegment,
        index_interval_bytes: u32,
    ) -> Result<(Segment, Option<SealedExcess>)> {
        let created_ms = opened.header(partition)?.created_ms;
        opened.index(storage, dir);
        let OpenedSegment {
            base_offset,
            path,
            file,
            size,
            index,
        } = opened;
        let loaded = index.flatten();
        if let Some(index) = loaded.as_ref().filter(|index| index_fits(index, size)) {
            let end = index.segment_size;
            let end_offset = Offset(base_offset.0 + index.records_count);
            let excess = if end < size {
                Some(classify_excess(
                    &*file,
                    &path,
                    base_offset,
                    end_offset,
                    end,
                    size,
                )?)
            } else {
                None
            };
            let map = map_sealed(&*file, &path, end)?;
            let segment = Segment::with_file(
                path,
                file,
                map,
                base_offset,
                created_ms,
                index.entries.clone(),
                end,
                end_offset,
                index.timestamp_max,
            );
            segment.sealed.store(true, Ordering::Release);
            return Ok((segment, excess));
        }
        // An index that says the file is longer than it is: the segment lost
        // bytes it had when it was sealed (or its descriptor reports too small
        // a size). Rebuilding would serve it short; mapping the indexed end
        // would reach past the file's end.
        if loaded.is_some_and(|index| index.segment_size > size) {
            return Err(Error::corruption(
                &path,
                size,
                DecodeError::Invalid("sealed segment is shorter than its index"),
            ));
        }
        let corrupt = |position: u64, reason: DecodeError| Error::corruption(&path, position, reason);
        let scan = scan_file(
            &*file,
            &path,
            base_offset,
            size,
            index_interval_bytes,
            |_, _, _| Ok(()),
        )?;
        let end = scan.call_end_size;
        let mut excess = None;
        if end < size {
            let kind = match zero_check(&*file, &path, end, size)? {
                ZeroCheck::Zero => ExcessKind::Zeros,
                ZeroCheck::Short => ExcessKind::Unreadable,
                ZeroCheck::NonZero => {
                    return Err(match scan.failure {
                        Some((position, reason)) => corrupt(position, reason),
                        None => corrupt(
                            end,
                            DecodeError::Invalid("sealed segment ends inside an append call"),
                        ),
                    });
                }
            };
            excess = Some(SealedExcess {
                base_offset,
                position: end,
                bytes_count: size - end,
                kind,
            });
        }
        let map = map_sealed(&*file, &path, end)?;
        let segment = Segment::header_only(path, file, map, base_offset, created_ms);
        segment.publish(end, scan.end_offset, scan.timestamp_max, &scan.index);
        segment.write_index(storage)?;
        segment.sealed.store(true, Ordering::Release);
        Ok((segment, excess))
    }

    /// Opens the active segment after a restart: scans every frame through the
    /// descriptor (checking CRCs), cuts a torn or zero-filled tail, and calls
    /// `replay` for every kept record. A bad frame below `durable_floor` (a
    /// position known to have been synced) is corruption.
    pub(crate) fn open_active(
        partition: PartitionId,
        opened: OpenedSegment,
        index_interval_bytes: u32,
        durable_floor: u64,
        mut replay: impl FnMut(&RecordView<'_>, u64) -> Result<()>,
    ) -> Result<(Segment, TailRecovery)> {
        let created_ms = opened.header(partition)?.created_ms;
        // An `.idx` of the active segment is ignored: the scan is the truth.
        let OpenedSegment {
            base_offset,
            path,
            file,
            size,
            ..
        } = opened;
        let segment = Segment::empty(path, file, base_offset, created_ms)?;
        // Records are replayed only once their call is known to be complete; the
        // frames of a call in progress are kept as copies, since the scan's
        // buffer moves on.
        let mut call: Vec<(u64, Vec<u8>)> = Vec::new();
        let scan = scan_file(
            &**segment.file(),
            &segment.path,
            base_offset,
            size,
            index_interval_bytes,
            |view, position, frame| {
                if view.is_call_end() && call.is_empty() {
                    return replay(view, position);
                }
                call.push((position, frame.to_vec()));
                if view.is_call_end() {
                    for (position, bytes) in call.drain(..) {
                        let (view, _) = record::decode(&bytes).expect("frame decoded during this scan");
                        replay(&view, position)?;
                    }
                }
                Ok(())
            },
        )?;
        if let Some((position, reason)) = scan.failure
            && (position < durable_floor
                || valid_frame_follows(
                    &**segment.file(),
                    &segment.path,
                    scan.readable_size,
                    position,
                    scan.failure_offset,
                )?)
        {
            return Err(Error::corruption(&segment.path, position, reason));
        }
        let end = scan.call_end_size;
        let mut tail = TailRecovery::default();
        if end < size {
            // Cutting on a size that is too small would destroy records: a file
            // that holds bytes past the size its descriptor reported is not cut.
            let mut probe = [0u8; 1];
            let past_size = segment
                .file()
                .read_at_most(&mut probe, size)
                .map_err(|error| Error::io("read segment", &segment.path, error))?;
            if past_size > 0 {
                return Err(Error::Inconsistent {
                    path: segment.path.clone(),
                    reason: format!(
                        "the file holds bytes past the size of {size} bytes its descriptor reports"
                    ),
                });
            }
            if zero_check(&**segment.file(), &segment.path, end, size)? == ZeroCheck::Zero {
                tail.zero_bytes_cut = size - end;
            } else {
                tail.bytes_cut = size - end;
                tail.records_cut = call.len() as u64;
            }
            segment
                .file()
                .set_len(end)
                .map_err(|error| Error::io("truncate torn tail", &segment.path, error))?;
            segment
                .file()
                .sync_data()
                .map_err(|error| Error::io("sync truncated segment", &segment.path, error))?;
        }
        segment.publish(end, scan.end_offset, scan.timestamp_max, &scan.index);
        Ok((segment, tail))
    }

    /// Opens a segment read-only for a quarantined partition: every frame is
    /// scanned, CRC checked, through the descriptor up to the end the segment
    /// may serve (its indexed end when its `.idx` fits, else the file's size);
    /// nothing is written. The segment serves its frames up to the last
    /// complete call before the first bad one. For the `last` segment a bad
    /// frame without a valid frame after it is a torn tail, not damage; for
    /// the others zeros after the last call are excess, anything else damage.
    pub(crate) fn open_prefix(
        storage: &dyn Storage,
        dir: &Path,
        partition: PartitionId,
        mut opened: OpenedSegment,
        index_interval_bytes: u32,
        last: bool,
    ) -> Result<PrefixOpen> {
        let created_ms = match opened.header(partition) {
            Ok(header) => header.created_ms,
            Err(error @ (Error::Corruption { .. } | Error::Inconsistent { .. })) => {
                return Ok(PrefixOpen {
                    segment: None,
                    damage: Some((0, damage_reason(&error))),
                    size: opened.size,
                    tail_nonzero: true,
                });
            }
            Err(error) => return Err(error),
        };
        let size = opened.size;
        // The end the `.idx` records (a sealed segment only): at most that is
        // served, and a file shorter than it lost bytes.
        let index_end = if last {
            None
        } else {
            opened
                .index(storage, dir)
                .map(|index| index.segment_size)
                .filter(|end| *end >= SEGMENT_HEADER_LEN as u64)
        };
        let limit = index_end.filter(|end| *end <= size).unwrap_or(size);
        let OpenedSegment {
            base_offset,
            path,
            file,
            ..
        } = opened;
        let scan = scan_file(
            &*file,
            &path,
            base_offset,
            limit,
            index_interval_bytes,
            |_, _, _| Ok(()),
        )?;
        let end = scan.call_end_size;
        let failure = |default_position: u64, default: &str| match scan.failure {
            Some((position, reason)) => (position, reason.to_string()),
            None => (default_position, default.to_string()),
        };
        let damage = if index_end.is_some_and(|index_end| index_end > size) {
            Some(failure(size, "sealed segment is shorter than its index"))
        } else if end >= limit {
            None
        } else if last {
            match scan.failure {
                Some((position, _))
                    if valid_frame_follows(
                        &*file,
                        &path,
                        scan.readable_size,
                        position,
                        scan.failure_offset,
                    )? =>
                {
                    Some(failure(end, "a valid frame follows a bad one"))
                }
                _ => None,
            }
        } else {
            match zero_check(&*file, &path, end, limit)? {
                ZeroCheck::Zero => None,
                ZeroCheck::Short => Some((
                    scan.readable_size,
                    "the file ends before its indexed end".to_string(),
                )),
                ZeroCheck::NonZero => Some(failure(end, "sealed segment ends inside an append call")),
            }
        };
        let tail_nonzero = end < size && zero_check(&*file, &path, end, size)? != ZeroCheck::Zero;
        let map = map_sealed(&*file, &path, end)?;
        let segment = Segment::header_only(path, file, map, base_offset, created_ms);
        segment.publish(end, scan.end_offset, scan.timestamp_max, &scan.index);
        // Nothing seals, trims or appends to a quarantined partition's segments.
        segment.sealed.store(true, Ordering::Release);
        Ok(PrefixOpen {
            segment: Some(segment),
            damage,
            size,
            tail_nonzero,
        })
    }

    /// Makes frames up to `size` visible to readers. Called only with complete
    /// calls that are acknowledged under the durability mode.
    pub(crate) fn publish(&self, size: u64, end_offset: Offset, timestamp_max: i64, index: &[IndexEntry]) {
        assert!(size >= self.published_size(), "published size moves backwards");
        assert!(
            end_offset >= self.published_end_offset(),
            "published offset moves backwards"
        );
        if !index.is_empty() {
            self.index.write().expect("index lock").extend_from_slice(index);
        }
        self.timestamp_max.fetch_max(timestamp_max, Ordering::AcqRel);
        self.published_end_offset.store(end_offset.0, Ordering::Release);
        self.published_size.store(size, Ordering::Release);
    }

    /// Position of the newest sparse index entry.
    pub(crate) fn last_index_position(&self) -> Option<u64> {
        self.index
            .read()
            .expect("index lock")
            .last()
            .map(|entry| entry.position as u64)
    }

    /// The segment's file.
    ///
    /// # Panics
    /// When the segment is planned and its file not created yet
    /// ([`Segment::is_created`]): only the writer touches such a segment.
    pub(crate) fn file(&self) -> &Arc<dyn StorageFile> {
        self.file
            .get()
            .expect("a segment's file is created before anything reads, writes or syncs it")
    }

    /// The mapping; a segment is mapped as it is created, before anything is
    /// published into it.
    fn map(&self) -> &Map {
        self.map
            .get()
            .expect("a segment is mapped before any of its bytes are published")
    }

    /// Bytes of complete, published frames (header included).
    pub(crate) fn published_size(&self) -> u64 {
        self.published_size.load(Ordering::Acquire)
    }

    /// One past the last published offset.
    pub(crate) fn published_end_offset(&self) -> Offset {
        Offset(self.published_end_offset.load(Ordering::Acquire))
    }

    /// The newest published record's timestamp, `i64::MIN` when empty.
    pub(crate) fn timestamp_max(&self) -> i64 {
        self.timestamp_max.load(Ordering::Acquire)
    }

    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    pub(crate) fn records_count(&self) -> u64 {
        self.published_end_offset().0 - self.base_offset.0
    }

    /// Seals the segment: trims preallocated space, writes its `.idx`.
    pub(crate) fn seal(&self, storage: &dyn Storage) -> Result<()> {
        assert!(!self.is_sealed(), "segment {} sealed twice", self.base_offset);
        let size = self.published_size();
        let file_size = self
            .file()
            .len()
            .map_err(|error| Error::io("stat segment", &self.path, error))?;
        if file_size > size {
            self.file()
                .set_len(size)
                .map_err(|error| Error::io("trim segment", &self.path, error))?;
        }
        self.file()
            .sync_data()
            .map_err(|error| Error::io("sync sealed segment", &self.path, error))?;
        self.write_index(storage)?;
        self.sealed.store(true, Ordering::Release);
        Ok(())
    }

    fn write_index(&self, storage: &dyn Storage) -> Result<()> {
        let index = SegmentIndex {
            base_offset: self.base_offset,
            segment_size: self.published_size(),
            records_count: self.records_count(),
            timestamp_max: self.timestamp_max(),
            entries: self.index.read().expect("index lock").clone(),
        };
        let path = paths::index_of_segment(&self.path);
        io::write_file_atomic(storage, &path, &format::index::encode(&index))
            .map_err(|error| Error::io("write segment index", &path, error))
    }

    /// The position of the frame holding `offset`, which must be published.
    pub(crate) fn position_of(&self, offset: Offset) -> Result<u64> {
        let end_offset = self.published_end_offset();
        assert!(
            offset >= self.base_offset && offset < end_offset,
            "offset {offset} outside segment [{}, {end_offset})",
            self.base_offset
        );
        let delta = (offset.0 - self.base_offset.0) as u32;
        let start = {
            let index = self.index.read().expect("index lock");
            let slot = index.partition_point(|entry| entry.offset_delta <= delta);
            if slot == 0 {
                (SEGMENT_HEADER_LEN as u64, self.base_offset)
            } else {
                let entry = index[slot - 1];
                (
                    entry.position as u64,
                    Offset(self.base_offset.0 + entry.offset_delta as u64),
                )
            }
        };
        let (mut position, mut current) = start;
        let size = self.published_size();
        while current < offset {
            let (frame_size, found) = record::peek(self.map().slice(position, size))
                .map_err(|reason| Error::corruption(&self.path, position, reason))?;
            if found != current {
                return Err(Error::corruption(
                    &self.path,
                    position,
                    DecodeError::Invalid("record offset out of sequence"),
                ));
            }
            position += frame_size;
            current = current.next();
        }
        Ok(position)
    }

    /// The position of the first record with a timestamp at or after `timestamp_ms`,
    /// and its offset; `None` when every published record is older.
    pub(crate) fn seek_timestamp(&self, timestamp_ms: i64) -> Result<Option<(u64, Offset)>> {
        if self.timestamp_max() < timestamp_ms {
            return Ok(None);
        }
        let (mut position, mut offset) = {
            let index = self.index.read().expect("index lock");
            let slot = index.partition_point(|entry| entry.timestamp_ms < timestamp_ms);
            if slot == 0 {
                (SEGMENT_HEADER_LEN as u64, self.base_offset)
            } else {
                let entry = index[slot - 1];
                (
                    entry.position as u64,
                    Offset(self.base_offset.0 + entry.offset_delta as u64),
                )
            }
        };
        let size = self.published_size();
        while position < size {
            let (view, frame_size) = self.decode_at(position)?;
            if view.timestamp_ms >= timestamp_ms {
                return Ok(Some((position, offset)));
            }
            position += frame_size;
            offset = offset.next();
        }
        Ok(None)
    }

    /// The chain fields of the published frame at `position`, read without
    /// checking the frame's CRC; lengths are still bounds-checked.
    pub(crate) fn link_at(&self, position: u64) -> Result<record::Link<'_>> {
        let size = self.published_size();
        assert!(
            position < size,
            "position {position} at or past published size {size}"
        );
        record::peek_link(self.map().slice(position, size))
            .map_err(|reason| Error::corruption(&self.path, position, reason))
    }

    /// The size, offset, flags and id length of the published frame at
    /// `position`, read without checking its CRC.
    pub(crate) fn summary_at(&self, position: u64) -> Result<(u64, Offset, u16, u8)> {
        let size = self.published_size();
        assert!(
            position < size,
            "position {position} at or past published size {size}"
        );
        record::peek_summary(self.map().slice(position, size))
            .map_err(|reason| Error::corruption(&self.path, position, reason))
    }

    /// The published bytes `[start, end)`, for a reader that decoded (and
    /// checked) the frames they belong to.
    ///
    /// # Panics
    /// When the range reaches past the published size.
    pub(crate) fn published_bytes(&self, start: u64, end: u64) -> &[u8] {
        let size = self.published_size();
        assert!(end <= size, "bytes up to {end} past published size {size}");
        self.map().slice(start, end)
    }

    /// Decodes and checks the published frame at `position`.
    pub(crate) fn decode_at(&self, position: u64) -> Result<(RecordView<'_>, u64)> {
        let size = self.published_size();
        assert!(
            position < size,
            "position {position} at or past published size {size}"
        );
        record::decode(self.map().slice(position, size))
            .map_err(|reason| Error::corruption(&self.path, position, reason))
    }
}

/// One past the last offset a segment's `.idx` records, when it decodes and
/// agrees with the base offset (for `stele repair`, counting what it cuts).
pub(crate) fn indexed_end_offset(storage: &dyn Storage, dir: &Path, base_offset: Offset) -> Option<Offset> {
    load_index(storage, dir, base_offset).map(|index| Offset(base_offset.0 + index.records_count))
}

/// What is wrong, in words, for a damage error (without its path).
pub(crate) fn damage_reason(error: &Error) -> String {
    match error {
        Error::Corruption { reason, .. } => reason.to_string(),
        Error::Inconsistent { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// The segment's `.idx`, when it exists, decodes and agrees with the segment's
/// base offset. Whether it fits the file is for the caller to check against the
/// size measured on the segment's descriptor.
fn load_index(storage: &dyn Storage, dir: &Path, base_offset: Offset) -> Option<SegmentIndex> {
    let index_path = dir.join(paths::index_file_name(base_offset));
    io::read_file(storage, &index_path, SEGMENT_MAP_SIZE_BYTES)
        .ok()
        .and_then(|bytes| format::index::decode(&bytes, SEGMENT_MAP_SIZE_BYTES).ok())
        .filter(|index| index.base_offset == base_offset)
}

/// Maps a sealed segment's first `end` bytes, after checking through the
/// descriptor that the file holds them: a mapping never reaches past the end
/// of the file, so reading it cannot fault.
fn map_sealed(file: &dyn StorageFile, path: &Path, end: u64) -> Result<Map> {
    let short = || {
        Error::corruption(
            path,
            end,
            DecodeError::Invalid("segment is shorter than its index"),
        )
    };
    if end > SEGMENT_HEADER_LEN as u64 {
        let mut last = [0u8; 1];
        match file.read_at_most(&mut last, end - 1) {
            Ok(1) => {}
            Ok(_) => return Err(short()),
            Err(error) => return Err(Error::io("read segment", path, error)),
        }
    }
    let map = file
        .map(end)
        .map_err(|error| Error::io("map segment", path, error))?;
    if map.len() < end {
        return Err(short());
    }
    Ok(map)
}

/// What the bytes past a sealed segment's indexed end are.
fn classify_excess(
    file: &dyn StorageFile,
    path: &Path,
    base_offset: Offset,
    end_offset: Offset,
    start: u64,
    size: u64,
) -> Result<SealedExcess> {
    let kind = match zero_check(file, path, start, size)? {
        ZeroCheck::Zero => ExcessKind::Zeros,
        ZeroCheck::Short => ExcessKind::Unreadable,
        ZeroCheck::NonZero => {
            let mut reader = ChunkReader::new(file, path, size);
            reader.fill_frame(start)?;
            match reader.decode(start) {
                Ok((view, _)) if view.offset == end_offset => ExcessKind::Frames,
                _ => ExcessKind::Garbage,
            }
        }
    };
    Ok(SealedExcess {
        base_offset,
        position: start,
        bytes_count: size - start,
        kind,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZeroCheck {
    Zero,
    NonZero,
    /// The file ends before the end that was asked for.
    Short,
}

/// Whether `[start, end)` of the file is all zero, read through the descriptor.
fn zero_check(file: &dyn StorageFile, path: &Path, start: u64, end: u64) -> Result<ZeroCheck> {
    let mut reader = ChunkReader::new(file, path, end);
    let mut position = start;
    // Bounded: every iteration consumes a non-empty chunk or stops.
    while position < end {
        reader.fill(position, SCAN_CHUNK_SIZE_BYTES)?;
        let bytes = reader.bytes(position);
        if bytes.is_empty() {
            return Ok(ZeroCheck::Short);
        }
        if bytes.iter().any(|byte| *byte != 0) {
            return Ok(ZeroCheck::NonZero);
        }
        position += bytes.len() as u64;
    }
    Ok(ZeroCheck::Zero)
}

/// The bytes recovery reads at a time.
const SCAN_CHUNK_SIZE_BYTES: u64 = 1 << 20;

/// Reads a segment through its descriptor (pread) in chunks, for recovery. A
/// file shorter than its measured size ends the bytes (`end` moves down), where
/// reading a mapping would fault.
struct ChunkReader<'a> {
    file: &'a dyn StorageFile,
    path: &'a Path,
    /// The end of the readable bytes: the measured size, until a read finds
    /// the file shorter.
    end: u64,
    /// The buffer holds the file's bytes `[start, start + buffer.len())`.
    start: u64,
    buffer: Vec<u8>,
}

impl<'a> ChunkReader<'a> {
    fn new(file: &'a dyn StorageFile, path: &'a Path, size: u64) -> ChunkReader<'a> {
        ChunkReader {
            file,
            path,
            end: size,
            start: 0,
            buffer: Vec::new(),
        }
    }

    /// Makes `[position, position + wanted)`, cut at `end`, available to
    /// [`ChunkReader::bytes`]. `position` must be at or below `end`.
    fn fill(&mut self, position: u64, wanted: u64) -> Result<()> {
        assert!(
            position <= self.end,
            "fill at {position} past the end {}",
            self.end
        );
        let wanted_end = position.saturating_add(wanted).min(self.end);
        let buffered_end = self.start + self.buffer.len() as u64;
        if position >= self.start && wanted_end <= buffered_end {
            return Ok(());
        }
        let len = wanted.max(SCAN_CHUNK_SIZE_BYTES).min(self.end - position);
        self.start = position;
        self.buffer.resize(len as usize, 0);
        let read = self
            .file
            .read_at_most(&mut self.buffer, position)
            .map_err(|error| Error::io("read segment", self.path, error))?;
        if (read as u64) < len {
            self.buffer.truncate(read);
            self.end = position + read as u64;
        }
        Ok(())
    }

    /// The buffered bytes from `position` on; `position` must be buffered (or
    /// the end of the buffer).
    fn bytes(&self, position: u64) -> &[u8] {
        let skip = position - self.start;
        &self.buffer[skip as usize..]
    }

    /// Reads the frame at `position` into the buffer, for [`ChunkReader::decode`].
    fn fill_frame(&mut self, position: u64) -> Result<()> {
        self.fill(position, RECORD_HEADER_LEN as u64)?;
        let head = self.bytes(position);
        if head.len() >= 4 {
            let frame_size = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]])) + 4;
            // A length out of bounds fails the decode without being read.
            if frame_size <= format::record::RECORD_FRAME_SIZE_MAX {
                self.fill(position, frame_size)?;
            }
        }
        Ok(())
    }

    /// Decodes the frame at `position`, read by [`ChunkReader::fill_frame`].
    fn decode(&self, position: u64) -> std::result::Result<(RecordView<'_>, u64), DecodeError> {
        record::decode(self.bytes(position))
    }
}

/// Scans a segment's frames through its descriptor, from the header up to
/// `size` (or the file's real end, when it is shorter), stopping at the first
/// bad frame. Only frames up to the last call end are counted as kept.
/// `visit` sees each good frame, its position and its bytes.
fn scan_file(
    file: &dyn StorageFile,
    path: &Path,
    base_offset: Offset,
    size: u64,
    index_interval_bytes: u32,
    mut visit: impl FnMut(&RecordView<'_>, u64, &[u8]) -> Result<()>,
) -> Result<Scan> {
    let mut reader = ChunkReader::new(file, path, size);
    let mut position = SEGMENT_HEADER_LEN as u64;
    let mut expected = base_offset;
    let mut scan = Scan {
        call_end_size: position,
        readable_size: size,
        end_offset: expected,
        timestamp_max: i64::MIN,
        index: Vec::new(),
        failure: None,
        failure_offset: base_offset,
    };
    let mut last_index_position: Option<u64> = None;
    let mut pending_index = Vec::new();
    let mut timestamp_max = scan.timestamp_max;
    // Bounded: every iteration consumes one whole frame, or stops.
    while position < reader.end {
        scan.failure_offset = expected;
        reader.fill_frame(position)?;
        let (view, frame_size) = match reader.decode(position) {
            Ok((view, _)) if view.offset != expected => {
                scan.failure = Some((position, DecodeError::Invalid("record offset out of sequence")));
                break;
            }
            Ok((view, _)) if view.timestamp_ms < timestamp_max => {
                scan.failure = Some((position, DecodeError::Invalid("record timestamp decreases")));
                break;
            }
            Ok(decoded) => decoded,
            Err(reason) => {
                scan.failure = Some((position, reason));
                break;
            }
        };
        let frame = &reader.bytes(position)[..frame_size as usize];
        visit(&view, position, frame)?;
        if last_index_position.is_none_or(|last| position - last >= index_interval_bytes as u64) {
            pending_index.push(IndexEntry {
                offset_delta: (view.offset.0 - base_offset.0) as u32,
                position: position as u32,
                timestamp_ms: view.timestamp_ms,
            });
            last_index_position = Some(position);
        }
        timestamp_max = view.timestamp_ms;
        position += frame_size;
        expected = view.offset.next();
        if view.is_call_end() {
            scan.call_end_size = position;
            scan.end_offset = expected;
            scan.timestamp_max = timestamp_max;
            scan.index.append(&mut pending_index);
        }
    }
    scan.readable_size = reader.end;
    Ok(scan)
}

struct Scan {
    /// Size of the segment up to the end of the last complete call.
    call_end_size: u64,
    /// Where the readable bytes ended: the measured size, or less when reading
    /// found the file shorter.
    readable_size: u64,
    end_offset: Offset,
    timestamp_max: i64,
    index: Vec<IndexEntry>,
    failure: Option<(u64, DecodeError)>,
    /// The offset the frame at the failure's position should have held.
    failure_offset: Offset,
}

/// Whether a valid frame holding `offset + 1` starts after the bad frame at
/// `position` (which should have held `offset`), within the largest frame's
/// reach. A torn tail is followed by nothing (or zeros, or garbage); a valid
/// frame after a bad one means the bad one is damage, not a torn write. Its
/// length field may be the damaged part, so every position is tried where the
/// next offset's bytes appear, and each candidate is decoded with its CRC.
fn valid_frame_follows(
    file: &dyn StorageFile,
    path: &Path,
    size: u64,
    position: u64,
    offset: Offset,
) -> Result<bool> {
    let mut reader = ChunkReader::new(file, path, size);
    if position >= size {
        return Ok(false);
    }
    let reach = format::record::RECORD_FRAME_SIZE_MAX + RECORD_HEADER_LEN as u64;
    reader.fill(position, reach)?;
    let window = reader.bytes(position);
    let wanted = offset.next().0.to_le_bytes();
    // The offset field sits at byte 8 of a frame.
    let candidates: Vec<u64> = window
        .windows(8)
        .enumerate()
        .skip(9)
        .filter(|(_, bytes)| *bytes == wanted)
        .map(|(index, _)| position + index as u64 - 8)
        .collect();
    for candidate in candidates {
        reader.fill_frame(candidate)?;
        if matches!(reader.decode(candidate), Ok((view, _)) if view.offset == offset.next()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What [`Segment::open_prefix`] found.
pub(crate) struct PrefixOpen {
    /// The segment serving its good prefix; `None` when its header is damaged.
    pub(crate) segment: Option<Segment>,
    /// The first damage: its position and what is wrong there.
    pub(crate) damage: Option<(u64, String)>,
    /// The file's size, measured on its descriptor.
    pub(crate) size: u64,
    /// Bytes past the served end that are not all zero (a torn tail, for the
    /// last segment).
    pub(crate) tail_nonzero: bool,
}

fn read_header(file: &dyn StorageFile, path: &Path, size: u64) -> Result<SegmentHeader> {
    let mut bytes = [0u8; SEGMENT_HEADER_LEN];
    let short = |available: u64| {
        Error::corruption(
            path,
            0,
            DecodeError::Truncated {
                needed: SEGMENT_HEADER_LEN as u64,
                available,
            },
        )
    };
    if size < SEGMENT_HEADER_LEN as u64 {
        return Err(short(size));
    }
    let read = file
        .read_at_most(&mut bytes, 0)
        .map_err(|error| Error::io("read segment header", path, error))?;
    if read < SEGMENT_HEADER_LEN {
        return Err(short(read as u64));
    }
    format::segment::decode(&bytes).map_err(|reason| Error::corruption(path, 0, reason))
}

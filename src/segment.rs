//! One segment: a file of record frames after a header, named by its base offset,
//! with a sparse in-memory index; plus recovery of a segment's tail.
//!
//! Invariant: bytes below `published_size` are complete, checksummed frames with
//! contiguous offsets from `base_offset`; they never change or move while the
//! process runs. Readers touch nothing at or beyond `published_size`.
//! Invariant: only the active (last) segment of a partition grows; a sealed segment
//! is immutable and has an `.idx` file (derived data, rebuilt when missing or bad).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};
use crate::event::{Offset, PartitionId};
use crate::format::index::{IndexEntry, SegmentIndex};
use crate::format::record::{self, RecordView};
use crate::format::segment::{SEGMENT_HEADER_LEN, SegmentHeader};
use crate::format::{self, DecodeError};
use crate::io::{self, Map, OpenMode, Storage, StorageFile};
use crate::limits;

/// `{base_offset:020}.log`.
pub(crate) fn log_file_name(base_offset: Offset) -> String {
    format!("{:020}.log", base_offset.0)
}

/// `{base_offset:020}.idx`.
pub(crate) fn index_file_name(base_offset: Offset) -> String {
    format!("{:020}.idx", base_offset.0)
}

/// Parses a segment file name back into its base offset.
pub(crate) fn parse_log_file_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Offset)
}

/// One segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base_offset: Offset,
    pub(crate) path: PathBuf,
    pub(crate) created_ms: i64,
    file: Arc<dyn StorageFile>,
    map: Map,
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
        let path = dir.join(log_file_name(base_offset));
        let file = storage
            .open(&path, OpenMode::CreateTruncate)
            .map_err(|error| Error::io("create segment", &path, error))?;
        let header = format::segment::encode(&SegmentHeader {
            partition,
            base_offset,
            created_ms,
        });
        let prepared = (|| {
            if let Some(bytes) = preallocate_bytes {
                file.allocate(bytes)
                    .map_err(|error| Error::io("preallocate segment", &path, error))?;
            }
            file.write_at(&header, 0)
                .map_err(|error| Error::io("write segment header", &path, error))?;
            file.sync_data()
                .map_err(|error| Error::io("sync segment header", &path, error))?;
            storage
                .sync_dir(dir)
                .map_err(|error| Error::io("sync partition directory", dir, error))
        })();
        if let Err(error) = prepared {
            // A failed roll must not leave a file behind: once later records go
            // to the previous segment, a stray file in the middle of the
            // partition would fail the next open. A crash before this removal
            // leaves it last, where opening drops it as unfinished.
            drop(file);
            let _ = storage.remove_file(&path);
            return Err(error);
        }
        Segment::empty(path, file, base_offset, created_ms)
    }

    /// A segment with no published records yet (scanning or appending follows).
    fn empty(
        path: PathBuf,
        file: Arc<dyn StorageFile>,
        base_offset: Offset,
        created_ms: i64,
    ) -> Result<Segment> {
        Segment::with_file(
            path,
            file,
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
        base_offset: Offset,
        created_ms: i64,
        index: Vec<IndexEntry>,
        size: u64,
        end_offset: Offset,
        timestamp_max: i64,
    ) -> Result<Segment> {
        let map = file
            .map(limits::SEGMENT_MAP_SIZE_BYTES)
            .map_err(|error| Error::io("map segment", &path, error))?;
        Ok(Segment {
            base_offset,
            path,
            created_ms,
            file,
            map,
            index: RwLock::new(index),
            published_size: AtomicU64::new(size),
            published_end_offset: AtomicU64::new(end_offset.0),
            timestamp_max: AtomicI64::new(timestamp_max),
            sealed: AtomicBool::new(false),
        })
    }

    /// Opens a sealed segment from its file and `.idx`, rebuilding the index by a
    /// full scan when the `.idx` is missing or disagrees with the file. A bad frame
    /// found while rebuilding is corruption.
    pub(crate) fn open_sealed(
        storage: &dyn Storage,
        dir: &Path,
        partition: PartitionId,
        base_offset: Offset,
        index_interval_bytes: u32,
    ) -> Result<Segment> {
        let path = dir.join(log_file_name(base_offset));
        let file = open_existing(storage, &path, partition, base_offset)?;
        let size = file
            .len()
            .map_err(|error| Error::io("stat segment", &path, error))?;
        let index_path = dir.join(index_file_name(base_offset));
        let loaded = io::read_file(storage, &index_path, limits::SEGMENT_MAP_SIZE_BYTES)
            .ok()
            .and_then(|bytes| format::index::decode(&bytes, limits::SEGMENT_MAP_SIZE_BYTES).ok())
            .filter(|index| index.base_offset == base_offset && index.segment_size == size);
        let created_ms = read_header(&*file, &path)?.created_ms;
        let segment = match loaded {
            Some(index) => Segment::with_file(
                path,
                file,
                base_offset,
                created_ms,
                index.entries,
                size,
                Offset(base_offset.0 + index.records_count),
                index.timestamp_max,
            )?,
            None => {
                let segment = Segment::empty(path, file, base_offset, created_ms)?;
                let scan = segment.scan_tail(size, index_interval_bytes, |_, _| Ok(()))?;
                if let Some((position, reason)) = scan.failure {
                    return Err(Error::corruption(&segment.path, position, reason));
                }
                if scan.call_end_size != size {
                    return Err(Error::corruption(
                        &segment.path,
                        scan.call_end_size,
                        DecodeError::Invalid("sealed segment ends inside an append call"),
                    ));
                }
                segment.publish(
                    scan.call_end_size,
                    scan.end_offset,
                    scan.timestamp_max,
                    &scan.index,
                );
                segment.write_index(storage)?;
                segment
            }
        };
        segment.sealed.store(true, Ordering::Release);
        Ok(segment)
    }

    /// Opens the active segment after a restart: scans every frame (checking CRCs),
    /// cuts a torn tail, and calls `replay` for every kept record. A bad frame below
    /// `durable_floor` (a position known to have been synced) is corruption.
    pub(crate) fn open_active(
        storage: &dyn Storage,
        dir: &Path,
        partition: PartitionId,
        base_offset: Offset,
        index_interval_bytes: u32,
        durable_floor: u64,
        mut replay: impl FnMut(&RecordView<'_>, u64) -> Result<()>,
    ) -> Result<(Segment, TailRecovery)> {
        let path = dir.join(log_file_name(base_offset));
        let file = open_existing(storage, &path, partition, base_offset)?;
        let created_ms = read_header(&*file, &path)?.created_ms;
        let file_size = file
            .len()
            .map_err(|error| Error::io("stat segment", &path, error))?;
        let segment = Segment::empty(path, file, base_offset, created_ms)?;
        // Records are replayed only once their call is known to be complete.
        let mut call: Vec<(u64, u64)> = Vec::new();
        let scan = segment.scan_tail(file_size, index_interval_bytes, |view, position| {
            call.push((position, view.offset.0));
            if view.is_call_end() {
                for (position, _) in call.drain(..) {
                    let bytes = segment.map.slice(position, file_size);
                    let (view, _) = record::decode(bytes).expect("frame decoded during this scan");
                    replay(&view, position)?;
                }
            }
            Ok(())
        })?;
        if let Some((position, reason)) = scan.failure
            && position < durable_floor
        {
            return Err(Error::corruption(&segment.path, position, reason));
        }
        let tail = TailRecovery {
            bytes_cut: file_size - scan.call_end_size,
            records_cut: call.len() as u64,
        };
        let zero_tail = tail.bytes_cut > 0 && segment.is_zero(scan.call_end_size, file_size);
        if tail.bytes_cut > 0 {
            segment
                .file
                .set_len(scan.call_end_size)
                .map_err(|error| Error::io("truncate torn tail", &segment.path, error))?;
            segment
                .file
                .sync_data()
                .map_err(|error| Error::io("sync truncated segment", &segment.path, error))?;
        }
        segment.publish(
            scan.call_end_size,
            scan.end_offset,
            scan.timestamp_max,
            &scan.index,
        );
        let tail = if zero_tail { TailRecovery::default() } else { tail };
        Ok((segment, tail))
    }

    fn is_zero(&self, start: u64, end: u64) -> bool {
        self.map.slice(start, end).iter().all(|byte| *byte == 0)
    }

    /// Scans frames from the published size up to `file_size`, stopping at the
    /// first bad frame. Only frames up to the last call end are counted as kept.
    fn scan_tail(
        &self,
        file_size: u64,
        index_interval_bytes: u32,
        mut visit: impl FnMut(&RecordView<'_>, u64) -> Result<()>,
    ) -> Result<Scan> {
        let file_size = file_size.min(self.map.len());
        let mut position = self.published_size();
        let mut expected = self.published_end_offset();
        let mut scan = Scan {
            call_end_size: position,
            end_offset: expected,
            timestamp_max: self.timestamp_max(),
            index: Vec::new(),
            failure: None,
        };
        let mut last_index_position = self
            .index
            .read()
            .expect("index lock")
            .last()
            .map(|entry| entry.position as u64);
        let mut pending_index = Vec::new();
        let mut timestamp_max = scan.timestamp_max;
        while position < file_size {
            let bytes = self.map.slice(position, file_size);
            let (view, size) = match record::decode(bytes) {
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
            visit(&view, position)?;
            if last_index_position.is_none_or(|last| position - last >= index_interval_bytes as u64) {
                pending_index.push(IndexEntry {
                    offset_delta: (view.offset.0 - self.base_offset.0) as u32,
                    position: position as u32,
                    timestamp_ms: view.timestamp_ms,
                });
                last_index_position = Some(position);
            }
            timestamp_max = view.timestamp_ms;
            position += size;
            expected = view.offset.next();
            if view.is_call_end() {
                scan.call_end_size = position;
                scan.end_offset = expected;
                scan.timestamp_max = timestamp_max;
                scan.index.append(&mut pending_index);
            }
        }
        Ok(scan)
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

    pub(crate) fn file(&self) -> &Arc<dyn StorageFile> {
        &self.file
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
            .file
            .len()
            .map_err(|error| Error::io("stat segment", &self.path, error))?;
        if file_size > size {
            self.file
                .set_len(size)
                .map_err(|error| Error::io("trim segment", &self.path, error))?;
        }
        self.file
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
        let path = self.path.with_extension("idx");
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
            let (frame_size, found) = record::peek(self.map.slice(position, size))
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
        record::peek_link(self.map.slice(position, size))
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
        record::peek_summary(self.map.slice(position, size))
            .map_err(|reason| Error::corruption(&self.path, position, reason))
    }

    /// Decodes and checks the published frame at `position`.
    pub(crate) fn decode_at(&self, position: u64) -> Result<(RecordView<'_>, u64)> {
        let size = self.published_size();
        assert!(
            position < size,
            "position {position} at or past published size {size}"
        );
        record::decode(self.map.slice(position, size))
            .map_err(|reason| Error::corruption(&self.path, position, reason))
    }
}

struct Scan {
    /// Size of the segment up to the end of the last complete call.
    call_end_size: u64,
    end_offset: Offset,
    timestamp_max: i64,
    index: Vec<IndexEntry>,
    failure: Option<(u64, DecodeError)>,
}

fn open_existing(
    storage: &dyn Storage,
    path: &Path,
    partition: PartitionId,
    base_offset: Offset,
) -> Result<Arc<dyn StorageFile>> {
    let file = storage
        .open(path, OpenMode::ReadWrite)
        .map_err(|error| Error::io("open segment", path, error))?;
    let header = read_header(&*file, path)?;
    if header.partition != partition || header.base_offset != base_offset {
        return Err(Error::Inconsistent {
            path: path.to_path_buf(),
            reason: format!(
                "header says partition {} base offset {}, file name says partition {partition} base offset {base_offset}",
                header.partition, header.base_offset
            ),
        });
    }
    Ok(file)
}

fn read_header(file: &dyn StorageFile, path: &Path) -> Result<SegmentHeader> {
    let mut bytes = [0u8; SEGMENT_HEADER_LEN];
    let len = file
        .len()
        .map_err(|error| Error::io("stat segment", path, error))?;
    if len < SEGMENT_HEADER_LEN as u64 {
        return Err(Error::corruption(
            path,
            0,
            DecodeError::Truncated {
                needed: SEGMENT_HEADER_LEN as u64,
                available: len,
            },
        ));
    }
    file.read_at(&mut bytes, 0)
        .map_err(|error| Error::io("read segment header", path, error))?;
    format::segment::decode(&bytes).map_err(|reason| Error::corruption(path, 0, reason))
}

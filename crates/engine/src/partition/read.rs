//! The read path: by offset, by key, by timestamp. Readers never take the
//! partition's state lock except to look up a key, and never see a record at or
//! beyond the high watermark.

use std::collections::VecDeque;
use std::sync::Arc;

use super::Partition;
use crate::error::{Error, Result};
use crate::event::{Direction, Offset, RecordedEvent, Sequence};
use crate::format::record::{self, NO_PREVIOUS, RecordView};
use crate::keys::key_hash;
use crate::limits;
use crate::segment::Segment;
use crate::view::{EventFilter, EventRef, StoredEvents};

impl Partition {
    fn out_of_range(&self, requested: Offset) -> Error {
        Error::OffsetOutOfRange {
            requested,
            earliest: self.earliest(),
            high_watermark: self.high_watermark(),
        }
    }

    /// The segment holding the published `offset`.
    fn segment_of(&self, offset: Offset) -> Result<Arc<Segment>> {
        if offset >= self.high_watermark() {
            self.refuse_if_quarantined()?;
        }
        if offset >= self.high_watermark() || offset < self.earliest() {
            return Err(self.out_of_range(offset));
        }
        let segments = self.segments();
        let slot = segments.partition_point(|segment| segment.base_offset <= offset);
        if slot == 0 {
            return Err(self.out_of_range(offset));
        }
        let segment = &segments[slot - 1];
        if offset >= segment.published_end_offset() {
            return Err(self.out_of_range(offset));
        }
        Ok(Arc::clone(segment))
    }

    /// Calls `f` with the published record at `offset`.
    pub(crate) fn with_record<T>(&self, offset: Offset, f: impl FnOnce(&RecordView<'_>) -> T) -> Result<T> {
        let segment = self.segment_of(offset)?;
        let position = segment.position_of(offset)?;
        let (view, _) = segment.decode_at(position)?;
        if view.offset != offset {
            return Err(Error::corruption(
                &segment.path,
                position,
                crate::format::DecodeError::Invalid("record offset out of sequence"),
            ));
        }
        Ok(f(&view))
    }

    /// Calls `f` with the chain fields of the published record at `offset`,
    /// without checking the frame's CRC (for identity checks and chain walks;
    /// served records are always decoded with their CRC).
    pub(crate) fn with_link_at<T>(
        &self,
        offset: Offset,
        f: impl FnOnce(&record::Link<'_>) -> T,
    ) -> Result<T> {
        let segment = self.segment_of(offset)?;
        let position = segment.position_of(offset)?;
        let link = segment.link_at(position)?;
        if link.offset != offset {
            return Err(Error::corruption(
                &segment.path,
                position,
                crate::format::DecodeError::Invalid("record offset out of sequence"),
            ));
        }
        Ok(f(&link))
    }

    /// Visits published records from `from` while `visit` returns true, at most
    /// `count_max` records and about `bytes_max` bytes (at least one record).
    /// Every frame's CRC is checked.
    pub(crate) fn scan(
        &self,
        from: Offset,
        count_max: usize,
        bytes_max: u64,
        mut visit: impl FnMut(&RecordView<'_>) -> bool,
    ) -> Result<Offset> {
        self.scan_frames(from, count_max, bytes_max, |_, _, _, view| visit(view))
    }

    /// [`Partition::scan`], also giving each record's segment, position and
    /// frame size.
    fn scan_frames(
        &self,
        from: Offset,
        count_max: usize,
        bytes_max: u64,
        mut visit: impl FnMut(&Arc<Segment>, u64, u64, &RecordView<'_>) -> bool,
    ) -> Result<Offset> {
        let high_watermark = self.high_watermark();
        if from < self.earliest() || from > high_watermark {
            return Err(self.out_of_range(from));
        }
        // A quarantined partition's high watermark is where the damage starts:
        // a reader that gets there hears of it instead of waiting for more.
        if from == high_watermark {
            self.refuse_if_quarantined()?;
        }
        let mut offset = from;
        let mut count = 0usize;
        let mut bytes = 0u64;
        while offset < high_watermark && count < count_max {
            let segment = match self.segment_of(offset) {
                Ok(segment) => segment,
                // Retention removed the segment after the check above.
                Err(Error::OffsetOutOfRange { .. }) if count == 0 => return Err(self.out_of_range(offset)),
                Err(Error::OffsetOutOfRange { .. }) => break,
                Err(error) => return Err(error),
            };
            let mut position = segment.position_of(offset)?;
            let end_offset = segment.published_end_offset().min(high_watermark);
            while offset < end_offset && count < count_max {
                let (view, size) = segment.decode_at(position)?;
                if view.offset != offset {
                    return Err(Error::corruption(
                        &segment.path,
                        position,
                        crate::format::DecodeError::Invalid("record offset out of sequence"),
                    ));
                }
                if count > 0 && bytes + size > bytes_max {
                    return Ok(offset);
                }
                if !visit(&segment, position, size, &view) {
                    return Ok(offset);
                }
                bytes += size;
                count += 1;
                position += size;
                offset = offset.next();
            }
        }
        Ok(offset)
    }

    /// The published events from `from` that pass `filter`, examining at most
    /// `count_max` records and about `bytes_max` bytes (at least one record), as
    /// a batch over the segments' mappings; it continues at its `next_offset`.
    pub(crate) fn scan_events(
        &self,
        from: Offset,
        count_max: usize,
        bytes_max: u64,
        filter: &EventFilter,
    ) -> Result<StoredEvents> {
        let mut batch = StoredEvents::mapped(self.id);
        let next = self.scan_frames(from, count_max, bytes_max, |segment, position, size, view| {
            if filter.accepts(view.event_type, view.key) {
                batch.push_mapped(segment, position, size, view);
            }
            true
        })?;
        batch.set_next_offset(next);
        Ok(batch)
    }

    /// Reads up to `count_max` events from `from`, about `bytes_max` bytes at most.
    pub(crate) fn read(&self, from: Offset, count_max: usize, bytes_max: u64) -> Result<Vec<RecordedEvent>> {
        let count_max = count_max.min(limits::READ_EVENTS_COUNT_MAX);
        let bytes_max = bytes_max.min(limits::READ_SIZE_BYTES_MAX);
        let mut events = Vec::new();
        self.scan(from, count_max, bytes_max, |view| {
            events.push(EventRef::from_view(self.id, view).to_recorded());
            true
        })?;
        Ok(events)
    }

    /// Whether the published record at `offset` has `key`. Only the key is read:
    /// the frame's CRC is checked when the record is served, not here. A record
    /// already removed by retention cannot be read: the hash match is trusted
    /// then, so that a key's sequence never restarts (two keys sharing a 64-bit
    /// hash whose newest event is gone are not told apart).
    pub(crate) fn is_key_at(&self, key: &[u8], offset: Offset) -> Result<bool> {
        match self.with_link_at(offset, |link| link.key == key) {
            Ok(matches) => Ok(matches),
            Err(Error::OffsetOutOfRange { .. }) if offset < self.earliest() => Ok(true),
            Err(Error::OffsetOutOfRange { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The published state of a key: (last sequence, last offset).
    pub(crate) fn key_last(&self, key: &[u8]) -> Result<Option<(Sequence, Offset)>> {
        // A quarantined partition's key index is not rebuilt.
        self.refuse_if_quarantined()?;
        let hash = key_hash(key);
        let mut state = self.lock();
        let found = state.keys.get(key, hash, |offset| self.is_key_at(key, offset))?;
        Ok(found.map(|state| (state.last_sequence, state.last_offset)))
    }

    /// Reads a key's events. Forwards: from `from` (default 0) towards the newest.
    /// Backwards: from `from` (default the newest) towards the oldest. Events
    /// removed by retention are skipped: the history starts at the oldest retained.
    ///
    /// The key's events are chained backwards on disk; finding the start costs one
    /// hop per event newer than it. The events come as a batch over the
    /// segments' mappings, in the order read.
    pub(crate) fn read_key(
        &self,
        key: &[u8],
        from: Option<Sequence>,
        direction: Direction,
        count_max: usize,
    ) -> Result<StoredEvents> {
        let count_max = count_max.min(limits::READ_EVENTS_COUNT_MAX);
        let Some((last_sequence, last_offset)) = self.key_last(key)? else {
            return Ok(StoredEvents::mapped(self.id));
        };
        if count_max == 0 {
            return Ok(StoredEvents::mapped(self.id));
        }
        let earliest = self.earliest();
        // Walk the chain back from the newest event with cheap header reads,
        // keeping the offsets to serve; decode (with CRC) only those.
        let mut offsets: VecDeque<Offset> = VecDeque::new();
        let mut offset = last_offset;
        let mut sequence = last_sequence;
        loop {
            if offset < earliest {
                break;
            }
            let link = match self.with_link_at(offset, |link| {
                (link.key == key).then_some((link.key_previous_offset, link.sequence))
            }) {
                Ok(Some(link)) => link,
                Ok(None) => {
                    return Err(Error::Inconsistent {
                        path: self.dir.clone(),
                        reason: format!("key chain reaches offset {offset} of another key"),
                    });
                }
                Err(Error::OffsetOutOfRange { .. }) => break,
                Err(error) => return Err(error),
            };
            let (previous, found) = link;
            if found != sequence {
                return Err(Error::Inconsistent {
                    path: self.dir.clone(),
                    reason: format!(
                        "key chain at offset {offset} holds sequence {found}, expected {sequence}"
                    ),
                });
            }
            match direction {
                Direction::Backwards => {
                    if from.is_none_or(|from| sequence <= from) {
                        offsets.push_back(offset);
                        if offsets.len() == count_max {
                            break;
                        }
                    }
                }
                Direction::Forwards => {
                    if from.is_some_and(|from| sequence < from) {
                        break;
                    }
                    offsets.push_front(offset);
                    if offsets.len() > count_max {
                        offsets.pop_back();
                    }
                }
            }
            if previous == NO_PREVIOUS || sequence == Sequence(0) {
                break;
            }
            offset = Offset(previous);
            sequence = Sequence(sequence.0 - 1);
        }
        let mut batch = StoredEvents::mapped(self.id);
        for offset in offsets {
            let segment = self.segment_of(offset)?;
            let position = segment.position_of(offset)?;
            let (view, size) = segment.decode_at(position)?;
            if view.offset != offset {
                return Err(Error::corruption(
                    &segment.path,
                    position,
                    crate::format::DecodeError::Invalid("record offset out of sequence"),
                ));
            }
            if view.key != key {
                return Err(Error::Inconsistent {
                    path: self.dir.clone(),
                    reason: format!("record at offset {offset} is not of the key read"),
                });
            }
            batch.push_mapped(&segment, position, size, &view);
            batch.set_next_offset(offset.next());
        }
        Ok(batch)
    }

    /// The first offset whose timestamp is at or after `timestamp_ms`; the high
    /// watermark when every retained event is older.
    pub(crate) fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Offset> {
        let segments: Vec<Arc<Segment>> = self.segments().clone();
        let high_watermark = self.high_watermark();
        for segment in segments {
            if let Some((_, offset)) = segment.seek_timestamp(timestamp_ms)? {
                return Ok(offset.min(high_watermark));
            }
        }
        // Past a quarantined partition's good prefix the answer is unknown.
        self.refuse_if_quarantined()?;
        Ok(high_watermark)
    }
}

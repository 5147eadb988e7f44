//! Consumer group journal records (`STELEGRP`): each group's definition and its
//! progress, whole (put), removed (delete) or changed (progress). See FORMAT.md,
//! "Group journal records".
//!
//! The rules of progress live here, in [`PartitionProgress`], because replay
//! applies them: the server keeps the same type in memory and writes the same
//! [`ProgressChange`]s to the store, so what it decided and what a reopen replays
//! cannot differ.
//!
//! Put (kind 1): `u8 kind`, name, topic, `i64 created_ms`, the settings, the
//! dead-letter topic, `u8 exhausted`, `u32 redrive_count` and that many
//! `(u32 partition, u64 offset)`, then for each of the two streams `u32
//! partitions_count` and per partition `u64 floor`, `u32 ranges_count`, `u32
//! pendings_count`, the ranges `(u64 start, u64 end)` and the pendings `(u64
//! offset, u32 attempts, i64 not_before_ms, u8 flags)`. Delete (kind 2): `u8
//! kind`, name. Progress (kind 3): `u8 kind`, name, `u32 changes_count` and that
//! many changes, each a `u8` change kind then its fields. Strings are a `u16`
//! length then the bytes.
//!
//! Invariant (of every [`PartitionProgress`]): the settled ranges are disjoint,
//! non-adjacent and start above the floor; pending offsets are at or above the
//! floor and not settled; the running count equals the ranges' total length.

use std::collections::BTreeMap;

use super::journal::{JournalRecord, ReplayError, is_ascii_name_byte};
use super::{DecodeError, Put, Reader, check_len};
use crate::limits::{
    GROUP_NAME_SIZE_MAX, GROUP_PROGRESS_CHANGES_COUNT_MAX, GROUP_PROGRESS_ENTRIES_MAX, GROUPS_COUNT_MAX,
    PARTITIONS_COUNT_MAX, TOPIC_NAME_SIZE_MAX,
};

/// The magic of the consumer group journal.
pub const GROUP_MAGIC: &[u8; 8] = b"STELEGRP";
/// The streams of a group: its topic, then the redrive of its dead-letter topic.
pub const STREAMS_COUNT: usize = 2;
/// The stream of the group's topic.
pub const STREAM_TOPIC: u8 = 0;
/// The stream that redrives the group's dead-letter topic.
pub const STREAM_REDRIVE: u8 = 1;

/// Record kind: the whole state of a group (create or replace).
const KIND_PUT: u8 = 1;
/// Record kind: delete a group.
const KIND_DELETE: u8 = 2;
/// Record kind: progress changes of a group, applied in order.
const KIND_PROGRESS: u8 = 3;
/// Change kind: settle a range of offsets.
const CHANGE_SETTLE: u8 = 1;
/// Change kind: set the pending entry of an offset.
const CHANGE_PENDING_SET: u8 = 2;
/// Change kind: clear the pending entry of an offset.
const CHANGE_PENDING_CLEAR: u8 = 3;
/// Change kind: move a partition to a floor.
const CHANGE_SEEK: u8 = 4;
/// `exhausted` byte of a put: park the event.
const EXHAUSTED_PARK: u8 = 0;
/// `exhausted` byte of a put: block the partition at the event.
const EXHAUSTED_BLOCK: u8 = 1;
/// Flag bit of a pending entry: it blocks its partition.
const FLAG_BLOCKED: u8 = 1;

/// A settled range in a put: start, end.
const RANGE_LEN: usize = 16;
/// A pending entry in a put: offset, attempts, not_before_ms, flags.
const PENDING_LEN: usize = 21;
/// A partition's header in a put: floor, ranges_count, pendings_count.
const PARTITION_HEADER_LEN: usize = 16;
/// A redrive mark in a put: partition, offset.
const REDRIVE_LEN: usize = 12;
/// The fixed fields of a put: the kind, three string lengths, created_ms, the
/// numeric settings, exhausted, redrive_count and both partitions_count fields.
const PUT_FIXED_LEN: usize = 1 + 3 * 2 + 8 + (8 + 4 + 8 + 8 + 4) + 1 + 4 + 2 * 4;
/// The largest change of a progress record: a pending set.
const CHANGE_SIZE_MAX: usize = 1 + 1 + 4 + 8 + 4 + 8 + 1;

const fn larger(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// Largest put body: every string at its limit, a redrive mark and both streams at
/// `PARTITIONS_COUNT_MAX` partitions, and `GROUP_PROGRESS_ENTRIES_MAX` entries of
/// the larger kind.
pub const GROUP_PUT_SIZE_MAX: usize = PUT_FIXED_LEN
    + GROUP_NAME_SIZE_MAX
    + 2 * TOPIC_NAME_SIZE_MAX
    + REDRIVE_LEN * PARTITIONS_COUNT_MAX as usize
    + STREAMS_COUNT * PARTITION_HEADER_LEN * PARTITIONS_COUNT_MAX as usize
    + GROUP_PROGRESS_ENTRIES_MAX * larger(RANGE_LEN, PENDING_LEN);
/// Largest progress body: `GROUP_PROGRESS_CHANGES_COUNT_MAX` of the largest change.
pub const GROUP_PROGRESS_SIZE_MAX: usize =
    1 + 2 + GROUP_NAME_SIZE_MAX + 4 + GROUP_PROGRESS_CHANGES_COUNT_MAX * CHANGE_SIZE_MAX;
/// Largest record body of the group journal.
pub const GROUP_RECORD_SIZE_MAX: u32 = larger(GROUP_PUT_SIZE_MAX, GROUP_PROGRESS_SIZE_MAX) as u32;

const _: () = assert!(larger(GROUP_PUT_SIZE_MAX, GROUP_PROGRESS_SIZE_MAX) <= u32::MAX as usize);
const _: () = assert!(TOPIC_NAME_SIZE_MAX <= u16::MAX as usize);
const _: () = assert!(GROUP_PROGRESS_CHANGES_COUNT_MAX <= u32::MAX as usize);

/// What happens to an event whose deliveries are exhausted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Exhausted {
    /// The event is parked: copied to the group's dead-letter topic, then settled.
    #[default]
    Park,
    /// The event stays unsettled and holds up its partition (its pending entry is
    /// marked blocked) until someone settles it or seeks past it.
    Block,
}

/// How a group delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// How long a member holds a delivered event before it is delivered again.
    pub lease_ms: u64,
    /// Deliveries of one event before it is exhausted.
    pub deliveries_max: u32,
    /// Delay before the second delivery of a rejected event.
    pub backoff_initial_ms: u64,
    /// Cap on the delay between deliveries.
    pub backoff_max_ms: u64,
    /// Events delivered to one member and not yet settled, at most.
    pub in_flight_per_member_max: u32,
    /// Where parked events go.
    pub dead_letter_topic: String,
    /// What happens when an event's deliveries are exhausted.
    pub exhausted: Exhausted,
}

/// A group's definition: what it consumes and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDefinition {
    /// Unique name: 1 ..= `GROUP_NAME_SIZE_MAX` ASCII letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// The topic consumed.
    pub topic: String,
    /// Delivery settings.
    pub settings: GroupSettings,
    /// Creation time, Unix ms.
    pub created_ms: i64,
    /// Redrive marks on the dead-letter topic by partition: (partition, offset).
    pub redrive_until: Vec<(u32, u64)>,
}

/// Unsettled offset with recorded delivery attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    /// Deliveries made so far.
    pub attempts: u32,
    /// Not delivered again before this time, Unix ms.
    pub not_before_ms: i64,
    /// Whether the offset's deliveries are exhausted and it holds up its partition.
    pub blocked: bool,
}

/// One partition of one stream of a group: which offsets are settled, and the
/// delivery attempts of unsettled ones.
///
/// Every offset below [`PartitionProgress::floor`] is settled; above it, settled
/// offsets are kept as disjoint, non-adjacent half-open ranges. The floor moves up
/// as soon as a settled range starts at it. Costs are O(log n) in the entries,
/// except where a method says otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionProgress {
    /// Every offset below is settled; the floor itself is not.
    floor: u64,
    /// Settled ranges above the floor: start -> end (half-open), disjoint,
    /// non-adjacent, every start > floor.
    settled: BTreeMap<u64, u64>,
    /// Unsettled offsets >= floor with attempts recorded.
    pending: BTreeMap<u64, Pending>,
    /// The total length of the settled ranges.
    settled_above_floor: u64,
}

impl PartitionProgress {
    /// A partition where every offset below `floor`, and nothing else, is settled.
    pub fn new(floor: u64) -> PartitionProgress {
        PartitionProgress {
            floor,
            ..PartitionProgress::default()
        }
    }

    /// Every offset below is settled, and this one is not.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Whether `offset` is settled.
    pub fn is_settled(&self, offset: u64) -> bool {
        offset < self.floor || self.range_containing(offset).is_some()
    }

    /// The smallest offset at or above `offset` that is not settled: where a
    /// reader at `offset` skips to.
    pub fn first_unsettled_from(&self, offset: u64) -> u64 {
        if offset < self.floor {
            return self.floor;
        }
        // Ranges are non-adjacent, so the end of a range is never settled.
        self.range_containing(offset).map_or(offset, |(_, end)| end)
    }

    /// The pending entry of `offset`.
    pub fn pending(&self, offset: u64) -> Option<&Pending> {
        self.pending.get(&offset)
    }

    /// Every pending entry, by offset.
    pub fn pendings(&self) -> impl Iterator<Item = (u64, &Pending)> {
        self.pending.iter().map(|(&offset, pending)| (offset, pending))
    }

    /// The settled ranges above the floor, `(start, end)` half-open, in order.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> {
        self.settled.iter().map(|(&start, &end)| (start, end))
    }

    /// How many offsets above the floor are settled (O(1)).
    pub fn settled_above_floor(&self) -> u64 {
        self.settled_above_floor
    }

    /// How many settled ranges lie above the floor (O(1)).
    pub fn ranges_count(&self) -> usize {
        self.settled.len()
    }

    /// How many offsets have a pending entry (O(1)).
    pub fn pendings_count(&self) -> usize {
        self.pending.len()
    }

    /// Ranges plus pending entries: what the partition costs against
    /// `GROUP_PROGRESS_ENTRIES_MAX` (O(1)).
    pub fn entries_count(&self) -> usize {
        self.settled.len() + self.pending.len()
    }

    /// Settles the offsets `[start, end)` and clears their pending entries; what is
    /// settled already (below the floor or in a range) stays so. When the settled
    /// offsets reach the floor, the floor moves past them.
    ///
    /// O(log n) plus O(log n) per range joined and per pending entry cleared
    /// (each was added once).
    ///
    /// # Panics
    /// When `start > end`: [`ProgressChange::check`] refuses such a change first.
    pub fn settle(&mut self, start: u64, end: u64) {
        assert!(start <= end, "settling [{start}, {end}): start past end");
        let start = start.max(self.floor);
        if start >= end {
            return;
        }
        let mut joined_start = start;
        let mut joined_end = end;
        // The range starting at or before `start` joins when it reaches `start`.
        if let Some((&before_start, &before_end)) = self.settled.range(..=start).next_back()
            && before_end >= start
        {
            self.remove_range(before_start);
            joined_start = before_start;
            joined_end = joined_end.max(before_end);
        }
        // Every range starting within the joined range, or right at its end, joins.
        // Bounded: each pass removes a range.
        while let Some((&next_start, &next_end)) = self.settled.range(joined_start..=joined_end).next() {
            self.remove_range(next_start);
            joined_end = joined_end.max(next_end);
        }
        // Only `[start, end)` was unsettled within the joined range, so only it
        // can hold pending entries. Bounded: each pass removes an entry.
        while let Some((&offset, _)) = self.pending.range(start..end).next() {
            self.pending.remove(&offset);
        }
        // Every range starts above the floor, so only a range starting at `start`
        // can start at the floor.
        if joined_start == self.floor {
            self.floor = joined_end;
        } else {
            self.settled.insert(joined_start, joined_end);
            self.settled_above_floor += joined_end - joined_start;
        }
        self.debug_check_near(joined_start);
    }

    /// Sets (`Some`) or clears (`None`) the pending entry of `offset`; does nothing
    /// when `offset` is settled.
    pub fn set_pending(&mut self, offset: u64, pending: Option<Pending>) {
        if self.is_settled(offset) {
            return;
        }
        match pending {
            Some(pending) => {
                self.pending.insert(offset, pending);
            }
            None => {
                self.pending.remove(&offset);
            }
        }
    }

    /// Moves the partition to `floor`, forwards or backwards: everything below is
    /// settled, nothing at or above is settled or pending. O(n) to drop the entries.
    pub fn seek(&mut self, floor: u64) {
        self.floor = floor;
        self.settled.clear();
        self.pending.clear();
        self.settled_above_floor = 0;
    }

    /// The settled range holding `offset` above the floor.
    fn range_containing(&self, offset: u64) -> Option<(u64, u64)> {
        match self.settled.range(..=offset).next_back() {
            Some((&start, &end)) if end > offset => Some((start, end)),
            _ => None,
        }
    }

    fn remove_range(&mut self, start: u64) {
        let end = self
            .settled
            .remove(&start)
            .expect("the range to remove was just found");
        self.settled_above_floor -= end - start;
    }

    /// A partition from decoded parts, refused unless they keep the invariants.
    fn from_parts(
        floor: u64,
        ranges: &[(u64, u64)],
        pendings: &[(u64, Pending)],
    ) -> Result<PartitionProgress, DecodeError> {
        let mut progress = PartitionProgress::new(floor);
        let mut previous_end = floor;
        for &(start, end) in ranges {
            // `start > previous_end`: above the floor, disjoint and non-adjacent.
            if start <= previous_end || start >= end {
                return Err(DecodeError::Invalid(
                    "settled ranges must be non-empty, ordered, apart and above the floor",
                ));
            }
            progress.settled.insert(start, end);
            progress.settled_above_floor += end - start;
            previous_end = end;
        }
        let mut previous_offset = None;
        for &(offset, pending) in pendings {
            if previous_offset.is_some_and(|previous| offset <= previous) || progress.is_settled(offset) {
                return Err(DecodeError::Invalid(
                    "pending offsets must be ordered, at or above the floor and unsettled",
                ));
            }
            progress.pending.insert(offset, pending);
            previous_offset = Some(offset);
        }
        Ok(progress)
    }

    /// Checks in debug builds, in O(log n), the invariants where a settle changed
    /// the ranges: the first range starts above the floor, and the ranges around
    /// `offset` are non-empty and apart.
    fn debug_check_near(&self, offset: u64) {
        if !cfg!(debug_assertions) {
            return;
        }
        if let Some((&first, _)) = self.settled.first_key_value() {
            debug_assert!(
                first > self.floor,
                "range at {first} not above the floor {}",
                self.floor
            );
        }
        let around = self
            .settled
            .range(..offset)
            .next_back()
            .into_iter()
            .chain(self.settled.range(offset..).take(2));
        let mut previous_end = None;
        for (&start, &end) in around {
            debug_assert!(start < end, "empty range [{start}, {end})");
            if let Some(previous_end) = previous_end {
                debug_assert!(
                    start > previous_end,
                    "range at {start} touches the one ending at {previous_end}"
                );
            }
            previous_end = Some(end);
        }
    }

    /// Panics unless the invariants hold. O(n).
    #[cfg(test)]
    fn check_invariants(&self) {
        let mut previous_end = self.floor;
        let mut total = 0u64;
        for (&start, &end) in &self.settled {
            assert!(
                start > previous_end,
                "range [{start}, {end}) touches what precedes it at {previous_end}"
            );
            assert!(start < end, "empty range [{start}, {end})");
            total += end - start;
            previous_end = end;
        }
        assert_eq!(total, self.settled_above_floor, "the settled count drifted");
        for &offset in self.pending.keys() {
            assert!(!self.is_settled(offset), "pending offset {offset} is settled");
        }
    }
}

/// One change of a group's progress, in a stream (0: the topic, 1: the redrive of
/// the dead-letter topic) and a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressChange {
    /// Settles offsets `[start, end)` (ranges at or below the floor, or overlapping
    /// settled ones, are fine: idempotent); clears their pending entries; advances
    /// the floor while the first range starts at it.
    Settle {
        /// The stream.
        stream: u8,
        /// The partition.
        partition: u32,
        /// First offset settled.
        start: u64,
        /// One past the last offset settled; `start <= end`.
        end: u64,
    },
    /// Sets (`Some`) or clears (`None`) the pending entry of an offset; ignored
    /// when the offset is settled or below the floor.
    Pending {
        /// The stream.
        stream: u8,
        /// The partition.
        partition: u32,
        /// The offset.
        offset: u64,
        /// Its entry, or `None` to clear it.
        pending: Option<Pending>,
    },
    /// Moves the partition to `floor`: everything below settled, nothing at or
    /// above settled or pending.
    Seek {
        /// The stream.
        stream: u8,
        /// The partition.
        partition: u32,
        /// The new floor.
        floor: u64,
    },
}

impl ProgressChange {
    /// The stream the change is about.
    pub fn stream(&self) -> u8 {
        match self {
            ProgressChange::Settle { stream, .. }
            | ProgressChange::Pending { stream, .. }
            | ProgressChange::Seek { stream, .. } => *stream,
        }
    }

    /// The partition the change is about.
    pub fn partition(&self) -> u32 {
        match self {
            ProgressChange::Settle { partition, .. }
            | ProgressChange::Pending { partition, .. }
            | ProgressChange::Seek { partition, .. } => *partition,
        }
    }

    /// At most how many entries the change adds to its partition: a settle joins
    /// into at most one new range, a pending entry is one.
    pub fn entries_added_max(&self) -> usize {
        match self {
            ProgressChange::Settle { .. } | ProgressChange::Pending { pending: Some(_), .. } => 1,
            ProgressChange::Pending { pending: None, .. } | ProgressChange::Seek { .. } => 0,
        }
    }

    /// Checks the change's own fields: a stream below [`STREAMS_COUNT`], a
    /// partition below `PARTITIONS_COUNT_MAX`, `start <= end`.
    ///
    /// # Errors
    /// [`DecodeError::Invalid`] naming the rule.
    pub fn check(&self) -> Result<(), DecodeError> {
        if usize::from(self.stream()) >= STREAMS_COUNT {
            return Err(DecodeError::Invalid("a group has streams 0 and 1 only"));
        }
        if self.partition() >= PARTITIONS_COUNT_MAX {
            return Err(DecodeError::Invalid("partition beyond the partition limit"));
        }
        if let ProgressChange::Settle { start, end, .. } = self
            && start > end
        {
            return Err(DecodeError::Invalid("settled range starts past its end"));
        }
        Ok(())
    }
}

/// A group: its definition and its progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// What the group consumes and how.
    pub definition: GroupDefinition,
    /// Progress per stream (index 0: the group's topic; 1: the redrive of its
    /// dead-letter topic) and partition.
    pub streams: [Vec<PartitionProgress>; STREAMS_COUNT],
}

impl GroupState {
    /// A group with no progress yet.
    pub fn new(definition: GroupDefinition) -> GroupState {
        GroupState {
            definition,
            streams: [Vec::new(), Vec::new()],
        }
    }

    /// The progress of a partition of a stream, when it has any.
    pub fn partition(&self, stream: u8, partition: u32) -> Option<&PartitionProgress> {
        self.streams
            .get(usize::from(stream))?
            .get(usize::try_from(partition).ok()?)
    }

    /// Ranges plus pending entries over every partition of both streams: what the
    /// group costs against `GROUP_PROGRESS_ENTRIES_MAX`. O(partitions).
    pub fn entries_count(&self) -> usize {
        self.streams
            .iter()
            .flatten()
            .map(PartitionProgress::entries_count)
            .sum()
    }

    /// Applies one change with the rules of replay, growing the stream to the
    /// change's partition (new partitions start at floor 0). It does not check the
    /// entry limit: a caller applying a record checks it after the last change.
    ///
    /// # Errors
    /// As [`ProgressChange::check`]; nothing changes then.
    pub fn apply(&mut self, change: &ProgressChange) -> Result<(), DecodeError> {
        change.check()?;
        let stream = &mut self.streams[usize::from(change.stream())];
        let index = change.partition() as usize;
        if stream.len() <= index {
            stream.resize_with(index + 1, || PartitionProgress::new(0));
        }
        let progress = &mut stream[index];
        match *change {
            ProgressChange::Settle { start, end, .. } => progress.settle(start, end),
            ProgressChange::Pending { offset, pending, .. } => progress.set_pending(offset, pending),
            ProgressChange::Seek { floor, .. } => progress.seek(floor),
        }
        Ok(())
    }
}

/// Checks what decoding a definition checks, so that nothing is written that a
/// reopen would refuse: the name's alphabet and size, a topic of 1 ..=
/// `TOPIC_NAME_SIZE_MAX` bytes, a dead-letter topic of at most that, at most
/// `PARTITIONS_COUNT_MAX` redrive marks.
///
/// # Errors
/// [`DecodeError::Invalid`] or [`DecodeError::LengthOutOfBounds`] naming the rule.
pub fn check_definition(definition: &GroupDefinition) -> Result<(), DecodeError> {
    let name = definition.name.as_bytes();
    check_len(name.len() as u64, GROUP_NAME_SIZE_MAX as u64)?;
    if name.is_empty() || !name.iter().all(|&byte| is_ascii_name_byte(byte)) {
        return Err(DecodeError::Invalid(
            "a group name is ASCII letters, digits, '.', '_' and '-'",
        ));
    }
    check_len(definition.topic.len() as u64, TOPIC_NAME_SIZE_MAX as u64)?;
    if definition.topic.is_empty() {
        return Err(DecodeError::Invalid("a group's topic is empty"));
    }
    check_len(
        definition.settings.dead_letter_topic.len() as u64,
        TOPIC_NAME_SIZE_MAX as u64,
    )?;
    check_len(
        definition.redrive_until.len() as u64,
        u64::from(PARTITIONS_COUNT_MAX),
    )
}

/// Checks a whole state as decoding a put does: [`check_definition`], at most
/// `PARTITIONS_COUNT_MAX` partitions per stream, at most
/// `GROUP_PROGRESS_ENTRIES_MAX` entries. O(partitions).
///
/// # Errors
/// As [`check_definition`]; [`DecodeError::LengthOutOfBounds`] for the counts.
pub fn check_state(state: &GroupState) -> Result<(), DecodeError> {
    check_definition(&state.definition)?;
    for stream in &state.streams {
        check_len(stream.len() as u64, u64::from(PARTITIONS_COUNT_MAX))?;
    }
    check_len(state.entries_count() as u64, GROUP_PROGRESS_ENTRIES_MAX as u64)
}

/// One record of the group journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRecord {
    /// Creates or replaces a group with this whole state: creation, a definition
    /// change, and the snapshot of a compaction.
    Put {
        /// The group's whole state.
        state: Box<GroupState>,
    },
    /// Removes a group.
    Delete {
        /// The group's name.
        name: String,
    },
    /// Applies progress changes to an existing group, in order.
    Progress {
        /// The group's name.
        name: String,
        /// The changes, at most `GROUP_PROGRESS_CHANGES_COUNT_MAX`.
        changes: Vec<ProgressChange>,
    },
}

fn encode_put(state: &GroupState, out: &mut Vec<u8>) {
    let definition = &state.definition;
    let settings = &definition.settings;
    out.put_u8(KIND_PUT);
    out.put_bytes16(definition.name.as_bytes());
    out.put_bytes16(definition.topic.as_bytes());
    out.put_i64(definition.created_ms);
    out.put_u64(settings.lease_ms);
    out.put_u32(settings.deliveries_max);
    out.put_u64(settings.backoff_initial_ms);
    out.put_u64(settings.backoff_max_ms);
    out.put_u32(settings.in_flight_per_member_max);
    out.put_bytes16(settings.dead_letter_topic.as_bytes());
    out.put_u8(match settings.exhausted {
        Exhausted::Park => EXHAUSTED_PARK,
        Exhausted::Block => EXHAUSTED_BLOCK,
    });
    out.put_u32(definition.redrive_until.len() as u32);
    for &(partition, offset) in &definition.redrive_until {
        out.put_u32(partition);
        out.put_u64(offset);
    }
    for stream in &state.streams {
        out.put_u32(stream.len() as u32);
        for progress in stream {
            out.put_u64(progress.floor);
            out.put_u32(progress.settled.len() as u32);
            out.put_u32(progress.pending.len() as u32);
            for (&start, &end) in &progress.settled {
                out.put_u64(start);
                out.put_u64(end);
            }
            for (&offset, pending) in &progress.pending {
                out.put_u64(offset);
                encode_pending(pending, out);
            }
        }
    }
}

fn encode_pending(pending: &Pending, out: &mut Vec<u8>) {
    out.put_u32(pending.attempts);
    out.put_i64(pending.not_before_ms);
    out.put_u8(if pending.blocked { FLAG_BLOCKED } else { 0 });
}

fn decode_pending(reader: &mut Reader<'_>) -> Result<Pending, DecodeError> {
    let attempts = reader.u32()?;
    let not_before_ms = reader.i64()?;
    let flags = reader.u8()?;
    if flags & !FLAG_BLOCKED != 0 {
        return Err(DecodeError::Invalid("unknown pending entry flags"));
    }
    Ok(Pending {
        attempts,
        not_before_ms,
        blocked: flags & FLAG_BLOCKED != 0,
    })
}

/// The body length of a put of `state`, counted without encoding. O(partitions).
fn put_len(state: &GroupState) -> usize {
    let definition = &state.definition;
    let progress: usize = state
        .streams
        .iter()
        .flatten()
        .map(|progress| {
            PARTITION_HEADER_LEN + RANGE_LEN * progress.settled.len() + PENDING_LEN * progress.pending.len()
        })
        .sum();
    PUT_FIXED_LEN
        + definition.name.len()
        + definition.topic.len()
        + definition.settings.dead_letter_topic.len()
        + REDRIVE_LEN * definition.redrive_until.len()
        + progress
}

fn decode_string(reader: &mut Reader<'_>, size_max: usize) -> Result<String, DecodeError> {
    Ok(reader.str16(size_max)?.to_string())
}

fn decode_put(reader: &mut Reader<'_>, name: String) -> Result<GroupState, DecodeError> {
    let topic = decode_string(reader, TOPIC_NAME_SIZE_MAX)?;
    let created_ms = reader.i64()?;
    let lease_ms = reader.u64()?;
    let deliveries_max = reader.u32()?;
    let backoff_initial_ms = reader.u64()?;
    let backoff_max_ms = reader.u64()?;
    let in_flight_per_member_max = reader.u32()?;
    let dead_letter_topic = decode_string(reader, TOPIC_NAME_SIZE_MAX)?;
    let exhausted = match reader.u8()? {
        EXHAUSTED_PARK => Exhausted::Park,
        EXHAUSTED_BLOCK => Exhausted::Block,
        _ => return Err(DecodeError::Invalid("unknown exhausted policy")),
    };
    let redrive_count = reader.u32()?;
    check_len(u64::from(redrive_count), u64::from(PARTITIONS_COUNT_MAX))?;
    let mut redrive_until = Vec::with_capacity(redrive_count as usize);
    for _ in 0..redrive_count {
        redrive_until.push((reader.u32()?, reader.u64()?));
    }
    let definition = GroupDefinition {
        name,
        topic,
        settings: GroupSettings {
            lease_ms,
            deliveries_max,
            backoff_initial_ms,
            backoff_max_ms,
            in_flight_per_member_max,
            dead_letter_topic,
            exhausted,
        },
        created_ms,
        redrive_until,
    };
    check_definition(&definition)?;
    let mut state = GroupState::new(definition);
    let mut entries_count = 0u64;
    let mut ranges = Vec::new();
    let mut pendings = Vec::new();
    for stream in &mut state.streams {
        let partitions_count = reader.u32()?;
        check_len(u64::from(partitions_count), u64::from(PARTITIONS_COUNT_MAX))?;
        stream.reserve(partitions_count as usize);
        for _ in 0..partitions_count {
            let floor = reader.u64()?;
            let ranges_count = reader.u32()?;
            let pendings_count = reader.u32()?;
            // Checked before reading (and allocating for) the entries.
            entries_count += u64::from(ranges_count) + u64::from(pendings_count);
            check_len(entries_count, GROUP_PROGRESS_ENTRIES_MAX as u64)?;
            ranges.clear();
            for _ in 0..ranges_count {
                ranges.push((reader.u64()?, reader.u64()?));
            }
            pendings.clear();
            for _ in 0..pendings_count {
                pendings.push((reader.u64()?, decode_pending(reader)?));
            }
            stream.push(PartitionProgress::from_parts(floor, &ranges, &pendings)?);
        }
    }
    Ok(state)
}

fn encode_change(change: &ProgressChange, out: &mut Vec<u8>) {
    match *change {
        ProgressChange::Settle {
            stream,
            partition,
            start,
            end,
        } => {
            out.put_u8(CHANGE_SETTLE);
            out.put_u8(stream);
            out.put_u32(partition);
            out.put_u64(start);
            out.put_u64(end);
        }
        ProgressChange::Pending {
            stream,
            partition,
            offset,
            pending,
        } => {
            out.put_u8(if pending.is_some() {
                CHANGE_PENDING_SET
            } else {
                CHANGE_PENDING_CLEAR
            });
            out.put_u8(stream);
            out.put_u32(partition);
            out.put_u64(offset);
            if let Some(pending) = pending {
                encode_pending(&pending, out);
            }
        }
        ProgressChange::Seek {
            stream,
            partition,
            floor,
        } => {
            out.put_u8(CHANGE_SEEK);
            out.put_u8(stream);
            out.put_u32(partition);
            out.put_u64(floor);
        }
    }
}

fn decode_change(reader: &mut Reader<'_>) -> Result<ProgressChange, DecodeError> {
    let kind = reader.u8()?;
    let stream = reader.u8()?;
    let partition = reader.u32()?;
    let change = match kind {
        CHANGE_SETTLE => ProgressChange::Settle {
            stream,
            partition,
            start: reader.u64()?,
            end: reader.u64()?,
        },
        CHANGE_PENDING_SET => ProgressChange::Pending {
            stream,
            partition,
            offset: reader.u64()?,
            pending: Some(decode_pending(reader)?),
        },
        CHANGE_PENDING_CLEAR => ProgressChange::Pending {
            stream,
            partition,
            offset: reader.u64()?,
            pending: None,
        },
        CHANGE_SEEK => ProgressChange::Seek {
            stream,
            partition,
            floor: reader.u64()?,
        },
        _ => return Err(DecodeError::Invalid("unknown group progress change kind")),
    };
    change.check()?;
    Ok(change)
}

fn invalid(reason: &'static str) -> ReplayError {
    ReplayError::Invalid(DecodeError::Invalid(reason))
}

impl JournalRecord for GroupRecord {
    const MAGIC: &'static [u8; 8] = GROUP_MAGIC;
    const BODY_SIZE_MAX: u32 = GROUP_RECORD_SIZE_MAX;
    const ENTRIES_COUNT_MAX: usize = GROUPS_COUNT_MAX;
    type Key = String;
    type Value = GroupState;
    type Context = ();
    type Index = ();

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            GroupRecord::Put { state } => encode_put(state, out),
            GroupRecord::Delete { name } => {
                out.put_u8(KIND_DELETE);
                out.put_bytes16(name.as_bytes());
            }
            GroupRecord::Progress { name, changes } => {
                out.put_u8(KIND_PROGRESS);
                out.put_bytes16(name.as_bytes());
                out.put_u32(changes.len() as u32);
                for change in changes {
                    encode_change(change, out);
                }
            }
        }
    }

    fn decode(body: &[u8], _context: ()) -> Result<GroupRecord, DecodeError> {
        let mut reader = Reader::new(body);
        let kind = reader.u8()?;
        let name = decode_string(&mut reader, GROUP_NAME_SIZE_MAX)?;
        let record = match kind {
            KIND_PUT => GroupRecord::Put {
                state: Box::new(decode_put(&mut reader, name)?),
            },
            KIND_DELETE => GroupRecord::Delete { name },
            KIND_PROGRESS => {
                let changes_count = reader.u32()?;
                check_len(u64::from(changes_count), GROUP_PROGRESS_CHANGES_COUNT_MAX as u64)?;
                let mut changes = Vec::with_capacity(changes_count as usize);
                for _ in 0..changes_count {
                    changes.push(decode_change(&mut reader)?);
                }
                GroupRecord::Progress { name, changes }
            }
            _ => return Err(DecodeError::Invalid("unknown group record kind")),
        };
        if reader.remaining() != 0 {
            return Err(DecodeError::Invalid("trailing bytes in a group record"));
        }
        Ok(record)
    }

    fn key(&self) -> &String {
        match self {
            GroupRecord::Put { state } => &state.definition.name,
            GroupRecord::Delete { name } | GroupRecord::Progress { name, .. } => name,
        }
    }

    fn apply(
        &self,
        current: Option<&GroupState>,
        _index: &(),
        _context: (),
    ) -> Result<Option<GroupState>, ReplayError> {
        match self {
            GroupRecord::Put { state } => {
                check_state(state)?;
                Ok(Some(GroupState::clone(state)))
            }
            GroupRecord::Delete { .. } => Ok(None),
            GroupRecord::Progress { changes, .. } => {
                let Some(current) = current else {
                    return Err(invalid("progress of a group that does not exist"));
                };
                check_len(changes.len() as u64, GROUP_PROGRESS_CHANGES_COUNT_MAX as u64)?;
                let mut next = current.clone();
                for change in changes {
                    next.apply(change)?;
                }
                check_len(next.entries_count() as u64, GROUP_PROGRESS_ENTRIES_MAX as u64)?;
                Ok(Some(next))
            }
        }
    }

    fn snapshot(_name: &String, state: &GroupState) -> GroupRecord {
        GroupRecord::Put {
            state: Box::new(state.clone()),
        }
    }

    fn snapshot_body_len(_name: &String, state: &GroupState) -> usize {
        put_len(state)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::format::journal::replay;

    fn definition(name: &str) -> GroupDefinition {
        GroupDefinition {
            name: name.to_string(),
            topic: "orders".to_string(),
            settings: GroupSettings {
                lease_ms: 30_000,
                deliveries_max: 5,
                backoff_initial_ms: 100,
                backoff_max_ms: 10_000,
                in_flight_per_member_max: 8,
                dead_letter_topic: "orders.parked".to_string(),
                exhausted: Exhausted::Block,
            },
            created_ms: 1_700_000_000_000,
            redrive_until: vec![(0, 5), (2, 9)],
        }
    }

    fn pending(attempts: u32) -> Pending {
        Pending {
            attempts,
            not_before_ms: 1_700_000_000_000 + i64::from(attempts),
            blocked: attempts.is_multiple_of(2),
        }
    }

    fn settle(stream: u8, partition: u32, start: u64, end: u64) -> ProgressChange {
        ProgressChange::Settle {
            stream,
            partition,
            start,
            end,
        }
    }

    /// A state with progress in both streams: ranges, pendings, a moved floor.
    fn state_with_progress() -> GroupState {
        let mut state = GroupState::new(definition("billing"));
        let changes = [
            settle(0, 0, 0, 10),
            settle(0, 0, 12, 15),
            settle(0, 2, 3, 4),
            ProgressChange::Pending {
                stream: 0,
                partition: 0,
                offset: 10,
                pending: Some(pending(2)),
            },
            ProgressChange::Pending {
                stream: 0,
                partition: 0,
                offset: 20,
                pending: Some(pending(1)),
            },
            ProgressChange::Seek {
                stream: 1,
                partition: 1,
                floor: 7,
            },
        ];
        for change in &changes {
            state.apply(change).expect("a valid change");
        }
        state
    }

    fn encoded(record: &GroupRecord) -> Vec<u8> {
        let mut body = Vec::new();
        record.encode(&mut body);
        body
    }

    #[test]
    fn records_roundtrip_and_bad_bodies_are_refused() {
        // Goal: every record kind survives encoding, its counted length is its
        // encoded length, and a trailing byte or any cut is refused.
        let state = state_with_progress();
        assert_eq!(state.streams[0].len(), 3);
        assert_eq!(state.streams[1].len(), 2);
        let records = [
            GroupRecord::Put {
                state: Box::new(state.clone()),
            },
            GroupRecord::Put {
                state: Box::new(GroupState::new(definition("empty"))),
            },
            GroupRecord::Delete {
                name: "billing".to_string(),
            },
            GroupRecord::Progress {
                name: "billing".to_string(),
                changes: vec![
                    settle(1, 4095, 3, 9),
                    ProgressChange::Pending {
                        stream: 0,
                        partition: 1,
                        offset: 4,
                        pending: Some(pending(3)),
                    },
                    ProgressChange::Pending {
                        stream: 0,
                        partition: 1,
                        offset: 4,
                        pending: None,
                    },
                    ProgressChange::Seek {
                        stream: 0,
                        partition: 0,
                        floor: u64::MAX,
                    },
                ],
            },
        ];
        for record in records {
            let mut body = encoded(&record);
            assert_eq!(GroupRecord::decode(&body, ()), Ok(record.clone()));
            if let GroupRecord::Put { state } = &record {
                assert_eq!(GroupRecord::snapshot_body_len(&String::new(), state), body.len());
            }
            for cut in 0..body.len() {
                assert!(GroupRecord::decode(&body[..cut], ()).is_err(), "cut at {cut}");
            }
            body.push(0);
            assert!(GroupRecord::decode(&body, ()).is_err());
        }
    }

    #[test]
    fn every_body_that_decodes_encodes_back_to_itself() {
        // Goal: the encoding is canonical (one set of offsets, one byte string),
        // and decoding never panics on a damaged body. Method: change every byte
        // of a put and of a progress record to a few values; whatever decodes
        // must encode to the same bytes.
        let records = [
            GroupRecord::Put {
                state: Box::new(state_with_progress()),
            },
            GroupRecord::Progress {
                name: "billing".to_string(),
                changes: vec![
                    settle(0, 1, 2, 9),
                    ProgressChange::Pending {
                        stream: 1,
                        partition: 0,
                        offset: 4,
                        pending: Some(pending(3)),
                    },
                    ProgressChange::Seek {
                        stream: 0,
                        partition: 3,
                        floor: 8,
                    },
                ],
            },
        ];
        let mut decoded = 0;
        for record in records {
            let body = encoded(&record);
            for at in 0..body.len() {
                for value in [0, 1, 2, 4, 0x7f, 0xff, body[at] ^ 1] {
                    let mut changed = body.clone();
                    changed[at] = value;
                    if let Ok(record) = GroupRecord::decode(&changed, ()) {
                        assert_eq!(encoded(&record), changed, "byte {at} = {value}");
                        decoded += 1;
                    }
                }
            }
        }
        assert!(decoded > 100, "the test changed too little: {decoded} decoded");
    }

    #[test]
    fn decoding_refuses_what_breaks_a_rule() {
        // Goal: bytes that frame well but break a rule of the state or of a change
        // are refused, whatever field they are in. Method: encode valid records,
        // then patch one field each.
        let put = encoded(&GroupRecord::Put {
            state: Box::new(state_with_progress()),
        });
        let name_len = "billing".len();
        let exhausted_at = PUT_FIXED_LEN - 1 - 4 - 8 + name_len + "orders".len() + "orders.parked".len();
        assert_eq!(put[exhausted_at], EXHAUSTED_BLOCK);
        let mut bad_exhausted = put.clone();
        bad_exhausted[exhausted_at] = 2;
        assert!(GroupRecord::decode(&bad_exhausted, ()).is_err());
        let mut bad_name = put.clone();
        bad_name[3] = b' ';
        assert!(GroupRecord::decode(&bad_name, ()).is_err());
        // The first partition: floor 10 after settling [0, 10); then [12, 15).
        let streams_at = exhausted_at + 1 + 4 + 2 * REDRIVE_LEN;
        let partition_at = streams_at + 4;
        assert_eq!(put[partition_at..partition_at + 8], 10u64.to_le_bytes());
        let range_at = partition_at + PARTITION_HEADER_LEN;
        for (patch, what) in [
            (10u64, "a range starting at the floor"),
            (15, "an empty range"),
            (16, "a range ending before it starts"),
        ] {
            let mut bad = put.clone();
            bad[range_at..range_at + 8].copy_from_slice(&patch.to_le_bytes());
            assert!(GroupRecord::decode(&bad, ()).is_err(), "{what}");
        }
        let pending_at = range_at + RANGE_LEN;
        assert_eq!(put[pending_at..pending_at + 8], 10u64.to_le_bytes());
        for (patch, what) in [(9u64, "below the floor"), (13, "settled"), (20, "repeated")] {
            let mut bad = put.clone();
            bad[pending_at..pending_at + 8].copy_from_slice(&patch.to_le_bytes());
            assert!(GroupRecord::decode(&bad, ()).is_err(), "a pending entry {what}");
        }
        let mut bad_flags = put.clone();
        bad_flags[pending_at + PENDING_LEN - 1] = 2;
        assert!(GroupRecord::decode(&bad_flags, ()).is_err());
        let mut too_many = put.clone();
        too_many[partition_at + 8..partition_at + 12]
            .copy_from_slice(&(GROUP_PROGRESS_ENTRIES_MAX as u32 + 1).to_le_bytes());
        assert_eq!(
            GroupRecord::decode(&too_many, ()),
            Err(DecodeError::LengthOutOfBounds {
                len: GROUP_PROGRESS_ENTRIES_MAX as u64 + 3,
                max: GROUP_PROGRESS_ENTRIES_MAX as u64
            })
        );
        for bad_change in [
            settle(2, 0, 0, 1),
            settle(0, PARTITIONS_COUNT_MAX, 0, 1),
            settle(0, 0, 2, 1),
        ] {
            assert!(bad_change.check().is_err(), "{bad_change:?}");
            let body = encoded(&GroupRecord::Progress {
                name: "billing".to_string(),
                changes: vec![bad_change.clone()],
            });
            assert!(GroupRecord::decode(&body, ()).is_err(), "{bad_change:?}");
        }
        let mut unknown_change = encoded(&GroupRecord::Progress {
            name: "billing".to_string(),
            changes: vec![settle(0, 0, 0, 1)],
        });
        unknown_change[1 + 2 + name_len + 4] = 9;
        assert!(GroupRecord::decode(&unknown_change, ()).is_err());
        assert!(GroupRecord::decode(&[9, 1, 0, b'x'], ()).is_err());
    }

    #[test]
    fn replay_applies_progress_only_to_existing_groups_within_the_entry_limit() {
        // Goal: replay refuses progress of an unknown group and progress that
        // would exceed the entry limit, and changes nothing when it refuses.
        let mut groups = BTreeMap::new();
        let progress = |changes| {
            encoded(&GroupRecord::Progress {
                name: "billing".to_string(),
                changes,
            })
        };
        let first = progress(vec![settle(0, 0, 0, 3)]);
        assert!(replay::<GroupRecord>(&mut groups, &mut (), (), &first).is_err());
        assert!(groups.is_empty());
        let put = encoded(&GroupRecord::Put {
            state: Box::new(GroupState::new(definition("billing"))),
        });
        replay::<GroupRecord>(&mut groups, &mut (), (), &put).expect("a put");
        replay::<GroupRecord>(&mut groups, &mut (), (), &first).expect("progress");
        let partition = groups["billing"].partition(0, 0).expect("partition 0");
        assert_eq!(partition.floor(), 3);
        // Pending entries on every other offset of as many partitions as it takes,
        // one full record per partition.
        let per_partition = GROUP_PROGRESS_CHANGES_COUNT_MAX;
        for partition in 0..(GROUP_PROGRESS_ENTRIES_MAX / per_partition) as u32 {
            let changes = (0..per_partition as u64)
                .map(|at| ProgressChange::Pending {
                    stream: 1,
                    partition,
                    offset: 2 * at,
                    pending: Some(pending(1)),
                })
                .collect();
            replay::<GroupRecord>(&mut groups, &mut (), (), &progress(changes)).expect("within the limit");
        }
        let state_before = groups["billing"].clone();
        assert_eq!(state_before.entries_count(), GROUP_PROGRESS_ENTRIES_MAX);
        let over = progress(vec![settle(0, 0, 5, 6)]);
        assert!(replay::<GroupRecord>(&mut groups, &mut (), (), &over).is_err());
        assert_eq!(groups["billing"], state_before);
        // A change that joins ranges or settles pendings is fine at the limit.
        let settling = progress(vec![settle(1, 0, 0, 10)]);
        replay::<GroupRecord>(&mut groups, &mut (), (), &settling).expect("fewer entries");
        assert_eq!(groups["billing"].entries_count(), GROUP_PROGRESS_ENTRIES_MAX - 5);
        let delete = encoded(&GroupRecord::Delete {
            name: "billing".to_string(),
        });
        replay::<GroupRecord>(&mut groups, &mut (), (), &delete).expect("a delete");
        assert!(groups.is_empty());
    }

    #[test]
    fn a_maximal_put_fits_the_record_size() {
        // Goal: the record size bound holds a state at every limit at once.
        let mut state = GroupState::new(GroupDefinition {
            name: "g".repeat(GROUP_NAME_SIZE_MAX),
            topic: "t".repeat(TOPIC_NAME_SIZE_MAX),
            redrive_until: vec![(0, 0); PARTITIONS_COUNT_MAX as usize],
            ..definition("g")
        });
        state.definition.settings.dead_letter_topic = "d".repeat(TOPIC_NAME_SIZE_MAX);
        for stream in &mut state.streams {
            stream.resize_with(PARTITIONS_COUNT_MAX as usize, PartitionProgress::default);
        }
        let last = &mut state.streams[1][PARTITIONS_COUNT_MAX as usize - 1];
        for offset in 0..GROUP_PROGRESS_ENTRIES_MAX as u64 {
            last.set_pending(offset, Some(pending(1)));
        }
        assert_eq!(check_state(&state), Ok(()));
        let body = encoded(&GroupRecord::Put {
            state: Box::new(state.clone()),
        });
        assert_eq!(body.len(), GROUP_PUT_SIZE_MAX);
        assert!(body.len() <= GROUP_RECORD_SIZE_MAX as usize);
        assert_eq!(GroupRecord::decode(&body, ()).map(|_| ()), Ok(()));
        let changes = vec![
            ProgressChange::Pending {
                stream: 0,
                partition: 0,
                offset: 0,
                pending: Some(pending(1)),
            };
            GROUP_PROGRESS_CHANGES_COUNT_MAX
        ];
        let body = encoded(&GroupRecord::Progress {
            name: "g".repeat(GROUP_NAME_SIZE_MAX),
            changes,
        });
        assert_eq!(body.len(), GROUP_PROGRESS_SIZE_MAX);
    }

    #[test]
    fn settling_joins_ranges_and_moves_the_floor() {
        // Goal: the worked cases of settle: a gap, a join of both neighbours, a
        // range reaching the floor, overlaps and repeats.
        let mut progress = PartitionProgress::new(0);
        progress.settle(5, 7);
        progress.settle(9, 10);
        assert_eq!(progress.ranges().collect::<Vec<_>>(), vec![(5, 7), (9, 10)]);
        assert_eq!(progress.first_unsettled_from(5), 7);
        assert_eq!(progress.first_unsettled_from(7), 7);
        progress.set_pending(7, Some(pending(1)));
        progress.set_pending(5, Some(pending(1)));
        assert_eq!(
            progress.pendings_count(),
            1,
            "a settled offset has no pending entry"
        );
        progress.settle(7, 9);
        assert_eq!(progress.ranges().collect::<Vec<_>>(), vec![(5, 10)]);
        assert_eq!(progress.pendings_count(), 0);
        assert_eq!(progress.settled_above_floor(), 5);
        progress.settle(0, 5);
        assert_eq!((progress.floor(), progress.ranges_count()), (10, 0));
        progress.settle(3, 12);
        progress.settle(11, 11);
        assert_eq!((progress.floor(), progress.settled_above_floor()), (12, 0));
        progress.seek(4);
        assert!(!progress.is_settled(4));
        assert!(progress.is_settled(3));
        assert_eq!(progress.entries_count(), 0);
    }

    /// One operation of the model test.
    #[derive(Debug, Clone)]
    enum Operation {
        Settle(u64, u64),
        Pending(u64, bool),
        Seek(u64),
    }

    fn operation() -> impl Strategy<Value = Operation> {
        prop_oneof![
            8 => (0u64..64, 0u64..8).prop_map(|(start, len)| Operation::Settle(start, start + len)),
            3 => (0u64..72, any::<bool>()).prop_map(|(offset, set)| Operation::Pending(offset, set)),
            1 => (0u64..48).prop_map(Operation::Seek),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn partition_progress_matches_a_set_of_settled_offsets(
            floor in 0u64..16,
            operations in proptest::collection::vec(operation(), 0..60),
        ) {
            // Goal: PartitionProgress agrees with a naive model (a set of settled
            // offsets and a map of pending ones) after any sequence of settles,
            // pendings and seeks, and its invariants hold throughout.
            // Method: apply each operation to both, then compare every query over
            // a window of offsets past the largest one used; also roundtrip the
            // partition through a put.
            const WINDOW: u64 = 96;
            let mut progress = PartitionProgress::new(floor);
            let mut settled: BTreeSet<u64> = (0..floor).collect();
            let mut pendings: BTreeMap<u64, Pending> = BTreeMap::new();
            for (at, operation) in operations.iter().enumerate() {
                match *operation {
                    Operation::Settle(start, end) => {
                        progress.settle(start, end);
                        settled.extend(start..end);
                        pendings.retain(|offset, _| !(start..end).contains(offset));
                    }
                    Operation::Pending(offset, set) => {
                        let entry = set.then(|| pending(at as u32));
                        progress.set_pending(offset, entry);
                        if !settled.contains(&offset) {
                            match entry {
                                Some(entry) => { pendings.insert(offset, entry); }
                                None => { pendings.remove(&offset); }
                            }
                        }
                    }
                    Operation::Seek(floor) => {
                        progress.seek(floor);
                        settled = (0..floor).collect();
                        pendings.clear();
                    }
                }
                progress.check_invariants();
                // The floor is the first offset the model does not hold.
                let model_floor = (0..).find(|offset| !settled.contains(offset)).expect("a finite set");
                prop_assert_eq!(progress.floor(), model_floor, "after {:?}", operation);
                let above = settled.range(model_floor..).count() as u64;
                prop_assert_eq!(progress.settled_above_floor(), above);
                for offset in 0..WINDOW {
                    prop_assert_eq!(progress.is_settled(offset), settled.contains(&offset), "offset {}", offset);
                    let first = (offset..).find(|o| !settled.contains(o)).expect("a finite set");
                    prop_assert_eq!(progress.first_unsettled_from(offset), first, "from {}", offset);
                    prop_assert_eq!(progress.pending(offset), pendings.get(&offset));
                }
                prop_assert_eq!(progress.pendings().count(), pendings.len());
                // The ranges are exactly the model's runs above the floor.
                let mut runs: Vec<(u64, u64)> = Vec::new();
                for &offset in settled.range(model_floor..) {
                    match runs.last_mut() {
                        Some((_, end)) if *end == offset => *end += 1,
                        _ => runs.push((offset, offset + 1)),
                    }
                }
                prop_assert_eq!(progress.ranges().collect::<Vec<_>>(), runs);
                prop_assert_eq!(progress.entries_count(), progress.ranges_count() + pendings.len());
            }
            let mut state = GroupState::new(definition("model"));
            state.streams[1].push(progress.clone());
            let body = encoded(&GroupRecord::Put { state: Box::new(state.clone()) });
            prop_assert_eq!(GroupRecord::decode(&body, ()), Ok(GroupRecord::Put { state: Box::new(state) }));
        }
    }
}

//! Offline integrity check of a data directory (`stele verify`).
//!
//! [`verify_dir`] walks every topic and partition and checks each file kind of
//! FORMAT.md with the crate's own decoders: topic meta, journals (producers, cursors,
//! and the server's tokens, webhooks and consumer groups), segment headers and every record frame, segment indexes and
//! checkpoints. It reports every problem it finds with the file and, where it
//! has one, the byte position, and keeps going after each.
//!
//! Invariant: nothing is modified. Files are opened read-only and the directory's
//! `LOCK` is never taken; whether another process holds it is read from
//! `/proc/locks` (Linux), so a running server is neither disturbed nor blocked.
//!
//! What open would repair on its own (a torn tail of the active segment or of a
//! journal, a missing index, leftover temporary files) is reported as a note,
//! not a problem. Dedup runs are derived data that open drops and rebuilds when
//! damaged; they are counted but not decoded.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::event::{Offset, PartitionId};
use crate::format::cursor::CursorRecord;
use crate::format::envelope::ENVELOPE_HEADER_LEN;
use crate::format::group::GroupRecord;
use crate::format::index::{INDEX_ENTRY_LEN, SegmentIndex};
use crate::format::journal::{self, JOURNAL_HEADER_LEN, JournalRecord};
use crate::format::producer::ProducerRecord;
use crate::format::segment::SEGMENT_HEADER_LEN;
use crate::format::token::TokenRecord;
use crate::format::topic_change::TopicChangeRecord;
use crate::format::webhook::WebhookRecord;
use crate::format::{self, record};
use crate::io::{self, OpenMode, StdStorage, Storage};
use crate::limits;
use crate::paths::{
    self, CURSORS_FILE, DEDUP_DIR, PRODUCERS_FILE, TOPIC_CHANGES_FILE, TOPIC_META_FILE, TOPICS_DIR,
};

/// Byte position of the first entry in an `.idx` file.
const INDEX_ENTRIES_POSITION: u64 = ENVELOPE_HEADER_LEN as u64 + 36;

/// One finding: a file, a byte position in it when known, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the finding is about.
    pub path: PathBuf,
    /// The byte position in the file, when the finding has one.
    pub position: Option<u64>,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(position) => write!(f, "{}:{}: {}", self.path.display(), position, self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// What [`verify_dir`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Files read and checked.
    pub files_checked: u64,
    /// Record frames decoded and checked.
    pub records_checked: u64,
    /// Damage or inconsistencies that open would refuse or could not repair.
    pub problems: Vec<Problem>,
    /// Things open repairs by itself (torn tails, missing indexes, leftovers).
    pub notes: Vec<Problem>,
    /// Whether another process holds the directory's lock: `None` when unknown
    /// (no `/proc/locks`).
    pub locked: Option<bool>,
}

impl VerifyReport {
    /// No problems (notes do not count).
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the data directory `dir` without modifying it.
///
/// A directory without `topics/` but with a token, webhook or group journal is the
/// state directory of a server on another backend (`--backend nats://...`):
/// its journals are checked and a note says there are no topics.
///
/// # Errors
/// When `dir` is not a readable Stele data directory (it has no `topics/` and
/// no journal), or a directory listing fails. Unreadable or damaged files are
/// problems, not errors.
pub fn verify_dir(dir: &Path) -> std::io::Result<VerifyReport> {
    verify_dir_with_progress(dir, &mut |_| {})
}

/// [`verify_dir`], calling `progress` with the size in bytes of each file as it
/// is checked (for a progress display; the report is the same).
///
/// # Errors
/// As [`verify_dir`].
pub fn verify_dir_with_progress(dir: &Path, progress: &mut dyn FnMut(u64)) -> std::io::Result<VerifyReport> {
    let topics_dir = paths::topics_dir(dir);
    let state_only = !topics_dir.is_dir()
        && [
            paths::tokens_journal(dir),
            paths::webhooks_journal(dir),
            paths::groups_journal(dir),
        ]
        .iter()
        .any(|journal| journal.exists());
    if !topics_dir.is_dir() && !state_only {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{} is not a Stele data directory (no {TOPICS_DIR}/)",
                dir.display()
            ),
        ));
    }
    let mut verifier = Verifier {
        storage: StdStorage,
        progress,
        report: VerifyReport {
            locked: lock_held(&paths::lock_file(dir)),
            ..VerifyReport::default()
        },
    };
    if state_only {
        verifier.note(
            &topics_dir,
            None,
            "no topics: the state directory of a server whose events are on another backend",
        );
    }
    let names = if state_only {
        Vec::new()
    } else {
        verifier.storage.read_dir(&topics_dir)?
    };
    for name in names {
        let path = paths::topic_dir(&topics_dir, &name);
        if paths::is_unfinished_topic(&name) {
            verifier.note(
                &path,
                None,
                "unfinished topic creation or deletion (removed at open)",
            );
        } else if path.is_dir() {
            verifier.topic(&path, &name)?;
        } else {
            verifier.note(&path, None, "unexpected file");
        }
    }
    let tokens_path = paths::tokens_journal(dir);
    if tokens_path.exists() {
        verifier.journal::<TokenRecord>(&tokens_path, ());
    }
    let webhooks_path = paths::webhooks_journal(dir);
    if webhooks_path.exists() {
        verifier.journal::<WebhookRecord>(&webhooks_path, ());
    }
    let groups_path = paths::groups_journal(dir);
    if groups_path.exists() {
        verifier.journal::<GroupRecord>(&groups_path, ());
    }
    Ok(verifier.report)
}

/// Whether some process holds a lock on `path`, read from `/proc/locks` by the
/// file's device and inode, so the lock itself is never touched.
fn lock_held(path: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let dev = metadata.dev();
    // The glibc encoding of a device number.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let wanted = format!("{major:02x}:{minor:02x}:{}", metadata.ino());
    Some(
        locks
            .lines()
            .any(|line| line.split_whitespace().any(|field| field == wanted)),
    )
}

/// Where and why a frame failed.
type Failure = (u64, String);

/// What the scan of one segment found.
struct SegmentScan {
    /// One past the last offset of a whole append call.
    end_offset: Offset,
    /// The newest timestamp seen.
    timestamp_max: i64,
}

struct Verifier<'a> {
    storage: StdStorage,
    /// Called with each checked file's size.
    progress: &'a mut dyn FnMut(u64),
    report: VerifyReport,
}

impl Verifier<'_> {
    fn problem(&mut self, path: &Path, position: Option<u64>, message: impl Into<String>) {
        self.report.problems.push(Problem {
            path: path.to_path_buf(),
            position,
            message: message.into(),
        });
    }

    fn note(&mut self, path: &Path, position: Option<u64>, message: impl Into<String>) {
        self.report.notes.push(Problem {
            path: path.to_path_buf(),
            position,
            message: message.into(),
        });
    }

    /// Reads a whole file of at most `size_max` bytes; a failure is a problem.
    fn read(&mut self, path: &Path, size_max: u64) -> Option<Vec<u8>> {
        match io::read_file(&self.storage, path, size_max) {
            Ok(bytes) => {
                self.report.files_checked += 1;
                (self.progress)(bytes.len() as u64);
                Some(bytes)
            }
            Err(error) => {
                self.problem(path, None, format!("cannot read: {error}"));
                None
            }
        }
    }

    fn topic(&mut self, dir: &Path, name: &str) -> std::io::Result<()> {
        let meta_path = paths::topic_meta(dir);
        let mut partitions = None;
        if let Some(bytes) = self.read(&meta_path, 4096) {
            match format::topic_meta::decode(&bytes) {
                Ok((stored_name, options)) => {
                    if stored_name != name {
                        self.problem(
                            &meta_path,
                            None,
                            format!("meta names topic {stored_name:?}, but its directory is {name:?}"),
                        );
                    }
                    partitions = Some(options.partitions);
                }
                Err(reason) => self.problem(
                    &meta_path,
                    Some(0),
                    format!("topic meta does not decode: {reason}"),
                ),
            }
        }
        self.journal::<ProducerRecord>(&paths::producers_journal(dir), ());
        // A topic whose options never changed has no change journal.
        let changes = paths::topic_changes_journal(dir);
        if changes.exists() {
            self.journal::<TopicChangeRecord>(&changes, ());
        }
        let cursor_partitions = partitions.unwrap_or(limits::PARTITIONS_COUNT_MAX);
        self.journal::<CursorRecord>(&paths::cursors_journal(dir), cursor_partitions);
        let mut seen = Vec::new();
        for entry in self.storage.read_dir(dir)? {
            let path = dir.join(&entry);
            let index = paths::parse_partition_dir_name(&entry);
            match index {
                Some(index) if path.is_dir() => {
                    if partitions.is_some_and(|count| index >= count) {
                        self.problem(
                            &path,
                            None,
                            format!(
                                "partition directory beyond the topic's {} partitions",
                                partitions.unwrap_or_default()
                            ),
                        );
                    }
                    seen.push(index);
                    self.partition(&path, PartitionId(index))?;
                }
                _ if [TOPIC_META_FILE, PRODUCERS_FILE, CURSORS_FILE, TOPIC_CHANGES_FILE]
                    .contains(&entry.as_str()) => {}
                _ if paths::is_temporary(&entry) => {
                    self.note(&path, None, "leftover temporary file (removed at open)");
                }
                _ => self.note(&path, None, "unexpected entry"),
            }
        }
        for index in 0..partitions.unwrap_or(0) {
            if !seen.contains(&index) {
                self.problem(
                    &paths::partition_dir(dir, index),
                    None,
                    "partition directory is missing",
                );
            }
        }
        Ok(())
    }

    /// Checks a journal of `R` records: header, every frame, and the replay of
    /// every record body.
    fn journal<R: JournalRecord>(&mut self, path: &Path, context: R::Context) {
        let (magic, body_size_max) = (R::MAGIC, R::BODY_SIZE_MAX);
        let mut entries = BTreeMap::new();
        let mut index = R::Index::default();
        if !path.exists() {
            self.note(path, None, "journal is missing (created empty at open)");
            return;
        }
        let Some(bytes) = self.read(path, u64::MAX) else {
            return;
        };
        let header = &bytes[..bytes.len().min(JOURNAL_HEADER_LEN)];
        if let Err(reason) = journal::decode_header(header, magic) {
            self.problem(path, Some(0), format!("journal header does not decode: {reason}"));
            return;
        }
        let mut position = JOURNAL_HEADER_LEN;
        // Bounded: every iteration consumes at least one whole frame.
        while position < bytes.len() {
            match journal::decode_frame(&bytes[position..], body_size_max) {
                Ok((body, frame_len)) => {
                    if let Err(message) = journal::replay::<R>(&mut entries, &mut index, context, body) {
                        self.problem(
                            path,
                            Some(position as u64),
                            format!("bad journal record: {message}"),
                        );
                    }
                    position += frame_len;
                }
                Err(reason) => {
                    let later = (position + 1..bytes.len())
                        .find(|&start| journal::decode_frame(&bytes[start..], body_size_max).is_ok());
                    match later {
                        Some(start) => self.problem(
                            path,
                            Some(position as u64),
                            format!("bad journal frame: {reason} (a valid frame follows at {start})"),
                        ),
                        None => self.note(
                            path,
                            Some(position as u64),
                            format!(
                                "torn tail (would be cut at open): {} bytes, {reason}",
                                bytes.len() - position
                            ),
                        ),
                    }
                    return;
                }
            }
        }
    }

    fn partition(&mut self, dir: &Path, partition: PartitionId) -> std::io::Result<()> {
        let mut segments = BTreeMap::new();
        let mut indexes = Vec::new();
        let mut checkpoint = None;
        let checkpoint_path = paths::checkpoint(dir);
        for entry in self.storage.read_dir(dir)? {
            let path = dir.join(&entry);
            if let Some(base_offset) = paths::parse_segment_file_name(&entry) {
                segments.insert(base_offset, path);
            } else if let Some(base_offset) = paths::parse_index_file_name(&entry) {
                indexes.push((entry, base_offset));
            } else if path == checkpoint_path {
                if let Some(bytes) = self.read(&path, limits::CHECKPOINT_SIZE_BYTES_MAX) {
                    match format::checkpoint::decode(&bytes) {
                        Ok(decoded) => checkpoint = Some(decoded),
                        Err(reason) => {
                            self.problem(&path, Some(0), format!("checkpoint does not decode: {reason}"));
                        }
                    }
                }
            } else if entry == DEDUP_DIR && path.is_dir() {
                // Derived data; open drops and rebuilds damaged runs.
            } else if paths::is_temporary(&entry) {
                self.note(&path, None, "leftover temporary file (removed at open)");
            } else {
                self.note(&path, None, "unexpected entry");
            }
        }
        for (name, base_offset) in indexes {
            if !segments.contains_key(&base_offset) {
                self.note(&dir.join(name), None, "index without a segment");
            }
        }
        if let Some(checkpoint) = &checkpoint
            && checkpoint.partition != partition
        {
            self.problem(
                &checkpoint_path,
                None,
                format!("checkpoint is of partition {}", checkpoint.partition.0),
            );
        }
        let mut expected: Option<Offset> = None;
        let mut timestamp_max = i64::MIN;
        let mut sizes = BTreeMap::new();
        let last = segments.keys().next_back().copied();
        // The same rule as open: trailing segments without a valid index, not
        // below the checkpoint's sync floor, may have been cut short by a crash
        // right after a roll; they are tail, like the active segment.
        let floor_base = checkpoint
            .as_ref()
            .map_or(Offset(0), |checkpoint| checkpoint.floor_base_offset);
        let mut tail_from = last;
        for &base_offset in segments.keys().rev().skip(1) {
            if base_offset < floor_base || crate::segment::is_sealed_on_disk(&self.storage, dir, base_offset)
            {
                break;
            }
            tail_from = Some(base_offset);
        }
        let mut log_ended = false;
        for (&base_offset, path) in &segments {
            let in_tail = tail_from.is_some_and(|tail_from| base_offset >= tail_from);
            if log_ended {
                self.note(
                    path,
                    None,
                    "follows the end of the log: its records were never acknowledged (removed at open)",
                );
                continue;
            }
            if let Some(expected) = expected
                && base_offset != expected
                && in_tail
                && base_offset > expected
            {
                log_ended = true;
                self.note(
                    path,
                    None,
                    format!(
                        "follows the end of the log at offset {}: its records were never acknowledged (removed at open)",
                        expected.0
                    ),
                );
                continue;
            }
            if let Some(expected) = expected
                && base_offset != expected
            {
                self.problem(
                    path,
                    None,
                    format!(
                        "segment starts at offset {}, but the previous segment ends at {}",
                        base_offset.0, expected.0
                    ),
                );
            }
            let active = in_tail;
            // Bytes known to have been synced: a bad frame below them is damage.
            let durable_floor = match &checkpoint {
                Some(checkpoint) if checkpoint.floor_base_offset == base_offset => checkpoint.floor_position,
                Some(checkpoint) if checkpoint.floor_base_offset > base_offset => u64::MAX,
                _ => 0,
            };
            let Some((scan, size)) =
                self.segment(path, partition, base_offset, active, durable_floor, timestamp_max)
            else {
                expected = None;
                continue;
            };
            sizes.insert(base_offset, size);
            expected = Some(scan.end_offset);
            timestamp_max = timestamp_max.max(scan.timestamp_max);
        }
        match (&checkpoint, segments.keys().next()) {
            (None, Some(first)) if first.0 > 0 => self.problem(
                &checkpoint_path,
                None,
                format!(
                    "checkpoint is missing and segments below offset {} are deleted: open cannot rebuild it",
                    first.0
                ),
            ),
            (Some(checkpoint), _) => {
                if let Some(end) = expected
                    && checkpoint.next_offset > end
                {
                    self.problem(
                        &checkpoint_path,
                        None,
                        format!(
                            "checkpoint covers offsets below {}, past the end of the log at {}",
                            checkpoint.next_offset.0, end.0
                        ),
                    );
                }
                if let Some(&size) = sizes.get(&checkpoint.floor_base_offset)
                    && checkpoint.floor_position > size
                {
                    self.problem(
                        &checkpoint_path,
                        None,
                        format!(
                            "checkpoint's synced floor {} is past the end of segment {} ({size} bytes)",
                            checkpoint.floor_position, checkpoint.floor_base_offset.0
                        ),
                    );
                }
            }
            _ => {}
        }
        if segments.is_empty() {
            self.note(dir, None, "partition has no segment (one is created at open)");
        }
        Ok(())
    }

    /// Checks one segment file and, for a sealed one, its index. Returns what the
    /// scan found and the file's size, or `None` when the file cannot be read.
    fn segment(
        &mut self,
        path: &Path,
        partition: PartitionId,
        base_offset: Offset,
        active: bool,
        durable_floor: u64,
        timestamp_floor: i64,
    ) -> Option<(SegmentScan, u64)> {
        let opened = self
            .storage
            .open(path, OpenMode::Read)
            .and_then(|file| Ok((file.len()?, file)));
        let (size, file) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                self.problem(path, None, format!("cannot read: {error}"));
                return None;
            }
        };
        self.report.files_checked += 1;
        (self.progress)(size);
        if size < SEGMENT_HEADER_LEN as u64 {
            self.problem(
                path,
                Some(0),
                format!("segment is {size} bytes, shorter than its header"),
            );
            return None;
        }
        let map = match file.map(size) {
            Ok(map) => map,
            Err(error) => {
                self.problem(path, None, format!("cannot map: {error}"));
                return None;
            }
        };
        // The mapping never reaches past the file's end; a file that shrank
        // since it was measured is checked as far as it goes.
        if map.len() < size {
            self.problem(
                path,
                Some(map.len()),
                format!(
                    "file shrank from {size} to {} bytes while being checked",
                    map.len()
                ),
            );
            if map.len() < SEGMENT_HEADER_LEN as u64 {
                return None;
            }
        }
        let size = map.len();
        let bytes = map.slice(0, size);
        match format::segment::decode(&bytes[..SEGMENT_HEADER_LEN]) {
            Ok(header) => {
                if header.base_offset != base_offset {
                    self.problem(
                        path,
                        Some(16),
                        format!(
                            "header says base offset {}, the file name {}",
                            header.base_offset.0, base_offset.0
                        ),
                    );
                }
                if header.partition != partition {
                    self.problem(
                        path,
                        Some(12),
                        format!(
                            "header says partition {}, the directory {}",
                            header.partition.0, partition.0
                        ),
                    );
                }
            }
            Err(reason) => self.problem(path, Some(0), format!("segment header does not decode: {reason}")),
        }
        let index_path = paths::index_of_segment(path);
        let index = if active {
            if index_path.exists() {
                self.note(&index_path, None, "index of the active segment (ignored at open)");
            }
            None
        } else if index_path.exists() {
            self.read(&index_path, crate::segment::SEGMENT_MAP_SIZE_BYTES)
                .and_then(|bytes| {
                    match format::index::decode(&bytes, crate::segment::SEGMENT_MAP_SIZE_BYTES) {
                        Ok(index) => Some(index),
                        Err(reason) => {
                            self.problem(&index_path, Some(0), format!("index does not decode: {reason}"));
                            None
                        }
                    }
                })
        } else {
            self.note(
                &index_path,
                None,
                "index of a sealed segment is missing (rebuilt at open)",
            );
            None
        };

        // A sealed segment is served up to its indexed end, as open does.
        let scan_end = match &index {
            Some(index) if index.segment_size >= SEGMENT_HEADER_LEN as u64 && index.segment_size < size => {
                index.segment_size
            }
            _ => size,
        };
        let mut position = SEGMENT_HEADER_LEN as u64;
        let mut expected = base_offset;
        let mut timestamp_max = timestamp_floor;
        let mut records_count = 0u64;
        let mut call_end = (position, base_offset, timestamp_floor);
        let mut call_records = 0u64;
        let mut failure: Option<Failure> = None;
        let mut frames = Vec::new();
        // Bounded: every iteration consumes one whole frame of the file.
        while position < scan_end {
            let (view, frame_size) = match record::decode(&bytes[position as usize..scan_end as usize]) {
                Ok(decoded) => decoded,
                Err(reason) => {
                    failure = Some((position, reason.to_string()));
                    break;
                }
            };
            self.report.records_checked += 1;
            records_count += 1;
            if view.offset != expected {
                self.problem(
                    path,
                    Some(position),
                    format!("record has offset {}, expected {}", view.offset.0, expected.0),
                );
            }
            if view.timestamp_ms < timestamp_max {
                self.problem(
                    path,
                    Some(position),
                    format!(
                        "record {} has timestamp {}, before the previous record's {timestamp_max}",
                        view.offset.0, view.timestamp_ms
                    ),
                );
            }
            if index.is_some() {
                frames.push((position, view.offset, view.timestamp_ms));
            }
            timestamp_max = timestamp_max.max(view.timestamp_ms);
            expected = view.offset.next();
            position += frame_size;
            call_records += 1;
            if view.is_call_end() {
                call_end = (position, expected, timestamp_max);
                call_records = 0;
            }
        }
        let (call_end_position, end_offset, call_end_timestamp) = call_end;
        if active {
            let torn = size - call_end_position;
            match &failure {
                Some((failed_at, reason)) if *failed_at < durable_floor => self.problem(
                    path,
                    Some(*failed_at),
                    format!("bad frame below the synced floor {durable_floor} (open refuses it): {reason}"),
                ),
                _ if torn == 0 => {}
                Some((failed_at, _))
                    if call_records == 0 && bytes[*failed_at as usize..].iter().all(|byte| *byte == 0) =>
                {
                    // Preallocated space, not a cut.
                }
                _ => {
                    let reason = failure
                        .as_ref()
                        .map(|(failed_at, reason)| format!(", bad frame at {failed_at}: {reason}"))
                        .unwrap_or_default();
                    self.note(
                        path,
                        Some(call_end_position),
                        format!(
                            "torn tail (would be cut at open): {torn} bytes, {call_records} records of an unfinished append call{reason}"
                        ),
                    );
                }
            }
        } else {
            if let Some((failed_at, reason)) = &failure {
                self.problem(
                    path,
                    Some(*failed_at),
                    format!(
                        "bad frame: {reason} ({} bytes after it not checked)",
                        size - failed_at
                    ),
                );
            }
            if call_records > 0 {
                self.problem(
                    path,
                    Some(call_end_position),
                    format!("sealed segment ends inside an append call ({call_records} records after the last call end)"),
                );
            }
        }
        if scan_end < size {
            self.excess(path, &bytes[scan_end as usize..], scan_end, expected);
        }
        if let Some(index) = index
            && failure.is_none()
        {
            self.index(
                &index_path,
                &index,
                base_offset,
                scan_end,
                records_count,
                timestamp_max,
                &frames,
            );
        }
        Some((
            SegmentScan {
                end_offset: if active { end_offset } else { expected },
                timestamp_max: if active { call_end_timestamp } else { timestamp_max },
            },
            size,
        ))
    }

    /// Reports the bytes past a sealed segment's indexed end, which open does
    /// not serve: zeros are a note (a file system artefact), anything else a
    /// problem, louder when a valid frame continues the segment's offsets.
    fn excess(&mut self, path: &Path, bytes: &[u8], position: u64, end_offset: Offset) {
        let count = bytes.len();
        if bytes.iter().all(|byte| *byte == 0) {
            self.note(
                path,
                Some(position),
                format!("{count} zero bytes past the indexed end (not served)"),
            );
        } else if matches!(record::decode(bytes), Ok((view, _)) if view.offset == end_offset) {
            self.problem(
                path,
                Some(position),
                format!(
                    "{count} bytes past the indexed end start with a valid frame of offset {} (not served: written after the segment was sealed?)",
                    end_offset.0
                ),
            );
        } else {
            self.problem(
                path,
                Some(position),
                format!("{count} non-zero bytes past the indexed end (not served)"),
            );
        }
    }

    /// Checks a sealed segment's index against the frames its scan found.
    #[allow(clippy::too_many_arguments)]
    fn index(
        &mut self,
        path: &Path,
        index: &SegmentIndex,
        base_offset: Offset,
        size: u64,
        records_count: u64,
        timestamp_max: i64,
        frames: &[(u64, Offset, i64)],
    ) {
        let body = ENVELOPE_HEADER_LEN as u64;
        if index.base_offset != base_offset {
            self.problem(
                path,
                Some(body),
                format!(
                    "index says base offset {}, the segment {}",
                    index.base_offset.0, base_offset.0
                ),
            );
        }
        if index.segment_size != size {
            self.problem(
                path,
                Some(body + 8),
                format!(
                    "index says the segment is {} bytes, it is {size}",
                    index.segment_size
                ),
            );
        }
        if index.records_count != records_count {
            self.problem(
                path,
                Some(body + 16),
                format!(
                    "index says {} records, the segment has {records_count}",
                    index.records_count
                ),
            );
        }
        if records_count > 0 && index.timestamp_max != timestamp_max {
            self.problem(
                path,
                Some(body + 24),
                format!(
                    "index says timestamp_max {}, the segment's is {timestamp_max}",
                    index.timestamp_max
                ),
            );
        }
        for (number, entry) in index.entries.iter().enumerate() {
            let entry_position = INDEX_ENTRIES_POSITION + (number * INDEX_ENTRY_LEN) as u64;
            let found = frames.binary_search_by_key(&u64::from(entry.position), |frame| frame.0);
            match found {
                Ok(found) => {
                    let (_, offset, timestamp_ms) = frames[found];
                    let entry_offset = base_offset.0 + u64::from(entry.offset_delta);
                    if offset.0 != entry_offset || timestamp_ms != entry.timestamp_ms {
                        self.problem(
                            path,
                            Some(entry_position),
                            format!(
                                "index entry {number} says offset {entry_offset} at time {}, the frame at {} has offset {} at time {timestamp_ms}",
                                entry.timestamp_ms, entry.position, offset.0
                            ),
                        );
                    }
                }
                Err(_) => self.problem(
                    path,
                    Some(entry_position),
                    format!(
                        "index entry {number} points at position {}, where no frame starts",
                        entry.position
                    ),
                ),
            }
        }
    }
}

/// The reason of an engine error, without the path and position it repeats.
#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{LogOptions, TopicOptions};
    use crate::event::{Event, ExpectedSequence};
    use crate::log::Log;

    /// A closed data directory with one topic of one partition, holding sealed
    /// segments and an active one.
    fn populated(dir: &Path) -> crate::error::Result<()> {
        let log = Log::open(dir, LogOptions::default())?;
        let topic = log.create_topic(
            "orders",
            TopicOptions::default()
                .partitions(1)
                .segment_size_bytes_max(limits::SEGMENT_SIZE_BYTES_MIN),
        )?;
        let payload = vec![7u8; 200 * 1024];
        for call in 0..50u64 {
            let key = format!("key-{}", call % 5);
            let events = vec![
                Event::new("created", payload.clone()),
                Event::new("updated", b"small".to_vec()),
            ];
            topic.append(key.as_str(), ExpectedSequence::Any, events)?;
        }
        log.close()
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let partition = dir.join("topics/orders/p00000");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(partition)
            .expect("partition directory")
            .map(|entry| entry.expect("entry").path())
            .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
            .collect();
        paths.sort();
        paths
    }

    #[test]
    fn a_clean_directory_has_no_problems() -> crate::error::Result<()> {
        // Goal: a directory written and closed by the engine verifies clean, and
        // every record is checked.
        let dir = tempfile::tempdir().expect("temporary directory");
        populated(dir.path())?;
        let report = verify_dir(dir.path()).expect("verify");
        assert_eq!(report.problems, Vec::new());
        assert_eq!(report.records_checked, 100);
        assert!(segments(dir.path()).len() >= 2, "the test needs a sealed segment");
        assert_eq!(report.locked, Some(false));
        Ok(())
    }

    #[test]
    fn progress_counts_every_segment_byte_and_leaves_the_report_unchanged() -> crate::error::Result<()> {
        // Goal: the progress hook sees each checked file once (so every segment's
        // bytes) and the report is the one `verify_dir` gives. Method: sum the
        // calls and compare with the segment files' sizes on disk.
        let dir = tempfile::tempdir().expect("temporary directory");
        populated(dir.path())?;
        let mut calls = 0u64;
        let mut bytes = 0u64;
        let report = verify_dir_with_progress(dir.path(), &mut |size| {
            calls += 1;
            bytes += size;
        })
        .expect("verify");
        assert_eq!(report, verify_dir(dir.path()).expect("verify"));
        assert_eq!(calls, report.files_checked);
        let segment_bytes: u64 = segments(dir.path())
            .iter()
            .map(|path| std::fs::metadata(path).expect("segment metadata").len())
            .sum();
        assert!(segment_bytes > 0, "the test needs segment bytes");
        assert!(
            bytes >= segment_bytes,
            "progress saw {bytes} bytes, the segments hold {segment_bytes}"
        );
        Ok(())
    }

    #[test]
    fn a_flipped_bit_in_a_sealed_segment_is_reported_with_file_and_position() -> crate::error::Result<()> {
        // Goal: damage inside a sealed segment is a problem naming that file and
        // the byte position of the damaged frame. Method: flip a payload bit of
        // the second frame of the first segment.
        let dir = tempfile::tempdir().expect("temporary directory");
        populated(dir.path())?;
        let sealed = segments(dir.path())[0].clone();
        let mut bytes = std::fs::read(&sealed).expect("read segment");
        let (_, first_size) = record::decode(&bytes[SEGMENT_HEADER_LEN..]).expect("first frame");
        let second = SEGMENT_HEADER_LEN as u64 + first_size;
        bytes[second as usize + 40] ^= 0x10;
        std::fs::write(&sealed, &bytes).expect("write segment");
        let report = verify_dir(dir.path()).expect("verify");
        assert!(
            report
                .problems
                .iter()
                .any(|problem| problem.path == sealed && problem.position == Some(second)),
            "problems: {:?}",
            report.problems
        );
        Ok(())
    }

    #[test]
    fn a_truncated_active_segment_is_a_torn_tail_note() -> crate::error::Result<()> {
        // Goal: a cut in the active segment's last frame is what a crash leaves;
        // it is a note at the last call end, not a problem. Method: remove the
        // checkpoint written at close (a crash before any checkpoint, so no byte
        // is known synced), then cut the last frame short.
        let dir = tempfile::tempdir().expect("temporary directory");
        populated(dir.path())?;
        std::fs::remove_file(dir.path().join("topics/orders/p00000/checkpoint")).expect("remove checkpoint");
        let active = segments(dir.path()).last().cloned().expect("active segment");
        let size = std::fs::metadata(&active).expect("stat").len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&active)
            .expect("open segment");
        file.set_len(size - 3).expect("truncate");
        let report = verify_dir(dir.path()).expect("verify");
        assert_eq!(report.problems, Vec::new());
        let torn: Vec<&Problem> = report
            .notes
            .iter()
            .filter(|note| {
                note.path == active && note.message.starts_with("torn tail (would be cut at open)")
            })
            .collect();
        assert_eq!(torn.len(), 1, "notes: {:?}", report.notes);
        assert!(torn[0].position.is_some_and(|position| position < size - 3));
        Ok(())
    }

    #[test]
    fn bytes_past_a_sealed_segments_indexed_end_are_reported_zeros_as_a_note_the_rest_as_problems() {
        // Goal: verify reports what open leaves unserved past a sealed segment's
        // indexed end: zeros as a note, a copy of a valid frame or garbage as a
        // problem at the indexed end. Method: extend the first sealed segment
        // with zeros, then with its own first frame re-stamped with the next
        // offset, then with garbage, and verify each time.
        let dir = tempfile::tempdir().expect("temporary directory");
        populated(dir.path()).expect("populate");
        let sealed = segments(dir.path())[0].clone();
        let original = std::fs::read(&sealed).expect("read segment");
        let end = original.len() as u64;
        let frames_count = {
            let mut position = SEGMENT_HEADER_LEN;
            let mut count = 0u64;
            while position < original.len() {
                let (_, size) = record::decode(&original[position..]).expect("frame");
                position += size as usize;
                count += 1;
            }
            count
        };
        let (_, first_size) = record::decode(&original[SEGMENT_HEADER_LEN..]).expect("first frame");
        let mut next_frame = original[SEGMENT_HEADER_LEN..SEGMENT_HEADER_LEN + first_size as usize].to_vec();
        next_frame[8..16].copy_from_slice(&frames_count.to_le_bytes());
        let crc = crc32c::crc32c(&next_frame[8..]);
        next_frame[4..8].copy_from_slice(&crc.to_le_bytes());
        let cases: [(&str, Vec<u8>, bool); 3] = [
            ("zeros", vec![0u8; 5000], false),
            ("a valid frame", next_frame, true),
            ("garbage", vec![0xA5u8; 300], true),
        ];
        for (name, extra, is_problem) in cases {
            let mut bytes = original.clone();
            bytes.extend_from_slice(&extra);
            std::fs::write(&sealed, &bytes).expect("write segment");
            let report = verify_dir(dir.path()).expect("verify");
            let at_end = |found: &Problem| found.path == sealed && found.position == Some(end);
            let (wanted, other) = if is_problem {
                (&report.problems, &report.notes)
            } else {
                (&report.notes, &report.problems)
            };
            assert!(wanted.iter().any(at_end), "{name}: {report:?}");
            assert!(!other.iter().any(at_end), "{name}: {report:?}");
            if is_problem {
                assert_eq!(report.problems.len(), 1, "{name}: {:?}", report.problems);
            } else {
                assert_eq!(report.problems, Vec::new(), "{name}");
            }
        }
    }

    #[test]
    fn a_directory_without_topics_is_an_error() {
        let dir = tempfile::tempdir().expect("temporary directory");
        assert!(verify_dir(dir.path()).is_err());
    }

    #[test]
    fn a_state_directory_with_only_a_group_journal_is_checked() {
        // Goal: a group journal alone makes a state directory, like a token or
        // webhook journal; its records are replayed, and damage is a problem at
        // the bad frame. Method: write two groups, verify, then flip a byte of the
        // first record's body (a valid frame follows it) and verify again.
        use crate::group::{GroupDefinition, GroupSettings, GroupState, GroupStore};
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = GroupStore::open(std::sync::Arc::new(StdStorage), dir.path()).expect("a group journal");
        for name in ["a", "b"] {
            let definition = GroupDefinition {
                name: name.to_string(),
                topic: "orders".to_string(),
                settings: GroupSettings::defaults_for("orders"),
                created_ms: 0,
                redrive_until: Vec::new(),
            };
            store.create(GroupState::new(definition)).expect("create");
        }
        drop(store);
        let report = verify_dir(dir.path()).expect("verify a state directory");
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.files_checked, 1);
        assert!(report.notes.iter().any(|note| note.message.contains("no topics")));
        let path = paths::groups_journal(dir.path());
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[JOURNAL_HEADER_LEN + 12] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        let report = verify_dir(dir.path()).expect("verify a state directory");
        assert!(
            report
                .problems
                .iter()
                .any(|problem| problem.path == path && problem.position == Some(JOURNAL_HEADER_LEN as u64)),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn a_state_directory_without_topics_is_checked_with_a_note() {
        // Goal: a server on the NATS backend keeps only its journals locally;
        // verify checks them and says there are no topics, instead of refusing.
        let dir = tempfile::tempdir().expect("temporary directory");
        crate::token::TokenStore::open(std::sync::Arc::new(StdStorage), dir.path()).expect("a token journal");
        let report = verify_dir(dir.path()).expect("verify a state directory");
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert!(
            report.notes.iter().any(|note| note.message.contains("no topics")),
            "{:?}",
            report.notes
        );
    }
}

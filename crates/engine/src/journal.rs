//! Journal-backed maps: a map kept in memory and replayed at open from an
//! append-only journal of CRC-32C framed records (FORMAT.md, "Journals"), with
//! group commit and compaction. The cursor store, the producer registry, the
//! webhook endpoint store, the token store and the consumer group store are thin
//! wrappers over [`JournalMap`]; any other state that is a map changed one key at
//! a time can be stored the same way, with a record kind of its own (a
//! [`JournalRecord`] in `format/`).
//!
//! Two layers. [`JournalMap`] owns the map and its rules: every change is one
//! record, applied with the same pure rules as replay (`format::journal::apply`),
//! so the map always equals the replay of the durable journal. `Journal`
//! (crate-internal) owns the file and knows nothing about what its record bodies
//! mean: `open` hands every valid body to a replay callback, `prepare`, `perform`
//! and `finish` append frames, and `rewrite` replaces the whole file with a
//! compacted set of frames (temporary file, fdatasync, rename, directory fsync).
//!
//! Invariant: every byte below `end` is a header followed by whole, valid frames,
//! and all of it is durable unless `broken` is set.
//! Invariant: while `broken` is set (a failed fsync, or a failure after the rename
//! of a rewrite), nothing is appended to the current file: the next write first
//! rewrites the file from the durable in-memory state, which is never trusted
//! less than the file.
//! Invariant: a map's readers see only the durable view; a change that fails
//! changes neither the file nor the map, and fails every change made after it
//! (they were checked against it).
//!
//! Recovery: only the tail may be torn. Open scans forward and stops at the first
//! frame that fails its length or CRC check; when no valid frame starts anywhere
//! after it, the tail is cut there and synced, otherwise the file is corrupt.
//!
//! It does not lock across processes (the data directory's `LOCK` does) and does
//! not validate a caller's arguments beyond the replay rules; its callers do.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

use crate::error::{Error, Result};
use crate::format::DecodeError;
pub use crate::format::journal::JournalRecord;
use crate::format::journal::{
    self as codec, FRAME_HEADER_LEN, JOURNAL_HEADER_LEN, ReplayError, decode_frame, decode_header,
    encode_frame, encode_header, snapshot_frame_len,
};
use crate::io::{OpenMode, Storage, StorageFile};
use crate::paths;

/// Journals up to this size are never compacted, whatever their live share.
pub const COMPACT_SIZE_BYTES_MIN: u64 = 1 << 20;
/// How much of the file open reads at once.
const READ_CHUNK_SIZE: usize = 1 << 20;

/// Checks a user-chosen name (of a cursor, of a producer): 1 to `size_max` bytes of
/// UTF-8 without control characters.
///
/// Every backend checks names with it, so that a bad name gets the same
/// error everywhere.
///
/// # Errors
/// [`Error::InvalidArgument`] otherwise; [`Error::LimitExceeded`] above `size_max`.
pub fn check_name(name: &str, size_max: usize, what: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} name is empty")));
    }
    if name.len() > size_max {
        return Err(Error::LimitExceeded {
            what: match what {
                "cursor" => "cursor name size",
                "producer" => "producer name size",
                _ => "name size",
            },
            value: name.len() as u64,
            max: size_max as u64,
        });
    }
    if name.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "{what} name {name:?} contains a control character"
        )));
    }
    Ok(())
}

/// Checks a name of the ASCII alphabet (webhook and consumer group names): 1 to
/// `size_max` ASCII letters, digits, `.`, `_` and `-`. `what` names the kind in
/// messages; `size_what` is the limit's name in [`Error::LimitExceeded`].
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty name or another character;
/// [`Error::LimitExceeded`] above `size_max`.
pub fn check_ascii_name(name: &str, size_max: usize, what: &str, size_what: &'static str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} name is empty")));
    }
    if name.len() > size_max {
        return Err(Error::LimitExceeded {
            what: size_what,
            value: name.len() as u64,
            max: size_max as u64,
        });
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii() && codec::is_ascii_name_byte(*c as u8)))
    {
        return Err(Error::InvalidArgument(format!(
            "{what} name {name:?} contains {bad:?}; use letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Why a write to the journal failed.
#[derive(Debug)]
pub(crate) enum WriteFailure {
    /// The write failed; the page cache may hold part of it.
    Write(std::io::Error),
    /// The fdatasync failed; the file's tail can no longer be trusted.
    Sync(std::io::Error),
}

/// An append started by [`Journal::prepare`], performed without the caller's lock.
#[derive(Debug)]
pub(crate) struct PendingWrite {
    file: Arc<dyn StorageFile>,
    position: u64,
}

impl PendingWrite {
    /// Writes `frames` at the journal's end and makes them durable.
    pub(crate) fn perform(&self, frames: &[u8]) -> std::result::Result<(), WriteFailure> {
        self.file
            .write_at(frames, self.position)
            .map_err(WriteFailure::Write)?;
        self.file.sync_data().map_err(WriteFailure::Sync)
    }
}

/// An open journal file.
#[derive(Debug)]
pub(crate) struct Journal {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    magic: &'static [u8; 8],
    file: Arc<dyn StorageFile>,
    /// The end of the valid, durable bytes; appends land here.
    end: u64,
    /// The file's tail cannot be trusted: rewrite before the next append.
    broken: bool,
    /// Bytes of a torn tail cut at open.
    torn_bytes_count: u64,
}

impl Journal {
    /// Opens the journal at `path`, or creates an empty one, and passes every record
    /// body with its frame's position to `replay`, in order.
    ///
    /// # Errors
    /// [`Error::Corruption`] for a bad header or a bad frame that is not the tail;
    /// whatever `replay` returns; I/O errors.
    pub(crate) fn open(
        storage: Arc<dyn Storage>,
        path: PathBuf,
        magic: &'static [u8; 8],
        body_size_max: u32,
        replay: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<Journal> {
        let temporary = paths::journal_temporary(&path);
        if storage.exists(&temporary) {
            storage
                .remove_file(&temporary)
                .map_err(|error| Error::io("remove stale journal rewrite", &temporary, error))?;
        }
        if !storage.exists(&path) {
            let file = install(storage.as_ref(), &path, magic, &[]).map_err(|(error, _)| error)?;
            return Ok(Journal {
                storage,
                path,
                magic,
                file,
                end: JOURNAL_HEADER_LEN as u64,
                broken: false,
                torn_bytes_count: 0,
            });
        }
        let file = storage
            .open(&path, OpenMode::ReadWrite)
            .map_err(|error| Error::io("open journal", &path, error))?;
        let file_len = file
            .len()
            .map_err(|error| Error::io("stat journal", &path, error))?;
        let mut reader = ChunkReader::new(file.as_ref(), file_len);
        let read_error = |error| Error::io("read journal", &path, error);
        let header_len = file_len.min(JOURNAL_HEADER_LEN as u64) as usize;
        let header = reader.read(0, header_len).map_err(read_error)?;
        decode_header(header, magic).map_err(|reason| Error::corruption(&path, 0, reason))?;
        let mut position = JOURNAL_HEADER_LEN as u64;
        // Bounded: every iteration consumes at least one whole frame of the file.
        while position < file_len {
            match reader.frame(position, body_size_max).map_err(read_error)? {
                Ok((body, frame_len)) => {
                    replay(position, body)?;
                    position += frame_len as u64;
                }
                Err(reason) => {
                    if reader
                        .valid_frame_after(position, body_size_max)
                        .map_err(read_error)?
                    {
                        return Err(Error::corruption(&path, position, reason));
                    }
                    break;
                }
            }
        }
        let torn_bytes_count = file_len - position;
        if torn_bytes_count > 0 {
            file.set_len(position)
                .map_err(|error| Error::io("cut torn journal tail", &path, error))?;
            file.sync_data()
                .map_err(|error| Error::io("sync journal", &path, error))?;
        }
        Ok(Journal {
            storage,
            path,
            magic,
            file,
            end: position,
            broken: false,
            torn_bytes_count,
        })
    }

    /// Bytes of a torn tail cut at open.
    pub(crate) fn torn_bytes_count(&self) -> u64 {
        self.torn_bytes_count
    }

    /// Whether the file is worth compacting: past `size_min` and more than twice the
    /// `live_size` bytes of frames a rewrite would hold.
    pub(crate) fn should_compact(&self, live_size: u64, size_min: u64) -> bool {
        self.end > size_min && self.end > 2 * (JOURNAL_HEADER_LEN as u64 + live_size)
    }

    /// Starts an append at the end. A broken file is first rewritten from
    /// `snapshot`, the frames of the durable in-memory state.
    ///
    /// # Errors
    /// The rewrite's error; nothing is appended then.
    pub(crate) fn prepare(&mut self, snapshot: &dyn Fn() -> Vec<u8>) -> Result<PendingWrite> {
        if self.broken {
            self.rewrite(&snapshot())?;
        }
        Ok(PendingWrite {
            file: Arc::clone(&self.file),
            position: self.end,
        })
    }

    /// Ends an append of `len` bytes. On failure, cuts the partial bytes and, when
    /// the tail cannot be trusted, rewrites the file from `snapshot` (best effort:
    /// if that fails too, the next `prepare` tries again).
    ///
    /// # Errors
    /// The write's own failure, which the caller reports to its writers.
    pub(crate) fn finish(
        &mut self,
        write: PendingWrite,
        len: u64,
        outcome: std::result::Result<(), WriteFailure>,
        snapshot: &dyn Fn() -> Vec<u8>,
    ) -> Result<()> {
        assert_eq!(write.position, self.end, "the journal moved during an append");
        let (op, source) = match outcome {
            Ok(()) => {
                self.end += len;
                return Ok(());
            }
            Err(WriteFailure::Write(source)) => ("write journal", source),
            Err(WriteFailure::Sync(source)) => {
                // Never retry an fsync: the page cache may call the failed pages clean.
                self.broken = true;
                ("sync journal", source)
            }
        };
        if write.file.set_len(write.position).is_err() {
            self.broken = true;
        }
        if self.broken {
            // A failure here leaves `broken` set, so the next append retries it.
            let _ = self.rewrite(&snapshot());
        }
        Err(Error::io(op, &self.path, source))
    }

    /// Replaces the file with one holding the header and `frames`.
    ///
    /// # Errors
    /// I/O errors. A failure before the rename leaves the old file in use; a failure
    /// after it marks the journal broken.
    pub(crate) fn rewrite(&mut self, frames: &[u8]) -> Result<()> {
        match install(self.storage.as_ref(), &self.path, self.magic, frames) {
            Ok(file) => {
                self.file = file;
                self.end = (JOURNAL_HEADER_LEN + frames.len()) as u64;
                self.broken = false;
                Ok(())
            }
            Err((error, renamed)) => {
                if renamed {
                    self.broken = true;
                }
                Err(error)
            }
        }
    }
}

/// Writes a fresh journal file (header and `frames`) at `path` atomically and opens
/// it. The error says whether the rename already happened.
fn install(
    storage: &dyn Storage,
    path: &Path,
    magic: &[u8; 8],
    frames: &[u8],
) -> std::result::Result<Arc<dyn StorageFile>, (Error, bool)> {
    let temporary = paths::journal_temporary(path);
    let written = (|| {
        let file = storage.open(&temporary, OpenMode::CreateTruncate)?;
        file.write_at(&encode_header(magic), 0)?;
        file.write_at(frames, JOURNAL_HEADER_LEN as u64)?;
        file.sync_data()
    })();
    if let Err(error) = written {
        let _ = storage.remove_file(&temporary);
        return Err((Error::io("write journal rewrite", &temporary, error), false));
    }
    if let Err(error) = storage.rename(&temporary, path) {
        let _ = storage.remove_file(&temporary);
        return Err((Error::io("rename journal rewrite", path, error), false));
    }
    let file = storage
        .open(path, OpenMode::ReadWrite)
        .map_err(|error| (Error::io("open journal", path, error), true))?;
    let directory = directory_of(path);
    storage
        .sync_dir(directory)
        .map_err(|error| (Error::io("sync journal directory", directory, error), true))?;
    Ok(file)
}

/// The error of a record that replay refuses, at its frame's position.
fn replay_error(path: &Path, position: u64, reason: ReplayError) -> Error {
    match reason {
        ReplayError::Invalid(reason) => Error::corruption(path, position, reason),
        ReplayError::Inconsistent(reason) => Error::Inconsistent {
            path: path.to_path_buf(),
            reason: format!("record at position {position}: {reason}"),
        },
    }
}

/// A map from `R::Key` to `R::Value` kept durably in a journal of `R` records.
///
/// Reads ([`JournalMap::get`], [`JournalMap::list`], [`JournalMap::read`]) see the
/// durable view: changes whose records are synced. [`JournalMap::write`] returns
/// once its record is durable; writers that arrive while a write is in flight
/// join the next batch, and one of them (the leader) writes and syncs that whole
/// batch for everyone: a group commit.
///
/// When the journal grows past a minimum size (1 MiB by default) and more than
/// twice what a compacted file would hold, it is rewritten with one record per
/// entry after the next successful write.
///
/// ```
/// use std::sync::Arc;
/// use stele_engine::format::cursor::CursorRecord;
/// use stele_engine::io::{StdStorage, Storage};
/// use stele_engine::journal::JournalMap;
/// use stele_engine::{Offset, PartitionId};
///
/// # fn main() -> stele_engine::Result<()> {
/// let dir = tempfile::tempdir().expect("temporary directory");
/// let storage: Arc<dyn Storage> = Arc::new(StdStorage);
/// let path = dir.path().join("cursors");
/// let cursors = JournalMap::<CursorRecord>::open(Arc::clone(&storage), path.clone(), 2)?;
/// cursors.write(|_written| {
///     let record = CursorRecord::Set { name: "billing".to_string(), entries: vec![(PartitionId(1), Offset(7))] };
///     Ok((record, ()))
/// })?;
/// drop(cursors);
/// let reopened = JournalMap::<CursorRecord>::open(storage, path, 2)?;
/// assert_eq!(reopened.get("billing"), Some(vec![None, Some(Offset(7))]));
/// # Ok(())
/// # }
/// ```
pub struct JournalMap<R: JournalRecord> {
    context: R::Context,
    compact_size_bytes_min: u64,
    state: Mutex<MapState<R>>,
    /// Signalled whenever a batch is resolved or leadership is released.
    resolved: Condvar,
}

impl<R: JournalRecord> std::fmt::Debug for JournalMap<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("JournalMap")
            .field("path", &state.journal.path)
            .field("entries_count", &state.entries.len())
            .field("context", &self.context)
            .finish()
    }
}

struct MapState<R: JournalRecord> {
    journal: Journal,
    /// The written view: the durable entries plus the changes of the batch in
    /// flight and of the next batch, in that order. Each pending change keeps the
    /// value it replaced, so the durable view is the written one with them undone.
    entries: BTreeMap<R::Key, R::Value>,
    /// The record kind's index of the written view.
    index: R::Index,
    /// Bytes of frames a compaction of the written view would write.
    live_size: u64,
    /// The changes of the batch the leader is writing, oldest first.
    in_flight: Vec<Undo<R>>,
    /// The batch that writers are joining.
    next: Batch<R>,
    /// Whether some writer is writing a batch now.
    leading: bool,
}

/// A pending change: the key and the value it replaced.
struct Undo<R: JournalRecord> {
    key: R::Key,
    previous: Option<R::Value>,
}

type Outcome = Arc<OnceLock<Result<()>>>;

struct Batch<R: JournalRecord> {
    frames: Vec<u8>,
    undo: Vec<Undo<R>>,
    outcome: Outcome,
}

impl<R: JournalRecord> Default for Batch<R> {
    fn default() -> Batch<R> {
        Batch {
            frames: Vec::new(),
            undo: Vec::new(),
            outcome: Outcome::default(),
        }
    }
}

impl<R: JournalRecord> JournalMap<R> {
    /// Opens the map at `path`, or creates an empty one, replaying every record.
    ///
    /// # Errors
    /// [`Error::Corruption`] for a bad header, a bad frame before the tail (a torn
    /// tail is cut, see [`JournalMap::torn_bytes_count`]) or a record that replay
    /// refuses; [`Error::Inconsistent`] for a record that disagrees with
    /// `context`; I/O errors.
    pub fn open(storage: Arc<dyn Storage>, path: PathBuf, context: R::Context) -> Result<JournalMap<R>> {
        JournalMap::open_with(storage, path, context, COMPACT_SIZE_BYTES_MIN)
    }

    /// As [`JournalMap::open`], compacting once the file is past
    /// `compact_size_bytes_min` (and more than twice its live size).
    ///
    /// # Errors
    /// As [`JournalMap::open`].
    pub fn open_with(
        storage: Arc<dyn Storage>,
        path: PathBuf,
        context: R::Context,
        compact_size_bytes_min: u64,
    ) -> Result<JournalMap<R>> {
        let mut entries = BTreeMap::new();
        let mut index = R::Index::default();
        let replay_path = path.clone();
        let journal = Journal::open(
            storage,
            path,
            R::MAGIC,
            R::BODY_SIZE_MAX,
            &mut |position, body| {
                codec::replay::<R>(&mut entries, &mut index, context, body)
                    .map(|_| ())
                    .map_err(|reason| replay_error(&replay_path, position, reason))
            },
        )?;
        let live_size = entries
            .iter()
            .map(|(key, value)| snapshot_frame_len::<R>(key, value))
            .sum();
        Ok(JournalMap {
            context,
            compact_size_bytes_min,
            state: Mutex::new(MapState {
                journal,
                entries,
                index,
                live_size,
                in_flight: Vec::new(),
                next: Batch::default(),
                leading: false,
            }),
            resolved: Condvar::new(),
        })
    }

    /// What the map was opened with.
    pub fn context(&self) -> R::Context {
        self.context
    }

    /// The journal file.
    pub fn path(&self) -> PathBuf {
        self.lock().journal.path.clone()
    }

    /// Bytes of a torn journal tail that open cut.
    pub fn torn_bytes_count(&self) -> u64 {
        self.lock().journal.torn_bytes_count()
    }

    /// The durable value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<R::Value>
    where
        R::Key: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let state = self.lock();
        // The oldest pending change of a key holds its durable value.
        let pending = state
            .in_flight
            .iter()
            .chain(&state.next.undo)
            .find(|undo| undo.key.borrow() == key);
        match pending {
            Some(undo) => undo.previous.clone(),
            None => state.entries.get(key).cloned(),
        }
    }

    /// Whether `key` has a durable value.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        R::Key: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        // As `get`, without cloning a value that may be large.
        let state = self.lock();
        let pending = state
            .in_flight
            .iter()
            .chain(&state.next.undo)
            .find(|undo| undo.key.borrow() == key);
        match pending {
            Some(undo) => undo.previous.is_some(),
            None => state.entries.contains_key(key),
        }
    }

    /// Every durable entry, in key order.
    pub fn list(&self) -> Vec<(R::Key, R::Value)> {
        self.read(|entries| {
            entries
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        })
    }

    /// Calls `f` with the durable view, under the map's lock: `f` must not call
    /// back into the map.
    pub fn read<T>(&self, f: impl FnOnce(&BTreeMap<R::Key, R::Value>) -> T) -> T {
        let state = self.lock();
        if state.in_flight.is_empty() && state.next.undo.is_empty() {
            f(&state.entries)
        } else {
            f(&durable_view(&state.entries, &state.in_flight, &state.next.undo))
        }
    }

    /// Writes the durable view as a fresh compacted journal at `path` (a file
    /// that must not exist yet), through `storage`: header and one record per
    /// entry, written to a temporary file, fdatasynced, renamed into place and
    /// the directory fsynced. Returns the bytes of the new file. The map's own
    /// journal is not touched; this is how a backup takes a journal that is
    /// being appended to (FORMAT.md, "Backup").
    ///
    /// # Errors
    /// I/O errors; nothing is left at `path` then.
    pub fn write_snapshot(&self, storage: &dyn Storage, path: &Path) -> Result<Vec<u8>> {
        let frames = self.read(codec::encode_snapshot::<R>);
        install(storage, path, R::MAGIC, &frames).map_err(|(error, _)| error)?;
        let mut bytes = encode_header(R::MAGIC);
        bytes.extend_from_slice(&frames);
        Ok(bytes)
    }

    /// Makes one change durably: `make` sees the written view (the durable view
    /// plus the changes still being written, which this change follows) and returns
    /// the record of the change and what to return once it is durable. `make` runs
    /// under the map's lock, so it must not call back into the map.
    ///
    /// # Errors
    /// Whatever `make` returns, with nothing written; [`Error::InvalidArgument`]
    /// for a record that replay would refuse or that exceeds the kind's record
    /// size (a caller's bug: nothing is written); I/O errors, after which neither
    /// the file nor the map holds the change, nor any change made after it.
    pub fn write<T>(&self, make: impl FnOnce(&BTreeMap<R::Key, R::Value>) -> Result<(R, T)>) -> Result<T> {
        let mut state = self.lock();
        let (record, value) = make(&state.entries)?;
        let mut body = Vec::new();
        record.encode(&mut body);
        if body.len() > R::BODY_SIZE_MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "journal record of {} bytes exceeds the kind's maximum of {}",
                body.len(),
                R::BODY_SIZE_MAX
            )));
        }
        let (key, previous) = {
            let MapState { entries, index, .. } = &mut *state;
            codec::apply(entries, index, self.context, &record).map_err(|reason| {
                Error::InvalidArgument(format!("journal record refused by its replay rules: {reason}"))
            })?
        };
        if let Some(previous) = &previous {
            state.live_size -= snapshot_frame_len::<R>(&key, previous);
        }
        if let Some(current) = state.entries.get(&key) {
            state.live_size += snapshot_frame_len::<R>(&key, current);
        }
        state.next.undo.push(Undo { key, previous });
        encode_frame(&mut state.next.frames, &body);
        let outcome = Arc::clone(&state.next.outcome);
        // Bounded: each pass either leads a batch, which resolves the batch holding
        // this change or an earlier one, or waits for a leader to do so.
        loop {
            if let Some(result) = outcome.get() {
                return match result {
                    Ok(()) => Ok(value),
                    Err(error) => Err(error.duplicate()),
                };
            }
            if state.leading {
                state = self.resolved.wait(state).unwrap_or_else(PoisonError::into_inner);
            } else {
                state = self.lead(state);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, MapState<R>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes and syncs the next batch for everyone in it, then resolves it.
    fn lead<'a>(&'a self, mut state: MutexGuard<'a, MapState<R>>) -> MutexGuard<'a, MapState<R>> {
        assert!(!state.leading, "two leaders");
        let batch = std::mem::take(&mut state.next);
        assert!(!batch.undo.is_empty(), "a leader leads a batch with a change");
        state.in_flight = batch.undo;
        state.leading = true;
        let prepared = {
            let MapState {
                journal,
                entries,
                in_flight,
                next,
                ..
            } = &mut *state;
            journal.prepare(&|| codec::encode_snapshot::<R>(&durable_view(entries, in_flight, &next.undo)))
        };
        let result = match prepared {
            Err(error) => {
                let orphan = state.undo_pending();
                let _ = orphan.set(Err(error.duplicate()));
                Err(error)
            }
            Ok(write) => {
                drop(state);
                let outcome = write.perform(&batch.frames);
                state = self.lock();
                let orphan = outcome.is_err().then(|| state.undo_pending());
                let MapState { journal, entries, .. } = &mut *state;
                // After a failure nothing is pending any more, so `entries` is durable.
                let result = journal.finish(write, batch.frames.len() as u64, outcome, &|| {
                    codec::encode_snapshot::<R>(entries)
                });
                if let (Some(orphan), Err(error)) = (orphan, &result) {
                    let _ = orphan.set(Err(error.duplicate()));
                }
                result
            }
        };
        if result.is_ok() {
            state.in_flight.clear();
            if state
                .journal
                .should_compact(state.live_size, self.compact_size_bytes_min)
            {
                let snapshot =
                    codec::encode_snapshot::<R>(&durable_view(&state.entries, &[], &state.next.undo));
                // A failed compaction leaves the journal usable (or marked broken, so
                // that the next append rewrites it); the batch is durable either way.
                let _ = state.journal.rewrite(&snapshot);
            }
        }
        batch
            .outcome
            .set(result)
            .expect("only the leader resolves a batch, once");
        state.leading = false;
        self.resolved.notify_all();
        state
    }
}

impl<R: JournalRecord> MapState<R> {
    /// Sets `key` in the written view (`None` removes it), keeping the index and
    /// the live size in step.
    fn restore(&mut self, key: R::Key, value: Option<R::Value>) {
        let current = self.entries.get(&key);
        R::update_index(&mut self.index, current, value.as_ref());
        if let Some(current) = current {
            self.live_size -= snapshot_frame_len::<R>(&key, current);
        }
        match value {
            Some(value) => {
                self.live_size += snapshot_frame_len::<R>(&key, &value);
                self.entries.insert(key, value);
            }
            None => {
                self.entries.remove(&key);
            }
        }
    }

    /// Undoes every pending change, newest first, and returns the outcome of the
    /// next batch, which fails with the in-flight one (its changes were checked
    /// against the failed ones).
    fn undo_pending(&mut self) -> Outcome {
        let next = std::mem::take(&mut self.next);
        let in_flight = std::mem::take(&mut self.in_flight);
        for undo in next.undo.into_iter().rev().chain(in_flight.into_iter().rev()) {
            self.restore(undo.key, undo.previous);
        }
        next.outcome
    }
}

/// The durable view: the written view with the pending changes undone.
fn durable_view<R: JournalRecord>(
    entries: &BTreeMap<R::Key, R::Value>,
    in_flight: &[Undo<R>],
    next: &[Undo<R>],
) -> BTreeMap<R::Key, R::Value> {
    let mut view = entries.clone();
    for undo in next.iter().rev().chain(in_flight.iter().rev()) {
        match &undo.previous {
            Some(previous) => view.insert(undo.key.clone(), previous.clone()),
            None => view.remove(&undo.key),
        };
    }
    view
}

/// Reads a file through a window of about [`READ_CHUNK_SIZE`] bytes.
struct ChunkReader<'a> {
    file: &'a dyn StorageFile,
    file_len: u64,
    window: Vec<u8>,
    window_start: u64,
}

impl<'a> ChunkReader<'a> {
    fn new(file: &'a dyn StorageFile, file_len: u64) -> ChunkReader<'a> {
        ChunkReader {
            file,
            file_len,
            window: Vec::new(),
            window_start: 0,
        }
    }

    /// The bytes `[position, position + len)`, which the caller has checked lie
    /// within the file.
    fn read(&mut self, position: u64, len: usize) -> std::io::Result<&[u8]> {
        assert!(
            position + len as u64 <= self.file_len,
            "read past the journal's end"
        );
        let window_end = self.window_start + self.window.len() as u64;
        if position < self.window_start || position + len as u64 > window_end {
            let load_len = (len.max(READ_CHUNK_SIZE) as u64).min(self.file_len - position);
            self.window.resize(load_len as usize, 0);
            self.file.read_at(&mut self.window, position)?;
            self.window_start = position;
        }
        let start = (position - self.window_start) as usize;
        Ok(&self.window[start..start + len])
    }

    /// The frame at `position`: its body and length, or why it is invalid
    /// (including running past the end of the file).
    fn frame(
        &mut self,
        position: u64,
        body_size_max: u32,
    ) -> std::io::Result<Result<(&[u8], usize), DecodeError>> {
        let available = self.file_len - position;
        if available < FRAME_HEADER_LEN as u64 {
            return Ok(Err(DecodeError::Truncated {
                needed: FRAME_HEADER_LEN as u64,
                available,
            }));
        }
        let header = self.read(position, FRAME_HEADER_LEN)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        if len > body_size_max {
            return Ok(Err(DecodeError::LengthOutOfBounds {
                len: u64::from(len),
                max: u64::from(body_size_max),
            }));
        }
        let frame_len = FRAME_HEADER_LEN as u64 + u64::from(len);
        if frame_len > available {
            return Ok(Err(DecodeError::Truncated {
                needed: frame_len,
                available,
            }));
        }
        let bytes = self.read(position, frame_len as usize)?;
        Ok(decode_frame(bytes, body_size_max))
    }

    /// Whether a valid frame starts anywhere after `position`. A torn tail has none:
    /// the tail is the last write, and nothing was written after it.
    fn valid_frame_after(&mut self, position: u64, body_size_max: u32) -> std::io::Result<bool> {
        // Bounded by the file's length.
        for candidate in position + 1..self.file_len {
            if self.frame(candidate, body_size_max)?.is_ok() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::event::{Epoch, ProducerId};
    use crate::format::producer::ProducerRecord;
    use crate::io::{Fault, FaultyStorage, StdStorage};

    fn producer(name: &str, id: u64, epoch: u32) -> ProducerRecord {
        ProducerRecord {
            name: name.to_string(),
            id: ProducerId(id),
            epoch: Epoch(epoch),
        }
    }

    #[test]
    fn a_record_that_replay_would_refuse_is_never_written() -> anyhow::Result<()> {
        // Goal: the map applies a change with replay's own rules before writing it,
        // so a caller's bad record can never make the file fail its next open.
        // Method: write a producer, then records reusing its id and lowering its
        // epoch; each is refused, the file and the map are unchanged, and a
        // reopen replays to the same map.
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("producers");
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        let map = JournalMap::<ProducerRecord>::open(Arc::clone(&storage), path.clone(), ())?;
        map.write(|_| Ok((producer("a", 1, 3), ())))?;
        let len = std::fs::metadata(&path)?.len();
        for bad in [producer("b", 1, 0), producer("a", 1, 2), producer("a", 2, 4)] {
            let error = map.write(|_| Ok((bad.clone(), ()))).err();
            assert_eq!(
                error.map(|e| e.kind()),
                Some(ErrorKind::InvalidArgument),
                "{bad:?}"
            );
            assert_eq!(std::fs::metadata(&path)?.len(), len, "{bad:?}");
            assert_eq!(map.list(), vec![("a".to_string(), (ProducerId(1), Epoch(3)))]);
        }
        // A refusal by the caller's own check writes nothing either.
        let refused: Result<()> = map.write(|_| Err(Error::InvalidArgument("no".to_string())));
        assert!(refused.is_err());
        assert_eq!(std::fs::metadata(&path)?.len(), len);
        map.write(|written| {
            assert!(written.contains_key("a"));
            Ok((producer("b", 2, 0), ()))
        })?;
        let expected = map.list();
        drop(map);
        let map = JournalMap::<ProducerRecord>::open(storage, path, ())?;
        assert_eq!(map.list(), expected);
        assert_eq!(map.get("b"), Some((ProducerId(2), Epoch(0))));
        Ok(())
    }

    #[test]
    fn a_failed_sync_changes_neither_the_file_nor_the_map() -> anyhow::Result<()> {
        // Goal: a write whose fdatasync fails is not in the map, not after a crash,
        // and the map keeps working (the next write first rewrites the file).
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("producers");
        let faulty = FaultyStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
        let map = JournalMap::<ProducerRecord>::open(Arc::clone(&storage), path.clone(), ())?;
        map.write(|_| Ok((producer("a", 1, 0), ())))?;
        faulty.arm(Fault::SyncError, "producers", 0);
        let error = map.write(|_| Ok((producer("a", 1, 1), ()))).err();
        assert_eq!(error.map(|e| e.kind()), Some(ErrorKind::Io));
        assert_eq!(map.get("a"), Some((ProducerId(1), Epoch(0))));
        map.write(|_| Ok((producer("b", 2, 0), ())))?;
        drop(map);
        faulty.crash(3)?;
        let map = JournalMap::<ProducerRecord>::open(storage, path, ())?;
        assert_eq!(
            map.list(),
            vec![
                ("a".to_string(), (ProducerId(1), Epoch(0))),
                ("b".to_string(), (ProducerId(2), Epoch(0)))
            ]
        );
        Ok(())
    }

    #[test]
    fn names_must_be_non_empty_bounded_and_free_of_control_characters() {
        assert!(check_name("orders-projection", 200, "cursor").is_ok());
        assert!(check_name("ünïcödé name", 200, "cursor").is_ok());
        for bad in ["", "tab\there", "new\nline", "nul\0"] {
            assert!(matches!(
                check_name(bad, 200, "cursor"),
                Err(Error::InvalidArgument(_))
            ));
        }
        assert!(matches!(
            check_name(&"x".repeat(201), 200, "cursor"),
            Err(Error::LimitExceeded {
                what: "cursor name size",
                value: 201,
                max: 200
            })
        ));
    }
}

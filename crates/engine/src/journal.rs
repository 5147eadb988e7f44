//! An append-only journal of CRC-32C framed records behind a fixed header: the
//! storage shared by the cursor store and the producer registry (FORMAT-cursor.md).
//!
//! The journal owns one file and knows nothing about what its record bodies mean:
//! `open` hands every valid body to a replay callback, `append` adds frames, and
//! `rewrite` replaces the whole file with a compacted set of frames (temporary file,
//! fdatasync, rename, directory fsync).
//!
//! Invariant: every byte below `end` is a header followed by whole, valid frames,
//! and all of it is durable unless `broken` is set.
//! Invariant: while `broken` is set (a failed fsync, or a failure after the rename
//! of a rewrite), nothing is appended to the current file: the next write first
//! rewrites the file from the caller's in-memory state, which is never trusted less
//! than the file.
//!
//! Recovery: only the tail may be torn. Open scans forward and stops at the first
//! frame that fails its length or CRC check; when no valid frame starts anywhere
//! after it, the tail is cut there and synced, otherwise the file is corrupt.
//!
//! It does not group commits, lock, or interpret bodies; its callers do.

// The topic module, the only user outside tests, is merged separately.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{DecodeError, Put, Reader, check_len, crc};
use crate::io::{OpenMode, Storage, StorageFile};
use crate::paths;

/// The journal format version this build writes.
pub(crate) const JOURNAL_VERSION: u16 = 1;
/// The journal format versions this build reads.
pub(crate) const JOURNAL_VERSIONS_SUPPORTED: &[u16] = &[1];
/// Length of the file header: magic, format_version, flags, header_crc.
pub(crate) const JOURNAL_HEADER_LEN: usize = 16;
/// Length of a frame's header: body_len, crc.
pub(crate) const FRAME_HEADER_LEN: usize = 8;
/// Journals up to this size are never compacted, whatever their live share.
pub(crate) const COMPACT_SIZE_BYTES_MIN: u64 = 1 << 20;
/// How much of the file open reads at once.
const READ_CHUNK_SIZE: usize = 1 << 20;

/// Encodes the file header.
pub(crate) fn encode_header(magic: &[u8; 8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(JOURNAL_HEADER_LEN);
    bytes.extend_from_slice(magic);
    bytes.put_u16(JOURNAL_VERSION);
    bytes.put_u16(0);
    let header_crc = crc(&bytes);
    bytes.put_u32(header_crc);
    debug_assert_eq!(bytes.len(), JOURNAL_HEADER_LEN);
    bytes
}

/// Checks a file header.
pub(crate) fn decode_header(bytes: &[u8], magic: &[u8; 8]) -> Result<(), DecodeError> {
    let mut reader = Reader::new(bytes);
    let found_magic = reader.bytes(8)?;
    let version = reader.u16()?;
    let _flags = reader.u16()?;
    let stored = reader.u32()?;
    let computed = crc(&bytes[..JOURNAL_HEADER_LEN - 4]);
    if stored != computed {
        return Err(DecodeError::CrcMismatch {
            expected: stored,
            actual: computed,
        });
    }
    if found_magic != magic {
        return Err(DecodeError::BadMagic);
    }
    if !JOURNAL_VERSIONS_SUPPORTED.contains(&version) {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    Ok(())
}

/// The CRC of a frame: CRC-32C of its `body_len` field followed by its body.
fn frame_crc(len_bytes: [u8; 4], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc(&len_bytes), body)
}

/// Appends one frame holding `body` to `out`.
///
/// # Panics
/// When `body` is empty or longer than `u32::MAX`: callers encode bodies of at
/// least a kind byte and bounded by their record size limit.
pub(crate) fn encode_frame(out: &mut Vec<u8>, body: &[u8]) {
    assert!(!body.is_empty(), "a journal record body holds at least its kind");
    let len = u32::try_from(body.len()).expect("record bodies are bounded by a u32 limit");
    let len_bytes = len.to_le_bytes();
    out.extend_from_slice(&len_bytes);
    out.put_u32(frame_crc(len_bytes, body));
    out.extend_from_slice(body);
}

/// Decodes the frame at the start of `bytes` (which may continue past it):
/// returns its body and the frame's length.
pub(crate) fn decode_frame(bytes: &[u8], body_size_max: u32) -> Result<(&[u8], usize), DecodeError> {
    let mut reader = Reader::new(bytes);
    let len_bytes = reader.u32()?.to_le_bytes();
    let len = u32::from_le_bytes(len_bytes);
    if len == 0 {
        return Err(DecodeError::Invalid("empty journal record"));
    }
    check_len(u64::from(len), u64::from(body_size_max))?;
    let stored = reader.u32()?;
    let body = reader.bytes(len as usize)?;
    let computed = frame_crc(len_bytes, body);
    if stored != computed {
        return Err(DecodeError::CrcMismatch {
            expected: stored,
            actual: computed,
        });
    }
    Ok((body, FRAME_HEADER_LEN + len as usize))
}

/// Checks a user-chosen name (of a cursor, of a producer): 1 to `size_max` bytes of
/// UTF-8 without control characters.
///
/// # Errors
/// [`Error::InvalidArgument`] otherwise.
pub(crate) fn check_name(name: &str, size_max: usize, what: &str) -> Result<()> {
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

/// Decodes a name written by [`encode_name`], with the rule of [`check_name`].
pub(crate) fn decode_name<'a>(reader: &mut Reader<'a>, size_max: usize) -> Result<&'a str, DecodeError> {
    let name = reader.str16(size_max)?;
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(DecodeError::Invalid(
            "name is empty or contains a control character",
        ));
    }
    Ok(name)
}

/// Encodes a name that passed [`check_name`] with a limit below `u16::MAX`.
pub(crate) fn encode_name(out: &mut Vec<u8>, name: &str) {
    out.put_bytes16(name.as_bytes());
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

    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
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

    /// Appends `frames` durably: `prepare`, `perform` and `finish` under the
    /// caller's lock.
    ///
    /// # Errors
    /// As [`Journal::prepare`] and [`Journal::finish`]; nothing of `frames` is kept.
    pub(crate) fn append(&mut self, frames: &[u8], snapshot: &dyn Fn() -> Vec<u8>) -> Result<()> {
        let write = self.prepare(snapshot)?;
        let outcome = write.perform(frames);
        self.finish(write, frames.len() as u64, outcome, snapshot)
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

    #[test]
    fn frame_roundtrips_and_rejects_every_flipped_bit() {
        // Goal: any single bit flip in a frame is detected, including in its length.
        let mut encoded = Vec::new();
        encode_frame(&mut encoded, b"hello journal");
        assert_eq!(
            decode_frame(&encoded, 64),
            Ok((&b"hello journal"[..], encoded.len()))
        );
        for bit in 0..encoded.len() * 8 {
            let mut damaged = encoded.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_frame(&damaged, 1 << 20).is_err(), "bit {bit} undetected");
        }
        for cut in 0..encoded.len() {
            assert!(decode_frame(&encoded[..cut], 64).is_err());
        }
    }

    #[test]
    fn header_roundtrips_and_rejects_damage() {
        let header = encode_header(b"STELETST");
        assert_eq!(decode_header(&header, b"STELETST"), Ok(()));
        assert_eq!(decode_header(&header, b"STELEXXX"), Err(DecodeError::BadMagic));
        for bit in 0..header.len() * 8 {
            let mut damaged = header.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_header(&damaged, b"STELETST").is_err(),
                "bit {bit} undetected"
            );
        }
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

//! Read-only memory maps and the one libc call std lacks (fallocate).
//!
//! This is the only module allowed to use `unsafe`.
//!
//! Rules that make the maps sound enough here:
//! - Maps are read-only; nothing in the process writes through a mapping.
//! - `StorageFile::map` maps at most the size measured on the descriptor when
//!   the mapping is made, so every byte of such a mapping exists. Only the
//!   segment being appended to has a reservation past the file's end
//!   (`map_reserved`), read only below what this process wrote or read back
//!   through the descriptor.
//! - Recovery reads files through the descriptor (pread), never a mapping, so
//!   a file shorter than its size says cannot fault it.
//! - Readers only touch bytes below the published end of a segment, which are
//!   never truncated while the process runs (torn tails are cut at open, before any
//!   map exists; a failed write truncates only bytes that were never published).
//! - Retention unlinks files but never truncates them; a mapping keeps the inode.
//! - A lock file stops a second process from opening the directory.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// A read-only mapping of a file.
#[derive(Debug)]
pub struct Map {
    map: Option<memmap2::Mmap>,
}

impl Map {
    pub(super) fn new(file: &File, len: u64) -> io::Result<Map> {
        if len == 0 {
            return Ok(Map { map: None });
        }
        let len = usize::try_from(len).map_err(io::Error::other)?;
        // SAFETY: the mapping is read-only and callers read only bytes below the
        // file's published length, which stay in place for the mapping's life (see
        // the module rules). Pages past the file's end (of a reservation) are
        // never touched; every slice is also bounded by the mapping's length.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
        Ok(Map { map: Some(map) })
    }

    /// The mapped bytes `[start, end)`.
    ///
    /// # Panics
    /// When the range is outside the mapping: callers bound ranges by the published
    /// length first.
    pub fn slice(&self, start: u64, end: u64) -> &[u8] {
        assert!(start <= end, "slice start {start} after end {end}");
        let map = self.map.as_deref().unwrap_or(&[]);
        assert!(
            end <= map.len() as u64,
            "slice end {end} past mapping of {} bytes",
            map.len()
        );
        &map[start as usize..end as usize]
    }

    /// The mapping's length.
    pub fn len(&self) -> u64 {
        self.map.as_ref().map_or(0, |map| map.len() as u64)
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub(super) fn allocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
    // SAFETY: fallocate only reads its integer arguments; the descriptor is open
    // for writing and owned by `file` for the duration of the call.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

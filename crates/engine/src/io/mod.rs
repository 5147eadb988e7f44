//! The only code that touches files.
//!
//! The engine reaches the file system through the [`Storage`] and [`StorageFile`]
//! traits so that tests can inject failures ([`FaultyStorage`]): failed writes,
//! short writes, a full disk, failed syncs, crashes that lose unsynced bytes, and
//! descriptors that report a wrong size. All `unsafe` (the read-only memory maps)
//! lives in `mmap.rs`.
//!
//! Invariant: writes go through `write_at` (pwrite) and `sync_data` (fdatasync),
//! never through a writable mapping.
//! Invariant: `StorageFile::map` never maps past the descriptor's size measured
//! when the mapping is made; `map_reserved` is the one, named, exception.

mod faulty;
mod mmap;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

pub use faulty::{Fault, FaultyStorage};
pub use mmap::Map;

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    ReadWrite,
    /// Read and write; the file must not exist yet.
    CreateNew,
    /// Read and write; created or emptied.
    CreateTruncate,
}

/// A file system.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Opens a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Renames a file atomically.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything below it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes a directory's entries (created, renamed, removed files) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// The names of a directory's entries, sorted.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Whether a path exists.
    fn exists(&self, path: &Path) -> bool;
}

/// An open file.
#[allow(clippy::len_without_is_empty)]
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// Reads exactly `buf.len()` bytes at `position`.
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes at `position` and returns how many were
    /// read: fewer only where the file ends.
    fn read_at_most(&self, buf: &mut [u8], position: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `position`.
    fn write_at(&self, buf: &[u8], position: u64) -> io::Result<()>;
    /// fdatasync.
    fn sync_data(&self) -> io::Result<()>;
    /// The file's length.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves disk blocks up to `len` bytes (the file's length becomes `len`).
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Maps at most `len` bytes read-only, and never more than the descriptor's
    /// size measured now: the mapping's `len()` says how many. Every byte of
    /// the mapping may be read as long as the file does not shrink.
    fn map(&self, len: u64) -> io::Result<Map>;
    /// Maps `len` bytes read-only, past the file's end: an address range
    /// reserved for a file this process appends to. Only bytes this process
    /// wrote, or read back through the descriptor, may be read from it; the
    /// rest may fault.
    fn map_reserved(&self, len: u64) -> io::Result<Map>;
    /// Takes an exclusive advisory lock; `false` when another process holds it.
    fn try_lock(&self) -> io::Result<bool>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdStorage;

impl Storage for StdStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut options = OpenOptions::new();
        options.read(true);
        match mode {
            OpenMode::Read => {}
            OpenMode::ReadWrite => {
                options.write(true);
            }
            OpenMode::CreateNew => {
                options.write(true).create_new(true);
            }
            OpenMode::CreateTruncate => {
                options.write(true).create(true).truncate(true);
            }
        }
        Ok(Arc::new(StdFile {
            file: options.open(path)?,
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

#[derive(Debug)]
struct StdFile {
    file: File,
}

impl StorageFile for StdFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, position)
    }

    fn read_at_most(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        let mut read = 0;
        // Bounded: every iteration reads at least one byte or stops.
        while read < buf.len() {
            match self.file.read_at(&mut buf[read..], position + read as u64) {
                Ok(0) => break,
                Ok(count) => read += count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(read)
    }

    fn write_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        self.file.write_all_at(buf, position)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        mmap::allocate(&self.file, len)
    }

    fn map(&self, len: u64) -> io::Result<Map> {
        let size = self.file.metadata()?.len();
        Map::new(&self.file, len.min(size))
    }

    fn map_reserved(&self, len: u64) -> io::Result<Map> {
        Map::new(&self.file, len)
    }

    fn try_lock(&self) -> io::Result<bool> {
        match self.file.try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(error)) => Err(error),
        }
    }
}

/// Writes a whole small file atomically: a temporary file, fdatasync, rename over
/// the target, then fsync of the directory.
pub fn write_file_atomic(storage: &dyn Storage, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = crate::paths::atomic_temporary(path);
    let file = storage.open(&temporary, OpenMode::CreateTruncate)?;
    file.write_at(bytes, 0)?;
    file.sync_data()?;
    drop(file);
    storage.rename(&temporary, path)?;
    let directory = path.parent().unwrap_or_else(|| Path::new("."));
    storage.sync_dir(directory)
}

/// Makes `to` a new name of the file `from` (a hard link); fails across file
/// systems (`EXDEV`), where a backup copies instead.
pub fn hard_link(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::hard_link(from, to)
}

/// Reads a whole file, refusing files longer than `size_max`.
pub fn read_file(storage: &dyn Storage, path: &Path, size_max: u64) -> io::Result<Vec<u8>> {
    let file = storage.open(path, OpenMode::Read)?;
    let len = file.len()?;
    if len > size_max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file is {len} bytes, above the limit of {size_max}"),
        ));
    }
    let mut bytes = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
    file.read_at(&mut bytes, 0)?;
    Ok(bytes)
}

/// Space on a filesystem, as `statvfs` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes an unprivileged process may still allocate.
    pub available_bytes: u64,
    /// The filesystem's size.
    pub capacity_bytes: u64,
}

/// The space of the filesystem holding `path`.
///
/// # Errors
/// The `statvfs` error, e.g. when `path` does not exist.
pub fn disk_space(path: &Path) -> io::Result<DiskSpace> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(DiskSpace {
        available_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
        capacity_bytes: stat.f_blocks.saturating_mul(stat.f_frsize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_is_never_longer_than_the_descriptors_size() -> io::Result<()> {
        // Goal: `map` never reaches past the file's end as measured on the open
        // descriptor, whatever length is asked for, also after the file shrinks,
        // and through `FaultyStorage`; only `map_reserved` reserves past it.
        // Method: map a 100-byte file with lengths below, at and far above its
        // size, shrink it through the same descriptor, map again.
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("file");
        for storage in [&StdStorage as &dyn Storage, &FaultyStorage::new()] {
            let file = storage.open(&path, OpenMode::CreateTruncate)?;
            file.write_at(&[7u8; 100], 0)?;
            assert_eq!(file.map(50)?.len(), 50);
            assert_eq!(file.map(100)?.len(), 100);
            let long = file.map(1 << 30)?;
            assert_eq!(long.len(), 100);
            assert_eq!(long.slice(0, 100), &[7u8; 100][..]);
            file.set_len(30)?;
            assert_eq!(file.map(100)?.len(), 30);
            file.set_len(0)?;
            assert!(file.map(100)?.is_empty());
            assert_eq!(file.map_reserved(1 << 20)?.len(), 1 << 20);
        }
        Ok(())
    }

    #[test]
    fn reading_at_most_stops_at_the_end_of_the_file() -> io::Result<()> {
        // Goal: `read_at_most` returns how many bytes the file holds from a
        // position, where `read_at` fails. Method: a 10-byte file read from
        // inside, at and past its end.
        let dir = tempfile::tempdir()?;
        let file = StdStorage.open(&dir.path().join("file"), OpenMode::CreateTruncate)?;
        file.write_at(b"0123456789", 0)?;
        let mut buffer = [0u8; 8];
        assert_eq!(file.read_at_most(&mut buffer, 4)?, 6);
        assert_eq!(&buffer[..6], b"456789");
        assert_eq!(file.read_at_most(&mut buffer, 10)?, 0);
        assert_eq!(file.read_at_most(&mut buffer, 1000)?, 0);
        assert!(file.read_at(&mut buffer, 4).is_err());
        Ok(())
    }
}

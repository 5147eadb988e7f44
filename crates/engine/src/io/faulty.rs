//! A [`Storage`] over the real file system that injects failures and simulates
//! crashes, for tests.
//!
//! Failures are armed as a plan: the next matching operation (optionally after
//! some number of matching operations) fails. Crashes are simulated by keeping, per
//! file, the end of the bytes written and the end of the bytes synced; `crash`
//! drops or keeps a random sector-aligned part of every unsynced tail, and may
//! scribble garbage into the last kept sector, as a power cut can.
//!
//! It can also make descriptors report a size off from the real one (on every
//! open, or on every open after the first), as a stale metadata cache does.
//!
//! It models the engine's own write pattern (appends past the synced end, small
//! files replaced by atomic rename); it is not a general file-system model.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Map, OpenMode, StdStorage, Storage, StorageFile};

/// A failure to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `write_at` fails with EIO and writes nothing.
    WriteError,
    /// `write_at` writes the first half of its buffer, then fails with EIO.
    ShortWrite,
    /// `write_at` and `allocate` fail with ENOSPC until `clear_disk_full`.
    DiskFull,
    /// `sync_data` fails with EIO.
    SyncError,
}

#[derive(Debug, Default)]
struct FileState {
    written_end: u64,
    synced_end: u64,
}

#[derive(Debug, Default)]
struct Plan {
    /// Armed one-shot faults: (fault, path filter, matching operations to let pass).
    armed: Vec<(Fault, String, u64)>,
    disk_full: bool,
    files: HashMap<PathBuf, FileState>,
    injected_count: u64,
    size_lie: Option<SizeLie>,
}

/// Sizes reported off by `delta` for some opens of some files.
#[derive(Debug)]
struct SizeLie {
    path_filter: String,
    delta: i64,
    /// Opens of each matching path since the lie was armed.
    opens: HashMap<PathBuf, u64>,
    /// Opens numbered below this report the real size.
    truthful_opens: u64,
    /// Paths that were given a lying descriptor.
    lied_to: HashSet<PathBuf>,
}

/// A [`Storage`] that fails on request and can simulate a crash.
#[derive(Clone, Default)]
pub struct FaultyStorage {
    plan: Arc<Mutex<Plan>>,
}

impl fmt::Debug for FaultyStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FaultyStorage")
    }
}

impl FaultyStorage {
    /// A storage that fails nothing until told to.
    pub fn new() -> FaultyStorage {
        FaultyStorage::default()
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Arms a one-shot fault for the first operation on a path containing
    /// `path_filter` after `skip` such operations have passed.
    pub fn arm(&self, fault: Fault, path_filter: &str, skip: u64) {
        self.plan().armed.push((fault, path_filter.to_string(), skip));
    }

    /// Makes every write and allocation fail with ENOSPC.
    pub fn set_disk_full(&self, full: bool) {
        self.plan().disk_full = full;
    }

    /// Makes `len()` report a size `delta` bytes off the real one (at least 0)
    /// on descriptors of files whose path contains `path_filter`, except the
    /// first `truthful_opens` opens of each path since this call: with 1, the
    /// first descriptor tells the truth and every later open of the same file
    /// disagrees with it, as a stale metadata cache can make it; with 0, every
    /// descriptor lies. Reads and mappings see the real file. Opens and size
    /// queries of matching files also yield the thread, so that opens on
    /// several threads interleave. `delta` 0 ends the lie.
    pub fn lie_about_sizes(&self, path_filter: &str, delta: i64, truthful_opens: u64) {
        self.plan().size_lie = (delta != 0).then(|| SizeLie {
            path_filter: path_filter.to_string(),
            delta,
            opens: HashMap::new(),
            truthful_opens,
            lied_to: HashSet::new(),
        });
    }

    /// How many files were given a descriptor that lies about its size since
    /// [`FaultyStorage::lie_about_sizes`].
    pub fn lied_to_count(&self) -> usize {
        self.plan().size_lie.as_ref().map_or(0, |lie| lie.lied_to.len())
    }

    /// How many faults were injected so far.
    pub fn injected_count(&self) -> u64 {
        self.plan().injected_count
    }

    /// Simulates a power cut: for every file, keeps the synced bytes and a random,
    /// sector-aligned part of the unsynced ones, optionally scribbling garbage over
    /// the last kept sector. Call it only after the log using this storage is
    /// dropped.
    pub fn crash(&self, seed: u64) -> io::Result<()> {
        let mut random = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            random
        };
        let mut plan = self.plan();
        plan.armed.clear();
        plan.disk_full = false;
        for (path, state) in plan.files.iter_mut() {
            if state.written_end <= state.synced_end || !path.exists() {
                state.written_end = state.synced_end;
                continue;
            }
            const SECTOR: u64 = 512;
            let unsynced = state.written_end - state.synced_end;
            let sectors = unsynced.div_ceil(SECTOR);
            let kept = (next() % (sectors + 1)) * SECTOR;
            let end = (state.synced_end + kept).min(state.written_end);
            let file = std::fs::OpenOptions::new().write(true).open(path)?;
            file.set_len(end)?;
            if end > state.synced_end && next() % 4 == 0 {
                let start = end.saturating_sub(SECTOR).max(state.synced_end);
                let garbage: Vec<u8> = (start..end).map(|_| next() as u8).collect();
                std::os::unix::fs::FileExt::write_all_at(&file, &garbage, start)?;
            }
            file.sync_all()?;
            state.written_end = end;
            state.synced_end = end;
        }
        Ok(())
    }

    /// Takes the armed fault that matches this operation, if any.
    fn take(&self, path: &Path, wanted: &[Fault]) -> Option<Fault> {
        let mut plan = self.plan();
        if plan.disk_full && wanted.contains(&Fault::DiskFull) {
            plan.injected_count += 1;
            return Some(Fault::DiskFull);
        }
        let path = path.to_string_lossy();
        let index = plan
            .armed
            .iter()
            .position(|(fault, filter, _)| wanted.contains(fault) && path.contains(filter.as_str()))?;
        if plan.armed[index].2 > 0 {
            plan.armed[index].2 -= 1;
            return None;
        }
        let (fault, _, _) = plan.armed.remove(index);
        plan.injected_count += 1;
        Some(fault)
    }
}

fn injected(fault: Fault) -> io::Error {
    match fault {
        Fault::DiskFull => io::Error::from_raw_os_error(libc::ENOSPC),
        Fault::WriteError | Fault::ShortWrite | Fault::SyncError => io::Error::from_raw_os_error(libc::EIO),
    }
}

impl Storage for FaultyStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let inner = StdStorage.open(path, mode)?;
        let len = inner.len()?;
        let size_delta = {
            let mut plan = self.plan();
            let size_delta = match plan.size_lie.as_mut() {
                Some(lie) if path.to_string_lossy().contains(lie.path_filter.as_str()) => {
                    let opens = lie.opens.entry(path.to_path_buf()).or_default();
                    *opens += 1;
                    if *opens > lie.truthful_opens {
                        lie.lied_to.insert(path.to_path_buf());
                        lie.delta
                    } else {
                        0
                    }
                }
                _ => 0,
            };
            let state = plan.files.entry(path.to_path_buf()).or_default();
            if matches!(mode, OpenMode::CreateNew | OpenMode::CreateTruncate) {
                *state = FileState::default();
            } else if state.written_end == 0 && state.synced_end == 0 {
                state.written_end = len;
                state.synced_end = len;
            }
            size_delta
        };
        if size_delta != 0 {
            interleave();
        }
        Ok(Arc::new(FaultyFile {
            storage: self.clone(),
            path: path.to_path_buf(),
            inner,
            size_delta,
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        StdStorage.create_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdStorage.rename(from, to)?;
        let mut plan = self.plan();
        if let Some(state) = plan.files.remove(from) {
            plan.files.insert(to.to_path_buf(), state);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdStorage.remove_file(path)?;
        self.plan().files.remove(path);
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        StdStorage.remove_dir_all(path)?;
        self.plan().files.retain(|file, _| !file.starts_with(path));
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        StdStorage.sync_dir(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        StdStorage.read_dir(path)
    }

    fn exists(&self, path: &Path) -> bool {
        StdStorage.exists(path)
    }
}

/// Gives other threads a chance to run between two steps of an operation.
fn interleave() {
    for _ in 0..3 {
        std::thread::yield_now();
    }
}

#[derive(Debug)]
struct FaultyFile {
    storage: FaultyStorage,
    path: PathBuf,
    inner: Arc<dyn StorageFile>,
    /// How far off the real size `len()` reports (see `lie_about_sizes`).
    size_delta: i64,
}

impl StorageFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        self.inner.read_at(buf, position)
    }

    fn write_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        let fault = self.storage.take(
            &self.path,
            &[Fault::WriteError, Fault::ShortWrite, Fault::DiskFull],
        );
        let written = match fault {
            None => buf.len(),
            Some(Fault::ShortWrite) | Some(Fault::DiskFull) => buf.len() / 2,
            Some(_) => 0,
        };
        self.inner.write_at(&buf[..written], position)?;
        let mut plan = self.storage.plan();
        let state = plan.files.entry(self.path.clone()).or_default();
        state.written_end = state.written_end.max(position + written as u64);
        match fault {
            None => Ok(()),
            Some(fault) => Err(injected(fault)),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        if let Some(fault) = self.storage.take(&self.path, &[Fault::SyncError]) {
            return Err(injected(fault));
        }
        self.inner.sync_data()?;
        let mut plan = self.storage.plan();
        let state = plan.files.entry(self.path.clone()).or_default();
        state.synced_end = state.written_end;
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let len = self.inner.len()?;
        if self.size_delta == 0 {
            return Ok(len);
        }
        interleave();
        Ok(len.saturating_add_signed(self.size_delta))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)?;
        let mut plan = self.storage.plan();
        let state = plan.files.entry(self.path.clone()).or_default();
        state.written_end = state.written_end.min(len);
        state.synced_end = state.synced_end.min(len);
        Ok(())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        if let Some(fault) = self.storage.take(&self.path, &[Fault::DiskFull]) {
            return Err(injected(fault));
        }
        self.inner.allocate(len)
    }

    fn read_at_most(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        self.inner.read_at_most(buf, position)
    }

    fn map(&self, len: u64) -> io::Result<Map> {
        self.inner.map(len)
    }

    fn map_reserved(&self, len: u64) -> io::Result<Map> {
        self.inner.map_reserved(len)
    }

    fn try_lock(&self) -> io::Result<bool> {
        self.inner.try_lock()
    }
}

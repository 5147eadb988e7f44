//! Helpers shared by the crash tests (directory copies, segment files and frame
//! boundaries read straight from disk, and seeds) and by the gRPC tests (bounded
//! steps and raw channels).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stele::LogOptions;
use stele::io::{Map, OpenMode, StdStorage, Storage, StorageFile};

/// The longest any single gRPC test step may take before the test fails instead
/// of hanging.
pub const STEP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Awaits `future`, failing the test after [`STEP_TIMEOUT`].
pub async fn step<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .expect("step finished in time")
}

/// A plain gRPC channel to a test server, for the generated client or raw calls.
pub async fn channel(server: &stele::client::TestServer) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

/// Copies a directory tree (files and directories only).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy directory");
    for entry in std::fs::read_dir(from).expect("list directory") {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// The directory of partition `index` of topic `topic`.
pub fn partition_dir(dir: &Path, topic: &str, index: u32) -> PathBuf {
    dir.join("topics").join(topic).join(format!("p{index:05}"))
}

/// The segment files of a partition directory, oldest first.
pub fn segment_files(partition_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(partition_dir)
        .expect("list partition")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
        .collect();
    files.sort();
    files
}

/// Length of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 40;
/// Length of the fixed part of a record frame.
pub const RECORD_HEADER_LEN: usize = 72;

/// One frame as found on disk.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub start: usize,
    pub end: usize,
    /// Bit 0 of the flags at frame byte 60: the last event of its append call.
    pub call_end: bool,
}

/// The frames of a segment file, read by their length fields (no CRC check: the
/// test only uses this on files the engine wrote).
pub fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut position = SEGMENT_HEADER_LEN;
    while position + 4 <= bytes.len() {
        let frame_len =
            u32::from_le_bytes(bytes[position..position + 4].try_into().expect("4 bytes")) as usize;
        let end = position + 4 + frame_len;
        assert!(end <= bytes.len(), "frame at {position} runs past the file");
        let flags = u16::from_le_bytes(bytes[position + 60..position + 62].try_into().expect("2 bytes"));
        frames.push(Frame {
            start: position,
            end,
            call_end: flags & 1 != 0,
        });
        position = end;
    }
    assert_eq!(position, bytes.len(), "trailing bytes after the last frame");
    frames
}

/// Flips one bit of a file in place.
pub fn flip_bit(path: &Path, bit: usize) {
    let mut bytes = std::fs::read(path).expect("read file");
    bytes[bit / 8] ^= 1 << (bit % 8);
    std::fs::write(path, bytes).expect("write file");
}

/// A seed from `STELE_SEED`, else from the clock. Printed, so that a failing run
/// can be repeated.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("STELE_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {seed} (repeat with STELE_SEED={seed})");
    seed
}

/// A small xorshift generator: deterministic per seed, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// Prints the seed if the current thread panics (the test fails) while alive.
pub struct SeedGuard {
    pub test: &'static str,
    pub seed: u64,
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{} FAILED with seed {} (repeat with STELE_SEED={})",
                self.test, self.seed, self.seed
            );
        }
    }
}

/// The real file system without fsync: for tests that damage files by hand and
/// never depend on what survives a power cut, so that hundreds of reopen cases
/// stay fast on a slow disk. Everything else goes to `StdStorage`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSyncStorage;

#[derive(Debug)]
struct NoSyncFile(Arc<dyn StorageFile>);

impl Storage for NoSyncStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(NoSyncFile(StdStorage.open(path, mode)?)))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        StdStorage.create_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdStorage.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdStorage.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        StdStorage.remove_dir_all(path)
    }
    fn sync_dir(&self, _path: &Path) -> io::Result<()> {
        Ok(())
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        StdStorage.read_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        StdStorage.exists(path)
    }
}

impl StorageFile for NoSyncFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        self.0.read_at(buf, position)
    }
    fn write_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        self.0.write_at(buf, position)
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.0.allocate(len)
    }
    fn read_at_most(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        self.0.read_at_most(buf, position)
    }
    fn map(&self, len: u64) -> io::Result<Map> {
        self.0.map(len)
    }
    fn map_reserved(&self, len: u64) -> io::Result<Map> {
        self.0.map_reserved(len)
    }
    fn try_lock(&self) -> io::Result<bool> {
        self.0.try_lock()
    }
}

/// Log options over [`NoSyncStorage`].
pub fn no_sync_options() -> LogOptions {
    LogOptions::default().storage(Arc::new(NoSyncStorage))
}

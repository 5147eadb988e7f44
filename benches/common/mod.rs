//! Shared set-up of the benches: where data goes, quick mode, event builders and
//! the cached 10-million-event data set used by `read/key` and `open/*`.
//!
//! Data goes in `$STELE_BENCH_DIR` (a real disk, not tmpfs), else in a temporary
//! directory under the crate's `target/` (never `/tmp`, which may be tmpfs).
//! `STELE_BENCH_QUICK=1` shrinks data and sample counts for CI.

#![allow(dead_code)] // Each bench binary uses a different part of this module.

use std::path::{Path, PathBuf};
use std::time::Duration;
use stele::Sequence;

use criterion::Criterion;
use stele::{
    Direction, Durability, Event, ExpectedSequence, Log, LogOptions, Offset, PartitionId, TopicOptions,
};

/// Payload size of every bench event.
pub const PAYLOAD_SIZE: usize = 100;
/// Event type of every bench event.
pub const EVENT_TYPE: &str = "bench";

/// Whether `STELE_BENCH_QUICK=1` asks for the small CI run.
pub fn quick() -> bool {
    std::env::var("STELE_BENCH_QUICK").is_ok_and(|value| value == "1")
}

/// Picks the full-size or the quick-mode value.
pub fn sized<T>(full: T, quick_value: T) -> T {
    if quick() { quick_value } else { full }
}

/// The criterion configuration: small samples in quick mode. Command-line flags
/// (`--measurement-time`, `--sample-size`...) still override it.
pub fn criterion() -> Criterion {
    let criterion = Criterion::default();
    if quick() {
        criterion
            .sample_size(10)
            .warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_millis(300))
    } else {
        criterion
    }
}

/// A directory for bench data: kept under `$STELE_BENCH_DIR` (removed when
/// dropped unless `keep`), else a temporary directory under `target/`.
pub struct BenchDir {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl BenchDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The root under which bench data is placed, and whether it persists.
fn root() -> (PathBuf, bool) {
    match std::env::var_os("STELE_BENCH_DIR") {
        Some(dir) => (PathBuf::from(dir), true),
        None => (
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target")
                .join("bench-tmp"),
            false,
        ),
    }
}

/// A fresh, empty directory for data that is not cached between runs.
pub fn scratch_dir(name: &str) -> BenchDir {
    let (root, _) = root();
    std::fs::create_dir_all(&root).expect("create bench root");
    let temp = tempfile::Builder::new()
        .prefix(&format!("stele-{name}-"))
        .tempdir_in(&root)
        .expect("create bench directory");
    BenchDir {
        path: temp.path().to_path_buf(),
        _temp: Some(temp),
    }
}

/// A directory for data cached between runs when `$STELE_BENCH_DIR` is set;
/// a temporary one otherwise.
pub fn cache_dir(name: &str) -> BenchDir {
    match root() {
        (root, true) => {
            let path = root.join(name);
            std::fs::create_dir_all(&path).expect("create bench cache directory");
            BenchDir { path, _temp: None }
        }
        (_, false) => scratch_dir(name),
    }
}

/// A 100-byte payload that varies with `seed`.
pub fn payload(seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; PAYLOAD_SIZE];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = (seed.wrapping_mul(31).wrapping_add(index as u64) % 251) as u8;
    }
    bytes
}

/// `count` bench events.
pub fn events(count: usize, seed: u64) -> Vec<Event> {
    (0..count)
        .map(|index| Event::new(EVENT_TYPE, payload(seed + index as u64)))
        .collect()
}

/// The name of key `index`.
pub fn key(index: u64) -> Vec<u8> {
    format!("key-{index:08}").into_bytes()
}

/// A small, fast pseudo-random sequence (xorshift64*), so that the timed loops
/// do not pay for a real generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// Sum of the high watermarks of every partition of `topic`.
pub fn total_events(topic: &stele::Topic) -> u64 {
    (0..topic.partitions_count())
        .map(|partition| topic.high_watermark(PartitionId(partition)).expect("hw").0)
        .sum()
}

/// The data set of `read/key` and `open/*`: `keys` keys with `per_key` events
/// each, 100-byte payloads, in topic `big` with 4 partitions and
/// `Durability::None`. Events of a key are spread over the log: round `r`
/// appends event `r` of every key, one event per append call.
pub struct BigDataSet {
    pub keys: u64,
    pub per_key: u64,
    /// The cleanly closed data directory.
    pub clean: PathBuf,
    /// A copy of the data directory taken while the log was open, after the
    /// last append was acknowledged and before close: a crash image.
    pub crash: PathBuf,
    /// Unix milliseconds when the last event was appended.
    pub written_ms: i64,
    _dir: BenchDir,
}

pub const BIG_TOPIC: &str = "big";
pub const BIG_PARTITIONS: u32 = 4;
const COMPLETE_MARKER: &str = "COMPLETE";

impl BigDataSet {
    pub fn events(&self) -> u64 {
        self.keys * self.per_key
    }
}

/// Builds the big data set, or reuses the one cached in `$STELE_BENCH_DIR` when
/// its marker says it is complete.
pub fn big_data_set() -> BigDataSet {
    let keys = sized(1_000_000, 1_000);
    let per_key = 10;
    let dir = cache_dir(&format!("big-keys={keys},per_key={per_key}"));
    let clean = dir.path().join("clean");
    let crash = dir.path().join("crash");
    let marker = dir.path().join(COMPLETE_MARKER);
    let cached = std::fs::read_to_string(&marker)
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok());
    if let Some(written_ms) = cached {
        eprintln!("reusing the cached data set in {}", dir.path().display());
        return BigDataSet {
            keys,
            per_key,
            clean,
            crash,
            written_ms,
            _dir: dir,
        };
    }
    eprintln!(
        "building {} events over {keys} keys in {} (once; cached when STELE_BENCH_DIR is set)",
        keys * per_key,
        dir.path().display()
    );
    let _ = std::fs::remove_dir_all(&clean);
    let _ = std::fs::remove_dir_all(&crash);
    let started = std::time::Instant::now();
    let log = Log::open(&clean, LogOptions::default()).expect("open big log");
    let topic = log
        .create_topic(
            BIG_TOPIC,
            TopicOptions::default()
                .partitions(BIG_PARTITIONS)
                .durability(Durability::None),
        )
        .expect("create big topic");
    let threads = 2u64;
    for round in 0..per_key {
        std::thread::scope(|scope| {
            for thread in 0..threads {
                let topic = topic.clone();
                scope.spawn(move || {
                    let mut index = thread;
                    while index < keys {
                        let event = Event::new(EVENT_TYPE, payload(round * keys + index));
                        let expected = match round {
                            0 => ExpectedSequence::NoEvents,
                            _ => ExpectedSequence::Exact(Sequence(round - 1)),
                        };
                        topic.append(key(index), expected, vec![event]).expect("append");
                        index += threads;
                    }
                });
            }
        });
    }
    assert_eq!(total_events(&topic), keys * per_key, "every event appended");
    let written_ms = now_ms();
    copy_dir(&clean, &crash, false);
    drop(topic);
    log.close().expect("close big log");
    eprintln!("built in {:.1?}", started.elapsed());
    std::fs::write(&marker, written_ms.to_string()).expect("write marker");
    BigDataSet {
        keys,
        per_key,
        clean,
        crash,
        written_ms,
        _dir: dir,
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Copies a directory tree. With `link_segments`, segment files (`*.log`,
/// `*.idx`) are hard-linked instead of copied: opening a crash image without a
/// torn tail never writes into them (checkpoints are replaced by rename).
pub fn copy_dir(from: &Path, to: &Path, link_segments: bool) {
    std::fs::create_dir_all(to).expect("create copy directory");
    for entry in std::fs::read_dir(from).expect("list directory") {
        let entry = entry.expect("directory entry");
        let source = entry.path();
        let target = to.join(entry.file_name());
        let file_type = entry.file_type().expect("file type");
        if file_type.is_dir() {
            copy_dir(&source, &target, link_segments);
        } else if link_segments && matches!(source.extension().and_then(|e| e.to_str()), Some("log" | "idx"))
        {
            std::fs::hard_link(&source, &target).expect("link segment");
        } else {
            std::fs::copy(&source, &target).expect("copy file");
        }
    }
}

/// Reads one key's history and checks it has `per_key` events.
pub fn check_key(topic: &stele::Topic, key_index: u64, per_key: u64) {
    let history = topic
        .read_key(&key(key_index), None, Direction::Forwards, 100)
        .expect("read key");
    assert_eq!(
        history.len() as u64,
        per_key,
        "key {key_index} has all its events"
    );
    assert_eq!(history[0].sequence, Sequence(0));
    assert!(history.windows(2).all(|pair| pair[0].offset < pair[1].offset));
}

/// Resident set size of this process in bytes, from `/proc/self/statm`.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let resident_pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("statm resident field");
    // The page size is 4 KiB on the machines this runs on (x86-64 Linux).
    resident_pages * 4096
}

/// The first offset of a partition, for readers.
pub const START: Offset = Offset(0);

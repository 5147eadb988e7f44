//! The partition's file work (segment creation at a roll, sealing, dedup run
//! writes) happens without the state lock, and a crash in the middle of each
//! leaves a directory that opens with every acknowledged event.
//!
//! Method: a storage that stops one chosen operation on a gate until the test
//! releases it. While a thread is parked there, the test takes the state lock
//! through the public API (appends, `partition_infos`) from another thread, and
//! copies the data directory as it is on disk (the state a crash at that
//! point leaves, with nothing lost from the page cache). Every wait on another
//! thread is bounded (`recv_timeout`), so a lock held across the I/O fails the
//! test instead of hanging it; nothing waits by sleeping.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{Durability, LogOptions, ManualClock, TopicOptions};
use crate::event::{AppendRequest, Event, ExpectedSequence, Offset, PartitionId};
use crate::io::{Map, OpenMode, StdStorage, Storage, StorageFile};
use crate::log::Log;

/// How long a test waits for another thread before it fails.
const WAIT_MAX: Duration = Duration::from_secs(60);

/// Which operation the gate stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GatedOperation {
    SyncData,
}

type PathFilter = Box<dyn Fn(&Path) -> bool + Send + Sync>;

struct Armed {
    operation: GatedOperation,
    filter: PathFilter,
    /// Told once the operation was reached (the thread then waits on `release`).
    reached: Sender<PathBuf>,
    release: Receiver<()>,
}

/// The real file system, with one armed operation that waits on a gate, and
/// a count of writes to segment files.
#[derive(Clone, Default)]
struct GateStorage {
    armed: Arc<Mutex<Option<Armed>>>,
    segment_writes: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for GateStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GateStorage")
    }
}

/// The test's side of an armed gate.
struct Gate {
    reached: Receiver<PathBuf>,
    release: Sender<()>,
}

impl Gate {
    /// Waits until a thread is parked at the gate; returns the file's path.
    fn wait_reached(&self) -> PathBuf {
        self.reached
            .recv_timeout(WAIT_MAX)
            .expect("the gated operation is reached")
    }

    fn open(&self) {
        let _ = self.release.send(());
    }
}

impl GateStorage {
    /// Arms a one-shot gate on the next `operation` on a path `filter` accepts.
    fn arm(&self, operation: GatedOperation, filter: impl Fn(&Path) -> bool + Send + Sync + 'static) -> Gate {
        let (reached_tx, reached_rx) = channel();
        let (release_tx, release_rx) = channel();
        *self.armed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Armed {
            operation,
            filter: Box::new(filter),
            reached: reached_tx,
            release: release_rx,
        });
        Gate {
            reached: reached_rx,
            release: release_tx,
        }
    }

    /// Parks the calling thread when `operation` on `path` is the armed one.
    fn pass(&self, operation: GatedOperation, path: &Path) {
        let armed = {
            let mut armed = self.armed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match armed.as_ref() {
                Some(gate) if gate.operation == operation && (gate.filter)(path) => armed.take(),
                _ => None,
            }
        };
        if let Some(gate) = armed {
            let _ = gate.reached.send(path.to_path_buf());
            // A test that ends without opening the gate drops the sender.
            let _ = gate.release.recv();
        }
    }
}

impl Storage for GateStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(GateFile {
            storage: self.clone(),
            path: path.to_path_buf(),
            inner: StdStorage.open(path, mode)?,
        }))
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

#[derive(Debug)]
struct GateFile {
    storage: GateStorage,
    path: PathBuf,
    inner: Arc<dyn StorageFile>,
}

impl StorageFile for GateFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        self.inner.read_at(buf, position)
    }
    fn read_at_most(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        self.inner.read_at_most(buf, position)
    }
    fn write_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        if self.path.extension().is_some_and(|extension| extension == "log") {
            self.storage
                .segment_writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.write_at(buf, position)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.storage.pass(GatedOperation::SyncData, &self.path);
        self.inner.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.inner.allocate(len)
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

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Copies a data directory as it is on disk now.
fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn event(index: u64) -> Event {
    Event::new("e", vec![(index % 251) as u8; 900])
}

/// Opens the copy and checks that it holds exactly `acked` events, in order.
fn check_copy(dir: &Path, acked: u64) -> anyhow::Result<()> {
    let log = Log::open(dir, LogOptions::default())?;
    let topic = log.topic("t")?;
    let high_watermark = topic.high_watermark(PartitionId(0))?;
    assert!(
        high_watermark.0 >= acked,
        "the copy holds {high_watermark} events, {acked} were acknowledged"
    );
    let mut offset = Offset(0);
    while offset.0 < acked {
        let events = topic.read(PartitionId(0), offset, 64, u64::MAX)?;
        assert!(!events.is_empty(), "no event at {offset}");
        for recorded in events {
            assert_eq!(recorded.offset, offset);
            assert_eq!(recorded.payload, event(offset.0).payload, "payload at {offset}");
            offset = offset.next();
        }
    }
    drop(topic);
    log.close()?;
    Ok(())
}

fn small_segments(durability: Durability) -> TopicOptions {
    TopicOptions::default()
        .partitions(1)
        .durability(durability)
        .segment_size_bytes_max(4096)
}

#[test]
fn sealing_syncs_without_the_lock_and_a_crash_before_the_index_recovers() -> anyhow::Result<()> {
    // Goal: the worker seals a complete segment (fdatasync, `.idx`) without the
    // partition lock: appends to the partition complete while the seal's
    // fdatasync is stopped; the directory as it is then (the previous segment
    // without `.idx`, the next one with records) opens with every acked event.
    // Method: `Durability::None` (appends publish inline, the worker only
    // seals); stop the seal's fdatasync of segment 0, append from another
    // thread, copy the directory, then let the seal finish.
    let temporary = tempfile::tempdir()?;
    let storage = GateStorage::default();
    let options = LogOptions::default()
        .storage(Arc::new(storage.clone()))
        .housekeeping_interval(Duration::from_secs(3600));
    let log = Log::open(temporary.path().join("data"), options)?;
    let topic = log.create_topic("t", small_segments(Durability::None))?;
    let gate = storage.arm(GatedOperation::SyncData, |path| {
        file_name(path) == "00000000000000000000.log"
    });
    // Four 1 KiB frames fill a 4 KiB segment: the fifth append rolls. They run
    // on another thread, so that a seal done by an appender under the lock
    // fails this test rather than hangs it.
    let (first_tx, first_rx) = channel();
    let first = topic.clone();
    std::thread::spawn(move || {
        let result = (0..6u64).try_for_each(|index| {
            first
                .append(b"k".to_vec(), ExpectedSequence::Any, vec![event(index)])
                .map(|_| ())
        });
        let _ = first_tx.send(result);
    });
    let parked = gate.wait_reached();
    first_rx
        .recv_timeout(WAIT_MAX)
        .expect("appends finish while a seal syncs (no appender seals)")?;
    let mut acked = 6u64;
    assert_eq!(file_name(&parked), "00000000000000000000.log");
    // The seal is parked in its fdatasync; appends and lock-taking calls finish.
    let (done_tx, done_rx) = channel();
    let appender = topic.clone();
    std::thread::spawn(move || {
        let result = (6..9u64).try_for_each(|index| {
            appender
                .append(b"k".to_vec(), ExpectedSequence::Any, vec![event(index)])
                .map(|_| ())
        });
        let infos = appender.partition_infos();
        let _ = done_tx.send((result, infos));
    });
    let (result, infos) = done_rx
        .recv_timeout(WAIT_MAX)
        .expect("appends finish while a seal syncs (the lock is not held)");
    result?;
    acked += 3;
    assert!(infos[0].segments_count >= 2, "the partition rolled: {infos:?}");
    let image = temporary.path().join("image");
    copy_dir(&temporary.path().join("data"), &image)?;
    assert!(
        !has_file(&image, "00000000000000000000.idx")?,
        "segment 0 is not sealed yet in the image"
    );
    gate.open();
    drop(topic);
    log.close()?;
    check_copy(&image, acked)?;
    check_copy(&temporary.path().join("data"), acked)
}

/// Whether a file of that name exists anywhere below `dir`.
fn has_file(dir: &Path, name: &str) -> io::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            if has_file(&entry.path(), name)? {
                return Ok(true);
            }
        } else if entry.file_name().to_string_lossy() == name {
            return Ok(true);
        }
    }
    Ok(false)
}

#[test]
fn a_roll_creates_the_next_segment_without_the_lock_and_a_crash_there_recovers() -> anyhow::Result<()> {
    // Goal: a roll does no I/O under the lock: the writer creates the new
    // segment (header fdatasync, directory fsync) without it, so calls that
    // take the lock finish while the header sync is stopped. The directory as
    // it is then (a complete, unsealed segment and a created segment holding
    // only its header) opens with every acked event and keeps appending.
    // Method: `Durability::Always`; stop the header fdatasync of the first
    // segment after segment 0 (the worker writes the rolled group); from the
    // test thread, submit an append and read the partition infos; copy.
    let temporary = tempfile::tempdir()?;
    let storage = GateStorage::default();
    let options = LogOptions::default()
        .storage(Arc::new(storage.clone()))
        .housekeeping_interval(Duration::from_secs(3600));
    let log = Log::open(temporary.path().join("data"), options)?;
    let topic = log.create_topic("t", small_segments(Durability::Always))?;
    let gate = storage.arm(GatedOperation::SyncData, |path| {
        let name = file_name(path);
        name.ends_with(".log") && name != "00000000000000000000.log"
    });
    let mut acked = 0u64;
    for index in 0..4u64 {
        topic.append(b"k".to_vec(), ExpectedSequence::Any, vec![event(index)])?;
        acked += 1;
    }
    // The fifth append rolls; its group commit creates the segment and parks.
    // It is submitted from another thread, so that a roll doing its I/O in the
    // caller's thread under the lock fails this test rather than hangs it.
    let (first_tx, first_rx) = channel();
    let first = topic.clone();
    std::thread::spawn(move || {
        first.submit(AppendRequest::new(b"k".to_vec(), vec![event(4)]), move |result| {
            let _ = first_tx.send(result);
        });
    });
    let parked = gate.wait_reached();
    assert_eq!(file_name(&parked), "00000000000000000004.log");
    let (done_tx, done_rx) = channel();
    let other = topic.clone();
    std::thread::spawn(move || {
        let (second_tx, second_rx) = channel();
        other.submit(AppendRequest::new(b"k".to_vec(), vec![event(5)]), move |result| {
            let _ = second_tx.send(result);
        });
        let infos = other.partition_infos();
        let sequence = other.key_sequence(b"k");
        let _ = done_tx.send((infos, sequence, second_rx));
    });
    let (infos, sequence, second_rx) = done_rx
        .recv_timeout(WAIT_MAX)
        .expect("lock-taking calls finish while a new segment's header syncs");
    assert_eq!(
        infos[0].high_watermark,
        Offset(4),
        "nothing of the rolled group is published yet"
    );
    assert_eq!(sequence?, Some(crate::event::Sequence(3)));
    let image = temporary.path().join("image");
    copy_dir(&temporary.path().join("data"), &image)?;
    gate.open();
    first_rx.recv_timeout(WAIT_MAX)??;
    second_rx.recv_timeout(WAIT_MAX)??;
    acked += 2;
    drop(topic);
    log.close()?;
    check_copy(&image, 4)?;
    // The image keeps working: appends go on from where it ends.
    {
        let log = Log::open(&image, LogOptions::default())?;
        let topic = log.topic("t")?;
        for index in 4..12u64 {
            let ack = topic.append(b"k".to_vec(), ExpectedSequence::Any, vec![event(index)])?;
            assert_eq!(ack.first_offset, Offset(index));
        }
        drop(topic);
        log.close()?;
    }
    check_copy(&image, 12)?;
    check_copy(&temporary.path().join("data"), acked)
}

#[test]
fn dedup_runs_are_written_without_the_lock_and_frozen_ids_still_answer() -> anyhow::Result<()> {
    // Goal: writing the dedup memtable out as a run is a worker job without the
    // partition lock: while its fdatasync is stopped, appends with new ids are
    // acknowledged and a retry of an id in the table being written is still
    // answered as a duplicate. A crash then (a half-written `.tmp` run) opens
    // and still knows every id.
    // Method: a manual clock past the memtable's age limit makes housekeeping
    // freeze the memtable and write it; stop the run's fdatasync; append and
    // retry from another thread; copy the directory; release.
    let temporary = tempfile::tempdir()?;
    let storage = GateStorage::default();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let options = LogOptions::default()
        .storage(Arc::new(storage.clone()))
        .clock(clock.clone())
        .housekeeping_interval(Duration::from_millis(2));
    let log = Log::open(temporary.path().join("data"), options)?;
    let topic = log.create_topic(
        "t",
        TopicOptions::default().partitions(1).durability(Durability::None),
    )?;
    let gate = storage.arm(GatedOperation::SyncData, |path| {
        path.components()
            .any(|component| component.as_os_str() == "dedup")
    });
    let with_id = |index: u64| event(index).with_idempotency_id(format!("id-{index}"));
    for index in 0..3u64 {
        topic.append(b"k".to_vec(), ExpectedSequence::Any, vec![with_id(index)])?;
    }
    clock.advance(crate::limits::DEDUP_MEMTABLE_AGE_MS_MAX + 1);
    let parked = gate.wait_reached();
    assert!(
        file_name(&parked).ends_with(".tmp"),
        "a run is being written: {parked:?}"
    );
    let (done_tx, done_rx) = channel();
    let other = topic.clone();
    std::thread::spawn(move || {
        let fresh = other.append(b"k".to_vec(), ExpectedSequence::Any, vec![with_id(3)]);
        let retry = other.append(b"k".to_vec(), ExpectedSequence::Any, vec![with_id(1)]);
        let _ = done_tx.send((fresh, retry));
    });
    let (fresh, retry) = done_rx
        .recv_timeout(WAIT_MAX)
        .expect("appends finish while a dedup run syncs (the lock is not held)");
    assert_eq!(fresh?.first_offset, Offset(3));
    let retry = retry?;
    assert!(
        retry.duplicate,
        "an id in the memtable being written is still known"
    );
    assert_eq!(retry.first_offset, Offset(1));
    let image = temporary.path().join("image");
    copy_dir(&temporary.path().join("data"), &image)?;
    gate.open();
    drop(topic);
    log.close()?;
    for dir in [image, temporary.path().join("data")] {
        let log = Log::open(&dir, LogOptions::default().clock(clock.clone()))?;
        let topic = log.topic("t")?;
        for index in 0..4u64 {
            let ack = topic.append(b"k".to_vec(), ExpectedSequence::Any, vec![with_id(index)])?;
            assert!(
                ack.duplicate,
                "id {index} is known after reopening {}",
                dir.display()
            );
            assert_eq!(ack.first_offset, Offset(index));
        }
        drop(topic);
        log.close()?;
    }
    Ok(())
}

#[test]
fn the_worker_spaces_idle_housekeeping_rounds_by_the_backed_off_interval() -> anyhow::Result<()> {
    // Goal: the worker's schedule uses the backed-off interval, not only the
    // state's arithmetic: on a partition nothing is appended to, each round
    // comes at least twice as late after the one before as the previous gap,
    // up to the cap. Method: a 5 ms base; the worker's own rounds are recorded
    // (test builds only) and waited for on a condition variable of their own. A
    // round never starts before its interval has passed, so the gaps are lower
    // bounds: a worker that ignored the back-off would space them by the base.
    let base = Duration::from_millis(5);
    let (_temporary, log, topic, partition) = one_partition_log(base)?;
    let rounds_wanted = 8;
    let rounds = {
        let state = partition.lock();
        let (state, timeout) = partition
            .housekeeping_round
            .wait_timeout_while(state, WAIT_MAX, |state| {
                state.housekeeping_rounds.len() < rounds_wanted
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        assert!(!timeout.timed_out(), "{rounds_wanted} housekeeping rounds ran");
        state.housekeeping_rounds.clone()
    };
    let cap_shift = crate::config::HOUSEKEEPING_BACKOFF_SHIFT_MAX;
    for (index, pair) in rounds.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        // After the first round (index 0) the interval is 2 * base, then 4 * base...
        let shift = (index as u32 + 1).min(cap_shift);
        let interval = base * (1 << shift);
        assert!(
            gap >= interval,
            "gap {index} is {gap:?}, at least {interval:?} expected: {rounds:?}"
        );
    }
    drop(topic);
    log.close()?;
    Ok(())
}

#[test]
fn idle_housekeeping_backs_off_and_an_append_or_an_option_change_resets_it() -> anyhow::Result<()> {
    // Goal: each housekeeping round that finds nothing appended since the one
    // before doubles the next interval, up to the cap; an append brings it back
    // to the base at once, and so does a change of the topic's options.
    // Method: an hour-long base interval keeps the worker from running rounds
    // of its own; rounds are started by hand under the partition's lock.
    let base = Duration::from_secs(3600);
    let (_temporary, log, topic, partition) = one_partition_log(base)?;
    let cap = base * (1 << crate::config::HOUSEKEEPING_BACKOFF_SHIFT_MAX);
    let mut intervals = Vec::new();
    for _ in 0..8 {
        let mut state = partition.lock();
        state.housekeeping_started();
        intervals.push(state.housekeeping_interval(base));
    }
    assert_eq!(
        intervals,
        [2, 4, 8, 16, 32, 32, 32, 32].map(|factor| base * factor),
        "idle rounds double the interval up to the cap"
    );
    assert_eq!(intervals.last(), Some(&cap));
    topic.append(b"k".to_vec(), ExpectedSequence::Any, vec![event(0)])?;
    {
        let mut state = partition.lock();
        assert_eq!(
            state.housekeeping_interval(base),
            base,
            "an append: the base interval"
        );
        state.housekeeping_started();
        assert_eq!(
            state.housekeeping_interval(base),
            base,
            "the round after appends stays at the base"
        );
        state.housekeeping_started();
        assert_eq!(state.housekeeping_interval(base), base * 2, "then idle again");
    }
    let change = crate::config::TopicChange {
        retention_age_ms: Some(Some(60_000)),
        ..Default::default()
    };
    topic.update_options(&change, "test")?;
    assert_eq!(
        partition.lock().housekeeping_interval(base),
        base,
        "a change of options (a new retention) applies within the base interval"
    );
    drop(topic);
    log.close()?;
    Ok(())
}

/// A log with one topic of one partition under durability none, whose
/// housekeeping runs every `base` (the directory lives as long as the first).
fn one_partition_log(
    base: Duration,
) -> anyhow::Result<(tempfile::TempDir, Log, crate::Topic, Arc<super::Partition>)> {
    let temporary = tempfile::tempdir()?;
    let log = Log::open(
        temporary.path().join("data"),
        LogOptions::default().housekeeping_interval(base),
    )?;
    let topic = log.create_topic(
        "t",
        TopicOptions::default().partitions(1).durability(Durability::None),
    )?;
    let partition = Arc::clone(&topic.partitions()[0]);
    Ok((temporary, log, topic, partition))
}

/// Submits `count` single-event appends to key `k` and returns a receiver of
/// their results.
fn submit_many(topic: &crate::Topic, first: u64, count: u64) -> Receiver<crate::Result<crate::AppendAck>> {
    let (sender, receiver) = channel();
    for index in first..first + count {
        let sender = sender.clone();
        topic.submit(
            AppendRequest::new(b"k".to_vec(), vec![event(index)]),
            move |result| {
                let _ = sender.send(result);
            },
        );
    }
    receiver
}

#[test]
fn coalesced_appends_share_one_write_and_complete_when_the_scope_ends() -> anyhow::Result<()> {
    // Goal: appends submitted inside `coalesce_writes` are accepted at once but
    // written together when the scope ends (one segment write for all, under
    // `None`; one group commit under `Always`), each completed once, in order;
    // outside a scope every append is written by itself.
    // Method: count the writes to segment files; look at the completions before
    // and after the scope ends.
    for durability in [Durability::None, Durability::Always] {
        let temporary = tempfile::tempdir()?;
        let storage = GateStorage::default();
        let log = Log::open(
            temporary.path().join("data"),
            LogOptions::default()
                .storage(Arc::new(storage.clone()))
                .housekeeping_interval(Duration::from_secs(3600)),
        )?;
        let topic = log.create_topic("t", TopicOptions::default().partitions(1).durability(durability))?;
        let writes = || storage.segment_writes.load(std::sync::atomic::Ordering::Relaxed);
        let before = writes();
        let results = crate::coalesce_writes(|| {
            let results = submit_many(&topic, 0, 50);
            if durability == Durability::None {
                assert!(
                    results.try_recv().is_err(),
                    "a held append is not completed inside the scope"
                );
                assert_eq!(writes(), before, "nothing is written inside the scope");
            }
            results
        });
        let acks = (0..50)
            .map(|_| results.recv_timeout(WAIT_MAX))
            .collect::<std::result::Result<Vec<_>, _>>()?
            .into_iter()
            .collect::<crate::Result<Vec<_>>>()?;
        let mut offsets: Vec<u64> = acks.iter().map(|ack| ack.first_offset.0).collect();
        offsets.sort_unstable();
        assert_eq!(
            offsets,
            (0..50).collect::<Vec<_>>(),
            "{durability:?}: every append once"
        );
        // Under `Always` a worker still busy with its start may take the first
        // appends as a group of their own before the scope ends.
        let writes_max = if durability == Durability::None { 1 } else { 2 };
        assert!(
            (1..=writes_max).contains(&(writes() - before)),
            "{durability:?}: {} writes for 50 coalesced appends",
            writes() - before
        );
        let before = writes();
        let results = submit_many(&topic, 50, 3);
        for _ in 0..3 {
            results.recv_timeout(WAIT_MAX)??;
        }
        if durability == Durability::None {
            assert_eq!(
                writes() - before,
                3,
                "outside a scope each append is written by itself"
            );
        }
        assert_eq!(topic.high_watermark(PartitionId(0))?, Offset(53));
        drop(topic);
        log.close()?;
    }
    Ok(())
}

#[test]
fn a_scope_that_fills_the_open_group_or_waits_for_its_own_append_does_not_hang() -> anyhow::Result<()> {
    // Goal: the appends a scope holds never make it wait for itself: more
    // appends than an open group takes (back-pressure would wait for room
    // that only this thread's release makes), and a blocking append inside
    // the scope, both finish, and every append lands once.
    // Method: run the scope on another thread; a hang fails at WAIT_MAX.
    let temporary = tempfile::tempdir()?;
    let log = Log::open(
        temporary.path().join("data"),
        LogOptions::default().housekeeping_interval(Duration::from_secs(3600)),
    )?;
    let topic = log.create_topic(
        "t",
        TopicOptions::default().partitions(1).durability(Durability::None),
    )?;
    let count = crate::limits::PENDING_APPENDS_COUNT_MAX as u64 + 10;
    let (done_tx, done_rx) = channel();
    let scoped = topic.clone();
    std::thread::spawn(move || {
        let outcome = crate::coalesce_writes(|| {
            let results = submit_many(&scoped, 0, count);
            let blocking = scoped.append(b"k".to_vec(), ExpectedSequence::Any, vec![event(count)]);
            let batch = scoped.append_batch(vec![AppendRequest::new(b"k".to_vec(), vec![event(count + 1)])]);
            (results, blocking, batch)
        });
        let _ = done_tx.send(outcome);
    });
    let (results, blocking, batch) = done_rx
        .recv_timeout(WAIT_MAX)
        .expect("a scope never waits for its own held appends");
    assert_eq!(
        blocking?.first_offset,
        Offset(count),
        "the blocking append comes after the held ones"
    );
    assert_eq!(
        batch.into_iter().next().expect("one result")?.first_offset,
        Offset(count + 1)
    );
    for _ in 0..count {
        results.recv_timeout(WAIT_MAX)??;
    }
    assert_eq!(topic.high_watermark(PartitionId(0))?, Offset(count + 2));
    drop(topic);
    log.close()?;
    Ok(())
}

//! Storage failures through `FaultyStorage`: failed and short writes, a full
//! disk, a failed fsync, and a loop of simulated power cuts.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use stele::Sequence;

use stele::io::{Fault, FaultyStorage};
use stele::{
    AppendAck, Direction, Durability, ErrorKind, Event, ExpectedSequence, Log, LogOptions, Offset,
    PartitionId, RecordedEvent, Topic, TopicOptions,
};

use crate::support::{self, Rng, SeedGuard};

fn faulty_log(dir: &Path, storage: &FaultyStorage) -> Log {
    Log::open(dir, LogOptions::default().storage(Arc::new(storage.clone()))).expect("open log")
}

fn event(payload: &str) -> Event {
    Event::new("e", payload.as_bytes().to_vec())
}

fn read_all(topic: &Topic, partition: PartitionId) -> Vec<RecordedEvent> {
    let earliest = topic.partition_infos()[partition.0 as usize].earliest;
    topic
        .read(partition, earliest, 100_000, u64::MAX)
        .expect("read partition")
}

fn payloads(events: &[RecordedEvent]) -> Vec<String> {
    events
        .iter()
        .map(|event| String::from_utf8(event.payload.clone()).expect("utf-8"))
        .collect()
}

#[test]
fn a_failed_or_short_write_fails_the_append_and_later_appends_land_at_the_right_offsets() {
    // Goal: a write error leaves no trace: the append fails with an I/O error
    // naming the segment, nothing of it is visible or survives a reopen, and the
    // next append takes its offsets and sequences. Method: for each write fault and
    // each way of writing (group commit with `Always`, inline with `None`), arm
    // the fault on segment files, append a two-event call, check, append again,
    // reopen.
    for fault in [Fault::WriteError, Fault::ShortWrite] {
        for durability in [Durability::Always, Durability::None] {
            let context = format!("{fault:?} with {durability}");
            let dir = tempfile::tempdir().expect("tempdir");
            let storage = FaultyStorage::new();
            let log = faulty_log(dir.path(), &storage);
            let topic = log
                .create_topic("t", TopicOptions::default().partitions(1).durability(durability))
                .expect("create");
            for index in 0..3 {
                topic
                    .append("k", ExpectedSequence::Any, vec![event(&format!("ok-{index}"))])
                    .expect("append");
            }
            storage.arm(fault, ".log", 0);
            let error = topic
                .append(
                    "k",
                    ExpectedSequence::Exact(Sequence(2)),
                    vec![event("lost-0"), event("lost-1")],
                )
                .expect_err(&context);
            assert_eq!(error.kind(), ErrorKind::Io, "{context}: {error}");
            assert!(error.to_string().contains(".log"), "{context}: {error}");
            assert_eq!(storage.injected_count(), 1, "{context}");
            assert_eq!(topic.high_watermark(PartitionId(0)).expect("hw"), Offset(3));
            assert_eq!(
                topic.key_sequence(b"k").expect("sequence"),
                Some(Sequence(2)),
                "{context}"
            );
            assert_eq!(
                payloads(&read_all(&topic, PartitionId(0))),
                ["ok-0", "ok-1", "ok-2"],
                "{context}"
            );
            let ack = topic
                .append(
                    "k",
                    ExpectedSequence::Exact(Sequence(2)),
                    vec![event("ok-3"), event("ok-4")],
                )
                .expect("append after the failure");
            assert_eq!(
                (ack.first_offset, ack.first_sequence),
                (Offset(3), Sequence(3)),
                "{context}"
            );
            drop(topic);
            log.close().expect("close");

            let log = Log::open(dir.path(), LogOptions::default()).expect("reopen");
            let topic = log.topic("t").expect("topic");
            assert_eq!(
                payloads(&read_all(&topic, PartitionId(0))),
                ["ok-0", "ok-1", "ok-2", "ok-3", "ok-4"],
                "{context}"
            );
            assert_eq!(topic.recovery_reports()[0].tail.bytes_cut, 0, "{context}");
        }
    }
}

#[test]
fn a_full_disk_fails_appends_with_disk_full_until_space_returns() {
    // Goal: ENOSPC is reported as DiskFull, appends (including ones that need a
    // new segment) write nothing, reads keep working, and appends resume when
    // space returns. A segment file left half-created by a failed roll must not
    // break a later reopen. Method: 4 KiB segments; fill the active segment until
    // a large append would roll; with the disk full, try a large (rolling) and a
    // small append; free the disk; append small events into the old segment, then
    // enough to roll twice; reopen and compare.
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = FaultyStorage::new();
    let log = faulty_log(dir.path(), &storage);
    let topic = log
        .create_topic(
            "t",
            TopicOptions::default().partitions(1).segment_size_bytes_max(4096),
        )
        .expect("create");
    let mut expected = Vec::new();
    // 20 frames of 182 bytes after the 40-byte header: 3680 bytes, so a 1 KiB
    // append no longer fits the first segment but a small one does.
    for index in 0..20 {
        let payload = format!("fill-{index:03}-{}", "x".repeat(100));
        topic
            .append("k", ExpectedSequence::Any, vec![event(&payload)])
            .expect("append");
        expected.push(payload);
    }
    assert_eq!(topic.partition_infos()[0].segments_count, 1);
    storage.set_disk_full(true);
    let large = "L".repeat(1024);
    for payload in [large.as_str(), "small", large.as_str()] {
        let error = topic
            .append("k", ExpectedSequence::Any, vec![event(payload)])
            .expect_err("disk is full");
        assert_eq!(error.kind(), ErrorKind::DiskFull, "{error}");
    }
    assert_eq!(payloads(&read_all(&topic, PartitionId(0))), expected);
    assert_eq!(
        topic
            .read_key(b"k", None, Direction::Backwards, 1)
            .expect("read key")[0]
            .sequence,
        Sequence(19)
    );
    assert_eq!(topic.high_watermark(PartitionId(0)).expect("hw"), Offset(20));
    storage.set_disk_full(false);
    // Small appends still fit the old segment; then enough to roll twice.
    for index in 0..40 {
        let payload = format!("after-{index:03}-{}", "y".repeat(if index < 2 { 1 } else { 200 }));
        let ack = topic
            .append(
                "k",
                ExpectedSequence::Exact(Sequence(19 + index)),
                vec![event(&payload)],
            )
            .expect("append after space returned");
        assert_eq!(ack.first_offset, Offset(20 + index));
        expected.push(payload);
    }
    assert!(topic.partition_infos()[0].segments_count >= 3);
    drop(topic);
    log.close().expect("close");
    let log = Log::open(dir.path(), LogOptions::default()).expect("reopen after a full disk");
    let topic = log.topic("t").expect("topic");
    assert_eq!(payloads(&read_all(&topic, PartitionId(0))), expected);
    assert_eq!(topic.key_sequence(b"k").expect("sequence"), Some(Sequence(59)));
}

#[test]
fn a_failed_fsync_poisons_the_partition_and_reopen_recovers_every_acknowledged_event() {
    // Goal: an fsync failure is never retried or ignored: that append fails with
    // Io, every later one with Poisoned, reads of acknowledged data keep working,
    // and a reopen recovers every acknowledged event. The failed append is not
    // acknowledged; whether its bytes reached the disk is unknown, so after the
    // reopen it is either wholly present or wholly absent, and a retry by its
    // idempotency id is answered consistently. Method: arm SyncError on the
    // segment, append, check errors and reads, close, reopen with plain storage.
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = FaultyStorage::new();
    let log = faulty_log(dir.path(), &storage);
    let topic = log
        .create_topic("t", TopicOptions::default().partitions(1))
        .expect("create");
    let mut acknowledged = Vec::new();
    for index in 0..5 {
        let payload = format!("ok-{index}");
        topic
            .append(
                "k",
                ExpectedSequence::Any,
                vec![event(&payload).with_idempotency_id(payload.clone())],
            )
            .expect("append");
        acknowledged.push(payload);
    }
    storage.arm(Fault::SyncError, ".log", 0);
    let failed = vec![
        event("failed-0").with_idempotency_id("failed-0"),
        event("failed-1").with_idempotency_id("failed-1"),
    ];
    let error = topic
        .append("k", ExpectedSequence::Exact(Sequence(4)), failed.clone())
        .expect_err("fsync fails");
    assert_eq!(error.kind(), ErrorKind::Io, "{error}");
    for attempt in 0..3 {
        let error = topic
            .append(
                "k",
                ExpectedSequence::Any,
                vec![event(&format!("later-{attempt}"))],
            )
            .expect_err("poisoned");
        assert_eq!(error.kind(), ErrorKind::Poisoned, "{error}");
    }
    assert_eq!(storage.injected_count(), 1, "the failed sync is not retried");
    assert_eq!(payloads(&read_all(&topic, PartitionId(0))), acknowledged);
    assert_eq!(topic.key_sequence(b"k").expect("sequence"), Some(Sequence(4)));
    drop(topic);
    drop(log);

    let log = Log::open(dir.path(), LogOptions::default()).expect("reopen");
    let topic = log.topic("t").expect("topic");
    let found = payloads(&read_all(&topic, PartitionId(0)));
    assert_eq!(found[..5], acknowledged[..], "{found:?}");
    let failed_present = match &found[5..] {
        [] => false,
        [first, second] if first == "failed-0" && second == "failed-1" => true,
        other => panic!("the failed append is half present or mangled: {other:?}"),
    };
    let retry = topic
        .append("k", ExpectedSequence::Exact(Sequence(4)), failed)
        .expect("retry after reopen");
    assert_eq!(retry.duplicate, failed_present);
    assert_eq!(
        (retry.first_offset, retry.first_sequence),
        (Offset(5), Sequence(5))
    );
    let later = topic
        .append("k", ExpectedSequence::Exact(Sequence(6)), vec![event("later")])
        .expect("append after reopen");
    assert_eq!(later.first_offset, Offset(7));
}

/// An acknowledged append in the crash loop.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    ids: Vec<String>,
    ack: AppendAck,
}

/// What one round of the crash loop did.
#[derive(Default)]
struct RoundLog {
    acked: Vec<Acked>,
    /// Calls that failed: they may or may not have survived, but only wholly.
    failed: Vec<Vec<String>>,
}

const KEYS: [&str; 6] = ["k0", "k1", "k2", "k3", "k4", "k5"];

fn crash_rounds() -> u64 {
    std::env::var("STELE_CRASH_ROUNDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(12)
}

/// Runs one round: open, concurrent appends with an optional armed fault, drop.
fn crash_round(dir: &Path, storage: &FaultyStorage, round: u64, rng: &mut Rng) -> RoundLog {
    let log = faulty_log(dir, storage);
    let topic = log.topic("t").expect("topic");
    let faults = [Fault::SyncError, Fault::WriteError, Fault::ShortWrite];
    if rng.below(4) != 0 {
        let fault = faults[rng.below(3) as usize];
        storage.arm(fault, ".log", rng.below(12));
    }
    let shared = Arc::new(Mutex::new(RoundLog::default()));
    std::thread::scope(|scope| {
        for thread in 0..3u64 {
            let topic = topic.clone();
            let shared = Arc::clone(&shared);
            let mut rng = Rng::new(rng.next() ^ thread);
            scope.spawn(move || {
                for call in 0..10u64 {
                    let key = KEYS[rng.below(KEYS.len() as u64) as usize];
                    let count = 1 + rng.below(3);
                    let ids: Vec<String> = (0..count)
                        .map(|index| format!("r{round}-t{thread}-c{call}-e{index}"))
                        .collect();
                    let events = ids
                        .iter()
                        .map(|id| event(id).with_idempotency_id(id.clone()))
                        .collect();
                    let result = topic.append(key, ExpectedSequence::Any, events);
                    let mut shared = shared.lock().expect("round log");
                    match result {
                        Ok(ack) => shared.acked.push(Acked {
                            key: key.to_string(),
                            ids,
                            ack,
                        }),
                        Err(error) => {
                            assert!(
                                matches!(error.kind(), ErrorKind::Io | ErrorKind::Poisoned),
                                "unexpected error {error}"
                            );
                            shared.failed.push(ids);
                        }
                    }
                }
            });
        }
    });
    drop(topic);
    // Drop closes cleanly what it can; the power cut comes after.
    drop(log);
    storage.crash(rng.next()).expect("simulate the crash");
    std::mem::take(&mut *shared.lock().expect("round log"))
}

/// Checks the reopened log against every acknowledged call so far.
fn check_after_crash(topic: &Topic, acked: &[Acked], failed: &[Vec<String>]) {
    let mut by_id: HashMap<String, RecordedEvent> = HashMap::new();
    for partition in 0..topic.partitions_count() {
        let events = read_all(topic, PartitionId(partition));
        for (index, event) in events.iter().enumerate() {
            assert_eq!(event.offset, Offset(index as u64), "offsets are dense from 0");
            let id = String::from_utf8(event.idempotency_id.clone().expect("every event has an id"))
                .expect("utf-8");
            assert!(
                by_id.insert(id.clone(), event.clone()).is_none(),
                "event {id} present twice"
            );
        }
        assert_eq!(
            topic.high_watermark(PartitionId(partition)).expect("hw"),
            Offset(events.len() as u64)
        );
    }
    for call in acked {
        for (index, id) in call.ids.iter().enumerate() {
            let event = by_id
                .get(id)
                .unwrap_or_else(|| panic!("acknowledged event {id} lost ({call:?})"));
            assert_eq!(event.partition, call.ack.partition, "{id}");
            assert_eq!(
                event.offset,
                Offset(call.ack.first_offset.0 + index as u64),
                "{id}"
            );
            assert_eq!(event.sequence, call.ack.first_sequence + index as u64, "{id}");
            assert_eq!(event.key, call.key.as_bytes(), "{id}");
        }
    }
    for ids in failed {
        let present = ids.iter().filter(|id| by_id.contains_key(*id)).count();
        assert!(
            present == 0 || present == ids.len(),
            "a failed call is half present: {ids:?}"
        );
    }
    for key in KEYS {
        let history = topic
            .read_key(key.as_bytes(), None, Direction::Forwards, 100_000)
            .expect("read key");
        let sequences: Vec<u64> = history.iter().map(|event| event.sequence.0).collect();
        assert_eq!(
            sequences,
            (0..history.len() as u64).collect::<Vec<_>>(),
            "key {key}"
        );
        assert!(history.windows(2).all(|pair| pair[0].offset < pair[1].offset));
        let in_log: usize = by_id.values().filter(|event| event.key == key.as_bytes()).count();
        assert_eq!(history.len(), in_log, "key {key}");
        assert_eq!(
            topic.key_sequence(key.as_bytes()).expect("sequence"),
            history.last().map(|event| event.sequence),
            "key {key}"
        );
    }
    // Retries of acknowledged calls are recognised by their ids.
    for call in acked {
        let events = call
            .ids
            .iter()
            .map(|id| event(id).with_idempotency_id(id.clone()))
            .collect();
        let retry = topic
            .append(call.key.clone(), ExpectedSequence::Any, events)
            .expect("retry");
        assert!(retry.duplicate, "retry of {call:?} not recognised: {retry:?}");
        assert_eq!(retry.first_offset, call.ack.first_offset, "{call:?}");
        assert_eq!(retry.last_sequence, call.ack.last_sequence, "{call:?}");
    }
}

#[test]
fn acknowledged_events_survive_a_loop_of_simulated_power_cuts() {
    // Goal: whatever a power cut does to unsynced bytes, every acknowledged event
    // survives exactly once at its offset, offsets stay dense, key sequences stay
    // dense, and acknowledged idempotency ids are still recognised. Method: rounds
    // on one directory; each opens with FaultyStorage, arms a random write or sync
    // fault (most rounds), appends from three threads, drops the log, then
    // `crash()` cuts or scribbles the unsynced tails; a plain reopen then checks
    // everything acknowledged in every round so far.
    let seed = support::seed("crash loop");
    let _guard = SeedGuard {
        test: "acknowledged_events_survive_a_loop_of_simulated_power_cuts",
        seed,
    };
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = Log::open(dir.path(), LogOptions::default()).expect("open");
        log.create_topic(
            "t",
            TopicOptions::default().partitions(2).segment_size_bytes_max(4096),
        )
        .expect("create");
        log.close().expect("close");
    }
    let mut acked: Vec<Acked> = Vec::new();
    let mut failed: Vec<Vec<String>> = Vec::new();
    let mut injected = 0;
    for round in 0..crash_rounds() {
        let storage = FaultyStorage::new();
        let outcome = crash_round(dir.path(), &storage, round, &mut rng);
        injected += storage.injected_count();
        acked.extend(outcome.acked);
        failed.extend(outcome.failed);
        let log = Log::open(dir.path(), LogOptions::default())
            .unwrap_or_else(|error| panic!("round {round}: reopen after crash: {error}"));
        let topic = log.topic("t").expect("topic");
        check_after_crash(&topic, &acked, &failed);
        drop(topic);
        log.close().expect("close");
    }
    let per_partition: BTreeMap<u32, usize> = acked.iter().fold(BTreeMap::new(), |mut map, call| {
        *map.entry(call.ack.partition.0).or_default() += 1;
        map
    });
    assert!(injected > 0, "no fault was injected in any round");
    assert!(per_partition.len() == 2, "{per_partition:?}");
}

/// Appends `count` small events per partition to a 4-partition topic with
/// 4 KiB segments (many rolls), closes the log, and returns each partition's
/// acknowledged payloads in offset order.
fn many_small_segments(dir: &Path, storage: &FaultyStorage, count: usize) -> Vec<Vec<String>> {
    let log = faulty_log(dir, storage);
    let topic = log
        .create_topic(
            "t",
            TopicOptions::default()
                .partitions(4)
                .durability(Durability::None)
                .segment_size_bytes_max(4096),
        )
        .expect("create");
    let mut acked = vec![Vec::new(); 4];
    for index in 0..count * 4 {
        let payload = format!("event-{index:05}-{}", "x".repeat(index % 40));
        let ack = topic
            .append(
                format!("key-{}", index % 13),
                ExpectedSequence::Any,
                vec![event(&payload)],
            )
            .expect("append");
        let partition = &mut acked[ack.partition.0 as usize];
        assert_eq!(ack.first_offset, Offset(partition.len() as u64));
        partition.push(payload);
    }
    log.close().expect("close");
    for (index, partition) in acked.iter().enumerate() {
        assert!(
            partition.len() > 100,
            "partition {index} holds {}",
            partition.len()
        );
        let segments = support::segment_files(&support::partition_dir(dir, "t", index as u32));
        assert!(segments.len() >= 5, "partition {index}: {segments:?}");
    }
    acked
}

fn assert_served(topic: &Topic, acked: &[Vec<String>], context: &str) {
    for (index, wanted) in acked.iter().enumerate() {
        let found = payloads(&read_all(topic, PartitionId(index as u32)));
        assert_eq!(&found, wanted, "{context}: partition {index}");
    }
}

#[test]
fn opening_partitions_in_parallel_uses_one_descriptor_per_segment_when_later_opens_see_other_sizes() {
    // Goal: recovery decides everything about a file from one descriptor and
    // one size measured on it, so a file system whose other opens of the same
    // file report another size (a stale metadata cache) cannot make it refuse
    // intact data, even with partitions opening on several threads. Method:
    // write a 4-partition topic with many 4 KiB segments; reopen it repeatedly
    // with a `FaultyStorage` whose every open of a partition's file (`.log`,
    // `.idx`, checkpoint, dedup runs) after the first reports a size off by a
    // few bytes, by a frame, or by whole pages, larger or smaller, and yields
    // to interleave the partitions' opens; every acknowledged event must be
    // served, nothing reported cut, and no file opened twice (before one open
    // per file, a second open of a trailing segment disagreed with its `.idx`
    // and open failed with Corruption).
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = FaultyStorage::new();
    let acked = many_small_segments(dir.path(), &storage, 250);
    for delta in [-7i64, -300, 1, 300, 3 * 4096] {
        let context = format!("later opens off by {delta} bytes");
        storage.lie_about_sizes("/p0000", delta, 1);
        let log = Log::open(
            dir.path(),
            LogOptions::default().storage(Arc::new(storage.clone())),
        )
        .unwrap_or_else(|error| panic!("{context}: open: {error}"));
        let topic = log.topic("t").expect("topic");
        assert_served(&topic, &acked, &context);
        for (index, report) in topic.recovery_reports().iter().enumerate() {
            assert_eq!(
                report.tail,
                stele::TailRecovery::default(),
                "{context}: partition {index}"
            );
            assert_eq!(report.sealed_excess, Vec::new(), "{context}: partition {index}");
        }
        assert_eq!(
            storage.lied_to_count(),
            0,
            "{context}: a file of a partition was opened twice"
        );
        drop(topic);
        log.close().expect("close");
        storage.lie_about_sizes(".log", 0, 0);
    }
}

#[test]
fn descriptors_that_report_sizes_past_the_data_are_read_to_the_real_end_without_faulting() {
    // Goal: when the open descriptor itself reports more bytes than the file
    // holds (a size that ran ahead of the data), recovery reads through the
    // descriptor to the real end instead of touching a mapping past it
    // (which would be SIGBUS), serves every acknowledged event, and reports
    // the missing bytes: cut from the active segment's tail, unreadable past a
    // sealed segment's indexed end. Method: as above, but every descriptor of
    // a `.log` lies, by one byte and by whole pages; then a truthful reopen
    // finds nothing to repair.
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = FaultyStorage::new();
    let acked = many_small_segments(dir.path(), &storage, 250);
    for delta in [1i64, 3 * 4096] {
        let context = format!("every descriptor {delta} bytes long");
        storage.lie_about_sizes(".log", delta, 0);
        let log = Log::open(
            dir.path(),
            LogOptions::default().storage(Arc::new(storage.clone())),
        )
        .unwrap_or_else(|error| panic!("{context}: open: {error}"));
        let topic = log.topic("t").expect("topic");
        assert_served(&topic, &acked, &context);
        for (index, report) in topic.recovery_reports().iter().enumerate() {
            assert_eq!(
                report.tail.bytes_cut, delta as u64,
                "{context}: partition {index}"
            );
            assert_eq!(report.tail.records_cut, 0, "{context}: partition {index}");
            let sealed =
                support::segment_files(&support::partition_dir(dir.path(), "t", index as u32)).len() - 1;
            assert_eq!(report.sealed_excess.len(), sealed, "{context}: partition {index}");
            for excess in &report.sealed_excess {
                assert_eq!(
                    excess.kind,
                    stele::ExcessKind::Unreadable,
                    "{context}: {excess:?}"
                );
                assert_eq!(excess.bytes_count, delta as u64, "{context}: {excess:?}");
            }
        }
        drop(topic);
        log.close().expect("close");
        storage.lie_about_sizes(".log", 0, 0);
        let log = faulty_log(dir.path(), &storage);
        let topic = log.topic("t").expect("topic");
        assert_served(&topic, &acked, &context);
        for report in topic.recovery_reports() {
            assert_eq!(
                report.tail,
                stele::TailRecovery::default(),
                "{context}: truthful reopen"
            );
            assert_eq!(report.sealed_excess, Vec::new(), "{context}: truthful reopen");
        }
        drop(topic);
        log.close().expect("close");
    }
}

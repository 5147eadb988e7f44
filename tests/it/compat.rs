//! Format compatibility: the committed fixtures of every supported on-disk version
//! open with the current code and read back exactly what was written.
//!
//! `tests/fixtures/v1/` was written by `write_v1_fixture` (run with
//! `STELE_WRITE_FIXTURES=1` to rewrite it, only when FORMAT.md's version 1 is
//! still what the code writes: no longer for dedup runs, which are written as
//! version 2 now, so rewriting would lose the fixture's version 1 runs). The test copies it, opens the copy, and checks
//! every kind of file: segments (sealed with `.idx`, and active), checkpoints,
//! the dedup index, the cursor and producer journals, and the topic meta.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use stele::Sequence;

use stele::{
    AppendRequest, Direction, Event, ExpectedSequence, Log, LogOptions, ManualClock, Offset, PartitionId,
    ProducerStamp, TopicOptions,
};

const FIXTURE_CLOCK_MS: i64 = 1_750_000_000_000;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

fn options() -> TopicOptions {
    TopicOptions::default()
        .partitions(2)
        .segment_size_bytes_max(4096)
        .dedup_window_ms(24 * 60 * 60 * 1000)
}

fn key(index: u64) -> String {
    format!("aggregate-{}", index % 5)
}

fn write_v1_fixture(dir: &Path) {
    let clock = Arc::new(ManualClock::new(FIXTURE_CLOCK_MS));
    let log = Log::open(dir, LogOptions::default().clock(clock.clone())).expect("open");
    let topic = log.create_topic("fixture", options()).expect("create");
    let (producer, epoch) = topic.open_producer("fixture-producer").expect("producer");
    let mut producer_sequences = [0u64; 2];
    for index in 0..120u64 {
        clock.advance(10);
        let key = key(index);
        let mut event = Event::new("happened", format!("payload {index}").into_bytes())
            .with_header("index", index.to_le_bytes().to_vec());
        if index % 3 == 0 {
            event = event.with_idempotency_id(format!("id-{index}"));
        }
        let mut request = AppendRequest::new(key.clone(), vec![event]);
        if index % 4 == 0 {
            let partition = topic.partition_for(key.as_bytes()).0 as usize;
            request = request.stamped(ProducerStamp {
                producer,
                epoch,
                sequence: Sequence(producer_sequences[partition]),
            });
            producer_sequences[partition] += 1;
        }
        topic.append_request(request).expect("append");
    }
    topic
        .commit_cursor(
            "fixture-cursor",
            &[(PartitionId(0), Offset(3)), (PartitionId(1), Offset(5))],
            false,
        )
        .expect("cursor");
    log.close().expect("close");
    drop(log);
    std::fs::remove_file(dir.join("LOCK")).expect("remove lock");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn v1_fixture_opens_with_current_code() {
    // Goal: data written by format version 1 stays readable, with its derived
    // state (sequences, dedup ids, producer state, cursors) intact.
    let fixture = fixture_dir();
    if std::env::var_os("STELE_WRITE_FIXTURES").is_some() {
        let _ = std::fs::remove_dir_all(&fixture);
        write_v1_fixture(&fixture);
    }
    let segments: Vec<_> = std::fs::read_dir(fixture.join("topics/fixture/p00000"))
        .expect("fixture partition exists (run with STELE_WRITE_FIXTURES=1 to create it)")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(segments.iter().any(|name| name.ends_with(".idx")), "{segments:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&fixture, dir.path());
    let clock = Arc::new(ManualClock::new(FIXTURE_CLOCK_MS + 10_000));
    let log = Log::open(dir.path(), LogOptions::default().clock(clock)).expect("the v1 fixture opens");
    let topic = log.topic("fixture").expect("topic");
    assert_eq!(topic.options(), options());
    for report in topic.recovery_reports() {
        assert_eq!(
            report.tail,
            stele::TailRecovery::default(),
            "a cleanly closed fixture has no torn tail"
        );
    }
    let total: u64 = topic
        .partition_infos()
        .iter()
        .map(|info| info.high_watermark.0)
        .sum();
    assert_eq!(total, 120);
    for key_index in 0..5u64 {
        let key = key(key_index);
        let history = topic
            .read_key(key.as_bytes(), None, Direction::Forwards, 1000)
            .expect("history");
        let expected: Vec<String> = (0..120u64)
            .filter(|index| index % 5 == key_index)
            .map(|index| format!("payload {index}"))
            .collect();
        let found: Vec<String> = history
            .iter()
            .map(|event| String::from_utf8(event.payload.clone()).expect("utf-8"))
            .collect();
        assert_eq!(found, expected);
        assert_eq!(
            topic.key_sequence(key.as_bytes()).expect("sequence"),
            Some(Sequence(23))
        );
    }
    // An idempotency id from the fixture's dedup runs (format version 1: id-only
    // fingerprints) is still recognised for its key and content, and only there.
    let stored = || {
        Event::new("happened", b"payload 0".to_vec())
            .with_header("index", 0u64.to_le_bytes().to_vec())
            .with_idempotency_id("id-0")
    };
    let partition = topic.partition_for(b"aggregate-0");
    let high_watermark = topic.high_watermark(partition).expect("hw");
    let retry = topic
        .append("aggregate-0", ExpectedSequence::Any, vec![stored()])
        .expect("retry");
    assert!(retry.duplicate);
    assert_eq!(
        (retry.partition, retry.first_offset, retry.first_sequence),
        (partition, Offset(0), Sequence(0))
    );
    let changed = topic
        .append(
            "aggregate-0",
            ExpectedSequence::Any,
            vec![Event::new("happened", b"payload 0".to_vec()).with_idempotency_id("id-0")],
        )
        .expect_err("other headers");
    assert!(
        matches!(
            changed,
            stele::Error::IdempotencyIdReused {
                offset: Offset(0),
                sequence: Sequence(0),
                ..
            }
        ),
        "{changed}"
    );
    assert_eq!(topic.high_watermark(partition).expect("hw"), high_watermark);
    let other_key = (0..100)
        .map(|index| format!("other-{index}"))
        .find(|key| topic.partition_for(key.as_bytes()) == partition)
        .expect("a key in the same partition");
    let elsewhere = topic
        .append(other_key.as_bytes(), ExpectedSequence::Any, vec![stored()])
        .expect("same id on another key");
    assert!(!elsewhere.duplicate, "another key's event is not aggregate-0's");
    assert_eq!(elsewhere.first_offset, high_watermark);
    // The producer's registry and the cursor survived.
    assert_eq!(topic.producers().len(), 1);
    let cursor = topic.cursor("fixture-cursor").expect("cursor");
    assert_eq!(cursor[0].committed, Some(Offset(3)));
    assert_eq!(cursor[1].committed, Some(Offset(5)));
    log.close().expect("close");
}

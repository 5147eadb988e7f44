//! The embedding API end to end: appends, conditions, dedup, producers, reads,
//! reopen, rolling, retention, cursors and live tailing.

use std::sync::Arc;
use std::time::Duration;
use stele::Sequence;

use stele::{
    AppendRequest, Direction, Durability, ErrorKind, Event, ExpectedSequence, Log, LogOptions, ManualClock,
    Offset, PartitionId, ProducerStamp, TopicOptions,
};

fn event(event_type: &str, payload: &str) -> Event {
    Event::new(event_type, payload.as_bytes().to_vec())
}

fn open(dir: &std::path::Path) -> Log {
    Log::open(dir, LogOptions::default()).expect("open log")
}

#[test]
fn append_assigns_dense_offsets_and_key_sequences() {
    // Goal: offsets are dense per partition, sequences dense per key.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    let topic = log
        .create_topic("t", TopicOptions::default().partitions(1))
        .expect("create");
    let a0 = topic
        .append("a", ExpectedSequence::Any, vec![event("x", "1"), event("x", "2")])
        .expect("append");
    let b0 = topic
        .append("b", ExpectedSequence::Any, vec![event("x", "3")])
        .expect("append");
    let a1 = topic
        .append("a", ExpectedSequence::Any, vec![event("x", "4")])
        .expect("append");
    assert_eq!(
        (a0.first_offset, a0.first_sequence, a0.last_sequence),
        (Offset(0), Sequence(0), Sequence(1))
    );
    assert_eq!((b0.first_offset, b0.first_sequence), (Offset(2), Sequence(0)));
    assert_eq!((a1.first_offset, a1.first_sequence), (Offset(3), Sequence(2)));
    assert!(a1.timestamp_ms >= a0.timestamp_ms);
    let all = topic
        .read(PartitionId(0), Offset(0), 100, u64::MAX)
        .expect("read");
    let payloads: Vec<&[u8]> = all.iter().map(|event| &event.payload[..]).collect();
    assert_eq!(payloads, vec![&b"1"[..], b"2", b"3", b"4"]);
    assert_eq!(topic.high_watermark(PartitionId(0)).expect("hw"), Offset(4));
}

#[test]
fn compare_and_set_reports_actual_sequence_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    let topic = log.create_topic("t", TopicOptions::default()).expect("create");
    topic
        .append("k", ExpectedSequence::NoEvents, vec![event("x", "1")])
        .expect("first");
    let error = topic
        .append("k", ExpectedSequence::NoEvents, vec![event("x", "2")])
        .expect_err("key has events");
    assert!(matches!(
        error,
        stele::Error::WrongExpectedSequence {
            actual: Some(Sequence(0)),
            ..
        }
    ));
    let error = topic
        .append("k", ExpectedSequence::Exact(Sequence(5)), vec![event("x", "2")])
        .expect_err("wrong sequence");
    assert_eq!(error.kind(), ErrorKind::WrongExpectedSequence);
    let error = topic
        .append("new", ExpectedSequence::Exact(Sequence(0)), vec![event("x", "2")])
        .expect_err("no events yet");
    assert!(matches!(
        error,
        stele::Error::WrongExpectedSequence { actual: None, .. }
    ));
    topic
        .append("k", ExpectedSequence::Exact(Sequence(0)), vec![event("x", "2")])
        .expect("matches");
    assert_eq!(topic.key_sequence(b"k").expect("sequence"), Some(Sequence(1)));
    assert_eq!(
        topic
            .read_key(b"k", None, Direction::Forwards, 10)
            .expect("read")
            .len(),
        2
    );
}

#[test]
fn idempotency_ids_make_retries_duplicates_and_partial_retries_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    let topic = log.create_topic("t", TopicOptions::default()).expect("create");
    let first = topic
        .append(
            "k",
            ExpectedSequence::NoEvents,
            vec![
                event("x", "1").with_idempotency_id("a"),
                event("x", "2").with_idempotency_id("b"),
            ],
        )
        .expect("first");
    // A retry succeeds as a duplicate even though its expectation is now stale.
    let retry = topic
        .append(
            "k",
            ExpectedSequence::NoEvents,
            vec![
                event("x", "1").with_idempotency_id("a"),
                event("x", "2").with_idempotency_id("b"),
            ],
        )
        .expect("retry");
    assert!(retry.duplicate);
    assert_eq!(
        (retry.first_offset, retry.first_sequence, retry.last_sequence),
        (first.first_offset, Sequence(0), Sequence(1))
    );
    let partial = topic
        .append(
            "k",
            ExpectedSequence::Any,
            vec![
                event("x", "1").with_idempotency_id("a"),
                event("x", "3").with_idempotency_id("c"),
            ],
        )
        .expect_err("partial duplicate");
    assert_eq!(partial.kind(), ErrorKind::PartialDuplicate);
    let repeated = topic
        .append(
            "k",
            ExpectedSequence::Any,
            vec![
                event("x", "1").with_idempotency_id("z"),
                event("x", "3").with_idempotency_id("z"),
            ],
        )
        .expect_err("repeated id");
    assert_eq!(repeated.kind(), ErrorKind::RepeatedIdempotencyId);
    assert_eq!(topic.key_sequence(b"k").expect("sequence"), Some(Sequence(1)));
}

#[test]
fn dedup_window_is_honoured_to_the_millisecond_and_survives_reopen() {
    // Method: a manual clock; the window is 1000 ms.
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let options = LogOptions::default().clock(clock.clone());
    let topic_options = TopicOptions::default().partitions(1).dedup_window_ms(1000);
    {
        let log = Log::open(dir.path(), options.clone()).expect("open");
        let topic = log.create_topic("t", topic_options.clone()).expect("create");
        topic
            .append(
                "k",
                ExpectedSequence::Any,
                vec![event("x", "1").with_idempotency_id("id")],
            )
            .expect("append");
        log.close().expect("close");
    }
    let log = Log::open(dir.path(), options).expect("reopen");
    let topic = log.topic("t").expect("topic");
    clock.advance(999);
    let ack = topic
        .append(
            "k",
            ExpectedSequence::Any,
            vec![event("x", "1").with_idempotency_id("id")],
        )
        .expect("retry");
    assert!(ack.duplicate, "999 ms after: still inside the window");
    clock.advance(1);
    let ack = topic
        .append(
            "k",
            ExpectedSequence::Any,
            vec![event("x", "1").with_idempotency_id("id")],
        )
        .expect("late");
    assert!(!ack.duplicate, "1000 ms after: outside the window");
}

#[test]
fn producer_stamps_deduplicate_retries_fence_old_epochs_and_reject_gaps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    let topic = log
        .create_topic("t", TopicOptions::default().partitions(1))
        .expect("create");
    let (producer, epoch) = topic.open_producer("billing").expect("producer");
    let stamp = |sequence| ProducerStamp {
        producer,
        epoch,
        sequence,
    };
    let request = |sequence| AppendRequest::new("k", vec![event("x", "1")]).stamped(stamp(sequence));
    let first = topic.append_request(request(Sequence(0))).expect("first");
    let retry = topic.append_request(request(Sequence(0))).expect("retry");
    assert!(retry.duplicate);
    assert_eq!(retry.first_offset, first.first_offset);
    let gap = topic.append_request(request(Sequence(5))).expect_err("gap");
    assert!(matches!(
        gap,
        stele::Error::ProducerOutOfOrder {
            expected: Sequence(1),
            got: Sequence(5),
            ..
        }
    ));
    topic.append_request(request(Sequence(1))).expect("next");
    let (same, newer) = topic.open_producer("billing").expect("reopen producer");
    assert_eq!(same, producer);
    assert!(newer > epoch);
    let fenced = topic.append_request(request(Sequence(2))).expect_err("fenced");
    assert_eq!(fenced.kind(), ErrorKind::ProducerFenced);
    let fresh = AppendRequest::new("k", vec![event("x", "1")]).stamped(ProducerStamp {
        producer,
        epoch: newer,
        sequence: Sequence(0),
    });
    assert!(!topic.append_request(fresh).expect("new epoch").duplicate);
}

#[test]
fn reopen_restores_state_and_rolled_segments_read_back() {
    // Goal: small segments roll; after reopen, reads by offset, key and time work
    // and sequences continue.
    let dir = tempfile::tempdir().expect("tempdir");
    let options = TopicOptions::default().partitions(2).segment_size_bytes_max(4096);
    let mut acks = Vec::new();
    {
        let log = open(dir.path());
        let topic = log.create_topic("t", options).expect("create");
        for index in 0..300 {
            let key = format!("key-{}", index % 7);
            acks.push(
                topic
                    .append(
                        key,
                        ExpectedSequence::Any,
                        vec![event("x", &format!("payload-{index}"))],
                    )
                    .expect("append"),
            );
        }
        log.close().expect("close");
    }
    let log = open(dir.path());
    let topic = log.topic("t").expect("topic");
    let infos = topic.partition_infos();
    assert!(infos.iter().any(|info| info.segments_count > 2), "{infos:?}");
    let total: u64 = infos.iter().map(|info| info.high_watermark.0).sum();
    assert_eq!(total, 300);
    for key_index in 0..7 {
        let key = format!("key-{key_index}");
        let history = topic
            .read_key(key.as_bytes(), None, Direction::Forwards, 1000)
            .expect("history");
        let expected: Vec<String> = (0..300)
            .filter(|index| index % 7 == key_index)
            .map(|index| format!("payload-{index}"))
            .collect();
        let found: Vec<String> = history
            .iter()
            .map(|event| String::from_utf8(event.payload.clone()).expect("utf-8"))
            .collect();
        assert_eq!(found, expected);
        let sequences: Vec<u64> = history.iter().map(|event| event.sequence.0).collect();
        assert_eq!(sequences, (0..expected.len() as u64).collect::<Vec<_>>());
        let backwards = topic
            .read_key(key.as_bytes(), Some(Sequence(3)), Direction::Backwards, 2)
            .expect("backwards");
        assert_eq!(
            backwards.iter().map(|event| event.sequence.0).collect::<Vec<_>>(),
            vec![3, 2]
        );
        let forwards = topic
            .read_key(key.as_bytes(), Some(Sequence(5)), Direction::Forwards, 3)
            .expect("forwards");
        assert_eq!(
            forwards.iter().map(|event| event.sequence.0).collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
        let next = topic
            .append(
                key.clone(),
                ExpectedSequence::Exact(Sequence(expected.len() as u64 - 1)),
                vec![event("x", "after")],
            )
            .expect("continue");
        assert_eq!(next.first_sequence, Sequence(expected.len() as u64));
    }
    let first_ts = acks[0].timestamp_ms;
    let partition = acks[0].partition;
    assert_eq!(
        topic.offset_for_timestamp(partition, first_ts).expect("seek"),
        Offset(0)
    );
    assert_eq!(
        topic.offset_for_timestamp(partition, i64::MAX).expect("seek"),
        topic.high_watermark(partition).expect("hw")
    );
}

#[test]
fn durability_modes_all_acknowledge_and_persist_across_reopen() {
    for durability in [
        Durability::Always,
        Durability::Interval { interval_ms: 5 },
        Durability::None,
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = open(dir.path());
            let topic = log
                .create_topic("t", TopicOptions::default().partitions(1).durability(durability))
                .expect("create");
            for index in 0..50 {
                topic
                    .append(format!("k{index}"), ExpectedSequence::Any, vec![event("x", "p")])
                    .expect("append");
            }
            log.close().expect("close");
        }
        let log = open(dir.path());
        let topic = log.topic("t").expect("topic");
        assert_eq!(
            topic.high_watermark(PartitionId(0)).expect("hw"),
            Offset(50),
            "{durability}"
        );
    }
}

#[test]
fn retention_deletes_old_segments_but_key_sequences_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = TopicOptions::default()
        .partitions(1)
        .segment_size_bytes_max(4096)
        .retention_bytes(Some(8192));
    {
        let log = open(dir.path());
        let topic = log.create_topic("t", options).expect("create");
        for _ in 0..200 {
            topic
                .append("k", ExpectedSequence::Any, vec![event("x", "0123456789")])
                .expect("append");
        }
        let deleted = topic.enforce_retention().expect("retention");
        assert!(deleted > 0);
        let info = topic.partition_infos()[0].clone();
        assert!(info.earliest > Offset(0));
        let error = topic
            .read(PartitionId(0), Offset(0), 10, u64::MAX)
            .expect_err("below earliest");
        assert!(
            matches!(error, stele::Error::OffsetOutOfRange { earliest, .. } if earliest == info.earliest)
        );
        log.close().expect("close");
    }
    let log = open(dir.path());
    let topic = log.topic("t").expect("topic");
    let ack = topic
        .append(
            "k",
            ExpectedSequence::Exact(Sequence(199)),
            vec![event("x", "after")],
        )
        .expect("continues");
    assert_eq!(ack.first_sequence, Sequence(200));
    let history = topic
        .read_key(b"k", None, Direction::Forwards, 1000)
        .expect("history");
    assert!(history.len() < 201 && history.last().map(|event| event.sequence) == Some(Sequence(200)));
}

#[test]
fn cursors_commit_list_lag_and_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    let topic = log
        .create_topic("t", TopicOptions::default().partitions(1))
        .expect("create");
    for _ in 0..10 {
        topic
            .append("k", ExpectedSequence::Any, vec![event("x", "p")])
            .expect("append");
    }
    topic
        .commit_cursor("c", &[(PartitionId(0), Offset(4))], false)
        .expect("commit");
    let error = topic
        .commit_cursor("c", &[(PartitionId(0), Offset(11))], false)
        .expect_err("past hw");
    assert_eq!(error.kind(), ErrorKind::CursorAheadOfHighWatermark);
    let error = topic
        .commit_cursor("c", &[(PartitionId(0), Offset(2))], false)
        .expect_err("backwards");
    assert_eq!(error.kind(), ErrorKind::CursorBackwards);
    topic
        .commit_cursor("c", &[(PartitionId(0), Offset(2))], true)
        .expect("rewind");
    let positions = topic.cursor("c").expect("cursor");
    assert_eq!(positions[0].committed, Some(Offset(2)));
    assert_eq!(positions[0].lag, 8);
    assert_eq!(topic.cursors().len(), 1);
    topic.delete_cursor("c").expect("delete");
    assert_eq!(
        topic.cursor("c").expect_err("deleted").kind(),
        ErrorKind::CursorNotFound
    );
}

#[test]
fn live_tail_wakes_a_waiting_reader() {
    // Goal: a reader blocked on the tail wakes when an append is acknowledged.
    // Method: a thread waits past the current high watermark with a long timeout;
    // the main thread appends; the waiter must return the new high watermark.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    let topic = log
        .create_topic("t", TopicOptions::default().partitions(1))
        .expect("create");
    let waiter = {
        let topic = topic.clone();
        std::thread::spawn(move || topic.wait_for(PartitionId(0), Offset(0), Duration::from_secs(60)))
    };
    // The waiter may start before or after the append; both must end with 1.
    topic
        .append("k", ExpectedSequence::Any, vec![event("x", "p")])
        .expect("append");
    let high_watermark = waiter.join().expect("waiter").expect("wait");
    assert_eq!(high_watermark, Offset(1));
}

#[test]
fn second_open_of_a_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _log = open(dir.path());
    let error = Log::open(dir.path(), LogOptions::default()).expect_err("locked");
    assert_eq!(error.kind(), ErrorKind::Locked);
}

#[test]
fn many_threads_append_concurrently_with_dense_sequences() {
    // Goal: group commit under contention keeps per-key sequences dense.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    let topic = log
        .create_topic("t", TopicOptions::default().partitions(2))
        .expect("create");
    let threads: Vec<_> = (0..16)
        .map(|thread| {
            let topic = topic.clone();
            std::thread::spawn(move || {
                for index in 0..100 {
                    let key = format!("k{}", (thread + index) % 5);
                    topic
                        .append(key, ExpectedSequence::Any, vec![event("x", "p")])
                        .expect("append");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread");
    }
    let mut total = 0;
    for key in 0..5 {
        let history = topic
            .read_key(format!("k{key}").as_bytes(), None, Direction::Forwards, 10_000)
            .expect("history");
        let sequences: Vec<u64> = history.iter().map(|event| event.sequence.0).collect();
        assert_eq!(sequences, (0..history.len() as u64).collect::<Vec<_>>());
        total += history.len();
    }
    assert_eq!(total, 1600);
}

#[test]
fn append_batch_returns_one_result_per_request_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    let topic = log
        .create_topic("t", TopicOptions::default().partitions(3))
        .expect("create");
    let results = topic.append_batch(vec![
        AppendRequest::new("a", vec![event("x", "1")]).expect(ExpectedSequence::NoEvents),
        AppendRequest::new("b", vec![event("x", "2")]).expect(ExpectedSequence::Exact(Sequence(3))),
        AppendRequest::new("a", vec![event("x", "3")]).expect(ExpectedSequence::Exact(Sequence(0))),
    ]);
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_ref().expect("a").first_sequence, Sequence(0));
    assert_eq!(
        results[1].as_ref().expect_err("b").kind(),
        ErrorKind::WrongExpectedSequence
    );
    assert_eq!(results[2].as_ref().expect("a again").first_sequence, Sequence(1));
}

#[test]
fn bad_input_gets_typed_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    let topic = log.create_topic("t", TopicOptions::default()).expect("create");
    let oversized = vec![0u8; (1 << 20) + 1];
    let cases = [
        (
            AppendRequest::new("", vec![event("x", "p")]),
            ErrorKind::InvalidArgument,
        ),
        (AppendRequest::new("k", vec![]), ErrorKind::InvalidArgument),
        (
            AppendRequest::new(vec![b'k'; 2000], vec![event("x", "p")]),
            ErrorKind::LimitExceeded,
        ),
        (
            AppendRequest::new("k", vec![Event::new("x", oversized)]),
            ErrorKind::LimitExceeded,
        ),
        (
            AppendRequest::new("k", vec![event("", "p")]),
            ErrorKind::InvalidArgument,
        ),
    ];
    for (request, kind) in cases {
        assert_eq!(topic.append_request(request).expect_err("rejected").kind(), kind);
    }
    assert_eq!(
        topic
            .partition_infos()
            .iter()
            .map(|info| info.high_watermark.0)
            .sum::<u64>(),
        0
    );
    assert_eq!(
        log.topic("missing").expect_err("missing").kind(),
        ErrorKind::TopicNotFound
    );
    assert_eq!(
        log.create_topic("bad/name", TopicOptions::default())
            .expect_err("bad name")
            .kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        log.create_topic("t", TopicOptions::default())
            .expect_err("exists")
            .kind(),
        ErrorKind::TopicExists
    );
}

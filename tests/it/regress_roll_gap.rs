//! Regression: a kill right after a segment roll left a partition that would not open.
//!
//! Failure: `roll_if_needed` creates the next segment (header and directory
//! entry synced) when an append is encoded, while the group ahead of it (the
//! last records of the previous segment) may still be waiting to be written.
//! A SIGKILL in between leaves the previous segment, never sealed, ending at
//! offset N and a last segment starting at N + 1 or later. The next open
//! failed with `Inconsistent` ("segment starts at offset N+1 but the previous
//! one ends at N") and `stele verify` reported the gap: the server could not
//! start. Found by `tests/drill.rs` (the kill drill against `stele serve`),
//! once in about a hundred kills.
//! Crash point: SIGKILL between `Segment::create` in a roll and the write of
//! the group holding the previous segment's last records.
//! Fix: at open (and in `stele verify`, as a note), a last segment that starts past the end of a never-sealed
//! previous segment holds nothing acknowledged (a group is acknowledged only
//! after every group before it is written); it is removed and the previous
//! segment is the active one again, unless a checkpoint covers the missing
//! offsets.

use stele::Sequence;
use stele::format::segment::{SegmentHeader, encode};
use stele::{Direction, Event, ExpectedSequence, Log, LogOptions, Offset, PartitionId, TopicOptions};

use crate::support::partition_dir;

#[test]
fn a_segment_created_ahead_of_an_unwritten_group_is_removed_at_open() {
    // Goal: the directory a kill leaves between a roll and the write of the
    // group before it opens, keeps every written record, and takes appends.
    // Method: write offsets 0..5 into one segment, close, then add the file a
    // roll for offset 6 creates (header only) while offset 5 was never written;
    // reopen, read, append, reopen again and verify the directory.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), LogOptions::default()).expect("open");
    let topic = log
        .create_topic("t", TopicOptions::default().partitions(1))
        .expect("create");
    for index in 0..5u64 {
        let event = Event::new("e", vec![b'p'; 10]).with_idempotency_id(format!("id-{index}"));
        let ack = topic
            .append("k", ExpectedSequence::Any, vec![event])
            .expect("append");
        assert_eq!(ack.first_offset, Offset(index));
    }
    drop(topic);
    log.close().expect("close");

    let partition = partition_dir(dir.path(), "t", 0);
    let created_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let gap = partition.join(format!("{:020}.log", 6));
    std::fs::write(
        &gap,
        encode(&SegmentHeader {
            partition: PartitionId(0),
            base_offset: Offset(6),
            created_ms,
        }),
    )
    .expect("write the rolled segment");

    let report = stele::verify::verify_dir(dir.path()).expect("verify the gap");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(
        report
            .notes
            .iter()
            .any(|note| format!("{note:?}").contains("removed at open")),
        "{:?}",
        report.notes
    );

    let log = Log::open(dir.path(), LogOptions::default()).expect("reopen after the gap");
    let topic = log.topic("t").expect("topic");
    assert_eq!(topic.high_watermark(PartitionId(0)).expect("hw"), Offset(5));
    assert!(!gap.exists(), "the segment past the gap is removed");
    let events = topic
        .read(PartitionId(0), Offset(0), 100, u64::MAX)
        .expect("read");
    assert_eq!(events.len(), 5);
    let retry = topic
        .append(
            "k",
            ExpectedSequence::Any,
            vec![Event::new("e", vec![b'p'; 10]).with_idempotency_id("id-4")],
        )
        .expect("retry");
    assert!(retry.duplicate && retry.first_offset == Offset(4), "{retry:?}");
    let ack = topic
        .append(
            "k",
            ExpectedSequence::Exact(Sequence(4)),
            vec![Event::new("e", b"next".to_vec())],
        )
        .expect("append after the gap");
    assert_eq!((ack.first_offset, ack.first_sequence), (Offset(5), Sequence(5)));
    drop(topic);
    log.close().expect("close");

    let log = Log::open(dir.path(), LogOptions::default()).expect("open again");
    let topic = log.topic("t").expect("topic");
    let history = topic
        .read_key(b"k", None, Direction::Forwards, 100)
        .expect("read key");
    assert_eq!(history.len(), 6);
    drop(topic);
    log.close().expect("close");
    let report = stele::verify::verify_dir(dir.path()).expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

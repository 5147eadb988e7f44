//! Regression: a failed segment roll left a file that broke the next open.
//!
//! Failure: `Segment::create` creates `{base}.log` before writing and syncing its
//! header. When the write failed (a full disk writes half the header) or the sync
//! failed, the append failed but the file stayed. Smaller appends then still fit
//! the previous segment and went there, so a later roll created a newer segment
//! and the stray file ended up in the middle of the partition: the next open
//! reported `Corruption` (a header shorter than 40 bytes) or `Inconsistent` (a
//! zero-record segment whose base offset overlaps the previous one).
//! Crash point: DiskFull, WriteError or SyncError on the new segment during a
//! roll; no crash needed.
//! Fix: `Segment::create` removes the file when anything after creating it fails.

use std::sync::Arc;
use stele::Sequence;

use stele::io::{Fault, FaultyStorage};
use stele::{ErrorKind, Event, ExpectedSequence, Log, LogOptions, Offset, PartitionId, TopicOptions};

#[test]
fn a_failed_roll_leaves_no_segment_file_behind() {
    // Goal: after a roll fails at any step, later appends and a reopen work.
    // Method: for each fault, fill a 4 KiB segment, arm the fault on the next
    // segment's file name, fail a large (rolling) append, append small events into
    // the old segment, roll for real twice, reopen and read everything.
    for fault in [Fault::WriteError, Fault::ShortWrite, Fault::SyncError] {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FaultyStorage::new();
        let log = Log::open(
            dir.path(),
            LogOptions::default().storage(Arc::new(storage.clone())),
        )
        .expect("open");
        let topic = log
            .create_topic(
                "t",
                TopicOptions::default().partitions(1).segment_size_bytes_max(4096),
            )
            .expect("create");
        let payload = |size: usize| Event::new("e", vec![b'p'; size]);
        for _ in 0..20 {
            topic
                .append("k", ExpectedSequence::Any, vec![payload(108)])
                .expect("append");
        }
        storage.arm(fault, &format!("{:020}.log", 20), 0);
        let error = topic
            .append("k", ExpectedSequence::Any, vec![payload(1024)])
            .expect_err("the roll fails");
        assert_eq!(error.kind(), ErrorKind::Io, "{fault:?}: {error}");
        assert_eq!(storage.injected_count(), 1, "{fault:?}");
        for _ in 0..40 {
            topic
                .append(
                    "k",
                    ExpectedSequence::Any,
                    vec![payload(
                        if topic.high_watermark(PartitionId(0)).expect("hw") < Offset(22) {
                            1
                        } else {
                            200
                        },
                    )],
                )
                .expect("append after the failed roll");
        }
        assert!(topic.partition_infos()[0].segments_count >= 3, "{fault:?}");
        drop(topic);
        log.close().expect("close");
        let log = Log::open(dir.path(), LogOptions::default())
            .unwrap_or_else(|error| panic!("{fault:?}: reopen: {error}"));
        let topic = log.topic("t").expect("topic");
        let events = topic
            .read(PartitionId(0), Offset(0), 1000, u64::MAX)
            .expect("read");
        assert_eq!(events.len(), 60, "{fault:?}");
        assert_eq!(
            topic.key_sequence(b"k").expect("sequence"),
            Some(Sequence(59)),
            "{fault:?}"
        );
    }
}

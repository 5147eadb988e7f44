//! Regression: a crash right after a segment roll left the previous segment
//! without its last append calls (never written: the group commit that held them
//! had not run) while the new segment file already existed. Reopening failed with
//! `Inconsistent` ("segment starts at offset N but the previous one ends at N-1"),
//! found by the kill -9 drill (seed 1795724554727334947, round 11).
//!
//! Fix: segments without a valid index at the end of a partition were never
//! sealed, so recovery treats them all as tail: it scans them in order, and the
//! first that ends torn or short of the next one's base offset ends the log; the
//! later files hold only unacknowledged records and are removed (reported in
//! `TailRecovery::segments_removed`).

use std::path::{Path, PathBuf};
use stele::Sequence;

use stele::{Event, ExpectedSequence, Log, LogOptions, Offset, PartitionId, TopicOptions};

fn segments(partition: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(partition)
        .expect("partition directory")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
        .collect();
    logs.sort();
    logs
}

/// Positions of the frames of a segment file (after the 40-byte header).
fn frame_positions(bytes: &[u8]) -> Vec<usize> {
    let mut positions = Vec::new();
    let mut position = 40;
    while position + 4 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[position..position + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 || position + 4 + len > bytes.len() {
            break;
        }
        positions.push(position);
        position += 4 + len;
    }
    positions
}

/// Writes three segments' worth of single-event calls, closes, and returns the
/// data directory's partition path and the number of events.
fn build(dir: &Path) -> (PathBuf, u64) {
    let log = Log::open(dir, LogOptions::default()).expect("open");
    let topic = log
        .create_topic(
            "t",
            TopicOptions::default().partitions(1).segment_size_bytes_max(4096),
        )
        .expect("create");
    let mut count = 0;
    while topic.partition_infos()[0].segments_count < 3 {
        topic
            .append("k", ExpectedSequence::Any, vec![Event::new("e", vec![b'x'; 300])])
            .expect("append");
        count += 1;
    }
    log.close().expect("close");
    (dir.join("topics/t/p00000"), count)
}

#[test]
fn a_roll_whose_previous_calls_never_reached_disk_recovers_to_the_last_whole_call() {
    // Goal: both crash shapes after a roll reopen to the last whole call of the
    // unsealed segment, with later segment files removed.
    // Method: cut the middle segment at its last frame boundary (a whole call
    // lost) and, separately, inside its last frame (a torn call); remove its index
    // and the checkpoint, as a crash before they were written leaves them.
    for torn in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (partition, count) = build(dir.path());
        let logs = segments(&partition);
        assert_eq!(logs.len(), 3);
        let middle = &logs[1];
        let bytes = std::fs::read(middle).expect("read");
        let last = *frame_positions(&bytes).last().expect("frames");
        let cut = if torn { last + 10 } else { last };
        std::fs::OpenOptions::new()
            .write(true)
            .open(middle)
            .expect("open segment")
            .set_len(cut as u64)
            .expect("truncate");
        std::fs::remove_file(middle.with_extension("idx")).expect("remove index");
        std::fs::remove_file(partition.join("checkpoint")).expect("remove checkpoint");
        let frames_in_first = frame_positions(&std::fs::read(&logs[0]).expect("read")).len() as u64;
        let frames_kept = frames_in_first + frame_positions(&bytes).len() as u64 - 1;

        // The offline check agrees with open: nothing is damaged, the cut and the
        // removal are what open repairs on its own.
        let report = stele::verify::verify_dir(dir.path()).expect("verify runs");
        assert!(report.is_clean(), "torn={torn}: {:?}", report.problems);
        assert!(
            report
                .notes
                .iter()
                .any(|note| note.path == logs[2] && note.message.contains("follows the end of the log")),
            "torn={torn}: {:?}",
            report.notes
        );

        let log = Log::open(dir.path(), LogOptions::default()).expect("reopens");
        let topic = log.topic("t").expect("topic");
        let report = topic.recovery_reports()[0].tail;
        assert_eq!(report.segments_removed, 1, "torn={torn} {report:?}");
        assert_eq!(report.bytes_cut, if torn { 10 } else { 0 }, "torn={torn}");
        let high_watermark = topic.high_watermark(PartitionId(0)).expect("hw");
        assert_eq!(high_watermark, Offset(frames_kept), "torn={torn}");
        assert!(frames_kept < count);
        assert!(
            !logs[2].exists(),
            "the segment after the end of the log is removed"
        );
        let events = topic
            .read(PartitionId(0), Offset(0), 10_000, u64::MAX)
            .expect("read");
        assert_eq!(events.len() as u64, frames_kept);
        let sequences: Vec<u64> = events.iter().map(|event| event.sequence.0).collect();
        assert_eq!(sequences, (0..frames_kept).collect::<Vec<_>>());
        let ack = topic
            .append(
                "k",
                ExpectedSequence::Exact(Sequence(frames_kept - 1)),
                vec![Event::new("e", b"after".to_vec())],
            )
            .expect("appends continue");
        assert_eq!(
            (ack.first_offset, ack.first_sequence),
            (Offset(frames_kept), Sequence(frames_kept))
        );
        log.close().expect("close");
        // A second reopen finds a consistent log with nothing to cut.
        let log = Log::open(dir.path(), LogOptions::default()).expect("reopens again");
        let topic = log.topic("t").expect("topic");
        assert_eq!(topic.recovery_reports()[0].tail, stele::TailRecovery::default());
        assert_eq!(
            topic.high_watermark(PartitionId(0)).expect("hw"),
            Offset(frames_kept + 1)
        );
    }
}

/// Regression: with every trailing segment unsealed, recovery took the dedup
/// window to start at the last segment, so idempotency ids in the earlier
/// unsealed segments were not replayed and an acknowledged id was written again
/// (found by the kill -9 drill, seed 1795726222246494474: a retry answered as a
/// new append). The window now starts at the first unsealed segment.
#[test]
fn ids_in_unsealed_segments_are_still_recognised_after_reopen() {
    // Method: ids on every event over three small segments; remove every index,
    // the checkpoint and the dedup index (a crash before any of them was
    // written); reopen and retry the first id.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), LogOptions::default()).expect("open");
    let topic = log
        .create_topic(
            "t",
            TopicOptions::default().partitions(1).segment_size_bytes_max(4096),
        )
        .expect("create");
    let mut index = 0;
    while topic.partition_infos()[0].segments_count < 3 {
        let event = Event::new("e", vec![b'x'; 300]).with_idempotency_id(format!("id-{index}"));
        topic
            .append("k", ExpectedSequence::Any, vec![event])
            .expect("append");
        index += 1;
    }
    log.close().expect("close");
    let partition = dir.path().join("topics/t/p00000");
    for log_path in segments(&partition) {
        let _ = std::fs::remove_file(log_path.with_extension("idx"));
    }
    std::fs::remove_file(partition.join("checkpoint")).expect("remove checkpoint");
    std::fs::remove_dir_all(partition.join("dedup")).expect("remove dedup index");

    let log = Log::open(dir.path(), LogOptions::default()).expect("reopens");
    let topic = log.topic("t").expect("topic");
    let retry = topic
        .append(
            "k",
            ExpectedSequence::Any,
            vec![Event::new("e", vec![b'x'; 300]).with_idempotency_id("id-0")],
        )
        .expect("retry");
    assert!(retry.duplicate, "{retry:?}");
    assert_eq!(retry.first_offset, Offset(0));
    assert_eq!(topic.high_watermark(PartitionId(0)).expect("hw"), Offset(index));
}

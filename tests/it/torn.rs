//! Torn-write tables: every byte boundary of the newest append calls, and every
//! bit of frame headers, damaged on disk; recovery must cut exactly the torn call
//! at the tail of the active segment, and anywhere else open the partition
//! quarantined (serving the offsets before the damage, refusing the rest with
//! `Quarantined` naming the file and position) or, for damage open does not
//! read, fail that read with `Corruption`. The quarantine decision table is at
//! the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use stele::Sequence;

use stele::{
    Direction, ErrorKind, Event, ExpectedSequence, Log, ManualClock, Offset, PartitionId, TailRecovery,
    TopicOptions,
};

use crate::support::{self, Frame, RECORD_HEADER_LEN};

/// One append call of the fixture: its key and payloads.
struct Call {
    key: &'static str,
    payloads: Vec<String>,
}

fn call(key: &'static str, name: &str, count: usize) -> Call {
    Call {
        key,
        payloads: (0..count).map(|index| format!("{name}-{index}")).collect(),
    }
}

fn events(call: &Call) -> Vec<Event> {
    call.payloads
        .iter()
        .map(|payload| Event::new("e", payload.as_bytes().to_vec()))
        .collect()
}

/// Opens without fsync (see [`support::NoSyncStorage`]): these tests damage files
/// by hand, so durability is not what they check.
fn open(dir: &Path) -> stele::Result<Log> {
    Log::open(dir, support::no_sync_options())
}

fn open_at(dir: &Path, clock: &Arc<ManualClock>) -> stele::Result<Log> {
    Log::open(
        dir,
        support::no_sync_options().clock(Arc::clone(clock) as Arc<dyn stele::Clock>),
    )
}

/// The fixture: a one-partition topic whose active segment holds four calls
/// covered by a checkpoint (written at a clean close) and two newer calls
/// appended after it, acknowledged (Durability::Always) but not checkpointed:
/// the state a crash right after the last acknowledgement leaves.
struct Fixture {
    _root: tempfile::TempDir,
    snapshot: PathBuf,
    calls: Vec<Call>,
    /// The frames of the active segment, in order.
    frames: Vec<Frame>,
    /// Index into `calls` of the first call not covered by the checkpoint.
    first_uncheckpointed: usize,
}

fn fixture() -> Fixture {
    let root = tempfile::tempdir().expect("tempdir");
    let live = root.path().join("live");
    let snapshot = root.path().join("snapshot");
    let calls = vec![
        call("a", "A", 3),
        call("b", "B", 1),
        call("a", "C", 2),
        call("c", "D", 1),
        call("b", "E", 1),
        call("a", "F", 3),
    ];
    let first_uncheckpointed = 4;
    let options = TopicOptions::default()
        .partitions(1)
        .durability(stele::Durability::Always);
    {
        let log = open(&live).expect("open");
        let topic = log.create_topic("t", options).expect("create");
        for call in &calls[..first_uncheckpointed] {
            topic
                .append(call.key, ExpectedSequence::Any, events(call))
                .expect("append");
        }
        log.close().expect("close");
    }
    let log = open(&live).expect("reopen");
    let topic = log.topic("t").expect("topic");
    for call in &calls[first_uncheckpointed..] {
        topic
            .append(call.key, ExpectedSequence::Any, events(call))
            .expect("append");
    }
    // Acknowledged with Always: the bytes are on disk. Copy the directory before
    // the close writes a newer checkpoint.
    support::copy_dir(&live, &snapshot);
    log.close().expect("close");
    let segments = support::segment_files(&support::partition_dir(&snapshot, "t", 0));
    assert_eq!(segments.len(), 1, "{segments:?}");
    let bytes = std::fs::read(&segments[0]).expect("read segment");
    let frames = support::frames(&bytes);
    let events_count: usize = calls.iter().map(|call| call.payloads.len()).sum();
    assert_eq!(frames.len(), events_count);
    Fixture {
        _root: root,
        snapshot,
        calls,
        frames,
        first_uncheckpointed,
    }
}

impl Fixture {
    /// The frames of each call, in call order.
    fn call_frames(&self) -> Vec<&[Frame]> {
        let mut result = Vec::new();
        let mut next = 0;
        for call in &self.calls {
            let frames = &self.frames[next..next + call.payloads.len()];
            assert!(frames[..frames.len() - 1].iter().all(|frame| !frame.call_end));
            assert!(frames[frames.len() - 1].call_end);
            result.push(frames);
            next += call.payloads.len();
        }
        result
    }

    /// A fresh copy of the snapshot and the path of its active segment.
    fn copy(&self, into: &Path) -> PathBuf {
        support::copy_dir(&self.snapshot, into);
        support::segment_files(&support::partition_dir(into, "t", 0))
            .pop()
            .expect("a segment")
    }
}

/// Checks a reopened log against the calls expected to be present: reads by
/// offset and by key, key sequences, then that appends continue at the right
/// offset and sequence.
fn check_present(log: &Log, calls: &[Call], context: &str) {
    let topic = log.topic("t").expect("topic");
    let expected: Vec<(&str, &str)> = calls
        .iter()
        .flat_map(|call| {
            call.payloads
                .iter()
                .map(move |payload| (call.key, payload.as_str()))
        })
        .collect();
    let high_watermark = Offset(expected.len() as u64);
    assert_eq!(
        topic.high_watermark(PartitionId(0)).expect("hw"),
        high_watermark,
        "{context}"
    );
    let read = topic
        .read(PartitionId(0), Offset(0), 1000, u64::MAX)
        .expect("read");
    let found: Vec<(u64, &str, &str)> = read
        .iter()
        .map(|event| {
            (
                event.offset.0,
                std::str::from_utf8(&event.key).expect("utf-8"),
                std::str::from_utf8(&event.payload).expect("utf-8"),
            )
        })
        .collect();
    let wanted: Vec<(u64, &str, &str)> = expected
        .iter()
        .enumerate()
        .map(|(offset, (key, payload))| (offset as u64, *key, *payload))
        .collect();
    assert_eq!(found, wanted, "{context}");
    let past = topic
        .read(PartitionId(0), high_watermark.next(), 10, u64::MAX)
        .expect_err("past the high watermark");
    assert_eq!(past.kind(), ErrorKind::OffsetOutOfRange, "{context}");
    for key in ["a", "b", "c"] {
        let payloads: Vec<&str> = expected
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, payload)| *payload)
            .collect();
        let history = topic
            .read_key(key.as_bytes(), None, Direction::Forwards, 100)
            .expect("read key");
        let history: Vec<(u64, &str)> = history
            .iter()
            .map(|event| {
                (
                    event.sequence.0,
                    std::str::from_utf8(&event.payload).expect("utf-8"),
                )
            })
            .collect();
        let wanted: Vec<(u64, &str)> = payloads
            .iter()
            .enumerate()
            .map(|(sequence, payload)| (sequence as u64, *payload))
            .collect();
        assert_eq!(history, wanted, "{context}: key {key}");
        let last = (!payloads.is_empty()).then(|| payloads.len() as u64 - 1);
        assert_eq!(
            topic.key_sequence(key.as_bytes()).expect("sequence"),
            last.map(Sequence),
            "{context}: key {key}"
        );
    }
    // Appends continue right after the kept calls, with the next key sequence.
    let last_a = expected.iter().filter(|(key, _)| *key == "a").count() as u64 - 1;
    let ack = topic
        .append(
            "a",
            ExpectedSequence::Exact(Sequence(last_a)),
            vec![Event::new("e", b"after".to_vec())],
        )
        .expect("append after recovery");
    assert_eq!(ack.first_offset, high_watermark, "{context}");
    assert_eq!(ack.first_sequence, Sequence(last_a + 1), "{context}");
}

#[test]
fn truncation_at_every_byte_of_the_last_two_calls_cuts_back_to_the_last_whole_call() {
    // Goal: a torn tail at any byte loses exactly the calls not wholly written,
    // never half a call, and is reported. Method: for every byte boundary in the
    // frames of the last two calls, truncate a copy of the directory there, reopen
    // it, compare with the calls that end at or before the cut, and append.
    let fixture = fixture();
    let call_frames = fixture.call_frames();
    let tail_start = call_frames[fixture.first_uncheckpointed][0].start;
    let file_end = fixture.frames.last().expect("frames").end;
    let scratch = tempfile::tempdir().expect("tempdir");
    for cut in tail_start..file_end {
        let case = scratch.path().join(format!("cut-{cut}"));
        let segment = fixture.copy(&case);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .expect("open segment");
        file.set_len(cut as u64).expect("truncate");
        drop(file);
        let whole = call_frames
            .iter()
            .take_while(|frames| frames[frames.len() - 1].end <= cut)
            .count();
        let boundary = call_frames[whole - 1].last().expect("frame").end;
        let frames_kept_of_torn_call = call_frames
            .get(whole)
            .map_or(0, |frames| frames.iter().filter(|frame| frame.end <= cut).count());
        let context = format!("cut at byte {cut} (last whole call ends at {boundary})");

        let log = open(&case).unwrap_or_else(|error| panic!("{context}: open: {error}"));
        let report = log.topic("t").expect("topic").recovery_reports()[0].clone();
        let expected_tail = TailRecovery {
            bytes_cut: (cut - boundary) as u64,
            records_cut: frames_kept_of_torn_call as u64,
            segments_removed: 0,
            zero_bytes_cut: 0,
        };
        assert_eq!(report.tail, expected_tail, "{context}");
        assert_eq!(
            std::fs::metadata(&segment).expect("stat").len(),
            boundary as u64,
            "{context}: the file is cut at the call boundary"
        );
        check_present(&log, &fixture.calls[..whole], &context);
        log.close().expect("close");
        std::fs::remove_dir_all(&case).expect("clean up");
    }
}

#[test]
fn recovery_without_a_checkpoint_also_cuts_a_torn_multi_event_call() {
    // Goal: the cut does not depend on the checkpoint; rebuilding every derived
    // state from the log alone gives the same result. Method: delete the
    // checkpoint, truncate inside each frame of the last (three-event) call, reopen.
    let fixture = fixture();
    let call_frames = fixture.call_frames();
    let last = call_frames.len() - 1;
    let scratch = tempfile::tempdir().expect("tempdir");
    for (index, frame) in call_frames[last].iter().enumerate() {
        for cut in [frame.start + 1, frame.start + RECORD_HEADER_LEN, frame.end - 1] {
            let case = scratch.path().join(format!("cut-{cut}"));
            let segment = fixture.copy(&case);
            std::fs::remove_file(support::partition_dir(&case, "t", 0).join("checkpoint"))
                .expect("remove checkpoint");
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&segment)
                .expect("open");
            file.set_len(cut as u64).expect("truncate");
            drop(file);
            let context = format!("no checkpoint, cut at byte {cut} in frame {index} of the last call");
            let log = open(&case).unwrap_or_else(|error| panic!("{context}: open: {error}"));
            let report = log.topic("t").expect("topic").recovery_reports()[0].clone();
            assert!(
                report.checkpoint_rebuilt || report.records_replayed > 0,
                "{context}"
            );
            assert_eq!(report.tail.records_cut, index as u64, "{context}");
            check_present(&log, &fixture.calls[..last], &context);
            log.close().expect("close");
            std::fs::remove_dir_all(&case).expect("clean up");
        }
    }
}

#[test]
fn a_flipped_bit_in_the_last_frame_header_cuts_its_whole_call() {
    // Goal: damage to the newest frame is a torn tail: its whole call (three
    // events, two of them intact) is cut and the damaged frame is never served.
    // Method: for each of the 576 bits of the last frame's fixed header, flip it
    // in a copy, reopen, check the report and the contents.
    let fixture = fixture();
    let call_frames = fixture.call_frames();
    let last = call_frames.len() - 1;
    let last_call_start = call_frames[last][0].start;
    let last_frame = *fixture.frames.last().expect("frames");
    let scratch = tempfile::tempdir().expect("tempdir");
    for bit in 0..RECORD_HEADER_LEN * 8 {
        let case = scratch.path().join(format!("bit-{bit}"));
        let segment = fixture.copy(&case);
        support::flip_bit(&segment, last_frame.start * 8 + bit);
        let context = format!("bit {bit} of the last frame header");
        let log = open(&case).unwrap_or_else(|error| panic!("{context}: open: {error}"));
        let report = log.topic("t").expect("topic").recovery_reports()[0].clone();
        assert_eq!(
            report.tail,
            TailRecovery {
                bytes_cut: (last_frame.end - last_call_start) as u64,
                records_cut: call_frames[last].len() as u64 - 1,
                segments_removed: 0,
                zero_bytes_cut: 0,
            },
            "{context}"
        );
        check_present(&log, &fixture.calls[..last], &context);
        log.close().expect("close");
        std::fs::remove_dir_all(&case).expect("clean up");
    }
}

/// When the sealed fixture is written (a manual clock).
const WRITTEN_AT_MS: i64 = 1_700_000_000_000;

/// A one-partition topic with 4 KiB segments, several of them sealed, closed.
/// Returns the directory, the segment files and each call's payload by offset.
fn sealed_fixture() -> (tempfile::TempDir, Vec<PathBuf>, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = TopicOptions::default().partitions(1).segment_size_bytes_max(4096);
    let mut payloads = Vec::new();
    {
        let clock = Arc::new(ManualClock::new(WRITTEN_AT_MS));
        let log = open_at(dir.path(), &clock).expect("open");
        let topic = log.create_topic("t", options).expect("create");
        for index in 0..120 {
            let payload = format!("payload-{index:04}-0123456789abcdef");
            let ack = topic
                .append(
                    format!("k{}", index % 5),
                    ExpectedSequence::Any,
                    vec![Event::new("e", payload.as_bytes().to_vec())],
                )
                .expect("append");
            assert_eq!(ack.first_offset, Offset(index));
            payloads.push(payload);
        }
        log.close().expect("close");
    }
    let segments = support::segment_files(&support::partition_dir(dir.path(), "t", 0));
    assert!(segments.len() >= 3, "{segments:?}");
    (dir, segments, payloads)
}

fn assert_corruption_in(error: &stele::Error, file: &Path, context: &str) {
    assert_eq!(error.kind(), ErrorKind::Corruption, "{context}: {error}");
    assert!(
        matches!(error, stele::Error::Corruption { path, .. } if path == file),
        "{context}: {error} does not name {}",
        file.display()
    );
}

/// The data-directory-relative name of a file of partition 0 of topic `t`.
fn relative_name(file: &Path) -> String {
    format!(
        "topics/t/p00000/{}",
        file.file_name().expect("file name").to_string_lossy()
    )
}

/// Checks that partition 0 of topic `t` was opened quarantined by damage in
/// `file` (at `position`, when given), serving exactly the offsets below
/// `served_end`, whose payloads (when given) read back; that a read from
/// there, a key read and an append fail with `Quarantined` naming the file;
/// and that the recovery report records it. Returns the quarantine.
fn assert_quarantined(
    log: &Log,
    file: &Path,
    position: Option<u64>,
    served_end: Offset,
    payloads: Option<&[String]>,
    context: &str,
) -> stele::Quarantine {
    let topic = log.topic("t").expect("topic");
    let quarantines = topic.quarantines();
    assert_eq!(quarantines.len(), 1, "{context}: {quarantines:?}");
    let (partition, quarantine) = quarantines[0].clone();
    assert_eq!(partition, PartitionId(0), "{context}");
    assert_eq!(quarantine.file, relative_name(file), "{context}: {quarantine:?}");
    if let Some(position) = position {
        assert_eq!(quarantine.position, position, "{context}: {quarantine:?}");
    }
    assert_eq!(quarantine.served_end, served_end, "{context}: {quarantine:?}");
    assert_eq!(
        topic.recovery_reports()[0].quarantine.as_ref(),
        Some(&quarantine),
        "{context}"
    );
    assert_eq!(
        topic.partition_infos()[0].quarantine.as_ref(),
        Some(&quarantine),
        "{context}"
    );
    assert_eq!(
        topic.high_watermark(PartitionId(0)).expect("hw"),
        served_end,
        "{context}"
    );
    // An empty prefix is refused like the rest (the read starts at the end).
    let read = if served_end == Offset(0) {
        Vec::new()
    } else {
        topic
            .read(PartitionId(0), Offset(0), 1000, u64::MAX)
            .unwrap_or_else(|error| panic!("{context}: the good prefix reads: {error}"))
    };
    assert_eq!(read.len() as u64, served_end.0, "{context}");
    if let Some(payloads) = payloads {
        for event in &read {
            assert_eq!(
                event.payload,
                payloads[event.offset.0 as usize].as_bytes(),
                "{context}: offset {}",
                event.offset
            );
        }
    }
    let refused = |error: stele::Error, what: &str| {
        assert_eq!(error.kind(), ErrorKind::Quarantined, "{context}: {what}: {error}");
        assert!(
            error.to_string().contains(&quarantine.file),
            "{context}: {what}: {error} does not name {}",
            quarantine.file
        );
        assert!(
            !error.to_string().contains(&*log.dir().to_string_lossy()),
            "{context}: {what}: {error} names the data directory"
        );
    };
    refused(
        topic
            .read(PartitionId(0), served_end, 10, u64::MAX)
            .expect_err("read from the served end"),
        "read",
    );
    refused(
        topic
            .append("k0", ExpectedSequence::Any, vec![Event::new("e", b"x".to_vec())])
            .expect_err("append"),
        "append",
    );
    refused(
        topic
            .read_key(b"k0", None, Direction::Forwards, 10)
            .expect_err("key read"),
        "key read",
    );
    quarantine
}

#[test]
fn a_flipped_bit_in_a_sealed_segment_frame_header_quarantines_the_partition_naming_the_file() {
    // Goal: only the active segment's tail may be torn; damage in a sealed segment
    // is never cut silently, and it does not fail the log either: the partition
    // opens quarantined, serving exactly the offsets before the damaged frame.
    // Method: delete the `.idx` files so that opening scans every sealed
    // segment; for every header bit of a middle frame (and every fifth bit of
    // the first and the last frame) of the first segment, flip it, open (expect
    // the partition quarantined naming the file and the frame's position), flip
    // it back. With the `.idx` kept, opening may not read the frame: then the
    // partition opens normally and reading the segment fails with Corruption
    // instead of serving bad bytes; else it is quarantined the same way.
    let (dir, segments, payloads) = sealed_fixture();
    let partition = support::partition_dir(dir.path(), "t", 0);
    let first = &segments[0];
    let bytes = std::fs::read(first).expect("read");
    let frames = support::frames(&bytes);
    let chosen = [frames[0], frames[frames.len() / 2], frames[frames.len() - 1]];
    let indexes: Vec<PathBuf> = segments.iter().map(|path| path.with_extension("idx")).collect();
    let saved_indexes: Vec<Vec<u8>> = indexes
        .iter()
        .map(|path| std::fs::read(path).unwrap_or_default())
        .collect();
    let chosen_offsets = [0, frames.len() / 2, frames.len() - 1];
    for (index, frame) in chosen.into_iter().enumerate() {
        // Every bit of the middle frame; every 5th bit of the first and last.
        let step = if index == 1 { 1 } else { 5 };
        // One event per call: the frame's offset is where the good prefix ends.
        let served_end = Offset(chosen_offsets[index] as u64);
        for bit in (0..RECORD_HEADER_LEN * 8).step_by(step) {
            let position = frame.start * 8 + bit;
            let context = format!("bit {bit} of the frame at byte {}", frame.start);
            for path in &indexes {
                let _ = std::fs::remove_file(path);
            }
            support::flip_bit(first, position);
            let log = open(dir.path()).unwrap_or_else(|error| panic!("{context}: open: {error}"));
            assert_quarantined(
                &log,
                first,
                Some(frame.start as u64),
                served_end,
                Some(&payloads),
                &context,
            );
            log.close().expect("close");
            for (path, saved) in indexes.iter().zip(&saved_indexes) {
                if !saved.is_empty() {
                    std::fs::write(path, saved).expect("restore index");
                }
            }
            // With the index present the damage may only be found on read.
            let log = open(dir.path()).unwrap_or_else(|error| panic!("{context}: open: {error}"));
            let topic = log.topic("t").expect("topic");
            if topic.quarantines().is_empty() {
                let error = topic
                    .read(PartitionId(0), Offset(0), 1000, u64::MAX)
                    .expect_err(&context);
                assert_corruption_in(&error, first, &context);
            } else {
                assert_quarantined(&log, first, Some(frame.start as u64), served_end, None, &context);
            }
            drop(topic);
            log.close().expect("close");
            support::flip_bit(first, position);
        }
    }
    // Undamaged again, everything opens and reads.
    let log = open(dir.path()).expect("open");
    let topic = log.topic("t").expect("topic");
    assert_eq!(
        topic
            .read(PartitionId(0), Offset(0), 1000, u64::MAX)
            .expect("read")
            .len(),
        120
    );
    assert!(partition.join("checkpoint").exists());
}

#[test]
fn a_flipped_payload_bit_in_a_sealed_segment_fails_that_read_only() {
    // Goal: a damaged payload is never served, and does not take other offsets
    // down with it. Method: with the `.idx` files present (so opening does not
    // scan), flip every third bit of one payload of a sealed segment in turn;
    // reading that offset returns Corruption naming the file, while every other
    // offset, before and after it and in other segments, still reads with the
    // right payload. The log is reopened after the dedup window has passed:
    // within it, opening replays (and so checks) the window's records.
    let (dir, segments, payloads) = sealed_fixture();
    let later = Arc::new(ManualClock::new(
        WRITTEN_AT_MS + stele::config::DEDUP_WINDOW_MS_DEFAULT as i64 + 1,
    ));
    let first = &segments[0];
    let bytes = std::fs::read(first).expect("read");
    let frames = support::frames(&bytes);
    let victim = frames.len() / 2;
    let frame = frames[victim];
    let payload_len = payloads[victim].len();
    let payload_start = frame.end - payload_len;
    assert_eq!(&bytes[payload_start..frame.end], payloads[victim].as_bytes());
    for bit in (0..payload_len * 8).step_by(3) {
        let position = payload_start * 8 + bit;
        let context = format!("payload bit {bit} of offset {victim}");
        support::flip_bit(first, position);
        let log = open_at(dir.path(), &later).unwrap_or_else(|error| panic!("{context}: open: {error}"));
        let topic = log.topic("t").expect("topic");
        let error = topic
            .read(PartitionId(0), Offset(victim as u64), 1, u64::MAX)
            .expect_err(&context);
        assert_corruption_in(&error, first, &context);
        let error = topic
            .read(PartitionId(0), Offset(0), 1000, u64::MAX)
            .expect_err(&context);
        assert_corruption_in(&error, first, &context);
        for (offset, payload) in payloads.iter().enumerate() {
            if offset == victim {
                continue;
            }
            let read = topic
                .read(PartitionId(0), Offset(offset as u64), 1, u64::MAX)
                .unwrap_or_else(|error| panic!("{context}: offset {offset}: {error}"));
            assert_eq!(read.len(), 1, "{context}");
            assert_eq!(read[0].payload, payload.as_bytes(), "{context}");
        }
        drop(topic);
        log.close().expect("close");
        support::flip_bit(first, position);
    }
}

/// Appends `extra` to a file.
fn extend_file(path: &Path, extra: &[u8]) {
    let mut bytes = std::fs::read(path).expect("read file");
    bytes.extend_from_slice(extra);
    std::fs::write(path, bytes).expect("write file");
}

#[test]
fn a_zero_filled_tail_of_the_active_segment_is_cut_and_reported_whatever_its_length() {
    // Goal: a power cut can leave the active segment longer than its data, the
    // extra bytes zero (a size that ran ahead of the data); that is a tail to
    // cut and report, not corruption, and no record is lost. Method: extend a
    // copy of the fixture's active segment with zeros of 1 byte, less than a
    // frame header, more than a frame, one page and several pages, with and
    // without the checkpoint; reopen, check the report, the file's length and
    // every call.
    let fixture = fixture();
    let file_end = fixture.frames.last().expect("frames").end;
    let frame_size = fixture.frames[0].end - fixture.frames[0].start;
    let scratch = tempfile::tempdir().expect("tempdir");
    let lengths = [
        1,
        RECORD_HEADER_LEN - 1,
        frame_size + 1,
        4096,
        4096 - file_end % 4096,
        3 * 4096 + 17,
    ];
    for with_checkpoint in [true, false] {
        for length in lengths {
            let context = format!("{length} zero bytes, checkpoint kept: {with_checkpoint}");
            let case = scratch.path().join(format!("zeros-{length}-{with_checkpoint}"));
            let segment = fixture.copy(&case);
            if !with_checkpoint {
                std::fs::remove_file(support::partition_dir(&case, "t", 0).join("checkpoint"))
                    .expect("remove checkpoint");
            }
            extend_file(&segment, &vec![0u8; length]);
            let log = open(&case).unwrap_or_else(|error| panic!("{context}: open: {error}"));
            let report = log.topic("t").expect("topic").recovery_reports()[0].clone();
            assert_eq!(
                report.tail,
                TailRecovery {
                    zero_bytes_cut: length as u64,
                    ..TailRecovery::default()
                },
                "{context}"
            );
            assert_eq!(
                std::fs::metadata(&segment).expect("stat").len(),
                file_end as u64,
                "{context}: the zeros are cut"
            );
            check_present(&log, &fixture.calls, &context);
            log.close().expect("close");
            std::fs::remove_dir_all(&case).expect("clean up");
        }
    }
}

#[test]
fn zeros_after_a_torn_call_are_cut_with_it_and_reported_as_torn() {
    // Goal: zeros that follow part of a call are not a clean zero tail: the
    // partial call and the zeros are one torn tail. Method: cut the fixture
    // inside its last call's second frame, then add a page of zeros; reopen
    // and check that the whole tail counts as torn and the earlier calls stay.
    let fixture = fixture();
    let call_frames = fixture.call_frames();
    let last = call_frames.len() - 1;
    let last_call_start = call_frames[last][0].start;
    let cut = call_frames[last][1].start + 10;
    let file_end = fixture.frames.last().expect("frames").end;
    let scratch = tempfile::tempdir().expect("tempdir");
    let case = scratch.path().join("torn-then-zeros");
    let segment = fixture.copy(&case);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open segment");
    file.set_len(cut as u64).expect("truncate");
    drop(file);
    extend_file(&segment, &vec![0u8; 4096]);
    let log = open(&case).expect("open");
    let report = log.topic("t").expect("topic").recovery_reports()[0].clone();
    assert_eq!(
        report.tail,
        TailRecovery {
            bytes_cut: (cut + 4096 - last_call_start) as u64,
            records_cut: 1,
            ..TailRecovery::default()
        }
    );
    assert!(cut < file_end);
    check_present(&log, &fixture.calls[..last], "torn call then zeros");
    log.close().expect("close");
}

/// A valid frame that would follow the last frame of `segment`: a copy of its
/// first frame with the next offset and a fixed CRC.
fn next_frame(segment: &[u8]) -> Vec<u8> {
    let frames = support::frames(segment);
    let first = frames[0];
    let mut frame = segment[first.start..first.end].to_vec();
    let first_offset = u64::from_le_bytes(frame[8..16].try_into().expect("8 bytes"));
    let next = first_offset + frames.len() as u64;
    frame[8..16].copy_from_slice(&next.to_le_bytes());
    let crc = crc32c::crc32c(&frame[8..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    frame
}

#[test]
fn bytes_past_a_sealed_segments_indexed_end_are_reported_and_never_served() {
    // Goal: a sealed segment longer than its `.idx` says (a lost trim, a size
    // that ran ahead of the data, or bytes written after sealing) opens, serves
    // exactly the indexed records, and reports what follows: zeros as an
    // artefact, a valid-looking frame and garbage distinctly. The file is left
    // as found and a second open reports the same. Method: for each kind of
    // excess, extend the first sealed segment of the sealed fixture, open, read
    // every offset (the next segment's records must be served, not the copy),
    // check the report, reopen, restore the file.
    let (dir, segments, payloads) = sealed_fixture();
    let first = &segments[0];
    let original = std::fs::read(first).expect("read");
    let indexed_end = original.len() as u64;
    let cases: Vec<(&str, Vec<u8>, stele::ExcessKind)> = vec![
        ("one zero byte", vec![0u8; 1], stele::ExcessKind::Zeros),
        (
            "less than a frame header of zeros",
            vec![0u8; 50],
            stele::ExcessKind::Zeros,
        ),
        (
            "three pages of zeros",
            vec![0u8; 3 * 4096],
            stele::ExcessKind::Zeros,
        ),
        ("garbage", vec![0x5Au8; 200], stele::ExcessKind::Garbage),
        (
            "a valid next frame",
            next_frame(&original),
            stele::ExcessKind::Frames,
        ),
    ];
    for (name, extra, kind) in cases {
        extend_file(first, &extra);
        let expected = stele::SealedExcess {
            base_offset: Offset(0),
            position: indexed_end,
            bytes_count: extra.len() as u64,
            kind,
        };
        for attempt in ["first open", "second open"] {
            let context = format!("{name}, {attempt}");
            let log = open(dir.path()).unwrap_or_else(|error| panic!("{context}: open: {error}"));
            let topic = log.topic("t").expect("topic");
            let report = topic.recovery_reports()[0].clone();
            assert_eq!(report.sealed_excess, vec![expected], "{context}");
            assert_eq!(report.tail, TailRecovery::default(), "{context}");
            let read = topic
                .read(PartitionId(0), Offset(0), 1000, u64::MAX)
                .unwrap_or_else(|error| panic!("{context}: read: {error}"));
            let found: Vec<&[u8]> = read.iter().map(|event| event.payload.as_slice()).collect();
            let wanted: Vec<&[u8]> = payloads.iter().map(|payload| payload.as_bytes()).collect();
            assert_eq!(found, wanted, "{context}");
            assert_eq!(
                std::fs::metadata(first).expect("stat").len(),
                indexed_end + extra.len() as u64,
                "{context}: a sealed segment is never cut"
            );
            drop(topic);
            log.close().expect("close");
        }
        std::fs::write(first, &original).expect("restore segment");
    }
}

#[test]
fn zeros_past_a_sealed_segment_without_its_index_are_reported_and_the_index_rebuilt() {
    // Goal: without a `.idx`, a sealed segment is rebuilt by a scan; zeros after
    // its last whole call are excess, not corruption, and the rebuilt index
    // ends before them. Method: delete the first segment's `.idx`, add a page of
    // zeros, open twice (the second from the rebuilt index).
    let (dir, segments, payloads) = sealed_fixture();
    let first = &segments[0];
    let indexed_end = std::fs::metadata(first).expect("stat").len();
    std::fs::remove_file(first.with_extension("idx")).expect("remove index");
    extend_file(first, &[0u8; 4096]);
    for attempt in ["rebuilding open", "open from the rebuilt index"] {
        let log = open(dir.path()).unwrap_or_else(|error| panic!("{attempt}: {error}"));
        let topic = log.topic("t").expect("topic");
        assert_eq!(
            topic.recovery_reports()[0].sealed_excess,
            vec![stele::SealedExcess {
                base_offset: Offset(0),
                position: indexed_end,
                bytes_count: 4096,
                kind: stele::ExcessKind::Zeros,
            }],
            "{attempt}"
        );
        let read = topic
            .read(PartitionId(0), Offset(0), 1000, u64::MAX)
            .expect("read");
        assert_eq!(read.len(), payloads.len(), "{attempt}");
        drop(topic);
        log.close().expect("close");
        assert!(first.with_extension("idx").exists(), "{attempt}");
    }
}

#[test]
fn a_sealed_segment_shorter_than_its_index_quarantines_the_partition_naming_it() {
    // Goal: a sealed segment that lost bytes its index covers is never served
    // past what it still holds nor mapped past its end, and the rest of the
    // partition is not served after the hole: it opens quarantined naming the
    // file, serving the whole frames before the loss. Method: cut one byte,
    // then a whole frame, off the first sealed segment, keeping its `.idx`.
    let (dir, segments, payloads) = sealed_fixture();
    let first = &segments[0];
    let original = std::fs::read(first).expect("read");
    let frames = support::frames(&original);
    let last_frame_start = frames.last().expect("frames").start;
    for cut in [original.len() - 1, last_frame_start] {
        let context = format!("cut to {cut} bytes of {}", original.len());
        std::fs::write(first, &original[..cut]).expect("cut segment");
        let log = open(dir.path()).unwrap_or_else(|error| panic!("{context}: open: {error}"));
        let served_end = Offset(frames.len() as u64 - 1);
        let position = if cut == last_frame_start {
            cut
        } else {
            last_frame_start
        };
        assert_quarantined(
            &log,
            first,
            Some(position as u64),
            served_end,
            Some(&payloads),
            &context,
        );
        log.close().expect("close");
        std::fs::write(first, &original).expect("restore segment");
    }
    open(dir.path()).expect("open restored").close().expect("close");
}

/// Runs the repair of partition 0 of topic `t` through the engine's API (as
/// `stele repair` does) and checks that it cuts at `served_end`, that the
/// directory then verifies clean, opens without quarantine with the kept
/// events, and takes an append at `served_end`.
fn repair_and_check(dir: &Path, served_end: Offset, payloads: &[String], context: &str) {
    let storage = stele::io::StdStorage;
    {
        let _lock = stele::repair::lock_data_dir(&storage, dir).expect("lock");
        let plan = stele::repair::plan(&storage, dir, "t", PartitionId(0))
            .unwrap_or_else(|error| panic!("{context}: plan: {error}"));
        assert_eq!(plan.cut_offset, served_end, "{context}: {plan:?}");
        assert!(!plan.is_empty(), "{context}: {plan:?}");
        let saved = stele::repair::apply(&storage, dir, &plan, "test")
            .unwrap_or_else(|error| panic!("{context}: apply: {error}"));
        assert!(saved.starts_with(dir.join("repair")), "{context}");
    }
    let report = stele::verify::verify_dir(dir).expect("verify");
    assert!(
        report.is_clean(),
        "{context}: verify after repair: {:?}",
        report.problems
    );
    let log = open(dir).unwrap_or_else(|error| panic!("{context}: open after repair: {error}"));
    let topic = log.topic("t").expect("topic");
    assert!(
        topic.quarantines().is_empty(),
        "{context}: {:?}",
        topic.quarantines()
    );
    assert_eq!(
        topic.high_watermark(PartitionId(0)).expect("hw"),
        served_end,
        "{context}"
    );
    let read = if served_end == Offset(0) {
        Vec::new()
    } else {
        topic
            .read(PartitionId(0), Offset(0), 1000, u64::MAX)
            .expect("read after repair")
    };
    let read: Vec<&[u8]> = read.iter().map(|event| event.payload.as_slice()).collect();
    let kept: Vec<&[u8]> = payloads[..served_end.0 as usize]
        .iter()
        .map(|payload| payload.as_bytes())
        .collect();
    assert_eq!(read, kept, "{context}");
    let ack = topic
        .append(
            "k0",
            ExpectedSequence::Any,
            vec![Event::new("e", b"after repair".to_vec())],
        )
        .unwrap_or_else(|error| panic!("{context}: append after repair: {error}"));
    assert_eq!(ack.first_offset, served_end, "{context}");
    drop(topic);
    log.close().expect("close");
}

/// What opening after one kind of damage must do.
enum Expect {
    /// Cut silently as a torn tail: the first `calls` calls stay, nothing is
    /// quarantined.
    Cut { calls: usize },
    /// Quarantine naming the active segment at `position`, serving the
    /// offsets below `served_end`.
    Quarantine { position: u64, served_end: Offset },
}

#[test]
fn the_quarantine_decision_table_holds_for_each_kind_of_damage_to_the_active_segment() {
    // Goal: the line between damage recovery repairs by itself (a torn or zero
    // tail, cut silently) and damage that quarantines (anything that is not the
    // tail: a bad frame with valid frames after it, a cut below what the
    // checkpoint says was synced) is exactly where FORMAT.md draws it. Method:
    // for each row, damage a fresh copy of the fixture (four checkpointed calls,
    // two newer acknowledged ones), open it, and check either the calls kept
    // (reads, key reads, appends) or the quarantine (file, position, the good
    // prefix served, reads past it, key reads and appends refused).
    let fixture = fixture();
    let frames = &fixture.frames;
    let call_frames = fixture.call_frames();
    let call_start_offset = |call: usize| -> Offset {
        Offset(
            fixture.calls[..call]
                .iter()
                .map(|call| call.payloads.len() as u64)
                .sum(),
        )
    };
    let payloads: Vec<String> = fixture
        .calls
        .iter()
        .flat_map(|call| call.payloads.iter().cloned())
        .collect();
    let last = fixture.calls.len() - 1;
    let newer = fixture.first_uncheckpointed;
    let last_frame = *frames.last().expect("frames");
    let newer_first = call_frames[newer][0];
    let last_call_first = call_frames[last][0];
    let checkpointed_frame = call_frames[1][0];
    type Damage = Box<dyn Fn(&Path)>;
    let flip = |bit: usize| -> Damage { Box::new(move |segment: &Path| support::flip_bit(segment, bit)) };
    let cut = |length: usize| -> Damage {
        Box::new(move |segment: &Path| {
            let bytes = std::fs::read(segment).expect("read");
            std::fs::write(segment, &bytes[..length]).expect("cut");
        })
    };
    let rows: Vec<(&str, Damage, Expect)> = vec![
        (
            "a cut inside the last call is a torn tail",
            cut(last_frame.start + 10),
            Expect::Cut { calls: last },
        ),
        (
            "zeros after the last call are a zero tail",
            Box::new(|segment: &Path| extend_file(segment, &[0u8; 4096])),
            Expect::Cut { calls: last + 1 },
        ),
        (
            "a flipped CRC bit in the very last frame is a torn tail",
            flip((last_frame.start + 4) * 8),
            Expect::Cut { calls: last },
        ),
        (
            "a flipped CRC bit in the last call's first frame, its later frames valid, quarantines",
            flip((last_call_first.start + 4) * 8),
            Expect::Quarantine {
                position: last_call_first.start as u64,
                served_end: call_start_offset(last),
            },
        ),
        (
            "a flipped payload bit above the checkpoint with a valid call after it quarantines",
            flip((newer_first.end - 1) * 8),
            Expect::Quarantine {
                position: newer_first.start as u64,
                served_end: call_start_offset(newer),
            },
        ),
        (
            "a flipped length bit above the checkpoint with a valid call after it quarantines",
            flip(newer_first.start * 8 + 1),
            Expect::Quarantine {
                position: newer_first.start as u64,
                served_end: call_start_offset(newer),
            },
        ),
        (
            "a cut below the checkpoint's sync floor quarantines",
            cut(checkpointed_frame.start + 10),
            Expect::Quarantine {
                position: checkpointed_frame.start as u64,
                served_end: call_start_offset(1),
            },
        ),
        (
            "a flipped bit below the checkpoint's sync floor quarantines",
            flip((checkpointed_frame.start + 4) * 8),
            Expect::Quarantine {
                position: checkpointed_frame.start as u64,
                served_end: call_start_offset(1),
            },
        ),
    ];
    let root = tempfile::tempdir().expect("tempdir");
    for (index, (context, damage, expect)) in rows.iter().enumerate() {
        let case = root.path().join(format!("case-{index}"));
        let segment = fixture.copy(&case);
        damage(&segment);
        let damaged = std::fs::read(&segment).expect("read damaged");
        let log = open(&case).unwrap_or_else(|error| panic!("{context}: open: {error}"));
        match expect {
            Expect::Cut { calls } => {
                let topic = log.topic("t").expect("topic");
                assert!(
                    topic.quarantines().is_empty(),
                    "{context}: {:?}",
                    topic.quarantines()
                );
                assert_eq!(topic.recovery_reports()[0].quarantine, None, "{context}");
                drop(topic);
                check_present(&log, &fixture.calls[..*calls], context);
            }
            Expect::Quarantine { position, served_end } => {
                assert_quarantined(
                    &log,
                    &segment,
                    Some(*position),
                    *served_end,
                    Some(&payloads),
                    context,
                );
                // A quarantined partition writes nothing: the damaged bytes stay
                // for `stele repair` (or a restore) to deal with.
                log.close().expect("close");
                assert_eq!(
                    std::fs::read(&segment).expect("read"),
                    damaged,
                    "{context}: file changed"
                );
                let log = open(&case).expect("reopen");
                assert_quarantined(&log, &segment, Some(*position), *served_end, None, context);
                log.close().expect("close");
                drop(log);
                repair_and_check(&case, *served_end, &payloads, context);
                continue;
            }
        }
        log.close().expect("close");
    }
}

#[test]
fn a_missing_sealed_segment_or_a_damaged_checkpoint_is_judged_by_the_same_table() {
    // Goal: damage outside segment frames follows the same line: a segment
    // missing from the middle of a partition quarantines it (naming the segment
    // after the gap, serving what precedes it), while an unreadable checkpoint
    // with every segment present is rebuilt from the log without quarantine.
    // Method: on the sealed fixture, remove the second segment and its `.idx`
    // and open; on a fresh copy, overwrite the checkpoint with garbage and open.
    let (dir, segments, payloads) = sealed_fixture();
    let partition = support::partition_dir(dir.path(), "t", 0);
    let copy = tempfile::tempdir().expect("tempdir");
    support::copy_dir(dir.path(), copy.path());
    let first_count = support::frames(&std::fs::read(&segments[0]).expect("read")).len() as u64;
    std::fs::remove_file(&segments[1]).expect("remove segment");
    let _ = std::fs::remove_file(segments[1].with_extension("idx"));
    let log = open(dir.path()).expect("open with a gap");
    assert_quarantined(
        &log,
        &segments[2],
        Some(0),
        Offset(first_count),
        Some(&payloads),
        "gap",
    );
    log.close().expect("close");

    let checkpoint = support::partition_dir(copy.path(), "t", 0).join("checkpoint");
    assert!(partition.join("checkpoint").exists());
    std::fs::write(&checkpoint, b"not a checkpoint").expect("damage checkpoint");
    let log = open(copy.path()).expect("open with a bad checkpoint");
    let topic = log.topic("t").expect("topic");
    assert!(topic.quarantines().is_empty(), "{:?}", topic.quarantines());
    assert!(topic.recovery_reports()[0].checkpoint_rebuilt);
    assert_eq!(
        topic
            .read(PartitionId(0), Offset(0), 1000, u64::MAX)
            .expect("read")
            .len(),
        payloads.len()
    );
    drop(topic);
    log.close().expect("close");
}

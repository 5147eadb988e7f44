//! Torn-write tables: every byte boundary of the newest append calls, and every
//! bit of frame headers, damaged on disk; recovery must cut exactly the torn call
//! at the tail of the active segment and report `Corruption` anywhere else.

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

#[test]
fn a_flipped_bit_in_a_sealed_segment_frame_header_is_corruption_naming_the_file() {
    // Goal: only the active segment's tail may be torn; damage in a sealed segment
    // is never cut silently. Method: delete the `.idx` files so that opening scans
    // every sealed segment; for every header bit of a middle frame (and every
    // fifth bit of the first and the last frame) of the first segment, flip it, open (expect Corruption naming the
    // file), flip it back. With the `.idx` kept, the open may succeed, but then
    // reading the segment must fail with Corruption instead of serving bad bytes.
    let (dir, segments, _) = sealed_fixture();
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
    for (index, frame) in chosen.into_iter().enumerate() {
        // Every bit of the middle frame; every 5th bit of the first and last.
        let step = if index == 1 { 1 } else { 5 };
        for bit in (0..RECORD_HEADER_LEN * 8).step_by(step) {
            let position = frame.start * 8 + bit;
            let context = format!("bit {bit} of the frame at byte {}", frame.start);
            for path in &indexes {
                let _ = std::fs::remove_file(path);
            }
            support::flip_bit(first, position);
            let error = open(dir.path()).expect_err(&context);
            assert_corruption_in(&error, first, &context);
            for (path, saved) in indexes.iter().zip(&saved_indexes) {
                if !saved.is_empty() {
                    std::fs::write(path, saved).expect("restore index");
                }
            }
            // With the index present the damage is found on read.
            match open(dir.path()) {
                Err(error) => assert_corruption_in(&error, first, &context),
                Ok(log) => {
                    let topic = log.topic("t").expect("topic");
                    let error = topic
                        .read(PartitionId(0), Offset(0), 1000, u64::MAX)
                        .expect_err(&context);
                    assert_corruption_in(&error, first, &context);
                    drop(topic);
                    log.close().expect("close");
                }
            }
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
fn a_sealed_segment_shorter_than_its_index_is_corruption_naming_it() {
    // Goal: a sealed segment that lost bytes its index covers is never served
    // short nor mapped past its end: open fails with Corruption naming the
    // file. Method: cut one byte, then a whole frame, off the first sealed
    // segment, keeping its `.idx`.
    let (dir, segments, _) = sealed_fixture();
    let first = &segments[0];
    let original = std::fs::read(first).expect("read");
    let frames = support::frames(&original);
    let last_frame_start = frames.last().expect("frames").start;
    for cut in [original.len() - 1, last_frame_start] {
        let context = format!("cut to {cut} bytes of {}", original.len());
        std::fs::write(first, &original[..cut]).expect("cut segment");
        let error = open(dir.path()).expect_err(&context);
        assert_corruption_in(&error, first, &context);
        std::fs::write(first, &original).expect("restore segment");
    }
    open(dir.path()).expect("open restored").close().expect("close");
}

//! Replays every committed fuzz corpus (`fuzz/corpus/NAME/*`) through the same
//! target bodies libFuzzer runs (`stele_proof::NAME`), so the normal test suite
//! keeps every seed and every input a fuzzer once found interesting passing.
//!
//! `STELE_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_corpus` rewrites the seed
//! files (`seed-*`) from the current encoders first; inputs found by fuzzing are
//! kept under their libFuzzer hash names.

use std::path::{Path, PathBuf};
use stele::Sequence;

use prost::Message;
use stele::format::checkpoint::{Checkpoint, ProducerSnapshot, RecentAppend};
use stele::format::index::{IndexEntry, SegmentIndex};
use stele::format::record::{self, RecordView};
use stele::format::segment::{self, SegmentHeader};
use stele::format::{checkpoint, index};
use stele::wire::proto;
use stele::{
    Durability, Epoch, Event, ExpectedSequence, Log, LogOptions, Offset, PartitionId, ProducerId,
    ProducerStamp, TopicOptions,
};

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("decode_record", stele_proof::decode_record),
    ("decode_segment_header", stele_proof::decode_segment_header),
    ("decode_index", stele_proof::decode_index),
    ("decode_checkpoint", stele_proof::decode_checkpoint),
    ("decode_topic_meta", stele_proof::decode_topic_meta),
    ("decode_envelope", stele_proof::decode_envelope),
    ("journal_records", stele_proof::journal_records),
    ("dedup_run", stele_proof::dedup_run),
    ("recover_segment", stele_proof::recover_segment),
    ("grpc_requests", stele_proof::grpc_requests),
    ("engine_ops", stele_proof::engine_ops),
    ("auth_credentials", stele_proof::auth_credentials),
];

fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(name)
}

fn corpus_files(name: &str) -> Vec<PathBuf> {
    let dir = corpus_dir(name);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|error| panic!("corpus {}: {error}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_corpus_and_replays_it() {
    if std::env::var_os("STELE_WRITE_FUZZ_SEEDS").is_some() {
        generate_seed_corpus();
    }
    for (name, target) in TARGETS {
        let files = corpus_files(name);
        assert!(!files.is_empty(), "corpus of {name} is empty");
        for file in files {
            let data = std::fs::read(&file).expect("read corpus file");
            let result = std::panic::catch_unwind(|| target(&data));
            assert!(result.is_ok(), "{name}: {} fails", file.display());
        }
    }
}

#[test]
fn every_fuzz_target_file_is_listed_here() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("fuzz_targets");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .expect("fuzz targets")
        .map(|entry| entry.expect("entry").path())
        .filter_map(|path| path.file_stem().map(|stem| stem.to_string_lossy().into_owned()))
        .collect();
    found.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(name, _)| name.to_string()).collect();
    listed.sort();
    assert_eq!(found, listed);
}

// ---------------------------------------------------------------------------
// Seed generation.
// ---------------------------------------------------------------------------

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn sample_record(offset: u64, id: Option<&[u8]>, producer: bool) -> Vec<u8> {
    let view = RecordView {
        offset: Offset(offset),
        timestamp_ms: 1_700_000_000_000 + offset as i64,
        sequence: Sequence(offset),
        key_previous_offset: if offset == 0 {
            record::NO_PREVIOUS
        } else {
            offset - 1
        },
        producer: producer.then_some(ProducerStamp {
            producer: ProducerId(3),
            epoch: Epoch(1),
            sequence: Sequence(offset),
        }),
        flags: record::FLAG_CALL_END,
        key: b"key",
        event_type: "created",
        idempotency_id: id,
        headers: &[],
        payload: b"{\"n\":1}",
    };
    let headers = if producer {
        vec![("trace".to_string(), b"abc".to_vec())]
    } else {
        Vec::new()
    };
    let mut buf = Vec::new();
    record::encode(&mut buf, &view, &headers);
    buf
}

fn files_under(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files_under(&path, suffix, out);
        } else if path.to_string_lossy().ends_with(suffix) {
            out.push(path);
        }
    }
}

/// Writes `fuzz/corpus/*/seed-*` from the real encoders and a real engine run.
/// Run after a format change with `STELE_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_corpus`.
fn generate_seed_corpus() {
    // Pure codecs.
    write_seed("decode_record", "plain", &sample_record(0, None, false));
    write_seed(
        "decode_record",
        "id-producer-header",
        &sample_record(5, Some(b"id-1"), true),
    );
    let header = segment::encode(&SegmentHeader {
        partition: PartitionId(1),
        base_offset: Offset(42),
        created_ms: 1_700_000_000_000,
    });
    write_seed("decode_segment_header", "header", &header);
    let idx = index::encode(&SegmentIndex {
        base_offset: Offset(100),
        segment_size: 9000,
        records_count: 30,
        timestamp_max: 1_700_000_000_500,
        entries: vec![
            IndexEntry {
                offset_delta: 0,
                position: 40,
                timestamp_ms: 1_700_000_000_000,
            },
            IndexEntry {
                offset_delta: 12,
                position: 4200,
                timestamp_ms: 1_700_000_000_200,
            },
        ],
    });
    write_seed("decode_index", "two-entries", &idx);
    let ckp = checkpoint::encode(&Checkpoint {
        partition: PartitionId(0),
        next_offset: Offset(10),
        floor_base_offset: Offset(0),
        floor_position: 800,
        last_timestamp_ms: 1_700_000_000_000,
        keys: vec![(11, Sequence(2), Offset(8)), (12, Sequence(0), Offset(9))],
        collided: vec![(b"k".to_vec(), Sequence(1), Offset(5))],
        producers: vec![ProducerSnapshot {
            id: ProducerId(1),
            epoch: Epoch(2),
            last_sequence: Sequence(3),
            last_timestamp_ms: 1_700_000_000_000,
            recent: vec![RecentAppend {
                sequence: Sequence(3),
                first_offset: Offset(7),
                first_sequence: Sequence(1),
                last_sequence: Sequence(2),
                timestamp_ms: 1_700_000_000_000,
            }],
        }],
    });
    write_seed("decode_checkpoint", "full", &ckp);
    let meta_default = stele::format::topic_meta::encode("orders", &TopicOptions::default());
    let meta_custom = stele::format::topic_meta::encode(
        "t",
        &TopicOptions::default()
            .partitions(3)
            .durability(Durability::Interval { interval_ms: 50 })
            .retention_age_ms(Some(60_000))
            .retention_bytes(Some(1 << 20)),
    );
    write_seed("decode_topic_meta", "default", &meta_default);
    write_seed("decode_topic_meta", "custom", &meta_custom);
    write_seed("decode_envelope", "index", &idx);
    write_seed("decode_envelope", "checkpoint", &ckp);
    write_seed("decode_envelope", "topic-meta", &meta_custom);
    write_seed(
        "decode_envelope",
        "other-magic",
        &stele::format::envelope::encode(b"STELEXYZ", 3, b"body"),
    );

    // Files written by the engine itself.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = Log::open(dir.path(), LogOptions::default()).expect("open");
        let topic = log
            .create_topic(
                "t",
                TopicOptions::default()
                    .partitions(2)
                    .segment_size_bytes_max(stele::limits::SEGMENT_SIZE_BYTES_MIN),
            )
            .expect("create");
        topic
            .append(
                "a",
                ExpectedSequence::NoEvents,
                vec![Event::new("e", b"one".to_vec())],
            )
            .expect("append");
        topic
            .append(
                "a",
                ExpectedSequence::Exact(Sequence(0)),
                vec![
                    Event::new("e", b"two".to_vec()).with_idempotency_id("id-2"),
                    Event::new("e", b"three".to_vec()).with_header("h", b"v".to_vec()),
                ],
            )
            .expect("append");
        topic
            .commit_cursor("c", &[(PartitionId(0), Offset(1))], false)
            .expect("commit");
        topic
            .commit_cursor("c", &[(PartitionId(1), Offset(0))], false)
            .expect("commit");
        topic.open_producer("p").expect("producer");
        topic.open_producer("p").expect("producer again");
        log.close().expect("close");
    }
    let topic_dir = dir.path().join("topics").join("t");
    let cursors = std::fs::read(topic_dir.join("cursors")).expect("cursors file");
    let producers = std::fs::read(topic_dir.join("producers")).expect("producers file");
    write_seed("journal_records", "cursors", &[&[0u8, 1][..], &cursors].concat());
    write_seed(
        "journal_records",
        "producers",
        &[&[1u8, 0][..], &producers].concat(),
    );
    write_seed(
        "journal_records",
        "cursor-frames",
        &[&[2u8, 1][..], &cursors[16..]].concat(),
    );
    write_seed(
        "journal_records",
        "producer-frames",
        &[&[3u8, 0][..], &producers[16..]].concat(),
    );
    let webhooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks-v1/webhooks.journal");
    let webhooks = std::fs::read(webhooks).expect("the webhook journal fixture");
    write_seed(
        "journal_records",
        "webhooks",
        &[&[4u8, 0][..], &webhooks].concat(),
    );
    let groups = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/groups-v1/groups.journal");
    let groups = std::fs::read(groups).expect("the group journal fixture");
    write_seed("journal_records", "groups", &[&[16u8, 0][..], &groups].concat());
    write_seed(
        "journal_records",
        "group-frames",
        &[&[18u8, 0][..], &groups[16..]].concat(),
    );
    let mut runs = Vec::new();
    files_under(dir.path(), ".run", &mut runs);
    for (at, run) in runs.iter().enumerate().take(2) {
        let bytes = std::fs::read(run).expect("run");
        write_seed(
            "dedup_run",
            &format!("engine-{at}"),
            &[&[0u8][..], &bytes].concat(),
        );
    }
    write_seed("dedup_run", "garbage", b"\0not a run file");
    let mut segments = Vec::new();
    files_under(dir.path(), ".log", &mut segments);
    segments.sort();
    for (at, path) in segments.iter().enumerate() {
        let bytes = std::fs::read(path).expect("segment");
        if bytes.len() <= 40 {
            continue;
        }
        write_seed(
            "recover_segment",
            &format!("segment-{at}"),
            &[&[0u8][..], &bytes].concat(),
        );
        write_seed(
            "recover_segment",
            &format!("segment-{at}-no-checkpoint"),
            &[&[2u8][..], &bytes].concat(),
        );
        write_seed(
            "recover_segment",
            &format!("records-{at}"),
            &[&[1u8][..], &bytes[40..]].concat(),
        );
        write_seed(
            "recover_segment",
            &format!("records-{at}-crc-fixed"),
            &[&[7u8][..], &bytes[40..]].concat(),
        );
        for zeros in [100usize, 4096] {
            write_seed(
                "recover_segment",
                &format!("segment-{at}-zero-tail-{zeros}"),
                &[&[0u8][..], &bytes, &vec![0u8; zeros]].concat(),
            );
        }
        let torn = &bytes[..bytes.len() - 3];
        write_seed(
            "recover_segment",
            &format!("torn-{at}"),
            &[&[3u8][..], &torn[40..]].concat(),
        );
    }
    write_seed(
        "recover_segment",
        "engine-records",
        &[
            &[1u8][..],
            &sample_record(0, None, false),
            &sample_record(1, Some(b"i"), true),
        ]
        .concat(),
    );

    // gRPC requests: a kind byte, then the message.
    let event = proto::Event {
        r#type: "e".to_string(),
        payload: b"x".to_vec(),
        idempotency_id: b"id".to_vec(),
        ..proto::Event::default()
    };
    let grpc: Vec<(&str, u8, Vec<u8>)> = vec![
        (
            "append",
            0,
            proto::AppendRequest {
                topic: "t".to_string(),
                key: b"k".to_vec(),
                events: vec![event.clone()],
                ..proto::AppendRequest::default()
            }
            .encode_to_vec(),
        ),
        (
            "append-new-topic",
            0,
            proto::AppendRequest {
                topic: "new".to_string(),
                key: b"k".to_vec(),
                events: vec![event.clone(), event.clone()],
                ..proto::AppendRequest::default()
            }
            .encode_to_vec(),
        ),
        (
            "append-batch",
            1,
            proto::AppendBatchRequest {
                topic: "t".to_string(),
                appends: vec![
                    proto::BatchAppend {
                        key: b"k".to_vec(),
                        events: vec![event.clone()],
                        ..proto::BatchAppend::default()
                    },
                    proto::BatchAppend {
                        key: b"j".to_vec(),
                        events: vec![event],
                        ..proto::BatchAppend::default()
                    },
                ],
            }
            .encode_to_vec(),
        ),
        (
            "read",
            2,
            proto::ReadRequest {
                topic: "t".to_string(),
                partition: 0,
                from_offset: 0,
                max_events: 10,
                max_bytes: 0,
            }
            .encode_to_vec(),
        ),
        (
            "read-key",
            3,
            proto::ReadKeyRequest {
                topic: "t".to_string(),
                key: b"k".to_vec(),
                max_events: 10,
                ..proto::ReadKeyRequest::default()
            }
            .encode_to_vec(),
        ),
        (
            "subscribe",
            4,
            proto::SubscribeRequest {
                topic: "t".to_string(),
                ..proto::SubscribeRequest::default()
            }
            .encode_to_vec(),
        ),
        (
            "commit-cursor",
            5,
            proto::CommitCursorRequest {
                topic: "t".to_string(),
                cursor: "c".to_string(),
                offsets: [(0u32, 1u64)].into_iter().collect(),
                allow_backwards: false,
            }
            .encode_to_vec(),
        ),
        (
            "create-topic",
            6,
            proto::CreateTopicRequest {
                topic: "fresh".to_string(),
                settings: Some(proto::TopicSettings {
                    partitions: 2,
                    ..proto::TopicSettings::default()
                }),
            }
            .encode_to_vec(),
        ),
    ];
    for (name, kind, message) in grpc {
        write_seed("grpc_requests", name, &[&[kind][..], &message].concat());
    }

    // Engine operations: see `stele_proof::engine_ops` for the byte layout.
    write_seed("engine_ops", "appends", &[0, 0, 1, 1, 1, 2, 0, 2, 0x4a, 3, 4]);
    write_seed("engine_ops", "crash", &[0, 0, 0x82, 0, 1, 0xca, 5, 7, 0, 0, 2]);
    write_seed(
        "engine_ops",
        "retention",
        &[
            0, 0, 0x80, 0, 0, 0x83, 0, 0, 0x83, 0, 0, 0x83, 0, 0, 0x83, 6, 7, 0, 4,
        ],
    );
    write_seed("engine_ops", "cursor", &[0, 1, 0, 7, 0, 7, 2, 4, 7, 1, 5, 3]);
}

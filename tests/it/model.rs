//! A model test: random sequences of appends (with right and wrong expected
//! sequences and repeated idempotency ids), rolls, reopens, retention, cursor
//! commits and clock moves, checked after every step against an in-memory model
//! (`Vec` of partitions of records, key sequences, ids with their timestamps).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use stele::Sequence;

use proptest::prelude::*;
use stele::{
    Direction, ErrorKind, Event, ExpectedSequence, Log, ManualClock, Offset, PartitionId, Topic,
    TopicOptions, partition_for_key,
};

const PARTITIONS: u32 = 2;
const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];
const WINDOW_MS: i64 = 5_000;
const START_MS: i64 = 1_700_000_000_000;

#[derive(Debug, Clone)]
enum Expect {
    Any,
    NoEvents,
    /// The right sequence when the key has one.
    Right,
    /// The right sequence plus this (wrong unless 0).
    Off(i8),
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        key: usize,
        expect: Expect,
        /// One entry per event: an idempotency id from a small set, or none.
        ids: Vec<Option<u8>>,
        big: bool,
    },
    Reopen,
    Retention,
    Commit {
        partition: u32,
        /// Relative to the high watermark: 0 = at it, positive = past it.
        back: u8,
        ahead: bool,
        allow_backwards: bool,
    },
    Advance(i64),
}

fn op() -> impl Strategy<Value = Op> {
    let expect = prop_oneof![
        Just(Expect::Any),
        Just(Expect::NoEvents),
        Just(Expect::Right),
        Just(Expect::Right),
        (-2i8..=2).prop_map(Expect::Off),
    ];
    let append = (
        0..KEYS.len(),
        expect,
        proptest::collection::vec(proptest::option::weighted(0.5, 0u8..6), 1..=3),
        proptest::bool::weighted(0.2),
    )
        .prop_map(|(key, expect, ids, big)| Op::Append {
            key,
            expect,
            ids,
            big,
        });
    prop_oneof![
        8 => append,
        1 => Just(Op::Reopen),
        1 => Just(Op::Retention),
        1 => (0..PARTITIONS, 0u8..4, any::<bool>(), any::<bool>()).prop_map(|(partition, back, ahead, allow_backwards)| Op::Commit { partition, back, ahead, allow_backwards }),
        1 => prop_oneof![Just(1i64), Just(1_000), Just(WINDOW_MS - 1), Just(WINDOW_MS), Just(WINDOW_MS + 1)].prop_map(Op::Advance),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct Record {
    key: String,
    sequence: u64,
    payload: Vec<u8>,
    id: Option<Vec<u8>>,
    timestamp_ms: i64,
}

#[derive(Default)]
struct Model {
    /// Records by partition, by offset (index); those below `earliest` are gone.
    partitions: Vec<Vec<Record>>,
    earliest: Vec<u64>,
    /// Last sequence per key; survives retention.
    sequences: HashMap<String, u64>,
    cursor: Vec<Option<u64>>,
    now_ms: i64,
    last_timestamp: Vec<i64>,
}

impl Model {
    fn new() -> Model {
        Model {
            partitions: vec![Vec::new(); PARTITIONS as usize],
            earliest: vec![0; PARTITIONS as usize],
            cursor: vec![None; PARTITIONS as usize],
            last_timestamp: vec![i64::MIN; PARTITIONS as usize],
            now_ms: START_MS,
            ..Model::default()
        }
    }

    /// The stored, retained record of `key` with this id in `partition` still
    /// within the dedup window: (offset, record). Ids are scoped to their key.
    fn find_id(&self, partition: usize, key: &str, id: &[u8], now: i64) -> Option<(u64, &Record)> {
        let records = &self.partitions[partition];
        (self.earliest[partition] as usize..records.len())
            .rev()
            .map(|offset| (offset as u64, &records[offset]))
            .find(|(_, record)| {
                record.key == key && record.id.as_deref() == Some(id) && now - record.timestamp_ms < WINDOW_MS
            })
    }
}

struct Harness {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    log: Option<Log>,
    topic: Topic,
    payloads: u64,
}

fn options() -> TopicOptions {
    TopicOptions::default()
        .partitions(PARTITIONS)
        .segment_size_bytes_max(4096)
        .retention_bytes(Some(6_000))
        .dedup_window_ms(WINDOW_MS as u64)
}

fn open(dir: &Path, clock: &Arc<ManualClock>) -> Log {
    Log::open(
        dir,
        crate::support::no_sync_options()
            .clock(Arc::clone(clock) as Arc<dyn stele::Clock>)
            // Retention runs only when the model says so (`Op::Retention`), not in
            // the background between a check and a read.
            .housekeeping_interval(std::time::Duration::from_secs(24 * 60 * 60)),
    )
    .expect("open")
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(START_MS));
        let log = open(dir.path(), &clock);
        let topic = log.create_topic("t", options()).expect("create");
        Harness {
            dir,
            clock,
            log: Some(log),
            topic,
            payloads: 0,
        }
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut harness = Harness::new();
    let mut model = Model::new();
    for (step, op) in ops.iter().enumerate() {
        apply(&mut harness, &mut model, op)
            .map_err(|error| TestCaseError::fail(format!("step {step} {op:?}: {error}")))?;
        compare(&harness.topic, &model)
            .map_err(|error| TestCaseError::fail(format!("after step {step} {op:?}: {error}")))?;
    }
    Ok(())
}

fn apply(harness: &mut Harness, model: &mut Model, op: &Op) -> Result<(), String> {
    match op {
        Op::Append {
            key,
            expect,
            ids,
            big,
        } => {
            let key = KEYS[*key];
            let partition = partition_for_key(key.as_bytes(), PARTITIONS).0 as usize;
            let last = model.sequences.get(key).copied();
            let expected = match expect {
                Expect::Any => ExpectedSequence::Any,
                Expect::NoEvents => ExpectedSequence::NoEvents,
                Expect::Right => last
                    .map(Sequence)
                    .map_or(ExpectedSequence::NoEvents, ExpectedSequence::Exact),
                Expect::Off(delta) => {
                    ExpectedSequence::Exact(Sequence(last.unwrap_or(0).saturating_add_signed(*delta as i64)))
                }
            };
            let events: Vec<Event> = ids
                .iter()
                .map(|id| {
                    harness.payloads += 1;
                    // An event with an id has a payload made of the id, so that a
                    // repeated id is a true retry unless `big` differs, which makes
                    // it a reuse with other content.
                    let mut payload = match id {
                        Some(id) => format!("id{id}").into_bytes(),
                        None => format!("p{}", harness.payloads).into_bytes(),
                    };
                    if *big {
                        payload.resize(1500, b'.');
                    }
                    let event = Event::new("e", payload);
                    match id {
                        Some(id) => event.with_idempotency_id(format!("id{id}")),
                        None => event,
                    }
                })
                .collect();
            let result = harness.topic.append(key, expected, events.clone());
            // The model's answer.
            let now = model.now_ms.max(model.last_timestamp[partition]);
            let id_list: Vec<Option<Vec<u8>>> =
                events.iter().map(|event| event.idempotency_id.clone()).collect();
            let repeated = id_list
                .iter()
                .enumerate()
                .any(|(index, id)| id.is_some() && id_list[..index].contains(id));
            let found: Vec<Option<(u64, Record)>> = id_list
                .iter()
                .map(|id| {
                    id.as_ref().and_then(|id| {
                        model
                            .find_id(partition, key, id, now)
                            .map(|(offset, record)| (offset, record.clone()))
                    })
                })
                .collect();
            let duplicates = found.iter().filter(|found| found.is_some()).count();
            let condition = match expected {
                ExpectedSequence::Any => true,
                ExpectedSequence::NoEvents => last.is_none(),
                ExpectedSequence::Exact(sequence) => last == Some(sequence.0),
            };
            if repeated {
                return expect_error(result, ErrorKind::RepeatedIdempotencyId);
            }
            let reused = found.iter().zip(&events).any(|(found, event)| {
                found
                    .as_ref()
                    .is_some_and(|(_, record)| record.payload != event.payload)
            });
            if reused {
                return expect_error(result, ErrorKind::IdempotencyIdReused);
            }
            if duplicates == events.len() {
                // A duplicate answer names a contiguous range of the key's events.
                let contiguous = found.iter().enumerate().all(|(index, original)| {
                    let (offset, record) = original.as_ref().expect("every event is a duplicate");
                    let (first_offset, first) = found[0].as_ref().expect("duplicate");
                    *offset == first_offset + index as u64 && record.sequence == first.sequence + index as u64
                });
                if !contiguous {
                    return expect_error(result, ErrorKind::IdempotencyIdReused);
                }
                let ack = result.map_err(|error| format!("expected a duplicate, got {error}"))?;
                let (first_offset, first) = found[0].clone().expect("duplicate");
                let (_, last_record) = found[events.len() - 1].clone().expect("duplicate");
                if !ack.duplicate
                    || ack.first_offset != Offset(first_offset)
                    || ack.first_sequence != Sequence(first.sequence)
                    || ack.last_sequence != Sequence(last_record.sequence)
                {
                    return Err(format!(
                        "duplicate ack {ack:?}, model {first_offset} {first:?} {last_record:?}"
                    ));
                }
                return Ok(());
            }
            if duplicates > 0 {
                return expect_error(result, ErrorKind::PartialDuplicate);
            }
            if !condition {
                return expect_error(result, ErrorKind::WrongExpectedSequence);
            }
            let ack = result.map_err(|error| format!("expected success, got {error}"))?;
            let first_offset = model.partitions[partition].len() as u64;
            let first_sequence = last.map_or(0, |last| last + 1);
            if ack.duplicate
                || ack.first_offset != Offset(first_offset)
                || ack.first_sequence != Sequence(first_sequence)
                || ack.partition != PartitionId(partition as u32)
                || ack.timestamp_ms != now
            {
                return Err(format!(
                    "ack {ack:?}, model offset {first_offset} sequence {first_sequence} at {now}"
                ));
            }
            for (index, event) in events.into_iter().enumerate() {
                model.partitions[partition].push(Record {
                    key: key.to_string(),
                    sequence: first_sequence + index as u64,
                    payload: event.payload,
                    id: event.idempotency_id,
                    timestamp_ms: now,
                });
            }
            model.sequences.insert(key.to_string(), ack.last_sequence.0);
            model.last_timestamp[partition] = now;
            Ok(())
        }
        Op::Reopen => {
            let log = harness.log.take().expect("open log");
            log.close().map_err(|error| format!("close: {error}"))?;
            let log = open(harness.dir.path(), &harness.clock);
            harness.topic = log.topic("t").map_err(|error| error.to_string())?;
            harness.log = Some(log);
            Ok(())
        }
        Op::Retention => {
            harness
                .topic
                .enforce_retention()
                .map_err(|error| error.to_string())?;
            for (partition, info) in harness.topic.partition_infos().iter().enumerate() {
                let earliest = info.earliest.0;
                if earliest < model.earliest[partition] || earliest > model.partitions[partition].len() as u64
                {
                    return Err(format!(
                        "partition {partition}: earliest {earliest}, model earliest {} end {}",
                        model.earliest[partition],
                        model.partitions[partition].len()
                    ));
                }
                model.earliest[partition] = earliest;
            }
            Ok(())
        }
        Op::Commit {
            partition,
            back,
            ahead,
            allow_backwards,
        } => {
            let high_watermark = model.partitions[*partition as usize].len() as u64;
            let offset = if *ahead {
                high_watermark + 1
            } else {
                high_watermark.saturating_sub(*back as u64)
            };
            let result = harness.topic.commit_cursor(
                "c",
                &[(PartitionId(*partition), Offset(offset))],
                *allow_backwards,
            );
            let committed = model.cursor[*partition as usize];
            if offset > high_watermark {
                return expect_error(result, ErrorKind::CursorAheadOfHighWatermark);
            }
            if committed.is_some_and(|committed| offset < committed) && !allow_backwards {
                return expect_error(result, ErrorKind::CursorBackwards);
            }
            result.map_err(|error| format!("commit: {error}"))?;
            model.cursor[*partition as usize] = Some(offset);
            Ok(())
        }
        Op::Advance(delta) => {
            harness.clock.advance(*delta);
            model.now_ms += delta;
            Ok(())
        }
    }
}

fn expect_error<T: std::fmt::Debug>(result: stele::Result<T>, kind: ErrorKind) -> Result<(), String> {
    match result {
        Err(error) if error.kind() == kind => Ok(()),
        other => Err(format!("expected {kind:?}, got {other:?}")),
    }
}

fn compare(topic: &Topic, model: &Model) -> Result<(), String> {
    for partition in 0..PARTITIONS as usize {
        let id = PartitionId(partition as u32);
        let records = &model.partitions[partition];
        let high_watermark = topic.high_watermark(id).map_err(|error| error.to_string())?;
        if high_watermark != Offset(records.len() as u64) {
            return Err(format!(
                "partition {partition}: high watermark {high_watermark}, model {}",
                records.len()
            ));
        }
        let earliest = model.earliest[partition];
        let info = topic.partition_infos()[partition].clone();
        if info.earliest != Offset(earliest) {
            return Err(format!(
                "partition {partition}: earliest {}, model {earliest}",
                info.earliest
            ));
        }
        let read = topic
            .read(id, Offset(earliest), 100_000, u64::MAX)
            .map_err(|error| format!("read: {error}"))?;
        let found: Vec<(u64, &str, u64, &[u8])> = read
            .iter()
            .map(|event| {
                (
                    event.offset.0,
                    std::str::from_utf8(&event.key).unwrap_or("?"),
                    event.sequence.0,
                    &event.payload[..],
                )
            })
            .collect();
        let wanted: Vec<(u64, &str, u64, &[u8])> = (earliest as usize..records.len())
            .map(|offset| {
                let record = &records[offset];
                (
                    offset as u64,
                    record.key.as_str(),
                    record.sequence,
                    &record.payload[..],
                )
            })
            .collect();
        if found != wanted {
            return Err(format!("partition {partition}: read {found:?}, model {wanted:?}"));
        }
        let cursor = topic.cursor("c");
        match (cursor, model.cursor.iter().all(Option::is_none)) {
            (Err(error), true) if error.kind() == ErrorKind::CursorNotFound => {}
            (Ok(positions), _) => {
                let committed: Vec<Option<u64>> = positions
                    .iter()
                    .map(|position| position.committed.map(|offset| offset.0))
                    .collect();
                if committed != model.cursor {
                    return Err(format!("cursor {committed:?}, model {:?}", model.cursor));
                }
            }
            (other, _) => return Err(format!("cursor {other:?}, model {:?}", model.cursor)),
        }
    }
    for key in KEYS {
        let partition = partition_for_key(key.as_bytes(), PARTITIONS).0 as usize;
        let last = model.sequences.get(key).copied();
        let sequence = topic
            .key_sequence(key.as_bytes())
            .map_err(|error| error.to_string())?;
        if sequence != last.map(Sequence) {
            return Err(format!("key {key}: sequence {sequence:?}, model {last:?}"));
        }
        let earliest = model.earliest[partition] as usize;
        let wanted: Vec<(u64, u64)> = model.partitions[partition]
            .iter()
            .enumerate()
            .skip(earliest)
            .filter(|(_, record)| record.key == key)
            .map(|(offset, record)| (offset as u64, record.sequence))
            .collect();
        let forwards: Vec<(u64, u64)> = topic
            .read_key(key.as_bytes(), None, Direction::Forwards, 100_000)
            .map_err(|error| format!("read_key: {error}"))?
            .iter()
            .map(|event| (event.offset.0, event.sequence.0))
            .collect();
        if forwards != wanted {
            return Err(format!("key {key}: forwards {forwards:?}, model {wanted:?}"));
        }
        let mut backwards: Vec<(u64, u64)> = topic
            .read_key(key.as_bytes(), None, Direction::Backwards, 100_000)
            .map_err(|error| format!("read_key: {error}"))?
            .iter()
            .map(|event| (event.offset.0, event.sequence.0))
            .collect();
        backwards.reverse();
        if backwards != wanted {
            return Err(format!(
                "key {key}: backwards (reversed) {backwards:?}, model {wanted:?}"
            ));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_log_behaves_like_the_model_under_random_operations(ops in proptest::collection::vec(op(), 1..40)) {
        // Goal: every observable answer matches a simple model through appends,
        // rolls (4 KiB segments, some 1.5 KiB payloads), reopens, retention,
        // cursor commits and clock moves across the dedup window. Method: run the
        // operations on a real log (no fsync: durability is not the subject) and
        // on the model; compare each result, then every read, after every step.
        run(&ops)?;
    }
}

//! The append rules over a small in-memory partition: one test per outcome, each
//! also checking that `decide` read only offsets `offsets_to_read` listed.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::*;

const PARTITION: PartitionId = PartitionId(3);
const WINDOW_MS: u64 = 10_000;
const PRODUCER: ProducerId = ProducerId(7);

/// A stored event of the test partition.
struct Stored {
    key: Vec<u8>,
    sequence: Sequence,
    timestamp_ms: i64,
    event: Event,
}

/// An in-memory partition as its writer sees it: events at or past the high
/// watermark are pending. Indexed id candidates are served whatever their age,
/// so the rules' own window check is what the tests exercise.
#[derive(Default)]
struct MemoryView {
    epochs: HashMap<ProducerId, Epoch>,
    producers: HashMap<ProducerId, ProducerSnapshot>,
    keys: HashMap<Vec<u8>, KeyState>,
    events: BTreeMap<Offset, Stored>,
    /// Offsets by keyed fingerprint, oldest first.
    ids: HashMap<u64, Vec<Offset>>,
    next_offset: Offset,
    high_watermark: Offset,
}

impl MemoryView {
    /// Stores an append as a writer would (pending until `publish`) and returns
    /// its acknowledgement.
    fn store(
        &mut self,
        key: &[u8],
        events: Vec<Event>,
        timestamp_ms: i64,
        stamp: Option<ProducerStamp>,
    ) -> AppendAck {
        let first_offset = self.next_offset;
        let first_sequence = self
            .keys
            .get(key)
            .map_or(Sequence(0), |state| state.last_sequence.next());
        let count = events.len() as u64;
        for (index, event) in events.into_iter().enumerate() {
            let offset = Offset(first_offset.0 + index as u64);
            if let Some(id) = &event.idempotency_id {
                self.ids
                    .entry(Fingerprint::of(key, id).keyed)
                    .or_default()
                    .push(offset);
            }
            self.events.insert(
                offset,
                Stored {
                    key: key.to_vec(),
                    sequence: first_sequence + index as u64,
                    timestamp_ms,
                    event,
                },
            );
        }
        self.next_offset = Offset(first_offset.0 + count);
        let ack = AppendAck {
            partition: PARTITION,
            first_offset,
            first_sequence,
            last_sequence: first_sequence + (count - 1),
            timestamp_ms,
            duplicate: false,
        };
        self.keys.insert(
            key.to_vec(),
            KeyState {
                last_sequence: ack.last_sequence,
                last_offset: Offset(self.next_offset.0 - 1),
            },
        );
        if let Some(stamp) = stamp {
            let producer = self.producers.entry(stamp.producer).or_insert(ProducerSnapshot {
                id: stamp.producer,
                epoch: stamp.epoch,
                last_sequence: Sequence(0),
                last_timestamp_ms: timestamp_ms,
                recent: Vec::new(),
            });
            remember_append(producer, stamp, &ack);
        }
        ack
    }

    /// Publishes every stored event.
    fn publish(&mut self) {
        self.high_watermark = self.next_offset;
    }
}

impl PartitionView for MemoryView {
    fn partition(&self) -> PartitionId {
        PARTITION
    }

    fn dedup_window_ms(&self) -> u64 {
        WINDOW_MS
    }

    fn current_epoch(&self, producer: ProducerId) -> Option<Epoch> {
        self.epochs.get(&producer).copied()
    }

    fn producer(&self, producer: ProducerId) -> Option<&ProducerSnapshot> {
        self.producers.get(&producer)
    }

    fn key_state(&mut self, key: &[u8], _hash: u64) -> Result<(Option<KeyState>, bool)> {
        Ok((self.keys.get(key).copied(), true))
    }

    fn id_candidates(
        &self,
        fingerprint: Fingerprint,
        _now_ms: i64,
        candidates: &mut Vec<Offset>,
    ) -> Result<usize> {
        let offsets = self.ids.get(&fingerprint.keyed).map_or(&[][..], Vec::as_slice);
        let first = candidates.len();
        candidates.extend(
            offsets
                .iter()
                .rev()
                .filter(|offset| **offset >= self.high_watermark),
        );
        let pending = candidates.len() - first;
        candidates.extend(
            offsets
                .iter()
                .rev()
                .filter(|offset| **offset < self.high_watermark),
        );
        Ok(pending)
    }

    fn with_event_at<T>(&self, offset: Offset, f: impl FnOnce(&StoredEvent<'_>) -> T) -> Result<Option<T>> {
        let Some(stored) = self.events.get(&offset) else {
            return Ok(None);
        };
        let event = &stored.event;
        Ok(Some(f(&StoredEvent {
            key: &stored.key,
            sequence: stored.sequence,
            timestamp_ms: stored.timestamp_ms,
            published: offset < self.high_watermark,
            event_type: &event.event_type,
            payload: &event.payload,
            headers: event
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_slice()))
                .collect(),
            idempotency_id: event.idempotency_id.as_deref(),
        })))
    }

    fn high_watermark(&self) -> Offset {
        self.high_watermark
    }
}

/// A view that records the offsets `with_event_at` is asked for.
struct Recording<'a, V> {
    inner: &'a mut V,
    reads: RefCell<BTreeSet<Offset>>,
}

impl<V: PartitionView> PartitionView for Recording<'_, V> {
    fn partition(&self) -> PartitionId {
        self.inner.partition()
    }

    fn dedup_window_ms(&self) -> u64 {
        self.inner.dedup_window_ms()
    }

    fn current_epoch(&self, producer: ProducerId) -> Option<Epoch> {
        self.inner.current_epoch(producer)
    }

    fn producer(&self, producer: ProducerId) -> Option<&ProducerSnapshot> {
        self.inner.producer(producer)
    }

    fn key_state(&mut self, key: &[u8], hash: u64) -> Result<(Option<KeyState>, bool)> {
        self.inner.key_state(key, hash)
    }

    fn id_candidates(
        &self,
        fingerprint: Fingerprint,
        now_ms: i64,
        candidates: &mut Vec<Offset>,
    ) -> Result<usize> {
        self.inner.id_candidates(fingerprint, now_ms, candidates)
    }

    fn with_event_at<T>(&self, offset: Offset, f: impl FnOnce(&StoredEvent<'_>) -> T) -> Result<Option<T>> {
        self.reads.borrow_mut().insert(offset);
        self.inner.with_event_at(offset, f)
    }

    fn high_watermark(&self) -> Offset {
        self.inner.high_watermark()
    }
}

/// Decides `request` at `now_ms`, asserting that every event read is one
/// `offsets_to_read` listed (sorted, without repeats); returns the decision and
/// the offsets read.
fn decide_at(
    view: &mut MemoryView,
    request: AppendRequest,
    now_ms: i64,
) -> (Result<Decision>, BTreeSet<Offset>) {
    let prepared = prepare(request, 1 << 20).expect("a valid request");
    let listed = offsets_to_read(&*view, &prepared, now_ms).expect("offsets to read");
    assert!(
        listed.windows(2).all(|pair| pair[0] < pair[1]),
        "offsets to read are sorted without repeats: {listed:?}"
    );
    let mut recording = Recording {
        inner: view,
        reads: RefCell::new(BTreeSet::new()),
    };
    let decision = decide(&mut recording, &prepared, now_ms);
    let reads = recording.reads.into_inner();
    let listed: BTreeSet<Offset> = listed.into_iter().collect();
    assert!(
        reads.is_subset(&listed),
        "decide read {reads:?}, offsets_to_read listed {listed:?}"
    );
    (decision, reads)
}

fn decide_now(view: &mut MemoryView, request: AppendRequest) -> Result<Decision> {
    decide_at(view, request, NOW_MS).0
}

const NOW_MS: i64 = 5_000;

fn event(payload: &str) -> Event {
    Event::new("type", payload.as_bytes().to_vec())
}

fn with_id(payload: &str, id: &str) -> Event {
    event(payload).with_idempotency_id(id.as_bytes().to_vec())
}

fn stamp(epoch: u32, sequence: u64) -> ProducerStamp {
    ProducerStamp {
        producer: PRODUCER,
        epoch: Epoch(epoch),
        sequence: Sequence(sequence),
    }
}

fn duplicate_of(ack: AppendAck, published: bool) -> Decision {
    Decision::Duplicate {
        ack: AppendAck {
            duplicate: true,
            ..ack
        },
        published,
    }
}

/// A view whose producer has registry epoch 2 and, in the partition, stored
/// appends 0 and 1 (at epoch 2) of one event each on key `p`, published.
fn producer_view() -> (MemoryView, AppendAck, AppendAck) {
    let mut view = MemoryView::default();
    view.epochs.insert(PRODUCER, Epoch(2));
    let first = view.store(b"p", vec![event("a")], 1_000, Some(stamp(2, 0)));
    let second = view.store(b"p", vec![event("b"), event("c")], 2_000, Some(stamp(2, 1)));
    view.publish();
    (view, first, second)
}

#[test]
fn write_carries_the_key_state() {
    // Goal: a write reports the key's state before the append (None for a new
    // key). Method: decide on a new key and on a key with two events.
    let mut view = MemoryView::default();
    assert_eq!(
        decide_now(&mut view, AppendRequest::new("k", vec![event("a")])).expect("write"),
        Decision::Write {
            key: None,
            owns_hash: true
        }
    );
    view.store(b"k", vec![event("a"), event("b")], 1_000, None);
    view.publish();
    let request = AppendRequest::new("k", vec![event("c")]).expect(ExpectedSequence::Exact(Sequence(1)));
    assert_eq!(
        decide_now(&mut view, request).expect("write"),
        Decision::Write {
            key: Some(KeyState {
                last_sequence: Sequence(1),
                last_offset: Offset(1),
            }),
            owns_hash: true
        }
    );
}

#[test]
fn wrong_expected_sequence_reports_the_actual_one() {
    // Goal: a failed condition names the expected and the actual sequence.
    // Method: expect 0 on a key at 2, then expect 5 on a key with no events.
    let mut view = MemoryView::default();
    view.store(b"k", vec![event("a"), event("b"), event("c")], 1_000, None);
    let request = AppendRequest::new("k", vec![event("d")]).expect(ExpectedSequence::Exact(Sequence(0)));
    let error = decide_now(&mut view, request).expect_err("wrong sequence");
    assert!(
        matches!(
            error,
            Error::WrongExpectedSequence {
                expected: ExpectedSequence::Exact(Sequence(0)),
                actual: Some(Sequence(2)),
            }
        ),
        "{error:?}"
    );
    let request = AppendRequest::new("new", vec![event("a")]).expect(ExpectedSequence::Exact(Sequence(5)));
    let error = decide_now(&mut view, request).expect_err("wrong sequence");
    assert!(
        matches!(error, Error::WrongExpectedSequence { actual: None, .. }),
        "{error:?}"
    );
}

#[test]
fn no_events_holds_only_for_a_key_without_events() {
    // Goal: `NoEvents` passes for a new key and fails, naming the actual
    // sequence, for a key with one (pending events count).
    let mut view = MemoryView::default();
    let request = AppendRequest::new("k", vec![event("a")]).expect(ExpectedSequence::NoEvents);
    assert!(matches!(
        decide_now(&mut view, request.clone()),
        Ok(Decision::Write { key: None, .. })
    ));
    view.store(b"k", vec![event("a")], 1_000, None);
    let error = decide_now(&mut view, request).expect_err("the key has an event");
    assert!(
        matches!(
            error,
            Error::WrongExpectedSequence {
                expected: ExpectedSequence::NoEvents,
                actual: Some(Sequence(0)),
            }
        ),
        "{error:?}"
    );
}

#[test]
fn duplicate_by_id_answers_with_the_original_ack() {
    // Goal: a retry of events with ids answers with the original positions,
    // `published` as the high watermark says, whatever the condition says.
    // Method: store two events with ids, retry them pending, then published.
    let mut view = MemoryView::default();
    view.store(b"other", vec![event("x")], 500, None);
    let events = vec![
        with_id("a", "1"),
        with_id("b", "2").with_header("h", b"v".to_vec()),
    ];
    let original = view.store(b"k", events.clone(), 1_000, None);
    let retry = AppendRequest::new("k", events).expect(ExpectedSequence::NoEvents);
    let (decision, reads) = decide_at(&mut view, retry.clone(), NOW_MS);
    assert_eq!(decision.expect("duplicate"), duplicate_of(original, false));
    assert_eq!(reads, BTreeSet::from([Offset(1), Offset(2)]));
    view.publish();
    assert_eq!(
        decide_now(&mut view, retry).expect("duplicate"),
        duplicate_of(original, true)
    );
}

#[test]
fn duplicate_by_id_ignores_the_order_of_headers() {
    // Goal: headers are a map on the wire; a retry with them reordered is the same
    // event.
    let mut view = MemoryView::default();
    let stored = with_id("a", "1")
        .with_header("x", b"1".to_vec())
        .with_header("y", b"2".to_vec());
    let original = view.store(b"k", vec![stored], 1_000, None);
    let retry = with_id("a", "1")
        .with_header("y", b"2".to_vec())
        .with_header("x", b"1".to_vec());
    assert_eq!(
        decide_now(&mut view, AppendRequest::new("k", vec![retry])).expect("duplicate"),
        duplicate_of(original, false)
    );
}

#[test]
fn id_reused_with_other_content_is_refused() {
    // Goal: an id whose stored event differs (payload, type or headers) is refused,
    // naming the request's event and the original's position.
    let mut view = MemoryView::default();
    view.store(b"k", vec![event("x"), with_id("a", "1")], 1_000, None);
    view.publish();
    for other in [
        with_id("changed", "1"),
        Event::new("other-type", b"a".to_vec()).with_idempotency_id(b"1".to_vec()),
        with_id("a", "1").with_header("h", b"v".to_vec()),
    ] {
        let request = AppendRequest::new("k", vec![event("new"), other]);
        let error = decide_now(&mut view, request).expect_err("id reused");
        assert!(
            matches!(
                error,
                Error::IdempotencyIdReused {
                    index: 1,
                    partition: PARTITION,
                    offset: Offset(1),
                    sequence: Sequence(1),
                }
            ),
            "{error:?}"
        );
    }
}

#[test]
fn originals_out_of_order_are_refused() {
    // Goal: a retry names one contiguous range holding exactly the caller's
    // events in order; the same ids in another order are refused.
    let mut view = MemoryView::default();
    view.store(b"k", vec![with_id("a", "1"), with_id("b", "2")], 1_000, None);
    let request = AppendRequest::new("k", vec![with_id("b", "2"), with_id("a", "1")]);
    let error = decide_now(&mut view, request).expect_err("out of order");
    assert!(
        matches!(
            error,
            Error::IdempotencyIdReused {
                index: 1,
                offset: Offset(0),
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn partial_duplicate_is_refused() {
    // Goal: an append whose events are only partly retries is refused, counted.
    let mut view = MemoryView::default();
    view.store(b"k", vec![with_id("a", "1")], 1_000, None);
    view.publish();
    let request = AppendRequest::new("k", vec![with_id("a", "1"), with_id("b", "2"), event("c")]);
    let error = decide_now(&mut view, request).expect_err("partial duplicate");
    assert!(
        matches!(
            error,
            Error::PartialDuplicate {
                duplicates: 1,
                events: 3,
            }
        ),
        "{error:?}"
    );
}

#[test]
fn published_id_out_of_the_window_is_not_a_duplicate() {
    // Goal: a published event counts only while `now - timestamp < window`; a
    // pending one counts whatever its timestamp. Method: one event, decided at
    // both sides of the window's edge, pending and published.
    let mut view = MemoryView::default();
    let original = view.store(b"k", vec![with_id("a", "1")], 1_000, None);
    let retry = AppendRequest::new("k", vec![with_id("a", "1")]);
    let edge = 1_000 + WINDOW_MS as i64;
    assert_eq!(
        decide_at(&mut view, retry.clone(), edge + 5_000)
            .0
            .expect("pending"),
        duplicate_of(original, false)
    );
    view.publish();
    assert_eq!(
        decide_at(&mut view, retry.clone(), edge - 1)
            .0
            .expect("in the window"),
        duplicate_of(original, true)
    );
    let (decision, reads) = decide_at(&mut view, retry, edge);
    assert!(
        matches!(
            decision,
            Ok(Decision::Write {
                key: Some(KeyState {
                    last_sequence: Sequence(0),
                    ..
                }),
                ..
            })
        ),
        "{decision:?}"
    );
    assert_eq!(reads, BTreeSet::from([Offset(0)]), "the candidate was confirmed");
}

#[test]
fn a_candidate_of_another_key_or_id_is_not_a_duplicate() {
    // Goal: candidates are only hints (a fingerprint collision): an event of
    // another key, or with another id, never answers. Method: point the id's
    // fingerprint at such events.
    let mut view = MemoryView::default();
    view.store(b"other", vec![with_id("a", "1")], 1_000, None);
    view.store(b"k", vec![with_id("a", "9")], 1_000, None);
    view.ids
        .insert(Fingerprint::of(b"k", b"1").keyed, vec![Offset(0), Offset(1)]);
    let (decision, reads) = decide_at(
        &mut view,
        AppendRequest::new("k", vec![with_id("a", "1")]),
        NOW_MS,
    );
    assert!(matches!(decision, Ok(Decision::Write { .. })), "{decision:?}");
    assert_eq!(reads, BTreeSet::from([Offset(0), Offset(1)]));
}

#[test]
fn unknown_producer_is_refused() {
    // Goal: a producer the registry does not know, or at an epoch newer than the
    // registry's, is unknown.
    let mut view = MemoryView::default();
    let request = AppendRequest::new("p", vec![event("a")]).stamped(stamp(1, 0));
    let error = decide_now(&mut view, request.clone()).expect_err("unknown");
    assert!(
        matches!(
            error,
            Error::UnknownProducer {
                producer: PRODUCER,
                epoch: Epoch(1)
            }
        ),
        "{error:?}"
    );
    view.epochs.insert(PRODUCER, Epoch(0));
    let error = decide_now(&mut view, request).expect_err("epoch from the future");
    assert!(
        matches!(error, Error::UnknownProducer { epoch: Epoch(1), .. }),
        "{error:?}"
    );
}

#[test]
fn older_epoch_is_fenced() {
    // Goal: an epoch older than the registry's, or than the one this partition
    // has seen, is fenced, naming the current epoch.
    let (mut view, ..) = producer_view();
    let request = AppendRequest::new("p", vec![event("z")]).stamped(stamp(1, 2));
    let error = decide_now(&mut view, request).expect_err("fenced");
    assert!(
        matches!(
            error,
            Error::ProducerFenced {
                producer: PRODUCER,
                epoch: Epoch(1),
                current: Epoch(2),
            }
        ),
        "{error:?}"
    );
    // The registry lags behind the partition (say, after a restore).
    view.epochs.insert(PRODUCER, Epoch(1));
    let request = AppendRequest::new("p", vec![event("z")]).stamped(stamp(1, 2));
    let error = decide_now(&mut view, request).expect_err("fenced by the partition");
    assert!(
        matches!(
            error,
            Error::ProducerFenced {
                current: Epoch(2),
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn newer_epoch_or_unknown_producer_starts_at_zero() {
    // Goal: a new epoch, or a producer this partition does not know, starts at
    // sequence 0; any other sequence is out of order, expecting 0.
    let (mut view, ..) = producer_view();
    view.epochs.insert(PRODUCER, Epoch(3));
    let request = |sequence| AppendRequest::new("p", vec![event("z")]).stamped(stamp(3, sequence));
    assert!(matches!(
        decide_now(&mut view, request(0)),
        Ok(Decision::Write { .. })
    ));
    let error = decide_now(&mut view, request(2)).expect_err("not 0");
    assert!(
        matches!(
            error,
            Error::ProducerOutOfOrder {
                producer: PRODUCER,
                partition: PARTITION,
                expected: Sequence(0),
                got: Sequence(2),
            }
        ),
        "{error:?}"
    );
    view.producers.clear();
    assert!(matches!(
        decide_now(&mut view, request(0)),
        Ok(Decision::Write { .. })
    ));
    let error = decide_now(&mut view, request(1)).expect_err("not 0");
    assert!(
        matches!(
            error,
            Error::ProducerOutOfOrder {
                expected: Sequence(0),
                got: Sequence(1),
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn next_sequence_in_order_is_written() {
    // Goal: the sequence after the last one goes on to the other checks.
    let (mut view, ..) = producer_view();
    let request = AppendRequest::new("p", vec![event("d")])
        .stamped(stamp(2, 2))
        .expect(ExpectedSequence::Exact(Sequence(2)));
    assert!(matches!(
        decide_now(&mut view, request),
        Ok(Decision::Write {
            key: Some(KeyState {
                last_sequence: Sequence(2),
                last_offset: Offset(2),
            }),
            ..
        })
    ));
}

#[test]
fn retry_of_a_recent_sequence_is_a_duplicate() {
    // Goal: a recent sequence with the same events answers with that append's
    // ack, `published` by the high watermark, whatever the condition says.
    let (mut view, first, second) = producer_view();
    let retry = AppendRequest::new("p", vec![event("a")])
        .stamped(stamp(2, 0))
        .expect(ExpectedSequence::NoEvents);
    let (decision, reads) = decide_at(&mut view, retry, NOW_MS);
    assert_eq!(decision.expect("duplicate"), duplicate_of(first, true));
    assert_eq!(reads, BTreeSet::from([Offset(0)]));
    // Pending: the same, unpublished.
    view.high_watermark = Offset(1);
    let retry = AppendRequest::new("p", vec![event("b"), event("c")]).stamped(stamp(2, 1));
    let (decision, reads) = decide_at(&mut view, retry, NOW_MS);
    assert_eq!(decision.expect("duplicate"), duplicate_of(second, false));
    assert_eq!(reads, BTreeSet::from([Offset(1), Offset(2)]));
}

#[test]
fn retry_whose_original_is_gone_is_a_duplicate() {
    // Goal: an original that retention removed cannot be compared; the sequence
    // alone identifies it.
    let (mut view, _, second) = producer_view();
    view.events.clear();
    let retry = AppendRequest::new("p", vec![event("other"), event("events")]).stamped(stamp(2, 1));
    assert_eq!(
        decide_now(&mut view, retry).expect("duplicate"),
        duplicate_of(second, true)
    );
}

#[test]
fn retry_with_other_events_is_refused() {
    // Goal: a recent sequence with other events (content, key, id or count) is
    // not a retry; the error names the first differing event.
    let (mut view, ..) = producer_view();
    let cases = [
        (AppendRequest::new("p", vec![event("b"), event("x")]), 1, 2),
        (AppendRequest::new("q", vec![event("b"), event("c")]), 0, 1),
        (AppendRequest::new("p", vec![event("b"), with_id("c", "1")]), 1, 2),
        (AppendRequest::new("p", vec![event("b")]), 0, 2),
        (
            AppendRequest::new("p", vec![event("b"), event("c"), event("d")]),
            2,
            2,
        ),
    ];
    for (request, index, offset) in cases {
        let (decision, _) = decide_at(&mut view, request.stamped(stamp(2, 1)), NOW_MS);
        let error = decision.expect_err("not a retry");
        let expected_offset = Offset(offset);
        assert!(
            matches!(
                &error,
                Error::IdempotencyIdReused { index: i, partition: PARTITION, offset: o, sequence }
                    if *i == index && *o == expected_offset && *sequence == Sequence(offset)
            ),
            "case index {index}: {error:?}"
        );
    }
}

#[test]
fn sequence_neither_next_nor_recent_is_out_of_order() {
    // Goal: a sequence past the next one (a gap) is out of order, expecting the
    // next one.
    let (mut view, ..) = producer_view();
    for sequence in [3, 9] {
        let request = AppendRequest::new("p", vec![event("z")]).stamped(stamp(2, sequence));
        let error = decide_now(&mut view, request).expect_err("out of order");
        assert!(
            matches!(
                &error,
                Error::ProducerOutOfOrder { expected: Sequence(2), got, .. } if got.0 == sequence
            ),
            "{error:?}"
        );
    }
}

#[test]
fn offsets_to_read_cover_what_decide_reads() {
    // Goal: `offsets_to_read` lists every offset `decide` reads, and exactly the
    // candidates of the ids (or the retried range) where decide reads them all.
    // Method: a partition with pending and published ids of several keys; the
    // subset check runs in `decide_at` for every request.
    let (mut view, ..) = producer_view();
    view.store(b"k", vec![with_id("a", "1"), with_id("b", "2")], 3_000, None);
    view.publish();
    view.store(b"k", vec![with_id("c", "3")], 4_000, None);
    view.store(b"j", vec![with_id("a", "1")], 4_000, None);
    let prepared = |request| prepare(request, 1 << 20).expect("valid");
    let ids = prepared(AppendRequest::new(
        "k",
        vec![with_id("c", "3"), with_id("a", "1"), event("n")],
    ));
    assert_eq!(
        offsets_to_read(&view, &ids, NOW_MS).expect("offsets"),
        vec![Offset(3), Offset(5)]
    );
    let retry = prepared(AppendRequest::new("k", vec![event("b"), with_id("a", "1")]).stamped(stamp(2, 1)));
    assert_eq!(
        offsets_to_read(&view, &retry, NOW_MS).expect("offsets"),
        vec![Offset(1), Offset(2)],
        "a retry reads its stored range, not the ids"
    );
    let fenced = prepared(AppendRequest::new("k", vec![with_id("a", "1")]).stamped(stamp(1, 0)));
    assert!(
        offsets_to_read(&view, &fenced, NOW_MS)
            .expect("offsets")
            .is_empty()
    );
    let requests = [
        AppendRequest::new("k", vec![with_id("c", "3"), with_id("a", "1"), event("n")]),
        AppendRequest::new("k", vec![with_id("a", "1"), with_id("b", "2")]),
        AppendRequest::new("k", vec![with_id("a", "1"), with_id("c", "3")]),
        AppendRequest::new("j", vec![with_id("a", "1")]),
        AppendRequest::new("k", vec![event("b"), with_id("a", "1")]).stamped(stamp(2, 1)),
        AppendRequest::new("k", vec![with_id("a", "1")]).stamped(stamp(2, 2)),
    ];
    let mut reads_total = 0;
    for request in requests {
        let (_, reads) = decide_at(&mut view, request, NOW_MS);
        reads_total += reads.len();
    }
    assert!(reads_total > 0, "the subset checks compared real reads");
}

#[test]
fn remember_append_keeps_the_newest_appends() {
    // Goal: a producer's state keeps its last sequence and at most
    // PRODUCER_RECENT_APPENDS_COUNT recent appends, oldest dropped first.
    let mut producer = ProducerSnapshot {
        id: PRODUCER,
        epoch: Epoch(1),
        last_sequence: Sequence(0),
        last_timestamp_ms: 0,
        recent: Vec::new(),
    };
    let appends = limits::PRODUCER_RECENT_APPENDS_COUNT as u64 + 2;
    for sequence in 0..appends {
        let ack = AppendAck {
            partition: PARTITION,
            first_offset: Offset(sequence * 10),
            first_sequence: Sequence(sequence),
            last_sequence: Sequence(sequence),
            timestamp_ms: sequence as i64,
            duplicate: false,
        };
        remember_append(&mut producer, stamp(2, sequence), &ack);
    }
    assert_eq!(producer.epoch, Epoch(2));
    assert_eq!(producer.last_sequence, Sequence(appends - 1));
    assert_eq!(producer.last_timestamp_ms, (appends - 1) as i64);
    let kept: Vec<u64> = producer.recent.iter().map(|recent| recent.sequence.0).collect();
    assert_eq!(kept, (2..appends).collect::<Vec<_>>());
}

#[test]
fn prepare_computes_hashes_and_refuses_repeated_ids() {
    // Goal: `prepare` gives the key hash, one fingerprint per event and the frame
    // bytes; two events with one id are refused before any partition is read.
    let prepared = prepare(
        AppendRequest::new("k", vec![with_id("a", "1"), event("b")]),
        1 << 20,
    )
    .expect("valid");
    assert_eq!(prepared.key_hash(), key_hash(b"k"));
    assert_eq!(
        prepared.fingerprints(),
        &[Some(Fingerprint::of(b"k", b"1")), None]
    );
    assert!(prepared.size() > 0);
    assert_eq!(prepared.request().events.len(), 2);
    assert_eq!(prepared.into_request().key, b"k".to_vec());
    let error = prepare(
        AppendRequest::new("k", vec![with_id("a", "1"), with_id("b", "1")]),
        1 << 20,
    )
    .expect_err("repeated id");
    assert!(
        matches!(error, Error::RepeatedIdempotencyId { first: 0, second: 1 }),
        "{error:?}"
    );
}

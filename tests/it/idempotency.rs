//! Idempotency ids and producer stamps through the embedding API.
//!
//! An idempotency id names one event of one key: the same id on another key is an
//! unrelated event; a retry (same key, id, type, payload and headers) within the
//! window is a duplicate answered with the original positions; the same key and id
//! with other content is `IdempotencyIdReused` with the original's position, and
//! nothing is written. These hold from the open group, the flushing group, the
//! dedup index's memtable and runs, after a checkpoint and after replay.
//! A producer's first append of an epoch in a partition carries sequence 0, and a
//! retry by producer sequence must repeat the original append.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, mpsc};
use stele::Sequence;

use stele::io::{Map, OpenMode, StdStorage, Storage, StorageFile};
use stele::{
    AppendAck, AppendRequest, Durability, Error, ErrorKind, Event, ExpectedSequence, Log, LogOptions, Offset,
    PartitionId, ProducerStamp, Topic, TopicOptions,
};

use crate::support::copy_dir;

fn event(event_type: &str, payload: &str, id: &str) -> Event {
    Event::new(event_type, payload.as_bytes().to_vec()).with_idempotency_id(id)
}

fn append(topic: &Topic, key: &str, events: Vec<Event>) -> stele::Result<AppendAck> {
    topic.append(key, ExpectedSequence::Any, events)
}

fn one_partition() -> TopicOptions {
    TopicOptions::default().partitions(1)
}

/// Payloads of a partition's events, in offset order.
fn payloads(topic: &Topic, partition: PartitionId) -> Vec<String> {
    topic
        .read(partition, Offset(0), 1000, u64::MAX)
        .expect("read")
        .into_iter()
        .map(|event| String::from_utf8(event.payload).expect("utf-8"))
        .collect()
}

/// Asserts that `result` is `IdempotencyIdReused` naming `original`'s first event
/// (shifted by `event_index`) as the event at `index` of the append.
fn assert_reused(result: stele::Result<AppendAck>, index: usize, original: &AppendAck, event_index: u64) {
    let error = result.expect_err("the id names another event");
    assert_eq!(error.kind(), ErrorKind::IdempotencyIdReused, "{error}");
    let Error::IdempotencyIdReused {
        index: found_index,
        partition,
        offset,
        sequence,
    } = error
    else {
        panic!("not IdempotencyIdReused: {error}");
    };
    assert_eq!(found_index, index);
    assert_eq!(partition, original.partition);
    assert_eq!(offset, Offset(original.first_offset.0 + event_index));
    assert_eq!(sequence, original.first_sequence + event_index);
}

fn assert_duplicate_of(retry: AppendAck, original: &AppendAck) {
    assert!(retry.duplicate, "{retry:?}");
    assert_eq!(retry.partition, original.partition);
    assert_eq!(retry.first_offset, original.first_offset);
    assert_eq!(retry.first_sequence, original.first_sequence);
    assert_eq!(retry.last_sequence, original.last_sequence);
}

#[test]
fn the_same_id_on_two_keys_of_one_partition_stores_both_events() {
    // Goal: an id names an event of one key, so another key's event with the same
    // id is stored, and each key's retry answers with its own event's position.
    // Method: one partition; append keys a and b with id "x", retry both, read back.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), LogOptions::default()).expect("open");
    let topic = log.create_topic("t", one_partition()).expect("create");
    let a = append(&topic, "a", vec![event("made", "a1", "x")]).expect("a");
    let b = append(&topic, "b", vec![event("made", "b1", "x")]).expect("b");
    assert!(!a.duplicate);
    assert!(!b.duplicate, "b's event is not a's: {b:?}");
    assert_eq!((b.first_offset, b.first_sequence), (Offset(1), Sequence(0)));
    assert_duplicate_of(
        append(&topic, "b", vec![event("made", "b1", "x")]).expect("b retry"),
        &b,
    );
    assert_duplicate_of(
        append(&topic, "a", vec![event("made", "a1", "x")]).expect("a retry"),
        &a,
    );
    assert_eq!(payloads(&topic, PartitionId(0)), ["a1", "b1"]);
}

#[test]
fn the_same_id_on_keys_of_different_partitions_stores_both_events() {
    // Goal: the rule does not depend on where keys land. Method: two keys routed to
    // different partitions with the same id; both stored, each retry is its own.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), LogOptions::default()).expect("open");
    let topic = log
        .create_topic("t", TopicOptions::default().partitions(4))
        .expect("create");
    let first = "key-0".to_string();
    let second = (1..100)
        .map(|index| format!("key-{index}"))
        .find(|key| topic.partition_for(key.as_bytes()) != topic.partition_for(first.as_bytes()))
        .expect("some key lands elsewhere");
    let a = append(&topic, &first, vec![event("made", "a1", "x")]).expect("a");
    let b = append(&topic, &second, vec![event("made", "b1", "x")]).expect("b");
    assert!(!a.duplicate);
    assert!(!b.duplicate);
    assert_ne!(a.partition, b.partition);
    assert_duplicate_of(
        append(&topic, &second, vec![event("made", "b1", "x")]).expect("retry"),
        &b,
    );
    assert_eq!(payloads(&topic, b.partition), ["b1"]);
    assert_eq!(payloads(&topic, a.partition), ["a1"]);
}

#[test]
fn other_content_under_a_keys_id_is_refused_with_the_original_position() {
    // Goal: a retry must repeat type, payload and headers (headers in any order);
    // otherwise IdempotencyIdReused names the original and nothing is written.
    // Method: store one event with two headers, then send variants of it.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), LogOptions::default()).expect("open");
    let topic = log.create_topic("t", one_partition()).expect("create");
    append(&topic, "other", vec![Event::new("made", b"0".to_vec())]).expect("filler");
    let stored = || {
        event("made", "1", "x")
            .with_header("h1", "v1")
            .with_header("h2", "v2")
    };
    let original = append(&topic, "k", vec![stored()]).expect("original");
    let reordered = event("made", "1", "x")
        .with_header("h2", "v2")
        .with_header("h1", "v1");
    assert_duplicate_of(append(&topic, "k", vec![reordered]).expect("retry"), &original);
    let other_payload = event("made", "2", "x")
        .with_header("h1", "v1")
        .with_header("h2", "v2");
    assert_reused(append(&topic, "k", vec![other_payload]), 0, &original, 0);
    let other_type = event("changed", "1", "x")
        .with_header("h1", "v1")
        .with_header("h2", "v2");
    assert_reused(append(&topic, "k", vec![other_type]), 0, &original, 0);
    let other_value = event("made", "1", "x")
        .with_header("h1", "v1")
        .with_header("h2", "v3");
    assert_reused(append(&topic, "k", vec![other_value]), 0, &original, 0);
    let fewer_headers = event("made", "1", "x").with_header("h1", "v1");
    assert_reused(append(&topic, "k", vec![fewer_headers]), 0, &original, 0);
    let second_event = vec![Event::new("made", b"new".to_vec()), event("made", "9", "x")];
    assert_reused(append(&topic, "k", second_event), 1, &original, 0);
    assert_eq!(topic.high_watermark(PartitionId(0)).expect("hw"), Offset(2));
    assert_eq!(topic.key_sequence(b"k").expect("sequence"), Some(Sequence(0)));
}

#[test]
fn a_multi_event_retry_answers_only_with_the_callers_own_events() {
    // Goal: a duplicate answer names a contiguous range, so it is given only when
    // the retried events are stored one after another in the retry's order.
    // Method: store [a, b, c] on key k; retry prefixes, a gap, a reordering, and a
    // mix with another key's event carrying the same ids.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), LogOptions::default()).expect("open");
    let topic = log.create_topic("t", one_partition()).expect("create");
    let events = |ids: &[&str]| -> Vec<Event> { ids.iter().map(|id| event("made", id, id)).collect() };
    let original = append(&topic, "k", events(&["a", "b", "c"])).expect("original");
    assert_duplicate_of(
        append(&topic, "k", events(&["a", "b", "c"])).expect("retry"),
        &original,
    );
    let prefix = append(&topic, "k", events(&["a", "b"])).expect("prefix");
    assert!(prefix.duplicate);
    assert_eq!(
        (prefix.first_offset, prefix.first_sequence, prefix.last_sequence),
        (Offset(0), Sequence(0), Sequence(1))
    );
    let suffix = append(&topic, "k", events(&["b", "c"])).expect("suffix");
    assert!(suffix.duplicate);
    assert_eq!(
        (suffix.first_offset, suffix.first_sequence, suffix.last_sequence),
        (Offset(1), Sequence(1), Sequence(2))
    );
    assert_reused(append(&topic, "k", events(&["a", "c"])), 1, &original, 2);
    assert_reused(append(&topic, "k", events(&["b", "a"])), 1, &original, 0);
    let partial = append(&topic, "k", events(&["a", "d"])).expect_err("partial");
    assert_eq!(partial.kind(), ErrorKind::PartialDuplicate);
    // The same ids on another key are new events there.
    let elsewhere = append(&topic, "j", events(&["a", "b"])).expect("other key");
    assert!(!elsewhere.duplicate);
    assert_eq!(
        (elsewhere.first_offset, elsewhere.first_sequence),
        (Offset(3), Sequence(0))
    );
    assert_eq!(payloads(&topic, PartitionId(0)), ["a", "b", "c", "a", "b"]);
}

/// Appends the events the reopen checks look for: ids "x" on keys a and b, "y" on a.
fn write_ids(topic: &Topic) -> (AppendAck, AppendAck) {
    let a = append(
        topic,
        "a",
        vec![event("made", "a1", "x"), event("made", "a2", "y")],
    )
    .expect("a");
    let b = append(topic, "b", vec![event("made", "b1", "x")]).expect("b");
    assert!(!b.duplicate);
    (a, b)
}

/// The checks after reopening: retries, reuses and other keys, from whatever the
/// dedup index was rebuilt from.
fn check_ids(topic: &Topic, a: &AppendAck, b: &AppendAck, case: &str) {
    let retry = append(
        topic,
        "a",
        vec![event("made", "a1", "x"), event("made", "a2", "y")],
    )
    .expect(case);
    assert_duplicate_of(retry, a);
    assert_duplicate_of(append(topic, "b", vec![event("made", "b1", "x")]).expect(case), b);
    assert_reused(append(topic, "a", vec![event("made", "a9", "y")]), 0, a, 1);
    assert_reused(append(topic, "b", vec![event("changed", "b1", "x")]), 0, b, 0);
    let high_watermark = topic.high_watermark(PartitionId(0)).expect("hw");
    // A key new in each case, so that no earlier case stored its event.
    let c = append(topic, &format!("c-{case}"), vec![event("made", "c1", "x")]).expect(case);
    assert!(!c.duplicate, "{case}: c's event is not a's or b's");
    assert_eq!(c.first_offset, high_watermark, "{case}");
}

#[test]
fn ids_keep_their_key_and_content_rule_after_reopen() {
    // Goal: the rule holds whatever the dedup index is read from after a reopen:
    // runs written at close (version 2), a checkpoint followed by replay of newer
    // events, and a full replay of the log with no runs at all.
    // Method: write ids, then (1) close and reopen; (2) checkpoint, write more, copy
    // the open directory (a crash image) and open the copy; (3) remove the dedup
    // directories of a closed log and reopen.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), LogOptions::default()).expect("open");
    let topic = log.create_topic("t", one_partition()).expect("create");
    let (a, b) = write_ids(&topic);
    log.close().expect("close");
    drop(log);

    let log = Log::open(dir.path(), LogOptions::default()).expect("reopen from runs");
    let topic = log.topic("t").expect("topic");
    check_ids(&topic, &a, &b, "runs");
    topic.checkpoint().expect("checkpoint");
    let d = append(&topic, "d", vec![event("made", "d1", "x")]).expect("after checkpoint");
    assert!(!d.duplicate);
    let crashed = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), crashed.path());
    log.close().expect("close");
    drop(log);

    let log = Log::open(crashed.path(), LogOptions::default()).expect("open the crash image");
    let topic = log.topic("t").expect("topic");
    check_ids(&topic, &a, &b, "checkpoint and replay");
    assert_duplicate_of(
        append(&topic, "d", vec![event("made", "d1", "x")]).expect("d retry"),
        &d,
    );
    assert_reused(append(&topic, "d", vec![event("made", "d2", "x")]), 0, &d, 0);
    log.close().expect("close");
    drop(log);

    std::fs::remove_dir_all(dir.path().join("topics/t/p00000/dedup")).expect("remove dedup runs");
    let log = Log::open(dir.path(), LogOptions::default()).expect("reopen with replay only");
    let topic = log.topic("t").expect("topic");
    check_ids(&topic, &a, &b, "replay");
}

/// Segment fdatasyncs wait while the gate is closed, so a test can hold a group in
/// the flushing state.
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    closed: bool,
    waiting: bool,
}

impl Gate {
    fn close(&self) {
        self.state.lock().expect("gate").closed = true;
    }

    fn open(&self) {
        self.state.lock().expect("gate").closed = false;
        self.changed.notify_all();
    }

    /// Blocks until a sync waits at the closed gate.
    fn wait_for_sync(&self) {
        let state = self.state.lock().expect("gate");
        let _held = self
            .changed
            .wait_while(state, |state| !state.waiting)
            .expect("gate");
    }

    fn pass(&self) {
        let mut state = self.state.lock().expect("gate");
        if state.closed {
            state.waiting = true;
            self.changed.notify_all();
            state = self
                .changed
                .wait_while(state, |state| state.closed)
                .expect("gate");
            state.waiting = false;
        }
    }
}

#[derive(Debug)]
struct GatedStorage(Arc<Gate>);

#[derive(Debug)]
struct GatedFile {
    file: Arc<dyn StorageFile>,
    gate: Option<Arc<Gate>>,
}

impl Storage for GatedStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<Arc<dyn StorageFile>> {
        let segment = path.extension().is_some_and(|extension| extension == "log");
        Ok(Arc::new(GatedFile {
            file: StdStorage.open(path, mode)?,
            gate: segment.then(|| Arc::clone(&self.0)),
        }))
    }
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        StdStorage.create_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        StdStorage.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        StdStorage.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> std::io::Result<()> {
        StdStorage.remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        StdStorage.sync_dir(path)
    }
    fn read_dir(&self, path: &Path) -> std::io::Result<Vec<String>> {
        StdStorage.read_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        StdStorage.exists(path)
    }
}

impl StorageFile for GatedFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> std::io::Result<()> {
        self.file.read_at(buf, position)
    }
    fn write_at(&self, buf: &[u8], position: u64) -> std::io::Result<()> {
        self.file.write_at(buf, position)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        if let Some(gate) = &self.gate {
            gate.pass();
        }
        self.file.sync_data()
    }
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
    fn allocate(&self, len: u64) -> std::io::Result<()> {
        self.file.allocate(len)
    }
    fn read_at_most(&self, buf: &mut [u8], position: u64) -> std::io::Result<usize> {
        self.file.read_at_most(buf, position)
    }
    fn map(&self, len: u64) -> std::io::Result<Map> {
        self.file.map(len)
    }
    fn map_reserved(&self, len: u64) -> std::io::Result<Map> {
        self.file.map_reserved(len)
    }
    fn try_lock(&self) -> std::io::Result<bool> {
        self.file.try_lock()
    }
}

/// Submits an append; its outcome arrives on the returned channel.
fn submit(topic: &Topic, key: &str, events: Vec<Event>) -> mpsc::Receiver<stele::Result<AppendAck>> {
    let (sender, receiver) = mpsc::channel();
    topic.submit(AppendRequest::new(key, events), move |result| {
        let _ = sender.send(result);
    });
    receiver
}

#[test]
fn ids_in_the_open_and_the_flushing_group_follow_the_same_rule() {
    // Goal: before an append is published, its ids already follow the rule: a
    // retry waits for and answers with the original's position, other content is
    // refused at once, another key's event with the id is stored.
    // Method: Durability::Always over a storage whose segment fdatasync waits at a
    // gate. Append x on key k and wait until its group is syncing (the flushing
    // group); append y on k, which joins the open group; then retry, reuse and use
    // x and y on other keys, open the gate, and read what was stored.
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Arc::new(Gate::default());
    let options = LogOptions::default().storage(Arc::new(GatedStorage(Arc::clone(&gate))));
    let log = Log::open(dir.path(), options).expect("open");
    let topic = log
        .create_topic("t", one_partition().durability(Durability::Always))
        .expect("create");
    gate.close();
    let flushing = submit(&topic, "k", vec![event("made", "x1", "x")]);
    gate.wait_for_sync();
    let open = submit(&topic, "k", vec![event("made", "y1", "y")]);
    let retry_flushing = submit(&topic, "k", vec![event("made", "x1", "x")]);
    let retry_open = submit(&topic, "k", vec![event("made", "y1", "y")]);
    let reuse_flushing = submit(&topic, "k", vec![event("made", "x2", "x")]);
    let reuse_open = submit(&topic, "k", vec![event("made", "y1", "y").with_header("h", "v")]);
    let other_key = submit(
        &topic,
        "j",
        vec![event("made", "j1", "x"), event("made", "j2", "y")],
    );
    // Refusals do not wait for the group: they are answered before the gate opens.
    let reuse_flushing = reuse_flushing.recv().expect("answered");
    let reuse_open = reuse_open.recv().expect("answered");
    gate.open();
    let flushing = flushing.recv().expect("answered").expect("x");
    let open = open.recv().expect("answered").expect("y");
    assert_eq!((flushing.first_offset, open.first_offset), (Offset(0), Offset(1)));
    assert_duplicate_of(
        retry_flushing.recv().expect("answered").expect("retry x"),
        &flushing,
    );
    assert_duplicate_of(retry_open.recv().expect("answered").expect("retry y"), &open);
    assert_reused(reuse_flushing, 0, &flushing, 0);
    assert_reused(reuse_open, 0, &open, 0);
    let other_key = other_key.recv().expect("answered").expect("other key");
    assert!(!other_key.duplicate);
    assert_eq!(
        (other_key.first_offset, other_key.first_sequence),
        (Offset(2), Sequence(0))
    );
    assert_eq!(payloads(&topic, PartitionId(0)), ["x1", "y1", "j1", "j2"]);
}

#[test]
fn a_producers_first_append_in_a_partition_must_carry_sequence_0() {
    // Goal: a partition that does not know a producer (new, or forgotten) accepts
    // only sequence 0 from it; a later sequence would hide lost appends.
    // Method: a fresh producer appends with sequence 3, then 0, then 1; the first
    // is ProducerOutOfOrder expecting 0 and writes nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), LogOptions::default()).expect("open");
    let topic = log.create_topic("t", one_partition()).expect("create");
    let (producer, epoch) = topic.open_producer("p").expect("producer");
    let request = |sequence| {
        AppendRequest::new("k", vec![Event::new("made", b"1".to_vec())]).stamped(ProducerStamp {
            producer,
            epoch,
            sequence,
        })
    };
    let error = topic
        .append_request(request(Sequence(3)))
        .expect_err("first sequence is 3");
    assert!(
        matches!(
            error,
            Error::ProducerOutOfOrder {
                expected: Sequence(0),
                got: Sequence(3),
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(topic.high_watermark(PartitionId(0)).expect("hw"), Offset(0));
    assert!(
        !topic
            .append_request(request(Sequence(0)))
            .expect("sequence 0")
            .duplicate
    );
    assert!(
        !topic
            .append_request(request(Sequence(1)))
            .expect("sequence 1")
            .duplicate
    );
    assert_eq!(topic.high_watermark(PartitionId(0)).expect("hw"), Offset(2));
}

#[test]
fn a_producer_retry_must_repeat_the_append_it_retries() {
    // Goal: a retry recognised by producer sequence answers with the original's
    // positions only when it carries the same key and events; otherwise it is
    // IdempotencyIdReused naming the original, and nothing is written.
    // Method: sequence 0 stores two events on key k; retry sequence 0 exactly, then
    // with another key, another payload, one event fewer and one more.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), LogOptions::default()).expect("open");
    let topic = log.create_topic("t", one_partition()).expect("create");
    let (producer, epoch) = topic.open_producer("p").expect("producer");
    let request = |key: &str, payloads: &[&str]| {
        let events = payloads
            .iter()
            .map(|payload| Event::new("made", payload.as_bytes().to_vec()))
            .collect();
        AppendRequest::new(key, events).stamped(ProducerStamp {
            producer,
            epoch,
            sequence: Sequence(0),
        })
    };
    append(&topic, "j", vec![Event::new("made", b"j".to_vec())]).expect("filler");
    let original = topic.append_request(request("k", &["1", "2"])).expect("original");
    assert_duplicate_of(
        topic.append_request(request("k", &["1", "2"])).expect("retry"),
        &original,
    );
    assert_reused(topic.append_request(request("j", &["1", "2"])), 0, &original, 0);
    assert_reused(topic.append_request(request("k", &["1", "3"])), 1, &original, 1);
    assert_reused(topic.append_request(request("k", &["1"])), 0, &original, 1);
    assert_reused(
        topic.append_request(request("k", &["1", "2", "3"])),
        2,
        &original,
        1,
    );
    assert_eq!(payloads(&topic, PartitionId(0)), ["j", "1", "2"]);
}

#[test]
fn a_producer_retry_is_recognised_after_retention_removed_the_original() {
    // Goal: when the events of a recent producer append are gone (retention), the
    // sequence alone still identifies the retry: it is a duplicate with the
    // original positions, not a refusal and not a second copy.
    // Method: a stamped append, then enough unstamped appends to roll 4 KiB
    // segments past an 8 KiB retention bound; enforce retention, check the
    // original is gone, retry the stamped append.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), LogOptions::default()).expect("open");
    let options = one_partition()
        .segment_size_bytes_max(4096)
        .retention_bytes(Some(8192));
    let topic = log.create_topic("t", options).expect("create");
    let (producer, epoch) = topic.open_producer("p").expect("producer");
    let request =
        AppendRequest::new("k", vec![Event::new("made", b"original".to_vec())]).stamped(ProducerStamp {
            producer,
            epoch,
            sequence: Sequence(0),
        });
    let original = topic.append_request(request.clone()).expect("original");
    for _ in 0..200 {
        append(&topic, "filler", vec![Event::new("x", b"0123456789".to_vec())]).expect("filler");
    }
    assert!(topic.enforce_retention().expect("retention") > 0);
    assert!(topic.partition_infos()[0].earliest > original.first_offset);
    assert_duplicate_of(topic.append_request(request).expect("retry"), &original);
    assert_eq!(topic.high_watermark(PartitionId(0)).expect("hw"), Offset(201));
}

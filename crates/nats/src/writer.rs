//! Appends to one partition from this server: the engine's rules over an
//! in-memory view of the partition, and one conditional publish per group.
//!
//! Every publish carries `Nats-Expected-Last-Sequence` equal to the high
//! watermark the view was built from, so JetStream stores a group only on
//! exactly the prefix its appends were decided against (docs/design/
//! nats-backend.md, "Why an acknowledged append is correct"). Any server may
//! write any partition: when another wrote first, the publish is refused, the
//! view catches up from the stream, and the group is decided again. That is
//! optimistic concurrency on the partition tail, with JetStream's stream
//! leader as the one serialisation point.
//!
//! Invariants:
//! - The committed view (`Committed`) describes exactly the stream's prefix
//!   `[0, high_watermark)`: every key's last sequence and offset, the
//!   idempotency ids within the window, the producers' recent appends.
//! - A group's acks are sent only after JetStream acknowledged the group (on a
//!   quorum of the R3 stream), or after a catch-up found the group stored.
//! - A publish whose outcome is unknown (a timeout) is resolved by catching
//!   up: the first message of every group carries a `Stele-Write` id, so the
//!   writer recognises its own group in the stream.

use async_nats::jetstream::context::PublishErrorKind;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use stele_engine::error::{Error, Result};
use stele_engine::event::{AppendAck, Epoch, Offset, PartitionId, ProducerId, ProducerStamp, Sequence};
use stele_engine::format::checkpoint::ProducerSnapshot;
use stele_engine::rules::{self, Decision, Fingerprint, KeyState, PartitionView, Prepared, StoredEvent};
use tokio::sync::{mpsc, oneshot, watch};

use crate::Connection;
use crate::message::{self, StoredMessage};
use crate::producers::ProducerRegistry;
use crate::read::{BATCH_COUNT_MAX, PartitionStream, Positioned, WRITE_HEADER};
use crate::unavailable;

/// Most messages in one publish: JetStream's default atomic batch limit.
pub const GROUP_EVENTS_MAX: usize = 1_000;

/// How long an unanswered publish waits before each check that its stream
/// still exists.
const ACK_LATE: std::time::Duration = std::time::Duration::from_millis(500);

/// Catch-ups longer than this many events read headers through a consumer
/// ([`PartitionStream::replay`]) instead of ranges of direct gets.
const REPLAY_BY_CONSUMER_MIN: u64 = 10_000;

/// Appends waiting for a writer before callers wait for room.
const QUEUE_DEPTH: usize = 4_096;

/// Tries of one group (each after a catch-up) before its appends fail as
/// unavailable: a partition written this hard from several servers at once
/// needs its keys routed to one server.
const GROUP_TRIES_MAX: u32 = 16;

/// What a writer needs from its surroundings.
#[derive(Clone)]
pub struct WriterContext {
    /// The cluster.
    pub connection: Connection,
    /// The topic's producer registry (epochs for fencing).
    pub producers: Arc<ProducerRegistry>,
    /// This server's writer id, unique per process run.
    pub writer_id: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: PartitionId,
    /// The topic's dedup window.
    pub dedup_window_ms: u64,
    /// Told the high watermark after every group this writer stored.
    pub tail: watch::Sender<u64>,
}

struct Job {
    prepared: Prepared,
    reply: oneshot::Sender<Result<AppendAck>>,
}

/// A handle on one partition's writer task; the task ends when the handle is dropped.
#[derive(Clone)]
pub struct PartitionWriter {
    queue: mpsc::Sender<Job>,
}

impl PartitionWriter {
    /// Starts the writer of one partition. Its view is built from the stream
    /// on the first append.
    pub fn start(context: WriterContext) -> PartitionWriter {
        let (queue, jobs) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(context, jobs));
        PartitionWriter { queue }
    }

    /// Queues a prepared request at once (so that appends submitted one after
    /// another are decided in that order) and resolves with its outcome. When
    /// the queue is full, the future waits for room first.
    ///
    /// # Errors
    /// As the engine's append (the same rules), and [`Error::Unavailable`]
    /// when the cluster does not answer; [`Error::Closed`] when the writer stopped.
    pub fn submit(
        &self,
        prepared: Prepared,
    ) -> impl std::future::Future<Output = Result<AppendAck>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let waiting = match self.queue.try_send(Job { prepared, reply }) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return futures_util::future::Either::Left(std::future::ready(Err(Error::Closed)));
            }
            Err(mpsc::error::TrySendError::Full(job)) => Some((self.queue.clone(), job)),
        };
        futures_util::future::Either::Right(async move {
            if let Some((queue, job)) = waiting {
                queue.send(job).await.map_err(|_| Error::Closed)?;
            }
            answer.await.unwrap_or(Err(Error::Closed))
        })
    }
}

/// The view of the stream's prefix `[0, high_watermark)`.
#[derive(Default)]
struct Committed {
    /// The creation time of the stream this view describes.
    created_ns: i128,
    high_watermark: Offset,
    last_timestamp_ms: i64,
    keys: HashMap<Vec<u8>, KeyState>,
    /// Offsets of events with an idempotency id, by keyed fingerprint, oldest first.
    ids: HashMap<u64, Vec<Offset>>,
    /// The same, in stream order with timestamps, for expiry from the window.
    ids_by_age: VecDeque<(i64, u64, Offset)>,
    producers: HashMap<ProducerId, ProducerSnapshot>,
}

impl Committed {
    fn apply(&mut self, positioned: &Positioned) {
        let message = &positioned.message;
        let offset = positioned.offset;
        self.high_watermark = offset.next();
        self.last_timestamp_ms = self.last_timestamp_ms.max(message.timestamp_ms);
        self.keys.insert(
            message.key.clone(),
            KeyState {
                last_sequence: message.sequence,
                last_offset: offset,
            },
        );
        if let Some(id) = &message.event.idempotency_id {
            let keyed = Fingerprint::of(&message.key, id).keyed;
            self.ids.entry(keyed).or_default().push(offset);
            self.ids_by_age.push_back((message.timestamp_ms, keyed, offset));
        }
        if let Some(stamp) = message.producer {
            apply_stamp(&mut self.producers, stamp, positioned);
        }
    }

    /// Forgets ids older than the window (their events cannot be duplicates).
    fn expire_ids(&mut self, now_ms: i64, window_ms: u64) {
        let horizon = now_ms.saturating_sub(i64::try_from(window_ms).unwrap_or(i64::MAX));
        while let Some(&(timestamp_ms, keyed, offset)) = self.ids_by_age.front() {
            if timestamp_ms >= horizon {
                break;
            }
            self.ids_by_age.pop_front();
            if let Some(offsets) = self.ids.get_mut(&keyed) {
                offsets.retain(|stored| *stored != offset);
                if offsets.is_empty() {
                    self.ids.remove(&keyed);
                }
            }
        }
    }
}

/// Records a stamped event read from the stream in its producer's state: the
/// first event of an append starts a recent entry, the next ones extend it.
fn apply_stamp(
    producers: &mut HashMap<ProducerId, ProducerSnapshot>,
    stamp: ProducerStamp,
    positioned: &Positioned,
) {
    let message = &positioned.message;
    let producer = producers
        .entry(stamp.producer)
        .or_insert_with(|| ProducerSnapshot {
            id: stamp.producer,
            epoch: stamp.epoch,
            last_sequence: Sequence(0),
            last_timestamp_ms: message.timestamp_ms,
            recent: Vec::new(),
        });
    if let Some(last) = producer.recent.last_mut()
        && producer.epoch == stamp.epoch
        && last.sequence == stamp.sequence
        && last.first_offset.0 + (last.last_sequence.0 - last.first_sequence.0) + 1 == positioned.offset.0
        && last.last_sequence.next() == message.sequence
    {
        last.last_sequence = message.sequence;
        return;
    }
    let ack = AppendAck {
        partition: PartitionId(0),
        first_offset: positioned.offset,
        first_sequence: message.sequence,
        last_sequence: message.sequence,
        timestamp_ms: message.timestamp_ms,
        duplicate: false,
    };
    rules::remember_append(producer, stamp, &ack);
}

/// The appends of the group being built, over the committed view.
#[derive(Default)]
struct Group {
    next_offset: Offset,
    keys: HashMap<Vec<u8>, KeyState>,
    ids: HashMap<u64, Vec<Offset>>,
    producers: HashMap<ProducerId, ProducerSnapshot>,
    /// The group's messages, from `first_offset`.
    messages: Vec<StoredMessage>,
    first_offset: Offset,
}

impl Group {
    fn new(high_watermark: Offset) -> Group {
        Group {
            next_offset: high_watermark,
            first_offset: high_watermark,
            ..Group::default()
        }
    }
}

/// The rules' view: the group over the committed view, with the events and
/// epochs fetched for this round.
struct View<'a> {
    partition: PartitionId,
    window_ms: u64,
    committed: &'a Committed,
    group: &'a Group,
    fetched: &'a HashMap<Offset, StoredMessage>,
    epochs: &'a HashMap<ProducerId, Option<Epoch>>,
}

fn stored_event(message: &StoredMessage, published: bool) -> StoredEvent<'_> {
    StoredEvent {
        key: &message.key,
        sequence: message.sequence,
        timestamp_ms: message.timestamp_ms,
        published,
        event_type: &message.event.event_type,
        payload: &message.event.payload,
        headers: message
            .event
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice()))
            .collect(),
        idempotency_id: message.event.idempotency_id.as_deref(),
    }
}

impl PartitionView for View<'_> {
    fn partition(&self) -> PartitionId {
        self.partition
    }

    fn dedup_window_ms(&self) -> u64 {
        self.window_ms
    }

    fn current_epoch(&self, producer: ProducerId) -> Option<Epoch> {
        self.epochs.get(&producer).copied().flatten()
    }

    fn producer(&self, producer: ProducerId) -> Option<&ProducerSnapshot> {
        self.group
            .producers
            .get(&producer)
            .or_else(|| self.committed.producers.get(&producer))
    }

    fn key_state(&mut self, key: &[u8], _hash: u64) -> Result<(Option<KeyState>, bool)> {
        let state = self
            .group
            .keys
            .get(key)
            .or_else(|| self.committed.keys.get(key))
            .copied();
        Ok((state, true))
    }

    fn id_candidates(
        &self,
        fingerprint: Fingerprint,
        _now_ms: i64,
        candidates: &mut Vec<Offset>,
    ) -> Result<usize> {
        let start = candidates.len();
        if let Some(offsets) = self.group.ids.get(&fingerprint.keyed) {
            candidates.extend(offsets.iter().rev());
        }
        let pending = candidates.len() - start;
        if let Some(offsets) = self.committed.ids.get(&fingerprint.keyed) {
            candidates.extend(offsets.iter().rev());
        }
        Ok(pending)
    }

    fn with_event_at<T>(&self, offset: Offset, f: impl FnOnce(&StoredEvent<'_>) -> T) -> Result<Option<T>> {
        if offset >= self.group.first_offset {
            let index = (offset.0 - self.group.first_offset.0) as usize;
            return Ok(self
                .group
                .messages
                .get(index)
                .map(|message| f(&stored_event(message, false))));
        }
        Ok(self
            .fetched
            .get(&offset)
            .map(|message| f(&stored_event(message, true))))
    }

    fn high_watermark(&self) -> Offset {
        self.committed.high_watermark
    }
}

struct Writer {
    context: WriterContext,
    stream: PartitionStream,
    committed: Option<Committed>,
    /// Events read for the rules' content checks, by offset; cleared each round.
    fetched: HashMap<Offset, StoredMessage>,
    groups_written: u64,
    /// Whether the last catch-up met the group this writer published last.
    own_group_found: bool,
    /// Whether the view ends where this writer's last publish ended the
    /// stream, as far as this writer knows (no catch-up needed to write).
    at_tail: bool,
}

async fn run(context: WriterContext, mut jobs: mpsc::Receiver<Job>) {
    let stream = PartitionStream::new(&context.connection, &context.topic, context.partition.0);
    let mut writer = Writer {
        context,
        stream,
        committed: None,
        fetched: HashMap::new(),
        groups_written: 0,
        own_group_found: false,
        at_tail: false,
    };
    let mut carried: Vec<Job> = Vec::new();
    loop {
        if carried.is_empty() {
            match jobs.recv().await {
                Some(job) => carried.push(job),
                None => return,
            }
        }
        let mut events: usize = carried
            .iter()
            .map(|job| job.prepared.request().events.len())
            .sum();
        while events < GROUP_EVENTS_MAX {
            match jobs.try_recv() {
                Ok(job) => {
                    events += job.prepared.request().events.len();
                    carried.push(job);
                }
                Err(_) => break,
            }
        }
        carried = writer.round(std::mem::take(&mut carried)).await;
    }
}

/// What a round decided for one append.
enum Outcome {
    Answer(Result<AppendAck>),
    /// In the group: answered with this ack once the group is stored.
    InGroup(AppendAck),
}

impl Writer {
    /// Decides and writes as many of `jobs` as fit one group; answers them and
    /// returns the jobs left for the next round.
    async fn round(&mut self, mut jobs: Vec<Job>) -> Vec<Job> {
        for _ in 0..GROUP_TRIES_MAX {
            // A view that the last publish left at the tail is used as it is:
            // a write decided on it is checked by the fence anyway. A refusal
            // is not, so one decided on an unchecked view is decided again
            // after a catch-up (another server may have moved the key on).
            let checked = !self.at_tail;
            let prepared = async {
                if checked {
                    self.catch_up().await?;
                } else {
                    let now_ms = self.now_ms();
                    let window = self.context.dedup_window_ms;
                    if let Some(committed) = self.committed.as_mut() {
                        committed.expire_ids(now_ms, window);
                    }
                }
                let epochs = self.epochs(&jobs).await?;
                let now_ms = self.now_ms();
                self.fetch(&jobs, &epochs, now_ms).await?;
                Ok::<_, Error>((epochs, now_ms))
            };
            let (epochs, now_ms) = match prepared.await {
                Ok(prepared) => prepared,
                Err(error) => {
                    tracing::debug!(%error, topic = self.context.topic, "an append round could not start");
                    answer_all(jobs, &error);
                    return Vec::new();
                }
            };
            let (group, outcomes) = self.decide(&jobs, &epochs, now_ms);
            if !checked
                && outcomes
                    .iter()
                    .any(|outcome| matches!(outcome, Outcome::Answer(Err(_))))
            {
                self.at_tail = false;
                continue;
            }
            let rest = jobs.split_off(outcomes.len());
            if group.messages.is_empty() {
                answer(jobs, outcomes);
                return rest;
            }
            self.at_tail = false;
            match self.publish(&group).await {
                Ok(()) => {
                    self.commit(group);
                    self.at_tail = true;
                    answer(jobs, outcomes);
                    return rest;
                }
                Err(Published::Conflict) => {
                    tracing::debug!(
                        topic = self.context.topic,
                        "another server wrote first: deciding again"
                    );
                    // Another server wrote first: catch up and decide again.
                    jobs.extend(rest);
                }
                Err(Published::Unknown(reason)) => {
                    tracing::debug!(%reason, topic = self.context.topic, "a publish went unanswered");
                    // Stored or not, the stream says once it answers. When the
                    // catch-up does not find the group, it may still land later
                    // (a publish in flight): the appends are answered as
                    // unknown, never decided again, so none is stored twice.
                    self.own_group_found = false;
                    match self.catch_up().await {
                        Ok(()) if self.own_group_found => answer(jobs, outcomes),
                        _ => answer_all(
                            jobs,
                            &unavailable("publish to a partition stream (the outcome is unknown)", reason),
                        ),
                    }
                    return rest;
                }
                Err(Published::Failed(error)) => {
                    answer_all(jobs, &error);
                    return rest;
                }
            }
        }
        let error = unavailable(
            "append",
            "other servers kept writing this partition first; route its keys to one server",
        );
        answer_all(jobs, &error);
        Vec::new()
    }

    /// Decides the jobs in order against the committed view and the group so
    /// far, until the group is full: the group and one outcome per job decided.
    fn decide(
        &self,
        jobs: &[Job],
        epochs: &HashMap<ProducerId, Option<Epoch>>,
        now_ms: i64,
    ) -> (Group, Vec<Outcome>) {
        let committed = self.committed.as_ref().expect("caught up");
        let mut group = Group::new(committed.high_watermark);
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in jobs {
            let events = job.prepared.request().events.len();
            if events > GROUP_EVENTS_MAX {
                outcomes.push(Outcome::Answer(Err(Error::LimitExceeded {
                    what: "events in one append on the NATS backend (JetStream's atomic batch limit)",
                    value: events as u64,
                    max: GROUP_EVENTS_MAX as u64,
                })));
                continue;
            }
            let mut view = View {
                partition: self.context.partition,
                window_ms: self.context.dedup_window_ms,
                committed,
                group: &group,
                fetched: &self.fetched,
                epochs,
            };
            match rules::decide(&mut view, &job.prepared, now_ms) {
                Err(error) => outcomes.push(Outcome::Answer(Err(error))),
                Ok(Decision::Duplicate { ack, published: true }) => outcomes.push(Outcome::Answer(Ok(ack))),
                Ok(Decision::Duplicate {
                    ack,
                    published: false,
                }) => outcomes.push(Outcome::InGroup(ack)),
                Ok(Decision::Write { key, .. }) => {
                    if !group.messages.is_empty() && group.messages.len() + events > GROUP_EVENTS_MAX {
                        break;
                    }
                    let ack = encode(
                        &mut group,
                        committed,
                        &job.prepared,
                        key,
                        now_ms,
                        self.context.partition,
                    );
                    outcomes.push(Outcome::InGroup(ack));
                }
            }
        }
        (group, outcomes)
    }

    fn now_ms(&self) -> i64 {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| {
                i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
            });
        clock.max(
            self.committed
                .as_ref()
                .map_or(0, |committed| committed.last_timestamp_ms),
        )
    }

    /// Brings the committed view to the stream's end, as the leader says it is.
    async fn catch_up(&mut self) -> Result<()> {
        let bounds = self
            .stream
            .bounds()
            .await?
            .ok_or_else(|| Error::TopicNotFound(self.context.topic.clone()))?;
        let committed = self.committed.get_or_insert_with(Committed::default);
        if committed.created_ns != bounds.created_ns {
            // The topic was deleted and created again (or this is the first
            // look): the view starts from the new stream's beginning.
            *committed = Committed {
                created_ns: bounds.created_ns,
                ..Committed::default()
            };
        }
        if committed.high_watermark > bounds.high_watermark {
            return Err(Error::Inconsistent {
                path: format!("nats:stream/{}", self.stream.name()).into(),
                reason: format!(
                    "the stream ends at {} but this server saw it end at {}: it lost acknowledged messages",
                    bounds.high_watermark, committed.high_watermark
                ),
            });
        }
        let own = format!("{}.{}", self.context.writer_id, self.groups_written);
        let mut from = committed.high_watermark.max(bounds.earliest);
        if from > committed.high_watermark {
            // Retention removed events this view never saw: their keys' states
            // are unknown. Only a fresh view (this server's first append) starts
            // past zero; keys seen only in removed events start again.
            committed.high_watermark = from;
        }
        if bounds.high_watermark.0 - from.0 > REPLAY_BY_CONSUMER_MIN {
            // A long way behind (this server's first append to a big
            // partition): headers pushed by a consumer, no payloads.
            let committed = self.committed.as_mut().expect("made above");
            let stream_name = self.stream.name().to_string();
            let mut found = false;
            self.stream
                .replay(from, bounds.high_watermark, |positioned| {
                    if positioned.offset != committed.high_watermark {
                        return Err(Error::Inconsistent {
                            path: format!("nats:stream/{stream_name}").into(),
                            reason: format!(
                                "offset {} follows {}: the stream has a gap",
                                positioned.offset, committed.high_watermark
                            ),
                        });
                    }
                    found |= positioned.write.as_deref() == Some(own.as_str());
                    committed.apply(&positioned);
                    Ok(())
                })
                .await?;
            self.own_group_found |= found;
            from = bounds.high_watermark;
        }
        while from < bounds.high_watermark {
            let known = Offset(bounds.high_watermark.0 - 1);
            let batch = self
                .stream
                .batch_reaching(from, BATCH_COUNT_MAX, None, None, known)
                .await?;
            let Some(last) = batch.messages.last() else {
                break;
            };
            let next = last.offset.next();
            let committed = self.committed.as_mut().expect("made above");
            for positioned in &batch.messages {
                if positioned.offset != committed.high_watermark {
                    return Err(Error::Inconsistent {
                        path: format!("nats:stream/{}", self.stream.name()).into(),
                        reason: format!(
                            "offset {} follows {}: the stream has a gap",
                            positioned.offset, committed.high_watermark
                        ),
                    });
                }
                if positioned.write.as_deref() == Some(own.as_str()) {
                    self.own_group_found = true;
                }
                committed.apply(positioned);
            }
            from = next;
        }
        let now_ms = self.now_ms();
        let window = self.context.dedup_window_ms;
        if let Some(committed) = self.committed.as_mut() {
            committed.expire_ids(now_ms, window);
        }
        Ok(())
    }

    /// The current epoch of every producer the jobs name, read fresh.
    async fn epochs(&self, jobs: &[Job]) -> Result<HashMap<ProducerId, Option<Epoch>>> {
        let mut epochs = HashMap::new();
        for job in jobs {
            if let Some(stamp) = job.prepared.request().producer
                && !epochs.contains_key(&stamp.producer)
            {
                let epoch = self
                    .context
                    .producers
                    .current_epoch(&self.context.topic, stamp.producer)
                    .await?;
                epochs.insert(stamp.producer, epoch);
            }
        }
        Ok(epochs)
    }

    /// Reads every committed event the rules may compare a job with.
    async fn fetch(
        &mut self,
        jobs: &[Job],
        epochs: &HashMap<ProducerId, Option<Epoch>>,
        now_ms: i64,
    ) -> Result<()> {
        self.fetched.clear();
        let committed = self.committed.as_ref().expect("caught up");
        let group = Group::new(committed.high_watermark);
        let empty = HashMap::new();
        let view = View {
            partition: self.context.partition,
            window_ms: self.context.dedup_window_ms,
            committed,
            group: &group,
            fetched: &empty,
            epochs,
        };
        let mut wanted = Vec::new();
        for job in jobs {
            wanted.extend(rules::offsets_to_read(&view, &job.prepared, now_ms)?);
        }
        wanted.sort_unstable();
        wanted.dedup();
        for offset in wanted {
            if offset >= committed.high_watermark {
                continue;
            }
            if let Some(positioned) = self.stream.at(offset).await? {
                self.fetched.insert(offset, positioned.message);
            }
        }
        Ok(())
    }

    async fn publish(&mut self, group: &Group) -> std::result::Result<(), Published> {
        self.groups_written += 1;
        let write_id = format!("{}.{}", self.context.writer_id, self.groups_written);
        let jetstream = &self.context.connection.jetstream;
        let client = &self.context.connection.client;
        let count = group.messages.len();
        let batch_id = write_id.as_str();
        let mut acked = None;
        for (index, message) in group.messages.iter().enumerate() {
            let mut headers = message::headers(message);
            if index == 0 {
                headers.insert(
                    "Nats-Expected-Last-Sequence",
                    group.first_offset.0.to_string().as_str(),
                );
                headers.insert(WRITE_HEADER, write_id.as_str());
            }
            let subject = self.context.connection.names.subject(
                &self.context.topic,
                self.context.partition.0,
                &message.key,
            );
            if count > 1 {
                headers.insert("Nats-Batch-Id", batch_id);
                headers.insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
                if index + 1 < count {
                    client
                        .publish_with_headers(subject, headers, message.event.payload.clone().into())
                        .await
                        .map_err(|error| Published::Unknown(error.to_string()))?;
                    continue;
                }
                headers.insert("Nats-Batch-Commit", "1");
            }
            acked = Some(
                jetstream
                    .publish_with_headers(subject, headers, message.event.payload.clone().into())
                    .await
                    .map_err(|error| Published::Unknown(error.to_string()))?,
            );
        }
        let acked = acked.expect("a group has messages");
        // A stream deleted under a publish may answer nothing until the
        // publish times out: while the ack is late, check that the stream is
        // still there (a publish cannot land in a stream that is gone).
        let stream = &self.stream;
        let created_ns = self
            .committed
            .as_ref()
            .map_or(0, |committed| committed.created_ns);
        let gone = async {
            loop {
                tokio::time::sleep(ACK_LATE).await;
                match stream.bounds().await {
                    Ok(None) => return,
                    // Deleted and made again: this stream is not the one.
                    Ok(Some(bounds)) if bounds.created_ns != created_ns => return,
                    _ => {}
                }
            }
        };
        let acked = tokio::select! {
            acked = acked => acked,
            () = gone => return Err(Published::Failed(Error::TopicNotFound(self.context.topic.clone()))),
        };
        match acked {
            Ok(ack) => {
                let expected = group.first_offset.0 + count as u64;
                if ack.sequence != expected {
                    return Err(Published::Failed(Error::Inconsistent {
                        path: format!("nats:stream/{}", self.stream.name()).into(),
                        reason: format!(
                            "a group expected to end at {expected} was stored ending at {}",
                            ack.sequence
                        ),
                    }));
                }
                Ok(())
            }
            Err(error) => match error.kind() {
                PublishErrorKind::WrongLastSequence => Err(Published::Conflict),
                // "No responders": no stream, or none of its replicas leads
                // at the moment (an election): only the stream's state says.
                PublishErrorKind::StreamNotFound => match self.stream.bounds().await {
                    Ok(None) => Err(Published::Failed(Error::TopicNotFound(
                        self.context.topic.clone(),
                    ))),
                    _ => Err(Published::Unknown(error.to_string())),
                },
                PublishErrorKind::MaxPayloadExceeded => Err(Published::Failed(Error::LimitExceeded {
                    what: "message size on the NATS backend (the cluster's max_payload)",
                    value: 0,
                    max: self.context.connection.client.server_info().max_payload as u64,
                })),
                _ => Err(Published::Unknown(error.to_string())),
            },
        }
    }

    fn commit(&mut self, group: Group) {
        let committed = self.committed.as_mut().expect("caught up");
        for (index, message) in group.messages.into_iter().enumerate() {
            let positioned = Positioned {
                offset: Offset(group.first_offset.0 + index as u64),
                message,
                write: None,
            };
            committed.apply(&positioned);
        }
        let _ = self.context.tail.send_if_modified(|tail| {
            let high = committed.high_watermark.0;
            let changed = high > *tail;
            *tail = (*tail).max(high);
            changed
        });
    }
}

enum Published {
    /// The stream did not end where the group expected: another writer.
    Conflict,
    /// No answer: the group may or may not be stored.
    Unknown(String),
    /// Refused for a reason the appends are answered with.
    Failed(Error),
}

/// Adds an accepted append to the group; its ack.
fn encode(
    group: &mut Group,
    committed: &Committed,
    prepared: &Prepared,
    key: Option<KeyState>,
    now_ms: i64,
    partition: PartitionId,
) -> AppendAck {
    let request = prepared.request();
    let first_offset = group.next_offset;
    let first_sequence = key.map_or(Sequence(0), |key| key.last_sequence.next());
    let count = request.events.len() as u64;
    let last_sequence = first_sequence + (count - 1);
    let ack = AppendAck {
        partition,
        first_offset,
        first_sequence,
        last_sequence,
        timestamp_ms: now_ms,
        duplicate: false,
    };
    let mut previous = key.map(|key| key.last_offset);
    for (index, (event, fingerprint)) in request.events.iter().zip(prepared.fingerprints()).enumerate() {
        let offset = Offset(first_offset.0 + index as u64);
        group.messages.push(StoredMessage {
            key: request.key.clone(),
            sequence: first_sequence + index as u64,
            timestamp_ms: now_ms,
            previous,
            producer: request.producer,
            event: event.clone(),
        });
        if let Some(fingerprint) = fingerprint {
            group.ids.entry(fingerprint.keyed).or_default().push(offset);
        }
        previous = Some(offset);
    }
    group.next_offset = Offset(first_offset.0 + count);
    group.keys.insert(
        request.key.clone(),
        KeyState {
            last_sequence,
            last_offset: Offset(first_offset.0 + count - 1),
        },
    );
    if let Some(stamp) = request.producer {
        let mut producer = group
            .producers
            .get(&stamp.producer)
            .or_else(|| committed.producers.get(&stamp.producer))
            .filter(|producer| producer.epoch == stamp.epoch)
            .cloned()
            .unwrap_or(ProducerSnapshot {
                id: stamp.producer,
                epoch: stamp.epoch,
                last_sequence: Sequence(0),
                last_timestamp_ms: now_ms,
                recent: Vec::new(),
            });
        rules::remember_append(&mut producer, stamp, &ack);
        group.producers.insert(stamp.producer, producer);
    }
    ack
}

fn answer(jobs: Vec<Job>, outcomes: Vec<Outcome>) {
    for (job, outcome) in jobs.into_iter().zip(outcomes) {
        let result = match outcome {
            Outcome::Answer(result) => result,
            Outcome::InGroup(ack) => Ok(ack),
        };
        let _ = job.reply.send(result);
    }
}

fn answer_all(jobs: Vec<Job>, error: &Error) {
    for job in jobs {
        let _ = job.reply.send(Err(error.duplicate()));
    }
}

//! The gRPC service's [`Backend`] on a NATS JetStream cluster.
//!
//! Topics are in the catalog (`topics.rs`), events in one R3 stream per
//! partition (`read.rs`, `writer.rs`), cursors and producers in KV buckets
//! (`cursors.rs`, `producers.rs`). Any number of Stele servers may serve one
//! cluster at once: appends are decided by the engine's own rules
//! (`stele_engine::rules`) and stored by a conditional publish on the
//! partition's tail, so whichever server takes an append, the partition's
//! history is the serial history of its appends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::consumer::{DeliverPolicy, push};
use futures_util::StreamExt as _;
use stele_engine::TopicUpdate;
use stele_engine::config::{TopicChange, TopicOptions};
use stele_engine::error::{Error, Result};
use stele_engine::event::{
    AppendAck, AppendRequest, Direction, Epoch, Offset, PartitionId, ProducerId, Sequence,
};
use stele_engine::format::topic_meta;
use stele_engine::{
    CursorPosition, EventFilter, PartitionInfo, StoredEvents, limits, partition_for_key, rules,
};
use stele_server::backend::{Backend, BoxFuture, KeyHistory, NamedCursors, TopicDescription};
use tokio::sync::{mpsc, oneshot, watch};

use crate::cursors::CursorStore;
use crate::producers::ProducerRegistry;
use crate::read::{Bounds, PartitionStream, Positioned};
use crate::topics::TopicCatalog;
use crate::writer::{PartitionWriter, WriterContext};
use crate::{Connection, message, unavailable};

/// Stele on a JetStream cluster.
#[derive(Clone)]
pub struct NatsBackend {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    catalog: TopicCatalog,
    cursors: CursorStore,
    producers: Arc<ProducerRegistry>,
    defaults: TopicOptions,
    auto_create: bool,
    writer_id: String,
    /// The cluster's `max_payload`, read once at open (`server_info` clones
    /// the whole server description: not once per append).
    max_payload: usize,
    topics: Mutex<HashMap<String, Arc<TopicState>>>,
    /// Appends to topics not in `topics` yet, in call order, per topic.
    queues: Mutex<HashMap<String, Arc<AppendQueue>>>,
    closed: watch::Sender<bool>,
}

type Acks = Result<Vec<Result<AppendAck>>>;

/// Appends that wait for their topic to be read from the catalog (or
/// created), handed to the partition writers in the order they were made:
/// calls made one after another must be decided in that order, as the
/// engine decides them.
struct AppendQueue {
    sender: mpsc::UnboundedSender<(Vec<AppendRequest>, oneshot::Sender<Acks>)>,
    /// Calls queued and not yet handed to their writers.
    pending: AtomicUsize,
}

/// What this server knows of one topic.
struct TopicState {
    name: String,
    options: TopicOptions,
    /// The catalog entry's revision these options are of.
    revision: u64,
    changed_ms: i64,
    partitions: Vec<PartitionSlot>,
}

struct PartitionSlot {
    id: PartitionId,
    stream: PartitionStream,
    writer: Mutex<Option<PartitionWriter>>,
    /// The high watermark as last seen (by this server's writer or the tail watcher).
    tail: watch::Sender<u64>,
    watching: AtomicBool,
    /// The creation time (Unix ns) of the stream first seen; 0 before.
    created_ns: AtomicI64,
}

impl NatsBackend {
    /// Opens the catalog and the state buckets (creating them when missing).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when JetStream does not answer.
    pub async fn open(
        connection: Connection,
        defaults: TopicOptions,
        auto_create: bool,
    ) -> Result<NatsBackend> {
        defaults.validate()?;
        let catalog = TopicCatalog::open(&connection).await?;
        let cursors = CursorStore::open(&connection).await?;
        let producers = Arc::new(ProducerRegistry::open(&connection).await?);
        let writer_id = connection.client.new_inbox().replace("_INBOX.", "");
        let (closed, _) = watch::channel(false);
        let max_payload = connection.client.server_info().max_payload;
        Ok(NatsBackend {
            inner: Arc::new(Inner {
                connection,
                catalog,
                cursors,
                producers,
                defaults,
                auto_create,
                writer_id,
                max_payload,
                topics: Mutex::new(HashMap::new()),
                queues: Mutex::new(HashMap::new()),
                closed,
            }),
        })
    }

    /// The connection to the cluster.
    pub fn connection(&self) -> &Connection {
        &self.inner.connection
    }
}

impl Inner {
    fn cached(&self, name: &str) -> Option<Arc<TopicState>> {
        self.topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    fn forget(&self, name: &str) {
        self.topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }

    fn check_open(&self) -> Result<()> {
        if *self.closed.borrow() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// The topic, from the cache or the catalog.
    async fn topic(&self, name: &str) -> Result<Arc<TopicState>> {
        self.check_open()?;
        if let Some(topic) = self.cached(name) {
            return Ok(topic);
        }
        stele_engine::validate_topic_name(name)?;
        let topic_meta::TopicMeta {
            options,
            revision,
            changed_ms,
            ..
        } = self.catalog.meta(name).await?;
        let partitions = (0..options.partitions)
            .map(|partition| PartitionSlot {
                id: PartitionId(partition),
                stream: PartitionStream::new(&self.connection, name, partition),
                writer: Mutex::new(None),
                tail: watch::channel(0).0,
                watching: AtomicBool::new(false),
                created_ns: AtomicI64::new(0),
            })
            .collect();
        let topic = Arc::new(TopicState {
            name: name.to_string(),
            options,
            revision,
            changed_ms,
            partitions,
        });
        Ok(Arc::clone(
            self.topics
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(name.to_string())
                .or_insert(topic),
        ))
    }

    async fn topic_for_append(&self, name: &str) -> Result<Arc<TopicState>> {
        match self.topic(name).await {
            Err(Error::TopicNotFound(_)) if self.auto_create => {
                match self.catalog.create(name, &self.defaults).await {
                    Ok(()) | Err(Error::TopicExists(_)) => self.topic(name).await,
                    Err(error) => Err(error),
                }
            }
            other => other,
        }
    }

    /// The bounds of a partition from its stream's leader; a stream that is
    /// gone means the topic is (the cache forgets it).
    async fn bounds(&self, topic: &TopicState, partition: PartitionId) -> Result<Bounds> {
        let slot = slot(topic, partition)?;
        match slot.stream.bounds().await? {
            Some(bounds) => {
                let created_ns = i64::try_from(bounds.created_ns).unwrap_or(i64::MAX);
                let first =
                    slot.created_ns
                        .compare_exchange(0, created_ns, Ordering::AcqRel, Ordering::Acquire);
                if let Err(seen) = first
                    && seen != created_ns
                {
                    // Deleted and created again elsewhere: its options may
                    // differ; the next call reads them again.
                    self.forget(&topic.name);
                }
                let _ = slot.tail.send_if_modified(|tail| {
                    let changed = bounds.high_watermark.0 > *tail;
                    *tail = (*tail).max(bounds.high_watermark.0);
                    changed
                });
                Ok(bounds)
            }
            None => {
                self.forget(&topic.name);
                Err(Error::TopicNotFound(topic.name.clone()))
            }
        }
    }

    fn writer(&self, topic: &TopicState, partition: PartitionId) -> Result<PartitionWriter> {
        let slot = slot(topic, partition)?;
        let mut writer = slot
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(writer
            .get_or_insert_with(|| {
                PartitionWriter::start(WriterContext {
                    connection: self.connection.clone(),
                    producers: Arc::clone(&self.producers),
                    writer_id: self.writer_id.clone(),
                    topic: topic.name.clone(),
                    partition,
                    dedup_window_ms: topic.options.dedup_window_ms,
                    tail: slot.tail.clone(),
                })
            })
            .clone())
    }

    /// Whether no call to `name` waits in its append queue.
    fn queue_idle(&self, name: &str) -> bool {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .is_none_or(|queue| queue.pending.load(Ordering::Acquire) == 0)
    }

    /// Queues a call behind the earlier ones to a topic not known yet.
    fn enqueue(self: &Arc<Self>, name: &str, requests: Vec<AppendRequest>) -> oneshot::Receiver<Acks> {
        let queue = {
            let mut queues = self
                .queues
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let queue = queues.entry(name.to_string()).or_insert_with(|| {
                let (sender, calls) = mpsc::unbounded_channel();
                let queue = Arc::new(AppendQueue {
                    sender,
                    pending: AtomicUsize::new(0),
                });
                tokio::spawn(Arc::clone(self).forward(name.to_string(), Arc::clone(&queue), calls));
                queue
            });
            queue.pending.fetch_add(1, Ordering::AcqRel);
            Arc::clone(queue)
        };
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError((_, reply))) = queue.sender.send((requests, reply)) {
            queue.pending.fetch_sub(1, Ordering::AcqRel);
            let _ = reply.send(Err(Error::Closed));
        }
        answer
    }

    /// Hands queued calls to their writers in order; ends with the backend.
    async fn forward(
        self: Arc<Self>,
        name: String,
        queue: Arc<AppendQueue>,
        mut calls: mpsc::UnboundedReceiver<(Vec<AppendRequest>, oneshot::Sender<Acks>)>,
    ) {
        let mut closed = self.closed.subscribe();
        loop {
            let call = tokio::select! {
                call = calls.recv() => call,
                _ = closed.wait_for(|closed| *closed) => None,
            };
            let Some((requests, reply)) = call else {
                return;
            };
            match self.topic_for_append(&name).await {
                Ok(topic) => {
                    let appends: Vec<_> = requests
                        .into_iter()
                        .map(|request| self.submit(&topic, request))
                        .collect();
                    queue.pending.fetch_sub(1, Ordering::AcqRel);
                    tokio::spawn(async move {
                        let _ = reply.send(Ok(futures_util::future::join_all(appends).await));
                    });
                }
                Err(error) => {
                    queue.pending.fetch_sub(1, Ordering::AcqRel);
                    let _ = reply.send(Err(error));
                }
            }
        }
    }

    /// Queues an append with its partition's writer at once; resolves with its outcome.
    fn submit(self: &Arc<Self>, topic: &TopicState, request: AppendRequest) -> BoxFuture<Result<AppendAck>> {
        let prepared = match rules::prepare(request, topic.options.payload_size_max) {
            Ok(prepared) => prepared,
            Err(error) => return Box::pin(std::future::ready(Err(error))),
        };
        // Refused before anything is published: an event the cluster would
        // refuse for its size (nats-server's max_payload, 1 MiB by default).
        let max_payload = self.max_payload;
        for event in &prepared.request().events {
            let size = message::size_bound(&prepared.request().key, event);
            if size > max_payload {
                return Box::pin(std::future::ready(Err(Error::LimitExceeded {
                    what: "event size with its headers on the NATS backend (the cluster's max_payload)",
                    value: size as u64,
                    max: max_payload as u64,
                })));
            }
        }
        let partition = partition_for_key(&prepared.request().key, topic.options.partitions);
        let writer = match self.writer(topic, partition) {
            Ok(writer) => writer,
            Err(error) => return Box::pin(std::future::ready(Err(error))),
        };
        let appended = writer.submit(prepared);
        let inner = Arc::clone(self);
        let name = topic.name.clone();
        let stream = slot(topic, partition).map(|slot| slot.stream.clone());
        Box::pin(async move {
            let result = appended.await;
            match &result {
                Err(Error::TopicNotFound(_)) => inner.forget(&name),
                // A stream deleted under a read or a publish answers like an
                // unreachable one: for the caller the topic is gone (NOT_FOUND).
                Err(Error::Unavailable { .. }) => {
                    if let Ok(stream) = stream
                        && matches!(stream.bounds().await, Ok(None))
                    {
                        inner.forget(&name);
                        return Err(Error::TopicNotFound(name));
                    }
                }
                _ => {}
            }
            result
        })
    }

    /// Follows a partition's tail with an ordered consumer (headers only), so
    /// that waiting subscriptions learn of appends made through any server.
    fn watch_tail(
        self: &Arc<Self>,
        topic: &Arc<TopicState>,
        partition: PartitionId,
    ) -> Result<watch::Receiver<u64>> {
        let slot = slot(topic, partition)?;
        let receiver = slot.tail.subscribe();
        if !slot.watching.swap(true, Ordering::AcqRel) {
            let inner = Arc::clone(self);
            let topic = Arc::clone(topic);
            tokio::spawn(async move {
                let mut closed = inner.closed.subscribe();
                loop {
                    let followed = tokio::select! {
                        followed = inner.follow(&topic, partition) => followed,
                        _ = closed.wait_for(|closed| *closed) => return,
                    };
                    if let Err(error) = followed {
                        tracing::debug!(%error, topic = topic.name, %partition, "following a partition's tail");
                        if matches!(error, Error::TopicNotFound(_)) {
                            return;
                        }
                    }
                    // Consumers are recreated by the client; an error here means
                    // the stream was unreachable: try again after a pause.
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            });
        }
        Ok(receiver)
    }

    async fn follow(&self, topic: &TopicState, partition: PartitionId) -> Result<()> {
        let slot = slot(topic, partition)?;
        let bounds = self.bounds(topic, partition).await?;
        let stream = self
            .connection
            .jetstream
            .get_stream_no_info(slot.stream.name())
            .await
            .map_err(|error| unavailable("name a partition stream", error))?;
        let consumer = stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.connection.client.new_inbox(),
                headers_only: true,
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: bounds.high_watermark.0 + 1,
                },
                ..push::OrderedConfig::default()
            })
            .await
            .map_err(|error| unavailable("follow a partition's tail", error))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|error| unavailable("follow a partition's tail", error))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|error| unavailable("follow a partition's tail", error))?;
            let sequence = message
                .info()
                .map_err(|error| unavailable("follow a partition's tail", error))?
                .stream_sequence;
            let _ = slot.tail.send_if_modified(|tail| {
                let changed = sequence > *tail;
                *tail = (*tail).max(sequence);
                changed
            });
        }
        Ok(())
    }

    /// A partition's events from `from`, checked against its bounds.
    async fn scan(
        &self,
        topic: &TopicState,
        partition: PartitionId,
        from: Offset,
        count_max: usize,
        bytes_max: u64,
        filter: &EventFilter,
    ) -> Result<StoredEvents> {
        let bounds = self.bounds(topic, partition).await?;
        if from < bounds.earliest || from > bounds.high_watermark {
            return Err(Error::OffsetOutOfRange {
                requested: from,
                earliest: bounds.earliest,
                high_watermark: bounds.high_watermark,
            });
        }
        let count_max = count_max.clamp(1, limits::READ_EVENTS_COUNT_MAX);
        if from == bounds.high_watermark {
            return Ok(StoredEvents::from_events(partition, Vec::new(), from));
        }
        let slot = slot(topic, partition)?;
        let batch = slot
            .stream
            .batch_reaching(
                from,
                count_max,
                Some(bytes_max),
                None,
                Offset(bounds.high_watermark.0 - 1),
            )
            .await?;
        let next_offset = batch.messages.last().map_or(from, |last| last.offset.next());
        let events: Vec<_> = batch
            .messages
            .into_iter()
            .filter(|positioned| {
                filter.accepts(&positioned.message.event.event_type, &positioned.message.key)
            })
            .map(|positioned| positioned.into_recorded(partition))
            .collect();
        Ok(StoredEvents::from_events(partition, events, next_offset))
    }

    /// The first message of `key` at or after `offset` (`None` past its last).
    async fn key_message_from(
        &self,
        slot: &PartitionSlot,
        subject: &str,
        offset: Offset,
        last: Offset,
    ) -> Result<Option<Positioned>> {
        let batch = slot
            .stream
            .batch_reaching(offset, 1, None, Some(subject), last)
            .await?;
        Ok(batch.messages.into_iter().next())
    }

    /// The offset of the key's first retained event whose sequence is at
    /// least `sequence`, by binary search over offsets (a key's sequences grow
    /// with its offsets): about log2(partition size) direct gets.
    async fn key_offset_of(
        &self,
        slot: &PartitionSlot,
        key: &[u8],
        subject: &str,
        sequence: Sequence,
        earliest: Offset,
        last: &Positioned,
    ) -> Result<Option<Offset>> {
        let (mut low, mut high) = (earliest.0, last.offset.0);
        let mut found = None;
        while low <= high {
            let middle = low + (high - low) / 2;
            match self
                .key_message_from(slot, subject, Offset(middle), last.offset)
                .await?
            {
                Some(positioned) => {
                    check_key(slot, key, &positioned)?;
                    if positioned.message.sequence >= sequence {
                        found = Some(positioned.offset);
                        if middle == 0 {
                            break;
                        }
                        high = middle - 1;
                    } else {
                        low = positioned.offset.0 + 1;
                    }
                }
                None => break,
            }
        }
        Ok(found)
    }

    async fn read_key(
        &self,
        topic: &TopicState,
        key: &[u8],
        from: Option<Sequence>,
        direction: Direction,
        count_max: usize,
    ) -> Result<KeyHistory> {
        validate_key(key)?;
        let partition = partition_for_key(key, topic.options.partitions);
        let slot = slot(topic, partition)?;
        let subject = self.connection.names.subject(&topic.name, partition.0, key);
        let empty = |last_sequence| KeyHistory {
            events: StoredEvents::from_events(partition, Vec::new(), Offset(0)),
            last_sequence,
        };
        let Some(last) = slot.stream.last_on_subject(&subject).await? else {
            return Ok(empty(None));
        };
        check_key(slot, key, &last)?;
        let last_sequence = last.message.sequence;
        let count_max = count_max.min(limits::READ_EVENTS_COUNT_MAX);
        if count_max == 0 {
            return Ok(empty(Some(last_sequence)));
        }
        let (start, end) = match direction {
            Direction::Forwards => {
                let start = from.unwrap_or(Sequence(0));
                if start > last_sequence {
                    return Ok(empty(Some(last_sequence)));
                }
                (start, last_sequence)
            }
            Direction::Backwards => {
                let end = from.map_or(last_sequence, |from| from.min(last_sequence));
                (Sequence(end.0.saturating_sub(count_max as u64 - 1)), end)
            }
        };
        let bounds = self.bounds(topic, partition).await?;
        let Some(mut offset) = self
            .key_offset_of(slot, key, &subject, start, bounds.earliest, &last)
            .await?
        else {
            return Ok(empty(Some(last_sequence)));
        };
        let mut events = Vec::new();
        'read: while events.len() < count_max && offset <= last.offset {
            let batch = slot
                .stream
                .batch_reaching(
                    offset,
                    count_max - events.len(),
                    None,
                    Some(&subject),
                    last.offset,
                )
                .await?;
            if batch.messages.is_empty() {
                break;
            }
            for positioned in batch.messages {
                check_key(slot, key, &positioned)?;
                offset = positioned.offset.next();
                let sequence = positioned.message.sequence;
                if sequence > end {
                    break 'read;
                }
                if sequence >= start {
                    events.push(positioned.into_recorded(partition));
                }
            }
        }
        events.truncate(count_max);
        if direction == Direction::Backwards {
            events.reverse();
        }
        let next_offset = events.last().map_or(Offset(0), |event| event.offset.next());
        Ok(KeyHistory {
            events: StoredEvents::from_events(partition, events, next_offset),
            last_sequence: Some(last_sequence),
        })
    }

    /// The first offset whose timestamp is at or after `timestamp_ms`, by
    /// binary search (appends stamp non-decreasing times per partition).
    async fn offset_for_timestamp(
        &self,
        topic: &TopicState,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> Result<Offset> {
        let bounds = self.bounds(topic, partition).await?;
        let slot = slot(topic, partition)?;
        let (mut low, mut high) = (bounds.earliest.0, bounds.high_watermark.0);
        while low < high {
            let middle = low + (high - low) / 2;
            let found = slot
                .stream
                .batch_reaching(Offset(middle), 1, None, None, Offset(middle))
                .await?
                .messages
                .into_iter()
                .next();
            match found {
                Some(positioned) if positioned.message.timestamp_ms >= timestamp_ms => high = middle,
                Some(positioned) => low = positioned.offset.0 + 1,
                None => low = middle + 1,
            }
        }
        Ok(Offset(low))
    }

    async fn positions(
        &self,
        topic: &TopicState,
        committed: &std::collections::BTreeMap<PartitionId, Offset>,
    ) -> Result<Vec<CursorPosition>> {
        let mut positions = Vec::with_capacity(topic.partitions.len());
        for slot in &topic.partitions {
            let bounds = self.bounds(topic, slot.id).await?;
            let offset = committed.get(&slot.id).copied();
            let from = offset.unwrap_or(bounds.earliest).max(bounds.earliest);
            positions.push(CursorPosition {
                partition: slot.id,
                committed: offset,
                lag: bounds.high_watermark.0.saturating_sub(from.0),
            });
        }
        Ok(positions)
    }
}

fn slot(topic: &TopicState, partition: PartitionId) -> Result<&PartitionSlot> {
    topic.partitions.get(partition.0 as usize).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "partition {partition} is out of range: topic {:?} has {} partitions",
            topic.name, topic.options.partitions
        ))
    })
}

fn validate_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("key is empty".to_string()));
    }
    if key.len() > limits::KEY_SIZE_MAX {
        return Err(Error::LimitExceeded {
            what: "key size",
            value: key.len() as u64,
            max: limits::KEY_SIZE_MAX as u64,
        });
    }
    Ok(())
}

/// A message on a key's subject that holds another key: two long keys whose
/// XXH3-128 hashes collide. Refused, never served as the key's event.
fn check_key(slot: &PartitionSlot, key: &[u8], positioned: &Positioned) -> Result<()> {
    if positioned.message.key == key {
        Ok(())
    } else {
        Err(Error::Inconsistent {
            path: format!("nats:stream/{}", slot.stream.name()).into(),
            reason: format!(
                "offset {} is on the subject of another key (a key hash collision)",
                positioned.offset
            ),
        })
    }
}

/// Runs `work` on the backend as an owned future.
fn owned<T, F>(inner: &Arc<Inner>, work: impl FnOnce(Arc<Inner>) -> F) -> BoxFuture<Result<T>>
where
    F: std::future::Future<Output = Result<T>> + Send + 'static,
{
    Box::pin(work(Arc::clone(inner)))
}

impl Backend for NatsBackend {
    fn default_topic_options(&self) -> TopicOptions {
        self.inner.defaults.clone()
    }

    fn create_topic(&self, name: &str, options: TopicOptions) -> BoxFuture<Result<TopicOptions>> {
        let name = name.to_string();
        owned(&self.inner, |inner| async move {
            inner.check_open()?;
            inner.catalog.create(&name, &options).await?;
            inner.forget(&name);
            Ok(inner.topic(&name).await?.options.clone())
        })
    }

    fn describe_topic(&self, name: &str) -> BoxFuture<Result<TopicDescription>> {
        let name = name.to_string();
        owned(&self.inner, |inner| async move {
            let mut topic = inner.topic(&name).await?;
            // Options changed on another server since this one loaded them:
            // load them again (appends here keep the loaded ones until then).
            if inner.catalog.meta(&name).await?.revision != topic.revision {
                inner.forget(&name);
                topic = inner.topic(&name).await?;
            }
            let mut partitions = Vec::with_capacity(topic.partitions.len());
            for slot in &topic.partitions {
                let bounds = inner.bounds(&topic, slot.id).await?;
                partitions.push(PartitionInfo {
                    partition: slot.id,
                    earliest: bounds.earliest,
                    high_watermark: bounds.high_watermark,
                    size_bytes: bounds.size_bytes,
                    segments_count: 0,
                    keys_count: usize::try_from(bounds.keys_count).unwrap_or(usize::MAX),
                    dedup_memory_bytes: 0,
                    dedup_runs_count: 0,
                    quarantine: None,
                });
            }
            Ok(TopicDescription {
                options: topic.options.clone(),
                partitions,
                revision: topic.revision,
                changed_ms: topic.changed_ms,
            })
        })
    }

    fn update_topic(
        &self,
        name: &str,
        change: TopicChange,
        _principal: &str,
    ) -> BoxFuture<Result<TopicUpdate>> {
        // The cluster keeps no history beyond the entry's revision; the server
        // logs and audits the change with its principal.
        let name = name.to_string();
        owned(&self.inner, |inner| async move {
            inner.check_open()?;
            let update = inner.catalog.update(&name, &change).await?;
            // This server's next call loads the new options.
            inner.forget(&name);
            Ok(update)
        })
    }

    fn list_topics(&self) -> BoxFuture<Result<Vec<String>>> {
        owned(&self.inner, |inner| async move {
            inner.check_open()?;
            inner.catalog.list().await
        })
    }

    fn delete_topic(&self, name: &str) -> BoxFuture<Result<()>> {
        let name = name.to_string();
        owned(&self.inner, |inner| async move {
            inner.check_open()?;
            inner.catalog.delete(&name).await?;
            inner.forget(&name);
            inner.cursors.delete_topic(&name).await?;
            inner.producers.delete_topic(&name).await?;
            Ok(())
        })
    }

    fn append(&self, topic: &str, requests: Vec<AppendRequest>) -> BoxFuture<Result<Vec<Result<AppendAck>>>> {
        // Appends are queued before this returns, like the engine's, so that
        // calls made one after another keep their order: with the writers at
        // once for a known topic (and no earlier call still waiting for it),
        // else behind the earlier calls in the topic's queue.
        if let Err(error) = self.inner.check_open() {
            return Box::pin(std::future::ready(Err(error)));
        }
        if let Some(known) = self.inner.cached(topic).filter(|_| self.inner.queue_idle(topic)) {
            let appends: Vec<_> = requests
                .into_iter()
                .map(|request| self.inner.submit(&known, request))
                .collect();
            return Box::pin(async move { Ok(futures_util::future::join_all(appends).await) });
        }
        let answer = self.inner.enqueue(topic, requests);
        Box::pin(async move { answer.await.unwrap_or(Err(Error::Closed)) })
    }

    fn open_producer(&self, topic: &str, name: &str) -> BoxFuture<Result<(ProducerId, Epoch)>> {
        let topic = topic.to_string();
        let name = name.to_string();
        owned(&self.inner, |inner| async move {
            inner.topic_for_append(&topic).await?;
            inner.producers.open_producer(&topic, &name).await
        })
    }

    fn scan(
        &self,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        count_max: usize,
        bytes_max: u64,
        filter: &EventFilter,
    ) -> BoxFuture<Result<StoredEvents>> {
        let name = topic.to_string();
        let filter = filter.clone();
        owned(&self.inner, |inner| async move {
            let topic = inner.topic(&name).await?;
            inner
                .scan(&topic, partition, from, count_max, bytes_max, &filter)
                .await
        })
    }

    fn read_key(
        &self,
        topic: &str,
        key: &[u8],
        from: Option<Sequence>,
        direction: Direction,
        count_max: usize,
    ) -> BoxFuture<Result<KeyHistory>> {
        let name = topic.to_string();
        let key = key.to_vec();
        owned(&self.inner, |inner| async move {
            let topic = inner.topic(&name).await?;
            inner.read_key(&topic, &key, from, direction, count_max).await
        })
    }

    fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> BoxFuture<Result<Offset>> {
        let name = topic.to_string();
        owned(&self.inner, |inner| async move {
            let topic = inner.topic(&name).await?;
            inner.offset_for_timestamp(&topic, partition, timestamp_ms).await
        })
    }

    fn high_watermark(&self, topic: &str, partition: PartitionId) -> BoxFuture<Result<Offset>> {
        let name = topic.to_string();
        owned(&self.inner, |inner| async move {
            let topic = inner.topic(&name).await?;
            Ok(inner.bounds(&topic, partition).await?.high_watermark)
        })
    }

    fn earliest(&self, topic: &str, partition: PartitionId) -> BoxFuture<Result<Offset>> {
        let name = topic.to_string();
        owned(&self.inner, |inner| async move {
            let topic = inner.topic(&name).await?;
            Ok(inner.bounds(&topic, partition).await?.earliest)
        })
    }

    fn wait_past(&self, topic: &str, partition: PartitionId, after: Offset) -> BoxFuture<Result<Offset>> {
        let name = topic.to_string();
        owned(&self.inner, |inner| async move {
            let topic = inner.topic(&name).await?;
            let mut tail = inner.watch_tail(&topic, partition)?;
            // The leader's figure first: the watcher may not have started yet.
            let high_watermark = inner.bounds(&topic, partition).await?.high_watermark;
            if high_watermark > after {
                return Ok(high_watermark);
            }
            let mut closed = inner.closed.subscribe();
            tokio::select! {
                seen = tail.wait_for(|tail| *tail > after.0) => {
                    Ok(Offset(seen.map_or(after.0, |tail| *tail)))
                }
                _ = closed.wait_for(|closed| *closed) => Ok(after),
            }
        })
    }

    fn commit_cursor(
        &self,
        topic: &str,
        name: &str,
        offsets: Vec<(PartitionId, Offset)>,
        allow_backwards: bool,
    ) -> BoxFuture<Result<()>> {
        let topic_name = topic.to_string();
        let name = name.to_string();
        owned(&self.inner, |inner| async move {
            let topic = inner.topic(&topic_name).await?;
            let mut high_watermarks = HashMap::new();
            for (partition, _) in &offsets {
                if partition.0 < topic.options.partitions && !high_watermarks.contains_key(partition) {
                    let high_watermark = inner.bounds(&topic, *partition).await?.high_watermark;
                    high_watermarks.insert(*partition, high_watermark);
                }
            }
            let high_watermark =
                |partition: PartitionId| high_watermarks.get(&partition).copied().unwrap_or(Offset(0));
            inner
                .cursors
                .commit(
                    &topic_name,
                    topic.options.partitions,
                    &name,
                    &offsets,
                    allow_backwards,
                    &high_watermark,
                )
                .await
        })
    }

    fn cursor(&self, topic: &str, name: &str) -> BoxFuture<Result<Vec<CursorPosition>>> {
        let topic_name = topic.to_string();
        let name = name.to_string();
        owned(&self.inner, |inner| async move {
            let topic = inner.topic(&topic_name).await?;
            let committed = inner.cursors.get(&topic_name, &name).await?;
            inner.positions(&topic, &committed).await
        })
    }

    fn cursors(&self, topic: &str) -> BoxFuture<Result<NamedCursors>> {
        let topic_name = topic.to_string();
        owned(&self.inner, |inner| async move {
            let topic = inner.topic(&topic_name).await?;
            let mut named = Vec::new();
            for (name, committed) in inner.cursors.list(&topic_name).await? {
                let positions = inner.positions(&topic, &committed).await?;
                named.push((name, positions));
            }
            Ok(named)
        })
    }

    fn delete_cursor(&self, topic: &str, name: &str) -> BoxFuture<Result<()>> {
        let topic_name = topic.to_string();
        let name = name.to_string();
        owned(&self.inner, |inner| async move {
            inner.topic(&topic_name).await?;
            inner.cursors.delete(&topic_name, &name).await
        })
    }

    fn shutdown(&self) -> BoxFuture<()> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let _ = inner.closed.send(true);
            inner
                .topics
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        })
    }
}

//! The narrow interface between the gRPC service and a storage backend.
//!
//! The service talks only to [`Backend`]; [`EngineBackend`] implements it over
//! the embedded engine. A second backend (the planned scale-out mode on a
//! distributed log) implements the same trait and serves the same API without
//! touching the service.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use stele_engine::Log;
use stele_engine::PartitionInfo;
use stele_engine::config::TopicOptions;
use stele_engine::error::{Error, Result};
use stele_engine::event::{
    AppendAck, AppendRequest, Direction, Epoch, Offset, PartitionId, ProducerId, RecordedEvent,
};
use stele_engine::format::record::RecordView;
use stele_engine::{CursorPosition, Sequence, Topic};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A topic's settings and partitions.
#[derive(Debug, Clone)]
pub struct TopicDescription {
    /// The topic's options, as stored in its `topic.meta`.
    pub options: TopicOptions,
    /// One summary per partition, in partition order.
    pub partitions: Vec<PartitionInfo>,
}

/// Everything the service needs from storage.
pub trait Backend: Send + Sync + 'static {
    /// The options a topic gets when a request leaves them unset.
    fn default_topic_options(&self) -> TopicOptions;
    /// Creates a topic; returns the options in effect.
    ///
    /// # Errors
    /// [`Error::TopicExists`], [`Error::Config`], [`Error::InvalidArgument`] for a bad name, or I/O.
    fn create_topic(&self, name: &str, options: TopicOptions) -> Result<TopicOptions>;
    /// A topic's options and a summary of each partition.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist.
    fn describe_topic(&self, name: &str) -> Result<TopicDescription>;
    /// The names of every topic.
    fn list_topics(&self) -> Vec<String>;
    /// Deletes a topic and all its data.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, or I/O.
    fn delete_topic(&self, name: &str) -> Result<()>;
    /// Appends requests (each atomic, any keys); results in request order. The
    /// outer error is for the topic as a whole (not found).
    ///
    /// # Errors
    /// The outer [`Error::TopicNotFound`] when the topic does not exist and is not auto-created;
    /// each inner result fails as [`Topic::append_request`] does.
    fn append(&self, topic: &str, requests: Vec<AppendRequest>) -> BoxFuture<Result<Vec<Result<AppendAck>>>>;
    /// Registers an idempotent producer, or re-opens it with its epoch bumped.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist and is not auto-created, and as
    /// [`Topic::open_producer`].
    fn open_producer(&self, topic: &str, name: &str) -> Result<(ProducerId, Epoch)>;
    /// Visits a partition's events from `from` while `visit` returns true; returns
    /// the offset after the last visited event.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, and as [`Topic::scan`].
    fn scan(
        &self,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        count_max: usize,
        bytes_max: u64,
        visit: &mut dyn FnMut(&RecordView<'_>) -> bool,
    ) -> Result<Offset>;
    /// A key's history and its last sequence (`None` when the key has no events).
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, and as [`Topic::read_key`].
    fn read_key(
        &self,
        topic: &str,
        key: &[u8],
        from: Option<u64>,
        direction: Direction,
        count_max: usize,
    ) -> Result<(Vec<RecordedEvent>, Option<u64>)>;
    /// The first offset whose timestamp is at or after `timestamp_ms` (Unix milliseconds), or the
    /// high watermark when all events are older.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, and as [`Topic::offset_for_timestamp`].
    fn offset_for_timestamp(&self, topic: &str, partition: PartitionId, timestamp_ms: i64) -> Result<Offset>;
    /// One past the newest acknowledged offset of a partition.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, or [`Error::InvalidArgument`] for a
    /// partition out of range.
    fn high_watermark(&self, topic: &str, partition: PartitionId) -> Result<Offset>;
    /// The oldest retained offset of a partition.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, or [`Error::InvalidArgument`] for a
    /// partition out of range.
    fn earliest(&self, topic: &str, partition: PartitionId) -> Result<Offset>;
    /// Resolves to the high watermark once it passes `after`, or the backend closes.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, or [`Error::InvalidArgument`] for a
    /// partition out of range.
    fn wait_past(&self, topic: &str, partition: PartitionId, after: Offset) -> Result<BoxFuture<Offset>>;
    /// Commits a named cursor's next offsets for the given partitions, creating the cursor if needed.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, and as [`Topic::commit_cursor`].
    fn commit_cursor(
        &self,
        topic: &str,
        name: &str,
        offsets: &[(PartitionId, Offset)],
        allow_backwards: bool,
    ) -> Result<()>;
    /// A cursor's position and lag in every partition.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, or [`Error::CursorNotFound`].
    fn cursor(&self, topic: &str, name: &str) -> Result<Vec<CursorPosition>>;
    /// Every cursor of a topic with its positions.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist.
    fn cursors(&self, topic: &str) -> Result<Vec<(String, Vec<CursorPosition>)>>;
    /// Deletes a named cursor.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, [`Error::CursorNotFound`], or I/O.
    fn delete_cursor(&self, topic: &str, name: &str) -> Result<()>;
    /// Called when a subscription to `topic` starts; the subscription holds the
    /// returned value until it ends. A decorator (metrics) counts open
    /// subscriptions with it; the default holds nothing.
    fn subscription_started(&self, _topic: &str) -> Box<dyn Send + Sync> {
        Box::new(())
    }
}

/// The embedded engine as a backend.
pub struct EngineBackend {
    log: Arc<Log>,
    defaults: TopicOptions,
    auto_create: bool,
}

impl EngineBackend {
    /// A backend over `log`. With `auto_create`, appending to an unknown topic
    /// creates it with `defaults`.
    pub fn new(log: Arc<Log>, defaults: TopicOptions, auto_create: bool) -> EngineBackend {
        EngineBackend {
            log,
            defaults,
            auto_create,
        }
    }

    /// The log behind the backend.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    fn topic(&self, name: &str) -> Result<Topic> {
        self.log.topic(name)
    }

    fn topic_for_append(&self, name: &str) -> Result<Topic> {
        match self.log.topic(name) {
            Err(Error::TopicNotFound(_)) if self.auto_create => {
                stele_engine::validate_topic_name(name)?;
                match self.log.create_topic(name, self.defaults.clone()) {
                    Err(Error::TopicExists(_)) => self.log.topic(name),
                    other => other,
                }
            }
            other => other,
        }
    }
}

/// Submits requests to a topic and resolves when all are acknowledged.
pub fn append_async(topic: &Topic, requests: Vec<AppendRequest>) -> BoxFuture<Vec<Result<AppendAck>>> {
    type Shared = (
        Vec<Option<Result<AppendAck>>>,
        usize,
        Option<tokio::sync::oneshot::Sender<()>>,
    );
    let count = requests.len();
    if count == 1 {
        // One request (every pipelined single-event append): its result goes
        // straight through the channel, without the shared slots below.
        let (sender, receiver) = tokio::sync::oneshot::channel();
        if let Some(request) = requests.into_iter().next() {
            topic.submit(request, move |result| {
                let _ = sender.send(result);
            });
        }
        return Box::pin(async move { vec![receiver.await.unwrap_or(Err(Error::Closed))] });
    }
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let shared: Arc<Mutex<Shared>> = Arc::new(Mutex::new((
        (0..count).map(|_| None).collect(),
        count,
        Some(sender),
    )));
    if count == 0 {
        return Box::pin(async { Vec::new() });
    }
    for (index, request) in requests.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        topic.submit(request, move |result| {
            let mut guard = shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            guard.0[index] = Some(result);
            guard.1 -= 1;
            if guard.1 == 0
                && let Some(sender) = guard.2.take()
            {
                let _ = sender.send(());
            }
        });
    }
    Box::pin(async move {
        let _ = receiver.await;
        let mut guard = shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::take(&mut guard.0)
            .into_iter()
            .map(|result| result.unwrap_or(Err(Error::Closed)))
            .collect()
    })
}

impl Backend for EngineBackend {
    fn default_topic_options(&self) -> TopicOptions {
        self.defaults.clone()
    }

    fn create_topic(&self, name: &str, options: TopicOptions) -> Result<TopicOptions> {
        Ok(self.log.create_topic(name, options)?.options().clone())
    }

    fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let topic = self.topic(name)?;
        Ok(TopicDescription {
            options: topic.options().clone(),
            partitions: topic.partition_infos(),
        })
    }

    fn list_topics(&self) -> Vec<String> {
        self.log.topics()
    }

    fn delete_topic(&self, name: &str) -> Result<()> {
        self.log.delete_topic(name)
    }

    fn append(&self, topic: &str, requests: Vec<AppendRequest>) -> BoxFuture<Result<Vec<Result<AppendAck>>>> {
        match self.topic_for_append(topic) {
            Ok(handle) => {
                let future = append_async(&handle, requests);
                let log = Arc::clone(&self.log);
                Box::pin(async move {
                    let mut results = future.await;
                    // An append that lost a race with the topic's deletion found
                    // its partition closed: for the caller the topic is gone
                    // (NOT_FOUND), not the server (UNAVAILABLE) nor a fault.
                    if results.iter().any(|result| matches!(result, Err(Error::Closed)))
                        && !log.is_closed()
                        && matches!(log.topic(handle.name()), Err(Error::TopicNotFound(_)))
                    {
                        for result in &mut results {
                            if matches!(result, Err(Error::Closed)) {
                                *result = Err(Error::TopicNotFound(handle.name().to_string()));
                            }
                        }
                    }
                    Ok(results)
                })
            }
            Err(error) => Box::pin(async move { Err(error) }),
        }
    }

    fn open_producer(&self, topic: &str, name: &str) -> Result<(ProducerId, Epoch)> {
        self.topic_for_append(topic)?.open_producer(name)
    }

    fn scan(
        &self,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        count_max: usize,
        bytes_max: u64,
        visit: &mut dyn FnMut(&RecordView<'_>) -> bool,
    ) -> Result<Offset> {
        self.topic(topic)?
            .scan(partition, from, count_max, bytes_max, visit)
    }

    fn read_key(
        &self,
        topic: &str,
        key: &[u8],
        from: Option<u64>,
        direction: Direction,
        count_max: usize,
    ) -> Result<(Vec<RecordedEvent>, Option<u64>)> {
        let topic = self.topic(topic)?;
        let last = topic.key_sequence(key)?;
        Ok((
            topic.read_key(key, from.map(Sequence), direction, count_max)?,
            last.map(|sequence| sequence.0),
        ))
    }

    fn offset_for_timestamp(&self, topic: &str, partition: PartitionId, timestamp_ms: i64) -> Result<Offset> {
        self.topic(topic)?.offset_for_timestamp(partition, timestamp_ms)
    }

    fn high_watermark(&self, topic: &str, partition: PartitionId) -> Result<Offset> {
        self.topic(topic)?.high_watermark(partition)
    }

    fn earliest(&self, topic: &str, partition: PartitionId) -> Result<Offset> {
        let topic = self.topic(topic)?;
        topic
            .partition_infos()
            .get(partition.0 as usize)
            .map(|info| info.earliest)
            .ok_or_else(|| Error::InvalidArgument(format!("partition {partition} out of range")))
    }

    fn wait_past(&self, topic: &str, partition: PartitionId, after: Offset) -> Result<BoxFuture<Offset>> {
        let future = self.topic(topic)?.wait_past(partition, after)?;
        Ok(Box::pin(future))
    }

    fn commit_cursor(
        &self,
        topic: &str,
        name: &str,
        offsets: &[(PartitionId, Offset)],
        allow_backwards: bool,
    ) -> Result<()> {
        self.topic(topic)?.commit_cursor(name, offsets, allow_backwards)
    }

    fn cursor(&self, topic: &str, name: &str) -> Result<Vec<CursorPosition>> {
        self.topic(topic)?.cursor(name)
    }

    fn cursors(&self, topic: &str) -> Result<Vec<(String, Vec<CursorPosition>)>> {
        Ok(self.topic(topic)?.cursors())
    }

    fn delete_cursor(&self, topic: &str, name: &str) -> Result<()> {
        self.topic(topic)?.delete_cursor(name)
    }
}

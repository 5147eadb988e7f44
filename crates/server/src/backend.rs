//! The narrow interface between the gRPC service and a storage backend.
//!
//! The service talks only to [`Backend`]; [`EngineBackend`] implements it over
//! the embedded engine. A second backend (the planned scale-out mode on a
//! distributed log) implements the same trait and serves the same API without
//! touching the service.
//!
//! Every method but the two local hooks returns an owned future, and reads
//! answer with owned batches of events ([`StoredEvents`], borrowed one at a time
//! as [`EventRef`](stele_engine::EventRef)), never with the disk format.
//! Invariant: [`EngineBackend`] runs nothing that can block (an fdatasync, a
//! directory change, a page fault on a mapped segment) on the async runtime: such
//! work goes to tokio's blocking pool, and appends complete through the
//! engine's own completions (`Topic::submit`), with no extra hop.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use stele_engine::Log;
use stele_engine::PartitionInfo;
use stele_engine::config::{TopicChange, TopicOptions};
use stele_engine::error::{Error, Result};
use stele_engine::event::{AppendAck, AppendRequest, Direction, Epoch, Offset, PartitionId, ProducerId};
use stele_engine::{CursorPosition, EventFilter, Sequence, StoredEvents, Topic, TopicUpdate};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A topic's settings and partitions.
#[derive(Debug, Clone)]
pub struct TopicDescription {
    /// The topic's options, as stored in its `topic.meta`.
    pub options: TopicOptions,
    /// One summary per partition, in partition order.
    pub partitions: Vec<PartitionInfo>,
    /// The topic's revision: 0 when its options never changed, then one more
    /// per change ([`Backend::update_topic`]).
    pub revision: u64,
    /// When its options last changed, Unix ms; 0 when never.
    pub changed_ms: i64,
}

/// Every cursor of a topic, by name, with its positions.
pub type NamedCursors = Vec<(String, Vec<CursorPosition>)>;

/// A key's events and its last sequence.
#[derive(Debug)]
pub struct KeyHistory {
    /// The events read, in the direction asked.
    pub events: StoredEvents,
    /// The key's last sequence; `None` when the key has no events.
    pub last_sequence: Option<Sequence>,
}

/// What a running subscription reports to its backend (metrics count with it).
pub trait SubscriptionMeter: Send + Sync {
    /// `events` were sent to the subscriber.
    fn sent(&self, _events: usize) {}
}

impl SubscriptionMeter for () {}

/// Everything the service needs from storage.
///
/// The trait is object safe (`Arc<dyn Backend>`); every future it returns is
/// owned (`'static`) and borrows nothing from the call.
pub trait Backend: Send + Sync + 'static {
    /// The options a topic gets when a request leaves them unset (the backend's
    /// configuration, known locally).
    fn default_topic_options(&self) -> TopicOptions;
    /// Creates a topic; resolves to the options in effect.
    ///
    /// # Errors
    /// [`Error::TopicExists`], [`Error::Config`], [`Error::InvalidArgument`] for a bad name, or I/O.
    fn create_topic(&self, name: &str, options: TopicOptions) -> BoxFuture<Result<TopicOptions>>;
    /// A topic's options and a summary of each partition.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist.
    fn describe_topic(&self, name: &str) -> BoxFuture<Result<TopicDescription>>;
    /// The names of every topic.
    ///
    /// # Errors
    /// A backend that cannot list (the engine always can).
    fn list_topics(&self) -> BoxFuture<Result<Vec<String>>>;
    /// Deletes a topic and all its data.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, or I/O.
    fn delete_topic(&self, name: &str) -> BoxFuture<Result<()>>;
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
    fn open_producer(&self, topic: &str, name: &str) -> BoxFuture<Result<(ProducerId, Epoch)>>;
    /// A partition's events from `from` that pass `filter`: at most `count_max`
    /// events and about `bytes_max` bytes examined (at least one event when one
    /// exists); the batch's `next_offset` is where the next scan starts.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, and as [`Topic::scan_events`].
    fn scan(
        &self,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        count_max: usize,
        bytes_max: u64,
        filter: &EventFilter,
    ) -> BoxFuture<Result<StoredEvents>>;
    /// A key's history and its last sequence.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, and as [`Topic::read_key`].
    fn read_key(
        &self,
        topic: &str,
        key: &[u8],
        from: Option<Sequence>,
        direction: Direction,
        count_max: usize,
    ) -> BoxFuture<Result<KeyHistory>>;
    /// The first offset whose timestamp is at or after `timestamp_ms` (Unix milliseconds), or the
    /// high watermark when all events are older.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, and as [`Topic::offset_for_timestamp`].
    fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> BoxFuture<Result<Offset>>;
    /// One past the newest acknowledged offset of a partition.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, or [`Error::InvalidArgument`] for a
    /// partition out of range.
    fn high_watermark(&self, topic: &str, partition: PartitionId) -> BoxFuture<Result<Offset>>;
    /// The oldest retained offset of a partition.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, or [`Error::InvalidArgument`] for a
    /// partition out of range.
    fn earliest(&self, topic: &str, partition: PartitionId) -> BoxFuture<Result<Offset>>;
    /// Resolves to the high watermark once it passes `after`, or when the
    /// backend closes (to a high watermark not past `after`).
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, or [`Error::InvalidArgument`] for a
    /// partition out of range.
    fn wait_past(&self, topic: &str, partition: PartitionId, after: Offset) -> BoxFuture<Result<Offset>>;
    /// Commits a named cursor's next offsets for the given partitions, creating
    /// the cursor if needed; resolves once the commit is durable.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, and as [`Topic::commit_cursor`].
    fn commit_cursor(
        &self,
        topic: &str,
        name: &str,
        offsets: Vec<(PartitionId, Offset)>,
        allow_backwards: bool,
    ) -> BoxFuture<Result<()>>;
    /// A cursor's position and lag in every partition.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, or [`Error::CursorNotFound`].
    fn cursor(&self, topic: &str, name: &str) -> BoxFuture<Result<Vec<CursorPosition>>>;
    /// Every cursor of a topic with its positions.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist.
    fn cursors(&self, topic: &str) -> BoxFuture<Result<NamedCursors>>;
    /// Deletes a named cursor.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`] when the topic does not exist, [`Error::CursorNotFound`], or I/O.
    fn delete_cursor(&self, topic: &str, name: &str) -> BoxFuture<Result<()>>;
    /// Called when a subscription to `topic` starts; the subscription holds the
    /// returned meter until it ends and tells it of the events it sends. A
    /// decorator (metrics) counts open subscriptions and their events with it;
    /// the default counts nothing.
    fn subscription_started(&self, _topic: &str) -> Box<dyn SubscriptionMeter> {
        Box::new(())
    }
    /// Stops taking work and waits for work that outlives the call that started
    /// it (the engine's blocking work runs to its end even when its call is
    /// cancelled); the server calls it after the last call finished and before
    /// the storage closes. Later calls answer [`Error::Closed`].
    fn shutdown(&self) -> BoxFuture<()> {
        ready(())
    }
    /// Changes a topic's options while it serves (the fields `change` sets);
    /// `principal` is recorded with the change. Resolves to the options before
    /// and after, and the topic's revision.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`]; [`Error::InvalidArgument`] for a change that
    /// sets nothing; [`Error::Config`] or [`Error::LimitExceeded`] for bad
    /// values (nothing changes); a backend that cannot apply an option live
    /// refuses it (the NATS backend: durability, segment size); I/O.
    fn update_topic(
        &self,
        name: &str,
        change: TopicChange,
        principal: &str,
    ) -> BoxFuture<Result<TopicUpdate>>;
}

/// Runs `work` on tokio's blocking pool once the future is first polled.
///
/// A pool shutting down (the runtime is going away) answers [`Error::Closed`];
/// a panic in `work` (a bug) resumes on the awaiting task.
pub fn blocking<T, F>(work: F) -> BoxFuture<Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    Box::pin(async move {
        match tokio::task::spawn_blocking(work).await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(Error::Closed),
        }
    })
}

/// A future already resolved to `value`.
fn ready<T: Send + 'static>(value: T) -> BoxFuture<T> {
    Box::pin(std::future::ready(value))
}

/// The embedded engine as a backend.
pub struct EngineBackend {
    log: Arc<Log>,
    defaults: TopicOptions,
    auto_create: bool,
    running: Arc<Running>,
}

/// The backend's blocking work still running, so that shutdown can wait for it
/// before the log closes (and its directory lock is released).
#[derive(Debug, Default)]
struct Running {
    state: Mutex<RunningState>,
    idle: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct RunningState {
    count: usize,
    closed: bool,
}

impl Running {
    fn state(&self) -> std::sync::MutexGuard<'_, RunningState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Counts one piece of blocking work from its start to its end (dropped with
/// the work's closure, whether it ran or the pool refused it).
struct RunningWork(Arc<Running>);

impl Drop for RunningWork {
    fn drop(&mut self) {
        let mut state = self.0.state();
        assert!(state.count > 0, "blocking work ends that never started");
        state.count -= 1;
        if state.count == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

impl EngineBackend {
    /// A backend over `log`. With `auto_create`, appending to an unknown topic
    /// creates it with `defaults`.
    pub fn new(log: Arc<Log>, defaults: TopicOptions, auto_create: bool) -> EngineBackend {
        EngineBackend {
            log,
            defaults,
            auto_create,
            running: Arc::default(),
        }
    }

    /// The log behind the backend.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// [`blocking`], counted in `running` from start to end, and refused with
    /// [`Error::Closed`] once [`Backend::shutdown`] began.
    fn blocking<T, F>(&self, work: F) -> BoxFuture<Result<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let running = Arc::clone(&self.running);
        Box::pin(async move {
            {
                let mut state = running.state();
                if state.closed {
                    return Err(Error::Closed);
                }
                state.count += 1;
            }
            let counted = RunningWork(running);
            blocking(move || {
                let _counted = counted;
                work()
            })
            .await
        })
    }

    fn topic(&self, name: &str) -> Result<Topic> {
        self.log.topic(name)
    }

    /// A second handle on the same log and settings, for work moved off the runtime.
    fn clone_handle(&self) -> EngineBackend {
        EngineBackend {
            log: Arc::clone(&self.log),
            defaults: self.defaults.clone(),
            auto_create: self.auto_create,
            running: Arc::clone(&self.running),
        }
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
    // One write (or worker wake-up) per partition for the whole call.
    stele_engine::coalesce_writes(|| {
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
    });
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

    fn create_topic(&self, name: &str, options: TopicOptions) -> BoxFuture<Result<TopicOptions>> {
        // Creating a topic makes and syncs files and directories.
        let log = Arc::clone(&self.log);
        let name = name.to_string();
        self.blocking(move || Ok(log.create_topic(&name, options)?.options()))
    }

    fn describe_topic(&self, name: &str) -> BoxFuture<Result<TopicDescription>> {
        // A partition's summary takes its state lock, which housekeeping can
        // hold for a while.
        let handle = match self.topic(name) {
            Ok(handle) => handle,
            Err(error) => return ready(Err(error)),
        };
        self.blocking(move || {
            let (revision, changed_ms) = handle.revision();
            Ok(TopicDescription {
                options: handle.options(),
                partitions: handle.partition_infos(),
                revision,
                changed_ms,
            })
        })
    }

    fn list_topics(&self) -> BoxFuture<Result<Vec<String>>> {
        ready(Ok(self.log.topics()))
    }

    fn update_topic(
        &self,
        name: &str,
        change: TopicChange,
        principal: &str,
    ) -> BoxFuture<Result<TopicUpdate>> {
        // A change syncs the change journal and replaces `topic.meta`.
        let log = Arc::clone(&self.log);
        let name = name.to_string();
        let principal = principal.to_string();
        self.blocking(move || log.update_topic(&name, &change, &principal))
    }

    fn delete_topic(&self, name: &str) -> BoxFuture<Result<()>> {
        // Waits for the topic's partitions to stop and removes its directory.
        let log = Arc::clone(&self.log);
        let name = name.to_string();
        self.blocking(move || log.delete_topic(&name))
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
            Err(error) => ready(Err(error)),
        }
    }

    fn open_producer(&self, topic: &str, name: &str) -> BoxFuture<Result<(ProducerId, Epoch)>> {
        // A synced journal write (and perhaps a topic's creation).
        let backend = self.clone_handle();
        let topic = topic.to_string();
        let name = name.to_string();
        self.blocking(move || backend.topic_for_append(&topic)?.open_producer(&name))
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
        // Reading mapped segments can fault pages in from disk.
        let handle = match self.topic(topic) {
            Ok(handle) => handle,
            Err(error) => return ready(Err(error)),
        };
        let filter = filter.clone();
        self.blocking(move || handle.scan_events(partition, from, count_max, bytes_max, &filter))
    }

    fn read_key(
        &self,
        topic: &str,
        key: &[u8],
        from: Option<Sequence>,
        direction: Direction,
        count_max: usize,
    ) -> BoxFuture<Result<KeyHistory>> {
        let handle = match self.topic(topic) {
            Ok(handle) => handle,
            Err(error) => return ready(Err(error)),
        };
        let key = key.to_vec();
        self.blocking(move || {
            let last_sequence = handle.key_sequence(&key)?;
            let events = handle.read_key_events(&key, from, direction, count_max)?;
            Ok(KeyHistory {
                events,
                last_sequence,
            })
        })
    }

    fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> BoxFuture<Result<Offset>> {
        // Reads mapped frames.
        let handle = match self.topic(topic) {
            Ok(handle) => handle,
            Err(error) => return ready(Err(error)),
        };
        self.blocking(move || handle.offset_for_timestamp(partition, timestamp_ms))
    }

    fn high_watermark(&self, topic: &str, partition: PartitionId) -> BoxFuture<Result<Offset>> {
        ready(
            self.topic(topic)
                .and_then(|topic| topic.high_watermark(partition)),
        )
    }

    fn earliest(&self, topic: &str, partition: PartitionId) -> BoxFuture<Result<Offset>> {
        ready(self.topic(topic).and_then(|topic| topic.earliest(partition)))
    }

    fn wait_past(&self, topic: &str, partition: PartitionId, after: Offset) -> BoxFuture<Result<Offset>> {
        match self
            .topic(topic)
            .and_then(|topic| topic.wait_past(partition, after))
        {
            Ok(future) => Box::pin(async move { Ok(future.await) }),
            Err(error) => ready(Err(error)),
        }
    }

    fn commit_cursor(
        &self,
        topic: &str,
        name: &str,
        offsets: Vec<(PartitionId, Offset)>,
        allow_backwards: bool,
    ) -> BoxFuture<Result<()>> {
        // A synced journal write.
        let handle = match self.topic(topic) {
            Ok(handle) => handle,
            Err(error) => return ready(Err(error)),
        };
        let name = name.to_string();
        self.blocking(move || handle.commit_cursor(&name, &offsets, allow_backwards))
    }

    fn cursor(&self, topic: &str, name: &str) -> BoxFuture<Result<Vec<CursorPosition>>> {
        ready(self.topic(topic).and_then(|topic| topic.cursor(name)))
    }

    fn cursors(&self, topic: &str) -> BoxFuture<Result<NamedCursors>> {
        ready(self.topic(topic).map(|topic| topic.cursors()))
    }

    fn delete_cursor(&self, topic: &str, name: &str) -> BoxFuture<Result<()>> {
        // A synced journal write.
        let handle = match self.topic(topic) {
            Ok(handle) => handle,
            Err(error) => return ready(Err(error)),
        };
        let name = name.to_string();
        self.blocking(move || handle.delete_cursor(&name))
    }

    fn shutdown(&self) -> BoxFuture<()> {
        let running = Arc::clone(&self.running);
        Box::pin(async move {
            running.state().closed = true;
            // Bounded: no work starts once closed, so the count only falls.
            loop {
                let idle = running.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if running.state().count == 0 {
                    return;
                }
                idle.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::task::{Context, Poll, Waker};

    use stele_engine::LogOptions;

    use super::*;

    fn poll_once<T>(future: &mut BoxFuture<T>) -> Poll<T> {
        future.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_waits_for_blocking_work_of_cancelled_calls_then_refuses_more() {
        // Goal: blocking work keeps running after its call is dropped (as a
        // cursor commit's fdatasync would); shutdown returns only once it ended,
        // and work asked for afterwards is refused, so the log closes last.
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = Arc::new(Log::open(dir.path(), LogOptions::default()).expect("open"));
        let backend = EngineBackend::new(log, TopicOptions::default(), false);
        let (started_sender, started) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let mut call = backend.blocking(move || {
            started_sender.send(()).expect("report the start");
            released.recv().expect("wait for the release");
            Ok(())
        });
        assert!(
            poll_once(&mut call).is_pending(),
            "the work waits for its release"
        );
        started.recv().expect("the work started");
        drop(call);
        let mut shutdown = backend.shutdown();
        assert!(
            poll_once(&mut shutdown).is_pending(),
            "shutdown finished while the work of a cancelled call still ran"
        );
        release.send(()).expect("release the work");
        shutdown.await;
        let refused = backend.blocking(|| Ok(())).await;
        assert!(matches!(refused, Err(Error::Closed)), "{refused:?}");
    }
}

//! One endpoint's delivery loop: read events through the [`Backend`](crate::backend::Backend), deliver
//! them with per-key ordering and bounded concurrency, retry, dead-letter, and
//! commit the endpoint's cursor.
//!
//! Invariant: the next event of a key (within a stream) is not started before the
//! previous one finished (delivered or dead-lettered).
//! Invariant: a committed cursor offset is never past the lowest offset of its
//! partition not yet finished, so a restart re-delivers at most the unfinished
//! events and those finished since the last commit (at most `COMMIT_INTERVAL` ago
//! while busy; an idle loop commits at once).
//! Invariant: at most `WEBHOOK_BUFFERED_EVENTS_COUNT_MAX` events and about
//! `WEBHOOK_BUFFERED_SIZE_BYTES_MAX` payload bytes are held per endpoint.
//!
//! Two streams feed the loop: the endpoint's topic (cursor `webhook.<name>`) and,
//! after a redrive, its dead letters up to the redrive mark (cursor
//! `webhook.<name>.redrive` on the dead-letter topic).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stele_engine::Sequence;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::body::render;
use super::breaker::Admission;
use super::policy::{RetryPolicy, Verdict};
use super::signature::{message_id, sign};
use super::{EndpointStatus, Shared, dead_letter_headers as dl};
use crate::backend::BoxFuture;
use stele_engine::error::{Error, Result};
use stele_engine::event::{AppendRequest, Event, Offset, PartitionId, RecordedEvent};
use stele_engine::limits::{WEBHOOK_BUFFERED_EVENTS_COUNT_MAX, WEBHOOK_BUFFERED_SIZE_BYTES_MAX};
use stele_engine::webhook::Endpoint;
use stele_engine::{EventFilter, EventRef};

/// How often an idle loop refreshes its lag gauge.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// The most often a busy loop commits its cursors.
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// How long a stopping loop waits for its in-flight deliveries to finish.
const STOP_DRAIN: Duration = Duration::from_millis(500);
/// The pause before appending a dead letter again after a failure.
const DEAD_LETTER_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The cursor name of an endpoint's main stream.
pub fn cursor_name(endpoint: &str) -> String {
    format!("webhook.{endpoint}")
}

/// The cursor name of an endpoint's redrive stream.
pub fn redrive_cursor_name(endpoint: &str) -> String {
    format!("webhook.{endpoint}.redrive")
}

/// One event to deliver, with where it was read (its stream position) and what
/// the receiver is told (its original topic and event).
#[derive(Debug, Clone)]
pub(super) struct Job {
    stream: usize,
    lane: u32,
    position: u64,
    topic: String,
    /// The event as the receiver sees it (for a redriven dead letter: its
    /// original partition, offset, sequence and time, without `stele-dl-*`).
    event: RecordedEvent,
    webhook_id: String,
}

impl Job {
    /// The bytes this job holds, for the buffer bound.
    fn size(&self) -> u64 {
        let headers: usize = self
            .event
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum();
        (self.event.payload.len() + self.event.key.len() + headers) as u64
    }

    /// A job for an event of the endpoint's topic.
    fn from_event(stream: usize, topic: &str, event: &EventRef<'_>) -> Job {
        Job {
            stream,
            lane: event.partition.0,
            position: event.offset.0,
            topic: topic.to_string(),
            event: event.to_recorded(),
            webhook_id: message_id(
                topic,
                event.partition.0,
                event.offset.0,
                event.key,
                event.idempotency_id,
            ),
        }
    }

    /// A job for a dead letter being redriven: the original event's fields come
    /// from its `stele-dl-*` headers.
    fn from_dead_letter(stream: usize, letter: &EventRef<'_>) -> Option<Job> {
        let text = |name: &str| {
            letter
                .headers
                .get(name)
                .and_then(|value| std::str::from_utf8(value).ok())
        };
        let number = |name: &str| text(name).and_then(|value| value.parse::<i64>().ok());
        let mut event = letter.to_recorded();
        event.partition = PartitionId(u32::try_from(number(dl::PARTITION)?).ok()?);
        event.offset = Offset(u64::try_from(number(dl::OFFSET)?).ok()?);
        event.sequence = Sequence(u64::try_from(number(dl::SEQUENCE)?).ok()?);
        event.timestamp_ms = number(dl::TIMESTAMP_MS)?;
        event.headers.retain(|(name, _)| !name.starts_with(dl::PREFIX));
        // The dead letter's own id is not the original's.
        event.idempotency_id = None;
        event.producer = None;
        Some(Job {
            stream,
            lane: letter.partition.0,
            position: letter.offset.0,
            topic: text(dl::TOPIC)?.to_string(),
            event,
            webhook_id: text(dl::WEBHOOK_ID)?.to_string(),
        })
    }
}

/// The header value naming the endpoint of a dead letter, if any.
pub(super) fn dead_letter_endpoint<'a>(letter: &EventRef<'a>) -> Option<&'a [u8]> {
    letter.headers.get(dl::ENDPOINT)
}

/// A partition of a stream.
#[derive(Debug)]
struct Lane {
    /// The next offset to read.
    next: u64,
    /// The offset last committed (or found at start).
    committed: u64,
    /// Offsets read and not finished.
    pending: BTreeSet<u64>,
    /// Read nothing at or past this offset (the redrive mark).
    until: Option<u64>,
}

impl Lane {
    fn low_watermark(&self) -> u64 {
        self.pending.first().copied().unwrap_or(self.next)
    }

    fn exhausted(&self) -> bool {
        self.until.is_some_and(|until| self.next >= until)
    }
}

#[derive(Debug)]
struct Stream {
    topic: String,
    cursor: String,
    lanes: Vec<Lane>,
    /// Whether events come from the dead-letter topic (redrive).
    redrive: bool,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    Delivered,
    DeadLettered,
}

/// The key of the per-key order: stream, lane, key bytes.
type OrderKey = (usize, u32, Vec<u8>);

/// The state of one running loop.
struct Loop {
    shared: Arc<Shared>,
    endpoint: Arc<Endpoint>,
    status: Arc<EndpointStatus>,
    streams: Vec<Stream>,
    /// The endpoint's filter, applied to its topic's events (not to dead letters).
    filter: EventFilter,
    /// Per key: its jobs in order; the head is in flight or runnable.
    queues: HashMap<OrderKey, VecDeque<Job>>,
    /// Keys whose head job may start.
    runnable: VecDeque<OrderKey>,
    buffered_count: usize,
    buffered_size: u64,
    tasks: JoinSet<(OrderKey, Finish)>,
    /// When the cursors were last committed.
    committed_at: Instant,
}

impl Drop for Loop {
    fn drop(&mut self) {
        // The loop's deliveries are abandoned with it (a restart sends them again).
        if !self.tasks.is_empty() {
            self.shared.observer.in_flight(&self.endpoint.name, 0);
        }
    }
}

/// Runs an endpoint's delivery until `stop` turns true.
///
/// # Errors
/// Backend errors reading or committing (the supervisor restarts the loop).
pub(super) async fn run(
    shared: Arc<Shared>,
    endpoint: Arc<Endpoint>,
    status: Arc<EndpointStatus>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let mut streams =
        vec![open_stream(&shared, &endpoint.topic, cursor_name(&endpoint.name), None, false).await?];
    if endpoint.redrive_until.iter().any(|(_, until)| *until > 0) {
        streams.push(
            open_stream(
                &shared,
                &endpoint.settings.dead_letter_topic,
                redrive_cursor_name(&endpoint.name),
                Some(&endpoint.redrive_until),
                true,
            )
            .await?,
        );
    }
    let filter = EventFilter::new(endpoint.event_types.iter().cloned(), endpoint.key_prefix.clone());
    let mut state = Loop {
        shared,
        endpoint,
        status,
        streams,
        filter,
        queues: HashMap::new(),
        runnable: VecDeque::new(),
        buffered_count: 0,
        buffered_size: 0,
        tasks: JoinSet::new(),
        committed_at: Instant::now(),
    };
    loop {
        if *stop.borrow() {
            return state.stop().await;
        }
        let read = state.fill().await?;
        state.start_runnable();
        // A cursor commit is a synced journal write (the backend runs it off the
        // runtime's threads, but this loop waits for it): while deliveries are in
        // flight, commit at most every `COMMIT_INTERVAL` (a crash re-delivers
        // what finished since, which at-least-once allows); when the loop is
        // idle, commit at once so the cursor and lag settle.
        if state.tasks.is_empty() || state.committed_at.elapsed() >= COMMIT_INTERVAL {
            state.commit().await?;
            state.committed_at = Instant::now();
        }
        if read && state.has_room() {
            tokio::task::yield_now().await;
            continue;
        }
        let mut waits: Vec<BoxFuture<Result<Offset>>> = Vec::new();
        if state.has_room() {
            for stream in &state.streams {
                for (index, lane) in stream.lanes.iter().enumerate() {
                    if !lane.exhausted() {
                        waits.push(state.shared.backend.wait_past(
                            &stream.topic,
                            PartitionId(index as u32),
                            Offset(lane.next),
                        ));
                    }
                }
            }
        }
        let has_tasks = !state.tasks.is_empty();
        tokio::select! {
            _ = async { let _ = stop.wait_for(|stop| *stop).await; } => return state.stop().await,
            Some(joined) = state.tasks.join_next(), if has_tasks => {
                state.finished(joined);
                while let Some(joined) = state.tasks.try_join_next() {
                    state.finished(joined);
                }
                state.shared.observer.in_flight(&state.endpoint.name, state.tasks.len());
            }
            (_, woken) = crate::subscription::any(&mut waits), if !waits.is_empty() => {
                woken?;
            }
            _ = tokio::time::sleep(IDLE_TICK) => {}
        }
    }
}

async fn open_stream(
    shared: &Shared,
    topic: &str,
    cursor: String,
    until: Option<&[(u32, u64)]>,
    redrive: bool,
) -> Result<Stream> {
    let positions = match shared.backend.cursor(topic, &cursor).await {
        Ok(positions) => positions.into_iter().map(|position| position.committed).collect(),
        Err(Error::CursorNotFound(_)) => {
            let count = shared.backend.describe_topic(topic).await?.partitions.len();
            vec![None; count]
        }
        Err(error) => return Err(error),
    };
    let mut lanes = Vec::new();
    for (index, committed) in positions.into_iter().enumerate() {
        let partition = PartitionId(index as u32);
        let start = match committed {
            Some(offset) => offset.0,
            None => shared.backend.earliest(topic, partition).await?.0,
        };
        let until = until.map(|marks| {
            marks
                .iter()
                .find(|(mark_partition, _)| *mark_partition == partition.0)
                .map_or(0, |(_, offset)| *offset)
        });
        lanes.push(Lane {
            next: start,
            committed: start,
            pending: BTreeSet::new(),
            until,
        });
    }
    Ok(Stream {
        topic: topic.to_string(),
        cursor,
        lanes,
        redrive,
    })
}

impl Loop {
    fn has_room(&self) -> bool {
        self.buffered_count < WEBHOOK_BUFFERED_EVENTS_COUNT_MAX
            && self.buffered_size < WEBHOOK_BUFFERED_SIZE_BYTES_MAX
    }

    /// Reads what fits into the buffer; returns whether anything was read.
    async fn fill(&mut self) -> Result<bool> {
        let mut read_any = false;
        for stream_index in 0..self.streams.len() {
            let lanes_count = self.streams[stream_index].lanes.len();
            for lane_index in 0..lanes_count {
                if !self.has_room() {
                    return Ok(read_any);
                }
                read_any |= self.fill_lane(stream_index, lane_index).await?;
            }
        }
        Ok(read_any)
    }

    async fn fill_lane(&mut self, stream_index: usize, lane_index: usize) -> Result<bool> {
        let backend = Arc::clone(&self.shared.backend);
        let stream = &self.streams[stream_index];
        let lane = &stream.lanes[lane_index];
        let partition = PartitionId(lane_index as u32);
        let high_watermark = backend.high_watermark(&stream.topic, partition).await?.0;
        let end = lane
            .until
            .map_or(high_watermark, |until| until.min(high_watermark));
        if lane.next >= end {
            return Ok(false);
        }
        let count_max =
            ((end - lane.next) as usize).min(WEBHOOK_BUFFERED_EVENTS_COUNT_MAX - self.buffered_count);
        let bytes_max = WEBHOOK_BUFFERED_SIZE_BYTES_MAX
            .saturating_sub(self.buffered_size)
            .max(1);
        let topic = stream.topic.clone();
        let redrive = stream.redrive;
        // Dead letters are picked by their endpoint header, not by the filter.
        let filter = if redrive {
            EventFilter::all()
        } else {
            self.filter.clone()
        };
        let from = lane.next;
        let scanned = backend
            .scan(&topic, partition, Offset(from), count_max, bytes_max, &filter)
            .await;
        let mut jobs = Vec::new();
        let next = match scanned {
            Ok(events) => {
                // `count_max` keeps the scan below `end`.
                for event in events.iter().take_while(|event| event.offset.0 < end) {
                    if !redrive {
                        jobs.push(Job::from_event(stream_index, &topic, &event));
                    } else if dead_letter_endpoint(&event) == Some(self.endpoint.name.as_bytes())
                        && let Some(job) = Job::from_dead_letter(stream_index, &event)
                    {
                        jobs.push(job);
                    }
                }
                events.next_offset().0.min(end)
            }
            Err(Error::OffsetOutOfRange { earliest, .. }) => {
                tracing::warn!(
                    endpoint = %self.endpoint.name, topic = %topic, %partition, from = lane.next, %earliest,
                    "events were deleted by retention before delivery; skipping to the earliest"
                );
                earliest.0
            }
            Err(error) => return Err(error),
        };
        let lane = &mut self.streams[stream_index].lanes[lane_index];
        debug_assert_eq!(lane.next, from, "one read of a lane at a time");
        let progressed = next > lane.next;
        lane.next = lane.next.max(next);
        for job in jobs {
            lane.pending.insert(job.position);
            self.buffered_count += 1;
            self.buffered_size += job.size();
            let order_key = (job.stream, job.lane, job.event.key.clone());
            let queue = self.queues.entry(order_key.clone()).or_default();
            queue.push_back(job);
            if queue.len() == 1 {
                self.runnable.push_back(order_key);
            }
        }
        Ok(progressed)
    }

    fn start_runnable(&mut self) {
        let in_flight_max = self.endpoint.settings.in_flight_max.max(1) as usize;
        let before = self.tasks.len();
        while self.tasks.len() < in_flight_max {
            let Some(order_key) = self.runnable.pop_front() else {
                break;
            };
            let Some(job) = self
                .queues
                .get(&order_key)
                .and_then(|queue| queue.front())
                .cloned()
            else {
                continue;
            };
            let shared = Arc::clone(&self.shared);
            let endpoint = Arc::clone(&self.endpoint);
            let status = Arc::clone(&self.status);
            self.tasks.spawn(async move {
                let finish = deliver(&shared, &endpoint, &status, &job).await;
                (order_key, finish)
            });
        }
        debug_assert!(
            self.tasks.len() <= in_flight_max,
            "at most in_flight_max keys in flight"
        );
        if self.tasks.len() != before {
            self.shared
                .observer
                .in_flight(&self.endpoint.name, self.tasks.len());
        }
    }

    fn finished(&mut self, joined: std::result::Result<(OrderKey, Finish), tokio::task::JoinError>) {
        let Ok((order_key, _finish)) = joined else {
            // A delivery task panicked: a bug. Its event stays pending, so the
            // cursor holds and a restart re-delivers it.
            tracing::error!(endpoint = %self.endpoint.name, "a delivery task failed");
            return;
        };
        let Some(queue) = self.queues.get_mut(&order_key) else {
            return;
        };
        if let Some(job) = queue.pop_front() {
            self.streams[job.stream].lanes[job.lane as usize]
                .pending
                .remove(&job.position);
            self.buffered_count -= 1;
            self.buffered_size -= job.size();
        }
        if queue.is_empty() {
            self.queues.remove(&order_key);
        } else {
            self.runnable.push_back(order_key);
        }
    }

    /// Commits every lane whose low watermark moved.
    /// Ends the loop (pause, delete, redrive, shutdown): deliveries that finish
    /// within `STOP_DRAIN` are settled and the cursors committed, so a loop
    /// started next does not send again what this one finished; the rest are
    /// abandoned and sent again later (at least once).
    async fn stop(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + STOP_DRAIN;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(joined)) => self.finished(joined),
                Ok(None) | Err(_) => break,
            }
        }
        self.tasks.abort_all();
        self.shared.observer.in_flight(&self.endpoint.name, 0);
        self.commit().await
    }

    async fn commit(&mut self) -> Result<()> {
        let backend = Arc::clone(&self.shared.backend);
        let mut lag = 0u64;
        for (stream_index, stream) in self.streams.iter_mut().enumerate() {
            let mut offsets = Vec::new();
            for (index, lane) in stream.lanes.iter().enumerate() {
                let low = lane.low_watermark();
                if low > lane.committed {
                    offsets.push((PartitionId(index as u32), Offset(low)));
                }
            }
            if !offsets.is_empty() {
                backend
                    .commit_cursor(&stream.topic, &stream.cursor, offsets.clone(), false)
                    .await?;
                for (partition, offset) in offsets {
                    stream.lanes[partition.0 as usize].committed = offset.0;
                }
            }
            if stream_index == 0 {
                for (index, lane) in stream.lanes.iter().enumerate() {
                    let high_watermark = backend
                        .high_watermark(&stream.topic, PartitionId(index as u32))
                        .await?
                        .0;
                    lag += high_watermark.saturating_sub(lane.committed);
                }
            }
        }
        self.shared.observer.lag(&self.endpoint.name, lag);
        Ok(())
    }
}

/// Gives the probe back when a delivery is cancelled between admission and result.
struct ProbeGuard<'a> {
    status: &'a EndpointStatus,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.status.breaker().abandon_probe();
            self.status.changed.notify_waiters();
        }
    }
}

/// Waits until the breaker admits a request; returns whether it is the probe.
async fn admit(status: &EndpointStatus) -> bool {
    loop {
        let notified = status.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let admission = status.breaker().admit(Instant::now());
        match admission {
            Admission::Go => return false,
            Admission::Probe => return true,
            Admission::Wait(Some(until)) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = &mut notified => {}
                }
            }
            Admission::Wait(None) => notified.await,
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Delivers one job until it succeeds or is dead-lettered.
async fn deliver(shared: &Shared, endpoint: &Endpoint, status: &EndpointStatus, job: &Job) -> Finish {
    let name = endpoint.name.as_str();
    let settings = &endpoint.settings;
    let policy = RetryPolicy {
        attempts_max: settings.attempts_max.max(1),
        age_max: Duration::from_millis(settings.age_max_ms),
        backoff_initial: Duration::from_millis(settings.backoff_initial_ms),
        backoff_max: Duration::from_millis(settings.backoff_max_ms),
    };
    let timeout = Duration::from_millis(settings.timeout_ms.max(1));
    let body = Bytes::from(render(&job.topic, &job.event.as_event_ref()));
    let target = match super::http::parse_target(&endpoint.url) {
        Ok(target) => target,
        Err(message) => {
            status.set_last_error(message.clone(), 0);
            return dead_letter(shared, endpoint, status, job, &message, 0, 0).await;
        }
    };
    let first_attempt = Instant::now();
    let mut attempt = 0u32;
    loop {
        let probe = admit(status).await;
        let mut guard = ProbeGuard { status, armed: probe };
        let permit = shared.global.acquire().await;
        attempt += 1;
        shared.observer.attempt(name);
        let timestamp_s = now_ms() / 1000;
        let headers = [
            ("webhook-id", job.webhook_id.clone()),
            ("webhook-timestamp", timestamp_s.to_string()),
            (
                "webhook-signature",
                sign(&endpoint.secret, &job.webhook_id, timestamp_s, &body),
            ),
        ];
        let sent = shared.client.post(&target, &headers, body.clone(), timeout).await;
        drop(permit);
        {
            let mut breaker = status.breaker();
            breaker.record(sent.result.is_receiver_failure(), probe, Instant::now());
            let state = breaker.state(Instant::now());
            drop(breaker);
            guard.armed = false;
            status.changed.notify_waiters();
            shared.observer.circuit(name, state.gauge());
        }
        let class = sent.result.status_class();
        let status_code = sent.result.status_code();
        match sent.result.verdict() {
            Verdict::Success => {
                shared.observer.outcome(name, "success", class);
                let latency_ms = now_ms().saturating_sub(job.event.timestamp_ms).max(0) as u64;
                shared.observer.delivered(name, Duration::from_millis(latency_ms));
                status
                    .delivered
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Finish::Delivered;
            }
            Verdict::Permanent => {
                shared.observer.outcome(name, "permanent_failure", class);
                status.set_last_error(sent.message.clone(), status_code);
                let reason = format!("permanent failure: {}", sent.message);
                return dead_letter(shared, endpoint, status, job, &reason, status_code, attempt).await;
            }
            Verdict::Retry => {
                status.set_last_error(sent.message.clone(), status_code);
                if policy.exhausted(attempt, first_attempt.elapsed()) {
                    shared.observer.outcome(name, "dead_lettered", class);
                    let reason = format!("gave up after {attempt} attempts: {}", sent.message);
                    return dead_letter(shared, endpoint, status, job, &reason, status_code, attempt).await;
                }
                shared.observer.outcome(name, "retry", class);
                let delay = policy.delay(attempt, &sent.result, random_fraction());
                shared.observer.retry_delay(name, delay);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Appends the job to the dead-letter topic, retrying until it is stored.
async fn dead_letter(
    shared: &Shared,
    endpoint: &Endpoint,
    status: &EndpointStatus,
    job: &Job,
    reason: &str,
    last_status: u16,
    attempts: u32,
) -> Finish {
    let original = &job.event;
    let mut headers = original.headers.clone();
    // Room for the dead-letter headers within the per-event header limits.
    headers.truncate(stele_engine::limits::HEADERS_COUNT_MAX - dl::COUNT);
    let mut reason = reason.to_string();
    reason.truncate(1024);
    headers.extend([
        (dl::ENDPOINT.to_string(), endpoint.name.as_bytes().to_vec()),
        (dl::REASON.to_string(), reason.into_bytes()),
        (dl::STATUS.to_string(), last_status.to_string().into_bytes()),
        (dl::ATTEMPTS.to_string(), attempts.to_string().into_bytes()),
        (dl::TOPIC.to_string(), job.topic.as_bytes().to_vec()),
        (
            dl::PARTITION.to_string(),
            original.partition.to_string().into_bytes(),
        ),
        (dl::OFFSET.to_string(), original.offset.to_string().into_bytes()),
        (
            dl::SEQUENCE.to_string(),
            original.sequence.to_string().into_bytes(),
        ),
        (
            dl::TIMESTAMP_MS.to_string(),
            original.timestamp_ms.to_string().into_bytes(),
        ),
        (dl::WEBHOOK_ID.to_string(), job.webhook_id.as_bytes().to_vec()),
    ]);
    // The idempotency id makes a dead letter appended again after a crash a
    // duplicate; a redriven event that fails again gets a new one.
    let redrive_part = if shared_stream_is_redrive(job) {
        format!(":redrive:{}:{}", job.lane, job.position)
    } else {
        String::new()
    };
    let idempotency_id = format!("dl:{}:{}{}", endpoint.name, job.webhook_id, redrive_part);
    let event = Event {
        event_type: original.event_type.clone(),
        payload: original.payload.clone(),
        headers,
        idempotency_id: Some(idempotency_id.into_bytes()),
    };
    let request = AppendRequest::new(original.key.clone(), vec![event]);
    loop {
        let outcome = shared
            .backend
            .append(&endpoint.settings.dead_letter_topic, vec![request.clone()])
            .await;
        let error = match outcome {
            Ok(mut results) => match results.pop() {
                Some(Ok(_)) => break,
                Some(Err(error)) => error,
                None => Error::Closed,
            },
            Err(error) => error,
        };
        tracing::warn!(endpoint = %endpoint.name, %error, "cannot append a dead letter; retrying");
        status.set_last_error(format!("cannot append a dead letter: {error}"), last_status);
        tokio::time::sleep(DEAD_LETTER_RETRY_PAUSE).await;
    }
    shared.observer.dead_lettered(&endpoint.name);
    status
        .dead_lettered
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Finish::DeadLettered
}

fn shared_stream_is_redrive(job: &Job) -> bool {
    job.stream > 0
}

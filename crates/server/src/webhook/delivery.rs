//! One endpoint's delivery loop: a sink of the shared delivery engine
//! (`crate::delivery`). The engine's core reads events through the
//! [`Backend`](crate::backend::Backend) and holds the per-key order and the
//! bounds; the endpoint is the core's single member (window `in_flight_max`,
//! no lease), each delivery a task that POSTs, retries under the breaker and
//! dead-letters; the loop commits the core's floor to the endpoint's cursor.
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::body::render;
use super::breaker::Admission;
use super::policy::{RetryPolicy, Verdict};
use super::signature::{message_id, sign};
use super::{EndpointStatus, Shared, dead_letter_headers as dl};
use crate::delivery::core::{Action, Core, DeliveryId, Job as CoreJob, MemberId, Position, Settings};
use crate::delivery::{Source, append_until_stored, fill, now_ms, random_fraction, waits};
use stele_engine::error::{Error, Result};
use stele_engine::event::{AppendRequest, Event, Offset, PartitionId, RecordedEvent};
use stele_engine::group::{Exhausted, PartitionProgress};
use stele_engine::limits::{WEBHOOK_BUFFERED_EVENTS_COUNT_MAX, WEBHOOK_BUFFERED_SIZE_BYTES_MAX};
use stele_engine::webhook::Endpoint;
use stele_engine::{EventFilter, EventRef};

/// How often an idle loop refreshes its lag gauge.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// The most often a busy loop commits its cursors.
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// How long a stopping loop waits for its in-flight deliveries to finish.
const STOP_DRAIN: Duration = Duration::from_millis(500);

/// The cursor name of an endpoint's main stream.
pub fn cursor_name(endpoint: &str) -> String {
    format!("webhook.{endpoint}")
}

/// The cursor name of an endpoint's redrive stream.
pub fn redrive_cursor_name(endpoint: &str) -> String {
    format!("webhook.{endpoint}.redrive")
}

/// One event to deliver: what the receiver is told (its original topic and
/// event). Where it was read is the core's [`Position`].
#[derive(Debug, Clone)]
pub(super) struct Job {
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
    fn from_event(topic: &str, event: &EventRef<'_>) -> Job {
        Job {
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
    fn from_dead_letter(letter: &EventRef<'_>) -> Option<Job> {
        let text = |name: &str| {
            letter
                .headers
                .get(name)
                .and_then(|value| std::str::from_utf8(value).ok())
        };
        Some(Job {
            topic: text(dl::TOPIC)?.to_string(),
            event: dl::original_event(letter)?,
            webhook_id: text(dl::WEBHOOK_ID)?.to_string(),
        })
    }
}

/// The header value naming the endpoint of a dead letter, if any.
pub(super) fn dead_letter_endpoint<'a>(letter: &EventRef<'a>) -> Option<&'a [u8]> {
    letter.headers.get(dl::ENDPOINT)
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    Delivered,
    DeadLettered,
}

/// The single member of an endpoint's core: the endpoint itself.
const ENDPOINT_MEMBER: &str = "endpoint";

/// The state of one running loop.
struct Loop {
    shared: Arc<Shared>,
    endpoint: Arc<Endpoint>,
    status: Arc<EndpointStatus>,
    /// Stream 0: the endpoint's topic (with its filter); 1: its dead letters
    /// up to the redrive mark.
    sources: Vec<Source>,
    /// Cursor names by stream.
    cursors: Vec<String>,
    /// The offsets last committed (or found at start), by stream and partition.
    committed: Vec<Vec<u64>>,
    core: Core<Job>,
    member: MemberId,
    tasks: JoinSet<DeliveryId>,
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
    let mut sources = vec![Source {
        topic: endpoint.topic.clone(),
        filter: EventFilter::new(endpoint.event_types.iter().cloned(), endpoint.key_prefix.clone()),
    }];
    let mut cursors = vec![cursor_name(&endpoint.name)];
    let mut starts = vec![start_offsets(&shared, &endpoint.topic, &cursors[0]).await?];
    let mut streams = vec![
        starts[0]
            .iter()
            .map(|start| (PartitionProgress::new(*start), None))
            .collect::<Vec<_>>(),
    ];
    if endpoint.redrive_until.iter().any(|(_, until)| *until > 0) {
        let topic = endpoint.settings.dead_letter_topic.clone();
        let cursor = redrive_cursor_name(&endpoint.name);
        let redrive_starts = start_offsets(&shared, &topic, &cursor).await?;
        streams.push(
            redrive_starts
                .iter()
                .enumerate()
                .map(|(partition, start)| {
                    let until = endpoint
                        .redrive_until
                        .iter()
                        .find(|(mark_partition, _)| *mark_partition as usize == partition)
                        .map_or(0, |(_, offset)| *offset);
                    (PartitionProgress::new(*start), Some(until))
                })
                .collect(),
        );
        // Dead letters are picked by their endpoint header, not by the filter.
        sources.push(Source {
            topic,
            filter: EventFilter::all(),
        });
        cursors.push(cursor);
        starts.push(redrive_starts);
    }
    let settings = Settings {
        lease_ms: None,
        // Retries happen within a delivery (`deliver`), under the breaker.
        deliveries_max: u32::MAX,
        backoff_initial_ms: 0,
        backoff_max_ms: 0,
        exhausted: Exhausted::Park,
        buffered_count_max: WEBHOOK_BUFFERED_EVENTS_COUNT_MAX,
        buffered_size_max: WEBHOOK_BUFFERED_SIZE_BYTES_MAX,
        progress_entries_max: usize::MAX,
    };
    let mut core = Core::new(settings, streams, 0);
    let member = core.join(
        ENDPOINT_MEMBER.to_string(),
        endpoint.settings.in_flight_max.max(1),
        now_ms(),
    );
    let mut state = Loop {
        shared,
        endpoint,
        status,
        sources,
        cursors,
        committed: starts,
        core,
        member,
        tasks: JoinSet::new(),
        committed_at: Instant::now(),
    };
    loop {
        if *stop.borrow() {
            return state.stop().await;
        }
        let read = state.fill().await?;
        state.start_ready();
        // A cursor commit is a synced journal write (the backend runs it off the
        // runtime's threads, but this loop waits for it): while deliveries are in
        // flight, commit at most every `COMMIT_INTERVAL` (a crash re-delivers
        // what finished since, which at-least-once allows); when the loop is
        // idle, commit at once so the cursor and lag settle.
        if state.tasks.is_empty() || state.committed_at.elapsed() >= COMMIT_INTERVAL {
            state.commit().await?;
            state.committed_at = Instant::now();
        }
        if read && state.core.has_room() {
            tokio::task::yield_now().await;
            continue;
        }
        let mut waits = if state.core.has_room() {
            waits(&mut state.core, &state.shared.backend, &state.sources)
        } else {
            Vec::new()
        };
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

/// The committed offsets of `cursor` on `topic`, or each partition's earliest
/// offset where it was never committed.
async fn start_offsets(shared: &Shared, topic: &str, cursor: &str) -> Result<Vec<u64>> {
    let positions = match shared.backend.cursor(topic, cursor).await {
        Ok(positions) => positions.into_iter().map(|position| position.committed).collect(),
        Err(Error::CursorNotFound(_)) => {
            let count = shared.backend.describe_topic(topic).await?.partitions.len();
            vec![None; count]
        }
        Err(error) => return Err(error),
    };
    let mut starts = Vec::with_capacity(positions.len());
    for (index, committed) in positions.into_iter().enumerate() {
        starts.push(match committed {
            Some(offset) => offset.0,
            None => shared.backend.earliest(topic, PartitionId(index as u32)).await?.0,
        });
    }
    Ok(starts)
}

impl Loop {
    /// Reads what fits into the buffer; returns whether anything was read.
    async fn fill(&mut self) -> Result<bool> {
        let topic = self.endpoint.topic.clone();
        let name = self.endpoint.name.clone();
        let decode = move |stream: u8, event: &EventRef<'_>| -> Option<CoreJob<Job>> {
            let job = if stream == 0 {
                Job::from_event(&topic, event)
            } else if dead_letter_endpoint(event) == Some(name.as_bytes()) {
                Job::from_dead_letter(event)?
            } else {
                return None;
            };
            Some(CoreJob {
                position: Position {
                    stream,
                    partition: event.partition.0,
                    offset: event.offset.0,
                },
                key: job.event.key.clone(),
                timestamp_ms: job.event.timestamp_ms,
                size: job.size(),
                payload: Arc::new(job),
            })
        };
        fill(
            &mut self.core,
            &self.shared.backend,
            &self.sources,
            &decode,
            now_ms,
        )
        .await
    }

    fn start_ready(&mut self) {
        let before = self.tasks.len();
        for outgoing in self.core.dispatch(now_ms()) {
            debug_assert_eq!(outgoing.member, self.member, "the endpoint is the only member");
            let shared = Arc::clone(&self.shared);
            let endpoint = Arc::clone(&self.endpoint);
            let status = Arc::clone(&self.status);
            self.tasks.spawn(async move {
                deliver(
                    &shared,
                    &endpoint,
                    &status,
                    &outgoing.payload,
                    outgoing.id.position,
                )
                .await;
                outgoing.id
            });
        }
        debug_assert!(
            self.tasks.len() <= self.endpoint.settings.in_flight_max.max(1) as usize,
            "at most in_flight_max keys in flight"
        );
        if self.tasks.len() != before {
            self.shared
                .observer
                .in_flight(&self.endpoint.name, self.tasks.len());
        }
    }

    fn finished(&mut self, joined: std::result::Result<DeliveryId, tokio::task::JoinError>) {
        let Ok(id) = joined else {
            // A delivery task panicked: a bug. Its event stays in flight, so the
            // cursor holds and a restart re-delivers it.
            tracing::error!(endpoint = %self.endpoint.name, "a delivery task failed");
            return;
        };
        // Delivered or dead-lettered: either way the event is finished.
        let settled = self.core.settle(self.member, id, Action::Ack, now_ms(), 0.0);
        debug_assert!(settled.is_ok(), "the endpoint's deliveries never expire");
    }

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

    /// Commits every lane whose floor moved.
    async fn commit(&mut self) -> Result<()> {
        // The floor is all an endpoint keeps (its cursor): settled ranges above
        // it are delivered again after a restart.
        drop(self.core.take_changes());
        let backend = Arc::clone(&self.shared.backend);
        let mut lag = 0u64;
        for (stream, source) in self.sources.iter().enumerate() {
            let mut offsets = Vec::new();
            for (partition, committed) in self.committed[stream].iter().enumerate() {
                let floor = self.core.lane(stream as u8, partition as u32).floor;
                if floor > *committed {
                    offsets.push((PartitionId(partition as u32), Offset(floor)));
                }
            }
            if !offsets.is_empty() {
                backend
                    .commit_cursor(&source.topic, &self.cursors[stream], offsets.clone(), false)
                    .await?;
                for (partition, offset) in offsets {
                    self.committed[stream][partition.0 as usize] = offset.0;
                }
            }
            if stream == 0 {
                for (partition, committed) in self.committed[stream].iter().enumerate() {
                    let high_watermark = backend
                        .high_watermark(&source.topic, PartitionId(partition as u32))
                        .await?
                        .0;
                    lag += high_watermark.saturating_sub(*committed);
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

/// Delivers one job, read at `position`, until it succeeds or is dead-lettered.
async fn deliver(
    shared: &Shared,
    endpoint: &Endpoint,
    status: &EndpointStatus,
    job: &Job,
    position: Position,
) -> Finish {
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
            return dead_letter(shared, endpoint, status, job, position, &message, 0, 0).await;
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
            let before = breaker.state(Instant::now()).name();
            breaker.record(sent.result.is_receiver_failure(), probe, Instant::now());
            let state = breaker.state(Instant::now());
            drop(breaker);
            match (before, state.name()) {
                (before, after) if before == after => {}
                (_, "open") => tracing::warn!(
                    endpoint = %name, last_error = %sent.message,
                    "webhook circuit opened: deliveries to the endpoint pause"
                ),
                (_, "closed") => {
                    tracing::info!(endpoint = %name, "webhook circuit closed: deliveries resume")
                }
                _ => {}
            }
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
                return dead_letter(
                    shared,
                    endpoint,
                    status,
                    job,
                    position,
                    &reason,
                    status_code,
                    attempt,
                )
                .await;
            }
            Verdict::Retry => {
                status.set_last_error(sent.message.clone(), status_code);
                if policy.exhausted(attempt, first_attempt.elapsed()) {
                    shared.observer.outcome(name, "dead_lettered", class);
                    let reason = format!("gave up after {attempt} attempts: {}", sent.message);
                    return dead_letter(
                        shared,
                        endpoint,
                        status,
                        job,
                        position,
                        &reason,
                        status_code,
                        attempt,
                    )
                    .await;
                }
                shared.observer.outcome(name, "retry", class);
                let delay = policy.delay(attempt, &sent.result, random_fraction());
                shared.observer.retry_delay(name, delay);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Appends the job to the dead-letter topic, retrying until it is stored.
#[allow(clippy::too_many_arguments)]
async fn dead_letter(
    shared: &Shared,
    endpoint: &Endpoint,
    status: &EndpointStatus,
    job: &Job,
    position: Position,
    reason: &str,
    last_status: u16,
    attempts: u32,
) -> Finish {
    let original = &job.event;
    let mut headers = original.headers.clone();
    // Room for the dead-letter headers within the per-event header limits.
    headers.truncate(stele_engine::limits::HEADERS_COUNT_MAX - dl::COUNT);
    let mut reason_header = reason.to_string();
    reason_header.truncate(1024);
    headers.extend([
        (dl::ENDPOINT.to_string(), endpoint.name.as_bytes().to_vec()),
        (dl::REASON.to_string(), reason_header.into_bytes()),
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
    let redrive_part = if position.stream > 0 {
        format!(":redrive:{}:{}", position.partition, position.offset)
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
    append_until_stored(
        &shared.backend,
        &endpoint.settings.dead_letter_topic,
        request,
        &|error| {
            crate::limited!(warn, endpoint = %endpoint.name, %error, "cannot append a dead letter; retrying");
            status.set_last_error(format!("cannot append a dead letter: {error}"), last_status);
        },
    )
    .await;
    crate::limited!(
        warn,
        endpoint = %endpoint.name,
        topic = %job.topic,
        partition = original.partition.0,
        offset = original.offset.0,
        dead_letter_topic = %endpoint.settings.dead_letter_topic,
        attempts,
        reason,
        "webhook event dead-lettered"
    );
    shared.observer.dead_lettered(&endpoint.name);
    status
        .dead_lettered
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Finish::DeadLettered
}

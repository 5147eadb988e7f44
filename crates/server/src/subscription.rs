//! Subscriptions: catch up from a starting point, then follow the tail live.
//!
//! One task per subscription reads a bounded batch per partition in turn and
//! sends it into a small bounded channel: a slow consumer makes `send` wait, so
//! the server holds at most `SUBSCRIBE_BUFFER_MESSAGES` batches for it (flow
//! control, never unbounded buffering). When every partition is read up to the
//! high watermark it had at the start, a `CaughtUp` marker is sent once. While
//! idle, the task waits on the partitions' high watermarks (no polling) and
//! sends heartbeats.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::backend::{Backend, BoxFuture, SubscriptionMeter};
use stele_engine::EventFilter;
use stele_engine::error::{Error, Result};
use stele_engine::event::{Offset, PartitionId};
use stele_wire::proto::{self, start_position::Position, subscribe_response::Item};
use stele_wire::status::{OrStatus, invalid_field, to_status};

/// Batches buffered per subscription before the reader waits for the consumer.
const SUBSCRIBE_BUFFER_MESSAGES: usize = 8;
const HEARTBEAT_MS_DEFAULT: u64 = 5000;
/// The shortest heartbeat period a subscription may ask for: a client cannot
/// turn the server's idle wait into a busy loop.
pub const HEARTBEAT_MS_MIN: u32 = 100;
const BATCH_EVENTS_DEFAULT: usize = 500;
const BATCH_EVENTS_MAX: usize = 10_000;
const BATCH_BYTES_MAX: u64 = 1 << 20;

type Sender = mpsc::Sender<Result<proto::SubscribeResponse, Status>>;
/// The response stream of a subscription.
pub type SubscriptionStream = Pin<Box<ReceiverStream<Result<proto::SubscribeResponse, Status>>>>;

/// Validates the request, resolves starting offsets, and starts the task.
pub async fn start(
    backend: Arc<dyn Backend>,
    request: proto::SubscribeRequest,
    closing: watch::Receiver<bool>,
) -> Result<SubscriptionStream, Status> {
    let description = backend.describe_topic(&request.topic).await.or_status()?;
    let count = description.partitions.len() as u32;
    let partitions: Vec<PartitionId> = if request.partitions.is_empty() {
        (0..count).map(PartitionId).collect()
    } else {
        let mut chosen: Vec<u32> = request.partitions.clone();
        chosen.sort_unstable();
        chosen.dedup();
        if let Some(bad) = chosen.iter().find(|partition| **partition >= count) {
            return Err(invalid_field(
                "partitions",
                format!("partition {bad} out of range: topic has {count}"),
            ));
        }
        chosen.into_iter().map(PartitionId).collect()
    };
    if let Some(Position::Offsets(offsets)) = request.start.as_ref().and_then(|start| start.position.as_ref())
        && let Some(bad) = offsets.offsets.keys().find(|partition| **partition >= count)
    {
        return Err(invalid_field(
            "start.offsets",
            format!("start offset for partition {bad} out of range: topic has {count}"),
        ));
    }
    if request.heartbeat_ms != 0 && request.heartbeat_ms < HEARTBEAT_MS_MIN {
        return Err(invalid_field(
            "heartbeat_ms",
            format!(
                "heartbeat_ms is {}, below the floor of {HEARTBEAT_MS_MIN} (0 means the default of {HEARTBEAT_MS_DEFAULT})",
                request.heartbeat_ms
            ),
        ));
    }
    let topic = request.topic.clone();
    let mut next = Vec::with_capacity(partitions.len());
    let cursor_offsets = match request.start.as_ref().and_then(|start| start.position.as_ref()) {
        // A cursor never committed starts every partition at the earliest event.
        Some(Position::Cursor(name)) => match backend.cursor(&topic, name).await {
            Ok(positions) => Some(positions),
            Err(Error::CursorNotFound(_)) => None,
            Err(error) => return Err(to_status(&error)),
        },
        _ => None,
    };
    for partition in &partitions {
        let earliest = backend.earliest(&topic, *partition).await.or_status()?;
        let high_watermark = backend.high_watermark(&topic, *partition).await.or_status()?;
        let offset = match request.start.as_ref().and_then(|start| start.position.as_ref()) {
            None | Some(Position::Earliest(_)) => earliest,
            Some(Position::Latest(_)) => high_watermark,
            Some(Position::Offsets(offsets)) => offsets
                .offsets
                .get(&partition.0)
                .map_or(earliest, |offset| Offset(*offset)),
            Some(Position::TimestampMs(timestamp_ms)) => backend
                .offset_for_timestamp(&topic, *partition, *timestamp_ms)
                .await
                .or_status()?,
            Some(Position::Cursor(_)) => cursor_offsets
                .as_ref()
                .and_then(|positions| positions.iter().find(|position| position.partition == *partition))
                .and_then(|position| position.committed)
                .unwrap_or(earliest)
                .max(earliest),
        };
        if offset < earliest || offset > high_watermark {
            return Err(to_status(&Error::OffsetOutOfRange {
                requested: offset,
                earliest,
                high_watermark,
            }));
        }
        next.push((offset, high_watermark));
    }
    let filter = EventFilter::new(request.event_types.iter().cloned(), request.key_prefix.to_vec());
    let heartbeat = Duration::from_millis(match request.heartbeat_ms {
        0 => HEARTBEAT_MS_DEFAULT,
        ms => ms as u64,
    });
    let batch_events = match request.max_batch_events {
        0 => BATCH_EVENTS_DEFAULT,
        count => (count as usize).min(BATCH_EVENTS_MAX),
    };
    let (sender, receiver) = mpsc::channel(SUBSCRIBE_BUFFER_MESSAGES);
    let meter = backend.subscription_started(&topic);
    let task = Subscription {
        meter,
        backend,
        topic,
        partitions,
        next,
        filter,
        heartbeat,
        batch_events,
        sender,
        closing,
    };
    tokio::spawn(task.run());
    Ok(Box::pin(ReceiverStream::new(receiver)))
}

struct Subscription {
    backend: Arc<dyn Backend>,
    topic: String,
    partitions: Vec<PartitionId>,
    /// Per partition: the next offset to read, and the high watermark to reach
    /// before the caught-up marker.
    next: Vec<(Offset, Offset)>,
    /// Applied by the backend where it reads.
    filter: EventFilter,
    heartbeat: Duration,
    batch_events: usize,
    sender: Sender,
    closing: watch::Receiver<bool>,
    /// Held while the subscription runs (it counts open subscriptions) and
    /// told of the events sent.
    meter: Box<dyn SubscriptionMeter>,
}

impl Subscription {
    async fn run(mut self) {
        if let Err(status) = self.follow().await {
            // A topic deleted under the subscription ends it with NOT_FOUND, which
            // clients do not retry, whatever the partitions reported on the way
            // (closed, I/O on a removed file); a server shutdown stays UNAVAILABLE.
            let deleted = !*self.closing.borrow()
                && matches!(
                    self.backend.describe_topic(&self.topic).await,
                    Err(Error::TopicNotFound(_))
                );
            let status = if deleted {
                to_status(&Error::TopicNotFound(self.topic.clone()))
            } else {
                status
            };
            let _ = self.sender.send(Err(status)).await;
        }
    }

    /// Returns when the consumer went away (Ok) or on an error to report.
    async fn follow(&mut self) -> Result<(), Status> {
        let mut caught_up = false;
        loop {
            let mut progressed = false;
            for index in 0..self.partitions.len() {
                let partition = self.partitions[index];
                let high_watermark = self
                    .backend
                    .high_watermark(&self.topic, partition)
                    .await
                    .or_status()?;
                let (offset, target) = self.next[index];
                if offset >= high_watermark {
                    continue;
                }
                let events = self
                    .backend
                    .scan(
                        &self.topic,
                        partition,
                        offset,
                        self.batch_events,
                        BATCH_BYTES_MAX,
                        &self.filter,
                    )
                    .await
                    .or_status()?;
                // Each event is encoded straight from the backend's bytes (the
                // segments' mappings, for the engine).
                let mut batch = stele_wire::batch::EventBatch::new(partition.0);
                for event in events.iter() {
                    batch.push_event(&event);
                }
                self.meter.sent(events.len());
                let after = events.next_offset();
                drop(events);
                self.next[index] = (after, target);
                progressed = true;
                batch.next_offset = after.0;
                if !self.send(Item::Events(batch)).await {
                    return Ok(());
                }
            }
            if !caught_up && self.next.iter().all(|(offset, target)| offset >= target) {
                caught_up = true;
                let next_offsets = self
                    .partitions
                    .iter()
                    .zip(&self.next)
                    .map(|(partition, (offset, _))| (partition.0, offset.0))
                    .collect();
                if !self.send(Item::CaughtUp(proto::CaughtUp { next_offsets })).await {
                    return Ok(());
                }
            }
            if progressed {
                continue;
            }
            let mut waits: Vec<BoxFuture<Result<Offset>>> = Vec::with_capacity(self.partitions.len());
            for (partition, (offset, _)) in self.partitions.iter().zip(&self.next) {
                waits.push(self.backend.wait_past(&self.topic, *partition, *offset));
            }
            enum Woken {
                Data(usize, Result<Offset>),
                Heartbeat,
                Gone,
                Closing,
            }
            let mut closing = self.closing.clone();
            let woken = tokio::select! {
                (index, high_watermark) = any(&mut waits) => Woken::Data(index, high_watermark),
                _ = tokio::time::sleep(self.heartbeat) => Woken::Heartbeat,
                _ = self.sender.closed() => Woken::Gone,
                _ = closing.wait_for(|closing| *closing) => Woken::Closing,
            };
            match woken {
                // Woken without data: the backend is closing.
                Woken::Data(_, Err(error)) => return Err(to_status(&error)),
                Woken::Data(index, Ok(high_watermark)) if high_watermark <= self.next[index].0 => {
                    return Err(to_status(&Error::Closed));
                }
                Woken::Data(..) => {}
                Woken::Heartbeat => {
                    let mut high_watermarks = std::collections::HashMap::new();
                    for partition in &self.partitions {
                        high_watermarks.insert(
                            partition.0,
                            self.backend
                                .high_watermark(&self.topic, *partition)
                                .await
                                .or_status()?
                                .0,
                        );
                    }
                    if !self
                        .send(Item::Heartbeat(proto::Heartbeat { high_watermarks }))
                        .await
                    {
                        return Ok(());
                    }
                }
                Woken::Gone => return Ok(()),
                Woken::Closing => return Err(to_status(&Error::Closed)),
            }
        }
    }

    /// Sends one item, waiting while the consumer is behind. False when the
    /// consumer went away.
    async fn send(&self, item: Item) -> bool {
        self.sender
            .send(Ok(proto::SubscribeResponse { item: Some(item) }))
            .await
            .is_ok()
    }
}

/// Resolves when any of the futures does, with its index and output.
pub(super) async fn any<T>(futures: &mut [BoxFuture<T>]) -> (usize, T) {
    std::future::poll_fn(|context| {
        for (index, future) in futures.iter_mut().enumerate() {
            if let Poll::Ready(offset) = future.as_mut().poll(context) {
                return Poll::Ready((index, offset));
            }
        }
        Poll::Pending
    })
    .await
}

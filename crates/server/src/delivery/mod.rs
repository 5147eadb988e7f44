//! The delivery engine shared by webhook endpoints and consumer groups.
//!
//! - [`core`]: the pure state machine: per-key queues (one unsettled delivery
//!   per key, in sequence order), members with windows, leases, retries with
//!   backoff, exhaustion (park or block), and each lane's settled progress
//!   (`stele_engine::group::PartitionProgress`: a floor plus settled ranges
//!   above it, so memory follows the gaps, not the settled events).
//! - [`fill`] and [`waits`] (here): reading lanes through the
//!   [`Backend`] into a core, within its buffer bounds, and waiting for more.
//!
//! A sink drives a core: the webhook loop (`webhook::delivery`: one member, the
//! endpoint, whose HTTP attempts and retries happen inside each delivery;
//! progress kept as the floor in a cursor) and the group runner
//! (`group::runner`: members over gRPC streams settling asynchronously;
//! progress kept exactly in the group journal).

pub mod core;
#[cfg(test)]
mod model;

use std::sync::Arc;

use self::core::{Core, Job};
use crate::backend::{Backend, BoxFuture};
use stele_engine::error::{Error, Result};
use stele_engine::event::{Offset, PartitionId};
use stele_engine::{EventFilter, EventRef};

/// Where one stream of a core reads.
#[derive(Debug, Clone)]
pub struct Source {
    /// The topic.
    pub topic: String,
    /// Which events the backend returns (the rest are settled unread).
    pub filter: EventFilter,
}

/// Reads every lane of `core` that has events and room, from `sources` (by
/// stream). `decode` makes the job of an event, or `None` for an event that
/// needs no delivery (settled unread). Returns whether anything was read.
///
/// # Errors
/// Backend errors reading.
pub async fn fill<T>(
    core: &mut Core<T>,
    backend: &Arc<dyn Backend>,
    sources: &[Source],
    decode: &(dyn Fn(u8, &EventRef<'_>) -> Option<Job<T>> + Sync),
    now_ms: impl Fn() -> i64,
) -> Result<bool> {
    let mut read_any = false;
    // Each lane reads at most its share of the buffer per pass, so that the
    // first partition with a backlog does not fill the buffer with its keys
    // alone (a group's deliveries in flight are bounded by the keys held).
    let lanes: usize = (0..sources.len())
        .map(|stream| core.lanes_count(stream as u8))
        .sum();
    let share = (core.settings().buffered_count_max / lanes.max(1)).max(64);
    for (stream, source) in sources.iter().enumerate() {
        let stream = stream as u8;
        for partition in 0..core.lanes_count(stream) as u32 {
            if !core.has_room() {
                return Ok(read_any);
            }
            let Some((from, until)) = core.read_from(stream, partition) else {
                continue;
            };
            let high_watermark = backend
                .high_watermark(&source.topic, PartitionId(partition))
                .await?
                .0;
            let end = until.map_or(high_watermark, |until| until.min(high_watermark));
            if from >= end {
                continue;
            }
            let (count_room, bytes_room) = core.room();
            let count_max = ((end - from) as usize).min(count_room).min(share).max(1);
            let scanned = backend
                .scan(
                    &source.topic,
                    PartitionId(partition),
                    Offset(from),
                    count_max,
                    bytes_room,
                    &source.filter,
                )
                .await;
            match scanned {
                Ok(events) => {
                    let jobs: Vec<Job<T>> = events
                        .iter()
                        .take_while(|event| event.offset.0 < end)
                        .filter_map(|event| decode(stream, &event))
                        .collect();
                    let next = events.next_offset().0.min(end);
                    if next > from {
                        read_any = true;
                        core.offer(stream, partition, from, next, jobs, now_ms());
                    }
                }
                Err(Error::OffsetOutOfRange { earliest, .. }) if earliest.0 > from => {
                    tracing::warn!(
                        topic = %source.topic, partition, from, %earliest,
                        "events were deleted by retention before delivery; skipping to the earliest"
                    );
                    read_any = true;
                    core.offer(stream, partition, from, earliest.0, Vec::new(), now_ms());
                }
                // A quarantined partition serves nothing more: the lane is
                // skipped (its wait never resolves), the other lanes go on.
                Err(error) if error.kind() == stele_engine::ErrorKind::Quarantined => {
                    tracing::warn!(topic = %source.topic, partition, %error, "lane skipped: partition quarantined");
                }
                Err(error) => return Err(error),
            }
        }
    }
    Ok(read_any)
}

/// Futures that complete when a lane of `core` not read to its end gets a new
/// event (wait on them with [`crate::subscription::any`]).
pub fn waits<T>(
    core: &mut Core<T>,
    backend: &Arc<dyn Backend>,
    sources: &[Source],
) -> Vec<BoxFuture<Result<Offset>>> {
    let mut waits = Vec::new();
    for (stream, source) in sources.iter().enumerate() {
        let stream = stream as u8;
        for partition in 0..core.lanes_count(stream) as u32 {
            if let Some((from, _)) = core.read_from(stream, partition) {
                let wait = backend.wait_past(&source.topic, PartitionId(partition), Offset(from));
                let topic = source.topic.clone();
                let wait: BoxFuture<Result<Offset>> = Box::pin(async move {
                    match wait.await {
                        // A quarantined partition's lane has nothing more to
                        // read: it stays asleep, so the others are not woken
                        // (and the runner does not spin or stop) on its account.
                        Err(error) if error.kind() == stele_engine::ErrorKind::Quarantined => {
                            tracing::warn!(%topic, partition, %error, "lane skipped: partition quarantined");
                            std::future::pending().await
                        }
                        result => result,
                    }
                });
                waits.push(wait);
            }
        }
    }
    waits
}

/// The time now, Unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// A fraction in `[0, 1)` for jitter.
pub fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// The pause before appending a dead letter (or parked event) again after a
/// failure.
const DEAD_LETTER_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// Appends `request` to `topic` until it is stored (a dead letter or a parked
/// event: its idempotency id makes an append repeated after a crash a
/// duplicate), calling `failed` with each error before pausing.
pub async fn append_until_stored(
    backend: &Arc<dyn Backend>,
    topic: &str,
    request: stele_engine::event::AppendRequest,
    failed: &(dyn Fn(&Error) + Sync),
) {
    loop {
        let error = match backend.append(topic, vec![request.clone()]).await {
            Ok(mut results) => match results.pop() {
                Some(Ok(_)) => return,
                Some(Err(error)) => error,
                None => Error::Closed,
            },
            Err(error) => error,
        };
        failed(&error);
        tokio::time::sleep(DEAD_LETTER_RETRY_PAUSE).await;
    }
}

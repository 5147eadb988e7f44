//! Reading a partition stream: its bounds from the stream's leader, single
//! messages from the leader, ranges as batched direct gets from any replica
//! (ADR-31), checked for freshness.
//!
//! Why two paths: a direct get is answered by whichever replica responds
//! first, and a replica may not have applied what the leader acknowledged a
//! moment ago. Reads that decide something (a key's newest event, the
//! partition's bounds) go to the leader (`STREAM.INFO`, `STREAM.MSG.GET`);
//! ranges go to any replica, and a range that ends before an offset the
//! caller knows exists (because the leader said so) came from a lagging
//! replica and is asked again, bounded by [`crate::REACHABLE_WAIT_MAX`].

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::response::Response;
use futures_util::StreamExt as _;
use stele_engine::error::{Error, Result};
use stele_engine::event::{Offset, PartitionId, RecordedEvent};

use crate::message::{self, StoredMessage};
use crate::unavailable;

/// The header naming the group a message starts: `<writer>.<group>`
/// (`writer.rs`).
pub const WRITE_HEADER: &str = "Stele-Write";

/// Most messages one batched direct get asks for (the server's own limit is
/// larger; this bounds one reply's memory).
pub const BATCH_COUNT_MAX: usize = 1_000;

/// The longest one batched direct get waits for its next reply: any replica
/// answers within milliseconds, so silence means the request was lost (sent
/// to a node that just died, or during a reconnection) and is sent again.
const REPLY_WAIT_MAX: Duration = Duration::from_secs(2);

/// The pause between tries of a range that a lagging replica answered short.
const STALE_RETRY_PAUSE: Duration = Duration::from_millis(2);

/// A partition's positions as its stream's leader knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The oldest retained offset (the high watermark when nothing is retained).
    pub earliest: Offset,
    /// One past the newest stored offset.
    pub high_watermark: Offset,
    /// Bytes the stream holds.
    pub size_bytes: u64,
    /// Distinct subjects, that is keys with a retained event (two long keys
    /// whose hashes collide count once).
    pub keys_count: u64,
    /// When the stream was made (Unix ns): a topic deleted and created again
    /// under its name has new streams, whose offsets start again.
    pub created_ns: i128,
}

/// One message of a partition, decoded.
#[derive(Debug, Clone)]
pub struct Positioned {
    /// Its offset (stream sequence - 1).
    pub offset: Offset,
    /// The event.
    pub message: StoredMessage,
    /// The `Stele-Write` id of the group it starts, when it starts one.
    pub write: Option<String>,
}

impl Positioned {
    /// The event as the engine's reads answer it.
    pub fn into_recorded(self, partition: PartitionId) -> RecordedEvent {
        let Positioned { offset, message, .. } = self;
        RecordedEvent {
            partition,
            offset,
            timestamp_ms: message.timestamp_ms,
            key: message.key,
            sequence: message.sequence,
            event_type: message.event.event_type,
            payload: message.event.payload,
            headers: message.event.headers,
            idempotency_id: message.event.idempotency_id,
            producer: message.producer,
        }
    }
}

/// A range of a partition stream, as one replica answered it.
#[derive(Debug, Default)]
pub struct Batch {
    /// The messages, in offset order.
    pub messages: Vec<Positioned>,
    /// Messages past the batch that the answering replica holds (for the
    /// subject asked), as it said; `None` when it did not say.
    pub pending: Option<u64>,
}

/// One partition's stream.
#[derive(Debug, Clone)]
pub struct PartitionStream {
    topic: String,
    jetstream: jetstream::Context,
    client: async_nats::Client,
    name: String,
}

impl PartitionStream {
    /// The stream of `partition` of `topic` (no request is made).
    pub fn new(connection: &crate::Connection, topic: &str, partition: u32) -> PartitionStream {
        PartitionStream {
            topic: topic.to_string(),
            jetstream: connection.jetstream.clone(),
            client: connection.client.clone(),
            name: connection.names.stream(topic, partition),
        }
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn damaged(&self, sequence: u64, error: impl std::fmt::Display) -> Error {
        Error::Inconsistent {
            path: format!("nats:stream/{}", self.name).into(),
            reason: format!("message {sequence} is not a Stele event: {error}"),
        }
    }

    /// The stream's bounds, from its leader.
    ///
    /// # Errors
    /// [`Error::Unavailable`], also when the stream has no leader (a replica
    /// answered); `None` for a stream that does not exist.
    pub async fn bounds(&self) -> Result<Option<Bounds>> {
        let response: Response<jetstream::stream::Info> = self
            .jetstream
            .request(format!("STREAM.INFO.{}", self.name), &serde_json::json!({}))
            .await
            .map_err(|error| unavailable("read a partition stream's state", error))?;
        match response {
            // A stream without a leader is answered by one of its replicas,
            // with that replica's state: one that lags, or one restarted with
            // a wiped store (which reports an empty stream), must not say
            // where the partition ends.
            Response::Ok(info)
                if info
                    .cluster
                    .as_ref()
                    .is_some_and(|cluster| cluster.leader.is_none()) =>
            {
                Err(unavailable(
                    "read a partition stream's state",
                    "the stream has no leader",
                ))
            }
            Response::Ok(info) => {
                let state = &info.state;
                let high_watermark = Offset(state.last_sequence);
                let earliest = if state.messages == 0 {
                    high_watermark
                } else {
                    Offset(state.first_sequence.saturating_sub(1))
                };
                Ok(Some(Bounds {
                    earliest,
                    high_watermark,
                    size_bytes: state.bytes,
                    keys_count: state.subjects_count,
                    created_ns: info.created.unix_timestamp_nanos(),
                }))
            }
            Response::Err { error } if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND => {
                Ok(None)
            }
            Response::Err { error } => Err(unavailable("read a partition stream's state", error)),
        }
    }

    /// The newest message on `subject`, from the leader; `None` when there is none.
    ///
    /// # Errors
    /// [`Error::Unavailable`]; [`Error::Inconsistent`] for a message Stele did not write.
    pub async fn last_on_subject(&self, subject: &str) -> Result<Option<Positioned>> {
        let stream = self
            .jetstream
            .get_stream_no_info(&self.name)
            .await
            .map_err(|error| unavailable("name a partition stream", error))?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(found) => self
                .decoded(found.sequence, &found.headers, &found.payload)
                .map(Some),
            Err(error) if error.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(error) => Err(unavailable("read a key's newest event", error)),
        }
    }

    /// The message at `offset`, from the leader; `None` when none is retained there.
    ///
    /// # Errors
    /// [`Error::Unavailable`]; [`Error::Inconsistent`] for a message Stele did not write.
    pub async fn at(&self, offset: Offset) -> Result<Option<Positioned>> {
        let stream = self
            .jetstream
            .get_stream_no_info(&self.name)
            .await
            .map_err(|error| unavailable("name a partition stream", error))?;
        match stream.get_raw_message(offset.0 + 1).await {
            Ok(found) => self
                .decoded(found.sequence, &found.headers, &found.payload)
                .map(Some),
            Err(error) if error.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(error) => Err(unavailable("read an event", error)),
        }
    }

    fn decoded(&self, sequence: u64, headers: &HeaderMap, payload: &[u8]) -> Result<Positioned> {
        let message = message::decode(headers, payload).map_err(|error| self.damaged(sequence, error))?;
        Ok(Positioned {
            offset: Offset(sequence - 1),
            message,
            write: headers.get(WRITE_HEADER).map(|value| value.as_str().to_string()),
        })
    }

    /// Up to `count` messages from `from` (on `subject` only, when given) and
    /// about `bytes_max` bytes, in one batched direct get that any replica may
    /// answer.
    ///
    /// # Errors
    /// [`Error::Unavailable`]; [`Error::Inconsistent`] for a message Stele did not write.
    pub async fn batch(
        &self,
        from: Offset,
        count: usize,
        bytes_max: Option<u64>,
        subject: Option<&str>,
    ) -> Result<Batch> {
        let count = count.clamp(1, BATCH_COUNT_MAX);
        let mut request = serde_json::json!({ "seq": from.0 + 1, "batch": count });
        if let Some(bytes_max) = bytes_max {
            // The server parses an int: a larger figure is a malformed request.
            request["max_bytes"] = bytes_max.min(i32::MAX as u64).into();
        }
        if let Some(subject) = subject {
            request["next_by_subj"] = subject.into();
        }
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|error| unavailable("read a partition range", error))?;
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", self.name),
                inbox,
                request.to_string().into(),
            )
            .await
            .map_err(|error| unavailable("read a partition range", error))?;
        let mut batch = Batch::default();
        let deadline = tokio::time::Instant::now() + REPLY_WAIT_MAX;
        loop {
            let reply = match tokio::time::timeout_at(deadline, replies.next()).await {
                Ok(Some(reply)) => reply,
                Ok(None) => {
                    return Err(unavailable(
                        "read a partition range",
                        "the reply subscription ended",
                    ));
                }
                Err(_) => return Err(unavailable("read a partition range", "no reply in time")),
            };
            if let Some(status) = reply.status {
                // 204: the end of the batch; 404: nothing at or after `from`.
                let code = status.as_u16();
                if code == 204 || code == 404 {
                    batch.pending = reply
                        .headers
                        .as_ref()
                        .and_then(|headers| headers.get("Nats-Num-Pending"))
                        .and_then(|value| value.as_str().parse().ok());
                    return Ok(batch);
                }
                if code != 200 {
                    return Err(unavailable(
                        "read a partition range",
                        format!("status {code} {:?}", reply.description),
                    ));
                }
            }
            let headers = reply.headers.unwrap_or_default();
            let sequence: u64 = headers
                .get("Nats-Sequence")
                .and_then(|value| value.as_str().parse().ok())
                .ok_or_else(|| unavailable("read a partition range", "a reply without Nats-Sequence"))?;
            batch
                .messages
                .push(self.decoded(sequence, &headers, &reply.payload)?);
            if batch.messages.len() == count {
                // The server ends a full batch with an EOB too; when it does not
                // (older servers), the count says the batch is complete.
                if let Ok(Some(reply)) = tokio::time::timeout(Duration::from_millis(50), replies.next()).await
                    && reply.status.is_some()
                {
                    batch.pending = reply
                        .headers
                        .as_ref()
                        .and_then(|headers| headers.get("Nats-Num-Pending"))
                        .and_then(|value| value.as_str().parse().ok());
                }
                return Ok(batch);
            }
        }
    }

    /// Calls `visit` with every message from `from` up to `until` (exclusive),
    /// headers only (payloads empty), pushed by an ordered consumer: for
    /// rebuilding a writer's view of a long partition, several times faster
    /// than ranges of direct gets (no payloads, no request per batch).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the consumer cannot be made or goes quiet
    /// for [`crate::REACHABLE_WAIT_MAX`]; [`Error::Inconsistent`] for a
    /// message Stele did not write; `visit`'s error.
    pub async fn replay(
        &self,
        from: Offset,
        until: Offset,
        mut visit: impl FnMut(Positioned) -> Result<()>,
    ) -> Result<()> {
        use async_nats::jetstream::consumer::{DeliverPolicy, push};
        if from >= until {
            return Ok(());
        }
        let stream = self
            .jetstream
            .get_stream_no_info(&self.name)
            .await
            .map_err(|error| unavailable("name a partition stream", error))?;
        let consumer = stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                headers_only: true,
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from.0 + 1,
                },
                ..push::OrderedConfig::default()
            })
            .await
            .map_err(|error| unavailable("replay a partition", error))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|error| unavailable("replay a partition", error))?;
        loop {
            let message = match tokio::time::timeout(crate::REACHABLE_WAIT_MAX, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(error))) => return Err(unavailable("replay a partition", error)),
                Ok(None) => return Err(unavailable("replay a partition", "the consumer ended")),
                Err(_) => return Err(unavailable("replay a partition", "the consumer went quiet")),
            };
            let sequence = message
                .info()
                .map_err(|error| unavailable("replay a partition", error))?
                .stream_sequence;
            let headers = message.headers.clone().unwrap_or_default();
            let positioned = self.decoded(sequence, &headers, &[])?;
            let done = positioned.offset.next() >= until;
            visit(positioned)?;
            if done {
                return Ok(());
            }
        }
    }

    /// [`PartitionStream::batch`], asked again while the answer stops short of
    /// `known` (an offset the leader said is stored) though the replica said
    /// nothing is pending: a lagging replica answered.
    ///
    /// # Errors
    /// As [`PartitionStream::batch`]; [`Error::Unavailable`] when no replica
    /// catches up in time.
    pub async fn batch_reaching(
        &self,
        from: Offset,
        count: usize,
        bytes_max: Option<u64>,
        subject: Option<&str>,
        known: Offset,
    ) -> Result<Batch> {
        let deadline = tokio::time::Instant::now() + crate::REACHABLE_WAIT_MAX;
        for tries in 1.. {
            let batch = match self.batch(from, count, bytes_max, subject).await {
                Ok(batch) => batch,
                Err(Error::Unavailable { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(STALE_RETRY_PAUSE).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let reached = batch.messages.last().is_some_and(|last| last.offset >= known);
            let limited =
                batch.messages.len() >= count.clamp(1, BATCH_COUNT_MAX) || batch.pending.unwrap_or(0) > 0;
            if reached || limited || known < from {
                return Ok(batch);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(unavailable(
                    "read a partition range",
                    "no replica caught up with the leader in time",
                ));
            }
            if tries % 8 == 0 {
                // Still short: the stream may have been deleted (and made
                // again, smaller) since the leader told the caller of `known`.
                match self.bounds().await? {
                    None => return Err(Error::TopicNotFound(self.topic.clone())),
                    Some(bounds) if bounds.high_watermark <= known => return Ok(batch),
                    Some(_) => {}
                }
            }
            tokio::time::sleep(STALE_RETRY_PAUSE).await;
        }
        unreachable!("the loop returns")
    }
}

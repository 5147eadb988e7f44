//! Consumer groups: the admin calls on [`Client`] (create, describe, list,
//! delete, seek, parked events), the raw `Consume` stream ([`ConsumeStream`])
//! and [`GroupConsumer`], a member that runs a handler per delivery, settles it
//! with the handler's [`Settlement`], keeps its lease alive and joins again
//! after a lost connection.
//!
//! What the server guarantees (proto, `Consume`): several members share a
//! topic's events; each key is delivered in sequence order to one member at a
//! time, with at most one unsettled delivery per key, so the next event of a
//! key is delivered only after the previous one was acked or parked; different
//! keys flow in parallel. A delivery is settled by the member (ack, retry,
//! park) or delivered again when its lease expires, when the member's stream
//! ends, or when another stream joins with the same instance id.
//!
//! Delivery is at least once: an event whose handler ran may be delivered
//! again (a lost ack, a lease that expired during a slow handler, a server
//! crash before the ack was stored). **Process effects idempotently by
//! (topic, partition, offset)**, which names the event for good (a redriven
//! parked event keeps its original position); the delivery id changes with
//! every attempt and is only good for settling.
//!
//! Invariant: a delivery is settled at most once, and only on the stream that
//! delivered it. A new stream is a new member epoch for the server, which
//! refuses settles of an older epoch (`DELIVERY_STALE`); so when a stream is
//! lost, the handlers still running for it finish but their results are
//! dropped, and the deliveries it held are forgotten (the server delivers them
//! again).
//!
//! Invariant: [`GroupConsumer`] never reorders the settles of one key: the
//! server never gives it two unsettled deliveries of one key, and each
//! delivery is settled by its own handler's result once that handler returns.
//!
//! It deliberately does not order, filter or deduplicate deliveries itself:
//! ordering per key is the server's, and deduplication needs the handler's own
//! store of effects.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use stele_engine::Sequence;
use stele_engine::error::ErrorKind;
use stele_engine::event::{Offset, PartitionId, RecordedEvent};
use stele_wire::convert;
use stele_wire::proto;

use crate::{
    Client, ClientError, ClientResult, ConnectOptions, RetryPolicy, ServerUrl, kind_of_code, status_error,
};

/// Requests queued on a `Consume` stream before a sender waits.
const CONSUME_OUTBOUND_CAPACITY: usize = 256;
/// Most delivery ids in one `ack` or `extend` message.
const SETTLE_BATCH_IDS_MAX: usize = 1000;
/// The lease assumed when a server announces none (the proto's default).
const LEASE_DEFAULT: Duration = Duration::from_secs(30);
/// How long a member waits for any message (heartbeats included) before it
/// takes the stream for dead.
pub const GROUP_IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// How long a graceful stop waits for the server to end the stream.
pub const GROUP_CLOSE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// What a group does with an event whose deliveries are exhausted
/// ([`GroupSettings::deliveries_max`] deliveries retried or expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExhaustedPolicy {
    /// Append it to the group's dead-letter topic and go on with the key's
    /// next event; [`Client::list_parked`] lists it.
    #[default]
    Park,
    /// Stop the key until [`Client::redrive_parked`]; other keys flow on.
    Block,
}

/// Where a new group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupStart {
    /// Only events appended after the group is created.
    #[default]
    Latest,
    /// Every retained event.
    Earliest,
}

/// How a group delivers. On creation, zero (and an empty topic) takes the
/// server's default; a group as described has every field filled in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupSettings {
    /// How long a member holds a delivery before the server takes it back
    /// (default 30000, 100 to 3600000); [`GroupConsumer`] extends it.
    pub lease_ms: u64,
    /// Deliveries of one event before the exhausted policy applies (default 10).
    pub deliveries_max: u32,
    /// The delay before delivering again after a retry without a delay, or
    /// after a lease expired (default 1000); it doubles per delivery up to
    /// `backoff_max_ms` (default 60000).
    pub backoff_initial_ms: u64,
    /// The longest such delay.
    pub backoff_max_ms: u64,
    /// Unsettled deliveries one member holds at most (default 64); a member's
    /// window may ask for fewer.
    pub in_flight_per_member_max: u32,
    /// Where parked events go (default `<topic>.parked`).
    pub dead_letter_topic: String,
    /// What happens to an event whose deliveries are exhausted.
    pub on_exhausted: ExhaustedPolicy,
}

/// A new group's settings and start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupOptions {
    /// How it delivers; zero fields take the server's defaults.
    pub settings: GroupSettings,
    /// Where it starts.
    pub start: GroupStart,
}

/// Where [`Client::seek_group`] moves a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupSeek {
    /// Every partition to its oldest retained event.
    Earliest,
    /// Every partition to its high watermark: everything so far counts as settled.
    Latest,
    /// Every partition to its first event at or after this time (Unix ms).
    Timestamp(i64),
    /// These partitions to these offsets; the others keep their position.
    Offsets(Vec<(PartitionId, Offset)>),
}

/// One partition of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupPartitionInfo {
    /// The partition.
    pub partition: PartitionId,
    /// Every event before this offset is settled.
    pub floor: Offset,
    /// Events at or after the floor settled already (acked or parked).
    pub settled_above_floor_count: u64,
    /// The partition's high watermark.
    pub high_watermark: Offset,
    /// Events not yet settled.
    pub lag: u64,
}

/// A member connected to a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMemberInfo {
    /// The name it joined with.
    pub instance_id: String,
    /// Grows with every join to the group.
    pub member_epoch: u64,
    /// Unsettled deliveries it may hold.
    pub window: u32,
    /// Unsettled deliveries it holds now.
    pub in_flight_count: u32,
    /// Deliveries it acked since it joined.
    pub acked_count: u64,
    /// When it joined (Unix ms).
    pub joined_at_ms: u64,
}

/// A group with its positions, members and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group's name.
    pub name: String,
    /// The topic it consumes.
    pub topic: String,
    /// The settings in effect, defaults filled in.
    pub settings: GroupSettings,
    /// Every partition of the topic.
    pub partitions: Vec<GroupPartitionInfo>,
    /// The members connected now.
    pub members: Vec<GroupMemberInfo>,
    /// Unsettled events over all partitions.
    pub lag: u64,
    /// Deliveries held by members now.
    pub in_flight_count: u64,
    /// Since the server started: deliveries after the first of an event.
    pub redelivered_count: u64,
    /// Since the server started: events parked.
    pub parked_count: u64,
    /// Keys stopped by [`ExhaustedPolicy::Block`].
    pub blocked_keys_count: u64,
    /// Age of the oldest unsettled event the group has read (0 when none).
    pub oldest_unsettled_age_ms: u64,
    /// When the group was created (Unix ms).
    pub created_at_ms: u64,
}

/// An event a group gave up on (parked in its dead-letter topic), or a key it
/// stopped at ([`ExhaustedPolicy::Block`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedEventInfo {
    /// Where it is stored in the dead-letter topic (0 for a blocked key).
    pub dead_letter_partition: PartitionId,
    /// Where it is stored in the dead-letter topic (0 for a blocked key).
    pub dead_letter_offset: Offset,
    /// The original event's partition.
    pub partition: PartitionId,
    /// The original event's offset.
    pub offset: Offset,
    /// The original event's key.
    pub key: Vec<u8>,
    /// The original event's key sequence.
    pub sequence: Sequence,
    /// The original event's type.
    pub event_type: String,
    /// Why it was parked (the handler's reason, or why deliveries were exhausted).
    pub reason: String,
    /// Deliveries made.
    pub attempts: u32,
    /// A blocked key at this event, not a parked event.
    pub blocked: bool,
}

/// What [`Client::redrive_parked`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redriven {
    /// Parked events scheduled for delivery again.
    pub redriven_count: u64,
    /// Blocked keys that flow again.
    pub unblocked_keys_count: u64,
}

impl GroupSettings {
    fn to_proto(&self) -> proto::GroupSettings {
        proto::GroupSettings {
            lease_ms: self.lease_ms,
            max_deliveries: self.deliveries_max,
            backoff_initial_ms: self.backoff_initial_ms,
            backoff_max_ms: self.backoff_max_ms,
            max_in_flight_per_member: self.in_flight_per_member_max,
            dead_letter_topic: self.dead_letter_topic.clone(),
            on_exhausted: match self.on_exhausted {
                ExhaustedPolicy::Park => proto::ExhaustedPolicy::Park,
                ExhaustedPolicy::Block => proto::ExhaustedPolicy::Block,
            } as i32,
        }
    }

    fn from_proto(settings: proto::GroupSettings) -> ClientResult<GroupSettings> {
        let on_exhausted = match proto::ExhaustedPolicy::try_from(settings.on_exhausted) {
            Ok(proto::ExhaustedPolicy::Park) => ExhaustedPolicy::Park,
            Ok(proto::ExhaustedPolicy::Block) => ExhaustedPolicy::Block,
            Err(_) => {
                return Err(ClientError::Protocol(format!(
                    "unknown exhausted policy {}",
                    settings.on_exhausted
                )));
            }
        };
        Ok(GroupSettings {
            lease_ms: settings.lease_ms,
            deliveries_max: settings.max_deliveries,
            backoff_initial_ms: settings.backoff_initial_ms,
            backoff_max_ms: settings.backoff_max_ms,
            in_flight_per_member_max: settings.max_in_flight_per_member,
            dead_letter_topic: settings.dead_letter_topic,
            on_exhausted,
        })
    }
}

/// The group of a response that must carry one (`rpc` names the call).
fn group_of(group: Option<proto::Group>, rpc: &str) -> ClientResult<GroupInfo> {
    let group = group.ok_or_else(|| ClientError::Protocol(format!("{rpc} answered without the group")))?;
    group_from_proto(group)
}

fn group_from_proto(group: proto::Group) -> ClientResult<GroupInfo> {
    Ok(GroupInfo {
        name: group.name,
        topic: group.topic,
        settings: GroupSettings::from_proto(group.settings.unwrap_or_default())?,
        partitions: group
            .partitions
            .into_iter()
            .map(|partition| GroupPartitionInfo {
                partition: PartitionId(partition.partition),
                floor: Offset(partition.floor),
                settled_above_floor_count: partition.settled_above_floor,
                high_watermark: Offset(partition.high_watermark),
                lag: partition.lag,
            })
            .collect(),
        members: group
            .members
            .into_iter()
            .map(|member| GroupMemberInfo {
                instance_id: member.instance_id,
                member_epoch: member.member_epoch,
                window: member.window,
                in_flight_count: member.in_flight,
                acked_count: member.acked_count,
                joined_at_ms: member.joined_at_ms,
            })
            .collect(),
        lag: group.lag,
        in_flight_count: group.in_flight,
        redelivered_count: group.redelivered_count,
        parked_count: group.parked_count,
        blocked_keys_count: group.blocked_keys_count,
        oldest_unsettled_age_ms: group.oldest_unsettled_age_ms,
        created_at_ms: group.created_at_ms,
    })
}

fn parked_from_proto(event: proto::ParkedEvent) -> ParkedEventInfo {
    ParkedEventInfo {
        dead_letter_partition: PartitionId(event.dead_letter_partition),
        dead_letter_offset: Offset(event.dead_letter_offset),
        partition: PartitionId(event.partition),
        offset: Offset(event.offset),
        key: event.key,
        sequence: Sequence(event.sequence),
        event_type: event.r#type,
        reason: event.reason,
        attempts: event.attempts,
        blocked: event.blocked,
    }
}

fn seek_to_proto(seek: GroupSeek) -> proto::seek_group_request::Position {
    use proto::seek_group_request::Position;
    match seek {
        GroupSeek::Earliest => Position::Earliest(proto::Empty {}),
        GroupSeek::Latest => Position::Latest(proto::Empty {}),
        GroupSeek::Timestamp(timestamp_ms) => Position::TimestampMs(timestamp_ms),
        // A partition given twice keeps its last offset.
        GroupSeek::Offsets(offsets) => Position::Offsets(proto::PartitionOffsets {
            offsets: offsets
                .into_iter()
                .map(|(partition, offset)| (partition.0, offset.0))
                .collect(),
        }),
    }
}

impl Client {
    /// Creates a consumer group on `topic`; returns it with the settings in
    /// effect. The dead-letter topic is created with the server's defaults
    /// when missing.
    ///
    /// # Errors
    /// `AlreadyExists` ([`ErrorKind::GroupExists`]) when the name is taken;
    /// `NotFound` for an unknown topic; `InvalidArgument` for a bad name or setting.
    pub async fn create_group(
        &self,
        name: &str,
        topic: &str,
        options: &GroupOptions,
    ) -> ClientResult<GroupInfo> {
        let (url, mut stub) = self.stub()?;
        let response = stub
            .create_group(proto::CreateGroupRequest {
                name: name.to_string(),
                topic: topic.to_string(),
                settings: Some(options.settings.to_proto()),
                start: match options.start {
                    GroupStart::Latest => proto::GroupStart::Latest,
                    GroupStart::Earliest => proto::GroupStart::Earliest,
                } as i32,
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        group_of(response.group, "CreateGroup")
    }

    /// A group with its positions, members and counters.
    ///
    /// # Errors
    /// `NotFound` ([`ErrorKind::GroupNotFound`]) for an unknown group.
    pub async fn describe_group(&self, name: &str) -> ClientResult<GroupInfo> {
        let (url, mut stub) = self.stub()?;
        let response = stub
            .describe_group(proto::DescribeGroupRequest {
                name: name.to_string(),
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        group_of(response.group, "DescribeGroup")
    }

    /// Every group the caller may read, or only those of `topic`.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn list_groups(&self, topic: Option<&str>) -> ClientResult<Vec<GroupInfo>> {
        let (url, mut stub) = self.stub()?;
        let response = stub
            .list_groups(proto::ListGroupsRequest {
                topic: topic.unwrap_or_default().to_string(),
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        response.groups.into_iter().map(group_from_proto).collect()
    }

    /// Deletes a group and its state; its members' streams end with
    /// `NotFound`. Its parked events stay in the dead-letter topic.
    ///
    /// # Errors
    /// `NotFound` ([`ErrorKind::GroupNotFound`]) for an unknown group.
    pub async fn delete_group(&self, name: &str) -> ClientResult<()> {
        let (url, mut stub) = self.stub()?;
        stub.delete_group(proto::DeleteGroupRequest {
            name: name.to_string(),
        })
        .await
        .map_err(|status| status_error(&url, &status))?;
        Ok(())
    }

    /// Moves a group: everything before the new position counts as settled,
    /// nothing at or after it does. Deliveries in flight are abandoned (their
    /// settles are refused with `DELIVERY_STALE`).
    ///
    /// # Errors
    /// `NotFound` for an unknown group; `InvalidArgument` for an unknown partition.
    pub async fn seek_group(&self, name: &str, seek: GroupSeek) -> ClientResult<GroupInfo> {
        let (url, mut stub) = self.stub()?;
        let response = stub
            .seek_group(proto::SeekGroupRequest {
                name: name.to_string(),
                position: Some(seek_to_proto(seek)),
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        group_of(response.group, "SeekGroup")
    }

    /// A group's parked events not yet redriven and its blocked keys, oldest
    /// first, at most `count_max` (0 = 1000).
    ///
    /// # Errors
    /// `NotFound` for an unknown group.
    pub async fn list_parked(&self, name: &str, count_max: u32) -> ClientResult<Vec<ParkedEventInfo>> {
        let (url, mut stub) = self.stub()?;
        let response = stub
            .list_parked(proto::ListParkedRequest {
                name: name.to_string(),
                max_events: count_max,
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        Ok(response.events.into_iter().map(parked_from_proto).collect())
    }

    /// Delivers a group's parked events (those listed now) again and unblocks
    /// its blocked keys, with attempts starting again from 1.
    ///
    /// # Errors
    /// `NotFound` for an unknown group.
    pub async fn redrive_parked(&self, name: &str) -> ClientResult<Redriven> {
        let (url, mut stub) = self.stub()?;
        let response = stub
            .redrive_parked(proto::RedriveParkedRequest {
                name: name.to_string(),
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        Ok(Redriven {
            redriven_count: response.redriven_count,
            unblocked_keys_count: response.unblocked_keys_count,
        })
    }

    /// Joins `group` as the member `instance_id` and opens its raw delivery
    /// stream: the first item is [`ConsumeItem::Joined`], then deliveries,
    /// refusals and heartbeats. `window` is the most unsettled deliveries it
    /// accepts at once (0 = the group's `in_flight_per_member_max`).
    ///
    /// A second stream with the same instance id replaces this one, which
    /// then ends with `Aborted` ([`ErrorKind::MemberReplaced`]). Most users
    /// want [`GroupConsumer`], which settles, extends and rejoins by itself.
    ///
    /// # Errors
    /// `NotFound` ([`ErrorKind::GroupNotFound`]); `InvalidArgument` for a bad
    /// instance id; transport errors. Errors the server sends after opening
    /// the stream come from [`ConsumeStream::next`].
    pub async fn consume(&self, group: &str, instance_id: &str, window: u32) -> ClientResult<ConsumeStream> {
        let (url, mut stub) = self.stub()?;
        let (outbound, receiver) = mpsc::channel(CONSUME_OUTBOUND_CAPACITY);
        let join = proto::ConsumeRequest {
            kind: Some(proto::consume_request::Kind::Join(proto::Join {
                group: group.to_string(),
                instance_id: instance_id.to_string(),
                window,
            })),
        };
        outbound
            .try_send(join)
            .expect("a new channel with capacity has room for the join");
        let inbound = stub
            .consume(ReceiverStream::new(receiver))
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        Ok(ConsumeStream {
            sender: ConsumeSender {
                url: url.clone(),
                outbound,
            },
            url,
            inbound: Inbound::Grpc(Box::new(inbound)),
        })
    }

    /// A builder for a [`GroupConsumer`] of `group` named `instance_id`.
    pub fn group_consumer(&self, group: &str, instance_id: &str) -> GroupConsumerBuilder {
        GroupConsumerBuilder {
            client: self.clone(),
            group: group.to_string(),
            instance_id: instance_id.to_string(),
            options: GroupConsumerOptions::default(),
        }
    }
}

/// The member accepted by the server: the first item of a [`ConsumeStream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// Grows with every join; deliveries carry it.
    pub member_epoch: u64,
    /// The window granted: the most unsettled deliveries held at once.
    pub window: u32,
    /// How long a delivery is held before the server takes it back, unless extended.
    pub lease_ms: u64,
}

/// One event delivered to this member, which holds its key until it settles
/// the delivery or the lease expires.
///
/// The event's topic is the group's. Deliveries are at least once: process
/// effects idempotently by (topic, `event.partition`, `event.offset`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The event; for a redriven parked event, its original partition, offset
    /// and sequence.
    pub event: RecordedEvent,
    /// 1 for the first delivery of the event to the group, then one more per
    /// redelivery.
    pub attempt: u32,
    /// Unix ms after which the server takes the delivery back (the server's clock).
    pub lease_deadline_ms: i64,
    /// Names this delivery in settles; opaque.
    pub delivery_id: String,
    /// The epoch of the member it was delivered to.
    pub member_epoch: u64,
}

/// A settle the server refused: the delivery is no longer held by this member
/// (its lease expired, the member joined again, the group was seeked, or it
/// was settled already). Nothing changed; the stream goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleRefused {
    /// The delivery named by the settle.
    pub delivery_id: String,
    /// The engine's kind of the code ([`ErrorKind::DeliveryStale`]).
    pub kind: Option<ErrorKind>,
    /// Stele's numeric error code (34 for `DELIVERY_STALE`).
    pub error_code: Option<u32>,
    /// The server's message.
    pub message: String,
}

/// One message of a [`ConsumeStream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumeItem {
    /// The first message: the member is in.
    Joined(Joined),
    /// An event to process and settle.
    Delivery(Delivery),
    /// A settle that changed nothing.
    Refused(SettleRefused),
    /// Settles of this member that are durable now: these deliveries are
    /// never delivered again, not even after a server crash.
    Settled {
        /// The deliveries.
        delivery_ids: Vec<String>,
    },
    /// Nothing else to send for a while; the high watermarks now.
    Heartbeat {
        /// Per partition, the high watermark now.
        high_watermarks: BTreeMap<PartitionId, Offset>,
    },
}

fn consume_item(message: proto::ConsumeResponse) -> ClientResult<ConsumeItem> {
    use proto::consume_response::Kind;
    match message.kind {
        Some(Kind::Joined(joined)) => Ok(ConsumeItem::Joined(Joined {
            member_epoch: joined.member_epoch,
            window: joined.window,
            lease_ms: joined.lease_ms,
        })),
        Some(Kind::Delivery(delivery)) => {
            let event = delivery
                .event
                .ok_or_else(|| ClientError::Protocol("delivery without an event".into()))?;
            Ok(ConsumeItem::Delivery(Delivery {
                event: convert::recorded_from_proto(event),
                attempt: delivery.attempt,
                lease_deadline_ms: delivery.lease_deadline_ms,
                delivery_id: delivery.delivery_id,
                member_epoch: delivery.member_epoch,
            }))
        }
        Some(Kind::Refused(refused)) => {
            let error_code = u32::try_from(refused.code).ok().filter(|code| *code != 0);
            Ok(ConsumeItem::Refused(SettleRefused {
                delivery_id: refused.delivery_id,
                kind: error_code.and_then(kind_of_code),
                error_code,
                message: refused.message,
            }))
        }
        Some(Kind::Settled(settled)) => Ok(ConsumeItem::Settled {
            delivery_ids: settled.delivery_ids,
        }),
        Some(Kind::Heartbeat(heartbeat)) => Ok(ConsumeItem::Heartbeat {
            high_watermarks: heartbeat
                .high_watermarks
                .into_iter()
                .map(|(partition, offset)| (PartitionId(partition), Offset(offset)))
                .collect(),
        }),
        None => Err(ClientError::Protocol("consume message without a kind".into())),
    }
}

/// A retry's delay on the wire: 0 asks for the group's backoff, so an
/// explicit delay is at least 1 ms (rounded up to whole milliseconds).
fn delay_ms(delay: Option<Duration>) -> u64 {
    match delay {
        None => 0,
        Some(delay) => u64::try_from(delay.as_nanos().div_ceil(1_000_000))
            .unwrap_or(u64::MAX)
            .max(1),
    }
}

/// The request side of a [`ConsumeStream`]: settles and lease extensions.
/// Cheap to clone; the stream's request side ends when every clone (and the
/// stream) is dropped.
#[derive(Debug, Clone)]
pub struct ConsumeSender {
    url: String,
    outbound: mpsc::Sender<proto::ConsumeRequest>,
}

impl ConsumeSender {
    async fn send(&self, kind: proto::consume_request::Kind) -> ClientResult<()> {
        self.outbound
            .send(proto::ConsumeRequest { kind: Some(kind) })
            .await
            .map_err(|_| ClientError::Closed(format!("the consume stream to {} ended", self.url)))
    }

    /// Settles deliveries for good: processed. Nothing is sent for no ids.
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the stream has ended.
    pub async fn ack(&self, delivery_ids: Vec<String>) -> ClientResult<()> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        self.send(proto::consume_request::Kind::Ack(proto::Ack { delivery_ids }))
            .await
    }

    /// Not processed: the event is delivered again (to whichever member holds
    /// its key then, with attempt + 1) after `delay`, or after the group's
    /// backoff for `None`, unless its deliveries are exhausted. The key stays
    /// held meanwhile: its next event waits.
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the stream has ended.
    pub async fn retry(&self, delivery_id: &str, delay: Option<Duration>) -> ClientResult<()> {
        self.send(proto::consume_request::Kind::Retry(proto::Retry {
            delivery_id: delivery_id.to_string(),
            delay_ms: delay_ms(delay),
        }))
        .await
    }

    /// Gives up on the event: it goes to the group's dead-letter topic with
    /// `reason` (the server keeps at most 1024 bytes of it) and the key's next
    /// event follows.
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the stream has ended.
    pub async fn park(&self, delivery_id: &str, reason: &str) -> ClientResult<()> {
        self.send(proto::consume_request::Kind::Park(proto::Park {
            delivery_id: delivery_id.to_string(),
            reason: reason.to_string(),
        }))
        .await
    }

    /// Renews the leases of deliveries held (deadline = now + the group's
    /// lease). Nothing is sent for no ids.
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the stream has ended.
    pub async fn extend(&self, delivery_ids: Vec<String>) -> ClientResult<()> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        self.send(proto::consume_request::Kind::Extend(proto::Extend {
            delivery_ids,
        }))
        .await
    }
}

/// Where a [`ConsumeStream`]'s messages come from.
enum Inbound {
    Grpc(Box<Streaming<proto::ConsumeResponse>>),
    /// Messages a test plays the server with.
    #[cfg(test)]
    Scripted(mpsc::Receiver<ClientResult<proto::ConsumeResponse>>),
}

/// A member's raw `Consume` stream: [`ConsumeStream::next`] yields what the
/// server sends, and the settle methods (also on [`ConsumeStream::sender`])
/// answer deliveries. Dropping it leaves the group: the server delivers what
/// it held to other members.
pub struct ConsumeStream {
    url: String,
    sender: ConsumeSender,
    inbound: Inbound,
}

impl std::fmt::Debug for ConsumeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumeStream")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl ConsumeStream {
    /// The next message; `None` when the server ended the stream (shutting
    /// down, or after the request side ended).
    ///
    /// # Errors
    /// The status the stream ended with: `NotFound` when the group was
    /// deleted, `Aborted` ([`ErrorKind::MemberReplaced`]) when another stream
    /// joined with the same instance id, transport errors.
    pub async fn next(&mut self) -> Option<ClientResult<ConsumeItem>> {
        match &mut self.inbound {
            Inbound::Grpc(inbound) => match inbound.message().await {
                Ok(Some(message)) => Some(consume_item(message)),
                Ok(None) => None,
                Err(status) => Some(Err(status_error(&self.url, &status))),
            },
            #[cfg(test)]
            Inbound::Scripted(receiver) => match receiver.recv().await? {
                Ok(message) => Some(consume_item(message)),
                Err(error) => Some(Err(error)),
            },
        }
    }

    /// A handle that settles deliveries of this stream from other tasks.
    pub fn sender(&self) -> ConsumeSender {
        self.sender.clone()
    }

    /// As [`ConsumeSender::ack`].
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the stream has ended.
    pub async fn ack(&self, delivery_ids: Vec<String>) -> ClientResult<()> {
        self.sender.ack(delivery_ids).await
    }

    /// As [`ConsumeSender::retry`].
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the stream has ended.
    pub async fn retry(&self, delivery_id: &str, delay: Option<Duration>) -> ClientResult<()> {
        self.sender.retry(delivery_id, delay).await
    }

    /// As [`ConsumeSender::park`].
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the stream has ended.
    pub async fn park(&self, delivery_id: &str, reason: &str) -> ClientResult<()> {
        self.sender.park(delivery_id, reason).await
    }

    /// As [`ConsumeSender::extend`].
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the stream has ended.
    pub async fn extend(&self, delivery_ids: Vec<String>) -> ClientResult<()> {
        self.sender.extend(delivery_ids).await
    }

    /// Leaves the group gracefully: ends the request side once everything
    /// sent so far is out (the request side stays open while clones of
    /// [`ConsumeStream::sender`] live), then reads until the server ends the
    /// stream. Deliveries that arrive meanwhile are not settled: the server
    /// delivers them again. Bound it with a timeout: how soon the server ends
    /// the stream is its choice.
    ///
    /// # Errors
    /// The status the stream ended with, if it was an error.
    pub async fn close(mut self) -> ClientResult<()> {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.sender.outbound, closed));
        // Bounded by the server ending the stream (the caller's timeout otherwise).
        loop {
            match self.next().await {
                None => return Ok(()),
                Some(Err(error)) => return Err(error),
                Some(Ok(_)) => {}
            }
        }
    }
}

/// What a [`GroupConsumer`]'s handler decided about a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Processed: settled for good.
    Ack,
    /// Not processed: deliver it again after `delay` (at least 1 ms, rounded
    /// up to whole milliseconds), or after the group's backoff for `None`,
    /// with attempt + 1; once its deliveries are exhausted the group's
    /// [`ExhaustedPolicy`] applies. The key's next event waits.
    Retry {
        /// How long to wait at least; `None` takes the group's backoff.
        delay: Option<Duration>,
    },
    /// Give up on it: park it in the group's dead-letter topic with this
    /// reason and go on with the key's next event.
    Park {
        /// Why (the server keeps at most 1024 bytes).
        reason: String,
    },
}

/// A [`GroupConsumer`]'s tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConsumerOptions {
    /// Unsettled deliveries the member accepts at once (0 = the group's
    /// `in_flight_per_member_max`).
    pub window: u32,
    /// Handlers running at once (0 = the window the server granted).
    /// Deliveries beyond it wait in order, their leases extended.
    pub concurrency: usize,
    /// How it waits between attempts to join again; consecutive failed
    /// attempts beyond `attempts_max` stop the consumer with the last error.
    /// The default tries forever: a member is a long-running worker.
    pub retry: RetryPolicy,
    /// A stream that sends nothing (not even a heartbeat) for this long is
    /// taken for dead, and the member joins again.
    pub idle_timeout: Duration,
    /// How long a graceful stop waits for the server to end the stream after
    /// the last settle.
    pub close_timeout: Duration,
}

impl Default for GroupConsumerOptions {
    fn default() -> GroupConsumerOptions {
        GroupConsumerOptions {
            window: 0,
            concurrency: 0,
            retry: RetryPolicy {
                attempts_max: u32::MAX,
                ..RetryPolicy::default()
            },
            idle_timeout: GROUP_IDLE_TIMEOUT_DEFAULT,
            close_timeout: GROUP_CLOSE_TIMEOUT_DEFAULT,
        }
    }
}

/// Builds a [`GroupConsumer`].
#[derive(Debug)]
pub struct GroupConsumerBuilder {
    client: Client,
    group: String,
    instance_id: String,
    options: GroupConsumerOptions,
}

impl GroupConsumerBuilder {
    /// Replaces all options.
    pub fn options(mut self, options: GroupConsumerOptions) -> GroupConsumerBuilder {
        self.options = options;
        self
    }

    /// Unsettled deliveries accepted at once (0 = the group's maximum).
    pub fn window(mut self, window: u32) -> GroupConsumerBuilder {
        self.options.window = window;
        self
    }

    /// Handlers running at once (0 = the window granted).
    pub fn concurrency(mut self, concurrency: usize) -> GroupConsumerBuilder {
        self.options.concurrency = concurrency;
        self
    }

    /// How it waits between attempts to join again.
    pub fn retry(mut self, retry: RetryPolicy) -> GroupConsumerBuilder {
        self.options.retry = retry;
        self
    }

    /// The consumer; it joins when [`GroupConsumer::run`] is called.
    pub fn build(self) -> GroupConsumer {
        let (shutdown, _) = watch::channel(false);
        GroupConsumer {
            client: self.client,
            group: self.group,
            instance_id: self.instance_id,
            options: self.options,
            counters: GroupCounters::default(),
            shutdown: ShutdownHandle(shutdown),
        }
    }
}

/// Stops a [`GroupConsumer`] gracefully: it takes no new deliveries, lets
/// the running handlers finish and settles their results, then leaves the
/// group. Cheap to clone; stopping twice is stopping once.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    /// Asks the consumer to stop; [`GroupConsumer::run`] returns once it has.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }

    /// Whether a stop was asked for.
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }
}

/// What a [`GroupConsumer`] has done since it was built (all members of one
/// consumer together, across reconnects).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCounts {
    /// Deliveries received.
    pub delivered: u64,
    /// Deliveries acked.
    pub acked: u64,
    /// Deliveries settled with a retry.
    pub retried: u64,
    /// Deliveries parked.
    pub parked: u64,
    /// Settles the server refused (`DELIVERY_STALE`).
    pub refused: u64,
    /// Joins after the first one.
    pub reconnects: u64,
    /// Lease extensions sent, one per delivery extended.
    pub extended: u64,
    /// Deliveries received and never settled: held by a lost stream, or left
    /// at a stop; the server delivers them again.
    pub abandoned: u64,
    /// Settles the server confirmed durable.
    pub confirmed: u64,
}

/// A live view of a [`GroupConsumer`]'s [`GroupCounts`]; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct GroupCounters(Arc<CounterCells>);

#[derive(Debug, Default)]
struct CounterCells {
    delivered: AtomicU64,
    acked: AtomicU64,
    retried: AtomicU64,
    parked: AtomicU64,
    refused: AtomicU64,
    reconnects: AtomicU64,
    extended: AtomicU64,
    abandoned: AtomicU64,
    confirmed: AtomicU64,
}

impl GroupCounters {
    /// The counts now.
    pub fn snapshot(&self) -> GroupCounts {
        let cells = &self.0;
        GroupCounts {
            delivered: cells.delivered.load(Ordering::Relaxed),
            acked: cells.acked.load(Ordering::Relaxed),
            retried: cells.retried.load(Ordering::Relaxed),
            parked: cells.parked.load(Ordering::Relaxed),
            refused: cells.refused.load(Ordering::Relaxed),
            reconnects: cells.reconnects.load(Ordering::Relaxed),
            extended: cells.extended.load(Ordering::Relaxed),
            abandoned: cells.abandoned.load(Ordering::Relaxed),
            confirmed: cells.confirmed.load(Ordering::Relaxed),
        }
    }

    fn add(cell: &AtomicU64, count: usize) {
        cell.fetch_add(count as u64, Ordering::Relaxed);
    }
}

/// A member of a consumer group that processes deliveries with a handler.
///
/// [`GroupConsumer::run`] joins the group and, for each delivery, calls the
/// handler on a task of its own, up to `concurrency` at once, then settles the
/// delivery with the handler's [`Settlement`]: acks of handlers that finish
/// together go out in one message; a handler that panics counts as
/// [`Settlement::Retry`] with the group's backoff. While a handler runs, the
/// delivery's lease is extended every half lease, so a slow handler keeps its
/// delivery.
///
/// Ordering: the server never gives a member two unsettled deliveries of one
/// key, so the handler is never called for a key's next event before the
/// previous one was settled, and per-key order holds across members.
///
/// Delivery is at least once (see the module): process effects idempotently
/// by (topic, partition, offset).
///
/// After a transport error, `Unavailable` or the end of the stream (a server
/// restart) it joins again with the same instance id, waiting between attempts
/// as [`GroupConsumerOptions::retry`] says; deliveries of the lost stream are
/// delivered again by the server, and results of its handlers still running
/// are dropped. Any other error is fatal and [`GroupConsumer::run`] returns it:
/// `NotFound` (the group was deleted), `PermissionDenied`, `Unauthenticated`,
/// `Aborted` with [`ErrorKind::MemberReplaced`] (another process joined with
/// the same instance id), `InvalidArgument`.
///
/// A settle the server refuses (`DELIVERY_STALE`: the lease expired during
/// the handler, or the group was seeked) is counted, logged and otherwise
/// ignored.
pub struct GroupConsumer {
    client: Client,
    group: String,
    instance_id: String,
    options: GroupConsumerOptions,
    counters: GroupCounters,
    shutdown: ShutdownHandle,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("group", &self.group)
            .field("instance_id", &self.instance_id)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl GroupConsumer {
    /// Connects to a server and returns a builder for a member of `group`
    /// named `instance_id`.
    ///
    /// # Errors
    /// As [`Client::connect_with`].
    pub async fn connect(
        url: ServerUrl,
        options: ConnectOptions,
        group: &str,
        instance_id: &str,
    ) -> ClientResult<GroupConsumerBuilder> {
        Ok(Client::connect_with(url, options)
            .await?
            .group_consumer(group, instance_id))
    }

    /// A handle that stops [`GroupConsumer::run`] gracefully.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// The consumer's counters, live.
    pub fn counters(&self) -> GroupCounters {
        self.counters.clone()
    }

    /// Joins the group and processes deliveries with `handler` until stopped
    /// through a [`ShutdownHandle`] (then `Ok`) or by a fatal error. Either
    /// way it returns only once every handler it started has finished.
    ///
    /// # Errors
    /// The fatal error (see [`GroupConsumer`]), or the last transient one once
    /// `retry.attempts_max` consecutive attempts to join failed.
    pub async fn run<F, Fut>(self, handler: F) -> ClientResult<()>
    where
        F: Fn(Delivery) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Settlement> + Send + 'static,
    {
        let client = self.client;
        let group = self.group;
        let instance_id = self.instance_id;
        let window = self.options.window;
        let joiner: Joiner = Box::new(move || {
            let client = client.clone();
            let group = group.clone();
            let instance_id = instance_id.clone();
            Box::pin(async move { client.consume(&group, &instance_id, window).await })
        });
        Runner::new(joiner, self.options, self.counters, self.shutdown, handler)
            .run()
            .await
    }
}

type JoinFuture = Pin<Box<dyn Future<Output = ClientResult<ConsumeStream>> + Send>>;
/// Opens a new stream to the group (sending the join).
type Joiner = Box<dyn FnMut() -> JoinFuture + Send>;

/// The stream of the current member epoch.
struct Session {
    stream: ConsumeStream,
    /// Which stream it is: results of handlers started for another are dropped.
    generation: u64,
    lease: Duration,
    window: u32,
    last_message: Instant,
}

/// A delivery held by the current session, queued or being handled.
struct Held {
    extend_at: Instant,
    /// The server refused a settle or extension of it: it is no longer ours.
    stale: bool,
}

/// A handler task.
struct Running {
    delivery_id: String,
    generation: u64,
}

/// What woke the run loop.
enum Wake {
    Item(ConsumeItem),
    Lost(ClientError),
    Done(Result<(tokio::task::Id, Settlement), tokio::task::JoinError>),
    Extend,
    Shutdown,
}

/// The run loop of a [`GroupConsumer`].
struct Runner<F> {
    joiner: Joiner,
    options: GroupConsumerOptions,
    counters: GroupCounters,
    /// Kept so that the receiver never sees the channel closed.
    _shutdown: ShutdownHandle,
    shutdown: watch::Receiver<bool>,
    handler: Arc<F>,
    session: Option<Session>,
    generation: u64,
    joins: u64,
    /// Consecutive failed joins (or sessions lost before they worked).
    failures: u32,
    /// Whether the current session received anything after joining.
    working: bool,
    held: HashMap<String, Held>,
    queued: VecDeque<Delivery>,
    tasks: JoinSet<Settlement>,
    running: HashMap<tokio::task::Id, Running>,
    acks: Vec<String>,
    stopping: bool,
    fatal: Option<ClientError>,
}

impl<F, Fut> Runner<F>
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Settlement> + Send + 'static,
{
    fn new(
        joiner: Joiner,
        options: GroupConsumerOptions,
        counters: GroupCounters,
        shutdown: ShutdownHandle,
        handler: F,
    ) -> Runner<F> {
        Runner {
            joiner,
            options,
            counters,
            shutdown: shutdown.0.subscribe(),
            _shutdown: shutdown,
            handler: Arc::new(handler),
            session: None,
            generation: 0,
            joins: 0,
            failures: 0,
            working: false,
            held: HashMap::new(),
            queued: VecDeque::new(),
            tasks: JoinSet::new(),
            running: HashMap::new(),
            acks: Vec::new(),
            stopping: false,
            fatal: None,
        }
    }

    async fn run(mut self) -> ClientResult<()> {
        // Bounded by the shutdown handle, a fatal error or the retry policy.
        loop {
            if self.stopping {
                if self.session.is_some() && !self.session_has_tasks() {
                    self.close().await;
                }
                if self.session.is_none() && self.tasks.is_empty() {
                    return self.fatal.take().map_or(Ok(()), Err);
                }
            } else if self.session.is_none() {
                if let Err(error) = self.join().await {
                    self.fail(error);
                }
                continue;
            }
            let wake = self.wait().await;
            let outcome = match wake {
                Wake::Item(item) => self.received(item).await,
                Wake::Lost(error) => {
                    self.lose(error);
                    Ok(())
                }
                Wake::Done(result) => self.finished(result).await,
                Wake::Extend => self.extend().await,
                Wake::Shutdown => {
                    self.stop();
                    Ok(())
                }
            };
            if let Err(error) = outcome {
                // A request that could not be sent (`Closed`) means the call ended.
                let error = match error {
                    ClientError::Closed(_) => self.final_status(error).await,
                    other => other,
                };
                self.lose(error);
            }
        }
    }

    /// Why the stream ended, after a request could not be sent on it: the
    /// status it ended with (a replaced member must not join again and
    /// replace its successor), else `error`.
    async fn final_status(&mut self, error: ClientError) -> ClientError {
        let Some(session) = self.session.as_mut() else {
            return error;
        };
        // Bounded by the idle timeout per message; the call has ended, so the
        // status follows whatever was buffered before it.
        loop {
            match tokio::time::timeout(self.options.idle_timeout, session.stream.next()).await {
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(status))) => return status,
                Ok(None) | Err(_) => return error,
            }
        }
    }

    /// Waits for the next thing to do.
    async fn wait(&mut self) -> Wake {
        let next_extend = self
            .held
            .values()
            .filter(|held| !held.stale)
            .map(|held| held.extend_at)
            .min();
        let idle_timeout = self.options.idle_timeout;
        let stopping = self.stopping;
        let has_tasks = !self.tasks.is_empty();
        let session = self.session.as_mut();
        tokio::select! {
            wake = next_message(session, idle_timeout) => wake,
            done = self.tasks.join_next_with_id(), if has_tasks => match done {
                Some(result) => Wake::Done(result),
                None => unreachable!("the set has tasks"),
            },
            () = sleep_until(next_extend) => Wake::Extend,
            () = stopped(&mut self.shutdown), if !stopping => Wake::Shutdown,
        }
    }

    /// Joins the group, waiting between failed attempts; returns early when
    /// asked to stop.
    ///
    /// # Errors
    /// A fatal error, or the last transient one once the retry policy is spent.
    async fn join(&mut self) -> ClientResult<()> {
        // Bounded by the retry policy, or by a stop.
        loop {
            if self.failures > 0 {
                let delay = self.options.retry.backoff(self.failures);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stopped(&mut self.shutdown) => {
                        self.stop();
                        return Ok(());
                    }
                }
            }
            let opened = tokio::select! {
                opened = open(&mut self.joiner, self.options.idle_timeout) => opened,
                () = stopped(&mut self.shutdown) => {
                    self.stop();
                    return Ok(());
                }
            };
            match opened {
                Ok((stream, joined)) => {
                    self.generation += 1;
                    self.joins += 1;
                    if self.joins > 1 {
                        GroupCounters::add(&self.counters.0.reconnects, 1);
                    }
                    let lease = match joined.lease_ms {
                        0 => LEASE_DEFAULT,
                        lease_ms => Duration::from_millis(lease_ms),
                    };
                    tracing::debug!(
                        member_epoch = joined.member_epoch,
                        window = joined.window,
                        lease_ms = joined.lease_ms,
                        "joined the consumer group"
                    );
                    self.working = false;
                    self.session = Some(Session {
                        stream,
                        generation: self.generation,
                        lease,
                        window: joined.window,
                        last_message: Instant::now(),
                    });
                    return Ok(());
                }
                Err(error) if is_retriable(&error) => {
                    self.failures = self.failures.saturating_add(1);
                    if self.failures >= self.options.retry.attempts_max {
                        return Err(error);
                    }
                    tracing::warn!(error = %error, attempt = self.failures, "cannot join the consumer group; trying again");
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The stream broke: a transient error forgets it (the next round joins
    /// again), any other is fatal.
    fn lose(&mut self, error: ClientError) {
        if !is_retriable(&error) {
            self.fail(error);
            return;
        }
        if self.session.is_none() {
            return;
        }
        tracing::warn!(error = %error, "consume stream lost; joining again");
        self.forget_session();
        if !self.working {
            self.failures = self.failures.saturating_add(1);
        }
        if !self.stopping && self.failures >= self.options.retry.attempts_max {
            self.fail(error);
        }
    }

    /// A fatal error: nothing more is settled; the handlers running finish.
    fn fail(&mut self, error: ClientError) {
        tracing::error!(error = %error, "consumer group member stops");
        self.forget_session();
        self.stopping = true;
        self.fatal.get_or_insert(error);
    }

    /// Drops the stream and what it held; the server delivers it again.
    fn forget_session(&mut self) {
        if self.session.take().is_some() {
            GroupCounters::add(&self.counters.0.abandoned, self.held.len());
        }
        self.held.clear();
        self.queued.clear();
        self.acks.clear();
    }

    /// A graceful stop: no new handler starts, and deliveries not started are
    /// left to the server.
    fn stop(&mut self) {
        if self.stopping {
            return;
        }
        tracing::debug!(running = self.tasks.len(), "consumer group member stopping");
        self.stopping = true;
        GroupCounters::add(&self.counters.0.abandoned, self.queued.len());
        for delivery in self.queued.drain(..) {
            self.held.remove(&delivery.delivery_id);
        }
    }

    /// Whether a handler of the current session is still running.
    fn session_has_tasks(&self) -> bool {
        self.running
            .values()
            .any(|running| running.generation == self.generation)
    }

    /// Leaves the group once the session's settles are out.
    async fn close(&mut self) {
        if let Err(error) = self.flush_acks().await {
            tracing::debug!(error = %error, "the last acks were not sent");
        }
        self.held.clear();
        if let Some(session) = self.session.take() {
            match tokio::time::timeout(self.options.close_timeout, session.stream.close()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(error = %error, "the consume stream ended with an error at close")
                }
                Err(_) => tracing::debug!("the server did not end the consume stream in time; dropping it"),
            }
        }
    }

    async fn received(&mut self, item: ConsumeItem) -> ClientResult<()> {
        self.observe_shutdown();
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        session.last_message = Instant::now();
        let lease = session.lease;
        match item {
            ConsumeItem::Delivery(delivery) => {
                GroupCounters::add(&self.counters.0.delivered, 1);
                self.working = true;
                self.failures = 0;
                if self.stopping {
                    GroupCounters::add(&self.counters.0.abandoned, 1);
                    return Ok(());
                }
                self.held.insert(
                    delivery.delivery_id.clone(),
                    Held {
                        extend_at: Instant::now() + lease / 2,
                        stale: false,
                    },
                );
                self.queued.push_back(delivery);
                self.start_queued();
            }
            ConsumeItem::Refused(refused) => {
                GroupCounters::add(&self.counters.0.refused, 1);
                tracing::warn!(
                    delivery_id = refused.delivery_id,
                    code = refused.error_code,
                    message = refused.message,
                    "the server refused a settle: the delivery is no longer held"
                );
                if let Some(held) = self.held.get_mut(&refused.delivery_id) {
                    held.stale = true;
                }
            }
            ConsumeItem::Settled { delivery_ids } => {
                GroupCounters::add(&self.counters.0.confirmed, delivery_ids.len());
                self.working = true;
                self.failures = 0;
            }
            ConsumeItem::Heartbeat { .. } => {
                self.working = true;
                self.failures = 0;
            }
            ConsumeItem::Joined(joined) => {
                return Err(ClientError::Protocol(format!(
                    "a second joined message (member epoch {}) on one stream",
                    joined.member_epoch
                )));
            }
        }
        Ok(())
    }

    /// Stops when a stop was asked for, also from inside a handler that has
    /// not returned to the loop yet: no delivery starts after the request.
    fn observe_shutdown(&mut self) {
        if *self.shutdown.borrow() {
            self.stop();
        }
    }

    /// Starts handlers for queued deliveries while the concurrency allows.
    fn start_queued(&mut self) {
        self.observe_shutdown();
        let concurrency = match (self.options.concurrency, &self.session) {
            (0, Some(session)) => (session.window as usize).max(1),
            (0, None) => 1,
            (concurrency, _) => concurrency,
        };
        while !self.stopping && self.tasks.len() < concurrency {
            let Some(delivery) = self.queued.pop_front() else {
                return;
            };
            let handler = Arc::clone(&self.handler);
            let delivery_id = delivery.delivery_id.clone();
            let task = self.tasks.spawn(async move { (*handler)(delivery).await });
            self.running.insert(
                task.id(),
                Running {
                    delivery_id,
                    generation: self.generation,
                },
            );
        }
    }

    /// A handler finished: settles its delivery, and those of every other
    /// handler finished by now, acks in one message.
    async fn finished(
        &mut self,
        first: Result<(tokio::task::Id, Settlement), tokio::task::JoinError>,
    ) -> ClientResult<()> {
        let mut result = Some(first);
        // Bounded by the tasks in the set.
        while let Some(done) = result.take().or_else(|| self.tasks.try_join_next_with_id()) {
            let (id, settlement) = match done {
                Ok(finished) => finished,
                Err(error) => {
                    if error.is_panic() {
                        tracing::error!("a group consumer handler panicked; the delivery is retried");
                    }
                    (error.id(), Settlement::Retry { delay: None })
                }
            };
            let running = self
                .running
                .remove(&id)
                .expect("every handler task is registered when spawned");
            let current = self
                .session
                .as_ref()
                .is_some_and(|session| session.generation == running.generation);
            if !current {
                // Its stream is gone: the server delivers the event again.
                continue;
            }
            match self.held.remove(&running.delivery_id) {
                Some(held) if !held.stale => self.settle(running.delivery_id, settlement).await?,
                _ => {}
            }
        }
        self.flush_acks().await?;
        self.start_queued();
        Ok(())
    }

    async fn settle(&mut self, delivery_id: String, settlement: Settlement) -> ClientResult<()> {
        let Some(session) = self.session.as_ref() else {
            return Ok(());
        };
        match settlement {
            Settlement::Ack => self.acks.push(delivery_id),
            Settlement::Retry { delay } => {
                session.stream.retry(&delivery_id, delay).await?;
                GroupCounters::add(&self.counters.0.retried, 1);
            }
            Settlement::Park { reason } => {
                session.stream.park(&delivery_id, &reason).await?;
                GroupCounters::add(&self.counters.0.parked, 1);
            }
        }
        Ok(())
    }

    async fn flush_acks(&mut self) -> ClientResult<()> {
        let Some(session) = self.session.as_ref() else {
            self.acks.clear();
            return Ok(());
        };
        let acks = std::mem::take(&mut self.acks);
        for chunk in acks.chunks(SETTLE_BATCH_IDS_MAX) {
            session.stream.ack(chunk.to_vec()).await?;
            GroupCounters::add(&self.counters.0.acked, chunk.len());
        }
        Ok(())
    }

    /// Extends the leases due, by another lease from now.
    async fn extend(&mut self) -> ClientResult<()> {
        let Some(session) = self.session.as_ref() else {
            return Ok(());
        };
        let now = Instant::now();
        let mut due = Vec::new();
        for (delivery_id, held) in &mut self.held {
            if !held.stale && held.extend_at <= now {
                held.extend_at = now + session.lease / 2;
                due.push(delivery_id.clone());
            }
        }
        for chunk in due.chunks(SETTLE_BATCH_IDS_MAX) {
            session.stream.extend(chunk.to_vec()).await?;
            GroupCounters::add(&self.counters.0.extended, chunk.len());
        }
        Ok(())
    }
}

/// Whether a failed stream is worth joining again: the connection or the
/// server was unavailable, or the server ended the stream.
fn is_retriable(error: &ClientError) -> bool {
    error.is_transient() || matches!(error, ClientError::Closed(_))
}

/// Opens a stream and waits for its `joined` message.
async fn open(joiner: &mut Joiner, idle_timeout: Duration) -> ClientResult<(ConsumeStream, Joined)> {
    let mut stream = joiner().await?;
    match tokio::time::timeout(idle_timeout, stream.next()).await {
        Ok(Some(Ok(ConsumeItem::Joined(joined)))) => Ok((stream, joined)),
        Ok(Some(Ok(other))) => Err(ClientError::Protocol(format!(
            "the first consume message is not joined: {other:?}"
        ))),
        Ok(Some(Err(error))) => Err(error),
        Ok(None) => Err(ClientError::Closed(
            "the server ended the consume stream before joining".into(),
        )),
        Err(_) => Err(ClientError::Closed(format!(
            "no joined message within {idle_timeout:?}"
        ))),
    }
}

/// The next message of the session, or why there is none; pending without one.
async fn next_message(session: Option<&mut Session>, idle_timeout: Duration) -> Wake {
    let Some(session) = session else {
        return std::future::pending().await;
    };
    let deadline = session.last_message + idle_timeout;
    match tokio::time::timeout_at(deadline, session.stream.next()).await {
        Ok(Some(Ok(item))) => Wake::Item(item),
        Ok(Some(Err(error))) => Wake::Lost(error),
        Ok(None) => Wake::Lost(ClientError::Closed("the server ended the consume stream".into())),
        Err(_) => Wake::Lost(ClientError::Closed(format!(
            "no message from the server within {idle_timeout:?}"
        ))),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Resolves once a stop was asked for.
async fn stopped(receiver: &mut watch::Receiver<bool>) {
    // Bounded: the value changes once, to true; the runner keeps a sender alive.
    while !*receiver.borrow_and_update() {
        if receiver.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::Semaphore;

    use super::*;

    use proto::consume_request::Kind as Request;
    use proto::consume_response::Kind as Response;

    /// One stream as the test, playing the server, sees it.
    struct ServerSide {
        requests: mpsc::Receiver<proto::ConsumeRequest>,
        responses: mpsc::Sender<ClientResult<proto::ConsumeResponse>>,
    }

    impl ServerSide {
        /// The member's next request; `None` once its request side ended.
        async fn request(&mut self) -> Option<Request> {
            let request = self.requests.recv().await?;
            Some(request.kind.expect("every request has a kind"))
        }

        async fn send(&self, kind: Response) {
            self.responses
                .send(Ok(proto::ConsumeResponse { kind: Some(kind) }))
                .await
                .expect("the member reads its stream");
        }

        /// Ends the stream with an error status.
        async fn fail(&self, error: ClientError) {
            self.responses
                .send(Err(error))
                .await
                .expect("the member reads its stream");
        }

        /// Reads the join and answers it.
        async fn accept(&mut self, window: u32, lease_ms: u64) -> proto::Join {
            let Some(Request::Join(join)) = self.request().await else {
                panic!("the first request is not a join");
            };
            self.send(Response::Joined(proto::Joined {
                member_epoch: 1,
                window,
                lease_ms,
            }))
            .await;
            join
        }

        /// Delivers an event of `key` at `offset`; returns its delivery id.
        async fn deliver(&self, key: &str, offset: u64, attempt: u32) -> String {
            let delivery_id = format!("t.0.{offset}.{attempt}");
            self.send(Response::Delivery(proto::Delivery {
                event: Some(proto::RecordedEvent {
                    offset,
                    key: key.as_bytes().to_vec(),
                    r#type: "noted".into(),
                    ..proto::RecordedEvent::default()
                }),
                attempt,
                lease_deadline_ms: 0,
                delivery_id: delivery_id.clone(),
                member_epoch: 1,
            }))
            .await;
            delivery_id
        }
    }

    /// A joiner whose streams the test plays: each join hands the server side
    /// of its stream to the test; queued errors fail the next joins first.
    fn scripted(failures: Vec<ClientError>) -> (Joiner, mpsc::UnboundedReceiver<ServerSide>) {
        let (streams, receiver) = mpsc::unbounded_channel();
        let failures = Arc::new(Mutex::new(VecDeque::from(failures)));
        let joiner: Joiner = Box::new(move || {
            let failure = failures.lock().expect("failures").pop_front();
            let streams = streams.clone();
            Box::pin(async move {
                if let Some(error) = failure {
                    return Err(error);
                }
                let (outbound, requests) = mpsc::channel(CONSUME_OUTBOUND_CAPACITY);
                let (responses, inbound) = mpsc::channel(64);
                outbound
                    .try_send(proto::ConsumeRequest {
                        kind: Some(Request::Join(proto::Join {
                            group: "g".into(),
                            instance_id: "worker-1".into(),
                            window: 0,
                        })),
                    })
                    .expect("room for the join");
                streams
                    .send(ServerSide { requests, responses })
                    .expect("the test holds the streams");
                Ok(ConsumeStream {
                    url: "scripted".into(),
                    sender: ConsumeSender {
                        url: "scripted".into(),
                        outbound,
                    },
                    inbound: Inbound::Scripted(inbound),
                })
            })
        });
        (joiner, receiver)
    }

    /// A member run by the test: the task running it, its counters and its stop handle.
    struct Member {
        task: tokio::task::JoinHandle<ClientResult<()>>,
        counters: GroupCounters,
        shutdown: ShutdownHandle,
    }

    fn start<F, Fut>(joiner: Joiner, options: GroupConsumerOptions, handler: F) -> Member
    where
        F: Fn(Delivery) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Settlement> + Send + 'static,
    {
        let counters = GroupCounters::default();
        let (sender, _) = watch::channel(false);
        let shutdown = ShutdownHandle(sender);
        let runner = Runner::new(joiner, options, counters.clone(), shutdown.clone(), handler);
        Member {
            task: tokio::spawn(runner.run()),
            counters,
            shutdown,
        }
    }

    fn options(concurrency: usize) -> GroupConsumerOptions {
        GroupConsumerOptions {
            concurrency,
            ..GroupConsumerOptions::default()
        }
    }

    fn status(code: crate::GrpcCode, kind: Option<ErrorKind>, error_code: Option<u32>) -> ClientError {
        ClientError::Status {
            code,
            kind,
            error_code,
            message: "scripted".into(),
            details: Box::default(),
        }
    }

    fn key_of(delivery: &Delivery) -> String {
        String::from_utf8(delivery.event.key.clone()).expect("UTF-8 key")
    }

    #[tokio::test(start_paused = true)]
    async fn handlers_run_up_to_the_concurrency_and_acks_that_finish_together_share_a_message() {
        // Goal: with concurrency 2, two of four deliveries are handled at once,
        // the others wait; two handlers finishing together are acked in one
        // message. Method: handlers report their start and wait for a permit.
        let (joiner, mut streams) = scripted(Vec::new());
        let (started, mut starts) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(0));
        let gate = Arc::clone(&permits);
        let member = start(joiner, options(2), move |delivery: Delivery| {
            let started = started.clone();
            let gate = Arc::clone(&gate);
            async move {
                started
                    .send(delivery.delivery_id.clone())
                    .expect("the test listens");
                gate.acquire().await.expect("open").forget();
                Settlement::Ack
            }
        });
        let mut server = streams.recv().await.expect("a join");
        let join = server.accept(4, 30_000).await;
        assert_eq!(
            (join.group.as_str(), join.instance_id.as_str()),
            ("g", "worker-1")
        );
        let mut ids = Vec::new();
        for (index, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
            ids.push(server.deliver(key, index as u64, 1).await);
        }
        let first_two = [
            starts.recv().await.expect("a start"),
            starts.recv().await.expect("a start"),
        ];
        assert_eq!(first_two, [ids[0].clone(), ids[1].clone()]);
        assert!(
            starts.try_recv().is_err(),
            "a third handler started beyond the concurrency"
        );
        permits.add_permits(2);
        let Some(Request::Ack(ack)) = server.request().await else {
            panic!("not an ack");
        };
        assert_eq!(ack.delivery_ids, first_two.to_vec());
        let next_two = [
            starts.recv().await.expect("a start"),
            starts.recv().await.expect("a start"),
        ];
        assert_eq!(next_two, [ids[2].clone(), ids[3].clone()]);
        permits.add_permits(2);
        let mut acked = Vec::new();
        while acked.len() < 2 {
            let Some(Request::Ack(ack)) = server.request().await else {
                panic!("not an ack");
            };
            acked.extend(ack.delivery_ids);
        }
        assert_eq!(acked, next_two.to_vec());
        let counts = member.counters.snapshot();
        assert_eq!((counts.delivered, counts.acked, counts.reconnects), (4, 4, 0));
        member.task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn retry_park_and_a_panicking_handler_are_settled_with_their_delay_and_reason() {
        // Goal: a retry carries its delay in whole milliseconds (rounded up), a
        // park its reason, and a handler that panics is retried with the
        // group's backoff (delay 0).
        let (joiner, mut streams) = scripted(Vec::new());
        let member = start(joiner, options(1), |delivery: Delivery| async move {
            match key_of(&delivery).as_str() {
                "retry" => Settlement::Retry {
                    delay: Some(Duration::from_micros(1500)),
                },
                "park" => Settlement::Park {
                    reason: "unparseable".into(),
                },
                _ => panic!("the handler fails"),
            }
        });
        let mut server = streams.recv().await.expect("a join");
        server.accept(8, 30_000).await;
        let retried = server.deliver("retry", 0, 1).await;
        let Some(Request::Retry(retry)) = server.request().await else {
            panic!("not a retry");
        };
        assert_eq!((retry.delivery_id, retry.delay_ms), (retried, 2));
        let parked = server.deliver("park", 1, 1).await;
        let Some(Request::Park(park)) = server.request().await else {
            panic!("not a park");
        };
        assert_eq!((park.delivery_id, park.reason.as_str()), (parked, "unparseable"));
        let panicked = server.deliver("panic", 2, 1).await;
        let Some(Request::Retry(retry)) = server.request().await else {
            panic!("not a retry");
        };
        assert_eq!((retry.delivery_id, retry.delay_ms), (panicked, 0));
        let counts = member.counters.snapshot();
        assert_eq!((counts.retried, counts.parked, counts.acked), (2, 1, 0));
        member.task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_handler_has_its_lease_extended_every_half_lease_until_it_settles() {
        // Goal: a handler that takes 1.2 leases keeps its delivery: extends at
        // half and one lease, then the ack, and nothing after. Method: paused
        // time, so the sleeps are virtual and the order exact.
        let (joiner, mut streams) = scripted(Vec::new());
        let member = start(joiner, options(0), |_delivery: Delivery| async move {
            tokio::time::sleep(Duration::from_secs(12)).await;
            Settlement::Ack
        });
        let mut server = streams.recv().await.expect("a join");
        server.accept(1, 10_000).await;
        let begun = Instant::now();
        let id = server.deliver("slow", 0, 1).await;
        for expected_s in [5, 10] {
            let Some(Request::Extend(extend)) = server.request().await else {
                panic!("not an extend");
            };
            assert_eq!(extend.delivery_ids, vec![id.clone()]);
            assert_eq!(begun.elapsed().as_secs(), expected_s);
        }
        let Some(Request::Ack(ack)) = server.request().await else {
            panic!("not an ack");
        };
        assert_eq!(ack.delivery_ids, vec![id]);
        assert_eq!(begun.elapsed().as_secs(), 12);
        assert_eq!(member.counters.snapshot().extended, 2);
        member.shutdown.shutdown();
        assert_eq!(server.request().await, None, "nothing after the ack");
        drop(server);
        member.task.await.expect("joined").expect("a graceful stop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_stream_is_joined_again_and_the_results_of_its_handlers_are_dropped() {
        // Goal: after the server ends a stream the member joins again with the
        // same instance id; the handler still running for the old stream
        // finishes, but its ack is not sent on the new one (it would be stale).
        let (joiner, mut streams) = scripted(Vec::new());
        let permits = Arc::new(Semaphore::new(0));
        let gate = Arc::clone(&permits);
        let (started, mut starts) = mpsc::unbounded_channel();
        let member = start(joiner, options(0), move |delivery: Delivery| {
            let gate = Arc::clone(&gate);
            let started = started.clone();
            async move {
                started.send(key_of(&delivery)).expect("the test listens");
                if key_of(&delivery) == "old" {
                    gate.acquire().await.expect("open").forget();
                }
                Settlement::Ack
            }
        });
        let mut first = streams.recv().await.expect("a join");
        first.accept(4, 30_000).await;
        first.deliver("old", 0, 1).await;
        assert_eq!(starts.recv().await.as_deref(), Some("old"));
        drop(first);
        let mut second = streams.recv().await.expect("a second join");
        let join = second.accept(4, 30_000).await;
        assert_eq!(join.instance_id, "worker-1");
        permits.add_permits(1);
        let fresh = second.deliver("new", 1, 1).await;
        assert_eq!(starts.recv().await.as_deref(), Some("new"));
        let Some(Request::Ack(ack)) = second.request().await else {
            panic!("not an ack");
        };
        assert_eq!(ack.delivery_ids, vec![fresh], "only the new stream's delivery");
        let counts = member.counters.snapshot();
        assert_eq!((counts.reconnects, counts.abandoned, counts.acked), (1, 1, 1));
        member.task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_member_stops_with_member_replaced() {
        // Goal: MEMBER_REPLACED is fatal: run returns it and does not join again.
        let (joiner, mut streams) = scripted(Vec::new());
        let member = start(joiner, options(0), |_delivery: Delivery| async {
            Settlement::Ack
        });
        let mut server = streams.recv().await.expect("a join");
        server.accept(4, 30_000).await;
        server
            .fail(status(
                crate::GrpcCode::Aborted,
                Some(ErrorKind::MemberReplaced),
                Some(35),
            ))
            .await;
        let error = member.task.await.expect("joined").expect_err("fatal");
        assert_eq!(error.kind(), Some(ErrorKind::MemberReplaced));
        assert!(streams.try_recv().is_err(), "it joined again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_settle_that_cannot_be_sent_reads_the_final_status_and_a_replaced_member_does_not_rejoin() {
        // Goal: when a settle cannot be sent because the call ended, the member
        // takes the stream's final status as the reason: MEMBER_REPLACED stops
        // it instead of joining again (which would replace its successor).
        // Method: the server side stops reading requests, the handler finishes,
        // and only then does the status arrive.
        let (joiner, mut streams) = scripted(Vec::new());
        let permits = Arc::new(Semaphore::new(0));
        let gate = Arc::clone(&permits);
        let (finished, mut finishes) = mpsc::unbounded_channel();
        let member = start(joiner, options(0), move |_delivery: Delivery| {
            let gate = Arc::clone(&gate);
            let finished = finished.clone();
            async move {
                gate.acquire().await.expect("open").forget();
                finished.send(()).expect("the test listens");
                Settlement::Ack
            }
        });
        let mut server = streams.recv().await.expect("a join");
        server.accept(4, 30_000).await;
        server.deliver("a", 0, 1).await;
        let ServerSide { requests, responses } = server;
        drop(requests);
        permits.add_permits(1);
        finishes.recv().await.expect("the handler finished");
        // Lets the member try its ack (and fail) before the status arrives.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        responses
            .send(Err(status(
                crate::GrpcCode::Aborted,
                Some(ErrorKind::MemberReplaced),
                Some(35),
            )))
            .await
            .expect("the member reads its stream");
        let error = member.task.await.expect("joined").expect_err("fatal");
        assert_eq!(error.kind(), Some(ErrorKind::MemberReplaced), "{error}");
        assert!(streams.try_recv().is_err(), "a replaced member joined again");
        assert_eq!(member.counters.snapshot().acked, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn joining_tries_again_after_transient_errors_and_stops_at_a_fatal_one() {
        // Goal: an unavailable server is tried again (with backoff) until the
        // join succeeds, which is not a reconnect; an unknown group is returned
        // at once.
        let unavailable = || ClientError::Transport {
            url: "scripted".into(),
            reason: "connection refused".into(),
        };
        let (joiner, mut streams) = scripted(vec![unavailable(), unavailable()]);
        let member = start(joiner, options(0), |_delivery: Delivery| async {
            Settlement::Ack
        });
        let mut server = streams.recv().await.expect("a join after two failures");
        server.accept(4, 30_000).await;
        server.deliver("k", 0, 1).await;
        assert!(matches!(server.request().await, Some(Request::Ack(_))));
        assert_eq!(member.counters.snapshot().reconnects, 0);
        member.task.abort();

        let missing = status(
            crate::GrpcCode::NotFound,
            Some(ErrorKind::GroupNotFound),
            Some(32),
        );
        let (joiner, _streams) = scripted(vec![missing]);
        let member = start(joiner, options(0), |_delivery: Delivery| async {
            Settlement::Ack
        });
        let error = member.task.await.expect("joined").expect_err("fatal");
        assert_eq!(error.kind(), Some(ErrorKind::GroupNotFound));
    }

    #[tokio::test(start_paused = true)]
    async fn a_graceful_stop_lets_running_handlers_settle_then_leaves_without_the_rest() {
        // Goal: after shutdown the running handler finishes and is acked, the
        // queued delivery is left to the server, the request side ends, and run
        // returns Ok once the server ends the stream.
        let (joiner, mut streams) = scripted(Vec::new());
        let permits = Arc::new(Semaphore::new(0));
        let gate = Arc::clone(&permits);
        let (started, mut starts) = mpsc::unbounded_channel();
        let member = start(joiner, options(1), move |delivery: Delivery| {
            let gate = Arc::clone(&gate);
            let started = started.clone();
            async move {
                started
                    .send(delivery.delivery_id.clone())
                    .expect("the test listens");
                gate.acquire().await.expect("open").forget();
                Settlement::Ack
            }
        });
        let mut server = streams.recv().await.expect("a join");
        server.accept(4, 30_000).await;
        let running = server.deliver("a", 0, 1).await;
        server.deliver("b", 1, 1).await;
        assert_eq!(starts.recv().await, Some(running.clone()));
        member.shutdown.shutdown();
        permits.add_permits(1);
        let Some(Request::Ack(ack)) = server.request().await else {
            panic!("not an ack");
        };
        assert_eq!(ack.delivery_ids, vec![running]);
        assert_eq!(server.request().await, None, "the request side ends");
        assert!(starts.try_recv().is_err(), "the queued delivery was handled");
        drop(server);
        member.task.await.expect("joined").expect("a graceful stop");
        let counts = member.counters.snapshot();
        assert_eq!((counts.acked, counts.abandoned), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_extension_stops_extending_and_the_delivery_is_not_settled() {
        // Goal: once the server refuses an extension (DELIVERY_STALE), the
        // delivery is no longer extended and its handler's result is not sent.
        let (joiner, mut streams) = scripted(Vec::new());
        let (finished, mut finishes) = mpsc::unbounded_channel();
        let member = start(joiner, options(0), move |_delivery: Delivery| {
            let finished = finished.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(12)).await;
                finished.send(()).expect("the test listens");
                Settlement::Ack
            }
        });
        let mut server = streams.recv().await.expect("a join");
        server.accept(1, 10_000).await;
        let id = server.deliver("slow", 0, 1).await;
        let Some(Request::Extend(extend)) = server.request().await else {
            panic!("not an extend");
        };
        assert_eq!(extend.delivery_ids, vec![id.clone()]);
        server
            .send(Response::Refused(proto::SettleRefused {
                delivery_id: id,
                code: proto::ErrorCode::DeliveryStale as i32,
                message: "lease expired".into(),
            }))
            .await;
        finishes.recv().await.expect("the handler finished");
        member.shutdown.shutdown();
        assert_eq!(server.request().await, None, "no extend or ack after the refusal");
        drop(server);
        member.task.await.expect("joined").expect("a graceful stop");
        let counts = member.counters.snapshot();
        assert_eq!((counts.refused, counts.extended, counts.acked), (1, 1, 0));
    }

    #[test]
    fn a_group_converts_with_every_field_and_an_unknown_policy_is_a_protocol_error() {
        let group = proto::Group {
            name: "billing".into(),
            topic: "orders".into(),
            settings: Some(proto::GroupSettings {
                lease_ms: 30_000,
                max_deliveries: 10,
                backoff_initial_ms: 1000,
                backoff_max_ms: 60_000,
                max_in_flight_per_member: 64,
                dead_letter_topic: "orders.parked".into(),
                on_exhausted: proto::ExhaustedPolicy::Block as i32,
            }),
            partitions: vec![proto::GroupPartition {
                partition: 1,
                floor: 5,
                settled_above_floor: 2,
                high_watermark: 9,
                lag: 2,
            }],
            members: vec![proto::GroupMember {
                instance_id: "worker-1".into(),
                member_epoch: 3,
                window: 16,
                in_flight: 2,
                acked_count: 7,
                joined_at_ms: 11,
            }],
            lag: 2,
            in_flight: 2,
            redelivered_count: 4,
            parked_count: 1,
            blocked_keys_count: 1,
            oldest_unsettled_age_ms: 250,
            created_at_ms: 10,
        };
        let info = group_of(Some(group.clone()), "DescribeGroup").expect("converts");
        assert_eq!(info.settings.on_exhausted, ExhaustedPolicy::Block);
        assert_eq!(
            info.settings.to_proto(),
            group.settings.clone().expect("settings")
        );
        assert_eq!(
            info.partitions,
            vec![GroupPartitionInfo {
                partition: PartitionId(1),
                floor: Offset(5),
                settled_above_floor_count: 2,
                high_watermark: Offset(9),
                lag: 2,
            }]
        );
        assert_eq!(info.members[0].instance_id, "worker-1");
        assert_eq!(
            (info.members[0].in_flight_count, info.members[0].acked_count),
            (2, 7)
        );
        assert_eq!(
            (info.lag, info.redelivered_count, info.oldest_unsettled_age_ms),
            (2, 4, 250)
        );
        let mut unknown = group;
        unknown.settings = Some(proto::GroupSettings {
            on_exhausted: 7,
            ..proto::GroupSettings::default()
        });
        assert!(matches!(
            group_of(Some(unknown), "DescribeGroup"),
            Err(ClientError::Protocol(_))
        ));
        assert!(matches!(
            group_of(None, "CreateGroup"),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn seeks_retry_delays_and_consume_messages_convert_to_and_from_the_wire() {
        use proto::seek_group_request::Position;
        let offsets = seek_to_proto(GroupSeek::Offsets(vec![
            (PartitionId(0), Offset(3)),
            (PartitionId(2), Offset(1)),
            (PartitionId(0), Offset(4)),
        ]));
        let Position::Offsets(offsets) = offsets else {
            panic!("not offsets");
        };
        assert_eq!(offsets.offsets, HashMap::from([(0, 4), (2, 1)]));
        assert_eq!(seek_to_proto(GroupSeek::Timestamp(42)), Position::TimestampMs(42));
        assert_eq!(delay_ms(None), 0);
        assert_eq!(
            delay_ms(Some(Duration::ZERO)),
            1,
            "0 on the wire would mean the backoff"
        );
        assert_eq!(delay_ms(Some(Duration::from_micros(1001))), 2);
        assert_eq!(delay_ms(Some(Duration::from_secs(3))), 3000);

        let refused = consume_item(proto::ConsumeResponse {
            kind: Some(Response::Refused(proto::SettleRefused {
                delivery_id: "d".into(),
                code: proto::ErrorCode::DeliveryStale as i32,
                message: "stale".into(),
            })),
        })
        .expect("converts");
        let ConsumeItem::Refused(refused) = refused else {
            panic!("not a refusal");
        };
        assert_eq!(refused.kind, Some(ErrorKind::DeliveryStale));
        assert_eq!(refused.error_code, Some(34));
        let empty = proto::ConsumeResponse {
            kind: Some(Response::Delivery(proto::Delivery::default())),
        };
        assert!(matches!(consume_item(empty), Err(ClientError::Protocol(_))));
        assert!(matches!(
            consume_item(proto::ConsumeResponse { kind: None }),
            Err(ClientError::Protocol(_))
        ));
    }
}

//! Hand-written mapping between the generated `stele.v1` types and the engine's
//! types, so that generated types never leak into the library API.

use crate::proto;
use stele_engine::config::{Durability, TopicChange, TopicOptions};
use stele_engine::event::{
    AppendAck, AppendRequest, Epoch, Event, ExpectedSequence, ProducerId, ProducerStamp, RecordedEvent,
    Sequence,
};
use stele_engine::view::EventRef;

/// A request field that was malformed.
pub type Invalid = String;

/// An event from its wire form; headers come sorted by name, an empty idempotency id means none.
pub fn event_from_proto(event: proto::Event) -> Event {
    let mut headers: Vec<(String, Vec<u8>)> = event.headers.into_iter().collect();
    headers.sort();
    Event {
        event_type: event.r#type,
        payload: event.payload,
        headers,
        idempotency_id: (!event.idempotency_id.is_empty()).then_some(event.idempotency_id),
    }
}

/// An event in its wire form; no idempotency id is sent as empty bytes.
pub fn event_to_proto(event: &Event) -> proto::Event {
    proto::Event {
        r#type: event.event_type.clone(),
        payload: event.payload.clone(),
        headers: event
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect(),
        idempotency_id: event.idempotency_id.clone().unwrap_or_default(),
    }
}

/// An append condition from its wire form; an absent condition is [`ExpectedSequence::Any`].
pub fn expected_from_proto(expected: Option<proto::ExpectedSequence>) -> ExpectedSequence {
    use proto::expected_sequence::Kind;
    match expected.and_then(|expected| expected.kind) {
        None | Some(Kind::Any(_)) => ExpectedSequence::Any,
        Some(Kind::NoEvents(_)) => ExpectedSequence::NoEvents,
        Some(Kind::Exact(sequence)) => ExpectedSequence::Exact(Sequence(sequence)),
    }
}

/// An append condition in its wire form.
pub fn expected_to_proto(expected: ExpectedSequence) -> proto::ExpectedSequence {
    use proto::expected_sequence::Kind;
    proto::ExpectedSequence {
        kind: Some(match expected {
            ExpectedSequence::Any => Kind::Any(proto::Empty {}),
            ExpectedSequence::NoEvents => Kind::NoEvents(proto::Empty {}),
            ExpectedSequence::Exact(sequence) => Kind::Exact(sequence.0),
        }),
    }
}

/// A producer stamp from its wire form.
pub fn stamp_from_proto(stamp: proto::ProducerStamp) -> ProducerStamp {
    ProducerStamp {
        producer: ProducerId(stamp.producer_id),
        epoch: Epoch(stamp.epoch),
        sequence: Sequence(stamp.sequence),
    }
}

/// A producer stamp in its wire form.
pub fn stamp_to_proto(stamp: ProducerStamp) -> proto::ProducerStamp {
    proto::ProducerStamp {
        producer_id: stamp.producer.0,
        epoch: stamp.epoch.0,
        sequence: stamp.sequence.0,
    }
}

/// An append request from its wire form.
pub fn append_from_proto(append: proto::BatchAppend) -> AppendRequest {
    AppendRequest {
        key: append.key,
        expected: expected_from_proto(append.expected),
        events: append.events.into_iter().map(event_from_proto).collect(),
        producer: append.producer.map(stamp_from_proto),
    }
}

/// An append request in its wire form, with its condition always set.
pub fn append_to_proto(request: &AppendRequest) -> proto::BatchAppend {
    proto::BatchAppend {
        key: request.key.clone(),
        expected: Some(expected_to_proto(request.expected)),
        events: request.events.iter().map(event_to_proto).collect(),
        producer: request.producer.map(stamp_to_proto),
    }
}

/// An acknowledgement in its wire form.
pub fn ack_to_proto(ack: &AppendAck) -> proto::AppendResult {
    proto::AppendResult {
        partition: ack.partition.0,
        first_offset: ack.first_offset.0,
        first_sequence: ack.first_sequence.0,
        last_sequence: ack.last_sequence.0,
        timestamp_ms: ack.timestamp_ms,
        duplicate: ack.duplicate,
    }
}

/// An acknowledgement from its wire form.
pub fn ack_from_proto(result: &proto::AppendResult) -> AppendAck {
    AppendAck {
        partition: stele_engine::PartitionId(result.partition),
        first_offset: stele_engine::Offset(result.first_offset),
        first_sequence: Sequence(result.first_sequence),
        last_sequence: Sequence(result.last_sequence),
        timestamp_ms: result.timestamp_ms,
        duplicate: result.duplicate,
    }
}

/// A stored event in its wire form: the one encoder from a stored event to a
/// generated `RecordedEvent` (Read, ReadKey); Subscribe writes the same bytes
/// by hand ([`crate::batch::EventBatch::push_event`]).
pub fn stored_to_proto(event: &EventRef<'_>) -> proto::RecordedEvent {
    proto::RecordedEvent {
        partition: event.partition.0,
        offset: event.offset.0,
        timestamp_ms: event.timestamp_ms,
        key: event.key.to_vec(),
        sequence: event.sequence.0,
        r#type: event.event_type.to_string(),
        payload: event.payload.to_vec(),
        headers: event
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_vec()))
            .collect(),
        idempotency_id: event.idempotency_id.map(<[u8]>::to_vec).unwrap_or_default(),
        producer: event.producer.map(stamp_to_proto),
    }
}

/// A stored event from its wire form; headers come sorted by name, an empty idempotency id means none.
pub fn recorded_from_proto(event: proto::RecordedEvent) -> RecordedEvent {
    let mut headers: Vec<(String, Vec<u8>)> = event.headers.into_iter().collect();
    headers.sort();
    RecordedEvent {
        partition: stele_engine::PartitionId(event.partition),
        offset: stele_engine::Offset(event.offset),
        timestamp_ms: event.timestamp_ms,
        key: event.key,
        sequence: Sequence(event.sequence),
        event_type: event.r#type,
        payload: event.payload,
        headers,
        idempotency_id: (!event.idempotency_id.is_empty()).then_some(event.idempotency_id),
        producer: event.producer.map(stamp_from_proto),
    }
}

/// Topic options from settings, zero fields taking `defaults`.
///
/// # Errors
/// An [`Invalid`] message when the durability is not a known value.
pub fn options_from_settings(
    settings: Option<proto::TopicSettings>,
    defaults: &TopicOptions,
) -> Result<TopicOptions, Invalid> {
    let Some(settings) = settings else {
        return Ok(defaults.clone());
    };
    let nonzero = |value: u64| (value != 0).then_some(value);
    let durability = match proto::Durability::try_from(settings.durability) {
        Ok(proto::Durability::Unspecified) => defaults.durability,
        Ok(proto::Durability::Always) => Durability::Always,
        Ok(proto::Durability::Interval) => Durability::Interval {
            interval_ms: nonzero(settings.sync_interval_ms).unwrap_or(match defaults.durability {
                Durability::Interval { interval_ms } => interval_ms,
                _ => stele_engine::config::SYNC_INTERVAL_MS_DEFAULT,
            }),
        },
        Ok(proto::Durability::None) => Durability::None,
        Err(_) => return Err(format!("unknown durability {}", settings.durability)),
    };
    Ok(TopicOptions {
        partitions: if settings.partitions == 0 {
            defaults.partitions
        } else {
            settings.partitions
        },
        retention_age_ms: nonzero(settings.retention_age_ms).or(defaults.retention_age_ms),
        retention_bytes: nonzero(settings.retention_bytes).or(defaults.retention_bytes),
        dedup_window_ms: nonzero(settings.dedup_window_ms).unwrap_or(defaults.dedup_window_ms),
        durability,
        segment_size_bytes_max: nonzero(settings.segment_size_bytes)
            .unwrap_or(defaults.segment_size_bytes_max),
        payload_size_max: if settings.payload_size_max == 0 {
            defaults.payload_size_max
        } else {
            settings.payload_size_max
        },
        ..defaults.clone()
    })
}

/// Topic settings in their wire form; an unset optional limit is sent as 0.
pub fn settings_from_options(options: &TopicOptions) -> proto::TopicSettings {
    let (durability, sync_interval_ms) = match options.durability {
        Durability::Always => (proto::Durability::Always, 0),
        Durability::Interval { interval_ms } => (proto::Durability::Interval, interval_ms),
        Durability::None => (proto::Durability::None, 0),
    };
    proto::TopicSettings {
        partitions: options.partitions,
        retention_age_ms: options.retention_age_ms.unwrap_or(0),
        retention_bytes: options.retention_bytes.unwrap_or(0),
        dedup_window_ms: options.dedup_window_ms,
        durability: durability as i32,
        sync_interval_ms,
        segment_size_bytes: options.segment_size_bytes_max,
        payload_size_max: options.payload_size_max,
    }
}

/// The change an `UpdateTopicRequest` asks for, each value checked on its own,
/// so that a bad one is reported with its field (a proto field name).
///
/// # Errors
/// The field and the error: [`stele_engine::Error::InvalidArgument`] for a
/// request that sets nothing, an unknown durability, a zero dedup window or a
/// sync interval without `DURABILITY_INTERVAL`; the engine's own validation
/// error ([`stele_engine::Error::Config`], [`stele_engine::Error::LimitExceeded`])
/// for a value out of its bounds.
pub fn change_from_update(
    request: &proto::UpdateTopicRequest,
) -> Result<TopicChange, (&'static str, stele_engine::Error)> {
    let invalid = |field: &'static str, message: &str| {
        (field, stele_engine::Error::InvalidArgument(message.to_string()))
    };
    let limit = |value: u64| (value != 0).then_some(value);
    let durability = match proto::Durability::try_from(request.durability) {
        Ok(proto::Durability::Unspecified) => {
            if request.sync_interval_ms.is_some() {
                return Err(invalid(
                    "sync_interval_ms",
                    "sync_interval_ms needs durability DURABILITY_INTERVAL",
                ));
            }
            None
        }
        Ok(proto::Durability::Always) | Ok(proto::Durability::None) if request.sync_interval_ms.is_some() => {
            return Err(invalid(
                "sync_interval_ms",
                "sync_interval_ms needs durability DURABILITY_INTERVAL",
            ));
        }
        Ok(proto::Durability::Always) => Some(Durability::Always),
        Ok(proto::Durability::None) => Some(Durability::None),
        Ok(proto::Durability::Interval) => Some(Durability::Interval {
            interval_ms: request
                .sync_interval_ms
                .unwrap_or(stele_engine::config::SYNC_INTERVAL_MS_DEFAULT),
        }),
        Err(_) => return Err(invalid("durability", "unknown durability")),
    };
    if request.dedup_window_ms == Some(0) {
        return Err(invalid("dedup_window_ms", "dedup_window_ms must be at least 1"));
    }
    let fields: [(&'static str, TopicChange); 6] = [
        (
            "retention_age_ms",
            TopicChange {
                retention_age_ms: request.retention_age_ms.map(limit),
                ..TopicChange::default()
            },
        ),
        (
            "retention_bytes",
            TopicChange {
                retention_bytes: request.retention_bytes.map(limit),
                ..TopicChange::default()
            },
        ),
        (
            "dedup_window_ms",
            TopicChange {
                dedup_window_ms: request.dedup_window_ms,
                ..TopicChange::default()
            },
        ),
        (
            "durability",
            TopicChange {
                durability,
                ..TopicChange::default()
            },
        ),
        (
            "segment_size_bytes",
            TopicChange {
                segment_size_bytes_max: request.segment_size_bytes,
                ..TopicChange::default()
            },
        ),
        (
            "payload_size_max",
            TopicChange {
                payload_size_max: request.payload_size_max,
                ..TopicChange::default()
            },
        ),
    ];
    let mut change = TopicChange::default();
    for (field, single) in fields {
        if single.is_empty() {
            continue;
        }
        // Every default is valid, so a failure here is this field's.
        let field = if field == "durability" && request.sync_interval_ms.is_some() {
            "sync_interval_ms"
        } else {
            field
        };
        single
            .apply_to(&TopicOptions::default())
            .validate()
            .map_err(|error| (field, error))?;
        change.retention_age_ms = change.retention_age_ms.or(single.retention_age_ms);
        change.retention_bytes = change.retention_bytes.or(single.retention_bytes);
        change.dedup_window_ms = change.dedup_window_ms.or(single.dedup_window_ms);
        change.durability = change.durability.or(single.durability);
        change.segment_size_bytes_max = change.segment_size_bytes_max.or(single.segment_size_bytes_max);
        change.payload_size_max = change.payload_size_max.or(single.payload_size_max);
    }
    if change.is_empty() {
        return Err(invalid(
            "",
            "the request changes no option: set at least one field",
        ));
    }
    Ok(change)
}

/// Webhook delivery settings from their wire form (zero means the default).
pub fn webhook_settings_from_proto(
    settings: proto::WebhookSettings,
) -> stele_engine::webhook::DeliverySettings {
    stele_engine::webhook::DeliverySettings {
        in_flight_max: settings.max_in_flight,
        attempts_max: settings.max_attempts,
        age_max_ms: settings.max_age_ms,
        backoff_initial_ms: settings.backoff_initial_ms,
        backoff_max_ms: settings.backoff_max_ms,
        timeout_ms: settings.timeout_ms,
        breaker_failures: settings.breaker_failures,
        breaker_pause_ms: settings.breaker_pause_ms,
        dead_letter_topic: settings.dead_letter_topic,
    }
}

/// Webhook delivery settings in their wire form.
pub fn webhook_settings_to_proto(
    settings: &stele_engine::webhook::DeliverySettings,
) -> proto::WebhookSettings {
    proto::WebhookSettings {
        max_in_flight: settings.in_flight_max,
        max_attempts: settings.attempts_max,
        max_age_ms: settings.age_max_ms,
        backoff_initial_ms: settings.backoff_initial_ms,
        backoff_max_ms: settings.backoff_max_ms,
        timeout_ms: settings.timeout_ms,
        breaker_failures: settings.breaker_failures,
        breaker_pause_ms: settings.breaker_pause_ms,
        dead_letter_topic: settings.dead_letter_topic.clone(),
    }
}

/// A webhook registration from its wire form.
pub fn new_webhook_from_proto(request: proto::CreateWebhookRequest) -> crate::webhook::NewWebhook {
    crate::webhook::NewWebhook {
        name: request.name,
        url: request.url,
        topic: request.topic,
        event_types: request.event_types,
        key_prefix: request.key_prefix.to_vec(),
        secret: (!request.secret.is_empty()).then_some(request.secret),
        settings: webhook_settings_from_proto(request.settings.unwrap_or_default()),
        from_earliest: request.start == proto::WebhookStart::Earliest as i32,
    }
}

/// A webhook registration in its wire form.
pub fn new_webhook_to_proto(request: &crate::webhook::NewWebhook) -> proto::CreateWebhookRequest {
    proto::CreateWebhookRequest {
        name: request.name.clone(),
        url: request.url.clone(),
        topic: request.topic.clone(),
        event_types: request.event_types.clone(),
        key_prefix: request.key_prefix.clone(),
        secret: request.secret.clone().unwrap_or_default(),
        settings: Some(webhook_settings_to_proto(&request.settings)),
        start: if request.from_earliest {
            proto::WebhookStart::Earliest
        } else {
            proto::WebhookStart::Latest
        } as i32,
    }
}

/// An endpoint's state in its wire form.
pub fn webhook_to_proto(view: &crate::webhook::WebhookView) -> proto::Webhook {
    let endpoint = &view.endpoint;
    proto::Webhook {
        name: endpoint.name.clone(),
        url: endpoint.url.clone(),
        topic: endpoint.topic.clone(),
        event_types: endpoint.event_types.clone(),
        key_prefix: endpoint.key_prefix.clone(),
        settings: Some(webhook_settings_to_proto(&endpoint.settings)),
        state: if endpoint.paused {
            proto::WebhookState::Paused
        } else {
            proto::WebhookState::Active
        } as i32,
        circuit: match view.circuit {
            "open" => proto::CircuitState::Open,
            "half_open" => proto::CircuitState::HalfOpen,
            _ => proto::CircuitState::Closed,
        } as i32,
        partitions: view
            .partitions
            .iter()
            .map(|position| proto::CursorPartition {
                partition: position.partition.0,
                committed_offset: position.committed.map(|offset| offset.0),
                lag: position.lag,
            })
            .collect(),
        lag: view.lag,
        last_error: view.last_error.clone(),
        last_status: u32::from(view.last_status),
        delivered_count: view.delivered_count,
        dead_lettered_count: view.dead_lettered_count,
    }
}

/// An endpoint's state from its wire form (the secret is never sent).
pub fn webhook_from_proto(webhook: proto::Webhook) -> crate::webhook::WebhookView {
    crate::webhook::WebhookView {
        endpoint: stele_engine::webhook::Endpoint {
            name: webhook.name,
            url: webhook.url,
            topic: webhook.topic,
            event_types: webhook.event_types,
            key_prefix: webhook.key_prefix.to_vec(),
            secret: Vec::new(),
            paused: webhook.state == proto::WebhookState::Paused as i32,
            settings: webhook_settings_from_proto(webhook.settings.unwrap_or_default()),
            redrive_until: Vec::new(),
        },
        circuit: match proto::CircuitState::try_from(webhook.circuit) {
            Ok(proto::CircuitState::Open) => "open",
            Ok(proto::CircuitState::HalfOpen) => "half_open",
            _ => "closed",
        },
        partitions: webhook
            .partitions
            .into_iter()
            .map(|position| stele_engine::CursorPosition {
                partition: stele_engine::event::PartitionId(position.partition),
                committed: position.committed_offset.map(stele_engine::event::Offset),
                lag: position.lag,
            })
            .collect(),
        lag: webhook.lag,
        last_error: webhook.last_error,
        last_status: u16::try_from(webhook.last_status).unwrap_or(0),
        delivered_count: webhook.delivered_count,
        dead_lettered_count: webhook.dead_lettered_count,
    }
}

/// A dead letter in its wire form.
pub fn dead_letter_to_proto(letter: &crate::webhook::DeadLetterView) -> proto::DeadLetter {
    proto::DeadLetter {
        dead_letter_partition: letter.dead_letter_partition,
        dead_letter_offset: letter.dead_letter_offset,
        topic: letter.topic.clone(),
        partition: letter.partition,
        offset: letter.offset,
        key: letter.key.clone(),
        r#type: letter.event_type.clone(),
        webhook_id: letter.webhook_id.clone(),
        reason: letter.reason.clone(),
        last_status: u32::from(letter.last_status),
        attempts: letter.attempts,
    }
}

/// A dead letter from its wire form.
pub fn dead_letter_from_proto(letter: proto::DeadLetter) -> crate::webhook::DeadLetterView {
    crate::webhook::DeadLetterView {
        dead_letter_partition: letter.dead_letter_partition,
        dead_letter_offset: letter.dead_letter_offset,
        topic: letter.topic,
        partition: letter.partition,
        offset: letter.offset,
        key: letter.key.to_vec(),
        event_type: letter.r#type,
        webhook_id: letter.webhook_id,
        reason: letter.reason,
        last_status: u16::try_from(letter.last_status).unwrap_or(0),
        attempts: letter.attempts,
    }
}

/// A partition's quarantine for the wire (its file is relative to the data
/// directory already, so it names no server path).
pub fn quarantine_to_proto(quarantine: &stele_engine::Quarantine) -> proto::PartitionQuarantine {
    proto::PartitionQuarantine {
        file: quarantine.file.clone(),
        position: quarantine.position,
        reason: quarantine.reason.clone(),
        served_end: quarantine.served_end.0,
    }
}

/// A partition's quarantine from the wire.
pub fn quarantine_from_proto(quarantine: proto::PartitionQuarantine) -> stele_engine::Quarantine {
    stele_engine::Quarantine {
        file: quarantine.file,
        position: quarantine.position,
        reason: quarantine.reason,
        served_end: stele_engine::Offset(quarantine.served_end),
    }
}

//! The gRPC API end to end over real TCP (port 0): every RPC, the error
//! contract (codes, `ErrorDetail`, the `stele-error-code` trailer),
//! subscriptions (catch-up, live, filters, start positions, heartbeats, flow
//! control), the typed client's `Producer` and `Consumer`, restarts, health and
//! reflection.

use super::support::{channel, step};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use stele::Sequence;

use stele::client::{
    Client, ClientError, CommitMode, Followed, Follower, GrpcCode, ProducerOptions, RetryPolicy,
    StartPosition, SubscribeOptions, Subscription, SubscriptionItem, TestServer, start_test_server,
};
use stele::server::backend::BoxFuture;
use stele::server::{self, Backend, EngineBackend, SteleService};
use stele::wire::proto::stele_client::SteleClient;
use stele::wire::{self, proto};
use stele::{
    AppendRequest, Direction, Epoch, ErrorKind, Event, ExpectedSequence, Offset, PartitionId, ProducerStamp,
    TopicOptions,
};

fn event(event_type: &str, payload: &str) -> Event {
    Event::new(event_type, payload.as_bytes().to_vec())
}

fn append(key: &str, payload: &str) -> AppendRequest {
    AppendRequest::new(key, vec![event("noted", payload)])
}

async fn topic(server: &TestServer, name: &str, partitions: u32) {
    server
        .client
        .create_topic(name, &TopicOptions::default().partitions(partitions))
        .await
        .expect("create topic");
}

/// The next item of a subscription, skipping heartbeats.
async fn next_item(subscription: &mut Subscription) -> SubscriptionItem {
    loop {
        let item = step(subscription.next())
            .await
            .expect("stream open")
            .expect("item");
        if !matches!(item, SubscriptionItem::Heartbeat { .. }) {
            return item;
        }
    }
}

/// Payloads received until the caught-up marker.
async fn payloads_until_caught_up(subscription: &mut Subscription) -> Vec<String> {
    let mut payloads = Vec::new();
    loop {
        match next_item(subscription).await {
            SubscriptionItem::Events { events, .. } => payloads.extend(
                events
                    .into_iter()
                    .map(|event| String::from_utf8(event.payload).expect("utf-8")),
            ),
            SubscriptionItem::CaughtUp { .. } => return payloads,
            SubscriptionItem::Heartbeat { .. } => unreachable!("skipped"),
        }
    }
}

fn assert_status(error: &ClientError, code: GrpcCode, kind: ErrorKind) {
    assert_eq!(error.code(), Some(code), "{error}");
    assert_eq!(error.kind(), Some(kind), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn topic_rpcs_create_describe_list_and_delete() {
    // Goal: the topic RPCs round-trip settings and report ALREADY_EXISTS and NOT_FOUND.
    let server = start_test_server().await;
    let client = &server.client;
    let options = TopicOptions::default()
        .partitions(3)
        .retention_bytes(Some(1 << 20))
        .dedup_window_ms(60_000);
    let created = client.create_topic("orders", &options).await.expect("create");
    assert_eq!(created.partitions, 3);
    assert_eq!(created.retention_bytes, Some(1 << 20));
    assert_eq!(created.dedup_window_ms, 60_000);
    let description = client.describe_topic("orders").await.expect("describe");
    assert_eq!(description.topic, "orders");
    assert_eq!(description.partitions.len(), 3);
    assert!(
        description
            .partitions
            .iter()
            .enumerate()
            .all(
                |(index, partition)| partition.partition == PartitionId(index as u32)
                    && partition.high_watermark == Offset(0)
            )
    );
    let again = client.create_topic("orders", &options).await.expect_err("exists");
    assert_status(&again, GrpcCode::AlreadyExists, ErrorKind::TopicExists);
    assert_eq!(again.error_code(), Some(9));
    topic(&server, "payments", 1).await;
    let mut topics = client.list_topics().await.expect("list");
    topics.sort();
    assert_eq!(topics, vec!["orders".to_string(), "payments".to_string()]);
    client.delete_topic("orders").await.expect("delete");
    assert_eq!(
        client.list_topics().await.expect("list"),
        vec!["payments".to_string()]
    );
    let gone = client.describe_topic("orders").await.expect_err("deleted");
    assert_status(&gone, GrpcCode::NotFound, ErrorKind::TopicNotFound);
    let gone = client.delete_topic("orders").await.expect_err("deleted");
    assert_status(&gone, GrpcCode::NotFound, ErrorKind::TopicNotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_topic_changes_limits_on_every_backend_and_refuses_what_one_cannot_apply() {
    // Goal: UpdateTopic's contract on the backend under test (the engine, or
    // NATS under scripts/it-nats.sh): retention and the payload limit change
    // and DescribeTopic shows the new revision; durability and segment size
    // change on the engine and are FAILED_PRECONDITION (UNSUPPORTED) on NATS,
    // changing nothing; an unknown topic is NOT_FOUND.
    let server = start_test_server().await;
    let client = &server.client;
    topic(&server, "altered", 2).await;
    let update = client
        .update_topic(
            "altered",
            &stele::TopicChange {
                retention_age_ms: Some(Some(3_600_000)),
                payload_size_max: Some(4096),
                ..stele::TopicChange::default()
            },
        )
        .await
        .expect("limits change on every backend");
    assert_eq!(update.revision, 1);
    assert_eq!(update.previous.retention_age_ms, None);
    assert_eq!(update.options.retention_age_ms, Some(3_600_000));
    let description = client.describe_topic("altered").await.expect("describe");
    assert_eq!(description.revision, 1);
    assert_eq!(description.options.payload_size_max, 4096);
    let refused = client
        .append(
            "altered",
            &AppendRequest::new("k", vec![event("big", &"x".repeat(4097))]),
        )
        .await
        .expect_err("over the new limit");
    assert_eq!(refused.kind(), Some(ErrorKind::LimitExceeded), "{refused}");
    client
        .append(
            "altered",
            &AppendRequest::new("k", vec![event("fits", &"x".repeat(4096))]),
        )
        .await
        .expect("at the new limit");
    let durability = client
        .update_topic(
            "altered",
            &stele::TopicChange {
                durability: Some(stele::Durability::None),
                ..stele::TopicChange::default()
            },
        )
        .await;
    if stele::client::test_backend().is_some() {
        let error = durability.expect_err("NATS cannot change durability");
        assert_status(&error, GrpcCode::FailedPrecondition, ErrorKind::Unsupported);
        assert_eq!(
            client.describe_topic("altered").await.expect("describe").revision,
            1
        );
    } else {
        assert_eq!(durability.expect("the engine changes durability").revision, 2);
    }
    let unknown = client
        .update_topic(
            "no-such-topic",
            &stele::TopicChange {
                retention_bytes: Some(None),
                ..stele::TopicChange::default()
            },
        )
        .await
        .expect_err("unknown");
    assert_status(&unknown, GrpcCode::NotFound, ErrorKind::TopicNotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn appends_and_reads_round_trip_events_through_every_read_rpc() {
    // Goal: Append, AppendBatch, Read and ReadKey carry every event field, and a
    // batch reports each append's own outcome in request order.
    let server = start_test_server().await;
    let client = &server.client;
    topic(&server, "t", 1).await;
    let rich = Event::new("created", b"{\"a\":1}".to_vec())
        .with_header("trace", b"abc".to_vec())
        .with_idempotency_id("id-1");
    let first = client
        .append(
            "t",
            &AppendRequest::new("k", vec![rich.clone()]).expect(ExpectedSequence::NoEvents),
        )
        .await
        .expect("append");
    assert_eq!(
        (first.first_offset, first.first_sequence),
        (Offset(0), Sequence(0))
    );
    assert!(!first.duplicate);
    let retry = client
        .append("t", &AppendRequest::new("k", vec![rich.clone()]))
        .await
        .expect("retry");
    assert!(retry.duplicate);
    assert_eq!(retry.first_offset, Offset(0));
    let outcomes = client
        .append_batch(
            "t",
            &[
                append("k", "2").expect(ExpectedSequence::Exact(Sequence(0))),
                append("k", "stale").expect(ExpectedSequence::Exact(Sequence(0))),
                append("other", "3"),
            ],
        )
        .await
        .expect("batch");
    assert_eq!(outcomes.len(), 3);
    assert_eq!(outcomes[0].as_ref().expect("first").first_offset, Offset(1));
    let stale = outcomes[1].as_ref().expect_err("stale");
    assert_status(
        stale,
        GrpcCode::FailedPrecondition,
        ErrorKind::WrongExpectedSequence,
    );
    assert_eq!(
        stale.details().and_then(|details| details.actual_sequence),
        Some(Sequence(1))
    );
    assert_eq!(outcomes[2].as_ref().expect("third").first_offset, Offset(2));

    let read = client
        .read("t", PartitionId(0), Offset(0), 0, 0)
        .await
        .expect("read");
    assert_eq!(read.high_watermark, Offset(3));
    assert_eq!(read.next_offset, Offset(3));
    assert_eq!(read.events.len(), 3);
    let stored = &read.events[0];
    assert_eq!(stored.key, b"k");
    assert_eq!(stored.event_type, "created");
    assert_eq!(stored.payload, rich.payload);
    assert_eq!(stored.headers, rich.headers);
    assert_eq!(stored.idempotency_id, rich.idempotency_id);
    let limited = client
        .read("t", PartitionId(0), Offset(1), 1, 0)
        .await
        .expect("read");
    assert_eq!(limited.events.len(), 1);
    assert_eq!(limited.next_offset, Offset(2));

    let forwards = client
        .read_key("t", b"k", None, Direction::Forwards, 0)
        .await
        .expect("read key");
    assert_eq!(forwards.last_sequence, Some(1));
    assert_eq!(
        forwards
            .events
            .iter()
            .map(|event| event.sequence.0)
            .collect::<Vec<_>>(),
        vec![0, 1]
    );
    let backwards = client
        .read_key("t", b"k", None, Direction::Backwards, 1)
        .await
        .expect("read key");
    assert_eq!(backwards.events.len(), 1);
    assert_eq!(backwards.events[0].payload, b"2");
    let none = client
        .read_key("t", b"nobody", None, Direction::Forwards, 0)
        .await
        .expect("read key");
    assert!(none.events.is_empty());
    assert_eq!(none.last_sequence, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_expected_sequence_is_failed_precondition_with_actual_sequence_and_code_trailer() {
    // Goal: a CAS conflict carries FAILED_PRECONDITION, the actual sequence in the
    // ErrorDetail, and code 10 in the `stele-error-code` trailer (checked on the
    // raw status, not through the typed client).
    let server = start_test_server().await;
    topic(&server, "t", 1).await;
    server
        .client
        .append("t", &append("k", "1"))
        .await
        .expect("append");
    let error = server
        .client
        .append("t", &append("k", "2").expect(ExpectedSequence::NoEvents))
        .await
        .expect_err("conflict");
    assert_status(
        &error,
        GrpcCode::FailedPrecondition,
        ErrorKind::WrongExpectedSequence,
    );
    assert_eq!(error.error_code(), Some(10));
    assert_eq!(
        error.details().and_then(|details| details.actual_sequence),
        Some(Sequence(0))
    );

    let mut raw = SteleClient::connect(server.url()).await.expect("raw client");
    let status = raw
        .append(proto::AppendRequest {
            topic: "t".into(),
            key: b"k".to_vec(),
            expected: Some(proto::ExpectedSequence {
                kind: Some(proto::expected_sequence::Kind::Exact(7)),
            }),
            events: vec![proto::Event {
                r#type: "x".into(),
                payload: b"3".to_vec(),
                ..Default::default()
            }],
            producer: None,
        })
        .await
        .expect_err("conflict");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        status
            .metadata()
            .get(wire::status::ERROR_CODE_METADATA)
            .and_then(|value| value.to_str().ok()),
        Some("10")
    );
    let detail = wire::status::detail_of(&status).expect("detail");
    assert_eq!(detail.actual_sequence, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_topics_and_cursors_are_not_found() {
    // Goal: NOT_FOUND with the topic and cursor codes, on every RPC that names them.
    let server = start_test_server().await;
    let client = &server.client;
    let error = client
        .read("nope", PartitionId(0), Offset(0), 0, 0)
        .await
        .expect_err("unknown topic");
    assert_status(&error, GrpcCode::NotFound, ErrorKind::TopicNotFound);
    assert_eq!(error.error_code(), Some(8));
    let error = client
        .subscribe("nope", &SubscribeOptions::default())
        .await
        .expect_err("unknown topic");
    assert_status(&error, GrpcCode::NotFound, ErrorKind::TopicNotFound);
    topic(&server, "t", 1).await;
    let error = client.get_cursor("t", "ghost").await.expect_err("unknown cursor");
    assert_status(&error, GrpcCode::NotFound, ErrorKind::CursorNotFound);
    assert_eq!(error.error_code(), Some(17));
    let error = client
        .delete_cursor("t", "ghost")
        .await
        .expect_err("unknown cursor");
    assert_status(&error, GrpcCode::NotFound, ErrorKind::CursorNotFound);
    let options = SubscribeOptions {
        start: StartPosition::Cursor("ghost".into()),
        ..SubscribeOptions::default()
    };
    // A subscription from a cursor never committed starts at the earliest event,
    // like a consumer group seen for the first time.
    let mut subscription = client.subscribe("t", &options).await.expect("subscribes");
    let first = subscription.next().await.expect("an item").expect("no error");
    assert!(
        matches!(first, SubscriptionItem::CaughtUp { ref next_offsets } if next_offsets.values().all(|offset| *offset == Offset(0))),
        "{first:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_outside_the_retained_range_are_out_of_range_with_the_range() {
    // Goal: OUT_OF_RANGE below the earliest retained offset (after retention
    // deleted tiny segments) and past the high watermark, with the range in the
    // detail.
    let server = start_test_server().await;
    let client = &server.client;
    client
        .create_topic(
            "t",
            &TopicOptions::default()
                .partitions(1)
                .segment_size_bytes_max(4096)
                .retention_bytes(Some(8192)),
        )
        .await
        .expect("create");
    let payload = "x".repeat(1000);
    for _ in 0..40 {
        client.append("t", &append("k", &payload)).await.expect("append");
    }
    // The engine removes whole sealed segments when its housekeeping runs
    // (here at once); JetStream removes single messages as each append passes
    // the stream's max_bytes.
    if let Some(log) = server.server().expect("running").log() {
        let deleted = log
            .topic("t")
            .expect("topic")
            .enforce_retention()
            .expect("retention");
        assert!(deleted > 0, "retention deleted segments");
    }
    let description = client.describe_topic("t").await.expect("describe");
    let earliest = description.partitions[0].earliest;
    let high_watermark = description.partitions[0].high_watermark;
    assert!(earliest > Offset(0));
    assert_eq!(high_watermark, Offset(40));

    let below = client
        .read("t", PartitionId(0), Offset(0), 0, 0)
        .await
        .expect_err("below earliest");
    assert_status(&below, GrpcCode::OutOfRange, ErrorKind::OffsetOutOfRange);
    let details = below.details().expect("details");
    assert_eq!(details.earliest_offset, Some(earliest));
    assert_eq!(details.high_watermark, Some(high_watermark));
    let past = client
        .read("t", PartitionId(0), Offset(41), 0, 0)
        .await
        .expect_err("past the high watermark");
    assert_status(&past, GrpcCode::OutOfRange, ErrorKind::OffsetOutOfRange);
    let at_earliest = client
        .read("t", PartitionId(0), earliest, 1, 0)
        .await
        .expect("read at earliest");
    assert_eq!(at_earliest.events[0].offset, earliest);
    let options = SubscribeOptions {
        start: StartPosition::Offsets(BTreeMap::from([(PartitionId(0), Offset(0))])),
        ..SubscribeOptions::default()
    };
    let error = client.subscribe("t", &options).await.expect_err("below earliest");
    assert_status(&error, GrpcCode::OutOfRange, ErrorKind::OffsetOutOfRange);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_invalid_argument_naming_the_limit() {
    // Goal: malformed input and values above a limit are INVALID_ARGUMENT; a limit
    // names itself, the value and the maximum in the detail.
    let server = start_test_server().await;
    let client = &server.client;
    topic(&server, "t", 1).await;
    let oversized = AppendRequest::new("k", vec![Event::new("big", vec![0u8; (1 << 20) + 1])]);
    let error = client
        .append("t", &oversized)
        .await
        .expect_err("payload above 1 MiB");
    assert_status(&error, GrpcCode::InvalidArgument, ErrorKind::LimitExceeded);
    assert_eq!(error.error_code(), Some(7));
    let limit = error
        .details()
        .and_then(|details| details.limit.clone())
        .expect("limit detail");
    assert_eq!(limit.name, "payload size");
    assert_eq!(limit.value, (1 << 20) + 1);
    assert_eq!(limit.max, 1 << 20);

    let error = client.append("t", &append("", "x")).await.expect_err("empty key");
    assert_status(&error, GrpcCode::InvalidArgument, ErrorKind::InvalidArgument);
    assert!(error.to_string().contains("key is empty"), "{error}");
    let error = client
        .create_topic("bad/name", &TopicOptions::default())
        .await
        .expect_err("bad topic name");
    assert_status(&error, GrpcCode::InvalidArgument, ErrorKind::InvalidArgument);
    let error = client
        .append("t", &AppendRequest::new("k", Vec::new()))
        .await
        .expect_err("no events");
    assert_status(&error, GrpcCode::InvalidArgument, ErrorKind::InvalidArgument);
    let nothing = client
        .read("t", PartitionId(0), Offset(0), 0, 0)
        .await
        .expect("read");
    assert!(nothing.events.is_empty(), "nothing was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_above_the_server_size_limit_is_resource_exhausted() {
    // Goal: a request larger than the server's gRPC message limit is rejected
    // with RESOURCE_EXHAUSTED (the proto's contract), before reaching the engine.
    let server = start_test_server().await;
    topic(&server, "t", 1).await;
    let event = Event::new("big", vec![7u8; 1 << 20]);
    let count = server::MESSAGE_SIZE_BYTES_MAX / (1 << 20) + 1;
    let request = AppendRequest::new("k", vec![event; count]);
    let error = server.client.append("t", &request).await.expect_err("too large");
    assert_eq!(error.code(), Some(GrpcCode::ResourceExhausted), "{error}");
    assert_eq!(error.error_code(), Some(23), "{error}");
    let description = server.client.describe_topic("t").await.expect("describe");
    assert_eq!(description.partitions[0].high_watermark, Offset(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn stamped_appends_are_deduplicated_and_older_epochs_are_aborted() {
    // Goal: the raw producer protocol: a repeat of a recent stamped append is a
    // duplicate at the original position; a newer epoch fences the older one
    // with ABORTED and the current epoch in the detail.
    let server = start_test_server().await;
    let client = &server.client;
    topic(&server, "t", 1).await;
    let (producer, epoch) = client.open_producer("t", "writer").await.expect("open");
    let stamp = |sequence| ProducerStamp {
        producer,
        epoch,
        sequence,
    };
    let first = client
        .append("t", &append("k", "1").stamped(stamp(Sequence(0))))
        .await
        .expect("append");
    client
        .append("t", &append("k", "2").stamped(stamp(Sequence(1))))
        .await
        .expect("append");
    let repeat = client
        .append("t", &append("k", "1").stamped(stamp(Sequence(0))))
        .await
        .expect("repeat");
    assert!(repeat.duplicate);
    assert_eq!(repeat.first_offset, first.first_offset);
    let gap = client
        .append("t", &append("k", "9").stamped(stamp(Sequence(5))))
        .await
        .expect_err("gap");
    assert_status(&gap, GrpcCode::FailedPrecondition, ErrorKind::ProducerOutOfOrder);
    assert_eq!(
        gap.details()
            .and_then(|details| details.expected_producer_sequence),
        Some(Sequence(2))
    );

    let (again, newer) = client.open_producer("t", "writer").await.expect("reopen");
    assert_eq!(again, producer);
    assert!(newer > epoch);
    let fenced = client
        .append("t", &append("k", "3").stamped(stamp(Sequence(2))))
        .await
        .expect_err("fenced");
    assert_status(&fenced, GrpcCode::Aborted, ErrorKind::ProducerFenced);
    assert_eq!(fenced.error_code(), Some(13));
    assert_eq!(
        fenced.details().and_then(|details| details.current_epoch),
        Some(newer)
    );
    assert!(!fenced.is_transient());
}

#[tokio::test(flavor = "multi_thread")]
async fn append_session_answers_each_request_in_order_with_its_correlation_id() {
    // Goal: many pipelined requests on one AppendSession are answered one for one,
    // in request order, echoing correlation ids, with per-append outcomes.
    let server = start_test_server().await;
    topic(&server, "t", 2).await;
    let session = server.client.append_session().await.expect("session");
    let ids: Vec<u64> = (0..50).map(|index| 1000 - index * 7).collect();
    for (index, id) in ids.iter().enumerate() {
        let mut appends = vec![append(&format!("key-{}", index % 5), &index.to_string())];
        if index == 10 {
            appends.push(append("k", "bad").expect(ExpectedSequence::Exact(Sequence(99))));
        }
        step(session.send(*id, "t", &appends)).await.expect("send");
    }
    let mut responses = session.finish();
    let mut answered = Vec::new();
    while let Some(response) = step(responses.next()).await {
        let (id, outcomes) = response.expect("response");
        if answered.len() == 10 {
            assert_eq!(outcomes.len(), 2);
            assert!(outcomes[0].is_ok());
            let error = outcomes[1].as_ref().expect_err("conflict");
            assert_status(
                error,
                GrpcCode::FailedPrecondition,
                ErrorKind::WrongExpectedSequence,
            );
        } else {
            assert_eq!(outcomes.len(), 1);
            assert!(outcomes[0].is_ok());
        }
        answered.push(id);
    }
    assert_eq!(answered, ids);
    // Per key, the appends were stored in request order.
    for key in 0..5 {
        let history = server
            .client
            .read_key("t", format!("key-{key}").as_bytes(), None, Direction::Forwards, 0)
            .await
            .expect("read key");
        let payloads: Vec<usize> = history
            .events
            .iter()
            .map(|event| String::from_utf8_lossy(&event.payload).parse().expect("number"))
            .collect();
        let expected: Vec<usize> = (0..50).filter(|index| index % 5 == key).collect();
        assert_eq!(payloads, expected);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscription_catches_up_then_follows_live() {
    // Goal: the backlog arrives before the caught-up marker (whose offsets are
    // the high watermarks at the start), then a new append arrives live.
    let server = start_test_server().await;
    let client = &server.client;
    topic(&server, "t", 2).await;
    for index in 0..20 {
        client
            .append("t", &append(&format!("k{index}"), &index.to_string()))
            .await
            .expect("append");
    }
    let options = SubscribeOptions {
        max_batch_events: 3,
        ..SubscribeOptions::default()
    };
    let mut subscription = client.subscribe("t", &options).await.expect("subscribe");
    let mut backlog = Vec::new();
    let caught_up = loop {
        match next_item(&mut subscription).await {
            SubscriptionItem::Events { events, .. } => {
                assert!(events.len() <= 3);
                backlog.extend(events.into_iter().map(|event| event.payload));
            }
            SubscriptionItem::CaughtUp { next_offsets } => break next_offsets,
            SubscriptionItem::Heartbeat { .. } => unreachable!("skipped"),
        }
    };
    assert_eq!(backlog.len(), 20);
    let description = client.describe_topic("t").await.expect("describe");
    for partition in &description.partitions {
        assert_eq!(caught_up[&partition.partition], partition.high_watermark);
    }
    let ack = client.append("t", &append("live", "new")).await.expect("append");
    match next_item(&mut subscription).await {
        SubscriptionItem::Events {
            partition,
            events,
            next_offset,
        } => {
            assert_eq!(partition, ack.partition);
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].payload, b"new");
            assert_eq!(events[0].offset, ack.first_offset);
            assert_eq!(next_offset, ack.first_offset.next());
        }
        other => panic!("expected the live event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscription_filters_by_event_type_and_key_prefix_on_the_server() {
    // Goal: filters drop events on the server, yet next_offset moves past the
    // skipped ones so that a committed position does not revisit them.
    let server = start_test_server().await;
    let client = &server.client;
    topic(&server, "t", 1).await;
    let requests = [
        ("order-1", "created"),
        ("order-1", "paid"),
        ("user-1", "paid"),
        ("order-2", "paid"),
        ("order-2", "shipped"),
    ];
    for (key, event_type) in requests {
        client
            .append("t", &AppendRequest::new(key, vec![event(event_type, key)]))
            .await
            .expect("append");
    }
    let options = SubscribeOptions {
        event_types: vec!["paid".into()],
        key_prefix: b"order-".to_vec(),
        ..SubscribeOptions::default()
    };
    let mut subscription = client.subscribe("t", &options).await.expect("subscribe");
    let mut kept = Vec::new();
    let mut next = Offset(0);
    loop {
        match next_item(&mut subscription).await {
            SubscriptionItem::Events {
                events, next_offset, ..
            } => {
                kept.extend(
                    events
                        .iter()
                        .map(|event| (event.offset, event.event_type.clone())),
                );
                next = next_offset;
            }
            SubscriptionItem::CaughtUp { .. } => break,
            SubscriptionItem::Heartbeat { .. } => unreachable!("skipped"),
        }
    }
    assert_eq!(
        kept,
        vec![(Offset(1), "paid".to_string()), (Offset(3), "paid".to_string())]
    );
    assert_eq!(next, Offset(5), "past the filtered tail");
}

#[tokio::test(flavor = "multi_thread")]
async fn subscription_start_positions_select_where_each_partition_begins() {
    // Goal: earliest, latest, explicit offsets, a timestamp and a cursor each
    // start where the contract says.
    let server = start_test_server().await;
    let client = &server.client;
    topic(&server, "t", 1).await;
    let mut acks = Vec::new();
    for index in 0..6 {
        acks.push(
            client
                .append("t", &append("k", &index.to_string()))
                .await
                .expect("append"),
        );
    }
    let start = |start| SubscribeOptions {
        start,
        ..SubscribeOptions::default()
    };
    let mut earliest = client
        .subscribe("t", &start(StartPosition::Earliest))
        .await
        .expect("subscribe");
    assert_eq!(
        payloads_until_caught_up(&mut earliest).await,
        vec!["0", "1", "2", "3", "4", "5"]
    );
    let mut latest = client
        .subscribe("t", &start(StartPosition::Latest))
        .await
        .expect("subscribe");
    assert!(payloads_until_caught_up(&mut latest).await.is_empty());
    let offsets = BTreeMap::from([(PartitionId(0), Offset(4))]);
    let mut from_offset = client
        .subscribe("t", &start(StartPosition::Offsets(offsets)))
        .await
        .expect("subscribe");
    assert_eq!(payloads_until_caught_up(&mut from_offset).await, vec!["4", "5"]);
    // Timestamps are milliseconds and several appends may share one: the first
    // event at or after the last append's time is that append or an earlier one
    // with the same time.
    let last = acks.last().expect("acks");
    let mut from_time = client
        .subscribe("t", &start(StartPosition::Timestamp(last.timestamp_ms)))
        .await
        .expect("subscribe");
    let from_time = payloads_until_caught_up(&mut from_time).await;
    let expected_first = acks
        .iter()
        .position(|ack| ack.timestamp_ms >= last.timestamp_ms)
        .expect("found");
    assert_eq!(from_time.len(), 6 - expected_first);
    let mut future = client
        .subscribe("t", &start(StartPosition::Timestamp(last.timestamp_ms + 60_000)))
        .await
        .expect("subscribe");
    assert!(payloads_until_caught_up(&mut future).await.is_empty());
    client
        .commit_cursor("t", "reader", &[(PartitionId(0), Offset(2))], false)
        .await
        .expect("commit");
    let mut from_cursor = client
        .subscribe("t", &start(StartPosition::Cursor("reader".into())))
        .await
        .expect("subscribe");
    assert_eq!(
        payloads_until_caught_up(&mut from_cursor).await,
        vec!["2", "3", "4", "5"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_subscription_sends_heartbeats_with_high_watermarks() {
    // Goal: with a short heartbeat period, an idle subscription sends heartbeats
    // carrying each partition's high watermark.
    let server = start_test_server().await;
    let client = &server.client;
    topic(&server, "t", 2).await;
    let ack = client.append("t", &append("k", "1")).await.expect("append");
    let options = SubscribeOptions {
        heartbeat_ms: 100,
        ..SubscribeOptions::default()
    };
    let mut subscription = client.subscribe("t", &options).await.expect("subscribe");
    payloads_until_caught_up(&mut subscription).await;
    let item = step(subscription.next()).await.expect("open").expect("item");
    let SubscriptionItem::Heartbeat { high_watermarks } = item else {
        panic!("expected a heartbeat, got {item:?}");
    };
    assert_eq!(high_watermarks.len(), 2);
    assert_eq!(high_watermarks[&ack.partition], ack.first_offset.next());
}

/// Counts the events the server's subscriptions read from storage.
struct CountingBackend {
    inner: EngineBackend,
    scanned: Arc<AtomicU64>,
}

impl Backend for CountingBackend {
    fn default_topic_options(&self) -> TopicOptions {
        self.inner.default_topic_options()
    }
    fn create_topic(&self, name: &str, options: TopicOptions) -> BoxFuture<stele::Result<TopicOptions>> {
        self.inner.create_topic(name, options)
    }
    fn describe_topic(&self, name: &str) -> BoxFuture<stele::Result<server::backend::TopicDescription>> {
        self.inner.describe_topic(name)
    }
    fn list_topics(&self) -> BoxFuture<stele::Result<Vec<String>>> {
        self.inner.list_topics()
    }
    fn delete_topic(&self, name: &str) -> BoxFuture<stele::Result<()>> {
        self.inner.delete_topic(name)
    }
    fn update_topic(
        &self,
        name: &str,
        change: stele::TopicChange,
        principal: &str,
    ) -> BoxFuture<stele::Result<stele::TopicUpdate>> {
        self.inner.update_topic(name, change, principal)
    }
    fn append(
        &self,
        topic: &str,
        requests: Vec<AppendRequest>,
    ) -> BoxFuture<stele::Result<Vec<stele::Result<stele::AppendAck>>>> {
        self.inner.append(topic, requests)
    }
    fn open_producer(&self, topic: &str, name: &str) -> BoxFuture<stele::Result<(stele::ProducerId, Epoch)>> {
        self.inner.open_producer(topic, name)
    }
    fn scan(
        &self,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        count_max: usize,
        bytes_max: u64,
        filter: &stele::EventFilter,
    ) -> BoxFuture<stele::Result<stele::StoredEvents>> {
        let scanned = Arc::clone(&self.scanned);
        let future = self
            .inner
            .scan(topic, partition, from, count_max, bytes_max, filter);
        Box::pin(async move {
            let events = future.await?;
            // Every event examined, those the filter left out included.
            scanned.fetch_add(events.next_offset().0 - from.0, Ordering::SeqCst);
            Ok(events)
        })
    }
    fn read_key(
        &self,
        topic: &str,
        key: &[u8],
        from: Option<Sequence>,
        direction: Direction,
        count_max: usize,
    ) -> BoxFuture<stele::Result<server::backend::KeyHistory>> {
        self.inner.read_key(topic, key, from, direction, count_max)
    }
    fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> BoxFuture<stele::Result<Offset>> {
        self.inner.offset_for_timestamp(topic, partition, timestamp_ms)
    }
    fn high_watermark(&self, topic: &str, partition: PartitionId) -> BoxFuture<stele::Result<Offset>> {
        self.inner.high_watermark(topic, partition)
    }
    fn earliest(&self, topic: &str, partition: PartitionId) -> BoxFuture<stele::Result<Offset>> {
        self.inner.earliest(topic, partition)
    }
    fn wait_past(
        &self,
        topic: &str,
        partition: PartitionId,
        after: Offset,
    ) -> BoxFuture<stele::Result<Offset>> {
        self.inner.wait_past(topic, partition, after)
    }
    fn commit_cursor(
        &self,
        topic: &str,
        name: &str,
        offsets: Vec<(PartitionId, Offset)>,
        allow_backwards: bool,
    ) -> BoxFuture<stele::Result<()>> {
        self.inner.commit_cursor(topic, name, offsets, allow_backwards)
    }
    fn cursor(&self, topic: &str, name: &str) -> BoxFuture<stele::Result<Vec<stele::CursorPosition>>> {
        self.inner.cursor(topic, name)
    }
    fn cursors(&self, topic: &str) -> BoxFuture<stele::Result<server::backend::NamedCursors>> {
        self.inner.cursors(topic)
    }
    fn delete_cursor(&self, topic: &str, name: &str) -> BoxFuture<stele::Result<()>> {
        self.inner.delete_cursor(topic, name)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_subscriber_holds_the_server_back_instead_of_buffering_everything() {
    // Goal: flow control. A subscriber that does not read while 10 MiB are
    // appended must not make the server read (and buffer) everything ahead.
    // Method: serve the real service over a backend that counts the events the
    // subscription reads from storage. At every point, the server can be ahead
    // of what the client received by at most its channel of batches plus the
    // HTTP/2 windows, whatever the scheduling; so after each received event the
    // count read must stay within that bound. Then every event must arrive, in
    // order, exactly once.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(stele::Log::open(dir.path(), stele::LogOptions::default()).expect("open"));
    let scanned = Arc::new(AtomicU64::new(0));
    let backend = Arc::new(CountingBackend {
        inner: EngineBackend::new(Arc::clone(&log), TopicOptions::default(), false),
        scanned: Arc::clone(&scanned),
    });
    let (_closing_sender, closing) = tokio::sync::watch::channel(false);
    let service = proto::stele_server::SteleServer::new(SteleService::new(backend, closing))
        .max_decoding_message_size(server::MESSAGE_SIZE_BYTES_MAX)
        .max_encoding_message_size(server::MESSAGE_SIZE_BYTES_MAX);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let client = Client::connect(format!("http://{address}"))
        .await
        .expect("connect");
    client
        .create_topic("t", &TopicOptions::default().partitions(1))
        .await
        .expect("create");
    let options = SubscribeOptions {
        max_batch_events: 1,
        ..SubscribeOptions::default()
    };
    let mut subscription = client.subscribe("t", &options).await.expect("subscribe");
    let SubscriptionItem::CaughtUp { .. } = next_item(&mut subscription).await else {
        panic!("an empty topic is caught up at once");
    };
    const EVENT_SIZE: usize = 128 << 10;
    const EVENTS: u64 = 80; // 10 MiB.
    for index in 0..EVENTS {
        let mut payload = vec![0u8; EVENT_SIZE];
        payload[..8].copy_from_slice(&index.to_le_bytes());
        client
            .append("t", &AppendRequest::new("k", vec![Event::new("blob", payload)]))
            .await
            .expect("append");
    }
    // 8 batches in the server's channel, one being sent, one being read, and
    // what fits in the client's 2 MiB stream window and the server's 400 KiB
    // send buffer, with slack for framing.
    let window_events = ((2 << 20) + (400 << 10)) / EVENT_SIZE as u64 + 1;
    let ahead_max = 8 + 2 + window_events + 4;
    assert!(ahead_max < EVENTS / 2, "the bound is meaningful");
    assert!(scanned.load(Ordering::SeqCst) <= ahead_max);
    let mut received = 0u64;
    while received < EVENTS {
        let SubscriptionItem::Events { events, .. } = next_item(&mut subscription).await else {
            panic!("only events are expected");
        };
        for event in events {
            let index = u64::from_le_bytes(event.payload[..8].try_into().expect("8 bytes"));
            assert_eq!(index, received, "in order, exactly once");
            assert_eq!(event.payload.len(), EVENT_SIZE);
            received += 1;
        }
        let read = scanned.load(Ordering::SeqCst);
        assert!(
            read <= received + ahead_max,
            "the server read {read} events while the client received {received}"
        );
    }
    assert_eq!(scanned.load(Ordering::SeqCst), EVENTS);
}

#[tokio::test(flavor = "multi_thread")]
async fn cursor_rpcs_commit_get_list_and_delete_with_their_preconditions() {
    // Goal: cursor commits are durable and visible with lag; moving backwards
    // needs allow_backwards; committing past the high watermark is refused.
    let server = start_test_server().await;
    let client = &server.client;
    topic(&server, "t", 1).await;
    for index in 0..5 {
        client
            .append("t", &append("k", &index.to_string()))
            .await
            .expect("append");
    }
    client
        .commit_cursor("t", "a", &[(PartitionId(0), Offset(3))], false)
        .await
        .expect("commit");
    let positions = client.get_cursor("t", "a").await.expect("get");
    assert_eq!(positions[0].committed, Some(Offset(3)));
    assert_eq!(positions[0].lag, 2);
    let error = client
        .commit_cursor("t", "a", &[(PartitionId(0), Offset(1))], false)
        .await
        .expect_err("backwards");
    assert_status(&error, GrpcCode::FailedPrecondition, ErrorKind::CursorBackwards);
    client
        .commit_cursor("t", "a", &[(PartitionId(0), Offset(1))], true)
        .await
        .expect("replay");
    let error = client
        .commit_cursor("t", "b", &[(PartitionId(0), Offset(6))], false)
        .await
        .expect_err("ahead");
    assert_status(
        &error,
        GrpcCode::FailedPrecondition,
        ErrorKind::CursorAheadOfHighWatermark,
    );
    client
        .commit_cursor("t", "b", &[(PartitionId(0), Offset(5))], false)
        .await
        .expect("commit");
    let cursors = client.list_cursors("t").await.expect("list");
    let names: Vec<&str> = cursors.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, vec!["a", "b"]);
    assert_eq!(cursors[0].1[0].committed, Some(Offset(1)));
    client.delete_cursor("t", "a").await.expect("delete");
    let error = client.get_cursor("t", "a").await.expect_err("deleted");
    assert_status(&error, GrpcCode::NotFound, ErrorKind::CursorNotFound);
}

/// Payload strings of `count` events from a consumer.
async fn consume(consumer: &mut stele::client::Consumer, count: usize) -> Vec<String> {
    let mut payloads = Vec::new();
    for _ in 0..count {
        let event = step(consumer.next()).await.expect("open").expect("event");
        payloads.push(String::from_utf8(event.payload).expect("utf-8"));
    }
    payloads
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_resumes_from_its_cursor_without_losing_or_repeating_committed_events() {
    // Goal: a consumer commits, is dropped, and a new one on the same cursor
    // resumes right after the committed events; events delivered but not
    // committed are delivered again (at-least-once), and nothing is lost.
    let server = start_test_server().await;
    let client = &server.client;
    topic(&server, "t", 3).await;
    for index in 0..30 {
        client
            .append("t", &append(&format!("k{}", index % 7), &index.to_string()))
            .await
            .expect("append");
    }
    let mut first = client
        .consumer("t", "workers")
        .commit_mode(CommitMode::Manual)
        .build()
        .await
        .expect("consumer");
    let committed = consume(&mut first, 12).await;
    first.commit().await.expect("commit");
    let uncommitted = consume(&mut first, 5).await;
    drop(first);

    let mut second = client
        .consumer("t", "workers")
        .commit_mode(CommitMode::Manual)
        .build()
        .await
        .expect("consumer");
    let rest = consume(&mut second, 30 - 12).await;
    let committed_set: HashSet<&String> = committed.iter().collect();
    assert!(
        rest.iter().all(|payload| !committed_set.contains(payload)),
        "no committed event is repeated"
    );
    let mut all: Vec<String> = committed.iter().chain(&rest).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 30, "nothing is lost");
    assert!(
        uncommitted.iter().all(|payload| rest.contains(payload)),
        "uncommitted events are delivered again"
    );
    second.commit().await.expect("commit");
    let positions = client.get_cursor("t", "workers").await.expect("cursor");
    assert!(positions.iter().all(|position| position.lag == 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_auto_commits_and_survives_a_server_restart_without_repeats() {
    // Goal: with auto-commit every N events, the cursor follows; across a server
    // restart (new port) the consumer resubscribes after what it delivered, so
    // it sees every event exactly once, including ones appended after the
    // restart.
    let mut server = start_test_server().await;
    topic(&server, "t", 2).await;
    for index in 0..10 {
        server
            .client
            .append("t", &append(&format!("k{index}"), &index.to_string()))
            .await
            .expect("append");
    }
    let mut consumer = server
        .client
        .consumer("t", "auto")
        .commit_mode(CommitMode::Auto {
            events: 4,
            interval: Duration::from_secs(3600),
        })
        .build()
        .await
        .expect("consumer");
    let mut seen = consume(&mut consumer, 8).await;
    let positions = server.client.get_cursor("t", "auto").await.expect("cursor");
    let committed: u64 = positions
        .iter()
        .map(|position| position.committed.map_or(0, |offset| offset.0))
        .sum();
    assert_eq!(committed, 8, "two auto-commits of four events");
    server.restart().await;
    for index in 10..15 {
        server
            .client
            .append("t", &append(&format!("k{index}"), &index.to_string()))
            .await
            .expect("append after restart");
    }
    seen.extend(consume(&mut consumer, 7).await);
    let mut sorted: Vec<usize> = seen
        .iter()
        .map(|payload| payload.parse().expect("number"))
        .collect();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..15).collect::<Vec<_>>(), "each event exactly once");
}

/// A key of the topic's partition `partition` (of `count`).
fn key_in(partition: u32, count: u32) -> String {
    (0..)
        .map(|index| format!("key-{index}"))
        .find(|key| stele::partition_for_key(key.as_bytes(), count) == PartitionId(partition))
        .expect("some key hashes to every partition")
}

/// The next event of a follower, past news of the connection.
async fn next_event(follower: &mut Follower) -> stele::RecordedEvent {
    // Bounded by `step`'s timeout on each call.
    loop {
        match step(follower.next()).await.expect("never ends") {
            Ok(Followed::Event(event)) => return event,
            Ok(Followed::Lost(_) | Followed::Resumed | Followed::CaughtUp) => {}
            Err(error) => panic!("follower failed: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn follower_resumes_after_a_restart_from_its_positions_and_the_start_elsewhere() {
    // Goal: a Follower started at a timestamp survives a server restart: the
    // partition it returned events from resumes right after the last one, the
    // partition it has no position in starts at the timestamp again, so every
    // event is returned exactly once. Method: three events in partition 0,
    // follow from timestamp 0 and take them, restart (new port), then two
    // events in partition 1 and one more in partition 0; the next three
    // events are exactly the new ones, each partition in offset order.
    let mut server = start_test_server().await;
    topic(&server, "t", 2).await;
    let (zero, one) = (key_in(0, 2), key_in(1, 2));
    for index in 0..3 {
        server
            .client
            .append("t", &append(&zero, &format!("a{index}")))
            .await
            .expect("append");
    }
    let options = SubscribeOptions {
        start: StartPosition::Timestamp(0),
        ..SubscribeOptions::default()
    };
    let mut follower = server.client.follow("t", options).await.expect("follow");
    for index in 0..3 {
        let event = next_event(&mut follower).await;
        assert_eq!(event.payload, format!("a{index}").into_bytes());
    }
    assert_eq!(follower.positions().get(&PartitionId(0)), Some(&Offset(3)));
    server.restart().await;
    for (key, payload) in [(&one, "b0"), (&one, "b1"), (&zero, "a3")] {
        server
            .client
            .append("t", &append(key, payload))
            .await
            .expect("append after restart");
    }
    let mut after: Vec<(u32, u64, String)> = Vec::new();
    for _ in 0..3 {
        let event = next_event(&mut follower).await;
        let payload = String::from_utf8(event.payload).expect("utf-8");
        after.push((event.partition.0, event.offset.0, payload));
    }
    after.sort();
    assert_eq!(
        after,
        [
            (0, 3, "a3".to_string()),
            (1, 0, "b0".to_string()),
            (1, 1, "b1".to_string())
        ]
    );
    assert_eq!(follower.positions().get(&PartitionId(0)), Some(&Offset(4)));
    assert_eq!(follower.positions().get(&PartitionId(1)), Some(&Offset(2)));
}

#[tokio::test(flavor = "multi_thread")]
async fn producer_routes_batches_and_pipelines_in_key_order() {
    // Goal: a producer stamps, batches and pipelines many appends over one
    // session; each key's events are stored in send order, each exactly once,
    // in the partition the server's hash picks.
    let server = start_test_server().await;
    topic(&server, "t", 4).await;
    let producer = server
        .client
        .producer("t", "loader")
        .batch_appends_max(16)
        .build()
        .await
        .expect("producer");
    let acks: Vec<_> = (0..400)
        .map(|index| producer.send(append(&format!("key-{}", index % 13), &index.to_string())))
        .collect();
    let mut results = Vec::new();
    for ack in acks {
        results.push(step(ack).await.expect("ack"));
    }
    producer.flush().await.expect("flush");
    for (index, ack) in results.iter().enumerate() {
        let key = format!("key-{}", index % 13);
        assert_eq!(ack.partition, producer.partition_for_key(key.as_bytes()));
        assert_eq!(ack.first_sequence, Sequence((index / 13) as u64));
        assert!(!ack.duplicate);
    }
    let description = server.client.describe_topic("t").await.expect("describe");
    let total: u64 = description
        .partitions
        .iter()
        .map(|partition| partition.high_watermark.0)
        .sum();
    assert_eq!(total, 400);
    let history = server
        .client
        .read_key("t", b"key-3", None, Direction::Forwards, 0)
        .await
        .expect("read key");
    let payloads: Vec<usize> = history
        .events
        .iter()
        .map(|event| String::from_utf8_lossy(&event.payload).parse().expect("number"))
        .collect();
    assert_eq!(
        payloads,
        (0..400).filter(|index| index % 13 == 3).collect::<Vec<_>>()
    );
    assert!(
        history
            .events
            .iter()
            .all(|event| event.producer.map(|stamp| stamp.producer) == Some(producer.id()))
    );
    producer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn producer_gets_the_original_position_for_an_append_already_stored() {
    // Goal: a producer's retry of a stored append is a duplicate, not a second
    // copy. Method: store the producer's first append (same stamp) through the
    // raw API first, as if an earlier attempt had succeeded unacknowledged; the
    // producer's send is then answered as a duplicate at the original offset.
    let server = start_test_server().await;
    topic(&server, "t", 1).await;
    let producer = server.client.producer("t", "p").build().await.expect("producer");
    let stamp = ProducerStamp {
        producer: producer.id(),
        epoch: producer.epoch(),
        sequence: Sequence(0),
    };
    let original = server
        .client
        .append("t", &append("k", "once").stamped(stamp))
        .await
        .expect("append");
    let retried = step(producer.send(append("k", "once"))).await.expect("send");
    assert!(retried.duplicate);
    assert_eq!(retried.first_offset, original.first_offset);
    let next = step(producer.send(append("k", "twice"))).await.expect("send");
    assert!(!next.duplicate);
    assert_eq!(next.first_offset, Offset(1));
    let read = server
        .client
        .read("t", PartitionId(0), Offset(0), 0, 0)
        .await
        .expect("read");
    assert_eq!(read.events.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn producer_keeps_going_in_order_after_an_append_is_rejected() {
    // Goal: a rejected append (wrong expected sequence) fails alone: the
    // pipelined appends after it on the same partition, rejected as out of
    // order by the server, are stamped again and stored in their send order.
    let server = start_test_server().await;
    topic(&server, "t", 1).await;
    let producer = server.client.producer("t", "p").build().await.expect("producer");
    let sends = vec![
        producer.send(append("k", "a")),
        producer.send(append("k", "b").expect(ExpectedSequence::Exact(Sequence(41)))),
        producer.send(append("k", "c")),
        producer.send(append("other", "d")),
        producer.send(append("k", "e").expect(ExpectedSequence::Exact(Sequence(1)))),
    ];
    let mut results = Vec::new();
    for send in sends {
        results.push(step(send).await);
    }
    assert!(results[0].is_ok());
    let rejected = results[1].as_ref().expect_err("wrong expected sequence");
    assert_status(
        rejected,
        GrpcCode::FailedPrecondition,
        ErrorKind::WrongExpectedSequence,
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert!(results[3].is_ok(), "{:?}", results[3]);
    assert!(results[4].is_ok(), "{:?}", results[4]);
    let read = server
        .client
        .read("t", PartitionId(0), Offset(0), 0, 0)
        .await
        .expect("read");
    let payloads: Vec<&[u8]> = read.events.iter().map(|event| &event.payload[..]).collect();
    assert_eq!(payloads, vec![&b"a"[..], b"c", b"d", b"e"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn fenced_producer_fails_permanently_with_aborted() {
    // Goal: opening the same producer name again fences the older instance: its
    // next append fails with ABORTED, not retried, and so does every later one.
    let server = start_test_server().await;
    topic(&server, "t", 1).await;
    let old = server.client.producer("t", "p").build().await.expect("producer");
    step(old.send(append("k", "1"))).await.expect("first");
    let new = server.client.producer("t", "p").build().await.expect("producer");
    assert!(new.epoch() > old.epoch());
    let error = step(old.send(append("k", "2"))).await.expect_err("fenced");
    assert_status(&error, GrpcCode::Aborted, ErrorKind::ProducerFenced);
    let later = step(old.send(append("k", "3"))).await.expect_err("still fenced");
    assert!(matches!(later, ClientError::Closed(_)), "{later}");
    assert!(later.to_string().contains("fenced"), "{later}");
    step(new.send(append("k", "4")))
        .await
        .expect("new instance writes");
    let read = server
        .client
        .read("t", PartitionId(0), Offset(0), 0, 0)
        .await
        .expect("read");
    let payloads: Vec<&[u8]> = read.events.iter().map(|event| &event.payload[..]).collect();
    assert_eq!(payloads, vec![&b"1"[..], b"4"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn producer_reconnects_across_a_server_restart_without_duplicates() {
    // Goal: appends sent while the server restarts (on a new port) are retried on
    // a new session with their original stamps; every append is stored exactly
    // once and each key keeps its send order.
    let mut server = start_test_server().await;
    topic(&server, "t", 2).await;
    let producer = server
        .client
        .producer("t", "p")
        .options(ProducerOptions {
            batch_appends_max: 4,
            retry: RetryPolicy {
                attempts_max: 50,
                backoff_initial: Duration::from_millis(5),
                backoff_max: Duration::from_millis(100),
            },
            ..ProducerOptions::default()
        })
        .build()
        .await
        .expect("producer");
    let mut acks = Vec::new();
    for index in 0..100 {
        acks.push(tokio::spawn(
            producer.send(append(&format!("k{}", index % 3), &index.to_string())),
        ));
    }
    // Restart once some appends are acknowledged and others are not.
    let first = acks.remove(0);
    step(first).await.expect("join").expect("first ack");
    server.restart().await;
    for index in 100..150 {
        acks.push(tokio::spawn(
            producer.send(append(&format!("k{}", index % 3), &index.to_string())),
        ));
    }
    for ack in acks {
        if let Err(error) = step(ack).await.expect("join") {
            panic!("an append failed: {error:?}");
        }
    }
    for key in 0..3 {
        let history = server
            .client
            .read_key("t", format!("k{key}").as_bytes(), None, Direction::Forwards, 0)
            .await
            .expect("read key");
        let payloads: Vec<usize> = history
            .events
            .iter()
            .map(|event| String::from_utf8_lossy(&event.payload).parse().expect("number"))
            .collect();
        assert_eq!(
            payloads,
            (0..150).filter(|index| index % 3 == key).collect::<Vec<_>>(),
            "key k{key}: each append once, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn server_restart_between_writes_and_reads_keeps_acknowledged_data() {
    // Goal: everything acknowledged before a restart (events, topics, cursors,
    // key sequences) is served after it.
    let mut server = start_test_server().await;
    topic(&server, "t", 2).await;
    let mut acks = Vec::new();
    for index in 0..10 {
        acks.push(
            server
                .client
                .append("t", &append("k", &index.to_string()))
                .await
                .expect("append"),
        );
    }
    server
        .client
        .commit_cursor("t", "c", &[(acks[0].partition, Offset(4))], false)
        .await
        .expect("commit");
    let old_url = server.url();
    server.restart().await;
    assert_ne!(server.url(), old_url, "a new port");
    assert_eq!(
        server.client.list_topics().await.expect("list"),
        vec!["t".to_string()]
    );
    let history = server
        .client
        .read_key("t", b"k", None, Direction::Forwards, 0)
        .await
        .expect("read key");
    assert_eq!(history.last_sequence, Some(9));
    assert_eq!(history.events.len(), 10);
    let positions = server.client.get_cursor("t", "c").await.expect("cursor");
    assert_eq!(positions[acks[0].partition.0 as usize].committed, Some(Offset(4)));
    let next = server
        .client
        .append(
            "t",
            &append("k", "10").expect(ExpectedSequence::Exact(Sequence(9))),
        )
        .await
        .expect("append");
    assert_eq!(next.first_sequence, Sequence(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_check_reports_serving() {
    // Goal: the standard gRPC health service answers SERVING for the server and
    // for `stele.v1.Stele`.
    let server = start_test_server().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&server).await);
    for service in ["", "stele.v1.Stele"] {
        let response = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .expect("check")
            .into_inner();
        assert_eq!(
            response.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_the_stele_service() {
    // Goal: gRPC server reflection (v1) lists `stele.v1.Stele`, so generic tools
    // such as grpcurl work without the proto file.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = start_test_server().await;
    let mut reflection = ServerReflectionClient::new(channel(&server).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = step(responses.message())
        .await
        .expect("message")
        .expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|service| service.name).collect();
    assert!(names.contains(&"stele.v1.Stele".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
}

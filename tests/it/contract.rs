//! The API contract as a client of another language sees it, over real TCP
//! (port 0): every request is answered, malformed bytes and bad values get
//! INVALID_ARGUMENT (or LIMIT_EXCEEDED naming the limit) with both trailers on
//! every RPC, errors are `google.rpc.Status` details, deleted topics are
//! NOT_FOUND, and webhook cursors belong to their endpoint.

use super::support::{channel, step};
use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic_types::StatusExt;

use stele::client::{SubscribeOptions, TestServer, start_test_server};
use stele::wire::proto::stele_client::SteleClient;
use stele::wire::{proto, status};
use stele::{AppendRequest, Event, ExpectedSequence, TopicOptions};

/// Sends request bytes as they are and decodes responses as `U`: what a
/// broken or hostile client puts on the wire.
pub(super) struct RawCodec<U>(PhantomData<U>);

impl<U> Default for RawCodec<U> {
    fn default() -> Self {
        RawCodec(PhantomData)
    }
}

pub(super) struct RawEncoder;
pub(super) struct MessageDecoder<U>(PhantomData<U>);

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buffer: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buffer, &item);
        Ok(())
    }
}

impl<U: Message + Default> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = tonic::Status;

    fn decode(&mut self, buffer: &mut DecodeBuf<'_>) -> Result<Option<U>, tonic::Status> {
        U::decode(buffer)
            .map(Some)
            .map_err(|error| tonic::Status::internal(error.to_string()))
    }
}

impl<U: Message + Default + Send + 'static> Codec for RawCodec<U> {
    type Encode = Vec<u8>;
    type Decode = U;
    type Encoder = RawEncoder;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> MessageDecoder<U> {
        MessageDecoder(PhantomData)
    }
}

/// Asserts the whole error contract on a status: the gRPC code, the
/// `stele-error-code` trailer, and a `google.rpc.Status` in the details with
/// our `ErrorDetail` and the standard `ErrorInfo` (reason, domain `stele`).
pub(super) fn assert_contract(status: &tonic::Status, code: tonic::Code, error_code: proto::ErrorCode) {
    assert_eq!(status.code(), code, "{status:?}");
    let trailer = status
        .metadata()
        .get(status::ERROR_CODE_METADATA)
        .and_then(|value| value.to_str().ok());
    assert_eq!(
        trailer,
        Some((error_code as i32).to_string().as_str()),
        "{status:?}"
    );
    let rpc_status = status::rpc_status_of(status).expect("google.rpc.Status in the details");
    assert_eq!(rpc_status.code, code as i32);
    let detail = status::detail_of(status).expect("ErrorDetail in google.rpc.Status");
    assert_eq!(detail.code, error_code as i32);
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.domain, "stele");
    assert_eq!(info.reason, status::error_name(error_code));
}

/// Request bytes that are not a valid message of any RPC, with what is wrong.
const MALFORMED: [(&str, &[u8]); 3] = [
    // Field 1, length-delimited, with a length varint cut short.
    ("truncated length", &[0x0a, 0xff]),
    // Field 1, length-delimited, 5 bytes announced and 1 present.
    ("truncated field", &[0x0a, 0x05, 0x61]),
    // Field 2 with the 64-bit wire type and only 3 bytes.
    ("wrong wire type", &[0x11, 0x01, 0x02, 0x03]),
];

/// Every unary RPC of the service.
const UNARY_METHODS: [&str; 18] = [
    "CreateTopic",
    "DescribeTopic",
    "ListTopics",
    "DeleteTopic",
    "Append",
    "AppendBatch",
    "OpenProducer",
    "Read",
    "ReadKey",
    "CommitCursor",
    "GetCursor",
    "ListCursors",
    "DeleteCursor",
    "CreateWebhook",
    "ListWebhooks",
    "PauseWebhook",
    "ResumeWebhook",
    "DeleteWebhook",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_bytes_are_invalid_argument_on_every_rpc() {
    // Goal: bytes that do not decode are the client's fault (INVALID_ARGUMENT
    // with both trailers), never INTERNAL without details. Method: send raw
    // malformed messages to every unary RPC, to Subscribe and to AppendSession.
    let server = start_test_server().await;
    let mut grpc = tonic::client::Grpc::new(channel(&server).await);
    let methods = UNARY_METHODS
        .iter()
        .chain(&["ListDeadLetters", "RedriveDeadLetters"]);
    for method in methods {
        for (what, bytes) in MALFORMED {
            let path = PathAndQuery::try_from(format!("/stele.v1.Stele/{method}")).expect("path");
            step(grpc.ready()).await.expect("ready");
            let status = step(grpc.unary(
                tonic::Request::new(bytes.to_vec()),
                path,
                RawCodec::<proto::Empty>::default(),
            ))
            .await
            .expect_err(&format!("{method} refuses a {what} message"));
            assert_contract(
                &status,
                tonic::Code::InvalidArgument,
                proto::ErrorCode::InvalidArgument,
            );
        }
    }
    // Invalid UTF-8 in a string field (the topic, field 1 of DescribeTopic).
    step(grpc.ready()).await.expect("ready");
    let status = step(grpc.unary(
        tonic::Request::new(vec![0x0a, 0x02, 0xff, 0xfe]),
        PathAndQuery::from_static("/stele.v1.Stele/DescribeTopic"),
        RawCodec::<proto::Empty>::default(),
    ))
    .await
    .expect_err("invalid UTF-8 refused");
    assert_contract(
        &status,
        tonic::Code::InvalidArgument,
        proto::ErrorCode::InvalidArgument,
    );
    assert!(status.message().contains("malformed"), "{}", status.message());

    // A server-streaming RPC.
    step(grpc.ready()).await.expect("ready");
    let result = step(grpc.server_streaming(
        tonic::Request::new(vec![0x0a, 0xff]),
        PathAndQuery::from_static("/stele.v1.Stele/Subscribe"),
        RawCodec::<proto::SubscribeResponse>::default(),
    ))
    .await;
    let status = match result {
        Err(status) => status,
        Ok(response) => step(response.into_inner().message())
            .await
            .expect_err("Subscribe refuses a malformed request"),
    };
    assert_contract(
        &status,
        tonic::Code::InvalidArgument,
        proto::ErrorCode::InvalidArgument,
    );
}

/// An AppendSession request, encoded.
fn session_request(correlation_id: u64, topic: &str, key: &str) -> Vec<u8> {
    proto::AppendSessionRequest {
        correlation_id,
        topic: topic.to_string(),
        appends: vec![proto::BatchAppend {
            key: key.as_bytes().to_vec(),
            expected: None,
            events: vec![proto::Event {
                r#type: "noted".into(),
                payload: correlation_id.to_string().into_bytes(),
                ..proto::Event::default()
            }],
            producer: None,
        }],
    }
    .encode_to_vec()
}

/// Events stored in every partition of `topic`.
async fn stored_count(server: &TestServer, topic: &str) -> u64 {
    let description = server.client.describe_topic(topic).await.expect("describe");
    description
        .partitions
        .iter()
        .map(|partition| partition.high_watermark.0 - partition.earliest.0)
        .sum()
}

/// A test server with topic `topic` of `partitions`, and the response stream
/// of an AppendSession that sent `requests` (raw bytes) without waiting.
async fn session_of(
    topic: &str,
    partitions: u32,
    requests: Vec<Vec<u8>>,
) -> (TestServer, tonic::Streaming<proto::AppendSessionResponse>) {
    let server = start_test_server().await;
    server
        .client
        .create_topic(topic, &TopicOptions::default().partitions(partitions))
        .await
        .expect("create");
    let mut grpc = tonic::client::Grpc::new(channel(&server).await);
    step(grpc.ready()).await.expect("ready");
    let response = step(grpc.streaming(
        tonic::Request::new(tokio_stream::iter(requests)),
        PathAndQuery::from_static("/stele.v1.Stele/AppendSession"),
        RawCodec::<proto::AppendSessionResponse>::default(),
    ))
    .await
    .expect("session opens");
    (server, response.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_session_answers_every_request_around_a_refused_one() {
    // Goal: among hundreds of pipelined requests, a refused one (malformed
    // topic name) and one whose append fails (an empty key) are answered
    // in-stream, in order, and the session goes on: every request gets exactly
    // one response and the store holds exactly the accepted ones. Method: send
    // 600 requests without waiting, then read 600 responses.
    const COUNT: u64 = 600;
    const REFUSED: u64 = 250;
    const FAILED: u64 = 400;
    let requests: Vec<Vec<u8>> = (0..COUNT)
        .map(|index| match index {
            REFUSED => session_request(index, "not a topic!", "k"),
            FAILED => session_request(index, "session", ""),
            _ => session_request(index, "session", &format!("key-{}", index % 37)),
        })
        .collect();
    let (server, mut inbound) = session_of("session", 4, requests).await;
    let mut answered = 0;
    while let Some(response) = step(inbound.message()).await.expect("no stream error") {
        assert_eq!(response.correlation_id, answered, "responses in request order");
        assert_eq!(response.outcomes.len(), 1);
        let outcome = response.outcomes[0].outcome.clone().expect("outcome");
        match answered {
            REFUSED => {
                let error = response.error.expect("request-level error");
                assert_eq!(error.code, proto::ErrorCode::InvalidArgument as i32);
                assert!(matches!(outcome, proto::batch_append_outcome::Outcome::Error(_)));
            }
            FAILED => {
                assert!(response.error.is_none(), "the request itself was fine");
                let proto::batch_append_outcome::Outcome::Error(detail) = outcome else {
                    panic!("an empty key fails its append");
                };
                assert_eq!(detail.code, proto::ErrorCode::InvalidArgument as i32);
            }
            _ => {
                assert!(response.error.is_none());
                assert!(
                    matches!(outcome, proto::batch_append_outcome::Outcome::Result(_)),
                    "request {answered}: {outcome:?}"
                );
            }
        }
        answered += 1;
    }
    assert_eq!(answered, COUNT, "every request answered once");
    assert_eq!(stored_count(&server, "session").await, COUNT - 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_session_that_must_end_applies_nothing_after_its_last_answer() {
    // Goal: when a message cannot be read, every request before it is answered,
    // then the stream ends with INVALID_ARGUMENT, and no request after it is
    // applied. Method: 300 good requests, a malformed message, 300 more.
    let mut requests: Vec<Vec<u8>> = (0..300)
        .map(|index| session_request(index, "ending", "k"))
        .collect();
    requests.push(vec![0x0a, 0xff]);
    requests.extend((301..600).map(|index| session_request(index, "ending", "k")));
    let (server, mut inbound) = session_of("ending", 2, requests).await;
    let mut answered = 0;
    let status = loop {
        match step(inbound.message()).await {
            Ok(Some(response)) => {
                assert_eq!(response.correlation_id, answered);
                answered += 1;
            }
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(answered, 300, "every request before the bad message answered");
    assert_contract(
        &status,
        tonic::Code::InvalidArgument,
        proto::ErrorCode::InvalidArgument,
    );
    assert_eq!(
        stored_count(&server, "ending").await,
        300,
        "nothing after it applied"
    );
}

/// The status of a call that must fail.
fn refused<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> tonic::Status {
    result.expect_err("the call is refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_value_gets_its_precise_code_on_every_rpc() {
    // Goal: a malformed topic name is INVALID_ARGUMENT on every RPC that takes
    // one (not NOT_FOUND), a name above its limit is LIMIT_EXCEEDED naming the
    // limit, and keys, partitions, enums, heartbeats and call sizes are checked.
    // Method: the generated client, one bad value at a time.
    let server = start_test_server().await;
    server
        .client
        .create_topic("values", &TopicOptions::default().partitions(2))
        .await
        .expect("create");
    let mut client = SteleClient::new(channel(&server).await);
    let invalid = |status: tonic::Status| {
        assert_contract(
            &status,
            tonic::Code::InvalidArgument,
            proto::ErrorCode::InvalidArgument,
        );
    };
    let limit = |status: tonic::Status, name: &str, field: &str| {
        assert_contract(
            &status,
            tonic::Code::InvalidArgument,
            proto::ErrorCode::LimitExceeded,
        );
        let detail = status::detail_of(&status).expect("detail");
        assert_eq!(detail.limit_name, name);
        assert!(detail.limit_value > detail.limit_max, "{detail:?}");
        let bad_request = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(bad_request.field_violations[0].field, field);
    };

    for topic in ["bad topic", ".hidden", ""] {
        let topic = topic.to_string();
        invalid(refused(
            client
                .describe_topic(proto::DescribeTopicRequest { topic: topic.clone() })
                .await,
        ));
        invalid(refused(
            client
                .delete_topic(proto::DeleteTopicRequest { topic: topic.clone() })
                .await,
        ));
        invalid(refused(
            client
                .read(proto::ReadRequest {
                    topic: topic.clone(),
                    ..Default::default()
                })
                .await,
        ));
        invalid(refused(
            client
                .read_key(proto::ReadKeyRequest {
                    topic: topic.clone(),
                    key: b"k".to_vec(),
                    ..Default::default()
                })
                .await,
        ));
        invalid(refused(
            client
                .get_cursor(proto::GetCursorRequest {
                    topic: topic.clone(),
                    cursor: "c".into(),
                })
                .await,
        ));
        invalid(refused(
            client
                .list_cursors(proto::ListCursorsRequest { topic: topic.clone() })
                .await,
        ));
        invalid(refused(
            client
                .commit_cursor(proto::CommitCursorRequest {
                    topic: topic.clone(),
                    cursor: "c".into(),
                    ..Default::default()
                })
                .await,
        ));
        invalid(refused(
            client
                .delete_cursor(proto::DeleteCursorRequest {
                    topic: topic.clone(),
                    cursor: "c".into(),
                })
                .await,
        ));
        invalid(refused(
            client
                .open_producer(proto::OpenProducerRequest {
                    topic: topic.clone(),
                    name: "p".into(),
                })
                .await,
        ));
        invalid(refused(
            client
                .subscribe(proto::SubscribeRequest {
                    topic: topic.clone(),
                    ..Default::default()
                })
                .await,
        ));
    }

    // Names above their limits.
    let long = "t".repeat(201);
    limit(
        refused(
            client
                .describe_topic(proto::DescribeTopicRequest { topic: long.clone() })
                .await,
        ),
        "topic name size",
        "topic",
    );
    limit(
        refused(
            client
                .create_topic(proto::CreateTopicRequest {
                    topic: long.clone(),
                    settings: None,
                })
                .await,
        ),
        "topic name size",
        "topic",
    );
    limit(
        refused(
            client
                .commit_cursor(proto::CommitCursorRequest {
                    topic: "values".into(),
                    cursor: long.clone(),
                    offsets: [(0, 0)].into(),
                    allow_backwards: false,
                })
                .await,
        ),
        "cursor name size",
        "cursor",
    );
    limit(
        refused(
            client
                .open_producer(proto::OpenProducerRequest {
                    topic: "values".into(),
                    name: long.clone(),
                })
                .await,
        ),
        "producer name size",
        "name",
    );
    limit(
        refused(
            client
                .create_topic(proto::CreateTopicRequest {
                    topic: "many".into(),
                    settings: Some(proto::TopicSettings {
                        partitions: 5000,
                        ..Default::default()
                    }),
                })
                .await,
        ),
        "partition count",
        "settings.partitions",
    );
    limit(
        refused(
            client
                .create_topic(proto::CreateTopicRequest {
                    topic: "huge".into(),
                    settings: Some(proto::TopicSettings {
                        payload_size_max: u32::MAX,
                        ..Default::default()
                    }),
                })
                .await,
        ),
        "payload_size_max",
        "settings.payload_size_max",
    );

    limit(
        refused(
            client
                .create_webhook(proto::CreateWebhookRequest {
                    name: "w".repeat(101),
                    url: "https://example.com/hook".into(),
                    topic: "values".into(),
                    ..Default::default()
                })
                .await,
        ),
        "webhook name size",
        "name",
    );

    // Keys on ReadKey.
    invalid(refused(
        client
            .read_key(proto::ReadKeyRequest {
                topic: "values".into(),
                key: Vec::new(),
                ..Default::default()
            })
            .await,
    ));
    limit(
        refused(
            client
                .read_key(proto::ReadKeyRequest {
                    topic: "values".into(),
                    key: vec![b'k'; 1025],
                    ..Default::default()
                })
                .await,
        ),
        "key size",
        "key",
    );

    // Subscribe: a start offset for a partition the topic lacks, a heartbeat
    // below the floor.
    invalid(refused(
        client
            .subscribe(proto::SubscribeRequest {
                topic: "values".into(),
                start: Some(proto::StartPosition {
                    position: Some(proto::start_position::Position::Offsets(
                        proto::PartitionOffsets {
                            offsets: [(7, 0)].into(),
                        },
                    )),
                }),
                ..Default::default()
            })
            .await,
    ));
    invalid(refused(
        client
            .subscribe(proto::SubscribeRequest {
                topic: "values".into(),
                heartbeat_ms: 1,
                ..Default::default()
            })
            .await,
    ));

    // Unknown enum values.
    invalid(refused(
        client
            .read_key(proto::ReadKeyRequest {
                topic: "values".into(),
                key: b"k".to_vec(),
                direction: 9,
                ..Default::default()
            })
            .await,
    ));
    invalid(refused(
        client
            .create_topic(proto::CreateTopicRequest {
                topic: "enum".into(),
                settings: Some(proto::TopicSettings {
                    durability: 9,
                    ..Default::default()
                }),
            })
            .await,
    ));
    invalid(refused(
        client
            .create_webhook(proto::CreateWebhookRequest {
                name: "enum".into(),
                url: "https://example.com/hook".into(),
                topic: "values".into(),
                start: 9,
                ..Default::default()
            })
            .await,
    ));

    // One bound for a call's events, whatever the shape: 10,001 appends of one
    // event each is refused like one append of 10,001 events.
    let appends: Vec<proto::BatchAppend> = (0..10_001)
        .map(|index| proto::BatchAppend {
            key: format!("k{index}").into_bytes(),
            expected: None,
            events: vec![proto::Event {
                r#type: "t".into(),
                ..Default::default()
            }],
            producer: None,
        })
        .collect();
    limit(
        refused(
            client
                .append_batch(proto::AppendBatchRequest {
                    topic: "values".into(),
                    appends,
                })
                .await,
        ),
        "events per call",
        "appends",
    );
    assert_eq!(stored_count(&server, "values").await, 0, "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_on_a_deleted_topic_ends_with_not_found() {
    // Goal: deleting a topic ends its subscriptions with NOT_FOUND (which
    // clients do not retry), not UNAVAILABLE. Method: follow a topic live,
    // delete it, read the stream's end.
    let server = start_test_server().await;
    server
        .client
        .create_topic("doomed", &TopicOptions::default().partitions(2))
        .await
        .expect("create");
    let mut subscription = server
        .client
        .subscribe("doomed", &SubscribeOptions::default())
        .await
        .expect("subscribe");
    // Caught up on the empty topic: the subscription now waits on the tail.
    loop {
        let item = step(subscription.next()).await.expect("open").expect("item");
        if matches!(item, stele::client::SubscriptionItem::CaughtUp { .. }) {
            break;
        }
    }
    server.client.delete_topic("doomed").await.expect("delete");
    let error = loop {
        match step(subscription.next()).await {
            Some(Ok(_)) => continue,
            Some(Err(error)) => break error,
            None => panic!("the subscription ended without an error"),
        }
    };
    assert_eq!(error.code(), Some(stele::client::GrpcCode::NotFound), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_racing_a_topic_deletion_succeed_or_get_not_found() {
    // Goal: an append that races the deletion of its topic is acknowledged or
    // refused with NOT_FOUND, never INTERNAL or UNAVAILABLE. Method: four
    // tasks append without pause while the topic is deleted; auto-creation is
    // on, so later appends may create it again and succeed.
    let server = start_test_server().await;
    for round in 0..3 {
        let topic = format!("race-{round}");
        server
            .client
            .create_topic(&topic, &TopicOptions::default().partitions(2))
            .await
            .expect("create");
        let (started_sender, mut started) = tokio::sync::mpsc::channel::<()>(4);
        let mut tasks = Vec::new();
        for writer in 0..4 {
            let client = server.client.clone();
            let topic = topic.clone();
            let started_sender = started_sender.clone();
            tasks.push(tokio::spawn(async move {
                let mut codes = Vec::new();
                for index in 0..60 {
                    let request = AppendRequest::new(
                        format!("w{writer}-{index}"),
                        vec![Event::new("noted", b"x".to_vec())],
                    )
                    .expect(ExpectedSequence::Any);
                    codes.push(
                        client
                            .append(&topic, &request)
                            .await
                            .err()
                            .map(|error| error.code()),
                    );
                    if index == 5 {
                        let _ = started_sender.send(()).await;
                    }
                }
                codes
            }));
        }
        for _ in 0..4 {
            step(started.recv()).await.expect("writer started");
        }
        match server.client.delete_topic(&topic).await {
            Ok(()) => {}
            Err(error) => assert_eq!(error.code(), Some(stele::client::GrpcCode::NotFound)),
        }
        for task in tasks {
            for code in step(task).await.expect("writer") {
                assert!(
                    matches!(code, None | Some(Some(stele::client::GrpcCode::NotFound))),
                    "an append racing deletion got {code:?}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_cursors_belong_to_their_endpoint() {
    // Goal: a client cannot commit or delete `webhook.<name>` (or its redrive
    // cursor) while endpoint `<name>` exists; once it is deleted, the name is
    // free. Method: create an endpoint, try both, delete it, try again.
    let server = start_test_server().await;
    let mut client = SteleClient::new(channel(&server).await);
    client
        .create_webhook(proto::CreateWebhookRequest {
            name: "billing".into(),
            url: "https://example.invalid/hook".into(),
            topic: "payments".into(),
            ..Default::default()
        })
        .await
        .expect("create webhook");
    for cursor in ["webhook.billing", "webhook.billing.redrive"] {
        let status = refused(
            client
                .commit_cursor(proto::CommitCursorRequest {
                    topic: "payments".into(),
                    cursor: cursor.into(),
                    offsets: [(0, 0)].into(),
                    allow_backwards: true,
                })
                .await,
        );
        assert_contract(
            &status,
            tonic::Code::FailedPrecondition,
            proto::ErrorCode::CursorReserved,
        );
        let status = refused(
            client
                .delete_cursor(proto::DeleteCursorRequest {
                    topic: "payments".into(),
                    cursor: cursor.into(),
                })
                .await,
        );
        assert_contract(
            &status,
            tonic::Code::FailedPrecondition,
            proto::ErrorCode::CursorReserved,
        );
    }
    // Another endpoint's prefix is not reserved by this one.
    client
        .commit_cursor(proto::CommitCursorRequest {
            topic: "payments".into(),
            cursor: "webhook.other".into(),
            offsets: [(0, 0)].into(),
            allow_backwards: false,
        })
        .await
        .expect("a cursor of no endpoint");
    client
        .delete_webhook(proto::DeleteWebhookRequest {
            name: "billing".into(),
        })
        .await
        .expect("delete webhook");
    client
        .commit_cursor(proto::CommitCursorRequest {
            topic: "payments".into(),
            cursor: "webhook.billing".into(),
            offsets: [(0, 0)].into(),
            allow_backwards: true,
        })
        .await
        .expect("free after the endpoint is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_listings_return_at_most_max_events_over_all_partitions() {
    // Goal: ListDeadLetters' `max_events` bounds the whole answer, not each
    // dead-letter partition's share. Method: a target whose name resolves to
    // loopback is refused at delivery (no allow-list), so every event is
    // dead-lettered at once; 8 keys over a 4-partition dead-letter topic,
    // followed by a subscription until all 8 letters are stored.
    let server = start_test_server().await;
    let mut client = SteleClient::new(channel(&server).await);
    server
        .client
        .create_topic("letters.dead-letter", &TopicOptions::default().partitions(4))
        .await
        .expect("create");
    client
        .create_webhook(proto::CreateWebhookRequest {
            name: "refused".into(),
            url: "http://localhost:9/in".into(),
            topic: "letters".into(),
            settings: Some(proto::WebhookSettings {
                max_attempts: 1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("create webhook");
    for index in 0..8 {
        let request = AppendRequest::new(format!("key-{index}"), vec![Event::new("noted", b"x".to_vec())]);
        server.client.append("letters", &request).await.expect("append");
    }
    let mut subscription = server
        .client
        .subscribe("letters.dead-letter", &SubscribeOptions::default())
        .await
        .expect("subscribe");
    let mut partitions = std::collections::BTreeSet::new();
    let mut seen = 0;
    while seen < 8 {
        if let stele::client::SubscriptionItem::Events {
            partition, events, ..
        } = step(subscription.next()).await.expect("open").expect("item")
        {
            seen += events.len();
            if !events.is_empty() {
                partitions.insert(partition);
            }
        }
    }
    assert!(
        partitions.len() >= 2,
        "letters in one partition only: {partitions:?}"
    );
    for max in [1, 3, 8] {
        let letters = client
            .list_dead_letters(proto::ListDeadLettersRequest {
                name: "refused".into(),
                max_events: max,
            })
            .await
            .expect("list")
            .into_inner()
            .dead_letters;
        assert_eq!(letters.len(), max as usize);
    }
}

//! Security through the whole API (`--auth required`): a walk over the service
//! descriptor calls every RPC without a token and with a token lacking the
//! grant, a read-only and a prefix token stay inside their grants, and a
//! revoked token's live streams end within a second.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tonic::codegen::http::uri::PathAndQuery;

use super::contract::{RawCodec, assert_contract};
use super::support::step;
use stele::client::{
    Client, ConnectOptions, GrpcCode, ServerUrl, StartPosition, SubscribeOptions, SubscriptionItem,
};
use stele::server::auth::rpc::{Rpc, TopicFrom};
use stele::server::auth::{AuthConfig, AuthMode};
use stele::server::{RunningServer, ServerConfig};
use stele::wire::proto;
use stele::{AppendRequest, Event, TopicOptions};

/// A server with `--auth required`, its admin (bootstrap) client and its URL.
struct Secured {
    server: Option<RunningServer>,
    url: String,
    admin: Client,
    _dir: tempfile::TempDir,
}

impl Secured {
    async fn start() -> Secured {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, bootstrap) = stele::server::auth::token::generate().expect("random");
        let mut config = ServerConfig::new(dir.path());
        config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config.auth = AuthConfig {
            mode: AuthMode::Required,
            bootstrap_token: Some(bootstrap.clone()),
            ..AuthConfig::default()
        };
        let server = RunningServer::start(config).await.expect("start");
        let url = format!("http://{}", server.local_addr());
        let admin = Secured::client_of(&url, Some(&bootstrap)).await;
        Secured {
            server: Some(server),
            url,
            admin,
            _dir: dir,
        }
    }

    async fn client_of(url: &str, token: Option<&str>) -> Client {
        let options = ConnectOptions {
            token: token.map(str::to_string),
            ..ConnectOptions::default()
        };
        Client::connect_with(ServerUrl::new(url), options)
            .await
            .expect("connect")
    }

    /// A client with a new token holding `grants`, and the token's id.
    async fn client_with(&self, grants: &[&str]) -> (Client, String) {
        let grants: Vec<String> = grants.iter().map(|grant| grant.to_string()).collect();
        let (info, secret) = self
            .admin
            .create_token("test", &grants, None)
            .await
            .expect("create token");
        (Secured::client_of(&self.url, Some(&secret)).await, info.id)
    }

    async fn grpc(
        &self,
        token: Option<&str>,
    ) -> tonic::client::Grpc<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>
    {
        let channel = tonic::transport::Channel::from_shared(self.url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        tonic::client::Grpc::new(tonic::service::interceptor::InterceptedService::new(
            channel,
            Bearer(token.map(|token| format!("Bearer {token}"))),
        ))
    }
}

impl Drop for Secured {
    fn drop(&mut self) {
        drop(self.server.take());
    }
}

/// Adds `authorization` to raw calls.
#[derive(Clone)]
struct Bearer(Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.parse().expect("ascii"));
        }
        Ok(request)
    }
}

/// The methods of `stele.v1.Stele` as the descriptor that reflection serves
/// lists them: name, client streaming, server streaming.
fn service_methods() -> Vec<(String, bool, bool)> {
    let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let service = set
        .file
        .iter()
        .flat_map(|file| file.service.iter())
        .find(|service| service.name() == "Stele")
        .expect("service Stele");
    service
        .method
        .iter()
        .map(|method| {
            (
                method.name().to_string(),
                method.client_streaming(),
                method.server_streaming(),
            )
        })
        .collect()
}

const TOPIC: &str = "secret";

/// A request for `method` that would change something about `TOPIC` if it were
/// allowed; an RPC not listed gets its empty message.
fn request_for(method: &str, admin_token_id: &str) -> Vec<u8> {
    let event = || proto::Event {
        r#type: "t".into(),
        payload: b"x".to_vec(),
        ..proto::Event::default()
    };
    let append = || proto::BatchAppend {
        key: b"k".to_vec(),
        expected: None,
        events: vec![event()],
        producer: None,
    };
    match method {
        "CreateTopic" => proto::CreateTopicRequest {
            topic: "created".into(),
            settings: None,
        }
        .encode_to_vec(),
        "DeleteTopic" => proto::DeleteTopicRequest { topic: TOPIC.into() }.encode_to_vec(),
        "Append" => proto::AppendRequest {
            topic: TOPIC.into(),
            key: b"k".to_vec(),
            events: vec![event()],
            ..proto::AppendRequest::default()
        }
        .encode_to_vec(),
        "AppendBatch" => proto::AppendBatchRequest {
            topic: TOPIC.into(),
            appends: vec![append()],
        }
        .encode_to_vec(),
        "AppendSession" => proto::AppendSessionRequest {
            correlation_id: 1,
            topic: TOPIC.into(),
            appends: vec![append()],
        }
        .encode_to_vec(),
        "OpenProducer" => proto::OpenProducerRequest {
            topic: TOPIC.into(),
            name: "p".into(),
        }
        .encode_to_vec(),
        "CommitCursor" => proto::CommitCursorRequest {
            topic: TOPIC.into(),
            cursor: "new".into(),
            offsets: [(0, 0)].into(),
            allow_backwards: false,
        }
        .encode_to_vec(),
        "DeleteCursor" => proto::DeleteCursorRequest {
            topic: TOPIC.into(),
            cursor: "kept".into(),
        }
        .encode_to_vec(),
        "CreateWebhook" => proto::CreateWebhookRequest {
            name: "hook".into(),
            url: "https://example.com/hook".into(),
            topic: TOPIC.into(),
            ..proto::CreateWebhookRequest::default()
        }
        .encode_to_vec(),
        "CreateToken" => proto::CreateTokenRequest {
            name: "escalated".into(),
            grants: vec!["admin:*".into()],
            ..proto::CreateTokenRequest::default()
        }
        .encode_to_vec(),
        "RevokeToken" => proto::RevokeTokenRequest {
            id: admin_token_id.into(),
        }
        .encode_to_vec(),
        "Consume" => proto::ConsumeRequest {
            kind: Some(proto::consume_request::Kind::Join(proto::Join {
                group: "group".into(),
                instance_id: "member".into(),
                window: 1,
            })),
        }
        .encode_to_vec(),
        "Backup" => proto::BackupRequest {
            destination: refused_backup().to_string_lossy().into_owned(),
            incremental_from: String::new(),
        }
        .encode_to_vec(),
        "UpdateTopic" => proto::UpdateTopicRequest {
            topic: TOPIC.into(),
            retention_bytes: Some(1 << 20),
            ..proto::UpdateTopicRequest::default()
        }
        .encode_to_vec(),
        // Reads and the rest name the topic in field 1 where they have one.
        _ => proto::DescribeTopicRequest { topic: TOPIC.into() }.encode_to_vec(),
    }
}

/// Where a refused Backup would have written (it must not exist afterwards).
fn refused_backup() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("stele-auth-refused-backup-{}", std::process::id()))
}

/// Calls `method` with `body` the way its streaming kind needs; returns the
/// status it was refused with, or `None` when it was answered.
async fn call(
    grpc: &mut tonic::client::Grpc<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
    >,
    method: &str,
    client_streaming: bool,
    server_streaming: bool,
    body: Vec<u8>,
) -> Option<tonic::Status> {
    let path = PathAndQuery::try_from(format!("/stele.v1.Stele/{method}")).expect("path");
    step(grpc.ready()).await.expect("ready");
    match (client_streaming, server_streaming) {
        (false, false) => step(grpc.unary(
            tonic::Request::new(body),
            path,
            RawCodec::<proto::Empty>::default(),
        ))
        .await
        .err(),
        (false, true) => {
            match step(grpc.server_streaming(
                tonic::Request::new(body),
                path,
                RawCodec::<proto::SubscribeResponse>::default(),
            ))
            .await
            {
                Err(status) => Some(status),
                Ok(response) => step(response.into_inner().message()).await.err(),
            }
        }
        (true, true) => {
            match step(grpc.streaming(
                tonic::Request::new(tokio_stream::iter(vec![body])),
                path,
                RawCodec::<proto::AppendSessionResponse>::default(),
            ))
            .await
            {
                Err(status) => Some(status),
                Ok(response) => match step(response.into_inner().message()).await {
                    Err(status) => Some(status),
                    // A refused session request is answered in-stream: make it a status.
                    Ok(Some(answer)) => answer.error.map(|detail| {
                        let code = stele::wire::status::grpc_code_of(
                            proto::ErrorCode::try_from(detail.code).expect("known code"),
                        )
                        .expect("a code with a gRPC code");
                        stele::wire::status::status_of_detail(code, detail, None)
                    }),
                    Ok(None) => None,
                },
            }
        }
        (true, false) => panic!("{method}: client streaming alone is not handled by this test"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_is_refused_without_a_token_and_without_its_grant_and_nothing_is_written() {
    // Goal: the grant table covers every RPC the descriptor lists, and each RPC
    // refuses a caller without a credential (UNAUTHENTICATED) and one whose
    // grants miss it (PERMISSION_DENIED), with the standard error model, while
    // listings show nothing and the store is unchanged. A new RPC without a
    // table entry fails here.
    let secured = Secured::start().await;
    let admin = &secured.admin;
    admin
        .create_topic(TOPIC, &TopicOptions::default().partitions(2))
        .await
        .expect("create");
    admin
        .commit_cursor(TOPIC, "kept", &[(stele::PartitionId(0), stele::Offset(0))], false)
        .await
        .expect("commit");
    let admin_id = admin.who_am_i().await.expect("whoami").principal;
    let admin_id = admin_id.trim_start_matches("token:").to_string();
    secured
        .client_with(&["read:elsewhere", "write:elsewhere.*"])
        .await;
    let (_, other_token) = admin
        .create_token("other", &["read:elsewhere".to_string()], None)
        .await
        .expect("create token");

    let methods = service_methods();
    let names: BTreeSet<&str> = methods.iter().map(|(name, _, _)| name.as_str()).collect();
    for name in &names {
        assert!(
            Rpc::from_name(name).is_some(),
            "RPC {name} has no entry in the grant table (stele_server::auth::rpc)"
        );
    }
    assert_eq!(
        names.len(),
        Rpc::ALL.len(),
        "the grant table lists an RPC the service lacks"
    );

    let mut anonymous = secured.grpc(None).await;
    let mut forged = secured
        .grpc(Some(
            "stele_AAAAAAAAAAAAAAAA_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA000000",
        ))
        .await;
    let mut ungranted = secured.grpc(Some(&other_token)).await;
    for (method, client_streaming, server_streaming) in &methods {
        let body = request_for(method, &admin_id);
        for (who, grpc) in [("no token", &mut anonymous), ("a forged token", &mut forged)] {
            let status = call(grpc, method, *client_streaming, *server_streaming, body.clone())
                .await
                .unwrap_or_else(|| panic!("{method} answered a caller with {who}"));
            assert_contract(
                &status,
                tonic::Code::Unauthenticated,
                proto::ErrorCode::Unauthenticated,
            );
        }
        let rule = Rpc::from_name(method).expect("in the table").rule();
        let refused = call(&mut ungranted, method, *client_streaming, *server_streaming, body).await;
        match (rule.group, rule.topic) {
            (None, _) | (_, TopicFrom::Listing) => assert!(refused.is_none(), "{method}: {refused:?}"),
            _ => {
                let status =
                    refused.unwrap_or_else(|| panic!("{method} answered a caller without its grant"));
                assert_contract(
                    &status,
                    tonic::Code::PermissionDenied,
                    proto::ErrorCode::PermissionDenied,
                );
            }
        }
    }

    // Listings show only what the grants reach.
    let (reader, _) = secured.client_with(&["read:elsewhere"]).await;
    assert_eq!(reader.list_topics().await.expect("list"), Vec::<String>::new());
    // Nothing was written.
    assert_eq!(admin.list_topics().await.expect("list"), vec![TOPIC.to_string()]);
    let description = admin.describe_topic(TOPIC).await.expect("describe");
    assert!(
        description
            .partitions
            .iter()
            .all(|partition| partition.high_watermark.0 == 0)
    );
    assert_eq!(description.revision, 0, "a refused UpdateTopic changed nothing");
    let cursors: Vec<String> = admin
        .list_cursors(TOPIC)
        .await
        .expect("cursors")
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(cursors, vec!["kept".to_string()]);
    assert!(admin.list_webhooks().await.expect("webhooks").is_empty());
    assert!(admin.list_groups(None).await.expect("groups").is_empty());
    let tokens = admin.list_tokens().await.expect("tokens");
    assert_eq!(tokens.len(), 4, "bootstrap, two test tokens, other: {tokens:?}");
    assert!(tokens.iter().all(|token| token.revoked_at_ms == 0));
    assert!(!refused_backup().exists(), "a refused Backup wrote nothing");
}

/// One more event for key `k`.
fn second_event() -> AppendRequest {
    AppendRequest::new("k", vec![Event::new("t", b"2".to_vec())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_reads_and_a_prefix_token_stays_inside_its_prefix() {
    // Goal: grants mean what they say through the typed client.
    let secured = Secured::start().await;
    let admin = &secured.admin;
    for topic in ["orders", "orders.eu", "payments"] {
        admin
            .create_topic(topic, &TopicOptions::default())
            .await
            .expect("create");
        admin
            .append(
                topic,
                &AppendRequest::new("k", vec![Event::new("t", b"1".to_vec())]),
            )
            .await
            .expect("append");
    }
    let (reader, _) = secured.client_with(&["read:orders"]).await;
    assert_eq!(
        reader.list_topics().await.expect("list"),
        vec!["orders".to_string()]
    );
    assert!(reader.describe_topic("orders").await.is_ok());
    let history = reader
        .read_key("orders", b"k", None, stele::Direction::Forwards, 10)
        .await;
    assert_eq!(history.expect("read").events.len(), 1);
    let mut subscription = reader
        .subscribe(
            "orders",
            &SubscribeOptions {
                start: StartPosition::Earliest,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    assert!(matches!(
        step(subscription.next()).await,
        Some(Ok(SubscriptionItem::Events { .. }))
    ));
    let denied = |result: Result<_, stele::client::ClientError>| {
        let error = result.expect_err("refused");
        assert_eq!(error.code(), Some(GrpcCode::PermissionDenied), "{error}");
    };
    denied(reader.append("orders", &second_event()).await.map(|_| ()));
    denied(
        reader
            .create_topic("new", &TopicOptions::default())
            .await
            .map(|_| ()),
    );
    denied(reader.delete_topic("orders").await);
    denied(reader.describe_topic("orders.eu").await.map(|_| ()));
    denied(reader.list_tokens().await.map(|_| ()));
    denied(
        reader
            .commit_cursor("orders", "c", &[(stele::PartitionId(0), stele::Offset(0))], false)
            .await,
    );

    let (writer, _) = secured.client_with(&["write:orders.*", "read:orders.*"]).await;
    assert!(writer.append("orders.eu", &second_event()).await.is_ok());
    assert_eq!(
        writer.list_topics().await.expect("list"),
        vec!["orders.eu".to_string()]
    );
    denied(writer.append("payments", &second_event()).await.map(|_| ()));
    denied(writer.append("orders", &second_event()).await.map(|_| ()));
    // A token holder cannot hand out more than it holds.
    let (issuer, _) = secured.client_with(&["tokens:*", "read:orders.*"]).await;
    assert!(
        issuer
            .create_token("narrow", &["read:orders.eu".to_string()], None)
            .await
            .is_ok()
    );
    let error = issuer
        .create_token("wide", &["read:*".to_string()], None)
        .await
        .expect_err("escalation refused");
    assert_eq!(error.code(), Some(GrpcCode::InvalidArgument), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_fails_its_next_call_and_ends_its_live_streams_within_a_second() {
    // Goal: revocation takes effect at once, for new calls and open streams.
    let secured = Secured::start().await;
    let admin = &secured.admin;
    admin
        .create_topic("orders", &TopicOptions::default())
        .await
        .expect("create");
    let (client, id) = secured.client_with(&["read:orders", "write:orders"]).await;
    let mut subscription = client
        .subscribe(
            "orders",
            &SubscribeOptions {
                start: StartPosition::Earliest,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    loop {
        match step(subscription.next()).await {
            Some(Ok(SubscriptionItem::CaughtUp { .. })) => break,
            Some(Ok(_)) => {}
            other => panic!("subscription failed before revocation: {other:?}"),
        }
    }
    let session = client.append_session().await.expect("session");
    let session = Arc::new(tokio::sync::Mutex::new(session));
    let revoked_at = Instant::now();
    let revoked = admin.revoke_token(&id).await.expect("revoke");
    assert_ne!(revoked.revoked_at_ms, 0);
    let ended = loop {
        match step(subscription.next()).await {
            Some(Err(error)) => break error,
            Some(Ok(SubscriptionItem::Heartbeat { .. })) => {}
            other => panic!("the subscription went on after revocation: {other:?}"),
        }
    };
    let elapsed = revoked_at.elapsed();
    assert_eq!(ended.code(), Some(GrpcCode::Unauthenticated), "{ended}");
    assert!(
        elapsed < Duration::from_secs(1),
        "the stream ended {elapsed:?} after revocation"
    );
    let mut session = session.lock().await;
    let answer = step(session.next()).await;
    assert!(
        matches!(&answer, Some(Err(error)) if error.code() == Some(GrpcCode::Unauthenticated)),
        "{answer:?}"
    );
    let error = client.describe_topic("orders").await.expect_err("revoked");
    assert_eq!(error.code(), Some(GrpcCode::Unauthenticated), "{error}");
    // Same answer as for a token that never existed.
    let stranger = Secured::client_of(
        &secured.url,
        Some(&stele::server::auth::token::generate().expect("random").1),
    )
    .await;
    let unknown = stranger.describe_topic("orders").await.expect_err("unknown");
    assert_eq!(unknown.to_string(), error.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_needs_no_token_and_reflection_needs_a_valid_one() {
    // Goal: load balancers probe health without a credential; the schema is
    // served only to callers with a valid token (any grant).
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let secured = Secured::start().await;
    let channel = tonic::transport::Channel::from_shared(secured.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let response = step(health.check(tonic_health::pb::HealthCheckRequest {
        service: "stele.v1.Stele".to_string(),
    }))
    .await
    .expect("health without a token")
    .into_inner();
    assert_eq!(
        response.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let (_, token) = secured
        .admin
        .create_token("reader", &["read:nothing".to_string()], None)
        .await
        .expect("token");
    for (token, allowed) in [(None, false), (Some(token.as_str()), true)] {
        let intercepted = tonic::service::interceptor::InterceptedService::new(
            channel.clone(),
            Bearer(token.map(|t| format!("Bearer {t}"))),
        );
        let mut reflection = ServerReflectionClient::new(intercepted);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let result = match step(reflection.server_reflection_info(tokio_stream::iter(vec![request]))).await {
            Ok(response) => step(response.into_inner().message()).await.map(|_| ()),
            Err(status) => Err(status),
        };
        match (allowed, result) {
            (true, Ok(())) => {}
            (false, Err(status)) => assert_contract(
                &status,
                tonic::Code::Unauthenticated,
                proto::ErrorCode::Unauthenticated,
            ),
            (allowed, result) => panic!("reflection with token {token:?}: allowed {allowed}, got {result:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_ends_its_live_subscription_at_its_expiry() {
    // Goal: expiry acts like revocation, for open streams too. Method: a token
    // valid for 2 s subscribes and catches up; the stream must end with
    // UNAUTHENTICATED at the expiry (not before, and within a second after),
    // and the next call fails. No sleep: the test awaits the stream's end.
    let lifetime = Duration::from_secs(2);
    let secured = Secured::start().await;
    secured
        .admin
        .create_topic("orders", &TopicOptions::default())
        .await
        .expect("create");
    let created = Instant::now();
    let (_, secret) = secured
        .admin
        .create_token("short", &["read:orders".to_string()], Some(lifetime))
        .await
        .expect("token");
    let client = Secured::client_of(&secured.url, Some(&secret)).await;
    let mut subscription = client
        .subscribe(
            "orders",
            &SubscribeOptions {
                start: StartPosition::Earliest,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe before the expiry");
    let ended = loop {
        match step(subscription.next()).await {
            Some(Err(error)) => break error,
            Some(Ok(_)) => {}
            None => panic!("the subscription ended without an error"),
        }
    };
    let elapsed = created.elapsed();
    assert_eq!(ended.code(), Some(GrpcCode::Unauthenticated), "{ended}");
    assert!(
        elapsed >= lifetime,
        "ended {elapsed:?} after creation, before the expiry"
    );
    assert!(
        elapsed < lifetime + Duration::from_secs(1),
        "ended {elapsed:?} after creation"
    );
    let error = client.describe_topic("orders").await.expect_err("expired");
    assert_eq!(error.code(), Some(GrpcCode::Unauthenticated), "{error}");
}

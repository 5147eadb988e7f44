//! The `stele.v1.Stele` gRPC service over a [`Backend`].

use std::pin::Pin;
use std::sync::Arc;
use stele_engine::Sequence;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::rpc::Rpc;
use super::auth::{Authenticator, Caller, NewToken};
use super::backend::Backend;
use super::delivery::core::Action;
use super::group::{Groups, SeekTo};
use super::subscription;
use super::webhook::Dispatcher;
use stele_engine::EventFilter;
use stele_engine::event::{Direction, Offset, PartitionId};
use stele_engine::limits;
use stele_wire::convert;
use stele_wire::proto::{self, stele_server::Stele};
use stele_wire::status::{OrStatus, error_detail, invalid_field, map_transport_status, status_of_detail};

/// Default and largest events per read.
const READ_EVENTS_DEFAULT: usize = 1000;
const READ_BYTES_DEFAULT: u64 = 4 << 20;
/// The most bytes of events one Read returns: well inside the largest message.
const READ_BYTES_MAX: u64 = (stele_wire::MESSAGE_SIZE_BYTES_MAX as u64) / 2;
/// Requests of one AppendSession in flight at once; more wait (back-pressure).
const SESSION_IN_FLIGHT_MAX: usize = 1024;
/// Most received requests of one AppendSession submitted together (their
/// appends coalesced into one write per partition).
const SESSION_COALESCE_MAX: usize = 64;
/// Cursors whose names start with this belong to webhook endpoints.
const WEBHOOK_CURSOR_PREFIX: &str = "webhook.";

/// The service.
pub struct SteleService {
    backend: Arc<dyn Backend>,
    /// Turns true when the server shuts down: streams end after in-flight work.
    closing: watch::Receiver<bool>,
    /// Webhook delivery; the webhook RPCs fail as unimplemented without it.
    webhooks: Option<Arc<Dispatcher>>,
    /// Consumer groups; their RPCs fail as unimplemented without them.
    groups: Option<Arc<Groups>>,
    /// Who may call what (`auth::rpc`); anonymous by default.
    auth: Arc<Authenticator>,
    /// The engine's log, when the server runs on it: Backup fails as
    /// unimplemented without it.
    log: Option<Arc<stele_engine::Log>>,
}

impl SteleService {
    /// A service over `backend`; streams end when `closing` turns true.
    pub fn new(backend: Arc<dyn Backend>, closing: watch::Receiver<bool>) -> SteleService {
        SteleService {
            backend,
            closing,
            webhooks: None,
            groups: None,
            auth: Authenticator::anonymous(),
            log: None,
        }
    }

    /// Serves Backup over the engine's `log` (`crate::backup`).
    pub fn with_log(mut self, log: Arc<stele_engine::Log>) -> SteleService {
        self.log = Some(log);
        self
    }

    /// Authenticates and authorizes calls with `auth`.
    pub fn with_auth(mut self, auth: Arc<Authenticator>) -> SteleService {
        self.auth = auth;
        self
    }

    /// The caller of `request`, authenticated for `rpc`; the first thing every
    /// handler does.
    fn caller<T>(&self, rpc: Rpc, request: &Request<T>) -> Result<Caller, Status> {
        let (peer, subject) = crate::tls::peer_of(request);
        self.auth.caller(rpc, request.metadata(), peer, subject)
    }

    /// The caller of a webhook RPC naming endpoint `name`, allowed on its topic
    /// (an unknown endpoint's topic is the empty name, which only `admin:*` reaches).
    async fn webhook_caller<T>(&self, rpc: Rpc, request: &Request<T>, name: &str) -> Result<Caller, Status> {
        let caller = self.caller(rpc, request)?;
        let topic = match &self.webhooks {
            Some(webhooks) => webhooks.topic_of(name),
            None => None,
        };
        caller.allow(topic.as_deref().unwrap_or_default())?;
        Ok(caller)
    }

    /// Serves the webhook RPCs with `webhooks`.
    pub fn with_webhooks(mut self, webhooks: Arc<Dispatcher>) -> SteleService {
        self.webhooks = Some(webhooks);
        self
    }

    /// Refuses a client's commit or delete of a cursor that a webhook endpoint
    /// owns (`webhook.<name>` and `webhook.<name>.redrive` while endpoint
    /// `<name>` exists): FAILED_PRECONDITION with code `CURSOR_RESERVED`.
    fn check_cursor_owner(&self, cursor: &str) -> Result<(), Status> {
        let (Some(rest), Some(webhooks)) = (cursor.strip_prefix(WEBHOOK_CURSOR_PREFIX), &self.webhooks)
        else {
            return Ok(());
        };
        let owner = [Some(rest), rest.strip_suffix(".redrive")]
            .into_iter()
            .flatten()
            .find(|name| webhooks.exists(name));
        match owner {
            Some(owner) => Err(status_of_detail(
                tonic::Code::FailedPrecondition,
                proto::ErrorDetail {
                    code: proto::ErrorCode::CursorReserved as i32,
                    message: format!(
                        "cursor {cursor:?} belongs to webhook endpoint {owner:?}; delete the endpoint to release it"
                    ),
                    ..proto::ErrorDetail::default()
                },
                Some("cursor"),
            )),
            None => Ok(()),
        }
    }

    fn webhooks(&self) -> Result<&Arc<Dispatcher>, Status> {
        self.webhooks
            .as_ref()
            .ok_or_else(|| Status::unimplemented("webhooks are not served here"))
    }

    fn groups(&self) -> Result<&Arc<Groups>, Status> {
        self.groups
            .as_ref()
            .ok_or_else(|| Status::unimplemented("consumer groups are not served here"))
    }

    /// Serves the consumer group RPCs with `groups`.
    pub fn with_groups(mut self, groups: Arc<Groups>) -> SteleService {
        self.groups = Some(groups);
        self
    }

    /// The caller of a group RPC naming group `name`, allowed on its topic (an
    /// unknown group's topic is the empty name, which only `<group>:*` reaches).
    fn group_caller<T>(&self, rpc: Rpc, request: &Request<T>, name: &str) -> Result<Caller, Status> {
        let caller = self.caller(rpc, request)?;
        let topic = self.groups.as_ref().and_then(|groups| groups.topic_of(name));
        caller.allow(topic.as_deref().unwrap_or_default())?;
        Ok(caller)
    }
}

fn outcomes(results: Vec<stele_engine::Result<stele_engine::AppendAck>>) -> Vec<proto::BatchAppendOutcome> {
    results
        .into_iter()
        .map(|result| proto::BatchAppendOutcome {
            outcome: Some(match result {
                Ok(ack) => proto::batch_append_outcome::Outcome::Result(convert::ack_to_proto(&ack)),
                Err(error) => proto::batch_append_outcome::Outcome::Error(error_detail(&error)),
            }),
        })
        .collect()
}

/// One request of an AppendSession, in arrival order.
enum SessionItem {
    /// A request taken off the stream and submitted (or refused).
    Request {
        correlation_id: u64,
        count: usize,
        future: super::backend::BoxFuture<
            stele_engine::Result<Vec<stele_engine::Result<stele_engine::AppendAck>>>,
        >,
    },
    /// A request refused before it was submitted (a missing grant).
    Refused {
        correlation_id: u64,
        count: usize,
        detail: Box<proto::ErrorDetail>,
    },
    /// The stream failed; answered after every earlier request.
    End(Status),
}

/// A session request taken off the stream: submitted, or refused when the
/// caller may not append to its topic or it breaks a bound of the call.
fn session_item(caller: &Caller, backend: &dyn Backend, message: proto::AppendSessionRequest) -> SessionItem {
    let count = message.appends.len();
    if let Err(status) = caller.allow(&message.topic) {
        return SessionItem::Refused {
            correlation_id: message.correlation_id,
            count,
            detail: Box::new(stele_wire::status::detail_of(&status).unwrap_or_default()),
        };
    }
    let future = match check_appends(&message.appends) {
        Ok(()) => backend.append(
            &message.topic,
            message
                .appends
                .into_iter()
                .map(convert::append_from_proto)
                .collect(),
        ),
        Err(error) => Box::pin(async move { Err(error) }),
    };
    SessionItem::Request {
        correlation_id: message.correlation_id,
        count,
        future,
    }
}

/// `future`'s output if it is ready at the first poll, without waiting (and
/// without a waker: the caller polls it again, with its own, before it sleeps).
fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// The answer to a session request refused as a whole (nothing of it applied):
/// `error` set, and the same error as the outcome of each append.
fn refused_request(
    correlation_id: u64,
    count: usize,
    detail: proto::ErrorDetail,
) -> proto::AppendSessionResponse {
    proto::AppendSessionResponse {
        correlation_id,
        outcomes: (0..count)
            .map(|_| proto::BatchAppendOutcome {
                outcome: Some(proto::batch_append_outcome::Outcome::Error(detail.clone())),
            })
            .collect(),
        error: Some(detail),
    }
}

/// Checks what bounds a whole append call, before anything is submitted: at
/// least one append, and at most `APPEND_EVENTS_COUNT_MAX` events over all its
/// appends (the same bound as one append's events). The backend checks the
/// topic name.
///
/// # Errors
/// [`stele_engine::Error::InvalidArgument`] or [`stele_engine::Error::LimitExceeded`].
fn check_appends(appends: &[proto::BatchAppend]) -> stele_engine::Result<()> {
    if appends.is_empty() {
        return Err(stele_engine::Error::InvalidArgument(
            "a request needs at least one append".into(),
        ));
    }
    let events_count: usize = appends.iter().map(|append| append.events.len().max(1)).sum();
    if events_count > limits::APPEND_EVENTS_COUNT_MAX {
        return Err(stele_engine::Error::LimitExceeded {
            what: "events per call",
            value: events_count as u64,
            max: limits::APPEND_EVENTS_COUNT_MAX as u64,
        });
    }
    Ok(())
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Stele for SteleService {
    async fn create_topic(
        &self,
        request: Request<proto::CreateTopicRequest>,
    ) -> Result<Response<proto::CreateTopicResponse>, Status> {
        let caller = self.caller(Rpc::CreateTopic, &request)?;
        let request = request.into_inner();
        caller.allow(&request.topic)?;
        let result = async {
            let options =
                convert::options_from_settings(request.settings, &self.backend.default_topic_options())
                    .map_err(|message| invalid_field("settings", message))?;
            let options = self
                .backend
                .create_topic(&request.topic, options)
                .await
                .or_status()?;
            Ok(Response::new(proto::CreateTopicResponse {
                settings: Some(convert::settings_from_options(&options)),
            }))
        }
        .await;
        caller.audit(Some(&request.topic), None, &result);
        result
    }

    async fn describe_topic(
        &self,
        request: Request<proto::DescribeTopicRequest>,
    ) -> Result<Response<proto::DescribeTopicResponse>, Status> {
        let caller = self.caller(Rpc::DescribeTopic, &request)?;
        let request = request.into_inner();
        caller.allow(&request.topic)?;
        let description = self.backend.describe_topic(&request.topic).await.or_status()?;
        Ok(Response::new(proto::DescribeTopicResponse {
            topic: request.topic,
            settings: Some(convert::settings_from_options(&description.options)),
            revision: description.revision,
            changed_ms: description.changed_ms,
            partitions: description
                .partitions
                .iter()
                .map(|info| proto::PartitionDescription {
                    partition: info.partition.0,
                    earliest_offset: info.earliest.0,
                    high_watermark: info.high_watermark.0,
                    size_bytes: info.size_bytes,
                    segment_count: info.segments_count as u32,
                    key_count: info.keys_count as u64,
                    quarantine: info.quarantine.as_ref().map(convert::quarantine_to_proto),
                })
                .collect(),
        }))
    }

    async fn list_topics(
        &self,
        request: Request<proto::ListTopicsRequest>,
    ) -> Result<Response<proto::ListTopicsResponse>, Status> {
        let caller = self.caller(Rpc::ListTopics, &request)?;
        let mut topics = self.backend.list_topics().await.or_status()?;
        topics.retain(|topic| caller.sees(topic));
        Ok(Response::new(proto::ListTopicsResponse { topics }))
    }

    async fn delete_topic(
        &self,
        request: Request<proto::DeleteTopicRequest>,
    ) -> Result<Response<proto::DeleteTopicResponse>, Status> {
        let caller = self.caller(Rpc::DeleteTopic, &request)?;
        let topic = request.into_inner().topic;
        caller.allow(&topic)?;
        let result = self
            .backend
            .delete_topic(&topic)
            .await
            .or_status()
            .map(|()| Response::new(proto::DeleteTopicResponse {}));
        caller.audit(Some(&topic), None, &result);
        result
    }

    async fn append(
        &self,
        request: Request<proto::AppendRequest>,
    ) -> Result<Response<proto::AppendResponse>, Status> {
        let caller = self.caller(Rpc::Append, &request)?;
        let request = request.into_inner();
        caller.allow(&request.topic)?;
        let append = convert::append_from_proto(proto::BatchAppend {
            key: request.key,
            expected: request.expected,
            events: request.events,
            producer: request.producer,
        });
        let mut results = self
            .backend
            .append(&request.topic, vec![append])
            .await
            .or_status()?;
        let ack = results
            .pop()
            .ok_or_else(|| Status::internal("append produced no result"))?
            .or_status()?;
        Ok(Response::new(proto::AppendResponse {
            result: Some(convert::ack_to_proto(&ack)),
        }))
    }

    async fn append_batch(
        &self,
        request: Request<proto::AppendBatchRequest>,
    ) -> Result<Response<proto::AppendBatchResponse>, Status> {
        let caller = self.caller(Rpc::AppendBatch, &request)?;
        let request = request.into_inner();
        caller.allow(&request.topic)?;
        check_appends(&request.appends).or_status()?;
        let appends = request
            .appends
            .into_iter()
            .map(convert::append_from_proto)
            .collect();
        let results = self.backend.append(&request.topic, appends).await.or_status()?;
        Ok(Response::new(proto::AppendBatchResponse {
            outcomes: outcomes(results),
        }))
    }

    type AppendSessionStream = BoxStream<proto::AppendSessionResponse>;

    async fn append_session(
        &self,
        request: Request<Streaming<proto::AppendSessionRequest>>,
    ) -> Result<Response<Self::AppendSessionStream>, Status> {
        let caller = self.caller(Rpc::AppendSession, &request)?;
        let mut inbound = request.into_inner();
        let backend = Arc::clone(&self.backend);
        // Appends start in arrival order (so they join group commits early) and
        // their responses are sent in the same order. Every request taken off the
        // stream is answered exactly once: a refused request gets an in-stream
        // error and the session goes on; when the stream itself fails (bytes that
        // do not decode, a message above the size limit), the error goes through
        // the same queue, after the answers of every request before it, and
        // nothing after it is read.
        let (pending_sender, mut pending) = mpsc::channel::<SessionItem>(SESSION_IN_FLIGHT_MAX);
        let (sender, receiver) = mpsc::channel(64);
        let mut closing = self.closing.clone();
        tokio::spawn(async move {
            // One future for the stream's life: a revoked or expired token ends
            // the session after the answers of every request read before.
            let ended = caller.ended();
            tokio::pin!(ended);
            let mut items = Vec::with_capacity(SESSION_COALESCE_MAX);
            loop {
                let next = tokio::select! {
                    next = inbound.message() => next,
                    _ = closing.wait_for(|closing| *closing) => break,
                    () = &mut ended => Err(stele_wire::status::unauthenticated()),
                };
                // The messages already received are submitted together, so that
                // their appends share writes (one per partition, not one each);
                // they are answered one by one, in order, as before.
                let mut end = false;
                // At most what the queue has room for (and at least this one), so
                // that SESSION_IN_FLIGHT_MAX still bounds the requests in flight.
                let room = pending_sender.capacity().clamp(1, SESSION_COALESCE_MAX);
                stele_engine::coalesce_writes(|| {
                    let mut next = Some(next);
                    while let Some(received) = next.take() {
                        match received {
                            Ok(Some(message)) => items.push(session_item(&caller, backend.as_ref(), message)),
                            Ok(None) => end = true,
                            Err(status) => {
                                items.push(SessionItem::End(map_transport_status(status)));
                                end = true;
                            }
                        }
                        if !end && items.len() < room {
                            next = ready_now(inbound.message());
                        }
                    }
                });
                for item in items.drain(..) {
                    if pending_sender.send(item).await.is_err() {
                        return;
                    }
                }
                if end {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(item) = pending.recv().await {
                let response = match item {
                    SessionItem::Request {
                        correlation_id,
                        count,
                        future,
                    } => Ok(match future.await {
                        Ok(results) => proto::AppendSessionResponse {
                            correlation_id,
                            outcomes: outcomes(results),
                            error: None,
                        },
                        Err(error) => refused_request(correlation_id, count, error_detail(&error)),
                    }),
                    SessionItem::Refused {
                        correlation_id,
                        count,
                        detail,
                    } => Ok(refused_request(correlation_id, count, *detail)),
                    SessionItem::End(status) => Err(status),
                };
                let end = response.is_err();
                if sender.send(response).await.is_err() || end {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn open_producer(
        &self,
        request: Request<proto::OpenProducerRequest>,
    ) -> Result<Response<proto::OpenProducerResponse>, Status> {
        let caller = self.caller(Rpc::OpenProducer, &request)?;
        let request = request.into_inner();
        caller.allow(&request.topic)?;
        let (producer, epoch) = self
            .backend
            .open_producer(&request.topic, &request.name)
            .await
            .or_status()?;
        Ok(Response::new(proto::OpenProducerResponse {
            producer_id: producer.0,
            epoch: epoch.0,
        }))
    }

    async fn read(
        &self,
        request: Request<proto::ReadRequest>,
    ) -> Result<Response<proto::ReadResponse>, Status> {
        let caller = self.caller(Rpc::Read, &request)?;
        let request = request.into_inner();
        caller.allow(&request.topic)?;
        let count_max = match request.max_events {
            0 => READ_EVENTS_DEFAULT,
            count => (count as usize).min(limits::READ_EVENTS_COUNT_MAX),
        };
        let bytes_max = match request.max_bytes {
            0 => READ_BYTES_DEFAULT,
            // A response must fit the server's largest gRPC message.
            bytes => bytes.min(READ_BYTES_MAX),
        };
        let partition = PartitionId(request.partition);
        let batch = self
            .backend
            .scan(
                &request.topic,
                partition,
                Offset(request.from_offset),
                count_max,
                bytes_max,
                &EventFilter::all(),
            )
            .await
            .or_status()?;
        let high_watermark = self
            .backend
            .high_watermark(&request.topic, partition)
            .await
            .or_status()?
            .0;
        Ok(Response::new(proto::ReadResponse {
            events: batch
                .iter()
                .map(|event| convert::stored_to_proto(&event))
                .collect(),
            next_offset: batch.next_offset().0,
            high_watermark,
        }))
    }

    async fn read_key(
        &self,
        request: Request<proto::ReadKeyRequest>,
    ) -> Result<Response<proto::ReadKeyResponse>, Status> {
        let caller = self.caller(Rpc::ReadKey, &request)?;
        let request = request.into_inner();
        caller.allow(&request.topic)?;
        let direction = match proto::ReadDirection::try_from(request.direction) {
            Ok(proto::ReadDirection::Forwards) => Direction::Forwards,
            Ok(proto::ReadDirection::Backwards) => Direction::Backwards,
            Err(_) => {
                return Err(invalid_field(
                    "direction",
                    format!("unknown direction {}", request.direction),
                ));
            }
        };
        let count_max = match request.max_events {
            0 => READ_EVENTS_DEFAULT,
            count => (count as usize).min(limits::READ_EVENTS_COUNT_MAX),
        };
        let history = self
            .backend
            .read_key(
                &request.topic,
                &request.key,
                request.from_sequence.map(Sequence),
                direction,
                count_max,
            )
            .await
            .or_status()?;
        Ok(Response::new(proto::ReadKeyResponse {
            events: history
                .events
                .iter()
                .map(|event| convert::stored_to_proto(&event))
                .collect(),
            last_sequence: history.last_sequence.map(|sequence| sequence.0),
        }))
    }

    type SubscribeStream = BoxStream<proto::SubscribeResponse>;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = self.caller(Rpc::Subscribe, &request)?;
        let request = request.into_inner();
        caller.allow(&request.topic)?;
        let stream = subscription::start(Arc::clone(&self.backend), request, self.closing.clone()).await?;
        Ok(Response::new(until_ended(stream, caller)))
    }

    async fn commit_cursor(
        &self,
        request: Request<proto::CommitCursorRequest>,
    ) -> Result<Response<proto::CommitCursorResponse>, Status> {
        let caller = self.caller(Rpc::CommitCursor, &request)?;
        let request = request.into_inner();
        caller.allow(&request.topic)?;
        let mut offsets: Vec<(PartitionId, Offset)> = request
            .offsets
            .iter()
            .map(|(partition, offset)| (PartitionId(*partition), Offset(*offset)))
            .collect();
        offsets.sort();
        self.check_cursor_owner(&request.cursor)?;
        self.backend
            .commit_cursor(&request.topic, &request.cursor, offsets, request.allow_backwards)
            .await
            .or_status()?;
        Ok(Response::new(proto::CommitCursorResponse {}))
    }

    async fn get_cursor(
        &self,
        request: Request<proto::GetCursorRequest>,
    ) -> Result<Response<proto::GetCursorResponse>, Status> {
        let caller = self.caller(Rpc::GetCursor, &request)?;
        let request = request.into_inner();
        caller.allow(&request.topic)?;
        let positions = self
            .backend
            .cursor(&request.topic, &request.cursor)
            .await
            .or_status()?;
        Ok(Response::new(proto::GetCursorResponse {
            cursor: Some(cursor_to_proto(request.cursor, positions)),
        }))
    }

    async fn list_cursors(
        &self,
        request: Request<proto::ListCursorsRequest>,
    ) -> Result<Response<proto::ListCursorsResponse>, Status> {
        let caller = self.caller(Rpc::ListCursors, &request)?;
        let request = request.into_inner();
        caller.allow(&request.topic)?;
        let cursors = self.backend.cursors(&request.topic).await.or_status()?;
        Ok(Response::new(proto::ListCursorsResponse {
            cursors: cursors
                .into_iter()
                .map(|(name, positions)| cursor_to_proto(name, positions))
                .collect(),
        }))
    }

    async fn delete_cursor(
        &self,
        request: Request<proto::DeleteCursorRequest>,
    ) -> Result<Response<proto::DeleteCursorResponse>, Status> {
        let caller = self.caller(Rpc::DeleteCursor, &request)?;
        let request = request.into_inner();
        caller.allow(&request.topic)?;
        self.check_cursor_owner(&request.cursor)?;
        self.backend
            .delete_cursor(&request.topic, &request.cursor)
            .await
            .or_status()?;
        Ok(Response::new(proto::DeleteCursorResponse {}))
    }

    async fn create_webhook(
        &self,
        request: Request<proto::CreateWebhookRequest>,
    ) -> Result<Response<proto::CreateWebhookResponse>, Status> {
        let caller = self.caller(Rpc::CreateWebhook, &request)?;
        let request = request.into_inner();
        caller.allow(&request.topic)?;
        let topic = request.topic.clone();
        let name = request.name.clone();
        if let Some(settings) = &request.settings
            && !settings.dead_letter_topic.is_empty()
        {
            caller.allow(&settings.dead_letter_topic)?;
        }
        let result = async {
            if proto::WebhookStart::try_from(request.start).is_err() {
                return Err(invalid_field(
                    "start",
                    format!("unknown webhook start {}", request.start),
                ));
            }
            let request = convert::new_webhook_from_proto(request);
            let (view, secret) = self.webhooks()?.create(request).await.or_status()?;
            Ok(Response::new(proto::CreateWebhookResponse {
                webhook: Some(convert::webhook_to_proto(&view)),
                secret,
            }))
        }
        .await;
        caller.audit(Some(&topic), Some(&format!("webhook {name}")), &result);
        result
    }

    async fn list_webhooks(
        &self,
        request: Request<proto::ListWebhooksRequest>,
    ) -> Result<Response<proto::ListWebhooksResponse>, Status> {
        let caller = self.caller(Rpc::ListWebhooks, &request)?;
        let mut webhooks = self.webhooks()?.list().await;
        webhooks.retain(|view| caller.sees(&view.endpoint.topic));
        Ok(Response::new(proto::ListWebhooksResponse {
            webhooks: webhooks.iter().map(convert::webhook_to_proto).collect(),
        }))
    }

    async fn pause_webhook(
        &self,
        request: Request<proto::PauseWebhookRequest>,
    ) -> Result<Response<proto::PauseWebhookResponse>, Status> {
        let name = request.get_ref().name.clone();
        let caller = self.webhook_caller(Rpc::PauseWebhook, &request, &name).await?;
        let result = async {
            self.webhooks()?.pause(&name).await.or_status()?;
            Ok(Response::new(proto::PauseWebhookResponse {}))
        }
        .await;
        caller.audit(None, Some(&format!("webhook {name}")), &result);
        result
    }

    async fn resume_webhook(
        &self,
        request: Request<proto::ResumeWebhookRequest>,
    ) -> Result<Response<proto::ResumeWebhookResponse>, Status> {
        let name = request.get_ref().name.clone();
        let caller = self.webhook_caller(Rpc::ResumeWebhook, &request, &name).await?;
        let result = async {
            self.webhooks()?.resume(&name).await.or_status()?;
            Ok(Response::new(proto::ResumeWebhookResponse {}))
        }
        .await;
        caller.audit(None, Some(&format!("webhook {name}")), &result);
        result
    }

    async fn delete_webhook(
        &self,
        request: Request<proto::DeleteWebhookRequest>,
    ) -> Result<Response<proto::DeleteWebhookResponse>, Status> {
        let name = request.get_ref().name.clone();
        let caller = self.webhook_caller(Rpc::DeleteWebhook, &request, &name).await?;
        let result = async {
            self.webhooks()?.delete(&name).await.or_status()?;
            Ok(Response::new(proto::DeleteWebhookResponse {}))
        }
        .await;
        caller.audit(None, Some(&format!("webhook {name}")), &result);
        result
    }

    async fn list_dead_letters(
        &self,
        request: Request<proto::ListDeadLettersRequest>,
    ) -> Result<Response<proto::ListDeadLettersResponse>, Status> {
        let name = request.get_ref().name.clone();
        let caller = self.webhook_caller(Rpc::ListDeadLetters, &request, &name).await?;
        let request = request.into_inner();
        let count_max = match request.max_events {
            0 => READ_EVENTS_DEFAULT,
            count => (count as usize).min(limits::READ_EVENTS_COUNT_MAX),
        };
        let result = async {
            let letters = self
                .webhooks()?
                .dead_letters(&request.name, count_max)
                .await
                .or_status()?;
            Ok(Response::new(proto::ListDeadLettersResponse {
                dead_letters: letters.iter().map(convert::dead_letter_to_proto).collect(),
            }))
        }
        .await;
        caller.audit(None, Some(&format!("webhook {name}")), &result);
        result
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<proto::RedriveDeadLettersRequest>,
    ) -> Result<Response<proto::RedriveDeadLettersResponse>, Status> {
        let name = request.get_ref().name.clone();
        let caller = self
            .webhook_caller(Rpc::RedriveDeadLetters, &request, &name)
            .await?;
        let result = async {
            let redriven_count = self.webhooks()?.redrive(&name).await.or_status()?;
            Ok(Response::new(proto::RedriveDeadLettersResponse {
                redriven_count,
            }))
        }
        .await;
        caller.audit(None, Some(&format!("webhook {name}")), &result);
        result
    }

    async fn create_group(
        &self,
        request: Request<proto::CreateGroupRequest>,
    ) -> Result<Response<proto::CreateGroupResponse>, Status> {
        let caller = self.caller(Rpc::CreateGroup, &request)?;
        let request = request.into_inner();
        caller.allow(&request.topic)?;
        if let Some(settings) = &request.settings
            && !settings.dead_letter_topic.is_empty()
        {
            caller.allow(&settings.dead_letter_topic)?;
        } else {
            caller.allow(&format!(
                "{}{}",
                request.topic,
                stele_engine::group::defaults::DEAD_LETTER_SUFFIX
            ))?;
        }
        let topic = request.topic.clone();
        let name = request.name.clone();
        let result = async {
            let group = self.groups()?.create(request).await.or_status()?;
            Ok(Response::new(proto::CreateGroupResponse { group: Some(group) }))
        }
        .await;
        caller.audit(Some(&topic), Some(&format!("group {name}")), &result);
        result
    }

    async fn describe_group(
        &self,
        request: Request<proto::DescribeGroupRequest>,
    ) -> Result<Response<proto::DescribeGroupResponse>, Status> {
        let name = request.get_ref().name.clone();
        let _caller = self.group_caller(Rpc::DescribeGroup, &request, &name)?;
        let group = self.groups()?.describe(&name).await.or_status()?;
        Ok(Response::new(proto::DescribeGroupResponse { group: Some(group) }))
    }

    async fn list_groups(
        &self,
        request: Request<proto::ListGroupsRequest>,
    ) -> Result<Response<proto::ListGroupsResponse>, Status> {
        let caller = self.caller(Rpc::ListGroups, &request)?;
        let topic = request.into_inner().topic;
        let mut groups = self
            .groups()?
            .list((!topic.is_empty()).then_some(topic.as_str()))
            .await;
        groups.retain(|group| caller.sees(&group.topic));
        Ok(Response::new(proto::ListGroupsResponse { groups }))
    }

    async fn delete_group(
        &self,
        request: Request<proto::DeleteGroupRequest>,
    ) -> Result<Response<proto::DeleteGroupResponse>, Status> {
        let name = request.get_ref().name.clone();
        let caller = self.group_caller(Rpc::DeleteGroup, &request, &name)?;
        let topic = self.groups()?.topic_of(&name);
        let result = async {
            self.groups()?.delete(&name).await.or_status()?;
            Ok(Response::new(proto::DeleteGroupResponse {}))
        }
        .await;
        caller.audit(topic.as_deref(), Some(&format!("group {name}")), &result);
        result
    }

    async fn seek_group(
        &self,
        request: Request<proto::SeekGroupRequest>,
    ) -> Result<Response<proto::SeekGroupResponse>, Status> {
        let name = request.get_ref().name.clone();
        let caller = self.group_caller(Rpc::SeekGroup, &request, &name)?;
        let topic = self.groups()?.topic_of(&name);
        let request = request.into_inner();
        let result = async {
            use proto::seek_group_request::Position;
            let to = match request.position {
                Some(Position::Offsets(offsets)) => SeekTo::Offsets(offsets.offsets.into_iter().collect()),
                Some(Position::TimestampMs(timestamp_ms)) => SeekTo::Timestamp(timestamp_ms),
                Some(Position::Earliest(_)) => SeekTo::Earliest,
                Some(Position::Latest(_)) => SeekTo::Latest,
                None => return Err(invalid_field("position", "a seek needs a position".to_string())),
            };
            let group = self.groups()?.seek(&name, to).await.or_status()?;
            Ok(Response::new(proto::SeekGroupResponse { group: Some(group) }))
        }
        .await;
        caller.audit(topic.as_deref(), Some(&format!("group {name}")), &result);
        result
    }

    type ConsumeStream = BoxStream<proto::ConsumeResponse>;

    async fn consume(
        &self,
        request: Request<Streaming<proto::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let caller = self.caller(Rpc::Consume, &request)?;
        let mut inbound = request.into_inner();
        let groups = Arc::clone(self.groups()?);
        let first = inbound.message().await.map_err(map_transport_status)?;
        let Some(proto::ConsumeRequest {
            kind: Some(proto::consume_request::Kind::Join(join)),
        }) = first
        else {
            return Err(invalid_field(
                "join",
                "the first message of Consume must be a join".to_string(),
            ));
        };
        caller.allow(groups.topic_of(&join.group).as_deref().unwrap_or_default())?;
        // The window bounds the deliveries queued to this stream; refusals and
        // heartbeats are few.
        let (sender, receiver) = mpsc::channel(join.window.clamp(1, 1024) as usize + 64);
        let membership = groups
            .join(&join.group, join.instance_id, join.window, sender.clone())
            .await
            .or_status()?;
        let mut closing = self.closing.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = inbound.message() => next,
                    _ = closing.wait_for(|closing| *closing) => break,
                    () = sender.closed() => break,
                };
                let kind = match next {
                    Ok(Some(message)) => message.kind,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = sender.try_send(Err(map_transport_status(status)));
                        break;
                    }
                };
                use proto::consume_request::Kind;
                match kind {
                    Some(Kind::Ack(ack)) => membership.settle(ack.delivery_ids, Action::Ack),
                    Some(Kind::Retry(retry)) => membership.settle(
                        vec![retry.delivery_id],
                        Action::Retry {
                            delay_ms: (retry.delay_ms > 0).then_some(retry.delay_ms),
                        },
                    ),
                    Some(Kind::Park(park)) => {
                        membership.settle(vec![park.delivery_id], Action::Park { reason: park.reason })
                    }
                    Some(Kind::Extend(extend)) => membership.settle(extend.delivery_ids, Action::Extend),
                    Some(Kind::Join(_)) | None => {
                        let _ = sender.try_send(Err(invalid_field(
                            "join",
                            "a Consume stream joins once, with its first message".to_string(),
                        )));
                        break;
                    }
                }
            }
            // Dropping the membership leaves the group: its deliveries go to others.
            drop(membership);
        });
        let stream: BoxStream<proto::ConsumeResponse> = Box::pin(ReceiverStream::new(receiver));
        Ok(Response::new(until_ended(stream, caller)))
    }

    async fn list_parked(
        &self,
        request: Request<proto::ListParkedRequest>,
    ) -> Result<Response<proto::ListParkedResponse>, Status> {
        let name = request.get_ref().name.clone();
        let _caller = self.group_caller(Rpc::ListParked, &request, &name)?;
        let max = match request.get_ref().max_events {
            0 => READ_EVENTS_DEFAULT,
            max => (max as usize).min(READ_EVENTS_DEFAULT * 10),
        };
        let events = self.groups()?.parked(&name, max).await.or_status()?;
        Ok(Response::new(proto::ListParkedResponse { events }))
    }

    async fn redrive_parked(
        &self,
        request: Request<proto::RedriveParkedRequest>,
    ) -> Result<Response<proto::RedriveParkedResponse>, Status> {
        let name = request.get_ref().name.clone();
        let caller = self.group_caller(Rpc::RedriveParked, &request, &name)?;
        let topic = self.groups()?.topic_of(&name);
        let result = async {
            let (redriven_count, unblocked_keys_count) = self.groups()?.redrive(&name).await.or_status()?;
            Ok(Response::new(proto::RedriveParkedResponse {
                redriven_count,
                unblocked_keys_count,
            }))
        }
        .await;
        caller.audit(topic.as_deref(), Some(&format!("group {name}")), &result);
        result
    }

    async fn create_token(
        &self,
        request: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        let caller = self.caller(Rpc::CreateToken, &request)?;
        caller.allow_global()?;
        let request = request.into_inner();
        let new = NewToken {
            name: request.name,
            grants: request.grants,
            expires_in: (request.expires_in_ms != 0)
                .then(|| std::time::Duration::from_millis(request.expires_in_ms)),
            certificate_subject: (!request.certificate_subject.is_empty())
                .then_some(request.certificate_subject),
        };
        let name = new.name.clone();
        let auth = Arc::clone(&self.auth);
        let creator = caller.clone();
        let result = match tokio::task::spawn_blocking(move || auth.create(&creator, new)).await {
            Ok(result) => result.or_status(),
            Err(error) => Err(Status::internal(format!("token creation failed: {error}"))),
        };
        let detail = match &result {
            Ok((entry, _)) => format!("token {} ({name})", entry.id),
            Err(_) => format!("token ({name})"),
        };
        let result = result.map(|(entry, secret)| {
            Response::new(proto::CreateTokenResponse {
                token: Some(token_to_proto(entry)),
                secret: secret.unwrap_or_default(),
            })
        });
        caller.audit(None, Some(&detail), &result);
        result
    }

    async fn list_tokens(
        &self,
        request: Request<proto::ListTokensRequest>,
    ) -> Result<Response<proto::ListTokensResponse>, Status> {
        let caller = self.caller(Rpc::ListTokens, &request)?;
        caller.allow_global()?;
        let result = Ok(Response::new(proto::ListTokensResponse {
            tokens: self.auth.list().into_iter().map(token_to_proto).collect(),
        }));
        caller.audit(None, None, &result);
        result
    }

    async fn revoke_token(
        &self,
        request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::RevokeTokenResponse>, Status> {
        let caller = self.caller(Rpc::RevokeToken, &request)?;
        caller.allow_global()?;
        let id = request.into_inner().id;
        let auth = Arc::clone(&self.auth);
        let revoking = id.clone();
        let result = match tokio::task::spawn_blocking(move || auth.revoke(&revoking)).await {
            Ok(Ok(Some(entry))) => Ok(Response::new(proto::RevokeTokenResponse {
                token: Some(token_to_proto(entry)),
            })),
            Ok(Ok(None)) => Err(stele_wire::status::wire_status(
                proto::ErrorCode::TokenNotFound,
                format!("no token has id {id:?}"),
                Some("id"),
            )),
            Ok(Err(error)) => Err(stele_wire::status::to_status(&error)),
            Err(error) => Err(Status::internal(format!("token revocation failed: {error}"))),
        };
        caller.audit(None, Some(&format!("token {id}")), &result);
        result
    }

    async fn who_am_i(
        &self,
        request: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::WhoAmIResponse>, Status> {
        let caller = self.caller(Rpc::WhoAmI, &request)?;
        Ok(Response::new(proto::WhoAmIResponse {
            principal: caller.principal(),
            name: caller.name().to_string(),
            grants: caller.grants().texts(),
            auth_required: caller.auth_required(),
        }))
    }

    async fn backup(
        &self,
        request: Request<proto::BackupRequest>,
    ) -> Result<Response<proto::BackupResponse>, Status> {
        let caller = self.caller(Rpc::Backup, &request)?;
        caller.allow_global()?;
        let request = request.into_inner();
        let detail = format!("destination {:?}", request.destination);
        let stores = crate::backup::Stores {
            log: self.log.clone(),
            webhooks: self.webhooks.clone(),
            groups: self.groups.clone(),
            auth: Arc::clone(&self.auth),
        };
        let result = crate::backup::backup(stores, request).await;
        caller.audit(None, Some(&detail), &result);
        result.map(Response::new)
    }

    async fn update_topic(
        &self,
        request: Request<proto::UpdateTopicRequest>,
    ) -> Result<Response<proto::UpdateTopicResponse>, Status> {
        let caller = self.caller(Rpc::UpdateTopic, &request)?;
        let request = request.into_inner();
        caller.allow(&request.topic)?;
        let mut detail = None;
        let result = async {
            let change = convert::change_from_update(&request).map_err(|(field, error)| {
                if field.is_empty() {
                    stele_wire::status::to_status(&error)
                } else {
                    stele_wire::status::to_status_for_field(&error, field)
                }
            })?;
            let update = self
                .backend
                .update_topic(&request.topic, change, &caller.principal())
                .await
                .or_status()?;
            let changes = differences_text(&update.previous, &update.options);
            if !changes.is_empty() {
                tracing::info!(
                    topic = %request.topic,
                    revision = update.revision,
                    principal = %caller.principal(),
                    changes = %changes,
                    "topic options changed"
                );
            }
            detail = Some(format!("revision {}: {changes}", update.revision));
            Ok(Response::new(proto::UpdateTopicResponse {
                settings: Some(convert::settings_from_options(&update.options)),
                previous: Some(convert::settings_from_options(&update.previous)),
                revision: update.revision,
                changed_ms: update.changed_ms,
            }))
        }
        .await;
        caller.audit(Some(&request.topic), detail.as_deref(), &result);
        result
    }
}

/// "name: old -> new" for every option a change set, "; " apart.
fn differences_text(previous: &stele_engine::TopicOptions, options: &stele_engine::TopicOptions) -> String {
    stele_engine::config::option_differences(previous, options)
        .into_iter()
        .map(|(name, before, after)| format!("{name}: {before} -> {after}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn token_to_proto(entry: stele_engine::token::TokenEntry) -> proto::TokenInfo {
    proto::TokenInfo {
        id: entry.id,
        name: entry.name,
        grants: entry.grants,
        created_at_ms: entry.created_at_ms,
        expires_at_ms: entry.expires_at_ms,
        revoked_at_ms: entry.revoked_at_ms,
        certificate_subject: entry.certificate_subject,
        created_by: entry.created_by,
    }
}

/// `stream`, ended with UNAUTHENTICATED as soon as the caller's credential is
/// revoked or expires.
fn until_ended<T: Send + 'static>(stream: BoxStream<T>, caller: Caller) -> BoxStream<T> {
    Box::pin(UntilEnded {
        stream,
        ended: Box::pin(async move { caller.ended().await }),
        done: false,
    })
}

/// The stream of [`until_ended`].
struct UntilEnded<T> {
    stream: BoxStream<T>,
    ended: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    done: bool,
}

impl<T> Stream for UntilEnded<T> {
    type Item = Result<T, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.done {
            return std::task::Poll::Ready(None);
        }
        if self.ended.as_mut().poll(context).is_ready() {
            self.done = true;
            return std::task::Poll::Ready(Some(Err(stele_wire::status::unauthenticated())));
        }
        self.stream.as_mut().poll_next(context)
    }
}

fn cursor_to_proto(name: String, positions: Vec<stele_engine::CursorPosition>) -> proto::Cursor {
    proto::Cursor {
        name,
        partitions: positions
            .into_iter()
            .map(|position| proto::CursorPartition {
                partition: position.partition.0,
                committed_offset: position.committed.map(|offset| offset.0),
                lag: position.lag,
            })
            .collect(),
    }
}

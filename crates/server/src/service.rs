//! The `stele.v1.Stele` gRPC service over a [`Backend`].

use std::pin::Pin;
use std::sync::Arc;
use stele_engine::Sequence;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::backend::Backend;
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
/// Cursors whose names start with this belong to webhook endpoints.
const WEBHOOK_CURSOR_PREFIX: &str = "webhook.";

/// The service.
pub struct SteleService {
    backend: Arc<dyn Backend>,
    /// Turns true when the server shuts down: streams end after in-flight work.
    closing: watch::Receiver<bool>,
    /// Webhook delivery; the webhook RPCs fail as unimplemented without it.
    webhooks: Option<Arc<Dispatcher>>,
}

impl SteleService {
    /// A service over `backend`; streams end when `closing` turns true.
    pub fn new(backend: Arc<dyn Backend>, closing: watch::Receiver<bool>) -> SteleService {
        SteleService {
            backend,
            closing,
            webhooks: None,
        }
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
    /// The stream failed; answered after every earlier request.
    End(Status),
}

/// The answer to a session request refused as a whole (nothing of it applied):
/// `error` set, and the same error as the outcome of each append.
fn refused_request(
    correlation_id: u64,
    count: usize,
    error: &stele_engine::Error,
) -> proto::AppendSessionResponse {
    let detail = error_detail(error);
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
        let request = request.into_inner();
        let options = convert::options_from_settings(request.settings, &self.backend.default_topic_options())
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

    async fn describe_topic(
        &self,
        request: Request<proto::DescribeTopicRequest>,
    ) -> Result<Response<proto::DescribeTopicResponse>, Status> {
        let request = request.into_inner();
        let description = self.backend.describe_topic(&request.topic).await.or_status()?;
        Ok(Response::new(proto::DescribeTopicResponse {
            topic: request.topic,
            settings: Some(convert::settings_from_options(&description.options)),
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
                })
                .collect(),
        }))
    }

    async fn list_topics(
        &self,
        _request: Request<proto::ListTopicsRequest>,
    ) -> Result<Response<proto::ListTopicsResponse>, Status> {
        Ok(Response::new(proto::ListTopicsResponse {
            topics: self.backend.list_topics().await.or_status()?,
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<proto::DeleteTopicRequest>,
    ) -> Result<Response<proto::DeleteTopicResponse>, Status> {
        self.backend
            .delete_topic(&request.into_inner().topic)
            .await
            .or_status()?;
        Ok(Response::new(proto::DeleteTopicResponse {}))
    }

    async fn append(
        &self,
        request: Request<proto::AppendRequest>,
    ) -> Result<Response<proto::AppendResponse>, Status> {
        let request = request.into_inner();
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
        let request = request.into_inner();
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
            loop {
                let next = tokio::select! {
                    next = inbound.message() => next,
                    _ = closing.wait_for(|closing| *closing) => break,
                };
                let item = match next {
                    Ok(Some(message)) => {
                        let count = message.appends.len();
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
                    Ok(None) => break,
                    Err(status) => SessionItem::End(map_transport_status(status)),
                };
                let end = matches!(item, SessionItem::End(_));
                if pending_sender.send(item).await.is_err() || end {
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
                        Err(error) => refused_request(correlation_id, count, &error),
                    }),
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
        let request = request.into_inner();
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
        let request = request.into_inner();
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
        let request = request.into_inner();
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
        let stream = subscription::start(
            Arc::clone(&self.backend),
            request.into_inner(),
            self.closing.clone(),
        )
        .await?;
        Ok(Response::new(stream))
    }

    async fn commit_cursor(
        &self,
        request: Request<proto::CommitCursorRequest>,
    ) -> Result<Response<proto::CommitCursorResponse>, Status> {
        let request = request.into_inner();
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
        let request = request.into_inner();
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
        let request = request.into_inner();
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
        let request = request.into_inner();
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
        let request = request.into_inner();
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

    async fn list_webhooks(
        &self,
        _request: Request<proto::ListWebhooksRequest>,
    ) -> Result<Response<proto::ListWebhooksResponse>, Status> {
        let webhooks = self.webhooks()?.list().await;
        Ok(Response::new(proto::ListWebhooksResponse {
            webhooks: webhooks.iter().map(convert::webhook_to_proto).collect(),
        }))
    }

    async fn pause_webhook(
        &self,
        request: Request<proto::PauseWebhookRequest>,
    ) -> Result<Response<proto::PauseWebhookResponse>, Status> {
        self.webhooks()?
            .pause(&request.into_inner().name)
            .await
            .or_status()?;
        Ok(Response::new(proto::PauseWebhookResponse {}))
    }

    async fn resume_webhook(
        &self,
        request: Request<proto::ResumeWebhookRequest>,
    ) -> Result<Response<proto::ResumeWebhookResponse>, Status> {
        self.webhooks()?
            .resume(&request.into_inner().name)
            .await
            .or_status()?;
        Ok(Response::new(proto::ResumeWebhookResponse {}))
    }

    async fn delete_webhook(
        &self,
        request: Request<proto::DeleteWebhookRequest>,
    ) -> Result<Response<proto::DeleteWebhookResponse>, Status> {
        self.webhooks()?
            .delete(&request.into_inner().name)
            .await
            .or_status()?;
        Ok(Response::new(proto::DeleteWebhookResponse {}))
    }

    async fn list_dead_letters(
        &self,
        request: Request<proto::ListDeadLettersRequest>,
    ) -> Result<Response<proto::ListDeadLettersResponse>, Status> {
        let request = request.into_inner();
        let count_max = match request.max_events {
            0 => READ_EVENTS_DEFAULT,
            count => (count as usize).min(limits::READ_EVENTS_COUNT_MAX),
        };
        let letters = self
            .webhooks()?
            .dead_letters(&request.name, count_max)
            .await
            .or_status()?;
        Ok(Response::new(proto::ListDeadLettersResponse {
            dead_letters: letters.iter().map(convert::dead_letter_to_proto).collect(),
        }))
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<proto::RedriveDeadLettersRequest>,
    ) -> Result<Response<proto::RedriveDeadLettersResponse>, Status> {
        let redriven_count = self
            .webhooks()?
            .redrive(&request.into_inner().name)
            .await
            .or_status()?;
        Ok(Response::new(proto::RedriveDeadLettersResponse {
            redriven_count,
        }))
    }

    async fn create_token(
        &self,
        _request: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        Err(Status::unimplemented("tokens: in progress"))
    }

    async fn list_tokens(
        &self,
        _request: Request<proto::ListTokensRequest>,
    ) -> Result<Response<proto::ListTokensResponse>, Status> {
        Err(Status::unimplemented("tokens: in progress"))
    }

    async fn revoke_token(
        &self,
        _request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::RevokeTokenResponse>, Status> {
        Err(Status::unimplemented("tokens: in progress"))
    }

    async fn who_am_i(
        &self,
        _request: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::WhoAmIResponse>, Status> {
        Err(Status::unimplemented("tokens: in progress"))
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

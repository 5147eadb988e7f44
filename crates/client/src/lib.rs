//! A typed Rust client for a Stele server, over the generated `stele.v1` stubs.
//!
//! [`Client`] wraps every unary RPC with the engine's own types ([`Event`](stele_engine::Event),
//! [`AppendRequest`], [`AppendAck`], [`RecordedEvent`], [`TopicOptions`], ...);
//! generated types never appear in this module's public API, and every failure
//! is a [`ClientError`] carrying the gRPC code, the Stele [`ErrorKind`] and
//! numeric code, and the machine-readable [`ErrorDetails`].
//!
//! [`Producer`] is the high-throughput, exactly-once-per-session writer: it
//! stamps every append with its producer id, epoch and per-partition sequence,
//! batches appends and pipelines them over one `AppendSession` stream, and
//! retries transient failures with the original stamps, so that a retry of a
//! stored append is answered as a duplicate instead of being written twice.
//!
//! [`Follower`] follows a topic through lost connections, one event at a
//! time, resubscribing from the offset after the last event it returned in
//! each partition; [`Consumer`] and the command's `tail` are built on it.
//!
//! [`Consumer`] follows a topic from a named cursor, commits its progress
//! (automatically or on demand) and resubscribes after a disconnect. Delivery
//! is at-least-once: events delivered but not yet committed when a consumer
//! crashes are delivered again to the next consumer of the cursor.
//!
//! [`GroupConsumer`] is a member of a consumer group: the server hands each
//! key's events to one member at a time, in order, and the member settles
//! every delivery (ack, retry, park) with its handler's result; the admin
//! calls ([`Client::create_group`], ...) and the raw stream
//! ([`Client::consume`]) are in the same module. Delivery is at least once:
//! process effects idempotently by (topic, partition, offset).
//!
//! `start_test_server` (feature `test-server`) starts an in-process server on a free port over a
//! temporary directory, for embedders' tests.
//!
//! Invariant: at most [`PRODUCER_IN_FLIGHT_PER_PARTITION_MAX`] stamped appends
//! of one producer are unacknowledged per partition, because the server
//! remembers only that many recent appends per producer and partition
//! ([`limits::PRODUCER_RECENT_APPENDS_COUNT`]); a retry of an older one would be
//! rejected as out of order instead of being recognised as a duplicate.
//!
//! The client does not discover servers or balance load: it talks to the one
//! URL held by its [`ServerUrl`], which can be changed while running.
//!
//! ```
//! use stele_engine::{AppendRequest, Event, Sequence};
//!
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), stele_client::ClientError> {
//! // An in-process server on a free port, over a temporary directory.
//! let server = stele_client::start_test_server().await;
//! let producer = server.client.producer("orders", "billing").build().await?;
//! let created = AppendRequest::new("invoice-42", vec![Event::new("created", b"{}".to_vec())]);
//! let ack = producer.send(created).await?;
//! assert_eq!(ack.first_sequence, Sequence(0));
//! # Ok(())
//! # }
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod backup;
mod group;
#[cfg(feature = "test-server")]
mod test_server;
pub use backup::BackupSummary;
pub use group::{
    ConsumeItem, ConsumeSender, ConsumeStream, Delivery, ExhaustedPolicy, GROUP_CLOSE_TIMEOUT_DEFAULT,
    GROUP_IDLE_TIMEOUT_DEFAULT, GroupConsumer, GroupConsumerBuilder, GroupConsumerOptions, GroupCounters,
    GroupCounts, GroupInfo, GroupMemberInfo, GroupOptions, GroupPartitionInfo, GroupSeek, GroupSettings,
    GroupStart, Joined, ParkedEventInfo, Redriven, SettleRefused, Settlement, ShutdownHandle,
};
#[cfg(feature = "test-server")]
pub use test_server::{TestServer, start_test_server, test_backend, test_namespace, test_storage};

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use stele_engine::Sequence;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use stele_engine::config::{Durability, TopicOptions};
use stele_engine::error::ErrorKind;
use stele_engine::event::{
    AppendAck, AppendRequest, Direction, Epoch, Offset, PartitionId, ProducerId, ProducerStamp, RecordedEvent,
};
use stele_engine::limits;
use stele_engine::{CursorPosition, partition_for_key};
use stele_wire::proto::{self, stele_client::SteleClient};
use stele_wire::status::{ERROR_CODE_METADATA, detail_of};
use stele_wire::{MESSAGE_SIZE_BYTES_MAX, convert};

/// Most unacknowledged appends of one producer per partition: the number of
/// recent appends the server remembers per producer and partition.
pub const PRODUCER_IN_FLIGHT_PER_PARTITION_MAX: usize = limits::PRODUCER_RECENT_APPENDS_COUNT;

/// A result with a [`ClientError`].
pub type ClientResult<T> = std::result::Result<T, ClientError>;

/// A gRPC status code (the client's own copy, so that no transport type leaks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GrpcCode {
    /// gRPC `Ok`.
    Ok,
    /// gRPC `Cancelled`.
    Cancelled,
    /// gRPC `Unknown`.
    Unknown,
    /// gRPC `InvalidArgument`.
    InvalidArgument,
    /// gRPC `DeadlineExceeded`.
    DeadlineExceeded,
    /// gRPC `NotFound`.
    NotFound,
    /// gRPC `AlreadyExists`.
    AlreadyExists,
    /// gRPC `PermissionDenied`.
    PermissionDenied,
    /// gRPC `ResourceExhausted`.
    ResourceExhausted,
    /// gRPC `FailedPrecondition`.
    FailedPrecondition,
    /// gRPC `Aborted`.
    Aborted,
    /// gRPC `OutOfRange`.
    OutOfRange,
    /// gRPC `Unimplemented`.
    Unimplemented,
    /// gRPC `Internal`.
    Internal,
    /// gRPC `Unavailable`.
    Unavailable,
    /// gRPC `DataLoss`.
    DataLoss,
    /// gRPC `Unauthenticated`.
    Unauthenticated,
}

impl From<tonic::Code> for GrpcCode {
    fn from(code: tonic::Code) -> GrpcCode {
        use tonic::Code;
        match code {
            Code::Ok => GrpcCode::Ok,
            Code::Cancelled => GrpcCode::Cancelled,
            Code::Unknown => GrpcCode::Unknown,
            Code::InvalidArgument => GrpcCode::InvalidArgument,
            Code::DeadlineExceeded => GrpcCode::DeadlineExceeded,
            Code::NotFound => GrpcCode::NotFound,
            Code::AlreadyExists => GrpcCode::AlreadyExists,
            Code::PermissionDenied => GrpcCode::PermissionDenied,
            Code::ResourceExhausted => GrpcCode::ResourceExhausted,
            Code::FailedPrecondition => GrpcCode::FailedPrecondition,
            Code::Aborted => GrpcCode::Aborted,
            Code::OutOfRange => GrpcCode::OutOfRange,
            Code::Unimplemented => GrpcCode::Unimplemented,
            Code::Internal => GrpcCode::Internal,
            Code::Unavailable => GrpcCode::Unavailable,
            Code::DataLoss => GrpcCode::DataLoss,
            Code::Unauthenticated => GrpcCode::Unauthenticated,
        }
    }
}

impl GrpcCode {
    /// The code's number in the gRPC spec, e.g. 5 for `NotFound`.
    pub fn number(self) -> i32 {
        self.tonic() as i32
    }

    /// The code's canonical upper-case name in the gRPC spec, e.g. `NOT_FOUND`.
    pub fn name(self) -> &'static str {
        match self {
            GrpcCode::Ok => "OK",
            GrpcCode::Cancelled => "CANCELLED",
            GrpcCode::Unknown => "UNKNOWN",
            GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
            GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            GrpcCode::NotFound => "NOT_FOUND",
            GrpcCode::AlreadyExists => "ALREADY_EXISTS",
            GrpcCode::PermissionDenied => "PERMISSION_DENIED",
            GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcCode::FailedPrecondition => "FAILED_PRECONDITION",
            GrpcCode::Aborted => "ABORTED",
            GrpcCode::OutOfRange => "OUT_OF_RANGE",
            GrpcCode::Unimplemented => "UNIMPLEMENTED",
            GrpcCode::Internal => "INTERNAL",
            GrpcCode::Unavailable => "UNAVAILABLE",
            GrpcCode::DataLoss => "DATA_LOSS",
            GrpcCode::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    fn tonic(self) -> tonic::Code {
        use tonic::Code;
        match self {
            GrpcCode::Ok => Code::Ok,
            GrpcCode::Cancelled => Code::Cancelled,
            GrpcCode::Unknown => Code::Unknown,
            GrpcCode::InvalidArgument => Code::InvalidArgument,
            GrpcCode::DeadlineExceeded => Code::DeadlineExceeded,
            GrpcCode::NotFound => Code::NotFound,
            GrpcCode::AlreadyExists => Code::AlreadyExists,
            GrpcCode::PermissionDenied => Code::PermissionDenied,
            GrpcCode::ResourceExhausted => Code::ResourceExhausted,
            GrpcCode::FailedPrecondition => Code::FailedPrecondition,
            GrpcCode::Aborted => Code::Aborted,
            GrpcCode::OutOfRange => Code::OutOfRange,
            GrpcCode::Unimplemented => Code::Unimplemented,
            GrpcCode::Internal => Code::Internal,
            GrpcCode::Unavailable => Code::Unavailable,
            GrpcCode::DataLoss => Code::DataLoss,
            GrpcCode::Unauthenticated => Code::Unauthenticated,
        }
    }
}

/// The limit an argument exceeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitDetail {
    /// What was limited, e.g. `payload size`.
    pub name: String,
    /// The value given.
    pub value: u64,
    /// The limit.
    pub max: u64,
}

/// The machine-readable fields of a Stele error, when the server sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorDetails {
    /// Wrong expected sequence: the key's actual last sequence (`None` = no events).
    pub actual_sequence: Option<Sequence>,
    /// Producer out of order: the sequence the server expects next.
    pub expected_producer_sequence: Option<Sequence>,
    /// Producer fenced: the current epoch.
    pub current_epoch: Option<Epoch>,
    /// Offset out of range: the partition's oldest retained offset.
    pub earliest_offset: Option<Offset>,
    /// Offset out of range: the partition's high watermark.
    pub high_watermark: Option<Offset>,
    /// Limit exceeded: what, the value and the limit.
    pub limit: Option<LimitDetail>,
    /// Quarantined: the partition's damaged file (relative to the server's
    /// data directory), the byte position and the end of what it serves.
    pub quarantine: Option<stele_engine::Quarantine>,
}

/// Everything that can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server URL is malformed.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token given to [`ConnectOptions`] cannot be sent.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The server could not be reached when connecting.
    #[error("{}", connect_message(url, reason))]
    Connect {
        /// The server's URL.
        url: String,
        /// The causes, outermost first, each after `": "` (empty when none).
        reason: String,
    },
    /// The connection broke during a call.
    #[error("transport error talking to {url}: {reason}")]
    Transport {
        /// The server's URL.
        url: String,
        /// The transport's message.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{code:?}: {message}")]
    Status {
        /// The gRPC code.
        code: GrpcCode,
        /// The Stele error kind, when the server sent a Stele error detail.
        kind: Option<ErrorKind>,
        /// Stele's stable numeric error code (`ErrorCode` in the proto), from
        /// the detail or the `stele-error-code` trailer.
        error_code: Option<u32>,
        /// The server's message.
        message: String,
        /// The detail fields (actual sequence, limit, ...).
        details: Box<ErrorDetails>,
    },
    /// The server sent something the protocol does not allow.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The producer or consumer stopped; the reason is the first error it met.
    #[error("closed: {0}")]
    Closed(String),
}

impl ClientError {
    /// The gRPC code: the server's, or `Unavailable` for transport failures.
    pub fn code(&self) -> Option<GrpcCode> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            ClientError::Transport { .. } | ClientError::Connect { .. } => Some(GrpcCode::Unavailable),
            _ => None,
        }
    }

    /// The Stele error kind, when the server sent one.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Status { kind, .. } => *kind,
            _ => None,
        }
    }

    /// Stele's numeric error code, when the server sent one.
    pub fn error_code(&self) -> Option<u32> {
        match self {
            ClientError::Status { error_code, .. } => *error_code,
            _ => None,
        }
    }

    /// The detail fields, for a server error.
    pub fn details(&self) -> Option<&ErrorDetails> {
        match self {
            ClientError::Status { details, .. } => Some(details),
            _ => None,
        }
    }

    /// True when retrying the same call later may succeed: the server or the
    /// connection is unavailable, a deadline passed, or the disk is full.
    /// A fenced producer (`Aborted`) is permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } | ClientError::Connect { .. } => true,
            ClientError::Status {
                code,
                kind,
                error_code,
                ..
            } => match code {
                GrpcCode::Unavailable | GrpcCode::DeadlineExceeded => true,
                GrpcCode::ResourceExhausted => *kind == Some(ErrorKind::DiskFull),
                // A broken HTTP/2 stream surfaces as these without a Stele code.
                GrpcCode::Unknown | GrpcCode::Cancelled | GrpcCode::Internal => error_code.is_none(),
                _ => false,
            },
            _ => false,
        }
    }

    fn from_status(status: &tonic::Status) -> ClientError {
        let detail = detail_of(status);
        let trailer_code = status
            .metadata()
            .get(ERROR_CODE_METADATA)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<u32>().ok());
        match detail {
            Some(detail) => from_detail(status.code().into(), detail),
            None => ClientError::Status {
                code: status.code().into(),
                kind: trailer_code.and_then(kind_of_code),
                error_code: trailer_code,
                message: status.message().to_string(),
                details: Box::default(),
            },
        }
    }
}

fn from_detail(code: GrpcCode, detail: proto::ErrorDetail) -> ClientError {
    let error_code = u32::try_from(detail.code).ok();
    ClientError::Status {
        code,
        kind: error_code.and_then(kind_of_code),
        error_code,
        message: detail.message,
        details: Box::new(ErrorDetails {
            actual_sequence: detail.actual_sequence.map(Sequence),
            expected_producer_sequence: detail.expected_producer_sequence.map(Sequence),
            current_epoch: detail.current_epoch.map(Epoch),
            earliest_offset: detail.earliest_offset.map(Offset),
            high_watermark: detail.high_watermark.map(Offset),
            limit: (!detail.limit_name.is_empty()).then_some(LimitDetail {
                name: detail.limit_name,
                value: detail.limit_value,
                max: detail.limit_max,
            }),
            quarantine: detail.quarantine.map(stele_wire::convert::quarantine_from_proto),
        }),
    }
}

/// A per-append error inside a batch outcome: the gRPC code a unary append
/// would have had.
fn from_outcome_detail(detail: proto::ErrorDetail) -> ClientError {
    let kind = u32::try_from(detail.code).ok().and_then(kind_of_code);
    let code = kind.map_or(GrpcCode::Unknown, |kind| {
        stele_wire::status::grpc_code(kind).into()
    });
    from_detail(code, detail)
}

/// A change of a webhook endpoint's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookChange {
    /// Stop delivering, keeping the position.
    Pause,
    /// Deliver again from the position.
    Resume,
    /// Remove the endpoint and its cursors.
    Delete,
}

/// The text of [`ClientError::Connect`]; an https URL that fails is most often
/// a plaintext server on that port.
fn connect_message(url: &str, reason: &str) -> String {
    if is_https(url) {
        format!("cannot connect to {url} over TLS (is the server serving TLS on that port?){reason}")
    } else {
        format!("cannot connect to {url}{reason}")
    }
}

/// Whether a URL asks for TLS.
fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// `text` followed by an error's causes (not the error itself), each after
/// `": "`. A cause already said is left out (wrappers often repeat their
/// source), and so is tonic's opaque "transport error" wrapper.
fn with_causes(mut text: String, error: &dyn std::error::Error) -> String {
    let mut source = error.source();
    // Bounded by the length of the error's source chain.
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if cause_text != "transport error" && !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The engine's kind for a stable numeric code, from the one table in
/// [`stele_wire::status::ERROR_CODES`].
fn kind_of_code(code: u32) -> Option<ErrorKind> {
    let code = proto::ErrorCode::try_from(i32::try_from(code).ok()?).ok()?;
    stele_wire::status::kind_of_code(code)
}

fn outcome_to_result(outcome: proto::BatchAppendOutcome) -> ClientResult<AppendAck> {
    match outcome.outcome {
        Some(proto::batch_append_outcome::Outcome::Result(result)) => Ok(convert::ack_from_proto(&result)),
        Some(proto::batch_append_outcome::Outcome::Error(detail)) => Err(from_outcome_detail(detail)),
        None => Err(ClientError::Protocol(
            "append outcome without result or error".into(),
        )),
    }
}

/// The URL of the server, shared by a [`Client`] and the producers and
/// consumers built from it. Changing it makes their next (re)connection go to
/// the new URL.
#[derive(Debug, Clone)]
pub struct ServerUrl(Arc<RwLock<String>>);

impl ServerUrl {
    /// A URL such as `http://127.0.0.1:7077`.
    pub fn new(url: impl Into<String>) -> ServerUrl {
        ServerUrl(Arc::new(RwLock::new(url.into())))
    }

    /// The current URL.
    pub fn get(&self) -> String {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Points every user of this handle at another server.
    pub fn set(&self, url: impl Into<String>) {
        *self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = url.into();
    }
}

/// A token or certificate principal as the server lists it (never its secret).
pub use stele_wire::proto::TokenInfo;
/// The caller's principal and grants.
pub use stele_wire::proto::WhoAmIResponse as WhoAmI;

/// How a [`Client`] authenticates and which servers it trusts.
///
/// `Debug` never prints the token or the private key.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// A bearer token (`stele_...`), sent as `authorization: Bearer <token>`
    /// with every call.
    pub token: Option<String>,
    /// PEM certificates of the certificate authorities that sign the server's
    /// certificate, instead of Mozilla's roots (`https://` only).
    pub ca_cert_pem: Option<Vec<u8>>,
    /// A PEM client certificate chain and its PEM private key, for servers
    /// that ask for one (mTLS, `https://` only).
    pub client_identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_cert_pem", &self.ca_cert_pem.as_ref().map(Vec::len))
            .field("client_identity", &self.client_identity_pem.is_some())
            .finish()
    }
}

impl ConnectOptions {
    /// Options with a bearer token.
    pub fn with_token(mut self, token: impl Into<String>) -> ConnectOptions {
        self.token = Some(token.into());
        self
    }

    /// Options that trust the CA certificates in PEM `ca_cert_pem`.
    pub fn with_ca_cert(mut self, ca_cert_pem: impl Into<Vec<u8>>) -> ConnectOptions {
        self.ca_cert_pem = Some(ca_cert_pem.into());
        self
    }

    /// Options that present a client certificate (PEM chain and PEM key).
    pub fn with_client_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> ConnectOptions {
        self.client_identity_pem = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The `authorization` value of the token.
    fn authorization(&self) -> ClientResult<Option<tonic::metadata::AsciiMetadataValue>> {
        let Some(token) = &self.token else {
            return Ok(None);
        };
        let mut value: tonic::metadata::AsciiMetadataValue = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| ClientError::InvalidToken("a token must be printable ASCII".to_string()))?;
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

/// Adds the `authorization` metadata to every request of a stub.
#[derive(Clone)]
struct Credentials(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The generated stub with [`Credentials`].
type Stub = SteleClient<tonic::service::interceptor::InterceptedService<Channel, Credentials>>;

/// An endpoint for `url`: plaintext for `http://`, TLS for `https://` with the
/// server's certificate checked against Mozilla's roots or the options' CA
/// (never plaintext).
fn endpoint(url: &str, options: &ConnectOptions) -> ClientResult<Endpoint> {
    let invalid = |error: tonic::transport::Error| ClientError::InvalidUrl {
        url: url.to_string(),
        reason: error.to_string(),
    };
    let mut endpoint = Endpoint::from_shared(url.to_string()).map_err(invalid)?;
    if is_https(url) {
        let mut tls = ClientTlsConfig::new();
        tls = match &options.ca_cert_pem {
            Some(pem) => tls.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            None => tls.with_webpki_roots(),
        };
        if let Some((cert, key)) = &options.client_identity_pem {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls).map_err(invalid)?;
    }
    Ok(endpoint
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(stele_wire::HTTP2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(stele_wire::HTTP2_CONNECTION_WINDOW_BYTES))
}

/// The settings of a new topic; `None` (and an interval of 0) takes the
/// server's default, which may differ from [`TopicOptions::default`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicSettings {
    /// Partitions, fixed for the topic's life.
    pub partitions: Option<u32>,
    /// When appends are acknowledged; `Interval { interval_ms: 0 }` takes the
    /// server's default interval.
    pub durability: Option<Durability>,
    /// How long idempotency ids are remembered.
    pub dedup_window_ms: Option<u64>,
    /// Sealed segments older than this are deleted.
    pub retention_age_ms: Option<u64>,
    /// The oldest sealed segments are deleted while a partition is larger.
    pub retention_bytes: Option<u64>,
    /// The active segment rolls at this size.
    pub segment_size_bytes: Option<u64>,
    /// The largest event payload.
    pub payload_size_max: Option<u32>,
}

impl TopicSettings {
    fn to_proto(&self) -> proto::TopicSettings {
        let (durability, sync_interval_ms) = match self.durability {
            None => (proto::Durability::Unspecified, 0),
            Some(Durability::Always) => (proto::Durability::Always, 0),
            Some(Durability::Interval { interval_ms }) => (proto::Durability::Interval, interval_ms),
            Some(Durability::None) => (proto::Durability::None, 0),
        };
        // Zero is "the server's default" on the wire.
        proto::TopicSettings {
            partitions: self.partitions.unwrap_or(0),
            retention_age_ms: self.retention_age_ms.unwrap_or(0),
            retention_bytes: self.retention_bytes.unwrap_or(0),
            dedup_window_ms: self.dedup_window_ms.unwrap_or(0),
            durability: durability as i32,
            sync_interval_ms,
            segment_size_bytes: self.segment_size_bytes.unwrap_or(0),
            payload_size_max: self.payload_size_max.unwrap_or(0),
        }
    }
}

/// A topic's settings and partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// The topic's name.
    pub topic: String,
    /// The settings in effect. Options the API does not carry keep their defaults.
    pub options: TopicOptions,
    /// Every partition, by index.
    pub partitions: Vec<PartitionDescription>,
    /// 0 when the topic's options never changed, then one more per change.
    pub revision: u64,
    /// When the options last changed, Unix ms; 0 when never.
    pub changed_ms: i64,
}

/// One partition's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDescription {
    /// The partition's index.
    pub partition: PartitionId,
    /// The oldest retained offset.
    pub earliest: Offset,
    /// One past the newest acknowledged offset.
    pub high_watermark: Offset,
    /// Bytes of segment files.
    pub size_bytes: u64,
    /// Segment files.
    pub segments_count: u32,
    /// Keys that ever had an event in the partition.
    pub keys_count: u64,
    /// Set when the server opened the partition quarantined: where it is
    /// damaged and which offsets it still serves.
    pub quarantine: Option<stele_engine::Quarantine>,
}

/// The answer to a partition read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// The events, in offset order.
    pub events: Vec<RecordedEvent>,
    /// Where to read next.
    pub next_offset: Offset,
    /// The partition's high watermark.
    pub high_watermark: Offset,
}

/// The answer to a key read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHistory {
    /// The events, in the direction asked.
    pub events: Vec<RecordedEvent>,
    /// The key's last sequence; `None` when it has no events.
    pub last_sequence: Option<u64>,
}

/// Where a subscription starts in each partition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// The oldest retained event.
    #[default]
    Earliest,
    /// Only events appended after the subscription starts.
    Latest,
    /// Explicit offsets; partitions not listed start at the earliest.
    Offsets(BTreeMap<PartitionId, Offset>),
    /// The first event at or after this time (Unix ms).
    Timestamp(i64),
    /// A named cursor's committed offsets; partitions never committed start at
    /// the earliest. An unknown cursor is `NotFound`.
    Cursor(String),
}

/// What a subscription follows and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Partitions to follow; empty means all.
    pub partitions: Vec<PartitionId>,
    /// Where each partition starts.
    pub start: StartPosition,
    /// Only events of these types (empty = all), filtered on the server.
    pub event_types: Vec<String>,
    /// Only events whose key starts with this (empty = all), filtered on the server.
    pub key_prefix: Vec<u8>,
    /// Heartbeat period while idle (0 = the server's default).
    pub heartbeat_ms: u32,
    /// Most events per batch (0 = the server's default).
    pub max_batch_events: u32,
}

/// One message of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionItem {
    /// Events of one partition in offset order, and where the partition
    /// continues (past events the filters skipped).
    Events {
        /// The partition.
        partition: PartitionId,
        /// The events that passed the filters.
        events: Vec<RecordedEvent>,
        /// Where the partition continues; commit this to resume here.
        next_offset: Offset,
    },
    /// Every followed partition was read up to its high watermark at the start.
    CaughtUp {
        /// Per partition, the next offset at the moment of catching up.
        next_offsets: BTreeMap<PartitionId, Offset>,
    },
    /// Nothing to send for a while; the high watermarks now.
    Heartbeat {
        /// Per partition, the high watermark now.
        high_watermarks: BTreeMap<PartitionId, Offset>,
    },
}

/// A raw subscription stream.
pub struct Subscription {
    url: String,
    inbound: Streaming<proto::SubscribeResponse>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next item; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<ClientResult<SubscriptionItem>> {
        match self.inbound.message().await {
            Ok(Some(message)) => Some(subscription_item(message)),
            Ok(None) => None,
            Err(status) => Some(Err(status_error(&self.url, &status))),
        }
    }
}

fn subscription_item(message: proto::SubscribeResponse) -> ClientResult<SubscriptionItem> {
    use proto::subscribe_response::Item;
    let offsets = |map: HashMap<u32, u64>| {
        map.into_iter()
            .map(|(partition, offset)| (PartitionId(partition), Offset(offset)))
            .collect()
    };
    match message.item {
        Some(Item::Events(batch)) => Ok(SubscriptionItem::Events {
            partition: PartitionId(batch.partition),
            events: batch
                .events
                .into_iter()
                .map(convert::recorded_from_proto)
                .collect(),
            next_offset: Offset(batch.next_offset),
        }),
        Some(Item::CaughtUp(caught_up)) => Ok(SubscriptionItem::CaughtUp {
            next_offsets: offsets(caught_up.next_offsets),
        }),
        Some(Item::Heartbeat(heartbeat)) => Ok(SubscriptionItem::Heartbeat {
            high_watermarks: offsets(heartbeat.high_watermarks),
        }),
        None => Err(ClientError::Protocol("subscription message without item".into())),
    }
}

/// A raw `AppendSession` stream: requests tagged with correlation ids, one
/// response per request in request order.
pub struct AppendSession {
    url: String,
    outbound: mpsc::Sender<proto::AppendSessionRequest>,
    inbound: Streaming<proto::AppendSessionResponse>,
}

impl std::fmt::Debug for AppendSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendSession")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl AppendSession {
    /// Sends one request of appends to `topic`.
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the stream has ended.
    pub async fn send(
        &self,
        correlation_id: u64,
        topic: &str,
        appends: &[AppendRequest],
    ) -> ClientResult<()> {
        self.outbound
            .send(proto::AppendSessionRequest {
                correlation_id,
                topic: topic.to_string(),
                appends: appends.iter().map(convert::append_to_proto).collect(),
            })
            .await
            .map_err(|_| ClientError::Closed("append session ended".into()))
    }

    /// The next response: its correlation id and one outcome per append.
    /// `None` when the stream ended.
    pub async fn next(&mut self) -> Option<ClientResult<(u64, Vec<ClientResult<AppendAck>>)>> {
        match self.inbound.message().await {
            Ok(Some(response)) => Some(Ok((
                response.correlation_id,
                response.outcomes.into_iter().map(outcome_to_result).collect(),
            ))),
            Ok(None) => None,
            Err(status) => Some(Err(status_error(&self.url, &status))),
        }
    }

    /// Ends the request side; the server answers what it has and ends too.
    pub fn finish(self) -> AppendSessionResponses {
        AppendSessionResponses {
            url: self.url,
            inbound: self.inbound,
        }
    }
}

/// The response side of a finished [`AppendSession`].
pub struct AppendSessionResponses {
    url: String,
    inbound: Streaming<proto::AppendSessionResponse>,
}

impl std::fmt::Debug for AppendSessionResponses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendSessionResponses")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl AppendSessionResponses {
    /// As [`AppendSession::next`].
    pub async fn next(&mut self) -> Option<ClientResult<(u64, Vec<ClientResult<AppendAck>>)>> {
        match self.inbound.message().await {
            Ok(Some(response)) => Some(Ok((
                response.correlation_id,
                response.outcomes.into_iter().map(outcome_to_result).collect(),
            ))),
            Ok(None) => None,
            Err(status) => Some(Err(status_error(&self.url, &status))),
        }
    }
}

/// A status from a call: transport failures (no response at all) become
/// [`ClientError::Transport`].
fn status_error(url: &str, status: &tonic::Status) -> ClientError {
    let has_stele_code = status.metadata().get(ERROR_CODE_METADATA).is_some() || detail_of(status).is_some();
    if !has_stele_code
        && status.code() == tonic::Code::Unavailable
        && std::error::Error::source(status).is_some()
    {
        return ClientError::Transport {
            url: url.to_string(),
            reason: with_causes(status.message().to_string(), status),
        };
    }
    ClientError::from_status(status)
}

/// A connection to a Stele server. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    url: ServerUrl,
    /// The channel and the URL it was made for; replaced when the URL changes.
    channel: Arc<Mutex<(String, Channel)>>,
    options: Arc<ConnectOptions>,
    credentials: Credentials,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("url", &self.url.get()).finish()
    }
}

impl Client {
    /// Connects to a server, e.g. `http://127.0.0.1:7077`.
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`], or [`ClientError::Connect`] when the
    /// server cannot be reached (over TLS for an `https://` URL, never falling
    /// back to plaintext).
    pub async fn connect(url: impl Into<String>) -> ClientResult<Client> {
        Client::connect_to(ServerUrl::new(url)).await
    }

    /// Connects to the server a shared [`ServerUrl`] names.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn connect_to(url: ServerUrl) -> ClientResult<Client> {
        Client::connect_with(url, ConnectOptions::default()).await
    }

    /// Connects with a token and TLS settings.
    ///
    /// # Errors
    /// As [`Client::connect`]; [`ClientError::InvalidToken`] for a token that
    /// is not printable ASCII.
    pub async fn connect_with(url: ServerUrl, options: ConnectOptions) -> ClientResult<Client> {
        let current = url.get();
        let credentials = Credentials(options.authorization()?);
        let channel =
            endpoint(&current, &options)?
                .connect()
                .await
                .map_err(|error| ClientError::Connect {
                    url: current.clone(),
                    reason: with_causes(String::new(), &error),
                })?;
        Ok(Client {
            url,
            channel: Arc::new(Mutex::new((current, channel))),
            options: Arc::new(options),
            credentials,
        })
    }

    /// The URL handle shared with producers and consumers built from this client.
    pub fn server_url(&self) -> &ServerUrl {
        &self.url
    }

    /// A stub for the current URL. The channel reconnects by itself after a
    /// broken connection; a changed URL gets a new channel.
    fn stub(&self) -> ClientResult<(String, Stub)> {
        let current = self.url.get();
        let mut guard = self
            .channel
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.0 != current {
            *guard = (current.clone(), endpoint(&current, &self.options)?.connect_lazy());
        }
        let stub = SteleClient::with_interceptor(guard.1.clone(), self.credentials.clone())
            .max_decoding_message_size(MESSAGE_SIZE_BYTES_MAX);
        Ok((current, stub))
    }

    /// Creates a topic; returns the options in effect.
    ///
    /// # Errors
    /// `AlreadyExists` when it exists; `InvalidArgument` for a bad name or options.
    pub async fn create_topic(&self, topic: &str, options: &TopicOptions) -> ClientResult<TopicOptions> {
        self.create_topic_request(topic, convert::settings_from_options(options))
            .await
    }

    /// Creates a topic with the server's defaults for every setting left `None`;
    /// returns the options in effect.
    ///
    /// # Errors
    /// As [`Client::create_topic`].
    pub async fn create_topic_with(
        &self,
        topic: &str,
        settings: &TopicSettings,
    ) -> ClientResult<TopicOptions> {
        self.create_topic_request(topic, settings.to_proto()).await
    }

    async fn create_topic_request(
        &self,
        topic: &str,
        settings: proto::TopicSettings,
    ) -> ClientResult<TopicOptions> {
        let (url, mut stub) = self.stub()?;
        let response = stub
            .create_topic(proto::CreateTopicRequest {
                topic: topic.to_string(),
                settings: Some(settings),
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        options_of(response.settings)
    }

    /// Describes a topic and its partitions.
    ///
    /// # Errors
    /// `NotFound` for an unknown topic.
    pub async fn describe_topic(&self, topic: &str) -> ClientResult<TopicDescription> {
        let (url, mut stub) = self.stub()?;
        let response = stub
            .describe_topic(proto::DescribeTopicRequest {
                topic: topic.to_string(),
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        Ok(TopicDescription {
            topic: response.topic,
            options: options_of(response.settings)?,
            partitions: response
                .partitions
                .into_iter()
                .map(|partition| PartitionDescription {
                    partition: PartitionId(partition.partition),
                    earliest: Offset(partition.earliest_offset),
                    high_watermark: Offset(partition.high_watermark),
                    size_bytes: partition.size_bytes,
                    segments_count: partition.segment_count,
                    keys_count: partition.key_count,
                    quarantine: partition
                        .quarantine
                        .map(stele_wire::convert::quarantine_from_proto),
                })
                .collect(),
            revision: response.revision,
            changed_ms: response.changed_ms,
        })
    }

    /// Changes a topic's options while it serves: each field `change` sets
    /// (retention, dedup window, durability, segment size, payload limit). The
    /// partition count cannot change (see [`stele_engine::TopicChange`]).
    /// Answers with the options before and after and the topic's revision.
    ///
    /// # Errors
    /// `NotFound` for an unknown topic; `InvalidArgument` (with the field) for
    /// a bad value or a change that sets nothing; `FailedPrecondition` for an
    /// option the server's backend cannot change.
    pub async fn update_topic(
        &self,
        topic: &str,
        change: &stele_engine::TopicChange,
    ) -> ClientResult<stele_engine::TopicUpdate> {
        let (durability, sync_interval_ms) = match change.durability {
            None => (proto::Durability::Unspecified, None),
            Some(Durability::Always) => (proto::Durability::Always, None),
            Some(Durability::Interval { interval_ms }) => (proto::Durability::Interval, Some(interval_ms)),
            Some(Durability::None) => (proto::Durability::None, None),
        };
        let (url, mut stub) = self.stub()?;
        let response = stub
            .update_topic(proto::UpdateTopicRequest {
                topic: topic.to_string(),
                retention_age_ms: change.retention_age_ms.map(|age| age.unwrap_or(0)),
                retention_bytes: change.retention_bytes.map(|bytes| bytes.unwrap_or(0)),
                dedup_window_ms: change.dedup_window_ms,
                durability: durability as i32,
                sync_interval_ms,
                segment_size_bytes: change.segment_size_bytes_max,
                payload_size_max: change.payload_size_max,
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        Ok(stele_engine::TopicUpdate {
            previous: options_of(response.previous)?,
            options: options_of(response.settings)?,
            revision: response.revision,
            changed_ms: response.changed_ms,
        })
    }

    /// The names of all topics.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn list_topics(&self) -> ClientResult<Vec<String>> {
        let (url, mut stub) = self.stub()?;
        Ok(stub
            .list_topics(proto::ListTopicsRequest {})
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner()
            .topics)
    }

    /// Deletes a topic and all its data.
    ///
    /// # Errors
    /// `NotFound` for an unknown topic.
    pub async fn delete_topic(&self, topic: &str) -> ClientResult<()> {
        let (url, mut stub) = self.stub()?;
        stub.delete_topic(proto::DeleteTopicRequest {
            topic: topic.to_string(),
        })
        .await
        .map_err(|status| status_error(&url, &status))?;
        Ok(())
    }

    /// Appends events to one key, atomically, if its expected sequence matches.
    ///
    /// # Errors
    /// `FailedPrecondition` with [`ErrorDetails::actual_sequence`] for a wrong
    /// expected sequence; `InvalidArgument` for bad input; see the proto.
    pub async fn append(&self, topic: &str, request: &AppendRequest) -> ClientResult<AppendAck> {
        let (url, mut stub) = self.stub()?;
        let append = convert::append_to_proto(request);
        let response = stub
            .append(proto::AppendRequest {
                topic: topic.to_string(),
                key: append.key,
                expected: append.expected,
                events: append.events,
                producer: append.producer,
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        response
            .result
            .map(|result| convert::ack_from_proto(&result))
            .ok_or_else(|| ClientError::Protocol("append response without result".into()))
    }

    /// Many appends (any keys) in one call, each atomic with its own result.
    ///
    /// # Errors
    /// The outer error is for the call as a whole (unknown topic, transport);
    /// each append has its own result.
    pub async fn append_batch(
        &self,
        topic: &str,
        requests: &[AppendRequest],
    ) -> ClientResult<Vec<ClientResult<AppendAck>>> {
        let (url, mut stub) = self.stub()?;
        let response = stub
            .append_batch(proto::AppendBatchRequest {
                topic: topic.to_string(),
                appends: requests.iter().map(convert::append_to_proto).collect(),
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        if response.outcomes.len() != requests.len() {
            return Err(ClientError::Protocol(format!(
                "{} outcomes for {} appends",
                response.outcomes.len(),
                requests.len()
            )));
        }
        Ok(response.outcomes.into_iter().map(outcome_to_result).collect())
    }

    /// Opens a raw `AppendSession` stream.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn append_session(&self) -> ClientResult<AppendSession> {
        let (url, mut stub) = self.stub()?;
        let (outbound, receiver) = mpsc::channel(64);
        let inbound = stub
            .append_session(ReceiverStream::new(receiver))
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        Ok(AppendSession {
            url,
            outbound,
            inbound,
        })
    }

    /// Registers an idempotent producer name, or opens it again with a new
    /// epoch, fencing the older epoch.
    ///
    /// # Errors
    /// `NotFound` for an unknown topic (unless the server creates topics).
    pub async fn open_producer(&self, topic: &str, name: &str) -> ClientResult<(ProducerId, Epoch)> {
        let (url, mut stub) = self.stub()?;
        let response = stub
            .open_producer(proto::OpenProducerRequest {
                topic: topic.to_string(),
                name: name.to_string(),
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        Ok((ProducerId(response.producer_id), Epoch(response.epoch)))
    }

    /// Reads a partition from an offset: at most `max_events` events (0 = the
    /// server's default) and about `max_bytes` bytes (0 = the default).
    ///
    /// # Errors
    /// `OutOfRange` (with the range in the details) below the earliest offset
    /// or past the high watermark.
    pub async fn read(
        &self,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        max_events: u32,
        max_bytes: u64,
    ) -> ClientResult<ReadResult> {
        let (url, mut stub) = self.stub()?;
        let response = stub
            .read(proto::ReadRequest {
                topic: topic.to_string(),
                partition: partition.0,
                from_offset: from.0,
                max_events,
                max_bytes,
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        Ok(ReadResult {
            events: response
                .events
                .into_iter()
                .map(convert::recorded_from_proto)
                .collect(),
            next_offset: Offset(response.next_offset),
            high_watermark: Offset(response.high_watermark),
        })
    }

    /// Reads a key's history from a sequence (forwards from 0 or backwards from
    /// the newest when `None`).
    ///
    /// # Errors
    /// `NotFound` for an unknown topic.
    pub async fn read_key(
        &self,
        topic: &str,
        key: &[u8],
        from_sequence: Option<u64>,
        direction: Direction,
        max_events: u32,
    ) -> ClientResult<KeyHistory> {
        let (url, mut stub) = self.stub()?;
        let response = stub
            .read_key(proto::ReadKeyRequest {
                topic: topic.to_string(),
                key: key.to_vec(),
                from_sequence,
                direction: match direction {
                    Direction::Forwards => proto::ReadDirection::Forwards,
                    Direction::Backwards => proto::ReadDirection::Backwards,
                } as i32,
                max_events,
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        Ok(KeyHistory {
            events: response
                .events
                .into_iter()
                .map(convert::recorded_from_proto)
                .collect(),
            last_sequence: response.last_sequence,
        })
    }

    /// Subscribes: catch up from the start position, then follow live.
    ///
    /// # Errors
    /// `NotFound` for an unknown topic or cursor; `OutOfRange` for a start
    /// offset outside a partition's range.
    pub async fn subscribe(&self, topic: &str, options: &SubscribeOptions) -> ClientResult<Subscription> {
        use proto::start_position::Position;
        let (url, mut stub) = self.stub()?;
        let position = match &options.start {
            StartPosition::Earliest => Position::Earliest(proto::Empty {}),
            StartPosition::Latest => Position::Latest(proto::Empty {}),
            StartPosition::Offsets(offsets) => Position::Offsets(proto::PartitionOffsets {
                offsets: offsets
                    .iter()
                    .map(|(partition, offset)| (partition.0, offset.0))
                    .collect(),
            }),
            StartPosition::Timestamp(timestamp_ms) => Position::TimestampMs(*timestamp_ms),
            StartPosition::Cursor(name) => Position::Cursor(name.clone()),
        };
        let inbound = stub
            .subscribe(proto::SubscribeRequest {
                topic: topic.to_string(),
                partitions: options.partitions.iter().map(|partition| partition.0).collect(),
                start: Some(proto::StartPosition {
                    position: Some(position),
                }),
                event_types: options.event_types.clone(),
                key_prefix: options.key_prefix.clone(),
                heartbeat_ms: options.heartbeat_ms,
                max_batch_events: options.max_batch_events,
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        Ok(Subscription { url, inbound })
    }

    /// Commits a cursor's next offsets for the listed partitions.
    ///
    /// # Errors
    /// `FailedPrecondition` for a move backwards without `allow_backwards`, or
    /// past the high watermark.
    pub async fn commit_cursor(
        &self,
        topic: &str,
        cursor: &str,
        offsets: &[(PartitionId, Offset)],
        allow_backwards: bool,
    ) -> ClientResult<()> {
        let (url, mut stub) = self.stub()?;
        stub.commit_cursor(proto::CommitCursorRequest {
            topic: topic.to_string(),
            cursor: cursor.to_string(),
            offsets: offsets
                .iter()
                .map(|(partition, offset)| (partition.0, offset.0))
                .collect(),
            allow_backwards,
        })
        .await
        .map_err(|status| status_error(&url, &status))?;
        Ok(())
    }

    /// A cursor's committed offsets and lag, per partition.
    ///
    /// # Errors
    /// `NotFound` for an unknown topic or cursor.
    pub async fn get_cursor(&self, topic: &str, cursor: &str) -> ClientResult<Vec<CursorPosition>> {
        let (url, mut stub) = self.stub()?;
        let response = stub
            .get_cursor(proto::GetCursorRequest {
                topic: topic.to_string(),
                cursor: cursor.to_string(),
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        let cursor = response
            .cursor
            .ok_or_else(|| ClientError::Protocol("cursor response without cursor".into()))?;
        Ok(cursor_positions(cursor))
    }

    /// Every cursor of a topic, by name.
    ///
    /// # Errors
    /// `NotFound` for an unknown topic.
    pub async fn list_cursors(&self, topic: &str) -> ClientResult<Vec<(String, Vec<CursorPosition>)>> {
        let (url, mut stub) = self.stub()?;
        let response = stub
            .list_cursors(proto::ListCursorsRequest {
                topic: topic.to_string(),
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        Ok(response
            .cursors
            .into_iter()
            .map(|cursor| (cursor.name.clone(), cursor_positions(cursor)))
            .collect())
    }

    /// Deletes a cursor.
    ///
    /// # Errors
    /// `NotFound` for an unknown topic or cursor.
    pub async fn delete_cursor(&self, topic: &str, cursor: &str) -> ClientResult<()> {
        let (url, mut stub) = self.stub()?;
        stub.delete_cursor(proto::DeleteCursorRequest {
            topic: topic.to_string(),
            cursor: cursor.to_string(),
        })
        .await
        .map_err(|status| status_error(&url, &status))?;
        Ok(())
    }

    /// Registers a webhook endpoint; returns it and its secret (`whsec_...`),
    /// which is shown only here.
    ///
    /// # Errors
    /// As the CreateWebhook RPC: invalid settings, an existing name, transport errors.
    pub async fn create_webhook(
        &self,
        request: &stele_wire::webhook::NewWebhook,
    ) -> ClientResult<(stele_wire::webhook::WebhookView, String)> {
        let (url, mut stub) = self.stub()?;
        let response = stub
            .create_webhook(convert::new_webhook_to_proto(request))
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        let webhook = response
            .webhook
            .ok_or_else(|| ClientError::Protocol("CreateWebhook returned no webhook".to_string()))?;
        Ok((convert::webhook_from_proto(webhook), response.secret))
    }

    /// Every webhook endpoint with its state, circuit breaker, cursor and lag.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn list_webhooks(&self) -> ClientResult<Vec<stele_wire::webhook::WebhookView>> {
        let (url, mut stub) = self.stub()?;
        let response = stub
            .list_webhooks(proto::ListWebhooksRequest {})
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        Ok(response
            .webhooks
            .into_iter()
            .map(convert::webhook_from_proto)
            .collect())
    }

    /// Pauses (`pause` true), resumes or deletes (`delete` true) a webhook endpoint.
    ///
    /// # Errors
    /// [`ErrorKind::WebhookNotFound`]; transport errors.
    pub async fn change_webhook(&self, name: &str, change: WebhookChange) -> ClientResult<()> {
        let (url, mut stub) = self.stub()?;
        let name = name.to_string();
        let result = match change {
            WebhookChange::Pause => stub
                .pause_webhook(proto::PauseWebhookRequest { name })
                .await
                .map(|_| ()),
            WebhookChange::Resume => stub
                .resume_webhook(proto::ResumeWebhookRequest { name })
                .await
                .map(|_| ()),
            WebhookChange::Delete => stub
                .delete_webhook(proto::DeleteWebhookRequest { name })
                .await
                .map(|_| ()),
        };
        result.map_err(|status| status_error(&url, &status))
    }

    /// A webhook endpoint's dead letters not yet redriven, at most `count_max` (0 = 1000).
    ///
    /// # Errors
    /// [`ErrorKind::WebhookNotFound`]; transport errors.
    pub async fn dead_letters(
        &self,
        name: &str,
        count_max: u32,
    ) -> ClientResult<Vec<stele_wire::webhook::DeadLetterView>> {
        let (url, mut stub) = self.stub()?;
        let response = stub
            .list_dead_letters(proto::ListDeadLettersRequest {
                name: name.to_string(),
                max_events: count_max,
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        Ok(response
            .dead_letters
            .into_iter()
            .map(convert::dead_letter_from_proto)
            .collect())
    }

    /// Delivers a webhook endpoint's dead letters again; returns how many.
    ///
    /// # Errors
    /// [`ErrorKind::WebhookNotFound`]; transport errors.
    pub async fn redrive_dead_letters(&self, name: &str) -> ClientResult<u64> {
        let (url, mut stub) = self.stub()?;
        let response = stub
            .redrive_dead_letters(proto::RedriveDeadLettersRequest {
                name: name.to_string(),
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        Ok(response.redriven_count)
    }

    /// Issues a token named `name` with `grants` (`read:orders.*`, ...) that
    /// expires after `expires_in` (never when `None`); returns it and its
    /// secret, shown only now.
    ///
    /// # Errors
    /// `PermissionDenied` without the grant `tokens:*`; `InvalidArgument` for a
    /// bad name or grant, or a grant the caller does not hold itself.
    pub async fn create_token(
        &self,
        name: &str,
        grants: &[String],
        expires_in: Option<Duration>,
    ) -> ClientResult<(TokenInfo, String)> {
        let response = self
            .create_token_request(proto::CreateTokenRequest {
                name: name.to_string(),
                grants: grants.to_vec(),
                expires_in_ms: expires_in.map_or(0, |lifetime| lifetime.as_millis() as u64),
                certificate_subject: String::new(),
            })
            .await?;
        let token = response
            .token
            .ok_or_else(|| ClientError::Protocol("CreateToken answered without the token".into()))?;
        Ok((token, response.secret))
    }

    /// Registers the client certificates whose subject is `subject` (mTLS) as
    /// a principal with `grants`.
    ///
    /// # Errors
    /// As [`Client::create_token`].
    pub async fn register_certificate(
        &self,
        name: &str,
        subject: &str,
        grants: &[String],
        expires_in: Option<Duration>,
    ) -> ClientResult<TokenInfo> {
        self.create_token_request(proto::CreateTokenRequest {
            name: name.to_string(),
            grants: grants.to_vec(),
            expires_in_ms: expires_in.map_or(0, |lifetime| lifetime.as_millis() as u64),
            certificate_subject: subject.to_string(),
        })
        .await?
        .token
        .ok_or_else(|| ClientError::Protocol("CreateToken answered without the token".into()))
    }

    async fn create_token_request(
        &self,
        request: proto::CreateTokenRequest,
    ) -> ClientResult<proto::CreateTokenResponse> {
        let (url, mut stub) = self.stub()?;
        Ok(stub
            .create_token(request)
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner())
    }

    /// Every token and certificate principal, without secrets.
    ///
    /// # Errors
    /// `PermissionDenied` without the grant `tokens:*`.
    pub async fn list_tokens(&self) -> ClientResult<Vec<TokenInfo>> {
        let (url, mut stub) = self.stub()?;
        Ok(stub
            .list_tokens(proto::ListTokensRequest {})
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner()
            .tokens)
    }

    /// Revokes a token by id; its open streams end within a second.
    ///
    /// # Errors
    /// `NotFound` for an unknown id; `PermissionDenied` without `tokens:*`.
    pub async fn revoke_token(&self, id: &str) -> ClientResult<TokenInfo> {
        let (url, mut stub) = self.stub()?;
        stub.revoke_token(proto::RevokeTokenRequest { id: id.to_string() })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner()
            .token
            .ok_or_else(|| ClientError::Protocol("RevokeToken answered without the token".into()))
    }

    /// The caller's principal and grants.
    ///
    /// # Errors
    /// `Unauthenticated` without a valid credential.
    pub async fn who_am_i(&self) -> ClientResult<WhoAmI> {
        let (url, mut stub) = self.stub()?;
        Ok(stub
            .who_am_i(proto::WhoAmIRequest {})
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner())
    }

    /// Follows a topic from `options.start` through lost connections: see
    /// [`Follower`]. Explicit offsets, the latest event (resolved to offsets
    /// now) and a timestamp start as the raw subscription does; a cursor that
    /// was never committed starts at the earliest event, and after a lost
    /// connection partitions without a position resume from the cursor's
    /// committed offsets.
    ///
    /// # Errors
    /// Errors of the first subscription (and of `DescribeTopic` for `Latest`,
    /// or for a timestamp without listed partitions).
    pub async fn follow(&self, topic: &str, options: SubscribeOptions) -> ClientResult<Follower> {
        let mut positions = BTreeMap::new();
        let mut followed = options.partitions.clone();
        let needs_partitions = matches!(options.start, StartPosition::Latest | StartPosition::Timestamp(_));
        let mut high_watermarks = BTreeMap::new();
        if needs_partitions {
            let description = self.describe_topic(topic).await?;
            high_watermarks = description
                .partitions
                .iter()
                .map(|partition| (partition.partition, partition.high_watermark))
                .collect();
            if followed.is_empty() {
                followed = high_watermarks.keys().copied().collect();
            }
        }
        let fallback = match &options.start {
            StartPosition::Earliest => Fallback::Earliest,
            StartPosition::Latest => {
                positions.extend(
                    high_watermarks
                        .iter()
                        .filter(|(partition, _)| followed.contains(partition))
                        .map(|(partition, offset)| (*partition, *offset)),
                );
                Fallback::Earliest
            }
            StartPosition::Offsets(offsets) => {
                positions.extend(offsets.iter().map(|(partition, offset)| (*partition, *offset)));
                Fallback::Earliest
            }
            StartPosition::Timestamp(timestamp_ms) => Fallback::Timestamp(*timestamp_ms),
            StartPosition::Cursor(cursor) => Fallback::Cursor(cursor.clone()),
        };
        let mut follower = Follower {
            client: self.clone(),
            topic: topic.to_string(),
            options,
            followed,
            fallback,
            positions,
            subscriptions: [None, None],
            catching_up: 0,
            buffered: VecDeque::new(),
            lost: false,
        };
        follower.subscribe().await?;
        Ok(follower)
    }

    /// A builder for an idempotent, pipelining [`Producer`].
    pub fn producer(&self, topic: &str, name: &str) -> ProducerBuilder {
        ProducerBuilder {
            client: self.clone(),
            topic: topic.to_string(),
            name: name.to_string(),
            options: ProducerOptions::default(),
        }
    }

    /// A builder for a [`Consumer`] of a named cursor.
    pub fn consumer(&self, topic: &str, cursor: &str) -> ConsumerBuilder {
        ConsumerBuilder {
            client: self.clone(),
            topic: topic.to_string(),
            cursor: cursor.to_string(),
            options: ConsumerOptions::default(),
        }
    }
}

fn options_of(settings: Option<proto::TopicSettings>) -> ClientResult<TopicOptions> {
    convert::options_from_settings(settings, &TopicOptions::default()).map_err(ClientError::Protocol)
}

fn cursor_positions(cursor: proto::Cursor) -> Vec<CursorPosition> {
    cursor
        .partitions
        .into_iter()
        .map(|partition| CursorPosition {
            partition: PartitionId(partition.partition),
            committed: partition.committed_offset.map(Offset),
            lag: partition.lag,
        })
        .collect()
}

/// How a retry waits: exponential backoff with full jitter, bounded attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per append (and per reconnection) before giving up; at least 1.
    pub attempts_max: u32,
    /// The first backoff.
    pub backoff_initial: Duration,
    /// The largest backoff.
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts_max: 10,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (1-based): a random duration up
    /// to `backoff_initial * 2^(attempt-1)`, capped at `backoff_max`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let ceiling = self
            .backoff_initial
            .saturating_mul(1 << exponent)
            .min(self.backoff_max);
        let random = RandomState::new().build_hasher().finish();
        let nanos = ceiling.as_nanos().max(1) as u64;
        // Half fixed, half random: waits grow, and concurrent clients spread out.
        Duration::from_nanos(nanos / 2 + random % (nanos / 2 + 1))
    }
}

/// A producer's tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerOptions {
    /// Most appends in one session request.
    pub batch_appends_max: usize,
    /// About the most payload bytes in one session request.
    pub batch_size_bytes_max: usize,
    /// How long an append may wait for others to join its request.
    pub linger: Duration,
    /// Most requests in flight on the session.
    pub in_flight_requests_max: usize,
    /// Appends accepted by `send` but not yet in a request.
    pub queue_appends_max: usize,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
}

impl Default for ProducerOptions {
    fn default() -> ProducerOptions {
        ProducerOptions {
            batch_appends_max: 500,
            batch_size_bytes_max: 4 << 20,
            linger: Duration::ZERO,
            in_flight_requests_max: 64,
            queue_appends_max: 10_000,
            retry: RetryPolicy::default(),
        }
    }
}

/// Builds a [`Producer`].
pub struct ProducerBuilder {
    client: Client,
    topic: String,
    name: String,
    options: ProducerOptions,
}

impl ProducerBuilder {
    /// Replaces all options.
    pub fn options(mut self, options: ProducerOptions) -> ProducerBuilder {
        self.options = options;
        self
    }

    /// Most appends per request.
    pub fn batch_appends_max(mut self, count: usize) -> ProducerBuilder {
        self.options.batch_appends_max = count.max(1);
        self
    }

    /// How long appends wait for others to join their request.
    pub fn linger(mut self, linger: Duration) -> ProducerBuilder {
        self.options.linger = linger;
        self
    }

    /// The retry policy for transient failures.
    pub fn retry(mut self, retry: RetryPolicy) -> ProducerBuilder {
        self.options.retry = retry;
        self
    }

    /// Opens the producer (a new epoch, fencing older instances of the name),
    /// learns the topic's partition count, and starts the session task.
    ///
    /// # Errors
    /// Errors of `OpenProducer` and `DescribeTopic`.
    pub async fn build(self) -> ClientResult<Producer> {
        let (id, epoch) = self.client.open_producer(&self.topic, &self.name).await?;
        let description = self.client.describe_topic(&self.topic).await?;
        let partitions_count = description.partitions.len() as u32;
        if partitions_count == 0 {
            return Err(ClientError::Protocol("topic without partitions".into()));
        }
        let (commands, receiver) = mpsc::channel(self.options.queue_appends_max.max(1));
        let driver = Driver {
            client: self.client,
            topic: self.topic,
            id,
            epoch,
            options: self.options,
            commands: receiver,
            accepting: true,
            partitions: (0..partitions_count).map(|_| PartitionQueue::default()).collect(),
            in_flight: VecDeque::new(),
            session: None,
            next_correlation_id: 0,
            reconnect_attempts: 0,
            wake_at: None,
            flushes: Vec::new(),
            linger_deadline: None,
            stopped: StopReason::default(),
        };
        let stopped = driver.stopped.clone();
        let task = tokio::spawn(driver.run());
        Ok(Producer {
            commands,
            id,
            epoch,
            partitions_count,
            task: Some(task),
            stopped,
        })
    }
}

type Reply = oneshot::Sender<ClientResult<AppendAck>>;

enum Command {
    Append(AppendRequest, Reply),
    Flush(oneshot::Sender<()>),
}

/// An idempotent, pipelining writer to one topic.
///
/// Appends are stamped (producer id, epoch, per-partition sequence), batched
/// and pipelined over one `AppendSession` stream. Transient failures (the
/// server or connection unavailable, disk full) are retried with backoff and
/// the original stamps, in the original order per partition, so the server
/// recognises a retried append it already stored and answers it as a
/// duplicate (`AppendAck::duplicate`) with the original position: no append
/// is stored twice. At most [`PRODUCER_IN_FLIGHT_PER_PARTITION_MAX`] appends
/// per partition are unacknowledged, because the server remembers only that
/// many per producer and partition.
///
/// A fenced producer (another instance opened the same name) fails every
/// pending and later append with `Aborted`, for good; so does exhausting the
/// retries, after which the producer is closed and a new one must be built.
/// Appends rejected for their content (wrong expected sequence, bad input)
/// fail alone; the appends after them keep their order.
pub struct Producer {
    commands: mpsc::Sender<Command>,
    id: ProducerId,
    epoch: Epoch,
    partitions_count: u32,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Why the session task stopped, once it has.
    stopped: StopReason,
}

/// Why a producer's session task stopped; shared with the producer handle.
#[derive(Clone, Default)]
struct StopReason(Arc<Mutex<Option<String>>>);

impl StopReason {
    fn set(&self, reason: String) {
        let mut guard = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.get_or_insert(reason);
    }

    fn error(&self) -> ClientError {
        let guard = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        ClientError::Closed(format!(
            "producer stopped: {}",
            guard.as_deref().unwrap_or("closed")
        ))
    }
}

impl Producer {
    /// The producer's id.
    pub fn id(&self) -> ProducerId {
        self.id
    }

    /// The producer's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The partition a key goes to (the server's hash).
    pub fn partition_for_key(&self, key: &[u8]) -> PartitionId {
        partition_for_key(key, self.partitions_count)
    }

    /// Queues an append and resolves with its ack. The request's own producer
    /// stamp, if any, is replaced by this producer's.
    ///
    /// Appends are queued in the order of `send` calls while the queue has room
    /// (`queue_appends_max`); when it is full, in the order the returned futures
    /// are first polled. Appends to one partition are stored in queue order.
    pub fn send(
        &self,
        request: AppendRequest,
    ) -> impl Future<Output = ClientResult<AppendAck>> + Send + 'static {
        let (reply, ack) = oneshot::channel();
        let queued = match self.commands.try_send(Command::Append(request, reply)) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(command)) => Some((self.commands.clone(), command)),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return acknowledged(Err(self.stopped.error()), None, ack, self.stopped.clone());
            }
        };
        acknowledged(Ok(()), queued, ack, self.stopped.clone())
    }

    /// Resolves once every append queued so far is acknowledged or failed.
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the producer has stopped.
    pub async fn flush(&self) -> ClientResult<()> {
        let (sender, done) = oneshot::channel();
        self.commands
            .send(Command::Flush(sender))
            .await
            .map_err(|_| self.stopped.error())?;
        done.await.map_err(|_| self.stopped.error())
    }

    /// Flushes, then stops the session task.
    ///
    /// # Errors
    /// As [`Producer::flush`].
    pub async fn close(mut self) -> ClientResult<()> {
        let flushed = self.flush().await;
        let (commands, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.commands, commands));
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        flushed
    }
}

/// Waits for room in the queue (only when it was full at `send`), then for the ack.
async fn acknowledged(
    queued: ClientResult<()>,
    waiting: Option<(mpsc::Sender<Command>, Command)>,
    ack: oneshot::Receiver<ClientResult<AppendAck>>,
    stopped: StopReason,
) -> ClientResult<AppendAck> {
    queued?;
    if let Some((commands, command)) = waiting {
        commands.send(command).await.map_err(|_| stopped.error())?;
    }
    ack.await.map_err(|_| stopped.error())?
}

/// One append on its way: its stamp is set when it is first put in a request
/// and kept across retries.
struct Pending {
    request: AppendRequest,
    partition: usize,
    reply: Reply,
    attempts: u32,
}

impl Pending {
    fn size(&self) -> usize {
        self.request.key.len()
            + self
                .request
                .events
                .iter()
                .map(|event| event.payload.len() + event.event_type.len() + 32)
                .sum::<usize>()
    }
}

#[derive(Default)]
struct PartitionQueue {
    /// The sequence the next fresh stamp gets.
    next_sequence: u64,
    /// Waiting to be put in a request, in order.
    queued: VecDeque<Pending>,
    /// Stamped appends sent but not answered.
    in_flight: usize,
    /// After an append of this partition failed at this sequence: nothing is
    /// sent until every in-flight append is answered (they fail out of order),
    /// then the held appends are stamped again from here, in order.
    rewind_to: Option<u64>,
    held: Vec<Pending>,
    /// Not before this instant (a transient per-append failure's backoff).
    ready_at: Option<Instant>,
}

struct Session {
    url: String,
    outbound: mpsc::Sender<proto::AppendSessionRequest>,
    inbound: Streaming<proto::AppendSessionResponse>,
}

struct InFlight {
    correlation_id: u64,
    appends: Vec<Pending>,
}

struct Driver {
    client: Client,
    topic: String,
    id: ProducerId,
    epoch: Epoch,
    options: ProducerOptions,
    commands: mpsc::Receiver<Command>,
    accepting: bool,
    partitions: Vec<PartitionQueue>,
    /// Sent requests, oldest first; answers come in this order.
    in_flight: VecDeque<InFlight>,
    session: Option<Session>,
    next_correlation_id: u64,
    reconnect_attempts: u32,
    /// Reconnect not before this.
    wake_at: Option<Instant>,
    flushes: Vec<oneshot::Sender<()>>,
    /// Send a partial request once this passes.
    linger_deadline: Option<Instant>,
    stopped: StopReason,
}

enum Wake {
    Command(Option<Command>),
    Response(Result<Option<proto::AppendSessionResponse>, tonic::Status>),
    Timer,
}

impl Driver {
    async fn run(mut self) {
        loop {
            if !self.accepting && self.outstanding() == 0 {
                self.finish_flushes();
                return;
            }
            if self.session.is_none()
                && self.outstanding() > 0
                && self.wake_at.is_none_or(|at| at <= Instant::now())
                && let Err(error) = self.reconnect().await
            {
                self.fail_all(&error);
                return;
            }
            if let Err(error) = self.dispatch().await {
                self.fail_all(&error);
                return;
            }
            self.finish_flushes();
            let timer = [self.wake_at, self.linger_deadline]
                .into_iter()
                .chain(self.partitions.iter().map(|partition| partition.ready_at))
                .flatten()
                .min();
            let wake = {
                let session = self.session.as_mut();
                tokio::select! {
                    command = self.commands.recv(), if self.accepting => Wake::Command(command),
                    response = next_response(session) => Wake::Response(response),
                    _ = sleep_until(timer) => Wake::Timer,
                }
            };
            let outcome = match wake {
                Wake::Command(Some(command)) => {
                    self.accept(command);
                    // Take everything already queued, so it can share requests.
                    while let Ok(command) = self.commands.try_recv() {
                        self.accept(command);
                    }
                    Ok(())
                }
                Wake::Command(None) => {
                    self.accepting = false;
                    Ok(())
                }
                Wake::Response(Ok(Some(response))) => self.answered(response),
                Wake::Response(Ok(None)) => {
                    // The server ended the session (shutting down) with requests
                    // unanswered: their fate is unknown, so they are resent.
                    self.broken(ClientError::Closed("append session ended by the server".into()))
                }
                Wake::Response(Err(status)) => {
                    let url = self
                        .session
                        .as_ref()
                        .map(|session| session.url.clone())
                        .unwrap_or_default();
                    self.broken(status_error(&url, &status))
                }
                Wake::Timer => {
                    let now = Instant::now();
                    for partition in &mut self.partitions {
                        if partition.ready_at.is_some_and(|at| at <= now) {
                            partition.ready_at = None;
                        }
                    }
                    Ok(())
                }
            };
            if let Err(error) = outcome {
                self.fail_all(&error);
                return;
            }
        }
    }

    /// Appends accepted and not yet answered.
    fn outstanding(&self) -> usize {
        self.partitions
            .iter()
            .map(|partition| partition.queued.len() + partition.held.len())
            .sum::<usize>()
            + self
                .in_flight
                .iter()
                .map(|request| request.appends.len())
                .sum::<usize>()
    }

    fn finish_flushes(&mut self) {
        if self.outstanding() == 0 {
            for flush in self.flushes.drain(..) {
                let _ = flush.send(());
            }
        }
    }

    fn accept(&mut self, command: Command) {
        match command {
            Command::Append(request, reply) => {
                let partition = partition_for_key(&request.key, self.partitions.len() as u32).0 as usize;
                if self.linger_deadline.is_none() {
                    self.linger_deadline = Some(Instant::now() + self.options.linger);
                }
                self.partitions[partition].queued.push_back(Pending {
                    request,
                    partition,
                    reply,
                    attempts: 0,
                });
            }
            Command::Flush(done) => {
                self.flushes.push(done);
                // A flush sends partial requests now.
                self.linger_deadline = Some(Instant::now());
            }
        }
    }

    /// Puts queued appends into requests while the limits allow.
    async fn dispatch(&mut self) -> ClientResult<()> {
        if self.session.is_none() {
            return Ok(());
        }
        let now = Instant::now();
        loop {
            if self.in_flight.len() >= self.options.in_flight_requests_max {
                return Ok(());
            }
            let sendable_count: usize = self
                .partitions
                .iter()
                .filter(|partition| sendable(partition, now))
                .map(|partition| {
                    partition
                        .queued
                        .len()
                        .min(PRODUCER_IN_FLIGHT_PER_PARTITION_MAX - partition.in_flight)
                })
                .sum();
            if sendable_count == 0 {
                return Ok(());
            }
            let lingering = self.linger_deadline.is_some_and(|deadline| deadline > now);
            if lingering && sendable_count < self.options.batch_appends_max {
                return Ok(());
            }
            let mut appends = Vec::new();
            let mut size = 0usize;
            'fill: for partition in &mut self.partitions {
                while sendable(partition, now) && partition.in_flight < PRODUCER_IN_FLIGHT_PER_PARTITION_MAX {
                    if appends.len() >= self.options.batch_appends_max
                        || (size >= self.options.batch_size_bytes_max && !appends.is_empty())
                    {
                        break 'fill;
                    }
                    let Some(mut pending) = partition.queued.pop_front() else {
                        break;
                    };
                    if pending.request.producer.is_none() {
                        pending.request.producer = Some(ProducerStamp {
                            producer: self.id,
                            epoch: self.epoch,
                            sequence: Sequence(partition.next_sequence),
                        });
                        partition.next_sequence += 1;
                    }
                    partition.in_flight += 1;
                    size += pending.size();
                    appends.push(pending);
                }
            }
            if self
                .partitions
                .iter()
                .all(|partition| partition.queued.is_empty())
            {
                self.linger_deadline = None;
            }
            let correlation_id = self.next_correlation_id;
            self.next_correlation_id += 1;
            let request = InFlight {
                correlation_id,
                appends,
            };
            let sent = self.send_request(&request).await;
            self.in_flight.push_back(request);
            if let Err(error) = sent {
                return self.broken(error);
            }
        }
    }

    async fn send_request(&mut self, request: &InFlight) -> ClientResult<()> {
        let Some(session) = self.session.as_ref() else {
            return Ok(());
        };
        session
            .outbound
            .send(proto::AppendSessionRequest {
                correlation_id: request.correlation_id,
                topic: self.topic.clone(),
                appends: request
                    .appends
                    .iter()
                    .map(|pending| convert::append_to_proto(&pending.request))
                    .collect(),
            })
            .await
            .map_err(|_| ClientError::Transport {
                url: session.url.clone(),
                reason: "append session closed".into(),
            })
    }

    /// Opens a session, waiting between attempts, and resends every request
    /// in flight in its original order with its original stamps.
    async fn reconnect(&mut self) -> ClientResult<()> {
        loop {
            match self.open_session().await {
                Ok(session) => {
                    self.session = Some(session);
                    self.wake_at = None;
                    let requests: Vec<InFlight> = self.in_flight.drain(..).collect();
                    for mut request in requests {
                        request.correlation_id = self.next_correlation_id;
                        self.next_correlation_id += 1;
                        let sent = self.send_request(&request).await;
                        self.in_flight.push_back(request);
                        if let Err(error) = sent {
                            return self.broken(error);
                        }
                    }
                    return Ok(());
                }
                Err(error) if error.is_transient() => {
                    self.reconnect_attempts += 1;
                    if self.reconnect_attempts >= self.options.retry.attempts_max {
                        return Err(error);
                    }
                    tokio::time::sleep(self.options.retry.backoff(self.reconnect_attempts)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn open_session(&self) -> ClientResult<Session> {
        let (url, mut stub) = self.client.stub()?;
        let (outbound, receiver) = mpsc::channel(self.options.in_flight_requests_max + 1);
        let inbound = stub
            .append_session(ReceiverStream::new(receiver))
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner();
        Ok(Session {
            url,
            outbound,
            inbound,
        })
    }

    /// The session failed as a whole. Transient: drop it and reconnect later
    /// (requests in flight are resent). Permanent: an error for everything.
    fn broken(&mut self, error: ClientError) -> ClientResult<()> {
        self.session = None;
        let transient = error.is_transient() || matches!(error, ClientError::Closed(_));
        if !transient {
            return Err(error);
        }
        self.reconnect_attempts += 1;
        if self.reconnect_attempts >= self.options.retry.attempts_max {
            return Err(error);
        }
        self.wake_at = Some(Instant::now() + self.options.retry.backoff(self.reconnect_attempts));
        Ok(())
    }

    fn answered(&mut self, response: proto::AppendSessionResponse) -> ClientResult<()> {
        let Some(request) = self.in_flight.pop_front() else {
            return Err(ClientError::Protocol(format!(
                "response {} with nothing in flight",
                response.correlation_id
            )));
        };
        if request.correlation_id != response.correlation_id
            || request.appends.len() != response.outcomes.len()
        {
            let (correlation_id, count) = (request.correlation_id, request.appends.len());
            // Put it back so that its appends get the error.
            self.in_flight.push_front(request);
            return Err(ClientError::Protocol(format!(
                "response {} with {} outcomes for request {} of {} appends",
                response.correlation_id,
                response.outcomes.len(),
                correlation_id,
                count
            )));
        }
        self.reconnect_attempts = 0;
        let mut answers = request.appends.into_iter().zip(response.outcomes);
        while let Some((mut pending, outcome)) = answers.next() {
            let index = pending.partition;
            let partition = &mut self.partitions[index];
            partition.in_flight -= 1;
            let sequence = pending.request.producer.map_or(0, |stamp| stamp.sequence.0);
            match outcome_to_result(outcome) {
                Ok(ack) => {
                    let _ = pending.reply.send(Ok(ack));
                }
                Err(error) if error.kind() == Some(ErrorKind::ProducerFenced) => {
                    self.stopped.set(error.to_string());
                    self.commands.close();
                    let _ = pending.reply.send(Err(copy_error(&error)));
                    for (pending, _) in answers {
                        let _ = pending.reply.send(Err(copy_error(&error)));
                    }
                    return Err(error);
                }
                Err(error)
                    if partition.rewind_to.is_some()
                        && error.kind() == Some(ErrorKind::ProducerOutOfOrder) =>
                {
                    // Rejected only because an earlier append of the partition failed.
                    pending.request.producer = None;
                    partition.held.push(pending);
                }
                Err(error) => {
                    if partition.rewind_to.is_none() {
                        partition.rewind_to = Some(sequence);
                    }
                    pending.attempts += 1;
                    if error.is_transient() && pending.attempts < self.options.retry.attempts_max {
                        let at = Instant::now() + self.options.retry.backoff(pending.attempts);
                        partition.ready_at = Some(partition.ready_at.map_or(at, |ready| ready.max(at)));
                        pending.request.producer = None;
                        partition.held.push(pending);
                    } else {
                        let _ = pending.reply.send(Err(error));
                    }
                }
            }
            if partition.in_flight == 0
                && let Some(sequence) = partition.rewind_to.take()
            {
                // Nothing of the held appends was stored: stamp them again, in order.
                partition.next_sequence = sequence;
                for pending in partition.held.drain(..).rev() {
                    partition.queued.push_front(pending);
                }
            }
        }
        Ok(())
    }

    /// Fails every outstanding append and flush; the producer stops.
    fn fail_all(&mut self, error: &ClientError) {
        // Stop taking appends first, so that every later send sees the reason.
        self.stopped.set(error.to_string());
        self.commands.close();
        let failure = copy_error;
        for request in self.in_flight.drain(..) {
            for pending in request.appends {
                let _ = pending.reply.send(Err(failure(error)));
            }
        }
        for partition in &mut self.partitions {
            for pending in partition.queued.drain(..).chain(partition.held.drain(..)) {
                let _ = pending.reply.send(Err(failure(error)));
            }
        }
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Append(_, reply) = command {
                let _ = reply.send(Err(failure(error)));
            }
        }
        self.flushes.clear();
    }
}

/// The same error for another waiter: server errors keep their code and
/// details, others become [`ClientError::Closed`] with the message.
fn copy_error(error: &ClientError) -> ClientError {
    match error {
        ClientError::Status {
            code,
            kind,
            error_code,
            message,
            details,
        } => ClientError::Status {
            code: *code,
            kind: *kind,
            error_code: *error_code,
            message: message.clone(),
            details: details.clone(),
        },
        other => ClientError::Closed(other.to_string()),
    }
}

fn sendable(partition: &PartitionQueue, now: Instant) -> bool {
    partition.rewind_to.is_none()
        && partition.ready_at.is_none_or(|at| at <= now)
        && !partition.queued.is_empty()
        && partition.in_flight < PRODUCER_IN_FLIGHT_PER_PARTITION_MAX
}

async fn next_response(
    session: Option<&mut Session>,
) -> Result<Option<proto::AppendSessionResponse>, tonic::Status> {
    match session {
        Some(session) => session.inbound.message().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Where the partitions of a [`Follower`] start that have no position yet.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fallback {
    Earliest,
    Timestamp(i64),
    /// A cursor's committed offsets, or the earliest where it has none.
    Cursor(String),
}

/// What [`Follower::next`] yields.
#[derive(Debug)]
pub enum Followed {
    /// The next event; the follower's position in its partition is now past it.
    Event(RecordedEvent),
    /// Every followed partition was read up to its high watermark of the
    /// moment the (re)subscription started.
    CaughtUp,
    /// The subscription broke with a transient error, or the server ended it
    /// (shutting down). The positions are kept: the next call resubscribes from
    /// them. Waiting before that call is the caller's choice.
    Lost(ClientError),
    /// A resubscription after [`Followed::Lost`] succeeded.
    Resumed,
}

/// Follows a topic through lost connections, one event at a time: the loop
/// under [`Consumer`] and under `stele tail`.
///
/// Invariant: [`Follower::positions`] holds, per partition, the offset after
/// the last event [`Follower::next`] returned (or that the server's filters
/// skipped); every subscription after the first starts exactly there, so a
/// resubscription neither skips nor repeats an event. Partitions without a
/// position start where the start position says. A start that depends on the
/// moment (`Latest`) is resolved to offsets before the first subscription for
/// the same reason. Received events are buffered and the stream is read only
/// once the buffer is empty, so a position never runs ahead of what was
/// returned.
pub struct Follower {
    client: Client,
    topic: String,
    options: SubscribeOptions,
    /// The followed partitions, when the start needs them listed (a timestamp).
    followed: Vec<PartitionId>,
    fallback: Fallback,
    positions: BTreeMap<PartitionId, Offset>,
    /// One subscription, or two when known partitions resume from offsets and
    /// the others start at a timestamp.
    subscriptions: [Option<Subscription>; 2],
    /// Subscriptions that have not said `CaughtUp` yet.
    catching_up: usize,
    buffered: VecDeque<(RecordedEvent, Offset)>,
    /// Whether a subscription was lost and not yet resumed.
    lost: bool,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("topic", &self.topic)
            .field("positions", &self.positions)
            .finish_non_exhaustive()
    }
}

impl Follower {
    /// Per partition: the offset after everything returned (or filtered out).
    pub fn positions(&self) -> &BTreeMap<PartitionId, Offset> {
        &self.positions
    }

    /// The next event, or news of the connection. Never `None`: the `Option`
    /// mirrors a stream.
    ///
    /// # Errors
    /// Permanent errors of the subscription (unknown topic, offset out of
    /// range, ...); transient ones are [`Followed::Lost`].
    pub async fn next(&mut self) -> Option<ClientResult<Followed>> {
        loop {
            if let Some((event, next_offset)) = self.buffered.pop_front() {
                self.advance(event.partition, next_offset);
                return Some(Ok(Followed::Event(event)));
            }
            if self.subscriptions.iter().all(Option::is_none) {
                match self.subscribe().await {
                    Ok(()) if self.lost => {
                        self.lost = false;
                        return Some(Ok(Followed::Resumed));
                    }
                    Ok(()) => {}
                    Err(error) if error.is_transient() => return Some(Ok(Followed::Lost(error))),
                    Err(error) => return Some(Err(error)),
                }
            }
            let [first, second] = &mut self.subscriptions;
            let item = tokio::select! {
                item = next_item(first.as_mut()) => item,
                item = next_item(second.as_mut()) => item,
            };
            match item {
                Some(Ok(SubscriptionItem::Events {
                    partition,
                    events,
                    next_offset,
                })) => self.receive(partition, events, next_offset),
                Some(Ok(SubscriptionItem::CaughtUp { next_offsets })) => {
                    for (partition, offset) in next_offsets {
                        self.advance(partition, offset);
                    }
                    self.catching_up = self.catching_up.saturating_sub(1);
                    if self.catching_up == 0 {
                        return Some(Ok(Followed::CaughtUp));
                    }
                }
                Some(Ok(SubscriptionItem::Heartbeat { .. })) => {}
                Some(Err(error)) if !error.is_transient() => return Some(Err(error)),
                Some(Err(error)) => return Some(Ok(self.lose(error))),
                None => {
                    let ended = ClientError::Closed("the server ended the subscription".into());
                    return Some(Ok(self.lose(ended)));
                }
            }
        }
    }

    fn lose(&mut self, error: ClientError) -> Followed {
        self.subscriptions = [None, None];
        self.lost = true;
        Followed::Lost(error)
    }

    /// Buffers a batch; each event carries the position after it.
    fn receive(&mut self, partition: PartitionId, events: Vec<RecordedEvent>, next_offset: Offset) {
        let count = events.len();
        for (index, event) in events.into_iter().enumerate() {
            // Defensive: a resumed subscription starts at the position, so an
            // earlier offset would be a repeat.
            if self
                .positions
                .get(&event.partition)
                .is_some_and(|position| event.offset < *position)
            {
                continue;
            }
            let after = if index + 1 == count {
                next_offset
            } else {
                event.offset.next()
            };
            self.buffered.push_back((event, after));
        }
        if self.buffered.is_empty() {
            // Events the filters skipped are passed too.
            self.advance(partition, next_offset);
        }
    }

    /// Records that `partition` continues at `offset`, never moving backwards.
    fn advance(&mut self, partition: PartitionId, offset: Offset) {
        let position = self.positions.entry(partition).or_insert(offset);
        *position = (*position).max(offset);
    }

    fn request(&self, partitions: Vec<PartitionId>, start: StartPosition) -> SubscribeOptions {
        SubscribeOptions {
            partitions,
            start,
            ..self.options.clone()
        }
    }

    /// Subscribes from the positions, and from the fallback where there is none.
    async fn subscribe(&mut self) -> ClientResult<()> {
        let offsets = StartPosition::Offsets(self.positions.clone());
        let all = self.options.partitions.clone();
        let subscriptions = match self.fallback.clone() {
            // Offsets start partitions they do not list at the earliest event.
            Fallback::Earliest => [
                Some(
                    self.client
                        .subscribe(&self.topic, &self.request(all, offsets))
                        .await?,
                ),
                None,
            ],
            Fallback::Timestamp(timestamp_ms) => {
                let unknown: Vec<PartitionId> = self
                    .followed
                    .iter()
                    .copied()
                    .filter(|partition| !self.positions.contains_key(partition))
                    .collect();
                let known = if self.positions.is_empty() {
                    None
                } else {
                    let partitions = self.positions.keys().copied().collect();
                    let request = self.request(partitions, offsets);
                    Some(self.client.subscribe(&self.topic, &request).await?)
                };
                let timed = if unknown.is_empty() {
                    None
                } else {
                    let request = self.request(unknown, StartPosition::Timestamp(timestamp_ms));
                    Some(self.client.subscribe(&self.topic, &request).await?)
                };
                if known.is_none() && timed.is_none() {
                    // Only a server describing the topic without partitions gets here.
                    return Err(ClientError::Protocol(format!(
                        "topic {} has no partitions",
                        self.topic
                    )));
                }
                [known, timed]
            }
            Fallback::Cursor(cursor) if self.positions.is_empty() => {
                let request = self.request(all, StartPosition::Cursor(cursor));
                match self.client.subscribe(&self.topic, &request).await {
                    // A cursor never committed: every partition starts at the earliest.
                    Err(error) if error.kind() == Some(ErrorKind::CursorNotFound) => {
                        let request = self.request(request.partitions, StartPosition::Earliest);
                        [Some(self.client.subscribe(&self.topic, &request).await?), None]
                    }
                    subscription => [Some(subscription?), None],
                }
            }
            Fallback::Cursor(cursor) => {
                // The cursor's committed offsets where there is no position.
                let mut start = BTreeMap::new();
                match self.client.get_cursor(&self.topic, &cursor).await {
                    Ok(positions) => start.extend(
                        positions
                            .into_iter()
                            .filter_map(|position| Some((position.partition, position.committed?))),
                    ),
                    Err(error) if error.kind() == Some(ErrorKind::CursorNotFound) => {}
                    Err(error) => return Err(error),
                }
                start.extend(
                    self.positions
                        .iter()
                        .map(|(partition, offset)| (*partition, *offset)),
                );
                let request = self.request(all, StartPosition::Offsets(start));
                [Some(self.client.subscribe(&self.topic, &request).await?), None]
            }
        };
        self.catching_up = subscriptions.iter().flatten().count();
        self.subscriptions = subscriptions;
        Ok(())
    }
}

async fn next_item(subscription: Option<&mut Subscription>) -> Option<ClientResult<SubscriptionItem>> {
    match subscription {
        Some(subscription) => subscription.next().await,
        None => std::future::pending().await,
    }
}

/// When a consumer commits its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitMode {
    /// Only on [`Consumer::commit`].
    Manual,
    /// After every `events` delivered events, or once `interval` has passed
    /// since the last commit when an event is delivered; whichever comes first.
    Auto {
        /// Commit after this many delivered events.
        events: u64,
        /// Commit when this much time passed since the last commit.
        interval: Duration,
    },
}

/// A consumer's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// Partitions to follow; empty means all.
    pub partitions: Vec<PartitionId>,
    /// Only events of these types (empty = all), filtered on the server.
    pub event_types: Vec<String>,
    /// Only events whose key starts with this (empty = all), filtered on the server.
    pub key_prefix: Vec<u8>,
    /// When positions are committed.
    pub commit: CommitMode,
    /// Retries of transient failures when resubscribing.
    pub retry: RetryPolicy,
}

impl Default for ConsumerOptions {
    fn default() -> ConsumerOptions {
        ConsumerOptions {
            partitions: Vec::new(),
            event_types: Vec::new(),
            key_prefix: Vec::new(),
            commit: CommitMode::Auto {
                events: 100,
                interval: Duration::from_secs(1),
            },
            retry: RetryPolicy::default(),
        }
    }
}

/// Builds a [`Consumer`].
pub struct ConsumerBuilder {
    client: Client,
    topic: String,
    cursor: String,
    options: ConsumerOptions,
}

impl ConsumerBuilder {
    /// Replaces all options.
    pub fn options(mut self, options: ConsumerOptions) -> ConsumerBuilder {
        self.options = options;
        self
    }

    /// Follows only these partitions.
    pub fn partitions(mut self, partitions: Vec<PartitionId>) -> ConsumerBuilder {
        self.options.partitions = partitions;
        self
    }

    /// Only events of these types.
    pub fn event_types(mut self, event_types: Vec<String>) -> ConsumerBuilder {
        self.options.event_types = event_types;
        self
    }

    /// Only events whose key starts with this.
    pub fn key_prefix(mut self, prefix: impl Into<Vec<u8>>) -> ConsumerBuilder {
        self.options.key_prefix = prefix.into();
        self
    }

    /// When progress is committed.
    pub fn commit_mode(mut self, mode: CommitMode) -> ConsumerBuilder {
        self.options.commit = mode;
        self
    }

    /// Subscribes from the cursor's committed offsets (the earliest for
    /// partitions never committed, and for a cursor never committed at all).
    ///
    /// # Errors
    /// `NotFound` for an unknown topic; transport errors.
    pub async fn build(self) -> ClientResult<Consumer> {
        let options = SubscribeOptions {
            partitions: self.options.partitions.clone(),
            start: StartPosition::Cursor(self.cursor.clone()),
            event_types: self.options.event_types.clone(),
            key_prefix: self.options.key_prefix.clone(),
            heartbeat_ms: 0,
            max_batch_events: 0,
        };
        let follower = self.client.follow(&self.topic, options).await?;
        Ok(Consumer {
            client: self.client,
            topic: self.topic,
            cursor: self.cursor,
            options: self.options,
            follower,
            committed: BTreeMap::new(),
            uncommitted_count: 0,
            last_commit: Instant::now(),
            failures: 0,
        })
    }
}

/// Follows a topic from a named cursor, committing progress.
///
/// Delivery is at-least-once: committed events are never delivered again to
/// the cursor's next consumer, and after a disconnect the consumer resumes
/// right after the last event it delivered, so none is lost or repeated; but
/// events delivered and not yet committed when a consumer stops (crash, drop
/// without [`Consumer::commit`]) are delivered again to the next consumer.
pub struct Consumer {
    client: Client,
    topic: String,
    cursor: String,
    options: ConsumerOptions,
    follower: Follower,
    /// Per partition: the last committed next offset.
    committed: BTreeMap<PartitionId, Offset>,
    uncommitted_count: u64,
    last_commit: Instant,
    /// Consecutive failed resubscriptions.
    failures: u32,
}

impl Consumer {
    /// The next event, waiting for one to be appended if needed. Transient
    /// failures are retried by resubscribing after the delivered position; the
    /// `Option` mirrors a stream, and this consumer never ends on its own.
    ///
    /// # Errors
    /// Permanent errors (unknown topic, out of range), or transient ones once
    /// the retry policy is exhausted; a failed auto-commit.
    pub async fn next(&mut self) -> Option<ClientResult<RecordedEvent>> {
        // Bounded by the retry policy while the subscription keeps failing.
        loop {
            match self.follower.next().await? {
                Ok(Followed::Event(event)) => {
                    self.failures = 0;
                    self.uncommitted_count += 1;
                    if let Err(error) = self.auto_commit().await {
                        return Some(Err(error));
                    }
                    return Some(Ok(event));
                }
                Ok(Followed::CaughtUp) => self.failures = 0,
                Ok(Followed::Resumed) => {}
                Ok(Followed::Lost(_)) => {
                    self.failures += 1;
                    if self.failures > self.options.retry.attempts_max {
                        return Some(Err(ClientError::Closed("subscription retries exhausted".into())));
                    }
                    tokio::time::sleep(self.options.retry.backoff(self.failures)).await;
                }
                Err(error) => return Some(Err(error)),
            }
        }
    }

    /// Commits the position after every delivered event.
    ///
    /// # Errors
    /// Errors of `CommitCursor`.
    pub async fn commit(&mut self) -> ClientResult<()> {
        let changed: Vec<(PartitionId, Offset)> = self
            .follower
            .positions()
            .iter()
            .filter(|(partition, offset)| self.committed.get(partition) != Some(offset))
            .map(|(partition, offset)| (*partition, *offset))
            .collect();
        if !changed.is_empty() {
            self.client
                .commit_cursor(&self.topic, &self.cursor, &changed, false)
                .await?;
            self.committed.extend(changed);
        }
        self.uncommitted_count = 0;
        self.last_commit = Instant::now();
        Ok(())
    }

    /// Per partition: the next offset after everything delivered.
    pub fn positions(&self) -> &BTreeMap<PartitionId, Offset> {
        self.follower.positions()
    }

    async fn auto_commit(&mut self) -> ClientResult<()> {
        if let CommitMode::Auto { events, interval } = self.options.commit
            && (self.uncommitted_count >= events || self.last_commit.elapsed() >= interval)
        {
            return self.commit().await;
        }
        Ok(())
    }
}

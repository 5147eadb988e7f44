//! Prometheus metrics of the server: the registry, the append decorator, the
//! scrape-time collector, the webhook and consumer group families and the
//! `/metrics` endpoint.
//!
//! [`ServerMetrics`] owns one `prometheus_client` registry holding the engine's
//! families ([`EngineMetrics`](stele_engine::metrics::EngineMetrics)), the server's own (appends, subscriptions,
//! corruption), the webhook families ([`WebhookMetrics`]), the consumer group
//! families (`GroupMetrics`, fed through [`GroupObserver`](super::group::GroupObserver))
//! and a [`Collector`] that reads per-partition and per-cursor figures from the
//! backend when scraped (no background polling).
//! [`MeteredBackend`] wraps any [`Backend`], so the gRPC service stays
//! unaware of metrics and every backend is metered alike.
//! [`MetricsEndpoint`] serves `GET /metrics` in the Prometheus text format
//! (version 0.0.4) on its own port, over HTTPS with the gRPC listener's
//! certificate and client-CA policy when the server has TLS.
//!
//! Invariant: label values are only topic names, partition numbers, cursor
//! names, webhook endpoint names, consumer group names, the instance ids of the
//! members connected to a group now, and the fixed words of `result`, `outcome`
//! and `status_class`; nothing a client sends becomes a label unless it names an
//! existing topic, cursor or group, or a member present in a group (a member's
//! series leave with it, a group's with the group).
//! Every family is declared (HELP and TYPE) from the first scrape, with or
//! without samples.
//! The group counters are monotonic although the runner's counts restart at 0
//! with the runner: each report adds what a count grew by, or all of it when
//! it fell.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};
use stele_engine::Sequence;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::auth::Authenticator;
use super::backend::{Backend, BoxFuture, KeyHistory, NamedCursors, TopicDescription};
use super::tls::{ServerIo, TlsAcceptor};
use stele_engine::Log;
use stele_engine::config::TopicOptions;
use stele_engine::error::{Error, ErrorKind, Result};
use stele_engine::event::{AppendAck, AppendRequest, Direction, Epoch, Offset, PartitionId, ProducerId};
use stele_engine::metrics::{Declared, HistogramFamily, TopicLabels};
use stele_engine::{CursorPosition, EventFilter, StoredEvents};

/// The path the endpoint serves.
pub const METRICS_PATH: &str = "/metrics";
/// The content type of the exposition: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// The `topic` label of appends rejected before a topic was found, so that a
/// client cannot create label values with made-up names. Parentheses are not
/// allowed in topic names.
pub const TOPIC_UNKNOWN: &str = "(unknown)";

/// Upper bounds of the append duration buckets, in seconds: 100 µs to 10 s.
const APPEND_BUCKETS_SECONDS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the webhook retry delay buckets, in seconds: 100 ms to 1 h.
const RETRY_DELAY_BUCKETS_SECONDS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Upper bounds of the webhook delivery latency buckets, in seconds: 5 ms to 1 h.
const DELIVERY_BUCKETS_SECONDS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Connections the endpoint serves at once; more wait in the listen backlog.
const CONNECTIONS_COUNT_MAX: usize = 16;
/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the listener pauses after a failed accept.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// How long shutdown waits for scrapes in progress.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// What became of one append request, as the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendResult {
    /// Written.
    Ok,
    /// A retry of an append already written; answered with the original ack.
    Duplicate,
    /// The key's expected sequence did not match.
    SequenceConflict,
    /// The producer was fenced by a newer epoch.
    Fenced,
    /// The request was refused as malformed, too large, out of order or for an
    /// unknown topic or producer: the client must change something.
    Rejected,
    /// The server failed: I/O, full disk, poisoned partition, corruption, closed.
    Error,
}

impl AppendResult {
    /// Every result, in declaration order.
    pub const ALL: [AppendResult; 6] = [
        AppendResult::Ok,
        AppendResult::Duplicate,
        AppendResult::SequenceConflict,
        AppendResult::Fenced,
        AppendResult::Rejected,
        AppendResult::Error,
    ];

    /// Classifies the outcome of one append request.
    pub fn of(result: &Result<AppendAck>) -> AppendResult {
        match result {
            Ok(ack) if ack.duplicate => AppendResult::Duplicate,
            Ok(_) => AppendResult::Ok,
            Err(error) => AppendResult::of_kind(error.kind()),
        }
    }

    /// Classifies a failed append by its error kind.
    pub fn of_kind(kind: ErrorKind) -> AppendResult {
        match kind {
            ErrorKind::WrongExpectedSequence => AppendResult::SequenceConflict,
            ErrorKind::ProducerFenced => AppendResult::Fenced,
            ErrorKind::InvalidArgument
            | ErrorKind::LimitExceeded
            | ErrorKind::TopicNotFound
            | ErrorKind::TopicExists
            | ErrorKind::PartialDuplicate
            | ErrorKind::RepeatedIdempotencyId
            | ErrorKind::IdempotencyIdReused
            | ErrorKind::UnknownProducer
            | ErrorKind::ProducerOutOfOrder
            | ErrorKind::OffsetOutOfRange
            | ErrorKind::CursorNotFound
            | ErrorKind::CursorBackwards
            | ErrorKind::CursorAheadOfHighWatermark
            | ErrorKind::WebhookNotFound
            | ErrorKind::WebhookExists
            | ErrorKind::GroupNotFound
            | ErrorKind::GroupExists
            | ErrorKind::DeliveryStale
            | ErrorKind::MemberReplaced
            | ErrorKind::DestinationNotEmpty
            | ErrorKind::Unsupported => AppendResult::Rejected,
            ErrorKind::Io
            | ErrorKind::DiskFull
            | ErrorKind::Corruption
            | ErrorKind::Inconsistent
            | ErrorKind::Config
            | ErrorKind::Poisoned
            | ErrorKind::Locked
            | ErrorKind::Closed
            | ErrorKind::Unavailable
            | ErrorKind::Quarantined => AppendResult::Error,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AppendResult::Ok => "ok",
            AppendResult::Duplicate => "duplicate",
            AppendResult::SequenceConflict => "sequence_conflict",
            AppendResult::Fenced => "fenced",
            AppendResult::Rejected => "rejected",
            AppendResult::Error => "error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppendLabels {
    topic: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    endpoint: String,
    outcome: String,
    status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CursorLabels {
    topic: String,
    cursor: String,
    partition: u32,
}

fn append_histogram() -> Histogram {
    Histogram::new(APPEND_BUCKETS_SECONDS)
}

fn retry_delay_histogram() -> Histogram {
    Histogram::new(RETRY_DELAY_BUCKETS_SECONDS)
}

fn delivery_histogram() -> Histogram {
    Histogram::new(DELIVERY_BUCKETS_SECONDS)
}

/// One topic's append series, found once instead of on every call: for
/// each result its request, event and byte counters (made on the result's
/// first use, so that results never seen export no series), and the
/// duration histogram. Handles share their values with the families'.
#[derive(Debug)]
struct TopicAppendHandles {
    results: [std::sync::OnceLock<[Counter; 3]>; AppendResult::ALL.len()],
    duration: std::sync::OnceLock<Histogram>,
}

/// The server's own families about appends, subscriptions and corruption.
#[derive(Debug, Clone)]
struct RequestMetrics {
    /// Each topic's append series (`TopicAppendHandles`). Entries are made and
    /// removed under the write lock, together with the families' series, so
    /// that no entry outlives its series (a deleted topic's).
    append_handles: Arc<std::sync::RwLock<HashMap<String, Arc<TopicAppendHandles>>>>,
    append_requests: Family<AppendLabels, Counter>,
    append_events: Family<AppendLabels, Counter>,
    append_bytes: Family<AppendLabels, Counter>,
    append_duration_seconds: HistogramFamily<TopicLabels>,
    subscriptions_active: Family<TopicLabels, Gauge>,
    subscription_events: Family<TopicLabels, Counter>,
    read_events: Family<TopicLabels, Counter>,
    corruption_detected: Family<TopicLabels, Counter>,
}

impl RequestMetrics {
    fn new() -> RequestMetrics {
        RequestMetrics {
            append_handles: Arc::default(),
            append_requests: Family::default(),
            append_events: Family::default(),
            append_bytes: Family::default(),
            append_duration_seconds: Family::new_with_constructor(append_histogram),
            subscriptions_active: Family::default(),
            subscription_events: Family::default(),
            read_events: Family::default(),
            corruption_detected: Family::default(),
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "stele_append_requests",
            "Append requests (one key each) by topic and result: ok, duplicate, sequence_conflict, fenced, rejected, error",
            Declared(self.append_requests.clone()),
        );
        registry.register(
            "stele_append_events",
            "Events in append requests by topic and result",
            Declared(self.append_events.clone()),
        );
        registry.register(
            "stele_append_bytes",
            "Bytes of event types, payloads, headers and idempotency ids in append requests by topic and result",
            Declared(self.append_bytes.clone()),
        );
        registry.register(
            "stele_append_duration_seconds",
            "Time from handing an append call to the storage backend to its acknowledgement, one observation per request",
            Declared(self.append_duration_seconds.clone()),
        );
        registry.register(
            "stele_subscriptions_active",
            "Open subscriptions by topic",
            Declared(self.subscriptions_active.clone()),
        );
        registry.register(
            "stele_subscription_events",
            "Events sent to subscribers by topic",
            Declared(self.subscription_events.clone()),
        );
        registry.register(
            "stele_read_events",
            "Events read from storage by topic: Read and ReadKey calls, subscriptions, webhook and consumer group deliveries",
            Declared(self.read_events.clone()),
        );
        registry.register(
            "stele_corruption_detected",
            "Damaged stored bytes found: files repaired at open (checkpoint or dedup run rebuilt), partitions quarantined at open, and corruption errors returned by requests",
            Declared(self.corruption_detected.clone()),
        );
    }

    fn remove_topic(&self, topic: &str) {
        let mut handles = self
            .append_handles
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        handles.remove(topic);
        let labels = TopicLabels::new(topic);
        for result in AppendResult::ALL {
            let labels = AppendLabels {
                topic: topic.to_string(),
                result: result.as_str(),
            };
            self.append_requests.remove(&labels);
            self.append_events.remove(&labels);
            self.append_bytes.remove(&labels);
        }
        self.append_duration_seconds.remove(&labels);
        self.corruption_detected.remove(&labels);
        self.read_events.remove(&labels);
        // Like the gauge below, open subscriptions still count into theirs.
        // The gauge of open subscriptions stays: their guards still decrement it.
    }

    fn count_read(&self, topic: &str, events: usize) {
        if events > 0 {
            self.read_events
                .get_or_create(&TopicLabels::new(topic))
                .inc_by(events as u64);
        }
    }

    /// Counts a corruption error in `result`, then returns it.
    fn watch<T>(&self, topic: &str, result: Result<T>) -> Result<T> {
        if let Err(error) = &result
            && error.kind() == ErrorKind::Corruption
        {
            self.corruption_detected
                .get_or_create(&TopicLabels::new(topic))
                .inc();
        }
        result
    }
}

/// Per-endpoint webhook delivery metrics. The webhook dispatcher reports
/// through these methods; endpoint names are the label values.
#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    deliveries: Family<DeliveryLabels, Counter>,
    attempts: Family<EndpointLabels, Counter>,
    retry_delay_seconds: HistogramFamily<EndpointLabels>,
    delivery_latency_seconds: HistogramFamily<EndpointLabels>,
    lag_events: Family<EndpointLabels, Gauge>,
    circuit_state: Family<EndpointLabels, Gauge>,
    dead_lettered: Family<EndpointLabels, Counter>,
}

impl Default for WebhookMetrics {
    fn default() -> WebhookMetrics {
        WebhookMetrics::new()
    }
}

impl WebhookMetrics {
    /// The circuit state value of a closed circuit (deliveries flow).
    pub const CIRCUIT_CLOSED: i64 = 0;
    /// The circuit state value of a half-open circuit (probing).
    pub const CIRCUIT_HALF_OPEN: i64 = 1;
    /// The circuit state value of an open circuit (deliveries paused).
    pub const CIRCUIT_OPEN: i64 = 2;

    /// Empty families.
    pub fn new() -> WebhookMetrics {
        WebhookMetrics {
            deliveries: Family::default(),
            attempts: Family::default(),
            retry_delay_seconds: Family::new_with_constructor(retry_delay_histogram),
            delivery_latency_seconds: Family::new_with_constructor(delivery_histogram),
            lag_events: Family::default(),
            circuit_state: Family::default(),
            dead_lettered: Family::default(),
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "stele_webhook_deliveries",
            "Webhook delivery attempts by endpoint, outcome (success, retry, permanent_failure, dead_lettered) and status class (2xx, 3xx, 4xx, 5xx, timeout, connection)",
            Declared(self.deliveries.clone()),
        );
        registry.register(
            "stele_webhook_attempts",
            "HTTP requests made to a webhook endpoint",
            Declared(self.attempts.clone()),
        );
        registry.register(
            "stele_webhook_retry_delay_seconds",
            "Delay before each webhook retry",
            Declared(self.retry_delay_seconds.clone()),
        );
        registry.register(
            "stele_webhook_delivery_latency_seconds",
            "Time from an event's append to its successful webhook delivery",
            Declared(self.delivery_latency_seconds.clone()),
        );
        registry.register(
            "stele_webhook_lag_events",
            "Events appended but not yet delivered to a webhook endpoint",
            Declared(self.lag_events.clone()),
        );
        registry.register(
            "stele_webhook_circuit_state",
            "Circuit breaker state of a webhook endpoint: 0 closed, 1 half open, 2 open",
            Declared(self.circuit_state.clone()),
        );
        registry.register(
            "stele_webhook_dead_lettered",
            "Events a webhook endpoint gave up on (dead-lettered)",
            Declared(self.dead_lettered.clone()),
        );
    }

    fn endpoint(endpoint: &str) -> EndpointLabels {
        EndpointLabels {
            endpoint: endpoint.to_string(),
        }
    }

    /// One HTTP request was made to `endpoint`.
    pub fn attempt(&self, endpoint: &str) {
        self.attempts.get_or_create(&Self::endpoint(endpoint)).inc();
    }

    /// An attempt ended with `outcome` (success, retry, permanent_failure,
    /// dead_lettered) and `status_class` (2xx, 3xx, 4xx, 5xx, timeout,
    /// connection).
    pub fn outcome(&self, endpoint: &str, outcome: &str, status_class: &str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                endpoint: endpoint.to_string(),
                outcome: outcome.to_string(),
                status_class: status_class.to_string(),
            })
            .inc();
    }

    /// A retry was scheduled `delay` from now.
    pub fn retry_delay(&self, endpoint: &str, delay: Duration) {
        self.retry_delay_seconds
            .get_or_create(&Self::endpoint(endpoint))
            .observe(delay.as_secs_f64());
    }

    /// An event was delivered `latency` after it was appended.
    pub fn delivered(&self, endpoint: &str, latency: Duration) {
        self.delivery_latency_seconds
            .get_or_create(&Self::endpoint(endpoint))
            .observe(latency.as_secs_f64());
    }

    /// `endpoint` is `events` events behind the head of its topic.
    pub fn lag(&self, endpoint: &str, events: u64) {
        self.lag_events
            .get_or_create(&Self::endpoint(endpoint))
            .set(i64::try_from(events).unwrap_or(i64::MAX));
    }

    /// The circuit of `endpoint` is now `state` ([`Self::CIRCUIT_CLOSED`],
    /// [`Self::CIRCUIT_HALF_OPEN`] or [`Self::CIRCUIT_OPEN`]).
    pub fn circuit(&self, endpoint: &str, state: i64) {
        self.circuit_state
            .get_or_create(&Self::endpoint(endpoint))
            .set(state);
    }

    /// An event for `endpoint` was dead-lettered.
    pub fn dead_lettered(&self, endpoint: &str) {
        self.dead_lettered.get_or_create(&Self::endpoint(endpoint)).inc();
    }

    /// Drops every label set of a deleted endpoint. Delivery counters are
    /// removed for the documented outcomes and status classes only, so callers
    /// use no other values.
    pub fn remove(&self, endpoint: &str) {
        let labels = Self::endpoint(endpoint);
        self.attempts.remove(&labels);
        self.retry_delay_seconds.remove(&labels);
        self.delivery_latency_seconds.remove(&labels);
        self.lag_events.remove(&labels);
        self.circuit_state.remove(&labels);
        self.dead_lettered.remove(&labels);
        for outcome in ["success", "retry", "permanent_failure", "dead_lettered"] {
            for status_class in ["2xx", "3xx", "4xx", "5xx", "timeout", "connection"] {
                self.deliveries.remove(&DeliveryLabels {
                    endpoint: endpoint.to_string(),
                    outcome: outcome.to_string(),
                    status_class: status_class.to_string(),
                });
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupTopicLabels {
    group: String,
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    group: String,
    member: String,
}

/// What the group families last took from one group's reports: the label
/// values to remove later, and the runner's counts the counters mirror.
#[derive(Debug, Default)]
struct GroupSeen {
    topic: String,
    members: Vec<String>,
    redelivered: u64,
    parked: u64,
    acked: u64,
}

/// What a counter that mirrors a runner's count adds when the count goes from
/// `last` to `now`: the growth, or all of `now` after a fall, which means the
/// runner restarted and counts from 0 again.
fn counted_since(last: u64, now: u64) -> u64 {
    if now >= last { now - last } else { now }
}

/// A count as a gauge value.
fn gauge_value(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Per-group consumer group metrics, fed by the group runners' reports
/// (about once a second per group) through [`super::group::GroupObserver`].
#[derive(Debug)]
struct GroupMetrics {
    lag_events: Family<GroupTopicLabels, Gauge>,
    in_flight: Family<GroupLabels, Gauge>,
    member_in_flight: Family<MemberLabels, Gauge>,
    members: Family<GroupLabels, Gauge>,
    redeliveries: Family<GroupLabels, Counter>,
    parked: Family<GroupLabels, Counter>,
    acked: Family<GroupLabels, Counter>,
    blocked_keys: Family<GroupLabels, Gauge>,
    oldest_unsettled_age_seconds: Family<GroupLabels, Gauge<f64, AtomicU64>>,
    /// By group. Held across each report and removal, so that a removal never
    /// interleaves with a report of the same group.
    seen: std::sync::Mutex<HashMap<String, GroupSeen>>,
}

impl GroupMetrics {
    fn new() -> GroupMetrics {
        GroupMetrics {
            lag_events: Family::default(),
            in_flight: Family::default(),
            member_in_flight: Family::default(),
            members: Family::default(),
            redeliveries: Family::default(),
            parked: Family::default(),
            acked: Family::default(),
            blocked_keys: Family::default(),
            oldest_unsettled_age_seconds: Family::default(),
            seen: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "stele_group_lag_events",
            "Events of a consumer group's topic not yet settled (acked or parked) by the group, over all partitions",
            Declared(self.lag_events.clone()),
        );
        registry.register(
            "stele_group_in_flight",
            "Deliveries of a consumer group held by its members and not yet settled",
            Declared(self.in_flight.clone()),
        );
        registry.register(
            "stele_group_member_in_flight",
            "Deliveries held and not yet settled by one member instance of a consumer group",
            Declared(self.member_in_flight.clone()),
        );
        registry.register(
            "stele_group_members",
            "Member instances connected to a consumer group",
            Declared(self.members.clone()),
        );
        registry.register(
            "stele_group_redeliveries",
            "Deliveries of a consumer group after an event's first: after a retry, an expired lease or a member leaving",
            Declared(self.redeliveries.clone()),
        );
        registry.register(
            "stele_group_parked",
            "Events a consumer group stored in its dead-letter topic: parked by a member, or out of deliveries under on_exhausted park",
            Declared(self.parked.clone()),
        );
        registry.register(
            "stele_group_acked",
            "Deliveries of a consumer group its members acked",
            Declared(self.acked.clone()),
        );
        registry.register(
            "stele_group_blocked_keys",
            "Keys of a consumer group stopped under on_exhausted block until a redrive",
            Declared(self.blocked_keys.clone()),
        );
        registry.register(
            "stele_group_oldest_unsettled_age_seconds",
            "Time since the append of the oldest event a consumer group has read and not settled (0: none)",
            Declared(self.oldest_unsettled_age_seconds.clone()),
        );
    }

    fn group(group: &str) -> GroupLabels {
        GroupLabels {
            group: group.to_string(),
        }
    }

    fn member(group: &str, member: &str) -> MemberLabels {
        MemberLabels {
            group: group.to_string(),
            member: member.to_string(),
        }
    }

    fn lag(group: &str, topic: &str) -> GroupTopicLabels {
        GroupTopicLabels {
            group: group.to_string(),
            topic: topic.to_string(),
        }
    }

    /// Takes `group`'s figures now: sets the gauges, adds to the counters,
    /// and drops the series of members no longer present.
    fn report(&self, group: &str, figures: &super::group::GroupFigures) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = seen.entry(group.to_string()).or_default();
        let labels = Self::group(group);

        if seen.topic != figures.topic {
            self.lag_events.remove(&Self::lag(group, &seen.topic));
            seen.topic = figures.topic.clone();
        }
        self.lag_events
            .get_or_create(&Self::lag(group, &figures.topic))
            .set(gauge_value(figures.lag));
        self.in_flight
            .get_or_create(&labels)
            .set(gauge_value(figures.in_flight));
        self.blocked_keys
            .get_or_create(&labels)
            .set(gauge_value(figures.blocked_keys));
        self.oldest_unsettled_age_seconds
            .get_or_create(&labels)
            .set(figures.oldest_unsettled_age_ms as f64 / 1000.0);

        // Instance ids are unique among a group's members (a second join with
        // one replaces the first); should one appear twice, its holdings add up.
        let mut members: BTreeMap<&str, u64> = BTreeMap::new();
        for (instance, held) in &figures.members {
            *members.entry(instance.as_str()).or_default() += held;
        }
        for gone in seen
            .members
            .iter()
            .filter(|member| !members.contains_key(member.as_str()))
        {
            self.member_in_flight.remove(&Self::member(group, gone));
        }
        for (member, held) in &members {
            self.member_in_flight
                .get_or_create(&Self::member(group, member))
                .set(gauge_value(*held));
        }
        self.members
            .get_or_create(&labels)
            .set(gauge_value(members.len() as u64));
        seen.members = members.keys().map(|member| member.to_string()).collect();

        for (counter, last, now) in [
            (&self.redeliveries, &mut seen.redelivered, figures.redelivered),
            (&self.parked, &mut seen.parked, figures.parked),
            (&self.acked, &mut seen.acked, figures.acked),
        ] {
            // Created even at 0, so that rates and increases have a start.
            counter.get_or_create(&labels).inc_by(counted_since(*last, now));
            *last = now;
        }
    }

    /// Drops every series of a deleted group.
    fn remove(&self, group: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let labels = Self::group(group);
        if let Some(seen) = seen.remove(group) {
            self.lag_events.remove(&Self::lag(group, &seen.topic));
            for member in &seen.members {
                self.member_in_flight.remove(&Self::member(group, member));
            }
        }
        self.in_flight.remove(&labels);
        self.members.remove(&labels);
        self.redeliveries.remove(&labels);
        self.parked.remove(&labels);
        self.acked.remove(&labels);
        self.blocked_keys.remove(&labels);
        self.oldest_unsettled_age_seconds.remove(&labels);
    }
}

/// What the collector shows: per-partition and per-cursor figures read from the
/// backend, and the data directory's free space, gathered (asynchronously, off
/// the runtime's threads where it blocks) just before each encoding.
#[derive(Default)]
struct ScrapeState {
    /// Per topic: its description and its cursors.
    topics: Vec<(String, TopicDescription, NamedCursors)>,
    disk: Option<stele_engine::io::DiskSpace>,
}

impl ScrapeState {
    async fn gather(backend: &dyn Backend, log: Option<&Arc<Log>>) -> ScrapeState {
        let mut topics = Vec::new();
        for topic in backend.list_topics().await.unwrap_or_default() {
            // A topic deleted since it was listed is left out.
            let Ok(description) = backend.describe_topic(&topic).await else {
                continue;
            };
            let cursors = backend.cursors(&topic).await.unwrap_or_default();
            topics.push((topic, description, cursors));
        }
        let disk = match log {
            Some(log) => {
                let log = Arc::clone(log);
                match super::backend::blocking(move || log.disk_space()).await {
                    Ok(space) => Some(space),
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the data directory's free space");
                        None
                    }
                }
            }
            None => None,
        };
        ScrapeState { topics, disk }
    }
}

/// Encodes the [`ScrapeState`] last gathered.
struct StateCollector {
    state: Arc<std::sync::Mutex<ScrapeState>>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCollector").finish()
    }
}

/// One gauge family assembled at scrape time.
struct GaugeFamily<L> {
    name: &'static str,
    help: &'static str,
    samples: Vec<(L, i64)>,
}

impl<L: EncodeLabelSet> GaugeFamily<L> {
    fn new(name: &'static str, help: &'static str) -> GaugeFamily<L> {
        GaugeFamily {
            name,
            help,
            samples: Vec::new(),
        }
    }

    fn push(&mut self, labels: L, value: u64) {
        self.samples
            .push((labels, i64::try_from(value).unwrap_or(i64::MAX)));
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(self.name, self.help, None, MetricType::Gauge)?;
        for (labels, value) in &self.samples {
            ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
        }
        Ok(())
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
        let mut high_watermark = GaugeFamily::new(
            "stele_partition_high_watermark",
            "One past the newest acknowledged offset of a partition",
        );
        let mut earliest = GaugeFamily::new(
            "stele_partition_earliest_offset",
            "The oldest retained offset of a partition",
        );
        let mut size = GaugeFamily::new(
            "stele_partition_size_bytes",
            "Bytes of published segment data of a partition",
        );
        let mut segments = GaugeFamily::new(
            "stele_partition_segments",
            "Segment files of a partition, sealed and active",
        );
        let mut quarantined = GaugeFamily::new(
            "stele_partition_quarantined",
            "1 when a partition was opened quarantined (damage recovery may not repair: appends and reads past the damage refused), else 0",
        );
        let mut committed = GaugeFamily::new(
            "stele_cursor_committed_offset",
            "The next offset a named cursor will read in a partition (absent until committed there)",
        );
        let mut lag = GaugeFamily::new(
            "stele_cursor_lag_events",
            "Events between a cursor's committed offset (or the earliest offset) and the high watermark",
        );
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (topic, description, cursors) in &state.topics {
            for info in &description.partitions {
                let labels = PartitionLabels {
                    topic: topic.clone(),
                    partition: info.partition.0,
                };
                high_watermark.push(labels.clone(), info.high_watermark.0);
                earliest.push(labels.clone(), info.earliest.0);
                size.push(labels.clone(), info.size_bytes);
                segments.push(labels.clone(), info.segments_count as u64);
                quarantined.push(labels, u64::from(info.quarantine.is_some()));
            }
            for (cursor, positions) in cursors {
                for position in positions {
                    let labels = CursorLabels {
                        topic: topic.clone(),
                        cursor: cursor.clone(),
                        partition: position.partition.0,
                    };
                    if let Some(offset) = position.committed {
                        committed.push(labels.clone(), offset.0);
                    }
                    lag.push(labels, position.lag);
                }
            }
        }
        high_watermark.encode(&mut encoder)?;
        earliest.encode(&mut encoder)?;
        size.encode(&mut encoder)?;
        segments.encode(&mut encoder)?;
        quarantined.encode(&mut encoder)?;
        committed.encode(&mut encoder)?;
        lag.encode(&mut encoder)?;
        let mut available = GaugeFamily::<[(&str, &str); 0]>::new(
            "stele_disk_available_bytes",
            "Bytes available to Stele on the data directory's filesystem",
        );
        let mut capacity = GaugeFamily::<[(&str, &str); 0]>::new(
            "stele_disk_capacity_bytes",
            "Size of the data directory's filesystem",
        );
        if let Some(space) = &state.disk {
            available.push([], space.available_bytes);
            capacity.push([], space.capacity_bytes);
        }
        available.encode(&mut encoder)?;
        capacity.encode(&mut encoder)
    }
}

/// Everything the server exposes to Prometheus.
pub struct ServerMetrics {
    registry: Registry,
    requests: RequestMetrics,
    webhook: WebhookMetrics,
    group: GroupMetrics,
    rpc: Arc<super::rpc_metrics::RpcMetrics>,
    backend: Arc<dyn Backend>,
    log: Option<Arc<Log>>,
    /// What the collector encodes; one scrape gathers and encodes at a time.
    state: Arc<std::sync::Mutex<ScrapeState>>,
    scrape: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerMetrics").finish()
    }
}

impl ServerMetrics {
    /// A registry with the engine's families (when there is an engine), the
    /// server's, the webhook and group families and a collector reading `backend` (and
    /// `log`'s free disk space) at scrape time.
    pub fn new(backend: Arc<dyn Backend>, log: Option<Arc<Log>>) -> ServerMetrics {
        let mut registry = Registry::default();
        if let Some(log) = &log {
            log.metrics().register(&mut registry);
        }
        let requests = RequestMetrics::new();
        requests.register(&mut registry);
        let webhook = WebhookMetrics::new();
        webhook.register(&mut registry);
        let group = GroupMetrics::new();
        group.register(&mut registry);
        let rpc = Arc::new(super::rpc_metrics::RpcMetrics::default());
        rpc.register(&mut registry);
        let state = Arc::new(std::sync::Mutex::new(ScrapeState::default()));
        registry.register_collector(Box::new(StateCollector {
            state: Arc::clone(&state),
        }));
        registry.register_collector(Box::new(super::process_metrics::ProcessCollector));
        ServerMetrics {
            registry,
            requests,
            webhook,
            group,
            rpc,
            backend,
            log,
            state,
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// The webhook families, for the webhook dispatcher to report into.
    pub fn webhook(&self) -> &WebhookMetrics {
        &self.webhook
    }

    /// The per-RPC families, for the services' [`RpcMetered`](super::rpc_metrics::RpcMetered) wrappers.
    pub fn rpc(&self) -> Arc<super::rpc_metrics::RpcMetrics> {
        Arc::clone(&self.rpc)
    }

    /// Counts the damaged files that opening `log` repaired (an unreadable
    /// checkpoint rebuilt, damaged dedup runs dropped) and the partitions it
    /// opened quarantined as detected corruption.
    pub fn count_recovery_damage(&self, log: &Log) {
        for name in log.topics() {
            let Ok(topic) = log.topic(&name) else {
                continue;
            };
            let damaged: u64 = topic
                .recovery_reports()
                .iter()
                .map(|report| {
                    u64::from(report.checkpoint_rebuilt)
                        + report.dedup_runs_dropped as u64
                        + u64::from(report.quarantine.is_some())
                })
                .sum();
            if damaged > 0 {
                self.requests
                    .corruption_detected
                    .get_or_create(&TopicLabels::new(&name))
                    .inc_by(damaged);
            }
        }
    }

    /// The exposition in the Prometheus text format, with the backend's state
    /// read now.
    ///
    /// # Errors
    /// Only if formatting fails, which writing to a `String` does not.
    pub async fn encode(&self) -> std::result::Result<String, std::fmt::Error> {
        let _scrape = self.scrape.lock().await;
        let state = ScrapeState::gather(&*self.backend, self.log.as_ref()).await;
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Decreases the open-subscription gauge when the subscription ends.
/// A subscription's meter: the open-subscriptions gauge while it lives, its
/// events counted, and the inner backend's own meter.
struct SubscriptionGuard {
    inner: Box<dyn super::backend::SubscriptionMeter>,
    active: Gauge,
    events: Counter,
}

impl super::backend::SubscriptionMeter for SubscriptionGuard {
    fn sent(&self, events: usize) {
        self.events.inc_by(events as u64);
        self.inner.sent(events);
    }
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// A [`Backend`] that records append, subscription and corruption metrics
/// around another backend.
pub struct MeteredBackend {
    inner: Arc<dyn Backend>,
    metrics: Arc<ServerMetrics>,
}

impl MeteredBackend {
    /// Meters `inner` into `metrics`.
    pub fn new(inner: Arc<dyn Backend>, metrics: Arc<ServerMetrics>) -> MeteredBackend {
        MeteredBackend { inner, metrics }
    }

    fn requests(&self) -> &RequestMetrics {
        &self.metrics.requests
    }
}

/// Events and bytes of one request.
fn request_size(request: &AppendRequest) -> (u64, u64) {
    let bytes = request
        .events
        .iter()
        .map(|event| {
            event.event_type.len()
                + event.payload.len()
                + event
                    .headers
                    .iter()
                    .map(|(name, value)| name.len() + value.len())
                    .sum::<usize>()
                + event.idempotency_id.as_ref().map_or(0, Vec::len)
        })
        .sum::<usize>();
    (request.events.len() as u64, bytes as u64)
}

/// Requests, events and bytes of one append call, per result.
#[derive(Default)]
struct AppendTally([(u64, u64, u64); AppendResult::ALL.len()]);

impl AppendTally {
    fn add(&mut self, result: AppendResult, (events, bytes): (u64, u64)) {
        let slot = &mut self.0[result as usize];
        slot.0 += 1;
        slot.1 += events;
        slot.2 += bytes;
    }
}

impl RequestMetrics {
    /// `topic`'s append series, made on its first call.
    fn append_handles(&self, topic: &str) -> Arc<TopicAppendHandles> {
        if let Some(handles) = self
            .append_handles
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
        {
            return Arc::clone(handles);
        }
        let mut cache = self
            .append_handles
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let handles = cache.entry(topic.to_string()).or_insert_with(|| {
            Arc::new(TopicAppendHandles {
                results: Default::default(),
                duration: std::sync::OnceLock::new(),
            })
        });
        Arc::clone(handles)
    }

    /// `topic`'s append duration histogram, made on its first observation.
    fn append_duration<'a>(&self, topic: &str, handles: &'a TopicAppendHandles) -> &'a Histogram {
        handles.duration.get_or_init(|| {
            self.append_duration_seconds
                .get_or_create_owned(&TopicLabels::new(topic))
        })
    }

    /// Adds one call's tally to a topic's handles: no label or family lookup
    /// once each result's series exists.
    fn record_appends(&self, topic: &str, handles: &TopicAppendHandles, tally: &AppendTally) {
        for ((result, (requests, events, bytes)), slot) in
            AppendResult::ALL.iter().zip(&tally.0).zip(&handles.results)
        {
            if *requests == 0 {
                continue;
            }
            let [requests_counter, events_counter, bytes_counter] = slot.get_or_init(|| {
                let labels = AppendLabels {
                    topic: topic.to_string(),
                    result: result.as_str(),
                };
                [
                    self.append_requests.get_or_create_owned(&labels),
                    self.append_events.get_or_create_owned(&labels),
                    self.append_bytes.get_or_create_owned(&labels),
                ]
            });
            requests_counter.inc_by(*requests);
            events_counter.inc_by(*events);
            bytes_counter.inc_by(*bytes);
        }
    }
}

impl MeteredBackend {
    /// Counts a corruption error of `future`'s result under `topic`.
    fn watched<T: Send + 'static>(&self, topic: &str, future: BoxFuture<Result<T>>) -> BoxFuture<Result<T>> {
        let metrics = Arc::clone(&self.metrics);
        let topic = topic.to_string();
        Box::pin(async move {
            let result = future.await;
            metrics.requests.watch(&topic, result)
        })
    }
}

impl Backend for MeteredBackend {
    fn default_topic_options(&self) -> TopicOptions {
        self.inner.default_topic_options()
    }

    fn create_topic(&self, name: &str, options: TopicOptions) -> BoxFuture<Result<TopicOptions>> {
        self.inner.create_topic(name, options)
    }

    fn describe_topic(&self, name: &str) -> BoxFuture<Result<TopicDescription>> {
        self.watched(name, self.inner.describe_topic(name))
    }

    fn list_topics(&self) -> BoxFuture<Result<Vec<String>>> {
        self.inner.list_topics()
    }

    fn update_topic(
        &self,
        name: &str,
        change: stele_engine::TopicChange,
        principal: &str,
    ) -> BoxFuture<Result<stele_engine::TopicUpdate>> {
        self.watched(name, self.inner.update_topic(name, change, principal))
    }

    fn delete_topic(&self, name: &str) -> BoxFuture<Result<()>> {
        let future = self.inner.delete_topic(name);
        let metrics = Arc::clone(&self.metrics);
        let name = name.to_string();
        Box::pin(async move {
            let result = future.await;
            if result.is_ok() {
                metrics.requests.remove_topic(&name);
            }
            result
        })
    }

    fn append(&self, topic: &str, requests: Vec<AppendRequest>) -> BoxFuture<Result<Vec<Result<AppendAck>>>> {
        let started = Instant::now();
        let sizes: Vec<(u64, u64)> = requests.iter().map(request_size).collect();
        let future = self.inner.append(topic, requests);
        let metrics = Arc::clone(&self.metrics);
        let topic = topic.to_string();
        Box::pin(async move {
            let outcome = future.await;
            let requests = &metrics.requests;
            let mut tally = AppendTally::default();
            match &outcome {
                Ok(results) => {
                    let elapsed = started.elapsed().as_secs_f64();
                    let handles = requests.append_handles(&topic);
                    let duration = requests.append_duration(&topic, &handles);
                    let mut corrupt = 0;
                    for (result, size) in results.iter().zip(&sizes) {
                        tally.add(AppendResult::of(result), *size);
                        duration.observe(elapsed);
                        if let Err(error) = result
                            && error.kind() == ErrorKind::Corruption
                        {
                            corrupt += 1;
                        }
                    }
                    requests.record_appends(&topic, &handles, &tally);
                    if corrupt > 0 {
                        requests
                            .corruption_detected
                            .get_or_create(&TopicLabels::new(&topic))
                            .inc_by(corrupt);
                    }
                }
                Err(error) => {
                    // The topic does not exist or cannot be created: keep its name
                    // out of the labels.
                    let result = AppendResult::of_kind(error.kind());
                    for size in &sizes {
                        tally.add(result, *size);
                    }
                    requests.record_appends(TOPIC_UNKNOWN, &requests.append_handles(TOPIC_UNKNOWN), &tally);
                }
            }
            outcome
        })
    }

    fn open_producer(&self, topic: &str, name: &str) -> BoxFuture<Result<(ProducerId, Epoch)>> {
        self.inner.open_producer(topic, name)
    }

    fn scan(
        &self,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        count_max: usize,
        bytes_max: u64,
        filter: &EventFilter,
    ) -> BoxFuture<Result<StoredEvents>> {
        let scanned = self.watched(
            topic,
            self.inner
                .scan(topic, partition, from, count_max, bytes_max, filter),
        );
        let (metrics, topic) = (Arc::clone(&self.metrics), topic.to_string());
        Box::pin(async move {
            let result = scanned.await;
            // Counted only once the topic is known to exist (a label).
            if let Ok(events) = &result {
                metrics.requests.count_read(&topic, events.len());
            }
            result
        })
    }

    fn read_key(
        &self,
        topic: &str,
        key: &[u8],
        from: Option<Sequence>,
        direction: Direction,
        count_max: usize,
    ) -> BoxFuture<Result<KeyHistory>> {
        let read = self.watched(topic, self.inner.read_key(topic, key, from, direction, count_max));
        let (metrics, topic) = (Arc::clone(&self.metrics), topic.to_string());
        Box::pin(async move {
            let result = read.await;
            if let Ok(history) = &result {
                metrics.requests.count_read(&topic, history.events.len());
            }
            result
        })
    }

    fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> BoxFuture<Result<Offset>> {
        self.watched(
            topic,
            self.inner.offset_for_timestamp(topic, partition, timestamp_ms),
        )
    }

    fn high_watermark(&self, topic: &str, partition: PartitionId) -> BoxFuture<Result<Offset>> {
        self.inner.high_watermark(topic, partition)
    }

    fn earliest(&self, topic: &str, partition: PartitionId) -> BoxFuture<Result<Offset>> {
        self.inner.earliest(topic, partition)
    }

    fn wait_past(&self, topic: &str, partition: PartitionId, after: Offset) -> BoxFuture<Result<Offset>> {
        self.inner.wait_past(topic, partition, after)
    }

    fn commit_cursor(
        &self,
        topic: &str,
        name: &str,
        offsets: Vec<(PartitionId, Offset)>,
        allow_backwards: bool,
    ) -> BoxFuture<Result<()>> {
        self.watched(
            topic,
            self.inner.commit_cursor(topic, name, offsets, allow_backwards),
        )
    }

    fn cursor(&self, topic: &str, name: &str) -> BoxFuture<Result<Vec<CursorPosition>>> {
        self.inner.cursor(topic, name)
    }

    fn cursors(&self, topic: &str) -> BoxFuture<Result<NamedCursors>> {
        self.inner.cursors(topic)
    }

    fn delete_cursor(&self, topic: &str, name: &str) -> BoxFuture<Result<()>> {
        self.inner.delete_cursor(topic, name)
    }

    fn shutdown(&self) -> BoxFuture<()> {
        self.inner.shutdown()
    }

    fn subscription_started(&self, topic: &str) -> Box<dyn super::backend::SubscriptionMeter> {
        let labels = TopicLabels::new(topic);
        let active = self.requests().subscriptions_active.get_or_create_owned(&labels);
        active.inc();
        Box::new(SubscriptionGuard {
            inner: self.inner.subscription_started(topic),
            active,
            events: self.requests().subscription_events.get_or_create_owned(&labels),
        })
    }
}

/// The `/metrics` HTTP listener.
pub struct MetricsEndpoint {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    served: Option<tokio::task::JoinHandle<()>>,
}

impl MetricsEndpoint {
    /// Binds `listen` and serves `GET /metrics` from `metrics`. Must be called
    /// within a tokio runtime.
    ///
    /// # Errors
    /// I/O errors binding the listener.
    pub async fn start(listen: SocketAddr, metrics: Arc<ServerMetrics>) -> Result<MetricsEndpoint> {
        MetricsEndpoint::start_with_tls(listen, metrics, None, None).await
    }

    /// As [`MetricsEndpoint::start`], over HTTPS with `tls` when given (its
    /// `http/1.1` configuration current at each handshake, so that it follows
    /// reloads), and with `auth` deciding who may scrape (a bearer token or a
    /// client certificate holding `metrics:*` under `--auth required`).
    ///
    /// # Errors
    /// I/O errors binding the listener.
    pub async fn start_with_tls(
        listen: SocketAddr,
        metrics: Arc<ServerMetrics>,
        tls: Option<Arc<TlsAcceptor>>,
        auth: Option<Arc<Authenticator>>,
    ) -> Result<MetricsEndpoint> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|error| Error::io("bind metrics listener", listen.to_string(), error))?;
        let local_addr = listener
            .local_addr()
            .map_err(|error| Error::io("read metrics listener address", listen.to_string(), error))?;
        let (stop, stopped) = watch::channel(false);
        let https = tls.is_some();
        let served = tokio::spawn(accept(listener, metrics, tls, auth, stopped));
        tracing::info!(%local_addr, https, "serving metrics on {METRICS_PATH}");
        Ok(MetricsEndpoint {
            local_addr,
            stop,
            served: Some(served),
        })
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and waits (a bounded time) for scrapes in progress.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(served) = self.served.take() {
            let _ = served.await;
        }
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept(
    listener: TcpListener,
    metrics: Arc<ServerMetrics>,
    tls: Option<Arc<TlsAcceptor>>,
    auth: Option<Arc<Authenticator>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        // Finished connections are reaped so that the set stays bounded.
        while connections.try_join_next().is_some() {}
        if connections.len() >= CONNECTIONS_COUNT_MAX {
            tokio::select! {
                _ = connections.join_next() => continue,
                _ = stop_requested(&mut stopped) => break,
            }
        }
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, for example: back off instead of spinning.
                    tracing::warn!(%error, "metrics listener cannot accept");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            _ = stop_requested(&mut stopped) => break,
        };
        let metrics = Arc::clone(&metrics);
        let auth = auth.clone();
        let mut stopped = stopped.clone();
        // The configuration current now, so that a reload applies to later scrapes.
        let tls_config = tls.as_ref().map(|tls| tls.http1_config());
        connections.spawn(async move {
            // The handshake runs in the connection's task (bounded by the
            // connection count), under its own timeout.
            let stream = match tls_config {
                None => ServerIo::plain(stream, Some(remote)),
                Some(config) => match TlsAcceptor::handshake(config, stream, Some(remote)).await {
                    Ok(stream) => stream,
                    Err(error) => {
                        tracing::debug!(%error, %remote, "metrics TLS handshake failed");
                        return;
                    }
                },
            };
            let connection_info = tonic::transport::server::Connected::connect_info(&stream);
            let service = hyper::service::service_fn(move |request| {
                respond(
                    request,
                    Arc::clone(&metrics),
                    auth.clone(),
                    connection_info.clone(),
                )
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop_requested(&mut stopped) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_WAIT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
}

/// Resolves once a stop is requested (or the endpoint is gone).
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

async fn respond(
    request: Request<Incoming>,
    metrics: Arc<ServerMetrics>,
    auth: Option<Arc<Authenticator>>,
    connection: crate::tls::ConnectionInfo,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        Ok(response)
    };
    if request.uri().path() != METRICS_PATH {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!("not found; metrics are at {METRICS_PATH}\n"),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".to_string(),
        );
    }
    if let Some(auth) = &auth {
        let metadata = tonic::metadata::MetadataMap::from_headers(request.headers().clone());
        if let Err(status) = auth.authorize_metrics(
            &metadata,
            connection.remote,
            connection.certificate_subject.as_deref(),
        ) {
            let (code, text) = if status.code() == tonic::Code::Unauthenticated {
                (
                    StatusCode::UNAUTHORIZED,
                    "a valid credential is required: send `Authorization: Bearer <token>`\n",
                )
            } else {
                (
                    StatusCode::FORBIDDEN,
                    "permission denied: scraping needs the grant metrics:*\n",
                )
            };
            let mut response = Response::new(Full::new(Bytes::from(text)));
            *response.status_mut() = code;
            if code == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static("Bearer"),
                );
            }
            return Ok(response);
        }
    }
    // What blocks (partition summaries, the free-space call) runs off the
    // async threads, through the backend; encoding is formatting only.
    match metrics.encode().await {
        Ok(text) => reply(StatusCode::OK, CONTENT_TYPE, text),
        Err(error) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("cannot encode metrics: {error}\n"),
        ),
    }
}

/// The dispatcher reports deliveries straight into the webhook families.
impl super::webhook::DeliveryObserver for ServerMetrics {
    fn attempt(&self, endpoint: &str) {
        self.webhook.attempt(endpoint);
    }
    fn outcome(&self, endpoint: &str, outcome: &str, status_class: &str) {
        self.webhook.outcome(endpoint, outcome, status_class);
    }
    fn retry_delay(&self, endpoint: &str, delay: Duration) {
        self.webhook.retry_delay(endpoint, delay);
    }
    fn delivered(&self, endpoint: &str, latency: Duration) {
        self.webhook.delivered(endpoint, latency);
    }
    fn lag(&self, endpoint: &str, events: u64) {
        self.webhook.lag(endpoint, events);
    }
    fn circuit(&self, endpoint: &str, state: i64) {
        self.webhook.circuit(endpoint, state);
    }
    fn dead_lettered(&self, endpoint: &str) {
        self.webhook.dead_lettered(endpoint);
    }
    fn remove(&self, endpoint: &str) {
        self.webhook.remove(endpoint);
    }
}

/// The group runners report their figures straight into the group families.
impl super::group::GroupObserver for ServerMetrics {
    fn report(&self, group: &str, figures: &super::group::GroupFigures) {
        self.group.report(group, figures);
    }
    fn remove(&self, group: &str) {
        self.group.remove(group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_results_index_their_tally_slots() {
        // Goal: `AppendTally` indexes by discriminant; `ALL` must list the
        // results in declaration order for the labels to match the counts.
        for (index, result) in AppendResult::ALL.iter().enumerate() {
            assert_eq!(*result as usize, index, "{result:?}");
        }
    }

    #[test]
    fn every_error_kind_has_an_append_result() {
        // Goal: the classification names the results the dashboard and alerts
        // use, and server-side failures are `error`, not `rejected`.
        assert_eq!(
            AppendResult::of_kind(ErrorKind::WrongExpectedSequence).as_str(),
            "sequence_conflict"
        );
        assert_eq!(
            AppendResult::of_kind(ErrorKind::ProducerFenced).as_str(),
            "fenced"
        );
        assert_eq!(
            AppendResult::of_kind(ErrorKind::InvalidArgument).as_str(),
            "rejected"
        );
        assert_eq!(AppendResult::of_kind(ErrorKind::DiskFull).as_str(), "error");
        assert_eq!(AppendResult::of_kind(ErrorKind::Poisoned).as_str(), "error");
    }

    #[test]
    fn removing_a_webhook_endpoint_drops_its_samples() {
        // Goal: a deleted endpoint leaves the exposition, other endpoints stay.
        let webhook = WebhookMetrics::new();
        let mut registry = Registry::default();
        webhook.register(&mut registry);
        for endpoint in ["billing", "audit"] {
            webhook.attempt(endpoint);
            webhook.outcome(endpoint, "retry", "5xx");
            webhook.retry_delay(endpoint, Duration::from_secs(2));
            webhook.delivered(endpoint, Duration::from_millis(30));
            webhook.lag(endpoint, 4);
            webhook.circuit(endpoint, WebhookMetrics::CIRCUIT_OPEN);
            webhook.dead_lettered(endpoint);
        }
        webhook.remove("billing");
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).expect("encodes");
        assert!(!text.contains("billing"), "{text}");
        assert!(
            text.contains("stele_webhook_circuit_state{endpoint=\"audit\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "stele_webhook_deliveries_total{endpoint=\"audit\",outcome=\"retry\",status_class=\"5xx\"} 1\n"
            ),
            "{text}"
        );
    }

    /// Figures of a group on `topic` with these members and counts.
    fn figures(
        topic: &str,
        members: &[(&str, u64)],
        (redelivered, parked, acked): (u64, u64, u64),
    ) -> super::super::group::GroupFigures {
        super::super::group::GroupFigures {
            topic: topic.to_string(),
            lag: 7,
            floors: vec![(10, 2)],
            in_flight: members.iter().map(|(_, held)| held).sum(),
            members: members
                .iter()
                .map(|(member, held)| (member.to_string(), *held))
                .collect(),
            redelivered,
            parked,
            acked,
            blocked_keys: 1,
            oldest_unsettled_age_ms: 1_500,
        }
    }

    /// The group families alone, registered.
    fn group_registry() -> (GroupMetrics, Registry) {
        let group = GroupMetrics::new();
        let mut registry = Registry::default();
        group.register(&mut registry);
        (group, registry)
    }

    fn encoded(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, registry).expect("encodes");
        text
    }

    #[test]
    fn counted_since_adds_growth_and_restarts_from_a_fall() {
        // Goal: the counter rule on its own: growth is added, no change adds
        // nothing, a fall is a runner restart whose whole count is new.
        assert_eq!(counted_since(0, 0), 0);
        assert_eq!(counted_since(3, 8), 5);
        assert_eq!(counted_since(8, 8), 0);
        assert_eq!(counted_since(8, 2), 2);
        assert_eq!(counted_since(8, 0), 0);
    }

    #[test]
    fn group_counters_stay_monotonic_across_a_runner_restart() {
        // Goal: the exported counters never fall although the runner's counts
        // restart at 0. Method: reports of (redelivered, parked, acked) rising,
        // repeated, then fallen (a restart), then rising again; each counter is
        // the sum of the growths, a fall adding the new count whole.
        let (group, registry) = group_registry();
        for counts in [(1, 0, 5), (2, 1, 8), (2, 1, 8), (0, 0, 2), (1, 0, 6)] {
            group.report("billing", &figures("orders", &[], counts));
        }
        let text = encoded(&registry);
        for expected in [
            "stele_group_redeliveries_total{group=\"billing\"} 3\n",
            "stele_group_parked_total{group=\"billing\"} 1\n",
            "stele_group_acked_total{group=\"billing\"} 14\n",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
    }

    #[test]
    fn group_gauges_follow_the_latest_report() {
        // Goal: each gauge is the latest figure, with the documented labels and
        // units (the age in seconds).
        let (group, registry) = group_registry();
        group.report("billing", &figures("orders", &[("a", 1), ("b", 2)], (0, 0, 0)));
        let mut latest = figures("orders", &[("a", 4)], (0, 0, 0));
        latest.lag = 12;
        latest.blocked_keys = 0;
        latest.oldest_unsettled_age_ms = 2_250;
        group.report("billing", &latest);
        let text = encoded(&registry);
        for expected in [
            "stele_group_lag_events{group=\"billing\",topic=\"orders\"} 12\n",
            "stele_group_in_flight{group=\"billing\"} 4\n",
            "stele_group_member_in_flight{group=\"billing\",member=\"a\"} 4\n",
            "stele_group_members{group=\"billing\"} 1\n",
            "stele_group_blocked_keys{group=\"billing\"} 0\n",
            "stele_group_oldest_unsettled_age_seconds{group=\"billing\"} 2.25\n",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
    }

    #[test]
    fn members_no_longer_present_lose_their_series() {
        // Goal: a member that left (or was replaced) leaves the exposition at
        // the next report; one that stays keeps its series. An instance id
        // with quotes and a backslash is escaped. A group whose topic changed
        // keeps only the new topic's lag series.
        let (group, registry) = group_registry();
        let odd = "host \"7\" \\ pid";
        group.report("billing", &figures("orders", &[("a", 1), (odd, 2)], (0, 0, 0)));
        let text = encoded(&registry);
        assert!(
            text.contains(
                "stele_group_member_in_flight{group=\"billing\",member=\"host \\\"7\\\" \\\\ pid\"} 2\n"
            ),
            "{text}"
        );
        group.report("billing", &figures("orders-v2", &[("b", 3), ("a", 0)], (0, 0, 0)));
        let text = encoded(&registry);
        assert!(!text.contains("host"), "{text}");
        assert!(!text.contains("topic=\"orders\""), "{text}");
        assert!(
            text.contains("stele_group_lag_events{group=\"billing\",topic=\"orders-v2\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("stele_group_member_in_flight{group=\"billing\",member=\"a\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("stele_group_member_in_flight{group=\"billing\",member=\"b\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("stele_group_members{group=\"billing\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn removing_a_group_drops_every_series_of_it() {
        // Goal: a deleted group leaves the exposition (every family, every
        // member), other groups stay, the families stay declared, and a group
        // created again under the same name counts from 0.
        let (group, registry) = group_registry();
        for name in ["billing", "audit"] {
            group.report(name, &figures("orders", &[("a", 1), ("b", 2)], (4, 2, 9)));
        }
        group.remove("billing");
        let text = encoded(&registry);
        assert!(!text.contains("billing"), "{text}");
        assert!(
            text.contains("stele_group_acked_total{group=\"audit\"} 9\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE stele_group_acked_total counter\n"),
            "{text}"
        );
        group.report("billing", &figures("orders", &[], (0, 0, 1)));
        let text = encoded(&registry);
        assert!(
            text.contains("stele_group_acked_total{group=\"billing\"} 1\n"),
            "{text}"
        );
    }
}

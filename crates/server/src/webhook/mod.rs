//! Webhook delivery: events of a topic POSTed to registered HTTP endpoints,
//! signed by the Standard Webhooks scheme, at least once and in order per key.
//!
//! - [`store`]: the durable endpoint definitions (`webhooks.journal`).
//! - [`delivery`]: one loop per active endpoint: read, order per key, deliver,
//!   retry, dead-letter, commit the endpoint's cursor.
//! - [`policy`], [`breaker`], [`ssrf`]: pure decisions (retry and backoff, the
//!   circuit breaker, which addresses may be reached), unit-tested alone.
//! - [`signature`], [`body`], [`http`]: what is sent and how.
//!
//! The [`Dispatcher`] supervises the loops: it starts one per active endpoint,
//! restarts a loop that failed (after a pause), and stops them on pause, delete
//! and shutdown. It talks to storage only through [`Backend`].
//!
//! Invariant: an endpoint's position is its engine cursor `webhook.<name>` on its
//! topic, committed only up to the first unfinished event: delivery after a crash
//! resumes there (at least once, with the same `webhook-id`).
//! Invariant: a slow receiver holds back only its own endpoint: appends never wait
//! for delivery, and each endpoint buffers a bounded number of events.
//!
//! It does not pool connections (one per request) or follow redirects.

pub mod body;
pub mod breaker;
pub mod delivery;
pub mod http;
pub mod policy;
pub mod signature;
pub mod ssrf;
pub use stele_engine::webhook as store;
pub use stele_wire::webhook::{DeadLetterView, NewWebhook, WebhookSettings, WebhookView};

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use self::breaker::Breaker;
use self::http::HttpClient;
use self::ssrf::{AddressPolicy, Network};
use super::backend::Backend;
use stele_engine::error::{Error, Result};
use stele_engine::event::{Offset, PartitionId};
use stele_engine::limits;
use stele_engine::webhook::{DeliverySettings, Endpoint, WebhookStore, defaults};
use stele_engine::{EventFilter, EventRef};

/// The pause before a failed delivery loop is started again.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Receives delivery measurements (the Prometheus metrics implement it).
///
/// `outcome` is one of `success`, `retry`, `permanent_failure`, `dead_lettered`;
/// `status_class` one of `2xx`, `3xx`, `4xx`, `5xx`, `timeout`, `connection`;
/// `circuit` is 0 closed, 1 half-open, 2 open; `latency` runs from the event's
/// append timestamp to its successful delivery.
pub trait DeliveryObserver: Send + Sync {
    /// An attempt is about to be sent.
    fn attempt(&self, endpoint: &str);
    /// An attempt ended.
    fn outcome(&self, endpoint: &str, outcome: &str, status_class: &str);
    /// A retry waits this long.
    fn retry_delay(&self, endpoint: &str, delay: std::time::Duration);
    /// An event was delivered.
    fn delivered(&self, endpoint: &str, latency: std::time::Duration);
    /// Events of the endpoint's topic not yet finished.
    fn lag(&self, endpoint: &str, events: u64);
    /// The circuit breaker's state.
    fn circuit(&self, endpoint: &str, state: i64);
    /// An event was dead-lettered.
    fn dead_lettered(&self, endpoint: &str);
    /// The endpoint was deleted: forget its series.
    fn remove(&self, endpoint: &str);
    /// Keys whose delivery the endpoint's loop has in flight now (sending,
    /// waiting for the breaker or between retries); reported whenever it changes.
    /// At most the endpoint's `in_flight_max`. The default ignores it.
    fn in_flight(&self, endpoint: &str, keys: usize) {
        let _ = (endpoint, keys);
    }
}

/// Reports to several observers in turn (the server's metrics and, in tests,
/// a recording observer).
pub struct Observers(pub Vec<Arc<dyn DeliveryObserver>>);

impl DeliveryObserver for Observers {
    fn attempt(&self, endpoint: &str) {
        self.0.iter().for_each(|observer| observer.attempt(endpoint));
    }
    fn outcome(&self, endpoint: &str, outcome: &str, status_class: &str) {
        self.0
            .iter()
            .for_each(|observer| observer.outcome(endpoint, outcome, status_class));
    }
    fn retry_delay(&self, endpoint: &str, delay: Duration) {
        self.0
            .iter()
            .for_each(|observer| observer.retry_delay(endpoint, delay));
    }
    fn delivered(&self, endpoint: &str, latency: Duration) {
        self.0
            .iter()
            .for_each(|observer| observer.delivered(endpoint, latency));
    }
    fn lag(&self, endpoint: &str, events: u64) {
        self.0.iter().for_each(|observer| observer.lag(endpoint, events));
    }
    fn circuit(&self, endpoint: &str, state: i64) {
        self.0
            .iter()
            .for_each(|observer| observer.circuit(endpoint, state));
    }
    fn dead_lettered(&self, endpoint: &str) {
        self.0
            .iter()
            .for_each(|observer| observer.dead_lettered(endpoint));
    }
    fn remove(&self, endpoint: &str) {
        self.0.iter().for_each(|observer| observer.remove(endpoint));
    }
    fn in_flight(&self, endpoint: &str, keys: usize) {
        self.0
            .iter()
            .for_each(|observer| observer.in_flight(endpoint, keys));
    }
}

/// An observer that records nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl DeliveryObserver for NoopObserver {
    fn attempt(&self, _endpoint: &str) {}
    fn outcome(&self, _endpoint: &str, _outcome: &str, _status_class: &str) {}
    fn retry_delay(&self, _endpoint: &str, _delay: Duration) {}
    fn delivered(&self, _endpoint: &str, _latency: Duration) {}
    fn lag(&self, _endpoint: &str, _events: u64) {}
    fn circuit(&self, _endpoint: &str, _state: i64) {}
    fn dead_lettered(&self, _endpoint: &str) {}
    fn remove(&self, _endpoint: &str) {}
}

/// The names of the headers a dead letter carries besides the original ones.
pub mod dead_letter_headers {
    /// The prefix of every dead-letter header.
    pub const PREFIX: &str = "stele-dl-";
    /// The endpoint that failed.
    pub const ENDPOINT: &str = "stele-dl-endpoint";
    /// Why, in words.
    pub const REASON: &str = "stele-dl-reason";
    /// The last HTTP status, `0` for none.
    pub const STATUS: &str = "stele-dl-status";
    /// Attempts made.
    pub const ATTEMPTS: &str = "stele-dl-attempts";
    /// The original topic.
    pub const TOPIC: &str = "stele-dl-topic";
    /// The original partition.
    pub const PARTITION: &str = "stele-dl-partition";
    /// The original offset.
    pub const OFFSET: &str = "stele-dl-offset";
    /// The original key sequence.
    pub const SEQUENCE: &str = "stele-dl-sequence";
    /// The original append time, Unix ms.
    pub const TIMESTAMP_MS: &str = "stele-dl-timestamp-ms";
    /// The `webhook-id` the event was sent with.
    pub const WEBHOOK_ID: &str = "stele-dl-webhook-id";
    /// How many headers the above are.
    pub const COUNT: usize = 10;

    /// The original event a dead letter (or a group's parked event) carries:
    /// its partition, offset, sequence and time from these headers, without
    /// them, and without the letter's own idempotency id and stamp; `None`
    /// when a header is missing or malformed.
    pub fn original_event(letter: &stele_engine::EventRef<'_>) -> Option<stele_engine::event::RecordedEvent> {
        use stele_engine::event::{Offset, PartitionId, Sequence};
        let number = |name: &str| {
            letter
                .headers
                .get(name)
                .and_then(|value| std::str::from_utf8(value).ok())
                .and_then(|value| value.parse::<i64>().ok())
        };
        let mut event = letter.to_recorded();
        event.partition = PartitionId(u32::try_from(number(PARTITION)?).ok()?);
        event.offset = Offset(u64::try_from(number(OFFSET)?).ok()?);
        event.sequence = Sequence(u64::try_from(number(SEQUENCE)?).ok()?);
        event.timestamp_ms = number(TIMESTAMP_MS)?;
        event.headers.retain(|(name, _)| !name.starts_with(PREFIX));
        // The letter's own id is not the original's.
        event.idempotency_id = None;
        event.producer = None;
        Some(event)
    }
}

/// Server-wide webhook settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Networks that may be targeted even though they are private or loopback.
    pub allow: Vec<Network>,
    /// Requests in flight at once over all endpoints.
    pub in_flight_max: usize,
    /// The request timeout of endpoints created without one, in ms.
    pub timeout_default_ms: u64,
}

/// Default of [`WebhookConfig::in_flight_max`].
pub const IN_FLIGHT_MAX_DEFAULT: usize = 256;

impl Default for WebhookConfig {
    fn default() -> WebhookConfig {
        WebhookConfig {
            allow: Vec::new(),
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
            timeout_default_ms: defaults::TIMEOUT_MS,
        }
    }
}

/// What the loops share.
pub(crate) struct Shared {
    backend: Arc<dyn Backend>,
    client: HttpClient,
    observer: Arc<dyn DeliveryObserver>,
    /// Bounds requests in flight over all endpoints.
    global: Semaphore,
}

/// The live state of one endpoint, kept across pauses while the server runs.
pub(crate) struct EndpointStatus {
    breaker: Mutex<Breaker>,
    /// Signalled when the breaker changes.
    changed: Notify,
    last_error: Mutex<(String, u16)>,
    delivered: AtomicU64,
    dead_lettered: AtomicU64,
}

impl EndpointStatus {
    fn new(settings: &DeliverySettings) -> EndpointStatus {
        EndpointStatus {
            breaker: Mutex::new(Breaker::new(
                settings.breaker_failures,
                Duration::from_millis(settings.breaker_pause_ms),
            )),
            changed: Notify::new(),
            last_error: Mutex::new((String::new(), 0)),
            delivered: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
        }
    }

    fn breaker(&self) -> MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_last_error(&self, message: String, status: u16) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = (message, status);
    }
}

struct Worker {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Supervises one delivery loop per active endpoint.
pub struct Dispatcher {
    shared: Arc<Shared>,
    store: WebhookStore,
    config: WebhookConfig,
    /// Serialises create, pause, resume, delete and redrive.
    changes: tokio::sync::Mutex<()>,
    workers: Mutex<HashMap<String, Worker>>,
    statuses: Mutex<HashMap<String, Arc<EndpointStatus>>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("config", &self.config)
            .finish()
    }
}

impl Dispatcher {
    /// The durable endpoint definitions (for a backup).
    pub fn store(&self) -> &WebhookStore {
        &self.store
    }

    /// Opens the endpoint store in `data_dir` and starts a loop per active
    /// endpoint. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// Errors opening the store; [`Error::Config`] when TLS cannot be set up.
    pub fn start(
        backend: Arc<dyn Backend>,
        data_dir: &Path,
        config: WebhookConfig,
        observer: Arc<dyn DeliveryObserver>,
    ) -> Result<Arc<Dispatcher>> {
        let store = WebhookStore::open(Arc::new(stele_engine::io::StdStorage), data_dir)?;
        let client = HttpClient::new(AddressPolicy {
            allow: config.allow.clone(),
        })
        .map_err(Error::Config)?;
        let dispatcher = Arc::new(Dispatcher {
            shared: Arc::new(Shared {
                backend,
                client,
                observer,
                global: Semaphore::new(config.in_flight_max.max(1)),
            }),
            store,
            config,
            changes: tokio::sync::Mutex::new(()),
            workers: Mutex::new(HashMap::new()),
            statuses: Mutex::new(HashMap::new()),
        });
        for endpoint in dispatcher.store.list() {
            if !endpoint.paused {
                dispatcher.spawn(endpoint);
            }
        }
        Ok(dispatcher)
    }

    fn status(&self, endpoint: &Endpoint) -> Arc<EndpointStatus> {
        let mut statuses = self.statuses.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            statuses
                .entry(endpoint.name.clone())
                .or_insert_with(|| Arc::new(EndpointStatus::new(&endpoint.settings))),
        )
    }

    fn spawn(&self, endpoint: Endpoint) {
        let status = self.status(&endpoint);
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::clone(&self.shared);
        let name = endpoint.name.clone();
        let endpoint = Arc::new(endpoint);
        let task = tokio::spawn(async move {
            let mut stopped = stopped;
            loop {
                let run = delivery::run(
                    Arc::clone(&shared),
                    Arc::clone(&endpoint),
                    Arc::clone(&status),
                    stopped.clone(),
                );
                match run.await {
                    Ok(()) => return,
                    Err(error) => {
                        tracing::warn!(endpoint = %endpoint.name, %error, "webhook delivery stopped; restarting");
                        status.set_last_error(error.to_string(), 0);
                        tokio::select! {
                            _ = tokio::time::sleep(RESTART_PAUSE) => {}
                            _ = stopped.wait_for(|stop| *stop) => return,
                        }
                    }
                }
            }
        });
        let previous = self
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, Worker { stop, task });
        debug_assert!(previous.is_none(), "one loop per endpoint");
    }

    async fn stop_worker(&self, name: &str) {
        let worker = self
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        if let Some(worker) = worker {
            let _ = worker.stop.send(true);
            let _ = worker.task.await;
        }
    }

    /// Registers an endpoint and starts delivering; returns it and its secret's
    /// text form.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad name, URL (malformed, a bad port, or an
    /// address literal in a denied range and not allow-listed, in any spelling a
    /// URL parser accepts), secret (not `whsec_` and base64 of 16 to 64 bytes),
    /// filter or setting;
    /// [`Error::WebhookExists`]; [`Error::LimitExceeded`]; topic and I/O errors.
    pub async fn create(&self, request: NewWebhook) -> Result<(WebhookView, String)> {
        let _serial = self.changes.lock().await;
        store::validate_name(&request.name)?;
        if request.url.len() > limits::WEBHOOK_URL_SIZE_MAX {
            return Err(Error::InvalidArgument(format!(
                "URL is {} bytes, above the limit of {}",
                request.url.len(),
                limits::WEBHOOK_URL_SIZE_MAX
            )));
        }
        let target = http::parse_target(&request.url).map_err(Error::InvalidArgument)?;
        // An address literal is judged now; a name is resolved and its addresses
        // judged at each delivery (the answer may change).
        if let Some(address) = target.address {
            self.shared.client.policy().check(address).map_err(|reason| {
                Error::InvalidArgument(format!(
                    "URL {:?} targets a denied address: {reason}",
                    request.url
                ))
            })?;
        }
        stele_engine::validate_topic_name(&request.topic)?;
        if request.event_types.len() > limits::WEBHOOK_EVENT_TYPES_COUNT_MAX
            || request
                .event_types
                .iter()
                .any(|name| name.is_empty() || name.len() > limits::EVENT_TYPE_SIZE_MAX)
        {
            return Err(Error::InvalidArgument(format!(
                "event type filter: at most {} types of 1 to {} bytes",
                limits::WEBHOOK_EVENT_TYPES_COUNT_MAX,
                limits::EVENT_TYPE_SIZE_MAX
            )));
        }
        if request.key_prefix.len() > limits::KEY_SIZE_MAX {
            return Err(Error::InvalidArgument("key prefix longer than a key".to_string()));
        }
        let secret = match &request.secret {
            Some(text) if !text.is_empty() => {
                signature::decode_secret_strict(text).map_err(Error::InvalidArgument)?
            }
            _ => signature::generate_secret().map_err(Error::Config)?,
        };
        let settings = self.settings(&request.topic, &request.settings)?;
        if self.store.get(&request.name).is_ok() {
            return Err(Error::WebhookExists(request.name));
        }
        let backend = &self.shared.backend;
        for topic in [&request.topic, &settings.dead_letter_topic] {
            match backend.create_topic(topic, backend.default_topic_options()).await {
                Ok(_) | Err(Error::TopicExists(_)) => {}
                Err(error) => return Err(error),
            }
        }
        // Position the cursor before the definition exists, so that a crash in
        // between leaves at worst an unused cursor.
        let cursor = delivery::cursor_name(&request.name);
        for name in [cursor.clone(), delivery::redrive_cursor_name(&request.name)] {
            let topic = if name == cursor {
                &request.topic
            } else {
                &settings.dead_letter_topic
            };
            match backend.delete_cursor(topic, &name).await {
                Ok(()) | Err(Error::CursorNotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        if !request.from_earliest {
            let partitions = backend.describe_topic(&request.topic).await?.partitions;
            let offsets: Vec<(PartitionId, Offset)> = partitions
                .iter()
                .map(|info| (info.partition, info.high_watermark))
                .collect();
            backend
                .commit_cursor(&request.topic, &cursor, offsets, true)
                .await?;
        }
        let endpoint = Endpoint {
            name: request.name.clone(),
            url: request.url.clone(),
            topic: request.topic.clone(),
            event_types: request.event_types.clone(),
            key_prefix: request.key_prefix.clone(),
            secret: secret.clone(),
            paused: false,
            settings,
            redrive_until: Vec::new(),
        };
        self.store.create(endpoint.clone())?;
        self.statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&endpoint.name);
        self.spawn(endpoint.clone());
        Ok((self.view(endpoint).await, signature::encode_secret(&secret)))
    }

    fn settings(&self, topic: &str, requested: &WebhookSettings) -> Result<DeliverySettings> {
        let pick_u32 = |value: u32, default: u32| if value == 0 { default } else { value };
        let pick_u64 = |value: u64, default: u64| if value == 0 { default } else { value };
        let settings = DeliverySettings {
            in_flight_max: pick_u32(requested.in_flight_max, defaults::IN_FLIGHT_MAX),
            attempts_max: pick_u32(requested.attempts_max, defaults::ATTEMPTS_MAX),
            age_max_ms: pick_u64(requested.age_max_ms, defaults::AGE_MAX_MS),
            backoff_initial_ms: pick_u64(requested.backoff_initial_ms, defaults::BACKOFF_INITIAL_MS),
            backoff_max_ms: pick_u64(requested.backoff_max_ms, defaults::BACKOFF_MAX_MS),
            timeout_ms: pick_u64(requested.timeout_ms, self.config.timeout_default_ms),
            breaker_failures: pick_u32(requested.breaker_failures, defaults::BREAKER_FAILURES),
            breaker_pause_ms: pick_u64(requested.breaker_pause_ms, defaults::BREAKER_PAUSE_MS),
            dead_letter_topic: if requested.dead_letter_topic.is_empty() {
                format!("{topic}{}", defaults::DEAD_LETTER_SUFFIX)
            } else {
                requested.dead_letter_topic.clone()
            },
        };
        if settings.in_flight_max > limits::WEBHOOK_IN_FLIGHT_MAX {
            return Err(Error::LimitExceeded {
                what: "webhook in-flight keys",
                value: u64::from(settings.in_flight_max),
                max: u64::from(limits::WEBHOOK_IN_FLIGHT_MAX),
            });
        }
        if settings.attempts_max > limits::WEBHOOK_ATTEMPTS_MAX {
            return Err(Error::LimitExceeded {
                what: "webhook attempts",
                value: u64::from(settings.attempts_max),
                max: u64::from(limits::WEBHOOK_ATTEMPTS_MAX),
            });
        }
        if settings.backoff_initial_ms > settings.backoff_max_ms {
            return Err(Error::InvalidArgument(format!(
                "backoff_initial_ms {} is above backoff_max_ms {}",
                settings.backoff_initial_ms, settings.backoff_max_ms
            )));
        }
        stele_engine::validate_topic_name(&settings.dead_letter_topic)?;
        if settings.dead_letter_topic == topic {
            return Err(Error::InvalidArgument(
                "the dead-letter topic must differ from the delivered topic".to_string(),
            ));
        }
        Ok(settings)
    }

    async fn view(&self, mut endpoint: Endpoint) -> WebhookView {
        let status = self.status(&endpoint);
        endpoint.secret.clear();
        let partitions = self
            .shared
            .backend
            .cursor(&endpoint.topic, &delivery::cursor_name(&endpoint.name))
            .await
            .unwrap_or_default();
        let lag = partitions.iter().map(|position| position.lag).sum();
        let circuit = status.breaker().state(Instant::now()).name();
        let (last_error, last_status) = status
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        WebhookView {
            endpoint,
            circuit,
            partitions,
            lag,
            last_error,
            last_status,
            delivered_count: status.delivered.load(Ordering::Relaxed),
            dead_lettered_count: status.dead_lettered.load(Ordering::Relaxed),
        }
    }

    /// Whether endpoint `name` exists (cheap: no cursor or state is read).
    pub fn exists(&self, name: &str) -> bool {
        self.store.contains(name)
    }

    /// The topic of endpoint `name`, when it exists.
    pub fn topic_of(&self, name: &str) -> Option<String> {
        self.store.get(name).ok().map(|endpoint| endpoint.topic)
    }

    /// Every endpoint with its state.
    pub async fn list(&self) -> Vec<WebhookView> {
        let mut views = Vec::new();
        for endpoint in self.store.list() {
            views.push(self.view(endpoint).await);
        }
        views
    }

    /// Stops delivering to an endpoint, durably; in-flight requests are
    /// abandoned and sent again on resume.
    ///
    /// # Errors
    /// [`Error::WebhookNotFound`]; I/O errors.
    pub async fn pause(&self, name: &str) -> Result<()> {
        let _serial = self.changes.lock().await;
        self.store.update(name, |endpoint| endpoint.paused = true)?;
        self.stop_worker(name).await;
        Ok(())
    }

    /// Resumes an endpoint where it stood.
    ///
    /// # Errors
    /// [`Error::WebhookNotFound`]; I/O errors.
    pub async fn resume(&self, name: &str) -> Result<()> {
        let _serial = self.changes.lock().await;
        let endpoint = self.store.update(name, |endpoint| endpoint.paused = false)?;
        self.stop_worker(name).await;
        self.spawn(endpoint);
        Ok(())
    }

    /// Deletes an endpoint and its cursors. Its dead letters stay.
    ///
    /// # Errors
    /// [`Error::WebhookNotFound`]; I/O errors.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let _serial = self.changes.lock().await;
        let endpoint = self.store.get(name)?;
        self.stop_worker(name).await;
        self.store.delete(name)?;
        for (topic, cursor) in [
            (&endpoint.topic, delivery::cursor_name(name)),
            (
                &endpoint.settings.dead_letter_topic,
                delivery::redrive_cursor_name(name),
            ),
        ] {
            match self.shared.backend.delete_cursor(topic, &cursor).await {
                Ok(()) | Err(Error::CursorNotFound(_)) | Err(Error::TopicNotFound(_)) => {}
                Err(error) => tracing::warn!(%error, "cannot delete a deleted webhook's cursor"),
            }
        }
        self.statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        self.shared.observer.remove(name);
        Ok(())
    }

    /// Visits an endpoint's dead letters not yet redriven, below `until` (by
    /// partition; the high watermark when absent), while `visit` returns true.
    async fn scan_dead_letters(
        &self,
        endpoint: &Endpoint,
        until: Option<&[(u32, u64)]>,
        visit: &mut (dyn FnMut(DeadLetterView) -> bool + Send),
    ) -> Result<()> {
        let backend = &self.shared.backend;
        let topic = &endpoint.settings.dead_letter_topic;
        let positions = match backend
            .cursor(topic, &delivery::redrive_cursor_name(&endpoint.name))
            .await
        {
            Ok(positions) => positions.into_iter().map(|position| position.committed).collect(),
            Err(Error::CursorNotFound(_)) => {
                vec![None; backend.describe_topic(topic).await?.partitions.len()]
            }
            Err(error) => return Err(error),
        };
        for (index, committed) in positions.into_iter().enumerate() {
            let partition = PartitionId(index as u32);
            let mut next = match committed {
                Some(offset) => offset,
                None => backend.earliest(topic, partition).await?,
            };
            let end = match until {
                Some(marks) => Offset(
                    marks
                        .iter()
                        .find(|(mark, _)| *mark == partition.0)
                        .map_or(0, |(_, offset)| *offset),
                ),
                None => backend.high_watermark(topic, partition).await?,
            };
            let mut going = true;
            // Bounded: each scan advances `next` by at least one event below `end`.
            while going && next < end {
                let count_max = ((end.0 - next.0) as usize).min(limits::READ_EVENTS_COUNT_MAX);
                let letters = backend
                    .scan(topic, partition, next, count_max, 4 << 20, &EventFilter::all())
                    .await?;
                next = letters.next_offset();
                for letter in letters.iter() {
                    if letter.offset >= end {
                        next = letter.offset;
                        break;
                    }
                    if delivery::dead_letter_endpoint(&letter) == Some(endpoint.name.as_bytes()) {
                        going = visit(dead_letter_view(&letter));
                        if !going {
                            break;
                        }
                    }
                }
            }
            // A visitor that stopped (a listing's bound reached) stops the
            // whole scan, not just this partition's.
            if !going {
                break;
            }
        }
        Ok(())
    }

    /// An endpoint's dead letters not yet redriven, at most `count_max`.
    ///
    /// # Errors
    /// [`Error::WebhookNotFound`]; topic errors.
    pub async fn dead_letters(&self, name: &str, count_max: usize) -> Result<Vec<DeadLetterView>> {
        let endpoint = self.store.get(name)?;
        let mut letters = Vec::new();
        self.scan_dead_letters(&endpoint, None, &mut |letter| {
            letters.push(letter);
            letters.len() < count_max
        })
        .await?;
        Ok(letters)
    }

    /// Schedules the endpoint's dead letters stored now for delivery again;
    /// returns how many.
    ///
    /// # Errors
    /// [`Error::WebhookNotFound`]; topic and I/O errors.
    pub async fn redrive(&self, name: &str) -> Result<u64> {
        let _serial = self.changes.lock().await;
        let endpoint = self.store.get(name)?;
        let topic = &endpoint.settings.dead_letter_topic;
        let partitions = self.shared.backend.describe_topic(topic).await?.partitions;
        let marks: Vec<(u32, u64)> = partitions
            .iter()
            .map(|info| (info.partition.0, info.high_watermark.0))
            .collect();
        let mut count = 0u64;
        self.scan_dead_letters(&endpoint, Some(&marks), &mut |_| {
            count += 1;
            true
        })
        .await?;
        let endpoint = self
            .store
            .update(name, |endpoint| endpoint.redrive_until = marks)?;
        if !endpoint.paused {
            self.stop_worker(name).await;
            self.spawn(endpoint);
        }
        Ok(count)
    }

    /// Stops every loop (in-flight requests are abandoned; they are sent again
    /// after a restart).
    pub async fn shutdown(&self) {
        let workers: Vec<Worker> = self
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, worker)| worker)
            .collect();
        for worker in &workers {
            let _ = worker.stop.send(true);
        }
        for worker in workers {
            let _ = worker.task.await;
        }
    }
}

fn dead_letter_view(view: &EventRef<'_>) -> DeadLetterView {
    use dead_letter_headers as dl;
    let mut letter = DeadLetterView {
        dead_letter_partition: view.partition.0,
        dead_letter_offset: view.offset.0,
        topic: String::new(),
        partition: 0,
        offset: 0,
        key: view.key.to_vec(),
        event_type: view.event_type.to_string(),
        webhook_id: String::new(),
        reason: String::new(),
        last_status: 0,
        attempts: 0,
    };
    for (name, value) in view.headers.iter() {
        let text = String::from_utf8_lossy(value).into_owned();
        match name {
            dl::TOPIC => letter.topic = text,
            dl::PARTITION => letter.partition = text.parse().unwrap_or(0),
            dl::OFFSET => letter.offset = text.parse().unwrap_or(0),
            dl::WEBHOOK_ID => letter.webhook_id = text,
            dl::REASON => letter.reason = text,
            dl::STATUS => letter.last_status = text.parse().unwrap_or(0),
            dl::ATTEMPTS => letter.attempts = text.parse().unwrap_or(0),
            _ => {}
        }
    }
    letter
}

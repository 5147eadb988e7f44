//! The Stele gRPC server: the service, subscriptions, webhook delivery and metrics
//! over a [`Backend`] (the embedded engine today).
//!
//! [`RunningServer::start`] serves `stele.v1.Stele`, gRPC health and server
//! reflection (v1 and v1alpha) on a TCP listener, and with
//! [`ServerConfig::metrics_listen`] Prometheus metrics on a second one
//! ([`metrics`]); every backend call goes through [`metrics::MeteredBackend`].
//! With [`ServerConfig::tls`] both listeners speak TLS (and mTLS with a client
//! CA), and the certificate reloads on a file change or
//! [`RunningServer::reload_tls`] ([`tls`]).
//! Shutdown stops the metrics listener, stops accepting,
//! ends subscriptions and append sessions after their in-flight work, lets
//! in-flight calls finish, then closes the log (sync, checkpoint).

pub mod auth;
pub mod backend;
mod backup;
pub mod delivery;
pub mod group;
pub mod logging;
pub mod metrics;
pub mod process_metrics;
pub mod rpc_metrics;
mod service;
mod subscription;
pub mod tls;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::service::interceptor::InterceptedService;

pub use backend::{Backend, EngineBackend};
pub use service::SteleService;

use rpc_metrics::RpcMetered;
use stele_engine::Log;
use stele_engine::config::{LogOptions, TopicOptions};
use stele_engine::error::{Error, Result};
use stele_wire::proto;

/// The port `stele serve` listens on by default.
pub const PORT_DEFAULT: u16 = 7077;
pub use stele_wire::{HTTP2_CONNECTION_WINDOW_BYTES, HTTP2_STREAM_WINDOW_BYTES, MESSAGE_SIZE_BYTES_MAX};

/// What a server needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Create unknown topics on first append (with `default_topic`).
    pub auto_create_topics: bool,
    /// Options of topics created without explicit settings.
    pub default_topic: TopicOptions,
    /// Address of the Prometheus `/metrics` endpoint; `None` (the default)
    /// serves no metrics. Port 0 picks a free port.
    pub metrics_listen: Option<SocketAddr>,
    /// Webhook delivery: the SSRF allow-list, concurrency and default timeout.
    pub webhooks: webhook::WebhookConfig,
    /// Tokens, grants and the audit log; `--auth none` by default.
    pub auth: auth::AuthConfig,
    /// TLS (and client certificates) for the gRPC listener and the metrics
    /// endpoint; `None` (the default) serves plaintext.
    pub tls: Option<tls::TlsConfig>,
    /// Threads of the engine's partition worker pool (0: from the cores).
    pub worker_threads: usize,
}

impl ServerConfig {
    /// Defaults: `./stele-data`, `127.0.0.1:7077`, auto-create on.
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], PORT_DEFAULT)),
            auto_create_topics: true,
            default_topic: TopicOptions::default(),
            metrics_listen: None,
            webhooks: webhook::WebhookConfig::default(),
            auth: auth::AuthConfig::default(),
            tls: None,
            worker_threads: 0,
        }
    }
}

/// How often the data directory's free space is checked for the log.
const DISK_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Checks the data directory's free space every [`DISK_CHECK_INTERVAL`] and
/// logs each change of level (low, critical, recovered); ends with the log.
fn spawn_disk_watch(log: std::sync::Weak<Log>) {
    tokio::spawn(async move {
        let watch = logging::DiskWatch::default();
        let mut ticks = tokio::time::interval(DISK_CHECK_INTERVAL);
        loop {
            ticks.tick().await;
            let Some(log) = log.upgrade() else {
                return;
            };
            if log.is_closed() {
                return;
            }
            if let Ok(space) = log.disk_space() {
                watch.check(log.dir(), space.available_bytes, space.capacity_bytes);
            }
        }
    });
}

/// Where a server keeps its events.
pub enum Storage {
    /// The embedded engine over an open log (its directory also holds tokens
    /// and webhook definitions).
    Engine(Arc<Log>),
    /// Another backend (a cluster); `state_dir` holds this server's tokens,
    /// audit defaults and webhook definitions.
    Backend {
        /// The backend.
        backend: Arc<dyn Backend>,
        /// This server's own directory.
        state_dir: PathBuf,
    },
}

/// A server running on a tokio runtime.
pub struct RunningServer {
    local_addr: SocketAddr,
    log: Option<Arc<Log>>,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>>,
    metrics: Arc<metrics::ServerMetrics>,
    metrics_endpoint: Option<metrics::MetricsEndpoint>,
    webhooks: Arc<webhook::Dispatcher>,
    groups: Arc<group::Groups>,
    backend: Arc<dyn Backend>,
    auth: Arc<auth::Authenticator>,
    tls: Option<Arc<tls::TlsAcceptor>>,
    tls_watcher: Option<tokio::task::JoinHandle<()>>,
    accepting: Option<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    /// Opens the data directory and starts serving. Must be called within a
    /// tokio runtime.
    ///
    /// # Errors
    /// [`Error::Locked`] when another process has the directory; I/O errors for
    /// the directory or the listener; [`Error::Config`] for unusable TLS files.
    pub async fn start(config: ServerConfig) -> Result<RunningServer> {
        let log = Arc::new(Log::open(
            &config.data_dir,
            LogOptions::default().worker_threads(config.worker_threads),
        )?);
        tracing::info!(
            worker_threads = log.worker_threads(),
            "partition worker pool started"
        );
        RunningServer::start_with_log(log, config).await
    }

    /// Starts serving an already open log.
    ///
    /// # Errors
    /// I/O errors binding the listener.
    pub async fn start_with_log(log: Arc<Log>, config: ServerConfig) -> Result<RunningServer> {
        RunningServer::start_observed(Storage::Engine(log), config, None).await
    }

    /// Starts serving over `storage`: the embedded engine or another backend.
    ///
    /// # Errors
    /// I/O errors binding the listener or opening the state directory.
    pub async fn start_with_storage(storage: Storage, config: ServerConfig) -> Result<RunningServer> {
        RunningServer::start_observed(storage, config, None).await
    }

    /// [`RunningServer::start_with_storage`], reporting webhook deliveries to
    /// `observer` as well as to the server's metrics.
    ///
    /// # Errors
    /// As [`RunningServer::start_with_storage`].
    pub async fn start_with_storage_observed(
        storage: Storage,
        config: ServerConfig,
        observer: Arc<dyn webhook::DeliveryObserver>,
    ) -> Result<RunningServer> {
        RunningServer::start_observed(storage, config, Some(observer)).await
    }

    /// Starts serving an already open log, reporting webhook deliveries to
    /// `observer` as well as to the server's metrics.
    ///
    /// # Errors
    /// I/O errors binding the listener or opening the webhook store.
    pub async fn start_with_observer(
        log: Arc<Log>,
        config: ServerConfig,
        observer: Arc<dyn webhook::DeliveryObserver>,
    ) -> Result<RunningServer> {
        RunningServer::start_observed(Storage::Engine(log), config, Some(observer)).await
    }

    async fn start_observed(
        storage: Storage,
        config: ServerConfig,
        extra_observer: Option<Arc<dyn webhook::DeliveryObserver>>,
    ) -> Result<RunningServer> {
        config.default_topic.validate()?;
        let (log, backend, state_dir): (Option<Arc<Log>>, Arc<dyn Backend>, PathBuf) = match storage {
            Storage::Engine(log) => {
                let backend = Arc::new(EngineBackend::new(
                    Arc::clone(&log),
                    config.default_topic.clone(),
                    config.auto_create_topics,
                ));
                let dir = log.dir().to_path_buf();
                (Some(log), backend, dir)
            }
            Storage::Backend { backend, state_dir } => {
                std::fs::create_dir_all(&state_dir)
                    .map_err(|error| Error::io("create the state directory", &state_dir, error))?;
                (None, backend, state_dir)
            }
        };
        let authenticator = auth::Authenticator::open(&state_dir, &config.auth)?;
        let tls = match &config.tls {
            Some(tls) => Some(Arc::new(tls::TlsAcceptor::new(tls.clone())?)),
            None => None,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|error| Error::io("bind listener", config.listen.to_string(), error))?;
        let local_addr = listener
            .local_addr()
            .map_err(|error| Error::io("read listener address", config.listen.to_string(), error))?;
        let metrics = Arc::new(metrics::ServerMetrics::new(Arc::clone(&backend), log.clone()));
        if let Some(log) = &log {
            metrics.count_recovery_damage(log);
            spawn_disk_watch(Arc::downgrade(log));
        }
        let backend: Arc<dyn Backend> = Arc::new(metrics::MeteredBackend::new(backend, Arc::clone(&metrics)));
        let metrics_endpoint = match config.metrics_listen {
            Some(listen) => Some(
                metrics::MetricsEndpoint::start_with_tls(
                    listen,
                    Arc::clone(&metrics),
                    tls.clone(),
                    Some(Arc::clone(&authenticator)),
                )
                .await?,
            ),
            None => None,
        };
        let (closing_sender, closing) = watch::channel(false);
        let observer: Arc<dyn webhook::DeliveryObserver> = match extra_observer {
            None => Arc::clone(&metrics) as Arc<dyn webhook::DeliveryObserver>,
            Some(extra) => Arc::new(webhook::Observers(vec![metrics.clone(), extra])),
        };
        let webhooks = webhook::Dispatcher::start(
            Arc::clone(&backend),
            &state_dir,
            config.webhooks.clone(),
            observer,
        )?;
        let groups = group::Groups::start(
            Arc::clone(&backend),
            &state_dir,
            Arc::clone(&metrics) as Arc<dyn group::GroupObserver>,
        )?;
        if config.auth.mode == auth::AuthMode::None && !local_addr.ip().is_loopback() {
            tracing::warn!(
                %local_addr,
                "listening beyond loopback WITHOUT AUTHENTICATION: anyone who can reach this port can read, \
                 write and delete every topic; start with --auth required (README, \"Security\")"
            );
        }
        let service = SteleService::new(Arc::clone(&backend), closing)
            .with_webhooks(Arc::clone(&webhooks))
            .with_groups(Arc::clone(&groups))
            .with_auth(Arc::clone(&authenticator));
        let service = match &log {
            Some(log) => service.with_log(Arc::clone(log)),
            None => service,
        };
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<proto::stele_server::SteleServer<SteleService>>()
            .await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|error| Error::Config(format!("reflection: {error}")))?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|error| Error::Config(format!("reflection: {error}")))?;
        // Reflection tells the schema only, but under --auth required it still
        // needs a valid credential (any grant): nothing is served to strangers
        // but health, which load balancers probe without one.
        let reflection_auth = {
            let auth = Arc::clone(&authenticator);
            move |request: tonic::Request<()>| {
                let (peer, subject) = tls::peer_of(&request);
                auth.authenticate("ServerReflectionInfo", request.metadata(), peer, subject)?;
                Ok(request)
            }
        };
        let reflection_v1 = InterceptedService::new(reflection_v1, reflection_auth.clone());
        let reflection_v1alpha = InterceptedService::new(reflection_v1alpha, reflection_auth);
        let stele = proto::stele_server::SteleServer::new(service)
            .max_decoding_message_size(MESSAGE_SIZE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_SIZE_BYTES_MAX);
        let stele = MessageLimitStatus { inner: stele };
        let rpc = metrics.rpc();
        let (stop, stopped) = oneshot::channel::<()>();
        // Plaintext connections go through the same IO type, so that every
        // request carries a `tls::ConnectionInfo`.
        let (incoming, accepting) = tls::incoming(listener, tls.clone());
        let tls_watcher = tls.as_ref().map(tls::TlsAcceptor::spawn_watcher);
        let served = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
                // End subscriptions and sessions so that in-flight calls can finish.
                let _ = closing_sender.send(true);
            };
            tonic::transport::Server::builder()
                .initial_stream_window_size(HTTP2_STREAM_WINDOW_BYTES)
                .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES)
                .add_service(RpcMetered::new(health_service, Arc::clone(&rpc)))
                .add_service(RpcMetered::new(reflection_v1, Arc::clone(&rpc)))
                .add_service(RpcMetered::new(reflection_v1alpha, Arc::clone(&rpc)))
                .add_service(RpcMetered::new(stele, rpc))
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        });
        tracing::info!(%local_addr, tls = tls.is_some(), "serving stele.v1");
        Ok(RunningServer {
            local_addr,
            log,
            stop: Some(stop),
            served: Some(served),
            metrics,
            metrics_endpoint,
            webhooks,
            groups,
            backend,
            auth: authenticator,
            tls,
            tls_watcher,
            accepting: Some(accepting),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether the listeners speak TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS configuration in use, with its reload counters; `None` for a
    /// plaintext server.
    pub fn tls(&self) -> Option<&Arc<tls::TlsAcceptor>> {
        self.tls.as_ref()
    }

    /// Reloads the TLS certificate, key and client CA from their files; new
    /// connections use them, open ones keep theirs. Does nothing without TLS.
    ///
    /// # Errors
    /// [`tls::TlsError`] when a file is missing or unusable; the previous
    /// configuration stays in use.
    pub fn reload_tls(&self) -> std::result::Result<(), tls::TlsError> {
        match &self.tls {
            Some(tls) => tls.reload(),
            None => Ok(()),
        }
    }

    /// The log behind the server; `None` on another backend.
    pub fn log(&self) -> Option<&Arc<Log>> {
        self.log.as_ref()
    }

    /// The address of the `/metrics` endpoint, when it is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_endpoint
            .as_ref()
            .map(metrics::MetricsEndpoint::local_addr)
    }

    /// The server's metrics (the webhook dispatcher reports into
    /// [`metrics::ServerMetrics::webhook`]).
    pub fn metrics(&self) -> &Arc<metrics::ServerMetrics> {
        &self.metrics
    }

    /// The authenticator: tokens, grants, the audit log.
    pub fn auth(&self) -> &Arc<auth::Authenticator> {
        &self.auth
    }

    /// The webhook dispatcher.
    pub fn webhooks(&self) -> &Arc<webhook::Dispatcher> {
        &self.webhooks
    }

    /// The consumer groups.
    pub fn groups(&self) -> &Arc<group::Groups> {
        &self.groups
    }

    /// Stops accepting, finishes in-flight calls, then syncs and closes the log.
    ///
    /// # Errors
    /// I/O errors closing the log.
    pub async fn shutdown(mut self) -> Result<()> {
        tracing::info!("shutting down: finishing in-flight calls");
        self.stop_serving().await;
        self.webhooks.shutdown().await;
        self.groups.shutdown().await;
        // Work of cancelled calls (a cursor commit's fdatasync) may still run.
        self.backend.shutdown().await;
        match &self.log {
            Some(log) => {
                let closed = log.close();
                tracing::info!("log closed");
                closed
            }
            None => Ok(()),
        }
    }

    async fn stop_serving(&mut self) {
        if let Some(endpoint) = self.metrics_endpoint.take() {
            endpoint.stop().await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            let _ = served.await;
        }
        // Tonic has dropped the incoming stream: the accept task ends and
        // closes the listener.
        if let Some(accepting) = self.accepting.take() {
            let _ = accepting.await;
        }
        if let Some(watcher) = self.tls_watcher.take() {
            watcher.abort();
            let _ = watcher.await;
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(watcher) = self.tls_watcher.take() {
            watcher.abort();
        }
    }
}

/// Wraps the generated service so that a unary request rejected by tonic for
/// its size (OUT_OF_RANGE, before the handler runs) is answered with the
/// contract's RESOURCE_EXHAUSTED and `MESSAGE_TOO_LARGE` detail instead.
/// Streaming requests are mapped where their messages are read.
#[derive(Clone)]
struct MessageLimitStatus<S> {
    inner: S,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for MessageLimitStatus<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, RequestBody> tonic::codegen::Service<tonic::codegen::http::Request<RequestBody>>
    for MessageLimitStatus<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<RequestBody>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = backend::BoxFuture<std::result::Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<RequestBody>) -> Self::Future {
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            // A trailers-only error response carries its status in the headers.
            if let Some(status) = tonic::Status::from_header_map(response.headers())
                && status.code() == tonic::Code::OutOfRange
            {
                let mapped = stele_wire::status::map_transport_status(status);
                if mapped.code() != tonic::Code::OutOfRange {
                    let headers = response.headers_mut();
                    headers.remove("grpc-status");
                    headers.remove("grpc-message");
                    headers.remove("grpc-status-details-bin");
                    let _ = mapped.add_header(headers);
                }
            }
            Ok(response)
        })
    }
}

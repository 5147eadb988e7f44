//! TLS and mTLS for the gRPC listener and the metrics endpoint, with live
//! certificate reload.
//!
//! [`TlsAcceptor`] owns the PEM files named by a [`TlsConfig`] and the
//! `rustls::ServerConfig`s built from them (ALPN `h2` for gRPC, `http/1.1` for
//! the metrics endpoint). [`incoming`] turns a `TcpListener` into the stream of
//! connections tonic serves, plaintext or TLS, each as a [`ServerIo`] that
//! carries its [`ConnectionInfo`] into every request's extensions.
//!
//! Invariant: every handshake takes the configuration current when it starts;
//! a reload swaps the configuration for later handshakes only, so open
//! connections are never dropped by a reload, and a failed reload keeps the
//! configuration that was in use.
//! Invariant: a handshake runs in its own task under [`HANDSHAKE_TIMEOUT`], so
//! a slow or silent client never holds up accepting.
//!
//! This module does not decide what a client may do: it only reports who the
//! client proved to be ([`ConnectionInfo::certificate_subject`]).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the watcher looks at the files' modification time and size.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Handshakes in progress at once; more connections wait in the listen backlog.
const HANDSHAKES_COUNT_MAX: usize = 1024;
/// Connections accepted but not yet taken by the server.
const ACCEPTED_QUEUE_COUNT_MAX: usize = 64;
/// How long the listener pauses after a failed accept (out of file descriptors).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// ALPN of the gRPC listener.
const ALPN_H2: &[u8] = b"h2";
/// ALPN of the metrics endpoint.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Whether clients must present a certificate signed by the client CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// A connection without a valid client certificate is refused (the default).
    #[default]
    Required,
    /// A connection without a client certificate is accepted; one with a
    /// certificate that does not verify is refused.
    Optional,
}

/// Where the server's certificate and key are, and how clients are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the certificate.
    pub key: PathBuf,
    /// PEM certificates of the CAs that sign client certificates; `None`
    /// asks clients for no certificate.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: whether a client certificate is required. Ignored
    /// without `client_ca`.
    pub client_auth: ClientAuth,
}

impl TlsConfig {
    /// TLS with `cert` and `key`, no client certificates.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsConfig {
        TlsConfig {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            client_auth: ClientAuth::Required,
        }
    }

    /// Asks for client certificates signed by the CAs in `client_ca`.
    pub fn with_client_ca(mut self, client_ca: impl Into<PathBuf>, client_auth: ClientAuth) -> TlsConfig {
        self.client_ca = Some(client_ca.into());
        self.client_auth = client_auth;
        self
    }

    /// The files the configuration is built from.
    fn files(&self) -> Vec<&Path> {
        let mut files = vec![self.cert.as_path(), self.key.as_path()];
        if let Some(client_ca) = &self.client_ca {
            files.push(client_ca);
        }
        files
    }
}

/// Why a TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read the {what} {path}: {source}")]
    Pem {
        /// Which file: `certificate`, `private key` or `client CA`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A PEM file holds no certificate.
    #[error("the {what} {path} holds no certificate")]
    NoCertificate {
        /// Which file: `certificate` or `client CA`.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The client CA file holds a certificate that is not a usable CA.
    #[error("the client CA {path}: {source}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// What rustls refused.
        #[source]
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built.
    #[error("the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// rustls refused the certificate and key (a key that does not match the
    /// certificate, an unsupported key type).
    #[error("the certificate {cert} with the key {key}: {source}")]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls refused.
        #[source]
        source: rustls::Error,
    },
}

impl From<TlsError> for stele_engine::error::Error {
    fn from(error: TlsError) -> Self {
        stele_engine::error::Error::Config(format!("tls: {error}"))
    }
}

/// How many reloads succeeded and failed since the start (the initial load
/// is not counted). Tests wait on [`TlsAcceptor::subscribe`] for a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReloadCounts {
    /// Reloads that replaced the configuration.
    pub loaded: u64,
    /// Reloads that failed and kept the previous configuration.
    pub failed: u64,
}

/// The two server configurations built from one set of files.
struct Loaded {
    grpc: Arc<rustls::ServerConfig>,
    http1: Arc<rustls::ServerConfig>,
}

/// Modification time and size of each file, as last looked at.
type Stamps = Vec<Option<(SystemTime, u64)>>;

/// The server's TLS configuration, reloadable while connections are open.
pub struct TlsAcceptor {
    config: TlsConfig,
    current: RwLock<Arc<Loaded>>,
    /// Held for a whole reload, so that the watcher and an explicit reload do
    /// not interleave; holds the file stamps the current attempt saw.
    reloading: Mutex<Stamps>,
    counts: watch::Sender<ReloadCounts>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("config", &self.config)
            .field("counts", &*self.counts.borrow())
            .finish()
    }
}

impl TlsAcceptor {
    /// Loads the files of `config`.
    ///
    /// # Errors
    /// [`TlsError`] when a file is missing or unusable.
    pub fn new(config: TlsConfig) -> Result<TlsAcceptor, TlsError> {
        let stamps = stamps(&config);
        let loaded = load(&config)?;
        Ok(TlsAcceptor {
            config,
            current: RwLock::new(Arc::new(loaded)),
            reloading: Mutex::new(stamps),
            counts: watch::channel(ReloadCounts::default()).0,
        })
    }

    /// The files and client policy.
    pub fn config(&self) -> &TlsConfig {
        &self.config
    }

    /// Rebuilds the configuration from the files. New handshakes use it; open
    /// connections keep theirs.
    ///
    /// # Errors
    /// [`TlsError`] when a file is missing or unusable; the previous
    /// configuration stays in use (and the failure is logged).
    pub fn reload(&self) -> Result<(), TlsError> {
        let mut seen = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *seen = stamps(&self.config);
        self.reload_locked()
    }

    fn reload_locked(&self) -> Result<(), TlsError> {
        match load(&self.config) {
            Ok(loaded) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
                self.counts.send_modify(|counts| counts.loaded += 1);
                tracing::info!(cert = %self.config.cert.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(error) => {
                self.counts.send_modify(|counts| counts.failed += 1);
                tracing::error!(%error, "TLS reload failed; keeping the previous certificate");
                Err(error)
            }
        }
    }

    /// Reloads when a file's modification time or size changed since the
    /// last look; returns whether it tried.
    fn reload_if_changed(&self) -> bool {
        let mut seen = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = stamps(&self.config);
        if now == *seen {
            return false;
        }
        // Recorded before loading: a failed attempt is retried on the next
        // change, not every second.
        *seen = now;
        let _ = self.reload_locked();
        true
    }

    /// The reload counters, to wait for a reload.
    pub fn subscribe(&self) -> watch::Receiver<ReloadCounts> {
        self.counts.subscribe()
    }

    /// The reload counters now.
    pub fn counts(&self) -> ReloadCounts {
        *self.counts.borrow()
    }

    fn current(&self) -> Arc<Loaded> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The configuration of the gRPC listener now (ALPN `h2`).
    pub fn grpc_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.current().grpc)
    }

    /// The configuration of the metrics endpoint now (ALPN `http/1.1`).
    pub fn http1_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.current().http1)
    }

    /// Runs the TLS handshake on `stream` with `config`, within
    /// [`HANDSHAKE_TIMEOUT`].
    ///
    /// # Errors
    /// The handshake's I/O error, or `TimedOut`.
    pub async fn handshake(
        config: Arc<rustls::ServerConfig>,
        stream: TcpStream,
        remote: Option<SocketAddr>,
    ) -> io::Result<ServerIo> {
        let accepting = tokio_rustls::TlsAcceptor::from(config).accept(stream);
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, accepting)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let certificate_subject = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| certificate_subject(leaf.as_ref()));
        Ok(ServerIo {
            info: ConnectionInfo {
                remote,
                certificate_subject,
            },
            transport: Transport::Tls(Box::new(stream)),
        })
    }

    /// Polls the files every [`POLL_INTERVAL`] and reloads on a change (of
    /// the file a symbolic link points to, too, as when a mounted secret
    /// swaps its links), until the task is aborted (the server aborts it at
    /// shutdown; a reload runs between awaits, so an abort never lands inside
    /// one).
    pub fn spawn_watcher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let acceptor = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(POLL_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                // A few stat calls and, on a change, small file reads: short
                // enough for an async thread.
                acceptor.reload_if_changed();
            }
        })
    }
}

/// Modification time and size of each file of `config` (`None` for a file
/// that cannot be looked at).
fn stamps(config: &TlsConfig) -> Stamps {
    config
        .files()
        .into_iter()
        .map(|path| {
            let metadata = std::fs::metadata(path).ok()?;
            Some((metadata.modified().ok()?, metadata.len()))
        })
        .collect()
}

/// Builds both server configurations from the files of `config`.
fn load(config: &TlsConfig) -> Result<Loaded, TlsError> {
    let chain = certificates(&config.cert, "certificate")?;
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|source| TlsError::Pem {
        what: "private key",
        path: config.key.clone(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Config {
            cert: config.cert.clone(),
            key: config.key.clone(),
            source,
        })?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates(path, "client CA")? {
                roots.add(certificate).map_err(|source| TlsError::ClientCa {
                    path: path.clone(),
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match config.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            builder.with_client_cert_verifier(verifier.build()?)
        }
    };
    let mut grpc = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Config {
            cert: config.cert.clone(),
            key: config.key.clone(),
            source,
        })?;
    let mut http1 = grpc.clone();
    grpc.alpn_protocols = vec![ALPN_H2.to_vec()];
    http1.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Loaded {
        grpc: Arc::new(grpc),
        http1: Arc::new(http1),
    })
}

/// The certificates in the PEM file `path`; at least one.
fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

/// The name a verified client certificate gives its holder: the subject's
/// common name, or else its first DNS subject alternative name, or else its
/// first URI one; `None` for a certificate with none of them or that does not
/// parse.
pub fn certificate_subject(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    if let Some(common_name) = certificate
        .subject()
        .iter_common_name()
        .find_map(|name| name.as_str().ok())
    {
        return Some(common_name.to_string());
    }
    let names = certificate
        .subject_alternative_name()
        .ok()??
        .value
        .general_names
        .clone();
    let dns = names.iter().find_map(|name| match name {
        GeneralName::DNSName(dns) => Some(dns.to_string()),
        _ => None,
    });
    dns.or_else(|| {
        names.iter().find_map(|name| match name {
            GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
    })
}

/// What the server knows about the client of a connection; every request's
/// extensions carry it (plaintext connections too), see [`connection_info`].
///
/// It takes the place of tonic's own connection info, so
/// `tonic::Request::remote_addr` is `None` on this server: read
/// [`ConnectionInfo::remote`] instead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// The verified client certificate's subject common name, or else its
    /// first DNS subject alternative name, or else its first URI one; `None`
    /// without a client certificate.
    pub certificate_subject: Option<String>,
}

/// The [`ConnectionInfo`] of the connection `request` came on.
pub fn connection_info<T>(request: &tonic::Request<T>) -> Option<&ConnectionInfo> {
    request.extensions().get::<ConnectionInfo>()
}

/// Who sent `request`: the peer's address (from [`ConnectionInfo`], else from
/// tonic's own connection info when the service is served some other way) and
/// the verified client certificate's subject.
pub fn peer_of<T>(request: &tonic::Request<T>) -> (Option<SocketAddr>, Option<&str>) {
    let connection = connection_info(request);
    (
        connection
            .and_then(|info| info.remote)
            .or_else(|| request.remote_addr()),
        connection.and_then(|info| info.certificate_subject.as_deref()),
    )
}

enum Transport {
    Plain(TcpStream),
    // Boxed: the TLS state is large and most of it is not touched per call.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection, plaintext or TLS, with what is known about its
/// client.
pub struct ServerIo {
    transport: Transport,
    info: ConnectionInfo,
}

impl ServerIo {
    /// A plaintext connection.
    pub fn plain(stream: TcpStream, remote: Option<SocketAddr>) -> ServerIo {
        ServerIo {
            transport: Transport::Plain(stream),
            info: ConnectionInfo {
                remote,
                certificate_subject: None,
            },
        }
    }

    /// What is known about the client.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for ServerIo {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(stream) => Pin::new(stream).poll_read(context, buffer),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().transport {
            Transport::Plain(stream) => Pin::new(stream).poll_write(context, buffer),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write(context, buffer),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().transport {
            Transport::Plain(stream) => Pin::new(stream).poll_write_vectored(context, buffers),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(context, buffers),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.transport {
            Transport::Plain(stream) => stream.is_write_vectored(),
            Transport::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(stream) => Pin::new(stream).poll_flush(context),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(stream) => Pin::new(stream).poll_shutdown(context),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(context),
        }
    }
}

/// The connections of `listener` for tonic, with TLS when `tls` is given
/// (ALPN `h2`), and the task that accepts them. The task ends when the stream
/// is dropped (tonic drops it when it stops serving), closing the listener.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<TlsAcceptor>>,
) -> (
    tokio_stream::wrappers::ReceiverStream<io::Result<ServerIo>>,
    tokio::task::JoinHandle<()>,
) {
    let (sender, receiver) = mpsc::channel(ACCEPTED_QUEUE_COUNT_MAX);
    let accepting = tokio::spawn(accept(listener, tls, sender));
    (tokio_stream::wrappers::ReceiverStream::new(receiver), accepting)
}

async fn accept(
    listener: TcpListener,
    tls: Option<Arc<TlsAcceptor>>,
    sender: mpsc::Sender<io::Result<ServerIo>>,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_COUNT_MAX));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = sender.closed() => break,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "listener cannot accept");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        // Without TCP_NODELAY, a response written in several pieces waits for the
        // client's delayed ACK (about 40 ms on Linux) before its last piece goes out.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY on an accepted connection");
        }
        match &tls {
            None => {
                if sender
                    .send(Ok(ServerIo::plain(stream, Some(remote))))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Some(tls) => {
                let permit = tokio::select! {
                    permit = Arc::clone(&handshakes).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = sender.closed() => break,
                };
                let config = tls.grpc_config();
                let sender = sender.clone();
                tokio::spawn(async move {
                    let handshake = TlsAcceptor::handshake(config, stream, Some(remote)).await;
                    drop(permit);
                    match handshake {
                        Ok(io) => {
                            let _ = sender.send(Ok(io)).await;
                        }
                        Err(error) => tracing::debug!(%error, %remote, "TLS handshake failed"),
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(params: rcgen::CertificateParams) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("a key");
        params.self_signed(&key).expect("a certificate").der().to_vec()
    }

    #[test]
    fn the_subject_is_the_common_name_then_the_dns_name_then_the_uri() {
        // Goal: the three fallbacks of `certificate_subject`, in order.
        // Method: rcgen certificates with a CN, with only SANs, with only a URI.
        let mut with_common_name =
            rcgen::CertificateParams::new(vec!["ignored.example".to_string()]).expect("params");
        with_common_name
            .distinguished_name
            .push(rcgen::DnType::CommonName, "billing-service");
        assert_eq!(
            certificate_subject(&certificate(with_common_name)).as_deref(),
            Some("billing-service")
        );

        let mut with_dns = rcgen::CertificateParams::new(vec!["worker.example".to_string()]).expect("params");
        with_dns.distinguished_name = rcgen::DistinguishedName::new();
        with_dns.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://example/late").expect("ia5"),
        ));
        assert_eq!(
            certificate_subject(&certificate(with_dns)).as_deref(),
            Some("worker.example")
        );

        let mut with_uri = rcgen::CertificateParams::default();
        with_uri.distinguished_name = rcgen::DistinguishedName::new();
        with_uri.subject_alt_names = vec![
            rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")),
            rcgen::SanType::URI(rcgen::string::Ia5String::try_from("spiffe://example/reader").expect("ia5")),
        ];
        assert_eq!(
            certificate_subject(&certificate(with_uri)).as_deref(),
            Some("spiffe://example/reader")
        );

        let mut anonymous = rcgen::CertificateParams::default();
        anonymous.distinguished_name = rcgen::DistinguishedName::new();
        assert_eq!(certificate_subject(&certificate(anonymous)), None);
        assert_eq!(certificate_subject(b"not a certificate"), None);
    }
}

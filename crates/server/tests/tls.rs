//! TLS and mTLS of the gRPC listener and the metrics endpoint, and live
//! certificate reload.
//!
//! Method: certificates are made with rcgen in each test (a CA, a server
//! certificate for `localhost` and 127.0.0.1, client certificates); a real
//! server runs on `127.0.0.1:0` over a temporary directory; the typed client
//! connects to `https://localhost:PORT` with `ConnectOptions`. A connection is
//! "refused" when connecting or the first call fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use stele_client::{Client, ConnectOptions, ServerUrl};
use stele_engine::event::{AppendRequest, Event};
use stele_server::tls::{ClientAuth, ConnectionInfo, ReloadCounts, TlsAcceptor, TlsConfig};
use stele_server::{RunningServer, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

/// The longest a test waits for anything.
const WAIT_MAX: Duration = Duration::from_secs(20);

/// A certificate authority made for one test.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A PEM certificate and its PEM key.
struct Identity {
    cert: String,
    key: String,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        Authority {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    fn issue(&self, mut params: CertificateParams, purpose: ExtendedKeyUsagePurpose) -> Identity {
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        Identity {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    fn server(&self) -> Identity {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "stele test server");
        self.issue(params, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with the common name `name`.
    fn client(&self, name: &str) -> Identity {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        self.issue(params, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A client certificate that expired in 2001.
    fn expired_client(&self, name: &str) -> Identity {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        self.issue(params, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// The server's PEM files in a temporary directory, with its data directory.
struct Files {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
}

impl Files {
    fn new(server: &Identity, client_ca: &Authority) -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Files {
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
            client_ca: dir.path().join("client-ca.pem"),
            dir,
        };
        files.replace(server);
        std::fs::write(&files.client_ca, &client_ca.pem).expect("write the client CA");
        files
    }

    /// Replaces the server's certificate and key: the key first, so that
    /// every consistent pair seen by a reload is the new one.
    fn replace(&self, server: &Identity) {
        std::fs::write(&self.key, &server.key).expect("write the key");
        std::fs::write(&self.cert, &server.cert).expect("write the certificate");
    }

    fn tls(&self) -> TlsConfig {
        TlsConfig::new(&self.cert, &self.key)
    }

    fn mtls(&self, client_auth: ClientAuth) -> TlsConfig {
        self.tls().with_client_ca(&self.client_ca, client_auth)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

async fn start(data_dir: &Path, tls: TlsConfig, metrics: bool) -> RunningServer {
    let mut config = ServerConfig::new(data_dir);
    config.listen = "127.0.0.1:0".parse().expect("address");
    if metrics {
        config.metrics_listen = Some("127.0.0.1:0".parse().expect("address"));
    }
    config.tls = Some(tls);
    RunningServer::start(config).await.expect("the server starts")
}

fn https(server: &RunningServer) -> String {
    format!("https://localhost:{}", server.local_addr().port())
}

fn trusting(authority: &Authority) -> ConnectOptions {
    ConnectOptions::default().with_ca_cert(authority.pem.clone())
}

fn presenting(authority: &Authority, identity: &Identity) -> ConnectOptions {
    trusting(authority).with_client_identity(identity.cert.clone(), identity.key.clone())
}

/// Connects and makes one call (the call is where TLS 1.3 reports a refused
/// client certificate).
async fn connect(url: &str, options: ConnectOptions) -> Result<Client> {
    let client = tokio::time::timeout(WAIT_MAX, Client::connect_with(ServerUrl::new(url), options))
        .await
        .context("connect timed out")??;
    tokio::time::timeout(WAIT_MAX, client.list_topics())
        .await
        .context("the call timed out")??;
    Ok(client)
}

async fn refused(url: &str, options: ConnectOptions, what: &str) {
    let result = connect(url, options).await;
    assert!(result.is_err(), "{what}: the connection was accepted");
}

/// Appends one event to `topic` and reads it back.
async fn append_and_read(client: &Client, topic: &str, payload: &[u8]) -> Result<()> {
    let ack = client
        .append(
            topic,
            &AppendRequest::new("key-1", vec![Event::new("created", payload.to_vec())]),
        )
        .await?;
    let read = client
        .read(topic, ack.partition, ack.first_offset, 100, 0)
        .await?;
    let Some(event) = read.events.iter().find(|event| event.offset == ack.first_offset) else {
        bail!("the appended event is not read back: {:?}", read.events);
    };
    assert_eq!(event.payload, payload);
    assert_eq!(event.event_type, "created");
    Ok(())
}

/// Waits (up to [`WAIT_MAX`]) until the reload counters satisfy `done`.
async fn wait_for_reload(tls: &TlsAcceptor, done: impl Fn(&ReloadCounts) -> bool) -> ReloadCounts {
    let mut counts = tls.subscribe();
    let reached = tokio::time::timeout(WAIT_MAX, counts.wait_for(|counts| done(counts)))
        .await
        .expect("the reload happens in time")
        .expect("the acceptor is alive");
    *reached
}

#[tokio::test]
async fn tls_serves_clients_that_trust_its_ca_only() {
    // Goal: with a certificate, the gRPC listener speaks TLS: a client that
    // trusts the CA appends and reads back; one trusting another CA and a
    // plaintext client are refused.
    let authority = Authority::new("stele test CA");
    let files = Files::new(&authority.server(), &authority);
    let server = start(&files.data_dir(), files.tls(), false).await;
    assert!(server.is_tls());

    let client = connect(&https(&server), trusting(&authority))
        .await
        .expect("a trusting client connects");
    append_and_read(&client, "orders", b"{\"total\":42}")
        .await
        .expect("append and read over TLS");

    refused(
        &https(&server),
        trusting(&Authority::new("another CA")),
        "a client trusting another CA",
    )
    .await;
    let plaintext = format!("http://localhost:{}", server.local_addr().port());
    refused(&plaintext, ConnectOptions::default(), "a plaintext client").await;
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_silent_client_does_not_hold_up_other_handshakes() {
    // Goal: handshakes run in their own tasks, so connections that never send
    // a ClientHello do not stop others from getting in. Method: open a few
    // silent TCP connections first, then connect a real client (whose connect
    // timeout, 5 s, is shorter than the handshake timeout, 10 s).
    let authority = Authority::new("stele test CA");
    let files = Files::new(&authority.server(), &authority);
    let server = start(&files.data_dir(), files.tls(), false).await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(
            tokio::net::TcpStream::connect(server.local_addr())
                .await
                .expect("a TCP connection"),
        );
    }
    let client = connect(&https(&server), trusting(&authority))
        .await
        .expect("a client gets in past the silent ones");
    append_and_read(&client, "orders", b"past")
        .await
        .expect("append and read");
    drop(silent);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn required_client_certificates_refuse_missing_foreign_and_expired_ones() {
    // Goal: with a client CA and `Required`, only a valid certificate of that
    // CA gets in. Method: four clients against one server.
    let authority = Authority::new("stele test CA");
    let files = Files::new(&authority.server(), &authority);
    let server = start(&files.data_dir(), files.mtls(ClientAuth::Required), false).await;
    let url = https(&server);

    refused(&url, trusting(&authority), "no client certificate").await;
    let stranger = Authority::new("another CA");
    refused(
        &url,
        presenting(&authority, &stranger.client("stranger")),
        "a certificate of another CA",
    )
    .await;
    refused(
        &url,
        presenting(&authority, &authority.expired_client("late")),
        "an expired certificate",
    )
    .await;
    let client = connect(&url, presenting(&authority, &authority.client("billing")))
        .await
        .expect("a valid client certificate gets in");
    append_and_read(&client, "orders", b"mtls")
        .await
        .expect("append and read over mTLS");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn optional_client_certificates_admit_none_but_refuse_a_bad_one() {
    // Goal: with `Optional`, a client without a certificate gets in, and one
    // with a certificate that does not verify does not.
    let authority = Authority::new("stele test CA");
    let files = Files::new(&authority.server(), &authority);
    let server = start(&files.data_dir(), files.mtls(ClientAuth::Optional), false).await;
    let url = https(&server);

    let anonymous = connect(&url, trusting(&authority))
        .await
        .expect("no certificate is fine");
    append_and_read(&anonymous, "orders", b"anonymous")
        .await
        .expect("append and read");
    connect(&url, presenting(&authority, &authority.client("billing")))
        .await
        .expect("a valid certificate is fine too");
    let stranger = Authority::new("another CA");
    refused(
        &url,
        presenting(&authority, &stranger.client("stranger")),
        "a certificate of another CA",
    )
    .await;
    server.shutdown().await.expect("shutdown");
}

/// A rustls client configuration trusting `authority`, with `identity` as
/// its client certificate when given.
fn client_config(authority: &Authority, identity: Option<&Identity>, alpn: &[u8]) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(authority.pem.as_bytes()) {
        roots.add(certificate.expect("a CA certificate")).expect("a root");
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(identity.cert.as_bytes())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .expect("a chain"),
                PrivateKeyDer::from_pem_slice(identity.key.as_bytes()).expect("a key"),
            )
            .expect("a client identity"),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

/// `GET path` over HTTPS to `localhost:port`; the whole response.
async fn https_get(port: u16, config: rustls::ClientConfig, path: &str) -> Result<String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let mut stream = tokio::time::timeout(
        WAIT_MAX,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await??;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(WAIT_MAX, stream.read_to_string(&mut response)).await??;
    if response.is_empty() {
        bail!("no response");
    }
    Ok(response)
}

#[tokio::test]
async fn the_metrics_endpoint_serves_https_with_the_same_certificate_and_client_policy() {
    // Goal: with TLS the metrics endpoint speaks HTTPS (ALPN http/1.1) with the
    // server's certificate and asks for client certificates like the gRPC
    // listener; plaintext HTTP gets no answer.
    let authority = Authority::new("stele test CA");
    let files = Files::new(&authority.server(), &authority);
    let server = start(&files.data_dir(), files.mtls(ClientAuth::Required), true).await;
    let port = server.metrics_addr().expect("metrics are on").port();
    let scraper = authority.client("prometheus");

    let response = https_get(
        port,
        client_config(&authority, Some(&scraper), b"http/1.1"),
        "/metrics",
    )
    .await
    .expect("a scrape over HTTPS");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains("stele_append_requests"), "{response}");

    let anonymous = https_get(port, client_config(&authority, None, b"http/1.1"), "/metrics").await;
    assert!(
        anonymous.is_err(),
        "a scrape without a client certificate: {anonymous:?}"
    );

    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    plain
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT_MAX, plain.read_to_end(&mut answer))
        .await
        .expect("the server closes a plaintext connection");
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "plaintext got metrics");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn the_listener_reports_the_client_certificate_subject_and_plaintext_connections_too() {
    // Goal: the connection info every request carries names the verified
    // client certificate's subject, and plaintext connections carry one (with
    // no subject). Method: `tls::incoming` on a listener of our own, a rustls
    // client with a certificate, and a plain TCP client.
    let authority = Authority::new("stele test CA");
    let files = Files::new(&authority.server(), &authority);
    let acceptor = Arc::new(TlsAcceptor::new(files.mtls(ClientAuth::Optional)).expect("the files load"));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (mut incoming, _accepting) = stele_server::tls::incoming(listener, Some(acceptor));
    let identity = authority.client("billing-service");
    let connecting = tokio::spawn(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost")?;
        let config = client_config(&authority, Some(&identity), b"h2");
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        anyhow::Ok(stream)
    });
    let accepted = tokio::time::timeout(WAIT_MAX, incoming.next())
        .await
        .expect("a connection in time")
        .expect("the stream goes on")
        .expect("an accepted connection");
    let client = connecting.await.expect("joins").expect("the handshake succeeds");
    assert_eq!(
        accepted.info().certificate_subject.as_deref(),
        Some("billing-service")
    );
    assert_eq!(
        accepted.info().remote,
        Some(client.get_ref().0.local_addr().expect("address"))
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (mut incoming, _accepting) = stele_server::tls::incoming(listener, None);
    let plain = tokio::net::TcpStream::connect(address).await.expect("connect");
    let accepted = tokio::time::timeout(WAIT_MAX, incoming.next())
        .await
        .expect("a connection in time")
        .expect("the stream goes on")
        .expect("an accepted connection");
    assert_eq!(accepted.info().certificate_subject, None);
    assert_eq!(accepted.info().remote, Some(plain.local_addr().expect("address")));
}

/// Serves gRPC health on `listener` (with `tls` when given) behind an
/// interceptor that records each request's connection info, as a handler
/// would read it.
async fn serve_recording(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<TlsAcceptor>>,
) -> Arc<std::sync::Mutex<Vec<Option<ConnectionInfo>>>> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = Arc::clone(&seen);
    let (_reporter, health) = tonic_health::server::health_reporter();
    let health =
        tonic::service::interceptor::InterceptedService::new(health, move |request: tonic::Request<()>| {
            recorded
                .lock()
                .expect("not poisoned")
                .push(stele_server::tls::connection_info(&request).cloned());
            Ok(request)
        });
    let (incoming, _accepting) = stele_server::tls::incoming(listener, tls);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming),
    );
    seen
}

async fn health_check(endpoint: tonic::transport::Endpoint) -> Result<()> {
    let channel = tokio::time::timeout(WAIT_MAX, endpoint.connect()).await??;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    tokio::time::timeout(
        WAIT_MAX,
        client.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await??;
    Ok(())
}

#[tokio::test]
async fn grpc_requests_carry_the_connection_info_of_their_connection() {
    // Goal: what a service handler finds in its request's extensions:
    // the client certificate's subject over mTLS, and a `ConnectionInfo`
    // without one over plaintext. Method: tonic serving `tls::incoming` with
    // an interceptor that records `connection_info` of every request.
    let authority = Authority::new("stele test CA");
    let files = Files::new(&authority.server(), &authority);
    let acceptor = Arc::new(TlsAcceptor::new(files.mtls(ClientAuth::Required)).expect("the files load"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let seen = serve_recording(listener, Some(acceptor)).await;
    let identity = authority.client("audit-reader");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&authority.pem))
        .identity(tonic::transport::Identity::from_pem(
            &identity.cert,
            &identity.key,
        ));
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))
        .expect("a URL")
        .tls_config(tls)
        .expect("TLS settings");
    health_check(endpoint).await.expect("a health check over mTLS");
    let recorded = seen.lock().expect("not poisoned").clone();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let info = recorded[0].as_ref().expect("the request carries connection info");
    assert_eq!(info.certificate_subject.as_deref(), Some("audit-reader"));
    assert!(
        info.remote.is_some_and(|remote| remote.ip().is_loopback()),
        "{info:?}"
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let seen = serve_recording(listener, None).await;
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).expect("a URL");
    health_check(endpoint)
        .await
        .expect("a health check over plaintext");
    let recorded = seen.lock().expect("not poisoned").clone();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let info = recorded[0]
        .as_ref()
        .expect("a plaintext request carries connection info too");
    assert_eq!(info.certificate_subject, None);
    assert!(info.remote.is_some(), "{info:?}");
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_without_dropping_open_connections() {
    // Goal: replacing the certificate with one of a new CA and reloading (by
    // call, then by the file watcher) serves the new certificate to new
    // clients while an open connection keeps working.
    // Method: the open client trusts only the old CA, so it could not
    // reconnect after a reload: its calls succeeding prove its connection
    // stayed open. Reloads are awaited on the reload counters.
    let old = Authority::new("old CA");
    let files = Files::new(&old.server(), &old);
    let server = start(&files.data_dir(), files.tls(), false).await;
    let url = https(&server);
    let tls = Arc::clone(server.tls().expect("TLS is on"));
    let open = connect(&url, trusting(&old))
        .await
        .expect("a client of the old CA");
    append_and_read(&open, "orders", b"before")
        .await
        .expect("before the reload");

    // By call. The watcher may see the change first; either way the counters
    // move and the explicit reload succeeds.
    let new = Authority::new("new CA");
    files.replace(&new.server());
    server.reload_tls().expect("the reload succeeds");
    assert!(tls.counts().loaded >= 1);
    append_and_read(&open, "orders", b"after")
        .await
        .expect("the open connection still works");
    connect(&url, trusting(&new))
        .await
        .expect("a client of the new CA connects");
    refused(&url, trusting(&old), "a new client of the old CA").await;

    // By the file watcher.
    let before = tls.counts();
    let newer = Authority::new("newer CA");
    files.replace(&newer.server());
    wait_for_reload(&tls, |counts| counts.loaded > before.loaded).await;
    append_and_read(&open, "orders", b"watched")
        .await
        .expect("the open connection still works");
    connect(&url, trusting(&newer))
        .await
        .expect("a client of the newer CA connects");
    refused(&url, trusting(&new), "a new client of the replaced CA").await;
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_failed_reload_keeps_the_certificate_in_use() {
    // Goal: a broken key file makes a reload fail with an error, by call and
    // by the watcher, and the previous certificate goes on serving.
    let authority = Authority::new("stele test CA");
    let files = Files::new(&authority.server(), &authority);
    let server = start(&files.data_dir(), files.tls(), false).await;
    let url = https(&server);
    let tls = Arc::clone(server.tls().expect("TLS is on"));

    let before = tls.counts();
    std::fs::write(
        &files.key,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    )
    .expect("break the key");
    let error = server.reload_tls().expect_err("a broken key does not load");
    assert!(error.to_string().contains("server.key"), "{error}");
    let explicit = tls.counts();
    assert!(explicit.failed > before.failed, "{explicit:?}");
    assert_eq!(explicit.loaded, before.loaded);
    // The watcher tries again on the next change, and fails as well.
    std::fs::write(&files.key, "not PEM at all\n").expect("break the key again");
    let watched = wait_for_reload(&tls, |counts| counts.failed > explicit.failed).await;
    assert_eq!(watched.loaded, before.loaded);
    let client = connect(&url, trusting(&authority))
        .await
        .expect("the old certificate still serves");
    append_and_read(&client, "orders", b"still")
        .await
        .expect("append and read");

    std::fs::remove_file(&files.cert).expect("remove the certificate");
    assert!(
        server.reload_tls().is_err(),
        "a missing certificate does not load"
    );
    connect(&url, trusting(&authority))
        .await
        .expect("the old certificate still serves");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_server_without_tls_reloads_nothing_and_refuses_bad_files_at_start() {
    // Goal: `reload_tls` is a no-op without TLS, and a missing certificate is
    // a configuration error at start.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServerConfig::new(dir.path().join("data"));
    config.listen = "127.0.0.1:0".parse().expect("address");
    let server = RunningServer::start(config.clone()).await.expect("starts");
    assert!(!server.is_tls());
    server.reload_tls().expect("nothing to reload");
    let client = Client::connect(format!("http://127.0.0.1:{}", server.local_addr().port()))
        .await
        .expect("plaintext connects");
    client.list_topics().await.expect("a call");
    server.shutdown().await.expect("shutdown");

    config.tls = Some(TlsConfig::new(
        dir.path().join("none.pem"),
        dir.path().join("none.key"),
    ));
    let error = match RunningServer::start(config).await {
        Ok(_) => panic!("a missing certificate must not start"),
        Err(error) => error,
    };
    assert_eq!(error.kind(), stele_engine::error::ErrorKind::Config, "{error}");
    assert!(error.to_string().contains("none.pem"), "{error}");
}

#[tokio::test]
async fn a_registered_client_certificate_is_a_principal_with_its_grants() {
    // Goal: under `--auth required` over mTLS, a verified certificate whose
    // subject is registered acts with that entry's grants and no token; an
    // unregistered or revoked subject is UNAUTHENTICATED; a token still works
    // beside a certificate. Method: register `billing` with `write:orders`.
    let authority = Authority::new("stele test CA");
    let files = Files::new(&authority.server(), &authority);
    let (_, admin_token) = stele_server::auth::token::generate().expect("random");
    let mut config = ServerConfig::new(files.data_dir());
    config.listen = "127.0.0.1:0".parse().expect("address");
    config.tls = Some(files.mtls(ClientAuth::Required));
    config.auth = stele_server::auth::AuthConfig {
        mode: stele_server::auth::AuthMode::Required,
        bootstrap_token: Some(admin_token.clone()),
        ..stele_server::auth::AuthConfig::default()
    };
    let server = RunningServer::start(config).await.expect("start");
    let url = https(&server);
    let admin_identity = authority.client("operator");
    let admin = connect(
        &url,
        presenting(&authority, &admin_identity).with_token(admin_token.clone()),
    )
    .await
    .expect("the admin token works over mTLS");
    admin
        .create_topic("orders", &stele_engine::TopicOptions::default())
        .await
        .expect("create");
    let entry = admin
        .register_certificate(
            "billing",
            "billing",
            &["write:orders".to_string(), "read:orders".to_string()],
            None,
        )
        .await
        .expect("register");

    let billing = Client::connect_with(
        ServerUrl::new(url.clone()),
        presenting(&authority, &authority.client("billing")),
    )
    .await
    .expect("connect");
    append_and_read(&billing, "orders", b"by certificate")
        .await
        .expect("the certificate's grants");
    let me = billing.who_am_i().await.expect("whoami");
    assert_eq!(me.principal, "certificate:billing");
    let denied = billing
        .create_topic("other", &stele_engine::TopicOptions::default())
        .await
        .expect_err("no admin grant");
    assert_eq!(
        denied.code(),
        Some(stele_client::GrpcCode::PermissionDenied),
        "{denied}"
    );

    let stranger = Client::connect_with(
        ServerUrl::new(url.clone()),
        presenting(&authority, &authority.client("payroll")),
    )
    .await
    .expect("connect");
    let error = stranger.list_topics().await.expect_err("unregistered subject");
    assert_eq!(
        error.code(),
        Some(stele_client::GrpcCode::Unauthenticated),
        "{error}"
    );

    admin.revoke_token(&entry.id).await.expect("revoke");
    let error = billing.list_topics().await.expect_err("revoked subject");
    assert_eq!(
        error.code(),
        Some(stele_client::GrpcCode::Unauthenticated),
        "{error}"
    );
    server.shutdown().await.expect("shutdown");
}

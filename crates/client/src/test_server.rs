//! A real server for tests: in-process, on a free port, over a temporary directory.
//!
//! With `STELE_TEST_BACKEND` set to a NATS cluster's URLs (`nats://h1:p1,...`),
//! every test server stores its events on that cluster instead, each in a
//! namespace of its own (so tests share one cluster without seeing each
//! other's topics); its directory then holds only tokens and webhooks. This is
//! how the integration suite runs against both backends (scripts/it-nats.sh).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use crate::Client;

/// An in-process server on a free port over a temporary directory, with a
/// connected client. The directory is removed on drop.
pub struct TestServer {
    /// A client connected to the server.
    pub client: Client,
    server: Option<stele_server::RunningServer>,
    dir: TempDir,
}

/// The NATS cluster the test servers use, from `STELE_TEST_BACKEND`; `None`
/// for the embedded engine.
pub fn test_backend() -> Option<String> {
    std::env::var("STELE_TEST_BACKEND")
        .ok()
        .filter(|urls| !urls.is_empty())
}

impl TestServer {
    /// The server's URL.
    pub fn url(&self) -> String {
        self.client.server_url().get()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.dir.path
    }

    /// Stops the server (finishing in-flight calls and closing the log), then
    /// starts a new one over the same directory on a new free port, and points
    /// the client (and its producers and consumers) at it.
    ///
    /// # Panics
    /// When the server cannot be stopped or started.
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("shut the test server down");
        }
        let server = start_server(&self.dir.path).await;
        self.client
            .server_url()
            .set(format!("http://{}", server.local_addr()));
        self.server = Some(server);
    }

    /// Stops the server; the directory stays until drop.
    ///
    /// # Panics
    /// When closing the log fails.
    pub async fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("shut the test server down");
        }
    }

    /// The running server, if not shut down.
    pub fn server(&self) -> Option<&stele_server::RunningServer> {
        self.server.as_ref()
    }
}

/// The namespace on the test cluster of the server over `dir`: derived from
/// the directory, so that a server restarted over it finds its topics again,
/// and a `stele serve` child over it (`--nats-namespace`) shares them.
pub fn test_namespace(dir: &std::path::Path) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    hasher.write(dir.as_os_str().as_encoded_bytes());
    format!("t{:016x}", hasher.finish())
}

/// The storage of a test server over `dir`: the embedded engine on the
/// directory, or with `STELE_TEST_BACKEND` the NATS backend in the
/// directory's [`test_namespace`].
///
/// # Panics
/// When the log or the cluster cannot be opened: this is test support.
pub async fn test_storage(
    dir: &std::path::Path,
    config: &stele_server::ServerConfig,
) -> stele_server::Storage {
    let Some(urls) = test_backend() else {
        let log = stele_engine::Log::open(dir, stele_engine::LogOptions::default()).expect("open the log");
        return stele_server::Storage::Engine(std::sync::Arc::new(log));
    };
    let mut nats: stele_nats::NatsConfig = urls.parse().expect("STELE_TEST_BACKEND holds NATS URLs");
    nats.namespace = test_namespace(dir);
    let mut connection = stele_nats::connect(&nats)
        .await
        .expect("connect to the test cluster");
    // Two cores running a 3-node cluster that syncs every write and the tests
    // at once: JetStream's 5 s default is too short for some API requests.
    connection
        .jetstream
        .set_timeout(std::time::Duration::from_secs(30));
    let backend = stele_nats::backend::NatsBackend::open(
        connection,
        config.default_topic.clone(),
        config.auto_create_topics,
    )
    .await
    .expect("open the NATS backend");
    stele_server::Storage::Backend {
        backend: std::sync::Arc::new(backend),
        state_dir: dir.to_path_buf(),
    }
}

async fn start_server(dir: &std::path::Path) -> stele_server::RunningServer {
    let mut config = stele_server::ServerConfig::new(dir);
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let storage = test_storage(dir, &config).await;
    stele_server::RunningServer::start_with_storage(storage, config)
        .await
        .expect("start the test server")
}

/// Starts an in-process server on 127.0.0.1 with a free port over a new
/// temporary directory, and connects a client to it. Must run within a
/// multi-threaded tokio runtime.
///
/// # Panics
/// When the directory, the server or the connection cannot be made: this is
/// test support.
pub async fn start_test_server() -> TestServer {
    let dir = TempDir::new().expect("create a temporary directory");
    let server = start_server(&dir.path).await;
    let client = Client::connect(format!("http://{}", server.local_addr()))
        .await
        .expect("connect to the test server");
    TestServer {
        client,
        server: Some(server),
        dir,
    }
}

/// A directory under the system's temporary directory, removed on drop.
struct TempDir {
    path: std::path::PathBuf,
}

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let random = RandomState::new().build_hasher().finish();
        let path = std::env::temp_dir().join(format!("stele-test-{}-{random:016x}", std::process::id()));
        std::fs::create_dir(&path)?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

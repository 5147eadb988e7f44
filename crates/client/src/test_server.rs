//! A real server for tests: in-process, on a free port, over a temporary directory.

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

async fn start_server(dir: &std::path::Path) -> stele_server::RunningServer {
    let mut config = stele_server::ServerConfig::new(dir);
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    stele_server::RunningServer::start(config)
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

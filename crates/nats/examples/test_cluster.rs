//! Runs a 3-node JetStream cluster on loopback for the integration suite
//! against the NATS backend (scripts/it-nats.sh).
//!
//! Usage: `test_cluster NATS_SERVER URLS_FILE`. Starts the nodes on free
//! ports with fresh stores, waits until the cluster places an R3 stream, then
//! writes the servers' URLs (`nats://127.0.0.1:P1,...`) to `URLS_FILE` and
//! runs until SIGTERM, SIGINT or the end of its standard input, when it stops
//! every node.

use std::path::PathBuf;
use std::time::Duration;

use stele_nats::cluster::{Cluster, wait_for_r3};
use stele_nats::{NatsConfig, connect};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let mut args = std::env::args_os().skip(1);
    let (Some(binary), Some(urls_file)) = (args.next(), args.next()) else {
        return Err("usage: test_cluster NATS_SERVER URLS_FILE".to_string());
    };
    let binary = PathBuf::from(binary);
    let cluster = Cluster::start(&binary, 3).map_err(|error| format!("start the cluster: {error}"))?;
    let config: NatsConfig = cluster.urls().parse().map_err(|error| format!("{error}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let connection = loop {
        match connect(&config).await {
            Ok(connection) => break connection,
            Err(error) if tokio::time::Instant::now() >= deadline => return Err(format!("connect: {error}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut jetstream = connection.jetstream.clone();
    jetstream.set_timeout(Duration::from_secs(30));
    wait_for_r3(&jetstream, Duration::from_secs(60)).await?;
    let partial = PathBuf::from(format!("{}.partial", PathBuf::from(&urls_file).display()));
    std::fs::write(&partial, cluster.urls()).map_err(|error| format!("write the URLs: {error}"))?;
    std::fs::rename(&partial, &urls_file).map_err(|error| format!("write the URLs: {error}"))?;
    eprintln!("test_cluster: serving {}", cluster.urls());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|error| format!("SIGTERM: {error}"))?;
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    });
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = stdin_closed => {}
    }
    drop(cluster);
    Ok(())
}

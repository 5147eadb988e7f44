//! The transport's own floor under `sequential`: what one call in flight costs
//! on this machine before Stele does anything.
//!
//! Two echo servers run inside the load generator, each on its own
//! multi-threaded tokio runtime (as `stele serve` runs) on a thread of its own,
//! and are called one at a time from the scenario's runtime over loopback:
//!
//! - a TCP echo of a request-sized message (tokio, `TCP_NODELAY`): the round
//!   trip of the socket and the two runtimes' wake-ups;
//! - a bare tonic `grpc.health.v1.Health/Check` server (no interceptors,
//!   metrics, auth or Stele code): the round trip of a unary gRPC call on the
//!   same libraries and versions as Stele's server and client.
//!
//! `sequential` reports both next to Append's latency and the WhoAmI probe
//! (the same call through Stele's whole stack), so a run tells apart what the
//! transport costs, what Stele's service layers add and what the log adds.

use std::net::SocketAddr;
use std::time::Instant;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::{LoadgenError, LoadgenResult, micros, percentiles};

/// Bytes of one TCP echo round trip, fixed whatever `--size` is: the order of
/// an Append request of a 100-byte event with its gRPC and HTTP/2 framing.
const TCP_ECHO_BYTES: usize = 200;

/// A failure of the floor's own servers or round trips.
fn failed(what: &str, error: impl std::fmt::Display) -> LoadgenError {
    LoadgenError::Failed(format!("transport floor: {what}: {error}"))
}

/// The echo servers, stopped when dropped.
struct FloorServers {
    tcp: SocketAddr,
    grpc: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FloorServers {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Brief even on an async thread: the servers' runtime is shut down in
        // the background, without waiting for its tasks or connections.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts both echo servers on a runtime of their own.
fn start() -> LoadgenResult<FloorServers> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("stele-floor")
        .build()
        .map_err(|error| failed("runtime", error))?;
    // Bound here (the caller is async: no `block_on` on its thread), served there.
    let bind = || -> std::io::Result<std::net::TcpListener> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    };
    let tcp = bind().map_err(|error| failed("bind", error))?;
    let grpc = bind().map_err(|error| failed("bind", error))?;
    let addresses = (
        tcp.local_addr().map_err(|error| failed("address", error))?,
        grpc.local_addr().map_err(|error| failed("address", error))?,
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("stele-floor".into())
        .spawn(move || {
            runtime.block_on(async move {
                let (Ok(tcp), Ok(grpc)) = (
                    tokio::net::TcpListener::from_std(tcp),
                    tokio::net::TcpListener::from_std(grpc),
                ) else {
                    return;
                };
                tokio::spawn(tcp_echo(tcp));
                let (_reporter, health) = tonic_health::server::health_reporter();
                let incoming = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(health)
                        .serve_with_incoming(incoming),
                );
                let _ = stopped.await;
            });
            // Ends the servers and their connections without waiting for them.
            runtime.shutdown_background();
        })
        .map_err(|error| failed("thread", error))?;
    Ok(FloorServers {
        tcp: addresses.0,
        grpc: addresses.1,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Echoes whatever each connection sends.
async fn tcp_echo(listener: tokio::net::TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let mut buffer = [0u8; TCP_ECHO_BYTES];
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => {
                        if stream.write_all(&buffer[..read]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// Measures `calls` round trips of each echo, one at a time.
///
/// # Errors
/// [`LoadgenError::Failed`] when a server cannot start or a round trip fails.
pub(crate) async fn measure(calls: u64) -> LoadgenResult<Value> {
    let servers = start()?;
    let mut stream = tokio::net::TcpStream::connect(servers.tcp)
        .await
        .map_err(|error| failed("connect", error))?;
    stream
        .set_nodelay(true)
        .map_err(|error| failed("nodelay", error))?;
    let message = [b'f'; TCP_ECHO_BYTES];
    let mut echoed = [0u8; TCP_ECHO_BYTES];
    let mut tcp = Vec::with_capacity(calls as usize);
    for _ in 0..calls {
        let sent = Instant::now();
        stream
            .write_all(&message)
            .await
            .map_err(|error| failed("tcp write", error))?;
        stream
            .read_exact(&mut echoed)
            .await
            .map_err(|error| failed("tcp read", error))?;
        tcp.push(micros(sent.elapsed()));
    }
    if echoed != message {
        return Err(LoadgenError::Failed(
            "transport floor: the TCP echo changed the bytes".into(),
        ));
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", servers.grpc))
        .map_err(|error| failed("endpoint", error))?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|error| failed("connect", error))?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut grpc = Vec::with_capacity(calls as usize);
    for _ in 0..calls {
        let sent = Instant::now();
        let response = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|status| failed("Health/Check", status))?;
        grpc.push(micros(sent.elapsed()));
        if response.into_inner().status
            != tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        {
            return Err(LoadgenError::Failed(
                "transport floor: Health/Check did not answer SERVING".into(),
            ));
        }
    }
    drop((stream, health, servers));
    let tcp = percentiles(&mut tcp);
    let grpc = percentiles(&mut grpc);
    Ok(json!({
        "method": "in the load generator, one call in flight: a TCP echo of 200 bytes and a bare tonic Health/Check",
        "calls": calls,
        "tcp_echo_p50_us": tcp["p50"],
        "tcp_echo_p99_us": tcp["p99"],
        "grpc_p50_us": grpc["p50"],
        "grpc_p99_us": grpc["p99"],
    }))
}

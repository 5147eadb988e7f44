//! Runs a client nobody on the project wrote against a real server (included
//! with `#[path]` by the interop tests).

use std::path::Path;
use std::process::Command;

use stele::server::{RunningServer, ServerConfig};

/// Starts an in-process server on 127.0.0.1 port 0 over a new directory, runs
/// `command` with the proto directory and the server's `HOST:PORT` as its last
/// two arguments, stops the server, and asserts that the script exited 0 and
/// printed its closing `N passed, 0 failed` line.
///
/// # Panics
/// When the server or the script fails: this is test support.
pub fn run_against_a_server(name: &str, mut command: Command) {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut config = ServerConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().expect("address");
    let server = runtime
        .block_on(RunningServer::start(config))
        .expect("server starts");
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let output = command
        .arg(&proto)
        .arg(server.local_addr().to_string())
        .output()
        .expect("the client runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    runtime.block_on(server.shutdown()).expect("server shuts down");
    assert!(output.status.success(), "{name} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" 0 failed"), "no closing line:\n{stdout}");
}

//! Interoperability with a client nobody on the project wrote: Python stubs
//! generated from the proto by grpcio-tools (from PyPI) drive a real server.
//!
//! Method: a virtual environment with grpcio, grpcio-tools, grpcio-health-checking
//! and grpcio-reflection is created once under cargo's target directory (or taken
//! from `STELE_PYTHON`); an in-process server listens on port 0; the script
//! `tests/python/interop.py` runs its checks and exits non-zero on any failure.

use std::path::Path;
use std::process::Command;

use stele::server::{RunningServer, ServerConfig};

const PACKAGES: &[&str] = &[
    "grpcio",
    "grpcio-tools",
    "grpcio-health-checking",
    "grpcio-reflection",
    "grpcio-status",
];

#[path = "python/venv.rs"]
mod venv;

#[test]
fn python_client_generated_from_the_proto_drives_the_server() {
    // Goal: a foreign client sees the documented API: CAS conflict with the actual
    // sequence in the status details, duplicates, reads, subscription catch-up and
    // live tail, cursors, health and reflection.
    let python = venv::python("python-venv", PACKAGES);
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut config = ServerConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().expect("address");
    let server = runtime
        .block_on(RunningServer::start(config))
        .expect("server starts");
    let target = server.local_addr().to_string();
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/interop.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(&proto)
        .arg(&target)
        .output()
        .expect("the script runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    runtime.block_on(server.shutdown()).expect("server shuts down");
    assert!(
        output.status.success(),
        "python interop failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" 0 failed"), "no closing line:\n{stdout}");
}

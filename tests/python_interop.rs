//! Interoperability with a client nobody on the project wrote: Python stubs
//! generated from the proto by grpcio-tools (from PyPI) drive a real server.
//!
//! Method: a virtual environment with grpcio and its tools
//! ([`venv::GRPC_PACKAGES`]) is created once under cargo's target directory (or
//! taken from `STELE_PYTHON`); an in-process server listens on port 0; the script
//! `tests/python/interop.py` runs its checks and exits non-zero on any failure.

use std::path::Path;
use std::process::Command;

#[path = "python/venv.rs"]
mod venv;

#[path = "python/foreign_client.rs"]
mod foreign_client;

#[test]
fn python_client_generated_from_the_proto_drives_the_server() {
    // Goal: a foreign client sees the documented API: CAS conflict with the actual
    // sequence in the status details, duplicates, reads, subscription catch-up and
    // live tail, cursors, health and reflection.
    let python = venv::grpc_python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/interop.py");
    let mut command = Command::new(&python);
    command.arg(&script);
    foreign_client::run_against_a_server("python interop", command);
}

//! A Python virtual environment for tests that run a reference tool nobody on
//! the project wrote (included with `#[path]` by the tests that need one).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The interpreter of the virtual environment `name` under cargo's target
/// directory with `packages` from PyPI, created on first use; or the
/// interpreter in `STELE_PYTHON`, whose environment must have them.
/// The marker file holds the package list, so that a changed list reinstalls.
/// Not safe to call for the same `name` from two threads at once.
pub fn python(name: &str, packages: &[&str]) -> PathBuf {
    if let Some(python) = std::env::var_os("STELE_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = venv.join("bin").join("python");
    let ready = venv.join(".ready");
    let wanted = packages.join(" ");
    if std::fs::read_to_string(&ready).ok().as_deref() != Some(wanted.as_str()) {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 runs");
        assert!(status.success(), "python3 -m venv failed");
        let status = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(packages)
            .status()
            .expect("pip runs");
        assert!(status.success(), "pip install {packages:?} failed");
        std::fs::write(&ready, &wanted).expect("mark the venv ready");
    }
    python
}

/// The packages of the Python gRPC clients nobody on the project wrote
/// (`tests/python/interop.py` and `examples/python/`): gRPC, its code
/// generator, health, reflection, and `google.rpc.Status` decoding.
#[allow(dead_code)] // Not every test that includes this module runs a gRPC client.
pub const GRPC_PACKAGES: &[&str] = &[
    "grpcio",
    "grpcio-tools",
    "grpcio-health-checking",
    "grpcio-reflection",
    "grpcio-status",
];

/// The interpreter of the shared environment with [`GRPC_PACKAGES`] (as
/// [`python`]: created on first use, or `STELE_PYTHON`).
#[allow(dead_code)] // Not every test that includes this module runs a gRPC client.
pub fn grpc_python() -> PathBuf {
    python("python-venv", GRPC_PACKAGES)
}

//! Interoperability with a second foreign client: Node.js with `@grpc/grpc-js`
//! and `@grpc/proto-loader` from npm, loading the proto at run time.
//!
//! Method: the packages are installed once under cargo's target directory
//! (`npm install --prefix`, or taken from `STELE_NODE_MODULES`); an in-process
//! server listens on port 0; `tests/node/interop.js` checks the error model as
//! grpc-js users meet it (codes, `google.rpc.Status` details with `ErrorDetail`,
//! `ErrorInfo` and `BadRequest`, the `stele-error-code` trailer), malformed
//! request bytes and an AppendSession around a refused request, and exits
//! non-zero on any failure.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "python/foreign_client.rs"]
mod foreign_client;

const PACKAGES: &[&str] = &["@grpc/grpc-js@1", "@grpc/proto-loader@0.8", "protobufjs@7"];

/// The `node_modules` directory holding [`PACKAGES`], installed on first use.
fn node_modules() -> PathBuf {
    if let Some(modules) = std::env::var_os("STELE_NODE_MODULES") {
        return PathBuf::from(modules);
    }
    let prefix = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-interop");
    let ready = prefix.join(".ready");
    let wanted = PACKAGES.join(" ");
    if std::fs::read_to_string(&ready).ok().as_deref() != Some(wanted.as_str()) {
        std::fs::create_dir_all(&prefix).expect("create the npm prefix");
        let status = Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&prefix)
            .args(PACKAGES)
            .status()
            .expect("npm runs");
        assert!(status.success(), "npm install {PACKAGES:?} failed");
        std::fs::write(&ready, &wanted).expect("mark the packages ready");
    }
    prefix.join("node_modules")
}

#[test]
fn node_grpc_js_client_sees_the_standard_error_model() {
    // Goal: a grpc-js client decodes every error as gRPC's richer error model
    // says, and the session and malformed-bytes contracts hold for it too.
    let modules = node_modules();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/interop.js");
    let mut command = Command::new("node");
    command.arg(&script).env("NODE_PATH", &modules);
    foreign_client::run_against_a_server("node interop", command);
}

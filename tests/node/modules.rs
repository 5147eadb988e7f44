//! The npm packages of the Node.js clients nobody on the project wrote
//! (included with `#[path]` by `tests/node_interop.rs` and `tests/examples.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The packages, as `npm install` names them: gRPC for Node.js, the loader of
/// `.proto` files at run time, and the protobuf runtime that decodes
/// `google.rpc.Status` details.
pub const PACKAGES: &[&str] = &["@grpc/grpc-js@1", "@grpc/proto-loader@0.8", "protobufjs@7"];

/// The `node_modules` directory holding [`PACKAGES`], installed on first use
/// under cargo's target directory (`npm install --prefix`), or the one in
/// `STELE_NODE_MODULES`. The marker file holds the package list, so that a
/// changed list reinstalls. Not safe to call from two threads at once.
pub fn node_modules() -> PathBuf {
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

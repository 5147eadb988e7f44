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

use std::path::Path;
use std::process::Command;

#[path = "python/foreign_client.rs"]
mod foreign_client;

#[path = "node/modules.rs"]
mod modules;

#[test]
fn node_grpc_js_client_sees_the_standard_error_model() {
    // Goal: a grpc-js client decodes every error as gRPC's richer error model
    // says, and the session and malformed-bytes contracts hold for it too.
    let modules = modules::node_modules();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/interop.js");
    let mut command = Command::new("node");
    command.arg(&script).env("NODE_PATH", &modules);
    foreign_client::run_against_a_server("node interop", command);
}

//! Compiles `proto/` with a pure-Rust protobuf compiler (protox): no system
//! `protoc` is needed. Also writes the encoded descriptor set for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = protox::compile(["stele/v1/stele.proto"], ["proto"])?;
    let encoded = prost::Message::encode_to_vec(&descriptors);
    std::fs::write(out_dir.join("stele_descriptor.bin"), encoded)?;
    tonic_prost_build::configure()
        // Subscriptions encode their batches straight from stored frames (src/server/wire.rs).
        .extern_path(".stele.v1.EventBatch", "crate::server::wire::EventBatch")
        .compile_fds(descriptors)?;
    Ok(())
}

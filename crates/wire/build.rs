//! Compiles `proto/` with a pure-Rust protobuf compiler (protox): no system
//! `protoc` is needed. Also writes the encoded descriptor set for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = protox::compile(["stele/v1/stele.proto"], ["../../proto"])?;
    let encoded = prost::Message::encode_to_vec(&descriptors);
    std::fs::write(out_dir.join("stele_descriptor.bin"), encoded)?;
    // The messages and the client stubs, with prost's codec.
    tonic_prost_build::configure()
        .build_server(false)
        // Subscriptions encode their batches straight from stored frames (src/batch.rs).
        .extern_path(".stele.v1.EventBatch", "crate::batch::EventBatch")
        .compile_fds(descriptors.clone())?;
    // The server stubs alone (every message is extern, so none is generated
    // twice), with the codec that answers undecodable requests with
    // INVALID_ARGUMENT (src/codec.rs).
    let server_dir = out_dir.join("server");
    std::fs::create_dir_all(&server_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(".stele.v1", "crate::proto")
        .codec_path("crate::codec::RequestCodec")
        .out_dir(&server_dir)
        .compile_fds(descriptors)?;
    Ok(())
}

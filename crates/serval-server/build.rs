//! Compiles the vendored Open Inference Protocol gRPC definition with protox (pure Rust),
//! so building Serval needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/grpc_service.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::grpc::Codec")
        .compile_fds(descriptors)?;
    Ok(())
}

//! Compiles the contract with protox (a Rust protobuf compiler): no system protoc needed.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "silta/v1/audit.proto",
    "silta/v1/common.proto",
    "silta/v1/landlord.proto",
    "silta/v1/social_services.proto",
];

const HOLDS_HETU: &[&str] = &[
    ".silta.v1.ReportRentArrearsRequest",
    ".silta.v1.EnrolClientRequest",
    ".silta.v1.SubjectPurpose",
    ".silta.v1.AuditQueryRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(PROTOS, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("silta_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Messages holding an identity code get a masking Debug (src/proto_debug.rs), so a
        // stray `{:?}` cannot log the code.
        .skip_debug(HOLDS_HETU)
        // A request that does not decode is the caller's to fix: INVALID_ARGUMENT naming the
        // field (src/codec.rs), not tonic-prost's INTERNAL.
        .codec_path("crate::codec::SiltaCodec")
        .compile_fds(fds)?;
    Ok(())
}

//! Compiles `proto/greeter.proto` for the gRPC example. `protoc` comes from PROTOC, which
//! .cargo/config.toml points at scripts/protoc (the vendored protoc the workspace already
//! uses for etcd-client); outside this workspace, any protoc on PATH or in PROTOC does.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/greeter.proto");
    tonic_prost_build::compile_protos("proto/greeter.proto")?;
    Ok(())
}

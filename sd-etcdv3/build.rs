//! Nothing to build. The build-dependencies (protoc-bin-vendored-<platform>) are there so cargo
//! fetches a `protoc` for etcd-client's build script; see `.cargo/config.toml`.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}

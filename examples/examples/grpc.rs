//! gRPC with tonic, balanced by sdkit: three `Greeter` servers register themselves; a tonic
//! client discovers them and spreads its calls with power of two choices on peak-EWMA
//! latency under outlier ejection, every call through a retry. Mid-run one server is killed
//! while it holds a call (connections closed, heartbeats stopped, never deregistered): the
//! cut call is retried elsewhere, ejection stops picking the dead server, discovery drops
//! it when its TTL lapses, and no call fails.
//!
//! The pieces (all in `examples/src/grpc.rs` and `examples/src/grpc/`, ready to copy):
//! - server: `tonic::transport::Server` + `Registry::registrar` + `RegistrationGuard`
//!   (a TTL health check that the guard keeps passing; `deregister().await` on a clean stop);
//! - client, either build (the first argument picks it, `sdkit` by default):
//!   - `sdkit`: `Registry::instancer` → `DefaultEndpointer` making one lazily connected
//!     `tonic::transport::Channel` per instance → `Outlier<P2c::peak_ewma>` → `Retry::call`
//!     building the generated `GreeterClient` on the picked `Channel`;
//!   - `tower`: the same discovery as a tower `Discover` (`sd_lb::tower::Discover`) of
//!     `Eject<Channel>`s → `tower::load::PeakEwmaDiscover` → `tower::balance::p2c::Balance`
//!     → `tower::buffer::Buffer`, as the `GreeterClient`'s transport, with a retry loop
//!     above it;
//!
//!   both retrying only the status codes of `grpc::retryable` (idempotent calls only). How
//!   they differ: see the module docs of `grpc`.
//! - `proto/greeter.proto`, compiled by `build.rs` with tonic-prost-build.
//!
//! ```sh
//! cargo run -p examples --example grpc                                        # embedded registry
//! cargo run -p examples --example grpc -- tower                               # tower's P2C
//! SD_REGISTRY=consul://127.0.0.1:18500 cargo run -p examples --example grpc   # a real Consul
//! ```

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let Some(registry) = examples::setup() else {
        return ExitCode::FAILURE;
    };
    let balancing = match std::env::args().nth(1).map(|a| a.parse()).transpose() {
        Ok(b) => b.unwrap_or_default(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = examples::grpc::Options {
        // Unique per run, so runs against a shared registry never see each other.
        service: format!("greeter-{}", std::process::id()),
        balancing,
        ..Default::default()
    };
    examples::conclude(examples::grpc::run(registry, opts).await, |report| {
        report.check()?;
        Ok(format!(
            "no call failed; the call cut by killing {} was retried; {} ({:.1} s after the kill)",
            report.killed,
            if report.ejected == Some(true) {
                "ejection took it out at once, discovery dropped it"
            } else {
                "discovery dropped it"
            },
            report.noticed_after.as_secs_f64()
        ))
    })
}

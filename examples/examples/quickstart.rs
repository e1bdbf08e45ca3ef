//! The quickstart: three HTTP services register themselves, a client discovers and calls them
//! through round robin and retry, one service crashes mid-run (no deregistration), and
//! traffic moves off it once discovery notices its TTL lapse.
//!
//! ```sh
//! cargo run -p examples --example quickstart                                   # embedded registry
//! SD_REGISTRY=consul://127.0.0.1:18500 cargo run -p examples --example quickstart  # a real Consul
//! ```

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let Some(registry) = examples::setup() else {
        return ExitCode::FAILURE;
    };
    let opts = examples::Options {
        // Unique per run, so runs against a shared registry never see each other.
        service: format!("hello-{}", std::process::id()),
        ..Default::default()
    };
    let ttl = opts.ttl;
    examples::conclude(examples::run(registry, opts).await, |report| {
        report.check()?;
        Ok(format!(
            "no request lost; traffic moved off {} once discovery noticed the crash ({:.1} s later, TTL {} s)",
            report.killed,
            report.noticed_after.as_secs_f64(),
            ttl.as_secs()
        ))
    })
}

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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let registry = match sdkit::from_env() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = examples::Options {
        // Unique per run, so runs against a shared registry never see each other.
        service: format!("hello-{}", std::process::id()),
        ..Default::default()
    };
    match examples::run(registry, opts).await {
        Ok(report) => {
            print!("{report}");
            match report.check() {
                Ok(()) => {
                    println!(
                        "ok: no request lost; traffic moved off {} once discovery noticed the crash ({:.1} s later, TTL {} s)",
                        report.killed,
                        report.noticed_after.as_secs_f64(),
                        examples::Options::default().ttl.as_secs()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("unexpected: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

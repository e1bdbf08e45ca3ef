//! sdkit's metrics on a Prometheus endpoint at http://127.0.0.1:9898/metrics (or the port
//! given as the first argument), with some discovery and balancing traffic to show.
//!
//! ```sh
//! cargo run -p examples --example metrics            # then: curl http://127.0.0.1:9898/metrics
//! SD_REGISTRY=consul://127.0.0.1:18500 cargo run -p examples --example metrics
//! ```

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let port = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(9898);
    // The exporter first: metric handles are registered when registries and balancers are built.
    let exposed = match examples::metrics::serve(port).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot serve metrics on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(registry) = examples::setup() else {
        return ExitCode::FAILURE;
    };
    let service = format!("metrics-demo-{}", std::process::id());
    if let Err(e) = examples::metrics::traffic(registry, &service, 8080, 100).await {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    println!("metrics at {} (Ctrl-C to stop)", exposed.url());
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}

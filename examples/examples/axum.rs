//! An axum service that leaves rotation cleanly, and a client that sees no failure across a
//! rolling restart of three instances.
//!
//! Each instance registers on start and, on SIGTERM, (1) deregisters, (2) keeps serving
//! until the registry shows it gone plus a short grace for lagging clients, (3) drains:
//! stops accepting and lets its in-flight requests finish, (4) exits. The client
//! (discovery → round robin → retry, over reqwest) keeps calling while each instance is
//! replaced in turn (start the new one, wait until it is discovered, SIGTERM the old one).
//! The code to copy is `examples/src/axum_service.rs` (`serve` is the service, `run` the demo).
//!
//! ```sh
//! cargo run -p examples --example axum                          # the rolling restart, embedded registry
//! SD_REGISTRY=consul://127.0.0.1:18500 cargo run -p examples --example axum   # on a real Consul
//! # one instance that stops on SIGTERM (kill -TERM <pid>), e.g. under a process manager:
//! SD_REGISTRY=consul://127.0.0.1:18500 cargo run -p examples --example axum -- serve hello a1 127.0.0.1:8080
//! ```
//!
//! With `memory://` the instances all live in this process (the embedded registry is
//! per-process), so the demo stops each with its own stand-in for SIGTERM; `serve` waits for
//! the real one.

use std::process::ExitCode;

use examples::axum_service::{self, Options, ServeOptions};

#[tokio::main]
async fn main() -> ExitCode {
    let Some(registry) = examples::setup() else {
        return ExitCode::FAILURE;
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => demo(registry).await,
        Some("serve") if args.len() <= 4 => {
            let service = args.get(1).cloned().unwrap_or_else(|| "hello".into());
            let name = args.get(2).cloned().unwrap_or_else(|| "a1".into());
            let bind = args.get(3).cloned().unwrap_or_else(|| "127.0.0.1:0".into());
            serve_one(registry, service, name, &bind).await
        }
        Some(_) => {
            eprintln!("usage: axum [serve [SERVICE [NAME [HOST:PORT]]]]");
            ExitCode::FAILURE
        }
    }
}

async fn demo(registry: std::sync::Arc<dyn sdkit::Registry>) -> ExitCode {
    let opts = Options {
        // Unique per run, so runs against a shared registry never see each other.
        service: format!("hello-axum-{}", std::process::id()),
        ..Options::default()
    };
    examples::conclude(axum_service::run(registry, opts).await, |report| {
        report.check()?;
        Ok("no request failed across the rolling restart; every old instance drained".into())
    })
}

async fn serve_one(
    registry: std::sync::Arc<dyn sdkit::Registry>,
    service: String,
    name: String,
    bind: &str,
) -> ExitCode {
    let term = match axum_service::sigterm() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot handle SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(bind).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {bind}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        println!(
            "{service}/{name} serving on http://{addr}/ (pid {}); SIGTERM to stop",
            std::process::id()
        );
    }
    let opts = ServeOptions {
        service,
        name,
        ..ServeOptions::default()
    };
    match axum_service::serve(registry, listener, opts, term).await {
        Ok(s) => {
            println!(
                "stopped: served {} ({} after deregistering), {} in flight at the drain, all finished",
                s.completed, s.served_after_deregister, s.in_flight_at_drain
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

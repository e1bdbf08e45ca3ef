//! Metrics on a Prometheus endpoint: `metrics-exporter-prometheus` records what sdkit counts
//! (feature `metrics` of sdkit) and a local HTTP server on 127.0.0.1 serves it at `/metrics`.
//!
//! [`serve`] installs the exporter as the global recorder and serves it; [`traffic`] then
//! registers an instance, discovers it and balances calls over it through a [`Metered`]
//! round robin with a metered [`Retry`], so every family of series (instancer, registrar,
//! balancer) has values. The series and their labels: docs/OBSERVABILITY.md.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sd_lb::{BalancerMetrics, Metered, Retry, RoundRobin};
use sdkit::{
    BoxError, DefaultEndpointer, Endpoint, Instance, Registration, RegistrationGuard, Registry,
    ServiceQuery,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The Prometheus endpoint being served.
#[derive(Debug)]
pub struct Exposed {
    /// Where it listens (127.0.0.1, a port the system chose).
    pub addr: SocketAddr,
    /// The exporter's handle (renders the same text the endpoint serves).
    pub handle: PrometheusHandle,
    server: JoinHandle<()>,
}

impl Exposed {
    /// The scrape URL.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }
}

impl Drop for Exposed {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Installs the Prometheus exporter as the process's metrics recorder and serves it on
/// `127.0.0.1:port` (0: any free port) at `/metrics`. Call it before building registries and
/// balancers: their metric handles are registered when they are built. Fails if another
/// recorder is installed already.
pub async fn serve(port: u16) -> Result<Exposed, BoxError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let render = handle.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move { render.render() }
        }),
    );
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(Exposed {
        addr,
        handle,
        server,
    })
}

/// Registers `127.0.0.1:port` under `service`, discovers it and makes `calls` balanced
/// calls through a metered round robin and retry; deregisters at the end.
pub async fn traffic(
    registry: Arc<dyn Registry>,
    service: &str,
    port: u16,
    calls: usize,
) -> Result<(), BoxError> {
    let registrar = registry
        .registrar(Registration::new(service, Instance::new("127.0.0.1", port)))
        .await?;
    let guard = RegistrationGuard::register(registrar).await?;
    let instancer = registry.instancer(&ServiceQuery::new(service)).await?;
    let endpointer = Arc::new(DefaultEndpointer::new(
        &instancer,
        |i: &Instance| -> Result<String, BoxError> { Ok(i.addr().to_string()) },
    ));
    let lb_metrics = BalancerMetrics::new(registry.scheme(), service);
    let retry = Retry::new(Metered::new(
        RoundRobin::new(endpointer.clone()),
        lb_metrics.clone(),
    ))
    .max_attempts(2)
    .timeout(Duration::from_secs(5))
    .metrics(lb_metrics);
    for _ in 0..calls {
        retry
            .call(|ep: Endpoint<String>| async move { Ok::<_, BoxError>(ep.len()) })
            .await?;
    }
    guard.deregister().await?;
    endpointer.close().await;
    Ok(())
}

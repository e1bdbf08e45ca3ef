//! Metrics and tracing for discovery and registration.
//!
//! **Tracing** is always on: the shared watch loop runs each round in a `sdkit.discover`
//! span, the keep-alive loop each round in a `sdkit.keepalive` span, and
//! [`ObservedRegistry`] (what `sdkit::connect` returns) wraps instancer creation,
//! registration and deregistration in `sdkit.registry` spans. Each span carries `backend`,
//! `service` and, once the call ended, `outcome` (`ok`, `error`, `skipped`); a failure's
//! error is logged as an event inside the span. Fields hold names only: never a URL, a
//! token, a password or an instance address.
//!
//! **Metrics** (cargo feature `metrics`) go through the [`metrics`](https://docs.rs/metrics)
//! facade crate, so any exporter works (Prometheus, StatsD, OpenTelemetry...). Every name
//! starts with `sdkit_`, and the labels are `backend` and `service` (plus `outcome` where
//! said), never an instance id or address, so cardinality stays bounded by the services
//! watched. The full table is in docs/OBSERVABILITY.md. Handles are registered once, when
//! an instancer, keep-alive loop or balancer is built: install the exporter (the global
//! recorder) **before** building them, or their metrics go nowhere. Without the feature
//! every type here is empty and every call compiles to nothing.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use tracing::Instrument;

use crate::capabilities::Capabilities;
use crate::error::Result;
use crate::instancer::Instancer;
use crate::registrar::{Registrar, Registration};
use crate::registry::{Registry, ServiceQuery};

/// The `outcome` field of a span: `ok` or `error`.
pub(crate) fn outcome<T>(r: &Result<T>) -> &'static str {
    if r.is_ok() {
        "ok"
    } else {
        "error"
    }
}

/// A `sdkit.registry` span for `op` on `service`, with `outcome` recorded when `fut` ends.
async fn in_span<T>(
    backend: &'static str,
    service: &str,
    op: &'static str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    let span = tracing::info_span!(
        "sdkit.registry",
        backend,
        service,
        op,
        outcome = tracing::field::Empty
    );
    let r = fut.instrument(span.clone()).await;
    span.record("outcome", outcome(&r));
    if let Err(e) = &r {
        span.in_scope(|| tracing::debug!(error = %e, "registry call failed"));
    }
    r
}

/// Counts a registration lost by the registry and made again by a registrar's keep-alive
/// (`sdkit_registrar_reregistrations_total`). Backends call it where they register again.
pub fn reregistered(backend: &'static str, service: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("sdkit_registrar_reregistrations_total",
        "backend" => backend, "service" => service.to_string())
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (backend, service);
}

/// Counts a sudden shrink held back by empty-set protection
/// (`sdkit_instancer_shrinks_held_total`, [`crate::protect`]).
pub(crate) fn shrink_held(service: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("sdkit_instancer_shrinks_held_total", "service" => service.to_string())
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = service;
}

/// Counts a failover instancer moving to another member's set
/// (`sdkit_failover_switches_total`, [`crate::compose`]).
pub(crate) fn failover_switched(service: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("sdkit_failover_switches_total", "service" => service.to_string())
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = service;
}

/// Counts a registration or deregistration attempt and its outcome.
fn count_registration(backend: &'static str, service: &str, op: &'static str, ok: bool) {
    #[cfg(feature = "metrics")]
    {
        let name = if op == "register" {
            "sdkit_registrar_registrations_total"
        } else {
            "sdkit_registrar_deregistrations_total"
        };
        metrics::counter!(name, "backend" => backend, "service" => service.to_string(),
            "outcome" => if ok { "ok" } else { "error" })
        .increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (backend, service, op, ok);
}

/// A [`Registry`] whose calls are traced (and counted, with the `metrics` feature): the
/// creation of each instancer and every registration and deregistration runs in a
/// `sdkit.registry` span with `backend`, `service`, `op` and `outcome`. Everything else is
/// passed through unchanged. `sdkit::connect` wraps every registry in one.
#[derive(Clone)]
pub struct ObservedRegistry {
    inner: Arc<dyn Registry>,
}

impl ObservedRegistry {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Registry>) -> Self {
        ObservedRegistry { inner }
    }

    /// The wrapped registry.
    pub fn inner(&self) -> &Arc<dyn Registry> {
        &self.inner
    }
}

impl fmt::Debug for ObservedRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait]
impl Registry for ObservedRegistry {
    fn scheme(&self) -> &'static str {
        self.inner.scheme()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn instancer(&self, query: &ServiceQuery) -> Result<Arc<dyn Instancer>> {
        in_span(
            self.inner.scheme(),
            &query.service,
            "instancer",
            self.inner.instancer(query),
        )
        .await
    }

    async fn registrar(&self, registration: Registration) -> Result<Arc<dyn Registrar>> {
        let backend = self.inner.scheme();
        let service = registration.service.clone();
        let inner = in_span(
            backend,
            &service,
            "registrar",
            self.inner.registrar(registration),
        )
        .await?;
        Ok(Arc::new(ObservedRegistrar { backend, inner }))
    }

    async fn services(&self) -> Result<Vec<String>> {
        in_span(self.inner.scheme(), "", "services", self.inner.services()).await
    }
}

/// A registrar whose `register` and `deregister` are traced and counted.
struct ObservedRegistrar {
    backend: &'static str,
    inner: Arc<dyn Registrar>,
}

impl fmt::Debug for ObservedRegistrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl ObservedRegistrar {
    async fn call(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<()>> + Send,
    ) -> Result<()> {
        let service = &self.inner.registration().service;
        let r = in_span(self.backend, service, op, fut).await;
        count_registration(self.backend, service, op, r.is_ok());
        r
    }
}

#[async_trait]
impl Registrar for ObservedRegistrar {
    async fn register(&self) -> Result<()> {
        self.call("register", self.inner.register()).await
    }

    async fn deregister(&self) -> Result<()> {
        self.call("deregister", self.inner.deregister()).await
    }

    fn registration(&self) -> &Registration {
        self.inner.registration()
    }
}

/// The metrics of one watch loop: handles registered once, when the instancer starts.
#[cfg(feature = "metrics")]
pub(crate) struct LoopMetrics {
    instances_events: metrics::Counter,
    error_events: metrics::Counter,
    errors: metrics::Counter,
    instances: metrics::Gauge,
    staleness: metrics::Gauge,
    last_success: metrics::Gauge,
    propagation: metrics::Histogram,
    /// When the last round succeeded (the loop's clock), or when the loop started.
    since: tokio::time::Instant,
}

/// The metrics of one watch loop (empty without the `metrics` feature).
#[cfg(not(feature = "metrics"))]
pub(crate) struct LoopMetrics;

#[cfg(feature = "metrics")]
impl LoopMetrics {
    pub(crate) fn new(backend: &'static str, service: &str) -> Self {
        let labels = [
            ("backend", backend.to_string()),
            ("service", service.to_string()),
        ];
        let with_kind = |kind: &'static str| {
            let mut l = labels.to_vec();
            l.push(("kind", kind.to_string()));
            metrics::counter!("sdkit_instancer_events_total", &l)
        };
        LoopMetrics {
            instances_events: with_kind("instances"),
            error_events: with_kind("error"),
            errors: metrics::counter!("sdkit_instancer_errors_total", &labels),
            instances: metrics::gauge!("sdkit_instancer_instances", &labels),
            staleness: metrics::gauge!("sdkit_instancer_staleness_seconds", &labels),
            last_success: metrics::gauge!(
                "sdkit_instancer_last_success_timestamp_seconds",
                &labels
            ),
            propagation: metrics::histogram!("sdkit_instancer_propagation_delay_seconds", &labels),
            since: tokio::time::Instant::now(),
        }
    }

    /// A successful round: `n` instances, `changed` whether subscribers got a new set,
    /// `changed_at` the registry's own time of the change, if it gives one.
    pub(crate) fn succeeded(
        &mut self,
        n: usize,
        changed: bool,
        changed_at: Option<std::time::SystemTime>,
    ) {
        self.since = tokio::time::Instant::now();
        let now = std::time::SystemTime::now();
        self.instances.set(n as f64);
        self.staleness.set(0.0);
        if let Ok(unix) = now.duration_since(std::time::UNIX_EPOCH) {
            self.last_success.set(unix.as_secs_f64());
        }
        if changed {
            self.instances_events.increment(1);
            if let Some(at) = changed_at {
                // A registry clock ahead of ours gives a negative delay: counted as zero.
                let delay = now.duration_since(at).unwrap_or_default();
                self.propagation.record(delay.as_secs_f64());
            }
        }
    }

    /// A failed round (`published`: an error event went to subscribers) or a skipped one.
    pub(crate) fn failed(&mut self, published: bool) {
        self.errors.increment(1);
        if published {
            self.error_events.increment(1);
        }
        self.staleness.set(self.since.elapsed().as_secs_f64());
    }
}

#[cfg(not(feature = "metrics"))]
impl LoopMetrics {
    #[inline(always)]
    pub(crate) fn new(_: &'static str, _: &str) -> Self {
        LoopMetrics
    }
    #[inline(always)]
    pub(crate) fn succeeded(&mut self, _: usize, _: bool, _: Option<std::time::SystemTime>) {}
    #[inline(always)]
    pub(crate) fn failed(&mut self, _: bool) {}
}

/// The metrics of one keep-alive loop: handles registered once, when it starts.
#[cfg(feature = "metrics")]
pub(crate) struct KeepAliveMetrics {
    renewals: metrics::Counter,
    failures: metrics::Counter,
}

/// The metrics of one keep-alive loop (empty without the `metrics` feature).
#[cfg(not(feature = "metrics"))]
pub(crate) struct KeepAliveMetrics;

impl KeepAliveMetrics {
    #[cfg(feature = "metrics")]
    pub(crate) fn new(backend: &'static str, service: &str) -> Self {
        let labels = [
            ("backend", backend.to_string()),
            ("service", service.to_string()),
        ];
        KeepAliveMetrics {
            renewals: metrics::counter!("sdkit_registrar_renewals_total", &labels),
            failures: metrics::counter!("sdkit_registrar_renewal_failures_total", &labels),
        }
    }

    #[cfg(not(feature = "metrics"))]
    #[inline(always)]
    pub(crate) fn new(_: &'static str, _: &str) -> Self {
        KeepAliveMetrics
    }

    /// One keep-alive round ended.
    #[inline(always)]
    pub(crate) fn round(&self, ok: bool) {
        #[cfg(feature = "metrics")]
        if ok {
            self.renewals.increment(1)
        } else {
            self.failures.increment(1)
        }
        #[cfg(not(feature = "metrics"))]
        let _ = ok;
    }
}

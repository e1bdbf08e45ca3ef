//! Balancer metrics (cargo feature `metrics`): [`BalancerMetrics`] and the [`Metered`]
//! balancer that counts picks. Names and labels: docs/OBSERVABILITY.md.
//!
//! Every handle is registered once, when the [`BalancerMetrics`] is built; a pick then
//! costs one counter increment through a handle (an atomic add in the usual exporters), no
//! lock and no allocation. Without the feature the internal [`Meter`] is empty and every
//! call compiles to nothing.

#[cfg(feature = "metrics")]
pub use on::{BalancerMetrics, Metered};

#[cfg(feature = "metrics")]
mod on {
    use std::sync::Arc;

    use sd_core::Snapshot;

    use crate::balancer::{Balancer, Picked, Request};
    use crate::error::LbError;

    /// The counters of one balancer, labelled `backend` and `service`. Clones share the
    /// counters: hand one to [`Metered`], [`Retry::metrics`](crate::Retry::metrics) and
    /// [`Outlier::metrics`](crate::Outlier::metrics) of the same balancer.
    ///
    /// Build it **after** installing the metrics exporter (the global recorder): its
    /// handles are registered here, once.
    #[derive(Clone, Debug)]
    pub struct BalancerMetrics(pub(crate) Arc<Handles>);

    #[derive(Debug)]
    pub(crate) struct Handles {
        pub(crate) picks: metrics::Counter,
        pub(crate) no_endpoints: metrics::Counter,
        pub(crate) pick_errors: metrics::Counter,
        pub(crate) retries: metrics::Counter,
        pub(crate) exhausted_attempts: metrics::Counter,
        pub(crate) exhausted_budget: metrics::Counter,
        pub(crate) ejections: metrics::Counter,
    }

    impl BalancerMetrics {
        /// The counters for the balancer of `service` discovered through `backend` (the
        /// registry's scheme, e.g. `registry.scheme()`). Never pass an instance id or an
        /// address: every distinct value is a new time series.
        pub fn new(backend: &str, service: &str) -> Self {
            let labels = [
                ("backend", backend.to_string()),
                ("service", service.to_string()),
            ];
            let exhausted = |reason: &'static str| {
                let mut l = labels.to_vec();
                l.push(("reason", reason.to_string()));
                metrics::counter!("sdkit_balancer_retries_exhausted_total", &l)
            };
            BalancerMetrics(Arc::new(Handles {
                picks: metrics::counter!("sdkit_balancer_picks_total", &labels),
                no_endpoints: metrics::counter!("sdkit_balancer_no_endpoints_total", &labels),
                pick_errors: metrics::counter!("sdkit_balancer_pick_errors_total", &labels),
                retries: metrics::counter!("sdkit_balancer_retries_total", &labels),
                exhausted_attempts: exhausted("attempts"),
                exhausted_budget: exhausted("budget"),
                ejections: metrics::counter!("sdkit_balancer_ejections_total", &labels),
            }))
        }
    }

    /// A balancer that counts its picks (`sdkit_balancer_picks_total`), its picks that
    /// found no endpoint (`sdkit_balancer_no_endpoints_total`) and those that failed
    /// otherwise, e.g. on the endpointer's discovery error (`sdkit_balancer_pick_errors_total`),
    /// then hands on what `inner` picked, unchanged.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use sd_core::{FixedEndpointer, Instance};
    /// use sd_lb::{Balancer, BalancerMetrics, Metered, RoundRobin};
    ///
    /// let ep = Arc::new(FixedEndpointer::new([(Instance::new("10.0.0.1", 80), "a")]));
    /// let lb = Metered::new(RoundRobin::new(ep), BalancerMetrics::new("memory", "web"));
    /// assert_eq!(*lb.pick().unwrap(), "a");
    /// ```
    #[derive(Debug)]
    pub struct Metered<B> {
        inner: B,
        metrics: BalancerMetrics,
    }

    impl<B> Metered<B> {
        /// Counts the picks of `inner` into `metrics`.
        pub fn new(inner: B, metrics: BalancerMetrics) -> Self {
            Metered { inner, metrics }
        }

        /// The inner balancer.
        pub fn inner(&self) -> &B {
            &self.inner
        }

        /// The counters.
        pub fn metrics(&self) -> &BalancerMetrics {
            &self.metrics
        }
    }

    impl<E: 'static, B: Balancer<E>> Balancer<E> for Metered<B> {
        #[inline]
        fn pick(&self) -> Result<sd_core::Endpoint<E>, LbError> {
            let r = self.inner.pick();
            match &r {
                Ok(_) => self.metrics.0.picks.increment(1),
                Err(LbError::NoEndpoints) => self.metrics.0.no_endpoints.increment(1),
                // The discovery error (an invalidated set during an outage), or any other.
                Err(_) => self.metrics.0.pick_errors.increment(1),
            }
            r
        }

        #[inline]
        fn pick_with(&self, request: &Request<'_, E>) -> Result<Picked<E>, LbError> {
            let r = self.inner.pick_with(request);
            match &r {
                Ok(_) => self.metrics.0.picks.increment(1),
                Err(LbError::NoEndpoints) => self.metrics.0.no_endpoints.increment(1),
                // The discovery error (an invalidated set during an outage), or any other.
                Err(_) => self.metrics.0.pick_errors.increment(1),
            }
            r
        }

        fn snapshot(&self) -> Snapshot<E> {
            self.inner.snapshot()
        }

        fn panic_threshold(&self) -> crate::PanicThreshold {
            self.inner.panic_threshold()
        }
    }
}

/// What [`Retry`](crate::Retry) and [`Outlier`](crate::Outlier) count into, if anything.
#[derive(Clone, Debug, Default)]
pub(crate) struct Meter {
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<BalancerMetrics>,
}

impl Meter {
    /// A retry (an attempt after the first).
    #[inline(always)]
    pub(crate) fn retry(&self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.0.retries.increment(1);
        }
    }

    /// A call that gave up: every attempt used (`budget` false) or the budget empty.
    #[inline(always)]
    pub(crate) fn exhausted(&self, budget: bool) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            if budget {
                m.0.exhausted_budget.increment(1)
            } else {
                m.0.exhausted_attempts.increment(1)
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = budget;
    }

    /// An endpoint ejected.
    #[inline(always)]
    pub(crate) fn ejected(&self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.0.ejections.increment(1);
        }
    }
}

//! [`RefuseStale`]: a balancer that fails picks when the endpoints are stale for too long.

use std::time::Duration;

use sd_core::{Freshness, Snapshot};

use crate::balancer::{Balancer, Picked, Request};
use crate::error::LbError;

/// Wraps any balancer: a pick fails with [`LbError::Stale`] when the endpoints are stale
/// ([`Freshness::is_stale`]: the instancer is in an error state, or serves a set loaded from
/// disk, or has stopped) for longer than `max`; otherwise the inner balancer picks. When the
/// snapshot serves nothing (reads fail), the inner balancer's error is returned unchanged.
///
/// Without it, stale endpoints are served for as long as they are stale (go-kit's
/// last-known-good, EP-7). With it, a caller that prefers failing over using endpoints
/// nobody has confirmed for `max` gets a clear error naming the reason and the age. The
/// age is read on tokio's clock (see [`Freshness::age`]); fresh endpoints are never refused,
/// however long ago they changed.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
/// use std::time::Duration;
/// use sd_core::*;
/// use sd_lb::{Balancer, LbError, RefuseStale, RoundRobin};
///
/// let instancer = InstanceCache::new();
/// instancer.update(Event::instances(vec![Instance::new("10.0.0.1", 80)]));
/// let endpointer = std::sync::Arc::new(DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
///     Ok(i.addr().to_string())
/// }));
/// let lb = RefuseStale::new(RoundRobin::new(endpointer.clone()), Duration::from_secs(60));
///
/// instancer.update(Event::Error(Error::unavailable("demo", "connection refused")));
/// let mut changes = endpointer.changes();
/// while !endpointer.endpoints().is_stale() { changes.changed().await; }
/// assert!(lb.pick().is_ok()); // stale, but not for longer than a minute
/// tokio::time::advance(Duration::from_secs(61)).await;
/// assert!(matches!(lb.pick(), Err(LbError::Stale { .. })));
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct RefuseStale<B> {
    inner: B,
    max: Duration,
}

impl<B> RefuseStale<B> {
    /// Refuses picks from `inner` while its endpoints are stale for longer than `max`.
    pub fn new(inner: B, max: Duration) -> Self {
        RefuseStale { inner, max }
    }

    /// The inner balancer.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The longest staleness accepted.
    pub fn max_stale(&self) -> Duration {
        self.max
    }

    fn check(&self, freshness: &Freshness) -> Result<(), LbError> {
        match freshness.reason() {
            Some(reason) if freshness.stale_beyond(self.max) => Err(LbError::Stale {
                reason,
                age: freshness.age(),
                max: self.max,
            }),
            _ => Ok(()),
        }
    }
}

impl<E: 'static, B: Balancer<E>> Balancer<E> for RefuseStale<B> {
    fn pick_with(&self, request: &Request<'_, E>) -> Result<Picked<E>, LbError> {
        let snapshot = self.inner.snapshot();
        // A snapshot that serves nothing gets the inner balancer's own error (LB-1).
        if snapshot.get().is_ok() {
            self.check(snapshot.freshness())?;
        }
        drop(snapshot);
        self.inner.pick_with(request)
    }

    fn snapshot(&self) -> Snapshot<E> {
        self.inner.snapshot()
    }

    fn panic_threshold(&self) -> crate::PanicThreshold {
        self.inner.panic_threshold()
    }
}

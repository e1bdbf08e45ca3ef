//! Failure ejection for tower's balancers, through readiness.
//!
//! `tower::balance::p2c::Balance` only ever sees an endpoint's readiness and, with
//! `PeakEwma`/`PendingRequests`, its load. Neither notices an endpoint that fails: a dead
//! server answers "connection refused" fastest of all, so peak EWMA even prefers it. [`Eject`]
//! closes that gap the way linkerd's failure accrual does: it counts an endpoint's failed
//! calls in a row and, at [`EjectConfig::consecutive_failures`], turns the endpoint
//! *unready* for an ejection time. A balancer skips unready endpoints and is woken when the
//! time is up; the next call is a probe (one more failure ejects it again, for longer).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use ::tower::{Layer, Service};
use tokio::time::{Instant, Sleep};

/// When [`Eject`] takes an endpoint out and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectConfig {
    /// Failed calls in a row that eject the endpoint (default 5; 0 never ejects).
    pub consecutive_failures: u32,
    /// The ejection time is `base_ejection × ejections in a row` (default 30 s)...
    pub base_ejection: Duration,
    /// ...capped at this (default 300 s).
    pub max_ejection: Duration,
}

impl Default for EjectConfig {
    fn default() -> Self {
        EjectConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Failed calls in a row.
    consecutive: u32,
    /// Ejections without a success in between.
    ejections: u32,
    /// Ejected until then.
    until: Option<Instant>,
}

impl State {
    /// Records one call's outcome.
    fn record(&mut self, failed: bool, config: &EjectConfig) {
        if !failed {
            self.consecutive = 0;
            self.ejections = 0;
            return;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        // Calls already in flight when the endpoint was ejected do not extend the ejection.
        if config.consecutive_failures > 0
            && self.consecutive >= config.consecutive_failures
            && self.until.is_none()
        {
            self.ejections = self.ejections.saturating_add(1);
            let time = config
                .base_ejection
                .saturating_mul(self.ejections)
                .min(config.max_ejection);
            // An ejection time past what `Instant` can hold is "for ever".
            self.until = Some(Instant::now().checked_add(time).unwrap_or_else(far_future));
            self.consecutive = 0;
            tracing::debug!(ejection = ?time, ejections = self.ejections, "endpoint ejected");
        }
    }
}

/// About 30 years from now: as far as tokio's timer goes.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// An endpoint service that turns unready after failing
/// [`consecutive_failures`](EjectConfig::consecutive_failures) calls in a row (an `Err` from
/// the inner service), for an ejection time that grows with each ejection in a row. Clones
/// share one state: wrap each endpoint once (in the [`Factory`](sd_core::Factory) or with
/// [`EjectLayer`]) and let the balancer clone it.
///
/// Only `Err` counts as a failure: for a tonic `Channel` that is a call that reached no
/// server or was cut (gRPC statuses arrive as `Ok` responses); for hyper, a transport error.
/// A success resets the counts. After the ejection time the endpoint is ready again and
/// its next outcome decides: a success keeps it in, a failure ejects it again for longer.
///
/// When every endpoint is ejected, a tower balancer has nothing ready and callers wait until
/// the first ejection ends (or their own timeout): bound the wait with a timeout layer and
/// keep `base_ejection` short where that matters.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use sd_lb::tower::{Eject, EjectConfig};
/// use tower::{service_fn, Service, ServiceExt};
/// let config = EjectConfig { consecutive_failures: 2, ..EjectConfig::default() };
/// let mut svc = Eject::new(service_fn(|fail: bool| async move {
///     if fail { Err("refused") } else { Ok("hello") }
/// }), config);
/// assert!(svc.ready().await.unwrap().call(true).await.is_err());
/// assert!(!svc.is_ejected());
/// assert!(svc.ready().await.unwrap().call(true).await.is_err());
/// assert!(svc.is_ejected()); // unready for 30 s: a balancer picks another endpoint
/// # });
/// ```
pub struct Eject<S> {
    inner: S,
    config: EjectConfig,
    state: Arc<Mutex<State>>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S> Eject<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: EjectConfig) -> Self {
        Eject {
            inner,
            config,
            state: Arc::default(),
            sleep: None,
        }
    }

    /// Whether the endpoint is ejected now.
    pub fn is_ejected(&self) -> bool {
        let until = lock(&self.state).until;
        until.is_some_and(|t| Instant::now() < t)
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // The state is a few integers updated in one step: usable after a panic elsewhere.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl<S: Clone> Clone for Eject<S> {
    fn clone(&self) -> Self {
        Eject {
            inner: self.inner.clone(),
            config: self.config,
            state: self.state.clone(),
            sleep: None,
        }
    }
}

impl<S> std::fmt::Debug for Eject<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eject")
            .field("config", &self.config)
            .field("state", &*lock(&self.state))
            .finish_non_exhaustive()
    }
}

impl<S, Req> Service<Req> for Eject<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = EjectFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            let until = lock(&self.state).until;
            match until {
                Some(t) if Instant::now() < t => {
                    // Unready until `t`: the timer wakes the balancer then.
                    let sleep = self
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(t)));
                    if sleep.deadline() != t {
                        sleep.as_mut().reset(t);
                    }
                    ready!(sleep.as_mut().poll(cx));
                }
                Some(t) => {
                    // The ejection is over; the next outcome decides.
                    let mut state = lock(&self.state);
                    if state.until == Some(t) {
                        state.until = None;
                        // One more failure ejects it again.
                        state.consecutive = self.config.consecutive_failures.saturating_sub(1);
                    }
                    drop(state);
                    self.sleep = None;
                    return self.inner.poll_ready(cx);
                }
                None => return self.inner.poll_ready(cx),
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        EjectFuture {
            inner: self.inner.call(req),
            state: Some((self.state.clone(), self.config)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Eject`]: records the outcome when it completes. One dropped
    /// before completing records nothing.
    pub struct EjectFuture<F> {
        #[pin]
        inner: F,
        state: Option<(Arc<Mutex<State>>, EjectConfig)>,
    }
}

impl<F> std::fmt::Debug for EjectFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EjectFuture").finish_non_exhaustive()
    }
}

impl<F, T, E> Future for EjectFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some((state, config)) = this.state.take() {
            lock(&state).record(result.is_err(), &config);
        }
        Poll::Ready(result)
    }
}

/// A [`Layer`] wrapping services in [`Eject`].
#[derive(Debug, Clone, Copy, Default)]
pub struct EjectLayer {
    config: EjectConfig,
}

impl EjectLayer {
    /// Ejects as `config` says.
    pub fn new(config: EjectConfig) -> Self {
        EjectLayer { config }
    }
}

impl<S> Layer<S> for EjectLayer {
    type Service = Eject<S>;

    fn layer(&self, inner: S) -> Eject<S> {
        Eject::new(inner, self.config)
    }
}

//! Failure ejection for tower's balancers, through readiness.
//!
//! `tower::balance::p2c::Balance` only ever sees an endpoint's readiness and, with
//! `PeakEwma`/`PendingRequests`, its load. Neither notices an endpoint that fails: a dead
//! server answers "connection refused" fastest of all, so peak EWMA even prefers it. [`Eject`]
//! closes that gap the way linkerd's failure accrual does: it counts an endpoint's failed
//! calls in a row and, at [`EjectConfig::consecutive_failures`], turns the endpoint
//! *unready* for an ejection time. A balancer skips unready endpoints and is woken when the
//! time is up; then one call is admitted as a probe and decides: a failure ejects it again,
//! for longer, a success puts it back.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll, Waker};
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

/// The longest ejection: about 30 years, "for ever" (longer ones are cut to it, so that an
/// `Instant` plus the time, and tokio's timer rounding on top, never overflow).
const FOR_EVER: Duration = Duration::from_secs(86_400 * 365 * 30);

#[derive(Debug, Default)]
struct State {
    /// Failed calls in a row.
    consecutive: u32,
    /// Ejections without a success in between.
    ejections: u32,
    /// Ejected until then.
    until: Option<Instant>,
    /// Ejections so far: a call's outcome counts only if no ejection began after it was
    /// sent.
    epoch: u64,
    /// The ejection is over and one probe call decides: until its outcome no other call
    /// is admitted.
    probation: bool,
    /// In probation, a clone was told "ready" for the probe (it holds the slot until it
    /// calls or is dropped), or the probe is in flight.
    probe_taken: bool,
    /// Tasks waiting for the probe's outcome (each waker once).
    waiters: Vec<Waker>,
}

impl State {
    /// Records the outcome of a call sent in `epoch`; returns the wakers to wake.
    fn record(
        &mut self,
        failed: bool,
        epoch: u64,
        probe: bool,
        config: &EjectConfig,
    ) -> Vec<Waker> {
        if probe {
            self.probe_taken = false;
        }
        // A call sent before the latest ejection says nothing about the endpoint since.
        if epoch == self.epoch {
            if failed {
                self.consecutive = self.consecutive.saturating_add(1);
                if config.consecutive_failures > 0
                    && self.consecutive >= config.consecutive_failures
                    && self.until.is_none()
                {
                    self.eject(config);
                }
            } else {
                self.consecutive = 0;
                self.ejections = 0;
                self.probation = false;
            }
        }
        if self.probe_taken && self.probation {
            Vec::new()
        } else {
            std::mem::take(&mut self.waiters)
        }
    }

    /// Whether an ejection is running now.
    fn ejected_now(&self) -> bool {
        self.until.is_some_and(|t| Instant::now() < t)
    }

    fn eject(&mut self, config: &EjectConfig) {
        self.ejections = self.ejections.saturating_add(1);
        let time = config
            .base_ejection
            .saturating_mul(self.ejections)
            .min(config.max_ejection)
            .min(FOR_EVER);
        self.until = Some(Instant::now() + time);
        self.epoch += 1;
        self.consecutive = 0;
        self.probation = false;
        self.probe_taken = false;
        tracing::debug!(ejection = ?time, ejections = self.ejections, "endpoint ejected");
    }

    /// Gives up the probe slot (its holder went away without an outcome).
    fn release_probe(&mut self) -> Vec<Waker> {
        self.probe_taken = false;
        std::mem::take(&mut self.waiters)
    }
}

fn wake(wakers: Vec<Waker>) {
    for w in wakers {
        w.wake();
    }
}

/// An endpoint service that turns unready after failing
/// [`consecutive_failures`](EjectConfig::consecutive_failures) calls in a row (an `Err` from
/// the inner service), for an ejection time that grows with each ejection in a row. Clones
/// share one state: wrap each endpoint once (in the [`Factory`](sd_core::Factory) or with
/// [`EjectLayer`]) and let the balancer clone it.
///
/// Only `Err` counts as a failure: for a tonic `Channel` that is a call that reached no
/// server or was cut (gRPC statuses arrive as `Ok` responses); for hyper, a transport error.
/// A success resets the counts. After the ejection time the endpoint is on probation: one
/// call is admitted (the clone told "ready" first holds the slot until it calls or is
/// dropped), every other caller sees it unready until that probe's outcome: a success ends
/// probation, a failure ejects it again for longer. A call sent before an ejection that
/// ends after it does not count (it says nothing about the endpoint since).
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
    /// This clone holds the probe slot (told "ready" in probation, not called yet).
    probe: bool,
}

impl<S> Eject<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: EjectConfig) -> Self {
        Eject {
            inner,
            config,
            state: Arc::default(),
            sleep: None,
            probe: false,
        }
    }

    /// Whether the endpoint is ejected now.
    pub fn is_ejected(&self) -> bool {
        lock(&self.state).ejected_now()
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A handle on the ejection state that does not keep the service (or its connection)
    /// alive: for reports and metrics kept beside a balancer.
    pub fn handle(&self) -> EjectHandle {
        EjectHandle {
            state: Arc::downgrade(&self.state),
        }
    }
}

/// A weak handle on an [`Eject`]'s state, from [`Eject::handle`].
#[derive(Debug, Clone)]
pub struct EjectHandle {
    state: Weak<Mutex<State>>,
}

impl EjectHandle {
    /// Whether the endpoint is ejected now (`false` once every clone of it is gone).
    pub fn is_ejected(&self) -> bool {
        self.state
            .upgrade()
            .is_some_and(|state| lock(&state).ejected_now())
    }

    /// Whether every clone of the [`Eject`] has been dropped (the endpoint left the
    /// balancer): the handle can be dropped too.
    pub fn is_gone(&self) -> bool {
        self.state.strong_count() == 0
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
            probe: false,
        }
    }
}

impl<S> Drop for Eject<S> {
    fn drop(&mut self) {
        if self.probe {
            let wakers = lock(&self.state).release_probe();
            wake(wakers);
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
            let mut state = lock(&self.state);
            if let Some(t) = state.until {
                if Instant::now() < t {
                    drop(state);
                    // Unready until `t`: the timer wakes the balancer then.
                    let sleep = self
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(t)));
                    if sleep.deadline() != t {
                        sleep.as_mut().reset(t);
                    }
                    ready!(sleep.as_mut().poll(cx));
                    continue;
                }
                // The ejection is over: probation, one more failure ejects it again.
                state.until = None;
                state.probation = true;
                state.probe_taken = false;
                state.consecutive = self.config.consecutive_failures.saturating_sub(1);
            }
            self.sleep = None;
            if state.probation && !self.probe {
                if state.probe_taken {
                    // Another caller's probe decides: wait for its outcome.
                    if !state.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                        state.waiters.push(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                state.probe_taken = true;
                self.probe = true;
            }
            drop(state);
            return self.inner.poll_ready(cx);
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let probe = std::mem::take(&mut self.probe);
        let epoch = lock(&self.state).epoch;
        EjectFuture {
            inner: self.inner.call(req),
            call: Call {
                state: Some(self.state.clone()),
                config: self.config,
                epoch,
                probe,
            },
        }
    }
}

/// A call in flight: its outcome goes to the shared state once.
struct Call {
    /// `None` once the outcome is recorded.
    state: Option<Arc<Mutex<State>>>,
    config: EjectConfig,
    epoch: u64,
    probe: bool,
}

impl Call {
    fn finish(&mut self, failed: bool) {
        if let Some(state) = self.state.take() {
            let wakers = lock(&state).record(failed, self.epoch, self.probe, &self.config);
            wake(wakers);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Dropped before its outcome: counts nothing, but a probe gives up its slot.
        if let (Some(state), true) = (self.state.take(), self.probe) {
            let wakers = lock(&state).release_probe();
            wake(wakers);
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Eject`]: records the outcome when it completes. One dropped
    /// before completing records nothing (a probe gives up its slot).
    pub struct EjectFuture<F> {
        #[pin]
        inner: F,
        call: Call,
    }
}

impl<F> std::fmt::Debug for EjectFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EjectFuture")
            .field("probe", &self.call.probe)
            .finish_non_exhaustive()
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
        this.call.finish(result.is_err());
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

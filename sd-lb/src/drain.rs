//! Graceful drain: an endpoint that discovery removes gets no new picks, and its factory's
//! `close` waits until its in-flight requests have finished (or a drain timeout passed).

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_core::{BoxError, Endpoint, Factory, Instance, Snapshot};

use crate::balancer::{pick_avoiding, value_ptr, Balancer, Feedback, Outcome, Picked, Request};
use crate::error::LbError;

/// An endpoint value made by a [`DrainFactory`]: the inner factory's value and the count of
/// requests in flight on it. Dereferences to the inner value.
pub struct Drained<E> {
    value: Arc<E>,
    state: Arc<InFlight>,
}

/// In-flight requests on one endpoint, and whether its close has begun.
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    closing: AtomicBool,
    /// Woken when the count drops to 0 while closing.
    zero: tokio::sync::Notify,
}

impl<E> Drained<E> {
    /// Requests picked through [`Drain`] and not finished yet.
    pub fn in_flight(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    /// Whether the endpoint has left and is draining (or closed).
    pub fn is_closing(&self) -> bool {
        self.state.closing.load(Ordering::SeqCst)
    }
}

impl<E> Deref for Drained<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.value
    }
}

impl<E: std::fmt::Debug> std::fmt::Debug for Drained<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drained")
            .field("value", &self.value)
            .field("in_flight", &self.in_flight())
            .field("closing", &self.is_closing())
            .finish()
    }
}

/// A [`Factory`] whose [`close`](Factory::close) waits for the endpoint's in-flight requests
/// (counted by a [`Drain`] balancer) to finish, at most `timeout`, before it runs the inner
/// factory's close. Use it with [`Drain`]; see there.
pub struct DrainFactory<F> {
    inner: Arc<F>,
    timeout: Duration,
}

impl<F> DrainFactory<F> {
    /// Drains endpoints of `inner` for at most `timeout` before closing them.
    pub fn new(inner: F, timeout: Duration) -> Self {
        DrainFactory {
            inner: Arc::new(inner),
            timeout,
        }
    }
}

impl<E, F> Factory<Drained<E>> for DrainFactory<F>
where
    E: Send + Sync + 'static,
    F: Factory<E>,
{
    fn make(&self, instance: &Instance) -> Result<Drained<E>, BoxError> {
        Ok(Drained {
            value: Arc::new(self.inner.make(instance)?),
            state: Arc::default(),
        })
    }

    fn close(&self, instance: &Instance, endpoint: &Drained<E>) {
        let state = endpoint.state.clone();
        // SeqCst with the pick's increment-then-check (see `Drain::pick_with`): either the
        // pick sees `closing` and backs off, or this sees its request in the count.
        state.closing.store(true, Ordering::SeqCst);
        if state.count.load(Ordering::SeqCst) == 0 {
            self.inner.close(instance, &endpoint.value);
            return;
        }
        let (inner, value, inst) = (self.inner.clone(), endpoint.value.clone(), instance.clone());
        let timeout = self.timeout;
        let wait = async move {
            let drained = tokio::time::timeout(timeout, async {
                while state.count.load(Ordering::SeqCst) > 0 {
                    state.zero.notified().await;
                }
            })
            .await;
            if drained.is_err() {
                tracing::info!(
                    instance = %inst,
                    in_flight = state.count.load(Ordering::SeqCst),
                    ?timeout,
                    "drain: timeout, closing the endpoint with requests in flight"
                );
            }
            inner.close(&inst, &value);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(wait);
            }
            Err(_) => {
                tracing::warn!("drain: no tokio runtime to wait on; closing the endpoint at once");
                // `wait` owns the value; without a runtime it cannot run: close directly.
                drop(wait);
                self.inner.close(instance, &endpoint.value);
            }
        }
    }
}

/// Wraps any [`Balancer`] over [`Drained`] endpoints (made by a [`DrainFactory`]) to count
/// each endpoint's in-flight requests, so that an endpoint that discovery removes is
/// closed only once they have finished.
///
/// **What happens when an endpoint leaves.** The endpointer publishes the new set at once,
/// so the endpoint gets no new picks; then it calls the factory's close, which
/// [`DrainFactory`] defers: it marks the endpoint closing and runs the inner factory's close
/// when the last request picked on it has finished (its [`Picked`] guard reported or
/// dropped), or when the drain timeout has passed, whichever comes first (a task on the
/// current tokio runtime; without one it closes at once). A pick that lands on a closing
/// endpoint (it read the set just before the update) is made again with it avoided, so no
/// request starts on an endpoint whose close may have run (after three closing endpoints
/// in a row — three updates racing one pick — the fourth pick is used whatever it is). The
/// same applies when the whole
/// endpointer closes: every endpoint drains.
///
/// **Composes** with every balancer and wrapper (put `Drain` outermost, or anywhere: it
/// only adds an outcome receiver); a plain [`pick`](Balancer::pick) counts as finished at
/// once, so use [`pick_with`](Balancer::pick_with) (as [`Retry`](crate::Retry) and the tower
/// adapters do) for requests that should hold the endpoint open.
///
/// **Cost.** Two atomic operations on the endpoint per request (plus one `Arc` clone for the
/// outcome receiver); no allocation, no lock.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::time::Duration;
/// use sd_core::{BoxError, DefaultEndpointer, Event, Factory, Instance, InstanceCache};
/// use sd_lb::{Balancer, Drain, DrainFactory, Request, RoundRobin};
///
/// struct Conn(Arc<AtomicBool>);
/// struct Connect;
/// impl Factory<Conn> for Connect {
///     fn make(&self, _: &Instance) -> Result<Conn, BoxError> { Ok(Conn(Arc::new(AtomicBool::new(false)))) }
///     fn close(&self, _: &Instance, c: &Conn) { c.0.store(true, Ordering::SeqCst) }
/// }
/// let ep = Arc::new(DefaultEndpointer::new(&InstanceCache::new(), DrainFactory::new(Connect, Duration::from_secs(30))));
/// ep.apply(Event::instances(vec![Instance::new("10.0.0.1", 80)]));
/// let lb = Drain::new(RoundRobin::new(ep.clone()));
/// let request = lb.pick_with(&Request::new()).unwrap();
/// let closed = request.endpoint().value().0.clone();
/// ep.apply(Event::instances(Vec::<Instance>::new())); // the instance leaves
/// tokio::task::yield_now().await;
/// assert!(!closed.load(Ordering::SeqCst), "a request is in flight");
/// request.success();
/// tokio::task::yield_now().await;
/// assert!(closed.load(Ordering::SeqCst), "closed once it finished");
/// # });
/// ```
pub struct Drain<B> {
    inner: B,
    hook: Arc<Release>,
}

/// Ends a request's count on its endpoint.
struct Release;

impl<E: Send + Sync + 'static> Feedback<Drained<E>> for Release {
    fn done(&self, endpoint: &Endpoint<Drained<E>>, _start: u64, _outcome: Outcome) {
        let state = &endpoint.value().state;
        if state.count.fetch_sub(1, Ordering::SeqCst) == 1 && state.closing.load(Ordering::SeqCst) {
            state.zero.notify_one();
        }
    }
}

/// Picks redrawn at most when the picked endpoint is closing.
const REDRAWS: usize = 3;

impl<B> Drain<B> {
    /// In-flight counting over `inner`.
    pub fn new(inner: B) -> Self {
        Drain {
            inner,
            hook: Arc::new(Release),
        }
    }

    /// The inner balancer.
    pub fn inner(&self) -> &B {
        &self.inner
    }
}

impl<B, E> Balancer<Drained<E>> for Drain<B>
where
    B: Balancer<Drained<E>>,
    E: Send + Sync + 'static,
{
    fn pick_with(&self, request: &Request<'_, Drained<E>>) -> Result<Picked<Drained<E>>, LbError> {
        let mut closing = [0usize; REDRAWS];
        let mut n = 0;
        loop {
            let picked = pick_avoiding(&self.inner, request, &closing[..n])?;
            let state = &picked.endpoint().value().state;
            state.count.fetch_add(1, Ordering::SeqCst);
            let hook = self.hook.clone() as Arc<dyn Feedback<Drained<E>>>;
            let picked = picked.and_then(hook);
            if !picked.endpoint().value().is_closing() || n == REDRAWS {
                // (After `REDRAWS` closing endpoints in a row the set has changed under
                // us several times; the last one is used, its close waits for it.)
                return Ok(picked);
            }
            closing[n] = value_ptr(picked.endpoint());
            n += 1;
            drop(picked.into_endpoint());
        }
    }

    fn snapshot(&self) -> Snapshot<Drained<E>> {
        self.inner.snapshot()
    }

    fn panic_threshold(&self) -> crate::PanicThreshold {
        self.inner.panic_threshold()
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for Drain<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain").field("inner", &self.inner).finish()
    }
}

impl<F> std::fmt::Debug for DrainFactory<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainFactory")
            .field("timeout", &self.timeout)
            .finish()
    }
}

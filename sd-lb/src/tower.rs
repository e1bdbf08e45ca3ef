//! tower integration: discovery as a [`tower::discover::Discover`], and balancers as a tower
//! [`Service`] or [`Layer`].
//!
//! - [`Discover`] turns an [`Endpointer`]'s full sets into [`Change::Insert`] /
//!   [`Change::Remove`], so `tower::balance::p2c::Balance` (or anything else that takes a
//!   `Discover`) can use sdkit's discovery.
//! - [`Balanced`] is a [`Service`] that sends each request to the endpoint service a
//!   [`Balancer`] picks; [`PickLayer`] instead hands `(endpoint, request)` to an inner
//!   service, for a `ServiceBuilder` stack. Both report the outcome (success or error) to the
//!   balancer's [`Picked`](crate::Picked) guard, so P2C load and outlier ejection see every request; a
//!   response future dropped after its first poll and before it completes (a timeout layer
//!   outside) reports [`Outcome::Timeout`], which outlier ejection counts as a failure; one
//!   dropped before its first poll (a caller that went away first) reports nothing about
//!   the endpoint ([`Outcome::Unknown`]).
//! - [`Eject`] (and [`EjectLayer`]) gives tower's own balancers failure ejection: an
//!   endpoint service that fails calls in a row turns unready for a while, so
//!   `tower::balance::p2c::Balance` stops picking it before discovery drops it.

mod eject;
pub use eject::{Eject, EjectConfig, EjectFuture, EjectHandle, EjectLayer};

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use ::tower::discover::Change;
use ::tower::util::Oneshot;
use ::tower::{Layer, Service, ServiceExt};
use futures::Stream;
use sd_core::{BoxError, Changes, DefaultEndpointer, Endpoint, Endpointer, Factory, Instancer};
use std::sync::Arc;

use crate::balancer::{preferred_of, Balancer, Cands, Outcome, PanicThreshold, Request, Running};

/// The key of a discovered service: the instance's `(addr, id)`.
pub type Key = (String, String);

type Waiting = Pin<Box<dyn Future<Output = (Changes, bool)> + Send>>;

/// An [`Endpointer`] as a tower [`Discover`](tower::discover::Discover): a stream of
/// [`Change`]s keyed by instance `(addr, id)`, whose services are clones of the endpoint
/// values.
///
/// The first poll yields an `Insert` for every current endpoint. After that each published
/// state is diffed against the last one: departed instances are removed, new ones inserted,
/// and an instance whose endpoint value was rebuilt is inserted again (tower replaces it).
/// It follows the balancers' health rule (see [`Balancer`]): while some endpoints are
/// [`Passing`](sd_core::Health::Passing), only those are published (one that stops passing
/// is removed, and inserted again when it passes); when fewer than the default
/// [`PanicThreshold`] (50 %) pass, all are. An
/// endpointer in an error state keeps serving its last good endpoints, so nothing changes;
/// one whose endpoints were invalidated (`invalidate_on_error`) reads as empty, removing
/// every service. Errors are logged, not yielded, because a discovery error is fatal to
/// tower's `Balance`. When the endpointer is closed or dropped, every service is removed,
/// then the stream yields one `Err(`[`Error::Stopped`](sd_core::Error::Stopped)`)` and
/// ends: tower's `Balance` then fails its callers at once (it ignores the end of its
/// stream, and with no service left would leave them waiting for ever).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use futures::StreamExt;
/// use sd_core::{FixedEndpointer, Instance};
/// use sd_lb::tower::Discover;
/// use tower::discover::Change;
/// let ep = Arc::new(FixedEndpointer::new([(Instance::new("10.0.0.1", 80), "svc")]));
/// let mut d = Discover::new(ep);
/// match d.next().await {
///     Some(Ok(Change::Insert(key, svc))) => assert_eq!((key.0.as_str(), svc), ("10.0.0.1:80", "svc")),
///     other => panic!("{other:?}"),
/// }
/// # });
/// ```
pub struct Discover<P, E: 'static> {
    endpointer: P,
    known: HashMap<Key, Endpoint<E>>,
    pending: VecDeque<Change<Key, E>>,
    changes: Option<Changes>,
    waiting: Option<Waiting>,
    started: bool,
    done: bool,
    /// The final `Err(Stopped)` has been yielded.
    ended: bool,
}

impl<P: Endpointer<E>, E: Clone + Send + Sync + 'static> Discover<P, E> {
    /// Follows `endpointer`.
    pub fn new(endpointer: P) -> Self {
        let changes = endpointer.changes();
        Discover {
            endpointer,
            known: HashMap::new(),
            pending: VecDeque::new(),
            changes: Some(changes),
            waiting: None,
            started: false,
            done: false,
            ended: false,
        }
    }

    /// Diffs the current snapshot against the known set; returns whether the endpointer has
    /// stopped.
    fn sync(&mut self) -> bool {
        let snap = self.endpointer.endpoints();
        let list: &[Endpoint<E>] = match snap.get() {
            Ok(list) => list,
            Err(sd_core::Error::Stopped) => &[],
            Err(e) => {
                tracing::warn!(error = %e, "discovery: endpoints invalidated; removing all");
                &[]
            }
        };
        let stopped = matches!(snap.get(), Err(sd_core::Error::Stopped));
        // The balancers' health rule: the passing endpoints, or all when fewer than half
        // pass (the default panic threshold).
        let preferred = preferred_of(list, PanicThreshold::default());
        let cands = Cands::new(list.len(), preferred.as_deref());
        let mut next: HashMap<Key, Endpoint<E>> = HashMap::with_capacity(cands.len());
        for ep in (0..cands.len()).map(|k| &list[cands.at(k)]) {
            let (addr, id) = ep.instance().key();
            let key = (addr.to_string(), id.to_string());
            match self.known.get(&key) {
                Some(old) if Endpoint::same_value(old, ep) => {}
                _ => self
                    .pending
                    .push_back(Change::Insert(key.clone(), ep.value().clone())),
            }
            next.insert(key, ep.clone());
        }
        for key in self.known.keys() {
            if !next.contains_key(key) {
                self.pending.push_back(Change::Remove(key.clone()));
            }
        }
        self.known = next;
        stopped
    }
}

impl<E: Clone + Send + Sync + 'static> Discover<Arc<DefaultEndpointer<E>>, E> {
    /// Follows `instancer` directly: builds a [`DefaultEndpointer`] with `factory` and owns
    /// it (dropping the `Discover` closes its endpoints). The endpoint type comes from the
    /// factory: no turbofish needed.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use sd_core::{BoxError, FixedInstancer, Instance};
    /// use sd_lb::tower::Discover;
    /// let instancer = FixedInstancer::from_addrs(["10.0.0.1:80"]).unwrap();
    /// let d = Discover::from_instancer(&instancer, |i: &Instance| -> Result<String, BoxError> {
    ///     Ok(i.addr().to_string())
    /// });
    /// # drop(d);
    /// # });
    /// ```
    ///
    /// # Panics
    /// Outside a tokio runtime (as [`DefaultEndpointer::new`]).
    pub fn from_instancer<I, F>(instancer: &I, factory: F) -> Self
    where
        I: Instancer + ?Sized,
        F: Factory<E>,
    {
        Discover::new(Arc::new(DefaultEndpointer::new(instancer, factory)))
    }
}

impl<P, E> Stream for Discover<P, E>
where
    P: Endpointer<E> + Unpin,
    E: Clone + Send + Sync + Unpin + 'static,
{
    type Item = Result<Change<Key, E>, sd_core::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(change) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            if this.done {
                if !this.ended {
                    this.ended = true;
                    return Poll::Ready(Some(Err(sd_core::Error::Stopped)));
                }
                return Poll::Ready(None);
            }
            if !this.started {
                this.started = true;
                if let Some(ch) = this.changes.as_mut() {
                    ch.mark_seen();
                }
                this.done = this.sync();
                continue;
            }
            if this.waiting.is_none() {
                let Some(mut ch) = this.changes.take() else {
                    this.done = true;
                    continue;
                };
                this.waiting = Some(Box::pin(async move {
                    let alive = ch.changed().await;
                    (ch, alive)
                }));
            }
            let Some(waiting) = this.waiting.as_mut() else {
                continue;
            };
            match waiting.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready((ch, alive)) => {
                    this.waiting = None;
                    this.changes = Some(ch);
                    this.done = this.sync() || !alive;
                }
            }
        }
    }
}

impl<P, E: 'static> std::fmt::Debug for Discover<P, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discover")
            .field("known", &self.known.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// A tower [`Service`] that sends each request to the endpoint a [`Balancer`] picks; the
/// endpoint values are themselves services (cloned per request, as tower clients are).
///
/// It is always ready; a request fails with the pick error when no endpoint can be picked.
/// The outcome (response or error) is reported to the pick's guard.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use sd_core::{BoxError, FixedEndpointer, Instance};
/// use sd_lb::{tower::Balanced, RoundRobin};
/// use tower::{service_fn, ServiceExt};
///
/// let backend = |name: &'static str| service_fn(move |req: String| async move { Ok::<_, BoxError>(format!("{name}: {req}")) });
/// let ep = Arc::new(FixedEndpointer::new([
///     (Instance::new("10.0.0.1", 80), backend("a")),
///     (Instance::new("10.0.0.2", 80), backend("b")),
/// ]));
/// let svc = Balanced::new(Arc::new(RoundRobin::new(ep)));
/// assert_eq!(svc.clone().oneshot("hi".to_string()).await.unwrap(), "a: hi");
/// assert_eq!(svc.oneshot("hi".to_string()).await.unwrap(), "b: hi");
/// # });
/// ```
pub struct Balanced<B, E, K = NoKey> {
    balancer: B,
    key: K,
    _e: PhantomData<fn() -> E>,
}

impl<B, E> Balanced<B, E> {
    /// Balances requests with `balancer` (share one balancer between clones with an `Arc`).
    pub fn new(balancer: B) -> Self {
        Balanced {
            balancer,
            key: NoKey,
            _e: PhantomData,
        }
    }
}

impl<B, E, K> Balanced<B, E, K> {
    /// Picks with the consistent-hashing key `key` computes from each request (e.g.
    /// `|r: &Req| sd_lb::hash_key(&r.user)`), so that a [`ConsistentHash`](crate::ConsistentHash)
    /// balancer sends each key to its owner. Without it every request has no key.
    pub fn key<F>(self, key: F) -> Balanced<B, E, KeyFn<F>> {
        Balanced {
            balancer: self.balancer,
            key: KeyFn(key),
            _e: PhantomData,
        }
    }
}

impl<B: Clone, E, K: Clone> Clone for Balanced<B, E, K> {
    fn clone(&self) -> Self {
        Balanced {
            balancer: self.balancer.clone(),
            key: self.key.clone(),
            _e: PhantomData,
        }
    }
}

impl<B, E, K> std::fmt::Debug for Balanced<B, E, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balanced").finish()
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Balanced`] and [`Pick`]: the inner call, then the outcome
    /// report.
    pub struct Reporting<F, E: 'static> {
        #[pin]
        inner: Option<F>,
        picked: Option<Running<E>>,
        error: Option<BoxError>,
    }
}

impl<F, E: 'static> std::fmt::Debug for Reporting<F, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporting").finish()
    }
}

impl<F, T, Er, E> Future for Reporting<F, E>
where
    F: Future<Output = Result<T, Er>>,
    Er: Into<BoxError>,
    E: 'static,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Polled once: the request is under way, and dropping this future from now on (a
        // timeout layer outside, a cancelled caller) reports the pick as timed out; a future
        // dropped before its first poll never sent anything.
        if let Some(running) = this.picked.as_mut() {
            running.start();
        }
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            let e = this
                .error
                .take()
                .unwrap_or_else(|| "response future polled after completion".into());
            return Poll::Ready(Err(e));
        };
        let out = match inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(out) => out,
        };
        this.inner.set(None);
        if let Some(p) = this.picked.take() {
            p.finish(if out.is_ok() {
                Outcome::Success
            } else {
                Outcome::Failure
            });
        }
        Poll::Ready(out.map_err(Into::into))
    }
}

/// How [`Balanced`] and [`PickLayer`] find a request's consistent-hashing key (see
/// [`Request::key`]).
pub trait RequestKey<Req> {
    /// The key of `req`, if it has one.
    fn key(&self, req: &Req) -> Option<u64>;
}

/// No request has a key (the default of [`Balanced`] and [`PickLayer`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKey;

impl<Req> RequestKey<Req> for NoKey {
    fn key(&self, _: &Req) -> Option<u64> {
        None
    }
}

/// A request key computed by a closure (see [`Balanced::key`], [`PickLayer::key`]).
#[derive(Clone, Copy)]
pub struct KeyFn<F>(F);

impl<F> std::fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyFn")
    }
}

impl<F, Req> RequestKey<Req> for KeyFn<F>
where
    F: Fn(&Req) -> u64,
{
    fn key(&self, req: &Req) -> Option<u64> {
        Some((self.0)(req))
    }
}

/// The pick request for `req`.
fn request_for<'a, E, Req, K: RequestKey<Req>>(key: &K, req: &Req) -> Request<'a, E> {
    match key.key(req) {
        Some(k) => Request::new().with_key(k),
        None => Request::new(),
    }
}

impl<B, E, K, Req> Service<Req> for Balanced<B, E, K>
where
    B: Balancer<E>,
    E: Service<Req> + Clone + Send + Sync + 'static,
    E::Error: Into<BoxError>,
    K: RequestKey<Req>,
{
    type Response = E::Response;
    type Error = BoxError;
    type Future = Reporting<Oneshot<E, Req>, E>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.balancer.pick_with(&request_for(&self.key, &req)) {
            Ok(picked) => {
                let svc = picked.endpoint().value().clone();
                Reporting {
                    inner: Some(svc.oneshot(req)),
                    picked: Some(Running::new(picked)),
                    error: None,
                }
            }
            Err(e) => Reporting {
                inner: None,
                picked: None,
                error: Some(Box::new(e)),
            },
        }
    }
}

/// A [`Layer`] that picks an endpoint for each request and passes `(endpoint, request)` to
/// the inner service.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use sd_core::{BoxError, Endpoint, FixedEndpointer, Instance};
/// use sd_lb::{tower::PickLayer, P2c};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// let ep = Arc::new(FixedEndpointer::new([(Instance::new("10.0.0.1", 80), "http://10.0.0.1/".to_string())]));
/// let svc = ServiceBuilder::new()
///     .timeout(Duration::from_secs(1))
///     .layer(PickLayer::new(Arc::new(P2c::peak_ewma(ep))))
///     .service(service_fn(|(base, path): (Endpoint<String>, &'static str)| async move {
///         Ok::<_, BoxError>(format!("GET {}{path}", *base))
///     }));
/// assert_eq!(svc.oneshot("users").await.unwrap(), "GET http://10.0.0.1/users");
/// # });
/// ```
pub struct PickLayer<B, E, K = NoKey> {
    balancer: B,
    key: K,
    _e: PhantomData<fn() -> E>,
}

impl<B, E> PickLayer<B, E> {
    /// A layer picking with `balancer` (cloned into every service; use an `Arc`).
    pub fn new(balancer: B) -> Self {
        PickLayer {
            balancer,
            key: NoKey,
            _e: PhantomData,
        }
    }
}

impl<B, E, K> PickLayer<B, E, K> {
    /// Picks with the consistent-hashing key `key` computes from each request (see
    /// [`Balanced::key`]).
    pub fn key<F>(self, key: F) -> PickLayer<B, E, KeyFn<F>> {
        PickLayer {
            balancer: self.balancer,
            key: KeyFn(key),
            _e: PhantomData,
        }
    }
}

impl<B: Clone, E, K: Clone> Clone for PickLayer<B, E, K> {
    fn clone(&self) -> Self {
        PickLayer {
            balancer: self.balancer.clone(),
            key: self.key.clone(),
            _e: PhantomData,
        }
    }
}

impl<B, E, K> std::fmt::Debug for PickLayer<B, E, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PickLayer").finish()
    }
}

impl<B: Clone, S, E, K: Clone> Layer<S> for PickLayer<B, E, K> {
    type Service = Pick<S, B, E, K>;
    fn layer(&self, inner: S) -> Pick<S, B, E, K> {
        Pick {
            inner,
            balancer: self.balancer.clone(),
            key: self.key.clone(),
            _e: PhantomData,
        }
    }
}

/// The service made by [`PickLayer`].
pub struct Pick<S, B, E, K = NoKey> {
    inner: S,
    balancer: B,
    key: K,
    _e: PhantomData<fn() -> E>,
}

impl<S: Clone, B: Clone, E, K: Clone> Clone for Pick<S, B, E, K> {
    fn clone(&self) -> Self {
        Pick {
            inner: self.inner.clone(),
            balancer: self.balancer.clone(),
            key: self.key.clone(),
            _e: PhantomData,
        }
    }
}

impl<S, B, E, K> std::fmt::Debug for Pick<S, B, E, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pick").finish()
    }
}

impl<S, B, E, K, Req> Service<Req> for Pick<S, B, E, K>
where
    B: Balancer<E>,
    E: Send + Sync + 'static,
    S: Service<(Endpoint<E>, Req)>,
    S::Error: Into<BoxError>,
    K: RequestKey<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Reporting<S::Future, E>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.balancer.pick_with(&request_for(&self.key, &req)) {
            Ok(picked) => {
                let fut = self.inner.call((picked.endpoint().clone(), req));
                Reporting {
                    inner: Some(fut),
                    picked: Some(Running::new(picked)),
                    error: None,
                }
            }
            Err(e) => Reporting {
                inner: None,
                picked: None,
                error: Some(Box::new(e)),
            },
        }
    }
}

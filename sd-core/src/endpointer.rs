//! The [`Endpointer`]: instances in, endpoints out, kept across updates.
//!
//! [`DefaultEndpointer`] subscribes to an [`Instancer`], turns each new instance into an
//! endpoint through a [`Factory`], keeps endpoints whose instance survives an update, and
//! closes the ones whose instance left. go-kit's behaviours EP-1..EP-12, with its bugs fixed:
//!
//! | go-kit | here |
//! |---|---|
//! | EP-1 initial state applied asynchronously | applied before the constructor returns when the instancer has one; [`DefaultEndpointer::ready`] waits for it otherwise |
//! | EP-6 duplicate instances leak an endpoint | instances are keyed by `(addr, id)`: one endpoint per key, each closed exactly once |
//! | EP-9 invalidation is lazy (on the next read) | a timer closes the endpoints at the deadline; reads also honour the deadline strictly |
//! | EP-11 `RLock` on every read | a lock-free, allocation-free [`Snapshot`] behind `arc-swap` |
//! | EP-12 `Close` leaks endpoints, panics twice | [`DefaultEndpointer::close`] closes every endpoint once, waits for the loop, is idempotent |
//! | EP-13 a factory failure is retried only when the set changes | failed instances are also retried with backoff |

use std::fmt;
use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::cache::Subscription;
use crate::endpoint::{Endpoint, Factory};
use crate::error::Error;
use crate::event::{Event, InstanceSet};
use crate::freshness::{Freshness, StaleReason};
use crate::instance::Instance;
use crate::instancer::Instancer;
use crate::task::{deadline_after, panic_message, BackgroundTask};

/// The discovery status carried by an endpoint [`Snapshot`].
///
/// `#[non_exhaustive]`: match with a wildcard arm, new states may be added.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// No state received from the instancer yet.
    Pending,
    /// The endpoints reflect the registry.
    Current,
    /// The endpoints are the last known good ones and are served (the default, go-kit EP-7):
    /// the last event was this error, or, with [`Error::Stopped`], the endpoints will not
    /// change any more: the instancer has stopped (or was dropped, or its loop ended with the
    /// runtime it ran on), or the endpointer's own loop ended with the runtime it ran on.
    Stale(Error),
    /// In the error state with `InvalidateOnError`: the endpoints are served until `deadline`.
    Invalidating {
        /// The first error of this error state.
        error: Error,
        /// When the endpoints are dropped.
        deadline: Instant,
    },
    /// Reads fail with this error, and no endpoints are held: the endpoints were invalidated
    /// (the first error of the error state, as in go-kit EP-9), the endpointer was closed
    /// ([`Error::Stopped`]), the very first event was an error (nothing known to serve; with
    /// or without `invalidate_on_error`), or the instancer stopped before publishing
    /// anything ([`Error::Stopped`]).
    Failed(Error),
}

/// One immutable state of an endpointer: the endpoints, sorted by instance, and the status.
///
/// A snapshot *owns* its endpoints (a shared, reference-counted list): an endpoint lives as
/// long as any snapshot, clone or endpointer state holds it, whatever unwinds where. There is
/// no `unsafe` here. Publishing a new list costs one reference-count increment per endpoint
/// (see docs/BENCHMARKS.md); publishing a new status over the same list costs none.
pub struct Endpoints<E> {
    list: Arc<[Endpoint<E>]>,
    status: Status,
    version: u64,
    freshness: Freshness,
}

impl<E> Endpoints<E> {
    /// A state for a custom [`Endpointer`] (a decorator such as a zone filter or a subset):
    /// `list` is sorted by instance here if it is not already, as balancers expect.
    /// `version` should increase with every state the endpointer publishes. Its freshness
    /// is [`Freshness::Fresh`]; see [`with_freshness`](Self::with_freshness).
    pub fn new(mut list: Vec<Endpoint<E>>, status: Status, version: u64) -> Self {
        if !list.windows(2).all(|w| w[0].instance() <= w[1].instance()) {
            list.sort_by(|a, b| a.instance().cmp(b.instance()));
        }
        Self::shared(list.into(), status, version, Freshness::Fresh)
    }

    /// The same state with another [`Freshness`] (a decorator passes on its source's).
    pub fn with_freshness(mut self, freshness: Freshness) -> Self {
        self.freshness = freshness;
        self
    }

    /// A state over an already sorted, shared list.
    fn shared(
        list: Arc<[Endpoint<E>]>,
        status: Status,
        version: u64,
        freshness: Freshness,
    ) -> Self {
        Endpoints {
            list,
            status,
            version,
            freshness,
        }
    }

    /// The endpoints to use, or the discovery error (go-kit's `Endpoints()`).
    ///
    /// `Ok` with an empty slice means "no instances" (or none known yet). This reads the clock
    /// only in the `Invalidating` state.
    #[inline]
    pub fn get(&self) -> Result<&[Endpoint<E>], &Error> {
        match &self.status {
            Status::Pending | Status::Current | Status::Stale(_) => Ok(&self.list),
            Status::Invalidating { error, deadline } => {
                if Instant::now() < *deadline {
                    Ok(&self.list)
                } else {
                    Err(error)
                }
            }
            Status::Failed(e) => Err(e),
        }
    }

    /// The endpoints held, whatever the status.
    pub fn all(&self) -> &[Endpoint<E>] {
        &self.list
    }

    /// The status.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Increases with every published state; 0 while pending.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether the first state from the instancer has been applied.
    pub fn is_ready(&self) -> bool {
        self.status != Status::Pending
    }

    /// How fresh the endpoints are: whether the registry confirms them now, and if not,
    /// since when and why not (the instancer is in an error state, the set was loaded from
    /// disk at start, the instancer stopped). See [`Freshness`].
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
    /// use std::time::Duration;
    /// use sd_core::*;
    ///
    /// let instancer = InstanceCache::new(); // an instancer driven by hand
    /// instancer.update(Event::instances(vec![Instance::new("10.0.0.1", 80)]));
    /// let endpointer = DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
    ///     Ok(i.addr().to_string())
    /// });
    /// assert!(!endpointer.endpoints().is_stale());
    ///
    /// // The registry fails: the last known good endpoints are served, marked stale.
    /// instancer.update(Event::Error(Error::unavailable("demo", "connection refused")));
    /// let mut changes = endpointer.changes();
    /// while !endpointer.endpoints().is_stale() { changes.changed().await; }
    /// tokio::time::advance(Duration::from_secs(42)).await;
    /// let snapshot = endpointer.endpoints();
    /// assert_eq!(snapshot.freshness().reason(), Some(StaleReason::Error));
    /// assert_eq!(snapshot.age(), Duration::from_secs(42));
    /// assert_eq!(snapshot.get().unwrap().len(), 1);
    /// endpointer.close().await;
    /// # });
    /// ```
    pub fn freshness(&self) -> &Freshness {
        &self.freshness
    }

    /// Whether the endpoints are stale ([`Freshness::is_stale`]).
    pub fn is_stale(&self) -> bool {
        self.freshness.is_stale()
    }

    /// How old the endpoints are: zero while fresh ([`Freshness::age`]; reads tokio's clock).
    pub fn age(&self) -> Duration {
        self.freshness.age()
    }

    /// The most recent discovery error, if the current state is an error state.
    pub fn last_error(&self) -> Option<&Error> {
        match &self.status {
            Status::Stale(e) | Status::Failed(e) => Some(e),
            Status::Invalidating { error, .. } => Some(error),
            Status::Pending | Status::Current => None,
        }
    }
}

impl<E> fmt::Debug for Endpoints<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoints")
            .field("list", &self.list)
            .field("status", &self.status)
            .field("version", &self.version)
            .field("freshness", &self.freshness)
            .finish()
    }
}

/// A lock-free view of an endpointer's current state. Dereferences to [`Endpoints`].
///
/// Taking one costs an `arc-swap` load: no lock and no allocation. Hold it briefly (for one
/// pick); clone an [`Endpoint`] out of it to keep using that endpoint.
pub struct Snapshot<E>(Guard<Arc<Endpoints<E>>>);

impl<E> Snapshot<E> {
    /// A snapshot of `endpoints`, for a custom [`Endpointer`] (a decorator such as a zone
    /// filter keeps its current `Arc<Endpoints<E>>` and hands out clones of it).
    pub fn new(endpoints: Arc<Endpoints<E>>) -> Self {
        Snapshot(Guard::from_inner(endpoints))
    }

    /// A snapshot from an `arc-swap` load (no reference-count update).
    fn from_guard(guard: Guard<Arc<Endpoints<E>>>) -> Self {
        Snapshot(guard)
    }

    /// The same snapshot, holding its own reference count instead of one of `arc-swap`'s
    /// per-thread slots: for keeping a snapshot across many reads (a per-thread cache
    /// validated with [`Changes::has_changed`]). Costs one reference-count increment.
    pub fn detach(self) -> Snapshot<E> {
        Snapshot(Guard::from_inner(Guard::into_inner(self.0)))
    }
}

impl<E> Deref for Snapshot<E> {
    type Target = Endpoints<E>;
    #[inline]
    fn deref(&self) -> &Endpoints<E> {
        &self.0
    }
}

impl<E> fmt::Debug for Snapshot<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

/// Notifies when an endpointer publishes a new state.
#[derive(Debug, Clone)]
pub struct Changes(watch::Receiver<u64>);

impl Changes {
    /// Notifications from `rx`, for a custom [`Endpointer`]: the endpointer holds the
    /// `watch::Sender<u64>` and sends each published [`Endpoints::version`]; dropping the
    /// sender reads as "the endpointer is gone".
    pub fn new(rx: watch::Receiver<u64>) -> Self {
        Changes(rx)
    }

    /// Waits for the next published state. Returns `false` once the endpointer is gone.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }

    /// Whether a state newer than the last one seen was published, without waiting: one
    /// atomic load, no lock, no allocation. `true` once the endpointer is gone.
    ///
    /// With [`mark_seen`](Changes::mark_seen) this lets a reader cache a [`Snapshot`] and
    /// reload it only after an update: call `mark_seen` first, then take the snapshot.
    #[inline]
    pub fn has_changed(&self) -> bool {
        self.0.has_changed().unwrap_or(true)
    }

    /// Marks the latest published state as seen.
    #[inline]
    pub fn mark_seen(&mut self) {
        self.0.mark_unchanged();
    }
}

/// The current endpoints of one service (go-kit's `sd.Endpointer`).
///
/// Usable as a trait object: `Arc<dyn Endpointer<E>>`.
pub trait Endpointer<E>: Send + Sync {
    /// The current state, lock-free.
    fn endpoints(&self) -> Snapshot<E>;

    /// A notifier of new states (for adapters such as tower's `Discover`).
    fn changes(&self) -> Changes;
}

impl<E, T: Endpointer<E> + ?Sized> Endpointer<E> for Arc<T> {
    fn endpoints(&self) -> Snapshot<E> {
        (**self).endpoints()
    }
    fn changes(&self) -> Changes {
        (**self).changes()
    }
}

/// A fixed list of endpoints (go-kit's `FixedEndpointer`).
pub struct FixedEndpointer<E> {
    current: ArcSwap<Endpoints<E>>,
    tx: watch::Sender<u64>,
}

impl<E> FixedEndpointer<E> {
    /// Endpoints for the given `(instance, value)` pairs, sorted by instance.
    pub fn new(pairs: impl IntoIterator<Item = (Instance, E)>) -> Self {
        let list: Vec<Endpoint<E>> = pairs
            .into_iter()
            .map(|(i, e)| Endpoint::new(i, e))
            .collect();
        let snapshot = Endpoints::new(list, Status::Current, 1);
        FixedEndpointer {
            current: ArcSwap::from_pointee(snapshot),
            tx: watch::channel(1).0,
        }
    }
}

impl<E: Send + Sync> Endpointer<E> for FixedEndpointer<E> {
    fn endpoints(&self) -> Snapshot<E> {
        Snapshot::from_guard(self.current.load())
    }
    fn changes(&self) -> Changes {
        Changes(self.tx.subscribe())
    }
}

/// Options for a [`DefaultEndpointer`]; see [`DefaultEndpointer::builder`].
#[must_use]
pub struct EndpointerBuilder<E> {
    sub: Subscription,
    factory: Box<dyn Factory<E>>,
    invalidate_on_error: Option<Duration>,
    factory_retry: Backoff,
    name: String,
}

impl<E: Send + Sync + 'static> EndpointerBuilder<E> {
    /// go-kit's `InvalidateOnError(timeout)`: after an error event, keep serving the old
    /// endpoints until `timeout` has passed, then close them all and return the **first**
    /// error until a good event arrives. With a zero timeout, reads fail at once.
    ///
    /// Without it (the default), the last known good endpoints are served through errors.
    /// Either way, an error before anything was known fails reads at once
    /// ([`Status::Failed`]): there is nothing to serve until a deadline.
    pub fn invalidate_on_error(mut self, timeout: Duration) -> Self {
        self.invalidate_on_error = Some(timeout);
        self
    }

    /// The backoff for retrying instances whose factory failed (default 100 ms .. 30 s).
    pub fn factory_retry(mut self, backoff: Backoff) -> Self {
        self.factory_retry = backoff;
        self
    }

    /// A name for logs (e.g. the service name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Starts the endpointer. Applies the instancer's current state, if it has one, before
    /// returning.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn build(self) -> DefaultEndpointer<E> {
        let (tx, _) = watch::channel(0);
        let empty: Arc<[Endpoint<E>]> = Arc::from(Vec::new());
        let shared = Arc::new(Shared {
            current: ArcSwap::from_pointee(Endpoints::shared(
                empty.clone(),
                Status::Pending,
                0,
                Freshness::Fresh,
            )),
            factory: self.factory,
            invalidate_after: self.invalidate_on_error,
            name: self.name,
            tx,
            state: Mutex::new(State {
                owned: empty,
                instances: None,
                failed: Vec::new(),
                error: None,
                freshness: Freshness::Fresh,
                closed: false,
                received: false,
                ended: false,
                version: 0,
                retry: self.factory_retry,
                retry_at: None,
            }),
        });
        let mut sub = self.sub;
        if let Some((event, freshness)) = sub.try_next_with_freshness() {
            shared.apply(event, Some(freshness));
        }
        let loop_shared = shared.clone();
        let task = BackgroundTask::spawn(move |token| {
            // Built outside the future, so it also runs if the future is dropped unpolled.
            let ended = LoopEnded {
                shared: loop_shared.clone(),
                token: token.clone(),
            };
            async move {
                let _ended = ended;
                let shared = loop_shared;
                let mut sub = Some(sub);
                loop {
                    let (deadline, retry_at) = shared.timers();
                    tokio::select! {
                        _ = token.cancelled() => return,
                        event = async { sub.as_mut()?.next_with_freshness().await }, if sub.is_some() => match event {
                            Some((event, freshness)) => shared.survive(|| shared.apply(event, Some(freshness))),
                            // The instancer stopped: keep the last state, say so, keep the timers.
                            None => {
                                sub = None;
                                shared.survive(|| shared.instancer_ended());
                            }
                        },
                        _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                            shared.survive(|| shared.invalidate_if_due());
                        }
                        _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                            shared.survive(|| shared.retry_failed());
                        }
                    }
                }
            }
        });
        DefaultEndpointer { shared, task }
    }
}

/// Lives in the endpointer's background loop. Dropped without the loop having been cancelled
/// (its runtime shut down while the endpointer lives on), it marks the endpoints as no longer
/// followed: a current state turns `Stale(Stopped)`, a pending one `Failed(Stopped)`.
struct LoopEnded<E: 'static> {
    shared: Arc<Shared<E>>,
    token: tokio_util::sync::CancellationToken,
}

impl<E: 'static> Drop for LoopEnded<E> {
    fn drop(&mut self) {
        if self.token.is_cancelled() {
            return;
        }
        // While unwinding, a panic in a log layer would abort: commit the state silently.
        let log = !std::thread::panicking();
        self.shared
            .survive(|| self.shared.stop_following(Note::LoopEnded, log));
    }
}

struct State<E> {
    /// The current endpoints, sorted by instance; the same list the current snapshot holds.
    owned: Arc<[Endpoint<E>]>,
    /// The last good instance set.
    instances: Option<InstanceSet>,
    /// Instances whose factory failed, to retry.
    failed: Vec<Instance>,
    /// The current error state: the first error and, with invalidation, its deadline.
    error: Option<(Error, Option<Instant>)>,
    /// How fresh the endpoints held are.
    freshness: Freshness,
    closed: bool,
    /// Whether any event from the instancer has been applied.
    received: bool,
    /// Whether the subscription to the instancer has ended.
    ended: bool,
    version: u64,
    retry: Backoff,
    /// When to retry the failed factories.
    retry_at: Option<Instant>,
}

struct Shared<E> {
    current: ArcSwap<Endpoints<E>>,
    factory: Box<dyn Factory<E>>,
    invalidate_after: Option<Duration>,
    name: String,
    tx: watch::Sender<u64>,
    state: Mutex<State<E>>,
}

/// What an update has to log. Logging runs user code (any `tracing` layer), which may panic;
/// so an update first commits and publishes its state, releases the lock, and only then logs.
/// A panic while logging then finds the state consistent.
enum Note {
    FactoryFailed(Instance, String),
    ClosePanicked(Instance, String),
    DiscoveryError(Error),
    Invalidated(Error),
    InstancerEnded,
    LoopEnded,
}

impl<E: 'static> Shared<E> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<E>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one step of the background loop, which must outlive a panicking log layer: the
    /// state is committed before anything is logged (see [`Note`]), so the loop carries on.
    fn survive(&self, step: impl FnOnce()) {
        crate::task::survive(step);
    }

    /// Logs what an update noted, after its state lock is released.
    fn emit(&self, notes: Vec<Note>) {
        for note in notes {
            match note {
                Note::FactoryFailed(instance, error) => {
                    tracing::warn!(endpointer = %self.name, instance = %instance, error = %error,
                        "factory failed; instance skipped, will retry")
                }
                Note::ClosePanicked(instance, panic) => {
                    tracing::error!(endpointer = %self.name, instance = %instance, panic = %panic,
                        "factory close panicked; endpoint dropped anyway")
                }
                Note::DiscoveryError(error) => {
                    tracing::warn!(endpointer = %self.name, error = %error, "discovery error")
                }
                Note::Invalidated(error) => {
                    tracing::warn!(endpointer = %self.name, error = %error,
                        "invalidating endpoints after discovery error")
                }
                Note::InstancerEnded => tracing::warn!(endpointer = %self.name,
                    "instancer ended (stopped or dropped): serving the last known endpoints, \
                     which will not change any more"),
                Note::LoopEnded => tracing::warn!(endpointer = %self.name,
                    "the endpointer's background loop ended with its runtime (shut down while \
                     the endpointer lives on): serving the last known endpoints, which will \
                     not change any more; build the endpointer on a runtime that outlives it"),
            }
        }
    }

    /// Publishes `st.owned` with `status`. The snapshot shares the list (one reference-count
    /// increment); the previous snapshot's list lives until its last reader lets go.
    fn publish(&self, st: &mut State<E>, status: Status) {
        st.version += 1;
        self.current.store(Arc::new(Endpoints::shared(
            st.owned.clone(),
            status,
            st.version,
            st.freshness.clone(),
        )));
        self.tx.send_replace(st.version);
    }

    /// Runs the factory for `inst`. A panic in it is caught and reported as a failure.
    fn make_endpoint(&self, inst: &Instance) -> Result<E, String> {
        match catch_unwind(AssertUnwindSafe(|| {
            self.factory.make(inst).map_err(|e| e.to_string())
        })) {
            Ok(result) => result,
            Err(panic) => Err(format!("factory panicked: {}", panic_message(&*panic))),
        }
    }

    /// Runs the factory's close for each of `dead`, after the state no longer holds them; a
    /// panic in one is caught and noted, and the others are still closed.
    fn close_endpoints(&self, dead: &[Endpoint<E>], notes: &mut Vec<Note>) {
        for ep in dead {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| {
                self.factory.close(ep.instance(), ep.value())
            })) {
                notes.push(Note::ClosePanicked(
                    ep.instance().clone(),
                    panic_message(&*panic),
                ));
            }
        }
    }

    /// When the invalidation deadline is due, and when to retry failed factories.
    fn timers(&self) -> (Option<Instant>, Option<Instant>) {
        let st = self.lock();
        let deadline = match &st.error {
            Some((_, Some(d))) if !st.closed && !st.owned.is_empty() => Some(*d),
            _ => None,
        };
        let retry = if st.closed || st.error.is_some() {
            None
        } else {
            st.retry_at
        };
        (deadline, retry)
    }

    /// Applies `event`, published with `freshness` (`None`: a set is fresh, an error makes
    /// the endpoints held stale from now).
    fn apply(&self, event: Event, freshness: Option<Freshness>) {
        let mut notes = Vec::new();
        {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            st.received = true;
            match event {
                Event::Instances(set) => {
                    st.error = None;
                    st.freshness = match freshness {
                        Some(f) if st.ended => f.after_stop(),
                        Some(f) => f,
                        None if st.ended => Freshness::stale_now(StaleReason::Stopped),
                        None => Freshness::Fresh,
                    };
                    self.rebuild(&mut st, set, &mut notes);
                }
                Event::Error(err) => {
                    st.freshness = match freshness {
                        Some(f) if f.is_stale() => f,
                        _ => st.freshness.after_error(),
                    };
                    self.apply_error(&mut st, err, &mut notes)
                }
            }
        }
        self.emit(notes);
    }

    /// Reuses surviving endpoints, makes new ones, closes departed ones (EP-2..EP-4).
    ///
    /// The new list is built next to the current one (which stays untouched), then committed
    /// and published; only then are departed endpoints closed.
    fn rebuild(&self, st: &mut State<E>, set: InstanceSet, notes: &mut Vec<Note>) {
        let current = st.owned.clone();
        let mut old = current.iter().peekable();
        let mut list = Vec::with_capacity(set.len());
        let mut dead = Vec::new();
        let mut failed = Vec::new();
        for inst in set.iter() {
            // Fast path: the cache hands unchanged instances over with the same handle.
            if let Some(o) = old.next_if(|o| Instance::ptr_eq(o.instance(), inst)) {
                list.push(o.clone());
                continue;
            }
            // Endpoints whose key sorts before this instance have left.
            while let Some(o) = old.next_if(|o| o.instance().key() < inst.key()) {
                dead.push(o.clone());
            }
            match old.next_if(|o| o.instance().key() == inst.key()) {
                Some(o) if o.instance() == inst => list.push(o.clone()),
                // Same instance, new metadata: keep the endpoint value, describe it anew.
                Some(o) => list.push(o.with_instance(inst.clone())),
                None => match self.make_endpoint(inst) {
                    Ok(value) => list.push(Endpoint::new(inst.clone(), value)),
                    Err(error) => {
                        notes.push(Note::FactoryFailed(inst.clone(), error));
                        failed.push(inst.clone());
                    }
                },
            }
        }
        dead.extend(old.cloned());
        drop(current);
        st.retry_at = if failed.is_empty() {
            st.retry.reset();
            None
        } else {
            Some(deadline_after(st.retry.next_delay()))
        };
        st.failed = failed;
        st.instances = Some(set);
        st.owned = list.into();
        let status = if st.ended {
            Status::Stale(Error::Stopped)
        } else {
            Status::Current
        };
        self.publish(st, status);
        self.close_endpoints(&dead, notes);
    }

    fn apply_error(&self, st: &mut State<E>, err: Error, notes: &mut Vec<Note>) {
        notes.push(Note::DiscoveryError(err.clone()));
        let Some(timeout) = self.invalidate_after else {
            // Last known good: keep the endpoints, record the error (EP-7).
            st.error = Some((err.clone(), None));
            let status = if st.instances.is_some() {
                Status::Stale(err)
            } else {
                Status::Failed(err)
            };
            self.publish(st, status);
            return;
        };
        if st.error.is_some() {
            // The first error wins; later ones change neither error nor deadline (EP-8).
            return;
        }
        if st.instances.is_none() {
            // Nothing was ever known (the very first event is an error): there is nothing to
            // serve until a deadline, and "no instances" would be a lie. Reads fail at once,
            // as without invalidation.
            st.error = Some((err.clone(), None));
            self.publish(st, Status::Failed(err));
            return;
        }
        let deadline = deadline_after(timeout);
        st.error = Some((err.clone(), Some(deadline)));
        if timeout.is_zero() {
            self.invalidate(st, err, notes);
        } else {
            self.publish(
                st,
                Status::Invalidating {
                    error: err,
                    deadline,
                },
            );
        }
    }

    fn invalidate_if_due(&self) {
        let mut notes = Vec::new();
        {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            if let Some((err, Some(deadline))) = st.error.clone() {
                if Instant::now() >= deadline && !st.owned.is_empty() {
                    self.invalidate(&mut st, err, &mut notes);
                }
            }
        }
        self.emit(notes);
    }

    /// Closes every endpoint and fails reads with `err` until a good event (EP-9, EP-10).
    fn invalidate(&self, st: &mut State<E>, err: Error, notes: &mut Vec<Note>) {
        notes.push(Note::Invalidated(err.clone()));
        let dead = std::mem::replace(&mut st.owned, Arc::from(Vec::new()));
        st.instances = None;
        st.failed.clear();
        self.publish(st, Status::Failed(err));
        self.close_endpoints(&dead, notes);
    }

    fn retry_failed(&self) {
        let mut notes = Vec::new();
        {
            let mut st = self.lock();
            if st.closed || st.failed.is_empty() || st.error.is_some() {
                return;
            }
            st.retry_at = None;
            if let Some(set) = st.instances.clone() {
                self.rebuild(&mut st, set, &mut notes);
            }
        }
        self.emit(notes);
    }

    /// The subscription ended: the endpoints will not change any more. A current state
    /// turns stale, a pending one fails (nothing will arrive); an error state stays.
    fn instancer_ended(&self) {
        self.stop_following(Note::InstancerEnded, true);
    }

    /// The endpoints will not change any more (the subscription or the loop ended), for the
    /// reason in `note`, logged when `log`.
    fn stop_following(&self, note: Note, log: bool) {
        {
            let mut st = self.lock();
            if st.closed || st.ended {
                return;
            }
            st.ended = true;
            st.freshness = st.freshness.after_stop();
            let status = match self.current.load().status {
                Status::Current => Some(Status::Stale(Error::Stopped)),
                Status::Pending => Some(Status::Failed(Error::Stopped)),
                _ => None,
            };
            if let Some(status) = status {
                self.publish(&mut st, status);
            }
        }
        if log {
            self.emit(vec![note]);
        }
    }

    fn close_all(&self) {
        let mut notes = Vec::new();
        {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            st.closed = true;
            let dead = std::mem::replace(&mut st.owned, Arc::from(Vec::new()));
            st.failed.clear();
            self.publish(&mut st, Status::Failed(Error::Stopped));
            self.close_endpoints(&dead, &mut notes);
        }
        self.emit(notes);
    }
}

/// The standard [`Endpointer`]: subscribes to an [`Instancer`] and keeps endpoints made by a
/// [`Factory`].
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use sd_core::{BoxError, DefaultEndpointer, Endpointer, FixedInstancer, Instance};
/// let instancer = FixedInstancer::from_addrs(["10.0.0.1:80", "10.0.0.2:80"]).unwrap();
/// let endpointer = DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
///     Ok(format!("http://{}", i.addr()))
/// });
/// let snapshot = endpointer.endpoints();
/// let urls: Vec<&str> = snapshot.get().unwrap().iter().map(|e| e.as_str()).collect();
/// assert_eq!(urls, ["http://10.0.0.1:80", "http://10.0.0.2:80"]);
/// endpointer.close().await;
/// # });
/// ```
pub struct DefaultEndpointer<E: 'static> {
    shared: Arc<Shared<E>>,
    task: BackgroundTask,
}

impl<E: Send + Sync + 'static> DefaultEndpointer<E> {
    /// An endpointer with default options (last known good on error).
    pub fn new<I, F>(instancer: &I, factory: F) -> Self
    where
        I: Instancer + ?Sized,
        F: Factory<E>,
    {
        Self::builder(instancer, factory).build()
    }

    /// An endpointer with options.
    pub fn builder<I, F>(instancer: &I, factory: F) -> EndpointerBuilder<E>
    where
        I: Instancer + ?Sized,
        F: Factory<E>,
    {
        EndpointerBuilder {
            sub: instancer.subscribe(),
            factory: Box::new(factory),
            invalidate_on_error: None,
            factory_retry: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
            name: String::new(),
        }
    }

    /// Waits until the first state from the instancer has been applied (no polling).
    ///
    /// Returns `true` at once if it already has. Returns `false` if the endpointer closed
    /// first, or if the instancer stopped before publishing anything (the status is then
    /// [`Status::Failed`] with [`Error::Stopped`]).
    pub async fn ready(&self) -> bool {
        let mut rx = self.shared.tx.subscribe();
        if rx.wait_for(|v| *v > 0).await.is_err() {
            return false;
        }
        let st = self.shared.lock();
        !st.closed && st.received
    }

    /// Applies `event` now, on the caller's thread, as if the instancer had published it.
    ///
    /// For sources that are not an [`Instancer`] and for benchmarks; an endpointer fed this
    /// way usually follows a [`FixedInstancer`](crate::FixedInstancer) or an empty
    /// [`InstanceCache`](crate::InstanceCache). Ignored after [`close`](Self::close).
    ///
    /// A set applied this way is [`Freshness::Fresh`]; an error makes the endpoints held
    /// stale from now. [`apply_with`](Self::apply_with) sets the freshness.
    pub fn apply(&self, event: Event) {
        self.shared.apply(event, None);
    }

    /// [`apply`](Self::apply) with the [`Freshness`] of the event's data.
    pub fn apply_with(&self, event: Event, freshness: Freshness) {
        self.shared.apply(event, Some(freshness));
    }

    /// Stops following the instancer and closes every endpoint exactly once. Idempotent;
    /// once it returns no endpoint is made or closed any more, and reads return
    /// [`Error::Stopped`]. It does not stop the instancer (which others may share).
    pub async fn close(&self) {
        self.task.stop().await;
        self.shared.close_all();
    }
}

impl<E: Send + Sync + 'static> Endpointer<E> for DefaultEndpointer<E> {
    #[inline]
    fn endpoints(&self) -> Snapshot<E> {
        Snapshot(self.shared.current.load())
    }

    fn changes(&self) -> Changes {
        Changes(self.shared.tx.subscribe())
    }
}

impl<E: 'static> Drop for DefaultEndpointer<E> {
    fn drop(&mut self) {
        self.task.cancel();
        self.shared.close_all();
    }
}

impl<E: 'static> fmt::Debug for DefaultEndpointer<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultEndpointer")
            .field("name", &self.shared.name)
            .field("state", &**self.shared.current.load())
            .finish()
    }
}

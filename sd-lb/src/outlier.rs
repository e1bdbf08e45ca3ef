//! Outlier ejection: endpoints that fail repeatedly are left out for a while.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use sd_core::{Endpoint, Endpoints, Snapshot};

use crate::balancer::{
    is_passing, value_ptr, Balancer, Clock, Feedback, Outcome, PanicThreshold, Picked, Request,
};
use crate::error::LbError;
use crate::metrics::Meter;

/// Options of [`Outlier`] ejection (Envoy's consecutive-failure detector).
#[derive(Debug, Clone, Copy)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint (default 5).
    pub consecutive_failures: u32,
    /// The ejection time is `base_ejection × ejection count` (default 30 s)... (any
    /// `Duration` is accepted: `Duration::MAX` ejects for ever)
    pub base_ejection: Duration,
    /// ...capped at this (default 300 s).
    pub max_ejection: Duration,
    /// At most this share of the endpoints is ejected at once (default 0.5). At least one
    /// endpoint may be ejected when there are two or more; the last one never is.
    pub max_ejected_share: f64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_share: 0.5,
        }
    }
}

#[derive(Debug)]
struct Entry<E> {
    value: Weak<E>,
    consecutive: u32,
    ejections: u32,
    /// Ejected until this time (clock nanoseconds); 0 when not ejected.
    until: u64,
}

/// `entries` is pruned of departed endpoints no earlier than at this size.
const PRUNE_MIN: usize = 64;

/// A duration in clock nanoseconds, saturating (`Duration::MAX` is "for ever", not a wrap).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The ejected endpoints, by value pointer, with their return time.
type EjectedList = Vec<(usize, u64)>;

struct State<E: 'static> {
    config: OutlierConfig,
    clock: Clock,
    /// How many entries `ejected` holds (0: the pick path does nothing extra).
    count: AtomicUsize,
    ejected: ArcSwap<EjectedList>,
    entries: Mutex<HashMap<usize, Entry<E>>>,
    /// When `entries` reaches this size, entries of endpoints that left are dropped (then it
    /// is set to twice the live size): state of departed endpoints cannot pile up.
    prune_at: AtomicUsize,
    /// Counts the endpoints (for the share limit); called only when a failure would eject.
    total: Box<dyn Fn() -> usize + Send + Sync>,
    /// Counts ejections (nothing without the `metrics` feature).
    meter: Meter,
    /// The last panic decision (see [`State::panics`]).
    memo: Mutex<Option<Memo<E>>>,
}

/// A panic decision and what it was made from.
struct Memo<E: 'static> {
    /// Held, so that the pointer comparisons cannot see a reused address.
    snapshot: Snapshot<E>,
    list: Arc<EjectedList>,
    /// The decision holds until the first of the listed ejections ends.
    until: u64,
    panic: bool,
}

/// Wraps any [`Balancer`] with outlier ejection.
///
/// After [`consecutive_failures`](OutlierConfig::consecutive_failures) failures in a row an
/// endpoint is ejected for `base_ejection × (number of times it was ejected)`, capped at
/// `max_ejection`; it comes back on its own when that time has passed. At most
/// [`max_ejected_share`](OutlierConfig::max_ejected_share) of the endpoints are ejected at
/// once. **Panic mode**: when fewer than the inner balancer's
/// [`panic_threshold`](Balancer::panic_threshold) (default 50 %) of the endpoints are healthy
/// — passing their health checks and not ejected — ejections are ignored and the ejected
/// endpoints serve again (among the endpoints the inner balancer prefers), so the few
/// healthy ones are not overloaded; with the default cap (half of the endpoints) ejections
/// alone cannot cause it, only ejections on top of failing health checks. Outcomes come
/// from the [`Picked`] guards (as [`Retry`](crate::Retry) reports them);
/// a [timeout](Outcome::Timeout) counts as a failure (a request cut off by `Retry`'s
/// overall timeout, or by a timeout layer outside [`PickLayer`](crate::tower::PickLayer)).
///
/// Ejected endpoints are passed to the inner balancer as endpoints to avoid, so ejection works
/// with every balancer, and keys of a [`ConsistentHash`](crate::ConsistentHash) fall through
/// to another endpoint. What it adds to a pick: one atomic load and one `Arc` clone (the
/// outcome hook) while nothing is ejected, plus one `arc-swap` load and a scan of the ejected
/// list while something is; once every ejection has expired, the first pick republishes the
/// list if it can `try_lock` the state (it never waits). Each reported success or failure
/// takes the state's mutex briefly; dropped guards and plain [`pick`](Balancer::pick)s do
/// not. A failure reported while its endpoint is ejected (a request picked before the
/// ejection) is ignored.
///
/// ```
/// use std::sync::Arc;
/// use sd_core::{FixedEndpointer, Instance};
/// use sd_lb::{Balancer, Outlier, OutlierConfig, Request, RoundRobin};
/// let ep = Arc::new(FixedEndpointer::new((1..=4).map(|p| (Instance::new("10.0.0.1", p), p))));
/// let lb = Outlier::new(RoundRobin::new(ep), OutlierConfig { consecutive_failures: 2, ..Default::default() });
/// for _ in 0..2 {
///     // Endpoint 1 fails twice in a row.
///     loop {
///         let p = lb.pick_with(&Request::new()).unwrap();
///         if **p.endpoint() == 1 { p.failure(); break } else { p.success() }
///     }
/// }
/// assert!((0..20).all(|_| *lb.pick().unwrap() != 1));
/// ```
pub struct Outlier<B, E: 'static> {
    inner: Arc<B>,
    state: Arc<State<E>>,
}

impl<B: Balancer<E> + 'static, E: Send + Sync + 'static> Outlier<B, E> {
    /// Outlier ejection over `inner`.
    pub fn new(inner: B, config: OutlierConfig) -> Self {
        let inner = Arc::new(inner);
        let weak = Arc::downgrade(&inner);
        Outlier {
            inner,
            state: Arc::new(State {
                config,
                clock: Clock::default(),
                count: AtomicUsize::new(0),
                ejected: ArcSwap::from_pointee(Vec::new()),
                entries: Mutex::new(HashMap::new()),
                prune_at: AtomicUsize::new(PRUNE_MIN),
                total: Box::new(move || weak.upgrade().map_or(0, |b| b.snapshot().all().len())),
                meter: Meter::default(),
                memo: Mutex::new(None),
            }),
        }
    }

    /// The clock for ejection times (e.g. [`Clock::tokio`] in tests). Set it before use.
    pub fn clock(mut self, clock: Clock) -> Self {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.clock = clock;
        }
        self
    }

    /// Counts ejections (`sdkit_balancer_ejections_total`) into `metrics` (feature
    /// `metrics`; docs/OBSERVABILITY.md). Set it before use.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: crate::BalancerMetrics) -> Self {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.meter.metrics = Some(metrics);
        }
        self
    }

    /// The inner balancer.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Whether `endpoint` is ejected now.
    pub fn is_ejected(&self, endpoint: &Endpoint<E>) -> bool {
        let now = self.state.clock.now();
        let ptr = Arc::as_ptr(endpoint.value_arc()) as usize;
        self.state
            .ejected
            .load()
            .iter()
            .any(|&(p, until)| p == ptr && until > now)
    }

    /// How many endpoints are ejected now.
    pub fn ejected_count(&self) -> usize {
        let now = self.state.clock.now();
        self.state
            .ejected
            .load()
            .iter()
            .filter(|&&(_, until)| until > now)
            .count()
    }
}

impl<E: 'static> State<E> {
    /// Whether too few endpoints of `snapshot` are healthy — passing (as the balancers see
    /// it) and not ejected in `list` — for `threshold`: then ejections are ignored (panic
    /// mode). Remembered per snapshot and ejected list until an ejection ends; computed
    /// (O(N × ejected)) only while something is ejected, and without remembering when
    /// another thread holds the memo (never waits, never allocates).
    fn panics(
        &self,
        snapshot: Snapshot<E>,
        list: &Arc<EjectedList>,
        threshold: PanicThreshold,
        now: u64,
    ) -> bool {
        let mut memo = match self.memo.try_lock() {
            Ok(m) => Some(m),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        if let Some(Some(m)) = memo.as_deref() {
            if std::ptr::eq::<Endpoints<E>>(&*m.snapshot, &*snapshot)
                && Arc::ptr_eq(&m.list, list)
                && now < m.until
            {
                return m.panic;
            }
        }
        let all = snapshot.all();
        let healthy = all
            .iter()
            .filter(|e| {
                let p = value_ptr(e);
                is_passing(e) && !list.iter().any(|&(q, until)| q == p && until > now)
            })
            .count();
        let panic = threshold.panics(healthy, all.len());
        if let Some(m) = memo.as_deref_mut() {
            let until = list
                .iter()
                .map(|&(_, until)| until)
                .filter(|&u| u > now)
                .min()
                .unwrap_or(0);
            *m = Some(Memo {
                snapshot: snapshot.detach(),
                list: list.clone(),
                until,
                panic,
            });
        }
        panic
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Entry<E>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Republishes the ejected list from `entries` (dropping expired ejections and entries of
    /// endpoints that are gone).
    fn publish(&self, entries: &mut HashMap<usize, Entry<E>>, now: u64) {
        entries.retain(|_, e| e.value.strong_count() > 0);
        let list: EjectedList = entries
            .iter()
            .filter(|(_, e)| e.until > now)
            .map(|(&p, e)| (p, e.until))
            .collect();
        self.count.store(list.len(), Ordering::Release);
        self.ejected.store(Arc::new(list));
    }
}

impl<E: Send + Sync + 'static> Feedback<E> for State<E> {
    fn done(&self, endpoint: &Endpoint<E>, _start: u64, outcome: Outcome) {
        if matches!(outcome, Outcome::Unknown | Outcome::Untracked) {
            return;
        }
        let now = self.clock.now();
        let ptr = Arc::as_ptr(endpoint.value_arc()) as usize;
        let mut entries = self.lock();
        // An entry whose endpoint is gone is an old endpoint's, whose address was reused.
        if entries
            .get(&ptr)
            .is_some_and(|e| e.value.strong_count() == 0)
        {
            entries.remove(&ptr);
        }
        if outcome == Outcome::Success {
            // Only endpoints with a failure streak or an ejection history have an entry.
            let Some(entry) = entries.get_mut(&ptr) else {
                return;
            };
            entry.consecutive = 0;
            // Healthy for a base ejection time since it came back: forget one ejection.
            if entry.ejections > 0
                && entry.until != 0
                && now > entry.until.saturating_add(nanos(self.config.base_ejection))
            {
                entry.ejections -= 1;
                entry.until = if entry.ejections == 0 { 0 } else { now };
            }
            if entry.ejections == 0 && entry.until == 0 {
                entries.remove(&ptr);
            }
            return;
        }
        if !entries.contains_key(&ptr) && entries.len() >= self.prune_at.load(Ordering::Relaxed) {
            // Drops the entries of departed endpoints *and* takes their addresses off the
            // published ejected list: once an entry's `Weak` is gone the allocator may hand
            // the address to a new endpoint, which the list would otherwise avoid.
            self.publish(&mut entries, now);
            self.prune_at
                .store((2 * entries.len()).max(PRUNE_MIN), Ordering::Relaxed);
        }
        let entry = entries.entry(ptr).or_insert_with(|| Entry {
            value: Arc::downgrade(endpoint.value_arc()),
            consecutive: 0,
            ejections: 0,
            until: 0,
        });
        match outcome {
            Outcome::Failure | Outcome::Timeout => {
                if entry.until > now {
                    // Ejected: a late failure of a request picked before the ejection says
                    // nothing new, and must not count toward the next ejection.
                    return;
                }
                entry.consecutive = entry.consecutive.saturating_add(1);
                if entry.consecutive < self.config.consecutive_failures.max(1) {
                    return;
                }
                // Endpoints that left (a deploy replaced them) no longer count against the
                // share, and their stale entries go before the count.
                let before = entries.len();
                entries.retain(|_, e| e.value.strong_count() > 0);
                let pruned = entries.len() != before;
                let total = (self.total)();
                let active = entries.values().filter(|e| e.until > now).count();
                let share = (self.config.max_ejected_share.clamp(0.0, 1.0) * total as f64) as usize;
                let allowed = share.max(1).min(total.saturating_sub(1));
                let Some(entry) = entries.get_mut(&ptr) else {
                    return;
                };
                if active >= allowed {
                    tracing::debug!(endpoint = ?endpoint, "outlier: not ejected, ejection limit reached");
                    if pruned {
                        self.publish(&mut entries, now);
                    }
                    return;
                }
                entry.consecutive = 0;
                entry.ejections = entry.ejections.saturating_add(1);
                let time = self
                    .config
                    .base_ejection
                    .saturating_mul(entry.ejections)
                    .min(self.config.max_ejection);
                entry.until = now.saturating_add(nanos(time)).max(1);
                self.meter.ejected();
                tracing::info!(endpoint = ?endpoint, ejections = entry.ejections, ?time, "outlier: endpoint ejected");
                self.publish(&mut entries, now);
            }
            _ => {}
        }
    }
}

impl<E, B> Balancer<E> for Outlier<B, E>
where
    E: Send + Sync + 'static,
    B: Balancer<E>,
{
    fn pick_with(&self, request: &Request<'_, E>) -> Result<Picked<E>, LbError> {
        let hook = self.state.clone() as Arc<dyn Feedback<E>>;
        if self.state.count.load(Ordering::Acquire) == 0 {
            return Ok(self.inner.pick_with(request)?.and_then(hook));
        }
        let list = self.state.ejected.load();
        let now = self.state.clock.now();
        if list.iter().all(|&(_, until)| until <= now) {
            // Every ejection has expired: they are back.
            if let Ok(mut entries) = self.state.entries.try_lock() {
                self.state.publish(&mut entries, now);
            }
            return Ok(self.inner.pick_with(request)?.and_then(hook));
        }
        let threshold = self.inner.panic_threshold();
        if self
            .state
            .panics(self.inner.snapshot(), &list, threshold, now)
        {
            // Too few healthy endpoints: the ejected ones serve too (panic mode).
            return Ok(self.inner.pick_with(request)?.and_then(hook));
        }
        let avoid = |e: &Endpoint<E>| {
            let ptr = Arc::as_ptr(e.value_arc()) as usize;
            request.avoids(e) || list.iter().any(|&(p, until)| p == ptr && until > now)
        };
        let mut inner = Request::new().avoid(&avoid);
        if let Some(k) = request.key() {
            inner = inner.with_key(k);
        }
        Ok(self.inner.pick_with(&inner)?.and_then(hook))
    }

    fn pick(&self) -> Result<Endpoint<E>, LbError> {
        self.pick_with(&Request::new()).map(Picked::into_endpoint)
    }

    fn snapshot(&self) -> Snapshot<E> {
        self.inner.snapshot()
    }

    fn panic_threshold(&self) -> crate::PanicThreshold {
        self.inner.panic_threshold()
    }
}

impl<B, E: 'static> std::fmt::Debug for Outlier<B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outlier")
            .field("config", &self.state.config)
            .field("ejected", &self.state.count.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sd_core::{FixedEndpointer, Instance};

    fn outlier(
        config: OutlierConfig,
    ) -> Outlier<crate::RoundRobin<Arc<FixedEndpointer<u16>>, u16>, u16> {
        let ep = Arc::new(FixedEndpointer::new(
            (0..4).map(|p| (Instance::new("10.0.0.1", 1000 + p), p)),
        ));
        Outlier::new(crate::RoundRobin::new(ep), config)
    }

    /// Regression (issue 9, item 15): the failure streak was a plain `u32` addition, which
    /// overflows (a panic in debug builds) once an endpoint fails more than `u32::MAX` times
    /// in a row without being ejected (e.g. the ejection limit is reached).
    #[test]
    fn failure_streak_saturates() {
        let lb = outlier(OutlierConfig {
            consecutive_failures: u32::MAX,
            ..Default::default()
        });
        let ep = lb.pick().unwrap();
        let ptr = Arc::as_ptr(ep.value_arc()) as usize;
        lb.state.lock().insert(
            ptr,
            Entry {
                value: Arc::downgrade(ep.value_arc()),
                consecutive: u32::MAX - 1,
                ejections: 0,
                until: 0,
            },
        );
        lb.state.done(&ep, 0, Outcome::Failure);
        assert!(lb.is_ejected(&ep), "u32::MAX failures in a row eject");
        lb.state.lock().get_mut(&ptr).unwrap().consecutive = u32::MAX;
        lb.state.lock().get_mut(&ptr).unwrap().until = 0;
        lb.state.done(&ep, 0, Outcome::Failure);
    }

    /// Regression (issue 9, item 15): an endpoint that failed once and then left the set
    /// kept its entry for ever (+63 MB over 200 000 departed endpoints).
    #[test]
    fn state_of_departed_endpoints_is_freed() {
        let lb = outlier(OutlierConfig::default());
        for i in 0..10_000u32 {
            let gone = Endpoint::new(Instance::new("10.9.0.1", (i % 60_000) as u16), 0u16);
            lb.state.done(&gone, 0, Outcome::Failure);
        }
        let held = lb.state.lock().len();
        assert!(
            held <= 2 * PRUNE_MIN,
            "{held} entries for endpoints that left"
        );
        // Live endpoints keep theirs.
        let live = lb.pick().unwrap();
        lb.state.done(&live, 0, Outcome::Failure);
        for i in 0..1_000u32 {
            let gone = Endpoint::new(Instance::new("10.9.0.1", i as u16), 0u16);
            lb.state.done(&gone, 0, Outcome::Failure);
        }
        let ptr = Arc::as_ptr(live.value_arc()) as usize;
        assert_eq!(lb.state.lock().get(&ptr).map(|e| e.consecutive), Some(1));
    }
}

//! The [`Balancer`] trait, the [`Picked`] completion guard and the helpers every balancer
//! shares.

use std::cell::Cell;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::{ArcSwap, Guard};
use sd_core::{Changes, Endpoint, Endpointer, Endpoints, Health, Snapshot};

use crate::error::{InvalidOption, LbError};

/// Picks one endpoint per request from an endpointer's current snapshot.
///
/// Every balancer in this crate follows go-kit's LB-1: when the endpointer reports an
/// error, [`pick`](Balancer::pick) returns it unchanged as [`LbError::Discovery`]; when
/// there are no endpoints it returns [`LbError::NoEndpoints`].
///
/// **Health.** Every balancer prefers endpoints whose instance is
/// [`Health::Passing`](sd_core::Health::Passing): while enough endpoints pass, the others
/// (warning, critical, unknown) are never picked; when fewer than the balancer's
/// [`PanicThreshold`] (default 50 %) pass, and always when none passes, every endpoint is
/// used (Envoy's panic mode: a registry that marks most of the service critical must not
/// pile all the traffic on the few left, nor take the service down). Backends without
/// health report every instance as passing.
///
/// A pick never waits for a lock and makes no allocation, except the first pick after an
/// update, which starts the rebuild (a thread, or for round robin and random the new list
/// of passing endpoints) and may republish an expired ejection. Exactly what synchronises:
/// balancers with derived tables ([`Weighted`](crate::Weighted), [`P2c`](crate::P2c),
/// [`ConsistentHash`](crate::ConsistentHash)) rebuild them on a background thread that the
/// first pick after an update starts; picks meanwhile use the previous table, or, when that
/// has nothing to serve, pick simply from the new set, so they never report "no endpoints"
/// while there are some. [`RoundRobin`](crate::RoundRobin) and [`Random`](crate::Random) list
/// the passing endpoints on the first pick after an update (one linear scan, under a
/// `try_lock`ed mutex; other threads meanwhile use the previous list, except round robin's,
/// which pick from the new snapshot directly: one linear scan each, never the previous set).
/// [`Outlier`](crate::Outlier) clones an `Arc` per pick and takes a mutex for each reported
/// outcome (not for dropped guards or plain [`pick`](Balancer::pick)s).
///
/// [`pick_with`](Balancer::pick_with) is the full form: it takes a [`Request`] (a key for
/// consistent hashing, endpoints to avoid) and returns a [`Picked`] guard that feeds the
/// outcome back to load-aware balancers and to outlier ejection when it is finished or
/// dropped.
pub trait Balancer<E: 'static>: Send + Sync {
    /// Picks one endpoint. Load-aware balancers count the request as finished at once; use
    /// [`pick_with`](Balancer::pick_with) to keep it counted while it runs.
    fn pick(&self) -> Result<Endpoint<E>, LbError> {
        self.pick_with(&Request::new()).map(Picked::into_endpoint)
    }

    /// Picks one endpoint for `request`, returning a guard that reports the outcome.
    fn pick_with(&self, request: &Request<'_, E>) -> Result<Picked<E>, LbError>;

    /// The current snapshot of the endpointer this balancer picks from.
    fn snapshot(&self) -> Snapshot<E>;

    /// The share of healthy endpoints under which this balancer uses every endpoint (see
    /// [`PanicThreshold`]); wrappers report their inner balancer's. The default is
    /// [`PanicThreshold::default`] (50 %).
    fn panic_threshold(&self) -> PanicThreshold {
        PanicThreshold::default()
    }
}

impl<E: 'static, B: Balancer<E> + ?Sized> Balancer<E> for Arc<B> {
    fn pick(&self) -> Result<Endpoint<E>, LbError> {
        (**self).pick()
    }
    fn pick_with(&self, request: &Request<'_, E>) -> Result<Picked<E>, LbError> {
        (**self).pick_with(request)
    }
    fn snapshot(&self) -> Snapshot<E> {
        (**self).snapshot()
    }
    fn panic_threshold(&self) -> PanicThreshold {
        (**self).panic_threshold()
    }
}

impl<E: 'static, B: Balancer<E> + ?Sized> Balancer<E> for &B {
    fn pick(&self) -> Result<Endpoint<E>, LbError> {
        (**self).pick()
    }
    fn pick_with(&self, request: &Request<'_, E>) -> Result<Picked<E>, LbError> {
        (**self).pick_with(request)
    }
    fn snapshot(&self) -> Snapshot<E> {
        (**self).snapshot()
    }
    fn panic_threshold(&self) -> PanicThreshold {
        (**self).panic_threshold()
    }
}

impl<E: 'static, B: Balancer<E> + ?Sized> Balancer<E> for Box<B> {
    fn pick(&self) -> Result<Endpoint<E>, LbError> {
        (**self).pick()
    }
    fn pick_with(&self, request: &Request<'_, E>) -> Result<Picked<E>, LbError> {
        (**self).pick_with(request)
    }
    fn snapshot(&self) -> Snapshot<E> {
        (**self).snapshot()
    }
    fn panic_threshold(&self) -> PanicThreshold {
        (**self).panic_threshold()
    }
}

/// What a [`Balancer::pick_with`] call should take into account.
///
/// ```
/// use sd_lb::Request;
/// let tried: Vec<sd_core::Endpoint<String>> = Vec::new();
/// let avoid = |e: &sd_core::Endpoint<String>| tried.iter().any(|t| sd_core::Endpoint::same_value(t, e));
/// let req = Request::new().key_of("user-42").avoid(&avoid);
/// assert!(req.key().is_some());
/// ```
pub struct Request<'a, E> {
    key: Option<u64>,
    avoid: Option<&'a Avoid<'a, E>>,
}

/// A predicate naming endpoints a [`Request`] prefers not to use.
pub type Avoid<'a, E> = dyn Fn(&Endpoint<E>) -> bool + Sync + 'a;

impl<E> Default for Request<'_, E> {
    fn default() -> Self {
        Request {
            key: None,
            avoid: None,
        }
    }
}

impl<'a, E> Request<'a, E> {
    /// A request with no key and nothing to avoid.
    pub fn new() -> Self {
        Self::default()
    }

    /// The request key for consistent hashing (ignored by the other balancers).
    pub fn key(&self) -> Option<u64> {
        self.key
    }

    /// Sets the consistent-hashing key to `key`.
    pub fn with_key(mut self, key: u64) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets the consistent-hashing key to a stable hash of `key` (the same in every process).
    pub fn key_of<K: Hash + ?Sized>(mut self, key: &K) -> Self {
        self.key = Some(hash_key(key));
        self
    }

    /// Endpoints for which `avoid` returns `true` are picked only when every endpoint is
    /// avoided (a preference, never a reason to fail).
    pub fn avoid(mut self, avoid: &'a Avoid<'a, E>) -> Self {
        self.avoid = Some(avoid);
        self
    }

    /// Whether this request prefers not to use `endpoint`.
    #[inline]
    pub fn avoids(&self, endpoint: &Endpoint<E>) -> bool {
        match self.avoid {
            Some(f) => f(endpoint),
            None => false,
        }
    }

    /// Whether an avoid filter is set.
    #[inline]
    pub fn has_avoid(&self) -> bool {
        self.avoid.is_some()
    }
}

/// How a request on a picked endpoint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The request succeeded.
    Success,
    /// The request failed in a way that reflects on the endpoint.
    Failure,
    /// The request was cut off before it finished: a timeout, or its future was dropped
    /// while it ran (to the balancer a timeout and a cancellation look the same). Outlier
    /// ejection counts it as a failure, so an endpoint that hangs is ejected; P2C records the
    /// time until then as a latency. [`Retry`](crate::Retry) reports it when its overall
    /// timeout, or a timeout of the caller's around [`Retry::call`](crate::Retry::call),
    /// cuts an attempt off; the tower adapters when their response future is dropped after
    /// its first poll and before it completes (e.g. by a timeout layer outside them). A
    /// response future dropped before its first poll sent nothing and reports
    /// [`Unknown`](Outcome::Unknown).
    Timeout,
    /// Not reported (the guard was dropped): counts as finished, neither success nor failure.
    /// The time since the pick is still a latency measurement (a cancelled request took it).
    Unknown,
    /// The pick was not followed by a tracked request ([`Balancer::pick`],
    /// [`Picked::into_endpoint`]): releases the in-flight count and records nothing else, no
    /// latency, no success, no failure.
    Untracked,
}

/// Receives the outcome of a request made on a picked endpoint (load tracking, outlier
/// ejection). Implemented by this crate's load-aware balancers; implement it for your own.
pub trait Feedback<E>: Send + Sync {
    /// The request on `endpoint`, started at `start` (nanoseconds on the balancer's
    /// [`Clock`]), ended with `outcome`.
    fn done(&self, endpoint: &Endpoint<E>, start: u64, outcome: Outcome);
}

/// An endpoint picked by a [`Balancer`], with the load tracking of the request made on it.
///
/// Report the outcome with [`success`](Picked::success) or [`failure`](Picked::failure).
/// A guard that is dropped unreported still ends the request (in-flight counts go down,
/// latency is recorded), so a cancelled request never leaks load.
///
/// Up to three receivers of the outcome ([`tracked`](Picked::tracked) plus
/// [`and_then`](Picked::and_then)) are held inline without allocating, e.g. P2C's load
/// tracking under two [`Outlier`](crate::Outlier) layers; each further one costs one small
/// allocation. Every receiver is told, in the order they were added.
pub struct Picked<E: 'static> {
    endpoint: Endpoint<E>,
    start: u64,
    hooks: [Option<Arc<dyn Feedback<E>>>; HOOKS],
}

/// Receivers of the outcome held inline by a [`Picked`].
const HOOKS: usize = 3;

/// Two receivers told one after the other: what [`Picked::and_then`] stacks when its inline
/// slots are full.
struct Chain<E>(Arc<dyn Feedback<E>>, Arc<dyn Feedback<E>>);

impl<E> Feedback<E> for Chain<E> {
    fn done(&self, endpoint: &Endpoint<E>, start: u64, outcome: Outcome) {
        self.0.done(endpoint, start, outcome);
        self.1.done(endpoint, start, outcome);
    }
}

impl<E: 'static> Picked<E> {
    /// An untracked pick.
    #[inline]
    pub fn new(endpoint: Endpoint<E>) -> Self {
        Picked {
            endpoint,
            start: 0,
            hooks: [None, None, None],
        }
    }

    /// A pick reported to `feedback` when it ends; `start` is the time on the balancer's clock.
    pub fn tracked(endpoint: Endpoint<E>, start: u64, feedback: Arc<dyn Feedback<E>>) -> Self {
        Picked {
            endpoint,
            start,
            hooks: [Some(feedback), None, None],
        }
    }

    /// Adds a receiver of the outcome (used by wrappers such as outlier ejection), after the
    /// ones already there: all of them are told.
    pub fn and_then(mut self, feedback: Arc<dyn Feedback<E>>) -> Self {
        if let Some(free) = self.hooks.iter_mut().find(|h| h.is_none()) {
            *free = Some(feedback);
        } else if let Some(last) = self.hooks[HOOKS - 1].take() {
            self.hooks[HOOKS - 1] = Some(Arc::new(Chain(last, feedback)));
        }
        self
    }

    /// The endpoint.
    #[inline]
    pub fn endpoint(&self) -> &Endpoint<E> {
        &self.endpoint
    }

    /// Reports success.
    pub fn success(self) {
        self.finish(Outcome::Success)
    }

    /// Reports failure.
    pub fn failure(self) {
        self.finish(Outcome::Failure)
    }

    /// Reports `outcome`.
    pub fn finish(mut self, outcome: Outcome) {
        self.report(outcome);
    }

    /// Ends the pick now without a tracked request ([`Outcome::Untracked`]: the in-flight
    /// count goes down, no latency or outcome is recorded) and returns the endpoint.
    #[inline]
    pub fn into_endpoint(mut self) -> Endpoint<E> {
        self.report(Outcome::Untracked);
        self.endpoint.clone()
    }

    #[inline]
    fn report(&mut self, outcome: Outcome) {
        for hook in &mut self.hooks {
            if let Some(h) = hook.take() {
                h.done(&self.endpoint, self.start, outcome);
            }
        }
    }
}

impl<E: 'static> Drop for Picked<E> {
    fn drop(&mut self) {
        self.report(Outcome::Unknown);
    }
}

/// A pick whose request may be cut off: held by a caller that can itself be dropped mid-request
/// ([`Retry::call`](crate::Retry::call) under a timeout of the caller's, tower's response
/// futures). Dropped after [`start`](Running::start) without an outcome, it reports
/// [`Outcome::Timeout`] (a hanging endpoint then counts for outlier ejection); dropped before,
/// [`Outcome::Unknown`] (the request never went out: a cancelled caller says nothing about
/// the endpoint).
pub(crate) struct Running<E: 'static> {
    picked: Option<Picked<E>>,
    started: bool,
}

impl<E: 'static> Running<E> {
    /// Holds `picked`, not started yet.
    pub(crate) fn new(picked: Picked<E>) -> Self {
        Running {
            picked: Some(picked),
            started: false,
        }
    }

    /// The request is under way: from now on, dropping this reports a timeout.
    pub(crate) fn start(&mut self) {
        self.started = true;
    }

    /// Reports `outcome` for the pick.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        if let Some(p) = self.picked.take() {
            p.finish(outcome);
        }
    }
}

impl<E: 'static> Drop for Running<E> {
    fn drop(&mut self) {
        if let Some(p) = self.picked.take() {
            if self.started {
                p.finish(Outcome::Timeout);
            }
        }
    }
}

impl<E: 'static> std::fmt::Debug for Picked<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Picked")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// The time source of load tracking and outlier ejection, in nanoseconds.
///
/// [`Clock::std`] (the default) reads `std::time::Instant`; [`Clock::tokio`] reads
/// `tokio::time::Instant`, so tests under `tokio::time::pause` control it; [`Clock::fast`]
/// reads the CPU's time-stamp counter where that is safe (see there), which peak-EWMA
/// [`P2c`](crate::P2c) uses by default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock(Source);

#[derive(Debug, Clone, Copy, Default)]
enum Source {
    /// `std::time::Instant`.
    #[default]
    Std,
    /// `tokio::time::Instant`, measured from the given origin.
    Tokio(tokio::time::Instant),
    /// The x86-64 time-stamp counter, scaled to nanoseconds.
    Tsc(Tsc),
}

/// A calibrated time-stamp counter (see [`Clock::fast`]).
#[derive(Debug, Clone, Copy)]
struct Tsc {
    base: u64,
    ns_per_tick: f64,
}

impl Clock {
    /// `std::time::Instant` (the default).
    pub fn std() -> Self {
        Clock(Source::Std)
    }

    /// A clock that follows tokio's (pausable) time, starting now.
    pub fn tokio() -> Self {
        Clock(Source::Tokio(tokio::time::Instant::now()))
    }

    /// The cheapest accurate clock here: the CPU's time-stamp counter (about 10 ns a read on
    /// our machines, against about 25 ns for `Instant::now()`) when the operating system
    /// itself keeps time with it — Linux on x86-64 with the `tsc` clocksource and an
    /// invariant counter (`constant_tsc`, `nonstop_tsc`), so it is synchronised across cores
    /// and does not change rate — and [`Clock::std`] otherwise.
    ///
    /// The first call in a process calibrates the counter against `Instant`: the median of
    /// five 1 ms windows, dropping windows a preemption disturbed (about 5 ms in all).
    pub fn fast() -> Self {
        static FAST: OnceLock<Clock> = OnceLock::new();
        *FAST.get_or_init(|| match tsc::calibrate() {
            Some(t) => Clock(Source::Tsc(t)),
            None => Clock(Source::Std),
        })
    }

    /// Nanoseconds since this clock's origin.
    #[inline]
    pub fn now(&self) -> u64 {
        match &self.0 {
            Source::Std => {
                static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
                let origin = ORIGIN.get_or_init(std::time::Instant::now);
                origin.elapsed().as_nanos() as u64
            }
            Source::Tokio(origin) => tokio::time::Instant::now()
                .saturating_duration_since(*origin)
                .as_nanos() as u64,
            Source::Tsc(t) => {
                // Signed, so that a core whose counter is a hair behind the calibrating one
                // reads 0 rather than wrapping around.
                let ticks = tsc::read().wrapping_sub(t.base) as i64;
                (ticks.max(0) as f64 * t.ns_per_tick) as u64
            }
        }
    }
}

mod tsc {
    use super::Tsc;

    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[inline]
    pub(super) fn read() -> u64 {
        // SAFETY: `rdtsc` has no preconditions on x86-64; it only reads the counter.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }

    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    #[inline]
    pub(super) fn read() -> u64 {
        0
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    pub(super) fn calibrate() -> Option<Tsc> {
        let source = std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .ok()?;
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        let flags = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
        let has = |f: &str| flags.split_whitespace().any(|x| x == f);
        if source.trim() != "tsc" || !has("constant_tsc") || !has("nonstop_tsc") {
            return None;
        }
        // Five 1 ms windows, each bounded by tight (Instant, counter) pairs; a window that a
        // preemption stretched (its Instant span well past 1 ms) or whose end pair was split
        // is dropped, and the median of the rest is used, so one unlucky moment on a loaded
        // machine cannot skew the calibration (it is made once per process).
        let (_, base) = pair()?;
        let mut rates = [0f64; 5];
        let mut good = 0;
        for _ in 0..20 {
            if good == rates.len() {
                break;
            }
            if let Some(rate) = window(std::time::Duration::from_millis(1)) {
                rates[good] = rate;
                good += 1;
            }
        }
        if good < 3 {
            return None;
        }
        let rates = &mut rates[..good];
        rates.sort_by(f64::total_cmp);
        let ns_per_tick = rates[good / 2];
        // A plausible counter runs between 100 MHz and 10 GHz.
        if !(0.1..=10.0).contains(&ns_per_tick) {
            return None;
        }
        tracing::debug!(ns_per_tick, "clock: using the time-stamp counter");
        Some(Tsc { base, ns_per_tick })
    }

    /// An `Instant` and a counter read taken together: the counter read between two
    /// `Instant` reads less than 20 µs apart (retried a few times), paired with their middle.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    fn pair() -> Option<(std::time::Instant, u64)> {
        for _ in 0..10 {
            let a = std::time::Instant::now();
            let t = read();
            let b = std::time::Instant::now();
            let gap = b.duration_since(a);
            if gap < std::time::Duration::from_micros(20) {
                return Some((a + gap / 2, t));
            }
        }
        None
    }

    /// Nanoseconds per tick over one window of about `span`, or `None` if the window was
    /// disturbed (its pairs split, or the window stretched to more than 1.5 × `span`).
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    fn window(span: std::time::Duration) -> Option<f64> {
        let (i0, t0) = pair()?;
        while i0.elapsed() < span {
            std::hint::spin_loop();
        }
        let (i1, t1) = pair()?;
        let ns = i1.duration_since(i0);
        if ns > span + span / 2 {
            return None;
        }
        let ticks = t1.checked_sub(t0)?;
        if ticks == 0 {
            return None;
        }
        Some(ns.as_nanos() as f64 / ticks as f64)
    }

    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    pub(super) fn calibrate() -> Option<Tsc> {
        None
    }
}

// ---------------------------------------------------------------------------------------
// Shared helpers.

/// Reads the snapshot's endpoints, mapping errors as LB-1 requires.
#[inline]
pub(crate) fn endpoints_of<E>(snap: &Endpoints<E>) -> Result<&[Endpoint<E>], LbError> {
    match snap.get() {
        Ok([]) => Err(LbError::NoEndpoints),
        Ok(list) => Ok(list),
        Err(e) => Err(LbError::Discovery(e.clone())),
    }
}

/// Whether `endpoint`'s instance is [`Health::Passing`].
#[inline]
pub(crate) fn is_passing<E>(endpoint: &Endpoint<E>) -> bool {
    endpoint.instance().health() == Health::Passing
}

/// Envoy's panic threshold: when fewer than this share of the endpoints are healthy, a
/// balancer stops preferring the healthy ones and uses every endpoint, so that the few
/// healthy ones are not overloaded by the traffic of all (a health check that fails
/// everywhere at once, a registry marking most of the service critical).
///
/// Healthy means [`Health::Passing`](sd_core::Health::Passing) for a balancer, and also not
/// ejected for [`Outlier`](crate::Outlier), which uses its inner balancer's threshold (see
/// there). The default is 50 % (Envoy's); [`PanicThreshold::OFF`] (0 %) keeps preferring
/// healthy endpoints however few they are. With no healthy endpoint at all every endpoint
/// is used whatever the threshold: a balancer never fails while there are endpoints.
///
/// ```
/// use sd_lb::PanicThreshold;
/// let t = PanicThreshold::percent(30.0).unwrap();
/// assert!(t.panics(2, 10)); // 20 % healthy: use all 10
/// assert!(!t.panics(3, 10)); // 30 %: prefer the 3
/// assert!(!PanicThreshold::OFF.panics(1, 10));
/// assert!(PanicThreshold::OFF.panics(0, 10));
/// assert!(PanicThreshold::percent(150.0).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct PanicThreshold(f64); // percent, 0 to 100

impl PanicThreshold {
    /// Never panic while an endpoint is healthy.
    pub const OFF: PanicThreshold = PanicThreshold(0.0);

    /// A threshold of `percent` % (0 to 100; 0 is [`OFF`](PanicThreshold::OFF)).
    pub fn percent(percent: f64) -> Result<Self, InvalidOption> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(InvalidOption::new(
                "panic threshold",
                format!("{percent} % given; must be 0 to 100 (0 turns panic mode off)"),
            ));
        }
        Ok(PanicThreshold(percent))
    }

    /// The threshold in percent.
    pub fn as_percent(&self) -> f64 {
        self.0
    }

    /// Whether `healthy` endpoints out of `total` are too few: use them all.
    #[inline]
    pub fn panics(&self, healthy: usize, total: usize) -> bool {
        // `healthy × 100 < percent × total`, kept in percent: both sides are exact for
        // any realistic count (a fraction `percent / 100` is not: 0.28 × 25 = 7.000…01).
        total > 0 && (healthy == 0 || (healthy as f64) * 100.0 < self.0 * total as f64)
    }
}

impl Default for PanicThreshold {
    /// 50 %, as Envoy.
    fn default() -> Self {
        PanicThreshold(50.0)
    }
}

/// The builder every balancer with a derived view has: `with_panic_threshold`, over the
/// balancer's `Viewed` field `$view` and its `endpointer` field.
macro_rules! panic_threshold_builder {
    ($view:ident) => {
        /// Uses every endpoint when fewer than `threshold` of them pass their health checks
        /// (see [`PanicThreshold`](crate::PanicThreshold); the default is 50 %). Set it
        /// before use: the state is rederived now, on this thread.
        pub fn with_panic_threshold(mut self, threshold: crate::PanicThreshold) -> Self {
            self.$view.set_threshold(threshold, &self.endpointer);
            self
        }
    };
}
pub(crate) use panic_threshold_builder;

/// The indices of the endpoints a pick prefers: the passing ones, when some but not all
/// endpoints pass; `None` (use every endpoint) when all pass, or when too few do
/// (`threshold`, panic mode).
pub(crate) fn preferred_of<E>(
    list: &[Endpoint<E>],
    threshold: PanicThreshold,
) -> Option<Box<[u32]>> {
    let passing = list.iter().filter(|e| is_passing(e)).count();
    if passing == list.len() || threshold.panics(passing, list.len()) {
        return None;
    }
    Some(
        list.iter()
            .enumerate()
            .filter(|(_, e)| is_passing(e))
            .map(|(i, _)| i as u32)
            .collect(),
    )
}

/// The endpoints a pick chooses among: every endpoint of the list, or the preferred
/// (passing) ones; `at(k)` maps the k-th candidate to its index in the list.
#[derive(Clone, Copy)]
pub(crate) struct Cands<'a> {
    all: usize,
    preferred: Option<&'a [u32]>,
}

impl<'a> Cands<'a> {
    #[inline]
    pub(crate) fn new(all: usize, preferred: Option<&'a [u32]>) -> Self {
        Cands { all, preferred }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        match self.preferred {
            Some(p) => p.len(),
            None => self.all,
        }
    }

    /// The preferred endpoints' indices, `None` when every endpoint is a candidate.
    #[inline]
    pub(crate) fn preferred(&self) -> Option<&'a [u32]> {
        self.preferred
    }

    #[inline]
    pub(crate) fn at(&self, k: usize) -> usize {
        match self.preferred {
            Some(p) => p[k] as usize,
            None => k,
        }
    }
}

/// `start` if the request accepts its endpoint; otherwise an index drawn uniformly among
/// the accepted candidates (with the per-thread generator), so an avoided endpoint's share
/// spreads evenly over the others instead of landing on its neighbour; `start` itself when
/// every candidate is avoided.
#[inline]
pub(crate) fn first_accepted<E>(
    list: &[Endpoint<E>],
    cands: Cands<'_>,
    start: usize,
    req: &Request<'_, E>,
) -> usize {
    if !req.has_avoid() || !req.avoids(&list[start]) {
        return start;
    }
    redraw_accepted(list, cands, start, req, thread_random())
}

/// [`first_accepted`] drawing from `r` (for seeded balancers and for consistent hashing,
/// whose fall-through must be the same in every client). `start` is known to be avoided.
///
/// Up to [`REDRAWS`] uniform redraws among the candidates (rejection sampling: uniform among
/// the accepted ones; one or two draws suffice while most are accepted, about `1 / share`
/// when only a share is, e.g. one zone of [`ZoneAware`](crate::ZoneAware)), then, when
/// nearly all are avoided, a count of the accepted ones and a uniform choice of one of them
/// (`O(N)`). No allocation.
/// Random redraws an avoided pick makes before it counts the accepted endpoints (`O(N)`):
/// with a fifth of the endpoints accepted, the count is needed once in 1 / 0.8^32 ≈ 1 300
/// picks.
pub(crate) const REDRAWS: usize = 32;

#[cold]
pub(crate) fn redraw_accepted<E>(
    list: &[Endpoint<E>],
    cands: Cands<'_>,
    start: usize,
    req: &Request<'_, E>,
    mut r: u64,
) -> usize {
    let n = cands.len();
    for _ in 0..REDRAWS {
        r = splitmix(r);
        let i = cands.at(bounded(r, n));
        if !req.avoids(&list[i]) {
            return i;
        }
    }
    let accepted = (0..n).filter(|&k| !req.avoids(&list[cands.at(k)])).count();
    if accepted == 0 {
        return start;
    }
    let k = bounded(splitmix(r), accepted);
    (0..n)
        .map(|k| cands.at(k))
        .filter(|&i| !req.avoids(&list[i]))
        .nth(k)
        .unwrap_or(start)
}

/// A pick over a snapshot for which no derived table exists yet (between an update and the
/// end of the first rebuild, when the previous table has nothing to serve): O(N), no
/// allocation, a function of `r`. It follows the same preferences as a table: passing
/// endpoints first (all when too few pass, `threshold`), then endpoints the request does not
/// avoid (all when it avoids every one), in proportion to
/// [`Instance::weight`](sd_core::Instance::weight) when `weighted` (equally when every
/// weight is 0).
#[cold]
pub(crate) fn fallback_index<E>(
    list: &[Endpoint<E>],
    r: u64,
    req: &Request<'_, E>,
    weighted: bool,
    threshold: PanicThreshold,
) -> usize {
    let passing = list.iter().filter(|e| is_passing(e)).count();
    let panic = threshold.panics(passing, list.len());
    let tier = |e: &Endpoint<E>| panic || is_passing(e);
    let any_accepted = list.iter().any(|e| tier(e) && !req.avoids(e));
    let ok = |e: &Endpoint<E>| tier(e) && (!any_accepted || !req.avoids(e));
    let weight = |e: &Endpoint<E>| {
        if weighted {
            e.instance().weight() as u64
        } else {
            1
        }
    };
    let mut total: u64 = list.iter().filter(|e| ok(e)).map(weight).sum();
    let unit = total == 0;
    if unit {
        total = list.iter().filter(|e| ok(e)).count() as u64;
    }
    let mut x = ((r as u128 * total as u128) >> 64) as u64;
    for (i, e) in list.iter().enumerate() {
        if !ok(e) {
            continue;
        }
        let w = if unit { 1 } else { weight(e) };
        if x < w {
            return i;
        }
        x -= w;
    }
    0
}

/// A [`fallback_index`] pick from `snap`, or its LB-1 error.
#[cold]
pub(crate) fn pick_fallback<E>(
    snap: &Snapshot<E>,
    r: u64,
    req: &Request<'_, E>,
    weighted: bool,
    threshold: PanicThreshold,
) -> Result<Picked<E>, LbError> {
    let list = endpoints_of(snap)?;
    Ok(Picked::new(
        list[fallback_index(list, r, req, weighted, threshold)].clone(),
    ))
}

/// Picks from `inner` for `request`, also avoiding the endpoints whose value pointers are
/// in `extra` (those a wrapper has just turned down): the redraw of
/// [`SlowStart`](crate::SlowStart) and
/// [`Drain`](crate::Drain). The request's key is kept.
pub(crate) fn pick_avoiding<E: 'static, B: Balancer<E> + ?Sized>(
    inner: &B,
    request: &Request<'_, E>,
    extra: &[usize],
) -> Result<Picked<E>, LbError> {
    if extra.is_empty() {
        return inner.pick_with(request);
    }
    let avoid = |e: &Endpoint<E>| request.avoids(e) || extra.contains(&value_ptr(e));
    let mut again = Request::new().avoid(&avoid);
    if let Some(k) = request.key() {
        again = again.with_key(k);
    }
    inner.pick_with(&again)
}

/// A uniform number in `[0, 1)` from a uniform `u64`.
#[inline]
pub(crate) fn unit(r: u64) -> f64 {
    (r >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The address of `endpoint`'s value: what identifies an endpoint across snapshots (the
/// endpointer keeps the value while the instance stays).
#[inline]
pub(crate) fn value_ptr<E>(endpoint: &Endpoint<E>) -> usize {
    Arc::as_ptr(endpoint.value_arc()) as usize
}

/// Maps a uniform `u64` to `0..n` without division (Lemire).
#[inline]
pub(crate) fn bounded(r: u64, n: usize) -> usize {
    ((r as u128 * n as u128) >> 64) as usize
}

/// SplitMix64: a good 64-bit mix, used both as a seedable generator and as a hash finaliser.
#[inline]
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed_thread());
}

fn seed_thread() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    RandomState::new().hash_one(std::thread::current().id()) | 1
}

/// A fast per-thread random number (xorshift64*): no lock, no allocation, no sharing.
#[inline]
pub(crate) fn thread_random() -> u64 {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A stable 64-bit hash (FNV-1a over the `Hash` bytes, finished with SplitMix64): the same
/// value in every process and on every platform of the same endianness.
pub fn hash_key<K: Hash + ?Sized>(key: &K) -> u64 {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            splitmix(self.0)
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= *b as u64;
                self.0 = self.0.wrapping_mul(0x0000_0100_0000_01B3);
            }
        }
    }
    let mut h = Fnv(0xCBF2_9CE4_8422_2325);
    key.hash(&mut h);
    h.finish()
}

/// A counter on its own cache line, so that counters of different balancers (or a counter
/// and the data next to it) do not share a line.
#[repr(align(128))]
#[derive(Debug, Default)]
pub(crate) struct PaddedCounter(pub(crate) AtomicU64);

impl PaddedCounter {
    #[inline]
    pub(crate) fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// The function that derives a balancer's state from one snapshot: the endpoints, the
/// indices of the preferred (passing) ones, and the previous state (to carry statistics over).
pub(crate) type Build<T, E> =
    dyn Fn(&[Endpoint<E>], Option<&[u32]>, Option<&T>) -> T + Send + Sync + 'static;

/// State derived from one endpointer snapshot (the preferred endpoints, and a weighted
/// schedule, a hash table or load statistics), held with that snapshot and the endpointer's
/// change notifier.
///
/// A pick reads it with one `arc-swap` load and one atomic read of the endpointer's version
/// ([`Changes::has_changed`]). After an update:
///
/// - **inline** state (the preferred list of round robin and random: one linear scan) is
///   rebuilt by the first pick that `try_lock`s the rebuild mutex;
/// - **background** state (schedules, Maglev tables, load statistics: milliseconds to
///   seconds at 10 000 endpoints) is rebuilt on a thread of its own, started by the first
///   pick that sees the update; no pick ever builds it.
///
/// Meanwhile picks never wait: they use the previous state, or, when that has no endpoints
/// to serve (start-up, recovery from an empty or failed set), [`Current::Fallback`], a
/// simple pick over the current snapshot, so a pick never reports "no endpoints" while the
/// endpointer has some. An empty or failed current snapshot is reported as such at once.
pub(crate) struct Viewed<T, E: 'static> {
    shared: Arc<Shared<T, E>>,
}

struct Shared<T, E: 'static> {
    view: ArcSwap<View<T, E>>,
    /// Held while a state is built (inline with `try_lock`, on the rebuild thread and in
    /// [`Viewed::refresh`] with `lock`).
    rebuild: Mutex<()>,
    /// A background rebuild is scheduled or running.
    building: AtomicBool,
    /// Numbers the subscriptions (see [`subscribe`]).
    subscriptions: AtomicU64,
    background: bool,
    threshold: PanicThreshold,
    build: Box<Build<T, E>>,
}

/// One snapshot and the state derived from it.
pub(crate) struct View<T, E: 'static> {
    pub(crate) snapshot: Snapshot<E>,
    /// Marked seen when the snapshot was taken: [`Changes::has_changed`] tells whether the
    /// endpointer has published a newer state since (what a per-thread cache checks).
    pub(crate) changes: Changes,
    /// The number of the subscription the snapshot came from (see [`subscribe`]).
    seq: u64,
    /// See [`preferred_of`].
    preferred: Option<Box<[u32]>>,
    pub(crate) value: T,
}

impl<T, E: 'static> View<T, E> {
    /// The endpoints a pick chooses among (see [`preferred_of`]).
    #[inline]
    pub(crate) fn cands(&self) -> Cands<'_> {
        Cands::new(self.snapshot.all().len(), self.preferred.as_deref())
    }

    /// Whether this view has endpoints to serve.
    fn serves(&self) -> bool {
        matches!(self.snapshot.get(), Ok(l) if !l.is_empty())
    }

    fn make(
        sub: Subscribed<E>,
        build: &Build<T, E>,
        old: Option<&T>,
        threshold: PanicThreshold,
    ) -> Self {
        let Subscribed {
            changes,
            snapshot,
            seq,
        } = sub;
        let preferred = preferred_of(snapshot.all(), threshold);
        let value = build(snapshot.all(), preferred.as_deref(), old);
        View {
            snapshot,
            changes,
            seq,
            preferred,
            value,
        }
    }
}

/// What a pick uses: a derived view, or (no view can serve yet) the current snapshot.
pub(crate) enum Current<T, E: 'static> {
    /// The current view, or the previous one while the current one is being built.
    View(Guard<Arc<View<T, E>>>),
    /// No view has endpoints to serve yet, or the current snapshot has none (then the pick
    /// reports its error): pick from this snapshot directly ([`fallback_index`]).
    Fallback(Snapshot<E>),
}

/// What [`subscribe`] took from the endpointer.
struct Subscribed<E: 'static> {
    changes: Changes,
    snapshot: Snapshot<E>,
    seq: u64,
}

/// The endpointer's current notifier (marked seen) and snapshot, in that order: an update
/// that lands in between is seen as a change, never missed. Numbered from `counter`, so that
/// a background rebuild can tell that a view built from a later subscription is already in
/// place, whatever the snapshots' versions say (a custom endpointer's version need not grow,
/// e.g. one switching between two sources).
fn subscribe<E, P: Endpointer<E> + ?Sized>(counter: &AtomicU64, endpointer: &P) -> Subscribed<E> {
    let seq = counter.fetch_add(1, Ordering::AcqRel) + 1;
    let mut changes = endpointer.changes();
    changes.mark_seen();
    Subscribed {
        changes,
        snapshot: endpointer.endpoints().detach(),
        seq,
    }
}

/// Clears the building flag when a rebuild ends, also by unwinding.
struct Building<'a>(&'a AtomicBool);

impl Drop for Building<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl<T: Send + Sync + 'static, E: Send + Sync + 'static> Viewed<T, E> {
    /// Derives the state of the endpointer's current snapshot now (construction is not a
    /// request) and keeps it up to date: inline after an update, or in the background when
    /// `background`.
    pub(crate) fn new<P: Endpointer<E> + ?Sized>(
        endpointer: &P,
        background: bool,
        build: impl Fn(&[Endpoint<E>], Option<&[u32]>, Option<&T>) -> T + Send + Sync + 'static,
    ) -> Self {
        let build: Box<Build<T, E>> = Box::new(build);
        let subscriptions = AtomicU64::new(0);
        let first = subscribe(&subscriptions, endpointer);
        Viewed {
            shared: Arc::new(Shared {
                view: ArcSwap::from_pointee(View::make(
                    first,
                    &*build,
                    None,
                    PanicThreshold::default(),
                )),
                rebuild: Mutex::new(()),
                building: AtomicBool::new(false),
                subscriptions,
                background,
                threshold: PanicThreshold::default(),
                build,
            }),
        }
    }

    /// Sets the panic threshold and rederives the state with it (at construction: the state
    /// is not shared yet).
    pub(crate) fn set_threshold<P: Endpointer<E> + ?Sized>(
        &mut self,
        threshold: PanicThreshold,
        endpointer: &P,
    ) {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.threshold = threshold;
            let sub = subscribe(&shared.subscriptions, endpointer);
            let old = shared.view.load_full();
            let next = View::make(sub, &*shared.build, Some(&old.value), threshold);
            shared.view.store(Arc::new(next));
        }
    }

    /// Replaces this state with `next` (a balancer's option changed how it is derived),
    /// keeping the panic threshold.
    pub(crate) fn replace<P: Endpointer<E> + ?Sized>(&mut self, next: Self, endpointer: &P) {
        let threshold = self.threshold();
        *self = next;
        if threshold != self.threshold() {
            self.set_threshold(threshold, endpointer);
        }
    }

    /// The panic threshold.
    #[inline]
    pub(crate) fn threshold(&self) -> PanicThreshold {
        self.shared.threshold
    }

    /// What a pick uses now; see [`Viewed`].
    #[inline]
    pub(crate) fn get<P: Endpointer<E> + ?Sized>(&self, endpointer: &P) -> Current<T, E> {
        let view = self.shared.view.load();
        if !view.changes.has_changed() {
            return Current::View(view);
        }
        self.changed(endpointer, view)
    }

    #[cold]
    fn changed<P: Endpointer<E> + ?Sized>(
        &self,
        endpointer: &P,
        view: Guard<Arc<View<T, E>>>,
    ) -> Current<T, E> {
        let cur = endpointer.endpoints();
        if std::ptr::eq::<Endpoints<E>>(&*cur, &*view.snapshot) {
            // Nothing new to derive (the notifier also reports a change once the
            // endpointer is gone).
            return Current::View(view);
        }
        if self.shared.background {
            self.schedule(endpointer);
        } else if let Some(fresh) = self.rebuild_inline(endpointer) {
            return Current::View(fresh);
        }
        if view.serves() && matches!(cur.get(), Ok(l) if !l.is_empty()) {
            Current::View(view)
        } else {
            Current::Fallback(cur)
        }
    }

    /// Rebuilds on this thread if no other thread is rebuilding (the cheap, inline states).
    fn rebuild_inline<P: Endpointer<E> + ?Sized>(
        &self,
        endpointer: &P,
    ) -> Option<Guard<Arc<View<T, E>>>> {
        let _lock = match self.shared.rebuild.try_lock() {
            Ok(lock) => lock,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            // Another thread is rebuilding: the caller uses the previous view meanwhile.
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let old = self.shared.view.load();
        if !old.changes.has_changed() {
            return Some(old);
        }
        let sub = subscribe(&self.shared.subscriptions, endpointer);
        let next = Arc::new(View::make(
            sub,
            &*self.shared.build,
            Some(&old.value),
            self.shared.threshold,
        ));
        self.shared.view.store(next.clone());
        Some(Guard::from_inner(next))
    }

    /// Starts a background rebuild unless one is scheduled or running.
    fn schedule<P: Endpointer<E> + ?Sized>(&self, endpointer: &P) {
        // A plain load first: picks during a rebuild do not fight over the flag's line.
        if self.shared.building.load(Ordering::Acquire)
            || self.shared.building.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let sub = subscribe(&self.shared.subscriptions, endpointer);
        let shared = self.shared.clone();
        let job = move || {
            let _building = Building(&shared.building);
            let _lock = shared.rebuild.lock().unwrap_or_else(|p| p.into_inner());
            let old = shared.view.load_full();
            if std::ptr::eq::<Endpoints<E>>(&*old.snapshot, &*sub.snapshot) || old.seq > sub.seq {
                // A refresh got there first.
                return;
            }
            let next = View::make(sub, &*shared.build, Some(&old.value), shared.threshold);
            shared.view.store(Arc::new(next));
        };
        if let Err(e) = std::thread::Builder::new()
            .name("sd-lb-rebuild".into())
            .spawn(job)
        {
            // No thread to be had: rebuild here rather than never.
            tracing::warn!(error = %e, "sd-lb: cannot start a rebuild thread; rebuilding on the picking thread");
            self.shared.building.store(false, Ordering::Release);
            self.refresh(endpointer);
        }
    }

    /// Brings the derived state up to date with the endpointer on this thread, waiting for
    /// a rebuild in progress (for warm-up and tests; picks never call it).
    pub(crate) fn refresh<P: Endpointer<E> + ?Sized>(&self, endpointer: &P) {
        let _lock = self
            .shared
            .rebuild
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let old = self.shared.view.load_full();
        if !old.changes.has_changed() {
            return;
        }
        let sub = subscribe(&self.shared.subscriptions, endpointer);
        if std::ptr::eq::<Endpoints<E>>(&*old.snapshot, &*sub.snapshot) {
            return;
        }
        let next = View::make(
            sub,
            &*self.shared.build,
            Some(&old.value),
            self.shared.threshold,
        );
        self.shared.view.store(Arc::new(next));
    }

    /// The current view, brought up to date first (see [`refresh`](Self::refresh)).
    pub(crate) fn fresh<P: Endpointer<E> + ?Sized>(
        &self,
        endpointer: &P,
    ) -> Guard<Arc<View<T, E>>> {
        self.refresh(endpointer);
        self.shared.view.load()
    }
}

#[cfg(test)]
mod tests {
    use super::{Clock, Current, Viewed};
    use std::sync::{Arc, Condvar, Mutex};

    use sd_core::{BoxError, DefaultEndpointer, Endpoint, Event, Instance, InstanceCache};

    /// A build function that records the thread it ran on and, for a set of `hold`
    /// endpoints, waits until the gate opens; the value is the set's size.
    #[allow(clippy::type_complexity)]
    fn gated_build(
        hold: usize,
    ) -> (
        impl Fn(&[Endpoint<u16>], Option<&[u32]>, Option<&usize>) -> usize + Send + Sync + 'static,
        Arc<(Mutex<bool>, Condvar)>,
        Arc<Mutex<Vec<std::thread::ThreadId>>>,
    ) {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let (g, t) = (gate.clone(), threads.clone());
        let build = move |l: &[Endpoint<u16>], _: Option<&[u32]>, _: Option<&usize>| {
            t.lock().unwrap().push(std::thread::current().id());
            if l.len() == hold {
                let mut open = g.0.lock().unwrap();
                while !*open {
                    open = g.1.wait(open).unwrap();
                }
            }
            l.len()
        };
        (build, gate, threads)
    }

    fn open(gate: &(Mutex<bool>, Condvar)) {
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
    }

    fn endpointer() -> (tokio::runtime::Runtime, Arc<DefaultEndpointer<u16>>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ep = {
            let _rt = rt.enter();
            Arc::new(DefaultEndpointer::new(
                &InstanceCache::new(),
                |i: &Instance| -> Result<u16, BoxError> { Ok(i.port()) },
            ))
        };
        (rt, ep)
    }

    fn set(n: u16) -> Event {
        Event::instances(
            (1..=n)
                .map(|p| Instance::new("10.0.0.1", p))
                .collect::<Vec<_>>(),
        )
    }

    fn value(c: Current<usize, u16>) -> Result<usize, usize> {
        match c {
            Current::View(v) => Ok(v.value),
            Current::Fallback(s) => Err(s.all().len()),
        }
    }

    /// Regression (issue 9, item 10): the first pick after an update built the table on its
    /// own thread (a stall of 100+ ms at 10 000 endpoints). Now the pick returns the previous
    /// table at once and the table is built on another thread.
    #[test]
    fn table_rebuild_runs_off_the_picking_thread() {
        let (_rt, ep) = endpointer();
        ep.apply(set(1));
        let (build, gate, threads) = gated_build(2);
        let viewed = Viewed::new(&ep, true, build);
        ep.apply(set(2));
        // The picking thread is never held by the (gated) build: it gets the previous table.
        assert_eq!(value(viewed.get(&ep)), Ok(1));
        assert_eq!(value(viewed.get(&ep)), Ok(1), "still the previous table");
        // The rebuild thread has started (and is held by the gate).
        while threads.lock().unwrap().len() < 2 {
            std::thread::yield_now();
        }
        assert_eq!(value(viewed.get(&ep)), Ok(1), "still the previous table");
        open(&gate);
        viewed.refresh(&ep);
        assert_eq!(value(viewed.get(&ep)), Ok(2));
        let threads = threads.lock().unwrap();
        assert_eq!(
            threads.len(),
            2,
            "built once at construction, once after the update"
        );
        assert_ne!(
            threads[1],
            std::thread::current().id(),
            "not built by the picker"
        );
    }

    /// Regression (issue 9, item 10): while the first table of a non-empty set was being
    /// built, pickers on other threads read the previous, empty table and failed with "no
    /// endpoints". Now they pick from the new set directly.
    #[test]
    fn picks_during_the_first_build_use_the_new_set() {
        let (_rt, ep) = endpointer();
        let (build, gate, _) = gated_build(3);
        let viewed = Viewed::new(&ep, true, build);
        ep.apply(set(3));
        assert_eq!(
            value(viewed.get(&ep)),
            Err(3),
            "a simple pick over the new set"
        );
        open(&gate);
        viewed.refresh(&ep);
        assert_eq!(value(viewed.get(&ep)), Ok(3));
        // An update to an empty set is reported at once, not hidden behind the old table.
        let (build, gate, _) = gated_build(0);
        let viewed = Viewed::new(&ep, true, build);
        ep.apply(set(0));
        assert_eq!(value(viewed.get(&ep)), Err(0));
        open(&gate);
    }

    #[test]
    fn inline_rebuilds_do_not_block_other_pickers() {
        let (_rt, ep) = endpointer();
        ep.apply(set(1));
        let (build, gate, threads) = gated_build(2);
        let viewed = Arc::new(Viewed::new(&ep, false, build));
        ep.apply(set(2));
        // One thread starts the inline rebuild and is held inside it.
        let rebuilder = {
            let (viewed, ep) = (viewed.clone(), ep.clone());
            std::thread::spawn(move || value(viewed.get(&ep)))
        };
        // Wait until it is inside the build (so it holds the rebuild lock). Probing the lock
        // with `try_lock` instead could take it at the very moment the rebuilder tried, which
        // then served the previous view without rebuilding, and this loop spun for ever.
        let id = rebuilder.thread().id();
        while !threads.lock().unwrap().contains(&id) {
            std::thread::yield_now();
        }
        // Another picker meanwhile gets the previous view instead of waiting. (A deadlock
        // would hang the test; nothing is timed.)
        assert_eq!(value(viewed.get(&ep)), Ok(1), "the previous view");
        open(&gate);
        assert_eq!(rebuilder.join().unwrap(), Ok(2));
        assert_eq!(value(viewed.get(&ep)), Ok(2), "rebuilt once");
    }

    #[test]
    fn fast_clock_is_monotonic_and_agrees_with_instant() {
        let clock = Clock::fast();
        // Each try pairs adjacent reads of both clocks at both ends of a 20 ms span; a
        // preemption between two paired reads (this box has 2 loaded cores) skews one try,
        // so the best of five is judged. The check is the ratio, not the time taken.
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let (i0, c0) = (std::time::Instant::now(), clock.now());
            let mut last = c0;
            loop {
                let now = clock.now();
                assert!(now >= last, "went backwards: {now} < {last}");
                last = now;
                if i0.elapsed() >= std::time::Duration::from_millis(20) {
                    break;
                }
            }
            let (i1, c1) = (std::time::Instant::now(), clock.now());
            let ratio = (c1 - c0) as f64 / i1.duration_since(i0).as_nanos() as f64;
            if (ratio - 1.0).abs() < (best - 1.0).abs() {
                best = ratio;
            }
        }
        assert!((0.95..1.05).contains(&best), "{clock:?}: ratio {best}");
        // A second call reuses the calibration.
        assert_eq!(format!("{:?}", Clock::fast()), format!("{clock:?}"));
    }
}

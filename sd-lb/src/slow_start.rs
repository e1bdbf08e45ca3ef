//! Slow start: an endpoint that has just appeared gets a share of the picks that ramps up
//! over a window, so a cold process (JIT warm-up, empty caches, lazy connections) is not
//! flooded the moment discovery announces it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::Guard;
use sd_core::{Endpoint, Snapshot};

use crate::balancer::{
    pick_avoiding, thread_random, unit, value_ptr as ptr, Balancer, Clock, Picked, Request,
};
use crate::derived::{Derived, PerSnapshot};
use crate::error::{InvalidOption, LbError};

/// Options of [`SlowStart`] (Envoy's `slow_start_config`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStartConfig {
    /// How long a new endpoint's share ramps up (must be more than zero).
    pub window: Duration,
    /// The shape of the ramp: the share factor at time `t` into the window is
    /// `(t / window)^(1 / aggression)`. 1.0 (the default) is linear; above 1 the share
    /// climbs fast at first, below 1 it stays low longer. Finite and more than zero.
    pub aggression: f64,
    /// The factor never goes below this percentage (default 10, as Envoy), so a new
    /// endpoint gets some traffic from the start. 0 to 100.
    pub min_weight_percent: f64,
}

impl SlowStartConfig {
    /// A linear ramp over `window`, from 10 %.
    pub fn new(window: Duration) -> Self {
        SlowStartConfig {
            window,
            aggression: 1.0,
            min_weight_percent: 10.0,
        }
    }

    /// Sets [`aggression`](SlowStartConfig::aggression).
    pub fn aggression(mut self, aggression: f64) -> Self {
        self.aggression = aggression;
        self
    }

    /// Sets [`min_weight_percent`](SlowStartConfig::min_weight_percent).
    pub fn min_weight_percent(mut self, percent: f64) -> Self {
        self.min_weight_percent = percent;
        self
    }

    fn check(&self) -> Result<(), InvalidOption> {
        if self.window.is_zero() {
            return Err(InvalidOption::new(
                "slow start window",
                "must be more than zero (leave slow start out to turn it off)",
            ));
        }
        if !(self.aggression.is_finite() && self.aggression > 0.0) {
            return Err(InvalidOption::new(
                "slow start aggression",
                format!(
                    "{} given; must be finite and more than 0 (1.0 is linear)",
                    self.aggression
                ),
            ));
        }
        if !(0.0..=100.0).contains(&self.min_weight_percent) {
            return Err(InvalidOption::new(
                "slow start min_weight_percent",
                format!("{} given; must be 0 to 100", self.min_weight_percent),
            ));
        }
        Ok(())
    }
}

/// Wraps any [`Balancer`] with slow start: an endpoint that discovery adds gets a share of
/// the picks that ramps up over [`window`](SlowStartConfig::window), as Envoy's slow start
/// mode does.
///
/// **The factor.** `t` after an endpoint was first seen, its share is scaled by
/// `max(min_weight_percent / 100, (t / window)^(1 / aggression))` (Envoy's formula); from
/// `window` on it is 1 and the endpoint is like any other.
///
/// **How.** The inner balancer picks as usual; when it picks an endpoint in slow start, the
/// pick is kept with probability `factor`, and otherwise made again with that endpoint
/// avoided (at most three more picks; the fourth is kept whatever it is). So the endpoint gets
/// about `factor ×` the share the inner balancer would give it: an endpoint whose fair share
/// is `1/n` gets between `factor / n` (random) and `factor / (n − 1 + factor)`, the share of
/// its weight scaled by `factor` (round robin, whose rotation a rejected turn moves on).
/// This works the same way
/// over every balancer ([`RoundRobin`](crate::RoundRobin), [`Weighted`](crate::Weighted),
/// [`Random`](crate::Random), [`P2c`](crate::P2c)), with health preferences and with
/// [`Outlier`](crate::Outlier) ejection (in either order: the avoided endpoints of the
/// request are passed on). A rejected pick is released without a measurement (as
/// [`Outcome::Untracked`](crate::Outcome::Untracked)), so P2C's load and latency figures are
/// not skewed by it. Over [`ConsistentHash`](crate::ConsistentHash) it moves the keys of a
/// new endpoint to their fall-through owners while it warms up, which usually defeats the
/// purpose of hashing: leave it out there.
///
/// **Which endpoints.** Endpoints are keyed by their instance key (`(addr, id)`), and the
/// first time a key is seen is kept across endpoint-set updates (a weight or health change
/// does not restart the ramp). Endpoints of the **first non-empty set** the wrapper sees are
/// *not* slow-started (Envoy's rule: only hosts added after the first update), so a client
/// that starts does not ramp its whole fleet. An endpoint that leaves and comes back is new
/// again. The first set is the one present when the wrapper is built, or, if that is
/// empty (discovery has not answered yet), the first non-empty one. An empty set (e.g. a deploy that briefly had no instances) leaves the record as it
/// is. "First seen" is the first pick after the update that brought the endpoint (picks
/// notice updates; without picks there is nothing to ramp).
///
/// **Cost.** A pick adds one `arc-swap` load and the inner balancer's
/// [`snapshot`](Balancer::snapshot) (to notice updates); while some endpoint is in slow
/// start, one clock read and a binary search of the list of warming endpoints, and for a
/// rejected pick another inner pick. No allocation, except on the first pick after an
/// update (the warming list is rebuilt: one hash-map update per endpoint) and once when the
/// last ramp ends. Times come from the [`Clock`] (`Clock::tokio()` for tests under
/// `tokio::time::pause`).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use sd_core::{BoxError, DefaultEndpointer, Event, Instance, InstanceCache};
/// use sd_lb::{Balancer, Clock, RoundRobin, SlowStart, SlowStartConfig};
///
/// let ep = Arc::new(DefaultEndpointer::new(&InstanceCache::new(), |i: &Instance| -> Result<u16, BoxError> { Ok(i.port()) }));
/// let set = |n: u16| Event::instances((1..=n).map(|p| Instance::new("10.0.0.1", p)).collect::<Vec<_>>());
/// ep.apply(set(3));
/// let lb = SlowStart::new(RoundRobin::new(ep.clone()), SlowStartConfig::new(Duration::from_secs(60)))
///     .unwrap()
///     .clock(Clock::tokio());
/// lb.pick().unwrap(); // the first set: not slow-started
/// ep.apply(set(4)); // port 4 joins
/// lb.pick().unwrap();
/// let new = lb.snapshot().all().iter().find(|e| ***e == 4).unwrap().clone();
/// assert_eq!(lb.factor(&new), 0.1); // min_weight_percent
/// tokio::time::advance(Duration::from_secs(30)).await;
/// assert!((lb.factor(&new) - 0.5).abs() < 1e-6); // linear: half-way, half the share
/// tokio::time::advance(Duration::from_secs(30)).await;
/// assert_eq!(lb.factor(&new), 1.0);
/// # });
/// ```
pub struct SlowStart<B, E: 'static> {
    inner: B,
    window: u64,
    /// `1 / aggression`.
    exponent: f64,
    min_factor: f64,
    clock: Clock,
    warm: PerSnapshot<Warming, Book, E>,
}

/// The endpoints in slow start in one snapshot.
struct Warming {
    /// Value pointer and first-seen time (clock nanoseconds) of each endpoint in slow start,
    /// sorted by pointer.
    list: Box<[(usize, u64)]>,
    /// Every ramp of `list` ends by this time.
    until: u64,
}

impl Warming {
    /// When the endpoint whose value is at `p` was first seen, if it is in slow start
    /// (a binary search: `O(log warming)`).
    #[inline]
    fn first_seen(&self, p: usize) -> Option<u64> {
        self.list
            .binary_search_by_key(&p, |&(q, _)| q)
            .ok()
            .map(|i| self.list[i].1)
    }
}

/// First-seen times by instance key, kept across updates.
#[derive(Default)]
struct Book {
    /// A non-empty set was seen (its endpoints are not slow-started).
    started: bool,
    /// `None`: in the first set (never slow-started).
    seen: HashMap<(String, String), Option<u64>>,
}

/// Picks redrawn at most, after a rejected one.
const REDRAWS: usize = 3;

impl<B: Balancer<E>, E: Send + Sync + 'static> SlowStart<B, E> {
    /// Slow start over `inner` (see [`SlowStart`]); an error names an option out of range.
    pub fn new(inner: B, config: SlowStartConfig) -> Result<Self, InvalidOption> {
        config.check()?;
        let lb = SlowStart {
            inner,
            window: u64::try_from(config.window.as_nanos()).unwrap_or(u64::MAX),
            exponent: 1.0 / config.aggression,
            min_factor: config.min_weight_percent / 100.0,
            clock: Clock::default(),
            warm: PerSnapshot::new(
                Warming {
                    list: Box::new([]),
                    until: 0,
                },
                Book::default(),
            ),
        };
        // The set present now is the first set (when it is not empty).
        let _ = lb.update(lb.warm.load(), lb.inner.snapshot(), 0);
        Ok(lb)
    }

    /// The clock for first-seen times (e.g. [`Clock::tokio`] in tests). Set it before use.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The inner balancer.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The factor that scales `endpoint`'s share now: 1.0 unless it is in slow start (as of
    /// the last pick: an update is noticed by the next pick).
    pub fn factor(&self, endpoint: &Endpoint<E>) -> f64 {
        match self.warm.load().value.first_seen(ptr(endpoint)) {
            Some(first) => self.ramp(first, self.clock.now()),
            None => 1.0,
        }
    }

    /// How many endpoints are in slow start now.
    pub fn warming(&self) -> usize {
        let now = self.clock.now();
        self.warm
            .load()
            .value
            .list
            .iter()
            .filter(|&&(_, first)| now.saturating_sub(first) < self.window)
            .count()
    }

    /// The factor of an endpoint first seen at `first`, at `now`.
    #[inline]
    fn ramp(&self, first: u64, now: u64) -> f64 {
        let t = now.saturating_sub(first);
        if t >= self.window {
            return 1.0;
        }
        let x = t as f64 / self.window as f64;
        let f = if self.exponent == 1.0 {
            x
        } else {
            x.powf(self.exponent)
        };
        f.max(self.min_factor)
    }

    /// The warming list of the inner balancer's current snapshot, and the time now (0 when
    /// nothing warms: the clock is not read).
    #[inline]
    fn current(&self) -> (Guard<Arc<Derived<Warming, E>>>, u64) {
        let warm = self.warm.load();
        let snap = self.inner.snapshot();
        let same = warm.is_of(&snap);
        if same && warm.value.list.is_empty() {
            return (warm, 0);
        }
        let now = self.clock.now();
        if same && now < warm.value.until {
            return (warm, now);
        }
        (self.update(warm, snap, now), now)
    }

    /// Derives the warming list of `snap` (an update, or every ramp has ended).
    #[cold]
    fn update(
        &self,
        warm: Guard<Arc<Derived<Warming, E>>>,
        snap: Snapshot<E>,
        now: u64,
    ) -> Guard<Arc<Derived<Warming, E>>> {
        self.warm
            .derive(warm, snap, |book, list| book.update(list, now, self.window))
    }
}

impl Book {
    /// Records the first-seen times of `list` (seen at `now` unless known, or in the first
    /// set) and returns its endpoints in slow start.
    fn update<E>(&mut self, list: &[Endpoint<E>], now: u64, window: u64) -> Warming {
        if !list.is_empty() {
            let first = !self.started;
            self.started = true;
            let mut seen = HashMap::with_capacity(list.len());
            for e in list {
                let (addr, id) = e.instance().key();
                let key = (addr.to_owned(), id.to_owned());
                let at = match self.seen.get(&key) {
                    Some(&at) => at,
                    None if first => None,
                    None => Some(now),
                };
                seen.insert(key, at);
            }
            self.seen = seen;
        }
        let mut until = 0;
        let mut warming: Box<[(usize, u64)]> = list
            .iter()
            .filter_map(|e| {
                let (addr, id) = e.instance().key();
                // A borrowed lookup would need the key owned; this runs once per update.
                let at = self
                    .seen
                    .get(&(addr.to_owned(), id.to_owned()))
                    .copied()
                    .flatten()?;
                let end = at.saturating_add(window);
                (end > now).then(|| {
                    until = until.max(end);
                    (ptr(e), at)
                })
            })
            .collect();
        warming.sort_unstable();
        Warming {
            list: warming,
            until,
        }
    }
}

impl<B, E> Balancer<E> for SlowStart<B, E>
where
    B: Balancer<E>,
    E: Send + Sync + 'static,
{
    fn pick(&self) -> Result<Endpoint<E>, LbError> {
        if self.current().0.value.list.is_empty() {
            return self.inner.pick();
        }
        self.pick_with(&Request::new()).map(Picked::into_endpoint)
    }

    fn pick_with(&self, request: &Request<'_, E>) -> Result<Picked<E>, LbError> {
        let (warm, now) = self.current();
        let warm = &warm.value;
        if warm.list.is_empty() {
            return self.inner.pick_with(request);
        }
        let mut rejected = [0usize; REDRAWS];
        let mut n = 0;
        loop {
            let picked = pick_avoiding(&self.inner, request, &rejected[..n])?;
            if n == REDRAWS {
                return Ok(picked);
            }
            let p = ptr(picked.endpoint());
            let Some(first) = warm.first_seen(p) else {
                return Ok(picked);
            };
            let f = self.ramp(first, now);
            if f >= 1.0 || unit(thread_random()) < f {
                return Ok(picked);
            }
            // Released without a measurement: not a request.
            drop(picked.into_endpoint());
            rejected[n] = p;
            n += 1;
        }
    }

    fn snapshot(&self) -> Snapshot<E> {
        self.inner.snapshot()
    }

    fn panic_threshold(&self) -> crate::PanicThreshold {
        self.inner.panic_threshold()
    }
}

impl<B: std::fmt::Debug, E: 'static> std::fmt::Debug for SlowStart<B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlowStart")
            .field("inner", &self.inner)
            .field("window", &Duration::from_nanos(self.window))
            .field("aggression", &(1.0 / self.exponent))
            .field("min_factor", &self.min_factor)
            .field("warming", &self.warm.load().value.list.len())
            .finish()
    }
}

//! Power of two choices with a pluggable load: in-flight requests or peak-EWMA latency.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sd_core::{Endpoint, Endpointer, Snapshot};

use crate::balancer::{
    bounded, endpoints_of, panic_threshold_builder, pick_fallback, redraw_accepted, splitmix,
    thread_random, Balancer, Cands, Clock, Current, Feedback, Outcome, PanicThreshold, Picked,
    Request, Viewed,
};
use crate::error::LbError;

/// Two peak-EWMA costs closer than this ratio are a tie (see the comparison in `pick_with`).
const TIE: f64 = 0.999;

/// The load a [`P2c`] balancer compares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Requests in flight (tower's `PendingRequests`, least-request).
    PendingRequests,
    /// Peak-EWMA latency × (requests in flight + 1), as in Finagle and tower's `PeakEwma`.
    ///
    /// A latency above the estimate replaces it at once (the *peak*); lower ones pull it down
    /// with weight `1 - exp(-elapsed / decay)`. When reading, the estimate decays toward zero
    /// over `decay`, so an endpoint that stopped getting traffic is probed again.
    PeakEwma {
        /// The decay time constant (tower's example uses 10 s).
        decay: Duration,
        /// The estimate of an endpoint never measured.
        default_rtt: Duration,
    },
}

impl Load {
    /// [`Load::PeakEwma`] with tower's defaults: decay 10 s, default RTT 30 ms.
    pub fn peak_ewma() -> Self {
        Load::PeakEwma {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
        }
    }
}

/// Load statistics of one endpoint, shared by all the picks made on it.
#[derive(Debug)]
pub struct EndpointLoad {
    in_flight: AtomicU64,
    /// The peak-EWMA estimate in nanoseconds, as `f64` bits.
    cost: AtomicU64,
    /// When `cost` was last updated, on `clock`.
    stamp: AtomicU64,
    clock: Clock,
    /// The decay constant in nanoseconds; 0 for in-flight load.
    decay_ns: f64,
    /// `1 / decay_ns` (0 for in-flight load).
    inv_decay: f64,
}

impl EndpointLoad {
    fn new(load: Load, clock: Clock) -> Self {
        let (cost, decay_ns) = match load {
            Load::PendingRequests => (0.0, 0.0),
            Load::PeakEwma { decay, default_rtt } => (
                default_rtt.as_nanos() as f64,
                (decay.as_nanos() as f64).max(1.0),
            ),
        };
        EndpointLoad {
            in_flight: AtomicU64::new(0),
            cost: AtomicU64::new(f64::to_bits(cost)),
            stamp: AtomicU64::new(clock.now()),
            clock,
            decay_ns,
            inv_decay: if decay_ns > 0.0 { 1.0 / decay_ns } else { 0.0 },
        }
    }

    /// Requests picked on this endpoint and not finished yet.
    ///
    /// Never wraps: a completion reported without its pick (a hand-made
    /// [`Picked::tracked`]) while none is in flight is ignored.
    pub fn pending_requests(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The current peak-EWMA latency estimate (before read-time decay).
    pub fn rtt_estimate(&self) -> Duration {
        Duration::from_nanos(f64::from_bits(self.cost.load(Ordering::Relaxed)) as u64)
    }

    /// The peak-EWMA cost of one more request on an endpoint of `weight`: the decayed
    /// latency estimate × (1 + requests in flight ÷ weight), as `× weight` (cross-multiplied
    /// by the caller: `(in flight + weight) × latency`). With weight 1 it is Finagle's
    /// latency × (in flight + 1).
    #[inline]
    fn ewma_cost(&self, now: u64, weight: f64) -> f64 {
        let cost = f64::from_bits(self.cost.load(Ordering::Relaxed));
        let elapsed = now.saturating_sub(self.stamp.load(Ordering::Relaxed)) as f64;
        let decayed = cost * exp_neg(elapsed * self.inv_decay);
        decayed * (self.pending_requests() as f64 + weight)
    }

    fn observe(&self, now: u64, rtt: f64) {
        let _ = self
            .cost
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let cost = f64::from_bits(bits);
                let next = if rtt > cost {
                    rtt
                } else {
                    let elapsed = now.saturating_sub(self.stamp.load(Ordering::Relaxed)) as f64;
                    let w = exp_neg(elapsed * self.inv_decay);
                    cost * w + rtt * (1.0 - w)
                };
                Some(f64::to_bits(next))
            });
        self.stamp.fetch_max(now, Ordering::Relaxed);
    }
}

/// `e^(-x)` for `x ≥ 0` (1 for negative or NaN input), to about 1e-7 relative: `2^(-y)` split
/// into an exponent and a degree-7 polynomial. Several times cheaper than `f64::exp`, which
/// matters on the pick path (two calls per pick).
#[inline]
pub(crate) fn exp_neg(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return 1.0;
    }
    if x < 1e-4 {
        // The usual case on the pick path (microseconds against a decay of seconds); the
        // error of 1 - x is below x²/2 < 5e-9.
        return 1.0 - x;
    }
    if x > 700.0 {
        return 0.0;
    }
    let y = x * std::f64::consts::LOG2_E;
    let i = y.round();
    let t = -(y - i) * std::f64::consts::LN_2; // in [-ln 2 / 2, ln 2 / 2]
    let p = 1.0
        + t * (1.0
            + t * (1.0 / 2.0
                + t * (1.0 / 6.0
                    + t * (1.0 / 24.0
                        + t * (1.0 / 120.0 + t * (1.0 / 720.0 + t * (1.0 / 5040.0)))))));
    p * f64::from_bits(((1023 - i as i64) as u64) << 52)
}

impl<E> Feedback<E> for EndpointLoad {
    #[inline]
    fn done(&self, _endpoint: &Endpoint<E>, start: u64, outcome: Outcome) {
        // Saturating: an unmatched completion must not wrap the count to 2^64 - 1.
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        // An untracked pick (`Balancer::pick`) made no request: its "latency" is the time
        // between two lines of code and would drag the estimate toward zero.
        if self.decay_ns > 0.0 && outcome != Outcome::Untracked {
            let now = self.clock.now();
            self.observe(now, now.saturating_sub(start) as f64);
        }
    }
}

/// Reads the endpoint's shared record (the line its reference count is on), so that the
/// clone of the winner finds it in cache.
#[inline(always)]
fn touch<E>(endpoint: &Endpoint<E>) {
    std::hint::black_box(Arc::as_ptr(endpoint.value_arc()));
}

#[inline]
fn accepted_or_redraw<E>(
    list: &[Endpoint<E>],
    cands: Cands<'_>,
    i: usize,
    request: &Request<'_, E>,
    r: u64,
) -> usize {
    if request.has_avoid() && request.avoids(&list[i]) {
        redraw_accepted(list, cands, i, request, r)
    } else {
        i
    }
}

/// A uniform draw among the accepted candidates other than `i` (the second choice when a
/// redraw landed on the first); `i` when there is none.
#[cold]
fn other_than<E: Send + Sync>(
    list: &[Endpoint<E>],
    cands: Cands<'_>,
    i: usize,
    request: &Request<'_, E>,
    r: u64,
) -> usize {
    let first = &list[i];
    let avoid = |e: &Endpoint<E>| request.avoids(e) || std::ptr::eq(e, first);
    redraw_accepted(list, cands, i, &Request::new().avoid(&avoid), r)
}

/// The two choices of weighted P2C: the first in proportion to weight, the second in
/// proportion to weight among the others (without replacement); each replaced by a weighted
/// redraw among the accepted endpoints when the request avoids it, and kept distinct while
/// two endpoints of positive weight are accepted. Zero-weight endpoints are never drawn.
#[inline]
fn weighted_pair<E>(
    list: &[Endpoint<E>],
    cands: Cands<'_>,
    s: &Sampler,
    request: &Request<'_, E>,
    r: u64,
) -> (usize, usize) {
    let ki = s.draw(r);
    if s.positive < 2 {
        let i = cands.at(ki);
        return (i, i);
    }
    let kj = s.draw_other(splitmix(r), ki);
    let (mut i, mut j) = (cands.at(ki), cands.at(kj));
    if request.has_avoid() {
        if request.avoids(&list[i]) {
            i = redraw_weighted(list, cands, s, i, None, request, splitmix(r ^ 1));
        }
        if request.avoids(&list[j]) || j == i {
            j = redraw_weighted(list, cands, s, j, Some(i), request, splitmix(r ^ 2));
        }
    }
    (i, j)
}

/// One table entry: the endpoint value (weakly, for matching across updates), its load and
/// its weight.
struct Slot<E> {
    value: Weak<E>,
    load: Arc<EndpointLoad>,
    /// The weight the load is divided by: the instance's weight (1 for every endpoint when
    /// weights are ignored or all candidates weigh 0).
    weight: u64,
}

/// The statistics table of one snapshot, and the weighted sampler when the candidates'
/// weights differ.
struct Table<E> {
    slots: Vec<Slot<E>>,
    /// `None` when every candidate has the same weight (or weights are ignored): both draws
    /// are then uniform and loads compare directly, as in unweighted P2C.
    sampler: Option<Sampler>,
}

/// Draws candidates in proportion to their weights: cumulative weights over the candidates
/// (in [`Cands`] order) and a search in them, no allocation.
///
/// The search starts from a guide table (an indexed search): the cumulative range is cut
/// into buckets of `2^shift` units, about one per candidate, and `guide[b]` is the candidate
/// that holds the first unit of bucket `b`. A draw `x` lies in bucket `x >> shift`, so its
/// candidate is between `guide[b]` and `guide[b + 1]`: usually the same or the next one, a
/// binary search over that short range otherwise. Two memory reads per draw instead of a
/// binary search over the whole table (14 dependent reads at 10 000 candidates, most of them
/// cache misses once the table outgrows the first-level cache). The result is exactly the
/// binary search's.
struct Sampler {
    /// `cum[k]` is the sum of the weights of candidates `0..=k`.
    cum: Box<[u64]>,
    /// `guide[b]` is the candidate holding `b << shift`; one more entry, the last candidate.
    guide: Box<[u32]>,
    shift: u32,
    /// Candidates of positive weight (zero-weight ones are never drawn).
    positive: usize,
}

impl Sampler {
    /// The weights of the candidates, or `None` when they are all equal.
    fn new(weights: &[u64]) -> Option<Self> {
        if weights.windows(2).all(|w| w[0] == w[1]) {
            return None;
        }
        let mut sum = 0u64;
        let cum: Box<[u64]> = weights
            .iter()
            .map(|w| {
                sum = sum.saturating_add(*w);
                sum
            })
            .collect();
        // Buckets of 2^shift units, wider than the mean weight (when it is at least 1):
        // between n / 2 and n + 1 buckets.
        let n = cum.len() as u64;
        let shift = (sum / n.max(1)).checked_ilog2().map_or(0, |l| l + 1);
        let buckets = (sum >> shift) as usize + 1;
        let mut guide = Vec::with_capacity(buckets + 1);
        let mut k = 0usize;
        for b in 0..buckets as u64 {
            let x = b << shift;
            while k + 1 < cum.len() && cum[k] <= x {
                k += 1;
            }
            guide.push(k as u32);
        }
        guide.push((cum.len() - 1) as u32);
        Some(Sampler {
            cum,
            guide: guide.into(),
            shift,
            positive: weights.iter().filter(|w| **w > 0).count(),
        })
    }

    #[inline]
    fn total(&self) -> u64 {
        self.cum[self.cum.len() - 1]
    }

    /// The weight of candidate `k`.
    #[inline]
    fn weight(&self, k: usize) -> u64 {
        self.cum[k] - if k == 0 { 0 } else { self.cum[k - 1] }
    }

    /// The candidate whose cumulative range holds `x` (`x < total`): the first `k` with
    /// `cum[k] > x`.
    #[inline]
    fn at(&self, x: u64) -> usize {
        let b = (x >> self.shift) as usize;
        let lo = self.guide[b] as usize;
        if self.cum[lo] > x {
            return lo;
        }
        let hi = self.guide[b + 1] as usize;
        lo + 1 + self.cum[lo + 1..=hi].partition_point(|&c| c <= x)
    }

    /// A candidate drawn with probability weight / total.
    #[inline]
    fn draw(&self, r: u64) -> usize {
        self.at(((r as u128 * self.total() as u128) >> 64) as u64)
    }

    /// A candidate other than `k` (of positive weight), drawn with probability
    /// weight / (total - weight of `k`): the second choice, without replacement.
    /// Needs two candidates of positive weight.
    #[inline]
    fn draw_other(&self, r: u64, k: usize) -> usize {
        let wk = self.weight(k);
        let mut x = ((r as u128 * (self.total() - wk) as u128) >> 64) as u64;
        if x >= self.cum[k] - wk {
            x += wk;
        }
        self.at(x)
    }
}

/// The endpoint to use in place of candidate index `start` (in the list), which the request
/// avoids or which duplicates the other choice (`skip`): up to
/// [`REDRAWS`](crate::balancer::REDRAWS) weighted draws, then a
/// weighted choice among the accepted candidates of positive weight other than `skip`;
/// `start` when there is none. No allocation.
#[cold]
fn redraw_weighted<E>(
    list: &[Endpoint<E>],
    cands: Cands<'_>,
    s: &Sampler,
    start: usize,
    skip: Option<usize>,
    request: &Request<'_, E>,
    mut r: u64,
) -> usize {
    let ok = |i: usize| Some(i) != skip && !request.avoids(&list[i]);
    for _ in 0..crate::balancer::REDRAWS {
        r = splitmix(r);
        let i = cands.at(s.draw(r));
        if ok(i) {
            return i;
        }
    }
    let accepted: u64 = (0..cands.len())
        .filter(|&k| ok(cands.at(k)))
        .map(|k| s.weight(k))
        .sum();
    if accepted == 0 {
        return start;
    }
    let mut x = ((splitmix(r) as u128 * accepted as u128) >> 64) as u64;
    for k in 0..cands.len() {
        if !ok(cands.at(k)) {
            continue;
        }
        let w = s.weight(k);
        if x < w {
            return cands.at(k);
        }
        x -= w;
    }
    start
}

/// Power of two choices: draw two distinct endpoints at random, take the less loaded per
/// unit of weight.
///
/// The load is pluggable ([`Load`]): requests in flight, or peak-EWMA latency. It is fed
/// back through the [`Picked`] guard returned by [`pick_with`](Balancer::pick_with): a guard
/// dropped without a report still ends its request. A pick takes one `arc-swap` load (the
/// endpoints with their statistics, checked against the endpointer's version number), no
/// lock and no allocation.
///
/// **Weights.** [`Instance::weight`](sd_core::Instance::weight) counts, read as capacity:
/// an endpoint of weight `w` is taken to serve `w` requests at once. The first choice is
/// drawn in proportion to weight, the second in proportion to weight among the others
/// (without replacement, so the two are always distinct), and the one with the lower load
/// per unit of weight wins, a tie going to the first: requests in flight ÷ weight, or for
/// peak EWMA latency × (1 + requests in flight ÷ weight). Idle endpoints of equal latency
/// thus get picks in proportion to their weights, under load each endpoint's requests in
/// flight tend to its share of the weight, and a slower endpoint still loses to a faster
/// one whatever their weights. An endpoint of weight 0 is never picked while one of positive weight can be;
/// when every candidate weighs 0, all count as 1. When all candidates have the same weight
/// (the usual case) both draws are uniform, as in unweighted P2C, at the same cost; with
/// different weights a draw looks its candidate up in a guide table over the cumulative
/// weights (two reads; a binary search within one bucket, `O(log N)` at worst, when a few
/// weights are far above the mean).
/// [`ignore_weights`](P2c::ignore_weights) restores plain P2C.
///
/// **State across updates.** Each endpoint's statistics are keyed by the endpoint itself
/// (its value, which the endpointer keeps while the instance stays, also when its weight,
/// tags or health change), not by its position in the list: an update that inserts or
/// removes other endpoints, or changes this one's weight, keeps its in-flight count and
/// latency estimate. New endpoints start from zero requests and the default RTT.
///
/// After an update the statistics table is rebuilt on a background thread (started by the
/// first pick that sees the update); picks meanwhile use the previous table, or, when that
/// has nothing to serve, a uniform pick over the new set that is not load-tracked.
///
/// Health (see [`Balancer`]): when some endpoints are [`Passing`](sd_core::Health::Passing)
/// and some are not (and no fewer pass than the [panic
/// threshold](crate::PanicThreshold)), both choices are drawn among the passing ones.
///
/// ```
/// use std::sync::Arc;
/// use sd_core::{FixedEndpointer, Instance};
/// use sd_lb::{Balancer, P2c, Request};
/// let ep = Arc::new(FixedEndpointer::new([(Instance::new("10.0.0.1", 80), 'a'), (Instance::new("10.0.0.2", 80), 'b')]));
/// let p2c = P2c::pending_requests(ep);
/// let first = p2c.pick_with(&Request::new()).unwrap();   // one request in flight
/// let second = p2c.pick_with(&Request::new()).unwrap();  // so the other endpoint is chosen
/// assert_ne!(**first.endpoint(), **second.endpoint());
/// ```
pub struct P2c<P, E: 'static> {
    endpointer: P,
    load: Load,
    clock: Clock,
    weights: bool,
    view: Viewed<Table<E>, E>,
    seeded: Option<AtomicU64>,
}

fn build_table<E>(
    list: &[Endpoint<E>],
    preferred: Option<&[u32]>,
    old: Option<&Table<E>>,
    load: Load,
    clock: Clock,
    weights: bool,
) -> Table<E> {
    let previous: HashMap<*const E, &Arc<EndpointLoad>> = old
        .into_iter()
        .flat_map(|t| &t.slots)
        .filter(|s| s.value.strong_count() > 0)
        .map(|s| (s.value.as_ptr(), &s.load))
        .collect();
    let cands = Cands::new(list.len(), preferred);
    // Weight 0 among the candidates means "only if nothing else": when every candidate
    // weighs 0, they all count as 1.
    let weight_of = |e: &Endpoint<E>| {
        if weights {
            e.instance().weight() as u64
        } else {
            1
        }
    };
    let all_zero = (0..cands.len()).all(|k| weight_of(&list[cands.at(k)]) == 0);
    let weight_of = |e: &Endpoint<E>| if all_zero { 1 } else { weight_of(e) };
    let slots = list
        .iter()
        .map(|e| {
            let ptr = Arc::as_ptr(e.value_arc());
            let load = previous
                .get(&ptr)
                .map(|l| (*l).clone())
                .unwrap_or_else(|| Arc::new(EndpointLoad::new(load, clock)));
            Slot {
                value: Arc::downgrade(e.value_arc()),
                load,
                weight: weight_of(e),
            }
        })
        .collect::<Vec<_>>();
    let cand_weights: Vec<u64> = (0..cands.len())
        .map(|k| slots[cands.at(k)].weight)
        .collect();
    let sampler = Sampler::new(&cand_weights);
    let mut slots = slots;
    if sampler.is_none() {
        // Equal weights: plain P2C, exactly (the loads compare as with weight 1).
        slots.iter_mut().for_each(|s| s.weight = 1);
    }
    Table { sampler, slots }
}

impl<P: Endpointer<E>, E: Send + Sync + 'static> P2c<P, E> {
    /// P2C comparing `load`.
    ///
    /// Peak EWMA measures latency with [`Clock::fast`] (the first one made in a process
    /// calibrates it, in about 5 ms); change it with [`clock`](P2c::clock).
    pub fn new(endpointer: P, load: Load) -> Self {
        let clock = match load {
            Load::PendingRequests => Clock::std(),
            Load::PeakEwma { .. } => Clock::fast(),
        };
        P2c {
            view: Self::view(&endpointer, load, clock, true),
            endpointer,
            load,
            clock,
            weights: true,
            seeded: None,
        }
    }

    panic_threshold_builder!(view);

    fn view(endpointer: &P, load: Load, clock: Clock, weights: bool) -> Viewed<Table<E>, E> {
        Viewed::new(endpointer, true, move |list, preferred, old| {
            build_table(list, preferred, old, load, clock, weights)
        })
    }

    /// P2C over requests in flight.
    pub fn pending_requests(endpointer: P) -> Self {
        Self::new(endpointer, Load::PendingRequests)
    }

    /// P2C over peak-EWMA latency with tower's defaults ([`Load::peak_ewma`]).
    pub fn peak_ewma(endpointer: P) -> Self {
        Self::new(endpointer, Load::peak_ewma())
    }

    /// The clock for latency measurement (e.g. [`Clock::tokio`] in tests). Statistics start
    /// afresh.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        let next = Self::view(&self.endpointer, self.load, clock, self.weights);
        self.view.replace(next, &self.endpointer);
        self
    }

    /// Ignores [`Instance::weight`](sd_core::Instance::weight): both choices are drawn
    /// uniformly and loads compare directly (P2C as in tower and Finagle). Statistics start
    /// afresh.
    ///
    /// By default weights count (see [`P2c`]); for a set whose weights are all equal the two
    /// behave the same.
    pub fn ignore_weights(mut self) -> Self {
        self.weights = false;
        let next = Self::view(&self.endpointer, self.load, self.clock, false);
        self.view.replace(next, &self.endpointer);
        self
    }

    /// Whether instance weights count (see [`ignore_weights`](P2c::ignore_weights)).
    pub fn honours_weights(&self) -> bool {
        self.weights
    }

    /// Draws from one shared sequence fixed by `seed` instead of a per-thread generator.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seeded = Some(AtomicU64::new(seed));
        self
    }

    /// The load compared.
    pub fn load(&self) -> Load {
        self.load
    }

    #[inline]
    fn random(&self) -> u64 {
        match &self.seeded {
            None => thread_random(),
            Some(s) => splitmix(s.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)),
        }
    }

    /// Brings the statistics table up to date with the endpointer now, on this thread
    /// (waiting for a background rebuild in progress). Picks never need this.
    pub fn refresh(&self) {
        self.view.refresh(&self.endpointer);
    }

    /// The load statistics of `endpoint`, if it is in the current set (the table is brought
    /// up to date first).
    pub fn load_of(&self, endpoint: &Endpoint<E>) -> Option<Arc<EndpointLoad>> {
        let view = self.view.fresh(&self.endpointer);
        let i = view
            .snapshot
            .all()
            .iter()
            .position(|e| Endpoint::same_value(e, endpoint))?;
        Some(view.value.slots[i].load.clone())
    }
}

impl<P, E: 'static> std::fmt::Debug for P2c<P, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2c")
            .field("load", &self.load)
            .field("weights", &self.weights)
            .finish()
    }
}

impl<E, P> Balancer<E> for P2c<P, E>
where
    E: Send + Sync + 'static,
    P: Endpointer<E>,
{
    #[inline]
    fn pick_with(&self, request: &Request<'_, E>) -> Result<Picked<E>, LbError> {
        let view = match self.view.get(&self.endpointer) {
            Current::View(v) => v,
            Current::Fallback(s) => {
                return pick_fallback(
                    &s,
                    self.random(),
                    request,
                    self.weights,
                    self.view.threshold(),
                )
            }
        };
        let list = endpoints_of(&view.snapshot)?;
        let slots = &view.value.slots;
        let cands = view.cands();
        let n = cands.len();
        let now = match self.load {
            Load::PendingRequests => 0,
            Load::PeakEwma { .. } => self.clock.now(),
        };
        let chosen = if n == 1 {
            cands.at(0)
        } else {
            let r = self.random();
            let (i, j) = match &view.value.sampler {
                None => {
                    let i = bounded(r, n);
                    let mut j = bounded(splitmix(r), n - 1);
                    if j >= i {
                        j += 1;
                    }
                    let (i, j) = (cands.at(i), cands.at(j));
                    // An avoided draw is replaced by a uniform draw among the accepted
                    // endpoints, so an ejected endpoint's share spreads evenly; the two
                    // choices stay distinct while two endpoints are accepted.
                    let i = accepted_or_redraw(list, cands, i, request, splitmix(r ^ 1));
                    let mut j = accepted_or_redraw(list, cands, j, request, splitmix(r ^ 2));
                    if j == i {
                        j = other_than(list, cands, i, request, splitmix(r ^ 3));
                    }
                    (i, j)
                }
                Some(s) => weighted_pair(list, cands, s, request, r),
            };
            // Both endpoints are read now, before the loads are compared: at 10 000
            // endpoints each is a cache miss, and issued together they overlap, where the
            // winner's read after the comparison would wait for its own miss.
            touch(&list[i]);
            touch(&list[j]);
            // A tie goes to `i`, itself a (weighted) random draw. Loads are divided by the
            // weights (cross-multiplied: no division, no rounding). In-flight counts are
            // exact: the less loaded wins. Peak-EWMA costs within 0.1 % are a tie, so
            // noise-level differences (the decay of endpoints whose statistics were
            // created nanoseconds apart) cannot starve one endpoint while no real load
            // tells them apart.
            let (wi, wj) = (slots[i].weight.max(1), slots[j].weight.max(1));
            let j_lighter = match self.load {
                Load::PendingRequests => {
                    let (li, lj) = (
                        slots[i].load.pending_requests(),
                        slots[j].load.pending_requests(),
                    );
                    (lj as u128) * (wi as u128) < (li as u128) * (wj as u128)
                }
                Load::PeakEwma { .. } => {
                    // latency × (1 + in flight ÷ weight), cross-multiplied by both weights.
                    let (wi, wj) = (wi as f64, wj as f64);
                    slots[j].load.ewma_cost(now, wj) * wi
                        < slots[i].load.ewma_cost(now, wi) * wj * TIE
                }
            };
            if j_lighter {
                j
            } else {
                i
            }
        };
        let load = &slots[chosen].load;
        load.in_flight.fetch_add(1, Ordering::Relaxed);
        let start = now;
        Ok(Picked::tracked(
            list[chosen].clone(),
            start,
            load.clone() as Arc<dyn Feedback<E>>,
        ))
    }

    fn snapshot(&self) -> Snapshot<E> {
        self.endpointer.endpoints()
    }

    fn panic_threshold(&self) -> PanicThreshold {
        self.view.threshold()
    }
}

#[cfg(test)]
mod tests {
    use super::{exp_neg, splitmix, Sampler};

    /// The guide table finds exactly what a binary search over the cumulative weights finds,
    /// for every kind of weights (equal but for one, zeros, huge, skewed) and every draw,
    /// bucket edges included.
    #[test]
    fn sampler_guide_agrees_with_binary_search() {
        let mut r = 7u64;
        let mut next = || {
            r = splitmix(r);
            r
        };
        let mut sets: Vec<Vec<u64>> = vec![
            vec![1, 2],
            vec![0, 5],
            vec![5, 0, 0, 0, 1],
            vec![1_000_000, 1, 1, 1, 1, 1, 1, 1],
            vec![u32::MAX as u64, 1, u32::MAX as u64],
            vec![u64::MAX / 2, u64::MAX / 2, 3],
            (0..10_000).map(|i| 1 + i % 4).collect(),
        ];
        for _ in 0..200 {
            let n = 2 + (next() % 300) as usize;
            let max = [1, 3, 100, 1 << 20, 1 << 40][(next() % 5) as usize];
            sets.push((0..n).map(|_| next() % (max + 1)).collect());
        }
        for weights in sets {
            let Some(s) = Sampler::new(&weights) else {
                continue;
            };
            let total = s.total();
            let mut xs: Vec<u64> = (0..2_000).map(|_| next() % total).collect();
            for &c in s.cum.iter() {
                xs.extend([c.saturating_sub(1), c].into_iter().filter(|&x| x < total));
            }
            for b in 0..s.guide.len() as u64 {
                let x = b.checked_shl(s.shift).unwrap_or(u64::MAX);
                xs.extend([x.saturating_sub(1), x].into_iter().filter(|&x| x < total));
            }
            for x in xs {
                let want = s.cum.partition_point(|&c| c <= x);
                assert_eq!(s.at(x), want, "x {x} over {} weights", weights.len());
            }
            assert!(s.guide.len() <= weights.len() + 2, "{}", s.guide.len());
        }
    }

    /// Every `x` that can matter for `weights`: random draws, both sides of every cumulative
    /// boundary and of every bucket edge.
    fn probes(s: &Sampler, draws: &[u64]) -> Vec<u64> {
        let total = s.total();
        let mut xs: Vec<u64> = draws
            .iter()
            .map(|&r| ((r as u128 * total as u128) >> 64) as u64)
            .collect();
        for &c in s.cum.iter() {
            xs.extend([c.saturating_sub(1), c].into_iter().filter(|&x| x < total));
        }
        for b in 0..s.guide.len() as u64 {
            let x = b.checked_shl(s.shift).unwrap_or(u64::MAX);
            xs.extend([x.saturating_sub(1), x].into_iter().filter(|&x| x < total));
        }
        xs
    }

    /// Attack (issue 17 review): the guide table against a binary search on hostile instance
    /// weights (`u32` values: 0, 1, `u32::MAX`, one huge among 10 000 tiny, zeros between),
    /// every boundary probed; the second draw never repeats the first nor picks a zero weight.
    #[test]
    fn sampler_guide_agrees_on_hostile_weights() {
        const MAX: u64 = u32::MAX as u64;
        let mut sets: Vec<Vec<u64>> = vec![vec![0, MAX], vec![MAX, 0, 0], vec![MAX, MAX - 1]];
        for at in [0, 5_000, 9_999] {
            let mut w = vec![1u64; 10_000];
            w[at] = MAX;
            sets.push(w);
        }
        let mut w = vec![0u64; 10_000];
        w[0] = MAX;
        w[9_999] = 1;
        sets.push(w);
        sets.push((0..10_000).map(|i| [0, 1, MAX, 7][i % 4]).collect());
        let mut r = 11u64;
        let draws: Vec<u64> = (0..4_000)
            .map(|_| {
                r = splitmix(r);
                r
            })
            .collect();
        for weights in sets {
            let s = Sampler::new(&weights).unwrap();
            for x in probes(&s, &draws) {
                assert_eq!(s.at(x), s.cum.partition_point(|&c| c <= x), "x {x}");
            }
            assert!(s.guide.len() <= weights.len() + 2);
            if s.positive >= 2 {
                for &r in &draws {
                    let k = s.draw(r);
                    let o = s.draw_other(splitmix(r), k);
                    assert!(o != k && s.weight(k) > 0 && s.weight(o) > 0, "{k} {o}");
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn sampler_guide_agrees_on_any_u32_weights(
            weights in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(0u64),
                    proptest::strategy::Just(1u64),
                    proptest::strategy::Just(u32::MAX as u64),
                    0..=u32::MAX as u64,
                ],
                1..120,
            ),
            draws in proptest::collection::vec(proptest::prelude::any::<u64>(), 32),
        ) {
            if let Some(s) = Sampler::new(&weights) {
                for x in probes(&s, &draws) {
                    proptest::prop_assert_eq!(s.at(x), s.cum.partition_point(|&c| c <= x));
                }
                if s.positive >= 2 {
                    for &r in &draws {
                        let k = s.draw(r);
                        let o = s.draw_other(splitmix(r), k);
                        proptest::prop_assert!(o != k && s.weight(k) > 0 && s.weight(o) > 0);
                    }
                }
            }
        }
    }

    #[test]
    fn exp_neg_matches_std() {
        let mut x = 0.0f64;
        while x < 60.0 {
            let (a, b) = (exp_neg(x), (-x).exp());
            assert!((a - b).abs() <= b * 1e-6 + 1e-300, "x={x}: {a} vs {b}");
            x += 0.001_7;
        }
        assert_eq!(exp_neg(-1.0), 1.0);
        assert_eq!(exp_neg(f64::NAN), 1.0);
        assert_eq!(exp_neg(1e9), 0.0);
        assert!(exp_neg(699.0) > 0.0);
    }
}

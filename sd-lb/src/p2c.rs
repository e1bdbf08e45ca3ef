//! Power of two choices with a pluggable load: in-flight requests or peak-EWMA latency.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sd_core::{Endpoint, Endpointer, Snapshot};

use crate::balancer::{
    bounded, endpoints_of, pick_fallback, redraw_accepted, splitmix, thread_random, Balancer,
    Cands, Clock, Current, Feedback, Outcome, Picked, Request, Viewed,
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

    #[inline]
    fn ewma_cost(&self, now: u64) -> f64 {
        let cost = f64::from_bits(self.cost.load(Ordering::Relaxed));
        let elapsed = now.saturating_sub(self.stamp.load(Ordering::Relaxed)) as f64;
        let decayed = cost * exp_neg(elapsed * self.inv_decay);
        decayed * (self.pending_requests() as f64 + 1.0)
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

/// One table entry: the endpoint value (weakly, for matching across updates) and its load.
struct Slot<E> {
    value: Weak<E>,
    load: Arc<EndpointLoad>,
}

/// Power of two choices: draw two distinct endpoints at random, take the less loaded.
///
/// The load is pluggable ([`Load`]): requests in flight, or peak-EWMA latency. It is fed
/// back through the [`Picked`] guard returned by [`pick_with`](Balancer::pick_with): a guard
/// dropped without a report still ends its request. Statistics survive endpoint-set updates
/// for the endpoints that stay. A pick takes one `arc-swap` load (the endpoints with their
/// statistics, checked against the endpointer's version number), no lock and no allocation.
///
/// After an update the statistics table is rebuilt on a background thread (started by the
/// first pick that sees the update); picks meanwhile use the previous table, or, when that
/// has nothing to serve, a uniform pick over the new set that is not load-tracked.
///
/// Health (see [`Balancer`]): when some endpoints are [`Passing`](sd_core::Health::Passing)
/// and some are not, both choices are drawn among the passing ones.
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
    view: Viewed<Vec<Slot<E>>, E>,
    seeded: Option<AtomicU64>,
}

fn build_slots<E>(
    list: &[Endpoint<E>],
    old: Option<&Vec<Slot<E>>>,
    load: Load,
    clock: Clock,
) -> Vec<Slot<E>> {
    let previous: HashMap<*const E, &Arc<EndpointLoad>> = old
        .into_iter()
        .flatten()
        .filter(|s| s.value.strong_count() > 0)
        .map(|s| (s.value.as_ptr(), &s.load))
        .collect();
    list.iter()
        .map(|e| {
            let ptr = Arc::as_ptr(e.value_arc());
            let load = previous
                .get(&ptr)
                .map(|l| (*l).clone())
                .unwrap_or_else(|| Arc::new(EndpointLoad::new(load, clock)));
            Slot {
                value: Arc::downgrade(e.value_arc()),
                load,
            }
        })
        .collect()
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
        let view = Viewed::new(&endpointer, true, move |list, _, old| {
            build_slots(list, old, load, clock)
        });
        P2c {
            endpointer,
            load,
            clock,
            view,
            seeded: None,
        }
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
        let load = self.load;
        self.view = Viewed::new(&self.endpointer, true, move |list, _, old| {
            build_slots(list, old, load, clock)
        });
        self
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
        Some(view.value[i].load.clone())
    }
}

impl<P, E: 'static> std::fmt::Debug for P2c<P, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2c").field("load", &self.load).finish()
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
            Current::Fallback(s) => return pick_fallback(&s, self.random(), request, false),
        };
        let list = endpoints_of(&view.snapshot)?;
        let slots = &view.value;
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
            let i = bounded(r, n);
            let mut j = bounded(splitmix(r), n - 1);
            if j >= i {
                j += 1;
            }
            let (i, j) = (cands.at(i), cands.at(j));
            // An avoided draw is replaced by a uniform draw among the accepted endpoints,
            // so an ejected endpoint's share spreads evenly.
            let i = accepted_or_redraw(list, cands, i, request, splitmix(r ^ 1));
            let j = accepted_or_redraw(list, cands, j, request, splitmix(r ^ 2));
            // A tie goes to `i`, itself a uniform draw. In-flight counts are exact: the less
            // loaded wins. Peak-EWMA costs within 0.1 % are a tie, so noise-level
            // differences (the decay of endpoints whose statistics were created nanoseconds
            // apart) cannot starve one endpoint while no real load tells them apart.
            let j_lighter = match self.load {
                Load::PendingRequests => {
                    slots[j].load.pending_requests() < slots[i].load.pending_requests()
                }
                Load::PeakEwma { .. } => {
                    slots[j].load.ewma_cost(now) < slots[i].load.ewma_cost(now) * TIE
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
}

#[cfg(test)]
mod tests {
    use super::exp_neg;

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

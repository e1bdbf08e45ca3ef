//! Weighted round robin: a smooth schedule precomputed per snapshot.

use std::marker::PhantomData;

use sd_core::{Endpoint, Endpointer, Snapshot};

use crate::balancer::{
    bounded, endpoints_of, panic_threshold_builder, pick_fallback, splitmix, thread_random,
    Balancer, Current, PaddedCounter, PanicThreshold, Picked, Request, Viewed,
};
use crate::error::LbError;

/// Weighted round robin over [`Instance::weight`](sd_core::Instance::weight).
///
/// For every endpoint set it builds a *schedule*: every endpoint appears
/// `weight` times (weights reduced by their greatest common divisor, and scaled down when the
/// total is very large), ordered by earliest virtual deadline (`(k + ½) / weight`, the EDF /
/// stride order). The result is smooth like nginx's smooth weighted round robin: weights
/// 5, 1, 1 give `a a a b c a a`, not `a a a a a b c`. A pick is then one shared counter
/// increment and one index, after one `arc-swap` load: no lock, no allocation.
///
/// The schedule is built off the request path: at construction, then on a background thread
/// started by the first pick after an update (1.1 ms at 1 000 endpoints and 23 ms at 10 000
/// on a loaded machine, `rebuild/weighted` in `docs/BENCHMARKS.md`). Until it is ready, picks use the previous schedule, or, when that
/// has nothing to serve, a weighted draw over the new set (linear in its size); see
/// [`refresh`](Weighted::refresh).
///
/// Health (see [`Balancer`]): when some endpoints are [`Passing`](sd_core::Health::Passing)
/// and some are not (and no fewer pass than the [panic
/// threshold](crate::PanicThreshold)), the schedule holds the passing ones only.
///
/// An endpoint of weight 0 is never picked while one with a positive weight exists; when
/// every weight is 0, all are picked equally.
///
/// ```
/// use std::sync::Arc;
/// use sd_core::{FixedEndpointer, Instance};
/// use sd_lb::{Balancer, Weighted};
/// let ep = Arc::new(FixedEndpointer::new([
///     (Instance::builder("10.0.0.1", 80).weight(3).build(), 'a'),
///     (Instance::builder("10.0.0.2", 80).weight(1).build(), 'b'),
/// ]));
/// let w = Weighted::new(ep);
/// let picks: String = (0..8).map(|_| *w.pick().unwrap()).collect();
/// assert_eq!(picks, "aabaaaba");
/// ```
pub struct Weighted<P, E: 'static> {
    endpointer: P,
    counter: PaddedCounter,
    schedule: Viewed<Schedule, E>,
    _e: PhantomData<fn() -> E>,
}

/// The precomputed order of picks for one snapshot.
struct Schedule {
    /// Indices into the snapshot's endpoint list.
    order: Vec<u32>,
    /// Whether each endpoint has a positive weight (or all are zero).
    eligible: Vec<bool>,
}

impl<P: Endpointer<E>, E: Send + Sync + 'static> Weighted<P, E> {
    /// A weighted round robin over `endpointer` (its schedule is built now, on this thread).
    pub fn new(endpointer: P) -> Self {
        Weighted {
            schedule: Viewed::new(&endpointer, true, |l, preferred, _| build(l, preferred)),
            endpointer,
            counter: PaddedCounter::default(),
            _e: PhantomData,
        }
    }

    panic_threshold_builder!(schedule);

    /// Brings the schedule up to date with the endpointer now, on this thread (waiting for a
    /// background rebuild in progress). Picks never need this; it is for warming up after an
    /// update before sending traffic, and for tests.
    pub fn refresh(&self) {
        self.schedule.refresh(&self.endpointer);
    }
}

impl<P, E: 'static> std::fmt::Debug for Weighted<P, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weighted").finish()
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn build<E>(list: &[Endpoint<E>], preferred: Option<&[u32]>) -> Schedule {
    // Only the preferred (passing) endpoints take part when there are some.
    let mut part = vec![preferred.is_none(); list.len()];
    for &i in preferred.unwrap_or(&[]) {
        part[i as usize] = true;
    }
    let mut weights: Vec<u64> = list
        .iter()
        .zip(&part)
        .map(|(e, &p)| if p { e.instance().weight() as u64 } else { 0 })
        .collect();
    if weights.iter().all(|w| *w == 0) {
        weights
            .iter_mut()
            .zip(&part)
            .for_each(|(w, &p)| *w = p as u64);
    }
    let eligible = weights.iter().map(|w| *w > 0).collect();
    let g = weights.iter().copied().fold(0, gcd).max(1);
    weights.iter_mut().for_each(|w| *w /= g);
    let positive = weights.iter().filter(|w| **w > 0).count() as u64;
    let cap = (1u64 << 16).max(16 * positive);
    let total: u64 = weights.iter().sum();
    if total > cap {
        // Scale down, keeping every positive weight at least 1.
        for w in weights.iter_mut().filter(|w| **w > 0) {
            *w = ((*w as u128 * cap as u128 / total as u128) as u64).max(1);
        }
    }
    let mut slots: Vec<(f64, u32)> = Vec::with_capacity(weights.iter().sum::<u64>() as usize);
    for (i, &w) in weights.iter().enumerate() {
        for k in 0..w {
            slots.push(((k as f64 + 0.5) / w as f64, i as u32));
        }
    }
    slots.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    Schedule {
        order: slots.into_iter().map(|(_, i)| i).collect(),
        eligible,
    }
}

/// The endpoint to use when the scheduled one `i` is avoided: up to
/// [`REDRAWS`](crate::balancer::REDRAWS) draws of a random
/// schedule position (so the avoided share spreads over the others in proportion to their
/// weights), then a uniform choice among the accepted eligible endpoints; the scheduled one
/// when every eligible endpoint is avoided (never a zero-weight endpoint while a positive
/// one exists).
#[cold]
fn redraw<E>(list: &[Endpoint<E>], s: &Schedule, i: usize, request: &Request<'_, E>) -> usize {
    let mut r = thread_random();
    for _ in 0..crate::balancer::REDRAWS {
        r = splitmix(r);
        let j = s.order[bounded(r, s.order.len())] as usize;
        if !request.avoids(&list[j]) {
            return j;
        }
    }
    let ok = |j: &usize| s.eligible[*j] && !request.avoids(&list[*j]);
    let accepted = (0..list.len()).filter(ok).count();
    if accepted == 0 {
        return i;
    }
    (0..list.len())
        .filter(ok)
        .nth(bounded(splitmix(r), accepted))
        .unwrap_or(i)
}

impl<E, P> Balancer<E> for Weighted<P, E>
where
    E: Send + Sync + 'static,
    P: Endpointer<E>,
{
    #[inline]
    fn pick(&self) -> Result<Endpoint<E>, LbError> {
        let s = match self.schedule.get(&self.endpointer) {
            Current::View(v) => v,
            Current::Fallback(s) => {
                return pick_fallback(
                    &s,
                    thread_random(),
                    &Request::new(),
                    true,
                    self.schedule.threshold(),
                )
                .map(Picked::into_endpoint)
            }
        };
        let list = endpoints_of(&s.snapshot)?;
        let order = &s.value.order;
        let i = order[(self.counter.next() % order.len() as u64) as usize] as usize;
        Ok(list[i].clone())
    }

    fn pick_with(&self, request: &Request<'_, E>) -> Result<Picked<E>, LbError> {
        let s = match self.schedule.get(&self.endpointer) {
            Current::View(v) => v,
            Current::Fallback(s) => {
                return pick_fallback(
                    &s,
                    thread_random(),
                    request,
                    true,
                    self.schedule.threshold(),
                )
            }
        };
        let list = endpoints_of(&s.snapshot)?;
        let order = &s.value.order;
        let pos = (self.counter.next() % order.len() as u64) as usize;
        let mut i = order[pos] as usize;
        if request.has_avoid() && request.avoids(&list[i]) {
            i = redraw(list, &s.value, i, request);
        }
        Ok(Picked::new(list[i].clone()))
    }

    fn snapshot(&self) -> Snapshot<E> {
        self.endpointer.endpoints()
    }

    fn panic_threshold(&self) -> PanicThreshold {
        self.schedule.threshold()
    }
}

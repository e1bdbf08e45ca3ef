//! Uniform random choice (go-kit's `lb.NewRandom`, made thread-safe).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use sd_core::{Endpoint, Endpointer, Snapshot};

use crate::balancer::{
    bounded, endpoints_of, panic_threshold_builder, pick_fallback, redraw_accepted, splitmix,
    thread_random, Balancer, Current, PanicThreshold, Picked, Request, Viewed,
};
use crate::error::LbError;
use crate::thread_view::{Choose, EndpointRef, ThreadView};

/// Picks uniformly at random from the current endpoints.
///
/// [`Random::new`] draws from a per-thread generator (nothing shared between threads).
/// [`Random::with_seed`] draws from one shared SplitMix64 sequence, so a single-threaded
/// test sees the same picks on every run (go-kit LB-3's seed, without its data race).
///
/// **The pick borrows**, as [`RoundRobin`](crate::RoundRobin)'s: [`Random::pick`] returns an
/// [`EndpointRef`] borrowed from the picking thread's cached view (the same per-thread cache,
/// see [`RoundRobin`](crate::RoundRobin)); [`Balancer::pick`] and
/// [`Balancer::pick_with`] return owned endpoints. Both draw once from the same generator
/// per pick, so a seeded sequence is the same through either. Method-call syntax picks the
/// trait's method for an `Arc<Random>` when [`Balancer`] is in scope: write
/// `Random::pick(&r)` there for the borrowing pick.
///
/// Health (see [`Balancer`]): when some endpoints are [`Passing`](sd_core::Health::Passing)
/// and some are not (and no fewer pass than the [panic
/// threshold](crate::PanicThreshold)), it draws among the passing ones only.
///
/// ```
/// use std::sync::Arc;
/// use sd_core::{FixedEndpointer, Instance};
/// use sd_lb::{Balancer, Random};
/// let ep = Arc::new(FixedEndpointer::new((1..=3).map(|p| (Instance::new("10.0.0.1", p), p))));
/// let a: Vec<u16> = { let r = Random::with_seed(ep.clone(), 7); (0..8).map(|_| **r.pick().unwrap()).collect() };
/// let b: Vec<u16> = { let r = Random::with_seed(ep.clone(), 7); (0..8).map(|_| **r.pick().unwrap()).collect() };
/// assert_eq!(a, b);
/// ```
pub struct Random<P, E: 'static> {
    endpointer: P,
    view: Viewed<(), E>,
    seeded: Option<AtomicU64>,
    /// This balancer's entries in the threads' caches.
    cache: ThreadView<E>,
}

impl<P: Endpointer<E>, E: Send + Sync + 'static> Random<P, E> {
    /// A random balancer using a per-thread generator.
    pub fn new(endpointer: P) -> Self {
        Random {
            view: Viewed::new(&endpointer, false, |_, _, _| ()),
            endpointer,
            seeded: None,
            cache: ThreadView::default(),
        }
    }

    panic_threshold_builder!(view);

    /// A random balancer whose sequence is fixed by `seed`.
    pub fn with_seed(endpointer: P, seed: u64) -> Self {
        Random {
            seeded: Some(AtomicU64::new(seed)),
            ..Self::new(endpointer)
        }
    }

    /// Picks an endpoint at random, borrowed from this thread's cached snapshot (see
    /// [`EndpointRef`]; LB-1 errors as every balancer). [`Balancer::pick`] is the same pick
    /// returning an owned endpoint.
    #[inline]
    pub fn pick(&self) -> Result<EndpointRef<E>, LbError> {
        self.cache
            .pick(self, &self.endpointer, &self.view, &Request::new())
    }

    #[inline]
    fn next(&self) -> u64 {
        match &self.seeded {
            None => thread_random(),
            Some(state) => seeded(state),
        }
    }
}

/// The next value of a shared SplitMix64 sequence.
#[inline]
fn seeded(state: &AtomicU64) -> u64 {
    splitmix(state.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed))
}

/// xorshift64* on a thread entry's word (never 0: seeded odd).
#[inline]
fn step(state: &Cell<u64>) -> u64 {
    let mut x = state.get();
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    state.set(x);
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

impl<P, E: 'static> Choose for Random<P, E> {
    /// An unseeded balancer's generator on this thread: seeded from the thread's.
    fn start(&self) -> u64 {
        thread_random() | 1
    }

    /// One draw: from the shared seeded sequence, this thread's entry's generator, or the
    /// thread's generator.
    #[inline]
    fn choose(&self, n: usize, state: Option<&Cell<u64>>) -> usize {
        let r = match (&self.seeded, state) {
            (Some(seq), _) => seeded(seq),
            (None, Some(state)) => step(state),
            (None, None) => thread_random(),
        };
        bounded(r, n)
    }

    fn draw(&self) -> u64 {
        match &self.seeded {
            None => thread_random(),
            Some(seq) => seeded(seq),
        }
    }
}

impl<P, E: 'static> std::fmt::Debug for Random<P, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Random")
            .field("seeded", &self.seeded.is_some())
            .field("cache", &self.cache)
            .finish()
    }
}

impl<E, P> Balancer<E> for Random<P, E>
where
    E: Send + Sync + 'static,
    P: Endpointer<E>,
{
    #[inline]
    fn pick(&self) -> Result<Endpoint<E>, LbError> {
        Random::pick(self).map(EndpointRef::into_endpoint)
    }

    fn pick_with(&self, request: &Request<'_, E>) -> Result<Picked<E>, LbError> {
        let v = match self.view.get(&self.endpointer) {
            Current::View(v) => v,
            Current::Fallback(s) => {
                return pick_fallback(&s, self.next(), request, false, self.view.threshold())
            }
        };
        let list = endpoints_of(&v.snapshot)?;
        let c = v.cands();
        let r = self.next();
        let mut i = c.at(bounded(r, c.len()));
        if request.has_avoid() && request.avoids(&list[i]) {
            i = redraw_accepted(list, c, i, request, r);
        }
        Ok(Picked::new(list[i].clone()))
    }

    fn snapshot(&self) -> Snapshot<E> {
        self.endpointer.endpoints()
    }

    fn panic_threshold(&self) -> PanicThreshold {
        self.view.threshold()
    }
}

//! Uniform random choice (go-kit's `lb.NewRandom`, made thread-safe).

use std::sync::atomic::{AtomicU64, Ordering};

use sd_core::{Endpoint, Endpointer, Snapshot};

use crate::balancer::{
    bounded, endpoints_of, redraw_accepted, splitmix, thread_random, Balancer, Picked, Request,
};
use crate::error::LbError;

/// Picks uniformly at random from the current endpoints.
///
/// [`Random::new`] draws from a per-thread generator (nothing shared between threads).
/// [`Random::with_seed`] draws from one shared SplitMix64 sequence, so a single-threaded
/// test sees the same picks on every run (go-kit LB-3's seed, without its data race).
///
/// ```
/// use std::sync::Arc;
/// use sd_core::{FixedEndpointer, Instance};
/// use sd_lb::{Balancer, Random};
/// let ep = Arc::new(FixedEndpointer::new((1..=3).map(|p| (Instance::new("10.0.0.1", p), p))));
/// let a: Vec<u16> = { let r = Random::with_seed(ep.clone(), 7); (0..8).map(|_| *r.pick().unwrap()).collect() };
/// let b: Vec<u16> = { let r = Random::with_seed(ep.clone(), 7); (0..8).map(|_| *r.pick().unwrap()).collect() };
/// assert_eq!(a, b);
/// ```
pub struct Random<P> {
    endpointer: P,
    seeded: Option<AtomicU64>,
}

impl<P> Random<P> {
    /// A random balancer using a per-thread generator.
    pub fn new(endpointer: P) -> Self {
        Random {
            endpointer,
            seeded: None,
        }
    }

    /// A random balancer whose sequence is fixed by `seed`.
    pub fn with_seed(endpointer: P, seed: u64) -> Self {
        Random {
            endpointer,
            seeded: Some(AtomicU64::new(seed)),
        }
    }

    #[inline]
    fn next(&self) -> u64 {
        match &self.seeded {
            None => thread_random(),
            Some(state) => splitmix(state.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)),
        }
    }
}

impl<P> std::fmt::Debug for Random<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Random")
            .field("seeded", &self.seeded.is_some())
            .finish()
    }
}

impl<E, P> Balancer<E> for Random<P>
where
    E: Send + Sync + 'static,
    P: Endpointer<E>,
{
    #[inline]
    fn pick(&self) -> Result<Endpoint<E>, LbError> {
        let snap = self.endpointer.endpoints();
        let list = endpoints_of(&snap)?;
        Ok(list[bounded(self.next(), list.len())].clone())
    }

    fn pick_with(&self, request: &Request<'_, E>) -> Result<Picked<E>, LbError> {
        let snap = self.endpointer.endpoints();
        let list = endpoints_of(&snap)?;
        let r = self.next();
        let mut i = bounded(r, list.len());
        if request.has_avoid() && request.avoids(&list[i]) {
            i = redraw_accepted(list, i, request, r);
        }
        Ok(Picked::new(list[i].clone()))
    }

    fn snapshot(&self) -> Snapshot<E> {
        self.endpointer.endpoints()
    }
}

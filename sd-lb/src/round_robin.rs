//! Round robin (go-kit LB-2) and its per-thread variant.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use sd_core::{Endpoint, Endpointer, Snapshot};

use crate::balancer::{
    endpoints_of, first_accepted, panic_threshold_builder, pick_fallback, thread_random, Balancer,
    Current, PaddedCounter, PanicThreshold, Picked, Request, Viewed,
};
use crate::error::LbError;

/// Round robin over an [`Endpointer`]'s current endpoints.
///
/// [`RoundRobin::new`] is go-kit's balancer: one shared counter starting at 0, never reset
/// when the set changes (LB-2), a strict rotation across threads. [`RoundRobin::per_thread`]
/// keeps one counter per thread instead (starting at a random offset), for hot paths on many
/// cores: each thread rotates fairly on its own and threads do not share a cache line; the
/// global order is no longer strict. Each live thread has a counter of its own, up to 32
/// threads picking at once; beyond that, a thread shares the counter of another: the picks of
/// all threads together stay evenly spread, but one thread's own sequence may then skip
/// endpoints (two threads alternating on one counter over two endpoints each see only one of
/// them). Both take one `arc-swap` load per pick and no lock or allocation.
///
/// Health (see [`Balancer`]): when some endpoints are [`Passing`](sd_core::Health::Passing)
/// and some are not (and no fewer pass than the [panic
/// threshold](crate::PanicThreshold)), the rotation runs over the passing ones only.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use sd_core::{BoxError, DefaultEndpointer, FixedInstancer, Instance};
/// use sd_lb::{Balancer, RoundRobin};
///
/// let instancer = FixedInstancer::from_addrs(["10.0.0.1:80", "10.0.0.2:80"]).unwrap();
/// let endpointer = Arc::new(DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
///     Ok(format!("http://{}", i.addr()))
/// }));
/// let rr = RoundRobin::new(endpointer.clone());
/// assert_eq!(rr.pick().unwrap().as_str(), "http://10.0.0.1:80");
/// assert_eq!(rr.pick().unwrap().as_str(), "http://10.0.0.2:80");
/// assert_eq!(rr.pick().unwrap().as_str(), "http://10.0.0.1:80");
/// # });
/// ```
pub struct RoundRobin<P, E: 'static> {
    endpointer: P,
    view: Viewed<(), E>,
    counter: PaddedCounter,
    /// Per-thread counters ([`RoundRobin::per_thread`] only), indexed by the thread's slot.
    slots: Option<Box<[Slot]>>,
}

/// How many per-thread counters a [`RoundRobin::per_thread`] balancer keeps.
const SLOTS: usize = 32;

/// One per-thread counter on its own cache line.
#[repr(align(128))]
struct Slot(AtomicU64);

/// A thread's claim on a slot number, given back when the thread ends.
struct Lease {
    slot: usize,
    owned: bool,
}

/// Slot numbers given back by threads that ended.
static FREE: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// Slot numbers never given out yet start here.
static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Lease {
    fn acquire() -> Self {
        if let Some(slot) = FREE.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Lease { slot, owned: true };
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        if n < SLOTS {
            Lease {
                slot: n,
                owned: true,
            }
        } else {
            // Every slot is held by a live thread: share one.
            NEXT.fetch_sub(1, Ordering::Relaxed);
            Lease {
                slot: (thread_random() as usize) % SLOTS,
                owned: false,
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.owned {
            FREE.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(self.slot);
        }
    }
}

/// This thread's slot number: its own while fewer than [`SLOTS`] threads hold one.
fn thread_slot() -> usize {
    thread_local! {
        static SLOT: Lease = Lease::acquire();
    }
    // During thread teardown the lease may be gone already: any slot will do.
    SLOT.try_with(|l| l.slot).unwrap_or(0)
}

impl<P: Endpointer<E>, E: Send + Sync + 'static> RoundRobin<P, E> {
    /// go-kit's round robin: one shared counter starting at 0.
    pub fn new(endpointer: P) -> Self {
        RoundRobin {
            view: Viewed::new(&endpointer, false, |_, _, _| ()),
            endpointer,
            counter: PaddedCounter::default(),
            slots: None,
        }
    }

    panic_threshold_builder!(view);

    /// Round robin with one counter per thread (see [`RoundRobin`]).
    pub fn per_thread(endpointer: P) -> Self {
        RoundRobin {
            slots: Some(
                (0..SLOTS)
                    .map(|_| Slot(AtomicU64::new(thread_random() >> 1)))
                    .collect(),
            ),
            ..Self::new(endpointer)
        }
    }

    /// The endpointer.
    pub fn endpointer(&self) -> &P {
        &self.endpointer
    }

    #[inline]
    fn next(&self) -> u64 {
        match &self.slots {
            None => self.counter.next(),
            Some(slots) => slots[thread_slot()].0.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl<P, E: 'static> std::fmt::Debug for RoundRobin<P, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoundRobin")
            .field("per_thread", &self.slots.is_some())
            .finish()
    }
}

impl<E, P> Balancer<E> for RoundRobin<P, E>
where
    E: Send + Sync + 'static,
    P: Endpointer<E>,
{
    #[inline]
    fn pick(&self) -> Result<Endpoint<E>, LbError> {
        match self.view.get(&self.endpointer) {
            Current::View(v) => {
                let list = endpoints_of(&v.snapshot)?;
                let c = v.cands();
                Ok(list[c.at((self.next() % c.len() as u64) as usize)].clone())
            }
            Current::Fallback(s) => pick_fallback(
                &s,
                thread_random(),
                &Request::new(),
                false,
                self.view.threshold(),
            )
            .map(Picked::into_endpoint),
        }
    }

    fn pick_with(&self, request: &Request<'_, E>) -> Result<Picked<E>, LbError> {
        match self.view.get(&self.endpointer) {
            Current::View(v) => {
                let list = endpoints_of(&v.snapshot)?;
                let c = v.cands();
                let i = c.at((self.next() % c.len() as u64) as usize);
                let i = first_accepted(list, c, i, request);
                Ok(Picked::new(list[i].clone()))
            }
            Current::Fallback(s) => {
                pick_fallback(&s, thread_random(), request, false, self.view.threshold())
            }
        }
    }

    fn snapshot(&self) -> Snapshot<E> {
        self.endpointer.endpoints()
    }

    fn panic_threshold(&self) -> PanicThreshold {
        self.view.threshold()
    }
}
